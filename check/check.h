#pragma once
/* check: what can be known about a release before anything of it runs
 * (issue 10, point 5), for `relctl check`, `relctl pack` and reld's unpack.
 *
 * 1. Every module's descriptor (`reld_module`, runtime/reld-runtime.h)
 *    matches app.yaml: ABI 1 or 2, the module's name, a version. The
 *    descriptor is read from the ELF file, never by loading it: reld runs
 *    as root and the release may come from anyone, so none of its code
 *    runs (no dlopen). The symbol is found as the dynamic loader finds it
 *    (PT_DYNAMIC, its GNU or SysV hash table), its pointers through the
 *    object's relocations (RELATIVE and ABS64 in .rela.dyn, else the value
 *    in place, as DT_RELR leaves it), every address mapped to the file
 *    through the PT_LOAD headers; every read is bounded by the file.
 * 2. Every process's executable exists and can run here: an ELF for this
 *    machine (class, byte order, e_machine) whose program interpreter
 *    exists and whose every DT_NEEDED resolves, in the release (DT_RUNPATH,
 *    else DT_RPATH, with $ORIGIN resolved inside the release root) or on
 *    the system (/etc/ld.so.cache, the directories of /etc/ld.so.conf
 *    and the files it includes, then this architecture's default
 *    directories; a candidate must be an ELF file for this machine, as
 *    ld.so skips others), libraries
 *    found in the release checked in turn; or a script whose `#!`
 *    interpreter exists and is executable. A module's own DT_NEEDED are
 *    checked the same way.
 * 3. Between an OLD and a NEW release: every module whose file changed
 *    (SHA-256, GNU Nettle) while its application changed version is
 *    reached by the appup entry up from the old version and the entry down
 *    to it (update, load_module, add_module, restart of a process running
 *    it, restart_application); a load_module of a module whose
 *    state_version (ABI 2) differs, both non-zero, runs no code_change.
 *    Each is an error with strict, else a warning. An application that
 *    keeps its version while its content changed is always an error: no
 *    relup loads it and reld refuses it beside the other. The relup is
 *    computed too (relup/relup.h, deriving missing appup entries unless
 *    strict), and what it says is reported.
 *
 * Results are findings, never printed here: severity, the file (relative
 * to the release root, as store/ names files), a YAML position when there
 * is one (line 0 when not), and one line of message. Files are read with
 * store_open_beneath under their own unit, so a link out of the release is
 * never followed.
 *
 * Errors: functions returning int return 0 when the check ran and found no
 * error, -EINVAL when it found at least one (in the report), another
 * negative errno when it could not run at all (also a finding). */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "appdefs.h"
#include "util.h"

typedef enum CheckSeverity { CHECK_WARNING = 0, CHECK_ERROR } CheckSeverity;
const char *check_severity_name(CheckSeverity s); /* "warning" | "error" */

typedef struct CheckFinding {
    CheckSeverity severity;
    char *file;    /* relative to the release root, or as given; owned */
    int line, col; /* 1-based; 0 when there is no YAML position */
    char *message; /* one line, no file, no severity; owned */
    bool old;      /* about the OLD release's files (check_upgrade), else NEW's */
} CheckFinding;

/* What a module's descriptor says, as read from its file. */
typedef struct CheckModuleDesc {
    uint32_t abi;
    uint32_t state_version; /* ABI 2; 0 in ABI 1 */
    char *name, *version;   /* owned; NULL when the pointer is NULL */
} CheckModuleDesc;

/* One module of the checked release, for reports (relctl check --json). */
typedef struct CheckModuleInfo {
    char *app, *app_vsn, *module, *file; /* file relative to the root */
    bool read;                           /* desc holds what the file says */
    CheckModuleDesc desc;
    char sha256[65]; /* hex; "" when the file could not be read */
} CheckModuleInfo;

/* Findings in the order they were found. Zero-initialised is empty. */
typedef struct CheckReport {
    CheckFinding *v;
    size_t n, cap;
    size_t n_errors, n_warnings;
    CheckModuleInfo *modules; /* of the last release checked by check_release */
    size_t n_modules, cap_modules;
    size_t n_executables; /* executables checked */
} CheckReport;

void check_report_clear(CheckReport *rep); /* frees everything, leaves rep empty */
/* "file:line:col: error: message" (or "file: warning: message"). Caller frees. */
char *check_finding_format(const CheckFinding *f);

typedef struct CheckOptions {
    /* Where system libraries and interpreters are looked up: "/" or NULL
     * for this machine; a directory to check for an image of another. */
    const char *sysroot;
    /* Changed modules the appup does not reach are errors, and missing
     * appup entries are not derived. */
    bool strict;
} CheckOptions;

/* Checks 1 and 2 on release vsn of root (releases/<vsn>/release.yaml and
 * its lib/ directories; store_load_release's own errors are findings).
 * Appends to rep (its module list replaced by this release's). opts may be
 * NULL (defaults). */
int check_release(const char *root, const char *vsn, const CheckOptions *opts, CheckReport *rep);

/* Checks 1 and 2 on NEW and check 3 between OLD and NEW; the two may
 * live in different roots (or the same). */
int check_upgrade(const char *old_root, const char *old_vsn, const char *new_root, const char *new_vsn,
                  const CheckOptions *opts, CheckReport *rep);

/* For reld's unpack: check_release with default options, errors into
 * diag->errors and warnings into diag->warnings as "file:line:col: message"
 * lines (store's style). Returns 0, -EINVAL when it found an error, or
 * -errno when it could not check. root may be the staging root of an
 * unpack (it holds releases/<vsn>/ and lib/ as a root does) or reld's own
 * root once the release is there. Like every function here: thread-safe
 * (no global state), and it reads files, so it runs off reld's loop. */
int check_release_diag(const char *root, const char *vsn, Diag *diag);

/* ---- the parts, for tests and other callers ------------------------------ */

/* Reads the descriptor of the module file open as fd (any position; pread
 * only). On success returns 0 and fills *ret (caller frees with
 * check_module_desc_clear). On failure returns -ENOEXEC (not an ELF, or
 * damaged: truncated, addresses outside the file), -EXDEV (built for
 * another machine), -ENOENT (no reld_module symbol), -EINVAL (a descriptor
 * that cannot be read: wrong size, strings outside the file), or -errno of
 * a read; *why then says what, in one line (caller frees). */
int check_module_desc_read(int fd, CheckModuleDesc *ret, char **why);
void check_module_desc_clear(CheckModuleDesc *d);

/* The name of an ELF machine ("x86-64", "aarch64", ...; "machine 1234"
 * for one without a name). Caller frees. */
char *check_machine_name(unsigned machine);
unsigned check_host_machine(void); /* the e_machine of this build */
