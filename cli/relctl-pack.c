/* relctl-pack: `relctl pack DIR -o FILE` and `relctl check`, which relctl
 * runs (cli/relctl.c says why it is a program of its own: both read or
 * write tarballs). pack validates the release laid out in DIR exactly as
 * reld will, checks it (check.h: module descriptors, executables and the
 * libraries they need), then writes its tarball. `relctl-pack --check
 * ARGS` is `relctl check ARGS`.
 * Exit status and error output as relctl's (cli.h). */
#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check/check.h"
#include "sign.h"
#include <sodium.h>
#include "store.h"
#include "cli.h"
#include "util.h"

/* Adds path (relative name rel) and, for a directory, everything below it,
 * in a stable order. Symlinks are stored as symlinks. */
static int pack_add(struct archive *a, const char *path, const char *rel)
{
    struct stat st;
    if (lstat(path, &st) < 0) {
        fprintf(stderr, "relctl: %s: %s\n", path, strerror(errno));
        return -errno;
    }
    struct archive_entry *e = archive_entry_new();
    archive_entry_copy_stat(e, &st);
    archive_entry_set_pathname(e, rel);
    archive_entry_set_uid(e, 0);
    archive_entry_set_gid(e, 0);
    archive_entry_set_perm(e, st.st_mode & 0755); /* no setuid/setgid/sticky: reld refuses them */
    if (S_ISLNK(st.st_mode)) {
        char target[4096];
        ssize_t n = readlink(path, target, sizeof(target) - 1);
        target[n < 0 ? 0 : n] = 0;
        archive_entry_set_symlink(e, target);
    }
    int r = archive_write_header(a, e) == ARCHIVE_OK ? 0 : -EIO;
    if (r == 0 && S_ISREG(st.st_mode)) {
        FILE *f = fopen(path, "rbe");
        char buf[65536];
        size_t n;
        while (f && (n = fread(buf, 1, sizeof(buf), f)) > 0)
            if (archive_write_data(a, buf, n) < 0)
                r = -EIO;
        if (!f)
            r = -errno;
        else
            fclose(f);
    }
    archive_entry_free(e);
    if (r < 0) {
        fprintf(stderr, "relctl: %s: %s\n", path, r == -EIO ? archive_error_string(a) : strerror(-r));
        return r;
    }
    if (!S_ISDIR(st.st_mode))
        return 0;
    struct dirent **names;
    int n = scandir(path, &names, NULL, alphasort);
    for (int i = 0; i < n; i++) {
        if (r == 0 && strcmp(names[i]->d_name, ".") != 0 && strcmp(names[i]->d_name, "..") != 0) {
            char *p = xasprintf("%s/%s", path, names[i]->d_name), *q = xasprintf("%s/%s", rel, names[i]->d_name);
            r = pack_add(a, p, q);
            free(p);
            free(q);
        }
        free(names[i]);
    }
    free(n >= 0 ? names : NULL);
    return r;
}

/* The one release a directory laid out as a tarball holds
 * (DIR/releases/<vsn>). */
static int single_release(const char *dir, char **ret_vsn)
{
    char *rels = store_path_releases(dir);
    struct dirent **names;
    int n = scandir(rels, &names, NULL, alphasort), found = 0;
    char *vsn = NULL;
    for (int i = 0; i < n; i++) {
        if (names[i]->d_name[0] != '.') {
            found++;
            free(vsn);
            vsn = xstrdup(names[i]->d_name);
        }
        free(names[i]);
    }
    free(n >= 0 ? names : NULL);
    free(rels);
    if (found != 1) {
        fprintf(stderr, "relctl: %s/releases must hold exactly one release (it holds %d)\n", dir, found);
        free(vsn);
        return -EINVAL;
    }
    *ret_vsn = vsn;
    return 0;
}

/* Findings one line each on stderr, as compilers print them, with file
 * names under prefix (a directory given; NULL for a tarball's). */
static void print_findings(const CheckReport *rep, const char *prefix)
{
    for (size_t i = 0; i < rep->n; i++) {
        char *line = check_finding_format(&rep->v[i]);
        if (prefix && rep->v[i].file[0] != '/')
            fprintf(stderr, "%s/%s\n", prefix, line);
        else
            fprintf(stderr, "%s\n", line);
        free(line);
    }
}

/* ---- --sign ---------------------------------------------------------------------- */

/* Reads a minisign secret key: unencrypted (minisign -G -W), or encrypted
 * with the password on the first line of pw_path. */
static int sign_key_load(const char *path, const char *pw_path, SignSecretKey *ret)
{
    char *buf = NULL, *pw = NULL;
    size_t len = 0, pw_len = 0;
    int r = pw_path ? store_read_file(pw_path, &pw, &pw_len) : 0;
    if (r < 0) {
        fprintf(stderr, "relctl: %s: %s\n", pw_path, strerror(-r));
        return r;
    }
    if (pw)
        pw[strcspn(pw, "\r\n")] = '\0';
    r = store_read_file(path, &buf, &len);
    if (r < 0) {
        fprintf(stderr, "relctl: %s: %s\n", path, strerror(-r));
        if (pw)
            sodium_memzero(pw, pw_len);
        free(pw);
        return r;
    }
    Diag d = {0};
    r = sign_secret_key_parse(buf, len, path, pw, ret, &d);
    if (pw)
        sodium_memzero(pw, pw_len);
    free(pw);
    sodium_memzero(buf, len);
    free(buf);
    print_diag(&d);
    diag_clear(&d);
    return r;
}

/* Writes the .minisig of the file tmp (the tarball before it is renamed into
 * place) to sig_tmp, its trusted comment binding it to this release. */
static int sign_tarball(const SignSecretKey *sk, const char *tmp, const char *sig_tmp, const char *name,
                        const char *vsn)
{
    int fd = open(tmp, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "relctl: %s: %s\n", tmp, strerror(errno));
        return -errno;
    }
    SignHasher h;
    sign_hasher_init(&h);
    char buf[65536];
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0)
        sign_hasher_update(&h, buf, (size_t)n);
    int e = n < 0 ? errno : 0;
    close(fd);
    if (e) {
        fprintf(stderr, "relctl: %s: %s\n", tmp, strerror(e));
        return -e;
    }
    uint8_t hash[SIGN_HASH_SIZE];
    sign_hasher_final(&h, hash);
    char *comment = sign_comment_format(name, vsn), *text = NULL;
    Diag d = {0};
    int r = comment ? sign_create(sk, hash, comment, &text, &d) : -EINVAL;
    print_diag(&d);
    diag_clear(&d);
    free(comment);
    if (r < 0)
        return r;
    FILE *f = fopen(sig_tmp, "we");
    if (!f || fputs(text, f) < 0 || fflush(f) != 0 || fsync(fileno(f)) != 0) {
        e = errno;
        fprintf(stderr, "relctl: %s: %s\n", sig_tmp, strerror(e));
        r = -e;
    }
    if (f && fclose(f) != 0 && r == 0) {
        r = -errno;
        fprintf(stderr, "relctl: %s: %s\n", sig_tmp, strerror(-r));
    }
    free(text);
    return r;
}

/* ---- check ------------------------------------------------------------------------ */

/* One side of `relctl check`: a root and the release version in it. */
typedef struct Side {
    char *root, *vsn;
    char *tmp;          /* a temporary root to remove at the end, or NULL */
    const char *prefix; /* for file names in messages: the directory given, or NULL */
} Side;

/* Unpacks the tarball path into a new temporary root as reld would (every
 * hostile entry refused, the release validated), with reld's default
 * limits. */
static int side_from_tarball(const char *path, Side *s)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "relctl: %s: %s\n", path, strerror(errno));
        return -errno;
    }
    const char *t = getenv("TMPDIR");
    char *tmp = xasprintf("%s/relctl-check-XXXXXX", t && *t ? t : "/tmp");
    if (!mkdtemp(tmp)) {
        int r = -errno;
        fprintf(stderr, "relctl: cannot make a temporary directory %s: %s\n", tmp, strerror(-r));
        free(tmp);
        close(fd);
        return r;
    }
    /* reld's default limits (daemon/config.h): what check accepts, reld does. */
    StoreLimits lim = {.bytes = 1ULL << 30, .files = 100000, .depth = 32};
    Diag d = {0};
    char *vsn = NULL, *name = NULL;
    int r = store_unpack(tmp, fd, &lim, &vsn, &name, &d);
    close(fd);
    for (size_t i = 0; i < d.warnings.n; i++)
        fprintf(stderr, "%s: warning: %s\n", path, d.warnings.v[i]);
    for (size_t i = 0; i < d.errors.n; i++)
        fprintf(stderr, "%s: error: %s\n", path, d.errors.v[i]);
    if (r < 0 && !d.errors.n)
        fprintf(stderr, "%s: error: cannot unpack: %s\n", path, strerror(-r));
    diag_clear(&d);
    free(name);
    if (r < 0) {
        store_remove_tree(tmp);
        free(tmp);
        return r;
    }
    *s = (Side){.root = xstrdup(tmp), .vsn = vsn, .tmp = tmp};
    return 0;
}

/* arg as one side: with --root, a version in it; else a directory laid out
 * as a tarball (one release), or a tarball. */
static int side_open(const char *root, const char *arg, Side *s)
{
    if (root) {
        *s = (Side){.root = xstrdup(root), .vsn = xstrdup(arg), .prefix = root};
        return 0;
    }
    struct stat st;
    if (stat(arg, &st) < 0) {
        fprintf(stderr, "relctl: %s: %s\n", arg, strerror(errno));
        return -errno;
    }
    if (S_ISDIR(st.st_mode)) {
        char *vsn = NULL;
        int r = single_release(arg, &vsn);
        if (r < 0)
            return r;
        *s = (Side){.root = xstrdup(arg), .vsn = vsn, .prefix = arg};
        return 0;
    }
    return side_from_tarball(arg, s);
}

static void side_close(Side *s)
{
    if (s->tmp)
        store_remove_tree(s->tmp);
    free(s->tmp);
    free(s->root);
    free(s->vsn);
    *s = (Side){0};
}

static json_t *report_json(const CheckReport *rep, const Side *old, const Side *new)
{
    json_t *findings = json_array(), *modules = json_array();
    for (size_t i = 0; i < rep->n; i++) {
        const CheckFinding *f = &rep->v[i];
        json_t *j = json_pack("{s:s, s:s, s:s?, s:s}", "severity", check_severity_name(f->severity), "file", f->file,
                              "release", f->old ? (old ? old->vsn : NULL) : new->vsn, "message", f->message);
        if (j && f->line > 0) {
            json_object_set_new(j, "line", json_integer(f->line));
            json_object_set_new(j, "col", json_integer(f->col));
        }
        json_array_append_new(findings, j);
    }
    for (size_t i = 0; i < rep->n_modules; i++) {
        const CheckModuleInfo *m = &rep->modules[i];
        json_t *j = json_pack("{s:s, s:s, s:s, s:s, s:s}", "app", m->app, "vsn", m->app_vsn, "module", m->module,
                              "file", m->file, "sha256", m->sha256);
        if (j && m->read) {
            json_t *d = json_pack("{s:i, s:s?, s:s?}", "abi", (json_int_t)m->desc.abi, "name", m->desc.name, "version",
                                  m->desc.version);
            if (d && m->desc.abi >= 2)
                json_object_set_new(d, "state_version", json_integer(m->desc.state_version));
            json_object_set_new(j, "descriptor", d);
        }
        json_array_append_new(modules, j);
    }
    return json_pack("{s:b, s:s?, s:s, s:i, s:i, s:i, s:o, s:o}", "ok", rep->n_errors == 0, "from",
                     old ? old->vsn : NULL, "release", new->vsn, "errors", (json_int_t)rep->n_errors, "warnings",
                     (json_int_t)rep->n_warnings, "executables", (json_int_t)rep->n_executables, "findings", findings,
                     "modules", modules);
}

/* relctl check [--strict] [--json] [--root DIR] [--sysroot DIR] [OLD] NEW */
static int check_main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"strict", no_argument, NULL, 's'},     {"json", no_argument, NULL, 'j'},
        {"root", required_argument, NULL, 'r'}, {"sysroot", required_argument, NULL, 'S'},
        {"help", no_argument, NULL, 'h'},       {0}};
    static const char usage_line[] = "relctl check [--strict] [--json] [--root DIR] [--sysroot DIR] [OLD] NEW";
    CheckOptions o = {0};
    bool json = false;
    const char *root = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 's':
            o.strict = true;
            break;
        case 'j':
            json = true;
            break;
        case 'r':
            root = optarg;
            break;
        case 'S':
            o.sysroot = optarg;
            break;
        case 'h':
            printf("Usage: %s\n"
                   "OLD and NEW are release tarballs or directories laid out as one (releases/<vsn>, lib/),\n"
                   "or with --root versions in that root. Exit status: 0 no error (warnings printed),\n"
                   "1 an error found or a release that cannot be read, 2 usage error.\n",
                   usage_line);
            return 0;
        default:
            return EXIT_USAGE;
        }
    }
    int n = argc - optind;
    if (n < 1 || n > 2) {
        fprintf(stderr, "relctl: usage: %s\n", usage_line);
        return EXIT_USAGE;
    }
    if (root)
        for (int i = optind; i < argc; i++)
            if (!version_is_valid(argv[i])) {
                fprintf(stderr, "relctl: check: '%s' is not a release version\n", argv[i]);
                return EXIT_USAGE;
            }
    Side old = {0}, new = {0};
    int r = side_open(root, argv[argc - 1], &new);
    if (r == 0 && n == 2)
        r = side_open(root, argv[optind], &old);
    CheckReport rep = {0};
    bool opened = r == 0; /* else standard error said why */
    if (opened)
        r = n == 2 ? check_upgrade(old.root, old.vsn, new.root, new.vsn, &o, &rep)
                   : check_release(new.root, new.vsn, &o, &rep);
    int status = r == 0 ? 0 : EXIT_REFUSED;
    if (json && !opened) {
        /* Standard output is JSON whatever happens. */
        puts("{\"ok\": false, \"error\": \"a release could not be read (standard error says why)\"}");
    } else if (json) {
        json_t *j = report_json(&rep, n == 2 ? &old : NULL, &new);
        if (!j || json_dumpf(j, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER) < 0) {
            fprintf(stderr, "relctl: cannot print the report as JSON\n");
            status = EXIT_REFUSED;
        } else {
            putchar('\n');
        }
        json_decref(j);
    } else if (opened) {
        for (size_t i = 0; i < rep.n; i++) {
            /* File names as the user gave the release: under its directory. */
            const Side *s = rep.v[i].old ? &old : &new;
            char *line = check_finding_format(&rep.v[i]);
            if (s->prefix && rep.v[i].file[0] != '/')
                fprintf(stderr, "%s/%s\n", s->prefix, line);
            else
                fprintf(stderr, "%s\n", line);
            free(line);
        }
        /* What each module says it is, as read from its file. */
        for (size_t i = 0; i < rep.n_modules; i++) {
            const CheckModuleInfo *m = &rep.modules[i];
            if (!m->read || !m->desc.name || !m->desc.version)
                continue;
            printf("module %s %s (ABI %u", m->desc.name, m->desc.version, m->desc.abi);
            if (m->desc.abi >= 2)
                printf(", state_version %u", m->desc.state_version);
            printf(") %s%s%s\n", new.prefix ? new.prefix : "", new.prefix ? "/" : "", m->file);
        }
        if (n == 2 && old.root)
            printf("check %s -> %s: %zu modules, %zu executables: %zu errors, %zu warnings\n", old.vsn, new.vsn,
                   rep.n_modules, rep.n_executables, rep.n_errors, rep.n_warnings);
        else
            printf("check %s: %zu modules, %zu executables: %zu errors, %zu warnings\n", new.vsn, rep.n_modules,
                   rep.n_executables, rep.n_errors, rep.n_warnings);
    }
    check_report_clear(&rep);
    side_close(&old);
    side_close(&new);
    return status;
}

/* pack DIR -o FILE: validates the release in DIR (laid out as SPEC.md's
 * tarball) exactly as reld will, then writes the tarball (gzip, or by the
 * suffix: .tar, .tar.xz, .tar.zst). */
int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--check") == 0)
        return check_main(argc - 1, argv + 1);
    static const struct option opts[] = {{"output", required_argument, NULL, 'o'},
                                         {"json", no_argument, NULL, 'j'},
                                         {"no-check", no_argument, NULL, 'n'},
                                         {"sign", required_argument, NULL, 's'},
                                         {"password-file", required_argument, NULL, 'p'},
                                         {"help", no_argument, NULL, 'h'},
                                         {0}};
    const char *out = NULL, *key_path = NULL, *pw_path = NULL;
    bool json = false, checks = true;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "o:", opts, NULL)) != -1) {
        if (c == 'o')
            out = optarg;
        else if (c == 'j')
            json = true;
        else if (c == 'n')
            checks = false;
        else if (c == 's')
            key_path = optarg;
        else if (c == 'p')
            pw_path = optarg;
        else if (c == 'h') {
            puts("Usage: relctl pack [--json] [--no-check] [--sign KEY [--password-file F]] DIR -o FILE");
            return 0;
        } else
            return EXIT_USAGE;
    }
    if (argc - optind != 1 || !out) {
        fprintf(stderr,
                "relctl: usage: relctl pack [--json] [--no-check] [--sign KEY [--password-file F]] DIR -o FILE\n");
        return EXIT_USAGE;
    }
    const char *dir = argv[optind];
    char *vsn = NULL;
    /* The key first: a key that cannot sign stops the pack before it
     * writes anything. */
    SignSecretKey sk;
    if (pw_path && !key_path) {
        fprintf(stderr, "relctl: pack: --password-file goes with --sign\n");
        return EXIT_USAGE;
    }
    if (key_path && sign_key_load(key_path, pw_path, &sk) < 0)
        return EXIT_REFUSED;
    if (single_release(dir, &vsn) < 0)
        return EXIT_REFUSED;
    Diag d = {0};
    ReleaseDef *rel = NULL;
    if (store_load_release(dir, vsn, &rel, &d) < 0) {
        print_diag(&d);
        diag_clear(&d);
        free(vsn);
        return EXIT_REFUSED;
    }
    print_diag(&d);
    diag_clear(&d);
    /* What reld cannot tell from the definitions: descriptors, executables
     * and their libraries. A release that fails here would fail at its
     * first start, so it is not packed. --no-check is for a release built
     * for another machine, which this one cannot judge: reld checks it
     * where it unpacks it. */
    CheckReport rep = {0};
    int cr = checks ? check_release(dir, vsn, NULL, &rep) : 0;
    print_findings(&rep, dir);
    check_report_clear(&rep);
    if (!checks)
        fprintf(stderr,
                "relctl: warning: release %s packed without its checks (--no-check); run relctl check on "
                "the machine it is for\n",
                vsn);
    if (cr < 0) {
        fprintf(stderr, "relctl: release %s in %s does not pass the checks; nothing written\n", vsn, dir);
        release_def_free(rel);
        free(vsn);
        return EXIT_REFUSED;
    }
    struct archive *a = archive_write_new();
    archive_write_set_format_pax_restricted(a);
    size_t len = strlen(out);
    if (len > 7 && strcmp(out + len - 7, ".tar.xz") == 0)
        archive_write_add_filter_xz(a);
    else if (len > 8 && strcmp(out + len - 8, ".tar.zst") == 0)
        archive_write_add_filter_zstd(a);
    else if (!(len > 4 && strcmp(out + len - 4, ".tar") == 0))
        archive_write_add_filter_gzip(a);
    char *tmp = xasprintf("%s.tmp", out);
    int r = archive_write_open_filename(a, tmp) == ARCHIVE_OK ? 0 : -EIO;
    if (r < 0)
        fprintf(stderr, "relctl: %s: %s\n", out, archive_error_string(a));
    char *p = store_path_release_dir(dir, vsn), *q = store_path_release_dir(NULL, vsn);
    if (r == 0)
        r = pack_add(a, p, q);
    free(p);
    free(q);
    for (size_t i = 0; r == 0 && i < rel->n_apps; i++) {
        p = store_path_app_dir(dir, rel->apps[i].name, rel->apps[i].vsn);
        q = store_path_app_dir(NULL, rel->apps[i].name, rel->apps[i].vsn);
        r = pack_add(a, p, q);
        free(p);
        free(q);
    }
    if (archive_write_close(a) != ARCHIVE_OK && r == 0) {
        fprintf(stderr, "relctl: %s: %s\n", out, archive_error_string(a));
        r = -EIO;
    }
    archive_write_free(a);
    char *sig = xasprintf("%s.minisig", out), *sig_tmp = xasprintf("%s.minisig.tmp", out);
    if (r == 0 && key_path)
        r = sign_tarball(&sk, tmp, sig_tmp, rel->name, vsn);
    if (r == 0 && rename(tmp, out) < 0) {
        fprintf(stderr, "relctl: %s: %s\n", out, strerror(errno));
        r = -errno;
    }
    if (r == 0 && key_path && rename(sig_tmp, sig) < 0) {
        fprintf(stderr, "relctl: %s: %s\n", sig, strerror(errno));
        r = -errno;
        (void)unlink(out); /* a tarball without the signature asked for is not the result */
    }
    if (key_path)
        sign_secret_key_wipe(&sk);
    if (r < 0) {
        (void)unlink(tmp);
        (void)unlink(sig_tmp);
    } else if (json) {
        printf("{\"release\": \"%s\", \"name\": \"%s\", \"file\": \"%s\"", vsn, rel->name, out);
        if (key_path)
            printf(", \"signature\": \"%s\"", sig);
        printf("}\n");
    } else {
        printf("packed release %s %s into %s\n", rel->name, vsn, out);
        if (key_path)
            printf("signed it: %s\n", sig);
    }
    free(sig);
    free(sig_tmp);
    free(tmp);
    free(vsn);
    release_def_free(rel);
    return r < 0 ? EXIT_REFUSED : 0;
}
