#pragma once
/* metrics: what reld counts and measures, in Prometheus' text format
 * (0.0.4), written for node_exporter's textfile collector (docs/daemon.md
 * "Metrics"), and the resource figures of `relctl status` and `top`.
 *
 * Counters and histograms live since reld started (Prometheus sees a
 * restart of reld as a counter reset). Gauges come from a status reply
 * (manager_status()) at the time of rendering.
 *
 * Writing (metrics_start()): off unless a path is configured. The file is
 * written whole to PATH.tmp (which the textfile collector ignores: it
 * reads *.prom) and renamed over PATH, so a scrape never sees half of it;
 * at every interval_ms, and soon after a change (metrics_changed()), at
 * most once per METRICS_MIN_INTERVAL_MS. A write that fails is logged once
 * per failure streak; the next one tries again.
 *
 * Ownership: a Metrics owns its counters and its timer; it borrows the
 * loop, and calls status(userdata) for a new reference each time it writes.
 *
 * Errors: 0 or a negative errno. */
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#include "procstat.h"

#define METRICS_MIN_INTERVAL_MS     1000
#define METRICS_DEFAULT_INTERVAL_MS 15000
/* Distinct label values kept per histogram (processes, instruction ops);
 * more are counted under "other". */
#define METRICS_MAX_SERIES 512

typedef struct Metrics Metrics;

Metrics *metrics_new(void);
Metrics *metrics_free(Metrics *x);

/* What happened. kind: install | upgrade | downgrade; outcome: manager.h's. */
void metrics_count_attempt(Metrics *x, const char *kind, const char *outcome);
void metrics_count_unpack(Metrics *x, bool ok, uint64_t bytes);
/* One instruction's duration (op: the relup instruction's word). */
void metrics_observe_instruction(Metrics *x, const char *op, double seconds);
/* One pause of a process ("app/process"): suspended to resumed. The last
 * upgrade's pauses of each process, summed, are its last pause (-1: none). */
void metrics_observe_pause(Metrics *x, const char *process, double seconds);
void metrics_pauses_begin(Metrics *x); /* a new upgrade's pauses follow: forget the last ones */
double metrics_last_pause_ms(const Metrics *x, const char *process);

/* Adds resource figures to a status reply (taken back annotated): to each
 * process with a pid, cpu_percent, rss_bytes, uptime_s, cpu_seconds (from
 * t, bounded: procstat.h) and last_pause_ms (or null); and "reld": {pid,
 * cpu_percent, rss_bytes, uptime_s, cpu_seconds}, reld's own. */
void metrics_annotate(const Metrics *x, ProcStats *t, json_t *status, long long now_ms);

/* The whole text for status (an annotated status reply; NULL: counters
 * only). Caller frees. */
char *metrics_render(const Metrics *x, const json_t *status);
/* Writes text to path atomically (path.tmp, then rename). */
int metrics_write_file(const char *path, const char *text);

/* Starts writing to path every interval_ms (>= METRICS_MIN_INTERVAL_MS),
 * the first time now. status() gives an annotated status reply (NULL: it
 * could not be read; the counters alone are written). */
int metrics_start(Metrics *x, sd_event *ev, const char *path, long interval_ms, json_t *(*status)(void *userdata),
                  void *userdata);
/* Something changed: write within METRICS_MIN_INTERVAL_MS. Nothing when
 * not started. */
void metrics_changed(Metrics *x);
/* Writes done since the start, and failed (tests, bench). */
unsigned metrics_writes(const Metrics *x, unsigned *ret_failed);
