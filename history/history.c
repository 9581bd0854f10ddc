#include "history.h"

#include <errno.h>
#include <limits.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* How long a statement waits for a lock held by another connection (an
 * administrator's sqlite3, a test) before it fails with -EBUSY. reld is the
 * only writer, and its main thread must not stall. */
#define BUSY_TIMEOUT_MS 250

struct History {
    sqlite3 *db;
    char error[512]; /* the reason of the last failure: history_last_error */
    /* Statements an upgrade runs for each batch of instruction rows,
     * prepared once (SQLITE_PREPARE_PERSISTENT) and kept until the close:
     * a prepare costs more than the insert of a row. */
    sqlite3_stmt *insert_instruction, *attempt_exists;
    int64_t commits; /* write transactions committed: history_commits */
};

/* Schema migrations: entry i takes the database from user_version i to
 * i + 1. Append only; never edit a released entry. */
static const char *const migrations[] = {
    /* 0 -> 1 */
    "CREATE TABLE releases ("
    "  vsn TEXT PRIMARY KEY,"
    "  name TEXT NOT NULL,"
    "  state TEXT NOT NULL CHECK (state IN ('unpacked', 'current', 'permanent', 'old')),"
    "  unpacked_at TEXT NOT NULL,"
    "  changed_at TEXT NOT NULL);"
    "CREATE UNIQUE INDEX one_current ON releases(state) WHERE state IN ('current', 'permanent');"
    "CREATE TABLE events ("
    "  id INTEGER PRIMARY KEY,"
    "  at TEXT NOT NULL,"
    "  kind TEXT NOT NULL,"
    "  who TEXT,"
    "  release TEXT,"
    "  detail TEXT);"
    "CREATE TABLE attempts ("
    "  id INTEGER PRIMARY KEY,"
    "  started_at TEXT NOT NULL,"
    "  finished_at TEXT,"
    "  who TEXT,"
    "  kind TEXT NOT NULL,"
    "  from_vsn TEXT,"
    "  to_vsn TEXT NOT NULL,"
    "  result TEXT,"
    "  detail TEXT,"
    "  duration_ms REAL);"
    "CREATE TABLE instructions ("
    "  attempt_id INTEGER NOT NULL REFERENCES attempts(id),"
    "  idx INTEGER NOT NULL,"
    "  instr TEXT NOT NULL,"
    "  outcome TEXT NOT NULL,"
    "  duration_us INTEGER NOT NULL,"
    "  PRIMARY KEY (attempt_id, idx));",
    /* 1 -> 2: when each instruction started, in microseconds after the
     * attempt's first, so that windows (suspend .. resume) include the
     * time between instructions. */
    "ALTER TABLE instructions ADD COLUMN start_us INTEGER;",
    /* 2 -> 3: the signature a release was verified with, as JSON
     * {key_id, trusted_comment, blake2b}; and when an attempt started in
     * microseconds since the epoch, so that its duration is exact (the
     * ISO text has milliseconds, and julianday() arithmetic rounds). */
    "ALTER TABLE releases ADD COLUMN signature TEXT; ALTER TABLE attempts ADD COLUMN started_us INTEGER;",
};
#define SCHEMA_VERSION ((int)(sizeof(migrations) / sizeof(migrations[0])))

/* An SQLite result code (extended) as a negative errno: the table in
 * history.h. */
static int errno_of(sqlite3 *db, int rc)
{
    switch (rc) {
    case SQLITE_OK:
    case SQLITE_ROW:
    case SQLITE_DONE:
        return 0;
    case SQLITE_CONSTRAINT_UNIQUE:
    case SQLITE_CONSTRAINT_PRIMARYKEY:
    case SQLITE_CONSTRAINT_ROWID:
        return -EEXIST;
    case SQLITE_IOERR_NOMEM:
        return -ENOMEM;
    }
    switch (rc & 0xff) {
    case SQLITE_CONSTRAINT:
        return -EINVAL;
    case SQLITE_FULL:
        return -ENOSPC;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return -EBUSY;
    case SQLITE_READONLY:
        return -EROFS;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
        return -EUCLEAN;
    case SQLITE_NOMEM:
        return -ENOMEM;
    case SQLITE_TOOBIG:
        return -E2BIG;
    case SQLITE_PERM:
    case SQLITE_AUTH:
        return -EACCES;
    case SQLITE_CANTOPEN: {
        int e = db ? sqlite3_system_errno(db) : 0;
        return e > 0 ? -e : -EIO;
    }
    default: /* SQLITE_IOERR_*, SQLITE_ERROR, SQLITE_PROTOCOL, ... */
        return -EIO;
    }
}

/* Records why a call failed (history_last_error) and returns r. */
__attribute__((format(printf, 3, 4))) static int failf(History *h, int r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    (void)vsnprintf(h->error, sizeof(h->error), fmt, ap); /* a long reason is cut */
    va_end(ap);
    return r;
}

/* An SQLite call failed with rc: its errno, SQLite's message recorded.
 * Called right after the failing call, before anything else touches the
 * connection's message. */
static int fail(History *h, int rc)
{
    int r = errno_of(h->db, rc);
    return failf(h, r < 0 ? r : -EIO, "%s", sqlite3_errmsg(h->db));
}

const char *history_last_error(History *h)
{
    return h ? h->error : "no database";
}

/* The time now, ISO 8601 in UTC with milliseconds, in buf. */
static void now_iso(char buf[static 32])
{
    struct timespec t;
    struct tm tm;
    if (clock_gettime(CLOCK_REALTIME, &t) < 0 || !gmtime_r(&t.tv_sec, &tm)) {
        t = (struct timespec){0}; /* cannot happen with the real-time clock */
        (void)gmtime_r(&t.tv_sec, &tm);
    }
    size_t n = strftime(buf, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    (void)snprintf(buf + n, 32 - n, ".%03ldZ", t.tv_nsec / 1000000); /* fits: 24 characters in all */
}

/* Microseconds since the epoch (the real-time clock, as the ISO texts). */
static int64_t now_us(void)
{
    struct timespec t;
    if (clock_gettime(CLOCK_REALTIME, &t) < 0)
        return 0; /* cannot happen with the real-time clock */
    return (int64_t)t.tv_sec * 1000000 + t.tv_nsec / 1000;
}

static int exec(History *h, const char *sql)
{
    int rc = sqlite3_exec(h->db, sql, NULL, NULL, NULL);
    return rc == SQLITE_OK ? 0 : fail(h, rc);
}

/* Prepares sql with its text arguments bound from 1 (NULL binds NULL). */
static int prep(History *h, const char *sql, int n, const char *const *args, sqlite3_stmt **ret)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(h->db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        return fail(h, rc);
    for (int i = 0; i < n; i++)
        if ((rc = sqlite3_bind_text(st, i + 1, args[i], -1, SQLITE_TRANSIENT)) != SQLITE_OK) {
            int r = fail(h, rc);
            (void)sqlite3_finalize(st); /* nothing ran: nothing to report */
            return r;
        }
    *ret = st;
    return 0;
}

static int bind_int64(History *h, sqlite3_stmt *st, int i, int64_t v)
{
    int rc = sqlite3_bind_int64(st, i, v);
    return rc == SQLITE_OK ? 0 : fail(h, rc);
}

static int bind_text(History *h, sqlite3_stmt *st, int i, const char *v)
{
    int rc = sqlite3_bind_text(st, i, v, -1, SQLITE_TRANSIENT);
    return rc == SQLITE_OK ? 0 : fail(h, rc);
}

/* Steps a statement that returns no rows. */
static int step_done(History *h, sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        return 0;
    if (rc == SQLITE_ROW)
        return failf(h, -EIO, "%s: returned a row", sqlite3_sql(st));
    return fail(h, rc);
}

/* Runs a statement that returns no rows. */
static int run(History *h, const char *sql, int n, const char *const *args)
{
    sqlite3_stmt *st = NULL;
    int r = prep(h, sql, n, args, &st);
    if (r < 0)
        return r;
    r = step_done(h, st);
    (void)sqlite3_finalize(st); /* repeats the step's result, already taken */
    return r;
}

/* Runs a query up to its first row: 0 with *ret on that row (the caller
 * finalizes it), -ENOENT without a row (no reason recorded: the caller
 * knows what was missing), or another -errno. */
static int first_row(History *h, const char *sql, int n, const char *const *args, sqlite3_stmt **ret)
{
    sqlite3_stmt *st = NULL;
    int r = prep(h, sql, n, args, &st);
    if (r < 0)
        return r;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *ret = st;
        return 0;
    }
    r = rc == SQLITE_DONE ? -ENOENT : fail(h, rc);
    (void)sqlite3_finalize(st); /* repeats the step's result, already taken */
    return r;
}

/* The text of the first column of the first row: 0 and *ret (caller
 * frees), -ENOENT without a row or with NULL there, or -errno. */
static int query_text(History *h, const char *sql, int n, const char *const *args, char **ret)
{
    sqlite3_stmt *st = NULL;
    int r = first_row(h, sql, n, args, &st);
    if (r < 0)
        return r;
    const char *text = (const char *)sqlite3_column_text(st, 0);
    if (!text)
        r = sqlite3_errcode(h->db) == SQLITE_NOMEM ? failf(h, -ENOMEM, "out of memory")
                                                   : failf(h, -ENOENT, "%s: NULL", sqlite3_sql(st));
    else if (!(*ret = strdup(text)))
        r = failf(h, -ENOMEM, "out of memory");
    (void)sqlite3_finalize(st); /* the step succeeded */
    return r;
}

/* Transactions: begin, then end(h, r) with the body's result r. end
 * commits when r >= 0 and returns r; otherwise, or when the COMMIT fails,
 * it rolls back and returns the error. */
static int begin(History *h)
{
    return exec(h, "BEGIN IMMEDIATE");
}

static int end(History *h, int r)
{
    if (r >= 0) {
        int c = exec(h, "COMMIT");
        if (c == 0)
            return r;
        r = c;
    }
    /* After some errors (SQLITE_FULL, SQLITE_IOERR, ...) SQLite has
     * rolled back already. */
    if (!sqlite3_get_autocommit(h->db)) {
        int rc = sqlite3_exec(h->db, "ROLLBACK", NULL, NULL, NULL);
        if (rc != SQLITE_OK) {
            size_t len = strlen(h->error);
            (void)snprintf(h->error + len, sizeof(h->error) - len, "; the rollback failed too: %s",
                           sqlite3_errmsg(h->db)); /* a long reason is cut */
        }
    }
    return r;
}

#define IN_TRANSACTION(h, body)                                                                                        \
    ({                                                                                                                 \
        int r_ = begin(h);                                                                                             \
        r_ == 0 ? end((h), (body)) : r_;                                                                               \
    })

int history_schema_version(History *h)
{
    sqlite3_stmt *st = NULL;
    int r = first_row(h, "PRAGMA user_version", 0, NULL, &st);
    if (r == -ENOENT)
        return failf(h, -EIO, "PRAGMA user_version returned no row");
    if (r < 0)
        return r;
    int v = sqlite3_column_int(st, 0);
    (void)sqlite3_finalize(st); /* the step succeeded */
    return v;
}

/* Sets a PRAGMA (set) and reads it back (get): it must be want, or
 * -ENOTSUP (e.g. a file system where WAL is not possible). */
static int pragma(History *h, const char *set, const char *get, const char *want)
{
    char *v = NULL;
    int r = exec(h, set);
    if (r == 0)
        r = query_text(h, get, 0, NULL, &v);
    if (r == -ENOENT)
        r = failf(h, -EIO, "%s returned nothing", get);
    if (r == 0 && (!v || strcasecmp(v, want) != 0))
        r = failf(h, -ENOTSUP, "%s is %s, not %s", get, v ? v : "NULL", want);
    free(v);
    return r;
}

static int migrate(History *h, int from)
{
    char sql[64];
    (void)snprintf(sql, sizeof(sql), "PRAGMA user_version=%d", from + 1); /* fits */
    int r = begin(h);
    if (r < 0)
        return r;
    r = exec(h, migrations[from]);
    if (r == 0)
        r = exec(h, sql);
    return end(h, r);
}

/* PRAGMA quick_check: the b-trees' structure, page by page (not the
 * indexes against their tables, which integrity_check adds). Read only.
 * Measured on this schema: 5.5 ms with 10,000 events (1.5 MB) in the page
 * cache, 63 ms from a cold disk; linear in the file's size. */
static int quick_check(History *h)
{
    char *v = NULL;
    int r = query_text(h, "PRAGMA quick_check(1)", 0, NULL, &v);
    if (r == -ENOENT)
        r = failf(h, -EIO, "PRAGMA quick_check returned nothing");
    if (r == 0 && (!v || strcmp(v, "ok") != 0)) {
        for (char *p = v; p && *p; p++) /* its messages hold newlines: one line */
            if (*p == '\n' || *p == '\r' || *p == '\t')
                *p = ' ';
        r = failf(h, -EUCLEAN, "the database is damaged (quick_check: %s)", v ? v : "no answer");
    }
    free(v);
    return r;
}

/* Every table of the schema is there: a database that lost one (an
 * administrator's DROP) is damaged, not merely old. */
static int check_tables(History *h)
{
    static const char *const tables[] = {"releases", "events", "attempts", "instructions"};
    for (size_t i = 0; i < sizeof(tables) / sizeof(tables[0]); i++) {
        sqlite3_stmt *st = NULL;
        int r = first_row(h, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", 1, &tables[i], &st);
        (void)sqlite3_finalize(st); /* NULL, or a step that succeeded */
        if (r == -ENOENT)
            return failf(h, -EUCLEAN, "the database is damaged: it has no table %s", tables[i]);
        if (r < 0)
            return r;
    }
    return 0;
}

/* SQLite's commit hook: a write transaction goes to commit (read ones
 * do not call it). 0: the commit goes on. */
static int on_commit(void *userdata)
{
    ((History *)userdata)->commits++;
    return 0;
}

static int open_db(History *h, const char *path, bool create)
{
    if (!create) {
        /* Before SQLite sees it: an empty file would be taken for a new
         * database (and a -wal beside it deleted). */
        struct stat st;
        if (stat(path, &st) < 0)
            return failf(h, -errno, "%s", errno == ENOENT ? "no such file" : strerror(errno));
        if (S_ISREG(st.st_mode) && st.st_size == 0)
            return failf(h, -EUCLEAN, "the file is empty (0 bytes): it holds no database");
    }
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_FULLMUTEX | (create ? SQLITE_OPEN_CREATE : 0);
    int rc = sqlite3_open_v2(path, &h->db, flags, NULL);
    if (rc != SQLITE_OK)
        return fail(h, rc);
    (void)sqlite3_commit_hook(h->db, on_commit, h); /* returns the previous hook: none */
    if ((rc = sqlite3_extended_result_codes(h->db, 1)) != SQLITE_OK ||
        (rc = sqlite3_busy_timeout(h->db, BUSY_TIMEOUT_MS)) != SQLITE_OK)
        return fail(h, rc);
    /* A file reld may not write (SQLite then opens it read-only): said
     * now rather than at the first change. */
    if (sqlite3_db_readonly(h->db, "main") != 0)
        return failf(h, -EROFS, "the database is read-only");
    /* A damaged file is refused before anything writes to it, and the
     * close of a refused file must not checkpoint its WAL into it and
     * delete the WAL (what a recovery keeps aside). */
    int dummy = 0;
    if ((rc = sqlite3_db_config(h->db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, &dummy)) != SQLITE_OK)
        return fail(h, rc);
    int r = quick_check(h);
    int v = r == 0 ? history_schema_version(h) : r;
    if (v < 0)
        return v;
    if (!create && v == 0)
        return failf(h, -EUCLEAN, "the file holds no reld history (an SQLite database without its tables)");
    if (v > SCHEMA_VERSION)
        return failf(h, -EPROTO, "schema version %d is newer than this reld's (%d)", v, SCHEMA_VERSION);
    if ((rc = sqlite3_db_config(h->db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 0, &dummy)) != SQLITE_OK)
        return fail(h, rc);
    /* WAL with synchronous=NORMAL: every transaction is atomic and survives
     * a crash of reld (kill -9); only the last ones may be lost if the
     * machine loses power. FULL would fsync on every commit, and the
     * executor commits between suspend and resume. */
    r = pragma(h, "PRAGMA journal_mode=WAL", "PRAGMA journal_mode", "wal");
    if (r == 0)
        r = pragma(h, "PRAGMA synchronous=NORMAL", "PRAGMA synchronous", "1");
    if (r == 0)
        r = pragma(h, "PRAGMA foreign_keys=ON", "PRAGMA foreign_keys", "1");
    for (; r == 0 && v < SCHEMA_VERSION; v++)
        r = migrate(h, v);
    return r == 0 ? check_tables(h) : r;
}

/* The -wal and -shm SQLite makes beside a WAL database when it opens it,
 * even to find it damaged. Those a refused open made go again, so that a
 * refused file is left as it was: an empty -wal holds nothing, and a -shm
 * is an index of the -wal. Only files that were not there before: while
 * any connection has the database open, both exist. */
typedef struct Sidecars {
    char wal[PATH_MAX + 8], shm[PATH_MAX + 8];
    bool had_wal, had_shm, ok;
} Sidecars;

static void sidecars_note(Sidecars *s, const char *path)
{
    struct stat st;
    s->ok = (size_t)snprintf(s->wal, sizeof(s->wal), "%s-wal", path) < sizeof(s->wal) &&
            (size_t)snprintf(s->shm, sizeof(s->shm), "%s-shm", path) < sizeof(s->shm);
    s->had_wal = lstat(s->wal, &st) == 0;
    s->had_shm = lstat(s->shm, &st) == 0;
}

static void sidecars_remove_new(const Sidecars *s)
{
    struct stat st;
    if (!s->ok)
        return;
    if (!s->had_wal && lstat(s->wal, &st) == 0 && S_ISREG(st.st_mode) && st.st_size == 0)
        (void)unlink(s->wal); /* best effort: an empty file left over harms nothing */
    if (!s->had_shm && lstat(s->shm, &st) == 0 && S_ISREG(st.st_mode))
        (void)unlink(s->shm);
}

static int open_history(const char *path, bool create, History **ret, char **err)
{
    if (err)
        *err = NULL;
    History *h = calloc(1, sizeof(*h));
    if (!h)
        return -ENOMEM;
    Sidecars sc = {0};
    if (path)
        sidecars_note(&sc, path);
    int r = path ? open_db(h, path, create) : failf(h, -EINVAL, "no path");
    if (r < 0) {
        if (err && asprintf(err, "%s: %s", path ? path : "history", h->error) < 0)
            *err = NULL;
        history_close(h);
        sidecars_remove_new(&sc);
        return r;
    }
    *ret = h;
    return 0;
}

int history_open(const char *path, History **ret, char **err)
{
    return open_history(path, true, ret, err);
}

int history_open_existing(const char *path, History **ret, char **err)
{
    return open_history(path, false, ret, err);
}

History *history_close(History *h)
{
    if (!h)
        return NULL;
    (void)sqlite3_finalize(h->insert_instruction); /* NULL, or its last step's result, already taken */
    (void)sqlite3_finalize(h->attempt_exists);
    (void)sqlite3_close_v2(h->db); /* SQLITE_OK: every statement is finalized */
    free(h);
    return NULL;
}

static bool is_state(const char *s)
{
    return s && (strcmp(s, RELEASE_UNPACKED) == 0 || strcmp(s, RELEASE_CURRENT) == 0 ||
                 strcmp(s, RELEASE_PERMANENT) == 0 || strcmp(s, RELEASE_OLD) == 0);
}

static int event_locked(History *h, const char *at, const char *kind, const char *who, const char *release,
                        json_t *detail)
{
    if (!kind || !*kind)
        return failf(h, -EINVAL, "an event needs a kind");
    char *d = detail ? json_dumps(detail, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    if (detail && !d)
        return failf(h, -ENOMEM, "cannot write the event's detail as JSON");
    const char *args[] = {at, kind, who, release, d};
    int r = run(h, "INSERT INTO events(at, kind, who, release, detail) VALUES (?, ?, ?, ?, ?)", 5, args);
    free(d);
    return r;
}

int history_event(History *h, const char *kind, const char *who, const char *release, json_t *detail)
{
    char at[32];
    now_iso(at);
    return event_locked(h, at, kind, who, release, detail);
}

/* The row and its "unpacked" event; with a signature (JSON text), that
 * in the row and a "signature" event beside it. */
static int release_add(History *h, const char *vsn, const char *name, const char *who, json_t *signature)
{
    char at[32];
    now_iso(at);
    char *sig = signature ? json_dumps(signature, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    if (signature && !sig)
        return failf(h, -ENOMEM, "out of memory");
    const char *args[] = {vsn, name, at, at, sig};
    int r = run(h,
                "INSERT INTO releases(vsn, name, state, unpacked_at, changed_at, signature) "
                "VALUES (?, ?, 'unpacked', ?, ?, ?)",
                5, args);
    free(sig);
    if (r == -EEXIST) {
        char why[sizeof(h->error)];
        (void)snprintf(why, sizeof(why), "%s", h->error);
        return failf(h, r, "release %s is already known (%s)", vsn, why);
    }
    if (r < 0)
        return r;
    json_t *d = json_pack("{s:s}", "name", name);
    if (!d)
        return failf(h, -ENOMEM, "out of memory");
    r = event_locked(h, at, "unpacked", who, vsn, d);
    json_decref(d);
    if (r == 0 && signature)
        r = event_locked(h, at, "signature", who, vsn, signature);
    return r;
}

int history_release_add(History *h, const char *vsn, const char *name, const char *who)
{
    return history_release_add_signed(h, vsn, name, who, NULL);
}

int history_release_add_signed(History *h, const char *vsn, const char *name, const char *who, json_t *signature)
{
    if (!vsn || !*vsn || !name || !*name)
        return failf(h, -EINVAL, "a release needs a version and a name");
    if (signature && !json_is_object(signature))
        return failf(h, -EINVAL, "a release's signature is a JSON object");
    return IN_TRANSACTION(h, release_add(h, vsn, name, who, signature));
}

int history_release_state(History *h, const char *vsn, char **ret)
{
    if (!vsn)
        return failf(h, -EINVAL, "no release version");
    int r = query_text(h, "SELECT state FROM releases WHERE vsn = ?", 1, &vsn, ret);
    return r == -ENOENT ? failf(h, r, "release %s is not known", vsn) : r;
}

int history_release_in_state(History *h, const char *state, char **ret_vsn)
{
    if (!state || (strcmp(state, RELEASE_CURRENT) != 0 && strcmp(state, RELEASE_PERMANENT) != 0))
        return failf(h, -EINVAL, "'%s' is not current or permanent", state ? state : "(null)");
    int r = query_text(h, "SELECT vsn FROM releases WHERE state = ?", 1, &state, ret_vsn);
    return r == -ENOENT ? failf(h, r, "no release is %s", state) : r;
}

static int recover(History *h, const HistoryRelease *v, size_t n, const char *who, json_t *detail)
{
    sqlite3_stmt *st = NULL;
    int r = first_row(h, "SELECT vsn FROM releases LIMIT 1", 0, NULL, &st);
    if (r == 0) {
        r = failf(h, -EEXIST, "the database knows release %s already: a recovery fills a new one",
                  (const char *)sqlite3_column_text(st, 0));
        (void)sqlite3_finalize(st); /* the step succeeded */
        return r;
    }
    if (r != -ENOENT)
        return r;
    char at[32];
    now_iso(at);
    r = 0;
    for (size_t k = 0; r == 0 && k < n; k++) {
        const char *args[] = {v[k].vsn, v[k].name, v[k].state, at, at};
        r = run(h, "INSERT INTO releases(vsn, name, state, unpacked_at, changed_at) VALUES (?, ?, ?, ?, ?)", 5, args);
        if (r == -EEXIST) {
            char why[sizeof(h->error)];
            (void)snprintf(why, sizeof(why), "%s", h->error);
            r = failf(h, r, "release %s cannot be recorded as %s (%s)", v[k].vsn, v[k].state, why);
        }
    }
    return r == 0 ? event_locked(h, at, "recovered", who, NULL, detail) : r;
}

int history_recover(History *h, const HistoryRelease *v, size_t n, const char *who, json_t *detail)
{
    if (n && !v)
        return failf(h, -EINVAL, "no releases");
    for (size_t k = 0; k < n; k++) {
        if (!v[k].vsn || !*v[k].vsn || !v[k].name || !*v[k].name)
            return failf(h, -EINVAL, "a release needs a version and a name");
        if (!is_state(v[k].state))
            return failf(h, -EINVAL, "'%s' is not a release state", v[k].state ? v[k].state : "(null)");
    }
    return IN_TRANSACTION(h, recover(h, v, n, who, detail));
}

static int set_state(History *h, const char *vsn, const char *state, const char *who)
{
    char *old = NULL, at[32];
    int r = history_release_state(h, vsn, &old);
    if (r < 0)
        return r;
    now_iso(at);
    const char *args[] = {state, at, vsn};
    r = run(h, "UPDATE releases SET state = ?, changed_at = ? WHERE vsn = ?", 3, args);
    if (r == -EEXIST) {
        char why[sizeof(h->error)];
        (void)snprintf(why, sizeof(why), "%s", h->error);
        r = failf(h, r, "release %s cannot be %s: another release is (%s)", vsn, state, why);
    }
    json_t *d = r == 0 ? json_pack("{s:s, s:s}", "from", old, "to", state) : NULL;
    if (r == 0 && !d)
        r = failf(h, -ENOMEM, "out of memory");
    if (r == 0)
        r = event_locked(h, at, "state", who, vsn, d);
    json_decref(d);
    free(old);
    return r;
}

int history_release_set_state(History *h, const char *vsn, const char *state, const char *who)
{
    if (!vsn)
        return failf(h, -EINVAL, "no release version");
    if (!is_state(state))
        return failf(h, -EINVAL, "'%s' is not a release state", state ? state : "(null)");
    return IN_TRANSACTION(h, set_state(h, vsn, state, who));
}

static int set_states(History *h, const HistoryStateChange *v, size_t n, const char *who)
{
    int r = 0;
    for (size_t k = 0; k < n && r == 0; k++)
        r = set_state(h, v[k].vsn, v[k].state, who);
    return r;
}

int history_release_set_states(History *h, const HistoryStateChange *v, size_t n, const char *who)
{
    for (size_t k = 0; k < n; k++) {
        if (!v[k].vsn)
            return failf(h, -EINVAL, "no release version");
        if (!is_state(v[k].state))
            return failf(h, -EINVAL, "'%s' is not a release state", v[k].state ? v[k].state : "(null)");
    }
    return IN_TRANSACTION(h, set_states(h, v, n, who));
}

static int release_remove(History *h, const char *vsn, const char *who)
{
    char *state = NULL;
    int r = history_release_state(h, vsn, &state);
    free(state);
    if (r < 0)
        return r;
    r = run(h, "DELETE FROM releases WHERE vsn = ?", 1, &vsn);
    return r == 0 ? history_event(h, "removed", who, vsn, NULL) : r;
}

int history_release_remove(History *h, const char *vsn, const char *who)
{
    if (!vsn)
        return failf(h, -EINVAL, "no release version");
    return IN_TRANSACTION(h, release_remove(h, vsn, who));
}

/* A column's value as JSON: columns named detail or instr holding JSON
 * are parsed back. */
static int column(History *h, sqlite3_stmt *st, int c, json_t **ret)
{
    const char *name = sqlite3_column_name(st, c);
    json_t *v = NULL;
    switch (sqlite3_column_type(st, c)) {
    case SQLITE_INTEGER:
        v = json_integer(sqlite3_column_int64(st, c));
        break;
    case SQLITE_FLOAT:
        v = json_real(sqlite3_column_double(st, c));
        break;
    case SQLITE_NULL:
        v = json_null();
        break;
    default: {
        const char *text = (const char *)sqlite3_column_text(st, c);
        if (!text || !name)
            return failf(h, -ENOMEM, "out of memory");
        if (strcmp(name, "detail") == 0 || strcmp(name, "instr") == 0 || strcmp(name, "signature") == 0)
            v = json_loads(text, 0, NULL); /* NULL when it is plain text */
        if (!v && !(v = json_string(text)))
            return failf(h, -EILSEQ, "%s: column %s holds text that is not UTF-8", sqlite3_sql(st), name);
    }
    }
    if (!v)
        return failf(h, -ENOMEM, "out of memory");
    *ret = v;
    return 0;
}

/* The rows of a query as a JSON array of objects keyed by column name. */
static int rows(History *h, sqlite3_stmt *st, json_t **ret)
{
    json_t *a = json_array();
    if (!a)
        return failf(h, -ENOMEM, "out of memory");
    int rc = SQLITE_DONE, r = 0;
    while (r == 0 && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        json_t *o = json_object();
        if (json_array_append_new(a, o) < 0) /* takes o, also on failure */
            r = failf(h, -ENOMEM, "out of memory");
        for (int c = 0; r == 0 && c < sqlite3_column_count(st); c++) {
            json_t *v = NULL;
            if ((r = column(h, st, c, &v)) == 0 && json_object_set_new(o, sqlite3_column_name(st, c), v) < 0)
                r = failf(h, -ENOMEM, "out of memory");
        }
    }
    if (r == 0 && rc != SQLITE_DONE)
        r = fail(h, rc);
    if (r < 0) {
        json_decref(a);
        return r;
    }
    *ret = a;
    return 0;
}

/* The rows of a query without arguments. */
static int query_rows(History *h, const char *sql, json_t **ret)
{
    sqlite3_stmt *st = NULL;
    int r = prep(h, sql, 0, NULL, &st);
    if (r < 0)
        return r;
    r = rows(h, st, ret);
    (void)sqlite3_finalize(st); /* repeats the last step's result, already taken */
    return r;
}

int history_releases(History *h, json_t **ret)
{
    return query_rows(h,
                      "SELECT vsn, name, state, unpacked_at, changed_at, signature FROM releases "
                      "ORDER BY unpacked_at, vsn",
                      ret);
}

int history_attempt_begin(History *h, const char *who, const char *kind, const char *from, const char *to,
                          int64_t *ret_id)
{
    if (!kind || !to)
        return failf(h, -EINVAL, "an attempt needs a kind and a target release");
    char at[32], us[32];
    now_iso(at);
    (void)snprintf(us, sizeof(us), "%lld", (long long)now_us());
    const char *args[] = {at, who, kind, from, to, us};
    int r = run(h,
                "INSERT INTO attempts(started_at, who, kind, from_vsn, to_vsn, started_us) "
                "VALUES (?, ?, ?, ?, ?, CAST(? AS INTEGER))",
                6, args);
    if (r == 0)
        *ret_id = sqlite3_last_insert_rowid(h->db);
    return r;
}

/* The statement *cache holds (prepared from sql the first time), reset
 * and with its bindings cleared: 0 and *ret, or -errno. */
static int cached(History *h, sqlite3_stmt **cache, const char *sql, sqlite3_stmt **ret)
{
    if (!*cache) {
        int rc = sqlite3_prepare_v3(h->db, sql, -1, SQLITE_PREPARE_PERSISTENT, cache, NULL);
        if (rc != SQLITE_OK)
            return fail(h, rc);
    }
    (void)sqlite3_reset(*cache);          /* repeats its last step's result, already taken */
    (void)sqlite3_clear_bindings(*cache); /* SQLITE_OK always */
    *ret = *cache;
    return 0;
}

static int attempt_exists(History *h, int64_t attempt)
{
    sqlite3_stmt *st = NULL;
    int r = cached(h, &h->attempt_exists, "SELECT 1 FROM attempts WHERE id = ?", &st);
    if (r < 0)
        return r;
    if ((r = bind_int64(h, st, 1, attempt)) == 0) {
        int rc = sqlite3_step(st);
        r = rc == SQLITE_ROW    ? 0
            : rc == SQLITE_DONE ? failf(h, -ENOENT, "attempt %lld is not known", (long long)attempt)
                                : fail(h, rc);
    }
    (void)sqlite3_reset(st); /* ends its read; repeats the step's result, already taken */
    return r;
}

static int attempt_instructions(History *h, int64_t attempt, const HistoryInstruction *v, size_t n)
{
    int r = attempt_exists(h, attempt);
    if (r < 0)
        return r;
    sqlite3_stmt *st = NULL;
    r = cached(h, &h->insert_instruction,
               "INSERT OR REPLACE INTO instructions(attempt_id, idx, instr, outcome, duration_us, start_us) "
               "VALUES (?, ?, ?, ?, ?, ?)",
               &st);
    if (r < 0)
        return r;
    for (size_t k = 0; r == 0 && k < n; k++) {
        char *text = json_dumps(v[k].instr, JSON_COMPACT | JSON_ENCODE_ANY);
        if (!text) {
            r = failf(h, -ENOMEM, "cannot write instruction %d as JSON", v[k].idx);
            break;
        }
        (void)sqlite3_reset(st); /* repeats the previous step's result, already taken */
        if ((r = bind_int64(h, st, 1, attempt)) == 0 && (r = bind_int64(h, st, 2, v[k].idx)) == 0 &&
            (r = bind_text(h, st, 3, text)) == 0 && (r = bind_text(h, st, 4, v[k].outcome)) == 0 &&
            (r = bind_int64(h, st, 5, v[k].duration_us)) == 0 && (r = bind_int64(h, st, 6, v[k].start_us)) == 0)
            r = step_done(h, st);
        free(text);
    }
    (void)sqlite3_reset(st); /* kept for the next batch; repeats the last step's result, already taken */
    return r;
}

int64_t history_commits(const History *h)
{
    return h ? h->commits : 0;
}

int history_attempt_instructions(History *h, int64_t attempt, const HistoryInstruction *v, size_t n)
{
    if (!n)
        return 0;
    if (!v)
        return failf(h, -EINVAL, "no instructions");
    for (size_t k = 0; k < n; k++)
        if (!v[k].instr || !v[k].outcome)
            return failf(h, -EINVAL, "instruction %d needs its instruction and its outcome", v[k].idx);
    return IN_TRANSACTION(h, attempt_instructions(h, attempt, v, n));
}

static int attempt_end(History *h, int64_t attempt, const char *result, const char *detail)
{
    char at[32];
    now_iso(at);
    sqlite3_stmt *st = NULL;
    /* Exact to the microsecond from started_us (schema 3); attempts begun
     * before it have only the ISO text. */
    int r = prep(h,
                 "UPDATE attempts SET finished_at = ?1, result = ?2, detail = ?3, "
                 "duration_ms = CASE WHEN started_us IS NULL "
                 "THEN (julianday(?1) - julianday(started_at)) * 86400000.0 "
                 "ELSE (?5 - started_us) / 1000.0 END WHERE id = ?4",
                 3, (const char *const[]){at, result, detail}, &st);
    if (r < 0)
        return r;
    if ((r = bind_int64(h, st, 5, now_us())) == 0 && (r = bind_int64(h, st, 4, attempt)) == 0 &&
        (r = step_done(h, st)) == 0 && sqlite3_changes(h->db) == 0)
        r = failf(h, -ENOENT, "attempt %lld is not known", (long long)attempt);
    (void)sqlite3_finalize(st); /* repeats the step's result, already taken */
    if (r < 0)
        return r;
    /* Rows still "running" in an ended attempt lost their outcome when it
     * could not be written (the attempt stopped there): say so. */
    char id[32];
    snprintf(id, sizeof(id), "%lld", (long long)attempt);
    return run(h,
               "UPDATE instructions SET outcome = 'not recorded: its outcome could not be written' "
               "WHERE attempt_id = CAST(?1 AS INTEGER) AND outcome = 'running'",
               1, (const char *const[]){id});
}

int history_attempt_end(History *h, int64_t attempt, const char *result, const char *detail)
{
    if (!result)
        return failf(h, -EINVAL, "an attempt ends with a result");
    return IN_TRANSACTION(h, attempt_end(h, attempt, result, detail));
}

static int list(History *h, int limit, json_t **ret)
{
    json_t *events = NULL, *attempts = NULL;
    sqlite3_stmt *st = NULL;
    int r = prep(h,
                 "SELECT * FROM (SELECT id, at, kind, who, release, detail FROM events "
                 "ORDER BY id DESC LIMIT ?) ORDER BY id",
                 0, NULL, &st);
    if (r == 0 && (r = bind_int64(h, st, 1, limit)) == 0)
        r = rows(h, st, &events);
    (void)sqlite3_finalize(st); /* NULL or its last step's result, already taken */
    st = NULL;
    if (r == 0)
        r = prep(h,
                 "SELECT * FROM (SELECT id, started_at, finished_at, who, kind, from_vsn, to_vsn, result, "
                 "detail, duration_ms FROM attempts ORDER BY id DESC LIMIT ?) ORDER BY id",
                 0, NULL, &st);
    if (r == 0 && (r = bind_int64(h, st, 1, limit)) == 0)
        r = rows(h, st, &attempts);
    (void)sqlite3_finalize(st);
    st = NULL;
    if (r == 0)
        r = prep(h,
                 "SELECT idx, instr, outcome, start_us, duration_us FROM instructions WHERE attempt_id = ? "
                 "ORDER BY idx",
                 0, NULL, &st);
    size_t i;
    json_t *a;
    json_array_foreach(attempts, i, a)
    {
        json_t *in = NULL;
        if (r < 0)
            break;
        (void)sqlite3_reset(st); /* repeats the previous step's result, already taken */
        if ((r = bind_int64(h, st, 1, json_integer_value(json_object_get(a, "id")))) == 0 &&
            (r = rows(h, st, &in)) == 0 && json_object_set_new(a, "instructions", in) < 0)
            r = failf(h, -ENOMEM, "out of memory");
    }
    (void)sqlite3_finalize(st);
    json_t *o = r == 0 ? json_pack("{s:O, s:O}", "events", events, "attempts", attempts) : NULL;
    if (r == 0 && !o)
        r = failf(h, -ENOMEM, "out of memory");
    json_decref(events);
    json_decref(attempts);
    if (r == 0)
        *ret = o;
    return r;
}

int history_list(History *h, int limit, json_t **ret)
{
    if (limit <= 0)
        return failf(h, -EINVAL, "a list of %d entries", limit);
    /* One read transaction: events, attempts and instructions of one
     * moment. */
    json_t *o = NULL;
    int r = exec(h, "BEGIN");
    if (r == 0)
        r = end(h, list(h, limit, &o));
    if (r < 0) {
        json_decref(o);
        return r;
    }
    *ret = o;
    return 0;
}

static int attempts_interrupted(History *h)
{
    /* Instructions written as running (before they ran) that never got
     * their outcome: reld died while doing them. */
    int r = run(h,
                "UPDATE instructions SET outcome = 'interrupted' WHERE outcome = 'running' AND attempt_id IN "
                "(SELECT id FROM attempts WHERE result IS NULL)",
                0, NULL);
    if (r == 0)
        r = run(h,
                "UPDATE attempts SET result = 'interrupted', detail = 'reld stopped during the attempt; it restarted "
                "on the permanent release', finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE result IS NULL",
                0, NULL);
    return r < 0 ? r : sqlite3_changes(h->db);
}

int history_attempts_interrupted(History *h)
{
    return IN_TRANSACTION(h, attempts_interrupted(h));
}

/* One suspend..resume window of the pauses query, summed over attempts. */
static void pause_add(json_t *windows, int64_t idx, json_t *modules, double ms)
{
    json_t *w = NULL;
    size_t i;
    json_t *v;
    json_array_foreach(windows, i, v)
    {
        if (json_integer_value(json_object_get(v, "idx")) == idx)
            w = v;
    }
    if (!w) {
        json_array_append_new(windows, json_pack("{s:I, s:O, s:i, s:f, s:f, s:f}", "idx", (json_int_t)idx, "modules",
                                                 modules ? modules : json_null(), "n", 0, "min_ms", ms, "max_ms", ms,
                                                 "last_ms", ms));
        w = json_array_get(windows, json_array_size(windows) - 1);
    }
    double lo = json_real_value(json_object_get(w, "min_ms")), hi = json_real_value(json_object_get(w, "max_ms"));
    json_object_set_new(w, "n", json_integer(json_integer_value(json_object_get(w, "n")) + 1));
    json_object_set_new(w, "min_ms", json_real(ms < lo ? ms : lo));
    json_object_set_new(w, "max_ms", json_real(ms > hi ? ms : hi));
    json_object_set_new(w, "last_ms", json_real(ms)); /* rows come oldest attempt first */
}

/* The windows of rows (one attempt's instructions after another, by idx). */
static json_t *pause_windows(json_t *rows, int64_t *ret_attempts)
{
    json_t *windows = json_array();
    int64_t attempt = -1, n_attempts = 0;
    json_t *open = NULL; /* the suspend whose resume is to come */
    size_t i;
    json_t *row;
    json_array_foreach(rows, i, row)
    {
        int64_t a = json_integer_value(json_object_get(row, "attempt"));
        if (a != attempt) {
            attempt = a;
            open = NULL;
            n_attempts++;
        }
        const char *op = json_string_value(json_object_get(json_object_get(row, "instr"), "op"));
        if (!op)
            continue;
        if (strcmp(op, "suspend") == 0) {
            open = row;
        } else if (strcmp(op, "resume") == 0 && open) {
            int64_t start = json_integer_value(json_object_get(open, "start_us"));
            int64_t end = json_integer_value(json_object_get(row, "start_us")) +
                          json_integer_value(json_object_get(row, "duration_us"));
            json_t *mods = json_object_get(json_object_get(open, "instr"), "modules");
            pause_add(windows, json_integer_value(json_object_get(open, "idx")), mods, (double)(end - start) / 1000.0);
            open = NULL;
        }
    }
    *ret_attempts = n_attempts;
    return windows;
}

/* The pause rows of attempts that went through (result ok) with timings
 * (schema 2), the rehearsal's record (idx 0) left out; the caller adds
 * which attempts. */
#define PAUSE_ROWS                                                                                                     \
    "SELECT i.attempt_id AS attempt, i.idx, i.instr, i.start_us, i.duration_us FROM instructions i JOIN attempts a "   \
    "ON a.id = i.attempt_id WHERE a.result = 'ok' AND a.kind IN ('upgrade', 'downgrade') AND i.idx > 0 AND "           \
    "i.outcome = 'ok' AND i.start_us IS NOT NULL AND "

/* The attempts from -> to, or (attempt_id > 0) that attempt alone, in a
 * read transaction of its own. */
static int pauses(History *h, const char *from, const char *to, int64_t attempt_id, json_t **ret)
{
    sqlite3_stmt *st = NULL;
    json_t *r_rows = NULL;
    int r = exec(h, "BEGIN");
    if (r == 0 && attempt_id > 0) {
        r = prep(h, PAUSE_ROWS "a.id = ?1 ORDER BY i.idx", 0, NULL, &st);
        if (r == 0 && (r = bind_int64(h, st, 1, attempt_id)) < 0)
            (void)sqlite3_finalize(st); /* nothing ran: nothing to report */
    } else if (r == 0) {
        r = prep(h, PAUSE_ROWS "a.from_vsn = ?1 AND a.to_vsn = ?2 ORDER BY i.attempt_id, i.idx", 2,
                 (const char *const[]){from, to}, &st);
    }
    if (r == 0) {
        r = rows(h, st, &r_rows);
        (void)sqlite3_finalize(st); /* NULL or its last step's result, already taken */
    }
    r = end(h, r);
    if (r < 0) {
        json_decref(r_rows);
        return r;
    }
    int64_t n = 0;
    json_t *windows = pause_windows(r_rows, &n);
    json_decref(r_rows);
    json_t *o = json_pack("{s:I, s:o}", "attempts", (json_int_t)n, "windows", windows);
    if (!o)
        return failf(h, -ENOMEM, "out of memory");
    *ret = o;
    return 0;
}

int history_pauses(History *h, const char *from, const char *to, json_t **ret)
{
    if (!from || !to || !ret)
        return failf(h, -EINVAL, "the pauses of an upgrade need its two releases");
    return pauses(h, from, to, 0, ret);
}

int history_attempt_pauses(History *h, int64_t attempt_id, json_t **ret)
{
    if (attempt_id <= 0 || !ret)
        return failf(h, -EINVAL, "the pauses of an attempt need its id");
    return pauses(h, NULL, NULL, attempt_id, ret);
}
