#pragma once
/* supervisor: the applications of the running release and their
 * processes (proc.h), as an OTP supervision tree of one level.
 *
 * Applications start in dependency order, each application's processes in
 * declared order. Restarts follow `restart` (permanent, transient,
 * temporary) under a restart intensity per application (at most
 * SUPERVISOR_MAX_RESTARTS in SUPERVISOR_PERIOD_MS; beyond it the
 * application is stopped, logged and recorded). Stops go in reverse order,
 * one process at a time, each SIGTERM, shutdown_ms, SIGKILL, and never
 * block: supervisor_stop() calls back when the last one has exited.
 * Starts, exits, stops and restarts are recorded in the history.
 *
 * The executor (executor.h) reads the tables (apps and children) and
 * changes them only through the functions below.
 *
 * Ownership: the Supervisor owns its apps, children and processes; it
 * borrows the event loop, the history and the definitions of the release
 * it runs (the caller keeps them alive while they are in use).
 *
 * Errors: 0 or a negative errno, with one line per problem in diag where a
 * function takes one. */
#include <jansson.h>
#include <systemd/sd-event.h>

#include "appdefs.h"
#include "health.h"
#include "history.h"
#include "proc.h"

#define SUPERVISOR_MAX_RESTARTS 5
#define SUPERVISOR_PERIOD_MS    10000

typedef struct Supervisor Supervisor;
typedef struct App App;

typedef struct Child {
    App *app;
    Proc *proc;
    HealthProbe *probe; /* its health checks (health.h), told of every start and exit */
    int restarts;
} Child;

struct App {
    Supervisor *s;
    char *name, *vsn;
    Child **children; /* in start order */
    size_t n_children;
    long long restart_ms[SUPERVISOR_MAX_RESTARTS + 1];
    size_t n_restarts;
    bool stopped; /* by the restart intensity, or an instruction: no restarts */
};

int supervisor_new(sd_event *ev, History *hist, const char *root, Supervisor **ret);
/* SIGKILLs whatever still runs (stop it first with supervisor_stop_all())
 * and frees s. */
Supervisor *supervisor_free(Supervisor *s);

/* Starts every process of rel, which must be valid and outlive its use.
 * On a failure to start, kills what it started and returns -errno. */
int supervisor_start_release(Supervisor *s, const ReleaseDef *rel, Diag *diag);
bool supervisor_running(const Supervisor *s);
/* Can every process of rel run as the user, groups and capabilities its
 * definition names (proc_identity())? 0, or -errno with one line per
 * problem in diag. Touches no supervisor: any thread may call it. */
int supervisor_check_identities(const ReleaseDef *rel, Diag *diag);
/* Forgets every application (SIGKILLs what still runs; stop them first),
 * so that the release's definitions may go. */
void supervisor_clear(Supervisor *s);

size_t supervisor_n_apps(const Supervisor *s);
App *supervisor_app(const Supervisor *s, size_t i); /* in start order */
App *supervisor_find_app(const Supervisor *s, const char *name);

/* Stops children (n of them, in the order given, one at a time) and then
 * calls done(userdata) from the event loop; no restarts for them until
 * started again. done may be NULL. */
int supervisor_stop(Supervisor *s, Child **children, size_t n, void (*done)(void *userdata), void *userdata);
/* Stop runs started with userdata call nobody back (its owner goes away);
 * the stops themselves go on. */
void supervisor_forget(Supervisor *s, void *userdata);
/* Every child, applications in reverse start order. */
int supervisor_stop_all(Supervisor *s, void (*done)(void *userdata), void *userdata);
/* Are stops under way? */
bool supervisor_stopping(const Supervisor *s);

/* Starts a child again (after a stop), with its current definition. */
int supervisor_start_child(Supervisor *s, Child *c);

/* Adds application ref (of release rel) at the end of the start order and
 * starts its processes. -errno with the reason in diag when one cannot be
 * started (the application is then removed again). */
int supervisor_add_app(Supervisor *s, const ReleaseAppRef *ref, Diag *diag);
/* Forgets a stopped application (its processes must have exited). */
void supervisor_remove_app(Supervisor *s, App *a);

/* The definitions of release rel for every child that has one there (same
 * application, same process name), for their next start; applications take
 * rel's versions and its start order. Children rel lacks keep theirs. */
void supervisor_adopt_release(Supervisor *s, const ReleaseDef *rel);
/* The same for application a alone. */
void supervisor_adopt_app(Supervisor *s, App *a, const ReleaseDef *rel);
/* The ProcessDef of child c in release rel, or NULL (and its AppDef). */
const ProcessDef *supervisor_def_in(const ReleaseDef *rel, const Child *c, const AppDef **ret_app);

/* Re-exec (reexec.h): the applications and their processes as JSON
 * {apps: [{name, vsn, stopped, restart_ms, children: [{process, restarts,
 * proc, health}]}], call_id}, their descriptors added to fds. NULL with
 * one line in diag while a process is being stopped (the caller refuses
 * the re-exec: -EBUSY). */
json_t *supervisor_save(const Supervisor *s, json_t *fds, Diag *diag);
/* Takes over what saved describes, for release rel (which must outlive
 * it, as with supervisor_start_release()): first checks all of it (every
 * application in rel at its version, every process in its definition,
 * proc_saved_valid()), and takes nothing when one check fails (-ESTALE,
 * one line in diag: the caller kills the processes and closes the
 * descriptors). */
int supervisor_restore(Supervisor *s, const ReleaseDef *rel, const json_t *saved, Diag *diag);
/* The pids of the children that run (caller frees); the count. */
size_t supervisor_pids(const Supervisor *s, pid_t **ret);

/* [{app, vsn, process, pid, state, restarts, modules, health}] */
json_t *supervisor_status(const Supervisor *s);

/* Every child's health probe, applications in start order (caller frees
 * the array, not the probes; they live as long as their child). */
size_t supervisor_probes(const Supervisor *s, HealthProbe ***ret);
/* While held, no runtime health check asks a process (a check due is
 * skipped, not failed): an upgrade's script must not meet a health command
 * between a load and its code_change. A call already out is answered first
 * (a process handles its commands in order). */
void supervisor_hold_health(Supervisor *s, bool hold);
