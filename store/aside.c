/* Taking a release's files out of the root, putting them back, and
 * sweeping application directories no release uses (store.h). Every
 * change happens under ROOT/unpack.lock, as unpacks move files in under
 * it: a removal can never take away an application directory that an
 * unpack has just decided to share. Which application directories are in
 * use is read from the release directories on disk, not from the
 * database, for the same reason. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "crashpoint.h"
#include "store.h"

/* Opens ROOT and takes ROOT/unpack.lock (blocking: unpacks hold it only
 * for their renames). Returns the lock's fd, or -errno (described). */
static int lock_root(const char *root, Diag *diag)
{
    char *path = xasprintf("%s/unpack.lock", root);
    int fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600), r = 0;
    if (fd < 0)
        r = -errno;
    while (r == 0 && flock(fd, LOCK_EX) < 0)
        if (errno != EINTR)
            r = -errno;
    if (r < 0) {
        diag_error(diag, "%s: %s", path, strerror(-r));
        if (fd >= 0)
            close(fd);
    }
    free(path);
    return r < 0 ? r : fd;
}

static int by_version(const void *a, const void *b)
{
    return strverscmp(*(char *const *)a, *(char *const *)b);
}

int store_release_dirs(const char *root, StrVec *ret)
{
    char *dir = store_path_releases(root);
    DIR *d = opendir(dir);
    int r = d || errno == ENOENT ? 0 : -errno;
    for (struct dirent *e; d && (e = readdir(d));)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            strvec_push(ret, e->d_name);
    if (d)
        closedir(d);
    free(dir);
    if (ret->n)
        qsort(ret->v, ret->n, sizeof(*ret->v), by_version);
    return r;
}

/* The application directories ("web-2.0.1") release dir's release.yaml
 * names, read beneath dir. */
static int release_apps(const char *dir, const char *vsn, StrVec *ret)
{
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd < 0)
        return -errno;
    char *buf = NULL, *file = store_path_release_file(NULL, vsn);
    size_t len;
    ReleaseDef *rel = NULL;
    Diag diag = {0};
    int r = store_read_file_beneath(dfd, "release.yaml", &buf, &len);
    if (r == 0 && appdefs_parse_release(file, buf, len, &rel, &diag) < 0)
        r = -EINVAL;
    for (size_t a = 0; r == 0 && a < rel->n_apps; a++)
        strvec_push_take(ret, xasprintf("%s-%s", rel->apps[a].name, rel->apps[a].vsn));
    release_def_free(rel);
    diag_clear(&diag);
    free(file);
    free(buf);
    close(dfd);
    return r;
}

/* The application directories some release on disk other than `except`
 * uses. false when that cannot be told (a release.yaml cannot be read). */
static bool apps_in_use(const char *root, const char *except, StrVec *ret)
{
    StrVec names = {0};
    bool known = store_release_dirs(root, &names) == 0;
    for (size_t i = 0; known && i < names.n; i++) {
        if (except && strcmp(names.v[i], except) == 0)
            continue;
        char *dir = store_path_release_dir(root, names.v[i]);
        known = release_apps(dir, names.v[i], ret) == 0;
        free(dir);
    }
    strvec_clear(&names);
    return known;
}

static int new_trash(const char *root, const char *what, char **ret)
{
    char *tmp = store_path_tmp(root), *trash = xasprintf("%s/%s-XXXXXX", tmp, what);
    int r = 0;
    if ((mkdir(tmp, 0700) < 0 && errno != EEXIST) || !mkdtemp(trash))
        r = -errno;
    free(tmp);
    if (r < 0)
        free(trash);
    else
        *ret = trash;
    return r;
}

/* Syncs ROOT/<sub>: the renames in it reach the disk. */
static int sync_sub(const char *root, const char *sub)
{
    char *path = xasprintf("%s/%s", root, sub);
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC), r = 0;
    if (fd < 0 || fsync(fd) < 0)
        r = errno == ENOENT ? 0 : -errno;
    if (fd >= 0)
        close(fd);
    free(path);
    return r;
}

void store_aside_clear(StoreAside *a)
{
    free(a->root);
    free(a->trash);
    strvec_clear(&a->units);
    strvec_clear(&a->moved);
    *a = (StoreAside){0};
}

/* What a removal moved, back in place; the caller holds the lock.
 * Applications first, the release last, as an unpack moves them in. An
 * application directory that came back meanwhile (an unpack of the same
 * version: same content) stays as it is. 0, or -errno with each failure in
 * diag. */
static int put_back(StoreAside *a, Diag *diag)
{
    int r = 0;
    for (size_t k = a->units.n; k-- > 0;) {
        char *to = xasprintf("%s/%s", a->root, a->units.v[k]);
        if (renameat2(AT_FDCWD, a->moved.v[k], AT_FDCWD, to, RENAME_NOREPLACE) < 0 &&
            !(errno == EEXIST && strncmp(a->units.v[k], "lib/", 4) == 0)) {
            r = -errno;
            diag_error(diag, "cannot put %s back: %s", to, strerror(errno));
        }
        free(to);
    }
    return r;
}

int store_release_aside(const char *root, const char *vsn, StoreAside *ret, Diag *diag)
{
    int lock = lock_root(root, diag);
    if (lock < 0)
        return lock;
    StoreAside a = {.root = xstrdup(root)};
    StrVec mine = {0}, used = {0};
    char *dir = store_path_release_dir(root, vsn);
    /* Read before anything moves: an application directory goes only when
     * every other release's definition says it does not use it. */
    bool known = release_apps(dir, vsn, &mine) == 0 && apps_in_use(root, vsn, &used);
    int r = new_trash(root, "remove", &a.trash);
    if (r < 0) {
        diag_error(diag, "cannot make a directory in %s/tmp: %s", root, strerror(-r));
    } else {
        char *to = xasprintf("%s/release", a.trash);
        if (rename(dir, to) < 0) {
            r = -errno;
            diag_error(diag, "cannot move %s out of the way: %s", dir, strerror(-r));
        } else {
            strvec_push_take(&a.units, store_path_release_dir(NULL, vsn));
            strvec_push(&a.moved, to);
        }
        free(to);
    }
    if (r == 0)
        CRASH_POINT("remove:release-aside");
    for (size_t k = 0; r == 0 && known && k < mine.n; k++) {
        if (strvec_contains(&used, mine.v[k]))
            continue;
        char *from = xasprintf("%s/lib/%s", root, mine.v[k]), *to = xasprintf("%s/%s", a.trash, mine.v[k]);
        if (rename(from, to) == 0) {
            strvec_push_take(&a.units, xasprintf("lib/%s", mine.v[k]));
            strvec_push(&a.moved, to);
        } else if (errno != ENOENT) { /* a stale directory harms nothing; a missing one would */
            diag_warning(diag, "%s stays: %s", from, strerror(errno));
        }
        free(from);
        free(to);
    }
    /* On disk before the database forgets the release: after a power cut
     * the files must not come back as a release to adopt. */
    bool all_back = true;
    if (r == 0 && ((r = sync_sub(root, "releases")) < 0 || (r = sync_sub(root, "lib")) < 0)) {
        diag_error(diag, "cannot write the removal of release %s to disk: %s", vsn, strerror(-r));
        all_back = put_back(&a, diag) == 0; /* under the lock this function holds */
    }
    if (!known && r == 0)
        diag_warning(diag, "release %s's application directories stay: a release's definition cannot be read", vsn);
    close(lock);
    strvec_clear(&mine);
    strvec_clear(&used);
    free(dir);
    if (r < 0) {
        if (a.trash && all_back) /* else what did not go back stays there, for the operator */
            store_remove_tree(a.trash);
        store_aside_clear(&a);
        return r;
    }
    *ret = a;
    return 0;
}

int store_release_back(StoreAside *a, Diag *diag)
{
    int lock = lock_root(a->root, diag);
    if (lock < 0)
        return lock;
    int r = put_back(a, diag);
    close(lock);
    return r;
}

int store_sweep(const char *root, StrVec *ret_swept, Diag *diag)
{
    int lock = lock_root(root, diag);
    if (lock < 0)
        return lock;
    StrVec used = {0}, apps = {0};
    char *lib = xasprintf("%s/lib", root), *trash = NULL;
    DIR *d = opendir(lib);
    int r = d || errno == ENOENT ? 0 : -errno;
    for (struct dirent *e; d && (e = readdir(d));)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            strvec_push(&apps, e->d_name);
    if (d)
        closedir(d);
    if (r < 0)
        diag_error(diag, "cannot read %s: %s", lib, strerror(-r));
    else if (!apps_in_use(root, NULL, &used)) {
        diag_warning(diag, "%s: unused application directories stay: a release's definition cannot be read", lib);
        strvec_clear(&apps); /* cannot tell: nothing goes */
    }
    for (size_t k = 0; r == 0 && k < apps.n; k++) {
        if (strvec_contains(&used, apps.v[k]))
            continue;
        if (!trash && (r = new_trash(root, "sweep", &trash)) < 0) {
            diag_error(diag, "cannot make a directory in %s/tmp: %s", root, strerror(-r));
            break;
        }
        char *from = xasprintf("%s/%s", lib, apps.v[k]), *to = xasprintf("%s/%s", trash, apps.v[k]);
        if (rename(from, to) == 0)
            strvec_push(ret_swept, apps.v[k]);
        else
            diag_warning(diag, "%s stays: %s", from, strerror(errno));
        free(from);
        free(to);
    }
    close(lock);
    if (trash)
        store_remove_tree(trash);
    free(trash);
    free(lib);
    strvec_clear(&used);
    strvec_clear(&apps);
    return r;
}
