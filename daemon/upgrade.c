/* One change of the running release, planned and executed (upgrade.h). */
#include "upgrade.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "executor.h"
#include "log.h"
#include "relup.h"
#include "store.h"
#include "util.h"

/* Fault injection for the end-to-end tests (docs/daemon.md), read from
 * reld's environment only in a build with -Dtest_hooks=true. */
typedef struct TestHooks {
    long plan_delay_ms;          /* RELD_TEST_PLAN_DELAY_MS: a slow plan */
    long delay_before, delay_ms; /* RELD_TEST_DELAY_BEFORE=k:ms: wait on the loop before step k */
    ExecutorFaults faults;       /* RELD_TEST_CRASH_BEFORE, _PAUSE_BEFORE=k:ms, _FAIL_AT */
} TestHooks;

struct Upgrade {
    UpgradeParams p;
    char *from, *to, *who, *root;
    bool planning;
    /* Planned on the worker thread. */
    int plan_r;
    Relup *relup;
    ReleaseDef *target;
    Diag diag;
    /* Executed on the loop. */
    int64_t attempt;
    long long t0_us;
    Executor *ex;
    sd_event_source *step, *delay;
    size_t progress_sent;
    TestHooks hooks;
    bool delayed;
    bool recorded;  /* the attempt's outcome is in the history */
    bool cancelled; /* while planning: reld stops; nothing is to run */
};

#ifdef RELD_TEST_HOOKS
static void read_k_ms(const char *name, long *k, long *ms)
{
    const char *v = getenv(name);
    *k = v ? atol(v) : 0;
    if (ms)
        *ms = v && strchr(v, ':') ? atol(strchr(v, ':') + 1) : 0;
}

static TestHooks test_hooks(void)
{
    TestHooks h = {0};
    read_k_ms("RELD_TEST_PLAN_DELAY_MS", &h.plan_delay_ms, NULL);
    read_k_ms("RELD_TEST_DELAY_BEFORE", &h.delay_before, &h.delay_ms);
    read_k_ms("RELD_TEST_CRASH_BEFORE", &h.faults.crash_before, NULL);
    read_k_ms("RELD_TEST_PAUSE_BEFORE", &h.faults.pause_before, &h.faults.pause_ms);
    read_k_ms("RELD_TEST_FAIL_AT", &h.faults.fail_at, NULL);
    return h;
}
#else
static TestHooks test_hooks(void)
{
    return (TestHooks){0};
}
#endif

const char *upgrade_from(const Upgrade *u)
{
    return u->from;
}

const char *upgrade_to(const Upgrade *u)
{
    return u->to;
}

bool upgrade_up(const Upgrade *u)
{
    return u->p.up;
}

bool upgrade_planning(const Upgrade *u)
{
    return u->planning;
}

const Diag *upgrade_diag(const Upgrade *u)
{
    return &u->diag;
}

double upgrade_ms(const Upgrade *u)
{
    return u->t0_us ? (double)(mono_us() - u->t0_us) / 1000.0 : 0.0;
}

void upgrade_cancel(Upgrade *u)
{
    u->cancelled = true;
}

bool upgrade_recorded(const Upgrade *u)
{
    return u->recorded;
}

ReleaseDef *upgrade_take_target(Upgrade *u)
{
    return TAKE_PTR(u->target);
}

static const RelupScript *script(const Upgrade *u)
{
    return u->p.up ? &u->relup->up : &u->relup->down;
}

bool upgrade_changed_anything(const Upgrade *u)
{
    return u->ex && executor_past_point_of_no_return(u->ex);
}

size_t upgrade_position(const Upgrade *u, size_t *ret_n)
{
    *ret_n = 0;
    return u->ex ? executor_position(u->ex, ret_n) : 0;
}

Upgrade *upgrade_free(Upgrade *u)
{
    if (!u)
        return NULL;
    executor_free(u->ex);
    sd_event_source_disable_unref(u->step);
    sd_event_source_disable_unref(u->delay);
    relup_free(u->relup);
    release_def_free(u->target);
    diag_clear(&u->diag);
    free(u->from);
    free(u->to);
    free(u->who);
    free(u->root);
    free(u);
    return NULL;
}

/* ---- executing ------------------------------------------------------------ */

static void send_progress(Upgrade *u)
{
    size_t n, done = executor_position(u->ex, &n);
    for (size_t k = u->progress_sent; k < done; k++) {
        char *line = relup_instr_format(&script(u)->v[k]);
        u->p.progress(u->p.userdata, k + 1, n, line);
        free(line);
    }
    u->progress_sent = done;
}

static void finish(Upgrade *u, int r)
{
    const char *verb = u->p.up ? "upgrade" : "downgrade";
    char *why = NULL;
    if (r < 0)
        why = xasprintf("%s%s%s", u->diag.errors.n ? u->diag.errors.v[0] : strerror(-r), u->diag.warnings.n ? "; " : "",
                        u->diag.warnings.n ? u->diag.warnings.v[0] : "");
    int w = history_attempt_end(u->p.history, u->attempt, r < 0 ? "failed" : "ok", why);
    if (w < 0) {
        /* The outcome is not recorded: the caller must not report success. */
        log_error("%s to %s: cannot record its outcome in the history: %s", verb, u->to,
                  history_last_error(u->p.history));
        diag_error(&u->diag, "cannot record the outcome of the %s in the history: %s", verb,
                   history_last_error(u->p.history));
    }
    if (r < 0)
        log_error("%s to %s failed: %s", verb, u->to, why);
    free(why);
    (void)sd_event_source_set_enabled(u->step, SD_EVENT_OFF); /* cannot fail */
    u->recorded = w == 0;
    u->p.finished(u->p.userdata, u, r, true);
}

static int on_step(sd_event_source *src, void *userdata);

static int on_delay(sd_event_source *src, uint64_t usec, void *userdata)
{
    return on_step(NULL, userdata);
}

static int on_step(sd_event_source *src, void *userdata)
{
    Upgrade *u = userdata;
    size_t n;
    if (src && !u->delayed && u->hooks.delay_before &&
        executor_position(u->ex, &n) + 1 == (size_t)u->hooks.delay_before) {
        u->delayed = true; /* a test's delay: the event loop runs meanwhile */
        int r = sd_event_add_time_relative(u->p.ev, &u->delay, CLOCK_MONOTONIC, (uint64_t)u->hooks.delay_ms * 1000, 0,
                                           on_delay, u);
        if (r >= 0)
            return 0;
    }
    int r = executor_step(u->ex, &u->diag);
    if (r == EXECUTOR_WAITING)
        return 0; /* progress waits for the end of the step: in a suspended group, waking relctl would lengthen the
                     pause */
    send_progress(u);
    if (r <= 0)
        finish(u, r);
    else
        (void)sd_event_source_set_enabled(u->step, SD_EVENT_ONESHOT); /* the next step, after other events */
    return 0;
}

/* The processes answered: the step goes on, from the event loop. */
static void on_wake(void *userdata)
{
    Upgrade *u = userdata;
    (void)sd_event_source_set_enabled(u->step, SD_EVENT_ONESHOT); /* cannot fail */
}

/* ---- planning --------------------------------------------------------------- */

/* On the worker thread: touches only the upgrade's relup, target and diag,
 * which nothing else uses until plan_done. */
static void plan(void *userdata)
{
    Upgrade *u = userdata;
    if (u->hooks.plan_delay_ms) {
        struct timespec t = {u->hooks.plan_delay_ms / 1000, u->hooks.plan_delay_ms % 1000 * 1000000L};
        (void)nanosleep(&t, NULL);
    }
    bool stored = false;
    u->plan_r =
        store_relup(u->root, u->p.up ? u->from : u->to, u->p.up ? u->to : u->from, true, &u->relup, &stored, &u->diag);
    if (u->plan_r == 0)
        u->plan_r = store_load_release(u->root, u->to, &u->target, &u->diag);
}

/* Planned: the attempt begins and the executor takes its first step. */
static void plan_done(void *userdata)
{
    Upgrade *u = userdata;
    u->planning = false;
    const char *verb = u->p.up ? "upgrade" : "downgrade";
    if (u->cancelled) {
        diag_error(&u->diag, "reld is stopping; the %s was not started", verb);
        u->p.finished(u->p.userdata, u, -ECANCELED, false);
        return;
    }
    if (u->plan_r < 0) {
        log_info("%s from %s to %s for %s refused: %s", verb, u->from, u->to, u->who,
                 u->diag.errors.n ? u->diag.errors.v[0] : "cannot compute the relup");
        u->p.finished(u->p.userdata, u, u->plan_r, false);
        return;
    }
    diag_clear(&u->diag); /* derivation warnings were for relctl relup */
    int r = history_attempt_begin(u->p.history, u->who, verb, u->from, u->to, &u->attempt);
    if (r < 0) {
        diag_error(&u->diag, "cannot record the %s in the history: %s", verb, history_last_error(u->p.history));
        log_error("%s from %s to %s refused: %s", verb, u->from, u->to, u->diag.errors.v[0]);
        u->p.finished(u->p.userdata, u, r, false);
        return;
    }
    u->t0_us = mono_us();
    log_info("%s from %s to %s for %s (%zu instructions)", verb, u->from, u->to, u->who, script(u)->n);
    ExecutorParams ep = {.supervisor = u->p.supervisor,
                         .history = u->p.history,
                         .root = u->root,
                         .from = u->p.from_def,
                         .to = u->target,
                         .script = script(u),
                         .attempt = u->attempt,
                         .wake = on_wake,
                         .userdata = u,
                         .faults = u->hooks.faults,
                         .rehearse = u->p.rehearse,
                         .rehearse_timeout_ms = u->p.rehearse_timeout_ms};
    r = executor_new(&ep, &u->ex);
    if (r >= 0)
        r = sd_event_add_defer(u->p.ev, &u->step, on_step, u);
    if (r < 0) {
        diag_error(&u->diag, "cannot schedule the %s: %s", verb, strerror(-r));
        finish(u, r);
        return;
    }
    /* Before other work once woken: a suspended process waits for it. */
    (void)sd_event_source_set_priority(u->step, SD_EVENT_PRIORITY_IMPORTANT); /* cannot fail */
    (void)sd_event_source_set_enabled(u->step, SD_EVENT_ONESHOT);
}

int upgrade_start(const UpgradeParams *params, Upgrade **ret)
{
    Upgrade *u = xcalloc(1, sizeof(*u));
    u->p = *params;
    u->from = xstrdup(params->from);
    u->to = xstrdup(params->to);
    u->who = xstrdup(params->who);
    u->root = xstrdup(params->root);
    u->hooks = test_hooks();
    u->planning = true;
    int r = jobs_run(params->jobs, plan, plan_done, u);
    if (r < 0) {
        upgrade_free(u);
        return r;
    }
    *ret = u;
    return 0;
}
