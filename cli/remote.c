/* relctl -H: the same command on another machine over OpenSSH (remote.h). */
#include "remote.h"

#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli.h"

extern char **environ;

/* ---- the host ---------------------------------------------------------------- */

void remote_host_clear(RemoteHost *h)
{
    free(h->user);
    free(h->host);
    free(h->port);
    *h = (RemoteHost){0};
}

/* Printable ASCII without blanks: what a host name, an address or a user
 * name on the command line of ssh can be. */
static bool plain(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] <= ' ' || s[i] == 0x7f || (unsigned char)s[i] >= 0x80)
            return false;
    return n > 0;
}

static int host_error(const char *spec, const char *why, char **err)
{
    *err = xasprintf("-H '%s': %s (the form is [USER@]HOST[:PORT])", spec, why);
    return -EINVAL;
}

int remote_parse_host(const char *spec, RemoteHost *out, char **err)
{
    *out = (RemoteHost){0};
    *err = NULL;
    const char *at = strrchr(spec, '@'), *h = at ? at + 1 : spec;
    if (at && !plain(spec, (size_t)(at - spec)))
        return host_error(spec, "no user name before '@'", err);
    if (at && spec[0] == '-')
        return host_error(spec, "a user name cannot start with '-'", err);
    const char *end, *port = NULL;
    if (*h == '[') { /* [V6ADDRESS] or [V6ADDRESS]:PORT */
        end = strchr(h, ']');
        if (!end || (end[1] && end[1] != ':'))
            return host_error(spec, "an address in brackets ends with ']' or ']:PORT'", err);
        port = end[1] ? end + 2 : NULL;
        h++;
    } else {
        const char *colon = strchr(h, ':');
        bool one_colon = colon && !strchr(colon + 1, ':'); /* more than one: a bare IPv6 address */
        end = one_colon ? colon : h + strlen(h);
        port = one_colon ? colon + 1 : NULL;
    }
    if (*h == '-')
        return host_error(spec, "a host name cannot start with '-'", err);
    if (!plain(h, (size_t)(end - h)))
        return host_error(spec, "no host name (printable, without blanks)", err);
    if (port) {
        char *pend;
        long p = strtol(port, &pend, 10);
        if (!*port || *pend || port[0] < '1' || port[0] > '9' || p > 65535)
            return host_error(spec, "the port is a number from 1 to 65535", err);
    }
    out->user = at ? xstrndup(spec, (size_t)(at - spec)) : NULL;
    out->host = xstrndup(h, (size_t)(end - h));
    out->port = port ? xstrdup(port) : NULL;
    return 0;
}

char *remote_quote(const char *arg)
{
    size_t n = 2;
    for (const char *p = arg; *p; p++)
        n += *p == '\'' ? 4 : 1;
    char *out = xmalloc(n + 1), *o = out;
    *o++ = '\'';
    for (const char *p = arg; *p; p++) {
        if (*p == '\'') {
            memcpy(o, "'\\''", 4); /* end the quote, a quoted ', quote again */
            o += 4;
        } else {
            *o++ = *p;
        }
    }
    *o++ = '\'';
    *o = 0;
    return out;
}

/* ---- the plan ----------------------------------------------------------------- */

/* relctl's options that take a value as the next argument: that argument
 * is no command or operand. */
static bool takes_value(const char *opt)
{
    static const char *const table[] = {
        "--socket", "--min-healthy", "--health-timeout", "--limit",         "--root",    "--sysroot",
        "-o",       "--output",      "--sign",           "--password-file", "--interval"};
    for (size_t k = 0; k < sizeof(table) / sizeof(table[0]); k++)
        if (strcmp(opt, table[k]) == 0)
            return true;
    return false;
}

/* status --watch [SECONDS]: a number after --watch is its value. */
static bool is_number(const char *s)
{
    char *end;
    return *s && strtod(s, &end) > 0 && !*end;
}

/* The commands whose operand may be a tarball on this machine (upgrade
 * and downgrade take a version: a path there is the remote relctl's
 * refusal, as here). */
static bool streams(const char *cmd)
{
    static const char *const table[] = {"install", "unpack"};
    for (size_t k = 0; k < sizeof(table) / sizeof(table[0]); k++)
        if (strcmp(cmd, table[k]) == 0)
            return true;
    return false;
}

bool remote_wanted(int argc, char **argv)
{
    for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++)
        if (strcmp(argv[i], "-H") == 0 || strcmp(argv[i], "--host") == 0 || strncmp(argv[i], "--host=", 7) == 0 ||
            (strncmp(argv[i], "-H", 2) == 0 && argv[i][2]))
            return true;
    return false;
}

void remote_plan_clear(RemotePlan *plan)
{
    remote_host_clear(&plan->host);
    strvec_clear(&plan->ssh_argv);
    free(plan->ssh_argv.v);
    free(plan->stream);
    free(plan->signature);
    *plan = (RemotePlan){0};
}

static int plan_error(RemotePlan *plan, int r, char **err, char *msg)
{
    remote_plan_clear(plan);
    *err = msg;
    return r;
}

int remote_plan(int argc, char **argv, const char *ssh, RemotePlan *plan, char **err)
{
    *plan = (RemotePlan){0};
    *err = NULL;
    const char *spec = NULL, *sig = NULL;
    StrVec args = {0}; /* the remote relctl's arguments */
    ssize_t cmd = -1, operand = -1;
    bool words_only = false; /* after "--" every word is an argument, as relctl reads its line */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *value = NULL;
        bool word = words_only || a[0] != '-' || !a[1]; /* "-" is standard input */
        bool host = !word && (strcmp(a, "-H") == 0 || strcmp(a, "--host") == 0);
        bool signature = !word && strcmp(a, "--signature") == 0;
        if ((host || signature) && i + 1 >= argc) {
            strvec_clear(&args);
            free(args.v);
            return plan_error(plan, -EINVAL, err, xasprintf("%s takes a value", a));
        }
        if (host || signature)
            value = argv[++i];
        else if (!word && strncmp(a, "--host=", 7) == 0)
            value = a + 7, host = true;
        else if (!word && strncmp(a, "-H", 2) == 0 && a[2])
            value = a + 2, host = true;
        else if (!word && strncmp(a, "--signature=", 12) == 0)
            value = a + 12, signature = true;
        if (host || signature) { /* both stay here: the host is ssh's, the signature is streamed */
            const char **slot = host ? &spec : &sig;
            if (*slot) {
                strvec_clear(&args);
                free(args.v);
                return plan_error(plan, -EINVAL, err, xasprintf("%s is given twice", host ? "-H" : "--signature"));
            }
            *slot = value;
            continue;
        }
        strvec_push(&args, a);
        words_only |= !word && strcmp(a, "--") == 0;
        if (!word && i + 1 < argc && (takes_value(a) || (strcmp(a, "--watch") == 0 && is_number(argv[i + 1])))) {
            strvec_push(&args, argv[++i]);
        } else if (word) {
            if (cmd < 0)
                cmd = (ssize_t)args.n - 1;
            else if (operand < 0)
                operand = (ssize_t)args.n - 1;
        }
    }
    int r = spec ? remote_parse_host(spec, &plan->host, err) : -EINVAL;
    if (!spec)
        *err = xstrdup("-H takes [USER@]HOST[:PORT]");
    const char *command = cmd >= 0 ? args.v[cmd] : NULL;
    if (r == 0 && command && strcmp(command, "pack") == 0) {
        *err = xstrdup("pack writes files on this machine: pack here, then relctl -H HOST install FILE");
        r = -EINVAL;
    }
    if (r == 0 && command && streams(command) && operand >= 0) {
        const char *file = args.v[operand];
        struct stat st;
        int serr = strcmp(file, "-") == 0 ? 0 : stat(file, &st) < 0 ? errno : S_ISREG(st.st_mode) ? 0 : EISDIR;
        if (serr == 0) {
            plan->stream = xstrdup(file);
            plan->signature_set = sig != NULL;
            plan->signature = sig ? xstrdup(sig) : strcmp(file, "-") != 0 ? xasprintf("%s.minisig", file) : NULL;
            free(args.v[operand]);
            args.v[operand] = xstrdup("-");
        } else if (names_a_file(file)) { /* as relctl decides for a local install */
            *err = xasprintf("%s: %s: %s", command, file, strerror(serr));
            r = -ENOENT;
        }
    }
    if (r == 0 && sig && !plan->stream) {
        *err = xstrdup("--signature goes with a tarball on this machine, not a version");
        r = -EINVAL;
    }
    if (r < 0) {
        char *msg = *err;
        strvec_clear(&args);
        free(args.v);
        return plan_error(plan, r, err, msg);
    }
    StrVec *s = &plan->ssh_argv;
    strvec_push(s, ssh);
    if (!plan->stream)
        strvec_push(s, "-n"); /* no standard input: a `while read` loop around relctl keeps its own */
    if (plan->host.port) {
        strvec_push(s, "-p");
        strvec_push(s, plan->host.port);
    }
    strvec_push(s, "--");
    strvec_push_take(s,
                     plan->host.user ? xasprintf("%s@%s", plan->host.user, plan->host.host) : xstrdup(plan->host.host));
    char *line = xstrdup("relctl");
    for (size_t k = 0; k < args.n; k++) {
        char *q = remote_quote(args.v[k]), *longer = xasprintf("%s %s", line, q);
        free(q);
        free(line);
        line = longer;
    }
    strvec_push_take(s, line);
    GROW(s->v, s->cap, s->n + 1);
    s->v[s->n] = NULL;
    strvec_clear(&args);
    free(args.v);
    return 0;
}

/* ---- running ssh ---------------------------------------------------------------- */

/* The signature's text as the stream carries it: four lines, the first
 * "untrusted comment:", ending with a newline. 0 and *text (*len bytes;
 * NULL when there is none and none was asked for), or EXIT_REFUSED after
 * saying why. */
static int read_signature(const RemotePlan *plan, char **text, size_t *len)
{
    *text = NULL;
    *len = 0;
    if (!plan->signature)
        return 0;
    int fd = open(plan->signature, O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT && !plan->signature_set)
        return 0; /* unsigned: reld decides whether that will do */
    if (fd < 0) {
        fprintf(stderr, "relctl: %s: %s\n", plan->signature, strerror(errno));
        return EXIT_REFUSED;
    }
    char *buf = xmalloc(SIGNATURE_TEXT_MAX + 2);
    size_t n = 0;
    ssize_t got;
    while (n <= SIGNATURE_TEXT_MAX && (got = read(fd, buf + n, SIGNATURE_TEXT_MAX + 1 - n)) != 0) {
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            fprintf(stderr, "relctl: %s: %s\n", plan->signature, strerror(errno));
            close(fd);
            free(buf);
            return EXIT_REFUSED;
        }
        n += (size_t)got;
    }
    close(fd);
    if (n && buf[n - 1] != '\n')
        buf[n++] = '\n';
    size_t lines = 0;
    for (size_t k = 0; k < n; k++)
        lines += buf[k] == '\n';
    if (n > SIGNATURE_TEXT_MAX || lines != 4 || memchr(buf, 0, n) || strncmp(buf, "untrusted comment:", 18) != 0) {
        fprintf(stderr, "relctl: %s: not a minisign signature (four lines, the first 'untrusted comment:')\n",
                plan->signature);
        free(buf);
        return EXIT_REFUSED;
    }
    *text = buf;
    *len = n;
    return 0;
}

/* The signature, then the tarball, into ssh's standard input. A write
 * that fails (-EPIPE: ssh stopped reading) ends the copy quietly: ssh's
 * exit status says what happened (the remote side refused early, or the
 * connection is gone). A read that fails is this machine's problem:
 * -errno after saying so. */
static int feed(int to, int from, const char *what, const char *sig, size_t sig_len)
{
    if (sig && write_all(to, sig, sig_len) < 0)
        return 0;
    char *buf = xmalloc(1 << 16);
    int r = 0;
    for (;;) {
        ssize_t n = read(from, buf, 1 << 16);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            r = -errno;
            fprintf(stderr, "relctl: %s: %s\n", what, strerror(errno));
            break;
        }
        if (n == 0 || write_all(to, buf, (size_t)n) < 0)
            break;
    }
    free(buf);
    return r;
}

int remote_main(int argc, char **argv)
{
    const char *ssh = getenv("RELCTL_SSH");
    RemotePlan plan;
    char *err = NULL;
    int r = remote_plan(argc, argv, ssh && *ssh ? ssh : "ssh", &plan, &err);
    if (r < 0) {
        fprintf(stderr, "relctl: %s\n", err);
        free(err);
        return EXIT_USAGE; /* as a local install of a tarball that is not there */
    }
    char *sig = NULL;
    size_t sig_len = 0;
    int from = -1, pipefd[2] = {-1, -1};
    if (plan.stream) {
        from = strcmp(plan.stream, "-") == 0 ? STDIN_FILENO : open(plan.stream, O_RDONLY | O_CLOEXEC);
        if (from < 0) {
            fprintf(stderr, "relctl: %s: %s\n", plan.stream, strerror(errno));
            remote_plan_clear(&plan);
            return EXIT_REFUSED;
        }
        if ((r = read_signature(&plan, &sig, &sig_len)) != 0 || pipe2(pipefd, O_CLOEXEC) < 0) {
            if (r == 0)
                fprintf(stderr, "relctl: pipe: %s\n", strerror(errno));
            if (from != STDIN_FILENO)
                close(from);
            remote_plan_clear(&plan);
            return EXIT_REFUSED;
        }
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    if (plan.stream)
        posix_spawn_file_actions_adddup2(&fa, pipefd[0], STDIN_FILENO);
    pid_t pid;
    int e = posix_spawnp(&pid, plan.ssh_argv.v[0], &fa, NULL, plan.ssh_argv.v, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (pipefd[0] >= 0)
        close(pipefd[0]);
    int status = 0;
    if (e != 0) {
        fprintf(stderr, "relctl: cannot run %s: %s\n", plan.ssh_argv.v[0], strerror(e));
        status = EXIT_UNREACHABLE;
    } else {
        if (plan.stream) {
            /* ssh gone: the write fails with EPIPE instead of killing relctl. */
            struct sigaction ign = {.sa_handler = SIG_IGN}, old;
            sigaction(SIGPIPE, &ign, &old);
            if (feed(pipefd[1], from, plan.stream, sig, sig_len) < 0)
                status = EXIT_REFUSED;
            close(pipefd[1]);
            pipefd[1] = -1;
            sigaction(SIGPIPE, &old, NULL);
        }
        int ws;
        while (waitpid(pid, &ws, 0) < 0 && errno == EINTR)
            ;
        const char *host = plan.host.host;
        if (WIFSIGNALED(ws)) {
            fprintf(stderr, "relctl: %s: ssh was killed by signal %d: the command's end is unknown\n", host,
                    WTERMSIG(ws));
            status = EXIT_UNREACHABLE;
        } else if (WEXITSTATUS(ws) == 255) {
            fprintf(stderr, "relctl: cannot reach %s over ssh, or the connection was lost (ssh exited 255)\n", host);
            status = EXIT_UNREACHABLE;
        } else if (WEXITSTATUS(ws) == 127) {
            fprintf(stderr, "relctl: %s: no relctl there (the remote shell found none on its PATH)\n", host);
            status = EXIT_UNREACHABLE;
        } else if (status == 0) {
            status = WEXITSTATUS(ws);
        }
    }
    if (pipefd[1] >= 0)
        close(pipefd[1]);
    if (from >= 0 && from != STDIN_FILENO)
        close(from);
    free(sig);
    remote_plan_clear(&plan);
    return status;
}
