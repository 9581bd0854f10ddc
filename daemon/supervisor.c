/* The applications of the running release and their processes (supervisor.h). */
#include "supervisor.h"

#include <errno.h>
#include <signal.h>
#include <string.h>

#include "events.h"
#include "log.h"
#include "store.h"
#include "util.h"

/* Children being stopped one at a time, and who to tell at the end. */
typedef struct StopRun {
    Child **children;
    size_t n, next;
    void (*done)(void *userdata);
    void *userdata;
    struct StopRun *next_run;
} StopRun;

struct Supervisor {
    sd_event *ev;
    History *hist;
    char *root;
    App **apps; /* in start order */
    size_t n_apps;
    StopRun *stops;
    sd_event_source *stops_done; /* calls back finished stop runs from the loop */
    bool health_held;
};

static void record(Child *c, const char *kind, json_t *detail)
{
    json_object_set_new(detail, "app", json_string(c->app->name));
    json_object_set_new(detail, "process", json_string(proc_def(c->proc)->name));
    if (history_event(c->app->s->hist, kind, "reld", c->app->vsn, detail) < 0)
        log_error("%s: cannot record %s in the history", proc_label(c->proc), kind);
    json_decref(detail);
}

size_t supervisor_n_apps(const Supervisor *s)
{
    return s->n_apps;
}

App *supervisor_app(const Supervisor *s, size_t i)
{
    return s->apps[i];
}

App *supervisor_find_app(const Supervisor *s, const char *name)
{
    for (size_t i = 0; i < s->n_apps; i++)
        if (strcmp(s->apps[i]->name, name) == 0)
            return s->apps[i];
    return NULL;
}

bool supervisor_running(const Supervisor *s)
{
    return s && s->n_apps > 0;
}

bool supervisor_stopping(const Supervisor *s)
{
    return s->stops != NULL;
}

/* ---- stops -------------------------------------------------------------- */

static int on_stops_done(sd_event_source *src, void *userdata);

/* Starts stopping the next child of run; true when the run has ended. */
static bool stop_run_advance(Supervisor *s, StopRun *run)
{
    while (run->next < run->n) {
        Child *c = run->children[run->next];
        if (proc_stop(c->proc) == 0)
            return false; /* its exit comes back through on_exit */
        run->next++;
    }
    (void)sd_event_source_set_enabled(s->stops_done, SD_EVENT_ONESHOT); /* cannot fail */
    return true;
}

static int on_stops_done(sd_event_source *src, void *userdata)
{
    Supervisor *s = userdata;
    for (StopRun **rp = &s->stops; *rp;) {
        StopRun *run = *rp;
        if (run->next < run->n) {
            rp = &run->next_run;
            continue;
        }
        *rp = run->next_run;
        if (run->done)
            run->done(run->userdata);
        free(run->children);
        free(run);
    }
    return 0;
}

int supervisor_stop(Supervisor *s, Child **children, size_t n, void (*done)(void *userdata), void *userdata)
{
    StopRun *run = xcalloc(1, sizeof(*run));
    run->children = xcalloc(n + 1, sizeof(Child *));
    if (n)
        memcpy(run->children, children, n * sizeof(Child *));
    run->n = n;
    run->done = done;
    run->userdata = userdata;
    run->next_run = s->stops;
    s->stops = run;
    (void)stop_run_advance(s, run); /* the end, if nothing runs, comes from the loop too */
    return 0;
}

void supervisor_forget(Supervisor *s, void *userdata)
{
    for (StopRun *run = s->stops; run; run = run->next_run)
        if (run->userdata == userdata)
            run->done = NULL;
}

int supervisor_stop_all(Supervisor *s, void (*done)(void *userdata), void *userdata)
{
    Child **all = NULL;
    size_t n = 0;
    for (size_t i = s->n_apps; i-- > 0;) {
        App *a = s->apps[i];
        a->stopped = true;
        for (size_t k = a->n_children; k-- > 0;) {
            all = xrealloc(all, (n + 1) * sizeof(Child *));
            all[n++] = a->children[k];
        }
    }
    int r = supervisor_stop(s, all, n, done, userdata);
    free(all);
    return r;
}

/* ---- exits and restarts ---------------------------------------------------------- */

static void app_give_up(App *a, const char *why)
{
    events_emit(EVENT_RESTART_LIMIT, LOG_ERR, NULL, "application %s: %s; stopping it", a->name, why);
    json_t *detail = json_pack("{s:s, s:s}", "app", a->name, "reason", why);
    if (history_event(a->s->hist, "restart_limit", "reld", a->vsn, detail) < 0)
        log_error("application %s: cannot record the restart limit in the history", a->name);
    json_decref(detail);
    a->stopped = true;
    Child **v = xcalloc(a->n_children + 1, sizeof(Child *));
    size_t n = 0;
    for (size_t k = a->n_children; k-- > 0;)
        v[n++] = a->children[k];
    (void)supervisor_stop(a->s, v, n, NULL, NULL); /* cannot fail */
    free(v);
}

static int child_health_ask(HealthProbe *probe, void *userdata);
static void child_health_cancel(HealthProbe *probe, void *userdata);
static const HealthProbeOps probe_ops = {.runtime_ask = child_health_ask, .runtime_cancel = child_health_cancel};

/* A new probe for c, in the place of its old one (which leaves its gates). */
static void renew_probe(Child *c)
{
    HealthProbe *fresh = NULL;
    const char *dir = proc_dir(c->proc);
    if (health_probe_new(c->app->s->ev, proc_label(c->proc), proc_def(c->proc), dir, &probe_ops, c, &fresh) < 0)
        return; /* keeps the old one: only memory can fail here */
    health_probe_free(c->probe);
    c->probe = fresh;
}

/* How a process ended, for its health: "exit 127", "killed by signal 11 (Segmentation fault)". */
static char *how_it_ended(const siginfo_t *si)
{
    if (si->si_code == CLD_KILLED || si->si_code == CLD_DUMPED)
        return xasprintf("killed by signal %d (%s)", si->si_status, strsignal(si->si_status));
    return xasprintf("exit %d", si->si_status);
}

/* The child's health probe after an exit; final: no restart follows. */
static void tell_probe_exit(Child *c, const siginfo_t *si, bool final)
{
    char *why = how_it_ended(si);
    const char *out = proc_last_output(c->proc);
    char *full = out && *out ? xasprintf("%s; its last output: %s", why, out) : NULL;
    health_probe_exited(c->probe, full ? full : why, final);
    free(full);
    free(why);
}

static void on_exit_(Proc *p, const siginfo_t *si, void *userdata)
{
    Child *c = userdata;
    App *a = c->app;
    Supervisor *s = a->s;
    bool signaled = si->si_code == CLD_KILLED || si->si_code == CLD_DUMPED;
    bool clean = si->si_code == CLD_EXITED && si->si_status == 0;
    record(c, proc_stopping(p) ? "process_stop" : "process_exit",
           json_pack("{s:i, s:s, s:i}", "pid", (int)si->si_pid, "how", signaled ? "signal" : "exit", "status",
                     si->si_status));
    if (!proc_stopping(p)) { /* not asked to: operators look for these */
        char *how = how_it_ended(si);
        EventFields f = {.process = proc_label(p)};
        events_emit(EVENT_PROCESS_EXITED, clean ? LOG_NOTICE : LOG_WARNING, &f, "%s (pid %d) ended: %s", proc_label(p),
                    (int)si->si_pid, how);
        free(how);
    }
    /* A stop run waiting for it goes on with its next child. */
    for (StopRun *run = s->stops; run; run = run->next_run)
        if (run->next < run->n && run->children[run->next] == c) {
            run->next++;
            (void)stop_run_advance(s, run);
        }
    const ProcessDef *def = proc_def(p);
    bool restart = def->restart == RESTART_PERMANENT || (def->restart == RESTART_TRANSIENT && !clean);
    if (!proc_stopping(p) && !a->stopped && !restart) {
        /* Its policy lets it end (a transient's clean exit, a temporary's
         * any): not a failure. A fresh probe leaves every gate that waits
         * for it (health.h), and says how it ended. */
        renew_probe(c);
        tell_probe_exit(c, si, true);
        return;
    }
    if (proc_stopping(p) || a->stopped) {
        tell_probe_exit(c, si, true);
        return;
    }
    long long t = mono_ms();
    size_t k = 0; /* keep the restarts within the period */
    for (size_t i = 0; i < a->n_restarts; i++)
        if (t - a->restart_ms[i] < SUPERVISOR_PERIOD_MS)
            a->restart_ms[k++] = a->restart_ms[i];
    a->n_restarts = k;
    if (a->n_restarts >= SUPERVISOR_MAX_RESTARTS) {
        char *why = xasprintf("more than %d restarts in %d ms", SUPERVISOR_MAX_RESTARTS, SUPERVISOR_PERIOD_MS);
        tell_probe_exit(c, si, true);
        app_give_up(a, why);
        free(why);
        return;
    }
    a->restart_ms[a->n_restarts++] = t;
    c->restarts++;
    tell_probe_exit(c, si, false); /* before the restart: its last output is this run's */
    int r = proc_spawn(p);
    if (r < 0) {
        log_error("%s: cannot restart: %s", proc_label(p), strerror(-r));
        char *why = xasprintf("cannot restart: %s", strerror(-r));
        health_probe_exited(c->probe, why, true);
        free(why);
    } else {
        health_probe_started(c->probe, proc_pid(p));
        record(c, "process_restart", json_pack("{s:i, s:i}", "pid", (int)proc_pid(p), "restarts", c->restarts));
    }
}

/* ---- applications and children --------------------------------------------------- */

static ProcSource source_for(const Supervisor *s, const char *app, const char *vsn, const AppDef *def,
                             const ProcessDef *pd)
{
    ProcSource src = {.def = pd,
                      .path = store_path_in_app(s->root, app, vsn, pd->exec),
                      .dir = store_path_app_dir(s->root, app, vsn)};
    for (size_t m = 0; m < pd->modules.n; m++) {
        const ModuleDef *md = appdefs_app_find_module(def, pd->modules.v[m]);
        char *file = store_path_in_app(s->root, app, vsn, md->file);
        strvec_push_take(&src.modules_env, xasprintf("%s=%s", md->name, file));
        free(file);
    }
    return src;
}

/* ---- health: the runtime's health command, on the health lane ---------------------- */

static void on_health_reply(Proc *p, json_t *reply, int r, void *userdata)
{
    Child *c = userdata;
    health_probe_runtime_reply(c->probe, reply, r);
}

static int child_health_ask(HealthProbe *probe, void *userdata)
{
    Child *c = userdata;
    if (c->app->s->health_held)
        return -EBUSY; /* skipped: asked again at the next interval */
    if (!proc_speaks_protocol(c->proc))
        return -EPROTONOSUPPORT; /* it does not link the runtime (or has not said hello yet) */
    /* The probe's own timeout ends the wait (child_health_cancel); this one
     * only bounds a call nobody forgot. */
    return proc_call_on(c->proc, PROC_LANE_HEALTH, json_pack("{s:s}", "cmd", "health"), 600000, on_health_reply, c);
}

static void child_health_cancel(HealthProbe *probe, void *userdata)
{
    Child *c = userdata;
    proc_cancel_call_on(c->proc, PROC_LANE_HEALTH);
}

void supervisor_hold_health(Supervisor *s, bool hold)
{
    s->health_held = hold;
}

size_t supervisor_probes(const Supervisor *s, HealthProbe ***ret)
{
    size_t n = 0;
    for (size_t i = 0; i < s->n_apps; i++)
        n += s->apps[i]->n_children;
    HealthProbe **v = xcalloc(n + 1, sizeof(HealthProbe *));
    n = 0;
    for (size_t i = 0; i < s->n_apps; i++)
        for (size_t k = 0; k < s->apps[i]->n_children; k++)
            v[n++] = s->apps[i]->children[k]->probe;
    *ret = v;
    return n;
}

static void app_free(App *a)
{
    for (size_t i = 0; i < a->n_children; i++) {
        health_probe_free(a->children[i]->probe);
        proc_free(a->children[i]->proc);
        free(a->children[i]);
    }
    free(a->children);
    free(a->name);
    free(a->vsn);
    free(a);
}

/* Can every process of ref run as the user, groups and capabilities its
 * definition names? Checked before any of them starts: 0, or -errno with
 * one line per problem in diag. */
static int check_identities(const ReleaseAppRef *ref, Diag *diag)
{
    int r = 0;
    for (size_t i = 0; i < ref->app->n_processes; i++) {
        ProcIdentity id;
        Diag d = {0};
        int e = proc_identity(&ref->app->processes[i], &id, &d);
        if (e < 0)
            r = e;
        else
            proc_identity_clear(&id);
        for (size_t k = 0; k < d.errors.n; k++)
            diag_error(diag, "%s", d.errors.v[k]);
        diag_clear(&d); /* a warning goes to the log at the start (proc.c) */
    }
    return r;
}

/* A new application with its children, not started; NULL (reasons in
 * diag) when a listening socket cannot be opened, or a process's user,
 * groups or capabilities cannot be had. */
static App *app_new(Supervisor *s, const ReleaseAppRef *ref, Diag *diag)
{
    if (check_identities(ref, diag) < 0)
        return NULL;
    App *a = xcalloc(1, sizeof(*a));
    a->s = s;
    a->name = xstrdup(ref->name);
    a->vsn = xstrdup(ref->vsn);
    a->children = xcalloc(ref->app->n_processes + 1, sizeof(Child *));
    for (size_t i = 0; i < ref->app->n_processes; i++) {
        const ProcessDef *pd = &ref->app->processes[i];
        Child *c = xcalloc(1, sizeof(*c));
        c->app = a;
        char *label = xasprintf("%s/%s", a->name, pd->name), *dir = store_path_app_dir(s->root, a->name, a->vsn);
        ProcSource src = source_for(s, a->name, a->vsn, ref->app, pd);
        c->proc = proc_new(s->ev, label, &src, on_exit_, c, diag);
        proc_source_clear(&src);
        int r = c->proc ? health_probe_new(s->ev, label, pd, dir, &probe_ops, c, &c->probe) : 0;
        if (r < 0)
            diag_error(diag, "%s: cannot follow its health: %s", label, strerror(-r));
        free(label);
        free(dir);
        if (!c->proc || r < 0) {
            proc_free(c->proc);
            free(c);
            app_free(a);
            return NULL;
        }
        a->children[a->n_children++] = c;
    }
    return a;
}

int supervisor_start_child(Supervisor *s, Child *c)
{
    int r = proc_spawn(c->proc);
    if (r < 0)
        return r;
    health_probe_started(c->probe, proc_pid(c->proc));
    record(c, "process_start", json_pack("{s:i}", "pid", (int)proc_pid(c->proc)));
    return 0;
}

static int app_start(App *a, Diag *diag)
{
    a->stopped = false;
    for (size_t i = 0; i < a->n_children; i++) {
        int r = supervisor_start_child(a->s, a->children[i]);
        if (r < 0) {
            diag_error(diag, "%s: cannot start %s: %s", proc_label(a->children[i]->proc),
                       proc_def(a->children[i]->proc)->exec, strerror(-r));
            return r;
        }
    }
    return 0;
}

static void apps_free(Supervisor *s)
{
    /* Stop runs under way end here: their children go now (SIGKILL). */
    for (StopRun *run = s->stops; run; run = run->next_run)
        run->next = run->n;
    if (s->stops)
        (void)sd_event_source_set_enabled(s->stops_done, SD_EVENT_ONESHOT); /* cannot fail */
    for (size_t i = s->n_apps; i-- > 0;)
        app_free(s->apps[i]); /* SIGKILLs what still runs */
    free(s->apps);
    s->apps = NULL;
    s->n_apps = 0;
}

void supervisor_clear(Supervisor *s)
{
    apps_free(s);
}

int supervisor_add_app(Supervisor *s, const ReleaseAppRef *ref, Diag *diag)
{
    App *a = app_new(s, ref, diag);
    if (!a)
        return -EADDRINUSE;
    int r = app_start(a, diag);
    if (r < 0) {
        app_free(a);
        return r;
    }
    s->apps = xrealloc(s->apps, (s->n_apps + 1) * sizeof(App *));
    s->apps[s->n_apps++] = a;
    return 0;
}

void supervisor_remove_app(Supervisor *s, App *a)
{
    for (size_t i = 0; i < s->n_apps; i++)
        if (s->apps[i] == a) {
            memmove(&s->apps[i], &s->apps[i + 1], (s->n_apps - i - 1) * sizeof(App *));
            s->n_apps--;
            break;
        }
    app_free(a);
}

int supervisor_check_identities(const ReleaseDef *rel, Diag *diag)
{
    int r = 0;
    for (size_t k = 0; k < rel->n_apps; k++) {
        int e = check_identities(&rel->apps[k], diag);
        r = e < 0 ? e : r;
    }
    return r;
}

int supervisor_start_release(Supervisor *s, const ReleaseDef *rel, Diag *diag)
{
    apps_free(s);
    size_t *order = appdefs_release_order(rel);
    int r = 0;
    /* Every user and group first: none of the release starts when one is
     * missing. */
    for (size_t k = 0; k < rel->n_apps; k++) {
        int e = check_identities(&rel->apps[order[k]], diag);
        r = e < 0 ? e : r;
    }
    for (size_t k = 0; k < rel->n_apps && r == 0; k++)
        r = supervisor_add_app(s, &rel->apps[order[k]], diag);
    free(order);
    if (r < 0)
        apps_free(s);
    return r;
}

const ProcessDef *supervisor_def_in(const ReleaseDef *rel, const Child *c, const AppDef **ret_app)
{
    /* Callers go through an application's children in order or in
     * reverse, whose definitions are mostly in the same order: the search
     * tries the neighbours of the last match first, so that a pass over
     * 1,000 processes of one application costs about 1,000 name
     * comparisons, not 500,000. Only the main loop's thread calls this. */
    static size_t last;
    const ReleaseAppRef *ref = appdefs_release_find(rel, c->app->name);
    const char *name = proc_def(c->proc)->name;
    size_t n = ref ? ref->app->n_processes : 0;
    for (size_t k = 0; n && k < n + 3; k++) {
        /* last + 1, last, last - 1, then every one from the first */
        size_t i = k < 3 ? (last + n + 1 - k) % n : k - 3;
        if (strcmp(ref->app->processes[i].name, name) == 0) {
            last = i;
            if (ret_app)
                *ret_app = ref->app;
            return &ref->app->processes[i];
        }
    }
    return NULL;
}

void supervisor_adopt_app(Supervisor *s, App *a, const ReleaseDef *rel)
{
    const ReleaseAppRef *ref = appdefs_release_find(rel, a->name);
    if (!ref)
        return;
    free(a->vsn);
    a->vsn = xstrdup(ref->vsn);
    for (size_t k = 0; k < a->n_children; k++) {
        const AppDef *napp = NULL;
        const ProcessDef *nd = supervisor_def_in(rel, a->children[k], &napp);
        if (!nd)
            continue;
        ProcSource src = source_for(s, a->name, a->vsn, napp, nd);
        health_probe_set_definition(a->children[k]->probe, nd, src.dir);
        proc_set_source(a->children[k]->proc, &src);
    }
}

void supervisor_adopt_release(Supervisor *s, const ReleaseDef *rel)
{
    for (size_t i = 0; i < s->n_apps; i++)
        supervisor_adopt_app(s, s->apps[i], rel);
    /* rel's start order; applications it lacks go last, in their order. */
    size_t *order = appdefs_release_order(rel);
    App **apps = xcalloc(s->n_apps + 1, sizeof(App *));
    size_t n = 0;
    for (size_t k = 0; k < rel->n_apps; k++) {
        App *a = supervisor_find_app(s, rel->apps[order[k]].name);
        if (a)
            apps[n++] = a;
    }
    for (size_t i = 0; i < s->n_apps; i++)
        if (!appdefs_release_find(rel, s->apps[i]->name))
            apps[n++] = s->apps[i];
    free(s->apps);
    s->apps = apps;
    free(order);
}

/* ---- life ----------------------------------------------------------------- */

int supervisor_new(sd_event *ev, History *hist, const char *root, Supervisor **ret)
{
    Supervisor *s = xcalloc(1, sizeof(*s));
    s->ev = ev;
    s->hist = hist;
    s->root = xstrdup(root);
    int r = sd_event_add_defer(ev, &s->stops_done, on_stops_done, s);
    if (r < 0) {
        free(s->root);
        free(s);
        return r;
    }
    (void)sd_event_source_set_enabled(s->stops_done, SD_EVENT_OFF); /* cannot fail */
    *ret = s;
    return 0;
}

Supervisor *supervisor_free(Supervisor *s)
{
    if (!s)
        return NULL;
    while (s->stops) { /* nobody to tell any more */
        StopRun *run = s->stops;
        s->stops = run->next_run;
        free(run->children);
        free(run);
    }
    apps_free(s);
    sd_event_source_disable_unref(s->stops_done);
    free(s->root);
    free(s);
    return NULL;
}

json_t *supervisor_status(const Supervisor *s)
{
    json_t *v = json_array();
    for (size_t i = 0; s && i < s->n_apps; i++)
        for (size_t k = 0; k < s->apps[i]->n_children; k++) {
            const Child *c = s->apps[i]->children[k];
            const Proc *p = c->proc;
            const char *state = proc_pid(p) && proc_stopping(p) ? "stopping"
                                : proc_pid(p)                   ? "running"
                                : s->apps[i]->stopped           ? "stopped"
                                                                : "exited";
            json_array_append_new(v, json_pack("{s:s, s:s, s:s, s:i, s:s, s:i, s:O, s:o}", "app", s->apps[i]->name,
                                               "vsn", s->apps[i]->vsn, "process", proc_def(p)->name, "pid",
                                               (int)proc_pid(p), "state", state, "restarts", c->restarts, "modules",
                                               proc_modules(p) ? proc_modules(p) : json_null(), "health",
                                               health_probe_status(c->probe)));
        }
    return v;
}

/* ---- re-exec: the state handed over ------------------------------------------ */

json_t *supervisor_save(const Supervisor *s, json_t *fds, Diag *diag)
{
    json_t *apps = json_array();
    for (size_t i = 0; i < s->n_apps; i++) {
        const App *a = s->apps[i];
        json_t *children = json_array(), *restarts = json_array();
        for (size_t k = 0; k < a->n_restarts; k++)
            json_array_append_new(restarts, json_integer(a->restart_ms[k]));
        for (size_t k = 0; k < a->n_children; k++) {
            const Child *c = a->children[k];
            pid_t other = proc_other_run(c->proc);
            if ((proc_stopping(c->proc) && proc_pid(c->proc)) || other) {
                if (other > 0)
                    diag_error(diag, "%s: a run of it (pid %d) is still stopping", proc_label(c->proc), (int)other);
                else
                    diag_error(diag, "%s is being stopped", proc_label(c->proc));
                json_decref(children);
                json_decref(restarts);
                json_decref(apps);
                return NULL;
            }
            json_array_append_new(children, json_pack("{s:s, s:i, s:o, s:o}", "process", proc_def(c->proc)->name,
                                                      "restarts", c->restarts, "proc", proc_save(c->proc, fds),
                                                      "health", health_probe_save(c->probe)));
        }
        json_array_append_new(apps, json_pack("{s:s, s:s, s:b, s:o, s:o}", "name", a->name, "vsn", a->vsn, "stopped",
                                              a->stopped, "restart_ms", restarts, "children", children));
    }
    return json_pack("{s:o, s:I}", "apps", apps, "call_id", (json_int_t)proc_last_call_id());
}

/* The definitions of a saved application in rel, or NULL (one line in diag). */
static const ReleaseAppRef *saved_app_ref(const ReleaseDef *rel, const json_t *sa, Diag *diag)
{
    const char *name = json_string_value(json_object_get(sa, "name")),
               *vsn = json_string_value(json_object_get(sa, "vsn"));
    const ReleaseAppRef *ref = name ? appdefs_release_find(rel, name) : NULL;
    if (!ref || !vsn || strcmp(ref->vsn, vsn) != 0) {
        diag_error(diag, "application %s %s is not in release %s", name ? name : "?", vsn ? vsn : "?", rel->vsn);
        return NULL;
    }
    return ref;
}

static const ProcessDef *saved_process_def(const AppDef *app, const json_t *sc)
{
    const char *name = json_string_value(json_object_get(sc, "process"));
    for (size_t i = 0; name && i < app->n_processes; i++)
        if (strcmp(app->processes[i].name, name) == 0)
            return &app->processes[i];
    return NULL;
}

int supervisor_restore(Supervisor *s, const ReleaseDef *rel, const json_t *saved, Diag *diag)
{
    json_t *apps = json_object_get(saved, "apps"), *sa, *sc;
    size_t i, k;
    if (!json_is_array(apps)) {
        diag_error(diag, "no applications saved");
        return -ESTALE;
    }
    /* Everything is checked before anything is taken. */
    json_array_foreach(apps, i, sa)
    {
        const ReleaseAppRef *ref = saved_app_ref(rel, sa, diag);
        if (!ref || json_array_size(json_object_get(sa, "children")) != ref->app->n_processes) {
            if (ref)
                diag_error(diag, "application %s: not the processes of its definition", ref->name);
            return -ESTALE;
        }
        json_array_foreach(json_object_get(sa, "children"), k, sc)
        {
            const ProcessDef *pd = saved_process_def(ref->app, sc);
            char *label = xasprintf("%s/%s", ref->name, pd ? pd->name : "?");
            bool ok = pd && proc_saved_valid(json_object_get(sc, "proc"), pd, label, diag);
            if (!pd)
                diag_error(diag, "%s: no such process in its definition", label);
            free(label);
            if (!ok)
                return -ESTALE;
        }
    }
    apps_free(s);
    proc_set_last_call_id(json_integer_value(json_object_get(saved, "call_id")));
    json_array_foreach(apps, i, sa)
    {
        const ReleaseAppRef *ref = saved_app_ref(rel, sa, diag);
        App *a = xcalloc(1, sizeof(*a));
        a->s = s;
        a->name = xstrdup(ref->name);
        a->vsn = xstrdup(ref->vsn);
        a->stopped = json_is_true(json_object_get(sa, "stopped"));
        json_t *v;
        json_array_foreach(json_object_get(sa, "restart_ms"), k, v) if (a->n_restarts < SUPERVISOR_MAX_RESTARTS + 1)
            a->restart_ms[a->n_restarts++] = json_integer_value(v);
        a->children = xcalloc(ref->app->n_processes + 1, sizeof(Child *));
        json_array_foreach(json_object_get(sa, "children"), k, sc)
        {
            const ProcessDef *pd = saved_process_def(ref->app, sc);
            Child *c = xcalloc(1, sizeof(*c));
            c->app = a;
            c->restarts = (int)json_integer_value(json_object_get(sc, "restarts"));
            char *label = xasprintf("%s/%s", a->name, pd->name), *dir = store_path_app_dir(s->root, a->name, a->vsn);
            ProcSource src = source_for(s, a->name, a->vsn, ref->app, pd);
            c->proc = proc_adopt(s->ev, label, &src, json_object_get(sc, "proc"), on_exit_, c);
            proc_source_clear(&src);
            if (health_probe_new(s->ev, label, pd, dir, &probe_ops, c, &c->probe) < 0)
                log_error("%s: its health cannot be followed", label); /* only memory can fail here */
            else
                health_probe_restore(c->probe, json_object_get(sc, "health"), proc_pid(c->proc));
            free(label);
            free(dir);
            a->children[a->n_children++] = c;
        }
        s->apps = xrealloc(s->apps, (s->n_apps + 1) * sizeof(App *));
        s->apps[s->n_apps++] = a;
    }
    return 0;
}

size_t supervisor_pids(const Supervisor *s, pid_t **ret)
{
    pid_t *v = NULL;
    size_t n = 0, cap = 0;
    for (size_t i = 0; i < s->n_apps; i++)
        for (size_t k = 0; k < s->apps[i]->n_children; k++)
            if (proc_pid(s->apps[i]->children[k]->proc)) {
                GROW(v, cap, n + 1);
                v[n++] = proc_pid(s->apps[i]->children[k]->proc);
            }
    *ret = v;
    return n;
}
