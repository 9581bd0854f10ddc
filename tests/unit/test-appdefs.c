/* appdefs: every validation error with its position, good files of every
 * shape, release-wide checks and ordering. */
#include <check.h>
#include <errno.h>
#include <string.h>

#include "appdefs.h"
#include "testlib.h"

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
    return s;
}

int main(void)
{
    return test_run_suite(appdefs_suite());
}
