/* A release root and its releases (manager.h). */
#include "manager.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "history.h"
#include "jobs.h"
#include "log.h"
#include "reexec.h"
#include "relup.h"
#include "sign.h"
#include "check/check.h"
#include "crashpoint.h"
#include "health.h"
#include "store.h"
#include "supervisor.h"
#include "upgrade.h"
#include "events.h"
#include "metrics.h"
#include "procstat.h"

typedef enum OpKind { OP_UNPACK, OP_BOOT, OP_REMOVE, OP_RELUP, OP_UPGRADE } OpKind;

/* What an install, upgrade or downgrade came to, as a script can act on
 * it (relctl's exit status, docs/relctl.1). */
typedef enum Outcome {
    OUTCOME_COMMITTED,      /* healthy, and made permanent (--commit) */
    OUTCOME_CURRENT,        /* healthy (or not waited for), current */
    OUTCOME_UNCHANGED,      /* it already ran: nothing to do */
    OUTCOME_REFUSED,        /* refused before anything changed */
    OUTCOME_ROLLED_BACK,    /* it failed or was not healthy; the release before runs, healthy */
    OUTCOME_NEEDS_OPERATOR, /* the way back failed too, or the release before is not healthy */
    OUTCOME_DRY_RUN,        /* a dry run reported, nothing changed (its rehearsal passed) */
    _OUTCOME_MAX,
} Outcome;

static const char *const outcome_names[_OUTCOME_MAX] = {
    [OUTCOME_COMMITTED] = "committed",     [OUTCOME_CURRENT] = "current",
    [OUTCOME_UNCHANGED] = "unchanged",     [OUTCOME_REFUSED] = "refused",
    [OUTCOME_ROLLED_BACK] = "rolled_back", [OUTCOME_NEEDS_OPERATOR] = "needs_operator",
    [OUTCOME_DRY_RUN] = "dry_run",
};

/* Where an install stands once its processes run (the health gate). */
typedef enum GatePhase {
    GATE_NONE,
    GATE_NEW,          /* the new release must become healthy */
    GATE_ROLLING_BACK, /* it did not: going back to the release before, once */
    GATE_OLD,          /* the release before must be healthy again */
} GatePhase;

/* An operation under way and who waits for it. The fields after `kind`
 * are filled on a worker thread (jobs.h) and read back on the main one. */
typedef struct Op {
    Manager *m;
    ManagerCaller caller; /* userdata NULL: nobody waits any more */
    OpKind kind;
    char *who, *root;
    char *vsn, *name, *from, *to;
    int fd;
    StoreLimits limits;
    /* OP_UNPACK: the .minisig text (NULL: none came), the key directories,
     * the release and version its trusted comment names, and what the
     * history records of a verified signature {key_id, trusted_comment,
     * blake2b}. */
    char *signature, *trusted_dir, *revoked_dir, *signed_name, *signed_vsn;
    json_t *signed_by;
    /* OP_UNPACK: the downgrade floor (NULL: none), unless allowed. */
    char *min_version, *permanent;
    bool allow_downgrade;
    bool stream; /* OP_UNPACK: the fd is a stream that may begin with its signature */
    int r;
    uint64_t bytes; /* OP_UNPACK: the tarball's size (metrics) */
    Diag diag;
    ReleaseDef *rel;
    json_t *result;
    StoreAside aside; /* OP_REMOVE: where its files went */
    /* install, upgrade, downgrade: the request, and the health gate */
    ManagerInstall in;
    char *before; /* the release that ran before (NULL: none) */
    GatePhase phase;
    HealthGate *gate;
    long long gate_ms;  /* when the gate began */
    char *unhealthy;    /* why the new release was not healthy */
    json_t *success;    /* the reply once healthy */
    bool was_permanent; /* a first install of the permanent release: its state stays */
    struct Op *next;
} Op;

struct Manager {
    sd_event *ev;
    DaemonConfig cfg;
    int lock_fd;
    History *hist;
    Supervisor *sup;
    Jobs *jobs;
    ReleaseDef *running; /* the definitions of the running release; the supervisor points into them */
    Upgrade *upgrade;    /* the one under way, or NULL */
    /* The target of an upgrade abandoned by manager_shutdown(): processes
     * may point into it until they have stopped. */
    ReleaseDef *stopping_target;
    Op *upgrade_op;
    Op *gate_op;          /* an install waiting for its health verdict, or NULL */
    json_t *last_outcome; /* of the last install, upgrade or downgrade: {outcome, release, reason?, at} */
    bool booting;         /* a first install is loading its release */
    Op *ops;
    Metrics *metrics;     /* counters, and the file when configured (metrics.h) */
    ProcStats *procstats; /* CPU and memory of the processes, sampled when asked (procstat.h) */
    int64_t attempt_id;   /* the history's attempt of the change under way (0: not known yet) */
    void (*shutdown_done)(void *userdata);
    void *shutdown_data;
    ManagerReexec reexec; /* manager_set_reexec() */
    void *reexec_data;
};

/* ---- what operators watch: events, metrics, STATUS= (events.h, metrics.h) ---- */

/* The release's name for events, when vsn runs (reading release.yaml for
 * an event is not worth it). */
static const char *release_name(Manager *m, const char *vsn)
{
    return m->running && vsn && strcmp(m->running->vsn, vsn) == 0 ? m->running->name : NULL;
}

/* The newest attempt of the history (borrowed from *ret_list, which the
 * caller frees), or NULL. */
static json_t *newest_attempt(Manager *m, json_t **ret_list)
{
    *ret_list = NULL;
    if (history_list(m->hist, 1, ret_list) < 0)
        return NULL;
    return json_array_get(json_object_get(*ret_list, "attempts"), 0);
}

static json_t *metrics_status_of(void *userdata)
{
    Diag d = {0};
    json_t *s = manager_status(userdata, &d); /* NULL: the counters alone are written */
    diag_clear(&d);
    return s;
}

/* Every event (events.h): the metrics say so soon. */
static void on_event(EventKind kind, void *userdata)
{
    Manager *m = userdata;
    metrics_changed(m->metrics);
}

static void watch_started(Manager *m, const char *what, const char *vsn, const char *from)
{
    events_emit(EVENT_CHANGE_STARTED, LOG_NOTICE, &(EventFields){.release = release_name(m, from), .version = vsn},
                "%s of release %s started%s%s", what, vsn, from ? " from " : "", from ? from : "");
    events_status("%s to release %s: planning", what, vsn);
}

static void watch_progress(Manager *m, size_t k, size_t n, const char *instruction)
{
    if (!m->attempt_id) { /* begun by now: the newest attempt is this one's */
        json_t *list;
        m->attempt_id = json_integer_value(json_object_get(newest_attempt(m, &list), "id"));
        json_decref(list);
    }
    const char *to = upgrade_to(m->upgrade);
    events_status("%s %s -> %s: instruction %zu of %zu (%s)", upgrade_up(m->upgrade) ? "upgrade" : "downgrade",
                  upgrade_from(m->upgrade), to, k, n, instruction);
    EventFields f = {.release = release_name(m, upgrade_from(m->upgrade)), .version = to, .attempt_id = m->attempt_id};
    events_emit(EVENT_CHANGE_STEP, LOG_DEBUG, &f, "release %s: instruction %zu of %zu done: %s", to, k, n, instruction);
}

/* A change that ran its relup and was recorded: the durations of its
 * instructions, and, when it succeeded, each process's pauses (the
 * suspend..resume windows of its attempt whose modules it runs). */
static void watch_relup_done(Manager *m, int r)
{
    json_t *list, *a = newest_attempt(m, &list), *row;
    size_t i, k;
    bool ours = a && (!m->attempt_id || json_integer_value(json_object_get(a, "id")) == m->attempt_id);
    json_array_foreach(ours ? json_object_get(a, "instructions") : NULL, i, row)
    {
        const char *outcome = json_string_value(json_object_get(row, "outcome"));
        if (outcome && strcmp(outcome, "ok") == 0)
            metrics_observe_instruction(m->metrics,
                                        json_string_value(json_object_get(json_object_get(row, "instr"), "op")),
                                        (double)json_integer_value(json_object_get(row, "duration_us")) / 1e6);
    }
    json_decref(list);
    json_t *pauses = NULL, *w, *p, *mod;
    if (r == 0 && ours && m->attempt_id && history_attempt_pauses(m->hist, m->attempt_id, &pauses) == 0) {
        metrics_pauses_begin(m->metrics);
        json_t *procs = supervisor_status(m->sup);
        json_array_foreach(json_object_get(pauses, "windows"), i, w)
        {
            size_t j, x;
            json_t *wm;
            json_array_foreach(procs, j, p)
            {
                bool hit = false;
                json_array_foreach(json_object_get(p, "modules"), k, mod)
                {
                    json_array_foreach(json_object_get(w, "modules"), x, wm) hit |=
                        json_equal(json_object_get(mod, "name"), wm);
                }
                if (!hit)
                    continue;
                char *label = xasprintf("%s/%s", json_string_value(json_object_get(p, "app")),
                                        json_string_value(json_object_get(p, "process")));
                metrics_observe_pause(m->metrics, label, json_number_value(json_object_get(w, "last_ms")) / 1e3);
                free(label);
            }
        }
        json_decref(procs);
    }
    json_decref(pauses);
}

static void watch_outcome(Manager *m, Op *op, Outcome o, const char *release, const char *reason)
{
    const char *kind = !op->before || (release && strcmp(release, op->before) == 0) ? "install"
                       : release && strverscmp(release, op->before) < 0             ? "downgrade"
                                                                                    : "upgrade";
    static const struct {
        EventKind kind;
        int priority;
    } ev[_OUTCOME_MAX] = {
        [OUTCOME_COMMITTED] = {EVENT_CHANGE_DONE, LOG_NOTICE},
        [OUTCOME_CURRENT] = {EVENT_CHANGE_DONE, LOG_NOTICE},
        [OUTCOME_UNCHANGED] = {EVENT_CHANGE_DONE, LOG_INFO},
        [OUTCOME_REFUSED] = {EVENT_CHANGE_REFUSED, LOG_WARNING},
        [OUTCOME_ROLLED_BACK] = {EVENT_ROLLED_BACK, LOG_WARNING},
        [OUTCOME_NEEDS_OPERATOR] = {EVENT_NEEDS_OPERATOR, LOG_ERR},
        [OUTCOME_DRY_RUN] = {EVENT_CHANGE_DONE, LOG_INFO},
    };
    metrics_count_attempt(m->metrics, kind, outcome_names[o]);
    events_emit(ev[o].kind, ev[o].priority,
                &(EventFields){.release = release_name(m, m->running ? m->running->vsn : NULL),
                               .version = release,
                               .attempt_id = m->attempt_id,
                               .outcome = outcome_names[o]},
                "%s of release %s: %s%s%s", kind, release ? release : "?", outcome_names[o], reason ? ": " : "",
                reason ? reason : "");
    events_status("running release %s; last %s of %s: %s", m->running ? m->running->vsn : "none", kind,
                  release ? release : "?", outcome_names[o]);
    m->attempt_id = 0;
}

static void watch_state(Manager *m, const char *vsn, const char *state)
{
    EventFields f = {.release = release_name(m, vsn), .version = vsn, .outcome = state};
    events_emit(EVENT_STATE, LOG_INFO, &f, "release %s is %s", vsn, state);
}

/* ---- operations and their callers ------------------------------------------- */

static Op *op_new(Manager *m, OpKind kind, const char *who, const ManagerCaller *c)
{
    Op *op = xcalloc(1, sizeof(*op));
    *op = (Op){.m = m, .caller = *c, .kind = kind, .who = xstrdup(who), .root = xstrdup(m->cfg.root), .fd = -1};
    op->next = m->ops;
    m->ops = op;
    return op;
}

static void op_free(Op *op)
{
    Manager *m = op->m;
    for (Op **p = &m->ops; *p; p = &(*p)->next)
        if (*p == op) {
            *p = op->next;
            break;
        }
    if (op->fd >= 0)
        close(op->fd);
    free(op->who);
    free(op->root);
    free(op->signature);
    free(op->trusted_dir);
    free(op->revoked_dir);
    free(op->signed_name);
    free(op->signed_vsn);
    json_decref(op->signed_by);
    free(op->min_version);
    free(op->permanent);
    free(op->vsn);
    free(op->name);
    free(op->from);
    free(op->to);
    store_aside_clear(&op->aside);
    health_gate_free(op->gate);
    free(op->before);
    free(op->unhealthy);
    json_decref(op->success);
    if (op->m->gate_op == op)
        op->m->gate_op = NULL;
    supervisor_forget(op->m->sup, op); /* a first install's stop, going back */
    diag_clear(&op->diag);
    release_def_free(op->rel);
    json_decref(op->result);
    free(op);
}

/* Tells the caller the outcome (taking reply), then forgets op. */
static void op_done(Op *op, int r, json_t *reply)
{
    if (op->caller.userdata)
        op->caller.done(op->caller.userdata, r, reply, &op->diag);
    json_decref(reply);
    op_free(op);
}

/* A job's completion that ends op with its failure (op->r, reasons in its
 * diag), after the job put files back. */
static void op_done_failed(void *userdata)
{
    Op *op = userdata;
    op_done(op, op->r, NULL);
}

/* An operation refused before it began: one reason. */
static void refuse(Manager *m, const ManagerCaller *c, int r, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void refuse(Manager *m, const ManagerCaller *c, int r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = xvasprintf(fmt, ap);
    va_end(ap);
    Diag d = {0};
    diag_error(&d, "%s", msg);
    c->done(c->userdata, r, NULL, &d);
    diag_clear(&d);
    free(msg);
}

void manager_forget_caller(Manager *m, void *userdata)
{
    for (Op *op = m->ops; op; op = op->next)
        if (op->caller.userdata == userdata)
            op->caller.userdata = NULL;
}

void manager_set_unpack_limits(Manager *m, const DaemonConfig *cfg)
{
    m->cfg.max_unpacked = cfg->max_unpacked;
    m->cfg.max_unpacked_files = cfg->max_unpacked_files;
    m->cfg.max_unpacked_depth = cfg->max_unpacked_depth;
    m->cfg.min_healthy_ms = cfg->min_healthy_ms;
    m->cfg.health_timeout_ms = cfg->health_timeout_ms;
    free(m->cfg.trusted_keys);
    free(m->cfg.revoked_keys);
    m->cfg.trusted_keys = xstrdup(cfg->trusted_keys);
    m->cfg.revoked_keys = xstrdup(cfg->revoked_keys);
    free(m->cfg.min_version);
    m->cfg.min_version = xstrdup(cfg->min_version);
    m->cfg.refuse_older_than_permanent = cfg->refuse_older_than_permanent;
}

static char *state_of(Manager *m, const char *which)
{
    char *v = NULL;
    int r = history_release_in_state(m->hist, which, &v);
    if (r < 0 && r != -ENOENT)
        log_error("cannot read the %s release: %s", which, history_last_error(m->hist));
    return v;
}

/* ---- unpack --------------------------------------------------------------------- */

/* What can be known of a staged release before anything of it runs
 * (check.h: module descriptors read from the ELF files, executables and
 * the libraries they need on this machine); a refusal leaves nothing in
 * place. A signed tarball's release must be the one its trusted comment
 * names: a good signature of one release cannot vouch for another. */
static int check_staged(const char *staging, const char *vsn, void *userdata, Diag *diag)
{
    Op *op = userdata;
    /* The downgrade floor: an old release signed long ago stays signed,
     * and must not come back by an unpack (relctl downgrade to a release
     * still unpacked is the way back, and stays allowed). The same
     * release again changes nothing (store_unpack finds it present, or
     * refuses other content under its version): not a downgrade. */
    _cleanup_free_ char *present = store_path_release_file(op->root, vsn);
    bool again = access(present, F_OK) == 0;
    if (!op->allow_downgrade && !again && op->min_version && strverscmp(vsn, op->min_version) < 0)
        return diag_error(diag, "release %s is older than min_version %s; --allow-downgrade unpacks it anyway", vsn,
                          op->min_version),
               -EPERM;
    if (!op->allow_downgrade && !again && op->permanent && strverscmp(vsn, op->permanent) < 0)
        return diag_error(diag,
                          "release %s is older than the permanent release %s (refuse_older_than_permanent); "
                          "--allow-downgrade unpacks it anyway",
                          vsn, op->permanent),
               -EPERM;
    if (op->signed_vsn) {
        ReleaseDef *rel = NULL;
        int r = store_load_release(staging, vsn, &rel, diag);
        if (r == 0 && (strcmp(rel->name, op->signed_name) != 0 || strcmp(vsn, op->signed_vsn) != 0)) {
            diag_error(diag, "the signature is for release %s %s, but the tarball holds %s %s", op->signed_name,
                       op->signed_vsn, rel->name, vsn);
            r = -EPERM;
        }
        release_def_free(rel);
        if (r < 0)
            return r;
    }
    return check_release_diag(staging, vsn, diag);
}

/* The trust on this machine, read at every unpack so that a key added to
 * or revoked in its directory counts from the next unpack, without a
 * restart. The line says what it is, for the log and relctl status. */
int manager_trust(const char *trusted_dir, const char *revoked_dir, size_t *ret_keys, char **ret_line, Diag *diag)
{
    SignKeyring k = {0};
    int r = sign_keyring_load(&k, trusted_dir, revoked_dir, diag);
    if (r == 0) {
        if (ret_keys)
            *ret_keys = k.n_keys;
        if (ret_line)
            *ret_line = k.n_keys ? xasprintf("required (%zu trusted key%s in %s, %zu revoked)", k.n_keys,
                                             k.n_keys == 1 ? "" : "s", trusted_dir, k.n_revoked)
                                 : xasprintf("not required (no trusted key in %s)", trusted_dir);
    }
    sign_keyring_clear(&k);
    return r;
}

/* read(2) again after a signal. */
static ssize_t read_retrying(int fd, void *buf, size_t n)
{
    ssize_t r;
    do
        r = read(fd, buf, n);
    while (r < 0 && errno == EINTR);
    return r;
}

/* A stream (relctl install -, or relctl -H) may begin with the text of
 * its signature: a .minisig's four lines, then the tarball's bytes
 * (docs/signing.md). Reads from op->fd into buf (cap bytes, more than
 * SIGN_TEXT_MAX) until it knows; a signature found becomes
 * op->signature. *ret_have: the tarball's first bytes read, at the start
 * of buf. One line and -errno when the stream holds a signature that does
 * not end, or a second one beside the request's. */
static int stream_signature(Op *op, char *buf, size_t cap, size_t *ret_have)
{
    static const char start[] = "untrusted comment:";
    const size_t start_len = sizeof(start) - 1;
    size_t have = 0;
    /* Enough to tell: a pipe or ssh may deliver a byte at a time. */
    while (have < start_len && memcmp(buf, start, have) == 0) {
        ssize_t n = read_retrying(op->fd, buf + have, cap - have);
        if (n < 0)
            return diag_error(&op->diag, "cannot read the tarball: %s", strerror(errno)), -errno;
        if (n == 0)
            break;
        have += (size_t)n;
    }
    if (have < start_len || memcmp(buf, start, start_len) != 0) {
        *ret_have = have;
        return 0;
    }
    size_t scanned = 0, end = 0;
    for (int lines = 0; lines < 4;) {
        char *nl = scanned < have ? memchr(buf + scanned, '\n', have - scanned) : NULL;
        if (nl) {
            scanned = (size_t)(nl - buf) + 1;
            if (++lines == 4)
                end = scanned;
        } else {
            scanned = have;
        }
        if (scanned > SIGN_TEXT_MAX || (!nl && have >= SIGN_TEXT_MAX))
            return diag_error(&op->diag,
                              "the stream begins with a signature that does not end within %d bytes "
                              "(a .minisig is four lines)",
                              SIGN_TEXT_MAX),
                   -EBADMSG;
        if (nl)
            continue;
        ssize_t n = read_retrying(op->fd, buf + have, SIGN_TEXT_MAX - have);
        if (n < 0)
            return diag_error(&op->diag, "cannot read the tarball: %s", strerror(errno)), -errno;
        if (n == 0)
            return diag_error(&op->diag, "the stream ends inside the signature it begins with (a .minisig is four "
                                         "lines, then the tarball)"),
                   -EBADMSG;
        have += (size_t)n;
    }
    if (op->signature)
        return diag_error(&op->diag, "two signatures: one at the start of the stream and one with the request"),
               -EINVAL;
    op->signature = xstrndup(buf, end);
    memmove(buf, buf + end, have - end);
    *ret_have = have - end;
    return 0;
}

/* The signature's key: refused when revoked or not trusted, before a byte
 * of the tarball is read. */
static int check_signature_key(Op *op, const SignKeyring *k, SignSignature *sig)
{
    char hex[SIGN_KEY_ID_HEX];
    if (!op->signature)
        return diag_error(&op->diag,
                          "the tarball is not signed; reld requires a signature by a trusted key (%s): relctl finds "
                          "TARBALL.minisig beside it, or give --signature FILE",
                          op->trusted_dir),
               -EPERM;
    int r = sign_signature_parse(op->signature, strlen(op->signature), "signature", sig, &op->diag);
    if (r < 0)
        return r;
    sign_key_id_hex(sig->id, hex);
    if (sign_keyring_is_revoked(k, sig->id))
        return diag_error(&op->diag, "signed by key %s, which is revoked", hex), -EKEYREVOKED;
    for (size_t i = 0; i < k->n_keys; i++)
        if (memcmp(k->keys[i].id, sig->id, sizeof sig->id) == 0)
            return 0;
    return diag_error(&op->diag, "signed by key %s, which is not trusted", hex), -ENOKEY;
}

/* Reads the tarball from op->fd into a file of reld's own under ROOT/tmp
 * (unnamed: O_TMPFILE), hashing it as it goes, and, when k holds a key,
 * verifies the signature against that hash. A stream (op->stream) may
 * begin with its signature (stream_signature). On success op->fd is the
 * spooled file at its start: what is unpacked is exactly what was
 * verified, whatever the sender does to its end of the descriptor
 * afterwards. */
static int spool_and_verify(Op *op, const SignKeyring *k)
{
    static const size_t chunk = 1 << 20;
    _cleanup_free_ char *buf = xmalloc(chunk);
    size_t have = 0;
    int r = op->stream ? stream_signature(op, buf, chunk, &have) : 0;
    SignSignature sig;
    if (r == 0 && k->n_keys > 0)
        r = check_signature_key(op, k, &sig);
    if (r < 0)
        return r;
    _cleanup_free_ char *tmp = store_path_tmp(op->root);
    if (mkdir(tmp, 0700) < 0 && errno != EEXIST)
        return diag_error(&op->diag, "cannot create %s: %s", tmp, strerror(errno)), -EIO;
    int sfd = open(tmp, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (sfd < 0) {
        r = -errno;
        return diag_error(&op->diag, "cannot spool the tarball in %s: %s", tmp, strerror(-r)), r;
    }
    /* Hashed only to verify: without keys a stream is spooled as it is. */
    bool verify = k->n_keys > 0;
    SignHasher h;
    sign_hasher_init(&h);
    uint64_t total = 0;
    /* The bytes stream_signature read past the signature first. */
    for (size_t n = have;;) {
        total += n;
        /* The spool is bounded by the unpacked limit, which a larger
         * tarball would exceed anyway (every entry counts its 512-byte
         * header toward it). */
        if (total > op->limits.bytes) {
            r = -EFBIG;
            diag_error(&op->diag, "the tarball is larger than max_unpacked_bytes (%llu)",
                       (unsigned long long)op->limits.bytes);
            break;
        }
        if (verify)
            sign_hasher_update(&h, buf, n);
        if ((r = write_all(sfd, buf, n)) < 0) {
            diag_error(&op->diag, "cannot spool the tarball in %s: %s", tmp, strerror(-r));
            break;
        }
        ssize_t got = read_retrying(op->fd, buf, chunk);
        if (got < 0) {
            r = -errno;
            diag_error(&op->diag, "cannot read the tarball: %s", strerror(-r));
            break;
        }
        if (got == 0)
            break;
        n = (size_t)got;
    }
    uint8_t hash[SIGN_HASH_SIZE];
    sign_hasher_final(&h, hash);
    size_t key = 0;
    if (r == 0 && verify)
        r = sign_verify(k, &sig, hash, &key, &op->diag);
    if (r == 0 && verify)
        r = sign_comment_parse(sig.trusted_comment, &op->signed_name, &op->signed_vsn, &op->diag);
    if (r == 0 && lseek(sfd, 0, SEEK_SET) < 0) {
        r = -errno;
        diag_error(&op->diag, "cannot read the spooled tarball: %s", strerror(-r));
    }
    if (r < 0) {
        close(sfd);
        return r;
    }
    if (verify) {
        char hex[SIGN_KEY_ID_HEX], hash_hex[2 * SIGN_HASH_SIZE + 1];
        sign_key_id_hex(sig.id, hex);
        for (size_t i = 0; i < SIGN_HASH_SIZE; i++)
            snprintf(hash_hex + 2 * i, 3, "%02x", hash[i]);
        op->signed_by =
            json_pack("{s:s, s:s, s:s}", "key_id", hex, "trusted_comment", sig.trusted_comment, "blake2b", hash_hex);
    }
    close(op->fd);
    op->fd = sfd;
    return 0;
}

static void unpack_work(void *userdata)
{
    Op *op = userdata;
    SignKeyring k = {0};
    op->r = sign_keyring_load(&k, op->trusted_dir, op->revoked_dir, &op->diag);
    if (op->r == 0 && (k.n_keys > 0 || op->stream))
        op->r = spool_and_verify(op, &k);
    sign_keyring_clear(&k);
    if (op->r == 0)
        op->r = store_unpack_validated(op->root, op->fd, &op->limits, check_staged, op, &op->vsn, &op->name, &op->diag);
    struct stat st;
    if (fstat(op->fd, &st) == 0 && S_ISREG(st.st_mode)) /* a pipe that was not spooled: not known */
        op->bytes = (uint64_t)st.st_size;
    close(op->fd);
    op->fd = -1;
}

/* An unpack the database refused: its files in place go back out, so
 * both agree (on a worker thread: the unpack lock may be held by another
 * unpack's renames). What cannot go is logged: the next start records
 * it, as an unpack it would complete. */
static void take_back_out_work(void *userdata)
{
    Op *op = userdata;
    StoreAside a;
    Diag d = {0};
    if (store_release_aside(op->root, op->vsn, &a, &d) < 0) {
        log_error("release %s: cannot take its files back out: %s", op->vsn, d.errors.n ? d.errors.v[0] : "unknown");
    } else {
        store_remove_tree(a.trash); /* one release's files: small */
        store_aside_clear(&a);
    }
    diag_clear(&d);
}

static void unpack_done(void *userdata)
{
    Op *op = userdata;
    Manager *m = op->m;
    bool was_present = op->r == 1;
    if (op->r >= 0) {
        /* With the signature it was verified with (an unpack of files
         * already present keeps the row it has). */
        int r = history_release_add_signed(m->hist, op->vsn, op->name, op->who, op->signed_by);
        if (r == -EEXIST && was_present) {
            r = 0; /* the same tarball again: nothing to do */
        } else if (r < 0) {
            diag_error(&op->diag, r == -EEXIST ? "release %s is already present" : "cannot record release %s: %s",
                       op->vsn, history_last_error(m->hist));
            op->r = r;
            /* Files that were there before have their row; new ones go. */
            if (!was_present && jobs_run(m->jobs, take_back_out_work, op_done_failed, op) == 0)
                return;
        }
        op->r = r;
        if (r == 0)
            CRASH_POINT("unpack:recorded");
        if (r == 0)
            log_info("%s release %s %s for %s%s%s", was_present ? "already unpacked:" : "unpacked", op->name, op->vsn,
                     op->who, op->signed_by ? ", signed by key " : "",
                     op->signed_by ? json_string_value(json_object_get(op->signed_by, "key_id")) : "");
    } else {
        log_info("unpack for %s refused: %s", op->who, op->diag.errors.n ? op->diag.errors.v[0] : strerror(-op->r));
    }
    metrics_count_unpack(m->metrics, op->r == 0, op->bytes);
    if (op->r == 0 && !was_present)
        events_emit(EVENT_UNPACKED, LOG_INFO, &(EventFields){.release = op->name, .version = op->vsn},
                    "release %s %s unpacked for %s", op->name, op->vsn, op->who);
    metrics_changed(m->metrics);
    json_t *reply = op->r == 0
                        ? json_pack("{s:s, s:s, s:b}", "release", op->vsn, "name", op->name, "unchanged", was_present)
                        : NULL;
    if (reply && op->signed_by)
        json_object_set(reply, "signature", op->signed_by);
    op_done(op, op->r, reply);
}

void manager_unpack(Manager *m, int fd, const char *who, const ManagerCaller *c)
{
    manager_unpack_with(m, fd, NULL, who, c);
}

void manager_unpack_with(Manager *m, int fd, const ManagerUnpack *u, const char *who, const ManagerCaller *c)
{
    static const ManagerUnpack plain = {0};
    u = u ? u : &plain;
    Op *op = op_new(m, OP_UNPACK, who, c);
    op->fd = fd;
    op->signature = xstrdup(u->signature);
    op->stream = u->stream;
    op->trusted_dir = xstrdup(m->cfg.trusted_keys);
    op->revoked_dir = xstrdup(m->cfg.revoked_keys);
    op->allow_downgrade = u->allow_downgrade;
    op->min_version = xstrdup(m->cfg.min_version);
    op->permanent = m->cfg.refuse_older_than_permanent ? state_of(m, RELEASE_PERMANENT) : NULL;
    op->limits = (StoreLimits){
        .bytes = m->cfg.max_unpacked, .files = m->cfg.max_unpacked_files, .depth = m->cfg.max_unpacked_depth};
    int r = jobs_run(m->jobs, unpack_work, unpack_done, op);
    if (r < 0) {
        diag_error(&op->diag, "cannot start the unpack: %s", strerror(-r));
        op_done(op, r, NULL);
    }
}

/* ---- boot and first install --------------------------------------------------------- */

static void load_work(void *userdata)
{
    Op *op = userdata;
    op->r = store_load_release(op->root, op->vsn, &op->rel, &op->diag);
}

/* Starts rel's processes with nothing running before; takes rel. */
static int boot(Manager *m, ReleaseDef *rel, Diag *diag)
{
    int r = supervisor_start_release(m->sup, rel, diag);
    if (r < 0) {
        release_def_free(rel);
        return r;
    }
    release_def_free(m->running);
    m->running = rel;
    return 0;
}

/* A loaded release recorded as current, then started. */
static int boot_recorded(Manager *m, Op *op)
{
    CRASH_POINT("install:loaded");
    /* Recorded before it runs: a release that runs is never unrecorded. The
     * permanent release (installed again after it could not boot) stays
     * permanent. */
    char *perm = state_of(m, RELEASE_PERMANENT);
    op->was_permanent = perm && strcmp(perm, op->vsn) == 0;
    free(perm);
    int r = op->was_permanent ? 0 : history_release_set_state(m->hist, op->vsn, RELEASE_CURRENT, op->who);
    if (r < 0) {
        diag_error(&op->diag, "cannot record release %s as current: %s; nothing was started", op->vsn,
                   history_last_error(m->hist));
        return r;
    }
    CRASH_POINT("install:recorded");
    r = boot(m, TAKE_PTR(op->rel), &op->diag);
    if (r < 0 && !op->was_permanent && history_release_set_state(m->hist, op->vsn, RELEASE_UNPACKED, op->who) < 0)
        log_error("release %s did not start and stays recorded as current (%s); reld's next start rolls it back",
                  op->vsn, history_last_error(m->hist));
    return r;
}

/* ---- outcomes, the health gate and the way back ------------------------------------- */

static int set_permanent(Manager *m, const char *vsn, const char *who, Diag *diag);
static void change_release(Manager *m, Op *op, const char *running, bool running_is_current, const char *direction);

/* Ends an install, upgrade or downgrade with outcome o: the reply (taken,
 * may be NULL) gets "outcome"; the history and `relctl status` keep it
 * with its first reason. r: the failure's errno (ignored on success). */
static void dry_run_done(Op *op, Outcome o, int r, json_t *reply);

static void finish(Op *op, Outcome o, int r, json_t *reply)
{
    if (op->in.dry_run) /* refused on the way (change_release): nothing to keep */
        return dry_run_done(op, o, r, reply);
    Manager *m = op->m;
    /* A success outcome with an error (a --commit whose make-permanent
     * failed) is a failure all the same. */
    bool ok = r >= 0 && (o == OUTCOME_COMMITTED || o == OUTCOME_CURRENT || o == OUTCOME_UNCHANGED);
    const char *release = op->to ? op->to : op->vsn, *reason = op->diag.errors.n ? op->diag.errors.v[0] : NULL;
    if (!reply)
        reply = json_object();
    json_object_set_new(reply, "outcome", json_string(outcome_names[o]));
    char at[32];
    time_t now = time(NULL);
    strftime(at, sizeof(at), "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    json_decref(m->last_outcome);
    m->last_outcome = json_pack("{s:s, s:s?, s:s?, s:s?, s:s}", "outcome", outcome_names[o], "release", release, "from",
                                op->before, "reason", reason, "at", at);
    if (o != OUTCOME_UNCHANGED &&
        history_event(m->hist, "outcome", op->who, release, m->last_outcome) < 0) /* borrows it */
        log_error("cannot record the outcome (%s) of release %s: %s", outcome_names[o], release ? release : "?",
                  history_last_error(m->hist));
    if (!ok)
        log_warning("release %s: %s: %s", release ? release : "?", outcome_names[o], reason ? reason : strerror(-r));
    watch_outcome(m, op, o, release, reason);
    if (m->gate_op == op)
        m->gate_op = NULL;
    op_done(op, ok ? 0 : r < 0 ? r : -EIO, reply);
}

/* Healthy (or not waited for): current, or permanent with --commit. */
static void succeed(Op *op, long long waited_ms)
{
    Manager *m = op->m;
    json_t *reply = TAKE_PTR(op->success);
    if (!reply)
        reply = json_pack("{s:s}", "installed", op->to);
    if (waited_ms >= 0)
        json_object_set_new(reply, "health", json_pack("{s:b, s:I}", "healthy", 1, "waited_ms", (json_int_t)waited_ms));
    if (!op->in.commit)
        return finish(op, OUTCOME_CURRENT, 0, reply);
    int r = set_permanent(m, op->to, op->who, &op->diag);
    if (r < 0) {
        json_decref(reply);
        return finish(op, OUTCOME_CURRENT, r, NULL); /* current and healthy, not made permanent: a failure */
    }
    finish(op, OUTCOME_COMMITTED, 0, reply);
}

static void on_gate(HealthGate *g, bool healthy, const char *reason, void *userdata);
static void on_verdict(Op *op, bool healthy, const char *reason, long long waited);

/* Waits for the running release to be healthy (phase GATE_NEW or GATE_OLD). */
static void gate_start(Op *op, GatePhase phase)
{
    Manager *m = op->m;
    HealthProbe **probes = NULL;
    size_t n = supervisor_probes(m->sup, &probes);
    long window = op->in.min_healthy_ms >= 0 ? op->in.min_healthy_ms : m->cfg.min_healthy_ms;
    long timeout = op->in.health_timeout_ms > 0 ? op->in.health_timeout_ms : m->cfg.health_timeout_ms;
    op->phase = phase;
    op->gate = health_gate_free(op->gate);
    op->gate_ms = mono_ms();
    m->gate_op = op;
    int r = health_gate_new(m->ev, probes, n, window, timeout, on_gate, op, &op->gate);
    free(probes);
    if (r < 0) {
        char *why = xasprintf("cannot watch the processes' health: %s", strerror(-r));
        on_gate(NULL, false, why, op);
        free(why);
    }
}

static void on_boot_stopped(void *userdata)
{
    Op *op = userdata;
    Manager *m = op->m;
    supervisor_clear(m->sup); /* its processes point into the definitions */
    m->running = release_def_free(m->running);
    if (!op->was_permanent &&
        history_release_set_state(m->hist, op->to, RELEASE_UNPACKED, "reld (automatic rollback)") < 0) {
        diag_error(&op->diag, "cannot record release %s as unpacked again: %s", op->to, history_last_error(m->hist));
        return finish(op, OUTCOME_NEEDS_OPERATOR, -EIO, NULL);
    }
    diag_warning(&op->diag, "release %s was stopped: nothing runs, as before the install", op->to);
    finish(op, OUTCOME_ROLLED_BACK, -ECANCELED, NULL);
}

/* The new release is not healthy: back, once. A first install stops (as
 * before it, nothing runs); an upgrade or downgrade goes back to the
 * release before by its relup (the other direction). */
static void roll_back(Op *op)
{
    Manager *m = op->m;
    op->phase = GATE_ROLLING_BACK;
    json_t *detail = json_pack("{s:s, s:s?, s:s}", "from", op->to, "to", op->before, "reason", op->unhealthy);
    if (history_event(m->hist, "automatic_rollback", "reld", op->to, detail) < 0)
        log_error("cannot record the automatic rollback: %s", history_last_error(m->hist));
    events_emit(EVENT_ROLLBACK_STARTED, LOG_WARNING,
                &(EventFields){.release = release_name(m, op->to), .version = op->to, .attempt_id = m->attempt_id},
                "release %s is not healthy: going back to %s: %s", op->to, op->before ? op->before : "nothing running",
                op->unhealthy ? op->unhealthy : "");
    json_decref(detail);
    if (!op->before) {
        (void)supervisor_stop_all(m->sup, on_boot_stopped, op); /* cannot fail */
        return;
    }
    free(op->vsn);
    op->vsn = xstrdup(op->before);
    char *who = xasprintf("reld (automatic rollback for %s)", op->who);
    free(op->who);
    op->who = who;
    /* The release left goes back to unpacked only if it was made current
     * (a downgrade to the permanent release leaves it permanent). */
    char *cur = state_of(m, RELEASE_CURRENT);
    change_release(m, op, op->to, cur && strcmp(cur, op->to) == 0, NULL);
    free(cur);
}

static void on_gate(HealthGate *g, bool healthy, const char *gate_reason, void *userdata)
{
    Op *op = userdata;
    long long waited = mono_ms() - op->gate_ms;
    char *reason = xstrdup(gate_reason ? gate_reason : ""); /* the gate's, which goes now */
    op->gate = health_gate_free(op->gate);
    on_verdict(op, healthy, reason, waited);
    free(reason);
}

static void on_verdict(Op *op, bool healthy, const char *reason, long long waited)
{
    Manager *m = op->m;
    const char *release = op->phase == GATE_OLD ? op->before : op->to;
    json_t *detail = json_pack("{s:b, s:s, s:I}", "healthy", healthy, "reason", reason ? reason : "", "waited_ms",
                               (json_int_t)waited);
    if (history_event(m->hist, "health", "reld", release, detail) < 0)
        log_error("cannot record the health of release %s: %s", release ? release : "?", history_last_error(m->hist));
    json_decref(detail);
    if (op->phase == GATE_NEW && healthy)
        return succeed(op, waited);
    if (op->phase == GATE_NEW) {
        op->unhealthy = xstrdup(reason);
        diag_error(&op->diag, "release %s did not become healthy: %s", op->to, reason);
        log_warning("release %s is not healthy (%s); going back to %s", op->to, reason,
                    op->before ? op->before : "nothing running");
        return roll_back(op);
    }
    if (healthy) {
        diag_warning(&op->diag, "release %s runs again, healthy", release ? release : "?");
        return finish(op, OUTCOME_ROLLED_BACK, -ECANCELED, NULL);
    }
    diag_error(&op->diag, "release %s, back in place, is not healthy either: %s", release ? release : "?", reason);
    finish(op, OUTCOME_NEEDS_OPERATOR, -EIO, NULL);
}

static void boot_done(void *userdata)
{
    Op *op = userdata;
    Manager *m = op->m;
    m->booting = false;
    if (op->r == 0 && m->shutdown_done) {
        diag_error(&op->diag, "reld is stopping; release %s was not started", op->vsn);
        op->r = -ECANCELED;
    }
    if (op->r == 0)
        op->r = boot_recorded(m, op);
    if (op->r < 0)
        return finish(op, OUTCOME_REFUSED, op->r, NULL);
    CRASH_POINT("install:started");
    log_info("installed release %s for %s", op->vsn, op->who);
    watch_state(m, op->vsn, RELEASE_CURRENT);
    op->success = json_pack("{s:s}", "installed", op->vsn);
    if (op->in.no_wait)
        return succeed(op, -1);
    gate_start(op, GATE_NEW);
}

/* ---- upgrades and downgrades ------------------------------------------------------------ */

static void on_upgrade_progress(void *userdata, size_t k, size_t n, const char *instruction)
{
    Manager *m = userdata;
    Op *op = m->upgrade_op;
    if (!op->in.dry_run)
        watch_progress(m, k, n, instruction);
    if (!op->caller.userdata || !op->caller.progress)
        return;
    json_t *line = json_pack("{s:i, s:i, s:s}", "progress", (int)k, "of", (int)n, "instruction", instruction);
    op->caller.progress(op->caller.userdata, line);
    json_decref(line);
}

/* The states after a successful change: 0, or -errno with the reason in diag. */
static int record_change(Manager *m, Upgrade *u, bool running_was_current, const char *who, Diag *diag)
{
    char *target_state = NULL;
    int r = history_release_state(m->hist, upgrade_to(u), &target_state);
    HistoryStateChange v[2];
    size_t n = 0;
    if (running_was_current)
        v[n++] = (HistoryStateChange){upgrade_from(u), RELEASE_UNPACKED};
    if (r == 0 && strcmp(target_state, RELEASE_PERMANENT) != 0) /* back to the permanent one: stays so */
        v[n++] = (HistoryStateChange){upgrade_to(u), RELEASE_CURRENT};
    free(target_state);
    if (r == 0 && n)
        r = history_release_set_states(m->hist, v, n, who);
    if (r < 0)
        diag_error(diag,
                   "release %s runs, but its state could not be recorded: %s; reld boots release %s at its next "
                   "start",
                   upgrade_to(u), history_last_error(m->hist), upgrade_from(u));
    return r;
}

static void dry_run_finished(Manager *m, Op *op, Upgrade *u, int r);

static void on_upgrade_finished(void *userdata, Upgrade *u, int r, bool planned)
{
    Manager *m = userdata;
    Op *op = m->upgrade_op;
    if (op->in.dry_run)
        return dry_run_finished(m, op, u, r);
    const char *verb = upgrade_up(u) ? "upgrade" : "downgrade";
    const Diag *ud = upgrade_diag(u);
    for (size_t k = 0; k < ud->errors.n; k++)
        diag_error(&op->diag, "%s", ud->errors.v[k]);
    for (size_t k = 0; k < ud->warnings.n; k++)
        diag_warning(&op->diag, "%s", ud->warnings.v[k]);
    supervisor_hold_health(m->sup, false);
    bool changed = planned && upgrade_changed_anything(u), recorded = upgrade_recorded(u);
    if (planned && recorded)
        watch_relup_done(m, r);
    json_t *reply = NULL;
    if (r == 0) {
        /* The processes run `to`: so do the definitions, recorded or not. */
        release_def_free(m->running);
        m->running = upgrade_take_target(u);
        bool running_was_current = op->r == 1;
        CRASH_POINT("upgrade:done");
        if (!recorded)
            r = -EIO;
        else
            r = record_change(m, u, running_was_current, op->who, &op->diag);
        if (r == 0) {
            CRASH_POINT("upgrade:recorded");
            log_info("release %s is current (%.3f ms)", upgrade_to(u), upgrade_ms(u));
            watch_state(m, upgrade_to(u), RELEASE_CURRENT);
            size_t n;
            (void)upgrade_position(u, &n);
            reply = json_pack("{s:s, s:s, s:s, s:i, s:f}", "installed", upgrade_to(u), "from", upgrade_from(u),
                              "direction", verb, "instructions", (int)n, "ms", upgrade_ms(u));
        } else {
            log_error("%s", op->diag.errors.n ? op->diag.errors.v[0] : "cannot record the change");
        }
    }
    m->upgrade = upgrade_free(m->upgrade);
    m->upgrade_op = NULL;
    if (op->phase == GATE_ROLLING_BACK) { /* the way back, after an unhealthy new release */
        json_decref(reply);
        if (r == 0)
            return gate_start(op, GATE_OLD);
        diag_error(&op->diag, "the way back to release %s failed", op->before);
        return finish(op, OUTCOME_NEEDS_OPERATOR, r, NULL);
    }
    if (r == 0) {
        op->success = reply;
        if (op->in.no_wait)
            return succeed(op, -1);
        return gate_start(op, GATE_NEW);
    }
    if (!changed) /* refused while planning or rehearsing, or failed before the point of no return */
        return finish(op, OUTCOME_REFUSED, r, NULL);
    if (!recorded || !m->running || strcmp(m->running->vsn, op->before) != 0) /* u is freed: its answer kept */
        return finish(op, OUTCOME_NEEDS_OPERATOR, r, NULL);
    /* The executor went back by itself (the inverse, or a restart on the old
     * release): that release must be healthy again. */
    gate_start(op, GATE_OLD);
}

static void change_release(Manager *m, Op *op, const char *running, bool running_is_current, const char *direction)
{
    bool up = strverscmp(op->vsn, running) > 0;
    if (direction && up != (strcmp(direction, "upgrade") == 0)) {
        diag_error(&op->diag, "release %s is %s than the running %s: use %s", op->vsn, up ? "newer" : "older", running,
                   up ? "upgrade" : "downgrade");
        return finish(op, OUTCOME_REFUSED, -EINVAL, NULL);
    }
    op->kind = OP_UPGRADE;
    op->r = running_is_current ? 1 : 0; /* kept for record_change */
    UpgradeParams p = {.ev = m->ev,
                       .jobs = m->jobs,
                       .history = m->hist,
                       .supervisor = m->sup,
                       .root = m->cfg.root,
                       .from = running,
                       .from_def = m->running,
                       .to = op->vsn,
                       .up = up,
                       .who = op->who,
                       .rehearse =
                           op->in.rehearse && op->phase != GATE_ROLLING_BACK, /* the way back: as fast as can be */
                       .rehearse_timeout_ms = op->in.rehearse_timeout_ms > 0 ? (int)op->in.rehearse_timeout_ms : 0,
                       .dry_run = op->in.dry_run,
                       .progress = on_upgrade_progress,
                       .finished = on_upgrade_finished,
                       .userdata = m};
    m->attempt_id = 0; /* known once it begins (watch_progress) */
    int r = upgrade_start(&p, &m->upgrade);
    if (r < 0) {
        diag_error(&op->diag, "cannot start the %s: %s", up ? "upgrade" : "downgrade", strerror(-r));
        return finish(op, op->phase == GATE_ROLLING_BACK ? OUTCOME_NEEDS_OPERATOR : OUTCOME_REFUSED, r, NULL);
    }
    supervisor_hold_health(m->sup, true); /* no health command between a load and its code_change */
    m->upgrade_op = op;
    if (!op->in.dry_run && op->phase != GATE_ROLLING_BACK) /* the way back has its own event */
        watch_started(m, up ? "upgrade" : "downgrade", op->vsn, running);
}

/* ---- dry runs ------------------------------------------------------------------------ */

/* A dry run's end: its report, and no outcome kept (finish() records one
 * for status and the history; a dry run changed nothing to record). */
static void dry_run_done(Op *op, Outcome o, int r, json_t *reply)
{
    /* A dry run changed nothing: whatever stopped it (reld stopping
     * included, which ends a change as needs_operator) is a refusal. */
    if (o == OUTCOME_ROLLED_BACK || o == OUTCOME_NEEDS_OPERATOR)
        o = OUTCOME_REFUSED;
    if (!reply)
        reply = json_pack("{s:b, s:s}", "dry_run", 1, "to", op->to);
    json_object_set_new(reply, "outcome", json_string(outcome_names[o]));
    op_done(op, r, reply);
}

static void dry_run_finished(Manager *m, Op *op, Upgrade *u, int r)
{
    const Diag *ud = upgrade_diag(u);
    for (size_t k = 0; k < ud->errors.n; k++)
        diag_error(&op->diag, "%s", ud->errors.v[k]);
    for (size_t k = 0; k < ud->warnings.n; k++)
        diag_warning(&op->diag, "%s", ud->warnings.v[k]);
    supervisor_hold_health(m->sup, false);
    json_t *report = upgrade_dry_run(u) ? json_deep_copy(upgrade_dry_run(u)) : NULL;
    m->upgrade = upgrade_free(m->upgrade);
    m->upgrade_op = NULL;
    if (r < 0 && !op->diag.errors.n)
        diag_error(&op->diag, "the dry run failed: %s", strerror(-r));
    dry_run_done(op, r == 0 ? OUTCOME_DRY_RUN : OUTCOME_REFUSED, r, report);
}

/* A first install's dry run: what would start, in start order. */
static void dry_boot_done(void *userdata)
{
    Op *op = userdata;
    if (op->r < 0)
        return dry_run_done(op, OUTCOME_REFUSED, op->r, NULL);
    json_t *starts = json_array();
    size_t *order = appdefs_release_order(op->rel);
    for (size_t k = 0; k < op->rel->n_apps; k++) {
        const ReleaseAppRef *ref = &op->rel->apps[order[k]];
        json_t *procs = json_array();
        for (size_t i = 0; i < ref->app->n_processes; i++)
            json_array_append_new(procs, json_string(ref->app->processes[i].name));
        json_array_append_new(
            starts, json_pack("{s:s, s:s, s:o}", "application", ref->app->name, "vsn", ref->vsn, "processes", procs));
    }
    free(order);
    dry_run_done(op, OUTCOME_DRY_RUN, 0,
                 json_pack("{s:b, s:n, s:s, s:o}", "dry_run", 1, "from", "to", op->to, "starts", starts));
}

/* Nothing changes: the report of what an install would do. */
static void dry_run(Manager *m, Op *op, const char *running, const char *cur, const char *direction)
{
    int r;
    if (running && strcmp(running, op->to) == 0) {
        dry_run_done(op, OUTCOME_UNCHANGED, 0,
                     json_pack("{s:b, s:s, s:s}", "dry_run", 1, "from", running, "to", op->to));
    } else if (running) {
        change_release(m, op, running, cur && strcmp(cur, running) == 0, direction);
    } else if (direction) {
        diag_error(&op->diag, "no release is running to %s from", direction);
        dry_run_done(op, OUTCOME_REFUSED, -EINVAL, NULL);
    } else if ((r = jobs_run(m->jobs, load_work, dry_boot_done, op)) < 0) {
        diag_error(&op->diag, "cannot start the dry run: %s", strerror(-r));
        dry_run_done(op, OUTCOME_REFUSED, r, NULL);
    }
}

void manager_install(Manager *m, const ManagerInstall *in, const char *who, const ManagerCaller *c)
{
    const char *vsn = in->vsn, *direction = in->direction;
    if (!vsn)
        return refuse(m, c, -EINVAL, "install needs a release version or tarball");
    if (m->upgrade)
        return refuse(m, c, -EBUSY, "an upgrade from %s to %s is under way; one at a time", upgrade_from(m->upgrade),
                      upgrade_to(m->upgrade));
    if (m->booting)
        return refuse(m, c, -EBUSY, "a release is being installed; one at a time");
    if (m->gate_op)
        return refuse(m, c, -EBUSY, "release %s is being checked for health; one at a time", m->gate_op->to);
    if (m->shutdown_done)
        return refuse(m, c, -ESHUTDOWN, "reld is stopping");
    char *state = NULL;
    int r = history_release_state(m->hist, vsn, &state);
    free(state);
    if (r == -ENOENT)
        return refuse(m, c, r, "release %s is not known (relctl unpack it first)", vsn);
    if (r < 0)
        return refuse(m, c, r, "cannot read the release database: %s", history_last_error(m->hist));
    for (Op *o = m->ops; o; o = o->next)
        if (o->kind == OP_REMOVE && strcmp(o->vsn, vsn) == 0)
            return refuse(m, c, -EBUSY, "release %s is being removed", vsn);
    char *cur = state_of(m, RELEASE_CURRENT);
    const char *running = m->running ? m->running->vsn : NULL;
    Op *op = op_new(m, OP_BOOT, who, c);
    op->vsn = xstrdup(vsn);
    op->to = xstrdup(vsn);
    op->before = running ? xstrdup(running) : NULL;
    op->in = *in;
    op->in.vsn = op->to;
    op->in.direction = NULL;
    if (in->dry_run) {
        dry_run(m, op, running, cur, direction);
    } else if (running && strcmp(running, vsn) == 0) {
        /* Already there: nothing to do (and --commit makes it permanent). */
        json_t *reply = json_pack("{s:s}", "installed", vsn);
        bool commits = in->commit && cur && strcmp(cur, vsn) == 0; /* current: --commit changes its state */
        if (in->commit && (r = set_permanent(m, vsn, who, &op->diag)) < 0) {
            json_decref(reply);
            finish(op, OUTCOME_CURRENT, r, NULL);
        } else {
            finish(op, commits ? OUTCOME_COMMITTED : OUTCOME_UNCHANGED, 0, reply);
        }
    } else if (running) {
        change_release(m, op, running, cur && strcmp(cur, running) == 0, direction);
    } else if (direction) {
        diag_error(&op->diag, "no release is running to %s from", direction);
        finish(op, OUTCOME_REFUSED, -EINVAL, NULL);
    } else if ((r = jobs_run(m->jobs, load_work, boot_done, op)) < 0) {
        diag_error(&op->diag, "cannot start the install: %s", strerror(-r));
        finish(op, OUTCOME_REFUSED, r, NULL);
    } else {
        m->booting = true;
        watch_started(m, "install", vsn, NULL);
    }
    free(cur);
}

/* ---- the permanent marker ------------------------------------------------------------ */

/* ROOT/permanent: the permanent release's version on one line, written
 * (atomically) at each make-permanent and brought in line with the
 * database at each start. Only a recovery reads it, when the database is
 * lost: the release it names boots again. Not in releases/, where
 * "permanent" would be a release's version. */
static char *marker_path(const char *root)
{
    return xasprintf("%s/permanent", root);
}

/* fsync of a directory: the renames in it are on disk. */
static int sync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int r = fsync(fd) < 0 ? -errno : 0;
    close(fd);
    return r;
}

/* Writes the marker: a temporary file in ROOT/tmp (emptied at start),
 * fsync, rename, fsync of the root. vsn NULL: removes it. A failure is
 * logged and nothing more: the database is what counts. */
static void marker_write(const char *root, const char *vsn)
{
    char *path = marker_path(root), *tmpdir = store_path_tmp(root), *tmp = xasprintf("%s/permanent-XXXXXX", tmpdir);
    int r = 0, fd = -1;
    if (!vsn) {
        if (unlink(path) < 0 && errno != ENOENT)
            r = -errno;
    } else if ((mkdir(tmpdir, 0700) < 0 && errno != EEXIST) || (fd = mkostemp(tmp, O_CLOEXEC)) < 0) {
        r = -errno;
    } else {
        char *line = xasprintf("%s\n", vsn);
        size_t len = strlen(line);
        if (fchmod(fd, 0644) < 0 || write(fd, line, len) != (ssize_t)len || fsync(fd) < 0)
            r = errno ? -errno : -EIO;
        if (close(fd) < 0 && r == 0)
            r = -errno;
        if (r == 0 && rename(tmp, path) < 0)
            r = -errno;
        if (r < 0)
            (void)unlink(tmp); /* nothing to keep */
        free(line);
    }
    if (r == 0)
        r = sync_dir(root);
    if (r < 0)
        log_warning("%s: cannot %s: %s (a recovery of the database would not know the permanent release)", path,
                    vsn ? "write it" : "remove it", strerror(-r));
    free(tmp);
    free(tmpdir);
    free(path);
}

/* The version the marker names: 0 and *ret (caller frees), -ENOENT when
 * there is none, -EINVAL when it holds no version, or -errno. */
static int marker_read(const char *root, char **ret)
{
    char *path = marker_path(root), buf[128];
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    free(path);
    if (fd < 0)
        return -errno;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    int r = n < 0 ? -errno : 0;
    close(fd);
    if (r < 0)
        return r;
    buf[n] = 0;
    buf[strcspn(buf, "\n")] = 0;
    if (!version_is_valid(buf))
        return -EINVAL;
    *ret = xstrdup(buf);
    return 0;
}

/* At start: the marker says what the database says. */
static void marker_sync(const char *root, const char *perm)
{
    char *v = NULL;
    int r = marker_read(root, &v);
    if (perm ? r < 0 || !v || strcmp(v, perm) != 0 : r != -ENOENT)
        marker_write(root, perm);
    free(v);
}

/* ---- make-permanent ------------------------------------------------------------------ */

/* Makes the current release vsn permanent (the permanent one before
 * becomes old: both or neither). 0 (also when it already is), or -errno
 * with the reason in diag. */
static int set_permanent(Manager *m, const char *vsn, const char *who, Diag *diag)
{
    char *perm = state_of(m, RELEASE_PERMANENT), *state = NULL;
    int r = history_release_state(m->hist, vsn, &state);
    if (r == -ENOENT) {
        diag_error(diag, "release %s is not known", vsn);
    } else if (r < 0) {
        diag_error(diag, "cannot read the release database: %s", history_last_error(m->hist));
    } else if (strcmp(state, RELEASE_PERMANENT) == 0) {
        r = 0;
    } else if (strcmp(state, RELEASE_CURRENT) != 0) {
        diag_error(diag, "release %s is %s; only the current release can be made permanent", vsn, state);
        r = -EINVAL;
    } else {
        HistoryStateChange v[] = {{perm, RELEASE_OLD}, {vsn, RELEASE_PERMANENT}};
        r = perm ? history_release_set_states(m->hist, v, 2, who) : history_release_set_states(m->hist, v + 1, 1, who);
        if (r < 0) {
            diag_error(diag, "cannot record the change: %s", history_last_error(m->hist));
        } else {
            log_info("release %s is permanent, for %s", vsn, who);
            watch_state(m, vsn, RELEASE_PERMANENT);
            CRASH_POINT("permanent:recorded");
            marker_write(m->cfg.root, vsn);
            CRASH_POINT("permanent:marked");
        }
    }
    free(perm);
    free(state);
    return r;
}

void manager_make_permanent(Manager *m, const char *vsn, const char *who, const ManagerCaller *c)
{
    if (m->upgrade)
        return refuse(m, c, -EBUSY, "an upgrade from %s to %s is under way; make it permanent when it is done",
                      upgrade_from(m->upgrade), upgrade_to(m->upgrade));
    if (m->gate_op)
        return refuse(m, c, -EBUSY, "release %s is being checked for health; make it permanent when it is done",
                      m->gate_op->to);
    char *cur = state_of(m, RELEASE_CURRENT);
    if (!vsn && !cur)
        return refuse(m, c, -ENOENT, "no release is current (installed and not yet permanent)");
    Diag d = {0};
    int r = set_permanent(m, vsn ? vsn : cur, who, &d);
    json_t *reply = r == 0 ? json_pack("{s:s}", "permanent", vsn ? vsn : cur) : NULL;
    c->done(c->userdata, r, reply, &d);
    json_decref(reply);
    diag_clear(&d);
    free(cur);
}

/* ---- remove ------------------------------------------------------------------------- */

/* Removal: the files move out of the way first (renames, under the
 * unpack lock, on a thread), then the row goes, then the moved files are
 * deleted (seconds for 10^6 files, on a thread). A crash between leaves a
 * row without files, which the next start forgets; the moved files are
 * in tmp/, which it empties. */
static void remove_aside_work(void *userdata)
{
    Op *op = userdata;
    op->r = store_release_aside(op->root, op->vsn, &op->aside, &op->diag);
}

static void remove_delete_work(void *userdata)
{
    Op *op = userdata;
    store_remove_tree(op->aside.trash);
}

static void remove_done(void *userdata)
{
    Op *op = userdata;
    CRASH_POINT("remove:deleted");
    log_info("removed release %s for %s", op->vsn, op->who);
    watch_state(op->m, op->vsn, "removed");
    op_done(op, 0, json_pack("{s:s}", "removed", op->vsn));
}

static void remove_back_work(void *userdata)
{
    Op *op = userdata;
    (void)store_release_back(&op->aside, &op->diag); /* each failure is in diag */
}

static void remove_aside_done(void *userdata)
{
    Op *op = userdata;
    Manager *m = op->m;
    if (op->r < 0)
        return op_done(op, op->r, NULL); /* nothing moved; diag says why */
    for (size_t k = 0; k < op->diag.warnings.n; k++)
        log_warning("remove %s: %s", op->vsn, op->diag.warnings.v[k]);
    CRASH_POINT("remove:aside");
    int r = history_release_remove(m->hist, op->vsn, op->who);
    if (r < 0) {
        /* Not recorded: the files go back, as if nothing happened (on a
         * thread: the unpack lock). Without a thread they stay in tmp/ and
         * the next start forgets the row: the removal completes then. */
        diag_error(&op->diag, "cannot record the removal of release %s: %s", op->vsn, history_last_error(m->hist));
        op->r = r;
        if (jobs_run(m->jobs, remove_back_work, op_done_failed, op) < 0)
            op_done(op, r, NULL);
        return;
    }
    CRASH_POINT("remove:recorded");
    if ((r = jobs_run(m->jobs, remove_delete_work, remove_done, op)) < 0) {
        log_error("remove %s: no thread to delete its files (%s); the next start deletes them", op->vsn, strerror(-r));
        remove_done(op);
    }
}

void manager_remove(Manager *m, const char *vsn, const char *who, const ManagerCaller *c)
{
    if (!vsn)
        return refuse(m, c, -EINVAL, "remove needs a release version");
    if (m->upgrade && (strcmp(vsn, upgrade_to(m->upgrade)) == 0 || strcmp(vsn, upgrade_from(m->upgrade)) == 0))
        return refuse(m, c, -EBUSY, "release %s is part of the %s from %s to %s under way; it cannot be removed", vsn,
                      upgrade_up(m->upgrade) ? "upgrade" : "downgrade", upgrade_from(m->upgrade),
                      upgrade_to(m->upgrade));
    if (m->gate_op && ((m->gate_op->to && strcmp(m->gate_op->to, vsn) == 0) ||
                       (m->gate_op->before && strcmp(m->gate_op->before, vsn) == 0)))
        return refuse(m, c, -EBUSY, "release %s is part of an install being checked for health", vsn);
    for (Op *o = m->ops; o; o = o->next)
        if ((o->kind == OP_REMOVE || o->kind == OP_BOOT) && o->vsn && strcmp(o->vsn, vsn) == 0)
            return refuse(m, c, -EBUSY, "release %s is being %s; one at a time", vsn,
                          o->kind == OP_REMOVE ? "removed" : "installed");
    char *state = NULL;
    int r = history_release_state(m->hist, vsn, &state);
    if (r == -ENOENT)
        return refuse(m, c, r, "release %s is not known", vsn);
    if (r < 0)
        return refuse(m, c, r, "cannot read the release database: %s", history_last_error(m->hist));
    bool in_use = strcmp(state, RELEASE_PERMANENT) == 0 || strcmp(state, RELEASE_CURRENT) == 0 ||
                  (m->running && strcmp(m->running->vsn, vsn) == 0);
    if (in_use) {
        refuse(m, c, -EBUSY, "release %s is %s; it cannot be removed", vsn,
               strcmp(state, RELEASE_PERMANENT) == 0 ? "permanent" : "running");
        free(state);
        return;
    }
    free(state);
    Op *op = op_new(m, OP_REMOVE, who, c);
    op->vsn = xstrdup(vsn);
    if ((r = jobs_run(m->jobs, remove_aside_work, remove_aside_done, op)) < 0) {
        diag_error(&op->diag, "cannot start the removal: %s", strerror(-r));
        op_done(op, r, NULL);
    }
}

/* ---- reading ---------------------------------------------------------------------- */

json_t *manager_releases(Manager *m, Diag *diag)
{
    json_t *rels = NULL;
    if (history_releases(m->hist, &rels) < 0) {
        diag_error(diag, "cannot read the release database: %s", history_last_error(m->hist));
        return NULL;
    }
    return json_pack("{s:o}", "releases", rels);
}

json_t *manager_history(Manager *m, int limit, Diag *diag)
{
    json_t *h = NULL;
    if (history_list(m->hist, limit, &h) < 0) {
        diag_error(diag, "cannot read the history: %s", history_last_error(m->hist));
        return NULL;
    }
    return h;
}

json_t *manager_status(Manager *m, Diag *diag)
{
    json_t *rels = manager_releases(m, diag);
    if (!rels)
        return NULL;
    char *cur = state_of(m, RELEASE_CURRENT), *perm = state_of(m, RELEASE_PERMANENT);
    json_t *s = json_pack("{s:s, s:o, s:o, s:o, s:O, s:o}", "root", m->cfg.root, "running",
                          m->running ? json_string(m->running->vsn) : json_null(), "current",
                          cur ? json_string(cur) : json_null(), "permanent", perm ? json_string(perm) : json_null(),
                          "releases", json_object_get(rels, "releases"), "processes", supervisor_status(m->sup));
    json_decref(rels);
    if (m->upgrade) {
        size_t n, k = upgrade_position(m->upgrade, &n); /* 0 of 0: planning */
        json_object_set_new(s, "upgrade",
                            json_pack("{s:s, s:s, s:s, s:i, s:i}", "from", upgrade_from(m->upgrade), "to",
                                      upgrade_to(m->upgrade), "direction",
                                      upgrade_up(m->upgrade) ? "upgrade" : "downgrade", "done", (int)k, "of", (int)n));
    } else {
        json_object_set_new(s, "upgrade", json_null());
    }
    if (m->gate_op && m->gate_op->gate) {
        json_t *g = health_gate_status(m->gate_op->gate);
        json_object_set_new(g, "release",
                            json_string(m->gate_op->phase == GATE_OLD ? m->gate_op->before : m->gate_op->to));
        json_object_set_new(s, "health_gate", g);
    }
    json_object_set(s, "last_outcome", m->last_outcome ? m->last_outcome : json_null());
    char *trust = NULL;
    Diag td = {0};
    if (manager_trust(m->cfg.trusted_keys, m->cfg.revoked_keys, NULL, &trust, &td) < 0)
        trust = xasprintf("every unpack refused: %s", td.errors.n ? td.errors.v[0] : "the keys cannot be read");
    diag_clear(&td);
    json_object_set_new(s, "signatures", json_string(trust));
    free(trust);
    free(cur);
    free(perm);
    metrics_annotate(m->metrics, m->procstats, s, mono_ms()); /* sampled now, as someone asks */
    return s;
}

static void relup_work(void *userdata)
{
    Op *op = userdata;
    Relup *r = NULL;
    bool stored = false;
    op->r = store_relup(op->root, op->from, op->to, true, &r, &stored, &op->diag);
    if (op->r == 0) {
        json_t *warnings = json_array();
        for (size_t i = 0; i < op->diag.warnings.n; i++)
            json_array_append_new(warnings, json_string(op->diag.warnings.v[i]));
        op->result = json_pack("{s:o, s:b, s:o}", "relup", relup_to_json(r), "stored", stored, "warnings", warnings);
    }
    relup_free(r);
}

static void relup_done(void *userdata)
{
    Op *op = userdata;
    op_done(op, op->r, TAKE_PTR(op->result));
}

void manager_relup(Manager *m, const char *from, const char *to, const char *who, const ManagerCaller *c)
{
    if (!from || !to)
        return refuse(m, c, -EINVAL, "relup needs FROM and TO");
    Op *op = op_new(m, OP_RELUP, who, c);
    op->from = xstrdup(from);
    op->to = xstrdup(to);
    int r = jobs_run(m->jobs, relup_work, relup_done, op);
    if (r < 0) {
        diag_error(&op->diag, "cannot compute the relup: %s", strerror(-r));
        op_done(op, r, NULL);
    }
}

/* ---- life ------------------------------------------------------------------------- */

/* ---- the database at start ------------------------------------------------------ */

/* Does ROOT/releases hold anything? Then the root is not new, and its
 * database must exist: without it reld would boot nothing. */
static int root_has_releases(const char *root, bool *ret)
{
    char *dir = store_path_releases(root);
    DIR *d = opendir(dir);
    int r = d || errno == ENOENT ? 0 : -errno;
    *ret = false;
    for (struct dirent *e; d && !*ret && (e = readdir(d));)
        *ret = strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    if (d)
        closedir(d);
    if (r < 0)
        log_error("cannot read %s: %s", dir, strerror(-r));
    free(dir);
    return r;
}

/* The one line that says why the database cannot be used, and what to do.
 * err: "PATH: reason". */
static void log_db_failure(const char *root, int r, const char *err)
{
    char *rels = store_path_releases(root);
    switch (r) {
    case -ENOENT:
        log_error("%s, but %s holds releases: reld will not start without their states; run 'reld --recover' (same "
                  "--root or --config) to rebuild the database from the release directories",
                  err, rels);
        break;
    case -EUCLEAN:
    case -EILSEQ:
        log_error("%s; reld will not start on a damaged database: run 'reld --recover' (same --root or --config) to "
                  "keep it aside and rebuild it from the release directories",
                  err);
        break;
    case -EROFS:
    case -EACCES:
    case -EPERM:
        log_error("%s: reld must read and write its database (check the file's owner and mode, and the file system)",
                  err);
        break;
    case -EPROTO:
        log_error("%s: a newer reld wrote it; run that one", err);
        break;
    default:
        log_error("%s", err);
    }
    free(rels);
}

/* Opens ROOT/reld.db as start-up and recovery need it: created only when
 * the root is new. 0, or -errno with *err (caller frees) "PATH: reason". */
static int open_root_history(const char *root, History **ret, char **err)
{
    bool has = false;
    char *db = store_path_db(root);
    int r = root_has_releases(root, &has);
    if (r < 0)
        *err = xasprintf("%s: cannot tell whether the root holds releases: %s", db, strerror(-r));
    else
        r = has ? history_open_existing(db, ret, err) : history_open(db, ret, err);
    if (r < 0 && !*err)
        *err = xasprintf("%s: %s", db, strerror(-r));
    free(db);
    return r;
}

/* A failed read of the database at start: the line, the error. */
static int read_failure(Manager *m, int r, const char *what)
{
    char *db = store_path_db(m->cfg.root),
         *err = xasprintf("%s: cannot read %s: %s", db, what, history_last_error(m->hist));
    log_db_failure(m->cfg.root, r, err);
    free(err);
    free(db);
    return r;
}

static int release_dirs(const char *root, StrVec *ret);

/* Release directories the database does not know: an unpack whose files
 * were in place, complete and on disk, when reld stopped before recording
 * it (store_unpack moves the release directory last). Recorded now, as
 * the unpack would have; one that does not load stays for the operator
 * (as a recovery leaves it). */
static void adopt_unrecorded(Manager *m, json_t *rels)
{
    StrVec dirs = {0};
    (void)release_dirs(m->cfg.root, &dirs); /* logged; then there is nothing to adopt */
    for (size_t k = 0; k < dirs.n; k++) {
        const char *vsn = dirs.v[k];
        bool known = false;
        size_t i;
        json_t *rel;
        json_array_foreach(rels, i, rel) known =
            known || strcmp(json_string_value(json_object_get(rel, "vsn")), vsn) == 0;
        if (known)
            continue;
        ReleaseDef *def = NULL;
        Diag d = {0};
        if (store_load_release(m->cfg.root, vsn, &def, &d) == 0 && check_release_diag(m->cfg.root, vsn, &d) == 0) {
            if (history_release_add(m->hist, vsn, def->name, "reld (start)") < 0)
                log_error("cannot record release %s: %s", vsn, history_last_error(m->hist));
            else
                log_warning("release %s was unpacked but not recorded when reld stopped; recorded now", vsn);
        } else { /* not reld's doing (an unpack moves in only what loads): the operator's */
            char *dir = store_path_release_dir(m->cfg.root, vsn);
            log_warning("release %s is in %s but not in the database, and does not load or pass the checks (%s); "
                        "left as it is: "
                        "remove %s to unpack this version again",
                        vsn, m->cfg.root, d.errors.n ? d.errors.v[0] : "unknown error", dir);
            free(dir);
        }
        release_def_free(def);
        diag_clear(&d);
    }
    strvec_clear(&dirs);
}

/* Brings the database and the files into agreement after a crash. 0, or
 * -errno when the database cannot be read (reld must not start). */
static int reconcile(Manager *m)
{
    /* Read first: a database that cannot say which releases it has stops
     * the start before anything changes. */
    json_t *rels = NULL;
    int r = history_releases(m->hist, &rels);
    if (r < 0)
        return read_failure(m, r, "the releases");
    int n = history_attempts_interrupted(m->hist);
    if (n == -EUCLEAN) {
        json_decref(rels);
        return read_failure(m, n, "the upgrade attempts");
    }
    if (n < 0)
        log_error("cannot close interrupted upgrade attempts: %s", history_last_error(m->hist));
    if (n > 0) {
        log_warning("%d upgrade attempt(s) were interrupted by reld stopping; booting the permanent release", n);
        if (history_event(m->hist, "interrupted", "reld (start)", NULL, NULL) < 0)
            log_error("cannot record the interruption: %s", history_last_error(m->hist));
    }
    char *tmp = store_path_tmp(m->cfg.root);
    store_remove_tree(tmp); /* staging directories of unpacks, removals a crash interrupted */
    free(tmp);
    size_t i;
    json_t *rel;
    json_array_foreach(rels, i, rel)
    {
        const char *vsn = json_string_value(json_object_get(rel, "vsn"));
        const char *state = json_string_value(json_object_get(rel, "state"));
        char *path = store_path_release_file(m->cfg.root, vsn);
        if (access(path, F_OK) < 0) {
            log_warning("release %s is in the database but not in %s; forgetting it", vsn, m->cfg.root);
            if (history_release_remove(m->hist, vsn, "reld (start)") < 0)
                log_error("cannot forget release %s: %s", vsn, history_last_error(m->hist));
        } else if (strcmp(state, RELEASE_CURRENT) == 0) {
            /* Installed but never made permanent: rolled back, as OTP. */
            log_warning("release %s was current but never made permanent: rolled back", vsn);
            if (history_release_set_state(m->hist, vsn, RELEASE_UNPACKED, "reld (start)") < 0)
                log_error("cannot roll back release %s: %s", vsn, history_last_error(m->hist));
        }
        free(path);
    }
    adopt_unrecorded(m, rels);
    json_decref(rels);
    StrVec swept = {0};
    Diag d = {0};
    if (store_sweep(m->cfg.root, &swept, &d) < 0 || d.warnings.n)
        log_error("%s", d.errors.n ? d.errors.v[0] : d.warnings.v[0]);
    for (size_t k = 0; k < swept.n; k++)
        log_warning("lib/%s: no release uses it (an interrupted unpack or removal left it); deleted", swept.v[k]);
    strvec_clear(&swept);
    diag_clear(&d);
    return 0;
}

/* Takes ROOT/reld.lock: one reld per root. */
static int lock_root(const char *root, int *ret_fd)
{
    char *lock = store_path_lock(root);
    int r = 0, fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0 || flock(fd, LOCK_EX | LOCK_NB) < 0) {
        r = errno == EWOULDBLOCK ? -EBUSY : -errno;
        log_error("%s: %s", lock, r == -EBUSY ? "another reld runs on this root" : strerror(-r));
        if (fd >= 0)
            close(fd);
    }
    free(lock);
    if (r == 0)
        *ret_fd = fd;
    return r;
}

static bool saved_lock(Manager *m, const json_t *saved);
static bool restore(Manager *m, const json_t *saved);

int manager_new(sd_event *ev, const DaemonConfig *cfg, Manager **ret)
{
    return manager_new_from(ev, cfg, NULL, ret);
}

int manager_new_from(sd_event *ev, const DaemonConfig *cfg, const json_t *saved, Manager **ret)
{
    Manager *m = xcalloc(1, sizeof(*m));
    m->ev = sd_event_ref(ev);
    config_copy(&m->cfg, cfg);
    m->lock_fd = -1;
    int r = 0;
    if (mkdir(m->cfg.root, 0755) < 0 && errno != EEXIST) {
        r = -errno;
        log_error("cannot create %s: %s", m->cfg.root, strerror(-r));
    }
    if (r == 0 && !saved_lock(m, saved))
        r = lock_root(m->cfg.root, &m->lock_fd);
    char *err = NULL;
    if (r == 0 && (r = open_root_history(m->cfg.root, &m->hist, &err)) < 0)
        log_db_failure(m->cfg.root, r, err);
    free(err);
    bool restored = r == 0 && saved && restore(m, saved); /* else as after a crash of reld */
    if (r == 0 && !restored)
        r = reconcile(m);
    char *perm = NULL;
    if (r == 0 && (r = history_release_in_state(m->hist, RELEASE_PERMANENT, &perm)) < 0)
        r = r == -ENOENT ? 0 : read_failure(m, r, "the permanent release");
    if (r == 0)
        marker_sync(m->cfg.root, perm);
    if (r == 0 && !m->jobs && (r = jobs_new(ev, &m->jobs)) < 0)
        log_error("cannot start the job queue: %s", strerror(-r));
    if (r == 0 && !m->sup && (r = supervisor_new(ev, m->hist, m->cfg.root, &m->sup)) < 0)
        log_error("cannot start the supervisor: %s", strerror(-r));
    if (r == 0 && perm && !restored) {
        Diag diag = {0};
        ReleaseDef *rel = NULL;
        if (store_load_release(m->cfg.root, perm, &rel, &diag) < 0 || boot(m, rel, &diag) < 0)
            log_error("cannot boot permanent release %s: %s", perm, diag.errors.n ? diag.errors.v[0] : "?");
        else if (history_event(m->hist, "boot", "reld", perm, NULL) < 0)
            log_error("cannot record the boot: %s", history_last_error(m->hist));
        diag_clear(&diag);
    }
    free(perm);
    if (r < 0) {
        manager_free(m);
        return r;
    }
    /* Whether unpacks need a signature, said once at start: the operator
     * should not learn it from a refusal. */
    char *trust = NULL;
    Diag td = {0};
    if (manager_trust(m->cfg.trusted_keys, m->cfg.revoked_keys, NULL, &trust, &td) < 0)
        log_error("signatures: every unpack will be refused: %s", td.errors.n ? td.errors.v[0] : "?");
    else
        log_info("signatures: %s", trust);
    free(trust);
    diag_clear(&td);
    m->metrics = metrics_new();
    m->procstats = procstat_new();
    events_listen(on_event, m);
    if (m->cfg.metrics_file &&
        (r = metrics_start(m->metrics, ev, m->cfg.metrics_file, m->cfg.metrics_interval_ms, metrics_status_of, m)) < 0)
        log_error("metrics: cannot start writing %s: %s", m->cfg.metrics_file, strerror(-r));
    else if (m->cfg.metrics_file)
        log_info("metrics: %s, every %ld ms", m->cfg.metrics_file, m->cfg.metrics_interval_ms);
    *ret = m;
    return 0;
}

/* ---- recovery (reld --recover) -------------------------------------------------------- */

/* Moves ROOT/reld.db and its -wal and -shm (those that exist) to
 * ROOT/reld.db.damaged-<UTC time>[-k], the same suffixes kept so that
 * sqlite3 opens the kept file with its WAL; *ret: the new name of the
 * database, or NULL when nothing was there. */
static int move_damaged(const char *root, const char *db, char **ret)
{
    static const char *const suffixes[] = {"", "-wal", "-shm"};
    bool any = false;
    for (size_t i = 0; i < 3; i++) {
        char *p = xasprintf("%s%s", db, suffixes[i]);
        struct stat st;
        any |= lstat(p, &st) == 0;
        free(p);
    }
    *ret = NULL;
    if (!any)
        return 0;
    char stamp[32];
    struct tm tm;
    time_t now = time(NULL);
    (void)strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%SZ", gmtime_r(&now, &tm) ? &tm : &(struct tm){0});
    char *base = NULL;
    for (int k = 0; !base; k++) { /* a name none of the three has */
        base = k ? xasprintf("%s.damaged-%s-%d", db, stamp, k) : xasprintf("%s.damaged-%s", db, stamp);
        for (size_t i = 0; base && i < 3; i++) {
            char *p = xasprintf("%s%s", base, suffixes[i]);
            struct stat st;
            if (lstat(p, &st) == 0)
                base = (free(base), NULL);
            free(p);
        }
    }
    int r = 0;
    for (size_t i = 0; r == 0 && i < 3; i++) { /* the database first: from then on it is gone */
        char *from = xasprintf("%s%s", db, suffixes[i]), *to = xasprintf("%s%s", base, suffixes[i]);
        if (renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE) < 0 && errno != ENOENT) {
            r = -errno;
            log_error("cannot move %s to %s: %s", from, to, strerror(-r));
        }
        free(from);
        free(to);
    }
    if (r == 0 && (r = sync_dir(root)) < 0)
        log_error("%s: fsync: %s", root, strerror(-r));
    if (r < 0) {
        free(base);
        return r;
    }
    *ret = base;
    return 0;
}

/* The entries of ROOT/releases, in version order (logged when unreadable). */
static int release_dirs(const char *root, StrVec *ret)
{
    int r = store_release_dirs(root, ret);
    if (r < 0)
        log_error("cannot read %s/releases: %s", root, strerror(-r));
    return r;
}

/* A new database at ROOT/reld.db from the release directories, built
 * beside it (reld.db.recovering) and renamed into place once complete:
 * a recovery that fails or is killed leaves no database, so the next
 * start refuses again and --recover can run again. */
static int rebuild(const char *root, const char *db, const char *damaged)
{
    char *tmp = xasprintf("%s.recovering", db), *err = NULL;
    static const char *const suffixes[] = {"", "-wal", "-shm"};
    for (size_t i = 0; i < 3; i++) { /* left by a recovery that failed */
        char *p = xasprintf("%s%s", tmp, suffixes[i]);
        (void)unlink(p);
        free(p);
    }
    StrVec dirs = {0}, vsns = {0}, names = {0};
    History *h = NULL;
    int r = release_dirs(root, &dirs);
    if (r == 0 && (r = history_open(tmp, &h, &err)) < 0)
        log_error("%s", err);
    free(err);
    char *marked = NULL, *mpath = marker_path(root);
    int mr = r == 0 ? marker_read(root, &marked) : -ENOENT;
    if (mr < 0 && mr != -ENOENT)
        log_warning("%s: %s; no release is restored as permanent", mpath,
                    mr == -EINVAL ? "it names no release version" : strerror(-mr));
    json_t *skipped = json_array();
    for (size_t k = 0; r == 0 && k < dirs.n; k++) {
        const char *vsn = dirs.v[k];
        Diag diag = {0};
        ReleaseDef *rel = NULL;
        if (store_load_release(root, vsn, &rel, &diag) < 0) {
            const char *why = diag.errors.n ? diag.errors.v[0] : "it does not load";
            log_warning("releases/%s: not recorded: %s; its files stay (remove them by hand, then unpack the release "
                        "again)",
                        vsn, why);
            json_array_append_new(skipped, json_pack("{s:s, s:s}", "release", vsn, "why", why));
        } else {
            strvec_push(&vsns, rel->vsn);
            strvec_push(&names, rel->name);
        }
        release_def_free(rel);
        diag_clear(&diag);
    }
    HistoryRelease *v = xcalloc(vsns.n ? vsns.n : 1, sizeof(*v));
    json_t *recorded = json_array();
    const char *perm = NULL;
    for (size_t k = 0; k < vsns.n; k++) {
        bool is_perm = marked && strcmp(marked, vsns.v[k]) == 0;
        v[k] = (HistoryRelease){vsns.v[k], names.v[k], is_perm ? RELEASE_PERMANENT : RELEASE_UNPACKED};
        if (is_perm) {
            perm = vsns.v[k];
            log_info("release %s (%s): recorded as permanent (%s names it)", vsns.v[k], names.v[k], mpath);
        } else {
            log_info("release %s (%s): recorded as unpacked", vsns.v[k], names.v[k]);
        }
        json_array_append_new(recorded, json_string(vsns.v[k]));
    }
    if (r == 0 && marked && !perm)
        log_warning("%s names release %s, which was not recorded; no release is permanent", mpath, marked);
    json_t *detail = json_pack("{s:s?, s:O, s:s?, s:O}", "damaged", damaged ? strrchr(damaged, '/') + 1 : NULL,
                               "releases", recorded, "permanent", perm, "skipped", skipped);
    if (r == 0 && (r = history_recover(h, v, vsns.n, "reld --recover", detail)) < 0)
        log_error("%s: cannot record the releases: %s", tmp, history_last_error(h));
    h = history_close(h); /* the last connection: its WAL goes into the file */
    if (r == 0) {
        char *tmp_wal = xasprintf("%s-wal", tmp), *wal = xasprintf("%s-wal", db);
        if (rename(tmp_wal, wal) < 0 && errno != ENOENT) /* gone at the close; if not, it goes along */
            r = -errno;
        if (r == 0 && rename(tmp, db) < 0)
            r = -errno;
        if (r == 0)
            r = sync_dir(root);
        if (r < 0)
            log_error("%s: cannot put the new database in place: %s", db, strerror(-r));
        free(tmp_wal);
        free(wal);
    }
    if (r == 0 && perm)
        log_info("recovered %s: %zu release(s), %s permanent; start reld: it boots release %s", db, vsns.n, perm, perm);
    else if (r == 0)
        log_info("recovered %s: %zu release(s), all unpacked; start reld, then relctl install VSN and relctl "
                 "make-permanent",
                 db, vsns.n);
    json_decref(detail);
    json_decref(recorded);
    json_decref(skipped);
    free(v);
    free(mpath);
    free(marked);
    strvec_clear(&dirs);
    strvec_clear(&vsns);
    strvec_clear(&names);
    free(tmp);
    return r;
}

/* Can the database be used as it is? Opens it as a start does, and reads
 * what a start reads. 0: it can; -EUCLEAN/-ENOENT: a recovery is needed;
 * another -errno: neither (logged). */
static int probe(const char *root)
{
    History *h = NULL;
    char *err = NULL, *perm = NULL;
    json_t *rels = NULL;
    int r = open_root_history(root, &h, &err);
    if (r == 0 && (r = history_releases(h, &rels)) == 0 &&
        ((r = history_release_in_state(h, RELEASE_PERMANENT, &perm)) == 0 || r == -ENOENT)) {
        char *db = store_path_db(root);
        log_info("%s is sound (%zu release(s), %s permanent); nothing to recover", db, json_array_size(rels),
                 perm ? perm : "none");
        free(db);
        r = 0;
    } else if (r < 0 && h) {
        char *db = store_path_db(root);
        free(err);
        err = xasprintf("%s: %s", db, history_last_error(h));
        free(db);
        if (r == -EILSEQ)
            r = -EUCLEAN;
    }
    if (r < 0 && r != -EUCLEAN && r != -ENOENT)
        log_db_failure(root, r, err);
    else if (r < 0)
        log_warning("%s", err);
    json_decref(rels);
    free(perm);
    free(err);
    history_close(h);
    return r;
}

int manager_recover(const DaemonConfig *cfg)
{
    int fd = -1, r = 0;
    if (mkdir(cfg->root, 0755) < 0 && errno != EEXIST) {
        r = -errno;
        log_error("cannot create %s: %s", cfg->root, strerror(-r));
    }
    if (r == 0)
        r = lock_root(cfg->root, &fd);
    if (r == 0 && (r = probe(cfg->root)) == 0) {
        close(fd);
        return 0;
    }
    char *db = store_path_db(cfg->root), *damaged = NULL;
    if ((r == -EUCLEAN || r == -ENOENT) && (r = move_damaged(cfg->root, db, &damaged)) == 0) {
        if (damaged)
            log_info("kept the damaged database as %s", damaged);
        r = rebuild(cfg->root, db, damaged);
    }
    free(damaged);
    free(db);
    if (fd >= 0)
        close(fd);
    return r;
}

static void on_all_stopped(void *userdata)
{
    Manager *m = userdata;
    m->shutdown_done(m->shutdown_data);
}

void manager_shutdown(Manager *m, void (*done)(void *userdata), void *userdata)
{
    m->shutdown_done = done;
    m->shutdown_data = userdata;
    if (m->upgrade && upgrade_planning(m->upgrade)) {
        upgrade_cancel(m->upgrade); /* its end (on_upgrade_finished) ends its operation, a rollback's too */
    } else if (m->upgrade) {
        /* Abandoned: the attempt shows as interrupted at the next start,
         * which boots the permanent release. Its target's definitions are
         * kept until every process has stopped: a process the script moved
         * to the new release (a successor committed, RELUP_START,
         * START_APPLICATION) still points into them while it stops. */
        m->stopping_target = upgrade_take_target(m->upgrade);
        m->upgrade = upgrade_free(m->upgrade);
        Op *op = TAKE_PTR(m->upgrade_op);
        if (op) {
            diag_error(&op->diag,
                       "reld is stopping; the %s was abandoned part way; its next start boots the "
                       "permanent release",
                       op->phase == GATE_ROLLING_BACK ? "automatic rollback" : "change of release");
            finish(op, OUTCOME_NEEDS_OPERATOR, -ESHUTDOWN, NULL);
        }
    }
    if (m->gate_op && m->gate_op != m->upgrade_op) {
        Op *op = m->gate_op;
        diag_error(&op->diag, "reld is stopping; release %s was not found healthy yet",
                   op->phase == GATE_OLD ? op->before : op->to);
        finish(op, OUTCOME_NEEDS_OPERATOR, -ESHUTDOWN, NULL);
    }
    (void)supervisor_stop_all(m->sup, on_all_stopped, m); /* cannot fail */
}

Manager *manager_free(Manager *m)
{
    if (!m)
        return NULL;
    if (jobs_running(m->jobs)) {
        /* A worker thread still unpacks, plans or deletes and will touch
         * its operation: the process is about to exit, which ends it. */
        log_info("exiting with %u job(s) under way; staging directories go at the next start", jobs_running(m->jobs));
        return m;
    }
    m->upgrade = upgrade_free(m->upgrade);
    while (m->ops)
        op_free(m->ops);
    json_decref(m->last_outcome);
    events_listen(NULL, m);
    m->metrics = metrics_free(m->metrics);
    m->procstats = procstat_free(m->procstats);
    m->sup = supervisor_free(m->sup); /* SIGKILLs what still runs */
    m->running = release_def_free(m->running);
    m->stopping_target = release_def_free(m->stopping_target);
    m->jobs = jobs_free(m->jobs);
    history_close(m->hist);
    if (m->lock_fd >= 0)
        close(m->lock_fd);
    config_clear(&m->cfg);
    sd_event_unref(m->ev);
    free(m);
    return NULL;
}

/* ---- re-exec (reexec.h) ------------------------------------------------------------ */

json_t *manager_save(Manager *m, json_t *fds, Diag *diag)
{
    /* Nothing under way: a thread, a gate or an upgrade's steps cannot be
     * written down and resumed by another program. */
    const char *busy = m->upgrade                        ? "an upgrade or downgrade is under way"
                       : m->gate_op                      ? "an install waits for its health verdict"
                       : m->booting                      ? "a release is being installed"
                       : m->ops || jobs_running(m->jobs) ? "an operation is under way (unpack, remove, relup)"
                       : m->shutdown_done                ? "reld is stopping"
                                                         : NULL;
    if (busy) {
        diag_error(diag, "cannot re-execute reld now: %s; try again when it has ended", busy);
        return NULL;
    }
    Diag d = {0};
    json_t *sup = supervisor_save(m->sup, fds, &d);
    if (!sup) {
        diag_error(diag, "cannot re-execute reld now: %s; try again when it has ended", d.errors.v[0]);
        diag_clear(&d);
        return NULL;
    }
    return json_pack("{s:i, s:s?, s:O?, s:o}", "lock_fd", m->lock_fd, "running", m->running ? m->running->vsn : NULL,
                     "last_outcome", m->last_outcome, "supervisor", sup);
}

/* The root's lock that the reld before held, if saved names it. */
static bool saved_lock(Manager *m, const json_t *saved)
{
    json_t *v = json_object_get(saved, "lock_fd");
    char *lock = store_path_lock(m->cfg.root);
    struct stat a, b;
    bool ok = json_is_integer(v) && fstat((int)json_integer_value(v), &a) == 0 && stat(lock, &b) == 0 &&
              a.st_dev == b.st_dev && a.st_ino == b.st_ino;
    free(lock);
    if (ok)
        m->lock_fd = (int)json_integer_value(v);
    return ok;
}

/* Takes over the running release and its processes as saved: true; or
 * false after one line, with every process the reld before ran killed and
 * every descriptor saved for them closed (the start goes on as after a
 * crash: the permanent release boots). */
static bool restore(Manager *m, const json_t *saved)
{
    const char *running = json_string_value(json_object_get(saved, "running"));
    Diag d = {0};
    ReleaseDef *rel = NULL;
    int r = jobs_new(m->ev, &m->jobs);
    if (r >= 0)
        r = supervisor_new(m->ev, m->hist, m->cfg.root, &m->sup);
    if (r >= 0 && running)
        r = store_load_release(m->cfg.root, running, &rel, &d);
    if (r >= 0 && running)
        r = supervisor_restore(m->sup, rel, json_object_get(saved, "supervisor"), &d);
    if (r < 0) {
        size_t n = reexec_kill_children(NULL, 0);
        json_t *fds = json_object_get(saved, "proc_fds"), *v;
        size_t i;
        json_array_foreach(fds, i, v)(void) close((int)json_integer_value(v)); /* checked open at the start */
        log_error("re-executed, but the processes of release %s cannot be taken over: %s; %zu process(es) killed; "
                  "starting as after a crash of reld",
                  running ? running : "-", d.errors.n ? d.errors.v[0] : strerror(-r), n);
        release_def_free(rel);
        diag_clear(&d);
        return false;
    }
    diag_clear(&d);
    m->running = rel;
    json_t *last = json_object_get(saved, "last_outcome");
    m->last_outcome = json_is_object(last) ? json_incref(last) : NULL;
    /* Children it did not hand over (a health check's command under way):
     * nobody would reap them. */
    pid_t *pids = NULL;
    size_t n = supervisor_pids(m->sup, &pids);
    (void)reexec_kill_children(pids, n);
    free(pids);
    if (history_event(m->hist, "reexec", "reld", running, NULL) < 0)
        log_error("cannot record the re-exec: %s", history_last_error(m->hist));
    return true;
}

void manager_set_reexec(Manager *m, ManagerReexec reexec, void *userdata)
{
    m->reexec = reexec;
    m->reexec_data = userdata;
}

void manager_reexec(Manager *m, const char *who, const ManagerCaller *c)
{
    Diag d = {0};
    json_t *fds = json_array(), *st = m->reexec ? manager_save(m, fds, &d) : NULL;
    int r = -EBUSY;
    if (!m->reexec)
        diag_error(&d, "this reld cannot re-execute itself");
    if (st) {
        json_object_set(st, "proc_fds", fds); /* without the lock, which stays */
        json_t *state =
            json_pack("{s:i, s:o, s:o}", "version", REEXEC_STATE_VERSION, "fds", json_deep_copy(fds), "manager", st);
        reexec_keep_fd(state, m->lock_fd);
        log_info("re-executing reld, as %s asked", who);
        r = m->reexec(m->reexec_data, c->userdata, state, &d); /* returns only when it failed */
        json_decref(state);
    }
    json_decref(fds);
    c->done(c->userdata, r, NULL, &d);
    diag_clear(&d);
}
