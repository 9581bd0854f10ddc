/* appdefs: every validation error with its position, good files of every
 * shape, release-wide checks and ordering. */
#include <check.h>
#include <errno.h>
#include <signal.h>
#include <string.h>

#include "appdefs.h"
#include "testbound.h"
#include "testlib.h"

TESTBOUND_STRCMP

static Diag d;
static AppDef *app;

static void setup(void)
{
    d = (Diag){0};
    app = NULL;
}

static void teardown(void)
{
    diag_clear(&d);
    app = appdef_free(app);
}

static int parse(const char *yaml)
{
    return appdefs_parse_app("app.yaml", yaml, strlen(yaml), &app, &d);
}

static bool has_error(const char *want)
{
    return test_diag_has(&d, want, true);
}
static const char *all_errors(void)
{
    return test_diag_text(&d);
}

#define ck_assert_error(want) ck_assert_msg(has_error(want), "expected '%s' in: %s", want, all_errors())

static const char *const FULL_APP = "name: web\n"
                                    "vsn: \"2.0.1\"\n"
                                    "description: HTTP front end\n"
                                    "applications: [inventory]\n"
                                    "modules:\n"
                                    "  - web_handler\n"
                                    "  - {name: web_router, file: modules/router.so}\n"
                                    "processes:\n"
                                    "  - name: web\n"
                                    "    exec: bin/web-host\n"
                                    "    args: [\"--port\", \"8080\"]\n"
                                    "    modules: [web_handler, web_router]\n"
                                    "    restart: transient\n"
                                    "    shutdown_ms: 3000\n"
                                    "    sockets:\n"
                                    "      - {name: http, listen: \"127.0.0.1:8080\"}\n"
                                    "      - {name: ctl, listen: \"unix:/run/web.sock\"}\n"
                                    "appup:\n"
                                    "  up:\n"
                                    "    - from: \"2.0.0\"\n"
                                    "      instructions: []\n"
                                    "    - from: {regex: \"1\\\\..*\"}\n"
                                    "      instructions:\n"
                                    "        - update: web_handler\n"
                                    "          change: {advanced: {from: 1, keep: [a, b]}}\n"
                                    "          pre_purge: soft_purge\n"
                                    "          timeout_ms: 2000\n"
                                    "          dep_mods: [web_router]\n"
                                    "        - load_module: web_router\n"
                                    "        - add_module: web_stats\n"
                                    "        - delete_module: web_legacy\n"
                                    "        - restart: [web_router]\n"
                                    "        - restart_application: web\n"
                                    "  down:\n"
                                    "    - to: \"2.0.0\"\n"
                                    "      instructions:\n"
                                    "        - update: web_handler\n"
                                    "          change: soft\n"
                                    "          timeout_ms: infinity\n";

/* ---- good files -------------------------------------------------------- */

START_TEST(parse_app_full_example)
{
    ck_assert_int_eq(parse(FULL_APP), 0);
    ck_assert_str_eq(app->name, "web");
    ck_assert_str_eq(app->vsn, "2.0.1");
    ck_assert_str_eq(app->description, "HTTP front end");
    ck_assert_int_eq(app->applications.n, 1);
    ck_assert_int_eq(app->n_modules, 2);
    ck_assert_str_eq(app->modules[0].file, "modules/web_handler.so");
    ck_assert_str_eq(app->modules[1].file, "modules/router.so");
    ck_assert_int_eq(app->n_processes, 1);
    const ProcessDef *p = &app->processes[0];
    ck_assert_str_eq(p->exec, "bin/web-host");
    ck_assert_int_eq(p->args.n, 2);
    ck_assert_int_eq(p->restart, RESTART_TRANSIENT);
    ck_assert_int_eq(p->shutdown_ms, 3000);
    ck_assert_int_eq(p->n_sockets, 2);
    ck_assert_str_eq(p->sockets[1].listen, "unix:/run/web.sock");
    ck_assert_int_eq(app->up.n_entries, 2);
    const AppupEntry *e = &app->up.entries[1];
    ck_assert_str_eq(e->regex, "1\\..*");
    ck_assert_int_eq(e->n_instrs, 6);
    ck_assert_int_eq(e->instrs[0].op, APPUP_UPDATE);
    ck_assert(e->instrs[0].advanced);
    ck_assert_int_eq(e->instrs[0].pre_purge, PURGE_SOFT);
    ck_assert_int_eq(e->instrs[0].post_purge, PURGE_BRUTAL);
    ck_assert_int_eq(e->instrs[0].timeout_ms, 2000);
    ck_assert_int_eq(e->instrs[0].dep_mods.n, 1);
    ck_assert_int_eq(e->instrs[0].dep_mods_pos[0].line, 28);
    char *extra = json_dumps(e->instrs[0].extra, JSON_COMPACT | JSON_SORT_KEYS);
    ck_assert_str_eq(extra, "{\"from\":1,\"keep\":[\"a\",\"b\"]}");
    free(extra);
    ck_assert_int_eq(e->instrs[4].op, APPUP_RESTART);
    ck_assert_int_eq(e->instrs[4].modules.n, 1);
    ck_assert_int_eq(e->instrs[5].op, APPUP_RESTART_APPLICATION);
    ck_assert_int_eq(app->down.entries[0].instrs[0].timeout_ms, TIMEOUT_INFINITY);
    ck_assert(!app->down.entries[0].instrs[0].advanced);
}
END_TEST

START_TEST(parse_app_minimal)
{
    ck_assert_int_eq(parse("name: x\nvsn: \"1\"\n"), 0);
    ck_assert_int_eq(app->n_modules, 0);
    ck_assert_int_eq(app->up.n_entries, 0);
}
END_TEST

START_TEST(parse_app_unquoted_version_keeps_its_text)
{
    ck_assert_int_eq(parse("name: x\nvsn: 1.10\n"), 0);
    ck_assert_str_eq(app->vsn, "1.10");
}
END_TEST

START_TEST(parse_app_extra_types)
{
    static const char *const cases[][2] = {
        {"null", "null"},   {"~", "null"},        {"true", "true"},
        {"42", "42"},       {"-3", "-3"},         {"2.5", "2.5"},
        {"v2", "\"v2\""},   {"\"42\"", "\"42\""}, {"[1, x]", "[1,\"x\"]"},
        {"nan", "\"nan\""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *y = xasprintf("name: x\nvsn: \"1\"\nmodules: [m]\nappup:\n  up:\n    - from: \"0\"\n"
                            "      instructions:\n        - {update: m, change: {advanced: %s}}\n",
                            cases[i][0]);
        ck_assert_int_eq(parse(y), 0);
        char *got = json_dumps(app->up.entries[0].instrs[0].extra, JSON_COMPACT | JSON_ENCODE_ANY);
        ck_assert_msg(strcmp(got, cases[i][1]) == 0, "%s -> %s, want %s", cases[i][0], got, cases[i][1]);
        free(got);
        free(y);
        app = appdef_free(app);
    }
}
END_TEST

/* ---- every error, with its position ------------------------------------ */

START_TEST(error_yaml_syntax_has_position)
{
    ck_assert_int_eq(parse("name: x\nvsn: [1, 2\n"), -EINVAL);
    ck_assert_ptr_null(app);
    ck_assert_int_eq(d.errors.n, 1);
    ck_assert_msg(strncmp(d.errors.v[0], "app.yaml:3:1: ", 14) == 0, "%s", d.errors.v[0]);
}
END_TEST

START_TEST(error_empty_document)
{
    ck_assert_int_eq(parse(""), -EINVAL);
    ck_assert_error("app.yaml:1:1: empty document");
}
END_TEST

START_TEST(error_not_a_mapping)
{
    ck_assert_int_eq(parse("- a\n- b\n"), -EINVAL);
    ck_assert_error("app.yaml:1:1: app.yaml must be a mapping, not a list");
}
END_TEST

START_TEST(error_missing_and_mistyped_fields)
{
    ck_assert_int_eq(parse("description: [a]\n"), -EINVAL);
    ck_assert_error("app.yaml:1:1: missing field 'name'");
    ck_assert_error("app.yaml:1:1: missing field 'vsn'");
    ck_assert_error("app.yaml:1:14: field 'description' must be a string, not a list");
}
END_TEST

START_TEST(error_unknown_and_duplicate_keys)
{
    ck_assert_int_eq(parse("name: x\nvsn: \"1\"\nversion: 2\nname: y\n"), -EINVAL);
    ck_assert_error("app.yaml:3:1: unknown key 'version' in application");
    ck_assert_error("app.yaml:4:1: duplicate key 'name' in application");
}
END_TEST

START_TEST(error_bad_names_and_versions)
{
    ck_assert_int_eq(parse("name: 9web\nvsn: \"../1\"\nmodules: [\"a b\"]\n"), -EINVAL);
    ck_assert_error("app.yaml:1:7: bad application name '9web'");
    ck_assert_error("app.yaml:2:6: bad version string '../1'");
    ck_assert_error("app.yaml:3:11: bad module name 'a b'");
}
END_TEST

START_TEST(error_duplicates)
{
    ck_assert_int_eq(parse("name: x\nvsn: \"1\"\napplications: [a, a]\nmodules: [m, m]\n"
                           "processes:\n  - {name: p, exec: bin/p}\n  - {name: p, exec: bin/p}\n"),
                     -EINVAL);
    ck_assert_error("app.yaml:3:19: duplicate application 'a' in applications");
    ck_assert_error("app.yaml:4:14: duplicate module 'm'");
    ck_assert_error("app.yaml:7:5: duplicate process 'p'");
}
END_TEST

START_TEST(error_paths_outside_app_dir)
{
    ck_assert_int_eq(parse("name: x\nvsn: \"1\"\nmodules:\n  - {name: m, file: ../other/m.so}\n"
                           "  - {name: n, file: /lib/n.so}\n  - {name: o, file: modules/../../o.so}\n"
                           "processes:\n  - {name: p, exec: bin/../../p}\n"),
                     -EINVAL);
    ck_assert_error("app.yaml:4:21: module file '../other/m.so' resolves outside the application's directory");
    ck_assert_error("app.yaml:5:21: module file '/lib/n.so' resolves outside");
    ck_assert_error("app.yaml:6:21: module file 'modules/../../o.so' resolves outside");
    ck_assert_error("app.yaml:8:21: exec 'bin/../../p' resolves outside");
}
END_TEST

START_TEST(absolute_exec_is_allowed)
{
    ck_assert_int_eq(parse("name: x\nvsn: \"1\"\nprocesses:\n  - {name: p, exec: /usr/bin/env}\n"), 0);
}
END_TEST

START_TEST(error_process_fields)
{
    ck_assert_int_eq(parse("name: x\nvsn: \"1\"\nmodules: [m]\nprocesses:\n"
                           "  - name: p\n    exec: bin/p\n    modules: [m, kv_lib]\n    restart: sometimes\n"
                           "    shutdown_ms: soon\n    sockets:\n      - {name: s, listen: \"localhost\"}\n"
                           "      - {name: s, listen: \"127.0.0.1:99999\"}\n"),
                     -EINVAL);
    ck_assert_error("app.yaml:7:18: unknown module 'kv_lib' in process 'p'");
    ck_assert_error("app.yaml:8:14: restart must be permanent, transient or temporary");
    ck_assert_error("app.yaml:9:18: field 'shutdown_ms' must be an integer");
    ck_assert_error("app.yaml:11:27: bad listen address 'localhost'");
    ck_assert_error("app.yaml:12:27: bad listen address '127.0.0.1:99999'");
    ck_assert_error("app.yaml:12:9: duplicate socket 's' in process 'p'");
}
END_TEST

START_TEST(process_identity)
{
    ck_assert_int_eq(parse("name: x\nvsn: \"1\"\nprocesses:\n"
                           "  - name: p\n    exec: bin/p\n    user: www-data\n    group: \"33\"\n"
                           "    supplementary_groups: [adm, ssl-cert]\n"
                           "    capabilities: [CAP_NET_BIND_SERVICE, CAP_CHOWN, CAP_CHECKPOINT_RESTORE]\n"
                           "  - name: q\n    exec: bin/q\n    capabilities: []\n"
                           "  - name: r\n    exec: bin/r\n"),
                     0);
    const ProcessDef *p = &app->processes[0], *q = &app->processes[1], *r = &app->processes[2];
    ck_assert_str_eq(p->user, "www-data");
    ck_assert_str_eq(p->group, "33");
    ck_assert_int_eq(p->user_pos.line, 6);
    ck_assert_int_eq(p->user_pos.col, 11);
    ck_assert_int_eq(p->supplementary_groups.n, 2);
    ck_assert_str_eq(p->supplementary_groups.v[1], "ssl-cert");
    ck_assert_int_eq(p->supplementary_pos[1].col, 33);
    ck_assert(p->has_capabilities);
    ck_assert_uint_eq(p->capabilities, (1ULL << 10) | (1ULL << 0) | (1ULL << 40));
    ck_assert(q->has_capabilities); /* an empty bounding set: every capability dropped */
    ck_assert_uint_eq(q->capabilities, 0);
    ck_assert(!r->has_capabilities && !r->user && !r->group && r->supplementary_groups.n == 0);
    ck_assert_int_eq(appdefs_capability_from_name("CAP_SYS_ADMIN"), 21);
    ck_assert_str_eq(appdefs_capability_name(31), "CAP_SETFCAP");
    ck_assert_ptr_null(appdefs_capability_name(APPDEFS_CAP_MAX + 1));
}
END_TEST

START_TEST(error_process_identity)
{
    ck_assert_int_eq(parse("name: x\nvsn: \"1\"\nprocesses:\n"
                           "  - name: p\n    exec: bin/p\n    user: \"bad user\"\n    group: [g]\n"
                           "    supplementary_groups: [ok, -no]\n"
                           "    capabilities: [CAP_NET_BIND_SERVICE, CAP_FLY, net_admin]\n"),
                     -EINVAL);
    ck_assert_error("app.yaml:6:11: user 'bad user' is not a user or group name");
    ck_assert_error("app.yaml:7:12: field 'group' must be");
    ck_assert_error("app.yaml:8:32: supplementary group '-no' is not a group name");
    ck_assert_error("app.yaml:9:42: unknown capability 'CAP_FLY'");
    ck_assert_error("app.yaml:9:51: unknown capability 'net_admin'");
}
END_TEST

START_TEST(error_appup_entries)
{
    ck_assert_int_eq(parse("name: x\nvsn: \"1\"\nappup:\n  up:\n"
                           "    - from: {regex: \"1.(\"}\n      instructions: []\n"
                           "    - instructions: []\n"
                           "    - from: \"1\"\n      instructions: {update: m}\n"
                           "  sideways: []\n"),
                     -EINVAL);
    ck_assert_error("app.yaml:5:21: bad regular expression '1.('");
    ck_assert_error("app.yaml:7:7: missing field 'from'");
    ck_assert_error("app.yaml:9:21: instructions must be a list, not a mapping");
    ck_assert_error("app.yaml:10:3: unknown key 'sideways' in appup");
}
END_TEST

START_TEST(error_instructions)
{
    ck_assert_int_eq(parse("name: x\nvsn: \"1\"\nappup:\n  down:\n    - to: \"0\"\n      instructions:\n"
                           "        - frobnicate: m\n"
                           "        - {update: m, load_module: m}\n"
                           "        - {update: m, change: hard}\n"
                           "        - {update: m, pre_purge: gentle}\n"
                           "        - {update: m, timeout_ms: -5}\n"
                           "        - {load_module: m, change: soft}\n"
                           "        - {add_module: [m]}\n"
                           "        - just_a_string\n"),
                     -EINVAL);
    ck_assert_error("app.yaml:7:11: instruction names no operation");
    ck_assert_error("app.yaml:8:11: instruction has two operations, 'update' and 'load_module'");
    ck_assert_error("app.yaml:9:31: change must be soft or {advanced: EXTRA}");
    ck_assert_error("app.yaml:10:34: pre_purge must be soft_purge or brutal_purge");
    ck_assert_error("app.yaml:11:35: field 'timeout_ms' must be an integer from 1");
    ck_assert_error("app.yaml:12:28: unknown key 'change' in load_module");
    ck_assert_error("app.yaml:13:24: add_module takes a name, not a list");
    ck_assert_error("app.yaml:14:11: instruction must be a mapping");
}
END_TEST

START_TEST(reports_every_error_not_only_the_first)
{
    ck_assert_int_eq(parse("name: 1\nvsn: \"\"\nfoo: 1\nmodules: [m, m]\n"), -EINVAL);
    ck_assert_int_ge(d.errors.n, 4);
}
END_TEST

/* ---- release.yaml and release-wide checks ------------------------------- */

static ReleaseDef *rel;

static void rel_setup(void)
{
    setup();
    rel = NULL;
}

static void rel_teardown(void)
{
    teardown();
    rel = release_def_free(rel);
}

#define make_release(rel_yaml, apps) test_release((rel_yaml), (apps), &rel, &d)

START_TEST(release_good)
{
    const char *apps[] = {"name: web\nvsn: \"2\"\napplications: [db]\nmodules: [w]\n",
                          "name: db\nvsn: \"1\"\nmodules: [d]\n"};
    ck_assert_int_eq(make_release("release: shop\nvsn: \"2.0\"\napplications:\n"
                                  "  - {name: web, vsn: \"2\"}\n  - {name: db, vsn: \"1\"}\n",
                                  apps),
                     0);
    ck_assert_str_eq(rel->name, "shop");
    size_t *order = appdefs_release_order(rel);
    ck_assert_int_eq(order[0], 1); /* db first: web depends on it */
    ck_assert_int_eq(order[1], 0);
    free(order);
}
END_TEST

START_TEST(release_order_ties_keep_release_order)
{
    const char *apps[] = {"name: a\nvsn: \"1\"\n", "name: b\nvsn: \"1\"\napplications: [d]\n", "name: c\nvsn: \"1\"\n",
                          "name: d\nvsn: \"1\"\n"};
    ck_assert_int_eq(make_release("release: r\nvsn: \"1\"\napplications:\n  - {name: a, vsn: \"1\"}\n"
                                  "  - {name: b, vsn: \"1\"}\n  - {name: c, vsn: \"1\"}\n  - {name: d, vsn: \"1\"}\n",
                                  apps),
                     0);
    size_t *order = appdefs_release_order(rel);
    size_t want[] = {0, 2, 3, 1};
    for (size_t i = 0; i < 4; i++)
        ck_assert_int_eq(order[i], want[i]);
    free(order);
}
END_TEST

START_TEST(release_errors)
{
    const char *y = "release: shop\nvsn: \"2.0\"\napplications:\n"
                    "  - {name: web, vsn: \"2\"}\n  - {name: web, vsn: \"3\"}\n"
                    "  - {name: db}\n  - web\n";
    ck_assert_int_eq(appdefs_parse_release("release.yaml", y, strlen(y), &rel, &d), -EINVAL);
    ck_assert_error("release.yaml:5:5: duplicate application 'web'");
    ck_assert_error("release.yaml:6:5: missing field 'vsn'");
    ck_assert_error("release.yaml:7:5: application must be a mapping");
    ck_assert_int_eq(appdefs_parse_release("r.yaml", "release: x\nvsn: \"1\"\n", 19, &rel, &d), -EINVAL);
    ck_assert_error("r.yaml:1:1: missing field 'applications'");
}
END_TEST

START_TEST(release_missing_dependency)
{
    const char *apps[] = {"name: web\nvsn: \"2\"\napplications: [db, cache]\n", "name: db\nvsn: \"1\"\n"};
    ck_assert_int_eq(make_release("release: shop\nvsn: \"2.0\"\napplications:\n"
                                  "  - {name: web, vsn: \"2\"}\n  - {name: db, vsn: \"1\"}\n",
                                  apps),
                     -EINVAL);
    ck_assert_error("lib/web-2/app.yaml:3:20: application 'web' depends on 'cache', which release shop 2.0 "
                    "does not include");
}
END_TEST

START_TEST(release_cycle_is_named)
{
    const char *apps[] = {"name: a\nvsn: \"1\"\napplications: [b]\n", "name: b\nvsn: \"1\"\napplications: [c]\n",
                          "name: c\nvsn: \"1\"\napplications: [a]\n"};
    ck_assert_int_eq(make_release("release: r\nvsn: \"1\"\napplications:\n  - {name: a, vsn: \"1\"}\n"
                                  "  - {name: b, vsn: \"1\"}\n  - {name: c, vsn: \"1\"}\n",
                                  apps),
                     -EINVAL);
    ck_assert_error("lib/c-1/app.yaml:3:16: dependency cycle between applications: a -> b -> c -> a");
}
END_TEST

START_TEST(release_module_in_two_apps_and_name_mismatch)
{
    const char *apps[] = {"name: a\nvsn: \"1\"\nmodules: [m]\n", "name: bee\nvsn: \"2\"\nmodules: [m]\n"};
    ck_assert_int_eq(make_release("release: r\nvsn: \"1\"\napplications:\n  - {name: a, vsn: \"1\"}\n"
                                  "  - {name: b, vsn: \"1\"}\n",
                                  apps),
                     -EINVAL);
    ck_assert_error("lib/b-1/app.yaml:1:1: defines bee 2 but the release wants b 1");
    ck_assert_error("lib/b-1/app.yaml:3:11: module 'm' is also in application 'a'");
}
END_TEST

START_TEST(release_unknown_dep_mods)
{
    const char *apps[] = {"name: a\nvsn: \"2\"\nmodules: [m, n]\nappup:\n  up:\n    - from: \"1\"\n"
                          "      instructions:\n        - {update: m, dep_mods: [n, gone, kv_lib]}\n"
                          "        - {delete_module: gone}\n"};
    ck_assert_int_eq(make_release("release: r\nvsn: \"1\"\napplications:\n  - {name: a, vsn: \"2\"}\n", apps), -EINVAL);
    ck_assert_int_eq(d.errors.n, 1);
    ck_assert_error("lib/a-2/app.yaml:8:43: unknown module 'kv_lib' in dep_mods");
}
END_TEST

START_TEST(appup_find_first_match_wins)
{
    ck_assert_int_eq(parse("name: x\nvsn: \"3\"\nappup:\n  up:\n"
                           "    - {from: \"2.1\", instructions: []}\n"
                           "    - {from: {regex: \"2\\\\..*\"}, instructions: [{load_module: a}]}\n"
                           "    - {from: \"2.5\", instructions: [{load_module: b}]}\n"),
                     0);
    ck_assert_ptr_eq(appdefs_appup_find(&app->up, "2.1"), &app->up.entries[0]);
    ck_assert_ptr_eq(appdefs_appup_find(&app->up, "2.5"), &app->up.entries[1]);
    ck_assert_ptr_null(appdefs_appup_find(&app->up, "12.5")); /* the regex must match the whole version */
    ck_assert_ptr_null(appdefs_appup_find(&app->up, "2"));
    ck_assert_ptr_null(appdefs_appup_find(&app->down, "2.1"));
}
END_TEST

START_TEST(regex_full_match)
{
    ck_assert_int_eq(appdefs_regex_full_match("1\\.[0-9]+", "1.10"), 1);
    ck_assert_int_eq(appdefs_regex_full_match("1\\.[0-9]+", "1.10.1"), 0);
    ck_assert_int_eq(appdefs_regex_full_match("a|b", "b"), 1);
    ck_assert_int_eq(appdefs_regex_full_match("a|b", "ab"), 0);
    ck_assert_int_eq(appdefs_regex_full_match("(", "x"), -EINVAL);
}
END_TEST

/* ---- bounded work for hostile definitions (docs/formats.md "Limits") ----- */

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

/* The first errors of dd, on stderr (from a child: test_diag_text's
 * buffer is for short lists). */
static void print_errors(const char *what, const Diag *dd)
{
    fprintf(stderr, "%s: %zu errors\n", what, dd->errors.n);
    for (size_t i = 0; i < dd->errors.n && i < 3; i++)
        fprintf(stderr, "  %.300s\n", dd->errors.v[i]);
}

/* Parses an app.yaml whose one appup entry has from: {regex: re}; the error
 * about it (line 5, column 21), or NULL when there is none. */
static char *regex_error(const char *re)
{
    char *quoted = xstrdup(""); /* re in a double-quoted YAML scalar */
    for (const char *c = re; *c; c++) {
        char *n = xasprintf("%s%s%c", quoted, *c == '\\' || *c == '"' ? "\\" : "", *c);
        free(quoted);
        quoted = n;
    }
    char *text =
        xasprintf("name: x\nvsn: \"1\"\nappup:\n  up:\n    - from: {regex: \"%s\"}\n      instructions: []\n", quoted);
    Diag dd = {0};
    AppDef *a = NULL;
    int r = appdefs_parse_app("app.yaml", text, strlen(text), &a, &dd);
    char *err = r < 0 && dd.errors.n ? xstrdup(dd.errors.v[0]) : NULL;
    appdef_free(a);
    diag_clear(&dd);
    free(text);
    free(quoted);
    return err;
}

static bool regex_refused(const char *re, const char *want)
{
    char *err = regex_error(re);
    bool ok = err && strcmp(err, want) == 0;
    if (!ok)
        fprintf(stderr, "regex '%.80s': got '%.300s', want '%s'\n", re, err ? err : "(accepted)", want);
    free(err);
    return ok;
}

static bool regex_bomb_refused(void)
{
    /* Issue 11: each '+' doubled what glibc's regcomp took (6.2 GB). */
    char *re = xasprintf("1\\..%s", "++++++++++++++++++++++++++++++++++++++++");
    char *want = xasprintf("app.yaml:5:21: bad regular expression '%s': '+' right after '+': consecutive quantifiers "
                           "(in OTP's PCRE '?' and '+' there make the first lazy or possessive) (at character 6)",
                           re);
    bool ok = regex_refused(re, want);
    free(re);
    free(want);
    return ok;
}

START_TEST(bound_regex_bomb)
{
    ck_assert_bounded(regex_bomb_refused, 256, 10000000);
}
END_TEST

static bool regex_language_refused(void)
{
    static const char *const cases[][2] = {
        {"1\\.\\d+", "'\\d' is not supported: a backslash goes only before one of .[](){}*+?|^$\\-~/ (glibc and "
                     "OTP's PCRE read the others differently; write [0-9] for \\d) (at character 5)"},
        {"a\\>", "'\\>' is not supported: a backslash goes only before one of .[](){}*+?|^$\\-~/ (glibc and OTP's "
                 "PCRE read the others differently; write [0-9] for \\d) (at character 3)"},
        {"[a-c-x]", "'-' inside [...] only first, last or between the ends of a range (at character 5)"},
        {"a**", "'*' right after '*': consecutive quantifiers (in OTP's PCRE '?' and '+' there make the first lazy or "
                "possessive) (at character 3)"},
        {"a+?", "'?' right after '+': consecutive quantifiers (in OTP's PCRE '?' and '+' there make the first lazy "
                "or possessive) (at character 3)"},
        {"a{2}{3}", "'{' right after '{2}': consecutive quantifiers (in OTP's PCRE '?' and '+' there make the first "
                    "lazy or possessive) (at character 5)"},
        {"(a{0,255}){5}", "more than 1024 states once {m,n} are expanded (at character 1)"},
        {"((((((((((((((((((x))))))))))))))))))", "groups nested more than 16 deep (at character 18)"},
        {"a{256}", "a bound of {m,n} over 255 (at character 2)"},
        {"a{3,2}", "bound {3,2} runs backwards (at character 2)"},
        {"a{,2}", "'{' that is no bound {m}, {m,} or {m,n} (write \\{ for the character) (at character 2)"},
        {"{1}", "'{' has nothing to repeat (at character 1)"},
        {"[\\.]", "backslash inside [...] (POSIX reads it as itself, OTP's PCRE as an escape) (at character 2)"},
        {"[[=a=]]", "'[=' (equivalence classes and collating elements) is not supported (at character 2)"},
        {"[[:word:]]", "unknown character class '[:word:]' (at character 2)"},
        {"[z-a]", "range 'z-a' runs backwards (at character 3)"},
        {"[a", "'[' without its ']' (at character 1)"},
        {"(a", "'(' without its ')' (at character 3)"},
        {"a)", "')' without its '(' (at character 2)"},
        {"1|^2", "'^' only at the start and '$' only at the end (the pattern is anchored anyway) (at character 3)"},
        {"a\\", "a backslash at the end (at character 2)"},
    };
    bool ok = true;
    for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
        char *want = xasprintf("app.yaml:5:21: bad regular expression '%s': %s", cases[i][0], cases[i][1]);
        ok = regex_refused(cases[i][0], want) && ok;
        free(want);
    }
    /* Too long to quote. */
    char *re = xasprintf("%0257d", 1);
    ok = regex_refused(re, "app.yaml:5:21: bad regular expression: 257 bytes long; the limit is 256") && ok;
    free(re);
    return ok;
}

START_TEST(bound_regex_language)
{
    ck_assert_bounded(regex_language_refused, 256, 10000000);
}
END_TEST

START_TEST(bound_regex_accepted)
{
    /* What OTP's appups write, and what the differential test generates. */
    static const struct {
        const char *re, *yes, *no;
    } cases[] = {
        {"1\\.0\\..*", "1.0.7", "1.07"},
        {"3\\.[0-9]+\\..*", "3.12.0", "3.x.0"},
        {"^2\\.[0-9]+(\\.[0-9]+)?$", "2.1.3", "2.1."},
        {"[[:digit:]]{1,3}(-rc[0-9])?", "10-rc1", "1000"},
        {"1\\.[0-9]*[13579]|2\\.0", "1.17", "1.2"},
        {"[^a-z]+~x\\+y", "1.0~x+y", "a~x+y"},
        {"(1|2){0,3}\\$", "121$", "1213$"},
        {"()*a{0}b{2,}c?", "bbb", "abb"},
        {"[]a-]+", "-]a", "b"},
        {"a$", "a", "a$"},
        {"a\\$", "a$", "a"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
        ck_assert_msg(appdefs_regex_full_match(cases[i].re, cases[i].yes) == 1, "%s %s", cases[i].re, cases[i].yes);
        ck_assert_msg(appdefs_regex_full_match(cases[i].re, cases[i].no) == 0, "%s %s", cases[i].re, cases[i].no);
        char *err = regex_error(cases[i].re);
        ck_assert_msg(!err, "%s", err);
        /* Small patterns, small automata: a match is a few hundred steps. */
        char *text = xasprintf("name: x\nvsn: \"9\"\nappup:\n  up:\n    - {from: {regex: '%s'}, instructions: []}\n",
                               cases[i].re);
        ck_assert_int_eq(parse(text), 0);
        ck_assert_uint_le(appdefs_regex_states(app->up.entries[0].re), 2 * strlen(cases[i].re) + 8);
        ck_assert_ptr_eq(appdefs_appup_find(&app->up, cases[i].yes), &app->up.entries[0]);
        app = appdef_free(app);
        free(text);
    }
}
END_TEST

/* The largest patterns the bounds accept, as many as one file may hold
 * (64 of about 1,020 states), then a last one that matches. */
static int n_worst = 64;

static void write_worst_regexes(FILE *f)
{
    fputs("name: x\nvsn: \"1\"\nappup:\n  up:\n", f);
    for (int i = 0; i < n_worst; i++) {
        fputs("    - {from: {regex: \"", f);
        if (i % 2) {
            fputs("[0-9]{0,255}[a-z.]{0,255}", f);
        } else { /* as deep as groups go */
            for (int k = 0; k < APPDEFS_REGEX_MAX_DEPTH; k++)
                fputc('(', f);
            fputs(".{0,126}[0-8]", f);
            for (int k = 0; k < APPDEFS_REGEX_MAX_DEPTH; k++)
                fputc(')', f);
            fputs("{2,4}", f);
        }
        fputs("\"}, instructions: []}\n", f);
    }
    fputs("    - {from: {regex: \"9.*\"}, instructions: []}\n", f);
}

static bool worst_regexes_bounded(void)
{
    char *text = text_of(write_worst_regexes);
    Diag dd = {0};
    AppDef *a = NULL;
    bool ok = appdefs_parse_app("app.yaml", text, strlen(text), &a, &dd) == 0;
    if (!ok)
        print_errors("worst regexes", &dd);
    /* The work of a match: at most states x (length + 1) steps. */
    for (size_t i = 0; ok && i < a->up.n_entries; i++)
        if (appdefs_regex_states(a->up.entries[i].re) > APPDEFS_REGEX_MAX_STATES) {
            fprintf(stderr, "entry %zu: %zu states\n", i, appdefs_regex_states(a->up.entries[i].re));
            ok = false;
        }
    /* The longest version a pattern meets, which keeps states of each alive
     * to its last character, and is matched by none but the last entry. */
    char *vsn = xasprintf("9%062d-", 0);
    for (int k = 0; ok && k < 10; k++)
        ok = appdefs_appup_find(&a->up, vsn) == &a->up.entries[n_worst];
    free(vsn);
    appdef_free(a);
    diag_clear(&dd);
    free(text);
    return ok;
}

START_TEST(bound_regex_worst_case_is_bounded)
{
    ck_assert_bounded(worst_regexes_bounded, 64, 10000000);
}
END_TEST

static bool regexes_of_a_file_bounded(void)
{
    /* One more: 65 x 1,020 states. Kept, they were 8 KB each, and every
     * lookup tried them all. */
    n_worst = 65;
    char *text = text_of(write_worst_regexes);
    n_worst = 64;
    Diag dd = {0};
    AppDef *a = NULL;
    bool ok = appdefs_parse_app("app.yaml", text, strlen(text), &a, &dd) == -EINVAL && dd.errors.n == 1 &&
              strcmp(dd.errors.v[0], "app.yaml:69:22: the regular expressions of this file have more than 65536 "
                                     "states in all (the limit)") == 0;
    if (!ok)
        print_errors(__func__, &dd);
    appdef_free(a);
    diag_clear(&dd);
    free(text);
    return ok;
}

START_TEST(bound_regex_all_states_of_a_file)
{
    ck_assert_bounded(regexes_of_a_file_bounded, 64, 10000000);
}
END_TEST

START_TEST(bound_regex_compiled_once)
{
    /* The entry holds its compiled pattern: what it matches no longer
     * depends on the text, which is not compiled again at each lookup. */
    ck_assert_int_eq(
        parse("name: x\nvsn: \"3\"\nappup:\n  up:\n    - {from: {regex: \"2\\\\..*\"}, instructions: []}\n"), 0);
    free(app->up.entries[0].regex);
    app->up.entries[0].regex = xstrdup("(");
    ck_assert_ptr_eq(appdefs_appup_find(&app->up, "2.5"), &app->up.entries[0]);
    ck_assert_ptr_null(appdefs_appup_find(&app->up, "3.5"));
}
END_TEST

static bool alias_cycle_in_extra_refused(void)
{
    /* Before the bounds, yaml_to_json recursed into this forever. */
    const char *text = "name: x\nvsn: \"2\"\nmodules: [m]\nappup:\n  up:\n    - from: \"1\"\n      instructions:\n"
                       "        - {update: m, change: {advanced: &x {a: [*x]}}}\n";
    Diag dd = {0};
    AppDef *a = NULL;
    bool ok = appdefs_parse_app("app.yaml", text, strlen(text), &a, &dd) == -EINVAL && dd.errors.n == 1 &&
              strcmp(dd.errors.v[0], "app.yaml:8:50: alias '*x' refers to a node that contains it") == 0;
    if (!ok)
        print_errors("alias cycle", &dd);
    appdef_free(a);
    diag_clear(&dd);
    return ok;
}

START_TEST(bound_alias_cycle_in_extra)
{
    ck_assert_bounded(alias_cycle_in_extra_refused, 256, 10000000);
}
END_TEST

enum { MANY = 50000 };

static void write_many_modules(FILE *f)
{
    fputs("name: x\nvsn: \"1\"\nmodules:\n", f);
    for (int i = 0; i < MANY; i++)
        fprintf(f, "  - m%d\n", i);
    fputs("  - m7\nprocesses:\n  - name: p\n    exec: bin/p\n    modules:\n", f);
    for (int i = 0; i < MANY; i++)
        fprintf(f, "      - m%d\n", i);
    fputs("      - gone\n", f);
}

static bool many_modules(void)
{
    char *text = text_of(write_many_modules);
    Diag dd = {0};
    AppDef *a = NULL;
    bool ok = appdefs_parse_app("app.yaml", text, strlen(text), &a, &dd) == -EINVAL && dd.errors.n == 2 &&
              strcmp(dd.errors.v[0], "app.yaml:50004:5: duplicate module 'm7'") == 0 &&
              strcmp(dd.errors.v[1], "app.yaml:100009:9: unknown module 'gone' in process 'p'") == 0;
    if (!ok)
        print_errors(__func__, &dd);
    appdef_free(a);
    diag_clear(&dd);
    free(text);
    return ok;
}

START_TEST(bound_many_modules)
{
    /* Each module looked up among all before it: 10^9 comparisons. */
    ck_assert_bounded(many_modules, 512, 20000000);
}
END_TEST

static void write_many_processes(FILE *f)
{
    fputs("name: x\nvsn: \"1\"\nprocesses:\n", f);
    for (int i = 0; i < MANY; i++)
        fprintf(f, "  - {name: p%d, exec: /bin/true}\n", i);
    fputs("  - {name: p9, exec: /bin/true}\n", f);
}

static bool many_processes(void)
{
    char *text = text_of(write_many_processes);
    Diag dd = {0};
    AppDef *a = NULL;
    bool ok = appdefs_parse_app("app.yaml", text, strlen(text), &a, &dd) == -EINVAL && dd.errors.n == 1 &&
              strcmp(dd.errors.v[0], "app.yaml:50004:5: duplicate process 'p9'") == 0;
    if (!ok)
        print_errors(__func__, &dd);
    appdef_free(a);
    diag_clear(&dd);
    free(text);
    return ok;
}

START_TEST(bound_many_processes)
{
    ck_assert_bounded(many_processes, 512, 20000000);
}
END_TEST

static void write_many_sockets(FILE *f)
{
    fputs("name: x\nvsn: \"1\"\nprocesses:\n  - name: p\n    exec: /bin/true\n    sockets:\n", f);
    for (int i = 0; i < MANY; i++)
        fprintf(f, "      - {name: s%d, listen: \"unix:/run/s%d\"}\n", i, i);
    fputs("      - {name: s3, listen: \"unix:/run/x\"}\n", f);
}

static bool many_sockets(void)
{
    char *text = text_of(write_many_sockets);
    Diag dd = {0};
    AppDef *a = NULL;
    bool ok = appdefs_parse_app("app.yaml", text, strlen(text), &a, &dd) == -EINVAL && dd.errors.n == 1 &&
              strcmp(dd.errors.v[0], "app.yaml:7:7: process 'p' has 50001 sockets: at most 62") == 0;
    if (!ok)
        print_errors(__func__, &dd);
    appdef_free(a);
    diag_clear(&dd);
    free(text);
    return ok;
}

START_TEST(bound_many_sockets)
{
    ck_assert_bounded(many_sockets, 512, 20000000);
}
END_TEST

static void write_many_dependencies(FILE *f)
{
    fputs("name: x\nvsn: \"1\"\napplications:\n", f);
    for (int i = 0; i < MANY; i++)
        fprintf(f, "  - a%d\n", i);
    fputs("  - a4\n", f);
}

static bool many_dependencies(void)
{
    char *text = text_of(write_many_dependencies);
    Diag dd = {0};
    AppDef *a = NULL;
    bool ok = appdefs_parse_app("app.yaml", text, strlen(text), &a, &dd) == -EINVAL && dd.errors.n == 1 &&
              strcmp(dd.errors.v[0], "app.yaml:50004:5: duplicate application 'a4' in applications") == 0;
    if (!ok)
        print_errors(__func__, &dd);
    appdef_free(a);
    diag_clear(&dd);
    free(text);
    return ok;
}

START_TEST(bound_many_dependencies)
{
    ck_assert_bounded(many_dependencies, 512, 20000000);
}
END_TEST

static bool bad_process_name_quoted_once(void)
{
    /* A bad name, however long, is quoted in the one message about it and
     * not again in each about its sockets. */
    char *name = xasprintf("%0100000d", 0);
    char *text = xasprintf("name: x\nvsn: \"1\"\nprocesses:\n  - name: \"%s\"\n    exec: /bin/true\n    sockets:\n"
                           "      - {name: s, listen: \"unix:/a\"}\n      - {name: s, listen: \"unix:/b\"}\n",
                           name);
    Diag dd = {0};
    AppDef *a = NULL;
    bool ok = appdefs_parse_app("app.yaml", text, strlen(text), &a, &dd) == -EINVAL && dd.errors.n == 2 &&
              strcmp(dd.errors.v[1], "app.yaml:8:9: duplicate socket 's' in process '?'") == 0;
    if (!ok)
        print_errors(__func__, &dd);
    appdef_free(a);
    diag_clear(&dd);
    free(text);
    free(name);
    return ok;
}

START_TEST(bound_bad_process_name_quoted_once)
{
    ck_assert(bad_process_name_quoted_once());
}
END_TEST

enum { CHAIN = 300000 };

/* A release of CHAIN applications, each depending on the next and the last
 * on the first, built without YAML (whose bounds would refuse a
 * release.yaml this long): only the cycle search is measured. */
static bool long_cycle_named(void)
{
    ReleaseDef *r = xcalloc(1, sizeof(*r));
    r->file = xstrdup("release.yaml");
    r->name = xstrdup("r");
    r->vsn = xstrdup("1");
    r->apps = xcalloc(CHAIN, sizeof(*r->apps));
    r->n_apps = CHAIN;
    for (size_t i = 0; i < CHAIN; i++) {
        ReleaseAppRef *ref = &r->apps[i];
        ref->name = xasprintf("a%zu", i);
        ref->vsn = xstrdup("1");
        strmap_put(&r->by_name, ref->name, i);
        AppDef *a = ref->app = xcalloc(1, sizeof(*a));
        a->file = xasprintf("lib/a%zu-1/app.yaml", i);
        a->name = xstrdup(ref->name);
        a->vsn = xstrdup("1");
        strvec_push_take(&a->applications, xasprintf("a%zu", (i + 1) % CHAIN));
        a->application_pos = xcalloc(1, sizeof(SrcPos));
        a->application_pos[0] = (SrcPos){.file = a->file, .line = 3, .col = 16};
    }
    Diag dd = {0};
    bool ok =
        appdefs_validate_release(r, &dd) == -EINVAL && dd.errors.n == 1 &&
        strncmp(dd.errors.v[0],
                "lib/a299999-1/app.yaml:3:16: dependency cycle between applications: a0 -> a1 -> a2 -> ", 86) == 0 &&
        strstr(dd.errors.v[0], " -> a30 -> ... (299969 more) -> a0") && strlen(dd.errors.v[0]) < 400;
    if (!ok)
        print_errors(__func__, &dd);
    diag_clear(&dd);
    release_def_free(r);
    return ok;
}

START_TEST(bound_long_dependency_cycle)
{
    /* A recursive search overflowed the stack; the message was built in
     * quadratic time. */
    ck_assert_bounded(long_cycle_named, 512, 20000000);
}
END_TEST

/* ---- health checks ----------------------------------------------------- */

/* A process p whose health: block is body (lines indented 6, from line 7). */
static int parse_health(const char *body)
{
    char *y = xasprintf("name: x\nvsn: \"1\"\nprocesses:\n  - name: p\n    exec: bin/p\n    health:\n%s", body);
    int r = parse(y);
    free(y);
    return r;
}

static void reparse(void)
{
    app = appdef_free(app);
    diag_clear(&d);
}

START_TEST(health_one_check_as_a_mapping)
{
    ck_assert_msg(parse_health("      exec: [bin/check, --quick]\n      interval_ms: 500\n      timeout_ms: 2000\n") ==
                      0,
                  "%s", all_errors());
    const ProcessDef *p = &app->processes[0];
    ck_assert_int_eq(p->n_checks, 1);
    ck_assert_int_eq(p->checks[0].kind, HEALTH_CHECK_EXEC);
    ck_assert_int_eq(p->checks[0].argv.n, 2);
    ck_assert_str_eq(p->checks[0].argv.v[0], "bin/check");
    ck_assert_str_eq(p->checks[0].argv.v[1], "--quick");
    ck_assert_int_eq(p->checks[0].interval_ms, 500);
    ck_assert_int_eq(p->checks[0].timeout_ms, 2000);
    ck_assert_int_eq(p->checks[0].pos.line, 7);
    ck_assert_int_eq(p->checks[0].pos.col, 7);
    ck_assert_str_eq(health_check_kind_name(HEALTH_CHECK_EXEC), "exec");
    ck_assert_str_eq(health_check_kind_name(HEALTH_CHECK_RUNTIME), "runtime");
}
END_TEST

START_TEST(health_every_kind_in_a_list_with_defaults)
{
    ck_assert_msg(parse_health("      - exec: /usr/bin/true\n"
                               "      - tcp: \"127.0.0.1:8080\"\n"
                               "      - tcp: \"[::1]:9\"\n"
                               "      - http: http://127.0.0.1:8080/health?deep=1\n"
                               "      - http: {url: \"http://[::1]\", status: 204}\n"
                               "      - http: {url: \"http://10.0.0.1:81?x\"}\n"
                               "      - runtime: true\n") == 0,
                  "%s", all_errors());
    const ProcessDef *p = &app->processes[0];
    ck_assert_int_eq(p->n_checks, 7);
    const HealthCheck *c = p->checks;
    ck_assert_int_eq(c[0].kind, HEALTH_CHECK_EXEC);
    ck_assert_int_eq(c[0].argv.n, 1);
    ck_assert_str_eq(c[0].argv.v[0], "/usr/bin/true");
    ck_assert_int_eq(c[0].interval_ms, HEALTH_INTERVAL_DEFAULT_MS);
    ck_assert_int_eq(c[0].timeout_ms, HEALTH_TIMEOUT_DEFAULT_MS);
    ck_assert_int_eq(c[1].kind, HEALTH_CHECK_TCP);
    ck_assert_str_eq(c[1].host, "127.0.0.1");
    ck_assert_int_eq(c[1].port, 8080);
    ck_assert_str_eq(c[1].target, "127.0.0.1:8080");
    ck_assert_str_eq(c[2].host, "::1");
    ck_assert_int_eq(c[2].port, 9);
    ck_assert_int_eq(c[3].kind, HEALTH_CHECK_HTTP);
    ck_assert_str_eq(c[3].host, "127.0.0.1");
    ck_assert_int_eq(c[3].port, 8080);
    ck_assert_str_eq(c[3].path, "/health?deep=1");
    ck_assert_int_eq(c[3].status, 200);
    ck_assert_str_eq(c[3].target, "http://127.0.0.1:8080/health?deep=1");
    ck_assert_str_eq(c[4].host, "::1");
    ck_assert_int_eq(c[4].port, 80);
    ck_assert_str_eq(c[4].path, "/");
    ck_assert_int_eq(c[4].status, 204);
    ck_assert_str_eq(c[5].path, "/?x");
    ck_assert_int_eq(c[5].port, 81);
    ck_assert_int_eq(c[6].kind, HEALTH_CHECK_RUNTIME);
    ck_assert_int_eq(c[6].pos.line, 13);
}
END_TEST

START_TEST(health_none_is_no_checks)
{
    ck_assert_int_eq(parse("name: x\nvsn: \"1\"\nprocesses:\n  - {name: p, exec: bin/p}\n"), 0);
    ck_assert_int_eq(app->processes[0].n_checks, 0);
    ck_assert_ptr_null(app->processes[0].checks);
}
END_TEST

START_TEST(health_error_shape)
{
    ck_assert_int_eq(parse_health("      hello\n"), -EINVAL);
    ck_assert_error("app.yaml:7:7: health must be a check or a list of checks, not a scalar");
    reparse();
    ck_assert_int_eq(parse_health("      - [tcp]\n      - {}\n      - {tcp: \"127.0.0.1:1\", exec: [bin/c]}\n"
                                  "      - {tcp: \"127.0.0.1:1\", retries: 3}\n"),
                     -EINVAL);
    ck_assert_error("app.yaml:7:9: health check must be a mapping such as {tcp: \"127.0.0.1:8080\"}, not a list");
    ck_assert_error("app.yaml:8:9: health check names no kind (exec, tcp, http or runtime)");
    ck_assert_error("app.yaml:9:9: health check has two kinds, 'exec' and 'tcp'");
    ck_assert_error("app.yaml:10:30: unknown key 'retries' in health check");
}
END_TEST

START_TEST(health_error_too_many_checks)
{
    char body[1024] = "";
    for (int i = 0; i <= HEALTH_MAX_CHECKS; i++)
        strcat(body, "      - runtime: true\n");
    ck_assert_int_eq(parse_health(body), -EINVAL);
    ck_assert_error("app.yaml:7:7: more than 8 health checks in one process");
}
END_TEST

START_TEST(health_error_intervals_and_timeouts)
{
    ck_assert_int_eq(parse_health("      - {runtime: true, interval_ms: 99}\n"
                                  "      - {runtime: true, interval_ms: 3600001}\n"
                                  "      - {runtime: true, timeout_ms: 9}\n"
                                  "      - {runtime: true, timeout_ms: soon}\n"
                                  "      - {runtime: true, timeout_ms: 600001}\n"),
                     -EINVAL);
    ck_assert_error("app.yaml:7:38: field 'interval_ms' must be an integer from 100 to 3600000");
    ck_assert_error("app.yaml:8:38: field 'interval_ms' must be an integer from 100 to 3600000");
    ck_assert_error("app.yaml:9:37: field 'timeout_ms' must be an integer from 10 to 600000");
    ck_assert_error("app.yaml:10:37: field 'timeout_ms' must be an integer from 10 to 600000");
    ck_assert_error("app.yaml:11:37: field 'timeout_ms' must be an integer from 10 to 600000");
    ck_assert_int_eq(d.errors.n, 5);
}
END_TEST

START_TEST(health_error_exec)
{
    ck_assert_int_eq(parse_health("      - exec: \"bin/check --quick\"\n"
                                  "      - exec: []\n"
                                  "      - exec: [../other/check]\n"
                                  "      - exec: {run: x}\n"
                                  "      - exec: [\"\"]\n"),
                     -EINVAL);
    ck_assert_error("app.yaml:7:15: exec 'bin/check --quick' is one program name: write a list [program, "
                    "arguments...] (no shell)");
    ck_assert_error("app.yaml:8:15: health exec needs a program");
    ck_assert_error("app.yaml:9:15: health exec '../other/check' resolves outside the application's directory");
    ck_assert_error("app.yaml:10:15: health exec must be");
    ck_assert_error("app.yaml:11:15: health exec needs a program");
}
END_TEST

START_TEST(health_error_tcp)
{
    static const char *const bad[] = {
        "localhost:80",  "127.0.0.1", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536",
        "127.0.0.1:80x", "::1:80",    "[::1]",      "[::1]80",     "[127.0.0.1]:80",
        "999.0.0.1:80",  "[::1:80",   ":80",        "[]:80",       "127.0.0.1:123456",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char *body = xasprintf("      tcp: \"%s\"\n", bad[i]);
        ck_assert_int_eq(parse_health(body), -EINVAL);
        char *want = xasprintf("app.yaml:7:12: bad tcp address '%s': use a numeric address and a port", bad[i]);
        ck_assert_error(want);
        free(want);
        free(body);
        reparse();
    }
    ck_assert_int_eq(parse_health("      tcp: [127.0.0.1, 80]\n"), -EINVAL);
    ck_assert_error("app.yaml:7:12: tcp must be an address \"ADDRESS:PORT\", not a list");
}
END_TEST

START_TEST(health_error_http)
{
    ck_assert_int_eq(parse_health("      - http: https://127.0.0.1/health\n"
                                  "      - http: ftp://127.0.0.1/\n"
                                  "      - http: http://localhost:8080/\n"
                                  "      - http: \"http://127.0.0.1/a b\"\n"
                                  "      - http: \"http://127.0.0.1/a#top\"\n"
                                  "      - http: http://user@127.0.0.1/\n"),
                     -EINVAL);
    ck_assert_error("app.yaml:7:15: bad http url 'https://127.0.0.1/health': https is not supported");
    ck_assert_error("app.yaml:8:15: bad http url 'ftp://127.0.0.1/': use http://ADDRESS[:PORT]/PATH");
    ck_assert_error("app.yaml:9:15: bad http url 'http://localhost:8080/': the host must be a numeric address");
    ck_assert_error("app.yaml:10:15: bad http url 'http://127.0.0.1/a b': the path may hold printable ASCII");
    ck_assert_error("app.yaml:11:15: bad http url 'http://127.0.0.1/a#top': the path");
    ck_assert_error("app.yaml:12:15: bad http url 'http://user@127.0.0.1/': the host must be a numeric address");
    ck_assert_int_eq(d.errors.n, 6);
    reparse();
    ck_assert_int_eq(parse_health("      - http: {url: \"http://127.0.0.1/\", status: 600}\n"
                                  "      - http: {status: 200}\n"
                                  "      - http: {url: [x]}\n"
                                  "      - http: {url: \"http://127.0.0.1/\", method: POST}\n"
                                  "      - http: [x]\n"
                                  "      - http: \"http://127.0.0.1:0/\"\n"),
                     -EINVAL);
    ck_assert_error("app.yaml:7:50: field 'status' must be an integer from 100 to 599");
    ck_assert_error("app.yaml:8:15: missing field 'url'");
    ck_assert_error("app.yaml:9:21: field 'url' must be a string, not a list");
    ck_assert_error("app.yaml:10:42: unknown key 'method' in http check");
    ck_assert_error("app.yaml:11:15: http must be a url or {url, status}, not a list");
    ck_assert_error("app.yaml:12:15: bad http url 'http://127.0.0.1:0/'");
    ck_assert_int_eq(d.errors.n, 6);
}
END_TEST

START_TEST(health_error_long_url_is_not_quoted)
{
    char *url = xcalloc(HEALTH_URL_MAX + 32, 1);
    strcpy(url, "http://127.0.0.1/");
    memset(url + strlen(url), 'a', HEALTH_URL_MAX);
    char *body = xasprintf("      http: %s\n", url);
    ck_assert_int_eq(parse_health(body), -EINVAL);
    ck_assert_error("app.yaml:7:13: bad http url: longer than 2048 bytes");
    ck_assert(strlen(d.errors.v[0]) < 200);
    free(body);
    free(url);
}
END_TEST

START_TEST(health_error_runtime)
{
    ck_assert_int_eq(parse_health("      - runtime: false\n      - runtime: [yes]\n"), -EINVAL);
    ck_assert_error("app.yaml:7:18: runtime must be true (leave the check out to have none)");
    ck_assert_error("app.yaml:8:18: runtime must be true");
}
END_TEST

/* 62 sockets are the most a process can be given (PROCESS_SOCKETS_MAX). */
static int parse_sockets(size_t n)
{
    char *text = xstrdup("name: x\nvsn: \"1\"\nprocesses:\n  - name: p\n    exec: bin/p\n    sockets:\n");
    for (size_t k = 0; k < n; k++) {
        char *more = xasprintf("%s      - {name: s%zu, listen: \"127.0.0.1:%zu\"}\n", text, k, 10000 + k);
        free(text);
        text = more;
    }
    int r = parse(text);
    free(text);
    return r;
}

START_TEST(sockets_bound)
{
    ck_assert_int_eq(parse_sockets(PROCESS_SOCKETS_MAX), 0);
    ck_assert_int_eq(app->processes[0].n_sockets, PROCESS_SOCKETS_MAX);
    ck_assert_int_eq(parse_sockets(PROCESS_SOCKETS_MAX + 1), -EINVAL);
    ck_assert_error("app.yaml:7:7: process 'p' has 63 sockets: at most 62");
}
END_TEST

START_TEST(replace_defaults)
{
    ck_assert_int_eq(parse("name: x\nvsn: \"1\"\nprocesses:\n  - {name: p, exec: bin/p}\n"
                           "  - {name: s, exec: bin/s, sockets: [{name: http, listen: \"127.0.0.1:8080\"}]}\n"
                           "  - {name: e, exec: bin/e, sockets: []}\n"),
                     0);
    const ProcessDef *p = &app->processes[0];
    ck_assert_int_eq(p->stop_signal, SIGTERM);
    /* Overlap by default only with sockets reld holds: without, two
     * copies of a server could fight over its port, lock or pid file. */
    ck_assert(!p->overlap);
    ck_assert(app->processes[1].overlap);
    ck_assert(!app->processes[2].overlap);
    ck_assert_int_eq(p->ready, READY_STARTED);
    ck_assert_int_eq(p->ready_timeout_ms, READY_TIMEOUT_DEFAULT_MS);
}
END_TEST

START_TEST(replace_fields)
{
    ck_assert_int_eq(
        parse("name: x\nvsn: \"1\"\nprocesses:\n"
              "  - name: p\n    exec: bin/p\n    stop_signal: SIGINT\n    ready: notify\n"
              "    ready_timeout_ms: 2500\n"
              "  - name: q\n    exec: bin/q\n    stop_signal: WINCH\n    overlap: false\n"
              "    health: {tcp: \"127.0.0.1:1\"}\n    ready: health\n"
              "  - name: r\n    exec: bin/r\n    stop_signal: SIGQUIT\n    overlap: true\n    ready: started\n"),
        0);
    const ProcessDef *p = &app->processes[0], *q = &app->processes[1], *r = &app->processes[2];
    ck_assert_int_eq(p->stop_signal, SIGINT);
    ck_assert_int_eq(p->ready, READY_NOTIFY);
    ck_assert_int_eq(p->ready_timeout_ms, 2500);
    ck_assert(!p->overlap); /* no sockets */
    ck_assert_int_eq(q->stop_signal, SIGWINCH);
    ck_assert(!q->overlap);
    ck_assert_int_eq(q->ready, READY_HEALTH);
    ck_assert_int_eq(r->stop_signal, SIGQUIT);
    ck_assert(r->overlap);
    ck_assert_int_eq(r->ready, READY_STARTED);
    ck_assert_int_eq(appdefs_signal_from_name("SIGHUP"), SIGHUP);
    ck_assert_int_eq(appdefs_signal_from_name("USR1"), SIGUSR1);
    ck_assert_int_eq(appdefs_signal_from_name("SIGSTOP"), -1);
    ck_assert_int_eq(appdefs_signal_from_name("sigint"), -1);
    ck_assert_int_eq(appdefs_signal_from_name("SIG"), -1);
    ck_assert_int_eq(appdefs_signal_from_name(NULL), -1);
    ck_assert_str_eq(appdefs_signal_name(SIGWINCH), "SIGWINCH");
    ck_assert_ptr_null(appdefs_signal_name(SIGSEGV));
    ck_assert_str_eq(ready_kind_name(READY_NOTIFY), "notify");
}
END_TEST

START_TEST(replace_errors)
{
    ck_assert_int_eq(parse("name: x\nvsn: \"1\"\nprocesses:\n"
                           "  - name: p\n    exec: bin/p\n    stop_signal: SIGSTOP\n    overlap: maybe\n"
                           "    ready: health\n    ready_timeout_ms: 5\n"
                           "  - name: q\n    exec: bin/q\n    stop_signal: [SIGINT]\n    overlap: [true]\n"
                           "    ready: systemd\n"
                           "  - name: r\n    exec: bin/r\n    ready_timeout_ms: 100\n    stop_signal: 15\n"),
                     -EINVAL);
    ck_assert_error("app.yaml:6:18: unknown stop_signal 'SIGSTOP' (SIGTERM, SIGINT, SIGQUIT");
    ck_assert_error("app.yaml:7:14: overlap must be true or false");
    ck_assert_error("app.yaml:8:12: ready: health needs health checks (health:)");
    ck_assert_error("app.yaml:9:23: field 'ready_timeout_ms' must be an integer from 10 to 3600000");
    ck_assert_error("app.yaml:12:18: stop_signal must be a signal name such as SIGTERM, not a list");
    ck_assert_error("app.yaml:13:14: overlap must be true or false");
    ck_assert_error("app.yaml:14:12: ready must be started, notify or health");
    ck_assert_error("app.yaml:17:23: ready_timeout_ms needs ready: notify or ready: health");
    ck_assert_error("app.yaml:18:18: unknown stop_signal '15'");
    ck_assert_uint_eq(d.errors.n, 9);
}
END_TEST

static Suite *appdefs_suite(void)
{
    Suite *s = suite_create("appdefs");
    TCase *tc = tcase_create("appdefs_parse_app");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, parse_app_full_example);
    tcase_add_test(tc, parse_app_minimal);
    tcase_add_test(tc, parse_app_unquoted_version_keeps_its_text);
    tcase_add_test(tc, parse_app_extra_types);
    tcase_add_test(tc, error_yaml_syntax_has_position);
    tcase_add_test(tc, error_empty_document);
    tcase_add_test(tc, error_not_a_mapping);
    tcase_add_test(tc, error_missing_and_mistyped_fields);
    tcase_add_test(tc, error_unknown_and_duplicate_keys);
    tcase_add_test(tc, error_bad_names_and_versions);
    tcase_add_test(tc, error_duplicates);
    tcase_add_test(tc, error_paths_outside_app_dir);
    tcase_add_test(tc, absolute_exec_is_allowed);
    tcase_add_test(tc, error_process_fields);
    tcase_add_test(tc, process_identity);
    tcase_add_test(tc, error_process_identity);
    tcase_add_test(tc, error_appup_entries);
    tcase_add_test(tc, error_instructions);
    tcase_add_test(tc, reports_every_error_not_only_the_first);
    suite_add_tcase(s, tc);

    tc = tcase_create("appdefs_validate_release");
    tcase_add_checked_fixture(tc, rel_setup, rel_teardown);
    tcase_add_test(tc, release_good);
    tcase_add_test(tc, release_order_ties_keep_release_order);
    tcase_add_test(tc, release_errors);
    tcase_add_test(tc, release_missing_dependency);
    tcase_add_test(tc, release_cycle_is_named);
    tcase_add_test(tc, release_module_in_two_apps_and_name_mismatch);
    tcase_add_test(tc, release_unknown_dep_mods);
    suite_add_tcase(s, tc);

    tc = tcase_create("appdefs_appup_find");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, appup_find_first_match_wins);
    tcase_add_test(tc, regex_full_match);
    suite_add_tcase(s, tc);

    tc = tcase_create("bounds");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120); /* bounded by work, not time: a loaded machine or ASan takes longer */
    tcase_add_test(tc, bound_regex_bomb);
    tcase_add_test(tc, bound_regex_language);
    tcase_add_test(tc, bound_regex_accepted);
    tcase_add_test(tc, bound_regex_worst_case_is_bounded);
    tcase_add_test(tc, bound_regex_all_states_of_a_file);
    tcase_add_test(tc, bound_regex_compiled_once);
    tcase_add_test(tc, bound_alias_cycle_in_extra);
    tcase_add_test(tc, bound_many_modules);
    tcase_add_test(tc, bound_many_processes);
    tcase_add_test(tc, bound_many_sockets);
    tcase_add_test(tc, bound_many_dependencies);
    tcase_add_test(tc, bound_bad_process_name_quoted_once);
    tcase_add_test(tc, bound_long_dependency_cycle);
    suite_add_tcase(s, tc);

    tc = tcase_create("health");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, health_one_check_as_a_mapping);
    tcase_add_test(tc, health_every_kind_in_a_list_with_defaults);
    tcase_add_test(tc, health_none_is_no_checks);
    tcase_add_test(tc, health_error_shape);
    tcase_add_test(tc, health_error_too_many_checks);
    tcase_add_test(tc, health_error_intervals_and_timeouts);
    tcase_add_test(tc, health_error_exec);
    tcase_add_test(tc, health_error_tcp);
    tcase_add_test(tc, health_error_http);
    tcase_add_test(tc, health_error_long_url_is_not_quoted);
    tcase_add_test(tc, health_error_runtime);
    suite_add_tcase(s, tc);

    tc = tcase_create("replace");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, sockets_bound);
    tcase_add_test(tc, replace_defaults);
    tcase_add_test(tc, replace_fields);
    tcase_add_test(tc, replace_errors);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return test_run_suite(appdefs_suite());
}
