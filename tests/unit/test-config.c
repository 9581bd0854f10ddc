/* config: reld's configuration file, read from real files in a temporary
 * directory (and the shipped packaging/reld.yaml, whose path meson passes
 * in RELD_TEST_PACKAGING). */
#include <check.h>
#include <errno.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "util.h"
#include "testlib.h"

static char dir[] = "/tmp/reld-test-config-XXXXXX";
static char path[sizeof(dir) + 32];
static DaemonConfig c;
static char *err;

static void setup(void)
{
    strcpy(dir, "/tmp/reld-test-config-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/reld.yaml", dir);
    config_init(&c);
    err = NULL;
}

static void teardown(void)
{
    config_clear(&c);
    free(err);
    err = NULL;
    char cmd[sizeof(dir) + 16];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}

/* Writes text (len bytes) as the config file. */
static void put_n(const char *text, size_t len)
{
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(text, 1, len, f), len);
    ck_assert_int_eq(fclose(f), 0);
}

static void put(const char *text)
{
    put_n(text, strlen(text));
}

static int load(const char *text)
{
    put(text);
    free(err);
    err = NULL;
    return config_load(&c, path, &err);
}

static void assert_defaults(const DaemonConfig *x)
{
    ck_assert_str_eq(x->root, CONFIG_DEFAULT_ROOT);
    ck_assert_str_eq(x->socket_path, CONFIG_DEFAULT_SOCKET);
    ck_assert_ptr_null(x->writer_group);
    ck_assert_ptr_null(x->reader_group);
    ck_assert(!x->readers_all);
    ck_assert_uint_eq(x->max_unpacked, CONFIG_DEFAULT_MAX_UNPACKED);
    ck_assert_int_eq(x->min_healthy_ms, CONFIG_DEFAULT_MIN_HEALTHY_MS);
    ck_assert_int_eq(x->health_timeout_ms, CONFIG_DEFAULT_HEALTH_TIMEOUT_MS);
    ck_assert_str_eq(x->trusted_keys, "/etc/reld/trusted.d");
    ck_assert_str_eq(x->revoked_keys, "/etc/reld/revoked.d");
    ck_assert_ptr_null(x->min_version);
    ck_assert(!x->refuse_older_than_permanent);
}

/* err is one line "PATH:LINE:COL: ..." that contains part. */
static void assert_one_line_error(const char *part)
{
    ck_assert_ptr_nonnull(err);
    ck_assert_msg(strchr(err, '\n') == NULL, "more than one line: '%s'", err);
    char *re_text = xasprintf("^%s:[0-9]+:[0-9]+: ", path);
    regex_t re;
    ck_assert_int_eq(regcomp(&re, re_text, REG_EXTENDED | REG_NOSUB), 0);
    int m = regexec(&re, err, 0, NULL, 0);
    regfree(&re);
    free(re_text);
    ck_assert_msg(m == 0, "not 'file:line:col: ...': '%s'", err);
    ck_assert_msg(strstr(err, part) != NULL, "'%s' lacks '%s'", err, part);
}

/* ---- config_init ------------------------------------------------------- */

START_TEST(init_sets_every_default)
{
    DaemonConfig x;
    memset(&x, 0xa5, sizeof(x));
    config_init(&x);
    assert_defaults(&x);
    ck_assert_uint_eq(CONFIG_DEFAULT_MAX_UNPACKED, 1ULL << 30);
    config_clear(&x);
}
END_TEST

/* ---- config_load: what means defaults ------------------------------------ */

START_TEST(load_empty_file_is_every_default)
{
    ck_assert_int_eq(load(""), 0);
    ck_assert_ptr_null(err);
    assert_defaults(&c);
    ck_assert_int_eq(load("\n  \n\n"), 0);
    assert_defaults(&c);
}
END_TEST

START_TEST(load_comments_only_is_every_default)
{
    ck_assert_int_eq(load("# nothing\n   # indented comment\n---\n# after a marker\n...\n"), 0);
    ck_assert_ptr_null(err);
    assert_defaults(&c);
}
END_TEST

START_TEST(load_shipped_file_is_every_default)
{
    const char *pkg = getenv("RELD_TEST_PACKAGING");
    ck_assert_msg(pkg != NULL, "RELD_TEST_PACKAGING (set by tests/meson.build) is not set");
    char *shipped = xasprintf("%s/reld.yaml", pkg);
    struct stat st;
    ck_assert_msg(stat(shipped, &st) == 0 && st.st_size > 100, "%s is missing or empty", shipped);
    ck_assert_int_eq(config_load(&c, shipped, &err), 0);
    ck_assert_ptr_null(err);
    assert_defaults(&c);
    free(shipped);
}
END_TEST

START_TEST(load_empty_file_keeps_earlier_values)
{
    ck_assert_int_eq(load("root: /srv/a\nreaders: all\n"), 0);
    ck_assert_int_eq(load("# nothing\n"), 0);
    ck_assert_str_eq(c.root, "/srv/a");
    ck_assert(c.readers_all);
}
END_TEST

/* A byte-order mark before the comments (as some editors write) is no
 * content either (yamlutil.h, yaml_ctx_load_optional). */
START_TEST(load_bom_and_comments_is_every_default)
{
    static const char text[] = "\xEF\xBB\xBF# reld\n# root: /x\n";
    put_n(text, sizeof(text) - 1);
    int r = config_load(&c, path, &err);
    ck_assert_msg(r == 0, "config_load: %d '%s'", r, err ? err : "");
    assert_defaults(&c);
}
END_TEST

/* "---" followed by content on the same line is content, not a marker. */
START_TEST(load_document_marker_with_content_on_its_line)
{
    int r = load("--- {root: /srv/inline, readers: all}\n");
    ck_assert_msg(r == 0, "config_load: %d '%s'", r, err ? err : "");
    ck_assert_str_eq(c.root, "/srv/inline");
    ck_assert(c.readers_all);
}
END_TEST

/* ---- config_load: each key ------------------------------------------------ */

START_TEST(load_every_key)
{
    ck_assert_int_eq(load("# reld\n"
                          "root: /srv/reld\n"
                          "socket: /run/x/reld.sock\n"
                          "writer_group: ops\n"
                          "reader_group: devs\n"
                          "readers: all\n"
                          "max_unpacked_bytes: 4096\n"),
                     0);
    ck_assert_ptr_null(err);
    ck_assert_str_eq(c.root, "/srv/reld");
    ck_assert_str_eq(c.socket_path, "/run/x/reld.sock");
    ck_assert_str_eq(c.writer_group, "ops");
    ck_assert_str_eq(c.reader_group, "devs");
    ck_assert(c.readers_all);
    ck_assert_uint_eq(c.max_unpacked, 4096);
}
END_TEST

START_TEST(load_each_key_alone_keeps_the_others)
{
    ck_assert_int_eq(load("root: /r\n"), 0);
    ck_assert_str_eq(c.root, "/r");
    ck_assert_str_eq(c.socket_path, CONFIG_DEFAULT_SOCKET);

    config_clear(&c);
    config_init(&c);
    ck_assert_int_eq(load("socket: /s.sock\n"), 0);
    ck_assert_str_eq(c.socket_path, "/s.sock");
    ck_assert_str_eq(c.root, CONFIG_DEFAULT_ROOT);

    config_clear(&c);
    config_init(&c);
    ck_assert_int_eq(load("writer_group: w\n"), 0);
    ck_assert_str_eq(c.writer_group, "w");
    ck_assert_ptr_null(c.reader_group);

    config_clear(&c);
    config_init(&c);
    ck_assert_int_eq(load("reader_group: r\n"), 0);
    ck_assert_str_eq(c.reader_group, "r");
    ck_assert_ptr_null(c.writer_group);
    ck_assert(!c.readers_all);

    config_clear(&c);
    config_init(&c);
    ck_assert_int_eq(load("max_unpacked_bytes: 1\n"), 0);
    ck_assert_uint_eq(c.max_unpacked, 1);
    ck_assert_int_eq(load("max_unpacked_bytes: 1125899906842624\n"), 0); /* 2^50, the largest */
    ck_assert_uint_eq(c.max_unpacked, 1ULL << 50);
    ck_assert_str_eq(c.root, CONFIG_DEFAULT_ROOT);

    /* The health gate's window may be 0 (healthy as soon as every process
     * runs and passes once); its timeout may not. */
    ck_assert_int_eq(load("min_healthy_ms: 0\nhealth_timeout_ms: 5000\n"), 0);
    ck_assert_int_eq(c.min_healthy_ms, 0);
    ck_assert_int_eq(c.health_timeout_ms, 5000);
    ck_assert_int_eq(load("min_healthy_ms: 250\n"), 0);
    ck_assert_int_eq(c.min_healthy_ms, 250);
    ck_assert_int_eq(c.health_timeout_ms, 5000);
}
END_TEST

START_TEST(load_key_directories)
{
    ck_assert_int_eq(load("trusted_keys: /srv/keys/trusted\nrevoked_keys: /srv/keys/revoked\n"), 0);
    ck_assert_str_eq(c.trusted_keys, "/srv/keys/trusted");
    ck_assert_str_eq(c.revoked_keys, "/srv/keys/revoked");
    DaemonConfig copy;
    config_copy(&copy, &c);
    ck_assert_str_eq(copy.trusted_keys, "/srv/keys/trusted");
    ck_assert_str_eq(copy.revoked_keys, "/srv/keys/revoked");
    config_clear(&copy);
    ck_assert_int_eq(load("revoked_keys: /r\n"), 0); /* the other keeps its value */
    ck_assert_str_eq(c.trusted_keys, "/srv/keys/trusted");
    ck_assert_str_eq(c.revoked_keys, "/r");
}
END_TEST

START_TEST(load_downgrade_floor)
{
    ck_assert_int_eq(load("min_version: 2.0.1\nrefuse_older_than_permanent: true\n"), 0);
    ck_assert_str_eq(c.min_version, "2.0.1");
    ck_assert(c.refuse_older_than_permanent);
    DaemonConfig copy;
    config_copy(&copy, &c);
    ck_assert_str_eq(copy.min_version, "2.0.1");
    ck_assert(copy.refuse_older_than_permanent);
    config_clear(&copy);
    ck_assert_int_eq(load("refuse_older_than_permanent: false\n"), 0);
    ck_assert(!c.refuse_older_than_permanent);
    ck_assert_str_eq(c.min_version, "2.0.1");
}
END_TEST

START_TEST(load_readers_all_and_writers)
{
    ck_assert_int_eq(load("readers: all\n"), 0);
    ck_assert(c.readers_all);
    ck_assert_int_eq(load("readers: writers\n"), 0);
    ck_assert(!c.readers_all);
}
END_TEST

/* ---- config_load: errors --------------------------------------------------- */

START_TEST(load_unknown_key_is_one_line)
{
    ck_assert_int_eq(load("root: /r\nwriter_grop: ops\n"), -EINVAL);
    assert_one_line_error("unknown key 'writer_grop' in config");
    ck_assert_msg(strstr(err, ":2:1: ") != NULL, "position of the key: '%s'", err);
}
END_TEST

START_TEST(load_wrong_values_are_one_line_each)
{
    static const struct {
        const char *text, *part, *pos;
    } cases[] = {
        {"readers: everyone\n", "readers must be all or writers", ":1:10: "},
        {"max_unpacked_bytes: 0\n", "must be an integer from 1 to", ":1:21: "},
        {"max_unpacked_bytes: -5\n", "must be an integer from 1 to", ":1:21: "},
        {"max_unpacked_bytes: 1GiB\n", "must be an integer from 1 to", ":1:21: "},
        {"max_unpacked_bytes: 1125899906842625\n", "must be an integer from 1 to", ":1:21: "},
        {"min_healthy_ms: -1\n", "must be an integer from 0 to 3600000", ":1:17: "},
        {"health_timeout_ms: 0\n", "must be an integer from 1 to 86400000", ":1:20: "},
        {"health_timeout_ms: soon\n", "must be an integer from 1 to 86400000", ":1:20: "},
        {"root: [a, b]\n", "field 'root' must be a string", ":1:7: "},
        {"trusted_keys: keys\n", "trusted_keys must be an absolute directory", ":1:15: "},
        {"revoked_keys: ./r\n", "revoked_keys must be an absolute directory", ":1:15: "},
        {"trusted_keys: [a]\n", "field 'trusted_keys' must be a string", ":1:15: "},
        {"min_version: ../1\n", "min_version must be a release version", ":1:14: "},
        {"refuse_older_than_permanent: yes\n", "refuse_older_than_permanent must be true or false", ":1:30: "},
        {"socket: {a: 1}\n", "field 'socket' must be a string", ":1:9: "},
        {"writer_group: [ops]\n", "field 'writer_group' must be a string", ":1:15: "},
        {"reader_group: [devs]\n", "field 'reader_group' must be a string", ":1:15: "},
        {"- root\n- socket\n", "the config must be a mapping", ":1:1: "},
        {"root: /a\nroot: /b\n", "duplicate key 'root'", ":2:1: "},
        {"root: [unclosed\n", "", ":"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ck_assert_msg(load(cases[i].text) == -EINVAL, "accepted: %s", cases[i].text);
        assert_one_line_error(cases[i].part);
        ck_assert_msg(strstr(err, cases[i].pos) != NULL, "%s: position %s not in '%s'", cases[i].text, cases[i].pos,
                      err);
    }
}
END_TEST

START_TEST(load_several_errors_give_the_first)
{
    ck_assert_int_eq(load("nope: 1\nreaders: some\n"), -EINVAL);
    assert_one_line_error("unknown key 'nope'");
}
END_TEST

START_TEST(load_failure_leaves_the_config_untouched)
{
    ck_assert_int_eq(load("root: /good\nsocket: /good.sock\nwriter_group: w\nmax_unpacked_bytes: 77\n"), 0);
    char *root_before = c.root;
    /* Valid keys before and after the wrong one must not be taken. */
    ck_assert_int_eq(load("root: /bad\nreader_group: g\nreaders: all\nmax_unpacked_bytes: x\nsocket: /bad.sock\n"),
                     -EINVAL);
    assert_one_line_error("max_unpacked_bytes");
    ck_assert_ptr_eq(c.root, root_before);
    ck_assert_str_eq(c.root, "/good");
    ck_assert_str_eq(c.socket_path, "/good.sock");
    ck_assert_str_eq(c.writer_group, "w");
    ck_assert_ptr_null(c.reader_group);
    ck_assert(!c.readers_all);
    ck_assert_uint_eq(c.max_unpacked, 77);
}
END_TEST

START_TEST(load_missing_file)
{
    char *missing = xasprintf("%s/absent.yaml", dir);
    ck_assert_int_eq(config_load(&c, missing, &err), -ENOENT);
    ck_assert_ptr_nonnull(err);
    char *want = xasprintf("%s: %s", missing, strerror(ENOENT));
    ck_assert_str_eq(err, want);
    assert_defaults(&c);
    free(want);
    free(missing);
}
END_TEST

START_TEST(load_unreadable_file)
{
    /* A directory: open() works for root too, read() fails. */
    int r = config_load(&c, dir, &err);
    ck_assert_msg(r < 0 && r != -EINVAL, "config_load of a directory: %d", r);
    ck_assert_ptr_nonnull(err);
    ck_assert_msg(strncmp(err, dir, strlen(dir)) == 0 && strstr(err, strerror(-r)), "'%s'", err);
    ck_assert_msg(strchr(err, '\n') == NULL, "more than one line: '%s'", err);
    assert_defaults(&c);
}
END_TEST

/* ---- config_copy, config_clear ---------------------------------------------- */

START_TEST(copy_duplicates_every_field)
{
    ck_assert_int_eq(load("root: /a\nsocket: /b\nwriter_group: w\nreader_group: r\nreaders: all\n"
                          "max_unpacked_bytes: 5\n"),
                     0);
    DaemonConfig d;
    config_copy(&d, &c);
    ck_assert_ptr_ne(d.root, c.root);
    ck_assert_ptr_ne(d.socket_path, c.socket_path);
    ck_assert_ptr_ne(d.writer_group, c.writer_group);
    ck_assert_ptr_ne(d.reader_group, c.reader_group);
    ck_assert_str_eq(d.root, "/a");
    ck_assert_str_eq(d.socket_path, "/b");
    ck_assert_str_eq(d.writer_group, "w");
    ck_assert_str_eq(d.reader_group, "r");
    ck_assert(d.readers_all);
    ck_assert_uint_eq(d.max_unpacked, 5);
    config_clear(&c); /* the copy stands alone */
    ck_assert_str_eq(d.root, "/a");
    config_clear(&d);
    config_init(&c);
}
END_TEST

START_TEST(copy_keeps_null_groups)
{
    DaemonConfig d;
    config_copy(&d, &c);
    assert_defaults(&d);
    config_clear(&d);
}
END_TEST

START_TEST(clear_zeroes_and_is_repeatable)
{
    config_clear(&c);
    ck_assert_ptr_null(c.root);
    ck_assert_ptr_null(c.socket_path);
    ck_assert_ptr_null(c.writer_group);
    ck_assert_ptr_null(c.reader_group);
    ck_assert(!c.readers_all);
    ck_assert_uint_eq(c.max_unpacked, 0);
    config_clear(&c); /* twice: nothing to free */
    config_init(&c);
}
END_TEST

static Suite *config_suite(void)
{
    Suite *s = suite_create("config");
    struct {
        const char *name;
        const TTest *tests[16];
    } cases[] = {
        {"config_init", {init_sets_every_default}},
        {"config_load",
         {load_empty_file_is_every_default, load_comments_only_is_every_default, load_shipped_file_is_every_default,
          load_empty_file_keeps_earlier_values, load_bom_and_comments_is_every_default,
          load_document_marker_with_content_on_its_line, load_every_key, load_each_key_alone_keeps_the_others,
          load_readers_all_and_writers, load_key_directories, load_unknown_key_is_one_line,
          load_wrong_values_are_one_line_each, load_several_errors_give_the_first,
          load_failure_leaves_the_config_untouched, load_missing_file, load_unreadable_file}},
        {"config_load signing", {load_downgrade_floor}},
        {"config_copy", {copy_duplicates_every_field, copy_keeps_null_groups}},
        {"config_clear", {clear_zeroes_and_is_repeatable}},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        TCase *tc = tcase_create(cases[i].name);
        tcase_add_checked_fixture(tc, setup, teardown);
        for (size_t k = 0; k < sizeof(cases[i].tests) / sizeof(cases[i].tests[0]) && cases[i].tests[k]; k++)
            tcase_add_test(tc, cases[i].tests[k]);
        suite_add_tcase(s, tc);
    }
    return s;
}

int main(void)
{
    return test_run_suite(config_suite());
}
