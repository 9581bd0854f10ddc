/* A shared library that test-check's executable needs (DT_NEEDED), which
 * the test puts into a release or leaves out. */
int check_dep_value(void);
int check_dep_value(void)
{
    return 42;
}
