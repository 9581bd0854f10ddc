/* State conversion by description (reld-runtime.h) on the change issue 12 measured (91 hand-written lines
 * in a ported chat server): fields added to a client struct in a linked
 * list, with defaults; a field renamed; an array of structs whose element
 * layout changed (a field removed, one added); a field added to the top
 * state. Up and back down with the same two descriptions; a description
 * that does not fit is refused with the field named and the state
 * untouched. Leaks show under ASan (LeakSanitizer). */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "reld-runtime.h"

/* ---- version 1 ---- */
typedef struct ClientV1 {
    char *nick;
    int fd;
    struct ClientV1 *next;
} ClientV1;
typedef struct MsgV1 {
    char *text;
    int from_fd;
} MsgV1;
typedef struct ChatV1 {
    ClientV1 *clients;
    MsgV1 *log;
    size_t n_log, cap_log;
    uint64_t delivered;
} ChatV1;

/* ---- version 2: clients have joined_ms and away, fd is now sock; a
 * message lost from_fd and has at_ms; the chat has a topic ---- */
typedef struct ClientV2 {
    char *nick;
    char *away;
    int sock;
    long long joined_ms;
    struct ClientV2 *next;
} ClientV2;
typedef struct MsgV2 {
    long long at_ms;
    char *text;
} MsgV2;
typedef struct ChatV2 {
    char *topic;
    uint64_t delivered;
    MsgV2 *log;
    size_t n_log, cap_log;
    ClientV2 *clients;
} ChatV2;

/* ---- the descriptions: all that the conversion both ways needs ---- */
static const RelType client_v1, client_v2;
static const long long never = -1;
static const RelField client_v1_f[] = {REL_STRING(ClientV1, nick), REL_VALUE(ClientV1, fd),
                                       REL_NEXT(ClientV1, next, &client_v1)};
static const RelField client_v2_f[] = {
    REL_STRING(ClientV2, nick), REL_STRING(ClientV2, away, .dflt = ""), REL_VALUE(ClientV2, sock, .was = "fd"),
    REL_VALUE(ClientV2, joined_ms, .dflt = &never), REL_NEXT(ClientV2, next, &client_v2)};
static const RelType client_v1 = REL_TYPE(ClientV1, client_v1_f), client_v2 = REL_TYPE(ClientV2, client_v2_f);
static const RelField msg_v1_f[] = {REL_STRING(MsgV1, text), REL_VALUE(MsgV1, from_fd)};
static const RelField msg_v2_f[] = {REL_STRING(MsgV2, text), REL_VALUE(MsgV2, at_ms)};
static const RelType msg_v1 = REL_TYPE(MsgV1, msg_v1_f), msg_v2 = REL_TYPE(MsgV2, msg_v2_f);
static const RelField chat_v1_f[] = {REL_LIST(ChatV1, clients, &client_v1),
                                     REL_ARRAY(ChatV1, log, &msg_v1, n_log, .cap = "cap_log"), REL_VALUE(ChatV1, n_log),
                                     REL_VALUE(ChatV1, cap_log), REL_VALUE(ChatV1, delivered)};
static const RelField chat_v2_f[] = {REL_STRING(ChatV2, topic, .dflt = "general"),
                                     REL_LIST(ChatV2, clients, &client_v2),
                                     REL_ARRAY(ChatV2, log, &msg_v2, n_log, .cap = "cap_log"),
                                     REL_VALUE(ChatV2, n_log),
                                     REL_VALUE(ChatV2, cap_log),
                                     REL_VALUE(ChatV2, delivered)};
static const RelType chat_v1 = REL_TYPE(ChatV1, chat_v1_f), chat_v2 = REL_TYPE(ChatV2, chat_v2_f);

/* The module's code_change, whole. */
static int code_change(RelDirection dir, void *state, void **ret, char *err, size_t errlen)
{
    const RelType *from = dir == REL_UP ? &chat_v1 : &chat_v2, *to = dir == REL_UP ? &chat_v2 : &chat_v1;
    int r = rel_convert(from, state, to, ret, err, errlen);
    if (r == 0)
        rel_free(from, state);
    return r;
}
/* ---- end of what a module writes ---- */

static ChatV1 *chat_v1_new(size_t n_clients, size_t n_msgs)
{
    ChatV1 *c = calloc(1, sizeof(*c));
    ck_assert_ptr_nonnull(c);
    for (size_t i = n_clients; i-- > 0;) {
        ClientV1 *cl = calloc(1, sizeof(*cl));
        ck_assert_ptr_nonnull(cl);
        char nick[32];
        snprintf(nick, sizeof(nick), "user%zu", i);
        cl->nick = strdup(nick);
        cl->fd = 10 + (int)i;
        cl->next = c->clients;
        c->clients = cl;
    }
    c->cap_log = n_msgs + 7; /* room to spare: the copy has exactly n_log */
    c->log = calloc(c->cap_log, sizeof(MsgV1));
    for (size_t i = 0; i < n_msgs; i++) {
        char text[32];
        snprintf(text, sizeof(text), "message %zu", i);
        c->log[i] = (MsgV1){.text = strdup(text), .from_fd = 10 + (int)(i % 3)};
    }
    c->n_log = n_msgs;
    c->delivered = 61294;
    return c;
}

START_TEST(up_and_down_again)
{
    ChatV1 *v1 = chat_v1_new(10, 5);
    ChatV2 *v2 = NULL;
    char err[256] = "";
    ck_assert_int_eq(code_change(REL_UP, v1, (void **)&v2, err, sizeof(err)), 0);
    ck_assert_str_eq(v2->topic, "general");
    ck_assert_uint_eq(v2->delivered, 61294);
    ck_assert_uint_eq(v2->n_log, 5);
    ck_assert_uint_eq(v2->cap_log, 5);
    for (size_t i = 0; i < 5; i++) {
        char text[32];
        snprintf(text, sizeof(text), "message %zu", i);
        ck_assert_str_eq(v2->log[i].text, text);
        ck_assert_int_eq(v2->log[i].at_ms, 0); /* added, no default: zero */
    }
    size_t k = 0;
    for (ClientV2 *c = v2->clients; c; c = c->next, k++) {
        char nick[32];
        snprintf(nick, sizeof(nick), "user%zu", k);
        ck_assert_str_eq(c->nick, nick);
        ck_assert_int_eq(c->sock, 10 + (int)k); /* renamed from fd */
        ck_assert_int_eq(c->joined_ms, -1);
        ck_assert_str_eq(c->away, "");
    }
    ck_assert_uint_eq(k, 10);

    v2->clients->joined_ms = 5; /* what version 2 learns goes when going down */
    ChatV1 *back = NULL;
    ck_assert_int_eq(code_change(REL_DOWN, v2, (void **)&back, err, sizeof(err)), 0);
    ChatV1 *want = chat_v1_new(10, 5);
    ck_assert_uint_eq(back->delivered, want->delivered);
    ck_assert_uint_eq(back->n_log, 5);
    for (size_t i = 0; i < 5; i++) {
        ck_assert_str_eq(back->log[i].text, want->log[i].text);
        ck_assert_int_eq(back->log[i].from_fd, 0); /* it was dropped on the way up */
    }
    ClientV1 *a = back->clients, *b = want->clients;
    for (; a && b; a = a->next, b = b->next) {
        ck_assert_str_eq(a->nick, b->nick);
        ck_assert_int_eq(a->fd, b->fd);
    }
    ck_assert(!a && !b);
    rel_free(&chat_v1, back);
    rel_free(&chat_v1, want);
}
END_TEST

START_TEST(empty_state)
{
    ChatV1 *v1 = calloc(1, sizeof(*v1));
    ChatV2 *v2 = NULL;
    ck_assert_int_eq(code_change(REL_UP, v1, (void **)&v2, NULL, 0), 0);
    ck_assert_ptr_null(v2->clients);
    ck_assert_ptr_null(v2->log);
    ck_assert_uint_eq(v2->n_log, 0);
    ck_assert_str_eq(v2->topic, "general");
    rel_free(&chat_v2, v2);
}
END_TEST

/* A description whose field changed kind (a string in one, a value in
 * the other): refused, named, nothing of the source freed or changed. */
typedef struct ClientBad {
    long nick;
    struct ClientBad *next;
} ClientBad;
typedef struct ChatBad {
    ClientBad *clients;
} ChatBad;
static const RelType client_bad;
static const RelField client_bad_f[] = {REL_VALUE(ClientBad, nick), REL_NEXT(ClientBad, next, &client_bad)};
static const RelType client_bad = REL_TYPE(ClientBad, client_bad_f);
static const RelField chat_bad_f[] = {REL_LIST(ChatBad, clients, &client_bad)};
static const RelType chat_bad = REL_TYPE(ChatBad, chat_bad_f);

START_TEST(mismatch_is_refused)
{
    ChatV1 *v1 = chat_v1_new(3, 2);
    void *out = (void *)0x1;
    char err[256] = "";
    ck_assert_int_eq(rel_convert(&chat_v1, v1, &chat_bad, &out, err, sizeof(err)), -EINVAL);
    ck_assert_str_eq(err, "ClientBad.nick: of another kind in the other layout");
    ck_assert_ptr_eq(out, (void *)0x1);
    ck_assert_str_eq(v1->clients->next->nick, "user1");

    /* a value whose size changed */
    static const RelField fd_long_f[] = {REL_VALUE(ChatV2, delivered)};
    static const RelField fd_int_f[] = {REL_VALUE(ClientV1, fd, .was = "delivered")};
    static const RelType small = REL_TYPE(ClientV1, fd_int_f), big = REL_TYPE(ChatV2, fd_long_f);
    ChatV2 c2 = {.delivered = 7};
    ck_assert_int_eq(rel_convert(&big, &c2, &small, &out, err, sizeof(err)), -EINVAL);
    ck_assert_str_eq(err, "ClientV1.fd: of another size in the other layout");
    rel_free(&chat_v1, v1);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("runtime-convert");
    TCase *tc = tcase_create("convert");
    tcase_add_test(tc, up_and_down_again);
    tcase_add_test(tc, empty_state);
    tcase_add_test(tc, mismatch_is_refused);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
