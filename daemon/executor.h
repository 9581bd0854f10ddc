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
 * Phases: the script; then, after a success, the post-purges (OTP's
 * post_purge) and the switch-over (every process takes its new definition;
 * processes without the runtime in a changed application restart on the
 * new version; applications the new release lacks stop); after a failure
 * before the point of no return, the staged code is dropped and nothing
 * else happens; after it, the inverse of what was done runs (per process,
 * suspended, each change undone in reverse, resumed), and when that cannot
 * work, the changed applications restart on the old release.
 *
 * Records: each step's instructions are written "running" before it runs
 * and rewritten with their outcome ("ok", "failed: why", "not run") after
 * it. A record that cannot be written stops the script before its next
 * step, as a failure with that reason: nothing runs that the history does
 * not show.
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
} ExecutorParams;

int executor_new(const ExecutorParams *params, Executor **ret);
int executor_step(Executor *e, Diag *diag);
/* Instructions done, of *ret_n. */
size_t executor_position(const Executor *e, size_t *ret_n);
/* Abandons a run (reld stops): calls out are forgotten, records written. */
Executor *executor_free(Executor *e);
