#pragma once
/* client: one connection to reld's control socket (docs/daemon.md): one
 * request line, optionally with file descriptors (SCM_RIGHTS), then
 * progress lines and one reply, written as the socket takes them; then
 * the connection closes. Reads and writes never block reld.
 *
 * Ownership: the server creates clients; a client frees itself once its
 * reply is written or its peer went away, and then calls gone() so that
 * whoever still works for it forgets it.
 *
 * Errors: 0 or a negative errno. */
#include <jansson.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <systemd/sd-event.h>

#include "util.h"

typedef struct Client Client;

typedef struct ClientHandlers {
    /* A complete request (borrowed). */
    void (*request)(Client *c, json_t *req, void *userdata);
    /* The client is about to be freed. */
    void (*gone)(Client *c, void *userdata);
    void *userdata;
} ClientHandlers;

/* Takes fd (a connected, non-blocking socket). writer/reader: the rights
 * of its peer (server.c decides them); who: "user (uid N, pid N)". */
int client_new(sd_event *ev, int fd, const struct ucred *cred, bool writer, bool reader, const ClientHandlers *h,
               Client **ret);
/* Frees c now (reld stops): gone() is called. */
void client_free(Client *c);

const char *client_who(const Client *c);
bool client_may_write(const Client *c);
bool client_may_read(const Client *c);
/* The file descriptors that came with the request, taken (-1 when none). */
int client_take_fd(Client *c);
size_t client_n_fds(const Client *c);

/* A line before the reply (takes msg). */
void client_send(Client *c, json_t *msg);
/* The reply (takes fields, may be NULL): {"ok": true, ...}. */
void client_reply_ok(Client *c, json_t *fields);
void client_reply_error(Client *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* {"ok": false, "error": the first error (or fallback), "errors", "warnings"}. */
void client_reply_diag(Client *c, const Diag *diag, const char *fallback);
