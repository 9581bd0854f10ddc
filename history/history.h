#pragma once
/* history: reld's SQLite database (ROOT/reld.db): releases and their
 * states, every upgrade or downgrade attempt, each executed instruction,
 * and events (state changes, unpacks, removals, process starts and exits).
 *
 * One file, WAL mode, synchronous=NORMAL: a crash of reld at any moment
 * leaves the last committed transaction (a power loss may lose the last
 * few commits, never consistency). Every function that changes more than one
 * row does so in one transaction. The schema is versioned with
 * PRAGMA user_version and migrated forward on open (docs/history.md).
 *
 * Errors: 0 or a negative errno (-EIO for an SQLite failure, -ENOENT for a
 * missing row, -EINVAL for a bad argument); with a message in *err where
 * the function takes one (caller frees). Not thread-safe: the daemon's
 * main thread owns the handle. */
#include <jansson.h>
#include <stdint.h>

typedef struct History History;

/* Release states, as OTP's release_handler. */
#define RELEASE_UNPACKED  "unpacked"
#define RELEASE_CURRENT   "current"
#define RELEASE_PERMANENT "permanent"
#define RELEASE_OLD       "old"

int history_open(const char *path, History **ret, char **err);
History *history_close(History *h);
int history_schema_version(History *h);

/* Adds a release in state unpacked, with an "unpacked" event. -EEXIST if
 * the version is known. */
int history_release_add(History *h, const char *vsn, const char *name, const char *who);
/* Sets a release's state, recording the change as an event. */
int history_release_set_state(History *h, const char *vsn, const char *state, const char *who);
/* A release's state in *ret (caller frees); -ENOENT when unknown. */
int history_release_state(History *h, const char *vsn, char **ret);
/* The version in state `state` (current/permanent), or -ENOENT. */
int history_release_in_state(History *h, const char *state, char **ret_vsn);
/* Removes a release, with a "removed" event. */
int history_release_remove(History *h, const char *vsn, const char *who);
/* [{vsn, name, state, unpacked_at, changed_at}], oldest first. */
int history_releases(History *h, json_t **ret);

/* An event that belongs to no attempt: kind is a word ("unpacked",
 * "state", "removed", "process_start", "process_exit", "restart_limit",
 * "boot", ...); release and detail may be NULL. */
int history_event(History *h, const char *kind, const char *who, const char *release, json_t *detail);

/* Attempts: begin, one row per instruction, end. */
int history_attempt_begin(History *h, const char *who, const char *kind, const char *from, const char *to,
                          int64_t *ret_id);
/* One instruction's row. outcome: "running" (written before it runs),
 * "ok", "failed: REASON", "not run" (after a failure earlier in its
 * group), "interrupted" (set by history_attempts_interrupted). start_us:
 * when it started, after the attempt's first. */
typedef struct HistoryInstruction {
    int idx;
    json_t *instr;
    const char *outcome;
    int64_t start_us, duration_us;
} HistoryInstruction;
/* Writes or rewrites (same attempt and idx) the rows, in one transaction. */
int history_attempt_instructions(History *h, int64_t attempt, const HistoryInstruction *v, size_t n);
int history_attempt_end(History *h, int64_t attempt, const char *result, const char *detail);

/* Closes every attempt left without a result (reld died during it) as
 * "interrupted", and its instructions left "running"; returns how many
 * attempts, or -errno. */
int history_attempts_interrupted(History *h);

/* The newest events and attempts (with their instructions), newest last:
 * {"events": [...], "attempts": [{..., "instructions": [...]}]}. */
int history_list(History *h, int limit, json_t **ret);
