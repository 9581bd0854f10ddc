/* reld's log lines (log.h). */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

bool log_to_journal(void)
{
    static int cached = -1;
    if (cached < 0) {
        /* systemd sets JOURNAL_STREAM=DEV:INODE of the stream it gave us;
         * it is ours only if stderr is still that stream. */
        const char *e = getenv("JOURNAL_STREAM");
        unsigned long long dev = 0, ino = 0;
        struct stat st;
        cached = e && sscanf(e, "%llu:%llu", &dev, &ino) == 2 && fstat(STDERR_FILENO, &st) == 0 &&
                 (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
    }
    return cached == 1;
}

void log_full(int priority, const char *fmt, ...)
{
    static int debug = -1;
    if (debug < 0) {
        const char *e = getenv("RELD_DEBUG");
        debug = e && strcmp(e, "1") == 0;
    }
    if (priority == LOG_DEBUG && !debug)
        return;
    char line[4096];
    int n = log_to_journal()          ? snprintf(line, sizeof(line), "<%d>", priority)
            : priority <= LOG_ERR     ? snprintf(line, sizeof(line), "reld: error: ")
            : priority == LOG_WARNING ? snprintf(line, sizeof(line), "reld: warning: ")
                                      : snprintf(line, sizeof(line), "reld: ");
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof(line) - 2)
        len = sizeof(line) - 2; /* cut, still one line */
    line[len++] = '\n';
    /* One write: lines of threads never interleave. A log that cannot be
     * written has nowhere to say so. */
    (void)!write(STDERR_FILENO, line, len);
}
