#pragma once
/* Crash points: reld killed (SIGKILL, as kill -9) at a named step of a
 * multi-step change, so that a test can check that the next start
 * completes or undoes that change by itself (tests/e2e/crash.py).
 *
 * Only in a build with -Dtest_hooks=true (RELD_TEST_HOOKS), where the
 * environment's RELD_TEST_CRASH_AT=op:step names the one step at which the
 * process kills itself; in every other build CRASH_POINT() is nothing, and
 * neither the variable nor the step names are in the binary. Any thread
 * may reach a crash point: SIGKILL takes the whole process. */
#ifdef RELD_TEST_HOOKS
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static inline void crash_point(const char *at)
{
    const char *want = getenv("RELD_TEST_CRASH_AT");
    if (want && strcmp(want, at) == 0)
        (void)kill(getpid(), SIGKILL); /* does not return */
}
#define CRASH_POINT(at) crash_point(at)
#else
#define CRASH_POINT(at) ((void)0)
#endif
