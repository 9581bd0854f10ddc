#pragma once
/* For the targets that take a Diag: its errors on stderr under FUZZ_VERBOSE. */
#include <stdio.h>

#include "fuzz.h"
#include "util.h"

static inline void fuzz_print_diag(const char *what, int r, const Diag *d)
{
    if (!fuzz_verbose())
        return;
    fprintf(stderr, "%s: %d\n", what, r);
    for (size_t i = 0; i < d->errors.n; i++)
        fprintf(stderr, "  %s\n", d->errors.v[i]);
}
