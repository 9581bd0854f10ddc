/* A module for the daemon's unit suites: a real shared object with a real
 * descriptor (runtime/reld-runtime.h), so that what reld checks at unpack
 * (check/check.h: the descriptor read from the ELF file) holds. Built once
 * per MODULE_NAME and MODULE_VSN (tests/meson.build: test-NAME-VSN.so);
 * testlib.h's test_copy_module() puts one into a release. */
#include "reld-runtime.h"

static const int api = 0;

RELD_MODULE_DEFINE(.name = MODULE_NAME, .version = MODULE_VSN, .api = &api);
