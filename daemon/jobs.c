/* Worker threads whose results the main loop takes (jobs.h). */
#include "jobs.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "util.h"

typedef struct Job {
    Jobs *jobs;
    void (*work)(void *);
    void (*done)(void *);
    void *userdata;
    struct Job *next;
} Job;

struct Jobs {
    int efd;
    sd_event_source *src;
    pthread_mutex_t lock;
    Job *finished; /* handed from worker threads to the main thread */
    unsigned running;
};

static int on_finished(sd_event_source *s, int fd, uint32_t revents, void *userdata)
{
    Jobs *j = userdata;
    uint64_t n;
    (void)!read(fd, &n, sizeof(n)); /* EAGAIN: an earlier wakeup took the count */
    pthread_mutex_lock(&j->lock);
    Job *newest_first = j->finished, *list = NULL;
    j->finished = NULL;
    pthread_mutex_unlock(&j->lock);
    while (newest_first) { /* in the order they finished */
        Job *next = newest_first->next;
        newest_first->next = list;
        list = newest_first;
        newest_first = next;
    }
    while (list) {
        Job *next = list->next;
        j->running--;
        list->done(list->userdata);
        free(list);
        list = next;
    }
    return 0;
}

int jobs_new(sd_event *ev, Jobs **ret)
{
    Jobs *j = xcalloc(1, sizeof(*j));
    pthread_mutex_init(&j->lock, NULL);
    j->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    int r = j->efd < 0 ? -errno : sd_event_add_io(ev, &j->src, j->efd, EPOLLIN, on_finished, j);
    if (r < 0) {
        if (j->efd >= 0)
            close(j->efd);
        pthread_mutex_destroy(&j->lock);
        free(j);
        return r;
    }
    *ret = j;
    return 0;
}

Jobs *jobs_free(Jobs *j)
{
    if (!j)
        return NULL;
    if (j->running)
        return j;
    sd_event_source_disable_unref(j->src);
    close(j->efd);
    pthread_mutex_destroy(&j->lock);
    free(j);
    return NULL;
}

static void *job_thread(void *p)
{
    Job *job = p;
    Jobs *j = job->jobs;
    job->work(job->userdata);
    pthread_mutex_lock(&j->lock);
    job->next = j->finished;
    j->finished = job;
    pthread_mutex_unlock(&j->lock);
    uint64_t one = 1;
    /* Cannot fail short of a counter overflow (2^64 wakeups); the job is
     * already queued, and the next wakeup takes it with the others. */
    (void)!write(j->efd, &one, sizeof(one));
    return NULL;
}

int jobs_run(Jobs *j, void (*work)(void *), void (*done)(void *), void *userdata)
{
    Job *job = xcalloc(1, sizeof(*job));
    *job = (Job){.jobs = j, .work = work, .done = done, .userdata = userdata};
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int r = pthread_create(&t, &attr, job_thread, job);
    pthread_attr_destroy(&attr);
    if (r != 0) {
        free(job);
        return -r;
    }
    j->running++;
    return 0;
}

unsigned jobs_running(const Jobs *j)
{
    return j ? j->running : 0;
}
