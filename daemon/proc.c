/* One managed process (proc.h). */
#include "proc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <pwd.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

#include "log.h"
#include "notify.h"
#include "reexec.h"
#include "util.h"

extern char **environ;

#define CONTROL_LINE_MAX 65536
/* The control channels are edge-triggered: with level triggering, sd-event's
 * epoll_wait (one per event dispatched) reported every channel that had a
 * reply waiting, again and again: O(n^2) in the kernel for replies from n
 * processes (a relup that touches 1,000 processes spent most of its time
 * there). */
#define CTL_EVENTS (EPOLLIN | EPOLLET)
/* At most this many reads of a channel per event, so that one process
 * cannot keep reld reading it. */
#define CTL_READS_PER_EVENT 16

/* One output pipe of one run of a process: it may still hold lines after
 * the process exited and a new run started, so it keeps its own pid. */
typedef struct OutPipe {
    struct Proc *owner;
    struct OutPipe *next;
    char *label;
    pid_t pid;
    sd_event_source *src;
    char line[4096];
    size_t len;
    long long window_start_ms;
    unsigned lines_in_window, dropped;
} OutPipe;

/* The last lines of a process's output (relayed: not when they go to the
 * journal), for the messages that say why it failed. */
#define TAIL_LINES    3
#define TAIL_LINE_MAX 200

struct Proc {
    sd_event *ev;
    char *label;
    char tail[TAIL_LINES][TAIL_LINE_MAX + 1];
    unsigned tail_next;
    char tail_text[TAIL_LINES * (TAIL_LINE_MAX + 3) + 1];
    ProcSource src;
    int *listen_fds;
    size_t n_listen;
    char *fdnames;
    pid_t pid;
    bool stopping;
    bool said_identity; /* its warning about its user, if any, is in the log */
    sd_event_source *child_src, *ctl_src, *kill_timer;
    int ctl_fd;
    bool ctl_wants_out; /* EPOLLOUT is in ctl_src's events: out holds bytes not yet sent */
    char in[CONTROL_LINE_MAX];
    size_t in_len;
    char *out; /* bytes for the control channel: out[out_off..out_len) not yet sent */
    size_t out_len, out_off;
    json_t *modules;
    OutPipe *pipes; /* output still to relay, of this run and earlier ones */
    ProcExited exited;
    void *userdata;
    /* ready: notify: the $NOTIFY_SOCKET of the current run. */
    Notify *notify;
    /* A wait for the current run to be ready (proc_wait_ready()). */
    ProcReady ready_done;
    void *ready_data;
    sd_event_source *ready_timer;
    /* Overlap (proc_spawn_successor()): the run before, serving on while
     * the current one becomes ready, then retiring. */
    struct ProcPrev {
        bool on; /* an overlap is under way */
        pid_t pid;
        const ProcessDef *def;      /* it was started with: how it stops */
        const ProcessDef *next_def; /* the new run's, in case it is not kept (the caller may switch back first) */
        sd_event_source *child_src, *kill_timer;
        bool exited; /* it ended during the overlap: how, in si */
        siginfo_t si;
        bool retiring; /* told to stop (proc_successor_commit()) */
        ProcRetired retired;
        void *retired_data;
    } prev;
    /* The end of the run before, when it ended during an overlap that then
     * failed: told from the loop (restore_prev()). */
    sd_event_source *prev_exit_src;
    siginfo_t prev_exit_si;
    /* How the new run ended, while its wait is told -ECHILD. */
    const siginfo_t *ready_exit;
    /* A new run that did not become ready, stopping (its stop_signal, then
     * SIGKILL): reaped when it exits, nobody waits for it. */
    struct ProcDiscard {
        pid_t pid;
        sd_event_source *child_src, *kill_timer;
    } discard;
    /* The call out on each lane, if any. */
    struct ProcCallSlot {
        Proc *p;
        ProcCallDone done;
        void *data;
        long long id;
        sd_event_source *timer;
    } calls[_PROC_LANE_MAX];
};

static long long next_call_id;

void proc_source_clear(ProcSource *s)
{
    free(s->path);
    free(s->dir);
    strvec_clear(&s->modules_env);
    *s = (ProcSource){0};
}

pid_t proc_pid(const Proc *p)
{
    return p->pid;
}

const char *proc_label(const Proc *p)
{
    return p->label;
}

const ProcessDef *proc_def(const Proc *p)
{
    return p->src.def;
}

bool proc_stopping(const Proc *p)
{
    return p->stopping;
}

pid_t proc_other_run(const Proc *p)
{
    return p->discard.pid ? p->discard.pid : p->prev.on && p->prev.pid ? p->prev.pid : p->prev_exit_src ? -1 : 0;
}

bool proc_speaks_protocol(const Proc *p)
{
    return p->pid && p->modules && p->ctl_fd >= 0;
}

json_t *proc_modules(const Proc *p)
{
    return p->modules;
}

const char *proc_module_version(const Proc *p, const char *module)
{
    size_t i;
    json_t *m;
    json_array_foreach(p->modules, i, m)
    {
        const char *name = json_string_value(json_object_get(m, "name"));
        if (name && strcmp(name, module) == 0)
            return json_string_value(json_object_get(m, "version"));
    }
    return NULL;
}

/* ---- listening sockets ---------------------------------------------------- */

static int open_listener(const char *spec)
{
    int fd = -1;
    if (strncmp(spec, "unix:", 5) == 0) {
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        snprintf(a.sun_path, sizeof(a.sun_path), "%s", spec + 5);
        (void)unlink(a.sun_path); /* a stale socket of an earlier run; absent is fine */
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, 512) < 0)
            goto fail;
        return fd;
    }
    const char *colon = strrchr(spec, ':');
    if (!colon)
        return -EINVAL;
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
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        (v6 ? bind(fd, (struct sockaddr *)&a6, sizeof(a6)) : bind(fd, (struct sockaddr *)&a4, sizeof(a4))) < 0 ||
        listen(fd, 512) < 0)
        goto fail;
    return fd;
fail:;
    int r = -errno;
    if (fd >= 0)
        close(fd);
    return r;
}

Proc *proc_new(sd_event *ev, const char *label, ProcSource *src, ProcExited exited, void *userdata, Diag *diag)
{
    Proc *p = xcalloc(1, sizeof(*p));
    p->ev = ev;
    p->label = xstrdup(label);
    p->src = *src;
    *src = (ProcSource){0};
    p->ctl_fd = -1;
    p->exited = exited;
    p->userdata = userdata;
    const ProcessDef *def = p->src.def;
    p->listen_fds = xcalloc(def->n_sockets + 1, sizeof(int));
    p->fdnames = xstrdup("");
    for (size_t k = 0; k < def->n_sockets; k++) {
        int fd = open_listener(def->sockets[k].listen);
        if (fd < 0) {
            diag_error(diag, "%s: cannot listen on %s: %s", label, def->sockets[k].listen, strerror(-fd));
            return proc_free(p);
        }
        p->listen_fds[p->n_listen++] = fd;
        char *names = xasprintf("%s%s%s", p->fdnames, k ? ":" : "", def->sockets[k].name);
        free(p->fdnames);
        p->fdnames = names;
    }
    return p;
}

void proc_set_source(Proc *p, ProcSource *src)
{
    proc_source_clear(&p->src);
    p->src = *src;
    *src = (ProcSource){0};
}

/* ---- output --------------------------------------------------------------- */

static void relay_line(OutPipe *o, const char *line, size_t len)
{
    if (o->owner && len) {
        Proc *p = o->owner;
        snprintf(p->tail[p->tail_next], sizeof(p->tail[0]), "%.*s", (int)len, line);
        p->tail_next = (p->tail_next + 1) % TAIL_LINES;
    }
    long long now = mono_ms();
    if (now - o->window_start_ms >= PROC_RELAY_PERIOD_MS) {
        if (o->dropped)
            log_warning("%s[%d]: %u lines of output dropped (more than %d in %d ms)", o->label, (int)o->pid, o->dropped,
                        PROC_RELAY_BURST, PROC_RELAY_PERIOD_MS);
        o->window_start_ms = now;
        o->lines_in_window = o->dropped = 0;
    }
    if (o->lines_in_window++ >= PROC_RELAY_BURST) {
        o->dropped++;
        return;
    }
    log_info("%s[%d]: %.*s", o->label, (int)o->pid, (int)len, line);
}

static void out_pipe_free(OutPipe *o)
{
    for (OutPipe **p = &o->owner->pipes; *p; p = &(*p)->next)
        if (*p == o) {
            *p = o->next;
            break;
        }
    if (o->dropped)
        log_warning("%s[%d]: %u lines of output dropped (more than %d in %d ms)", o->label, (int)o->pid, o->dropped,
                    PROC_RELAY_BURST, PROC_RELAY_PERIOD_MS);
    sd_event_source_disable_unref(o->src);
    free(o->label);
    free(o);
}

/* Reads what the pipe holds now: 1 when it read some, 0 when there was
 * nothing, -1 when the pipe has ended (o is freed then). */
static int read_output(OutPipe *o, int fd)
{
    char buf[65536];
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    if (n <= 0) {
        if (o->len)
            relay_line(o, o->line, o->len);
        out_pipe_free(o); /* closes fd: the source owns it */
        return -1;
    }
    for (ssize_t i = 0; i < n; i++) {
        if (buf[i] == '\n' || o->len == sizeof(o->line)) {
            relay_line(o, o->line, o->len);
            o->len = 0;
            if (buf[i] == '\n')
                continue;
        }
        o->line[o->len++] = buf[i];
    }
    return 1;
}

static int on_output(sd_event_source *src, int fd, uint32_t revents, void *userdata)
{
    (void)read_output(userdata, fd); /* its end frees it */
    return 0;
}

/* Reads the pipes of process pid to what they hold now (never waiting:
 * the pipes block), so that its last words (a loader's "cannot open
 * shared object file") are relayed before its exit is told. */
static void drain_output(Proc *p, pid_t pid)
{
    for (OutPipe *o = p->pipes, *next; o; o = next) {
        next = o->next;
        int fd = o->pid == pid ? sd_event_source_get_io_fd(o->src) : -1;
        for (int k = 0; fd >= 0 && k < 16; k++) {
            struct pollfd pfd = {.fd = fd, .events = POLLIN};
            if (poll(&pfd, 1, 0) != 1 || read_output(o, fd) != 1)
                break;
        }
    }
}

const char *proc_dir(const Proc *p)
{
    return p->src.dir;
}

const char *proc_last_output(Proc *p)
{
    char *t = p->tail_text;
    *t = 0;
    for (unsigned k = 0; k < TAIL_LINES; k++) {
        const char *line = p->tail[(p->tail_next + k) % TAIL_LINES];
        if (*line)
            t += sprintf(t, "%s%s", t == p->tail_text ? "" : " | ", line);
    }
    return p->tail_text;
}

/* Relays what fd (a pipe's read end, taken) carries. */
static int watch_output(Proc *p, int fd)
{
    OutPipe *o = xcalloc(1, sizeof(*o));
    o->owner = p;
    o->label = xstrdup(p->label);
    o->pid = p->pid;
    o->window_start_ms = mono_ms();
    int r = sd_event_add_io(p->ev, &o->src, fd, EPOLLIN, on_output, o);
    if (r < 0) {
        close(fd);
        free(o->label);
        free(o);
        return r;
    }
    (void)sd_event_source_set_io_fd_own(o->src, true); /* cannot fail on an io source */
    o->next = p->pipes;
    p->pipes = o;
    return 0;
}

/* ---- control channel -------------------------------------------------------- */

static void call_forget(struct ProcCallSlot *c)
{
    c->done = NULL;
    c->data = NULL;
    c->id = 0;
    if (c->timer)
        (void)sd_event_source_set_enabled(c->timer, SD_EVENT_OFF); /* cannot fail */
}

static void call_end(struct ProcCallSlot *c, json_t *reply, int r)
{
    ProcCallDone done = c->done;
    void *data = c->data;
    call_forget(c);
    if (done)
        done(c->p, reply, r, data);
}

static void channel_close(Proc *p)
{
    p->ctl_src = sd_event_source_disable_unref(p->ctl_src); /* closes ctl_fd: the source owns it */
    p->ctl_fd = -1;
    p->ctl_wants_out = false;
    p->in_len = 0;
    free(p->out);
    p->out = NULL;
    p->out_len = p->out_off = 0;
    for (ProcLane l = 0; l < _PROC_LANE_MAX; l++)
        if (p->calls[l].done)
            call_end(&p->calls[l], NULL, -ECONNRESET);
}

static void take_modules(Proc *p, json_t *m)
{
    json_t *mods = json_object_get(m, "modules");
    if (json_is_array(mods)) {
        json_decref(p->modules);
        p->modules = json_incref(mods);
    }
}

static void handle_line(Proc *p, const char *line, size_t len)
{
    json_t *m = json_loadb(line, len, 0, NULL);
    if (!json_is_object(m)) {
        log_warning("%s[%d]: a control line that is not a JSON object: ignored", p->label, (int)p->pid);
        json_decref(m);
        return;
    }
    const char *ev = json_string_value(json_object_get(m, "event"));
    if (ev) {
        if (strcmp(ev, "hello") == 0)
            take_modules(p, m);
    } else {
        if (json_is_true(json_object_get(m, "ok")))
            take_modules(p, m);
        /* The awaited reply ends the call; others (late answers to
         * timed-out requests, answers to one-way sends) only told what the
         * process runs now. */
        json_t *id = json_object_get(m, "id");
        for (ProcLane l = 0; l < _PROC_LANE_MAX; l++)
            if (p->calls[l].done && json_is_integer(id) && json_integer_value(id) == p->calls[l].id) {
                call_end(&p->calls[l], m, 0);
                break;
            }
    }
    json_decref(m);
}

static int flush_out(Proc *p)
{
    while (p->out_off < p->out_len) {
        /* MSG_NOSIGNAL: a dead process must not kill reld with SIGPIPE. */
        ssize_t n = send(p->ctl_fd, p->out + p->out_off, p->out_len - p->out_off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            break;
        if (n <= 0)
            return -ECONNRESET;
        p->out_off += (size_t)n;
    }
    if (p->out_off == p->out_len)
        p->out_off = p->out_len = 0; /* all sent: the buffer starts over (no moving of what is left) */
    if (p->ctl_wants_out == (p->out_len > 0))
        return 0; /* no epoll_ctl per send */
    p->ctl_wants_out = p->out_len > 0;
    return sd_event_source_set_io_events(p->ctl_src, CTL_EVENTS | (p->ctl_wants_out ? EPOLLOUT : 0));
}

static int on_control(sd_event_source *src, int fd, uint32_t revents, void *userdata)
{
    Proc *p = userdata;
    if ((revents & EPOLLOUT) && flush_out(p) < 0) {
        channel_close(p);
        return 0;
    }
    if (!(revents & (EPOLLIN | EPOLLHUP | EPOLLERR)))
        return 0;
    /* Edge-triggered (CTL_EVENTS): read to EAGAIN, or the rest would wait
     * for the next byte to come. */
    for (int reads = 0; reads < CTL_READS_PER_EVENT; reads++) {
        ssize_t n = read(fd, p->in + p->in_len, sizeof(p->in) - p->in_len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return 0;
        if (n <= 0) {
            channel_close(p);
            return 0;
        }
        p->in_len += (size_t)n;
        char *nl, *start = p->in;
        while ((nl = memchr(start, '\n', p->in_len - (size_t)(start - p->in)))) {
            handle_line(p, start, (size_t)(nl - start));
            if (p->ctl_fd < 0) /* a call's end closed the channel */
                return 0;
            start = nl + 1;
        }
        p->in_len -= (size_t)(start - p->in);
        memmove(p->in, start, p->in_len);
        if (p->in_len == sizeof(p->in)) {
            log_warning("%s[%d]: a control line longer than %d bytes: dropped", p->label, (int)p->pid,
                        CONTROL_LINE_MAX);
            p->in_len = 0;
        }
    }
    /* A process that writes without end gets its turn back later, after the
     * others: setting the events again re-arms the edge (sd-event never
     * skips that for an edge-triggered source). */
    if (sd_event_source_set_io_events(src, CTL_EVENTS | (p->ctl_wants_out ? EPOLLOUT : 0)) < 0)
        channel_close(p); /* it would never be read again */
    return 0;
}

static int send_line(Proc *p, json_t *req)
{
    if (p->ctl_fd < 0) {
        json_decref(req);
        return -ECONNRESET;
    }
    char *text = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    if (!text)
        return -ENOMEM;
    size_t len = strlen(text);
    p->out = xrealloc(p->out, p->out_len + len + 1);
    memcpy(p->out + p->out_len, text, len);
    p->out[p->out_len + len] = '\n';
    p->out_len += len + 1;
    free(text);
    int r = flush_out(p);
    if (r < 0)
        channel_close(p);
    return r;
}

void proc_cancel_call_on(Proc *p, ProcLane lane)
{
    call_forget(&p->calls[lane]);
}

void proc_cancel_call(Proc *p)
{
    proc_cancel_call_on(p, PROC_LANE_CONTROL);
}

int proc_send(Proc *p, json_t *req)
{
    json_object_set_new(req, "id", json_integer(++next_call_id));
    return send_line(p, req);
}

static int on_call_timeout(sd_event_source *s, uint64_t usec, void *userdata)
{
    call_end(userdata, NULL, -ETIMEDOUT);
    return 0;
}

int proc_call(Proc *p, json_t *req, int timeout_ms, ProcCallDone done, void *userdata)
{
    return proc_call_on(p, PROC_LANE_CONTROL, req, timeout_ms, done, userdata);
}

int proc_call_on(Proc *p, ProcLane lane, json_t *req, int timeout_ms, ProcCallDone done, void *userdata)
{
    struct ProcCallSlot *c = &p->calls[lane];
    if (c->done) {
        json_decref(req);
        return -EBUSY;
    }
    long long id = ++next_call_id;
    json_object_set_new(req, "id", json_integer(id));
    int r = send_line(p, req);
    if (r < 0)
        return r;
    uint64_t at = (uint64_t)(mono_us() + (long long)timeout_ms * 1000);
    c->p = p;
    if (c->timer) {
        r = sd_event_source_set_time(c->timer, at);
        if (r >= 0)
            r = sd_event_source_set_enabled(c->timer, SD_EVENT_ONESHOT);
    } else {
        r = sd_event_add_time(p->ev, &c->timer, CLOCK_MONOTONIC, at, 1000, on_call_timeout, c);
    }
    if (r < 0)
        return r;
    c->done = done;
    c->data = userdata;
    c->id = id;
    return 0;
}

/* ---- start, exit, stop --------------------------------------------------------- */

static void notify_prepare(Proc *p);
static bool overlap_exit(Proc *p, const siginfo_t *si);
static void retire_prev(Proc *p);

static int on_exit_(sd_event_source *src, const siginfo_t *si, void *userdata)
{
    Proc *p = userdata;
    if (overlap_exit(p, si))
        return 0;
    p->child_src = sd_event_source_disable_unref(p->child_src);
    if (p->kill_timer)
        (void)sd_event_source_set_enabled(p->kill_timer, SD_EVENT_OFF); /* cannot fail */
    channel_close(p);
    bool signaled = si->si_code == CLD_KILLED || si->si_code == CLD_DUMPED;
    if (p->stopping)
        log_info("%s[%d] stopped (%s %d)", p->label, (int)p->pid, signaled ? "signal" : "exit status", si->si_status);
    else
        log_info("%s[%d] %s %d", p->label, (int)p->pid, signaled ? "killed by signal" : "exited with status",
                 si->si_status);
    drain_output(p, p->pid);
    p->pid = 0;
    json_decref(p->modules);
    p->modules = NULL;
    p->exited(p, si, p->userdata);
    return 0;
}

/* Code of the child of a spawn, which runs in reld's memory (CLONE_VM):
 * not instrumented by ASan, whose bookkeeping (stack bounds, the shadow of
 * a stack it does not know) belongs to the parent's thread. */
#define CHILD_CODE __attribute__((no_sanitize_address))

/* Formats n into buf (async-signal-safe, for the child of a spawn). */
CHILD_CODE static void put_number(char *buf, long n)
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

/* Variables of reld's own that are not the process's business. */
static bool inherited(const char *e)
{
    static const char *const own[] = {
        "RELD_", "LISTEN_", "NOTIFY_SOCKET=", "WATCHDOG_USEC=", "WATCHDOG_PID=", "JOURNAL_STREAM=", NULL};
    for (const char *const *o = own; *o; o++)
        if (strncmp(e, *o, strlen(*o)) == 0)
            return false;
    return true;
}

/* ---- who it runs as ------------------------------------------------------------ */

void proc_identity_clear(ProcIdentity *id)
{
    free(id->groups);
    *id = (ProcIdentity){0};
}

static bool all_digits(const char *s)
{
    return *s && strspn(s, "0123456789") == strlen(s);
}

/* A group's id by name or number: 0, or -ESRCH. */
static int group_id(const char *name, gid_t *ret)
{
    if (all_digits(name)) {
        *ret = (gid_t)strtoul(name, NULL, 10);
        return 0;
    }
    struct group g, *res = NULL;
    char buf[16384];
    if (getgrnam_r(name, &g, buf, sizeof(buf), &res) != 0 || !res)
        return -ESRCH;
    *ret = res->gr_gid;
    return 0;
}

static void add_group(ProcIdentity *id, gid_t g)
{
    for (size_t i = 0; i < id->n_groups; i++)
        if (id->groups[i] == g)
            return;
    id->groups = xrealloc(id->groups, (id->n_groups + 1) * sizeof(gid_t));
    id->groups[id->n_groups++] = g;
}

static int cap_last(void)
{
    int fd = open("/proc/sys/kernel/cap_last_cap", O_RDONLY | O_CLOEXEC);
    char buf[16] = "";
    ssize_t n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;
    if (fd >= 0)
        close(fd);
    int last = n > 0 ? atoi(buf) : 0;
    return last > 0 && last < 64 ? last : APPDEFS_CAP_MAX;
}

int proc_identity(const ProcessDef *def, ProcIdentity *ret, Diag *diag)
{
    ProcIdentity id = {.uid = geteuid(), .gid = getegid()};
    const SrcPos *up = &def->user_pos, *gp = &def->group_pos;
    bool root = geteuid() == 0;
    int r = 0;
    const char *user_name = NULL;
    struct passwd pw, *pres = NULL;
    char pbuf[16384];
    if (def->user) {
        int e = all_digits(def->user) ? getpwuid_r((uid_t)strtoul(def->user, NULL, 10), &pw, pbuf, sizeof(pbuf), &pres)
                                      : getpwnam_r(def->user, &pw, pbuf, sizeof(pbuf), &pres);
        if (e == 0 && pres) {
            id.uid = pres->pw_uid;
            id.gid = pres->pw_gid;
            user_name = pres->pw_name;
        } else if (all_digits(def->user) && def->group) {
            id.uid = (uid_t)strtoul(def->user, NULL, 10); /* an id without a name, as systemd allows */
        } else {
            diag_error_at(diag, up->file, up->line, up->col, "process %s: no such user '%s'%s", def->name, def->user,
                          all_digits(def->user) ? " (a number without a passwd entry needs group:)" : "");
            r = -ESRCH;
        }
        id.change_ids = true;
    } else if (root) {
        diag_warning(diag,
                     "%s:%d:%d: process %s has no user: it runs as root, reld's own user; name one (user: NAME), "
                     "or write user: root to say so",
                     def->pos.file ? def->pos.file : "<input>", def->pos.line, def->pos.col, def->name);
    }
    if (def->group) {
        if (group_id(def->group, &id.gid) < 0) {
            diag_error_at(diag, gp->file, gp->line, gp->col, "process %s: no such group '%s'", def->name, def->group);
            r = -ESRCH;
        }
        id.change_ids = true;
    }
    if (r == 0 && user_name) {
        int n = 64;
        gid_t *gs = xcalloc((size_t)n, sizeof(gid_t));
        if (getgrouplist(user_name, id.gid, gs, &n) < 0) {
            gs = xrealloc(gs, (size_t)n * sizeof(gid_t));
            if (getgrouplist(user_name, id.gid, gs, &n) < 0)
                n = 0; /* it changed under us: its primary group alone */
        }
        for (int i = 0; i < n; i++)
            add_group(&id, gs[i]);
        free(gs);
    }
    for (size_t k = 0; k < def->supplementary_groups.n; k++) {
        gid_t g;
        const SrcPos *sp = &def->supplementary_pos[k];
        if (group_id(def->supplementary_groups.v[k], &g) < 0) {
            diag_error_at(diag, sp->file, sp->line, sp->col, "process %s: no such group '%s'", def->name,
                          def->supplementary_groups.v[k]);
            r = -ESRCH;
        } else {
            add_group(&id, g);
        }
        id.change_ids = true;
    }
    if (r == 0 && !root && id.change_ids && (id.uid != geteuid() || id.gid != getegid() || id.n_groups > 0)) {
        diag_error_at(diag, def->pos.file, def->pos.line, def->pos.col,
                      "process %s: reld runs as uid %u, not root: it cannot switch to the user and groups named",
                      def->name, (unsigned)geteuid());
        r = -EPERM;
    }
    if (def->has_capabilities) {
        id.bound_caps = true;
        id.keep_caps = def->capabilities;
        id.cap_last = cap_last();
        if (r == 0 && !root) {
            diag_error_at(diag, def->pos.file, def->pos.line, def->pos.col,
                          "process %s: reld runs as uid %u, not root: it cannot bound capabilities", def->name,
                          (unsigned)geteuid());
            r = -EPERM;
        }
    }
    if (r < 0) {
        proc_identity_clear(&id);
        return r;
    }
    *ret = id;
    return 0;
}

/* In the child of a spawn (async-signal-safe only): "reld: cannot STEP:
 * errno N" on its stderr, and exit 122. */
CHILD_CODE static _Noreturn void child_fail(const char *step)
{
    char num[24];
    put_number(num, errno);
    (void)!write(2, "reld: cannot ", 13);
    (void)!write(2, step, strlen(step));
    (void)!write(2, ": errno ", 8);
    (void)!write(2, num, strlen(num));
    (void)!write(2, "\n", 1);
    _exit(122);
}

/* Groups, group, the bounding set (which needs CAP_SETPCAP: before the
 * uid changes), then the user. Every result checked. The ids change by
 * raw system calls: glibc's wrappers, in a child that shares reld's memory
 * (proc_spawn), would take reld's threads for its own and change their
 * ids too (its set*id broadcast), as glibc's posix_spawn avoids the same way. */
#ifdef SYS_setresuid32
/* Where the plain calls take 16-bit ids (i386, 32-bit arm): a uid of
 * 131072 would become 0, root. glibc's own wrappers use these there. */
#define SYS_SETGROUPS SYS_setgroups32
#define SYS_SETRESGID SYS_setresgid32
#define SYS_SETRESUID SYS_setresuid32
#else
#define SYS_SETGROUPS SYS_setgroups
#define SYS_SETRESGID SYS_setresgid
#define SYS_SETRESUID SYS_setresuid
#endif

CHILD_CODE void proc_identity_apply(const ProcIdentity *id)
{
    if (id->change_ids && syscall(SYS_SETGROUPS, id->n_groups, id->groups) < 0)
        child_fail("setgroups");
    if (id->change_ids && syscall(SYS_SETRESGID, id->gid, id->gid, id->gid) < 0)
        child_fail("setresgid");
    for (int cap = 0; id->bound_caps && cap <= id->cap_last; cap++)
        if (!(id->keep_caps & (1ULL << cap)) && prctl(PR_CAPBSET_DROP, (unsigned long)cap, 0, 0, 0) < 0)
            child_fail("drop a capability from the bounding set (PR_CAPBSET_DROP)");
    if (id->change_ids && syscall(SYS_SETRESUID, id->uid, id->uid, id->uid) < 0)
        child_fail("setresuid");
}

/* Where the process's stdout or stderr go: a journal stream of its own
 * when reld logs to the journal, else a pipe reld relays. *ret_relay is
 * the read end to relay, or -1. */
static int output_fd(Proc *p, int priority, int *ret_relay)
{
    *ret_relay = -1;
    if (log_to_journal()) {
        int fd = sd_journal_stream_fd(p->label, priority, 1);
        if (fd >= 0)
            return fd;
        log_warning("%s: no journal stream (%s); relaying its output", p->label, strerror(-fd));
    }
    int pp[2];
    if (pipe2(pp, O_CLOEXEC) < 0)
        return -errno;
    *ret_relay = pp[0];
    return pp[1];
}

/* ---- the child of a spawn ------------------------------------------------------ */

/* The child runs on a stack of its own, in reld's memory (CLONE_VM), while
 * the thread that spawns it waits (CLONE_VFORK) until it has called execve
 * or exited: no page table is copied, so a spawn costs the same whatever
 * reld's size (fork()'s cost grows with it). The child reads what the
 * parent made for it and writes only into its area below. */
#define SPAWN_STACK_SIZE ((size_t)64 * 1024)

typedef struct SpawnArea {
    char listen_pid[32]; /* "LISTEN_PID=" and the child's pid, which the child writes */
    int exec_errno;      /* execve's errno when it failed (0: it did not) */
} SpawnArea;

typedef struct Spawn {
    SpawnArea *area;
    const int *listen_fds;
    size_t n_listen;
    int ctl, out, err;
    const ProcIdentity *id;
    const char *dir, *path;
    char **argv, **envp;
} Spawn;

/* The child: every signal is blocked (the parent blocked them around the
 * spawn), and reld's handlers are reset before any is let through: they
 * would run reld's code on reld's memory. fds 0-2, then 3.. listening
 * sockets, then control. Exits 124 when the descriptors cannot be set up,
 * 125 when reld died already, 126 when the directory cannot be entered,
 * 127 when execve failed, 122 from proc_identity_apply(). */
CHILD_CODE static int spawn_child(void *arg)
{
    const Spawn *s = arg;
    for (int sig = 1; sig < _NSIG; sig++) {
        struct sigaction sa;
        /* Ignored signals stay ignored, handlers become SIG_DFL: what
         * execve does anyway, done before it. glibc's own signals fail here. */
        if (sigaction(sig, NULL, &sa) == 0 && sa.sa_handler != SIG_IGN && sa.sa_handler != SIG_DFL) {
            sa.sa_handler = SIG_DFL;
            sa.sa_flags = 0;
            (void)sigaction(sig, &sa, NULL); /* a valid signal that has a handler: cannot fail */
        }
    }
    int high[PROCESS_SOCKETS_MAX]; /* app.yaml allows no more */
    size_t n = s->n_listen < PROCESS_SOCKETS_MAX ? s->n_listen : PROCESS_SOCKETS_MAX;
    for (size_t i = 0; i < n; i++)
        high[i] = fcntl(s->listen_fds[i], F_DUPFD_CLOEXEC, 100);
    int hctl = fcntl(s->ctl, F_DUPFD_CLOEXEC, 100), hout = fcntl(s->out, F_DUPFD_CLOEXEC, 100),
        herr = fcntl(s->err, F_DUPFD_CLOEXEC, 100);
    int devnull = open("/dev/null", O_RDONLY);
    if (devnull < 0 || hctl < 0 || hout < 0 || herr < 0 || dup2(devnull, 0) < 0 || dup2(hout, 1) < 0 ||
        dup2(herr, 2) < 0)
        _exit(124);
    for (size_t i = 0; i < n; i++)
        if (high[i] < 0 || dup2(high[i], 3 + (int)i) < 0)
            _exit(124);
    if (dup2(hctl, 3 + (int)n) < 0)
        _exit(124);
    if (s->n_listen)
        put_number(s->area->listen_pid + 11, (long)getpid());
    sigset_t none;
    sigemptyset(&none);
    (void)sigprocmask(SIG_SETMASK, &none, NULL); /* cannot fail with a valid set */
    proc_identity_apply(s->id);
    /* A managed process dies with reld (as processes die with their
     * VM): a restarted reld then boots one consistent release. After
     * the change of user, which clears it. */
    (void)prctl(PR_SET_PDEATHSIG, SIGKILL); /* cannot fail with a valid signal */
    if (getppid() == 1)
        _exit(125); /* reld died before the line above */
    (void)signal(SIGPIPE, SIG_DFL);
    (void)setpgid(0, 0); /* cannot fail for ourselves, a new child */
    if (chdir(s->dir) < 0)
        _exit(126);
    execve(s->path, s->argv, s->envp);
    s->area->exec_errno = errno;
    _exit(127);
}

#ifdef RELD_TEST_HOOKS
/* RELD_TEST_SPAWN_BALLAST_MB=N: N MiB of reld's memory, written once (so
 * resident) at the first spawn, for bench/scale-bench to measure a spawn's
 * cost against reld's size. Never freed: it is reld's size from then on. */
static void test_ballast(void)
{
    static bool done;
    static char *ballast; /* reachable, for LeakSanitizer */
    const char *mb = getenv("RELD_TEST_SPAWN_BALLAST_MB");
    if (done || !mb)
        return;
    done = true;
    size_t n = strtoul(mb, NULL, 10) << 20;
    ballast = n ? malloc(n) : NULL;
    if (ballast)
        memset(ballast, 1, n);
    log_info("test hook: %zu MiB of ballast %s", n >> 20, ballast || !n ? "resident" : "not allocated");
}
#endif

/* Starts the child of s: its pid (it has called execve or exited by
 * then), or -errno. */
static pid_t spawn_start(const Spawn *s)
{
    char *top = (char *)s->area + SPAWN_STACK_SIZE; /* the stack grows down to the area */
    sigset_t all, old;
    sigfillset(&all);
    /* No handler of reld's may run in the child before it resets them. */
    int r = pthread_sigmask(SIG_SETMASK, &all, &old);
    if (r > 0)
        return -r;
    pid_t pid;
#ifdef RELD_TEST_HOOKS
    test_ballast();
    /* The fork() reld used before, for bench/scale-bench's baseline. */
    if (getenv("RELD_TEST_SPAWN_FORK")) {
        pid = fork();
        if (pid == 0)
            _exit(spawn_child((void *)s));
    } else
#endif
        pid = clone(spawn_child, top, CLONE_VM | CLONE_VFORK | SIGCHLD, (void *)s);
    int e = errno;
    (void)pthread_sigmask(SIG_SETMASK, &old, NULL); /* cannot fail: it was the mask */
    return pid < 0 ? -e : pid;
}

int proc_spawn(Proc *p)
{
    memset(p->tail, 0, sizeof(p->tail)); /* "its last output" is this run's */
    p->tail_next = 0;
    notify_prepare(p);
    int ctl[2], out_relay = -1, err_relay = -1;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ctl) < 0)
        return -errno;
    int out = output_fd(p, LOG_INFO, &out_relay);
    int err = out < 0 ? out : output_fd(p, LOG_WARNING, &err_relay);
    if (out < 0 || err < 0) {
        int r = out < 0 ? out : err;
        close(ctl[0]);
        close(ctl[1]);
        if (out >= 0)
            close(out);
        if (out_relay >= 0)
            close(out_relay);
        return r;
    }
    /* Everything the child needs is made before it starts: it makes only
     * async-signal-safe calls (it shares reld's memory; reld has threads). */
    const ProcessDef *def = p->src.def;
    char **argv = xcalloc(def->args.n + 2, sizeof(char *));
    argv[0] = p->src.path;
    for (size_t i = 0; i < def->args.n; i++)
        argv[i + 1] = def->args.v[i];
    StrVec env = {0};
    for (char **e = environ; *e; e++)
        if (inherited(*e))
            strvec_push(&env, *e);
    strvec_push_take(&env, xasprintf("RELD_CONTROL_FD=%zu", 3 + p->n_listen));
    strvec_push_take(&env, xasprintf("RELD_PROCESS=%s", def->name));
    if (p->notify)
        strvec_push_take(&env, xasprintf("NOTIFY_SOCKET=%s", notify_address(p->notify)));
    char *mods = xstrdup("");
    for (size_t i = 0; i < p->src.modules_env.n; i++) {
        char *m = xasprintf("%s%s%s", mods, i ? ":" : "", p->src.modules_env.v[i]);
        free(mods);
        mods = m;
    }
    strvec_push_take(&env, xasprintf("RELD_MODULES=%s", mods));
    free(mods);
    struct stat st;
    if (out_relay < 0 && fstat(out, &st) == 0) /* a journal stream: say so, as systemd does */
        strvec_push_take(
            &env, xasprintf("JOURNAL_STREAM=%llu:%llu", (unsigned long long)st.st_dev, (unsigned long long)st.st_ino));
    if (p->n_listen) {
        strvec_push_take(&env, xasprintf("LISTEN_FDS=%zu", p->n_listen));
        strvec_push_take(&env, xasprintf("LISTEN_FDNAMES=%s", p->fdnames));
    }
    GROW(env.v, env.cap, env.n + 2); /* LISTEN_PID (in the child's area, not env's to free) and NULL */
    ProcIdentity id = {0};
    Diag idd = {0};
    int idr = proc_identity(def, &id, &idd);
    if (idr < 0) {
        log_error("%s: %s", p->label, idd.errors.n ? idd.errors.v[0] : strerror(-idr));
        diag_clear(&idd);
        free(argv);
        strvec_clear(&env);
        close(ctl[0]);
        close(ctl[1]);
        close(out);
        close(err);
        if (out_relay >= 0)
            close(out_relay);
        if (err_relay >= 0)
            close(err_relay);
        return idr;
    }
    if (idd.warnings.n && !p->said_identity) /* once per process, not at every restart */
        log_warning("%s", idd.warnings.v[0]);
    p->said_identity = true;
    diag_clear(&idd);

    pid_t pid = 0;
    int exec_errno = 0;
    SpawnArea *area =
        mmap(NULL, SPAWN_STACK_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    int r = area == MAP_FAILED ? -errno : 0;
    if (r == 0) {
        size_t k = env.n;
        strcpy(area->listen_pid, "LISTEN_PID="); /* the child writes its pid after it */
        if (p->n_listen)
            env.v[k++] = area->listen_pid;
        env.v[k] = NULL;
        Spawn s = {.area = area,
                   .listen_fds = p->listen_fds,
                   .n_listen = p->n_listen,
                   .ctl = ctl[1],
                   .out = out,
                   .err = err,
                   .id = &id,
                   .dir = p->src.dir,
                   .path = p->src.path,
                   .argv = argv,
                   .envp = env.v};
        pid = spawn_start(&s);
        r = pid < 0 ? pid : 0;
        exec_errno = area->exec_errno;        /* the child is done with the area */
        (void)munmap(area, SPAWN_STACK_SIZE); /* cannot fail for a mapping of ours */
    }
    proc_identity_clear(&id);
    free(argv);
    strvec_clear(&env);
    close(ctl[1]);
    close(out);
    close(err);
    if (r < 0) {
        close(ctl[0]);
        if (out_relay >= 0)
            close(out_relay);
        if (err_relay >= 0)
            close(err_relay);
        return r;
    }
    p->pid = pid;
    p->stopping = false;
    p->ctl_fd = ctl[0];
    if (p->notify)
        notify_expect(p->notify, pid);
    r = sd_event_add_child(p->ev, &p->child_src, pid, WEXITED, on_exit_, p);
    if (r < 0) {
        /* Nobody would reap it: it goes now (SIGKILL cannot be refused, so
         * the wait is immediate). */
        log_error("%s[%d]: cannot watch the process (%s); killing it", p->label, (int)pid, strerror(-r));
        (void)kill(pid, SIGKILL);
        (void)waitpid(pid, NULL, 0);
        p->pid = 0;
        close(ctl[0]);
        p->ctl_fd = -1;
        if (out_relay >= 0)
            close(out_relay);
        if (err_relay >= 0)
            close(err_relay);
        return r;
    }
    if (fcntl(p->ctl_fd, F_SETFL, O_NONBLOCK) < 0 ||
        (r = sd_event_add_io(p->ev, &p->ctl_src, p->ctl_fd, CTL_EVENTS, on_control, p)) < 0) {
        r = r < 0 ? r : -errno;
        close(p->ctl_fd);
        p->ctl_fd = -1;
        log_error("%s[%d]: no control channel (%s); it runs without one", p->label, (int)pid, strerror(-r));
    } else {
        (void)sd_event_source_set_io_fd_own(p->ctl_src, true); /* cannot fail on an io source */
        /* Replies the executor awaits come before other work. */
        (void)sd_event_source_set_priority(p->ctl_src, SD_EVENT_PRIORITY_IMPORTANT);
    }
    if (out_relay >= 0 && watch_output(p, out_relay) < 0)
        log_error("%s[%d]: its stdout cannot be relayed", p->label, (int)pid);
    if (err_relay >= 0 && watch_output(p, err_relay) < 0)
        log_error("%s[%d]: its stderr cannot be relayed", p->label, (int)pid);
    log_info("%s[%d] started", p->label, (int)pid);
    if (exec_errno) /* it exits 127, which comes through the loop as any exit */
        log_error("%s[%d]: cannot execute %s: %s", p->label, (int)pid, p->src.path, strerror(exec_errno));
    return 0;
}

static int on_kill_timer(sd_event_source *s, uint64_t usec, void *userdata)
{
    Proc *p = userdata;
    if (p->pid) {
        log_warning("%s[%d] did not stop within %ld ms: SIGKILL", p->label, (int)p->pid, p->src.def->shutdown_ms);
        /* Its process group (it leads one since it started): what it
         * started goes with it. It exists until we reap it. */
        (void)kill(-p->pid, SIGKILL);
        (void)kill(p->pid, SIGKILL); /* in case it has not made its group yet */
    }
    return 0;
}

int proc_stop(Proc *p)
{
    if (!p->pid) {
        p->stopping = true;
        return 1;
    }
    if (p->stopping)
        return 0; /* already on its way: its SIGKILL stays when it was due */
    p->stopping = true;
    if (p->prev.on && !p->prev.retiring && p->prev.pid)
        retire_prev(p); /* stopped during an overlap (reld stops): both runs go */
    log_info("%s[%d] told to stop (%s)", p->label, (int)p->pid, appdefs_signal_name(p->src.def->stop_signal));
    (void)kill(p->pid, p->src.def->stop_signal); /* it exists until we reap it */
    uint64_t at = (uint64_t)(mono_us() + p->src.def->shutdown_ms * 1000LL);
    int r;
    if (p->kill_timer) {
        r = sd_event_source_set_time(p->kill_timer, at);
        if (r >= 0)
            r = sd_event_source_set_enabled(p->kill_timer, SD_EVENT_ONESHOT);
    } else {
        r = sd_event_add_time(p->ev, &p->kill_timer, CLOCK_MONOTONIC, at, 1000, on_kill_timer, p);
    }
    if (r < 0) {
        log_error("%s[%d]: no stop timer (%s): SIGKILL now", p->label, (int)p->pid, strerror(-r));
        (void)kill(p->pid, SIGKILL);
    }
    return 0;
}

/* ---- readiness and overlap (docs/formats.md "Replacing a process") ---------------- */

static void ready_end(Proc *p, int r)
{
    ProcReady done = p->ready_done;
    void *data = p->ready_data;
    p->ready_done = NULL;
    p->ready_data = NULL;
    if (p->ready_timer)
        (void)sd_event_source_set_enabled(p->ready_timer, SD_EVENT_OFF); /* cannot fail */
    if (done)
        done(p, r, data);
}

static void on_notify_ready(Notify *n, void *userdata)
{
    Proc *p = userdata;
    log_info("%s[%d] ready (READY=1)", p->label, (int)p->pid);
    ready_end(p, 0);
}

/* Every run of a `ready: notify` process has a socket of its own, so that
 * a message of an earlier run never counts for this one. Without one (it
 * cannot be made) it runs all the same; a wait for it times out. */
static void notify_prepare(Proc *p)
{
    p->notify = notify_free(p->notify);
    if (p->src.def->ready != READY_NOTIFY)
        return;
    int r = notify_new(p->ev, on_notify_ready, p, &p->notify);
    if (r < 0)
        log_error("%s: no NOTIFY_SOCKET (%s): it cannot say that it is ready", p->label, strerror(-r));
}

/* The wait's timer: at once for a run that is ready already, else at its timeout. */
static int on_ready_timer(sd_event_source *s, uint64_t usec, void *userdata)
{
    Proc *p = userdata;
    bool ready = p->pid && (p->src.def->ready == READY_STARTED || (p->notify && notify_ready(p->notify)));
    ready_end(p, ready ? 0 : -ETIMEDOUT);
    return 0;
}

int proc_wait_ready(Proc *p, ProcReady done, void *userdata)
{
    if (!p->pid)
        return -ESRCH;
    const ProcessDef *def = p->src.def;
    bool now = def->ready == READY_STARTED || (p->notify && notify_ready(p->notify));
    uint64_t at = now ? 1 : (uint64_t)(mono_us() + def->ready_timeout_ms * 1000LL);
    int r;
    if (p->ready_timer) {
        r = sd_event_source_set_time(p->ready_timer, at);
        if (r >= 0)
            r = sd_event_source_set_enabled(p->ready_timer, SD_EVENT_ONESHOT);
    } else {
        r = sd_event_add_time(p->ev, &p->ready_timer, CLOCK_MONOTONIC, at, 1000, on_ready_timer, p);
    }
    if (r < 0)
        return r;
    p->ready_done = done;
    p->ready_data = userdata;
    return 0;
}

void proc_set_ready(Proc *p)
{
    if (p->ready_done && p->pid)
        ready_end(p, 0);
}

sd_event *proc_event(const Proc *p)
{
    return p->ev;
}

bool proc_overlapping(const Proc *p)
{
    return p->prev.on;
}

pid_t proc_previous_pid(const Proc *p)
{
    return p->prev.on ? p->prev.pid : 0;
}

const siginfo_t *proc_previous_exit(const Proc *p)
{
    return p->prev.on && p->prev.exited ? &p->prev.si : NULL;
}

const siginfo_t *proc_ready_exit(const Proc *p)
{
    return p->ready_exit;
}

static int on_prev_exit(sd_event_source *src, void *userdata)
{
    Proc *p = userdata;
    p->prev_exit_src = sd_event_source_disable_unref(p->prev_exit_src);
    if (p->pid || p->stopping) /* started again, or stopped, meanwhile: nothing left to tell */
        return 0;
    p->exited(p, &p->prev_exit_si, p->userdata);
    return 0;
}

/* The overlap ends without a successor: the run before is the current
 * one again (or, when it ended meanwhile, its end is told next, from the
 * loop: the caller gives the process its old release's definition back
 * first, so that it is restarted on the old release, not the new). */
static void restore_prev(Proc *p)
{
    struct ProcPrev prev = p->prev;
    p->prev = (struct ProcPrev){0};
    p->child_src = sd_event_source_disable_unref(p->child_src);
    sd_event_source_disable_unref(prev.kill_timer);
    p->stopping = false;
    if (prev.exited) {
        p->pid = 0;
        p->prev_exit_si = prev.si;
        p->prev_exit_src = sd_event_source_disable_unref(p->prev_exit_src);
        if (sd_event_add_defer(p->ev, &p->prev_exit_src, on_prev_exit, p) < 0)
            p->exited(p, &prev.si, p->userdata); /* now, then */
        return;
    }
    p->pid = prev.pid;
    p->child_src = prev.child_src;
}

static void kill_run(pid_t pid)
{
    (void)kill(-pid, SIGKILL);   /* its process group: what it started goes too */
    (void)kill(pid, SIGKILL);    /* in case it has not made its group yet */
    (void)waitpid(pid, NULL, 0); /* immediate: SIGKILL cannot be refused */
}

int proc_spawn_successor(Proc *p, const ProcessDef *prev_def)
{
    if (!p->pid || p->stopping || p->prev.on)
        return -EBUSY;
    p->prev = (struct ProcPrev){
        .on = true, .pid = p->pid, .def = prev_def, .next_def = p->src.def, .child_src = p->child_src};
    p->child_src = NULL;
    p->kill_timer = sd_event_source_disable_unref(p->kill_timer);
    /* Its control channel closes: a process that is replaced this way
     * never spoke on it (one that links the runtime is upgraded instead). */
    channel_close(p);
    json_decref(p->modules);
    p->modules = NULL;
    p->pid = 0;
    int r = proc_spawn(p);
    if (r < 0) {
        restore_prev(p);
        return r;
    }
    log_info("%s[%d] started beside %d, which serves until it is ready", p->label, (int)p->pid, (int)p->prev.pid);
    return 0;
}

static int on_discard_kill_timer(sd_event_source *s, uint64_t usec, void *userdata)
{
    Proc *p = userdata;
    if (p->discard.pid) {
        log_warning("%s[%d] did not stop: SIGKILL", p->label, (int)p->discard.pid);
        (void)kill(-p->discard.pid, SIGKILL);
        (void)kill(p->discard.pid, SIGKILL);
    }
    return 0;
}

/* The current run goes, stopped as the definition says (it may serve
 * already: its requests in flight end well), in the background. */
static void discard_run(Proc *p)
{
    if (p->discard.pid) /* an earlier one still stopping: it goes now */
        kill_run(p->discard.pid);
    sd_event_source_disable_unref(p->discard.child_src);
    sd_event_source_disable_unref(p->discard.kill_timer);
    p->discard = (struct ProcDiscard){.pid = p->pid, .child_src = p->child_src};
    p->child_src = NULL;
    channel_close(p);
    if (p->prev.pid)
        log_info("%s[%d] not kept: stopping it; %d serves on", p->label, (int)p->pid, (int)p->prev.pid);
    else
        log_info("%s[%d] not kept: stopping it; the run before has ended", p->label, (int)p->pid);
    const ProcessDef *def = p->prev.next_def ? p->prev.next_def : p->src.def;
    (void)kill(p->pid, def->stop_signal); /* it exists until we reap it */
    uint64_t at = (uint64_t)(mono_us() + def->shutdown_ms * 1000LL);
    if (sd_event_add_time(p->ev, &p->discard.kill_timer, CLOCK_MONOTONIC, at, 1000, on_discard_kill_timer, p) < 0)
        (void)kill(p->pid, SIGKILL);
    p->pid = 0;
}

void proc_successor_forget(Proc *p)
{
    p->ready_done = NULL;
    p->prev.retired = NULL;
}

void proc_successor_abort(Proc *p)
{
    if (!p->prev.on || p->prev.retiring)
        return;
    p->ready_done = NULL;
    if (p->ready_timer)
        (void)sd_event_source_set_enabled(p->ready_timer, SD_EVENT_OFF); /* cannot fail */
    if (p->pid)
        discard_run(p);
    p->notify = notify_free(p->notify);
    restore_prev(p);
}

static int on_prev_kill_timer(sd_event_source *s, uint64_t usec, void *userdata)
{
    Proc *p = userdata;
    if (p->prev.on && p->prev.pid) {
        log_warning("%s[%d] did not stop within %ld ms: SIGKILL", p->label, (int)p->prev.pid, p->prev.def->shutdown_ms);
        (void)kill(-p->prev.pid, SIGKILL);
        (void)kill(p->prev.pid, SIGKILL);
    }
    return 0;
}

/* The run before is told to stop, as its definition says. */
static void retire_prev(Proc *p)
{
    p->prev.retiring = true;
    log_info("%s[%d] told to stop (%s): %d replaces it", p->label, (int)p->prev.pid,
             appdefs_signal_name(p->prev.def->stop_signal), (int)p->pid);
    (void)kill(p->prev.pid, p->prev.def->stop_signal); /* it exists until we reap it */
    uint64_t at = (uint64_t)(mono_us() + p->prev.def->shutdown_ms * 1000LL);
    int r = sd_event_add_time(p->ev, &p->prev.kill_timer, CLOCK_MONOTONIC, at, 1000, on_prev_kill_timer, p);
    if (r < 0) {
        log_error("%s[%d]: no stop timer (%s): SIGKILL now", p->label, (int)p->prev.pid, strerror(-r));
        (void)kill(p->prev.pid, SIGKILL);
    }
}

int proc_successor_commit(Proc *p, ProcRetired retired, void *userdata)
{
    if (!p->prev.on || p->prev.retiring || !p->pid)
        return -ESRCH;
    if (p->prev.exited) { /* it ended on its own meanwhile: nothing to stop */
        p->prev = (struct ProcPrev){0};
        return 1;
    }
    p->prev.retired = retired;
    p->prev.retired_data = userdata;
    retire_prev(p);
    return 0;
}

/* An exit during an overlap: of the run before (retiring, or on its
 * own), or of the new run before it was committed (the run before is the
 * current one again). true when handled here. */
static bool overlap_exit(Proc *p, const siginfo_t *si)
{
    bool signaled = si->si_code == CLD_KILLED || si->si_code == CLD_DUMPED;
    if (p->discard.pid && si->si_pid == p->discard.pid) {
        log_info("%s[%d] stopped (%s %d)", p->label, (int)p->discard.pid, signaled ? "signal" : "exit status",
                 si->si_status);
        drain_output(p, p->discard.pid);
        sd_event_source_disable_unref(p->discard.child_src);
        sd_event_source_disable_unref(p->discard.kill_timer);
        p->discard = (struct ProcDiscard){0};
        return true;
    }
    if (!p->prev.on)
        return false;
    if (p->prev.pid && si->si_pid == p->prev.pid) {
        p->prev.child_src = sd_event_source_disable_unref(p->prev.child_src);
        p->prev.kill_timer = sd_event_source_disable_unref(p->prev.kill_timer);
        log_info("%s[%d] %s (%s %d)", p->label, (int)p->prev.pid, p->prev.retiring ? "stopped" : "ended",
                 signaled ? "signal" : "exit status", si->si_status);
        drain_output(p, p->prev.pid);
        if (!p->prev.retiring) { /* told when the overlap ends */
            p->prev.exited = true;
            p->prev.si = *si;
            p->prev.pid = 0;
            return true;
        }
        ProcRetired retired = p->prev.retired;
        void *data = p->prev.retired_data;
        p->prev = (struct ProcPrev){0};
        if (retired)
            retired(p, si, data);
        return true;
    }
    if (p->prev.retiring || si->si_pid != p->pid)
        return false;
    /* The new run ended before it was committed: the run before serves on. */
    p->child_src = sd_event_source_disable_unref(p->child_src);
    channel_close(p);
    if (p->prev.exited)
        log_info("%s[%d] %s %d before it was ready; the run before had ended too", p->label, (int)p->pid,
                 signaled ? "killed by signal" : "exited with status", si->si_status);
    else
        log_info("%s[%d] %s %d before it replaced %d", p->label, (int)p->pid,
                 signaled ? "killed by signal" : "exited with status", si->si_status, (int)p->prev.pid);
    drain_output(p, p->pid);
    p->pid = 0;
    p->notify = notify_free(p->notify);
    restore_prev(p);
    p->ready_exit = si;
    ready_end(p, -ECHILD);
    p->ready_exit = NULL;
    return true;
}

Proc *proc_free(Proc *p)
{
    if (!p)
        return NULL;
    if (p->prev.on && p->prev.pid)
        kill_run(p->prev.pid);
    if (p->discard.pid)
        kill_run(p->discard.pid);
    sd_event_source_disable_unref(p->discard.child_src);
    sd_event_source_disable_unref(p->discard.kill_timer);
    sd_event_source_disable_unref(p->prev.child_src);
    sd_event_source_disable_unref(p->prev.kill_timer);
    sd_event_source_disable_unref(p->prev_exit_src);
    sd_event_source_disable_unref(p->ready_timer);
    notify_free(p->notify);
    if (p->pid) {
        (void)kill(-p->pid, SIGKILL);   /* its process group: what it started goes too */
        (void)kill(p->pid, SIGKILL);    /* in case it has not made its group yet */
        (void)waitpid(p->pid, NULL, 0); /* immediate: SIGKILL cannot be refused */
    }
    for (ProcLane l = 0; l < _PROC_LANE_MAX; l++)
        p->calls[l].done = NULL; /* nobody to tell */
    channel_close(p);
    while (p->pipes) { /* what is left of its output, as far as it came */
        if (p->pipes->len)
            relay_line(p->pipes, p->pipes->line, p->pipes->len);
        out_pipe_free(p->pipes);
    }
    sd_event_source_disable_unref(p->child_src);
    sd_event_source_disable_unref(p->kill_timer);
    for (ProcLane l = 0; l < _PROC_LANE_MAX; l++)
        sd_event_source_disable_unref(p->calls[l].timer);
    for (size_t i = 0; i < p->n_listen; i++)
        close(p->listen_fds[i]);
    free(p->listen_fds);
    free(p->fdnames);
    free(p->label);
    proc_source_clear(&p->src);
    json_decref(p->modules);
    free(p);
    return NULL;
}

/* ---- re-exec: the state of a process, handed over -------------------------- */

long long proc_last_call_id(void)
{
    return next_call_id;
}

void proc_set_last_call_id(long long id)
{
    next_call_id = id;
}

/* Bytes as hex: buffers may hold anything, JSON strings must be UTF-8. */
static json_t *hex_of(const char *b, size_t n)
{
    char *h = xmalloc(2 * n + 1);
    for (size_t i = 0; i < n; i++)
        sprintf(h + 2 * i, "%02x", (unsigned char)b[i]);
    h[2 * n] = 0;
    json_t *j = json_string(h);
    free(h);
    return j;
}

/* Decodes hex into buf (at most max bytes): its length, or 0 for anything else. */
static size_t unhex(const json_t *j, char *buf, size_t max)
{
    const char *h = json_string_value(j);
    size_t n = h ? strlen(h) / 2 : 0;
    if (!h || strlen(h) % 2 || n > max)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        if (sscanf(h + 2 * i, "%2x", &v) != 1)
            return 0;
        buf[i] = (char)v;
    }
    return n;
}

json_t *proc_save(const Proc *p, json_t *fds)
{
    json_t *listen = json_array(), *pipes = json_array(), *tail = json_array();
    for (size_t i = 0; i < p->n_listen; i++) {
        json_array_append_new(listen, json_integer(p->listen_fds[i]));
        json_array_append_new(fds, json_integer(p->listen_fds[i]));
    }
    for (const OutPipe *o = p->pipes; o; o = o->next) {
        int fd = sd_event_source_get_io_fd(o->src);
        json_array_append_new(
            pipes, json_pack("{s:i, s:i, s:o}", "fd", fd, "pid", (int)o->pid, "line", hex_of(o->line, o->len)));
        json_array_append_new(fds, json_integer(fd));
    }
    for (unsigned k = 0; k < TAIL_LINES; k++) {
        const char *line = p->tail[(p->tail_next + k) % TAIL_LINES];
        json_array_append_new(tail, hex_of(line, strlen(line)));
    }
    if (p->ctl_fd >= 0)
        json_array_append_new(fds, json_integer(p->ctl_fd));
    return json_pack("{s:i, s:i, s:o, s:o, s:O?, s:o, s:o, s:o}", "pid", (int)p->pid, "ctl_fd", p->ctl_fd, "listen_fds",
                     listen, "pipes", pipes, "modules", p->modules, "in", hex_of(p->in, p->in_len), "out",
                     hex_of(p->out ? p->out + p->out_off : "", p->out_len - p->out_off), "tail", tail);
}

static bool is_socket(int fd)
{
    struct stat st;
    return fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode);
}

bool proc_saved_valid(const json_t *saved, const ProcessDef *def, const char *label, Diag *diag)
{
    json_t *pid = json_object_get(saved, "pid"), *ctl = json_object_get(saved, "ctl_fd"),
           *listen = json_object_get(saved, "listen_fds"), *pipes = json_object_get(saved, "pipes"), *v;
    size_t i;
    if (!json_is_integer(pid) || !json_is_integer(ctl) || !json_is_array(listen) || !json_is_array(pipes)) {
        diag_error(diag, "%s: its saved state is incomplete", label);
        return false;
    }
    pid_t n = (pid_t)json_integer_value(pid);
    if (n < 0 || (n > 0 && !reexec_is_child(n))) {
        diag_error(diag, "%s: pid %d is not a child of reld", label, (int)n);
        return false;
    }
    if (json_array_size(listen) != def->n_sockets) {
        diag_error(diag, "%s: %zu listening sockets saved, its definition has %zu", label, json_array_size(listen),
                   def->n_sockets);
        return false;
    }
    json_array_foreach(listen, i, v) if (!is_socket((int)json_integer_value(v)))
    {
        diag_error(diag, "%s: its listening socket %zu is not a socket", label, i);
        return false;
    }
    if (json_integer_value(ctl) >= 0 && !is_socket((int)json_integer_value(ctl))) {
        diag_error(diag, "%s: its control channel is not a socket", label);
        return false;
    }
    return true;
}

Proc *proc_adopt(sd_event *ev, const char *label, ProcSource *src, const json_t *saved, ProcExited exited,
                 void *userdata)
{
    Proc *p = xcalloc(1, sizeof(*p));
    p->ev = ev;
    p->label = xstrdup(label);
    p->src = *src;
    *src = (ProcSource){0};
    p->exited = exited;
    p->userdata = userdata;
    p->ctl_fd = -1;
    const ProcessDef *def = p->src.def;
    json_t *listen = json_object_get(saved, "listen_fds"), *v;
    size_t i;
    p->listen_fds = xcalloc(def->n_sockets + 1, sizeof(int));
    p->fdnames = xstrdup("");
    json_array_foreach(listen, i, v)
    {
        p->listen_fds[p->n_listen++] = (int)json_integer_value(v);
        char *names = xasprintf("%s%s%s", p->fdnames, i ? ":" : "", def->sockets[i].name);
        free(p->fdnames);
        p->fdnames = names;
    }
    json_array_foreach(json_object_get(saved, "tail"), i, v) if (i < TAIL_LINES)
        p->tail[i][unhex(v, p->tail[i], TAIL_LINE_MAX)] = 0;
    p->in_len = unhex(json_object_get(saved, "in"), p->in, sizeof(p->in));
    json_t *mods = json_object_get(saved, "modules");
    p->modules = json_is_array(mods) ? json_incref(mods) : NULL;
    int ctl = (int)json_integer_value(json_object_get(saved, "ctl_fd")), r = 0;
    p->pid = (pid_t)json_integer_value(json_object_get(saved, "pid"));
    if (p->pid && (r = sd_event_add_child(ev, &p->child_src, p->pid, WEXITED, on_exit_, p)) < 0) {
        log_error("%s[%d]: cannot watch the process (%s); killing it", label, (int)p->pid, strerror(-r));
        (void)kill(-p->pid, SIGKILL);
        (void)kill(p->pid, SIGKILL);
        (void)waitpid(p->pid, NULL, 0); /* immediate: SIGKILL cannot be refused */
        p->pid = 0;
    }
    if (ctl >= 0 && p->pid && (r = sd_event_add_io(ev, &p->ctl_src, ctl, CTL_EVENTS, on_control, p)) < 0)
        log_error("%s[%d]: no control channel (%s); it runs without one", label, (int)p->pid, strerror(-r));
    if (ctl >= 0 && !p->ctl_src) { /* not watched: nobody reads it */
        close(ctl);
        ctl = -1;
    }
    if (ctl >= 0) {
        p->ctl_fd = ctl;
        (void)sd_event_source_set_io_fd_own(p->ctl_src, true);                       /* cannot fail on an io source */
        (void)sd_event_source_set_priority(p->ctl_src, SD_EVENT_PRIORITY_IMPORTANT); /* as proc_spawn */
        char out[CONTROL_LINE_MAX];
        size_t n = unhex(json_object_get(saved, "out"), out, sizeof(out));
        if (n) {
            p->out = xmalloc(n);
            memcpy(p->out, out, n);
            p->out_len = n;
            if (flush_out(p) < 0)
                channel_close(p);
        }
    }
    json_array_foreach(json_object_get(saved, "pipes"), i, v)
    {
        int fd = (int)json_integer_value(json_object_get(v, "fd"));
        pid_t run = p->pid;
        p->pid = (pid_t)json_integer_value(json_object_get(v, "pid")); /* the run it belongs to */
        if (fd < 3 || watch_output(p, fd) < 0)
            log_error("%s: its output cannot be relayed any more", label);
        else
            p->pipes->len = unhex(json_object_get(v, "line"), p->pipes->line, sizeof(p->pipes->line));
        p->pid = run;
    }
    return p;
}
