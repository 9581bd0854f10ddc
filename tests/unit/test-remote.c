/* remote (relctl -H): the host's forms, the shell quoting, and the plan:
 * ssh's argv, what is streamed and what is refused. One TCase per function. */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "remote.h"
#include "testlib.h"

static void host_ok(const char *spec, const char *user, const char *host, const char *port)
{
    RemoteHost h;
    char *err = NULL;
    int r = remote_parse_host(spec, &h, &err);
    ck_assert_msg(r == 0, "%s: %s", spec, err ? err : "?");
    ck_assert_msg((user == NULL) == (h.user == NULL) && (!user || strcmp(user, h.user) == 0), "%s: user", spec);
    ck_assert_str_eq(h.host, host);
    ck_assert_msg((port == NULL) == (h.port == NULL) && (!port || strcmp(port, h.port) == 0), "%s: port", spec);
    remote_host_clear(&h);
}

static void host_bad(const char *spec, const char *want)
{
    RemoteHost h;
    char *err = NULL;
    ck_assert_int_eq(remote_parse_host(spec, &h, &err), -EINVAL);
    ck_assert_msg(err && strstr(err, want), "%s: '%s' not in '%s'", spec, want, err ? err : "(none)");
    ck_assert_ptr_null(h.host);
    free(err);
}

START_TEST(parse_host_forms)
{
    host_ok("node1", NULL, "node1", NULL);
    host_ok("deploy@node1", "deploy", "node1", NULL);
    host_ok("deploy@node1:2222", "deploy", "node1", "2222");
    host_ok("127.0.0.1:22", NULL, "127.0.0.1", "22");
    host_ok("::1", NULL, "::1", NULL); /* a bare IPv6 address has no port */
    host_ok("[::1]:2201", NULL, "::1", "2201");
    host_ok("root@[fe80::1%eth0]", "root", "fe80::1%eth0", NULL);
    host_ok("a@b@node", "a@b", "node", NULL); /* the last '@' separates, as ssh does */
    host_ok("node:65535", NULL, "node", "65535");
}
END_TEST

START_TEST(parse_host_refusals)
{
    host_bad("", "no host name");
    host_bad("deploy@", "no host name");
    host_bad("@node", "no user name");
    host_bad("-oProxyCommand=x", "cannot start with '-'");
    host_bad("-l@node", "cannot start with '-'");
    host_bad("node:0", "port");
    host_bad("node:65536", "port");
    host_bad("node:22x", "port");
    host_bad("node:", "port");
    host_bad("node:022", "port");
    host_bad("[::1", "brackets");
    host_bad("[::1]x", "brackets");
    host_bad("no de", "no host name");
    host_bad("n\x01", "no host name");
    host_bad("n\xc3\xa9", "no host name");
}
END_TEST

START_TEST(quote_for_the_shell)
{
    static const char *const cases[][2] = {
        {"install", "'install'"}, {"", "''"},
        {"it's", "'it'\\''s'"},   {"$(reboot) `x` \"y\" \\ ; |", "'$(reboot) `x` \"y\" \\ ; |'"},
        {"a\nb", "'a\nb'"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *q = remote_quote(cases[i][0]);
        ck_assert_str_eq(q, cases[i][1]);
        free(q);
    }
    /* The real shell gives back every byte. */
    char *q = remote_quote("it's $HOME `x` \\n 'q'");
    char *cmd = xasprintf("printf %%s %s", q);
    FILE *p = popen(cmd, "r");
    char buf[256] = {0};
    size_t n = p ? fread(buf, 1, sizeof(buf) - 1, p) : 0;
    ck_assert_int_eq(p ? pclose(p) : -1, 0);
    ck_assert_str_eq(buf, "it's $HOME `x` \\n 'q'");
    ck_assert_uint_gt(n, 0);
    free(cmd);
    free(q);
}
END_TEST

START_TEST(wanted)
{
    char *a1[] = {"relctl", "-H", "n", "status", NULL};
    char *a2[] = {"relctl", "status", "--host=n", NULL};
    char *a3[] = {"relctl", "-Hn", "status", NULL};
    char *a4[] = {"relctl", "status", "--json", NULL};
    char *a5[] = {"relctl", "status", "--", "-H", NULL};
    ck_assert(remote_wanted(4, a1));
    ck_assert(remote_wanted(3, a2));
    ck_assert(remote_wanted(3, a3));
    ck_assert(!remote_wanted(3, a4));
    ck_assert(!remote_wanted(4, a5));
}
END_TEST

/* ssh's argv as one line, for comparisons. */
static char *joined(const RemotePlan *p)
{
    char *s = xstrdup("");
    for (size_t i = 0; i < p->ssh_argv.n; i++) {
        char *t = xasprintf("%s%s[%s]", s, i ? " " : "", p->ssh_argv.v[i]);
        free(s);
        s = t;
    }
    ck_assert_ptr_null(p->ssh_argv.v[p->ssh_argv.n]);
    return s;
}

static char *plan_of(char **argv, RemotePlan *p)
{
    int argc = 0;
    while (argv[argc])
        argc++;
    char *err = NULL;
    int r = remote_plan(argc, argv, "ssh", p, &err);
    ck_assert_msg(r == 0, "%s", err ? err : "?");
    return joined(p);
}

START_TEST(plan_commands)
{
    RemotePlan p;
    char *a1[] = {"relctl", "-H", "deploy@n1:2201", "status", "--json", NULL};
    char *s = plan_of(a1, &p);
    ck_assert_str_eq(s, "[ssh] [-n] [-p] [2201] [--] [deploy@n1] [relctl 'status' '--json']");
    ck_assert_ptr_null(p.stream);
    free(s);
    remote_plan_clear(&p);
    /* --socket goes along (the path is the remote machine's); options anywhere */
    char *a2[] = {"relctl", "--socket", "/run/x y.sock", "upgrade", "2", "--host", "n1", "--min-healthy", "100", NULL};
    s = plan_of(a2, &p);
    ck_assert_str_eq(s, "[ssh] [-n] [--] [n1] [relctl '--socket' '/run/x y.sock' 'upgrade' '2' '--min-healthy' "
                        "'100']");
    ck_assert_ptr_null(p.stream);
    free(s);
    remote_plan_clear(&p);
    /* install of a version: sent as it is */
    char *a3[] = {"relctl", "install", "2.7", "-H[::1]:22", "--commit", NULL};
    s = plan_of(a3, &p);
    ck_assert_str_eq(s, "[ssh] [-n] [-p] [22] [--] [::1] [relctl 'install' '2.7' '--commit']");
    free(s);
    remote_plan_clear(&p);
    /* after "--" every word is an argument, -H among them; --watch 2 is an option and its value */
    char *a4[] = {"relctl", "--watch", "2", "-H", "n1", "status", "--", "-H", "x", NULL};
    s = plan_of(a4, &p);
    ck_assert_str_eq(s, "[ssh] [-n] [--] [n1] [relctl '--watch' '2' 'status' '--' '-H' 'x']");
    free(s);
    remote_plan_clear(&p);
}
END_TEST

START_TEST(plan_streams_a_local_tarball)
{
    char dir[] = "/tmp/test-remote-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char *tar = xasprintf("%s/kv-2.tar.gz", dir);
    FILE *f = fopen(tar, "w");
    ck_assert_ptr_nonnull(f);
    fclose(f);
    RemotePlan p;
    char *a1[] = {"relctl", "-H", "n1", "install", "--json", tar, NULL};
    char *s = plan_of(a1, &p);
    ck_assert_str_eq(s, "[ssh] [--] [n1] [relctl 'install' '--json' '-']");
    ck_assert_str_eq(p.stream, tar);
    char *sig = xasprintf("%s.minisig", tar);
    ck_assert_str_eq(p.signature, sig); /* FILE.minisig, if it is there */
    ck_assert(!p.signature_set);
    free(s);
    remote_plan_clear(&p);
    char *a2[] = {"relctl", "unpack", "--signature", "/k/s.minisig", tar, "-H", "n1", NULL};
    s = plan_of(a2, &p);
    ck_assert_str_eq(s, "[ssh] [--] [n1] [relctl 'unpack' '-']");
    ck_assert_str_eq(p.signature, "/k/s.minisig");
    ck_assert(p.signature_set);
    free(s);
    remote_plan_clear(&p);
    char *a3[] = {"relctl", "-H", "n1", "install", "-", NULL}; /* standard input: no signature unless named */
    s = plan_of(a3, &p);
    ck_assert_str_eq(s, "[ssh] [--] [n1] [relctl 'install' '-']");
    ck_assert_str_eq(p.stream, "-");
    ck_assert_ptr_null(p.signature);
    free(s);
    remote_plan_clear(&p);
    char *a4[] = {"relctl",  "-H", "n1",
                  "upgrade", tar,  NULL}; /* a version there: the remote relctl says what is wrong */
    s = plan_of(a4, &p);
    char *want = xasprintf("[ssh] [-n] [--] [n1] [relctl 'upgrade' '%s']", tar);
    ck_assert_str_eq(s, want);
    ck_assert_ptr_null(p.stream);
    free(want);
    free(s);
    remote_plan_clear(&p);
    ck_assert_int_eq(unlink(tar), 0);
    ck_assert_int_eq(rmdir(dir), 0);
    free(sig);
    free(tar);
}
END_TEST

static void plan_bad(char **argv, int want, const char *msg)
{
    int argc = 0;
    while (argv[argc])
        argc++;
    RemotePlan p;
    char *err = NULL;
    ck_assert_int_eq(remote_plan(argc, argv, "ssh", &p, &err), want);
    ck_assert_msg(err && strstr(err, msg), "'%s' not in '%s'", msg, err ? err : "(none)");
    ck_assert_ptr_null(p.ssh_argv.v);
    ck_assert_ptr_null(p.host.host);
    free(err);
}

START_TEST(plan_refusals)
{
    char *a1[] = {"relctl", "status", "-H", NULL};
    plan_bad(a1, -EINVAL, "-H takes a value");
    char *a2[] = {"relctl", "-H", "a", "-H", "b", "status", NULL};
    plan_bad(a2, -EINVAL, "given twice");
    char *a3[] = {"relctl", "-H", "a", "pack", "dir", "-o", "x.tar.gz", NULL};
    plan_bad(a3, -EINVAL, "pack writes files on this machine");
    char *a4[] = {"relctl", "-H", "a", "install", "/nonexistent/kv-2.tar.gz", NULL};
    plan_bad(a4, -ENOENT, "install: /nonexistent/kv-2.tar.gz: No such file or directory");
    char *a5[] = {"relctl", "-H", "a", "install", "/tmp", NULL};
    plan_bad(a5, -ENOENT, "Is a directory");
    char *a6[] = {"relctl", "-H", "a", "install", "--signature", "s", "2", NULL};
    plan_bad(a6, -EINVAL, "--signature goes with a tarball");
    char *a7[] = {"relctl", "-H", "-oProxyCommand=touch /tmp/x", "status", NULL};
    plan_bad(a7, -EINVAL, "cannot start with '-'");
    char *a8[] = {"relctl", "install", "x", "--signature", NULL};
    plan_bad(a8, -EINVAL, "--signature takes a value");
}
END_TEST

static Suite *remote_suite(void)
{
    Suite *s = suite_create("remote");
    struct {
        const char *name;
        const TTest *t[4];
    } cases[] = {
        {"remote_parse_host", {parse_host_forms, parse_host_refusals}},
        {"remote_quote", {quote_for_the_shell}},
        {"remote_wanted", {wanted}},
        {"remote_plan", {plan_commands, plan_streams_a_local_tarball, plan_refusals}},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        TCase *tc = tcase_create(cases[i].name);
        for (size_t k = 0; k < 4 && cases[i].t[k]; k++)
            tcase_add_test(tc, cases[i].t[k]);
        suite_add_tcase(s, tc);
    }
    return s;
}

int main(void)
{
    return test_run_suite(remote_suite());
}
