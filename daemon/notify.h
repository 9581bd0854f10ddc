#pragma once
/* notify: the $NOTIFY_SOCKET of one run of a process that says `ready:
 * notify` (docs/formats.md "Replacing a process"), as systemd's
 * Type=notify: the process sends "READY=1" (sd_notify(3)) once it serves.
 *
 * One datagram socket per run, in the abstract namespace under a name
 * the kernel picks (autobind: "@" and five hex digits, a name nobody
 * holds: no other user can take it first, as it could a name reld chose
 * after a pattern), with SO_PASSCRED: a message counts only when the
 * kernel says it comes from the expected pid (systemd's
 * NotifyAccess=main); any other sender is ignored, so a
 * process of another run, or of another user, cannot say a run is ready.
 * Messages are read from the event loop, at most NOTIFY_MESSAGE_MAX bytes
 * each; only READY=1 is understood, other assignments are ignored.
 *
 * Ownership: the caller owns the Notify; notify_free() closes its socket
 * (a process that sends later gets ECONNREFUSED, which sd_notify ignores).
 *
 * Errors: 0 or a negative errno. */
#include <stdbool.h>
#include <sys/types.h>
#include <systemd/sd-event.h>

#define NOTIFY_MESSAGE_MAX 4096

typedef struct Notify Notify;

/* READY=1 came from the expected pid (once: later ones are ignored). */
typedef void (*NotifyReady)(Notify *n, void *userdata);

/* A socket for the next run, not yet expecting anyone; ready is called
 * from the loop. */
int notify_new(sd_event *ev, NotifyReady ready, void *userdata, Notify **ret);
Notify *notify_free(Notify *n);
/* The value of NOTIFY_SOCKET ("@" and the abstract name). */
const char *notify_address(const Notify *n);
/* Messages count from pid only (the run, once started). */
void notify_expect(Notify *n, pid_t pid);
/* Has the expected pid said READY=1? */
bool notify_ready(const Notify *n);
