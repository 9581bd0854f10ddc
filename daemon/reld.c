/* reld: the release handler daemon (SPEC.md "Command line").
 *
 *   reld [--root DIR] [--socket PATH] [--config FILE]
 *   reld --recover [--root DIR] [--config FILE]
 *   reld --version
 *
 * Runs in the foreground (systemd starts it so, Type=notify). Exit status:
 * 0 after SIGTERM/SIGINT, 1 on a start-up failure, 2 on a usage error.
 * --recover rebuilds a missing or damaged database from the release
 * directories (manager_recover), then exits: 0 when the database is sound
 * or was rebuilt, 1 when it could not be.
 *
 * --reexec-state=FD is reld's own: a reld re-executing itself passes its
 * state so (reexec.h); nobody else gives it. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "config.h"
#include "daemon.h"
#include "manager.h"
#include "reexec.h"
#include "util.h"

/* An absolute path for dir (made if missing): processes start in their
 * own directories, where a relative root means nothing. */
static char *absolute_dir(const char *dir)
{
    char buf[PATH_MAX];
    if (mkdir(dir, 0755) < 0 && errno != EEXIST)
        return NULL;
    return realpath(dir, buf) ? xstrdup(buf) : NULL;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"root", required_argument, NULL, 'r'},   {"socket", required_argument, NULL, 's'},
        {"config", required_argument, NULL, 'c'}, {"recover", no_argument, NULL, 'R'},
        {"help", no_argument, NULL, 'h'},         {"reexec-state", required_argument, NULL, 'X'},
        {"version", no_argument, NULL, 'V'},      {0},
    };
    const char *root = NULL, *sock = NULL, *config = NULL, *reexec_state = NULL;
    bool recover = false;
    int c;
    reexec_init(argc, argv);
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'r':
            root = optarg;
            break;
        case 's':
            sock = optarg;
            break;
        case 'c':
            config = optarg;
            break;
        case 'R':
            recover = true;
            break;
        case 'X':
            reexec_state = optarg;
            break;
        case 'h':
            puts("Usage: reld [--root DIR] [--socket PATH] [--config FILE]\n"
                 "       reld --recover [--root DIR] [--config FILE]\n"
                 "       reld --version");
            return 0;
        case 'V':
            puts("reld " RELD_VERSION);
            return 0;
        default:
            return 2;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "reld: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    /* First: descriptors the state does not name must not reach anything. */
    json_t *state = reexec_state ? reexec_load(reexec_state) : NULL;
    DaemonConfig cfg;
    config_init(&cfg);
    char *err = NULL;
    if (config && config_load(&cfg, config, &err) < 0) {
        fprintf(stderr, "reld: %s\n", err);
        free(err);
        config_clear(&cfg);
        return 1;
    }
    /* The command line wins over the config file. */
    if (root)
        free(cfg.root), cfg.root = xstrdup(root);
    if (sock)
        free(cfg.socket_path), cfg.socket_path = xstrdup(sock);
    char *abs = absolute_dir(cfg.root);
    if (!abs) {
        fprintf(stderr, "reld: %s: %s\n", cfg.root, strerror(errno));
        config_clear(&cfg);
        return 1;
    }
    free(cfg.root);
    cfg.root = abs;
    if (recover) {
        int r = manager_recover(&cfg);
        config_clear(&cfg);
        return r < 0 ? 1 : 0;
    }
    char *config_abs = config ? realpath(config, NULL) : NULL; /* SIGHUP re-reads it from wherever reld is */
    Daemon *d = NULL;
    int r = daemon_new_from(&cfg, config_abs ? config_abs : config, state, &d);
    json_decref(state);
    config_clear(&cfg);
    free(config_abs);
    if (r < 0)
        return 1;
    r = daemon_run(d);
    daemon_free(d);
    return r;
}
