#pragma once
/* reld-runtime: hot code loading for C processes managed by reld.
 *
 * Two audiences, one header:
 *
 * - A MODULE is a shared object exporting one descriptor, `reld_module`
 *   (RELD_MODULE_DEFINE below): ABI version, name, version, callbacks and
 *   the module's own table of functions (its "api").
 * - A HOST PROCESS links this library, loads its modules at start, and
 *   calls them through the runtime:
 *
 *       RelRuntime *rt;
 *       rel_runtime_new(&rt);                  // reads RELD_* from the environment
 *       RelModule *kv = rel_runtime_module(rt, "kv_server");
 *       for (;;) {
 *           poll(... rel_runtime_fd(rt) ..., client fds ...);
 *           if (control fd readable) rel_runtime_dispatch(rt);   // a safe point
 *           const KvApi *api = rel_module_api(kv);               // current code
 *           api->handle(rel_module_state(kv), ...);
 *       }
 *
 *   Commands from reld (suspend, load, code_change, purge, ...) run only
 *   inside rel_runtime_dispatch(), i.e. at the host's safe points. While
 *   suspended, rel_runtime_dispatch() does not return until resumed.
 *
 * Calling through rel_module_api() each time is the C analogue of Erlang's
 * fully qualified call: after `load` every call reaches the new code. Code
 * that keeps a version's function pointers across safe points (a callback,
 * a long request) must pin that version (rel_module_pin) so that purge
 * knows it is in use.
 *
 * Environment set by reld (docs/runtime.md): RELD_CONTROL_FD (a connected
 * stream socket), RELD_PROCESS (the process name), RELD_MODULES
 * ("name=/path/file.so:name2=/path2.so", loaded at start, in order).
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

/* ABI 2 appends state_version, health and verify to ABI 1's descriptor
 * (RelModuleDesc below). The runtime loads both: of an ABI 1 descriptor it
 * reads only ABI 1's fields (its first RELD_MODULE_DESC_V1_SIZE bytes on
 * x86-64), never past them. */
#define RELD_MODULE_ABI       2
#define RELD_PROTOCOL_VERSION 1

/* ---- the module ABI ---------------------------------------------------- */

typedef enum RelDirection { REL_UP = 0, REL_DOWN = 1 } RelDirection;

/* What the runtime offers a module: other modules of the same process.
 * Valid for the module's whole life. */
typedef struct RelHost {
    uint32_t abi;
    /* The current api table of another module of this process, or NULL. */
    const void *(*module_api)(const char *module);
    /* Its state, or NULL. */
    void *(*module_state)(const char *module);
} RelHost;

typedef struct RelModuleDesc {
    uint32_t abi;        /* RELD_MODULE_ABI */
    const char *name;    /* must equal the module's name in app.yaml */
    const char *version; /* the module's own version */

    /* Called once, after the code is opened and before any other
     * callback, with what the runtime offers. Like every callback, on the
     * host's thread at a safe point (the runtime opens objects on a
     * thread of its own, so ELF constructors, if any, run there). May be
     * NULL. */
    void (*attach)(const RelHost *host);

    /* Creates the state of a fresh start (the module's first load in a
     * process, or an add_module). Returns 0 or -errno. May be NULL: the
     * state is then NULL. */
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

    /* ---- ABI 2 ---- */
    /* Bump when the layout of the state changes: a load_module (no
     * code_change) between versions whose state_version differs is an
     * error of the appup (relctl check). 0: not declared. */
    uint32_t state_version;
    /* Optional: answers reld's health check. 0 healthy; a negative errno
     * unhealthy, with a reason in msg. Called at a safe point. */
    int (*health)(void *state, char *msg, size_t msglen);
    /* Optional: checks a state after code_change in a rehearsal (and may be
     * used by tests). 0 good; negative errno with a reason in err. */
    int (*verify)(void *state, char *err, size_t errlen);
} RelModuleDesc;

/* The sizes of the two layouts, which tools reading descriptors from ELF
 * files rely on (x86-64: state_version at 64, health at 72, verify at 80). */
#define RELD_MODULE_DESC_V1_SIZE offsetof(RelModuleDesc, state_version)
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
