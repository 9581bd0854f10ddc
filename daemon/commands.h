#pragma once
/* commands: the requests relctl sends (docs/daemon.md), in one table with
 * the access right each needs, turned into manager calls whose outcomes
 * become the client's replies.
 *
 * Ownership: borrows the client and the manager; a request (borrowed) is
 * read before commands_handle() returns. */
#include <jansson.h>

#include "client.h"
#include "manager.h"

typedef enum CommandAccess {
    ACCESS_READ,  /* readers and writers */
    ACCESS_WRITE, /* writers: changes releases */
} CommandAccess;

/* Answers req for c, now or once the manager is done. */
void commands_handle(Client *c, json_t *req, Manager *m);
/* c goes away: operations under way for it tell nobody. */
void commands_forget(Client *c, Manager *m);
