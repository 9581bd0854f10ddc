/* store/archive-api.c when the library cannot be loaded: this suite is
 * built with ARCHIVE_SONAME naming a library that does not exist, so
 * every unpack would meet this; that it loads (the real soname) every
 * unpack of the other suites shows. */
#include <check.h>
#include <errno.h>
#include <string.h>

#include "archive-api.h"
#include "testlib.h"
#include "util.h"

START_TEST(open_of_a_missing_library_says_which_and_why)
{
    ArchiveApi api;
    memset(&api, 0xa5, sizeof(api)); /* whatever was there: cleared */
    char *why = NULL;
    ck_assert_int_eq(archive_api_open(&api, &why), -ELIBACC);
    ck_assert_ptr_nonnull(why);
    ck_assert_msg(strstr(why, "cannot load " ARCHIVE_SONAME " (libarchive, for unpacking): "), "%s", why);
    ck_assert_msg(strstr(why, "No such file or directory"), "%s", why); /* dlerror()'s reason */
    ck_assert_ptr_null(api.handle);
    ck_assert_ptr_null(api.read_new);
    archive_api_close(&api); /* of nothing opened: harmless */
    ck_assert_ptr_null(api.handle);
    free(why);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("archive_api");
    TCase *tc = tcase_create("archive_api_open");
    tcase_add_test(tc, open_of_a_missing_library_says_which_and_why);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
