#pragma once
/* yamlutil: walking a libyaml document with positions in every message,
 * for appdefs, the stored relup reader and reld's config. Not installed.
 *
 * Every message goes to the Diag given to yaml_ctx_load as
 * "file:line:col: message" (positions 1-based). Nodes belong to the
 * context's document and live until yaml_ctx_done. The document is the one
 * libyaml's yaml_parser_load builds, composed in the same pass over the
 * events that checks the bounds below, without tags (node->tag is NULL)
 * or directives. */
#include <jansson.h>
#include <stdbool.h>
#include <yaml.h>

#include "util.h"

/* Bounds on one document (docs/formats.md "Limits"), checked on the event
 * stream before libyaml builds the document, so that a hostile input costs
 * work and memory in proportion to its own size and no more: libyaml keeps
 * an alias as a reference to its anchor's node, and every walk over the
 * document (checks, yaml_to_json) copies that node once per alias, so a few
 * hundred bytes of nested aliases (a "billion laughs") would otherwise
 * stand for 10^9 nodes, and an alias inside its own anchor for infinitely
 * many. Crossing a bound is one error "file:line:col: what" at the node
 * that crossed it, and nothing is loaded. */
#define YAML_MAX_NODES       1000000 /* nodes in the input (yaml_ctx_load) */
#define YAML_MAX_DEPTH       64      /* collections nested, through aliases too */
#define YAML_MAX_ALIAS_NODES 100000  /* nodes that all aliases together stand for */
#define YAML_MAX_ALIAS_BYTES 1048576 /* scalar bytes that all aliases together stand for */
#define YAML_MAX_ANCHORS     256     /* libyaml looks anchors up linearly */
#define YAML_MAX_DIRECTIVES  16      /* %TAG/%YAML lines; libyaml compares each with every other */

typedef struct YamlArenaBlock YamlArenaBlock;

typedef struct YamlCtx {
    const char *file; /* borrowed, for messages; NULL is "<input>" */
    yaml_document_t doc;
    bool have_doc;
    /* The items and pairs of the document's collections, allocated from
     * blocks freed together (not one malloc per list and per growth). */
    YamlArenaBlock *arena;
    bool empty; /* the input holds no node content (see yaml_ctx_load_optional) */
    Diag *diag;
    /* Nodes a walk of the whole document visits: those of the input, and
     * for each alias the nodes it stands for. At most max_nodes +
     * YAML_MAX_ALIAS_NODES. */
    size_t nodes;
} YamlCtx;

/* Loads the first document of buf; later documents are not read. Reports a
 * syntax error or a crossed bound (with position) and returns NULL on
 * failure or when the input holds no document at all; the root node else.
 * The input must be UTF-8. Call yaml_ctx_done afterwards whatever it
 * returned. */
yaml_node_t *yaml_ctx_load(YamlCtx *c, const char *file, const char *buf, size_t len, Diag *diag);
/* Like yaml_ctx_load with max_nodes instead of YAML_MAX_NODES, for the one
 * kind of document that is large by nature (a stored relup). */
yaml_node_t *yaml_ctx_load_limit(YamlCtx *c, const char *file, const char *buf, size_t len, size_t max_nodes,
                                 Diag *diag);

/* Like yaml_ctx_load, for inputs where nothing at all is allowed (a config
 * file whose every setting has a default). An input without node content
 * (empty, only blanks, comments or a byte-order mark, or a "---" with
 * nothing after it) is no error: returns NULL, sets c->empty and adds
 * nothing to diag. A NULL return with c->empty false is a syntax error,
 * reported in diag. An explicit "~" or "null" is content: a scalar root. */
yaml_node_t *yaml_ctx_load_optional(YamlCtx *c, const char *file, const char *buf, size_t len, Diag *diag);
void yaml_ctx_done(YamlCtx *c);

SrcPos yaml_pos(const YamlCtx *c, const yaml_node_t *n);
void yaml_error(YamlCtx *c, const yaml_node_t *n, const char *fmt, ...) UTIL_PRINTF(3, 4);

yaml_node_t *yaml_child(YamlCtx *c, int idx);
const char *yaml_kind(const yaml_node_t *n);   /* "a scalar", "a list", "a mapping" */
const char *yaml_scalar(const yaml_node_t *n); /* NULL unless a scalar */

/* Looks key up in a mapping; NULL when absent or when m is no mapping. */
yaml_node_t *yaml_map_get(YamlCtx *c, yaml_node_t *m, const char *key);
/* Reports keys of m not in allowed (NULL-terminated) and duplicate keys.
 * what names the mapping in messages ("application", "process"). Takes
 * O(k log k) comparisons for k keys. */
void yaml_map_check_keys(YamlCtx *c, yaml_node_t *m, const char *const *allowed, const char *what);

/* Typed field readers. Each reports its own errors and returns false on
 * a problem (including a missing required field). *out is set only on
 * success and is owned by the caller. */
bool yaml_get_string(YamlCtx *c, yaml_node_t *m, const char *key, bool required, char **out);
/* A decimal integer, optionally signed, from min to max inclusive; an
 * absent field is no error and leaves *out alone. */
bool yaml_get_long(YamlCtx *c, yaml_node_t *m, const char *key, long min, long max, long *out);
/* A list of strings; a single string is taken as a list of one. pos may be
 * NULL; when set it receives a new array of item positions. */
bool yaml_get_strlist(YamlCtx *c, yaml_node_t *n, const char *what, StrVec *out, SrcPos **pos);

/* Converts any YAML value to JSON with YAML 1.2 core-schema typing of
 * plain scalars (null, booleans, integers, floats, else strings). */
json_t *yaml_to_json(YamlCtx *c, yaml_node_t *n);
