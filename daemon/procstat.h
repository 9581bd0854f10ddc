#pragma once
/* procstat: what a process costs, from /proc: its CPU time, resident set
 * and start, read from one file (/proc/PID/stat) per sample.
 *
 * "No cost when nobody asks": nothing samples by itself. A ProcStats
 * table samples a pid when asked (relctl status and top, the metrics
 * timer), at most once per PROCSTAT_MIN_INTERVAL_MS per pid (a request
 * that comes sooner gets the last figures), and computes CPU % over the
 * time since its previous sample of that pid; the first sample of a pid
 * gives its average since it started, as ps(1) does. Pids not asked about
 * for PROCSTAT_FORGET_MS are forgotten.
 *
 * Ownership: a ProcStats owns its entries; figures are copied out.
 *
 * Errors: 0 or a negative errno (-ENOENT: no such process, -EINVAL: a
 * /proc file that does not parse). */
#include <stdint.h>
#include <sys/types.h>

#define PROCSTAT_MIN_INTERVAL_MS 250
#define PROCSTAT_FORGET_MS       60000

/* One reading of /proc/PID/stat. */
typedef struct ProcSample {
    uint64_t cpu_ticks;   /* utime + stime, in clock ticks */
    uint64_t start_ticks; /* starttime: clock ticks after boot */
    uint64_t rss_bytes;   /* resident pages times the page size */
} ProcSample;

/* Reads /proc/PID/stat (pid 0: the calling process). */
int procstat_read(pid_t pid, ProcSample *ret);
/* Parses the text of a /proc/PID/stat file (pure, for the tests). */
int procstat_parse(const char *text, ProcSample *ret);

/* What relctl top and the metrics show of a process. */
typedef struct ProcFigures {
    double cpu_percent; /* of one CPU, over the time since the previous sample */
    uint64_t rss_bytes; /* resident set */
    double uptime_s;    /* since it started */
    double cpu_seconds; /* CPU time since it started (user + system) */
} ProcFigures;

typedef struct ProcStats ProcStats;

ProcStats *procstat_new(void);
ProcStats *procstat_free(ProcStats *t);
/* The figures of pid now (bounded: see above). now_ms: CLOCK_MONOTONIC,
 * for the tests to choose; mono_ms() in reld. */
int procstat_get(ProcStats *t, pid_t pid, long long now_ms, ProcFigures *ret);
/* How many pids the table holds (tests). */
size_t procstat_size(const ProcStats *t);
