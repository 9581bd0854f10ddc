#pragma once
/* Helpers for the unit suites: releases built from YAML text in memory. */
#include <string.h>

#include "appdefs.h"

/* Parses rel_yaml and one app.yaml body per application it names (in
 * order), then validates the release. Returns 0 and *ret, or -EINVAL with
 * the reasons in d. */
static inline int test_release(const char *rel_yaml, const char *const *apps, ReleaseDef **ret, Diag *d)
{
    ReleaseDef *rel = NULL;
    int r = appdefs_parse_release("release.yaml", rel_yaml, strlen(rel_yaml), &rel, d);
    for (size_t i = 0; r == 0 && i < rel->n_apps; i++) {
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
