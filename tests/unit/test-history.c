/* history: the SQLite database in a temporary directory, its error paths
 * driven by real failures: a second connection holding the write lock,
 * triggers that raise, damaged files, and a VFS around SQLite's own that
 * makes writes fail (disk full, I/O error) or opens files read-only. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "history.h"

static char dir[] = "/tmp/reld-test-history-XXXXXX";
static char path[sizeof(dir) + 16];
static History *h;

/* ---- the faulty VFS ---------------------------------------------------- */

static sqlite3_vfs *real_vfs;
static sqlite3_vfs faulty_vfs;
static int fail_wal_writes;   /* 0, or what writes to a -wal file return */
static bool open_readonly;    /* open database files read-only */
static int wal_writes_failed; /* how many writes fail_wal_writes failed */

typedef struct FaultyFile {
    sqlite3_file base;
    sqlite3_file *real;
    bool wal;
} FaultyFile;

#define REAL(f) (((FaultyFile *)(f))->real)

static int f_close(sqlite3_file *f)
{
    return REAL(f)->pMethods->xClose(REAL(f));
}
static int f_read(sqlite3_file *f, void *buf, int n, sqlite3_int64 off)
{
    return REAL(f)->pMethods->xRead(REAL(f), buf, n, off);
}
static int f_write(sqlite3_file *f, const void *buf, int n, sqlite3_int64 off)
{
    /* In WAL mode a small transaction writes its pages to the -wal file
     * at COMMIT and nowhere before: failing these writes fails the
     * COMMIT. */
    if (((FaultyFile *)f)->wal && fail_wal_writes) {
        wal_writes_failed++;
        return fail_wal_writes;
    }
    return REAL(f)->pMethods->xWrite(REAL(f), buf, n, off);
}
static int f_truncate(sqlite3_file *f, sqlite3_int64 size)
{
    return REAL(f)->pMethods->xTruncate(REAL(f), size);
}
static int f_sync(sqlite3_file *f, int flags)
{
    return REAL(f)->pMethods->xSync(REAL(f), flags);
}
static int f_size(sqlite3_file *f, sqlite3_int64 *size)
{
    return REAL(f)->pMethods->xFileSize(REAL(f), size);
}
static int f_lock(sqlite3_file *f, int lock)
{
    return REAL(f)->pMethods->xLock(REAL(f), lock);
}
static int f_unlock(sqlite3_file *f, int lock)
{
    return REAL(f)->pMethods->xUnlock(REAL(f), lock);
}
static int f_reserved(sqlite3_file *f, int *out)
{
    return REAL(f)->pMethods->xCheckReservedLock(REAL(f), out);
}
static int f_control(sqlite3_file *f, int op, void *arg)
{
    return REAL(f)->pMethods->xFileControl(REAL(f), op, arg);
}
static int f_sector(sqlite3_file *f)
{
    return REAL(f)->pMethods->xSectorSize(REAL(f));
}
static int f_device(sqlite3_file *f)
{
    return REAL(f)->pMethods->xDeviceCharacteristics(REAL(f));
}
static int f_shm_map(sqlite3_file *f, int page, int size, int extend, void volatile **p)
{
    return REAL(f)->pMethods->xShmMap(REAL(f), page, size, extend, p);
}
static int f_shm_lock(sqlite3_file *f, int off, int n, int flags)
{
    return REAL(f)->pMethods->xShmLock(REAL(f), off, n, flags);
}
static void f_shm_barrier(sqlite3_file *f)
{
    REAL(f)->pMethods->xShmBarrier(REAL(f));
}
static int f_shm_unmap(sqlite3_file *f, int del)
{
    return REAL(f)->pMethods->xShmUnmap(REAL(f), del);
}
static int f_fetch(sqlite3_file *f, sqlite3_int64 off, int n, void **p)
{
    return REAL(f)->pMethods->xFetch(REAL(f), off, n, p);
}
static int f_unfetch(sqlite3_file *f, sqlite3_int64 off, void *p)
{
    return REAL(f)->pMethods->xUnfetch(REAL(f), off, p);
}

static const sqlite3_io_methods faulty_io = {
    3,         f_close,  f_read,   f_write,   f_truncate, f_sync,        f_size,      f_lock,  f_unlock,  f_reserved,
    f_control, f_sector, f_device, f_shm_map, f_shm_lock, f_shm_barrier, f_shm_unmap, f_fetch, f_unfetch,
};

static int f_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *file, int flags, int *out_flags)
{
    FaultyFile *f = (FaultyFile *)file;
    f->real = (sqlite3_file *)(f + 1);
    f->wal = (flags & SQLITE_OPEN_WAL) != 0;
    if (open_readonly && (flags & SQLITE_OPEN_MAIN_DB))
        flags = (flags & ~(SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE)) | SQLITE_OPEN_READONLY;
    int rc = real_vfs->xOpen(real_vfs, name, f->real, flags, out_flags);
    /* The real file's methods are 3 or more: ours forward them all. */
    file->pMethods = f->real->pMethods ? &faulty_io : NULL;
    return rc;
}

/* Runs before the tests, where ck_assert cannot report: 0 or -1. */
static int faulty_vfs_register(void)
{
    real_vfs = sqlite3_vfs_find(NULL);
    if (!real_vfs)
        return -1;
    faulty_vfs = *real_vfs;
    faulty_vfs.zName = "faulty";
    faulty_vfs.szOsFile = (int)sizeof(FaultyFile) + real_vfs->szOsFile;
    faulty_vfs.xOpen = f_open;
    return sqlite3_vfs_register(&faulty_vfs, 1) == SQLITE_OK ? 0 : -1;
}

/* ---- helpers ------------------------------------------------------------ */

/* A second connection to the database, the test's own. */
static sqlite3 *raw(void)
{
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
    ck_assert_msg(rc == SQLITE_OK, "sqlite3_open_v2: %s", sqlite3_errstr(rc));
    ck_assert_int_eq(sqlite3_busy_timeout(db, 2000), SQLITE_OK);
    return db;
}

static void sql(sqlite3 *db, const char *text)
{
    char *msg = NULL;
    int rc = sqlite3_exec(db, text, NULL, NULL, &msg);
    ck_assert_msg(rc == SQLITE_OK, "%s: %s", text, msg ? msg : sqlite3_errstr(rc));
}

/* Runs text on a connection of its own, then closes it. */
static void sql_once(const char *text)
{
    sqlite3 *db = raw();
    sql(db, text);
    ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);
}

/* The integer the query returns, read on a connection of its own: what
 * is committed. */
static long long count(const char *query)
{
    sqlite3 *db = raw();
    sqlite3_stmt *st;
    ck_assert_msg(sqlite3_prepare_v2(db, query, -1, &st, NULL) == SQLITE_OK, "%s: %s", query, sqlite3_errmsg(db));
    ck_assert_msg(sqlite3_step(st) == SQLITE_ROW, "%s: %s", query, sqlite3_errmsg(db));
    long long v = sqlite3_column_int64(st, 0);
    ck_assert_int_eq(sqlite3_finalize(st), SQLITE_OK);
    ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);
    return v;
}

/* The text the query returns (NULL for NULL), in a static buffer. */
static const char *text_of(const char *query)
{
    static char buf[1024];
    sqlite3 *db = raw();
    sqlite3_stmt *st;
    ck_assert_msg(sqlite3_prepare_v2(db, query, -1, &st, NULL) == SQLITE_OK, "%s: %s", query, sqlite3_errmsg(db));
    ck_assert_msg(sqlite3_step(st) == SQLITE_ROW, "%s: %s", query, sqlite3_errmsg(db));
    const char *t = (const char *)sqlite3_column_text(st, 0);
    if (t)
        snprintf(buf, sizeof(buf), "%s", t);
    ck_assert_int_eq(sqlite3_finalize(st), SQLITE_OK);
    ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);
    return t ? buf : NULL;
}

/* The call returns err and history_last_error says part of why. */
#define ck_assert_fails(call, err, part)                                                                               \
    do {                                                                                                               \
        int r_ = (call);                                                                                               \
        ck_assert_msg(r_ == (err), "%s: %d (%s), not %d (%s); last error '%s'", #call, r_, strerror(-r_), (err),       \
                      strerror(-(err)), history_last_error(h));                                                        \
        ck_assert_msg(strstr(history_last_error(h), (part)) != NULL, "%s: last error '%s' lacks '%s'", #call,          \
                      history_last_error(h), (part));                                                                  \
    } while (0)

static History *reopen(void)
{
    h = history_close(h);
    char *err = NULL;
    int r = history_open(path, &h, &err);
    ck_assert_msg(r == 0, "history_open: %d %s", r, err ? err : "");
    ck_assert_ptr_null(err);
    return h;
}

static long long mono_ms(void)
{
    struct timespec t;
    ck_assert_int_eq(clock_gettime(CLOCK_MONOTONIC, &t), 0);
    return t.tv_sec * 1000LL + t.tv_nsec / 1000000;
}

static json_t *list(int limit)
{
    json_t *l = NULL;
    ck_assert_int_eq(history_list(h, limit, &l), 0);
    ck_assert_ptr_nonnull(l);
    return l;
}

/* Writes bytes at offset off of the database file. */
static void scribble(long off, const char *bytes, size_t n)
{
    int fd = open(path, O_WRONLY);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(pwrite(fd, bytes, n, off), (ssize_t)n);
    ck_assert_int_eq(close(fd), 0);
}

/* 50 releases, then the last connection closes (the WAL goes into the
 * file); returns the offset of the releases table's root page. */
static long long fifty_releases_closed(void)
{
    for (int i = 0; i < 50; i++) {
        char vsn[16];
        snprintf(vsn, sizeof(vsn), "%d.0", i);
        ck_assert_int_eq(history_release_add(h, vsn, "shop", "t"), 0);
    }
    h = history_close(h);
    long long page = count("PRAGMA page_size"), root = count("SELECT rootpage FROM sqlite_master WHERE name = "
                                                             "'releases'");
    ck_assert_int_gt(root, 1);
    return (root - 1) * page;
}

static void setup(void)
{
    strcpy(dir, "/tmp/reld-test-history-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/reld.db", dir);
    fail_wal_writes = 0;
    wal_writes_failed = 0;
    open_readonly = false;
    h = NULL;
    reopen();
}

static void teardown(void)
{
    fail_wal_writes = 0;
    open_readonly = false;
    h = history_close(h);
    char cmd[sizeof(dir) + 16];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}

/* ---- history_open ------------------------------------------------------- */

/* The schema as reld 0.1 wrote it (user_version 1). */
static const char schema_v1[] =
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
    "  PRIMARY KEY (attempt_id, idx));"
    "PRAGMA user_version=1;";

/* A database at schema version 1 with a release, an event, a finished
 * attempt and its instruction, in place of the fixture's. */
static void make_v1(const char *extra)
{
    h = history_close(h);
    char cmd[sizeof(dir) + 32];
    snprintf(cmd, sizeof(cmd), "rm -f '%s'*", path);
    ck_assert_int_eq(system(cmd), 0);
    sqlite3 *db = raw();
    sql(db, schema_v1);
    sql(db, "INSERT INTO releases VALUES ('1.0', 'shop', 'permanent', '2024-01-01T00:00:00.000Z', "
            "'2024-01-02T00:00:00.000Z');"
            "INSERT INTO events(at, kind, who, release, detail) VALUES ('2024-01-01T00:00:00.000Z', 'unpacked', "
            "'uid 0', '1.0', '{\"name\":\"shop\"}');"
            "INSERT INTO attempts(started_at, finished_at, kind, from_vsn, to_vsn, result, duration_ms) VALUES "
            "('2024-01-02T00:00:00.000Z', '2024-01-02T00:00:01.000Z', 'upgrade', '0.9', '1.0', 'ok', 1000);"
            "INSERT INTO instructions VALUES (1, 0, '{\"op\":\"point_of_no_return\"}', 'ok', 12);");
    if (extra)
        sql(db, extra);
    ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);
}

START_TEST(open_creates_a_fresh_database)
{
    ck_assert_int_eq(history_schema_version(h), 3);
    ck_assert_str_eq(history_last_error(h), "");
    ck_assert_int_eq(count("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN "
                           "('releases', 'events', 'attempts', 'instructions')"),
                     4);
    ck_assert_int_eq(count("SELECT count(*) FROM sqlite_master WHERE name = 'one_current'"), 1);
    ck_assert_int_eq(count("SELECT count(*) FROM pragma_table_info('instructions') WHERE name = 'start_us'"), 1);
    ck_assert_int_eq(count("SELECT count(*) FROM pragma_table_info('releases') WHERE name = 'signature'"), 1);
    ck_assert_int_eq(count("SELECT count(*) FROM pragma_table_info('attempts') WHERE name = 'started_us'"), 1);
    ck_assert_str_eq(text_of("PRAGMA journal_mode"), "wal");
    ck_assert_int_eq(count("PRAGMA user_version"), 3);
    /* Reopening an up-to-date database changes nothing. */
    reopen();
    ck_assert_int_eq(history_schema_version(h), 3);
    json_t *rels = NULL;
    ck_assert_int_eq(history_releases(h, &rels), 0);
    ck_assert_int_eq(json_array_size(rels), 0);
    json_decref(rels);
}
END_TEST

START_TEST(open_migrates_version_1_and_keeps_its_rows)
{
    make_v1(NULL);
    ck_assert_int_eq(count("PRAGMA user_version"), 1);
    reopen();
    ck_assert_int_eq(history_schema_version(h), 3);
    ck_assert_int_eq(count("PRAGMA user_version"), 3);
    char *state = NULL;
    ck_assert_int_eq(history_release_state(h, "1.0", &state), 0);
    ck_assert_str_eq(state, "permanent");
    free(state);
    json_t *l = list(10);
    json_t *ev = json_array_get(json_object_get(l, "events"), 0);
    ck_assert_int_eq(json_array_size(json_object_get(l, "events")), 1);
    ck_assert_str_eq(json_string_value(json_object_get(ev, "kind")), "unpacked");
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(ev, "detail"), "name")), "shop");
    json_t *at = json_array_get(json_object_get(l, "attempts"), 0);
    ck_assert_int_eq(json_array_size(json_object_get(l, "attempts")), 1);
    ck_assert_str_eq(json_string_value(json_object_get(at, "result")), "ok");
    json_t *in = json_array_get(json_object_get(at, "instructions"), 0);
    ck_assert_int_eq(json_array_size(json_object_get(at, "instructions")), 1);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(in, "instr"), "op")), "point_of_no_return");
    ck_assert(json_is_null(json_object_get(in, "start_us"))); /* before version 2: not known */
    ck_assert_int_eq(json_integer_value(json_object_get(in, "duration_us")), 12);
    ck_assert(json_real_value(json_object_get(at, "duration_ms")) == 1000.0); /* as written */
    json_decref(l);
    json_t *rels = NULL; /* before version 3: no signature */
    ck_assert_int_eq(history_releases(h, &rels), 0);
    ck_assert(json_is_null(json_object_get(json_array_get(rels, 0), "signature")));
    json_decref(rels);
    /* The migrated database takes version 2's rows. */
    int64_t id = 0;
    ck_assert_int_eq(history_attempt_begin(h, "uid 0", "upgrade", "1.0", "2.0", &id), 0);
    json_t *instr = json_pack("{s:s}", "op", "suspend");
    HistoryInstruction v = {.idx = 0, .instr = instr, .outcome = "ok", .start_us = 7, .duration_us = 3};
    ck_assert_int_eq(history_attempt_instructions(h, id, &v, 1), 0);
    json_decref(instr);
    ck_assert_int_eq(count("SELECT start_us FROM instructions WHERE attempt_id = 2"), 7);
}
END_TEST

START_TEST(open_failed_migration_is_rolled_back)
{
    /* Version 1 with the column version 2 adds already there: the
     * migration fails, and the database stays at version 1, whole. */
    make_v1("ALTER TABLE instructions ADD COLUMN start_us INTEGER;");
    char *err = NULL;
    History *h2 = NULL;
    ck_assert_int_eq(history_open(path, &h2, &err), -EIO);
    ck_assert_ptr_null(h2);
    ck_assert_ptr_nonnull(err);
    ck_assert_msg(strncmp(err, path, strlen(path)) == 0 && strstr(err, "duplicate column name: start_us"), "%s", err);
    free(err);
    ck_assert_int_eq(count("PRAGMA user_version"), 1);
    ck_assert_int_eq(count("SELECT count(*) FROM releases"), 1);
    /* Version 0 -> 1 creates four tables; the third fails: the first two
     * do not stay. */
    char cmd[sizeof(dir) + 32];
    snprintf(cmd, sizeof(cmd), "rm -f '%s'*", path);
    ck_assert_int_eq(system(cmd), 0);
    sql_once("CREATE TABLE attempts (x)");
    ck_assert_int_eq(history_open(path, &h2, &err), -EIO);
    ck_assert_msg(err && strstr(err, "table attempts already exists"), "%s", err ? err : "(null)");
    free(err);
    ck_assert_int_eq(count("PRAGMA user_version"), 0);
    ck_assert_int_eq(count("SELECT count(*) FROM sqlite_master WHERE name IN ('releases', 'events')"), 0);
}
END_TEST

START_TEST(open_refuses_a_newer_schema)
{
    h = history_close(h);
    sql_once("PRAGMA user_version=4");
    char *err = NULL;
    History *h2 = NULL;
    ck_assert_int_eq(history_open(path, &h2, &err), -EPROTO);
    ck_assert_ptr_null(h2);
    ck_assert_ptr_nonnull(err);
    ck_assert_msg(strstr(err, "schema version 4 is newer than this reld's (3)"), "%s", err);
    free(err);
    ck_assert_int_eq(count("PRAGMA user_version"), 4);
}
END_TEST

START_TEST(open_refuses_a_file_that_is_not_a_database)
{
    h = history_close(h);
    char junk[4096];
    memset(junk, 'x', sizeof(junk));
    scribble(0, junk, sizeof(junk));
    char *err = NULL;
    History *h2 = NULL;
    ck_assert_int_eq(history_open(path, &h2, &err), -EUCLEAN);
    ck_assert_ptr_null(h2);
    ck_assert_msg(err && strstr(err, "file is not a database"), "%s", err ? err : "(null)");
    free(err);
}
END_TEST

/* The file's bytes (caller frees), or NULL when it does not exist. */
static char *file_bytes(const char *p, size_t *len)
{
    FILE *f = fopen(p, "rb");
    if (!f)
        return NULL;
    char *buf = malloc(1 << 20);
    ck_assert_ptr_nonnull(buf);
    *len = fread(buf, 1, 1 << 20, f);
    fclose(f);
    return buf;
}

START_TEST(open_refuses_a_damaged_page_and_leaves_the_file)
{
    long long off = fifty_releases_closed();
    char junk[512];
    memset(junk, 0xa5, sizeof(junk));
    scribble(off, junk, sizeof(junk));
    size_t len0 = 0, len1 = 0;
    char *before = file_bytes(path, &len0);
    char *err = NULL;
    History *h2 = NULL;
    ck_assert_int_eq(history_open(path, &h2, &err), -EUCLEAN);
    ck_assert_ptr_null(h2);
    ck_assert_msg(err && strncmp(err, path, strlen(path)) == 0 &&
                      strstr(err, "the database is damaged (quick_check: ") && !strchr(err, '\n'),
                  "%s", err ? err : "(null)");
    free(err);
    ck_assert_int_eq(history_open_existing(path, &h2, &err), -EUCLEAN);
    free(err);
    char *after = file_bytes(path, &len1);
    ck_assert_uint_eq(len0, len1);
    ck_assert_int_eq(memcmp(before, after, len0), 0);
    free(before);
    free(after);
    /* Nor anything beside it: the -wal and -shm SQLite made to open it
     * are gone again. */
    char side[sizeof(path) + 8];
    snprintf(side, sizeof(side), "%s-wal", path);
    ck_assert_int_eq(access(side, F_OK), -1);
    snprintf(side, sizeof(side), "%s-shm", path);
    ck_assert_int_eq(access(side, F_OK), -1);
}
END_TEST

START_TEST(open_refuses_a_database_missing_a_table)
{
    h = history_close(h);
    sql_once("DROP TABLE events");
    char *err = NULL;
    History *h2 = NULL;
    ck_assert_int_eq(history_open(path, &h2, &err), -EUCLEAN);
    ck_assert_ptr_null(h2);
    ck_assert_msg(err && strstr(err, "the database is damaged: it has no table events"), "%s", err ? err : "(null)");
    free(err);
}
END_TEST

START_TEST(open_existing_missing_empty_and_foreign)
{
    ck_assert_int_eq(history_release_add(h, "1.0", "shop", "t"), 0);
    h = history_close(h);
    char *err = NULL;
    History *h2 = NULL;
    /* A sound database: as history_open. */
    ck_assert_int_eq(history_open_existing(path, &h2, &err), 0);
    ck_assert_ptr_null(err);
    char *state = NULL;
    ck_assert_int_eq(history_release_state(h2, "1.0", &state), 0);
    ck_assert_str_eq(state, "unpacked");
    free(state);
    h2 = history_close(h2);
    /* Missing: -ENOENT, and nothing is created. */
    ck_assert_int_eq(unlink(path), 0);
    ck_assert_int_eq(history_open_existing(path, &h2, &err), -ENOENT);
    ck_assert_ptr_null(h2);
    ck_assert_msg(err && strncmp(err, path, strlen(path)) == 0 && strstr(err, "no such file"), "%s",
                  err ? err : "(null)");
    free(err);
    ck_assert_int_eq(access(path, F_OK), -1);
    /* 0 bytes, with a -wal beside it: -EUCLEAN, both left as they are
     * (SQLite would take the file for a new database and delete the
     * -wal). */
    char wal[sizeof(path) + 8];
    snprintf(wal, sizeof(wal), "%s-wal", path);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
    ck_assert_int_ge(fd, 0);
    close(fd);
    fd = open(wal, O_WRONLY | O_CREAT | O_EXCL, 0644);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, "frames", 6), 6);
    close(fd);
    ck_assert_int_eq(history_open_existing(path, &h2, &err), -EUCLEAN);
    ck_assert_ptr_null(h2);
    ck_assert_msg(err && strstr(err, "the file is empty (0 bytes)"), "%s", err ? err : "(null)");
    free(err);
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_int_eq(st.st_size, 0);
    ck_assert_int_eq(stat(wal, &st), 0);
    ck_assert_int_eq(st.st_size, 6);
    ck_assert_int_eq(unlink(wal), 0);
    /* history_open takes the same file for a new database (a new root). */
    ck_assert_int_eq(history_open(path, &h2, &err), 0);
    h2 = history_close(h2);
    /* An SQLite database without reld's schema. */
    ck_assert_int_eq(unlink(path), 0);
    sql_once("CREATE TABLE other (x); PRAGMA journal_mode=WAL");
    ck_assert_int_eq(history_open_existing(path, &h2, &err), -EUCLEAN);
    ck_assert_msg(err && strstr(err, "holds no reld history"), "%s", err ? err : "(null)");
    free(err);
    ck_assert_int_eq(count("PRAGMA user_version"), 0);
    ck_assert_int_eq(count("SELECT count(*) FROM sqlite_master WHERE name = 'releases'"), 0);
    /* Not a database at all, with a -wal: refused, by both, and the -wal
     * stays (no checkpoint at the close of a refused file). */
    char junk[4096];
    memset(junk, 'x', sizeof(junk));
    scribble(0, junk, sizeof(junk));
    fd = open(wal, O_WRONLY | O_CREAT | O_EXCL, 0644);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, junk, 100), 100);
    close(fd);
    ck_assert_int_eq(history_open_existing(path, &h2, &err), -EUCLEAN);
    ck_assert_msg(err && strstr(err, "file is not a database"), "%s", err ? err : "(null)");
    free(err);
    ck_assert_int_eq(history_open(path, &h2, &err), -EUCLEAN);
    free(err);
    ck_assert_int_eq(stat(wal, &st), 0);
    ck_assert_int_eq(st.st_size, 100);
    ck_assert_int_eq(history_open_existing(NULL, &h2, &err), -EINVAL);
    free(err);
}
END_TEST

START_TEST(open_says_why_a_file_cannot_be_opened)
{
    char missing[sizeof(path) + 16];
    snprintf(missing, sizeof(missing), "%s/no/such/dir/reld.db", dir);
    char *err = NULL;
    History *h2 = NULL;
    ck_assert_int_eq(history_open(missing, &h2, &err), -ENOENT);
    ck_assert_ptr_null(h2);
    ck_assert_msg(err && strncmp(err, missing, strlen(missing)) == 0 && strstr(err, "unable to open"), "%s",
                  err ? err : "(null)");
    free(err);
    ck_assert_int_eq(history_open(NULL, &h2, &err), -EINVAL);
    ck_assert_ptr_null(h2);
    free(err);
}
END_TEST

START_TEST(open_refuses_a_read_only_database)
{
    h = history_close(h);
    open_readonly = true; /* as chmod 0444 would, for root too */
    char *err = NULL;
    History *h2 = NULL;
    ck_assert_int_eq(history_open(path, &h2, &err), -EROFS);
    ck_assert_ptr_null(h2);
    ck_assert_msg(err && strstr(err, "read-only"), "%s", err ? err : "(null)");
    free(err);
    open_readonly = false;
    reopen();
}
END_TEST

START_TEST(open_beside_a_writer_then_busy)
{
    /* Another connection holds the write lock: reading works (WAL),
     * writing waits the busy timeout, a few hundred ms, then -EBUSY. */
    ck_assert_int_eq(history_release_add(h, "1.0", "shop", "t"), 0);
    h = history_close(h);
    sqlite3 *db = raw();
    sql(db, "BEGIN EXCLUSIVE; INSERT INTO events(at, kind) VALUES ('x', 'other')");
    reopen();
    char *state = NULL;
    ck_assert_int_eq(history_release_state(h, "1.0", &state), 0);
    ck_assert_str_eq(state, "unpacked");
    free(state);
    long long t0 = mono_ms();
    ck_assert_fails(history_release_add(h, "2.0", "shop", "t"), -EBUSY, "database is locked");
    long long waited = mono_ms() - t0;
    ck_assert_msg(waited >= 200 && waited < 3000, "waited %lld ms", waited);
    ck_assert_fails(history_event(h, "boot", "t", NULL, NULL), -EBUSY, "database is locked");
    sql(db, "ROLLBACK");
    ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);
    ck_assert_int_eq(history_release_add(h, "2.0", "shop", "t"), 0);
    ck_assert_int_eq(count("SELECT count(*) FROM releases"), 2);
}
END_TEST

/* ---- history_release_add ------------------------------------------------ */

START_TEST(release_add_writes_the_release_and_its_event)
{
    ck_assert_int_eq(history_release_add(h, "1.0", "shop", "uid 0 (root)"), 0);
    char *state = NULL;
    ck_assert_int_eq(history_release_state(h, "1.0", &state), 0);
    ck_assert_str_eq(state, "unpacked");
    free(state);
    json_t *l = list(10);
    json_t *evs = json_object_get(l, "events"), *e = json_array_get(evs, 0);
    ck_assert_int_eq(json_array_size(evs), 1);
    ck_assert_str_eq(json_string_value(json_object_get(e, "kind")), "unpacked");
    ck_assert_str_eq(json_string_value(json_object_get(e, "who")), "uid 0 (root)");
    ck_assert_str_eq(json_string_value(json_object_get(e, "release")), "1.0");
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(e, "detail"), "name")), "shop");
    json_decref(l);
}
END_TEST

START_TEST(release_add_twice_is_eexist_and_writes_nothing)
{
    ck_assert_int_eq(history_release_add(h, "1.0", "shop", "t"), 0);
    ck_assert_fails(history_release_add(h, "1.0", "other", "t"), -EEXIST, "release 1.0 is already known");
    ck_assert_int_eq(count("SELECT count(*) FROM releases"), 1);
    ck_assert_str_eq(text_of("SELECT name FROM releases"), "shop");
    ck_assert_int_eq(count("SELECT count(*) FROM events"), 1);
}
END_TEST

START_TEST(release_add_bad_arguments)
{
    ck_assert_fails(history_release_add(h, NULL, "shop", "t"), -EINVAL, "needs a version");
    ck_assert_fails(history_release_add(h, "", "shop", "t"), -EINVAL, "needs a version");
    ck_assert_fails(history_release_add(h, "1.0", NULL, "t"), -EINVAL, "and a name");
    ck_assert_int_eq(count("SELECT count(*) FROM releases"), 0);
    ck_assert_int_eq(count("SELECT count(*) FROM events"), 0);
}
END_TEST

START_TEST(release_add_failed_event_takes_the_release_back)
{
    sql_once("CREATE TRIGGER t BEFORE INSERT ON events BEGIN SELECT RAISE(FAIL, 'injected'); END;");
    ck_assert_fails(history_release_add(h, "1.0", "shop", "t"), -EINVAL, "injected");
    ck_assert_int_eq(count("SELECT count(*) FROM releases"), 0);
    char *state = NULL;
    ck_assert_fails(history_release_state(h, "1.0", &state), -ENOENT, "release 1.0 is not known");
    ck_assert_ptr_null(state);
}
END_TEST

START_TEST(release_add_disk_full_at_commit)
{
    fail_wal_writes = SQLITE_FULL;
    ck_assert_fails(history_release_add(h, "1.0", "shop", "t"), -ENOSPC, "full");
    ck_assert_int_gt(wal_writes_failed, 0);
    fail_wal_writes = 0;
    ck_assert_int_eq(count("SELECT count(*) FROM releases"), 0);
    ck_assert_int_eq(count("SELECT count(*) FROM events"), 0);
    /* Nothing is left open on the connection: the next change works. */
    ck_assert_int_eq(history_release_add(h, "1.0", "shop", "t"), 0);
    ck_assert_int_eq(count("SELECT count(*) FROM releases"), 1);
    ck_assert_int_eq(count("SELECT count(*) FROM events"), 1);
}
END_TEST

START_TEST(release_add_io_error_at_commit)
{
    fail_wal_writes = SQLITE_IOERR_WRITE;
    ck_assert_fails(history_release_add(h, "1.0", "shop", "t"), -EIO, "disk I/O error");
    ck_assert_int_gt(wal_writes_failed, 0);
    fail_wal_writes = 0;
    ck_assert_int_eq(count("SELECT count(*) FROM releases"), 0);
    ck_assert_int_eq(history_release_add(h, "1.0", "shop", "t"), 0);
    ck_assert_int_eq(count("SELECT count(*) FROM releases"), 1);
}
END_TEST

/* ---- history_release_set_state ----------------------------------------- */

START_TEST(set_state_changes_the_state_with_its_event)
{
    ck_assert_int_eq(history_release_add(h, "1.0", "shop", "t"), 0);
    ck_assert_int_eq(history_release_set_state(h, "1.0", RELEASE_CURRENT, "uid 7"), 0);
    char *state = NULL;
    ck_assert_int_eq(history_release_state(h, "1.0", &state), 0);
    ck_assert_str_eq(state, "current");
    free(state);
    json_t *l = list(10);
    json_t *e = json_array_get(json_object_get(l, "events"), 1);
    ck_assert_int_eq(json_array_size(json_object_get(l, "events")), 2);
    ck_assert_str_eq(json_string_value(json_object_get(e, "kind")), "state");
    ck_assert_str_eq(json_string_value(json_object_get(e, "who")), "uid 7");
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(e, "detail"), "from")), "unpacked");
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(e, "detail"), "to")), "current");
    json_decref(l);
}
END_TEST

START_TEST(set_states_all_or_nothing)
{
    ck_assert_int_eq(history_release_add(h, "1.0", "shop", "t"), 0);
    ck_assert_int_eq(history_release_add(h, "2.0", "shop", "t"), 0);
    ck_assert_int_eq(history_release_set_state(h, "1.0", RELEASE_PERMANENT, "t"), 0);
    ck_assert_int_eq(history_release_set_state(h, "2.0", RELEASE_CURRENT, "t"), 0);
    /* The second change fails: the first is rolled back with it. */
    sql_once("CREATE TRIGGER t BEFORE UPDATE ON releases WHEN NEW.state = 'permanent' "
             "BEGIN SELECT RAISE(FAIL, 'injected'); END;");
    HistoryStateChange v[] = {{"1.0", RELEASE_OLD}, {"2.0", RELEASE_PERMANENT}};
    ck_assert_fails(history_release_set_states(h, v, 2, "t"), -EINVAL, "injected");
    ck_assert_str_eq(text_of("SELECT state FROM releases WHERE vsn = '1.0'"), "permanent");
    ck_assert_str_eq(text_of("SELECT state FROM releases WHERE vsn = '2.0'"), "current");
    ck_assert_int_eq(count("SELECT count(*) FROM events WHERE kind = 'state'"), 2);
    sql_once("DROP TRIGGER t");
    ck_assert_int_eq(history_release_set_states(h, v, 2, "t"), 0);
    ck_assert_str_eq(text_of("SELECT state FROM releases WHERE vsn = '1.0'"), "old");
    ck_assert_str_eq(text_of("SELECT state FROM releases WHERE vsn = '2.0'"), "permanent");
    ck_assert_int_eq(count("SELECT count(*) FROM events WHERE kind = 'state'"), 4);
    HistoryStateChange bad[] = {{"2.0", RELEASE_OLD}, {"1.0", "running"}};
    ck_assert_fails(history_release_set_states(h, bad, 2, "t"), -EINVAL, "'running' is not a release state");
    ck_assert_str_eq(text_of("SELECT state FROM releases WHERE vsn = '2.0'"), "permanent");
}
END_TEST

START_TEST(set_state_unknown_release_is_enoent)
{
    ck_assert_fails(history_release_set_state(h, "9", RELEASE_CURRENT, "t"), -ENOENT, "release 9 is not known");
    ck_assert_fails(history_release_set_state(h, NULL, RELEASE_CURRENT, "t"), -EINVAL, "no release version");
    ck_assert_int_eq(count("SELECT count(*) FROM events"), 0);
}
END_TEST

START_TEST(set_state_bad_state_is_einval)
{
    ck_assert_int_eq(history_release_add(h, "1.0", "shop", "t"), 0);
    ck_assert_fails(history_release_set_state(h, "1.0", "running", "t"), -EINVAL, "'running' is not a release state");
    ck_assert_fails(history_release_set_state(h, "1.0", NULL, "t"), -EINVAL, "is not a release state");
    ck_assert_fails(history_release_set_state(h, "1.0", "", "t"), -EINVAL, "is not a release state");
    ck_assert_str_eq(text_of("SELECT state FROM releases"), "unpacked");
    ck_assert_int_eq(count("SELECT count(*) FROM events"), 1);
}
END_TEST

START_TEST(set_state_one_current_and_one_permanent)
{
    ck_assert_int_eq(history_release_add(h, "1.0", "shop", "t"), 0);
    ck_assert_int_eq(history_release_add(h, "2.0", "shop", "t"), 0);
    ck_assert_int_eq(history_release_add(h, "3.0", "shop", "t"), 0);
    ck_assert_int_eq(history_release_set_state(h, "1.0", RELEASE_CURRENT, "t"), 0);
    ck_assert_fails(history_release_set_state(h, "2.0", RELEASE_CURRENT, "t"), -EEXIST,
                    "release 2.0 cannot be current");
    ck_assert_int_eq(history_release_set_state(h, "3.0", RELEASE_PERMANENT, "t"), 0);
    ck_assert_fails(history_release_set_state(h, "2.0", RELEASE_PERMANENT, "t"), -EEXIST,
                    "release 2.0 cannot be permanent");
    ck_assert_str_eq(text_of("SELECT state FROM releases WHERE vsn = '2.0'"), "unpacked");
    ck_assert_int_eq(count("SELECT count(*) FROM events WHERE kind = 'state'"), 2);
    /* old and unpacked are shared. */
    ck_assert_int_eq(history_release_set_state(h, "1.0", RELEASE_OLD, "t"), 0);
    ck_assert_int_eq(history_release_set_state(h, "2.0", RELEASE_OLD, "t"), 0);
    ck_assert_int_eq(history_release_set_state(h, "2.0", RELEASE_CURRENT, "t"), 0);
    ck_assert_int_eq(count("SELECT count(*) FROM releases WHERE state = 'current'"), 1);
}
END_TEST

START_TEST(set_state_failed_event_keeps_the_old_state)
{
    ck_assert_int_eq(history_release_add(h, "1.0", "shop", "t"), 0);
    sql_once("CREATE TRIGGER t BEFORE INSERT ON events BEGIN SELECT RAISE(FAIL, 'injected'); END;");
    ck_assert_fails(history_release_set_state(h, "1.0", RELEASE_PERMANENT, "t"), -EINVAL, "injected");
    ck_assert_str_eq(text_of("SELECT state FROM releases"), "unpacked");
    ck_assert_int_eq(count("SELECT count(*) FROM events"), 1);
}
END_TEST

START_TEST(set_state_disk_full_at_commit)
{
    ck_assert_int_eq(history_release_add(h, "1.0", "shop", "t"), 0);
    fail_wal_writes = SQLITE_FULL;
    ck_assert_fails(history_release_set_state(h, "1.0", RELEASE_CURRENT, "t"), -ENOSPC, "full");
    fail_wal_writes = 0;
    char *state = NULL;
    ck_assert_int_eq(history_release_state(h, "1.0", &state), 0);
    ck_assert_str_eq(state, "unpacked");
    free(state);
    ck_assert_int_eq(count("SELECT count(*) FROM events"), 1);
}
END_TEST

/* ---- history_release_state, history_release_in_state -------------------- */

START_TEST(release_state_and_in_state)
{
    char *s = NULL;
    ck_assert_fails(history_release_state(h, "1.0", &s), -ENOENT, "release 1.0 is not known");
    ck_assert_fails(history_release_in_state(h, RELEASE_CURRENT, &s), -ENOENT, "no release is current");
    ck_assert_fails(history_release_in_state(h, RELEASE_OLD, &s), -EINVAL, "'old' is not current or permanent");
    ck_assert_fails(history_release_in_state(h, NULL, &s), -EINVAL, "is not current or permanent");
    ck_assert_fails(history_release_state(h, NULL, &s), -EINVAL, "no release version");
    ck_assert_ptr_null(s);
    ck_assert_int_eq(history_release_add(h, "1.0", "shop", "t"), 0);
    ck_assert_int_eq(history_release_set_state(h, "1.0", RELEASE_PERMANENT, "t"), 0);
    ck_assert_int_eq(history_release_in_state(h, RELEASE_PERMANENT, &s), 0);
    ck_assert_str_eq(s, "1.0");
    free(s);
    s = NULL;
    ck_assert_fails(history_release_in_state(h, RELEASE_CURRENT, &s), -ENOENT, "no release is current");
}
END_TEST

/* ---- history_release_remove --------------------------------------------- */

START_TEST(release_remove_deletes_with_its_event)
{
    ck_assert_int_eq(history_release_add(h, "1.0", "shop", "t"), 0);
    ck_assert_int_eq(history_release_remove(h, "1.0", "uid 3"), 0);
    ck_assert_int_eq(count("SELECT count(*) FROM releases"), 0);
    ck_assert_int_eq(count("SELECT count(*) FROM events WHERE kind = 'removed' AND release = '1.0' AND who = 'uid 3'"),
                     1);
    ck_assert_fails(history_release_remove(h, "1.0", "t"), -ENOENT, "release 1.0 is not known");
    ck_assert_fails(history_release_remove(h, NULL, "t"), -EINVAL, "no release version");
    ck_assert_int_eq(count("SELECT count(*) FROM events"), 2);
}
END_TEST

START_TEST(release_remove_failed_event_keeps_the_release)
{
    ck_assert_int_eq(history_release_add(h, "1.0", "shop", "t"), 0);
    sql_once("CREATE TRIGGER t BEFORE INSERT ON events BEGIN SELECT RAISE(FAIL, 'injected'); END;");
    ck_assert_fails(history_release_remove(h, "1.0", "t"), -EINVAL, "injected");
    ck_assert_int_eq(count("SELECT count(*) FROM releases"), 1);
}
END_TEST

/* ---- history_releases ---------------------------------------------------- */

START_TEST(releases_shape)
{
    ck_assert_int_eq(history_release_add(h, "1.0", "shop", "t"), 0);
    ck_assert_int_eq(history_release_add(h, "2.0", "shop", "t"), 0);
    ck_assert_int_eq(history_release_set_state(h, "2.0", RELEASE_CURRENT, "t"), 0);
    json_t *rels = NULL;
    ck_assert_int_eq(history_releases(h, &rels), 0);
    ck_assert_int_eq(json_array_size(rels), 2);
    json_t *r = json_array_get(rels, 1);
    ck_assert_int_eq(json_object_size(r), 6);
    ck_assert(json_is_null(json_object_get(r, "signature")));
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(rels, 0), "vsn")), "1.0");
    ck_assert_str_eq(json_string_value(json_object_get(r, "vsn")), "2.0");
    ck_assert_str_eq(json_string_value(json_object_get(r, "name")), "shop");
    ck_assert_str_eq(json_string_value(json_object_get(r, "state")), "current");
    ck_assert_int_eq(strlen(json_string_value(json_object_get(r, "unpacked_at"))), 24);
    ck_assert_int_eq(strlen(json_string_value(json_object_get(r, "changed_at"))), 24);
    json_decref(rels);
}
END_TEST

START_TEST(releases_signed_keeps_its_signature)
{
    json_t *sig = json_pack("{s:s, s:s, s:s}", "key_id", "0123456789ABCDEF", "trusted_comment",
                            "reld release=shop vsn=1.0", "blake2b", "00ff");
    ck_assert_int_eq(history_release_add_signed(h, "1.0", "shop", "t", sig), 0);
    json_t *rels = NULL;
    ck_assert_int_eq(history_releases(h, &rels), 0);
    ck_assert(json_equal(json_object_get(json_array_get(rels, 0), "signature"), sig));
    json_decref(rels);
    /* The same object in a "signature" event, beside "unpacked". */
    json_t *l = list(10);
    json_t *ev = json_array_get(json_object_get(l, "events"), 1);
    ck_assert_str_eq(json_string_value(json_object_get(ev, "kind")), "signature");
    ck_assert_str_eq(json_string_value(json_object_get(ev, "release")), "1.0");
    ck_assert(json_equal(json_object_get(ev, "detail"), sig));
    json_decref(l);
    /* Not an object; a known version: nothing written. */
    json_t *str = json_string("x");
    ck_assert_fails(history_release_add_signed(h, "2.0", "shop", "t", str), -EINVAL, "JSON object");
    json_decref(str);
    ck_assert_fails(history_release_add_signed(h, "1.0", "shop", "t", sig), -EEXIST, "already known");
    ck_assert_int_eq(count("SELECT count(*) FROM releases"), 1);
    ck_assert_int_eq(count("SELECT count(*) FROM events"), 2);
    json_decref(sig);
}
END_TEST

START_TEST(releases_damaged_page_is_euclean)
{
    long long off = fifty_releases_closed();
    reopen(); /* sound: quick_check passes */
    char junk[512];
    memset(junk, 0xa5, sizeof(junk));
    scribble(off, junk, sizeof(junk));
    /* Another connection's commit makes h drop its cached pages: it reads
     * the damaged page from the file. */
    sql_once("INSERT INTO events(at, kind) VALUES ('x', 'other')");
    json_t *rels = NULL;
    ck_assert_fails(history_releases(h, &rels), -EUCLEAN, "malformed");
    ck_assert_ptr_null(rels);
}
END_TEST

START_TEST(releases_text_that_is_not_utf8_is_eilseq)
{
    sql_once("INSERT INTO releases VALUES ('1.0', CAST(X'FF00' AS TEXT), 'old', 'a', 'b', NULL)");
    json_t *rels = NULL;
    ck_assert_fails(history_releases(h, &rels), -EILSEQ, "column name holds text that is not UTF-8");
    ck_assert_ptr_null(rels);
}
END_TEST

/* ---- history_recover ----------------------------------------------------- */

START_TEST(recover_records_the_releases_and_one_event)
{
    HistoryRelease v[] = {{"1.0", "shop", RELEASE_PERMANENT}, {"2.0", "shop", RELEASE_UNPACKED}};
    json_t *detail = json_pack("{s:s, s:[s,s]}", "damaged", "reld.db.damaged-x", "releases", "1.0", "2.0");
    ck_assert_int_eq(history_recover(h, v, 2, "reld --recover", detail), 0);
    json_decref(detail);
    json_t *rels = NULL;
    ck_assert_int_eq(history_releases(h, &rels), 0);
    ck_assert_int_eq(json_array_size(rels), 2);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(rels, 0), "vsn")), "1.0");
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(rels, 0), "state")), "permanent");
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(rels, 1), "state")), "unpacked");
    json_decref(rels);
    json_t *l = list(10);
    json_t *evs = json_object_get(l, "events");
    ck_assert_int_eq(json_array_size(evs), 1);
    json_t *e = json_array_get(evs, 0);
    ck_assert_str_eq(json_string_value(json_object_get(e, "kind")), "recovered");
    ck_assert_str_eq(json_string_value(json_object_get(e, "who")), "reld --recover");
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(e, "detail"), "damaged")), "reld.db.damaged-x");
    json_decref(l);
    /* A recovery fills a new database, never a used one. */
    HistoryRelease w[] = {{"3.0", "shop", RELEASE_UNPACKED}};
    ck_assert_fails(history_recover(h, w, 1, "t", NULL), -EEXIST, "knows release 1.0 already");
    ck_assert_int_eq(count("SELECT count(*) FROM releases"), 2);
    ck_assert_int_eq(count("SELECT count(*) FROM events"), 1);
}
END_TEST

START_TEST(recover_of_nothing_is_its_event)
{
    ck_assert_int_eq(history_recover(h, NULL, 0, "t", NULL), 0);
    ck_assert_int_eq(count("SELECT count(*) FROM releases"), 0);
    ck_assert_int_eq(count("SELECT count(*) FROM events WHERE kind = 'recovered' AND detail IS NULL"), 1);
}
END_TEST

START_TEST(recover_all_or_nothing)
{
    HistoryRelease two_permanent[] = {{"1.0", "shop", RELEASE_PERMANENT}, {"2.0", "shop", RELEASE_PERMANENT}};
    ck_assert_fails(history_recover(h, two_permanent, 2, "t", NULL), -EEXIST,
                    "release 2.0 cannot be recorded as permanent");
    HistoryRelease twice[] = {{"1.0", "shop", RELEASE_UNPACKED}, {"1.0", "shop", RELEASE_UNPACKED}};
    ck_assert_fails(history_recover(h, twice, 2, "t", NULL), -EEXIST, "UNIQUE");
    HistoryRelease bad_state[] = {{"1.0", "shop", "running"}};
    ck_assert_fails(history_recover(h, bad_state, 1, "t", NULL), -EINVAL, "'running' is not a release state");
    HistoryRelease no_name[] = {{"1.0", "", RELEASE_UNPACKED}};
    ck_assert_fails(history_recover(h, no_name, 1, "t", NULL), -EINVAL, "needs a version and a name");
    ck_assert_fails(history_recover(h, NULL, 1, "t", NULL), -EINVAL, "no releases");
    /* The event fails last: the releases go with it. */
    sql_once("CREATE TRIGGER t BEFORE INSERT ON events BEGIN SELECT RAISE(FAIL, 'injected'); END;");
    HistoryRelease one[] = {{"1.0", "shop", RELEASE_UNPACKED}};
    ck_assert_fails(history_recover(h, one, 1, "t", NULL), -EINVAL, "injected");
    ck_assert_int_eq(count("SELECT count(*) FROM releases"), 0);
    ck_assert_int_eq(count("SELECT count(*) FROM events"), 0);
}
END_TEST

/* ---- history_event ------------------------------------------------------- */

START_TEST(event_with_and_without_detail)
{
    json_t *d = json_pack("{s:i, s:s}", "pid", 42, "why", "exit 1");
    ck_assert_int_eq(history_event(h, "process_exit", "reld", "1.0", d), 0);
    json_decref(d);
    ck_assert_int_eq(history_event(h, "boot", NULL, NULL, NULL), 0);
    ck_assert_fails(history_event(h, NULL, "t", NULL, NULL), -EINVAL, "needs a kind");
    ck_assert_fails(history_event(h, "", "t", NULL, NULL), -EINVAL, "needs a kind");
    json_t *l = list(10), *evs = json_object_get(l, "events");
    ck_assert_int_eq(json_array_size(evs), 2);
    json_t *e0 = json_array_get(evs, 0), *e1 = json_array_get(evs, 1);
    ck_assert_int_eq(json_object_size(e0), 6);
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(e0, "detail"), "pid")), 42);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(e0, "detail"), "why")), "exit 1");
    ck_assert_str_eq(json_string_value(json_object_get(e1, "kind")), "boot");
    ck_assert(json_is_null(json_object_get(e1, "who")));
    ck_assert(json_is_null(json_object_get(e1, "release")));
    ck_assert(json_is_null(json_object_get(e1, "detail")));
    ck_assert_int_gt(json_integer_value(json_object_get(e1, "id")), json_integer_value(json_object_get(e0, "id")));
    json_decref(l);
}
END_TEST

START_TEST(event_disk_full)
{
    fail_wal_writes = SQLITE_FULL;
    ck_assert_fails(history_event(h, "boot", "t", NULL, NULL), -ENOSPC, "full");
    fail_wal_writes = 0;
    ck_assert_int_eq(count("SELECT count(*) FROM events"), 0);
    ck_assert_int_eq(history_event(h, "boot", "t", NULL, NULL), 0);
    ck_assert_int_eq(count("SELECT count(*) FROM events"), 1);
}
END_TEST

/* ---- attempts ------------------------------------------------------------ */

static int64_t begin_attempt(void)
{
    int64_t id = -1;
    ck_assert_int_eq(history_attempt_begin(h, "uid 0", "upgrade", "1.0", "2.0", &id), 0);
    ck_assert_int_gt(id, 0);
    return id;
}

/* Writes instructions 0 .. n-1 of attempt with outcome. */
static int write_instructions(int64_t attempt, size_t n, const char *outcome)
{
    HistoryInstruction v[8];
    ck_assert_uint_le(n, 8);
    for (size_t k = 0; k < n; k++)
        v[k] = (HistoryInstruction){.idx = (int)k,
                                    .instr = json_pack("{s:s, s:i}", "op", "load", "k", (int)k),
                                    .outcome = outcome,
                                    .start_us = 100 * (int64_t)k,
                                    .duration_us = 10};
    int r = history_attempt_instructions(h, attempt, v, n);
    for (size_t k = 0; k < n; k++)
        json_decref(v[k].instr);
    return r;
}

START_TEST(attempt_begin_and_bad_arguments)
{
    int64_t a = begin_attempt(), b = begin_attempt(), id = -1;
    ck_assert_int_gt(b, a);
    ck_assert_fails(history_attempt_begin(h, "t", NULL, "1.0", "2.0", &id), -EINVAL, "needs a kind");
    ck_assert_fails(history_attempt_begin(h, "t", "upgrade", "1.0", NULL, &id), -EINVAL, "target release");
    ck_assert_int_eq(id, -1);
    ck_assert_int_eq(history_attempt_begin(h, NULL, "install", NULL, "1.0", &id), 0); /* a first release */
    ck_assert_int_eq(count("SELECT count(*) FROM attempts WHERE result IS NULL"), 3);
    ck_assert_int_eq(count("SELECT count(*) FROM attempts WHERE from_vsn IS NULL"), 1);
}
END_TEST

START_TEST(attempt_begin_refused_by_the_database)
{
    sql_once("CREATE TRIGGER t BEFORE INSERT ON attempts BEGIN SELECT RAISE(FAIL, 'injected'); END;");
    int64_t id = -1;
    ck_assert_fails(history_attempt_begin(h, "t", "upgrade", "1.0", "2.0", &id), -EINVAL, "injected");
    ck_assert_int_eq(id, -1);
    ck_assert_int_eq(count("SELECT count(*) FROM attempts"), 0);
}
END_TEST

START_TEST(attempt_instructions_write_and_rewrite)
{
    int64_t a = begin_attempt();
    ck_assert_int_eq(write_instructions(a, 3, "running"), 0);
    ck_assert_int_eq(write_instructions(a, 2, "ok"), 0);
    ck_assert_int_eq(history_attempt_instructions(h, a, NULL, 0), 0);
    ck_assert_int_eq(count("SELECT count(*) FROM instructions"), 3);
    ck_assert_int_eq(count("SELECT count(*) FROM instructions WHERE outcome = 'ok'"), 2);
    ck_assert_str_eq(text_of("SELECT outcome FROM instructions WHERE idx = 2"), "running");
    ck_assert_int_eq(count("SELECT start_us FROM instructions WHERE idx = 2"), 200);
}
END_TEST

START_TEST(attempt_instructions_bad_arguments)
{
    int64_t a = begin_attempt();
    ck_assert_fails(write_instructions(a + 1, 2, "running"), -ENOENT, "is not known");
    HistoryInstruction v = {.idx = 4, .instr = NULL, .outcome = "ok"};
    ck_assert_fails(history_attempt_instructions(h, a, &v, 1), -EINVAL, "instruction 4 needs");
    ck_assert_fails(write_instructions(a, 2, NULL), -EINVAL, "instruction 0 needs");
    ck_assert_fails(history_attempt_instructions(h, a, NULL, 1), -EINVAL, "no instructions");
    ck_assert_int_eq(count("SELECT count(*) FROM instructions"), 0);
}
END_TEST

START_TEST(attempt_instructions_injected_failure_writes_nothing)
{
    int64_t a = begin_attempt();
    /* The third row fails: the first two are not left behind. */
    sql_once("CREATE TRIGGER t BEFORE INSERT ON instructions WHEN NEW.idx = 2 "
             "BEGIN SELECT RAISE(FAIL, 'injected'); END;");
    ck_assert_fails(write_instructions(a, 3, "running"), -EINVAL, "injected");
    ck_assert_int_eq(count("SELECT count(*) FROM instructions"), 0);
    /* A rewrite that fails half-way leaves the rows as they were. */
    ck_assert_int_eq(write_instructions(a, 2, "running"), 0);
    sql_once("DROP TRIGGER t; CREATE TRIGGER t BEFORE INSERT ON instructions WHEN NEW.idx = 1 AND NEW.outcome = 'ok' "
             "BEGIN SELECT RAISE(FAIL, 'injected'); END;");
    ck_assert_fails(write_instructions(a, 2, "ok"), -EINVAL, "injected");
    ck_assert_int_eq(count("SELECT count(*) FROM instructions WHERE outcome = 'running'"), 2);
    ck_assert_int_eq(count("SELECT count(*) FROM instructions"), 2);
}
END_TEST

START_TEST(attempt_instructions_disk_full_at_commit)
{
    int64_t a = begin_attempt();
    fail_wal_writes = SQLITE_FULL;
    ck_assert_fails(write_instructions(a, 3, "running"), -ENOSPC, "full");
    ck_assert_int_gt(wal_writes_failed, 0);
    fail_wal_writes = 0;
    ck_assert_int_eq(count("SELECT count(*) FROM instructions"), 0);
    ck_assert_int_eq(write_instructions(a, 3, "running"), 0);
    ck_assert_int_eq(count("SELECT count(*) FROM instructions"), 3);
}
END_TEST

START_TEST(attempt_instructions_busy)
{
    int64_t a = begin_attempt();
    sqlite3 *db = raw();
    sql(db, "BEGIN IMMEDIATE");
    ck_assert_fails(write_instructions(a, 1, "running"), -EBUSY, "database is locked");
    sql(db, "COMMIT");
    ck_assert_int_eq(sqlite3_close(db), SQLITE_OK);
    ck_assert_int_eq(count("SELECT count(*) FROM instructions"), 0);
}
END_TEST

/* The executor's batch: the rows of many steps in one call, one commit. */
START_TEST(attempt_instructions_batch_is_one_commit)
{
    int64_t a = begin_attempt();
    enum { N = 10000 };
    HistoryInstruction *v = calloc(N, sizeof(*v));
    ck_assert_ptr_nonnull(v);
    json_t *instr = json_pack("{s:s, s:s}", "op", "load", "module", "m");
    for (int k = 0; k < N; k++)
        v[k] = (HistoryInstruction){.idx = k + 1, .instr = instr, .outcome = "ok", .start_us = k, .duration_us = 1};
    int64_t before = history_commits(h);
    ck_assert_int_eq(history_attempt_instructions(h, a, v, N), 0);
    ck_assert_int_eq(history_commits(h) - before, 1);
    ck_assert_int_eq(count("SELECT count(*) FROM instructions WHERE outcome = 'ok'"), N);
    ck_assert_int_eq(count("SELECT sum(start_us) FROM instructions"), (long long)N * (N - 1) / 2);
    /* A second batch rewrites some rows and adds one: one commit more. */
    v[0].outcome = v[1].outcome = "failed: no";
    v[2] = (HistoryInstruction){.idx = N + 1, .instr = instr, .outcome = "not run"};
    ck_assert_int_eq(history_attempt_instructions(h, a, v, 3), 0);
    ck_assert_int_eq(history_commits(h) - before, 2);
    ck_assert_int_eq(count("SELECT count(*) FROM instructions"), N + 1);
    ck_assert_int_eq(count("SELECT count(*) FROM instructions WHERE outcome = 'failed: no' AND idx <= 2"), 2);
    /* A batch that fails half-way commits nothing, and the next goes on. */
    sql_once("CREATE TRIGGER t BEFORE INSERT ON instructions WHEN NEW.idx = 5000 "
             "BEGIN SELECT RAISE(FAIL, 'injected'); END;");
    for (int k = 0; k < N; k++)
        v[k].outcome = "rewritten";
    ck_assert_fails(history_attempt_instructions(h, a, v, N), -EINVAL, "injected");
    ck_assert_int_eq(history_commits(h) - before, 2);
    ck_assert_int_eq(count("SELECT count(*) FROM instructions WHERE outcome = 'rewritten'"), 0);
    ck_assert_int_eq(history_attempt_instructions(h, a, v, 4999), 0);
    ck_assert_int_eq(history_commits(h) - before, 3);
    ck_assert_int_eq(count("SELECT count(*) FROM instructions WHERE outcome = 'rewritten'"), 4999);
    json_decref(instr);
    free(v);
}
END_TEST

/* What history_commits counts: writes, each autocommit one too; not
 * reads, nor a transaction rolled back. */
START_TEST(commits_counts_writes_only)
{
    ck_assert_int_eq(history_commits(NULL), 0);
    int64_t c = history_commits(h);
    ck_assert_int_eq(history_event(h, "boot", NULL, NULL, NULL), 0); /* one statement, autocommit */
    ck_assert_int_eq(history_commits(h), c + 1);
    json_t *list = NULL;
    ck_assert_int_eq(history_list(h, 5, &list), 0); /* a read transaction */
    json_decref(list);
    ck_assert_int_eq(history_commits(h), c + 1);
    ck_assert_int_eq(history_release_add(h, "1.0", "shop", "t"), 0); /* two rows, one transaction */
    ck_assert_int_eq(history_commits(h), c + 2);
    ck_assert_fails(history_release_add(h, "1.0", "shop", "t"), -EEXIST, "already known");
    ck_assert_int_eq(history_commits(h), c + 2);
}
END_TEST

/* The prepared statements kept between batches follow a change of the
 * schema by another connection (SQLite prepares them again). */
START_TEST(attempt_instructions_after_a_schema_change)
{
    int64_t a = begin_attempt();
    ck_assert_int_eq(write_instructions(a, 2, "running"), 0);
    sql_once("CREATE TRIGGER t BEFORE INSERT ON instructions WHEN NEW.outcome = 'ok' "
             "BEGIN SELECT RAISE(FAIL, 'injected after'); END;");
    ck_assert_fails(write_instructions(a, 2, "ok"), -EINVAL, "injected after");
    sql_once("DROP TRIGGER t");
    ck_assert_int_eq(write_instructions(a, 2, "ok"), 0);
    ck_assert_int_eq(count("SELECT count(*) FROM instructions WHERE outcome = 'ok'"), 2);
    ck_assert_fails(write_instructions(a + 1, 1, "ok"), -ENOENT, "is not known");
}
END_TEST

START_TEST(attempt_end_sets_result)
{
    int64_t a = begin_attempt();
    ck_assert_int_eq(history_attempt_end(h, a, "failed", "suspend timed out"), 0);
    ck_assert_str_eq(text_of("SELECT result FROM attempts"), "failed");
    ck_assert_str_eq(text_of("SELECT detail FROM attempts"), "suspend timed out");
    ck_assert_ptr_nonnull(text_of("SELECT finished_at FROM attempts"));
    ck_assert_int_eq(count("SELECT duration_ms >= 0 AND duration_ms < 60000 FROM attempts"), 1);
    /* Exact from started_us: not whole milliseconds of julianday(). */
    ck_assert_int_eq(count("SELECT started_us > 1700000000000000 FROM attempts"), 1);
    ck_assert_int_eq(count("SELECT abs(duration_ms * 1000 - round(duration_ms * 1000)) < 1e-6 FROM attempts"), 1);
    ck_assert_fails(history_attempt_end(h, a + 1, "ok", NULL), -ENOENT, "is not known");
    ck_assert_fails(history_attempt_end(h, a, NULL, NULL), -EINVAL, "with a result");
    ck_assert_str_eq(text_of("SELECT result FROM attempts"), "failed");
}
END_TEST

START_TEST(attempt_end_disk_full)
{
    int64_t a = begin_attempt();
    fail_wal_writes = SQLITE_FULL;
    ck_assert_fails(history_attempt_end(h, a, "ok", NULL), -ENOSPC, "full");
    fail_wal_writes = 0;
    ck_assert_ptr_null(text_of("SELECT result FROM attempts"));
}
END_TEST

/* ---- history_attempts_interrupted ---------------------------------------- */

START_TEST(interrupted_attempt_is_closed_after_a_restart)
{
    int64_t done = begin_attempt();
    /* An attempt that ends with a row still running lost that row's outcome
     * (it could not be written): its end says so, and a restart leaves it. */
    ck_assert_int_eq(write_instructions(done, 1, "running"), 0);
    ck_assert_int_eq(history_attempt_end(h, done, "ok", NULL), 0);
    int64_t a = begin_attempt();
    ck_assert_int_eq(write_instructions(a, 2, "ok"), 0);
    HistoryInstruction v = {.idx = 2, .instr = json_pack("{s:s}", "op", "suspend"), .outcome = "running"};
    ck_assert_int_eq(history_attempt_instructions(h, a, &v, 1), 0);
    json_decref(v.instr);
    reopen(); /* reld died and came back */
    ck_assert_int_eq(history_attempts_interrupted(h), 1);
    ck_assert_int_eq(history_attempts_interrupted(h), 0);
    json_t *l = list(10), *ats = json_object_get(l, "attempts");
    ck_assert_int_eq(json_array_size(ats), 2);
    json_t *at = json_array_get(ats, 1), *ins = json_object_get(at, "instructions");
    ck_assert_str_eq(json_string_value(json_object_get(at, "result")), "interrupted");
    ck_assert_str_eq(json_string_value(json_object_get(at, "detail")),
                     "reld stopped during the attempt; it restarted on the permanent release");
    ck_assert(json_is_string(json_object_get(at, "finished_at")));
    ck_assert_int_eq(json_array_size(ins), 3);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(ins, 0), "outcome")), "ok");
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(ins, 2), "outcome")), "interrupted");
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(ats, 0), "result")), "ok");
    ck_assert_str_eq(json_string_value(json_object_get(
                         json_array_get(json_object_get(json_array_get(ats, 0), "instructions"), 0), "outcome")),
                     "not recorded: its outcome could not be written");
    json_decref(l);
}
END_TEST

START_TEST(interrupted_is_one_transaction)
{
    int64_t a = begin_attempt();
    ck_assert_int_eq(write_instructions(a, 1, "running"), 0);
    sql_once("CREATE TRIGGER t BEFORE UPDATE ON attempts BEGIN SELECT RAISE(FAIL, 'injected'); END;");
    reopen();
    ck_assert_fails(history_attempts_interrupted(h), -EINVAL, "injected");
    ck_assert_str_eq(text_of("SELECT outcome FROM instructions"), "running");
    ck_assert_ptr_null(text_of("SELECT result FROM attempts"));
    sql_once("DROP TRIGGER t");
    ck_assert_int_eq(history_attempts_interrupted(h), 1);
    ck_assert_str_eq(text_of("SELECT outcome FROM instructions"), "interrupted");
}
END_TEST

/* ---- history_list ------------------------------------------------------- */

START_TEST(list_shape_and_limit)
{
    for (int i = 0; i < 5; i++) {
        char vsn[16];
        snprintf(vsn, sizeof(vsn), "%d.0", i);
        ck_assert_int_eq(history_release_add(h, vsn, "shop", "t"), 0);
    }
    int64_t a = begin_attempt(), b = begin_attempt();
    ck_assert_int_eq(write_instructions(a, 2, "ok"), 0);
    ck_assert_int_eq(history_attempt_end(h, a, "ok", NULL), 0);
    json_t *l = list(3);
    ck_assert_int_eq(json_object_size(l), 2);
    json_t *evs = json_object_get(l, "events"), *ats = json_object_get(l, "attempts");
    ck_assert_int_eq(json_array_size(evs), 3); /* the newest 3, oldest first */
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(evs, 0), "release")), "2.0");
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(evs, 2), "release")), "4.0");
    ck_assert_int_eq(json_array_size(ats), 2);
    json_t *at = json_array_get(ats, 0);
    ck_assert_int_eq(json_object_size(at), 11);
    ck_assert_int_eq(json_integer_value(json_object_get(at, "id")), a);
    ck_assert_str_eq(json_string_value(json_object_get(at, "kind")), "upgrade");
    ck_assert_str_eq(json_string_value(json_object_get(at, "from_vsn")), "1.0");
    ck_assert_str_eq(json_string_value(json_object_get(at, "to_vsn")), "2.0");
    ck_assert(json_is_real(json_object_get(at, "duration_ms")));
    json_t *ins = json_object_get(at, "instructions"), *i1 = json_array_get(ins, 1);
    ck_assert_int_eq(json_array_size(ins), 2);
    ck_assert_int_eq(json_object_size(i1), 5);
    ck_assert_int_eq(json_integer_value(json_object_get(i1, "idx")), 1);
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(i1, "instr"), "k")), 1);
    ck_assert_int_eq(json_integer_value(json_object_get(i1, "start_us")), 100);
    ck_assert_int_eq(json_integer_value(json_object_get(i1, "duration_us")), 10);
    json_t *bt = json_array_get(ats, 1);
    ck_assert_int_eq(json_integer_value(json_object_get(bt, "id")), b);
    ck_assert(json_is_null(json_object_get(bt, "result")));
    ck_assert_int_eq(json_array_size(json_object_get(bt, "instructions")), 0);
    json_decref(l);
    l = list(1);
    ck_assert_int_eq(json_array_size(json_object_get(l, "attempts")), 1);
    ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(json_object_get(l, "attempts"), 0), "id")), b);
    json_decref(l);
    json_t *none = NULL;
    ck_assert_fails(history_list(h, 0, &none), -EINVAL, "a list of 0 entries");
    ck_assert_fails(history_list(h, -1, &none), -EINVAL, "a list of -1 entries");
    ck_assert_ptr_null(none);
}
END_TEST

START_TEST(list_of_a_damaged_database_fails)
{
    int64_t a = begin_attempt();
    ck_assert_int_eq(write_instructions(a, 1, "ok"), 0);
    sql_once("UPDATE instructions SET outcome = CAST(X'C328' AS TEXT)");
    json_t *l = NULL;
    ck_assert_fails(history_list(h, 10, &l), -EILSEQ, "column outcome holds text that is not UTF-8");
    ck_assert_ptr_null(l);
    /* The read transaction was closed: a change works. */
    ck_assert_int_eq(history_event(h, "boot", "t", NULL, NULL), 0);
}
END_TEST

/* ---- history_last_error -------------------------------------------------- */

START_TEST(last_error_is_the_last_failure)
{
    ck_assert_str_eq(history_last_error(h), "");
    ck_assert_str_eq(history_last_error(NULL), "no database");
    char *s = NULL;
    ck_assert_int_eq(history_release_state(h, "7", &s), -ENOENT);
    ck_assert_str_eq(history_last_error(h), "release 7 is not known");
    ck_assert_int_eq(history_release_add(h, "7", "shop", "t"), 0);
    ck_assert_str_eq(history_last_error(h), "release 7 is not known"); /* a success leaves it */
    ck_assert_int_eq(history_release_add(h, "7", "shop", "t"), -EEXIST);
    ck_assert_str_eq(history_last_error(h), "release 7 is already known (UNIQUE constraint failed: releases.vsn)");
}
END_TEST

/* ---- history_pauses ------------------------------------------------------- */

/* An attempt from -> to of kind with result, whose suspend (idx 2) starts
 * at start_us and whose resume (idx 5) ends dur_us later: its id. */
static int64_t pause_attempt(const char *kind, const char *from, const char *to, const char *result, int64_t start_us,
                             int64_t dur_us)
{
    int64_t id = 0;
    ck_assert_int_eq(history_attempt_begin(h, "t", kind, from, to, &id), 0);
    HistoryInstruction v[] = {
        {.idx = 0, .instr = json_pack("{s:s}", "op", "rehearse"), .outcome = "ok", .start_us = 0, .duration_us = 900},
        {.idx = 1, .instr = json_pack("{s:s}", "op", "point_of_no_return"), .outcome = "ok", .start_us = 10},
        {.idx = 2,
         .instr = json_pack("{s:s, s:[s]}", "op", "suspend", "modules", "kv"),
         .outcome = "ok",
         .start_us = start_us,
         .duration_us = 5},
        {.idx = 3, .instr = json_pack("{s:s}", "op", "load"), .outcome = "ok", .start_us = start_us + 5},
        {.idx = 4, .instr = json_pack("{s:s}", "op", "code_change"), .outcome = "ok", .start_us = start_us + 6},
        {.idx = 5,
         .instr = json_pack("{s:s, s:[s]}", "op", "resume", "modules", "kv"),
         .outcome = "ok",
         .start_us = start_us + dur_us - 4,
         .duration_us = 4},
    };
    size_t n = sizeof(v) / sizeof(v[0]);
    ck_assert_int_eq(history_attempt_instructions(h, id, v, n), 0);
    for (size_t k = 0; k < n; k++)
        json_decref(v[k].instr);
    ck_assert_int_eq(history_attempt_end(h, id, result, NULL), 0);
    return id;
}

START_TEST(pauses_of_earlier_upgrades)
{
    pause_attempt("upgrade", "1", "2", "ok", 100, 3000);      /* 3 ms */
    pause_attempt("upgrade", "1", "2", "failed", 100, 90000); /* failed: not counted */
    pause_attempt("dry_run", "1", "2", "ok", 100, 70000);     /* a dry run: not counted */
    pause_attempt("downgrade", "2", "1", "ok", 100, 50000);   /* the other way */
    pause_attempt("upgrade", "1", "2", "ok", 200, 1500);      /* 1.5 ms, the newest */
    json_t *p = NULL;
    ck_assert_int_eq(history_pauses(h, "1", "2", &p), 0);
    ck_assert_int_eq(json_integer_value(json_object_get(p, "attempts")), 2);
    json_t *w = json_object_get(p, "windows");
    ck_assert_int_eq(json_array_size(w), 1);
    json_t *w0 = json_array_get(w, 0);
    ck_assert_int_eq(json_integer_value(json_object_get(w0, "idx")), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(w0, "n")), 2);
    ck_assert_str_eq(json_string_value(json_array_get(json_object_get(w0, "modules"), 0)), "kv");
    ck_assert_double_eq_tol(json_real_value(json_object_get(w0, "min_ms")), 1.5, 1e-9);
    ck_assert_double_eq_tol(json_real_value(json_object_get(w0, "max_ms")), 3.0, 1e-9);
    ck_assert_double_eq_tol(json_real_value(json_object_get(w0, "last_ms")), 1.5, 1e-9);
    json_decref(p);
    ck_assert_int_eq(history_pauses(h, "2", "1", &p), 0);
    ck_assert_double_eq_tol(
        json_real_value(json_object_get(json_array_get(json_object_get(p, "windows"), 0), "max_ms")), 50.0, 1e-9);
    json_decref(p);
}
END_TEST

START_TEST(pauses_of_one_attempt)
{
    int64_t first = pause_attempt("upgrade", "1", "2", "ok", 100, 3000);
    int64_t failed = pause_attempt("upgrade", "1", "2", "failed", 100, 90000);
    int64_t dry = pause_attempt("dry_run", "1", "2", "ok", 100, 70000);
    int64_t newest = pause_attempt("upgrade", "1", "2", "ok", 200, 1500);
    json_t *p = NULL;
    ck_assert_int_eq(history_attempt_pauses(h, newest, &p), 0);
    ck_assert_int_eq(json_integer_value(json_object_get(p, "attempts")), 1);
    json_t *w0 = json_array_get(json_object_get(p, "windows"), 0);
    ck_assert_int_eq(json_array_size(json_object_get(p, "windows")), 1);
    ck_assert_int_eq(json_integer_value(json_object_get(w0, "idx")), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(w0, "n")), 1);
    ck_assert_double_eq_tol(json_real_value(json_object_get(w0, "last_ms")), 1.5, 1e-9);
    ck_assert_double_eq_tol(json_real_value(json_object_get(w0, "max_ms")), 1.5, 1e-9);
    json_decref(p);
    ck_assert_int_eq(history_attempt_pauses(h, first, &p), 0);
    ck_assert_double_eq_tol(
        json_real_value(json_object_get(json_array_get(json_object_get(p, "windows"), 0), "last_ms")), 3.0, 1e-9);
    json_decref(p);
    /* One that failed, a dry run, one that does not exist: none. */
    int64_t none[] = {failed, dry, newest + 100};
    for (size_t k = 0; k < 3; k++) {
        ck_assert_int_eq(history_attempt_pauses(h, none[k], &p), 0);
        ck_assert_int_eq(json_integer_value(json_object_get(p, "attempts")), 0);
        ck_assert_int_eq(json_array_size(json_object_get(p, "windows")), 0);
        json_decref(p);
    }
    p = NULL;
    ck_assert_int_eq(history_attempt_pauses(h, 0, &p), -EINVAL);
    ck_assert_int_eq(history_attempt_pauses(h, newest, NULL), -EINVAL);
    ck_assert_ptr_null(p);
    ck_assert_str_eq(history_last_error(h), "the pauses of an attempt need its id");
}
END_TEST

START_TEST(pauses_none_and_bad_arguments)
{
    json_t *p = NULL;
    ck_assert_int_eq(history_pauses(h, "1", "2", &p), 0);
    ck_assert_int_eq(json_integer_value(json_object_get(p, "attempts")), 0);
    ck_assert_int_eq(json_array_size(json_object_get(p, "windows")), 0);
    json_decref(p);
    /* A suspend without its resume (an attempt that stopped inside its
     * group cannot be "ok", but rows can be missing): no window. */
    int64_t id = 0;
    ck_assert_int_eq(history_attempt_begin(h, "t", "upgrade", "1", "2", &id), 0);
    HistoryInstruction v = {.idx = 1, .instr = json_pack("{s:s}", "op", "suspend"), .outcome = "ok", .start_us = 5};
    ck_assert_int_eq(history_attempt_instructions(h, id, &v, 1), 0);
    json_decref(v.instr);
    ck_assert_int_eq(history_attempt_end(h, id, "ok", NULL), 0);
    ck_assert_int_eq(history_pauses(h, "1", "2", &p), 0);
    ck_assert_int_eq(json_integer_value(json_object_get(p, "attempts")), 1);
    ck_assert_int_eq(json_array_size(json_object_get(p, "windows")), 0);
    json_decref(p);
    p = NULL;
    ck_assert_int_eq(history_pauses(h, NULL, "2", &p), -EINVAL);
    ck_assert_int_eq(history_pauses(h, "1", NULL, &p), -EINVAL);
    ck_assert_int_eq(history_pauses(h, "1", "2", NULL), -EINVAL);
    ck_assert_ptr_null(p);
    ck_assert_str_eq(history_last_error(h), "the pauses of an upgrade need its two releases");
}
END_TEST

START_TEST(pauses_of_a_damaged_database_fail)
{
    pause_attempt("upgrade", "1", "2", "ok", 100, 3000);
    sql_once("UPDATE instructions SET instr = CAST(X'C328' AS TEXT) WHERE idx = 2");
    json_t *p = NULL;
    ck_assert_fails(history_pauses(h, "1", "2", &p), -EILSEQ, "column instr holds text that is not UTF-8");
    ck_assert_ptr_null(p);
    /* The read transaction was closed: a change works. */
    ck_assert_int_eq(history_event(h, "boot", "t", NULL, NULL), 0);
}
END_TEST

static Suite *history_suite(void)
{
    Suite *s = suite_create("history");
    struct {
        const char *name;
        const TTest *tests[12];
    } cases[] = {
        {"history_open",
         {open_creates_a_fresh_database, open_migrates_version_1_and_keeps_its_rows,
          open_failed_migration_is_rolled_back, open_refuses_a_newer_schema, open_refuses_a_file_that_is_not_a_database,
          open_says_why_a_file_cannot_be_opened, open_refuses_a_read_only_database, open_beside_a_writer_then_busy,
          open_refuses_a_damaged_page_and_leaves_the_file, open_refuses_a_database_missing_a_table,
          open_existing_missing_empty_and_foreign}},
        {"history_release_add",
         {release_add_writes_the_release_and_its_event, release_add_twice_is_eexist_and_writes_nothing,
          release_add_bad_arguments, release_add_failed_event_takes_the_release_back, release_add_disk_full_at_commit,
          release_add_io_error_at_commit}},
        {"history_release_set_state",
         {set_state_changes_the_state_with_its_event, set_state_unknown_release_is_enoent,
          set_state_bad_state_is_einval, set_state_one_current_and_one_permanent,
          set_state_failed_event_keeps_the_old_state, set_state_disk_full_at_commit}},
        {"history_release_set_states", {set_states_all_or_nothing}},
        {"history_release_state", {release_state_and_in_state}},
        {"history_release_remove",
         {release_remove_deletes_with_its_event, release_remove_failed_event_keeps_the_release}},
        {"history_releases",
         {releases_shape, releases_signed_keeps_its_signature, releases_damaged_page_is_euclean,
          releases_text_that_is_not_utf8_is_eilseq}},
        {"history_recover",
         {recover_records_the_releases_and_one_event, recover_of_nothing_is_its_event, recover_all_or_nothing}},
        {"history_event", {event_with_and_without_detail, event_disk_full}},
        {"history_attempt_begin", {attempt_begin_and_bad_arguments, attempt_begin_refused_by_the_database}},
        {"history_attempt_instructions",
         {attempt_instructions_write_and_rewrite, attempt_instructions_bad_arguments,
          attempt_instructions_injected_failure_writes_nothing, attempt_instructions_disk_full_at_commit,
          attempt_instructions_busy, attempt_instructions_batch_is_one_commit,
          attempt_instructions_after_a_schema_change}},
        {"history_commits", {commits_counts_writes_only}},
        {"history_attempt_end", {attempt_end_sets_result, attempt_end_disk_full}},
        {"history_attempts_interrupted",
         {interrupted_attempt_is_closed_after_a_restart, interrupted_is_one_transaction}},
        {"history_list", {list_shape_and_limit, list_of_a_damaged_database_fails}},
        {"history_last_error", {last_error_is_the_last_failure}},
        {"history_pauses",
         {pauses_of_earlier_upgrades, pauses_of_one_attempt, pauses_none_and_bad_arguments,
          pauses_of_a_damaged_database_fail}},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        TCase *tc = tcase_create(cases[i].name);
        tcase_add_checked_fixture(tc, setup, teardown);
        for (size_t k = 0; k < sizeof(cases[i].tests) / sizeof(cases[i].tests[0]) && cases[i].tests[k]; k++)
            tcase_add_test(tc, cases[i].tests[k]);
        suite_add_tcase(s, tc);
    }
    return s;
}

int main(void)
{
    if (faulty_vfs_register() < 0) {
        fprintf(stderr, "test-history: cannot register the faulty VFS\n");
        return 1;
    }
    Suite *s = history_suite();
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
