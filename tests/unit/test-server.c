/* server, client and commands: reld's control socket in a temporary
 * directory, served by a real manager on a temporary root and a real
 * sd_event loop. The test is root; other users are forked children that
 * drop to nobody (uid 65534) before they connect. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "client.h"
#include "server.h"
#include "util.h"
#include "testlib.h"

#define NOBODY      65534
#define MAX_REQUEST 65536

static char work[] = "/tmp/reld-test-server-XXXXXX";
static char *root, *src, *sock_path;
static sd_event *ev;
static Manager *m;
static Server *srv;
static DaemonConfig cfg;

/* ---- the loop and files ------------------------------------------------------ */

static void run_for(int ms)
{
    long long deadline = mono_ms() + ms;
    while (mono_ms() < deadline)
        ck_assert_int_ge(sd_event_run(ev, 10000), 0);
}

static void put(const char *base, const char *rel, const char *content)
{
    char *path = xasprintf("%s/%s", base, rel);
    mkdir(base, 0755);
    for (char *p = strchr(path + strlen(base) + 1, '/'); p; p = strchr(p + 1, '/')) {
        *p = 0;
        mkdir(path, 0755);
        *p = '/';
    }
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(content, f);
    ck_assert_int_eq(fclose(f), 0);
    free(path);
}

static void source_app(const char *name, const char *vsn)
{
    char *rel = xasprintf("lib/%s-%s/app.yaml", name, vsn);
    char *y = xasprintf("name: %s\nvsn: \"%s\"\nmodules: [%s_m]\nprocesses:\n"
                        "  - name: p\n    exec: /bin/sh\n    args: ['-c', 'trap \"exit 0\" TERM; read x <&3']\n"
                        "    modules: [%s_m]\n",
                        name, vsn, name, name);
    put(src, rel, y);
    free(rel);
    free(y);
    rel = xasprintf("lib/%s-%s/modules/%s_m.so", name, vsn, name);
    put(src, rel, ""); /* its directory */
    char *path = xasprintf("%s/%s", src, rel);
    y = xasprintf("%s_m", name);
    test_copy_module(y, vsn, path);
    free(path);
    free(rel);
    free(y);
}

/* work/t-VSN.tar.gz: release 1 (a-1) or 2 (a-2, b-1); caller frees. */
static char *release_tarball(const char *vsn)
{
    char *t = xasprintf("%s/t-%s.tar.gz", work, vsn);
    char *cmd = xasprintf("tar -C '%s' -czf '%s' releases/%s %s", src, t, vsn,
                          strcmp(vsn, "1") == 0 ? "lib/a-1" : "lib/a-2 lib/b-1");
    ck_assert_int_eq(system(cmd), 0);
    free(cmd);
    return t;
}

/* ---- a client of the test's own (root) ------------------------------------------------ */

/* Connects, sends len bytes of req (with fd passed, when >= 0), and reads
 * until reld closes the connection, running the loop meanwhile. shut:
 * shut down the writing side after sending. The reply text (caller
 * frees). */
static char *ask_raw(const char *req, size_t len, int fd, bool shut)
{
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    ck_assert_int_ge(s, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof(a.sun_path), "%s", sock_path);
    ck_assert_msg(connect(s, (struct sockaddr *)&a, sizeof(a)) == 0, "connect: %s", strerror(errno));
    size_t off = 0;
    long long deadline = mono_ms() + 10000;
    char *out = xcalloc(1, 1);
    size_t out_len = 0;
    bool eof = false;
    while (!eof && mono_ms() < deadline) {
        if (off < len) {
            char cbuf[CMSG_SPACE(sizeof(int))];
            struct iovec iov = {.iov_base = (char *)req + off, .iov_len = len - off};
            struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
            if (fd >= 0 && off == 0) {
                memset(cbuf, 0, sizeof(cbuf));
                mh.msg_control = cbuf;
                mh.msg_controllen = sizeof(cbuf);
                struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
                cm->cmsg_level = SOL_SOCKET;
                cm->cmsg_type = SCM_RIGHTS;
                cm->cmsg_len = CMSG_LEN(sizeof(int));
                memcpy(CMSG_DATA(cm), &fd, sizeof(int));
            }
            ssize_t n = sendmsg(s, &mh, MSG_NOSIGNAL);
            if (n > 0)
                off += (size_t)n;
            else if (errno != EAGAIN)
                off = len; /* reld closed: read what it said */
            if (off == len && shut)
                shutdown(s, SHUT_WR);
        }
        char buf[65536];
        ssize_t n = recv(s, buf, sizeof(buf), 0);
        if (n > 0) {
            out = xrealloc(out, out_len + (size_t)n + 1);
            memcpy(out + out_len, buf, (size_t)n);
            out_len += (size_t)n;
            out[out_len] = 0;
        } else if (n == 0 || errno != EAGAIN) {
            eof = true;
        } else {
            ck_assert_int_ge(sd_event_run(ev, 5000), 0);
        }
    }
    ck_assert_msg(eof, "reld did not close the connection; got '%s'", out);
    close(s);
    return out;
}

static char *ask(const char *req)
{
    return ask_raw(req, strlen(req), -1, false);
}

/* The one reply line of text (taken), parsed; fails unless text is
 * exactly one line. */
static json_t *one_reply(char *text)
{
    size_t len = strlen(text);
    ck_assert_msg(len > 0 && text[len - 1] == '\n' && strchr(text, '\n') == text + len - 1, "not one line: '%s'", text);
    json_error_t e;
    json_t *j = json_loads(text, 0, &e);
    ck_assert_msg(json_is_object(j), "not a JSON object: '%s' (%s)", text, e.text);
    free(text);
    return j;
}

static const char *error_of(json_t *reply)
{
    ck_assert_msg(json_is_false(json_object_get(reply, "ok")), "not a refusal");
    const char *e = json_string_value(json_object_get(reply, "error"));
    ck_assert_ptr_nonnull(e);
    return e;
}

#define ck_assert_ok(reply)                                                                                            \
    ck_assert_msg(json_is_true(json_object_get((reply), "ok")), "refused: %s",                                         \
                  json_string_value(json_object_get((reply), "error")))

/* ---- a client as another user -------------------------------------------------------- */

/* Forks a child that becomes uid/gid (with supplementary groups), connects
 * and asks req; returns what it read (caller frees), "CONNECT: <errno
 * text>" when it could not connect. */
static char *ask_as(uid_t uid, gid_t gid, const gid_t *groups, size_t n_groups, const char *req)
{
    int pp[2];
    ck_assert_int_eq(pipe2(pp, O_CLOEXEC), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        close(pp[0]);
        if (setgroups(n_groups, groups) < 0 || setgid(gid) < 0 || setuid(uid) < 0)
            _exit(3);
        int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        snprintf(a.sun_path, sizeof(a.sun_path), "%s", sock_path);
        if (connect(s, (struct sockaddr *)&a, sizeof(a)) < 0) {
            char msg[128];
            int k = snprintf(msg, sizeof(msg), "CONNECT: %s", strerror(errno));
            (void)!write(pp[1], msg, (size_t)k);
            _exit(0);
        }
        (void)!write(s, req, strlen(req));
        char buf[65536];
        ssize_t n;
        while ((n = read(s, buf, sizeof(buf))) > 0)
            (void)!write(pp[1], buf, (size_t)n);
        _exit(0);
    }
    close(pp[1]);
    ck_assert_int_eq(fcntl(pp[0], F_SETFL, O_NONBLOCK), 0);
    char *out = xcalloc(1, 1);
    size_t out_len = 0;
    long long deadline = mono_ms() + 10000;
    for (;;) {
        char buf[65536];
        ssize_t n = read(pp[0], buf, sizeof(buf));
        if (n > 0) {
            out = xrealloc(out, out_len + (size_t)n + 1);
            memcpy(out + out_len, buf, (size_t)n);
            out_len += (size_t)n;
            out[out_len] = 0;
            continue;
        }
        if (n == 0 || mono_ms() > deadline)
            break;
        ck_assert_int_ge(sd_event_run(ev, 5000), 0);
    }
    close(pp[0]);
    int status = 0;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child as uid %u failed: %d", (unsigned)uid,
                  status);
    return out;
}

static char *ask_as_nobody(const char *req)
{
    return ask_as(NOBODY, NOBODY, NULL, 0, req);
}

/* ---- fixture ----------------------------------------------------------------------- */

static void start_server(void)
{
    int r = server_new(ev, m, &cfg, &srv);
    ck_assert_msg(r == 0, "server_new: %d", r);
}

static void setup(void)
{
    signal(SIGTERM, SIG_DFL); /* see test-proc.c */
    signal(SIGINT, SIG_DFL);
    signal(SIGALRM, SIG_DFL);
    strcpy(work, "/tmp/reld-test-server-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(work));
    ck_assert_int_eq(chmod(work, 0755), 0); /* nobody may reach the socket's directory */
    root = xasprintf("%s/root", work);
    src = xasprintf("%s/src", work);
    sock_path = xasprintf("%s/run/reld.sock", work);
    source_app("a", "1");
    source_app("a", "2");
    source_app("b", "1");
    put(src, "releases/1/release.yaml", "release: t\nvsn: \"1\"\napplications: [{name: a, vsn: \"1\"}]\n");
    put(src, "releases/2/release.yaml",
        "release: t\nvsn: \"2\"\napplications: [{name: a, vsn: \"2\"}, {name: b, vsn: \"1\"}]\n");
    ck_assert_int_ge(sd_event_new(&ev), 0);
    config_init(&cfg);
    free(cfg.root);
    cfg.root = xstrdup(root);
    free(cfg.socket_path);
    cfg.socket_path = xstrdup(sock_path);
    ck_assert_int_eq(manager_new(ev, &cfg, &m), 0);
    srv = NULL;
    start_server();
}

static bool shut_down;

static void on_shut_down(void *userdata)
{
    shut_down = true;
}

static void teardown(void)
{
    srv = server_free(srv);
    shut_down = false;
    manager_shutdown(m, on_shut_down, NULL);
    long long deadline = mono_ms() + 10000;
    while (!shut_down && mono_ms() < deadline)
        ck_assert_int_ge(sd_event_run(ev, 10000), 0);
    while ((m = manager_free(m)) && mono_ms() < deadline)
        ck_assert_int_ge(sd_event_run(ev, 10000), 0);
    ck_assert_ptr_null(m);
    run_for(30);
    ev = sd_event_unref(ev);
    config_clear(&cfg);
    char cmd[sizeof(work) + 16];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", work);
    ck_assert_int_eq(system(cmd), 0);
    free(root);
    free(src);
    free(sock_path);
}

static mode_t sock_mode(gid_t *gid)
{
    struct stat st;
    ck_assert_int_eq(stat(sock_path, &st), 0);
    ck_assert(S_ISSOCK(st.st_mode));
    if (gid)
        *gid = st.st_gid;
    return st.st_mode & 07777;
}

static void restart_server(const char *yaml_lines)
{
    srv = server_free(srv);
    char *cfg_path = xasprintf("%s/reld.yaml", work), *err = NULL;
    put(work, "reld.yaml", yaml_lines);
    int r = config_load(&cfg, cfg_path, &err);
    ck_assert_msg(r == 0, "config: %s", err ? err : "");
    free(cfg_path);
    start_server();
}

/* ---- server_new ---------------------------------------------------------------------- */

START_TEST(new_socket_0660_when_only_writers_read)
{
    gid_t g;
    ck_assert_uint_eq(sock_mode(&g), 0660);
    ck_assert_uint_eq(g, getegid());
    json_t *r = one_reply(ask("{\"cmd\": \"status\"}\n"));
    ck_assert_ok(r);
    json_decref(r);
    /* nobody cannot even connect. */
    char *out = ask_as_nobody("{\"cmd\": \"status\"}\n");
    ck_assert_str_eq(out, "CONNECT: Permission denied");
    free(out);
}
END_TEST

START_TEST(new_socket_0666_with_readers_all)
{
    restart_server("readers: all\n");
    ck_assert_uint_eq(sock_mode(NULL), 0666);
}
END_TEST

START_TEST(new_socket_0666_with_a_reader_group)
{
    restart_server("reader_group: daemon\n");
    ck_assert_uint_eq(sock_mode(NULL), 0666);
}
END_TEST

START_TEST(new_socket_group_is_the_writer_group)
{
    restart_server("writer_group: nogroup\n");
    gid_t g;
    ck_assert_uint_eq(sock_mode(&g), 0660);
    ck_assert_uint_eq(g, NOBODY);
}
END_TEST

START_TEST(new_unknown_group_fails_and_leaves_no_socket)
{
    srv = server_free(srv);
    ck_assert_int_ne(access(sock_path, F_OK), 0); /* server_free unlinked it */
    free(cfg.writer_group);
    cfg.writer_group = xstrdup("no-such-group-reld");
    ck_assert_int_eq(server_new(ev, m, &cfg, &srv), -ENOENT);
    ck_assert_ptr_null(srv);
    ck_assert_int_ne(access(sock_path, F_OK), 0);
    free(cfg.writer_group);
    cfg.writer_group = NULL;
    free(cfg.reader_group);
    cfg.reader_group = xstrdup("no-such-group-reld");
    ck_assert_int_eq(server_new(ev, m, &cfg, &srv), -ENOENT);
    ck_assert_int_ne(access(sock_path, F_OK), 0);
    free(cfg.reader_group);
    cfg.reader_group = NULL;
}
END_TEST

START_TEST(new_path_too_long)
{
    srv = server_free(srv);
    char long_path[200];
    memset(long_path, 'x', sizeof(long_path) - 1);
    long_path[0] = '/';
    long_path[sizeof(long_path) - 1] = 0;
    free(cfg.socket_path);
    cfg.socket_path = xstrdup(long_path);
    ck_assert_int_eq(server_new(ev, m, &cfg, &srv), -ENAMETOOLONG);
    ck_assert_ptr_null(srv);
    free(cfg.socket_path);
    cfg.socket_path = xstrdup(sock_path);
}
END_TEST

START_TEST(new_replaces_a_stale_socket_but_not_a_file)
{
    srv = server_free(srv);
    /* A previous reld's socket file, nobody listening. */
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof(a.sun_path), "%s", sock_path);
    ck_assert_int_eq(bind(s, (struct sockaddr *)&a, sizeof(a)), 0);
    close(s);
    start_server();
    json_t *r = one_reply(ask("{\"cmd\": \"releases\"}\n"));
    ck_assert_ok(r);
    json_decref(r);
    /* A regular file there is not ours to delete. */
    srv = server_free(srv);
    put(work, "run/reld.sock", "not a socket\n");
    ck_assert_int_eq(server_new(ev, m, &cfg, &srv), -EADDRINUSE);
    ck_assert_ptr_null(srv);
    struct stat st;
    ck_assert_int_eq(stat(sock_path, &st), 0);
    ck_assert(S_ISREG(st.st_mode));
    unlink(sock_path);
}
END_TEST

/* ---- server_set_rights ---------------------------------------------------------------- */

START_TEST(set_rights_changes_mode_and_access)
{
    char *out = ask_as_nobody("{\"cmd\": \"status\"}\n");
    ck_assert_str_eq(out, "CONNECT: Permission denied");
    free(out);
    DaemonConfig n;
    config_copy(&n, &cfg);
    n.readers_all = true;
    ck_assert_int_eq(server_set_rights(srv, &n), 0);
    ck_assert_uint_eq(sock_mode(NULL), 0666);
    json_t *r = one_reply(ask_as_nobody("{\"cmd\": \"status\"}\n"));
    ck_assert_ok(r);
    json_decref(r);
    /* A group that does not exist: refused, nothing changes. */
    n.readers_all = false;
    n.writer_group = xstrdup("no-such-group-reld");
    ck_assert_int_eq(server_set_rights(srv, &n), -ENOENT);
    ck_assert_uint_eq(sock_mode(NULL), 0666);
    r = one_reply(ask_as_nobody("{\"cmd\": \"status\"}\n"));
    ck_assert_ok(r);
    json_decref(r);
    /* Back to writers only. */
    free(n.writer_group);
    n.writer_group = NULL;
    ck_assert_int_eq(server_set_rights(srv, &n), 0);
    ck_assert_uint_eq(sock_mode(NULL), 0660);
    config_clear(&n);
}
END_TEST

/* ---- server_free ------------------------------------------------------------------------- */

START_TEST(free_unlinks_and_closes_clients)
{
    /* A client whose unpack stalls on a pipe, served when the server goes. */
    int pp[2];
    ck_assert_int_eq(pipe2(pp, O_CLOEXEC), 0);
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof(a.sun_path), "%s", sock_path);
    ck_assert_int_eq(connect(s, (struct sockaddr *)&a, sizeof(a)), 0);
    char cbuf[CMSG_SPACE(sizeof(int))] = {0};
    const char *req = "{\"cmd\": \"unpack\"}\n";
    struct iovec iov = {.iov_base = (char *)req, .iov_len = strlen(req)};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &pp[0], sizeof(int));
    ck_assert_int_eq(sendmsg(s, &mh, 0), (ssize_t)strlen(req));
    close(pp[0]);
    run_for(100);
    srv = server_free(srv);
    ck_assert_int_ne(access(sock_path, F_OK), 0);
    char buf[64];
    ck_assert_int_eq(read(s, buf, sizeof(buf)), 0); /* closed, no reply */
    close(s);
    close(pp[1]); /* the unpack ends, telling nobody */
    run_for(200);
    Diag d = {0};
    json_t *st = manager_status(m, &d);
    ck_assert_ptr_nonnull(st);
    json_decref(st);
}
END_TEST

/* ---- client: one request, one reply ---------------------------------------------------------- */

START_TEST(client_one_request_one_reply)
{
    char *out = ask("{\"cmd\": \"status\"}\n");
    json_t *r = one_reply(out);
    ck_assert_ok(r);
    ck_assert_str_eq(json_string_value(json_object_get(r, "root")), root);
    ck_assert(json_is_array(json_object_get(r, "processes")));
    json_decref(r);
    /* A second request on the same connection is not read: one reply. */
    out = ask("{\"cmd\": \"releases\"}\n{\"cmd\": \"status\"}\n");
    r = one_reply(out);
    ck_assert_ok(r);
    ck_assert(json_is_array(json_object_get(r, "releases")));
    ck_assert_ptr_null(json_object_get(r, "root"));
    json_decref(r);
}
END_TEST

START_TEST(client_request_in_pieces_and_half_closed)
{
    /* Bytes trickle in; the peer shuts its side down after the request. */
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof(a.sun_path), "%s", sock_path);
    ck_assert_int_eq(connect(s, (struct sockaddr *)&a, sizeof(a)), 0);
    const char *parts[] = {"{\"cm", "d\": \"hist", "ory\", \"limit\": 2}", "\n"};
    for (size_t i = 0; i < 4; i++) {
        ck_assert_int_eq(send(s, parts[i], strlen(parts[i]), MSG_NOSIGNAL), (ssize_t)strlen(parts[i]));
        run_for(30);
    }
    shutdown(s, SHUT_WR);
    char *out = xcalloc(1, 1);
    size_t len = 0;
    long long deadline = mono_ms() + 5000;
    for (;;) {
        char buf[4096];
        ssize_t n = recv(s, buf, sizeof(buf), 0);
        if (n > 0) {
            out = xrealloc(out, len + (size_t)n + 1);
            memcpy(out + len, buf, (size_t)n);
            len += (size_t)n;
            out[len] = 0;
        } else if (n == 0 || mono_ms() > deadline) {
            break;
        } else {
            ck_assert_int_ge(sd_event_run(ev, 5000), 0);
        }
    }
    close(s);
    json_t *r = one_reply(out);
    ck_assert_ok(r);
    ck_assert(json_is_array(json_object_get(r, "events")));
    json_decref(r);
}
END_TEST

START_TEST(client_bad_requests)
{
    static const struct {
        const char *req, *error;
    } cases[] = {
        {"{\"cmd\": \"nope\"}\n", "unknown command 'nope'"},
        {"{\"vsn\": \"1\"}\n", "bad request: no cmd"},
        {"{\"cmd\": 5}\n", "bad request: no cmd"},
        {"[\"status\"]\n", "bad request: not a JSON object"},
        {"\"status\"\n", "bad request: "},
        {"{\"cmd\": \"status\"\n", "bad request: "},
        {"status\n", "bad request: "},
        {"\n", "bad request: "},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *out = ask(cases[i].req);
        json_t *r = one_reply(out);
        const char *e = error_of(r);
        ck_assert_msg(strncmp(e, cases[i].error, strlen(cases[i].error)) == 0, "%s -> '%s'", cases[i].req, e);
        json_decref(r);
    }
    /* An unknown command's name is cut in the reply. */
    char big[400] = "{\"cmd\": \"";
    memset(big + strlen(big), 'z', 300);
    strcpy(big + strlen(big), "\"}\n");
    char *out = ask(big);
    json_t *r = one_reply(out);
    ck_assert_uint_lt(strlen(error_of(r)), 100);
    json_decref(r);
}
END_TEST

START_TEST(client_request_longer_than_the_limit)
{
    size_t len = MAX_REQUEST + 4096;
    char *req = xmalloc(len + 1);
    memset(req, ' ', len);
    memcpy(req, "{\"cmd\": \"status\", \"x\": \"", 24);
    req[len] = 0;
    char *out = ask_raw(req, len, -1, false);
    json_t *r = one_reply(out);
    char want[64];
    snprintf(want, sizeof(want), "request longer than %d bytes", MAX_REQUEST);
    ck_assert_str_eq(error_of(r), want);
    json_decref(r);
    free(req);
    /* Exactly the limit with its newline last is served. */
    len = MAX_REQUEST;
    req = xmalloc(len + 1);
    memset(req, ' ', len);
    memcpy(req, "{\"cmd\": \"releases\"}", 19);
    req[len - 1] = '\n';
    req[len] = 0;
    out = ask_raw(req, len, -1, false);
    r = one_reply(out);
    ck_assert_ok(r);
    json_decref(r);
    free(req);
}
END_TEST

START_TEST(client_unpack_with_and_without_its_fd)
{
    json_t *r = one_reply(ask("{\"cmd\": \"unpack\"}\n"));
    ck_assert_str_eq(error_of(r), "unpack needs the tarball's file descriptor passed with the request");
    json_decref(r);
    char *t = release_tarball("1");
    int fd = open(t, O_RDONLY | O_CLOEXEC);
    ck_assert_int_ge(fd, 0);
    char *out = ask_raw("{\"cmd\": \"unpack\"}\n", 18, fd, false);
    close(fd);
    r = one_reply(out);
    ck_assert_ok(r);
    ck_assert_str_eq(json_string_value(json_object_get(r, "release")), "1");
    ck_assert_str_eq(json_string_value(json_object_get(r, "name")), "t");
    json_decref(r);
    free(t);
    /* The same again: proceeds, and says nothing changed. */
    t = release_tarball("1");
    fd = open(t, O_RDONLY | O_CLOEXEC);
    out = ask_raw("{\"cmd\": \"unpack\"}\n", 18, fd, false);
    close(fd);
    r = one_reply(out);
    ck_assert_ok(r);
    ck_assert(json_is_true(json_object_get(r, "unchanged")));
    json_decref(r);
    free(t);
    /* Another content under the same version: refused, with every reason
     * and the warnings. */
    put(src, "releases/1/notes.txt", "not in the first tarball\n");
    t = release_tarball("1");
    fd = open(t, O_RDONLY | O_CLOEXEC);
    out = ask_raw("{\"cmd\": \"unpack\"}\n", 18, fd, false);
    close(fd);
    r = one_reply(out);
    const char *want = "release 1 is already present with different content; give the changed release a new version";
    ck_assert_str_eq(error_of(r), want);
    ck_assert(json_is_array(json_object_get(r, "errors")));
    ck_assert(json_is_array(json_object_get(r, "warnings")));
    ck_assert_str_eq(json_string_value(json_array_get(json_object_get(r, "errors"), 0)), want);
    json_decref(r);
    free(t);
    char *notes = xasprintf("%s/releases/1/notes.txt", src);
    ck_assert_int_eq(unlink(notes), 0);
    free(notes);
}
END_TEST

/* The number of open descriptors: the least of three counts 20 ms apart,
 * the loop running meanwhile (a worker thread may hold one for a moment). */
static size_t n_open_fds(void)
{
    size_t least = SIZE_MAX;
    for (int i = 0; i < 3; i++) {
        if (i)
            run_for(20);
        char *cmd = xasprintf("ls /proc/%d/fd | wc -l", (int)getpid());
        FILE *f = popen(cmd, "r");
        ck_assert_ptr_nonnull(f);
        size_t n = 0;
        ck_assert_int_eq(fscanf(f, "%zu", &n), 1);
        pclose(f);
        free(cmd);
        least = n < least ? n : least;
    }
    return least;
}

START_TEST(client_descriptors_it_does_not_use_are_closed)
{
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    ck_assert_int_ge(fd, 0);
    free(ask("{\"cmd\": \"status\"}\n")); /* whatever reld opens once */
    size_t before = n_open_fds();
    /* With a read command. */
    json_t *r = one_reply(ask_raw("{\"cmd\": \"status\"}\n", 18, fd, false));
    ck_assert_ok(r);
    json_decref(r);
    /* With an unpack that gets two of them. */
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof(a.sun_path), "%s", sock_path);
    ck_assert_int_eq(connect(s, (struct sockaddr *)&a, sizeof(a)), 0);
    char cbuf[CMSG_SPACE(2 * sizeof(int))] = {0};
    const char *req = "{\"cmd\": \"unpack\"}\n";
    struct iovec iov = {.iov_base = (char *)req, .iov_len = strlen(req)};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(2 * sizeof(int));
    int two[2] = {fd, fd};
    memcpy(CMSG_DATA(cm), two, sizeof(two));
    ck_assert_int_eq(sendmsg(s, &mh, 0), (ssize_t)strlen(req));
    char buf[4096];
    ssize_t n = 0, k;
    long long deadline = mono_ms() + 5000;
    while (mono_ms() < deadline) {
        k = recv(s, buf + n, sizeof(buf) - 1 - (size_t)n, MSG_DONTWAIT);
        if (k == 0)
            break;
        if (k > 0)
            n += k;
        else
            ck_assert_int_ge(sd_event_run(ev, 5000), 0);
    }
    buf[n] = 0;
    close(s);
    r = one_reply(xstrdup(buf));
    ck_assert_str_eq(error_of(r), "unpack needs the tarball's file descriptor passed with the request");
    json_decref(r);
    run_for(50);
    /* No more than before (a descriptor of the loop's own may have gone
     * meanwhile): the two it did not use were closed. */
    ck_assert_uint_le(n_open_fds(), before);
    close(fd);
}
END_TEST

START_TEST(client_progress_lines_before_the_reply)
{
    for (int v = 1; v <= 2; v++) {
        char *t = release_tarball(v == 1 ? "1" : "2");
        int fd = open(t, O_RDONLY | O_CLOEXEC);
        char *out = ask_raw("{\"cmd\": \"unpack\"}\n", 18, fd, false);
        close(fd);
        json_t *r = one_reply(out);
        ck_assert_ok(r);
        json_decref(r);
        free(t);
    }
    json_t *r = one_reply(ask("{\"cmd\": \"install\", \"vsn\": \"1\"}\n"));
    ck_assert_ok(r);
    json_decref(r);
    char *out = ask("{\"cmd\": \"upgrade\", \"vsn\": \"2\"}\n");
    /* Lines: {progress, of, instruction}..., then the reply. */
    size_t n_lines = 0, n_progress = 0;
    json_t *last = NULL;
    for (char *line = out, *nl; (nl = strchr(line, '\n')); line = nl + 1) {
        json_decref(last);
        last = json_loadb(line, (size_t)(nl - line), 0, NULL);
        ck_assert_msg(json_is_object(last), "line %zu is not JSON: %s", n_lines, out);
        if (json_object_get(last, "progress")) {
            n_progress++;
            ck_assert_int_eq(json_integer_value(json_object_get(last, "progress")), (json_int_t)n_progress);
            ck_assert(json_is_integer(json_object_get(last, "of")));
            ck_assert(json_is_string(json_object_get(last, "instruction")));
        }
        n_lines++;
    }
    ck_assert_ptr_nonnull(last);
    ck_assert_ok(last);
    ck_assert_str_eq(json_string_value(json_object_get(last, "installed")), "2");
    ck_assert_int_ge(n_progress, 1);
    ck_assert_int_eq(n_lines, n_progress + 1);
    ck_assert_int_eq(json_integer_value(json_object_get(last, "instructions")), (json_int_t)n_progress);
    json_decref(last);
    free(out);
}
END_TEST

static double cpu_seconds(void)
{
    struct rusage ru;
    ck_assert_int_eq(getrusage(RUSAGE_SELF, &ru), 0);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           (double)ru.ru_stime.tv_usec / 1e6;
}

START_TEST(client_gone_while_its_operation_runs)
{
    /* An unpack stalled on a pipe; its client closes the connection. */
    int pp[2];
    ck_assert_int_eq(pipe2(pp, O_CLOEXEC), 0);
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof(a.sun_path), "%s", sock_path);
    ck_assert_int_eq(connect(s, (struct sockaddr *)&a, sizeof(a)), 0);
    char cbuf[CMSG_SPACE(sizeof(int))] = {0};
    const char *req = "{\"cmd\": \"unpack\"}\n";
    struct iovec iov = {.iov_base = (char *)req, .iov_len = strlen(req)};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &pp[0], sizeof(int));
    ck_assert_int_eq(sendmsg(s, &mh, 0), (ssize_t)strlen(req));
    close(pp[0]);
    run_for(100);
    close(s);
    /* reld waits for the unpack without spinning on the closed connection. */
    double cpu0 = cpu_seconds();
    long long t0 = mono_ms();
    run_for(500);
    double cpu = cpu_seconds() - cpu0;
    long long waited = mono_ms() - t0;
    /* Still serving. */
    json_t *r = one_reply(ask("{\"cmd\": \"status\"}\n"));
    ck_assert_ok(r);
    json_decref(r);
    /* The unpack ends (an empty archive), telling nobody. */
    close(pp[1]);
    run_for(300);
    ck_assert_msg(cpu < 0.15, "%.3f s of CPU in %lld ms of waiting: the loop spins", cpu, waited);
    r = one_reply(ask("{\"cmd\": \"releases\"}\n"));
    ck_assert_ok(r);
    json_decref(r);
    /* A real one, whose client goes at once: recorded all the same. */
    char *t = release_tarball("1");
    int fd = open(t, O_RDONLY | O_CLOEXEC);
    s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_eq(connect(s, (struct sockaddr *)&a, sizeof(a)), 0);
    memcpy(CMSG_DATA(cm), &fd, sizeof(int));
    ck_assert_int_eq(sendmsg(s, &mh, 0), (ssize_t)strlen(req));
    close(fd);
    close(s);
    long long deadline = mono_ms() + 5000;
    bool seen = false;
    while (!seen && mono_ms() < deadline) {
        run_for(50);
        char *out = ask("{\"cmd\": \"releases\"}\n");
        seen = strstr(out, "\"vsn\":\"1\"") != NULL;
        free(out);
    }
    ck_assert_msg(seen, "the unpack of a vanished client was not recorded");
    free(t);
}
END_TEST

/* ---- every request is answered, in valid UTF-8 (issue 11, item 7) ------------------------- */

START_TEST(reply_to_a_parse_error_that_cuts_a_character)
{
    /* jansson quotes the token up to the bad escape: the first byte of
     * 'é' (0xc3 0xa9), cut from its second. */
    json_t *r = one_reply(ask("{\"cmd\": \"\\\xc3\xa9\"}\n"));
    ck_assert_str_eq(error_of(r), "bad request: invalid escape near '\"\\\\xc3'");
    json_decref(r);
    r = one_reply(ask("{\"cmd\": \"\\u12\xe2\x82\xac\"}\n"));
    ck_assert_str_eq(error_of(r), "bad request: invalid escape near '\"\\u12\\xe2'");
    json_decref(r);
    /* An unknown command's name is cut at 64 bytes, between characters. */
    char req[256] = "{\"cmd\": \"x";
    for (int i = 0; i < 40; i++)
        strcat(req, "\xc3\xa9");
    strcat(req, "\"}\n");
    r = one_reply(ask(req));
    char want[128] = "unknown command 'x";
    for (int i = 0; i < 31; i++)
        strcat(want, "\xc3\xa9");
    strcat(want, "'");
    ck_assert_str_eq(error_of(r), want);
    json_decref(r);
    /* Before the permission check: anyone who can connect is answered. */
    restart_server("reader_group: daemon\n");
    r = one_reply(ask_as_nobody("{\"cmd\": \"\\\xc3\xa9\"}\n"));
    ck_assert_str_eq(error_of(r), "bad request: invalid escape near '\"\\\\xc3'");
    json_decref(r);
}
END_TEST

START_TEST(reply_to_a_refused_unpack_whose_reason_is_not_utf8)
{
    put(src,
        "\xff"
        "evil/x\xfe",
        "x\n");
    char *t = xasprintf("%s/bad.tar.gz", work);
    char *cmd = xasprintf("tar -C '%s' -czf '%s' releases/1 lib/a-1 '\xff"
                          "evil'",
                          src, t);
    ck_assert_int_eq(system(cmd), 0);
    free(cmd);
    int fd = open(t, O_RDONLY | O_CLOEXEC);
    ck_assert_int_ge(fd, 0);
    json_t *r = one_reply(ask_raw("{\"cmd\": \"unpack\"}\n", 18, fd, false));
    close(fd);
    const char *e = error_of(r);
    ck_assert_msg(strstr(e, "\\xffevil") && strstr(e, "not part of a release tarball"), "%s", e);
    json_t *errors = json_object_get(r, "errors");
    ck_assert_uint_ge(json_array_size(errors), 1);
    ck_assert_str_eq(json_string_value(json_array_get(errors, 0)), e);
    json_decref(r);
    free(t);
    /* Nothing was unpacked. */
    r = one_reply(ask("{\"cmd\": \"releases\"}\n"));
    ck_assert_uint_eq(json_array_size(json_object_get(r, "releases")), 0);
    json_decref(r);
}
END_TEST

/* A client on a socketpair, without the server: its request handler does
 * what the test says. */
static enum { DIRECT_UNENCODABLE, DIRECT_HUGE } direct_mode;
static bool direct_gone;

static void direct_request(Client *c, json_t *req, void *userdata)
{
    if (direct_mode == DIRECT_UNENCODABLE) {
        /* Text jansson cannot encode (made without its check). */
        client_send(c, json_pack("{s:o}", "progress", json_stringn_nocheck("\xff", 1)));
        client_reply_ok(c, json_pack("{s:o}", "release", json_stringn_nocheck("1\xff", 2)));
        return;
    }
    size_t n = 4 << 20; /* far more than the socket buffers take */
    char *big = xmalloc(n + 1);
    memset(big, 'x', n);
    big[n] = 0;
    client_reply_ok(c, json_pack("{s:s}", "big", big));
    free(big);
}

static void direct_on_gone(Client *c, void *userdata)
{
    direct_gone = true;
}

static int direct_client(uint64_t timeout_usec)
{
    int sp[2];
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sp), 0);
    struct ucred cred = {.pid = getpid(), .uid = getuid(), .gid = getgid()};
    ClientHandlers h = {.request = direct_request, .gone = direct_on_gone};
    Client *c = NULL;
    direct_gone = false;
    ck_assert_int_eq(client_new(ev, sp[0], &cred, true, true, timeout_usec, &h, &c), 0);
    ck_assert_int_eq(send(sp[1], "{\"cmd\": \"x\"}\n", 13, MSG_NOSIGNAL), 13);
    return sp[1];
}

START_TEST(reply_that_cannot_be_encoded_is_a_fixed_refusal)
{
    direct_mode = DIRECT_UNENCODABLE;
    int s = direct_client(0);
    char *out = xcalloc(1, 1);
    size_t len = 0;
    long long deadline = mono_ms() + 5000;
    while (!direct_gone && mono_ms() < deadline)
        ck_assert_int_ge(sd_event_run(ev, 10000), 0);
    for (;;) {
        char buf[4096];
        ssize_t n = recv(s, buf, sizeof(buf), 0);
        if (n <= 0)
            break;
        out = xrealloc(out, len + (size_t)n + 1);
        memcpy(out + len, buf, (size_t)n);
        len += (size_t)n;
        out[len] = 0;
    }
    close(s);
    ck_assert(direct_gone);
    /* The progress line is left out; the reply is a refusal. */
    json_t *r = one_reply(out);
    ck_assert_str_eq(error_of(r), "reld could not encode its reply (see its log)");
    json_decref(r);
}
END_TEST

/* ---- idle connections and the cap (issue 11, item 10) ---------------------------------------- */

static int connect_nb(const char *path)
{
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    ck_assert_int_ge(s, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
    ck_assert_msg(connect(s, (struct sockaddr *)&a, sizeof(a)) == 0, "connect: %s", strerror(errno));
    return s;
}

/* What reld sent on s until now (caller frees), and whether it closed. */
static char *drain(int s, bool *closed)
{
    char *out = xcalloc(1, 1);
    size_t len = 0;
    *closed = false;
    for (;;) {
        char buf[4096];
        ssize_t n = recv(s, buf, sizeof(buf), MSG_DONTWAIT);
        if (n > 0) {
            out = xrealloc(out, len + (size_t)n + 1);
            memcpy(out + len, buf, (size_t)n);
            len += (size_t)n;
            out[len] = 0;
            continue;
        }
        *closed = n == 0 || errno != EAGAIN;
        return out;
    }
}

/* Runs the loop for ms; the number of its iterations that dispatched
 * something, and the CPU time used meanwhile. */
static long run_counting(int ms, double *cpu)
{
    double cpu0 = cpu_seconds();
    long n = 0;
    long long deadline = mono_ms() + ms;
    while (mono_ms() < deadline) {
        int r = sd_event_run(ev, 10000);
        ck_assert_int_ge(r, 0);
        n += r > 0;
    }
    *cpu = cpu_seconds() - cpu0;
    return n;
}

START_TEST(idle_connections_are_closed)
{
    server_set_limits(srv, 0, 300000);
    int silent = connect_nb(sock_path), half = connect_nb(sock_path);
    ck_assert_int_eq(send(half, "{\"cmd\": \"rel", 12, MSG_NOSIGNAL), 12);
    /* One waiting for a long operation (an unpack stalled on a pipe) is not idle. */
    int pp[2];
    ck_assert_int_eq(pipe2(pp, O_CLOEXEC), 0);
    int busy = connect_nb(sock_path);
    char cbuf[CMSG_SPACE(sizeof(int))] = {0};
    const char *req = "{\"cmd\": \"unpack\"}\n";
    struct iovec iov = {.iov_base = (char *)req, .iov_len = strlen(req)};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &pp[0], sizeof(int));
    ck_assert_int_eq(sendmsg(busy, &mh, 0), (ssize_t)strlen(req));
    close(pp[0]);
    run_for(1000);
    bool closed;
    const int idle[] = {silent, half};
    for (size_t i = 0; i < 2; i++) {
        json_t *r = one_reply(drain(idle[i], &closed));
        ck_assert_msg(closed, "an idle connection is still open");
        ck_assert_str_eq(error_of(r), "no complete request within 0.3 s: connection closed");
        json_decref(r);
        close(idle[i]);
    }
    char *out = drain(busy, &closed);
    ck_assert_msg(!closed && !*out, "a connection waiting for its unpack was closed: '%s'", out);
    /* The unpack ends (an empty archive): its reply comes. */
    close(pp[1]);
    long long deadline = mono_ms() + 5000;
    while (!closed && mono_ms() < deadline) {
        run_for(20);
        free(out);
        out = drain(busy, &closed);
    }
    close(busy);
    json_t *r = one_reply(out);
    ck_assert_msg(strstr(error_of(r), "empty archive"), "%s", error_of(r));
    json_decref(r);
    /* A peer that does not read its reply is closed too. */
    direct_mode = DIRECT_HUGE;
    int s = direct_client(300000);
    deadline = mono_ms() + 5000;
    while (!direct_gone && mono_ms() < deadline)
        ck_assert_int_ge(sd_event_run(ev, 10000), 0);
    ck_assert_msg(direct_gone, "a client that does not read its reply is still there");
    free(drain(s, &closed));
    ck_assert(closed);
    close(s);
}
END_TEST

START_TEST(cap_new_connections_wait_without_spinning)
{
    server_set_limits(srv, 3, 0);
    int held[3];
    for (int i = 0; i < 3; i++)
        held[i] = connect_nb(sock_path);
    run_for(100);
    int waiting = connect_nb(sock_path); /* queued in the backlog */
    ck_assert_int_eq(send(waiting, "{\"cmd\": \"status\"}\n", 18, MSG_NOSIGNAL), 18);
    double cpu;
    long n = run_counting(1000, &cpu);
    bool closed;
    char *out = drain(waiting, &closed);
    ck_assert_msg(!closed && !*out, "a connection over the cap was served: '%s'", out);
    free(out);
    ck_assert_msg(n < 20 && cpu < 0.15, "at the cap the loop ran %ld times, %.3f s of CPU in 1 s: it spins", n, cpu);
    /* One closes: the waiting one is served. */
    close(held[0]);
    long long deadline = mono_ms() + 5000;
    out = xcalloc(1, 1);
    while (!closed && mono_ms() < deadline) {
        run_for(20);
        free(out);
        out = drain(waiting, &closed);
    }
    close(waiting);
    json_t *r = one_reply(out);
    ck_assert_ok(r);
    json_decref(r);
    /* Raising the cap takes more at once. */
    server_set_limits(srv, 0, 0);
    r = one_reply(ask("{\"cmd\": \"releases\"}\n"));
    ck_assert_ok(r);
    json_decref(r);
    close(held[1]);
    close(held[2]);
}
END_TEST

/* The child of emfile_*: a server of its own on path, with two file
 * descriptors left; it reports its loop's iterations and CPU time over
 * 1 s at EMFILE, then serves until ctl closes. Exit status: 0, or what
 * failed. */
typedef struct EmfileReport {
    long iterations;
    double cpu;
} EmfileReport;

static int emfile_child(const char *path, int ready, int ctl, int report)
{
    sd_event *e2 = NULL;
    if (sd_event_new(&e2) < 0)
        return 10;
    DaemonConfig c2;
    config_copy(&c2, &cfg);
    free(c2.socket_path);
    c2.socket_path = xstrdup(path);
    Server *s2 = NULL;
    if (server_new(e2, m, &c2, &s2) < 0) /* m: only for requests that never reach it */
        return 11;
    /* The limit: two free descriptors below it. */
    int free_fds = 0, fd = 0;
    for (; free_fds < 2; fd++)
        if (fcntl(fd, F_GETFD) < 0 && errno == EBADF)
            free_fds++;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return 12;
    rl.rlim_cur = (rlim_t)fd;
    if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
        return 13;
    char go;
    if (write(ready, "r", 1) != 1 || read(ctl, &go, 1) != 1)
        return 14;
    /* The parent's clients connected: two are taken, then EMFILE. */
    long long deadline = mono_ms() + 300;
    while (mono_ms() < deadline)
        if (sd_event_run(e2, 10000) < 0)
            return 15;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu0 = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
                  (double)ru.ru_stime.tv_usec / 1e6;
    EmfileReport rep = {0};
    deadline = mono_ms() + 1000;
    while (mono_ms() < deadline) {
        int r = sd_event_run(e2, 10000);
        if (r < 0)
            return 16;
        rep.iterations += r > 0;
    }
    getrusage(RUSAGE_SELF, &ru);
    rep.cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
              (double)ru.ru_stime.tv_usec / 1e6 - cpu0;
    if (write(report, &rep, sizeof(rep)) != (ssize_t)sizeof(rep))
        return 17;
    /* Serve until the parent is done. */
    if (fcntl(ctl, F_SETFL, O_NONBLOCK) < 0)
        return 18;
    deadline = mono_ms() + 20000;
    while (mono_ms() < deadline && read(ctl, &go, 1) < 0 && errno == EAGAIN)
        if (sd_event_run(e2, 10000) < 0)
            return 19;
    server_free(s2);
    sd_event_unref(e2);
    config_clear(&c2);
    return 0;
}

START_TEST(emfile_pauses_accept_without_spinning)
{
    char *path = xasprintf("%s/run/emfile.sock", work);
    int ready[2], ctl[2], report[2];
    ck_assert_int_eq(pipe2(ready, O_CLOEXEC), 0);
    ck_assert_int_eq(pipe2(ctl, O_CLOEXEC), 0);
    ck_assert_int_eq(pipe2(report, O_CLOEXEC), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        close(ready[0]);
        close(ctl[1]);
        close(report[0]);
        _exit(emfile_child(path, ready[1], ctl[0], report[1]));
    }
    close(ready[1]);
    close(ctl[0]);
    close(report[1]);
    char c;
    ck_assert_int_eq(read(ready[0], &c, 1), 1);
    enum { K = 6 };
    int s[K];
    for (int i = 0; i < K; i++)
        s[i] = connect_nb(path);
    ck_assert_int_eq(write(ctl[1], "g", 1), 1);
    EmfileReport rep;
    ck_assert_int_eq(read(report[0], &rep, sizeof(rep)), (ssize_t)sizeof(rep));
    /* Now every connection asks: all are answered as descriptors free up. */
    for (int i = 0; i < K; i++)
        ck_assert_int_eq(send(s[i], "{\"cmd\": \"nope\"}\n", 16, MSG_NOSIGNAL), 16);
    int answered = 0;
    char *outs[K] = {0};
    bool done[K] = {0};
    long long deadline = mono_ms() + 10000;
    while (answered < K && mono_ms() < deadline) {
        usleep(10 * 1000);
        for (int i = 0; i < K; i++) {
            if (done[i])
                continue;
            bool closed;
            char *more = drain(s[i], &closed);
            char *joined = xasprintf("%s%s", outs[i] ? outs[i] : "", more);
            free(more);
            free(outs[i]);
            outs[i] = joined;
            if (closed) {
                done[i] = true;
                answered++;
            }
        }
    }
    ck_assert_int_eq(write(ctl[1], "q", 1), 1);
    int status = 0;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the server's child failed: %d", status);
    ck_assert_msg(rep.iterations < 20 && rep.cpu < 0.15,
                  "at EMFILE the loop ran %ld times, %.3f s of CPU in 1 s: it spins", rep.iterations, rep.cpu);
    ck_assert_int_eq(answered, K);
    for (int i = 0; i < K; i++) {
        json_t *r = one_reply(outs[i]);
        ck_assert_str_eq(error_of(r), "unknown command 'nope'");
        json_decref(r);
        close(s[i]);
    }
    close(ready[0]);
    close(ctl[1]);
    close(report[0]);
    free(path);
}
END_TEST

/* ---- commands: fields --------------------------------------------------------------------- */

START_TEST(commands_version_fields_are_versions)
{
    static const char *const reqs[] = {
        "{\"cmd\": \"make-permanent\", \"vsn\": 1}\n",
        "{\"cmd\": \"make-permanent\", \"vsn\": null}\n",
        "{\"cmd\": \"make-permanent\", \"vsn\": \"../1\"}\n",
        "{\"cmd\": \"install\", \"vsn\": [\"1\"]}\n",
        "{\"cmd\": \"upgrade\", \"vsn\": \"\"}\n",
        "{\"cmd\": \"downgrade\", \"vsn\": \"\xc3\xa9\"}\n",
        "{\"cmd\": \"remove\", \"vsn\": {}}\n",
        "{\"cmd\": \"relup\", \"from\": \"1\", \"to\": 2}\n",
    };
    for (size_t i = 0; i < sizeof(reqs) / sizeof(reqs[0]); i++) {
        json_t *r = one_reply(ask(reqs[i]));
        const char *e = error_of(r);
        ck_assert_msg(strncmp(e, "bad request: ", 13) == 0 && strstr(e, "is not a release version"), "%s -> %s",
                      reqs[i], e);
        json_decref(r);
    }
}
END_TEST

/* ---- commands: who may do what ---------------------------------------------------------------- */

static const char *const write_cmds[] = {"unpack", "install", "upgrade", "downgrade", "remove", "make-permanent"};
static const char *const read_cmds[] = {"releases", "history", "status", "relup"};

/* The reply to cmd as uid nobody with groups, parsed (one line). */
static json_t *nobody_asks(const char *cmd, gid_t gid, const gid_t *groups, size_t n_groups)
{
    char *req = xasprintf("{\"cmd\": \"%s\", \"vsn\": \"9\", \"from\": \"8\", \"to\": \"9\"}\n", cmd);
    char *out = ask_as(NOBODY, gid, groups, n_groups, req);
    json_t *r = one_reply(out);
    free(req);
    return r;
}

static bool is_write_refusal(json_t *r)
{
    const char *e = json_string_value(json_object_get(r, "error"));
    static const char head[] = "permission denied: nobody (uid 65534, pid ";
    return e && strncmp(e, head, sizeof(head) - 1) == 0 &&
           strstr(e, ") may not change releases (see writer_group/reader_group in reld's config)");
}

static bool is_read_refusal(json_t *r)
{
    const char *e = json_string_value(json_object_get(r, "error"));
    static const char head[] = "permission denied: nobody (uid 65534, pid ";
    return e && strncmp(e, head, sizeof(head) - 1) == 0 &&
           strstr(e, ") may not read reld's state (see writer_group/reader_group in reld's config)");
}

START_TEST(access_root_may_do_everything)
{
    for (size_t i = 0; i < sizeof(write_cmds) / sizeof(write_cmds[0]); i++) {
        char *req = xasprintf("{\"cmd\": \"%s\", \"vsn\": \"9\"}\n", write_cmds[i]);
        json_t *r = one_reply(ask(req));
        ck_assert_msg(!is_write_refusal(r), "%s refused to root", write_cmds[i]);
        json_decref(r);
        free(req);
    }
    for (size_t i = 0; i < sizeof(read_cmds) / sizeof(read_cmds[0]); i++) {
        char *req = xasprintf("{\"cmd\": \"%s\"}\n", read_cmds[i]);
        json_t *r = one_reply(ask(req));
        ck_assert_msg(!is_read_refusal(r), "%s refused to root", read_cmds[i]);
        json_decref(r);
        free(req);
    }
}
END_TEST

START_TEST(access_readers_all_reads_but_does_not_write)
{
    restart_server("readers: all\n");
    for (size_t i = 0; i < sizeof(write_cmds) / sizeof(write_cmds[0]); i++) {
        json_t *r = nobody_asks(write_cmds[i], NOBODY, NULL, 0);
        ck_assert_msg(is_write_refusal(r), "%s as nobody: %s", write_cmds[i],
                      json_string_value(json_object_get(r, "error")));
        json_decref(r);
    }
    for (size_t i = 0; i < sizeof(read_cmds) / sizeof(read_cmds[0]); i++) {
        json_t *r = nobody_asks(read_cmds[i], NOBODY, NULL, 0);
        ck_assert_msg(!is_read_refusal(r), "%s refused to nobody with readers: all", read_cmds[i]);
        json_decref(r);
    }
    json_t *r = nobody_asks("status", NOBODY, NULL, 0);
    ck_assert_ok(r);
    json_decref(r);
}
END_TEST

START_TEST(access_reader_group_by_primary_and_supplementary_group)
{
    /* nogroup: nobody's primary group. */
    restart_server("reader_group: nogroup\n");
    json_t *r = nobody_asks("releases", NOBODY, NULL, 0);
    ck_assert_ok(r);
    json_decref(r);
    r = nobody_asks("remove", NOBODY, NULL, 0);
    ck_assert(is_write_refusal(r));
    json_decref(r);
    /* daemon (gid 1) as a supplementary group only (SO_PEERGROUPS). */
    restart_server("reader_group: daemon\n");
    gid_t daemon_gid = 1;
    r = nobody_asks("history", NOBODY, &daemon_gid, 1);
    ck_assert_ok(r);
    json_decref(r);
    /* Not a member: the socket is reachable (0666), reading is refused. */
    r = nobody_asks("status", NOBODY, NULL, 0);
    ck_assert_msg(is_read_refusal(r), "%s", json_string_value(json_object_get(r, "error")));
    json_decref(r);
    r = nobody_asks("make-permanent", NOBODY, NULL, 0);
    ck_assert(is_write_refusal(r));
    json_decref(r);
}
END_TEST

START_TEST(access_writer_group_may_write)
{
    restart_server("writer_group: daemon\n");
    ck_assert_int_eq(chmod(sock_path, 0666), 0); /* not a member would otherwise not connect at all */
    gid_t daemon_gid = 1;
    json_t *r = nobody_asks("remove", NOBODY, &daemon_gid, 1);
    ck_assert_msg(!is_write_refusal(r), "a writer_group member was refused");
    ck_assert_str_eq(error_of(r), "release 9 is not known");
    json_decref(r);
    r = nobody_asks("status", NOBODY, &daemon_gid, 1);
    ck_assert_ok(r); /* writers read */
    json_decref(r);
    r = nobody_asks("remove", NOBODY, NULL, 0);
    ck_assert(is_write_refusal(r));
    json_decref(r);
    r = nobody_asks("status", NOBODY, NULL, 0);
    ck_assert(is_read_refusal(r));
    json_decref(r);
}
END_TEST

static Suite *server_suite(void)
{
    Suite *s = suite_create("server");
    struct {
        const char *name;
        const TTest *tests[10];
    } cases[] = {
        {"server_new",
         {new_socket_0660_when_only_writers_read, new_socket_0666_with_readers_all, new_socket_0666_with_a_reader_group,
          new_socket_group_is_the_writer_group, new_unknown_group_fails_and_leaves_no_socket, new_path_too_long,
          new_replaces_a_stale_socket_but_not_a_file}},
        {"server_set_rights", {set_rights_changes_mode_and_access}},
        {"server_free", {free_unlinks_and_closes_clients}},
        {"client",
         {client_one_request_one_reply, client_request_in_pieces_and_half_closed, client_bad_requests,
          client_request_longer_than_the_limit, client_unpack_with_and_without_its_fd,
          client_descriptors_it_does_not_use_are_closed, client_progress_lines_before_the_reply,
          client_gone_while_its_operation_runs}},
        {"commands",
         {access_root_may_do_everything, access_readers_all_reads_but_does_not_write,
          access_reader_group_by_primary_and_supplementary_group, access_writer_group_may_write,
          commands_version_fields_are_versions}},
        {"replies",
         {reply_to_a_parse_error_that_cuts_a_character, reply_to_a_refused_unpack_whose_reason_is_not_utf8,
          reply_that_cannot_be_encoded_is_a_fixed_refusal}},
        {"connections",
         {idle_connections_are_closed, cap_new_connections_wait_without_spinning,
          emfile_pauses_accept_without_spinning}},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        TCase *tc = tcase_create(cases[i].name);
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 60);
        for (size_t k = 0; k < sizeof(cases[i].tests) / sizeof(cases[i].tests[0]) && cases[i].tests[k]; k++)
            tcase_add_test(tc, cases[i].tests[k]);
        suite_add_tcase(s, tc);
    }
    return s;
}

int main(void)
{
    return test_run_daemon_suite(server_suite());
}
