/* relup: each instruction kind, dep_mods chains, diamonds and cycles, up
 * against down, added/removed/restarted applications, derived appups, each
 * error, and the JSON shape read back. The differential test compares the
 * same engine with Erlang/OTP on random releases; these cases pin down the
 * behaviour by name. */
#include <check.h>
#include <errno.h>
#include <string.h>

#include "relup.h"
#include "testbound.h"
#include "testlib.h"
#include "yamlutil.h"

TESTBOUND_STRCMP

static Diag d;
static ReleaseDef *r1, *r2;
static Relup *r;

static void setup(void)
{
    d = (Diag){0};
    r1 = r2 = NULL;
    r = NULL;
}

static void teardown(void)
{
    diag_clear(&d);
    r1 = release_def_free(r1);
    r2 = release_def_free(r2);
    r = relup_free(r);
}

static const char *diag_text(void)
{
    return test_diag_text(&d);
}

/* Relup from release 1 to 2; apps1 and apps2 are arrays. */
static int compute_n(const char *rel1, const char *const *apps1, size_t n1, const char *rel2, const char *const *apps2,
                     size_t n2, const RelupOptions *opts)
{
    ck_assert_msg(test_release_n(rel1, apps1, n1, &r1, &d) == 0, "release 1: %s", diag_text());
    ck_assert_msg(test_release_n(rel2, apps2, n2, &r2, &d) == 0, "release 2: %s", diag_text());
    return relup_compute(r1, r2, opts, &r, &d);
}
#define compute(rel1, apps1, rel2, apps2, opts)                                                                        \
    compute_n((rel1), (apps1), sizeof(apps1) / sizeof(*(apps1)), (rel2), (apps2), sizeof(apps2) / sizeof(*(apps2)),    \
              (opts))

/* A script as one instruction per line, as relctl prints it. */
static char *text(const RelupScript *s)
{
    char *out = xstrdup("");
    for (size_t i = 0; i < s->n; i++) {
        char *line = relup_instr_format(&s->v[i]);
        char *n = xasprintf("%s%s\n", out, line);
        free(line);
        free(out);
        out = n;
    }
    return out;
}

#define ck_assert_script(script, want)                                                                                 \
    do {                                                                                                               \
        char *got_ = text(script);                                                                                     \
        bool same_ = strcmp(got_, want) == 0;                                                                          \
        for (char *p_ = got_; *p_; p_++)                                                                               \
            if (*p_ == '\n')                                                                                           \
                *p_ = '|'; /* TAP wants one line */                                                                    \
        ck_assert_msg(same_, "got: %s", got_);                                                                         \
        free(got_);                                                                                                    \
    } while (0)

static bool has_error(const char *part)
{
    return test_diag_has(&d, part, false);
}

#define ck_assert_error(part) ck_assert_msg(has_error(part), "expected '%s' in: %s", part, diag_text())

#define REL(vsn, apps)    "release: r\nvsn: \"" vsn "\"\napplications:\n" apps
#define APPREF(name, vsn) "  - {name: " name ", vsn: \"" vsn "\"}\n"

/* One application "a" going from version 1 to 2 with the given modules and
 * the same instructions up and down. */
static int one_app(const char *mods, const char *instrs)
{
    char *old = xasprintf("name: a\nvsn: \"1\"\nmodules: %s\nprocesses: [{name: p, exec: bin/p}]\n", mods);
    char *new = xasprintf("name: a\nvsn: \"2\"\nmodules: %s\nprocesses: [{name: p, exec: bin/p}]\n"
                          "appup:\n  up:\n    - from: \"1\"\n      instructions:\n%s"
                          "  down:\n    - to: \"1\"\n      instructions:\n%s",
                          mods, instrs, instrs);
    const char *a1[] = {old}, *a2[] = {new};
    int rc = compute(REL("1", APPREF("a", "1")), a1, REL("2", APPREF("a", "2")), a2, NULL);
    free(old);
    free(new);
    return rc;
}

/* ---- instruction kinds --------------------------------------------------- */

START_TEST(update_soft_and_advanced_up_and_down)
{
    ck_assert_int_eq(one_app("[m, n]", "        - {update: m, change: {advanced: x}}\n        - {update: n}\n"), 0);
    ck_assert_script(&r->up, "load_object_code a 2: m, n\n"
                             "point_of_no_return\n"
                             "suspend m\n"
                             "load m (pre brutal_purge, post brutal_purge)\n"
                             "code_change up: m (extra \"x\")\n"
                             "resume m\n"
                             "suspend n\n"
                             "load n (pre brutal_purge, post brutal_purge)\n"
                             "resume n\n");
    /* Down: the state converts (with the newer code) before the old loads. */
    ck_assert_script(&r->down, "load_object_code a 1: m, n\n"
                               "point_of_no_return\n"
                               "suspend m\n"
                               "code_change down: m (extra \"x\")\n"
                               "load m (pre brutal_purge, post brutal_purge)\n"
                               "resume m\n"
                               "suspend n\n"
                               "load n (pre brutal_purge, post brutal_purge)\n"
                               "resume n\n");
}
END_TEST

START_TEST(load_module_suspends_nothing)
{
    ck_assert_int_eq(one_app("[m]", "        - {load_module: m}\n"), 0);
    ck_assert_script(&r->up,
                     "load_object_code a 2: m\npoint_of_no_return\nload m (pre brutal_purge, post brutal_purge)\n");
}
END_TEST

START_TEST(purges_and_timeouts_are_kept)
{
    ck_assert_int_eq(one_app("[m, n, o]",
                             "        - {update: m, pre_purge: soft_purge, post_purge: soft_purge, timeout_ms: 500}\n"
                             "        - {update: n, timeout_ms: infinity}\n"
                             "        - {load_module: o, post_purge: soft_purge}\n"),
                     0);
    ck_assert_script(&r->up, "load_object_code a 2: m, n, o\n"
                             "point_of_no_return\n"
                             "suspend m (timeout 500 ms)\n"
                             "load m (pre soft_purge, post soft_purge)\n"
                             "resume m\n"
                             "suspend n (timeout infinity)\n"
                             "load n (pre brutal_purge, post brutal_purge)\n"
                             "resume n\n"
                             "load o (pre brutal_purge, post soft_purge)\n");
}
END_TEST

START_TEST(add_module_loads_and_delete_module_removes_and_purges)
{
    const char *a1[] = {"name: a\nvsn: \"1\"\nmodules: [old]\n"};
    const char *a2[] = {"name: a\nvsn: \"2\"\nmodules: [new]\nappup:\n"
                        "  up: [{from: \"1\", instructions: [{add_module: new}, {delete_module: old}]}]\n"
                        "  down: [{to: \"1\", instructions: [{delete_module: new}, {add_module: old}]}]\n"};
    ck_assert_int_eq(compute(REL("1", APPREF("a", "1")), a1, REL("2", APPREF("a", "2")), a2, NULL), 0);
    ck_assert_script(&r->up, "load_object_code a 2: new\n"
                             "point_of_no_return\n"
                             "load new (pre brutal_purge, post brutal_purge)\n"
                             "remove old (pre brutal_purge, post brutal_purge)\n"
                             "purge old\n");
    ck_assert_script(&r->down, "load_object_code a 1: old\n"
                               "point_of_no_return\n"
                               "remove new (pre brutal_purge, post brutal_purge)\n"
                               "purge new\n"
                               "load old (pre brutal_purge, post brutal_purge)\n");
}
END_TEST

START_TEST(restart_stops_and_starts_in_place)
{
    ck_assert_int_eq(one_app("[m]", "        - {load_module: m}\n        - {restart: [m]}\n"), 0);
    ck_assert_script(&r->up, "load_object_code a 2: m\npoint_of_no_return\n"
                             "load m (pre brutal_purge, post brutal_purge)\nstop m\nstart m\n");
}
END_TEST

START_TEST(identical_releases_give_only_the_point_of_no_return)
{
    const char *a[] = {"name: a\nvsn: \"1\"\nmodules: [m]\n"};
    ck_assert_int_eq(compute(REL("1", APPREF("a", "1")), a, REL("2", APPREF("a", "1")), a, NULL), 0);
    ck_assert_script(&r->up, "point_of_no_return\n");
    ck_assert_script(&r->down, "point_of_no_return\n");
}
END_TEST

/* ---- dep_mods ------------------------------------------------------------ */

START_TEST(dep_mods_chain_up_loads_dependencies_first)
{
    ck_assert_int_eq(one_app("[x, y, z]", "        - {update: x, change: {advanced: 1}, dep_mods: [y]}\n"
                                          "        - {update: y, dep_mods: [z]}\n"
                                          "        - {update: z}\n"),
                     0);
    ck_assert_script(&r->up, "load_object_code a 2: x, y, z\n"
                             "point_of_no_return\n"
                             "suspend x, y, z\n"
                             "load z (pre brutal_purge, post brutal_purge)\n"
                             "load y (pre brutal_purge, post brutal_purge)\n"
                             "load x (pre brutal_purge, post brutal_purge)\n"
                             "code_change up: x (extra 1)\n"
                             "resume z, y, x\n");
    ck_assert_script(&r->down, "load_object_code a 1: x, y, z\n"
                               "point_of_no_return\n"
                               "suspend x, y, z\n"
                               "code_change down: x (extra 1)\n"
                               "load x (pre brutal_purge, post brutal_purge)\n"
                               "load y (pre brutal_purge, post brutal_purge)\n"
                               "load z (pre brutal_purge, post brutal_purge)\n"
                               "resume z, y, x\n");
}
END_TEST

START_TEST(dep_mods_diamond_ties_follow_appup_order)
{
    /* a needs b and c, both need d; c comes before b in the appup. */
    ck_assert_int_eq(one_app("[a1, b, c, d]", "        - {load_module: a1, dep_mods: [b, c]}\n"
                                              "        - {load_module: c, dep_mods: [d]}\n"
                                              "        - {load_module: b, dep_mods: [d]}\n"
                                              "        - {load_module: d}\n"),
                     0);
    ck_assert_script(&r->up, "load_object_code a 2: a1, c, b, d\n"
                             "point_of_no_return\n"
                             "load d (pre brutal_purge, post brutal_purge)\n"
                             "load b (pre brutal_purge, post brutal_purge)\n"
                             "load c (pre brutal_purge, post brutal_purge)\n"
                             "load a1 (pre brutal_purge, post brutal_purge)\n");
}
END_TEST

START_TEST(dep_mods_cycle_is_one_group_in_appup_order)
{
    ck_assert_int_eq(one_app("[x, y, z]", "        - {update: x, dep_mods: [y]}\n"
                                          "        - {update: y, dep_mods: [x]}\n"
                                          "        - {update: z, dep_mods: [x]}\n"),
                     0);
    ck_assert_script(&r->up, "load_object_code a 2: z, x, y\n"
                             "point_of_no_return\n"
                             "suspend z, x, y\n"
                             "load y (pre brutal_purge, post brutal_purge)\n"
                             "load x (pre brutal_purge, post brutal_purge)\n"
                             "load z (pre brutal_purge, post brutal_purge)\n"
                             "resume y, x, z\n");
}
END_TEST

START_TEST(dep_mods_group_forms_where_its_first_member_stands)
{
    ck_assert_int_eq(one_app("[p, q, s]", "        - {load_module: q}\n"
                                          "        - {update: p, dep_mods: [s]}\n"
                                          "        - {load_module: s}\n"),
                     0);
    ck_assert_script(&r->up, "load_object_code a 2: q, p, s\n"
                             "point_of_no_return\n"
                             "load q (pre brutal_purge, post brutal_purge)\n"
                             "suspend p\n"
                             "load s (pre brutal_purge, post brutal_purge)\n"
                             "load p (pre brutal_purge, post brutal_purge)\n"
                             "resume p\n");
}
END_TEST

/* ---- applications --------------------------------------------------------- */

static const char *const BASE1 = "name: base\nvsn: \"1\"\nmodules: [b1]\n";
static const char *const BASE2 = "name: base\nvsn: \"2\"\nmodules: [b1]\nappup:\n"
                                 "  up: [{from: \"1\", instructions: [{update: b1}]}]\n"
                                 "  down: [{to: \"1\", instructions: [{update: b1}]}]\n";
static const char *const OLDAPP = "name: old_app\nvsn: \"1\"\napplications: [base]\nmodules: [o1]\n";
static const char *const EXTRA = "name: extra\nvsn: \"1\"\napplications: [base]\nmodules: [e1, e2]\n";

START_TEST(added_app_starts_after_its_dependencies_and_removed_stops_first)
{
    const char *a1[] = {OLDAPP, BASE1}, *a2[] = {EXTRA, BASE2};
    ck_assert_int_eq(compute(REL("1", APPREF("old_app", "1") APPREF("base", "1")), a1,
                             REL("2", APPREF("extra", "1") APPREF("base", "2")), a2, NULL),
                     0);
    ck_assert_script(&r->up, "load_object_code base 2: b1\n"
                             "load_object_code extra 1: e1, e2\n"
                             "point_of_no_return\n"
                             "stop_application old_app\n"
                             "remove o1 (pre brutal_purge, post brutal_purge)\n"
                             "purge o1\n"
                             "unload_application old_app\n"
                             "suspend b1\n"
                             "load b1 (pre brutal_purge, post brutal_purge)\n"
                             "resume b1\n"
                             "load e1 (pre brutal_purge, post brutal_purge)\n"
                             "load e2 (pre brutal_purge, post brutal_purge)\n"
                             "start_application extra\n");
    ck_assert_script(&r->down, "load_object_code base 1: b1\n"
                               "load_object_code old_app 1: o1\n"
                               "point_of_no_return\n"
                               "stop_application extra\n"
                               "remove e1 (pre brutal_purge, post brutal_purge)\n"
                               "remove e2 (pre brutal_purge, post brutal_purge)\n"
                               "purge e1, e2\n"
                               "unload_application extra\n"
                               "suspend b1\n"
                               "load b1 (pre brutal_purge, post brutal_purge)\n"
                               "resume b1\n"
                               "load o1 (pre brutal_purge, post brutal_purge)\n"
                               "start_application old_app\n");
}
END_TEST

START_TEST(removed_apps_stop_dependents_first)
{
    const char *a1[] = {"name: top\nvsn: \"1\"\napplications: [mid]\n", "name: mid\nvsn: \"1\"\n",
                        "name: keep\nvsn: \"1\"\n"};
    const char *a2[] = {"name: keep\nvsn: \"1\"\n"};
    ck_assert_int_eq(compute(REL("1", APPREF("top", "1") APPREF("mid", "1") APPREF("keep", "1")), a1,
                             REL("2", APPREF("keep", "1")), a2, NULL),
                     0);
    ck_assert_script(&r->up, "point_of_no_return\n"
                             "stop_application top\npurge\nunload_application top\n"
                             "stop_application mid\npurge\nunload_application mid\n");
}
END_TEST

START_TEST(restart_application_replaces_all_code)
{
    const char *a1[] = {"name: a\nvsn: \"1\"\nmodules: [m, n]\n"};
    const char *a2[] = {"name: a\nvsn: \"2\"\nmodules: [m, k]\nappup:\n"
                        "  up: [{from: \"1\", instructions: [{restart_application: a}]}]\n"
                        "  down: [{to: \"1\", instructions: [{restart_application: a}]}]\n"};
    ck_assert_int_eq(compute(REL("1", APPREF("a", "1")), a1, REL("2", APPREF("a", "2")), a2, NULL), 0);
    ck_assert_script(&r->up, "load_object_code a 2: m, k\n"
                             "point_of_no_return\n"
                             "stop_application a\n"
                             "remove m (pre brutal_purge, post brutal_purge)\n"
                             "remove n (pre brutal_purge, post brutal_purge)\n"
                             "purge m, n\n"
                             "load m (pre brutal_purge, post brutal_purge)\n"
                             "load k (pre brutal_purge, post brutal_purge)\n"
                             "start_application a\n");
}
END_TEST

START_TEST(load_object_code_is_merged_per_application_across_groups)
{
    const char *a1[] = {"name: a\nvsn: \"1\"\nmodules: [x, y]\n",
                        "name: b\nvsn: \"1\"\napplications: [a]\nmodules: [z]\n"};
    const char *a2[] = {"name: a\nvsn: \"2\"\nmodules: [x, y]\nappup:\n"
                        "  up: [{from: \"1\", instructions: [{load_module: x}, {load_module: y}]}]\n"
                        "  down: [{to: \"1\", instructions: [{load_module: x}, {load_module: y}]}]\n",
                        "name: b\nvsn: \"2\"\napplications: [a]\nmodules: [z]\nappup:\n"
                        "  up: [{from: \"1\", instructions: [{update: z, dep_mods: [x]}]}]\n"
                        "  down: [{to: \"1\", instructions: [{update: z, dep_mods: [x]}]}]\n"};
    ck_assert_int_eq(
        compute(REL("1", APPREF("a", "1") APPREF("b", "1")), a1, REL("2", APPREF("a", "2") APPREF("b", "2")), a2, NULL),
        0);
    /* z depends on x (another application): one group, formed at x, in
     * dependency order (z first), so b's load_object_code comes first. */
    ck_assert_script(&r->up, "load_object_code b 2: z\n"
                             "load_object_code a 2: x, y\n"
                             "point_of_no_return\n"
                             "suspend z\n"
                             "load x (pre brutal_purge, post brutal_purge)\n"
                             "load z (pre brutal_purge, post brutal_purge)\n"
                             "resume z\n"
                             "load y (pre brutal_purge, post brutal_purge)\n");
}
END_TEST

/* ---- derived appups ------------------------------------------------------- */

static int changed_m_and_lib(void *userdata, const AppDef *o, const AppDef *n, const char *module)
{
    (*(int *)userdata)++;
    return strcmp(module, "m") == 0 || strcmp(module, "lib") == 0;
}

static int cannot_compare(void *userdata, const AppDef *o, const AppDef *n, const char *module)
{
    return -EIO;
}

START_TEST(derived_entry_when_appup_has_none)
{
    const char *a1[] = {
        "name: a\nvsn: \"1\"\nmodules: [m, n, lib, gone]\nprocesses: [{name: p, exec: bin/p, modules: [m]}]\n"};
    const char *a2[] = {
        "name: a\nvsn: \"2\"\nmodules: [m, n, lib, added]\nprocesses: [{name: p, exec: bin/p, modules: [m]}]\n"};
    int calls = 0;
    RelupOptions o = {.derive_missing = true, .module_changed = changed_m_and_lib, .userdata = &calls};
    ck_assert_int_eq(compute(REL("1", APPREF("a", "1")), a1, REL("2", APPREF("a", "2")), a2, &o), 0);
    ck_assert_int_eq(calls, 6); /* m, n, lib, each up and down */
    ck_assert_script(&r->up, "load_object_code a 2: m, lib, added\n"
                             "point_of_no_return\n"
                             "suspend m\n"
                             "load m (pre brutal_purge, post brutal_purge)\n"
                             "code_change up: m (extra null)\n"
                             "resume m\n"
                             "load lib (pre brutal_purge, post brutal_purge)\n"
                             "load added (pre brutal_purge, post brutal_purge)\n"
                             "remove gone (pre brutal_purge, post brutal_purge)\n"
                             "purge gone\n");
    ck_assert_int_eq(d.warnings.n, 2);
    ck_assert_str_eq(d.warnings.v[0], "relup 1 -> 2 (up): lib/a-2/app.yaml has no appup entry for up from 1; "
                                      "derived: update m {advanced: null}; load_module lib; add_module added; "
                                      "delete_module gone");
    ck_assert_str_eq(d.warnings.v[1], "relup 2 -> 1 (down): lib/a-2/app.yaml has no appup entry for down to 1; "
                                      "derived: update m {advanced: null}; load_module lib; add_module gone; "
                                      "delete_module added");
}
END_TEST

START_TEST(derived_entry_fails_when_files_cannot_be_compared)
{
    const char *a1[] = {"name: a\nvsn: \"1\"\nmodules: [m]\n"}, *a2[] = {"name: a\nvsn: \"2\"\nmodules: [m]\n"};
    RelupOptions o = {.derive_missing = true, .module_changed = cannot_compare};
    ck_assert_int_eq(compute(REL("1", APPREF("a", "1")), a1, REL("2", APPREF("a", "2")), a2, &o), -EINVAL);
    ck_assert_error("cannot compare module 'm' of a 1 and 2");
    ck_assert_ptr_null(r);
}
END_TEST

/* ---- parallel (RelupOptions.parallel) ----------------------------------- */

static int changed_m_only(void *userdata, const AppDef *o, const AppDef *n, const char *module)
{
    (void)userdata; /* reentrant: called from both directions' threads */
    return strcmp(module, "m") == 0;
}

/* The up script on a second thread gives the same scripts, and the same
 * messages in the same order (up's before down's), as computing both on
 * one thread: warnings of derived entries, and errors. */
START_TEST(parallel_gives_the_same_relup_and_messages)
{
    const char *a1[] = {
        "name: a\nvsn: \"1\"\nmodules: [m, n, gone]\nprocesses: [{name: p, exec: bin/p, modules: [m]}]\n",
        "name: b\nvsn: \"1\"\nmodules: [x, y]\n"};
    const char *a2[] = {
        "name: a\nvsn: \"2\"\nmodules: [m, n, added]\nprocesses: [{name: p, exec: bin/p, modules: [m]}]\n",
        "name: b\nvsn: \"2\"\nmodules: [x, y]\nappup:\n"
        "  up: [{from: \"1\", instructions: [{update: x, change: {advanced: [1]}, dep_mods: [y]}, {load_module: y}]}]\n"
        "  down: [{to: \"1\", instructions: [{update: x, dep_mods: [y]}, {load_module: y}]}]\n"};
    RelupOptions o = {.derive_missing = true, .module_changed = changed_m_only};
    ck_assert_int_eq(
        compute(REL("1", APPREF("a", "1") APPREF("b", "1")), a1, REL("2", APPREF("a", "2") APPREF("b", "2")), a2, &o),
        0);
    o.parallel = true;
    Diag pd = {0};
    Relup *pr = NULL;
    for (int round = 0; round < 20; round++) { /* threads interleave differently each time */
        ck_assert_int_eq(relup_compute(r1, r2, &o, &pr, &pd), 0);
        char *u1 = text(&r->up), *u2 = text(&pr->up), *d1 = text(&r->down), *d2 = text(&pr->down);
        ck_assert_str_eq(u1, u2);
        ck_assert_str_eq(d1, d2);
        free(u1);
        free(u2);
        free(d1);
        free(d2);
        ck_assert_uint_eq(pd.errors.n, 0);
        ck_assert_uint_eq(pd.warnings.n, 2);
        ck_assert_uint_eq(d.warnings.n, 2);
        for (size_t i = 0; i < 2; i++)
            ck_assert_str_eq(pd.warnings.v[i], d.warnings.v[i]);
        ck_assert_msg(strstr(pd.warnings.v[0], "(up)") && strstr(pd.warnings.v[1], "(down)"), "%s", pd.warnings.v[0]);
        pr = relup_free(pr);
        diag_clear(&pd);
    }

    /* Errors in both directions: up's first, and nothing returned. */
    const char *b2[] = {"name: b\nvsn: \"2\"\nmodules: [x, y]\nappup:\n  up: [{from: \"0.9\", instructions: []}]\n"};
    const char *b1[] = {"name: b\nvsn: \"1\"\nmodules: [x, y]\n"};
    ReleaseDef *e1 = NULL, *e2 = NULL;
    ck_assert_int_eq(test_release_n(REL("1", APPREF("b", "1")), b1, 1, &e1, &pd), 0);
    ck_assert_int_eq(test_release_n(REL("2", APPREF("b", "2")), b2, 1, &e2, &pd), 0);
    o.derive_missing = false;
    ck_assert_int_eq(relup_compute(e1, e2, &o, &pr, &pd), -EINVAL);
    ck_assert_ptr_null(pr);
    ck_assert_uint_eq(pd.errors.n, 2);
    ck_assert_str_eq(pd.errors.v[0], "relup 1 -> 2 (up): lib/b-2/app.yaml has no appup entry for up from 1");
    ck_assert_str_eq(pd.errors.v[1], "relup 2 -> 1 (down): lib/b-2/app.yaml has no appup entry for down to 1");
    diag_clear(&pd);
    release_def_free(e1);
    release_def_free(e2);
}
END_TEST

/* ---- errors, as OTP raises them ------------------------------------------ */

START_TEST(error_no_appup_entry)
{
    const char *a1[] = {"name: a\nvsn: \"1\"\n"};
    const char *a2[] = {"name: a\nvsn: \"2\"\nappup:\n  up: [{from: \"0.9\", instructions: []}]\n"};
    ck_assert_int_eq(compute(REL("1", APPREF("a", "1")), a1, REL("2", APPREF("a", "2")), a2, NULL), -EINVAL);
    ck_assert_error("relup 1 -> 2 (up): lib/a-2/app.yaml has no appup entry for up from 1");
    ck_assert_error("relup 2 -> 1 (down): lib/a-2/app.yaml has no appup entry for down to 1");
    ck_assert_ptr_null(r);
}
END_TEST

START_TEST(error_dep_mods_target_without_instruction)
{
    ck_assert_int_eq(one_app("[m, n]", "        - {update: m, dep_mods: [n]}\n"), -EINVAL);
    ck_assert_error("relup 1 -> 2 (up): update of 'm' names 'n' in dep_mods, but 'n' has no instruction of its "
                    "own (lib/a-2/app.yaml:");
}
END_TEST

START_TEST(error_module_with_two_instructions)
{
    ck_assert_int_eq(one_app("[m]", "        - {update: m}\n        - {load_module: m}\n"), -EINVAL);
    ck_assert_error("module 'm' has more than one instruction: (lib/a-2/app.yaml:9:11) and (lib/a-2/app.yaml:10:11)");
}
END_TEST

START_TEST(error_load_of_module_no_application_has)
{
    ck_assert_int_eq(one_app("[m]", "        - {load_module: ghost}\n"), -EINVAL);
    ck_assert_error("load of module 'ghost', which no application of release 2 contains");
}
END_TEST

START_TEST(error_application_instructions)
{
    ck_assert_int_eq(one_app("[m]", "        - {add_application: ghost}\n        - {remove_application: a}\n"),
                     -EINVAL);
    ck_assert_error("add_application of 'ghost', which release 2 does not include");
    ck_assert_error("remove_application of 'a', which release 2 still includes");
}
END_TEST

/* ---- the JSON shape ------------------------------------------------------ */

START_TEST(json_shape_and_round_trip)
{
    ck_assert_int_eq(one_app("[m, n]", "        - {update: m, change: {advanced: {k: [1, v]}}, timeout_ms: 300, "
                                       "dep_mods: [n]}\n        - {load_module: n, pre_purge: soft_purge}\n"),
                     0);
    json_t *j = relup_to_json(r);
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    ck_assert_str_eq(
        s, "{\"from\":\"1\",\"to\":\"2\",\"up\":["
           "{\"op\":\"load_object_code\",\"app\":\"a\",\"vsn\":\"2\",\"modules\":[\"m\",\"n\"]},"
           "{\"op\":\"point_of_no_return\"},"
           "{\"op\":\"suspend\",\"modules\":[{\"module\":\"m\",\"timeout_ms\":300}]},"
           "{\"op\":\"load\",\"module\":\"n\",\"pre_purge\":\"soft_purge\",\"post_purge\":\"brutal_purge\"},"
           "{\"op\":\"load\",\"module\":\"m\",\"pre_purge\":\"brutal_purge\",\"post_purge\":\"brutal_purge\"},"
           "{\"op\":\"code_change\",\"mode\":\"up\",\"modules\":[{\"module\":\"m\",\"extra\":{\"k\":[1,\"v\"]}}]},"
           "{\"op\":\"resume\",\"modules\":[\"m\"]}],"
           "\"down\":["
           "{\"op\":\"load_object_code\",\"app\":\"a\",\"vsn\":\"1\",\"modules\":[\"m\",\"n\"]},"
           "{\"op\":\"point_of_no_return\"},"
           "{\"op\":\"suspend\",\"modules\":[{\"module\":\"m\",\"timeout_ms\":300}]},"
           "{\"op\":\"code_change\",\"mode\":\"down\",\"modules\":[{\"module\":\"m\",\"extra\":{\"k\":[1,\"v\"]}}]},"
           "{\"op\":\"load\",\"module\":\"m\",\"pre_purge\":\"brutal_purge\",\"post_purge\":\"brutal_purge\"},"
           "{\"op\":\"load\",\"module\":\"n\",\"pre_purge\":\"soft_purge\",\"post_purge\":\"brutal_purge\"},"
           "{\"op\":\"resume\",\"modules\":[\"m\"]}]}");
    Relup *back = NULL;
    ck_assert_int_eq(relup_parse("relup.yaml", s, strlen(s), &back, &d), 0);
    json_t *j2 = relup_to_json(back);
    char *s2 = json_dumps(j2, JSON_COMPACT);
    ck_assert_str_eq(s, s2);
    free(s);
    free(s2);
    json_decref(j2);
    relup_free(back);
}
END_TEST

static int parse_relup(const char *text_in)
{
    Relup *x = NULL;
    int rc = relup_parse("relup.yaml", text_in, strlen(text_in), &x, &d);
    relup_free(x);
    return rc;
}

/* A relup that is JSON is read by jansson first (relup-json.c, the fast
 * path); it must read exactly as the YAML path reads the same text, which
 * a comment line in front forces. */
static int ck_assert_fast_as_yaml(const char *json)
{
    char *yaml = xasprintf("# as YAML\n%s", json);
    Relup *a = NULL, *b = NULL;
    Diag da = {0}, db = {0};
    int ra = relup_parse("relup.yaml", json, strlen(json), &a, &da);
    int rb = relup_parse("relup.yaml", yaml, strlen(yaml), &b, &db);
    ck_assert_int_eq(ra, rb);
    if (ra == 0) {
        json_t *ja = relup_to_json(a), *jb = relup_to_json(b);
        char *sa = json_dumps(ja, JSON_COMPACT), *sb = json_dumps(jb, JSON_COMPACT);
        ck_assert_str_eq(sa, sb);
        free(sa);
        free(sb);
        json_decref(ja);
        json_decref(jb);
    }
    ck_assert_int_eq(da.errors.n, db.errors.n);
    relup_free(a);
    relup_free(b);
    diag_clear(&da);
    diag_clear(&db);
    free(yaml);
    return ra;
}

#define RELUP_JSON(UP) "{\"from\": \"1\", \"to\": \"2\", \"down\": [{\"op\": \"point_of_no_return\"}], \"up\": " UP "}"

START_TEST(parse_json_reads_as_yaml)
{
    ck_assert_int_eq(
        0,
        ck_assert_fast_as_yaml(RELUP_JSON(
            "[{\"op\": \"load_object_code\", \"app\": \"a\", \"vsn\": \"2\", \"modules\": [\"m\", \"n\"]},\n"
            " {\"op\": \"point_of_no_return\"},\n"
            " {\"op\": \"suspend\", \"modules\": [{\"module\": \"m\", \"timeout_ms\": 300}, "
            "{\"module\": \"n\", \"timeout_ms\": \"infinity\"}, \"o\"]},\n"
            " {\"op\": \"load\", \"module\": \"m\", \"pre_purge\": \"soft_purge\", \"post_purge\": \"brutal_purge\"},\n"
            " {\"op\": \"load\", \"module\": \"n\", \"pre_purge\": \"brutal_purge\", \"post_purge\": \"soft_purge\"},\n"
            " {\"op\": \"code_change\", \"mode\": \"up\", \"modules\": [{\"module\": \"m\", \"extra\": "
            "{\"k\": [1, -2, \"v\", true, false, null, {}, []], \"s\": \"t\\\"\\\\\\n\\u00e9\\t\"}}, {\"module\": "
            "\"n\"}]},\n"
            " {\"op\": \"resume\", \"modules\": [\"m\", \"n\", \"o\"]},\n"
            " {\"op\": \"start_application\", \"app\": \"b\"}]")));
    /* Read by the YAML path, the same: a real, a number for a string, an
     * unknown key, a duplicate key, a byte that is not ASCII, \/ and a
     * surrogate escape, trailing text. */
    ck_assert_fast_as_yaml(RELUP_JSON("[{\"op\": \"point_of_no_return\"}, {\"op\": \"code_change\", \"mode\": "
                                      "\"up\", \"modules\": [{\"module\": \"m\", \"extra\": [1.5, 1e-400, 2E3]}]}]"));
    ck_assert_fast_as_yaml(RELUP_JSON("[{\"op\": \"point_of_no_return\"}, {\"op\": \"start_application\", "
                                      "\"app\": 7}]"));
    ck_assert_fast_as_yaml(RELUP_JSON("[{\"op\": \"point_of_no_return\", \"x\": 1}]"));
    ck_assert_fast_as_yaml(RELUP_JSON("[{\"op\": \"point_of_no_return\", \"op\": \"point_of_no_return\"}]"));
    ck_assert_fast_as_yaml(RELUP_JSON("[{\"op\": \"point_of_no_return\"}, {\"op\": \"code_change\", \"mode\": "
                                      "\"up\", \"modules\": [{\"module\": \"m\", \"extra\": \"\xc3\xa9 \\/ "
                                      "\\ud83d\\ude00\"}]}]"));
    ck_assert_fast_as_yaml(RELUP_JSON("[{\"op\": \"point_of_no_return\"}]") "\n--- x\n");
    ck_assert_fast_as_yaml(
        "{\"from\"\n: \"1\", \"to\": \"2\", \"up\": [{\"op\": \"point_of_no_return\"}], \"down\": []}");
    ck_assert_fast_as_yaml("{\"from\":\"1\",\"to\":\"2\",\"up\":[],\"down\":[{\"op\":\"point_of_no_return\"},"
                           "{\"op\":\"start_application\",\"app\":\"a\\u0062\"}]}");
    ck_assert_fast_as_yaml(RELUP_JSON("[{\"op\": \"suspend\", \"modules\": [{\"module\": \"m\", \"timeout_ms\": "
                                      "0}]}, {\"op\": \"point_of_no_return\"}]"));
    ck_assert_int_eq(0, ck_assert_fast_as_yaml(RELUP_JSON("[{\"op\": \"point_of_no_return\"}]")));
}
END_TEST

/* What the fast path does not take, the YAML path reports with positions. */
START_TEST(parse_json_errors_keep_positions)
{
    ck_assert_int_eq(parse_relup("{\"from\": \"1\", \"to\": \"2\", \"down\": [],\n \"up\": [{\"op\": \"load\", "
                                 "\"module\": \"9x\", \"pre_purge\": \"brutal_purge\", \"post_purge\": "
                                 "\"brutal_purge\"},\n  {\"op\": \"point_of_no_return\", \"from\": 1}]}\n"),
                     -EINVAL);
    ck_assert_error("relup.yaml:2:9: bad module name '9x'");
    ck_assert_error("relup.yaml:3:32: unknown key 'from' in point_of_no_return");
    ck_assert_int_eq(parse_relup("{\"from\": \"1\", \"to\": \"2\", \"to\": \"2\", \"up\": [], \"down\": []}"), -EINVAL);
    ck_assert_error("relup.yaml:1:26: duplicate key 'to' in relup");
}
END_TEST

START_TEST(parse_rejects_bad_syntax_with_positions)
{
    ck_assert_int_eq(parse_relup("from: \"1\"\nto: \"2\"\nup:\n  - {op: teleport}\n  - {op: load, module: m}\n"
                                 "  - {op: code_change, mode: sideways, modules: [m]}\n  - 7\ndown: []\n"),
                     -EINVAL);
    ck_assert_error("relup.yaml:4:10: unknown op 'teleport'");
    ck_assert_error("relup.yaml:5:5: missing field 'pre_purge'");
    ck_assert_error("relup.yaml:6:29: mode must be up or down");
    ck_assert_error("relup.yaml:6:49: code_change modules must be {module, extra} mappings");
    ck_assert_error("relup.yaml:7:5: instruction must be a mapping with 'op', not a scalar");
    ck_assert_int_eq(parse_relup("up: []\n"), -EINVAL);
    ck_assert_error("relup.yaml:1:1: missing field 'from'");
    ck_assert_error("relup.yaml:1:1: missing field 'down'");
}
END_TEST

START_TEST(parse_rejects_scripts_otp_would_refuse)
{
    ck_assert_int_eq(parse_relup("{from: \"1\", to: \"2\", down: [{op: point_of_no_return}], up: ["
                                 "{op: suspend, modules: [m]},"
                                 "{op: point_of_no_return},"
                                 "{op: load, module: m, pre_purge: brutal_purge, post_purge: brutal_purge},"
                                 "{op: code_change, mode: up, modules: [{module: n, extra: 1}]},"
                                 "{op: stop, modules: [p]},"
                                 "{op: point_of_no_return}]}"),
                     -EINVAL);
    ck_assert_error("relup.yaml: up: instruction 6: more than one point_of_no_return");
    ck_assert_error("relup.yaml: up: instruction 1: suspend before point_of_no_return");
    ck_assert_error("relup.yaml: up: instruction 3: no load_object_code for module 'm' before it");
    ck_assert_error("relup.yaml: up: instruction 1: suspend but not resumed: 'm'");
    ck_assert_error("relup.yaml: up: instruction 4: code_change but not suspended: 'n'");
    ck_assert_error("relup.yaml: up: instruction 5: stop but not started: 'p'");
    ck_assert_int_eq(parse_relup("{from: \"1\", to: \"2\", up: [], down: [{op: point_of_no_return}]}"), -EINVAL);
    ck_assert_error("relup.yaml: up: no point_of_no_return");
}
END_TEST

/* ---- bounds of stored relups (docs/formats.md "Limits") ------------------ */

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

static void print_errors(const char *what, const Diag *dd)
{
    fprintf(stderr, "%s: %zu errors\n", what, dd->errors.n);
    for (size_t i = 0; i < dd->errors.n && i < 3; i++)
        fprintf(stderr, "  %.300s\n", dd->errors.v[i]);
}

/* A code_change whose extra is nine levels of ten aliases: 10^9 nodes. */
static void write_laughs_relup(FILE *f)
{
    fputs("from: \"1\"\nto: \"2\"\ndown: [{op: point_of_no_return}]\nup:\n"
          "  - {op: load_object_code, app: a, vsn: \"2\", modules: [m]}\n  - {op: point_of_no_return}\n"
          "  - {op: suspend, modules: [m]}\n  - {op: code_change, mode: up, modules: [{module: m, extra: {\n",
          f);
    fputs("      a: &a [x, x, x, x, x, x, x, x, x, x],\n", f); /* line 9 */
    for (int c = 'b'; c <= 'i'; c++)
        fprintf(f, "      %c: &%c [*%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c],\n", c, c, c - 1, c - 1, c - 1,
                c - 1, c - 1, c - 1, c - 1, c - 1, c - 1, c - 1);
    fputs("  }}]}\n  - {op: resume, modules: [m]}\n", f);
}

/* A relup larger than other documents may be: load_object_code of
 * 1,000,100 module names. */
static void write_large_relup(FILE *f)
{
    fputs("{from: \"1\", to: \"2\", down: [{op: point_of_no_return}], up: [{op: point_of_no_return},\n"
          "{op: load_object_code, app: a, vsn: \"2\", modules: [",
          f);
    for (int i = 0; i < 1000100; i++)
        fputs("m,", f);
    fputs("]}]}\n", f);
}

static bool stored_relup_bounds(void)
{
    Diag dd = {0};
    Relup *x = NULL;
    char *text = text_of(write_laughs_relup);
    /* Line 13 is e's: the eighth *d takes the aliases past 100,000 nodes. */
    bool ok = relup_parse("relup.yaml", text, strlen(text), &x, &dd) == -EINVAL && dd.errors.n == 1 &&
              strcmp(dd.errors.v[0], "relup.yaml:13:42: aliases stand for more than 100000 nodes in all (the limit "
                                     "per document)") == 0;
    if (!ok)
        print_errors("billion laughs", &dd);
    x = relup_free(x);
    diag_clear(&dd);
    free(text);

    text = text_of(write_large_relup);
    if (relup_parse("relup.yaml", text, strlen(text), &x, &dd) != 0 || x->up.v[1].n_mods != 1000100) {
        print_errors("large relup", &dd);
        ok = false;
    }
    relup_free(x);
    diag_clear(&dd);
    free(text);
    return ok;
}

START_TEST(parse_bounds)
{
    ck_assert_bounded(stored_relup_bounds, 768, 20000000);
}
END_TEST

enum { LOADS = 20000 };

/* Every load comes before the point of no return: each is an error, and
 * each was once looked up in every load_object_code before it. */
static void write_loads_before_ponr(FILE *f)
{
    fputs("{from: \"1\", to: \"2\", down: [{op: point_of_no_return}], up: [\n"
          "{op: load_object_code, app: a, vsn: \"2\", modules: [",
          f);
    for (int i = 0; i < LOADS; i++)
        fprintf(f, "m%d,", i);
    fputs("]},\n", f);
    for (int i = LOADS; i-- > 0;)
        fprintf(f, "{op: load, module: m%d, pre_purge: brutal_purge, post_purge: brutal_purge},\n", i);
    fputs("{op: point_of_no_return}]}\n", f);
}

static bool check_script_linear(void)
{
    Diag dd = {0};
    Relup *x = NULL;
    char *text = text_of(write_loads_before_ponr);
    bool ok = relup_parse("relup.yaml", text, strlen(text), &x, &dd) == -EINVAL && dd.errors.n == LOADS &&
              strcmp(dd.errors.v[0], "relup.yaml: up: instruction 2: load before point_of_no_return") == 0;
    if (!ok)
        print_errors("loads before the point of no return", &dd);
    relup_free(x);
    diag_clear(&dd);
    free(text);
    return ok;
}

START_TEST(parse_check_is_linear)
{
    /* 20,000 loads, each looked up among 20,000 modules: 2 x 10^8
     * comparisons. */
    ck_assert_bounded(check_script_linear, 512, 20000000);
}
END_TEST

static Suite *relup_suite(void)
{
    Suite *s = suite_create("relup");
    struct {
        const char *name;
        const TTest *tests[12];
    } cases[] = {
        {"instructions",
         {update_soft_and_advanced_up_and_down, load_module_suspends_nothing, purges_and_timeouts_are_kept,
          add_module_loads_and_delete_module_removes_and_purges, restart_stops_and_starts_in_place,
          identical_releases_give_only_the_point_of_no_return}},
        {"dep_mods",
         {dep_mods_chain_up_loads_dependencies_first, dep_mods_diamond_ties_follow_appup_order,
          dep_mods_cycle_is_one_group_in_appup_order, dep_mods_group_forms_where_its_first_member_stands}},
        {"applications",
         {added_app_starts_after_its_dependencies_and_removed_stops_first, removed_apps_stop_dependents_first,
          restart_application_replaces_all_code, load_object_code_is_merged_per_application_across_groups}},
        {"derived", {derived_entry_when_appup_has_none, derived_entry_fails_when_files_cannot_be_compared}},
        {"parallel", {parallel_gives_the_same_relup_and_messages}},
        {"errors",
         {error_no_appup_entry, error_dep_mods_target_without_instruction, error_module_with_two_instructions,
          error_load_of_module_no_application_has, error_application_instructions}},
        {"json",
         {json_shape_and_round_trip, parse_rejects_bad_syntax_with_positions, parse_rejects_scripts_otp_would_refuse,
          parse_json_reads_as_yaml, parse_json_errors_keep_positions}},
        {"bounds", {parse_bounds, parse_check_is_linear}},
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        TCase *tc = tcase_create(cases[c].name);
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 120); /* the bounds are checked by work, not time: a loaded machine or ASan is slower */
        for (size_t t = 0; cases[c].tests[t]; t++)
            tcase_add_test(tc, cases[c].tests[t]);
        suite_add_tcase(s, tc);
    }
    return s;
}

int main(void)
{
    return test_run_suite(relup_suite());
}
