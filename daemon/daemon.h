#pragma once
/* daemon: reld itself. One process, one sd-event loop, a control socket.
 *
 * Ownership: the Daemon owns its event loop, socket, clients, history
 * database and worker jobs; daemon_free() releases all of it. Everything
 * runs on the main thread except the extraction of a tarball (a worker
 * thread per unpack, which touches only its own staging directory; its
 * result is committed by the main thread).
 *
 * The control protocol between relctl and reld (docs/daemon.md):
 * newline-delimited JSON, one request {"cmd": ...} and one reply
 * {"ok": true, ...} | {"ok": false, "error": "one line"} per connection;
 * unpack sends the tarball's file descriptor with the request (SCM_RIGHTS).
 *
 * Errors: 0 or a negative errno; messages go to the log (stderr, which
 * systemd's journal takes). */
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct Daemon Daemon;

typedef struct DaemonConfig {
    char *root;            /* default /var/lib/reld */
    char *socket_path;     /* default /run/reld/reld.sock */
    char *writer_group;    /* members may change releases; NULL: only root and reld's own user */
    char *reader_group;    /* members may read; NULL: see readers_all */
    bool readers_all;      /* anyone who can reach the socket may read */
    uint64_t max_unpacked; /* bytes, default 1 GiB */
} DaemonConfig;

/* Reads a config file (YAML, docs/daemon.md) into c; keys it lacks keep
 * their values. Returns 0, or -EINVAL with one line per problem in *err. */
int daemon_config_load(DaemonConfig *c, const char *path, char **err);
void daemon_config_clear(DaemonConfig *c);

int daemon_new(const DaemonConfig *c, Daemon **ret);
/* Runs until SIGTERM/SIGINT; returns the exit status. */
int daemon_run(Daemon *d);
Daemon *daemon_free(Daemon *d);

/* CLOCK_MONOTONIC, for timeouts and durations. */
long long mono_us(void);
static inline long long mono_ms(void)
{
    return mono_us() / 1000;
}

void log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- supervision (supervisor.c) -------------------------------------------
 *
 * The processes of the running release. Applications start in dependency
 * order, each application's processes in declared order, with the
 * environment of docs/runtime.md: RELD_CONTROL_FD (reld keeps the other
 * end), RELD_MODULES, RELD_PROCESS, and the listening sockets the process
 * declares, opened once by reld and passed systemd-style (LISTEN_FDS,
 * LISTEN_PID, LISTEN_FDNAMES), so they stay open across its restarts and
 * no connection is refused. stdout and stderr lines go to reld's log as
 * "app/process[pid]: line". Restarts follow `restart` (permanent,
 * transient, temporary) under a restart intensity per application (at most
 * SUPERVISOR_MAX_RESTARTS in SUPERVISOR_PERIOD_MS; beyond it the
 * application is stopped, logged and recorded). Stops go in reverse order:
 * SIGTERM, shutdown_ms, SIGKILL. Starts, exits and restarts are recorded in
 * the history. */
#include <jansson.h>
#include <systemd/sd-event.h>

#include "appdefs.h"
#include "history.h"

#define SUPERVISOR_MAX_RESTARTS 5
#define SUPERVISOR_PERIOD_MS    10000

typedef struct Supervisor Supervisor;

int supervisor_new(sd_event *ev, History *hist, const char *root, Supervisor **ret);
/* Stops every process (blocking, at most the sum of their shutdown_ms) and
 * frees s; keeps the listening sockets closed afterwards. */
Supervisor *supervisor_free(Supervisor *s);
/* Starts every process of rel (version vsn), which must be valid. On a
 * failure to start, stops what it started and returns -errno with a
 * reason in diag. */
int supervisor_start_release(Supervisor *s, const ReleaseDef *rel, Diag *diag);
bool supervisor_running(const Supervisor *s);
/* Executing script, a relup from the running release `from` to `to`,
 * against the processes (docs/daemon.md), each instruction recorded under
 * attempt. Stepwise, so that reld serves other requests meanwhile:
 * supervisor_exec_step() runs one instruction, or a whole suspend..resume
 * group (a paused process waits for nothing else), and returns 1 while
 * instructions remain (call it again), SUPERVISOR_EXEC_WAITING while
 * processes are to answer (wake(userdata) is called, from the event loop,
 * when the step can go on: call it again then), 0 when done (every
 * application then runs its `to` version; to must outlive the processes),
 * or -errno on failure, after the recovery: before the point of no return
 * the new code is dropped; after it, the inverse runs, or the changed
 * applications are restarted on `from`. What happened is in diag (errors,
 * and a warning naming the recovery). from, to and script must outlive the
 * Execution. */
struct RelupScript;
typedef struct Execution Execution;
#define SUPERVISOR_EXEC_WAITING 2
int supervisor_exec_begin(Supervisor *s, const ReleaseDef *from, const ReleaseDef *to, const struct RelupScript *script,
                          int64_t attempt, void (*wake)(void *userdata), void *userdata, Execution **ret);
int supervisor_exec_step(Execution *e, Diag *diag);
size_t supervisor_exec_position(const Execution *e, size_t *ret_n); /* instructions done, of *ret_n */
/* Test hook RELD_TEST_DELAY_BEFORE=k:ms: once, before instruction k, how
 * long to wait (on the event loop) before the next step; else 0. */
long supervisor_exec_delay_ms(Execution *e);
Execution *supervisor_exec_free(Execution *e);
/* [{app, vsn, process, pid, state, restarts, modules}] */
json_t *supervisor_status(const Supervisor *s);
