/* relctl: the command line of reld (SPEC.md "Command line"); exit status
 * and error output in cli.h. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <dirent.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "relup.h"
#include "store.h"
#include "cli.h"
#include "remote.h"
#include "util.h"

static void usage(FILE *f)
{
    fputs("Usage: relctl [--socket PATH] [--json] COMMAND [ARGS]   (options anywhere on the line)\n"
          "       relctl --version\n"
          "       relctl -H [USER@]HOST[:PORT] COMMAND [ARGS]   the same command there, over ssh\n"
          "\n"
          "Commands (the socket is --socket, else $RELD_SOCKET, else /run/reld/reld.sock):\n"
          "  unpack TARBALL|-          hand a release tarball (or standard input) to reld, with its\n"
          "                            signature TARBALL.minisig if there is one (or --signature FILE;\n"
          "                            on standard input it may come first: cat X.minisig X.tar.gz)\n"
          "  install TARBALL|VSN       unpack if needed; start it, or go to it from the running release\n"
          "  upgrade VSN / downgrade VSN   go to a newer / older release by its relup, live\n"
          "      these three wait for the release to be healthy and go back by themselves when it\n"
          "      is not: --no-wait, --commit (make it permanent once healthy), --min-healthy MS,\n"
          "      --health-timeout MS; exit 3: rolled back, 4: needs an operator. --rehearse: each\n"
          "      process converts a copy of its live state with the new code first\n"
          "      --dry-run: change nothing; print the plan, the processes each step reaches, the\n"
          "      expected pause from earlier upgrades and the rehearsal (--no-rehearse skips it)\n"
          "  releases                  the releases reld knows, with their states\n"
          "  make-permanent [VSN]      make the current release (or VSN) permanent\n"
          "  remove VSN                remove a release that is neither permanent nor running\n"
          "  history [--limit N]       state changes, unpacks, attempts and their instructions\n"
          "  status [--watch [S]]      what reld runs now (refreshed every S seconds)\n"
          "  top [--interval S] [--once]  live view: releases, upgrade progress, per process CPU,\n"
          "                            memory, modules, last pause, health (one snapshot off a terminal)\n"
          "  daemon-reexec             reld executes its binary again in place (same pid, processes kept)\n"
          "  pack DIR -o FILE          validate a release laid out in DIR and write its tarball\n"
          "      --sign KEY [--password-file F]: and FILE.minisig beside it (a minisign secret key)\n"
          "  check [--strict] [--root DIR] [OLD] NEW\n"
          "                            offline: modules, executables and appups before anything runs\n"
          "  relup [--root DIR] [--write] [--no-derive] FROM TO\n"
          "                            the plan from FROM to TO (and back); with --root offline,\n"
          "                            --write stores it as releases/TO/relup.yaml\n"
          "\n"
          "Every command takes --json and --help; with --json a failure is a JSON object too\n"
          "({\"ok\": false, \"error\": ...}). Exit status: 0 success, 1 refused or failed (one line\n"
          "per reason on stderr), 2 usage error. Colour only on a terminal, never with NO_COLOR.\n",
          f);
}

/* ---- output ---------------------------------------------------------------- */

/* With --json, stdout holds one JSON document, a failure included (not a
 * usage error, which prints its line only): then {"ok": false, "exit_status": N, "error": FIRST, "errors": [...],
 * "warnings": [...]} (with the fields of reld's reply when it answered).
 * The error lines are those relctl writes on stderr anyway: stderr is
 * teed (tee_write) so that no error path of any command can miss its
 * line in the object. */
static struct {
    bool json;        /* --json anywhere on the line */
    bool printed;     /* a JSON document went to stdout */
    json_t *reply;    /* reld's reply to a failed command, kept for the error object */
    json_t *errors;   /* stderr's lines, without "relctl: " */
    json_t *warnings; /* those that began "relctl: warning: " */
    char *line;       /* a line not yet ended */
    size_t len, cap;
    bool colour;        /* stdout is a terminal and NO_COLOR is not set */
    bool progress_open; /* on a terminal, the progress line is not ended */
} ui;

static ssize_t tee_write(void *cookie, const char *buf, size_t n)
{
    (void)cookie;
    for (size_t done = 0; done < n;) { /* stderr as it is, whatever the tee does */
        ssize_t w = write(STDERR_FILENO, buf + done, n - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        done += (size_t)w;
    }
    for (size_t k = 0; k < n; k++) {
        if (buf[k] != '\n') {
            GROW(ui.line, ui.cap, ui.len + 2);
            ui.line[ui.len++] = buf[k];
            continue;
        }
        GROW(ui.line, ui.cap, ui.len + 1);
        ui.line[ui.len] = 0;
        const char *text = strncmp(ui.line, "relctl: ", 8) == 0 ? ui.line + 8 : ui.line;
        bool warning = strncmp(text, "warning: ", 9) == 0;
        json_t *t = json_string(warning ? text + 9 : text);
        if (!t) /* not UTF-8: an argument quoted as given */
            t = json_string("(a line that is not UTF-8)");
        json_array_append_new(warning ? ui.warnings : ui.errors, t);
        ui.len = 0;
    }
    return (ssize_t)n;
}

/* --json: from here on stderr is teed into ui.errors. */
static void json_mode(void)
{
    ui.json = true;
    ui.errors = json_array();
    ui.warnings = json_array();
    FILE *f = fopencookie(NULL, "w", (cookie_io_functions_t){.write = tee_write});
    if (f) {
        setvbuf(f, NULL, _IOLBF, 0);
        stderr = f;
    }
}

/* The exit status, after the error object when --json wanted one. */
static int finish(int status)
{
    fflush(stderr);
    /* A usage error (exit 2) asked nothing: its line on stderr says it all. */
    if (ui.json && status != 0 && status != EXIT_USAGE && !ui.printed) {
        json_t *j = ui.reply ? json_deep_copy(ui.reply) : json_object();
        json_object_set_new(j, "ok", json_false());
        json_object_set_new(j, "exit_status", json_integer(status));
        json_t *first = json_array_size(ui.errors) ? json_array_get(ui.errors, 0) : json_object_get(j, "error");
        json_object_set_new(j, "error", json_is_string(first) ? json_incref(first) : json_string("failed"));
        json_object_set(j, "errors", ui.errors);
        json_object_set(j, "warnings", ui.warnings);
        if (json_dumpf(j, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER) == 0)
            putchar('\n');
        json_decref(j);
    }
    json_decref(ui.reply);
    json_decref(ui.errors);
    json_decref(ui.warnings);
    free(ui.line);
    return status;
}

/* One instruction's progress ({"progress": k, "of": n, ...}): on a terminal
 * one line rewritten in place, else a line each (no control codes into a
 * pipe or a file). Written to the descriptor: progress is not an error
 * for the --json error object. */
static void progress(long long k, long long of, const char *what)
{
    bool tty = isatty(STDERR_FILENO);
    dprintf(STDERR_FILENO, "%srelctl: [%lld/%lld] %s%s", tty ? "\r\033[K" : "", k, of, what ? what : "?",
            tty ? "" : "\n");
    ui.progress_open = tty;
}

static void progress_end(void)
{
    if (ui.progress_open)
        dprintf(STDERR_FILENO, "\n");
    ui.progress_open = false;
}

/* text in colour code (SGR) on a terminal that wants colour, else as is. */
static void put_coloured(const char *text, int code)
{
    if (ui.colour && code)
        printf("\033[%dm%s\033[0m", code, text);
    else
        fputs(text, stdout);
}

/* The colour of a process's state in status: green running, yellow on its
 * way, red ended. */
static int state_colour(const char *state)
{
    static const struct {
        const char *state;
        int sgr;
    } table[] = {{"running", 32}, {"starting", 33}, {"restarting", 33}, {"stopping", 33},
                 {"failed", 31},  {"stopped", 31},  {"exited", 31}};
    for (size_t k = 0; state && k < sizeof(table) / sizeof(table[0]); k++)
        if (strcmp(state, table[k].state) == 0)
            return table[k].sgr;
    return 0;
}

/* ---- arguments ------------------------------------------------------------ */

/* arg for an error line (caller frees): when it is not valid UTF-8, every
 * byte outside printable ASCII as \xNN; else control characters only. */
static char *shown(const char *arg)
{
    json_t *j = json_string(arg);
    bool utf8 = j != NULL;
    json_decref(j);
    char *out = xmalloc(4 * strlen(arg) + 1), *o = out;
    for (const unsigned char *p = (const unsigned char *)arg; *p; p++) {
        if (*p < 0x20 || *p == 0x7f || (*p >= 0x80 && !utf8))
            o += sprintf(o, "\\x%02x", *p);
        else
            *o++ = (char)*p;
    }
    *o = 0;
    return out;
}

/* An argument that goes into a request must be valid UTF-8 (JSON holds
 * nothing else: jansson would drop it, and a request without its version
 * may mean another release) and, as every argument that names a release
 * is, a release version. Else one line, and false: the caller exits
 * EXIT_USAGE with nothing sent. */
static bool check_version_arg(const char *cmd, const char *arg)
{
    json_t *j = json_string(arg);
    bool utf8 = j != NULL;
    json_decref(j);
    if (utf8 && version_is_valid(arg))
        return true;
    char *text = shown(arg);
    if (!utf8)
        fprintf(stderr, "relctl: %s: the release version '%s' is not valid UTF-8\n", cmd, text);
    else
        fprintf(stderr,
                "relctl: %s: '%s' is not a release version (letters, digits and . _ + ~ -, starting with a letter "
                "or digit, at most 64)\n",
                cmd, text);
    free(text);
    return false;
}

/* ---- talking to reld ----------------------------------------------------- */

static const char *socket_path(void)
{
    const char *s = getenv("RELD_SOCKET");
    return s && *s ? s : "/run/reld/reld.sock";
}

/* Sends one request (with fd, when not -1) and reads the one reply.
 * Returns 0 and the reply; -EILSEQ when req (NULL: it could not be built)
 * cannot be encoded; -errno when reld cannot be reached. */
static int call(json_t *req, int fd, json_t **ret)
{
    *ret = NULL;
    char *text = req ? json_dumps(req, JSON_COMPACT) : NULL;
    if (!text)
        return -EILSEQ;
    const char *path = socket_path();
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(a.sun_path)) {
        free(text);
        return -ENAMETOOLONG;
    }
    strcpy(a.sun_path, path);
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof(a)) < 0) {
        int r = -errno;
        if (s >= 0)
            close(s);
        free(text);
        return r;
    }
    size_t len = strlen(text);
    text = xrealloc(text, len + 2);
    text[len++] = '\n';
    struct iovec iov = {.iov_base = text, .iov_len = len};
    char cbuf[CMSG_SPACE(sizeof(int))] = {0};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    if (fd >= 0) {
        mh.msg_control = cbuf;
        mh.msg_controllen = sizeof(cbuf);
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cm), &fd, sizeof(int));
    }
    ssize_t n = sendmsg(s, &mh, MSG_NOSIGNAL);
    free(text);
    if (n != (ssize_t)len) {
        int r = n < 0 ? -errno : -EIO;
        close(s);
        return r;
    }
    /* Lines until the reply: progress lines ({"progress": k, ...}) go to
     * stderr as they come, so a long upgrade shows where it is. */
    char *buf = NULL;
    size_t blen = 0, cap = 0;
    while (!*ret) {
        char *nl = buf ? memchr(buf, '\n', blen) : NULL;
        if (nl) {
            json_t *m = json_loadb(buf, (size_t)(nl - buf), 0, NULL);
            blen -= (size_t)(nl + 1 - buf);
            memmove(buf, nl + 1, blen);
            if (m && json_object_get(m, "progress")) {
                progress((long long)json_integer_value(json_object_get(m, "progress")),
                         (long long)json_integer_value(json_object_get(m, "of")),
                         json_string_value(json_object_get(m, "instruction")));
                json_decref(m);
                continue;
            }
            *ret = m;
            if (!m)
                break;
            continue;
        }
        GROW(buf, cap, blen + 65536);
        n = read(s, buf + blen, cap - blen);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            *ret = blen ? json_loadb(buf, blen, 0, NULL) : NULL; /* a last line without newline */
            break;
        }
        blen += (size_t)n;
    }
    progress_end();
    close(s);
    free(buf);
    return *ret ? 0 : -EPROTO;
}

/* Prints a reply's warnings, and its errors when it failed: 0 when it
 * succeeded, else EXIT_REFUSED. */
static int report(const json_t *rep)
{
    size_t i;
    json_t *w;
    json_array_foreach(json_object_get(rep, "warnings"), i, w)
        fprintf(stderr, "relctl: warning: %s\n", json_string_value(w));
    if (json_is_true(json_object_get(rep, "ok")))
        return 0;
    json_t *errors = json_object_get(rep, "errors");
    if (json_array_size(errors))
        json_array_foreach(errors, i, w) fprintf(stderr, "relctl: %s\n", json_string_value(w));
    else
        fprintf(stderr, "relctl: %s\n", json_string_value(json_object_get(rep, "error")));
    return EXIT_REFUSED;
}

/* Calls reld with req (taken; NULL when building it failed); on failure
 * prints why (one line per reason) and returns EXIT_REFUSED (EXIT_USAGE
 * when the request cannot be encoded: nothing was sent); on success
 * returns 0 with the reply. */
static int call_or_report(json_t *req, int fd, json_t **ret)
{
    int r = call(req, fd, ret);
    json_decref(req);
    if (r == -EILSEQ) {
        fprintf(stderr, "relctl: the request cannot be encoded as JSON (an argument that is not UTF-8?): "
                        "nothing was sent\n");
        return EXIT_USAGE;
    }
    if (r < 0) {
        fprintf(stderr, "relctl: cannot reach reld at %s: %s\n", socket_path(),
                r == -EPROTO ? "no reply" : strerror(-r));
        return EXIT_REFUSED;
    }
    if (report(*ret) == 0)
        return 0;
    json_decref(*ret);
    *ret = NULL;
    return EXIT_REFUSED;
}

/* Prints reld's reply (without its "ok"); EXIT_REFUSED when it cannot. */
static int print_json(json_t *j)
{
    if (json_is_false(json_object_get(j, "ok"))) { /* a failure: finish() prints it with the reasons */
        json_decref(ui.reply);
        ui.reply = json_incref(j);
        return 0;
    }
    ui.printed = true;
    json_object_del(j, "ok");
    if (json_dumpf(j, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER) < 0) {
        fprintf(stderr, "relctl: cannot print reld's reply as JSON\n");
        return EXIT_REFUSED;
    }
    putchar('\n');
    return 0;
}

/* Options every daemon command takes: --json, --help. Returns -1 to go
 * on, else the exit status. */
static int common_opts(int argc, char **argv, bool *json, const char *usage_line)
{
    static const struct option opts[] = {{"json", no_argument, NULL, 'j'}, {"help", no_argument, NULL, 'h'}, {0}};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 'j')
            *json = true;
        else if (c == 'h') {
            printf("Usage: relctl %s\n", usage_line);
            return 0;
        } else
            return EXIT_USAGE;
    }
    return -1;
}

/* The unpack request for the tarball file: with the text of its signature
 * (docs/signing.md), from sig_path, or else FILE.minisig beside it if there
 * is one (for standard input --signature, or the stream begins with it).
 * 0 with *ret, or EXIT_REFUSED after saying why. */
static int unpack_request(const char *file, const char *sig_path, bool allow_downgrade, json_t **ret)
{
    _cleanup_free_ char *p = sig_path                 ? xstrdup(sig_path)
                             : strcmp(file, "-") != 0 ? xasprintf("%s.minisig", file)
                                                      : NULL;
    json_t *req = json_pack("{s:s}", "cmd", "unpack");
    if (allow_downgrade) /* past the downgrade floor (min_version, refuse_older_than_permanent) */
        json_object_set_new(req, "allow_downgrade", json_true());
    if (strcmp(file, "-") == 0) /* may begin with its signature: cat X.minisig X.tar.gz | relctl install - */
        json_object_set_new(req, "stream", json_true());
    int fd = p ? open(p, O_RDONLY | O_CLOEXEC) : -1;
    if (!p || (fd < 0 && errno == ENOENT && !sig_path)) { /* unsigned: reld decides whether that will do */
        *ret = req;
        return 0;
    }
    if (fd < 0) {
        fprintf(stderr, "relctl: %s: %s\n", p, strerror(errno));
        json_decref(req);
        return EXIT_REFUSED;
    }
    char buf[SIGNATURE_TEXT_MAX + 1];
    ssize_t n = read(fd, buf, sizeof buf);
    int e = errno;
    close(fd);
    json_t *text = n >= 0 && n <= SIGNATURE_TEXT_MAX ? json_stringn(buf, (size_t)n) : NULL;
    if (!text) {
        fprintf(stderr, "relctl: %s: %s\n", p,
                n < 0 ? strerror(e) : "not a signature (larger than 4096 bytes, or not text)");
        json_decref(req);
        return EXIT_REFUSED;
    }
    json_object_set_new(req, "signature", text);
    *ret = req;
    return 0;
}

static int cmd_unpack(int argc, char **argv)
{
    static const struct option opts[] = {{"json", no_argument, NULL, 'j'},
                                         {"help", no_argument, NULL, 'h'},
                                         {"signature", required_argument, NULL, 'S'},
                                         {"allow-downgrade", no_argument, NULL, 'A'},
                                         {0}};
    bool json = false, allow_downgrade = false;
    const char *sig_path = NULL;
    int r, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 'j') {
            json = true;
        } else if (c == 'S') {
            sig_path = optarg;
        } else if (c == 'A') {
            allow_downgrade = true;
        } else if (c == 'h') {
            printf("Usage: relctl unpack [--json] [--signature FILE] [--allow-downgrade] TARBALL|-\n");
            return 0;
        } else {
            return EXIT_USAGE;
        }
    }
    if (argc - optind != 1) {
        fprintf(stderr, "relctl: unpack takes one tarball (or - for standard input)\n");
        return EXIT_USAGE;
    }
    const char *file = argv[optind];
    int fd = strcmp(file, "-") == 0 ? STDIN_FILENO : open(file, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "relctl: %s: %s\n", file, strerror(errno));
        return EXIT_REFUSED;
    }
    json_t *rep, *req;
    r = unpack_request(file, sig_path, allow_downgrade, &req);
    if (r == 0)
        r = call_or_report(req, fd, &rep);
    if (fd != STDIN_FILENO)
        close(fd);
    if (r)
        return r;
    if (json)
        r = print_json(rep);
    else
        printf("unpacked release %s %s\n", json_string_value(json_object_get(rep, "name")),
               json_string_value(json_object_get(rep, "release")));
    json_decref(rep);
    return r;
}

/* ---- pack ------------------------------------------------------------------- */

/* pack runs relctl-pack, the one part of relctl that writes tarballs:
 * linking libarchive (and the libxml2, ICU and libstdc++ it pulls in)
 * into relctl cost every other command 4 ms of start-up. It is found
 * beside relctl (the build tree), else in reld's libexec directory. */
static int cmd_pack(char **argv)
{
    char self[4096], *path = NULL;
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n > 0) {
        self[n] = 0;
        char *slash = strrchr(self, '/');
        if (slash) {
            *slash = 0;
            path = xasprintf("%s/relctl-pack", self);
            if (access(path, X_OK) < 0) {
                free(path);
                path = NULL;
            }
        }
    }
    if (!path)
        path = xstrdup(RELD_LIBEXECDIR "/relctl-pack");
    argv[0] = path;
    execv(path, argv);
    fprintf(stderr, "relctl: cannot run %s: %s\n", path, strerror(errno));
    free(path);
    return EXIT_REFUSED;
}

/* top runs relctl-top (beside relctl, else in reld's libexec directory),
 * the one part that links ncurses (as pack, for its start-up cost:
 * docs/benchmarks.md); it asks reld through this relctl (RELCTL_SELF). */
static int cmd_top(char **argv)
{
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    self[n > 0 ? n : 0] = 0;
    char *slash = strrchr(self, '/'), *path = slash ? xasprintf("%.*s/relctl-top", (int)(slash - self), self) : NULL;
    if (!path || access(path, X_OK) < 0) {
        free(path);
        path = xstrdup(RELD_LIBEXECDIR "/relctl-top");
    }
    if (n > 0)
        setenv("RELCTL_SELF", self, 1);
    argv[0] = path;
    execv(path, argv);
    fprintf(stderr, "relctl: cannot run %s: %s\n", path, strerror(errno));
    free(path);
    return EXIT_REFUSED;
}

/* Is the command top? The first word that is not an option or the value
 * of one (-H, --host, --socket, --interval). */
static bool top_wanted(int argc, char **argv)
{
    static const char *const valued[] = {"-H", "--host", "--socket", "--interval"};
    for (int i = 1; i < argc; i++) {
        bool takes_value = false;
        for (size_t k = 0; k < sizeof(valued) / sizeof(valued[0]); k++)
            takes_value |= strcmp(argv[i], valued[k]) == 0;
        if (takes_value)
            i++;
        else if (argv[i][0] != '-')
            return strcmp(argv[i], "top") == 0;
    }
    return false;
}

/* check [OLD] NEW: relctl-pack --check, which reads tarballs (libarchive,
 * which relctl does not link: cmd_pack says why). */
static int cmd_check(int argc, char **argv)
{
    char **args = xcalloc((size_t)argc + 2, sizeof(*args));
    args[0] = argv[0];
    args[1] = (char *)"--check";
    for (int k = 1; k < argc; k++)
        args[k + 1] = argv[k];
    int r = cmd_pack(args); /* returns only when relctl-pack cannot run */
    free(args);
    return r;
}

/* Was arg meant as a file (names_a_file), UTF-8 and so printable as it
 * is? */
static bool looks_like_a_file(const char *arg)
{
    json_t *j = json_string(arg);
    bool utf8 = j != NULL;
    json_decref(j);
    return utf8 && names_a_file(arg); /* not UTF-8: check_version_arg says what is wrong with it */
}

/* The exit status an install's outcome means (cli.h). */
static int outcome_status(const json_t *rep)
{
    static const struct {
        const char *outcome;
        int status;
    } table[] = {
        {"committed", 0},
        {"current", 0},
        {"unchanged", 0},
        {"refused", EXIT_REFUSED},
        {"rolled_back", EXIT_ROLLED_BACK},
        {"needs_operator", EXIT_NEEDS_OPERATOR},
        {"dry_run", 0},
    };
    const char *o = json_string_value(json_object_get(rep, "outcome"));
    bool ok = json_is_true(json_object_get(rep, "ok"));
    for (size_t k = 0; o && k < sizeof(table) / sizeof(table[0]); k++)
        if (strcmp(o, table[k].outcome) == 0)
            return ok ? 0 : table[k].status ? table[k].status : EXIT_REFUSED;
    return ok ? 0 : EXIT_REFUSED;
}

static const char *cmd_dir(const json_t *rep)
{
    const char *d = json_string_value(json_object_get(rep, "direction"));
    return d ? d : "install";
}

/* One process an instruction reaches, as "app/proc[pid]: what". */
static void print_reached(const json_t *p)
{
    const char *does = json_string_value(json_object_get(p, "does"));
    const char *module = json_string_value(json_object_get(p, "module"));
    json_t *mods = json_object_get(p, "modules"), *pause = json_object_get(p, "expected_pause_ms");
    json_int_t pid = json_integer_value(json_object_get(p, "pid"));
    printf("       %s", json_string_value(json_object_get(p, "process")));
    if (pid)
        printf("[%lld]", (long long)pid);
    printf(":");
    if (does)
        printf(" %s", does);
    if (json_array_size(mods)) {
        size_t i;
        json_t *m;
        printf(" (");
        json_array_foreach(mods, i, m) printf("%s%s", i ? ", " : "", json_string_value(m));
        printf(")");
    }
    if (module) {
        const char *vsn = json_string_value(json_object_get(p, "version"));
        const char *purges = json_string_value(json_object_get(p, "purges"));
        const char *post = json_string_value(json_object_get(p, "post_purges"));
        printf(" %s (runs %s)", module, vsn ? vsn : "nothing");
        if (purges)
            printf(", purges %s%s", purges, post ? " first" : "");
        if (post)
            printf("; %s becomes old, purged after the script (%s)", post,
                   json_string_value(json_object_get(p, "post_purge")));
        if (!json_is_true(json_object_get(p, "kills")))
            printf("; kills no process");
    }
    if (json_is_object(pause))
        printf("; expected pause %.3f ms (max %.3f ms, of %lld earlier)",
               json_number_value(json_object_get(pause, "last")), json_number_value(json_object_get(pause, "max")),
               (long long)json_integer_value(json_object_get(pause, "of")));
    else if (does && strcmp(does, "suspended") == 0)
        printf("; no earlier pause known");
    if (json_is_true(json_object_get(p, "kills")))
        printf("; the purge KILLS it: %s", json_string_value(json_object_get(p, "why")));
    if (json_is_string(json_object_get(p, "refused")))
        printf("; %s", json_string_value(json_object_get(p, "refused")));
    printf("\n");
}

/* A dry run's report (manager.h, upgrade.h upgrade_dry_run). */
static void print_dry_run(const json_t *rep)
{
    const char *from = json_string_value(json_object_get(rep, "from"));
    const char *to = json_string_value(json_object_get(rep, "to"));
    const char *outcome = json_string_value(json_object_get(rep, "outcome"));
    size_t i;
    json_t *v;
    if (outcome && strcmp(outcome, "unchanged") == 0) {
        printf("dry run: release %s already runs: unchanged\n", to);
        return;
    }
    if (json_is_array(json_object_get(rep, "starts"))) {
        printf("dry run: install of release %s (nothing runs): would start, in order:\n", to);
        json_array_foreach(json_object_get(rep, "starts"), i, v)
        {
            size_t k;
            json_t *p;
            printf("  %s %s:", json_string_value(json_object_get(v, "application")),
                   json_string_value(json_object_get(v, "vsn")));
            json_array_foreach(json_object_get(v, "processes"), k, p) printf(" %s", json_string_value(p));
            printf("\n");
        }
        printf("nothing changed\n");
        return;
    }
    if (!json_is_array(json_object_get(rep, "instructions"))) {
        printf("dry run: %s to %s: no plan\n", cmd_dir(rep), to ? to : "?");
        return;
    }
    printf("dry run: %s from %s to %s, %zu instructions:\n", cmd_dir(rep), from ? from : "?", to ? to : "?",
           json_array_size(json_object_get(rep, "instructions")));
    json_array_foreach(json_object_get(rep, "instructions"), i, v)
    {
        size_t k;
        json_t *p;
        printf("  %3lld. %s\n", (long long)json_integer_value(json_object_get(v, "k")),
               json_string_value(json_object_get(v, "instruction")));
        json_array_foreach(json_object_get(v, "processes"), k, p) print_reached(p);
    }
    json_t *restarts = json_object_get(rep, "restarts");
    printf("restarted at the switch-over (no runtime): %s\n", json_array_size(restarts) ? "" : "none");
    json_array_foreach(restarts, i, v)
    {
        const char *vto = json_string_value(json_object_get(v, "to"));
        printf("  %s[%lld]: %s -> %s\n", json_string_value(json_object_get(v, "process")),
               (long long)json_integer_value(json_object_get(v, "pid")), json_string_value(json_object_get(v, "from")),
               vto ? vto : "(stops)");
    }
    json_int_t earlier = json_integer_value(json_object_get(rep, "earlier_upgrades"));
    if (!earlier) {
        printf("expected pause: no earlier upgrade from %s to %s\n", from, to);
    } else {
        const char *label;
        printf("expected pause per process (the last of %lld earlier upgrades from %s to %s):\n", (long long)earlier,
               from, to);
        json_object_foreach(json_object_get(rep, "expected_pause_ms"), label, v)
            printf("  %s: %.3f ms (max %.3f ms)\n", label, json_number_value(json_object_get(v, "last")),
                   json_number_value(json_object_get(v, "max")));
    }
    json_t *reh = json_object_get(rep, "rehearsal");
    if (!json_is_object(reh)) {
        printf("rehearsal: not asked (--no-rehearse)\n");
    } else {
        json_t *procs = json_object_get(reh, "processes");
        printf("rehearsal: %s\n", json_is_true(json_object_get(reh, "ok"))
                                      ? json_array_size(procs) ? "ok" : "ok, no process concerned"
                                      : "FAILED");
        json_array_foreach(procs, i, v)
        {
            json_t *fork_us = json_object_get(v, "fork_us");
            printf("  %s[%lld]: %s", json_string_value(json_object_get(v, "process")),
                   (long long)json_integer_value(json_object_get(v, "pid")),
                   json_string_value(json_object_get(v, "outcome")));
            if (json_is_integer(fork_us))
                printf(" (fork %.3f ms)", (double)json_integer_value(fork_us) / 1000.0);
            printf("\n");
        }
    }
    printf("%s\n", outcome && strcmp(outcome, "dry_run") == 0 ? "nothing changed (outcome dry_run)"
                                                              : "nothing changed; it would be refused");
}

/* install TARBALL|VSN, upgrade VSN, downgrade VSN: a file is unpacked
 * first; then reld goes to the release and (unless --no-wait) waits for
 * it to be healthy, going back by itself when it is not. */
static int cmd_go(int argc, char **argv, const char *cmd)
{
    static const struct option opts[] = {{"json", no_argument, NULL, 'j'},
                                         {"help", no_argument, NULL, 'h'},
                                         {"no-wait", no_argument, NULL, 'n'},
                                         {"commit", no_argument, NULL, 'c'},
                                         {"min-healthy", required_argument, NULL, 'm'},
                                         {"health-timeout", required_argument, NULL, 't'},
                                         {"rehearse", no_argument, NULL, 'r'},
                                         {"no-rehearse", no_argument, NULL, 'R'},
                                         {"dry-run", no_argument, NULL, 'd'},
                                         {"signature", required_argument, NULL, 'S'},
                                         {"allow-downgrade", no_argument, NULL, 'A'},
                                         {0}};
    const char *sig_path = NULL;
    bool allow_downgrade = false;
    bool install = strcmp(cmd, "install") == 0, json = false, no_wait = false, commit = false, rehearse = false;
    bool no_rehearse = false, dry_run = false;
    long ms[2] = {-1, -1}; /* --min-healthy, --health-timeout */
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        char *end = NULL;
        if (c == 'j') {
            json = true;
        } else if (c == 'n') {
            no_wait = true;
        } else if (c == 'c') {
            commit = true;
        } else if (c == 'r') {
            rehearse = true;
        } else if (c == 'R') {
            no_rehearse = true;
        } else if (c == 'd') {
            dry_run = true;
        } else if (c == 'S' && install) {
            sig_path = optarg;
        } else if (c == 'A' && install) {
            allow_downgrade = true;
        } else if (c == 'm' || c == 't') {
            long v = strtol(optarg, &end, 10);
            if (!*optarg || *end || v < (c == 'm' ? 0 : 1) || v > 86400000) {
                fprintf(stderr, "relctl: --%s takes milliseconds (%s to 86400000)\n",
                        c == 'm' ? "min-healthy" : "health-timeout", c == 'm' ? "0" : "1");
                return EXIT_USAGE;
            }
            ms[c == 't'] = v;
        } else if (c == 'h') {
            printf("Usage: relctl %s [--json] [--rehearse|--no-rehearse] [--dry-run] [--no-wait] [--commit] "
                   "[--min-healthy MS] [--health-timeout MS] %s%s\n",
                   cmd, install ? "[--signature FILE] [--allow-downgrade] " : "", install ? "TARBALL|VSN" : "VSN");
            return 0;
        } else {
            return EXIT_USAGE;
        }
    }
    if (argc - optind != 1) {
        fprintf(stderr, "relctl: %s takes one %s\n", cmd, install ? "tarball or release version" : "release version");
        return EXIT_USAGE;
    }
    if (rehearse && no_rehearse) {
        fprintf(stderr, "relctl: %s: --rehearse and --no-rehearse contradict each other\n", cmd);
        return EXIT_USAGE;
    }
    if (dry_run && (commit || no_wait)) {
        fprintf(stderr, "relctl: %s: --dry-run changes nothing: no --%s\n", cmd, commit ? "commit" : "no-wait");
        return EXIT_USAGE;
    }
    rehearse = dry_run ? !no_rehearse : rehearse; /* a dry run rehearses unless told not to */
    const char *arg = argv[optind];
    char *vsn = NULL;
    json_t *rep;
    int r, fd = -1;
    if (install) {
        fd = strcmp(arg, "-") == 0 ? STDIN_FILENO : open(arg, O_RDONLY | O_CLOEXEC);
        if (fd < 0 && looks_like_a_file(arg)) { /* meant as a tarball: say so, not "no such release" */
            fprintf(stderr, "relctl: install: %s: %s\n", arg, strerror(errno));
            return EXIT_USAGE;
        }
    }
    if (fd < 0 && !check_version_arg(cmd, arg)) /* not a file: a version, or nothing sensible */
        return EXIT_USAGE;
    if (fd < 0 && (sig_path || allow_downgrade)) {
        fprintf(stderr, "relctl: install: --%s goes with a tarball, not a version\n",
                sig_path ? "signature" : "allow-downgrade");
        return EXIT_USAGE;
    }
    if (fd >= 0) {
        json_t *ureq = NULL;
        r = unpack_request(arg, sig_path, allow_downgrade, &ureq);
        if (r == 0)
            r = call_or_report(ureq, fd, &rep);
        if (fd != STDIN_FILENO)
            close(fd);
        if (r)
            return r;
        const char *got = json_string_value(json_object_get(rep, "release"));
        if (!got) {
            fprintf(stderr, "relctl: reld's reply names no release\n");
            json_decref(rep);
            return EXIT_REFUSED;
        }
        vsn = xstrdup(got);
        if (!json)
            printf("%s release %s\n",
                   json_is_true(json_object_get(rep, "unchanged")) ? "already unpacked:" : "unpacked", vsn);
        json_decref(rep);
    } else {
        vsn = xstrdup(arg);
    }
    json_t *req = json_pack("{s:s, s:s, s:b, s:b, s:b}", "cmd", cmd, "vsn", vsn, "no_wait", no_wait, "commit", commit,
                            "rehearse", rehearse);
    if (req && dry_run)
        json_object_set_new(req, "dry_run", json_true());
    free(vsn);
    if (req && ms[0] >= 0)
        json_object_set_new(req, "min_healthy_ms", json_integer(ms[0]));
    if (req && ms[1] >= 0)
        json_object_set_new(req, "health_timeout_ms", json_integer(ms[1]));
    r = req ? call(req, -1, &rep) : -EILSEQ;
    json_decref(req);
    if (r < 0) {
        fprintf(stderr, "relctl: cannot reach reld at %s: %s\n", socket_path(),
                r == -EPROTO ? "no reply" : strerror(-r));
        return EXIT_REFUSED;
    }
    (void)report(rep); /* warnings, and the reasons of a failure */
    int status = outcome_status(rep);
    if (json) {
        (void)print_json(rep); /* a failure too: the outcome is in it */
    } else if (json_is_true(json_object_get(rep, "dry_run"))) {
        print_dry_run(rep);
        if (status)
            fprintf(stderr, "relctl: outcome: %s\n", json_string_value(json_object_get(rep, "outcome")));
    } else if (status == 0) {
        const char *o = json_string_value(json_object_get(rep, "outcome"));
        const char *installed = json_string_value(json_object_get(rep, "installed"));
        json_t *health = json_object_get(rep, "health");
        char waited[64] = "";
        if (json_is_object(health))
            snprintf(waited, sizeof(waited), ", healthy after %lld ms",
                     (long long)json_integer_value(json_object_get(health, "waited_ms")));
        const char *state = o && strcmp(o, "committed") == 0   ? "permanent"
                            : o && strcmp(o, "unchanged") == 0 ? "already running"
                                                               : "current; relctl make-permanent to keep it";
        if (json_is_string(json_object_get(rep, "from")))
            printf("%s from %s to %s: %lld instructions in %.3f ms%s (%s)\n",
                   json_string_value(json_object_get(rep, "direction")),
                   json_string_value(json_object_get(rep, "from")), installed,
                   (long long)json_integer_value(json_object_get(rep, "instructions")),
                   json_number_value(json_object_get(rep, "ms")), waited, state);
        else
            printf("installed release %s%s (%s)\n", installed, waited, state);
    } else if (json_is_string(json_object_get(rep, "outcome"))) {
        fprintf(stderr, "relctl: outcome: %s\n", json_string_value(json_object_get(rep, "outcome")));
    }
    json_decref(rep);
    return status;
}

static int cmd_simple(int argc, char **argv, const char *cmd, const char *usage_line, int n_args)
{
    bool json = false;
    /* status --watch [SECONDS]: refresh until interrupted. */
    if (strcmp(cmd, "status") == 0)
        for (int i = 1; i < argc; i++)
            if (strcmp(argv[i], "--watch") == 0) {
                double every = i + 1 < argc && atof(argv[i + 1]) > 0 ? atof(argv[i + 1]) : 1.0;
                char *args[] = {argv[0], NULL};
                for (;;) {
                    if (isatty(STDOUT_FILENO))
                        printf("\033[H\033[2J"); /* clear the terminal; into a pipe, one report after the other */
                    time_t t = time(NULL);
                    printf("relctl status, every %.1f s, %s", every, ctime(&t));
                    int r = cmd_simple(1, args, cmd, usage_line, n_args);
                    fflush(stdout);
                    if (r != 0)
                        return r;
                    struct timespec ts = {(time_t)every, (long)((every - (double)(time_t)every) * 1e9)};
                    nanosleep(&ts, NULL);
                }
            }
    int r = common_opts(argc, argv, &json, usage_line);
    if (r >= 0)
        return r;
    if (argc - optind > n_args || (n_args == 1 && strcmp(cmd, "remove") == 0 && argc - optind != 1)) {
        fprintf(stderr, "relctl: usage: relctl %s\n", usage_line);
        return EXIT_USAGE;
    }
    if (argc - optind == 1 && !check_version_arg(cmd, argv[optind]))
        return EXIT_USAGE;
    json_t *req = json_pack("{s:s}", "cmd", cmd), *rep;
    /* A version that does not go in would change the request's meaning
     * (make-permanent without one means the current release). */
    if (req && argc - optind == 1 && json_object_set_new(req, "vsn", json_string(argv[optind])) < 0) {
        json_decref(req);
        req = NULL;
    }
    if ((r = call_or_report(req, -1, &rep)))
        return r;
    if (json) {
        r = print_json(rep);
    } else if (strcmp(cmd, "releases") == 0) {
        size_t i;
        json_t *rel;
        json_t *rels = json_object_get(rep, "releases");
        if (!json_array_size(rels))
            puts("no releases");
        else
            printf("%-12s %-16s %-10s %s\n", "VERSION", "NAME", "STATE", "UNPACKED");
        json_array_foreach(rels, i, rel)
            printf("%-12s %-16s %-10s %s\n", json_string_value(json_object_get(rel, "vsn")),
                   json_string_value(json_object_get(rel, "name")), json_string_value(json_object_get(rel, "state")),
                   json_string_value(json_object_get(rel, "unpacked_at")));
    } else if (strcmp(cmd, "status") == 0) {
        json_t *cur = json_object_get(rep, "current"), *perm = json_object_get(rep, "permanent");
        json_t *run = json_object_get(rep, "running");
        printf("root %s\npermanent %s\ncurrent %s", json_string_value(json_object_get(rep, "root")),
               json_is_string(perm) ? json_string_value(perm) : "-",
               json_is_string(cur) ? json_string_value(cur) : "-");
        /* No current release, yet one may run: the permanent one after a
         * start, or the one an upgrade left. */
        if (!json_is_string(cur))
            printf(" (running: %s)", json_is_string(run) ? json_string_value(run) : "none");
        printf("\nreleases %zu\n", json_array_size(json_object_get(rep, "releases")));
        if (json_is_string(json_object_get(rep, "signatures")))
            printf("signatures: %s\n", json_string_value(json_object_get(rep, "signatures")));
        json_t *up = json_object_get(rep, "upgrade");
        if (json_is_object(up)) {
            long long of = json_integer_value(json_object_get(up, "of"));
            printf("%s from %s to %s under way: ", json_string_value(json_object_get(up, "direction")),
                   json_string_value(json_object_get(up, "from")), json_string_value(json_object_get(up, "to")));
            if (of)
                printf("%lld of %lld instructions done\n", (long long)json_integer_value(json_object_get(up, "done")),
                       of);
            else
                printf("reading the releases and the relup\n");
        }
        size_t i, k;
        json_t *p, *m;
        json_array_foreach(json_object_get(rep, "processes"), i, p)
        {
            const char *state = json_string_value(json_object_get(p, "state"));
            printf("process %s/%s (%s %s): ", json_string_value(json_object_get(p, "app")),
                   json_string_value(json_object_get(p, "process")), json_string_value(json_object_get(p, "app")),
                   json_string_value(json_object_get(p, "vsn")));
            put_coloured(state ? state : "?", state_colour(state));
            printf(", pid %lld, %lld restarts;", (long long)json_integer_value(json_object_get(p, "pid")),
                   (long long)json_integer_value(json_object_get(p, "restarts")));
            json_array_foreach(json_object_get(p, "modules"), k, m)
                printf(" %s %s", json_string_value(json_object_get(m, "name")),
                       json_string_value(json_object_get(m, "version")));
            json_t *h = json_object_get(p, "health");
            const char *why = json_string_value(json_object_get(h, "reason"));
            if (json_is_object(h))
                printf("; health %s%s%s%s", json_string_value(json_object_get(h, "state")), why ? " (" : "",
                       why ? why : "", why ? ")" : "");
            putchar('\n');
        }
        json_t *gate = json_object_get(rep, "health_gate");
        if (json_is_object(gate))
            printf("waiting for release %s to be healthy: %lld of %lld processes healthy long enough, %lld ms left\n",
                   json_string_value(json_object_get(gate, "release")),
                   (long long)json_integer_value(json_object_get(gate, "healthy")),
                   (long long)json_integer_value(json_object_get(gate, "of")),
                   (long long)json_integer_value(json_object_get(gate, "remaining_ms")));
        json_t *last = json_object_get(rep, "last_outcome");
        if (json_is_object(last)) {
            const char *why = json_string_value(json_object_get(last, "reason"));
            printf("last install: release %s: %s at %s%s%s\n", json_string_value(json_object_get(last, "release")),
                   json_string_value(json_object_get(last, "outcome")), json_string_value(json_object_get(last, "at")),
                   why ? ": " : "", why ? why : "");
        }
    } else if (strcmp(cmd, "remove") == 0) {
        printf("removed release %s\n", json_string_value(json_object_get(rep, "removed")));
    } else if (strcmp(cmd, "make-permanent") == 0) {
        printf("release %s is permanent\n", json_string_value(json_object_get(rep, "permanent")));
    }
    json_decref(rep);
    return r;
}

/* relctl daemon-reexec: reld executes its binary again in place; the new
 * reld answers once ready. */
static int cmd_daemon_reexec(int argc, char **argv)
{
    bool json = false;
    int r = common_opts(argc, argv, &json, "daemon-reexec [--json]");
    if (r >= 0)
        return r;
    if (argc - optind != 0) {
        fprintf(stderr, "relctl: usage: relctl daemon-reexec [--json]\n");
        return EXIT_USAGE;
    }
    json_t *rep;
    if ((r = call_or_report(json_pack("{s:s}", "cmd", "daemon-reexec"), -1, &rep)))
        return r;
    if (json)
        r = print_json(rep);
    else
        printf("reld re-executed (pid %lld), ready in %.1f ms\n",
               (long long)json_integer_value(json_object_get(rep, "pid")),
               json_real_value(json_object_get(rep, "reexec_ms")));
    json_decref(rep);
    return r;
}

static int cmd_history(int argc, char **argv)
{
    static const struct option opts[] = {{"json", no_argument, NULL, 'j'},
                                         {"limit", required_argument, NULL, 'l'},
                                         {"help", no_argument, NULL, 'h'},
                                         {0}};
    bool json = false;
    long limit = 50;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 'j')
            json = true;
        else if (c == 'l')
            limit = atol(optarg);
        else if (c == 'h') {
            puts("Usage: relctl history [--json] [--limit N]");
            return 0;
        } else
            return EXIT_USAGE;
    }
    if (limit <= 0 || optind != argc) {
        fprintf(stderr, "relctl: usage: relctl history [--json] [--limit N]\n");
        return EXIT_USAGE;
    }
    json_t *rep;
    int r = call_or_report(json_pack("{s:s, s:i}", "cmd", "history", "limit", (int)limit), -1, &rep);
    if (r)
        return r;
    if (json) {
        r = print_json(rep);
        json_decref(rep);
        return r;
    }
    size_t i, k;
    json_t *e, *in;
    if (json_array_size(json_object_get(rep, "events")))
        printf("%-24s  %-14s %-8s %s\n", "AT", "EVENT", "RELEASE", "DETAIL, BY");
    json_array_foreach(json_object_get(rep, "events"), i, e)
    {
        char *detail = json_dumps(json_object_get(e, "detail"), JSON_COMPACT | JSON_ENCODE_ANY);
        printf("%s  %-14s %-8s %s  by %s\n", json_string_value(json_object_get(e, "at")),
               json_string_value(json_object_get(e, "kind")),
               json_is_string(json_object_get(e, "release")) ? json_string_value(json_object_get(e, "release")) : "-",
               detail && strcmp(detail, "null") != 0 ? detail : "", json_string_value(json_object_get(e, "who")));
        free(detail);
    }
    if (json_array_size(json_object_get(rep, "attempts")))
        printf("%sATTEMPTS (kind from -> to by whom: result, duration; then each instruction: index, outcome, "
               "duration, instruction)\n",
               json_array_size(json_object_get(rep, "events")) ? "\n" : "");
    json_array_foreach(json_object_get(rep, "attempts"), i, e)
    {
        printf("attempt %lld: %s %s -> %s by %s: %s (%.3f ms)\n",
               (long long)json_integer_value(json_object_get(e, "id")), json_string_value(json_object_get(e, "kind")),
               json_string_value(json_object_get(e, "from_vsn")), json_string_value(json_object_get(e, "to_vsn")),
               json_string_value(json_object_get(e, "who")),
               json_is_string(json_object_get(e, "result")) ? json_string_value(json_object_get(e, "result"))
                                                            : "unfinished",
               json_number_value(json_object_get(e, "duration_ms")));
        json_array_foreach(json_object_get(e, "instructions"), k, in)
        {
            char *instr = json_dumps(json_object_get(in, "instr"), JSON_COMPACT);
            printf("  %3lld  %-8s %8.3f ms  %s\n", (long long)json_integer_value(json_object_get(in, "idx")),
                   json_string_value(json_object_get(in, "outcome")),
                   (double)json_integer_value(json_object_get(in, "duration_us")) / 1000.0, instr ? instr : "?");
            free(instr);
        }
    }
    json_decref(rep);
    return 0;
}

static void print_script(FILE *f, const char *title, const RelupScript *s)
{
    fprintf(f, "%s (%zu instructions):\n", title, s->n);
    for (size_t i = 0; i < s->n; i++) {
        /* "  %3zu  " by hand: printf for each of 66,000 lines showed in
         * the profile of the relup benchmark. */
        char num[32], *p = num + sizeof(num);
        *--p = 0;
        size_t k = i + 1;
        do
            *--p = (char)('0' + k % 10);
        while ((k /= 10) && p > num + 1);
        while (p > num + sizeof(num) - 4)
            *--p = ' ';
        char *line = relup_instr_format(&s->v[i]);
        fputs("  ", f);
        fputs(p, f);
        fputs("  ", f);
        fputs(line, f);
        putc('\n', f);
        free(line);
    }
}

/* The down script formatted into memory on a second thread while the up
 * script is printed: half the wall time of printing a large relup. */
typedef struct DownText {
    const RelupScript *s;
    char *text;
    size_t len;
    bool ok;
} DownText;

static void *format_down(void *p)
{
    DownText *t = p;
    FILE *f = open_memstream(&t->text, &t->len);
    if (!f)
        return NULL;
    print_script(f, "down", t->s);
    t->ok = fclose(f) == 0;
    return NULL;
}

static void print_relup(const Relup *r, bool json, bool stored, bool written)
{
    if (json) {
        json_t *j = relup_to_json(r);
        if (!j || json_dumpf(j, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER) < 0)
            fprintf(stderr, "relctl: cannot print the relup as JSON\n");
        else
            putchar('\n');
        json_decref(j);
        return;
    }
    DownText down = {.s = &r->down};
    pthread_t t;
    bool threaded = pthread_create(&t, NULL, format_down, &down) == 0;
    if (stored)
        printf("relup %s -> %s (stored in releases/%s/relup.yaml)\n", r->from, r->to, r->to);
    else
        printf("relup %s -> %s\n", r->from, r->to);
    print_script(stdout, "up", &r->up);
    if (threaded && pthread_join(t, NULL) != 0)
        abort(); /* cannot fail for a joinable thread of ours */
    if (down.ok)
        fwrite(down.text, 1, down.len, stdout);
    else
        print_script(stdout, "down", &r->down); /* no thread, or no memory for the text */
    free(down.text);
    if (written)
        printf("written to releases/%s/relup.yaml\n", r->to);
}

static int cmd_relup(int argc, char **argv)
{
    static const struct option opts[] = {
        {"root", required_argument, NULL, 'r'}, {"json", no_argument, NULL, 'j'}, {"write", no_argument, NULL, 'w'},
        {"no-derive", no_argument, NULL, 'n'},  {"help", no_argument, NULL, 'h'}, {0},
    };
    const char *root = getenv("RELD_ROOT"); /* NULL: ask the daemon */
    bool json = false, write = false, derive = true;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'r':
            root = optarg;
            break;
        case 'j':
            json = true;
            break;
        case 'w':
            write = true;
            break;
        case 'n':
            derive = false;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            return EXIT_USAGE;
        }
    }
    if (argc - optind != 2) {
        fprintf(stderr, "relctl: relup takes two release versions, FROM and TO\n");
        return EXIT_USAGE;
    }
    const char *from = argv[optind], *to = argv[optind + 1];
    if (!check_version_arg("relup", from) || !check_version_arg("relup", to))
        return EXIT_USAGE;
    if (!root) {
        if (write) {
            fprintf(stderr, "relctl: --write needs --root (the daemon's root is written by the daemon)\n");
            return EXIT_USAGE;
        }
        json_t *rep;
        int rc = call_or_report(json_pack("{s:s, s:s, s:s}", "cmd", "relup", "from", from, "to", to), -1, &rep);
        if (rc)
            return rc;
        Diag pd = {0};
        Relup *r = NULL;
        char *text = json_dumps(json_object_get(rep, "relup"), JSON_COMPACT);
        rc = text && relup_parse("reply", text, strlen(text), &r, &pd) == 0 ? 0 : EXIT_REFUSED;
        free(text);
        if (rc)
            fprintf(stderr, "relctl: reld's relup cannot be read: %s\n", pd.errors.n ? pd.errors.v[0] : "?");
        else
            print_relup(r, json, json_is_true(json_object_get(rep, "stored")), false);
        relup_free(r);
        diag_clear(&pd);
        json_decref(rep);
        return rc;
    }
    Diag d = {0};
    Relup *r = NULL;
    bool stored = false;
    int rc = store_relup(root, from, to, derive, &r, &stored, &d);
    if (rc == 0 && write && !stored)
        rc = store_write_relup(root, r, &d);
    print_diag(&d);
    diag_clear(&d);
    if (rc < 0)
        return EXIT_REFUSED;
    print_relup(r, json, stored, write && !stored);
    relup_free(r);
    return 0;
}

/* Is w a number (status --watch's optional SECONDS)? */
static bool is_number(const char *w)
{
    char *end = NULL;
    (void)strtod(w, &end);
    return *w && end && !*end;
}

/* relctl's options go anywhere on the line, as systemctl's: `relctl --json
 * status` and `relctl install X --socket P` mean what `relctl status
 * --json` and `relctl --socket P install X` do. relctl's own options
 * (--socket, --version; --help without a command) are taken out; the
 * command is the first word that is neither an option nor an option's
 * value; the others follow it in their order, for its getopt_long. -1 with
 * *ret_n words in *ret_a (the command first, NULL-terminated; the caller
 * frees the array), else the exit status. */
static int parse_line(int argc, char **argv, int *ret_n, char ***ret_a)
{
    /* The options of any command whose value is the next word: that word
     * is not the command. */
    static const char *const valued[] = {"--socket", "--signature", "--min-healthy", "--health-timeout", "--limit",
                                         "--root",   "--sysroot",   "--sign",        "--password-file",  "--output",
                                         "-o",       "--interval"};
    char **a = xcalloc((size_t)argc + 1, sizeof(*a));
    int n = 1, cmd = -1;
    bool help = false, words_only = false;
    for (int i = 1; i < argc; i++) {
        const char *w = argv[i];
        if (words_only || w[0] != '-' || !w[1]) { /* a word; "-" is standard input */
            if (cmd < 0)
                cmd = i;
            else
                a[n++] = argv[i];
            continue;
        }
        if (strcmp(w, "--") == 0)
            words_only = true;
        if (strcmp(w, "--version") == 0) {
            printf("relctl %s\n", RELD_VERSION);
            free(a);
            return 0;
        }
        if (strcmp(w, "--socket") == 0 || strncmp(w, "--socket=", 9) == 0) {
            const char *v = w[8] == '=' ? w + 9 : i + 1 < argc ? argv[++i] : NULL;
            if (!v || !*v) {
                fprintf(stderr, "relctl: --socket takes the path of reld's control socket\n");
                free(a);
                return EXIT_USAGE;
            }
            setenv("RELD_SOCKET", v, 1);
            continue;
        }
        if (strcmp(w, "--json") == 0 && !ui.json)
            json_mode();
        help |= strcmp(w, "--help") == 0 || strcmp(w, "-h") == 0;
        a[n++] = argv[i];
        bool takes_value = false;
        for (size_t k = 0; k < sizeof(valued) / sizeof(valued[0]); k++)
            takes_value |= strcmp(w, valued[k]) == 0;
        if (i + 1 < argc && (takes_value || (strcmp(w, "--watch") == 0 && is_number(argv[i + 1]))))
            a[n++] = argv[++i];
    }
    if (cmd < 0) {
        free(a);
        usage(help ? stdout : stderr);
        return help ? 0 : EXIT_USAGE;
    }
    a[0] = argv[cmd];
    *ret_n = n;
    *ret_a = a;
    return -1;
}

/* Runs the command a[0] with its n - 1 arguments. */
static int dispatch(int n, char **a)
{
    if (strcmp(a[0], "relup") == 0)
        return cmd_relup(n, a);
    if (strcmp(a[0], "unpack") == 0)
        return cmd_unpack(n, a);
    if (strcmp(a[0], "install") == 0)
        return cmd_go(n, a, "install");
    if (strcmp(a[0], "pack") == 0)
        return cmd_pack(a);
    if (strcmp(a[0], "top") == 0)
        return cmd_top(a);
    if (strcmp(a[0], "check") == 0)
        return cmd_check(n, a);
    if (strcmp(a[0], "upgrade") == 0 || strcmp(a[0], "downgrade") == 0)
        return cmd_go(n, a, a[0]);
    if (strcmp(a[0], "history") == 0)
        return cmd_history(n, a);
    if (strcmp(a[0], "daemon-reexec") == 0)
        return cmd_daemon_reexec(n, a);
    if (strcmp(a[0], "releases") == 0)
        return cmd_simple(n, a, "releases", "releases [--json]", 0);
    if (strcmp(a[0], "status") == 0)
        return cmd_simple(n, a, "status", "status [--json] [--watch [SECONDS]]", 0);
    if (strcmp(a[0], "remove") == 0)
        return cmd_simple(n, a, "remove", "remove [--json] VSN", 1);
    if (strcmp(a[0], "make-permanent") == 0)
        return cmd_simple(n, a, "make-permanent", "make-permanent [--json] [VSN]", 1);
    fprintf(stderr, "relctl: unknown command '%s' (see relctl --help)\n", a[0]);
    return EXIT_USAGE;
}

int main(int argc, char **argv)
{
    if (remote_wanted(argc, argv) && top_wanted(argc, argv)) /* the view here, reld there: relctl-top */
        return cmd_top(argv);
    if (remote_wanted(argc, argv)) /* -H [USER@]HOST[:PORT]: the same command there, over ssh */
        return remote_main(argc, argv);
    int n;
    char **a;
    int r = parse_line(argc, argv, &n, &a);
    if (r >= 0)
        return finish(r);
    const char *no_colour = getenv("NO_COLOR"); /* no-color.org: set and not empty */
    const char *term = getenv("TERM");
    ui.colour = !ui.json && isatty(STDOUT_FILENO) && !(no_colour && *no_colour) && !(term && strcmp(term, "dumb") == 0);
    r = dispatch(n, a);
    free(a);
    return finish(r);
}
