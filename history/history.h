#pragma once
/* history: reld's SQLite database (ROOT/reld.db): releases and their
 * states, every upgrade or downgrade attempt, each executed instruction,
 * and events (state changes, unpacks, removals, process starts and exits).
 *
 * One file, WAL mode, synchronous=NORMAL: a crash of reld at any moment
 * leaves the last committed transaction (a power loss may lose the last
 * few commits, never consistency). Every function that changes more than one
 * row does so in one transaction. The schema is versioned with
 * PRAGMA user_version and migrated forward on open (docs/daemon.md).
 *
 * Errors: 0 (or a count where said) or a negative errno, the same for
 * every function:
 *   -EINVAL  a bad argument (NULL, an unknown state), or a constraint of the
 *            schema other than uniqueness (CHECK, NOT NULL, foreign key,
 *            a trigger's RAISE)
 *   -ENOENT  a missing row (release, attempt)
 *   -EEXIST  a uniqueness constraint: a version already known, a second
 *            current or permanent release (unique index one_current)
 *   -EBUSY   SQLITE_BUSY/LOCKED: another connection held the lock for
 *            longer than the busy timeout (250 ms)
 *   -ENOSPC  SQLITE_FULL: the disk is full
 *   -EROFS   SQLITE_READONLY; history_open refuses a database SQLite can
 *            only open read-only
 *   -EIO     SQLITE_IOERR_*, and any other SQLite failure (SQLITE_ERROR, ...)
 *   -EUCLEAN SQLITE_CORRUPT, SQLITE_NOTADB: the file is damaged or is not a
 *            database ("structure needs cleaning"); from history_open*
 *            also a failed quick_check, a missing table, an empty file
 *   -ENOMEM  out of memory (SQLite's or ours)
 *   -EACCES, -ENOENT, ... from history_open: the system's error when the
 *            file cannot be opened (SQLITE_CANTOPEN); -EPROTO: a schema newer
 *            than this reld; -ENOTSUP: a PRAGMA did not take (WAL impossible)
 *   -EILSEQ  history_releases, history_list: stored text that is not UTF-8
 * A function that changes rows does so in one transaction: on any error,
 * a failed COMMIT included, it is rolled back and nothing of it remains.
 * history_last_error says why the last failing call failed. Not
 * thread-safe: the daemon's main thread owns the handle. */
#include <jansson.h>
#include <stdint.h>

typedef struct History History;

/* Release states, as OTP's release_handler. */
#define RELEASE_UNPACKED  "unpacked"
#define RELEASE_CURRENT   "current"
#define RELEASE_PERMANENT "permanent"
#define RELEASE_OLD       "old"

/* Opens (creating it if needed) and migrates the database; *err (caller
 * frees) says why not, "PATH: reason". Before anything writes to the file
 * it is checked with PRAGMA quick_check (every page of every b-tree: 5.5
 * ms for 10,000 events, 63 ms from a cold disk, linear in the size): a
 * damaged file is -EUCLEAN with the first problem found, and is left as it
 * was. After migrating, a database missing one of its tables is -EUCLEAN
 * too. */
int history_open(const char *path, History **ret, char **err);
/* The same for a database that must exist already (reld's root holds
 * releases): a missing file is -ENOENT, an empty one (0 bytes, or an SQLite
 * database without reld's schema) -EUCLEAN; these are told before SQLite
 * opens the file, so nothing beside it (a -wal) is touched either. */
int history_open_existing(const char *path, History **ret, char **err);
History *history_close(History *h);
/* PRAGMA user_version, or -errno. */
int history_schema_version(History *h);
/* One line: why the last call on h that failed did (SQLite's message or
 * ours, e.g. "release 9 is not known"); "" if none has. Valid until the
 * next call on h. */
const char *history_last_error(History *h);

/* Adds a release in state unpacked, with an "unpacked" event. -EEXIST if
 * the version is known, -EINVAL without a version or name. */
int history_release_add(History *h, const char *vsn, const char *name, const char *who);
/* The same, for a release verified with a signature (borrowed; NULL: as
 * history_release_add): a JSON object, {key_id, trusted_comment, blake2b}
 * by reld's convention, kept in the row and in a "signature" event, in the
 * same transaction. -EINVAL when it is not an object. */
int history_release_add_signed(History *h, const char *vsn, const char *name, const char *who, json_t *signature);
/* Sets a release's state, with a "state" event {from, to}, in one
 * transaction. -ENOENT for an unknown release, -EINVAL for a state not one
 * of the four, -EEXIST when another release is current (permanent) and
 * state is current (permanent). */
int history_release_set_state(History *h, const char *vsn, const char *state, const char *who);
/* Several changes of state, in order, in one transaction: all of them or
 * none (the old permanent release becomes old as the new one becomes
 * permanent). Errors as history_release_set_state. */
typedef struct HistoryStateChange {
    const char *vsn, *state;
} HistoryStateChange;
int history_release_set_states(History *h, const HistoryStateChange *v, size_t n, const char *who);
/* A release's state in *ret (caller frees); -ENOENT when unknown. */
int history_release_state(History *h, const char *vsn, char **ret);
/* The version in state `state` (current or permanent: -EINVAL for the
 * others, which several releases may share) in *ret_vsn (caller frees),
 * or -ENOENT. */
int history_release_in_state(History *h, const char *state, char **ret_vsn);
/* Removes a release, with a "removed" event; -ENOENT when unknown. */
int history_release_remove(History *h, const char *vsn, const char *who);
/* [{vsn, name, state, unpacked_at, changed_at, signature}], oldest first;
 * signature is the object it was verified with, or null. */
int history_releases(History *h, json_t **ret);

/* The releases a recovery found on disk (reld --recover), each with its
 * state, recorded in a database that knows none yet (-EEXIST otherwise: a
 * recovery fills a new database, never merges), and one event "recovered"
 * (who; detail borrowed, may be NULL), all in one transaction. -EINVAL
 * for a release without version or name or with a state not one of the
 * four; -EEXIST for a version given twice, or a second current or
 * permanent release. */
typedef struct HistoryRelease {
    const char *vsn, *name, *state;
} HistoryRelease;
int history_recover(History *h, const HistoryRelease *v, size_t n, const char *who, json_t *detail);

/* An event that belongs to no attempt: kind is a word ("unpacked",
 * "state", "removed", "process_start", "process_exit", "restart_limit",
 * "boot", ...; -EINVAL when NULL); who, release and detail may be NULL. */
int history_event(History *h, const char *kind, const char *who, const char *release, json_t *detail);

/* Attempts: begin, one row per instruction, end. kind and to must not be
 * NULL (-EINVAL). */
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
/* Writes or rewrites (same attempt and idx) the rows, in one transaction:
 * all or none. -ENOENT for an unknown attempt, -EINVAL for a NULL instr or
 * outcome. This is the batch: the executor writes the rows of many steps
 * that call no process with one call (one commit), and its statements are
 * prepared once per handle, so that a row costs an insert, not a prepare
 * and a commit (docs/benchmarks.md, the executor's records). */
int history_attempt_instructions(History *h, int64_t attempt, const HistoryInstruction *v, size_t n);
/* How many write transactions h has committed since it was opened
 * (SQLite's commit hook: every function's transaction, each autocommit
 * write, the migrations; read transactions are not counted; a COMMIT that
 * fails at the disk after SQLite began it counts too). For tests and
 * benchmarks: what one call of history_attempt_instructions costs. */
int64_t history_commits(const History *h);
/* result must not be NULL (-EINVAL); -ENOENT for an unknown attempt. In
 * the same transaction, instructions of the attempt still "running" (their
 * outcome could not be written) become "not recorded: its outcome could
 * not be written". */
int history_attempt_end(History *h, int64_t attempt, const char *result, const char *detail);

/* Closes every attempt left without a result (reld died during it) as
 * "interrupted", and its instructions left "running", in one transaction;
 * returns how many attempts, or -errno. */
int history_attempts_interrupted(History *h);

/* The newest events and attempts (with their instructions), newest last:
 * {"events": [...], "attempts": [{..., "instructions": [...]}]}, read in
 * one transaction; -EINVAL when limit <= 0. */
int history_list(History *h, int limit, json_t **ret);

/* The pauses of earlier upgrades from -> to (kind "upgrade" or
 * "downgrade", result "ok"), for a dry run's expected pause: each
 * suspend..resume window, from the suspend's start to the end of its
 * resume (instructions with their start, schema 2), summed over those
 * attempts by the suspend's idx (the same relup numbers its instructions
 * the same): {"attempts": N (attempts with such rows), "windows": [{"idx":
 * k, "modules": [the suspend's], "n", "min_ms", "max_ms", "last_ms" (the
 * newest attempt's)}]}, in the order of idx of their first attempt.
 * Attempts of other kinds (a dry run's "dry_run") and failed ones count
 * not. {"attempts": 0, "windows": []} when there is none. -EINVAL for a
 * NULL argument. */
int history_pauses(History *h, const char *from, const char *to, json_t **ret);

/* The pauses of one attempt, as history_pauses() gives them ("attempts"
 * 1, or 0 and no windows when it did not go through or had no timings):
 * what an upgrade that just ended reports, without reading every earlier
 * attempt from -> to (their number grows with every upgrade). -EINVAL for
 * an id <= 0 or a NULL ret. */
int history_attempt_pauses(History *h, int64_t attempt_id, json_t **ret);
