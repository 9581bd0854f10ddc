/* Prometheus metrics for node_exporter's textfile collector (metrics.h). */
#include "metrics.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

/* Seconds: a pause of a hot upgrade is 0.1-1 ms, an instruction that
 * starts or stops a process takes up to its shutdown_ms. */
static const double bounds[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                0.05,   0.1,     0.25,   0.5,   1,      2.5,   10};
#define N_BOUNDS (sizeof(bounds) / sizeof(bounds[0]))

typedef struct Hist {
    char *label;
    uint64_t counts[N_BOUNDS]; /* not cumulative; +Inf is n */
    uint64_t n;
    double sum;
    double last_ms; /* pauses: of the last upgrade, summed (-1: none) */
} Hist;

typedef struct HistSet {
    Hist *v;
    size_t n, cap;
} HistSet;

typedef struct Attempts {
    char *kind, *outcome;
    uint64_t n;
} Attempts;

struct Metrics {
    HistSet instr, pause;
    Attempts *attempts;
    size_t n_attempts, cap_attempts;
    uint64_t unpacks_ok, unpacks_refused, unpacked_bytes;
    /* writing */
    sd_event *ev;
    sd_event_source *timer;
    char *path;
    long interval_ms;
    json_t *(*status)(void *userdata);
    void *userdata;
    long long last_write_ms;
    unsigned writes, failed;
    bool failing;
};

Metrics *metrics_new(void)
{
    return xcalloc(1, sizeof(Metrics));
}

static void hists_clear(HistSet *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i].label);
    free(s->v);
}

Metrics *metrics_free(Metrics *x)
{
    if (!x)
        return NULL;
    hists_clear(&x->instr);
    hists_clear(&x->pause);
    for (size_t i = 0; i < x->n_attempts; i++) {
        free(x->attempts[i].kind);
        free(x->attempts[i].outcome);
    }
    free(x->attempts);
    sd_event_source_disable_unref(x->timer);
    sd_event_unref(x->ev);
    free(x->path);
    free(x);
    return NULL;
}

void metrics_count_attempt(Metrics *x, const char *kind, const char *outcome)
{
    if (!kind || !outcome)
        return;
    for (size_t i = 0; i < x->n_attempts; i++)
        if (strcmp(x->attempts[i].kind, kind) == 0 && strcmp(x->attempts[i].outcome, outcome) == 0) {
            x->attempts[i].n++;
            return;
        }
    GROW(x->attempts, x->cap_attempts, x->n_attempts + 1);
    x->attempts[x->n_attempts++] = (Attempts){.kind = xstrdup(kind), .outcome = xstrdup(outcome), .n = 1};
}

void metrics_count_unpack(Metrics *x, bool ok, uint64_t bytes)
{
    if (ok) {
        x->unpacks_ok++;
        x->unpacked_bytes += bytes;
    } else {
        x->unpacks_refused++;
    }
}

static Hist *hist(HistSet *s, const char *label)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->v[i].label, label) == 0)
            return &s->v[i];
    if (s->n >= METRICS_MAX_SERIES && strcmp(label, "other") != 0)
        return hist(s, "other"); /* a bounded number of series */
    GROW(s->v, s->cap, s->n + 1);
    s->v[s->n] = (Hist){.label = xstrdup(label), .last_ms = -1};
    return &s->v[s->n++];
}

static void observe(Hist *h, double seconds)
{
    if (seconds < 0)
        seconds = 0;
    size_t k = 0;
    while (k < N_BOUNDS && seconds > bounds[k])
        k++;
    if (k < N_BOUNDS)
        h->counts[k]++;
    h->n++;
    h->sum += seconds;
}

void metrics_observe_instruction(Metrics *x, const char *op, double seconds)
{
    observe(hist(&x->instr, op ? op : "unknown"), seconds);
}

void metrics_pauses_begin(Metrics *x)
{
    for (size_t i = 0; i < x->pause.n; i++)
        x->pause.v[i].last_ms = -1;
}

void metrics_observe_pause(Metrics *x, const char *process, double seconds)
{
    Hist *h = hist(&x->pause, process ? process : "unknown");
    observe(h, seconds);
    h->last_ms = (h->last_ms < 0 ? 0 : h->last_ms) + seconds * 1e3;
}

double metrics_last_pause_ms(const Metrics *x, const char *process)
{
    for (size_t i = 0; process && i < x->pause.n; i++)
        if (strcmp(x->pause.v[i].label, process) == 0)
            return x->pause.v[i].last_ms;
    return -1;
}

/* ---- status figures ------------------------------------------------------------- */

static json_t *figures(const ProcFigures *f)
{
    return json_pack("{s:f, s:I, s:f, s:f}", "cpu_percent", f->cpu_percent, "rss_bytes", (json_int_t)f->rss_bytes,
                     "uptime_s", f->uptime_s, "cpu_seconds", f->cpu_seconds);
}

void metrics_annotate(const Metrics *x, ProcStats *t, json_t *status, long long now_ms)
{
    size_t i;
    json_t *p;
    json_array_foreach(json_object_get(status, "processes"), i, p)
    {
        pid_t pid = (pid_t)json_integer_value(json_object_get(p, "pid"));
        ProcFigures f;
        if (pid > 0 && procstat_get(t, pid, now_ms, &f) == 0) { /* gone meanwhile: no figures */
            json_t *fj = figures(&f);
            (void)json_object_update(p, fj); /* fails only out of memory: then no figures */
            json_decref(fj);
        }
        char *label = xasprintf("%s/%s", json_string_value(json_object_get(p, "app")),
                                json_string_value(json_object_get(p, "process")));
        double last = metrics_last_pause_ms(x, label);
        json_object_set_new(p, "last_pause_ms", last < 0 ? json_null() : json_real(last));
        free(label);
    }
    ProcFigures self;
    if (procstat_get(t, getpid(), now_ms, &self) == 0) {
        json_t *r = figures(&self);
        json_object_set_new(r, "pid", json_integer(getpid()));
        json_object_set_new(status, "reld", r);
    }
}

/* ---- the text ------------------------------------------------------------------- */

/* A label value as the format wants it: \\, \" and \n escaped. */
static void put_label(FILE *f, const char *v)
{
    for (; v && *v; v++) {
        if (*v == '\\' || *v == '"')
            fprintf(f, "\\%c", *v);
        else if (*v == '\n')
            fputs("\\n", f);
        else
            fputc(*v, f);
    }
}

static void family(FILE *f, const char *name, const char *type, const char *help)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void put_hists(FILE *f, const char *name, const char *label, const HistSet *s)
{
    for (size_t i = 0; i < s->n; i++) {
        const Hist *h = &s->v[i];
        uint64_t cum = 0;
        for (size_t k = 0; k < N_BOUNDS; k++) {
            cum += h->counts[k];
            fprintf(f, "%s_bucket{%s=\"", name, label);
            put_label(f, h->label);
            fprintf(f, "\",le=\"%g\"} %" PRIu64 "\n", bounds[k], cum);
        }
        fprintf(f, "%s_bucket{%s=\"", name, label);
        put_label(f, h->label);
        fprintf(f, "\",le=\"+Inf\"} %" PRIu64 "\n%s_sum{%s=\"", h->n, name, label);
        put_label(f, h->label);
        fprintf(f, "\"} %.9g\n%s_count{%s=\"", h->sum, name, label);
        put_label(f, h->label);
        fprintf(f, "\"} %" PRIu64 "\n", h->n);
    }
}

static const char *str(const json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "";
}

/* A per-process series: NAME{process="app/proc",application="app"} VALUE. */
static void put_proc(FILE *f, const char *name, const json_t *p, double v)
{
    fprintf(f, "%s{process=\"", name);
    put_label(f, str(p, "app"));
    fputc('/', f);
    put_label(f, str(p, "process"));
    fputs("\",application=\"", f);
    put_label(f, str(p, "app"));
    fprintf(f, "\"} %.15g\n", v);
}

/* The states of supervisor_status(); "exited" waits for its restart. */
static const char *const proc_states[] = {"running", "stopping", "exited", "stopped"};

char *metrics_render(const Metrics *x, const json_t *status)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f)
        return NULL;
    size_t i;
    json_t *v;
    json_t *procs = json_object_get(status, "processes");

    family(f, "reld_release", "gauge", "Releases reld knows, 1 for each, with their state.");
    json_array_foreach(json_object_get(status, "releases"), i, v)
    {
        fputs("reld_release{name=\"", f);
        put_label(f, str(v, "name"));
        fputs("\",version=\"", f);
        put_label(f, str(v, "vsn"));
        fputs("\",state=\"", f);
        put_label(f, str(v, "state"));
        fputs("\"} 1\n", f);
    }

    json_t *up = json_object_get(status, "upgrade");
    family(f, "reld_upgrade_in_progress", "gauge", "1 while an upgrade or downgrade runs its relup.");
    fprintf(f, "reld_upgrade_in_progress %d\n", json_is_object(up) ? 1 : 0);
    family(f, "reld_upgrade_instructions_done", "gauge", "Instructions done of the upgrade under way.");
    fprintf(f, "reld_upgrade_instructions_done %lld\n", (long long)json_integer_value(json_object_get(up, "done")));
    family(f, "reld_upgrade_instructions", "gauge", "Instructions of the upgrade under way (0: planning or none).");
    fprintf(f, "reld_upgrade_instructions %lld\n", (long long)json_integer_value(json_object_get(up, "of")));

    family(f, "reld_attempts_total", "counter", "Installs, upgrades and downgrades since reld started, by outcome.");
    for (size_t k = 0; k < x->n_attempts; k++) {
        fputs("reld_attempts_total{kind=\"", f);
        put_label(f, x->attempts[k].kind);
        fputs("\",outcome=\"", f);
        put_label(f, x->attempts[k].outcome);
        fprintf(f, "\"} %" PRIu64 "\n", x->attempts[k].n);
    }

    family(f, "reld_instruction_duration_seconds", "histogram", "Durations of relup instructions, by instruction.");
    put_hists(f, "reld_instruction_duration_seconds", "op", &x->instr);
    family(f, "reld_process_pause_seconds", "histogram",
           "Pauses of processes during upgrades, from suspend to resumed.");
    put_hists(f, "reld_process_pause_seconds", "process", &x->pause);

    family(f, "reld_unpacks_total", "counter", "Release tarballs unpacked, or refused, since reld started.");
    fprintf(f, "reld_unpacks_total{result=\"ok\"} %" PRIu64 "\nreld_unpacks_total{result=\"refused\"} %" PRIu64 "\n",
            x->unpacks_ok, x->unpacks_refused);
    family(f, "reld_unpacked_bytes_total", "counter", "Bytes of the files of the releases unpacked.");
    fprintf(f, "reld_unpacked_bytes_total %" PRIu64 "\n", x->unpacked_bytes);

    family(f, "reld_processes", "gauge", "Processes by state (exited: waiting for its restart).");
    for (size_t k = 0; k < sizeof(proc_states) / sizeof(proc_states[0]); k++) {
        int n = 0;
        json_array_foreach(procs, i, v) n += strcmp(str(v, "state"), proc_states[k]) == 0;
        fprintf(f, "reld_processes{state=\"%s\"} %d\n", proc_states[k], n);
    }
    family(f, "reld_process_restarts_total", "counter", "Restarts of a process by its supervisor.");
    json_array_foreach(procs, i, v)
        put_proc(f, "reld_process_restarts_total", v, (double)json_integer_value(json_object_get(v, "restarts")));
    family(f, "reld_process_healthy", "gauge", "1 when a process passes its health checks.");
    json_array_foreach(procs, i, v) if (json_is_object(json_object_get(v, "health"))) put_proc(
        f, "reld_process_healthy", v, strcmp(str(json_object_get(v, "health"), "state"), "healthy") == 0 ? 1 : 0);
    family(f, "reld_process_cpu_seconds_total", "counter", "CPU time of a process, user and system.");
    json_array_foreach(procs, i, v) if (json_object_get(v, "cpu_seconds"))
        put_proc(f, "reld_process_cpu_seconds_total", v, json_number_value(json_object_get(v, "cpu_seconds")));
    family(f, "reld_process_resident_memory_bytes", "gauge", "Resident set of a process.");
    json_array_foreach(procs, i, v) if (json_object_get(v, "rss_bytes")) put_proc(
        f, "reld_process_resident_memory_bytes", v, (double)json_integer_value(json_object_get(v, "rss_bytes")));
    family(f, "reld_process_start_time_seconds", "gauge", "Start of a process, seconds since the epoch.");
    double now = (double)time(NULL);
    json_array_foreach(procs, i, v) if (json_object_get(v, "uptime_s"))
        put_proc(f, "reld_process_start_time_seconds", v, now - json_number_value(json_object_get(v, "uptime_s")));

    json_t *self = json_object_get(status, "reld");
    if (json_is_object(self)) {
        family(f, "reld_resident_memory_bytes", "gauge", "reld's own resident set.");
        fprintf(f, "reld_resident_memory_bytes %lld\n",
                (long long)json_integer_value(json_object_get(self, "rss_bytes")));
        family(f, "reld_cpu_seconds_total", "counter", "reld's own CPU time, user and system.");
        fprintf(f, "reld_cpu_seconds_total %.2f\n", json_number_value(json_object_get(self, "cpu_seconds")));
    }
    if (fclose(f) != 0) {
        free(text);
        return NULL;
    }
    return text;
}

int metrics_write_file(const char *path, const char *text)
{
    char *tmp = xasprintf("%s.tmp", path);
    int r = 0, fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        r = -errno;
        free(tmp);
        return r;
    }
    size_t len = strlen(text), done = 0;
    while (done < len && r == 0) {
        ssize_t n = write(fd, text + done, len - done);
        if (n < 0 && errno != EINTR)
            r = -errno;
        else if (n > 0)
            done += (size_t)n;
    }
    if (close(fd) < 0 && r == 0)
        r = -errno;
    if (r == 0 && rename(tmp, path) < 0)
        r = -errno;
    if (r < 0)
        (void)unlink(tmp); /* nothing half-written stays; it may not exist */
    free(tmp);
    return r;
}

/* ---- writing on a timer --------------------------------------------------------- */

static void write_now(Metrics *x)
{
    json_t *st = x->status(x->userdata);
    char *text = metrics_render(x, st);
    json_decref(st);
    int r = text ? metrics_write_file(x->path, text) : -ENOMEM;
    free(text);
    x->last_write_ms = mono_ms();
    x->writes++;
    if (r < 0) {
        x->failed++;
        if (!x->failing)
            log_error("metrics: cannot write %s: %s", x->path, strerror(-r));
    } else if (x->failing) {
        log_info("metrics: %s written again", x->path);
    }
    x->failing = r < 0;
}

static void arm(Metrics *x, long long at_ms)
{
    (void)sd_event_source_set_time(x->timer, (uint64_t)at_ms * 1000); /* fails only for a bad source */
    (void)sd_event_source_set_enabled(x->timer, SD_EVENT_ONESHOT);
}

static int on_timer(sd_event_source *s, uint64_t usec, void *userdata)
{
    Metrics *x = userdata;
    write_now(x);
    arm(x, x->last_write_ms + x->interval_ms);
    return 0;
}

int metrics_start(Metrics *x, sd_event *ev, const char *path, long interval_ms, json_t *(*status)(void *userdata),
                  void *userdata)
{
    if (x->timer || !path || !status)
        return -EINVAL;
    x->ev = sd_event_ref(ev);
    x->path = xstrdup(path);
    x->interval_ms = interval_ms < METRICS_MIN_INTERVAL_MS ? METRICS_MIN_INTERVAL_MS : interval_ms;
    x->status = status;
    x->userdata = userdata;
    /* Slack of a tenth of the interval: the kernel may group the wake-up
     * with others (an idle reld should not wake the machine by itself). */
    int r = sd_event_add_time(ev, &x->timer, CLOCK_MONOTONIC, 0, (uint64_t)x->interval_ms * 100, on_timer, x);
    if (r < 0)
        return r;
    arm(x, mono_ms());
    return 0;
}

void metrics_changed(Metrics *x)
{
    if (!x || !x->timer)
        return;
    long long soon = x->last_write_ms + METRICS_MIN_INTERVAL_MS, now = mono_ms();
    if (soon < now)
        soon = now;
    uint64_t due = 0;
    if (sd_event_source_get_time(x->timer, &due) == 0 && (long long)(due / 1000) <= soon)
        return; /* already due by then */
    arm(x, soon);
}

unsigned metrics_writes(const Metrics *x, unsigned *ret_failed)
{
    if (ret_failed)
        *ret_failed = x->failed;
    return x->writes;
}
