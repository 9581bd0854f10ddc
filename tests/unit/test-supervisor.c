/* supervisor: applications of /bin/sh processes on a real sd_event loop,
 * with a real history in a temporary root. The processes note what
 * happens to them in files of the root ("order": who got SIGTERM when). */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "supervisor.h"
#include "testlib.h"
#include "testloop.h"

static char root[] = "/tmp/reld-test-supervisor-XXXXXX";
static sd_event *ev;
static History *hist;
static Supervisor *s;
static ReleaseDef *rel, *rel2;
static Diag d;

/* ---- helpers ------------------------------------------------------------ */

static char *yq(const char *text)
{
    size_t n = 0;
    char *out = xcalloc(2 * strlen(text) + 3, 1);
    out[n++] = '\'';
    for (const char *c = text; *c; c++) {
        if (*c == '\'')
            out[n++] = '\'';
        out[n++] = *c;
    }
    out[n++] = '\'';
    return out;
}

/* Serves until SIGTERM, which it notes in ROOT/order as "LABEL". */
static char *serve(const char *label)
{
    return xasprintf("trap 'echo %s >> %s/order; exit 0' TERM; read x <&$RELD_CONTROL_FD", label, root);
}

/* One process of an app.yaml (takes script). */
static char *process(const char *name, const char *restart, char *script)
{
    char *q = yq(script);
    char *y = xasprintf("  - name: %s\n    exec: /bin/sh\n    args: ['-c', %s]\n    restart: %s\n"
                        "    shutdown_ms: 3000\n",
                        name, q, restart);
    free(q);
    free(script);
    return y;
}

/* An app.yaml (takes procs, the processes' lines); deps: "" or "[x, y]". */
static char *app(const char *name, const char *vsn, const char *deps, char *procs)
{
    char *dir = xasprintf("%s/lib/%s-%s", root, name, vsn);
    char *lib = xasprintf("%s/lib", root);
    mkdir(lib, 0755);
    mkdir(dir, 0755);
    free(lib);
    free(dir);
    char *y = xasprintf("name: %s\nvsn: \"%s\"\n%s%s%smodules: []\nprocesses:\n%s", name, vsn,
                        *deps ? "applications: " : "", deps, *deps ? "\n" : "", procs);
    free(procs);
    return y;
}

/* A release (takes the app.yaml texts); list: "[{name: a, vsn: \"1\"}, ...]". */
static ReleaseDef *release(const char *vsn, const char *list, char **apps, size_t n)
{
    char *text = xasprintf("release: r\nvsn: \"%s\"\napplications: %s\n", vsn, list);
    ReleaseDef *r = NULL;
    Diag dd = {0};
    int e = test_release_n(text, (const char *const *)apps, n, &r, &dd);
    ck_assert_msg(e == 0, "test release: %s", test_diag_text(&dd));
    diag_clear(&dd);
    for (size_t i = 0; i < n; i++)
        free(apps[i]);
    free(text);
    return r;
}

/* Two strings joined (takes both). */
static char *cat2(char *a, char *b)
{
    char *r = xasprintf("%s%s", a, b);
    free(a);
    free(b);
    return r;
}

static void start(ReleaseDef *r)
{
    int e = supervisor_start_release(s, r, &d);
    ck_assert_msg(e == 0, "supervisor_start_release: %d %s", e, test_diag_text(&d));
}

static Child *child(const char *app_name, size_t k)
{
    App *a = supervisor_find_app(s, app_name);
    ck_assert_msg(a != NULL, "no application %s", app_name);
    ck_assert_uint_lt(k, a->n_children);
    return a->children[k];
}

static pid_t pid_of(const char *app_name, size_t k)
{
    return proc_pid(child(app_name, k)->proc);
}

typedef TestCond Cond;

static char *slurp(const char *name)
{
    char *path = xasprintf("%s/%s", root, name);
    FILE *f = fopen(path, "r");
    free(path);
    if (!f)
        return xstrdup("");
    char *buf = xcalloc(65536, 1);
    size_t n = fread(buf, 1, 65535, f);
    buf[n] = 0;
    fclose(f);
    return buf;
}

/* The events of kind in the history, as "app/process" (or the app for
 * restart_limit), one per line, oldest first (caller frees). */
static char *events(const char *kind)
{
    json_t *l = NULL;
    ck_assert_int_eq(history_list(hist, 1000, &l), 0);
    char *out = xstrdup("");
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(l, "events"), i, e)
    {
        if (strcmp(json_string_value(json_object_get(e, "kind")), kind) != 0)
            continue;
        json_t *det = json_object_get(e, "detail");
        const char *a = json_string_value(json_object_get(det, "app"));
        const char *p = json_string_value(json_object_get(det, "process"));
        char *n = p ? xasprintf("%s%s/%s\n", out, a, p) : xasprintf("%s%s\n", out, a);
        free(out);
        out = n;
    }
    json_decref(l);
    return out;
}

static size_t n_lines(const char *text)
{
    size_t n = 0;
    for (; *text; text++)
        n += *text == '\n';
    return n;
}

static int n_done;
static void *done_data;

static void on_done(void *userdata)
{
    n_done++;
    done_data = userdata;
}

static bool done_once(void)
{
    return n_done > 0;
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

/* ---- fixture -------------------------------------------------------------- */

static void setup(void)
{
    signal(SIGTERM, SIG_DFL); /* see test-proc.c: no Check handlers in children */
    signal(SIGINT, SIG_DFL);
    signal(SIGALRM, SIG_DFL);
    strcpy(root, "/tmp/reld-test-supervisor-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(root));
    ck_assert_int_ge(sd_event_new(&ev), 0);
    char *db = xasprintf("%s/reld.db", root), *err = NULL;
    ck_assert_int_eq(history_open(db, &hist, &err), 0);
    free(db);
    ck_assert_int_eq(supervisor_new(ev, hist, root, &s), 0);
    d = (Diag){0};
    rel = rel2 = NULL;
    n_done = 0;
    done_data = NULL;
}

static bool nothing_runs(void)
{
    for (size_t i = 0; i < supervisor_n_apps(s); i++)
        for (size_t k = 0; k < supervisor_app(s, i)->n_children; k++)
            if (proc_pid(supervisor_app(s, i)->children[k]->proc))
                return false;
    return true;
}

static void teardown(void)
{
    /* Stopped as reld stops them (their traps run), then freed. */
    if (s && !nothing_runs()) {
        (void)supervisor_stop_all(s, NULL, NULL);
        test_run_until(ev, nothing_runs, 8000);
    }
    s = supervisor_free(s);
    test_run_for(ev, 30); /* output pipes close */
    ev = sd_event_unref(ev);
    hist = history_close(hist);
    rel = release_def_free(rel);
    rel2 = release_def_free(rel2);
    diag_clear(&d);
    char cmd[sizeof(root) + 16];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
    ck_assert_int_eq(system(cmd), 0);
}

/* ---- supervisor_new, the tables --------------------------------------------- */

START_TEST(new_is_empty)
{
    ck_assert_uint_eq(supervisor_n_apps(s), 0);
    ck_assert(!supervisor_running(s));
    ck_assert(!supervisor_running(NULL));
    ck_assert(!supervisor_stopping(s));
    ck_assert_ptr_null(supervisor_find_app(s, "a"));
    json_t *st = supervisor_status(s);
    ck_assert(json_is_array(st));
    ck_assert_uint_eq(json_array_size(st), 0);
    json_decref(st);
    json_t *none = supervisor_status(NULL);
    ck_assert_uint_eq(json_array_size(none), 0);
    json_decref(none);
    ck_assert_ptr_null(supervisor_free(NULL));
}
END_TEST

/* Notes "NAME term" at SIGTERM, takes ms to exit, notes "NAME exit". */
static char *slow(const char *name, const char *secs)
{
    return xasprintf("trap 'echo %s term >> %s/order; sleep %s; echo %s exit >> %s/order; exit 0' TERM; read x <&3",
                     name, root, secs, name, root);
}

/* ---- supervisor_start_release --------------------------------------------------- */

START_TEST(start_release_dependencies_first)
{
    /* Listed c, b, a; c needs b, b needs a: started a, b, c. */
    char *apps[] = {
        app("c", "1", "[b]", process("p", "permanent", serve("c/p"))),
        app("b", "1", "[a]", process("p", "permanent", serve("b/p"))),
        app("a", "1", "", cat2(process("p1", "permanent", serve("a/p1")), process("p2", "permanent", serve("a/p2"))))};
    rel = release("1", "[{name: c, vsn: \"1\"}, {name: b, vsn: \"1\"}, {name: a, vsn: \"1\"}]", apps, 3);
    start(rel);
    ck_assert(supervisor_running(s));
    ck_assert_uint_eq(supervisor_n_apps(s), 3);
    ck_assert_str_eq(supervisor_app(s, 0)->name, "a");
    ck_assert_str_eq(supervisor_app(s, 1)->name, "b");
    ck_assert_str_eq(supervisor_app(s, 2)->name, "c");
    ck_assert_str_eq(supervisor_app(s, 0)->vsn, "1");
    ck_assert_ptr_eq(supervisor_find_app(s, "b"), supervisor_app(s, 1));
    /* An application's processes in declared order. */
    ck_assert_uint_eq(supervisor_app(s, 0)->n_children, 2);
    ck_assert_str_eq(proc_def(child("a", 0)->proc)->name, "p1");
    ck_assert_str_eq(proc_def(child("a", 1)->proc)->name, "p2");
    ck_assert_str_eq(proc_label(child("a", 1)->proc), "a/p2");
    for (size_t i = 0; i < 3; i++)
        for (size_t k = 0; k < supervisor_app(s, i)->n_children; k++)
            ck_assert_int_gt(proc_pid(supervisor_app(s, i)->children[k]->proc), 0);
    /* Each start is in the history, in start order. */
    char *starts = events("process_start");
    ck_assert_str_eq(starts, "a/p1\na/p2\nb/p\nc/p\n");
    free(starts);
}
END_TEST

START_TEST(start_release_failure_kills_what_it_started)
{
    int port = free_port();
    int held = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {
        .sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert_int_eq(bind(held, (struct sockaddr *)&sa, sizeof(sa)), 0);
    ck_assert_int_eq(listen(held, 1), 0);
    char *sock = xasprintf("    sockets:\n      - {name: http, listen: \"127.0.0.1:%d\"}\n", port);
    char *apps[] = {app("a", "1", "", process("p", "permanent", serve("a/p"))),
                    app("b", "1", "[a]", cat2(process("p", "permanent", serve("b/p")), sock))};
    rel = release("1", "[{name: a, vsn: \"1\"}, {name: b, vsn: \"1\"}]", apps, 2);
    int r = supervisor_start_release(s, rel, &d);
    ck_assert_int_lt(r, 0);
    ck_assert_uint_eq(d.errors.n, 1);
    ck_assert_msg(strstr(d.errors.v[0], "b/p: cannot listen on 127.0.0.1:"), "%s", d.errors.v[0]);
    ck_assert_uint_eq(supervisor_n_apps(s), 0);
    ck_assert(!supervisor_running(s));
    /* a's process was started, then killed and reaped. */
    char *starts = events("process_start");
    ck_assert_str_eq(starts, "a/p\n");
    json_t *l = NULL;
    ck_assert_int_eq(history_list(hist, 100, &l), 0);
    pid_t a_pid = 0;
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(l, "events"), i,
                       e) if (strcmp(json_string_value(json_object_get(e, "kind")), "process_start") == 0) a_pid =
        (pid_t)json_integer_value(json_object_get(json_object_get(e, "detail"), "pid"));
    json_decref(l);
    ck_assert_int_gt(a_pid, 0);
    ck_assert_int_eq(kill(a_pid, 0), -1);
    ck_assert_int_eq(errno, ESRCH);
    free(starts);
    close(held);
}
END_TEST

START_TEST(start_release_again_replaces_the_running_one)
{
    char *apps[] = {app("a", "1", "", process("p", "permanent", serve("a/p")))};
    rel = release("1", "[{name: a, vsn: \"1\"}]", apps, 1);
    start(rel);
    pid_t old = pid_of("a", 0);
    char *apps2[] = {app("b", "1", "", process("q", "permanent", serve("b/q")))};
    rel2 = release("2", "[{name: b, vsn: \"1\"}]", apps2, 1);
    start(rel2);
    ck_assert_uint_eq(supervisor_n_apps(s), 1);
    ck_assert_str_eq(supervisor_app(s, 0)->name, "b");
    ck_assert_int_eq(kill(old, 0), -1); /* the earlier one is gone */
}
END_TEST

START_TEST(start_release_during_a_stop_ends_that_stop)
{
    /* x takes 0.3 s to stop; before it has, a new release replaces the
     * running one (its processes killed): the stop has nothing left to
     * wait for, and says it is done. */
    char *apps[] = {app("a", "1", "",
                        cat2(process("x", "permanent", slow("x", "0.3")), process("y", "permanent", slow("y", "0"))))};
    rel = release("1", "[{name: a, vsn: \"1\"}]", apps, 1);
    start(rel);
    test_run_for(ev, 100);
    int tag;
    ck_assert_int_eq(supervisor_stop_all(s, on_done, &tag), 0);
    char *apps2[] = {app("b", "1", "", process("p", "permanent", serve("b/p")))};
    rel2 = release("2", "[{name: b, vsn: \"1\"}]", apps2, 1);
    start(rel2);
    test_run_for(ev, 800);
    ck_assert_msg(n_done == 1, "the stop run of the replaced release never called back");
    ck_assert(!supervisor_stopping(s));
    ck_assert_int_gt(pid_of("b", 0), 0);
}
END_TEST

/* ---- restarts (the exit handler) ------------------------------------------------ */

/* Exits with status the first time, serves when run again. */
static char *once(const char *name, int status)
{
    return xasprintf("if [ -e %s/ran-%s ]; then echo run2 > %s/second-%s; "
                     "trap 'exit 0' TERM; read x <&3; else touch %s/ran-%s; exit %d; fi",
                     root, name, root, name, root, name, status);
}

static const char *watched_app;
static size_t watched_k;

static bool restarted(void)
{
    return child(watched_app, watched_k)->restarts > 0 && proc_pid(child(watched_app, watched_k)->proc) > 0;
}

static bool exited_now(void)
{
    return proc_pid(child(watched_app, watched_k)->proc) == 0;
}

START_TEST(restart_permanent_after_any_exit)
{
    char *apps[] = {app("a", "1", "", process("p", "permanent", once("p", 0)))};
    rel = release("1", "[{name: a, vsn: \"1\"}]", apps, 1);
    start(rel);
    pid_t first = pid_of("a", 0);
    watched_app = "a";
    watched_k = 0;
    ck_assert(test_run_until(ev, restarted, 5000));
    ck_assert_int_ne(pid_of("a", 0), first);
    ck_assert_int_eq(child("a", 0)->restarts, 1);
    char *ex = events("process_exit"), *re = events("process_restart");
    ck_assert_str_eq(ex, "a/p\n");
    ck_assert_str_eq(re, "a/p\n");
    free(ex);
    free(re);
}
END_TEST

START_TEST(restart_transient_only_after_a_failure)
{
    char *apps[] = {app(
        "a", "1", "",
        cat2(process("clean", "transient", once("clean", 0)), process("failing", "transient", once("failing", 1))))};
    rel = release("1", "[{name: a, vsn: \"1\"}]", apps, 1);
    start(rel);
    watched_app = "a";
    watched_k = 1;
    ck_assert(test_run_until(ev, restarted, 5000));
    watched_k = 0;
    ck_assert(test_run_until(ev, exited_now, 5000));
    test_run_for(ev, 200);
    ck_assert_int_eq(pid_of("a", 0), 0);
    ck_assert_int_eq(child("a", 0)->restarts, 0);
    ck_assert_int_eq(child("a", 1)->restarts, 1);
    json_t *st = supervisor_status(s);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(st, 0), "state")), "exited");
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(st, 1), "state")), "running");
    json_decref(st);
}
END_TEST

START_TEST(restart_temporary_never)
{
    char *apps[] = {
        app("a", "1", "", cat2(process("t0", "temporary", once("t0", 0)), process("t1", "temporary", once("t1", 1))))};
    rel = release("1", "[{name: a, vsn: \"1\"}]", apps, 1);
    start(rel);
    watched_app = "a";
    watched_k = 0;
    ck_assert(test_run_until(ev, exited_now, 5000));
    watched_k = 1;
    ck_assert(test_run_until(ev, exited_now, 5000));
    test_run_for(ev, 200);
    ck_assert_int_eq(child("a", 0)->restarts, 0);
    ck_assert_int_eq(child("a", 1)->restarts, 0);
    ck_assert_int_eq(pid_of("a", 1), 0);
    char *re = events("process_restart");
    ck_assert_str_eq(re, "");
    free(re);
}
END_TEST

static bool nothing_runs_in(const App *a)
{
    for (size_t k = 0; k < a->n_children; k++)
        if (proc_pid(a->children[k]->proc))
            return false;
    return true;
}

static bool app_a_stopped(void)
{
    App *a = supervisor_find_app(s, "a");
    return a->stopped && nothing_runs_in(a);
}

START_TEST(restart_intensity_stops_the_application)
{
    /* p fails at once, every time; q serves beside it; b is another application. */
    char *apps[] = {
        app("a", "1", "", cat2(process("p", "permanent", xstrdup("exit 1")), process("q", "permanent", serve("a/q")))),
        app("b", "1", "", process("p", "permanent", serve("b/p")))};
    rel = release("1", "[{name: a, vsn: \"1\"}, {name: b, vsn: \"1\"}]", apps, 2);
    start(rel);
    ck_assert(test_run_until(ev, app_a_stopped, 10000));
    ck_assert_int_eq(child("a", 0)->restarts, SUPERVISOR_MAX_RESTARTS);
    char *ex = events("process_exit"), *lim = events("restart_limit");
    ck_assert_uint_eq(n_lines(ex), SUPERVISOR_MAX_RESTARTS + 1);
    ck_assert_str_eq(lim, "a\n");
    free(ex);
    free(lim);
    /* Recorded with its reason. */
    json_t *l = NULL;
    ck_assert_int_eq(history_list(hist, 1000, &l), 0);
    size_t i;
    json_t *e, *limit = NULL;
    json_array_foreach(json_object_get(l, "events"), i,
                       e) if (strcmp(json_string_value(json_object_get(e, "kind")), "restart_limit") == 0) limit = e;
    ck_assert_ptr_nonnull(limit);
    char *why = xasprintf("more than %d restarts in %d ms", SUPERVISOR_MAX_RESTARTS, SUPERVISOR_PERIOD_MS);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(limit, "detail"), "reason")), why);
    ck_assert_str_eq(json_string_value(json_object_get(limit, "release")), "1");
    free(why);
    json_decref(l);
    /* Its sibling was stopped with it; the other application runs on. */
    char *o = slurp("order");
    ck_assert_str_eq(o, "a/q\n");
    free(o);
    ck_assert_int_gt(pid_of("b", 0), 0);
    json_t *st = supervisor_status(s);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(st, 0), "state")), "stopped");
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(st, 1), "state")), "stopped");
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(st, 2), "state")), "running");
    json_decref(st);
    test_run_for(ev, 200);
    ck_assert_int_eq(child("a", 0)->restarts, SUPERVISOR_MAX_RESTARTS); /* no more */
}
END_TEST

/* ---- supervisor_stop ------------------------------------------------------------ */

START_TEST(stop_one_at_a_time_in_the_given_order)
{
    char *apps[] = {
        app("a", "1", "", cat2(process("x", "permanent", slow("x", "0.3")), process("y", "permanent", slow("y", "0")))),
        app("b", "1", "", process("z", "permanent", serve("b/z")))};
    rel = release("1", "[{name: a, vsn: \"1\"}, {name: b, vsn: \"1\"}]", apps, 2);
    start(rel);
    test_run_for(ev, 100); /* the traps are set */
    Child *v[] = {child("a", 0), child("a", 1)};
    int tag;
    ck_assert_int_eq(supervisor_stop(s, v, 2, on_done, &tag), 0);
    ck_assert(supervisor_stopping(s));
    ck_assert_int_eq(n_done, 0);
    ck_assert(test_run_until(ev, done_once, 5000));
    char *o = slurp("order");
    /* y got SIGTERM only once x had exited. */
    ck_assert_str_eq(o, "x term\nx exit\ny term\ny exit\n");
    free(o);
    ck_assert_ptr_eq(done_data, &tag);
    ck_assert_int_eq(pid_of("a", 0), 0);
    ck_assert_int_eq(pid_of("a", 1), 0);
    ck_assert_int_gt(pid_of("b", 0), 0); /* not asked */
    ck_assert(!supervisor_stopping(s));
    /* Stopped: no restarts, recorded as stops. */
    test_run_for(ev, 200);
    ck_assert_int_eq(pid_of("a", 0), 0);
    ck_assert_int_eq(child("a", 0)->restarts, 0);
    char *st = events("process_stop");
    ck_assert_str_eq(st, "a/x\na/y\n");
    free(st);
    ck_assert_int_eq(n_done, 1);
}
END_TEST

START_TEST(stop_calls_done_from_the_loop_even_with_nothing_to_stop)
{
    char *apps[] = {app("a", "1", "", process("p", "transient", xstrdup("exit 0")))};
    rel = release("1", "[{name: a, vsn: \"1\"}]", apps, 1);
    start(rel);
    watched_app = "a";
    watched_k = 0;
    ck_assert(test_run_until(ev, exited_now, 5000));
    Child *v[] = {child("a", 0)};
    ck_assert_int_eq(supervisor_stop(s, v, 1, on_done, NULL), 0);
    ck_assert_int_eq(n_done, 0); /* not from inside the call */
    ck_assert_int_ge(sd_event_run(ev, 100 * 1000ULL), 0);
    ck_assert_int_eq(n_done, 1);
    /* No children at all, and no done: fine too. */
    ck_assert_int_eq(supervisor_stop(s, NULL, 0, NULL, NULL), 0);
    ck_assert_int_eq(supervisor_stop(s, NULL, 0, on_done, NULL), 0);
    ck_assert_int_eq(n_done, 1);
    test_run_for(ev, 50);
    ck_assert_int_eq(n_done, 2);
    ck_assert(!supervisor_stopping(s));
}
END_TEST

START_TEST(stop_two_runs_at_once_each_calls_back)
{
    char *apps[] = {app(
        "a", "1", "", cat2(process("x", "permanent", slow("x", "0.4")), process("y", "permanent", slow("y", "0.4"))))};
    rel = release("1", "[{name: a, vsn: \"1\"}]", apps, 1);
    start(rel);
    test_run_for(ev, 100);
    int t1, t2;
    Child *v1[] = {child("a", 0)}, *v2[] = {child("a", 1)};
    ck_assert_int_eq(supervisor_stop(s, v1, 1, on_done, &t1), 0);
    ck_assert_int_eq(supervisor_stop(s, v2, 1, on_done, &t2), 0);
    long long t0 = mono_ms();
    long long until = t0 + 5000;
    while (n_done < 2 && mono_ms() < until)
        ck_assert_int_ge(sd_event_run(ev, 10 * 1000ULL), 0);
    ck_assert_int_eq(n_done, 2);
    /* Two runs go side by side: both in about one child's time (0.4 s), not two. */
    ck_assert_int_lt(mono_ms() - t0, 750);
    ck_assert(nothing_runs());
}
END_TEST

/* ---- supervisor_forget ------------------------------------------------------------ */

START_TEST(forget_calls_nobody_and_the_stop_goes_on)
{
    char *apps[] = {app("a", "1", "", process("x", "permanent", slow("x", "0.1")))};
    rel = release("1", "[{name: a, vsn: \"1\"}]", apps, 1);
    start(rel);
    test_run_for(ev, 100);
    int tag;
    Child *v[] = {child("a", 0)};
    ck_assert_int_eq(supervisor_stop(s, v, 1, on_done, &tag), 0);
    supervisor_forget(s, &tag);
    supervisor_forget(s, NULL); /* nobody's: no effect */
    ck_assert(test_run_until(ev, nothing_runs, 5000));
    test_run_for(ev, 100);
    ck_assert_int_eq(n_done, 0);
    ck_assert(!supervisor_stopping(s));
    char *o = slurp("order");
    ck_assert_str_eq(o, "x term\nx exit\n");
    free(o);
}
END_TEST

/* ---- supervisor_stop_all ---------------------------------------------------------- */

START_TEST(stop_all_in_reverse_start_order)
{
    char *apps[] = {
        app("b", "1", "[a]",
            cat2(process("p1", "permanent", serve("b/p1")), process("p2", "permanent", serve("b/p2")))),
        app("a", "1", "", cat2(process("p1", "permanent", serve("a/p1")), process("p2", "permanent", serve("a/p2"))))};
    rel = release("1", "[{name: b, vsn: \"1\"}, {name: a, vsn: \"1\"}]", apps, 2);
    start(rel);
    test_run_for(ev, 100);
    int tag;
    ck_assert_int_eq(supervisor_stop_all(s, on_done, &tag), 0);
    ck_assert_int_eq(n_done, 0);
    ck_assert(test_run_until(ev, done_once, 8000));
    ck_assert_ptr_eq(done_data, &tag);
    char *o = slurp("order");
    ck_assert_str_eq(o, "b/p2\nb/p1\na/p2\na/p1\n");
    free(o);
    ck_assert(nothing_runs());
    ck_assert(supervisor_find_app(s, "a")->stopped);
    ck_assert(supervisor_find_app(s, "b")->stopped);
    json_t *st = supervisor_status(s);
    for (size_t i = 0; i < 4; i++)
        ck_assert_str_eq(json_string_value(json_object_get(json_array_get(st, i), "state")), "stopped");
    json_decref(st);
    test_run_for(ev, 200);
    ck_assert(nothing_runs()); /* no restarts */
}
END_TEST

START_TEST(stop_all_with_nothing_running)
{
    ck_assert_int_eq(supervisor_stop_all(s, on_done, NULL), 0);
    ck_assert_int_eq(n_done, 0);
    ck_assert(test_run_until(ev, done_once, 1000));
}
END_TEST

/* ---- supervisor_start_child ---------------------------------------------------------- */

START_TEST(start_child_after_a_stop)
{
    char *apps[] = {app("a", "1", "", process("p", "permanent", serve("a/p")))};
    rel = release("1", "[{name: a, vsn: \"1\"}]", apps, 1);
    start(rel);
    pid_t first = pid_of("a", 0);
    Child *v[] = {child("a", 0)};
    ck_assert_int_eq(supervisor_stop(s, v, 1, on_done, NULL), 0);
    ck_assert(test_run_until(ev, done_once, 5000));
    ck_assert_int_eq(supervisor_start_child(s, child("a", 0)), 0);
    ck_assert_int_gt(pid_of("a", 0), 0);
    ck_assert_int_ne(pid_of("a", 0), first);
    ck_assert(!proc_stopping(child("a", 0)->proc));
    char *starts = events("process_start");
    ck_assert_str_eq(starts, "a/p\na/p\n");
    free(starts);
    /* Started again, it is supervised again: a crash restarts it. */
    pid_t second = pid_of("a", 0);
    ck_assert_int_eq(kill(second, SIGKILL), 0);
    watched_app = "a";
    watched_k = 0;
    ck_assert(test_run_until(ev, restarted, 5000));
    ck_assert_int_ne(pid_of("a", 0), second);
}
END_TEST

/* ---- supervisor_add_app, supervisor_remove_app ------------------------------------------ */

START_TEST(add_app_starts_it_last)
{
    char *apps[] = {app("a", "1", "", process("p", "permanent", serve("a/p")))};
    rel = release("1", "[{name: a, vsn: \"1\"}]", apps, 1);
    start(rel);
    char *apps2[] = {app("a", "1", "", process("p", "permanent", serve("a/p"))),
                     app("n", "1", "[a]", process("p", "permanent", serve("n/p")))};
    rel2 = release("2", "[{name: a, vsn: \"1\"}, {name: n, vsn: \"1\"}]", apps2, 2);
    ck_assert_int_eq(supervisor_add_app(s, appdefs_release_find(rel2, "n"), &d), 0);
    ck_assert_uint_eq(supervisor_n_apps(s), 2);
    ck_assert_str_eq(supervisor_app(s, 1)->name, "n");
    ck_assert_int_gt(pid_of("n", 0), 0);
    char *starts = events("process_start");
    ck_assert_str_eq(starts, "a/p\nn/p\n");
    free(starts);
}
END_TEST

START_TEST(add_app_that_cannot_start_is_not_added)
{
    char *apps[] = {app("a", "1", "", process("p", "permanent", serve("a/p")))};
    rel = release("1", "[{name: a, vsn: \"1\"}]", apps, 1);
    start(rel);
    int port = free_port();
    int held = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {
        .sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert_int_eq(bind(held, (struct sockaddr *)&sa, sizeof(sa)), 0);
    ck_assert_int_eq(listen(held, 1), 0);
    char *sock = xasprintf("    sockets:\n      - {name: http, listen: \"127.0.0.1:%d\"}\n", port);
    char *apps2[] = {app("n", "1", "", cat2(process("p", "permanent", serve("n/p")), sock))};
    rel2 = release("2", "[{name: n, vsn: \"1\"}]", apps2, 1);
    ck_assert_int_eq(supervisor_add_app(s, appdefs_release_find(rel2, "n"), &d), -EADDRINUSE);
    ck_assert_uint_eq(d.errors.n, 1);
    ck_assert_msg(strstr(d.errors.v[0], "n/p: cannot listen on"), "%s", d.errors.v[0]);
    ck_assert_uint_eq(supervisor_n_apps(s), 1);
    ck_assert_ptr_null(supervisor_find_app(s, "n"));
    ck_assert_int_gt(pid_of("a", 0), 0);
    close(held);
}
END_TEST

START_TEST(remove_app_forgets_it)
{
    char *apps[] = {app("a", "1", "", process("p", "permanent", serve("a/p"))),
                    app("b", "1", "", process("p", "permanent", serve("b/p"))),
                    app("c", "1", "", process("p", "permanent", serve("c/p")))};
    rel = release("1", "[{name: a, vsn: \"1\"}, {name: b, vsn: \"1\"}, {name: c, vsn: \"1\"}]", apps, 3);
    start(rel);
    App *b = supervisor_find_app(s, "b");
    ck_assert_ptr_nonnull(b);
    Child *v[] = {b->children[0]};
    ck_assert_int_eq(supervisor_stop(s, v, 1, on_done, NULL), 0);
    ck_assert(test_run_until(ev, done_once, 5000));
    supervisor_remove_app(s, b);
    ck_assert_uint_eq(supervisor_n_apps(s), 2);
    ck_assert_ptr_null(supervisor_find_app(s, "b"));
    ck_assert_str_eq(supervisor_app(s, 0)->name, "a");
    ck_assert_str_eq(supervisor_app(s, 1)->name, "c");
    json_t *st = supervisor_status(s);
    ck_assert_uint_eq(json_array_size(st), 2);
    json_decref(st);
}
END_TEST

/* ---- supervisor_adopt_release, supervisor_adopt_app, supervisor_def_in ------------------ */

/* Notes its version and working directory in ROOT/NAME-run, then serves. */
static char *versioned(const char *name, const char *v)
{
    return xasprintf("echo \"%s $(pwd)\" > %s/%s-run; trap 'exit 0' TERM; read x <&3", v, root, name);
}

static bool a_runs_v2(void)
{
    char *run = slurp("a-run");
    bool ok = strncmp(run, "v2 ", 3) == 0 && strchr(run, '\n');
    free(run);
    return ok;
}

START_TEST(adopt_release_takes_the_new_definitions_for_the_next_start)
{
    /* 1: b, then a (a needs b). 2: a alone, in a new version. */
    char *apps[] = {app("a", "1", "[b]", process("p", "permanent", versioned("a", "v1"))),
                    app("b", "1", "", process("p", "permanent", versioned("b", "v1")))};
    rel = release("1", "[{name: a, vsn: \"1\"}, {name: b, vsn: \"1\"}]", apps, 2);
    start(rel);
    ck_assert_str_eq(supervisor_app(s, 0)->name, "b");
    char *apps2[] = {app("a", "2", "", process("p", "permanent", versioned("a", "v2")))};
    rel2 = release("2", "[{name: a, vsn: \"2\"}]", apps2, 1);
    pid_t running = pid_of("a", 0);
    supervisor_adopt_release(s, rel2);
    /* Now in 2's order; b, which 2 lacks, last with its own definitions. */
    ck_assert_uint_eq(supervisor_n_apps(s), 2);
    ck_assert_str_eq(supervisor_app(s, 0)->name, "a");
    ck_assert_str_eq(supervisor_app(s, 1)->name, "b");
    ck_assert_str_eq(supervisor_find_app(s, "a")->vsn, "2");
    ck_assert_str_eq(supervisor_find_app(s, "b")->vsn, "1");
    ck_assert_ptr_eq(proc_def(child("a", 0)->proc), &rel2->apps[0].app->processes[0]);
    ck_assert_ptr_eq(proc_def(child("b", 0)->proc), &appdefs_release_find(rel, "b")->app->processes[0]);
    ck_assert_int_eq(pid_of("a", 0), running); /* nothing restarted */
    /* The next start runs 2's process in 2's directory. */
    Child *v[] = {child("a", 0)};
    ck_assert_int_eq(supervisor_stop(s, v, 1, on_done, NULL), 0);
    ck_assert(test_run_until(ev, done_once, 5000));
    ck_assert_int_eq(supervisor_start_child(s, child("a", 0)), 0);
    ck_assert(test_run_until(ev, a_runs_v2, 5000));
    char *run = slurp("a-run");
    char *want = xasprintf("v2 %s/lib/a-2\n", root);
    ck_assert_str_eq(run, want);
    free(want);
    free(run);
    json_t *st = supervisor_status(s);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(st, 0), "vsn")), "2");
    json_decref(st);
}
END_TEST

START_TEST(adopt_app_changes_one_application)
{
    char *apps[] = {app("a", "1", "", process("p", "permanent", versioned("a", "v1"))),
                    app("b", "1", "", process("p", "permanent", versioned("b", "v1")))};
    rel = release("1", "[{name: a, vsn: \"1\"}, {name: b, vsn: \"1\"}]", apps, 2);
    start(rel);
    char *apps2[] = {app("a", "2", "", process("p", "permanent", versioned("a", "v2"))),
                     app("b", "2", "", process("p", "permanent", versioned("b", "v2")))};
    rel2 = release("2", "[{name: a, vsn: \"2\"}, {name: b, vsn: \"2\"}]", apps2, 2);
    supervisor_adopt_app(s, supervisor_find_app(s, "b"), rel2);
    ck_assert_str_eq(supervisor_find_app(s, "a")->vsn, "1");
    ck_assert_str_eq(supervisor_find_app(s, "b")->vsn, "2");
    ck_assert_ptr_eq(proc_def(child("b", 0)->proc), &appdefs_release_find(rel2, "b")->app->processes[0]);
    ck_assert_ptr_eq(proc_def(child("a", 0)->proc), &appdefs_release_find(rel, "a")->app->processes[0]);
    /* An application rel lacks: nothing changes. */
    char *apps3[] = {app("z", "1", "", process("p", "permanent", versioned("z", "v1")))};
    ReleaseDef *rel3 = release("3", "[{name: z, vsn: \"1\"}]", apps3, 1);
    supervisor_adopt_app(s, supervisor_find_app(s, "a"), rel3);
    ck_assert_str_eq(supervisor_find_app(s, "a")->vsn, "1");
    ck_assert_ptr_eq(proc_def(child("a", 0)->proc), &appdefs_release_find(rel, "a")->app->processes[0]);
    release_def_free(rel3);
}
END_TEST

START_TEST(def_in_finds_the_same_process)
{
    char *apps[] = {
        app("a", "1", "", cat2(process("p", "permanent", serve("a/p")), process("q", "permanent", serve("a/q"))))};
    rel = release("1", "[{name: a, vsn: \"1\"}]", apps, 1);
    start(rel);
    /* 2: a without q; p second. */
    char *apps2[] = {
        app("a", "2", "", cat2(process("r", "permanent", serve("a/r")), process("p", "transient", serve("a/p"))))};
    rel2 = release("2", "[{name: a, vsn: \"2\"}]", apps2, 1);
    const AppDef *ad = NULL;
    const ProcessDef *pd = supervisor_def_in(rel2, child("a", 0), &ad);
    ck_assert_ptr_eq(pd, &rel2->apps[0].app->processes[1]);
    ck_assert_ptr_eq(ad, rel2->apps[0].app);
    ck_assert_int_eq(pd->restart, RESTART_TRANSIENT);
    ck_assert_ptr_eq(supervisor_def_in(rel2, child("a", 0), NULL), pd);
    ad = NULL;
    ck_assert_ptr_null(supervisor_def_in(rel2, child("a", 1), &ad));
    ck_assert_ptr_null(ad);
    char *apps3[] = {app("z", "1", "", process("p", "permanent", serve("z/p")))};
    ReleaseDef *rel3 = release("3", "[{name: z, vsn: \"1\"}]", apps3, 1);
    ck_assert_ptr_null(supervisor_def_in(rel3, child("a", 0), NULL));
    release_def_free(rel3);
}
END_TEST

/* ---- supervisor_status ------------------------------------------------------------ */

static bool hello_seen(void)
{
    return proc_modules(child("a", 0)->proc) != NULL;
}

START_TEST(status_shape)
{
    char *apps[] = {app("a", "1", "",
                        cat2(process("p", "permanent",
                                     xasprintf("echo '{\"event\":\"hello\",\"modules\":[{\"name\":\"m\","
                                               "\"version\":\"4\"}]}' >&3; trap 'exit 0' TERM; read x <&3")),
                             process("q", "temporary", xstrdup("exit 0"))))};
    rel = release("1", "[{name: a, vsn: \"1\"}]", apps, 1);
    start(rel);
    ck_assert(test_run_until(ev, hello_seen, 5000));
    watched_app = "a";
    watched_k = 1;
    ck_assert(test_run_until(ev, exited_now, 5000));
    json_t *st = supervisor_status(s);
    ck_assert_uint_eq(json_array_size(st), 2);
    json_t *p = json_array_get(st, 0), *q = json_array_get(st, 1);
    ck_assert_uint_eq(json_object_size(p), 8);
    /* Health from the probes the supervisor tells of starts and exits: a
     * process without checks is healthy while it runs; one that ended for
     * good is down, and says how it ended. */
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(p, "health"), "state")), "healthy");
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(q, "health"), "state")), "down");
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(q, "health"), "reason")), "exit 0");
    ck_assert_str_eq(json_string_value(json_object_get(p, "app")), "a");
    ck_assert_str_eq(json_string_value(json_object_get(p, "vsn")), "1");
    ck_assert_str_eq(json_string_value(json_object_get(p, "process")), "p");
    ck_assert_int_eq(json_integer_value(json_object_get(p, "pid")), pid_of("a", 0));
    ck_assert_str_eq(json_string_value(json_object_get(p, "state")), "running");
    ck_assert_int_eq(json_integer_value(json_object_get(p, "restarts")), 0);
    json_t *mods = json_object_get(p, "modules");
    ck_assert(json_is_array(mods));
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(mods, 0), "version")), "4");
    ck_assert_uint_eq(json_object_size(q), 8);
    ck_assert_str_eq(json_string_value(json_object_get(q, "process")), "q");
    ck_assert_int_eq(json_integer_value(json_object_get(q, "pid")), 0);
    ck_assert_str_eq(json_string_value(json_object_get(q, "state")), "exited");
    ck_assert(json_is_null(json_object_get(q, "modules")));
    json_decref(st);
    /* While its stop is under way: stopping. */
    Child *v[] = {child("a", 0)};
    ck_assert_int_eq(supervisor_stop(s, v, 1, on_done, NULL), 0);
    st = supervisor_status(s);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(st, 0), "state")), "stopping");
    json_decref(st);
    ck_assert(test_run_until(ev, done_once, 5000));
}
END_TEST

static Suite *supervisor_suite(void)
{
    Suite *su = suite_create("supervisor");
    struct {
        const char *name;
        const TTest *tests[8];
    } cases[] = {
        {"supervisor_new", {new_is_empty}},
        {"supervisor_start_release",
         {start_release_dependencies_first, start_release_failure_kills_what_it_started,
          start_release_again_replaces_the_running_one, start_release_during_a_stop_ends_that_stop}},
        {"restarts",
         {restart_permanent_after_any_exit, restart_transient_only_after_a_failure, restart_temporary_never,
          restart_intensity_stops_the_application}},
        {"supervisor_stop",
         {stop_one_at_a_time_in_the_given_order, stop_calls_done_from_the_loop_even_with_nothing_to_stop,
          stop_two_runs_at_once_each_calls_back}},
        {"supervisor_forget", {forget_calls_nobody_and_the_stop_goes_on}},
        {"supervisor_stop_all", {stop_all_in_reverse_start_order, stop_all_with_nothing_running}},
        {"supervisor_start_child", {start_child_after_a_stop}},
        {"supervisor_add_app", {add_app_starts_it_last, add_app_that_cannot_start_is_not_added}},
        {"supervisor_remove_app", {remove_app_forgets_it}},
        {"supervisor_adopt_release", {adopt_release_takes_the_new_definitions_for_the_next_start}},
        {"supervisor_adopt_app", {adopt_app_changes_one_application}},
        {"supervisor_def_in", {def_in_finds_the_same_process}},
        {"supervisor_status", {status_shape}},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        TCase *tc = tcase_create(cases[i].name);
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 30);
        for (size_t k = 0; k < sizeof(cases[i].tests) / sizeof(cases[i].tests[0]) && cases[i].tests[k]; k++)
            tcase_add_test(tc, cases[i].tests[k]);
        suite_add_tcase(su, tc);
    }
    return su;
}

int main(void)
{
    return test_run_daemon_suite(supervisor_suite());
}
