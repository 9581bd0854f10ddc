#pragma once
/* upgrade: one change of the running release (an upgrade or a downgrade),
 * from planning to its outcome.
 *
 * Planning (reading the target release and the stored or computed relup:
 * 0.5-1.2 s for a release of 1,000 applications) runs on a worker thread
 * (jobs.h). Then the attempt begins in the history and the executor
 * (executor.h) takes a step per turn of the event loop, so that reld
 * serves other requests meanwhile. progress() is called for every
 * instruction done (a failed one too: where it stopped), after its step,
 * never inside a suspended group; finished() once, with the outcome, after
 * the attempt's end was recorded.
 *
 * Going up executes the newer release's relup `up` list; going down, the
 * newer release's `down` list (OTP keeps both in the newer release).
 *
 * Ownership: the Upgrade borrows the loop, jobs, history, supervisor and
 * the running release's definitions (from_def); it owns the target's
 * definitions until upgrade_take_target(). Do not free it while it plans
 * (upgrade_planning()): the planning thread uses it.
 *
 * Errors: 0 or a negative errno; the reasons of a failed upgrade are in
 * upgrade_diag(). */
#include <stdbool.h>
#include <systemd/sd-event.h>

#include "appdefs.h"
#include "history.h"
#include "jobs.h"
#include "supervisor.h"

typedef struct Upgrade Upgrade;

typedef struct UpgradeParams {
    sd_event *ev;
    Jobs *jobs;
    History *history;
    Supervisor *supervisor;
    const char *root;
    const char *from; /* the running release's version */
    const ReleaseDef *from_def;
    const char *to;
    bool up;
    const char *who;
    /* Rehearse first (executor.h): each process concerned converts a copy of
     * its live state with the new code before anything changes. */
    bool rehearse;
    int rehearse_timeout_ms; /* 0: the executor's default */
    /* A dry run changes nothing: it plans as the upgrade would (the same
     * relup), reports (upgrade_dry_run()) and, with rehearse, runs the
     * rehearsal alone (ExecutorParams.rehearse_only), recorded as an
     * attempt of kind "dry_run" (its instruction 0; history_pauses counts
     * it not). Without rehearse nothing is recorded. finished() then says
     * 0, or the rehearsal's failure (planned true, nothing changed). */
    bool dry_run;
    void (*progress)(void *userdata, size_t k, size_t n, const char *instruction);
    /* r: 0 done (every application runs `to`), -errno failed or refused
     * (planned == false: nothing ran, no attempt was recorded). Whether
     * the outcome could be recorded: upgrade_recorded(). */
    void (*finished)(void *userdata, Upgrade *u, int r, bool planned);
    void *userdata;
} UpgradeParams;

/* Starts planning. The strings are copied. */
int upgrade_start(const UpgradeParams *params, Upgrade **ret);
Upgrade *upgrade_free(Upgrade *u);

const char *upgrade_from(const Upgrade *u);
const char *upgrade_to(const Upgrade *u);
bool upgrade_up(const Upgrade *u);
bool upgrade_planning(const Upgrade *u);
/* Instructions done, of *ret_n (0 of 0 while planning). */
size_t upgrade_position(const Upgrade *u, size_t *ret_n);
const Diag *upgrade_diag(const Upgrade *u);
double upgrade_ms(const Upgrade *u); /* since the attempt began */
/* While planning: when the plan is done, nothing runs; finished() says
 * -ECANCELED (not planned). */
void upgrade_cancel(Upgrade *u);
/* Is the attempt's outcome in the history? (When not, upgrade_diag() says why.) */
bool upgrade_recorded(const Upgrade *u);
/* Did it change anything in a process (pass the script's point of no
 * return)? false when it was refused while planning or rehearsing, or
 * failed before it: release `from` runs untouched. */
bool upgrade_changed_anything(const Upgrade *u);
/* A dry run's report, once planned (NULL before, and for a real run);
 * borrowed, valid until upgrade_free():
 *   {"dry_run": true, "from", "to", "direction": "upgrade"|"downgrade",
 *    "instructions": [{"k": 1.., "instruction": "suspend kv", "processes":
 *        [{"process": "app/proc", "pid", "modules"?, "does"?: "suspended" |
 *          "stops" | "starts" | "starts on the new code",
 *          "expected_pause_ms"?: {"last", "max", "of"} or null (suspend),
 *          "module"?, "version"?, "old_version"?, "purges"?, "kills"?, "why"?,
 *          "refused"? (load, remove, purge: from what the process last
 *          reported, proc_modules())}]}],
 *    "restarts": [{"process", "pid", "from", "to"}] (no runtime, changed
 *        application: restarted at the switch-over),
 *    "earlier_upgrades": N (history_pauses' attempts),
 *    "expected_pause_ms": {"app/proc": {"last", "max", "of"}} (summed over its
 *        suspended groups; {} without an earlier upgrade),
 *    "rehearsal": executor_rehearsal() or null (not asked)} */
json_t *upgrade_dry_run(const Upgrade *u);
/* The target's definitions, once it succeeded: the caller owns them. */
ReleaseDef *upgrade_take_target(Upgrade *u);
