/* In-process cost of calling a module through the runtime (the current
 * version's api and state looked up on every call, as a host does) against
 * calling the same handler through a pointer fixed once (no runtime).
 * Usage: call-overhead MODULE.so [calls] ; prints ns per call of each. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../examples/kvcounter/kv_api.h"
#include "reld-runtime.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    long calls = argc > 2 ? atol(argv[2]) : 2000000;
    char err[256], out[128], line[32];
    RelRuntime *rt;
    if (rel_runtime_new(&rt, err, sizeof(err)) < 0 ||
        rel_runtime_load(rt, "kv_server", argv[1], err, sizeof(err)) < 0) {
        fprintf(stderr, "call-overhead: %s\n", err);
        return 1;
    }
    RelModule *m = rel_runtime_module(rt, "kv_server");
    void *dl = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    const RelModuleDesc *d = dlsym(dl, "reld_module");
    void *direct_state = NULL;
    d->init(&direct_state);
    const KvServerApi *direct = d->api;

    double via[7], fixed[7];
    for (int r = 0; r < 7; r++) {
        double t = now();
        for (long i = 0; i < calls; i++) {
            int n = snprintf(line, sizeof(line), "INCR k%ld", i & 1023);
            const KvServerApi *api = rel_module_api(m);
            api->handle(rel_module_state(m), line, (size_t)n, out, sizeof(out));
        }
        via[r] = (now() - t) * 1e9 / (double)calls;
        t = now();
        for (long i = 0; i < calls; i++) {
            int n = snprintf(line, sizeof(line), "INCR k%ld", i & 1023);
            direct->handle(direct_state, line, (size_t)n, out, sizeof(out));
        }
        fixed[r] = (now() - t) * 1e9 / (double)calls;
    }
    qsort(via, 7, sizeof(double), cmp);
    qsort(fixed, 7, sizeof(double), cmp);
    printf("{\"runtime_ns\": %.2f, \"direct_ns\": %.2f, \"calls\": %ld, \"runs\": 7}\n", via[3], fixed[3], calls);
    d->terminate(direct_state);
    rel_runtime_free(rt);
    return 0;
}
