#pragma once
/* executor: runs one relup script (relup.h) against the supervised
 * processes, instruction by instruction, without ever blocking the event
 * loop, and records each instruction in the history.
 *
 * An instruction sends its requests (docs/runtime.md) to every process
 * concerned at once, or starts stops and starts through the supervisor,
 * and returns to the event loop; replies, timeouts and exits end them, and
 * when the last has ended the executor calls wake(): call executor_step()
 * again then. A suspend..resume group runs as one step: nothing else reld
 * does (a disk write least) lengthens the pause.
 *
 * Phases: with params.rehearse, the rehearsal first (below); the script; then, after a success, the post-purges (OTP's
 * post_purge) and the switch-over (every process takes its new definition;
 * processes without the runtime in a changed application restart on the
 * new version; applications the new release lacks stop); after a failure
 * before the point of no return, the staged code is dropped and nothing
 * else happens; after it, the inverse of what was done runs (per process,
 * suspended, each change undone in reverse, resumed), and when that cannot
 * work, the changed applications restart on the old release.
 *
 * Records: a step that may call a process (send it a request, stop or
 * start it) and the point of no return are written "running" before they
 * run (after the records waiting before them, in their own transaction)
 * and rewritten with their outcome ("ok", "failed: why", "not run") after
 * them: a crash during one leaves the history saying which call was under
 * way. A step that calls no process (a module no process runs, bookkeeping
 * of applications without processes) changes nothing outside reld: it is
 * recorded once, with its outcome, and its records wait in memory for the
 * next step that calls a process, the script's end or failure, or 1,024 of
 * them, then go in one transaction; a crash loses those since the last
 * commit, which changed nothing a restart must know. Such steps also run
 * one after another within one executor_step() call, for up to 1 ms, the
 * event loop turning before each step that calls a process. A record that
 * cannot be written stops the script before its next step, as a failure
 * with that reason: nothing runs that the history does not show.
 *
 * Rehearsal (issue 10, docs/runtime.md "rehearse"): before the script's
 * first instruction, before anything is suspended or loaded, every running
 * process that speaks the protocol and runs a module the script loads (by
 * its current or its new definition) is sent one `rehearse` naming those
 * modules (path, code_change or not, its mode and extra): all processes at
 * once, each answering within rehearse_timeout_ms (the process kills its
 * copy then; reld waits 2 s more for the answer). If any fails, the run
 * ends with no instruction run: executor_step() returns -EPROTO (a
 * process's copy failed, crashed or timed out) or -ETIMEDOUT (a process
 * did not answer), diag has one error per process naming it (label[pid]),
 * the module, the step and the reason, and the warning "rehearsal failed:
 * no instruction ran, release FROM runs untouched". A process whose runtime
 * answers unknown_command (older than rehearse) is not rehearsed: a warning,
 * not a failure. The rehearsal is recorded as the attempt's instruction 0
 * ({"op": "rehearse", "processes": [...]}, outcome "ok" or "failed: why");
 * after a failure the script's instructions are recorded "not run".
 *
 * Ownership: the executor borrows the supervisor, history, both releases
 * and the script (they must outlive it); it owns its requests and records.
 *
 * Errors: executor_step() returns 1 while instructions remain (call it
 * again, from the loop), EXECUTOR_WAITING while processes are to answer
 * (wake comes), 0 when done (every application runs its `to` version), or
 * -errno on failure after the recovery; what happened is in diag (errors,
 * and a warning naming the recovery). */
#include <stdint.h>

#include "history.h"
#include "relup.h"
#include "supervisor.h"

#define EXECUTOR_WAITING 2

typedef struct Executor Executor;

/* Fault injection for the end-to-end tests (docs/daemon.md), honoured only
 * in a build with -Dtest_hooks=true: before instruction k (1-based), reld
 * kills itself (crash_before), sleeps ms on the loop's thread (pause_before,
 * pause_ms), or the instruction fails (fail_at). 0: never. */
typedef struct ExecutorFaults {
    long crash_before, pause_before, pause_ms, fail_at;
} ExecutorFaults;

typedef struct ExecutorParams {
    Supervisor *supervisor;
    History *history;
    const char *root;
    const ReleaseDef *from, *to;
    const RelupScript *script;
    int64_t attempt;
    void (*wake)(void *userdata);
    void *userdata;
    ExecutorFaults faults;
    /* The rehearsal (above). rehearse_only (a dry run): the run ends after
     * it, returning 0 or its failure, and nothing of the script runs.
     * rehearse_timeout_ms: per process; 0 means 10000. */
    bool rehearse, rehearse_only;
    int rehearse_timeout_ms;
} ExecutorParams;

int executor_new(const ExecutorParams *params, Executor **ret);
int executor_step(Executor *e, Diag *diag);
/* Instructions done, of *ret_n. */
size_t executor_position(const Executor *e, size_t *ret_n);
/* Did the script pass its point of no return (something changed in a
 * process)? Before it, a failure leaves everything as it was. */
bool executor_past_point_of_no_return(const Executor *e);
/* The rehearsal's results; NULL before it or without one. Borrowed, valid
 * until executor_free():
 *   {"ok": true|false|null (under way),
 *    "processes": [{"process": "app/proc", "pid": N, "modules": ["m", ...],
 *                   "outcome": "running" | "ok" | "skipped: why" | "failed: why",
 *                   "fork_us": N (when it answered), "rehearsed": [...] (on success,
 *                   the runtime's list: module, from, to, mode, change, verified)}]} */
json_t *executor_rehearsal(const Executor *e);
/* Abandons a run (reld stops): calls out are forgotten, records written. */
Executor *executor_free(Executor *e);
