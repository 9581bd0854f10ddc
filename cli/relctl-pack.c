/* relctl-pack: `relctl pack DIR -o FILE`, which relctl runs (cli/relctl.c
 * says why it is a program of its own). Validates the release laid out in
 * DIR exactly as reld will, then writes its tarball.
 * Exit status and error output as relctl's (cli.h). */
#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

/* pack DIR -o FILE: validates the release in DIR (laid out as SPEC.md's
 * tarball) exactly as reld will, then writes the tarball (gzip, or by the
 * suffix: .tar, .tar.xz, .tar.zst). */
int main(int argc, char **argv)
{
    static const struct option opts[] = {{"output", required_argument, NULL, 'o'},
                                         {"json", no_argument, NULL, 'j'},
                                         {"help", no_argument, NULL, 'h'},
                                         {0}};
    const char *out = NULL;
    bool json = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "o:", opts, NULL)) != -1) {
        if (c == 'o')
            out = optarg;
        else if (c == 'j')
            json = true;
        else if (c == 'h') {
            puts("Usage: relctl pack [--json] DIR -o FILE");
            return 0;
        } else
            return EXIT_USAGE;
    }
    if (argc - optind != 1 || !out) {
        fprintf(stderr, "relctl: usage: relctl pack DIR -o FILE\n");
        return EXIT_USAGE;
    }
    const char *dir = argv[optind];
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
        return EXIT_REFUSED;
    }
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
    if (r == 0 && rename(tmp, out) < 0) {
        fprintf(stderr, "relctl: %s: %s\n", out, strerror(errno));
        r = -errno;
    }
    if (r < 0)
        unlink(tmp);
    else if (json)
        printf("{\"release\": \"%s\", \"name\": \"%s\", \"file\": \"%s\"}\n", vsn, rel->name, out);
    else
        printf("packed release %s %s into %s\n", rel->name, vsn, out);
    free(tmp);
    free(vsn);
    release_def_free(rel);
    return r < 0 ? EXIT_REFUSED : 0;
}
