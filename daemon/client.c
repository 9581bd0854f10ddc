/* One connection to the control socket (client.h). */
#include "client.h"

#include <errno.h>
#include <pwd.h>
#include <stdarg.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

#define MAX_REQUEST 65536
#define MAX_FDS     4

/* What a reply that cannot be encoded becomes (never expected: every text
 * is made valid UTF-8 before it goes in). */
#define UNENCODABLE_REPLY "{\"ok\":false,\"error\":\"reld could not encode its reply (see its log)\"}"

struct Client {
    int fd;
    sd_event_source *src;
    sd_event_source *timer; /* the idle timeout; NULL when there is none */
    uint64_t timeout_usec;
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
    sd_event_source_disable_unref(c->timer);
    for (size_t i = 0; i < c->n_fds; i++)
        close(c->fds[i]);
    free(c->out);
    free(c->who);
    free(c);
}

/* ---- valid UTF-8 ------------------------------------------------------------ */

/* The length of the valid UTF-8 character at s (RFC 3629: no overlong
 * forms, no surrogates, nothing above U+10FFFF), 0 when there is none. */
static size_t utf8_char_len(const unsigned char *s)
{
    unsigned char c = s[0];
    if (c < 0x80)
        return 1;
    size_t n;
    unsigned int min;
    unsigned int cp;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2, min = 0x80, cp = c & 0x1fu;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3, min = 0x800, cp = c & 0x0fu;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4, min = 0x10000, cp = c & 0x07u;
    } else {
        return 0;
    }
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80) /* also the terminating NUL */
            return 0;
        cp = (cp << 6) | (s[i] & 0x3fu);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

/* s as valid UTF-8 (caller frees): each byte that does not belong to a
 * valid character becomes the text \xNN. */
static char *valid_utf8(const char *s)
{
    const unsigned char *p = (const unsigned char *)(s ? s : "");
    size_t len = strlen((const char *)p);
    char *out = xmalloc(4 * len + 1), *o = out;
    while (*p) {
        size_t n = utf8_char_len(p);
        if (n) {
            memcpy(o, p, n);
            o += n;
            p += n;
        } else {
            static const char hex[] = "0123456789abcdef";
            *o++ = '\\';
            *o++ = 'x';
            *o++ = hex[*p >> 4];
            *o++ = hex[*p & 0xf];
            p++;
        }
    }
    *o = 0;
    return out;
}

/* ---- lines out ---------------------------------------------------------------- */

static void append_line(Client *c, const char *text)
{
    size_t len = strlen(text);
    c->out = xrealloc(c->out, c->out_len + len + 1);
    memcpy(c->out + c->out_len, text, len);
    c->out[c->out_len + len] = '\n';
    c->out_len += len + 1;
    (void)sd_event_source_set_io_events(c->src, EPOLLOUT);  /* cannot fail on an io source */
    (void)sd_event_source_set_enabled(c->src, SD_EVENT_ON); /* after an end of file, off until now */
}

/* The idle timeout counts again from now (or stops). */
static void arm_timer(Client *c, bool on)
{
    if (!c->timer)
        return;
    if (on)
        (void)sd_event_source_set_time_relative(c->timer, c->timeout_usec); /* cannot fail on a time source */
    (void)sd_event_source_set_enabled(c->timer, on ? SD_EVENT_ONESHOT : SD_EVENT_OFF);
}

/* Queues msg (taken; NULL when building it failed). A reply that cannot be
 * encoded is replaced by a fixed one, so that the peer is always answered;
 * a progress line that cannot is left out. */
static void queue_line(Client *c, json_t *msg, bool is_reply)
{
    char *text = msg ? json_dumps(msg, JSON_COMPACT) : NULL;
    json_decref(msg);
    if (!text) {
        log_error("cannot encode a %s for %s%s", is_reply ? "reply" : "progress line", c->who,
                  is_reply ? ": sent a fixed refusal instead" : ": left out");
        if (is_reply)
            append_line(c, UNENCODABLE_REPLY);
        return;
    }
    append_line(c, text);
    free(text);
}

void client_send(Client *c, json_t *msg)
{
    queue_line(c, msg, false);
}

static void reply(Client *c, json_t *msg)
{
    if (c->answered) { /* one reply per request */
        json_decref(msg);
        return;
    }
    c->answered = true;
    queue_line(c, msg, true);
    arm_timer(c, true); /* now the peer has to read it */
}

void client_reply_ok(Client *c, json_t *fields)
{
    json_t *m = fields ? fields : json_object();
    json_object_set_new(m, "ok", json_true());
    reply(c, m);
}

static json_t *valid_lines(const StrVec *v);

void client_reply_ok_warned(Client *c, json_t *fields, const Diag *diag)
{
    json_t *m = fields ? fields : json_object();
    if (diag && diag->warnings.n)
        json_object_set_new(m, "warnings", valid_lines(&diag->warnings));
    client_reply_ok(c, m);
}

void client_reply_error(Client *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = xvasprintf(fmt, ap);
    va_end(ap);
    char *text = valid_utf8(msg);
    reply(c, json_pack("{s:b, s:s}", "ok", 0, "error", text));
    free(text);
    free(msg);
}

static json_t *valid_lines(const StrVec *v)
{
    json_t *a = json_array();
    for (size_t i = 0; i < v->n; i++) {
        char *text = valid_utf8(v->v[i]);
        json_array_append_new(a, json_string(text));
        free(text);
    }
    return a;
}

void client_reply_diag_with(Client *c, const Diag *diag, const char *fallback, const json_t *extra)
{
    char *first = valid_utf8(diag->errors.n ? diag->errors.v[0] : fallback);
    json_t *m = json_pack("{s:b, s:s, s:o, s:o}", "ok", 0, "error", first, "errors", valid_lines(&diag->errors),
                          "warnings", valid_lines(&diag->warnings));
    if (extra)
        (void)json_object_update_missing(m, (json_t *)extra); /* only fails on a non-object: extra is one */
    reply(c, m);
    free(first);
}

void client_reply_diag(Client *c, const Diag *diag, const char *fallback)
{
    client_reply_diag_with(c, diag, fallback, NULL);
}

/* ---- the connection ----------------------------------------------------------------- */

static int on_timeout(sd_event_source *s, uint64_t usec, void *userdata)
{
    Client *c = userdata;
    if (!c->asked) {
        log_notice("closed the connection of %s: no complete request within %.1f s", c->who,
                   (double)c->timeout_usec / 1e6);
        /* One try to say why; the peer may not read at all. */
        char *text = xasprintf("{\"ok\":false,\"error\":\"no complete request within %.1f s: connection closed\"}\n",
                               (double)c->timeout_usec / 1e6);
        (void)!send(c->fd, text, strlen(text), MSG_NOSIGNAL | MSG_DONTWAIT);
        free(text);
    } else {
        log_notice("closed the connection of %s: its reply was not read within %.1f s", c->who,
                   (double)c->timeout_usec / 1e6);
    }
    client_free(c);
    return 0;
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
            if (c->answered)
                arm_timer(c, true); /* it reads: the timeout counts from its last read */
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
        arm_timer(c, false); /* complete: waiting for an operation is not idle */
        json_error_t jerr;
        json_t *req = json_loadb(c->in, (size_t)(nl - c->in), 0, &jerr);
        if (!json_is_object(req))
            client_reply_error(c, "bad request: %s", req ? "not a JSON object" : jerr.text);
        else
            c->h.request(c, req, c->h.userdata);
        json_decref(req);
    } else if (c->in_len == sizeof(c->in)) {
        c->asked = true;
        arm_timer(c, false);
        client_reply_error(c, "request longer than %d bytes", MAX_REQUEST);
    }
    return 0;
}

int client_new(sd_event *ev, int fd, const struct ucred *cred, bool writer, bool reader, uint64_t timeout_usec,
               const ClientHandlers *h, Client **ret)
{
    Client *c = xcalloc(1, sizeof(*c));
    c->fd = fd;
    c->timeout_usec = timeout_usec;
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
    if (timeout_usec) {
        /* Accuracy: a tenth of the timeout, so that timers coalesce. */
        r = sd_event_add_time_relative(ev, &c->timer, CLOCK_MONOTONIC, timeout_usec, timeout_usec / 10 + 1, on_timeout,
                                       c);
        if (r < 0) {
            c->timer = NULL;
            c->h.gone = NULL; /* nobody knows it yet */
            client_free(c);
            return r;
        }
    }
    *ret = c;
    return 0;
}
