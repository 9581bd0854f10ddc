#pragma once
/* proc: one managed process as the operating system and the control
 * protocol see it: its start (a child that shares reld's memory until
 * it calls execve, clone(CLONE_VM | CLONE_VFORK): its cost does not grow
 * with reld's size as fork()'s does; the environment of docs/runtime.md),
 * its output, its control channel and its stop. A process whose execve
 * fails exits 127 and reld logs "app/process[pid]: cannot execute PATH:
 * REASON" at its start.
 *
 * Environment: RELD_CONTROL_FD (reld keeps the other end), RELD_MODULES,
 * RELD_PROCESS, and the listening sockets, opened once by proc_new() and
 * passed systemd-style (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES), so they
 * stay open across restarts and no connection is refused. reld's own
 * systemd variables (NOTIFY_SOCKET, WATCHDOG_*, LISTEN_*, JOURNAL_STREAM,
 * RELD_*) are not passed on.
 *
 * Output: when reld logs to the journal, a process's stdout and stderr are
 * journal streams of their own (identifier "app/process"); otherwise reld
 * relays them as "app/process[pid]: line", at most PROC_RELAY_BURST lines
 * per PROC_RELAY_PERIOD_MS per process (the rest is counted and dropped).
 *
 * Control channel (docs/runtime.md): sends are buffered and flushed when
 * the socket can take them, so a process that does not read never blocks
 * reld. A call is one request with a fresh id; its reply, a timeout or the
 * channel's loss ends it (ProcCallDone), at most one call at a time per lane.
 * Replies that carry a module list update proc_modules().
 *
 * Stop: the definition's stop_signal (SIGTERM unless it says otherwise),
 * then SIGKILL after its shutdown_ms, on timers;
 * the exit arrives through the event loop (ProcExited). Nothing waits.
 *
 * Ownership: a Proc borrows its ProcessDef (which must outlive it or be
 * replaced with proc_set_definition()) and owns everything else.
 *
 * Errors: 0 or a negative errno. */
#include <jansson.h>
#include <signal.h>
#include <stdbool.h>
#include <systemd/sd-event.h>

#include "appdefs.h"

#define PROC_RELAY_BURST     1000
#define PROC_RELAY_PERIOD_MS 10000

typedef struct Proc Proc;

/* The process exited (si: how). p->stopping tells whether reld stopped it. */
typedef void (*ProcExited)(Proc *p, const siginfo_t *si, void *userdata);
/* A call ended: r == 0 with the reply (ok or refused: its "ok" says),
 * -ETIMEDOUT, or -ECONNRESET (the process went away); reply NULL then. */
typedef void (*ProcCallDone)(Proc *p, json_t *reply, int r, void *userdata);

/* Where a process comes from: its definition and where it lives. */
typedef struct ProcSource {
    const ProcessDef *def;
    char *path;         /* the executable, absolute */
    char *dir;          /* its application's directory: the working directory */
    StrVec modules_env; /* name=/abs/path.so, of RELD_MODULES */
} ProcSource;

void proc_source_clear(ProcSource *s);

/* Who a process runs as (docs/formats.md "Users, groups and
 * capabilities"), resolved from its definition before the fork. */
typedef struct ProcIdentity {
    bool change_ids; /* setgroups, setresgid, setresuid in the child */
    uid_t uid;
    gid_t gid;
    gid_t *groups; /* the supplementary groups: the user's (getgrouplist) and those named */
    size_t n_groups;
    bool bound_caps; /* PR_CAPBSET_DROP every capability up to cap_last not in keep_caps */
    uint64_t keep_caps;
    int cap_last;
} ProcIdentity;

/* Resolves def's user, group, supplementary groups and capabilities (the
 * names through NSS: call it outside the child). 0, or -errno with one
 * line "app.yaml:L:C: ..." in diag: -ESRCH for a user or group that does
 * not exist, -EPERM when reld (not root) cannot switch to them or bound
 * capabilities. A process without user: runs as reld's own user; when
 * that is root, a warning in diag says so unless `user: root` asked. */
int proc_identity(const ProcessDef *def, ProcIdentity *ret, Diag *diag);
void proc_identity_clear(ProcIdentity *id);
/* Becomes id, in a child after fork or clone and before execve
 * (async-signal-safe only, ids changed by raw system calls: reld has
 * threads, and proc_spawn()'s child shares its memory): proc_spawn() for
 * the process, health.c for its exec checks, so that a check runs as the
 * process it checks. On a failure
 * it writes "reld: cannot STEP: errno N" to fd 2 and _exits 122. */
void proc_identity_apply(const ProcIdentity *id);

/* A process, not yet started: opens its listening sockets (one line in
 * diag when one cannot be opened, and NULL). label is "app/process".
 * Takes src's contents. */
Proc *proc_new(sd_event *ev, const char *label, ProcSource *src, ProcExited exited, void *userdata, Diag *diag);
/* SIGKILLs a process still running (and reaps it), then frees. */
Proc *proc_free(Proc *p);

/* The new definition, for the next start (a switch-over). Takes src. */
void proc_set_source(Proc *p, ProcSource *src);

int proc_spawn(Proc *p);
/* Starts stopping it: 1 when it is not running (nothing to wait for), 0
 * when its exit will come through ProcExited. */
int proc_stop(Proc *p);

/* Readiness and overlap (docs/formats.md "Replacing a process").
 *
 * A run of a process whose definition says `ready: notify` gets a
 * NOTIFY_SOCKET of its own (notify.h) and is ready once it sends READY=1;
 * `ready: started` is ready once it runs; `ready: health` when its owner
 * says so (proc_set_ready(): it runs the checks).
 *
 * Overlap: proc_spawn_successor() starts the process again on its current
 * source (set the new one first, proc_set_source()) with the very same
 * listening sockets, while the run before goes on serving; its owner
 * waits for the new run to be ready (proc_wait_ready()), then either
 * proc_successor_commit() (the run before is told to stop with its
 * definition's stop_signal, SIGKILLed after its shutdown_ms, and
 * ProcRetired is called at its exit) or proc_successor_abort() (the new
 * run is stopped as its definition says, in the background: requests it
 * took end well; the run before is the current one again).
 * The new run's exit before the commit is not told to ProcExited: the run
 * before is the current one again and a wait gets -ECHILD. The run
 * before's exit during the overlap is told to ProcExited only if it is the
 * current one again (abort, or the new run's exit), and then from the loop,
 * not from within the call that ended the overlap: its owner gives the
 * process its old definition back first (proc_set_source()), so that it
 * restarts on that one; nothing is told when it was started or stopped
 * meanwhile. proc_pid() is the new run's from the spawn. */

/* A wait ended: 0 ready, -ETIMEDOUT (its definition's ready_timeout_ms
 * passed), -ECHILD (it exited first). */
typedef void (*ProcReady)(Proc *p, int r, void *userdata);
/* The run before exited (si: how). */
typedef void (*ProcRetired)(Proc *p, const siginfo_t *si, void *userdata);
/* Calls done from the loop once the current run is ready (at once when it
 * is already). -ESRCH when it does not run. One wait at a time. */
int proc_wait_ready(Proc *p, ProcReady done, void *userdata);
/* The owner's verdict for `ready: health`: ends a wait with 0. */
void proc_set_ready(Proc *p);
/* prev_def: the definition the run that goes on serving was started with
 * (how it stops; it must outlive the overlap). -EBUSY when it does not
 * run, is stopping or overlaps already; the spawn's error (and the run
 * before is the current one again). */
int proc_spawn_successor(Proc *p, const ProcessDef *prev_def);
/* 0 when the run before will be told to ProcRetired, 1 when it had ended
 * (nothing to wait for), -ESRCH when no new run waits to be committed. */
int proc_successor_commit(Proc *p, ProcRetired retired, void *userdata);
void proc_successor_abort(Proc *p);
/* Nobody is told any more (the owner goes); what runs goes on. */
void proc_successor_forget(Proc *p);
bool proc_overlapping(const Proc *p);
/* During an overlap, how the run before ended if it did (NULL while it
 * runs); borrowed until the overlap ends. */
const siginfo_t *proc_previous_exit(const Proc *p);
/* Within a ProcReady told -ECHILD: how the new run ended; else NULL. */
const siginfo_t *proc_ready_exit(const Proc *p);
/* Its event loop (borrowed): for what watches a run beside it. */
sd_event *proc_event(const Proc *p);
/* The run before's pid during an overlap, else 0. */
pid_t proc_previous_pid(const Proc *p);

/* Calls go on lanes, at most one call out per lane: the control lane
 * (the executor's instructions) and the health lane (health checks), so
 * that a health check never makes an instruction wait or fail with -EBUSY.
 * The process answers in the order it was asked. */
typedef enum ProcLane { PROC_LANE_CONTROL, PROC_LANE_HEALTH, _PROC_LANE_MAX } ProcLane;

/* Sends req (taken) with a fresh id and calls done when it ends. -EBUSY
 * while another call is out on the lane, -ECONNRESET when the channel is
 * gone (done is not called then). proc_call is the control lane's. */
int proc_call_on(Proc *p, ProcLane lane, json_t *req, int timeout_ms, ProcCallDone done, void *userdata);
int proc_call(Proc *p, json_t *req, int timeout_ms, ProcCallDone done, void *userdata);
/* Forgets the call out on the lane, if any: done is not called; its reply,
 * when it comes, only tells what the process runs. */
void proc_cancel_call_on(Proc *p, ProcLane lane);
void proc_cancel_call(Proc *p);
/* Sends req (taken) and expects nothing back. */
int proc_send(Proc *p, json_t *req);

/* Re-exec (reexec.h): a started or exited process as JSON {pid, ctl_fd,
 * listen_fds, pipes, modules, in, out, tail}; every descriptor it holds
 * goes into fds (a JSON array). Only for a process not stopping, not
 * overlapping and with no call out on the control lane (the caller checks); a call out on the
 * health lane is forgotten in the new reld (its answer is ignored). */
json_t *proc_save(const Proc *p, json_t *fds);
/* Does saved (proc_save()) describe a process this reld can take over
 * for def: its pid a child of ours (or 0), a descriptor per socket, a
 * control channel that is a socket? false with one line in diag. */
bool proc_saved_valid(const json_t *saved, const ProcessDef *def, const char *label, Diag *diag);
/* A Proc for what saved describes (checked with proc_saved_valid()),
 * taking its descriptors, as proc_new() would have made it; its exit comes
 * through exited. NULL (descriptors closed) on a failure of the loop. */
Proc *proc_adopt(sd_event *ev, const char *label, ProcSource *src, const json_t *saved, ProcExited exited,
                 void *userdata);
/* The numbering of calls, so that a re-exec does not reuse a number an
 * answer may still come for. */
long long proc_last_call_id(void);
void proc_set_last_call_id(long long id);

/* Its last lines of output (at most 3 of 200 bytes, " | " between them;
 * "" when none came through reld: with the journal they go there); at its
 * exit, every line it wrote before. Borrowed until the next call. */
const char *proc_last_output(Proc *p);
/* Its application's directory (its working directory). */
const char *proc_dir(const Proc *p);
pid_t proc_pid(const Proc *p);
const char *proc_label(const Proc *p);
const ProcessDef *proc_def(const Proc *p);
bool proc_stopping(const Proc *p);
/* The pid of a run of p other than the current one that is still there
 * (a new run not kept, stopping; the run before, during an overlap or
 * retiring; the run before's end not told yet: its pid, or -1), or 0: a
 * re-exec cannot hand such a run over. */
pid_t proc_other_run(const Proc *p);
/* Did the process say hello on its control channel (it links the runtime)? */
bool proc_speaks_protocol(const Proc *p);
/* What it runs, from its hello and replies: [{name, version, ...}], borrowed; NULL before hello. */
json_t *proc_modules(const Proc *p);
/* The version of module it runs now, or NULL (borrowed). */
const char *proc_module_version(const Proc *p, const char *module);
