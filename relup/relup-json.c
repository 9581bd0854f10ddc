/* SPEC.md's JSON shape of a relup: writing it, reading it back (a stored
 * releases/<vsn>/relup.yaml is that JSON, which is also YAML), and a line
 * per instruction for people. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "relup.h"
#include "yamlutil.h"

static bool has_module_field(RelupOp op)
{
    return op == RELUP_LOAD || op == RELUP_REMOVE;
}
static bool has_app_field(RelupOp op)
{
    return op == RELUP_LOAD_OBJECT_CODE || op == RELUP_START_APPLICATION || op == RELUP_STOP_APPLICATION ||
           op == RELUP_UNLOAD_APPLICATION;
}
static bool has_modules_field(RelupOp op)
{
    return op == RELUP_LOAD_OBJECT_CODE || op == RELUP_SUSPEND || op == RELUP_CODE_CHANGE || op == RELUP_RESUME ||
           op == RELUP_PURGE || op == RELUP_STOP || op == RELUP_START;
}

static json_t *timeout_json(long t)
{
    return t == TIMEOUT_INFINITY ? json_string("infinity") : json_integer(t);
}

static json_t *instr_json(const RelupInstr *i)
{
    json_t *o = json_object();
    json_object_set_new(o, "op", json_string(relup_op_name(i->op)));
    if (has_app_field(i->op))
        json_object_set_new(o, "app", json_string(i->app));
    if (i->op == RELUP_LOAD_OBJECT_CODE)
        json_object_set_new(o, "vsn", json_string(i->vsn));
    if (i->op == RELUP_CODE_CHANGE)
        json_object_set_new(o, "mode", json_string(i->down ? "down" : "up"));
    if (has_module_field(i->op)) {
        json_object_set_new(o, "module", json_string(i->module));
        json_object_set_new(o, "pre_purge", json_string(purge_method_name(i->pre_purge)));
        json_object_set_new(o, "post_purge", json_string(purge_method_name(i->post_purge)));
    }
    if (has_modules_field(i->op)) {
        json_t *mods = json_array();
        for (size_t k = 0; k < i->n_mods; k++) {
            const RelupModule *m = &i->mods[k];
            if (i->op == RELUP_CODE_CHANGE)
                json_array_append_new(
                    mods, json_pack("{s:s, s:O}", "module", m->module, "extra", m->extra ? m->extra : json_null()));
            else if (i->op == RELUP_SUSPEND && m->timeout_ms != TIMEOUT_DEFAULT)
                json_array_append_new(
                    mods, json_pack("{s:s, s:o}", "module", m->module, "timeout_ms", timeout_json(m->timeout_ms)));
            else
                json_array_append_new(mods, json_string(m->module));
        }
        json_object_set_new(o, "modules", mods);
    }
    return o;
}

static json_t *script_json(const RelupScript *s)
{
    json_t *a = json_array();
    for (size_t i = 0; i < s->n; i++)
        json_array_append_new(a, instr_json(&s->v[i]));
    return a;
}

json_t *relup_to_json(const Relup *r)
{
    return json_pack("{s:s, s:s, s:o, s:o}", "from", r->from, "to", r->to, "up", script_json(&r->up), "down",
                     script_json(&r->down));
}

/* ---- reading ------------------------------------------------------------ */

/* A stored relup is a YAML document within yamlutil.h's bounds, of at most
 * this many nodes: five times the relup of the benchmark release (1,000
 * applications of 20 modules: 734,015 nodes; docs/formats.md "Limits"). */
#define RELUP_MAX_NODES 4000000

static bool parse_purge_field(YamlCtx *c, yaml_node_t *m, const char *key, PurgeMethod *out)
{
    char *s = NULL;
    if (!yaml_get_string(c, m, key, true, &s))
        return false;
    bool ok = true;
    if (strcmp(s, "soft_purge") == 0)
        *out = PURGE_SOFT;
    else if (strcmp(s, "brutal_purge") == 0)
        *out = PURGE_BRUTAL;
    else {
        yaml_error(c, yaml_map_get(c, m, key), "%s must be soft_purge or brutal_purge", key);
        ok = false;
    }
    free(s);
    return ok;
}

static bool parse_module_item(YamlCtx *c, RelupOp op, yaml_node_t *n, RelupModule *out)
{
    *out = (RelupModule){0};
    if (yaml_scalar(n) && op != RELUP_CODE_CHANGE) {
        if (!name_is_valid(yaml_scalar(n))) {
            yaml_error(c, n, "bad module name '%s'", yaml_scalar(n));
            return false;
        }
        out->module = xstrdup(yaml_scalar(n));
        return true;
    }
    if (n->type != YAML_MAPPING_NODE || (op != RELUP_SUSPEND && op != RELUP_CODE_CHANGE)) {
        yaml_error(c, n, "%s modules must be %s", relup_op_name(op),
                   op == RELUP_CODE_CHANGE ? "{module, extra} mappings" : "names");
        return false;
    }
    static const char *const cc_keys[] = {"module", "extra", NULL};
    static const char *const suspend_keys[] = {"module", "timeout_ms", NULL};
    size_t before = diag_n_errors(c->diag);
    yaml_map_check_keys(c, n, op == RELUP_CODE_CHANGE ? cc_keys : suspend_keys, relup_op_name(op));
    if (yaml_get_string(c, n, "module", true, &out->module) && !name_is_valid(out->module))
        yaml_error(c, n, "bad module name '%s'", out->module);
    if (op == RELUP_CODE_CHANGE) {
        yaml_node_t *e = yaml_map_get(c, n, "extra");
        out->extra = e ? yaml_to_json(c, e) : json_null();
    } else {
        yaml_node_t *t = yaml_map_get(c, n, "timeout_ms");
        if (t && yaml_scalar(t) && strcmp(yaml_scalar(t), "infinity") == 0)
            out->timeout_ms = TIMEOUT_INFINITY;
        else
            yaml_get_long(c, n, "timeout_ms", 1, 86400000L, &out->timeout_ms);
    }
    if (diag_n_errors(c->diag) > before) {
        free(out->module);
        json_decref(out->extra);
        *out = (RelupModule){0};
        return false;
    }
    return true;
}

static bool parse_instr(YamlCtx *c, yaml_node_t *m, RelupInstr *out)
{
    if (m->type != YAML_MAPPING_NODE) {
        yaml_error(c, m, "instruction must be a mapping with 'op', not %s", yaml_kind(m));
        return false;
    }
    char *opname = NULL;
    if (!yaml_get_string(c, m, "op", true, &opname))
        return false;
    int op = -1;
    for (int k = 0; k < RELUP_N_OPS; k++)
        if (strcmp(opname, relup_op_name(k)) == 0)
            op = k;
    if (op < 0) {
        yaml_error(c, yaml_map_get(c, m, "op"), "unknown op '%s'", opname);
        free(opname);
        return false;
    }
    free(opname);
    const char *keys[6] = {"op"};
    size_t nk = 1;
    if (has_app_field(op))
        keys[nk++] = "app";
    if (op == RELUP_LOAD_OBJECT_CODE)
        keys[nk++] = "vsn";
    if (op == RELUP_CODE_CHANGE)
        keys[nk++] = "mode";
    if (has_module_field(op)) {
        keys[nk++] = "module";
        keys[nk++] = "pre_purge";
        keys[nk++] = "post_purge";
    }
    if (has_modules_field(op))
        keys[nk++] = "modules";
    keys[nk] = NULL;

    size_t before = diag_n_errors(c->diag);
    RelupInstr i = {.op = op};
    yaml_map_check_keys(c, m, keys, relup_op_name(op));
    if (has_app_field(op) && yaml_get_string(c, m, "app", true, &i.app) && !name_is_valid(i.app))
        yaml_error(c, m, "bad application name '%s'", i.app);
    if (op == RELUP_LOAD_OBJECT_CODE && yaml_get_string(c, m, "vsn", true, &i.vsn) && !version_is_valid(i.vsn))
        yaml_error(c, m, "bad version string '%s'", i.vsn);
    if (op == RELUP_CODE_CHANGE) {
        char *mode = NULL;
        if (yaml_get_string(c, m, "mode", true, &mode)) {
            if (strcmp(mode, "down") == 0)
                i.down = true;
            else if (strcmp(mode, "up") != 0)
                yaml_error(c, yaml_map_get(c, m, "mode"), "mode must be up or down");
        }
        free(mode);
    }
    if (has_module_field(op)) {
        if (yaml_get_string(c, m, "module", true, &i.module) && !name_is_valid(i.module))
            yaml_error(c, m, "bad module name '%s'", i.module);
        parse_purge_field(c, m, "pre_purge", &i.pre_purge);
        parse_purge_field(c, m, "post_purge", &i.post_purge);
    }
    if (has_modules_field(op)) {
        size_t cap = 0;
        yaml_node_t *mods = yaml_map_get(c, m, "modules");
        if (!mods)
            yaml_error(c, m, "missing field 'modules'");
        else if (mods->type != YAML_SEQUENCE_NODE)
            yaml_error(c, mods, "modules must be a list, not %s", yaml_kind(mods));
        else
            for (yaml_node_item_t *it = mods->data.sequence.items.start; it < mods->data.sequence.items.top; it++) {
                RelupModule rm;
                if (!parse_module_item(c, op, yaml_child(c, *it), &rm))
                    continue;
                GROW(i.mods, cap, i.n_mods + 1);
                i.mods[i.n_mods++] = rm;
            }
    }
    if (diag_n_errors(c->diag) > before) {
        relup_instr_clear(&i);
        return false;
    }
    *out = i;
    return true;
}

static void parse_script(YamlCtx *c, yaml_node_t *root, const char *key, RelupScript *out)
{
    yaml_node_t *list = yaml_map_get(c, root, key);
    if (!list) {
        yaml_error(c, root, "missing field '%s'", key);
        return;
    }
    if (list->type != YAML_SEQUENCE_NODE) {
        yaml_error(c, list, "%s must be a list of instructions, not %s", key, yaml_kind(list));
        return;
    }
    for (yaml_node_item_t *it = list->data.sequence.items.start; it < list->data.sequence.items.top; it++) {
        RelupInstr i;
        if (!parse_instr(c, yaml_child(c, *it), &i))
            continue;
        GROW(out->v, out->cap, out->n + 1);
        out->v[out->n++] = i;
    }
}

/* ---- the fast path --------------------------------------------------------
 *
 * A stored relup is the JSON store_write_relup wrote (and reld's reply the
 * JSON it sent). Composing it as YAML was most of the time of reading it
 * (11.5 MB for the benchmark release: a libyaml document of 734,015 nodes,
 * 1.2 s, more than computing the relup), and so would be building a jansson
 * tree of it. A text that is plainly JSON is therefore read straight into
 * the Relup, and taken only when it is, field for field, a relup the YAML
 * path accepts and reads the same. Anything else, however small (an
 * unknown key, "op" not first, a number where a string goes, a real, a
 * long key, a byte that is not printable ASCII, an escape libyaml reads
 * otherwise, a duplicate key), falls back to the YAML path, which gives
 * every message its position: the fast path never reports an error. */

/* Extras nested deeper than this, and keys longer, fall back: YAML's bounds
 * (64 collections in all) and libyaml's simple keys (at most 1024
 * characters) decide those. */
#define FAST_MAX_EXTRA_DEPTH 32
#define FAST_MAX_KEY         1000

typedef struct Fast {
    const char *p, *end;
    size_t nodes; /* as the YAML bounds count them: every key and value */
    char *str;    /* the last string read, unescaped, NUL-terminated */
    size_t str_len, str_cap;
} Fast;

static void fast_ws(Fast *f)
{
    while (f->p < f->end && (*f->p == ' ' || *f->p == '\n' || *f->p == '\r'))
        f->p++;
}

/* Skips blanks, then takes ch if it is next. */
static bool fast_eat(Fast *f, char ch)
{
    fast_ws(f);
    if (f->p < f->end && *f->p == ch) {
        f->p++;
        return true;
    }
    return false;
}

static int hexval(char ch)
{
    return ch >= '0' && ch <= '9'   ? ch - '0'
           : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
           : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
                                    : -1;
}

static void fast_put(Fast *f, char ch)
{
    GROW(f->str, f->str_cap, f->str_len + 2);
    f->str[f->str_len++] = ch;
}

/* A string into f->str. Printable ASCII and the escapes libyaml and JSON
 * read alike: no \/, no \u0000, no surrogates (libyaml refuses those that
 * JSON joins into one character). */
static bool fast_string(Fast *f)
{
    if (!fast_eat(f, '"'))
        return false;
    f->str_len = 0;
    for (;;) {
        if (f->p >= f->end)
            return false;
        char ch = *f->p++;
        if (ch == '"')
            break;
        if ((unsigned char)ch < 0x20 || (unsigned char)ch > 0x7e)
            return false;
        if (ch != '\\') {
            fast_put(f, ch);
            continue;
        }
        if (f->p >= f->end)
            return false;
        char e = *f->p++;
        static const char from[] = "\"\\bfnrt", to[] = "\"\\\b\f\n\r\t";
        const char *k = e ? strchr(from, e) : NULL;
        if (k) {
            fast_put(f, to[k - from]);
            continue;
        }
        if (e != 'u' || f->end - f->p < 4)
            return false;
        unsigned cp = 0;
        for (int i = 0; i < 4; i++) {
            int h = hexval(*f->p++);
            if (h < 0)
                return false;
            cp = cp * 16 + (unsigned)h;
        }
        if (cp == 0 || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        if (cp < 0x80) {
            fast_put(f, (char)cp);
        } else if (cp < 0x800) {
            fast_put(f, (char)(0xc0 | (cp >> 6)));
            fast_put(f, (char)(0x80 | (cp & 0x3f)));
        } else {
            fast_put(f, (char)(0xe0 | (cp >> 12)));
            fast_put(f, (char)(0x80 | ((cp >> 6) & 0x3f)));
            fast_put(f, (char)(0x80 | (cp & 0x3f)));
        }
    }
    fast_put(f, 0);
    f->str_len--;
    f->nodes++;
    return true;
}

/* A key and its colon right after it: the key in f->str. (libyaml takes a
 * key only within 1024 characters and on one line with its colon.) */
static bool fast_key(Fast *f)
{
    if (!fast_string(f) || f->str_len > FAST_MAX_KEY || f->p >= f->end || *f->p != ':')
        return false;
    f->p++;
    return true;
}

/* After an item: true and *more for a comma, true and !*more for close. */
static bool fast_next(Fast *f, char close, bool *more)
{
    if (fast_eat(f, ','))
        return (*more = true);
    *more = false;
    return fast_eat(f, close);
}

/* An integer as JSON writes it (no reals: strtod's range and rounding
 * against the YAML path's typing are not worth matching here). */
static bool fast_integer(Fast *f, long long *out)
{
    fast_ws(f);
    bool neg = f->p < f->end && *f->p == '-';
    const char *d = f->p + neg, *q = d;
    while (q < f->end && *q >= '0' && *q <= '9')
        q++;
    if (q == d || q - d > 18 || (*d == '0' && q - d > 1) || (q < f->end && (*q == '.' || *q == 'e' || *q == 'E')))
        return false;
    long long v = 0;
    for (; d < q; d++)
        v = v * 10 + (*d - '0');
    *out = neg ? -v : v;
    f->p = q;
    f->nodes++;
    return true;
}

static bool fast_word(Fast *f, const char *w)
{
    fast_ws(f);
    size_t n = strlen(w);
    if ((size_t)(f->end - f->p) < n || memcmp(f->p, w, n) != 0)
        return false;
    f->p += n;
    f->nodes++;
    return true;
}

/* Any value of an extra, as the YAML path types it. NULL: fall back. */
static json_t *fast_value(Fast *f, int depth)
{
    fast_ws(f);
    if (f->p >= f->end)
        return NULL;
    char ch = *f->p;
    if (ch == '"')
        return fast_string(f) ? json_stringn(f->str, f->str_len) : NULL;
    if (ch == 't')
        return fast_word(f, "true") ? json_true() : NULL;
    if (ch == 'f')
        return fast_word(f, "false") ? json_false() : NULL;
    if (ch == 'n')
        return fast_word(f, "null") ? json_null() : NULL;
    if (ch == '-' || (ch >= '0' && ch <= '9')) {
        long long v;
        return fast_integer(f, &v) ? json_integer(v) : NULL;
    }
    if ((ch != '[' && ch != '{') || depth >= FAST_MAX_EXTRA_DEPTH)
        return NULL;
    f->p++;
    f->nodes++;
    bool list = ch == '[', more = true;
    json_t *c = list ? json_array() : json_object();
    if (fast_eat(f, list ? ']' : '}'))
        return c;
    while (more) {
        char *key = NULL;
        if (!list) {
            if (!fast_key(f) || json_object_get(c, f->str))
                break;
            key = xstrdup(f->str);
        }
        json_t *v = fast_value(f, depth + 1);
        if (!v) {
            free(key);
            break;
        }
        if (list)
            json_array_append_new(c, v);
        else
            json_object_set_new(c, key, v);
        free(key);
        if (!fast_next(f, list ? ']' : '}', &more))
            break;
        if (!more)
            return c;
    }
    json_decref(c);
    return NULL;
}

/* A string value valid by check (NULL: any), copied into *out. */
static bool fast_dup(Fast *f, bool (*check)(const char *), char **out)
{
    if (*out || !fast_string(f) || (check && !check(f->str)))
        return false;
    *out = xstrdup(f->str);
    return true;
}

static bool fast_purge(Fast *f, bool *seen, PurgeMethod *out)
{
    if (*seen || !fast_string(f))
        return false;
    *seen = true;
    if (strcmp(f->str, "soft_purge") == 0)
        *out = PURGE_SOFT;
    else if (strcmp(f->str, "brutal_purge") == 0)
        *out = PURGE_BRUTAL;
    else
        return false;
    return true;
}

static bool fast_module(Fast *f, RelupOp op, RelupModule *out)
{
    fast_ws(f);
    if (op != RELUP_CODE_CHANGE && f->p < f->end && *f->p == '"')
        return fast_dup(f, name_is_valid, &out->module);
    if ((op != RELUP_SUSPEND && op != RELUP_CODE_CHANGE) || !fast_eat(f, '{'))
        return false;
    f->nodes++;
    bool more = true, timeout = false;
    while (more) {
        if (!fast_key(f))
            return false;
        if (strcmp(f->str, "module") == 0) {
            if (!fast_dup(f, name_is_valid, &out->module))
                return false;
        } else if (op == RELUP_CODE_CHANGE && strcmp(f->str, "extra") == 0) {
            if (out->extra || !(out->extra = fast_value(f, 0)))
                return false;
        } else if (op == RELUP_SUSPEND && strcmp(f->str, "timeout_ms") == 0) {
            long long t;
            fast_ws(f);
            if (timeout)
                return false;
            timeout = true;
            if (f->p < f->end && *f->p == '"') {
                if (!fast_string(f) || strcmp(f->str, "infinity") != 0)
                    return false;
                out->timeout_ms = TIMEOUT_INFINITY;
            } else if (fast_integer(f, &t) && t >= 1 && t <= 86400000L) {
                out->timeout_ms = (long)t;
            } else {
                return false;
            }
        } else {
            return false;
        }
        if (!fast_next(f, '}', &more))
            return false;
    }
    if (!out->module)
        return false;
    if (op == RELUP_CODE_CHANGE && !out->extra)
        out->extra = json_null();
    return true;
}

static bool fast_modules(Fast *f, RelupInstr *i)
{
    if (!fast_eat(f, '['))
        return false;
    f->nodes++;
    size_t cap = 0;
    bool more = !fast_eat(f, ']');
    while (more) {
        GROW(i->mods, cap, i->n_mods + 1);
        i->mods[i->n_mods] = (RelupModule){0};
        if (!fast_module(f, i->op, &i->mods[i->n_mods++]) || !fast_next(f, ']', &more))
            return false;
    }
    return true;
}

static bool fast_instr(Fast *f, RelupInstr *i)
{
    if (!fast_eat(f, '{') || !fast_key(f) || strcmp(f->str, "op") != 0 || !fast_string(f))
        return false;
    f->nodes++;
    int op = -1;
    for (int k = 0; k < RELUP_N_OPS && op < 0; k++)
        if (strcmp(f->str, relup_op_name(k)) == 0)
            op = k;
    if (op < 0)
        return false;
    i->op = op;
    bool more, mode = false, pre = false, post = false, mods = false;
    if (!fast_next(f, '}', &more))
        return false;
    while (more) {
        if (!fast_key(f))
            return false;
        const char *k = f->str;
        bool ok;
        if (has_app_field(op) && strcmp(k, "app") == 0)
            ok = fast_dup(f, name_is_valid, &i->app);
        else if (op == RELUP_LOAD_OBJECT_CODE && strcmp(k, "vsn") == 0)
            ok = fast_dup(f, version_is_valid, &i->vsn);
        else if (op == RELUP_CODE_CHANGE && strcmp(k, "mode") == 0) {
            ok = !mode && fast_string(f) && (strcmp(f->str, "up") == 0 || strcmp(f->str, "down") == 0);
            mode = true;
            i->down = ok && strcmp(f->str, "down") == 0;
        } else if (has_module_field(op) && strcmp(k, "module") == 0)
            ok = fast_dup(f, name_is_valid, &i->module);
        else if (has_module_field(op) && strcmp(k, "pre_purge") == 0)
            ok = fast_purge(f, &pre, &i->pre_purge);
        else if (has_module_field(op) && strcmp(k, "post_purge") == 0)
            ok = fast_purge(f, &post, &i->post_purge);
        else if (has_modules_field(op) && strcmp(k, "modules") == 0) {
            ok = !mods && fast_modules(f, i);
            mods = true;
        } else
            ok = false;
        if (!ok || !fast_next(f, '}', &more))
            return false;
    }
    /* Every field present. */
    return (!has_app_field(op) || i->app) && (op != RELUP_LOAD_OBJECT_CODE || i->vsn) &&
           (op != RELUP_CODE_CHANGE || mode) && (!has_module_field(op) || (i->module && pre && post)) &&
           (!has_modules_field(op) || mods);
}

static bool fast_script(Fast *f, RelupScript *out)
{
    if (out->v || !fast_eat(f, '['))
        return false;
    f->nodes++;
    GROW(out->v, out->cap, 1); /* present, even when empty */
    bool more = !fast_eat(f, ']');
    while (more) {
        GROW(out->v, out->cap, out->n + 1);
        out->v[out->n] = (RelupInstr){0};
        bool ok = fast_instr(f, &out->v[out->n++]);
        if (!ok || !fast_next(f, ']', &more))
            return false;
    }
    return true;
}

/* The relup in buf when the fast path takes it, else NULL (no message). */
static Relup *fast_parse(const char *buf, size_t len)
{
    Fast f = {.p = buf, .end = buf + len};
    if (!fast_eat(&f, '{'))
        return NULL;
    f.nodes++;
    Relup *r = xcalloc(1, sizeof(*r));
    bool ok = true, more = true;
    while (ok && more) {
        ok = fast_key(&f);
        if (!ok)
            break;
        if (strcmp(f.str, "from") == 0)
            ok = fast_dup(&f, version_is_valid, &r->from);
        else if (strcmp(f.str, "to") == 0)
            ok = fast_dup(&f, version_is_valid, &r->to);
        else if (strcmp(f.str, "up") == 0)
            ok = fast_script(&f, &r->up);
        else if (strcmp(f.str, "down") == 0)
            ok = fast_script(&f, &r->down);
        else
            ok = false;
        ok = ok && fast_next(&f, '}', &more);
    }
    fast_ws(&f);
    ok = ok && f.p == f.end && r->from && r->to && r->up.v && r->down.v && f.nodes <= RELUP_MAX_NODES;
    free(f.str);
    return ok ? r : relup_free(r);
}

int relup_parse(const char *file, const char *buf, size_t len, Relup **ret, Diag *diag)
{
    static const char *const keys[] = {"from", "to", "up", "down", NULL};
    size_t before = diag_n_errors(diag);
    YamlCtx c = {0};
    Relup *r = fast_parse(buf, len);
    yaml_node_t *root = NULL;
    if (!r) {
        r = xcalloc(1, sizeof(*r));
        root = yaml_ctx_load_limit(&c, file, buf, len, RELUP_MAX_NODES, diag);
    }
    if (root && root->type != YAML_MAPPING_NODE)
        yaml_error(&c, root, "a relup must be a mapping {from, to, up, down}, not %s", yaml_kind(root));
    else if (root) {
        yaml_map_check_keys(&c, root, keys, "relup");
        if (yaml_get_string(&c, root, "from", true, &r->from) && !version_is_valid(r->from))
            yaml_error(&c, yaml_map_get(&c, root, "from"), "bad version string '%s'", r->from);
        if (yaml_get_string(&c, root, "to", true, &r->to) && !version_is_valid(r->to))
            yaml_error(&c, yaml_map_get(&c, root, "to"), "bad version string '%s'", r->to);
        parse_script(&c, root, "up", &r->up);
        parse_script(&c, root, "down", &r->down);
    }
    yaml_ctx_done(&c);
    if (diag_n_errors(diag) == before) {
        char *up = xasprintf("%s: up", file), *down = xasprintf("%s: down", file);
        relup_check_script(&r->up, up, diag);
        relup_check_script(&r->down, down, diag);
        free(up);
        free(down);
    }
    if (diag_n_errors(diag) > before) {
        relup_free(r);
        return -EINVAL;
    }
    *ret = r;
    return 0;
}

/* ---- for people --------------------------------------------------------- */

/* A line built in one buffer: a relup of 66,000 instructions is printed
 * line by line, and a string per module joined by asprintf was most of
 * printing it. */
typedef struct Line {
    char *s;
    size_t n, cap;
} Line;

static void line_add(Line *l, const char *fmt, ...) UTIL_PRINTF(2, 3);
static void line_add(Line *l, const char *fmt, ...)
{
    if (!l->s)
        GROW(l->s, l->cap, 128); /* most lines: formatted once */
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(l->s + l->n, l->cap - l->n, fmt, ap);
    va_end(ap);
    if (k < 0)
        abort();
    if (l->n + (size_t)k >= l->cap) {
        GROW(l->s, l->cap, l->n + (size_t)k + 1);
        va_start(ap, fmt);
        (void)vsnprintf(l->s + l->n, l->cap - l->n, fmt, ap); /* k bytes, as before */
        va_end(ap);
    }
    l->n += (size_t)k;
}

/* Appends s as it is: a line is mostly module names, and formatting each
 * through vsnprintf was most of the cost of printing a large relup. */
static void line_str(Line *l, const char *s)
{
    size_t n = strlen(s);
    if (l->n + n + 1 > l->cap)
        GROW(l->s, l->cap, l->n + n + 128);
    memcpy(l->s + l->n, s, n + 1);
    l->n += n;
}

static void line_mods(Line *l, const RelupInstr *i)
{
    for (size_t k = 0; k < i->n_mods; k++) {
        const RelupModule *m = &i->mods[k];
        if (k)
            line_str(l, ", ");
        line_str(l, m->module);
        if (i->op == RELUP_CODE_CHANGE) {
            char *extra = json_dumps(m->extra ? m->extra : json_null(), JSON_COMPACT | JSON_ENCODE_ANY);
            line_add(l, " (extra %s)", extra ? extra : "?");
            free(extra);
        } else if (m->timeout_ms == TIMEOUT_INFINITY) {
            line_add(l, " (timeout infinity)");
        } else if (m->timeout_ms > 0) {
            line_add(l, " (timeout %ld ms)", m->timeout_ms);
        }
    }
}

char *relup_instr_format(const RelupInstr *i)
{
    Line l = {0};
    switch (i->op) {
    case RELUP_LOAD_OBJECT_CODE:
        line_str(&l, "load_object_code ");
        line_str(&l, i->app);
        line_str(&l, " ");
        line_str(&l, i->vsn);
        line_str(&l, ": ");
        line_mods(&l, i);
        break;
    case RELUP_LOAD:
    case RELUP_REMOVE:
        line_str(&l, relup_op_name(i->op));
        line_str(&l, " ");
        line_str(&l, i->module);
        line_str(&l, " (pre ");
        line_str(&l, purge_method_name(i->pre_purge));
        line_str(&l, ", post ");
        line_str(&l, purge_method_name(i->post_purge));
        line_str(&l, ")");
        break;
    case RELUP_CODE_CHANGE:
        line_add(&l, "code_change %s: ", i->down ? "down" : "up");
        line_mods(&l, i);
        break;
    case RELUP_START_APPLICATION:
    case RELUP_STOP_APPLICATION:
    case RELUP_UNLOAD_APPLICATION:
        line_add(&l, "%s %s", relup_op_name(i->op), i->app);
        break;
    case RELUP_POINT_OF_NO_RETURN:
        line_add(&l, "point_of_no_return");
        break;
    case RELUP_SUSPEND:
    case RELUP_RESUME:
    case RELUP_PURGE:
    case RELUP_STOP:
    case RELUP_START:
    case RELUP_N_OPS:
        line_str(&l, relup_op_name(i->op));
        if (i->n_mods)
            line_str(&l, " ");
        line_mods(&l, i);
        break;
    }
    return l.s;
}
