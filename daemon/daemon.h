#pragma once
/* daemon: reld as a whole, as systemd runs it: the event loop, the
 * manager (the release root) and the server (the control socket), and
 * the signals of a service: SIGTERM and SIGINT stop it (processes stopped
 * first, STOPPING=1), SIGHUP re-reads the configuration file (the rights
 * of new connections, the socket's mode and group, the max_unpacked_* limits; a
 * changed root or socket needs a restart and is refused with a log line;
 * a wrong file is logged and the old configuration stays). READY=1 once
 * it listens, WATCHDOG=1 at half of WatchdogSec= (sd-event), from a loop
 * that never blocks.
 *
 * Ownership: the Daemon owns everything it runs.
 *
 * Errors: 0 or a negative errno; messages go to the log. */
#include <jansson.h>

#include "config.h"

typedef struct Daemon Daemon;

/* config_path: the file to re-read at SIGHUP (NULL: none); cfg already
 * holds its values and the command line's. */
int daemon_new(const DaemonConfig *cfg, const char *config_path, Daemon **ret);
/* The same after a re-exec (reexec.h), with the state handed over
 * (borrowed; NULL: a plain start): the control socket and the processes
 * are taken over, and once ready (RELOADING=1 was sent before the exec;
 * READY=1 and MAINPID now) the relctl that asked is answered with {"ok":
 * true, "pid", "reexec_ms": from its request to ready}. relctl
 * daemon-reexec reaches do_reexec() through manager_set_reexec(). */
int daemon_new_from(const DaemonConfig *cfg, const char *config_path, const json_t *state, Daemon **ret);
/* Runs until SIGTERM/SIGINT and every process stopped; the exit status. */
int daemon_run(Daemon *d);
Daemon *daemon_free(Daemon *d);
