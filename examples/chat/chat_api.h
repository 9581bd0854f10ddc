#pragma once
/* The api of the module chat_server (chat_server.c), as its host
 * chat-host.c calls it. The host owns the sockets and reads lines; the
 * module owns what the protocol remembers (clients, nicks, subscriptions)
 * and writes its replies and messages to the clients' fds itself. */
#include <stddef.h>

typedef struct ChatServerApi {
    /* A client connected on fd. 0 or -ENOMEM (the host then closes fd). */
    int (*join)(void *state, int fd);
    /* The client on fd is gone; the host closes fd after. */
    void (*leave)(void *state, int fd);
    /* One line the client on fd sent, without its newline. */
    void (*line)(void *state, int fd, const char *line, size_t len);
} ChatServerApi;
