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
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* Around a blocking wait at a safe point (poll, epoll_wait): while the
 * thread waits it counts as parked, so a pause neither wakes it nor
 * waits for it; rel_thread_wait_end() parks it first if a pause is under
 * way (or began while it waited). Optional: without them the runtime
 * wakes the thread through rel_thread_fd(). Both are safe points. */
void rel_thread_wait_begin(RelThread *t);
void rel_thread_wait_end(RelThread *t);

/* ---- state conversion by description, for code_change ---------------- */

/* Inline code: each module version compiles its own copy, so nothing of
 * it is part of the module ABI.
 *
 * A module describes the C types of its state, the old layout and the
 * new, field by field; rel_convert() builds a deep copy of a state in the
 * other layout, field by field by name:
 *
 * - a field in both layouts is copied (a value: byte for byte, and both
 *   sizes must agree; a string: strdup; an array, a list, a struct:
 *   element by element, converted in turn; an array's count, and its
 *   capacity if it names one, are the number of elements copied);
 * - a field only in the target layout is added: its default (`dflt`,
 *   `size` bytes; a string's: the text) or zeros;
 * - a field only in the source layout is left out;
 * - a renamed field names its other name in `was`.
 *
 * The same two descriptions serve both directions:
 *
 *     static const RelField client_v1_fields[] = {
 *         REL_STRING(ClientV1, nick), REL_VALUE(ClientV1, fd), REL_NEXT(ClientV1, next, &client_v1)};
 *     ...
 *     static int code_change(RelDirection dir, ..., void *state, ..., void **ret, char *err, size_t errlen)
 *     {
 *         const RelType *from = dir == REL_UP ? &state_v1 : &state_v2, *to = dir == REL_UP ? &state_v2 : &state_v1;
 *         int r = rel_convert(from, state, to, ret, err, errlen);
 *         if (r == 0)
 *             rel_free(from, state);
 *         return r;
 *     }
 *
 * Memory: every pointer a description names (strings, arrays, lists, the
 * state itself) is malloc'd, as rel_free() frees it with free(). The copy
 * is new memory; the source is left untouched (on failure too), so
 * code_change keeps OTP's rule that a failed conversion leaves the state
 * as it was. Errors: -ENOMEM, or -EINVAL with the field named in err
 * ("ClientV2.away: a string in one layout, a value in the other"). */
typedef enum RelFieldKind {
    REL_KIND_VALUE,  /* plain bytes: numbers, fixed arrays, flags */
    REL_KIND_STRING, /* char *, NUL-terminated, malloc'd (NULL allowed) */
    REL_KIND_ARRAY,  /* T *, `count` elements of `type`; count is another (size_t) field */
    REL_KIND_LIST,   /* T *, the first of a list of `type`, linked by its REL_NEXT field */
    REL_KIND_STRUCT, /* an embedded struct of `type` */
    REL_KIND_NEXT,   /* a list element's link to the next: set by the list's conversion */
} RelFieldKind;

typedef struct RelType RelType;

typedef struct RelField {
    const char *name;
    RelFieldKind kind;
    size_t offset, size;
    const RelType *type; /* ARRAY, LIST, STRUCT, NEXT: the element type */
    const char *count;   /* ARRAY: the name of its count field (a size_t) */
    const char *cap;     /* ARRAY, optional: its capacity field (a size_t), set to the count */
    const void *dflt;    /* an added field's default: size bytes, or a string's text; NULL: zeros */
    const char *was;     /* the field's name in the other layout, when renamed */
} RelField;

struct RelType {
    const char *name;
    size_t size;
    const RelField *fields;
    size_t n_fields;
};

#define REL_MEMBER_SIZE(T, f) sizeof(((T *)0)->f)
#define REL_VALUE(T, f, ...)                                                                                           \
    {                                                                                                                  \
        .name = #f, .kind = REL_KIND_VALUE, .offset = offsetof(T, f), .size = REL_MEMBER_SIZE(T, f), __VA_ARGS__       \
    }
#define REL_STRING(T, f, ...)                                                                                          \
    {                                                                                                                  \
        .name = #f, .kind = REL_KIND_STRING, .offset = offsetof(T, f), .size = sizeof(char *), __VA_ARGS__             \
    }
#define REL_ARRAY(T, f, elem, count_field, ...)                                                                        \
    {                                                                                                                  \
        .name = #f, .kind = REL_KIND_ARRAY, .offset = offsetof(T, f), .size = sizeof(void *), .type = (elem),          \
        .count = #count_field, __VA_ARGS__                                                                             \
    }
#define REL_LIST(T, f, elem, ...)                                                                                      \
    {                                                                                                                  \
        .name = #f, .kind = REL_KIND_LIST, .offset = offsetof(T, f), .size = sizeof(void *), .type = (elem),           \
        __VA_ARGS__                                                                                                    \
    }
#define REL_STRUCT(T, f, elem, ...)                                                                                    \
    {                                                                                                                  \
        .name = #f, .kind = REL_KIND_STRUCT, .offset = offsetof(T, f), .size = REL_MEMBER_SIZE(T, f), .type = (elem),  \
        __VA_ARGS__                                                                                                    \
    }
#define REL_NEXT(T, f, self)                                                                                           \
    {                                                                                                                  \
        .name = #f, .kind = REL_KIND_NEXT, .offset = offsetof(T, f), .size = sizeof(void *), .type = (self)            \
    }
#define REL_TYPE(T, field_array)                                                                                       \
    {                                                                                                                  \
        .name = #T, .size = sizeof(T), .fields = (field_array), .n_fields = sizeof(field_array) / sizeof(RelField)     \
    }

static inline void *rel_ptr_at_(const void *obj, size_t offset)
{
    void *p;
    memcpy(&p, (const char *)obj + offset, sizeof(p));
    return p;
}

static inline void rel_set_ptr_(void *obj, size_t offset, const void *p)
{
    memcpy((char *)obj + offset, &p, sizeof(p));
}

static inline const RelField *rel_field_(const RelType *t, const char *name)
{
    for (size_t i = 0; t && i < t->n_fields; i++)
        if (strcmp(t->fields[i].name, name) == 0)
            return &t->fields[i];
    return NULL;
}

static inline const RelField *rel_next_field_(const RelType *t)
{
    for (size_t i = 0; t && i < t->n_fields; i++)
        if (t->fields[i].kind == REL_KIND_NEXT)
            return &t->fields[i];
    return NULL;
}

static inline size_t rel_count_(const RelType *t, const RelField *f, const void *obj)
{
    const RelField *c = rel_field_(t, f->count);
    size_t n = 0;
    if (c && c->size == sizeof(size_t))
        memcpy(&n, (const char *)obj + c->offset, sizeof(n));
    return n;
}

static inline void rel_free_contents(const RelType *t, void *obj);

/* Frees obj, of type t, with everything it owns. */
static inline void rel_free(const RelType *t, void *obj)
{
    if (!obj)
        return;
    rel_free_contents(t, obj);
    free(obj);
}

/* Frees what obj owns, not obj itself (an array element, an embedded
 * struct). */
static inline void rel_free_contents(const RelType *t, void *obj)
{
    for (size_t i = 0; i < t->n_fields; i++) {
        const RelField *f = &t->fields[i];
        void *p = f->kind == REL_KIND_STRUCT ? NULL : rel_ptr_at_(obj, f->offset);
        if (f->kind == REL_KIND_STRING) {
            free(p);
        } else if (f->kind == REL_KIND_ARRAY) {
            size_t n = rel_count_(t, f, obj);
            for (size_t k = 0; p && k < n; k++)
                rel_free_contents(f->type, (char *)p + k * f->type->size);
            free(p);
        } else if (f->kind == REL_KIND_LIST) {
            const RelField *next = rel_next_field_(f->type);
            while (p) {
                void *after = next ? rel_ptr_at_(p, next->offset) : NULL;
                rel_free(f->type, p);
                p = after;
            }
        } else if (f->kind == REL_KIND_STRUCT) {
            rel_free_contents(f->type, (char *)obj + f->offset);
        }
    }
}

static inline int rel_convert_into_(const RelType *from, const void *src, const RelType *to, void *dst, char *err,
                                    size_t errlen);

/* One field of dst (type to) from src (type from), dst zeroed before. */
static inline int rel_convert_field_(const RelType *from, const void *src, const RelType *to, void *dst,
                                     const RelField *f, char *err, size_t errlen)
{
    const RelField *g = rel_field_(from, f->name);
    if (!g && f->was)
        g = rel_field_(from, f->was);
    if (!g) {
        for (size_t i = 0; i < from->n_fields && !g; i++) /* renamed on the other side */
            if (from->fields[i].was && strcmp(from->fields[i].was, f->name) == 0)
                g = &from->fields[i];
    }
    char *out = (char *)dst + f->offset;
    if (f->kind == REL_KIND_NEXT)
        return 0; /* linked by the list's conversion */
    if (!g) {     /* added */
        if (f->kind == REL_KIND_STRING && f->dflt) {
            char *s = strdup(f->dflt);
            if (!s)
                return -ENOMEM;
            rel_set_ptr_(dst, f->offset, s);
        } else if (f->kind == REL_KIND_VALUE && f->dflt) {
            memcpy(out, f->dflt, f->size);
        }
        return 0;
    }
    if (g->kind != f->kind || (f->kind == REL_KIND_VALUE && g->size != f->size)) {
        if (err && errlen)
            snprintf(err, errlen, "%s.%s: %s", to->name, f->name,
                     g->kind != f->kind ? "of another kind in the other layout"
                                        : "of another size in the other layout");
        return -EINVAL;
    }
    const char *in = (const char *)src + g->offset;
    switch (f->kind) {
    case REL_KIND_VALUE:
        memcpy(out, in, f->size);
        return 0;
    case REL_KIND_STRING: {
        const char *s = rel_ptr_at_(src, g->offset);
        char *copy = s ? strdup(s) : NULL;
        if (s && !copy)
            return -ENOMEM;
        rel_set_ptr_(dst, f->offset, copy);
        return 0;
    }
    case REL_KIND_STRUCT:
        return rel_convert_into_(g->type, in, f->type, out, err, errlen);
    case REL_KIND_ARRAY: {
        size_t n = rel_count_(from, g, src);
        const char *a = rel_ptr_at_(src, g->offset);
        if (!a || !n)
            return 0;
        if (n > SIZE_MAX / f->type->size)
            return -ENOMEM;
        char *b = calloc(n, f->type->size);
        if (!b)
            return -ENOMEM;
        rel_set_ptr_(dst, f->offset, b); /* freed with dst on failure: the count is set first */
        const RelField *c = rel_field_(to, f->count);
        if (!c || c->size != sizeof(size_t)) {
            if (err && errlen)
                snprintf(err, errlen, "%s.%s: its count %s is not a size_t field", to->name, f->name, f->count);
            return -EINVAL;
        }
        memcpy((char *)dst + c->offset, &n, sizeof(n));
        const RelField *cap = f->cap ? rel_field_(to, f->cap) : NULL;
        if (cap && cap->size == sizeof(size_t))
            memcpy((char *)dst + cap->offset, &n, sizeof(n));
        for (size_t k = 0; k < n; k++) {
            int r = rel_convert_into_(g->type, a + k * g->type->size, f->type, b + k * f->type->size, err, errlen);
            if (r < 0)
                return r;
        }
        return 0;
    }
    case REL_KIND_LIST: {
        const RelField *gn = rel_next_field_(g->type), *fn = rel_next_field_(f->type);
        if (!gn || !fn) {
            if (err && errlen)
                snprintf(err, errlen, "%s.%s: a list element type without REL_NEXT", to->name, f->name);
            return -EINVAL;
        }
        size_t link = f->offset; /* where the next element's pointer goes, in `at` */
        void *at = dst;
        for (const void *e = rel_ptr_at_(src, g->offset); e; e = rel_ptr_at_(e, gn->offset)) {
            void *copy = calloc(1, f->type->size);
            if (!copy)
                return -ENOMEM;
            rel_set_ptr_(at, link, copy); /* linked first: freed with dst on failure */
            int r = rel_convert_into_(g->type, e, f->type, copy, err, errlen);
            if (r < 0)
                return r;
            at = copy;
            link = fn->offset;
        }
        return 0;
    }
    case REL_KIND_NEXT:
        return 0;
    }
    return -EINVAL;
}

static inline int rel_convert_into_(const RelType *from, const void *src, const RelType *to, void *dst, char *err,
                                    size_t errlen)
{
    for (size_t i = 0; i < to->n_fields; i++) {
        const RelField *f = &to->fields[i];
        bool counts = false; /* an array's count or capacity: set by its array */
        for (size_t k = 0; k < to->n_fields && !counts; k++)
            counts = to->fields[k].kind == REL_KIND_ARRAY &&
                     (strcmp(to->fields[k].count, f->name) == 0 ||
                      (to->fields[k].cap && strcmp(to->fields[k].cap, f->name) == 0));
        int r = counts ? 0 : rel_convert_field_(from, src, to, dst, f, err, errlen);
        if (r < 0)
            return r;
    }
    return 0;
}

/* A new state of type `to` converted from src of type `from` (see
 * above). Returns 0 and *ret, or a negative errno (src untouched). */
static inline int rel_convert(const RelType *from, const void *src, const RelType *to, void **ret, char *err,
                              size_t errlen)
{
    void *dst = calloc(1, to->size);
    if (!dst)
        return -ENOMEM;
    int r = rel_convert_into_(from, src, to, dst, err, errlen);
    if (r < 0) {
        rel_free(to, dst);
        return r;
    }
    *ret = dst;
    return 0;
}
