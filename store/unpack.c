/* Unpacking a release tarball into the store: extract into a staging
 * directory inside the root, refuse anything hostile, validate the release
 * completely, and only then move it into place. On any failure nothing is
 * left behind (the staging directory is removed). */
#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "store.h"

static int open_dir_beneath(int dirfd, const char *rel)
{
    struct open_how how = {.flags = O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW,
                           .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS};
    int fd = (int)syscall(SYS_openat2, dirfd, rel, &how, sizeof(how));
    if (fd < 0 && (errno == ENOSYS || errno == EPERM)) /* no openat2: components were checked lexically */
        fd = openat(dirfd, rel, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
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

/* Does a symlink at `path` with target `target` point inside the tree? */
static bool link_target_inside(const char *path, const char *target)
{
    int depth = 0;
    for (const char *p = path; (p = strchr(p, '/')); p++)
        depth++; /* the directories the link lies in */
    return path_walk_depth(target, depth) >= 0;
}

/* Creates the parent directories of path beneath root_fd and returns an fd
 * of the last one (or -errno). */
static int make_parents(int root_fd, const char *path)
{
    int fd = dup(root_fd);
    const char *p = path, *slash;
    while (fd >= 0 && (slash = strchr(p, '/'))) {
        char *comp = xstrndup(p, (size_t)(slash - p));
        if (mkdirat(fd, comp, 0755) < 0 && errno != EEXIST) {
            free(comp);
            close(fd);
            return -errno;
        }
        int next = open_dir_beneath(fd, comp);
        free(comp);
        close(fd);
        fd = next;
        p = slash + 1;
    }
    return fd < 0 ? (fd == -1 ? -errno : fd) : fd;
}

typedef struct Extract {
    struct archive *a;
    int staging_fd;
    uint64_t limit, total;
    size_t entries;
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

static int extract_file(Extract *x, int dirfd, const char *leaf, const char *path, mode_t mode)
{
    int fd = openat(dirfd, leaf, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, (mode & 0111) ? 0755 : 0644);
    if (fd < 0)
        return errno == EEXIST ? fail(x, "%s: the archive holds it twice", path)
                               : fail(x, "%s: cannot create: %s", path, strerror(errno));
    const void *buf;
    size_t size;
    la_int64_t off;
    int r = 0, rc;
    while ((rc = archive_read_data_block(x->a, &buf, &size, &off)) == ARCHIVE_OK) {
        x->total += size;
        if (x->total > x->limit) {
            r = fail(x, "the archive unpacks to more than the limit of %llu bytes", (unsigned long long)x->limit);
            break;
        }
        if (pwrite(fd, buf, size, off) != (ssize_t)size) {
            r = fail(x, "%s: cannot write: %s", path, strerror(errno));
            break;
        }
    }
    if (r == 0 && rc != ARCHIVE_EOF)
        r = fail(x, "corrupt or truncated archive at %s: %s", path, archive_error_string(x->a));
    if (close(fd) < 0 && r == 0)
        r = fail(x, "%s: cannot write: %s", path, strerror(errno));
    return r;
}

static int extract_entry(Extract *x, struct archive_entry *e)
{
    const char *raw = archive_entry_pathname(e);
    char *path = clean_path(raw);
    int r = 0;
    if (!path) {
        r = raw && raw[0] == '/' ? fail(x, "%s: absolute path refused", raw)
                                 : fail(x, "%s: path with '..' or empty refused", raw ? raw : "(null)");
        goto out;
    }
    if (strncmp(path, "releases/", 9) != 0 && strncmp(path, "lib/", 4) != 0 && strcmp(path, "releases") != 0 &&
        strcmp(path, "lib") != 0) {
        r = fail(x, "%s: not part of a release tarball (releases/ and lib/ only)", path);
        goto out;
    }
    mode_t mode = archive_entry_mode(e);
    if (mode & (S_ISUID | S_ISGID)) {
        r = fail(x, "%s: setuid/setgid bits refused", path);
        goto out;
    }
    const char *hard = archive_entry_hardlink(e);
    int type = (int)archive_entry_filetype(e);
    if (!hard && type != AE_IFREG && type != AE_IFDIR && type != AE_IFLNK) {
        r = fail(x, "%s: %s refused", path,
                 type == AE_IFCHR || type == AE_IFBLK ? "device file"
                 : type == AE_IFIFO                   ? "FIFO"
                                                      : "special file");
        goto out;
    }
    x->entries++;
    x->total += 512; /* every entry costs something, so a flood of empty files counts */
    if (x->total > x->limit) {
        r = fail(x, "the archive unpacks to more than the limit of %llu bytes", (unsigned long long)x->limit);
        goto out;
    }
    if (type == AE_IFDIR && !hard) {
        char *with_slash = xasprintf("%s/", path);
        int fd = make_parents(x->staging_fd, with_slash);
        free(with_slash);
        if (fd < 0)
            r = fail(x, "%s: cannot create: %s", path, strerror(-fd));
        else
            close(fd);
        goto out;
    }
    int dirfd = make_parents(x->staging_fd, path);
    if (dirfd < 0) {
        r = fail(x, "%s: cannot create its directory: %s", path, strerror(-dirfd));
        goto out;
    }
    const char *leaf = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    if (hard) {
        char *target = clean_path(hard);
        if (!target)
            r = fail(x, "%s: hard link to '%s' outside the archive refused", path, hard);
        else if (linkat(x->staging_fd, target, dirfd, leaf, 0) < 0)
            r = fail(x, "%s: hard link to '%s': %s", path, hard, strerror(errno));
        free(target);
    } else if (type == AE_IFLNK) {
        const char *target = archive_entry_symlink(e);
        if (!link_target_inside(path, target))
            r = fail(x, "%s: symlink to '%s' outside the archive refused", path, target ? target : "");
        else if (symlinkat(target, dirfd, leaf) < 0)
            r = fail(x, "%s: %s", path, strerror(errno));
    } else {
        r = extract_file(x, dirfd, leaf, path, mode);
    }
    close(dirfd);
out:
    free(path);
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

/* The names of a directory's entries (no "." and ".."). */
static StrVec list_dir(const char *path)
{
    StrVec v = {0};
    DIR *d = opendir(path);
    for (struct dirent *e; d && (e = readdir(d));)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            strvec_push(&v, e->d_name);
    if (d)
        closedir(d);
    return v;
}

static bool same_file(const char *a, const char *b)
{
    char *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    bool same =
        store_read_file(a, &x, &nx) == 0 && store_read_file(b, &y, &ny) == 0 && nx == ny && memcmp(x, y, nx) == 0;
    free(x);
    free(y);
    return same;
}

/* Checks the staged tree against its definitions and the root, then moves
 * it into place. */
static int install_staged(const char *root, const char *staging, char **ret_vsn, char **ret_name, Diag *diag)
{
    char *rels_dir = store_path_releases(staging);
    StrVec rels = list_dir(rels_dir);
    free(rels_dir);
    if (rels.n != 1) {
        diag_error(diag, "a release tarball holds exactly one releases/<vsn>/ (this one holds %zu)", rels.n);
        strvec_clear(&rels);
        return -EINVAL;
    }
    const char *vsn = rels.v[0];
    ReleaseDef *rel = NULL;
    int r = store_load_release(staging, vsn, &rel, diag);
    if (r < 0) {
        strvec_clear(&rels);
        return r < 0 && r != -EINVAL ? -EINVAL : r;
    }
    /* Every application directory must belong to the release. */
    char *lib_dir = xasprintf("%s/lib", staging);
    StrVec libs = list_dir(lib_dir);
    free(lib_dir);
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
    if (stat(dest, &st) == 0)
        diag_error(diag, "release %s is already present", vsn);
    /* An application version already installed must be the same. */
    for (size_t i = 0; i < libs.n; i++) {
        char *mine = xasprintf("%s/lib/%s/app.yaml", staging, libs.v[i]);
        char *theirs = xasprintf("%s/lib/%s/app.yaml", root, libs.v[i]);
        if (stat(theirs, &st) == 0 && !same_file(mine, theirs))
            diag_error(diag, "lib/%s differs from the copy already installed", libs.v[i]);
        free(mine);
        free(theirs);
    }
    if (diag_n_errors(diag)) {
        r = -EINVAL;
        goto done;
    }
    /* Move: new application directories first, the release last, so that a
     * release is never visible before its applications. */
    char *lib_root = xasprintf("%s/lib", root), *rel_root = xasprintf("%s/releases", root);
    mkdir(lib_root, 0755);
    mkdir(rel_root, 0755);
    StrVec moved = {0};
    for (size_t i = 0; i < libs.n && r == 0; i++) {
        char *from = xasprintf("%s/lib/%s", staging, libs.v[i]), *to = xasprintf("%s/%s", lib_root, libs.v[i]);
        if (renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE) == 0)
            strvec_push(&moved, libs.v[i]);
        else if (errno != EEXIST)
            r = -errno;
        free(from);
        free(to);
    }
    char *from = xasprintf("%s/releases/%s", staging, vsn);
    if (r == 0 && renameat2(AT_FDCWD, from, AT_FDCWD, dest, RENAME_NOREPLACE) < 0)
        r = -errno;
    if (r < 0) {
        diag_error(diag, "cannot move release %s into place: %s", vsn, strerror(-r));
        for (size_t i = 0; i < moved.n; i++) { /* put back what moved */
            char *a = xasprintf("%s/%s", lib_root, moved.v[i]), *b = xasprintf("%s/lib/%s", staging, moved.v[i]);
            rename(a, b);
            free(a);
            free(b);
        }
    } else {
        *ret_vsn = xstrdup(vsn);
        *ret_name = xstrdup(rel->name);
    }
    free(from);
    free(lib_root);
    free(rel_root);
    strvec_clear(&moved);
done:
    free(dest);
    strvec_clear(&libs);
    strvec_clear(&rels);
    release_def_free(rel);
    return r;
}

int store_unpack(const char *root, int fd, uint64_t limit, char **ret_vsn, char **ret_name, Diag *diag)
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
    Extract x = {.a = archive_read_new(), .limit = limit, .diag = diag};
    x.staging_fd = open(staging, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    archive_read_support_filter_all(x.a);
    archive_read_support_format_all(x.a);
    int r = 0;
    if (x.staging_fd < 0 || archive_read_open_fd(x.a, fd, 65536) != ARCHIVE_OK) {
        r = fail(&x, "cannot read the archive: %s", x.staging_fd < 0 ? strerror(errno) : archive_error_string(x.a));
    } else {
        struct archive_entry *e;
        int rc;
        while (r == 0 && (rc = archive_read_next_header(x.a, &e)) != ARCHIVE_EOF) {
            if (rc == ARCHIVE_WARN)
                rc = ARCHIVE_OK;
            if (rc != ARCHIVE_OK)
                r = fail(&x, "corrupt or truncated archive: %s", archive_error_string(x.a));
            else
                r = extract_entry(&x, e);
        }
        if (r == 0 && x.entries == 0)
            r = fail(&x, "empty archive: no release in it");
    }
    archive_read_free(x.a);
    if (x.staging_fd >= 0)
        close(x.staging_fd);
    if (r == 0)
        r = install_staged(root, staging, ret_vsn, ret_name, diag);
    store_remove_tree(staging);
    free(staging);
    return r;
}
