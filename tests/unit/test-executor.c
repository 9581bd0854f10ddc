/* executor: relups run by the real executor on a real sd-event loop, with a
 * real supervisor and a real history in a temporary release root, against
 * real processes: tests/unit/fake-proc.c (its path in FAKE_PROC), which
 * speaks the control protocol on its socketpair, behaves as FAKE_BEHAVIOUR*
 * says and logs every request it gets (FAKE_LOG). Each test asserts what
 * each process was sent and in what order, what runs afterwards (pids,
 * versions, the supervisor's tables), what the executor said (diag) and
 * what the history holds. Nothing sleeps: the tests wait on the event loop
 * for the executor, the processes' hellos and replies, with deadlines. */
#include <check.h>
#include <errno.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "executor.h"
#include "store.h"
#include "testlib.h"

#define RUN_LIMIT_MS 8000 /* an executor run that takes longer fails its test */

static const char *fake;
static char root[] = "/tmp/reld-test-executor-XXXXXX";
static sd_event *ev;
static History *hist;
static Supervisor *sup;
static ReleaseDef *from, *to;
static Relup *relup;
static const RelupScript *script;
static Executor *ex;
static Diag d;
static bool woken;
static long long run_ms;
static StrVec env_set; /* FAKE_BEHAVIOUR_* variables a test set */
/* The rehearsal's parameters for run() (ExecutorParams). */
static bool rehearse, rehearse_only;
static int rehearse_ms;

/* ---- the release root ---------------------------------------------------------- */

/* Writes ROOT/rel, with every "FAKE" in content replaced by the fake's path. */
static void put(const char *rel, const char *content)
{
    char *path = xasprintf("%s/%s", root, rel);
    for (char *p = strchr(path + strlen(root) + 1, '/'); p; p = strchr(p + 1, '/')) {
        *p = 0;
        mkdir(path, 0755);
        *p = '/';
    }
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    for (const char *p = content; *p;) {
        const char *at = strstr(p, "FAKE");
        if (!at) {
            fputs(p, f);
            break;
        }
        fwrite(p, 1, (size_t)(at - p), f);
        fputs(fake, f);
        p = at + 4;
    }
    fclose(f);
    free(path);
}

/* lib/<app>-<vsn>/app.yaml, and a file for each module holding vsn: the
 * fake takes a module file's first line for the module's version. */
static void put_app(const char *app, const char *vsn, const char *deps, const char *modules, const char *rest)
{
    char *rel = xasprintf("lib/%s-%s/app.yaml", app, vsn);
    char *text = xasprintf("name: %s\nvsn: \"%s\"\n%smodules: [%s]\n%s", app, vsn, deps, modules, rest);
    put(rel, text);
    free(rel);
    free(text);
    char *list = xstrdup(modules), *save = NULL;
    for (char *m = strtok_r(list, ", ", &save); m; m = strtok_r(NULL, ", ", &save)) {
        rel = xasprintf("lib/%s-%s/modules/%s.so", app, vsn, m);
        text = xasprintf("%s\n", vsn);
        put(rel, text);
        free(rel);
        free(text);
    }
    free(list);
}

#define A_PROCS                                                                                                        \
    "processes:\n"                                                                                                     \
    "  - {name: pa, exec: FAKE, modules: [m, n]}\n"                                                                    \
    "  - {name: pa2, exec: FAKE, modules: [m], shutdown_ms: 300}\n"
#define A_APPUP                                                                                                        \
    "appup:\n"                                                                                                         \
    "  up: [{from: \"1\", instructions: [{update: m, change: {advanced: m-extra}}, {load_module: n}]}]\n"              \
    "  down: [{to: \"1\", instructions: [{update: m, change: {advanced: m-extra}}, {load_module: n}]}]\n"
#define B_PROCS "processes:\n  - {name: pb, exec: FAKE, args: [hello=0], modules: [q]}\n"
#define B_APPUP                                                                                                        \
    "appup:\n"                                                                                                         \
    "  up: [{from: \"1\", instructions: [{load_module: q}]}]\n"                                                        \
    "  down: [{to: \"1\", instructions: [{load_module: q}]}]\n"

/* Releases 1 (a 1, b 1, c 1), 2 (a 2, b 2, c 1), 3 (a 1, c 1, d 1: b
 * removed, d added) and 4 (a 1, b 2, c 1, e 1: e added, depending on b).
 * a: pa (m, n) and pa2 (m) speak the protocol; b: pb (q) is a plain
 * process (no hello); c: pc (r) is never changed; d: pd (s), e: pe (t). */
static void base_root(void)
{
    put("releases/1/release.yaml", "release: r\nvsn: \"1\"\napplications: [{name: a, vsn: \"1\"}, {name: b, vsn: "
                                   "\"1\"}, {name: c, vsn: \"1\"}]\n");
    put("releases/2/release.yaml", "release: r\nvsn: \"2\"\napplications: [{name: a, vsn: \"2\"}, {name: b, vsn: "
                                   "\"2\"}, {name: c, vsn: \"1\"}]\n");
    put("releases/3/release.yaml", "release: r\nvsn: \"3\"\napplications: [{name: a, vsn: \"1\"}, {name: c, vsn: "
                                   "\"1\"}, {name: d, vsn: \"1\"}]\n");
    put("releases/4/release.yaml", "release: r\nvsn: \"4\"\napplications: [{name: a, vsn: \"1\"}, {name: b, vsn: "
                                   "\"2\"}, {name: c, vsn: \"1\"}, {name: e, vsn: \"1\"}]\n");
    put_app("a", "1", "", "m, n", A_PROCS);
    put_app("a", "2", "", "m, n", A_PROCS A_APPUP);
    put_app("b", "1", "", "q", B_PROCS);
    put_app("b", "2", "", "q", B_PROCS B_APPUP);
    put_app("c", "1", "", "r", "processes:\n  - {name: pc, exec: FAKE, modules: [r]}\n");
    put_app("d", "1", "applications: [c]\n", "s", "processes:\n  - {name: pd, exec: FAKE, modules: [s]}\n");
    put_app("e", "1", "applications: [b]\n", "t", "processes:\n  - {name: pe, exec: FAKE, modules: [t]}\n");
}

/* ---- the fixture ---------------------------------------------------------------- */

static void setup(void)
{
    strcpy(root, "/tmp/reld-test-executor-XXXXXX");
    rehearse = rehearse_only = false;
    rehearse_ms = 0;
    ck_assert_ptr_nonnull(mkdtemp(root));
    d = (Diag){0};
    char *log = xasprintf("%s/fake.log", root);
    setenv("FAKE_LOG", log, 1);
    free(log);
    base_root();
    ck_assert_int_ge(sd_event_new(&ev), 0);
    char *db = store_path_db(root), *err = NULL;
    ck_assert_msg(history_open(db, &hist, &err) == 0, "%s", err ? err : "");
    free(db);
    ck_assert_int_eq(supervisor_new(ev, hist, root, &sup), 0);
}

static void teardown(void)
{
    ex = executor_free(ex);
    sup = supervisor_free(sup); /* SIGKILLs and reaps every process left */
    /* The output pipes of the processes go at their end of file, from the
     * loop: the processes are reaped, so those are pending now. */
    for (int k = 0; k < 10000 && sd_event_run(ev, 0) > 0; k++)
        ;
    ev = sd_event_unref(ev);
    hist = history_close(hist);
    from = release_def_free(from);
    to = release_def_free(to);
    relup = relup_free(relup);
    script = NULL;
    diag_clear(&d);
    for (size_t k = 0; k < env_set.n; k++)
        unsetenv(env_set.v[k]);
    strvec_clear(&env_set);
    unsetenv("FAKE_LOG");
    char *cmd = xasprintf("rm -rf '%s'", root);
    ck_assert_int_eq(system(cmd), 0);
    free(cmd);
}

/* Rules for the fake process `proc` (fake-proc.c), for its next start. */
static void behave(const char *proc, const char *rules)
{
    char *name = xasprintf("FAKE_BEHAVIOUR_%s", proc);
    setenv(name, rules, 1);
    strvec_push_take(&env_set, name);
}

/* ---- the loop, the processes ----------------------------------------------------- */

/* Runs the event loop until cond(arg) holds; false when ms passed first. */
static bool await(bool (*cond)(void *), void *arg, int ms)
{
    long long end = mono_ms() + ms;
    while (!cond(arg)) {
        long long left = end - mono_ms();
        if (left <= 0)
            return false;
        ck_assert_int_ge(sd_event_run(ev, (uint64_t)left * 1000), 0);
    }
    return true;
}

static Child *child(const char *app, const char *proc)
{
    App *a = supervisor_find_app(sup, app);
    for (size_t k = 0; a && k < a->n_children; k++)
        if (strcmp(proc_def(a->children[k]->proc)->name, proc) == 0)
            return a->children[k];
    return NULL;
}

static pid_t pid_of(const char *app, const char *proc)
{
    Child *c = child(app, proc);
    return c ? proc_pid(c->proc) : 0;
}

static const char *app_vsn(const char *app)
{
    App *a = supervisor_find_app(sup, app);
    return a ? a->vsn : "(absent)";
}

/* Every running process said hello, but plain ones (fake-proc's hello=0). */
static bool all_said_hello(void *unused)
{
    for (size_t i = 0; i < supervisor_n_apps(sup); i++) {
        App *a = supervisor_app(sup, i);
        for (size_t k = 0; k < a->n_children; k++) {
            Proc *p = a->children[k]->proc;
            if (proc_pid(p) && !proc_modules(p) && !strvec_contains(&proc_def(p)->args, "hello=0"))
                return false;
        }
    }
    return true;
}

static void boot(const char *vsn)
{
    ck_assert_msg(store_load_release(root, vsn, &from, &d) == 0, "%s", test_diag_text(&d));
    ck_assert_msg(supervisor_start_release(sup, from, &d) == 0, "%s", test_diag_text(&d));
    ck_assert_msg(await(all_said_hello, NULL, 5000), "the processes did not say hello");
}

typedef struct Sync {
    bool done, suspended;
    int r;
} Sync;

static void on_sync(Proc *p, json_t *reply, int r, void *userdata)
{
    Sync *s = userdata;
    s->done = true;
    s->r = r;
    s->suspended = json_is_true(json_object_get(reply, "suspended"));
}

static bool synced(void *arg)
{
    return ((Sync *)arg)->done;
}

/* A status request on the channel ("sync": the log leaves it out): its
 * answer comes after the process handled everything sent before it, so
 * that its log is complete and proc_modules() up to date. Returns whether
 * the process is suspended. */
static bool sync_proc(const char *app, const char *proc)
{
    Child *c = child(app, proc);
    ck_assert_msg(c && proc_pid(c->proc), "%s/%s does not run", app, proc);
    Sync s = {0};
    ck_assert_int_eq(proc_call(c->proc, json_pack("{s:s, s:b}", "cmd", "status", "sync", 1), 3000, on_sync, &s), 0);
    ck_assert_msg(await(synced, &s, 4000), "%s/%s: no answer to status", app, proc);
    ck_assert_int_eq(s.r, 0);
    return s.suspended;
}

/* A field of module in what the process runs (its last hello or reply):
 * the JSON text of a non-string, "(absent)" without the module. */
static const char *module_field(const char *app, const char *proc, const char *module, const char *key)
{
    static char buf[256];
    Child *c = child(app, proc);
    size_t i;
    json_t *m;
    json_array_foreach(c ? proc_modules(c->proc) : NULL, i, m)
    {
        if (strcmp(json_string_value(json_object_get(m, "name")), module) != 0)
            continue;
        json_t *v = json_object_get(m, key);
        if (json_is_string(v))
            return json_string_value(v);
        char *s = json_dumps(v, JSON_ENCODE_ANY);
        snprintf(buf, sizeof(buf), "%s", s ? s : "(none)");
        free(s);
        return buf;
    }
    return "(absent)";
}
#define version_in(app, proc, module) module_field(app, proc, module, "version")

static bool log_holds(const char *text);

/* ---- running the executor ---------------------------------------------------------- */

static void plan(const char *lo, const char *hi, bool up)
{
    bool stored;
    ck_assert_msg(store_relup(root, lo, hi, true, &relup, &stored, &d) == 0, "%s", test_diag_text(&d));
    diag_clear(&d); /* warnings of derived appup entries */
    ck_assert_msg(store_load_release(root, up ? hi : lo, &to, &d) == 0, "%s", test_diag_text(&d));
    script = up ? &relup->up : &relup->down;
}

/* A script written by hand: instructions in SPEC.md's shape as YAML flow
 * mappings, up from the running release to to_vsn. */
static void plan_script_(const char *to_vsn, ...)
{
    char *text = xasprintf("from: \"%s\"\nto: \"%s\"\nup:\n", from->vsn, to_vsn);
    va_list ap;
    va_start(ap, to_vsn);
    for (const char *i = va_arg(ap, const char *); i; i = va_arg(ap, const char *)) {
        char *t = xasprintf("%s  - %s\n", text, i);
        free(text);
        text = t;
    }
    va_end(ap);
    char *t = xasprintf("%sdown: [{op: point_of_no_return}]\n", text);
    free(text);
    ck_assert_msg(relup_parse("relup.yaml", t, strlen(t), &relup, &d) == 0, "%s", test_diag_text(&d));
    free(t);
    ck_assert_msg(store_load_release(root, to_vsn, &to, &d) == 0, "%s", test_diag_text(&d));
    script = &relup->up;
}
#define plan_script(...) plan_script_(__VA_ARGS__, (const char *)NULL)

static void on_wake(void *userdata)
{
    woken = true;
}

/* Called after each step that left instructions to do, with how many are done. */
typedef void (*StepHook)(size_t done);

/* Runs the script as reld does (upgrade.c): a step, then the event loop
 * until wake() when processes are to answer, until the end. Returns
 * executor_step()'s last result, 0 or -errno. */
static int run_with(StepHook hook)
{
    int64_t attempt;
    ck_assert_int_eq(history_attempt_begin(hist, "test", "upgrade", from->vsn, to->vsn, &attempt), 0);
    ExecutorParams p = {.supervisor = sup,
                        .history = hist,
                        .root = root,
                        .from = from,
                        .to = to,
                        .script = script,
                        .attempt = attempt,
                        .wake = on_wake,
                        .rehearse = rehearse,
                        .rehearse_only = rehearse_only,
                        .rehearse_timeout_ms = rehearse_ms};
    ck_assert_int_eq(executor_new(&p, &ex), 0);
    long long t0 = mono_ms();
    int r;
    for (;;) {
        size_t n;
        ck_assert_msg(mono_ms() - t0 < RUN_LIMIT_MS, "the executor did not finish within %d ms (at %zu)", RUN_LIMIT_MS,
                      executor_position(ex, &n));
        woken = false;
        r = executor_step(ex, &d);
        if (r == 1) {
            if (hook)
                hook(executor_position(ex, &n));
            ck_assert_int_ge(sd_event_run(ev, 0), 0); /* other events between steps, as in reld */
            continue;
        }
        if (r != EXECUTOR_WAITING)
            break;
        while (!woken) {
            long long left = t0 + RUN_LIMIT_MS - mono_ms();
            ck_assert_msg(left > 0, "the executor waited for more than %d ms (at %zu)", RUN_LIMIT_MS,
                          executor_position(ex, &n));
            ck_assert_int_ge(sd_event_run(ev, (uint64_t)left * 1000), 0);
        }
    }
    run_ms = mono_ms() - t0;
    return r;
}
#define run() run_with(NULL)

/* ---- what happened ------------------------------------------------------------------ */

/* s with every "[digits]" (a pid) as "[PID]", appended to *out. */
static void append_unpid(char **out, const char *sep, const char *s)
{
    size_t len = strlen(*out), cap = len + strlen(sep) + strlen(s) * 2 + 1;
    char *o = xrealloc(*out, cap);
    char *w = o + len;
    if (len)
        w = stpcpy(w, sep);
    while (*s) {
        size_t digits = s[0] == '[' ? strspn(s + 1, "0123456789") : 0;
        if (digits && s[1 + digits] == ']') {
            w = stpcpy(w, "[PID]");
            s += digits + 2;
        } else {
            *w++ = *s++;
        }
    }
    *w = 0;
    *out = o;
}

static char *joined(const StrVec *v)
{
    char *s = xstrdup("");
    for (size_t k = 0; k < v->n; k++)
        append_unpid(&s, " | ", v->v[k]);
    return s;
}

#define ck_assert_text(expr, want)                                                                                     \
    do {                                                                                                               \
        char *_got = (expr);                                                                                           \
        ck_assert_str_eq(_got, (want));                                                                                \
        free(_got);                                                                                                    \
    } while (0)
#define ck_errors(want)   ck_assert_text(joined(&d.errors), want)
#define ck_warnings(want) ck_assert_text(joined(&d.warnings), want)

/* A request as "cmd field field ...": module, path (under the root),
 * modules, pre_purge, method, mode, extra, version. */
static void summarise(char **out, json_t *req)
{
    static const char *const keys[] = {"module", "path", "modules", "pre_purge", "method", "mode", "extra", "version"};
    char *s = xstrdup(json_string_value(json_object_get(req, "cmd")));
    for (size_t k = 0; k < sizeof(keys) / sizeof(*keys); k++) {
        json_t *v = json_object_get(req, keys[k]);
        char *text = NULL;
        if (!v)
            continue;
        if (json_is_array(v)) {
            text = xstrdup("");
            size_t i;
            json_t *x;
            json_array_foreach(v, i, x)
            {
                /* rehearse's modules are objects: "module/mode", with "+" for a code_change */
                char *t = json_is_object(x) ? xasprintf("%s%s%s/%s%s", text, i ? "," : "",
                                                        json_string_value(json_object_get(x, "module")),
                                                        json_string_value(json_object_get(x, "mode")),
                                                        json_is_true(json_object_get(x, "change")) ? "+" : "")
                                            : xasprintf("%s%s%s", text, i ? "," : "", json_string_value(x));
                free(text);
                text = t;
            }
        } else if (json_is_string(v) && strncmp(json_string_value(v), root, strlen(root)) == 0) {
            text = xstrdup(json_string_value(v) + strlen(root) + 1);
        } else if (json_is_string(v) && strcmp(keys[k], "extra") != 0) {
            text = xstrdup(json_string_value(v));
        } else {
            text = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
        }
        char *t = xasprintf("%s %s", s, text);
        free(s);
        free(text);
        s = t;
    }
    char *t = xasprintf("%s%s%s", *out, **out ? "; " : "", s);
    free(*out);
    free(s);
    *out = t;
}

/* What process `name` received, in order, from its fake's log ("; "
 * between requests): of the process with that pid, or when pid is 0 of
 * every process of that name, each start as "start". */
static char *log_of(const char *name, pid_t pid)
{
    char *path = xasprintf("%s/fake.log", root), *buf = NULL, *out = xstrdup("");
    size_t len;
    int r = store_read_file(path, &buf, &len);
    free(path);
    ck_assert_int_eq(r, 0);
    for (char *line = buf, *nl; line && *line; line = nl ? nl + 1 : NULL) {
        nl = strchr(line, '\n');
        if (nl)
            *nl = 0;
        char who[64];
        int p, at = 0;
        if (sscanf(line, "%63s %d %n", who, &p, &at) != 2 || !at || strcmp(who, name) != 0 || (pid && p != pid))
            continue;
        if (strncmp(line + at, "start", 5) == 0) {
            if (!pid) {
                char *t = xasprintf("%s%sstart", out, *out ? "; " : "");
                free(out);
                out = t;
            }
            continue;
        }
        json_t *req = json_loads(line + at, 0, NULL);
        ck_assert_msg(json_is_object(req), "a log line that is not a request: %s", line);
        if (!json_object_get(req, "sync"))
            summarise(&out, req);
        json_decref(req);
    }
    free(buf);
    return out;
}

static bool starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

#define ck_log_prefix(name, pid, want)                                                                                 \
    do {                                                                                                               \
        char *_got = log_of((name), (pid));                                                                            \
        ck_assert_msg(starts_with(_got, (want)), "%s got \"%s\", expected it to start with \"%s\"", (name), _got,      \
                      (want));                                                                                         \
        free(_got);                                                                                                    \
    } while (0)

static sqlite3 *db_open(void)
{
    char *path = store_path_db(root);
    sqlite3 *db = NULL;
    ck_assert_int_eq(sqlite3_open(path, &db), SQLITE_OK);
    free(path);
    return db;
}

static void sql(const char *stmt)
{
    sqlite3 *db = db_open();
    char *err = NULL;
    ck_assert_msg(sqlite3_exec(db, stmt, NULL, NULL, &err) == SQLITE_OK, "%s: %s", stmt, err);
    sqlite3_close(db);
}

/* The instruction records of the (only) attempt: "idx outcome | ...". */
static char *outcomes(void)
{
    sqlite3 *db = db_open();
    sqlite3_stmt *st = NULL;
    ck_assert_int_eq(
        sqlite3_prepare_v2(db, "SELECT idx, outcome FROM instructions ORDER BY attempt_id, idx", -1, &st, NULL),
        SQLITE_OK);
    char *s = xstrdup("");
    while (sqlite3_step(st) == SQLITE_ROW) {
        char *row = xasprintf("%d %s", sqlite3_column_int(st, 0), (const char *)sqlite3_column_text(st, 1));
        append_unpid(&s, " | ", row);
        free(row);
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return s;
}

/* How long instruction idx ran, by its record. */
static long long duration_ms(int idx)
{
    sqlite3 *db = db_open();
    sqlite3_stmt *st = NULL;
    ck_assert_int_eq(sqlite3_prepare_v2(db, "SELECT duration_us FROM instructions WHERE idx = ?", -1, &st, NULL),
                     SQLITE_OK);
    sqlite3_bind_int(st, 1, idx);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    long long us = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return us / 1000;
}

/* The processes started, in order, by the history's process_start events. */
static char *starts(void)
{
    sqlite3 *db = db_open();
    sqlite3_stmt *st = NULL;
    ck_assert_int_eq(
        sqlite3_prepare_v2(db, "SELECT detail FROM events WHERE kind = 'process_start' ORDER BY id", -1, &st, NULL),
        SQLITE_OK);
    char *s = xstrdup("");
    while (sqlite3_step(st) == SQLITE_ROW) {
        json_t *j = json_loads((const char *)sqlite3_column_text(st, 0), 0, NULL);
        char *t = xasprintf("%s%s%s", s, *s ? " " : "", json_string_value(json_object_get(j, "process")));
        json_decref(j);
        free(s);
        s = t;
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return s;
}

static const ProcessDef *def_in(const ReleaseDef *rel, const char *app, size_t k)
{
    return &appdefs_release_find(rel, app)->app->processes[k];
}

#define LOC_A2_M "load_object_code m lib/a-2/modules/m.so"
#define LOC_A2_N "load_object_code n lib/a-2/modules/n.so"
#define CC_UP_M  "code_change m up \"m-extra\""

/* ---- the script, the post-purges, the switch-over -------------------------------------- */

START_TEST(clean_upgrade)
{
    boot("1");
    pid_t pa = pid_of("a", "pa"), pa2 = pid_of("a", "pa2"), pb = pid_of("b", "pb"), pc = pid_of("c", "pc");
    ck_assert(pa && pa2 && pb && pc);
    plan("1", "2", true);
    ck_assert_int_eq(script->n, 9);
    ck_assert_int_eq(run(), 0);
    ck_errors("");
    ck_warnings("");
    ck_assert(!sync_proc("a", "pa"));
    ck_assert(!sync_proc("a", "pa2"));
    ck_assert(!sync_proc("c", "pc"));
    /* Each process got what concerns it, in script order, then the post-purges. */
    ck_assert_text(log_of("pa", pa),
                   LOC_A2_M "; " LOC_A2_N "; suspend m; load m brutal_purge; " CC_UP_M
                            "; resume m; load n brutal_purge; purge m brutal_purge; purge n brutal_purge");
    ck_assert_text(log_of("pa2", pa2),
                   LOC_A2_M "; suspend m; load m brutal_purge; " CC_UP_M "; resume m; purge m brutal_purge");
    ck_assert_text(log_of("pc", 0), "start");
    ck_assert_text(log_of("pa", 0), "start; " LOC_A2_M "; " LOC_A2_N "; suspend m; load m brutal_purge; " CC_UP_M
                                    "; resume m; load n brutal_purge; purge m brutal_purge; purge n brutal_purge");
    /* The switch-over: runtime processes keep their pid and run the new
     * code; the plain process of a changed application restarts on it. */
    ck_assert_int_eq(pid_of("a", "pa"), pa);
    ck_assert_int_eq(pid_of("a", "pa2"), pa2);
    ck_assert_int_eq(pid_of("c", "pc"), pc);
    ck_assert_int_ne(pid_of("b", "pb"), pb);
    ck_assert_int_ne(pid_of("b", "pb"), 0);
    ck_assert_ptr_eq(proc_def(child("b", "pb")->proc), def_in(to, "b", 0));
    ck_assert_ptr_eq(proc_def(child("a", "pa")->proc), def_in(to, "a", 0));
    ck_assert_str_eq(version_in("a", "pa", "m"), "2");
    ck_assert_str_eq(version_in("a", "pa", "n"), "2");
    ck_assert_str_eq(module_field("a", "pa", "m", "old_version"), "null");
    ck_assert_str_eq(version_in("a", "pa2", "m"), "2");
    ck_assert_str_eq(version_in("c", "pc", "r"), "1");
    ck_assert_str_eq(app_vsn("a"), "2");
    ck_assert_str_eq(app_vsn("b"), "2");
    ck_assert_str_eq(app_vsn("c"), "1");
    ck_assert_text(outcomes(), "1 ok | 2 ok | 3 ok | 4 ok | 5 ok | 6 ok | 7 ok | 8 ok | 9 ok");
    size_t n;
    ck_assert_int_eq(executor_position(ex, &n), 9);
    ck_assert_int_eq(n, 9);
}
END_TEST

/* ---- failures and the recovery -------------------------------------------------------- */

START_TEST(failure_before_ponr_drops_the_staged_code)
{
    behave("pa2", "load_object_code:fail");
    boot("1");
    pid_t pa = pid_of("a", "pa"), pa2 = pid_of("a", "pa2"), pb = pid_of("b", "pb"), pc = pid_of("c", "pc");
    plan("1", "2", true);
    ck_assert_int_eq(run(), -EPROTO);
    ck_errors("a/pa2[PID]: load_object_code m: injected: load_object_code m failed on purpose");
    ck_warnings("failed before the point of no return: the new code was dropped, release 1 runs untouched");
    ck_assert(!sync_proc("a", "pa"));
    ck_assert(!sync_proc("a", "pa2"));
    ck_assert_text(log_of("pa", 0), "start; " LOC_A2_M "; " LOC_A2_N "; drop_object_code m; drop_object_code n");
    ck_assert_text(log_of("pa2", 0), "start; " LOC_A2_M);
    ck_assert_text(log_of("pc", 0), "start");
    ck_assert_str_eq(module_field("a", "pa", "m", "staged_version"), "null");
    ck_assert_str_eq(module_field("a", "pa", "n", "staged_version"), "null");
    ck_assert_str_eq(version_in("a", "pa", "m"), "1");
    ck_assert_int_eq(pid_of("a", "pa"), pa);
    ck_assert_int_eq(pid_of("a", "pa2"), pa2);
    ck_assert_int_eq(pid_of("b", "pb"), pb);
    ck_assert_int_eq(pid_of("c", "pc"), pc);
    ck_assert_str_eq(app_vsn("a"), "1");
    ck_assert_str_eq(app_vsn("b"), "1");
    ck_assert_ptr_eq(proc_def(child("b", "pb")->proc), def_in(from, "b", 0));
    ck_assert_text(outcomes(),
                   "1 failed: a/pa2[PID]: load_object_code m: injected: load_object_code m failed on purpose");
}
END_TEST

START_TEST(failure_after_ponr_runs_the_inverse)
{
    behave("pa2", "code_change:fail");
    boot("1");
    pid_t pa = pid_of("a", "pa"), pa2 = pid_of("a", "pa2"), pb = pid_of("b", "pb"), pc = pid_of("c", "pc");
    plan("1", "2", true);
    ck_assert_int_eq(run(), -EPROTO);
    ck_errors("a/pa2[PID]: code_change m: injected: code_change m failed on purpose");
    ck_warnings("failed after the point of no return: ran the inverse of what was done; release 1 runs, its state "
                "kept");
    ck_assert(!sync_proc("a", "pa"));
    ck_assert(!sync_proc("a", "pa2"));
    /* Per process: suspended, each change undone in reverse (code_change
     * down before the revert), resumed, the newer code purged (soft); then
     * the staged code dropped. */
    ck_assert_text(log_of("pa", pa),
                   LOC_A2_M "; " LOC_A2_N "; suspend m; load m brutal_purge; " CC_UP_M
                            "; suspend m; code_change m down \"m-extra\"; revert m 1; resume m,n; purge m "
                            "soft_purge; drop_object_code m; drop_object_code n");
    ck_assert_text(log_of("pa2", pa2),
                   LOC_A2_M "; suspend m; load m brutal_purge; " CC_UP_M
                            "; suspend m; revert m 1; resume m; purge m soft_purge; drop_object_code m");
    ck_assert_text(log_of("pc", 0), "start");
    ck_assert_int_eq(pid_of("a", "pa"), pa);
    ck_assert_int_eq(pid_of("a", "pa2"), pa2);
    ck_assert_int_eq(pid_of("b", "pb"), pb);
    ck_assert_int_eq(pid_of("c", "pc"), pc);
    ck_assert_str_eq(version_in("a", "pa", "m"), "1");
    ck_assert_str_eq(version_in("a", "pa", "n"), "1");
    ck_assert_str_eq(module_field("a", "pa", "n", "staged_version"), "null");
    ck_assert_str_eq(version_in("a", "pa2", "m"), "1");
    ck_assert_str_eq(app_vsn("a"), "1");
    ck_assert_ptr_eq(proc_def(child("a", "pa")->proc), def_in(from, "a", 0));
    ck_assert_text(outcomes(), "1 ok | 2 ok | 3 ok | 4 ok | 5 ok | 6 failed: a/pa2[PID]: code_change m: injected: "
                               "code_change m failed on purpose | 7 not run");
}
END_TEST

START_TEST(inverse_impossible_after_remove_restarts_on_old_release)
{
    behave("pa2", "code_change:fail");
    boot("1");
    pid_t pa = pid_of("a", "pa"), pa2 = pid_of("a", "pa2"), pb = pid_of("b", "pb"), pc = pid_of("c", "pc");
    plan_script("2", "{op: load_object_code, app: a, vsn: '2', modules: [m]}", "{op: point_of_no_return}",
                "{op: remove, module: n, pre_purge: brutal_purge, post_purge: brutal_purge}",
                "{op: suspend, modules: [m]}",
                "{op: load, module: m, pre_purge: brutal_purge, post_purge: brutal_purge}",
                "{op: code_change, mode: up, modules: [{module: m, extra: null}]}", "{op: resume, modules: [m]}");
    ck_assert_int_eq(run(), -EPROTO);
    ck_errors("a/pa2[PID]: code_change m: injected: code_change m failed on purpose | a/pa[PID]: undoing the upgrade: "
              "n was removed and its state is gone");
    ck_warnings("failed after the point of no return: restarted a, b on release 1 (their in-memory state is lost)");
    /* The changed applications (a, b) restarted on release 1; c goes on. */
    ck_assert_int_ne(pid_of("a", "pa"), pa);
    ck_assert_int_ne(pid_of("a", "pa2"), pa2);
    ck_assert_int_ne(pid_of("b", "pb"), pb);
    ck_assert(pid_of("a", "pa") && pid_of("a", "pa2") && pid_of("b", "pb"));
    ck_assert_int_eq(pid_of("c", "pc"), pc);
    ck_assert_ptr_eq(proc_def(child("a", "pa")->proc), def_in(from, "a", 0));
    ck_assert_ptr_eq(proc_def(child("b", "pb")->proc), def_in(from, "b", 0));
    ck_assert_str_eq(app_vsn("a"), "1");
    ck_assert_str_eq(app_vsn("b"), "1");
    ck_assert(!supervisor_find_app(sup, "a")->stopped && !supervisor_find_app(sup, "b")->stopped);
    ck_assert(!sync_proc("a", "pa"));
    ck_assert(!sync_proc("a", "pa2"));
    ck_assert_str_eq(version_in("a", "pa", "m"), "1");
    ck_assert_str_eq(version_in("a", "pa", "n"), "1");
    ck_assert_text(log_of("pa", pid_of("a", "pa")), "");
    /* What came after this is sent without waiting, to a process being stopped. */
    ck_log_prefix("pa", pa,
                  "load_object_code m lib/a-2/modules/m.so; remove n; suspend m; load m brutal_purge; code_change m "
                  "up null");
    ck_log_prefix("pa2", pa2,
                  "load_object_code m lib/a-2/modules/m.so; suspend m; load m brutal_purge; code_change m "
                  "up null");
    ck_assert_text(log_of("pc", 0), "start");
    ck_assert_text(outcomes(), "1 ok | 2 ok | 3 ok | 4 ok | 5 ok | 6 failed: a/pa2[PID]: code_change m: injected: "
                               "code_change m failed on purpose | 7 not run");
}
END_TEST

START_TEST(inverse_refused_restarts_on_old_release)
{
    behave("pa2", "code_change:fail,revert:fail");
    boot("1");
    pid_t pa = pid_of("a", "pa"), pa2 = pid_of("a", "pa2"), pb = pid_of("b", "pb"), pc = pid_of("c", "pc");
    plan("1", "2", true);
    ck_assert_int_eq(run(), -EPROTO);
    ck_errors("a/pa2[PID]: code_change m: injected: code_change m failed on purpose | a/pa2[PID]: undoing the upgrade: "
              "revert m: injected: revert m failed on purpose");
    ck_warnings("failed after the point of no return: restarted a, b on release 1 (their in-memory state is lost)");
    /* pa's inverse ran whole; pa2's stopped at the revert but resumed. */
    ck_log_prefix("pa", pa,
                  LOC_A2_M "; " LOC_A2_N "; suspend m; load m brutal_purge; " CC_UP_M
                           "; suspend m; code_change m down \"m-extra\"; revert m 1; resume m,n; purge m soft_purge");
    ck_log_prefix("pa2", pa2,
                  LOC_A2_M "; suspend m; load m brutal_purge; " CC_UP_M
                           "; suspend m; revert m 1; resume m; purge m soft_purge");
    ck_assert_int_ne(pid_of("a", "pa"), pa);
    ck_assert_int_ne(pid_of("a", "pa2"), pa2);
    ck_assert_int_ne(pid_of("b", "pb"), pb);
    ck_assert(pid_of("a", "pa") && pid_of("a", "pa2") && pid_of("b", "pb"));
    ck_assert_int_eq(pid_of("c", "pc"), pc);
    ck_assert(!sync_proc("a", "pa2"));
    ck_assert_str_eq(version_in("a", "pa2", "m"), "1");
    ck_assert_text(outcomes(), "1 ok | 2 ok | 3 ok | 4 ok | 5 ok | 6 failed: a/pa2[PID]: code_change m: injected: "
                               "code_change m failed on purpose | 7 not run");
}
END_TEST

START_TEST(suspend_without_answer_times_out_then_is_resumed)
{
    behave("pa2", "suspend:slow=800");
    boot("1");
    pid_t pa = pid_of("a", "pa"), pa2 = pid_of("a", "pa2");
    plan_script("2", "{op: load_object_code, app: a, vsn: '2', modules: [m]}", "{op: point_of_no_return}",
                "{op: suspend, modules: [{module: m, timeout_ms: 200}]}",
                "{op: load, module: m, pre_purge: brutal_purge, post_purge: brutal_purge}",
                "{op: code_change, mode: up, modules: [{module: m, extra: null}]}", "{op: resume, modules: [m]}");
    ck_assert_int_eq(run(), -ETIMEDOUT);
    ck_errors("a/pa2[PID]: suspend: no answer in time");
    ck_warnings("failed after the point of no return: ran the inverse of what was done; release 1 runs, its state "
                "kept");
    /* It failed at its timeout (the error says so: a late answer would
     * have ended the call with success), not before it ... */
    long long ms = duration_ms(3);
    ck_assert_msg(ms >= 150, "the suspend took %lld ms, its timeout is 200 ms", ms);
    /* ... and the recovery resumed the process once it answered. */
    ck_assert_msg(run_ms >= 700, "the run took %lld ms: it did not wait for the late answer", run_ms);
    ck_assert(!sync_proc("a", "pa2"));
    ck_assert(!sync_proc("a", "pa"));
    ck_assert_text(log_of("pa", pa),
                   "load_object_code m lib/a-2/modules/m.so; suspend m; resume m,n; drop_object_code m");
    ck_assert_text(log_of("pa2", pa2),
                   "load_object_code m lib/a-2/modules/m.so; suspend m; resume m; drop_object_code m");
    ck_assert_int_eq(pid_of("a", "pa"), pa);
    ck_assert_int_eq(pid_of("a", "pa2"), pa2);
    ck_assert_str_eq(version_in("a", "pa2", "m"), "1");
    ck_assert_text(outcomes(), "1 ok | 2 ok | 3 failed: a/pa2[PID]: suspend: no answer in time | 4 not run | 5 not run "
                               "| 6 not run");
}
END_TEST

START_TEST(process_exiting_mid_instruction)
{
    behave("pa2", "exit_at=load");
    boot("1");
    pid_t pa = pid_of("a", "pa"), pa2 = pid_of("a", "pa2"), pc = pid_of("c", "pc");
    plan("1", "2", true);
    int r = run();
    ck_assert_int_eq(r, -ECONNRESET);
    /* Whether or not its exit was seen before the recovery began: no
     * inverse can give its state back, so the changed applications restart. */
    ck_errors("a/pa2[PID]: load m: the process went away | undoing the upgrade: a/pa2 went away; its state is gone");
    ck_warnings("failed after the point of no return: restarted a, b on release 1 (their in-memory state is lost)");
    ck_log_prefix("pa2", pa2, LOC_A2_M "; suspend m; load m brutal_purge");
    ck_log_prefix("pa", pa, LOC_A2_M "; " LOC_A2_N "; suspend m; load m brutal_purge");
    ck_assert_int_ne(pid_of("a", "pa2"), pa2);
    ck_assert_int_ne(pid_of("a", "pa2"), 0);
    ck_assert_int_eq(pid_of("c", "pc"), pc);
    ck_assert_text(outcomes(), "1 ok | 2 ok | 3 ok | 4 ok | 5 failed: a/pa2[PID]: load m: the process went away | 6 "
                               "not run | 7 not run");
}
END_TEST

START_TEST(soft_purge_refused_at_point_of_no_return)
{
    behave("pa", "pinned_old=m");
    boot("1");
    pid_t pa = pid_of("a", "pa"), pa2 = pid_of("a", "pa2");
    plan_script("2", "{op: load_object_code, app: a, vsn: '2', modules: [m]}", "{op: point_of_no_return}",
                "{op: suspend, modules: [m]}", "{op: load, module: m, pre_purge: soft_purge, post_purge: brutal_purge}",
                "{op: resume, modules: [m]}");
    ck_assert_int_eq(run(), -EBUSY);
    ck_errors("a/pa[PID]: soft_purge of m cannot be honoured: its old code is still in use");
    ck_warnings("failed before the point of no return: the new code was dropped, release 1 runs untouched");
    ck_assert(!sync_proc("a", "pa"));
    ck_assert(!sync_proc("a", "pa2"));
    ck_assert_text(log_of("pa", pa), "load_object_code m lib/a-2/modules/m.so; status m; drop_object_code m");
    ck_assert_text(log_of("pa2", pa2), "load_object_code m lib/a-2/modules/m.so; status m; drop_object_code m");
    ck_assert_str_eq(version_in("a", "pa", "m"), "1");
    ck_assert_str_eq(module_field("a", "pa", "m", "old_version"), "0");
    ck_assert_text(outcomes(), "1 ok | 2 failed: a/pa[PID]: soft_purge of m cannot be honoured: its old code is still "
                               "in use");
}
END_TEST

/* ---- every kind of instruction -------------------------------------------------------- */

static pid_t stopped_pa, stopped_pa2;

static void stop_start_hook(size_t done)
{
    if (done == 2) { /* the stop ended: the processes that run m are down */
        ck_assert_int_eq(pid_of("a", "pa"), 0);
        ck_assert_int_eq(pid_of("a", "pa2"), 0);
        ck_assert_int_ne(pid_of("c", "pc"), 0);
    }
    if (done == 3) { /* started again, on release 2's definitions */
        ck_assert(pid_of("a", "pa") && pid_of("a", "pa") != stopped_pa);
        ck_assert(pid_of("a", "pa2") && pid_of("a", "pa2") != stopped_pa2);
        ck_assert_ptr_eq(proc_def(child("a", "pa")->proc), def_in(to, "a", 0));
        ck_assert_ptr_eq(proc_def(child("a", "pa2")->proc), def_in(to, "a", 1));
    }
}

START_TEST(stop_and_start)
{
    behave("pa2", "ignore_sigterm=1"); /* stopped by SIGKILL after its shutdown_ms, 300 */
    boot("1");
    stopped_pa = pid_of("a", "pa");
    stopped_pa2 = pid_of("a", "pa2");
    pid_t pb = pid_of("b", "pb"), pc = pid_of("c", "pc");
    plan_script("2", "{op: point_of_no_return}", "{op: stop, modules: [m]}", "{op: start, modules: [m]}",
                "{op: purge, modules: [r]}");
    ck_assert_int_eq(run_with(stop_start_hook), 0);
    ck_errors("");
    ck_warnings("");
    ck_assert_msg(run_ms >= 250, "pa2 ignores SIGTERM: its stop takes its shutdown_ms, but the run took %lld ms",
                  run_ms);
    pid_t pa = pid_of("a", "pa"), pa2 = pid_of("a", "pa2");
    ck_assert(pa && pa != stopped_pa && pa2 && pa2 != stopped_pa2);
    ck_assert(!sync_proc("a", "pa"));
    ck_assert(!sync_proc("a", "pa2"));
    ck_assert_str_eq(version_in("a", "pa", "m"), "2"); /* RELD_MODULES of release 2 */
    ck_assert_str_eq(version_in("a", "pa", "n"), "2");
    ck_assert_str_eq(version_in("a", "pa2", "m"), "2");
    ck_assert_text(log_of("pa", 0), "start; start");
    ck_assert_text(log_of("pa2", 0), "start; start");
    /* Started by the script: not restarted at the switch-over; the plain pb is. */
    ck_assert_int_eq(pid_of("a", "pa"), pa);
    ck_assert_int_ne(pid_of("b", "pb"), pb);
    ck_assert_int_eq(pid_of("c", "pc"), pc);
    ck_assert_text(log_of("pc", 0), "start; purge r brutal_purge");
    /* start restarts in the order of the stop (reverse start order), as
     * OTP's release_handler_1 stops and starts both in which_children order;
     * then the switch-over restarts pb. */
    ck_assert_text(starts(), "pa pa2 pb pc pa2 pa pb");
    ck_assert_text(outcomes(), "1 ok | 2 ok | 3 ok | 4 ok");
}
END_TEST

/* A plain process replaced at the switch-over stops as its old release
 * said: its shutdown_ms there (300), not the new release's (60 s). */
/* Waits (the loop turning, at most ms) until process pid logged its start. */
static bool await_logged_start(pid_t pid, int ms)
{
    char *line = xasprintf(" %d start", (int)pid);
    bool found = false;
    for (long long end = mono_ms() + ms; !(found = log_holds(line)) && mono_ms() < end;)
        ck_assert_int_ge(sd_event_run(ev, 10000), 0); /* 10 ms at most: the log is a file, no event */
    free(line);
    return found;
}

START_TEST(switch_over_stops_with_the_old_shutdown_ms)
{
    put_app("b", "1", "", "q",
            "processes:\n  - {name: pb, exec: FAKE, args: [hello=0], modules: [q], shutdown_ms: 300}\n");
    put_app("b", "2", "", "q",
            "processes:\n  - {name: pb, exec: FAKE, args: [hello=0], modules: [q], shutdown_ms: 60000}\n" B_APPUP);
    behave("pb", "ignore_sigterm=1");
    boot("1");
    pid_t pb = pid_of("b", "pb");
    /* pb says no hello: its start line in the log says it ignores SIGTERM
     * now (a slow start, under ASan, would otherwise take the SIGTERM). */
    ck_assert_msg(await_logged_start(pb, 5000), "pb did not start");
    plan("1", "2", true);
    ck_assert_int_eq(run(), 0);
    ck_errors("");
    ck_assert_msg(run_ms >= 250, "pb ignores SIGTERM for its old shutdown_ms (300 ms); the run took %lld ms", run_ms);
    ck_assert_int_ne(pid_of("b", "pb"), pb);
    ck_assert_int_ne(pid_of("b", "pb"), 0);
    ck_assert_int_eq(proc_def(child("b", "pb")->proc)->shutdown_ms, 60000); /* its new definition, for the next stop */
}
END_TEST

static void applications_hook(size_t done)
{
    App *b = supervisor_find_app(sup, "b");
    if (done == 3) { /* stop_application b */
        ck_assert_ptr_nonnull(b);
        ck_assert(b->stopped);
        ck_assert_int_eq(pid_of("b", "pb"), 0);
        ck_assert_ptr_null(supervisor_find_app(sup, "d"));
    }
    if (done == 6) /* unload_application b */
        ck_assert_ptr_null(b);
}

START_TEST(stop_unload_and_start_applications)
{
    boot("1");
    pid_t pa = pid_of("a", "pa"), pa2 = pid_of("a", "pa2"), pc = pid_of("c", "pc");
    plan("1", "3", true);
    ck_assert_int_eq(script->n, 8);
    ck_assert_int_eq(script->v[2].op, RELUP_STOP_APPLICATION);
    ck_assert_int_eq(script->v[5].op, RELUP_UNLOAD_APPLICATION);
    ck_assert_int_eq(script->v[7].op, RELUP_START_APPLICATION);
    ck_assert_int_eq(run_with(applications_hook), 0);
    ck_errors("");
    ck_warnings("");
    ck_assert_int_eq(supervisor_n_apps(sup), 3);
    ck_assert_str_eq(supervisor_app(sup, 0)->name, "a");
    ck_assert_str_eq(supervisor_app(sup, 1)->name, "c");
    ck_assert_str_eq(supervisor_app(sup, 2)->name, "d");
    ck_assert_ptr_null(supervisor_find_app(sup, "b"));
    ck_assert_int_ne(pid_of("d", "pd"), 0);
    ck_assert_int_eq(pid_of("a", "pa"), pa);
    ck_assert_int_eq(pid_of("a", "pa2"), pa2);
    ck_assert_int_eq(pid_of("c", "pc"), pc);
    ck_assert(!sync_proc("d", "pd"));
    ck_assert_str_eq(version_in("d", "pd", "s"), "1");
    ck_assert_text(log_of("pa", 0), "start");
    ck_assert_text(log_of("pc", 0), "start");
    ck_assert_text(log_of("pd", 0), "start");
    ck_assert_text(starts(), "pa pa2 pb pc pd");
    ck_assert_text(outcomes(), "1 ok | 2 ok | 3 ok | 4 ok | 5 ok | 6 ok | 7 ok | 8 ok");
}
END_TEST

START_TEST(start_application_after_switch_over_of_its_dependency)
{
    /* e depends on b, whose plain process restarts at the switch-over:
     * start_application e waits for it. */
    boot("1");
    pid_t pb = pid_of("b", "pb");
    plan("1", "4", true);
    ck_assert_int_eq(script->v[script->n - 1].op, RELUP_START_APPLICATION);
    ck_assert_int_eq(run(), 0);
    ck_errors("");
    ck_assert_int_ne(pid_of("b", "pb"), pb);
    ck_assert_int_ne(pid_of("e", "pe"), 0);
    ck_assert_str_eq(app_vsn("b"), "2");
    ck_assert_str_eq(app_vsn("e"), "1");
    ck_assert_int_eq(supervisor_n_apps(sup), 4);
    ck_assert_str_eq(supervisor_app(sup, 3)->name, "e");
    ck_assert_text(starts(), "pa pa2 pb pc pb pe");
    ck_assert_text(outcomes(), "1 ok | 2 ok | 3 ok | 4 ok | 5 ok | 6 ok");
}
END_TEST

START_TEST(load_purge_and_remove)
{
    boot("1");
    pid_t pa = pid_of("a", "pa"), pa2 = pid_of("a", "pa2");
    plan_script("2", "{op: load_object_code, app: a, vsn: '2', modules: [m, n]}", "{op: point_of_no_return}",
                "{op: load, module: m, pre_purge: soft_purge, post_purge: soft_purge}", "{op: purge, modules: [m]}",
                "{op: remove, module: n, pre_purge: brutal_purge, post_purge: brutal_purge}",
                "{op: purge, modules: [n]}");
    ck_assert_int_eq(run(), 0);
    ck_errors("");
    ck_warnings("");
    ck_assert(!sync_proc("a", "pa"));
    ck_assert(!sync_proc("a", "pa2"));
    /* The soft pre-purge is checked at the point of no return (status). */
    ck_assert_text(log_of("pa", pa), LOC_A2_M "; " LOC_A2_N "; status m; load m soft_purge; purge m brutal_purge; "
                                              "remove n; purge n brutal_purge; purge m soft_purge");
    ck_assert_text(log_of("pa2", pa2),
                   LOC_A2_M "; status m; load m soft_purge; purge m brutal_purge; purge m soft_purge");
    ck_assert_str_eq(version_in("a", "pa", "m"), "2");
    ck_assert_str_eq(module_field("a", "pa", "m", "old_version"), "null");
    ck_assert_str_eq(version_in("a", "pa", "n"), "null");
    ck_assert_str_eq(module_field("a", "pa", "n", "old_version"), "null");
    ck_assert_int_eq(pid_of("a", "pa"), pa);
    ck_assert_int_eq(pid_of("a", "pa2"), pa2);
    ck_assert_text(outcomes(), "1 ok | 2 ok | 3 ok | 4 ok | 5 ok | 6 ok");
}
END_TEST

START_TEST(downgrade_converts_state_down_before_the_load)
{
    boot("2");
    pid_t pa = pid_of("a", "pa"), pa2 = pid_of("a", "pa2"), pb = pid_of("b", "pb");
    plan("1", "2", false);
    ck_assert_int_eq(run(), 0);
    ck_errors("");
    ck_warnings("");
    ck_assert(!sync_proc("a", "pa"));
    ck_assert(!sync_proc("a", "pa2"));
    ck_assert_text(log_of("pa", pa),
                   "load_object_code m lib/a-1/modules/m.so; load_object_code n lib/a-1/modules/n.so; "
                   "suspend m; code_change m down \"m-extra\"; load m brutal_purge; resume m; load n "
                   "brutal_purge; purge m brutal_purge; purge n brutal_purge");
    ck_assert_text(log_of("pa2", pa2), "load_object_code m lib/a-1/modules/m.so; suspend m; code_change m down "
                                       "\"m-extra\"; load m brutal_purge; resume m; purge m brutal_purge");
    ck_assert_str_eq(version_in("a", "pa", "m"), "1");
    ck_assert_int_eq(pid_of("a", "pa"), pa);
    ck_assert_int_ne(pid_of("b", "pb"), pb);
    ck_assert_ptr_eq(proc_def(child("b", "pb")->proc), def_in(to, "b", 0));
    ck_assert_str_eq(app_vsn("a"), "1");
    ck_assert_str_eq(app_vsn("b"), "1");
    ck_assert_text(outcomes(), "1 ok | 2 ok | 3 ok | 4 ok | 5 ok | 6 ok | 7 ok | 8 ok | 9 ok");
}
END_TEST

START_TEST(downgrade_inverse_converts_up_after_the_revert)
{
    behave("pa2", "load:fail");
    boot("2");
    pid_t pa = pid_of("a", "pa"), pa2 = pid_of("a", "pa2");
    plan("1", "2", false);
    ck_assert_int_eq(run(), -EPROTO);
    ck_errors("a/pa2[PID]: load m: injected: load m failed on purpose");
    ck_warnings("failed after the point of no return: ran the inverse of what was done; release 2 runs, its state "
                "kept");
    ck_assert(!sync_proc("a", "pa"));
    ck_assert(!sync_proc("a", "pa2"));
    ck_assert_text(log_of("pa", pa),
                   "load_object_code m lib/a-1/modules/m.so; load_object_code n lib/a-1/modules/n.so; "
                   "suspend m; code_change m down \"m-extra\"; load m brutal_purge; suspend m; "
                   "revert m 2; code_change m up \"m-extra\"; resume m,n; purge m soft_purge; "
                   "drop_object_code m; drop_object_code n");
    ck_assert_text(log_of("pa2", pa2), "load_object_code m lib/a-1/modules/m.so; suspend m; code_change m down "
                                       "\"m-extra\"; load m brutal_purge; suspend m; code_change m up \"m-extra\"; "
                                       "resume m; drop_object_code m");
    ck_assert_str_eq(version_in("a", "pa", "m"), "2");
    ck_assert_str_eq(version_in("a", "pa2", "m"), "2");
    ck_assert_int_eq(pid_of("a", "pa"), pa);
    ck_assert_int_eq(pid_of("a", "pa2"), pa2);
    ck_assert_text(outcomes(), "1 ok | 2 ok | 3 ok | 4 ok | 5 ok | 6 failed: a/pa2[PID]: load m: injected: load m "
                               "failed on purpose | 7 not run");
}
END_TEST

START_TEST(abandoned_run_forgets_its_calls)
{
    /* reld stops while a suspend is out: executor_free() forgets the calls;
     * the late answer then goes nowhere. */
    behave("pa2", "suspend:slow=300");
    boot("1");
    plan("1", "2", true);
    int64_t attempt;
    ck_assert_int_eq(history_attempt_begin(hist, "test", "upgrade", "1", "2", &attempt), 0);
    ExecutorParams p = {.supervisor = sup,
                        .history = hist,
                        .root = root,
                        .from = from,
                        .to = to,
                        .script = script,
                        .attempt = attempt,
                        .wake = on_wake};
    ck_assert_int_eq(executor_new(&p, &ex), 0);
    size_t n;
    int r;
    for (int k = 0; k < 20 && (r = executor_step(ex, &d)) != EXECUTOR_WAITING; k++)
        ck_assert_int_eq(r, 1);
    woken = false;
    while (!woken) /* load_object_code, then the suspend group */
        ck_assert_int_ge(sd_event_run(ev, 3000000), 1);
    ck_assert_int_eq(executor_position(ex, &n), 0);
    for (int k = 0; k < 20 && (r = executor_step(ex, &d)) != EXECUTOR_WAITING; k++)
        ck_assert_int_eq(r, 1);
    ck_assert_int_eq(executor_position(ex, &n), 3); /* the suspend is out */
    ex = executor_free(ex);
    ck_assert(sync_proc("a", "pa2")); /* answered the suspend late, to nobody */
    ck_assert(sync_proc("a", "pa"));
    ck_errors("");
    ck_assert_text(log_of("pa2", 0), "start; " LOC_A2_M "; suspend m");
    ck_assert_text(outcomes(), "1 ok | 2 ok | 3 ok | 4 running | 5 running | 6 running | 7 running");
}
END_TEST

/* ---- the history failing ---------------------------------------------------------------- */

START_TEST(history_failing_before_ponr_drops_the_staged_code)
{
    boot("1");
    pid_t pa = pid_of("a", "pa"), pa2 = pid_of("a", "pa2");
    plan("1", "2", true);
    /* The record of instruction 3 (point_of_no_return) cannot be written. */
    sql("CREATE TRIGGER t BEFORE INSERT ON instructions WHEN NEW.idx = 3 BEGIN SELECT RAISE(FAIL, 'injected'); END;");
    ck_assert_int_eq(run(), -EINVAL);
    ck_errors("cannot record instruction 3 in the history (injected): stopped before it");
    ck_warnings("failed before the point of no return: the new code was dropped, release 1 runs untouched");
    ck_assert(!sync_proc("a", "pa"));
    ck_assert(!sync_proc("a", "pa2"));
    ck_assert_text(log_of("pa", pa), LOC_A2_M "; " LOC_A2_N "; drop_object_code m; drop_object_code n");
    ck_assert_text(log_of("pa2", pa2), LOC_A2_M "; drop_object_code m");
    ck_assert_str_eq(app_vsn("a"), "1");
    ck_assert_text(outcomes(), "1 ok | 2 ok");
}
END_TEST

START_TEST(history_failing_after_ponr_runs_the_inverse)
{
    boot("1");
    pid_t pa = pid_of("a", "pa"), pa2 = pid_of("a", "pa2"), pb = pid_of("b", "pb");
    plan("1", "2", true);
    /* The outcomes of the suspended group (4..7) cannot be written, after it ran. */
    sql("CREATE TRIGGER t BEFORE INSERT ON instructions WHEN NEW.idx = 4 AND NEW.outcome <> 'running' "
        "BEGIN SELECT RAISE(FAIL, 'injected'); END;");
    ck_assert_int_eq(run(), -EINVAL);
    ck_errors("cannot record instruction 7 in the history (injected): stopped after it");
    ck_warnings("failed after the point of no return: ran the inverse of what was done; release 1 runs, its state "
                "kept");
    ck_assert(!sync_proc("a", "pa"));
    ck_assert(!sync_proc("a", "pa2"));
    ck_assert_text(log_of("pa", pa),
                   LOC_A2_M "; " LOC_A2_N "; suspend m; load m brutal_purge; " CC_UP_M
                            "; resume m; suspend m; code_change m down \"m-extra\"; revert m 1; resume m,n; "
                            "purge m soft_purge; drop_object_code m; drop_object_code n");
    ck_assert_text(log_of("pa2", pa2),
                   LOC_A2_M "; suspend m; load m brutal_purge; " CC_UP_M
                            "; resume m; suspend m; code_change m down \"m-extra\"; revert m 1; resume m; "
                            "purge m soft_purge; drop_object_code m");
    ck_assert_str_eq(version_in("a", "pa", "m"), "1");
    ck_assert_str_eq(version_in("a", "pa2", "m"), "1");
    ck_assert_int_eq(pid_of("b", "pb"), pb);
    ck_assert_str_eq(app_vsn("a"), "1");
    /* The rows written before the group stay: nothing after them ran. */
    ck_assert_text(outcomes(), "1 ok | 2 ok | 3 ok | 4 running | 5 running | 6 running | 7 running");
}
END_TEST

/* ---- the rehearsal ------------------------------------------------------------------------ */

#define POST_REHEARSAL_PA                                                                                              \
    LOC_A2_M "; " LOC_A2_N "; suspend m; load m brutal_purge; " CC_UP_M                                                \
             "; resume m; load n brutal_purge; purge m brutal_purge; purge n brutal_purge"

/* The rehearsal's entry of a process, from executor_rehearsal(). */
static json_t *rehearsal_of(const char *label)
{
    json_t *j = executor_rehearsal(ex);
    ck_assert_ptr_nonnull(j);
    size_t i;
    json_t *p;
    json_array_foreach(json_object_get(j, "processes"), i, p)
    {
        if (strcmp(json_string_value(json_object_get(p, "process")), label) == 0)
            return p;
    }
    ck_abort_msg("no rehearsal of %s", label);
    return NULL;
}

static const char *rehearsal_outcome(const char *label)
{
    return json_string_value(json_object_get(rehearsal_of(label), "outcome"));
}

/* Does the fake's log hold text (a raw request)? */
static bool log_holds(const char *text)
{
    char *path = xasprintf("%s/fake.log", root), *buf = NULL;
    size_t len;
    ck_assert_int_eq(store_read_file(path, &buf, &len), 0);
    bool found = strstr(buf, text) != NULL;
    free(path);
    free(buf);
    return found;
}

START_TEST(rehearsal_passes_then_the_script_runs)
{
    rehearse = true;
    boot("1");
    pid_t pa = pid_of("a", "pa"), pa2 = pid_of("a", "pa2"), pc = pid_of("c", "pc");
    plan("1", "2", true);
    ck_assert_int_eq(run(), 0);
    ck_errors("");
    ck_warnings("");
    ck_assert(!sync_proc("a", "pa"));
    ck_assert(!sync_proc("a", "pa2"));
    /* First, to every process that runs a module the script loads: its
     * modules, whether each is converted (+) and how. */
    ck_assert_text(log_of("pa", pa), "rehearse m/up+,n/up; " POST_REHEARSAL_PA);
    ck_assert_text(log_of("pa2", pa2), "rehearse m/up+; " LOC_A2_M "; suspend m; load m brutal_purge; " CC_UP_M
                                       "; resume m; purge m brutal_purge");
    ck_assert_text(log_of("pc", pc), "");
    ck_assert(log_holds("\"timeout_ms\":10000"));
    ck_assert(log_holds("\"extra\":\"m-extra\""));
    ck_assert_str_eq(version_in("a", "pa", "m"), "2");
    ck_assert_str_eq(app_vsn("a"), "2");
    /* The record: instruction 0, then the script. */
    ck_assert_text(outcomes(), "0 ok | 1 ok | 2 ok | 3 ok | 4 ok | 5 ok | 6 ok | 7 ok | 8 ok | 9 ok");
    json_t *j = executor_rehearsal(ex);
    ck_assert(json_is_true(json_object_get(j, "ok")));
    ck_assert_int_eq(json_array_size(json_object_get(j, "processes")), 2);
    ck_assert_str_eq(rehearsal_outcome("a/pa"), "ok");
    ck_assert_str_eq(rehearsal_outcome("a/pa2"), "ok");
    ck_assert_int_eq(json_integer_value(json_object_get(rehearsal_of("a/pa"), "pid")), pa);
    /* The paths sent were the new release's: the fake read version 2 from them. */
    json_t *r = json_object_get(rehearsal_of("a/pa"), "rehearsed");
    ck_assert_int_eq(json_array_size(r), 2);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(r, 0), "from")), "1");
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(r, 0), "to")), "2");
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(r, 1), "to")), "2");
}
END_TEST

/* A failure: nothing of the script runs, in any process. */
static void ck_nothing_ran(pid_t pa, pid_t pa2, pid_t pb, pid_t pc)
{
    ck_assert_int_eq(pid_of("a", "pa"), pa);
    ck_assert_int_eq(pid_of("a", "pa2"), pa2);
    ck_assert_int_eq(pid_of("b", "pb"), pb);
    ck_assert_int_eq(pid_of("c", "pc"), pc);
    ck_assert_text(log_of("pa2", 0), "start; rehearse m/up+");
    ck_assert_text(log_of("pb", 0), "start");
    ck_assert_text(log_of("pc", 0), "start");
    ck_assert_str_eq(app_vsn("a"), "1");
    ck_assert_str_eq(app_vsn("b"), "1");
    ck_assert_ptr_eq(proc_def(child("b", "pb")->proc), def_in(from, "b", 0));
    ck_assert(json_is_false(json_object_get(executor_rehearsal(ex), "ok")));
}

START_TEST(rehearsal_error_refuses_before_anything_ran)
{
    rehearse = true;
    behave("pa2", "rehearse:error");
    boot("1");
    pid_t pa = pid_of("a", "pa"), pa2 = pid_of("a", "pa2"), pb = pid_of("b", "pb"), pc = pid_of("c", "pc");
    plan("1", "2", true);
    ck_assert_int_eq(run(), -EPROTO);
    ck_errors("a/pa2[PID]: rehearse: rehearsal_failed: m: code_change up: Protocol error: failed on purpose");
    ck_warnings("rehearsal failed: no instruction ran, release 1 runs untouched");
    ck_assert(!sync_proc("a", "pa"));
    ck_assert(!sync_proc("a", "pa2"));
    ck_nothing_ran(pa, pa2, pb, pc);
    ck_assert_text(log_of("pa", 0), "start; rehearse m/up+,n/up");
    ck_assert_str_eq(version_in("a", "pa", "m"), "1");
    ck_assert_str_eq(module_field("a", "pa", "m", "staged_version"), "null");
    ck_assert_str_eq(rehearsal_outcome("a/pa"), "ok");
    ck_assert_str_eq(rehearsal_outcome("a/pa2"), "failed: m: code_change up: Protocol error: failed on purpose");
    ck_assert_text(outcomes(), "0 failed: a/pa2[PID]: rehearse: rehearsal_failed: m: code_change up: Protocol error: "
                               "failed on purpose | 1 not run | 2 not run | 3 not run | 4 not run | 5 not run | 6 not "
                               "run | 7 not run | 8 not run | 9 not run");
}
END_TEST

START_TEST(rehearsal_crash_refuses_before_anything_ran)
{
    rehearse = true;
    behave("pa", "rehearse:crash");
    boot("1");
    pid_t pa = pid_of("a", "pa"), pa2 = pid_of("a", "pa2"), pb = pid_of("b", "pb"), pc = pid_of("c", "pc");
    plan("1", "2", true);
    ck_assert_int_eq(run(), -EPROTO);
    ck_errors("a/pa[PID]: rehearse: rehearsal_failed: m: code_change up: killed by SIGSEGV");
    ck_warnings("rehearsal failed: no instruction ran, release 1 runs untouched");
    ck_assert(!sync_proc("a", "pa"));
    ck_assert(!sync_proc("a", "pa2"));
    ck_nothing_ran(pa, pa2, pb, pc);
    ck_assert_text(log_of("pa", 0), "start; rehearse m/up+,n/up");
    ck_assert_str_eq(rehearsal_outcome("a/pa"), "failed: m: code_change up: killed by SIGSEGV");
    ck_assert_str_eq(rehearsal_outcome("a/pa2"), "ok");
    ck_assert_text(outcomes(), "0 failed: a/pa[PID]: rehearse: rehearsal_failed: m: code_change up: killed by "
                               "SIGSEGV | 1 not run | 2 not run | 3 not run | 4 not run | 5 not run | 6 not run | 7 "
                               "not run | 8 not run | 9 not run");
}
END_TEST

START_TEST(rehearsal_timeout_refuses_before_anything_ran)
{
    rehearse = true;
    rehearse_ms = 200; /* reld waits 2 s more for the process's own answer */
    behave("pa", "rehearse:hang");
    boot("1");
    pid_t pa = pid_of("a", "pa"), pa2 = pid_of("a", "pa2"), pb = pid_of("b", "pb"), pc = pid_of("c", "pc");
    plan("1", "2", true);
    ck_assert_int_eq(run(), -ETIMEDOUT);
    ck_assert_int_ge(run_ms, 2200);
    ck_errors("a/pa[PID]: rehearse: no answer in time");
    ck_warnings("rehearsal failed: no instruction ran, release 1 runs untouched");
    ck_assert(!sync_proc("a", "pa2"));
    ck_assert(log_holds("\"timeout_ms\":200"));
    ck_nothing_ran(pa, pa2, pb, pc);
    ck_assert_text(log_of("pa", 0), "start; rehearse m/up+,n/up");
    ck_assert_str_eq(rehearsal_outcome("a/pa"), "failed: no answer in time");
    ck_assert_text(outcomes(), "0 failed: a/pa[PID]: rehearse: no answer in time | 1 not run | 2 not run | 3 not run "
                               "| 4 not run | 5 not run | 6 not run | 7 not run | 8 not run | 9 not run");
}
END_TEST

START_TEST(rehearsal_process_gone_refuses_before_anything_ran)
{
    rehearse = true;
    behave("pa", "exit_at=rehearse"); /* as a process killed while its copy works */
    boot("1");
    pid_t pa = pid_of("a", "pa"), pa2 = pid_of("a", "pa2"), pb = pid_of("b", "pb"), pc = pid_of("c", "pc");
    plan("1", "2", true);
    ck_assert_int_eq(run(), -ECONNRESET);
    ck_errors("a/pa[PID]: rehearse: the process went away");
    ck_warnings("rehearsal failed: no instruction ran, release 1 runs untouched");
    ck_assert(!sync_proc("a", "pa2"));
    /* pa's supervisor restarts it (restart: permanent); the executor did nothing more */
    ck_nothing_ran(pid_of("a", "pa"), pa2, pb, pc);
    ck_assert_text(log_of("pa", pa), "rehearse m/up+,n/up");
    ck_assert_str_eq(rehearsal_outcome("a/pa"), "failed: the process went away");
    ck_assert_text(outcomes(), "0 failed: a/pa[PID]: rehearse: the process went away | 1 not run | 2 not run | 3 not "
                               "run | 4 not run | 5 not run | 6 not run | 7 not run | 8 not run | 9 not run");
}
END_TEST

START_TEST(rehearsal_skips_a_runtime_without_rehearse)
{
    rehearse = true;
    behave("pa", "rehearse:unknown");
    boot("1");
    pid_t pa = pid_of("a", "pa");
    plan("1", "2", true);
    ck_assert_int_eq(run(), 0);
    ck_errors("");
    ck_warnings("a/pa[PID]: not rehearsed: its runtime has no rehearse command");
    ck_assert(!sync_proc("a", "pa"));
    ck_assert_text(log_of("pa", pa), "rehearse m/up+,n/up; " POST_REHEARSAL_PA);
    ck_assert_str_eq(version_in("a", "pa", "m"), "2");
    ck_assert_str_eq(rehearsal_outcome("a/pa"), "skipped: its runtime has no rehearse command");
    ck_assert_str_eq(rehearsal_outcome("a/pa2"), "ok");
    ck_assert_text(outcomes(), "0 ok | 1 ok | 2 ok | 3 ok | 4 ok | 5 ok | 6 ok | 7 ok | 8 ok | 9 ok");
}
END_TEST

START_TEST(rehearse_only_runs_nothing_else)
{
    rehearse = rehearse_only = true;
    boot("1");
    pid_t pa = pid_of("a", "pa"), pa2 = pid_of("a", "pa2"), pb = pid_of("b", "pb"), pc = pid_of("c", "pc");
    plan("1", "2", true);
    ck_assert_int_eq(run(), 0);
    ck_errors("");
    ck_warnings("");
    ck_assert(!sync_proc("a", "pa"));
    ck_assert(!sync_proc("a", "pa2"));
    ck_assert_text(log_of("pa", 0), "start; rehearse m/up+,n/up");
    ck_assert_text(log_of("pa2", 0), "start; rehearse m/up+");
    ck_assert_int_eq(pid_of("a", "pa"), pa);
    ck_assert_int_eq(pid_of("a", "pa2"), pa2);
    ck_assert_int_eq(pid_of("b", "pb"), pb);
    ck_assert_int_eq(pid_of("c", "pc"), pc);
    ck_assert_str_eq(app_vsn("a"), "1");
    ck_assert_str_eq(version_in("a", "pa", "m"), "1");
    ck_assert(json_is_true(json_object_get(executor_rehearsal(ex), "ok")));
    ck_assert_text(outcomes(), "0 ok");
}
END_TEST

START_TEST(rehearsal_of_a_downgrade)
{
    rehearse = true;
    boot("2");
    pid_t pa = pid_of("a", "pa");
    plan("1", "2", false);
    ck_assert_int_eq(run(), 0);
    ck_errors("");
    ck_assert(!sync_proc("a", "pa"));
    /* Going down, the current code converts (mode down) before the older loads. */
    ck_assert_text(log_of("pa", pa), "rehearse m/down+,n/up; load_object_code m lib/a-1/modules/m.so; "
                                     "load_object_code n lib/a-1/modules/n.so; suspend m; code_change m down "
                                     "\"m-extra\"; load m brutal_purge; resume m; load n brutal_purge; purge m "
                                     "brutal_purge; purge n brutal_purge");
    json_t *r = json_array_get(json_object_get(rehearsal_of("a/pa"), "rehearsed"), 0);
    ck_assert_str_eq(json_string_value(json_object_get(r, "from")), "2");
    ck_assert_str_eq(json_string_value(json_object_get(r, "to")), "1");
    ck_assert_str_eq(version_in("a", "pa", "m"), "1");
}
END_TEST

static Suite *executor_suite(void)
{
    Suite *s = suite_create("executor");
    TCase *tc = tcase_create("executor");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, clean_upgrade);
    tcase_add_test(tc, failure_before_ponr_drops_the_staged_code);
    tcase_add_test(tc, failure_after_ponr_runs_the_inverse);
    tcase_add_test(tc, inverse_impossible_after_remove_restarts_on_old_release);
    tcase_add_test(tc, inverse_refused_restarts_on_old_release);
    tcase_add_test(tc, suspend_without_answer_times_out_then_is_resumed);
    tcase_add_test(tc, process_exiting_mid_instruction);
    tcase_add_test(tc, soft_purge_refused_at_point_of_no_return);
    tcase_add_test(tc, stop_and_start);
    tcase_add_test(tc, switch_over_stops_with_the_old_shutdown_ms);
    tcase_add_test(tc, stop_unload_and_start_applications);
    tcase_add_test(tc, start_application_after_switch_over_of_its_dependency);
    tcase_add_test(tc, load_purge_and_remove);
    tcase_add_test(tc, downgrade_converts_state_down_before_the_load);
    tcase_add_test(tc, downgrade_inverse_converts_up_after_the_revert);
    tcase_add_test(tc, abandoned_run_forgets_its_calls);
    tcase_add_test(tc, history_failing_before_ponr_drops_the_staged_code);
    tcase_add_test(tc, history_failing_after_ponr_runs_the_inverse);
    tcase_add_test(tc, rehearsal_passes_then_the_script_runs);
    tcase_add_test(tc, rehearsal_error_refuses_before_anything_ran);
    tcase_add_test(tc, rehearsal_crash_refuses_before_anything_ran);
    tcase_add_test(tc, rehearsal_timeout_refuses_before_anything_ran);
    tcase_add_test(tc, rehearsal_process_gone_refuses_before_anything_ran);
    tcase_add_test(tc, rehearsal_skips_a_runtime_without_rehearse);
    tcase_add_test(tc, rehearse_only_runs_nothing_else);
    tcase_add_test(tc, rehearsal_of_a_downgrade);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    fake = getenv("FAKE_PROC");
    if (!fake || fake[0] != '/') {
        fprintf(stderr, "FAKE_PROC must name the fake-proc executable by its absolute path\n");
        return 1;
    }
    return test_run_daemon_suite(executor_suite());
}
