#include "appdefs.h"

#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <string.h>

#include "yamlutil.h"

const char *purge_method_name(PurgeMethod p)
{
    return p == PURGE_SOFT ? "soft_purge" : "brutal_purge";
}

static const char *const appup_op_names[] = {
    [APPUP_UPDATE] = "update",
    [APPUP_LOAD_MODULE] = "load_module",
    [APPUP_ADD_MODULE] = "add_module",
    [APPUP_DELETE_MODULE] = "delete_module",
    [APPUP_ADD_APPLICATION] = "add_application",
    [APPUP_REMOVE_APPLICATION] = "remove_application",
    [APPUP_RESTART_APPLICATION] = "restart_application",
    [APPUP_RESTART] = "restart",
};

const char *appup_op_name(AppupOp op)
{
    return appup_op_names[op];
}

/* A relative path that never climbs above its starting directory and
 * names something below it. */
static bool path_stays_inside(const char *p)
{
    return path_walk_depth(p, 0) > 0;
}

/* ---- app.yaml ---------------------------------------------------------- */

/* The items of a list of the document. */
static size_t seq_len(const yaml_node_t *n)
{
    return (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
}

/* An array v of exactly n items, for a list whose length the document
 * tells (GROW's doubling from 8 left most of the room unused in releases of
 * thousands of applications); GROW still grows it if need be. */
#define ALLOC_EXACT(v, cap, n) ((cap) = (n), (v) = (cap) ? xmalloc((cap) * sizeof(*(v))) : NULL)

static bool parse_purge(YamlCtx *c, yaml_node_t *m, const char *key, PurgeMethod *out)
{
    yaml_node_t *n = yaml_map_get(c, m, key);
    if (!n)
        return true;
    const char *s = yaml_scalar(n);
    if (s && strcmp(s, "brutal_purge") == 0)
        *out = PURGE_BRUTAL;
    else if (s && strcmp(s, "soft_purge") == 0)
        *out = PURGE_SOFT;
    else {
        yaml_error(c, n, "%s must be soft_purge or brutal_purge", key);
        return false;
    }
    return true;
}

static void check_name(YamlCtx *c, yaml_node_t *n, const char *what, const char *s)
{
    if (s && !name_is_valid(s))
        yaml_error(c, n, "bad %s name '%s': use letters, digits and '_', starting with a letter or '_'", what, s);
}

static void check_version(YamlCtx *c, yaml_node_t *n, const char *s)
{
    if (s && !version_is_valid(s))
        yaml_error(c, n,
                   "bad version string '%s': use letters, digits and . _ + ~ -, starting with a letter "
                   "or digit",
                   s);
}

/* The one key of an instruction mapping that names its operation. */
static int instr_op(YamlCtx *c, yaml_node_t *m, yaml_node_t **arg)
{
    int found = -1;
    for (yaml_node_pair_t *p = m->data.mapping.pairs.start; p < m->data.mapping.pairs.top; p++) {
        const char *k = yaml_scalar(yaml_child(c, p->key));
        for (int op = 0; k && op <= APPUP_RESTART; op++) {
            if (strcmp(k, appup_op_names[op]) != 0)
                continue;
            if (found >= 0) {
                yaml_error(c, m, "instruction has two operations, '%s' and '%s'", appup_op_names[found], k);
                return -1;
            }
            found = op;
            *arg = yaml_child(c, p->value);
        }
    }
    if (found < 0)
        yaml_error(c, m,
                   "instruction names no operation (update, load_module, add_module, delete_module, "
                   "add_application, remove_application, restart_application, restart)");
    return found;
}

static bool parse_instr(YamlCtx *c, yaml_node_t *m, AppupInstr *out)
{
    static const char *const keys_update[] = {"update",     "change",   "pre_purge", "post_purge",
                                              "timeout_ms", "dep_mods", NULL};
    static const char *const keys_load[] = {"load_module", "pre_purge", "post_purge", "dep_mods", NULL};
    static const char *const keys_add[] = {"add_module", "dep_mods", NULL};
    static const char *const keys_delete[] = {"delete_module", "dep_mods", NULL};
    static const char *const keys_add_app[] = {"add_application", NULL};
    static const char *const keys_remove_app[] = {"remove_application", NULL};
    static const char *const keys_restart_app[] = {"restart_application", NULL};
    static const char *const keys_restart[] = {"restart", NULL};
    static const char *const *const keys[] = {keys_update,  keys_load,       keys_add,         keys_delete,
                                              keys_add_app, keys_remove_app, keys_restart_app, keys_restart};

    if (m->type != YAML_MAPPING_NODE) {
        yaml_error(c, m, "instruction must be a mapping such as {update: mod}, not %s", yaml_kind(m));
        return false;
    }
    yaml_node_t *arg = NULL;
    int op = instr_op(c, m, &arg);
    if (op < 0)
        return false;
    size_t before = diag_n_errors(c->diag);
    AppupInstr i = {.op = op, .pos = yaml_pos(c, m)};
    yaml_map_check_keys(c, m, keys[op], appup_op_names[op]);

    if (op == APPUP_RESTART) {
        yaml_get_strlist(c, arg, "restart", &i.modules, NULL);
        for (size_t k = 0; k < i.modules.n; k++)
            check_name(c, arg, "module", i.modules.v[k]);
    } else if (!yaml_scalar(arg)) {
        yaml_error(c, arg, "%s takes a name, not %s", appup_op_names[op], yaml_kind(arg));
    } else {
        i.target = xstrdup(yaml_scalar(arg));
        check_name(c, arg, op >= APPUP_ADD_APPLICATION ? "application" : "module", i.target);
    }

    yaml_node_t *change = yaml_map_get(c, m, "change");
    if (change) {
        yaml_node_t *adv = yaml_map_get(c, change, "advanced");
        if (yaml_scalar(change) && strcmp(yaml_scalar(change), "soft") == 0) {
            i.advanced = false;
        } else if (adv && change->data.mapping.pairs.top - change->data.mapping.pairs.start == 1) {
            i.advanced = true;
            i.extra = yaml_to_json(c, adv);
        } else {
            yaml_error(c, change, "change must be soft or {advanced: EXTRA}");
        }
    }
    parse_purge(c, m, "pre_purge", &i.pre_purge);
    parse_purge(c, m, "post_purge", &i.post_purge);
    yaml_node_t *t = yaml_map_get(c, m, "timeout_ms");
    if (t && yaml_scalar(t) && strcmp(yaml_scalar(t), "infinity") == 0)
        i.timeout_ms = TIMEOUT_INFINITY;
    else if (t)
        yaml_get_long(c, m, "timeout_ms", 1, 86400000L, &i.timeout_ms);
    yaml_node_t *deps = yaml_map_get(c, m, "dep_mods");
    if (deps && yaml_get_strlist(c, deps, "dep_mods", &i.dep_mods, &i.dep_mods_pos))
        for (size_t k = 0; k < i.dep_mods.n; k++)
            check_name(c, deps, "module", i.dep_mods.v[k]);

    if (diag_n_errors(c->diag) > before) {
        appup_instr_clear(&i);
        return false;
    }
    *out = i;
    return true;
}

/* *states counts the states of the compiled patterns of the whole app.yaml
 * (APPDEFS_REGEX_MAX_ALL_STATES). */
static void parse_appup_dir(YamlCtx *c, yaml_node_t *list, const char *dir, Appup *out, size_t *states)
{
    const char *vkey = strcmp(dir, "up") == 0 ? "from" : "to";
    if (list->type != YAML_SEQUENCE_NODE) {
        yaml_error(c, list, "appup %s must be a list of entries, not %s", dir, yaml_kind(list));
        return;
    }
    size_t cap;
    ALLOC_EXACT(out->entries, cap, seq_len(list));
    for (yaml_node_item_t *it = list->data.sequence.items.start; it < list->data.sequence.items.top; it++) {
        yaml_node_t *m = yaml_child(c, *it);
        if (m->type != YAML_MAPPING_NODE) {
            yaml_error(c, m, "appup entry must be a mapping with '%s' and 'instructions'", vkey);
            continue;
        }
        const char *const keys[] = {vkey, "instructions", NULL};
        yaml_map_check_keys(c, m, keys, "appup entry");
        AppupEntry e = {.pos = yaml_pos(c, m)};
        yaml_node_t *v = yaml_map_get(c, m, vkey);
        if (!v) {
            yaml_error(c, m, "missing field '%s'", vkey);
        } else if (yaml_scalar(v)) {
            e.version = xstrdup(yaml_scalar(v));
            check_version(c, v, e.version);
        } else {
            yaml_node_t *re = yaml_map_get(c, v, "regex");
            const char *res = yaml_scalar(re);
            const char *const rekeys[] = {"regex", NULL};
            yaml_map_check_keys(c, v, rekeys, vkey);
            if (!res) {
                yaml_error(c, v, "%s must be a version or {regex: ERE}", vkey);
            } else {
                char *why = NULL;
                if (appdefs_regex_compile(res, &e.re, &why) < 0) {
                    if (strlen(res) > APPDEFS_REGEX_MAX_LEN)
                        yaml_error(c, re, "bad regular expression: %s", why);
                    else
                        yaml_error(c, re, "bad regular expression '%s': %s", res, why);
                } else if ((*states += appdefs_regex_states(e.re)) > APPDEFS_REGEX_MAX_ALL_STATES) {
                    if (*states - appdefs_regex_states(e.re) <= APPDEFS_REGEX_MAX_ALL_STATES) /* once */
                        yaml_error(c, re,
                                   "the regular expressions of this file have more than %d states in all (the limit)",
                                   APPDEFS_REGEX_MAX_ALL_STATES);
                    e.re = appdefs_regex_free(e.re);
                } else {
                    e.regex = xstrdup(res);
                }
                free(why);
            }
        }
        yaml_node_t *instrs = yaml_map_get(c, m, "instructions");
        if (!instrs) {
            yaml_error(c, m, "missing field 'instructions'");
        } else if (instrs->type != YAML_SEQUENCE_NODE) {
            yaml_error(c, instrs, "instructions must be a list, not %s", yaml_kind(instrs));
        } else {
            /* Sized to the list, not grown by doubling: a release's appups
             * hold tens of thousands of instructions. */
            size_t icap;
            ALLOC_EXACT(e.instrs, icap, seq_len(instrs));
            for (yaml_node_item_t *ii = instrs->data.sequence.items.start; ii < instrs->data.sequence.items.top; ii++) {
                AppupInstr in;
                if (!parse_instr(c, yaml_child(c, *ii), &in))
                    continue;
                GROW(e.instrs, icap, e.n_instrs + 1);
                e.instrs[e.n_instrs++] = in;
            }
        }
        GROW(out->entries, cap, out->n_entries + 1);
        out->entries[out->n_entries++] = e;
    }
}

static bool listen_is_valid(const char *s)
{
    if (strncmp(s, "unix:", 5) == 0)
        return s[5] == '/' && strlen(s + 5) < 108;
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s)
        return false;
    if (s[0] == '[' && colon[-1] != ']')
        return false;
    char *end;
    long port = strtol(colon + 1, &end, 10);
    return colon[1] && !*end && port >= 1 && port <= 65535;
}

/* ---- health checks ----------------------------------------------------- */

static const char *const health_check_kind_names[] = {
    [HEALTH_CHECK_EXEC] = "exec",
    [HEALTH_CHECK_TCP] = "tcp",
    [HEALTH_CHECK_HTTP] = "http",
    [HEALTH_CHECK_RUNTIME] = "runtime",
};

const char *health_check_kind_name(HealthCheckKind k)
{
    return k < _HEALTH_CHECK_KIND_MAX ? health_check_kind_names[k] : "?";
}

/* "ADDR:PORT" or "[V6ADDR]:PORT" with a numeric address (a name lookup
 * would block the daemon's loop, and a check talks to a local process);
 * with default_port > 0 the ":PORT" may be left out. inet_pton is pure. */
static bool parse_host_port(const char *s, size_t len, int default_port, char **host, int *port)
{
    const char *end = s + len, *h = s, *he, *colon;
    if (len && s[0] == '[') {
        he = memchr(s, ']', len);
        if (!he)
            return false;
        h = s + 1;
        colon = he + 1 < end ? he + 1 : NULL;
        if (colon && *colon != ':')
            return false;
    } else {
        colon = memchr(s, ':', len);
        he = colon ? colon : end;
        if (colon && memchr(colon + 1, ':', (size_t)(end - colon - 1)))
            return false; /* an IPv6 address needs its brackets */
    }
    long p = default_port;
    if (colon) {
        p = 0;
        const char *d = colon + 1;
        if (d == end || end - d > 5)
            return false;
        for (; d < end; d++) {
            if (*d < '0' || *d > '9')
                return false;
            p = p * 10 + (*d - '0');
        }
    }
    if (p < 1 || p > 65535 || he == h || he - h >= INET6_ADDRSTRLEN)
        return false;
    char buf[INET6_ADDRSTRLEN];
    memcpy(buf, h, (size_t)(he - h));
    buf[he - h] = 0;
    unsigned char addr[sizeof(struct in6_addr)];
    bool v6 = s[0] == '[';
    if (inet_pton(v6 ? AF_INET6 : AF_INET, buf, addr) != 1)
        return false;
    *host = xstrdup(buf);
    *port = (int)p;
    return true;
}

/* http://HOST[:PORT][/PATH] into check; false with *why set when it is not one. */
static bool parse_http_url(const char *url, HealthCheck *hc, const char **why)
{
    static const char scheme[] = "http://";
    size_t n = strlen(url);
    if (n > HEALTH_URL_MAX) {
        *why = "longer than 2048 bytes";
        return false;
    }
    if (strncmp(url, "https://", 8) == 0) {
        *why = "https is not supported: reld speaks plain HTTP to a process on this machine";
        return false;
    }
    if (strncmp(url, scheme, sizeof(scheme) - 1) != 0) {
        *why = "use http://ADDRESS[:PORT]/PATH";
        return false;
    }
    const char *auth = url + sizeof(scheme) - 1, *rest = auth + strcspn(auth, "/?#");
    for (const char *c = rest; *c; c++)
        if (*c <= ' ' || *c > '~' || *c == '#') {
            *why = "the path may hold printable ASCII characters but no space and no '#'";
            return false;
        }
    if (memchr(auth, '@', (size_t)(rest - auth)) ||
        !parse_host_port(auth, (size_t)(rest - auth), 80, &hc->host, &hc->port)) {
        *why = "the host must be a numeric address (127.0.0.1, [::1]), with an optional port from 1 to 65535: no name "
               "lookups";
        return false;
    }
    hc->path = *rest == '/' ? xstrdup(rest) : xasprintf("/%s", rest);
    return true;
}

static void parse_health_exec(YamlCtx *c, yaml_node_t *n, HealthCheck *hc)
{
    const char *s = yaml_scalar(n);
    if (s && strpbrk(s, " \t")) {
        yaml_error(c, n, "exec '%s' is one program name: write a list [program, arguments...] (no shell)", s);
        return;
    }
    if (!yaml_get_strlist(c, n, "health exec", &hc->argv, NULL))
        return;
    if (hc->argv.n == 0 || !hc->argv.v[0][0])
        yaml_error(c, n, "health exec needs a program");
    else if (hc->argv.v[0][0] != '/' && !path_stays_inside(hc->argv.v[0]))
        yaml_error(c, n, "health exec '%s' resolves outside the application's directory", hc->argv.v[0]);
}

static void parse_health_http(YamlCtx *c, yaml_node_t *n, HealthCheck *hc)
{
    const char *url = yaml_scalar(n);
    yaml_node_t *url_node = n;
    if (!url) {
        if (n->type != YAML_MAPPING_NODE) {
            yaml_error(c, n, "http must be a url or {url, status}, not %s", yaml_kind(n));
            return;
        }
        static const char *const keys[] = {"url", "status", NULL};
        yaml_map_check_keys(c, n, keys, "http check");
        long status = 200;
        if (yaml_get_long(c, n, "status", 100, 599, &status))
            hc->status = (int)status;
        if (!(url_node = yaml_map_get(c, n, "url"))) {
            yaml_error(c, n, "missing field 'url'");
            return;
        }
        if (!(url = yaml_scalar(url_node))) {
            yaml_error(c, url_node, "field 'url' must be a string, not %s", yaml_kind(url_node));
            return;
        }
    }
    const char *why = NULL;
    if (!parse_http_url(url, hc, &why)) {
        if (strlen(url) > 200)
            yaml_error(c, url_node, "bad http url: %s", why);
        else
            yaml_error(c, url_node, "bad http url '%s': %s", url, why);
        return;
    }
    hc->target = xstrdup(url);
}

/* The one key of a check mapping that names its kind; -1 (reported) when none or several. */
static int health_kind(YamlCtx *c, yaml_node_t *m, yaml_node_t **arg)
{
    int found = -1;
    for (int k = 0; k < _HEALTH_CHECK_KIND_MAX; k++) {
        yaml_node_t *v = yaml_map_get(c, m, health_check_kind_names[k]);
        if (!v)
            continue;
        if (found >= 0) {
            yaml_error(c, m, "health check has two kinds, '%s' and '%s': write a list of checks",
                       health_check_kind_names[found], health_check_kind_names[k]);
            return -1;
        }
        found = k;
        *arg = v;
    }
    if (found < 0)
        yaml_error(c, m, "health check names no kind (exec, tcp, http or runtime)");
    return found;
}

static void health_check_clear(HealthCheck *hc)
{
    strvec_clear(&hc->argv);
    free(hc->host);
    free(hc->path);
    free(hc->target);
    *hc = (HealthCheck){0};
}

static bool parse_health_check(YamlCtx *c, yaml_node_t *m, HealthCheck *out)
{
    static const char *const keys[] = {"exec", "tcp", "http", "runtime", "interval_ms", "timeout_ms", NULL};
    if (m->type != YAML_MAPPING_NODE) {
        yaml_error(c, m, "health check must be a mapping such as {tcp: \"127.0.0.1:8080\"}, not %s", yaml_kind(m));
        return false;
    }
    size_t before = diag_n_errors(c->diag);
    yaml_map_check_keys(c, m, keys, "health check");
    HealthCheck hc = {.pos = yaml_pos(c, m),
                      .interval_ms = HEALTH_INTERVAL_DEFAULT_MS,
                      .timeout_ms = HEALTH_TIMEOUT_DEFAULT_MS,
                      .status = 200};
    yaml_get_long(c, m, "interval_ms", HEALTH_INTERVAL_MIN_MS, HEALTH_INTERVAL_MAX_MS, &hc.interval_ms);
    yaml_get_long(c, m, "timeout_ms", HEALTH_TIMEOUT_MIN_MS, HEALTH_TIMEOUT_MAX_MS, &hc.timeout_ms);
    yaml_node_t *arg = NULL;
    int kind = health_kind(c, m, &arg);
    if (kind >= 0)
        hc.kind = (HealthCheckKind)kind;
    const char *s = arg ? yaml_scalar(arg) : NULL;
    switch (kind) {
    case HEALTH_CHECK_EXEC:
        parse_health_exec(c, arg, &hc);
        break;
    case HEALTH_CHECK_TCP:
        if (!s)
            yaml_error(c, arg, "tcp must be an address \"ADDRESS:PORT\", not %s", yaml_kind(arg));
        else if (!parse_host_port(s, strlen(s), 0, &hc.host, &hc.port))
            yaml_error(c, arg,
                       "bad tcp address '%s': use a numeric address and a port, 127.0.0.1:8080 or [::1]:8080 "
                       "(no name lookups)",
                       s);
        else
            hc.target = xstrdup(s);
        break;
    case HEALTH_CHECK_HTTP:
        parse_health_http(c, arg, &hc);
        break;
    case HEALTH_CHECK_RUNTIME:
        if (!s || strcmp(s, "true") != 0)
            yaml_error(c, arg, "runtime must be true (leave the check out to have none)");
        break;
    default:
        break;
    }
    if (diag_n_errors(c->diag) > before) {
        health_check_clear(&hc);
        return false;
    }
    *out = hc;
    return true;
}

static void add_health_check(YamlCtx *c, yaml_node_t *m, ProcessDef *p, size_t *cap)
{
    HealthCheck hc;
    if (!parse_health_check(c, m, &hc))
        return;
    GROW(p->checks, *cap, p->n_checks + 1);
    p->checks[p->n_checks++] = hc;
}

/* health: one check (a mapping) or a list of them, all of which must pass. */
static void parse_health(YamlCtx *c, yaml_node_t *n, ProcessDef *p)
{
    size_t cap = 0;
    if (n->type == YAML_MAPPING_NODE) {
        add_health_check(c, n, p, &cap);
    } else if (n->type != YAML_SEQUENCE_NODE) {
        yaml_error(c, n, "health must be a check or a list of checks, not %s", yaml_kind(n));
    } else if (n->data.sequence.items.top - n->data.sequence.items.start > HEALTH_MAX_CHECKS) {
        yaml_error(c, n, "more than %d health checks in one process", HEALTH_MAX_CHECKS);
    } else {
        for (yaml_node_item_t *it = n->data.sequence.items.start; it < n->data.sequence.items.top; it++)
            add_health_check(c, yaml_child(c, *it), p, &cap);
    }
}

/* The process's name for messages about its parts: a bad name was
 * reported once, and is not quoted again with each of them. */
static const char *process_name(const ProcessDef *p)
{
    return p->name && name_is_valid(p->name) ? p->name : "?";
}

/* ---- users, groups and capabilities ---------------------------------------------- */

static const char *const capability_names[APPDEFS_CAP_MAX + 1] = {
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
};

int appdefs_capability_from_name(const char *name)
{
    for (int n = 0; name && n <= APPDEFS_CAP_MAX; n++)
        if (strcmp(capability_names[n], name) == 0)
            return n;
    return -1;
}

const char *appdefs_capability_name(int n)
{
    return n >= 0 && n <= APPDEFS_CAP_MAX ? capability_names[n] : NULL;
}

/* A user or group name as useradd(8) takes it (letters, digits, _ . -,
 * not starting with a digit or '-', a trailing '$', at most 32), or a
 * numeric id. */
static bool account_is_valid(const char *s)
{
    size_t n = strlen(s), digits = strspn(s, "0123456789");
    if (n && digits == n)
        return n <= 10;
    if (!n || n > 32 || s[0] == '-' || (s[0] >= '0' && s[0] <= '9'))
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_' ||
                  ch == '.' || ch == '-' || (ch == '$' && i == n - 1);
        if (!ok)
            return false;
    }
    return true;
}

static void parse_account(YamlCtx *c, yaml_node_t *m, const char *key, char **out, SrcPos *pos)
{
    yaml_node_t *n = yaml_map_get(c, m, key);
    if (!n)
        return;
    *pos = yaml_pos(c, n);
    if (yaml_get_string(c, m, key, false, out) && *out && !account_is_valid(*out))
        yaml_error(c, n, "%s '%s' is not a user or group name (letters, digits, _ . -, at most 32) nor a number", key,
                   *out);
}

/* user, group, supplementary_groups, capabilities. */
static void parse_identity(YamlCtx *c, yaml_node_t *m, ProcessDef *p)
{
    parse_account(c, m, "user", &p->user, &p->user_pos);
    parse_account(c, m, "group", &p->group, &p->group_pos);
    yaml_node_t *n;
    if ((n = yaml_map_get(c, m, "supplementary_groups")) &&
        yaml_get_strlist(c, n, "supplementary_groups", &p->supplementary_groups, &p->supplementary_pos))
        for (size_t k = 0; k < p->supplementary_groups.n; k++)
            if (!account_is_valid(p->supplementary_groups.v[k]))
                diag_error_at(c->diag, c->file, p->supplementary_pos[k].line, p->supplementary_pos[k].col,
                              "supplementary group '%s' is not a group name (letters, digits, _ . -, at most 32) "
                              "nor a number",
                              p->supplementary_groups.v[k]);
    if (!(n = yaml_map_get(c, m, "capabilities")))
        return;
    StrVec caps = {0};
    SrcPos *pos = NULL;
    p->has_capabilities = true;
    if (yaml_get_strlist(c, n, "capabilities", &caps, &pos))
        for (size_t k = 0; k < caps.n; k++) {
            int cap = appdefs_capability_from_name(caps.v[k]);
            if (cap < 0)
                diag_error_at(c->diag, c->file, pos[k].line, pos[k].col,
                              "unknown capability '%s' (capabilities(7) names, such as CAP_NET_BIND_SERVICE)",
                              caps.v[k]);
            else
                p->capabilities |= 1ULL << cap;
        }
    strvec_clear(&caps);
    free(pos);
}

/* ---- replacing a process ----------------------------------------------- */

static const char *const ready_kind_names[] = {
    [READY_STARTED] = "started",
    [READY_NOTIFY] = "notify",
    [READY_HEALTH] = "health",
};

const char *ready_kind_name(ReadyKind k)
{
    return k < _READY_KIND_MAX ? ready_kind_names[k] : "?";
}

/* The signals a server may want to be stopped with: the ones servers use
 * for a graceful stop (nginx SIGQUIT, Apache SIGWINCH, lighttpd SIGINT),
 * and SIGKILL for one that needs none. Not SIGSTOP or the faults. */
static const struct {
    int sig;
    const char *name;
} signal_table[] = {
    {SIGTERM, "SIGTERM"}, {SIGINT, "SIGINT"},     {SIGQUIT, "SIGQUIT"}, {SIGHUP, "SIGHUP"},   {SIGUSR1, "SIGUSR1"},
    {SIGUSR2, "SIGUSR2"}, {SIGWINCH, "SIGWINCH"}, {SIGKILL, "SIGKILL"}, {SIGALRM, "SIGALRM"}, {SIGPWR, "SIGPWR"},
};

int appdefs_signal_from_name(const char *name)
{
    if (!name)
        return -1;
    for (size_t i = 0; i < sizeof(signal_table) / sizeof(signal_table[0]); i++)
        if (strcmp(name, signal_table[i].name) == 0 || strcmp(name, signal_table[i].name + 3) == 0)
            return signal_table[i].sig;
    return -1;
}

const char *appdefs_signal_name(int sig)
{
    for (size_t i = 0; i < sizeof(signal_table) / sizeof(signal_table[0]); i++)
        if (signal_table[i].sig == sig)
            return signal_table[i].name;
    return NULL;
}

/* stop_signal, overlap, ready, ready_timeout_ms; after health (ready:
 * health needs checks). */
static void parse_replacement(YamlCtx *c, yaml_node_t *m, ProcessDef *p)
{
    yaml_node_t *n;
    const char *s;
    if ((n = yaml_map_get(c, m, "stop_signal"))) {
        s = yaml_scalar(n);
        int sig = appdefs_signal_from_name(s);
        if (sig >= 0)
            p->stop_signal = sig;
        else if (s && strlen(s) <= 64)
            yaml_error(c, n,
                       "unknown stop_signal '%s' (SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2, SIGWINCH, "
                       "SIGKILL, SIGALRM or SIGPWR)",
                       s);
        else
            yaml_error(c, n, "stop_signal must be a signal name such as SIGTERM, not %s",
                       s ? "a string that long" : yaml_kind(n));
    }
    if ((n = yaml_map_get(c, m, "overlap"))) {
        s = yaml_scalar(n);
        if (s && (strcmp(s, "true") == 0 || strcmp(s, "false") == 0))
            p->overlap = strcmp(s, "true") == 0;
        else
            yaml_error(c, n, "overlap must be true or false");
    } else {
        /* By default only a process whose listening sockets reld holds:
         * both runs can serve those, while two copies of a server that
         * binds its own port, or holds a lock or a pid file, could not. */
        yaml_node_t *socks = yaml_map_get(c, m, "sockets");
        p->overlap = socks && socks->type == YAML_SEQUENCE_NODE && seq_len(socks) > 0;
    }
    if ((n = yaml_map_get(c, m, "ready"))) {
        s = yaml_scalar(n);
        int k = 0;
        while (s && k < _READY_KIND_MAX && strcmp(s, ready_kind_names[k]) != 0)
            k++;
        if (!s || k == _READY_KIND_MAX)
            yaml_error(c, n, "ready must be started, notify or health");
        else if (k == READY_HEALTH && p->n_checks == 0)
            yaml_error(c, n, "ready: health needs health checks (health:)");
        else
            p->ready = (ReadyKind)k;
    }
    yaml_node_t *t = yaml_map_get(c, m, "ready_timeout_ms");
    if (yaml_get_long(c, m, "ready_timeout_ms", READY_TIMEOUT_MIN_MS, READY_TIMEOUT_MAX_MS, &p->ready_timeout_ms) &&
        t && !yaml_map_get(c, m, "ready"))
        yaml_error(c, t, "ready_timeout_ms needs ready: notify or ready: health");
}

static void parse_process(YamlCtx *c, yaml_node_t *m, AppDef *a, ProcessDef *p)
{
    static const char *const keys[] = {"name",
                                       "exec",
                                       "args",
                                       "modules",
                                       "restart",
                                       "shutdown_ms",
                                       "sockets",
                                       "health",
                                       "user",
                                       "group",
                                       "supplementary_groups",
                                       "capabilities",
                                       "stop_signal",
                                       "overlap",
                                       "ready",
                                       "ready_timeout_ms",
                                       NULL};
    yaml_map_check_keys(c, m, keys, "process");
    *p = (ProcessDef){.pos = yaml_pos(c, m),
                      .shutdown_ms = 5000,
                      .stop_signal = SIGTERM,
                      .ready_timeout_ms = READY_TIMEOUT_DEFAULT_MS};
    yaml_node_t *n;
    if (yaml_get_string(c, m, "name", true, &p->name))
        check_name(c, yaml_map_get(c, m, "name"), "process", p->name);
    if (yaml_get_string(c, m, "exec", true, &p->exec) && p->exec && p->exec[0] != '/' && !path_stays_inside(p->exec))
        yaml_error(c, yaml_map_get(c, m, "exec"), "exec '%s' resolves outside the application's directory", p->exec);
    if ((n = yaml_map_get(c, m, "args")))
        yaml_get_strlist(c, n, "args", &p->args, NULL);
    if ((n = yaml_map_get(c, m, "modules"))) {
        SrcPos *pos = NULL;
        if (yaml_get_strlist(c, n, "modules", &p->modules, &pos))
            for (size_t k = 0; k < p->modules.n; k++)
                if (!appdefs_app_find_module(a, p->modules.v[k]))
                    diag_error_at(c->diag, c->file, pos[k].line, pos[k].col, "unknown module '%s' in process '%s'",
                                  p->modules.v[k], process_name(p));
        free(pos);
    }
    if ((n = yaml_map_get(c, m, "restart"))) {
        const char *s = yaml_scalar(n);
        if (s && strcmp(s, "permanent") == 0)
            p->restart = RESTART_PERMANENT;
        else if (s && strcmp(s, "transient") == 0)
            p->restart = RESTART_TRANSIENT;
        else if (s && strcmp(s, "temporary") == 0)
            p->restart = RESTART_TEMPORARY;
        else
            yaml_error(c, n, "restart must be permanent, transient or temporary");
    }
    yaml_get_long(c, m, "shutdown_ms", 0, 3600000L, &p->shutdown_ms);
    parse_identity(c, m, p);
    if ((n = yaml_map_get(c, m, "health")))
        parse_health(c, n, p);
    parse_replacement(c, m, p);
    if (!(n = yaml_map_get(c, m, "sockets")))
        return;
    if (n->type != YAML_SEQUENCE_NODE) {
        yaml_error(c, n, "sockets must be a list, not %s", yaml_kind(n));
        return;
    }
    if (seq_len(n) > PROCESS_SOCKETS_MAX) {
        yaml_error(c, n, "process '%s' has %zu sockets: at most %d", process_name(p), seq_len(n), PROCESS_SOCKETS_MAX);
        return;
    }
    size_t cap;
    ALLOC_EXACT(p->sockets, cap, seq_len(n));
    StrMap seen = {0}; /* socket names, borrowed from p->sockets */
    for (yaml_node_item_t *it = n->data.sequence.items.start; it < n->data.sequence.items.top; it++) {
        yaml_node_t *sm = yaml_child(c, *it);
        if (sm->type != YAML_MAPPING_NODE) {
            yaml_error(c, sm, "socket must be a mapping {name, listen}, not %s", yaml_kind(sm));
            continue;
        }
        static const char *const skeys[] = {"name", "listen", NULL};
        yaml_map_check_keys(c, sm, skeys, "socket");
        SocketDef s = {.pos = yaml_pos(c, sm)};
        if (yaml_get_string(c, sm, "name", true, &s.name))
            check_name(c, yaml_map_get(c, sm, "name"), "socket", s.name);
        if (yaml_get_string(c, sm, "listen", true, &s.listen) && s.listen && !listen_is_valid(s.listen))
            yaml_error(c, yaml_map_get(c, sm, "listen"),
                       "bad listen address '%s': use host:port, [v6]:port or unix:/path", s.listen);
        if (s.name && strmap_get(&seen, s.name, NULL))
            yaml_error(c, sm, "duplicate socket '%s' in process '%s'", s.name, process_name(p));
        else if (s.name)
            strmap_put(&seen, s.name, 0);
        GROW(p->sockets, cap, p->n_sockets + 1);
        p->sockets[p->n_sockets++] = s;
    }
    strmap_clear(&seen);
}

static void parse_modules(YamlCtx *c, yaml_node_t *list, AppDef *a)
{
    if (list->type != YAML_SEQUENCE_NODE) {
        yaml_error(c, list, "modules must be a list, not %s", yaml_kind(list));
        return;
    }
    size_t cap;
    ALLOC_EXACT(a->modules, cap, seq_len(list));
    strmap_reserve(&a->module_index, seq_len(list));
    for (yaml_node_item_t *it = list->data.sequence.items.start; it < list->data.sequence.items.top; it++) {
        yaml_node_t *n = yaml_child(c, *it);
        ModuleDef md = {.pos = yaml_pos(c, n)};
        yaml_node_t *name_node = n;
        if (yaml_scalar(n)) {
            md.name = xstrdup(yaml_scalar(n));
        } else if (n->type == YAML_MAPPING_NODE) {
            static const char *const keys[] = {"name", "file", NULL};
            yaml_map_check_keys(c, n, keys, "module");
            yaml_get_string(c, n, "name", true, &md.name);
            yaml_get_string(c, n, "file", false, &md.file);
            name_node = yaml_map_get(c, n, "name");
        } else {
            yaml_error(c, n, "module must be a name or {name, file}, not %s", yaml_kind(n));
            continue;
        }
        if (!md.name) {
            free(md.file); /* refused: nothing keeps it */
            continue;
        }
        check_name(c, name_node, "module", md.name);
        if (!md.file)
            md.file = strcat(strcat(strcpy(xmalloc(strlen(md.name) + sizeof("modules/.so")), "modules/"), md.name),
                             ".so"); /* not xasprintf: 20,000 modules in a release */
        else if (!path_stays_inside(md.file))
            yaml_error(c, yaml_map_get(c, n, "file"), "module file '%s' resolves outside the application's directory",
                       md.file);
        if (appdefs_app_find_module(a, md.name))
            yaml_error(c, name_node, "duplicate module '%s'", md.name);
        else
            strmap_put(&a->module_index, md.name, a->n_modules); /* the key is md.name's own copy */
        GROW(a->modules, cap, a->n_modules + 1);
        a->modules[a->n_modules++] = md;
    }
}

int appdefs_parse_app(const char *file, const char *buf, size_t len, AppDef **ret, Diag *diag)
{
    static const char *const keys[] = {"name",    "vsn",       "description", "applications",
                                       "modules", "processes", "appup",       NULL};
    YamlCtx c;
    size_t before = diag_n_errors(diag);
    AppDef *a = xcalloc(1, sizeof(*a));
    a->file = xstrdup(file); /* positions borrow this copy */
    yaml_node_t *root = yaml_ctx_load(&c, a->file, buf, len, diag);
    if (!root)
        goto done;
    if (root->type != YAML_MAPPING_NODE) {
        yaml_error(&c, root, "app.yaml must be a mapping, not %s", yaml_kind(root));
        goto done;
    }
    yaml_map_check_keys(&c, root, keys, "application");
    if (yaml_get_string(&c, root, "name", true, &a->name))
        check_name(&c, yaml_map_get(&c, root, "name"), "application", a->name);
    if (yaml_get_string(&c, root, "vsn", true, &a->vsn))
        check_version(&c, yaml_map_get(&c, root, "vsn"), a->vsn);
    yaml_get_string(&c, root, "description", false, &a->description);

    yaml_node_t *n;
    if ((n = yaml_map_get(&c, root, "applications")) &&
        yaml_get_strlist(&c, n, "applications", &a->applications, &a->application_pos)) {
        StrMap seen = {0}; /* keys borrowed from a->applications */
        for (size_t i = 0; i < a->applications.n; i++) {
            SrcPos p = a->application_pos[i];
            if (!name_is_valid(a->applications.v[i]))
                diag_error_at(diag, file, p.line, p.col, "bad application name '%s'", a->applications.v[i]);
            else if (strmap_get(&seen, a->applications.v[i], NULL))
                diag_error_at(diag, file, p.line, p.col, "duplicate application '%s' in applications",
                              a->applications.v[i]);
            else if (a->name && strcmp(a->applications.v[i], a->name) == 0)
                diag_error_at(diag, file, p.line, p.col, "application '%s' depends on itself", a->name);
            if (name_is_valid(a->applications.v[i]))
                strmap_put(&seen, a->applications.v[i], i);
        }
        strmap_clear(&seen);
    }
    if ((n = yaml_map_get(&c, root, "modules")))
        parse_modules(&c, n, a);
    if ((n = yaml_map_get(&c, root, "processes"))) {
        if (n->type != YAML_SEQUENCE_NODE) {
            yaml_error(&c, n, "processes must be a list, not %s", yaml_kind(n));
        } else {
            size_t cap;
            ALLOC_EXACT(a->processes, cap, seq_len(n));
            StrMap seen = {0}; /* process names, borrowed from a->processes */
            for (yaml_node_item_t *it = n->data.sequence.items.start; it < n->data.sequence.items.top; it++) {
                yaml_node_t *pm = yaml_child(&c, *it);
                if (pm->type != YAML_MAPPING_NODE) {
                    yaml_error(&c, pm, "process must be a mapping, not %s", yaml_kind(pm));
                    continue;
                }
                GROW(a->processes, cap, a->n_processes + 1);
                ProcessDef *p = &a->processes[a->n_processes++];
                parse_process(&c, pm, a, p);
                if (p->name && strmap_get(&seen, p->name, NULL))
                    yaml_error(&c, pm, "duplicate process '%s'", p->name);
                else if (p->name)
                    strmap_put(&seen, p->name, 0);
            }
            strmap_clear(&seen);
            size_t n_run = 0;
            for (size_t i = 0; i < a->n_processes; i++)
                n_run += a->processes[i].modules.n;
            strmap_reserve(&a->run_index, n_run);
            for (size_t i = 0; i < a->n_processes; i++)
                for (size_t k = 0; k < a->processes[i].modules.n; k++)
                    strmap_put(&a->run_index, a->processes[i].modules.v[k], i);
        }
    }
    if ((n = yaml_map_get(&c, root, "appup"))) {
        static const char *const akeys[] = {"up", "down", NULL};
        if (n->type != YAML_MAPPING_NODE) {
            yaml_error(&c, n, "appup must be a mapping with up and down, not %s", yaml_kind(n));
        } else {
            yaml_map_check_keys(&c, n, akeys, "appup");
            yaml_node_t *d;
            size_t states = 0;
            if ((d = yaml_map_get(&c, n, "up")))
                parse_appup_dir(&c, d, "up", &a->up, &states);
            if ((d = yaml_map_get(&c, n, "down")))
                parse_appup_dir(&c, d, "down", &a->down, &states);
        }
    }

done:
    yaml_ctx_done(&c);
    if (diag_n_errors(diag) > before) {
        appdef_free(a);
        return -EINVAL;
    }
    *ret = a;
    return 0;
}

/* ---- release.yaml ------------------------------------------------------ */

int appdefs_parse_release(const char *file, const char *buf, size_t len, ReleaseDef **ret, Diag *diag)
{
    static const char *const keys[] = {"release", "vsn", "applications", NULL};
    YamlCtx c;
    size_t before = diag_n_errors(diag);
    ReleaseDef *r = xcalloc(1, sizeof(*r));
    r->file = xstrdup(file); /* positions borrow this copy */
    yaml_node_t *root = yaml_ctx_load(&c, r->file, buf, len, diag);
    if (!root)
        goto done;
    if (root->type != YAML_MAPPING_NODE) {
        yaml_error(&c, root, "release.yaml must be a mapping, not %s", yaml_kind(root));
        goto done;
    }
    yaml_map_check_keys(&c, root, keys, "release");
    if (yaml_get_string(&c, root, "release", true, &r->name))
        check_name(&c, yaml_map_get(&c, root, "release"), "release", r->name);
    if (yaml_get_string(&c, root, "vsn", true, &r->vsn))
        check_version(&c, yaml_map_get(&c, root, "vsn"), r->vsn);
    yaml_node_t *apps = yaml_map_get(&c, root, "applications");
    if (!apps) {
        yaml_error(&c, root, "missing field 'applications'");
    } else if (apps->type != YAML_SEQUENCE_NODE) {
        yaml_error(&c, apps, "applications must be a list, not %s", yaml_kind(apps));
    } else {
        size_t cap;
        ALLOC_EXACT(r->apps, cap, seq_len(apps));
        strmap_reserve(&r->by_name, seq_len(apps));
        for (yaml_node_item_t *it = apps->data.sequence.items.start; it < apps->data.sequence.items.top; it++) {
            yaml_node_t *m = yaml_child(&c, *it);
            if (m->type != YAML_MAPPING_NODE) {
                yaml_error(&c, m, "application must be a mapping {name, vsn}, not %s", yaml_kind(m));
                continue;
            }
            static const char *const akeys[] = {"name", "vsn", NULL};
            yaml_map_check_keys(&c, m, akeys, "application reference");
            ReleaseAppRef ref = {.pos = yaml_pos(&c, m)};
            if (yaml_get_string(&c, m, "name", true, &ref.name))
                check_name(&c, yaml_map_get(&c, m, "name"), "application", ref.name);
            if (yaml_get_string(&c, m, "vsn", true, &ref.vsn))
                check_version(&c, yaml_map_get(&c, m, "vsn"), ref.vsn);
            if (ref.name && appdefs_release_find(r, ref.name))
                yaml_error(&c, m, "duplicate application '%s'", ref.name);
            else if (ref.name)
                strmap_put(&r->by_name, ref.name, r->n_apps); /* the key is ref.name's own copy */
            GROW(r->apps, cap, r->n_apps + 1);
            r->apps[r->n_apps++] = ref;
        }
    }
done:
    yaml_ctx_done(&c);
    if (diag_n_errors(diag) > before) {
        release_def_free(r);
        return -EINVAL;
    }
    *ret = r;
    return 0;
}

/* ---- whole-release checks ---------------------------------------------- */

const ReleaseAppRef *appdefs_release_find(const ReleaseDef *rel, const char *app)
{
    size_t i;
    return strmap_get(&rel->by_name, app, &i) ? &rel->apps[i] : NULL;
}

static ssize_t release_index(const ReleaseDef *rel, const char *app)
{
    const ReleaseAppRef *r = appdefs_release_find(rel, app);
    return r ? r - rel->apps : -1;
}

const ModuleDef *appdefs_app_find_module(const AppDef *app, const char *module)
{
    size_t i;
    return strmap_get(&app->module_index, module, &i) ? &app->modules[i] : NULL;
}

bool appdefs_app_runs_module(const AppDef *app, const char *module)
{
    return strmap_get(&app->run_index, module, NULL);
}

enum { WHITE, GREY, BLACK };

/* Reports the cycle stack[from..depth] -> stack[from], found at the
 * dependency d of the application at the top of the stack. One line, built
 * in one pass; a cycle of more than 32 applications shows its first 31 and
 * how many more there are. */
static void report_cycle(const ReleaseDef *rel, const size_t *stack, size_t from, size_t depth, size_t d, Diag *diag)
{
    enum { SHOWN = 32 };
    size_t n = depth - from + 1, len = 1;
    for (size_t k = from; k <= depth; k++)
        len += strlen(rel->apps[stack[k]].name) + 4;
    char *cycle = xmalloc(len + 64), *w = cycle;
    for (size_t k = from; k <= depth; k++) {
        if (n > SHOWN && k == from + SHOWN - 1) {
            w += sprintf(w, "... (%zu more) -> ", depth - k + 1);
            break;
        }
        w = stpcpy(stpcpy(w, rel->apps[stack[k]].name), " -> ");
    }
    *w = 0;
    const AppDef *a = rel->apps[stack[depth]].app;
    SrcPos p = a->application_pos[d];
    diag_error_at(diag, a->file, p.line, p.col, "dependency cycle between applications: %s%s", cycle,
                  rel->apps[stack[from]].name);
    free(cycle);
}

/* Depth-first search for a dependency cycle from root, with a stack of its
 * own (a chain of a hundred thousand applications must not overflow the
 * thread's); on finding one, reports it once with every application on it,
 * in order. next[i] is the next dependency of i to follow. */
static bool find_cycle(const ReleaseDef *rel, size_t root, int *color, size_t *stack, size_t *next, Diag *diag)
{
    size_t depth = 0;
    stack[0] = root;
    color[root] = GREY;
    next[root] = 0;
    for (;;) {
        size_t i = stack[depth];
        const AppDef *a = rel->apps[i].app;
        if (next[i] == a->applications.n) {
            color[i] = BLACK;
            if (depth == 0)
                return false;
            depth--;
            continue;
        }
        size_t d = next[i]++;
        ssize_t j = release_index(rel, a->applications.v[d]);
        if (j < 0 || color[j] == BLACK)
            continue;
        if (color[j] == GREY) {
            size_t from = 0;
            while (stack[from] != (size_t)j)
                from++;
            report_cycle(rel, stack, from, depth, d, diag);
            return true;
        }
        color[j] = GREY;
        next[j] = 0;
        stack[++depth] = (size_t)j;
    }
}

/* Modules a dep_mods list may name: any module of the release, and any
 * module an appup instruction of the release names (a module being deleted
 * or added back is in no module list). OTP allows dependencies across
 * applications, so this is release-wide. */
static void add_appup_targets(const Appup *u, StrMap *known)
{
    for (size_t e = 0; e < u->n_entries; e++)
        for (size_t i = 0; i < u->entries[e].n_instrs; i++) {
            const AppupInstr *in = &u->entries[e].instrs[i];
            if (in->target && in->op <= APPUP_DELETE_MODULE)
                strmap_put(known, in->target, 0);
        }
}

static void check_dep_mods(const AppDef *a, const Appup *appup, const StrMap *known, Diag *diag)
{
    for (size_t e = 0; e < appup->n_entries; e++)
        for (size_t i = 0; i < appup->entries[e].n_instrs; i++) {
            const AppupInstr *in = &appup->entries[e].instrs[i];
            for (size_t k = 0; k < in->dep_mods.n; k++)
                if (!strmap_get(known, in->dep_mods.v[k], NULL))
                    diag_error_at(diag, a->file, in->dep_mods_pos[k].line, in->dep_mods_pos[k].col,
                                  "unknown module '%s' in dep_mods", in->dep_mods.v[k]);
        }
}

int appdefs_validate_release(const ReleaseDef *rel, Diag *diag)
{
    size_t before = diag_n_errors(diag);
    bool missing = false;
    StrMap module_owner = {0};
    size_t n_modules = 0; /* the maps below, reserved to size */
    for (size_t i = 0; i < rel->n_apps; i++)
        if (rel->apps[i].app)
            n_modules += rel->apps[i].app->n_modules;
    strmap_reserve(&module_owner, n_modules);
    for (size_t i = 0; i < rel->n_apps; i++) {
        const ReleaseAppRef *ref = &rel->apps[i];
        const AppDef *a = ref->app;
        if (!a) {
            diag_error(diag, "application %s %s of release %s %s has no definition", ref->name, ref->vsn, rel->name,
                       rel->vsn);
            missing = true;
            continue;
        }
        if (strcmp(a->name, ref->name) != 0 || strcmp(a->vsn, ref->vsn) != 0)
            diag_error_at(diag, a->file, 1, 1, "defines %s %s but the release wants %s %s", a->name, a->vsn, ref->name,
                          ref->vsn);
        for (size_t d = 0; d < a->applications.n; d++)
            if (!appdefs_release_find(rel, a->applications.v[d])) {
                SrcPos p = a->application_pos[d];
                diag_error_at(diag, a->file, p.line, p.col,
                              "application '%s' depends on '%s', which release %s %s does not include", a->name,
                              a->applications.v[d], rel->name, rel->vsn);
            }
        for (size_t m = 0; m < a->n_modules; m++) {
            size_t owner;
            if (strmap_get(&module_owner, a->modules[m].name, &owner))
                diag_error_at(diag, a->file, a->modules[m].pos.line, a->modules[m].pos.col,
                              "module '%s' is also in application '%s'", a->modules[m].name,
                              rel->apps[owner].app->name);
            else
                strmap_put(&module_owner, a->modules[m].name, i);
        }
    }
    strmap_clear(&module_owner);
    if (missing || diag_n_errors(diag) > before)
        return -EINVAL; /* the graph below needs every app present */

    int *color = xcalloc(rel->n_apps + 1, sizeof(int));
    size_t *stack = xcalloc(rel->n_apps + 1, sizeof(size_t)), *next = xcalloc(rel->n_apps + 1, sizeof(size_t));
    for (size_t i = 0; i < rel->n_apps; i++)
        if (color[i] == WHITE && find_cycle(rel, i, color, stack, next, diag))
            break;
    free(color);
    free(stack);
    free(next);
    StrMap known = {0};
    strmap_reserve(&known, n_modules); /* appup targets are mostly modules of the release too */
    for (size_t i = 0; i < rel->n_apps; i++) {
        const AppDef *a = rel->apps[i].app;
        for (size_t m = 0; m < a->n_modules; m++)
            strmap_put(&known, a->modules[m].name, 0);
        add_appup_targets(&a->up, &known);
        add_appup_targets(&a->down, &known);
    }
    for (size_t i = 0; i < rel->n_apps; i++) {
        check_dep_mods(rel->apps[i].app, &rel->apps[i].app->up, &known, diag);
        check_dep_mods(rel->apps[i].app, &rel->apps[i].app->down, &known, diag);
    }
    strmap_clear(&known);
    return diag_n_errors(diag) > before ? -EINVAL : 0;
}

/* Stable topological order (Kahn's algorithm): repeatedly take the
 * application earliest in release.yaml whose dependencies are all placed.
 * A min-heap of ready indices keeps it O((n + e) log n) for large releases. */
static void heap_push(size_t *h, size_t *n, size_t x)
{
    size_t i = (*n)++;
    for (; i && h[(i - 1) / 2] > x; i = (i - 1) / 2)
        h[i] = h[(i - 1) / 2];
    h[i] = x;
}

static size_t heap_pop(size_t *h, size_t *n)
{
    size_t top = h[0], x = h[--*n], i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n)
            break;
        if (c + 1 < *n && h[c + 1] < h[c])
            c++;
        if (h[c] >= x)
            break;
        h[i] = h[c];
        i = c;
    }
    h[i] = x;
    return top;
}

size_t *appdefs_release_order(const ReleaseDef *rel)
{
    size_t n = rel->n_apps;
    size_t *order = xcalloc(n + 1, sizeof(size_t));
    size_t *pending = xcalloc(n + 1, sizeof(size_t)); /* unplaced dependencies */
    size_t *heap = xmalloc((n + 1) * sizeof(size_t)), n_heap = 0;
    /* dependents[first[j] .. first[j+1]) are the applications depending on j. */
    size_t *first = xcalloc(n + 2, sizeof(size_t)), *dependents = NULL, n_edges = 0;
    bool *placed = xcalloc(n + 1, sizeof(bool));
    for (int pass = 0; pass < 2; pass++) {
        size_t *fill = pass ? xcalloc(n + 1, sizeof(size_t)) : NULL;
        for (size_t i = 0; i < n; i++) {
            const AppDef *a = rel->apps[i].app;
            for (size_t d = 0; a && d < a->applications.n; d++) {
                size_t j;
                if (!strmap_get(&rel->by_name, a->applications.v[d], &j) || j == i)
                    continue;
                if (pass == 0) {
                    first[j + 1]++;
                    pending[i]++;
                    n_edges++;
                } else {
                    dependents[first[j] + fill[j]++] = i;
                }
            }
        }
        if (pass == 0) {
            for (size_t j = 0; j < n; j++)
                first[j + 1] += first[j];
            dependents = xmalloc((n_edges + 1) * sizeof(size_t));
        }
        free(fill);
    }
    for (size_t i = 0; i < n; i++)
        if (pending[i] == 0)
            heap_push(heap, &n_heap, i);
    for (size_t k = 0; k < n; k++) {
        size_t i;
        if (n_heap) {
            i = heap_pop(heap, &n_heap);
        } else { /* a cycle: validation refuses it; keep the rest in order */
            for (i = 0; placed[i]; i++)
                ;
        }
        placed[i] = true;
        order[k] = i;
        for (size_t e = first[i]; e < first[i + 1]; e++)
            if (!placed[dependents[e]] && --pending[dependents[e]] == 0)
                heap_push(heap, &n_heap, dependents[e]);
    }
    free(pending);
    free(heap);
    free(first);
    free(dependents);
    free(placed);
    return order;
}

const AppupEntry *appdefs_appup_find(const Appup *appup, const char *vsn)
{
    for (size_t i = 0; i < appup->n_entries; i++) {
        const AppupEntry *e = &appup->entries[i];
        if (e->version && strcmp(e->version, vsn) == 0)
            return e;
        if (e->re && appdefs_regex_match(e->re, vsn) == 1)
            return e;
    }
    return NULL;
}

/* ---- destructors ------------------------------------------------------- */

void appup_instr_clear(AppupInstr *i)
{
    free(i->target);
    json_decref(i->extra);
    strvec_clear(&i->dep_mods);
    free(i->dep_mods_pos);
    strvec_clear(&i->modules);
    *i = (AppupInstr){0};
}

static void appup_clear(Appup *u)
{
    for (size_t e = 0; e < u->n_entries; e++) {
        AppupEntry *en = &u->entries[e];
        free(en->version);
        free(en->regex);
        appdefs_regex_free(en->re);
        for (size_t i = 0; i < en->n_instrs; i++)
            appup_instr_clear(&en->instrs[i]);
        free(en->instrs);
    }
    free(u->entries);
}

AppDef *appdef_free(AppDef *a)
{
    if (!a)
        return NULL;
    free(a->file);
    free(a->name);
    free(a->vsn);
    free(a->description);
    strvec_clear(&a->applications);
    free(a->application_pos);
    for (size_t i = 0; i < a->n_modules; i++) {
        free(a->modules[i].name);
        free(a->modules[i].file);
    }
    free(a->modules);
    for (size_t i = 0; i < a->n_processes; i++) {
        ProcessDef *p = &a->processes[i];
        free(p->name);
        free(p->exec);
        strvec_clear(&p->args);
        strvec_clear(&p->modules);
        for (size_t s = 0; s < p->n_sockets; s++) {
            free(p->sockets[s].name);
            free(p->sockets[s].listen);
        }
        free(p->sockets);
        for (size_t k = 0; k < p->n_checks; k++)
            health_check_clear(&p->checks[k]);
        free(p->checks);
        free(p->user);
        free(p->group);
        strvec_clear(&p->supplementary_groups);
        free(p->supplementary_pos);
    }
    free(a->processes);
    appup_clear(&a->up);
    appup_clear(&a->down);
    strmap_clear(&a->module_index);
    strmap_clear(&a->run_index);
    free(a);
    return NULL;
}

ReleaseDef *release_def_free(ReleaseDef *r)
{
    if (!r)
        return NULL;
    free(r->file);
    free(r->name);
    free(r->vsn);
    for (size_t i = 0; i < r->n_apps; i++) {
        free(r->apps[i].name);
        free(r->apps[i].vsn);
        appdef_free(r->apps[i].app);
    }
    free(r->apps);
    strmap_clear(&r->by_name);
    free(r);
    return NULL;
}
