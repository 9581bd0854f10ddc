#pragma once
/* reld-runtime: hot code loading for C processes managed by reld.
 *
 *     #include <reld/reld-runtime.h>
 *     cc -shared -fPIC $(pkg-config --cflags reld-runtime) module.c -o module.so
 *     cc $(pkg-config --cflags reld-runtime) host.c -o host $(pkg-config --libs reld-runtime)
 *
 * The library is installed as a static archive only, so the host above
 * carries its runtime and runs wherever its release is unpacked
 * (docs/runtime.md, "Linking").
 *
 * Two audiences, one header:
 *
 * - A MODULE is a shared object exporting one descriptor, `reld_module`
 *   (RELD_MODULE_DEFINE below): ABI version, name, version, callbacks and
 *   the module's own table of functions (its "api").
 * - A HOST PROCESS links this library, loads its modules at start, and
 *   calls them through the runtime:
 *
 *       char err[512];
 *       RelRuntime *rt;
 *       if (rel_runtime_new(&rt, err, sizeof(err)) < 0)   // RELD_* from the environment
 *           errx(1, "%s", err);
 *       RelModule *kv = rel_runtime_module(rt, "kv_server");
 *       for (;;) {
 *           poll(... rel_runtime_fd(rt) ..., client fds ...);
 *           const KvApi *api = rel_module_api(kv);               // current code
 *           api->handle(rel_module_state(kv), ...);
 *           if (control fd readable) rel_runtime_dispatch(rt);   // a safe point
 *       }
 *
 *   Commands from reld (suspend, load, code_change, purge, ...) run only
 *   inside rel_runtime_dispatch(), i.e. at the host's safe points. While
 *   suspended, rel_runtime_dispatch() does not return until resumed.
 *   A host that serves from several threads registers each of them
 *   (rel_thread_register below); one thread dispatches.
 *
 * Calling through rel_module_api() each time is the C analogue of Erlang's
 * fully qualified call: after `load` every call reaches the new code. Code
 * that keeps a version's function pointers across safe points (a callback,
 * a long request) must pin that version (rel_module_pin) so that purge
 * knows it is in use.
 *
 * Environment set by reld (docs/runtime.md): RELD_CONTROL_FD (a connected
 * stream socket), RELD_PROCESS (the process name), RELD_MODULES
 * ("name=/path/file.so:name2=/path2.so", loaded at start, in order), and
 * LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES (listening sockets from fd 3 on,
 * systemd's convention; the host reads them, the runtime does not).
 *
 * Rehearsal (the `rehearse` command): the runtime forks a copy of the
 * process, which loads the new code and runs code_change up and down on
 * the copy of the live state, then exits; the host is stopped only for the
 * fork. The copy is the runtime's own child: it reaps exactly that pid, so
 * a host that reaps any child (waitpid(-1), SIGCHLD set to SIG_IGN) takes
 * the copy's exit status away, and the rehearsal then reports that its
 * end could not be told.
 *
 * Errors: functions returning int return 0 or a negative errno. Nothing
 * here exits the process except a brutal purge of code still in use, which
 * is its documented purpose. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The module ABI, fixed from ABI 2 on (docs/runtime.md, "Compatibility"):
 * the fields of RelModuleDesc and RelHost keep their offsets, types and
 * meaning; a later ABI may only append fields (a module's descriptor size
 * comes from its symbol table, RelHost.size says what the host table
 * has). ABI 1, whose host callbacks had no context pointer, is refused. */
#define RELD_MODULE_ABI       2
#define RELD_PROTOCOL_VERSION 1

/* ---- the module ABI ---------------------------------------------------- */

typedef enum RelDirection { REL_UP = 0, REL_DOWN = 1 } RelDirection;

/* What the runtime offers a module: other modules of the same process.
 * Valid for the module's whole life. Every callback takes the table
 * itself: the runtime it belongs to is in it (a process may have several
 * runtimes; none is global). A module checks `size` before it uses a
 * field that a later ABI appends. */
typedef struct RelHost {
    uint32_t abi;  /* the runtime's RELD_MODULE_ABI */
    uint32_t size; /* sizeof(RelHost) of the runtime */
    void *ctx;     /* the runtime's own */
    /* The current api table of another module of this process, or NULL. */
    const void *(*module_api)(const struct RelHost *host, const char *module);
    /* Its state, or NULL. */
    void *(*module_state)(const struct RelHost *host, const char *module);
} RelHost;

typedef struct RelModuleDesc {
    uint32_t abi;        /* RELD_MODULE_ABI */
    const char *name;    /* must equal the module's name in app.yaml */
    const char *version; /* the module's own version */

    /* Called once, after the code is opened and before any other
     * callback, with what the runtime offers (the runtime opens objects
     * on a thread of its own, so ELF constructors, if any, run there).
     * May be NULL.
     *
     * Every callback (attach, init, code_change, terminate, health,
     * verify) runs at a safe point inside rel_runtime_dispatch(), on the
     * thread that dispatches, while every registered thread that runs the
     * module is parked (rel_thread_register): a callback never runs
     * concurrently with the module's own functions. */
    void (*attach)(const RelHost *host);

    /* Creates the state of a fresh start (the module's first load in a
     * process, or an add_module). Returns 0 or -errno. May be NULL: the
     * state is then NULL. Not called for a new version of a running
     * module: that one gets the state through code_change. */
    int (*init)(void **ret_state);

    /* Converts state across versions, as OTP's code_change: called on the
     * NEWER version in both directions, after its load going up, before the
     * older version's load going down. other_version is the other side's
     * version; extra_json is the appup's EXTRA as JSON text ("null" when
     * none). On success returns 0 and *ret_state, having taken ownership of
     * state (it may be returned as is). On failure returns a negative errno,
     * leaves state untouched, and may write a reason into err (errlen
     * bytes). May be NULL: the state is kept as is. */
    int (*code_change)(RelDirection dir, const char *other_version, void *state, const char *extra_json,
                       void **ret_state, char *err, size_t errlen);

    /* Frees state when the module leaves the process or the process stops.
     * May be NULL. */
    void (*terminate)(void *state);

    const void *api; /* the module's own table of functions */

    /* Bump when the layout of the state changes: a load_module (no
     * code_change) between versions whose state_version differs is an
     * error of the appup (relctl check). 0: not declared. */
    uint32_t state_version;
    /* Optional: answers reld's health check. 0 healthy; a negative errno
     * unhealthy, with a reason in msg. */
    int (*health)(void *state, char *msg, size_t msglen);
    /* Optional: checks a state after code_change in a rehearsal (and may be
     * used by tests). 0 good; negative errno with a reason in err. */
    int (*verify)(void *state, char *err, size_t errlen);
} RelModuleDesc;

/* The descriptor's size, which tools reading descriptors from ELF files
 * rely on (x86-64: 88 bytes; state_version at 64, health at 72, verify at
 * 80). */
#define RELD_MODULE_DESC_V2_SIZE sizeof(RelModuleDesc)

/* In a module's source: RELD_MODULE_DEFINE(.name = "kv_server", ...). */
#define RELD_MODULE_DEFINE(...)                                                                                        \
    __attribute__((visibility("default"))) const RelModuleDesc reld_module = {.abi = RELD_MODULE_ABI, __VA_ARGS__}

/* ---- the runtime, for host processes ---------------------------------- */

typedef struct RelRuntime RelRuntime;
typedef struct RelModule RelModule;
typedef struct RelVersion RelVersion;

/* Creates the runtime from the environment: connects the control channel
 * (when RELD_CONTROL_FD is set; without it the process runs unmanaged) and
 * loads RELD_MODULES. On a module that cannot be loaded, returns its error
 * and writes the reason into err. */
int rel_runtime_new(RelRuntime **ret, char *err, size_t errlen);

/* Terminates every module's state, closes every version, frees rt. */
RelRuntime *rel_runtime_free(RelRuntime *rt);

/* Loads a module by path at start (what RELD_MODULES does), calling init. */
int rel_runtime_load(RelRuntime *rt, const char *name, const char *path, char *err, size_t errlen);

/* The file descriptor to poll for reading; -1 when unmanaged. It is an
 * epoll descriptor holding the control channel and, while a rehearsal
 * runs (docs/runtime.md), the copy's result pipe and its timer: readable
 * when any of them is, so that the answer to a rehearsal comes from
 * rel_runtime_dispatch() while the host goes on serving. */
int rel_runtime_fd(const RelRuntime *rt);

/* Handles every command waiting on the control channel. Call it when the
 * fd is readable, at a safe point. While suspended it blocks until resume
 * (or until reld goes away, which resumes). Returns 0, or -ECONNRESET once
 * the control channel is closed (the process may go on unmanaged). */
int rel_runtime_dispatch(RelRuntime *rt);

/* A module of this process by name; NULL when it has none (yet). The
 * handle stays valid until the module is removed. */
RelModule *rel_runtime_module(RelRuntime *rt, const char *name);

/* The current version's api table and the module's state. */
const void *rel_module_api(const RelModule *m);
void *rel_module_state(const RelModule *m);
const char *rel_module_version(const RelModule *m);

/* Pins the current version: it counts as in use until unpinned, so a soft
 * purge refuses and a brutal purge ends the process. */
RelVersion *rel_module_pin(RelModule *m);
void rel_version_unpin(RelVersion *v);
const void *rel_version_api(const RelVersion *v);

/* ---- threaded hosts ----------------------------------------------------- */

/* A host that serves from several threads registers each thread that
 * calls modules. A registered thread calls rel_thread_safepoint() in its
 * loop wherever it holds nothing half done (no request in the middle, no
 * lock of the module's), and, when it blocks in poll/epoll_wait, polls
 * rel_thread_fd() too, so that the runtime can wake it.
 *
 * A command that changes a module's code or state (suspend, load,
 * code_change, revert, remove, health, and a rehearsal's fork) parks every
 * registered thread that runs the module at its next safe point, waits
 * until all of them are parked, runs, and releases them together (resume
 * for a suspension). Threads that do not run the module keep serving. The
 * thread that dispatches is at a safe point by definition; reld's
 * suspend is answered only when every thread concerned is parked, so a
 * thread that never reaches a safe point delays it as a busy
 * single-threaded host would.
 *
 * modules: a NULL-terminated list of the module names the thread calls,
 * directly or through other modules (RelHost.module_api); NULL: every
 * module. Call it on the thread itself, once, before its first module
 * call; if the modules are being changed it returns parked and
 * released, like a safe point. One runtime per thread. Returns 0,
 * -EINVAL (rt NULL, or the thread already registered), -ENOMEM, or the
 * errno of eventfd(). */
typedef struct RelThread RelThread;
int rel_thread_register(RelRuntime *rt, const char *const *modules, RelThread **ret);

/* Unregisters and frees t, on its own thread, after its last module call.
 * Every thread is unregistered before rel_runtime_free(). */
void rel_thread_unregister(RelThread *t);

/* An eventfd the thread adds to its poll/epoll set (readable: the runtime
 * wants the thread at a safe point). rel_thread_safepoint() consumes it. */
int rel_thread_fd(const RelThread *t);

/* A safe point: returns at once (one atomic load) unless the runtime
 * wants the thread parked; then waits until it is released. */
void rel_thread_safepoint(RelThread *t);
