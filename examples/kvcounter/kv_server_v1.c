/* kv_server version 1: counters in an array, searched linearly. */
#include <errno.h>
#include <stdbool.h>
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

RELD_MODULE_DEFINE(.name = "kv_server", .version = "1", .init = init, .terminate = terminate, .api = &api);
