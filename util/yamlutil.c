#include "yamlutil.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <string.h>

/* Parses the first document of buf into c; false after reporting a syntax
 * error. Sets c->empty when the input holds no node content. */
static bool ctx_parse(YamlCtx *c, const char *file, const char *buf, size_t len, Diag *diag)
{
    *c = (YamlCtx){.file = file, .diag = diag};
    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser))
        abort();
    yaml_parser_set_input_string(&parser, (const unsigned char *)buf, len);
    if (!yaml_parser_load(&parser, &c->doc)) {
        yaml_mark_t m = parser.problem_mark;
        diag_error_at(diag, file, (int)m.line + 1, (int)m.column + 1, "%s%s%s",
                      parser.problem ? parser.problem : "malformed YAML", parser.context ? " " : "",
                      parser.context ? parser.context : "");
        yaml_parser_delete(&parser);
        return false;
    }
    yaml_parser_delete(&parser);
    c->have_doc = true;
    /* No document, or "---" alone: libyaml gives the latter an empty plain
     * scalar that starts where it ends. */
    const yaml_node_t *root = yaml_document_get_root_node(&c->doc);
    c->empty = !root || (root->type == YAML_SCALAR_NODE && root->start_mark.index == root->end_mark.index);
    return true;
}

yaml_node_t *yaml_ctx_load(YamlCtx *c, const char *file, const char *buf, size_t len, Diag *diag)
{
    if (!ctx_parse(c, file, buf, len, diag))
        return NULL;
    yaml_node_t *root = yaml_document_get_root_node(&c->doc);
    if (!root)
        diag_error_at(diag, file, 1, 1, "empty document");
    return root;
}

yaml_node_t *yaml_ctx_load_optional(YamlCtx *c, const char *file, const char *buf, size_t len, Diag *diag)
{
    if (!ctx_parse(c, file, buf, len, diag) || c->empty)
        return NULL;
    return yaml_document_get_root_node(&c->doc);
}

void yaml_ctx_done(YamlCtx *c)
{
    if (c->have_doc)
        yaml_document_delete(&c->doc);
    c->have_doc = false;
}

SrcPos yaml_pos(const YamlCtx *c, const yaml_node_t *n)
{
    if (!n)
        return (SrcPos){.file = c->file};
    return (SrcPos){.file = c->file, .line = (int)n->start_mark.line + 1, .col = (int)n->start_mark.column + 1};
}

void yaml_error(YamlCtx *c, const yaml_node_t *n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = xvasprintf(fmt, ap);
    va_end(ap);
    SrcPos p = yaml_pos(c, n);
    diag_error_at(c->diag, c->file, p.line ? p.line : 1, p.col ? p.col : 1, "%s", msg);
    free(msg);
}

yaml_node_t *yaml_child(YamlCtx *c, int idx)
{
    return yaml_document_get_node(&c->doc, idx);
}

const char *yaml_kind(const yaml_node_t *n)
{
    switch (n->type) {
    case YAML_SCALAR_NODE:
        return "a scalar";
    case YAML_SEQUENCE_NODE:
        return "a list";
    case YAML_MAPPING_NODE:
        return "a mapping";
    case YAML_NO_NODE:
        break;
    }
    return "empty";
}

const char *yaml_scalar(const yaml_node_t *n)
{
    return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

yaml_node_t *yaml_map_get(YamlCtx *c, yaml_node_t *m, const char *key)
{
    if (!m || m->type != YAML_MAPPING_NODE)
        return NULL;
    for (yaml_node_pair_t *p = m->data.mapping.pairs.start; p < m->data.mapping.pairs.top; p++) {
        const char *k = yaml_scalar(yaml_child(c, p->key));
        if (k && strcmp(k, key) == 0)
            return yaml_child(c, p->value);
    }
    return NULL;
}

void yaml_map_check_keys(YamlCtx *c, yaml_node_t *m, const char *const *allowed, const char *what)
{
    if (!m || m->type != YAML_MAPPING_NODE)
        return;
    for (yaml_node_pair_t *p = m->data.mapping.pairs.start; p < m->data.mapping.pairs.top; p++) {
        yaml_node_t *kn = yaml_child(c, p->key);
        const char *k = yaml_scalar(kn);
        if (!k) {
            yaml_error(c, kn, "%s key must be a string, not %s", what, yaml_kind(kn));
            continue;
        }
        bool known = false;
        for (const char *const *a = allowed; *a; a++)
            if (strcmp(*a, k) == 0)
                known = true;
        if (!known)
            yaml_error(c, kn, "unknown key '%s' in %s", k, what);
        for (yaml_node_pair_t *q = m->data.mapping.pairs.start; q < p; q++) {
            const char *k2 = yaml_scalar(yaml_child(c, q->key));
            if (k2 && strcmp(k, k2) == 0) {
                yaml_error(c, kn, "duplicate key '%s' in %s", k, what);
                break;
            }
        }
    }
}

bool yaml_get_string(YamlCtx *c, yaml_node_t *m, const char *key, bool required, char **out)
{
    yaml_node_t *n = yaml_map_get(c, m, key);
    if (!n) {
        if (required)
            yaml_error(c, m, "missing field '%s'", key);
        return !required;
    }
    const char *s = yaml_scalar(n);
    if (!s) {
        yaml_error(c, n, "field '%s' must be a string, not %s", key, yaml_kind(n));
        return false;
    }
    *out = xstrdup(s);
    return true;
}

bool yaml_get_long(YamlCtx *c, yaml_node_t *m, const char *key, long min, long max, long *out)
{
    yaml_node_t *n = yaml_map_get(c, m, key);
    if (!n)
        return true;
    const char *s = yaml_scalar(n);
    /* strtol alone would also skip leading blanks (" 5"). */
    bool digits = s && (s[0] == '-' || s[0] == '+' || (s[0] >= '0' && s[0] <= '9'));
    char *end = NULL;
    errno = 0;
    long v = digits ? strtol(s, &end, 10) : 0;
    if (!digits || *end || errno || v < min || v > max) {
        yaml_error(c, n, "field '%s' must be an integer from %ld to %ld", key, min, max);
        return false;
    }
    *out = v;
    return true;
}

bool yaml_get_strlist(YamlCtx *c, yaml_node_t *n, const char *what, StrVec *out, SrcPos **pos)
{
    StrVec v = {0};
    SrcPos *p = NULL;
    size_t pcap = 0;
    bool ok = true;
    if (n->type == YAML_SCALAR_NODE) {
        strvec_push(&v, yaml_scalar(n));
        GROW(p, pcap, 1);
        p[0] = yaml_pos(c, n);
    } else if (n->type == YAML_SEQUENCE_NODE) {
        for (yaml_node_item_t *i = n->data.sequence.items.start; i < n->data.sequence.items.top; i++) {
            yaml_node_t *item = yaml_child(c, *i);
            const char *s = yaml_scalar(item);
            if (!s) {
                yaml_error(c, item, "%s must list strings, not %s", what, yaml_kind(item));
                ok = false;
                continue;
            }
            GROW(p, pcap, v.n + 1);
            p[v.n] = yaml_pos(c, item);
            strvec_push(&v, s);
        }
    } else {
        yaml_error(c, n, "%s must be a list, not %s", what, yaml_kind(n));
        ok = false;
    }
    if (!ok) {
        strvec_clear(&v);
        free(p);
        return false;
    }
    *out = v;
    if (pos)
        *pos = p;
    else
        free(p);
    return true;
}

static bool one_of(const char *s, const char *const *words)
{
    for (; *words; words++)
        if (strcmp(s, *words) == 0)
            return true;
    return false;
}

/* Only digits, signs, one dot and an exponent: strtod alone would also take
 * "inf", "nan" and hex floats, which YAML's core schema does not. */
static bool looks_decimal(const char *s)
{
    for (; *s; s++)
        if (!strchr("0123456789+-.eE", *s))
            return false;
    return true;
}

static json_t *plain_scalar_to_json(const char *s)
{
    static const char *const nulls[] = {"", "~", "null", "Null", "NULL", NULL};
    static const char *const trues[] = {"true", "True", "TRUE", NULL};
    static const char *const falses[] = {"false", "False", "FALSE", NULL};
    if (one_of(s, nulls))
        return json_null();
    if (one_of(s, trues))
        return json_true();
    if (one_of(s, falses))
        return json_false();
    if (looks_decimal(s)) {
        char *end;
        errno = 0;
        long long i = strtoll(s, &end, 10);
        if (!*end && errno == 0)
            return json_integer(i);
        errno = 0;
        double d = strtod(s, &end);
        if (!*end && errno == 0 && strpbrk(s, "0123456789"))
            return json_real(d);
    }
    return json_string(s);
}

json_t *yaml_to_json(YamlCtx *c, yaml_node_t *n)
{
    switch (n->type) {
    case YAML_SCALAR_NODE: {
        const char *s = (const char *)n->data.scalar.value;
        if (n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE)
            return plain_scalar_to_json(s);
        return json_stringn(s, n->data.scalar.length);
    }
    case YAML_SEQUENCE_NODE: {
        json_t *a = json_array();
        for (yaml_node_item_t *i = n->data.sequence.items.start; i < n->data.sequence.items.top; i++)
            json_array_append_new(a, yaml_to_json(c, yaml_child(c, *i)));
        return a;
    }
    case YAML_MAPPING_NODE: {
        json_t *o = json_object();
        for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
            yaml_node_t *k = yaml_child(c, p->key);
            const char *ks = yaml_scalar(k);
            if (!ks) {
                yaml_error(c, k, "mapping keys inside extra must be strings");
                continue;
            }
            json_object_set_new(o, ks, yaml_to_json(c, yaml_child(c, p->value)));
        }
        return o;
    }
    case YAML_NO_NODE:
        break;
    }
    return json_null();
}
