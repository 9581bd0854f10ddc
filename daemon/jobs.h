#pragma once
/* jobs: work that would block reld's loop (extracting a tarball, reading
 * and planning two releases, deleting a release's files) runs on a thread
 * of its own; its completion runs on the main thread, from the event loop.
 *
 * Ownership: jobs_run() borrows userdata until done(userdata) was called;
 * work() must touch only what userdata gives it. Jobs owns its eventfd
 * and mutex. jobs_free() refuses (returns the Jobs) while a job runs: the
 * thread would touch freed memory; reld then exits without freeing.
 *
 * Errors: 0 or a negative errno. */
#include <systemd/sd-event.h>

typedef struct Jobs Jobs;

int jobs_new(sd_event *ev, Jobs **ret);
/* NULL when freed; j itself while jobs still run (nothing freed). */
Jobs *jobs_free(Jobs *j);
/* Runs work(userdata) on a new detached thread, then done(userdata) on the
 * main thread. -errno when no thread could be started (nothing runs). */
int jobs_run(Jobs *j, void (*work)(void *userdata), void (*done)(void *userdata), void *userdata);
unsigned jobs_running(const Jobs *j);
