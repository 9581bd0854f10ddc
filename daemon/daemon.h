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

void log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
