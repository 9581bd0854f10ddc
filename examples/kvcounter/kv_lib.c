/* kv_lib version 1: a library module (no state of its own) that ranks
 * counters for kv_server 3's TOP. */
#include <stddef.h>
#include <stdint.h>

#include "kv_api.h"
#include "reld-runtime.h"

/* Selection of the k largest, O(n k): k is at most 100. */
static size_t top(const uint64_t *counts, size_t n, size_t k, size_t *ret_idx)
{
    size_t got = 0;
    for (size_t i = 0; i < n; i++) {
        size_t pos = got < k ? got++ : k;
        if (pos == k && counts[i] <= counts[ret_idx[k - 1]])
            continue;
        if (pos == k)
            pos = k - 1;
        while (pos > 0 && counts[ret_idx[pos - 1]] < counts[i]) {
            ret_idx[pos] = ret_idx[pos - 1];
            pos--;
        }
        ret_idx[pos] = i;
    }
    return got;
}

static const KvLibApi api = {.top = top};

RELD_MODULE_DEFINE(.name = "kv_lib", .version = "1", .api = &api);
