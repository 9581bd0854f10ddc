#include "store.h"

#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/syscall.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_DEFINITION_SIZE (64UL << 20)

/* Reads all of fd (taken) as store_read_file does. */
static int read_fd(int fd, char **ret_buf, size_t *ret_len)
{
    struct stat st;
    int r = 0;
    if (fstat(fd, &st) < 0)
        r = -errno;
    else if (S_ISDIR(st.st_mode))
        r = -EISDIR;
    else if (!S_ISREG(st.st_mode))
        r = -EINVAL;
    else if ((size_t)st.st_size > MAX_DEFINITION_SIZE)
        r = -EFBIG;
    if (r < 0) {
        close(fd);
        return r;
    }
    size_t cap = (size_t)st.st_size + 1, len = 0;
    char *buf = xmalloc(cap);
    for (;;) {
        if (len + 1 >= cap) {
            if (cap > MAX_DEFINITION_SIZE) {
                free(buf);
                close(fd);
                return -EFBIG;
            }
            buf = xrealloc(buf, cap *= 2);
        }
        ssize_t n = read(fd, buf + len, cap - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            r = -errno;
            free(buf);
            close(fd);
            return r;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (len == (size_t)st.st_size)
            break; /* all of it: spare the read that would say end of file */
    }
    close(fd);
    buf[len] = 0;
    *ret_buf = buf;
    *ret_len = len;
    return 0;
}

int store_read_file(const char *path, char **ret_buf, size_t *ret_len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    return fd < 0 ? -errno : read_fd(fd, ret_buf, ret_len);
}

int store_read_file_beneath(int dirfd, const char *rel, char **ret_buf, size_t *ret_len)
{
    int fd = store_open_beneath(dirfd, rel, O_RDONLY);
    return fd < 0 ? fd : read_fd(fd, ret_buf, ret_len);
}

/* root/rel, or rel alone without a root (a path inside a tarball). */
static char *in_root(const char *root, char *rel)
{
    if (!root)
        return rel;
    char *p = xasprintf("%s/%s", root, rel);
    free(rel);
    return p;
}

char *store_path_releases(const char *root)
{
    return in_root(root, xstrdup("releases"));
}

char *store_path_release_dir(const char *root, const char *vsn)
{
    return in_root(root, xasprintf("releases/%s", vsn));
}

char *store_path_release_file(const char *root, const char *vsn)
{
    return in_root(root, xasprintf("releases/%s/release.yaml", vsn));
}

char *store_path_relup_file(const char *root, const char *vsn)
{
    return in_root(root, xasprintf("releases/%s/relup.yaml", vsn));
}

char *store_path_app_dir(const char *root, const char *app, const char *vsn)
{
    return in_root(root, xasprintf("lib/%s-%s", app, vsn));
}

char *store_path_in_app(const char *root, const char *app, const char *vsn, const char *rel)
{
    return rel[0] == '/' ? xstrdup(rel) : in_root(root, xasprintf("lib/%s-%s/%s", app, vsn, rel));
}

char *store_path_db(const char *root)
{
    return xasprintf("%s/reld.db", root);
}

char *store_path_lock(const char *root)
{
    return xasprintf("%s/reld.lock", root);
}

char *store_path_tmp(const char *root)
{
    return xasprintf("%s/tmp", root);
}

static char *app_dir(const char *root, const char *name, const char *vsn)
{
    return store_path_app_dir(root, name, vsn);
}

int store_open_beneath(int dirfd, const char *rel, int flags)
{
    struct open_how how = {.flags = (uint64_t)(flags | O_CLOEXEC), .resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS};
    int fd = (int)syscall(SYS_openat2, dirfd, rel, &how, sizeof(how));
    if (fd >= 0 || (errno != ENOSYS && errno != EPERM))
        return fd < 0 ? -errno : fd;

    /* No openat2 (an old kernel, a seccomp filter, valgrind): resolve the
     * path in user space and compare it with the directory's. */
    char dir[PATH_MAX], path[PATH_MAX], *proc = xasprintf("/proc/self/fd/%d", dirfd);
    ssize_t n = readlink(proc, dir, sizeof(dir) - 1);
    free(proc);
    if (n < 0)
        return -errno;
    dir[n] = 0;
    char *joined = xasprintf("%s/%s", dir, rel);
    char *real = realpath(joined, path);
    int r = real ? 0 : -errno;
    free(joined);
    if (r < 0)
        return r;
    size_t dn = strlen(dir);
    if (strcmp(path, dir) != 0 && (strncmp(path, dir, dn) != 0 || (path[dn] != '/' && strcmp(dir, "/") != 0)))
        return -EXDEV;
    fd = open(path, flags | O_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

static void report_path(int r, const char *rel, const char *what, const AppDef *a, SrcPos pos, Diag *diag)
{
    if (r == -EXDEV || r == -ELOOP)
        diag_error_at(diag, a->file, pos.line, pos.col, "%s '%s' resolves outside the application's directory", what,
                      rel);
    else if (r == -EISDIR || r == -EINVAL)
        diag_error_at(diag, a->file, pos.line, pos.col, "%s '%s' is not a regular file", what, rel);
    else if (r < 0)
        diag_error_at(diag, a->file, pos.line, pos.col, "%s '%s' is missing: %s", what, rel, strerror(-r));
}

/* One file, the slow way: open it beneath the application's directory and
 * look at what it is. 0 or -errno as report_path() takes it. */
static int check_one(int appfd, const char *rel)
{
    int fd = store_open_beneath(appfd, rel, O_PATH);
    if (fd < 0)
        return fd;
    struct stat st;
    int r = fstat(fd, &st) < 0 ? -errno : S_ISREG(st.st_mode) ? 0 : -EINVAL;
    close(fd);
    return r;
}

/* A directory of an application, opened once beneath it (symlinks
 * resolved inside). Its files are looked at by name, one fstatat each
 * without following a last symlink; or, when at least LIST_MIN of them are
 * wanted, the directory is listed once (getdents64, at most LIST_MAX bytes
 * of entries) and they are found in the listing, by name and entry type.
 * A name there that is a regular file is inside by construction. On ext4
 * with warm caches a lookup costs about 4 us (a system call and a path
 * walk) and listing a directory of 20 modules about 40 us: half the cost
 * of their 20 lookups. A directory too large to list in LIST_MAX, or a
 * file system that gives no entry types, keeps the lookups. */
typedef struct DirRef {
    char *path;    /* relative to the application's directory, "." for itself */
    int fd;        /* O_RDONLY | O_DIRECTORY, or -errno from opening it */
    bool opened;   /* fd is set */
    size_t wanted; /* files of the application in it */
    bool listed;   /* names holds every entry */
    StrMap names;  /* entry name -> d_type; keys point into list */
    char *list;    /* the entries as getdents64 returned them */
} DirRef;

enum { LIST_MIN = 12, LIST_MAX = 64 * 1024 };

/* Lists d->fd into d->names; leaves d->listed false when the directory is
 * larger than LIST_MAX or cannot be read. */
static void list_dir(DirRef *d)
{
    size_t len = 0, cap = 8192;
    d->list = xmalloc(cap);
    for (;;) {
        if (cap - len < 4096) {
            if (cap >= LIST_MAX)
                return; /* too large: lookups by name */
            d->list = xrealloc(d->list, cap *= 2);
        }
        long n = syscall(SYS_getdents64, d->fd, d->list + len, cap - len);
        if (n < 0)
            return;
        if (n == 0)
            break;
        len += (size_t)n;
    }
    for (size_t off = 0; off < len;) {
        struct dirent64 *e = (struct dirent64 *)(d->list + off);
        if (e->d_type == DT_UNKNOWN) { /* the file system gives no types */
            strmap_clear(&d->names);
            return;
        }
        strmap_put(&d->names, e->d_name, e->d_type);
        off += e->d_reclen;
    }
    d->listed = true;
}

/* What fstatat(fd, base, AT_SYMLINK_NOFOLLOW) would tell check_inside: 0
 * for a regular file, -ENOENT when there is no such name, -EINVAL for
 * anything else (a symlink, a directory), or another -errno. */
static int look_up(DirRef *d, const char *base)
{
    if (d->listed) {
        size_t type;
        if (!strmap_get(&d->names, base, &type))
            return -ENOENT;
        return type == DT_REG ? 0 : -EINVAL;
    }
    struct stat st;
    return fstatat(d->fd, base, &st, AT_SYMLINK_NOFOLLOW) < 0 ? -errno : S_ISREG(st.st_mode) ? 0 : -EINVAL;
}

static void dirs_free(DirRef *dirs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(dirs[i].path);
        if (dirs[i].fd >= 0)
            close(dirs[i].fd);
        strmap_clear(&dirs[i].names);
        free(dirs[i].list);
    }
    free(dirs);
}

/* The directory of rel among dirs (added when new), and in *base the
 * name of rel in it. */
static DirRef *dir_of(DirRef **dirs, size_t *n_dirs, const char *rel, const char **base)
{
    const char *slash = strrchr(rel, '/');
    size_t n = slash ? (size_t)(slash - rel) : 1;
    const char *dir = slash ? rel : ".";
    *base = slash ? slash + 1 : rel;
    for (size_t i = 0; i < *n_dirs; i++)
        if (strlen((*dirs)[i].path) == n && memcmp((*dirs)[i].path, dir, n) == 0)
            return &(*dirs)[i];
    *dirs = xrealloc(*dirs, (*n_dirs + 1) * sizeof(**dirs));
    DirRef *l = &(*dirs)[(*n_dirs)++];
    *l = (DirRef){.path = xstrndup(dir, n)};
    return l;
}

/* Checks that rel exists beneath the application's directory (symlinks
 * followed) and is a regular file, opening each directory only once. */
static void check_inside(int appfd, DirRef **dirs, size_t *n_dirs, const char *rel, const char *what, const AppDef *a,
                         SrcPos pos, Diag *diag)
{
    const char *base;
    DirRef *l = dir_of(dirs, n_dirs, rel, &base);
    if (!l->opened) {
        l->opened = true;
        l->fd = store_open_beneath(appfd, l->path, O_RDONLY | O_DIRECTORY);
        if (l->fd >= 0 && l->wanted >= LIST_MIN)
            list_dir(l);
    }
    int r = l->fd >= 0 ? look_up(l, base) : l->fd;
    if (r < 0 && r != -ENOENT)
        r = check_one(appfd, rel); /* a symlink, not a file, or a directory we could not open */
    report_path(r, rel, what, a, pos, diag);
}

/* Why a file of unit (a release's or an application's directory) was not
 * read: nothing of the file itself. */
static const char *open_error(int r)
{
    return r == -EXDEV   ? "it leads outside its directory (a symlink, or a chain of them, leaving it); not read"
           : r == -ELOOP ? "a symlink loop, or more than 40 links; not read"
                         : strerror(-r);
}

/* Opens unit ("lib/web-2.0.1", "releases/2.0") beneath the root. */
static int open_unit(int root_fd, const char *unit)
{
    return store_open_beneath(root_fd, unit, O_PATH | O_DIRECTORY);
}

static int load_app(int root_fd, ReleaseAppRef *ref, Diag *diag)
{
    char *unit = app_dir(NULL, ref->name, ref->vsn);
    char *shown = xasprintf("%s/app.yaml", unit);
    char *buf = NULL;
    size_t len = 0;
    int dirfd = open_unit(root_fd, unit);
    int r = dirfd < 0 ? dirfd : store_read_file_beneath(dirfd, "app.yaml", &buf, &len);
    if (r < 0) {
        diag_error(diag, "%s: cannot read: %s (release %s wants %s %s)", shown, open_error(r), ref->pos.file, ref->name,
                   ref->vsn);
    } else if ((r = appdefs_parse_app(shown, buf, len, &ref->app, diag)) == 0) {
        const AppDef *a = ref->app;
        DirRef *dirs = NULL;
        size_t n_dirs = 0;
        const char *base;
        for (size_t m = 0; m < a->n_modules; m++) /* how many files in each directory */
            dir_of(&dirs, &n_dirs, a->modules[m].file, &base)->wanted++;
        for (size_t m = 0; m < a->n_modules; m++)
            check_inside(dirfd, &dirs, &n_dirs, a->modules[m].file, "module file", a, a->modules[m].pos, diag);
        for (size_t p = 0; p < a->n_processes; p++)
            if (a->processes[p].exec[0] != '/')
                check_inside(dirfd, &dirs, &n_dirs, a->processes[p].exec, "executable", a, a->processes[p].pos, diag);
        dirs_free(dirs, n_dirs);
    }
    if (dirfd >= 0)
        close(dirfd);
    free(buf);
    free(unit);
    free(shown);
    return r;
}

/* A release being loaded: store_load_release in three steps, so that two
 * releases can share the work of their applications (load_two_releases). */
typedef struct Loading {
    const char *root, *vsn;
    size_t before; /* errors in diag when it began */
    int root_fd;   /* -errno when the root did not open */
    int r;
    ReleaseDef *rel; /* release.yaml parsed, or NULL */
    Diag *diag;
} Loading;

/* Opens the root and parses release.yaml into l->rel (NULL when it could
 * not be read or parsed, reported). */
static void release_begin(Loading *l)
{
    l->before = diag_n_errors(l->diag);
    l->root_fd = -EBADF;
    if (!version_is_valid(l->vsn)) {
        diag_error(l->diag, "bad release version '%s'", l->vsn);
        l->r = -EINVAL;
        return;
    }
    char *unit = store_path_release_dir(NULL, l->vsn);
    char *shown = store_path_release_file(NULL, l->vsn);
    char *buf = NULL;
    size_t len = 0;
    l->root_fd = open(l->root, O_PATH | O_DIRECTORY | O_CLOEXEC);
    int r = l->root_fd < 0 ? -errno : open_unit(l->root_fd, unit);
    if (l->root_fd < 0)
        l->root_fd = r;
    if (r >= 0) {
        int dirfd = r;
        r = store_read_file_beneath(dirfd, "release.yaml", &buf, &len);
        close(dirfd);
    }
    if (l->root_fd < 0)
        diag_error(l->diag, "%s: cannot open the root: %s", l->root, strerror(-r));
    else if (r == -ENOENT)
        diag_error(l->diag, "release %s is not in %s (no %s)", l->vsn, l->root, shown);
    else if (r < 0)
        diag_error(l->diag, "%s: cannot read: %s", shown, open_error(r));
    else if (appdefs_parse_release(shown, buf, len, &l->rel, l->diag) == 0 && strcmp(l->rel->vsn, l->vsn) != 0)
        diag_error_at(l->diag, shown, 1, 1, "defines release version %s but lies in releases/%s", l->rel->vsn, l->vsn);
    l->r = r;
    free(buf);
    free(unit);
    free(shown);
}

/* Validates the release once its applications are loaded, and hands it
 * over: 0, or the error (reported). */
static int release_end(Loading *l, ReleaseDef **ret)
{
    if (l->rel) {
        bool all = true;
        for (size_t i = 0; i < l->rel->n_apps; i++)
            all = all && l->rel->apps[i].app;
        if (all)
            appdefs_validate_release(l->rel, l->diag);
    }
    if (l->root_fd >= 0)
        close(l->root_fd);
    if (diag_n_errors(l->diag) > l->before) {
        release_def_free(l->rel);
        return l->r < 0 ? l->r : -EINVAL;
    }
    *ret = l->rel;
    return 0;
}

int store_load_release(const char *root, const char *vsn, ReleaseDef **ret, Diag *diag)
{
    Loading l = {.root = root, .vsn = vsn, .diag = diag};
    release_begin(&l);
    for (size_t i = 0; l.rel && i < l.rel->n_apps; i++)
        load_app(l.root_fd, &l.rel->apps[i], diag);
    return release_end(&l, ret);
}

/* Opens file rel of application app beneath its directory in root. */
static int open_in_app(const char *root, const AppDef *app, const char *rel)
{
    int root_fd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (root_fd < 0)
        return -errno;
    char *unit = app_dir(NULL, app->name, app->vsn);
    int dirfd = open_unit(root_fd, unit);
    free(unit);
    close(root_fd);
    if (dirfd < 0)
        return dirfd;
    int fd = store_open_beneath(dirfd, rel, O_RDONLY);
    close(dirfd);
    return fd;
}

int store_module_changed(void *root, const AppDef *old_app, const AppDef *new_app, const char *module)
{
    const ModuleDef *om = appdefs_app_find_module(old_app, module), *nm = appdefs_app_find_module(new_app, module);
    if (!om || !nm)
        return 1;
    int ofd = open_in_app(root, old_app, om->file), nfd = open_in_app(root, new_app, nm->file);
    int r = 0;
    FILE *a = ofd >= 0 ? fdopen(ofd, "rb") : NULL, *b = nfd >= 0 ? fdopen(nfd, "rb") : NULL;
    if (!a && ofd >= 0)
        close(ofd);
    if (!b && nfd >= 0)
        close(nfd);
    if (!a || !b) {
        r = ofd < 0 ? ofd : nfd < 0 ? nfd : -errno;
    } else {
        char ba[65536], bb[65536];
        for (;;) {
            size_t na = fread(ba, 1, sizeof(ba), a), nb = fread(bb, 1, sizeof(bb), b);
            if (na != nb || memcmp(ba, bb, na) != 0) {
                r = 1;
                break;
            }
            if (na == 0) {
                r = ferror(a) || ferror(b) ? -EIO : 0;
                break;
            }
        }
    }
    if (a)
        fclose(a);
    if (b)
        fclose(b);
    return r;
}

/* Moves from's messages to the end of into's. */
static void diag_take(Diag *into, Diag *from)
{
    for (size_t i = 0; i < from->errors.n; i++)
        strvec_push_take(&into->errors, TAKE_PTR(from->errors.v[i]));
    for (size_t i = 0; i < from->warnings.n; i++)
        strvec_push_take(&into->warnings, TAKE_PTR(from->warnings.v[i]));
    diag_clear(from);
}

/* The applications of two releases, taken one by one by two threads, so
 * that each does half the work: a release whose app.yaml files hold appups
 * (the newer one) takes several times as long to load as the other. Each
 * application's messages are kept apart and put back in release order. */
typedef struct AppQueue {
    Loading *l[2];
    Diag *app_diag; /* one per application, first release's first */
    size_t n0, n;   /* applications of the first release, of both */
    atomic_size_t next;
} AppQueue;

static void *app_worker(void *p)
{
    AppQueue *q = p;
    for (size_t k; (k = atomic_fetch_add(&q->next, 1)) < q->n;) {
        Loading *l = q->l[k >= q->n0];
        load_app(l->root_fd, &l->rel->apps[k >= q->n0 ? k - q->n0 : k], &q->app_diag[k]);
    }
    return NULL;
}

static void *end_job(void *p)
{
    Loading *l = p;
    l->r = release_end(l, &l->rel); /* l->rel: kept on success, freed (and NULL) on failure */
    if (l->r < 0)
        l->rel = NULL;
    return NULL;
}

/* Loads two releases at once: release.yaml of each, then their
 * applications on two threads (loading is most of a relup's time in large
 * releases), then each release validated on a thread of its own. The
 * messages come out as store_load_release gives them, first release's
 * first. */
static void load_two_releases(const char *root, const char *v1, const char *v2, ReleaseDef **ret1, ReleaseDef **ret2,
                              int *r1, int *r2, Diag *diag)
{
    Diag d[2] = {0};
    Loading l[2] = {{.root = root, .vsn = v1, .diag = &d[0]}, {.root = root, .vsn = v2, .diag = &d[1]}};
    release_begin(&l[0]);
    release_begin(&l[1]);
    AppQueue q = {.l = {&l[0], &l[1]}};
    q.n0 = l[0].rel ? l[0].rel->n_apps : 0;
    q.n = q.n0 + (l[1].rel ? l[1].rel->n_apps : 0);
    atomic_init(&q.next, 0);
    q.app_diag = xcalloc(q.n + 1, sizeof(Diag));
    pthread_t t;
    bool threaded = pthread_create(&t, NULL, app_worker, &q) == 0;
    app_worker(&q);
    if (threaded && pthread_join(t, NULL) != 0)
        abort(); /* cannot fail for a joinable thread of ours */
    for (size_t k = 0; k < q.n; k++)
        diag_take(&d[k >= q.n0], &q.app_diag[k]);
    free(q.app_diag);
    threaded = pthread_create(&t, NULL, end_job, &l[1]) == 0;
    end_job(&l[0]);
    if (threaded && pthread_join(t, NULL) != 0)
        abort();
    if (!threaded)
        end_job(&l[1]);
    diag_take(diag, &d[0]);
    diag_take(diag, &d[1]);
    *ret1 = l[0].rel;
    *ret2 = l[1].rel;
    *r1 = l[0].r;
    *r2 = l[1].r;
}

/* Reading the stored relup of a release, if it has one. */
typedef struct StoredJob {
    const char *root, *to;
    Relup *relup; /* parsed, or NULL */
    int r;        /* 0 (relup set), -ENOENT (none stored), or the error reported in diag */
    Diag diag;
} StoredJob;

static void *stored_job(void *p)
{
    StoredJob *j = p;
    char *shown = store_path_relup_file(NULL, j->to), *unit = store_path_release_dir(NULL, j->to);
    char *buf = NULL;
    size_t len = 0;
    int root_fd = open(j->root, O_PATH | O_DIRECTORY | O_CLOEXEC);
    int r = root_fd < 0 ? -errno : open_unit(root_fd, unit);
    if (r >= 0) {
        int dirfd = r;
        r = store_read_file_beneath(dirfd, "relup.yaml", &buf, &len);
        close(dirfd);
    }
    if (root_fd >= 0)
        close(root_fd);
    if (r == 0)
        r = relup_parse(shown, buf, len, &j->relup, &j->diag);
    else if (r != -ENOENT)
        diag_error(&j->diag, "%s: cannot read: %s", shown, open_error(r));
    j->r = r;
    free(buf);
    free(unit);
    free(shown);
    return NULL;
}

static void *free_job(void *p)
{
    release_def_free(p);
    return NULL;
}

/* Frees the two releases at once, b on a second thread: 66,000 appup
 * instructions and 40,000 modules are many small blocks to free, after the
 * relup is computed and before it can be printed. */
static void free_two_releases(ReleaseDef *a, ReleaseDef *b)
{
    pthread_t t;
    bool threaded = b && pthread_create(&t, NULL, free_job, b) == 0;
    release_def_free(a);
    if (threaded && pthread_join(t, NULL) != 0)
        abort(); /* cannot fail for a joinable thread of ours */
    if (!threaded)
        release_def_free(b);
}

int store_relup(const char *root, const char *from, const char *to, bool derive, Relup **ret, bool *ret_stored,
                Diag *diag)
{
    /* The stored relup (11.5 MB for 1,000 applications) is read while the
     * two releases load: on a third thread, its messages kept for after
     * theirs, and dropped with it when a release does not load. */
    StoredJob sj = {.root = root, .to = to};
    pthread_t t;
    bool threaded = pthread_create(&t, NULL, stored_job, &sj) == 0;
    ReleaseDef *a = NULL, *b = NULL;
    int r = 0, r2 = 0;
    load_two_releases(root, from, to, &a, &b, &r, &r2, diag);
    if (threaded)
        pthread_join(t, NULL);
    if (r < 0 || r2 < 0) {
        relup_free(sj.relup);
        diag_clear(&sj.diag);
        release_def_free(a);
        release_def_free(b);
        return r < 0 ? r : r2;
    }
    if (!threaded)
        stored_job(&sj);
    diag_take(diag, &sj.diag);
    Relup *stored = sj.relup;
    bool use_stored = stored && strcmp(stored->from, from) == 0 && strcmp(stored->to, to) == 0;
    r = sj.r == -ENOENT ? 0 : sj.r;
    if (r == 0 && use_stored) {
        *ret = TAKE_PTR(stored);
        *ret_stored = true;
    } else if (r == 0) {
        RelupOptions opts = {.derive_missing = derive,
                             .module_changed = store_module_changed, /* reentrant */
                             .userdata = (void *)root,
                             .parallel = true};
        r = relup_compute(a, b, &opts, ret, diag);
        *ret_stored = false;
    }
    relup_free(stored);
    free_two_releases(a, b);
    return r;
}

int store_write_relup(const char *root, const Relup *r, Diag *diag)
{
    char *path = store_path_relup_file(root, r->to);
    char *tmp = xasprintf("%s.tmp.%ld", path, (long)getpid());
    json_t *j = relup_to_json(r);
    char *text = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(j);
    int rc = 0;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = -errno;
    } else {
        size_t len = strlen(text), off = 0;
        while (off < len && rc == 0) {
            ssize_t n = write(fd, text + off, len - off);
            if (n < 0 && errno != EINTR)
                rc = -errno;
            else if (n > 0)
                off += (size_t)n;
        }
        if (rc == 0 && (write(fd, "\n", 1) != 1 || fsync(fd) < 0))
            rc = -errno;
        if (close(fd) < 0 && rc == 0)
            rc = -errno;
        if (rc == 0 && rename(tmp, path) < 0)
            rc = -errno;
        if (rc < 0)
            unlink(tmp);
    }
    if (rc < 0)
        diag_error(diag, "releases/%s/relup.yaml: cannot write: %s", r->to, strerror(-rc));
    free(text);
    free(path);
    free(tmp);
    return rc;
}
