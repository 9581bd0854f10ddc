#pragma once
/* The libFuzzer entry points of the targets in tests/fuzz (docs/fuzzing.md).
 * With -Dfuzz=true libFuzzer calls them; otherwise replay.c does, once
 * per file of the seed corpus. */
#include <stddef.h>
#include <stdint.h>

/* One input: returns 0 (libFuzzer keeps the input for the corpus), or -1
 * (it does not). A bug aborts, or trips a sanitizer. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
/* Once per process, before the first input. */
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* Aborts with a message: a property of the target that does not hold. */
#define FUZZ_ASSERT(cond, ...)                                                                                         \
    do {                                                                                                               \
        if (!(cond))                                                                                                   \
            fuzz_fail(__FILE__, __LINE__, #cond, __VA_ARGS__);                                                         \
    } while (0)
_Noreturn void fuzz_fail(const char *file, int line, const char *cond, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* FUZZ_VERBOSE=1 in the environment: targets print what they were told
 * (their Diag's errors), to see what a seed reaches. */
int fuzz_verbose(void);
