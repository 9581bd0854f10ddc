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
 * Every connection is answered: text that goes into a reply (an error, a
 * diagnostic line) is made valid UTF-8 here, each byte that is not part of
 * a valid UTF-8 character written as the four characters \xNN; a reply
 * that cannot be encoded all the same is replaced by a fixed refusal.
 *
 * Idle connections: a peer that has not sent its complete request within
 * the timeout given to client_new(), or that has not read its reply within
 * it (counted from the last byte it took), is closed (the first with a
 * one-line refusal, when the socket takes it). Waiting for a long
 * operation (an unpack, an upgrade) is not idle.
 *
 * Errors: 0 or a negative errno. */
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
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

/* Takes fd (a connected, non-blocking socket), also on failure.
 * writer/reader: the rights of its peer (server.c decides them); who:
 * "user (uid N, pid N)". timeout_usec: the idle timeout (0: none). */
int client_new(sd_event *ev, int fd, const struct ucred *cred, bool writer, bool reader, uint64_t timeout_usec,
               const ClientHandlers *h, Client **ret);
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
/* The same, with diag's warnings (each made valid UTF-8), if any, as "warnings". */
void client_reply_ok_warned(Client *c, json_t *fields, const Diag *diag);
/* {"ok": false, "error": the formatted text, made valid UTF-8}. */
void client_reply_error(Client *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* {"ok": false, "error": the first error (or fallback), "errors", "warnings"},
 * each line made valid UTF-8. */
void client_reply_diag(Client *c, const Diag *diag, const char *fallback);
/* The same, with extra's fields (borrowed; those not already there). */
void client_reply_diag_with(Client *c, const Diag *diag, const char *fallback, const json_t *extra);
