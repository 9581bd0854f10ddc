/* util and yamlutil: the helpers every component shares, their boundaries
 * and their error messages. One TCase per function. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testbound.h"
#include "testlib.h"
#include "util.h"
#include "yamlutil.h"

TESTBOUND_STRCMP

static Diag d;

static void setup(void)
{
    d = (Diag){0};
}

static void teardown(void)
{
    diag_clear(&d);
}

#define ck_assert_error(want)                                                                                          \
    ck_assert_msg(test_diag_has(&d, want, true), "expected '%s' in: %s", want, test_diag_text(&d))
#define ck_assert_no_errors() ck_assert_msg(d.errors.n == 0, "unexpected errors: %s", test_diag_text(&d))

/* A string of n copies of c, then the character last (none when 0). */
static char *repeat(char c, size_t n, char last)
{
    char *s = xmalloc(n + 2);
    memset(s, c, n);
    s[n] = last;
    s[n + 1] = 0;
    return s;
}

/* ---- util ---------------------------------------------------------------- */

START_TEST(xasprintf_formats)
{
    char *s = xasprintf("%s-%d-%zu-%c", "a", -7, (size_t)42, 'z');
    ck_assert_str_eq(s, "a--7-42-z");
    free(s);
    s = xasprintf("%s", "");
    ck_assert_str_eq(s, "");
    free(s);
}
END_TEST

START_TEST(xasprintf_long_output)
{
    char *big = repeat('x', 100000, 'y');
    char *s = xasprintf("<%s>", big);
    ck_assert_uint_eq(strlen(s), 100003);
    ck_assert_int_eq(s[0], '<');
    ck_assert_int_eq(s[100001], 'y');
    ck_assert_int_eq(s[100002], '>');
    free(s);
    free(big);
}
END_TEST

START_TEST(xstrdup_copies_and_passes_null)
{
    ck_assert_ptr_null(xstrdup(NULL));
    const char *src = "abc";
    char *s = xstrdup(src);
    ck_assert_ptr_ne(s, src);
    ck_assert_str_eq(s, "abc");
    free(s);
    s = xstrndup("abcdef", 3);
    ck_assert_str_eq(s, "abc");
    free(s);
    s = xstrndup("ab", 10);
    ck_assert_str_eq(s, "ab");
    free(s);
}
END_TEST

START_TEST(grow_array_from_empty)
{
    int *v = NULL;
    size_t cap = 0;
    GROW(v, cap, 1);
    ck_assert_ptr_nonnull(v);
    ck_assert_uint_eq(cap, 8);
    v[7] = 7; /* the whole capacity is usable (ASan checks) */
    free(v);

    v = NULL;
    cap = 0;
    GROW(v, cap, 100);
    ck_assert_uint_eq(cap, 128);
    v[127] = 1;
    free(v);
}
END_TEST

START_TEST(grow_array_enough_room_is_a_no_op)
{
    long *v = NULL;
    size_t cap = 0;
    GROW(v, cap, 8);
    long *before = v;
    GROW(v, cap, 8);
    ck_assert_ptr_eq(v, before);
    ck_assert_uint_eq(cap, 8);
    GROW(v, cap, 0);
    ck_assert_ptr_eq(v, before);
    ck_assert_uint_eq(cap, 8);
    free(v);
}
END_TEST

START_TEST(grow_array_keeps_contents_and_doubles)
{
    size_t *v = NULL;
    size_t cap = 0;
    for (size_t i = 0; i < 1000; i++) {
        GROW(v, cap, i + 1);
        ck_assert_uint_ge(cap, i + 1);
        ck_assert_uint_eq(cap & (cap - 1), 0); /* a power of two */
        v[i] = i * 3;
    }
    ck_assert_uint_eq(cap, 1024);
    for (size_t i = 0; i < 1000; i++)
        ck_assert_uint_eq(v[i], i * 3);
    free(v);
}
END_TEST

START_TEST(grow_array_element_size)
{
    /* Through the function: the element size is the caller's. */
    struct big {
        char b[100];
    } *v = NULL;
    size_t cap = 0;
    grow_array((void **)&v, &cap, 3, sizeof(*v));
    ck_assert_uint_eq(cap, 8);
    memset(v, 1, cap * sizeof(*v));
    grow_array((void **)&v, &cap, 9, sizeof(*v));
    ck_assert_uint_eq(cap, 16);
    ck_assert_int_eq(v[7].b[99], 1);
    memset(v[15].b, 2, sizeof(v[15].b));
    free(v);
}
END_TEST

START_TEST(strvec_push_copies)
{
    StrVec s = {0};
    char buf[] = "one";
    strvec_push(&s, buf);
    buf[0] = 'X';
    ck_assert_uint_eq(s.n, 1);
    ck_assert_str_eq(s.v[0], "one");
    ck_assert_ptr_ne(s.v[0], buf);
    strvec_clear(&s);
}
END_TEST

START_TEST(strvec_push_take_keeps_the_pointer)
{
    StrVec s = {0};
    char *str = xstrdup("mine");
    strvec_push_take(&s, str);
    ck_assert_ptr_eq(s.v[0], str);
    for (int i = 0; i < 100; i++)
        strvec_push_take(&s, xasprintf("%d", i));
    ck_assert_uint_eq(s.n, 101);
    ck_assert_str_eq(s.v[0], "mine");
    ck_assert_str_eq(s.v[100], "99");
    strvec_clear(&s);
}
END_TEST

START_TEST(strvec_contains_cases)
{
    StrVec s = {0};
    ck_assert(!strvec_contains(&s, "a")); /* zero-initialised: v is NULL */
    strvec_push(&s, "a");
    strvec_push(&s, "");
    ck_assert(strvec_contains(&s, "a"));
    ck_assert(strvec_contains(&s, ""));
    ck_assert(!strvec_contains(&s, "A"));
    ck_assert(!strvec_contains(&s, "ab"));
    strvec_clear(&s);
}
END_TEST

START_TEST(strvec_index_cases)
{
    StrVec s = {0};
    ck_assert_int_eq(strvec_index(&s, "a"), -1);
    strvec_push(&s, "a");
    strvec_push(&s, "b");
    strvec_push(&s, "a");
    ck_assert_int_eq(strvec_index(&s, "a"), 0); /* the first of duplicates */
    ck_assert_int_eq(strvec_index(&s, "b"), 1);
    ck_assert_int_eq(strvec_index(&s, "c"), -1);
    ck_assert_int_eq(strvec_index(&s, "b\0x"), 1); /* C strings: up to the NUL */
    strvec_clear(&s);
}
END_TEST

START_TEST(strvec_clear_empties_and_allows_reuse)
{
    StrVec s = {0};
    strvec_push(&s, "a");
    strvec_push(&s, "b");
    strvec_clear(&s);
    ck_assert_uint_eq(s.n, 0);
    ck_assert_uint_eq(s.cap, 0);
    ck_assert_ptr_null(s.v);
    ck_assert(!strvec_contains(&s, "a"));
    strvec_clear(&s); /* twice is fine */
    strvec_push(&s, "c");
    ck_assert_int_eq(strvec_index(&s, "c"), 0);
    strvec_clear(&s);
}
END_TEST

START_TEST(diag_error_formats_in_order)
{
    diag_error(&d, "bad %s %d", "thing", 3);
    diag_error(&d, "second");
    ck_assert_uint_eq(diag_n_errors(&d), 2);
    ck_assert_str_eq(d.errors.v[0], "bad thing 3");
    ck_assert_str_eq(d.errors.v[1], "second");
    ck_assert_uint_eq(d.warnings.n, 0);
    ck_assert_uint_eq(diag_n_errors(NULL), 0);
}
END_TEST

START_TEST(diag_warning_is_no_error)
{
    diag_warning(&d, "careful: %s", "x");
    ck_assert_uint_eq(diag_n_errors(&d), 0);
    ck_assert_uint_eq(d.warnings.n, 1);
    ck_assert_str_eq(d.warnings.v[0], "careful: x");
}
END_TEST

START_TEST(diag_error_at_positions)
{
    diag_error_at(&d, "dir/app.yaml", 12, 5, "unknown key '%s'", "x");
    diag_error_at(&d, NULL, 1, 1, "no file");
    diag_error_at(&d, "f", 0, 0, "%s", "100%");
    ck_assert_uint_eq(diag_n_errors(&d), 3);
    ck_assert_str_eq(d.errors.v[0], "dir/app.yaml:12:5: unknown key 'x'");
    ck_assert_str_eq(d.errors.v[1], "<input>:1:1: no file");
    ck_assert_str_eq(d.errors.v[2], "f:0:0: 100%");
    ck_assert_uint_eq(d.warnings.n, 0);
}
END_TEST

START_TEST(diag_clear_empties_both)
{
    diag_error(&d, "e");
    diag_warning(&d, "w");
    diag_clear(&d);
    ck_assert_uint_eq(diag_n_errors(&d), 0);
    ck_assert_uint_eq(d.warnings.n, 0);
    ck_assert_ptr_null(d.errors.v);
    ck_assert_ptr_null(d.warnings.v);
    diag_error(&d, "again");
    ck_assert_str_eq(d.errors.v[0], "again");
}
END_TEST

START_TEST(write_all_writes_everything_and_says_why_not)
{
    /* More than a pipe holds at once: a reader drains it while it writes. */
    enum { N = 1 << 20 };
    char *buf = xmalloc(N);
    for (size_t i = 0; i < N; i++)
        buf[i] = (char)(i * 7);
    int p[2];
    ck_assert_int_eq(pipe(p), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        close(p[1]);
        size_t got = 0, bad = 0;
        char b[4096];
        for (ssize_t n; (n = read(p[0], b, sizeof(b))) > 0; got += (size_t)n)
            for (ssize_t k = 0; k < n; k++)
                bad += b[k] != (char)((got + (size_t)k) * 7);
        _exit(got == N && bad == 0 ? 0 : 1);
    }
    close(p[0]);
    ck_assert_int_eq(write_all(p[1], buf, N), 0);
    close(p[1]);
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    /* A reader gone: -EPIPE (SIGPIPE ignored, as reld and relctl do). */
    ck_assert_int_eq(pipe(p), 0);
    close(p[0]);
    void (*old)(int) = signal(SIGPIPE, SIG_IGN);
    ck_assert_int_eq(write_all(p[1], buf, 10), -EPIPE);
    signal(SIGPIPE, old);
    close(p[1]);
    /* A full device, and a descriptor not open for writing. */
    int full = open("/dev/full", O_WRONLY | O_CLOEXEC);
    if (full >= 0) {
        ck_assert_int_eq(write_all(full, buf, 10), -ENOSPC);
        close(full);
    }
    ck_assert_int_eq(write_all(-1, buf, 10), -EBADF);
    ck_assert_int_eq(write_all(-1, buf, 0), 0); /* nothing to write: nothing done */
    free(buf);
}
END_TEST

START_TEST(path_walk_depth_down_and_up)
{
    ck_assert_int_eq(path_walk_depth("a", 0), 1);
    ck_assert_int_eq(path_walk_depth("a/b/c", 0), 3);
    ck_assert_int_eq(path_walk_depth("a/b", 2), 4);
    ck_assert_int_eq(path_walk_depth("a/..", 0), 0);
    ck_assert_int_eq(path_walk_depth("a/../b", 0), 1);
    ck_assert_int_eq(path_walk_depth("..", 1), 0);
    ck_assert_int_eq(path_walk_depth("../x", 1), 1);
    ck_assert_int_eq(path_walk_depth("a/../..", 1), 0);
}
END_TEST

START_TEST(path_walk_depth_climbing_above)
{
    ck_assert_int_eq(path_walk_depth("..", 0), -1);
    ck_assert_int_eq(path_walk_depth("a/../..", 0), -1);
    ck_assert_int_eq(path_walk_depth("../a", 0), -1); /* coming back down does not help */
    ck_assert_int_eq(path_walk_depth("../../a/b/c", 1), -1);
    ck_assert_int_eq(path_walk_depth("a/b/../../..", 0), -1);
    ck_assert_int_eq(path_walk_depth("./..", 0), -1);
}
END_TEST

START_TEST(path_walk_depth_refused_forms)
{
    ck_assert_int_eq(path_walk_depth("/a", 0), -1);
    ck_assert_int_eq(path_walk_depth("/", 5), -1);
    ck_assert_int_eq(path_walk_depth("", 0), -1);
    ck_assert_int_eq(path_walk_depth("", 3), -1);
    ck_assert_int_eq(path_walk_depth(NULL, 3), -1);
}
END_TEST

START_TEST(path_walk_depth_dots_and_slashes)
{
    ck_assert_int_eq(path_walk_depth("./x", 0), 1);
    ck_assert_int_eq(path_walk_depth(".", 0), 0);
    ck_assert_int_eq(path_walk_depth(".", 2), 2);
    ck_assert_int_eq(path_walk_depth("a/./b/.", 0), 2);
    ck_assert_int_eq(path_walk_depth("a//b/", 0), 2);
    ck_assert_int_eq(path_walk_depth("a/", 0), 1);
    /* Names that only start with dots are names. */
    ck_assert_int_eq(path_walk_depth("...", 0), 1);
    ck_assert_int_eq(path_walk_depth("..a", 0), 1);
    ck_assert_int_eq(path_walk_depth(".a/..b", 0), 2);
}
END_TEST

START_TEST(name_is_valid_boundaries)
{
    char *s64 = repeat('a', 63, 'Z'), *s65 = repeat('a', 64, 'Z');
    ck_assert(name_is_valid(s64));
    ck_assert(!name_is_valid(s65));
    free(s64);
    free(s65);
    ck_assert(name_is_valid("a"));
    ck_assert(name_is_valid("_"));
    ck_assert(name_is_valid("Z9_x"));
    ck_assert(!name_is_valid(""));
    ck_assert(!name_is_valid(NULL));
}
END_TEST

START_TEST(name_is_valid_characters)
{
    ck_assert(!name_is_valid("9a"));  /* a digit first */
    ck_assert(!name_is_valid("-a"));  /* not first */
    ck_assert(!name_is_valid("a-b")); /* nor anywhere */
    ck_assert(!name_is_valid("a.b"));
    ck_assert(!name_is_valid("a b"));
    ck_assert(!name_is_valid("a/b"));
    ck_assert(!name_is_valid("caf\xc3\xa9")); /* ASCII only */
    ck_assert(!name_is_valid("\xc3\xa9"));
    ck_assert(!name_is_valid("a\n"));
}
END_TEST

START_TEST(version_is_valid_boundaries)
{
    char *s64 = repeat('1', 63, 'a'), *s65 = repeat('1', 64, 'a');
    ck_assert(version_is_valid(s64));
    ck_assert(!version_is_valid(s65));
    free(s64);
    free(s65);
    ck_assert(version_is_valid("1"));
    ck_assert(version_is_valid("a"));
    ck_assert(!version_is_valid(""));
    ck_assert(!version_is_valid(NULL));
}
END_TEST

START_TEST(version_is_valid_characters)
{
    ck_assert(version_is_valid("1.0.2-rc1+b~2"));
    ck_assert(version_is_valid("Z.-_+~"));
    ck_assert(!version_is_valid(".1")); /* punctuation is never first */
    ck_assert(!version_is_valid("-1"));
    ck_assert(!version_is_valid("+1"));
    ck_assert(!version_is_valid("~1"));
    ck_assert(!version_is_valid("_1"));
    ck_assert(version_is_valid("1_0"));
    ck_assert(!version_is_valid("../1"));
    ck_assert(!version_is_valid("1/2"));
    ck_assert(!version_is_valid("1 2"));
    ck_assert(!version_is_valid("1\xc3\xa9"));
}
END_TEST

START_TEST(strmap_put_get)
{
    StrMap m = {0};
    ck_assert(!strmap_get(&m, "a", NULL)); /* zero-initialised */
    strmap_put(&m, "a", 0);
    strmap_put(&m, "b", 7);
    size_t v = 99;
    ck_assert(strmap_get(&m, "a", &v));
    ck_assert_uint_eq(v, 0);
    ck_assert(strmap_get(&m, "b", &v));
    ck_assert_uint_eq(v, 7);
    v = 99;
    ck_assert(!strmap_get(&m, "c", &v));
    ck_assert_uint_eq(v, 99); /* untouched when absent */
    ck_assert(strmap_get(&m, "b", NULL));
    ck_assert_uint_eq(m.n, 2);
    strmap_clear(&m);
}
END_TEST

START_TEST(strmap_put_replaces)
{
    StrMap m = {0};
    char k1[] = "key", k2[] = "key";
    strmap_put(&m, k1, 1);
    strmap_put(&m, k2, 2);
    ck_assert_uint_eq(m.n, 1);
    size_t v = 0;
    ck_assert(strmap_get(&m, "key", &v));
    ck_assert_uint_eq(v, 2);
    /* Keys are borrowed, not copied: the map holds the newest pointer. */
    bool found = false;
    for (size_t i = 0; i < m.cap; i++)
        if (m.keys[i])
            found = m.keys[i] == k2;
    ck_assert(found);
    strmap_clear(&m);
}
END_TEST

START_TEST(strmap_grows_with_many_keys)
{
    enum { N = 5000 };
    static char keys[N][16];
    StrMap m = {0};
    for (size_t i = 0; i < N; i++) {
        snprintf(keys[i], sizeof(keys[i]), "k%zu", i);
        strmap_put(&m, keys[i], i);
        ck_assert_uint_le(m.n * 2, m.cap); /* at most half full */
    }
    ck_assert_uint_eq(m.n, N);
    ck_assert_uint_eq(m.cap & (m.cap - 1), 0);
    for (size_t i = 0; i < N; i++) {
        size_t v = SIZE_MAX;
        ck_assert_msg(strmap_get(&m, keys[i], &v), "lost %s", keys[i]);
        ck_assert_uint_eq(v, i);
    }
    ck_assert(!strmap_get(&m, "k5000", NULL));
    ck_assert(!strmap_get(&m, "", NULL));
    for (size_t i = 0; i < N; i += 2)
        strmap_put(&m, keys[i], i + 1);
    ck_assert_uint_eq(m.n, N);
    size_t v = 0;
    ck_assert(strmap_get(&m, "k10", &v));
    ck_assert_uint_eq(v, 11);
    ck_assert(strmap_get(&m, "k11", &v));
    ck_assert_uint_eq(v, 11);
    strmap_clear(&m);
}
END_TEST

/* Reserved room is not grown again while filling to it, keys put before
 * stay, and reserving less than there is changes nothing. */
START_TEST(strmap_reserve_room)
{
    enum { N = 3000 };
    static char keys[N][16];
    StrMap m = {0};
    strmap_put(&m, "first", 42);
    strmap_reserve(&m, N + 1);
    size_t cap = m.cap;
    ck_assert_uint_ge(cap, 2 * ((size_t)N + 1));
    ck_assert_uint_eq(cap & (cap - 1), 0);
    for (size_t i = 0; i < N; i++) {
        snprintf(keys[i], sizeof(keys[i]), "r%zu", i);
        strmap_put(&m, keys[i], i);
    }
    ck_assert_uint_eq(m.cap, cap);
    ck_assert_uint_eq(m.n, N + 1);
    size_t v = 0;
    ck_assert(strmap_get(&m, "first", &v));
    ck_assert_uint_eq(v, 42);
    for (size_t i = 0; i < N; i++)
        ck_assert(strmap_get(&m, keys[i], &v) && v == i);
    strmap_reserve(&m, 10);
    ck_assert_uint_eq(m.cap, cap);
    strmap_clear(&m);
    strmap_reserve(&m, 0); /* an empty map stays usable */
    ck_assert(!strmap_get(&m, "first", NULL));
    strmap_put(&m, "x", 1);
    ck_assert(strmap_get(&m, "x", &v) && v == 1);
    strmap_clear(&m);
}
END_TEST

START_TEST(strmap_clear_empties)
{
    StrMap m = {0};
    strmap_put(&m, "a", 1);
    strmap_clear(&m);
    ck_assert_uint_eq(m.n, 0);
    ck_assert_uint_eq(m.cap, 0);
    ck_assert(!strmap_get(&m, "a", NULL));
    strmap_put(&m, "a", 2);
    size_t v = 0;
    ck_assert(strmap_get(&m, "a", &v));
    ck_assert_uint_eq(v, 2);
    strmap_clear(&m);
}
END_TEST

/* ---- yamlutil ------------------------------------------------------------- */

static YamlCtx y;

static void ysetup(void)
{
    d = (Diag){0};
    y = (YamlCtx){0};
}

static void yteardown(void)
{
    yaml_ctx_done(&y);
    diag_clear(&d);
}

static yaml_node_t *load(const char *text)
{
    return yaml_ctx_load(&y, "c.yaml", text, strlen(text), &d);
}

/* Loads text that must parse, as a mapping. */
static yaml_node_t *load_map(const char *text)
{
    yaml_node_t *root = load(text);
    ck_assert_msg(root, "no root: %s", test_diag_text(&d));
    ck_assert_int_eq(root->type, YAML_MAPPING_NODE);
    return root;
}

/* yaml_ctx_load composes the document itself, in the pass that checks the
 * bounds: it must be the one libyaml's own loader builds, node for node
 * (type, text, style, both positions, items and pairs), tags aside. */
static void ck_assert_same_as_libyaml(const char *text)
{
    yaml_parser_t p;
    yaml_document_t want;
    ck_assert(yaml_parser_initialize(&p));
    yaml_parser_set_input_string(&p, (const unsigned char *)text, strlen(text));
    ck_assert_msg(yaml_parser_load(&p, &want), "libyaml refuses: %s", text);
    yaml_parser_delete(&p);
    YamlCtx c;
    Diag dd = {0};
    yaml_node_t *root = yaml_ctx_load(&c, "c.yaml", text, strlen(text), &dd);
    ck_assert_msg(root, "refused: %s: %s", text, test_diag_text(&dd));
    ck_assert_int_eq(c.doc.nodes.top - c.doc.nodes.start, want.nodes.top - want.nodes.start);
    for (yaml_node_t *a = c.doc.nodes.start, *b = want.nodes.start; a < c.doc.nodes.top; a++, b++) {
        ck_assert_int_eq(a->type, b->type);
        ck_assert_int_eq(a->start_mark.index, b->start_mark.index);
        ck_assert_int_eq(a->start_mark.line, b->start_mark.line);
        ck_assert_int_eq(a->start_mark.column, b->start_mark.column);
        ck_assert_int_eq(a->end_mark.index, b->end_mark.index);
        ck_assert_int_eq(a->end_mark.line, b->end_mark.line);
        ck_assert_int_eq(a->end_mark.column, b->end_mark.column);
        if (a->type == YAML_SCALAR_NODE) {
            ck_assert_int_eq(a->data.scalar.length, b->data.scalar.length);
            ck_assert(memcmp(a->data.scalar.value, b->data.scalar.value, a->data.scalar.length + 1) == 0);
            ck_assert_int_eq(a->data.scalar.style, b->data.scalar.style);
        } else if (a->type == YAML_SEQUENCE_NODE) {
            ck_assert_int_eq(a->data.sequence.style, b->data.sequence.style);
            size_t n = (size_t)(a->data.sequence.items.top - a->data.sequence.items.start);
            ck_assert_int_eq(n, b->data.sequence.items.top - b->data.sequence.items.start);
            for (size_t i = 0; i < n; i++)
                ck_assert_int_eq(a->data.sequence.items.start[i], b->data.sequence.items.start[i]);
        } else {
            ck_assert_int_eq(a->data.mapping.style, b->data.mapping.style);
            size_t n = (size_t)(a->data.mapping.pairs.top - a->data.mapping.pairs.start);
            ck_assert_int_eq(n, b->data.mapping.pairs.top - b->data.mapping.pairs.start);
            for (size_t i = 0; i < n; i++) {
                ck_assert_int_eq(a->data.mapping.pairs.start[i].key, b->data.mapping.pairs.start[i].key);
                ck_assert_int_eq(a->data.mapping.pairs.start[i].value, b->data.mapping.pairs.start[i].value);
            }
        }
    }
    yaml_ctx_done(&c);
    yaml_document_delete(&want);
    diag_clear(&dd);
}

START_TEST(yaml_ctx_load_same_document_as_libyaml)
{
    ck_assert_same_as_libyaml("a: 1\nb: [x, y]\n");
    ck_assert_same_as_libyaml("x\n");
    ck_assert_same_as_libyaml("---\n");
    ck_assert_same_as_libyaml(
        "- [a, [b, {c: d, e: [f]}], {}]\n- 'q'\n- \"r\\ts\"\n- |\n  block\n  text\n- >\n  folded\n");
    ck_assert_same_as_libyaml("a: &x {k: [1, 2]}\nb: *x\nc: &y s\nd: [*y, *x, *y]\n? [complex, key]\n: v\n");
    ck_assert_same_as_libyaml(
        "%YAML 1.1\n%TAG !e! tag:example.com,2000:\n--- !e!m\n!!str a: !e!s [1]\n...\n--- second\n");
    ck_assert_same_as_libyaml("{\"from\": \"1\", \"up\": [{\"op\": \"load\", \"n\": 5}], \"e\": null}\n");
}
END_TEST

/* libyaml's loader refused these; the one pass refuses them in its words,
 * at its position. */
START_TEST(yaml_ctx_load_composer_errors)
{
    ck_assert_ptr_null(load("a: &x 1\nb: &x 2\n"));
    ck_assert_str_eq(d.errors.v[0], "c.yaml:2:4: second occurrence found duplicate anchor; first occurrence");
    yaml_ctx_done(&y);
    diag_clear(&d);
    ck_assert_ptr_null(load("a: 1\nb: [c, *nope]\n"));
    ck_assert_str_eq(d.errors.v[0], "c.yaml:2:8: found undefined alias");
    ck_assert_int_eq(d.errors.n, 1);
}
END_TEST

START_TEST(yaml_ctx_load_document)
{
    yaml_node_t *root = load("a: 1\nb: [x, y]\n");
    ck_assert_ptr_nonnull(root);
    ck_assert_int_eq(root->type, YAML_MAPPING_NODE);
    ck_assert(!y.empty);
    ck_assert_no_errors();
    ck_assert_str_eq(y.file, "c.yaml");
}
END_TEST

START_TEST(yaml_ctx_load_empty_is_an_error)
{
    static const char *const inputs[] = {"", "\n\n  \n", "# only\n  # comments\n", "\xef\xbb\xbf"};
    for (size_t i = 0; i < sizeof(inputs) / sizeof(*inputs); i++) {
        ck_assert_ptr_null(load(inputs[i]));
        ck_assert_msg(y.empty, "input %zu", i);
        ck_assert_uint_eq(d.errors.n, 1);
        ck_assert_str_eq(d.errors.v[0], "c.yaml:1:1: empty document");
        yaml_ctx_done(&y);
        diag_clear(&d);
    }
}
END_TEST

START_TEST(yaml_ctx_load_bare_document_marker)
{
    /* "---" alone is a document whose root is an empty (null) scalar. */
    yaml_node_t *root = load("# x\n---\n# y\n");
    ck_assert_ptr_nonnull(root);
    ck_assert_int_eq(root->type, YAML_SCALAR_NODE);
    ck_assert_str_eq(yaml_scalar(root), "");
    ck_assert(y.empty);
    ck_assert_no_errors();
}
END_TEST

START_TEST(yaml_ctx_load_syntax_error)
{
    ck_assert_ptr_null(load("a: 1\nb: [x, y\n"));
    ck_assert(!y.empty);
    ck_assert_uint_eq(d.errors.n, 1);
    ck_assert_error("c.yaml:3:1: did not find expected ',' or ']' while parsing a flow sequence");
    yaml_ctx_done(&y);
    diag_clear(&d);

    ck_assert_ptr_null(yaml_ctx_load(&y, NULL, "a: b: c\n", 8, &d));
    ck_assert_error("<input>:1:5: mapping values are not allowed in this context");
    yaml_ctx_done(&y);
    diag_clear(&d);

    ck_assert_ptr_null(load("a:\n\tb: 1\n")); /* a tab in the indentation */
    ck_assert_error("c.yaml:2:1: found character that cannot start any token while scanning for the next token");
}
END_TEST

START_TEST(yaml_ctx_load_reads_len_bytes_only)
{
    const char *text = "a: 1\n}}} not read";
    yaml_node_t *root = yaml_ctx_load(&y, "c.yaml", text, 5, &d);
    ck_assert_ptr_nonnull(root);
    ck_assert_no_errors();
}
END_TEST

START_TEST(yaml_ctx_load_first_document_only)
{
    /* As documented: what follows the first document is not read, not even
     * a syntax error in it. */
    yaml_node_t *root = load("a: 1\n---\nb: [\n");
    ck_assert_ptr_nonnull(root);
    ck_assert_no_errors();
    ck_assert_ptr_nonnull(yaml_map_get(&y, root, "a"));
    ck_assert_ptr_null(yaml_map_get(&y, root, "b"));
}
END_TEST

START_TEST(yaml_ctx_load_optional_empty_inputs)
{
    static const char *const inputs[] = {
        "",      "\n",  "   \n\n",         "# only a comment", "# a\n  # b\n", "\xef\xbb\xbf# bom\n",
        "---\n", "---", "# a\n---\n# b\n",
    };
    for (size_t i = 0; i < sizeof(inputs) / sizeof(*inputs); i++) {
        yaml_node_t *root = yaml_ctx_load_optional(&y, "c.yaml", inputs[i], strlen(inputs[i]), &d);
        ck_assert_msg(!root, "input %zu has a root", i);
        ck_assert_msg(y.empty, "input %zu is not empty", i);
        ck_assert_msg(d.errors.n == 0, "input %zu: %s", i, test_diag_text(&d));
        yaml_ctx_done(&y);
    }
}
END_TEST

START_TEST(yaml_ctx_load_optional_content)
{
    static const char *const scalars[] = {"~\n", "null\n", "--- ''\n", "--- !tag\n", "x\n"};
    for (size_t i = 0; i < sizeof(scalars) / sizeof(*scalars); i++) {
        yaml_node_t *root = yaml_ctx_load_optional(&y, "c.yaml", scalars[i], strlen(scalars[i]), &d);
        ck_assert_msg(root, "input %zu: no root", i);
        ck_assert_int_eq(root->type, YAML_SCALAR_NODE);
        ck_assert(!y.empty);
        yaml_ctx_done(&y);
    }
    yaml_node_t *root = yaml_ctx_load_optional(&y, "c.yaml", "# c\nroot: /x\n", 13, &d);
    ck_assert_ptr_nonnull(root);
    ck_assert_int_eq(root->type, YAML_MAPPING_NODE);
    ck_assert(!y.empty);
    ck_assert_no_errors();
}
END_TEST

START_TEST(yaml_ctx_load_optional_syntax_error)
{
    const char *text = "# c\nroot: [\n";
    ck_assert_ptr_null(yaml_ctx_load_optional(&y, "c.yaml", text, strlen(text), &d));
    ck_assert(!y.empty);
    ck_assert_uint_eq(d.errors.n, 1);
    ck_assert_error("c.yaml:3:1: did not find expected node content while parsing a flow node");
}
END_TEST

START_TEST(yaml_ctx_done_is_idempotent)
{
    yaml_ctx_done(&y); /* never loaded (zeroed) */
    ck_assert_ptr_nonnull(load("a: 1\n"));
    ck_assert(y.have_doc);
    yaml_ctx_done(&y);
    ck_assert(!y.have_doc);
    yaml_ctx_done(&y);
    ck_assert_ptr_null(load("a: [\n")); /* after a failed load */
    ck_assert(!y.have_doc);
    yaml_ctx_done(&y);
}
END_TEST

START_TEST(yaml_pos_of_nodes)
{
    yaml_node_t *root = load_map("# c\nkey:\n  - one\n  -   two\n");
    yaml_node_t *list = yaml_map_get(&y, root, "key");
    yaml_node_t *two = yaml_child(&y, list->data.sequence.items.start[1]);
    SrcPos p = yaml_pos(&y, root);
    ck_assert_str_eq(p.file, "c.yaml");
    ck_assert_int_eq(p.line, 2);
    ck_assert_int_eq(p.col, 1);
    p = yaml_pos(&y, two);
    ck_assert_int_eq(p.line, 4);
    ck_assert_int_eq(p.col, 7);
    p = yaml_pos(&y, NULL);
    ck_assert_str_eq(p.file, "c.yaml");
    ck_assert_int_eq(p.line, 0);
    ck_assert_int_eq(p.col, 0);
}
END_TEST

START_TEST(yaml_error_positions)
{
    yaml_node_t *root = load_map("a: 1\nb:   x\n");
    yaml_error(&y, yaml_map_get(&y, root, "b"), "bad %s", "b");
    yaml_error(&y, NULL, "no node");
    ck_assert_uint_eq(d.errors.n, 2);
    ck_assert_str_eq(d.errors.v[0], "c.yaml:2:6: bad b");
    ck_assert_str_eq(d.errors.v[1], "c.yaml:1:1: no node");
}
END_TEST

START_TEST(yaml_child_bounds)
{
    load_map("a: 1\n");
    /* Nodes are numbered from 1: the mapping, "a", "1". */
    ck_assert_ptr_null(yaml_child(&y, 0));
    ck_assert_int_eq(yaml_child(&y, 1)->type, YAML_MAPPING_NODE);
    ck_assert_str_eq(yaml_scalar(yaml_child(&y, 3)), "1");
    ck_assert_ptr_null(yaml_child(&y, 4));
    ck_assert_ptr_null(yaml_child(&y, -1));
}
END_TEST

START_TEST(yaml_kind_names)
{
    yaml_node_t *root = load_map("s: x\nl: []\nm: {}\n");
    ck_assert_str_eq(yaml_kind(root), "a mapping");
    ck_assert_str_eq(yaml_kind(yaml_map_get(&y, root, "s")), "a scalar");
    ck_assert_str_eq(yaml_kind(yaml_map_get(&y, root, "l")), "a list");
    ck_assert_str_eq(yaml_kind(yaml_map_get(&y, root, "m")), "a mapping");
    yaml_node_t none = {.type = YAML_NO_NODE};
    ck_assert_str_eq(yaml_kind(&none), "empty");
}
END_TEST

START_TEST(yaml_scalar_values)
{
    yaml_node_t *root = load_map("s: \"x y\"\ne:\nl: [a]\n");
    ck_assert_str_eq(yaml_scalar(yaml_map_get(&y, root, "s")), "x y");
    ck_assert_str_eq(yaml_scalar(yaml_map_get(&y, root, "e")), "");
    ck_assert_ptr_null(yaml_scalar(yaml_map_get(&y, root, "l")));
    ck_assert_ptr_null(yaml_scalar(root));
    ck_assert_ptr_null(yaml_scalar(NULL));
}
END_TEST

START_TEST(yaml_map_get_lookups)
{
    yaml_node_t *root = load_map("a: 1\n[x]: 2\nb: 3\na: 4\n");
    ck_assert_str_eq(yaml_scalar(yaml_map_get(&y, root, "b")), "3");
    ck_assert_str_eq(yaml_scalar(yaml_map_get(&y, root, "a")), "1"); /* the first of duplicates */
    ck_assert_ptr_null(yaml_map_get(&y, root, "x"));                 /* a list key is skipped */
    ck_assert_ptr_null(yaml_map_get(&y, root, "A"));
    ck_assert_ptr_null(yaml_map_get(&y, yaml_map_get(&y, root, "b"), "a")); /* not a mapping */
    ck_assert_ptr_null(yaml_map_get(&y, NULL, "a"));
    ck_assert_no_errors();
}
END_TEST

static const char *const KEYS[] = {"root", "socket", NULL};

START_TEST(yaml_map_check_keys_good)
{
    yaml_node_t *root = load_map("root: /x\nsocket: /s\n");
    yaml_map_check_keys(&y, root, KEYS, "config");
    yaml_map_check_keys(&y, yaml_map_get(&y, root, "root"), KEYS, "config"); /* no mapping: ignored */
    yaml_map_check_keys(&y, NULL, KEYS, "config");
    ck_assert_no_errors();
}
END_TEST

START_TEST(yaml_map_check_keys_unknown_and_duplicate)
{
    yaml_node_t *root = load_map("root: /x\nsokcet: /s\nroot: /y\n");
    yaml_map_check_keys(&y, root, KEYS, "config");
    ck_assert_uint_eq(d.errors.n, 2);
    ck_assert_str_eq(d.errors.v[0], "c.yaml:2:1: unknown key 'sokcet' in config");
    ck_assert_str_eq(d.errors.v[1], "c.yaml:3:1: duplicate key 'root' in config");
}
END_TEST

START_TEST(yaml_map_check_keys_non_string_key)
{
    yaml_node_t *root = load_map("root: /x\n? [a, b]\n: 1\n{k: v}: 2\n");
    yaml_map_check_keys(&y, root, KEYS, "config");
    ck_assert_uint_eq(d.errors.n, 2);
    ck_assert_str_eq(d.errors.v[0], "c.yaml:2:3: config key must be a string, not a list");
    ck_assert_str_eq(d.errors.v[1], "c.yaml:4:1: config key must be a string, not a mapping");
}
END_TEST

START_TEST(yaml_get_string_present_and_absent)
{
    yaml_node_t *root = load_map("root: /x\nempty: ''\n");
    char *s = NULL;
    ck_assert(yaml_get_string(&y, root, "root", true, &s));
    ck_assert_str_eq(s, "/x");
    free(s);
    s = NULL;
    ck_assert(yaml_get_string(&y, root, "empty", true, &s));
    ck_assert_str_eq(s, "");
    free(s);
    s = NULL;
    ck_assert(yaml_get_string(&y, root, "socket", false, &s));
    ck_assert_ptr_null(s); /* untouched */
    ck_assert_no_errors();
}
END_TEST

START_TEST(yaml_get_string_missing_required)
{
    yaml_node_t *root = load_map("# c\n  root: /x\n");
    char *s = NULL;
    ck_assert(!yaml_get_string(&y, root, "socket", true, &s));
    ck_assert_ptr_null(s);
    ck_assert_uint_eq(d.errors.n, 1);
    ck_assert_str_eq(d.errors.v[0], "c.yaml:2:3: missing field 'socket'");
}
END_TEST

START_TEST(yaml_get_string_wrong_type)
{
    yaml_node_t *root = load_map("root:\n  - /x\nsocket: {a: b}\n");
    char *s = NULL;
    ck_assert(!yaml_get_string(&y, root, "root", true, &s));
    ck_assert(!yaml_get_string(&y, root, "socket", false, &s)); /* present, so checked */
    ck_assert_ptr_null(s);
    ck_assert_uint_eq(d.errors.n, 2);
    ck_assert_str_eq(d.errors.v[0], "c.yaml:2:3: field 'root' must be a string, not a list");
    ck_assert_str_eq(d.errors.v[1], "c.yaml:3:9: field 'socket' must be a string, not a mapping");
}
END_TEST

START_TEST(yaml_get_long_in_range)
{
    yaml_node_t *root = load_map("lo: 1\nhi: 100\nneg: -5\nplus: +7\nq: \"42\"\n");
    long v = 0;
    ck_assert(yaml_get_long(&y, root, "lo", 1, 100, &v));
    ck_assert_int_eq(v, 1);
    ck_assert(yaml_get_long(&y, root, "hi", 1, 100, &v));
    ck_assert_int_eq(v, 100);
    ck_assert(yaml_get_long(&y, root, "neg", -5, 0, &v));
    ck_assert_int_eq(v, -5);
    ck_assert(yaml_get_long(&y, root, "plus", 0, 10, &v));
    ck_assert_int_eq(v, 7);
    ck_assert(yaml_get_long(&y, root, "q", 0, 100, &v));
    ck_assert_int_eq(v, 42);
    v = 123;
    ck_assert(yaml_get_long(&y, root, "absent", 0, 1, &v));
    ck_assert_int_eq(v, 123);
    ck_assert_no_errors();
}
END_TEST

START_TEST(yaml_get_long_out_of_range)
{
    yaml_node_t *root = load_map("lo: 0\nhi: 101\nhuge: 99999999999999999999\n");
    long v = 123;
    ck_assert(!yaml_get_long(&y, root, "lo", 1, 100, &v));
    ck_assert(!yaml_get_long(&y, root, "hi", 1, 100, &v));
    ck_assert(!yaml_get_long(&y, root, "huge", 0, 0x7fffffffffffffffL, &v));
    ck_assert_int_eq(v, 123);
    ck_assert_uint_eq(d.errors.n, 3);
    ck_assert_str_eq(d.errors.v[0], "c.yaml:1:5: field 'lo' must be an integer from 1 to 100");
    ck_assert_str_eq(d.errors.v[1], "c.yaml:2:5: field 'hi' must be an integer from 1 to 100");
    ck_assert_str_eq(d.errors.v[2], "c.yaml:3:7: field 'huge' must be an integer from 0 to 9223372036854775807");
}
END_TEST

START_TEST(yaml_get_long_not_an_integer)
{
    static const char *const bad[] = {"a: 12x\n",    "a: 1.5\n", "a: 0x10\n", "a: ''\n",    "a: \" 5\"\n",
                                      "a: \"5 \"\n", "a: [1]\n", "a: {}\n",   "a: \"-\"\n", "a:\n"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
        yaml_node_t *root = load_map(bad[i]);
        long v = 123;
        ck_assert_msg(!yaml_get_long(&y, root, "a", -1000, 1000, &v), "accepted %s", bad[i]);
        ck_assert_int_eq(v, 123);
        ck_assert_uint_eq(d.errors.n, 1);
        ck_assert_msg(strncmp(d.errors.v[0], "c.yaml:1:", 9) == 0 &&
                          strstr(d.errors.v[0], ": field 'a' must be an integer from -1000 to 1000"),
                      "%s", d.errors.v[0]);
        yaml_ctx_done(&y);
        diag_clear(&d);
    }
}
END_TEST

START_TEST(yaml_get_strlist_list_and_single)
{
    yaml_node_t *root = load_map("one: x\nlist:\n  - a\n  - b\nnone: []\n");
    StrVec v = {0};
    SrcPos *pos = NULL;
    ck_assert(yaml_get_strlist(&y, yaml_map_get(&y, root, "one"), "one", &v, &pos));
    ck_assert_uint_eq(v.n, 1);
    ck_assert_str_eq(v.v[0], "x");
    ck_assert_int_eq(pos[0].line, 1);
    ck_assert_int_eq(pos[0].col, 6);
    strvec_clear(&v);
    free(pos);
    pos = NULL;

    ck_assert(yaml_get_strlist(&y, yaml_map_get(&y, root, "list"), "list", &v, &pos));
    ck_assert_uint_eq(v.n, 2);
    ck_assert_str_eq(v.v[1], "b");
    ck_assert_int_eq(pos[1].line, 4);
    ck_assert_int_eq(pos[1].col, 5);
    ck_assert_str_eq(pos[1].file, "c.yaml");
    strvec_clear(&v);
    free(pos);

    ck_assert(yaml_get_strlist(&y, yaml_map_get(&y, root, "none"), "none", &v, NULL));
    ck_assert_uint_eq(v.n, 0);
    strvec_clear(&v);
    ck_assert_no_errors();
}
END_TEST

START_TEST(yaml_get_strlist_wrong_types)
{
    yaml_node_t *root = load_map("bad: [a, [b], {c: d}]\nmap: {a: b}\n");
    StrVec v = {0};
    SrcPos *pos = NULL;
    ck_assert(!yaml_get_strlist(&y, yaml_map_get(&y, root, "bad"), "modules", &v, &pos));
    ck_assert(!yaml_get_strlist(&y, yaml_map_get(&y, root, "map"), "modules", &v, &pos));
    ck_assert_uint_eq(v.n, 0); /* untouched, nothing leaked (ASan) */
    ck_assert_ptr_null(pos);
    ck_assert_uint_eq(d.errors.n, 3);
    ck_assert_str_eq(d.errors.v[0], "c.yaml:1:10: modules must list strings, not a list");
    ck_assert_str_eq(d.errors.v[1], "c.yaml:1:15: modules must list strings, not a mapping");
    ck_assert_str_eq(d.errors.v[2], "c.yaml:2:6: modules must be a list, not a mapping");
}
END_TEST

static char *to_json(const char *yaml)
{
    yaml_node_t *root = load(yaml);
    ck_assert_msg(root, "%s: %s", yaml, test_diag_text(&d));
    json_t *j = yaml_to_json(&y, root);
    char *s = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY | JSON_SORT_KEYS);
    json_decref(j);
    yaml_ctx_done(&y);
    return s;
}

#define ck_assert_json(yaml, want)                                                                                     \
    do {                                                                                                               \
        char *_s = to_json(yaml);                                                                                      \
        ck_assert_str_eq(_s, want);                                                                                    \
        free(_s);                                                                                                      \
    } while (0)

START_TEST(yaml_to_json_scalars)
{
    ck_assert_json("[~, null, Null, NULL, '']", "[null,null,null,null,\"\"]");
    ck_assert_json("a:", "{\"a\":null}");
    ck_assert_json("[true, True, TRUE, false, yes, no, 'true']", "[true,true,true,false,\"yes\",\"no\",\"true\"]");
    ck_assert_json("[0, -12, +3, \"7\", 1_000]", "[0,-12,3,\"7\",\"1_000\"]");
    ck_assert_json("[1.5, -0.25, 1e3]", "[1.5,-0.25,1000.0]");
    ck_assert_json("[99999999999999999999]", "[1e20]"); /* too big for an integer */
    /* Not numbers in YAML's core schema, though strtod would take them. */
    ck_assert_json("[inf, nan, 0x10, '-', ., +, e]", "[\"inf\",\"nan\",\"0x10\",\"-\",\".\",\"+\",\"e\"]");
    ck_assert_json("[1e999]", "[\"1e999\"]");
    ck_assert_no_errors();
}
END_TEST

START_TEST(yaml_to_json_nested)
{
    ck_assert_json("{b: [1, {c: x}], a: {}}", "{\"a\":{},\"b\":[1,{\"c\":\"x\"}]}");
    ck_assert_json("\"a\\u0000b\"", "\"a\\u0000b\""); /* quoted: length kept */
    ck_assert_no_errors();
}
END_TEST

START_TEST(yaml_to_json_non_string_keys)
{
    yaml_node_t *root = load("ok: 1\n[x]: 2\n");
    json_t *j = yaml_to_json(&y, root);
    ck_assert_uint_eq(json_object_size(j), 1);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "ok")), 1);
    json_decref(j);
    ck_assert_uint_eq(d.errors.n, 1);
    ck_assert_str_eq(d.errors.v[0], "c.yaml:2:1: mapping keys inside extra must be strings");
}
END_TEST

/* ---- yamlutil: bounds (docs/formats.md "Limits") -------------------------- */

/* Text built with printf-like pieces; the caller frees it. */
__attribute__((noinline)) static char *text_of(void (*write)(FILE *))
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    write(f);
    fclose(f);
    return buf;
}

/* Nine levels of ten aliases each: 10^9 nodes from 400 bytes. */
static void write_laughs(FILE *f)
{
    fprintf(f, "a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for (int c = 'b'; c <= 'i'; c++)
        fprintf(f, "%c: &%c [*%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c]\n", c, c, c - 1, c - 1, c - 1, c - 1,
                c - 1, c - 1, c - 1, c - 1, c - 1, c - 1);
}

START_TEST(yaml_bounds_billion_laughs)
{
    /* Aliases so far: b 110, c 1,110, d 11,110 nodes; at e, the eighth *d
     * brings them past 100,000. libyaml alone would load this (an alias is
     * a reference), and every walk would then copy 10^9 nodes. */
    char *text = text_of(write_laughs);
    ck_assert_ptr_null(load(text));
    ck_assert_uint_eq(d.errors.n, 1);
    ck_assert_str_eq(d.errors.v[0], "c.yaml:5:36: aliases stand for more than 100000 nodes in all (the limit per "
                                    "document)");
    free(text);
}
END_TEST

START_TEST(yaml_bounds_alias_in_its_own_anchor)
{
    /* libyaml builds a node that contains itself: a walk never ends. */
    ck_assert_ptr_null(load("a: &a [1, *a]\n"));
    ck_assert_uint_eq(d.errors.n, 1);
    ck_assert_str_eq(d.errors.v[0], "c.yaml:1:11: alias '*a' refers to a node that contains it");
    yaml_ctx_done(&y);
    diag_clear(&d);
    ck_assert_ptr_null(load("- &m {k: [x, {j: *m}]}\n"));
    ck_assert_str_eq(d.errors.v[0], "c.yaml:1:18: alias '*m' refers to a node that contains it");
}
END_TEST

START_TEST(yaml_bounds_depth)
{
    char *open = repeat('[', 64, 0), *close = repeat(']', 64, 0);
    char *text = xasprintf("%s%s\n", open, close); /* 64 deep: fine */
    ck_assert_ptr_nonnull(load(text));
    ck_assert_no_errors();
    yaml_ctx_done(&y);
    free(text);
    text = xasprintf("%s[]%s\n", open, close);
    ck_assert_ptr_null(load(text));
    ck_assert_uint_eq(d.errors.n, 1);
    ck_assert_str_eq(d.errors.v[0], "c.yaml:1:65: collections nested more than 64 deep (the limit per document)");
    yaml_ctx_done(&y);
    diag_clear(&d);
    free(text);
    free(open);
    free(close);

    /* Through an alias: a is 62 deep, b's list puts it at 2 + 62, c's at 3 + 62. */
    open = repeat('[', 62, 0);
    close = repeat(']', 62, 0);
    text = xasprintf("a: &a %s%s\nb: [*a]\n", open, close);
    ck_assert_ptr_nonnull(load(text));
    ck_assert_no_errors();
    yaml_ctx_done(&y);
    free(text);
    text = xasprintf("a: &a %s%s\nc: [[*a]]\n", open, close);
    ck_assert_ptr_null(load(text));
    ck_assert_str_eq(d.errors.v[0], "c.yaml:2:6: alias '*a' nests collections more than 64 deep (the limit per "
                                    "document)");
    free(text);
    free(open);
    free(close);
}
END_TEST

static void write_million(FILE *f)
{
    fputc('[', f);
    for (int i = 0; i < 1000000; i++)
        fputs("a,", f);
    fputs("]\n", f);
}

START_TEST(yaml_bounds_nodes)
{
    /* The list and a million scalars: the last scalar is one too many. */
    char *text = text_of(write_million);
    ck_assert_ptr_null(load(text));
    ck_assert_uint_eq(d.errors.n, 1);
    ck_assert_str_eq(d.errors.v[0], "c.yaml:1:2000000: more than 1000000 nodes (the limit for this document)");
    yaml_ctx_done(&y);
    diag_clear(&d);
    /* Where a document may be larger. */
    ck_assert_ptr_nonnull(yaml_ctx_load_limit(&y, "c.yaml", text, strlen(text), 1000001, &d));
    ck_assert_no_errors();
    ck_assert_uint_eq(y.nodes, 1000001);
    free(text);
}
END_TEST

static void write_anchors(FILE *f)
{
    for (int i = 1; i <= 257; i++)
        fprintf(f, "- &a%d x\n", i);
}

START_TEST(yaml_bounds_anchors)
{
    char *text = text_of(write_anchors);
    ck_assert_ptr_null(load(text));
    ck_assert_uint_eq(d.errors.n, 1);
    ck_assert_str_eq(d.errors.v[0], "c.yaml:257:3: more than 256 anchors (the limit per document)");
    free(text);
}
END_TEST

static void write_directives(FILE *f)
{
    for (int i = 1; i <= 17; i++)
        fprintf(f, "%s%%TAG !t%d! tag:example.com,2024:%d:\n", i == 3 ? "# a comment\n\n" : "", i, i);
    fputs("---\na: !t1!x 1\n", f);
}

START_TEST(yaml_bounds_directives)
{
    /* libyaml compares each %TAG with every other: 40,000 lines take 12 s. */
    char *text = text_of(write_directives);
    ck_assert_ptr_null(load(text));
    ck_assert_uint_eq(d.errors.n, 1);
    ck_assert_str_eq(d.errors.v[0], "c.yaml:19:1: more than 16 directives (lines starting with '%'; the limit per "
                                    "document)");
    yaml_ctx_done(&y);
    diag_clear(&d);
    /* 16 are fine, and a '%' after the prologue is no directive. */
    char *cut = strstr(text, "%TAG !t17!");
    memmove(cut, strchr(cut, '\n') + 1, strlen(strchr(cut, '\n') + 1) + 1);
    ck_assert_ptr_nonnull(load(text));
    ck_assert_no_errors();
    free(text);
}
END_TEST

START_TEST(yaml_bounds_alias_bytes)
{
    /* Ten aliases to 100,000 bytes are 1,000,000; the eleventh crosses 1 MiB. */
    char *big = repeat('x', 100000, 0);
    char *text = xasprintf("a: &a %s\nb: [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n", big);
    ck_assert_ptr_null(load(text));
    ck_assert_uint_eq(d.errors.n, 1);
    ck_assert_str_eq(d.errors.v[0], "c.yaml:2:45: aliases stand for more than 1048576 bytes of text in all (the "
                                    "limit per document)");
    free(text);
    free(big);
}
END_TEST

/* Values of a JSON tree, keys counted too (as the YAML nodes they were). */
static size_t json_count(const json_t *j)
{
    size_t n = 1;
    const char *k;
    json_t *v;
    size_t i;
    if (json_is_array(j))
        json_array_foreach(j, i, v) n += json_count(v);
    if (json_is_object(j))
        json_object_foreach((json_t *)j, k, v) n += 1 + json_count(v);
    return n;
}

/* Every bound at its limit, and nothing past it. */
static void write_worst(FILE *f)
{
    for (int i = 1; i <= YAML_MAX_DIRECTIVES; i++)
        fprintf(f, "%%TAG !t%d! tag:example.com,2024:%d:\n", i, i);
    fputs("---\ndeep: ", f);
    for (int i = 1; i < YAML_MAX_DEPTH; i++) /* the root mapping is the first */
        fputc('[', f);
    fputs("x", f);
    for (int i = 1; i < YAML_MAX_DEPTH; i++)
        fputc(']', f);
    fputs("\nlist: &l [", f);
    for (int i = 0; i < 999; i++)
        fputs("x, ", f);
    fputs("]\ncopies: [", f);
    for (int i = 0; i < YAML_MAX_ALIAS_NODES / 1000; i++) /* 1,000 nodes each */
        fputs("*l, ", f);
    fputs("]\nanchors:\n", f);
    for (int i = 1; i < YAML_MAX_ANCHORS; i++)
        fprintf(f, "  - &a%d !t%d!s x\n", i, 1 + i % YAML_MAX_DIRECTIVES);
}

static bool worst_case_and_bomb(void)
{
    Diag dd = {0};
    YamlCtx c;
    char *text = text_of(write_worst);
    yaml_node_t *root = yaml_ctx_load(&c, "w.yaml", text, strlen(text), &dd);
    bool ok = root && dd.errors.n == 0;
    if (!ok)
        fprintf(stderr, "worst case refused: %s\n", test_diag_text(&dd));
    /* The walk visits what the bounds allow: the nodes of the input and
     * 100,000 for the aliases. */
    size_t raw = 1 /* root */ + 1 + (YAML_MAX_DEPTH - 1) + 1 /* deep */ + 2 + 999 /* list */ + 2 /* copies */ + 2 +
                 (YAML_MAX_ANCHORS - 1) /* anchors */;
    if (ok && c.nodes != raw + YAML_MAX_ALIAS_NODES) {
        fprintf(stderr, "worst case: %zu nodes, not %zu\n", c.nodes, raw + YAML_MAX_ALIAS_NODES);
        ok = false;
    }
    if (ok) {
        json_t *j = yaml_to_json(&c, root);
        if (json_count(j) != c.nodes) {
            fprintf(stderr, "worst case: the walk made %zu values of %zu nodes\n", json_count(j), c.nodes);
            ok = false;
        }
        json_decref(j);
    }
    yaml_ctx_done(&c);
    free(text);
    diag_clear(&dd);

    /* The bomb, walked as the parsers would walk it, had it loaded. */
    text = text_of(write_laughs);
    root = yaml_ctx_load(&c, "w.yaml", text, strlen(text), &dd);
    if (root) {
        fprintf(stderr, "billion laughs loaded\n");
        json_decref(yaml_to_json(&c, root));
        ok = false;
    }
    yaml_ctx_done(&c);
    free(text);
    diag_clear(&dd);
    return ok;
}

START_TEST(yaml_bounds_worst_case_is_bounded)
{
    ck_assert_bounded(worst_case_and_bomb, 256, 10000000);
}
END_TEST

static void write_keys(FILE *f)
{
    for (int i = 0; i < 200000; i++)
        fprintf(f, "k%d: 0\n", i);
    fputs("k5: 1\n", f);
}

static bool keys_sorted_not_compared_pairwise(void)
{
    Diag dd = {0};
    YamlCtx c;
    char *text = text_of(write_keys);
    yaml_node_t *root = yaml_ctx_load(&c, "k.yaml", text, strlen(text), &dd);
    static const char *const allowed[] = {"k0", "k1", "k2", "k3", "k4", "k5", NULL};
    yaml_map_check_keys(&c, root, allowed, "m");
    bool ok = dd.errors.n == 200000 - 6 + 1 && test_diag_has(&dd, "k.yaml:200001:1: duplicate key 'k5' in m", true) &&
              test_diag_has(&dd, "k.yaml:200000:1: unknown key 'k199999' in m", true);
    if (!ok)
        fprintf(stderr, "%zu errors, last %s\n", dd.errors.n, dd.errors.n ? dd.errors.v[dd.errors.n - 1] : "");
    yaml_ctx_done(&c);
    free(text);
    diag_clear(&dd);
    return ok;
}

START_TEST(yaml_map_check_keys_many_keys)
{
    /* 200,000 keys: comparing each with every other would be 2 x 10^10
     * comparisons; sorting is about 4 x 10^6. */
    ck_assert_bounded(keys_sorted_not_compared_pairwise, 512, 20000000);
}
END_TEST

static void add(Suite *s, const char *name, bool yaml, const TTest *const *tests)
{
    TCase *tc = tcase_create(name);
    tcase_set_timeout(tc, 120); /* the bounds are checked by work, not time: a loaded machine or ASan takes longer */
    if (yaml)
        tcase_add_checked_fixture(tc, ysetup, yteardown);
    else
        tcase_add_checked_fixture(tc, setup, teardown);
    for (; *tests; tests++)
        tcase_add_test(tc, *tests);
    suite_add_tcase(s, tc);
}

#define T(...)                                                                                                         \
    (const TTest *const[])                                                                                             \
    {                                                                                                                  \
        __VA_ARGS__, NULL                                                                                              \
    }

static Suite *util_suite(void)
{
    Suite *s = suite_create("util");
    add(s, "xasprintf", false, T(xasprintf_formats, xasprintf_long_output));
    add(s, "xstrdup", false, T(xstrdup_copies_and_passes_null));
    add(s, "grow_array", false,
        T(grow_array_from_empty, grow_array_enough_room_is_a_no_op, grow_array_keeps_contents_and_doubles,
          grow_array_element_size));
    add(s, "strvec_push", false, T(strvec_push_copies, strvec_push_take_keeps_the_pointer));
    add(s, "strvec_contains", false, T(strvec_contains_cases));
    add(s, "strvec_index", false, T(strvec_index_cases));
    add(s, "strvec_clear", false, T(strvec_clear_empties_and_allows_reuse));
    add(s, "diag_error", false, T(diag_error_formats_in_order));
    add(s, "diag_warning", false, T(diag_warning_is_no_error));
    add(s, "diag_error_at", false, T(diag_error_at_positions));
    add(s, "diag_clear", false, T(diag_clear_empties_both));
    add(s, "write_all", false, T(write_all_writes_everything_and_says_why_not));
    add(s, "path_walk_depth", false,
        T(path_walk_depth_down_and_up, path_walk_depth_climbing_above, path_walk_depth_refused_forms,
          path_walk_depth_dots_and_slashes));
    add(s, "name_is_valid", false, T(name_is_valid_boundaries, name_is_valid_characters));
    add(s, "version_is_valid", false, T(version_is_valid_boundaries, version_is_valid_characters));
    add(s, "strmap_get", false, T(strmap_put_get));
    add(s, "strmap_put", false, T(strmap_put_replaces, strmap_grows_with_many_keys, strmap_reserve_room));
    add(s, "strmap_clear", false, T(strmap_clear_empties));

    add(s, "yaml_ctx_load", true,
        T(yaml_ctx_load_document, yaml_ctx_load_empty_is_an_error, yaml_ctx_load_bare_document_marker,
          yaml_ctx_load_syntax_error, yaml_ctx_load_reads_len_bytes_only, yaml_ctx_load_first_document_only,
          yaml_ctx_load_same_document_as_libyaml, yaml_ctx_load_composer_errors));
    add(s, "yaml_ctx_load_optional", true,
        T(yaml_ctx_load_optional_empty_inputs, yaml_ctx_load_optional_content, yaml_ctx_load_optional_syntax_error));
    add(s, "yaml_ctx_done", true, T(yaml_ctx_done_is_idempotent));
    add(s, "yaml_pos", true, T(yaml_pos_of_nodes));
    add(s, "yaml_error", true, T(yaml_error_positions));
    add(s, "yaml_child", true, T(yaml_child_bounds));
    add(s, "yaml_kind", true, T(yaml_kind_names));
    add(s, "yaml_scalar", true, T(yaml_scalar_values));
    add(s, "yaml_map_get", true, T(yaml_map_get_lookups));
    add(s, "yaml_map_check_keys", true,
        T(yaml_map_check_keys_good, yaml_map_check_keys_unknown_and_duplicate, yaml_map_check_keys_non_string_key,
          yaml_map_check_keys_many_keys));
    add(s, "yaml_get_string", true,
        T(yaml_get_string_present_and_absent, yaml_get_string_missing_required, yaml_get_string_wrong_type));
    add(s, "yaml_get_long", true, T(yaml_get_long_in_range, yaml_get_long_out_of_range, yaml_get_long_not_an_integer));
    add(s, "yaml_get_strlist", true, T(yaml_get_strlist_list_and_single, yaml_get_strlist_wrong_types));
    add(s, "yaml_to_json", true, T(yaml_to_json_scalars, yaml_to_json_nested, yaml_to_json_non_string_keys));
    add(s, "yaml_bounds", true,
        T(yaml_bounds_billion_laughs, yaml_bounds_alias_in_its_own_anchor, yaml_bounds_depth, yaml_bounds_nodes,
          yaml_bounds_anchors, yaml_bounds_directives, yaml_bounds_alias_bytes, yaml_bounds_worst_case_is_bounded));
    return s;
}

int main(void)
{
    return test_run_suite(util_suite());
}
