/* Supervision of the running release's processes (daemon.h). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "daemon.h"
#include "relup.h"

extern char **environ;

typedef struct App App;
typedef struct Call Call;

/* One output pipe of one run of a process: it may still hold lines after
 * the process exited and a new run started, so it keeps its own pid. */
typedef struct OutPipe {
    char *label;
    pid_t pid;
    sd_event_source *src;
    char line[4096];
    size_t len;
} OutPipe;

typedef struct Proc {
    App *app;
    const ProcessDef *def;
    char *path;         /* the executable, absolute */
    char *label;        /* "app/process" */
    StrVec modules_env; /* name=/abs/path.so */
    int *listen_fds;
    size_t n_listen;
    char *fdnames;
    pid_t pid;
    int restarts;
    bool stopping;
    sd_event_source *child_src, *ctl_src;
    int ctl_fd;
    char ctl_buf[65536];
    size_t ctl_len;
    json_t *modules; /* from the process's hello and replies: [{name, version, ...}] */
    Call *call;      /* the executor's request out to it, if any */
} Proc;

struct App {
    Supervisor *s;
    char *name, *vsn;
    Proc **procs;
    size_t n_procs;
    long long restart_ms[SUPERVISOR_MAX_RESTARTS + 1];
    size_t n_restarts;
    bool stopped;
};

struct Supervisor {
    sd_event *ev;
    History *hist;
    char *root;
    App **apps; /* in start order */
    size_t n_apps;
};

static void record(Proc *p, const char *kind, json_t *detail)
{
    json_object_set_new(detail, "app", json_string(p->app->name));
    json_object_set_new(detail, "process", json_string(p->def->name));
    history_event(p->app->s->hist, kind, "reld", p->app->vsn, detail);
    json_decref(detail);
}

/* ---- listening sockets ---------------------------------------------------- */

static int open_listener(const char *spec)
{
    int fd;
    if (strncmp(spec, "unix:", 5) == 0) {
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        snprintf(a.sun_path, sizeof(a.sun_path), "%s", spec + 5);
        unlink(a.sun_path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, 512) < 0)
            goto fail;
        return fd;
    }
    const char *colon = strrchr(spec, ':');
    char host[256];
    snprintf(host, sizeof(host), "%.*s", (int)(colon - spec), spec);
    int port = atoi(colon + 1), one = 1;
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port)};
    struct sockaddr_in a4 = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    bool v6 = host[0] == '[';
    if (v6) {
        host[strlen(host) - 1] = 0;
        if (inet_pton(AF_INET6, host + 1, &a6.sin6_addr) != 1)
            return -EINVAL;
    } else if (inet_pton(AF_INET, host, &a4.sin_addr) != 1) {
        return -EINVAL;
    }
    fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if ((v6 ? bind(fd, (struct sockaddr *)&a6, sizeof(a6)) : bind(fd, (struct sockaddr *)&a4, sizeof(a4))) < 0 ||
        listen(fd, 512) < 0)
        goto fail;
    return fd;
fail:;
    int r = -errno;
    if (fd >= 0)
        close(fd);
    return r;
}

/* ---- output and control ---------------------------------------------------- */

static int on_output(sd_event_source *src, int fd, uint32_t revents, void *userdata)
{
    OutPipe *o = userdata;
    char buf[4096];
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n <= 0) {
        if (o->len)
            log_info("%s[%d]: %.*s", o->label, (int)o->pid, (int)o->len, o->line);
        sd_event_source_disable_unref(o->src);
        close(fd);
        free(o->label);
        free(o);
        return 0;
    }
    for (ssize_t i = 0; i < n; i++) {
        if (buf[i] == '\n' || o->len == sizeof(o->line)) {
            log_info("%s[%d]: %.*s", o->label, (int)o->pid, (int)o->len, o->line);
            o->len = 0;
            if (buf[i] == '\n')
                continue;
        }
        o->line[o->len++] = buf[i];
    }
    return 0;
}

static void watch_output(Proc *p, int fd)
{
    OutPipe *o = xcalloc(1, sizeof(*o));
    o->label = xstrdup(p->label);
    o->pid = p->pid;
    if (sd_event_add_io(p->app->s->ev, &o->src, fd, EPOLLIN, on_output, o) < 0) {
        close(fd);
        free(o->label);
        free(o);
    }
}

/* The control channel: reld reads the process's events (hello: its
 * modules, shown by status) and the replies to the executor's requests
 * (docs/runtime.md). */
static void control_take_events(Proc *p);
static void control_reply(Proc *p, json_t *m);
static void control_lost(Proc *p);

/* Reads what the process sent and handles it. */
static void control_read(Proc *p)
{
    ssize_t n = read(p->ctl_fd, p->ctl_buf + p->ctl_len, sizeof(p->ctl_buf) - p->ctl_len);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        sd_event_source_set_enabled(p->ctl_src, SD_EVENT_OFF);
        control_lost(p);
        return;
    }
    p->ctl_len += (size_t)n;
    control_take_events(p);
}

static int on_control(sd_event_source *src, int fd, uint32_t revents, void *userdata)
{
    control_read(userdata);
    return 0;
}

/* Handles the complete lines in the control buffer: events, and replies
 * to the executor's calls. */
static void control_take_events(Proc *p)
{
    char *nl;
    while ((nl = memchr(p->ctl_buf, '\n', p->ctl_len))) {
        json_t *m = json_loadb(p->ctl_buf, (size_t)(nl - p->ctl_buf), 0, NULL);
        const char *ev = json_string_value(json_object_get(m, "event"));
        p->ctl_len -= (size_t)(nl + 1 - p->ctl_buf);
        memmove(p->ctl_buf, nl + 1, p->ctl_len);
        if (ev && strcmp(ev, "hello") == 0) {
            json_decref(p->modules);
            p->modules = json_incref(json_object_get(m, "modules"));
        } else if (!ev && m) {
            control_reply(p, m);
        }
        json_decref(m);
    }
    if (p->ctl_len == sizeof(p->ctl_buf))
        p->ctl_len = 0; /* an over-long line from a process: dropped */
}

static void proc_close_channels(Proc *p)
{
    control_lost(p);
    sd_event_source_disable_unref(p->ctl_src);
    p->ctl_src = NULL;
    if (p->ctl_fd >= 0)
        close(p->ctl_fd);
    p->ctl_fd = -1;
    p->ctl_len = 0;
}

/* ---- start, exit, restart ---------------------------------------------------- */

static int proc_spawn(Proc *p);

static void app_stop(App *a);

static int on_exit_(sd_event_source *src, const siginfo_t *si, void *userdata)
{
    Proc *p = userdata;
    sd_event_source_disable_unref(p->child_src);
    p->child_src = NULL;
    proc_close_channels(p);
    bool clean = si->si_code == CLD_EXITED && si->si_status == 0;
    bool signaled = si->si_code == CLD_KILLED || si->si_code == CLD_DUMPED;
    log_info("%s[%d] %s %d", p->label, (int)p->pid, signaled ? "killed by signal" : "exited with status",
             si->si_status);
    record(
        p, "process_exit",
        json_pack("{s:i, s:s, s:i}", "pid", (int)p->pid, "how", signaled ? "signal" : "exit", "status", si->si_status));
    p->pid = 0;
    if (p->stopping || p->app->stopped)
        return 0;
    bool restart = p->def->restart == RESTART_PERMANENT || (p->def->restart == RESTART_TRANSIENT && !clean);
    if (!restart)
        return 0;
    App *a = p->app;
    long long t = mono_ms();
    size_t k = 0; /* keep the restarts within the period */
    for (size_t i = 0; i < a->n_restarts; i++)
        if (t - a->restart_ms[i] < SUPERVISOR_PERIOD_MS)
            a->restart_ms[k++] = a->restart_ms[i];
    a->n_restarts = k;
    if (a->n_restarts >= SUPERVISOR_MAX_RESTARTS) {
        char *why = xasprintf("more than %d restarts in %d ms", SUPERVISOR_MAX_RESTARTS, SUPERVISOR_PERIOD_MS);
        log_error("application %s: %s; stopping it", a->name, why);
        json_t *detail = json_pack("{s:s, s:s}", "app", a->name, "reason", why);
        history_event(a->s->hist, "restart_limit", "reld", a->vsn, detail); /* borrows detail */
        json_decref(detail);
        app_stop(a);
        free(why);
        return 0;
    }
    a->restart_ms[a->n_restarts++] = t;
    p->restarts++;
    if (proc_spawn(p) == 0)
        record(p, "process_restart", json_pack("{s:i, s:i}", "pid", (int)p->pid, "restarts", p->restarts));
    return 0;
}

/* Formats n into buf (async-signal-safe, for the child after fork). */
static void put_number(char *buf, long n)
{
    char tmp[24];
    int k = 0;
    do
        tmp[k++] = (char)('0' + n % 10);
    while ((n /= 10) > 0);
    while (k)
        *buf++ = tmp[--k];
    *buf = 0;
}

static int proc_spawn(Proc *p)
{
    int ctl[2], out[2], err[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ctl) < 0)
        return -errno;
    if (pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0) {
        close(ctl[0]);
        close(ctl[1]);
        return -errno;
    }
    /* Everything the child needs is made before fork: after it, only
     * async-signal-safe calls (reld has threads). */
    size_t n_args = p->def->args.n;
    char **argv = xcalloc(n_args + 2, sizeof(char *));
    argv[0] = p->path;
    for (size_t i = 0; i < n_args; i++)
        argv[i + 1] = p->def->args.v[i];
    StrVec env = {0};
    for (char **e = environ; *e; e++)
        if (strncmp(*e, "RELD_", 5) != 0 && strncmp(*e, "LISTEN_", 7) != 0 && strncmp(*e, "NOTIFY_SOCKET=", 14) != 0)
            strvec_push(&env, *e);
    strvec_push_take(&env, xasprintf("RELD_CONTROL_FD=%zu", 3 + p->n_listen));
    strvec_push_take(&env, xasprintf("RELD_PROCESS=%s", p->def->name));
    char *mods = xstrdup("");
    for (size_t i = 0; i < p->modules_env.n; i++) {
        char *m = xasprintf("%s%s%s", mods, i ? ":" : "", p->modules_env.v[i]);
        free(mods);
        mods = m;
    }
    strvec_push_take(&env, xasprintf("RELD_MODULES=%s", mods));
    free(mods);
    char *pid_env = NULL;
    if (p->n_listen) {
        strvec_push_take(&env, xasprintf("LISTEN_FDS=%zu", p->n_listen));
        strvec_push_take(&env, xasprintf("LISTEN_FDNAMES=%s", p->fdnames));
        pid_env = xcalloc(40, 1);
        memcpy(pid_env, "LISTEN_PID=", 11);
        strvec_push_take(&env, pid_env);
    }
    GROW(env.v, env.cap, env.n + 1);
    env.v[env.n] = NULL;
    char *dir = xstrdup(p->path), *slash = strrchr(dir, '/');
    *slash = 0; /* the executable's directory's parent is the app dir: cd there below */
    char *appdir = xasprintf("%s/lib/%s-%s", p->app->s->root, p->app->name, p->app->vsn);

    pid_t pid = fork();
    if (pid == 0) {
        /* The child: fds 0-2, then 3.. listening sockets, then control. */
        int high[64];
        size_t n = p->n_listen < 62 ? p->n_listen : 62;
        for (size_t i = 0; i < n; i++)
            high[i] = fcntl(p->listen_fds[i], F_DUPFD_CLOEXEC, 100);
        int hctl = fcntl(ctl[1], F_DUPFD_CLOEXEC, 100), hout = fcntl(out[1], F_DUPFD_CLOEXEC, 100),
            herr = fcntl(err[1], F_DUPFD_CLOEXEC, 100);
        int devnull = open("/dev/null", O_RDONLY);
        dup2(devnull, 0);
        dup2(hout, 1);
        dup2(herr, 2);
        for (size_t i = 0; i < n; i++)
            dup2(high[i], 3 + (int)i);
        dup2(hctl, 3 + (int)n);
        if (pid_env)
            put_number(pid_env + 11, (long)getpid());
        sigset_t all;
        sigemptyset(&all);
        sigprocmask(SIG_SETMASK, &all, NULL);
        /* A managed process dies with reld (as processes die with their
         * VM): a restarted reld then boots one consistent release. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() == 1)
            _exit(125); /* reld died before the line above */
        signal(SIGPIPE, SIG_DFL);
        setpgid(0, 0);
        if (chdir(appdir) < 0)
            _exit(126);
        execve(p->path, argv, env.v);
        _exit(127);
    }
    int r = pid < 0 ? -errno : 0;
    free(argv);
    strvec_clear(&env);
    free(dir);
    free(appdir);
    close(ctl[1]);
    close(out[1]);
    close(err[1]);
    if (r < 0) {
        close(ctl[0]);
        close(out[0]);
        close(err[0]);
        return r;
    }
    p->pid = pid;
    p->ctl_fd = ctl[0];
    fcntl(p->ctl_fd, F_SETFL, O_NONBLOCK); /* shared by the event source and the executor's calls */
    sd_event_add_child(p->app->s->ev, &p->child_src, pid, WEXITED, on_exit_, p);
    watch_output(p, out[0]);
    watch_output(p, err[0]);
    sd_event_add_io(p->app->s->ev, &p->ctl_src, ctl[0], EPOLLIN, on_control, p);
    sd_event_source_set_priority(p->ctl_src, SD_EVENT_PRIORITY_IMPORTANT); /* replies the executor awaits */
    log_info("%s[%d] started", p->label, (int)pid);
    return 0;
}

/* Stops one process: SIGTERM, then SIGKILL after shutdown_ms (blocking:
 * used at shutdown and when an application gives up). */
static void proc_stop(Proc *p)
{
    p->stopping = true;
    if (!p->pid)
        return;
    sd_event_source_disable_unref(p->child_src); /* we reap it here */
    p->child_src = NULL;
    kill(p->pid, SIGTERM);
    long long deadline = mono_ms() + p->def->shutdown_ms;
    int status;
    pid_t r;
    while ((r = waitpid(p->pid, &status, WNOHANG)) == 0 && mono_ms() < deadline) {
        struct timespec t = {0, 10 * 1000000};
        nanosleep(&t, NULL);
    }
    if (r == 0) {
        log_info("%s[%d] did not stop within %ld ms: SIGKILL", p->label, (int)p->pid, p->def->shutdown_ms);
        kill(p->pid, SIGKILL);
        waitpid(p->pid, &status, 0);
    }
    record(p, "process_stop", json_pack("{s:i, s:b}", "pid", (int)p->pid, "killed", r == 0));
    log_info("%s[%d] stopped", p->label, (int)p->pid);
    p->pid = 0;
    proc_close_channels(p);
}

static void app_stop(App *a)
{
    a->stopped = true;
    for (size_t i = a->n_procs; i-- > 0;)
        proc_stop(a->procs[i]);
}

static void proc_free(Proc *p)
{
    proc_close_channels(p);
    sd_event_source_disable_unref(p->child_src);
    for (size_t i = 0; i < p->n_listen; i++)
        close(p->listen_fds[i]);
    free(p->listen_fds);
    free(p->fdnames);
    free(p->path);
    free(p->label);
    strvec_clear(&p->modules_env);
    json_decref(p->modules);
    free(p);
}

static void app_free(App *a)
{
    for (size_t i = 0; i < a->n_procs; i++)
        proc_free(a->procs[i]);
    free(a->procs);
    free(a->name);
    free(a->vsn);
    free(a);
}

/* ---- the supervisor ------------------------------------------------------- */

int supervisor_new(sd_event *ev, History *hist, const char *root, Supervisor **ret)
{
    Supervisor *s = xcalloc(1, sizeof(*s));
    s->ev = ev;
    s->hist = hist;
    s->root = xstrdup(root);
    *ret = s;
    return 0;
}

static void stop_all(Supervisor *s)
{
    for (size_t i = s->n_apps; i-- > 0;) {
        app_stop(s->apps[i]);
        app_free(s->apps[i]);
    }
    free(s->apps);
    s->apps = NULL;
    s->n_apps = 0;
}

Supervisor *supervisor_free(Supervisor *s)
{
    if (!s)
        return NULL;
    stop_all(s);
    free(s->root);
    free(s);
    return NULL;
}

bool supervisor_running(const Supervisor *s)
{
    return s && s->n_apps > 0;
}

static Proc *proc_new(Supervisor *s, App *a, const AppDef *def, const ProcessDef *pd, Diag *diag)
{
    Proc *p = xcalloc(1, sizeof(*p));
    p->app = a;
    p->def = pd;
    p->ctl_fd = -1;
    p->label = xasprintf("%s/%s", a->name, pd->name);
    p->path = pd->exec[0] == '/' ? xstrdup(pd->exec) : xasprintf("%s/lib/%s-%s/%s", s->root, a->name, a->vsn, pd->exec);
    for (size_t m = 0; m < pd->modules.n; m++) {
        const ModuleDef *md = appdefs_app_find_module(def, pd->modules.v[m]);
        strvec_push_take(&p->modules_env,
                         xasprintf("%s=%s/lib/%s-%s/%s", md->name, s->root, a->name, a->vsn, md->file));
    }
    p->listen_fds = xcalloc(pd->n_sockets + 1, sizeof(int));
    p->fdnames = xstrdup("");
    for (size_t k = 0; k < pd->n_sockets; k++) {
        int fd = open_listener(pd->sockets[k].listen);
        if (fd < 0) {
            diag_error(diag, "%s: cannot listen on %s: %s", p->label, pd->sockets[k].listen, strerror(-fd));
            proc_free(p);
            return NULL;
        }
        p->listen_fds[p->n_listen++] = fd;
        char *names = xasprintf("%s%s%s", p->fdnames, k ? ":" : "", pd->sockets[k].name);
        free(p->fdnames);
        p->fdnames = names;
    }
    return p;
}

int supervisor_start_release(Supervisor *s, const ReleaseDef *rel, Diag *diag)
{
    if (s->n_apps)
        stop_all(s);
    size_t *order = appdefs_release_order(rel);
    int r = 0;
    for (size_t k = 0; k < rel->n_apps && r == 0; k++) {
        const ReleaseAppRef *ref = &rel->apps[order[k]];
        App *a = xcalloc(1, sizeof(*a));
        a->s = s;
        a->name = xstrdup(ref->name);
        a->vsn = xstrdup(ref->vsn);
        s->apps = xrealloc(s->apps, (s->n_apps + 1) * sizeof(*s->apps));
        s->apps[s->n_apps++] = a;
        a->procs = xcalloc(ref->app->n_processes + 1, sizeof(Proc *));
        for (size_t i = 0; i < ref->app->n_processes && r == 0; i++) {
            Proc *p = proc_new(s, a, ref->app, &ref->app->processes[i], diag);
            if (!p) {
                r = -EADDRINUSE;
                break;
            }
            a->procs[a->n_procs++] = p;
            if ((r = proc_spawn(p)) < 0)
                diag_error(diag, "%s: cannot start %s: %s", p->label, p->path, strerror(-r));
            else
                record(p, "process_start", json_pack("{s:i}", "pid", (int)p->pid));
        }
    }
    free(order);
    if (r < 0)
        stop_all(s);
    return r;
}

json_t *supervisor_status(const Supervisor *s)
{
    json_t *a = json_array();
    for (size_t i = 0; s && i < s->n_apps; i++)
        for (size_t k = 0; k < s->apps[i]->n_procs; k++) {
            const Proc *p = s->apps[i]->procs[k];
            json_array_append_new(a,
                                  json_pack("{s:s, s:s, s:s, s:i, s:s, s:i, s:O}", "app", s->apps[i]->name, "vsn",
                                            s->apps[i]->vsn, "process", p->def->name, "pid", (int)p->pid, "state",
                                            p->pid                ? "running"
                                            : s->apps[i]->stopped ? "stopped"
                                                                  : "exited",
                                            "restarts", p->restarts, "modules", p->modules ? p->modules : json_null()));
        }
    return a;
}

/* ---- executing a relup ------------------------------------------------------
 *
 * An instruction sends its commands to every process concerned at once and
 * returns to the event loop; replies arrive through on_control, timeouts
 * through a timer, and when the last call of the instruction has ended
 * the executor is woken for the next (it first waits up to 1 ms, as most
 * answers come sooner). So a process slow to reach its safe point holds up
 * the upgrade, not reld. What finishes a script goes the same way: the
 * inverse after a failure, the post-purges after a success. Drops of
 * staged code go out without waiting for answers. */

static long long next_call_id;

/* How long an instruction waits for answers before the executor returns to
 * the event loop: reld's other work waits at most this long. */
#define AWAIT_BRIEFLY_US 1000

/* Sends one request line (taking req) with a fresh id, returned in *ret_id.
 * 0 or -ECONNRESET. */
static int proc_send(Proc *p, json_t *req, int timeout_ms, long long *ret_id)
{
    long long id = ++next_call_id;
    json_object_set_new(req, "id", json_integer(id));
    char *text = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    size_t len = strlen(text);
    text = xrealloc(text, len + 2);
    text[len++] = '\n';
    long long deadline = mono_ms() + timeout_ms;
    for (size_t off = 0; off < len;) {
        /* MSG_NOSIGNAL: a dead process must not kill reld with SIGPIPE. */
        ssize_t n = p->ctl_fd < 0 ? -1 : send(p->ctl_fd, text + off, len - off, MSG_NOSIGNAL);
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EAGAIN && mono_ms() < deadline) { /* a full channel: one request is small */
            struct pollfd pf = {.fd = p->ctl_fd, .events = POLLOUT};
            poll(&pf, 1, 10);
            continue;
        }
        free(text);
        return -ECONNRESET;
    }
    free(text);
    *ret_id = id;
    return 0;
}

/* A reply's effect on what reld knows of the process: replies that change
 * the current versions carry the process's module list. */
static void take_modules(Proc *p, json_t *reply)
{
    json_t *mods = json_object_get(reply, "modules");
    if (json_is_array(mods)) {
        json_decref(p->modules);
        p->modules = json_incref(mods);
    }
}

/* The new definition of a running process: same application and process
 * name in release `to`; NULL when it has none. */
static const ProcessDef *new_def(const ReleaseDef *to, const Proc *p, const AppDef **ret_app)
{
    const ReleaseAppRef *ref = appdefs_release_find(to, p->app->name);
    for (size_t i = 0; ref && i < ref->app->n_processes; i++)
        if (strcmp(ref->app->processes[i].name, p->def->name) == 0) {
            if (ret_app)
                *ret_app = ref->app;
            return &ref->app->processes[i];
        }
    return NULL;
}

/* Does the process run module (by its current or its new definition) and
 * speak the protocol (it said hello)? */
static bool runs(const ReleaseDef *to, const Proc *p, const char *module)
{
    if (!p->pid || !p->modules || p->ctl_fd < 0)
        return false;
    const ProcessDef *nd = new_def(to, p, NULL);
    return strvec_contains(&p->def->modules, module) || (nd && strvec_contains(&nd->modules, module));
}

typedef struct Exec Exec;

/* A downgrade's script converts state down; an upgrade's does not. */
static bool going_down(const RelupScript *script)
{
    for (size_t k = 0; k < script->n; k++)
        if (script->v[k].op == RELUP_CODE_CHANGE && script->v[k].down)
            return true;
    return false;
}

/* What the executor's calls are for: the script's instructions, then
 * what finishes it (the inverse after a failure, the post-purges after a
 * success), which keep no bookkeeping. */
enum Phase { PHASE_SCRIPT, PHASE_INVERSE, PHASE_POST_PURGE, PHASE_DONE };

/* How a request of a process's queue takes a failure before it. */
typedef enum RequestKind {
    REQ_STOPPED, /* not sent after a failure (the process goes no further) */
    REQ_ALWAYS,  /* sent even so (a resume after an undo, each purge) */
    REQ_OPTIONAL /* sent even so, and its own failure is no failure */
} RequestKind;

/* The requests of one instruction to one process, sent one at a time (a
 * process stops at the first that fails, as OTP's script would). */
struct Call {
    Exec *x;
    Proc *p;
    json_t *queue; /* [{req, timeout_ms, kind}] still to send */
    json_t *req;   /* the one out, whose reply is awaited */
    RequestKind kind;
    long long id, deadline_ms;
};

struct Exec {
    Supervisor *s;
    const ReleaseDef *to;
    const RelupScript *script;
    Diag *diag;
    Proc **staged; /* (process, module) pairs with code loaded before the point of no return */
    char **staged_mod;
    size_t n_staged;
    Proc **suspended;
    size_t n_suspended;
    /* What this upgrade changed in each process, in the order it happened:
     * undone in reverse when it fails after the point of no return. */
    struct Done {
        Proc *p;
        char *module;
        enum { DONE_LOAD, DONE_CODE_CHANGE_UP, DONE_CODE_CHANGE_DOWN, DONE_REMOVE } op;
        json_t *extra; /* of a code_change */
    } * done;
    size_t n_done;
    /* The calls of the instruction under way. */
    Call **calls;
    size_t n_calls, n_out;
    int calls_r;  /* the first failure among them */
    bool waiting; /* the executor returned to the event loop for them */
    enum Phase phase;
    sd_event_source *timer;
    void (*wake)(void *userdata); /* the instruction's calls have all ended */
    void *wake_data;
};

static void note_done(Exec *x, Proc *p, const char *cmd, const char *module, json_t *req)
{
    struct Done d = {.p = p, .module = xstrdup(module)};
    if (strcmp(cmd, "load") == 0) {
        d.op = DONE_LOAD;
    } else if (strcmp(cmd, "code_change") == 0) {
        bool up = strcmp(json_string_value(json_object_get(req, "mode")), "up") == 0;
        d.op = up ? DONE_CODE_CHANGE_UP : DONE_CODE_CHANGE_DOWN;
        d.extra = json_incref(json_object_get(req, "extra"));
    } else if (strcmp(cmd, "remove") == 0) {
        d.op = DONE_REMOVE;
    } else {
        free(d.module);
        return; /* purge: nothing a process needs back */
    }
    x->done = xrealloc(x->done, (x->n_done + 1) * sizeof(*x->done));
    x->done[x->n_done++] = d;
}

/* What a successful reply means for the executor's bookkeeping. */
static void call_succeeded(Exec *x, Proc *p, json_t *req)
{
    if (x->phase != PHASE_SCRIPT)
        return;
    const char *cmd = json_string_value(json_object_get(req, "cmd"));
    const char *module = json_string_value(json_object_get(req, "module"));
    if (strcmp(cmd, "load_object_code") == 0) {
        x->staged = xrealloc(x->staged, (x->n_staged + 1) * sizeof(*x->staged));
        x->staged_mod = xrealloc(x->staged_mod, (x->n_staged + 1) * sizeof(*x->staged_mod));
        x->staged[x->n_staged] = p;
        x->staged_mod[x->n_staged++] = xstrdup(module);
    } else if (strcmp(cmd, "suspend") == 0) {
        x->suspended = xrealloc(x->suspended, (x->n_suspended + 1) * sizeof(*x->suspended));
        x->suspended[x->n_suspended++] = p;
    } else if (module) {
        note_done(x, p, cmd, module, req);
    }
}

static void call_send_next(Call *c);

/* After a failure: what was queued for the process goes, except requests
 * sent regardless (RequestKind). */
static void drop_queue(Call *c)
{
    for (size_t k = json_array_size(c->queue); k-- > 0;)
        if (json_integer_value(json_object_get(json_array_get(c->queue, k), "kind")) == REQ_STOPPED)
            json_array_remove(c->queue, k);
}

/* Does a status reply show old code of module that something still uses
 * (a pinned old version)? */
static bool old_code_in_use(json_t *status, const char *module)
{
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(status, "modules"), i, m)
    {
        if (strcmp(json_string_value(json_object_get(m, "name")), module) == 0 &&
            !json_is_null(json_object_get(m, "old_version")) && json_integer_value(json_object_get(m, "old_pins")) > 0)
            return true;
    }
    return false;
}

/* The call's request out ended: reply (ok or refused, in m), or r < 0. */
static void call_ended(Call *c, json_t *m, int r)
{
    Exec *x = c->x;
    Proc *p = c->p;
    const char *cmd = json_string_value(json_object_get(c->req, "cmd"));
    const char *module = json_string_value(json_object_get(c->req, "module"));
    if (r == 0 && !json_is_true(json_object_get(m, "ok")))
        r = -EPROTO;
    if (r == 0 && strcmp(cmd, "status") == 0 && module && old_code_in_use(m, module)) {
        diag_error(x->diag, "%s[%d]: soft_purge of %s cannot be honoured: its old code is still in use", p->label,
                   (int)p->pid, module);
        r = -EBUSY;
        if (x->calls_r == 0)
            x->calls_r = r;
        drop_queue(c);
    } else if (r == 0) {
        take_modules(p, m);
        call_succeeded(x, p, c->req);
    } else if (c->kind == REQ_OPTIONAL) {
        /* say nothing: what it would have tidied stays for a later purge */
    } else {
        const char *doing = x->phase != PHASE_INVERSE ? ""
                            : going_down(x->script)   ? "undoing the downgrade: "
                                                      : "undoing the upgrade: ";
        diag_error(x->diag, "%s[%d]: %s%s%s%s: %s%s%s", p->label, (int)p->pid, doing, cmd, module ? " " : "",
                   module ? module : "",
                   r == -EPROTO       ? json_string_value(json_object_get(m, "error"))
                   : r == -ETIMEDOUT  ? "no answer in time"
                   : r == -ECONNRESET ? "the process went away"
                                      : strerror(-r),
                   r == -EPROTO ? ": " : "", r == -EPROTO ? json_string_value(json_object_get(m, "message")) : "");
        if (x->calls_r == 0)
            x->calls_r = r;
        /* It may still do it, late: the recovery then resumes it, or drops
         * the code it staged. */
        if (r == -ETIMEDOUT && (strcmp(cmd, "suspend") == 0 || strcmp(cmd, "load_object_code") == 0))
            call_succeeded(x, p, c->req);
        drop_queue(c); /* this process goes no further */
    }
    json_decref(c->req);
    c->req = NULL;
    c->id = 0;
    call_send_next(c);
}

static int on_call_timer(sd_event_source *src, uint64_t usec, void *userdata);

/* The timer at the earliest deadline of the calls out. */
static void arm_timer(Exec *x)
{
    long long first = 0;
    for (size_t k = 0; k < x->n_calls; k++)
        if (x->calls[k]->req && (!first || x->calls[k]->deadline_ms < first))
            first = x->calls[k]->deadline_ms;
    if (!first)
        return;
    uint64_t at = (uint64_t)first * 1000;
    if (x->timer) {
        sd_event_source_set_time(x->timer, at);
        sd_event_source_set_enabled(x->timer, SD_EVENT_ONESHOT);
    } else {
        sd_event_add_time(x->s->ev, &x->timer, CLOCK_MONOTONIC, at, 1000, on_call_timer, x);
    }
}

static void call_send_next(Call *c)
{
    Exec *x = c->x;
    if (json_array_size(c->queue)) {
        json_t *next = json_incref(json_array_get(c->queue, 0));
        json_array_remove(c->queue, 0);
        int timeout = (int)json_integer_value(json_object_get(next, "timeout_ms"));
        c->req = json_incref(json_object_get(next, "req"));
        c->kind = (RequestKind)json_integer_value(json_object_get(next, "kind"));
        json_decref(next);
        c->deadline_ms = mono_ms() + timeout;
        if (proc_send(c->p, json_incref(c->req), timeout, &c->id) < 0)
            return call_ended(c, NULL, -ECONNRESET);
        arm_timer(x);
        return;
    }
    c->p->call = NULL;
    if (--x->n_out == 0 && x->waiting)
        x->wake(x->wake_data);
}

static int on_call_timer(sd_event_source *src, uint64_t usec, void *userdata)
{
    Exec *x = userdata;
    long long t = mono_ms();
    for (size_t k = 0; k < x->n_calls; k++)
        if (x->calls[k]->req && x->calls[k]->deadline_ms <= t)
            call_ended(x->calls[k], NULL, -ETIMEDOUT);
    arm_timer(x);
    return 0;
}

/* A reply line from p: the awaited one ends the call; others (late
 * answers to timed-out requests, answers to drops) only tell what the
 * process runs now. */
static void control_reply(Proc *p, json_t *m)
{
    if (p->call && p->call->req && json_integer_value(json_object_get(m, "id")) == p->call->id)
        call_ended(p->call, m, 0);
    else if (json_is_true(json_object_get(m, "ok")))
        take_modules(p, m);
}

/* p's channel closed (it exited): its call ends. */
static void control_lost(Proc *p)
{
    if (p->call && p->call->req)
        call_ended(p->call, NULL, -ECONNRESET);
}

/* Queues req (taken) for p in the instruction under way. */
static void add_request_kind(Exec *x, Proc *p, json_t *req, int timeout_ms, RequestKind kind)
{
    Call *c = NULL;
    for (size_t k = 0; k < x->n_calls && !c; k++)
        if (x->calls[k]->p == p)
            c = x->calls[k];
    if (!c) {
        c = xcalloc(1, sizeof(*c));
        *c = (Call){.x = x, .p = p, .queue = json_array()};
        x->calls = xrealloc(x->calls, (x->n_calls + 1) * sizeof(*x->calls));
        x->calls[x->n_calls++] = c;
    }
    json_array_append_new(c->queue, json_pack("{s:o, s:i, s:i}", "req", req, "timeout_ms", timeout_ms, "kind", kind));
}

static void add_request(Exec *x, Proc *p, json_t *req, int timeout_ms)
{
    add_request_kind(x, p, req, timeout_ms, REQ_STOPPED);
}

/* Queues a command for module to every process that runs it. */
static void add_to_runners(Exec *x, const char *module, json_t *req, int timeout_ms)
{
    for (size_t i = 0; i < x->s->n_apps; i++)
        for (size_t k = 0; k < x->s->apps[i]->n_procs; k++) {
            Proc *p = x->s->apps[i]->procs[k];
            if (runs(x->to, p, module))
                add_request(x, p, json_deep_copy(req), timeout_ms);
        }
    json_decref(req);
}

/* Sends the first request of every call. Returns the number out: when 0,
 * the instruction has ended (x->calls_r says how). */
static size_t start_calls(Exec *x)
{
    x->calls_r = 0;
    x->n_out = x->n_calls;
    for (size_t k = 0; k < x->n_calls; k++) {
        if (x->calls[k]->p->call) { /* cannot happen: one instruction at a time */
            x->n_out--;
            continue;
        }
        x->calls[k]->p->call = x->calls[k];
        call_send_next(x->calls[k]);
    }
    return x->n_out;
}

/* Waits up to budget_us for the calls out, handling replies as the event
 * loop would. Most answers take tens of microseconds; two trips through
 * the event loop (and its timers) per command add about as much, inside a
 * suspended process's pause. Returns the number still out. */
static size_t await_calls_briefly(Exec *x, long long budget_us)
{
    long long deadline = mono_us() + budget_us;
    struct pollfd *pf = xcalloc(x->n_calls + 1, sizeof(*pf));
    while (x->n_out > 0) {
        long long left = deadline - mono_us();
        if (left <= 0)
            break;
        size_t n = 0;
        for (size_t k = 0; k < x->n_calls; k++)
            if (x->calls[k]->req && x->calls[k]->p->ctl_fd >= 0)
                pf[n++] = (struct pollfd){.fd = x->calls[k]->p->ctl_fd, .events = POLLIN};
        struct timespec ts = {0, left * 1000};
        if (n == 0 || ppoll(pf, n, &ts, NULL) <= 0)
            break;
        for (size_t k = 0; k < x->n_calls; k++) {
            Proc *p = x->calls[k]->p;
            for (size_t i = 0; i < n; i++)
                if (pf[i].fd == p->ctl_fd && pf[i].revents && x->calls[k]->req)
                    control_read(p);
        }
    }
    free(pf);
    return x->n_out;
}

/* After the instruction's calls ended (or on abandoning them). */
static void calls_clear(Exec *x)
{
    for (size_t k = 0; k < x->n_calls; k++) {
        Call *c = x->calls[k];
        if (c->p->call == c)
            c->p->call = NULL;
        json_decref(c->queue);
        json_decref(c->req);
        free(c);
    }
    free(x->calls);
    x->calls = NULL;
    x->n_calls = x->n_out = 0;
    if (x->timer)
        sd_event_source_set_enabled(x->timer, SD_EVENT_OFF);
}

/* A suspend waits for the longest timeout of its modules; a module
 * without one waits 5 s (OTP's default for sys:suspend). */
static int mods_timeout(const RelupInstr *in)
{
    long t = 0;
    for (size_t k = 0; k < in->n_mods; k++) {
        long m = in->mods[k].timeout_ms == TIMEOUT_INFINITY ? 3600000
                 : in->mods[k].timeout_ms > 0               ? in->mods[k].timeout_ms
                                                            : 5000;
        t = m > t ? m : t;
    }
    return (int)(t ? t : 5000);
}

/* Queues the requests of instruction in (or finds it needs none).
 * 0, or -errno for an instruction that cannot run. */
static int exec_instr(Exec *x, const RelupInstr *in)
{
    switch (in->op) {
    case RELUP_LOAD_OBJECT_CODE: {
        const ReleaseAppRef *ref = appdefs_release_find(x->to, in->app);
        for (size_t k = 0; k < in->n_mods; k++) {
            const ModuleDef *md = ref ? appdefs_app_find_module(ref->app, in->mods[k].module) : NULL;
            if (!md) {
                diag_error(x->diag, "release %s has no module %s in %s", x->to->vsn, in->mods[k].module, in->app);
                return -EINVAL;
            }
            char *path = xasprintf("%s/lib/%s-%s/%s", x->s->root, in->app, in->vsn, md->file);
            add_to_runners(x, md->name,
                           json_pack("{s:s, s:s, s:s}", "cmd", "load_object_code", "module", md->name, "path", path),
                           5000);
            free(path);
        }
        return 0;
    }
    case RELUP_POINT_OF_NO_RETURN:
        /* As OTP checks before it: a load or remove whose pre_purge is
         * soft_purge must find no process still running the module's old
         * code, else the upgrade stops here, with nothing changed. */
        for (size_t k = 0; k < x->script->n; k++) {
            const RelupInstr *later = &x->script->v[k];
            if ((later->op == RELUP_LOAD || later->op == RELUP_REMOVE) && later->pre_purge == PURGE_SOFT)
                add_to_runners(x, later->module, json_pack("{s:s, s:s}", "cmd", "status", "module", later->module),
                               5000);
        }
        return 0;
    case RELUP_SUSPEND:
    case RELUP_RESUME: {
        bool suspend = in->op == RELUP_SUSPEND;
        json_t *names = json_array();
        for (size_t k = 0; k < in->n_mods; k++)
            json_array_append_new(names, json_string(in->mods[k].module));
        for (size_t i = 0; i < x->s->n_apps; i++)
            for (size_t k = 0; k < x->s->apps[i]->n_procs; k++) {
                Proc *p = x->s->apps[i]->procs[k];
                bool any = false;
                for (size_t m = 0; m < in->n_mods; m++)
                    any = any || runs(x->to, p, in->mods[m].module);
                if (any)
                    add_request(x, p, json_pack("{s:s, s:O}", "cmd", suspend ? "suspend" : "resume", "modules", names),
                                suspend ? mods_timeout(in) : 5000);
            }
        json_decref(names);
        return 0;
    }
    case RELUP_LOAD:
        add_to_runners(x, in->module,
                       json_pack("{s:s, s:s, s:s}", "cmd", "load", "module", in->module, "pre_purge",
                                 purge_method_name(in->pre_purge)),
                       5000);
        return 0;
    case RELUP_CODE_CHANGE:
        for (size_t k = 0; k < in->n_mods; k++)
            add_to_runners(x, in->mods[k].module,
                           json_pack("{s:s, s:s, s:s, s:O}", "cmd", "code_change", "module", in->mods[k].module, "mode",
                                     in->down ? "down" : "up", "extra",
                                     in->mods[k].extra ? in->mods[k].extra : json_null()),
                           10000);
        return 0;
    case RELUP_PURGE:
        for (size_t k = 0; k < in->n_mods; k++)
            add_to_runners(
                x, in->mods[k].module,
                json_pack("{s:s, s:s, s:s}", "cmd", "purge", "module", in->mods[k].module, "method", "brutal_purge"),
                5000);
        return 0;
    case RELUP_REMOVE:
        add_to_runners(x, in->module, json_pack("{s:s, s:s}", "cmd", "remove", "module", in->module), 5000);
        return 0;
    case RELUP_STOP_APPLICATION:
        /* At its place in the script: a removed application stops before
         * anything it depends on changes. */
        for (size_t a = 0; a < x->s->n_apps; a++)
            if (strcmp(x->s->apps[a]->name, in->app) == 0)
                app_stop(x->s->apps[a]);
        return 0;
    default:
        /* Starts (start_application, start, the new versions of processes
         * without the runtime): in the switch-over, in dependency order,
         * after the script upgraded and resumed everything. */
        return 0;
    }
}

/* After a successful script: every application runs its `to` version.
 * Processes that speak the protocol keep running with new definitions
 * (restarts use the new code); those that do not are restarted; processes
 * the new release drops are stopped; new ones are started. */
static void switch_over(Supervisor *s, const ReleaseDef *to)
{
    size_t *order = appdefs_release_order(to);
    App **apps = xcalloc(to->n_apps + 1, sizeof(*apps));
    size_t n = 0;
    for (size_t i = s->n_apps; i-- > 0;) { /* applications the new release lacks stop first */
        if (!appdefs_release_find(to, s->apps[i]->name)) {
            app_stop(s->apps[i]);
            app_free(s->apps[i]);
            s->apps[i] = NULL;
        }
    }
    for (size_t k = 0; k < to->n_apps; k++) {
        const ReleaseAppRef *ref = &to->apps[order[k]];
        App *a = NULL;
        for (size_t i = 0; i < s->n_apps && !a; i++)
            if (s->apps[i] && strcmp(s->apps[i]->name, ref->name) == 0) {
                a = s->apps[i];
                s->apps[i] = NULL;
            }
        if (!a) { /* an added application */
            a = xcalloc(1, sizeof(*a));
            a->s = s;
            a->name = xstrdup(ref->name);
            a->vsn = xstrdup(ref->vsn);
            a->procs = xcalloc(ref->app->n_processes + 1, sizeof(Proc *));
            Diag d = {0};
            for (size_t i = 0; i < ref->app->n_processes; i++) {
                Proc *p = proc_new(s, a, ref->app, &ref->app->processes[i], &d);
                if (p && proc_spawn(p) == 0)
                    a->procs[a->n_procs++] = p;
                else if (p)
                    proc_free(p);
            }
            for (size_t e = 0; e < d.errors.n; e++)
                log_error("%s", d.errors.v[e]);
            diag_clear(&d);
            apps[n++] = a;
            continue;
        }
        bool changed = strcmp(a->vsn, ref->vsn) != 0;
        free(a->vsn);
        a->vsn = xstrdup(ref->vsn);
        for (size_t i = 0; i < a->n_procs; i++) {
            Proc *p = a->procs[i];
            const AppDef *napp = NULL;
            const ProcessDef *nd = new_def(to, p, &napp);
            if (!nd)
                continue;
            p->def = nd;
            free(p->path);
            p->path = nd->exec[0] == '/' ? xstrdup(nd->exec)
                                         : xasprintf("%s/lib/%s-%s/%s", s->root, a->name, a->vsn, nd->exec);
            strvec_clear(&p->modules_env);
            for (size_t m = 0; m < nd->modules.n; m++) {
                const ModuleDef *md = appdefs_app_find_module(napp, nd->modules.v[m]);
                strvec_push_take(&p->modules_env,
                                 xasprintf("%s=%s/lib/%s-%s/%s", md->name, s->root, a->name, a->vsn, md->file));
            }
            if (a->stopped) { /* stopped by the script (restart_application): starts again, new code */
                p->stopping = false;
                proc_spawn(p);
            } else if (changed && p->pid && !p->modules) { /* no runtime: restarted on the new version */
                proc_stop(p);
                p->stopping = false;
                proc_spawn(p);
            }
        }
        a->stopped = false;
        apps[n++] = a;
    }
    for (size_t i = 0; i < s->n_apps; i++)
        if (s->apps[i]) { /* not in `to` and not stopped above: cannot happen */
            app_stop(s->apps[i]);
            app_free(s->apps[i]);
        }
    free(s->apps);
    s->apps = apps;
    s->n_apps = n;
    free(order);
}

typedef struct Pending {
    int idx;
    json_t *instr;
    char *outcome;
    long long start, dur;
} Pending;

struct Execution {
    Supervisor *s;
    int result; /* of the script, once it ended */
    const ReleaseDef *from, *to;
    const RelupScript *script;
    int64_t attempt;
    Exec x;
    size_t i, step_end; /* the instruction under way; where its step ends */
    bool past_ponr, suspended;
    long long start, /* of the attempt */
        t0;          /* of instruction i */
    /* Records wait in memory while a process is suspended: no disk write
     * (a commit, a WAL checkpoint) may lengthen the pause. They are written
     * right after the resume, and at the end. */
    Pending *pending;
    size_t n_pending;
    /* Fault injection for the tests (docs/daemon.md): reld kills itself
     * before instruction k, or pauses there for ms milliseconds ("k:ms"). */
    long crash_at, pause_at, pause_ms, delay_at, delay_ms, fail_at;
    bool delayed;
    json_t *before; /* label -> the modules each process ran before: [{name, version}] */
};

int supervisor_exec_begin(Supervisor *s, const ReleaseDef *from, const ReleaseDef *to, const RelupScript *script,
                          int64_t attempt, void (*wake)(void *userdata), void *userdata, Execution **ret)
{
    Execution *e = xcalloc(1, sizeof(*e));
    *e = (Execution){.s = s,
                     .from = from,
                     .to = to,
                     .script = script,
                     .attempt = attempt,
                     .x = {.s = s, .to = to, .script = script, .wake = wake, .wake_data = userdata},
                     .start = mono_us()};
    e->pending = xcalloc(script->n + 1, sizeof(*e->pending));
    const char *crash = getenv("RELD_TEST_CRASH_BEFORE"), *pause = getenv("RELD_TEST_PAUSE_BEFORE");
    e->crash_at = crash ? atol(crash) : 0;
    e->pause_at = pause ? atol(pause) : 0;
    e->pause_ms = pause && strchr(pause, ':') ? atol(strchr(pause, ':') + 1) : 0;
    e->before = json_object();
    for (size_t a = 0; a < s->n_apps; a++)
        for (size_t k = 0; k < s->apps[a]->n_procs; k++) {
            const Proc *p = s->apps[a]->procs[k];
            if (p->modules)
                json_object_set_new(e->before, p->label, json_deep_copy(p->modules));
        }
    const char *fail = getenv("RELD_TEST_FAIL_AT");
    e->fail_at = fail ? atol(fail) : 0;
    const char *delay = getenv("RELD_TEST_DELAY_BEFORE");
    e->delay_at = delay ? atol(delay) : 0;
    e->delay_ms = delay && strchr(delay, ':') ? atol(strchr(delay, ':') + 1) : 0;
    *ret = e;
    return 0;
}

long supervisor_exec_delay_ms(Execution *e)
{
    if (e->i + 1 != (size_t)e->delay_at || e->delayed)
        return 0;
    e->delayed = true;
    return e->delay_ms;
}

size_t supervisor_exec_position(const Execution *e, size_t *ret_n)
{
    *ret_n = e->script->n;
    return e->i;
}

/* Writes the records waiting in memory (outcomes rewrite the "running"
 * rows written before the step). */
static void flush_records(Execution *e)
{
    HistoryInstruction *v = xcalloc(e->n_pending + 1, sizeof(*v));
    for (size_t k = 0; k < e->n_pending; k++)
        v[k] = (HistoryInstruction){.idx = e->pending[k].idx,
                                    .instr = e->pending[k].instr,
                                    .outcome = e->pending[k].outcome,
                                    .start_us = e->pending[k].start,
                                    .duration_us = e->pending[k].dur};
    history_attempt_instructions(e->s->hist, e->attempt, v, e->n_pending);
    free(v);
    for (size_t k = 0; k < e->n_pending; k++) {
        json_decref(e->pending[k].instr);
        free(e->pending[k].outcome);
    }
    e->n_pending = 0;
}

/* The record of instruction i (0-based) with its outcome. */
static void record_instruction(Execution *e, size_t i, char *outcome, long long start, long long dur)
{
    json_t *j = relup_to_json(&(Relup){.from = "", .to = "", .up = {.v = (RelupInstr *)&e->script->v[i], .n = 1}});
    e->pending[e->n_pending++] = (Pending){
        .idx = (int)i + 1,
        .instr = json_incref(json_array_get(json_object_get(j, "up"), 0)),
        .outcome = outcome,
        .start = start,
        .dur = dur,
    };
    json_decref(j);
}

/* Where the step starting at instruction i ends (exclusive): after i, or
 * for a suspend after its resume, as a suspended group runs in one step. */
static size_t step_end(const Execution *e, size_t i)
{
    if (e->script->v[i].op != RELUP_SUSPEND)
        return i + 1;
    for (size_t k = i + 1; k < e->script->n; k++)
        if (e->script->v[k].op == RELUP_RESUME)
            return k + 1;
    return e->script->n;
}

/* resume for every module the process runs (its definition's list). */
static json_t *resume_all(const Proc *p)
{
    json_t *names = json_array();
    for (size_t m = 0; m < p->def->modules.n; m++)
        json_array_append_new(names, json_string(p->def->modules.v[m]));
    return json_pack("{s:s, s:o}", "cmd", "resume", "modules", names);
}

/* The version of module process p ran before this upgrade, or NULL. */
static const char *version_before(const Execution *e, const Proc *p, const char *module)
{
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(e->before, p->label), i,
                       m) if (strcmp(json_string_value(json_object_get(m, "name")), module) ==
                              0) return json_string_value(json_object_get(m, "version"));
    return NULL;
}

/* Drops the code staged before a failure. Sent without waiting: a process
 * handles its commands in order, so one that answers load_object_code
 * late drops the code after staging it; the answers are dropped as late. */
static void drop_staged(Exec *x)
{
    for (size_t k = 0; k < x->n_staged; k++) {
        long long id;
        if (x->staged[k]->pid && !x->staged[k]->call)
            proc_send(x->staged[k], json_pack("{s:s, s:s}", "cmd", "drop_object_code", "module", x->staged_mod[k]), 100,
                      &id);
    }
}

/* The request that undoes one change a script made in process p. */
static json_t *undo_request(Execution *e, Proc *p, const struct Done *d, int *ret_timeout_ms)
{
    *ret_timeout_ms = 5000;
    if (d->op == DONE_LOAD) { /* the version it ran before becomes current again */
        const char *v = version_before(e, p, d->module);
        return json_pack("{s:s, s:s, s:o}", "cmd", "revert", "module", d->module, "version",
                         v ? json_string(v) : json_null());
    }
    /* code_change: the newer code converts the other way (up's undo runs
     * before the revert, down's after it). */
    *ret_timeout_ms = 10000;
    return json_pack("{s:s, s:s, s:s, s:O}", "cmd", "code_change", "module", d->module, "mode",
                     d->op == DONE_CODE_CHANGE_UP ? "down" : "up", "extra", d->extra ? d->extra : json_null());
}

/* Queues the inverse of what an upgrade or a downgrade did before it
 * failed: per process, suspended, every change it made undone in reverse
 * order, then resume (sent even when an undo failed). false when it cannot
 * work: a remove ran, so a module's state is gone. */
static bool queue_inverse(Execution *e)
{
    Exec *x = &e->x;
    for (size_t d = 0; d < x->n_done; d++)
        if (x->done[d].op == DONE_REMOVE) {
            diag_error(x->diag, "%s[%d]: undoing the %s: %s was removed and its state is gone", x->done[d].p->label,
                       (int)x->done[d].p->pid, going_down(e->script) ? "downgrade" : "upgrade", x->done[d].module);
            return false;
        }
    for (size_t a = 0; a < e->s->n_apps; a++)
        for (size_t k = 0; k < e->s->apps[a]->n_procs; k++) {
            Proc *p = e->s->apps[a]->procs[k];
            json_t *mods = json_array();
            for (size_t d = 0; d < x->n_done; d++)
                if (x->done[d].p == p)
                    json_array_append_new(mods, json_string(x->done[d].module));
            bool suspended = false;
            for (size_t d = 0; d < x->n_suspended; d++)
                suspended = suspended || x->suspended[d] == p;
            if (!p->pid) {
                json_decref(mods);
                continue;
            }
            if (json_array_size(mods)) {
                add_request(x, p, json_pack("{s:s, s:O}", "cmd", "suspend", "modules", mods), 5000);
                for (size_t d = x->n_done; d-- > 0;)
                    if (x->done[d].p == p) {
                        int timeout;
                        json_t *req = undo_request(e, p, &x->done[d], &timeout);
                        add_request(x, p, req, timeout);
                    }
                suspended = true;
            }
            if (suspended)
                add_request_kind(x, p, resume_all(p), 5000, REQ_ALWAYS);
            /* The code the inverse made old goes, unless something still
             * uses it (soft: then a later purge takes it). */
            for (size_t d = 0; d < x->n_done; d++)
                if (x->done[d].p == p && x->done[d].op == DONE_LOAD)
                    add_request_kind(x, p,
                                     json_pack("{s:s, s:s, s:s}", "cmd", "purge", "module", x->done[d].module, "method",
                                               "soft_purge"),
                                     5000, REQ_OPTIONAL);
            json_decref(mods);
        }
    return true;
}

/* Past the point of no return, and no inverse: every changed application
 * back on the old release, by restarting it there. */
static void restart_on_old_release(Execution *e)
{
    Supervisor *s = e->s;
    for (size_t k = 0; k < e->x.n_suspended; k++) { /* unchanged applications' processes go on */
        long long id;
        if (e->x.suspended[k]->pid)
            proc_send(e->x.suspended[k], resume_all(e->x.suspended[k]), 100, &id);
    }
    StrVec restarted = {0};
    for (size_t a = 0; a < s->n_apps; a++) {
        const ReleaseAppRef *ref = appdefs_release_find(e->to, s->apps[a]->name);
        if (ref && strcmp(ref->vsn, s->apps[a]->vsn) == 0)
            continue;
        strvec_push(&restarted, s->apps[a]->name);
        App *app = s->apps[a];
        for (size_t k = app->n_procs; k-- > 0;) {
            proc_stop(app->procs[k]);
            app->procs[k]->stopping = false;
        }
        for (size_t k = 0; k < app->n_procs; k++)
            proc_spawn(app->procs[k]);
    }
    char *list = xstrdup("");
    for (size_t k = 0; k < restarted.n; k++) {
        char *l = xasprintf("%s%s%s", list, k ? ", " : "", restarted.v[k]);
        free(list);
        list = l;
    }
    diag_warning(e->x.diag,
                 "failed after the point of no return: restarted %s on release %s (their in-memory state is lost)",
                 *list ? list : "nothing", e->from->vsn);
    free(list);
    strvec_clear(&restarted);
}

/* The calls of a finishing phase are out, or ended (calls_r). */
static int finish_phase_ended(Execution *e);

/* Starts the calls queued for a finishing phase; SUPERVISOR_EXEC_WAITING
 * while answers are awaited, else what the phase ends with. */
static int finish_phase(Execution *e, enum Phase phase)
{
    e->x.phase = phase;
    if (start_calls(&e->x) > 0 && await_calls_briefly(&e->x, AWAIT_BRIEFLY_US) > 0) {
        e->x.waiting = true;
        return SUPERVISOR_EXEC_WAITING;
    }
    return finish_phase_ended(e);
}

static int finish_phase_ended(Execution *e)
{
    int q = e->x.calls_r;
    calls_clear(&e->x);
    if (e->x.phase == PHASE_INVERSE && q == 0) {
        drop_staged(&e->x);
        diag_warning(e->x.diag,
                     "failed after the point of no return: ran the inverse of what was done; release %s runs, its "
                     "state kept",
                     e->from->vsn);
    } else if (e->x.phase == PHASE_INVERSE) {
        drop_staged(&e->x);
        restart_on_old_release(e);
    } else {                   /* PHASE_POST_PURGE */
        diag_clear(e->x.diag); /* a refused soft post-purge is not a failure */
        switch_over(e->s, e->to);
    }
    e->x.phase = PHASE_DONE;
    return e->result;
}

/* What is left to do after the script failed or ended. */
static int finish(Execution *e, int r)
{
    e->result = r;
    if (r < 0 && !e->past_ponr) {
        /* Nothing has changed yet: drop the staged code, the old release runs on. */
        drop_staged(&e->x);
        diag_warning(e->x.diag,
                     "failed before the point of no return: the new code was dropped, release %s runs "
                     "untouched",
                     e->from->vsn);
        return r;
    }
    if (r < 0) {
        if (!queue_inverse(e)) {
            calls_clear(&e->x);
            drop_staged(&e->x);
            restart_on_old_release(e);
            return r;
        }
        return finish_phase(e, PHASE_INVERSE);
    }
    /* The old code goes (OTP's post_purge); each purge on its own. */
    for (size_t k = 0; k < e->script->n; k++) {
        const RelupInstr *in = &e->script->v[k];
        if (in->op != RELUP_LOAD)
            continue;
        for (size_t i = 0; i < e->s->n_apps; i++)
            for (size_t j = 0; j < e->s->apps[i]->n_procs; j++) {
                Proc *p = e->s->apps[i]->procs[j];
                if (runs(e->to, p, in->module))
                    add_request_kind(&e->x, p,
                                     json_pack("{s:s, s:s, s:s}", "cmd", "purge", "module", in->module, "method",
                                               purge_method_name(in->post_purge)),
                                     5000, REQ_ALWAYS);
            }
    }
    return finish_phase(e, PHASE_POST_PURGE);
}

/* Instruction i ended with r: its record, and where the step goes next. */
static void instr_ended(Execution *e, int r)
{
    const RelupInstr *in = &e->script->v[e->i];
    e->past_ponr = e->past_ponr || (in->op == RELUP_POINT_OF_NO_RETURN && r == 0); /* its checks passed */
    e->suspended = (e->suspended || in->op == RELUP_SUSPEND) && in->op != RELUP_RESUME;
    record_instruction(
        e, e->i,
        r == 0 ? xstrdup("ok")
               : xasprintf("failed: %s", e->x.diag->errors.n ? e->x.diag->errors.v[e->x.diag->errors.n - 1] : "?"),
        e->t0 - e->start, mono_us() - e->t0);
    e->i++;
}

int supervisor_exec_step(Execution *e, Diag *diag)
{
    e->x.diag = diag;
    int r = 0;
    if (e->x.waiting && e->x.phase != PHASE_SCRIPT) { /* woken: a finishing phase's calls have ended */
        e->x.waiting = false;
        return finish_phase_ended(e);
    }
    if (e->x.waiting) { /* woken: the calls of instruction i have ended */
        e->x.waiting = false;
        r = e->x.calls_r;
        calls_clear(&e->x);
        instr_ended(e, r);
    } else {
        /* Written before it runs: after a crash, the history shows what
         * reld was doing (history_attempts_interrupted marks it). */
        e->step_end = step_end(e, e->i);
        for (size_t k = e->i; k < e->step_end; k++)
            record_instruction(e, k, xstrdup("running"), mono_us() - e->start, 0);
        flush_records(e);
    }
    /* A suspended group goes on to its resume without other steps between:
     * the event loop runs only while replies are awaited. */
    while (r == 0 && e->i < e->step_end) {
        const RelupInstr *in = &e->script->v[e->i];
        if ((long)e->i + 1 == e->crash_at)
            kill(getpid(), SIGKILL);
        if ((long)e->i + 1 == e->pause_at) {
            struct timespec t = {e->pause_ms / 1000, e->pause_ms % 1000 * 1000000L};
            nanosleep(&t, NULL);
        }
        e->t0 = mono_us();
        if ((long)e->i + 1 == e->fail_at) {
            diag_error(diag, "instruction %zu failed on purpose (RELD_TEST_FAIL_AT)", e->i + 1);
            r = -ECANCELED;
        } else {
            r = exec_instr(&e->x, in);
        }
        if (r == 0 && start_calls(&e->x) > 0 && await_calls_briefly(&e->x, AWAIT_BRIEFLY_US) > 0) {
            e->x.waiting = true;
            return SUPERVISOR_EXEC_WAITING;
        }
        if (r == 0)
            r = e->x.calls_r;
        calls_clear(&e->x);
        instr_ended(e, r);
    }
    if (r < 0)
        for (size_t k = e->i; k < e->step_end; k++)
            record_instruction(e, k, xstrdup("not run"), mono_us() - e->start, 0);
    /* Records of a suspended group waited for its resume: nothing else
     * reld does, a disk write least, may lengthen the pause. */
    flush_records(e);
    if (r < 0 || e->i == e->script->n)
        return finish(e, r);
    return 1;
}

Execution *supervisor_exec_free(Execution *e)
{
    if (!e)
        return NULL;
    calls_clear(&e->x);
    sd_event_source_disable_unref(e->x.timer);
    flush_records(e);
    for (size_t k = 0; k < e->x.n_staged; k++)
        free(e->x.staged_mod[k]);
    free(e->x.staged);
    free(e->x.staged_mod);
    free(e->x.suspended);
    for (size_t k = 0; k < e->x.n_done; k++) {
        free(e->x.done[k].module);
        json_decref(e->x.done[k].extra);
    }
    free(e->x.done);
    json_decref(e->before);
    free(e->pending);
    free(e);
    return NULL;
}
