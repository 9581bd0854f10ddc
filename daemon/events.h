#pragma once
/* events: what an operator looks for after the fact (docs/daemon.md
 * "Events"): unpacks, the start, steps and end of every install, upgrade
 * and downgrade, automatic rollbacks, outcomes that need an operator, and
 * release state changes, each with a fixed MESSAGE_ID and the fields
 * RELEASE (name), VERSION, ATTEMPT_ID (the history's attempt), OUTCOME,
 * so that `journalctl MESSAGE_ID=...` finds every one of a kind.
 *
 * Where they go: when reld's stderr is the journal (log.h), to the journal
 * through sd_journal_send() with their fields; anywhere else, or when the
 * journal refuses one, as a log line (log.h) that ends with the same
 * fields: "message [event=rolled_back RELEASE=kv VERSION=2 ...]".
 *
 * sd_notify STATUS=: events_status() says what reld does now (an upgrade's
 * instruction k of n), for `systemctl status reld`.
 *
 * One listener (events_listen()) hears of every event: the manager writes
 * the metrics soon after one (metrics.h).
 *
 * Thread-safe but for the listener, which is called on the thread that
 * emits (reld emits on its loop's); nothing fails (a message that cannot be
 * written has nowhere to say so). */
#include <stdint.h>

typedef enum EventKind {
    EVENT_UNPACKED,         /* a release tarball was unpacked */
    EVENT_CHANGE_STARTED,   /* an install, upgrade or downgrade began */
    EVENT_CHANGE_STEP,      /* one instruction of it done (k of n) */
    EVENT_CHANGE_DONE,      /* it ended well: current, committed or unchanged */
    EVENT_CHANGE_REFUSED,   /* it changed nothing: refused or failed before anything ran */
    EVENT_ROLLBACK_STARTED, /* the new release was not healthy: reld goes back by itself */
    EVENT_ROLLED_BACK,      /* it ended rolled back: the release before runs, healthy */
    EVENT_NEEDS_OPERATOR,   /* it ended with the way back failed or unhealthy */
    EVENT_STATE,            /* a release changed state (current, permanent, removed) */
    EVENT_PROCESS_EXITED,   /* a process ended without being stopped (its supervisor restarts it, or not) */
    EVENT_RESTART_LIMIT,    /* an application restarted too often: stopped */
    _EVENT_MAX,
} EventKind;

typedef struct EventFields {
    const char *release; /* the release's name, or NULL */
    const char *version; /* its version, or NULL */
    int64_t attempt_id;  /* the history's attempt, or 0 */
    const char *outcome; /* manager.h's outcome words, or a state; or NULL */
    const char *process; /* "app/process" (PROCESS=), or NULL */
} EventFields;

/* The MESSAGE_ID of kind (32 hex digits) and its word ("rolled_back"). */
const char *events_message_id(EventKind kind);
const char *events_name(EventKind kind);
/* Sends one event: priority as syslog's, the message formatted. */
void events_emit(EventKind kind, int priority, const EventFields *f, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* fn(kind, userdata) before each event is sent, from now on, instead of
 * the listener before; fn NULL: userdata stops listening (when it is the
 * one listening). */
void events_listen(void (*fn)(EventKind kind, void *userdata), void *userdata);
/* sd_notify STATUS= (no systemd: nobody to tell). */
void events_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
