/* Health checks of processes and the gate over them (health.h). */
#include "health.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "proc.h"
#include "util.h"

extern char **environ;

static const char *const health_state_names[] = {
    [HEALTH_DOWN] = "down",
    [HEALTH_STARTING] = "starting",
    [HEALTH_HEALTHY] = "healthy",
    [HEALTH_UNHEALTHY] = "unhealthy",
};

const char *health_state_name(HealthState s)
{
    return s < _HEALTH_STATE_MAX ? health_state_names[s] : "?";
}

typedef enum CheckResult { RESULT_NONE, RESULT_PASS, RESULT_FAIL } CheckResult;
static const char *const result_names[] = {[RESULT_NONE] = "none", [RESULT_PASS] = "pass", [RESULT_FAIL] = "fail"};

/* One check of a probe: its schedule, the run out (if any) and its last
 * result. */
typedef struct Check {
    HealthProbe *p;
    const HealthCheck *def;
    char *desc;             /* "exec bin/check", "tcp 127.0.0.1:80", the url, "runtime": for reasons */
    sd_event_source *timer; /* the next run, or the timeout of the run out */
    bool running;           /* a run is out */
    bool timed_out;         /* exec: killed at its timeout, its exit awaited */
    unsigned long long run; /* the number of the run out, or of the last one */
    /* exec */
    pid_t pid;
    sd_event_source *child_src, *out_src;
    int out_fd;
    char out[HEALTH_OUTPUT_MAX];
    size_t out_len;
    /* tcp, http */
    int fd;
    sd_event_source *io_src;
    char *req;
    size_t req_len, req_sent;
    char answer[HEALTH_ANSWER_MAX + 1];
    size_t answer_len;
    /* the last result */
    CheckResult result;
    char *reason;
    char *output;                  /* exec: the last lines of its output, or NULL */
    long long result_ms;           /* when it came */
    unsigned long long result_run; /* the number of the run that gave it */
    long long passing_since_ms;    /* the first pass of the passes in a row up to now; 0 when it did not pass */
} Check;

struct HealthProbe {
    sd_event *ev;
    char *label;
    const ProcessDef *def;
    char *dir;
    HealthProbeOps ops;
    void *userdata;
    Check *checks;
    size_t n_checks;
    Check *asking; /* the runtime check waiting for the owner's answer */
    /* the process */
    bool running, final;
    pid_t pid;
    unsigned starts;
    long long running_since_ms;
    char *exit_why;
    /* the state */
    HealthState state;
    long long state_since_ms;
    HealthGate **gates; /* watching it */
    size_t n_gates, gates_cap;
};

typedef struct Member {
    HealthProbe *p;     /* NULL once freed */
    unsigned starts_at; /* p->starts when the gate began */
    bool running_at;    /* did it run then? */
    long long ok_since; /* when it became healthy, for the gate; 0 when it is not */
} Member;

struct HealthGate {
    sd_event *ev;
    Member *members;
    size_t n;
    long min_healthy_ms, timeout_ms;
    long long start_ms;
    unsigned long long runs_at_start; /* only later runs count */
    sd_event_source *wake, *deadline, *verdict;
    bool decided, healthy;
    char *reason;
    HealthGateDone done;
    void *userdata;
};

static void probe_update(HealthProbe *p, bool from_owner);

/* Runs are numbered, in the order they start, so that a gate can tell the
 * runs that started after it (a clock in milliseconds could not). Only the
 * loop's thread touches it. */
static unsigned long long runs;
static void gate_eval(HealthGate *g, bool at_deadline);

/* ---- small helpers -------------------------------------------------------- */

static void set_str(char **dst, char *src)
{
    free(*dst);
    *dst = src;
}

/* s with control characters as '?' and at most max bytes (then "..."),
 * for text that processes wrote. */
static char *sanitize(const char *s, size_t len, size_t max)
{
    size_t n = len < max ? len : max;
    char *out = xmalloc(n + 4);
    memcpy(out, s, n);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)out[i] < 0x20 || out[i] == 0x7f)
            out[i] = '?';
    strcpy(out + n, len > max ? "..." : "");
    return out;
}

/* strerror with a lower-case first letter, as it reads inside a sentence. */
static const char *errno_text(int e, char buf[static 128])
{
    snprintf(buf, 128, "%s", strerror(e));
    if (buf[0] && !(buf[1] >= 'A' && buf[1] <= 'Z')) /* keep acronyms */
        buf[0] = (char)tolower((unsigned char)buf[0]);
    return buf;
}

static void iso_time(long long mono_ms_at, char buf[static 32])
{
    struct timespec t;
    (void)clock_gettime(CLOCK_REALTIME, &t); /* cannot fail for this clock */
    long long real_ms = (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000 - (mono_ms() - mono_ms_at);
    time_t sec = (time_t)(real_ms / 1000);
    struct tm tm;
    if (!gmtime_r(&sec, &tm))
        memset(&tm, 0, sizeof(tm));
    size_t n = strftime(buf, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    (void)snprintf(buf + n, 32 - n, ".%03lldZ", real_ms % 1000);
}

static int add_timer(sd_event *ev, sd_event_source **s, long long at_ms, sd_event_time_handler_t cb, void *data)
{
    uint64_t at = at_ms > 0 ? (uint64_t)at_ms * 1000ULL : 1;
    if (*s) {
        int r = sd_event_source_set_time(*s, at);
        return r < 0 ? r : sd_event_source_set_enabled(*s, SD_EVENT_ONESHOT);
    }
    return sd_event_add_time(ev, s, CLOCK_MONOTONIC, at, 1000, cb, data);
}

/* ---- one check ------------------------------------------------------------ */

static void check_schedule(Check *c, long long at_ms);

/* Closes what a run holds, killing an exec run's processes. */
static void check_release(Check *c)
{
    if (c->pid > 0) {
        (void)kill(-c->pid, SIGKILL);   /* its group: what it started goes too */
        (void)waitpid(c->pid, NULL, 0); /* immediate: SIGKILL cannot be refused */
        c->pid = 0;
    }
    c->child_src = sd_event_source_disable_unref(c->child_src);
    c->out_src = sd_event_source_disable_unref(c->out_src);
    if (c->out_fd >= 0)
        close(c->out_fd);
    c->out_fd = -1;
    c->io_src = sd_event_source_disable_unref(c->io_src);
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->req = (free(c->req), NULL);
    if (c->p->asking == c) {
        c->p->asking = NULL;
        if (c->p->ops.runtime_cancel)
            c->p->ops.runtime_cancel(c->p, c->p->userdata);
    }
    c->running = c->timed_out = false;
}

/* The last lines of an exec run's output (at most 5 and
 * HEALTH_OUTPUT_MAX bytes), sanitized; NULL when there was none. last gets
 * the last non-empty line. */
static char *exec_output(Check *c, char **last)
{
    *last = NULL;
    size_t n = c->out_len;
    while (n && (c->out[n - 1] == '\n' || c->out[n - 1] == '\r'))
        n--;
    if (!n)
        return NULL;
    size_t start = n, lines = 0;
    while (start && lines < 5) {
        if (c->out[start - 1] == '\n' && ++lines == 5)
            break;
        start--;
    }
    size_t ls = n;
    while (ls && c->out[ls - 1] != '\n')
        ls--;
    *last = sanitize(c->out + ls, n - ls, 200);
    /* Newlines stay: they separate the lines. */
    char *out = xstrndup(c->out + start, n - start);
    for (char *s = out; *s; s++)
        if ((unsigned char)*s < 0x20 && *s != '\n')
            *s = '?';
    return out;
}

/* A run ended: records its result (reason and output taken; output may be
 * NULL) and schedules the next run. */
static void check_done(Check *c, CheckResult res, char *reason, char *output)
{
    long long now = mono_ms();
    check_release(c);
    if (strlen(reason) > HEALTH_REASON_MAX)
        strcpy(reason + HEALTH_REASON_MAX - 3, "...");
    set_str(&c->reason, reason);
    set_str(&c->output, output);
    if (res == RESULT_PASS && c->result != RESULT_PASS)
        c->passing_since_ms = now;
    else if (res != RESULT_PASS)
        c->passing_since_ms = 0;
    c->result = res;
    c->result_ms = now;
    c->result_run = c->run;
    check_schedule(c, now + c->def->interval_ms);
    probe_update(c->p, false);
}

static void check_finish(Check *c, CheckResult res, char *reason)
{
    check_done(c, res, reason, NULL);
}

static void check_fail(Check *c, char *reason)
{
    check_finish(c, RESULT_FAIL, reason);
}

static void check_fail_errno(Check *c, const char *what, int e)
{
    char buf[128];
    check_fail(c, xasprintf("%s: %s%s", c->desc, what, errno_text(e, buf)));
}

/* -- exec -- */

static int on_exec_output(sd_event_source *s, int fd, uint32_t revents, void *userdata)
{
    Check *c = userdata;
    char buf[4096];
    for (int i = 0; i < 16; i++) { /* a bounded turn: the loop has other work */
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n <= 0) {
            if (n == 0 || errno != EAGAIN)
                c->out_src = sd_event_source_disable_unref(c->out_src); /* EOF: the exit will come */
            return 0;
        }
        /* Keep the last HEALTH_OUTPUT_MAX bytes. */
        if ((size_t)n >= sizeof(c->out)) {
            memcpy(c->out, buf + n - sizeof(c->out), sizeof(c->out));
            c->out_len = sizeof(c->out);
        } else {
            size_t keep = c->out_len + (size_t)n > sizeof(c->out) ? sizeof(c->out) - (size_t)n : c->out_len;
            memmove(c->out, c->out + c->out_len - keep, keep);
            memcpy(c->out + keep, buf, (size_t)n);
            c->out_len = keep + (size_t)n;
        }
    }
    return 0;
}

static int on_exec_exit(sd_event_source *s, const siginfo_t *si, void *userdata)
{
    Check *c = userdata;
    /* The child is a zombie until this returns (sd-event reaps it then), so
     * its group id is still its own: what it left behind goes now. */
    (void)kill(-c->pid, SIGKILL);
    c->pid = 0;
    c->child_src = sd_event_source_disable_unref(c->child_src);
    /* What it wrote last, as far as the pipe holds it (bounded: a
     * grandchild that keeps writing was just killed). */
    if (c->out_src)
        (void)on_exec_output(c->out_src, c->out_fd, EPOLLIN, c);
    char *last = NULL;
    char *output = exec_output(c, &last);
    char *reason;
    CheckResult res = RESULT_FAIL;
    if (c->timed_out)
        reason = xasprintf("%s: timed out after %ld ms%s%s", c->desc, c->def->timeout_ms, last ? ": " : "",
                           last ? last : "");
    else if (si->si_code == CLD_EXITED && si->si_status == 0) {
        res = RESULT_PASS;
        reason = xasprintf("%s: exit 0", c->desc);
    } else if (si->si_code == CLD_EXITED)
        reason = xasprintf("%s: exit %d%s%s", c->desc, si->si_status, last ? ": " : "", last ? last : "");
    else
        reason = xasprintf("%s: killed by signal %d (%s)%s%s", c->desc, si->si_status, strsignal(si->si_status),
                           last ? ": " : "", last ? last : "");
    free(last);
    check_done(c, res, reason, output);
    return 0;
}

/* The environment of a check: reld's, without what belongs to reld alone
 * (its systemd variables, which name reld's sockets and pid), with
 * RELD_PROCESS and RELD_PID of the process it checks. */
static bool env_is_relds(const char *e)
{
    static const char *const prefixes[] = {"NOTIFY_SOCKET=", "WATCHDOG_", "LISTEN_", "JOURNAL_STREAM=", "RELD_"};
    for (size_t i = 0; i < sizeof(prefixes) / sizeof(prefixes[0]); i++)
        if (strncmp(e, prefixes[i], strlen(prefixes[i])) == 0)
            return true;
    return false;
}

/* In the check's child (async-signal-safe only): errno to reld through
 * the exec-error pipe, and exit. */
static _Noreturn void exec_child_fail(int errfd)
{
    int e = errno;
    (void)!write(errfd, &e, sizeof(e));
    _exit(127);
}

/* Runs the check as the process it checks runs (proc_identity(): its user,
 * groups and capability bounding set), hence fork and not posix_spawn,
 * which cannot change ids. As posix_spawn does, reld waits for the exec:
 * a check that cannot be run at all (no such file) fails here with errno,
 * through a close-on-exec pipe. *why: a line, when the identity cannot be
 * resolved (then -ESRCH or -EPERM). */
static int exec_start(Check *c, char **why)
{
    ProcIdentity id;
    Diag d = {0};
    int r = proc_identity(c->p->def, &id, &d); /* its warning (root) was the process's to give */
    if (r < 0) {
        *why = d.errors.n ? xstrdup(d.errors.v[0]) : NULL;
        diag_clear(&d);
        return r;
    }
    diag_clear(&d);
    int pipefd[2], errp[2];
    if (pipe2(pipefd, O_CLOEXEC | O_NONBLOCK) < 0) {
        proc_identity_clear(&id);
        return -errno;
    }
    if (pipe2(errp, O_CLOEXEC) < 0) {
        r = -errno;
        close(pipefd[0]);
        close(pipefd[1]);
        proc_identity_clear(&id);
        return r;
    }
    StrVec env = {0};
    for (char **e = environ; *e; e++)
        if (!env_is_relds(*e))
            strvec_push(&env, *e);
    strvec_push_take(&env, xasprintf("RELD_PROCESS=%s", c->p->label));
    strvec_push_take(&env, xasprintf("RELD_PID=%d", (int)c->p->pid));
    strvec_push(&env, NULL);
    const StrVec *argv = &c->def->argv;
    char **args = xcalloc(argv->n + 1, sizeof(char *));
    for (size_t i = 0; i < argv->n; i++)
        args[i] = argv->v[i];
    char *path = argv->v[0][0] == '/' ? xstrdup(argv->v[0]) : xasprintf("%s/%s", c->p->dir, argv->v[0]);
    const char *dir = c->p->dir;

    pid_t pid = fork();
    if (pid == 0) {
        /* stdin /dev/null, stdout and stderr the pipe, nothing else kept
         * past the exec; a process group of its own (killed whole at the
         * timeout); no signal blocked, SIGPIPE (reld ignores it) default. */
        int devnull = open("/dev/null", O_RDONLY); /* close_range marks it if it is not 0 */
        if (devnull < 0 || dup2(devnull, 0) < 0 || dup2(pipefd[1], 1) < 0 || dup2(pipefd[1], 2) < 0 ||
            close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) < 0)
            exec_child_fail(errp[1]);
        (void)setpgid(0, 0); /* cannot fail for ourselves right after fork */
        sigset_t none;
        sigemptyset(&none);
        (void)sigprocmask(SIG_SETMASK, &none, NULL); /* cannot fail with a valid set */
        (void)signal(SIGPIPE, SIG_DFL);              /* cannot fail for SIGPIPE */
        proc_identity_apply(&id);                    /* its failure: a line on stderr, exit 122 */
        if (chdir(dir) < 0)
            exec_child_fail(errp[1]);
        execve(path, args, env.v);
        exec_child_fail(errp[1]);
    }
    r = pid < 0 ? -errno : 0;
    close(errp[1]);
    close(pipefd[1]);
    proc_identity_clear(&id);
    free(path);
    free(args);
    env.n--; /* the NULL at the end is no string to free */
    strvec_clear(&env);
    if (r == 0) {
        int e = 0;
        ssize_t n;
        while ((n = read(errp[0], &e, sizeof(e))) < 0 && errno == EINTR)
            ;
        if (n == (ssize_t)sizeof(e)) { /* it could not start: reap it, say why */
            (void)waitpid(pid, NULL, 0);
            r = -e;
        }
    }
    close(errp[0]);
    if (r < 0) {
        close(pipefd[0]);
        return r;
    }
    c->pid = pid;
    c->out_fd = pipefd[0];
    c->out_len = 0;
    r = sd_event_add_child(c->p->ev, &c->child_src, c->pid, WEXITED, on_exec_exit, c);
    if (r < 0)
        return r; /* check_release kills and reaps it */
    if (sd_event_add_io(c->p->ev, &c->out_src, c->out_fd, EPOLLIN, on_exec_output, c) < 0)
        c->out_src = NULL; /* its output is lost, its exit still counts */
    return 0;
}

/* -- tcp, http -- */

static int on_socket(sd_event_source *s, int fd, uint32_t revents, void *userdata);

static int socket_start(Check *c)
{
    union {
        struct sockaddr sa;
        struct sockaddr_in in;
        struct sockaddr_in6 in6;
    } a = {0};
    socklen_t len;
    if (inet_pton(AF_INET, c->def->host, &a.in.sin_addr) == 1) {
        a.in.sin_family = AF_INET;
        a.in.sin_port = htons((uint16_t)c->def->port);
        len = sizeof(a.in);
    } else if (inet_pton(AF_INET6, c->def->host, &a.in6.sin6_addr) == 1) {
        a.in6.sin6_family = AF_INET6;
        a.in6.sin6_port = htons((uint16_t)c->def->port);
        len = sizeof(a.in6);
    } else {
        return -EINVAL; /* appdefs let no other address through */
    }
    c->fd = socket(a.sa.sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return -errno;
    if (connect(c->fd, &a.sa, len) < 0 && errno != EINPROGRESS)
        return -errno;
    c->answer_len = 0;
    if (c->def->kind == HEALTH_CHECK_HTTP) {
        bool v6 = a.sa.sa_family == AF_INET6;
        c->req = xasprintf("GET %s HTTP/1.1\r\nHost: %s%s%s:%d\r\nUser-Agent: reld-health\r\nAccept: */*\r\n"
                           "Connection: close\r\n\r\n",
                           c->def->path, v6 ? "[" : "", c->def->host, v6 ? "]" : "", c->def->port);
        c->req_len = strlen(c->req);
        c->req_sent = 0;
    }
    /* Writable once connected (or failed): the connect's result comes then. */
    return sd_event_add_io(c->p->ev, &c->io_src, c->fd, EPOLLOUT, on_socket, c);
}

/* "HTTP/1.1 200 OK": the status, or -1. */
static int parse_status_line(const char *s, size_t n)
{
    if (n < 12 || memcmp(s, "HTTP/", 5) != 0 || !isdigit((unsigned char)s[5]) || s[6] != '.' ||
        !isdigit((unsigned char)s[7]) || s[8] != ' ')
        return -1;
    for (int i = 9; i < 12; i++)
        if (!isdigit((unsigned char)s[i]))
            return -1;
    if (n > 12 && s[12] != ' ' && s[12] != '\r' && s[12] != '\n')
        return -1;
    return (s[9] - '0') * 100 + (s[10] - '0') * 10 + (s[11] - '0');
}

/* The answer so far: decides when the status line is complete, the
 * answer ended, or HEALTH_ANSWER_MAX bytes came without one. */
static void http_answer(Check *c, bool eof)
{
    const char *nl = memchr(c->answer, '\n', c->answer_len);
    if (!nl && !eof && c->answer_len < HEALTH_ANSWER_MAX)
        return; /* more to come */
    size_t line = nl ? (size_t)(nl - c->answer) : c->answer_len;
    int status = parse_status_line(c->answer, line);
    if (status < 0 && c->answer_len == 0) {
        check_fail(c, xasprintf("%s: connection closed without an answer", c->desc));
    } else if (status < 0) {
        char *q = sanitize(c->answer, line, 60);
        check_fail(c, xasprintf("%s: no HTTP status line in the answer: '%s'", c->desc, q));
        free(q);
    } else if (status != c->def->status && c->def->status == 200) {
        check_fail(c, xasprintf("%s: status %d", c->desc, status));
    } else if (status != c->def->status) {
        check_fail(c, xasprintf("%s: status %d, not %d", c->desc, status, c->def->status));
    } else {
        check_finish(c, RESULT_PASS, xasprintf("%s: status %d", c->desc, status));
    }
}

static int on_socket(sd_event_source *s, int fd, uint32_t revents, void *userdata)
{
    Check *c = userdata;
    /* A failed connect, or a reset later, shows here. */
    int err = 0;
    socklen_t elen = sizeof(err);
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) < 0)
        err = errno;
    if (err) {
        check_fail_errno(c, "", err);
        return 0;
    }
    if (c->def->kind == HEALTH_CHECK_TCP) {
        check_finish(c, RESULT_PASS, xasprintf("%s: connected", c->desc));
        return 0;
    }
    if (c->req_sent < c->req_len) {
        ssize_t n = send(fd, c->req + c->req_sent, c->req_len - c->req_sent, MSG_NOSIGNAL);
        if (n < 0 && errno != EAGAIN) {
            check_fail_errno(c, "cannot send the request: ", errno);
            return 0;
        }
        if (n > 0)
            c->req_sent += (size_t)n;
        if (c->req_sent == c->req_len && sd_event_source_set_io_events(s, EPOLLIN) < 0) {
            check_fail(c, xasprintf("%s: cannot wait for the answer", c->desc));
            return 0;
        }
        return 0;
    }
    ssize_t n = recv(fd, c->answer + c->answer_len, HEALTH_ANSWER_MAX - c->answer_len, 0);
    if (n < 0 && errno == EAGAIN)
        return 0;
    if (n < 0) {
        check_fail_errno(c, "", errno);
        return 0;
    }
    c->answer_len += (size_t)n;
    http_answer(c, n == 0);
    return 0;
}

/* -- runtime -- */

static void runtime_answer(Check *c, CheckResult res, char *reason)
{
    c->p->asking = NULL; /* answered: nothing to cancel */
    check_finish(c, res, reason);
}

void health_probe_runtime_answer(HealthProbe *p, int r, bool healthy, const char *message)
{
    Check *c = p ? p->asking : NULL;
    if (!c)
        return;
    char buf[128];
    char *m = message ? sanitize(message, strlen(message), 300) : NULL;
    if (r == -ETIMEDOUT)
        runtime_answer(c, RESULT_FAIL, xasprintf("runtime: no answer to the health command"));
    else if (r < 0)
        runtime_answer(c, RESULT_FAIL, xasprintf("runtime: no answer: %s", errno_text(-r, buf)));
    else if (healthy)
        runtime_answer(c, RESULT_PASS, xasprintf("runtime: healthy%s%s", m && *m ? ": " : "", m && *m ? m : ""));
    else
        runtime_answer(c, RESULT_FAIL, xasprintf("runtime: %s", m && *m ? m : "unhealthy"));
    free(m);
}

void health_probe_runtime_reply(HealthProbe *p, const json_t *reply, int r)
{
    if (!p || !p->asking)
        return;
    if (r < 0) {
        health_probe_runtime_answer(p, r, false, NULL);
        return;
    }
    const char *message = json_string_value(json_object_get(reply, "message"));
    json_t *healthy = json_object_get(reply, "healthy");
    if (!json_is_true(json_object_get(reply, "ok"))) {
        char *m = xasprintf("the health command was refused: %s", message ? message : "no reason given");
        health_probe_runtime_answer(p, 0, false, m);
        free(m);
    } else if (!json_is_boolean(healthy)) {
        health_probe_runtime_answer(p, 0, false, "its answer to the health command has no 'healthy'");
    } else {
        health_probe_runtime_answer(p, 0, json_is_true(healthy), message);
    }
}

/* -- runs -- */

static int on_check_timer(sd_event_source *s, uint64_t usec, void *userdata);

static void check_schedule(Check *c, long long at_ms)
{
    if (add_timer(c->p->ev, &c->timer, at_ms, on_check_timer, c) < 0) {
        /* No timer, no runs: say so where the state is read. */
        set_str(&c->reason, xasprintf("%s: cannot be scheduled", c->desc));
        c->result = RESULT_FAIL;
        c->passing_since_ms = 0;
    }
}

static void check_start(Check *c)
{
    long long now = mono_ms();
    c->running = true;
    c->timed_out = false;
    c->run = ++runs;
    int r;
    char *why = NULL;
    switch (c->def->kind) {
    case HEALTH_CHECK_EXEC:
        if ((r = exec_start(c, &why)) < 0) {
            if (why)
                check_fail(c, xasprintf("%s: cannot run as its process: %s", c->desc, why));
            else
                check_fail_errno(c, "cannot run: ", -r);
            free(why);
            return;
        }
        break;
    case HEALTH_CHECK_TCP:
    case HEALTH_CHECK_HTTP:
        if ((r = socket_start(c)) < 0) {
            check_fail_errno(c, "", -r);
            return;
        }
        break;
    case HEALTH_CHECK_RUNTIME:
        if (!c->p->ops.runtime_ask) {
            check_fail(c, xasprintf("runtime: no way to ask the process"));
            return;
        }
        c->p->asking = c;
        r = c->p->ops.runtime_ask(c->p, c->p->userdata);
        if (r == -EBUSY) { /* no result this time */
            c->p->asking = NULL;
            c->running = false;
            check_schedule(c, now + c->def->interval_ms);
            return;
        }
        if (r < 0) {
            c->p->asking = NULL;
            check_fail_errno(c, "cannot ask: ", -r);
            return;
        }
        if (!c->running) /* answered at once */
            return;
        break;
    case _HEALTH_CHECK_KIND_MAX:
    default:
        check_fail(c, xasprintf("%s: unknown kind", c->desc));
        return;
    }
    if (add_timer(c->p->ev, &c->timer, now + c->def->timeout_ms, on_check_timer, c) < 0)
        check_fail(c, xasprintf("%s: no timer for its timeout", c->desc));
}

static int on_check_timer(sd_event_source *s, uint64_t usec, void *userdata)
{
    Check *c = userdata;
    if (!c->running) {
        check_start(c);
    } else if (c->def->kind == HEALTH_CHECK_EXEC && c->pid > 0) {
        /* Its exit, which SIGKILL makes immediate, ends the run. */
        c->timed_out = true;
        (void)kill(-c->pid, SIGKILL);
        (void)kill(c->pid, SIGKILL);
    } else {
        check_fail(c, xasprintf("%s: timed out after %ld ms", c->desc, c->def->timeout_ms));
    }
    return 0;
}

static char *check_desc(const HealthCheck *d)
{
    switch (d->kind) {
    case HEALTH_CHECK_EXEC:
        return xasprintf("exec %s", d->argv.n ? d->argv.v[0] : "?");
    case HEALTH_CHECK_TCP:
        return xasprintf("tcp %s", d->target);
    case HEALTH_CHECK_HTTP:
        return xstrdup(d->target);
    case HEALTH_CHECK_RUNTIME:
    case _HEALTH_CHECK_KIND_MAX:
    default:
        return xstrdup(health_check_kind_name(d->kind));
    }
}

/* Stops every run and forgets every result. */
static void checks_reset(HealthProbe *p)
{
    for (size_t i = 0; i < p->n_checks; i++) {
        Check *c = &p->checks[i];
        check_release(c);
        c->timer = sd_event_source_disable_unref(c->timer);
        c->result = RESULT_NONE;
        c->reason = (free(c->reason), NULL);
        c->output = (free(c->output), NULL);
        c->result_ms = c->passing_since_ms = 0;
        c->result_run = 0;
    }
}

static void checks_free(HealthProbe *p)
{
    checks_reset(p);
    for (size_t i = 0; i < p->n_checks; i++)
        free(p->checks[i].desc);
    free(p->checks);
    p->checks = NULL;
    p->n_checks = 0;
}

static void checks_build(HealthProbe *p)
{
    p->n_checks = p->def->n_checks;
    p->checks = xcalloc(p->n_checks + 1, sizeof(Check));
    for (size_t i = 0; i < p->n_checks; i++)
        p->checks[i] =
            (Check){.p = p, .def = &p->def->checks[i], .desc = check_desc(&p->def->checks[i]), .out_fd = -1, .fd = -1};
}

/* ---- the probe ------------------------------------------------------------ */

int health_probe_new(sd_event *ev, const char *label, const ProcessDef *def, const char *dir, const HealthProbeOps *ops,
                     void *userdata, HealthProbe **ret)
{
    if (!ev || !label || !def || !dir || !ret)
        return -EINVAL;
    HealthProbe *p = xcalloc(1, sizeof(*p));
    *p = (HealthProbe){.ev = sd_event_ref(ev),
                       .label = xstrdup(label),
                       .def = def,
                       .dir = xstrdup(dir),
                       .userdata = userdata,
                       .state = HEALTH_DOWN,
                       .state_since_ms = mono_ms()};
    if (ops)
        p->ops = *ops;
    checks_build(p);
    *ret = p;
    return 0;
}

HealthProbe *health_probe_free(HealthProbe *p)
{
    if (!p)
        return NULL;
    checks_free(p);
    for (size_t i = 0; i < p->n_gates; i++) {
        HealthGate *g = p->gates[i];
        for (size_t k = 0; k < g->n; k++)
            if (g->members[k].p == p)
                g->members[k].p = NULL;
        gate_eval(g, false);
    }
    free(p->gates);
    free(p->label);
    free(p->dir);
    free(p->exit_why);
    sd_event_unref(p->ev);
    free(p);
    return NULL;
}

static void checks_start_all(HealthProbe *p)
{
    for (size_t i = 0; i < p->n_checks; i++)
        check_schedule(&p->checks[i], mono_ms()); /* from the loop: the owner is not called back in its call */
}

void health_probe_started(HealthProbe *p, pid_t pid)
{
    checks_reset(p);
    p->running = true;
    p->final = false;
    p->pid = pid;
    p->starts++;
    p->running_since_ms = mono_ms();
    checks_start_all(p);
    probe_update(p, true);
}

void health_probe_exited(HealthProbe *p, const char *why, bool final)
{
    checks_reset(p);
    p->running = false;
    p->final = final;
    p->pid = 0;
    set_str(&p->exit_why, why ? sanitize(why, strlen(why), HEALTH_REASON_MAX) : NULL);
    probe_update(p, true);
}

json_t *health_probe_save(const HealthProbe *p)
{
    json_t *checks = json_array();
    for (size_t i = 0; i < p->n_checks; i++) {
        const Check *c = &p->checks[i];
        json_array_append_new(checks, json_pack("{s:i, s:s?, s:s?, s:I, s:I}", "result", (int)c->result, "reason",
                                                c->reason, "output", c->output, "result_ms", (json_int_t)c->result_ms,
                                                "passing_since_ms", (json_int_t)c->passing_since_ms));
    }
    return json_pack("{s:b, s:b, s:i, s:I, s:s?, s:i, s:I, s:o}", "running", p->running, "final", p->final, "starts",
                     (int)p->starts, "running_since_ms", (json_int_t)p->running_since_ms, "exit_why", p->exit_why,
                     "state", (int)p->state, "state_since_ms", (json_int_t)p->state_since_ms, "checks", checks);
}

void health_probe_restore(HealthProbe *p, const json_t *saved, pid_t pid)
{
    checks_reset(p);
    p->running = pid > 0;
    p->pid = pid;
    p->final = json_is_true(json_object_get(saved, "final"));
    p->starts = (unsigned)json_integer_value(json_object_get(saved, "starts"));
    p->running_since_ms = json_integer_value(json_object_get(saved, "running_since_ms"));
    const char *why = json_string_value(json_object_get(saved, "exit_why"));
    set_str(&p->exit_why, why ? sanitize(why, strlen(why), HEALTH_REASON_MAX) : NULL);
    json_int_t state = json_integer_value(json_object_get(saved, "state"));
    p->state = state >= 0 && state < _HEALTH_STATE_MAX ? (HealthState)state : HEALTH_DOWN;
    p->state_since_ms = json_integer_value(json_object_get(saved, "state_since_ms"));
    json_t *checks = json_object_get(saved, "checks"), *v;
    size_t i;
    /* The results, when the checks are the ones saved (same definition). */
    json_array_foreach(checks, i, v) if (i < p->n_checks && json_array_size(checks) == p->n_checks)
    {
        Check *c = &p->checks[i];
        json_int_t res = json_integer_value(json_object_get(v, "result"));
        const char *reason = json_string_value(json_object_get(v, "reason")),
                   *output = json_string_value(json_object_get(v, "output"));
        c->result = res == RESULT_PASS || res == RESULT_FAIL ? (CheckResult)res : RESULT_NONE;
        set_str(&c->reason, reason ? xstrdup(reason) : NULL);
        set_str(&c->output, output ? xstrdup(output) : NULL);
        c->result_ms = json_integer_value(json_object_get(v, "result_ms"));
        c->passing_since_ms = json_integer_value(json_object_get(v, "passing_since_ms"));
    }
    if (p->running)
        checks_start_all(p);
    probe_update(p, true);
}

void health_probe_set_definition(HealthProbe *p, const ProcessDef *def, const char *dir)
{
    checks_free(p);
    p->def = def;
    set_str(&p->dir, xstrdup(dir));
    checks_build(p);
    if (p->running)
        checks_start_all(p);
    probe_update(p, true);
}

void health_probe_check_now(HealthProbe *p)
{
    for (size_t i = 0; p && p->running && i < p->n_checks; i++)
        if (!p->checks[i].running)
            check_schedule(&p->checks[i], mono_ms());
}

const char *health_probe_label(const HealthProbe *p)
{
    return p->label;
}

HealthState health_probe_state(const HealthProbe *p)
{
    return p->state;
}

static const Check *failed_check(const HealthProbe *p)
{
    for (size_t i = 0; i < p->n_checks; i++)
        if (p->checks[i].result == RESULT_FAIL)
            return &p->checks[i];
    return NULL;
}

const char *health_probe_reason(const HealthProbe *p)
{
    if (!p->running)
        return p->exit_why;
    const Check *c = failed_check(p);
    return c ? c->reason : NULL;
}

static HealthState probe_compute(const HealthProbe *p)
{
    if (!p->running)
        return HEALTH_DOWN;
    if (failed_check(p))
        return HEALTH_UNHEALTHY;
    for (size_t i = 0; i < p->n_checks; i++)
        if (p->checks[i].result == RESULT_NONE)
            return HEALTH_STARTING;
    return HEALTH_HEALTHY;
}

static void probe_update(HealthProbe *p, bool from_owner)
{
    HealthState old = p->state, now = probe_compute(p);
    if (now != old) {
        p->state = now;
        p->state_since_ms = mono_ms();
        if (!from_owner && p->ops.changed)
            p->ops.changed(p, old, p->userdata);
    }
    /* A gate may be freed by nobody here: verdicts go out from the loop. */
    for (size_t i = 0; i < p->n_gates; i++)
        gate_eval(p->gates[i], false);
}

json_t *health_probe_status(const HealthProbe *p)
{
    char t[32];
    iso_time(p->state_since_ms, t);
    json_t *checks = json_array();
    for (size_t i = 0; i < p->n_checks; i++) {
        const Check *c = &p->checks[i];
        json_t *o = json_pack("{s:s, s:s}", "check", c->desc, "result", result_names[c->result]);
        if (c->reason)
            json_object_set_new(o, "reason", json_string(c->reason));
        if (c->result != RESULT_NONE) {
            char at[32];
            iso_time(c->result_ms, at);
            json_object_set_new(o, "at", json_string(at));
        }
        if (c->output)
            json_object_set_new(o, "output", json_string(c->output));
        json_array_append_new(checks, o);
    }
    json_t *s = json_pack("{s:s, s:s, s:i, s:o}", "state", health_state_name(p->state), "since", t, "restarts",
                          p->starts ? (int)p->starts - 1 : 0, "checks", checks);
    const char *why = health_probe_reason(p);
    if (why)
        json_object_set_new(s, "reason", json_string(why));
    return s;
}

/* ---- the gate ------------------------------------------------------------- */

/* When member m became healthy for the gate, or 0 with why (new) saying
 * what it lacks. */
static long long member_ok_since(const HealthGate *g, const Member *m, char **why)
{
    const HealthProbe *p = m->p;
    /* Starts since the gate began, less a first start of a process that
     * was not running then. */
    unsigned starts = p->starts - m->starts_at, restarts = starts - (starts && !m->running_at ? 1 : 0);
    char restarted[64] = "";
    if (restarts)
        snprintf(restarted, sizeof(restarted), "restarted %u time%s; ", restarts, restarts == 1 ? "" : "s");
    if (!p->running) {
        if (p->final)
            *why = xasprintf("%s: stopped for good (%slast exit: %s)", p->label, restarted,
                             p->exit_why ? p->exit_why : "unknown");
        else if (p->exit_why)
            *why = xasprintf("%s: not running (%slast exit: %s)", p->label, restarted, p->exit_why);
        else
            *why = xasprintf("%s: not running", p->label);
        return 0;
    }
    long long since = p->running_since_ms > g->start_ms ? p->running_since_ms : g->start_ms;
    for (size_t i = 0; i < p->n_checks; i++) {
        const Check *c = &p->checks[i];
        if (c->result == RESULT_FAIL) {
            *why = xasprintf("%s: %s%s", p->label, restarted, c->reason);
            return 0;
        }
        if (c->result == RESULT_NONE || c->result_run <= g->runs_at_start) {
            *why = xasprintf("%s: %s%s: no result yet", p->label, restarted, c->desc);
            return 0;
        }
        if (c->passing_since_ms > since)
            since = c->passing_since_ms;
    }
    return since ? since : 1;
}

static int on_gate_verdict(sd_event_source *s, void *userdata)
{
    HealthGate *g = userdata;
    g->verdict = sd_event_source_disable_unref(g->verdict);
    g->done(g, g->healthy, g->reason, g->userdata); /* may free g */
    return 0;
}

static void gate_decide(HealthGate *g, bool healthy, char *reason)
{
    g->decided = true;
    g->healthy = healthy;
    set_str(&g->reason, reason);
    g->wake = sd_event_source_disable_unref(g->wake);
    g->deadline = sd_event_source_disable_unref(g->deadline);
    if (g->done && sd_event_add_defer(g->ev, &g->verdict, on_gate_verdict, g) < 0)
        g->verdict = NULL; /* out of memory in sd-event: the owner reads health_gate_decided() */
}

static int on_gate_wake(sd_event_source *s, uint64_t usec, void *userdata)
{
    gate_eval(userdata, false);
    return 0;
}

static int on_gate_deadline(sd_event_source *s, uint64_t usec, void *userdata)
{
    gate_eval(userdata, true);
    return 0;
}

/* Joins the reasons of up to 3 members, "(and N more)". */
static void add_reason(char **all, size_t *n, char *why)
{
    if (++*n <= 3) {
        char *j = *all ? xasprintf("%s; %s", *all, why) : xstrdup(why);
        set_str(all, j);
    }
    free(why);
}

static void gate_eval(HealthGate *g, bool at_deadline)
{
    if (g->decided)
        return;
    long long now = mono_ms(), ready_at = g->start_ms + g->min_healthy_ms;
    char *reasons = NULL;
    size_t n_bad = 0;
    bool all_ok = true;
    for (size_t i = 0; i < g->n; i++) {
        Member *m = &g->members[i];
        if (!m->p)
            continue; /* freed: no longer a member */
        char *why = NULL;
        long long since = member_ok_since(g, m, &why);
        m->ok_since = since;
        if (!since) {
            all_ok = false;
            if (m->p->final) { /* it will not come back: no use waiting */
                gate_decide(g, false, why);
                free(reasons);
                return;
            }
            add_reason(&reasons, &n_bad, why);
            continue;
        }
        if (since + g->min_healthy_ms > ready_at)
            ready_at = since + g->min_healthy_ms;
        if (at_deadline && since + g->min_healthy_ms > now)
            add_reason(&reasons, &n_bad,
                       xasprintf("%s: healthy for %lld ms, not the %ld ms required", m->p->label, now - since,
                                 g->min_healthy_ms));
    }
    if (all_ok && now >= ready_at) {
        free(reasons);
        gate_decide(g, true, xstrdup(""));
        return;
    }
    if (at_deadline) {
        char *r = n_bad > 3 ? xasprintf("%s (and %zu more)", reasons, n_bad - 3)
                            : xstrdup(reasons ? reasons : "not healthy in time");
        free(reasons);
        char *full = xasprintf("not healthy within %ld ms: %s", g->timeout_ms, r);
        free(r);
        gate_decide(g, false, full);
        return;
    }
    free(reasons);
    if (all_ok) {
        if (add_timer(g->ev, &g->wake, ready_at, on_gate_wake, g) < 0)
            gate_decide(g, false, xstrdup("no timer for the health window"));
    } else if (g->wake) {
        (void)sd_event_source_set_enabled(g->wake, SD_EVENT_OFF); /* cannot fail on an existing source */
    }
}

int health_gate_new(sd_event *ev, HealthProbe *const *members, size_t n, long min_healthy_ms, long timeout_ms,
                    HealthGateDone done, void *userdata, HealthGate **ret)
{
    if (!ev || (n && !members) || min_healthy_ms < 0 || timeout_ms <= 0 || !ret)
        return -EINVAL;
    for (size_t i = 0; i < n; i++)
        if (!members[i])
            return -EINVAL;
    HealthGate *g = xcalloc(1, sizeof(*g));
    *g = (HealthGate){.ev = sd_event_ref(ev),
                      .n = n,
                      .min_healthy_ms = min_healthy_ms,
                      .timeout_ms = timeout_ms,
                      .start_ms = mono_ms(),
                      .runs_at_start = runs,
                      .done = done,
                      .userdata = userdata};
    g->members = xcalloc(n + 1, sizeof(Member));
    int r = add_timer(ev, &g->deadline, g->start_ms + timeout_ms, on_gate_deadline, g);
    if (r < 0) {
        free(g->members);
        sd_event_unref(g->ev);
        free(g);
        return r;
    }
    for (size_t i = 0; i < n; i++) {
        HealthProbe *p = members[i];
        g->members[i] = (Member){.p = p, .starts_at = p->starts, .running_at = p->running};
        GROW(p->gates, p->gates_cap, p->n_gates + 1);
        p->gates[p->n_gates++] = g;
        health_probe_check_now(p);
    }
    gate_eval(g, false);
    *ret = g;
    return 0;
}

HealthGate *health_gate_free(HealthGate *g)
{
    if (!g)
        return NULL;
    for (size_t i = 0; i < g->n; i++) {
        HealthProbe *p = g->members[i].p;
        for (size_t k = 0; p && k < p->n_gates; k++)
            if (p->gates[k] == g) {
                p->gates[k] = p->gates[--p->n_gates];
                break;
            }
    }
    sd_event_source_disable_unref(g->wake);
    sd_event_source_disable_unref(g->deadline);
    sd_event_source_disable_unref(g->verdict);
    free(g->members);
    free(g->reason);
    sd_event_unref(g->ev);
    free(g);
    return NULL;
}

bool health_gate_decided(const HealthGate *g)
{
    return g->decided;
}

json_t *health_gate_status(const HealthGate *g)
{
    long long now = mono_ms();
    int healthy = 0, of = 0;
    for (size_t i = 0; i < g->n; i++) {
        if (!g->members[i].p)
            continue;
        of++;
        if (g->members[i].ok_since && g->members[i].ok_since + g->min_healthy_ms <= now)
            healthy++;
    }
    long long left = g->decided ? 0 : g->start_ms + g->timeout_ms - now;
    return json_pack("{s:i, s:i, s:I, s:b}", "healthy", healthy, "of", of, "remaining_ms",
                     (json_int_t)(left > 0 ? left : 0), "decided", g->decided);
}
