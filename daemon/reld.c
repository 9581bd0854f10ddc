/* reld: the release handler daemon (SPEC.md "Command line").
 *
 *   reld [--root DIR] [--socket PATH] [--config FILE]
 *
 * Runs in the foreground (systemd starts it so, Type=notify). Exit status:
 * 0 after SIGTERM/SIGINT, 1 on a start-up failure, 2 on a usage error. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon.h"
#include "util.h"
#include "yamlutil.h"

int daemon_config_load(DaemonConfig *c, const char *path, char **err)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = fopen(path, "re");
    if (!f) {
        *err = xasprintf("%s: %s", path, strerror(errno));
        return -errno;
    }
    buf = xmalloc(65537);
    len = fread(buf, 1, 65536, f);
    fclose(f);
    static const char *const keys[] = {
        "root", "socket", "writer_group", "reader_group", "readers", "max_unpacked_bytes", NULL};
    Diag d = {0};
    YamlCtx y;
    yaml_node_t *root = yaml_ctx_load(&y, path, buf, len, &d);
    if (root && root->type != YAML_MAPPING_NODE)
        yaml_error(&y, root, "the config must be a mapping");
    else if (root) {
        yaml_map_check_keys(&y, root, keys, "config");
        char *s = NULL;
        if (yaml_get_string(&y, root, "root", false, &s) && s)
            free(c->root), c->root = s, s = NULL;
        if (yaml_get_string(&y, root, "socket", false, &s) && s)
            free(c->socket_path), c->socket_path = s, s = NULL;
        if (yaml_get_string(&y, root, "writer_group", false, &s) && s)
            free(c->writer_group), c->writer_group = s, s = NULL;
        if (yaml_get_string(&y, root, "reader_group", false, &s) && s)
            free(c->reader_group), c->reader_group = s, s = NULL;
        if (yaml_get_string(&y, root, "readers", false, &s) && s) {
            if (strcmp(s, "all") == 0)
                c->readers_all = true;
            else if (strcmp(s, "writers") == 0)
                c->readers_all = false;
            else
                yaml_error(&y, yaml_map_get(&y, root, "readers"), "readers must be all or writers");
            free(s);
        }
        long max = 0;
        if (yaml_get_long(&y, root, "max_unpacked_bytes", 1, 1L << 50, &max) && max)
            c->max_unpacked = (uint64_t)max;
    }
    yaml_ctx_done(&y);
    free(buf);
    if (d.errors.n) {
        *err = xstrdup(d.errors.v[0]);
        diag_clear(&d);
        return -EINVAL;
    }
    diag_clear(&d);
    return 0;
}

void daemon_config_clear(DaemonConfig *c)
{
    free(c->root);
    free(c->socket_path);
    free(c->writer_group);
    free(c->reader_group);
    *c = (DaemonConfig){0};
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"root", required_argument, NULL, 'r'},
        {"socket", required_argument, NULL, 's'},
        {"config", required_argument, NULL, 'c'},
        {"help", no_argument, NULL, 'h'},
        {0},
    };
    DaemonConfig cfg = {
        .root = xstrdup("/var/lib/reld"), .socket_path = xstrdup("/run/reld/reld.sock"), .max_unpacked = 1ULL << 30};
    const char *root = NULL, *sock = NULL, *config = NULL;
    int c;
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
        case 'h':
            puts("Usage: reld [--root DIR] [--socket PATH] [--config FILE]");
            return 0;
        default:
            return 2;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "reld: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    char *err = NULL;
    if (config && daemon_config_load(&cfg, config, &err) < 0) {
        fprintf(stderr, "reld: %s\n", err);
        free(err);
        daemon_config_clear(&cfg);
        return 1;
    }
    /* The command line wins over the config file. */
    if (root)
        free(cfg.root), cfg.root = xstrdup(root);
    if (sock)
        free(cfg.socket_path), cfg.socket_path = xstrdup(sock);
    Daemon *d = NULL;
    int r = daemon_new(&cfg, &d);
    daemon_config_clear(&cfg);
    if (r < 0)
        return 1;
    r = daemon_run(d);
    daemon_free(d);
    return r;
}
