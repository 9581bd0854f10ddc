/* Modules for test-check, their descriptors written out field by field in
 * the layouts check reads (docs/runtime.md: ABI 1, 64 bytes; ABI 2, 88), so
 * that each test controls what the file says:
 *   -DABI=N -DMOD_NAME="m" -DMOD_VSN="1" -DSTATE_VERSION=N
 *   -DSMALL  a reld_module of 16 bytes: no descriptor at all */
#include <stdint.h>

#ifndef MOD_NAME
#define MOD_NAME "m"
#endif
#ifndef MOD_VSN
#define MOD_VSN "1"
#endif
#ifndef STATE_VERSION
#define STATE_VERSION 0
#endif

#define EXPORT __attribute__((visibility("default")))

#if defined(SMALL)
EXPORT const struct {
    uint32_t abi;
    const char *name;
} reld_module = {2, MOD_NAME};
#elif ABI == 1
EXPORT const struct {
    uint32_t abi;
    const char *name, *version;
    void *callbacks[4];
    const void *api;
} reld_module = {.abi = 1, .name = MOD_NAME, .version = MOD_VSN};
#else
EXPORT const struct {
    uint32_t abi;
    const char *name, *version;
    void *callbacks[4];
    const void *api;
    uint32_t state_version;
    void *health, *verify;
} reld_module = {.abi = ABI, .name = MOD_NAME, .version = MOD_VSN, .state_version = STATE_VERSION};
#endif
