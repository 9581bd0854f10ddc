/* chat-host: the host process of the chat example, chat-plain.c ported
 * to reld (docs/porting.md). The poll loop, the sockets and the reading of
 * lines stay here; what the protocol remembers (clients, nicks,
 * subscriptions) is the state of the module chat_server, whose code reld
 * replaces while the clients stay connected.
 *
 * Runs under reld only: the listening socket comes from reld (LISTEN_FDS,
 * systemd's convention, fd 3), the module from RELD_MODULES. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* accept4; the tree's meson.build defines it for every file */
#endif
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "chat_api.h"
#include "reld-runtime.h"

typedef struct Conn {
    int fd;
    char in[4096];
    size_t in_len;
} Conn;

static volatile sig_atomic_t stopping;

static void on_term(int sig)
{
    (void)sig;
    stopping = 1;
}

/* Reads what c sent and hands each complete line to the module; false: it
 * is gone. */
static bool conn_read(const ChatServerApi *api, void *state, Conn *c)
{
    ssize_t n = read(c->fd, c->in + c->in_len, sizeof(c->in) - c->in_len);
    if (n <= 0)
        return n < 0 && errno == EINTR;
    c->in_len += (size_t)n;
    char *start = c->in, *nl;
    while ((nl = memchr(start, '\n', c->in_len - (size_t)(start - c->in)))) {
        size_t len = (size_t)(nl - start);
        api->line(state, c->fd, start, len && start[len - 1] == '\r' ? len - 1 : len);
        start = nl + 1;
    }
    c->in_len -= (size_t)(start - c->in);
    memmove(c->in, start, c->in_len);
    return c->in_len < sizeof(c->in); /* a line longer than the buffer: gone */
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0); /* a pipe or a journal under reld, not a terminal */
    const char *pid = getenv("LISTEN_PID"), *fds = getenv("LISTEN_FDS");
    if (!pid || !fds || atol(pid) != (long)getpid() || atol(fds) != 1) {
        fprintf(stderr, "chat-host: needs one listening socket from reld (LISTEN_FDS=1, LISTEN_PID)\n");
        return 2;
    }
    const int lfd = 3; /* SD_LISTEN_FDS_START */
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_term);

    char err[512] = "";
    RelRuntime *rt;
    int r = rel_runtime_new(&rt, err, sizeof(err));
    if (r < 0) {
        fprintf(stderr, "chat-host: %s\n", *err ? err : strerror(-r));
        return 1;
    }
    RelModule *chat = rel_runtime_module(rt, "chat_server");
    if (!chat) {
        fprintf(stderr, "chat-host: no chat_server module (RELD_MODULES)\n");
        rel_runtime_free(rt);
        return 1;
    }
    printf("chat-host: serving with chat_server %s\n", rel_module_version(chat));

    Conn **conns = NULL;
    size_t n = 0;
    struct pollfd *pfd = NULL;
    while (!stopping) {
        struct pollfd *grown = realloc(pfd, (2 + n) * sizeof(*pfd));
        if (!grown)
            abort();
        pfd = grown;
        pfd[0] = (struct pollfd){.fd = rel_runtime_fd(rt), .events = POLLIN};
        pfd[1] = (struct pollfd){.fd = lfd, .events = POLLIN};
        for (size_t i = 0; i < n; i++)
            pfd[2 + i] = (struct pollfd){.fd = conns[i]->fd, .events = POLLIN};
        if (poll(pfd, 2 + n, -1) < 0 && errno != EINTR)
            break;
        /* The current code and state, fetched again after every safe point. */
        const ChatServerApi *api = rel_module_api(chat);
        void *state = rel_module_state(chat);
        size_t polled = n;
        for (size_t i = polled; i-- > 0;)
            if (pfd[2 + i].revents && !conn_read(api, state, conns[i])) {
                api->leave(state, conns[i]->fd);
                close(conns[i]->fd);
                free(conns[i]);
                conns[i] = conns[--n]; /* one not polled, or one done */
            }
        if (pfd[1].revents & POLLIN) {
            int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
            Conn **more = fd >= 0 ? realloc(conns, (n + 1) * sizeof(Conn *)) : NULL;
            if (more)
                conns = more;
            Conn *c = more ? calloc(1, sizeof(*c)) : NULL;
            if (c && api->join(state, fd) == 0) {
                c->fd = fd;
                conns[n++] = c;
            } else if (fd >= 0) {
                free(c);
                close(fd);
            }
        }
        /* A safe point: every line read so far is handled. */
        if ((pfd[0].revents & (POLLIN | POLLHUP)) && rel_runtime_dispatch(rt) < 0)
            fprintf(stderr, "chat-host: reld closed the control channel; going on unmanaged\n");
    }
    for (size_t i = 0; i < n; i++) {
        close(conns[i]->fd);
        free(conns[i]);
    }
    free(conns);
    free(pfd);
    rel_runtime_free(rt); /* terminate frees the module's state */
    return 0;
}
