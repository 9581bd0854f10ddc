/* What every target of tests/fuzz shares. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "fuzz.h"

void fuzz_fail(const char *file, int line, const char *cond, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s:%d: property failed: %s: ", file, line, cond);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}

int fuzz_verbose(void)
{
    static int verbose = -1;
    if (verbose < 0) {
        const char *v = getenv("FUZZ_VERBOSE");
        verbose = v && *v && *v != '0';
    }
    return verbose;
}
