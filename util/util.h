#pragma once
/* util: small helpers every reld component shares.
 *
 * Ownership: every function that returns a pointer returns memory owned by
 * the caller unless its comment says otherwise. Destructors (*_free) accept
 * NULL and return NULL, so `p = thing_free(p);` is the idiom.
 *
 * Memory exhaustion: the x* allocators abort the process with a message.
 * reld's data structures are small and bounded by validated input; treating
 * ENOMEM as fatal (as git does) keeps every other error path meaningful.
 *
 * Errors: functions that can fail return 0 or a negative errno. */
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <sys/types.h>

#define UTIL_PRINTF(a, b) __attribute__((format(printf, a, b)))

void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s); /* NULL in, NULL out */
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) UTIL_PRINTF(1, 2);
char *xvasprintf(const char *fmt, va_list ap) UTIL_PRINTF(1, 0);

/* Grows *v (of element size elem) so that it holds at least need elements;
 * *cap is the capacity in elements. */
void grow_array(void **v, size_t *cap, size_t need, size_t elem);
/* sizeof of the type, not of *(v): clang-tidy 14's bugprone-sizeof-expression
 * takes sizeof(*v) for a mistake when v is an array of pointers. */
#define GROW(v, cap, need) grow_array((void **)&(v), &(cap), (need), sizeof(__typeof__(*(v))))

static inline void freep(void *p)
{
    free(*(void **)p);
}
#define _cleanup_free_ __attribute__((cleanup(freep)))

/* Takes ownership out of a cleanup variable. */
#define TAKE_PTR(p)                                                                                                    \
    ({                                                                                                                 \
        __typeof__(p) _p = (p);                                                                                        \
        (p) = NULL;                                                                                                    \
        _p;                                                                                                            \
    })

/* A growable list of owned strings. Zero-initialised is empty. */
typedef struct StrVec {
    char **v;
    size_t n, cap;
} StrVec;

void strvec_push(StrVec *s, const char *str); /* copies str */
void strvec_push_take(StrVec *s, char *str);  /* takes ownership of str */
bool strvec_contains(const StrVec *s, const char *str);
ssize_t strvec_index(const StrVec *s, const char *str); /* -1 when absent */
void strvec_clear(StrVec *s);                           /* frees the strings, leaves s empty */

/* Diagnostics: the messages a parse, validation or computation produced,
 * each one line, in the order they were found. Errors make an operation
 * fail; warnings are for the user to read. Zero-initialised is empty. */
typedef struct Diag {
    StrVec errors;
    StrVec warnings;
} Diag;

void diag_error(Diag *d, const char *fmt, ...) UTIL_PRINTF(2, 3);
void diag_warning(Diag *d, const char *fmt, ...) UTIL_PRINTF(2, 3);
/* "file:line:col: message"; file may be NULL ("<input>"). */
void diag_error_at(Diag *d, const char *file, int line, int col, const char *fmt, ...) UTIL_PRINTF(5, 6);
void diag_clear(Diag *d);
static inline size_t diag_n_errors(const Diag *d)
{
    return d ? d->errors.n : 0;
}

/* A place in a source file, for messages. */
typedef struct SrcPos {
    const char *file; /* borrowed from the definition that holds it */
    int line, col;    /* 1-based; 0 when unknown */
} SrcPos;

/* Writes all of buf[0, n) to fd, again after a signal or a short write:
 * 0, or -errno (-EIO for a write of nothing). */
int write_all(int fd, const void *buf, size_t n);

/* Walks the relative path p from a directory `depth` levels below some
 * top directory: returns the depth where p ends, or -1 when p climbs above
 * the top (through ".."), or p is absolute or empty. Purely lexical. */
int path_walk_depth(const char *p, int depth);

/* Syntax rules shared by every definition, documented in docs/formats.md. */
bool name_is_valid(const char *s);    /* [A-Za-z_][A-Za-z0-9_]{0,63} */
bool version_is_valid(const char *s); /* [A-Za-z0-9][A-Za-z0-9._+~-]{0,63} */

/* A map from borrowed strings to indices, for lookups in large releases.
 * Keys are not copied: they must outlive the map. Zero-initialised is
 * empty. */
typedef struct StrMap {
    const char **keys;
    size_t *vals;
    size_t n, cap; /* cap is 0 or a power of two */
} StrMap;

void strmap_put(StrMap *m, const char *key, size_t val); /* replaces */
bool strmap_get(const StrMap *m, const char *key, size_t *val);
/* Makes room for n keys in all, so that filling the map to n never grows
 * it again (a map of 20,000 modules grew from 16 slots through 12 copies). */
void strmap_reserve(StrMap *m, size_t n);
void strmap_clear(StrMap *m);

/* CLOCK_MONOTONIC in microseconds, for timeouts and durations. */
long long mono_us(void);
static inline long long mono_ms(void)
{
    return mono_us() / 1000;
}
