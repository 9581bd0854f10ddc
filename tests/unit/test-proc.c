/* proc: managed processes on a real sd_event loop, played by /bin/sh
 * scripts that run in a temporary directory (their working directory).
 * reld's log (stderr) is captured where a check reads it. */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "proc.h"
#include "testlib.h"
#include "testloop.h"

static char dir[] = "/tmp/reld-test-proc-XXXXXX";
static sd_event *ev;
static ReleaseDef *rel;
static Proc *p;
static Diag d;

/* What the exit callback saw. */
static int n_exits;
static siginfo_t last_exit;
static bool stopping_at_exit;
static long long exit_at_ms;

/* What call callbacks saw. */
static int n_calls_done;
static int call_r;
static json_t *call_reply;
static void *call_data;

static void on_exited(Proc *q, const siginfo_t *si, void *userdata)
{
    ck_assert_ptr_eq(q, p);
    ck_assert_ptr_eq(userdata, &n_exits);
    n_exits++;
    last_exit = *si;
    stopping_at_exit = proc_stopping(q);
    exit_at_ms = mono_ms();
}

static void on_call(Proc *q, json_t *reply, int r, void *userdata)
{
    n_calls_done++;
    call_r = r;
    json_decref(call_reply);
    call_reply = json_incref(reply);
    call_data = userdata;
}

/* ---- helpers ---------------------------------------------------------- */

/* text as a YAML single-quoted scalar (caller frees). */
static char *yq(const char *text)
{
    size_t n = 0;
    char *out = xcalloc(2 * strlen(text) + 3, 1);
    out[n++] = '\'';
    for (const char *s = text; *s; s++) {
        if (*s == '\'')
            out[n++] = '\'';
        out[n++] = *s;
    }
    out[n++] = '\'';
    return out;
}

/* A release with application a, process p: /bin/sh -c script. extra:
 * more lines of the process (indented 4), or "". */
static ReleaseDef *make_release(const char *script, const char *extra)
{
    char *q = yq(script);
    char *app = xasprintf("name: a\nvsn: \"1\"\nmodules: [m]\nprocesses:\n"
                          "  - name: p\n    exec: /bin/sh\n    args: ['-c', %s]\n    modules: [m]\n%s",
                          q, extra);
    const char *apps[] = {app};
    ReleaseDef *r = NULL;
    Diag dd = {0};
    int e = test_release("release: r\nvsn: \"1\"\napplications: [{name: a, vsn: \"1\"}]\n", apps, &r, &dd);
    ck_assert_msg(e == 0, "test release: %s", test_diag_text(&dd));
    diag_clear(&dd);
    free(app);
    free(q);
    return r;
}

static ProcSource source_of(const ReleaseDef *r)
{
    ProcSource src = {.def = &r->apps[0].app->processes[0], .path = xstrdup("/bin/sh"), .dir = xstrdup(dir)};
    strvec_push_take(&src.modules_env, xasprintf("m=%s/m.so", dir));
    return src;
}

/* p for script, not started. */
static Proc *make(const char *script, const char *extra)
{
    release_def_free(rel);
    rel = make_release(script, extra);
    ProcSource src = source_of(rel);
    p = proc_new(ev, "a/p", &src, on_exited, &n_exits, &d);
    ck_assert_msg(p != NULL, "proc_new: %s", test_diag_text(&d));
    proc_source_clear(&src);
    return p;
}

static Proc *start(const char *script, const char *extra)
{
    make(script, extra);
    ck_assert_int_eq(proc_spawn(p), 0);
    ck_assert_int_gt(proc_pid(p), 0);
    return p;
}

typedef TestCond Cond;

static bool exited(void)
{
    return n_exits > 0;
}

static bool call_ended(void)
{
    return n_calls_done > 0;
}

static char *path_in(const char *name)
{
    return xasprintf("%s/%s", dir, name);
}

/* The content of a file of the directory, or NULL when absent. */
static char *slurp(const char *name)
{
    char *path = path_in(name), *buf = NULL;
    FILE *f = fopen(path, "r");
    free(path);
    if (!f)
        return NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        buf = xrealloc(buf, cap = cap * 2 + 4096);
        size_t k = fread(buf + n, 1, cap - n - 1, f);
        n += k;
        if (k == 0)
            break;
    }
    buf[n] = 0;
    fclose(f);
    return buf;
}

static const char *wanted_file;

/* The file exists and ends with a newline (the writer is done). */
static bool file_complete(void)
{
    char *s = slurp(wanted_file);
    bool ok = s && *s && s[strlen(s) - 1] == '\n';
    free(s);
    return ok;
}

static char *wait_file(const char *name, int ms)
{
    wanted_file = name;
    ck_assert_msg(test_run_until(ev, file_complete, ms), "%s did not appear", name);
    return slurp(name);
}

/* The line of text that starts with key=, its value (static), or NULL. */
static const char *env_value(const char *text, const char *key)
{
    static char buf[4096];
    size_t kl = strlen(key);
    for (const char *l = text; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
        if (strncmp(l, key, kl) == 0 && l[kl] == '=') {
            const char *e = strchr(l, '\n');
            size_t n = e ? (size_t)(e - l - kl - 1) : strlen(l + kl + 1);
            snprintf(buf, sizeof(buf), "%.*s", (int)n, l + kl + 1);
            return buf;
        }
    return NULL;
}

/* A TCP port free a moment ago on 127.0.0.1. */
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

/* The inode of the socket listening on 127.0.0.1:port (/proc/net/tcp), or 0. */
static unsigned long listener_inode(int port)
{
    FILE *f = fopen("/proc/net/tcp", "r");
    ck_assert_ptr_nonnull(f);
    char line[512], want[32];
    snprintf(want, sizeof(want), "0100007F:%04X", port);
    unsigned long inode = 0;
    while (fgets(line, sizeof(line), f)) {
        char local[64], remote[64], st[8];
        unsigned long ino;
        if (sscanf(line, " %*s %63s %63s %7s %*s %*s %*s %*s %*s %lu", local, remote, st, &ino) == 4 &&
            strcmp(local, want) == 0 && strcmp(st, "0A") == 0)
            inode = ino;
    }
    fclose(f);
    return inode;
}

/* ---- reld's stderr, captured ----------------------------------------------- */

static int saved_stderr = -1;

static void capture_start(void)
{
    char *path = path_in("reld.log");
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
    free(path);
    ck_assert_int_ge(fd, 0);
    fflush(stderr);
    saved_stderr = dup(STDERR_FILENO);
    ck_assert_int_ge(saved_stderr, 0);
    ck_assert_int_eq(dup2(fd, STDERR_FILENO), STDERR_FILENO);
    close(fd);
}

static void capture_end(void)
{
    if (saved_stderr < 0)
        return;
    dup2(saved_stderr, STDERR_FILENO);
    close(saved_stderr);
    saved_stderr = -1;
}

static size_t count_lines_with(const char *text, const char *part)
{
    size_t n = 0;
    for (const char *l = text; l && *l;) {
        const char *e = strchr(l, '\n');
        size_t len = e ? (size_t)(e - l) : strlen(l);
        char *line = xstrndup(l, len);
        if (strstr(line, part))
            n++;
        free(line);
        l = e ? e + 1 : NULL;
    }
    return n;
}

static const char *wanted_log;

static bool log_has_wanted(void)
{
    char *s = slurp("reld.log");
    bool ok = s && strstr(s, wanted_log);
    free(s);
    return ok;
}

/* ---- fixture --------------------------------------------------------------------- */

static void setup(void)
{
    /* reld handles no signal itself (signalfd): a child between fork and
     * exec must not run Check's handlers (which kill the test's group). */
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    signal(SIGALRM, SIG_DFL);
    strcpy(dir, "/tmp/reld-test-proc-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    ck_assert_int_ge(sd_event_new(&ev), 0);
    d = (Diag){0};
    rel = NULL;
    p = NULL;
    n_exits = n_calls_done = 0;
    call_r = 1;
    call_reply = NULL;
    call_data = NULL;
    memset(&last_exit, 0, sizeof(last_exit));
}

static void teardown(void)
{
    capture_end();
    p = proc_free(p);
    /* Output pipes go when their process's end of them closes. */
    test_run_for(ev, 30);
    ev = sd_event_unref(ev);
    rel = release_def_free(rel);
    json_decref(call_reply);
    call_reply = NULL;
    diag_clear(&d);
    char cmd[sizeof(dir) + 16];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}

/* A child that waits for its control channel to close (reld's end goes
 * when the Proc does). */
#define WAIT_SCRIPT "read x <&3"

/* ---- proc_new ------------------------------------------------------------- */

START_TEST(new_opens_the_listening_sockets)
{
    int port = free_port();
    char *sock = path_in("admin.sock");
    char *extra = xasprintf("    sockets:\n      - {name: http, listen: \"127.0.0.1:%d\"}\n"
                            "      - {name: admin, listen: \"unix:%s\"}\n",
                            port, sock);
    make(WAIT_SCRIPT, extra);
    ck_assert_int_eq(proc_pid(p), 0);
    ck_assert_str_eq(proc_label(p), "a/p");
    ck_assert_ptr_eq(proc_def(p), &rel->apps[0].app->processes[0]);
    ck_assert(!proc_speaks_protocol(p));
    ck_assert_ptr_null(proc_modules(p));
    ck_assert_ptr_null(proc_module_version(p, "m"));
    /* Listening before any process runs: a connection is queued, not refused. */
    ck_assert_uint_ne(listener_inode(port), 0);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {
        .sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    close(fd);
    struct stat st;
    ck_assert_int_eq(stat(sock, &st), 0);
    ck_assert(S_ISSOCK(st.st_mode));
    free(extra);
    free(sock);
}
END_TEST

START_TEST(new_refuses_a_port_in_use)
{
    int port = free_port();
    int held = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {
        .sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert_int_eq(bind(held, (struct sockaddr *)&a, sizeof(a)), 0);
    ck_assert_int_eq(listen(held, 1), 0);
    char *extra = xasprintf("    sockets:\n      - {name: http, listen: \"127.0.0.1:%d\"}\n", port);
    rel = make_release(WAIT_SCRIPT, extra);
    ProcSource src = source_of(rel);
    ck_assert_ptr_null(proc_new(ev, "a/p", &src, on_exited, &n_exits, &d));
    proc_source_clear(&src);
    ck_assert_uint_eq(d.errors.n, 1);
    char *want = xasprintf("a/p: cannot listen on 127.0.0.1:%d: %s", port, strerror(EADDRINUSE));
    ck_assert_str_eq(d.errors.v[0], want);
    free(want);
    free(extra);
    close(held);
}
END_TEST

/* ---- proc_spawn ---------------------------------------------------------------- */

START_TEST(spawn_environment_and_descriptors)
{
    int port = free_port();
    char *sock = path_in("admin.sock");
    char *extra = xasprintf("    sockets:\n      - {name: http, listen: \"127.0.0.1:%d\"}\n"
                            "      - {name: admin, listen: \"unix:%s\"}\n",
                            port, sock);
    /* reld's own systemd variables, and variables of its own. */
    setenv("NOTIFY_SOCKET", "/run/systemd/notify", 1);
    setenv("WATCHDOG_USEC", "30000000", 1);
    setenv("WATCHDOG_PID", "1", 1);
    setenv("JOURNAL_STREAM", "8:12345", 1); /* not stderr's: reld relays */
    setenv("LISTEN_FDS", "9", 1);
    setenv("LISTEN_PID", "1", 1);
    setenv("LISTEN_FDNAMES", "reld", 1);
    setenv("RELD_TEST_SECRET", "x", 1);
    setenv("RELD_TEST_KEEP", "kept", 1);
    setenv("TEST_PLAIN", "plain value", 1);
    start("env > env.tmp; echo \"pid=$$\" >> env.tmp; echo \"cwd=$(pwd)\" >> env.tmp;"
          " echo \"fd3=$(readlink /proc/$$/fd/3)\" >> env.tmp; echo \"fd4=$(readlink /proc/$$/fd/4)\" >> env.tmp;"
          " echo \"fd5=$(readlink /proc/$$/fd/5)\" >> env.tmp; echo \"fd0=$(readlink /proc/$$/fd/0)\" >> env.tmp;"
          " mv env.tmp env.txt; " WAIT_SCRIPT,
          extra);
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
    unsetenv("JOURNAL_STREAM");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDNAMES");
    unsetenv("RELD_TEST_SECRET");
    unsetenv("RELD_TEST_KEEP");
    unsetenv("TEST_PLAIN");
    wanted_file = "env.txt";
    ck_assert(test_run_until(ev, file_complete, 5000));
    char *env = slurp("env.txt");
    char pid[24];
    snprintf(pid, sizeof(pid), "%d", (int)proc_pid(p));
    ck_assert_str_eq(env_value(env, "pid"), pid);
    ck_assert_str_eq(env_value(env, "RELD_CONTROL_FD"), "5"); /* after the two sockets */
    ck_assert_str_eq(env_value(env, "RELD_PROCESS"), "p");
    char *mods = xasprintf("m=%s/m.so", dir);
    ck_assert_str_eq(env_value(env, "RELD_MODULES"), mods);
    ck_assert_str_eq(env_value(env, "LISTEN_FDS"), "2");
    ck_assert_str_eq(env_value(env, "LISTEN_FDNAMES"), "http:admin");
    ck_assert_str_eq(env_value(env, "LISTEN_PID"), pid);
    ck_assert_str_eq(env_value(env, "cwd"), dir);
    ck_assert_str_eq(env_value(env, "TEST_PLAIN"), "plain value");
    static const char *const absent[] = {"NOTIFY_SOCKET",  "WATCHDOG_USEC",    "WATCHDOG_PID",
                                         "JOURNAL_STREAM", "RELD_TEST_SECRET", "RELD_TEST_KEEP"};
    for (size_t i = 0; i < sizeof(absent) / sizeof(absent[0]); i++)
        ck_assert_msg(env_value(env, absent[i]) == NULL, "%s reached the process: %s", absent[i],
                      env_value(env, absent[i]));
    /* fd 3 is the socket listening on the port, fd 4 the unix one, fd 5 the
     * control channel; stdin is /dev/null. */
    char *want3 = xasprintf("socket:[%lu]", listener_inode(port));
    ck_assert_str_eq(env_value(env, "fd3"), want3);
    ck_assert_msg(strncmp(env_value(env, "fd4"), "socket:[", 8) == 0, "fd4 %s", env_value(env, "fd4"));
    ck_assert_msg(strncmp(env_value(env, "fd5"), "socket:[", 8) == 0, "fd5 %s", env_value(env, "fd5"));
    char *fd4 = xstrdup(env_value(env, "fd4"));
    ck_assert_str_ne(fd4, env_value(env, "fd3"));
    free(fd4);
    ck_assert_str_eq(env_value(env, "fd0"), "/dev/null");
    free(want3);
    free(mods);
    free(env);
    free(extra);
    free(sock);
}
END_TEST

START_TEST(spawn_without_sockets_has_no_listen_variables)
{
    start("env > env.tmp; mv env.tmp env.txt; " WAIT_SCRIPT, "");
    char *env = wait_file("env.txt", 5000);
    ck_assert_str_eq(env_value(env, "RELD_CONTROL_FD"), "3");
    ck_assert_ptr_null(env_value(env, "LISTEN_FDS"));
    ck_assert_ptr_null(env_value(env, "LISTEN_PID"));
    ck_assert_ptr_null(env_value(env, "LISTEN_FDNAMES"));
    free(env);
}
END_TEST

START_TEST(spawn_relays_output_lines)
{
    capture_start();
    start("echo first line; echo 'to stderr' >&2; printf 'no newline at the end'", "");
    pid_t pid = proc_pid(p);
    ck_assert(test_run_until(ev, exited, 5000));
    wanted_log = "no newline at the end";
    bool ok = test_run_until(ev, log_has_wanted, 2000);
    capture_end();
    char *log = slurp("reld.log");
    ck_assert_msg(ok, "log: %s", log);
    char want[128];
    snprintf(want, sizeof(want), "reld: a/p[%d]: first line\n", (int)pid);
    ck_assert_msg(strstr(log, want), "'%s' not in log: %s", want, log);
    snprintf(want, sizeof(want), "reld: a/p[%d]: to stderr\n", (int)pid);
    ck_assert_msg(strstr(log, want), "'%s' not in log: %s", want, log);
    snprintf(want, sizeof(want), "reld: a/p[%d]: no newline at the end\n", (int)pid);
    ck_assert_msg(strstr(log, want), "'%s' not in log: %s", want, log);
    free(log);
}
END_TEST

START_TEST(spawn_output_rate_limit)
{
    capture_start();
    start("i=0; while [ $i -lt 5000 ]; do echo \"line $i\"; i=$((i+1)); done", "");
    pid_t pid = proc_pid(p);
    ck_assert(test_run_until(ev, exited, 10000));
    wanted_log = "lines of output dropped";
    bool ok = test_run_until(ev, log_has_wanted, 5000);
    capture_end();
    char *log = slurp("reld.log");
    ck_assert_msg(ok, "no 'dropped' warning");
    char prefix[64];
    snprintf(prefix, sizeof(prefix), "reld: a/p[%d]: line ", (int)pid);
    size_t relayed = count_lines_with(log, prefix);
    ck_assert_msg(relayed <= PROC_RELAY_BURST, "%zu lines relayed, more than %d", relayed, PROC_RELAY_BURST);
    ck_assert_uint_eq(relayed, PROC_RELAY_BURST); /* the first burst goes through */
    char want[160];
    snprintf(want, sizeof(want), "reld: warning: a/p[%d]: %d lines of output dropped (more than %d in %d ms)", (int)pid,
             5000 - PROC_RELAY_BURST, PROC_RELAY_BURST, PROC_RELAY_PERIOD_MS);
    ck_assert_msg(strstr(log, want), "'%s' not in the log", want);
    ck_assert_uint_eq(count_lines_with(log, "dropped"), 1);
    free(log);
}
END_TEST

START_TEST(spawn_exit_is_reported)
{
    start("exit 3", "");
    ck_assert(test_run_until(ev, exited, 5000));
    ck_assert_int_eq(n_exits, 1);
    ck_assert_int_eq(last_exit.si_code, CLD_EXITED);
    ck_assert_int_eq(last_exit.si_status, 3);
    ck_assert(!stopping_at_exit);
    ck_assert_int_eq(proc_pid(p), 0);
    /* It can run again. */
    ck_assert_int_eq(proc_spawn(p), 0);
    long long until = mono_ms() + 5000;
    while (n_exits < 2 && mono_ms() < until)
        ck_assert_int_ge(sd_event_run(ev, 10 * 1000ULL), 0);
    ck_assert_int_eq(n_exits, 2);
    ck_assert_int_eq(last_exit.si_status, 3);
}
END_TEST

START_TEST(spawn_missing_executable_exits_127)
{
    make(WAIT_SCRIPT, "");
    ProcSource src = source_of(rel);
    free(src.path);
    src.path = path_in("no-such-program");
    char *want = xasprintf("]: cannot execute %s: %s", src.path, strerror(ENOENT));
    proc_set_source(p, &src);
    capture_start();
    ck_assert_int_eq(proc_spawn(p), 0);
    ck_assert(test_run_until(ev, exited, 5000));
    capture_end();
    ck_assert_int_eq(last_exit.si_code, CLD_EXITED);
    ck_assert_int_eq(last_exit.si_status, 127);
    /* The child told reld why before it exited: one line, at the spawn. */
    char *log = slurp("reld.log");
    ck_assert_int_eq(count_lines_with(log, want), 1);
    free(log);
    free(want);
}
END_TEST

START_TEST(spawn_missing_directory_exits_126)
{
    make(WAIT_SCRIPT, "");
    ProcSource src = source_of(rel);
    free(src.dir);
    src.dir = path_in("gone");
    proc_set_source(p, &src);
    ck_assert_int_eq(proc_spawn(p), 0);
    ck_assert(test_run_until(ev, exited, 5000));
    ck_assert_int_eq(last_exit.si_status, 126);
}
END_TEST

/* ---- proc_set_source ------------------------------------------------------------- */

START_TEST(set_source_takes_effect_at_the_next_start)
{
    start("echo one > run.txt; " WAIT_SCRIPT, "");
    char *s = wait_file("run.txt", 5000);
    ck_assert_str_eq(s, "one\n");
    free(s);
    ReleaseDef *rel2 = make_release("echo two > run2.txt; " WAIT_SCRIPT, "");
    ProcSource src = source_of(rel2);
    proc_set_source(p, &src);
    ck_assert_ptr_null(src.path); /* taken */
    ck_assert_ptr_eq(proc_def(p), &rel2->apps[0].app->processes[0]);
    char *path = path_in("run2.txt");
    ck_assert_int_ne(access(path, F_OK), 0); /* the running process is not touched */
    ck_assert_int_eq(proc_stop(p), 0);
    ck_assert(test_run_until(ev, exited, 5000));
    ck_assert_int_eq(proc_spawn(p), 0);
    s = wait_file("run2.txt", 5000);
    ck_assert_str_eq(s, "two\n");
    free(s);
    free(path);
    p = proc_free(p); /* before rel2, which it borrows */
    release_def_free(rel2);
}
END_TEST

/* ---- proc_stop ---------------------------------------------------------------- */

START_TEST(stop_sends_sigterm)
{
    start(WAIT_SCRIPT, "    shutdown_ms: 5000\n");
    long long t0 = mono_ms();
    ck_assert_int_eq(proc_stop(p), 0);
    ck_assert(proc_stopping(p));
    ck_assert_int_eq(n_exits, 0); /* never from inside proc_stop */
    ck_assert(test_run_until(ev, exited, 5000));
    ck_assert_int_eq(last_exit.si_code, CLD_KILLED);
    ck_assert_int_eq(last_exit.si_status, SIGTERM);
    ck_assert(stopping_at_exit);
    ck_assert_int_lt(exit_at_ms - t0, 2000);
}
END_TEST

static long long timer_at_ms;

static int on_timer(sd_event_source *s, uint64_t usec, void *userdata)
{
    timer_at_ms = mono_ms();
    return 0;
}

START_TEST(stop_of_a_process_ignoring_sigterm_kills_it_after_shutdown_ms)
{
    capture_start();
    start("trap '' TERM; echo ready > ready.txt; " WAIT_SCRIPT, "    shutdown_ms: 400\n");
    free(wait_file("ready.txt", 5000)); /* the trap is set */
    timer_at_ms = 0;
    long long t0 = mono_ms();
    ck_assert_int_eq(proc_stop(p), 0);
    sd_event_source *timer = NULL;
    ck_assert_int_ge(sd_event_add_time_relative(ev, &timer, CLOCK_MONOTONIC, 100 * 1000ULL, 0, on_timer, NULL), 0);
    ck_assert(test_run_until(ev, exited, 5000));
    capture_end();
    ck_assert_int_eq(last_exit.si_code, CLD_KILLED);
    ck_assert_int_eq(last_exit.si_status, SIGKILL);
    ck_assert(stopping_at_exit);
    ck_assert_msg(exit_at_ms - t0 >= 390, "killed after %lld ms, before shutdown_ms", exit_at_ms - t0);
    ck_assert_msg(timer_at_ms != 0 && timer_at_ms < exit_at_ms, "the loop did not run during the stop");
    ck_assert_int_ge(timer_at_ms - t0, 90);
    char *log = slurp("reld.log");
    ck_assert_msg(strstr(log, "did not stop within 400 ms: SIGKILL"), "log: %s", log);
    free(log);
    sd_event_source_unref(timer);
}
END_TEST

START_TEST(stop_twice_does_not_postpone_the_sigkill)
{
    start("trap '' TERM; echo ready > ready.txt; " WAIT_SCRIPT, "    shutdown_ms: 500\n");
    free(wait_file("ready.txt", 5000));
    long long t0 = mono_ms();
    ck_assert_int_eq(proc_stop(p), 0);
    test_run_for(ev, 300);
    ck_assert_int_eq(n_exits, 0);
    ck_assert_int_eq(proc_stop(p), 0); /* asked again (reld stops while a restart stops it) */
    ck_assert(test_run_until(ev, exited, 5000));
    ck_assert_int_eq(last_exit.si_status, SIGKILL);
    ck_assert_msg(exit_at_ms - t0 < 700, "SIGKILL %lld ms after the first SIGTERM; shutdown_ms is 500",
                  exit_at_ms - t0);
}
END_TEST

START_TEST(stop_of_a_process_not_running_is_immediate)
{
    make(WAIT_SCRIPT, "");
    ck_assert_int_eq(proc_stop(p), 1);
    ck_assert(proc_stopping(p));
    test_run_for(ev, 20);
    ck_assert_int_eq(n_exits, 0);
}
END_TEST

START_TEST(stop_then_spawn_clears_stopping)
{
    start(WAIT_SCRIPT, "");
    ck_assert_int_eq(proc_stop(p), 0);
    ck_assert(test_run_until(ev, exited, 5000));
    ck_assert_int_eq(proc_spawn(p), 0);
    ck_assert(!proc_stopping(p));
    /* The kill timer of the earlier stop must not fire on the new run. */
    test_run_for(ev, 200);
    ck_assert_int_eq(n_exits, 1);
    ck_assert_int_gt(proc_pid(p), 0);
}
END_TEST

/* ---- proc_call ---------------------------------------------------------------- */

/* Answers each request line with its id, ok, and a module list. */
#define ECHO_SCRIPT                                                                                                    \
    "while read -r line <&3; do"                                                                                       \
    "  id=$(echo \"$line\" | sed 's/.*\"id\":\\([0-9]*\\).*/\\1/');"                                                   \
    "  echo \"$line\" >> requests.txt;"                                                                                \
    "  echo "                                                                                                          \
    "\"{\\\"id\\\":$id,\\\"ok\\\":true,\\\"modules\\\":[{\\\"name\\\":\\\"m\\\",\\\"version\\\":\\\"7\\\"}]}\" "       \
    ">&3;"                                                                                                             \
    "done"

START_TEST(call_gets_its_reply)
{
    start(ECHO_SCRIPT, "");
    int tag;
    ck_assert_int_eq(proc_call(p, json_pack("{s:s}", "cmd", "status"), 5000, on_call, &tag), 0);
    ck_assert_int_eq(n_calls_done, 0);
    ck_assert(test_run_until(ev, call_ended, 5000));
    ck_assert_int_eq(n_calls_done, 1);
    ck_assert_int_eq(call_r, 0);
    ck_assert_ptr_eq(call_data, &tag);
    ck_assert(json_is_true(json_object_get(call_reply, "ok")));
    /* The reply's module list tells what it runs. */
    ck_assert_ptr_nonnull(proc_modules(p));
    ck_assert_str_eq(proc_module_version(p, "m"), "7");
    ck_assert_ptr_null(proc_module_version(p, "other"));
    /* The request went out as one line, with the id. */
    char *req = wait_file("requests.txt", 2000);
    json_t *j = json_loads(req, 0, NULL);
    ck_assert_ptr_nonnull(j);
    ck_assert_str_eq(json_string_value(json_object_get(j, "cmd")), "status");
    ck_assert_int_eq(json_integer_value(json_object_get(j, "id")),
                     json_integer_value(json_object_get(call_reply, "id")));
    json_decref(j);
    free(req);
    /* A second call after the first ended is fine, with a new id. */
    ck_assert_int_eq(proc_call(p, json_pack("{s:s}", "cmd", "again"), 5000, on_call, NULL), 0);
    json_int_t first = json_integer_value(json_object_get(call_reply, "id"));
    ck_assert(test_run_until(ev, call_ended, 5000) && n_calls_done >= 1);
    long long until = mono_ms() + 5000;
    while (n_calls_done < 2 && mono_ms() < until)
        ck_assert_int_ge(sd_event_run(ev, 10 * 1000ULL), 0);
    ck_assert_int_eq(n_calls_done, 2);
    ck_assert_int_eq(call_r, 0);
    ck_assert_int_gt(json_integer_value(json_object_get(call_reply, "id")), first);
}
END_TEST

/* The channel is edge-triggered: what waits there when reld comes to read,
 * far more than one read takes (120 lines of 1 kB, then the reply), is read
 * to the end, with no more bytes coming to trigger another event. */
START_TEST(call_reply_after_a_burst_of_lines)
{
    start("read -r line <&3; id=$(echo \"$line\" | sed 's/.*\"id\":\\([0-9]*\\).*/\\1/');"
          "{ head -c 120000 /dev/zero | tr '\\0' x | fold -w 1000; echo; } | sed "
          "'s/.*/{\"event\":\"noise\",\"x\":\"&\"}/' > burst.tmp;"
          "echo \"{\\\"id\\\":$id,\\\"ok\\\":true,\\\"modules\\\":[]}\" >> burst.tmp; cat burst.tmp >&3; touch "
          "written; " WAIT_SCRIPT,
          "");
    ck_assert_int_eq(proc_call(p, json_pack("{s:s}", "cmd", "status"), 30000, on_call, NULL), 0);
    /* All of it in the socket before the loop runs (a bounded wait). */
    char *written = path_in("written");
    for (int k = 0; k < 1500 && access(written, F_OK) != 0; k++)
        usleep(10 * 1000);
    ck_assert_int_eq(access(written, F_OK), 0);
    free(written);
    ck_assert(test_run_until(ev, call_ended, 30000));
    ck_assert_int_eq(call_r, 0);
    ck_assert(json_is_true(json_object_get(call_reply, "ok")));
    ck_assert_int_gt(proc_pid(p), 0);
}
END_TEST

START_TEST(call_times_out)
{
    /* Reads requests and never answers. */
    start("while read -r line <&3; do echo \"$line\" >> requests.txt; done", "");
    long long t0 = mono_ms();
    ck_assert_int_eq(proc_call(p, json_pack("{s:s}", "cmd", "suspend"), 150, on_call, NULL), 0);
    ck_assert(test_run_until(ev, call_ended, 5000));
    ck_assert_int_eq(call_r, -ETIMEDOUT);
    ck_assert_ptr_null(call_reply);
    ck_assert_int_ge(mono_ms() - t0, 140);
    /* The channel stays usable: the next call may go out. */
    ck_assert_int_eq(proc_call(p, json_pack("{s:s}", "cmd", "again"), 100, on_call, NULL), 0);
    test_run_for(ev, 300);
    ck_assert_int_eq(n_calls_done, 2);
    ck_assert_int_eq(call_r, -ETIMEDOUT);
}
END_TEST

START_TEST(call_late_reply_after_a_timeout_ends_nothing)
{
    /* Answers each request 300 ms late. */
    start("while read -r line <&3; do sleep 0.3 >/dev/null 2>&1;"
          "  id=$(echo \"$line\" | sed 's/.*\"id\":\\([0-9]*\\).*/\\1/');"
          "  echo "
          "\"{\\\"id\\\":$id,\\\"ok\\\":true,\\\"modules\\\":[{\\\"name\\\":\\\"m\\\",\\\"version\\\":\\\"9\\\"}]}\" "
          ">&3; done",
          "");
    ck_assert_int_eq(proc_call(p, json_pack("{s:s}", "cmd", "load"), 100, on_call, NULL), 0);
    ck_assert(test_run_until(ev, call_ended, 5000));
    ck_assert_int_eq(call_r, -ETIMEDOUT);
    /* A second call goes out before the late reply of the first comes: the
     * late reply does not end it. */
    ck_assert_int_eq(proc_call(p, json_pack("{s:s}", "cmd", "second"), 5000, on_call, NULL), 0);
    /* The first's late reply arrives (300 ms after it was read); the
     * second's comes 300 ms after that. */
    long long deadline = mono_ms() + 5000;
    while (!(proc_module_version(p, "m") && strcmp(proc_module_version(p, "m"), "9") == 0) && mono_ms() < deadline)
        ck_assert_int_ge(sd_event_run(ev, 10 * 1000ULL), 0);
    ck_assert_msg(n_calls_done == 1, "the late reply of a timed-out call ended the next call");
    /* It still told what the process runs. */
    ck_assert_str_eq(proc_module_version(p, "m"), "9");
    long long until = mono_ms() + 5000;
    while (n_calls_done < 2 && mono_ms() < until)
        ck_assert_int_ge(sd_event_run(ev, 10 * 1000ULL), 0);
    ck_assert_int_eq(n_calls_done, 2);
    ck_assert_int_eq(call_r, 0);
}
END_TEST

START_TEST(call_to_a_process_that_dies_is_econnreset)
{
    start("read -r line <&3; exit 0", "");
    ck_assert_int_eq(proc_call(p, json_pack("{s:s}", "cmd", "suspend"), 5000, on_call, NULL), 0);
    ck_assert(test_run_until(ev, call_ended, 5000));
    ck_assert_int_eq(n_calls_done, 1);
    ck_assert_int_eq(call_r, -ECONNRESET);
    ck_assert_ptr_null(call_reply);
    ck_assert(test_run_until(ev, exited, 5000));
    test_run_for(ev, 50);
    ck_assert_int_eq(n_calls_done, 1); /* once */
}
END_TEST

START_TEST(call_while_another_is_out_is_ebusy)
{
    start("while read -r line <&3; do :; done", "");
    ck_assert_int_eq(proc_call(p, json_pack("{s:s}", "cmd", "one"), 5000, on_call, NULL), 0);
    ck_assert_int_eq(proc_call(p, json_pack("{s:s}", "cmd", "two"), 5000, on_call, NULL), -EBUSY);
    test_run_for(ev, 30);
    ck_assert_int_eq(n_calls_done, 0); /* the first is still out, the second never was */
}
END_TEST

START_TEST(call_without_a_channel_is_econnreset)
{
    make(WAIT_SCRIPT, "");
    ck_assert_int_eq(proc_call(p, json_pack("{s:s}", "cmd", "x"), 100, on_call, NULL), -ECONNRESET);
    test_run_for(ev, 150);
    ck_assert_int_eq(n_calls_done, 0);
    ck_assert_int_eq(proc_send(p, json_pack("{s:s}", "cmd", "x")), -ECONNRESET);
}
END_TEST

START_TEST(call_hello_makes_it_speak_the_protocol)
{
    start("echo '{\"event\":\"hello\",\"modules\":[{\"name\":\"m\",\"version\":\"3\"}]}' >&3; " WAIT_SCRIPT, "");
    ck_assert(!proc_speaks_protocol(p));
    long long until = mono_ms() + 5000;
    while (!proc_speaks_protocol(p) && mono_ms() < until)
        ck_assert_int_ge(sd_event_run(ev, 10 * 1000ULL), 0);
    ck_assert(proc_speaks_protocol(p));
    ck_assert_str_eq(proc_module_version(p, "m"), "3");
    ck_assert_int_eq(proc_stop(p), 0);
    ck_assert(test_run_until(ev, exited, 5000));
    ck_assert(!proc_speaks_protocol(p)); /* gone with its run */
    ck_assert_ptr_null(proc_modules(p));
}
END_TEST

/* ---- proc_cancel_call ------------------------------------------------------------ */

START_TEST(cancel_call_calls_nobody)
{
    start("while read -r line <&3; do sleep 0.1 >/dev/null 2>&1;"
          "  id=$(echo \"$line\" | sed 's/.*\"id\":\\([0-9]*\\).*/\\1/');"
          "  echo \"{\\\"id\\\":$id,\\\"ok\\\":true}\" >&3; done",
          "");
    ck_assert_int_eq(proc_call(p, json_pack("{s:s}", "cmd", "x"), 150, on_call, NULL), 0);
    proc_cancel_call(p);
    test_run_for(ev, 400); /* past the reply and the timeout */
    ck_assert_int_eq(n_calls_done, 0);
    /* Another call may go out at once. */
    ck_assert_int_eq(proc_call(p, json_pack("{s:s}", "cmd", "y"), 5000, on_call, NULL), 0);
    ck_assert(test_run_until(ev, call_ended, 5000));
    ck_assert_int_eq(call_r, 0);
}
END_TEST

/* ---- proc_send -------------------------------------------------------------------- */

START_TEST(send_large_to_a_process_not_reading_does_not_block)
{
    /* Reads nothing for 500 ms, then the first line, and counts its bytes. */
    start("sleep 0.5 >/dev/null 2>&1; head -n 1 <&3 | wc -c > count.tmp; mv count.tmp count.txt; " WAIT_SCRIPT, "");
    size_t big = 4u << 20; /* far beyond a socket buffer */
    char *payload = xmalloc(big + 1);
    memset(payload, 'x', big);
    payload[big] = 0;
    json_t *req = json_pack("{s:s, s:s}", "cmd", "load", "data", payload);
    char *text = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    json_t *sent = json_pack("{s:s, s:s}", "cmd", "load", "data", payload);
    ck_assert_int_eq(proc_send(p, sent), 0);
    /* Returned before the process could have read the whole line: the
     * rest waits in reld's buffer for the loop (a blocking send could not
     * return before the process read it all, half a second from now). */
    char *path = path_in("count.txt");
    ck_assert_int_ne(access(path, F_OK), 0);
    char *count = wait_file("count.txt", 15000);
    /* The whole line arrived: the request with its id and the newline. */
    size_t want = strlen(text) + strlen(",\"id\":") + 1;
    size_t got = strtoul(count, NULL, 10);
    ck_assert_msg(got > want && got < want + 24, "the process read %zu bytes of %zu+", got, want);
    ck_assert_int_gt(proc_pid(p), 0);
    free(count);
    free(path);
    free(text);
    free(payload);
}
END_TEST

START_TEST(send_expects_no_reply)
{
    start(ECHO_SCRIPT, "");
    ck_assert_int_eq(proc_send(p, json_pack("{s:s}", "cmd", "drop_object_code")), 0);
    char *req = wait_file("requests.txt", 5000);
    ck_assert_msg(strstr(req, "\"cmd\":\"drop_object_code\""), "%s", req);
    ck_assert_msg(strstr(req, "\"id\":"), "%s", req);
    free(req);
    test_run_for(ev, 50);
    ck_assert_int_eq(n_calls_done, 0);
    /* Its answer only told what the process runs. */
    ck_assert_str_eq(proc_module_version(p, "m"), "7");
}
END_TEST

/* ---- proc_free --------------------------------------------------------------------- */

START_TEST(free_kills_and_reaps)
{
    start("trap '' TERM; " WAIT_SCRIPT, "");
    pid_t pid = proc_pid(p);
    ck_assert_int_eq(kill(pid, 0), 0);
    p = proc_free(p);
    ck_assert_int_eq(kill(pid, 0), -1); /* not even a zombie */
    ck_assert_int_eq(errno, ESRCH);
    ck_assert_int_eq(waitpid(pid, NULL, WNOHANG), -1);
    ck_assert_int_eq(errno, ECHILD);
    ck_assert_int_eq(n_exits, 0); /* nobody is told */
    ck_assert_ptr_null(proc_free(NULL));
}
END_TEST

START_TEST(free_during_a_call_calls_nobody)
{
    start("while read -r line <&3; do :; done", "");
    ck_assert_int_eq(proc_call(p, json_pack("{s:s}", "cmd", "x"), 100, on_call, NULL), 0);
    p = proc_free(p);
    test_run_for(ev, 200);
    ck_assert_int_eq(n_calls_done, 0);
}
END_TEST

START_TEST(free_of_a_process_never_started)
{
    int port = free_port();
    char *extra = xasprintf("    sockets:\n      - {name: http, listen: \"127.0.0.1:%d\"}\n", port);
    make(WAIT_SCRIPT, extra);
    ck_assert_uint_ne(listener_inode(port), 0);
    p = proc_free(p);
    ck_assert_uint_eq(listener_inode(port), 0); /* its socket is closed */
    free(extra);
}
END_TEST

static Suite *proc_suite(void)
{
    Suite *s = suite_create("proc");
    struct {
        const char *name;
        const TTest *tests[10];
    } cases[] = {
        {"proc_new", {new_opens_the_listening_sockets, new_refuses_a_port_in_use}},
        {"proc_spawn",
         {spawn_environment_and_descriptors, spawn_without_sockets_has_no_listen_variables, spawn_relays_output_lines,
          spawn_output_rate_limit, spawn_exit_is_reported, spawn_missing_executable_exits_127,
          spawn_missing_directory_exits_126}},
        {"proc_set_source", {set_source_takes_effect_at_the_next_start}},
        {"proc_stop",
         {stop_sends_sigterm, stop_of_a_process_ignoring_sigterm_kills_it_after_shutdown_ms,
          stop_twice_does_not_postpone_the_sigkill, stop_of_a_process_not_running_is_immediate,
          stop_then_spawn_clears_stopping}},
        {"proc_call",
         {call_gets_its_reply, call_times_out, call_late_reply_after_a_timeout_ends_nothing,
          call_to_a_process_that_dies_is_econnreset, call_while_another_is_out_is_ebusy,
          call_without_a_channel_is_econnreset, call_hello_makes_it_speak_the_protocol,
          call_reply_after_a_burst_of_lines}},
        {"proc_cancel_call", {cancel_call_calls_nobody}},
        {"proc_send", {send_large_to_a_process_not_reading_does_not_block, send_expects_no_reply}},
        {"proc_free", {free_kills_and_reaps, free_during_a_call_calls_nobody, free_of_a_process_never_started}},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        TCase *tc = tcase_create(cases[i].name);
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 30);
        for (size_t k = 0; k < sizeof(cases[i].tests) / sizeof(cases[i].tests[0]) && cases[i].tests[k]; k++)
            tcase_add_test(tc, cases[i].tests[k]);
        suite_add_tcase(s, tc);
    }
    return s;
}

int main(void)
{
    return test_run_daemon_suite(proc_suite());
}
