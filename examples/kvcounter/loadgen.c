/* loadgen: sends INCR requests to a kvcounter service at a fixed total
 * rate and checks every reply.
 *
 * Usage: loadgen --port P [--host 127.0.0.1] [--conns 8] [--rate 2000]
 *                [--duration 5] [--keys 16] [--prefix NAME] [--json]
 *
 * Each connection owns its keys (PREFIX_c<i>_k<j>), so the count every
 * reply must carry is known: a reply with another count is a wrong reply.
 * A request is failed when its connection is refused or reset, when its
 * reply does not come within 2 s, or when its reply is wrong. At the end a
 * GET of every key checks the final counts. Latency is measured from the
 * request's scheduled time (no coordinated omission).
 * Exit status: 0 when no request failed, 1 otherwise, 2 usage. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define REPLY_TIMEOUT_NS 2000000000LL

typedef struct Conn {
    int fd;
    bool busy;          /* a request is out */
    long long sched_ns; /* when the request out was due */
    long long next_ns;  /* when the next one is due */
    size_t key;         /* the key of the request out */
    unsigned long long *expected;
    char in[4096];
    size_t in_len;
} Conn;

static struct sockaddr_in addr;
static const char *prefix;
static size_t n_keys = 16;

typedef struct Stats {
    unsigned long long sent, ok, wrong, failed, refused;
    long long *lat_ns;
    size_t n_lat, cap_lat;
} Stats;

static long long now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int dial(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        close(fd);
        return -1;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    fcntl(fd, F_SETFL, O_NONBLOCK);
    return fd;
}

static void conn_fail(Conn *c, Stats *s)
{
    if (c->busy) {
        s->failed++;
        /* The server may or may not have counted it: learn the truth on the
         * next reply for that key rather than report every later one wrong. */
        c->expected[c->key] = (unsigned long long)-1;
    }
    c->busy = false;
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->in_len = 0;
}

static void record(Stats *s, long long ns)
{
    if (s->n_lat == s->cap_lat) {
        s->cap_lat = s->cap_lat ? s->cap_lat * 2 : 65536;
        s->lat_ns = realloc(s->lat_ns, s->cap_lat * sizeof(*s->lat_ns));
        if (!s->lat_ns)
            abort();
    }
    s->lat_ns[s->n_lat++] = ns;
}

static int cmp_ll(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return x < y ? -1 : x > y;
}

static double pct(const Stats *s, double p)
{
    if (!s->n_lat)
        return 0;
    size_t i = (size_t)(p * (double)(s->n_lat - 1) + 0.5);
    return (double)s->lat_ns[i] / 1000.0;
}

/* Handles a complete reply line of connection index ci. */
static void on_reply(Conn *c, size_t ci, const char *line, Stats *s, long long t)
{
    char want[128];
    unsigned long long got = 0;
    snprintf(want, sizeof(want), "OK %s_c%zu_k%zu ", prefix, ci, c->key);
    bool shaped = strncmp(line, want, strlen(want)) == 0 && sscanf(line + strlen(want), "%llu", &got) == 1;
    unsigned long long *e = &c->expected[c->key];
    if (shaped && *e == (unsigned long long)-1)
        *e = got - 1; /* resynchronised after a lost connection */
    if (shaped && got == *e + 1) {
        s->ok++;
        *e = got;
    } else {
        s->wrong++;
        s->failed++;
        if (shaped)
            *e = got;
        fprintf(stderr, "loadgen: wrong reply on connection %zu: '%s' (expected count %llu)\n", ci, line, *e + 1);
    }
    record(s, t - c->sched_ns);
    c->busy = false;
}

/* A final GET of every key of every connection: the counts must be
 * exactly what the replies said. */
static unsigned long long verify(Conn *conns, size_t n)
{
    unsigned long long bad = 0;
    for (size_t i = 0; i < n; i++) {
        int fd = dial();
        if (fd < 0)
            return n * n_keys;
        FILE *f = fdopen(fd, "r+");
        fcntl(fd, F_SETFL, 0);
        for (size_t k = 0; k < n_keys; k++) {
            char line[256];
            unsigned long long got = 0;
            fprintf(f, "GET %s_c%zu_k%zu\n", prefix, i, k);
            fflush(f);
            if (!fgets(line, sizeof(line), f) ||
                sscanf(strrchr(line, ' ') ? strrchr(line, ' ') : line, "%llu", &got) != 1 ||
                (conns[i].expected[k] != (unsigned long long)-1 && got != conns[i].expected[k])) {
                fprintf(stderr, "loadgen: final count of %s_c%zu_k%zu is %s, expected %llu\n", prefix, i, k,
                        strtok(line, "\n"), conns[i].expected[k]);
                bad++;
            }
        }
        fclose(f);
    }
    return bad;
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1";
    int port = 0;
    size_t n_conns = 8;
    double rate = 2000, duration = 5;
    bool json = false;
    static char prefix_buf[32]; /* static: the global prefix points into it */
    snprintf(prefix_buf, sizeof(prefix_buf), "run%d", (int)getpid());
    prefix = prefix_buf;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--json") == 0)
            json = true;
        else if (v && strcmp(a, "--port") == 0 && ++i)
            port = atoi(v);
        else if (v && strcmp(a, "--host") == 0 && ++i)
            host = v;
        else if (v && strcmp(a, "--conns") == 0 && ++i)
            n_conns = (size_t)atol(v);
        else if (v && strcmp(a, "--rate") == 0 && ++i)
            rate = atof(v);
        else if (v && strcmp(a, "--duration") == 0 && ++i)
            duration = atof(v);
        else if (v && strcmp(a, "--keys") == 0 && ++i)
            n_keys = (size_t)atol(v);
        else if (v && strcmp(a, "--prefix") == 0 && ++i)
            prefix = v;
        else {
            fprintf(stderr, "usage: loadgen --port P [--host H] [--conns N] [--rate R] [--duration S] [--keys K] "
                            "[--prefix NAME] [--json]\n");
            return 2;
        }
    }
    addr = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (!port || !n_conns || !n_keys || rate <= 0 || duration <= 0 || inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "loadgen: bad arguments\n");
        return 2;
    }

    Stats s = {0};
    Conn *conns = calloc(n_conns, sizeof(*conns));
    struct pollfd *pfd = calloc(n_conns, sizeof(*pfd));
    long long interval = (long long)(1e9 * (double)n_conns / rate), start = now_ns();
    long long end = start + (long long)(duration * 1e9);
    for (size_t i = 0; i < n_conns; i++) {
        conns[i].fd = dial();
        conns[i].expected = calloc(n_keys, sizeof(unsigned long long));
        conns[i].next_ns = start + interval * (long long)i / (long long)n_conns; /* spread out */
    }

    for (;;) {
        long long t = now_ns();
        bool out = false;
        for (size_t i = 0; i < n_conns; i++) {
            Conn *c = &conns[i];
            if (c->busy && t - c->sched_ns > REPLY_TIMEOUT_NS) {
                fprintf(stderr, "loadgen: no reply within 2 s on connection %zu\n", i);
                conn_fail(c, &s);
            }
            /* Due, and the run not over (by the clock too: a saturated
             * run falls behind its schedule). */
            if (!c->busy && c->next_ns <= t && c->next_ns < end && t < end) {
                if (c->fd < 0 && (c->fd = dial()) < 0) {
                    s.sent++;
                    s.failed++;
                    s.refused++;
                    c->next_ns += interval;
                    continue;
                }
                c->key = (c->key + 1) % n_keys;
                char req[128];
                int len = snprintf(req, sizeof(req), "INCR %s_c%zu_k%zu\n", prefix, i, c->key);
                c->sched_ns = c->next_ns;
                c->next_ns += interval;
                s.sent++;
                c->busy = true;
                if (write(c->fd, req, (size_t)len) != len)
                    conn_fail(c, &s);
            }
            out = out || c->busy;
        }
        if (!out && t >= end)
            break;
        long long wake = end;
        for (size_t i = 0; i < n_conns; i++)
            if (!conns[i].busy && conns[i].next_ns < wake)
                wake = conns[i].next_ns;
        for (size_t i = 0; i < n_conns; i++)
            pfd[i] = (struct pollfd){.fd = conns[i].busy ? conns[i].fd : -1, .events = POLLIN};
        /* ppoll, not poll: a timeout in whole milliseconds rounds the
         * sub-millisecond waits between requests down to 0, and a load
         * generator that spins takes a core from the service it measures. */
        long long wait_ns = wake - now_ns();
        if (wait_ns < 0)
            wait_ns = 0;
        struct timespec ts = {.tv_sec = wait_ns / 1000000000LL, .tv_nsec = wait_ns % 1000000000LL};
        ppoll(pfd, n_conns, &ts, NULL);
        t = now_ns();
        for (size_t i = 0; i < n_conns; i++) {
            Conn *c = &conns[i];
            if (!(pfd[i].revents & (POLLIN | POLLHUP | POLLERR)) || !c->busy)
                continue;
            ssize_t n = read(c->fd, c->in + c->in_len, sizeof(c->in) - 1 - c->in_len);
            if (n < 0 && errno == EAGAIN)
                continue;
            if (n <= 0) {
                conn_fail(c, &s);
                continue;
            }
            c->in_len += (size_t)n;
            c->in[c->in_len] = 0;
            char *nl = strchr(c->in, '\n');
            if (nl) {
                *nl = 0;
                on_reply(c, i, c->in, &s, t);
                c->in_len = 0;
            }
        }
    }
    double secs = (double)(now_ns() - start) / 1e9;
    unsigned long long bad_final = verify(conns, n_conns);
    if (s.n_lat) /* lat_ns is NULL when nothing came back */
        qsort(s.lat_ns, s.n_lat, sizeof(*s.lat_ns), cmp_ll);
    double p50 = pct(&s, 0.5), p99 = pct(&s, 0.99), p999 = pct(&s, 0.999), max = pct(&s, 1.0);
    if (json)
        printf("{\"sent\":%llu,\"ok\":%llu,\"failed\":%llu,\"wrong\":%llu,\"refused\":%llu,\"final_mismatches\":%llu,"
               "\"seconds\":%.3f,\"rps\":%.1f,\"p50_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,\"max_us\":%.1f}\n",
               s.sent, s.ok, s.failed, s.wrong, s.refused, bad_final, secs, (double)s.ok / secs, p50, p99, p999, max);
    else
        printf("sent %llu, ok %llu, failed %llu (wrong %llu, refused %llu), final count mismatches %llu\n"
               "throughput %.1f req/s over %.2f s; latency p50 %.0f us, p99 %.0f us, p99.9 %.0f us, max %.0f us\n",
               s.sent, s.ok, s.failed, s.wrong, s.refused, bad_final, (double)s.ok / secs, secs, p50, p99, p999, max);
    for (size_t i = 0; i < n_conns; i++) {
        if (conns[i].fd >= 0)
            close(conns[i].fd);
        free(conns[i].expected);
    }
    free(conns);
    free(pfd);
    free(s.lat_ns);
    return s.failed || bad_final ? 1 : 0;
}
