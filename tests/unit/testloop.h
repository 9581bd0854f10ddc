#pragma once
/* The event loop in the daemon's unit suites: bounded waits. A wait ends
 * when its condition holds or its time is up, never asserting how fast
 * something happened (timings flake on shared machines). */
#include <check.h>
#include <stdbool.h>
#include <systemd/sd-event.h>

#include "util.h"

typedef bool (*TestCond)(void);

/* Runs ev until cond() holds or ms have passed; cond() at the end. */
static inline bool test_run_until(sd_event *ev, TestCond cond, int ms)
{
    long long deadline = mono_ms() + ms;
    while (!cond() && mono_ms() < deadline)
        ck_assert_int_ge(sd_event_run(ev, 10 * 1000ULL), 0);
    return cond();
}

/* Runs ev for ms. */
static inline void test_run_for(sd_event *ev, int ms)
{
    long long deadline = mono_ms() + ms;
    while (mono_ms() < deadline)
        ck_assert_int_ge(sd_event_run(ev, 10 * 1000ULL), 0);
}
