#pragma once
/* Request parsing shared by every version of kv_server (compiled into
 * each, so that each version is self-contained). */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "kv_api.h"

/* Splits "VERB arg" into its verb and argument (arg may be empty). Returns
 * 0, or -1 when the key is too long or has a space. */
static inline int kv_split(const char *line, size_t len, char *verb, size_t verbsz, char *arg)
{
    size_t v = 0;
    while (v < len && line[v] != ' ')
        v++;
    if (v >= verbsz)
        return -1;
    memcpy(verb, line, v);
    verb[v] = 0;
    size_t a = v < len ? len - v - 1 : 0;
    if (a > KV_MAX_KEY || memchr(line + v + 1 < line + len ? line + v + 1 : line + len, ' ', a))
        return -1;
    memcpy(arg, line + len - a, a);
    arg[a] = 0;
    return 0;
}

/* snprintf that returns the length actually written. */
__attribute__((format(printf, 3, 4))) static inline size_t kv_reply(char *out, size_t outsz, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(out, outsz, fmt, ap);
    va_end(ap);
    return w < 0 ? 0 : (size_t)w < outsz ? (size_t)w : outsz - 1;
}
