#include "yamlutil.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <string.h>

/* ---- bounds (yamlutil.h) ------------------------------------------------- */

/* libyaml collects %TAG directives comparing each with every one before it,
 * and resolves every tag against all of them: quadratic before the first
 * event. Directives stand only in the prologue, the lines before the first
 * "---" or content, so counting lines that start with '%' there is exact. */
static bool check_directives(const char *file, const char *buf, size_t len, Diag *diag)
{
    size_t p = len >= 3 && memcmp(buf, "\xef\xbb\xbf", 3) == 0 ? 3 : 0;
    int n = 0;
    for (int line = 1; p < len; line++) {
        const char *eol = memchr(buf + p, '\n', len - p);
        size_t end = eol ? (size_t)(eol - buf) : len, q = p;
        while (q < end && (buf[q] == ' ' || buf[q] == '\t' || buf[q] == '\r'))
            q++;
        if (buf[p] == '%' && ++n > YAML_MAX_DIRECTIVES) {
            diag_error_at(diag, file, line, 1,
                          "more than %d directives (lines starting with '%%'; the limit per document)",
                          YAML_MAX_DIRECTIVES);
            return false;
        }
        if (buf[p] != '%' && q < end && buf[q] != '#')
            break; /* "---" or content: the prologue is over */
        p = end + 1;
    }
    return true;
}

typedef struct Anchor {
    char *name;
    int node;            /* the anchored node's index in the document */
    size_t nodes, bytes; /* what an alias to it stands for */
    int height;          /* collections nested in it, itself included */
    bool open;           /* a collection not ended yet: an alias to it is a cycle */
} Anchor;

typedef struct Frame {
    size_t nodes, bytes;
    int height;
    int anchor; /* index into the anchors, or -1 */
} Frame;

typedef struct Bounds {
    const char *file;
    Diag *diag;
    size_t max_nodes, nodes, alias_nodes, alias_bytes;
    Frame stack[YAML_MAX_DEPTH + 1]; /* stack[0] holds the root */
    int depth;                       /* open collections */
    Anchor anchors[YAML_MAX_ANCHORS];
    int n_anchors;
    int alias_node; /* the node the last alias event stands for */
} Bounds;

static void bounds_error(Bounds *b, const yaml_event_t *e, const char *fmt, ...) UTIL_PRINTF(3, 4);
static void bounds_error(Bounds *b, const yaml_event_t *e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = xvasprintf(fmt, ap);
    va_end(ap);
    diag_error_at(b->diag, b->file, (int)e->start_mark.line + 1, (int)e->start_mark.column + 1, "%s", msg);
    free(msg);
}

/* A node of nodes/bytes/height (its collections) joins the open collection. */
static void bounds_add(Bounds *b, size_t nodes, size_t bytes, int height)
{
    Frame *f = &b->stack[b->depth];
    f->nodes += nodes;
    f->bytes += bytes;
    if (height + 1 > f->height)
        f->height = height + 1;
}

/* Registers the anchor of a node (the document's node number b->nodes);
 * 0 when there is none or it was taken, -1 after reporting a duplicate (in
 * libyaml's words, which its loader used) or too many. */
static int bounds_anchor(Bounds *b, const yaml_event_t *e, const yaml_char_t *name, int *index)
{
    *index = -1;
    if (!name)
        return 0;
    for (int i = 0; i < b->n_anchors; i++)
        if (strcmp(b->anchors[i].name, (const char *)name) == 0) {
            bounds_error(b, e, "second occurrence found duplicate anchor; first occurrence");
            return -1;
        }
    if (b->n_anchors == YAML_MAX_ANCHORS) {
        bounds_error(b, e, "more than %d anchors (the limit per document)", YAML_MAX_ANCHORS);
        return -1;
    }
    *index = b->n_anchors;
    b->anchors[b->n_anchors++] = (Anchor){.name = xstrdup((const char *)name), .node = (int)b->nodes, .open = true};
    return 0;
}

/* One event; 1 to go on, 0 when the document ended, -1 after reporting a
 * crossed bound, a duplicate anchor or an undefined alias. */
static int bounds_event(Bounds *b, const yaml_event_t *e)
{
    int a;
    switch (e->type) {
    case YAML_SCALAR_EVENT:
    case YAML_SEQUENCE_START_EVENT:
    case YAML_MAPPING_START_EVENT: {
        if (++b->nodes > b->max_nodes) {
            bounds_error(b, e, "more than %zu nodes (the limit for this document)", b->max_nodes);
            return -1;
        }
        const yaml_char_t *anchor = e->type == YAML_SCALAR_EVENT           ? e->data.scalar.anchor
                                    : e->type == YAML_SEQUENCE_START_EVENT ? e->data.sequence_start.anchor
                                                                           : e->data.mapping_start.anchor;
        if (bounds_anchor(b, e, anchor, &a) < 0)
            return -1;
        if (e->type == YAML_SCALAR_EVENT) {
            bounds_add(b, 1, e->data.scalar.length, 0);
            if (a >= 0) {
                Anchor *an = &b->anchors[a];
                *an = (Anchor){an->name, an->node, 1, e->data.scalar.length, 0, false};
            }
            return 1;
        }
        if (b->depth == YAML_MAX_DEPTH) {
            bounds_error(b, e, "collections nested more than %d deep (the limit per document)", YAML_MAX_DEPTH);
            return -1;
        }
        b->stack[++b->depth] = (Frame){.nodes = 1, .height = 1, .anchor = a};
        return 1;
    }
    case YAML_SEQUENCE_END_EVENT:
    case YAML_MAPPING_END_EVENT: {
        Frame f = b->stack[b->depth--];
        if (f.anchor >= 0) {
            Anchor *an = &b->anchors[f.anchor];
            *an = (Anchor){an->name, an->node, f.nodes, f.bytes, f.height, false};
        }
        bounds_add(b, f.nodes, f.bytes, f.height);
        return 1;
    }
    case YAML_ALIAS_EVENT: {
        const char *name = (const char *)e->data.alias.anchor;
        const Anchor *an = NULL;
        for (int i = 0; i < b->n_anchors && !an; i++)
            if (strcmp(b->anchors[i].name, name) == 0)
                an = &b->anchors[i];
        if (!an) {
            bounds_error(b, e, "found undefined alias"); /* libyaml's words */
            return -1;
        }
        if (an->open) {
            bounds_error(b, e, "alias '*%s' refers to a node that contains it", name);
            return -1;
        }
        b->alias_nodes += an->nodes;
        b->alias_bytes += an->bytes;
        if (b->alias_nodes > YAML_MAX_ALIAS_NODES) {
            bounds_error(b, e, "aliases stand for more than %d nodes in all (the limit per document)",
                         YAML_MAX_ALIAS_NODES);
            return -1;
        }
        if (b->alias_bytes > YAML_MAX_ALIAS_BYTES) {
            bounds_error(b, e, "aliases stand for more than %d bytes of text in all (the limit per document)",
                         YAML_MAX_ALIAS_BYTES);
            return -1;
        }
        if (b->depth + an->height > YAML_MAX_DEPTH) {
            bounds_error(b, e, "alias '*%s' nests collections more than %d deep (the limit per document)", name,
                         YAML_MAX_DEPTH);
            return -1;
        }
        bounds_add(b, an->nodes, an->bytes, an->height);
        b->alias_node = an->node;
        return 1;
    }
    case YAML_DOCUMENT_END_EVENT:
    case YAML_STREAM_END_EVENT:
        return 0;
    case YAML_NO_EVENT:
    case YAML_STREAM_START_EVENT:
    case YAML_DOCUMENT_START_EVENT:
        break;
    }
    return 1;
}

/* ---- loading --------------------------------------------------------------- */

/* Composing the document from the events in the same pass that checks the
 * bounds: libyaml's yaml_parser_load would parse the input a second time
 * (parsing is most of the cost of loading). The document is the one
 * yaml_parser_load builds, node for node and position for position, except
 * that tags are not kept (node->tag is NULL: nothing here reads them, and
 * libyaml copies the default tag into every node, an allocation each), nor
 * the directives. The event's scalar text is taken over, not copied. */

typedef struct Open {
    int node;        /* the open collection's index */
    int pending_key; /* a mapping: the key waiting for its value, or 0 */
} Open;

/* A block of the arena that holds the document's item and pair arrays: a
 * file of appups has a few hundred lists of two or three items, and a
 * malloc for each, a realloc for each growth and a free for each at the
 * end were a tenth of loading it. A list that grows is copied to a new
 * place twice its size, so the arena holds at most twice what the lists
 * need. */
struct YamlArenaBlock {
    YamlArenaBlock *next;
    size_t used, cap;
    max_align_t data[];
};

static void *arena_alloc(YamlArenaBlock **a, size_t n)
{
    n = (n + sizeof(max_align_t) - 1) / sizeof(max_align_t) * sizeof(max_align_t);
    if (!*a || (*a)->cap - (*a)->used < n) {
        size_t cap = *a ? (*a)->cap * 2 : 4096;
        while (cap < n)
            cap *= 2;
        YamlArenaBlock *b = xmalloc(sizeof(*b) + cap);
        *b = (YamlArenaBlock){.next = *a, .cap = cap};
        *a = b;
    }
    void *p = (char *)(*a)->data + (*a)->used;
    (*a)->used += n;
    return p;
}

/* An array of n items of size elem grown to twice (or 4) in the arena. */
static void *arena_grow(YamlArenaBlock **a, void *v, size_t n, size_t elem, size_t *cap)
{
    *cap = n ? n * 2 : 4;
    void *w = arena_alloc(a, *cap * elem);
    if (n)
        memcpy(w, v, n * elem);
    return w;
}

/* yaml_document_delete for a document composed here: the scalars' text
 * (taken from libyaml's events) and the nodes are malloc'd, the lists are
 * the arena's. */
static void doc_free(yaml_document_t *d, YamlArenaBlock **a)
{
    for (yaml_node_t *n = d->nodes.start; n && n < d->nodes.top; n++)
        if (n->type == YAML_SCALAR_NODE)
            free(n->data.scalar.value);
    free(d->nodes.start);
    *d = (yaml_document_t){0};
    while (*a) {
        YamlArenaBlock *next = (*a)->next;
        free(*a);
        *a = next;
    }
}

static yaml_node_t *doc_node(yaml_document_t *d, int index)
{
    return &d->nodes.start[index - 1];
}

/* A new node; its index (1-based, as libyaml's). The first allocation
 * guesses from the input's size (about 9 bytes a node in appdefs' files),
 * so that a file's nodes are rarely copied. */
static int doc_push(yaml_document_t *d, size_t guess, yaml_node_t node)
{
    if (d->nodes.top == d->nodes.end) {
        size_t n = (size_t)(d->nodes.top - d->nodes.start), cap = n ? n * 2 : guess;
        d->nodes.start = xrealloc(d->nodes.start, cap * sizeof(*d->nodes.start));
        d->nodes.top = d->nodes.start + n;
        d->nodes.end = d->nodes.start + cap;
    }
    *d->nodes.top++ = node;
    return (int)(d->nodes.top - d->nodes.start);
}

/* Puts node in the innermost open collection: an item of a list, a key or
 * a value of a mapping. */
static void doc_attach(yaml_document_t *d, YamlArenaBlock **a, Open *o, int node)
{
    yaml_node_t *p = doc_node(d, o->node);
    if (p->type == YAML_SEQUENCE_NODE) {
        if (p->data.sequence.items.top == p->data.sequence.items.end) {
            size_t n = (size_t)(p->data.sequence.items.top - p->data.sequence.items.start), cap;
            p->data.sequence.items.start =
                arena_grow(a, p->data.sequence.items.start, n, sizeof(yaml_node_item_t), &cap);
            p->data.sequence.items.top = p->data.sequence.items.start + n;
            p->data.sequence.items.end = p->data.sequence.items.start + cap;
        }
        *p->data.sequence.items.top++ = node;
    } else if (!o->pending_key) {
        o->pending_key = node;
    } else {
        if (p->data.mapping.pairs.top == p->data.mapping.pairs.end) {
            size_t n = (size_t)(p->data.mapping.pairs.top - p->data.mapping.pairs.start), cap;
            p->data.mapping.pairs.start = arena_grow(a, p->data.mapping.pairs.start, n, sizeof(yaml_node_pair_t), &cap);
            p->data.mapping.pairs.top = p->data.mapping.pairs.start + n;
            p->data.mapping.pairs.end = p->data.mapping.pairs.start + cap;
        }
        *p->data.mapping.pairs.top++ = (yaml_node_pair_t){.key = o->pending_key, .value = node};
        o->pending_key = 0;
    }
}

/* One event into the document; false at its end. The bounds have been
 * checked, so collections are nested at most YAML_MAX_DEPTH deep. */
static bool doc_event(yaml_document_t *d, YamlArenaBlock **a, Bounds *b, size_t guess, Open *open, int *depth,
                      yaml_event_t *e)
{
    int node = 0;
    switch (e->type) {
    case YAML_SCALAR_EVENT:
        node = doc_push(d, guess,
                        (yaml_node_t){.type = YAML_SCALAR_NODE,
                                      .data.scalar = {.value = TAKE_PTR(e->data.scalar.value),
                                                      .length = e->data.scalar.length,
                                                      .style = e->data.scalar.style},
                                      .start_mark = e->start_mark,
                                      .end_mark = e->end_mark});
        break;
    case YAML_SEQUENCE_START_EVENT:
        node = doc_push(d, guess,
                        (yaml_node_t){.type = YAML_SEQUENCE_NODE,
                                      .data.sequence.style = e->data.sequence_start.style,
                                      .start_mark = e->start_mark,
                                      .end_mark = e->end_mark});
        break;
    case YAML_MAPPING_START_EVENT:
        node = doc_push(d, guess,
                        (yaml_node_t){.type = YAML_MAPPING_NODE,
                                      .data.mapping.style = e->data.mapping_start.style,
                                      .start_mark = e->start_mark,
                                      .end_mark = e->end_mark});
        break;
    case YAML_ALIAS_EVENT:
        node = b->alias_node;
        break;
    case YAML_SEQUENCE_END_EVENT:
    case YAML_MAPPING_END_EVENT:
        if (*depth > 0) /* always: libyaml ends only what it started */
            doc_node(d, open[(*depth)--].node)->end_mark = e->end_mark;
        return true;
    case YAML_DOCUMENT_START_EVENT:
        d->start_implicit = e->data.document_start.implicit;
        d->start_mark = e->start_mark;
        return true;
    case YAML_DOCUMENT_END_EVENT:
        d->end_implicit = e->data.document_end.implicit;
        d->end_mark = e->end_mark;
        return false;
    case YAML_STREAM_END_EVENT:
        return false;
    case YAML_NO_EVENT:
    case YAML_STREAM_START_EVENT:
        return true;
    }
    if (*depth > 0)
        doc_attach(d, a, &open[*depth], node);
    if (e->type == YAML_SEQUENCE_START_EVENT || e->type == YAML_MAPPING_START_EVENT)
        open[++*depth] = (Open){.node = node};
    return true;
}

/* Parses the first document of buf into c; false after reporting a syntax
 * error or a crossed bound. Sets c->empty when the input holds no node
 * content. */
static bool ctx_parse(YamlCtx *c, const char *file, const char *buf, size_t len, size_t max_nodes, Diag *diag)
{
    *c = (YamlCtx){.file = file, .diag = diag};
    if (!check_directives(file, buf, len, diag))
        return false;
    /* Not zeroed whole: the stack and the anchors (12 KB) are written
     * before they are read, and clearing them twice per file showed in the
     * profile of a release of 2,000 files. */
    Bounds *b = xmalloc(sizeof(*b));
    b->file = file;
    b->diag = diag;
    b->max_nodes = max_nodes;
    b->nodes = b->alias_nodes = b->alias_bytes = 0;
    b->stack[0] = (Frame){0};
    b->depth = b->n_anchors = b->alias_node = 0;
    Open open[YAML_MAX_DEPTH + 2] = {{0}};
    int depth = 0;
    size_t guess = len / 8 + 16;
    if (guess > max_nodes + 1)
        guess = max_nodes + 1;
    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser))
        abort();
    yaml_parser_set_input_string(&parser, (const unsigned char *)buf, len);
    yaml_parser_set_encoding(&parser, YAML_UTF8_ENCODING);
    bool ok = true, more = true;
    while (more) {
        yaml_event_t e;
        if (!yaml_parser_parse(&parser, &e)) {
            yaml_mark_t m = parser.problem_mark;
            diag_error_at(diag, file, (int)m.line + 1, (int)m.column + 1, "%s%s%s",
                          parser.problem ? parser.problem : "malformed YAML", parser.context ? " " : "",
                          parser.context ? parser.context : "");
            ok = false;
            break;
        }
        int r = bounds_event(b, &e);
        if (r < 0)
            ok = false;
        else
            more = doc_event(&c->doc, &c->arena, b, guess, open, &depth, &e) && r > 0;
        yaml_event_delete(&e);
        more = more && ok;
    }
    yaml_parser_delete(&parser);
    c->nodes = b->stack[0].nodes;
    for (int i = 0; i < b->n_anchors; i++)
        free(b->anchors[i].name);
    free(b);
    if (!ok) {
        doc_free(&c->doc, &c->arena);
        return false;
    }
    c->have_doc = true;
    /* No document, or "---" alone: libyaml gives the latter an empty plain
     * scalar that starts where it ends. */
    const yaml_node_t *root = yaml_document_get_root_node(&c->doc);
    c->empty = !root || (root->type == YAML_SCALAR_NODE && root->start_mark.index == root->end_mark.index);
    return true;
}

yaml_node_t *yaml_ctx_load_limit(YamlCtx *c, const char *file, const char *buf, size_t len, size_t max_nodes,
                                 Diag *diag)
{
    if (!ctx_parse(c, file, buf, len, max_nodes, diag))
        return NULL;
    yaml_node_t *root = yaml_document_get_root_node(&c->doc);
    if (!root)
        diag_error_at(diag, file, 1, 1, "empty document");
    return root;
}

yaml_node_t *yaml_ctx_load(YamlCtx *c, const char *file, const char *buf, size_t len, Diag *diag)
{
    return yaml_ctx_load_limit(c, file, buf, len, YAML_MAX_NODES, diag);
}

yaml_node_t *yaml_ctx_load_optional(YamlCtx *c, const char *file, const char *buf, size_t len, Diag *diag)
{
    if (!ctx_parse(c, file, buf, len, YAML_MAX_NODES, diag) || c->empty)
        return NULL;
    return yaml_document_get_root_node(&c->doc);
}

void yaml_ctx_done(YamlCtx *c)
{
    if (c->have_doc)
        doc_free(&c->doc, &c->arena);
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

typedef struct KeyRef {
    const char *key;
    size_t index; /* its pair's place in the mapping */
} KeyRef;

static int keyref_cmp(const void *a, const void *b)
{
    const KeyRef *x = a, *y = b;
    int r = strcmp(x->key, y->key);
    return r ? r : (x->index > y->index) - (x->index < y->index);
}

void yaml_map_check_keys(YamlCtx *c, yaml_node_t *m, const char *const *allowed, const char *what)
{
    if (!m || m->type != YAML_MAPPING_NODE)
        return;
    /* Duplicates by sorting (stable on the pair's place), not by comparing
     * every key with every other: a mapping may have a million keys. The
     * small ones (every mapping of an app.yaml: 40,000 in a large release)
     * compare each key with those before it, on the stack. */
    size_t n = (size_t)(m->data.mapping.pairs.top - m->data.mapping.pairs.start), n_refs = 0;
    enum { SMALL = 16 };
    bool small_dup[SMALL] = {0};
    bool *dup = small_dup;
    if (n <= SMALL) {
        for (size_t i = 0; i < n; i++) {
            const char *k = yaml_scalar(yaml_child(c, m->data.mapping.pairs.start[i].key));
            for (size_t j = 0; k && j < i && !dup[i]; j++) {
                const char *kj = yaml_scalar(yaml_child(c, m->data.mapping.pairs.start[j].key));
                dup[i] = kj && strcmp(k, kj) == 0;
            }
        }
    } else {
        KeyRef *refs = xmalloc(n * sizeof(*refs));
        dup = xcalloc(n, sizeof(*dup));
        for (size_t i = 0; i < n; i++) {
            const char *k = yaml_scalar(yaml_child(c, m->data.mapping.pairs.start[i].key));
            if (k)
                refs[n_refs++] = (KeyRef){k, i};
        }
        qsort(refs, n_refs, sizeof(*refs), keyref_cmp);
        for (size_t i = 1; i < n_refs; i++)
            if (strcmp(refs[i - 1].key, refs[i].key) == 0)
                dup[refs[i].index] = true;
        free(refs);
    }
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *kn = yaml_child(c, m->data.mapping.pairs.start[i].key);
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
        if (dup[i])
            yaml_error(c, kn, "duplicate key '%s' in %s", k, what);
    }
    if (dup != small_dup)
        free(dup);
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
        v.cap = pcap = 1;
        v.v = xmalloc(sizeof(*v.v));
        p = xmalloc(sizeof(*p));
        strvec_push(&v, yaml_scalar(n));
        p[0] = yaml_pos(c, n);
    } else if (n->type == YAML_SEQUENCE_NODE) {
        /* Sized to the list: most are short (dep_mods of one module), and
         * growing from 8 left most of the slots unused (megabytes in a
         * release of thousands of appup instructions). */
        size_t items = (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
        if (items) {
            v.cap = pcap = items;
            v.v = xmalloc(items * sizeof(*v.v));
            p = xmalloc(items * sizeof(*p));
        }
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
