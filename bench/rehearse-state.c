/* bench_state: the module of bench/rehearse-fork. Its state is a buffer of
 * RELD_BENCH_STATE_MB megabytes, every page written at init, as a live
 * state is. Version 2 (-DBENCH_V2) converts it in place; its code_change
 * up waits RELD_BENCH_HOLD_MS milliseconds first, so that the copy lives
 * while the host writes to its state (the copy-on-write cost). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "reld-runtime.h"

typedef struct BenchState {
    size_t len;
    unsigned char *data;
} BenchState;

static int init(void **ret)
{
    const char *mb = getenv("RELD_BENCH_STATE_MB");
    BenchState *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->len = (size_t)(mb ? atol(mb) : 1) << 20;
    if (!(s->data = malloc(s->len))) {
        free(s);
        return -ENOMEM;
    }
    memset(s->data, 1, s->len); /* touched: resident, as a live state */
    *ret = s;
    return 0;
}

static void terminate(void *state)
{
    BenchState *s = state;
    if (s)
        free(s->data);
    free(s);
}

#ifdef BENCH_V2
static int code_change(RelDirection dir, const char *other, void *state, const char *extra, void **ret, char *err,
                       size_t errlen)
{
    const char *hold = getenv("RELD_BENCH_HOLD_MS");
    long ms = hold ? atol(hold) : 0;
    if (dir == REL_UP && ms > 0) {
        struct timespec t = {ms / 1000, ms % 1000 * 1000000L};
        while (nanosleep(&t, &t) < 0)
            ;
    }
    *ret = state;
    return 0;
}
#define BENCH_VERSION     "2"
#define BENCH_CODE_CHANGE code_change
#else
#define BENCH_VERSION     "1"
#define BENCH_CODE_CHANGE NULL
#endif

static const int api = 0;

RELD_MODULE_DEFINE(.name = "bench_state", .version = BENCH_VERSION, .init = init, .code_change = BENCH_CODE_CHANGE,
                   .terminate = terminate, .api = &api, .state_version = 1);
