#pragma once
/* The command line: relctl (relctl.c) and relctl-pack (relctl-pack.c),
 * which relctl runs for `relctl pack`.
 *
 * Exit status of both: 0 success; 1 the request was refused or failed
 * (bad definitions, no such release, ...; for install, upgrade and
 * downgrade: refused before anything changed); 2 usage error; for install,
 * upgrade and downgrade also 3 rolled back by itself (the release before
 * runs, healthy) and 4 needs an operator (the way back failed, or the
 * release before is not healthy either). Errors are printed on stderr, one
 * line each, prefixed "relctl: ". */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "util.h"

#define EXIT_REFUSED        1
#define EXIT_USAGE          2
#define EXIT_ROLLED_BACK    3
#define EXIT_NEEDS_OPERATOR 4

/* The text of a .minisig as reld takes it (sign.h SIGN_TEXT_MAX). */
#define SIGNATURE_TEXT_MAX 4096

/* Was arg meant as a file (a path, or a tarball's name by its suffix)?
 * "2.0" is a version; "./2.0" and "kv-2.tar.gz" are files. relctl and
 * relctl -H decide alike: a missing file is an error, not a version. */
static inline bool names_a_file(const char *arg)
{
    static const char *const suffixes[] = {".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.zst", ".tar.bz2"};
    if (strchr(arg, '/'))
        return true;
    size_t n = strlen(arg);
    for (size_t k = 0; k < sizeof(suffixes) / sizeof(suffixes[0]); k++)
        if (n > strlen(suffixes[k]) && strcmp(arg + n - strlen(suffixes[k]), suffixes[k]) == 0)
            return true;
    return false;
}

/* Prints what a library said: warnings, then errors. */
static inline void print_diag(const Diag *d)
{
    for (size_t i = 0; i < d->warnings.n; i++)
        fprintf(stderr, "relctl: warning: %s\n", d->warnings.v[i]);
    for (size_t i = 0; i < d->errors.n; i++)
        fprintf(stderr, "relctl: %s\n", d->errors.v[i]);
}
