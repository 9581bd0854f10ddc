/* kv_server versions 2 and 3: counters in an open-addressing hash table
 * with a running total, a new state layout. code_change converts version
 * 1's array up into the table and the table back down into the array.
 *
 * Every build has a health callback (unhealthy while the key "__unhealthy"
 * has a count), verify (the table's invariants) and state_version 2.
 *
 * One source, several builds (examples/meson.build), the faulty ones for
 * the tests of rehearsals and health gates (docs/runtime.md):
 *   KV_VERSION=2                    version 2
 *   KV_VERSION=2 + KV_BROKEN        "2b", whose code_change fails on purpose
 *   KV_VERSION=2 + KV_CRASH         "2crash": code_change up from 1 crashes
 *                                   (abort(), SIGABRT, as a failed assertion
 *                                   would) when the state has more than
 *                                   1,000 keys: a fresh state converts fine
 *   KV_VERSION=2 + KV_HANG          "2hang": code_change up from 1 never
 *                                   returns when the state has more than
 *                                   1,000 keys
 *   KV_VERSION=2 + KV_BAD_TOTAL     "2badtotal": code_change up forgets the
 *                                   running total, which verify finds
 *   KV_VERSION=2 + KV_SICK          "2sick": converts right, always unhealthy
 *   KV_VERSION=3                    adds TOP n through the library module
 *                                   kv_lib (named in dep_mods), same layout */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "kv_common.h"
#include "reld-runtime.h"

#if KV_VERSION == 3
#define KV_VERSION_STRING "3"
#elif defined(KV_BROKEN)
#define KV_VERSION_STRING "2b"
#elif defined(KV_CRASH)
#define KV_VERSION_STRING "2crash"
#elif defined(KV_HANG)
#define KV_VERSION_STRING "2hang"
#elif defined(KV_BAD_TOTAL)
#define KV_VERSION_STRING "2badtotal"
#elif defined(KV_SICK)
#define KV_VERSION_STRING "2sick"
#else
#define KV_VERSION_STRING "2"
#endif

typedef struct Slot {
    char *key; /* NULL: empty */
    uint64_t count;
} Slot;

typedef struct StateV2 {
    size_t n, cap; /* cap: a power of two */
    Slot *slots;
    uint64_t total;
} StateV2;

/* Version 1's layout, for code_change. */
typedef struct ItemV1 {
    char key[KV_MAX_KEY + 1];
    long count;
} ItemV1;
typedef struct StateV1 {
    size_t n, cap;
    ItemV1 *items;
} StateV1;

static uint64_t hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

static StateV2 *table_new(size_t cap)
{
    StateV2 *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->cap = cap;
    if (!(t->slots = calloc(cap, sizeof(Slot)))) {
        free(t);
        return NULL;
    }
    return t;
}

static void table_free(StateV2 *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->cap; i++)
        free(t->slots[i].key);
    free(t->slots);
    free(t);
}

static Slot *table_find(StateV2 *t, const char *key)
{
    for (size_t i = hash(key) & (t->cap - 1);; i = (i + 1) & (t->cap - 1))
        if (!t->slots[i].key || strcmp(t->slots[i].key, key) == 0)
            return &t->slots[i];
}

/* Grows the table when it is half full. */
static bool table_reserve(StateV2 *t)
{
    if ((t->n + 1) * 2 <= t->cap)
        return true;
    StateV2 *bigger = table_new(t->cap * 2);
    if (!bigger)
        return false;
    for (size_t i = 0; i < t->cap; i++)
        if (t->slots[i].key)
            *table_find(bigger, t->slots[i].key) = t->slots[i];
    free(t->slots);
    t->slots = bigger->slots;
    t->cap = bigger->cap;
    free(bigger);
    return true;
}

static Slot *table_get(StateV2 *t, const char *key, bool create)
{
    Slot *s = table_find(t, key);
    if (s->key || !create)
        return s->key ? s : NULL;
    if (!table_reserve(t))
        return NULL;
    s = table_find(t, key);
    if (!(s->key = strdup(key)))
        return NULL;
    s->count = 0;
    t->n++;
    return s;
}

static int init(void **ret)
{
    StateV2 *t = table_new(64);
    if (!t)
        return -ENOMEM;
    *ret = t;
    return 0;
}

static void terminate(void *state)
{
    table_free(state);
}

/* The faults of the test builds: only on a state larger than any a unit
 * test with a fresh state would make. */
#define KV_FAULT_KEYS 1000

static int up_from_v1(StateV1 *old, void **ret)
{
#if defined(KV_CRASH)
    /* abort() rather than a wild store: the same signal in every build,
     * sanitizers' included (which turn a SIGSEGV into their own report). */
    if (old->n > KV_FAULT_KEYS)
        abort();
#elif defined(KV_HANG)
    while (old->n > KV_FAULT_KEYS)
        pause();
#endif
    size_t cap = 64;
    while (cap < old->n * 2 + 2)
        cap *= 2;
    StateV2 *t = table_new(cap);
    if (!t)
        return -ENOMEM;
    for (size_t i = 0; i < old->n; i++) {
        Slot *s = table_get(t, old->items[i].key, true);
        if (!s) {
            table_free(t);
            return -ENOMEM; /* old is untouched */
        }
        s->count = (uint64_t)old->items[i].count;
#ifndef KV_BAD_TOTAL
        t->total += s->count;
#endif
    }
    free(old->items); /* success: the old state is ours to free */
    free(old);
    *ret = t;
    return 0;
}

static int down_to_v1(StateV2 *t, void **ret)
{
    StateV1 *old = calloc(1, sizeof(*old));
    if (!old || !(old->items = calloc(t->n + 1, sizeof(ItemV1)))) {
        free(old);
        return -ENOMEM;
    }
    old->cap = t->n + 1;
    for (size_t i = 0; i < t->cap; i++) {
        if (!t->slots[i].key)
            continue;
        ItemV1 *it = &old->items[old->n++];
        strcpy(it->key, t->slots[i].key);
        it->count = (long)t->slots[i].count;
    }
    table_free(t);
    *ret = old;
    return 0;
}

static int code_change(RelDirection dir, const char *other, void *state, const char *extra, void **ret, char *err,
                       size_t errlen)
{
#ifdef KV_BROKEN
    snprintf(err, errlen, "this build's code_change fails on purpose");
    return -EPROTO;
#endif
#if KV_VERSION == 3
    if (strcmp(other, "2") == 0) { /* the same layout */
        *ret = state;
        return 0;
    }
#endif
    if (strcmp(other, "1") != 0) {
        snprintf(err, errlen, "cannot convert %s version %s", dir == REL_UP ? "from" : "to", other);
        return -EINVAL;
    }
    return dir == REL_UP ? up_from_v1(state, ret) : down_to_v1(state, ret);
}

#if KV_VERSION == 3
static const RelHost *host;

static void attach(const RelHost *h)
{
    host = h;
}

/* TOP n: the n largest counters, ranked by the library module kv_lib. */
static size_t top(StateV2 *t, int n, char *out, size_t outsz)
{
    const KvLibApi *lib = host ? host->module_api(host, "kv_lib") : NULL;
    if (!lib)
        return kv_reply(out, outsz, "ERR kv_lib is not loaded\n");
    if (n < 1 || n > 100)
        return kv_reply(out, outsz, "ERR TOP takes 1 to 100\n");
    uint64_t *counts = malloc((t->n + 1) * sizeof(*counts));
    const char **keys = malloc((t->n + 1) * sizeof(*keys));
    size_t *idx = malloc((size_t)n * sizeof(*idx)), k = 0, m = 0;
    if (!counts || !keys || !idx) {
        free(counts);
        free(keys);
        free(idx);
        return kv_reply(out, outsz, "ERR out of memory\n");
    }
    for (size_t i = 0; i < t->cap; i++)
        if (t->slots[i].key) {
            keys[m] = t->slots[i].key;
            counts[m++] = t->slots[i].count;
        }
    k = lib->top(counts, m, (size_t)n, idx);
    size_t len = kv_reply(out, outsz, "OK");
    for (size_t i = 0; i < k && len + 1 < outsz; i++)
        len += kv_reply(out + len, outsz - len, " %s=%llu", keys[idx[i]], (unsigned long long)counts[idx[i]]);
    len += kv_reply(out + len, outsz - len, "\n");
    free(counts);
    free(keys);
    free(idx);
    return len;
}
#endif

static size_t handle(void *state, const char *line, size_t len, char *out, size_t outsz)
{
    StateV2 *t = state;
    char verb[16], key[KV_MAX_KEY + 1];
    if (kv_split(line, len, verb, sizeof(verb), key) < 0)
        return kv_reply(out, outsz, "ERR bad request\n");
    if (strcmp(verb, "VERSION") == 0)
        return kv_reply(out, outsz, "OK kv_server %s\n", KV_VERSION_STRING);
    if ((strcmp(verb, "INCR") == 0 || strcmp(verb, "GET") == 0) && *key) {
        bool incr = verb[0] == 'I';
        Slot *s = table_get(t, key, incr);
        if (!s && incr)
            return kv_reply(out, outsz, "ERR out of memory\n");
        if (s && incr) {
            s->count++;
            t->total++;
        }
        return kv_reply(out, outsz, "OK %s %llu\n", key, (unsigned long long)(s ? s->count : 0));
    }
    if (strcmp(verb, "TOTAL") == 0)
        return kv_reply(out, outsz, "OK total %llu\n", (unsigned long long)t->total);
#if KV_VERSION == 3
    if (strcmp(verb, "TOP") == 0)
        return top(t, atoi(key), out, outsz);
#endif
    return kv_reply(out, outsz, "ERR unknown command %s\n", verb);
}

/* Healthy unless a client set the key "__unhealthy"; 2sick never is. */
static int health(void *state, char *msg, size_t msglen)
{
#ifdef KV_SICK
    snprintf(msg, msglen, "kv_server %s is unhealthy on purpose", KV_VERSION_STRING);
    return -EIO;
#else
    Slot *s = table_get(state, "__unhealthy", false);
    if (s && s->count > 0) {
        snprintf(msg, msglen, "the key __unhealthy is set (%llu)", (unsigned long long)s->count);
        return -EIO;
    }
    return 0;
#endif
}

/* The table's invariants: as many keys as n, at most half full, the
 * running total the sum of the counts. */
static int verify(void *state, char *err, size_t errlen)
{
    StateV2 *t = state;
    size_t n = 0;
    uint64_t sum = 0;
    for (size_t i = 0; t && i < t->cap; i++)
        if (t->slots[i].key) {
            n++;
            sum += t->slots[i].count;
        }
    if (!t || n != t->n || t->n * 2 > t->cap) {
        snprintf(err, errlen, "table of %zu keys counts %zu in %zu slots", n, t ? t->n : 0, t ? t->cap : 0);
        return -EUCLEAN;
    }
    if (sum != t->total) {
        snprintf(err, errlen, "running total %llu, but the counts sum to %llu", (unsigned long long)t->total,
                 (unsigned long long)sum);
        return -EUCLEAN;
    }
    return 0;
}

static const KvServerApi api = {.handle = handle};

#if KV_VERSION == 3
RELD_MODULE_DEFINE(.name = "kv_server", .version = KV_VERSION_STRING, .attach = attach, .init = init,
                   .code_change = code_change, .terminate = terminate, .api = &api, .state_version = 2,
                   .health = health, .verify = verify);
#else
RELD_MODULE_DEFINE(.name = "kv_server", .version = KV_VERSION_STRING, .init = init, .code_change = code_change,
                   .terminate = terminate, .api = &api, .state_version = 2, .health = health, .verify = verify);
#endif
