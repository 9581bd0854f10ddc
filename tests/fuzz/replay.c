/* A target's inputs replayed without libFuzzer: each argument is a file,
 * or a directory whose files are read (not recursively). A build without
 * -Dfuzz=true links this to every target so that the seed corpus runs as a
 * test (suite fuzz), under the ASan build's sanitizers too. Exits 0 when
 * every input went through; a bug aborts. */
#include <dirent.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"

/* Targets that need no set-up have no LLVMFuzzerInitialize. */
__attribute__((weak)) int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    return 0;
}

static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    struct stat st;
    if (!f || fstat(fileno(f), &st) < 0) {
        perror(path);
        if (f)
            fclose(f);
        return -1;
    }
    /* Exactly the file's bytes, so that ASan sees a read past the end. */
    size_t len = (size_t)st.st_size;
    unsigned char *buf = malloc(len ? len : 1);
    bool ok = buf && fread(buf, 1, len, f) == len;
    fclose(f);
    if (ok)
        LLVMFuzzerTestOneInput(buf, len);
    else
        fprintf(stderr, "%s: cannot read\n", path);
    free(buf);
    return ok ? 0 : -1;
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(int argc, char **argv)
{
    LLVMFuzzerInitialize(&argc, &argv);
    int failed = 0, runs = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) < 0) {
            perror(argv[i]);
            failed++;
            continue;
        }
        if (!S_ISDIR(st.st_mode)) {
            failed += run_file(argv[i]) < 0;
            runs++;
            continue;
        }
        DIR *d = opendir(argv[i]);
        char **names = NULL;
        size_t n = 0;
        for (struct dirent *e; d && (e = readdir(d));) {
            if (e->d_name[0] == '.')
                continue;
            char **more = realloc(names, (n + 1) * sizeof(*names));
            if (!more)
                break;
            names = more;
            names[n++] = strdup(e->d_name);
        }
        if (d)
            closedir(d);
        if (names)
            qsort(names, n, sizeof(*names), name_cmp);
        for (size_t k = 0; k < n; k++) {
            char *path = names[k] ? malloc(strlen(argv[i]) + strlen(names[k]) + 2) : NULL;
            if (path) {
                sprintf(path, "%s/%s", argv[i], names[k]);
                failed += run_file(path) < 0;
                runs++;
            } else {
                failed++;
            }
            free(path);
            free(names[k]);
        }
        free(names);
    }
    printf("%d inputs, %d unreadable\n", runs, failed);
    return failed ? 1 : 0;
}
