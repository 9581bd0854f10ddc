/* health: probes against real commands, a real TCP listener and a real
 * HTTP server (a thread of the test), the runtime callback, and the gate's
 * verdicts, on a real sd_event loop with bounded waits. */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "health.h"
#include "testlib.h"
#include "testloop.h"

static char dir[] = "/tmp/reld-test-health-XXXXXX";
static sd_event *ev;
static AppDef *app;
static HealthProbe *probe;
static Diag d;

/* ---- the loop --------------------------------------------------------- */

typedef TestCond Cond;

/* ---- an HTTP server on a thread ----------------------------------------- */

typedef enum Mode { HTTP_200, HTTP_503, HTTP_GARBAGE, HTTP_SLOW, HTTP_CLOSE } Mode;

static struct {
    int fd, port;
    pthread_t thread;
    volatile Mode mode;
    volatile int requests;
    volatile bool stop;
    char last_request[1024];
    pthread_mutex_t lock;
} srv;

static void *serve(void *unused)
{
    (void)unused;
    for (;;) {
        int c = accept(srv.fd, NULL, NULL);
        if (c < 0)
            return NULL; /* shut down */
        char req[1024];
        size_t n = 0;
        while (n < sizeof(req) - 1) {
            ssize_t k = read(c, req + n, sizeof(req) - 1 - n);
            if (k <= 0)
                break;
            n += (size_t)k;
            req[n] = 0;
            if (strstr(req, "\r\n\r\n"))
                break;
        }
        req[n] = 0;
        pthread_mutex_lock(&srv.lock);
        snprintf(srv.last_request, sizeof(srv.last_request), "%s", req);
        srv.requests++;
        pthread_mutex_unlock(&srv.lock);
        static const char *const answers[] = {
            [HTTP_200] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            [HTTP_503] = "HTTP/1.0 503 Service Unavailable\r\n\r\n",
            [HTTP_GARBAGE] = "garbage\x01 and more\r\n\r\n",
        };
        Mode m = srv.mode;
        if (m == HTTP_SLOW) /* holds the connection, answers nothing */
            while (!srv.stop)
                (void)poll(NULL, 0, 20);
        else if (m != HTTP_CLOSE)
            (void)!write(c, answers[m], strlen(answers[m]));
        close(c);
    }
}

static int listener(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    ck_assert_int_eq(listen(fd, 16), 0);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    *port = ntohs(a.sin_port);
    return fd;
}

static void server_start(Mode m)
{
    srv.mode = m;
    srv.stop = false;
    srv.requests = 0;
    srv.fd = listener(&srv.port);
    pthread_mutex_init(&srv.lock, NULL);
    ck_assert_int_eq(pthread_create(&srv.thread, NULL, serve, NULL), 0);
}

static void server_stop(void)
{
    if (srv.fd <= 0)
        return;
    srv.stop = true;
    (void)shutdown(srv.fd, SHUT_RDWR); /* wakes accept() */
    pthread_join(srv.thread, NULL);
    close(srv.fd);
    pthread_mutex_destroy(&srv.lock);
    srv.fd = 0;
}

static int server_requests(void)
{
    pthread_mutex_lock(&srv.lock);
    int n = srv.requests;
    pthread_mutex_unlock(&srv.lock);
    return n;
}

/* ---- probes ------------------------------------------------------------- */

static int n_asks, n_cancels, n_changed, ask_r;
static HealthState changed_old;

static int on_ask(HealthProbe *p, void *userdata)
{
    ck_assert_ptr_eq(p, probe);
    ck_assert_ptr_eq(userdata, &n_asks);
    n_asks++;
    return ask_r;
}

static void on_cancel(HealthProbe *p, void *userdata)
{
    ck_assert_ptr_eq(p, probe);
    n_cancels++;
}

static void on_changed(HealthProbe *p, HealthState old, void *userdata)
{
    n_changed++;
    changed_old = old;
}

static const HealthProbeOps ops = {.runtime_ask = on_ask, .runtime_cancel = on_cancel, .changed = on_changed};

/* The process definition: health: as written in checks (lines indented 6). */
static const ProcessDef *define(const char *checks)
{
    app = appdef_free(app);
    char *y = xasprintf("name: a\nvsn: \"1\"\nprocesses:\n  - name: p\n    exec: bin/p\n    health:\n%s", checks);
    int r = appdefs_parse_app("app.yaml", y, strlen(y), &app, &d);
    ck_assert_msg(r == 0, "%s", test_diag_text(&d));
    free(y);
    return &app->processes[0];
}

static HealthProbe *make_probe(const char *checks)
{
    const ProcessDef *def = checks ? define(checks) : NULL;
    if (!def) { /* no checks */
        static const char y[] = "name: a\nvsn: \"1\"\nprocesses: [{name: p, exec: bin/p}]\n";
        app = appdef_free(app);
        ck_assert_int_eq(appdefs_parse_app("app.yaml", y, strlen(y), &app, &d), 0);
        def = &app->processes[0];
    }
    ck_assert_int_eq(health_probe_new(ev, "a/p", def, dir, &ops, &n_asks, &probe), 0);
    return probe;
}

/* A probe of one check, started (pid 4242: nothing looks at it). */
static HealthProbe *start_probe(const char *checks)
{
    make_probe(checks);
    health_probe_started(probe, 4242);
    return probe;
}

static bool has_result(void)
{
    return health_probe_state(probe) == HEALTH_HEALTHY || health_probe_state(probe) == HEALTH_UNHEALTHY;
}

static const char *reason(void)
{
    const char *r = health_probe_reason(probe);
    return r ? r : "(none)";
}

/* The reason of the first check in the status (for passing ones too). */
static char *check_reason(void)
{
    json_t *s = health_probe_status(probe);
    const char *r = json_string_value(json_object_get(json_array_get(json_object_get(s, "checks"), 0), "reason"));
    char *out = xstrdup(r ? r : "(none)");
    json_decref(s);
    return out;
}

#define ck_assert_reason(want)                                                                                         \
    do {                                                                                                               \
        char *_r = check_reason();                                                                                     \
        ck_assert_msg(strstr(_r, (want)) != NULL, "expected '%s' in '%s'", (want), _r);                                \
        free(_r);                                                                                                      \
    } while (0)

static void write_script(const char *name, const char *body)
{
    char *path = xasprintf("%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fprintf(f, "#!/bin/sh\n%s\n", body);
    fclose(f);
    ck_assert_int_eq(chmod(path, 0755), 0);
    free(path);
}

/* The pid a script wrote to file name (in dir), or 0. */
static pid_t read_pid(const char *name)
{
    char *path = xasprintf("%s/%s", dir, name);
    FILE *f = fopen(path, "r");
    free(path);
    int pid = 0;
    if (f) {
        if (fscanf(f, "%d", &pid) != 1)
            pid = 0;
        fclose(f);
    }
    return pid;
}

/* Gone, or a zombie that is no longer ours to reap (its parent died). */
static bool pid_dead(pid_t pid)
{
    char path[64], state = 0;
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return true;
    int ok = fscanf(f, "%*d %*s %c", &state);
    fclose(f);
    return ok == 1 && state == 'Z';
}

static pid_t watched;
static bool watched_dead(void)
{
    return pid_dead(watched);
}

static void setup(void)
{
    strcpy(dir, "/tmp/reld-test-health-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    ck_assert_int_ge(sd_event_new(&ev), 0);
    n_asks = n_cancels = n_changed = ask_r = 0;
    d = (Diag){0};
}

static void teardown(void)
{
    probe = health_probe_free(probe);
    server_stop();
    app = appdef_free(app);
    diag_clear(&d);
    ev = sd_event_unref(ev);
    char *cmd = xasprintf("rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
    free(cmd);
}

/* ---- exec ----------------------------------------------------------------- */

START_TEST(exec_true_is_healthy)
{
    start_probe("      exec: /bin/true\n");
    ck_assert_int_eq(health_probe_state(probe), HEALTH_STARTING);
    ck_assert_msg(test_run_until(ev, has_result, 10000), "no result");
    ck_assert_int_eq(health_probe_state(probe), HEALTH_HEALTHY);
    ck_assert_ptr_null(health_probe_reason(probe));
    ck_assert_reason("exec /bin/true: exit 0");
    ck_assert_int_eq(n_changed, 1);
    ck_assert_int_eq(changed_old, HEALTH_STARTING);
}
END_TEST

START_TEST(exec_false_is_unhealthy)
{
    start_probe("      exec: /bin/false\n");
    ck_assert(test_run_until(ev, has_result, 10000));
    ck_assert_int_eq(health_probe_state(probe), HEALTH_UNHEALTHY);
    ck_assert_str_eq(reason(), "exec /bin/false: exit 1");
}
END_TEST

/* Relative to the application's directory, run there, with the output's
 * last line in the reason and the last lines in the status. */
START_TEST(exec_script_says_why)
{
    write_script("check", "test -f ./here || exit 9\necho \"$RELD_PROCESS $RELD_PID $1\"\n"
                          "echo first line\necho 'not ready: db down' >&2\nexit 1");
    char *path = xasprintf("%s/here", dir);
    FILE *f = fopen(path, "w");
    fclose(f);
    free(path);
    start_probe("      exec: [check, --quick]\n");
    ck_assert(test_run_until(ev, has_result, 10000));
    ck_assert_str_eq(reason(), "exec check: exit 1: not ready: db down");
    json_t *s = health_probe_status(probe);
    const char *out = json_string_value(json_object_get(json_array_get(json_object_get(s, "checks"), 0), "output"));
    ck_assert_str_eq(out, "a/p 4242 --quick\nfirst line\nnot ready: db down");
    ck_assert_str_eq(json_string_value(json_object_get(s, "state")), "unhealthy");
    ck_assert_str_eq(json_string_value(json_object_get(s, "reason")), "exec check: exit 1: not ready: db down");
    ck_assert_int_eq(json_integer_value(json_object_get(s, "restarts")), 0);
    ck_assert_ptr_nonnull(json_string_value(json_object_get(s, "since")));
    json_decref(s);
}
END_TEST

START_TEST(exec_output_is_bounded)
{
    write_script("check", "i=0; while [ $i -lt 3000 ]; do echo \"line $i of a long output\"; i=$((i+1)); done; "
                          "printf 'last\\001 line'; exit 3");
    start_probe("      exec: [check]\n");
    ck_assert(test_run_until(ev, has_result, 20000));
    ck_assert_str_eq(reason(), "exec check: exit 3: last? line");
    json_t *s = health_probe_status(probe);
    const char *out = json_string_value(json_object_get(json_array_get(json_object_get(s, "checks"), 0), "output"));
    ck_assert_str_eq(out, "line 2996 of a long output\nline 2997 of a long output\nline 2998 of a long output\n"
                          "line 2999 of a long output\nlast? line");
    json_decref(s);
}
END_TEST

START_TEST(exec_missing_program)
{
    start_probe("      exec: [bin/nothing]\n");
    ck_assert(test_run_until(ev, has_result, 10000));
    ck_assert_str_eq(reason(), "exec bin/nothing: cannot run: no such file or directory");
}
END_TEST

/* A check runs as its process does (proc_identity()); a user that cannot
 * be resolved fails the run, quoting the definition's line (the users e2e
 * test checks the ids a check runs with). */
START_TEST(exec_unknown_user)
{
    write_script("check", "exit 0");
    start_probe("      exec: [check]\n    user: no-such-user-reld\n");
    ck_assert(test_run_until(ev, has_result, 10000));
    ck_assert_str_eq(reason(), "exec check: cannot run as its process: app.yaml:8:11: process p: no such user "
                               "'no-such-user-reld'");
}
END_TEST

/* At its timeout the check's process group is killed: the script and what
 * it started. */
START_TEST(exec_timeout_kills_the_check)
{
    write_script("slow", "sleep 60 & echo $! > bg.pid; echo $$ > fg.pid; echo waiting; sleep 60");
    start_probe("      exec: [slow]\n      timeout_ms: 300\n");
    ck_assert(test_run_until(ev, has_result, 20000));
    ck_assert_str_eq(reason(), "exec slow: timed out after 300 ms: waiting");
    watched = read_pid("fg.pid");
    ck_assert_int_gt(watched, 0);
    ck_assert(pid_dead(watched)); /* reaped by the probe */
    watched = read_pid("bg.pid");
    ck_assert_int_gt(watched, 0);
    ck_assert_msg(test_run_until(ev, watched_dead, 10000), "the check's child %d survived", (int)watched);
}
END_TEST

/* The process exits while its check runs: the check is killed and reaped
 * at once, the state is down with how it ended. */
START_TEST(exec_exit_of_the_process_kills_the_check)
{
    write_script("slow", "echo $$ > fg.pid; exec sleep 60");
    start_probe("      exec: [slow]\n      timeout_ms: 60000\n");
    watched = 0;
    for (long long end = mono_ms() + 10000; !(watched = read_pid("fg.pid")) && mono_ms() < end;)
        test_run_for(ev, 20);
    ck_assert_int_gt(watched, 0);
    health_probe_exited(probe, "exit 3", false);
    ck_assert(pid_dead(watched));
    ck_assert_int_eq(health_probe_state(probe), HEALTH_DOWN);
    ck_assert_str_eq(reason(), "exit 3");
    ck_assert_int_eq(n_changed, 0); /* the owner knows */
}
END_TEST

START_TEST(exec_runs_again_after_its_interval)
{
    write_script("count", "echo x >> runs");
    start_probe("      exec: [count]\n      interval_ms: 100\n");
    bool three = false;
    for (long long end = mono_ms() + 20000; !three && mono_ms() < end;) {
        test_run_for(ev, 50);
        char *path = xasprintf("%s/runs", dir);
        struct stat st;
        three = stat(path, &st) == 0 && st.st_size >= 6;
        free(path);
    }
    ck_assert_msg(three, "fewer than 3 runs");
    ck_assert_int_eq(health_probe_state(probe), HEALTH_HEALTHY);
}
END_TEST

/* ---- tcp ------------------------------------------------------------------- */

START_TEST(tcp_connects)
{
    int port, fd = listener(&port);
    char *c = xasprintf("      tcp: \"127.0.0.1:%d\"\n", port);
    start_probe(c);
    ck_assert(test_run_until(ev, has_result, 10000));
    ck_assert_int_eq(health_probe_state(probe), HEALTH_HEALTHY);
    char *want = xasprintf("tcp 127.0.0.1:%d: connected", port);
    ck_assert_reason(want);
    free(want);
    free(c);
    close(fd);
}
END_TEST

START_TEST(tcp_refused)
{
    int port, fd = listener(&port);
    close(fd); /* nobody listens there now */
    char *c = xasprintf("      tcp: \"127.0.0.1:%d\"\n", port);
    start_probe(c);
    ck_assert(test_run_until(ev, has_result, 10000));
    ck_assert_int_eq(health_probe_state(probe), HEALTH_UNHEALTHY);
    char *want = xasprintf("tcp 127.0.0.1:%d: connection refused", port);
    ck_assert_str_eq(reason(), want);
    free(want);
    free(c);
}
END_TEST

/* A listener whose accept queue is full drops new connections' SYNs: the
 * connect hangs until the check's timeout. */
START_TEST(tcp_times_out)
{
    int port, fd = listener(&port), fill[8], n_fill = 0;
    ck_assert_int_eq(listen(fd, 0), 0);
    struct sockaddr_in a = {
        .sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    /* Fill the queue: connects that complete, never accepted, until one hangs. */
    for (; n_fill < 8; n_fill++) {
        fill[n_fill] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(fill[n_fill], 0);
        if (connect(fill[n_fill], (struct sockaddr *)&a, sizeof(a)) < 0)
            ck_assert_int_eq(errno, EINPROGRESS);
        struct pollfd pf = {.fd = fill[n_fill], .events = POLLOUT};
        if (poll(&pf, 1, 500) == 0) { /* this one hangs: the queue is full */
            n_fill++;
            break;
        }
    }
    char *c = xasprintf("      tcp: \"127.0.0.1:%d\"\n      timeout_ms: 200\n", port);
    start_probe(c);
    ck_assert(test_run_until(ev, has_result, 10000));
    char *want = xasprintf("tcp 127.0.0.1:%d: timed out after 200 ms", port);
    ck_assert_str_eq(reason(), want);
    free(want);
    free(c);
    for (int i = 0; i < n_fill; i++)
        close(fill[i]);
    close(fd);
}
END_TEST

/* ---- http ------------------------------------------------------------------ */

static void http_probe(Mode m, const char *extra)
{
    server_start(m);
    char *c =
        xasprintf("      http: {url: \"http://127.0.0.1:%d/health?x=1\"%s}\n      timeout_ms: 300\n", srv.port, extra);
    start_probe(c);
    free(c);
    ck_assert(test_run_until(ev, has_result, 10000));
}

START_TEST(http_200_is_healthy)
{
    http_probe(HTTP_200, "");
    ck_assert_int_eq(health_probe_state(probe), HEALTH_HEALTHY);
    ck_assert_reason(": status 200");
    pthread_mutex_lock(&srv.lock);
    char *want = xasprintf("GET /health?x=1 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n", srv.port);
    ck_assert_msg(strncmp(srv.last_request, want, strlen(want)) == 0, "%s", srv.last_request);
    ck_assert_ptr_nonnull(strstr(srv.last_request, "\r\nConnection: close\r\n"));
    pthread_mutex_unlock(&srv.lock);
    free(want);
}
END_TEST

START_TEST(http_503_is_unhealthy)
{
    http_probe(HTTP_503, "");
    char *want = xasprintf("http://127.0.0.1:%d/health?x=1: status 503", srv.port);
    ck_assert_str_eq(reason(), want);
    free(want);
}
END_TEST

START_TEST(http_expected_status)
{
    http_probe(HTTP_200, ", status: 204");
    ck_assert_int_eq(health_probe_state(probe), HEALTH_UNHEALTHY);
    ck_assert_msg(strstr(reason(), ": status 200, not 204"), "%s", reason());
}
END_TEST

START_TEST(http_garbage)
{
    http_probe(HTTP_GARBAGE, "");
    ck_assert_msg(strstr(reason(), ": no HTTP status line in the answer: 'garbage? and more?'"), "%s", reason());
}
END_TEST

START_TEST(http_closed_without_answer)
{
    http_probe(HTTP_CLOSE, "");
    ck_assert_msg(strstr(reason(), ": connection closed without an answer"), "%s", reason());
}
END_TEST

START_TEST(http_slow_times_out)
{
    http_probe(HTTP_SLOW, "");
    char *want = xasprintf("http://127.0.0.1:%d/health?x=1: timed out after 300 ms", srv.port);
    ck_assert_str_eq(reason(), want);
    free(want);
}
END_TEST

/* ---- runtime --------------------------------------------------------------- */

static bool asked(void)
{
    return n_asks > 0;
}

START_TEST(runtime_answers)
{
    start_probe("      runtime: true\n      interval_ms: 100\n");
    ck_assert(test_run_until(ev, asked, 10000));
    ck_assert_int_eq(health_probe_state(probe), HEALTH_STARTING);
    json_t *rep = json_pack("{s:b, s:b, s:s}", "ok", 1, "healthy", 1, "message", "fine");
    health_probe_runtime_reply(probe, rep, 0);
    json_decref(rep);
    ck_assert_int_eq(health_probe_state(probe), HEALTH_HEALTHY);
    ck_assert_reason("runtime: healthy: fine");
    /* The next run: unhealthy, with the module's message. */
    n_asks = 0;
    ck_assert(test_run_until(ev, asked, 10000));
    rep = json_pack("{s:b, s:b, s:s}", "ok", 1, "healthy", 0, "message", "db down\n");
    health_probe_runtime_reply(probe, rep, 0);
    json_decref(rep);
    ck_assert_str_eq(reason(), "runtime: db down?");
    /* Refused, then no answer. */
    n_asks = 0;
    ck_assert(test_run_until(ev, asked, 10000));
    rep = json_pack("{s:b, s:s}", "ok", 0, "message", "unknown command");
    health_probe_runtime_reply(probe, rep, 0);
    json_decref(rep);
    ck_assert_str_eq(reason(), "runtime: the health command was refused: unknown command");
    n_asks = 0;
    ck_assert(test_run_until(ev, asked, 10000));
    health_probe_runtime_reply(probe, NULL, -ECONNRESET);
    ck_assert_str_eq(reason(), "runtime: no answer: connection reset by peer");
    n_asks = 0;
    ck_assert(test_run_until(ev, asked, 10000));
    rep = json_pack("{s:b}", "ok", 1);
    health_probe_runtime_reply(probe, rep, 0);
    json_decref(rep);
    ck_assert_str_eq(reason(), "runtime: its answer to the health command has no 'healthy'");
    ck_assert_int_eq(n_cancels, 0);
}
END_TEST

/* Not answered in time: a failure, the call is cancelled, and an answer
 * that comes later is ignored. */
START_TEST(runtime_timeout_cancels)
{
    start_probe("      runtime: true\n      timeout_ms: 100\n      interval_ms: 60000\n");
    ck_assert(test_run_until(ev, has_result, 10000));
    ck_assert_str_eq(reason(), "runtime: timed out after 100 ms");
    ck_assert_int_eq(n_cancels, 1);
    health_probe_runtime_answer(probe, 0, true, "late");
    ck_assert_int_eq(health_probe_state(probe), HEALTH_UNHEALTHY);
}
END_TEST

START_TEST(runtime_busy_skips_a_run)
{
    ask_r = -EBUSY;
    start_probe("      runtime: true\n      interval_ms: 100\n");
    ck_assert(test_run_until(ev, asked, 10000));
    test_run_for(ev, 50);
    ck_assert_int_eq(health_probe_state(probe), HEALTH_STARTING);
    ask_r = -EIO;
    n_asks = 0;
    ck_assert(test_run_until(ev, has_result, 10000));
    ck_assert_str_eq(reason(), "runtime: cannot ask: input/output error");
}
END_TEST

START_TEST(runtime_without_ask)
{
    make_probe("      runtime: true\n");
    health_probe_free(probe);
    static const HealthProbeOps none = {0};
    ck_assert_int_eq(health_probe_new(ev, "a/p", &app->processes[0], dir, &none, NULL, &probe), 0);
    health_probe_started(probe, 1);
    ck_assert(test_run_until(ev, has_result, 10000));
    ck_assert_str_eq(reason(), "runtime: no way to ask the process");
}
END_TEST

/* The process exits while its runtime is asked: the call is cancelled. */
START_TEST(runtime_exit_cancels)
{
    start_probe("      runtime: true\n");
    ck_assert(test_run_until(ev, asked, 10000));
    health_probe_exited(probe, NULL, false);
    ck_assert_int_eq(n_cancels, 1);
    health_probe_runtime_answer(probe, 0, true, NULL); /* ignored */
    ck_assert_int_eq(health_probe_state(probe), HEALTH_DOWN);
}
END_TEST

/* ---- the probe's life ------------------------------------------------------ */

START_TEST(probe_without_checks)
{
    make_probe(NULL);
    ck_assert_int_eq(health_probe_state(probe), HEALTH_DOWN);
    health_probe_started(probe, 1);
    ck_assert_int_eq(health_probe_state(probe), HEALTH_HEALTHY);
    health_probe_exited(probe, "killed by signal 9", false);
    ck_assert_int_eq(health_probe_state(probe), HEALTH_DOWN);
    ck_assert_str_eq(reason(), "killed by signal 9");
    health_probe_started(probe, 2);
    json_t *s = health_probe_status(probe);
    ck_assert_int_eq(json_integer_value(json_object_get(s, "restarts")), 1);
    ck_assert_int_eq(json_array_size(json_object_get(s, "checks")), 0);
    json_decref(s);
    ck_assert_str_eq(health_state_name(HEALTH_UNHEALTHY), "unhealthy");
    ck_assert_str_eq(health_probe_label(probe), "a/p");
}
END_TEST

/* A start forgets the results of the run before. */
START_TEST(probe_restart_forgets_results)
{
    start_probe("      exec: /bin/false\n");
    ck_assert(test_run_until(ev, has_result, 10000));
    health_probe_exited(probe, NULL, false);
    health_probe_started(probe, 2);
    ck_assert_int_eq(health_probe_state(probe), HEALTH_STARTING);
    json_t *s = health_probe_status(probe);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(json_object_get(s, "checks"), 0), "result")),
                     "none");
    json_decref(s);
}
END_TEST

/* A new definition takes effect at once for a running process. */
START_TEST(probe_new_definition)
{
    start_probe("      exec: /bin/false\n");
    ck_assert(test_run_until(ev, has_result, 10000));
    AppDef *old = app;
    app = NULL;
    const ProcessDef *def = define("      exec: /bin/true\n");
    health_probe_set_definition(probe, def, dir);
    appdef_free(old);
    ck_assert(test_run_until(ev, has_result, 10000));
    ck_assert_int_eq(health_probe_state(probe), HEALTH_HEALTHY);
}
END_TEST

START_TEST(probe_bad_arguments)
{
    make_probe(NULL);
    HealthProbe *q = NULL;
    ck_assert_int_eq(health_probe_new(NULL, "a/p", &app->processes[0], dir, NULL, NULL, &q), -EINVAL);
    ck_assert_int_eq(health_probe_new(ev, "a/p", NULL, dir, NULL, NULL, &q), -EINVAL);
    ck_assert_ptr_null(q);
    ck_assert_ptr_null(health_probe_free(NULL));
}
END_TEST

/* ---- the gate -------------------------------------------------------------- */

static int n_verdicts;
static bool verdict_healthy;
static char verdict_reason[2048];
static long long verdict_ms;
static HealthGate *gate;

static void on_verdict(HealthGate *g, bool healthy, const char *why, void *userdata)
{
    ck_assert_ptr_eq(g, gate);
    ck_assert_ptr_eq(userdata, &n_verdicts);
    n_verdicts++;
    verdict_healthy = healthy;
    snprintf(verdict_reason, sizeof(verdict_reason), "%s", why);
    verdict_ms = mono_ms();
}

static bool decided(void)
{
    return n_verdicts > 0;
}

static void gate_setup(void)
{
    setup();
    n_verdicts = 0;
    gate = NULL;
    verdict_reason[0] = 0;
}

static void gate_teardown(void)
{
    gate = health_gate_free(gate);
    teardown();
}

static long long new_gate(HealthProbe *const *members, size_t n, long min_ms, long timeout_ms)
{
    long long at = mono_ms();
    ck_assert_int_eq(health_gate_new(ev, members, n, min_ms, timeout_ms, on_verdict, &n_verdicts, &gate), 0);
    return at;
}

START_TEST(gate_healthy_after_the_window)
{
    server_start(HTTP_200);
    char *c = xasprintf("      http: \"http://127.0.0.1:%d/\"\n      interval_ms: 100\n", srv.port);
    start_probe(c);
    free(c);
    long long at = new_gate(&probe, 1, 500, 30000);
    ck_assert_int_eq(n_verdicts, 0);
    ck_assert(test_run_until(ev, decided, 30000));
    ck_assert(verdict_healthy);
    ck_assert_str_eq(verdict_reason, "");
    ck_assert_int_ge(verdict_ms - at, 500);
    ck_assert_int_ge(server_requests(), 2); /* it kept checking during the window */
    ck_assert(health_gate_decided(gate));
    test_run_for(ev, 200);
    ck_assert_int_eq(n_verdicts, 1);
}
END_TEST

/* Results of runs before the gate do not count: it asks for new ones. */
START_TEST(gate_asks_for_fresh_results)
{
    server_start(HTTP_200);
    char *c = xasprintf("      http: \"http://127.0.0.1:%d/\"\n      interval_ms: 3600000\n", srv.port);
    start_probe(c);
    free(c);
    ck_assert(test_run_until(ev, has_result, 10000));
    int before = server_requests();
    new_gate(&probe, 1, 0, 30000);
    ck_assert(test_run_until(ev, decided, 30000));
    ck_assert(verdict_healthy);
    ck_assert_int_eq(server_requests(), before + 1);
}
END_TEST

static bool timer_hit;
static int on_restart_timer(sd_event_source *s, uint64_t usec, void *userdata)
{
    health_probe_exited(probe, "exit 1", false);
    health_probe_started(probe, 5);
    *(long long *)userdata = mono_ms();
    timer_hit = true;
    return 0;
}

/* A restart during the window begins it again. */
START_TEST(gate_restart_resets_the_window)
{
    make_probe(NULL);
    health_probe_started(probe, 1);
    long long restarted = 0;
    sd_event_source *t = NULL;
    timer_hit = false;
    ck_assert_int_ge(
        sd_event_add_time_relative(ev, &t, CLOCK_MONOTONIC, 300 * 1000ULL, 1000, on_restart_timer, &restarted), 0);
    new_gate(&probe, 1, 600, 30000);
    ck_assert(test_run_until(ev, decided, 30000));
    ck_assert(timer_hit);
    ck_assert(verdict_healthy);
    ck_assert_int_ge(verdict_ms - restarted, 600);
    sd_event_source_unref(t);
}
END_TEST

/* No verdict before the loop runs, even when it is known at once. */
START_TEST(gate_verdict_from_the_loop)
{
    new_gate(NULL, 0, 0, 1000);
    ck_assert_int_eq(n_verdicts, 0);
    ck_assert(health_gate_decided(gate));
    ck_assert(test_run_until(ev, decided, 10000));
    ck_assert(verdict_healthy);
}
END_TEST

/* Unhealthy until the timeout: one verdict, with the process and its last
 * result. */
START_TEST(gate_timeout_fails_once_with_the_reason)
{
    server_start(HTTP_503);
    char *c = xasprintf("      http: \"http://127.0.0.1:%d/ready\"\n      interval_ms: 100\n", srv.port);
    start_probe(c);
    free(c);
    long long at = new_gate(&probe, 1, 200, 800);
    json_t *st = health_gate_status(gate);
    ck_assert_int_eq(json_integer_value(json_object_get(st, "of")), 1);
    ck_assert_int_eq(json_integer_value(json_object_get(st, "healthy")), 0);
    json_decref(st);
    ck_assert(test_run_until(ev, decided, 30000));
    ck_assert(!verdict_healthy);
    ck_assert_int_ge(verdict_ms - at, 800);
    char *want = xasprintf("not healthy within 800 ms: a/p: http://127.0.0.1:%d/ready: status 503", srv.port);
    ck_assert_str_eq(verdict_reason, want);
    free(want);
    test_run_for(ev, 300);
    ck_assert_int_eq(n_verdicts, 1);
}
END_TEST

/* A process that is not running, and one that never becomes healthy long
 * enough, are named with what they lack. */
START_TEST(gate_reasons_name_every_member)
{
    HealthProbe *members[2];
    make_probe(NULL);
    members[0] = probe;
    health_probe_started(probe, 1);
    health_probe_exited(probe, "exit 127: libfoo.so: cannot open shared object file", false);
    ck_assert_int_eq(health_probe_new(ev, "a/q", &app->processes[0], dir, NULL, NULL, &members[1]), 0);
    health_probe_started(members[1], 2);
    new_gate(members, 2, 5000, 300);
    /* Down when the gate began: its first start then is no restart. */
    for (int i = 0; i < 2; i++) {
        health_probe_started(probe, 3 + i);
        health_probe_exited(probe, "exit 127: libfoo.so: cannot open shared object file", false);
    }
    ck_assert(test_run_until(ev, decided, 30000));
    ck_assert(!verdict_healthy);
    ck_assert_msg(strstr(verdict_reason, "a/p: not running (restarted 1 time; last exit: exit 127: libfoo.so: "
                                         "cannot open shared object file)"),
                  "%s", verdict_reason);
    ck_assert_msg(strstr(verdict_reason, "; a/q: healthy for "), "%s", verdict_reason);
    ck_assert_msg(strstr(verdict_reason, " ms, not the 5000 ms required"), "%s", verdict_reason);
    health_probe_free(members[1]);
}
END_TEST

/* A member that stops for good fails the gate at once. */
START_TEST(gate_final_exit_fails_at_once)
{
    make_probe(NULL);
    new_gate(&probe, 1, 100, 600000);
    health_probe_started(probe, 1);
    health_probe_exited(probe, "exit 127", true);
    ck_assert(test_run_until(ev, decided, 30000));
    ck_assert(!verdict_healthy);
    ck_assert_str_eq(verdict_reason, "a/p: stopped for good (last exit: exit 127)");
}
END_TEST

/* Freed mid-probe: the gate gives no verdict, the probe's exec check is
 * killed and reaped, nothing leaks (ASan). */
START_TEST(gate_freed_mid_probe)
{
    write_script("slow", "echo $$ > fg.pid; exec sleep 60");
    start_probe("      exec: [slow]\n      timeout_ms: 60000\n");
    new_gate(&probe, 1, 100, 600000);
    watched = 0;
    for (long long end = mono_ms() + 10000; !(watched = read_pid("fg.pid")) && mono_ms() < end;)
        test_run_for(ev, 20);
    ck_assert_int_gt(watched, 0);
    gate = health_gate_free(gate);
    probe = health_probe_free(probe);
    ck_assert(pid_dead(watched));
    test_run_for(ev, 100);
    ck_assert_int_eq(n_verdicts, 0);
}
END_TEST

/* A member probe freed first leaves the gate, which goes on without it. */
START_TEST(gate_member_freed_first)
{
    HealthProbe *members[2];
    make_probe(NULL);
    members[0] = probe;
    ck_assert_int_eq(health_probe_new(ev, "a/q", &app->processes[0], dir, NULL, NULL, &members[1]), 0);
    health_probe_started(probe, 1);
    new_gate(members, 2, 100, 30000);
    members[1] = health_probe_free(members[1]); /* never started */
    ck_assert(test_run_until(ev, decided, 30000));
    ck_assert(verdict_healthy);
}
END_TEST

START_TEST(gate_bad_arguments)
{
    make_probe(NULL);
    HealthGate *g = NULL;
    ck_assert_int_eq(health_gate_new(ev, &probe, 1, -1, 1000, on_verdict, NULL, &g), -EINVAL);
    ck_assert_int_eq(health_gate_new(ev, &probe, 1, 0, 0, on_verdict, NULL, &g), -EINVAL);
    ck_assert_int_eq(health_gate_new(ev, NULL, 1, 0, 1000, on_verdict, NULL, &g), -EINVAL);
    HealthProbe *none = NULL;
    ck_assert_int_eq(health_gate_new(ev, &none, 1, 0, 1000, on_verdict, NULL, &g), -EINVAL);
    ck_assert_ptr_null(g);
    ck_assert_ptr_null(health_gate_free(NULL));
}
END_TEST

static Suite *health_suite(void)
{
    Suite *s = suite_create("health");
    TCase *tc = tcase_create("exec");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, exec_true_is_healthy);
    tcase_add_test(tc, exec_false_is_unhealthy);
    tcase_add_test(tc, exec_script_says_why);
    tcase_add_test(tc, exec_output_is_bounded);
    tcase_add_test(tc, exec_missing_program);
    tcase_add_test(tc, exec_unknown_user);
    tcase_add_test(tc, exec_timeout_kills_the_check);
    tcase_add_test(tc, exec_exit_of_the_process_kills_the_check);
    tcase_add_test(tc, exec_runs_again_after_its_interval);
    suite_add_tcase(s, tc);

    tc = tcase_create("tcp_http");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, tcp_connects);
    tcase_add_test(tc, tcp_refused);
    tcase_add_test(tc, tcp_times_out);
    tcase_add_test(tc, http_200_is_healthy);
    tcase_add_test(tc, http_503_is_unhealthy);
    tcase_add_test(tc, http_expected_status);
    tcase_add_test(tc, http_garbage);
    tcase_add_test(tc, http_closed_without_answer);
    tcase_add_test(tc, http_slow_times_out);
    suite_add_tcase(s, tc);

    tc = tcase_create("runtime");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, runtime_answers);
    tcase_add_test(tc, runtime_timeout_cancels);
    tcase_add_test(tc, runtime_busy_skips_a_run);
    tcase_add_test(tc, runtime_without_ask);
    tcase_add_test(tc, runtime_exit_cancels);
    suite_add_tcase(s, tc);

    tc = tcase_create("health_probe");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, probe_without_checks);
    tcase_add_test(tc, probe_restart_forgets_results);
    tcase_add_test(tc, probe_new_definition);
    tcase_add_test(tc, probe_bad_arguments);
    suite_add_tcase(s, tc);

    tc = tcase_create("health_gate");
    tcase_add_checked_fixture(tc, gate_setup, gate_teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, gate_healthy_after_the_window);
    tcase_add_test(tc, gate_asks_for_fresh_results);
    tcase_add_test(tc, gate_restart_resets_the_window);
    tcase_add_test(tc, gate_verdict_from_the_loop);
    tcase_add_test(tc, gate_timeout_fails_once_with_the_reason);
    tcase_add_test(tc, gate_reasons_name_every_member);
    tcase_add_test(tc, gate_final_exit_fails_at_once);
    tcase_add_test(tc, gate_freed_mid_probe);
    tcase_add_test(tc, gate_member_freed_first);
    tcase_add_test(tc, gate_bad_arguments);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return test_run_daemon_suite(health_suite());
}
