/* A module for test-threads, built as several modules and versions:
 * -DMOD_NAME="thr_a" -DMOD_VSN=1. Its callbacks fail when they find a
 * call of work() under way: the runtime promises that every callback
 * runs with the threads that run the module parked. `changes` is a plain
 * int written by code_change and read by work(): under TSan, a runtime
 * that did not order the two would be reported. */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "reld-runtime.h"
#include "thr_api.h"

#define STR_(x) #x
#define STR(x)  STR_(x)

typedef struct ThrState {
    atomic_int active;
    int changes;
} ThrState;

static const RelHost *host;

static void attach(const RelHost *h)
{
    host = h;
}

static int init(void **ret_state)
{
    ThrState *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    *ret_state = s;
    return 0;
}

static int work(void *state)
{
    ThrState *s = state;
    atomic_fetch_add(&s->active, 1);
    int v = s->changes >= 0 ? MOD_VSN : -1;
    atomic_fetch_sub(&s->active, 1);
    return v;
}

static const void *peer(const char *module)
{
    return host ? host->module_api(host, module) : NULL;
}

static int changes(void *state)
{
    return ((ThrState *)state)->changes;
}

static int busy(ThrState *s, const char *what, char *err, size_t errlen)
{
    int n = atomic_load(&s->active);
    if (n)
        snprintf(err, errlen, "%s while %d calls of work() run", what, n);
    return n ? -EBUSY : 0;
}

static int code_change(RelDirection dir, const char *other_version, void *state, const char *extra_json,
                       void **ret_state, char *err, size_t errlen)
{
    ThrState *s = state;
    int r = busy(s, "code_change", err, errlen);
    if (r < 0)
        return r;
    s->changes++;
    *ret_state = s;
    return 0;
}

static int health(void *state, char *msg, size_t msglen)
{
    return busy(state, "health", msg, msglen);
}

static void terminate(void *state)
{
    free(state);
}

static const ThrApi api = {.version = MOD_VSN, .work = work, .peer = peer, .changes = changes};

RELD_MODULE_DEFINE(.name = MOD_NAME, .version = STR(MOD_VSN), .attach = attach, .init = init,
                   .code_change = code_change, .terminate = terminate, .api = &api, .state_version = 1,
                   .health = health);
