/* reld's control socket (server.h). */
#include "server.h"

#include <errno.h>
#include <grp.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "client.h"
#include "commands.h"
#include "log.h"
#include "util.h"

typedef struct Rights {
    gid_t writer_gid, reader_gid;
    bool have_writer_gid, have_reader_gid, readers_all;
} Rights;

typedef struct ClientLink {
    Server *s;
    Client *c;
    int fd; /* the client's (it owns it), for a re-exec to answer on */
    struct ClientLink *next;
} ClientLink;

struct Server {
    sd_event *ev;
    Manager *m;
    char *path;
    int fd;
    bool bound; /* the socket file is ours */
    sd_event_source *src;
    sd_event_source *retry; /* after a shortage of file descriptors */
    Rights rights;
    ClientLink *clients;
    unsigned n_clients, max_clients;
    uint64_t timeout_usec;
    bool starved;                            /* accept() found no descriptor: wait for one to close, or the retry */
    long long said_full_ms, said_starved_ms; /* when it last said so: once a minute at most */
};

#define SAY_EVERY_MS 60000

/* Watches the socket when a connection can be taken, else not: the
 * connection waits in the backlog rather than the loop spinning on it. */
static void update_accepting(Server *s)
{
    bool full = s->n_clients >= s->max_clients;
    if (full && (!s->said_full_ms || mono_ms() - s->said_full_ms >= SAY_EVERY_MS)) {
        log_warning("%u connections open, the limit: new ones wait until one closes", s->n_clients);
        s->said_full_ms = mono_ms();
    }
    (void)sd_event_source_set_enabled(s->src, full || s->starved ? SD_EVENT_OFF : SD_EVENT_ON);
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

static bool in_group(int fd, const struct ucred *cred, gid_t g)
{
    if (cred->gid == g)
        return true;
    gid_t groups[256];
    socklen_t len = sizeof(groups);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) < 0)
        return false; /* more than 256 groups, or no such option: not a member as far as we can tell */
    for (size_t i = 0; i < len / sizeof(gid_t); i++)
        if (groups[i] == g)
            return true;
    return false;
}

static void on_request(Client *c, json_t *req, void *userdata)
{
    ClientLink *l = userdata;
    commands_handle(c, req, l->s->m);
}

static void on_gone(Client *c, void *userdata)
{
    ClientLink *l = userdata;
    Server *s = l->s;
    commands_forget(c, s->m);
    for (ClientLink **p = &s->clients; *p; p = &(*p)->next)
        if (*p == l) {
            *p = l->next;
            break;
        }
    free(l);
    s->n_clients--;
    s->starved = false; /* a descriptor is free again */
    update_accepting(s);
}

static int on_retry(sd_event_source *src, uint64_t usec, void *userdata)
{
    Server *s = userdata;
    s->starved = false;
    update_accepting(s);
    return 0;
}

static int on_connect(sd_event_source *src, int fd, uint32_t revents, void *userdata)
{
    Server *s = userdata;
    while (s->n_clients < s->max_clients) {
        int cfd = accept4(s->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0 && (errno == EINTR || errno == ECONNABORTED))
            continue;
        if (cfd < 0 && errno == EAGAIN)
            return 0;
        if (cfd < 0) {
            /* No descriptor (EMFILE, ENFILE) or memory: the connection
             * stays queued; watching the socket again now would spin. */
            int e = errno;
            if (!s->said_starved_ms || mono_ms() - s->said_starved_ms >= SAY_EVERY_MS) {
                log_warning("accept on %s: %s; new connections wait until one closes (%u open)", s->path, strerror(e),
                            s->n_clients);
                s->said_starved_ms = mono_ms();
            }
            s->starved = true;
            (void)sd_event_source_set_time_relative(s->retry, SERVER_RETRY_USEC); /* cannot fail on a time source */
            (void)sd_event_source_set_enabled(s->retry, SD_EVENT_ONESHOT);
            update_accepting(s);
            return 0;
        }
        struct ucred cred;
        socklen_t len = sizeof(cred);
        if (getsockopt(cfd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
            close(cfd);
            continue;
        }
        const Rights *r = &s->rights;
        bool writer =
            cred.uid == 0 || cred.uid == geteuid() || (r->have_writer_gid && in_group(cfd, &cred, r->writer_gid));
        bool reader = writer || r->readers_all || (r->have_reader_gid && in_group(cfd, &cred, r->reader_gid));
        ClientLink *l = xcalloc(1, sizeof(*l));
        l->s = s;
        l->fd = cfd;
        ClientHandlers h = {.request = on_request, .gone = on_gone, .userdata = l};
        int e = client_new(s->ev, cfd, &cred, writer, reader, s->timeout_usec, &h, &l->c);
        if (e < 0) {
            log_warning("cannot serve a connection: %s", strerror(-e));
            free(l);
            continue;
        }
        l->next = s->clients;
        s->clients = l;
        s->n_clients++;
    }
    update_accepting(s);
    return 0;
}

void server_set_limits(Server *s, unsigned max_clients, uint64_t idle_timeout_usec)
{
    s->max_clients = max_clients ? max_clients : SERVER_MAX_CLIENTS;
    s->timeout_usec = idle_timeout_usec;
    update_accepting(s);
}

int server_set_rights(Server *s, const DaemonConfig *cfg)
{
    Rights r = {.readers_all = cfg->readers_all};
    if (cfg->writer_group && !(r.have_writer_gid = lookup_group(cfg->writer_group, &r.writer_gid))) {
        log_error("writer_group '%s' does not exist", cfg->writer_group);
        return -ENOENT;
    }
    if (cfg->reader_group && !(r.have_reader_gid = lookup_group(cfg->reader_group, &r.reader_gid))) {
        log_error("reader_group '%s' does not exist", cfg->reader_group);
        return -ENOENT;
    }
    mode_t mode = r.readers_all || r.have_reader_gid ? 0666 : 0660;
    if (chmod(s->path, mode) < 0 || chown(s->path, (uid_t)-1, r.have_writer_gid ? r.writer_gid : getegid()) < 0) {
        int e = -errno;
        log_error("cannot set the rights of %s: %s", s->path, strerror(-e));
        return e;
    }
    s->rights = r;
    return 0;
}

int server_new(sd_event *ev, Manager *m, const DaemonConfig *cfg, Server **ret)
{
    return server_new_from(ev, m, cfg, -1, ret);
}

int server_fd(const Server *s)
{
    return s->fd;
}

int server_client_fd(const Server *s, const Client *c)
{
    for (const ClientLink *l = s->clients; l; l = l->next)
        if (l->c == c)
            return l->fd;
    return -1;
}

/* Is fd a listening socket bound to path? */
static bool listens_on(int fd, const char *path)
{
    struct sockaddr_un a = {0};
    socklen_t len = sizeof(a);
    int on = 0;
    socklen_t olen = sizeof(on);
    return getsockname(fd, (struct sockaddr *)&a, &len) == 0 && a.sun_family == AF_UNIX &&
           len > offsetof(struct sockaddr_un, sun_path) && strncmp(a.sun_path, path, sizeof(a.sun_path)) == 0 &&
           getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &on, &olen) == 0 && on;
}

int server_new_from(sd_event *ev, Manager *m, const DaemonConfig *cfg, int inherited, Server **ret)
{
    Server *s = xcalloc(1, sizeof(*s));
    s->ev = ev;
    s->m = m;
    s->fd = -1;
    s->path = xstrdup(cfg->socket_path);
    s->max_clients = SERVER_MAX_CLIENTS;
    s->timeout_usec = SERVER_IDLE_TIMEOUT_USEC;
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    int r = 0;
    if (strlen(s->path) >= sizeof(a.sun_path)) {
        log_error("socket path too long: %s", s->path);
        r = -ENAMETOOLONG;
        goto fail;
    }
    strcpy(a.sun_path, s->path);
    char *dir = xstrdup(s->path), *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = 0;
        if (mkdir(dir, 0755) < 0 && errno != EEXIST)
            log_warning("cannot create %s: %s", dir, strerror(errno)); /* bind says what follows */
    }
    free(dir);
    if (inherited >= 0 && listens_on(inherited, s->path)) {
        /* The reld before this exec listened: connections waiting in the
         * backlog are answered, none was refused. */
        s->fd = inherited;
        s->bound = true;
        goto listening;
    }
    if (inherited >= 0) {
        log_warning("the control socket handed over is not %s; binding it again", s->path);
        close(inherited);
    }
    s->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->fd < 0) {
        r = -errno;
        goto fail;
    }
    struct stat st;
    if (lstat(s->path, &st) == 0 && S_ISSOCK(st.st_mode)) {
        /* A previous reld's, if nobody answers there: another reld (of
         * another root) may listen on it, and keeps it. */
        int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        bool live = probe >= 0 && connect(probe, (struct sockaddr *)&a, sizeof(a)) == 0;
        if (probe >= 0)
            close(probe);
        if (live) {
            log_error("cannot listen on %s: another reld answers there", s->path);
            r = -EADDRINUSE;
            goto fail;
        }
        (void)unlink(s->path); /* stale: bind says what follows */
    }
    mode_t old = umask(0177); /* nobody connects before the rights are set */
    r = bind(s->fd, (struct sockaddr *)&a, sizeof(a));
    umask(old);
    s->bound = r == 0;
    if (r < 0 || listen(s->fd, 128) < 0) {
        r = -errno;
        log_error("cannot listen on %s: %s", s->path, strerror(-r));
        goto fail;
    }
listening:
    if ((r = server_set_rights(s, cfg)) < 0)
        goto fail;
    if ((r = sd_event_add_io(ev, &s->src, s->fd, EPOLLIN, on_connect, s)) < 0) {
        log_error("cannot watch the socket: %s", strerror(-r));
        goto fail;
    }
    /* Made now, off: also gives the loop the clock's timerfd that the
     * clients' idle timeouts share, so none needs a descriptor later. */
    if ((r = sd_event_add_time_relative(ev, &s->retry, CLOCK_MONOTONIC, SERVER_RETRY_USEC, 0, on_retry, s)) < 0 ||
        (r = sd_event_source_set_enabled(s->retry, SD_EVENT_OFF)) < 0) {
        log_error("cannot make a timer: %s", strerror(-r));
        goto fail;
    }
    *ret = s;
    return 0;
fail:
    server_free(s);
    return r;
}

Server *server_free(Server *s)
{
    if (!s)
        return NULL;
    while (s->clients)
        client_free(s->clients->c); /* its gone() unlinks it */
    sd_event_source_disable_unref(s->src);
    sd_event_source_disable_unref(s->retry);
    if (s->fd >= 0)
        close(s->fd);
    if (s->bound)
        (void)unlink(s->path); /* ours */
    free(s->path);
    free(s);
    return NULL;
}
