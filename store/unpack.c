/* Unpacking a release tarball into the store (store.h, store_unpack):
 * extract into a staging directory inside the root without ever going
 * through a link, resolve every link the archive made beneath its own
 * unit, validate the release completely, make it durable, and only then,
 * under the root's lock, move it into place. On any failure nothing is
 * left behind (the staging directory is removed). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "archive-api.h"
#include "crashpoint.h"
#include "store.h"

/* Opens the directory rel beneath dirfd through real directories only: no
 * symlink in any component, nothing outside dirfd. -errno on failure
 * (-ELOOP: a component is a symlink). */
static int open_dir_nofollow(int dirfd, const char *rel)
{
    struct open_how how = {.flags = O_RDONLY | O_DIRECTORY | O_CLOEXEC,
                           .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS};
    int fd = (int)syscall(SYS_openat2, dirfd, rel, &how, sizeof(how));
    if (fd >= 0 || (errno != ENOSYS && errno != EPERM))
        return fd < 0 ? -errno : fd;
    /* No openat2: one component at a time, none of them a symlink (the
     * paths come from clean_path: no "..", not absolute). */
    fd = dup(dirfd);
    for (const char *p = rel; fd >= 0 && *p;) {
        size_t n = strcspn(p, "/");
        char *comp = xstrndup(p, n);
        int next = openat(fd, comp, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
        struct stat st;
        int saved = next < 0 && fstatat(fd, comp, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode) ? ELOOP : errno;
        free(comp);
        close(fd);
        fd = next;
        errno = saved;
        p += n;
        while (*p == '/')
            p++;
    }
    return fd < 0 ? -errno : fd;
}

/* A tarball path made canonical: no leading "./", no "." components, no
 * trailing "/". NULL for an absolute path, "..", or an empty path. */
static char *clean_path(const char *p)
{
    if (!p || p[0] == '/')
        return NULL;
    char *out = xcalloc(strlen(p) + 1, 1), *o = out;
    while (*p) {
        size_t n = strcspn(p, "/");
        if (n == 2 && p[0] == '.' && p[1] == '.') {
            free(out);
            return NULL;
        }
        if (n > 0 && !(n == 1 && p[0] == '.')) {
            if (o != out)
                *o++ = '/';
            memcpy(o, p, n);
            o += n;
        }
        p += n;
        while (*p == '/')
            p++;
    }
    if (o == out) {
        free(out);
        return NULL;
    }
    return out;
}

static unsigned components(const char *path)
{
    unsigned n = 1;
    for (const char *p = path; (p = strchr(p, '/')); p++)
        n++;
    return n;
}

/* The unit of a path of 3 or more components: its first two
 * ("lib/web-2.0.1"), as a new string; *rest points after it. */
static char *unit_of(const char *path, const char **rest)
{
    const char *slash = strchr(strchr(path, '/') + 1, '/');
    *rest = slash + 1;
    return xstrndup(path, (size_t)(slash - path));
}

/* Does a symlink at `path` with target `target` point inside the archive,
 * read as text? (The first, cheap refusal; on disk is decisive.) */
static bool link_target_inside(const char *path, const char *target)
{
    return path_walk_depth(target, (int)components(path) - 1) >= 0;
}

/* Files are fsynced on a few threads of their own while the next entries
 * decompress: their writing out overlaps the extraction, and concurrent
 * fsyncs share journal commits. The extraction hands over each written
 * file's descriptor; a thread fsyncs and closes it. */
#define SYNC_THREADS 4
#define SYNC_QUEUE   64

typedef struct Syncer {
    pthread_mutex_t mu;
    pthread_cond_t more, room;
    int q[SYNC_QUEUE];
    size_t head, n;
    bool done;   /* nothing more comes: threads exit once the queue is empty */
    bool cancel; /* close what is left without fsync */
    int error;   /* the first errno of an fsync */
    pthread_t threads[SYNC_THREADS];
    int n_threads; /* -1: none could be started, fsync inline */
} Syncer;

static void *syncer_main(void *p)
{
    Syncer *s = p;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (s->n == 0 && !s->done)
            pthread_cond_wait(&s->more, &s->mu);
        if (s->n == 0)
            break;
        int fd = s->q[s->head];
        s->head = (s->head + 1) % SYNC_QUEUE;
        s->n--;
        bool cancel = s->cancel;
        pthread_cond_signal(&s->room);
        pthread_mutex_unlock(&s->mu);
        int e = !cancel && fsync(fd) < 0 ? errno : 0;
        close(fd);
        pthread_mutex_lock(&s->mu);
        if (e && !s->error)
            s->error = e;
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* fsyncs and closes fd, soon; 0, or the errno of an earlier fsync. */
static int syncer_push(Syncer *s, int fd)
{
    if (s->n_threads == 0) {
        pthread_mutex_init(&s->mu, NULL);
        pthread_cond_init(&s->more, NULL);
        pthread_cond_init(&s->room, NULL);
        while (s->n_threads < SYNC_THREADS && pthread_create(&s->threads[s->n_threads], NULL, syncer_main, s) == 0)
            s->n_threads++;
        if (s->n_threads == 0)
            s->n_threads = -1;
    }
    if (s->n_threads < 0) {
        int e = fsync(fd) < 0 ? errno : 0;
        close(fd);
        return e;
    }
    pthread_mutex_lock(&s->mu);
    while (s->n == SYNC_QUEUE)
        pthread_cond_wait(&s->room, &s->mu);
    s->q[(s->head + s->n) % SYNC_QUEUE] = fd;
    s->n++;
    int e = s->error;
    pthread_cond_signal(&s->more);
    pthread_mutex_unlock(&s->mu);
    return e;
}

/* Waits for every file handed over (closed without fsync when cancel);
 * 0, or the errno of a failed fsync. */
static int syncer_finish(Syncer *s, bool cancel)
{
    if (s->n_threads <= 0)
        return 0;
    pthread_mutex_lock(&s->mu);
    s->done = true;
    s->cancel = cancel;
    pthread_cond_broadcast(&s->more);
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < s->n_threads; i++)
        pthread_join(s->threads[i], NULL);
    pthread_cond_destroy(&s->more);
    pthread_cond_destroy(&s->room);
    pthread_mutex_destroy(&s->mu);
    s->n_threads = 0;
    return s->error;
}

typedef struct Extract {
    ArchiveApi la; /* libarchive, loaded for this unpack */
    struct archive *a;
    const char *root;
    int staging_fd;
    StoreLimits lim;
    uint64_t total, entries;
    StrVec regular; /* regular files created (hard links too), for hard links and fsync */
    bool *synced;   /* per regular file: handed to the syncer (its data will be on disk) */
    size_t synced_cap;
    StrMap regular_idx; /* into regular; keys borrowed */
    StrVec dirs;        /* directories created, parents first */
    StrVec links;       /* symlinks created, resolved once every entry is in */
    StrVec units;       /* "releases/<vsn>", "lib/<app>-<vsn>" seen so far */
    bool *unit_new;     /* per unit: not installed yet when first seen (so it will move) */
    size_t unit_cap;
    Syncer syncer;
    StoreValidate validate; /* the caller's checks of the staged release, or NULL */
    void *validate_data;
    Diag *diag;
} Extract;

static int fail(Extract *x, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(Extract *x, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *m = xvasprintf(fmt, ap);
    va_end(ap);
    diag_error(x->diag, "%s", m);
    free(m);
    return -EINVAL;
}

static int over_bytes(Extract *x)
{
    return fail(x, "the archive unpacks to more than the limit of %llu bytes (max_unpacked_bytes)",
                (unsigned long long)x->lim.bytes);
}

/* Creates the directories of path up to its last "/" beneath the staging
 * directory, never through a symlink, and returns an fd of the last one
 * (or -errno). */
static int make_parents(Extract *x, const char *path)
{
    int fd = dup(x->staging_fd);
    if (fd < 0)
        return -errno;
    const char *p = path, *slash;
    while ((slash = strchr(p, '/'))) {
        char *comp = xstrndup(p, (size_t)(slash - p));
        if (mkdirat(fd, comp, 0755) == 0) {
            strvec_push_take(&x->dirs, xstrndup(path, (size_t)(slash - path)));
        } else if (errno != EEXIST) {
            int r = -errno;
            free(comp);
            close(fd);
            return r;
        }
        int next = open_dir_nofollow(fd, comp);
        free(comp);
        close(fd);
        if (next < 0)
            return next;
        fd = next;
        p = slash + 1;
    }
    return fd;
}

static void add_regular(Extract *x, const char *path, bool synced)
{
    strvec_push(&x->regular, path);
    GROW(x->synced, x->synced_cap, x->regular.n);
    x->synced[x->regular.n - 1] = synced;
    strmap_put(&x->regular_idx, x->regular.v[x->regular.n - 1], x->regular.n - 1);
}

/* Is path (3 components or more) in a unit that is not installed yet, so
 * that it will move into place? The release's own directory always is (an
 * installed one is refused later). Decided when the unit is first seen and
 * checked again under the lock. */
static bool unit_is_new(Extract *x, const char *path)
{
    const char *rest;
    char *unit = unit_of(path, &rest);
    ssize_t i = strvec_index(&x->units, unit);
    if (i < 0) {
        char *installed = xasprintf("%s/%s", x->root, unit);
        struct stat st;
        strvec_push(&x->units, unit);
        i = (ssize_t)x->units.n - 1;
        GROW(x->unit_new, x->unit_cap, x->units.n);
        x->unit_new[i] = strncmp(unit, "releases/", 9) == 0 || lstat(installed, &st) < 0;
        free(installed);
    }
    free(unit);
    return x->unit_new && x->unit_new[i]; /* units and unit_new grow together: never NULL here */
}

static int extract_file(Extract *x, int dirfd, const char *leaf, const char *path, struct archive_entry *e)
{
    mode_t mode = x->la.entry_mode(e);
    int fd = openat(dirfd, leaf, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, (mode & 0111) ? 0755 : 0644);
    if (fd < 0)
        return errno == EEXIST ? fail(x, "%s: the archive holds it twice", path)
                               : fail(x, "%s: cannot create: %s", path, strerror(errno));
    const void *buf;
    size_t size;
    la_int64_t off;
    uint64_t end = 0; /* the file's size so far: holes count */
    int r = 0, rc;
    while ((rc = x->la.read_data_block(x->a, &buf, &size, &off)) == ARCHIVE_OK) {
        if (off < 0 || (uint64_t)off + size > x->lim.bytes) {
            r = over_bytes(x);
            break;
        }
        if ((uint64_t)off + size > end) {
            x->total += (uint64_t)off + size - end;
            end = (uint64_t)off + size;
        }
        if (x->total > x->lim.bytes) {
            r = over_bytes(x);
            break;
        }
        for (size_t done = 0; done < size;) {
            ssize_t n = pwrite(fd, (const char *)buf + done, size - done, off + (off_t)done);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0) {
                r = fail(x, "%s: cannot write: %s", path, n < 0 ? strerror(errno) : "no space");
                break;
            }
            done += (size_t)n;
        }
        if (r < 0)
            break;
    }
    if (r == 0 && rc != ARCHIVE_EOF)
        r = fail(x, "corrupt or truncated archive at %s: %s", path, x->la.error_string(x->a));
    la_int64_t declared = x->la.entry_size_is_set(e) ? x->la.entry_size(e) : 0;
    if (r == 0 && declared > 0 && (uint64_t)declared > end) { /* a sparse file's trailing hole */
        x->total += (uint64_t)declared - end;
        if (x->total > x->lim.bytes)
            r = over_bytes(x);
        else if (ftruncate(fd, (off_t)declared) < 0)
            r = fail(x, "%s: cannot write: %s", path, strerror(errno));
    }
    if (r < 0) {
        close(fd);
        return r;
    }
    /* A file of a unit that will move reaches the disk now, on the
     * syncer's threads, while the next entries decompress. */
    bool sync = unit_is_new(x, path);
    int err = sync ? syncer_push(&x->syncer, fd) : close(fd) < 0 ? errno : 0;
    if (err)
        return fail(x, "%s: cannot write it to disk: %s", path, strerror(err));
    add_regular(x, path, sync);
    return 0;
}

static int extract_hard_link(Extract *x, int dirfd, const char *leaf, const char *path, const char *hard)
{
    char *target = clean_path(hard);
    int r = 0;
    if (!target) {
        r = fail(x, "%s: hard link to '%s' outside the archive refused", path, hard);
    } else if (!strmap_get(&x->regular_idx, target, NULL)) {
        r = fail(x, "%s: hard link to '%s' refused: only a regular file the archive created before may be linked", path,
                 hard);
    } else {
        /* Through real directories only, as it was created. */
        const char *slash = strrchr(target, '/');
        char *dir = xstrndup(target, (size_t)(slash - target));
        int tfd = open_dir_nofollow(x->staging_fd, dir);
        free(dir);
        if (tfd < 0)
            r = fail(x, "%s: hard link to '%s': %s", path, hard, strerror(-tfd));
        else if (linkat(tfd, slash + 1, dirfd, leaf, 0) < 0)
            r = errno == EEXIST ? fail(x, "%s: the archive holds it twice", path)
                                : fail(x, "%s: hard link to '%s': %s", path, hard, strerror(errno));
        else {
            size_t t = 0;
            bool known = strmap_get(&x->regular_idx, target, &t) && x->synced;
            add_regular(x, path, known && x->synced[t]); /* the same inode: on disk when its first name's is */
        }
        if (tfd >= 0)
            close(tfd);
    }
    free(target);
    return r;
}

static int extract_entry(Extract *x, struct archive_entry *e)
{
    const char *raw = x->la.entry_pathname(e);
    char *path = clean_path(raw);
    int r = 0;
    if (!path) {
        r = raw && raw[0] == '/' ? fail(x, "%s: absolute path refused", raw)
                                 : fail(x, "%s: path with '..' or empty refused", raw ? raw : "(null)");
        goto out;
    }
    unsigned depth = components(path);
    if (depth > x->lim.depth) {
        r = fail(x, "%.200s%s: deeper than the limit of %u path components (max_unpacked_depth)", path,
                 strlen(path) > 200 ? "..." : "", x->lim.depth);
        goto out;
    }
    if (strncmp(path, "releases/", 9) != 0 && strncmp(path, "lib/", 4) != 0 && strcmp(path, "releases") != 0 &&
        strcmp(path, "lib") != 0) {
        r = fail(x, "%s: not part of a release tarball (releases/ and lib/ only)", path);
        goto out;
    }
    mode_t mode = x->la.entry_mode(e);
    if (mode & (S_ISUID | S_ISGID)) {
        r = fail(x, "%s: setuid/setgid bits refused", path);
        goto out;
    }
    const char *hard = x->la.entry_hardlink(e);
    int type = (int)x->la.entry_filetype(e);
    if (!hard && type != AE_IFREG && type != AE_IFDIR && type != AE_IFLNK) {
        r = fail(x, "%s: %s refused", path,
                 type == AE_IFCHR || type == AE_IFBLK ? "device file"
                 : type == AE_IFIFO                   ? "FIFO"
                                                      : "special file");
        goto out;
    }
    if (++x->entries > x->lim.files) {
        r = fail(x, "the archive holds more than the limit of %llu entries (max_unpacked_files)",
                 (unsigned long long)x->lim.files);
        goto out;
    }
    x->total += 512; /* every entry costs something, so a flood of empty files counts */
    if (x->total > x->lim.bytes) {
        r = over_bytes(x);
        goto out;
    }
    if (type == AE_IFDIR && !hard) {
        char *with_slash = xasprintf("%s/", path);
        int fd = make_parents(x, with_slash);
        free(with_slash);
        if (fd < 0)
            r = fail(x, "%s: cannot create: %s", path,
                     fd == -ELOOP ? "a symlink of the archive lies in the way" : strerror(-fd));
        else
            close(fd);
        goto out;
    }
    if (depth < 3) {
        r = fail(x, "%s: %s in place of a directory refused (files go in releases/<vsn>/ and lib/<app>-<vsn>/)", path,
                 hard               ? "hard link"
                 : type == AE_IFLNK ? "symlink"
                                    : "file");
        goto out;
    }
    int dirfd = make_parents(x, path);
    if (dirfd < 0) {
        r = fail(x, "%s: cannot create its directory: %s", path,
                 dirfd == -ELOOP ? "a symlink of the archive lies in the way" : strerror(-dirfd));
        goto out;
    }
    const char *leaf = strrchr(path, '/') + 1;
    if (hard) {
        r = extract_hard_link(x, dirfd, leaf, path, hard);
    } else if (type == AE_IFLNK) {
        const char *target = x->la.entry_symlink(e);
        if (!target || !*target || !link_target_inside(path, target))
            r = fail(x, "%s: symlink to '%s' outside the archive refused", path, target ? target : "");
        else if (symlinkat(target, dirfd, leaf) < 0)
            r = errno == EEXIST ? fail(x, "%s: the archive holds it twice", path)
                                : fail(x, "%s: %s", path, strerror(errno));
        else
            strvec_push(&x->links, path);
    } else {
        r = extract_file(x, dirfd, leaf, path, e);
    }
    close(dirfd);
out:
    free(path);
    return r;
}

/* Every symlink the archive made, resolved on disk through all the others
 * beneath its own unit: one that leads outside it, or loops, is refused.
 * One that leads nowhere (its target absent) is harmless: nothing is ever
 * added to a unit. */
static int check_links(Extract *x)
{
    int r = 0;
    for (size_t i = 0; i < x->links.n && r == 0; i++) {
        const char *path = x->links.v[i], *rest;
        char *unit = unit_of(path, &rest);
        int ufd = open_dir_nofollow(x->staging_fd, unit);
        int fd = ufd < 0 ? ufd : store_open_beneath(ufd, rest, O_PATH);
        if (fd >= 0) {
            close(fd);
        } else if (fd != -ENOENT && fd != -ENOTDIR) {
            char target[4096];
            ssize_t n = ufd >= 0 ? readlinkat(ufd, rest, target, sizeof(target) - 1) : -1;
            target[n < 0 ? 0 : n] = 0;
            r = fd == -EXDEV
                    ? fail(x, "%s: symlink to '%s' resolves outside %s (through the archive's other links) refused",
                           path, target, unit)
                : fd == -ELOOP ? fail(x, "%s: symlink to '%s' refused: a loop, or more than 40 links", path, target)
                               : fail(x, "%s: symlink to '%s': %s", path, target, strerror(-fd));
        }
        if (ufd >= 0)
            close(ufd);
        free(unit);
    }
    return r;
}

/* fsync of the directories of the units named (such as "lib/web-2.0.1"),
 * and of their files the syncer did not take. */
static int sync_units(Extract *x, const StrVec *units)
{
    int r = 0;
    for (size_t i = 0; i < x->regular.n && r == 0; i++) {
        if (x->synced[i])
            continue;
        const char *rest;
        char *unit = unit_of(x->regular.v[i], &rest);
        if (strvec_contains(units, unit)) {
            struct open_how how = {.flags = O_RDONLY | O_NOFOLLOW | O_CLOEXEC,
                                   .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS};
            int fd = (int)syscall(SYS_openat2, x->staging_fd, x->regular.v[i], &how, sizeof(how));
            if (fd < 0 && (errno == ENOSYS || errno == EPERM)) {
                const char *slash = strrchr(x->regular.v[i], '/');
                char *dir = xstrndup(x->regular.v[i], (size_t)(slash - x->regular.v[i]));
                int dfd = open_dir_nofollow(x->staging_fd, dir);
                fd = dfd < 0 ? -1 : openat(dfd, slash + 1, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
                if (dfd >= 0)
                    close(dfd);
                free(dir);
            }
            if (fd < 0 || fsync(fd) < 0)
                r = fail(x, "%s: cannot write it to disk: %s", x->regular.v[i], strerror(errno));
            if (fd >= 0)
                close(fd);
        }
        free(unit);
    }
    for (size_t i = x->dirs.n; i-- > 0 && r == 0;) { /* children before their parents */
        if (components(x->dirs.v[i]) < 2)
            continue; /* releases/ and lib/ of the staging directory: only renamed out of */
        const char *rest;
        char *with_slash = xasprintf("%s/", x->dirs.v[i]);
        char *unit = unit_of(with_slash, &rest);
        if (strvec_contains(units, unit)) {
            int fd = open_dir_nofollow(x->staging_fd, x->dirs.v[i]);
            if (fd < 0 || fsync(fd) < 0)
                r = fail(x, "%s: cannot write it to disk: %s", x->dirs.v[i], strerror(fd < 0 ? -fd : errno));
            if (fd >= 0)
                close(fd);
        }
        free(unit);
        free(with_slash);
    }
    return r;
}

/* Removes a directory tree beneath dirfd (best effort, no symlink is
 * followed). */
static void remove_tree(int dirfd, const char *name)
{
    int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd >= 0) {
        DIR *d = fdopendir(fd);
        for (struct dirent *e; d && (e = readdir(d));) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            if (e->d_type == DT_DIR)
                remove_tree(fd, e->d_name);
            else
                unlinkat(fd, e->d_name, 0);
        }
        if (d)
            closedir(d);
        else
            close(fd);
    }
    unlinkat(dirfd, name, AT_REMOVEDIR);
}

void store_remove_tree(const char *path)
{
    char *copy = xstrdup(path), *slash = strrchr(copy, '/');
    if (slash) {
        *slash = 0;
        int fd = open(*copy ? copy : "/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd >= 0) {
            remove_tree(fd, slash + 1);
            close(fd);
        }
    }
    free(copy);
}

/* The names of the directory rel beneath dirfd (no "." and ".."), sorted. */
static StrVec list_dir(int dirfd, const char *rel)
{
    StrVec v = {0};
    int fd = open_dir_nofollow(dirfd, rel);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d && fd >= 0)
        close(fd);
    for (struct dirent *e; d && (e = readdir(d));)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            strvec_push(&v, e->d_name);
    if (d)
        closedir(d);
    return v;
}

/* Does application directory name (in lib/) of the staging directory have
 * the content of the one installed? Says why not in diag. */
static bool same_app(Extract *x, int lib_fd, const char *name)
{
    int mine = open_dir_nofollow(x->staging_fd, "lib"), theirs = -1, r = 0;
    unsigned char a[STORE_HASH_SIZE], b[STORE_HASH_SIZE];
    int staged = mine < 0 ? mine : open_dir_nofollow(mine, name);
    if (staged < 0 || (r = store_hash_tree(staged, a)) < 0) {
        fail(x, "lib/%s: cannot read the staged copy: %s", name, strerror(-(staged < 0 ? staged : r)));
        r = -1;
    } else if ((theirs = openat(lib_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)) < 0 ||
               (r = store_hash_tree(theirs, b)) < 0) {
        fail(x, "lib/%s: cannot read the copy already installed: %s", name, strerror(theirs < 0 ? errno : -r));
        r = -1;
    } else if (memcmp(a, b, sizeof(a)) != 0) {
        char ha[STORE_HASH_SIZE * 2 + 1], hb[STORE_HASH_SIZE * 2 + 1];
        store_hash_hex(a, ha);
        store_hash_hex(b, hb);
        fail(x,
             "lib/%s: this application version is already installed with different content "
             "(sha256 %.12s here, %.12s installed); give the changed application a new version",
             name, ha, hb);
        r = -1;
    }
    for (int *fd = (int[]){mine, staged, theirs}, k = 0; k < 3; k++)
        if (fd[k] >= 0)
            close(fd[k]);
    return r == 0;
}

/* Is release vsn, already in the root, the one staged: its releases/<vsn>
 * and every application directory of it the same content? Says why not
 * in diag. */
static bool same_release(Extract *x, int root_fd, const char *vsn, const StrVec *libs)
{
    int theirs = -1, mine = -1, r = 0;
    unsigned char a[STORE_HASH_SIZE], b[STORE_HASH_SIZE];
    char *unit = store_path_release_dir(NULL, vsn);
    /* A relup.yaml the tarball lacks was written later (relctl relup
     * --write): no part of what the tarball brought. */
    struct stat st;
    bool staged_relup = (mine = open_dir_nofollow(x->staging_fd, unit)) >= 0 &&
                        fstatat(mine, "relup.yaml", &st, AT_SYMLINK_NOFOLLOW) == 0;
    const char *skip = staged_relup ? NULL : "relup.yaml";
    if (mine < 0 || (r = store_hash_tree_except(mine, skip, a)) < 0 ||
        (theirs = open_dir_nofollow(root_fd, unit)) < 0 || (r = store_hash_tree_except(theirs, skip, b)) < 0) {
        fail(x, "%s: cannot compare with the release already present: %s", unit,
             strerror(-(mine < 0     ? mine
                        : theirs < 0 ? theirs
                                     : r)));
        r = -1;
    } else if (memcmp(a, b, sizeof(a)) != 0) {
        fail(x, "release %s is already present with different content; give the changed release a new version", vsn);
        r = -1;
    }
    int lib_fd = r == 0 ? open_dir_nofollow(root_fd, "lib") : -1;
    for (size_t i = 0; r == 0 && i < libs->n; i++)
        if (lib_fd < 0 || !same_app(x, lib_fd, libs->v[i]))
            r = -1;
    for (int *fd = (int[]){mine, theirs, lib_fd}, k = 0; k < 3; k++)
        if (fd[k] >= 0)
            close(fd[k]);
    free(unit);
    return r == 0;
}

/* Opens ROOT/<name>/, creating it (and syncing ROOT then) when missing. */
static int open_root_dir(int root_fd, const char *name)
{
    if (mkdirat(root_fd, name, 0755) == 0)
        (void)fsync(root_fd);
    int fd = openat(root_fd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

/* Under the root's lock: the version not present, application versions
 * already installed identical, then the moves (applications first, the
 * release last, so a release is never visible before its applications),
 * each directory that changed synced. */
static int move_into_place(Extract *x, const char *root, const char *vsn, const StrVec *libs, StrVec *to_sync)
{
    int root_fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (root_fd < 0)
        return fail(x, "%s: cannot open the root: %s", root, strerror(errno));
    int lib_fd = open_root_dir(root_fd, "lib"), rel_fd = open_root_dir(root_fd, "releases");
    int lock_fd = openat(root_fd, "unpack.lock", O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    int s_lib = open_dir_nofollow(x->staging_fd, "lib"), s_rel = open_dir_nofollow(x->staging_fd, "releases");
    int r = 0;
    if (lib_fd < 0 || rel_fd < 0 || lock_fd < 0 || s_rel < 0)
        r = fail(x, "%s: cannot open lib/, releases/ or unpack.lock: %s", root,
                 strerror(lib_fd < 0   ? -lib_fd
                          : rel_fd < 0 ? -rel_fd
                                       : errno));
    while (r == 0 && flock(lock_fd, LOCK_EX) < 0)
        if (errno != EINTR)
            r = fail(x, "%s/unpack.lock: %s", root, strerror(errno));
    struct stat st;
    if (r == 0 && fstatat(rel_fd, vsn, &st, AT_SYMLINK_NOFOLLOW) == 0) {
        /* Unpacked before: the same content is not an error (an install
         * from a tarball goes on), different content is. */
        r = same_release(x, root_fd, vsn, libs) ? 1 : -EINVAL;
    }
    StrVec moving = {0}, moved = {0};
    for (size_t i = 0; r == 0 && i < libs->n; i++) {
        if (fstatat(lib_fd, libs->v[i], &st, AT_SYMLINK_NOFOLLOW) < 0) {
            strvec_push(&moving, libs->v[i]);
            char *unit = xasprintf("lib/%s", libs->v[i]);
            if (!strvec_contains(to_sync, unit)) { /* installed a moment ago, removed since */
                StrVec one = {0};
                strvec_push(&one, unit);
                r = sync_units(x, &one);
                strvec_clear(&one);
            }
            free(unit);
        } else if (!same_app(x, lib_fd, libs->v[i])) {
            r = -EINVAL;
        }
    }
    /* The moves (when nothing was refused above: diag says why then); a
     * failure puts back what moved. */
    bool synced_all = false, release_moved = false;
    for (size_t i = 0; r == 0 && i < moving.n; i++) {
        if (renameat2(s_lib, moving.v[i], lib_fd, moving.v[i], RENAME_NOREPLACE) == 0)
            strvec_push(&moved, moving.v[i]);
        else
            r = -errno;
    }
    if (r == 0)
        CRASH_POINT("unpack:apps-moved");
    if (r == 0 && renameat2(s_rel, vsn, rel_fd, vsn, RENAME_NOREPLACE) < 0)
        r = -errno;
    release_moved = r == 0;
    if (r == 0)
        CRASH_POINT("unpack:release-moved");
    /* The renames, on disk before the release is recorded. */
    if (r == 0 && ((moved.n && fsync(lib_fd) < 0) || fsync(rel_fd) < 0))
        r = -errno;
    else
        synced_all = r == 0;
    if (r < 0 && diag_n_errors(x->diag) == 0) {
        if (release_moved && !synced_all)
            fail(x, "cannot write release %s's directories to disk: %s", vsn, strerror(-r));
        else
            fail(x, "cannot move release %s into place: %s", vsn, strerror(-r));
        if (release_moved) /* put back what moved: nothing is left in place unrecorded */
            (void)renameat(rel_fd, vsn, s_rel, vsn);
        for (size_t i = 0; i < moved.n; i++)
            (void)renameat(lib_fd, moved.v[i], s_lib, moved.v[i]);
    }
    if (r < 0)
        r = -EINVAL;
    if (r == 0)
        CRASH_POINT("unpack:on-disk");
    strvec_clear(&moving);
    strvec_clear(&moved);
    for (int *fd = (int[]){lock_fd, s_lib, s_rel, lib_fd, rel_fd, root_fd}, k = 0; k < 6; k++)
        if (fd[k] >= 0)
            close(fd[k]); /* the lock goes with lock_fd */
    return r;
}

/* Checks the staged tree against its definitions and the root, makes it
 * durable, then moves it into place. */
static int install_staged(Extract *x, const char *root, const char *staging, char **ret_vsn, char **ret_name)
{
    Diag *diag = x->diag;
    StrVec rels = list_dir(x->staging_fd, "releases");
    if (rels.n != 1) {
        diag_error(diag, "a release tarball holds exactly one releases/<vsn>/ (this one holds %zu)", rels.n);
        strvec_clear(&rels);
        return -EINVAL;
    }
    const char *vsn = rels.v[0];
    ReleaseDef *rel = NULL;
    int r = store_load_release(staging, vsn, &rel, diag);
    if (r == 0 && x->validate && x->validate(staging, vsn, x->validate_data, diag) < 0)
        r = -EINVAL;
    if (r < 0) {
        if (diag_n_errors(diag) == 0)
            diag_error(diag, "release %s: refused by its checks", vsn);
        release_def_free(rel);
        strvec_clear(&rels);
        return -EINVAL;
    }
    /* Every application directory must belong to the release. */
    StrVec libs = list_dir(x->staging_fd, "lib");
    for (size_t i = 0; i < libs.n; i++) {
        bool used = false;
        for (size_t a = 0; a < rel->n_apps && !used; a++) {
            char *want = xasprintf("%s-%s", rel->apps[a].name, rel->apps[a].vsn);
            used = strcmp(want, libs.v[i]) == 0;
            free(want);
        }
        if (!used)
            diag_error(diag, "lib/%s: not an application of release %s", libs.v[i], vsn);
    }
    char *dest = store_path_release_dir(root, vsn);
    struct stat st;
    bool present = lstat(dest, &st) == 0; /* compared under the lock */
    free(dest);
    /* What will move: the release, and the applications not installed yet
     * (checked again under the lock). Only those need to reach the disk. */
    StrVec to_sync = {0};
    if (!present)
        strvec_push_take(&to_sync, store_path_release_dir(NULL, vsn));
    for (size_t i = 0; i < libs.n; i++) {
        char *installed = xasprintf("%s/lib/%s", root, libs.v[i]);
        if (lstat(installed, &st) < 0)
            strvec_push_take(&to_sync, xasprintf("lib/%s", libs.v[i]));
        free(installed);
    }
    int e = syncer_finish(&x->syncer, diag_n_errors(diag) > 0);
    if (e)
        fail(x, "cannot write release %s to disk: %s", vsn, strerror(e));
    if (diag_n_errors(diag) == 0)
        r = sync_units(x, &to_sync);
    if (diag_n_errors(diag) == 0)
        CRASH_POINT("unpack:synced");
    if (diag_n_errors(diag) == 0)
        r = move_into_place(x, root, vsn, &libs, &to_sync);
    if (diag_n_errors(diag) == 0 && r >= 0) {
        *ret_vsn = xstrdup(vsn);
        *ret_name = xstrdup(rel->name);
    } else {
        r = -EINVAL;
    }
    strvec_clear(&to_sync);
    strvec_clear(&libs);
    strvec_clear(&rels);
    release_def_free(rel);
    return r;
}

int store_unpack(const char *root, int fd, const StoreLimits *limits, char **ret_vsn, char **ret_name, Diag *diag)
{
    return store_unpack_validated(root, fd, limits, NULL, NULL, ret_vsn, ret_name, diag);
}

int store_unpack_validated(const char *root, int fd, const StoreLimits *limits, StoreValidate validate, void *userdata,
                           char **ret_vsn, char **ret_name, Diag *diag)
{
    char *tmp = store_path_tmp(root);
    mkdir(tmp, 0700);
    char *staging = xasprintf("%s/unpack-XXXXXX", tmp);
    free(tmp);
    if (!mkdtemp(staging)) {
        int r = -errno;
        diag_error(diag, "cannot create a staging directory in %s/tmp: %s", root, strerror(errno));
        free(staging);
        return r;
    }
    Extract x = {.root = root, .lim = *limits, .validate = validate, .validate_data = userdata, .diag = diag};
    x.staging_fd = open(staging, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    char *why = NULL;
    int r = archive_api_open(&x.la, &why);
    if (r < 0) {
        fail(&x, "%s", why);
        free(why);
    } else if (x.staging_fd < 0 || !(x.a = x.la.read_new()) || x.la.read_support_filter_all(x.a) < ARCHIVE_WARN ||
               x.la.read_support_format_all(x.a) < ARCHIVE_WARN || x.la.read_open_fd(x.a, fd, 65536) != ARCHIVE_OK) {
        r = fail(&x, "cannot read the archive: %s",
                 x.staging_fd < 0 ? strerror(errno)
                 : x.a            ? x.la.error_string(x.a)
                                  : "out of memory");
    } else {
        struct archive_entry *e;
        int rc;
        while (r == 0 && (rc = x.la.read_next_header(x.a, &e)) != ARCHIVE_EOF) {
            if (rc == ARCHIVE_WARN)
                rc = ARCHIVE_OK;
            if (rc != ARCHIVE_OK)
                r = fail(&x, "corrupt or truncated archive: %s", x.la.error_string(x.a));
            else
                r = extract_entry(&x, e);
        }
        if (r == 0 && x.entries == 0)
            r = fail(&x, "empty archive: no release in it");
    }
    if (x.a)
        (void)x.la.read_free(x.a); /* reading is over: its result is taken */
    archive_api_close(&x.la);
    if (r == 0)
        r = check_links(&x);
    if (r == 0)
        CRASH_POINT("unpack:staged");
    if (r == 0)
        r = install_staged(&x, root, staging, ret_vsn, ret_name);
    syncer_finish(&x.syncer, true); /* a refusal: what is left closes unsynced */
    if (x.staging_fd >= 0)
        close(x.staging_fd);
    strmap_clear(&x.regular_idx);
    strvec_clear(&x.regular);
    free(x.synced);
    strvec_clear(&x.units);
    free(x.unit_new);
    strvec_clear(&x.dirs);
    strvec_clear(&x.links);
    store_remove_tree(staging);
    free(staging);
    return r;
}
