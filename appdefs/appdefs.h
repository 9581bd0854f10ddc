#pragma once
/* appdefs: release.yaml and app.yaml (with appups) -> definitions.
 *
 * Pure: parses buffers the caller has read, does no I/O and no logging.
 * The release store (store/) reads the files and checks what only the file
 * system can tell (does a module file exist, where does a symlink lead).
 *
 * Every problem is reported, not only the first, as one line
 * "file:line:col: message" in a Diag. A function that found any error
 * returns -EINVAL and leaves *ret untouched; on success it returns 0 and
 * hands *ret to the caller, who frees it with the matching *_free().
 *
 * Definitions hold their source positions so that later steps (the relup
 * engine, the daemon) can point at the line that caused a problem. */
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

typedef enum PurgeMethod { PURGE_BRUTAL = 0, PURGE_SOFT } PurgeMethod;
const char *purge_method_name(PurgeMethod p); /* "brutal_purge" | "soft_purge" */

typedef enum RestartPolicy { RESTART_PERMANENT = 0, RESTART_TRANSIENT, RESTART_TEMPORARY } RestartPolicy;

/* A timeout of a suspend: TIMEOUT_DEFAULT, TIMEOUT_INFINITY or a positive
 * number of milliseconds. */
#define TIMEOUT_DEFAULT  0L
#define TIMEOUT_INFINITY (-1L)

/* The high-level appup instructions of SPEC.md, with OTP's defaults applied
 * by the parser. */
typedef enum AppupOp {
    APPUP_UPDATE,
    APPUP_LOAD_MODULE,
    APPUP_ADD_MODULE,
    APPUP_DELETE_MODULE,
    APPUP_ADD_APPLICATION,
    APPUP_REMOVE_APPLICATION,
    APPUP_RESTART_APPLICATION,
    APPUP_RESTART,
} AppupOp;
const char *appup_op_name(AppupOp op);

typedef struct AppupInstr {
    AppupOp op;
    char *target;  /* the module, or the application for *_APPLICATION */
    bool advanced; /* update: change is {advanced: extra}, else soft */
    json_t *extra; /* update, advanced: the EXTRA value, owned */
    PurgeMethod pre_purge, post_purge;
    long timeout_ms;      /* update: TIMEOUT_DEFAULT, TIMEOUT_INFINITY or > 0 */
    StrVec dep_mods;      /* update, load_module, add_module, delete_module */
    SrcPos *dep_mods_pos; /* where each dep_mods item stands, n = dep_mods.n */
    StrVec modules;       /* restart: the modules whose processes restart */
    SrcPos pos;
} AppupInstr;

/* Appup version patterns ({regex: RE}): a subset of POSIX ERE
 * (docs/formats.md "Appups"), compiled once, when the appup is parsed, to an
 * automaton of at most APPDEFS_REGEX_MAX_STATES states, and matched by
 * simulating it: a match costs at most states x (length + 1) steps and
 * memory in proportion to the states, whatever the pattern. */
#define APPDEFS_REGEX_MAX_LEN    256  /* bytes */
#define APPDEFS_REGEX_MAX_STATES 1024 /* once {m,n} are expanded */
#define APPDEFS_REGEX_MAX_DEPTH  16   /* groups nested */
#define APPDEFS_REGEX_MAX_REPEAT 255  /* m and n of {m,n} (POSIX's RE_DUP_MAX) */
/* The patterns of one app.yaml together: a 25-byte pattern can compile to
 * 1,000 states (8 KB), and every lookup tries them all. */
#define APPDEFS_REGEX_MAX_ALL_STATES 65536

typedef struct AppdefsRegex AppdefsRegex;

/* Compiles re. On error returns -EINVAL and, when why is not NULL, a new
 * string saying what is wrong and where. */
int appdefs_regex_compile(const char *re, AppdefsRegex **ret, char **why);
/* 1 when the whole of s matches r, else 0. Reentrant. */
int appdefs_regex_match(const AppdefsRegex *r, const char *s);
size_t appdefs_regex_states(const AppdefsRegex *r);
AppdefsRegex *appdefs_regex_free(AppdefsRegex *r);
/* Does the whole string s match re? -EINVAL when re is bad. Compiles re at
 * every call: the parser keeps an entry's compiled pattern instead. */
int appdefs_regex_full_match(const char *re, const char *s);

/* One appup entry: a version pattern and its instructions. */
typedef struct AppupEntry {
    char *version;    /* exact version, or NULL when regex is set */
    char *regex;      /* the pattern as written, matched against the whole version */
    AppdefsRegex *re; /* regex compiled by the parser, owned */
    AppupInstr *instrs;
    size_t n_instrs;
    SrcPos pos;
} AppupEntry;

typedef struct Appup {
    AppupEntry *entries;
    size_t n_entries;
} Appup;

typedef struct ModuleDef {
    char *name;
    char *file; /* relative to the application's directory */
    SrcPos pos;
} ModuleDef;

typedef struct SocketDef {
    char *name;
    char *listen; /* "host:port", "[v6]:port" or "unix:/path" */
    SrcPos pos;
} SocketDef;

/* Health checks of a process (docs/formats.md "Health checks"): what
 * tells that it works, as Kubernetes' probes and Docker's HEALTHCHECK do.
 * A process has none, one or several (all must pass). The parser checks
 * the syntax only; running them is the daemon's health component. */
typedef enum HealthCheckKind {
    HEALTH_CHECK_EXEC,    /* a command exits 0 */
    HEALTH_CHECK_TCP,     /* a TCP connect succeeds */
    HEALTH_CHECK_HTTP,    /* an HTTP GET answers the expected status */
    HEALTH_CHECK_RUNTIME, /* the process's runtime answers its health command */
    _HEALTH_CHECK_KIND_MAX,
} HealthCheckKind;
const char *health_check_kind_name(HealthCheckKind k); /* "exec" | "tcp" | "http" | "runtime" */

#define HEALTH_MAX_CHECKS          8 /* per process */
#define HEALTH_INTERVAL_DEFAULT_MS 1000L
#define HEALTH_INTERVAL_MIN_MS     100L /* an exec check forks each time */
#define HEALTH_INTERVAL_MAX_MS     3600000L
#define HEALTH_TIMEOUT_DEFAULT_MS  1000L
#define HEALTH_TIMEOUT_MIN_MS      10L
#define HEALTH_TIMEOUT_MAX_MS      600000L
#define HEALTH_URL_MAX             2048 /* bytes of an http url */

typedef struct HealthCheck {
    HealthCheckKind kind;
    StrVec argv;      /* exec: the program (relative to the application's directory, or absolute), then its arguments */
    char *host;       /* tcp, http: a numeric IPv4 or IPv6 address, without brackets */
    int port;         /* tcp, http: 1-65535 (http: 80 when the url has none) */
    char *path;       /* http: the path and query, "/" at least */
    int status;       /* http: the expected status, 200 by default */
    char *target;     /* tcp: "host:port", http: the url, as written: for messages */
    long interval_ms; /* from the end of one run to the start of the next */
    long timeout_ms;  /* a run that takes longer fails (an exec check is killed) */
    SrcPos pos;
} HealthCheck;

/* How reld tells that a started process is ready (docs/formats.md
 * "Replacing a process"): at a switch-over the old process of a plain
 * application is told to stop only once its successor is ready. */
typedef enum ReadyKind {
    READY_STARTED = 0, /* once it runs (systemd's Type=exec) */
    READY_NOTIFY,      /* it sends READY=1 to $NOTIFY_SOCKET (systemd's Type=notify) */
    READY_HEALTH,      /* its health checks all pass once */
    _READY_KIND_MAX,
} ReadyKind;
const char *ready_kind_name(ReadyKind k); /* "started" | "notify" | "health" */

#define READY_TIMEOUT_DEFAULT_MS 10000L
#define READY_TIMEOUT_MIN_MS     10L
#define READY_TIMEOUT_MAX_MS     3600000L

/* stop_signal by name, "SIGINT" or "INT" (systemd's KillSignal=): the
 * signal, or -1 when it is not one a process may be told to stop with. */
int appdefs_signal_from_name(const char *name);
/* "SIGINT" for SIGINT; NULL for a signal the table does not hold. */
const char *appdefs_signal_name(int sig);

/* A process's listening sockets are its descriptors 3 .. 3+n-1, and its
 * control channel the next one; reld places them below 64 (it moves
 * them through descriptors 100 and up), hence the bound. */
#define PROCESS_SOCKETS_MAX 62

typedef struct ProcessDef {
    char *name;
    char *exec; /* relative to the application's directory, or absolute */
    StrVec args;
    StrVec modules; /* the modules this process runs */
    RestartPolicy restart;
    long shutdown_ms;
    SocketDef *sockets;
    size_t n_sockets;
    HealthCheck *checks; /* health: in the order written */
    size_t n_checks;
    /* Who it runs as (docs/formats.md "Users, groups and capabilities"):
     * names (or numeric ids) as written, NULL when absent; the daemon
     * resolves them. No user: reld's own. */
    char *user, *group;
    StrVec supplementary_groups;
    SrcPos user_pos, group_pos;
    SrcPos *supplementary_pos; /* one per supplementary group */
    bool has_capabilities;     /* capabilities: given (else the bounding set is left as it is) */
    uint64_t capabilities;     /* the bounding set: bit n for capability n (appdefs_capability_name()) */
    /* Replacing it (docs/formats.md "Replacing a process"). */
    int stop_signal;       /* sent to stop it; SIGTERM by default */
    bool overlap;          /* the successor starts and is ready before it stops; by default when it has sockets */
    ReadyKind ready;       /* READY_STARTED by default */
    long ready_timeout_ms; /* how long a successor may take to be ready */
    SrcPos pos;
} ProcessDef;

/* Capabilities by name, as capabilities(7) and systemd write them
 * ("CAP_NET_BIND_SERVICE"): the number, or -1 when unknown. */
int appdefs_capability_from_name(const char *name);
/* The name of capability n, or NULL. */
const char *appdefs_capability_name(int n);
#define APPDEFS_CAP_MAX 40 /* CAP_CHECKPOINT_RESTORE, the last one this table knows */

typedef struct AppDef {
    char *file; /* the name used in messages, e.g. lib/web-2.0.1/app.yaml */
    char *name, *vsn, *description;
    StrVec applications;     /* dependencies */
    SrcPos *application_pos; /* position of each dependency, n = applications.n */
    ModuleDef *modules;
    size_t n_modules;
    ProcessDef *processes;
    size_t n_processes;
    Appup up, down; /* up entries match "from", down entries match "to" */
    /* Built by the parser, so that lookups take constant time in
     * applications of thousands of modules. */
    StrMap module_index; /* module name -> index into modules (its first definition) */
    StrMap run_index;    /* the modules some process runs */
} AppDef;

typedef struct ReleaseAppRef {
    char *name, *vsn;
    SrcPos pos;
    AppDef *app; /* filled by the loader (store/), owned */
} ReleaseAppRef;

typedef struct ReleaseDef {
    char *file;
    char *name, *vsn;
    ReleaseAppRef *apps; /* in release.yaml order */
    size_t n_apps;
    StrMap by_name; /* application name -> index into apps */
} ReleaseDef;

/* Parses app.yaml from buf (len bytes). file names the input in messages.
 * Checks everything one file can tell: types, unknown keys, names and
 * versions, duplicates, module and executable paths that leave the
 * application's directory, regular expressions that do not compile. */
int appdefs_parse_app(const char *file, const char *buf, size_t len, AppDef **ret, Diag *diag);

/* Parses release.yaml. */
int appdefs_parse_release(const char *file, const char *buf, size_t len, ReleaseDef **ret, Diag *diag);

/* Checks what needs the whole release, once every ReleaseAppRef has its
 * AppDef (one without is an error): each app's name/vsn matches the
 * reference, dependencies are in the release, no dependency cycle (the
 * cycle is named), no module in two applications, dep_mods name a module of
 * the release or one an appup instruction of the release names. Returns 0
 * or -EINVAL. */
int appdefs_validate_release(const ReleaseDef *rel, Diag *diag);

/* Indices into rel->apps in dependency order: every application after the
 * applications it depends on; where dependencies do not decide, release.yaml
 * order (OTP's sort_appls). The release must be valid (no cycle). Returns a
 * new array of rel->n_apps indices. */
size_t *appdefs_release_order(const ReleaseDef *rel);

const ReleaseAppRef *appdefs_release_find(const ReleaseDef *rel, const char *app);
/* The module's first definition in app, or NULL. */
const ModuleDef *appdefs_app_find_module(const AppDef *app, const char *module);
/* True when a process of app declares that it runs module. */
bool appdefs_app_runs_module(const AppDef *app, const char *module);

/* Finds the first entry of appup whose version or regex matches vsn, as
 * OTP's appup_search_for_version. NULL when none does. */
const AppupEntry *appdefs_appup_find(const Appup *appup, const char *vsn);

AppDef *appdef_free(AppDef *a);
ReleaseDef *release_def_free(ReleaseDef *r);
void appup_instr_clear(AppupInstr *i);
