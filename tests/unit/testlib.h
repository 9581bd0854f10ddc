#pragma once
/* Helpers for the unit suites: releases built from YAML text in memory. */
#include <check.h>
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "appdefs.h"

/* Parses rel_yaml and the n_apps app.yaml bodies of apps, one per
 * application it names (in order), then validates the release. Returns 0
 * and *ret, or -EINVAL with the reasons in d. */
static inline int test_release_n(const char *rel_yaml, const char *const *apps, size_t n_apps, ReleaseDef **ret,
                                 Diag *d)
{
    ReleaseDef *rel = NULL;
    int r = appdefs_parse_release("release.yaml", rel_yaml, strlen(rel_yaml), &rel, d);
    if (r == 0 && rel->n_apps != n_apps) {
        diag_error(d, "test: the release names %zu applications, %zu app.yaml given", rel->n_apps, n_apps);
        r = -EINVAL;
    }
    for (size_t i = 0; r == 0 && i < n_apps; i++) {
        char *file = xasprintf("lib/%s-%s/app.yaml", rel->apps[i].name, rel->apps[i].vsn);
        r = appdefs_parse_app(file, apps[i], strlen(apps[i]), &rel->apps[i].app, d);
        free(file);
    }
    if (r == 0)
        r = appdefs_validate_release(rel, d);
    if (r < 0) {
        release_def_free(rel);
        return r;
    }
    *ret = rel;
    return 0;
}
/* Copies the real module test-NAME-VSN.so (tests/unit/test-module.c, built
 * into $RELD_TEST_MODULES) to dest, whose directory must exist: reld
 * checks each module's descriptor at unpack, so a release's modules must
 * be shared objects naming themselves. */
static inline void test_copy_module(const char *name, const char *vsn, const char *dest)
{
    const char *dir = getenv("RELD_TEST_MODULES");
    ck_assert_msg(dir != NULL, "RELD_TEST_MODULES is not set (tests/meson.build sets it)");
    char *from = xasprintf("%s/test-%s-%s.so", dir, name, vsn);
    FILE *in = fopen(from, "rb"), *out = fopen(dest, "wb");
    ck_assert_msg(in && out, "copy %s to %s: %s", from, dest, strerror(errno));
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), in)) > 0)
        ck_assert_uint_eq(fwrite(buf, 1, n, out), n);
    ck_assert_int_eq(fclose(in), 0);
    ck_assert_int_eq(fclose(out), 0);
    free(from);
}

/* apps is an array (-Wsizeof-pointer-div says when it is not). */
#define test_release(rel_yaml, apps, ret, d)                                                                           \
    test_release_n((rel_yaml), (apps), sizeof(apps) / sizeof(*(apps)), (ret), (d))

/* Does d hold an error that starts with want (prefix) or contains it? */
static inline bool test_diag_has(const Diag *d, const char *want, bool prefix)
{
    for (size_t i = 0; i < d->errors.n; i++)
        if (prefix ? strncmp(d->errors.v[i], want, strlen(want)) == 0 : strstr(d->errors.v[i], want) != NULL)
            return true;
    return false;
}

/* Every error of d on one line (TAP wants one), for failure messages. */
static inline const char *test_diag_text(const Diag *d)
{
    static char buf[8192];
    buf[0] = 0;
    for (size_t i = 0; i < d->errors.n; i++) {
        strncat(buf, d->errors.v[i], sizeof(buf) - strlen(buf) - 4);
        strncat(buf, " | ", sizeof(buf) - strlen(buf) - 1);
    }
    return buf;
}

/* Runs a suite the way every unit test binary does; the exit status says
 * whether anything failed. */
static inline int test_run_suite(Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}

/* The same for a suite of the daemon's components, in the signal setting
 * daemon_new() makes: sd-event's child sources need SIGCHLD blocked, and a
 * vanished peer is an error to handle, not the test's death. */
static inline int test_run_daemon_suite(Suite *s)
{
    sigset_t ss;
    sigemptyset(&ss);
    sigaddset(&ss, SIGCHLD);
    if (sigprocmask(SIG_BLOCK, &ss, NULL) < 0)
        return 1;
    (void)signal(SIGPIPE, SIG_IGN);
    return test_run_suite(s);
}
