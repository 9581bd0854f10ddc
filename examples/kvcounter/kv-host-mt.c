/* kv-host-mt: the kvcounter service served by a pool of worker threads,
 * the threaded host of docs/runtime.md ("Threaded hosts").
 *
 * Usage: kv-host-mt [--listen HOST:PORT] [--threads N]   (N: 1 to 64, default 4)
 *
 * Each worker has its own epoll set: the listening sockets (EPOLLEXCLUSIVE,
 * so one worker accepts each connection and serves it from then on), its
 * clients, and its rel_thread_fd(), through which the runtime wakes it
 * when it must park. It calls rel_thread_safepoint() once per turn of its
 * loop, after the ready events, when no request is half done, and waits
 * in epoll_wait between rel_thread_wait_begin() and _end(), so that a
 * pause does not wake an idle worker. The main thread only dispatches
 * reld's commands.
 *
 * kv_server's state is a plain table, not made for concurrent calls, so
 * the workers take turns calling it (kv_lock); reading, parsing and
 * writing run in parallel. Everything the runtime does to the module
 * (load, code_change, health) runs with every worker parked, so the
 * module itself needs no lock for that. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "kv_api.h"
#include "reld-runtime.h"

#define MAX_LISTEN  8
#define MAX_THREADS 64
#define BUF         65536

typedef struct Client {
    struct Client *prev, *next; /* the worker's clients */
    int fd;
    bool want_out; /* EPOLLOUT asked: replies wait in out */
    char in[BUF];
    size_t in_len;
    char out[BUF];
    size_t out_len;
} Client;

typedef struct Pool {
    RelRuntime *rt;
    RelModule *kv;
    pthread_mutex_t kv_lock;
    int listeners[MAX_LISTEN];
    size_t n_listen;
    int stop; /* eventfd: readable when the workers must end */
} Pool;

static int stop_pipe[2] = {-1, -1}; /* SIGTERM's way to the main thread */

static void on_term(int sig)
{
    char c = 1;
    (void)!write(stop_pipe[1], &c, 1);
}

static int listen_on(const char *spec)
{
    char host[256];
    const char *colon = strrchr(spec, ':');
    if (!colon || (size_t)(colon - spec) >= sizeof(host))
        return -EINVAL;
    memcpy(host, spec, (size_t)(colon - spec));
    host[colon - spec] = 0;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1)
        return -EINVAL;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    if (fd < 0)
        return -errno;
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, 512) < 0) {
        int r = -errno;
        close(fd);
        return r;
    }
    return fd;
}

/* systemd's socket passing: fds 3 .. 3+LISTEN_FDS-1, for our pid. */
static size_t inherited_listeners(int *fds)
{
    const char *pid = getenv("LISTEN_PID"), *n = getenv("LISTEN_FDS");
    if (!pid || !n || atol(pid) != (long)getpid())
        return 0;
    size_t k = 0;
    for (long i = 0; i < atol(n) && k < MAX_LISTEN; i++)
        fds[k++] = 3 + (int)i;
    return k;
}

static size_t serve(Pool *p, const char *line, size_t len, char *out, size_t outsz)
{
    pthread_mutex_lock(&p->kv_lock);
    const KvServerApi *api = rel_module_api(p->kv);
    size_t n = api ? api->handle(rel_module_state(p->kv), line, len, out, outsz)
                   : (size_t)snprintf(out, outsz, "ERR kv_server is not loaded\n");
    pthread_mutex_unlock(&p->kv_lock);
    return n;
}

/* Reads what a client sent, answers each complete line. false: close it. */
static bool client_io(Pool *p, Client *c)
{
    for (;;) {
        ssize_t n = read(c->fd, c->in + c->in_len, sizeof(c->in) - c->in_len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            break;
        if (n <= 0)
            return false;
        c->in_len += (size_t)n;
        char *start = c->in, *nl;
        while ((nl = memchr(start, '\n', c->in_len - (size_t)(start - c->in)))) {
            size_t len = (size_t)(nl - start);
            if (len && start[len - 1] == '\r')
                len--;
            if (sizeof(c->out) - c->out_len < 4096)
                return false; /* the client does not read its replies */
            c->out_len += serve(p, start, len, c->out + c->out_len, sizeof(c->out) - c->out_len);
            start = nl + 1;
        }
        c->in_len -= (size_t)(start - c->in);
        memmove(c->in, start, c->in_len);
        if (c->in_len == sizeof(c->in))
            return false; /* a line longer than the buffer */
    }
    while (c->out_len) {
        ssize_t n = write(c->fd, c->out, c->out_len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            break; /* the rest when the socket is writable (EPOLLOUT) */
        if (n <= 0)
            return false;
        memmove(c->out, c->out + n, c->out_len - (size_t)n);
        c->out_len -= (size_t)n;
    }
    return true;
}

/* epoll's data: a listener index, the thread fd, the stop fd, or a client. */
enum { TAG_LISTEN = 1, TAG_THREAD, TAG_STOP };

static void client_add(Client **head, Client *c)
{
    c->next = *head;
    if (*head)
        (*head)->prev = c;
    *head = c;
}

static void client_drop(Client **head, Client *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        *head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    close(c->fd); /* leaves the epoll set */
    free(c);
}

static void *worker(void *arg)
{
    Pool *p = arg;
    RelThread *t = NULL;
    int r = p->rt ? rel_thread_register(p->rt, NULL, &t) : 0;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (r < 0 || ep < 0) {
        fprintf(stderr, "kv-host-mt: a worker cannot start: %s\n", strerror(r < 0 ? -r : errno));
        exit(1);
    }
    struct epoll_event e = {.events = EPOLLIN, .data.u64 = TAG_STOP};
    bool ok = epoll_ctl(ep, EPOLL_CTL_ADD, p->stop, &e) == 0;
    e.data.u64 = TAG_THREAD;
    ok = ok && (!t || epoll_ctl(ep, EPOLL_CTL_ADD, rel_thread_fd(t), &e) == 0);
    for (size_t i = 0; ok && i < p->n_listen; i++) {
        e = (struct epoll_event){.events = EPOLLIN | EPOLLEXCLUSIVE, .data.u64 = TAG_LISTEN};
        ok = epoll_ctl(ep, EPOLL_CTL_ADD, p->listeners[i], &e) == 0;
    }
    if (!ok) {
        fprintf(stderr, "kv-host-mt: a worker cannot watch its fds: %s\n", strerror(errno));
        exit(1);
    }
    Client *clients = NULL;
    for (bool stopping = false; !stopping;) {
        struct epoll_event ev[64];
        /* Blocked at a safe point: a pause neither wakes this thread nor
         * waits for it; it parks on waking if one is under way. */
        rel_thread_wait_begin(t);
        int n = epoll_wait(ep, ev, 64, -1);
        rel_thread_wait_end(t);
        for (int i = 0; i < n; i++) {
            uint64_t tag = ev[i].data.u64;
            if (tag == TAG_STOP) {
                stopping = true;
            } else if (tag == TAG_LISTEN) {
                for (size_t l = 0; l < p->n_listen; l++)
                    for (int fd; (fd = accept4(p->listeners[l], NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0;) {
                        int one = 1;
                        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                        Client *c = calloc(1, sizeof(*c));
                        struct epoll_event ce = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
                        if (!c || (c->fd = fd, epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ce) < 0)) {
                            close(fd);
                            free(c);
                            continue;
                        }
                        client_add(&clients, c);
                    }
            } else if (tag != TAG_THREAD) { /* the thread fd: the safe point below parks */
                Client *c = ev[i].data.ptr;
                if (!client_io(p, c)) {
                    client_drop(&clients, c);
                    continue;
                }
                if (c->want_out != (c->out_len > 0)) {
                    c->want_out = c->out_len > 0;
                    struct epoll_event ce = {.events = EPOLLIN | EPOLLRDHUP | (c->want_out ? EPOLLOUT : 0u),
                                             .data.ptr = c};
                    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ce) < 0)
                        client_drop(&clients, c);
                }
            }
        }
        /* A safe point: every ready request answered, none half done. */
        rel_thread_safepoint(t);
    }
    while (clients)
        client_drop(&clients, clients);
    close(ep);
    rel_thread_unregister(t);
    return NULL;
}

int main(int argc, char **argv)
{
    Pool p = {.kv_lock = PTHREAD_MUTEX_INITIALIZER};
    p.n_listen = inherited_listeners(p.listeners);
    long n_threads = 4;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc && p.n_listen < MAX_LISTEN) {
            int fd = listen_on(argv[++i]);
            if (fd < 0) {
                fprintf(stderr, "kv-host-mt: cannot listen on %s: %s\n", argv[i], strerror(-fd));
                return 1;
            }
            p.listeners[p.n_listen++] = fd;
        } else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
            char *end;
            n_threads = strtol(argv[++i], &end, 10);
            if (*end || n_threads < 1 || n_threads > MAX_THREADS) {
                fprintf(stderr, "kv-host-mt: --threads takes 1 to %d, not '%s'\n", MAX_THREADS, argv[i]);
                return 2;
            }
        } else {
            fprintf(stderr, "usage: kv-host-mt [--listen HOST:PORT] [--threads N]\n");
            return 2;
        }
    }
    if (!p.n_listen) {
        fprintf(stderr, "kv-host-mt: no listening socket (LISTEN_FDS or --listen)\n");
        return 2;
    }
    for (size_t i = 0; i < p.n_listen; i++)
        (void)fcntl(p.listeners[i], F_SETFL, fcntl(p.listeners[i], F_GETFL) | O_NONBLOCK);
    if (pipe2(stop_pipe, O_CLOEXEC) < 0 || (p.stop = eventfd(0, EFD_CLOEXEC)) < 0) {
        perror("kv-host-mt: pipe");
        return 1;
    }
    /* Signals go to the main thread: the workers block them. */
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_term);
    signal(SIGINT, on_term);

    char err[512] = "";
    int r = rel_runtime_new(&p.rt, err, sizeof(err));
    if (r < 0) {
        fprintf(stderr, "kv-host-mt: %s\n", *err ? err : strerror(-r));
        return 1;
    }
    if (!(p.kv = rel_runtime_module(p.rt, "kv_server"))) {
        fprintf(stderr, "kv-host-mt: no kv_server module (RELD_MODULES)\n");
        return 1;
    }
    sigset_t term, old;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    sigaddset(&term, SIGINT);
    pthread_sigmask(SIG_BLOCK, &term, &old);
    pthread_t th[MAX_THREADS];
    for (long i = 0; i < n_threads; i++)
        if ((r = pthread_create(&th[i], NULL, worker, &p)) != 0) {
            fprintf(stderr, "kv-host-mt: cannot start worker %ld: %s\n", i, strerror(r));
            return 1;
        }
    pthread_sigmask(SIG_SETMASK, &old, NULL);

    /* The main thread dispatches reld's commands, and waits for SIGTERM. */
    for (;;) {
        struct pollfd pfd[2] = {{.fd = stop_pipe[0], .events = POLLIN}, {.fd = rel_runtime_fd(p.rt), .events = POLLIN}};
        if (poll(pfd, pfd[1].fd >= 0 ? 2 : 1, -1) < 0 && errno != EINTR)
            break;
        if (pfd[0].revents)
            break;
        if ((pfd[1].revents & (POLLIN | POLLHUP)) && rel_runtime_dispatch(p.rt) < 0)
            fprintf(stderr, "kv-host-mt: reld closed the control channel; going on unmanaged\n");
    }
    uint64_t one = 1;
    (void)!write(p.stop, &one, sizeof(one)); /* an eventfd stays readable: every worker sees it */
    for (long i = 0; i < n_threads; i++)
        pthread_join(th[i], NULL);
    rel_runtime_free(p.rt);
    return 0;
}
