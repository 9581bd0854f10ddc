/* fuzz-unpack: store_unpack of the input as a release tarball (any format
 * and filter libarchive reads), from a memfd, into a root made once per
 * process (on /dev/shm when it is writable: no disk, and fsync costs
 * nothing; FUZZ_UNPACK_DIR chooses another place) and emptied after every
 * input. Properties: a failure says why and leaves nothing behind; after
 * a success, no path of the root resolves outside it (no symlink leads
 * out, no file is a hard link to one outside). */
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz-diag.h"
#include "store.h"

#define LIMIT (4u << 20) /* bytes unpacked: what one input may write */

static char *root; /* the real path: symlinks are compared with it */
static int memfd = -1;

static void remove_root(void)
{
    store_remove_tree(root);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *base = getenv("FUZZ_UNPACK_DIR");
    if (!base || !*base)
        base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    char *tmpl = xasprintf("%s/fuzz-unpack-XXXXXX", base);
    FUZZ_ASSERT(mkdtemp(tmpl), "cannot create a root in %s: %s", base, strerror(errno));
    root = realpath(tmpl, NULL);
    FUZZ_ASSERT(root, "realpath %s: %s", tmpl, strerror(errno));
    free(tmpl);
    atexit(remove_root);
    memfd = memfd_create("fuzz-unpack", MFD_CLOEXEC);
    FUZZ_ASSERT(memfd >= 0, "memfd_create: %s", strerror(errno));
    return 0;
}

/* ---- after a success: nothing leads out of the root --------------------- */

typedef struct Inode {
    dev_t dev;
    ino_t ino;
    nlink_t nlink, seen;
    char *path;
} Inode;
static Inode *inodes;
static size_t n_inodes;

static bool beneath_root(const char *path)
{
    size_t n = strlen(root);
    return strncmp(path, root, n) == 0 && (path[n] == '/' || path[n] == 0);
}

static int check_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    if (flag == FTW_SL || flag == FTW_SLN) {
        char target[PATH_MAX];
        /* A dangling link leads nowhere yet; one that resolves must stay. */
        if (realpath(path, target))
            FUZZ_ASSERT(beneath_root(target), "symlink %s resolves to %s, outside the root", path, target);
    } else if (flag == FTW_F && st->st_nlink > 1) {
        size_t i = 0;
        while (i < n_inodes && !(inodes[i].dev == st->st_dev && inodes[i].ino == st->st_ino))
            i++;
        if (i == n_inodes) {
            Inode *more = realloc(inodes, (n_inodes + 1) * sizeof(*inodes));
            FUZZ_ASSERT(more, "out of memory");
            inodes = more;
            inodes[n_inodes++] =
                (Inode){.dev = st->st_dev, .ino = st->st_ino, .nlink = st->st_nlink, .path = xstrdup(path)};
        }
        inodes[i].seen++;
    }
    return 0;
}

static void check_beneath(void)
{
    n_inodes = 0;
    FUZZ_ASSERT(nftw(root, check_entry, 16, FTW_PHYS) == 0, "nftw %s: %s", root, strerror(errno));
    for (size_t i = 0; i < n_inodes; i++) {
        FUZZ_ASSERT(inodes[i].seen == inodes[i].nlink,
                    "%s has %ju links, %ju of them in the root: a hard link to a file outside", inodes[i].path,
                    (uintmax_t)inodes[i].nlink, (uintmax_t)inodes[i].seen);
        free(inodes[i].path);
    }
}

/* The entries of ROOT/sub but dot files, -1 when it does not exist. */
static int count_entries(const char *sub)
{
    char *path = xasprintf("%s/%s", root, sub);
    DIR *d = opendir(path);
    free(path);
    if (!d)
        return -1;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        n += e->d_name[0] != '.'; /* a lock file (lib/.lock) may stay */
    closedir(d);
    return n;
}

static void empty_root(void)
{
    static const char *const subs[] = {"releases", "lib"};
    for (size_t i = 0; i < sizeof(subs) / sizeof(subs[0]); i++) {
        char *path = xasprintf("%s/%s", root, subs[i]);
        store_remove_tree(path);
        free(path);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    FUZZ_ASSERT(ftruncate(memfd, 0) == 0, "ftruncate: %s", strerror(errno));
    for (size_t off = 0; off < size;) {
        ssize_t n = pwrite(memfd, data + off, size - off, (off_t)off);
        FUZZ_ASSERT(n > 0, "pwrite: %s", strerror(errno));
        off += (size_t)n;
    }
    FUZZ_ASSERT(lseek(memfd, 0, SEEK_SET) == 0, "lseek: %s", strerror(errno));

    Diag diag = {0};
    char *vsn = NULL, *name = NULL;
    /* Small limits, so that one input stays fast; the depth is reld's default. */
    const StoreLimits limits = {.bytes = LIMIT, .files = 4096, .depth = 32};
    int r = store_unpack(root, memfd, &limits, &vsn, &name, &diag);
    fuzz_print_diag("store_unpack", r, &diag);
    FUZZ_ASSERT(r <= 1, "store_unpack returned %d", r);
    if (r >= 0) {
        FUZZ_ASSERT(vsn && name, "store_unpack succeeded without naming the release");
        check_beneath();
    } else {
        FUZZ_ASSERT(diag_n_errors(&diag) > 0, "store_unpack failed (%d) without saying why", r);
        FUZZ_ASSERT(!vsn && !name, "store_unpack failed but named a release");
        FUZZ_ASSERT(count_entries("releases") <= 0 && count_entries("lib") <= 0,
                    "a failed unpack left releases/ or lib/ entries in the root");
    }
    FUZZ_ASSERT(count_entries("tmp") <= 0, "store_unpack left its staging directory in %s/tmp", root);
    free(vsn);
    free(name);
    diag_clear(&diag);
    empty_root();
    return 0;
}
