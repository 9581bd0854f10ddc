/* executor-steps: the executor's own cost per instruction that calls no
 * process (issue 13, item 4), in process, as reld drives it (upgrade.c: a
 * step, then a turn of the event loop), without reld's progress lines and
 * socket: upgrades and downgrades between releases 1 and 2 of ROOT (a
 * root of bench/gen-release-pair.py without processes), each a new
 * attempt in a new history in DIR.
 *
 * History commits are counted by wrapping sqlite3_exec (the link option
 * -Wl,--wrap=sqlite3_exec): every COMMIT history.c runs goes through it,
 * in main's code and in this one, so that both count alike.
 *
 * Usage: executor-steps ROOT DB_DIR RUNS
 * Prints one JSON line per run: {"dir", "n", "ms", "us_per_instr" (wall
 * time), "cpu_us_per_instr" (this thread's CPU time), "commits"}. Exit 1 with one line on any failure. */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "executor.h"
#include "store.h"

static long long commits;

/* CPU time of this thread, in microseconds: what the load of a shared
 * machine inflates less than wall time (preemption is not in it). */
static long long cpu_us(void)
{
    struct timespec t;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t) < 0)
        return 0;
    return (long long)t.tv_sec * 1000000 + t.tv_nsec / 1000;
}

int __real_sqlite3_exec(sqlite3 *db, const char *sql, int (*cb)(void *, int, char **, char **), void *arg, char **err);
int __wrap_sqlite3_exec(sqlite3 *db, const char *sql, int (*cb)(void *, int, char **, char **), void *arg, char **err);
int __wrap_sqlite3_exec(sqlite3 *db, const char *sql, int (*cb)(void *, int, char **, char **), void *arg, char **err)
{
    int rc = __real_sqlite3_exec(db, sql, cb, arg, err);
    if (rc == SQLITE_OK && strncmp(sql, "COMMIT", 6) == 0)
        commits++;
    return rc;
}

static void die(const char *what, Diag *d)
{
    fprintf(stderr, "executor-steps: %s: %s\n", what, d && d->errors.n ? d->errors.v[0] : "failed");
    exit(1);
}

static void on_wake(void *userdata)
{
    *(bool *)userdata = true;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: executor-steps ROOT DB_DIR RUNS\n");
        return 2;
    }
    const char *root = argv[1];
    int runs = atoi(argv[3]);
    Diag d = {0};
    sd_event *ev = NULL;
    History *hist = NULL;
    Supervisor *sup = NULL;
    char *db = NULL, *err = NULL;
    if (asprintf(&db, "%s/bench.db", argv[2]) < 0 || sd_event_new(&ev) < 0)
        die("setup", NULL);
    if (history_open(db, &hist, &err) < 0) {
        fprintf(stderr, "executor-steps: %s\n", err ? err : db);
        return 1;
    }
    if (supervisor_new(ev, hist, root, &sup) < 0)
        die("supervisor_new", NULL);
    ReleaseDef *rel[2] = {NULL, NULL};
    if (store_load_release(root, "1", &rel[0], &d) < 0 || store_load_release(root, "2", &rel[1], &d) < 0)
        die("store_load_release", &d);
    Relup *relup = NULL;
    bool stored;
    if (store_relup(root, "1", "2", true, &relup, &stored, &d) < 0)
        die("store_relup", &d);
    diag_clear(&d);
    if (supervisor_start_release(sup, rel[0], &d) < 0)
        die("supervisor_start_release", &d);
    for (int k = 0; k < runs; k++) {
        bool up = k % 2 == 0;
        const ReleaseDef *from = rel[!up], *to = rel[up];
        const RelupScript *script = up ? &relup->up : &relup->down;
        int64_t attempt;
        if (history_attempt_begin(hist, "bench", up ? "upgrade" : "downgrade", from->vsn, to->vsn, &attempt) < 0)
            die(history_last_error(hist), NULL);
        bool woken = false;
        ExecutorParams p = {.supervisor = sup,
                            .history = hist,
                            .root = root,
                            .from = from,
                            .to = to,
                            .script = script,
                            .attempt = attempt,
                            .wake = on_wake,
                            .userdata = &woken};
        Executor *ex = NULL;
        if (executor_new(&p, &ex) < 0)
            die("executor_new", NULL);
        long long c0 = commits, t0 = mono_us(), cpu0 = cpu_us();
        int r;
        /* As upgrade.c: a step; the loop's other events between steps. */
        while ((r = executor_step(ex, &d)) == 1)
            if (sd_event_run(ev, 0) < 0)
                die("sd_event_run", NULL);
        long long t = mono_us() - t0, cpu = cpu_us() - cpu0;
        if (r != 0)
            die("executor_step", &d); /* no process: nothing waits */
        ex = executor_free(ex);
        if (history_attempt_end(hist, attempt, "ok", NULL) < 0)
            die(history_last_error(hist), NULL);
        printf("{\"dir\": \"%s\", \"n\": %zu, \"ms\": %.3f, \"us_per_instr\": %.3f, \"cpu_us_per_instr\": %.3f, "
               "\"commits\": %lld}\n",
               up ? "up" : "down", script->n, (double)t / 1000.0, (double)t / (double)script->n,
               (double)cpu / (double)script->n, commits - c0);
        fflush(stdout);
    }
    supervisor_free(sup);
    history_close(hist);
    sd_event_unref(ev);
    release_def_free(rel[0]);
    release_def_free(rel[1]);
    relup_free(relup);
    free(db);
    return 0;
}
