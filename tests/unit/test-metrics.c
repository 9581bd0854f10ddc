/* Unit tests of what operators watch: procstat (figures from /proc),
 * metrics (the Prometheus text and its file), events (MESSAGE_IDs), and
 * the config keys of metrics. */
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <syslog.h>
#include <unistd.h>

#include "config.h"
#include "events.h"
#include "metrics.h"
#include "procstat.h"
#include "testlib.h"
#include "testloop.h"

static char tmpdir[] = "/tmp/test-metrics-XXXXXX";

static void setup(void)
{
    strcpy(tmpdir, "/tmp/test-metrics-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void teardown(void)
{
    char *cmd = xasprintf("rm -rf '%s'", tmpdir);
    ck_assert_int_eq(system(cmd), 0);
    free(cmd);
}

static char *slurp(const char *path)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    int c;
    size_t cap = 0;
    while ((c = fgetc(f)) != EOF) {
        GROW(buf, cap, len + 2);
        buf[len++] = (char)c;
    }
    fclose(f);
    if (!buf)
        return xstrdup("");
    buf[len] = 0;
    return buf;
}

/* ---- procstat ------------------------------------------------------------------- */

START_TEST(parse_counts_fields_after_the_last_parenthesis)
{
    /* comm "a) (b c" holds spaces and parentheses; utime 7, stime 5,
     * starttime 1234, rss 10 pages. */
    const char *text = "42 (a) (b c) S 1 42 42 0 -1 4194304 100 0 0 0 7 5 0 0 20 0 1 0 1234 1000000 10 "
                       "18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n";
    ProcSample s;
    ck_assert_int_eq(procstat_parse(text, &s), 0);
    ck_assert_uint_eq(s.cpu_ticks, 12);
    ck_assert_uint_eq(s.start_ticks, 1234);
    ck_assert_uint_eq(s.rss_bytes, 10 * (uint64_t)sysconf(_SC_PAGESIZE));
}
END_TEST

START_TEST(parse_refuses_what_is_not_a_stat_line)
{
    ProcSample s;
    ck_assert_int_eq(procstat_parse("", &s), -EINVAL);
    ck_assert_int_eq(procstat_parse(NULL, &s), -EINVAL);
    ck_assert_int_eq(procstat_parse("42 (x) S 1 2 3", &s), -EINVAL); /* too short */
    ck_assert_int_eq(procstat_parse("42 (x) S 1 2 3 x 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22", &s),
                     -EINVAL); /* not a number */
    ck_assert_int_eq(procstat_parse("42 no parenthesis S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21", &s),
                     -EINVAL);
}
END_TEST

START_TEST(read_self_and_a_pid_that_is_not_there)
{
    ProcSample s;
    ck_assert_int_eq(procstat_read(0, &s), 0);
    ck_assert_uint_gt(s.rss_bytes, 0);
    ck_assert_int_eq(procstat_read(getpid(), &s), 0);
    ck_assert_int_eq(procstat_read(0x3ffffff, &s), -ENOENT); /* above pid_max's limit */
}
END_TEST

/* A child that burns CPU until killed. */
static pid_t spinner(void)
{
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        /* Gone with the test, also when an assertion ends it before reap():
         * (with CK_FORK=no) a spinner left holding the output would keep
         * meson waiting until its timeout. */
        (void)prctl(PR_SET_PDEATHSIG, SIGKILL); /* cannot fail with a valid signal */
        for (volatile unsigned long x = 0;; x++)
            ;
    }
    return pid;
}

static void reap(pid_t pid)
{
    ck_assert_int_eq(kill(pid, SIGKILL), 0);
    ck_assert_int_eq(waitpid(pid, NULL, 0), pid);
}

START_TEST(get_measures_cpu_between_samples_and_bounds_its_rate)
{
    ProcStats *t = procstat_new();
    pid_t pid = spinner();
    ProcFigures a, b, c;
    long long t0 = mono_ms();
    ck_assert_int_eq(procstat_get(t, pid, t0, &a), 0);
    /* Within PROCSTAT_MIN_INTERVAL_MS: the same figures, /proc not read. */
    ck_assert_int_eq(procstat_get(t, pid, t0 + PROCSTAT_MIN_INTERVAL_MS - 1, &b), 0);
    ck_assert(a.cpu_percent == b.cpu_percent && a.rss_bytes == b.rss_bytes && a.uptime_s == b.uptime_s &&
              a.cpu_seconds == b.cpu_seconds);
    /* Wait (bounded) until the spinner has used CPU time since the sample. */
    ProcSample s0, s1;
    ck_assert_int_eq(procstat_read(pid, &s0), 0);
    long long deadline = mono_ms() + 20000;
    do {
        usleep(50000);
        ck_assert_int_eq(procstat_read(pid, &s1), 0);
    } while (s1.cpu_ticks < s0.cpu_ticks + 20 && mono_ms() < deadline);
    ck_assert_uint_ge(s1.cpu_ticks, s0.cpu_ticks + 20);
    /* At least PROCSTAT_MIN_INTERVAL_MS after the first sample, so that
     * /proc is read again: 20 ticks can take less wall time than that. */
    ck_assert_int_eq(procstat_get(t, pid, mono_ms() + PROCSTAT_MIN_INTERVAL_MS, &c), 0);
    ck_assert(c.cpu_percent > 0);
    ck_assert(c.cpu_seconds > a.cpu_seconds);
    ck_assert_uint_gt(c.rss_bytes, 0);
    ck_assert(c.uptime_s >= 0);
    ck_assert_uint_eq(procstat_size(t), 1);
    reap(pid);
    ck_assert_int_eq(procstat_get(t, pid, mono_ms() + 2LL * PROCSTAT_MIN_INTERVAL_MS, &c), -ENOENT);
    procstat_free(t);
}
END_TEST

START_TEST(get_forgets_pids_nobody_asks_about)
{
    ProcStats *t = procstat_new();
    ProcFigures f;
    long long now = mono_ms();
    ck_assert_int_eq(procstat_get(t, getpid(), now, &f), 0);
    ck_assert_int_eq(procstat_get(t, getppid(), now, &f), 0);
    ck_assert_uint_eq(procstat_size(t), 2);
    ck_assert_int_eq(procstat_get(t, getpid(), now + PROCSTAT_FORGET_MS / 2, &f), 0);
    ck_assert_int_eq(procstat_get(t, getpid(), now + PROCSTAT_FORGET_MS + 1, &f), 0);
    ck_assert_uint_eq(procstat_size(t), 1); /* getppid()'s went */
    procstat_free(t);
}
END_TEST

/* ---- metrics: the text ---------------------------------------------------------- */

static json_t *status_fixture(void)
{
    json_error_t e;
    json_t *s =
        json_loads("{\"releases\": [{\"name\": \"kv\", \"vsn\": \"1\", \"state\": \"permanent\"},"
                   "                {\"name\": \"k\\\"v\", \"vsn\": \"2\", \"state\": \"current\"}],"
                   " \"upgrade\": {\"from\": \"1\", \"to\": \"2\", \"done\": 3, \"of\": 7},"
                   " \"processes\": [{\"app\": \"kvcounter\", \"process\": \"kv\", \"pid\": 10, \"state\": \"running\","
                   "                  \"restarts\": 2, \"health\": {\"state\": \"healthy\"}, \"cpu_seconds\": 1.5,"
                   "                  \"rss_bytes\": 4096, \"uptime_s\": 10},"
                   "                 {\"app\": \"web\", \"process\": \"a\\nb\", \"pid\": 0, \"state\": \"exited\","
                   "                  \"restarts\": 0, \"health\": null}],"
                   " \"reld\": {\"pid\": 1, \"rss_bytes\": 5000000, \"cpu_seconds\": 0.25}}",
                   0, &e);
    ck_assert_ptr_nonnull(s);
    return s;
}

START_TEST(render_gauges_from_status_with_labels_escaped)
{
    Metrics *x = metrics_new();
    json_t *st = status_fixture();
    char *text = metrics_render(x, st);
    ck_assert_ptr_nonnull(strstr(text, "reld_release{name=\"kv\",version=\"1\",state=\"permanent\"} 1\n"));
    ck_assert_ptr_nonnull(strstr(text, "reld_release{name=\"k\\\"v\",version=\"2\",state=\"current\"} 1\n"));
    ck_assert_ptr_nonnull(strstr(text, "reld_upgrade_in_progress 1\n"));
    ck_assert_ptr_nonnull(strstr(text, "reld_upgrade_instructions_done 3\n"));
    ck_assert_ptr_nonnull(strstr(text, "reld_upgrade_instructions 7\n"));
    ck_assert_ptr_nonnull(strstr(text, "reld_processes{state=\"running\"} 1\n"));
    ck_assert_ptr_nonnull(strstr(text, "reld_processes{state=\"exited\"} 1\n"));
    ck_assert_ptr_nonnull(
        strstr(text, "reld_process_restarts_total{process=\"kvcounter/kv\",application=\"kvcounter\"} 2\n"));
    ck_assert_ptr_nonnull(strstr(text, "reld_process_restarts_total{process=\"web/a\\nb\",application=\"web\"} 0\n"));
    ck_assert_ptr_nonnull(strstr(text, "reld_process_healthy{process=\"kvcounter/kv\",application=\"kvcounter\"} 1\n"));
    ck_assert_ptr_null(strstr(text, "reld_process_healthy{process=\"web/")); /* no health checks: no series */
    ck_assert_ptr_null(strstr(text, "reld_process_resident_memory_bytes{process=\"web/")); /* not running */
    ck_assert_ptr_nonnull(
        strstr(text, "reld_process_resident_memory_bytes{process=\"kvcounter/kv\",application=\"kvcounter\"} 4096\n"));
    ck_assert_ptr_nonnull(strstr(text, "reld_resident_memory_bytes 5000000\n"));
    ck_assert_ptr_nonnull(strstr(text, "# TYPE reld_attempts_total counter\n"));
    /* Every line is a comment or NAME{...} VALUE: nothing else. */
    for (char *l = text; *l; l = strchr(l, '\n') + 1) {
        ck_assert(l[0] == '#' || strncmp(l, "reld_", 5) == 0);
        ck_assert_ptr_nonnull(strchr(l, '\n'));
    }
    free(text);
    json_decref(st);
    /* Without a status (it could not be read): the counters alone. */
    text = metrics_render(x, NULL);
    ck_assert_ptr_nonnull(strstr(text, "reld_upgrade_in_progress 0\n"));
    ck_assert_ptr_nonnull(strstr(text, "reld_unpacks_total{result=\"ok\"} 0\n"));
    ck_assert_ptr_null(strstr(text, "reld_release{"));
    free(text);
    metrics_free(x);
}
END_TEST

START_TEST(render_counters_and_cumulative_histograms)
{
    Metrics *x = metrics_new();
    metrics_count_attempt(x, "upgrade", "current");
    metrics_count_attempt(x, "upgrade", "current");
    metrics_count_attempt(x, "upgrade", "rolled_back");
    metrics_count_attempt(x, NULL, "current"); /* ignored */
    metrics_count_unpack(x, true, 1000);
    metrics_count_unpack(x, true, 24);
    metrics_count_unpack(x, false, 99); /* a refused one's bytes do not count */
    metrics_observe_instruction(x, "suspend", 0.0002);
    metrics_observe_instruction(x, "suspend", 0.003);
    metrics_observe_instruction(x, "suspend", 100); /* beyond every bound: +Inf only */
    metrics_observe_pause(x, "kvcounter/kv", 0.0004);
    char *text = metrics_render(x, NULL);
    ck_assert_ptr_nonnull(strstr(text, "reld_attempts_total{kind=\"upgrade\",outcome=\"current\"} 2\n"));
    ck_assert_ptr_nonnull(strstr(text, "reld_attempts_total{kind=\"upgrade\",outcome=\"rolled_back\"} 1\n"));
    ck_assert_ptr_nonnull(strstr(text, "reld_unpacks_total{result=\"ok\"} 2\n"));
    ck_assert_ptr_nonnull(strstr(text, "reld_unpacks_total{result=\"refused\"} 1\n"));
    ck_assert_ptr_nonnull(strstr(text, "reld_unpacked_bytes_total 1024\n"));
    ck_assert_ptr_nonnull(strstr(text, "reld_instruction_duration_seconds_bucket{op=\"suspend\",le=\"0.0001\"} 0\n"));
    ck_assert_ptr_nonnull(strstr(text, "reld_instruction_duration_seconds_bucket{op=\"suspend\",le=\"0.00025\"} 1\n"));
    ck_assert_ptr_nonnull(strstr(text, "reld_instruction_duration_seconds_bucket{op=\"suspend\",le=\"0.005\"} 2\n"));
    ck_assert_ptr_nonnull(strstr(text, "reld_instruction_duration_seconds_bucket{op=\"suspend\",le=\"10\"} 2\n"));
    ck_assert_ptr_nonnull(strstr(text, "reld_instruction_duration_seconds_bucket{op=\"suspend\",le=\"+Inf\"} 3\n"));
    ck_assert_ptr_nonnull(strstr(text, "reld_instruction_duration_seconds_count{op=\"suspend\"} 3\n"));
    ck_assert_ptr_nonnull(strstr(text, "reld_process_pause_seconds_count{process=\"kvcounter/kv\"} 1\n"));
    free(text);
    metrics_free(x);
}
END_TEST

START_TEST(last_pause_sums_the_last_upgrade_only)
{
    Metrics *x = metrics_new();
    ck_assert(metrics_last_pause_ms(x, "a/p") < 0);
    metrics_pauses_begin(x);
    metrics_observe_pause(x, "a/p", 0.001);
    metrics_observe_pause(x, "a/p", 0.002);
    ck_assert(metrics_last_pause_ms(x, "a/p") > 2.99 && metrics_last_pause_ms(x, "a/p") < 3.01);
    metrics_pauses_begin(x); /* the next upgrade did not pause it */
    ck_assert(metrics_last_pause_ms(x, "a/p") < 0);
    metrics_observe_pause(x, "b/q", 0.0005);
    ck_assert(metrics_last_pause_ms(x, "b/q") > 0.49 && metrics_last_pause_ms(x, "b/q") < 0.51);
    metrics_free(x);
}
END_TEST

START_TEST(series_per_histogram_are_bounded)
{
    Metrics *x = metrics_new();
    for (int i = 0; i < METRICS_MAX_SERIES + 10; i++) {
        char label[32];
        snprintf(label, sizeof(label), "app/p%d", i);
        metrics_observe_pause(x, label, 0.001);
    }
    char *text = metrics_render(x, NULL);
    size_t n = 0;
    for (const char *p = text; (p = strstr(p, "reld_process_pause_seconds_count{")); p++)
        n++;
    ck_assert_uint_eq(n, METRICS_MAX_SERIES + 1); /* and "other" */
    ck_assert_ptr_nonnull(strstr(text, "reld_process_pause_seconds_count{process=\"other\"} 10\n"));
    free(text);
    metrics_free(x);
}
END_TEST

START_TEST(annotate_adds_figures_of_running_processes_and_reld)
{
    Metrics *x = metrics_new();
    ProcStats *t = procstat_new();
    json_t *st = json_pack("{s:[{s:s, s:s, s:i}, {s:s, s:s, s:i}]}", "processes", "app", "a", "process", "p", "pid",
                           (int)getppid(), "app", "a", "process", "gone", "pid", 0);
    metrics_observe_pause(x, "a/p", 0.002);
    metrics_annotate(x, t, st, mono_ms());
    json_t *p = json_array_get(json_object_get(st, "processes"), 0),
           *q = json_array_get(json_object_get(st, "processes"), 1);
    ck_assert(json_integer_value(json_object_get(p, "rss_bytes")) > 0);
    ck_assert(json_is_real(json_object_get(p, "cpu_percent")));
    ck_assert(json_is_real(json_object_get(p, "uptime_s")));
    ck_assert(json_real_value(json_object_get(p, "last_pause_ms")) > 1.99);
    ck_assert_ptr_null(json_object_get(q, "rss_bytes"));
    ck_assert(json_is_null(json_object_get(q, "last_pause_ms")));
    json_t *self = json_object_get(st, "reld");
    ck_assert_int_eq(json_integer_value(json_object_get(self, "pid")), getpid());
    ck_assert(json_integer_value(json_object_get(self, "rss_bytes")) > 0);
    json_decref(st);
    procstat_free(t);
    metrics_free(x);
}
END_TEST

/* ---- metrics: the file ---------------------------------------------------------- */

START_TEST(write_file_replaces_it_whole)
{
    char *path = xasprintf("%s/reld.prom", tmpdir), *tmp = xasprintf("%s.tmp", path);
    ck_assert_int_eq(metrics_write_file(path, "a 1\n"), 0);
    ck_assert_int_eq(metrics_write_file(path, "b 2\n"), 0);
    char *text = slurp(path);
    ck_assert_str_eq(text, "b 2\n");
    ck_assert_int_eq(access(tmp, F_OK), -1);
    free(text);
    char *nowhere = xasprintf("%s/no/reld.prom", tmpdir);
    ck_assert_int_eq(metrics_write_file(nowhere, "a 1\n"), -ENOENT);
    /* A directory in the way of the rename: the temporary file goes. */
    char *dir = xasprintf("%s/dir.prom", tmpdir), *dirtmp = xasprintf("%s.tmp", dir);
    ck_assert_int_eq(mkdir(dir, 0755), 0);
    ck_assert_int_eq(metrics_write_file(dir, "a 1\n"), -EISDIR);
    ck_assert_int_eq(access(dirtmp, F_OK), -1);
    free(dir);
    free(dirtmp);
    free(nowhere);
    free(path);
    free(tmp);
}
END_TEST

static int n_status_calls;
static json_t *fixture_status(void *userdata)
{
    n_status_calls++;
    return userdata ? json_incref(userdata) : NULL;
}

static Metrics *loop_metrics;
static bool written_twice(void)
{
    return metrics_writes(loop_metrics, NULL) >= 2;
}
static bool written_once(void)
{
    return metrics_writes(loop_metrics, NULL) >= 1;
}

START_TEST(start_writes_at_once_and_soon_after_a_change)
{
    sd_event *ev = NULL;
    ck_assert_int_ge(sd_event_new(&ev), 0);
    char *path = xasprintf("%s/reld.prom", tmpdir);
    json_t *st = status_fixture();
    Metrics *x = loop_metrics = metrics_new();
    metrics_changed(x); /* not started: nothing */
    n_status_calls = 0;
    ck_assert_int_eq(metrics_start(x, ev, path, 3600000, fixture_status, st), 0);
    ck_assert_int_eq(metrics_start(x, ev, path, 3600000, fixture_status, st), -EINVAL); /* once */
    ck_assert(test_run_until(ev, written_once, 10000));
    char *text = slurp(path);
    ck_assert_ptr_nonnull(strstr(text, "reld_release{name=\"kv\",version=\"1\",state=\"permanent\"} 1\n"));
    free(text);
    /* The interval is an hour: a change is written all the same, soon. */
    metrics_count_attempt(x, "upgrade", "current");
    metrics_changed(x);
    metrics_changed(x); /* twice: one write */
    ck_assert(test_run_until(ev, written_twice, 10000));
    text = slurp(path);
    ck_assert_ptr_nonnull(strstr(text, "reld_attempts_total{kind=\"upgrade\",outcome=\"current\"} 1\n"));
    free(text);
    unsigned failed = 99;
    ck_assert_uint_eq(metrics_writes(x, &failed), 2);
    ck_assert_uint_eq(failed, 0);
    ck_assert_int_eq(n_status_calls, 2);
    metrics_free(x);
    json_decref(st);
    sd_event_unref(ev);
    free(path);
}
END_TEST

START_TEST(a_write_that_fails_is_counted_and_tried_again)
{
    sd_event *ev = NULL;
    ck_assert_int_ge(sd_event_new(&ev), 0);
    char *path = xasprintf("%s/later/reld.prom", tmpdir), *dir = xasprintf("%s/later", tmpdir);
    Metrics *x = loop_metrics = metrics_new();
    ck_assert_int_eq(metrics_start(x, ev, path, 500, fixture_status, NULL), 0); /* at least 1000 ms */
    ck_assert(test_run_until(ev, written_once, 10000));
    unsigned failed = 0;
    ck_assert_uint_eq(metrics_writes(x, &failed), 1);
    ck_assert_uint_eq(failed, 1);
    ck_assert_int_eq(mkdir(dir, 0755), 0);
    ck_assert(test_run_until(ev, written_twice, 10000));
    ck_assert_uint_eq(metrics_writes(x, &failed), 2);
    ck_assert_uint_eq(failed, 1);
    char *text = slurp(path);
    ck_assert_ptr_nonnull(strstr(text, "reld_unpacks_total{result=\"ok\"} 0\n")); /* no status: counters */
    free(text);
    metrics_free(x);
    sd_event_unref(ev);
    free(path);
    free(dir);
}
END_TEST

/* ---- events --------------------------------------------------------------------- */

START_TEST(message_ids_are_fixed_distinct_ids)
{
    for (int k = 0; k < _EVENT_MAX; k++) {
        const char *id = events_message_id((EventKind)k);
        ck_assert_ptr_nonnull(id);
        ck_assert_uint_eq(strlen(id), 32);
        ck_assert_uint_eq(strspn(id, "0123456789abcdef"), 32);
        ck_assert_ptr_nonnull(events_name((EventKind)k));
        for (int j = 0; j < k; j++) {
            ck_assert_str_ne(id, events_message_id((EventKind)j));
            ck_assert_str_ne(events_name((EventKind)k), events_name((EventKind)j));
        }
    }
    ck_assert_ptr_null(events_message_id(_EVENT_MAX));
    ck_assert_str_eq(events_message_id(EVENT_ROLLED_BACK), "9126c1b9131543799b63c3f022e64bd3");
}
END_TEST

START_TEST(emit_without_the_journal_is_one_log_line_with_the_fields)
{
    /* stderr into a file: not the journal (no JOURNAL_STREAM names it). */
    unsetenv("JOURNAL_STREAM");
    char *path = xasprintf("%s/stderr", tmpdir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644), saved = dup(STDERR_FILENO);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_ge(dup2(fd, STDERR_FILENO), 0);
    events_emit(EVENT_ROLLED_BACK, LOG_WARNING,
                &(EventFields){.release = "kv", .version = "2", .attempt_id = 7, .outcome = "rolled_back"},
                "upgrade of release %s: %s", "2", "rolled_back");
    events_emit(EVENT_UNPACKED, LOG_INFO, NULL, "no fields");
    events_emit(_EVENT_MAX, LOG_INFO, NULL, "not an event"); /* nothing */
    ck_assert_int_ge(dup2(saved, STDERR_FILENO), 0);
    close(saved);
    close(fd);
    char *text = slurp(path);
    ck_assert_str_eq(text, "reld: warning: upgrade of release 2: rolled_back [event=rolled_back "
                           "MESSAGE_ID=9126c1b9131543799b63c3f022e64bd3 RELEASE=kv VERSION=2 ATTEMPT_ID=7 "
                           "OUTCOME=rolled_back]\n"
                           "reld: no fields [event=unpacked MESSAGE_ID=17875a935c0b483cb96a56f5eb00ada3]\n");
    free(text);
    free(path);
}
END_TEST

static int heard[_EVENT_MAX];
static void hear(EventKind kind, void *userdata)
{
    heard[kind] += userdata == heard ? 1 : 100;
}

START_TEST(a_listener_hears_every_event_until_it_stops)
{
    char *path = xasprintf("%s/stderr", tmpdir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644), saved = dup(STDERR_FILENO);
    ck_assert_int_ge(dup2(fd, STDERR_FILENO), 0);
    memset(heard, 0, sizeof(heard));
    events_listen(hear, heard);
    events_emit(EVENT_PROCESS_EXITED, LOG_WARNING, &(EventFields){.process = "a/p"}, "a/p (pid 1) ended: exit 1");
    events_emit(EVENT_STATE, LOG_INFO, NULL, "x");
    events_listen(NULL, tmpdir); /* not the one listening: nothing changes */
    events_emit(EVENT_STATE, LOG_INFO, NULL, "y");
    events_listen(NULL, heard);
    events_emit(EVENT_STATE, LOG_INFO, NULL, "z");
    ck_assert_int_ge(dup2(saved, STDERR_FILENO), 0);
    close(saved);
    close(fd);
    ck_assert_int_eq(heard[EVENT_PROCESS_EXITED], 1);
    ck_assert_int_eq(heard[EVENT_STATE], 2);
    char *text = slurp(path);
    ck_assert_ptr_nonnull(strstr(text, "reld: warning: a/p (pid 1) ended: exit 1 [event=process_exited "
                                       "MESSAGE_ID=0ea72c25f27a45d887db970f1798b847 PROCESS=a/p]\n"));
    free(text);
    free(path);
}
END_TEST

START_TEST(status_goes_to_the_notify_socket)
{
    char *sock = xasprintf("%s/notify", tmpdir);
    int s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strcpy(a.sun_path, sock);
    ck_assert_int_eq(bind(s, (struct sockaddr *)&a, sizeof(a)), 0);
    setenv("NOTIFY_SOCKET", sock, 1);
    events_status("upgrade %s -> %s: instruction %d of %d (%s)", "1", "2", 3, 7, "suspend kv");
    unsetenv("NOTIFY_SOCKET");
    char buf[512];
    ssize_t n = recv(s, buf, sizeof(buf) - 1, MSG_DONTWAIT);
    ck_assert_int_gt(n, 0);
    buf[n] = 0;
    ck_assert_str_eq(buf, "STATUS=upgrade 1 -> 2: instruction 3 of 7 (suspend kv)");
    close(s);
    free(sock);
}
END_TEST

/* ---- config --------------------------------------------------------------------- */

static int load(const char *text, DaemonConfig *c, char **err)
{
    char *path = xasprintf("%s/reld.yaml", tmpdir);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
    int r = config_load(c, path, err);
    free(path);
    return r;
}

START_TEST(config_metrics_keys)
{
    DaemonConfig c;
    config_init(&c);
    ck_assert_ptr_null(c.metrics_file); /* off by default */
    ck_assert_int_eq(c.metrics_interval_ms, 15000);
    char *err = NULL;
    ck_assert_int_eq(load("metrics_file: /var/lib/node/reld.prom\nmetrics_interval_ms: 5000\n", &c, &err), 0);
    ck_assert_str_eq(c.metrics_file, "/var/lib/node/reld.prom");
    ck_assert_int_eq(c.metrics_interval_ms, 5000);
    DaemonConfig d;
    config_copy(&d, &c);
    ck_assert_str_eq(d.metrics_file, "/var/lib/node/reld.prom");
    ck_assert_int_eq(d.metrics_interval_ms, 5000);
    config_clear(&d);
    static const struct {
        const char *text, *want;
    } bad[] = {
        {"metrics_file: reld.prom\n", "metrics_file must be an absolute path ending in .prom"},
        {"metrics_file: /x/reld.txt\n", "metrics_file must be an absolute path ending in .prom"},
        {"metrics_interval_ms: 999\n", "metrics_interval_ms"},
        {"metrics_interval_ms: often\n", "metrics_interval_ms"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ck_assert_int_eq(load(bad[i].text, &c, &err), -EINVAL);
        ck_assert_ptr_nonnull(strstr(err, bad[i].want));
        ck_assert_ptr_nonnull(strstr(err, "reld.yaml:1:")); /* where */
        free(err);
        err = NULL;
        ck_assert_str_eq(c.metrics_file, "/var/lib/node/reld.prom"); /* untouched */
    }
    config_clear(&c);
}
END_TEST

static Suite *metrics_suite(void)
{
    Suite *s = suite_create("metrics");
    struct {
        const char *name;
        const TTest *tests[8];
    } cases[] = {
        {"procstat",
         {parse_counts_fields_after_the_last_parenthesis, parse_refuses_what_is_not_a_stat_line,
          read_self_and_a_pid_that_is_not_there, get_measures_cpu_between_samples_and_bounds_its_rate,
          get_forgets_pids_nobody_asks_about}},
        {"metrics_render",
         {render_gauges_from_status_with_labels_escaped, render_counters_and_cumulative_histograms,
          last_pause_sums_the_last_upgrade_only, series_per_histogram_are_bounded,
          annotate_adds_figures_of_running_processes_and_reld}},
        {"metrics_file",
         {write_file_replaces_it_whole, start_writes_at_once_and_soon_after_a_change,
          a_write_that_fails_is_counted_and_tried_again}},
        {"events",
         {message_ids_are_fixed_distinct_ids, emit_without_the_journal_is_one_log_line_with_the_fields,
          a_listener_hears_every_event_until_it_stops, status_goes_to_the_notify_socket}},
        {"config", {config_metrics_keys}},
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
    return test_run_daemon_suite(metrics_suite());
}
