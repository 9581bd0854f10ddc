/* What a process costs, from /proc (procstat.h). */
#include "procstat.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

int procstat_parse(const char *text, ProcSample *ret)
{
    /* "pid (comm) state ppid ...": comm may hold spaces and parentheses,
     * so the fields are counted from the last ')'. */
    const char *p = text ? strrchr(text, ')') : NULL;
    if (!p)
        return -EINVAL;
    p++;
    /* Fields after comm, from 3 (state): 14 utime, 15 stime, 22 starttime,
     * 24 rss (pages). */
    unsigned long long v[25] = {0};
    int field = 3;
    while (*p && field <= 24) {
        while (*p == ' ')
            p++;
        if (!*p)
            break;
        if (field == 3) {
            p++; /* the state letter */
        } else {
            char *end;
            errno = 0;
            long long x = strtoll(p, &end, 10);
            if (end == p || errno)
                return -EINVAL;
            v[field] = x < 0 ? 0 : (unsigned long long)x; /* rss may read -1 of a zombie */
            p = end;
        }
        if (*p && *p != ' ' && *p != '\n')
            return -EINVAL;
        field++;
    }
    if (field <= 24)
        return -EINVAL;
    long page = sysconf(_SC_PAGESIZE);
    *ret = (ProcSample){.cpu_ticks = v[14] + v[15], .start_ticks = v[22], .rss_bytes = v[24] * (uint64_t)page};
    return 0;
}

int procstat_read(pid_t pid, ProcSample *ret)
{
    char path[64], buf[1024];
    if (pid > 0)
        snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    else
        snprintf(path, sizeof(path), "/proc/self/stat");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t n = read(fd, buf, sizeof(buf) - 1); /* the kernel writes it in one go */
    int r = n < 0 ? -errno : 0;
    (void)close(fd);
    if (r < 0)
        return r == -ESRCH ? -ENOENT : r;
    buf[n] = 0;
    return procstat_parse(buf, ret);
}

typedef struct Entry {
    pid_t pid;
    ProcSample last;
    long long last_ms, asked_ms;
    ProcFigures fig;
} Entry;

struct ProcStats {
    Entry *v;
    size_t n, cap;
};

ProcStats *procstat_new(void)
{
    return xcalloc(1, sizeof(ProcStats));
}

ProcStats *procstat_free(ProcStats *t)
{
    if (t)
        free(t->v);
    free(t);
    return NULL;
}

size_t procstat_size(const ProcStats *t)
{
    return t->n;
}

static double since_boot_s(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_BOOTTIME, &ts) < 0)
        return 0; /* never on Linux; an uptime of 0 then says "unknown" */
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int procstat_get(ProcStats *t, pid_t pid, long long now_ms, ProcFigures *ret)
{
    /* Forget pids nobody asked about for a while (they exited, or were
     * restarted under another pid). */
    for (size_t i = 0; i < t->n;)
        if (now_ms - t->v[i].asked_ms > PROCSTAT_FORGET_MS)
            t->v[i] = t->v[--t->n];
        else
            i++;
    Entry *e = NULL;
    for (size_t i = 0; i < t->n && !e; i++)
        if (t->v[i].pid == pid)
            e = &t->v[i];
    if (e && now_ms - e->last_ms < PROCSTAT_MIN_INTERVAL_MS) {
        e->asked_ms = now_ms;
        *ret = e->fig;
        return 0;
    }
    ProcSample s = {0}; /* set by procstat_read() when it returns 0 (the analyzer cannot tell) */
    int r = procstat_read(pid, &s);
    if (r < 0)
        return r;
    double tck = (double)sysconf(_SC_CLK_TCK);
    ProcFigures f = {.rss_bytes = s.rss_bytes, .cpu_seconds = (double)s.cpu_ticks / tck};
    f.uptime_s = since_boot_s() - (double)s.start_ticks / tck;
    if (f.uptime_s < 0)
        f.uptime_s = 0;
    if (e && e->last.start_ticks != s.start_ticks)
        e = NULL; /* the pid was reused: another process */
    if (e && now_ms > e->last_ms && s.cpu_ticks >= e->last.cpu_ticks)
        f.cpu_percent = 100.0 * (double)(s.cpu_ticks - e->last.cpu_ticks) / tck / ((double)(now_ms - e->last_ms) / 1e3);
    else
        f.cpu_percent = f.uptime_s > 0 ? 100.0 * f.cpu_seconds / f.uptime_s : 0;
    if (!e) {
        for (size_t i = 0; i < t->n && !e; i++)
            if (t->v[i].pid == pid)
                e = &t->v[i];
        if (!e) {
            GROW(t->v, t->cap, t->n + 1);
            e = &t->v[t->n++];
        }
    }
    *e = (Entry){.pid = pid, .last = s, .last_ms = now_ms, .asked_ms = now_ms, .fig = f};
    *ret = f;
    return 0;
}
