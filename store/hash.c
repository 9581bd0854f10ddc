/* Content identity of a directory tree (store.h, store_hash_tree): SHA-256
 * from GNU Nettle, which reld already loads through libarchive, over a
 * canonical walk that follows no link. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <nettle/sha2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store.h"

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The names in the directory fd (not taken), sorted bytewise. */
static int sorted_names(int fd, StrVec *ret)
{
    int dup_fd = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = dup_fd >= 0 ? fdopendir(dup_fd) : NULL;
    if (!d) {
        int r = -errno;
        if (dup_fd >= 0)
            close(dup_fd);
        return r;
    }
    StrVec v = {0};
    errno = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            strvec_push(&v, e->d_name);
    int r = errno ? -errno : 0;
    closedir(d);
    if (r < 0) {
        strvec_clear(&v);
        return r;
    }
    if (v.n > 1)
        qsort(v.v, v.n, sizeof(*v.v), cmp_names);
    *ret = v;
    return 0;
}

/* The hash under way and a buffer for reading files. */
typedef struct Walk {
    struct sha256_ctx h;
    uint8_t *buf;
    const char *skip; /* a top-level name left out (it holds no '/'), or NULL */
} Walk;

#define READ_CHUNK (256U << 10)

static int hash_file(Walk *w, int dirfd, const char *name, const char *path, const struct stat *st)
{
    int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return -errno;
    struct stat now;
    if (fstat(fd, &now) < 0 || now.st_ino != st->st_ino || now.st_dev != st->st_dev || !S_ISREG(now.st_mode)) {
        close(fd);
        return -ESTALE; /* replaced while we looked */
    }
    char head[64];
    int n =
        snprintf(head, sizeof(head), "f%04o %llu ", (unsigned)(now.st_mode & 07777), (unsigned long long)now.st_size);
    sha256_update(&w->h, (size_t)n, (const uint8_t *)head);
    sha256_update(&w->h, strlen(path) + 1, (const uint8_t *)path);
    uint64_t left = (uint64_t)now.st_size;
    int r = 0;
    while (left > 0) {
        ssize_t got = read(fd, w->buf, left < READ_CHUNK ? (size_t)left : READ_CHUNK);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0) {
            r = got < 0 ? -errno : -ESTALE; /* shorter than it said */
            break;
        }
        sha256_update(&w->h, (size_t)got, w->buf);
        left -= (uint64_t)got;
    }
    close(fd);
    return r;
}

/* Hashes the entries of directory fd, whose path is prefix ("" at the top). */
static int hash_dir(Walk *w, int fd, const char *prefix)
{
    StrVec names = {0};
    int r = sorted_names(fd, &names);
    for (size_t i = 0; r == 0 && i < names.n; i++) {
        const char *name = names.v[i];
        char *path = xasprintf("%s%s", prefix, name);
        if (w->skip && strcmp(path, w->skip) == 0) { /* only at the top: deeper paths hold a '/' */
            free(path);
            continue;
        }
        struct stat st;
        if (fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
            r = -errno;
        } else if (S_ISDIR(st.st_mode)) {
            char head[16];
            int n = snprintf(head, sizeof(head), "d%04o ", (unsigned)(st.st_mode & 07777));
            sha256_update(&w->h, (size_t)n, (const uint8_t *)head);
            sha256_update(&w->h, strlen(path) + 1, (const uint8_t *)path);
            int sub = openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (sub < 0) {
                r = -errno;
            } else {
                char *sub_prefix = xasprintf("%s/", path);
                r = hash_dir(w, sub, sub_prefix);
                free(sub_prefix);
                close(sub);
            }
        } else if (S_ISREG(st.st_mode)) {
            r = hash_file(w, fd, name, path, &st);
        } else if (S_ISLNK(st.st_mode)) {
            char target[4096];
            ssize_t n = readlinkat(fd, name, target, sizeof(target));
            if (n < 0 || (size_t)n >= sizeof(target)) {
                r = n < 0 ? -errno : -ENAMETOOLONG;
            } else {
                target[n] = 0;
                sha256_update(&w->h, 2, (const uint8_t *)"l ");
                sha256_update(&w->h, strlen(path) + 1, (const uint8_t *)path);
                sha256_update(&w->h, (size_t)n + 1, (const uint8_t *)target);
            }
        } else {
            r = -EINVAL; /* a device file, FIFO or socket: no part of a release */
        }
        free(path);
    }
    strvec_clear(&names);
    return r;
}

int store_hash_tree(int dirfd, unsigned char out[STORE_HASH_SIZE])
{
    return store_hash_tree_except(dirfd, NULL, out);
}

int store_hash_tree_except(int dirfd, const char *skip, unsigned char out[STORE_HASH_SIZE])
{
    Walk w = {.buf = xmalloc(READ_CHUNK), .skip = skip};
    sha256_init(&w.h);
    int r = hash_dir(&w, dirfd, "");
    if (r == 0)
        sha256_digest(&w.h, STORE_HASH_SIZE, out);
    free(w.buf);
    return r;
}

void store_hash_hex(const unsigned char hash[STORE_HASH_SIZE], char out[STORE_HASH_SIZE * 2 + 1])
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < STORE_HASH_SIZE; i++) {
        out[2 * i] = digits[hash[i] >> 4];
        out[2 * i + 1] = digits[hash[i] & 15];
    }
    out[STORE_HASH_SIZE * 2] = 0;
}
