/* Shared libraries that test-check's executables need (DT_NEEDED), which
 * the tests put into a release or leave out: libcheckdep, and
 * libcheckchain (-DCHAIN), which needs libcheckdep in turn. */
int check_dep_value(void);
#if defined(CHAIN)
int check_chain_value(void);
int check_chain_value(void)
{
    return check_dep_value();
}
#else
int check_dep_value(void)
{
    return 42;
}
#endif
