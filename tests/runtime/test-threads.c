/* The runtime in a threaded host: registered threads parked at their safe
 * points for suspend, load, code_change and health, a thread blocked in
 * epoll_wait woken through its fd, threads of other modules serving on,
 * release together; and the host table's context (no global runtime).
 *
 * The test plays reld on a socketpair; a dispatcher thread of its own
 * polls rel_runtime_fd() and dispatches, as a host's control thread does.
 * Modules: thr_module.c built as thr_a 1 and 2, thr_b 1 and thr_c 1 in
 * $RELD_TEST_THR (its callbacks fail when a call of the module runs).
 * Waits are bounded (10 s); nothing asserts how fast anything is. */
#include <check.h>
#include <errno.h>
#include <jansson.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "reld-runtime.h"
#include "thr_api.h"

#define WAIT_MS 10000

static char *mod_path(const char *file)
{
    static char buf[4][1024];
    static int k;
    char *b = buf[k++ % 4];
    snprintf(b, sizeof(buf[0]), "%s/%s.so", getenv("RELD_TEST_THR"), file);
    return b;
}

static long long now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000LL + t.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec t = {ms / 1000, ms % 1000 * 1000000L};
    while (nanosleep(&t, &t) < 0 && errno == EINTR)
        ;
}

/* ---- reld's side and the dispatcher ---- */

typedef struct Fixture {
    RelRuntime *rt;
    int reld; /* our end of the control channel */
    pthread_t dispatcher;
    char in[65536];
    size_t len;
    int next_id;
} Fixture;

static Fixture F;

static void *dispatch_main(void *arg)
{
    Fixture *f = arg;
    for (;;) {
        struct pollfd p = {.fd = rel_runtime_fd(f->rt), .events = POLLIN};
        if (p.fd < 0 || (poll(&p, 1, -1) < 0 && errno != EINTR))
            break;
        if (rel_runtime_dispatch(f->rt) < 0)
            break;
    }
    return NULL;
}

/* The next message from the process, or NULL after WAIT_MS. */
static json_t *read_msg(Fixture *f, int timeout_ms)
{
    long long deadline = now_ms() + timeout_ms;
    for (;;) {
        char *nl = memchr(f->in, '\n', f->len);
        if (nl) {
            json_t *j = json_loadb(f->in, (size_t)(nl - f->in), 0, NULL);
            f->len -= (size_t)(nl + 1 - f->in);
            memmove(f->in, nl + 1, f->len);
            return j;
        }
        long long left = deadline - now_ms();
        struct pollfd p = {.fd = f->reld, .events = POLLIN};
        if (left <= 0 || poll(&p, 1, (int)left) <= 0)
            return NULL;
        ssize_t n = read(f->reld, f->in + f->len, sizeof(f->in) - f->len);
        if (n <= 0)
            return NULL;
        f->len += (size_t)n;
    }
}

static void send_cmd(Fixture *f, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));
static void send_cmd(Fixture *f, const char *fmt, va_list ap)
{
    char body[2048], line[2100];
    vsnprintf(body, sizeof(body), fmt, ap);
    int n = snprintf(line, sizeof(line), "{\"id\": %d, %s}\n", ++f->next_id, body);
    ck_assert_int_eq(write(f->reld, line, (size_t)n), n);
}

/* Sends {"id": N, <fmt>} and returns the reply (the caller decrefs). */
__attribute__((format(printf, 1, 2))) static json_t *cmd(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    send_cmd(&F, fmt, ap);
    va_end(ap);
    json_t *r = read_msg(&F, WAIT_MS);
    ck_assert_msg(r, "no reply within %d ms to %s", WAIT_MS, fmt);
    ck_assert_int_eq(json_integer_value(json_object_get(r, "id")), F.next_id);
    return r;
}

static void ok(json_t *r)
{
    char *text = json_dumps(r, JSON_COMPACT);
    ck_assert_msg(json_is_true(json_object_get(r, "ok")), "not ok: %s", text);
    free(text);
    json_decref(r);
}

static void start(const char *modules)
{
    int sv[2];
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    char fd[16];
    snprintf(fd, sizeof(fd), "%d", sv[1]);
    setenv("RELD_CONTROL_FD", fd, 1);
    setenv("RELD_MODULES", modules, 1);
    char err[512] = "";
    memset(&F, 0, sizeof(F));
    F.reld = sv[0];
    ck_assert_msg(rel_runtime_new(&F.rt, err, sizeof(err)) == 0, "rel_runtime_new: %s", err);
    json_t *hello = read_msg(&F, WAIT_MS);
    ck_assert_str_eq(json_string_value(json_object_get(hello, "event")), "hello");
    json_decref(hello);
    ck_assert_int_eq(pthread_create(&F.dispatcher, NULL, dispatch_main, &F), 0);
}

/* reld goes away: dispatch returns, the runtime goes on unmanaged. */
static void stop_dispatcher(void)
{
    close(F.reld);
    F.reld = -1;
    pthread_join(F.dispatcher, NULL);
}

/* ---- serving threads ---- */

typedef struct Worker {
    const char *module;
    const char *const *runs; /* what it registers; NULL: every module */
    bool epoll;              /* blocks in epoll_wait between calls */
    bool waits;              /* ... between rel_thread_wait_begin and _end */
    pthread_t th;
    int kick; /* eventfd: stop */
    int rc;   /* rel_thread_register's */
    atomic_bool registered, stop;
    atomic_ulong calls;
    atomic_int version;
} Worker;

static void *worker_main(void *arg)
{
    Worker *w = arg;
    RelThread *t;
    w->rc = rel_thread_register(F.rt, w->runs, &t);
    atomic_store(&w->registered, true);
    if (w->rc < 0)
        return NULL;
    RelModule *m = rel_runtime_module(F.rt, w->module);
    int ep = -1;
    if (w->epoll) {
        ep = epoll_create1(EPOLL_CLOEXEC);
        struct epoll_event a = {.events = EPOLLIN, .data.fd = rel_thread_fd(t)};
        struct epoll_event b = {.events = EPOLLIN, .data.fd = w->kick};
        epoll_ctl(ep, EPOLL_CTL_ADD, a.data.fd, &a);
        epoll_ctl(ep, EPOLL_CTL_ADD, b.data.fd, &b);
    }
    while (!atomic_load(&w->stop)) {
        rel_thread_safepoint(t);
        const ThrApi *api = rel_module_api(m);
        if (api)
            atomic_store(&w->version, api->work(rel_module_state(m)));
        atomic_fetch_add(&w->calls, 1);
        if (ep >= 0) {
            struct epoll_event ev;
            if (w->waits)
                rel_thread_wait_begin(t);
            /* Only the runtime or the test wakes it. */
            if (epoll_wait(ep, &ev, 1, -1) == 1 && ev.data.fd == w->kick) {
                uint64_t n;
                (void)!read(w->kick, &n, sizeof(n));
            }
            if (w->waits)
                rel_thread_wait_end(t);
        }
    }
    if (ep >= 0)
        close(ep);
    rel_thread_unregister(t);
    return NULL;
}

static void worker_start(Worker *w)
{
    w->kick = eventfd(0, EFD_CLOEXEC);
    ck_assert_int_ge(w->kick, 0);
    ck_assert_int_eq(pthread_create(&w->th, NULL, worker_main, w), 0);
}

static void worker_stop(Worker *w)
{
    atomic_store(&w->stop, true);
    uint64_t one = 1;
    ck_assert_int_eq(write(w->kick, &one, sizeof(one)), (ssize_t)sizeof(one));
    pthread_join(w->th, NULL);
    close(w->kick);
}

/* Until w has made more than `than` calls; false after WAIT_MS. */
static bool progresses(Worker *w, unsigned long than)
{
    for (long long end = now_ms() + WAIT_MS; now_ms() < end; sleep_ms(1))
        if (atomic_load(&w->calls) > than)
            return true;
    return false;
}

static bool runs_version(Worker *w, int v)
{
    for (long long end = now_ms() + WAIT_MS; now_ms() < end; sleep_ms(1))
        if (atomic_load(&w->version) == v)
            return true;
    return false;
}

#define N_BUSY 4

static const char *const only_a[] = {"thr_a", NULL};
static const char *const only_b[] = {"thr_b", NULL};

static void start_ab(void)
{
    char mods[4096];
    snprintf(mods, sizeof(mods), "thr_a=%s:thr_b=%s", mod_path("thr_a-1"), mod_path("thr_b-1"));
    start(mods);
}

/* Busy threads of thr_a (two registered for every module, two for thr_a
 * alone), one thread of thr_a blocked in epoll_wait, one busy thread of
 * thr_b. suspend parks the five of thr_a; thr_b's serves on; load,
 * code_change and health find no call under way; resume releases them. */
START_TEST(upgrade_with_threads_parked)
{
    start_ab();
    Worker busy[N_BUSY] = {0}, idle = {.module = "thr_a", .runs = only_a, .epoll = true},
           other = {.module = "thr_b", .runs = only_b};
    for (int i = 0; i < N_BUSY; i++) {
        busy[i] = (Worker){.module = "thr_a", .runs = i % 2 ? only_a : NULL};
        worker_start(&busy[i]);
    }
    worker_start(&idle);
    worker_start(&other);
    for (int i = 0; i < N_BUSY; i++)
        ck_assert(progresses(&busy[i], 0) && atomic_load(&busy[i].version) == 1);
    ck_assert(progresses(&idle, 0)); /* it made its first call and now blocks */

    ok(cmd("\"cmd\": \"load_object_code\", \"module\": \"thr_a\", \"path\": \"%s\"", mod_path("thr_a-2")));
    /* Answered only when all five threads of thr_a are parked, the one in
     * epoll_wait included: woken through its rel_thread_fd. */
    json_t *r = cmd("\"cmd\": \"suspend\", \"modules\": [\"thr_a\"]");
    ck_assert(json_is_true(json_object_get(r, "suspended")));
    json_int_t parked_us = json_integer_value(json_object_get(r, "parked_us"));
    ck_assert(json_is_integer(json_object_get(r, "parked_us")) && parked_us >= 0);
    json_decref(r);
    unsigned long parked[N_BUSY], idle_calls = atomic_load(&idle.calls);
    for (int i = 0; i < N_BUSY; i++)
        parked[i] = atomic_load(&busy[i].calls);
    /* thr_b's thread serves on while thr_a's are parked. */
    ck_assert(progresses(&other, atomic_load(&other.calls)));
    for (int i = 0; i < N_BUSY; i++)
        ck_assert_uint_eq(atomic_load(&busy[i].calls), parked[i]);
    ck_assert_uint_eq(atomic_load(&idle.calls), idle_calls);
    ok(cmd("\"cmd\": \"load\", \"module\": \"thr_a\""));
    ok(cmd("\"cmd\": \"code_change\", \"module\": \"thr_a\", \"mode\": \"up\""));
    json_t *h = cmd("\"cmd\": \"health\"");
    ck_assert(json_is_true(json_object_get(h, "healthy")));
    json_decref(h);
    for (int i = 0; i < N_BUSY; i++)
        ck_assert_uint_eq(atomic_load(&busy[i].calls), parked[i]);
    r = cmd("\"cmd\": \"resume\", \"modules\": [\"thr_a\"]");
    ck_assert(json_is_false(json_object_get(r, "suspended")));
    /* The pause: from the suspend's start to the release, parking included. */
    ck_assert_int_ge(json_integer_value(json_object_get(r, "paused_us")), parked_us);
    json_decref(r);
    for (int i = 0; i < N_BUSY; i++)
        ck_assert_msg(runs_version(&busy[i], 2), "thread %d does not run version 2", i);
    ok(cmd("\"cmd\": \"purge\", \"module\": \"thr_a\", \"method\": \"soft_purge\""));

    /* Without a suspension: load parks thr_a's threads for itself (the
     * other way, code_change down runs suspended first, as in OTP). */
    ok(cmd("\"cmd\": \"load_object_code\", \"module\": \"thr_a\", \"path\": \"%s\"", mod_path("thr_a-1")));
    ok(cmd("\"cmd\": \"suspend\", \"modules\": [\"thr_a\"]"));
    ok(cmd("\"cmd\": \"code_change\", \"module\": \"thr_a\", \"mode\": \"down\""));
    ok(cmd("\"cmd\": \"resume\", \"modules\": [\"thr_a\"]"));
    ok(cmd("\"cmd\": \"load\", \"module\": \"thr_a\""));
    for (int i = 0; i < N_BUSY; i++)
        ck_assert_msg(runs_version(&busy[i], 1), "thread %d does not run version 1", i);
    /* health, unsuspended, parks every thread for the callbacks. */
    for (int k = 0; k < 20; k++) {
        h = cmd("\"cmd\": \"health\"");
        ck_assert_msg(json_is_true(json_object_get(h, "healthy")), "%s",
                      json_string_value(json_object_get(h, "message")));
        json_decref(h);
    }
    RelModule *a = rel_runtime_module(F.rt, "thr_a");
    ck_assert_int_eq(((const ThrApi *)rel_module_api(a))->changes(rel_module_state(a)), 2);

    for (int i = 0; i < N_BUSY; i++)
        worker_stop(&busy[i]);
    worker_stop(&idle);
    worker_stop(&other);
    stop_dispatcher();
    rel_runtime_free(F.rt);
}
END_TEST

static void poke(Worker *w)
{
    uint64_t one = 1;
    ck_assert_int_eq(write(w->kick, &one, sizeof(one)), (ssize_t)sizeof(one));
}

/* A thread waiting between rel_thread_wait_begin and _end counts as
 * parked: suspend, load and code_change complete without waking it; when
 * it wakes during a pause it parks before its next call; after the pause
 * its next call runs the new code. */
START_TEST(waiting_thread_is_not_woken)
{
    start_ab();
    Worker w = {.module = "thr_a", .runs = only_a, .epoll = true, .waits = true};
    worker_start(&w);
    ck_assert(progresses(&w, 0));
    ck_assert(runs_version(&w, 1));
    unsigned long calls = atomic_load(&w.calls);
    ok(cmd("\"cmd\": \"load_object_code\", \"module\": \"thr_a\", \"path\": \"%s\"", mod_path("thr_a-2")));
    ok(cmd("\"cmd\": \"suspend\", \"modules\": [\"thr_a\"]"));
    ok(cmd("\"cmd\": \"load\", \"module\": \"thr_a\""));
    ok(cmd("\"cmd\": \"code_change\", \"module\": \"thr_a\", \"mode\": \"up\""));
    ck_assert_uint_eq(atomic_load(&w.calls), calls); /* it slept through */
    poke(&w);                                        /* wakes during the pause: parks in rel_thread_wait_end */
    sleep_ms(50);
    ck_assert_uint_eq(atomic_load(&w.calls), calls);
    ok(cmd("\"cmd\": \"resume\", \"modules\": [\"thr_a\"]"));
    ck_assert(progresses(&w, calls));
    ck_assert_int_eq(atomic_load(&w.version), 2);
    /* Unsuspended: load parks it for itself, again without waking it. */
    calls = atomic_load(&w.calls);
    ok(cmd("\"cmd\": \"purge\", \"module\": \"thr_a\""));
    ok(cmd("\"cmd\": \"load_object_code\", \"module\": \"thr_a\", \"path\": \"%s\"", mod_path("thr_a-1")));
    ok(cmd("\"cmd\": \"load\", \"module\": \"thr_a\""));
    ck_assert_uint_eq(atomic_load(&w.calls), calls);
    poke(&w);
    ck_assert(runs_version(&w, 1));
    worker_stop(&w);
    stop_dispatcher();
    rel_runtime_free(F.rt);
}
END_TEST

/* A thread that registers while its module is suspended returns from
 * rel_thread_register only after resume; one that leaves while a suspend
 * waits for it lets the suspend complete. */
START_TEST(register_and_leave_during_a_suspension)
{
    start_ab();
    ok(cmd("\"cmd\": \"suspend\", \"modules\": [\"thr_a\"]"));
    Worker late = {.module = "thr_a", .runs = only_a};
    worker_start(&late);
    sleep_ms(50); /* time to register, were registration not held */
    ck_assert(!atomic_load(&late.registered) || atomic_load(&late.calls) == 0);
    ok(cmd("\"cmd\": \"resume\", \"modules\": [\"thr_a\"]"));
    ck_assert(progresses(&late, 0));
    ck_assert_int_eq(late.rc, 0);
    worker_stop(&late);

    /* A registered thread that never reaches a safe point, then leaves. */
    RelThread *t;
    ck_assert_int_eq(rel_thread_register(F.rt, only_a, &t), 0);
    ck_assert_int_eq(rel_thread_register(F.rt, only_a, &t), -EINVAL); /* once per thread */
    char line[] = "{\"id\": 100, \"cmd\": \"suspend\", \"modules\": [\"thr_a\"]}\n";
    ck_assert_int_eq(write(F.reld, line, sizeof(line) - 1), (ssize_t)sizeof(line) - 1);
    json_t *early = read_msg(&F, 50);
    ck_assert_ptr_null(early); /* this thread is not parked: no answer */
    /* Its fd says it is wanted. */
    struct pollfd p = {.fd = rel_thread_fd(t), .events = POLLIN};
    ck_assert_int_eq(poll(&p, 1, WAIT_MS), 1);
    rel_thread_unregister(t);
    json_t *r = read_msg(&F, WAIT_MS);
    ck_assert_msg(r && json_is_true(json_object_get(r, "suspended")), "no answer to suspend after the thread left");
    json_decref(r);
    ok(cmd("\"cmd\": \"resume\", \"modules\": [\"thr_a\"]"));
    stop_dispatcher();
    rel_runtime_free(F.rt);
}
END_TEST

/* reld goes away while threads are parked: they are released, and the
 * process goes on unmanaged. */
START_TEST(channel_closed_while_suspended_releases)
{
    start_ab();
    Worker w = {.module = "thr_a", .runs = NULL};
    worker_start(&w);
    ck_assert(progresses(&w, 0));
    ok(cmd("\"cmd\": \"suspend\", \"modules\": [\"thr_a\"]"));
    unsigned long parked = atomic_load(&w.calls);
    stop_dispatcher();
    ck_assert(progresses(&w, parked));
    worker_stop(&w);
    rel_runtime_free(F.rt);
}
END_TEST

/* The host table's context: a module reaches the modules of its own
 * runtime, and two runtimes in one process do not see each other's. */
START_TEST(host_context_per_runtime)
{
    start_ab();
    RelModule *b = rel_runtime_module(F.rt, "thr_b");
    const ThrApi *bapi = rel_module_api(b);
    ck_assert_ptr_eq(bapi->peer("thr_a"), rel_module_api(rel_runtime_module(F.rt, "thr_a")));
    ck_assert_ptr_null(bapi->peer("nothing"));

    unsetenv("RELD_CONTROL_FD");
    unsetenv("RELD_MODULES");
    RelRuntime *other;
    char err[512] = "";
    ck_assert_int_eq(rel_runtime_new(&other, err, sizeof(err)), 0);
    ck_assert_int_eq(rel_runtime_load(other, "thr_c", mod_path("thr_c-1"), err, sizeof(err)), 0);
    const ThrApi *capi = rel_module_api(rel_runtime_module(other, "thr_c"));
    ck_assert_ptr_null(capi->peer("thr_a")); /* thr_a is the first runtime's */
    ck_assert_ptr_eq(capi->peer("thr_c"), capi);
    ck_assert_int_eq(rel_runtime_fd(other), -1);
    rel_runtime_free(other);

    /* Bad arguments. */
    RelThread *t;
    ck_assert_int_eq(rel_thread_register(NULL, NULL, &t), -EINVAL);
    ck_assert_int_eq(rel_thread_fd(NULL), -1);
    rel_thread_safepoint(NULL);
    rel_thread_unregister(NULL);
    stop_dispatcher();
    rel_runtime_free(F.rt);
}
END_TEST

static Suite *threads_suite(void)
{
    Suite *s = suite_create("runtime-threads");
    TCase *tc = tcase_create("threads");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, upgrade_with_threads_parked);
    tcase_add_test(tc, waiting_thread_is_not_woken);
    tcase_add_test(tc, register_and_leave_during_a_suspension);
    tcase_add_test(tc, channel_closed_while_suspended_releases);
    tcase_add_test(tc, host_context_per_runtime);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(threads_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
