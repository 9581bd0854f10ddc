/* http-load: GET requests to an HTTP server at a fixed rate, open loop,
 * for bench/replace-bench; every request's fate written down.
 *
 * Usage: http-load --port P [--rate 2000] [--duration-ms 10000]
 *                  [--mode close|keepalive] [--conns 64] [--path /]
 *                  --out FILE
 *
 * Request i is due at start + i / rate. It takes a free connection slot
 * (at most --conns at once); its latency runs from when it was due to the
 * end of its answer (so a stall counts in full: no coordinated omission).
 * close: a new connection per request, "Connection: close". keepalive:
 * each slot keeps its connection; when the server closes an idle one (a
 * graceful stop does), a request that got no byte of answer on a reused
 * connection is sent again on a new one, as HTTP clients do, and counted
 * as retried. A request fails when its connection is refused or reset,
 * when it ends before a whole answer, when the answer is not 200, or when
 * it takes more than 5 s.
 *
 * FILE: one record per request, in the order they ended: int64 due time
 * (CLOCK_MONOTONIC ns), int32 latency (us), int32 flags (1 failed,
 * 2 retried). stdout: one JSON line of totals. Exit 0, or 2 on bad usage. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define TIMEOUT_NS 5000000000LL

typedef struct Slot {
    int fd;
    bool busy, reused, retried;
    int64_t due_ns, sent_ns;
    char in[8192];
    size_t in_len;
} Slot;

typedef struct Record {
    int64_t due_ns;
    int32_t lat_us, flags;
} Record;

static struct sockaddr_in addr;
static char request[512];
static size_t request_len;
static bool keepalive;
static FILE *out;
static unsigned long long n_ok, n_failed, n_retried, n_refused;
static int ep;

static int64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void slot_close(Slot *s)
{
    if (s->fd >= 0)
        close(s->fd); /* leaves the epoll set with it */
    s->fd = -1;
    s->in_len = 0;
}

static void finish(Slot *s, bool ok)
{
    Record r = {.due_ns = s->due_ns,
                .lat_us = (int32_t)((now_ns() - s->due_ns) / 1000),
                .flags = (ok ? 0 : 1) | (s->retried ? 2 : 0)};
    if (fwrite(&r, sizeof(r), 1, out) != 1) {
        perror("http-load: write");
        exit(1);
    }
    ok ? n_ok++ : n_failed++;
    n_retried += s->retried;
    s->busy = false;
    s->retried = false;
    s->in_len = 0;
    if (!ok || !keepalive)
        slot_close(s);
}

/* Connects (non-blocking) and sends the request once writable. */
static bool dial(Slot *s)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0), one = 1;
    if (fd < 0)
        return false;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 && errno != EINPROGRESS) {
        n_refused += errno == ECONNREFUSED;
        close(fd);
        return false;
    }
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.ptr = s};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
        close(fd);
        return false;
    }
    s->fd = fd;
    s->reused = false;
    s->sent_ns = 0;
    return true;
}

static bool send_request(Slot *s)
{
    ssize_t n = send(s->fd, request, request_len, MSG_NOSIGNAL);
    if (n != (ssize_t)request_len)
        return false; /* a request this small goes in one piece, or the connection is bad */
    s->sent_ns = now_ns();
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = s};
    return epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev) == 0;
}

static void start(Slot *s, int64_t due)
{
    s->busy = true;
    s->due_ns = due;
    s->in_len = 0;
    if (s->fd >= 0) { /* keep-alive: the connection of the last request */
        s->reused = true;
        if (!send_request(s)) {
            slot_close(s);
            s->retried = true;
        } else {
            return;
        }
    }
    if (!dial(s))
        finish(s, false);
}

/* A whole answer in s->in? 1 yes (ok says 200), 0 not yet, -1 bad. */
static int parse(Slot *s, bool *ok, bool *close_after)
{
    s->in[s->in_len] = 0;
    char *end = strstr(s->in, "\r\n\r\n");
    if (!end)
        return s->in_len >= sizeof(s->in) - 1 ? -1 : 0;
    if (strncmp(s->in, "HTTP/1.", 7) != 0)
        return -1;
    *ok = strncmp(s->in + 8, " 200", 4) == 0;
    long length = 0;
    *close_after = false;
    for (char *l = strstr(s->in, "\r\n") + 2; l < end; l = strstr(l, "\r\n") + 2) {
        if (strncasecmp(l, "Content-Length:", 15) == 0)
            length = strtol(l + 15, NULL, 10);
        else if (strncasecmp(l, "Connection:", 11) == 0 && strstr(l, "close") && strstr(l, "close") < strstr(l, "\r\n"))
            *close_after = true;
    }
    size_t have = s->in_len - (size_t)(end + 4 - s->in);
    if (have < (size_t)length)
        return 0;
    return 1;
}

static void on_event(Slot *s, uint32_t events)
{
    if (!s->busy) { /* an idle keep-alive connection: closed by the server */
        slot_close(s);
        return;
    }
    if (!s->sent_ns && (events & EPOLLOUT) && !(events & (EPOLLERR | EPOLLHUP))) {
        if (!send_request(s))
            finish(s, false);
        return;
    }
    ssize_t n = s->sent_ns ? recv(s->fd, s->in + s->in_len, sizeof(s->in) - 1 - s->in_len, 0) : -1;
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        if (s->sent_ns == 0 && (events & EPOLLERR))
            n_refused++;
        if (s->in_len == 0 && s->reused && !s->retried) { /* the server closed it as we sent: again, anew */
            slot_close(s);
            s->retried = true;
            if (!dial(s))
                finish(s, false);
            return;
        }
        finish(s, false);
        return;
    }
    s->in_len += (size_t)n;
    bool ok = false, close_after = false;
    int r = parse(s, &ok, &close_after);
    if (r == 0)
        return;
    if (r < 0)
        ok = false;
    if (close_after)
        slot_close(s);
    finish(s, ok);
}

int main(int argc, char **argv)
{
    int port = 0, conns = 64;
    double rate = 2000;
    long duration_ms = 10000;
    const char *path = "/", *out_path = NULL, *mode = "close";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--port"))
            port = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--rate"))
            rate = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--duration-ms"))
            duration_ms = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--conns"))
            conns = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--mode"))
            mode = argv[i + 1];
        else if (!strcmp(argv[i], "--path"))
            path = argv[i + 1];
        else if (!strcmp(argv[i], "--out"))
            out_path = argv[i + 1];
        else {
            fprintf(stderr, "http-load: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    keepalive = !strcmp(mode, "keepalive");
    if (port <= 0 || port > 65535 || rate <= 0 || conns <= 0 || !out_path ||
        (!keepalive && strcmp(mode, "close") != 0)) {
        fprintf(stderr, "usage: http-load --port P [--rate R] [--duration-ms D] [--mode close|keepalive] "
                        "[--conns N] [--path P] --out FILE\n");
        return 2;
    }
    if (!(out = fopen(out_path, "w"))) {
        perror("http-load: --out");
        return 2;
    }
    addr = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    request_len = (size_t)snprintf(request, sizeof(request), "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s\r\n", path,
                                   keepalive ? "" : "Connection: close\r\n");
    if ((ep = epoll_create1(EPOLL_CLOEXEC)) < 0) {
        perror("http-load: epoll");
        return 1;
    }
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    struct epoll_event tev = {.events = EPOLLIN, .data.ptr = NULL};
    if (tfd < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &tev) < 0) {
        perror("http-load: timerfd");
        return 1;
    }
    Slot *slots = calloc((size_t)conns, sizeof(Slot));
    for (int k = 0; k < conns; k++)
        slots[k].fd = -1;
    int64_t t0 = now_ns(), end = t0 + duration_ms * 1000000LL, period = (int64_t)(1e9 / rate);
    unsigned long long next = 0, waited = 0; /* requests due but without a free slot yet */
    for (;;) {
        int64_t now = now_ns();
        bool busy = false;
        for (int k = 0; k < conns; k++)
            if (slots[k].busy && now - slots[k].due_ns > TIMEOUT_NS)
                finish(&slots[k], false);
        for (int k = 0; k < conns && t0 + (int64_t)next * period <= now && t0 + (int64_t)next * period < end; k++)
            if (!slots[k].busy) {
                start(&slots[k], t0 + (int64_t)next * period);
                next++;
            }
        if (t0 + (int64_t)next * period <= now && t0 + (int64_t)next * period < end)
            waited++;
        for (int k = 0; k < conns; k++)
            busy |= slots[k].busy;
        if (now >= end && !busy)
            break;
        /* Woken by an answer or by the timer at the next due time (ns
         * precise: epoll_wait's ms would add up to 1 ms to latencies, or
         * spin). */
        int64_t due = t0 + (int64_t)next * period;
        if (due >= end)
            due = now + 10000000;
        struct itimerspec its = {.it_value = {.tv_sec = due / 1000000000, .tv_nsec = due % 1000000000}};
        if (due <= now)
            its.it_value = (struct timespec){0, 1}; /* at once */
        (void)timerfd_settime(tfd, due <= now ? 0 : TFD_TIMER_ABSTIME, &its, NULL);
        struct epoll_event evs[64];
        int n = epoll_wait(ep, evs, 64, -1);
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL) {
                uint64_t ticks;
                (void)!read(tfd, &ticks, sizeof(ticks));
                continue;
            }
            on_event(evs[i].data.ptr, evs[i].events);
        }
    }
    fclose(out);
    free(slots);
    printf("{\"sent\": %llu, \"ok\": %llu, \"failed\": %llu, \"retried\": %llu, \"refused\": %llu, \"slot_waits\": "
           "%llu}\n",
           n_ok + n_failed, n_ok, n_failed, n_retried, n_refused, waited);
    return 0;
}
