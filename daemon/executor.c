/* Running a relup against the supervised processes (executor.h). */
#include "executor.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "events.h"
#include "log.h"
#include "store.h"
#include "util.h"

/* ---- requests: what reld asks of a process (docs/runtime.md) -------------------- */

typedef enum RequestCmd {
    REQ_LOAD_OBJECT_CODE,
    REQ_DROP_OBJECT_CODE,
    REQ_STATUS,
    REQ_SUSPEND,
    REQ_RESUME,
    REQ_LOAD,
    REQ_CODE_CHANGE,
    REQ_REVERT,
    REQ_PURGE,
    REQ_REMOVE,
    REQ_REHEARSE,
    REQ_N_CMDS
} RequestCmd;

static const char *const request_cmd_names[REQ_N_CMDS] = {
    [REQ_LOAD_OBJECT_CODE] = "load_object_code",
    [REQ_DROP_OBJECT_CODE] = "drop_object_code",
    [REQ_STATUS] = "status",
    [REQ_SUSPEND] = "suspend",
    [REQ_RESUME] = "resume",
    [REQ_LOAD] = "load",
    [REQ_CODE_CHANGE] = "code_change",
    [REQ_REVERT] = "revert",
    [REQ_PURGE] = "purge",
    [REQ_REMOVE] = "remove",
    [REQ_REHEARSE] = "rehearse",
};

/* How a request of a process's queue takes a failure before it. */
typedef enum RequestKind {
    KIND_STOPPED, /* not sent after a failure (the process goes no further) */
    KIND_ALWAYS,  /* sent even so (a resume after an undo, each purge) */
    KIND_OPTIONAL /* sent even so, and its own failure is no failure */
} RequestKind;

typedef struct Request {
    RequestCmd cmd;
    RequestKind kind;
    int timeout_ms;
    char *module;        /* every command but suspend and resume */
    char *path;          /* load_object_code: the new object */
    StrVec modules;      /* suspend, resume */
    PurgeMethod purge;   /* load: its pre_purge; purge: the method */
    bool down;           /* code_change: mode down */
    json_t *extra;       /* code_change: owned, never NULL */
    char *version;       /* revert: the version to make current again; NULL: none */
    json_t *rehearse;    /* rehearse: the modules list, owned */
    int copy_timeout_ms; /* rehearse: the process's own deadline for its copy */
} Request;

static void request_clear(Request *r)
{
    free(r->module);
    free(r->path);
    strvec_clear(&r->modules);
    json_decref(r->extra);
    free(r->version);
    json_decref(r->rehearse);
    *r = (Request){0};
}

static json_t *request_json(const Request *r)
{
    json_t *j = json_pack("{s:s}", "cmd", request_cmd_names[r->cmd]);
    if (r->module)
        json_object_set_new(j, "module", json_string(r->module));
    switch (r->cmd) {
    case REQ_LOAD_OBJECT_CODE:
        json_object_set_new(j, "path", json_string(r->path));
        break;
    case REQ_SUSPEND:
    case REQ_RESUME: {
        json_t *names = json_array();
        for (size_t k = 0; k < r->modules.n; k++)
            json_array_append_new(names, json_string(r->modules.v[k]));
        json_object_set_new(j, "modules", names);
        break;
    }
    case REQ_LOAD:
        json_object_set_new(j, "pre_purge", json_string(purge_method_name(r->purge)));
        break;
    case REQ_CODE_CHANGE:
        json_object_set_new(j, "mode", json_string(r->down ? "down" : "up"));
        json_object_set_new(j, "extra", json_incref(r->extra));
        break;
    case REQ_REVERT:
        json_object_set_new(j, "version", r->version ? json_string(r->version) : json_null());
        break;
    case REQ_PURGE:
        json_object_set_new(j, "method", json_string(purge_method_name(r->purge)));
        break;
    case REQ_REHEARSE:
        json_object_set_new(j, "timeout_ms", json_integer(r->copy_timeout_ms));
        json_object_set(j, "modules", r->rehearse);
        break;
    case REQ_DROP_OBJECT_CODE:
    case REQ_STATUS:
    case REQ_REMOVE:
    case REQ_N_CMDS:
        break;
    }
    return j;
}

/* ---- the executor's state ------------------------------------------------------- */

/* The requests of one instruction (or phase) to one process, sent one at a
 * time: a process stops at the first that fails, as OTP's script would. */
typedef struct Call {
    Executor *e;
    Child *child;
    Request *queue;
    size_t n, next;
    bool out; /* queue[next] is sent and awaited */
} Call;

/* What this run changed in a process, in order, for the inverse. */
typedef enum ChangeOp { CHANGE_LOAD, CHANGE_CODE_CHANGE_UP, CHANGE_CODE_CHANGE_DOWN, CHANGE_REMOVE } ChangeOp;
typedef struct Change {
    Child *child;
    char *module;
    ChangeOp op;
    json_t *extra; /* of a code_change */
} Change;

typedef struct Staged {
    Child *child;
    char *module;
} Staged;

/* The modules a process ran before this run: the versions the inverse makes current again. */
typedef struct Before {
    Child *child;
    StrVec names, versions;
} Before;

typedef struct Record {
    int idx;
    json_t *instr;
    char *outcome;
    long long start, dur;
} Record;

typedef enum Phase {
    PHASE_SCRIPT,
    PHASE_INVERSE,
    PHASE_RESTART_OLD, /* stops of the changed applications, to restart them on the old release */
    PHASE_POST_PURGE,
    PHASE_SWITCH_OVER, /* stops of processes that restart on the new release, or leave */
    PHASE_SUCCESSORS,  /* plain processes replaced with overlap: their new runs become ready */
    PHASE_RETIRE,      /* ... and their old runs stop */
    PHASE_DONE
} Phase;

typedef enum RehearsalState { REHEARSAL_NOT_STARTED, REHEARSAL_OUT, REHEARSAL_ENDED } RehearsalState;

struct Executor {
    ExecutorParams p;
    Supervisor *s;
    const RelupScript *script;
    Diag *diag;
    Phase phase;
    int result;         /* of the script, once it ended */
    size_t i, step_end; /* the instruction under way; where its step ends */
    bool past_ponr;
    bool restarted; /* the script stopped or started processes: no inverse can give their state back */
    Child *lost;    /* a process that went away during the script: its state is gone */
    StrVec killed;  /* brutal purges that ended their process (old code still in use): warnings */
    long long start, t0;
    /* The work of the instruction or phase under way: calls, and stop runs. */
    Call *calls;
    size_t n_calls;
    size_t n_out; /* calls and stop runs not yet ended */
    int work_r;   /* the first failure among them */
    bool waiting; /* returned to the event loop for them */
    /* Bookkeeping for the recovery. */
    Staged *staged;
    size_t n_staged;
    Child **suspended;
    size_t n_suspended;
    Change *changes;
    size_t n_changes;
    Before *before;
    size_t n_before;
    Child **script_stopped; /* by stop, to be started by start */
    size_t n_script_stopped;
    Child **to_restart; /* of the switch-over or the recovery, once stopped */
    size_t n_to_restart;
    Child **fresh; /* started by this run, on the new release's definitions */
    size_t n_fresh;
    struct Successor *successors; /* of the switch-over: plain processes replaced with overlap */
    size_t n_successors;
    bool switch_stopped; /* the switch-over stopped processes */
    /* Records wait in memory while a process is suspended: no disk write
     * (a commit, a WAL checkpoint) may lengthen the pause; and those of
     * steps that call no process wait for the next batch (executor.h). */
    Record *records;
    size_t n_records, cap_records;
    bool step_recorded; /* the step under way was written "running" before it ran */
    int64_t commits0;   /* history_commits() when the run began */
    /* Every child, walked once for a step's instructions rather than once
     * for each of their modules (a script of 20,000 modules against 1,000
     * applications): kids() while in_step, until an instruction that may
     * add, remove or replace children (kids_valid). */
    Child **kids;
    size_t n_kids;
    bool kids_valid, in_step;
    /* The rehearsal (executor.h): where it is, and its results. */
    RehearsalState rehearsal_state;
    json_t *rehearsal;
    long long rehearsal_t0;
};

#define APPEND(v, n, x)                                                                                                \
    do {                                                                                                               \
        (v) = xrealloc((v), ((n) + 1) * sizeof(__typeof__(*(v))));                                                     \
        (v)[(n)++] = (x);                                                                                              \
    } while (0)

static bool contains_child(Child *const *v, size_t n, const Child *c)
{
    for (size_t k = 0; k < n; k++)
        if (v[k] == c)
            return true;
    return false;
}

/* Every child, in start order; *ret_n of them. Caller frees the array. */
static Child **all_children(const Supervisor *s, size_t *ret_n)
{
    Child **v = NULL;
    size_t n = 0;
    for (size_t a = 0; a < supervisor_n_apps(s); a++) {
        App *app = supervisor_app(s, a);
        for (size_t k = 0; k < app->n_children; k++)
            APPEND(v, n, app->children[k]);
    }
    *ret_n = n;
    return v;
}

/* Does the child run module (by its current or its new definition)? */
static bool child_has_module(const Executor *e, const Child *c, const char *module)
{
    const ProcessDef *nd = supervisor_def_in(e->p.to, c, NULL);
    return strvec_contains(&proc_def(c->proc)->modules, module) || (nd && strvec_contains(&nd->modules, module));
}

/* ... and speaks the protocol, so that it can be asked to change it? */
static bool runs(const Executor *e, const Child *c, const char *module)
{
    return proc_speaks_protocol(c->proc) && child_has_module(e, c, module);
}

/* ---- calls ------------------------------------------------------------------ */

static void work_begin(Executor *e)
{
    e->work_r = 0;
    e->n_out = 0;
}

static void work_ended_one(Executor *e)
{
    if (--e->n_out == 0 && e->waiting)
        e->p.wake(e->p.userdata);
}

static Call *call_for(Executor *e, Child *c)
{
    for (size_t k = 0; k < e->n_calls; k++)
        if (e->calls[k].child == c)
            return &e->calls[k];
    e->calls = xrealloc(e->calls, (e->n_calls + 1) * sizeof(*e->calls));
    e->calls[e->n_calls] = (Call){.e = e, .child = c};
    return &e->calls[e->n_calls++];
}

/* Queues req (its contents taken) for c in the work under way. */
static void add_request(Executor *e, Child *c, Request *req)
{
    Call *call = call_for(e, c);
    call->queue = xrealloc(call->queue, (call->n + 1) * sizeof(*call->queue));
    call->queue[call->n++] = *req;
    *req = (Request){0};
}

static Request request(RequestCmd cmd, const char *module, int timeout_ms)
{
    return (Request){.cmd = cmd, .module = xstrdup(module), .timeout_ms = timeout_ms};
}

/* Every child, in start order: inside a step's loop (in_step) the walk
 * made for it, else a new one; kids_end() after. */
static Child **kids(Executor *e, size_t *ret_n)
{
    if (!e->in_step)
        return all_children(e->s, ret_n);
    if (!e->kids_valid) {
        free(e->kids);
        e->kids = all_children(e->s, &e->n_kids);
        e->kids_valid = true;
    }
    *ret_n = e->n_kids;
    return e->kids;
}

static void kids_end(const Executor *e, Child **v)
{
    if (!e->in_step)
        free(v);
}

/* Queues a copy of req for module to every process that runs it; clears req. */
static void add_to_runners(Executor *e, const char *module, Request *req)
{
    size_t n;
    Child **all = kids(e, &n);
    for (size_t k = 0; k < n; k++)
        if (runs(e, all[k], module)) {
            Request copy = *req;
            copy.module = xstrdup(req->module);
            copy.path = xstrdup(req->path);
            copy.modules = (StrVec){0};
            for (size_t m = 0; m < req->modules.n; m++)
                strvec_push(&copy.modules, req->modules.v[m]);
            copy.extra = json_incref(req->extra);
            copy.version = xstrdup(req->version);
            add_request(e, all[k], &copy);
        }
    kids_end(e, all);
    request_clear(req);
}

/* Does a process that speaks the protocol run module? (add_to_runners
 * would ask one.) */
static bool any_runner(Executor *e, const char *module)
{
    size_t n;
    Child **all = kids(e, &n);
    bool any = false;
    for (size_t k = 0; k < n && !any; k++)
        any = runs(e, all[k], module);
    kids_end(e, all);
    return any;
}

/* What a successful reply means for the bookkeeping of the recovery. */
static void note_success(Executor *e, Child *c, const Request *req)
{
    if (e->phase != PHASE_SCRIPT)
        return;
    switch (req->cmd) {
    case REQ_LOAD_OBJECT_CODE:
        APPEND(e->staged, e->n_staged, ((Staged){.child = c, .module = xstrdup(req->module)}));
        break;
    case REQ_SUSPEND:
        if (!contains_child(e->suspended, e->n_suspended, c))
            APPEND(e->suspended, e->n_suspended, c);
        break;
    case REQ_LOAD:
        APPEND(e->changes, e->n_changes, ((Change){.child = c, .module = xstrdup(req->module), .op = CHANGE_LOAD}));
        break;
    case REQ_CODE_CHANGE:
        APPEND(e->changes, e->n_changes,
               ((Change){.child = c,
                         .module = xstrdup(req->module),
                         .op = req->down ? CHANGE_CODE_CHANGE_DOWN : CHANGE_CODE_CHANGE_UP,
                         .extra = json_incref(req->extra)}));
        break;
    case REQ_REMOVE:
        APPEND(e->changes, e->n_changes, ((Change){.child = c, .module = xstrdup(req->module), .op = CHANGE_REMOVE}));
        break;
    case REQ_DROP_OBJECT_CODE:
    case REQ_STATUS:
    case REQ_RESUME:
    case REQ_REVERT:
    case REQ_PURGE:
    case REQ_REHEARSE:
    case REQ_N_CMDS:
        break; /* nothing a process needs back */
    }
}

/* Does a status reply show old code of module that something still uses
 * (a pinned old version)? */
static bool old_code_in_use(json_t *status, const char *module)
{
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(status, "modules"), i, m)
    {
        const char *name = json_string_value(json_object_get(m, "name"));
        if (name && strcmp(name, module) == 0 && !json_is_null(json_object_get(m, "old_version")) &&
            json_integer_value(json_object_get(m, "old_pins")) > 0)
            return true;
    }
    return false;
}

static void work_failed(Executor *e, int r)
{
    if (e->work_r == 0)
        e->work_r = r;
}

/* After a failure: what was queued for the process goes, except requests
 * sent regardless (RequestKind). */
static void drop_queue(Call *call)
{
    size_t k = call->next + 1, w = k;
    for (; k < call->n; k++) {
        if (call->queue[k].kind == KIND_STOPPED)
            request_clear(&call->queue[k]);
        else
            call->queue[w++] = call->queue[k];
    }
    call->n = w;
}

static const char *phase_doing(const Executor *e)
{
    if (e->phase != PHASE_INVERSE)
        return "";
    return e->p.to && strverscmp(e->p.to->vsn, e->p.from->vsn) < 0 ? "undoing the downgrade: "
                                                                   : "undoing the upgrade: ";
}

static void call_send_next(Call *call);

static json_t *rehearsal_entry(const Executor *e, const Child *c);
static int rehearsal_answered(Executor *e, Child *c, json_t *reply, int r);
static void rehearsal_warn_skipped(Executor *e);

static void on_reply(Proc *p, json_t *m, int r, void *userdata)
{
    Call *call = userdata;
    Executor *e = call->e;
    Request *req = &call->queue[call->next];
    call->out = false;
    if (r == 0 && !json_is_true(json_object_get(m, "ok")))
        r = -EPROTO;
    if (req->cmd == REQ_REHEARSE)
        r = rehearsal_answered(e, call->child, m, r);
    if (r == 0 && req->cmd == REQ_STATUS && old_code_in_use(m, req->module)) {
        diag_error(e->diag, "%s[%d]: soft_purge of %s cannot be honoured: its old code is still in use", proc_label(p),
                   (int)proc_pid(p), req->module);
        work_failed(e, -EBUSY);
        drop_queue(call);
    } else if (r == 0) {
        note_success(e, call->child, req);
        if (req->cmd == REQ_PURGE && json_is_true(json_object_get(m, "killed"))) /* done, but never silently */
            strvec_push_take(&e->killed,
                             xasprintf("%s[%d]: the purge of %s ended it: it still ran the old code (in use); its "
                                       "in-memory state is lost, and it restarts",
                                       proc_label(p), (int)proc_pid(p), req->module ? req->module : "?"));
    } else if (req->kind == KIND_OPTIONAL) {
        /* say nothing: what it would have tidied stays for a later purge */
    } else {
        const char *why = r == -EPROTO       ? json_string_value(json_object_get(m, "error"))
                          : r == -ETIMEDOUT  ? "no answer in time"
                          : r == -ECONNRESET ? "the process went away"
                                             : strerror(-r);
        const char *msg = r == -EPROTO ? json_string_value(json_object_get(m, "message")) : NULL;
        diag_error(e->diag, "%s[%d]: %s%s%s%s: %s%s%s", proc_label(p), (int)proc_pid(p), phase_doing(e),
                   request_cmd_names[req->cmd], req->module ? " " : "", req->module ? req->module : "",
                   why ? why : "refused", msg ? ": " : "", msg ? msg : "");
        work_failed(e, r);
        if (r == -ECONNRESET && e->phase == PHASE_SCRIPT && !e->lost)
            e->lost = call->child; /* whether or not its exit was seen yet */
        /* It may still do it, late: the recovery then resumes it, or drops
         * the code it staged. */
        if (r == -ETIMEDOUT && (req->cmd == REQ_SUSPEND || req->cmd == REQ_LOAD_OBJECT_CODE))
            note_success(e, call->child, req);
        drop_queue(call); /* this process goes no further */
    }
    call->next++;
    call_send_next(call);
}

static void call_send_next(Call *call)
{
    Executor *e = call->e;
    while (call->next < call->n) {
        Request *req = &call->queue[call->next];
        int r = proc_call(call->child->proc, request_json(req), req->timeout_ms, on_reply, call);
        if (r == 0) {
            call->out = true;
            return;
        }
        /* Not sent: it ends now, as if the process went away. */
        on_reply(call->child->proc, NULL, r == -EBUSY ? -EBUSY : -ECONNRESET, call);
        return;
    }
    work_ended_one(e);
}

/* Sends the first request of every call queued. */
static void start_calls(Executor *e)
{
    size_t n = e->n_calls;
    e->n_out += n;
    for (size_t k = 0; k < n; k++)
        call_send_next(&e->calls[k]);
}

static void calls_clear(Executor *e)
{
    for (size_t k = 0; k < e->n_calls; k++) {
        for (size_t q = 0; q < e->calls[k].n; q++)
            request_clear(&e->calls[k].queue[q]);
        free(e->calls[k].queue);
    }
    free(e->calls);
    e->calls = NULL;
    e->n_calls = 0;
}

static void on_stopped(void *userdata)
{
    work_ended_one(userdata);
}

/* Stops children (in the order given) as part of the work under way. */
static void stop_children(Executor *e, Child **v, size_t n)
{
    if (!n)
        return;
    e->n_out++;
    (void)supervisor_stop(e->s, v, n, on_stopped, e); /* cannot fail; the end comes from the loop */
}

/* ---- instructions ---------------------------------------------------------------- */

/* A suspend waits for the longest timeout of its modules; a module
 * without one waits 5 s (OTP's default for sys:suspend). */
static int mods_timeout(const RelupInstr *in)
{
    long t = 0;
    for (size_t k = 0; k < in->n_mods; k++) {
        long m = in->mods[k].timeout_ms == TIMEOUT_INFINITY ? 3600000
                 : in->mods[k].timeout_ms > 0               ? in->mods[k].timeout_ms
                                                            : 5000;
        t = m > t ? m : t;
    }
    return (int)(t ? t : 5000);
}

static bool runs_any(const Executor *e, const Child *c, const RelupInstr *in)
{
    for (size_t m = 0; m < in->n_mods; m++)
        if (child_has_module(e, c, in->mods[m].module))
            return true;
    return false;
}

/* The processes of application app that run, in reverse start order. */
static Child **running_children_reversed(App *a, size_t *ret_n)
{
    Child **v = NULL;
    size_t n = 0;
    for (size_t k = a ? a->n_children : 0; k-- > 0;)
        if (proc_pid(a->children[k]->proc))
            APPEND(v, n, a->children[k]);
    *ret_n = n;
    return v;
}

static int start_child_logged(Executor *e, Child *c)
{
    int r = supervisor_start_child(e->s, c);
    if (r < 0)
        diag_error(e->diag, "%s: cannot start: %s", proc_label(c->proc), strerror(-r));
    return r;
}

/* Did application `name` change between the two releases? */
static bool app_changed(const Executor *e, const char *name)
{
    const ReleaseAppRef *a = appdefs_release_find(e->p.from, name), *b = appdefs_release_find(e->p.to, name);
    return !a || !b || strcmp(a->vsn, b->vsn) != 0;
}

/* A process of a changed application that does not speak the protocol
 * restarts on the new version at the switch-over. */
static bool restarts_at_switch_over(const Executor *e, const Child *c)
{
    return proc_pid(c->proc) && !proc_speaks_protocol(c->proc) && app_changed(e, c->app->name) &&
           !contains_child(e->fresh, e->n_fresh, c);
}

/* Does application `name`, or one it depends on in the new release, still
 * have processes to restart at the switch-over? (The release is valid:
 * no cycles.) */
static bool waits_for_switch_over(const Executor *e, const char *name)
{
    App *a = supervisor_find_app(e->s, name);
    for (size_t k = 0; a && k < a->n_children; k++)
        if (restarts_at_switch_over(e, a->children[k]))
            return true;
    const ReleaseAppRef *ref = appdefs_release_find(e->p.to, name);
    for (size_t d = 0; ref && d < ref->app->applications.n; d++)
        if (waits_for_switch_over(e, ref->app->applications.v[d]))
            return true;
    return false;
}

static int start_fresh(Executor *e, Child *c)
{
    int r = start_child_logged(e, c);
    if (r == 0 && !contains_child(e->fresh, e->n_fresh, c))
        APPEND(e->fresh, e->n_fresh, c);
    return r;
}

/* Queues the work of instruction in (or finds it needs none). 0, or
 * -errno for an instruction that cannot run. */
static int exec_instr(Executor *e, const RelupInstr *in)
{
    switch (in->op) {
    case RELUP_LOAD_OBJECT_CODE: {
        const ReleaseAppRef *ref = appdefs_release_find(e->p.to, in->app);
        for (size_t k = 0; k < in->n_mods; k++) {
            const ModuleDef *md = ref ? appdefs_app_find_module(ref->app, in->mods[k].module) : NULL;
            if (!md) {
                diag_error(e->diag, "release %s has no module %s in %s", e->p.to->vsn, in->mods[k].module, in->app);
                return -EINVAL;
            }
            Request req = request(REQ_LOAD_OBJECT_CODE, md->name, 5000);
            req.path = store_path_in_app(e->p.root, in->app, in->vsn, md->file);
            add_to_runners(e, md->name, &req);
        }
        return 0;
    }
    case RELUP_POINT_OF_NO_RETURN:
        /* As OTP checks before it: a load or remove whose pre_purge is
         * soft_purge must find no process still running the module's old
         * code, else the upgrade stops here, with nothing changed. */
        for (size_t k = 0; k < e->script->n; k++) {
            const RelupInstr *later = &e->script->v[k];
            if ((later->op == RELUP_LOAD || later->op == RELUP_REMOVE) && later->pre_purge == PURGE_SOFT) {
                Request req = request(REQ_STATUS, later->module, 5000);
                add_to_runners(e, later->module, &req);
            }
        }
        return 0;
    case RELUP_SUSPEND:
    case RELUP_RESUME: {
        bool suspend = in->op == RELUP_SUSPEND;
        size_t n;
        Child **all = kids(e, &n);
        for (size_t k = 0; k < n; k++) {
            if (!proc_speaks_protocol(all[k]->proc) || !runs_any(e, all[k], in))
                continue;
            Request req = {.cmd = suspend ? REQ_SUSPEND : REQ_RESUME, .timeout_ms = suspend ? mods_timeout(in) : 5000};
            for (size_t m = 0; m < in->n_mods; m++)
                strvec_push(&req.modules, in->mods[m].module);
            add_request(e, all[k], &req);
        }
        kids_end(e, all);
        return 0;
    }
    case RELUP_LOAD: {
        Request req = request(REQ_LOAD, in->module, 5000);
        req.purge = in->pre_purge;
        add_to_runners(e, in->module, &req);
        return 0;
    }
    case RELUP_CODE_CHANGE:
        for (size_t k = 0; k < in->n_mods; k++) {
            Request req = request(REQ_CODE_CHANGE, in->mods[k].module, 10000);
            req.down = in->down;
            req.extra = json_incref(in->mods[k].extra ? in->mods[k].extra : json_null());
            add_to_runners(e, in->mods[k].module, &req);
        }
        return 0;
    case RELUP_PURGE:
        for (size_t k = 0; k < in->n_mods; k++) {
            Request req = request(REQ_PURGE, in->mods[k].module, 5000);
            req.purge = PURGE_BRUTAL;
            add_to_runners(e, in->mods[k].module, &req);
        }
        return 0;
    case RELUP_REMOVE: {
        Request req = request(REQ_REMOVE, in->module, 5000);
        add_to_runners(e, in->module, &req);
        return 0;
    }
    case RELUP_STOP: {
        /* The processes that run the modules stop (in reverse start order),
         * and start again at the script's start: with new code. */
        size_t n;
        Child **all = all_children(e->s, &n), **stop = NULL;
        size_t n_stop = 0;
        for (size_t k = n; k-- > 0;)
            if (proc_pid(all[k]->proc) && runs_any(e, all[k], in)) {
                APPEND(stop, n_stop, all[k]);
                if (!contains_child(e->script_stopped, e->n_script_stopped, all[k]))
                    APPEND(e->script_stopped, e->n_script_stopped, all[k]);
            }
        e->restarted = e->restarted || n_stop > 0;
        stop_children(e, stop, n_stop);
        free(stop);
        free(all);
        return 0;
    }
    case RELUP_START: {
        int r = 0;
        for (size_t k = 0; k < e->n_script_stopped; k++) {
            Child *c = e->script_stopped[k];
            if (!c || proc_pid(c->proc) || !runs_any(e, c, in))
                continue;
            supervisor_adopt_app(e->s, c->app, e->p.to);
            if (r == 0)
                r = start_fresh(e, c);
            e->script_stopped[k] = NULL;
        }
        return r;
    }
    case RELUP_STOP_APPLICATION: {
        /* At its place in the script: a removed application stops before
         * anything it depends on changes. */
        App *a = supervisor_find_app(e->s, in->app);
        if (!a)
            return 0;
        a->stopped = true;
        size_t n;
        Child **v = running_children_reversed(a, &n);
        e->restarted = e->restarted || n > 0;
        stop_children(e, v, n);
        free(v);
        return 0;
    }
    case RELUP_UNLOAD_APPLICATION: {
        /* Its code goes: the application leaves the supervisor's tables
         * (its processes stopped at its stop_application). */
        App *a = supervisor_find_app(e->s, in->app);
        if (!a)
            return 0;
        for (size_t k = 0; k < a->n_children; k++)
            if (proc_pid(a->children[k]->proc)) {
                diag_error(e->diag, "unload_application %s: %s still runs (no stop_application before it)", in->app,
                           proc_label(a->children[k]->proc));
                return -EBUSY;
            }
        for (size_t k = 0; k < e->n_script_stopped; k++)
            if (e->script_stopped[k] && e->script_stopped[k]->app == a)
                e->script_stopped[k] = NULL;
        supervisor_remove_app(e->s, a);
        e->restarted = true;
        return 0;
    }
    case RELUP_START_APPLICATION: {
        /* At its place: after everything it depends on was upgraded. What
         * depends on processes that restart at the switch-over (no runtime)
         * starts there, after them. */
        const ReleaseAppRef *ref = appdefs_release_find(e->p.to, in->app);
        if (!ref) {
            diag_error(e->diag, "start_application %s: release %s has no application %s", in->app, e->p.to->vsn,
                       in->app);
            return -EINVAL;
        }
        App *a = supervisor_find_app(e->s, in->app);
        e->restarted = true;
        for (size_t d = 0; d < ref->app->applications.n; d++)
            if (waits_for_switch_over(e, ref->app->applications.v[d])) {
                if (a)
                    a->stopped = true; /* the switch-over starts it */
                return 0;
            }
        if (!a) {
            int r = supervisor_add_app(e->s, ref, e->diag);
            a = r == 0 ? supervisor_find_app(e->s, in->app) : NULL;
            for (size_t k = 0; a && k < a->n_children; k++)
                APPEND(e->fresh, e->n_fresh, a->children[k]);
            return r;
        }
        supervisor_adopt_app(e->s, a, e->p.to);
        a->stopped = false;
        for (size_t k = 0; k < a->n_children; k++)
            if (!proc_pid(a->children[k]->proc)) {
                int r = start_fresh(e, a->children[k]);
                if (r < 0)
                    return r;
            }
        return 0;
    }
    case RELUP_N_OPS:
        break;
    }
    diag_error(e->diag, "instruction %d cannot be executed", (int)in->op);
    return -EINVAL;
}

/* ---- records ------------------------------------------------------------------- */

/* Writes the records waiting in memory (outcomes rewrite the "running"
 * rows written before the step). */
static int flush_records(Executor *e)
{
    if (!e->n_records)
        return 0;
    HistoryInstruction *v = xcalloc(e->n_records + 1, sizeof(*v));
    for (size_t k = 0; k < e->n_records; k++)
        v[k] = (HistoryInstruction){.idx = e->records[k].idx,
                                    .instr = e->records[k].instr,
                                    .outcome = e->records[k].outcome,
                                    .start_us = e->records[k].start,
                                    .duration_us = e->records[k].dur};
    int r = history_attempt_instructions(e->p.history, e->p.attempt, v, e->n_records);
    free(v);
    for (size_t k = 0; k < e->n_records; k++) {
        json_decref(e->records[k].instr);
        free(e->records[k].outcome);
    }
    e->n_records = 0;
    return r;
}

/* The record of instruction i (0-based) with its outcome (taken). */
/* A new record at the end of e->records. The array grows by doubling and
 * is kept between batches: a realloc per record of a batch of 1,024
 * (40 KB) made glibc consolidate its free lists at each one. */
static Record *new_record(Executor *e)
{
    if (e->n_records == e->cap_records) {
        e->cap_records = e->cap_records ? 2 * e->cap_records : 16;
        e->records = xrealloc(e->records, e->cap_records * sizeof(*e->records));
    }
    return &e->records[e->n_records++];
}

static void record_instruction(Executor *e, size_t i, char *outcome, long long start, long long dur)
{
    json_t *j = relup_to_json(&(Relup){.from = "", .to = "", .up = {.v = (RelupInstr *)&e->script->v[i], .n = 1}});
    *new_record(e) = (Record){
        .idx = (int)i + 1,
        .instr = json_incref(json_array_get(json_object_get(j, "up"), 0)),
        .outcome = outcome,
        .start = start,
        .dur = dur,
    };
    json_decref(j);
}

/* Where the step starting at instruction i ends (exclusive): after i, or
 * for a suspend after its resume, as a suspended group runs in one step. */
static size_t step_end(const Executor *e, size_t i)
{
    if (e->script->v[i].op != RELUP_SUSPEND)
        return i + 1;
    for (size_t k = i + 1; k < e->script->n; k++)
        if (e->script->v[k].op == RELUP_RESUME)
            return k + 1;
    return e->script->n;
}

/* Records of steps that call no process wait in memory for the next step
 * that does (written with its "running" rows), for the script's end or a
 * failure, or until this many wait: one commit for all of them. */
#define RECORDS_BATCH 1024

/* How long one executor_step() may run steps that call no process, one
 * after another, before the event loop turns: what a status request
 * waits at most for them. */
#define STEPS_RUN_US 1000

/* Is a step [i, end) to be written "running" before it runs? When it may
 * send a request to a process, or stop or start one (exec_instr's tests,
 * made before it: a crash during the step must leave the history saying
 * which call was under way), and at the point of no return (a crash after
 * it must find it passed, as the supervised processes may have changed
 * from there). A step that does none of this changes nothing outside reld:
 * it is recorded once, with its outcome, in the next batch. */
static bool step_records_first(Executor *e, size_t i, size_t end)
{
    for (size_t k = i; k < end; k++) {
        const RelupInstr *in = &e->script->v[k];
        switch (in->op) {
        case RELUP_LOAD_OBJECT_CODE:
        case RELUP_SUSPEND:
        case RELUP_RESUME:
        case RELUP_CODE_CHANGE:
        case RELUP_PURGE:
            for (size_t m = 0; m < in->n_mods; m++)
                if (any_runner(e, in->mods[m].module))
                    return true;
            break;
        case RELUP_LOAD:
        case RELUP_REMOVE:
            if (any_runner(e, in->module))
                return true;
            break;
        case RELUP_STOP: {
            size_t n;
            Child **all = kids(e, &n);
            bool any = false;
            for (size_t c = 0; c < n && !any; c++)
                any = proc_pid(all[c]->proc) && runs_any(e, all[c], in);
            kids_end(e, all);
            if (any)
                return true;
            break;
        }
        case RELUP_START:
            for (size_t c = 0; c < e->n_script_stopped; c++)
                if (e->script_stopped[c] && !proc_pid(e->script_stopped[c]->proc) &&
                    runs_any(e, e->script_stopped[c], in))
                    return true;
            break;
        case RELUP_STOP_APPLICATION:
        case RELUP_UNLOAD_APPLICATION:
            if (supervisor_find_app(e->s, in->app))
                return true;
            break;
        case RELUP_POINT_OF_NO_RETURN:
        case RELUP_START_APPLICATION: /* starts processes, or adds an application: always */
        case RELUP_N_OPS:
            return true;
        }
    }
    return false;
}

/* Does instruction op only queue requests (exec_instr), leaving the
 * supervisor's applications and children as they were? */
static bool sends_requests_only(RelupOp op)
{
    switch (op) {
    case RELUP_LOAD_OBJECT_CODE:
    case RELUP_POINT_OF_NO_RETURN:
    case RELUP_SUSPEND:
    case RELUP_RESUME:
    case RELUP_LOAD:
    case RELUP_CODE_CHANGE:
    case RELUP_PURGE:
    case RELUP_REMOVE:
        return true;
    case RELUP_STOP:
    case RELUP_START:
    case RELUP_STOP_APPLICATION:
    case RELUP_UNLOAD_APPLICATION:
    case RELUP_START_APPLICATION:
    case RELUP_N_OPS:
        break;
    }
    return false;
}

/* Writes the step's instructions from e->i "running", before anything of
 * it is sent. The records waiting before them go first, in their own
 * transaction: steps that ran stay recorded when the "running" rows cannot
 * be written. */
static int record_running(Executor *e)
{
    int r = flush_records(e);
    for (size_t k = e->i; r == 0 && k < e->step_end; k++)
        record_instruction(e, k, xstrdup("running"), mono_us() - e->start, 0);
    if (r == 0)
        r = flush_records(e);
    if (r < 0)
        diag_error(e->diag, "cannot record instruction %zu in the history (%s): stopped before it", e->i + 1,
                   history_last_error(e->p.history));
    e->step_recorded = r == 0;
    return r;
}

/* ---- the recovery and the end ----------------------------------------------------- */

static Request resume_all(const Child *c)
{
    Request req = {.cmd = REQ_RESUME, .timeout_ms = 5000, .kind = KIND_ALWAYS};
    const ProcessDef *def = proc_def(c->proc);
    for (size_t m = 0; m < def->modules.n; m++)
        strvec_push(&req.modules, def->modules.v[m]);
    return req;
}

static const char *version_before(const Executor *e, const Child *c, const char *module)
{
    for (size_t k = 0; k < e->n_before; k++)
        if (e->before[k].child == c) {
            ssize_t i = strvec_index(&e->before[k].names, module);
            return i < 0 ? NULL : e->before[k].versions.v[i];
        }
    return NULL;
}

/* Drops the code staged before a failure. Sent without waiting: a process
 * handles its commands in order, so one that answers load_object_code
 * late drops the code after staging it. */
static void drop_staged(Executor *e)
{
    for (size_t k = 0; k < e->n_staged; k++) {
        Proc *p = e->staged[k].child->proc;
        if (!proc_pid(p))
            continue;
        Request req = request(REQ_DROP_OBJECT_CODE, e->staged[k].module, 0);
        if (proc_send(p, request_json(&req)) < 0)
            log_warning("%s: cannot drop the staged code of %s: the process went away", proc_label(p),
                        e->staged[k].module);
        request_clear(&req);
    }
}

/* The request that undoes one change in a process. */
static Request undo_request(const Executor *e, const Change *ch)
{
    if (ch->op == CHANGE_LOAD) { /* the version it ran before becomes current again */
        Request req = request(REQ_REVERT, ch->module, 5000);
        req.version = xstrdup(version_before(e, ch->child, ch->module));
        return req;
    }
    /* code_change: the newer code converts the other way (up's undo runs
     * before the revert, down's after it). */
    Request req = request(REQ_CODE_CHANGE, ch->module, 10000);
    req.down = ch->op == CHANGE_CODE_CHANGE_UP;
    req.extra = json_incref(ch->extra ? ch->extra : json_null());
    return req;
}

/* Queues the inverse of what the script did before it failed: per
 * process, suspended, every change undone in reverse order, then resume
 * (sent even when an undo failed). false when it cannot work: a module was
 * removed, or processes restarted (their state is gone). */
static bool queue_inverse(Executor *e)
{
    const char *what = strverscmp(e->p.to->vsn, e->p.from->vsn) < 0 ? "downgrade" : "upgrade";
    for (size_t d = 0; d < e->n_changes; d++)
        if (e->changes[d].op == CHANGE_REMOVE) {
            diag_error(e->diag, "%s[%d]: undoing the %s: %s was removed and its state is gone",
                       proc_label(e->changes[d].child->proc), (int)proc_pid(e->changes[d].child->proc), what,
                       e->changes[d].module);
            return false;
        }
    if (e->restarted) {
        diag_error(e->diag, "undoing the %s: processes were restarted by it; their state is gone", what);
        return false;
    }
    if (e->lost) {
        diag_error(e->diag, "undoing the %s: %s went away; its state is gone", what, proc_label(e->lost->proc));
        return false;
    }
    size_t n;
    Child **all = all_children(e->s, &n);
    for (size_t k = 0; k < n; k++) {
        Child *c = all[k];
        if (!proc_pid(c->proc))
            continue;
        Request suspend = {.cmd = REQ_SUSPEND, .timeout_ms = 5000};
        for (size_t d = 0; d < e->n_changes; d++)
            if (e->changes[d].child == c && !strvec_contains(&suspend.modules, e->changes[d].module))
                strvec_push(&suspend.modules, e->changes[d].module);
        bool suspended = contains_child(e->suspended, e->n_suspended, c);
        if (suspend.modules.n) {
            add_request(e, c, &suspend);
            for (size_t d = e->n_changes; d-- > 0;)
                if (e->changes[d].child == c) {
                    Request undo = undo_request(e, &e->changes[d]);
                    add_request(e, c, &undo);
                }
            suspended = true;
        }
        request_clear(&suspend);
        if (suspended) {
            Request resume = resume_all(c);
            add_request(e, c, &resume);
        }
        /* The code the inverse made old goes, unless something still uses
         * it (soft: then a later purge takes it). */
        for (size_t d = 0; d < e->n_changes; d++)
            if (e->changes[d].child == c && e->changes[d].op == CHANGE_LOAD) {
                Request purge = request(REQ_PURGE, e->changes[d].module, 5000);
                purge.purge = PURGE_SOFT;
                purge.kind = KIND_OPTIONAL;
                add_request(e, c, &purge);
            }
    }
    free(all);
    return true;
}

static int phase_run(Executor *e, Phase phase);

/* Past the point of no return, and no inverse: every changed application
 * back on the old release, by restarting it there. First the stops. */
static int restart_old_begin(Executor *e)
{
    for (size_t k = 0; k < e->n_suspended; k++) { /* unchanged applications' processes go on */
        Proc *p = e->suspended[k]->proc;
        if (proc_pid(p)) {
            Request req = resume_all(e->suspended[k]);
            (void)proc_send(p, request_json(&req)); /* gone: nothing to resume */
            request_clear(&req);
        }
    }
    calls_clear(e);
    work_begin(e);
    e->phase = PHASE_RESTART_OLD;
    Child **stop = NULL;
    size_t n_stop = 0;
    for (size_t a = supervisor_n_apps(e->s); a-- > 0;) {
        App *app = supervisor_app(e->s, a);
        if (!app_changed(e, app->name) && !app->stopped)
            continue;
        app->stopped = true;
        size_t n;
        Child **v = running_children_reversed(app, &n);
        for (size_t k = 0; k < n; k++)
            APPEND(stop, n_stop, v[k]);
        free(v);
    }
    stop_children(e, stop, n_stop);
    free(stop);
    return phase_run(e, PHASE_RESTART_OLD);
}

/* The stops ended: the changed applications start on `from`. */
static void restart_old_end(Executor *e)
{
    StrVec restarted = {0};
    for (size_t a = supervisor_n_apps(e->s); a-- > 0;) { /* added by the script: they go */
        App *app = supervisor_app(e->s, a);
        if (!appdefs_release_find(e->p.from, app->name)) {
            strvec_push(&restarted, app->name);
            supervisor_remove_app(e->s, app);
        }
    }
    supervisor_adopt_release(e->s, e->p.from);
    size_t *order = appdefs_release_order(e->p.from);
    for (size_t k = 0; k < e->p.from->n_apps; k++) {
        const ReleaseAppRef *ref = &e->p.from->apps[order[k]];
        App *app = supervisor_find_app(e->s, ref->name);
        if (!app) { /* unloaded by the script */
            if (supervisor_add_app(e->s, ref, e->diag) < 0)
                log_error("cannot start %s again on release %s", ref->name, e->p.from->vsn);
            strvec_push(&restarted, ref->name);
            continue;
        }
        if (!app->stopped)
            continue;
        app->stopped = false;
        if (!strvec_contains(&restarted, app->name))
            strvec_push(&restarted, app->name);
        for (size_t c = 0; c < app->n_children; c++)
            if (!proc_pid(app->children[c]->proc))
                (void)start_child_logged(e, app->children[c]); /* the reason is in diag */
    }
    free(order);
    supervisor_adopt_release(e->s, e->p.from); /* the start order of `from`, with apps added back */
    char *list = xstrdup("");
    for (size_t k = 0; k < restarted.n; k++) {
        char *l = xasprintf("%s%s%s", list, k ? ", " : "", restarted.v[k]);
        free(list);
        list = l;
    }
    diag_warning(e->diag,
                 "failed after the point of no return: restarted %s on release %s (their in-memory state is lost)",
                 *list ? list : "nothing", e->p.from->vsn);
    free(list);
    strvec_clear(&restarted);
}

/* ---- the switch-over's overlaps (docs/formats.md "Replacing a process") ---------------- */

/* A plain process replaced with overlap: its new run starts beside the
 * old one, which serves until the new run is ready and is told to stop
 * only then; both share the listening sockets reld holds, so no
 * connection finds none. */
typedef struct Successor {
    Executor *e;
    Child *c;
    HealthProbe *probe; /* ready: health: the new run's checks, and the gate over them */
    HealthGate *gate;
    char *why;     /* the gate's reason, for the message */
    bool waiting;  /* for its readiness, or (retiring) for the old run's exit */
    bool retiring; /* committed: the old run was told to stop */
} Successor;

static bool replaced_with_overlap(const Executor *e, const Child *c)
{
    const ProcessDef *nd = supervisor_def_in(e->p.to, c, NULL);
    return nd && nd->overlap && restarts_at_switch_over(e, c);
}

static void successors_clear(Executor *e)
{
    for (size_t k = 0; k < e->n_successors; k++) {
        Successor *s = &e->successors[k];
        health_gate_free(s->gate);
        health_probe_free(s->probe);
        free(s->why);
        if (s->waiting) /* the executor goes first (reld stops): nobody to tell */
            proc_successor_forget(s->c->proc);
        if (s->waiting && !s->retiring) { /* the old run serves on, on its definition: the new one goes */
            proc_successor_abort(s->c->proc);
            supervisor_adopt_app(e->s, s->c->app, e->p.from);
        }
    }
    free(e->successors);
    e->successors = NULL;
    e->n_successors = 0;
}

/* In the history as the supervisor records its starts and stops. */
static void record_process(Executor *e, Child *c, const char *kind, json_t *detail)
{
    json_object_set_new(detail, "app", json_string(c->app->name));
    json_object_set_new(detail, "process", json_string(proc_def(c->proc)->name));
    if (history_event(e->p.history, kind, "reld", c->app->vsn, detail) < 0)
        log_error("%s: cannot record %s in the history", proc_label(c->proc), kind);
    json_decref(detail);
}

/* A run's end, as the supervisor records one ({pid, how, status}). */
static void record_end(Executor *e, Child *c, const char *kind, const siginfo_t *si)
{
    bool signaled = si->si_code == CLD_KILLED || si->si_code == CLD_DUMPED;
    record_process(e, c, kind,
                   json_pack("{s:i, s:s, s:i}", "pid", (int)si->si_pid, "how", signaled ? "signal" : "exit", "status",
                             si->si_status));
}

static void on_successor_ready(Proc *p, int r, void *userdata)
{
    Successor *s = userdata;
    Executor *e = s->e;
    const ProcessDef *d = proc_def(p);
    s->waiting = false;
    /* The old run: serving on, or it ended during the overlap (then it is
     * restarted, on the old release). */
    pid_t old = r == -ETIMEDOUT ? proc_previous_pid(p) : proc_pid(p);
    char on[160];
    if (old)
        (void)snprintf(on, sizeof(on), "process %d serves on", (int)old);
    else
        (void)snprintf(on, sizeof(on), "the old process ended meanwhile and is restarted on release %s",
                       e->p.from->vsn);
    if (r == -ETIMEDOUT)
        diag_error(e->diag, "%s[%d]: not ready within %ld ms (%s): stopped; %s", proc_label(p), (int)proc_pid(p),
                   d->ready_timeout_ms,
                   d->ready == READY_NOTIFY ? "no READY=1 on its NOTIFY_SOCKET"
                   : s->why                 ? s->why
                                            : "its health checks did not pass",
                   on);
    else if (r < 0)
        diag_error(e->diag, "%s: its new version ended before it was ready (%s%s); %s", proc_label(p),
                   *proc_last_output(p) ? "its last output: " : "no output", proc_last_output(p), on);
    if (r < 0 && !proc_overlapping(p))
        /* The overlap is over: the old run's end, if it ended, is told
         * from the loop next, and it restarts on the old definition. */
        supervisor_adopt_app(e->s, s->c->app, e->p.from);
    if (r == -ECHILD && proc_ready_exit(p)) /* the new run ended: its start was recorded */
        record_end(e, s->c, "process_exit", proc_ready_exit(p));
    if (r < 0)
        work_failed(e, r);
    work_ended_one(e);
}

static void on_successor_gate(HealthGate *g, bool healthy, const char *reason, void *userdata)
{
    Successor *s = userdata;
    if (healthy)
        proc_set_ready(s->c->proc);
    else if (!s->why) /* its own timeout ends the wait, at the same time */
        s->why = xstrdup(reason);
}

/* Starts the new runs of the plain processes replaced with overlap, each
 * on its new definition (its application's definitions taken now: the
 * old run keeps its own, to stop by), and waits for them to be ready. */
static void successors_begin(Executor *e)
{
    const ProcessDef **old = NULL;
    size_t n_old = 0;
    for (size_t a = 0; a < supervisor_n_apps(e->s); a++) {
        App *app = supervisor_app(e->s, a);
        for (size_t k = 0; k < app->n_children; k++)
            if (replaced_with_overlap(e, app->children[k])) {
                APPEND(e->successors, e->n_successors, ((Successor){.e = e, .c = app->children[k]}));
                APPEND(old, n_old, proc_def(app->children[k]->proc));
            }
    }
    for (size_t k = 0; k < e->n_successors; k++)
        if (k == 0 || e->successors[k].c->app != e->successors[k - 1].c->app)
            supervisor_adopt_app(e->s, e->successors[k].c->app, e->p.to);
    /* One switch-over per attempt, so the list was empty: old[k] is the
     * definition successors[k]'s old run keeps. */
    for (size_t k = 0; k < n_old; k++) {
        Successor *s = &e->successors[k];
        Proc *p = s->c->proc;
        int r = proc_spawn_successor(p, old[k]);
        if (r == 0 && proc_def(p)->ready == READY_HEALTH) {
            char *dir = store_path_app_dir(e->p.root, s->c->app->name, s->c->app->vsn);
            r = health_probe_new(proc_event(p), proc_label(p), proc_def(p), dir, &(HealthProbeOps){0}, NULL, &s->probe);
            free(dir);
            if (r == 0) {
                health_probe_started(s->probe, proc_pid(p));
                r = health_gate_new(proc_event(p), &s->probe, 1, 0, proc_def(p)->ready_timeout_ms, on_successor_gate, s,
                                    &s->gate);
            }
            if (r < 0)
                proc_successor_abort(p);
        }
        if (r == 0)
            r = proc_wait_ready(p, on_successor_ready, s);
        if (r == 0)
            record_process(e, s->c, "process_start", json_pack("{s:i}", "pid", (int)proc_pid(p)));
        if (r < 0) {
            if (proc_overlapping(p))
                proc_successor_abort(p);
            diag_error(e->diag, "%s: cannot start its new version: %s; the old process serves on", proc_label(p),
                       strerror(-r));
            work_failed(e, r);
            continue;
        }
        s->waiting = true;
        e->n_out++;
    }
    free(old);
}

static void on_retired(Proc *p, const siginfo_t *si, void *userdata)
{
    Successor *s = userdata;
    record_end(s->e, s->c, "process_stop", si);
    s->waiting = false;
    work_ended_one(s->e);
}

/* The new runs are ready: the old ones are told to stop. Or some are not:
 * then every new run goes, the old ones serve on, the processes take the
 * old release's definitions again and the upgrade fails. A run that
 * changed nothing else (no process upgraded in place, started or stopped)
 * leaves the old release running untouched; otherwise the changed
 * applications restart on the old release, as after any failure past the
 * point of no return. */
static int successors_ended(Executor *e, int q)
{
    calls_clear(e);
    work_begin(e);
    for (size_t k = 0; q == 0 && k < e->n_successors; k++)
        if (!proc_overlapping(e->successors[k].c->proc))
            q = -ECHILD; /* ended after it was ready: told already */
    if (q == 0) {
        for (size_t k = 0; k < e->n_successors; k++) {
            Successor *s = &e->successors[k];
            health_probe_started(s->c->probe, proc_pid(s->c->proc)); /* its checks follow the new run */
            const siginfo_t *ended = proc_previous_exit(s->c->proc);
            siginfo_t si = ended ? *ended : (siginfo_t){0};
            int r = proc_successor_commit(s->c->proc, on_retired, s);
            if (r == 0) {
                s->waiting = s->retiring = true;
                e->n_out++;
            } else if (r == 1 && ended) {
                /* The old run ended on its own during the overlap: told as
                 * the supervisor tells any such end. */
                bool clean = si.si_code == CLD_EXITED && si.si_status == 0;
                record_end(e, s->c, "process_exit", &si);
                EventFields f = {.process = proc_label(s->c->proc)};
                events_emit(EVENT_PROCESS_EXITED, clean ? LOG_NOTICE : LOG_WARNING, &f,
                            "%s (pid %d) ended during its replacement: %s %d", proc_label(s->c->proc), (int)si.si_pid,
                            si.si_code == CLD_EXITED ? "exit" : "killed by signal", si.si_status);
            }
        }
        return phase_run(e, PHASE_RETIRE);
    }
    for (size_t k = 0; k < e->n_successors; k++) {
        Successor *s = &e->successors[k];
        pid_t pid = proc_overlapping(s->c->proc) ? proc_pid(s->c->proc) : 0;
        s->waiting = false;
        proc_successor_abort(s->c->proc);
        if (pid) /* stopping in the background */
            record_process(e, s->c, "process_stop", json_pack("{s:i, s:s}", "pid", (int)pid, "how", "not ready"));
    }
    successors_clear(e);
    e->result = q;
    supervisor_adopt_release(e->s, e->p.from);
    if (e->n_changes == 0 && !e->restarted && e->n_fresh == 0 && !e->lost && !e->switch_stopped) {
        drop_staged(e);
        diag_warning(e->diag, "failed at the switch-over: release %s runs untouched, its processes serving on",
                     e->p.from->vsn);
        e->phase = PHASE_DONE;
        return q;
    }
    return restart_old_begin(e);
}

/* After the post-purges: every process takes its new definition; what
 * must restart or leave stops first, then the plain processes replaced
 * with overlap start their new runs (PHASE_SUCCESSORS). */
static int switch_over_begin(Executor *e)
{
    calls_clear(e);
    work_begin(e);
    /* Stopped by what they run now (their shutdown_ms, of the old release);
     * they take their new definitions once stopped. */
    Child **stop = NULL;
    size_t n_stop = 0;
    for (size_t a = supervisor_n_apps(e->s); a-- > 0;) {
        App *app = supervisor_app(e->s, a);
        bool leaves = !appdefs_release_find(e->p.to, app->name);
        if (leaves)
            app->stopped = true;
        for (size_t k = app->n_children; k-- > 0;) {
            Child *c = app->children[k];
            if (!proc_pid(c->proc) || (!leaves && replaced_with_overlap(e, c)))
                continue;
            bool plain = restarts_at_switch_over(e, c);
            if (leaves || plain) {
                APPEND(stop, n_stop, c);
                if (!leaves)
                    APPEND(e->to_restart, e->n_to_restart, c);
            }
        }
    }
    e->switch_stopped = n_stop > 0;
    stop_children(e, stop, n_stop);
    free(stop);
    return phase_run(e, PHASE_SWITCH_OVER);
}

static void switch_over_end(Executor *e)
{
    supervisor_adopt_release(e->s, e->p.to);
    for (size_t a = supervisor_n_apps(e->s); a-- > 0;) {
        App *app = supervisor_app(e->s, a);
        if (!appdefs_release_find(e->p.to, app->name))
            supervisor_remove_app(e->s, app);
    }
    for (size_t k = 0; k < e->n_to_restart; k++)
        if (start_child_logged(e, e->to_restart[k]) < 0)
            log_error("%s", e->diag->errors.v[e->diag->errors.n - 1]);
    size_t *order = appdefs_release_order(e->p.to);
    for (size_t k = 0; k < e->p.to->n_apps; k++) {
        const ReleaseAppRef *ref = &e->p.to->apps[order[k]];
        App *app = supervisor_find_app(e->s, ref->name);
        Diag d = {0};
        if (!app && supervisor_add_app(e->s, ref, &d) < 0) /* the script did not start it */
            log_error("cannot start application %s: %s", ref->name, d.errors.n ? d.errors.v[0] : "?");
        diag_clear(&d);
        if (!app || !app->stopped)
            continue;
        app->stopped = false; /* stopped by the script and not started again: the release runs it */
        for (size_t c = 0; c < app->n_children; c++)
            if (!proc_pid(app->children[c]->proc) && supervisor_start_child(e->s, app->children[c]) < 0)
                log_error("%s: cannot start", proc_label(app->children[c]->proc));
    }
    free(order);
    supervisor_adopt_release(e->s, e->p.to); /* the start order of `to`, with apps added */
}

/* The work of a finishing phase ended (work_r says how). */
static int phase_ended(Executor *e)
{
    int q = e->work_r;
    calls_clear(e);
    switch (e->phase) {
    case PHASE_INVERSE:
        drop_staged(e);
        if (q < 0)
            return restart_old_begin(e);
        diag_warning(e->diag,
                     "failed after the point of no return: ran the inverse of what was done; release %s runs, its "
                     "state kept",
                     e->p.from->vsn);
        break;
    case PHASE_RESTART_OLD:
        restart_old_end(e);
        break;
    case PHASE_POST_PURGE:
        diag_clear(e->diag);                     /* a refused soft post-purge is not a failure */
        for (size_t k = 0; k < e->killed.n; k++) /* a brutal one that killed is not silent */
            diag_warning(e->diag, "%s", e->killed.v[k]);
        strvec_clear(&e->killed);
        rehearsal_warn_skipped(e);
        return switch_over_begin(e);
    case PHASE_SWITCH_OVER:
        calls_clear(e);
        work_begin(e);
        successors_begin(e);
        return phase_run(e, PHASE_SUCCESSORS);
    case PHASE_SUCCESSORS:
        return successors_ended(e, q);
    case PHASE_RETIRE:
        switch_over_end(e);
        successors_clear(e);
        break;
    case PHASE_SCRIPT:
    case PHASE_DONE:
        break;
    }
    e->phase = PHASE_DONE;
    return e->result;
}

/* Starts the work queued for a finishing phase: EXECUTOR_WAITING while it
 * is out, else what the phase ends with. */
static int phase_run(Executor *e, Phase phase)
{
    e->phase = phase;
    start_calls(e);
    if (e->n_out > 0) {
        e->waiting = true;
        return EXECUTOR_WAITING;
    }
    return phase_ended(e);
}

/* What is left to do after the script failed or ended. */
static int finish(Executor *e, int r)
{
    e->result = r;
    calls_clear(e);
    work_begin(e);
    if (r < 0 && !e->past_ponr) {
        /* Nothing has changed yet: drop the staged code, the old release runs on. */
        drop_staged(e);
        diag_warning(e->diag,
                     "failed before the point of no return: the new code was dropped, release %s runs untouched",
                     e->p.from->vsn);
        e->phase = PHASE_DONE;
        return r;
    }
    if (r < 0) {
        if (!queue_inverse(e)) {
            drop_staged(e);
            return restart_old_begin(e);
        }
        return phase_run(e, PHASE_INVERSE);
    }
    /* The old code goes (OTP's post_purge); each purge on its own. The
     * children walked once for all of them. */
    e->in_step = true;
    e->kids_valid = false;
    for (size_t k = 0; k < e->script->n; k++) {
        const RelupInstr *in = &e->script->v[k];
        if (in->op != RELUP_LOAD)
            continue;
        Request req = request(REQ_PURGE, in->module, 5000);
        req.purge = in->post_purge;
        req.kind = KIND_ALWAYS;
        add_to_runners(e, in->module, &req);
    }
    e->in_step = false;
    return phase_run(e, PHASE_POST_PURGE);
}

/* ---- the rehearsal ----------------------------------------------------------------- */

/* The code_change instruction of the script for module, or NULL. */
static const RelupInstr *code_change_of(const Executor *e, const char *module, const RelupModule **ret_mod)
{
    for (size_t k = 0; k < e->script->n; k++) {
        const RelupInstr *in = &e->script->v[k];
        for (size_t m = 0; in->op == RELUP_CODE_CHANGE && m < in->n_mods; m++)
            if (strcmp(in->mods[m].module, module) == 0) {
                *ret_mod = &in->mods[m];
                return in;
            }
    }
    return NULL;
}

/* What process c is to rehearse: an entry per module of the script's
 * load_object_code that it runs (docs/runtime.md "rehearse"), or NULL. */
static json_t *rehearsal_modules(const Executor *e, const Child *c)
{
    json_t *list = NULL;
    for (size_t k = 0; k < e->script->n; k++) {
        const RelupInstr *in = &e->script->v[k];
        if (in->op != RELUP_LOAD_OBJECT_CODE)
            continue;
        const ReleaseAppRef *ref = appdefs_release_find(e->p.to, in->app);
        for (size_t m = 0; m < in->n_mods; m++) {
            const ModuleDef *md = ref ? appdefs_app_find_module(ref->app, in->mods[m].module) : NULL;
            if (!md || !child_has_module(e, c, md->name))
                continue; /* no such module: the script's own load_object_code says so */
            const RelupModule *cm = NULL;
            const RelupInstr *cc = code_change_of(e, md->name, &cm);
            char *path = store_path_in_app(e->p.root, in->app, in->vsn, md->file);
            json_t *item =
                json_pack("{s:s, s:s, s:b, s:s, s:O}", "module", md->name, "path", path, "change", cc != NULL, "mode",
                          cc && cc->down ? "down" : "up", "extra", cm && cm->extra ? cm->extra : json_null());
            free(path);
            if (!list)
                list = json_array();
            json_array_append_new(list, item);
        }
    }
    return list;
}

static json_t *rehearsal_entry(const Executor *e, const Child *c)
{
    size_t i;
    json_t *p;
    json_array_foreach(json_object_get(e->rehearsal, "processes"), i, p)
    {
        if (json_integer_value(json_object_get(p, "pid")) == proc_pid(c->proc) &&
            strcmp(json_string_value(json_object_get(p, "process")), proc_label(c->proc)) == 0)
            return p;
    }
    return NULL;
}

/* A process answered its rehearse (or did not, r): its entry says how.
 * Returns r, or 0 for a runtime too old to rehearse (not a failure). */
static int rehearsal_answered(Executor *e, Child *c, json_t *reply, int r)
{
    json_t *entry = rehearsal_entry(e, c);
    const char *error = json_string_value(json_object_get(reply, "error"));
    const char *msg = json_string_value(json_object_get(reply, "message"));
    if (r == -EPROTO && error && strcmp(error, "unknown_command") == 0) {
        json_object_set_new(entry, "outcome", json_string("skipped: its runtime has no rehearse command"));
        return 0; /* warned at the end (rehearsal_warn_skipped) */
    }
    char *outcome = r == 0             ? xstrdup("ok")
                    : r == -EPROTO     ? xasprintf("failed: %s", msg     ? msg
                                                                 : error ? error
                                                                         : "refused")
                    : r == -ETIMEDOUT  ? xstrdup("failed: no answer in time")
                    : r == -ECONNRESET ? xstrdup("failed: the process went away")
                                       : xasprintf("failed: %s", strerror(-r));
    json_object_set_new(entry, "outcome", json_string(outcome));
    free(outcome);
    json_t *fork_us = json_object_get(reply, "fork_us");
    if (json_is_integer(fork_us))
        json_object_set(entry, "fork_us", fork_us);
    if (r == 0 && json_is_array(json_object_get(reply, "rehearsed")))
        json_object_set(entry, "rehearsed", json_object_get(reply, "rehearsed"));
    return r;
}

/* One warning per process not rehearsed: when the rehearsal ends, and
 * again after the post-purges (which clear diag) of a run that went on. */
static void rehearsal_warn_skipped(Executor *e)
{
    size_t i;
    json_t *p;
    json_array_foreach(json_object_get(e->rehearsal, "processes"), i, p)
    {
        const char *outcome = json_string_value(json_object_get(p, "outcome"));
        if (outcome && strncmp(outcome, "skipped: ", 9) == 0)
            diag_warning(e->diag, "%s[%d]: not rehearsed: %s", json_string_value(json_object_get(p, "process")),
                         (int)json_integer_value(json_object_get(p, "pid")), outcome + 9);
    }
}

/* The rehearsal's record: the attempt's instruction 0. */
static void record_rehearsal(Executor *e, char *outcome)
{
    *new_record(e) = (Record){
        .idx = 0,
        .instr = json_pack("{s:s, s:O}", "op", "rehearse", "processes", json_object_get(e->rehearsal, "processes")),
        .outcome = outcome,
        .start = 0,
        .dur = mono_us() - e->rehearsal_t0,
    };
}

/* Sends every process concerned its rehearse. EXECUTOR_WAITING while they
 * answer, else rehearsal_ended()'s result. */
static int rehearsal_begin(Executor *e)
{
    int timeout = e->p.rehearse_timeout_ms > 0 ? e->p.rehearse_timeout_ms : 10000;
    e->rehearsal_state = REHEARSAL_OUT;
    e->rehearsal_t0 = mono_us();
    e->rehearsal = json_pack("{s:n, s:[]}", "ok", "processes");
    work_begin(e);
    size_t n;
    Child **all = all_children(e->s, &n);
    for (size_t k = 0; k < n; k++) {
        Child *c = all[k];
        json_t *mods = proc_pid(c->proc) && proc_speaks_protocol(c->proc) ? rehearsal_modules(e, c) : NULL;
        if (!mods)
            continue;
        json_t *names = json_array();
        size_t i;
        json_t *item;
        json_array_foreach(mods, i, item)
        {
            json_array_append(names, json_object_get(item, "module"));
        }
        json_array_append_new(json_object_get(e->rehearsal, "processes"),
                              json_pack("{s:s, s:i, s:o, s:s}", "process", proc_label(c->proc), "pid",
                                        (int)proc_pid(c->proc), "modules", names, "outcome", "running"));
        /* The process kills its copy at the deadline and answers: reld
         * waits a little longer than that for the answer. */
        Request req = {.cmd = REQ_REHEARSE, .timeout_ms = timeout + 2000, .copy_timeout_ms = timeout, .rehearse = mods};
        add_request(e, c, &req);
    }
    free(all);
    record_rehearsal(e, xstrdup("running"));
    int r = flush_records(e);
    if (r < 0) {
        diag_error(e->diag, "cannot record the rehearsal in the history (%s): stopped before it",
                   history_last_error(e->p.history));
        work_failed(e, r);
        calls_clear(e);
        return -1; /* rehearsal_ended() takes work_r */
    }
    start_calls(e);
    if (e->n_out > 0) {
        e->waiting = true;
        return EXECUTOR_WAITING;
    }
    return 0;
}

/* Every process answered (or not): 0 when all passed, else the run ends
 * here with nothing run (the script's instructions recorded "not run"). */
static int rehearsal_ended(Executor *e)
{
    int r = e->work_r;
    e->waiting = false;
    e->rehearsal_state = REHEARSAL_ENDED;
    calls_clear(e);
    json_object_set_new(e->rehearsal, "ok", json_boolean(r == 0));
    record_rehearsal(e, r == 0 ? xstrdup("ok")
                               : xasprintf("failed: %s", e->diag->errors.n ? e->diag->errors.v[e->diag->errors.n - 1]
                                                                           : strerror(-r)));
    if (r < 0)
        for (size_t k = 0; k < e->script->n; k++)
            record_instruction(e, k, xstrdup("not run"), mono_us() - e->start, 0);
    int w = flush_records(e);
    if (w < 0) {
        diag_error(e->diag, "cannot record the rehearsal's outcome in the history (%s): stopped",
                   history_last_error(e->p.history));
        r = r < 0 ? r : w;
    }
    if (r == 0)
        rehearsal_warn_skipped(e); /* again after the post-purges, which clear diag */
    if (r < 0) {
        diag_warning(e->diag, "rehearsal failed: no instruction ran, release %s runs untouched", e->p.from->vsn);
        e->result = r;
        e->phase = PHASE_DONE;
    }
    return r;
}

json_t *executor_rehearsal(const Executor *e)
{
    return e->rehearsal;
}

/* Instruction i ended with r: its record, and where the step goes next. */
static void instr_ended(Executor *e, int r)
{
    const RelupInstr *in = &e->script->v[e->i];
    e->past_ponr = e->past_ponr || (in->op == RELUP_POINT_OF_NO_RETURN && r == 0); /* its checks passed */
    record_instruction(
        e, e->i,
        r == 0 ? xstrdup("ok")
               : xasprintf("failed: %s", e->diag->errors.n ? e->diag->errors.v[e->diag->errors.n - 1] : strerror(-r)),
        e->t0 - e->start, mono_us() - e->t0);
    e->i++;
}

#ifdef RELD_TEST_HOOKS
/* Fault injection (ExecutorFaults): before instruction k. */
static int injected_fault(Executor *e)
{
    long k = (long)e->i + 1;
    if (k == e->p.faults.crash_before)
        (void)kill(getpid(), SIGKILL);
    if (k == e->p.faults.pause_before) {
        struct timespec t = {e->p.faults.pause_ms / 1000, e->p.faults.pause_ms % 1000 * 1000000L};
        (void)nanosleep(&t, NULL);
    }
    if (k == e->p.faults.fail_at) {
        diag_error(e->diag, "instruction %ld failed on purpose (RELD_TEST_FAIL_AT)", k);
        return -ECANCELED;
    }
    return 0;
}
#else
static int injected_fault(Executor *e)
{
    return 0;
}
#endif

int executor_step(Executor *e, Diag *diag)
{
    e->diag = diag;
    if (e->phase == PHASE_DONE)
        return e->result;
    if (e->p.rehearse && e->rehearsal_state != REHEARSAL_ENDED) {
        /* Before anything else: the script starts only if every process
         * concerned converted a copy of its state. */
        int q = e->rehearsal_state == REHEARSAL_NOT_STARTED ? rehearsal_begin(e) : 0;
        if (q == EXECUTOR_WAITING)
            return q;
        if ((q = rehearsal_ended(e)) < 0)
            return q;
        if (e->p.rehearse_only) {
            e->phase = PHASE_DONE;
            e->result = 0;
            return 0;
        }
    }
    int r = 0;
    bool woken = e->waiting;
    if (woken) {
        e->waiting = false;
        if (e->phase != PHASE_SCRIPT) /* woken: a finishing phase's work ended */
            return phase_ended(e);
        r = e->work_r; /* woken: the work of instruction i ended */
        calls_clear(e);
        instr_ended(e, r);
    }
    /* The children as the loop left them: walked again once for this call. */
    e->in_step = true;
    e->kids_valid = false;
    long long call_t0 = mono_us();
    int first = -1; /* step_records_first() of the next step, when known */
    for (;;) {
        if (!woken) {
            /* A step that may call a process is written before it runs:
             * after a crash, the history shows what reld was doing
             * (history_attempts_interrupted marks it). One that calls none
             * waits for the next batch, with its outcome. */
            e->step_end = step_end(e, e->i);
            e->step_recorded = false;
            if (first < 0)
                first = step_records_first(e, e->i, e->step_end);
            if (first && (r = record_running(e)) < 0) {
                e->in_step = false;
                return finish(e, r);
            }
        }
        /* A suspended group goes on to its resume without other steps
         * between: the event loop runs only while replies are awaited. */
        while (r == 0 && e->i < e->step_end) {
            const RelupInstr *in = &e->script->v[e->i];
            e->t0 = mono_us();
            work_begin(e);
            r = injected_fault(e);
            if (r == 0)
                r = exec_instr(e, in);
            /* Requests step_records_first() did not foresee: written
             * before they are sent all the same (or, when that fails, not
             * sent). */
            if (r == 0 && e->n_calls > 0 && !e->step_recorded)
                r = record_running(e);
            if (!sends_requests_only(in->op))
                e->kids_valid = false; /* it may have added, removed or replaced children */
            if (r == 0) {
                start_calls(e);
                if (e->n_out > 0) {
                    e->waiting = true;
                    e->in_step = false;
                    return EXECUTOR_WAITING;
                }
                r = e->work_r;
            }
            calls_clear(e);
            instr_ended(e, r);
        }
        if (r < 0)
            for (size_t k = e->i; k < e->step_end; k++)
                record_instruction(e, k, xstrdup("not run"), mono_us() - e->start, 0);
        /* Records of a suspended group waited for its resume; those of
         * steps that call no process wait for the next batch. */
        bool ends = r < 0 || e->i == e->script->n;
        if (e->step_recorded || ends || e->n_records >= RECORDS_BATCH) {
            int w = flush_records(e);
            if (w < 0) {
                diag_error(diag, "cannot record instruction %zu in the history (%s): stopped after it", e->i,
                           history_last_error(e->p.history));
                if (r == 0)
                    r = w;
            }
        }
        if (ends || r < 0) {
            e->in_step = false;
            log_debug("attempt %lld: %zu of %zu instructions run, %lld history commits", (long long)e->p.attempt, e->i,
                      e->script->n, (long long)(history_commits(e->p.history) - e->commits0));
            return finish(e, r);
        }
        /* Steps that call no process follow one another for up to
         * STEPS_RUN_US without a turn of the event loop (its progress
         * lines, a status request) between them; the loop turns before
         * each step that does. */
        first = e->step_recorded || mono_us() - call_t0 >= STEPS_RUN_US
                    ? 1
                    : step_records_first(e, e->i, step_end(e, e->i));
        if (first) {
            e->in_step = false;
            return 1;
        }
        woken = false;
    }
}

bool executor_past_point_of_no_return(const Executor *e)
{
    return e->past_ponr;
}

size_t executor_position(const Executor *e, size_t *ret_n)
{
    *ret_n = e->script->n;
    return e->i;
}

int executor_new(const ExecutorParams *params, Executor **ret)
{
    Executor *e = xcalloc(1, sizeof(*e));
    e->p = *params;
    e->s = params->supervisor;
    e->script = params->script;
    e->start = mono_us();
    e->commits0 = history_commits(params->history);
    size_t n;
    Child **all = all_children(e->s, &n);
    for (size_t k = 0; k < n; k++) {
        Before b = {.child = all[k]};
        size_t i;
        json_t *m;
        json_array_foreach(proc_modules(all[k]->proc), i, m)
        {
            const char *name = json_string_value(json_object_get(m, "name"));
            const char *vsn = json_string_value(json_object_get(m, "version"));
            if (name && vsn) {
                strvec_push(&b.names, name);
                strvec_push(&b.versions, vsn);
            }
        }
        APPEND(e->before, e->n_before, b);
    }
    free(all);
    *ret = e;
    return 0;
}

Executor *executor_free(Executor *e)
{
    if (!e)
        return NULL;
    for (size_t k = 0; k < e->n_calls; k++) /* replies that still come go nowhere */
        if (e->calls[k].out)
            proc_cancel_call(e->calls[k].child->proc);
    supervisor_forget(e->s, e);
    successors_clear(e);
    calls_clear(e);
    strvec_clear(&e->killed);
    if (flush_records(e) < 0)
        log_error("cannot write the last instruction records of attempt %lld", (long long)e->p.attempt);
    for (size_t k = 0; k < e->n_records; k++)
        free(e->records[k].outcome);
    free(e->records);
    for (size_t k = 0; k < e->n_staged; k++)
        free(e->staged[k].module);
    free(e->staged);
    free(e->suspended);
    for (size_t k = 0; k < e->n_changes; k++) {
        free(e->changes[k].module);
        json_decref(e->changes[k].extra);
    }
    free(e->changes);
    for (size_t k = 0; k < e->n_before; k++) {
        strvec_clear(&e->before[k].names);
        strvec_clear(&e->before[k].versions);
    }
    free(e->before);
    free(e->kids);
    free(e->script_stopped);
    free(e->to_restart);
    free(e->fresh);
    json_decref(e->rehearsal);
    free(e);
    return NULL;
}
