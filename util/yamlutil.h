#pragma once
/* Walking a libyaml document, for appdefs, the stored relup reader and
 * reld's config, with positions in every message. Not installed. */
#include <jansson.h>
#include <stdbool.h>
#include <yaml.h>

#include "util.h"

typedef struct YamlCtx {
    const char *file;
    yaml_document_t doc;
    bool have_doc;
    Diag *diag;
} YamlCtx;

/* Loads the first document of buf. Reports a syntax error (with position)
 * and returns NULL on failure or on an empty input; the root node else. */
yaml_node_t *yaml_ctx_load(YamlCtx *c, const char *file, const char *buf, size_t len, Diag *diag);
void yaml_ctx_done(YamlCtx *c);

SrcPos yaml_pos(const YamlCtx *c, const yaml_node_t *n);
void yaml_error(YamlCtx *c, const yaml_node_t *n, const char *fmt, ...) UTIL_PRINTF(3, 4);

yaml_node_t *yaml_child(YamlCtx *c, int idx);
const char *yaml_kind(const yaml_node_t *n);   /* "a string", "a list", "a mapping" */
const char *yaml_scalar(const yaml_node_t *n); /* NULL unless a scalar */

/* Looks key up in a mapping; NULL when absent or when m is no mapping. */
yaml_node_t *yaml_map_get(YamlCtx *c, yaml_node_t *m, const char *key);
/* Reports keys of m not in allowed (NULL-terminated) and duplicate keys.
 * what names the mapping in messages ("application", "process"). */
void yaml_map_check_keys(YamlCtx *c, yaml_node_t *m, const char *const *allowed, const char *what);

/* Typed field readers. Each reports its own errors and returns false on
 * a problem (including a missing required field). *out is set only on
 * success and is owned by the caller. */
bool yaml_get_string(YamlCtx *c, yaml_node_t *m, const char *key, bool required, char **out);
bool yaml_get_long(YamlCtx *c, yaml_node_t *m, const char *key, long min, long max, long *out);
/* A list of strings; a single string is taken as a list of one. pos may be
 * NULL; when set it receives a new array of item positions. */
bool yaml_get_strlist(YamlCtx *c, yaml_node_t *n, const char *what, StrVec *out, SrcPos **pos);

/* Converts any YAML value to JSON with YAML 1.2 core-schema typing of
 * plain scalars (null, booleans, integers, floats, else strings). */
json_t *yaml_to_json(YamlCtx *c, yaml_node_t *n);
