/* Supervision of the running release's processes (daemon.h). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "daemon.h"

extern char **environ;

typedef struct App App;

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
    bool given_up;
    sd_event_source *child_src, *ctl_src;
    int ctl_fd;
    char ctl_buf[65536];
    size_t ctl_len;
    json_t *modules; /* from the process's hello: [{name, version}] */
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

static long long now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000LL + t.tv_nsec / 1000000;
}

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

/* The control channel: for now reld reads the process's hello (its
 * modules, shown by status); the executor (docs/runtime.md) sends the
 * commands of a relup over the same channel. */
static int on_control(sd_event_source *src, int fd, uint32_t revents, void *userdata)
{
    Proc *p = userdata;
    ssize_t n = read(fd, p->ctl_buf + p->ctl_len, sizeof(p->ctl_buf) - p->ctl_len);
    if (n <= 0) {
        sd_event_source_set_enabled(src, SD_EVENT_OFF);
        return 0;
    }
    p->ctl_len += (size_t)n;
    char *nl;
    while ((nl = memchr(p->ctl_buf, '\n', p->ctl_len))) {
        json_t *m = json_loadb(p->ctl_buf, (size_t)(nl - p->ctl_buf), 0, NULL);
        const char *ev = json_string_value(json_object_get(m, "event"));
        if (ev && strcmp(ev, "hello") == 0) {
            json_decref(p->modules);
            p->modules = json_incref(json_object_get(m, "modules"));
        }
        json_decref(m);
        p->ctl_len -= (size_t)(nl + 1 - p->ctl_buf);
        memmove(p->ctl_buf, nl + 1, p->ctl_len);
    }
    if (p->ctl_len == sizeof(p->ctl_buf))
        p->ctl_len = 0; /* an over-long line from a process: dropped */
    return 0;
}

static void proc_close_channels(Proc *p)
{
    sd_event_source_disable_unref(p->ctl_src);
    p->ctl_src = NULL;
    if (p->ctl_fd >= 0)
        close(p->ctl_fd);
    p->ctl_fd = -1;
    p->ctl_len = 0;
}

/* ---- start, exit, restart ---------------------------------------------------- */

static int proc_spawn(Proc *p);

static void app_stop(App *a, const char *why);

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
    long long t = now_ms();
    size_t k = 0; /* keep the restarts within the period */
    for (size_t i = 0; i < a->n_restarts; i++)
        if (t - a->restart_ms[i] < SUPERVISOR_PERIOD_MS)
            a->restart_ms[k++] = a->restart_ms[i];
    a->n_restarts = k;
    if (a->n_restarts >= SUPERVISOR_MAX_RESTARTS) {
        char *why = xasprintf("more than %d restarts in %d ms", SUPERVISOR_MAX_RESTARTS, SUPERVISOR_PERIOD_MS);
        log_error("application %s: %s; stopping it", a->name, why);
        history_event(a->s->hist, "restart_limit", "reld", a->vsn,
                      json_pack("{s:s, s:s}", "app", a->name, "reason", why));
        app_stop(a, why);
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
    sd_event_add_child(p->app->s->ev, &p->child_src, pid, WEXITED, on_exit_, p);
    watch_output(p, out[0]);
    watch_output(p, err[0]);
    sd_event_add_io(p->app->s->ev, &p->ctl_src, ctl[0], EPOLLIN, on_control, p);
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
    long long deadline = now_ms() + p->def->shutdown_ms;
    int status;
    pid_t r;
    while ((r = waitpid(p->pid, &status, WNOHANG)) == 0 && now_ms() < deadline) {
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

static void app_stop(App *a, const char *why)
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
        app_stop(s->apps[i], "shutdown");
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
