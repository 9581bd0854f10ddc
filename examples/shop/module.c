/* A module of the relup example: a real shared object with a real
 * descriptor (so relctl check and pack accept it), whose content differs
 * per version, so relctl can tell which modules changed. It has no
 * callbacks: the example's processes are stand-ins that load nothing. */
#include "reld-runtime.h"

static const int nothing = 0; /* an api table */

RELD_MODULE_DEFINE(.name = MODULE_NAME, .version = MODULE_VSN, .api = &nothing);
