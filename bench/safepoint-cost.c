/* The cost of rel_thread_safepoint() when nothing is pending: what a
 * registered thread pays on every turn of its loop. Prints JSON: ns per
 * call, the median of 7 runs. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "reld-runtime.h"

#define CALLS 50000000L
#define RUNS  7

static double now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(void)
{
    char err[256];
    RelRuntime *rt;
    RelThread *t;
    unsetenv("RELD_CONTROL_FD");
    unsetenv("RELD_MODULES");
    if (rel_runtime_new(&rt, err, sizeof(err)) < 0 || rel_thread_register(rt, NULL, &t) < 0) {
        fprintf(stderr, "safepoint-cost: cannot start the runtime\n");
        return 1;
    }
    double ns[RUNS];
    for (int r = 0; r < RUNS; r++) {
        double t0 = now_ns();
        for (long i = 0; i < CALLS; i++)
            rel_thread_safepoint(t);
        ns[r] = (now_ns() - t0) / CALLS;
    }
    qsort(ns, RUNS, sizeof(*ns), cmp);
    printf("{\"ns\": %.3f, \"runs\": %d, \"calls\": %ld}\n", ns[RUNS / 2], RUNS, CALLS);
    rel_thread_unregister(t);
    rel_runtime_free(rt);
    return 0;
}
