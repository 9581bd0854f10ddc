#pragma once
/* store: the release root on disk (SPEC.md "Release tarball" layout):
 *
 *   ROOT/releases/<vsn>/release.yaml
 *   ROOT/releases/<vsn>/relup.yaml      optional, a stored relup
 *   ROOT/lib/<app>-<appvsn>/app.yaml, modules/, bin/, priv/
 *   ROOT/unpack.lock                    flock: unpacks moving releases into place
 *
 * This is where file-system facts are checked: a module file or a relative
 * executable must exist and, after following symlinks, stay inside its
 * application's directory. Every file read from a release (release.yaml,
 * relup.yaml, app.yaml, modules) is opened beneath its own unit
 * (releases/<vsn>/ or lib/<app>-<vsn>/) with store_open_beneath: a file
 * whose links lead outside is never read, so nothing of it can be quoted
 * back. Messages name files relative to the root
 * ("lib/web-2.0.1/app.yaml:14:7: ...").
 *
 * Errors: 0 on success; -EINVAL when the definitions are wrong (the
 * reasons are in diag); another negative errno when the file system failed
 * (also described in diag). *ret is untouched on failure. */
#include <stdint.h>

#include "appdefs.h"
#include "relup.h"

/* The layout of a root, in one place: every path reld and relctl use
 * inside a root comes from these (caller frees). A NULL root gives the
 * path inside the root ("releases/2.0"), as a tarball holds it. */
char *store_path_releases(const char *root);                                  /* ROOT/releases */
char *store_path_release_dir(const char *root, const char *vsn);              /* ROOT/releases/<vsn> */
char *store_path_release_file(const char *root, const char *vsn);             /* ROOT/releases/<vsn>/release.yaml */
char *store_path_relup_file(const char *root, const char *vsn);               /* ROOT/releases/<vsn>/relup.yaml */
char *store_path_app_dir(const char *root, const char *app, const char *vsn); /* ROOT/lib/<app>-<vsn> */
/* ROOT/lib/<app>-<vsn>/<rel>, or rel itself when it is absolute. */
char *store_path_in_app(const char *root, const char *app, const char *vsn, const char *rel);
char *store_path_db(const char *root);   /* ROOT/reld.db */
char *store_path_lock(const char *root); /* ROOT/reld.lock */
char *store_path_tmp(const char *root);  /* ROOT/tmp: staging, removals; emptied at reld's start */

/* Reads a whole file (at most 64 MiB) into a new NUL-terminated buffer. */
int store_read_file(const char *path, char **ret_buf, size_t *ret_len);

/* Loads release vsn from root with every application, and validates it
 * completely (appdefs_validate_release and the file checks above). */
int store_load_release(const char *root, const char *vsn, ReleaseDef **ret, Diag *diag);

/* RelupModuleChangedFn for a root: userdata is the root path. Compares the
 * two module files (each opened beneath its application's directory) byte
 * by byte. */
int store_module_changed(void *root, const AppDef *old_app, const AppDef *new_app, const char *module);

/* The relup from -> to for a root: the stored releases/<to>/relup.yaml when
 * it exists and is for `from` (*ret_stored is set true), else computed
 * (deriving missing appup entries when derive is true). Uses up to three
 * threads of its own, all joined before it returns: the stored relup read
 * while the applications of both releases load from one queue on two,
 * then each release validated on one, the two directions computed on two,
 * the releases freed on two. */
int store_relup(const char *root, const char *from, const char *to, bool derive, Relup **ret, bool *ret_stored,
                Diag *diag);

/* Writes r as releases/<r->to>/relup.yaml, atomically (temporary file,
 * fsync, rename). */
int store_write_relup(const char *root, const Relup *r, Diag *diag);

/* The most one tarball may hold (reld's max_unpacked_bytes,
 * max_unpacked_files and max_unpacked_depth). */
typedef struct StoreLimits {
    uint64_t bytes; /* unpacked size: contents (holes of sparse files too), plus 512 per entry */
    uint64_t files; /* entries of any kind: files, directories, links */
    unsigned depth; /* path components of an entry: "releases/1.0/release.yaml" is 3 */
} StoreLimits;

/* Unpacks a release tarball read from fd (any format libarchive reads) into
 * root, safe by construction:
 *
 * - Every entry is created beneath ROOT/tmp/unpack-* through directory file
 *   descriptors that never follow a symlink (openat2 RESOLVE_BENEATH |
 *   RESOLVE_NO_SYMLINKS, O_NOFOLLOW, O_EXCL): no entry is written through a
 *   link, whatever the order of the entries.
 * - A hard link may only name a regular file this archive created before.
 * - Once every entry is in, every symlink is resolved on disk, through every
 *   other link of the archive, beneath its own unit (releases/<vsn>/ or
 *   lib/<app>-<vsn>/, which move and go independently) with openat2
 *   RESOLVE_BENEATH: one that leads outside, loops, or takes more than 40
 *   links is refused. So no path of the release resolves outside it.
 * - Refused too: absolute paths, "..", entries outside releases/ and lib/,
 *   a symlink in place of releases/, lib/ or a unit, device files, FIFOs,
 *   setuid/setgid bits, a path given twice, more than limits allow,
 *   corrupt, truncated or empty archives.
 *
 * Then the staged tree is validated completely (store_load_release, which
 * reads only beneath each unit; every lib/ directory part of the release),
 * every file and directory fsynced, and under ROOT/unpack.lock (flock: unpacks
 * sharing an application version are serialized) the version must not be
 * present and an application version already installed must have the same
 * content (store_hash_tree) as the staged one; the new application
 * directories and then the release are renamed into place and the
 * directories that changed fsynced. On failure nothing is left: returns
 * -EINVAL (reasons in diag, a limit crossed is one line naming it) or
 * -errno. On success *ret_vsn and *ret_name name the release (caller
 * frees), durably on disk, and the result is 0, or 1 when the release was
 * already present with the same content (nothing changed: unpacking the
 * same tarball twice is not an error; a different tarball of a version
 * present is). Thread-safe. */
int store_unpack(const char *root, int fd, const StoreLimits *limits, char **ret_vsn, char **ret_name, Diag *diag);
/* The caller's own checks of a staged release (staging is a root holding
 * it: releases/<vsn>/, lib/), after store_load_release and before anything
 * moves into place: 0 to go on, -errno (reasons in diag) to refuse. Runs on
 * the unpacking thread. */
typedef int (*StoreValidate)(const char *staging, const char *vsn, void *userdata, Diag *diag);
/* store_unpack, with validate (may be NULL) on the staged release: what it
 * refuses is never in place, not even for a moment. */
int store_unpack_validated(const char *root, int fd, const StoreLimits *limits, StoreValidate validate, void *userdata,
                           char **ret_vsn, char **ret_name, Diag *diag);

/* Opens rel beneath the directory dirfd: the kernel refuses any path that
 * would leave it, through "..", an absolute symlink or a chain of relative
 * ones, or a magic link (openat2 RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
 * where openat2 is missing, the path resolved in user space is compared).
 * Returns an fd or -errno: -EXDEV means "leads outside dirfd", -ELOOP a
 * loop or more than 40 links. */
int store_open_beneath(int dirfd, const char *rel, int flags);

/* store_read_file of rel opened with store_open_beneath. */
int store_read_file_beneath(int dirfd, const char *rel, char **ret_buf, size_t *ret_len);

/* Content identity of a directory tree: SHA-256 (GNU Nettle) over a
 * canonical walk of what lies beneath dirfd, in preorder, the entries of
 * each directory in bytewise order of their names, each one record:
 *
 *   directory  "d" MODE " " PATH "\0"
 *   file       "f" MODE " " SIZE " " PATH "\0" CONTENT
 *   symlink    "l " PATH "\0" TARGET "\0"
 *
 * MODE is the permission bits (st_mode & 07777) in octal, SIZE decimal,
 * PATH relative to dirfd ("modules/m.so"). Owners and times do not count; a
 * hard link counts as the file it is. No link is followed. Returns 0, or
 * -errno (-EINVAL: a device file, FIFO or socket in the tree). */
#define STORE_HASH_SIZE ((size_t)32)
int store_hash_tree(int dirfd, unsigned char out[STORE_HASH_SIZE]);
/* The same without the top-level entry named skip (NULL: none). */
int store_hash_tree_except(int dirfd, const char *skip, unsigned char out[STORE_HASH_SIZE]);
/* out[0..STORE_HASH_SIZE*2] as lower-case hex, NUL-terminated. */
void store_hash_hex(const unsigned char hash[STORE_HASH_SIZE], char out[STORE_HASH_SIZE * 2 + 1]);

/* The entries of ROOT/releases (release versions), in version order
 * (strverscmp); none when it does not exist. 0, or -errno when it cannot
 * be read. */
int store_release_dirs(const char *root, StrVec *ret);

/* Release vsn's files taken out of the root, into ROOT/tmp/remove-XXXXXX/
 * (which reld's start empties): releases/<vsn>, then the application
 * directories that no other release directory on disk uses (all of them
 * stay when some release's definition cannot be read: a stale directory
 * harms nothing, a missing one would). Renames under ROOT/unpack.lock, so
 * never concurrent with an unpack's, then ROOT/releases and ROOT/lib
 * synced. 0 and *ret (caller clears) when the release directory moved,
 * else -errno with nothing moved; warnings in diag. */
typedef struct StoreAside {
    char *root;
    char *trash;  /* ROOT/tmp/remove-XXXXXX: store_remove_tree() it once the removal is recorded */
    StrVec units; /* what moved, relative to the root: "releases/2.0", "lib/web-2.0.1" */
    StrVec moved; /* where each went */
} StoreAside;
int store_release_aside(const char *root, const char *vsn, StoreAside *ret, Diag *diag);
/* Puts back what store_release_aside moved (a removal that was not
 * recorded). 0, or -errno with each failure in diag. */
int store_release_back(StoreAside *a, Diag *diag);
void store_aside_clear(StoreAside *a);

/* The application directories in ROOT/lib that no release directory on
 * disk uses (left by an unpack or a removal that was interrupted), moved
 * out and deleted, under ROOT/unpack.lock; their names are added to
 * *ret_swept. Nothing goes when some release's definition cannot be read
 * (a warning in diag). 0, or -errno. */
int store_sweep(const char *root, StrVec *ret_swept, Diag *diag);

/* Removes a directory tree without following symlinks (best effort). */
void store_remove_tree(const char *path);
