/* notify: a run's NOTIFY_SOCKET, on a real sd_event loop and real
 * datagrams: READY=1 counts from the expected pid only, once, and only as
 * a line of its own. */
#include <check.h>
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "notify.h"
#include "testlib.h"
#include "util.h"

static sd_event *ev;
static Notify *n;
static int n_ready;

static void on_ready(Notify *x, void *userdata)
{
    ck_assert_ptr_eq(x, n);
    ck_assert_ptr_eq(userdata, &n_ready);
    n_ready++;
}

static void setup(void)
{
    ck_assert_int_ge(sd_event_new(&ev), 0);
    n_ready = 0;
    ck_assert_int_eq(notify_new(ev, on_ready, &n_ready, &n), 0);
}

static void teardown(void)
{
    n = notify_free(n);
    ev = sd_event_unref(ev);
}

/* Sends msg to the notify socket, as sd_notify does. */
static void send_msg(const char *msg)
{
    const char *a = notify_address(n);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t len = strlen(a);
    memcpy(sa.sun_path + 1, a + 1, len - 1);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(sendto(fd, msg, strlen(msg), 0, (struct sockaddr *)&sa,
                            (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len)),
                     (ssize_t)strlen(msg));
    close(fd);
}

/* Runs the loop until nothing is left to do now (every datagram sent so
 * far read: they are queued before this is called). */
static void drain(void)
{
    for (int k = 0; k < 100; k++) {
        int r = sd_event_run(ev, 0);
        ck_assert_int_ge(r, 0);
        if (r == 0)
            return;
    }
    ck_abort_msg("the loop never went idle");
}

START_TEST(address_is_abstract_and_unique)
{
    Notify *m = NULL;
    ck_assert_int_eq(notify_new(ev, on_ready, &n_ready, &m), 0);
    ck_assert(notify_address(n)[0] == '@' && strlen(notify_address(n)) > 1);
    ck_assert_str_ne(notify_address(n), notify_address(m));
    notify_free(m);
}
END_TEST

/* Names taken first by someone else (here, those of the pattern an
 * earlier version used, @reld/notify/PID/N): a new socket still gets a
 * name of its own, and READY=1 sent to it counts. */
START_TEST(names_taken_first_do_not_block)
{
    int squat[8];
    for (int k = 0; k < 8; k++) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        int len = snprintf(sa.sun_path + 1, sizeof(sa.sun_path) - 1, "reld/notify/%d/%d", (int)getpid(), k);
        squat[k] = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(squat[k], 0);
        ck_assert_int_eq(
            bind(squat[k], (struct sockaddr *)&sa, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + len)), 0);
    }
    n = notify_free(n);
    ck_assert_int_eq(notify_new(ev, on_ready, &n_ready, &n), 0);
    ck_assert(strncmp(notify_address(n), "@reld/notify/", 13) != 0);
    notify_expect(n, getpid());
    send_msg("READY=1");
    drain();
    ck_assert_int_eq(n_ready, 1);
    for (int k = 0; k < 8; k++)
        close(squat[k]);
}
END_TEST

START_TEST(ready_from_the_expected_pid_once)
{
    notify_expect(n, getpid());
    send_msg("STATUS=starting");
    drain();
    ck_assert_int_eq(n_ready, 0);
    ck_assert(!notify_ready(n));
    send_msg("STATUS=up\nREADY=1\nMAINPID=1");
    drain();
    ck_assert_int_eq(n_ready, 1);
    ck_assert(notify_ready(n));
    send_msg("READY=1");
    drain();
    ck_assert_int_eq(n_ready, 1); /* once */
}
END_TEST

START_TEST(ready_only_as_a_line_of_its_own)
{
    notify_expect(n, getpid());
    send_msg("READY=10");
    send_msg("XREADY=1");
    send_msg("READY=1x\nREADY");
    send_msg("");
    drain();
    ck_assert_int_eq(n_ready, 0);
    ck_assert(!notify_ready(n));
}
END_TEST

START_TEST(nobody_expected_nothing_counts)
{
    send_msg("READY=1");
    drain();
    ck_assert_int_eq(n_ready, 0);
}
END_TEST

/* Another process (here: this one, while a child is expected) cannot say
 * that the run is ready; the child itself can. */
START_TEST(another_pid_does_not_count)
{
    int go[2];
    ck_assert_int_eq(pipe(go), 0);
    pid_t child = fork();
    ck_assert_int_ge(child, 0);
    if (child == 0) {
        char c;
        close(go[1]);
        if (read(go[0], &c, 1) == 1)
            send_msg("READY=1");
        _exit(0);
    }
    close(go[0]);
    notify_expect(n, child);
    send_msg("READY=1"); /* from the parent: not the run */
    drain();
    ck_assert_int_eq(n_ready, 0);
    ck_assert_int_eq(write(go[1], "g", 1), 1);
    int st;
    ck_assert_int_eq(waitpid(child, &st, 0), child);
    ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    drain();
    ck_assert_int_eq(n_ready, 1);
    close(go[1]);
}
END_TEST

/* A new run expected: what the old one said no longer counts. */
START_TEST(expect_again_forgets_ready)
{
    notify_expect(n, getpid());
    send_msg("READY=1");
    drain();
    ck_assert(notify_ready(n));
    notify_expect(n, getpid() + 1);
    ck_assert(!notify_ready(n));
}
END_TEST

static Suite *notify_suite(void)
{
    Suite *s = suite_create("notify");
    TCase *tc = tcase_create("notify");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, address_is_abstract_and_unique);
    tcase_add_test(tc, names_taken_first_do_not_block);
    tcase_add_test(tc, ready_from_the_expected_pid_once);
    tcase_add_test(tc, ready_only_as_a_line_of_its_own);
    tcase_add_test(tc, nobody_expected_nothing_counts);
    tcase_add_test(tc, another_pid_does_not_count);
    tcase_add_test(tc, expect_again_forgets_ready);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return test_run_suite(notify_suite());
}
