/* Executables for test-check: one that needs libcheckdep.so (-DNEEDS_DEP),
 * one that needs libcheckchain (-DNEEDS_CHAIN), one linked against the
 * shared libreld-runtime (-DNEEDS_RUNTIME), as a host that forgot
 * runtime_static_dep would be. */
#if defined(NEEDS_DEP)
int check_dep_value(void);
int main(void)
{
    return check_dep_value() == 42 ? 0 : 1;
}
#elif defined(NEEDS_CHAIN)
int check_chain_value(void);
int main(void)
{
    return check_chain_value() == 42 ? 0 : 1;
}
#else
#include "reld-runtime.h"
int main(void)
{
    return rel_runtime_free(NULL) != NULL;
}
#endif
