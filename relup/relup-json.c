/* SPEC.md's JSON shape of a relup: writing it, reading it back (a stored
 * releases/<vsn>/relup.yaml is that JSON, which is also YAML), and a line
 * per instruction for people. */
#include <errno.h>
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

int relup_parse(const char *file, const char *buf, size_t len, Relup **ret, Diag *diag)
{
    static const char *const keys[] = {"from", "to", "up", "down", NULL};
    size_t before = diag_n_errors(diag);
    YamlCtx c;
    Relup *r = xcalloc(1, sizeof(*r));
    yaml_node_t *root = yaml_ctx_load_limit(&c, file, buf, len, RELUP_MAX_NODES, diag);
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

char *relup_instr_format(const RelupInstr *i)
{
    char *mods = xstrdup("");
    for (size_t k = 0; k < i->n_mods; k++) {
        const RelupModule *m = &i->mods[k];
        char *item;
        if (i->op == RELUP_CODE_CHANGE) {
            char *extra = json_dumps(m->extra ? m->extra : json_null(), JSON_COMPACT | JSON_ENCODE_ANY);
            item = xasprintf("%s (extra %s)", m->module, extra ? extra : "?");
            free(extra);
        } else if (m->timeout_ms == TIMEOUT_INFINITY) {
            item = xasprintf("%s (timeout infinity)", m->module);
        } else if (m->timeout_ms > 0) {
            item = xasprintf("%s (timeout %ld ms)", m->module, m->timeout_ms);
        } else {
            item = xstrdup(m->module);
        }
        char *n = xasprintf("%s%s%s", mods, k ? ", " : "", item);
        free(item);
        free(mods);
        mods = n;
    }
    char *line = NULL;
    switch (i->op) {
    case RELUP_LOAD_OBJECT_CODE:
        line = xasprintf("load_object_code %s %s: %s", i->app, i->vsn, mods);
        break;
    case RELUP_LOAD:
    case RELUP_REMOVE:
        line = xasprintf("%s %s (pre %s, post %s)", relup_op_name(i->op), i->module, purge_method_name(i->pre_purge),
                         purge_method_name(i->post_purge));
        break;
    case RELUP_CODE_CHANGE:
        line = xasprintf("code_change %s: %s", i->down ? "down" : "up", mods);
        break;
    case RELUP_START_APPLICATION:
    case RELUP_STOP_APPLICATION:
    case RELUP_UNLOAD_APPLICATION:
        line = xasprintf("%s %s", relup_op_name(i->op), i->app);
        break;
    case RELUP_POINT_OF_NO_RETURN:
        line = xstrdup("point_of_no_return");
        break;
    case RELUP_SUSPEND:
    case RELUP_RESUME:
    case RELUP_PURGE:
    case RELUP_STOP:
    case RELUP_START:
    case RELUP_N_OPS:
        line = i->n_mods ? xasprintf("%s %s", relup_op_name(i->op), mods) : xstrdup(relup_op_name(i->op));
        break;
    }
    free(mods);
    return line;
}
