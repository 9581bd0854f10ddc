/* The runtime library of managed processes: module versions, and the
 * control protocol of docs/runtime.md. Every command and every module
 * callback runs inside rel_runtime_dispatch(), at the host's safe points,
 * on the thread that dispatches, with every registered thread that runs
 * the module parked (threaded hosts, below). One exception, for latency: opening and closing
 * shared objects (dlopen of a new version, dlclose of a purged one) take
 * 0.2-0.7 ms, time the host would serve no request, so a loader thread
 * does them. It answers load_object_code itself; the opened version is
 * adopted at the start of the next dispatch, which reld's next command
 * triggers (it sends one after the answer).
 *
 * A rehearsal (cmd "rehearse") forks a copy of the process that converts
 * the copy of the live state and exits; its result comes back on a pipe,
 * which rel_runtime_fd()'s epoll set holds beside the control channel, so
 * the host serves while the copy works and dispatch answers when it ends. */
#include "reld-runtime.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <link.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_LINE 65536

/* A rehearsal: at most 256 modules, at most an hour, 10 s unless asked;
 * what the copy reports is read up to 64 KiB. */
#define REHEARSE_MAX_MODULES 256
#define REHEARSE_MAX_MS      3600000
#define REHEARSE_DEFAULT_MS  10000
#define REHEARSE_MAX_REPORT  65536
#define HEALTH_MAX_MESSAGE   1024

struct RelVersion {
    RelModule *owner;
    void *dl;
    const RelModuleDesc *desc;
    int (*health)(void *state, char *msg, size_t msglen);
    int (*verify)(void *state, char *err, size_t errlen);
    atomic_uint pins; /* any thread pins and unpins */
};

struct RelModule {
    char *name;
    RelVersion *current; /* NULL after remove */
    RelVersion *old;     /* the previous current, until purged */
    RelVersion *staged;  /* loaded object code, not yet current */
    void *state;
    bool removed; /* written under the runtime's mods_lock: other threads look modules up */
    bool loading; /* a load_object_code is with the loader thread */
};

/* A registered serving thread (rel_thread_register). */
struct RelThread {
    RelRuntime *rt;
    RelThread *next;
    char **mods; /* the modules it runs; all of them when `all` */
    size_t n_mods;
    bool all;
    int efd;             /* written when the thread is wanted, drained when it was released */
    atomic_bool want;    /* set and cleared under Threads.lock, read at each safe point */
    atomic_bool waiting; /* between rel_thread_wait_begin and _end: blocked at a safe point */
    bool parked;         /* under Threads.lock */
};

/* The registered threads and what holds them: the suspension (the modules
 * of every suspend since the last resume) and the command being run. A
 * thread is wanted while a hold names a module it runs. */
typedef struct Threads {
    pthread_mutex_t lock;
    pthread_cond_t parked; /* a thread parked or left: the dispatcher counts again */
    pthread_cond_t resume; /* wants withdrawn: parked threads go on */
    RelThread *list;
    char **susp;
    size_t n_susp;
    bool susp_all; /* a suspension that could not copy its names holds every thread */
    bool cmd_hold;
    const char *cmd_module; /* NULL with cmd_hold: every module */
} Threads;

/* Work for the loader thread, in order: open (load_object_code) or close
 * (a version dropped). FIFO, so that closing a file and opening it again
 * happen in that order. */
typedef struct LoadJob {
    struct LoadJob *next;
    RelVersion *close; /* a close job: this version goes */
    /* An open job: */
    RelModule *module;
    char *name, *path, *want;
    char *id;        /* the request's id, as JSON text (no jansson value crosses threads) */
    void *in_use[2]; /* the module's current and old handles, when asked */
    RelVersion *opened;
} LoadJob;

typedef struct Loader {
    pthread_t thread;
    bool started, stopping;
    bool busy; /* the thread is inside a job (dlopen, dlclose) */
    pthread_mutex_t lock;
    pthread_cond_t wake, opened; /* work for the thread; a job on the done list */
    pthread_cond_t idle;         /* no job left nor under way */
    LoadJob *todo, **todo_tail;  /* for the thread */
    LoadJob *done;               /* opened, to adopt at the next dispatch */
} Loader;

/* The rehearsal under way, if any (pid != 0): the copy, the read end of
 * its report pipe, the timer of its deadline, and what it said so far. */
typedef struct Rehearsal {
    pid_t pid;
    int pipe, timer;
    json_t *id;
    int timeout_ms;
    long long fork_us, started_us;
    char *report; /* lines of JSON from the copy */
    size_t len;
} Rehearsal;

struct RelRuntime {
    int fd;
    int ep; /* epoll: fd, and a rehearsal's pipe and timer (rel_runtime_fd) */
    Rehearsal rehearsal;
    pthread_mutex_t send_lock; /* the host's thread and the loader's both answer */
    Loader loader;
    Threads threads;
    pthread_mutex_t mods_lock; /* mods and n_mods change on the dispatching thread; any thread looks up */
    RelModule **mods;
    size_t n_mods;
    bool suspended;
    long long suspended_at_us; /* when the suspension began: resume answers how long it held */
    char *in;
    size_t in_len;
    bool discarding; /* skipping the rest of an over-long line */
    RelHost host;
};

/* The registered thread running here (one runtime per thread). */
static __thread RelThread *this_thread;

/* Makes s valid UTF-8 in place: a byte that does not start or continue a
 * well-formed sequence (a message cut inside a character by a fixed-size
 * buffer, a path with other bytes) becomes '?'. A message that is not
 * UTF-8 cannot be put into JSON, and reld would wait for an answer that is
 * never sent. */
static void make_utf8(char *s)
{
    unsigned char *p = (unsigned char *)s;
    while (*p) {
        size_t n = *p < 0x80 ? 1 : (*p & 0xE0) == 0xC0 ? 2 : (*p & 0xF0) == 0xE0 ? 3 : (*p & 0xF8) == 0xF0 ? 4 : 0;
        bool ok = n > 0 && !(n == 2 && *p < 0xC2) && !(n == 4 && *p > 0xF4);
        for (size_t k = 1; ok && k < n; k++)
            ok = (p[k] & 0xC0) == 0x80;
        if (ok && n == 3)
            ok = !(p[0] == 0xE0 && p[1] < 0xA0) && !(p[0] == 0xED && p[1] >= 0xA0);
        if (ok && n == 4)
            ok = !(p[0] == 0xF0 && p[1] < 0x90) && !(p[0] == 0xF4 && p[1] >= 0x90);
        if (!ok) {
            *p++ = '?';
            continue;
        }
        p += n;
    }
}

static void say(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void say(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    make_utf8(err);
}

/* ---- modules and versions ---------------------------------------------- */

RelModule *rel_runtime_module(RelRuntime *rt, const char *name)
{
    if (!rt || !name)
        return NULL;
    RelModule *found = NULL;
    pthread_mutex_lock(&rt->mods_lock);
    for (size_t i = 0; i < rt->n_mods; i++)
        if (strcmp(rt->mods[i]->name, name) == 0) {
            found = rt->mods[i]->removed ? NULL : rt->mods[i];
            break;
        }
    pthread_mutex_unlock(&rt->mods_lock);
    return found;
}

/* On the dispatching thread, the only one that changes mods. */
static void set_removed(RelRuntime *rt, RelModule *m, bool removed)
{
    pthread_mutex_lock(&rt->mods_lock);
    m->removed = removed;
    pthread_mutex_unlock(&rt->mods_lock);
}

static RelModule *find_any(RelRuntime *rt, const char *name)
{
    for (size_t i = 0; i < rt->n_mods; i++)
        if (strcmp(rt->mods[i]->name, name) == 0)
            return rt->mods[i];
    return NULL;
}

const void *rel_module_api(const RelModule *m)
{
    return m && m->current ? m->current->desc->api : NULL;
}
void *rel_module_state(const RelModule *m)
{
    return m ? m->state : NULL;
}
const char *rel_module_version(const RelModule *m)
{
    return m && m->current ? m->current->desc->version : NULL;
}

RelVersion *rel_module_pin(RelModule *m)
{
    if (!m || !m->current)
        return NULL;
    RelVersion *v = m->current;
    atomic_fetch_add(&v->pins, 1);
    return v;
}

void rel_version_unpin(RelVersion *v)
{
    unsigned n = v ? atomic_load(&v->pins) : 0;
    while (n && !atomic_compare_exchange_weak(&v->pins, &n, n - 1))
        ;
}

const void *rel_version_api(const RelVersion *v)
{
    return v ? v->desc->api : NULL;
}

static const void *host_module_api(const RelHost *host, const char *name)
{
    return host ? rel_module_api(rel_runtime_module(host->ctx, name)) : NULL;
}
static void *host_module_state(const RelHost *host, const char *name)
{
    return host ? rel_module_state(rel_runtime_module(host->ctx, name)) : NULL;
}

/* The size of the descriptor's symbol in its object's symbol table, or 0
 * when it cannot be told (then its ABI field is trusted). A later ABI may
 * append fields: nothing past a descriptor's size is read. */
static size_t desc_size(const RelModuleDesc *d)
{
    Dl_info info;
    const ElfW(Sym) *sym = NULL;
    if (!dladdr1(d, &info, (void **)&sym, RTLD_DL_SYMENT) || !sym || info.dli_saddr != (const void *)d)
        return 0;
    return (size_t)sym->st_size;
}

/* Opens a shared object and checks its descriptor. Nothing of it runs but
 * its ELF constructors (which a module should not have). in_use: handles
 * the module has open now (current, old), which dlopen would hand back
 * for the same file. Touches no runtime state: the loader thread runs it. */
static int version_open(const char *name, const char *path, const char *want_version, void *const in_use[2],
                        RelVersion **ret, const char **code, char *err, size_t errlen)
{
    void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!dl) {
        *code = "dlopen";
        say(err, errlen, "cannot load %s: %s", path, dlerror());
        return -ENOEXEC;
    }
    const RelModuleDesc *d = dlsym(dl, "reld_module");
    size_t size = d ? desc_size(d) : 0;
    int r = 0;
    if (!d) {
        *code = "no_descriptor";
        say(err, errlen, "%s exports no reld_module descriptor", path);
        r = -ENOEXEC;
    } else if (d->abi != RELD_MODULE_ABI) {
        /* ABI 1's host callbacks took no context; a later ABI is unknown
         * here. Either would be called wrongly: refused, in one line. */
        *code = "abi";
        say(err, errlen, "%s has module ABI %u; this runtime loads module ABI %d only: rebuild the module against %s",
            path, d->abi, RELD_MODULE_ABI,
            d->abi < RELD_MODULE_ABI ? "this reld-runtime.h" : "the reld-runtime.h of its host");
        r = -EPROTO;
    } else if (size && size < RELD_MODULE_DESC_V2_SIZE) {
        *code = "abi";
        say(err, errlen, "%s: its reld_module has %zu bytes, fewer than module ABI %u's %zu", path, size, d->abi,
            RELD_MODULE_DESC_V2_SIZE);
        r = -EPROTO;
    } else if (!d->name || strcmp(d->name, name) != 0) {
        *code = "name";
        say(err, errlen, "%s is module '%s', not '%s'", path, d->name ? d->name : "(null)", name);
        r = -EINVAL;
    } else if (!d->version || (want_version && strcmp(d->version, want_version) != 0)) {
        *code = "version";
        say(err, errlen, "%s is version %s of %s, not %s", path, d->version ? d->version : "(null)", name,
            want_version);
        r = -EINVAL;
    } else if (in_use && (dl == in_use[0] || dl == in_use[1])) {
        /* dlopen hands back the mapping it already has for that file. */
        *code = "same_object";
        say(err, errlen, "%s is the object already loaded for %s", path, name);
        dlclose(dl); /* drops only our extra reference */
        return -EEXIST;
    }
    if (r < 0) {
        dlclose(dl);
        return r;
    }
    RelVersion *v = calloc(1, sizeof(*v));
    if (!v) {
        dlclose(dl);
        return -ENOMEM;
    }
    v->dl = dl;
    v->desc = d;
    v->health = d->health;
    v->verify = d->verify;
    *ret = v;
    return 0;
}

static void version_free(RelVersion *v)
{
    if (!v)
        return;
    dlclose(v->dl);
    free(v);
}

static void loader_push(RelRuntime *rt, LoadJob *job);

/* A version goes: closed by the loader thread when it runs, else here. */
static void version_close(RelRuntime *rt, RelVersion *v)
{
    if (!v)
        return;
    if (!rt->loader.started) {
        version_free(v);
        return;
    }
    LoadJob *job = calloc(1, sizeof(*job));
    if (!job) {
        version_free(v);
        return;
    }
    job->close = v;
    loader_push(rt, job);
}

static RelModule *module_add(RelRuntime *rt, const char *name)
{
    RelModule *m = find_any(rt, name);
    if (m) {
        set_removed(rt, m, false);
        return m;
    }
    m = calloc(1, sizeof(*m));
    char *n = strdup(name);
    /* Under the lock: realloc may free the array another thread reads. */
    pthread_mutex_lock(&rt->mods_lock);
    RelModule **mods = m && n ? realloc(rt->mods, (rt->n_mods + 1) * sizeof(RelModule *)) : NULL;
    if (mods)
        rt->mods = mods;
    if (mods && m && n) {
        m->name = n;
        rt->mods[rt->n_mods++] = m;
    }
    pthread_mutex_unlock(&rt->mods_lock);
    if (!mods || !m || !n) {
        free(m);
        free(n);
        return NULL;
    }
    return m;
}

/* Makes v the current version of a module that has none, with a fresh
 * state from init. */
static int module_start(RelModule *m, RelVersion *v, char *err, size_t errlen)
{
    void *state = NULL;
    if (v->desc->init) {
        int r = v->desc->init(&state);
        if (r < 0) {
            say(err, errlen, "init of %s %s failed: %s", m->name, v->desc->version, strerror(-r));
            return r;
        }
    }
    v->owner = m;
    m->current = v;
    m->state = state;
    return 0;
}

int rel_runtime_load(RelRuntime *rt, const char *name, const char *path, char *err, size_t errlen)
{
    RelModule *m = rel_runtime_module(rt, name);
    if (m && m->current) {
        say(err, errlen, "module %s is already loaded", name);
        return -EEXIST;
    }
    RelVersion *v;
    const char *code;
    int r = version_open(name, path, NULL, NULL, &v, &code, err, errlen);
    if (r < 0)
        return r;
    if (!(m = module_add(rt, name))) {
        version_close(rt, v);
        return -ENOMEM;
    }
    if (v->desc->attach)
        v->desc->attach(&rt->host);
    r = module_start(m, v, err, errlen);
    if (r < 0)
        version_close(rt, v);
    return r;
}

static long long now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000LL + t.tv_nsec / 1000;
}

/* ---- threaded hosts ------------------------------------------------------ */

/* Registered threads are parked at their safe points by holds: the
 * suspension, and a command that changes a module's code or state. The
 * dispatching thread sets a hold, wakes the threads it wants (eventfd, for
 * those blocked in poll/epoll_wait), waits until each is parked, runs the
 * command, and withdraws the hold, which releases them with one
 * broadcast. A thread's fast path is one atomic load of its own `want`.
 *
 * The memory of modules (current version, state) is written only while
 * the threads that run the module are parked: the park and the release
 * go through Threads.lock, which orders those writes with the threads'
 * reads. */

static bool thread_runs(const RelThread *t, const char *module)
{
    if (t->all || !module)
        return true;
    for (size_t i = 0; i < t->n_mods; i++)
        if (strcmp(t->mods[i], module) == 0)
            return true;
    return false;
}

/* Under Threads.lock. */
static bool thread_wanted(const Threads *th, const RelThread *t)
{
    if (th->susp_all || (th->cmd_hold && thread_runs(t, th->cmd_module)))
        return true;
    for (size_t i = 0; i < th->n_susp; i++)
        if (thread_runs(t, th->susp[i]))
            return true;
    return false;
}

/* Under Threads.lock: each thread's want as the holds say; those newly
 * wanted are woken through their eventfd, those no longer wanted released
 * together. The dispatching thread is at a safe point: never wanted. */
static void threads_apply(Threads *th)
{
    bool released = false;
    for (RelThread *t = th->list; t; t = t->next) {
        bool w = t != this_thread && thread_wanted(th, t);
        if (w == atomic_load(&t->want))
            continue;
        atomic_store(&t->want, w);
        if (w && !atomic_load(&t->waiting)) {
            /* A waiting thread counts as parked, and parks when its wait
             * ends: no need to wake it. Cannot fail: the counter is far
             * from its limit. */
            uint64_t one = 1;
            (void)!write(t->efd, &one, sizeof(one));
        } else if (!w) {
            released = true;
        }
    }
    if (released)
        pthread_cond_broadcast(&th->resume);
}

/* Under Threads.lock: until every wanted thread is parked, or waiting
 * (blocked at a safe point: it parks when its wait ends). want is stored
 * before waiting is loaded here, and the thread stores waiting before it
 * loads want (all sequentially consistent): one of the two sees the
 * other. */
static void threads_wait_parked(Threads *th)
{
    for (;;) {
        bool all = true;
        for (RelThread *t = th->list; t && all; t = t->next)
            all = !atomic_load(&t->want) || t->parked || atomic_load(&t->waiting);
        if (all)
            return;
        pthread_cond_wait(&th->parked, &th->lock);
    }
}

/* Parks the threads that run module (NULL: every thread) for the command
 * about to run; a no-op for threads the suspension holds already. */
static void hold_threads(RelRuntime *rt, const char *module)
{
    Threads *th = &rt->threads;
    pthread_mutex_lock(&th->lock);
    th->cmd_hold = true;
    th->cmd_module = module;
    threads_apply(th);
    threads_wait_parked(th);
    pthread_mutex_unlock(&th->lock);
}

static void release_threads(RelRuntime *rt)
{
    Threads *th = &rt->threads;
    pthread_mutex_lock(&th->lock);
    th->cmd_hold = false;
    th->cmd_module = NULL;
    threads_apply(th);
    pthread_mutex_unlock(&th->lock);
}

static void free_names(char **names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

/* The suspension holds these modules too, and waits until their threads
 * are parked. -ENOMEM: it holds every thread instead (safe, wider). */
static void suspend_threads(RelRuntime *rt, const char *const *names, size_t n)
{
    Threads *th = &rt->threads;
    pthread_mutex_lock(&th->lock);
    char **grown = realloc(th->susp, (th->n_susp + n) * sizeof(char *));
    if (grown)
        th->susp = grown;
    for (size_t i = 0; i < n; i++) {
        char *copy = grown ? strdup(names[i]) : NULL;
        if (!copy) {
            th->susp_all = true;
            break;
        }
        th->susp[th->n_susp++] = copy;
    }
    threads_apply(th);
    threads_wait_parked(th);
    pthread_mutex_unlock(&th->lock);
}

static void resume_threads(RelRuntime *rt)
{
    Threads *th = &rt->threads;
    pthread_mutex_lock(&th->lock);
    free_names(th->susp, th->n_susp);
    th->susp = NULL;
    th->n_susp = 0;
    th->susp_all = false;
    threads_apply(th);
    pthread_mutex_unlock(&th->lock);
}

static void thread_drain(RelThread *t)
{
    uint64_t n;
    while (read(t->efd, &n, sizeof(n)) < 0 && errno == EINTR)
        ;
}

/* Parked until no hold wants the thread. Its eventfd is drained after the
 * release and `want` looked at again: a hold set meanwhile either is seen
 * here or wrote the eventfd after the drain, so the thread's poll wakes
 * for it. */
static void thread_park(RelThread *t)
{
    Threads *th = &t->rt->threads;
    while (atomic_load(&t->want)) {
        pthread_mutex_lock(&th->lock);
        t->parked = true;
        pthread_cond_broadcast(&th->parked);
        while (atomic_load(&t->want))
            pthread_cond_wait(&th->resume, &th->lock);
        t->parked = false;
        pthread_mutex_unlock(&th->lock);
        thread_drain(t);
    }
}

void rel_thread_safepoint(RelThread *t)
{
    if (t && atomic_load_explicit(&t->want, memory_order_acquire))
        thread_park(t);
}

void rel_thread_wait_begin(RelThread *t)
{
    if (!t)
        return;
    rel_thread_safepoint(t); /* a hold already set: parked here */
    atomic_store(&t->waiting, true);
    if (atomic_load(&t->want)) {
        /* A hold came between the two, and its dispatcher may have
         * looked before the store: it counts again. */
        Threads *th = &t->rt->threads;
        pthread_mutex_lock(&th->lock);
        pthread_cond_broadcast(&th->parked);
        pthread_mutex_unlock(&th->lock);
    }
}

void rel_thread_wait_end(RelThread *t)
{
    if (!t)
        return;
    atomic_store(&t->waiting, false);
    rel_thread_safepoint(t); /* a hold set while it waited: parked before it goes on */
}

int rel_thread_fd(const RelThread *t)
{
    return t ? t->efd : -1;
}

static void thread_free(RelThread *t)
{
    if (t->efd >= 0)
        close(t->efd);
    free_names(t->mods, t->n_mods);
    free(t);
}

int rel_thread_register(RelRuntime *rt, const char *const *modules, RelThread **ret)
{
    if (!rt || !ret || this_thread)
        return -EINVAL;
    RelThread *t = calloc(1, sizeof(*t));
    if (!t)
        return -ENOMEM;
    t->rt = rt;
    t->all = !modules;
    t->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (t->efd < 0) {
        int e = errno;
        free(t);
        return -e;
    }
    size_t n = 0;
    while (modules && modules[n])
        n++;
    if (n && !(t->mods = calloc(n, sizeof(char *)))) {
        thread_free(t);
        return -ENOMEM;
    }
    for (; t->n_mods < n; t->n_mods++)
        if (!(t->mods[t->n_mods] = strdup(modules[t->n_mods]))) {
            thread_free(t);
            return -ENOMEM;
        }
    Threads *th = &rt->threads;
    pthread_mutex_lock(&th->lock);
    t->next = th->list;
    th->list = t;
    atomic_store(&t->want, thread_wanted(th, t));
    pthread_mutex_unlock(&th->lock);
    this_thread = t;
    *ret = t;
    rel_thread_safepoint(t); /* a hold in place: parked at once */
    return 0;
}

void rel_thread_unregister(RelThread *t)
{
    if (!t)
        return;
    Threads *th = &t->rt->threads;
    pthread_mutex_lock(&th->lock);
    for (RelThread **p = &th->list; *p; p = &(*p)->next)
        if (*p == t) {
            *p = t->next;
            break;
        }
    pthread_cond_broadcast(&th->parked); /* a dispatcher waiting for it counts again */
    pthread_mutex_unlock(&th->lock);
    if (this_thread == t)
        this_thread = NULL;
    thread_free(t);
}

/* ---- the control channel ----------------------------------------------- */

static void send_json(RelRuntime *rt, json_t *msg)
{
    char *text = json_dumps(msg, JSON_COMPACT);
    json_decref(msg);
    if (!text || rt->fd < 0) {
        free(text);
        return;
    }
    size_t len = strlen(text);
    text[len++] = '\n'; /* json_dumps leaves room: it allocated len + 1 */
    pthread_mutex_lock(&rt->send_lock);
    for (size_t off = 0; off < len;) {
        ssize_t n = send(rt->fd, text + off, len - off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN) {
            struct pollfd p = {.fd = rt->fd, .events = POLLOUT};
            poll(&p, 1, 1000);
            continue;
        }
        if (n <= 0)
            break; /* reld is gone; the read side notices */
        off += (size_t)n;
    }
    pthread_mutex_unlock(&rt->send_lock);
    free(text);
}

static json_t *modules_json(RelRuntime *rt);

static void reply_ok(RelRuntime *rt, json_t *id, json_t *fields)
{
    json_t *m = fields ? fields : json_object();
    json_object_set(m, "id", id ? id : json_null());
    json_object_set_new(m, "ok", json_true());
    send_json(rt, m);
}

/* The reply to a command that changed what the process runs (load,
 * drop_object_code, purge, remove, revert): with the module list as it is
 * now, so reld knows without asking. suspend, code_change and resume,
 * inside the pause, answer without it. */
static void reply_changed(RelRuntime *rt, json_t *id, json_t *fields)
{
    json_t *m = fields ? fields : json_object();
    json_object_set_new(m, "modules", modules_json(rt));
    reply_ok(rt, id, m);
}

static void reply_error(RelRuntime *rt, json_t *id, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void reply_error(RelRuntime *rt, json_t *id, const char *code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    make_utf8(msg);
    json_t *m = json_pack("{s:O, s:b, s:s, s:s}", "id", id ? id : json_null(), "ok", 0, "error", code, "message", msg);
    if (!m) /* never unanswered: the error code alone */
        m = json_pack("{s:O, s:b, s:s}", "id", id ? id : json_null(), "ok", 0, "error", code);
    send_json(rt, m);
}

static json_t *version_json(const RelVersion *v)
{
    return v ? json_string(v->desc->version) : json_null();
}

static json_t *modules_json(RelRuntime *rt)
{
    json_t *mods = json_array();
    for (size_t i = 0; i < rt->n_mods; i++) {
        RelModule *m = rt->mods[i];
        if (m->removed && !m->old)
            continue;
        json_array_append_new(mods, json_pack("{s:s, s:o, s:o, s:o, s:i, s:i}", "name", m->name, "version",
                                              version_json(m->current), "old_version", version_json(m->old),
                                              "staged_version", version_json(m->staged), "pins",
                                              m->current ? (int)atomic_load(&m->current->pins) : 0, "old_pins",
                                              m->old ? (int)atomic_load(&m->old->pins) : 0));
    }
    return mods;
}

static json_t *status_json(RelRuntime *rt)
{
    return json_pack("{s:i, s:i, s:b, s:o}", "protocol", RELD_PROTOCOL_VERSION, "pid", (int)getpid(), "suspended",
                     rt->suspended, "modules", modules_json(rt));
}

/* Drops a module's old version. Returns 0, -EBUSY (soft, in use), or does
 * not return (brutal, in use: the process ends, as OTP kills processes
 * still running old code; its supervisor restarts it). */
static int purge_old(RelRuntime *rt, RelModule *m, bool brutal, json_t *id)
{
    if (!m->old)
        return 0;
    if (atomic_load(&m->old->pins)) {
        if (!brutal)
            return -EBUSY;
        reply_ok(rt, id, json_pack("{s:b, s:b}", "purged", 1, "killed", 1));
        kill(getpid(), SIGKILL);
        _exit(137); /* not reached */
    }
    version_close(rt, m->old);
    m->old = NULL;
    return 0;
}

static bool parse_purge(json_t *req, const char *key, bool *brutal)
{
    json_t *p = json_object_get(req, key);
    if (!p) {
        *brutal = true; /* OTP's default */
        return true;
    }
    const char *s = json_string_value(p);
    if (s && strcmp(s, "brutal_purge") == 0)
        *brutal = true;
    else if (s && strcmp(s, "soft_purge") == 0)
        *brutal = false;
    else
        return false;
    return true;
}

/* ---- the loader thread ----------------------------------------------------- */

static void loader_push(RelRuntime *rt, LoadJob *job)
{
    Loader *l = &rt->loader;
    pthread_mutex_lock(&l->lock);
    *l->todo_tail = job;
    l->todo_tail = &job->next;
    pthread_cond_signal(&l->wake);
    pthread_mutex_unlock(&l->lock);
}

static void job_free(LoadJob *job)
{
    free(job->name);
    free(job->path);
    free(job->want);
    free(job->id);
    free(job);
}

static void *loader_main(void *arg)
{
    RelRuntime *rt = arg;
    Loader *l = &rt->loader;
    pthread_mutex_lock(&l->lock);
    for (;;) {
        l->busy = false;
        if (!l->todo)
            pthread_cond_broadcast(&l->idle);
        while (!l->todo && !l->stopping)
            pthread_cond_wait(&l->wake, &l->lock);
        LoadJob *job = l->todo;
        if (!job)
            break; /* stopping, nothing left */
        if (!(l->todo = job->next))
            l->todo_tail = &l->todo;
        l->busy = true;
        pthread_mutex_unlock(&l->lock);
        if (job->close) {
            version_free(job->close);
            free(job);
            pthread_mutex_lock(&l->lock);
            continue;
        }
        const char *code = "dlopen";
        char err[512];
        json_t *id = json_loads(job->id, JSON_DECODE_ANY, NULL);
        json_t *reply =
            version_open(job->name, job->path, job->want, job->in_use, &job->opened, &code, err, sizeof(err)) == 0
                ? json_pack("{s:o, s:b, s:s}", "id", id ? id : json_null(), "ok", 1, "version",
                            job->opened->desc->version)
                : json_pack("{s:o, s:b, s:s, s:s}", "id", id ? id : json_null(), "ok", 0, "error", code, "message",
                            err);
        pthread_mutex_lock(&l->lock);
        job->next = l->done; /* adopted before reld's next command is handled */
        l->done = job;
        pthread_cond_signal(&l->opened);
        pthread_mutex_unlock(&l->lock);
        send_json(rt, reply);
        pthread_mutex_lock(&l->lock);
    }
    pthread_mutex_unlock(&l->lock);
    return NULL;
}

/* On the host's thread, before every command: what the loader opened
 * becomes staged code. */
static void loader_adopt(RelRuntime *rt)
{
    Loader *l = &rt->loader;
    if (!l->started)
        return;
    pthread_mutex_lock(&l->lock);
    LoadJob *done = l->done;
    l->done = NULL;
    pthread_mutex_unlock(&l->lock);
    while (done) {
        LoadJob *job = done;
        done = job->next;
        RelModule *m = job->module;
        m->loading = false;
        if (job->opened) {
            job->opened->owner = m;
            m->staged = job->opened;
            if (m->staged->desc->attach)
                m->staged->desc->attach(&rt->host);
        }
        job_free(job);
    }
}

/* A command for a module whose new code is still being opened: reld sends
 * one only after load_object_code's answer, unless that answer was late
 * and reld gave up on it (then drop_object_code follows). Waits for it. */
static void loader_wait(RelRuntime *rt, RelModule *m)
{
    Loader *l = &rt->loader;
    while (m->loading) {
        pthread_mutex_lock(&l->lock);
        while (!l->done)
            pthread_cond_wait(&l->opened, &l->lock);
        pthread_mutex_unlock(&l->lock);
        loader_adopt(rt);
    }
}

/* Waits until the loader thread has no job left nor under way, so that a
 * fork finds it outside the dynamic loader (whose lock a copy could never
 * take) and outside our mutex. Only the host's thread queues jobs: none
 * comes between this and the fork. */
static void loader_quiesce(RelRuntime *rt)
{
    Loader *l = &rt->loader;
    if (!l->started)
        return;
    pthread_mutex_lock(&l->lock);
    while (l->todo || l->busy)
        pthread_cond_wait(&l->idle, &l->lock);
    pthread_mutex_unlock(&l->lock);
}

static int loader_start(RelRuntime *rt)
{
    Loader *l = &rt->loader;
    if (l->started)
        return 0;
    /* The thread only opens and closes objects: no signal is for it. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int r = pthread_create(&l->thread, NULL, loader_main, rt);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (r != 0)
        return -r;
    l->started = true;
    return 0;
}

static void loader_stop(RelRuntime *rt)
{
    Loader *l = &rt->loader;
    if (!l->started)
        return;
    pthread_mutex_lock(&l->lock);
    l->stopping = true;
    pthread_cond_signal(&l->wake);
    pthread_mutex_unlock(&l->lock);
    pthread_join(l->thread, NULL);
    loader_adopt(rt);
    l->started = false;
}

/* ---- commands ---------------------------------------------------------------- */

static void cmd_load_object_code(RelRuntime *rt, json_t *id, json_t *req, const char *name)
{
    const char *path = json_string_value(json_object_get(req, "path"));
    const char *want = json_string_value(json_object_get(req, "version"));
    if (!path)
        return reply_error(rt, id, "bad_request", "load_object_code needs a path");
    RelModule *m = find_any(rt, name);
    if (m && m->loading)
        return reply_error(rt, id, "already_staged", "%s already has new code being loaded", name);
    if (m && m->staged)
        return reply_error(rt, id, "already_staged", "%s already has new code waiting (version %s)", name,
                           m->staged->desc->version);
    LoadJob *job = calloc(1, sizeof(*job));
    if (!job || !(m = module_add(rt, name)) || loader_start(rt) < 0) {
        free(job);
        return reply_error(rt, id, "no_memory", "cannot hand %s to the loader thread", path);
    }
    if (!m->current)
        set_removed(rt, m, true); /* a new module: not visible before its load */
    m->loading = true;
    *job = (LoadJob){.module = m,
                     .name = strdup(name),
                     .path = strdup(path),
                     .want = want ? strdup(want) : NULL,
                     .id = json_dumps(id ? id : json_null(), JSON_ENCODE_ANY | JSON_COMPACT),
                     .in_use = {m->current ? m->current->dl : NULL, m->old ? m->old->dl : NULL}};
    if (!job->name || !job->path || (want && !job->want) || !job->id) {
        m->loading = false;
        job_free(job);
        return reply_error(rt, id, "no_memory", "out of memory");
    }
    loader_push(rt, job); /* it answers */
}

static void cmd_load(RelRuntime *rt, json_t *id, json_t *req, RelModule *m)
{
    bool brutal;
    if (!parse_purge(req, "pre_purge", &brutal))
        return reply_error(rt, id, "bad_request", "pre_purge must be soft_purge or brutal_purge");
    if (!m->staged)
        return reply_error(rt, id, "no_object_code", "no new code of %s was loaded (load_object_code)", m->name);
    if (!m->current) { /* add_module: a fresh start */
        char err[512];
        RelVersion *v = m->staged;
        m->staged = NULL;
        if (module_start(m, v, err, sizeof(err)) < 0) {
            version_close(rt, v);
            return reply_error(rt, id, "init_failed", "%s", err);
        }
        set_removed(rt, m, false);
        return reply_changed(rt, id, json_pack("{s:s}", "version", v->desc->version));
    }
    if (purge_old(rt, m, brutal, id) == -EBUSY)
        return reply_error(rt, id, "in_use", "old code of %s (version %s) is still in use; soft_purge refused", m->name,
                           m->old->desc->version);
    m->old = m->current;
    m->current = m->staged;
    m->staged = NULL;
    reply_changed(rt, id,
                  json_pack("{s:s, s:s}", "version", m->current->desc->version, "old_version", m->old->desc->version));
}

static void cmd_code_change(RelRuntime *rt, json_t *id, json_t *req, RelModule *m)
{
    const char *mode = json_string_value(json_object_get(req, "mode"));
    bool up = mode && strcmp(mode, "up") == 0;
    if (!mode || (!up && strcmp(mode, "down") != 0))
        return reply_error(rt, id, "bad_request", "mode must be up or down");
    if (!rt->suspended)
        return reply_error(rt, id, "not_suspended", "code_change needs the process suspended");
    /* The version on the other side of the conversion. Up: the old one,
     * what the new current code came from; without one, the staged one
     * (reld undoing a downgrade whose code_change down ran and whose load
     * did not). Down: the staged older version, before its load; without
     * one, the old one (reld undoing an upgrade: the newer code, still
     * current, converts back to the version it replaced). */
    RelVersion *other = up ? (m->old ? m->old : m->staged) : (m->staged ? m->staged : m->old);
    if (!m->current || !other)
        return reply_error(rt, id, "no_object_code", "%s: no other version to convert %s", m->name,
                           up ? "from (load first)" : "to (load_object_code first)");
    json_t *extra = json_object_get(req, "extra");
    char *extra_json = json_dumps(extra ? extra : json_null(), JSON_COMPACT | JSON_ENCODE_ANY);
    void *state = m->state;
    char err[512] = "";
    int r = 0;
    if (m->current->desc->code_change)
        r = m->current->desc->code_change(up ? REL_UP : REL_DOWN, other->desc->version, m->state,
                                          extra_json ? extra_json : "null", &state, err, sizeof(err));
    free(extra_json);
    if (r < 0) {
        /* Reply before closing anything: the version string lives in the
         * failed object's own memory. */
        reply_error(rt, id, "code_change_failed", "code_change %s of %s %s failed: %s%s%s", mode, m->name,
                    m->current->desc->version, strerror(-r), *err ? ": " : "", err);
        if (up && other == m->old) {
            /* Back to the old code with the old state, which code_change
             * left untouched; the new code goes. */
            RelVersion *bad = m->current;
            m->current = m->old;
            m->old = NULL;
            version_close(rt, bad);
        }
        return;
    }
    m->state = state;
    reply_ok(rt, id, json_pack("{s:s}", "version", m->current->desc->version));
}

static void cmd_purge(RelRuntime *rt, json_t *id, json_t *req, RelModule *m)
{
    bool brutal;
    if (!parse_purge(req, "method", &brutal))
        return reply_error(rt, id, "bad_request", "method must be soft_purge or brutal_purge");
    bool had = m->old != NULL;
    if (purge_old(rt, m, brutal, id) == -EBUSY)
        return reply_error(rt, id, "in_use", "old code of %s (version %s) is still in use; soft_purge refused", m->name,
                           m->old->desc->version);
    reply_changed(rt, id, json_pack("{s:b}", "purged", had));
}

/* The inverse of load_object_code: a relup abandoned before its point of
 * no return drops the new code it staged. */
static void cmd_drop_object_code(RelRuntime *rt, json_t *id, RelModule *m)
{
    if (!m->staged)
        return reply_error(rt, id, "no_object_code", "no new code of %s is staged", m->name);
    version_close(rt, m->staged);
    m->staged = NULL;
    reply_changed(rt, id, NULL);
}

static void cmd_remove(RelRuntime *rt, json_t *id, RelModule *m)
{
    if (!m->current)
        return reply_error(rt, id, "no_module", "%s is not loaded", m->name);
    if (m->old && !atomic_load(&m->old->pins)) {
        version_close(rt, m->old);
        m->old = NULL;
    }
    if (m->old)
        return reply_error(rt, id, "in_use", "old code of %s is still in use; purge it first", m->name);
    if (m->current->desc->terminate)
        m->current->desc->terminate(m->state);
    m->state = NULL;
    m->old = m->current; /* dropped by the purge that follows, as OTP */
    m->current = NULL;
    set_removed(rt, m, true);
    reply_changed(rt, id, NULL);
}

/* The inverse of load (and add_module), for a relup undone after its point
 * of no return: the version the process ran before becomes current again
 * ("version"; null: the module did not exist before and leaves). The
 * newer code becomes the old version, so nothing still in use is unmapped;
 * the state must already be converted back (code_change down). A module
 * already at that version is left alone. */
static void cmd_revert(RelRuntime *rt, json_t *id, json_t *req, RelModule *m)
{
    json_t *v = json_object_get(req, "version");
    const char *want = json_string_value(v);
    if (v && !json_is_null(v) && !want)
        return reply_error(rt, id, "bad_request", "version must be a string or null");
    if (m->staged) {
        version_close(rt, m->staged);
        m->staged = NULL;
    }
    if (!want) {
        if (!m->current)
            return reply_changed(rt, id, json_pack("{s:b}", "reverted", 0));
        return cmd_remove(rt, id, m);
    }
    if (m->current && strcmp(m->current->desc->version, want) == 0)
        return reply_changed(rt, id, json_pack("{s:b}", "reverted", 0));
    if (!m->old || strcmp(m->old->desc->version, want) != 0)
        return reply_error(rt, id, "cannot_revert", "%s has no version %s to go back to", m->name, want);
    RelVersion *newer = m->current;
    m->current = m->old;
    m->old = newer;
    reply_changed(rt, id, json_pack("{s:b, s:s}", "reverted", 1, "version", want));
}

/* The modules of a suspend/resume request that this process runs, into
 * names (borrowed from mods; at most max). Returns how many. */
static size_t modules_named(RelRuntime *rt, json_t *mods, const char **names, size_t max)
{
    size_t i, n = 0;
    json_t *v;
    json_array_foreach(mods, i, v)
    {
        const char *name = json_is_object(v) ? json_string_value(json_object_get(v, "module")) : json_string_value(v);
        if (name && rel_runtime_module(rt, name) && n < max)
            names[n++] = name;
    }
    return n;
}

static void cmd_status(RelRuntime *rt, json_t *id, json_t *req, const char *name, RelModule *m)
{
    reply_ok(rt, id, status_json(rt));
}

static void cmd_suspend_resume(RelRuntime *rt, json_t *id, json_t *req, const char *name, RelModule *m)
{
    const char *cmd = json_string_value(json_object_get(req, "cmd"));
    json_t *mods = json_object_get(req, "modules");
    if (!json_is_array(mods))
        return reply_error(rt, id, "bad_request", "%s needs a modules list", cmd);
    size_t max = json_array_size(mods);
    const char **names = calloc(max ? max : 1, sizeof(char *));
    if (!names)
        return reply_error(rt, id, "no_memory", "out of memory");
    size_t n = modules_named(rt, mods, names, max);
    long long t0 = now_us(), took = 0;
    const char *key = "parked_us"; /* suspend: the wait for the threads; resume: the whole pause */
    if (n && strcmp(cmd, "suspend") == 0) {
        /* Answered once every thread that runs one of them is parked. */
        suspend_threads(rt, names, n);
        if (!rt->suspended)
            rt->suspended_at_us = t0;
        rt->suspended = true;
        took = now_us() - t0;
    } else if (n) {
        bool was = rt->suspended;
        rt->suspended = false;
        resume_threads(rt);
        key = "paused_us";
        took = was ? now_us() - rt->suspended_at_us : 0;
    }
    free(names);
    reply_ok(rt, id, json_pack("{s:b, s:I}", "suspended", rt->suspended, key, (json_int_t)took));
}

/* ---- health ------------------------------------------------------------------ */

/* Asks each module's current version (those with a health callback) at
 * this safe point. The module list is status's, each entry with "healthy"
 * (null: no callback) and, when unhealthy, "message": a superset, so that
 * a controller taking "modules" from replies keeps what it knows. */
static void cmd_health(RelRuntime *rt, json_t *id, json_t *req, const char *name, RelModule *unused)
{
    json_t *mods = modules_json(rt);
    char all[HEALTH_MAX_MESSAGE] = "";
    bool healthy = true;
    size_t i;
    json_t *entry;
    json_array_foreach(mods, i, entry)
    {
        RelModule *m = find_any(rt, json_string_value(json_object_get(entry, "name")));
        if (!m || !m->current || m->removed || !m->current->health) {
            json_object_set_new(entry, "healthy", json_null());
            continue;
        }
        char msg[256] = "";
        int r = m->current->health(m->state, msg, sizeof(msg));
        msg[sizeof(msg) - 1] = 0; /* whatever the callback left */
        make_utf8(msg);
        json_object_set_new(entry, "healthy", json_boolean(r >= 0));
        if (r >= 0)
            continue;
        if (!*msg)
            snprintf(msg, sizeof(msg), "%s", strerror(r > -4096 ? -r : EIO));
        json_object_set_new(entry, "message", json_string(msg));
        size_t used = strlen(all);
        snprintf(all + used, sizeof(all) - used, "%s%s: %s", healthy ? "" : "; ", m->name, msg);
        healthy = false;
    }
    make_utf8(all); /* cut inside a character by the bound */
    reply_ok(rt, id, json_pack("{s:b, s:s, s:o}", "healthy", healthy, "message", all, "modules", mods));
}

/* ---- rehearsal ------------------------------------------------------------------ */

/* In the copy: one line of JSON to the parent (fd 3). A pipe write of
 * less than PIPE_BUF is whole; a longer one is still in order. */
static void copy_report(json_t *msg)
{
    char *text = json_dumps(msg, JSON_COMPACT);
    json_decref(msg);
    if (!text)
        return;
    size_t len = strlen(text);
    text[len++] = '\n';
    for (size_t off = 0; off < len;) {
        ssize_t n = write(3, text + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break; /* the parent is gone or gave up */
        off += (size_t)n;
    }
    free(text);
}

/* In the copy: the step about to run, so that a crash in it is named. */
static void copy_step(const char *module, const char *step)
{
    copy_report(json_pack("{s:s, s:s}", "module", module, "step", step));
}

static void copy_fail(const char *module, const char *step, int r, const char *err) __attribute__((noreturn));
static void copy_fail(const char *module, const char *step, int r, const char *err)
{
    char msg[1024];
    snprintf(msg, sizeof(msg), "%s: %s: %s%s%s", module, step, strerror(r < 0 && r > -4096 ? -r : EIO),
             err && *err ? ": " : "", err ? err : "");
    make_utf8(msg);
    copy_report(json_pack("{s:s, s:s, s:s}", "module", module, "step", step, "error", msg));
    _exit(1);
}

/* One module of a rehearse request, as the copy runs it. */
typedef struct Rehearsed {
    const char *name;
    RelModule *m;
    RelVersion *origin, *target; /* what the process runs now; the code the request names */
    RelVersion *conv;            /* the newer of the two, which converts both ways (OTP's rule) */
    bool change, down, added;
    char *extra; /* JSON text */
} Rehearsed;

/* In the copy: code_change by x->conv in direction dir, the state then
 * belonging to `to`, which verifies it (step names verify_step). */
static void copy_convert(Rehearsed *x, RelDirection dir, RelVersion *to, const char *verify_step)
{
    char err[512] = "";
    const char *step = dir == REL_UP ? "code_change up" : "code_change down";
    RelVersion *other = x->conv == x->target ? x->origin : x->target;
    if (x->change && x->conv->desc->code_change) {
        void *state = x->m->state;
        copy_step(x->name, step);
        int r = x->conv->desc->code_change(dir, other->desc->version, x->m->state, x->extra ? x->extra : "null", &state,
                                           err, sizeof(err));
        if (r < 0)
            copy_fail(x->name, step, r, err);
        x->m->state = state;
    }
    x->m->current = to;
    if (to->verify) {
        *err = 0;
        copy_step(x->name, verify_step);
        int r = to->verify(x->m->state, err, sizeof(err));
        if (r < 0)
            copy_fail(x->name, verify_step, r, err);
    }
}

/* The copy's work, on its only thread, with the copy of the live state:
 * each listed module's new code opened (an added one started with init);
 * then in order each conversion as the relup would run it (mode up: the
 * new code's code_change up; down: the current code's code_change down),
 * followed by the verify of the version that then runs; then in reverse
 * order the conversion back, followed by the verify of the version that
 * ran before. Reports and exits: 0 success, 1 an error; a crash is the
 * signal that ends it. */
static void copy_main(RelRuntime *rt, json_t *list) __attribute__((noreturn));
static void copy_main(RelRuntime *rt, json_t *list)
{
    size_t n = json_array_size(list);
    Rehearsed *v = calloc(n ? n : 1, sizeof(*v));
    char err[512];
    if (!v)
        copy_fail("rehearsal", "start", -ENOMEM, NULL);
    for (size_t k = 0; k < n; k++) {
        json_t *item = json_array_get(list, k);
        json_t *change = json_object_get(item, "change");
        json_t *extra = json_object_get(item, "extra");
        const char *mode = json_string_value(json_object_get(item, "mode"));
        Rehearsed *x = &v[k];
        x->name = json_string_value(json_object_get(item, "module"));
        x->m = rel_runtime_module(rt, x->name);
        x->change = !change || json_is_true(change);
        x->down = mode && strcmp(mode, "down") == 0;
        x->extra = json_dumps(extra ? extra : json_null(), JSON_COMPACT | JSON_ENCODE_ANY);
        const char *code = NULL;
        void *in_use[2] = {x->m && x->m->current ? x->m->current->dl : NULL, x->m && x->m->old ? x->m->old->dl : NULL};
        *err = 0;
        copy_step(x->name, "load");
        int r = version_open(x->name, json_string_value(json_object_get(item, "path")),
                             json_string_value(json_object_get(item, "version")), in_use, &x->target, &code, err,
                             sizeof(err));
        if (r < 0)
            copy_fail(x->name, "load", r, err);
        if (x->target->desc->attach)
            x->target->desc->attach(&rt->host);
        if (!x->m || !x->m->current) { /* added: a fresh start, as load would do */
            x->added = true;
            copy_step(x->name, "init");
            if (!(x->m = module_add(rt, x->name)))
                copy_fail(x->name, "init", -ENOMEM, NULL);
            if ((r = module_start(x->m, x->target, err, sizeof(err))) < 0)
                copy_fail(x->name, "init", r, err);
            continue;
        }
        x->origin = x->m->current;
        x->conv = x->down ? x->origin : x->target;
    }
    for (size_t k = 0; k < n; k++)
        if (!v[k].added)
            copy_convert(&v[k], v[k].down ? REL_DOWN : REL_UP, v[k].target, "verify");
    for (size_t k = n; k-- > 0;)
        if (!v[k].added && v[k].change)
            copy_convert(&v[k], v[k].down ? REL_UP : REL_DOWN, v[k].origin, "verify old");
    json_t *done = json_array();
    for (size_t k = 0; k < n; k++) {
        Rehearsed *x = &v[k];
        bool verified = x->target->verify || (x->origin && x->change && x->origin->verify);
        json_array_append_new(done, json_pack("{s:s, s:o, s:s, s:s, s:b, s:b}", "module", x->name, "from",
                                              x->origin ? json_string(x->origin->desc->version) : json_null(), "to",
                                              x->target->desc->version, "mode", x->down ? "down" : "up", "change",
                                              x->change && !x->added, "verified", verified));
    }
    copy_report(json_pack("{s:b, s:o}", "ok", 1, "rehearsed", done));
    _exit(0);
}

/* In the copy, first: nothing of the parent's but its memory. Every fd
 * goes but 0, 1, 2 and the report pipe (as fd 3): the copy touches no
 * socket, the control channel least. Signals as a fresh process has them,
 * so that a crash ends it with its signal; it dies with its parent. */
static void copy_prepare(RelRuntime *rt, int report, pid_t parent)
{
    if (report != 3 && dup2(report, 3) < 0)
        _exit(2);
    if (close_range(4, ~0U, 0) < 0)
        for (int fd = 4; fd < 65536; fd++) /* a kernel before 5.9 */
            (void)close(fd);
    static const int fatal[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGTERM, SIGINT, SIGHUP, SIGPIPE};
    for (size_t k = 0; k < sizeof(fatal) / sizeof(*fatal); k++)
        (void)signal(fatal[k], SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    (void)sigprocmask(SIG_SETMASK, &none, NULL);
    (void)prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(2);               /* the parent died before prctl */
    rt->loader.started = false; /* the copy has no loader thread: it closes nothing */
    rt->fd = -1;
}

static void rehearsal_close(RelRuntime *rt)
{
    Rehearsal *h = &rt->rehearsal;
    if (h->pipe >= 0) {
        (void)epoll_ctl(rt->ep, EPOLL_CTL_DEL, h->pipe, NULL);
        close(h->pipe);
    }
    if (h->timer >= 0) {
        (void)epoll_ctl(rt->ep, EPOLL_CTL_DEL, h->timer, NULL);
        close(h->timer);
    }
    json_decref(h->id);
    free(h->report);
    *h = (Rehearsal){.pipe = -1, .timer = -1};
}

/* The copy's last report line with key, or NULL (borrowed from *all,
 * which the caller frees). */
static json_t *last_report(Rehearsal *h, const char *key, json_t **all)
{
    json_t *found = NULL;
    if (!*all)
        *all = json_array();
    for (char *line = h->report, *end; line && line < h->report + h->len; line = end + 1) {
        end = memchr(line, '\n', (size_t)(h->report + h->len - line));
        if (!end)
            break; /* cut short: the copy died writing it */
        json_t *j = json_loadb(line, (size_t)(end - line), 0, NULL);
        if (json_is_object(j) && json_object_get(j, key)) {
            json_array_append(*all, j);
            found = j;
        }
        json_decref(j);
    }
    return found;
}

/* The rehearsal ended (the copy's pipe at its end, or its deadline: then
 * it is killed first): reaps the copy, exactly its pid, and answers. */
static void rehearsal_end(RelRuntime *rt, bool timed_out, const char *why)
{
    Rehearsal *h = &rt->rehearsal;
    if (timed_out || why)
        (void)kill(h->pid, SIGKILL);
    int status = 0;
    pid_t w;
    while ((w = waitpid(h->pid, &status, 0)) < 0 && errno == EINTR)
        ;
    json_t *all = NULL;
    json_t *ok = last_report(h, "ok", &all), *step = last_report(h, "step", &all),
           *error = last_report(h, "error", &all);
    const char *module = step ? json_string_value(json_object_get(step, "module")) : NULL;
    const char *what = step ? json_string_value(json_object_get(step, "step")) : NULL;
    char msg[1024];
    const char *outcome, *signame = NULL;
    if (why) {
        outcome = "aborted";
        snprintf(msg, sizeof(msg), "%s", why);
    } else if (timed_out) {
        outcome = "timeout";
        snprintf(msg, sizeof(msg), "%s: %s: no result within %d ms (the copy was killed)",
                 module ? module : "rehearsal", what ? what : "start", h->timeout_ms);
    } else if (w == h->pid && WIFSIGNALED(status)) {
        outcome = "crashed";
        signame = sigabbrev_np(WTERMSIG(status));
        snprintf(msg, sizeof(msg), "%s: %s: killed by SIG%s", module ? module : "rehearsal", what ? what : "start",
                 signame ? signame : "?");
    } else if (error) {
        outcome = "failed";
        snprintf(msg, sizeof(msg), "%s", json_string_value(json_object_get(error, "error")));
    } else if (ok && (w != h->pid || (WIFEXITED(status) && WEXITSTATUS(status) == 0))) {
        outcome = "ok"; /* w != pid: the host reaped the copy, but it reported success */
    } else if (w != h->pid) {
        outcome = "failed";
        snprintf(msg, sizeof(msg), "%s: %s: the copy ended and its status is lost (the host reaped it)",
                 module ? module : "rehearsal", what ? what : "start");
    } else {
        outcome = "failed";
        snprintf(msg, sizeof(msg), "%s: %s: the copy exited with status %d", module ? module : "rehearsal",
                 what ? what : "start", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    }
    long long elapsed = (now_us() - h->started_us) / 1000;
    json_t *reply;
    if (strcmp(outcome, "ok") == 0) {
        reply =
            json_pack("{s:O, s:b, s:O, s:I, s:I}", "id", h->id, "ok", 1, "rehearsed", json_object_get(ok, "rehearsed"),
                      "fork_us", (json_int_t)h->fork_us, "elapsed_ms", (json_int_t)elapsed);
    } else {
        make_utf8(msg);
        reply = json_pack("{s:O, s:b, s:s, s:s, s:s, s:o, s:o, s:o, s:I, s:I}", "id", h->id, "ok", 0, "error",
                          "rehearsal_failed", "message", msg, "outcome", outcome, "module",
                          module ? json_string(module) : json_null(), "step", what ? json_string(what) : json_null(),
                          "signal", signame ? json_sprintf("SIG%s", signame) : json_null(), "fork_us",
                          (json_int_t)h->fork_us, "elapsed_ms", (json_int_t)elapsed);
    }
    if (!reply) /* never unanswered */
        reply = json_pack("{s:O, s:b, s:s}", "id", h->id, "ok", 0, "error", "rehearsal_failed");
    json_decref(all);
    rehearsal_close(rt);
    send_json(rt, reply);
}

/* Reads what the copy wrote, ends the rehearsal at the pipe's end or the
 * deadline. Called at every dispatch: both fds are non-blocking. */
static void rehearsal_poll(RelRuntime *rt)
{
    Rehearsal *h = &rt->rehearsal;
    if (!h->pid)
        return;
    for (;;) {
        char buf[4096];
        ssize_t n = read(h->pipe, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            break;
        if (n <= 0)
            return rehearsal_end(rt, false, NULL);
        size_t keep = h->len + (size_t)n <= REHEARSE_MAX_REPORT ? (size_t)n : REHEARSE_MAX_REPORT - h->len;
        char *grown = keep ? realloc(h->report, h->len + keep) : h->report;
        if (grown) {
            memcpy(grown + h->len, buf, keep);
            h->report = grown;
            h->len += keep;
        }
    }
    uint64_t expired = 0;
    if (read(h->timer, &expired, sizeof(expired)) == (ssize_t)sizeof(expired) && expired)
        rehearsal_end(rt, true, NULL);
}

static bool rehearse_item_ok(json_t *item, const char **why)
{
    json_t *change = json_object_get(item, "change"), *version = json_object_get(item, "version"),
           *mode = json_object_get(item, "mode");
    if (!json_is_object(item))
        *why = "each of modules must be an object";
    else if (!json_is_string(json_object_get(item, "module")))
        *why = "each of modules needs a module (a string)";
    else if (!json_is_string(json_object_get(item, "path")))
        *why = "each of modules needs a path (a string)";
    else if (change && !json_is_boolean(change))
        *why = "change must be true or false";
    else if (version && !json_is_string(version))
        *why = "version must be a string";
    else if (mode && (!json_is_string(mode) ||
                      (strcmp(json_string_value(mode), "up") != 0 && strcmp(json_string_value(mode), "down") != 0)))
        *why = "mode must be up or down";
    else
        return true;
    return false;
}

/* Forks the copy and returns: the answer comes from dispatch when the
 * copy ends (rehearsal_poll). The host is stopped for the fork alone. */
static void cmd_rehearse(RelRuntime *rt, json_t *id, json_t *req, const char *name, RelModule *unused)
{
    json_t *list = json_object_get(req, "modules"), *t = json_object_get(req, "timeout_ms");
    size_t i;
    json_t *item;
    const char *why = NULL;
    if (!json_is_array(list) || json_array_size(list) == 0 || json_array_size(list) > REHEARSE_MAX_MODULES)
        return reply_error(rt, id, "bad_request", "rehearse needs a modules list of 1 to %d", REHEARSE_MAX_MODULES);
    json_array_foreach(list, i, item)
    {
        if (!rehearse_item_ok(item, &why))
            return reply_error(rt, id, "bad_request", "%s", why);
    }
    if (t && (!json_is_integer(t) || json_integer_value(t) < 1 || json_integer_value(t) > REHEARSE_MAX_MS))
        return reply_error(rt, id, "bad_request", "timeout_ms must be an integer from 1 to %d", REHEARSE_MAX_MS);
    if (rt->rehearsal.pid)
        return reply_error(rt, id, "busy", "a rehearsal is already under way (pid %d)", (int)rt->rehearsal.pid);
    if (rt->ep < 0)
        return reply_error(rt, id, "no_memory", "no epoll set to watch a rehearsal with");
    Rehearsal *h = &rt->rehearsal;
    int p[2];
    if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0)
        return reply_error(rt, id, "no_memory", "cannot make the rehearsal's pipe: %s", strerror(errno));
    h->pipe = p[0];
    h->timer = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    h->timeout_ms = t ? (int)json_integer_value(t) : REHEARSE_DEFAULT_MS;
    struct itimerspec when = {.it_value = {h->timeout_ms / 1000, h->timeout_ms % 1000 * 1000000L}};
    struct epoll_event pe = {.events = EPOLLIN, .data.fd = h->pipe}, te = {.events = EPOLLIN, .data.fd = h->timer};
    if (h->timer < 0 || timerfd_settime(h->timer, 0, &when, NULL) < 0 ||
        epoll_ctl(rt->ep, EPOLL_CTL_ADD, h->pipe, &pe) < 0 || epoll_ctl(rt->ep, EPOLL_CTL_ADD, h->timer, &te) < 0) {
        int e = errno;
        close(p[1]);
        rehearsal_close(rt);
        return reply_error(rt, id, "no_memory", "cannot watch a rehearsal: %s", strerror(e));
    }
    loader_quiesce(rt);
    pid_t parent = getpid();
    long long t0 = now_us();
    pid_t pid = fork();
    if (pid == 0) {
        copy_prepare(rt, p[1], parent);
        copy_main(rt, list);
    }
    h->fork_us = now_us() - t0;
    h->started_us = t0;
    int e = errno;
    close(p[1]);
    if (pid < 0) {
        rehearsal_close(rt);
        return reply_error(rt, id, "fork_failed", "cannot fork a copy to rehearse in: %s", strerror(e));
    }
    h->pid = pid;
    h->id = json_incref(id ? id : json_null());
}

/* ---- dispatch ------------------------------------------------------------------- */

/* A command's handler: name is the request's "module" (NULL without one);
 * m that module when the process has (or had) it. */
typedef void CommandFn(RelRuntime *rt, json_t *id, json_t *req, const char *name, RelModule *m);

typedef enum CommandNeeds {
    NEEDS_NOTHING,
    NEEDS_NAME,   /* a "module" field, not necessarily a module the process has */
    NEEDS_MODULE, /* a module the process has */
} CommandNeeds;

/* Which registered threads a command parks while it runs: those that run
 * its module (load, code_change, revert, remove change the module's code
 * or state), or all (health calls every module; a rehearsal's fork copies
 * every module's state, which must then be whole). purge unmaps only old
 * code, which no thread entered since the load that made it old (they
 * were parked for it) unless pinned; suspend and resume hold threads
 * themselves. */
typedef enum CommandHolds { HOLDS_NONE, HOLDS_MODULE, HOLDS_ALL } CommandHolds;

typedef struct Command {
    const char *name;
    CommandNeeds needs;
    CommandHolds holds;
    CommandFn *run;
} Command;

static void run_load_object_code(RelRuntime *rt, json_t *id, json_t *req, const char *name, RelModule *m)
{
    cmd_load_object_code(rt, id, req, name);
}
static void run_load(RelRuntime *rt, json_t *id, json_t *req, const char *name, RelModule *m)
{
    cmd_load(rt, id, req, m);
}
static void run_code_change(RelRuntime *rt, json_t *id, json_t *req, const char *name, RelModule *m)
{
    cmd_code_change(rt, id, req, m);
}
static void run_purge(RelRuntime *rt, json_t *id, json_t *req, const char *name, RelModule *m)
{
    cmd_purge(rt, id, req, m);
}
static void run_drop_object_code(RelRuntime *rt, json_t *id, json_t *req, const char *name, RelModule *m)
{
    cmd_drop_object_code(rt, id, m);
}
static void run_revert(RelRuntime *rt, json_t *id, json_t *req, const char *name, RelModule *m)
{
    cmd_revert(rt, id, req, m);
}
static void run_remove(RelRuntime *rt, json_t *id, json_t *req, const char *name, RelModule *m)
{
    cmd_remove(rt, id, m);
}

static const Command commands[] = {
    {"status", NEEDS_NOTHING, HOLDS_NONE, cmd_status},
    {"suspend", NEEDS_NOTHING, HOLDS_NONE, cmd_suspend_resume},
    {"resume", NEEDS_NOTHING, HOLDS_NONE, cmd_suspend_resume},
    {"health", NEEDS_NOTHING, HOLDS_ALL, cmd_health},
    {"rehearse", NEEDS_NOTHING, HOLDS_ALL, cmd_rehearse},
    {"load_object_code", NEEDS_NAME, HOLDS_NONE, run_load_object_code},
    {"load", NEEDS_MODULE, HOLDS_MODULE, run_load},
    {"code_change", NEEDS_MODULE, HOLDS_MODULE, run_code_change},
    {"purge", NEEDS_MODULE, HOLDS_NONE, run_purge},
    {"drop_object_code", NEEDS_MODULE, HOLDS_NONE, run_drop_object_code},
    {"revert", NEEDS_MODULE, HOLDS_MODULE, run_revert},
    {"remove", NEEDS_MODULE, HOLDS_MODULE, run_remove},
};

static void handle_line(RelRuntime *rt, const char *line, size_t len)
{
    loader_adopt(rt);
    json_error_t jerr;
    json_t *req = json_loadb(line, len, 0, &jerr);
    if (!req || !json_is_object(req)) {
        reply_error(rt, NULL, "bad_request", "not a JSON object: %s", req ? "wrong type" : jerr.text);
        json_decref(req);
        return;
    }
    json_t *id = json_object_get(req, "id");
    const char *cmd = json_string_value(json_object_get(req, "cmd"));
    const char *name = json_string_value(json_object_get(req, "module"));
    const Command *c = NULL;
    for (size_t k = 0; cmd && k < sizeof(commands) / sizeof(*commands) && !c; k++)
        if (strcmp(commands[k].name, cmd) == 0)
            c = &commands[k];
    RelModule *m = name ? find_any(rt, name) : NULL;
    /* A command for a module whose new code is still being opened waits
     * for it (load_object_code itself refuses). */
    if (c && c->needs != NEEDS_NAME && m && m->loading)
        loader_wait(rt, m);

    if (!cmd)
        reply_error(rt, id, "bad_request", "no cmd");
    else if (!c)
        reply_error(rt, id, "unknown_command", "unknown command '%s'", cmd);
    else if (c->needs != NEEDS_NOTHING && !name)
        reply_error(rt, id, "bad_request", "%s needs a module", cmd);
    else if (c->needs == NEEDS_MODULE && !m)
        reply_error(rt, id, "no_module", "this process has no module %s", name);
    else if (c->holds == HOLDS_NONE)
        c->run(rt, id, req, name, m);
    else {
        hold_threads(rt, c->holds == HOLDS_MODULE ? name : NULL);
        c->run(rt, id, req, name, m);
        release_threads(rt);
    }
    json_decref(req);
}

/* Waits until the control channel (or, during a rehearsal, the copy's
 * pipe or timer) has something. */
static void wait_readable(RelRuntime *rt)
{
    struct pollfd p = {.fd = rt->ep >= 0 ? rt->ep : rt->fd, .events = POLLIN};
    while (poll(&p, 1, -1) < 0 && errno == EINTR)
        ;
}

/* Reads what is there (blocking when wait), handles complete lines, and
 * looks after a rehearsal under way. Returns 0, or -ECONNRESET when reld
 * closed the channel. */
static int pump(RelRuntime *rt, bool wait)
{
    if (wait)
        wait_readable(rt);
    rehearsal_poll(rt);
    char buf[16384];
    ssize_t n = recv(rt->fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    if (n <= 0)
        return -ECONNRESET;
    for (ssize_t i = 0; i < n; i++) {
        char c = buf[i];
        if (c == '\n') {
            if (!rt->discarding && rt->in_len)
                handle_line(rt, rt->in, rt->in_len);
            rt->in_len = 0;
            rt->discarding = false;
        } else if (rt->discarding) {
            continue;
        } else if (rt->in_len == MAX_LINE) {
            reply_error(rt, NULL, "bad_request", "message longer than %d bytes", MAX_LINE);
            rt->in_len = 0;
            rt->discarding = true;
        } else {
            rt->in[rt->in_len++] = c;
        }
    }
    return 0;
}

int rel_runtime_dispatch(RelRuntime *rt)
{
    if (!rt || rt->fd < 0)
        return -ECONNRESET;
    int r = pump(rt, false);
    while (r == 0 && rt->suspended)
        r = pump(rt, true); /* suspended: wait here, at the safe point */
    if (r < 0) {
        /* reld went away: go on unmanaged rather than stay suspended; a
         * rehearsal has no one left to tell. */
        if (rt->rehearsal.pid)
            rehearsal_end(rt, false, "the control channel closed");
        close(rt->fd);
        rt->fd = -1;
        rt->suspended = false;
        resume_threads(rt);
    }
    return r;
}

int rel_runtime_fd(const RelRuntime *rt)
{
    return rt && rt->fd >= 0 ? (rt->ep >= 0 ? rt->ep : rt->fd) : -1;
}

#ifdef RELD_FUZZING
/* The fuzzing seam (tests/fuzz/fuzz-control.c, docs/fuzzing.md): one
 * request line to the handler, as pump() hands it over, without reading
 * the channel or waiting while suspended. Only fuzz-control compiles this
 * file with RELD_FUZZING; the library has no such function. */
void rel_runtime_fuzz_line(RelRuntime *rt, const char *line, size_t len);
void rel_runtime_fuzz_line(RelRuntime *rt, const char *line, size_t len)
{
    handle_line(rt, line, len);
}
#endif

/* ---- life ---------------------------------------------------------------- */

int rel_runtime_new(RelRuntime **ret, char *err, size_t errlen)
{
    RelRuntime *rt = calloc(1, sizeof(*rt));
    if (!rt || !(rt->in = malloc(MAX_LINE))) {
        free(rt);
        return -ENOMEM;
    }
    rt->fd = -1;
    rt->ep = -1;
    rt->rehearsal = (Rehearsal){.pipe = -1, .timer = -1};
    pthread_mutex_init(&rt->send_lock, NULL);
    pthread_mutex_init(&rt->mods_lock, NULL);
    pthread_mutex_init(&rt->threads.lock, NULL);
    pthread_cond_init(&rt->threads.parked, NULL);
    pthread_cond_init(&rt->threads.resume, NULL);
    pthread_mutex_init(&rt->loader.lock, NULL);
    pthread_cond_init(&rt->loader.wake, NULL);
    pthread_cond_init(&rt->loader.opened, NULL);
    pthread_cond_init(&rt->loader.idle, NULL);
    rt->loader.todo_tail = &rt->loader.todo;
    rt->host = (RelHost){.abi = RELD_MODULE_ABI,
                         .size = sizeof(RelHost),
                         .ctx = rt,
                         .module_api = host_module_api,
                         .module_state = host_module_state};

    const char *fd = getenv("RELD_CONTROL_FD");
    if (fd && *fd) {
        char *end;
        long v = strtol(fd, &end, 10);
        if (*end || v < 0 || v > 65535) {
            say(err, errlen, "RELD_CONTROL_FD='%s' is not a file descriptor", fd);
            rel_runtime_free(rt);
            return -EINVAL;
        }
        rt->fd = (int)v;
        /* The fd the host polls: the channel, and a rehearsal's pipe and
         * timer while one runs. */
        struct epoll_event ce = {.events = EPOLLIN, .data.fd = rt->fd};
        rt->ep = epoll_create1(EPOLL_CLOEXEC);
        if (rt->ep < 0 || epoll_ctl(rt->ep, EPOLL_CTL_ADD, rt->fd, &ce) < 0) {
            int e = errno;
            say(err, errlen, "cannot watch the control channel (RELD_CONTROL_FD=%s): %s", fd, strerror(e));
            rel_runtime_free(rt);
            return -e;
        }
    }
    const char *mods = getenv("RELD_MODULES");
    if (mods && *mods) {
        char *list = strdup(mods), *save = NULL;
        if (!list) {
            rel_runtime_free(rt);
            return -ENOMEM;
        }
        for (char *item = strtok_r(list, ":", &save); item; item = strtok_r(NULL, ":", &save)) {
            char *eq = strchr(item, '=');
            int r = eq ? 0 : -EINVAL;
            if (eq) {
                *eq = 0;
                r = rel_runtime_load(rt, item, eq + 1, err, errlen);
            } else {
                say(err, errlen, "RELD_MODULES item '%s' is not name=path", item);
            }
            if (r < 0) {
                free(list);
                rel_runtime_free(rt);
                return r;
            }
        }
        free(list);
    }
    if (rt->fd >= 0) {
        json_t *hello = status_json(rt);
        json_object_set_new(hello, "event", json_string("hello"));
        const char *proc = getenv("RELD_PROCESS");
        json_object_set_new(hello, "process", json_string(proc ? proc : ""));
        send_json(rt, hello);
    }
    *ret = rt;
    return 0;
}

RelRuntime *rel_runtime_free(RelRuntime *rt)
{
    if (!rt)
        return NULL;
    if (rt->rehearsal.pid) /* answered: reld never waits for an answer that does not come */
        rehearsal_end(rt, false, "the process is ending");
    loader_stop(rt); /* closes what it was given, hands over what it opened */
    for (size_t i = 0; i < rt->n_mods; i++) {
        RelModule *m = rt->mods[i];
        if (m->current && m->current->desc->terminate)
            m->current->desc->terminate(m->state);
        version_free(m->current);
        version_free(m->old);
        version_free(m->staged);
        free(m->name);
        free(m);
    }
    free(rt->mods);
    if (rt->fd >= 0)
        close(rt->fd);
    if (rt->ep >= 0)
        close(rt->ep);
    free(rt->in);
    pthread_mutex_destroy(&rt->send_lock);
    pthread_mutex_destroy(&rt->mods_lock);
    free_names(rt->threads.susp, rt->threads.n_susp);
    pthread_mutex_destroy(&rt->threads.lock);
    pthread_cond_destroy(&rt->threads.parked);
    pthread_cond_destroy(&rt->threads.resume);
    pthread_mutex_destroy(&rt->loader.lock);
    pthread_cond_destroy(&rt->loader.wake);
    pthread_cond_destroy(&rt->loader.opened);
    pthread_cond_destroy(&rt->loader.idle);
    free(rt);
    return NULL;
}
