#pragma once
/* health: whether processes work, as their health checks tell (app.yaml,
 * HealthCheck in appdefs.h, docs/formats.md "Health checks"), and the gate
 * that waits for a set of processes (a release) to be healthy.
 *
 * A HealthProbe follows one process. Its owner tells it when the process
 * starts and exits (health_probe_started(), health_probe_exited()); while
 * the process runs, the probe runs each check on the event loop: first at
 * once, then interval_ms after the end of each run. Nothing blocks:
 *
 *  - exec: run as the process it checks runs (its user, groups and
 *    capability bounding set: proc_identity()), in the application's
 *    directory, in a process group of its own, stdin /dev/null, stdout and stderr into a pipe of which the
 *    last HEALTH_OUTPUT_MAX bytes are kept; its exit comes through an
 *    sd_event child source; at timeout_ms its group is SIGKILLed;
 *  - tcp: a non-blocking connect;
 *  - http: a non-blocking connect, "GET path HTTP/1.1" with "Connection:
 *    close", and the status line of the answer (at most HEALTH_ANSWER_MAX
 *    bytes are read);
 *  - runtime: ops->runtime_ask(), whose answer comes back later through
 *    health_probe_runtime_reply() or health_probe_runtime_answer().
 *
 * Each run ends healthy or not with a short reason, such as
 * "http://127.0.0.1:8080/health: status 503", "exec bin/check: exit 1:
 * <last line of its output>", "tcp 127.0.0.1:8080: connection refused",
 * "runtime: timed out after 2000 ms".
 *
 * The probe's state: down (not running), starting (running; some check has
 * no result yet), healthy (running; every check passed at its last run, or
 * there are none), unhealthy (running; a check failed at its last run).
 * A start forgets the results of the run before.
 *
 * A HealthGate watches probes and gives one verdict, once: healthy when
 * every member runs and every check of every member has passed
 * continuously for min_healthy_ms (counted from the gate's creation at the
 * earliest, and from the member's start: a restart begins the window
 * again; only runs started after the gate was created count); not healthy
 * when timeout_ms pass without that, or at once when a member exits for
 * good (health_probe_exited() with final). A member without checks counts
 * healthy while it runs. The verdict comes from the event loop, never from
 * within a call of the owner's; the gate may be freed in it.
 *
 * Ownership: a probe borrows its ProcessDef (which must outlive it or be
 * replaced with health_probe_set_definition()) and owns everything else,
 * its check processes and sockets too: health_probe_free() and
 * health_probe_exited() kill what runs (SIGKILL to the check's process
 * group, then reap it: immediate, SIGKILL cannot be refused). A gate
 * borrows its member probes; a probe freed while a gate watches it leaves
 * that gate (it no longer counts). Free gates and probes in any order.
 *
 * Errors: 0 or a negative errno. */
#include <jansson.h>
#include <stdbool.h>
#include <sys/types.h>
#include <systemd/sd-event.h>

#include "appdefs.h"

#define HEALTH_OUTPUT_MAX 4096 /* bytes of an exec check's output kept: its last ones */
#define HEALTH_ANSWER_MAX 1024 /* bytes of an HTTP answer read to find its status line */
#define HEALTH_REASON_MAX 400  /* bytes of a reason, at most */

typedef enum HealthState {
    HEALTH_DOWN,
    HEALTH_STARTING,
    HEALTH_HEALTHY,
    HEALTH_UNHEALTHY,
    _HEALTH_STATE_MAX,
} HealthState;
const char *health_state_name(HealthState s); /* "down" | "starting" | "healthy" | "unhealthy" */

typedef struct HealthProbe HealthProbe;
typedef struct HealthGate HealthGate;

/* What a probe needs from its owner; every member may be NULL. */
typedef struct HealthProbeOps {
    /* A runtime check asks the process (the owner sends the runtime's
     * "health" command, e.g. with proc_call(), and hands the reply to
     * health_probe_runtime_reply()). 0 when asked; -EBUSY when the process
     * cannot be asked now (another call is out): the run is skipped with no
     * result and tried again interval_ms later; any other -errno is a failed
     * run. NULL: a runtime check fails ("runtime: no way to ask the
     * process"). */
    int (*runtime_ask)(HealthProbe *p, void *userdata);
    /* The probe no longer waits for the answer it asked for (timeout, exit,
     * free): forget the call (proc_cancel_call()). An answer that comes all
     * the same is ignored. */
    void (*runtime_cancel)(HealthProbe *p, void *userdata);
    /* A check's result changed the probe's state (from old to
     * health_probe_state(p)). Not called for the owner's own
     * health_probe_started() and health_probe_exited(). */
    void (*changed)(HealthProbe *p, HealthState old, void *userdata);
} HealthProbeOps;

/* A probe for process label ("app/process") of definition def, whose
 * checks run in dir (the application's directory, absolute), down until
 * health_probe_started(). ops is copied. */
int health_probe_new(sd_event *ev, const char *label, const ProcessDef *def, const char *dir, const HealthProbeOps *ops,
                     void *userdata, HealthProbe **ret);
/* Stops what runs (see Ownership), leaves its gates, frees. */
HealthProbe *health_probe_free(HealthProbe *p);

/* The process runs (pid), from now: results are forgotten and every check
 * runs at once (from the loop). Called again while running: a restart. */
void health_probe_started(HealthProbe *p, pid_t pid);
/* The process is gone: runs out are stopped, the state is down. why says
 * how it ended ("exit 127", "killed by signal 9: ..."; copied; NULL for
 * none); final when it will not be started again (its restart intensity
 * is spent, or it is temporary): a gate that watches it fails at once. */
void health_probe_exited(HealthProbe *p, const char *why, bool final);
/* New checks (a switch-over to another release), for the next start; a
 * running process keeps running: its checks start again at once. */
void health_probe_set_definition(HealthProbe *p, const ProcessDef *def, const char *dir);

/* Re-exec (reexec.h): the probe's state and last results as JSON, and
 * the same given back to a new probe of the same definition for the
 * process pid (0: not running); its checks then run at once. */
json_t *health_probe_save(const HealthProbe *p);
void health_probe_restore(HealthProbe *p, const json_t *saved, pid_t pid);

/* The answer to runtime_ask: the reply of the runtime's health command
 * as proc_call() hands it (r == 0 and {"ok":true,"healthy":bool,
 * "message":str}, or {"ok":false,"message":...}; or r < 0: -ETIMEDOUT,
 * -ECONNRESET). Ignored when the probe is not waiting for one. */
void health_probe_runtime_reply(HealthProbe *p, const json_t *reply, int r);
/* The same, already decoded: r < 0 is "no answer" (strerror(-r)). message
 * may be NULL. */
void health_probe_runtime_answer(HealthProbe *p, int r, bool healthy, const char *message);

/* Runs every check that is not running now at once (from the loop), instead
 * of at its next interval. */
void health_probe_check_now(HealthProbe *p);

const char *health_probe_label(const HealthProbe *p);
HealthState health_probe_state(const HealthProbe *p);
/* Why it is unhealthy (the failed check's reason) or down (how it ended),
 * or NULL. Borrowed until the next change. */
const char *health_probe_reason(const HealthProbe *p);
/* For `relctl status`: {"state", "since" (ISO 8601 UTC), "reason"?,
 * "restarts" (starts after the first), "checks": [{"check", "result"
 * ("pass" | "fail" | "none"), "reason"?, "at"?, "output"? (exec: its last
 * lines)}]}. New reference. */
json_t *health_probe_status(const HealthProbe *p);

/* The verdict: healthy, or not with a reason naming each process that was
 * not healthy and why ("web/web: http://127.0.0.1:8080/health: status 503";
 * "web/web: not running (restarted 6 times; last exit: exit 127)").
 * reason is borrowed for the call; "" when healthy. */
typedef void (*HealthGateDone)(HealthGate *g, bool healthy, const char *reason, void *userdata);

/* A gate over members[0..n) (borrowed; n may be 0), min_healthy_ms >= 0,
 * timeout_ms > 0 (else -EINVAL). Asks every member to run its checks now
 * (health_probe_check_now()). done is called once, from the loop. */
int health_gate_new(sd_event *ev, HealthProbe *const *members, size_t n, long min_healthy_ms, long timeout_ms,
                    HealthGateDone done, void *userdata, HealthGate **ret);
/* No verdict comes after this. */
HealthGate *health_gate_free(HealthGate *g);
/* Has the verdict been given (or is it on its way)? */
bool health_gate_decided(const HealthGate *g);
/* For `relctl status` while it waits: {"healthy": members healthy long
 * enough now, "of": members, "remaining_ms": until the timeout}. */
json_t *health_gate_status(const HealthGate *g);
