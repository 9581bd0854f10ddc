/* kv_server version 1: counters in an array, searched linearly.
 *
 * Two builds (examples/meson.build, tests/meson.build):
 *   (default)   module ABI 2: a health callback (unhealthy while the key
 *               "__unhealthy" has a count), verify and state_version 1
 *   KV_ABI1     the same module as a module built against ABI 1's header
 *               would export it: a descriptor of ABI 1's 64 bytes, which
 *               the runtime must load without reading past it */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include "kv_common.h"
#include "reld-runtime.h"

typedef struct Item {
    char key[KV_MAX_KEY + 1];
    long count;
} Item;

/* The state layout of version 1; version 2 converts from and to it. */
typedef struct StateV1 {
    size_t n, cap;
    Item *items;
} StateV1;

static int init(void **ret)
{
    StateV1 *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    *ret = s;
    return 0;
}

static void terminate(void *state)
{
    StateV1 *s = state;
    if (s)
        free(s->items);
    free(s);
}

static Item *find(StateV1 *s, const char *key, int create)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->items[i].key, key) == 0)
            return &s->items[i];
    if (!create)
        return NULL;
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        Item *items = realloc(s->items, cap * sizeof(*items));
        if (!items)
            return NULL;
        s->items = items;
        s->cap = cap;
    }
    Item *it = &s->items[s->n++];
    strcpy(it->key, key);
    it->count = 0;
    return it;
}

#ifndef KV_ABI1 /* ABI 1 has neither */
/* The health check of the example: healthy unless a client set the key
 * "__unhealthy" (INCR __unhealthy), so that tests can make a running
 * process unhealthy by a request. */
static int health(void *state, char *msg, size_t msglen)
{
    Item *it = find(state, "__unhealthy", 0);
    if (it && it->count > 0) {
        snprintf(msg, msglen, "the key __unhealthy is set (%ld)", it->count);
        return -EIO;
    }
    return 0;
}

/* The invariants of version 1's state, for rehearsals. */
static int verify(void *state, char *err, size_t errlen)
{
    StateV1 *s = state;
    if (!s || s->n > s->cap || (s->cap && !s->items)) {
        snprintf(err, errlen, "array of %zu items in %zu slots", s ? s->n : 0, s ? s->cap : 0);
        return -EUCLEAN;
    }
    for (size_t i = 0; i < s->n; i++)
        if (!memchr(s->items[i].key, 0, sizeof(s->items[i].key)) || s->items[i].count < 0) {
            snprintf(err, errlen, "item %zu is damaged", i);
            return -EUCLEAN;
        }
    return 0;
}
#endif

static size_t handle(void *state, const char *line, size_t len, char *out, size_t outsz)
{
    char verb[16], key[KV_MAX_KEY + 1];
    if (kv_split(line, len, verb, sizeof(verb), key) < 0)
        return kv_reply(out, outsz, "ERR bad request\n");
    if (strcmp(verb, "VERSION") == 0)
        return kv_reply(out, outsz, "OK kv_server 1\n");
    if ((strcmp(verb, "INCR") == 0 || strcmp(verb, "GET") == 0) && *key) {
        bool incr = verb[0] == 'I';
        Item *it = find(state, key, incr);
        if (!it && incr)
            return kv_reply(out, outsz, "ERR out of memory\n");
        long n = it ? (incr ? ++it->count : it->count) : 0;
        return kv_reply(out, outsz, "OK %s %ld\n", key, n);
    }
    return kv_reply(out, outsz, "ERR unknown command %s\n", verb);
}

static const KvServerApi api = {.handle = handle};

#ifdef KV_ABI1
/* ABI 1's descriptor, field for field: what a module built before ABI 2
 * exports. */
typedef struct DescV1 {
    uint32_t abi;
    const char *name, *version;
    void (*attach)(const RelHost *host);
    int (*init)(void **ret_state);
    int (*code_change)(RelDirection dir, const char *other_version, void *state, const char *extra_json,
                       void **ret_state, char *err, size_t errlen);
    void (*terminate)(void *state);
    const void *api;
} DescV1;
__attribute__((visibility("default"))) const DescV1 reld_module = {
    .abi = 1, .name = "kv_server", .version = "1", .init = init, .terminate = terminate, .api = &api};
#else
RELD_MODULE_DEFINE(.name = "kv_server", .version = "1", .init = init, .terminate = terminate, .api = &api,
                   .state_version = 1, .health = health, .verify = verify);
#endif
