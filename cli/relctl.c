/* relctl: the command line of reld (SPEC.md "Command line").
 *
 * Exit status: 0 success; 1 the request was refused or failed (bad
 * definitions, no such release, ...); 2 usage error. Errors are printed on
 * stderr, one line each, prefixed "relctl: ". */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "relup.h"
#include "store.h"

#define EXIT_REFUSED 1
#define EXIT_USAGE   2

static void print_diag(const Diag *d)
{
    for (size_t i = 0; i < d->warnings.n; i++)
        fprintf(stderr, "relctl: warning: %s\n", d->warnings.v[i]);
    for (size_t i = 0; i < d->errors.n; i++)
        fprintf(stderr, "relctl: %s\n", d->errors.v[i]);
}

static void usage(FILE *f)
{
    fputs("Usage: relctl [--socket PATH] COMMAND [ARGS]\n"
          "\n"
          "Commands:\n"
          "  relup [--root DIR] [--json] [--write] [--no-derive] FROM TO\n"
          "        print the relup that takes release FROM to TO (and back); changes\n"
          "        nothing unless --write stores it as releases/TO/relup.yaml\n"
          "\n"
          "Every command takes --json and --help. Exit status: 0 success, 1 refused or\n"
          "failed, 2 usage error.\n",
          f);
}

static void print_script(const char *title, const RelupScript *s)
{
    printf("%s (%zu instructions):\n", title, s->n);
    for (size_t i = 0; i < s->n; i++) {
        char *line = relup_instr_format(&s->v[i]);
        printf("  %3zu  %s\n", i + 1, line);
        free(line);
    }
}

static int cmd_relup(int argc, char **argv)
{
    static const struct option opts[] = {
        {"root", required_argument, NULL, 'r'}, {"json", no_argument, NULL, 'j'}, {"write", no_argument, NULL, 'w'},
        {"no-derive", no_argument, NULL, 'n'},  {"help", no_argument, NULL, 'h'}, {0},
    };
    const char *root = getenv("RELD_ROOT") ? getenv("RELD_ROOT") : "/var/lib/reld";
    bool json = false, write = false, derive = true;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'r':
            root = optarg;
            break;
        case 'j':
            json = true;
            break;
        case 'w':
            write = true;
            break;
        case 'n':
            derive = false;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            return EXIT_USAGE;
        }
    }
    if (argc - optind != 2) {
        fprintf(stderr, "relctl: relup takes two release versions, FROM and TO\n");
        return EXIT_USAGE;
    }
    const char *from = argv[optind], *to = argv[optind + 1];
    Diag d = {0};
    Relup *r = NULL;
    bool stored = false;
    int rc = store_relup(root, from, to, derive, &r, &stored, &d);
    if (rc == 0 && write && !stored)
        rc = store_write_relup(root, r, &d);
    print_diag(&d);
    diag_clear(&d);
    if (rc < 0)
        return EXIT_REFUSED;
    if (json) {
        json_t *j = relup_to_json(r);
        json_dumpf(j, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        putchar('\n');
        json_decref(j);
    } else {
        if (stored)
            printf("relup %s -> %s (stored in releases/%s/relup.yaml)\n", from, to, to);
        else
            printf("relup %s -> %s\n", from, to);
        print_script("up", &r->up);
        print_script("down", &r->down);
        if (write && !stored)
            printf("written to releases/%s/relup.yaml\n", to);
    }
    relup_free(r);
    return 0;
}

int main(int argc, char **argv)
{
    int i = 1;
    /* Global options come before the command. */
    while (i < argc && argv[i][0] == '-') {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        }
        if (strcmp(argv[i], "--socket") == 0 && i + 1 < argc) {
            setenv("RELD_SOCKET", argv[i + 1], 1);
            i += 2;
            continue;
        }
        fprintf(stderr, "relctl: unknown option '%s'\n", argv[i]);
        return EXIT_USAGE;
    }
    if (i >= argc) {
        usage(stderr);
        return EXIT_USAGE;
    }
    if (strcmp(argv[i], "relup") == 0)
        return cmd_relup(argc - i, argv + i);
    fprintf(stderr, "relctl: unknown command '%s' (see relctl --help)\n", argv[i]);
    return EXIT_USAGE;
}
