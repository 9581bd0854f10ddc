/* chat_server: the protocol of the chat example (chat-plain.c's handle()),
 * as a module that reld can replace while clients stay connected
 * (docs/porting.md). Built twice (examples/meson.build):
 *
 *   CHAT_VERSION=1  NICK, SUB, UNSUB, PUB, VERSION
 *   CHAT_VERSION=2  adds a field to the client, `received` (messages
 *                   delivered to it), and STATS, which reports it;
 *                   code_change converts 1 <-> 2 with rel_convert() */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "chat_api.h"
#include "reld-runtime.h"

typedef struct Sub {
    char *topic;
    struct Sub *next;
} Sub;

/* The state of version 1: every client and its subscriptions. */
typedef struct ClientV1 {
    int fd;
    char *nick;
    Sub *subs;
    struct ClientV1 *next;
} ClientV1;
typedef struct ChatV1 {
    ClientV1 *clients;
    long published;
} ChatV1;

/* The layout, described for rel_convert() and rel_free(). */
static const RelType sub_t, client_v1, chat_v1;
static const RelField sub_f[] = {REL_STRING(Sub, topic), REL_NEXT(Sub, next, &sub_t)};
static const RelField client_v1_f[] = {REL_VALUE(ClientV1, fd), REL_STRING(ClientV1, nick),
                                       REL_LIST(ClientV1, subs, &sub_t), REL_NEXT(ClientV1, next, &client_v1)};
static const RelField chat_v1_f[] = {REL_LIST(ChatV1, clients, &client_v1), REL_VALUE(ChatV1, published)};
static const RelType sub_t = REL_TYPE(Sub, sub_f), client_v1 = REL_TYPE(ClientV1, client_v1_f),
                     chat_v1 = REL_TYPE(ChatV1, chat_v1_f);

#if CHAT_VERSION == 1
#define VSN "1"
typedef ClientV1 Client;
typedef ChatV1 Chat;
static const RelType *const chat_t = &chat_v1, *const client_t = &client_v1;
#else
#define VSN "2"
/* Version 2: each client counts the messages delivered to it. */
typedef struct ClientV2 {
    int fd;
    char *nick;
    Sub *subs;
    long received;
    struct ClientV2 *next;
} ClientV2;
typedef struct ChatV2 {
    ClientV2 *clients;
    long published;
} ChatV2;
typedef ClientV2 Client;
typedef ChatV2 Chat;

/* The conversion 1 <-> 2: the new layout described, and code_change. */
static const RelType client_v2, chat_v2;
static const RelField client_v2_f[] = {REL_VALUE(ClientV2, fd), REL_STRING(ClientV2, nick),
                                       REL_LIST(ClientV2, subs, &sub_t), REL_VALUE(ClientV2, received),
                                       REL_NEXT(ClientV2, next, &client_v2)};
static const RelField chat_v2_f[] = {REL_LIST(ChatV2, clients, &client_v2), REL_VALUE(ChatV2, published)};
static const RelType client_v2 = REL_TYPE(ClientV2, client_v2_f), chat_v2 = REL_TYPE(ChatV2, chat_v2_f);
static const RelType *const chat_t = &chat_v2, *const client_t = &client_v2;

static int code_change(RelDirection dir, const char *other, void *state, const char *extra, void **ret, char *err,
                       size_t errlen)
{
    (void)extra;
    if (strcmp(other, "1") != 0) {
        snprintf(err, errlen, "chat_server 2 converts from and to 1 only, not %s", other);
        return -EINVAL;
    }
    const RelType *from = dir == REL_UP ? &chat_v1 : &chat_v2, *to = dir == REL_UP ? &chat_v2 : &chat_v1;
    int r = rel_convert(from, state, to, ret, err, errlen);
    if (r == 0)
        rel_free(from, state);
    return r;
}
#endif

static int init(void **ret)
{
    *ret = calloc(1, sizeof(Chat));
    return *ret ? 0 : -ENOMEM;
}

static void terminate(void *state)
{
    rel_free(chat_t, state);
}

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

static Client *find(Chat *chat, int fd)
{
    Client *c = chat->clients;
    while (c && c->fd != fd)
        c = c->next;
    return c;
}

static Sub **find_sub(Client *c, const char *topic)
{
    Sub **s = &c->subs;
    while (*s && strcmp((*s)->topic, topic) != 0)
        s = &(*s)->next;
    return s;
}

static int join(void *state, int fd)
{
    Chat *chat = state;
    Client *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->fd = fd;
    c->next = chat->clients;
    chat->clients = c;
    return 0;
}

static void leave(void *state, int fd)
{
    Chat *chat = state;
    Client **p = &chat->clients;
    while (*p && (*p)->fd != fd)
        p = &(*p)->next;
    Client *c = *p;
    if (!c)
        return;
    *p = c->next;
    c->next = NULL;
    rel_free(client_t, c); /* with its nick and subscriptions */
}

static void line(void *state, int fd, const char *text, size_t len)
{
    Chat *chat = state;
    Client *c = find(chat, fd);
    char buf[4096], *arg;
    if (!c || len >= sizeof(buf))
        return;
    memcpy(buf, text, len);
    buf[len] = 0;
    if ((arg = strchr(buf, ' ')))
        *arg++ = 0;
    if (strcmp(buf, "NICK") == 0 && arg && *arg) {
        char *nick = strdup(arg);
        if (!nick) {
            say(fd, "ERR out of memory\n");
            return;
        }
        free(c->nick);
        c->nick = nick;
        say(fd, "OK nick %s\n", arg);
    } else if (strcmp(buf, "SUB") == 0 && arg && *arg) {
        Sub **s = find_sub(c, arg);
        if (!*s && (!(*s = calloc(1, sizeof(Sub))) || !((*s)->topic = strdup(arg)))) {
            free(*s);
            *s = NULL;
            say(fd, "ERR out of memory\n");
            return;
        }
        say(fd, "OK sub %s\n", arg);
    } else if (strcmp(buf, "UNSUB") == 0 && arg && *arg) {
        Sub **s = find_sub(c, arg), *gone = *s;
        if (gone) {
            *s = gone->next;
            free(gone->topic);
            free(gone);
        }
        say(fd, "OK unsub %s\n", arg);
    } else if (strcmp(buf, "PUB") == 0 && arg && strchr(arg, ' ')) {
        char *msg = strchr(arg, ' ');
        *msg++ = 0;
        int n = 0;
        for (Client *o = chat->clients; o; o = o->next)
            if (*find_sub(o, arg)) {
                say(o->fd, "MSG %s %s: %s\n", arg, c->nick ? c->nick : "anon", msg);
#if CHAT_VERSION >= 2
                o->received++;
#endif
                n++;
            }
        chat->published++;
        say(fd, "OK delivered %d\n", n);
    } else if (strcmp(buf, "VERSION") == 0) {
        say(fd, "OK chat_server " VSN "\n");
#if CHAT_VERSION >= 2
    } else if (strcmp(buf, "STATS") == 0) {
        say(fd, "OK received %ld published %ld\n", c->received, chat->published);
#endif
    } else {
        say(fd, "ERR unknown command %s\n", buf);
    }
}

/* Healthy while the module's clients are the host's: a client whose fd
 * is closed means the host lost a leave(). */
static int health(void *state, char *msg, size_t msglen)
{
    for (Client *c = ((Chat *)state)->clients; c; c = c->next)
        if (fcntl(c->fd, F_GETFD) < 0) {
            snprintf(msg, msglen, "client %s has fd %d, which is closed", c->nick ? c->nick : "anon", c->fd);
            return -EBADF;
        }
    return 0;
}

/* The state's invariants, checked on a converted copy in a rehearsal. */
static int verify(void *state, char *err, size_t errlen)
{
    Chat *chat = state;
    for (Client *c = chat ? chat->clients : NULL; c; c = c->next) {
        if (c->fd < 0 || find(chat, c->fd) != c) {
            snprintf(err, errlen, "client fd %d is negative or listed twice", c->fd);
            return -EUCLEAN;
        }
        for (Sub *s = c->subs; s; s = s->next)
            if (!s->topic || !*s->topic) {
                snprintf(err, errlen, "client fd %d has a subscription without a topic", c->fd);
                return -EUCLEAN;
            }
    }
    if (!chat || chat->published < 0) {
        snprintf(err, errlen, "no state, or a negative count of messages");
        return -EUCLEAN;
    }
    return 0;
}

static const ChatServerApi api = {.join = join, .leave = leave, .line = line};

#if CHAT_VERSION == 1
RELD_MODULE_DEFINE(.name = "chat_server", .version = VSN, .init = init, .terminate = terminate, .api = &api,
                   .state_version = 1, .health = health, .verify = verify);
#else
RELD_MODULE_DEFINE(.name = "chat_server", .version = VSN, .init = init, .code_change = code_change,
                   .terminate = terminate, .api = &api, .state_version = 2, .health = health, .verify = verify);
#endif
