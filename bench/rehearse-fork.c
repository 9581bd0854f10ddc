/* rehearse-fork: what a rehearsal costs the host, by the size of its
 * state (issue 10, point 7; docs/benchmarks.md).
 *
 * This program is the host: it links the runtime with a control channel
 * (a socketpair whose other end it plays reld on) and the module
 * bench_state, whose state is a buffer of N MB, every page written. For
 * each size it sends `rehearse` (bench_state 1 -> 2) RUNS times and
 * measures:
 *   - the host's stop: the rel_runtime_dispatch() call that forks (what
 *     the host does not serve meanwhile), and the fork alone (the reply's
 *     fork_us);
 *   - the whole rehearsal, request to answer;
 *   - copy-on-write: the time for the host to write one byte in every page
 *     of its state while a copy lives (version 2 holds the copy long
 *     enough), after the copy ended (each page still faults once, to be
 *     made writable again), and with no fork at all (the same writes
 *     again).
 * Prints medians as Markdown.
 *
 * Usage: rehearse-fork MODULE_DIR [RUNS] [SIZES_MB...]   (default 15; 1 100 1024) */
#include <errno.h>
#include <jansson.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "reld-runtime.h"

typedef struct BenchState {
    size_t len;
    unsigned char *data;
} BenchState;

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, size_t n)
{
    qsort(v, n, sizeof(*v), cmp);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void die(const char *what)
{
    fprintf(stderr, "rehearse-fork: %s\n", what);
    exit(1);
}

/* reld's end: one line (blocking). */
static json_t *read_reply(int fd, RelRuntime *rt)
{
    static char buf[1 << 16];
    static size_t len;
    for (;;) {
        char *nl = memchr(buf, '\n', len);
        if (nl) {
            json_t *j = json_loadb(buf, (size_t)(nl - buf), 0, NULL);
            len -= (size_t)(nl + 1 - buf);
            memmove(buf, nl + 1, len);
            return j;
        }
        /* The host's loop: dispatch when its fd is readable, until the
         * answer is on reld's end. */
        struct pollfd p[2] = {{.fd = rel_runtime_fd(rt), .events = POLLIN}, {.fd = fd, .events = POLLIN}};
        if (poll(p, 2, 60000) <= 0)
            die("no answer within 60 s");
        if (p[0].revents && rel_runtime_dispatch(rt) < 0)
            die("the control channel closed");
        if (p[1].revents) {
            ssize_t n = read(fd, buf + len, sizeof(buf) - len);
            if (n <= 0)
                die("the control channel closed");
            len += (size_t)n;
        }
    }
}

/* Writes one byte in every page of the state; ms. */
static double touch(BenchState *s)
{
    long page = sysconf(_SC_PAGESIZE);
    double t0 = now_ms();
    for (size_t off = 0; off < s->len; off += (size_t)page)
        s->data[off]++;
    return now_ms() - t0;
}

static void bench(const char *dir, long mb, int runs)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        die("socketpair");
    char fd[16], mods[4096], mbs[32], path2[4096];
    snprintf(fd, sizeof(fd), "%d", sv[1]);
    snprintf(mods, sizeof(mods), "bench_state=%s/rehearse-state-1.so", dir);
    snprintf(path2, sizeof(path2), "%s/rehearse-state-2.so", dir);
    snprintf(mbs, sizeof(mbs), "%ld", mb);
    setenv("RELD_CONTROL_FD", fd, 1);
    setenv("RELD_MODULES", mods, 1);
    setenv("RELD_BENCH_STATE_MB", mbs, 1);
    setenv("RELD_BENCH_HOLD_MS", "0", 1);
    RelRuntime *rt;
    char err[512];
    if (rel_runtime_new(&rt, err, sizeof(err)) < 0)
        die(err);
    BenchState *s = rel_module_state(rel_runtime_module(rt, "bench_state"));
    json_decref(read_reply(sv[0], rt)); /* hello */
    double *stop = calloc((size_t)runs, sizeof(double)), *fork_ms = calloc((size_t)runs, sizeof(double)),
           *total = calloc((size_t)runs, sizeof(double)), *cow = calloc((size_t)runs, sizeof(double)),
           *plain = calloc((size_t)runs, sizeof(double)), *after = calloc((size_t)runs, sizeof(double));
    if (!stop || !fork_ms || !total || !cow || !plain || !after)
        die("out of memory");
    for (int k = 0; k < runs; k++) {
        bool hold = k % 2; /* every other run: the copy lives while the host writes */
        char hold_ms[32];
        snprintf(hold_ms, sizeof(hold_ms), "%ld", hold ? 500 + mb * 8 : 0); /* longer than the writes take */
        setenv("RELD_BENCH_HOLD_MS", hold_ms, 1);
        char req[8192];
        int n = snprintf(req, sizeof(req),
                         "{\"id\":%d,\"cmd\":\"rehearse\",\"timeout_ms\":60000,\"modules\":[{\"module\":"
                         "\"bench_state\",\"path\":\"%s\"}]}\n",
                         k, path2);
        double t0 = now_ms();
        if (write(sv[0], req, (size_t)n) != n)
            die("write");
        struct pollfd p = {.fd = rel_runtime_fd(rt), .events = POLLIN};
        if (poll(&p, 1, 10000) <= 0)
            die("the request did not arrive");
        double d0 = now_ms();
        (void)rel_runtime_dispatch(rt); /* reads it and forks: the host's stop */
        double d1 = now_ms();
        if (hold) {
            cow[k / 2] = touch(s); /* the copy lives for 1 s: each first write copies a page */
        } else {
            stop[k / 2] = d1 - d0;
        }
        json_t *r = read_reply(sv[0], rt);
        if (!json_is_true(json_object_get(r, "ok")))
            die("a rehearsal failed");
        if (!hold) {
            total[k / 2] = now_ms() - t0;
            fork_ms[k / 2] = (double)json_integer_value(json_object_get(r, "fork_us")) / 1000.0;
            after[k / 2] = touch(s); /* the copy is gone: a fault per page, no copy */
            plain[k / 2] = touch(s); /* no fork since the last writes */
        }
        json_decref(r);
    }
    size_t m = (size_t)runs / 2;
    printf("| %ld MB | %.2f ms | %.2f ms | %.2f ms | %.1f ms | %.1f ms | %.1f ms |\n", mb, median(stop, m),
           median(fork_ms, m), median(total, m), median(plain, m), median(after, m), median(cow, m));
    fflush(stdout);
    free(stop);
    free(fork_ms);
    free(total);
    free(cow);
    free(plain);
    free(after);
    rel_runtime_free(rt);
    close(sv[0]);
}

int main(int argc, char **argv)
{
    if (argc < 2)
        die("usage: rehearse-fork MODULE_DIR [RUNS] [SIZES_MB...]");
    int runs = argc > 2 ? atoi(argv[2]) : 15;
    if (runs < 1)
        die("RUNS must be at least 1");
    printf("| state | host stopped (the dispatch that forks) | fork alone | rehearsal, request to answer | "
           "host writes a byte per page: no fork | after the copy ended | while the copy lives |\n");
    printf("|---|---|---|---|---|---|---|\n");
    static const long sizes[] = {1, 100, 1024};
    if (argc > 3)
        for (int i = 3; i < argc; i++)
            bench(argv[1], atol(argv[i]), runs * 2);
    else
        for (size_t i = 0; i < sizeof(sizes) / sizeof(*sizes); i++)
            bench(argv[1], sizes[i], runs * 2);
    return 0;
}
