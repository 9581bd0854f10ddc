/* Modules that fuzz-control's process runs and loads, one per build:
 *   -DFUZZMOD_VERSION='"1"'   fuzzmod version 1 (loaded at start), "2", "3"
 *   -DFUZZMOD_BROKEN          module "broken": its init fails
 * Every version keeps the same state (so that no sequence of commands
 * makes one version read another's state wrongly: the runtime is what is
 * tested), allocated, so that LeakSanitizer sees a state the runtime
 * drops. code_change fails when extra holds "fail", as a module may. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "reld-runtime.h"

typedef struct State {
    char version[8];
    long changes;
} State;

static const int api = 0;

#ifdef FUZZMOD_BROKEN
static int init(void **ret_state)
{
    return -EIO;
}

RELD_MODULE_DEFINE(.name = "broken", .version = "1", .init = init, .api = &api);
#else
static const RelHost *host;

static void attach(const RelHost *h)
{
    host = h;
}

static int init(void **ret_state)
{
    State *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    snprintf(s->version, sizeof(s->version), "%s", FUZZMOD_VERSION);
    *ret_state = s;
    return 0;
}

static int code_change(RelDirection dir, const char *other_version, void *state, const char *extra_json,
                       void **ret_state, char *err, size_t errlen)
{
    if (strstr(extra_json, "fail")) {
        snprintf(err, errlen, "asked to fail (%s)", extra_json);
        return -EINVAL;
    }
    State *s = state;
    if (!s) /* the module had no state: not ours to make one here */
        return -EINVAL;
    /* A host callback from inside a command, as a module may. */
    if (host)
        host->module_api(host, "fuzzmod");
    snprintf(s->version, sizeof(s->version), "%s", dir == REL_UP ? FUZZMOD_VERSION : other_version);
    s->changes++;
    *ret_state = s;
    return 0;
}

static void terminate(void *state)
{
    free(state);
}

RELD_MODULE_DEFINE(.name = "fuzzmod", .version = FUZZMOD_VERSION, .attach = attach, .init = init,
                   .code_change = code_change, .terminate = terminate, .api = &api);
#endif
