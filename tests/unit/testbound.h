#pragma once
/* Bounded work for hostile inputs (docs/formats.md "Limits"), measured by
 * work, not time: a check runs in a child process
 *
 *  - whose address space is capped a few hundred MiB above the suite's
 *    (not under ASan, whose shadow memory reserves terabytes), so a memory
 *    bomb ends it instead of the machine, and
 *  - whose string comparisons are counted against a budget: a suite that
 *    includes this header defines strcmp with TESTBOUND_STRCMP, and being the
 *    executable's own, that definition is the one appdefs, yamlutil, relup
 *    and libyaml call. A quadratic path runs out of budget in a fraction of
 *    a second instead of running for hours.
 *
 * The child says what went wrong on stderr (the test log) and the check
 * fails. */
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define TESTBOUND_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TESTBOUND_ASAN 1
#endif
#endif
#ifndef TESTBOUND_ASAN
#define TESTBOUND_ASAN 0
#endif

enum { TESTBOUND_OVER_BUDGET = 42 };

/* Atomic: relup_compute may run its two directions on two threads
 * (RelupOptions.parallel), both calling strcmp. */
static _Atomic unsigned long long testbound_calls;
static unsigned long long testbound_budget = ~0ULL;

/* Defines strcmp, counting calls. */
#define TESTBOUND_STRCMP                                                                                               \
    int strcmp(const char *a, const char *b)                                                                           \
    {                                                                                                                  \
        if (atomic_fetch_add_explicit(&testbound_calls, 1, memory_order_relaxed) + 1 > testbound_budget)               \
            _exit(TESTBOUND_OVER_BUDGET);                                                                              \
        const unsigned char *x = (const unsigned char *)a, *y = (const unsigned char *)b;                              \
        while (*x && *x == *y) {                                                                                       \
            x++;                                                                                                       \
            y++;                                                                                                       \
        }                                                                                                              \
        return *x - *y;                                                                                                \
    }

/* Runs check() in a child with at most mib MiB of address space more than
 * the suite has now and at most budget calls of strcmp. True when check
 * returned true. */
static inline bool testbound_run(const char *what, bool (*check)(void), size_t mib, unsigned long long budget)
{
    long pages = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f || fscanf(f, "%ld", &pages) != 1)
        pages = 0;
    if (f)
        fclose(f);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0)
        return false;
    if (pid == 0) {
        if (!TESTBOUND_ASAN && pages > 0) {
            rlim_t cap = (rlim_t)pages * (rlim_t)sysconf(_SC_PAGESIZE) + ((rlim_t)mib << 20);
            struct rlimit rl = {cap, cap};
            if (setrlimit(RLIMIT_AS, &rl) < 0)
                _exit(2);
        }
        testbound_calls = 0;
        testbound_budget = budget;
        bool ok = check();
        fflush(stderr);
        _exit(ok ? 0 : 1);
    }
    int st = 0;
    if (waitpid(pid, &st, 0) < 0)
        return false;
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
        return true;
    if (WIFEXITED(st) && WEXITSTATUS(st) == TESTBOUND_OVER_BUDGET)
        fprintf(stderr, "%s: more than %llu string comparisons\n", what, budget);
    else if (WIFSIGNALED(st))
        fprintf(stderr, "%s: killed by signal %d (out of its %zu MiB?)\n", what, WTERMSIG(st), mib);
    else
        fprintf(stderr, "%s: failed (exit %d)\n", what, WEXITSTATUS(st));
    return false;
}

#define ck_assert_bounded(check, mib, budget)                                                                          \
    ck_assert_msg(testbound_run(#check, (check), (mib), (budget)), "%s crossed its bounds (see stderr)", #check)
