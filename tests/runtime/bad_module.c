/* Shared objects the runtime must refuse, one per build:
 *   -DBAD_ABI   a descriptor with an ABI this runtime does not speak
 *   -DBAD_NAME  a descriptor for another module than the one asked for
 *   -DNO_DESC   no descriptor at all */
#include "reld-runtime.h"

static const int nothing = 0; /* an api table for the descriptors below */

#if defined(BAD_ABI)
__attribute__((visibility("default")))
const RelModuleDesc reld_module = {.abi = 99, .name = "kv_server", .version = "9", .api = &nothing};
#elif defined(BAD_NAME)
RELD_MODULE_DEFINE(.name = "other", .version = "9", .api = &nothing);
#else
__attribute__((visibility("default"))) const int *not_a_module = &nothing;
#endif
