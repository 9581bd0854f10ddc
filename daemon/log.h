#pragma once
/* log: reld's own messages, one line each, on stderr.
 *
 * Under systemd (stderr is the journal: $JOURNAL_STREAM names it) each line
 * starts with its syslog priority ("<3>", sd-daemon(3)) and nothing else, as
 * journald adds the identifier itself; anywhere else it reads
 * "reld: message" ("reld: error: message" for errors), for people and tests.
 * Debug lines are printed only with RELD_DEBUG=1 in the environment.
 *
 * Thread-safe: a line is written with one write(). */
#include <stdbool.h>
#include <syslog.h>

void log_full(int priority, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...)   log_full(LOG_ERR, __VA_ARGS__)
#define log_warning(...) log_full(LOG_WARNING, __VA_ARGS__)
#define log_notice(...)  log_full(LOG_NOTICE, __VA_ARGS__)
#define log_info(...)    log_full(LOG_INFO, __VA_ARGS__)
#define log_debug(...)   log_full(LOG_DEBUG, __VA_ARGS__)

/* Is stderr connected to the journal? (Decided once, at the first call.) */
bool log_to_journal(void);
