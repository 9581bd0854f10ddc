#pragma once
/* manager: a release root and the releases in it: the root's lock (one
 * reld per root), the history, boot and recovery after a crash, the
 * release state machine (SPEC.md "Release states": unpacked -> current ->
 * permanent -> old), and the operations relctl asks for. It knows nothing
 * of sockets: commands.c turns requests into these calls and their
 * outcomes into replies.
 *
 * Operations that take time (unpack, install/upgrade/downgrade, remove)
 * report through a ManagerCaller: progress lines while they run, then
 * done() exactly once, possibly before the call returns. A caller that
 * goes away says so with manager_forget_caller(): the operation goes on
 * and is recorded, and tells nobody.
 *
 * State changes are recorded before they are reported: an operation whose
 * record fails reports the failure, never success.
 *
 * Ownership: the Manager owns the history, the supervisor, the jobs and
 * the definitions of the running release; it borrows the event loop.
 *
 * Errors: 0 or a negative errno; reasons in the Diag given to done(), or
 * in the log for manager_new(). */
#include <jansson.h>
#include <systemd/sd-event.h>

#include "config.h"
#include "util.h"

typedef struct Manager Manager;

typedef struct ManagerCaller {
    /* One progress line: {"progress": k, "of": n, "instruction": "..."}
     * (borrowed). May be NULL. */
    void (*progress)(void *userdata, json_t *line);
    /* The outcome: r == 0 with the reply's fields (borrowed), or r < 0 with
     * the reasons in diag (errors first, then warnings). */
    void (*done)(void *userdata, int r, json_t *reply, const Diag *diag);
    void *userdata;
} ManagerCaller;

/* Opens root (cfg->root): takes its lock, opens and migrates the history,
 * reconciles after a crash, and boots the permanent release (a boot that
 * fails is logged, and reld serves on: the operator must see why).
 * The database is created only when the root is new (ROOT/releases holds
 * nothing); a missing database where releases are (-ENOENT), or a damaged
 * one (-EUCLEAN: not a database, 0 bytes, quick_check failed, unreadable
 * releases) is refused with one line that names the file and says to run
 * reld --recover, and nothing is changed. */
int manager_new(sd_event *ev, const DaemonConfig *cfg, Manager **ret);
/* reld --recover: with the root's lock, checks the database as
 * manager_new would. Sound: says so and changes nothing. Missing or
 * damaged: moves it (and its -wal, -shm) to ROOT/reld.db.damaged-<UTC
 * time>, and builds a new one from ROOT/releases: each release that loads
 * is recorded as unpacked, or as permanent when the marker ROOT/permanent
 * (written at each make-permanent) names it, with one "recovered" event;
 * one that does not load is logged and left out. 0, or -errno (logged);
 * any other failure of the database (-EROFS, -EACCES, -EPROTO, ...) is
 * not a recovery's to fix and changes nothing. */
int manager_recover(const DaemonConfig *cfg);
/* NULL; or m itself, unfreed, while a worker thread still uses it (reld
 * then exits without freeing: staging directories go at the next start). */
Manager *manager_free(Manager *m);
/* Stops every process (asynchronously: SIGTERM, shutdown_ms, SIGKILL), then
 * calls done(userdata). An upgrade under way is abandoned: its attempt
 * shows as interrupted at the next start. */
void manager_shutdown(Manager *m, void (*done)(void *userdata), void *userdata);
/* The unpack limits (bytes, files, depth) and the health gate's defaults
 * of cfg, as a reload of the configuration changes them; for the
 * operations that start from now on. */
void manager_set_unpack_limits(Manager *m, const DaemonConfig *cfg);

/* Unpacks the tarball read from fd (taken) as release: reply {release, name}. */
void manager_unpack(Manager *m, int fd, const char *who, const ManagerCaller *c);
/* How an unpack came: the text of its .minisig (borrowed; NULL: none);
 * allow_downgrade past the floor; stream: fd is a stream (relctl install
 * -, relctl -H) that may begin with its signature's four lines, the
 * tarball after them (docs/signing.md), and is spooled in any case. */
typedef struct ManagerUnpack {
    const char *signature;
    bool allow_downgrade, stream;
} ManagerUnpack;
/* The same with u (borrowed; NULL: as manager_unpack). Once the
 * configured trusted_keys hold a key, the tarball is spooled under
 * ROOT/tmp and hashed as it is read, and nothing is unpacked unless the
 * signature is good, by a trusted key not revoked, and its trusted comment
 * names the release the tarball holds; the reply then has "signature":
 * {key_id, trusted_comment, blake2b}, and the history keeps the same with
 * the release (history_release_add_signed). Refusals: -EPERM (not signed, or for another release),
 * -ENOKEY, -EKEYREVOKED, -EBADMSG, -EINVAL, -ENOTSUP (sign.h), one line.
 * The downgrade floor: a release older (strverscmp) than the configured
 * min_version, or than the permanent release with
 * refuse_older_than_permanent, is refused (-EPERM) unless allow_downgrade. */
void manager_unpack_with(Manager *m, int fd, const ManagerUnpack *u, const char *who, const ManagerCaller *c);
/* Reads the key directories: the number of trusted keys and one line for
 * the log and status ("required (2 trusted keys in DIR, 0 revoked)" or
 * "not required (no trusted key in DIR)"; caller frees). A file that does
 * not parse: -EINVAL, the reason in diag (unpacks are refused then). */
int manager_trust(const char *trusted_dir, const char *revoked_dir, size_t *ret_keys, char **ret_line, Diag *diag);
/* An install, upgrade or downgrade as asked. */
typedef struct ManagerInstall {
    const char *vsn;          /* the release to run */
    const char *direction;    /* NULL decides by version; "upgrade"/"downgrade" check it */
    bool no_wait;             /* done once it runs, without the health gate */
    bool commit;              /* once healthy, make it permanent */
    long min_healthy_ms;      /* the gate's window; < 0: the config's */
    long health_timeout_ms;   /* how long the gate waits; <= 0: the config's */
    bool rehearse;            /* an upgrade or downgrade rehearses first (executor.h) */
    long rehearse_timeout_ms; /* per process; <= 0: the executor's default */
    bool dry_run;             /* change nothing: report the plan (below) */
} ManagerInstall;

/* Starts release in->vsn when none runs, or changes the running release
 * to it; then, unless no_wait, waits for it to be healthy (health.h: every
 * process running and passing its checks for min_healthy_ms, within
 * health_timeout_ms). Not healthy: the new release goes back, by itself
 * and once — a first install is stopped (nothing runs, as before), an
 * upgrade or downgrade is reversed to the release that ran before — and
 * that release must be healthy again. Every reply (success or not) has
 * "outcome": committed | current | unchanged (it already ran) on success;
 * refused (nothing changed) | rolled_back (the release before runs,
 * healthy) | needs_operator on failure, and the reasons name the process,
 * its last check or exit and its last output. Success reply: {installed,
 * outcome, health?: {healthy, waited_ms}[, from, direction, instructions,
 * ms]}.
 *
 * dry_run: changes nothing (no state, no process touched, no instruction
 * run, no outcome kept for status) and reports. A change of release: the
 * plan as upgrade_dry_run() (upgrade.h) reports it, after the rehearsal
 * when rehearse (recorded as an attempt of kind "dry_run"); outcome
 * "dry_run", or "refused" (r < 0) when the rehearsal failed, the reasons
 * in diag. A first install: {dry_run, to, starts: [{application, vsn,
 * processes: [name, ...]}] in start order}, outcome "dry_run". The running
 * release: {dry_run, to}, outcome "unchanged". */
void manager_install(Manager *m, const ManagerInstall *in, const char *who, const ManagerCaller *c);
/* reply {removed}. */
void manager_remove(Manager *m, const char *vsn, const char *who, const ManagerCaller *c);
/* The relup from -> to, stored or computed (on a worker thread: it can
 * take a second for large releases): reply {relup, stored, warnings}. */
void manager_relup(Manager *m, const char *from, const char *to, const char *who, const ManagerCaller *c);
/* vsn NULL: the current release. reply {permanent}. */
void manager_make_permanent(Manager *m, const char *vsn, const char *who, const ManagerCaller *c);
void manager_forget_caller(Manager *m, void *userdata);

/* Re-exec (reexec.h, docs/daemon.md "Re-executing reld").
 * manager_new_from(): manager_new() in a re-executed reld, with the
 * manager's part of the state (saved, borrowed): the root's lock it
 * names, no reconciliation, and the running release's processes taken
 * over (supervisor_restore()) instead of a boot. When they cannot be, one
 * line is logged, every child is killed, the descriptors saved for them
 * are closed, and the start goes on as after a crash (the permanent
 * release boots). */
int manager_new_from(sd_event *ev, const DaemonConfig *cfg, const json_t *saved, Manager **ret);
/* The manager's state {lock_fd, running, last_outcome, supervisor}, the
 * processes' descriptors added to fds; NULL with one line in diag while
 * anything is under way (an unpack, install, upgrade, health gate,
 * removal, relup, a stop): a re-exec then is refused. */
json_t *manager_save(Manager *m, json_t *fds, Diag *diag);
/* Who re-executes reld: called with the caller's userdata and the state
 * ({version, fds, manager}, borrowed; it adds its own parts); returns only
 * when the re-exec failed (-errno, one line in diag). */
typedef int (*ManagerReexec)(void *userdata, void *caller, json_t *state, Diag *diag);
void manager_set_reexec(Manager *m, ManagerReexec reexec, void *userdata);
/* relctl daemon-reexec: refused (-EBUSY, done() with the reason) while
 * anything is under way; else the hook runs, and done() comes only when
 * it failed (the new reld answers the caller). */
void manager_reexec(Manager *m, const char *who, const ManagerCaller *c);

/* Replies of the read-only commands (new references), or NULL with the
 * reason in diag. */
json_t *manager_status(Manager *m, Diag *diag);
json_t *manager_releases(Manager *m, Diag *diag);
json_t *manager_history(Manager *m, int limit, Diag *diag);
