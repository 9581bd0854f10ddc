/* check: descriptors read from real and damaged ELF files, executables and
 * the libraries they need, scripts, and appups against changed modules,
 * on releases laid out in a temporary directory from files meson built
 * (CHECK_BUILD: tests/, CHECK_EXAMPLES: examples/). */
#include <check.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check/check.h"
#include "store.h"

static char root[4096]; /* the temporary release root; a test may point it elsewhere for a while */
static CheckReport rep;

static char *built(const char *env, const char *name)
{
    const char *dir = getenv(env);
    ck_assert_msg(dir, "%s is not set (run through meson test)", env);
    return xasprintf("%s/%s", dir, name);
}

static void mkdirs(const char *path)
{
    char *p = xstrdup(path);
    for (char *s = p + 1; *s; s++)
        if (*s == '/') {
            *s = 0;
            (void)mkdir(p, 0755); /* exists already, or the write below says why */
            *s = '/';
        }
    free(p);
}

/* Writes rel (under root) with content and mode. */
static void put_mode(const char *rel, const char *content, size_t len, mode_t mode)
{
    char *path = xasprintf("%s/%s", root, rel);
    mkdirs(path);
    (void)unlink(path); /* replacing a file */
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, content, len), (ssize_t)len);
    ck_assert_int_eq(fchmod(fd, mode), 0);
    close(fd);
    free(path);
}

static void put(const char *rel, const char *text)
{
    put_mode(rel, text, strlen(text), 0644);
}

static char *slurp(const char *path, size_t *len)
{
    char *buf = NULL;
    ck_assert_int_eq(store_read_file(path, &buf, len), 0);
    if (!buf)
        abort(); /* cannot be: store_read_file returned 0 (scan-build cannot tell) */
    return buf;
}

/* Copies a built file (env dir, name) to rel under root. */
static void copy_in(const char *env, const char *name, const char *rel, mode_t mode)
{
    char *src = built(env, name);
    size_t len;
    char *buf = slurp(src, &len);
    put_mode(rel, buf, len, mode);
    free(buf);
    free(src);
}

static void setup(void)
{
    strcpy(root, "/tmp/test-check-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(root));
    rep = (CheckReport){0};
}

static void teardown(void)
{
    check_report_clear(&rep);
    store_remove_tree(root);
}

/* Release vsn with application a (app_vsn) running module m from file
 * modules/m.so and process p from bin/p; appup is YAML to append. */
static void release(const char *vsn, const char *app_vsn, const char *appup)
{
    char *rel = xasprintf("releases/%s/release.yaml", vsn);
    char *text = xasprintf("release: t\nvsn: \"%s\"\napplications:\n  - {name: a, vsn: \"%s\"}\n", vsn, app_vsn);
    put(rel, text);
    free(rel);
    free(text);
    char *app = xasprintf("lib/a-%s/app.yaml", app_vsn);
    text = xasprintf("name: a\nvsn: \"%s\"\nmodules: [m]\nprocesses:\n  - name: p\n    exec: bin/p\n"
                     "    modules: [m]\n%s",
                     app_vsn, appup ? appup : "");
    put(app, text);
    free(app);
    free(text);
    char *bin = xasprintf("lib/a-%s/bin/p", app_vsn);
    put_mode(bin, "#!/bin/sh\nexit 0\n", 17, 0755);
    free(bin);
}

static void module_file(const char *app_vsn, const char *env, const char *name)
{
    char *rel = xasprintf("lib/a-%s/modules/m.so", app_vsn);
    copy_in(env, name, rel, 0644);
    free(rel);
}

/* Does the report hold a finding of severity sev whose formatted line
 * contains want? */
static bool has(CheckSeverity sev, const char *want)
{
    for (size_t i = 0; i < rep.n; i++) {
        char *line = check_finding_format(&rep.v[i]);
        bool ok = rep.v[i].severity == sev && strstr(line, want);
        free(line);
        if (ok)
            return true;
    }
    return false;
}

static const char *all(void)
{
    static char buf[16384];
    buf[0] = 0;
    for (size_t i = 0; i < rep.n; i++) {
        char *line = check_finding_format(&rep.v[i]);
        strncat(buf, line, sizeof(buf) - strlen(buf) - 4);
        strncat(buf, " | ", sizeof(buf) - strlen(buf) - 1);
        free(line);
    }
    return buf;
}

/* Reads the descriptor of a built file. */
static int desc_of(const char *env, const char *name, CheckModuleDesc *d, char **why)
{
    char *path = built(env, name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ck_assert_int_ge(fd, 0);
    int r = check_module_desc_read(fd, d, why);
    close(fd);
    free(path);
    return r;
}

/* A memfd holding len bytes of buf. */
static int memfd_of(const void *buf, size_t len)
{
    int fd = memfd_create("elf", MFD_CLOEXEC);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, buf, len), (ssize_t)len);
    return fd;
}

/* Runs rel (under root) and says whether ld.so could start it: exit 127
 * is its "cannot load" (and the shell's "cannot run"). */
static bool loads(const char *rel)
{
    /* Without meson's LD_LIBRARY_PATH, which check does not read either:
     * the build directory is not where the release runs. */
    char *cmd = xasprintf("env -u LD_LIBRARY_PATH '%s/%s' 2>/dev/null", root, rel);
    int st = system(cmd);
    free(cmd);
    ck_assert_int_ne(st, -1);
    return WIFEXITED(st) && WEXITSTATUS(st) != 127;
}

/* ---- descriptors ---------------------------------------------------------------- */

START_TEST(desc_of_the_example_modules)
{
    CheckModuleDesc d = {0};
    char *why = NULL;
    ck_assert_int_eq(desc_of("CHECK_EXAMPLES", "kv_server-1.so", &d, &why), 0);
    ck_assert_str_eq(d.name, "kv_server");
    ck_assert_str_eq(d.version, "1");
    ck_assert(d.abi == 1 || d.abi == 2);
    check_module_desc_clear(&d);
    ck_assert_int_eq(desc_of("CHECK_EXAMPLES", "kv_lib-1.so", &d, &why), 0);
    ck_assert_str_eq(d.name, "kv_lib");
    check_module_desc_clear(&d);
    ck_assert_ptr_null(why);
}
END_TEST

START_TEST(desc_abi1_and_abi2_layouts)
{
    CheckModuleDesc d = {0};
    char *why = NULL;
    ck_assert_int_eq(desc_of("CHECK_BUILD", "check-m-abi1.so", &d, &why), 0);
    ck_assert_uint_eq(d.abi, 1);
    ck_assert_uint_eq(d.state_version, 0);
    ck_assert_str_eq(d.name, "m");
    ck_assert_str_eq(d.version, "1.1");
    check_module_desc_clear(&d);
    ck_assert_int_eq(desc_of("CHECK_BUILD", "check-m-sv2.so", &d, &why), 0);
    ck_assert_uint_eq(d.abi, 2);
    ck_assert_uint_eq(d.state_version, 2);
    ck_assert_str_eq(d.version, "2");
    check_module_desc_clear(&d);
}
END_TEST

START_TEST(desc_with_packed_relative_relocations)
{
    char *path = built("CHECK_BUILD", "check-m-relr.so");
    bool there = access(path, R_OK) == 0;
    free(path);
    if (!there)
        return; /* the linker has no -z pack-relative-relocs: meson built none */
    CheckModuleDesc d = {0};
    char *why = NULL;
    ck_assert_int_eq(desc_of("CHECK_BUILD", "check-m-relr.so", &d, &why), 0);
    ck_assert_str_eq(d.name, "m");
    ck_assert_str_eq(d.version, "r");
    check_module_desc_clear(&d);
}
END_TEST

START_TEST(desc_bad_modules)
{
    CheckModuleDesc d = {0};
    char *why = NULL;
    ck_assert_int_eq(desc_of("CHECK_BUILD", "bad-bad_abi.so", &d, &why), 0);
    ck_assert_uint_eq(d.abi, 99);
    check_module_desc_clear(&d);
    ck_assert_int_eq(desc_of("CHECK_BUILD", "bad-bad_name.so", &d, &why), 0);
    ck_assert_str_eq(d.name, "other");
    check_module_desc_clear(&d);
    ck_assert_int_eq(desc_of("CHECK_BUILD", "bad-no_desc.so", &d, &why), -ENOENT);
    ck_assert_str_eq(why, "exports no reld_module symbol");
    free(why);
    why = NULL;
    ck_assert_int_eq(desc_of("CHECK_BUILD", "check-m-small.so", &d, &why), -EINVAL);
    ck_assert_str_eq(why, "its reld_module is 16 bytes; a descriptor is 64 (ABI 1) or 88 (ABI 2)");
    free(why);
}
END_TEST

START_TEST(desc_not_elf_and_other_machines)
{
    CheckModuleDesc d = {0};
    char *why = NULL;
    int fd = memfd_of("hello, world\n", 13);
    ck_assert_int_eq(check_module_desc_read(fd, &d, &why), -ENOEXEC);
    ck_assert_str_eq(why, "not an ELF file");
    close(fd);
    free(why);
    why = NULL;

    /* An aarch64 shared object's header, byte by byte. */
    unsigned char h[64] = {0x7f, 'E', 'L', 'F', ELFCLASS64, ELFDATA2LSB, EV_CURRENT};
    h[16] = ET_DYN;
    h[18] = EM_AARCH64 & 0xff;
    h[19] = EM_AARCH64 >> 8;
    fd = memfd_of(h, sizeof(h));
    ck_assert_int_eq(check_module_desc_read(fd, &d, &why), -EXDEV);
    ck_assert_str_eq(why, "built for aarch64, this machine is x86-64");
    close(fd);
    free(why);
    why = NULL;

    /* 32-bit i386, and big-endian s390x. */
    h[4] = ELFCLASS32;
    h[18] = EM_386;
    h[19] = 0;
    fd = memfd_of(h, sizeof(h));
    ck_assert_int_eq(check_module_desc_read(fd, &d, &why), -EXDEV);
    ck_assert_str_eq(why, "built for i386 (32-bit), this machine is x86-64");
    close(fd);
    free(why);
    why = NULL;
    h[4] = ELFCLASS64;
    h[5] = ELFDATA2MSB;
    h[18] = 0;
    h[19] = EM_S390;
    fd = memfd_of(h, sizeof(h));
    ck_assert_int_eq(check_module_desc_read(fd, &d, &why), -EXDEV);
    ck_assert_str_eq(why, "built for s390x (big-endian), this machine is x86-64");
    close(fd);
    free(why);
}
END_TEST

START_TEST(desc_truncated_files)
{
    char *path = built("CHECK_EXAMPLES", "kv_server-2.so");
    size_t len;
    char *buf = slurp(path, &len);
    free(path);
    /* Every cut in the first 4 KB (headers), then coarser: never a crash,
     * never success before the descriptor's bytes are in. */
    for (size_t cut = 0; cut < len; cut += cut < 4096 ? 1 : 997) {
        int fd = memfd_of(buf, cut);
        CheckModuleDesc d = {0};
        char *why = NULL;
        int r = check_module_desc_read(fd, &d, &why);
        close(fd);
        ck_assert_msg(r == 0 || r == -ENOEXEC || r == -EINVAL || r == -ENOENT, "cut %zu: %d", cut, r);
        if (r < 0)
            ck_assert_msg(why && *why && !strchr(why, '\n'), "cut %zu: no one-line reason", cut);
        if (cut < 64)
            ck_assert_int_eq(r, -ENOEXEC);
        if (r == 0)
            ck_assert_str_eq(d.name, "kv_server");
        check_module_desc_clear(&d);
        free(why);
    }
    free(buf);
}
END_TEST

/* Finds the RELATIVE relocation of the descriptor's name in a copy of a
 * module (through its section headers, independently of check), so that a
 * test can point it elsewhere. */
static Elf64_Rela *name_reloc(char *buf, size_t len)
{
    Elf64_Ehdr *eh = (Elf64_Ehdr *)buf;
    Elf64_Shdr *sh = (Elf64_Shdr *)(buf + eh->e_shoff);
    Elf64_Sym *syms = NULL;
    const char *str = NULL;
    size_t n_syms = 0;
    for (int i = 0; i < eh->e_shnum; i++)
        if (sh[i].sh_type == SHT_DYNSYM) {
            syms = (Elf64_Sym *)(buf + sh[i].sh_offset);
            n_syms = sh[i].sh_size / sizeof(*syms);
            str = buf + sh[sh[i].sh_link].sh_offset;
        }
    ck_assert_ptr_nonnull(syms);
    uint64_t at = 0;
    for (size_t i = 0; i < n_syms; i++)
        if (strcmp(str + syms[i].st_name, "reld_module") == 0)
            at = syms[i].st_value + 8;
    for (int i = 0; i < eh->e_shnum; i++)
        if (sh[i].sh_type == SHT_RELA)
            for (Elf64_Rela *r = (Elf64_Rela *)(buf + sh[i].sh_offset);
                 (char *)r < buf + sh[i].sh_offset + sh[i].sh_size && (char *)(r + 1) <= buf + len; r++)
                if (r->r_offset == at)
                    return r;
    ck_abort_msg("no relocation for the descriptor's name");
    return NULL;
}

START_TEST(desc_name_outside_the_file)
{
    char *path = built("CHECK_BUILD", "check-m-sv1.so");
    size_t len;
    char *buf = slurp(path, &len);
    free(path);
    Elf64_Rela *r = name_reloc(buf, len);
    r->r_addend = 0x7ffffff0;
    int fd = memfd_of(buf, len);
    CheckModuleDesc d = {0};
    char *why = NULL;
    ck_assert_int_eq(check_module_desc_read(fd, &d, &why), -EINVAL);
    ck_assert_str_eq(why, "the name of its reld_module descriptor points outside the file (0x7ffffff0) or is "
                          "longer than 256 bytes");
    close(fd);
    free(why);
    why = NULL;
    /* A relocation of a type check does not follow. */
    r->r_info = ELF64_R_INFO(0, R_X86_64_PC32);
    fd = memfd_of(buf, len);
    ck_assert_int_eq(check_module_desc_read(fd, &d, &why), -EINVAL);
    ck_assert_str_eq(why, "the name of its reld_module descriptor is filled by a relocation of type 2, which check "
                          "does not follow");
    close(fd);
    free(why);
    free(buf);
}
END_TEST

START_TEST(desc_mutated_files_never_crash)
{
    char *path = built("CHECK_BUILD", "check-m-sv2.so");
    size_t len;
    char *orig = slurp(path, &len);
    free(path);
    char *buf = xmalloc(len + 1); /* never NULL, even for an empty file */
    unsigned seed = 12345;
    int outcomes[4] = {0};
    /* CHECK_MUTATIONS=N runs more (docs: a longer run by hand). */
    const char *more = getenv("CHECK_MUTATIONS");
    int rounds = more ? atoi(more) : 3000;
    for (int i = 0; i < rounds; i++) {
        memcpy(buf, orig, len);
        /* 1 to 8 bytes changed, half the time within the headers, the
         * dynamic section and the tables (the first 16 KB). */
        int n = 1 + rand_r(&seed) % 8;
        for (int k = 0; k < n; k++) {
            size_t at = (size_t)rand_r(&seed) % (rand_r(&seed) % 2 && len > 16384 ? 16384 : len);
            buf[at] = (char)(rand_r(&seed) % 3 == 0 ? 0xff : rand_r(&seed));
        }
        int fd = memfd_of(buf, len);
        CheckModuleDesc d = {0};
        char *why = NULL;
        int r = check_module_desc_read(fd, &d, &why);
        close(fd);
        ck_assert_msg(r == 0 || r == -ENOEXEC || r == -EINVAL || r == -ENOENT || r == -EXDEV, "mutation %d: %d", i, r);
        outcomes[r == 0 ? 0 : r == -ENOENT ? 1 : r == -EINVAL ? 2 : 3]++;
        if (r < 0)
            ck_assert_ptr_nonnull(why);
        check_module_desc_clear(&d);
        free(why);
    }
    ck_assert_int_gt(outcomes[0], 0); /* most mutations miss what matters */
    free(buf);
    free(orig);
}
END_TEST

/* ---- a release: modules --------------------------------------------------------- */

START_TEST(release_good)
{
    release("1", "1.0.0", NULL);
    module_file("1.0.0", "CHECK_BUILD", "check-m-sv1.so");
    ck_assert_msg(check_release(root, "1", NULL, &rep) == 0, "%s", all());
    ck_assert_uint_eq(rep.n, 0);
    ck_assert_uint_eq(rep.n_modules, 1);
    ck_assert(rep.modules[0].read);
    ck_assert_str_eq(rep.modules[0].file, "lib/a-1.0.0/modules/m.so");
    ck_assert_uint_eq(strlen(rep.modules[0].sha256), 64);
    ck_assert_uint_eq(rep.n_executables, 1);
}
END_TEST

START_TEST(release_module_name_abi_and_missing_descriptor)
{
    release("1", "1.0.0", NULL);
    module_file("1.0.0", "CHECK_BUILD", "bad-bad_name.so");
    ck_assert_int_eq(check_release(root, "1", NULL, &rep), -EINVAL);
    ck_assert_msg(has(CHECK_ERROR, "lib/a-1.0.0/app.yaml:3:11: error: module m: modules/m.so's descriptor names "
                                   "module 'other' (version 9), not m: the runtime refuses it"),
                  "%s", all());
    check_report_clear(&rep);
    module_file("1.0.0", "CHECK_BUILD", "bad-bad_abi.so");
    ck_assert_int_eq(check_release(root, "1", NULL, &rep), -EINVAL);
    ck_assert_msg(has(CHECK_ERROR, "module m: modules/m.so has module ABI 99; reld's runtime loads module ABI 2 only: "
                                   "rebuild the module against this reld-runtime.h"),
                  "%s", all());
    check_report_clear(&rep);
    module_file("1.0.0", "CHECK_BUILD", "abi1-kv_server.so"); /* built against ABI 1, as the runtime refuses it */
    ck_assert_int_eq(check_release(root, "1", NULL, &rep), -EINVAL);
    ck_assert_msg(has(CHECK_ERROR, "module m: modules/m.so has module ABI 1; reld's runtime loads module ABI 2 only"),
                  "%s", all());
    check_report_clear(&rep);
    module_file("1.0.0", "CHECK_BUILD", "bad-no_desc.so");
    ck_assert_int_eq(check_release(root, "1", NULL, &rep), -EINVAL);
    ck_assert_msg(has(CHECK_ERROR, "lib/a-1.0.0/app.yaml:3:11: error: module m: modules/m.so: exports no reld_module "
                                   "symbol"),
                  "%s", all());
    check_report_clear(&rep);
    put("lib/a-1.0.0/modules/m.so", "not a shared object");
    ck_assert_int_eq(check_release(root, "1", NULL, &rep), -EINVAL);
    ck_assert_msg(has(CHECK_ERROR, "module m: modules/m.so: not an ELF file"), "%s", all());
}
END_TEST

START_TEST(release_definitions_that_do_not_load)
{
    release("1", "1.0.0", NULL);
    put("lib/a-1.0.0/app.yaml", "name: a\nvsn: \"1.0.0\"\nmodules: [m]\nprocesses: {}\n");
    ck_assert_int_eq(check_release(root, "1", NULL, &rep), -EINVAL);
    ck_assert_msg(has(CHECK_ERROR, "lib/a-1.0.0/app.yaml:4:12: error: processes must be a list"), "%s", all());
    check_report_clear(&rep);
    ck_assert_int_eq(check_release(root, "9", NULL, &rep), -ENOENT);
    ck_assert_msg(has(CHECK_ERROR, "release 9 is not in"), "%s", all());
    check_report_clear(&rep);
    ck_assert_int_lt(check_release("/nonexistent/root", "1", NULL, &rep), 0);
    ck_assert_msg(has(CHECK_ERROR, "/nonexistent/root: error: cannot open the release root"), "%s", all());
}
END_TEST

/* ---- a release: executables -------------------------------------------------------- */

START_TEST(exec_missing_library_then_shipped)
{
    release("1", "1.0.0", NULL);
    module_file("1.0.0", "CHECK_BUILD", "check-m-sv1.so");
    copy_in("CHECK_BUILD", "check-needs-dep", "lib/a-1.0.0/bin/p", 0755);
    ck_assert_int_eq(check_release(root, "1", NULL, &rep), -EINVAL);
    ck_assert_msg(has(CHECK_ERROR, "lib/a-1.0.0/bin/p: error: needs libcheckdep.so, found neither in the release "
                                   "nor on this system (process p of a)"),
                  "%s", all());
    ck_assert_uint_eq(rep.n_errors, 1);
    ck_assert(!loads("lib/a-1.0.0/bin/p"));
    check_report_clear(&rep);
    /* Shipped where its DT_RUNPATH ($ORIGIN/../lib) looks. */
    copy_in("CHECK_BUILD", "libcheckdep.so", "lib/a-1.0.0/lib/libcheckdep.so", 0644);
    ck_assert_msg(check_release(root, "1", NULL, &rep) == 0, "%s", all());
    ck_assert(loads("lib/a-1.0.0/bin/p"));
    check_report_clear(&rep);
    /* A library of the release that is not for this machine is skipped,
     * as ld.so skips it. */
    unsigned char h[64] = {0x7f, 'E', 'L', 'F', ELFCLASS64, ELFDATA2LSB, EV_CURRENT};
    h[16] = ET_DYN;
    h[18] = EM_AARCH64;
    put_mode("lib/a-1.0.0/lib/libcheckdep.so", (const char *)h, sizeof(h), 0644);
    ck_assert_int_eq(check_release(root, "1", NULL, &rep), -EINVAL);
    ck_assert_msg(has(CHECK_ERROR, "needs libcheckdep.so, found neither"), "%s", all());
}
END_TEST

START_TEST(exec_library_needing_a_library_through_the_executables_rpath)
{
    /* bin/p has DT_RPATH $ORIGIN/../lib/sub:$ORIGIN/../deps; it needs
     * lib/sub/libcheckchain.so, which needs libcheckdep.so, found in deps/
     * through bin/p's DT_RPATH with bin/p's $ORIGIN. Each verdict is
     * ld.so's own: the program is run. */
    release("1", "1.0.0", NULL);
    module_file("1.0.0", "CHECK_BUILD", "check-m-sv1.so");
    copy_in("CHECK_BUILD", "check-needs-chain", "lib/a-1.0.0/bin/p", 0755);
    copy_in("CHECK_BUILD", "libcheckchain.so", "lib/a-1.0.0/lib/sub/libcheckchain.so", 0644);
    ck_assert_int_eq(check_release(root, "1", NULL, &rep), -EINVAL);
    ck_assert_msg(has(CHECK_ERROR, "lib/a-1.0.0/lib/sub/libcheckchain.so: error: needs libcheckdep.so, found neither "
                                   "in the release nor on this system (process p of a)"),
                  "%s", all());
    ck_assert_uint_eq(rep.n_errors, 1);
    ck_assert(!loads("lib/a-1.0.0/bin/p"));
    check_report_clear(&rep);
    copy_in("CHECK_BUILD", "libcheckdep.so", "lib/a-1.0.0/deps/libcheckdep.so", 0644);
    ck_assert_msg(check_release(root, "1", NULL, &rep) == 0, "%s", all());
    ck_assert(loads("lib/a-1.0.0/bin/p"));
    check_report_clear(&rep);
    /* In lib/deps, where $ORIGIN/../deps of the library (not of the
     * executable) would lead: neither ld.so nor check finds it there. */
    char *from = xasprintf("%s/lib/a-1.0.0/deps", root), *to = xasprintf("%s/lib/a-1.0.0/lib/deps", root);
    ck_assert_int_eq(rename(from, to), 0);
    free(from);
    free(to);
    ck_assert_int_eq(check_release(root, "1", NULL, &rep), -EINVAL);
    ck_assert(!loads("lib/a-1.0.0/bin/p"));
}
END_TEST

START_TEST(exec_runpath_leading_outside_the_release)
{
    /* $ORIGIN/../lib from a bin/ at the top of the root climbs out of it:
     * what lies there at run time is not the release's. */
    release("1", "1.0.0", NULL);
    module_file("1.0.0", "CHECK_BUILD", "check-m-sv1.so");
    put("lib/a-1.0.0/app.yaml", "name: a\nvsn: \"1.0.0\"\nmodules: [m]\nprocesses:\n  - name: p\n"
                                "    exec: ../../../bin/p\n    modules: [m]\n");
    ck_assert_int_eq(check_release(root, "1", NULL, &rep), -EINVAL); /* store refuses the path itself */
}
END_TEST

START_TEST(exec_linked_against_the_shared_runtime)
{
    release("1", "1.0.0", NULL);
    module_file("1.0.0", "CHECK_BUILD", "check-m-sv1.so");
    copy_in("CHECK_BUILD", "check-needs-runtime", "lib/a-1.0.0/bin/kv-host", 0755);
    put("lib/a-1.0.0/app.yaml",
        "name: a\nvsn: \"1.0.0\"\nmodules: [m]\nprocesses:\n  - name: kv\n    exec: bin/kv-host\n    modules: [m]\n");
    ck_assert_int_eq(check_release(root, "1", NULL, &rep), -EINVAL);
    ck_assert_msg(has(CHECK_ERROR, "lib/a-1.0.0/bin/kv-host: error: needs libreld-runtime.so.0, found neither in "
                                   "the release nor on this system (process kv of a)"),
                  "%s", all());
}
END_TEST

START_TEST(exec_scripts)
{
    release("1", "1.0.0", NULL);
    module_file("1.0.0", "CHECK_BUILD", "check-m-sv1.so");
    put_mode("lib/a-1.0.0/bin/p", "#!/nonexistent/interp -x\n", 25, 0755);
    ck_assert_int_eq(check_release(root, "1", NULL, &rep), -EINVAL);
    ck_assert_msg(has(CHECK_ERROR, "lib/a-1.0.0/bin/p: error: its interpreter /nonexistent/interp does not exist "
                                   "(process p of a)"),
                  "%s", all());
    check_report_clear(&rep);
    put_mode("lib/a-1.0.0/bin/p", "#!  \n", 5, 0755);
    ck_assert_int_eq(check_release(root, "1", NULL, &rep), -EINVAL);
    ck_assert_msg(has(CHECK_ERROR, "a script (#!) that names no interpreter"), "%s", all());
    check_report_clear(&rep);
    put_mode("lib/a-1.0.0/bin/p", "#!sh\n", 5, 0755);
    ck_assert_int_eq(check_release(root, "1", NULL, &rep), -EINVAL);
    ck_assert_msg(has(CHECK_ERROR, "its interpreter sh is not an absolute path"), "%s", all());
    check_report_clear(&rep);
    put("plain-file", "not a program\n");
    char *line = xasprintf("#!%s/plain-file\n", root),
         *want = xasprintf("its interpreter %s/plain-file is not executable", root);
    put_mode("lib/a-1.0.0/bin/p", line, strlen(line), 0755);
    ck_assert_int_eq(check_release(root, "1", NULL, &rep), -EINVAL);
    ck_assert_msg(has(CHECK_ERROR, want), "%s", all());
    free(line);
    free(want);
    check_report_clear(&rep);
    /* env and a program in none of the PATH's directories: a warning (the
     * PATH at run time may differ). */
    put_mode("lib/a-1.0.0/bin/p", "#!/usr/bin/env no-such-program-here\n", 36, 0755);
    ck_assert_msg(check_release(root, "1", NULL, &rep) == 0, "%s", all());
    ck_assert_msg(has(CHECK_WARNING, "its interpreter is /usr/bin/env no-such-program-here"), "%s", all());
    check_report_clear(&rep);
    put_mode("lib/a-1.0.0/bin/p", "#!/usr/bin/env sh\n", 18, 0755);
    ck_assert_msg(check_release(root, "1", NULL, &rep) == 0 && rep.n == 0, "%s", all());
}
END_TEST

START_TEST(exec_not_runnable)
{
    release("1", "1.0.0", NULL);
    module_file("1.0.0", "CHECK_BUILD", "check-m-sv1.so");
    put_mode("lib/a-1.0.0/bin/p", "#!/bin/sh\n", 10, 0644);
    ck_assert_int_eq(check_release(root, "1", NULL, &rep), -EINVAL);
    ck_assert_msg(has(CHECK_ERROR, "lib/a-1.0.0/bin/p: error: is not executable (mode 0644) (process p of a)"), "%s",
                  all());
    check_report_clear(&rep);
    put_mode("lib/a-1.0.0/bin/p", "MZ\x90\0", 4, 0755);
    ck_assert_int_eq(check_release(root, "1", NULL, &rep), -EINVAL);
    ck_assert_msg(has(CHECK_ERROR, "is neither an ELF executable nor a script (#!)"), "%s", all());
    check_report_clear(&rep);
    unsigned char h[64] = {0x7f, 'E', 'L', 'F', ELFCLASS64, ELFDATA2LSB, EV_CURRENT};
    h[16] = ET_EXEC;
    h[18] = EM_AARCH64;
    put_mode("lib/a-1.0.0/bin/p", (const char *)h, sizeof(h), 0755);
    ck_assert_int_eq(check_release(root, "1", NULL, &rep), -EINVAL);
    ck_assert_msg(has(CHECK_ERROR, "lib/a-1.0.0/bin/p: error: built for aarch64, this machine is x86-64"), "%s", all());
    check_report_clear(&rep);
    /* Truncated: the header of a real executable and nothing else. */
    char *path = built("CHECK_BUILD", "check-needs-dep");
    size_t len;
    char *buf = slurp(path, &len);
    free(path);
    put_mode("lib/a-1.0.0/bin/p", buf, 100, 0755);
    ck_assert_int_eq(check_release(root, "1", NULL, &rep), -EINVAL);
    ck_assert_msg(has(CHECK_ERROR, "a truncated ELF file: its program headers lie outside its 100 bytes"), "%s", all());
    /* A program interpreter (PT_INTERP) this machine does not have: the
     * kernel cannot start it. */
    char *interp = memmem(buf, len, "ld-linux-x86-64.so.2", 20);
    ck_assert_ptr_nonnull(interp);
    interp[19] = '9';
    check_report_clear(&rep);
    put_mode("lib/a-1.0.0/bin/p", buf, len, 0755);
    copy_in("CHECK_BUILD", "libcheckdep.so", "lib/a-1.0.0/lib/libcheckdep.so", 0644);
    ck_assert_int_eq(check_release(root, "1", NULL, &rep), -EINVAL);
    ck_assert_msg(has(CHECK_ERROR, "lib/a-1.0.0/bin/p: error: its program interpreter /lib64/ld-linux-x86-64.so.9 "
                                   "does not exist (process p of a)"),
                  "%s", all());
    ck_assert(!loads("lib/a-1.0.0/bin/p"));
    free(buf);
}
END_TEST

START_TEST(exec_libraries_of_a_sysroot)
{
    /* An image's /etc/ld.so.conf includes a directory that holds the
     * library; libc and the program interpreter come from this machine
     * through links. */
    char *sys = xasprintf("%s/sysroot", root);
    put("sysroot/etc/ld.so.conf", "# comment\ninclude /etc/ld.so.conf.d/*.conf\n");
    put("sysroot/etc/ld.so.conf.d/x.conf", "/opt/mine/lib  # where it is\ninclude ../ld.so.conf\n");
    /* Twenty files that each include all of them: read once each. */
    for (int i = 0; i < 20; i++) {
        char *f = xasprintf("sysroot/etc/ld.so.conf.d/loop%02d.conf", i);
        put(f, "include /etc/ld.so.conf.d/*.conf\n/opt/nothing\n");
        free(f);
    }
    copy_in("CHECK_BUILD", "libcheckdep.so", "sysroot/opt/mine/lib/libcheckdep.so", 0644);
    static const char *const links[] = {"lib", "lib64", "usr"};
    for (size_t i = 0; i < 3; i++) {
        char *at = xasprintf("%s/%s", sys, links[i]), *to = xasprintf("/%s", links[i]);
        ck_assert_int_eq(symlink(to, at), 0);
        free(at);
        free(to);
    }
    release("1", "1.0.0", NULL);
    module_file("1.0.0", "CHECK_BUILD", "check-m-sv1.so");
    copy_in("CHECK_BUILD", "check-needs-dep", "lib/a-1.0.0/bin/p", 0755);
    CheckOptions o = {.sysroot = sys};
    ck_assert_msg(check_release(root, "1", &o, &rep) == 0, "%s", all());
    check_report_clear(&rep);
    char *conf = xasprintf("%s/etc/ld.so.conf.d/x.conf", sys);
    ck_assert_int_eq(unlink(conf), 0);
    free(conf);
    ck_assert_int_eq(check_release(root, "1", &o, &rep), -EINVAL);
    char *want = xasprintf("needs libcheckdep.so, found neither in the release nor on the system in %s", sys);
    ck_assert_msg(has(CHECK_ERROR, want), "%s", all());
    free(want);
    free(sys);
}
END_TEST

START_TEST(exec_mutated_files_never_crash)
{
    release("1", "1.0.0", NULL);
    module_file("1.0.0", "CHECK_BUILD", "check-m-sv1.so");
    copy_in("CHECK_BUILD", "libcheckdep.so", "lib/a-1.0.0/lib/libcheckdep.so", 0644);
    char *path = built("CHECK_BUILD", "check-needs-dep");
    size_t len;
    char *orig = slurp(path, &len);
    free(path);
    char *buf = xmalloc(len + 1); /* never NULL, even for an empty file */
    unsigned seed = 777;
    const char *more = getenv("CHECK_MUTATIONS");
    int rounds = more ? atoi(more) / 10 : 300;
    for (int i = 0; i < rounds; i++) {
        memcpy(buf, orig, len);
        for (int k = 0, n = 1 + rand_r(&seed) % 8; k < n; k++)
            buf[(size_t)rand_r(&seed) % (len < 8192 ? len : 8192)] = (char)rand_r(&seed);
        put_mode("lib/a-1.0.0/bin/p", buf, len, 0755);
        int r = check_release(root, "1", NULL, &rep);
        ck_assert_msg(r == 0 || r == -EINVAL, "mutation %d: %d", i, r);
        for (size_t f = 0; f < rep.n; f++)
            ck_assert_msg(!strchr(rep.v[f].message, '\n'), "mutation %d: a message of two lines", i);
        check_report_clear(&rep);
    }
    free(buf);
    free(orig);
}
END_TEST

/* Writes an ld.so.cache in glibc's format (1.1) with the entries given:
 * flags, name, path. */
static void put_cache(const char *rel, const int32_t *flags, const char *const *names, const char *const *paths,
                      uint32_t n, uint32_t claimed)
{
    size_t strings = 48 + (size_t)n * 24, len = strings;
    for (uint32_t i = 0; i < n; i++)
        len += strlen(names[i]) + strlen(paths[i]) + 2;
    char *buf = xcalloc(1, len);
    static const char magic[20] = "glibc-ld.so.cache1.1"; /* no NUL: the header has none */
    memcpy(buf, magic, sizeof(magic));
    memcpy(buf + 20, &claimed, 4);
    size_t at = strings;
    for (uint32_t i = 0; i < n; i++) {
        char *e = buf + 48 + (size_t)i * 24;
        uint32_t key = (uint32_t)at, value = (uint32_t)(at + strlen(names[i]) + 1);
        memcpy(e, &flags[i], 4);
        memcpy(e + 4, &key, 4);
        memcpy(e + 8, &value, 4);
        strcpy(buf + key, names[i]);
        strcpy(buf + value, paths[i]);
        at = value + strlen(paths[i]) + 1;
    }
    put_mode(rel, buf, len, 0644);
    free(buf);
}

START_TEST(exec_libraries_of_the_ld_so_cache)
{
    /* The library is only where the cache says (no ld.so.conf names its
     * directory); an entry for another machine does not count. */
    char *sys = xasprintf("%s/sysroot", root);
    copy_in("CHECK_BUILD", "libcheckdep.so", "sysroot/opt/cached/libcheckdep.so", 0644);
    static const char *const links[] = {"lib", "lib64", "usr"};
    for (size_t i = 0; i < 3; i++) {
        char *at = xasprintf("%s/%s", sys, links[i]), *to = xasprintf("/%s", links[i]);
        ck_assert_int_eq(symlink(to, at), 0);
        free(at);
        free(to);
    }
    release("1", "1.0.0", NULL);
    module_file("1.0.0", "CHECK_BUILD", "check-m-sv1.so");
    copy_in("CHECK_BUILD", "check-needs-dep", "lib/a-1.0.0/bin/p", 0755);
    CheckOptions o = {.sysroot = sys};
    const int32_t flags[] = {0x0a03, 0x0303};
    const char *const names[] = {"libcheckdep.so", "libcheckdep.so"};
    const char *const wrong[] = {"/opt/cached/libcheckdep.so", "/opt/elsewhere/libcheckdep.so"};
    put_cache("sysroot/etc/ld.so.cache", flags, names, wrong, 2, 2);
    ck_assert_int_eq(check_release(root, "1", &o, &rep), -EINVAL);
    ck_assert_msg(has(CHECK_ERROR, "needs libcheckdep.so, found neither"), "%s", all());
    check_report_clear(&rep);
    const char *const right[] = {"/opt/elsewhere/libcheckdep.so", "/opt/cached/libcheckdep.so"};
    put_cache("sysroot/etc/ld.so.cache", flags, names, right, 2, 2);
    ck_assert_msg(check_release(root, "1", &o, &rep) == 0, "%s", all());
    check_report_clear(&rep);
    /* A cache that claims more entries than it holds is not read. */
    put_cache("sysroot/etc/ld.so.cache", flags, names, right, 2, 0x7fffffff);
    ck_assert_int_eq(check_release(root, "1", &o, &rep), -EINVAL);
    check_report_clear(&rep);
    put("sysroot/etc/ld.so.cache", "ld.so-1.7.0\0garbage");
    ck_assert_int_eq(check_release(root, "1", &o, &rep), -EINVAL);
    check_report_clear(&rep);
    /* This machine's own cache, mutated: never a crash, never a library
     * found where the mutated cache does not hold it. */
    size_t len;
    char *real = NULL;
    if (store_read_file("/etc/ld.so.cache", &real, &len) == 0) {
        unsigned seed = 99;
        for (int i = 0; i < 200; i++) {
            char *m = xmalloc(len + 1);
            memcpy(m, real, len);
            for (int k = 0; k < 4; k++)
                m[(size_t)rand_r(&seed) % (len < 4096 ? len : 4096)] = (char)rand_r(&seed);
            put_mode("sysroot/etc/ld.so.cache", m, len, 0644);
            free(m);
            ck_assert_int_eq(check_release(root, "1", &o, &rep), -EINVAL); /* /opt/cached is in no real cache */
            check_report_clear(&rep);
        }
        free(real);
    }
    free(sys);
}
END_TEST

/* ---- between two releases ----------------------------------------------------------- */

/* Releases 1 (a 1.0.0, module m from old) and 2 (a 2.0.0, module m from
 * new, appup up and down as given). */
static void pair(const char *old, const char *new, const char *up, const char *down)
{
    release("1", "1.0.0", NULL);
    module_file("1.0.0", "CHECK_BUILD", old);
    char *appup = xasprintf("appup:\n  up:\n    - from: \"1.0.0\"\n      instructions:\n%s"
                            "  down:\n    - to: \"1.0.0\"\n      instructions:\n%s",
                            up, down);
    release("2", "2.0.0", appup);
    free(appup);
    module_file("2.0.0", "CHECK_BUILD", new);
}

START_TEST(upgrade_covered)
{
    pair("check-m-sv1.so", "check-m-sv2.so", "        - {update: m, change: {advanced: x}}\n",
         "        - {update: m, change: {advanced: x}}\n");
    ck_assert_msg(check_upgrade(root, "1", root, "2", NULL, &rep) == 0 && rep.n == 0, "%s", all());
}
END_TEST

START_TEST(upgrade_changed_module_not_reached)
{
    /* The entries exist but name another application's restart. */
    pair("check-m-sv1.so", "check-m-sv1b.so", "        - {restart_application: b}\n", "        - {update: m}\n");
    put("releases/2/release.yaml", "release: t\nvsn: \"2\"\napplications:\n  - {name: a, vsn: \"2.0.0\"}\n"
                                   "  - {name: b, vsn: \"1.0.0\"}\n");
    put("releases/1/release.yaml", "release: t\nvsn: \"1\"\napplications:\n  - {name: a, vsn: \"1.0.0\"}\n"
                                   "  - {name: b, vsn: \"1.0.0\"}\n");
    put("lib/b-1.0.0/app.yaml", "name: b\nvsn: \"1.0.0\"\nmodules: []\nprocesses: []\n");
    ck_assert_msg(check_upgrade(root, "1", root, "2", NULL, &rep) == 0, "%s", all());
    ck_assert_msg(has(CHECK_WARNING, "lib/a-2.0.0/app.yaml:10:7: warning: module m changed from a 1.0.0 to 2.0.0 but "
                                     "no instruction of the appup entry up from 1.0.0 loads it"),
                  "%s", all());
    ck_assert_uint_eq(rep.n_warnings, 1); /* down is covered */
    check_report_clear(&rep);
    CheckOptions strict = {.strict = true};
    ck_assert_int_eq(check_upgrade(root, "1", root, "2", &strict, &rep), -EINVAL);
    ck_assert_msg(has(CHECK_ERROR, "lib/a-2.0.0/app.yaml:10:7: error: module m changed"), "%s", all());
}
END_TEST

START_TEST(upgrade_load_module_across_state_versions)
{
    pair("check-m-sv1.so", "check-m-sv2.so", "        - {load_module: m}\n", "        - {load_module: m}\n");
    ck_assert_msg(check_upgrade(root, "1", root, "2", NULL, &rep) == 0, "%s", all());
    ck_assert_msg(has(CHECK_WARNING, "lib/a-2.0.0/app.yaml:12:11: warning: load_module m: its state layout changes "
                                     "(state_version 1 in a 1.0.0, 2 in 2.0.0) but load_module runs no code_change; "
                                     "use update"),
                  "%s", all());
    ck_assert_uint_eq(rep.n_warnings, 2); /* up and down */
    check_report_clear(&rep);
    CheckOptions strict = {.strict = true};
    ck_assert_int_eq(check_upgrade(root, "1", root, "2", &strict, &rep), -EINVAL);
    ck_assert_uint_eq(rep.n_errors, 2);
    check_report_clear(&rep);
    /* The same state_version: a load_module is right. */
    module_file("2.0.0", "CHECK_BUILD", "check-m-sv1b.so");
    ck_assert_msg(check_upgrade(root, "1", root, "2", &strict, &rep) == 0 && rep.n == 0, "%s", all());
}
END_TEST

START_TEST(upgrade_missing_entry_derived_or_refused)
{
    release("1", "1.0.0", NULL);
    module_file("1.0.0", "CHECK_BUILD", "check-m-sv1.so");
    release("2", "2.0.0", NULL);
    module_file("2.0.0", "CHECK_BUILD", "check-m-sv1b.so");
    ck_assert_msg(check_upgrade(root, "1", root, "2", NULL, &rep) == 0, "%s", all());
    ck_assert_msg(has(CHECK_WARNING, "has no appup entry for up from 1.0.0; derived: update m"), "%s", all());
    check_report_clear(&rep);
    CheckOptions strict = {.strict = true};
    ck_assert_int_eq(check_upgrade(root, "1", root, "2", &strict, &rep), -EINVAL);
    ck_assert_msg(has(CHECK_ERROR, "has no appup entry for up from 1.0.0"), "%s", all());
}
END_TEST

START_TEST(upgrade_same_version_different_content)
{
    /* Two roots: each holds its own lib/a-1.0.0. */
    release("1", "1.0.0", NULL);
    module_file("1.0.0", "CHECK_BUILD", "check-m-sv1.so");
    char *other = xasprintf("%s/other", root);
    char *saved = xstrdup(root);
    strcpy(root, other);
    ck_assert_int_eq(mkdir(root, 0755), 0);
    put("releases/2/release.yaml", "release: t\nvsn: \"2\"\napplications:\n  - {name: a, vsn: \"1.0.0\"}\n");
    release("2", "1.0.0", NULL);
    module_file("1.0.0", "CHECK_BUILD", "check-m-sv1b.so");
    strcpy(root, saved);
    ck_assert_int_eq(check_upgrade(root, "1", other, "2", NULL, &rep), -EINVAL);
    ck_assert_msg(has(CHECK_ERROR, "releases/2/release.yaml:4:5: error: application a 1.0.0 differs between release "
                                   "1 and 2 but keeps its version"),
                  "%s", all());
    free(other);
    free(saved);
}
END_TEST

START_TEST(upgrade_old_release_broken)
{
    release("2", "2.0.0", NULL);
    module_file("2.0.0", "CHECK_BUILD", "check-m-sv1.so");
    ck_assert_int_eq(check_upgrade(root, "1", root, "2", NULL, &rep), -ENOENT);
    ck_assert_msg(has(CHECK_ERROR, "release 1 is not in"), "%s", all());
    ck_assert(rep.v[rep.n - 1].old);
}
END_TEST

/* ---- formatting and the unpack path -------------------------------------------------- */

START_TEST(format_and_diag)
{
    CheckFinding f = {
        .severity = CHECK_ERROR, .file = (char *)"lib/a/app.yaml", .line = 3, .col = 7, .message = (char *)"what"};
    char *s = check_finding_format(&f);
    ck_assert_str_eq(s, "lib/a/app.yaml:3:7: error: what");
    free(s);
    f.line = 0;
    f.severity = CHECK_WARNING;
    s = check_finding_format(&f);
    ck_assert_str_eq(s, "lib/a/app.yaml: warning: what");
    free(s);
    char *m = check_machine_name(4242);
    ck_assert_str_eq(m, "machine 4242");
    free(m);

    release("1", "1.0.0", NULL);
    module_file("1.0.0", "CHECK_BUILD", "bad-bad_name.so");
    Diag d = {0};
    ck_assert_int_eq(check_release_diag(root, "1", &d), -EINVAL);
    ck_assert_uint_eq(d.errors.n, 1);
    ck_assert_str_eq(d.errors.v[0], "lib/a-1.0.0/app.yaml:3:11: module m: modules/m.so's descriptor names module "
                                    "'other' (version 9), not m: the runtime refuses it");
    diag_clear(&d);
    module_file("1.0.0", "CHECK_BUILD", "check-m-sv1.so");
    ck_assert_int_eq(check_release_diag(root, "1", &d), 0);
    ck_assert_uint_eq(d.errors.n + d.warnings.n, 0);
}
END_TEST

static Suite *check_suite(void)
{
    Suite *s = suite_create("check");
    struct {
        const char *name;
        const TTest *t;
    } cases[] = {
        {"desc", desc_of_the_example_modules},
        {"desc", desc_abi1_and_abi2_layouts},
        {"desc", desc_with_packed_relative_relocations},
        {"desc", desc_bad_modules},
        {"desc", desc_not_elf_and_other_machines},
        {"desc", desc_truncated_files},
        {"desc", desc_name_outside_the_file},
        {"desc", desc_mutated_files_never_crash},
        {"release", release_good},
        {"release", release_module_name_abi_and_missing_descriptor},
        {"release", release_definitions_that_do_not_load},
        {"exec", exec_missing_library_then_shipped},
        {"exec", exec_library_needing_a_library_through_the_executables_rpath},
        {"exec", exec_runpath_leading_outside_the_release},
        {"exec", exec_linked_against_the_shared_runtime},
        {"exec", exec_scripts},
        {"exec", exec_not_runnable},
        {"exec", exec_libraries_of_a_sysroot},
        {"exec", exec_libraries_of_the_ld_so_cache},
        {"exec", exec_mutated_files_never_crash},
        {"upgrade", upgrade_covered},
        {"upgrade", upgrade_changed_module_not_reached},
        {"upgrade", upgrade_load_module_across_state_versions},
        {"upgrade", upgrade_missing_entry_derived_or_refused},
        {"upgrade", upgrade_same_version_different_content},
        {"upgrade", upgrade_old_release_broken},
        {"format", format_and_diag},
    };
    TCase *tc = NULL;
    const char *last = NULL;
    for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
        if (!last || strcmp(last, cases[i].name) != 0) {
            tc = tcase_create(cases[i].name);
            tcase_add_checked_fixture(tc, setup, teardown);
            tcase_set_timeout(tc, 60);
            suite_add_tcase(s, tc);
            last = cases[i].name;
        }
        tcase_add_test(tc, cases[i].t);
    }
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(check_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
