#include "history.h"

#include <errno.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct History {
    sqlite3 *db;
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
};
#define SCHEMA_VERSION ((int)(sizeof(migrations) / sizeof(migrations[0])))

static char *now_iso(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    struct tm tm;
    gmtime_r(&t.tv_sec, &tm);
    char buf[64];
    size_t n = strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, sizeof(buf) - n, ".%03ldZ", t.tv_nsec / 1000000);
    return strdup(buf);
}

static int exec(History *h, const char *sql)
{
    return sqlite3_exec(h->db, sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : -EIO;
}

/* Prepares sql and binds the text arguments (NULL binds NULL). */
static sqlite3_stmt *prep(History *h, const char *sql, int n, const char *const *args)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(h->db, sql, -1, &st, NULL) != SQLITE_OK)
        return NULL;
    for (int i = 0; i < n; i++)
        sqlite3_bind_text(st, i + 1, args[i], -1, SQLITE_TRANSIENT);
    return st;
}

/* Runs a statement that returns no rows. */
static int run(History *h, const char *sql, int n, const char *const *args)
{
    sqlite3_stmt *st = prep(h, sql, n, args);
    if (!st)
        return -EIO;
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc == SQLITE_CONSTRAINT)
        return -EEXIST;
    return rc == SQLITE_DONE ? 0 : -EIO;
}

int history_schema_version(History *h)
{
    sqlite3_stmt *st = prep(h, "PRAGMA user_version", 0, NULL);
    int v = st && sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int(st, 0) : -1;
    sqlite3_finalize(st);
    return v;
}

int history_open(const char *path, History **ret, char **err)
{
    History *h = calloc(1, sizeof(*h));
    if (!h)
        return -ENOMEM;
    if (sqlite3_open_v2(path, &h->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, NULL) !=
        SQLITE_OK) {
        if (err && asprintf(err, "%s: %s", path, sqlite3_errmsg(h->db)) < 0)
            *err = NULL;
        history_close(h);
        return -EIO;
    }
    sqlite3_busy_timeout(h->db, 5000);
    /* WAL with synchronous=NORMAL: every transaction is atomic and survives
     * a crash of reld (kill -9); only the last ones may be lost if the
     * machine loses power. FULL would fsync on every commit, and the
     * executor commits between suspend and resume. */
    int r = exec(h, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;");
    int v = r == 0 ? history_schema_version(h) : -1;
    if (v > SCHEMA_VERSION) {
        if (err && asprintf(err, "%s: schema version %d is newer than this reld (%d)", path, v, SCHEMA_VERSION) < 0)
            *err = NULL;
        history_close(h);
        return -EPROTO;
    }
    for (; r == 0 && v >= 0 && v < SCHEMA_VERSION; v++) {
        char *sql;
        if (asprintf(&sql, "BEGIN IMMEDIATE; %s PRAGMA user_version=%d; COMMIT;", migrations[v], v + 1) < 0)
            r = -ENOMEM;
        else {
            r = exec(h, sql);
            free(sql);
        }
        if (r < 0)
            exec(h, "ROLLBACK");
    }
    if (r < 0 || v < 0) {
        if (err && asprintf(err, "%s: %s", path, sqlite3_errmsg(h->db)) < 0)
            *err = NULL;
        history_close(h);
        return -EIO;
    }
    *ret = h;
    return 0;
}

History *history_close(History *h)
{
    if (!h)
        return NULL;
    sqlite3_close_v2(h->db);
    free(h);
    return NULL;
}

static int event_locked(History *h, const char *at, const char *kind, const char *who, const char *release,
                        json_t *detail)
{
    char *d = detail ? json_dumps(detail, JSON_COMPACT) : NULL;
    const char *args[] = {at, kind, who, release, d};
    int r = run(h, "INSERT INTO events(at, kind, who, release, detail) VALUES (?, ?, ?, ?, ?)", 5, args);
    free(d);
    return r;
}

int history_event(History *h, const char *kind, const char *who, const char *release, json_t *detail)
{
    char *at = now_iso();
    int r = event_locked(h, at, kind, who, release, detail);
    free(at);
    return r;
}

/* Runs body in one transaction: all of it or none. */
#define IN_TRANSACTION(h, body)                                                                                        \
    ({                                                                                                                 \
        int r_ = exec((h), "BEGIN IMMEDIATE");                                                                         \
        if (r_ == 0) {                                                                                                 \
            r_ = (body);                                                                                               \
            r_ = r_ == 0 ? exec((h), "COMMIT") : (exec((h), "ROLLBACK"), r_);                                          \
        }                                                                                                              \
        r_;                                                                                                            \
    })

static int release_add(History *h, const char *vsn, const char *name, const char *who)
{
    char *at = now_iso();
    const char *args[] = {vsn, name, at, at};
    int r = run(h, "INSERT INTO releases(vsn, name, state, unpacked_at, changed_at) VALUES (?, ?, 'unpacked', ?, ?)", 4,
                args);
    if (r == 0) {
        json_t *d = json_pack("{s:s}", "name", name);
        r = event_locked(h, at, "unpacked", who, vsn, d);
        json_decref(d);
    }
    free(at);
    return r;
}

int history_release_add(History *h, const char *vsn, const char *name, const char *who)
{
    return IN_TRANSACTION(h, release_add(h, vsn, name, who));
}

/* The text of the first column of the first row of sql (one argument):
 * 0 and *ret (caller frees), -ENOENT without a row, -EIO. */
static int query_text(History *h, const char *sql, const char *arg, char **ret)
{
    sqlite3_stmt *st = prep(h, sql, 1, &arg);
    if (!st)
        return -EIO;
    int rc = sqlite3_step(st), r = -ENOENT;
    if (rc == SQLITE_ROW) {
        *ret = strdup((const char *)sqlite3_column_text(st, 0));
        r = *ret ? 0 : -ENOMEM;
    } else if (rc != SQLITE_DONE) {
        r = -EIO;
    }
    sqlite3_finalize(st);
    return r;
}

int history_release_state(History *h, const char *vsn, char **ret)
{
    return query_text(h, "SELECT state FROM releases WHERE vsn = ?", vsn, ret);
}

int history_release_in_state(History *h, const char *state, char **ret_vsn)
{
    return query_text(h, "SELECT vsn FROM releases WHERE state = ?", state, ret_vsn);
}

static int set_state(History *h, const char *vsn, const char *state, const char *who)
{
    char *old = NULL;
    int r = history_release_state(h, vsn, &old);
    if (r < 0)
        return r;
    char *at = now_iso();
    const char *args[] = {state, at, vsn};
    r = run(h, "UPDATE releases SET state = ?, changed_at = ? WHERE vsn = ?", 3, args);
    if (r == 0) {
        json_t *d = json_pack("{s:s, s:s}", "from", old, "to", state);
        r = event_locked(h, at, "state", who, vsn, d);
        json_decref(d);
    }
    free(at);
    free(old);
    return r;
}

int history_release_set_state(History *h, const char *vsn, const char *state, const char *who)
{
    return IN_TRANSACTION(h, set_state(h, vsn, state, who));
}

static int release_remove(History *h, const char *vsn, const char *who)
{
    const char *args[] = {vsn};
    char *state = NULL;
    int r = history_release_state(h, vsn, &state);
    free(state);
    if (r < 0)
        return r;
    r = run(h, "DELETE FROM releases WHERE vsn = ?", 1, args);
    return r == 0 ? history_event(h, "removed", who, vsn, NULL) : r;
}

int history_release_remove(History *h, const char *vsn, const char *who)
{
    return IN_TRANSACTION(h, release_remove(h, vsn, who));
}

/* The rows of a query as a JSON array of objects keyed by column name;
 * columns named *detail* or instr holding JSON are parsed back. */
static json_t *rows(sqlite3_stmt *st)
{
    json_t *a = json_array();
    while (sqlite3_step(st) == SQLITE_ROW) {
        json_t *o = json_object();
        for (int c = 0; c < sqlite3_column_count(st); c++) {
            const char *name = sqlite3_column_name(st, c);
            json_t *v;
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
                v = (strcmp(name, "detail") == 0 || strcmp(name, "instr") == 0) ? json_loads(text, 0, NULL) : NULL;
                if (!v)
                    v = json_string(text);
            }
            }
            json_object_set_new(o, name, v);
        }
        json_array_append_new(a, o);
    }
    return a;
}

int history_releases(History *h, json_t **ret)
{
    sqlite3_stmt *st =
        prep(h, "SELECT vsn, name, state, unpacked_at, changed_at FROM releases ORDER BY unpacked_at, vsn", 0, NULL);
    if (!st)
        return -EIO;
    *ret = rows(st);
    sqlite3_finalize(st);
    return 0;
}

int history_attempt_begin(History *h, const char *who, const char *kind, const char *from, const char *to,
                          int64_t *ret_id)
{
    char *at = now_iso();
    const char *args[] = {at, who, kind, from, to};
    int r = run(h, "INSERT INTO attempts(started_at, who, kind, from_vsn, to_vsn) VALUES (?, ?, ?, ?, ?)", 5, args);
    free(at);
    if (r == 0)
        *ret_id = sqlite3_last_insert_rowid(h->db);
    return r;
}

int history_attempt_instructions(History *h, int64_t attempt, const HistoryInstruction *v, size_t n)
{
    if (!n)
        return 0;
    if (run(h, "BEGIN IMMEDIATE", 0, NULL) < 0)
        return -EIO;
    sqlite3_stmt *st =
        prep(h,
             "INSERT OR REPLACE INTO instructions(attempt_id, idx, instr, outcome, duration_us, start_us) "
             "VALUES (?, ?, ?, ?, ?, ?)",
             0, NULL);
    int r = st ? 0 : -EIO;
    for (size_t k = 0; r == 0 && k < n; k++) {
        char *text = json_dumps(v[k].instr, JSON_COMPACT);
        if (!text) {
            r = -ENOMEM;
            break;
        }
        sqlite3_reset(st);
        sqlite3_bind_int64(st, 1, attempt);
        sqlite3_bind_int(st, 2, v[k].idx);
        sqlite3_bind_text(st, 3, text, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 4, v[k].outcome, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 5, v[k].duration_us);
        sqlite3_bind_int64(st, 6, v[k].start_us);
        r = sqlite3_step(st) == SQLITE_DONE ? 0 : -EIO;
        free(text);
    }
    sqlite3_finalize(st);
    if (run(h, r == 0 ? "COMMIT" : "ROLLBACK", 0, NULL) < 0 && r == 0)
        r = -EIO;
    return r;
}

int history_attempt_end(History *h, int64_t attempt, const char *result, const char *detail)
{
    char *at = now_iso();
    sqlite3_stmt *st = prep(h,
                            "UPDATE attempts SET finished_at = ?1, result = ?2, detail = ?3, "
                            "duration_ms = (julianday(?1) - julianday(started_at)) * 86400000.0 WHERE id = ?4",
                            0, NULL);
    int r = -EIO;
    if (st) {
        sqlite3_bind_text(st, 1, at, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 2, result, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 3, detail, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 4, attempt);
        r = sqlite3_step(st) == SQLITE_DONE ? (sqlite3_changes(h->db) ? 0 : -ENOENT) : -EIO;
    }
    sqlite3_finalize(st);
    free(at);
    return r;
}

int history_list(History *h, int limit, json_t **ret)
{
    if (limit <= 0)
        return -EINVAL;
    char n[32];
    snprintf(n, sizeof(n), "%d", limit);
    const char *args[] = {n};
    sqlite3_stmt *ev = prep(h,
                            "SELECT * FROM (SELECT id, at, kind, who, release, detail FROM events "
                            "ORDER BY id DESC LIMIT ?) ORDER BY id",
                            1, args);
    sqlite3_stmt *at = prep(h,
                            "SELECT * FROM (SELECT id, started_at, finished_at, who, kind, from_vsn, to_vsn, result, "
                            "detail, duration_ms FROM attempts ORDER BY id DESC LIMIT ?) ORDER BY id",
                            1, args);
    if (!ev || !at) {
        sqlite3_finalize(ev);
        sqlite3_finalize(at);
        return -EIO;
    }
    json_t *events = rows(ev), *attempts = rows(at);
    sqlite3_finalize(ev);
    sqlite3_finalize(at);
    size_t i;
    json_t *a;
    json_array_foreach(attempts, i, a)
    {
        sqlite3_stmt *in =
            prep(h,
                 "SELECT idx, instr, outcome, start_us, duration_us FROM instructions WHERE attempt_id = ? "
                 "ORDER BY idx",
                 0, NULL);
        if (!in)
            continue;
        sqlite3_bind_int64(in, 1, json_integer_value(json_object_get(a, "id")));
        json_object_set_new(a, "instructions", rows(in));
        sqlite3_finalize(in);
    }
    *ret = json_pack("{s:o, s:o}", "events", events, "attempts", attempts);
    return 0;
}

int history_attempts_interrupted(History *h)
{
    /* Instructions written as running (before they ran) that never got
     * their outcome: reld died while doing them. */
    if (run(h,
            "UPDATE instructions SET outcome = 'interrupted' WHERE outcome = 'running' AND attempt_id IN "
            "(SELECT id FROM attempts WHERE result IS NULL)",
            0, NULL) < 0)
        return -EIO;
    int r = run(h,
                "UPDATE attempts SET result = 'interrupted', detail = 'reld stopped during the attempt; it restarted "
                "on the permanent release', finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE result IS NULL",
                0, NULL);
    return r < 0 ? r : sqlite3_changes(h->db);
}
