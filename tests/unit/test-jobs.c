/* jobs: worker threads whose completions run on a real sd_event loop. */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "jobs.h"
#include "util.h"
#include "testlib.h"

static sd_event *ev;
static Jobs *jobs;
static pthread_t main_thread;

/* One job's record. Work waits for its gate when gated. */
typedef struct Rec {
    int id;
    pthread_t work_thread, done_thread;
    bool worked, done_called;
    unsigned running_in_done; /* jobs_running() seen from done */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool gated, open;
} Rec;

static int done_order[16];
static size_t n_done;

static void rec_init(Rec *r, int id, bool gated)
{
    memset(r, 0, sizeof(*r));
    r->id = id;
    r->gated = gated;
    pthread_mutex_init(&r->lock, NULL);
    pthread_cond_init(&r->cond, NULL);
}

static void rec_destroy(Rec *r)
{
    pthread_mutex_destroy(&r->lock);
    pthread_cond_destroy(&r->cond);
}

static void rec_open(Rec *r)
{
    pthread_mutex_lock(&r->lock);
    r->open = true;
    pthread_cond_signal(&r->cond);
    pthread_mutex_unlock(&r->lock);
}

static void work(void *userdata)
{
    Rec *r = userdata;
    r->work_thread = pthread_self();
    pthread_mutex_lock(&r->lock);
    while (r->gated && !r->open)
        pthread_cond_wait(&r->cond, &r->lock);
    r->worked = true;
    pthread_mutex_unlock(&r->lock);
}

static void done(void *userdata)
{
    Rec *r = userdata;
    r->done_thread = pthread_self();
    r->done_called = true;
    r->running_in_done = jobs_running(jobs);
    if (n_done < sizeof(done_order) / sizeof(done_order[0]))
        done_order[n_done++] = r->id;
}

/* Runs the loop until every rec given is done, or 5 s. */
static bool run_until_done(Rec **recs, size_t n)
{
    long long deadline = mono_ms() + 5000;
    for (;;) {
        bool all = true;
        for (size_t i = 0; i < n; i++)
            all = all && recs[i]->done_called;
        if (all)
            return true;
        if (mono_ms() > deadline)
            return false;
        ck_assert_int_ge(sd_event_run(ev, 50 * 1000ULL), 0);
    }
}

static void setup(void)
{
    main_thread = pthread_self();
    n_done = 0;
    ck_assert_int_ge(sd_event_new(&ev), 0);
    ck_assert_int_eq(jobs_new(ev, &jobs), 0);
    ck_assert_ptr_nonnull(jobs);
}

static void teardown(void)
{
    jobs = jobs_free(jobs);
    ck_assert_ptr_null(jobs);
    ev = sd_event_unref(ev);
}

/* ---- jobs_new ------------------------------------------------------------ */

START_TEST(new_starts_with_nothing_running)
{
    ck_assert_uint_eq(jobs_running(jobs), 0);
    ck_assert_uint_eq(jobs_running(NULL), 0);
    /* Nothing is due: the loop finds no event in 20 ms. */
    ck_assert_int_eq(sd_event_run(ev, 20 * 1000ULL), 0);
}
END_TEST

START_TEST(new_fails_without_file_descriptors)
{
    struct rlimit old, none = {0, 0};
    ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &old), 0);
    none.rlim_max = old.rlim_max;
    ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &none), 0);
    Jobs *j = NULL;
    int r = jobs_new(ev, &j);
    ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &old), 0);
    ck_assert_int_eq(r, -EMFILE);
    ck_assert_ptr_null(j);
}
END_TEST

/* ---- jobs_run --------------------------------------------------------------- */

START_TEST(run_works_on_another_thread_and_is_done_on_the_loop)
{
    Rec a;
    rec_init(&a, 1, false);
    ck_assert_int_eq(jobs_run(jobs, work, done, &a), 0);
    ck_assert(!a.done_called); /* never from inside jobs_run */
    Rec *v[] = {&a};
    ck_assert(run_until_done(v, 1));
    ck_assert(a.worked);
    ck_assert_msg(!pthread_equal(a.work_thread, main_thread), "work ran on the main thread");
    ck_assert_msg(pthread_equal(a.done_thread, main_thread), "done ran on another thread");
    ck_assert_uint_eq(jobs_running(jobs), 0);
    rec_destroy(&a);
}
END_TEST

START_TEST(run_done_in_order_of_completion)
{
    Rec r[4];
    for (int i = 0; i < 4; i++) {
        rec_init(&r[i], i, true);
        ck_assert_int_eq(jobs_run(jobs, work, done, &r[i]), 0);
    }
    /* Completed one at a time, each done before the next opens: 2, 0, 3, 1. */
    static const int order[] = {2, 0, 3, 1};
    for (int k = 0; k < 4; k++) {
        rec_open(&r[order[k]]);
        Rec *one[] = {&r[order[k]]};
        ck_assert(run_until_done(one, 1));
        ck_assert_uint_eq(n_done, (size_t)k + 1);
        for (int i = 0; i < 4; i++) {
            bool should = false;
            for (int q = 0; q <= k; q++)
                should = should || order[q] == i;
            ck_assert_msg(r[i].done_called == should, "job %d: done %d after %d completions", i, r[i].done_called,
                          k + 1);
        }
    }
    for (int k = 0; k < 4; k++)
        ck_assert_int_eq(done_order[k], order[k]);
    for (int i = 0; i < 4; i++) {
        ck_assert_msg(pthread_equal(r[i].done_thread, main_thread), "done %d off the main thread", i);
        ck_assert_msg(!pthread_equal(r[i].work_thread, main_thread), "work %d on the main thread", i);
        rec_destroy(&r[i]);
    }
}
END_TEST

/* Waits (without the loop) until r's work has returned and its thread had
 * time to queue the job. */
static void wait_worked(Rec *r)
{
    long long deadline = mono_ms() + 5000;
    for (;;) {
        pthread_mutex_lock(&r->lock);
        bool w = r->worked;
        pthread_mutex_unlock(&r->lock);
        if (w || mono_ms() > deadline)
            break;
        usleep(1000);
    }
    ck_assert(r->worked);
    usleep(30 * 1000ULL); /* from the end of work() to the job on the finished list: microseconds */
}

START_TEST(run_done_in_order_of_completion_when_several_finish_between_turns)
{
    /* Three jobs complete, 0 then 1 then 2, while the loop does not run:
     * one wakeup finds them all, and their dones go in that order. */
    Rec r[3];
    for (int i = 0; i < 3; i++) {
        rec_init(&r[i], i, true);
        ck_assert_int_eq(jobs_run(jobs, work, done, &r[i]), 0);
    }
    for (int i = 0; i < 3; i++) {
        rec_open(&r[i]);
        wait_worked(&r[i]);
    }
    Rec *v[] = {&r[0], &r[1], &r[2]};
    ck_assert(run_until_done(v, 3));
    ck_assert_uint_eq(n_done, 3);
    ck_assert_msg(done_order[0] == 0 && done_order[1] == 1 && done_order[2] == 2, "done order %d %d %d", done_order[0],
                  done_order[1], done_order[2]);
    for (int i = 0; i < 3; i++)
        rec_destroy(&r[i]);
}
END_TEST

START_TEST(run_many_at_once_each_done_once)
{
    Rec r[12];
    Rec *v[12];
    for (int i = 0; i < 12; i++) {
        rec_init(&r[i], i, false);
        v[i] = &r[i];
        ck_assert_int_eq(jobs_run(jobs, work, done, &r[i]), 0);
    }
    ck_assert(run_until_done(v, 12));
    ck_assert_uint_eq(n_done, 12);
    bool seen[12] = {0};
    for (size_t k = 0; k < n_done; k++) {
        ck_assert_msg(!seen[done_order[k]], "job %d done twice", done_order[k]);
        seen[done_order[k]] = true;
    }
    ck_assert_uint_eq(jobs_running(jobs), 0);
    for (int i = 0; i < 12; i++)
        rec_destroy(&r[i]);
}
END_TEST

/* ---- jobs_running --------------------------------------------------------------- */

START_TEST(running_counts_until_done)
{
    Rec a, b;
    rec_init(&a, 1, true);
    rec_init(&b, 2, true);
    ck_assert_int_eq(jobs_run(jobs, work, done, &a), 0);
    ck_assert_uint_eq(jobs_running(jobs), 1);
    ck_assert_int_eq(jobs_run(jobs, work, done, &b), 0);
    ck_assert_uint_eq(jobs_running(jobs), 2);
    ck_assert_int_eq(sd_event_run(ev, 20 * 1000ULL), 0); /* both gated: nothing completes */
    ck_assert_uint_eq(jobs_running(jobs), 2);
    rec_open(&a);
    Rec *va[] = {&a};
    ck_assert(run_until_done(va, 1));
    /* A finished job no longer counts from its done on. */
    ck_assert_uint_eq(a.running_in_done, 1);
    ck_assert_uint_eq(jobs_running(jobs), 1);
    rec_open(&b);
    Rec *vb[] = {&b};
    ck_assert(run_until_done(vb, 1));
    ck_assert_uint_eq(b.running_in_done, 0);
    ck_assert_uint_eq(jobs_running(jobs), 0);
    rec_destroy(&a);
    rec_destroy(&b);
}
END_TEST

/* ---- jobs_free ---------------------------------------------------------------- */

START_TEST(free_refuses_while_a_job_runs)
{
    Rec a;
    rec_init(&a, 1, true);
    ck_assert_int_eq(jobs_run(jobs, work, done, &a), 0);
    ck_assert_ptr_eq(jobs_free(jobs), jobs); /* refused: the thread still runs */
    rec_open(&a);
    Rec *v[] = {&a};
    ck_assert(run_until_done(v, 1)); /* still served after the refusal */
    ck_assert(a.worked);
    ck_assert_ptr_null(jobs_free(jobs));
    jobs = NULL;
    ck_assert_ptr_null(jobs_free(NULL));
    rec_destroy(&a);
}
END_TEST

START_TEST(free_refuses_until_done_ran)
{
    /* The work is over, but its done has not run yet: still refused. */
    Rec a;
    rec_init(&a, 1, false);
    ck_assert_int_eq(jobs_run(jobs, work, done, &a), 0);
    wait_worked(&a);
    ck_assert_ptr_eq(jobs_free(jobs), jobs);
    Rec *v[] = {&a};
    ck_assert(run_until_done(v, 1));
    rec_destroy(&a);
}
END_TEST

static Suite *jobs_suite(void)
{
    Suite *s = suite_create("jobs");
    struct {
        const char *name;
        const TTest *tests[8];
    } cases[] = {
        {"jobs_new", {new_starts_with_nothing_running, new_fails_without_file_descriptors}},
        {"jobs_run",
         {run_works_on_another_thread_and_is_done_on_the_loop, run_done_in_order_of_completion,
          run_done_in_order_of_completion_when_several_finish_between_turns, run_many_at_once_each_done_once}},
        {"jobs_running", {running_counts_until_done}},
        {"jobs_free", {free_refuses_while_a_job_runs, free_refuses_until_done_ran}},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        TCase *tc = tcase_create(cases[i].name);
        tcase_add_checked_fixture(tc, setup, teardown);
        for (size_t k = 0; k < sizeof(cases[i].tests) / sizeof(cases[i].tests[0]) && cases[i].tests[k]; k++)
            tcase_add_test(tc, cases[i].tests[k]);
        suite_add_tcase(s, tc);
    }
    return s;
}

int main(void)
{
    return test_run_suite(jobs_suite());
}
