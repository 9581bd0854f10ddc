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
    json_t *dry;    /* a dry run's report (upgrade_dry_run) */
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
    json_decref(u->dry);
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
    const char *verb = u->p.dry_run ? (u->p.up ? "dry run of the upgrade" : "dry run of the downgrade")
                       : u->p.up    ? "upgrade"
                                    : "downgrade";
    if (u->dry && u->ex && executor_rehearsal(u->ex))
        json_object_set(u->dry, "rehearsal", executor_rehearsal(u->ex));
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
    /* Users and groups before anything changes (NSS may ask the network:
     * here, on the worker). */
    if (u->plan_r == 0)
        u->plan_r = supervisor_check_identities(u->target, &u->diag);
}

/* ---- a dry run ---------------------------------------------------------------- */

/* What process c reports of module (proc_modules(): {name, version,
 * old_version, pins, old_pins}), or NULL. */
static json_t *module_status(const Child *c, const char *module)
{
    size_t i;
    json_t *m;
    json_array_foreach(proc_modules(c->proc), i, m)
    {
        const char *name = json_string_value(json_object_get(m, "name"));
        if (name && strcmp(name, module) == 0)
            return m;
    }
    return NULL;
}

/* Does c run module, by its current definition or its new one (as the
 * executor decides whom an instruction reaches)? */
static bool child_runs(const Upgrade *u, const Child *c, const char *module)
{
    const ProcessDef *nd = supervisor_def_in(u->target, c, NULL);
    return strvec_contains(&proc_def(c->proc)->modules, module) || (nd && strvec_contains(&nd->modules, module));
}

static json_t *reached(const Child *c)
{
    return json_pack("{s:s, s:i}", "process", proc_label(c->proc), "pid", (int)proc_pid(c->proc));
}

/* The modules of in that c runs, or NULL. */
static json_t *modules_run(const Upgrade *u, const Child *c, const RelupInstr *in)
{
    json_t *v = NULL;
    for (size_t m = 0; m < in->n_mods; m++)
        if (child_runs(u, c, in->mods[m].module)) {
            if (!v)
                v = json_array();
            json_array_append_new(v, json_string(in->mods[m].module));
        }
    return v;
}

/* A load's or purge's effect on c's module: the versions it runs, and
 * whether a brutal purge would kill it (pinned old code: docs/runtime.md,
 * "Purges"), from what it last reported. */
static void purge_effect(json_t *p, const Child *c, const char *module, PurgeMethod pre, PurgeMethod post, bool load)
{
    json_t *st = module_status(c, module);
    const char *vsn = json_string_value(json_object_get(st, "version"));
    const char *old = json_string_value(json_object_get(st, "old_version"));
    json_int_t pins = json_integer_value(json_object_get(st, "pins"));
    json_int_t old_pins = json_integer_value(json_object_get(st, "old_pins"));
    json_object_set_new(p, "module", json_string(module));
    json_object_set_new(p, "version", vsn ? json_string(vsn) : json_null());
    json_object_set_new(p, "old_version", old ? json_string(old) : json_null());
    if (load) {
        /* pre_purge: the old version left from an earlier upgrade goes now;
         * post_purge: the version current now, old after the load, goes
         * once the script succeeded. */
        json_object_set_new(p, "purges", old ? json_string(old) : json_null());
        json_object_set_new(p, "post_purges", vsn ? json_string(vsn) : json_null());
        json_object_set_new(p, "post_purge", json_string(purge_method_name(post)));
        bool pre_kills = old && old_pins > 0 && pre == PURGE_BRUTAL;
        bool post_kills = vsn && pins > 0 && post == PURGE_BRUTAL;
        json_object_set_new(p, "kills", json_boolean(pre_kills || post_kills));
        if (old && old_pins > 0 && pre == PURGE_SOFT)
            json_object_set_new(p, "refused",
                                json_string("soft_purge of pinned old code: the upgrade would stop "
                                            "at its point of no return"));
        if (pre_kills || post_kills)
            json_object_set_new(p, "why",
                                json_string(pre_kills ? "its old code is pinned (brutal_purge kills it)"
                                                      : "its current code is pinned and becomes old (the "
                                                        "post_purge, brutal, kills it)"));
    } else {
        /* A purge after the load: what is current now is old then. */
        json_object_set_new(p, "purges", vsn ? json_string(vsn) : json_null());
        json_object_set_new(p, "kills", json_boolean(vsn && pins > 0));
        if (vsn && pins > 0)
            json_object_set_new(p, "why", json_string("its code is pinned (a purge is brutal: it kills the process)"));
    }
}

/* Is application name of another version (or absent) in the target? */
static bool app_changes(const Upgrade *u, const char *name)
{
    const ReleaseAppRef *a = appdefs_release_find(u->p.from_def, name), *b = appdefs_release_find(u->target, name);
    return !a || !b || strcmp(a->vsn, b->vsn) != 0;
}

/* What an instruction does to a process it reaches (report's "does"). */
static const char *const does[RELUP_N_OPS] = {
    [RELUP_LOAD_OBJECT_CODE] = "stages the new code",
    [RELUP_SUSPEND] = "suspended",
    [RELUP_LOAD] = "loads",
    [RELUP_CODE_CHANGE] = "converts its state",
    [RELUP_RESUME] = "resumed",
    [RELUP_PURGE] = "purges",
    [RELUP_REMOVE] = "removes",
    [RELUP_STOP] = "stops",
    [RELUP_START] = "starts on the new code",
    [RELUP_STOP_APPLICATION] = "stops",
    [RELUP_START_APPLICATION] = "starts",
};

/* The processes instruction in reaches, as the executor would send it. */
static json_t *instr_processes(const Upgrade *u, const RelupInstr *in, json_t *pauses)
{
    json_t *v = json_array();
    Supervisor *s = u->p.supervisor;
    if (in->op == RELUP_START_APPLICATION) {
        const ReleaseAppRef *ref = appdefs_release_find(u->target, in->app);
        for (size_t k = 0; ref && k < ref->app->n_processes; k++) {
            char *label = xasprintf("%s/%s", in->app, ref->app->processes[k].name);
            json_array_append_new(v, json_pack("{s:s, s:n, s:s}", "process", label, "pid", "does", "starts"));
            free(label);
        }
        return v;
    }
    for (size_t a = 0; a < supervisor_n_apps(s); a++) {
        App *app = supervisor_app(s, a);
        for (size_t k = 0; k < app->n_children; k++) {
            const Child *c = app->children[k];
            bool protocol = proc_speaks_protocol(c->proc) && proc_pid(c->proc);
            json_t *p = NULL, *mods = NULL;
            switch (in->op) {
            case RELUP_LOAD_OBJECT_CODE:
            case RELUP_SUSPEND:
            case RELUP_RESUME:
            case RELUP_CODE_CHANGE:
            case RELUP_PURGE:
                if (!protocol || !(mods = modules_run(u, c, in)))
                    break;
                p = reached(c);
                json_object_set_new(p, "modules", mods);
                json_object_set_new(p, "does", json_string(does[in->op]));
                if (in->op == RELUP_SUSPEND) {
                    json_object_set_new(p, "does", json_string("suspended"));
                    json_object_set(p, "expected_pause_ms", json_object_get(pauses, "ms"));
                } else if (in->op == RELUP_PURGE) {
                    /* The first module's effect, or the one that kills. */
                    size_t i;
                    json_t *name;
                    json_array_foreach(mods, i, name)
                    {
                        json_t *one = json_object();
                        purge_effect(one, c, json_string_value(name), PURGE_BRUTAL, PURGE_BRUTAL, false);
                        if (i == 0 || json_is_true(json_object_get(one, "kills")))
                            (void)json_object_update(
                                p, one); /* both objects: fails only out of memory, the report then lacks it */
                        json_decref(one);
                    }
                }
                break;
            case RELUP_LOAD:
            case RELUP_REMOVE:
                if (!protocol || !child_runs(u, c, in->module))
                    break;
                p = reached(c);
                json_object_set_new(p, "does", json_string(does[in->op]));
                purge_effect(p, c, in->module, in->pre_purge, in->post_purge, in->op == RELUP_LOAD);
                break;
            case RELUP_STOP:
            case RELUP_START:
                if (!proc_pid(c->proc) || !(mods = modules_run(u, c, in)))
                    break;
                p = reached(c);
                json_object_set_new(p, "modules", mods);
                json_object_set_new(p, "does", json_string(does[in->op]));
                break;
            case RELUP_STOP_APPLICATION:
                if (!proc_pid(c->proc) || strcmp(app->name, in->app) != 0)
                    break;
                p = reached(c);
                json_object_set_new(p, "does", json_string(does[in->op]));
                break;
            case RELUP_POINT_OF_NO_RETURN:
            case RELUP_UNLOAD_APPLICATION:
            case RELUP_START_APPLICATION:
            case RELUP_N_OPS:
                break;
            }
            if (p)
                json_array_append_new(v, p);
        }
    }
    return v;
}

/* The window of the suspend at idx k in pauses (history_pauses), or NULL. */
static json_t *pause_window(json_t *pauses, size_t k)
{
    size_t i;
    json_t *w;
    json_array_foreach(json_object_get(pauses, "windows"), i, w)
    {
        if (json_integer_value(json_object_get(w, "idx")) == (json_int_t)k)
            return w;
    }
    return NULL;
}

/* The report of a dry run (upgrade_dry_run), from the plan, the processes
 * as they run now and the history of earlier upgrades. */
static void dry_run_report(Upgrade *u)
{
    const RelupScript *sc = script(u);
    json_t *pauses = NULL;
    if (history_pauses(u->p.history, u->from, u->to, &pauses) < 0) {
        diag_warning(&u->diag, "the pauses of earlier upgrades cannot be read: %s", history_last_error(u->p.history));
        pauses = NULL;
    }
    json_t *instrs = json_array(), *expected = json_object();
    for (size_t k = 0; k < sc->n; k++) {
        json_t *w = sc->v[k].op == RELUP_SUSPEND ? pause_window(pauses, k + 1) : NULL;
        json_t *ms = w ? json_pack("{s:O, s:O, s:O}", "last", json_object_get(w, "last_ms"), "max",
                                   json_object_get(w, "max_ms"), "of", json_object_get(w, "n"))
                       : json_null();
        json_t *wrap = json_pack("{s:o}", "ms", ms);
        json_t *procs = instr_processes(u, &sc->v[k], wrap);
        json_decref(wrap);
        char *line = relup_instr_format(&sc->v[k]);
        json_array_append_new(instrs,
                              json_pack("{s:i, s:s, s:o}", "k", (int)k + 1, "instruction", line, "processes", procs));
        free(line);
        /* A process in several suspended groups pauses in each: the sum. */
        size_t i;
        json_t *p;
        json_array_foreach(procs, i, p)
        {
            json_t *pm = json_object_get(p, "expected_pause_ms");
            if (!json_is_object(pm))
                continue;
            const char *label = json_string_value(json_object_get(p, "process"));
            json_t *e = json_object_get(expected, label);
            if (!e) {
                json_object_set_new(expected, label, json_deep_copy(pm));
                continue;
            }
            json_object_set_new(e, "last",
                                json_real(json_number_value(json_object_get(e, "last")) +
                                          json_number_value(json_object_get(pm, "last"))));
            json_object_set_new(e, "max",
                                json_real(json_number_value(json_object_get(e, "max")) +
                                          json_number_value(json_object_get(pm, "max"))));
        }
    }
    /* Processes without the runtime in a changed application: restarted on
     * the new version at the switch-over; applications the target lacks
     * stop. */
    json_t *restarts = json_array();
    Supervisor *s = u->p.supervisor;
    for (size_t a = 0; a < supervisor_n_apps(s); a++) {
        App *app = supervisor_app(s, a);
        for (size_t k = 0; k < app->n_children; k++) {
            const Child *c = app->children[k];
            if (!proc_pid(c->proc) || proc_speaks_protocol(c->proc) || !app_changes(u, app->name))
                continue;
            json_t *p = reached(c);
            const ReleaseAppRef *to = appdefs_release_find(u->target, app->name);
            json_object_set_new(p, "from", json_string(app->vsn));
            json_object_set_new(p, "to", to ? json_string(to->vsn) : json_null());
            json_array_append_new(restarts, p);
        }
    }
    json_int_t earlier = json_integer_value(json_object_get(pauses, "attempts"));
    u->dry = json_pack("{s:b, s:s, s:s, s:s, s:o, s:o, s:I, s:o, s:n}", "dry_run", 1, "from", u->from, "to", u->to,
                       "direction", u->p.up ? "upgrade" : "downgrade", "instructions", instrs, "restarts", restarts,
                       "earlier_upgrades", earlier, "expected_pause_ms", expected, "rehearsal");
    json_decref(pauses);
}

json_t *upgrade_dry_run(const Upgrade *u)
{
    return u->dry;
}

/* Planned: the attempt begins and the executor takes its first step. */
static void plan_done(void *userdata)
{
    Upgrade *u = userdata;
    u->planning = false;
    const char *verb = u->p.up ? "upgrade" : "downgrade";
    if (u->cancelled) {
        diag_error(&u->diag, "reld is stopping; the %s%s was not started", u->p.dry_run ? "dry run of the " : "", verb);
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
    if (u->p.dry_run) {
        dry_run_report(u);
        if (!u->p.rehearse) /* nothing to ask any process: done */
            return u->p.finished(u->p.userdata, u, 0, true);
        verb = "dry_run";
    }
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
                         .rehearse_only = u->p.dry_run,
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
