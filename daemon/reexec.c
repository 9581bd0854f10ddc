/* reld executes itself again in place (reexec.h). */
#include "reexec.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "crashpoint.h"
#include "log.h"

extern char **environ;

static char *binary; /* absolute, as it was at the start */
static StrVec args;  /* argv without --reexec-state= */

void reexec_init(int argc, char **argv)
{
    char buf[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
    if (n > 0) {
        buf[n] = 0;
        binary = xstrdup(buf);
    }
    for (int i = 0; i < argc; i++)
        if (strncmp(argv[i], REEXEC_STATE_OPTION, strlen(REEXEC_STATE_OPTION)) != 0)
            strvec_push(&args, argv[i]);
}

int reexec_check(Diag *diag)
{
    if (!binary) {
        diag_error(diag, "cannot re-execute reld: its binary's path could not be read at its start");
        return -ENOENT;
    }
    /* execve's own answer comes too late to be a clean refusal for every
     * case (the descriptors are already prepared): ask first. */
    struct stat st;
    if (stat(binary, &st) < 0 || access(binary, X_OK) < 0) {
        int e = errno;
        diag_error(diag, "cannot re-execute reld: %s: %s; reld goes on as it was", binary, strerror(e));
        return -e;
    }
    if (!S_ISREG(st.st_mode)) {
        diag_error(diag, "cannot re-execute reld: %s is not a regular file; reld goes on as it was", binary);
        return -EACCES;
    }
    return 0;
}

void reexec_keep_fd(json_t *state, int fd)
{
    json_t *fds = json_object_get(state, "fds");
    if (!fds) {
        fds = json_array();
        json_object_set_new(state, "fds", fds);
    }
    json_array_append_new(fds, json_integer(fd));
}

static int set_cloexec(int fd, bool on)
{
    int flags = fcntl(fd, F_GETFD);
    if (flags < 0)
        return -errno;
    int want = on ? flags | FD_CLOEXEC : flags & ~FD_CLOEXEC;
    return want == flags || fcntl(fd, F_SETFD, want) == 0 ? 0 : -errno;
}

/* The state, sealed in a memfd positioned at its start: a descriptor,
 * or -errno. */
static int state_memfd(const json_t *state)
{
    char *text = json_dumps(state, JSON_COMPACT);
    if (!text)
        return -ENOMEM;
    int fd = memfd_create("reld-state", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    int r = fd >= 0 ? write_all(fd, text, strlen(text)) : 0;
    free(text);
    if (fd < 0)
        return -errno;
    if (r == 0 && (fcntl(fd, F_ADD_SEALS, F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE) < 0 ||
                   lseek(fd, 0, SEEK_SET) < 0))
        r = -errno;
    if (r < 0) {
        close(fd);
        return r;
    }
    return fd;
}

int reexec_exec(const json_t *state, Diag *diag)
{
    int r = reexec_check(diag);
    if (r < 0)
        return r;
    int mfd = state_memfd(state);
    if (mfd < 0) {
        diag_error(diag, "cannot re-execute reld: its state cannot be written: %s", strerror(-mfd));
        return mfd;
    }
    json_t *fds = json_object_get(state, "fds");
    size_t i, done = 0;
    json_t *v;
    json_array_foreach(fds, i, v)
    {
        if ((r = set_cloexec((int)json_integer_value(v), false)) < 0)
            break;
        done++;
    }
    if (r == 0)
        r = set_cloexec(mfd, false);
    if (r < 0) {
        diag_error(diag, "cannot re-execute reld: a descriptor cannot be passed on: %s", strerror(-r));
    } else {
        StrVec argv = {0};
        for (size_t k = 0; k < args.n; k++)
            strvec_push(&argv, args.v[k]);
        strvec_push_take(&argv, xasprintf("%s%d", REEXEC_STATE_OPTION, mfd));
        GROW(argv.v, argv.cap, argv.n + 1);
        argv.v[argv.n] = NULL;
        /* What reld wrote so far is out before the new one writes. */
        (void)fflush(stdout);
        (void)fflush(stderr);
        CRASH_POINT("reexec:exec");
        execve(binary, argv.v, environ);
        r = -errno;
        strvec_clear(&argv);
        diag_error(diag, "cannot re-execute reld: execve %s: %s; reld goes on as it was", binary, strerror(-r));
    }
    /* As before: nothing but reld holds its descriptors. */
    for (size_t k = 0; k < done; k++)
        (void)set_cloexec((int)json_integer_value(json_array_get(fds, k)), true); /* it was open a moment ago */
    close(mfd);
    return r;
}

/* Closes every descriptor >= 3 that keep (a state's "fds", or NULL) does
 * not name, and sets O_CLOEXEC on those it names. */
static void close_others(const json_t *keep)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d) {
        /* No /proc: a plain sweep of the usual range. */
        for (int fd = 3; fd < 1024; fd++) {
            bool kept = false;
            size_t i;
            json_t *v;
            json_array_foreach(keep, i, v) kept = kept || json_integer_value(v) == fd;
            if (!kept)
                (void)close(fd); /* most are not open */
        }
        return;
    }
    int dfd = dirfd(d);
    int *shut = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        char *end;
        long fd = strtol(e->d_name, &end, 10);
        if (*end || end == e->d_name || fd < 3 || fd == dfd)
            continue;
        bool kept = false;
        size_t i;
        json_t *v;
        json_array_foreach(keep, i, v) kept = kept || json_integer_value(v) == fd;
        if (!kept) { /* not while reading the directory that lists it */
            GROW(shut, cap, n + 1);
            shut[n++] = (int)fd;
        }
    }
    closedir(d);
    for (size_t k = 0; k < n; k++)
        (void)close(shut[k]); /* it was listed: open */
    free(shut);
    size_t i;
    json_t *v;
    json_array_foreach(keep, i, v)(void) set_cloexec((int)json_integer_value(v), true); /* checked open */
}

/* The state in the memfd: NULL with why in *err (static text). */
static json_t *read_state(int fd, const char **err)
{
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || lseek(fd, 0, SEEK_SET) < 0) {
        *err = "not a readable file";
        return NULL;
    }
    /* In one read: json_loadfd() reads a byte at a time. */
    char *text = xmalloc((size_t)st.st_size + 1);
    ssize_t n = st.st_size ? pread(fd, text, (size_t)st.st_size, 0) : 0;
    json_error_t je;
    json_t *state = n == st.st_size ? json_loadb(text, (size_t)n, JSON_REJECT_DUPLICATES, &je) : NULL;
    free(text);
    if (!json_is_object(state)) {
        json_decref(state);
        *err = "not a JSON object";
        return NULL;
    }
    if (json_integer_value(json_object_get(state, "version")) != REEXEC_STATE_VERSION) {
        json_decref(state);
        *err = "not of this version of reld";
        return NULL;
    }
    json_t *fds = json_object_get(state, "fds"), *v;
    size_t i;
    if (!json_is_array(fds)) {
        json_decref(state);
        *err = "no list of descriptors";
        return NULL;
    }
    json_array_foreach(fds, i, v)
    {
        json_int_t fdn = json_integer_value(v);
        if (!json_is_integer(v) || fdn < 3 || fdn > INT_MAX || fdn == fd || fcntl((int)fdn, F_GETFD) < 0) {
            json_decref(state);
            *err = "a descriptor it names is not open";
            return NULL;
        }
    }
    return state;
}

json_t *reexec_load(const char *arg)
{
    char *end;
    errno = 0;
    long fd = strtol(arg, &end, 10);
    const char *err = NULL;
    json_t *state = NULL;
    if (errno || *end || end == arg || fd < 3 || fd > INT_MAX)
        err = "not a descriptor number";
    else
        state = read_state((int)fd, &err);
    close_others(state ? json_object_get(state, "fds") : NULL); /* the memfd too */
    if (!state) {
        size_t n = reexec_kill_children(NULL, 0);
        log_error("re-executed, but the state handed over (%s%s) cannot be used: %s; %zu process(es) it cannot take "
                  "over were killed; starting as after a crash of reld",
                  REEXEC_STATE_OPTION, arg, err, n);
    }
    return state;
}

bool reexec_is_child(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return false;
    buf[n] = 0;
    /* "pid (comm) state ppid ...": comm may hold anything, so from its last ')'. */
    const char *p = strrchr(buf, ')');
    char state;
    int ppid;
    return p && sscanf(p + 1, " %c %d", &state, &ppid) == 2 && ppid == getpid();
}

/* Adds pid to *v unless keep has it. */
static void add_child(pid_t pid, const pid_t *keep, size_t n, pid_t **v, size_t *k, size_t *cap)
{
    for (size_t i = 0; i < n; i++)
        if (keep[i] == pid)
            return;
    for (size_t i = 0; i < *k; i++)
        if ((*v)[i] == pid)
            return;
    GROW(*v, *cap, *k + 1);
    (*v)[(*k)++] = pid;
}

/* The children from /proc/self/task/ * /children (the kernel's list, when
 * it keeps one: CONFIG_PROC_CHILDREN); false when it does not. */
static bool children_listed(const pid_t *keep, size_t n, pid_t **v, size_t *k, size_t *cap)
{
    DIR *d = opendir("/proc/self/task");
    if (!d)
        return false;
    bool ok = true;
    struct dirent *e;
    while (ok && (e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char path[300];
        snprintf(path, sizeof(path), "/proc/self/task/%s/children", e->d_name);
        FILE *f = fopen(path, "re");
        if (!f) { /* no such list (or the thread just ended): the caller scans /proc */
            ok = false;
            break;
        }
        int pid;
        while (fscanf(f, "%d", &pid) == 1)
            add_child((pid_t)pid, keep, n, v, k, cap);
        fclose(f);
    }
    closedir(d);
    return ok;
}

size_t reexec_kill_children(const pid_t *keep, size_t n)
{
    pid_t *kill_list = NULL;
    size_t k = 0, cap = 0;
    if (!children_listed(keep, n, &kill_list, &k, &cap)) {
        DIR *d = opendir("/proc");
        if (!d)
            return 0;
        struct dirent *e;
        while ((e = readdir(d))) {
            char *end;
            long pid = strtol(e->d_name, &end, 10);
            if (!*end && pid > 0 && reexec_is_child((pid_t)pid))
                add_child((pid_t)pid, keep, n, &kill_list, &k, &cap);
        }
        closedir(d);
    }
    for (size_t i = 0; i < k; i++) {
        (void)kill(-kill_list[i], SIGKILL); /* its process group, when it leads one */
        (void)kill(kill_list[i], SIGKILL);
        (void)waitpid(kill_list[i], NULL, 0); /* immediate: SIGKILL cannot be refused */
    }
    free(kill_list);
    return k;
}
