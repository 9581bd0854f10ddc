/* reld's control socket, its clients and their commands. */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <jansson.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-event.h>
#include <unistd.h>

#include "daemon.h"
#include "history.h"
#include "relup.h"
#include "store.h"

#define MAX_REQUEST 65536
#define MAX_FDS     4

typedef struct Client Client;
typedef struct Job Job;
typedef struct Upgrade Upgrade;

struct Daemon {
    DaemonConfig cfg;
    sd_event *ev;
    int listen_fd;
    History *hist;
    gid_t writer_gid, reader_gid;
    bool have_writer_gid, have_reader_gid;
    Client *clients;
    /* Finished jobs, handed from worker threads to the main thread. */
    int job_efd;
    pthread_mutex_t job_lock;
    Job *done;
    unsigned jobs_running; /* main thread only */
    int lock_fd;           /* flock on ROOT/reld.lock: one reld per root */
    Supervisor *sup;
    ReleaseDef *running; /* the definitions of the running release; sup points into them */
    Upgrade *upgrade;    /* the one under way, or NULL */
};

/* An upgrade or downgrade under way: the executor runs a step per turn of
 * the event loop, so that status and history answer meanwhile. */
struct Upgrade {
    Daemon *d;
    Client *client; /* who asked; NULL once gone */
    char *from, *to_vsn, *who;
    bool up, running_is_current;
    Relup *relup;
    ReleaseDef *to;
    int64_t attempt;
    long long t0_us;
    Execution *ex;
    sd_event_source *step;
    size_t progress_sent; /* instructions whose progress line went to the client */
    Diag diag;
};

struct Client {
    Daemon *d;
    int fd;
    sd_event_source *src;
    struct ucred cred;
    bool writer, reader;
    char *who;
    char in[MAX_REQUEST];
    size_t in_len;
    int fds[MAX_FDS];
    size_t n_fds;
    char *out;
    size_t out_len, out_off;
    bool answered;
    Job *job;       /* an unpack under way for this client */
    bool upgrading; /* waiting for the upgrade it asked for */
    Client *next;
};

/* Work for a thread of its own, finished on the main thread: an unpack,
 * or the planning of an upgrade (reading both releases and computing or
 * reading the relup: 0.5-1.2 s for a release of 1,000 applications). */
struct Job {
    Daemon *d;
    Upgrade *plan;  /* a planning job; else an unpack */
    Client *client; /* NULL once the client went away */
    int fd;
    char *root, *who;
    uint64_t limit;
    int r;
    char *vsn, *name;
    Diag diag;
    Job *next;
};

static void log_line(const char *prefix, const char *fmt, va_list ap)
{
    fputs(prefix, stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

void log_info(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_line("reld: ", fmt, ap);
    va_end(ap);
}

void log_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_line("reld: error: ", fmt, ap);
    va_end(ap);
}

/* ---- clients ------------------------------------------------------------- */

static void client_free(Client *c)
{
    Daemon *d = c->d;
    for (Client **p = &d->clients; *p; p = &(*p)->next)
        if (*p == c) {
            *p = c->next;
            break;
        }
    if (d->upgrade && d->upgrade->client == c)
        d->upgrade->client = NULL; /* the upgrade goes on; nobody to tell */
    else if (c->job)
        c->job->client = NULL; /* the job finishes and records; nobody to tell */
    sd_event_source_disable_unref(c->src);
    close(c->fd);
    for (size_t i = 0; i < c->n_fds; i++)
        close(c->fds[i]);
    free(c->out);
    free(c->who);
    free(c);
}

static int client_io(sd_event_source *s, int fd, uint32_t revents, void *userdata);

/* Queues a line; the connection stays open. */
static void send_line(Client *c, json_t *msg)
{
    char *text = json_dumps(msg, JSON_COMPACT);
    json_decref(msg);
    if (!text)
        return;
    size_t len = strlen(text);
    c->out = xrealloc(c->out, c->out_len + len + 1);
    memcpy(c->out + c->out_len, text, len);
    c->out[c->out_len + len] = '\n';
    c->out_len += len + 1;
    free(text);
    sd_event_source_set_io_events(c->src, EPOLLOUT);
}

/* Queues the reply and closes the connection once it is written. */
static void reply(Client *c, json_t *msg)
{
    c->answered = true;
    send_line(c, msg);
}

static void reply_ok(Client *c, json_t *fields)
{
    json_t *m = fields ? fields : json_object();
    json_object_set_new(m, "ok", json_true());
    reply(c, m);
}

static void reply_error(Client *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void reply_error(Client *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = xvasprintf(fmt, ap);
    va_end(ap);
    reply(c, json_pack("{s:b, s:s}", "ok", 0, "error", msg));
    free(msg);
}

/* The reasons of a Diag as the reply: "error" the first, "errors" all. */
static void reply_diag(Client *c, const Diag *diag, const char *fallback)
{
    json_t *errors = json_array();
    for (size_t i = 0; i < diag->errors.n; i++)
        json_array_append_new(errors, json_string(diag->errors.v[i]));
    json_t *warnings = json_array();
    for (size_t i = 0; i < diag->warnings.n; i++)
        json_array_append_new(warnings, json_string(diag->warnings.v[i]));
    reply(c, json_pack("{s:b, s:s, s:o, s:o}", "ok", 0, "error", diag->errors.n ? diag->errors.v[0] : fallback,
                       "errors", errors, "warnings", warnings));
}

static bool in_group(const Client *c, gid_t g)
{
    if (c->cred.gid == g)
        return true;
    gid_t groups[256];
    socklen_t len = sizeof(groups);
    if (getsockopt(c->fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) < 0)
        return false;
    for (size_t i = 0; i < len / sizeof(gid_t); i++)
        if (groups[i] == g)
            return true;
    return false;
}

static int on_connect(sd_event_source *s, int fd, uint32_t revents, void *userdata)
{
    Daemon *d = userdata;
    for (;;) {
        int cfd = accept4(d->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0)
            return 0;
        Client *c = xcalloc(1, sizeof(*c));
        c->d = d;
        c->fd = cfd;
        socklen_t len = sizeof(c->cred);
        if (getsockopt(cfd, SOL_SOCKET, SO_PEERCRED, &c->cred, &len) < 0) {
            close(cfd);
            free(c);
            continue;
        }
        c->writer = c->cred.uid == 0 || c->cred.uid == geteuid() || (d->have_writer_gid && in_group(c, d->writer_gid));
        c->reader = c->writer || d->cfg.readers_all || (d->have_reader_gid && in_group(c, d->reader_gid));
        struct passwd pw, *res = NULL;
        char buf[1024];
        getpwuid_r(c->cred.uid, &pw, buf, sizeof(buf), &res);
        c->who = xasprintf("%s (uid %u, pid %d)", res ? res->pw_name : "?", (unsigned)c->cred.uid, (int)c->cred.pid);
        if (sd_event_add_io(d->ev, &c->src, cfd, EPOLLIN, client_io, c) < 0) {
            close(cfd);
            free(c->who);
            free(c);
            continue;
        }
        c->next = d->clients;
        d->clients = c;
    }
}

/* ---- commands ---------------------------------------------------------- */

/* From a worker thread: j is done; the main thread finishes it. */
static void job_done(Job *j)
{
    pthread_mutex_lock(&j->d->job_lock);
    j->next = j->d->done;
    j->d->done = j;
    pthread_mutex_unlock(&j->d->job_lock);
    uint64_t one = 1;
    if (write(j->d->job_efd, &one, sizeof(one)) < 0) {
        /* the counter cannot overflow in practice; the main loop also polls */
    }
}

static void *unpack_thread(void *p)
{
    Job *j = p;
    j->r = store_unpack(j->root, j->fd, j->limit, &j->vsn, &j->name, &j->diag);
    close(j->fd);
    j->fd = -1;
    job_done(j);
    return NULL;
}

/* Starts fn(j) on a detached thread. 0 or -errno. */
static int job_start(Job *j, void *(*fn)(void *))
{
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int r = pthread_create(&t, &attr, fn, j);
    pthread_attr_destroy(&attr);
    if (r != 0)
        return -r;
    j->d->jobs_running++;
    return 0;
}

static void cmd_unpack(Client *c)
{
    if (c->n_fds != 1)
        return reply_error(c, "unpack needs the tarball's file descriptor passed with the request");
    Job *j = xcalloc(1, sizeof(*j));
    j->d = c->d;
    j->client = c;
    j->fd = c->fds[0];
    c->n_fds = 0;
    j->root = xstrdup(c->d->cfg.root);
    j->who = xstrdup(c->who);
    j->limit = c->d->cfg.max_unpacked;
    int r = job_start(j, unpack_thread);
    if (r < 0) {
        close(j->fd);
        free(j->root);
        free(j->who);
        free(j);
        return reply_error(c, "cannot start the unpack: %s", strerror(-r));
    }
    c->job = j;
}

static void plan_finished(Job *j);

static void job_finish(Job *j)
{
    Daemon *d = j->d;
    d->jobs_running--;
    if (j->plan)
        return plan_finished(j);
    if (j->r == 0) {
        int r = history_release_add(d->hist, j->vsn, j->name, j->who);
        if (r < 0) {
            /* The files are in place; the database refused (a version it
             * already knows). Take them back out so both agree. */
            char *path = xasprintf("%s/releases/%s", d->cfg.root, j->vsn);
            store_remove_tree(path);
            free(path);
            diag_error(&j->diag, "release %s is already present", j->vsn);
            j->r = r;
        } else {
            log_info("unpacked release %s %s for %s", j->name, j->vsn, j->who);
        }
    } else {
        log_info("unpack for %s refused: %s", j->who, j->diag.errors.n ? j->diag.errors.v[0] : strerror(-j->r));
    }
    if (j->client) {
        j->client->job = NULL;
        if (j->r == 0)
            reply_ok(j->client, json_pack("{s:s, s:s}", "release", j->vsn, "name", j->name));
        else
            reply_diag(j->client, &j->diag, strerror(-j->r));
    }
    diag_clear(&j->diag);
    free(j->root);
    free(j->who);
    free(j->vsn);
    free(j->name);
    free(j);
}

static int on_job_done(sd_event_source *s, int fd, uint32_t revents, void *userdata)
{
    Daemon *d = userdata;
    uint64_t n;
    if (read(fd, &n, sizeof(n)) < 0) {
        /* nothing to read: another wakeup took it */
    }
    pthread_mutex_lock(&d->job_lock);
    Job *list = d->done;
    d->done = NULL;
    pthread_mutex_unlock(&d->job_lock);
    while (list) {
        Job *next = list->next;
        job_finish(list);
        list = next;
    }
    return 0;
}

static json_t *status_json(Daemon *d)
{
    json_t *rels = NULL;
    if (history_releases(d->hist, &rels) < 0)
        rels = json_array();
    char *cur = NULL, *perm = NULL;
    history_release_in_state(d->hist, RELEASE_CURRENT, &cur);
    history_release_in_state(d->hist, RELEASE_PERMANENT, &perm);
    json_t *s = json_pack("{s:s, s:o, s:o, s:o, s:o}", "root", d->cfg.root, "current",
                          cur ? json_string(cur) : json_null(), "permanent", perm ? json_string(perm) : json_null(),
                          "releases", rels, "processes", supervisor_status(d->sup));
    if (d->upgrade) {
        size_t n = 0, k = d->upgrade->ex ? supervisor_exec_position(d->upgrade->ex, &n) : 0; /* 0 of 0: planning */
        json_object_set_new(s, "upgrade",
                            json_pack("{s:s, s:s, s:s, s:i, s:i}", "from", d->upgrade->from, "to", d->upgrade->to_vsn,
                                      "direction", d->upgrade->up ? "upgrade" : "downgrade", "done", (int)k, "of",
                                      (int)n));
    } else {
        json_object_set_new(s, "upgrade", json_null());
    }
    free(cur);
    free(perm);
    return s;
}

/* Removes a release's files: its releases/<vsn> and the application
 * directories no other release uses. Reading each other release.yaml once
 * tells which those are; when one cannot be read, no application directory
 * goes (better a stale directory than one deleted from under a release). */
static void remove_release_files(Daemon *d, const char *vsn)
{
    Diag diag = {0};
    ReleaseDef *rel = NULL;
    json_t *all = NULL;
    StrMap used = {0}; /* "app-vsn" of every other release; keys in `keys` */
    StrVec keys = {0};
    bool known = history_releases(d->hist, &all) == 0 && store_load_release(d->cfg.root, vsn, &rel, &diag) == 0;
    size_t i;
    json_t *r;
    json_array_foreach(all, i, r)
    {
        const char *other = json_string_value(json_object_get(r, "vsn"));
        if (!known || strcmp(other, vsn) == 0)
            continue;
        char *path = xasprintf("%s/releases/%s/release.yaml", d->cfg.root, other), *buf = NULL;
        size_t len;
        ReleaseDef *o = NULL;
        if (store_read_file(path, &buf, &len) < 0 || appdefs_parse_release(path, buf, len, &o, &diag) < 0) {
            log_error("remove %s: cannot read release %s's definition; keeping every application directory", vsn,
                      other);
            known = false;
        }
        for (size_t a = 0; o && a < o->n_apps; a++)
            strvec_push_take(&keys, xasprintf("%s-%s", o->apps[a].name, o->apps[a].vsn));
        release_def_free(o);
        free(buf);
        free(path);
    }
    for (size_t k = 0; k < keys.n; k++)
        strmap_put(&used, keys.v[k], k);
    for (size_t a = 0; known && a < rel->n_apps; a++) {
        char *dir = xasprintf("%s-%s", rel->apps[a].name, rel->apps[a].vsn);
        if (!strmap_get(&used, dir, NULL)) {
            char *p = xasprintf("%s/lib/%s", d->cfg.root, dir);
            store_remove_tree(p);
            free(p);
        }
        free(dir);
    }
    strmap_clear(&used);
    strvec_clear(&keys);
    json_decref(all);
    release_def_free(rel);
    diag_clear(&diag);
    char *p = xasprintf("%s/releases/%s", d->cfg.root, vsn);
    store_remove_tree(p);
    free(p);
}

static void cmd_remove(Client *c, const char *vsn)
{
    Daemon *d = c->d;
    char *state = NULL;
    if (!vsn)
        return reply_error(c, "remove needs a release version");
    if (d->upgrade && (strcmp(vsn, d->upgrade->to_vsn) == 0 || strcmp(vsn, d->upgrade->from) == 0))
        return reply_error(c, "release %s is part of the %s from %s to %s under way; it cannot be removed", vsn,
                           d->upgrade->up ? "upgrade" : "downgrade", d->upgrade->from, d->upgrade->to_vsn);
    int r = history_release_state(d->hist, vsn, &state);
    if (r == -ENOENT)
        return reply_error(c, "release %s is not known", vsn);
    if (r < 0)
        return reply_error(c, "cannot read the release database: %s", strerror(-r));
    if (strcmp(state, RELEASE_PERMANENT) == 0 || strcmp(state, RELEASE_CURRENT) == 0) {
        reply_error(c, "release %s is %s; it cannot be removed", vsn,
                    strcmp(state, RELEASE_PERMANENT) == 0 ? "permanent" : "running");
        free(state);
        return;
    }
    free(state);
    /* Database first: a crash after it leaves files the next start cleans. */
    if ((r = history_release_remove(d->hist, vsn, c->who)) < 0)
        return reply_error(c, "cannot record the removal: %s", strerror(-r));
    remove_release_files(d, vsn);
    log_info("removed release %s for %s", vsn, c->who);
    reply_ok(c, json_pack("{s:s}", "removed", vsn));
}

static void cmd_make_permanent(Client *c, const char *vsn)
{
    Daemon *d = c->d;
    if (d->upgrade)
        return reply_error(c, "an upgrade from %s to %s is under way; make it permanent when it is done",
                           d->upgrade->from, d->upgrade->to_vsn);
    char *cur = NULL, *perm = NULL, *state = NULL;
    history_release_in_state(d->hist, RELEASE_CURRENT, &cur);
    history_release_in_state(d->hist, RELEASE_PERMANENT, &perm);
    if (!vsn)
        vsn = cur;
    if (!vsn) {
        reply_error(c, "no release is current (installed and not yet permanent)");
    } else if (history_release_state(d->hist, vsn, &state) < 0) {
        reply_error(c, "release %s is not known", vsn);
    } else if (strcmp(state, RELEASE_PERMANENT) == 0) {
        reply_ok(c, json_pack("{s:s}", "permanent", vsn));
    } else if (strcmp(state, RELEASE_CURRENT) != 0) {
        reply_error(c, "release %s is %s; only the current release can be made permanent", vsn, state);
    } else {
        int r = perm ? history_release_set_state(d->hist, perm, RELEASE_OLD, c->who) : 0;
        if (r == 0)
            r = history_release_set_state(d->hist, vsn, RELEASE_PERMANENT, c->who);
        if (r < 0)
            reply_error(c, "cannot record the change: %s", strerror(-r));
        else
            reply_ok(c, json_pack("{s:s}", "permanent", vsn));
    }
    free(cur);
    free(perm);
    free(state);
}

/* Starts release vsn's processes with nothing running before. */
static int boot_release(Daemon *d, const char *vsn, Diag *diag)
{
    ReleaseDef *rel = NULL;
    int r = store_load_release(d->cfg.root, vsn, &rel, diag);
    if (r < 0)
        return r;
    if ((r = supervisor_start_release(d->sup, rel, diag)) < 0) {
        release_def_free(rel);
        return r;
    }
    release_def_free(d->running);
    d->running = rel;
    return 0;
}

long long mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

static void upgrade_free(Upgrade *u)
{
    supervisor_exec_free(u->ex);
    sd_event_source_disable_unref(u->step);
    relup_free(u->relup);
    release_def_free(u->to);
    diag_clear(&u->diag);
    free(u->from);
    free(u->to_vsn);
    free(u->who);
    free(u);
}

static const RelupScript *upgrade_script(const Upgrade *u)
{
    return u->up ? &u->relup->up : &u->relup->down;
}

/* The end of an upgrade: states, history, reply. */
static void upgrade_done(Upgrade *u, int r)
{
    Daemon *d = u->d;
    double ms = (double)(mono_us() - u->t0_us) / 1000.0;
    const char *verb = u->up ? "upgrade" : "downgrade";
    if (r < 0) {
        char *why = xasprintf("%s%s%s", u->diag.errors.n ? u->diag.errors.v[0] : "failed",
                              u->diag.warnings.n ? "; " : "", u->diag.warnings.n ? u->diag.warnings.v[0] : "");
        history_attempt_end(d->hist, u->attempt, "failed", why);
        log_error("%s to %s failed: %s", verb, u->to_vsn, why);
        free(why);
        if (u->client)
            reply_diag(u->client, &u->diag, "the upgrade failed");
    } else {
        history_attempt_end(d->hist, u->attempt, "ok", NULL);
        if (u->running_is_current)
            history_release_set_state(d->hist, u->from, RELEASE_UNPACKED, u->who);
        char *target_state = NULL;
        history_release_state(d->hist, u->to_vsn, &target_state);
        if (!target_state || strcmp(target_state, RELEASE_PERMANENT) != 0) /* back to the permanent one: stays so */
            history_release_set_state(d->hist, u->to_vsn, RELEASE_CURRENT, u->who);
        free(target_state);
        release_def_free(d->running);
        d->running = TAKE_PTR(u->to);
        log_info("release %s is current (%.3f ms)", u->to_vsn, ms);
        if (u->client)
            reply_ok(u->client, json_pack("{s:s, s:s, s:s, s:i, s:f}", "installed", u->to_vsn, "from", u->from,
                                          "direction", verb, "instructions", (int)upgrade_script(u)->n, "ms", ms));
    }
    if (u->client)
        u->client->upgrading = false;
    d->upgrade = NULL;
    upgrade_free(u);
}

static int on_upgrade_step(sd_event_source *src, void *userdata);

static int on_upgrade_timer(sd_event_source *src, uint64_t usec, void *userdata)
{
    sd_event_source_disable_unref(src);
    return on_upgrade_step(((Upgrade *)userdata)->step, userdata);
}

static int on_upgrade_step(sd_event_source *src, void *userdata)
{
    Upgrade *u = userdata;
    long delay = supervisor_exec_delay_ms(u->ex);
    if (delay > 0) /* a test's delay: the event loop runs meanwhile */
        return sd_event_add_time_relative(u->d->ev, NULL, CLOCK_MONOTONIC, (uint64_t)delay * 1000, 0, on_upgrade_timer,
                                          u);
    size_t n;
    int r = supervisor_exec_step(u->ex, &u->diag);
    if (r == SUPERVISOR_EXEC_WAITING)
        return 0; /* progress waits for the end of the step: in a suspended group, waking relctl would lengthen the
                     pause */
    size_t done = supervisor_exec_position(u->ex, &n);
    for (size_t k = u->progress_sent; u->client && k < done; k++) { /* a failed step too: where it stopped */
        char *line = relup_instr_format(&upgrade_script(u)->v[k]);
        send_line(u->client, json_pack("{s:i, s:i, s:s}", "progress", (int)k + 1, "of", (int)n, "instruction", line));
        free(line);
    }
    u->progress_sent = done;
    if (r <= 0)
        upgrade_done(u, r);
    else
        sd_event_source_set_enabled(src, SD_EVENT_ONESHOT); /* the next step, after other events */
    return 0;
}

/* The processes answered: the step goes on, from the event loop. */
static void on_upgrade_wake(void *userdata)
{
    Upgrade *u = userdata;
    sd_event_source_set_enabled(u->step, SD_EVENT_ONESHOT);
}

/* On a worker thread: what the upgrade will run, read from the root. It
 * touches only u's relup, to and diag, which nothing else uses until the
 * main thread takes the job back (plan_finished). */
static void *plan_thread(void *p)
{
    Job *j = p;
    Upgrade *u = j->plan;
    const char *delay = getenv("RELD_TEST_PLAN_DELAY_MS"); /* a test hook (docs/daemon.md): a slow plan */
    if (delay) {
        long ms = atol(delay);
        struct timespec t = {ms / 1000, ms % 1000 * 1000000L};
        nanosleep(&t, NULL);
    }
    bool stored = false;
    j->r = store_relup(j->root, u->up ? u->from : u->to_vsn, u->up ? u->to_vsn : u->from, true, &u->relup, &stored,
                       &u->diag);
    if (j->r == 0)
        j->r = store_load_release(j->root, u->to_vsn, &u->to, &u->diag);
    job_done(j);
    return NULL;
}

/* An upgrade that ends before it began: nothing ran, nothing recorded. */
static void upgrade_refused(Upgrade *u, const char *fallback)
{
    log_info("%s from %s to %s for %s refused: %s", u->up ? "upgrade" : "downgrade", u->from, u->to_vsn, u->who,
             u->diag.errors.n ? u->diag.errors.v[0] : fallback);
    if (u->client) {
        reply_diag(u->client, &u->diag, fallback);
        u->client->upgrading = false;
    }
    u->d->upgrade = NULL;
    upgrade_free(u);
}

/* Planned: the attempt begins and the executor takes its first step. */
static void plan_finished(Job *j)
{
    Upgrade *u = j->plan;
    Daemon *d = u->d;
    int r = j->r;
    free(j->root);
    free(j);
    if (r < 0)
        return upgrade_refused(u, "cannot compute the relup");
    diag_clear(&u->diag); /* derivation warnings were for relctl relup */
    history_attempt_begin(d->hist, u->who, u->up ? "upgrade" : "downgrade", u->from, u->to_vsn, &u->attempt);
    u->t0_us = mono_us();
    log_info("%s from %s to %s for %s (%zu instructions)", u->up ? "upgrade" : "downgrade", u->from, u->to_vsn, u->who,
             upgrade_script(u)->n);
    supervisor_exec_begin(d->sup, d->running, u->to, upgrade_script(u), u->attempt, on_upgrade_wake, u, &u->ex);
    if (sd_event_add_defer(d->ev, &u->step, on_upgrade_step, u) < 0) {
        history_attempt_end(d->hist, u->attempt, "failed", "cannot schedule the upgrade");
        diag_error(&u->diag, "cannot schedule the upgrade");
        return upgrade_refused(u, "cannot schedule the upgrade");
    }
    /* Before other work once woken: a suspended process waits for it. */
    sd_event_source_set_priority(u->step, SD_EVENT_PRIORITY_IMPORTANT);
    sd_event_source_set_enabled(u->step, SD_EVENT_ONESHOT);
}

/* Goes from the running release to vsn by executing the relup against the
 * live processes: up with the newer release's relup up, down with its down
 * (as OTP keeps both in the newer release). direction: NULL (install:
 * decided by the versions), "upgrade" or "downgrade" (checked). One at a
 * time, from the moment it is asked (planning on a worker thread first);
 * the reply comes when it is done, progress lines before. */
static void change_release(Client *c, const char *running, const char *vsn, bool running_is_current,
                           const char *direction)
{
    Daemon *d = c->d;
    bool up = strverscmp(vsn, running) > 0;
    if (direction && up != (strcmp(direction, "upgrade") == 0))
        return reply_error(c, "release %s is %s than the running %s: use %s", vsn, up ? "newer" : "older", running,
                           up ? "upgrade" : "downgrade");
    Upgrade *u = xcalloc(1, sizeof(*u));
    *u = (Upgrade){.d = d,
                   .client = c,
                   .from = xstrdup(running),
                   .to_vsn = xstrdup(vsn),
                   .who = xstrdup(c->who),
                   .up = up,
                   .running_is_current = running_is_current};
    Job *j = xcalloc(1, sizeof(*j));
    *j = (Job){.d = d, .plan = u, .fd = -1, .root = xstrdup(d->cfg.root)};
    int r = job_start(j, plan_thread);
    if (r < 0) {
        free(j->root);
        free(j);
        upgrade_free(u);
        return reply_error(c, "cannot start the upgrade: %s", strerror(-r));
    }
    d->upgrade = u;
    c->upgrading = true; /* it waits for its reply, with progress lines before */
}

static void cmd_install(Client *c, const char *vsn, const char *direction)
{
    Daemon *d = c->d;
    char *cur = NULL, *perm = NULL, *state = NULL;
    history_release_in_state(d->hist, RELEASE_CURRENT, &cur);
    history_release_in_state(d->hist, RELEASE_PERMANENT, &perm);
    const char *running = cur ? cur : perm;
    Diag diag = {0};
    if (!vsn) {
        reply_error(c, "install needs a release version or tarball");
    } else if (d->upgrade) {
        reply_error(c, "an upgrade from %s to %s is under way; one at a time", d->upgrade->from, d->upgrade->to_vsn);
    } else if (history_release_state(d->hist, vsn, &state) < 0) {
        reply_error(c, "release %s is not known (relctl unpack it first)", vsn);
    } else if (running && strcmp(running, vsn) == 0) {
        reply_error(c, "release %s is already running", vsn);
    } else if (running) {
        change_release(c, running, vsn, cur != NULL, direction);
    } else if (direction) {
        reply_error(c, "no release is running to %s from", direction);
    } else if (boot_release(d, vsn, &diag) < 0) {
        reply_diag(c, &diag, "cannot start the release");
    } else {
        history_release_set_state(d->hist, vsn, RELEASE_CURRENT, c->who);
        log_info("installed release %s for %s", vsn, c->who);
        reply_ok(c, json_pack("{s:s}", "installed", vsn));
    }
    diag_clear(&diag);
    free(cur);
    free(perm);
    free(state);
}

static void cmd_relup(Client *c, const char *from, const char *to)
{
    if (!from || !to)
        return reply_error(c, "relup needs FROM and TO");
    Diag diag = {0};
    Relup *r = NULL;
    bool stored = false;
    if (store_relup(c->d->cfg.root, from, to, true, &r, &stored, &diag) < 0) {
        reply_diag(c, &diag, "cannot compute the relup");
    } else {
        json_t *warnings = json_array();
        for (size_t i = 0; i < diag.warnings.n; i++)
            json_array_append_new(warnings, json_string(diag.warnings.v[i]));
        reply_ok(c, json_pack("{s:o, s:b, s:o}", "relup", relup_to_json(r), "stored", stored, "warnings", warnings));
    }
    relup_free(r);
    diag_clear(&diag);
}

static void handle_request(Client *c, const char *line, size_t len)
{
    Daemon *d = c->d;
    json_error_t jerr;
    json_t *req = json_loadb(line, len, 0, &jerr);
    const char *cmd = json_string_value(json_object_get(req, "cmd"));
    const char *vsn = json_string_value(json_object_get(req, "vsn"));
    static const char *const writes[] = {"unpack", "install", "upgrade", "downgrade", "remove", "make-permanent", NULL};
    bool write = false;
    for (const char *const *w = writes; cmd && *w; w++)
        write = write || strcmp(cmd, *w) == 0;
    if (!req || !cmd) {
        reply_error(c, "bad request: %s", req ? "no cmd" : jerr.text);
    } else if (write ? !c->writer : !c->reader) {
        log_info("refused %s for %s", cmd, c->who);
        reply_error(c, "permission denied: %s may not %s (see writer_group/reader_group in reld's config)", c->who,
                    write ? "change releases" : "read reld's state");
    } else if (strcmp(cmd, "unpack") == 0) {
        cmd_unpack(c);
    } else if (strcmp(cmd, "releases") == 0) {
        json_t *rels = NULL;
        if (history_releases(d->hist, &rels) < 0)
            reply_error(c, "cannot read the release database");
        else
            reply_ok(c, json_pack("{s:o}", "releases", rels));
    } else if (strcmp(cmd, "history") == 0) {
        json_int_t limit = json_integer_value(json_object_get(req, "limit"));
        json_t *h = NULL;
        if (history_list(d->hist, limit > 0 ? (int)limit : 50, &h) < 0)
            reply_error(c, "cannot read the history");
        else
            reply_ok(c, h);
    } else if (strcmp(cmd, "status") == 0) {
        reply_ok(c, status_json(d));
    } else if (strcmp(cmd, "install") == 0) {
        cmd_install(c, vsn, NULL);
    } else if (strcmp(cmd, "upgrade") == 0 || strcmp(cmd, "downgrade") == 0) {
        cmd_install(c, vsn, cmd);
    } else if (strcmp(cmd, "remove") == 0) {
        cmd_remove(c, vsn);
    } else if (strcmp(cmd, "make-permanent") == 0) {
        cmd_make_permanent(c, vsn);
    } else if (strcmp(cmd, "relup") == 0) {
        cmd_relup(c, json_string_value(json_object_get(req, "from")), json_string_value(json_object_get(req, "to")));
    } else {
        reply_error(c, "unknown command '%s'", cmd);
    }
    json_decref(req);
}

/* Reads a request (and any file descriptors with it); writes the reply. */
static int client_io(sd_event_source *s, int fd, uint32_t revents, void *userdata)
{
    Client *c = userdata;
    if (revents & EPOLLOUT) {
        while (c->out_off < c->out_len) {
            ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
            if (n < 0 && errno == EAGAIN)
                return 0;
            if (n <= 0)
                break;
            c->out_off += (size_t)n;
        }
        if (c->answered) {
            client_free(c); /* one request, one reply */
            return 0;
        }
        /* Progress lines written; the reply comes later. */
        c->out_len = c->out_off = 0;
        sd_event_source_set_io_events(c->src, 0);
        return 0;
    }
    char cbuf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
    struct iovec iov = {.iov_base = c->in + c->in_len, .iov_len = sizeof(c->in) - c->in_len};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
    ssize_t n = recvmsg(c->fd, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (n < 0 && errno == EAGAIN)
        return 0;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
            size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            int *fds = (int *)CMSG_DATA(cm);
            for (size_t i = 0; i < k; i++) {
                if (c->n_fds < MAX_FDS)
                    c->fds[c->n_fds++] = fds[i];
                else
                    close(fds[i]);
            }
        }
    if (n <= 0) {
        if (!c->job)
            client_free(c); /* gone; an unpack or upgrade under way finishes anyway */
        else
            sd_event_source_set_enabled(c->src, SD_EVENT_OFF);
        return 0;
    }
    c->in_len += (size_t)n;
    char *nl = memchr(c->in, '\n', c->in_len);
    if (nl && !c->answered && !c->job && !c->upgrading) {
        sd_event_source_set_io_events(c->src, 0);
        handle_request(c, c->in, (size_t)(nl - c->in));
    } else if (c->in_len == sizeof(c->in)) {
        reply_error(c, "request longer than %d bytes", MAX_REQUEST);
    }
    return 0;
}

/* ---- life ---------------------------------------------------------------- */

static int listen_on(Daemon *d)
{
    const char *path = d->cfg.socket_path;
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(a.sun_path)) {
        log_error("socket path too long: %s", path);
        return -ENAMETOOLONG;
    }
    strcpy(a.sun_path, path);
    char *dir = xstrdup(path), *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = 0;
        mkdir(dir, 0755);
    }
    free(dir);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
        unlink(path); /* a previous reld's; we hold the root's lock */
    mode_t old = umask(0117);
    int r = bind(fd, (struct sockaddr *)&a, sizeof(a));
    umask(old);
    if (r < 0 || chmod(path, 0660) < 0 || (d->have_writer_gid && chown(path, (uid_t)-1, d->writer_gid) < 0) ||
        listen(fd, 128) < 0) {
        r = -errno;
        log_error("cannot listen on %s: %s", path, strerror(errno));
        close(fd);
        return r;
    }
    d->listen_fd = fd;
    return 0;
}

static bool lookup_group(const char *name, gid_t *ret)
{
    struct group g, *res = NULL;
    char buf[4096];
    if (getgrnam_r(name, &g, buf, sizeof(buf), &res) != 0 || !res)
        return false;
    *ret = res->gr_gid;
    return true;
}

/* Brings the database and the files into agreement after a crash. */
static void reconcile(Daemon *d)
{
    int n = history_attempts_interrupted(d->hist);
    if (n > 0) {
        log_info("%d upgrade attempt(s) were interrupted by reld stopping; booting the permanent release", n);
        history_event(d->hist, "interrupted", "reld (start)", NULL, NULL);
    }
    char *tmp = xasprintf("%s/tmp", d->cfg.root);
    store_remove_tree(tmp); /* staging directories of unpacks a crash interrupted */
    free(tmp);
    json_t *rels = NULL;
    if (history_releases(d->hist, &rels) < 0)
        return;
    size_t i;
    json_t *r;
    json_array_foreach(rels, i, r)
    {
        const char *vsn = json_string_value(json_object_get(r, "vsn"));
        const char *state = json_string_value(json_object_get(r, "state"));
        char *path = xasprintf("%s/releases/%s/release.yaml", d->cfg.root, vsn);
        if (access(path, F_OK) < 0) {
            log_error("release %s is in the database but not in %s; forgetting it", vsn, d->cfg.root);
            history_release_remove(d->hist, vsn, "reld (start)");
        } else if (strcmp(state, RELEASE_CURRENT) == 0) {
            /* Installed but never made permanent: rolled back, as OTP. */
            log_info("release %s was current but never made permanent: rolled back", vsn);
            history_release_set_state(d->hist, vsn, RELEASE_UNPACKED, "reld (start)");
        }
        free(path);
    }
    json_decref(rels);
}

int daemon_new(const DaemonConfig *cfg, Daemon **ret)
{
    /* Before any thread exists: sd-event's child sources need SIGCHLD
     * blocked everywhere, and SIGTERM/SIGINT arrive as events. */
    sigset_t ss;
    sigemptyset(&ss);
    sigaddset(&ss, SIGCHLD);
    sigaddset(&ss, SIGTERM);
    sigaddset(&ss, SIGINT);
    sigprocmask(SIG_BLOCK, &ss, NULL);
    signal(SIGPIPE, SIG_IGN); /* a client or process that vanishes is an error to handle, not our death */
    Daemon *d = xcalloc(1, sizeof(*d));
    d->cfg = (DaemonConfig){.root = xstrdup(cfg->root),
                            .socket_path = xstrdup(cfg->socket_path),
                            .writer_group = xstrdup(cfg->writer_group),
                            .reader_group = xstrdup(cfg->reader_group),
                            .readers_all = cfg->readers_all,
                            .max_unpacked = cfg->max_unpacked};
    d->listen_fd = d->job_efd = d->lock_fd = -1;
    pthread_mutex_init(&d->job_lock, NULL);
    int r = 0;
    if (d->cfg.writer_group && !(d->have_writer_gid = lookup_group(d->cfg.writer_group, &d->writer_gid)))
        log_error("writer_group '%s' does not exist", d->cfg.writer_group), r = -ENOENT;
    if (d->cfg.reader_group && !(d->have_reader_gid = lookup_group(d->cfg.reader_group, &d->reader_gid)))
        log_error("reader_group '%s' does not exist", d->cfg.reader_group), r = -ENOENT;
    if (r == 0 && mkdir(d->cfg.root, 0755) < 0 && errno != EEXIST)
        log_error("cannot create %s: %s", d->cfg.root, strerror(errno)), r = -errno;
    char *lock = xasprintf("%s/reld.lock", d->cfg.root);
    if (r == 0 && ((d->lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600)) < 0 ||
                   flock(d->lock_fd, LOCK_EX | LOCK_NB) < 0)) {
        r = errno == EWOULDBLOCK ? -EBUSY : -errno;
        log_error("%s: %s", lock, r == -EBUSY ? "another reld runs on this root" : strerror(-r));
    }
    free(lock);
    char *db = xasprintf("%s/reld.db", d->cfg.root), *err = NULL;
    if (r == 0 && (r = history_open(db, &d->hist, &err)) < 0)
        log_error("%s", err ? err : "cannot open the database");
    free(db);
    free(err);
    if (r == 0)
        reconcile(d);
    if (r == 0 && (r = sd_event_default(&d->ev)) < 0) /* 1 when it made a new loop */
        log_error("cannot create the event loop: %s", strerror(-r));
    r = r > 0 ? 0 : r;
    if (r == 0)
        r = listen_on(d);
    if (r == 0 && (r = sd_event_add_io(d->ev, NULL, d->listen_fd, EPOLLIN, on_connect, d)) < 0)
        log_error("cannot watch the socket: %s", strerror(-r));
    if (r == 0 && (d->job_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0)
        r = -errno;
    if (r == 0)
        r = sd_event_add_io(d->ev, NULL, d->job_efd, EPOLLIN, on_job_done, d);
    if (r == 0)
        r = supervisor_new(d->ev, d->hist, d->cfg.root, &d->sup);
    char *perm = NULL;
    if (r == 0 && history_release_in_state(d->hist, RELEASE_PERMANENT, &perm) == 0) {
        Diag diag = {0};
        if (boot_release(d, perm, &diag) < 0) /* keep serving relctl: the operator must see why */
            log_error("cannot boot permanent release %s: %s", perm, diag.errors.n ? diag.errors.v[0] : "?");
        else
            history_event(d->hist, "boot", "reld", perm, NULL);
        diag_clear(&diag);
    }
    free(perm);
    if (r < 0) {
        daemon_free(d);
        return r;
    }
    *ret = d;
    return 0;
}

int daemon_run(Daemon *d)
{
    sd_event_add_signal(d->ev, NULL, SIGTERM, NULL, NULL);
    sd_event_add_signal(d->ev, NULL, SIGINT, NULL, NULL);
    sd_event_set_watchdog(d->ev, true); /* WATCHDOG=1 at half of WatchdogSec=, when systemd asks */
    char *perm = NULL;
    history_release_in_state(d->hist, RELEASE_PERMANENT, &perm);
    log_info("ready: root %s, socket %s, permanent release %s", d->cfg.root, d->cfg.socket_path,
             perm ? perm : "(none)");
    sd_notifyf(false, "READY=1\nSTATUS=root %s, permanent release %s", d->cfg.root, perm ? perm : "(none)");
    free(perm);
    int r = sd_event_loop(d->ev);
    sd_notify(false, "STOPPING=1");
    return r < 0 ? 1 : 0;
}

Daemon *daemon_free(Daemon *d)
{
    if (!d)
        return NULL;
    if (d->jobs_running) {
        /* A worker thread still unpacks or plans and will touch d: the
         * process is about to exit, which ends it; freeing d would not. */
        log_info("exiting with %u unpack(s) or upgrade plan(s) under way; staging directories go at the next start",
                 d->jobs_running);
        return NULL;
    }
    if (d->upgrade) { /* stopped mid-upgrade: the attempt shows as interrupted at the next start */
        upgrade_free(d->upgrade);
        d->upgrade = NULL;
    }
    while (d->clients)
        client_free(d->clients);
    d->sup = supervisor_free(d->sup); /* stops the processes, in reverse order */
    d->running = release_def_free(d->running);
    if (d->listen_fd >= 0) {
        close(d->listen_fd);
        unlink(d->cfg.socket_path);
    }
    if (d->job_efd >= 0)
        close(d->job_efd);
    if (d->lock_fd >= 0)
        close(d->lock_fd);
    sd_event_unref(d->ev);
    history_close(d->hist);
    daemon_config_clear(&d->cfg);
    pthread_mutex_destroy(&d->job_lock);
    free(d);
    return NULL;
}
