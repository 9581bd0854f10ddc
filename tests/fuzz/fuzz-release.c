/* fuzz-release: release.yaml (appdefs_parse_release). The input may go on
 * with the app.yaml of each application, in release.yaml's order, each
 * after a line "#%app" (a YAML comment, so that a plain release.yaml is an
 * input too); when every application has one that parses, the whole
 * release is validated (appdefs_validate_release: names, dependencies and
 * their cycles, modules) and, when valid, put in dependency order. */
#include <stdlib.h>
#include <string.h>

#include "appdefs.h"
#include "fuzz-diag.h"

#define SEP "\n#%app\n"

/* The next part of [*p, end): its length; *p moves past it and its
 * separator. */
static size_t next_part(const char **p, const char *end, const char **part)
{
    *part = *p;
    const char *sep = memmem(*p, (size_t)(end - *p), SEP, strlen(SEP));
    size_t n = (size_t)((sep ? sep : end) - *p);
    *p = sep ? sep + strlen(SEP) : end;
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data, *end = p + size, *part;
    bool more = memmem(p, size, SEP, strlen(SEP)) != NULL;
    size_t n = next_part(&p, end, &part);
    Diag diag = {0};
    ReleaseDef *rel = NULL;
    int r = appdefs_parse_release("releases/1.0/release.yaml", part, n, &rel, &diag);
    fuzz_print_diag("appdefs_parse_release", r, &diag);
    FUZZ_ASSERT((r == 0) == (rel != NULL), "appdefs_parse_release returned %d with release %p", r, (void *)rel);
    FUZZ_ASSERT(r == 0 || diag_n_errors(&diag) > 0, "appdefs_parse_release failed (%d) without saying why", r);
    if (!rel)
        goto out;
    for (size_t i = 0; i < rel->n_apps; i++)
        FUZZ_ASSERT(appdefs_release_find(rel, rel->apps[i].name) == &rel->apps[i], "application %s not found",
                    rel->apps[i].name);
    if (!more)
        goto out;
    /* The applications, each parsed as the store's loader does. */
    bool all = true;
    for (size_t i = 0; i < rel->n_apps; i++) {
        if (p >= end) {
            all = false;
            break;
        }
        n = next_part(&p, end, &part);
        Diag app_diag = {0};
        int ra = appdefs_parse_app(rel->apps[i].name, part, n, &rel->apps[i].app, &app_diag);
        fuzz_print_diag("appdefs_parse_app", ra, &app_diag);
        all = all && ra == 0;
        diag_clear(&app_diag);
    }
    diag_clear(&diag);
    r = appdefs_validate_release(rel, &diag);
    fuzz_print_diag("appdefs_validate_release", r, &diag);
    FUZZ_ASSERT(r == 0 || diag_n_errors(&diag) > 0, "appdefs_validate_release failed (%d) without saying why", r);
    FUZZ_ASSERT(all || r < 0, "a release with an application missing was valid");
    if (r == 0) {
        /* Every application once, each after what it depends on. */
        size_t *order = appdefs_release_order(rel);
        bool *seen = calloc(rel->n_apps, sizeof(bool));
        for (size_t i = 0; i < rel->n_apps; i++) {
            FUZZ_ASSERT(order[i] < rel->n_apps && !seen[order[i]], "order[%zu] = %zu", i, order[i]);
            const AppDef *app = rel->apps[order[i]].app;
            for (size_t d = 0; d < app->applications.n; d++) {
                const ReleaseAppRef *dep = appdefs_release_find(rel, app->applications.v[d]);
                FUZZ_ASSERT(dep && seen[dep - rel->apps], "%s comes before its dependency %s", app->name,
                            app->applications.v[d]);
            }
            seen[order[i]] = true;
        }
        free(seen);
        free(order);
    }
out:
    release_def_free(rel);
    diag_clear(&diag);
    return 0;
}
