/* manager: a release root in a temporary directory, real release tarballs
 * (made with tar(1) from a source tree the fixture writes), /bin/sh
 * processes, a real sd_event loop. History failures are injected with
 * triggers written by a connection of the test's own, as in
 * test-history.c. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "manager.h"
#include "store.h"
#include "util.h"
#include "testlib.h"

static char work[] = "/tmp/reld-test-manager-XXXXXX";
static char *root, *src;
static sd_event *ev;
static Manager *m;
static DaemonConfig cfg;

/* ---- what an operation told its caller ----------------------------------- */

/* What an operation told its caller. Its reply and messages belong to
 * the arena, which teardown frees: a check that fails leaks nothing. */
typedef struct Result {
    int n;         /* done() calls */
    int r;         /* its r */
    json_t *reply; /* a copy, borrowed from the arena */
    size_t n_errors;
    const char *error; /* the first error, borrowed from the arena */
    int n_progress;
} Result;

static json_t *arena;

static void on_progress(void *userdata, json_t *line)
{
    ((Result *)userdata)->n_progress++;
}

static void on_done(void *userdata, int r, json_t *reply, const Diag *diag)
{
    Result *res = userdata;
    res->n++;
    res->r = r;
    res->reply = reply ? json_deep_copy(reply) : NULL;
    if (res->reply)
        json_array_append_new(arena, res->reply);
    res->n_errors = diag->errors.n;
    res->error = NULL;
    if (diag->errors.n) {
        json_t *e = json_string(diag->errors.v[0]);
        json_array_append_new(arena, e);
        res->error = json_string_value(e);
    }
}

static void result_clear(Result *res)
{
    *res = (Result){0};
}

static ManagerCaller caller(Result *res)
{
    return (ManagerCaller){.progress = on_progress, .done = on_done, .userdata = res};
}

static const char *first_error(const Result *res)
{
    return res->error ? res->error : "(none)";
}

/* ---- the loop -------------------------------------------------------------- */

static void run_for(int ms)
{
    long long deadline = mono_ms() + ms;
    while (mono_ms() < deadline)
        ck_assert_int_ge(sd_event_run(ev, 10 * 1000ULL), 0);
}

static void wait_result(Result *res, int ms)
{
    long long deadline = mono_ms() + ms;
    while (res->n == 0 && mono_ms() < deadline)
        ck_assert_int_ge(sd_event_run(ev, 10 * 1000ULL), 0);
    ck_assert_msg(res->n == 1, "the operation ended %d times", res->n);
}

/* ---- files ------------------------------------------------------------------- */

static void put(const char *base, const char *rel, const char *content)
{
    char *path = xasprintf("%s/%s", base, rel);
    mkdir(base, 0755);
    for (char *p = strchr(path + strlen(base) + 1, '/'); p; p = strchr(p + 1, '/')) {
        *p = 0;
        mkdir(path, 0755);
        *p = '/';
    }
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(content, f);
    ck_assert_int_eq(fclose(f), 0);
    free(path);
}

static bool exists(const char *rel)
{
    char *path = xasprintf("%s/%s", root, rel);
    bool e = access(path, F_OK) == 0;
    free(path);
    return e;
}

static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sh(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *cmd = xvasprintf(fmt, ap);
    va_end(ap);
    int rc = system(cmd);
    ck_assert_msg(rc == 0, "%s: %d", cmd, rc);
    free(cmd);
}

/* The process every application runs: notes its directory (its version)
 * in ROOT/runs, and serves until SIGTERM. */
static char *app_yaml(const char *name, const char *vsn)
{
    return xasprintf("name: %s\nvsn: \"%s\"\nmodules: [%s_m]\nprocesses:\n"
                     "  - name: p\n    exec: /bin/sh\n"
                     "    args: ['-c', 'pwd >> ../../runs; trap \"exit 0\" TERM; read x <&3']\n"
                     "    modules: [%s_m]\n    shutdown_ms: 3000\n",
                     name, vsn, name, name);
}

static void source_app(const char *name, const char *vsn)
{
    char *dir = xasprintf("lib/%s-%s/app.yaml", name, vsn), *y = app_yaml(name, vsn);
    put(src, dir, y);
    free(dir);
    free(y);
    dir = xasprintf("lib/%s-%s/modules/%s_m.so", name, vsn, name);
    put(src, dir, ""); /* its directory */
    char *path = xasprintf("%s/%s", src, dir), *module = xasprintf("%s_m", name);
    test_copy_module(module, vsn, path);
    free(module);
    free(path);
    free(dir);
}

/* The source tree: releases 1 (a-1), 2 (a-2, b-1) and 3 (a-1, b-1). */
static void make_sources(void)
{
    source_app("a", "1");
    source_app("a", "2");
    source_app("b", "1");
    put(src, "releases/1/release.yaml", "release: t\nvsn: \"1\"\napplications: [{name: a, vsn: \"1\"}]\n");
    put(src, "releases/2/release.yaml",
        "release: t\nvsn: \"2\"\napplications: [{name: a, vsn: \"2\"}, {name: b, vsn: \"1\"}]\n");
    put(src, "releases/3/release.yaml",
        "release: t\nvsn: \"3\"\napplications: [{name: a, vsn: \"1\"}, {name: b, vsn: \"1\"}]\n");
}

/* work/NAME.tar.gz of the given paths of the source tree (a static
 * buffer, until the next call). */
static const char *tarball(const char *name, const char *paths)
{
    static char t[sizeof(work) + 64];
    snprintf(t, sizeof(t), "%s/%s.tar.gz", work, name);
    sh("tar -C '%s' -czf '%s' %s", src, t, paths);
    return t;
}

static const char *release_tarball(const char *vsn)
{
    const char *apps = strcmp(vsn, "1") == 0   ? "lib/a-1"
                       : strcmp(vsn, "2") == 0 ? "lib/a-2 lib/b-1"
                                               : "lib/a-1 lib/b-1";
    char paths[128], name[32];
    snprintf(paths, sizeof(paths), "releases/%s %s", vsn, apps);
    snprintf(name, sizeof(name), "t-%s", vsn);
    return tarball(name, paths);
}

/* ---- the database, from the test's own connection ------------------------------ */

static void sql(const char *text)
{
    char *db_path = xasprintf("%s/reld.db", root);
    sqlite3 *db = NULL;
    ck_assert_int_eq(sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    ck_assert_int_eq(sqlite3_busy_timeout(db, 2000), SQLITE_OK);
    char *msg = NULL;
    int rc = sqlite3_exec(db, text, NULL, NULL, &msg);
    ck_assert_msg(rc == SQLITE_OK, "%s: %s", text, msg ? msg : sqlite3_errstr(rc));
    sqlite3_close(db);
    free(db_path);
}

/* ---- operations, waited for --------------------------------------------------------- */

static void unpack_to(Result *res, const char *tar)
{
    int fd = open(tar, O_RDONLY | O_CLOEXEC);
    ck_assert_int_ge(fd, 0);
    ManagerCaller c = caller(res);
    manager_unpack(m, fd, "tester", &c);
    wait_result(res, 10000);
}

static void unpack_release(const char *vsn)
{
    const char *t = release_tarball(vsn);
    Result res = {0};
    unpack_to(&res, t);
    ck_assert_msg(res.r == 0, "unpack %s: %s", vsn, first_error(&res));
    result_clear(&res);
}

/* base/rel in a static buffer (until the next call). */
static const char *in_dir(const char *base, const char *rel)
{
    static char path[4096];
    snprintf(path, sizeof(path), "%s/%s", base, rel);
    return path;
}

/* An install as relctl asks it, with a short health window (the gate's own
 * tests set theirs). */
static ManagerInstall ask(const char *vsn, const char *direction)
{
    return (ManagerInstall){.vsn = vsn, .direction = direction, .min_healthy_ms = 50, .health_timeout_ms = 10000};
}

static void install_to(Result *res, const char *vsn, const char *direction)
{
    ManagerCaller c = caller(res);
    ManagerInstall in = ask(vsn, direction);
    manager_install(m, &in, "tester", &c);
    wait_result(res, 15000);
}

static void install(const char *vsn)
{
    Result res = {0};
    install_to(&res, vsn, NULL);
    ck_assert_msg(res.r == 0, "install %s: %d %s", vsn, res.r, first_error(&res));
    result_clear(&res);
}

static void permanent_to(Result *res, const char *vsn)
{
    ManagerCaller c = caller(res);
    manager_make_permanent(m, vsn, "tester", &c);
    wait_result(res, 5000);
}

static void make_permanent(const char *vsn)
{
    Result res = {0};
    permanent_to(&res, vsn);
    ck_assert_msg(res.r == 0, "make-permanent %s: %s", vsn ? vsn : "(current)", first_error(&res));
    result_clear(&res);
}

static void remove_to(Result *res, const char *vsn)
{
    ManagerCaller c = caller(res);
    manager_remove(m, vsn, "tester", &c);
    wait_result(res, 10000);
}

/* The state of release vsn (static), or NULL when not known. */
static const char *state(const char *vsn)
{
    static char buf[32];
    Diag d = {0};
    json_t *rels = manager_releases(m, &d);
    ck_assert_ptr_nonnull(rels);
    const char *out = NULL;
    size_t i;
    json_t *r;
    json_array_foreach(json_object_get(rels, "releases"), i,
                       r) if (strcmp(json_string_value(json_object_get(r, "vsn")), vsn) == 0)
    {
        snprintf(buf, sizeof(buf), "%s", json_string_value(json_object_get(r, "state")));
        out = buf;
    }
    json_decref(rels);
    diag_clear(&d);
    return out;
}

#define ck_assert_state(vsn, want)                                                                                     \
    do {                                                                                                               \
        const char *st_ = state(vsn);                                                                                  \
        ck_assert_msg(st_ &&strcmp(st_, (want)) == 0, "release %s is %s, not %s", (vsn), st_ ? st_ : "unknown",        \
                      (want));                                                                                         \
    } while (0)

/* Processes running (pid > 0) in manager_status. */
static size_t n_running(void)
{
    Diag d = {0};
    json_t *s = manager_status(m, &d);
    ck_assert_ptr_nonnull(s);
    size_t n = 0, i;
    json_t *p;
    json_array_foreach(json_object_get(s, "processes"), i, p) n += json_integer_value(json_object_get(p, "pid")) > 0;
    json_decref(s);
    diag_clear(&d);
    return n;
}

/* Events of kind in the history. */
static size_t n_events(const char *kind)
{
    Diag d = {0};
    json_t *h = manager_history(m, 1000, &d);
    ck_assert_ptr_nonnull(h);
    size_t n = 0, i;
    json_t *e;
    json_array_foreach(json_object_get(h, "events"), i, e) n +=
        strcmp(json_string_value(json_object_get(e, "kind")), kind) == 0;
    json_decref(h);
    diag_clear(&d);
    return n;
}

/* The content of ROOT/rel, or "" (caller frees); waits up to 2 s for it. */
/* ROOT/rel once it holds a complete line (waiting, with the loop
 * running, up to 10 s: a loaded machine starts processes slowly). */
static char *slurp_root(const char *rel)
{
    char *path = xasprintf("%s/%s", root, rel);
    char *buf = xcalloc(65536, 1);
    long long deadline = mono_ms() + 10000;
    for (;;) {
        buf[0] = 0;
        FILE *f = fopen(path, "r");
        if (f) {
            size_t n = fread(buf, 1, 65535, f);
            buf[n] = 0;
            fclose(f);
        }
        size_t len = strlen(buf);
        if ((len > 0 && buf[len - 1] == '\n') || mono_ms() >= deadline)
            break;
        ck_assert_int_ge(sd_event_run(ev, 10 * 1000ULL), 0);
    }
    free(path);
    return buf;
}

static size_t n_entries(const char *rel_dir)
{
    char *cmd = xasprintf("ls -A '%s/%s' 2>/dev/null | wc -l", root, rel_dir);
    FILE *f = popen(cmd, "r");
    ck_assert_ptr_nonnull(f);
    size_t n = 0;
    ck_assert_int_eq(fscanf(f, "%zu", &n), 1);
    pclose(f);
    free(cmd);
    return n;
}

/* ---- fixture ----------------------------------------------------------------------------- */

static void new_manager(void)
{
    int r = manager_new(ev, &cfg, &m);
    ck_assert_msg(r == 0, "manager_new: %d", r);
}

static bool shut_down;

static void on_shut_down(void *userdata)
{
    shut_down = true;
}

/* Stops every process as reld does at SIGTERM, then frees m. */
static void stop_manager(void)
{
    if (!m)
        return;
    shut_down = false;
    manager_shutdown(m, on_shut_down, NULL);
    long long deadline = mono_ms() + 10000;
    while (!shut_down && mono_ms() < deadline)
        ck_assert_int_ge(sd_event_run(ev, 10 * 1000ULL), 0);
    ck_assert_msg(shut_down, "manager_shutdown never called back");
    deadline = mono_ms() + 10000;
    while ((m = manager_free(m)) && mono_ms() < deadline)
        ck_assert_int_ge(sd_event_run(ev, 10 * 1000ULL), 0);
    ck_assert_ptr_null(m);
}

static void setup(void)
{
    signal(SIGTERM, SIG_DFL); /* see test-proc.c */
    signal(SIGINT, SIG_DFL);
    signal(SIGALRM, SIG_DFL);
    strcpy(work, "/tmp/reld-test-manager-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(work));
    root = xasprintf("%s/root", work);
    src = xasprintf("%s/src", work);
    make_sources();
    ck_assert_int_ge(sd_event_new(&ev), 0);
    config_init(&cfg);
    free(cfg.root);
    cfg.root = xstrdup(root);
    m = NULL;
    arena = json_array();
    new_manager();
}

static void teardown(void)
{
    stop_manager();
    run_for(30); /* output pipes close */
    ev = sd_event_unref(ev);
    json_decref(arena);
    arena = NULL;
    config_clear(&cfg);
    char cmd[sizeof(work) + 16];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", work);
    ck_assert_int_eq(system(cmd), 0);
    free(root);
    free(src);
}

/* ---- manager_new ---------------------------------------------------------------------------- */

START_TEST(new_on_a_fresh_root)
{
    ck_assert(exists("reld.db"));
    ck_assert(exists("reld.lock"));
    Diag d = {0};
    json_t *s = manager_status(m, &d);
    ck_assert_ptr_nonnull(s);
    ck_assert_str_eq(json_string_value(json_object_get(s, "root")), root);
    ck_assert(json_is_null(json_object_get(s, "current")));
    ck_assert(json_is_null(json_object_get(s, "permanent")));
    ck_assert_uint_eq(json_array_size(json_object_get(s, "releases")), 0);
    ck_assert_uint_eq(json_array_size(json_object_get(s, "processes")), 0);
    ck_assert(json_is_null(json_object_get(s, "upgrade")));
    ck_assert(json_is_null(json_object_get(s, "running")));
    ck_assert(json_is_null(json_object_get(s, "last_outcome")));
    ck_assert(json_is_string(json_object_get(s, "signatures"))); /* issue 14: whether unpacks need one */
    ck_assert(json_integer_value(json_object_get(json_object_get(s, "reld"), "rss_bytes")) > 0); /* issue 16 */
    ck_assert_uint_eq(json_object_size(s), 10);
    json_decref(s);
}
END_TEST

START_TEST(new_second_on_the_same_root_is_ebusy)
{
    Manager *other = NULL;
    ck_assert_int_eq(manager_new(ev, &cfg, &other), -EBUSY);
    ck_assert_ptr_null(other);
}
END_TEST

START_TEST(new_root_that_cannot_be_made)
{
    DaemonConfig bad;
    config_copy(&bad, &cfg);
    free(bad.root);
    bad.root = xasprintf("%s/reld.db/root", root); /* below a file */
    Manager *other = NULL;
    ck_assert_int_eq(manager_new(ev, &bad, &other), -ENOTDIR);
    ck_assert_ptr_null(other);
    config_clear(&bad);
}
END_TEST

START_TEST(new_reconcile_rolls_a_current_release_back)
{
    unpack_release("1");
    install("1");
    ck_assert_state("1", "current");
    ck_assert_uint_eq(n_running(), 1);
    /* reld dies (kill -9): nothing is stopped properly, nothing recorded. */
    m = manager_free(m);
    ck_assert_ptr_null(m);
    new_manager();
    ck_assert_state("1", "unpacked");
    ck_assert_uint_eq(n_running(), 0); /* OTP boots the permanent release: there is none */
    Diag d = {0};
    json_t *h = manager_history(m, 1000, &d);
    json_t *last = json_array_get(json_object_get(h, "events"), json_array_size(json_object_get(h, "events")) - 1);
    ck_assert_str_eq(json_string_value(json_object_get(last, "kind")), "state");
    ck_assert_str_eq(json_string_value(json_object_get(last, "who")), "reld (start)");
    json_decref(h);
}
END_TEST

START_TEST(new_reconcile_forgets_a_release_without_files)
{
    unpack_release("1");
    unpack_release("3");
    m = manager_free(m);
    sh("rm -rf '%s/releases/3'", root);
    new_manager();
    ck_assert_ptr_null(state("3"));
    ck_assert_state("1", "unpacked");
    ck_assert_uint_eq(n_events("removed"), 1);
}
END_TEST

/* kill -9 between an unpack's last rename and its row (crash.py kills at
 * every step; this is the state it leaves). */
START_TEST(new_reconcile_records_a_release_unpacked_but_not_recorded)
{
    unpack_release("1");
    unpack_release("2");
    m = manager_free(m);
    sql("DELETE FROM releases WHERE vsn = '2'");
    new_manager();
    ck_assert_state("2", "unpacked");
    ck_assert_state("1", "unpacked");
}
END_TEST

START_TEST(new_reconcile_sweeps_application_directories_no_release_uses)
{
    unpack_release("1");
    unpack_release("2");
    m = manager_free(m);
    /* An unpack interrupted after its applications moved in, before its
     * release did; and a removal interrupted after its release moved out. */
    put(root, "lib/c-7/app.yaml", "name: c\n");
    sh("rm -rf '%s/releases/2'", root);
    new_manager();
    ck_assert(!exists("lib/c-7"));
    ck_assert(!exists("lib/b-1"));
    ck_assert(!exists("lib/a-2"));
    ck_assert(exists("lib/a-1")); /* release 1's */
    ck_assert_ptr_null(state("2"));
    ck_assert_state("1", "unpacked");
    /* Nothing goes when a release's definition cannot be read. */
    m = manager_free(m);
    put(root, "lib/c-7/app.yaml", "name: c\n");
    put(root, "releases/1/release.yaml", "vsn: [\n");
    new_manager();
    ck_assert(exists("lib/c-7"));
    ck_assert(exists("lib/a-1"));
}
END_TEST

START_TEST(new_reconcile_empties_tmp)
{
    m = manager_free(m);
    put(root, "tmp/unpack-abc123/releases/9/release.yaml", "left by a crash\n");
    put(root, "tmp/remove-xyz/release/x", "left by a crash\n");
    new_manager();
    ck_assert_uint_eq(n_entries("tmp"), 0);
}
END_TEST

START_TEST(new_boots_the_permanent_release)
{
    unpack_release("1");
    install("1");
    make_permanent("1");
    stop_manager();
    sh("rm -f '%s/runs'", root);
    new_manager();
    ck_assert_state("1", "permanent");
    ck_assert_uint_eq(n_running(), 1);
    ck_assert_uint_eq(n_events("boot"), 1);
}
END_TEST

START_TEST(new_serves_when_the_permanent_release_cannot_boot)
{
    unpack_release("1");
    install("1");
    make_permanent("1");
    stop_manager();
    sh("rm -f '%s/lib/a-1/app.yaml'", root);
    new_manager(); /* logged; reld serves on, so that the operator sees why */
    ck_assert_state("1", "permanent");
    ck_assert_uint_eq(n_running(), 0);
    ck_assert_uint_eq(n_events("boot"), 0);
}
END_TEST

/* ---- the database at start, and manager_recover ---------------------------------------------- */

/* The size of ROOT/rel, or -1 when it does not exist. */
static long long size_of(const char *rel)
{
    char *path = xasprintf("%s/%s", root, rel);
    struct stat st;
    long long n = stat(path, &st) == 0 ? (long long)st.st_size : -1;
    free(path);
    return n;
}

/* ROOT/reld.db.damaged-* files kept by recoveries. */
static size_t n_damaged(void)
{
    char *cmd = xasprintf("ls -A '%s' | grep -c '^reld\\.db\\.damaged-[0-9]\\{8\\}T[0-9]\\{6\\}Z$'", root);
    FILE *f = popen(cmd, "r");
    ck_assert_ptr_nonnull(f);
    size_t n = 0;
    ck_assert_int_eq(fscanf(f, "%zu", &n), 1);
    pclose(f);
    free(cmd);
    return n;
}

/* Releases 1 (permanent, running) and 2 (unpacked); then reld stops. */
static void two_releases_stopped(void)
{
    unpack_release("1");
    unpack_release("2");
    install("1");
    make_permanent("1");
    stop_manager();
}

static void refused_and_nothing_changed(int want)
{
    put(root, "tmp/unpack-x/left", "by a crash\n"); /* a start that went on would empty tmp/ */
    long long size = size_of("reld.db");
    Manager *other = NULL;
    ck_assert_int_eq(manager_new(ev, &cfg, &other), want);
    ck_assert_ptr_null(other);
    ck_assert_int_eq(size_of("reld.db"), size);
    ck_assert(exists("tmp/unpack-x/left"));
    ck_assert_uint_eq(n_damaged(), 0);
}

START_TEST(new_refuses_an_empty_database_where_releases_are)
{
    two_releases_stopped();
    sh("truncate -s 0 '%s/reld.db'", root);
    refused_and_nothing_changed(-EUCLEAN);
    ck_assert_int_eq(size_of("reld.db"), 0);
}
END_TEST

START_TEST(new_refuses_a_corrupt_database)
{
    two_releases_stopped();
    sh("head -c 8192 /dev/urandom > '%s/reld.db'", root);
    sh("cp '%s/reld.db' '%s/sound.db' && head -c 8192 /dev/urandom > '%s/reld.db'", root, work, root);
    refused_and_nothing_changed(-EUCLEAN);
    /* A database whose second page (the releases table's) is damaged:
     * quick_check finds it. */
    sh("cp '%s/sound.db' '%s/reld.db' && printf '%%512s' | tr ' ' '\\245' | "
       "dd of='%s/reld.db' bs=512 seek=8 conv=notrunc status=none",
       work, root, root);
    refused_and_nothing_changed(-EUCLEAN);
}
END_TEST

START_TEST(new_refuses_a_missing_database_where_releases_are)
{
    two_releases_stopped();
    sh("rm -f '%s/reld.db'", root);
    refused_and_nothing_changed(-ENOENT);
    ck_assert(!exists("reld.db"));
}
END_TEST

START_TEST(new_refuses_a_database_whose_releases_cannot_be_read)
{
    two_releases_stopped();
    sql("UPDATE releases SET name = CAST(X'FF00' AS TEXT) WHERE vsn = '2'");
    refused_and_nothing_changed(-EILSEQ);
}
END_TEST

START_TEST(new_root_without_releases_takes_a_missing_or_empty_database)
{
    stop_manager();
    sh("rm -f '%s/reld.db'*", root);
    sh("mkdir -p '%s/releases' && touch '%s/reld.db'", root, root);
    new_manager();
    ck_assert_int_gt(size_of("reld.db"), 0);
    unpack_release("1");
    ck_assert_state("1", "unpacked");
}
END_TEST

START_TEST(make_permanent_writes_the_marker_and_start_keeps_it_in_line)
{
    ck_assert(!exists("permanent"));
    unpack_release("1");
    unpack_release("2");
    install("1");
    ck_assert(!exists("permanent"));
    make_permanent("1");
    char *t = slurp_root("permanent");
    ck_assert_str_eq(t, "1\n");
    free(t);
    install("2");
    make_permanent("2");
    t = slurp_root("permanent");
    ck_assert_str_eq(t, "2\n");
    free(t);
    /* A start rewrites a marker that says otherwise, or that is gone. */
    stop_manager();
    put(root, "permanent", "1\n");
    new_manager();
    t = slurp_root("permanent");
    ck_assert_str_eq(t, "2\n");
    free(t);
    stop_manager();
    sh("rm '%s/permanent'", root);
    new_manager();
    t = slurp_root("permanent");
    ck_assert_str_eq(t, "2\n");
    free(t);
    ck_assert_uint_eq(n_entries("tmp"), 0); /* its temporary file was renamed */
}
END_TEST

START_TEST(recover_rebuilds_with_the_permanent_release)
{
    two_releases_stopped();
    sh("head -c 8192 /dev/urandom > '%s/reld.db' && echo wal > '%s/reld.db-wal'", root, root);
    ck_assert_int_eq(manager_recover(&cfg), 0);
    ck_assert_uint_eq(n_damaged(), 1);
    sh("test \"$(cat '%s'/reld.db.damaged-*-wal)\" = wal", root);
    ck_assert(!exists("reld.db-wal"));
    ck_assert(!exists("reld.db.recovering"));
    sh("rm -f '%s/runs'", root);
    new_manager();
    ck_assert_state("1", "permanent");
    ck_assert_state("2", "unpacked");
    ck_assert_uint_eq(n_running(), 1); /* it boots */
    ck_assert_uint_eq(n_events("recovered"), 1);
    ck_assert_uint_eq(n_events("boot"), 1);
    Diag d = {0};
    json_t *h = manager_history(m, 1000, &d);
    json_t *e = json_array_get(json_object_get(h, "events"), 0);
    ck_assert_str_eq(json_string_value(json_object_get(e, "kind")), "recovered");
    json_t *detail = json_object_get(e, "detail");
    ck_assert_str_eq(json_string_value(json_object_get(detail, "permanent")), "1");
    ck_assert_int_eq(json_array_size(json_object_get(detail, "releases")), 2);
    ck_assert(strncmp(json_string_value(json_object_get(detail, "damaged")), "reld.db.damaged-", 16) == 0);
    json_decref(h);
    /* The rebuilt database takes the usual changes. */
    install("2");
    make_permanent("2");
    ck_assert_state("1", "old");
}
END_TEST

START_TEST(recover_without_a_marker_records_every_release_unpacked)
{
    two_releases_stopped();
    sh("truncate -s 0 '%s/reld.db' && rm '%s/permanent'", root, root);
    ck_assert_int_eq(manager_recover(&cfg), 0);
    ck_assert_uint_eq(n_damaged(), 1);
    new_manager();
    ck_assert_state("1", "unpacked");
    ck_assert_state("2", "unpacked");
    ck_assert_uint_eq(n_running(), 0);
    install("2");
    make_permanent("2");
    ck_assert_state("2", "permanent");
}
END_TEST

START_TEST(recover_of_a_missing_database_and_a_release_that_does_not_load)
{
    two_releases_stopped();
    sh("rm '%s/reld.db' && echo 'vsn: [' > '%s/releases/2/release.yaml'", root, root);
    put(root, "permanent", "2\n"); /* names the release left out: none is permanent */
    ck_assert_int_eq(manager_recover(&cfg), 0);
    ck_assert_uint_eq(n_damaged(), 0); /* nothing to keep */
    new_manager();
    ck_assert_state("1", "unpacked");
    ck_assert_ptr_null(state("2"));
    ck_assert(exists("releases/2/release.yaml")); /* its files stay, for the operator */
    ck_assert(!exists("permanent"));              /* the start said what the database says */
}
END_TEST

START_TEST(recover_of_a_sound_database_changes_nothing)
{
    two_releases_stopped();
    ck_assert_int_eq(manager_recover(&cfg), 0);
    ck_assert_uint_eq(n_damaged(), 0);
    new_manager();
    ck_assert_state("1", "permanent");
    ck_assert_uint_eq(n_events("recovered"), 0);
    /* ... and one reld per root: not while another runs. */
    ck_assert_int_eq(manager_recover(&cfg), -EBUSY);
}
END_TEST

START_TEST(recover_leaves_what_it_cannot_fix)
{
    two_releases_stopped();
    sql("PRAGMA user_version = 9"); /* a newer reld's */
    ck_assert_int_eq(manager_recover(&cfg), -EPROTO);
    ck_assert_uint_eq(n_damaged(), 0);
    ck_assert_int_gt(size_of("reld.db"), 0);
}
END_TEST

/* ---- manager_unpack ---------------------------------------------------------------------------- */

START_TEST(unpack_a_release)
{
    const char *t = release_tarball("2");
    Result res = {0};
    unpack_to(&res, t);
    ck_assert_msg(res.r == 0, "%s", first_error(&res));
    ck_assert_str_eq(json_string_value(json_object_get(res.reply, "release")), "2");
    ck_assert_str_eq(json_string_value(json_object_get(res.reply, "name")), "t");
    ck_assert(exists("releases/2/release.yaml"));
    ck_assert(exists("lib/a-2/modules/a_m.so"));
    ck_assert(exists("lib/b-1/app.yaml"));
    ck_assert_uint_eq(n_entries("tmp"), 0);
    ck_assert_state("2", "unpacked");
    ck_assert_uint_eq(n_events("unpacked"), 1);
    result_clear(&res);
}
END_TEST

/* What can be known before anything runs (check.h) is checked at unpack:
 * a module that is no shared object, or names another module; an
 * executable that does not exist. Refused with one line each, nothing
 * left, nothing recorded. */
START_TEST(unpack_refuses_what_cannot_run_here)
{
    put(src, "lib/a-1/modules/a_m.so", "not an ELF file\n");
    Result res = {0};
    unpack_to(&res, release_tarball("1"));
    ck_assert_int_eq(res.r, -EINVAL);
    ck_assert_msg(strstr(first_error(&res), "lib/a-1/app.yaml:") && strstr(first_error(&res), "a_m.so: not an ELF"),
                  "%s", first_error(&res));
    ck_assert_msg(strchr(first_error(&res), '\n') == NULL, "%s", first_error(&res));
    ck_assert(!exists("releases/1"));
    ck_assert(!exists("lib/a-1"));
    ck_assert_ptr_null(state("1"));
    result_clear(&res);
    /* Another module's descriptor. */
    test_copy_module("b_m", "1", in_dir(src, "lib/a-1/modules/a_m.so"));
    unpack_to(&res, release_tarball("1"));
    ck_assert_int_eq(res.r, -EINVAL);
    ck_assert_msg(strstr(first_error(&res), "b_m") && strstr(first_error(&res), "a_m"), "%s", first_error(&res));
    ck_assert(!exists("releases/1"));
    result_clear(&res);
    /* The right one: unpacked. */
    test_copy_module("a_m", "1", in_dir(src, "lib/a-1/modules/a_m.so"));
    unpack_release("1");
    ck_assert_state("1", "unpacked");
}
END_TEST

START_TEST(unpack_refusals_are_one_line_and_leave_nothing)
{
    unpack_release("1");
    const char *t = release_tarball("1");
    Result res = {0};
    /* The same tarball again proceeds and changes nothing (an install
     * from a tarball after a downgrade). */
    unpack_to(&res, t);
    ck_assert_int_eq(res.r, 0);
    ck_assert_uint_eq(n_events("unpacked"), 1);
    result_clear(&res);
    /* Another content under the same version is refused. */
    put(src, "releases/1/notes.txt", "a file the first tarball did not hold\n");
    t = release_tarball("1");
    unpack_to(&res, t);
    ck_assert_int_eq(res.r, -EINVAL);
    ck_assert_str_eq(first_error(&res),
                     "release 1 is already present with different content; give the changed release a new version");
    result_clear(&res);
    char *notes = xasprintf("%s/releases/1/notes.txt", src);
    ck_assert_int_eq(unlink(notes), 0);
    free(notes);
    /* Not a tarball. */
    put(work, "junk.tar.gz", "this is not an archive\n");
    char junk[sizeof(work) + 32];
    snprintf(junk, sizeof(junk), "%s/junk.tar.gz", work);
    unpack_to(&res, junk);
    ck_assert_int_lt(res.r, 0);
    ck_assert_uint_ge(res.n_errors, 1);
    ck_assert_msg(strchr(first_error(&res), '\n') == NULL, "%s", first_error(&res));
    result_clear(&res);
    /* More than the limit. */
    DaemonConfig limits;
    config_init(&limits);
    limits.max_unpacked = 100;
    manager_set_unpack_limits(m, &limits);
    config_clear(&limits);
    t = release_tarball("2");
    unpack_to(&res, t);
    ck_assert_int_lt(res.r, 0);
    ck_assert_msg(strstr(first_error(&res), "100"), "%s", first_error(&res));
    result_clear(&res);
    ck_assert_ptr_null(state("2"));
    ck_assert(!exists("releases/2"));
    ck_assert(!exists("lib/a-2"));
    ck_assert_uint_eq(n_entries("tmp"), 0);
}
END_TEST

START_TEST(unpack_whose_record_fails_takes_its_files_back)
{
    sql("CREATE TRIGGER t BEFORE INSERT ON releases BEGIN SELECT RAISE(FAIL, 'injected'); END;");
    const char *t = release_tarball("1");
    Result res = {0};
    unpack_to(&res, t);
    ck_assert_int_lt(res.r, 0);
    ck_assert_msg(strstr(first_error(&res), "cannot record release 1") && strstr(first_error(&res), "injected"), "%s",
                  first_error(&res));
    ck_assert_ptr_null(state("1"));
    ck_assert(!exists("releases/1"));
    /* Its application directories (no other release uses them) go too:
     * the database and the files agree. */
    ck_assert_msg(!exists("lib/a-1"), "lib/a-1 stayed behind without a release");
    result_clear(&res);
}
END_TEST

/* ---- the health gate and the way back -------------------------------------------------- */

/* Application NAME-VSN whose process runs `script` (sh -c) under
 * restart: permanent, with an exec health check `check` (sh -c, run in
 * the application's directory) when not NULL. */
static void gated_app(const char *name, const char *vsn, const char *script, const char *check)
{
    char *dir = xasprintf("lib/%s-%s/app.yaml", name, vsn);
    char *hc = check ? xasprintf("    health: {exec: [/bin/sh, -c, '%s'], interval_ms: 100, timeout_ms: 2000}\n", check)
                     : xstrdup("");
    char *y = xasprintf("name: %s\nvsn: \"%s\"\nprocesses:\n  - name: p\n    exec: /bin/sh\n"
                        "    args: ['-c', '%s']\n    shutdown_ms: 3000\n%s",
                        name, vsn, script, hc);
    put(src, dir, y);
    free(y);
    free(hc);
    free(dir);
}

static const char *const SERVES = "trap \"exit 0\" TERM; read x <&3";

static void unpack_gated(const char *vsn, const char *app_dir)
{
    char paths[128], name[32];
    snprintf(paths, sizeof(paths), "releases/%s lib/%s", vsn, app_dir);
    snprintf(name, sizeof(name), "g-%s", vsn);
    Result res = {0};
    unpack_to(&res, tarball(name, paths));
    ck_assert_msg(res.r == 0, "unpack %s: %s", vsn, first_error(&res));
    result_clear(&res);
}

static ManagerInstall gated(const char *vsn, long window_ms, long timeout_ms)
{
    return (ManagerInstall){.vsn = vsn, .min_healthy_ms = window_ms, .health_timeout_ms = timeout_ms};
}

static void install_as(Result *res, ManagerInstall in)
{
    ManagerCaller c = caller(res);
    manager_install(m, &in, "tester", &c);
    wait_result(res, 60000);
}

static const char *outcome(const Result *res)
{
    return json_string_value(json_object_get(res->reply, "outcome"));
}

START_TEST(gate_a_first_install_that_crash_loops_fails_and_is_not_left_current)
{
    gated_app("d", "1", "echo d: error while loading shared libraries: libx.so.0 >&2; exit 127", NULL);
    put(src, "releases/6/release.yaml", "release: t\nvsn: \"6\"\napplications: [{name: d, vsn: \"1\"}]\n");
    unpack_gated("6", "d-1");
    Result res = {0};
    install_as(&res, gated("6", 500, 30000));
    ck_assert_int_lt(res.r, 0);
    ck_assert_str_eq(outcome(&res), "rolled_back");
    ck_assert_msg(strstr(first_error(&res), "release 6 did not become healthy") &&
                      strstr(first_error(&res), "d/p: stopped for good") && strstr(first_error(&res), "exit 127") &&
                      strstr(first_error(&res), "libx.so.0"),
                  "%s", first_error(&res));
    ck_assert_state("6", "unpacked");
    ck_assert_uint_eq(n_running(), 0);
    ck_assert_uint_eq(n_events("automatic_rollback"), 1);
    Diag d = {0};
    json_t *s = manager_status(m, &d);
    ck_assert(json_is_null(json_object_get(s, "running")));
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(s, "last_outcome"), "outcome")), "rolled_back");
    json_decref(s);
    result_clear(&res);
}
END_TEST

/* c-1 healthy unless ROOT/sick exists; c-2 never healthy. */
static void two_gated_releases(void)
{
    gated_app("c", "1", SERVES, "test ! -e ../../sick");
    gated_app("c", "2", SERVES, "echo not ready; exit 1");
    put(src, "releases/4/release.yaml", "release: t\nvsn: \"4\"\napplications: [{name: c, vsn: \"1\"}]\n");
    put(src, "releases/5/release.yaml", "release: t\nvsn: \"5\"\napplications: [{name: c, vsn: \"2\"}]\n");
    unpack_gated("4", "c-1");
    unpack_gated("5", "c-2");
    Result res = {0};
    ManagerInstall in = gated("4", 100, 20000);
    in.commit = true;
    install_as(&res, in);
    ck_assert_msg(res.r == 0, "%s", first_error(&res));
    ck_assert_str_eq(outcome(&res), "committed");
    ck_assert(json_is_true(json_object_get(json_object_get(res.reply, "health"), "healthy")));
    ck_assert_state("4", "permanent");
    result_clear(&res);
}

START_TEST(gate_an_unhealthy_upgrade_goes_back_once_by_itself)
{
    two_gated_releases();
    Result res = {0};
    install_as(&res, gated("5", 100, 1500));
    ck_assert_int_lt(res.r, 0);
    ck_assert_str_eq(outcome(&res), "rolled_back");
    ck_assert_msg(strstr(first_error(&res), "release 5 did not become healthy") &&
                      strstr(first_error(&res), "c/p: exec") && strstr(first_error(&res), "not ready"),
                  "%s", first_error(&res));
    ck_assert_state("4", "permanent");
    ck_assert_state("5", "unpacked");
    ck_assert_uint_eq(n_events("automatic_rollback"), 1); /* once, never a loop */
    Diag d = {0};
    json_t *s = manager_status(m, &d);
    ck_assert_str_eq(json_string_value(json_object_get(s, "running")), "4");
    json_decref(s);
    result_clear(&res);
}
END_TEST

START_TEST(gate_an_unhealthy_release_before_needs_an_operator)
{
    two_gated_releases();
    put(root, "sick", "the release before is sick too\n");
    Result res = {0};
    install_as(&res, gated("5", 100, 1500));
    ck_assert_int_lt(res.r, 0);
    ck_assert_str_eq(outcome(&res), "needs_operator");
    ck_assert_msg(strstr(first_error(&res), "release 5 did not become healthy"), "%s", first_error(&res));
    ck_assert_uint_eq(n_events("automatic_rollback"), 1);
    result_clear(&res);
}
END_TEST

START_TEST(gate_no_wait_and_the_same_release_again)
{
    two_gated_releases();
    Result res = {0};
    ManagerInstall in = gated("5", 100, 1500);
    in.no_wait = true; /* not waited for: current at once, unhealthy or not */
    install_as(&res, in);
    ck_assert_int_eq(res.r, 0);
    ck_assert_str_eq(outcome(&res), "current");
    ck_assert_ptr_null(json_object_get(res.reply, "health"));
    ck_assert_state("5", "current");
    result_clear(&res);
    install_as(&res, gated("5", 100, 1500));
    ck_assert_int_eq(res.r, 0);
    ck_assert_str_eq(outcome(&res), "unchanged");
    result_clear(&res);
}
END_TEST

/* A downgrade to the permanent release that is not healthy goes back up
 * to the current one; the permanent release stays permanent. */
START_TEST(gate_a_rolled_back_downgrade_to_the_permanent_release_keeps_it_permanent)
{
    two_gated_releases(); /* 4 permanent; c-1 sick while ROOT/sick exists */
    gated_app("c", "3", SERVES, "true");
    put(src, "releases/6/release.yaml", "release: t\nvsn: \"6\"\napplications: [{name: c, vsn: \"3\"}]\n");
    unpack_gated("6", "c-3");
    Result res = {0};
    install_as(&res, gated("6", 100, 5000));
    ck_assert_msg(res.r == 0, "%s", first_error(&res));
    ck_assert_state("6", "current");
    result_clear(&res);
    put(root, "sick", "4 is sick now\n");
    install_as(&res, gated("4", 100, 1500));
    ck_assert_str_eq(outcome(&res), "rolled_back");
    ck_assert_state("4", "permanent");
    ck_assert_state("6", "current");
    result_clear(&res);
}
END_TEST

/* --commit whose make-permanent fails: a failure, with its reason. */
START_TEST(gate_a_commit_that_cannot_be_recorded_fails)
{
    two_gated_releases();
    gated_app("c", "3", SERVES, "true");
    put(src, "releases/6/release.yaml", "release: t\nvsn: \"6\"\napplications: [{name: c, vsn: \"3\"}]\n");
    unpack_gated("6", "c-3");
    sql("CREATE TRIGGER refuse_permanent BEFORE UPDATE ON releases WHEN NEW.state = 'permanent' "
        "BEGIN SELECT RAISE(FAIL, 'injected'); END;");
    Result res = {0};
    ManagerInstall in = gated("6", 100, 5000);
    in.commit = true;
    install_as(&res, in);
    ck_assert_int_lt(res.r, 0);
    ck_assert_str_eq(outcome(&res), "current"); /* it runs, healthy, not permanent */
    ck_assert_msg(strstr(first_error(&res), "injected") != NULL, "%s", first_error(&res));
    ck_assert_state("6", "current");
    result_clear(&res);
}
END_TEST

/* reld stops while the automatic rollback plans: the operation ends once,
 * when the plan's end comes (needs an operator), and nothing is used after
 * it is freed (ASan). */
START_TEST(gate_reld_stops_while_the_rollback_plans)
{
    two_gated_releases();
    ck_assert_int_eq(setenv("RELD_TEST_PLAN_DELAY_MS", "1000", 1), 0);
    Result res = {0};
    ManagerCaller c = caller(&res);
    ManagerInstall in = gated("5", 100, 800);
    manager_install(m, &in, "tester", &c);
    long long deadline = mono_ms() + 30000;
    while (n_events("automatic_rollback") == 0 && mono_ms() < deadline)
        ck_assert_int_ge(sd_event_run(ev, 10 * 1000ULL), 0);
    ck_assert_uint_eq(n_events("automatic_rollback"), 1);
    ck_assert_int_eq(res.n, 0);
    shut_down = false;
    manager_shutdown(m, on_shut_down, NULL);
    deadline = mono_ms() + 30000;
    while ((res.n == 0 || !shut_down) && mono_ms() < deadline)
        ck_assert_int_ge(sd_event_run(ev, 10 * 1000ULL), 0);
    ck_assert_int_eq(unsetenv("RELD_TEST_PLAN_DELAY_MS"), 0);
    ck_assert_int_eq(res.n, 1);
    ck_assert_int_lt(res.r, 0);
    ck_assert_str_eq(outcome(&res), "needs_operator");
    result_clear(&res);
}
END_TEST

/* A relup.yaml written after the unpack (relctl relup --write) is no
 * difference: the same tarball again proceeds. */
START_TEST(unpack_again_after_a_stored_relup)
{
    unpack_release("1");
    unpack_release("2");
    Relup *r = NULL;
    bool stored = false;
    Diag d = {0};
    ck_assert_int_eq(store_relup(root, "1", "2", true, &r, &stored, &d), 0);
    ck_assert_int_eq(store_write_relup(root, r, &d), 0);
    relup_free(r);
    diag_clear(&d);
    ck_assert(exists("releases/2/relup.yaml"));
    Result res = {0};
    unpack_to(&res, release_tarball("2"));
    ck_assert_msg(res.r == 0, "%s", first_error(&res));
    ck_assert(json_is_true(json_object_get(res.reply, "unchanged")));
    result_clear(&res);
}
END_TEST

/* ---- manager_install --------------------------------------------------------------------------- */

START_TEST(install_the_first_release)
{
    unpack_release("1");
    Result res = {0};
    ManagerCaller c = caller(&res);
    ManagerInstall in1 = ask("1", NULL);
    manager_install(m, &in1, "tester", &c);
    /* A second install while the first loads is refused. */
    Result busy = {0};
    ManagerCaller cb = caller(&busy);
    manager_install(m, &in1, "tester", &cb);
    ck_assert_int_eq(busy.n, 1);
    ck_assert_int_eq(busy.r, -EBUSY);
    ck_assert_str_eq(first_error(&busy), "a release is being installed; one at a time");
    wait_result(&res, 10000);
    ck_assert_msg(res.r == 0, "%s", first_error(&res));
    ck_assert_str_eq(json_string_value(json_object_get(res.reply, "installed")), "1");
    ck_assert_state("1", "current");
    ck_assert_uint_eq(n_running(), 1);
    char *runs = slurp_root("runs");
    char *want = xasprintf("%s/lib/a-1\n", root);
    ck_assert_str_eq(runs, want);
    free(want);
    free(runs);
    result_clear(&res);
    result_clear(&busy);
}
END_TEST

START_TEST(install_refusals)
{
    Result res = {0};
    install_to(&res, NULL, NULL);
    ck_assert_int_eq(res.r, -EINVAL);
    ck_assert_str_eq(first_error(&res), "install needs a release version or tarball");
    result_clear(&res);
    install_to(&res, "9", NULL);
    ck_assert_int_eq(res.r, -ENOENT);
    ck_assert_str_eq(first_error(&res), "release 9 is not known (relctl unpack it first)");
    result_clear(&res);
    unpack_release("1");
    install_to(&res, "1", "upgrade");
    ck_assert_int_eq(res.r, -EINVAL);
    ck_assert_str_eq(first_error(&res), "no release is running to upgrade from");
    result_clear(&res);
    install("1");
    install_to(&res, "1", NULL); /* already there: nothing to do, and no error */
    ck_assert_int_eq(res.r, 0);
    ck_assert_str_eq(json_string_value(json_object_get(res.reply, "outcome")), "unchanged");
    result_clear(&res);
    unpack_release("2");
    install_to(&res, "2", "downgrade");
    ck_assert_int_eq(res.r, -EINVAL);
    ck_assert_str_eq(first_error(&res), "release 2 is newer than the running 1: use upgrade");
    ck_assert_uint_eq(res.n_errors, 1);
    result_clear(&res);
    ck_assert_state("1", "current");
    ck_assert_state("2", "unpacked");
}
END_TEST

START_TEST(install_an_upgrade_and_refusals_while_it_runs)
{
    unpack_release("1");
    unpack_release("2");
    install("1");
    make_permanent("1");
    Result res = {0};
    ManagerCaller c = caller(&res);
    ManagerInstall in2 = ask("2", "upgrade");
    manager_install(m, &in2, "tester", &c);
    /* Under way from the request on (it plans on a worker thread). */
    Diag d = {0};
    json_t *s = manager_status(m, &d);
    json_t *u = json_object_get(s, "upgrade");
    ck_assert_msg(json_is_object(u), "no upgrade under way in status");
    ck_assert_str_eq(json_string_value(json_object_get(u, "from")), "1");
    ck_assert_str_eq(json_string_value(json_object_get(u, "to")), "2");
    ck_assert_str_eq(json_string_value(json_object_get(u, "direction")), "upgrade");
    json_decref(s);
    Result r2 = {0};
    install_to(&r2, "2", NULL);
    ck_assert_int_eq(r2.r, -EBUSY);
    ck_assert_str_eq(first_error(&r2), "an upgrade from 1 to 2 is under way; one at a time");
    result_clear(&r2);
    permanent_to(&r2, NULL);
    ck_assert_int_eq(r2.r, -EBUSY);
    ck_assert_str_eq(first_error(&r2), "an upgrade from 1 to 2 is under way; make it permanent when it is done");
    result_clear(&r2);
    remove_to(&r2, "2");
    ck_assert_int_eq(r2.r, -EBUSY);
    ck_assert_str_eq(first_error(&r2), "release 2 is part of the upgrade from 1 to 2 under way; it cannot be removed");
    result_clear(&r2);
    ck_assert_int_eq(res.n, 0);
    wait_result(&res, 15000);
    ck_assert_msg(res.r == 0, "upgrade: %d %s", res.r, first_error(&res));
    ck_assert_str_eq(json_string_value(json_object_get(res.reply, "installed")), "2");
    ck_assert_str_eq(json_string_value(json_object_get(res.reply, "from")), "1");
    ck_assert_str_eq(json_string_value(json_object_get(res.reply, "direction")), "upgrade");
    ck_assert(json_is_integer(json_object_get(res.reply, "instructions")));
    ck_assert(json_is_number(json_object_get(res.reply, "ms")));
    ck_assert_int_eq(res.n_progress, (int)json_integer_value(json_object_get(res.reply, "instructions")));
    ck_assert_state("2", "current");
    ck_assert_state("1", "permanent");
    ck_assert_uint_eq(n_running(), 2); /* a-2 and b-1 */
    s = manager_status(m, &d);
    ck_assert(json_is_null(json_object_get(s, "upgrade")));
    ck_assert_str_eq(json_string_value(json_object_get(s, "current")), "2");
    ck_assert_str_eq(json_string_value(json_object_get(s, "permanent")), "1");
    json_decref(s);
    char *runs = NULL;
    long long deadline = mono_ms() + 20000; /* a bounded wait: ASan on a loaded machine is slow */
    do {
        free(runs);
        run_for(20);
        runs = slurp_root("runs");
    } while (!strstr(runs, "/lib/a-2\n") && mono_ms() < deadline);
    char *want = xasprintf("%s/lib/a-1\n", root);
    ck_assert_msg(strncmp(runs, want, strlen(want)) == 0, "runs: %s", runs);
    ck_assert_msg(strstr(runs, "/lib/a-2\n") && strstr(runs, "/lib/b-1\n"), "runs: %s", runs);
    free(want);
    free(runs);
    result_clear(&res);
    diag_clear(&d);
}
END_TEST

START_TEST(install_whose_record_fails_runs_nothing)
{
    unpack_release("1");
    sql("CREATE TRIGGER t BEFORE UPDATE ON releases WHEN NEW.state = 'current' "
        "BEGIN SELECT RAISE(FAIL, 'injected'); END;");
    Result res = {0};
    install_to(&res, "1", NULL);
    ck_assert_int_lt(res.r, 0);
    ck_assert_msg(strstr(first_error(&res), "cannot record release 1 as current") &&
                      strstr(first_error(&res), "nothing was started"),
                  "%s", first_error(&res));
    ck_assert_state("1", "unpacked");
    /* As it was: nothing was started. */
    long long deadline = mono_ms() + 8000;
    while (n_running() > 0 && mono_ms() < deadline)
        ck_assert_int_ge(sd_event_run(ev, 10 * 1000ULL), 0);
    ck_assert_uint_eq(n_running(), 0);
    run_for(100);
    Diag d = {0};
    json_t *s = manager_status(m, &d);
    ck_assert_ptr_nonnull(s);
    json_decref(s);
    /* And it can be installed once the database takes it. */
    sql("DROP TRIGGER t");
    install("1");
    ck_assert_state("1", "current");
    ck_assert_uint_eq(n_running(), 1);
    result_clear(&res);
}
END_TEST

/* ---- manager_make_permanent ---------------------------------------------------------------------- */

START_TEST(make_permanent_refusals)
{
    Result res = {0};
    permanent_to(&res, NULL);
    ck_assert_int_eq(res.r, -ENOENT);
    ck_assert_str_eq(first_error(&res), "no release is current (installed and not yet permanent)");
    result_clear(&res);
    permanent_to(&res, "9");
    ck_assert_int_eq(res.r, -ENOENT);
    ck_assert_str_eq(first_error(&res), "release 9 is not known");
    result_clear(&res);
    unpack_release("1");
    permanent_to(&res, "1");
    ck_assert_int_eq(res.r, -EINVAL);
    ck_assert_str_eq(first_error(&res), "release 1 is unpacked; only the current release can be made permanent");
    ck_assert_uint_eq(res.n_errors, 1);
    result_clear(&res);
    ck_assert_state("1", "unpacked");
}
END_TEST

START_TEST(make_permanent_database_unreadable_says_why)
{
    unpack_release("1");
    sql("DROP TABLE releases");
    Result res = {0};
    permanent_to(&res, "1");
    ck_assert_int_lt(res.r, 0);
    ck_assert_uint_eq(res.n_errors, 1);
    ck_assert_msg(strstr(first_error(&res), "cannot read the release database") &&
                      strstr(first_error(&res), "no such table: releases"),
                  "%s", first_error(&res));
    result_clear(&res);
}
END_TEST

START_TEST(make_permanent_the_state_machine)
{
    /* unpacked -> current -> permanent -> old */
    unpack_release("1");
    unpack_release("2");
    ck_assert_state("1", "unpacked");
    install("1");
    ck_assert_state("1", "current");
    Result res = {0};
    permanent_to(&res, NULL); /* the current one */
    ck_assert_int_eq(res.r, 0);
    ck_assert_str_eq(json_string_value(json_object_get(res.reply, "permanent")), "1");
    result_clear(&res);
    ck_assert_state("1", "permanent");
    permanent_to(&res, "1"); /* again: nothing to do, no error */
    ck_assert_int_eq(res.r, 0);
    ck_assert_str_eq(json_string_value(json_object_get(res.reply, "permanent")), "1");
    result_clear(&res);
    install("2");
    ck_assert_state("2", "current");
    ck_assert_state("1", "permanent");
    make_permanent("2");
    ck_assert_state("2", "permanent");
    ck_assert_state("1", "old");
    /* An old release is not the current one. */
    permanent_to(&res, "1");
    ck_assert_int_eq(res.r, -EINVAL);
    ck_assert_str_eq(first_error(&res), "release 1 is old; only the current release can be made permanent");
    result_clear(&res);
}
END_TEST

START_TEST(make_permanent_whose_record_fails_changes_nothing)
{
    unpack_release("1");
    unpack_release("2");
    install("1");
    make_permanent("1");
    install("2");
    /* The second write (2 -> permanent) fails, after 1 -> old would have. */
    sql("CREATE TRIGGER t BEFORE UPDATE ON releases WHEN NEW.state = 'permanent' "
        "BEGIN SELECT RAISE(FAIL, 'injected'); END;");
    Result res = {0};
    permanent_to(&res, "2");
    ck_assert_int_lt(res.r, 0);
    ck_assert_msg(strstr(first_error(&res), "cannot record the change") && strstr(first_error(&res), "injected"), "%s",
                  first_error(&res));
    ck_assert_uint_eq(res.n_errors, 1);
    result_clear(&res);
    /* As it was: 1 permanent, 2 current. */
    ck_assert_state("2", "current");
    ck_assert_state("1", "permanent");
}
END_TEST

/* ---- manager_remove ---------------------------------------------------------------------------- */

START_TEST(remove_an_unpacked_release)
{
    unpack_release("1");
    unpack_release("2");
    unpack_release("3");
    Result res = {0};
    remove_to(&res, "2");
    ck_assert_msg(res.r == 0, "%s", first_error(&res));
    ck_assert_str_eq(json_string_value(json_object_get(res.reply, "removed")), "2");
    result_clear(&res);
    ck_assert_ptr_null(state("2"));
    ck_assert(!exists("releases/2"));
    ck_assert(!exists("lib/a-2"));         /* only 2 used it */
    ck_assert(exists("lib/b-1/app.yaml")); /* 3 uses it */
    ck_assert(exists("lib/a-1/app.yaml")); /* 1 and 3 */
    ck_assert_uint_eq(n_events("removed"), 1);
    ck_assert_uint_eq(n_entries("tmp"), 0); /* deleted by its worker thread */
    remove_to(&res, "3");
    ck_assert_int_eq(res.r, 0);
    result_clear(&res);
    ck_assert(!exists("lib/b-1"));
    ck_assert(exists("lib/a-1/app.yaml"));
    remove_to(&res, "1");
    ck_assert_int_eq(res.r, 0);
    result_clear(&res);
    ck_assert_uint_eq(n_entries("lib"), 0);
    ck_assert_uint_eq(n_entries("releases"), 0);
}
END_TEST

START_TEST(remove_refusals)
{
    Result res = {0};
    remove_to(&res, NULL);
    ck_assert_int_eq(res.r, -EINVAL);
    ck_assert_str_eq(first_error(&res), "remove needs a release version");
    result_clear(&res);
    remove_to(&res, "9");
    ck_assert_int_eq(res.r, -ENOENT);
    ck_assert_str_eq(first_error(&res), "release 9 is not known");
    result_clear(&res);
    unpack_release("1");
    unpack_release("2");
    install("1");
    remove_to(&res, "1");
    ck_assert_int_eq(res.r, -EBUSY);
    ck_assert_str_eq(first_error(&res), "release 1 is running; it cannot be removed");
    result_clear(&res);
    make_permanent("1");
    remove_to(&res, "1");
    ck_assert_int_eq(res.r, -EBUSY);
    ck_assert_str_eq(first_error(&res), "release 1 is permanent; it cannot be removed");
    ck_assert_uint_eq(res.n_errors, 1);
    result_clear(&res);
    install("2");
    remove_to(&res, "2");
    ck_assert_int_eq(res.r, -EBUSY);
    ck_assert_str_eq(first_error(&res), "release 2 is running; it cannot be removed");
    result_clear(&res);
    ck_assert(exists("releases/1/release.yaml"));
    ck_assert(exists("releases/2/release.yaml"));
    ck_assert(exists("lib/a-2/app.yaml"));
}
END_TEST

START_TEST(remove_whose_record_fails_keeps_the_files)
{
    unpack_release("1");
    unpack_release("2");
    sql("CREATE TRIGGER t BEFORE DELETE ON releases BEGIN SELECT RAISE(FAIL, 'injected'); END;");
    Result res = {0};
    remove_to(&res, "2");
    ck_assert_int_lt(res.r, 0);
    ck_assert_msg(strstr(first_error(&res), "cannot record the removal of release 2") &&
                      strstr(first_error(&res), "injected"),
                  "%s", first_error(&res));
    ck_assert_uint_eq(res.n_errors, 1);
    result_clear(&res);
    ck_assert_state("2", "unpacked");
    ck_assert(exists("releases/2/release.yaml"));
    ck_assert(exists("lib/a-2/modules/a_m.so"));
    ck_assert(exists("lib/b-1/app.yaml"));
    /* Still usable: once the database takes it, it goes. */
    sql("DROP TRIGGER t");
    remove_to(&res, "2");
    ck_assert_int_eq(res.r, 0);
    result_clear(&res);
    ck_assert(!exists("releases/2"));
}
END_TEST

/* ---- manager_relup -------------------------------------------------------------------------------- */

START_TEST(relup_computed_and_refused)
{
    unpack_release("1");
    unpack_release("2");
    Result res = {0};
    ManagerCaller c = caller(&res);
    manager_relup(m, "1", "2", "tester", &c);
    wait_result(&res, 10000);
    ck_assert_msg(res.r == 0, "%s", first_error(&res));
    ck_assert(json_is_object(json_object_get(res.reply, "relup")));
    ck_assert(json_is_false(json_object_get(res.reply, "stored")));
    ck_assert(json_is_array(json_object_get(res.reply, "warnings")));
    ck_assert_uint_ge(json_array_size(json_object_get(res.reply, "warnings")), 1); /* derived appup */
    result_clear(&res);
    manager_relup(m, NULL, "2", "tester", &c);
    ck_assert_int_eq(res.n, 1);
    ck_assert_int_eq(res.r, -EINVAL);
    ck_assert_str_eq(first_error(&res), "relup needs FROM and TO");
    result_clear(&res);
    manager_relup(m, "1", "9", "tester", &c);
    wait_result(&res, 10000);
    ck_assert_int_lt(res.r, 0);
    ck_assert_msg(strstr(first_error(&res), "9"), "%s", first_error(&res));
    result_clear(&res);
}
END_TEST

/* ---- manager_releases, manager_history, manager_status ----------------------------------------------- */

START_TEST(releases_shape)
{
    unpack_release("1");
    Diag d = {0};
    json_t *r = manager_releases(m, &d);
    ck_assert_ptr_nonnull(r);
    ck_assert_uint_eq(json_object_size(r), 1);
    json_t *one = json_array_get(json_object_get(r, "releases"), 0);
    ck_assert_str_eq(json_string_value(json_object_get(one, "vsn")), "1");
    ck_assert_str_eq(json_string_value(json_object_get(one, "name")), "t");
    ck_assert_str_eq(json_string_value(json_object_get(one, "state")), "unpacked");
    ck_assert(json_is_string(json_object_get(one, "unpacked_at")));
    ck_assert(json_is_string(json_object_get(one, "changed_at")));
    json_decref(r);
    /* A database that cannot be read: NULL and the reason. */
    sql("DROP TABLE releases");
    ck_assert_ptr_null(manager_releases(m, &d));
    ck_assert_uint_eq(d.errors.n, 1);
    ck_assert_msg(strstr(d.errors.v[0], "cannot read the release database"), "%s", d.errors.v[0]);
    diag_clear(&d);
    ck_assert_ptr_null(manager_status(m, &d));
    ck_assert_uint_eq(d.errors.n, 1);
    diag_clear(&d);
}
END_TEST

START_TEST(history_shape_and_limit)
{
    unpack_release("1");
    install("1");
    Diag d = {0};
    json_t *h = manager_history(m, 1000, &d);
    ck_assert_ptr_nonnull(h);
    ck_assert(json_is_array(json_object_get(h, "events")));
    ck_assert(json_is_array(json_object_get(h, "attempts")));
    ck_assert_uint_ge(json_array_size(json_object_get(h, "events")), 3); /* unpacked, process_start, state */
    json_decref(h);
    h = manager_history(m, 1, &d);
    ck_assert_uint_eq(json_array_size(json_object_get(h, "events")), 1);
    json_decref(h);
    ck_assert_ptr_null(manager_history(m, 0, &d));
    ck_assert_uint_eq(d.errors.n, 1);
    ck_assert_msg(strstr(d.errors.v[0], "cannot read the history"), "%s", d.errors.v[0]);
    diag_clear(&d);
}
END_TEST

START_TEST(status_shape)
{
    unpack_release("1");
    install("1");
    Diag d = {0};
    json_t *s = manager_status(m, &d);
    ck_assert_ptr_nonnull(s);
    ck_assert_str_eq(json_string_value(json_object_get(s, "current")), "1");
    ck_assert(json_is_null(json_object_get(s, "permanent")));
    ck_assert_uint_eq(json_array_size(json_object_get(s, "releases")), 1);
    json_t *p = json_array_get(json_object_get(s, "processes"), 0);
    ck_assert_str_eq(json_string_value(json_object_get(p, "app")), "a");
    ck_assert_str_eq(json_string_value(json_object_get(p, "process")), "p");
    ck_assert_str_eq(json_string_value(json_object_get(p, "state")), "running");
    ck_assert(json_is_null(json_object_get(s, "upgrade")));
    json_decref(s);
}
END_TEST

/* ---- manager_forget_caller ------------------------------------------------------------------------------ */

START_TEST(forget_caller_the_operation_goes_on)
{
    const char *t = release_tarball("1");
    int fd = open(t, O_RDONLY | O_CLOEXEC);
    Result res = {0};
    ManagerCaller c = caller(&res);
    manager_unpack(m, fd, "tester", &c);
    manager_forget_caller(m, &res);
    long long deadline = mono_ms() + 10000;
    while (!state("1") && mono_ms() < deadline)
        ck_assert_int_ge(sd_event_run(ev, 10 * 1000ULL), 0);
    run_for(50);
    ck_assert_state("1", "unpacked"); /* done and recorded */
    ck_assert_int_eq(res.n, 0);       /* nobody told */
}
END_TEST

/* ---- manager_shutdown, manager_free ------------------------------------------------------------------------- */

START_TEST(shutdown_stops_every_process_then_calls_back)
{
    unpack_release("1");
    unpack_release("2");
    install("1");
    make_permanent("1");
    install("2");
    ck_assert_uint_eq(n_running(), 2);
    size_t stops_before = n_events("process_stop"); /* a/p's, at the switch-over */
    shut_down = false;
    manager_shutdown(m, on_shut_down, NULL);
    ck_assert(!shut_down);
    Result res = {0};
    install_to(&res, "1", NULL);
    ck_assert_int_eq(res.r, -ESHUTDOWN);
    ck_assert_str_eq(first_error(&res), "reld is stopping");
    result_clear(&res);
    long long deadline = mono_ms() + 10000;
    while (!shut_down && mono_ms() < deadline)
        ck_assert_int_ge(sd_event_run(ev, 10 * 1000ULL), 0);
    ck_assert(shut_down);
    ck_assert_uint_eq(n_running(), 0);
    ck_assert_uint_eq(n_events("process_stop"), stops_before + 2);
    ck_assert_ptr_null(manager_free(m));
    m = NULL;
}
END_TEST

START_TEST(free_refuses_while_a_worker_thread_runs)
{
    int pp[2];
    ck_assert_int_eq(pipe2(pp, O_CLOEXEC), 0);
    Result res = {0};
    ManagerCaller c = caller(&res);
    manager_unpack(m, pp[0], "tester", &c); /* reads the pipe on a thread: stalls */
    run_for(50);
    ck_assert_ptr_eq(manager_free(m), m);
    close(pp[1]); /* an empty archive: the unpack fails and the thread ends */
    wait_result(&res, 10000);
    ck_assert_int_lt(res.r, 0);
    result_clear(&res);
    ck_assert_ptr_null(manager_free(m));
    m = NULL;
}
END_TEST

/* ---- manager_install dry_run ---------------------------------------------------------------------------- */

/* The pid of process app/proc in manager_status, 0 when it does not run. */
static long long pid_of(const char *app)
{
    Diag d = {0};
    json_t *s = manager_status(m, &d);
    ck_assert_ptr_nonnull(s);
    long long pid = 0;
    size_t i;
    json_t *p;
    json_array_foreach(json_object_get(s, "processes"), i, p)
    {
        if (strcmp(json_string_value(json_object_get(p, "app")), app) == 0)
            pid = json_integer_value(json_object_get(p, "pid"));
    }
    json_decref(s);
    diag_clear(&d);
    return pid;
}

/* Attempts of kind in the history. */
static size_t n_attempts(const char *kind)
{
    Diag d = {0};
    json_t *h = manager_history(m, 1000, &d);
    ck_assert_ptr_nonnull(h);
    size_t n = 0, i;
    json_t *a;
    json_array_foreach(json_object_get(h, "attempts"), i, a) n +=
        strcmp(json_string_value(json_object_get(a, "kind")), kind) == 0;
    json_decref(h);
    diag_clear(&d);
    return n;
}

static void dry_run_to(Result *res, const char *vsn, const char *direction, bool rehearse)
{
    ManagerCaller c = caller(res);
    ManagerInstall in = ask(vsn, direction);
    in.dry_run = true;
    in.rehearse = rehearse;
    manager_install(m, &in, "tester", &c);
    wait_result(res, 15000);
}

START_TEST(dry_run_of_an_upgrade_changes_nothing_and_names_the_processes)
{
    unpack_release("1");
    unpack_release("2");
    install("1");
    make_permanent("1");
    long long pid = pid_of("a");
    ck_assert_int_gt(pid, 0);
    size_t outcomes = n_events("outcome"), states = n_events("state");
    Result res = {0};
    dry_run_to(&res, "2", "upgrade", true);
    ck_assert_msg(res.r == 0, "dry run: %d %s", res.r, first_error(&res));
    ck_assert_str_eq(json_string_value(json_object_get(res.reply, "outcome")), "dry_run");
    ck_assert(json_is_true(json_object_get(res.reply, "dry_run")));
    ck_assert_str_eq(json_string_value(json_object_get(res.reply, "from")), "1");
    ck_assert_str_eq(json_string_value(json_object_get(res.reply, "to")), "2");
    ck_assert_str_eq(json_string_value(json_object_get(res.reply, "direction")), "upgrade");
    ck_assert_int_eq(res.n_progress, 0); /* no instruction ran */
    /* The plan: the relup's instructions, b's start among them. */
    json_t *instrs = json_object_get(res.reply, "instructions");
    ck_assert_uint_gt(json_array_size(instrs), 0);
    bool starts_b = false;
    size_t i;
    json_t *in;
    json_array_foreach(instrs, i, in)
    {
        ck_assert_int_eq(json_integer_value(json_object_get(in, "k")), (json_int_t)i + 1);
        ck_assert(json_is_string(json_object_get(in, "instruction")));
        json_t *p0 = json_array_get(json_object_get(in, "processes"), 0);
        if (strstr(json_string_value(json_object_get(in, "instruction")), "start_application") && p0)
            starts_b = strcmp(json_string_value(json_object_get(p0, "process")), "b/p") == 0;
    }
    ck_assert_msg(starts_b, "no start_application b reaching b/p in the plan");
    /* a/p has no runtime: it restarts at the switch-over, by its pid. */
    json_t *restarts = json_object_get(res.reply, "restarts");
    ck_assert_uint_eq(json_array_size(restarts), 1);
    json_t *r0 = json_array_get(restarts, 0);
    ck_assert_str_eq(json_string_value(json_object_get(r0, "process")), "a/p");
    ck_assert_int_eq(json_integer_value(json_object_get(r0, "pid")), pid);
    ck_assert_str_eq(json_string_value(json_object_get(r0, "from")), "1");
    ck_assert_str_eq(json_string_value(json_object_get(r0, "to")), "2");
    ck_assert_int_eq(json_integer_value(json_object_get(res.reply, "earlier_upgrades")), 0);
    ck_assert_uint_eq(json_object_size(json_object_get(res.reply, "expected_pause_ms")), 0);
    /* Rehearsed (nobody speaks the protocol: nobody to ask), recorded as a dry run. */
    json_t *reh = json_object_get(res.reply, "rehearsal");
    ck_assert(json_is_true(json_object_get(reh, "ok")));
    ck_assert_uint_eq(json_array_size(json_object_get(reh, "processes")), 0);
    ck_assert_uint_eq(n_attempts("dry_run"), 1);
    result_clear(&res);
    /* Without the rehearsal: nothing recorded at all. */
    dry_run_to(&res, "2", NULL, false);
    ck_assert_msg(res.r == 0, "dry run: %d %s", res.r, first_error(&res));
    ck_assert(json_is_null(json_object_get(res.reply, "rehearsal")));
    ck_assert_uint_eq(n_attempts("dry_run"), 1);
    result_clear(&res);
    /* Nothing changed: states, processes, pids, records. */
    ck_assert_state("1", "permanent");
    ck_assert_state("2", "unpacked");
    ck_assert_uint_eq(n_running(), 1);
    ck_assert_int_eq(pid_of("a"), pid);
    ck_assert_int_eq(pid_of("b"), 0);
    ck_assert_uint_eq(n_attempts("upgrade"), 0);
    ck_assert_uint_eq(n_events("outcome"), outcomes);
    ck_assert_uint_eq(n_events("state"), states);
    Diag d = {0};
    json_t *st = manager_status(m, &d);
    ck_assert(json_is_null(json_object_get(st, "upgrade")));
    ck_assert_str_eq(json_string_value(json_object_get(st, "permanent")), "1");
    json_decref(st);
    diag_clear(&d);
    /* And the upgrade itself still goes, after its dry runs. */
    install_to(&res, "2", "upgrade");
    ck_assert_msg(res.r == 0, "upgrade: %d %s", res.r, first_error(&res));
    result_clear(&res);
    ck_assert_state("2", "current");
}
END_TEST

START_TEST(dry_run_refusals_and_the_running_release)
{
    Result res = {0};
    dry_run_to(&res, "9", NULL, true);
    ck_assert_int_eq(res.r, -ENOENT);
    ck_assert_str_eq(first_error(&res), "release 9 is not known (relctl unpack it first)");
    result_clear(&res);
    unpack_release("1");
    unpack_release("2");
    dry_run_to(&res, "2", "upgrade", true);
    ck_assert_int_eq(res.r, -EINVAL);
    ck_assert_str_eq(first_error(&res), "no release is running to upgrade from");
    ck_assert_str_eq(json_string_value(json_object_get(res.reply, "outcome")), "refused");
    result_clear(&res);
    install("2");
    size_t outcomes = n_events("outcome");
    dry_run_to(&res, "1", "upgrade", true);
    ck_assert_int_eq(res.r, -EINVAL);
    ck_assert_str_eq(first_error(&res), "release 1 is older than the running 2: use downgrade");
    ck_assert_str_eq(json_string_value(json_object_get(res.reply, "outcome")), "refused");
    ck_assert(json_is_true(json_object_get(res.reply, "dry_run")));
    result_clear(&res);
    dry_run_to(&res, "2", NULL, true);
    ck_assert_int_eq(res.r, 0);
    ck_assert_str_eq(json_string_value(json_object_get(res.reply, "outcome")), "unchanged");
    ck_assert(json_is_true(json_object_get(res.reply, "dry_run")));
    result_clear(&res);
    /* A dry run keeps no outcome (status's last attempt stays the install's). */
    ck_assert_uint_eq(n_events("outcome"), outcomes);
    ck_assert_state("2", "current");
    ck_assert_state("1", "unpacked");
}
END_TEST

START_TEST(dry_run_of_a_first_install_lists_what_would_start)
{
    unpack_release("2");
    Result res = {0};
    dry_run_to(&res, "2", NULL, true);
    ck_assert_msg(res.r == 0, "dry run: %d %s", res.r, first_error(&res));
    ck_assert_str_eq(json_string_value(json_object_get(res.reply, "outcome")), "dry_run");
    ck_assert(json_is_null(json_object_get(res.reply, "from")));
    json_t *starts = json_object_get(res.reply, "starts");
    ck_assert_uint_eq(json_array_size(starts), 2);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(starts, 0), "application")), "a");
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(starts, 0), "vsn")), "2");
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(starts, 1), "application")), "b");
    ck_assert_str_eq(json_string_value(json_array_get(json_object_get(json_array_get(starts, 1), "processes"), 0)),
                     "p");
    result_clear(&res);
    ck_assert_uint_eq(n_running(), 0);
    ck_assert_state("2", "unpacked");
    ck_assert(!exists("runs"));
    /* A release whose definitions cannot be read: refused, one line. */
    sql("INSERT INTO releases VALUES ('5', 't', 'unpacked', 'x', 'x', NULL)");
    dry_run_to(&res, "5", NULL, true);
    ck_assert_int_lt(res.r, 0);
    ck_assert_str_eq(json_string_value(json_object_get(res.reply, "outcome")), "refused");
    ck_assert_uint_eq(res.n_errors, 1);
    result_clear(&res);
}
END_TEST

/* reld stops while a dry run plans: it ends once, refused (it changed
 * nothing), and records nothing. */
START_TEST(dry_run_cut_by_reld_stopping_is_refused)
{
    unpack_release("1");
    unpack_release("2");
    install("1");
    ck_assert_int_eq(setenv("RELD_TEST_PLAN_DELAY_MS", "500", 1), 0);
    Result res = {0};
    ManagerCaller c = caller(&res);
    ManagerInstall in = ask("2", NULL);
    in.dry_run = true;
    in.rehearse = true;
    manager_install(m, &in, "tester", &c);
    ck_assert_int_eq(res.n, 0);
    shut_down = false;
    manager_shutdown(m, on_shut_down, NULL);
    long long deadline = mono_ms() + 30000;
    while ((res.n == 0 || !shut_down) && mono_ms() < deadline)
        ck_assert_int_ge(sd_event_run(ev, 10 * 1000ULL), 0);
    ck_assert_int_eq(unsetenv("RELD_TEST_PLAN_DELAY_MS"), 0);
    ck_assert_int_eq(res.n, 1);
    ck_assert_int_eq(res.r, -ECANCELED);
    ck_assert_str_eq(outcome(&res), "refused");
    ck_assert_str_eq(first_error(&res), "reld is stopping; the dry run of the upgrade was not started");
    ck_assert_uint_eq(n_attempts("dry_run"), 0);
    ck_assert_state("1", "current");
    ck_assert_state("2", "unpacked");
    result_clear(&res);
}
END_TEST

static Suite *manager_suite(void)
{
    Suite *s = suite_create("manager");
    struct {
        const char *name;
        const TTest *tests[8];
    } cases[] = {
        {"manager_new",
         {new_on_a_fresh_root, new_second_on_the_same_root_is_ebusy, new_root_that_cannot_be_made,
          new_boots_the_permanent_release, new_serves_when_the_permanent_release_cannot_boot}},
        {"manager_new reconcile",
         {new_reconcile_rolls_a_current_release_back, new_reconcile_forgets_a_release_without_files,
          new_reconcile_records_a_release_unpacked_but_not_recorded,
          new_reconcile_sweeps_application_directories_no_release_uses, new_reconcile_empties_tmp}},
        {"manager_new database",
         {new_refuses_an_empty_database_where_releases_are, new_refuses_a_corrupt_database,
          new_refuses_a_missing_database_where_releases_are, new_refuses_a_database_whose_releases_cannot_be_read,
          new_root_without_releases_takes_a_missing_or_empty_database}},
        {"manager_recover",
         {recover_rebuilds_with_the_permanent_release, recover_without_a_marker_records_every_release_unpacked,
          recover_of_a_missing_database_and_a_release_that_does_not_load, recover_of_a_sound_database_changes_nothing,
          recover_leaves_what_it_cannot_fix, make_permanent_writes_the_marker_and_start_keeps_it_in_line}},
        {"manager_unpack",
         {unpack_a_release, unpack_refusals_are_one_line_and_leave_nothing,
          unpack_whose_record_fails_takes_its_files_back, unpack_refuses_what_cannot_run_here}},
        {"manager_install health",
         {gate_a_first_install_that_crash_loops_fails_and_is_not_left_current,
          gate_an_unhealthy_upgrade_goes_back_once_by_itself, gate_an_unhealthy_release_before_needs_an_operator,
          gate_no_wait_and_the_same_release_again,
          gate_a_rolled_back_downgrade_to_the_permanent_release_keeps_it_permanent,
          gate_a_commit_that_cannot_be_recorded_fails, gate_reld_stops_while_the_rollback_plans,
          unpack_again_after_a_stored_relup}},
        {"manager_install",
         {install_the_first_release, install_refusals, install_an_upgrade_and_refusals_while_it_runs,
          install_whose_record_fails_runs_nothing}},
        {"manager_make_permanent",
         {make_permanent_refusals, make_permanent_database_unreadable_says_why, make_permanent_the_state_machine,
          make_permanent_whose_record_fails_changes_nothing}},
        {"manager_remove", {remove_an_unpacked_release, remove_refusals, remove_whose_record_fails_keeps_the_files}},
        {"manager_relup", {relup_computed_and_refused}},
        {"manager_releases", {releases_shape}},
        {"manager_history", {history_shape_and_limit}},
        {"manager_status", {status_shape}},
        {"manager_forget_caller", {forget_caller_the_operation_goes_on}},
        {"manager_shutdown", {shutdown_stops_every_process_then_calls_back}},
        {"manager_free", {free_refuses_while_a_worker_thread_runs}},
        {"manager_install dry_run",
         {dry_run_of_an_upgrade_changes_nothing_and_names_the_processes, dry_run_refusals_and_the_running_release,
          dry_run_of_a_first_install_lists_what_would_start, dry_run_cut_by_reld_stopping_is_refused}},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        TCase *tc = tcase_create(cases[i].name);
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 60);
        for (size_t k = 0; k < sizeof(cases[i].tests) / sizeof(cases[i].tests[0]) && cases[i].tests[k]; k++)
            tcase_add_test(tc, cases[i].tests[k]);
        suite_add_tcase(s, tc);
    }
    return s;
}

int main(void)
{
    return test_run_daemon_suite(manager_suite());
}
