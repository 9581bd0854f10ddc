/* One connection to the control socket (client.h). */
#include "client.h"

#include <errno.h>
#include <pwd.h>
#include <stdarg.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

#define MAX_REQUEST 65536
#define MAX_FDS     4

struct Client {
    int fd;
    sd_event_source *src;
    struct ucred cred;
    bool writer, reader;
    char *who;
    ClientHandlers h;
    char in[MAX_REQUEST];
    size_t in_len;
    int fds[MAX_FDS];
    size_t n_fds;
    char *out;
    size_t out_len, out_off;
    bool asked;    /* its request was handed on */
    bool answered; /* its reply is queued */
    bool eof;      /* its peer shut down its side: nothing more to read */
};

const char *client_who(const Client *c)
{
    return c->who;
}

bool client_may_write(const Client *c)
{
    return c->writer;
}

bool client_may_read(const Client *c)
{
    return c->reader;
}

size_t client_n_fds(const Client *c)
{
    return c->n_fds;
}

int client_take_fd(Client *c)
{
    if (!c->n_fds)
        return -1;
    int fd = c->fds[0];
    memmove(c->fds, c->fds + 1, (--c->n_fds) * sizeof(int));
    return fd;
}

void client_free(Client *c)
{
    if (c->h.gone)
        c->h.gone(c, c->h.userdata);
    sd_event_source_disable_unref(c->src); /* closes fd: the source owns it */
    for (size_t i = 0; i < c->n_fds; i++)
        close(c->fds[i]);
    free(c->out);
    free(c->who);
    free(c);
}

static void queue_line(Client *c, json_t *msg)
{
    char *text = json_dumps(msg, JSON_COMPACT);
    json_decref(msg);
    if (!text) {
        log_error("cannot encode a reply for %s", c->who);
        return;
    }
    size_t len = strlen(text);
    c->out = xrealloc(c->out, c->out_len + len + 1);
    memcpy(c->out + c->out_len, text, len);
    c->out[c->out_len + len] = '\n';
    c->out_len += len + 1;
    free(text);
    (void)sd_event_source_set_io_events(c->src, EPOLLOUT);  /* cannot fail on an io source */
    (void)sd_event_source_set_enabled(c->src, SD_EVENT_ON); /* after an end of file, off until now */
}

void client_send(Client *c, json_t *msg)
{
    queue_line(c, msg);
}

static void reply(Client *c, json_t *msg)
{
    c->answered = true;
    queue_line(c, msg);
}

void client_reply_ok(Client *c, json_t *fields)
{
    json_t *m = fields ? fields : json_object();
    json_object_set_new(m, "ok", json_true());
    reply(c, m);
}

void client_reply_error(Client *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = xvasprintf(fmt, ap);
    va_end(ap);
    reply(c, json_pack("{s:b, s:s}", "ok", 0, "error", msg));
    free(msg);
}

void client_reply_diag(Client *c, const Diag *diag, const char *fallback)
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

static int on_io(sd_event_source *s, int fd, uint32_t revents, void *userdata)
{
    Client *c = userdata;
    if (revents & EPOLLOUT) {
        while (c->out_off < c->out_len) {
            ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && errno == EAGAIN)
                return 0;
            if (n <= 0) { /* the peer went away */
                client_free(c);
                return 0;
            }
            c->out_off += (size_t)n;
        }
        if (c->answered) {
            client_free(c); /* one request, one reply */
            return 0;
        }
        /* Progress lines written; the reply comes later. */
        c->out_len = c->out_off = 0;
        if (c->eof) /* a hung-up peer is reported again and again: nothing to read, so no watching */
            (void)sd_event_source_set_enabled(c->src, SD_EVENT_OFF);
        else
            (void)sd_event_source_set_io_events(c->src, EPOLLIN);
        return 0;
    }
    char cbuf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
    struct iovec iov = {.iov_base = c->in + c->in_len, .iov_len = sizeof(c->in) - c->in_len};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
    ssize_t n = recvmsg(c->fd, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); n >= 0 && cm; cm = CMSG_NXTHDR(&mh, cm))
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
            size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            int *fds = (int *)CMSG_DATA(cm);
            for (size_t i = 0; i < k; i++) {
                if (c->n_fds < MAX_FDS && !c->asked)
                    c->fds[c->n_fds++] = fds[i];
                else
                    close(fds[i]);
            }
        }
    if (n == 0 && c->asked && !c->answered) {
        /* It shut down its side after asking: the reply still goes out. */
        c->eof = true;
        if (c->out_len > c->out_off)
            (void)sd_event_source_set_io_events(c->src, EPOLLOUT);
        else /* a hung-up peer is reported again and again: nothing to read, so no watching */
            (void)sd_event_source_set_enabled(c->src, SD_EVENT_OFF);
        return 0;
    }
    if (n <= 0) {
        /* Gone: what it asked for goes on and is recorded; nobody is told. */
        client_free(c);
        return 0;
    }
    if (c->asked)
        return 0; /* one request per connection: more bytes are ignored */
    c->in_len += (size_t)n;
    char *nl = memchr(c->in, '\n', c->in_len);
    if (nl) {
        c->asked = true;
        json_error_t jerr;
        json_t *req = json_loadb(c->in, (size_t)(nl - c->in), 0, &jerr);
        if (!json_is_object(req))
            client_reply_error(c, "bad request: %s", req ? "not a JSON object" : jerr.text);
        else
            c->h.request(c, req, c->h.userdata);
        json_decref(req);
    } else if (c->in_len == sizeof(c->in)) {
        c->asked = true;
        client_reply_error(c, "request longer than %d bytes", MAX_REQUEST);
    }
    return 0;
}

int client_new(sd_event *ev, int fd, const struct ucred *cred, bool writer, bool reader, const ClientHandlers *h,
               Client **ret)
{
    Client *c = xcalloc(1, sizeof(*c));
    c->fd = fd;
    c->cred = *cred;
    c->writer = writer;
    c->reader = reader;
    c->h = *h;
    struct passwd pw, *res = NULL;
    char buf[1024];
    if (getpwuid_r(cred->uid, &pw, buf, sizeof(buf), &res) != 0)
        res = NULL; /* no name: the uid says who */
    c->who = xasprintf("%s (uid %u, pid %d)", res ? res->pw_name : "?", (unsigned)cred->uid, (int)cred->pid);
    int r = sd_event_add_io(ev, &c->src, fd, EPOLLIN, on_io, c);
    if (r < 0) {
        close(fd);
        free(c->who);
        free(c);
        return r;
    }
    (void)sd_event_source_set_io_fd_own(c->src, true); /* cannot fail on an io source */
    *ret = c;
    return 0;
}
