#pragma once
/* The command line: relctl (relctl.c) and relctl-pack (relctl-pack.c),
 * which relctl runs for `relctl pack`.
 *
 * Exit status of both: 0 success; 1 the request was refused or failed
 * (bad definitions, no such release, ...); 2 usage error. Errors are
 * printed on stderr, one line each, prefixed "relctl: ". */
#include <stdio.h>

#include "util.h"

#define EXIT_REFUSED 1
#define EXIT_USAGE   2

/* Prints what a library said: warnings, then errors. */
static inline void print_diag(const Diag *d)
{
    for (size_t i = 0; i < d->warnings.n; i++)
        fprintf(stderr, "relctl: warning: %s\n", d->warnings.v[i]);
    for (size_t i = 0; i < d->errors.n; i++)
        fprintf(stderr, "relctl: %s\n", d->errors.v[i]);
}
