/* chat-plain: a small line-based publish/subscribe chat server, as it was
 * before it was made hot-upgradable. docs/porting.md ports it to reld step
 * by step; chat-host.c and chat_server.c are the result.
 *
 * Usage: chat-plain PORT
 *
 * One command a line: NICK name, SUB topic, UNSUB topic, PUB topic text
 * (every subscriber of topic gets "MSG topic nick: text"), VERSION. A
 * subscriber that does not read loses messages rather than stall the
 * server (MSG_DONTWAIT). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* accept4; the tree's meson.build defines it for every file */
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct Sub {
    char *topic;
    struct Sub *next;
} Sub;

typedef struct Client {
    int fd;
    char *nick;
    Sub *subs;
    char in[4096];
    size_t in_len;
    struct Client *next;
} Client;

static Client *clients;
static size_t n_clients;
static long published;

static void say(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(int fd, const char *fmt, ...)
{
    char buf[4200];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (n > 0)
        (void)send(fd, buf, (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1, MSG_DONTWAIT | MSG_NOSIGNAL);
}

static Sub **find_sub(Client *c, const char *topic)
{
    Sub **s = &c->subs;
    while (*s && strcmp((*s)->topic, topic) != 0)
        s = &(*s)->next;
    return s;
}

static void handle(Client *c, char *line)
{
    char *arg = strchr(line, ' ');
    if (arg)
        *arg++ = 0;
    if (strcmp(line, "NICK") == 0 && arg && *arg) {
        free(c->nick);
        c->nick = strdup(arg);
        say(c->fd, "OK nick %s\n", arg);
    } else if (strcmp(line, "SUB") == 0 && arg && *arg) {
        Sub **s = find_sub(c, arg);
        if (!*s && (*s = calloc(1, sizeof(Sub))))
            (*s)->topic = strdup(arg);
        say(c->fd, "OK sub %s\n", arg);
    } else if (strcmp(line, "UNSUB") == 0 && arg && *arg) {
        Sub **s = find_sub(c, arg), *gone = *s;
        if (gone) {
            *s = gone->next;
            free(gone->topic);
            free(gone);
        }
        say(c->fd, "OK unsub %s\n", arg);
    } else if (strcmp(line, "PUB") == 0 && arg && strchr(arg, ' ')) {
        char *text = strchr(arg, ' ');
        *text++ = 0;
        int n = 0;
        for (Client *o = clients; o; o = o->next)
            if (*find_sub(o, arg)) {
                say(o->fd, "MSG %s %s: %s\n", arg, c->nick ? c->nick : "anon", text);
                n++;
            }
        published++;
        say(c->fd, "OK delivered %d\n", n);
    } else if (strcmp(line, "VERSION") == 0) {
        say(c->fd, "OK chat-plain, %zu clients, %ld published\n", n_clients, published);
    } else {
        say(c->fd, "ERR unknown command %s\n", line);
    }
}

static void drop(Client *c)
{
    Client **p = &clients;
    while (*p != c)
        p = &(*p)->next;
    *p = c->next;
    close(c->fd);
    while (c->subs) {
        Sub *s = c->subs;
        c->subs = s->next;
        free(s->topic);
        free(s);
    }
    free(c->nick);
    free(c);
    n_clients--;
}

/* Reads what c sent and handles each complete line; false: it is gone. */
static bool client_read(Client *c)
{
    ssize_t n = read(c->fd, c->in + c->in_len, sizeof(c->in) - c->in_len);
    if (n <= 0)
        return n < 0 && errno == EINTR;
    c->in_len += (size_t)n;
    char *start = c->in, *nl;
    while ((nl = memchr(start, '\n', c->in_len - (size_t)(start - c->in)))) {
        *nl = 0;
        if (nl > start && nl[-1] == '\r')
            nl[-1] = 0;
        handle(c, start);
        start = nl + 1;
    }
    c->in_len -= (size_t)(start - c->in);
    memmove(c->in, start, c->in_len);
    return c->in_len < sizeof(c->in); /* a line longer than the buffer: gone */
}

int main(int argc, char **argv)
{
    char *end;
    long port = argc == 2 ? strtol(argv[1], &end, 10) : 0;
    if (argc != 2 || *end || port < 1 || port > 65535) {
        fprintf(stderr, "usage: chat-plain PORT (1 to 65535)\n");
        return 2;
    }
    struct sockaddr_in a = {
        .sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int one = 1, lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        bind(lfd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(lfd, 64) < 0) {
        fprintf(stderr, "chat-plain: cannot listen on 127.0.0.1:%s: %s\n", argv[1], strerror(errno));
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    printf("chat-plain: listening on 127.0.0.1:%s\n", argv[1]);
    struct pollfd *pfd = NULL;
    for (;;) {
        struct pollfd *grown = realloc(pfd, (1 + n_clients) * sizeof(*pfd));
        if (!grown)
            abort();
        pfd = grown;
        size_t n = 0;
        pfd[n++] = (struct pollfd){.fd = lfd, .events = POLLIN};
        for (Client *c = clients; c; c = c->next)
            pfd[n++] = (struct pollfd){.fd = c->fd, .events = POLLIN};
        if (poll(pfd, n, -1) < 0 && errno != EINTR)
            return 1;
        /* The clients in the order polled: an accepted one goes in front. */
        Client *c = clients, *next;
        for (size_t i = 1; i < n; i++, c = next) {
            next = c->next;
            if (pfd[i].revents && !client_read(c))
                drop(c);
        }
        if (pfd[0].revents & POLLIN) {
            int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
            Client *nc = fd >= 0 ? calloc(1, sizeof(*nc)) : NULL;
            if (nc) {
                nc->fd = fd;
                nc->next = clients;
                clients = nc;
                n_clients++;
            } else if (fd >= 0) {
                close(fd);
            }
        }
    }
}
