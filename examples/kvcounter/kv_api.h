#pragma once
/* The function tables of the kvcounter example's modules. A host calls
 * them through rel_module_api(), so after a load it reaches the new code. */
#include <stddef.h>
#include <stdint.h>

typedef struct KvServerApi {
    /* Handles one request line (no newline) and writes one reply line (with
     * its newline) into out. Returns the reply's length.
     *   INCR key  -> "OK key N"      GET key -> "OK key N"
     *   VERSION   -> "OK kv_server V"
     *   TOP n     -> "OK k1=N1 k2=N2 ..." (from version 3, with kv_lib)
     * Anything else -> "ERR ..." */
    size_t (*handle)(void *state, const char *line, size_t len, char *out, size_t outsz);
} KvServerApi;

typedef struct KvLibApi {
    /* Indices of the k largest counts, largest first; returns how many. */
    size_t (*top)(const uint64_t *counts, size_t n, size_t k, size_t *ret_idx);
} KvLibApi;

#define KV_MAX_KEY 63
