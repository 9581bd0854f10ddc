/* kv-host: the process of the kvcounter example service. A TCP server of
 * line requests, answered by the module kv_server through the reld
 * runtime, so that its code can be replaced while it serves.
 *
 * Usage: kv-host [--listen HOST:PORT] [--direct PATH]
 *
 * Listening sockets come from reld (LISTEN_FDS, systemd's convention) or
 * from --listen. Modules come from RELD_MODULES (docs/runtime.md).
 * --direct PATH loads kv_server from PATH itself and calls it with no
 * runtime at all: the baseline of the overhead benchmark.
 *
 * Besides kv_server's requests it answers two requests for tests:
 *   HOLD ms   the current kv_server code counts as in use (pinned) for ms
 *             milliseconds, as a long request running old code would;
 *   SLEEP ms  the process computes for ms milliseconds without reaching a
 *             safe point, so that a suspend can time out. */
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "kv_api.h"
#include "reld-runtime.h"

#define MAX_LISTEN 8
#define BUF        65536

typedef struct Client {
    int fd;
    char in[BUF];
    size_t in_len;
    char out[BUF];
    size_t out_len;
} Client;

typedef struct Hold {
    RelVersion *version;
    long long until_ms;
} Hold;

static volatile sig_atomic_t stopping;

static void on_term(int sig)
{
    stopping = 1;
}

static long long now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000LL + t.tv_nsec / 1000000;
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
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
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
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    return k;
}

/* The handler in use: through the runtime, or fixed (--direct). */
typedef struct Handler {
    RelRuntime *rt;
    RelModule *kv;
    const KvServerApi *direct_api;
    void *direct_state;
} Handler;

static size_t serve(Handler *h, Hold **holds, size_t *n_holds, const char *line, size_t len, char *out, size_t outsz)
{
    if (len > 5 && memcmp(line, "HOLD ", 5) == 0 && h->rt) {
        RelVersion *v = rel_module_pin(h->kv);
        Hold *grown = realloc(*holds, (*n_holds + 1) * sizeof(**holds));
        if (!v || !grown) {
            rel_version_unpin(v);
            if (grown)
                *holds = grown;
            return (size_t)snprintf(out, outsz, "ERR cannot hold\n");
        }
        *holds = grown;
        (*holds)[(*n_holds)++] = (Hold){.version = v, .until_ms = now_ms() + atol(line + 5)};
        return (size_t)snprintf(out, outsz, "OK held\n");
    }
    if (len > 6 && memcmp(line, "SLEEP ", 6) == 0) {
        struct timespec t = {.tv_sec = atol(line + 6) / 1000, .tv_nsec = atol(line + 6) % 1000 * 1000000L};
        while (nanosleep(&t, &t) < 0 && errno == EINTR)
            ;
        return (size_t)snprintf(out, outsz, "OK slept\n");
    }
    const KvServerApi *api = h->direct_api ? h->direct_api : rel_module_api(h->kv);
    void *state = h->direct_api ? h->direct_state : rel_module_state(h->kv);
    if (!api)
        return (size_t)snprintf(out, outsz, "ERR kv_server is not loaded\n");
    return api->handle(state, line, len, out, outsz);
}

static void client_close(Client **clients, size_t *n, size_t i)
{
    close(clients[i]->fd);
    free(clients[i]);
    clients[i] = clients[--*n];
}

/* Reads what a client sent, answers each complete line. false: close it. */
static bool client_read(Handler *h, Hold **holds, size_t *n_holds, Client *c)
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
            c->out_len += serve(h, holds, n_holds, start, len, c->out + c->out_len, sizeof(c->out) - c->out_len);
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
            break;
        if (n <= 0)
            return false;
        memmove(c->out, c->out + n, c->out_len - (size_t)n);
        c->out_len -= (size_t)n;
    }
    return true;
}

int main(int argc, char **argv)
{
    int listeners[MAX_LISTEN];
    size_t n_listen = inherited_listeners(listeners);
    const char *direct = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc && n_listen < MAX_LISTEN) {
            int fd = listen_on(argv[++i]);
            if (fd < 0) {
                fprintf(stderr, "kv-host: cannot listen on %s: %s\n", argv[i], strerror(-fd));
                return 1;
            }
            listeners[n_listen++] = fd;
        } else if (strcmp(argv[i], "--direct") == 0 && i + 1 < argc) {
            direct = argv[++i];
        } else {
            fprintf(stderr, "usage: kv-host [--listen HOST:PORT] [--direct PATH]\n");
            return 2;
        }
    }
    if (!n_listen) {
        fprintf(stderr, "kv-host: no listening socket (LISTEN_FDS or --listen)\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_term);
    signal(SIGINT, on_term);

    Handler h = {0};
    char err[512] = "";
    if (direct) {
        void *dl = dlopen(direct, RTLD_NOW | RTLD_LOCAL);
        const RelModuleDesc *d = dl ? dlsym(dl, "reld_module") : NULL;
        if (!d || (d->init && d->init(&h.direct_state) < 0)) {
            fprintf(stderr, "kv-host: cannot use %s directly: %s\n", direct, dl ? "no descriptor" : dlerror());
            return 1;
        }
        h.direct_api = d->api;
    } else {
        int r = rel_runtime_new(&h.rt, err, sizeof(err));
        if (r < 0) {
            fprintf(stderr, "kv-host: %s\n", *err ? err : strerror(-r));
            return 1;
        }
        h.kv = rel_runtime_module(h.rt, "kv_server");
        if (!h.kv) {
            fprintf(stderr, "kv-host: no kv_server module (RELD_MODULES)\n");
            return 1;
        }
    }
    for (size_t i = 0; i < n_listen; i++)
        fcntl(listeners[i], F_SETFL, fcntl(listeners[i], F_GETFL) | O_NONBLOCK);

    Client **clients = NULL;
    size_t n_clients = 0;
    Hold *holds = NULL;
    size_t n_holds = 0;
    struct pollfd *pfd = NULL;
    while (!stopping) {
        size_t n = 0, cap = 1 + n_listen + n_clients;
        pfd = realloc(pfd, cap * sizeof(*pfd));
        if (!pfd)
            abort();
        int ctl = rel_runtime_fd(h.rt);
        pfd[n++] = (struct pollfd){.fd = ctl, .events = POLLIN};
        for (size_t i = 0; i < n_listen; i++)
            pfd[n++] = (struct pollfd){.fd = listeners[i], .events = POLLIN};
        for (size_t i = 0; i < n_clients; i++)
            pfd[n++] =
                (struct pollfd){.fd = clients[i]->fd, .events = (short)(POLLIN | (clients[i]->out_len ? POLLOUT : 0))};
        long long next = -1;
        for (size_t i = 0; i < n_holds; i++)
            if (next < 0 || holds[i].until_ms < next)
                next = holds[i].until_ms;
        int timeout = next < 0 ? -1 : (int)(next > now_ms() ? next - now_ms() : 0);
        if (poll(pfd, n, timeout) < 0 && errno != EINTR)
            break;

        for (size_t i = 0; i < n_holds;)
            if (holds[i].until_ms <= now_ms()) {
                rel_version_unpin(holds[i].version);
                holds[i] = holds[--n_holds];
            } else {
                i++;
            }
        for (size_t i = 0; i < n_listen; i++) {
            if (!(pfd[1 + i].revents & POLLIN))
                continue;
            for (int fd; (fd = accept4(listeners[i], NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0;) {
                int one = 1;
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                Client **grown = realloc(clients, (n_clients + 1) * sizeof(Client *));
                Client *c = calloc(1, sizeof(*c));
                if (!grown || !c) {
                    close(fd);
                    free(c);
                    if (grown)
                        clients = grown;
                    continue;
                }
                clients = grown;
                c->fd = fd;
                clients[n_clients++] = c;
            }
        }
        /* Clients in the poll set were the first n_clients_polled; those
         * accepted just now are served on the next turn. */
        size_t polled = n - 1 - n_listen;
        for (size_t i = polled; i-- > 0;) {
            short re = pfd[1 + n_listen + i].revents;
            if (re && !client_read(&h, &holds, &n_holds, clients[i]))
                client_close(clients, &n_clients, i);
        }
        /* A safe point: no request is half done. */
        if (ctl >= 0 && (pfd[0].revents & (POLLIN | POLLHUP)))
            if (rel_runtime_dispatch(h.rt) < 0)
                fprintf(stderr, "kv-host: reld closed the control channel; going on unmanaged\n");
    }
    for (size_t i = 0; i < n_holds; i++)
        rel_version_unpin(holds[i].version);
    while (n_clients)
        client_close(clients, &n_clients, 0);
    free(clients);
    free(holds);
    free(pfd);
    rel_runtime_free(h.rt);
    return 0;
}
