/* store: a release root on a real file system in a temporary directory. */
#include <archive.h>
#include <archive_entry.h>
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store.h"
#include "testlib.h"

static char root[] = "/tmp/reld-test-store-XXXXXX";
static Diag d;

static void put(const char *rel, const char *content)
{
    char *path = xasprintf("%s/%s", root, rel);
    for (char *p = strchr(path + strlen(root) + 1, '/'); p; p = strchr(p + 1, '/')) {
        *p = 0;
        mkdir(path, 0755);
        *p = '/';
    }
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(content, f);
    fclose(f);
    free(path);
}

static void sh_run(char *cmd)
{
    ck_assert_msg(system(cmd) == 0, "%s failed", cmd);
    free(cmd);
}
/* A shell command; %1$s is the root. */
#define SH(fmt) sh_run(xasprintf(fmt, root))

static void setup(void)
{
    strcpy(root, "/tmp/reld-test-store-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(root));
    d = (Diag){0};
    put("releases/1/release.yaml", "release: r\nvsn: \"1\"\napplications: [{name: a, vsn: \"1\"}]\n");
    put("releases/2/release.yaml", "release: r\nvsn: \"2\"\napplications: [{name: a, vsn: \"2\"}]\n");
    put("lib/a-1/app.yaml",
        "name: a\nvsn: \"1\"\nmodules: [m, n]\nprocesses: [{name: p, exec: bin/p, modules: [m]}]\n");
    put("lib/a-1/modules/m.so", "m version 1");
    put("lib/a-1/modules/n.so", "n");
    put("lib/a-1/bin/p", "#!/bin/sh\n");
    put("lib/a-2/app.yaml",
        "name: a\nvsn: \"2\"\nmodules: [m, n]\nprocesses: [{name: p, exec: bin/p, modules: [m]}]\n");
    put("lib/a-2/modules/m.so", "m version 2");
    put("lib/a-2/modules/n.so", "n");
    put("lib/a-2/bin/p", "#!/bin/sh\n");
}

static void teardown(void)
{
    char *cmd = xasprintf("rm -rf '%s'", root);
    ck_assert_int_eq(system(cmd), 0);
    free(cmd);
    diag_clear(&d);
}

static bool has_error(const char *part)
{
    return test_diag_has(&d, part, false);
}

#define ck_assert_error(part)                                                                                          \
    ck_assert_msg(has_error(part), "expected '%s' in %zu errors: %s", part, d.errors.n, d.errors.n ? d.errors.v[0] : "")

START_TEST(load_release_good)
{
    ReleaseDef *rel = NULL;
    ck_assert_int_eq(store_load_release(root, "1", &rel, &d), 0);
    ck_assert_int_eq(rel->n_apps, 1);
    ck_assert_str_eq(rel->apps[0].app->file, "lib/a-1/app.yaml");
    release_def_free(rel);
}
END_TEST

START_TEST(load_release_missing)
{
    ReleaseDef *rel = NULL;
    ck_assert_int_eq(store_load_release(root, "9", &rel, &d), -ENOENT);
    ck_assert_error("release 9 is not in");
    ck_assert_int_eq(store_load_release(root, "../1", &rel, &d), -EINVAL);
    ck_assert_error("bad release version '../1'");
    ck_assert_ptr_null(rel);
}
END_TEST

START_TEST(load_release_missing_files_and_symlinks_out)
{
    char *p = xasprintf("%s/lib/a-1/modules/m.so", root);
    unlink(p);
    ck_assert_int_eq(symlink("/etc/passwd", p), 0);
    free(p);
    p = xasprintf("%s/lib/a-1/modules/n.so", root);
    unlink(p);
    free(p);
    ReleaseDef *rel = NULL;
    ck_assert_int_eq(store_load_release(root, "1", &rel, &d), -EINVAL);
    ck_assert_error("lib/a-1/app.yaml:3:11: module file 'modules/m.so' resolves outside the application's directory");
    ck_assert_error("lib/a-1/app.yaml:3:14: module file 'modules/n.so' is missing");
}
END_TEST

START_TEST(load_release_symlink_within_the_app_is_fine)
{
    char *p = xasprintf("%s/lib/a-1/modules/m.so", root);
    unlink(p);
    ck_assert_int_eq(symlink("n.so", p), 0);
    free(p);
    ReleaseDef *rel = NULL;
    ck_assert_int_eq(store_load_release(root, "1", &rel, &d), 0);
    release_def_free(rel);
}
END_TEST

START_TEST(load_release_directory_symlinked_out_is_refused)
{
    /* modules/ itself leads out of the application's directory. */
    put("elsewhere/m.so", "x");
    put("elsewhere/n.so", "x");
    char *mods = xasprintf("%s/lib/a-1/modules", root), *cmd = xasprintf("rm -rf '%s'", mods);
    ck_assert_int_eq(system(cmd), 0);
    char *target = xasprintf("%s/elsewhere", root);
    ck_assert_int_eq(symlink(target, mods), 0);
    ReleaseDef *rel = NULL;
    ck_assert_int_eq(store_load_release(root, "1", &rel, &d), -EINVAL);
    ck_assert_error("lib/a-1/app.yaml:3:11: module file 'modules/m.so' resolves outside the application's directory");
    ck_assert_error("lib/a-1/app.yaml:3:14: module file 'modules/n.so' resolves outside the application's directory");
    free(mods);
    free(cmd);
    free(target);
}
END_TEST

START_TEST(load_release_module_that_is_a_directory_is_refused)
{
    char *p = xasprintf("%s/lib/a-1/modules/n.so", root);
    unlink(p);
    ck_assert_int_eq(mkdir(p, 0755), 0);
    free(p);
    ReleaseDef *rel = NULL;
    ck_assert_int_eq(store_load_release(root, "1", &rel, &d), -EINVAL);
    ck_assert_error("lib/a-1/app.yaml:3:14: module file 'modules/n.so' is not a regular file");
}
END_TEST

/* An application with at least LIST_MIN (12) files in a directory has the
 * directory listed instead of each file looked up: the same messages for
 * a symlink out, a missing file, a directory, and none for a symlink
 * within, as with few files. */
static void errors_with_modules(int n, Diag *out)
{
    SH("rm -rf '%1$s/lib/a-1/modules' && mkdir '%1$s/lib/a-1/modules'");
    char *list = xstrdup("");
    for (int i = 0; i < n; i++) {
        char *l = xasprintf("%s%sm%02d", list, i ? ", " : "", i);
        free(list);
        list = l;
        char *f = xasprintf("lib/a-1/modules/m%02d.so", i);
        if (i >= 4 || i == 3)
            put(f, "x");
        free(f);
    }
    char *app = xasprintf("name: a\nvsn: \"1\"\nmodules: [%s]\n", list);
    put("lib/a-1/app.yaml", app);
    char *p = xasprintf("%s/lib/a-1/modules/m00.so", root);
    ck_assert_int_eq(symlink("/etc/passwd", p), 0);
    free(p);
    p = xasprintf("%s/lib/a-1/modules/m02.so", root);
    ck_assert_int_eq(mkdir(p, 0755), 0);
    free(p);
    p = xasprintf("%s/lib/a-1/modules/m03.so", root);
    unlink(p);
    ck_assert_int_eq(symlink(n > 4 ? "m04.so" : "../app.yaml", p), 0); /* within: fine */
    free(p);
    ReleaseDef *rel = NULL;
    ck_assert_int_eq(store_load_release(root, "1", &rel, out), -EINVAL);
    free(app);
    free(list);
}

START_TEST(load_release_listed_directory_same_messages)
{
    Diag few = {0};
    errors_with_modules(4, &few);
    errors_with_modules(14, &d);
    ck_assert_uint_eq(few.errors.n, 3);
    ck_assert_str_eq(
        few.errors.v[0],
        "lib/a-1/app.yaml:3:11: module file 'modules/m00.so' resolves outside the application's directory");
    ck_assert_str_eq(few.errors.v[1], "lib/a-1/app.yaml:3:16: module file 'modules/m01.so' is missing: No such file or "
                                      "directory");
    ck_assert_str_eq(few.errors.v[2], "lib/a-1/app.yaml:3:21: module file 'modules/m02.so' is not a regular file");
    ck_assert_uint_eq(d.errors.n, few.errors.n);
    for (size_t i = 0; i < few.errors.n; i++)
        ck_assert_str_eq(d.errors.v[i], few.errors.v[i]);
    diag_clear(&few);
}
END_TEST

START_TEST(load_release_version_mismatch)
{
    put("releases/3/release.yaml", "release: r\nvsn: \"1\"\napplications: [{name: a, vsn: \"1\"}]\n");
    ReleaseDef *rel = NULL;
    ck_assert_int_eq(store_load_release(root, "3", &rel, &d), -EINVAL);
    ck_assert_error("releases/3/release.yaml:1:1: defines release version 1 but lies in releases/3");
}
END_TEST

START_TEST(load_release_bad_app_yaml)
{
    put("lib/a-1/app.yaml", "name: a\nvsn: \"1\"\nmodules: [m, n]\nprocesses: {}\n");
    ReleaseDef *rel = NULL;
    ck_assert_int_eq(store_load_release(root, "1", &rel, &d), -EINVAL);
    ck_assert_error("lib/a-1/app.yaml:4:12: processes must be a list, not a mapping");
}
END_TEST

START_TEST(module_changed_compares_bytes)
{
    ReleaseDef *a = NULL, *b = NULL;
    ck_assert_int_eq(store_load_release(root, "1", &a, &d), 0);
    ck_assert_int_eq(store_load_release(root, "2", &b, &d), 0);
    ck_assert_int_eq(store_module_changed(root, a->apps[0].app, b->apps[0].app, "m"), 1);
    ck_assert_int_eq(store_module_changed(root, a->apps[0].app, b->apps[0].app, "n"), 0);
    release_def_free(a);
    release_def_free(b);
}
END_TEST

START_TEST(relup_derives_then_stored_relup_is_used)
{
    Relup *r = NULL;
    bool stored = true;
    ck_assert_int_eq(store_relup(root, "1", "2", true, &r, &stored, &d), 0);
    ck_assert(!stored);
    ck_assert_int_eq(d.warnings.n, 2);
    ck_assert_int_eq(r->up.n, 6); /* load_object_code, ponr, suspend, load, code_change, resume */
    ck_assert_int_eq(store_write_relup(root, r, &d), 0);
    relup_free(r);
    r = NULL;
    ck_assert_int_eq(store_relup(root, "1", "2", false, &r, &stored, &d), 0);
    ck_assert(stored);
    ck_assert_int_eq(r->up.n, 6);
    relup_free(r);
}
END_TEST

START_TEST(relup_without_derive_refuses)
{
    Relup *r = NULL;
    bool stored;
    ck_assert_int_eq(store_relup(root, "1", "2", false, &r, &stored, &d), -EINVAL);
    ck_assert_error("has no appup entry for up from 1");
    ck_assert_ptr_null(r);
}
END_TEST

START_TEST(relup_broken_stored_relup_is_an_error)
{
    put("releases/2/relup.yaml", "{from: \"1\", to: \"2\", up: [{op: nope}], down: []}\n");
    Relup *r = NULL;
    bool stored;
    ck_assert_int_eq(store_relup(root, "1", "2", true, &r, &stored, &d), -EINVAL);
    ck_assert_error("releases/2/relup.yaml:1:32: unknown op 'nope'");
}
END_TEST

/* store_relup loads the applications of both releases on two threads; its
 * messages are still store_load_release's for the first release, then for
 * the second, each in release order. */
static void same_messages_as_one_by_one(void)
{
    Diag one = {0};
    ReleaseDef *x = NULL;
    ck_assert_int_lt(store_load_release(root, "1", &x, &one), 0);
    ck_assert_int_lt(store_load_release(root, "2", &x, &one), 0);
    Relup *r = NULL;
    bool stored;
    ck_assert_int_lt(store_relup(root, "1", "2", true, &r, &stored, &d), 0);
    ck_assert_ptr_null(r);
    ck_assert_uint_gt(one.errors.n, 2);
    ck_assert_uint_eq(d.errors.n, one.errors.n);
    for (size_t i = 0; i < one.errors.n; i++)
        ck_assert_str_eq(d.errors.v[i], one.errors.v[i]);
    diag_clear(&one);
    diag_clear(&d);
}

START_TEST(relup_messages_in_release_order)
{
    /* Applications that do not load, in both releases. */
    put("releases/1/release.yaml", "release: r\nvsn: \"1\"\napplications: [{name: a, vsn: \"1\"}, {name: b, vsn: "
                                   "\"1\"}, {name: c, vsn: \"1\"}, {name: e, vsn: \"1\"}]\n");
    put("releases/2/release.yaml", "release: r\nvsn: \"2\"\napplications: [{name: a, vsn: \"2\"}, {name: b, vsn: "
                                   "\"2\"}, {name: c, vsn: \"2\"}, {name: e, vsn: \"2\"}]\n");
    put("lib/b-1/app.yaml", "name: b\nvsn: \"1\"\nmodules: [x, y]\n"); /* no module files */
    put("lib/c-1/app.yaml", "name: c\nvsn: [1\n");                     /* a syntax error */
    put("lib/b-2/app.yaml", "name: b\nvsn: \"2\"\nmodules: [x]\nbogus: 1\n");
    put("lib/c-2/app.yaml", "name: c\nvsn: \"2\"\nprocesses: [{name: p, exec: bin/none}]\n");
    /* e: no directory at all */
    same_messages_as_one_by_one();

    /* Every application loads; validation fails in both releases. */
    put("lib/b-1/modules/x.so", "x");
    put("lib/b-1/modules/y.so", "y");
    put("lib/b-1/app.yaml", "name: b\nvsn: \"1\"\nmodules: [x, y, m]\n");
    put("lib/c-1/app.yaml", "name: c\nvsn: \"1\"\napplications: [zz]\n");
    put("lib/e-1/app.yaml", "name: e\nvsn: \"1\"\n");
    put("lib/b-2/app.yaml", "name: b\nvsn: \"2\"\nmodules: [n]\n");
    put("lib/b-2/modules/n.so", "n");
    put("lib/c-2/app.yaml", "name: c\nvsn: \"1\"\n");
    put("lib/e-2/app.yaml", "name: e\nvsn: \"2\"\napplications: [yy]\n");
    same_messages_as_one_by_one();
}
END_TEST

START_TEST(read_file_refuses_directories)
{
    char *buf;
    size_t len;
    ck_assert_int_eq(store_read_file(root, &buf, &len), -EISDIR);
    ck_assert_int_eq(store_read_file("/nonexistent/x", &buf, &len), -ENOENT);
}
END_TEST

/* ---- resolution beneath a directory -------------------------------------------- */

static int open_root(const char *rel)
{
    char *p = xasprintf("%s/%s", root, rel);
    int fd = open(p, O_PATH | O_DIRECTORY | O_CLOEXEC);
    free(p);
    ck_assert_int_ge(fd, 0);
    return fd;
}

static void link_in(const char *rel, const char *target)
{
    char *p = xasprintf("%s/%s", root, rel);
    ck_assert_int_eq(symlink(target, p), 0);
    free(p);
}

START_TEST(open_beneath_refuses_chains_that_look_local)
{
    /* Each target looks local as text; on disk the chain climbs out. */
    link_in("lib/a-1/L1", "../..");
    link_in("lib/a-1/L2", "L1/..");
    link_in("lib/a-1/L3", "L2/..");
    link_in("lib/a-1/out", "L3/etc/hostname");
    link_in("lib/a-1/abs", "/etc/hostname");
    int dir = open_root("lib/a-1");
    ck_assert_int_eq(store_open_beneath(dir, "L1", O_PATH), -EXDEV);
    ck_assert_int_eq(store_open_beneath(dir, "L3", O_PATH), -EXDEV);
    ck_assert_int_eq(store_open_beneath(dir, "out", O_RDONLY), -EXDEV);
    ck_assert_int_eq(store_open_beneath(dir, "abs", O_RDONLY), -EXDEV);
    ck_assert_int_eq(store_open_beneath(dir, "../a-2/app.yaml", O_RDONLY), -EXDEV);
    ck_assert_int_eq(store_open_beneath(dir, "missing/x", O_RDONLY), -ENOENT);
    close(dir);
}
END_TEST

START_TEST(open_beneath_follows_links_inside)
{
    link_in("lib/a-1/self", ".");
    link_in("lib/a-1/c1", "c2");
    link_in("lib/a-1/c2", "self/self/modules/../modules/m.so");
    int dir = open_root("lib/a-1");
    int fd = store_open_beneath(dir, "c1", O_RDONLY);
    ck_assert_int_ge(fd, 0);
    char buf[32] = {0};
    ck_assert_int_eq(read(fd, buf, sizeof(buf) - 1), 11);
    ck_assert_str_eq(buf, "m version 1");
    close(fd);
    /* 40 links are followed, the 41st is a loop to the kernel. */
    for (int k = 1; k <= 41; k++) {
        char *name = xasprintf("lib/a-1/k%d", k), *target = k == 41 ? xstrdup("app.yaml") : xasprintf("k%d", k + 1);
        link_in(name, target);
        free(name);
        free(target);
    }
    fd = store_open_beneath(dir, "k2", O_RDONLY);
    ck_assert_int_ge(fd, 0);
    close(fd);
    ck_assert_int_eq(store_open_beneath(dir, "k1", O_RDONLY), -ELOOP);
    link_in("lib/a-1/loop1", "loop2");
    link_in("lib/a-1/loop2", "loop1");
    ck_assert_int_eq(store_open_beneath(dir, "loop1", O_RDONLY), -ELOOP);
    close(dir);
}
END_TEST

START_TEST(read_file_beneath_reads_nothing_outside)
{
    put("secret/s.yaml", "secret_key: 1\n");
    link_in("lib/a-1/L1", "../..");
    link_in("lib/a-1/L2", "L1/secret/s.yaml");
    int dir = open_root("lib/a-1");
    char *buf = (char *)"untouched";
    size_t len = 0;
    ck_assert_int_eq(store_read_file_beneath(dir, "L2", &buf, &len), -EXDEV);
    ck_assert_str_eq(buf, "untouched");
    ck_assert_int_eq(store_read_file_beneath(dir, "app.yaml", &buf, &len), 0);
    ck_assert(strstr(buf, "name: a") != NULL);
    free(buf);
    close(dir);
}
END_TEST

/* app.yaml, release.yaml, a module: a link leading out is not read, and
 * nothing of what it points to is quoted. */
START_TEST(load_release_reads_definitions_beneath_their_unit)
{
    put("outside/s.yaml", "secret_key: 1\n");
    char *p = xasprintf("%s/lib/a-1/app.yaml", root);
    unlink(p);
    free(p);
    link_in("lib/a-1/L1", "../..");
    link_in("lib/a-1/app.yaml", "L1/outside/s.yaml");
    ReleaseDef *rel = NULL;
    ck_assert_int_eq(store_load_release(root, "1", &rel, &d), -EINVAL);
    ck_assert_error("lib/a-1/app.yaml: cannot read: it leads outside its directory");
    ck_assert(!test_diag_has(&d, "secret_key", false));
    diag_clear(&d);

    p = xasprintf("%s/releases/2/release.yaml", root);
    unlink(p);
    free(p);
    link_in("releases/2/release.yaml", "../../outside/s.yaml");
    ck_assert_int_eq(store_load_release(root, "2", &rel, &d), -EXDEV);
    ck_assert_error("releases/2/release.yaml: cannot read: it leads outside its directory");
    ck_assert(!test_diag_has(&d, "secret_key", false));
    diag_clear(&d);

    /* A stored relup that leads out is not read either. */
    SH("rm '%1$s/releases/2/release.yaml' '%1$s/lib/a-1/app.yaml'");
    put("releases/2/release.yaml", "release: r\nvsn: \"2\"\napplications: [{name: a, vsn: \"2\"}]\n");
    put("lib/a-1/app.yaml",
        "name: a\nvsn: \"1\"\nmodules: [m, n]\nprocesses: [{name: p, exec: bin/p, modules: [m]}]\n");
    link_in("releases/2/relup.yaml", "../../outside/s.yaml");
    Relup *r = NULL;
    bool stored;
    ck_assert_int_eq(store_relup(root, "1", "2", true, &r, &stored, &d), -EXDEV);
    ck_assert_error("releases/2/relup.yaml: cannot read: it leads outside its directory");
    ck_assert(!test_diag_has(&d, "secret_key", false));
    ck_assert_ptr_null(r);
}
END_TEST

START_TEST(module_changed_opens_beneath_the_application)
{
    ReleaseDef *a = NULL, *b = NULL;
    ck_assert_int_eq(store_load_release(root, "1", &a, &d), 0);
    ck_assert_int_eq(store_load_release(root, "2", &b, &d), 0);
    char *p = xasprintf("%s/lib/a-2/modules/n.so", root);
    unlink(p);
    free(p);
    link_in("lib/a-2/modules/n.so", "../../a-1/modules/n.so"); /* same bytes, but in another application */
    ck_assert_int_eq(store_module_changed(root, a->apps[0].app, b->apps[0].app, "n"), -EXDEV);
    release_def_free(a);
    release_def_free(b);
}
END_TEST

/* ---- content identity ------------------------------------------------------------ */

static void tree_hash(const char *rel, unsigned char out[STORE_HASH_SIZE])
{
    int fd = open_root(rel);
    int dfd = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    close(fd);
    ck_assert_int_eq(store_hash_tree(dfd, out), 0);
    close(dfd);
}

static void tree_hex(const char *rel, char hex[STORE_HASH_SIZE * 2 + 1])
{
    unsigned char h[STORE_HASH_SIZE];
    tree_hash(rel, h);
    store_hash_hex(h, hex);
}

START_TEST(hash_tree_known_answer)
{
    /* The canonical walk of store.h, computed independently:
     * sha256(b"d0755 d\0" b"f0644 5 d/a\0hello" b"l d/l\0a\0" b"f0755 0 z\0") */
    put("h/z", "");
    put("h/d/a", "hello");
    link_in("h/d/l", "a");
    SH("chmod 0755 '%1$s/h/z' && chmod 0644 '%1$s/h/d/a' && chmod 0755 '%1$s/h/d'");
    char hex[STORE_HASH_SIZE * 2 + 1];
    tree_hex("h", hex);
    ck_assert_str_eq(hex, "763a80b682523ee2d4ec5aba3e4be519eb02d958e890625afeca49eb9a4db5e6");
    SH("mkdir '%1$s/e'");
    tree_hex("e", hex);
    ck_assert_str_eq(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"); /* sha256 of nothing */
}
END_TEST

START_TEST(hash_tree_is_content)
{
    unsigned char a[STORE_HASH_SIZE], b[STORE_HASH_SIZE];
    /* The same files made in another order, at another time: the same. */
    SH("cp -a '%1$s/lib/a-1' '%1$s/copy' && touch -d 2001-01-01 '%1$s/copy/app.yaml'");
    tree_hash("lib/a-1", a);
    tree_hash("copy", b);
    ck_assert_mem_eq(a, b, sizeof(a));
    /* a hard link counts as the file it is */
    SH("rm '%1$s/copy/modules/n.so' && ln '%1$s/copy/modules/m.so' '%1$s/copy/modules/n.so'");
    put("lib/a-1/modules/n.so", "m version 1");
    tree_hash("lib/a-1", a);
    tree_hash("copy", b);
    ck_assert_mem_eq(a, b, sizeof(a));
    /* Each of: content, mode, name, link target, a file more. */
    static const char *const changes[] = {
        "printf x >> copy/modules/m.so", "chmod 0600 copy/bin/p", "mv copy/bin/p copy/bin/q",
        "ln -s m.so copy/modules/x",     "touch copy/extra",      "mkdir copy/emptydir",
    };
    for (size_t i = 0; i < sizeof(changes) / sizeof(*changes); i++) {
        SH("rm -rf '%1$s/copy' && cp -a '%1$s/lib/a-1' '%1$s/copy'");
        tree_hash("copy", b);
        ck_assert_mem_eq(a, b, sizeof(a));
        sh_run(xasprintf("cd '%s' && %s", root, changes[i]));
        tree_hash("copy", b);
        ck_assert_msg(memcmp(a, b, sizeof(a)) != 0, "%s left the hash unchanged", changes[i]);
    }
    /* A symlink's target is its content: two targets, two hashes. */
    SH("rm -rf '%1$s/copy' && cp -a '%1$s/lib/a-1' '%1$s/copy'");
    link_in("copy/l", "m.so");
    tree_hash("copy", a);
    SH("rm '%1$s/copy/l' && ln -s n.so '%1$s/copy/l'");
    tree_hash("copy", b);
    ck_assert(memcmp(a, b, sizeof(a)) != 0);
}
END_TEST

START_TEST(hash_tree_refuses_special_files)
{
    char *p = xasprintf("%s/lib/a-1/fifo", root);
    ck_assert_int_eq(mkfifo(p, 0644), 0);
    free(p);
    int fd = open_root("lib/a-1");
    int dfd = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    unsigned char h[STORE_HASH_SIZE];
    ck_assert_int_eq(store_hash_tree(dfd, h), -EINVAL);
    close(dfd);
    close(fd);
}
END_TEST

/* ---- store_unpack on tarballs made here ------------------------------------------ */

typedef struct TarEntry {
    const char *path;
    char type; /* f file, x executable file, d directory, l symlink, h hard link */
    const char *data_or_target;
} TarEntry;

static char *tar_of(const TarEntry *es, size_t n)
{
    char *path = xasprintf("%s.tar", root);
    struct archive *a = archive_write_new();
    ck_assert_int_eq(archive_write_set_format_pax_restricted(a), ARCHIVE_OK);
    ck_assert_int_eq(archive_write_open_filename(a, path), ARCHIVE_OK);
    for (size_t i = 0; i < n; i++) {
        struct archive_entry *e = archive_entry_new();
        archive_entry_set_pathname(e, es[i].path);
        const char *v = es[i].data_or_target ? es[i].data_or_target : "";
        switch (es[i].type) {
        case 'd':
            archive_entry_set_filetype(e, AE_IFDIR);
            archive_entry_set_perm(e, 0755);
            break;
        case 'l':
            archive_entry_set_filetype(e, AE_IFLNK);
            archive_entry_set_perm(e, 0777);
            archive_entry_set_symlink(e, v);
            break;
        case 'h':
            archive_entry_set_filetype(e, AE_IFREG);
            archive_entry_set_perm(e, 0644);
            archive_entry_set_hardlink(e, v);
            break;
        default:
            archive_entry_set_filetype(e, AE_IFREG);
            archive_entry_set_perm(e, es[i].type == 'x' ? 0755 : 0644);
            archive_entry_set_size(e, (la_int64_t)strlen(v));
        }
        ck_assert_int_eq(archive_write_header(a, e), ARCHIVE_OK);
        if ((es[i].type == 'f' || es[i].type == 'x') && *v)
            ck_assert_int_eq(archive_write_data(a, v, strlen(v)), (la_ssize_t)strlen(v));
        archive_entry_free(e);
    }
    ck_assert_int_eq(archive_write_close(a), ARCHIVE_OK);
    archive_write_free(a);
    return path;
}

static const StoreLimits big = {.bytes = 1 << 20, .files = 1000, .depth = 16};

static int unpack(const TarEntry *es, size_t n, const StoreLimits *lim, char **vsn)
{
    char *path = tar_of(es, n);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ck_assert_int_ge(fd, 0);
    char *name = NULL;
    *vsn = NULL;
    int r = store_unpack(root, fd, lim, vsn, &name, &d);
    close(fd);
    unlink(path);
    free(path);
    free(name);
    char *tmp = xasprintf("%s/tmp", root);
    DIR *dir = opendir(tmp);
    int left = 0;
    for (struct dirent *e; dir && (e = readdir(dir));)
        left += e->d_name[0] != '.';
    if (dir)
        closedir(dir);
    free(tmp);
    ck_assert_msg(left == 0, "a staging directory is left");
    return r;
}

#define REL3                                                                                                           \
    {                                                                                                                  \
        "releases/3/release.yaml", 'f', "release: r\nvsn: \"3\"\napplications: [{name: a, vsn: \"1\"}]\n"              \
    }
#define APP1                                                                                                           \
    {                                                                                                                  \
        "lib/a-1/app.yaml", 'f',                                                                                       \
            "name: a\nvsn: \"1\"\nmodules: [m, n]\nprocesses: [{name: p, exec: bin/p, modules: [m]}]\n"                \
    }
#define APP1_FILES                                                                                                     \
    APP1, {"lib/a-1/modules/n.so", 'f', "n"},                                                                          \
    {                                                                                                                  \
        "lib/a-1/bin/p", 'x', "#!/bin/sh\n"                                                                            \
    }

static bool exists(const char *rel)
{
    char *p = xasprintf("%s/%s", root, rel);
    struct stat st;
    bool yes = lstat(p, &st) == 0;
    free(p);
    return yes;
}

START_TEST(unpack_refuses_a_chain_that_climbs_out)
{
    const TarEntry es[] = {REL3,
                           APP1_FILES,
                           {"lib/a-1/modules/m.so", 'f', "m version 1"},
                           {"lib/a-1/L1", 'l', "../.."},
                           {"lib/a-1/L2", 'l', "L1/.."},
                           {"lib/a-1/L3", 'l', "L2/.."}};
    char *vsn;
    ck_assert_int_eq(unpack(es, sizeof(es) / sizeof(*es), &big, &vsn), -EINVAL);
    ck_assert_int_eq(d.errors.n, 1);
    ck_assert_error("lib/a-1/L1: symlink to '../..' resolves outside lib/a-1");
    ck_assert(!exists("releases/3"));
}
END_TEST

START_TEST(unpack_refuses_hard_links_but_to_its_own_files)
{
    static const TarEntry chain[] = {
        {"lib/a-9/L1", 'l', "../.."}, {"lib/a-9/L2", 'l', "L1/.."}, {"lib/a-9/h", 'h', "lib/a-9/L2/lib/a-1/app.yaml"}};
    static const TarEntry to_link[] = {{"lib/a-9/s", 'l', "x"}, {"lib/a-9/h", 'h', "lib/a-9/s"}};
    static const TarEntry to_dir[] = {{"lib/a-9/x/y", 'f', "y"}, {"lib/a-9/h", 'h', "lib/a-9/x"}};
    static const TarEntry later[] = {{"lib/a-9/h", 'h', "lib/a-9/later"}, {"lib/a-9/later", 'f', "x"}};
    static const TarEntry installed[] = {{"lib/a-9/h", 'h', "lib/a-1/app.yaml"}};
    struct {
        const TarEntry *es;
        size_t n;
    } cases[] = {{chain, 3}, {to_link, 2}, {to_dir, 2}, {later, 2}, {installed, 1}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
        char *vsn;
        diag_clear(&d);
        ck_assert_int_eq(unpack(cases[i].es, cases[i].n, &big, &vsn), -EINVAL);
        ck_assert_int_eq(d.errors.n, 1);
        ck_assert_msg(strstr(d.errors.v[0], "only a regular file the archive created before may be linked"), "%s",
                      d.errors.v[0]);
    }
    struct stat st;
    char *p = xasprintf("%s/lib/a-1/app.yaml", root);
    ck_assert_int_eq(stat(p, &st), 0);
    ck_assert_int_eq(st.st_nlink, 1);
    free(p);
}
END_TEST

START_TEST(unpack_limits_one_line_each)
{
    static const TarEntry es[] = {
        {"releases/3/release.yaml", 'f', "release: r\nvsn: \"3\"\napplications: [{name: b, vsn: \"1\"}]\n"},
        {"lib/b-1/app.yaml", 'f', "name: b\nvsn: \"1\"\nmodules: [m]\n"},
        {"lib/b-1/modules/m.so", 'f', "m"},
        {"lib/b-1/priv/a/b/c/d", 'f', "deep"},
        {"lib/b-1/priv/x", 'f', "x"},
        {"lib/b-1/priv/y", 'f', "y"}};
    char *vsn;
    StoreLimits files = big, depth = big, bytes = big;
    files.files = 5;
    depth.depth = 6;
    bytes.bytes = 6 * 512 + 10;
    ck_assert_int_eq(unpack(es, 6, &files, &vsn), -EINVAL);
    ck_assert_int_eq(d.errors.n, 1);
    ck_assert_str_eq(d.errors.v[0], "the archive holds more than the limit of 5 entries (max_unpacked_files)");
    diag_clear(&d);
    ck_assert_int_eq(unpack(es, 6, &depth, &vsn), -EINVAL);
    ck_assert_int_eq(d.errors.n, 1);
    ck_assert_str_eq(d.errors.v[0],
                     "lib/b-1/priv/a/b/c/d: deeper than the limit of 6 path components (max_unpacked_depth)");
    diag_clear(&d);
    ck_assert_int_eq(unpack(es, 6, &bytes, &vsn), -EINVAL);
    ck_assert_int_eq(d.errors.n, 1);
    ck_assert_str_eq(d.errors.v[0], "the archive unpacks to more than the limit of 3082 bytes (max_unpacked_bytes)");
    diag_clear(&d);
    depth.depth = 7;
    files.files = 6;
    files.depth = 7;
    ck_assert_msg(unpack(es, 6, &files, &vsn) == 0, "%s", test_diag_text(&d)); /* exactly at the limits */
    ck_assert_str_eq(vsn, "3");
    free(vsn);
}
END_TEST

START_TEST(unpack_compares_applications_by_content)
{
    /* Release 3 reuses a-1: with another m.so it is refused, with the same
     * files it is accepted and the installed copy stays. */
    static const TarEntry other[] = {REL3, APP1_FILES, {"lib/a-1/modules/m.so", 'f', "m version 1, changed"}};
    static const TarEntry same[] = {REL3, APP1_FILES, {"lib/a-1/modules/m.so", 'f', "m version 1"}};
    char *p = xasprintf("%s/lib/a-1/modules/m.so", root);
    struct stat before, after;
    ck_assert_int_eq(stat(p, &before), 0);
    char *vsn;
    ck_assert_int_eq(unpack(other, 5, &big, &vsn), -EINVAL);
    ck_assert_int_eq(d.errors.n, 1);
    ck_assert_error("lib/a-1: this application version is already installed with different content (sha256 ");
    ck_assert(!exists("releases/3"));
    diag_clear(&d);
    /* The fixture's files as an unpack makes them: 0644, 0755 when executable. */
    SH("chmod 0644 '%1$s/lib/a-1/app.yaml' '%1$s/lib/a-1/modules/m.so' '%1$s/lib/a-1/modules/n.so' && "
       "chmod 0755 '%1$s/lib/a-1/bin/p' '%1$s/lib/a-1' '%1$s/lib/a-1/modules' '%1$s/lib/a-1/bin'");
    ck_assert_msg(unpack(same, 5, &big, &vsn) == 0, "%s", test_diag_text(&d));
    ck_assert_str_eq(vsn, "3");
    free(vsn);
    ck_assert_int_eq(stat(p, &after), 0);
    ck_assert_int_eq(before.st_ino, after.st_ino);
    ck_assert(exists("releases/3/release.yaml") && exists("unpack.lock"));
    free(p);
}
END_TEST

static Suite *store_suite(void)
{
    Suite *s = suite_create("store");
    TCase *tc = tcase_create("store_load_release");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, load_release_good);
    tcase_add_test(tc, load_release_missing);
    tcase_add_test(tc, load_release_missing_files_and_symlinks_out);
    tcase_add_test(tc, load_release_symlink_within_the_app_is_fine);
    tcase_add_test(tc, load_release_directory_symlinked_out_is_refused);
    tcase_add_test(tc, load_release_module_that_is_a_directory_is_refused);
    tcase_add_test(tc, load_release_listed_directory_same_messages);
    tcase_add_test(tc, load_release_version_mismatch);
    tcase_add_test(tc, load_release_bad_app_yaml);
    tcase_add_test(tc, read_file_refuses_directories);
    suite_add_tcase(s, tc);
    tc = tcase_create("store_relup");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, module_changed_compares_bytes);
    tcase_add_test(tc, relup_derives_then_stored_relup_is_used);
    tcase_add_test(tc, relup_without_derive_refuses);
    tcase_add_test(tc, relup_broken_stored_relup_is_an_error);
    tcase_add_test(tc, relup_messages_in_release_order);
    suite_add_tcase(s, tc);
    tc = tcase_create("beneath");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, open_beneath_refuses_chains_that_look_local);
    tcase_add_test(tc, open_beneath_follows_links_inside);
    tcase_add_test(tc, read_file_beneath_reads_nothing_outside);
    tcase_add_test(tc, load_release_reads_definitions_beneath_their_unit);
    tcase_add_test(tc, module_changed_opens_beneath_the_application);
    suite_add_tcase(s, tc);
    tc = tcase_create("hash");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, hash_tree_known_answer);
    tcase_add_test(tc, hash_tree_is_content);
    tcase_add_test(tc, hash_tree_refuses_special_files);
    suite_add_tcase(s, tc);
    tc = tcase_create("unpack");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, unpack_refuses_a_chain_that_climbs_out);
    tcase_add_test(tc, unpack_refuses_hard_links_but_to_its_own_files);
    tcase_add_test(tc, unpack_limits_one_line_each);
    tcase_add_test(tc, unpack_compares_applications_by_content);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return test_run_suite(store_suite());
}
