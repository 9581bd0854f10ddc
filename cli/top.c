/* relctl-top: `relctl top`, a live view of what reld runs (docs/relctl.1):
 * the releases, an upgrade under way with instruction k of n, the last
 * outcome, and per process its state, uptime, restarts, CPU, memory,
 * modules (an old version still loaded), last pause and health.
 *
 * relctl runs it (as relctl pack runs relctl-pack): linking ncurses into
 * relctl would cost every other command its start-up (docs/benchmarks.md).
 * It asks reld through relctl itself (`relctl status --json`, RELCTL_SELF
 * names it), so that whatever reaches reld for relctl (--socket, its
 * environment) reaches it for top.
 *
 * On a terminal: refreshed every --interval seconds (default 1) by
 * ncurses, which redraws only what changed; q quits. Otherwise, or with
 * --once: one snapshot on stdout, cut at $COLUMNS when set;
 * --json: the status reply itself. Exit status: cli.h. */
#include <curses.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <getopt.h>
#include <jansson.h>
#include <locale.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

static const char *relctl_path;
/* relctl's options that say where reld is (-H HOST, --socket PATH), given
 * to every `relctl status --json`: top shows here what runs there. */
static StrVec via;

/* Everything fd gives until EOF, NUL-terminated in *buf; its length. */
static size_t read_all(int fd, char **buf)
{
    size_t len = 0, cap = 0;
    for (;;) {
        GROW(*buf, cap, len + 65536);
        ssize_t n = read(fd, *buf + len, cap - len - 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break; /* EOF, or a read error: what came is all there is */
        len += (size_t)n;
    }
    (*buf)[len] = 0;
    return len;
}

/* `relctl status --json`: the reply, or NULL with its error lines in *err
 * (caller frees both). */
static json_t *fetch(char **err)
{
    *err = NULL;
    int out[2], errp[2];
    if (pipe2(out, O_CLOEXEC) < 0)
        return *err = xasprintf("pipe: %s", strerror(errno)), NULL;
    if (pipe2(errp, O_CLOEXEC) < 0) {
        *err = xasprintf("pipe: %s", strerror(errno));
        close(out[0]);
        close(out[1]);
        return NULL;
    }
    pid_t pid = fork();
    if (pid == 0) {
        dup2(out[1], STDOUT_FILENO);
        dup2(errp[1], STDERR_FILENO);
        char **args = xcalloc(via.n + 4, sizeof(*args));
        args[0] = (char *)relctl_path;
        for (size_t i = 0; i < via.n; i++)
            args[1 + i] = via.v[i];
        args[via.n + 1] = "status";
        args[via.n + 2] = "--json";
        execv(relctl_path, args);
        fprintf(stderr, "relctl: cannot run %s: %s\n", relctl_path, strerror(errno));
        _exit(EXIT_REFUSED);
    }
    close(out[1]);
    close(errp[1]);
    if (pid < 0) {
        close(out[0]);
        close(errp[0]);
        return *err = xasprintf("fork: %s", strerror(errno)), NULL;
    }
    /* The reply is one JSON text, the error output a line or two: read
     * whole, stdout first (a relctl that fails writes little). */
    char *buf = NULL, *ebuf = NULL;
    size_t len = read_all(out[0], &buf), elen = read_all(errp[0], &ebuf);
    close(out[0]);
    close(errp[0]);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    json_t *j = NULL;
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0 && len)
        j = json_loadb(buf, len, 0, NULL);
    if (!j) {
        ebuf[strcspn(ebuf, "\n")] = 0; /* its first line */
        *err = elen && *ebuf
                   ? xstrdup(ebuf)
                   : xasprintf("relctl: top: %s status --json gave no status (%s %d)", relctl_path,
                               WIFEXITED(st) ? "exit" : "signal", WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
    }
    free(buf);
    free(ebuf);
    return j;
}

/* ---- the screen, as lines ---------------------------------------------------- */

typedef struct Screen {
    char **lines;
    size_t n, cap;
    int width;
} Screen;

static void line(Screen *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void line(Screen *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *l = xvasprintf(fmt, ap);
    va_end(ap);
    if ((int)strlen(l) > s->width)
        l[s->width] = 0; /* fits the terminal's width */
    GROW(s->lines, s->cap, s->n + 1);
    s->lines[s->n++] = l;
}

static void screen_clear(Screen *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->lines[i]);
    s->n = 0;
}

static const char *str(const json_t *o, const char *key, const char *none)
{
    const char *v = json_string_value(json_object_get(o, key));
    return v ? v : none;
}

static void human_bytes(char *out, size_t size, double b)
{
    static const char *const units[] = {"B", "K", "M", "G", "T"};
    size_t u = 0;
    while (b >= 1024 && u < 4) {
        b /= 1024;
        u++;
    }
    snprintf(out, size, u ? "%.1f%s" : "%.0f%s", b, units[u]);
}

static void human_time(char *out, size_t size, double s)
{
    long long t = (long long)s;
    if (t < 3600)
        snprintf(out, size, "%lld:%02lld", t / 60, t % 60);
    else if (t < 86400)
        snprintf(out, size, "%lldh%02lld", t / 3600, t / 60 % 60);
    else
        snprintf(out, size, "%lldd%02lldh", t / 86400, t / 3600 % 24);
}

/* The lines of one view of status st (or of err when it is NULL). */
static void render(Screen *s, const json_t *st, const char *err, double interval, bool live)
{
    char now[32], a[32], b[32];
    time_t t = time(NULL);
    strftime(now, sizeof(now), "%H:%M:%S", localtime(&t));
    if (!st) {
        line(s, "relctl top  %s", now);
        line(s, "cannot read reld's status: %s", err ? err : "?");
        return;
    }
    json_t *self = json_object_get(st, "reld");
    human_bytes(a, sizeof(a), (double)json_integer_value(json_object_get(self, "rss_bytes")));
    line(s, "reld pid %lld  rss %s  cpu %.1f%%  root %s  %s",
         (long long)json_integer_value(json_object_get(self, "pid")), a,
         json_number_value(json_object_get(self, "cpu_percent")), str(st, "root", "?"), now);
    /* Releases: VSN (state), the permanent and current ones marked. */
    char rels[1024] = "";
    size_t i, k;
    json_t *r, *p, *m;
    json_array_foreach(json_object_get(st, "releases"), i, r)
    {
        size_t l = strlen(rels);
        snprintf(rels + l, sizeof(rels) - l, "%s%s (%s)", i ? "  " : "", str(r, "vsn", "?"), str(r, "state", "?"));
    }
    line(s, "releases %s", *rels ? rels : "none");
    json_t *up = json_object_get(st, "upgrade");
    if (json_is_object(up)) {
        long long done = json_integer_value(json_object_get(up, "done")),
                  of = json_integer_value(json_object_get(up, "of"));
        int barw = s->width - 60 > 10 ? (s->width - 60 < 40 ? s->width - 60 : 40) : 10;
        char bar[64];
        int filled = of > 0 ? (int)(done * barw / of) : 0;
        for (int x = 0; x < barw; x++)
            bar[x] = x < filled ? '#' : '.';
        bar[barw] = 0;
        if (of)
            line(s, "%s %s -> %s: instruction %lld of %lld [%s]", str(up, "direction", "?"), str(up, "from", "?"),
                 str(up, "to", "?"), done, of, bar);
        else
            line(s, "%s %s -> %s: planning", str(up, "direction", "?"), str(up, "from", "?"), str(up, "to", "?"));
    } else {
        line(s, "no upgrade under way");
    }
    json_t *gate = json_object_get(st, "health_gate");
    if (json_is_object(gate))
        line(s, "health gate: release %s, %lld of %lld healthy long enough, %lld ms left", str(gate, "release", "?"),
             (long long)json_integer_value(json_object_get(gate, "healthy")),
             (long long)json_integer_value(json_object_get(gate, "of")),
             (long long)json_integer_value(json_object_get(gate, "remaining_ms")));
    json_t *last = json_object_get(st, "last_outcome");
    if (json_is_object(last)) {
        const char *why = str(last, "reason", NULL);
        line(s, "last: release %s %s at %s%s%s", str(last, "release", "?"), str(last, "outcome", "?"),
             str(last, "at", "?"), why ? ": " : "", why ? why : "");
    } else {
        line(s, "last: none since reld started");
    }
    line(s, "%s", "");
    line(s, "%-24s %7s %-8s %8s %4s %6s %7s %8s %-9s %s", "APPLICATION/PROCESS", "PID", "STATE", "UPTIME", "RST",
         "CPU%", "RSS", "PAUSE", "HEALTH", "MODULES");
    json_array_foreach(json_object_get(st, "processes"), i, p)
    {
        char label[256], mods[512] = "", pause[32] = "-", cpu[16] = "-";
        snprintf(label, sizeof(label), "%s/%s", str(p, "app", "?"), str(p, "process", "?"));
        strcpy(a, "-");
        strcpy(b, "-");
        if (json_object_get(p, "rss_bytes")) {
            human_bytes(a, sizeof(a), (double)json_integer_value(json_object_get(p, "rss_bytes")));
            human_time(b, sizeof(b), json_number_value(json_object_get(p, "uptime_s")));
            snprintf(cpu, sizeof(cpu), "%.1f", json_number_value(json_object_get(p, "cpu_percent")));
        }
        if (json_is_number(json_object_get(p, "last_pause_ms")))
            snprintf(pause, sizeof(pause), "%.2fms", json_number_value(json_object_get(p, "last_pause_ms")));
        json_array_foreach(json_object_get(p, "modules"), k, m)
        {
            size_t l = strlen(mods);
            const char *old = str(m, "old_version", NULL);
            snprintf(mods + l, sizeof(mods) - l, "%s%s %s%s%s%s", k ? ", " : "", str(m, "name", "?"),
                     str(m, "version", "?"), old ? " (old " : "", old ? old : "", old ? " loaded)" : "");
        }
        line(s, "%-24s %7lld %-8s %8s %4lld %6s %7s %8s %-9s %s", label,
             (long long)json_integer_value(json_object_get(p, "pid")), str(p, "state", "?"), b,
             (long long)json_integer_value(json_object_get(p, "restarts")), cpu, a, pause,
             str(json_object_get(p, "health"), "state", "-"), *mods ? mods : "-");
    }
    if (!json_array_size(json_object_get(st, "processes")))
        line(s, "(no process runs)");
    if (live) {
        line(s, "%s", "");
        line(s, "q quits; every %.1f s", interval);
    }
}

/* ---- the terminal ---------------------------------------------------------------- */

static int live(double interval)
{
    if (!initscr())
        return EXIT_REFUSED;
    cbreak();
    noecho();
    curs_set(0);
    keypad(stdscr, TRUE);
    timeout((int)(interval * 1000));
    Screen s = {0};
    for (;;) {
        char *err = NULL;
        json_t *st = fetch(&err);
        s.width = COLS > 1 ? COLS - 1 : 1;
        screen_clear(&s);
        render(&s, st, err, interval, true);
        json_decref(st);
        free(err);
        /* erase + refresh: curses sends only what changed, so nothing flickers. */
        erase();
        for (size_t i = 0; i < s.n && (int)i < LINES; i++)
            mvaddstr((int)i, 0, s.lines[i]);
        refresh();
        int c = getch(); /* waits at most the interval */
        if (c == 'q' || c == 'Q')
            break;
    }
    screen_clear(&s);
    free(s.lines);
    endwin();
    return 0;
}

/* top with its own options (argv[0] is not one). */
static int top_main(int argc, char **argv)
{
    static const struct option opts[] = {{"json", no_argument, NULL, 'j'},
                                         {"once", no_argument, NULL, '1'},
                                         {"interval", required_argument, NULL, 'i'},
                                         {"help", no_argument, NULL, 'h'},
                                         {0}};
    bool json = false, once = false;
    double interval = 1.0;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1)
        switch (c) {
        case 'j':
            json = true;
            break;
        case '1':
            once = true;
            break;
        case 'i': {
            char *end;
            interval = strtod(optarg, &end);
            if (*end || !(interval >= 0.1 && interval <= 3600)) {
                fprintf(stderr, "relctl: top: --interval takes seconds, 0.1 to 3600: '%s'\n", optarg);
                return EXIT_USAGE;
            }
            break;
        }
        case 'h':
            puts("Usage: relctl top [--json] [--once] [--interval SECONDS]");
            return 0;
        default:
            fprintf(stderr, "relctl: usage: relctl top [--json] [--once] [--interval SECONDS]\n");
            return EXIT_USAGE;
        }
    if (optind < argc) {
        fprintf(stderr, "relctl: usage: relctl top [--json] [--once] [--interval SECONDS]\n");
        return EXIT_USAGE;
    }
    relctl_path = getenv("RELCTL_SELF");
    if (!relctl_path || !*relctl_path)
        relctl_path = "relctl";
    if (!json && !once && isatty(STDOUT_FILENO) && isatty(STDIN_FILENO))
        return live(interval);
    char *err = NULL;
    json_t *st = fetch(&err);
    if (!st) {
        fprintf(stderr, "%s\n", err);
        free(err);
        return EXIT_REFUSED;
    }
    if (json) {
        json_dumpf(st, stdout, JSON_INDENT(2));
        putchar('\n');
    } else {
        const char *cols = getenv("COLUMNS");
        Screen s = {.width = cols && atoi(cols) > 20 ? atoi(cols) : 4096}; /* a file or pipe: whole lines */
        render(&s, st, NULL, interval, false);
        for (size_t i = 0; i < s.n; i++)
            puts(s.lines[i]);
        screen_clear(&s);
        free(s.lines);
    }
    json_decref(st);
    return fflush(stdout) == 0 ? 0 : EXIT_REFUSED;
}

int main(int argc, char **argv)
{
    setlocale(LC_ALL, "");
    /* relctl runs it with its line (relctl -H HOST top ...: options
     * anywhere): the word top goes, where reld is goes to via, the rest is
     * top's own. */
    char **own = xcalloc((size_t)argc + 1, sizeof(*own));
    int n_own = 0;
    bool seen_top = false;
    for (int i = 0; i < argc; i++) {
        const char *w = argv[i];
        bool valued = strcmp(w, "-H") == 0 || strcmp(w, "--host") == 0 || strcmp(w, "--socket") == 0;
        if (i > 0 && !seen_top && strcmp(w, "top") == 0) {
            seen_top = true;
        } else if (i > 0 && valued && i + 1 < argc) {
            strvec_push(&via, w);
            strvec_push(&via, argv[++i]);
        } else if (i > 0 && (strncmp(w, "--host=", 7) == 0 || strncmp(w, "--socket=", 9) == 0)) {
            strvec_push(&via, w);
        } else {
            own[n_own++] = argv[i];
        }
    }
    int r = top_main(n_own, own);
    free(own);
    strvec_clear(&via);
    return r;
}
