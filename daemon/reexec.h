#pragma once
/* reexec: reld executes its binary again in place (`relctl daemon-reexec`,
 * a package upgrade), as systemd's daemon-reexec does: the same pid, so
 * the processes it supervises stay its children; the descriptors that
 * must survive (the control socket, the root's lock, each process's
 * control channel, listening sockets and output pipes, the connection of
 * the relctl that asked) are inherited, O_CLOEXEC cleared on exactly
 * those; the rest of its state goes as JSON in a sealed memfd whose number
 * the new reld reads from --reexec-state=FD.
 *
 * The state: {"version": REEXEC_STATE_VERSION, "fds": [every descriptor
 * it names], "server_fd", "reply_fd", "requested_us" (mono_us() of the
 * request: the same clock in both), "manager": manager_save()}. Each component saves and
 * restores its own part (manager.h, supervisor.h, proc.h, health.h).
 *
 * A state that cannot be read (not a memfd, not JSON, another version, a
 * descriptor it names that is not open) is not trusted at all: the new
 * reld logs one line, SIGKILLs every child it has (it cannot speak to a
 * process whose control channel it does not know) and starts as after a
 * crash of reld, booting the permanent release (docs/daemon.md).
 *
 * Ownership: the module keeps the binary's path and the command line from
 * reexec_init(); everything else belongs to the caller.
 *
 * Errors: 0 or a negative errno, with one line in diag. */
#include <jansson.h>
#include <stdbool.h>
#include <sys/types.h>

#include "util.h"

#define REEXEC_STATE_VERSION 1
#define REEXEC_STATE_OPTION  "--reexec-state="

/* First thing in main: the binary's path now (a package upgrade replaces
 * the file later: /proc/self/exe would name the deleted one) and the
 * command line without any --reexec-state=. */
void reexec_init(int argc, char **argv);
/* Can the binary be executed now? 0, or -errno with one line in diag. */
int reexec_check(Diag *diag);
/* Adds fd to the state's "fds" (state["fds"] made when missing). */
void reexec_keep_fd(json_t *state, int fd);
/* Writes state (borrowed) to a sealed memfd, clears O_CLOEXEC on the
 * descriptors in state["fds"] and on the memfd, and execve()s the binary.
 * Returns only when that failed: -errno with one line in diag, every
 * O_CLOEXEC set again and the memfd closed. */
int reexec_exec(const json_t *state, Diag *diag);
/* In the new reld, before anything else opens a descriptor: the state
 * from the memfd numbered by arg (the text after --reexec-state=), or
 * NULL (one line logged, every child SIGKILLed and reaped). Either way the
 * memfd and every descriptor >= 3 that the state does not name are
 * closed, and the named ones get O_CLOEXEC back. */
json_t *reexec_load(const char *arg);
/* Is pid a child of this process (running or not yet reaped)? */
bool reexec_is_child(pid_t pid);
/* SIGKILLs (their process groups too) and reaps every child not in
 * keep[0..n); the number killed. */
size_t reexec_kill_children(const pid_t *keep, size_t n);
