#pragma once
/* relup: from two releases and their appups, the low-level instruction
 * lists that take a running system up (FROM -> TO) and down (TO -> FROM).
 *
 * Pure: no I/O, no logging. The one thing only the file system knows (has
 * a module's file changed between two versions of an application?) is asked
 * through a callback, and only when an appup entry must be derived.
 *
 * The translation is OTP's systools_relup + systools_rc, instruction for
 * instruction, with one deliberate difference (docs/relup.md): applications
 * are ordered by the dependency graph everywhere. Removed applications
 * stop first, dependents before what they depend on; then changed and added
 * applications follow in dependency order (dependencies first), so an added
 * application starts after everything it depends on was upgraded and
 * resumed.
 *
 * Errors: every function returning int returns 0, or -EINVAL with one line
 * per problem in diag->errors (as OTP raises them: undefined or multiply
 * defined module, no appup entry, conflicting versions, ...). Warnings (a
 * derived appup entry) go to diag->warnings. *ret is untouched on failure. */
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "appdefs.h"
#include "util.h"

typedef enum RelupOp {
    RELUP_LOAD_OBJECT_CODE,
    RELUP_POINT_OF_NO_RETURN,
    RELUP_SUSPEND,
    RELUP_LOAD,
    RELUP_CODE_CHANGE,
    RELUP_RESUME,
    RELUP_PURGE,
    RELUP_REMOVE,
    RELUP_STOP,
    RELUP_START,
    RELUP_START_APPLICATION,
    RELUP_STOP_APPLICATION,
    RELUP_UNLOAD_APPLICATION,
    RELUP_N_OPS
} RelupOp;

const char *relup_op_name(RelupOp op); /* "load_object_code", ... */

/* One module named by an instruction, with what that instruction attaches
 * to it: a suspend timeout, or the extra of a code_change. */
typedef struct RelupModule {
    char *module;
    long timeout_ms; /* suspend: TIMEOUT_DEFAULT, TIMEOUT_INFINITY or > 0 */
    json_t *extra;   /* code_change: owned reference; never NULL there */
} RelupModule;

typedef struct RelupInstr {
    RelupOp op;
    char *app, *vsn;                   /* load_object_code; app also for *_application */
    char *module;                      /* load, remove */
    PurgeMethod pre_purge, post_purge; /* load, remove */
    bool down;                         /* code_change: mode down, else up */
    RelupModule *mods;                 /* load_object_code, suspend, code_change, resume, */
    size_t n_mods;                     /* purge, stop, start */
} RelupInstr;

typedef struct RelupScript {
    RelupInstr *v;
    size_t n, cap;
} RelupScript;

typedef struct Relup {
    char *from, *to; /* release versions */
    RelupScript up, down;
} Relup;

/* Answers whether module's file differs between old_app and new_app:
 * 1 changed, 0 same, negative errno when it cannot tell. */
typedef int (*RelupModuleChangedFn)(void *userdata, const AppDef *old_app, const AppDef *new_app, const char *module);

typedef struct RelupOptions {
    /* When an application changed version and its appup has no entry for
     * the other version, derive one (added modules -> add_module, removed
     * -> delete_module, changed -> update {advanced: null} when a process
     * runs the module, else load_module) and warn. Needs module_changed.
     * When false, a missing entry is an error, as in OTP. */
    bool derive_missing;
    RelupModuleChangedFn module_changed;
    void *userdata;
    /* Compute the up script on a second thread while this one computes
     * the down script (a relup of 1,000 applications: half the wall time
     * of the computation). module_changed is then called from both threads
     * at once and must be reentrant. Same result and messages as without. */
    bool parallel;
} RelupOptions;

/* Computes the relup from -> to. Both releases must be valid
 * (appdefs_validate_release) with every AppDef loaded. On success *ret is a
 * new Relup owned by the caller (relup_free()). */
int relup_compute(const ReleaseDef *from, const ReleaseDef *to, const RelupOptions *opts, Relup **ret, Diag *diag);

/* Checks a script as OTP's systools_rc checks one: one point_of_no_return
 * with only load_object_code before it, every load preceded by the
 * load_object_code of its module, suspends and resumes paired, code_change
 * only on suspended modules, stops and starts paired. what names the script
 * in messages. Returns 0 or -EINVAL. */
int relup_check_script(const RelupScript *s, const char *what, Diag *diag);

/* SPEC.md's JSON shape. Returns a new reference. */
json_t *relup_to_json(const Relup *r);

/* Reads a relup in that shape from YAML or JSON text (relup.yaml), checks
 * its syntax and both scripts (relup_check_script). file names the input in
 * messages. */
int relup_parse(const char *file, const char *buf, size_t len, Relup **ret, Diag *diag);

/* One instruction as a line for people, e.g.
 * "load web_handler (pre brutal_purge, post brutal_purge)". Caller frees. */
char *relup_instr_format(const RelupInstr *i);

Relup *relup_free(Relup *r);
void relup_script_clear(RelupScript *s);
void relup_instr_clear(RelupInstr *i); /* frees what i owns, leaves it zeroed */
