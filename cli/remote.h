#pragma once
/* relctl -H [USER@]HOST[:PORT]: the same command on another machine over
 * OpenSSH (docs/relctl.1 "REMOTE MACHINES", docs/fleet.md).
 *
 * relctl runs `ssh [-n] [-p PORT] -- [USER@]HOST 'relctl' 'ARG'...` (every
 * argument single-quoted for the remote POSIX shell) and passes through
 * its standard output, standard error and exit status. A tarball named on
 * the command line of install or unpack (or - for standard input)
 * is not a path there: relctl streams it over the connection, the remote
 * command reads `-`, and its standard input carries the signature's text
 * (FILE.minisig, or --signature FILE; four lines, the first "untrusted
 * comment:") directly followed by the tarball's bytes. --socket is
 * forwarded (the path is the remote machine's); $RELD_SOCKET is not (it
 * names a socket on this machine): without --socket the remote relctl uses
 * the remote default. `pack` is refused with -H (it writes local files).
 *
 * The ssh program is $RELCTL_SSH when set (a program, looked up in PATH;
 * no arguments), else ssh.
 *
 * Exit status: the remote relctl's (cli.h), or EXIT_UNREACHABLE when the
 * command did not run there or its end is unknown: ssh could not connect
 * or authenticate, the connection broke (ssh's 255), the remote shell found
 * no relctl (127), or ssh could not be started. One line on stderr says
 * which, after ssh's own.
 *
 * Ownership: everything returned is the caller's (remote_plan_clear,
 * remote_host_clear, free). Error codes: 0 or negative errno. */
#include <stdbool.h>

#include "util.h"

#define EXIT_UNREACHABLE 5

typedef struct RemoteHost {
    char *user; /* NULL: ssh's default */
    char *host; /* a name, or an address (IPv6 without brackets) */
    char *port; /* NULL: ssh's default; else 1-65535 in digits */
} RemoteHost;

/* Parses [USER@]HOST[:PORT] ([V6]:PORT with brackets; a bare IPv6 address
 * has no port). 0, or -EINVAL with *err (one line, caller frees). A host or
 * user starting with '-' is refused: ssh would read it as an option. */
int remote_parse_host(const char *spec, RemoteHost *out, char **err);
void remote_host_clear(RemoteHost *h);

/* arg single-quoted for a POSIX shell ('it'\''s'). Caller frees. */
char *remote_quote(const char *arg);

/* What relctl -H does, worked out from its arguments without I/O but
 * stat(2) of the operand (is it a local file?). */
typedef struct RemotePlan {
    RemoteHost host;
    StrVec ssh_argv;    /* ssh's argv, NULL-terminated in ssh_argv.v[n] */
    char *stream;       /* the local tarball to stream, "-" for standard input, or NULL */
    char *signature;    /* the local signature file to send before it, or NULL */
    bool signature_set; /* named by --signature: missing is an error (else FILE.minisig, if there) */
} RemotePlan;

/* Is -H/--host among argv (before a "--")? */
bool remote_wanted(int argc, char **argv);

/* The plan for argv (relctl's, with -H in it) and ssh, the program to run.
 * 0 and *plan; else -EINVAL (a usage error) or -ENOENT (a tarball that is
 * not there) with *err. */
int remote_plan(int argc, char **argv, const char *ssh, RemotePlan *plan, char **err);
void remote_plan_clear(RemotePlan *plan);

/* relctl -H: plans, runs ssh, streams, and returns the exit status. */
int remote_main(int argc, char **argv);
