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
 * Ownership: the server owns the socket and its clients; it borrows the
 * loop and the manager. server_free() unlinks the socket file.
 *
 * Errors: 0 or a negative errno, logged. */
#include <systemd/sd-event.h>

#include "config.h"
#include "manager.h"

typedef struct Server Server;

int server_new(sd_event *ev, Manager *m, const DaemonConfig *cfg, Server **ret);
/* Takes the rights of cfg (groups, readers) for new connections, and the
 * socket's mode and group from them; cfg's socket path is not changed. */
int server_set_rights(Server *s, const DaemonConfig *cfg);
Server *server_free(Server *s);
