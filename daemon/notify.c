/* $NOTIFY_SOCKET of one run of a process (notify.h). */
#include "notify.h"

#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "util.h"

struct Notify {
    sd_event_source *src;
    char address[sizeof(((struct sockaddr_un *)0)->sun_path) + 1]; /* "@NAME": '@' stands for the abstract NUL */
    pid_t pid;
    bool ready;
    NotifyReady on_ready;
    void *userdata;
};

/* Does the message hold the line READY=1? (Lines are "KEY=VALUE".) */
static bool says_ready(const char *m, size_t len)
{
    for (const char *line = m, *end = m + len; line < end;) {
        const char *nl = memchr(line, '\n', (size_t)(end - line));
        size_t n = (size_t)((nl ? nl : end) - line);
        if (n == 7 && memcmp(line, "READY=1", 7) == 0)
            return true;
        line += n + 1;
    }
    return false;
}

static int on_message(sd_event_source *s, int fd, uint32_t revents, void *userdata)
{
    Notify *n = userdata;
    for (;;) {
        char buf[NOTIFY_MESSAGE_MAX];
        union {
            struct cmsghdr h;
            char buf[CMSG_SPACE(sizeof(struct ucred))];
        } control;
        struct iovec iov = {.iov_base = buf, .iov_len = sizeof(buf)};
        struct msghdr mh = {
            .msg_iov = &iov, .msg_iovlen = 1, .msg_control = &control, .msg_controllen = sizeof(control)};
        ssize_t len = recvmsg(fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC | MSG_TRUNC);
        if (len < 0)
            return 0; /* EAGAIN: all read; anything else: nothing more to read now either */
        const struct ucred *cred = NULL;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS &&
                c->cmsg_len == CMSG_LEN(sizeof(struct ucred)))
                cred = (const struct ucred *)(void *)CMSG_DATA(c);
        /* A truncated message is not understood; without credentials (cannot
         * happen with SO_PASSCRED) or from another pid, it is not the run's. */
        if (!cred || !n->pid || cred->pid != n->pid || (size_t)len > sizeof(buf))
            continue;
        if (!n->ready && says_ready(buf, (size_t)len)) {
            n->ready = true;
            if (n->on_ready)
                n->on_ready(n, n->userdata);
            return 0; /* n may be gone */
        }
    }
}

int notify_new(sd_event *ev, NotifyReady ready, void *userdata, Notify **ret)
{
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0), one = 1, r;
    if (fd < 0)
        return -errno;
    Notify *n = xcalloc(1, sizeof(*n));
    n->on_ready = ready;
    n->userdata = userdata;
    /* Autobind (an address of the family alone): the kernel picks a name
     * in the abstract namespace that nobody holds. A name of our own
     * choosing could be predicted, and bound first by any local user to
     * block every readiness. */
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    socklen_t len = sizeof(a);
    if (setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)) < 0 ||
        bind(fd, (struct sockaddr *)&a, (socklen_t)offsetof(struct sockaddr_un, sun_path)) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) < 0) {
        r = -errno;
        close(fd);
        free(n);
        return r;
    }
    size_t name = len > offsetof(struct sockaddr_un, sun_path) ? len - offsetof(struct sockaddr_un, sun_path) : 0;
    if (name < 2 || a.sun_path[0] || memchr(a.sun_path + 1, 0, name - 1)) { /* not an abstract name we can pass */
        close(fd);
        free(n);
        return -EADDRNOTAVAIL;
    }
    n->address[0] = '@';
    memcpy(n->address + 1, a.sun_path + 1, name - 1); /* NUL-terminated by xcalloc */
    if ((r = sd_event_add_io(ev, &n->src, fd, EPOLLIN, on_message, n)) < 0) {
        close(fd);
        free(n);
        return r;
    }
    (void)sd_event_source_set_io_fd_own(n->src, true); /* cannot fail on an io source */
    /* A readiness ends an overlap, which others wait for: before other work. */
    (void)sd_event_source_set_priority(n->src, SD_EVENT_PRIORITY_IMPORTANT);
    *ret = n;
    return 0;
}

Notify *notify_free(Notify *n)
{
    if (!n)
        return NULL;
    sd_event_source_disable_unref(n->src);
    free(n);
    return NULL;
}

const char *notify_address(const Notify *n)
{
    return n->address;
}

void notify_expect(Notify *n, pid_t pid)
{
    n->pid = pid;
    n->ready = false;
}

bool notify_ready(const Notify *n)
{
    return n->ready;
}
