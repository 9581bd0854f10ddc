/* A stand-in module for the relup example: a real shared object whose
 * content differs per version, so relctl can tell which modules changed.
 * The hot-code module ABI replaces this with real callbacks. */
const char reld_example_module_name[] = MODULE_NAME;
const char reld_example_module_version[] = MODULE_VSN;
