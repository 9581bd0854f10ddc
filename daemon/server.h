#pragma once
/* server: reld's control socket. It listens, reads each peer's credentials
 * (SO_PEERCRED, SO_PEERGROUPS) and decides its rights: writers are root,
 * reld's own user and members of writer_group; readers are writers,
 * members of reader_group, or everyone with `readers: all`. Then the
 * connection is a client (client.h) whose request commands.c answers.
 *
 * The socket's mode follows who may read: 0660 (group writer_group when
 * set) when only writers may; 0666 when readers are a group or everyone,
 * so that they can connect and reld's own check decides (a refusal is a
 * one-line reply, not a connect() error).
 *
 * Connections: at most SERVER_MAX_CLIENTS at once (server_set_limits());
 * at the cap, and when accept() finds no file descriptor left (EMFILE,
 * ENFILE, ENOBUFS, ENOMEM), the server stops watching its socket, so new
 * connections wait in the kernel's backlog and the loop does not spin; it
 * watches again when a connection closes (after a shortage of
 * descriptors, also after SERVER_RETRY_USEC). A connection that has not
 * sent its complete request within the idle timeout, or does not read its
 * reply, is closed (client.h).
 *
 * Ownership: the server owns the socket and its clients; it borrows the
 * loop and the manager. server_free() unlinks the socket file.
 *
 * Errors: 0 or a negative errno, logged. */
#include <stdint.h>
#include <systemd/sd-event.h>

#include "client.h"
#include "config.h"
#include "manager.h"

typedef struct Server Server;

#define SERVER_MAX_CLIENTS       256
#define SERVER_IDLE_TIMEOUT_USEC (30ULL * 1000 * 1000)
#define SERVER_RETRY_USEC        (1000ULL * 1000) /* after EMFILE and the like */

int server_new(sd_event *ev, Manager *m, const DaemonConfig *cfg, Server **ret);
/* Takes the rights of cfg (groups, readers) for new connections, and the
 * socket's mode and group from them; cfg's socket path is not changed. */
int server_set_rights(Server *s, const DaemonConfig *cfg);
/* The cap on connections (0: SERVER_MAX_CLIENTS) and the idle timeout of
 * new connections (0: none); reld uses the defaults, the tests shorter
 * ones. Lowering the cap below the connections open closes none: new
 * ones wait until enough have closed. */
void server_set_limits(Server *s, unsigned max_clients, uint64_t idle_timeout_usec);
Server *server_free(Server *s);
/* Re-exec (reexec.h): server_new() on the listening socket a reld before
 * this exec held (inherited, taken; -1: none), when it is bound to cfg's
 * path, else on a new one. */
int server_new_from(sd_event *ev, Manager *m, const DaemonConfig *cfg, int inherited, Server **ret);
/* The listening socket (borrowed). */
int server_fd(const Server *s);
/* The connection of client c (borrowed), or -1. */
int server_client_fd(const Server *s, const Client *c);
