/* fake-proc: a managed process for the executor's unit tests
 * (test-executor.c). It speaks the control protocol of docs/runtime.md the
 * way runtime/runtime.c does, with a table of modules instead of shared
 * objects: a module's version is the first line of its file (RELD_MODULES,
 * load_object_code's path).
 *
 * It appends a line to the file FAKE_LOG for its start and for every request
 * it reads, before answering it:
 *   PROCESS PID start RELD_MODULES
 *   PROCESS PID {"id": ..., "cmd": ..., ...}     (the request as received)
 *
 * Its behaviour comes from rules, separated by commas, read from
 * FAKE_BEHAVIOUR (every process), FAKE_BEHAVIOUR_<process> (that process
 * only) and its arguments (app.yaml's args), in that order:
 *   hello=0         a plain process: no hello, never reads its channel
 *   ignore_sigterm=1
 *   exit_at=CMD     exits (status 3) when it receives CMD
 *   pinned_old=M    starts with old code of M (version "0") in use (old_pins 1)
 *   CMD:ACTION      or CMD@MODULE:ACTION, where ACTION is
 *                     fail       answers ok:false, error "injected"
 *                     slow=MS    answers MS ms late (busy between safe points)
 *                     hang       never answers, reads nothing more
 *                   and for rehearse (which otherwise succeeds, its list as
 *                   the runtime's: module, from, to, mode, change, verified):
 *                     error      its copy's code_change failed (rehearsal_failed)
 *                     crash      its copy was killed by SIGSEGV (rehearsal_failed)
 *                     unknown    a runtime without rehearse (unknown_command) */
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_MODS 32

typedef struct Mod {
    char name[64];
    char cur[64], old[64], staged[64]; /* versions; "" none */
    int old_pins;
} Mod;

static Mod mods[MAX_MODS];
static size_t n_mods;
static bool suspended;
static const char *name = "";
static char rules[8192];
static int ctl = -1, log_fd = -1;

/* ---- rules ---------------------------------------------------------------- */

static void add_rules(const char *text)
{
    if (text && *text && strlen(rules) + strlen(text) + 2 < sizeof(rules)) {
        strcat(rules, ",");
        strcat(rules, text);
    }
}

/* The value of the last rule "key=VALUE" or "key:VALUE" (sep), or NULL. */
static const char *rule(const char *key, char sep)
{
    static char value[256];
    const char *found = NULL;
    size_t klen = strlen(key);
    for (const char *p = rules; p && *p; p = strchr(p, ',')) {
        p += *p == ',';
        if (strncmp(p, key, klen) == 0 && p[klen] == sep) {
            size_t n = strcspn(p + klen + 1, ",");
            snprintf(value, sizeof(value), "%.*s", (int)n, p + klen + 1);
            found = value;
        }
    }
    return found;
}

/* What to do with cmd on module: "fail", "slow=MS", "hang", or NULL. */
static const char *action(const char *cmd, const char *module)
{
    char key[160];
    snprintf(key, sizeof(key), "%s@%s", cmd, module ? module : "");
    const char *a = module ? rule(key, ':') : NULL;
    return a ? a : rule(cmd, ':');
}

/* ---- the log and the channel ---------------------------------------------------- */

static void log_line(const char *text)
{
    char *line = NULL;
    int n = asprintf(&line, "%s %d %s\n", name, (int)getpid(), text);
    if (n > 0 && log_fd >= 0)
        (void)!write(log_fd, line, (size_t)n); /* O_APPEND, one write: lines never interleave */
    free(line);
}

static void send_json(json_t *m)
{
    char *text = json_dumps(m, JSON_COMPACT);
    json_decref(m);
    size_t len = strlen(text), off = 0;
    text[len++] = '\n'; /* replaces the NUL: the length is known */
    while (off < len) {
        ssize_t n = write(ctl, text + off, len - off);
        if (n <= 0)
            exit(0); /* reld is gone */
        off += (size_t)n;
    }
    free(text);
}

/* ---- modules ----------------------------------------------------------------- */

static json_t *vsn(const char *v)
{
    return *v ? json_string(v) : json_null();
}

static json_t *modules_json(void)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n_mods; i++) {
        const Mod *m = &mods[i];
        if (*m->cur || *m->old || *m->staged)
            json_array_append_new(a, json_pack("{s:s, s:o, s:o, s:o, s:i, s:i}", "name", m->name, "version",
                                               vsn(m->cur), "old_version", vsn(m->old), "staged_version",
                                               vsn(m->staged), "pins", 0, "old_pins", m->old_pins));
    }
    return a;
}

static Mod *find(const char *module, bool add)
{
    for (size_t i = 0; i < n_mods; i++)
        if (strcmp(mods[i].name, module) == 0)
            return &mods[i];
    if (!add || n_mods == MAX_MODS)
        return NULL;
    Mod *m = &mods[n_mods++];
    snprintf(m->name, sizeof(m->name), "%s", module);
    return m;
}

/* A module file's version: its first line. false when it cannot be read. */
static bool version_of(const char *path, char *out, size_t size)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    bool ok = fgets(out, (int)size, f) != NULL;
    fclose(f);
    out[strcspn(out, "\n")] = 0;
    return ok && *out;
}

/* ---- requests ------------------------------------------------------------------ */

static void reply(json_t *id, json_t *fields, bool with_modules)
{
    json_t *m = fields ? fields : json_object();
    if (with_modules)
        json_object_set_new(m, "modules", modules_json());
    json_object_set(m, "id", id ? id : json_null());
    json_object_set_new(m, "ok", json_true());
    send_json(m);
}

static void fail(json_t *id, const char *code, const char *message)
{
    send_json(
        json_pack("{s:O, s:b, s:s, s:s}", "id", id ? id : json_null(), "ok", 0, "error", code, "message", message));
}

/* rehearse: what the runtime answers, without a copy: the outcome the
 * rules ask for, for the first module of the list. */
static void rehearse(json_t *id, json_t *req, const char *act)
{
    json_t *list = json_object_get(req, "modules");
    json_t *first = json_array_get(list, 0);
    const char *mod = json_string_value(json_object_get(first, "module"));
    if (act && strcmp(act, "unknown") == 0)
        return fail(id, "unknown_command", "unknown command");
    if (act && (strcmp(act, "error") == 0 || strcmp(act, "crash") == 0)) {
        bool crash = act[0] == 'c';
        char msg[256];
        snprintf(msg, sizeof(msg), "%s: code_change up: %s", mod ? mod : "?",
                 crash ? "killed by SIGSEGV" : "Protocol error: failed on purpose");
        return send_json(json_pack("{s:O, s:b, s:s, s:s, s:s, s:s, s:o, s:i}", "id", id ? id : json_null(), "ok", 0,
                                   "error", "rehearsal_failed", "message", msg, "outcome", crash ? "crashed" : "failed",
                                   "module", mod ? mod : "?", "signal", crash ? json_string("SIGSEGV") : json_null(),
                                   "fork_us", 1));
    }
    json_t *done = json_array();
    size_t i;
    json_t *item;
    json_array_foreach(list, i, item)
    {
        Mod *m = find(json_string_value(json_object_get(item, "module")), false);
        char to[64] = "";
        if (!version_of(json_string_value(json_object_get(item, "path")), to, sizeof(to))) {
            json_decref(done);
            return fail(id, "rehearsal_failed", "load: cannot read the module file");
        }
        json_array_append_new(
            done, json_pack("{s:O, s:o, s:s, s:O, s:O, s:b}", "module", json_object_get(item, "module"), "from",
                            m && *m->cur ? json_string(m->cur) : json_null(), "to", to, "mode",
                            json_object_get(item, "mode"), "change", json_object_get(item, "change"), "verified", 0));
    }
    reply(id, json_pack("{s:o, s:i, s:i}", "rehearsed", done, "fork_us", 1, "elapsed_ms", 1), false);
}

static void handle(json_t *req)
{
    json_t *id = json_object_get(req, "id");
    const char *cmd = json_string_value(json_object_get(req, "cmd"));
    const char *module = json_string_value(json_object_get(req, "module"));
    const char *exit_at = rule("exit_at", '=');
    if (!cmd)
        return fail(id, "bad_request", "no cmd");
    if (exit_at && strcmp(exit_at, cmd) == 0)
        _exit(3);
    const char *act = action(cmd, module);
    while (act && strcmp(act, "hang") == 0)
        pause();
    if (act && strncmp(act, "slow=", 5) == 0) {
        long ms = atol(act + 5);
        struct timespec t = {ms / 1000, ms % 1000 * 1000000L};
        while (nanosleep(&t, &t) < 0)
            ;
    }
    if (strcmp(cmd, "rehearse") == 0 && !(act && strcmp(act, "fail") == 0))
        return rehearse(id, req, act);
    Mod *m = module ? find(module, strcmp(cmd, "load_object_code") == 0) : NULL;
    const char *mode = json_string_value(json_object_get(req, "mode"));
    if (act && strcmp(act, "fail") == 0) {
        if (strcmp(cmd, "code_change") == 0 && m && mode && strcmp(mode, "up") == 0 && *m->old) {
            strcpy(m->cur, m->old); /* as the runtime: the old code is current again */
            *m->old = 0;
        }
        char msg[256];
        snprintf(msg, sizeof(msg), "%s %s failed on purpose", cmd, module ? module : "");
        return fail(id, "injected", msg);
    }
    const char *purge = json_string_value(json_object_get(req, "pre_purge"));
    if (strcmp(cmd, "status") == 0) {
        reply(id, json_pack("{s:i, s:i, s:b}", "protocol", 1, "pid", (int)getpid(), "suspended", suspended), true);
    } else if (strcmp(cmd, "suspend") == 0 || strcmp(cmd, "resume") == 0) {
        suspended = cmd[0] == 's';
        reply(id, json_pack("{s:b}", "suspended", suspended), false);
    } else if (!m) {
        fail(id, "no_module", "no such module");
    } else if (strcmp(cmd, "load_object_code") == 0) {
        if (!version_of(json_string_value(json_object_get(req, "path")), m->staged, sizeof(m->staged)))
            return fail(id, "dlopen", "cannot read the module file");
        reply(id, json_pack("{s:s}", "version", m->staged), false);
    } else if (strcmp(cmd, "drop_object_code") == 0) {
        if (!*m->staged)
            return fail(id, "no_object_code", "nothing staged");
        *m->staged = 0;
        reply(id, NULL, true);
    } else if (strcmp(cmd, "load") == 0) {
        if (!*m->staged)
            return fail(id, "no_object_code", "nothing staged");
        if (purge && strcmp(purge, "soft_purge") == 0 && m->old_pins)
            return fail(id, "in_use", "old code in use; soft_purge refused");
        strcpy(m->old, m->cur);
        strcpy(m->cur, m->staged);
        *m->staged = 0;
        m->old_pins = 0;
        reply(id, json_pack("{s:s, s:o}", "version", m->cur, "old_version", vsn(m->old)), true);
    } else if (strcmp(cmd, "code_change") == 0) {
        if (!suspended)
            return fail(id, "not_suspended", "code_change needs the process suspended");
        reply(id, json_pack("{s:s}", "version", m->cur), false);
    } else if (strcmp(cmd, "purge") == 0) {
        const char *method = json_string_value(json_object_get(req, "method"));
        if (method && strcmp(method, "soft_purge") == 0 && m->old_pins)
            return fail(id, "in_use", "old code in use; soft_purge refused");
        bool had = *m->old;
        *m->old = 0;
        m->old_pins = 0;
        reply(id, json_pack("{s:b}", "purged", had), true);
    } else if (strcmp(cmd, "remove") == 0) {
        if (!*m->cur)
            return fail(id, "no_module", "not loaded");
        strcpy(m->old, m->cur);
        *m->cur = 0;
        reply(id, NULL, true);
    } else if (strcmp(cmd, "revert") == 0) {
        const char *want = json_string_value(json_object_get(req, "version"));
        *m->staged = 0;
        if (!want) { /* added by the relup: it leaves */
            strcpy(m->old, m->cur);
            *m->cur = 0;
        } else if (strcmp(m->cur, want) != 0) {
            if (strcmp(m->old, want) != 0)
                return fail(id, "cannot_revert", "no such version to go back to");
            strcpy(m->old, m->cur);
            strcpy(m->cur, want);
        }
        reply(id, json_pack("{s:b}", "reverted", 1), true);
    } else {
        fail(id, "unknown_command", "unknown command");
    }
}

int main(int argc, char **argv)
{
    const char *e = getenv("RELD_PROCESS");
    name = e ? e : "";
    char own[128];
    snprintf(own, sizeof(own), "FAKE_BEHAVIOUR_%s", name);
    add_rules(getenv("FAKE_BEHAVIOUR"));
    add_rules(getenv(own));
    for (int i = 1; i < argc; i++)
        add_rules(argv[i]);
    const char *o = rule("ignore_sigterm", '=');
    if (o && strcmp(o, "1") == 0)
        signal(SIGTERM, SIG_IGN);
    e = getenv("FAKE_LOG");
    if (e)
        log_fd = open(e, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);

    /* RELD_MODULES: name=/path:name2=/path2 */
    e = getenv("RELD_MODULES");
    char *list = strdup(e ? e : ""), *save = NULL, *line = NULL;
    if (!list || asprintf(&line, "start %s", list) < 0)
        return 2;
    log_line(line);
    free(line);
    line = NULL;
    for (char *item = strtok_r(list, ":", &save); item; item = strtok_r(NULL, ":", &save)) {
        char *eq = strchr(item, '=');
        if (!eq)
            continue;
        *eq = 0;
        Mod *m = find(item, true);
        if (m && !version_of(eq + 1, m->cur, sizeof(m->cur)))
            return 2;
    }
    free(list);
    o = rule("pinned_old", '=');
    Mod *pinned = o ? find(o, false) : NULL;
    if (pinned) {
        strcpy(pinned->old, "0");
        pinned->old_pins = 1;
    }

    o = rule("hello", '=');
    const char *fd = getenv("RELD_CONTROL_FD");
    if ((o && strcmp(o, "0") == 0) || !fd)
        for (;;)
            pause(); /* a plain process: it only serves, until it is stopped */
    ctl = atoi(fd);
    json_t *hello = json_pack("{s:s, s:i, s:i, s:s, s:b}", "event", "hello", "protocol", 1, "pid", (int)getpid(),
                              "process", name, "suspended", 0);
    json_object_set_new(hello, "modules", modules_json());
    send_json(hello);

    FILE *in = fdopen(ctl, "r");
    size_t cap = 0;
    while (in && getline(&line, &cap, in) > 0) {
        line[strcspn(line, "\n")] = 0;
        log_line(line);
        json_t *req = json_loads(line, 0, NULL);
        if (json_is_object(req))
            handle(req);
        else
            fail(NULL, "bad_request", "not a JSON object");
        json_decref(req);
    }
    free(line);
    return 0; /* reld closed the channel */
}
