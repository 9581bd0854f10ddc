#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

static void oom(void)
{
    fputs("reld: out of memory\n", stderr);
    abort();
}

void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        oom();
    return p;
}

void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        oom();
    return p;
}

void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p)
        oom();
    return p;
}

char *xstrdup(const char *s)
{
    if (!s)
        return NULL;
    char *r = strdup(s);
    if (!r)
        oom();
    return r;
}

char *xstrndup(const char *s, size_t n)
{
    char *r = strndup(s, n);
    if (!r)
        oom();
    return r;
}

char *xvasprintf(const char *fmt, va_list ap)
{
    char *r;
    if (vasprintf(&r, fmt, ap) < 0)
        oom();
    return r;
}

char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *r = xvasprintf(fmt, ap);
    va_end(ap);
    return r;
}

void grow_array(void **v, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return;
    size_t n = *cap ? *cap * 2 : 8;
    while (n < need)
        n *= 2;
    *v = xrealloc(*v, n * elem);
    *cap = n;
}

void strvec_push_take(StrVec *s, char *str)
{
    GROW(s->v, s->cap, s->n + 1);
    s->v[s->n++] = str;
}

void strvec_push(StrVec *s, const char *str)
{
    strvec_push_take(s, xstrdup(str));
}

ssize_t strvec_index(const StrVec *s, const char *str)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->v[i], str) == 0)
            return (ssize_t)i;
    return -1;
}

bool strvec_contains(const StrVec *s, const char *str)
{
    return strvec_index(s, str) >= 0;
}

void strvec_clear(StrVec *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i]);
    free(s->v);
    *s = (StrVec){0};
}

void diag_error(Diag *d, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    strvec_push_take(&d->errors, xvasprintf(fmt, ap));
    va_end(ap);
}

void diag_warning(Diag *d, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    strvec_push_take(&d->warnings, xvasprintf(fmt, ap));
    va_end(ap);
}

void diag_error_at(Diag *d, const char *file, int line, int col, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = xvasprintf(fmt, ap);
    va_end(ap);
    strvec_push_take(&d->errors, xasprintf("%s:%d:%d: %s", file ? file : "<input>", line, col, msg));
    free(msg);
}

void diag_clear(Diag *d)
{
    strvec_clear(&d->errors);
    strvec_clear(&d->warnings);
}

int write_all(int fd, const void *buf, size_t n)
{
    for (size_t off = 0; off < n;) {
        ssize_t w = write(fd, (const char *)buf + off, n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return w < 0 ? -errno : -EIO;
        off += (size_t)w;
    }
    return 0;
}

int path_walk_depth(const char *p, int depth)
{
    if (!p || !*p || p[0] == '/')
        return -1;
    while (*p) {
        size_t n = strcspn(p, "/");
        if (n == 2 && p[0] == '.' && p[1] == '.') {
            if (--depth < 0)
                return -1;
        } else if (n > 0 && !(n == 1 && p[0] == '.')) {
            depth++;
        }
        p += n;
        while (*p == '/')
            p++;
    }
    return depth;
}

static bool is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}
static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

bool name_is_valid(const char *s)
{
    if (!s || !(is_alpha(s[0]) || s[0] == '_'))
        return false;
    size_t n = 0;
    for (; s[n]; n++)
        if (!(is_alpha(s[n]) || is_digit(s[n]) || s[n] == '_'))
            return false;
    return n <= 64;
}

bool version_is_valid(const char *s)
{
    if (!s || !(is_alpha(s[0]) || is_digit(s[0])))
        return false;
    size_t n = 0;
    for (; s[n]; n++)
        if (!(is_alpha(s[n]) || is_digit(s[n]) || strchr("._+~-", s[n])))
            return false;
    return n <= 64;
}

static size_t str_hash(const char *s)
{
    size_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

static size_t strmap_slot(const StrMap *m, const char *key)
{
    size_t i = str_hash(key) & (m->cap - 1);
    while (m->keys[i] && strcmp(m->keys[i], key) != 0)
        i = (i + 1) & (m->cap - 1);
    return i;
}

/* Moves the keys into cap slots (a power of two, more than twice m->n). */
static void strmap_resize(StrMap *m, size_t cap)
{
    StrMap bigger = {.cap = cap};
    bigger.keys = xcalloc(cap, sizeof(*bigger.keys));
    bigger.vals = xcalloc(cap, sizeof(*bigger.vals));
    for (size_t i = 0; i < m->cap; i++)
        if (m->keys[i])
            strmap_put(&bigger, m->keys[i], m->vals[i]);
    strmap_clear(m);
    *m = bigger;
}

void strmap_reserve(StrMap *m, size_t n)
{
    size_t cap = m->cap ? m->cap : 16;
    while (n * 2 > cap)
        cap *= 2;
    if (cap != m->cap)
        strmap_resize(m, cap);
}

void strmap_put(StrMap *m, const char *key, size_t val)
{
    if ((m->n + 1) * 2 > m->cap)
        strmap_resize(m, m->cap ? m->cap * 2 : 16);
    size_t i = strmap_slot(m, key);
    if (!m->keys[i])
        m->n++;
    m->keys[i] = key;
    m->vals[i] = val;
}

bool strmap_get(const StrMap *m, const char *key, size_t *val)
{
    if (!m->cap)
        return false;
    size_t i = strmap_slot(m, key);
    if (!m->keys[i])
        return false;
    if (val)
        *val = m->vals[i];
    return true;
}

void strmap_clear(StrMap *m)
{
    free(m->keys);
    free(m->vals);
    *m = (StrMap){0};
}

long long mono_us(void)
{
    struct timespec ts;
    (void)clock_gettime(CLOCK_MONOTONIC, &ts); /* cannot fail for CLOCK_MONOTONIC */
    return ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}
