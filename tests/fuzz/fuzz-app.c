/* fuzz-app: app.yaml (appdefs_parse_app), then what the relup engine and
 * the daemon ask of a parsed application: appup entries found for a few
 * versions (exact and regex), its modules and processes looked up. */
#include "appdefs.h"
#include "fuzz-diag.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const vsns[] = {"1.0.0", "1.0", "2.0.1", "0.9.9-rc1", "10.200.3000"};
    Diag diag = {0};
    AppDef *app = NULL;
    int r = appdefs_parse_app("lib/fuzz-1.0/app.yaml", (const char *)data, size, &app, &diag);
    fuzz_print_diag("appdefs_parse_app", r, &diag);
    FUZZ_ASSERT((r == 0) == (app != NULL), "appdefs_parse_app returned %d with app %p", r, (void *)app);
    FUZZ_ASSERT(r == 0 || diag_n_errors(&diag) > 0, "appdefs_parse_app failed (%d) without saying why", r);
    if (app) {
        for (size_t i = 0; i < sizeof(vsns) / sizeof(vsns[0]); i++) {
            appdefs_appup_find(&app->up, vsns[i]);
            appdefs_appup_find(&app->down, vsns[i]);
        }
        for (size_t i = 0; i < app->n_modules; i++) {
            FUZZ_ASSERT(appdefs_app_find_module(app, app->modules[i].name), "module %s not found",
                        app->modules[i].name);
            appdefs_app_runs_module(app, app->modules[i].name);
        }
        app = appdef_free(app);
    }
    diag_clear(&diag);
    return 0;
}
