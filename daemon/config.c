/* reld's configuration file (config.h). */
#include "config.h"

#include <errno.h>
#include <string.h>

#include "store.h"
#include "util.h"
#include "yamlutil.h"

void config_init(DaemonConfig *c)
{
    *c = (DaemonConfig){.root = xstrdup(CONFIG_DEFAULT_ROOT),
                        .socket_path = xstrdup(CONFIG_DEFAULT_SOCKET),
                        .max_unpacked = CONFIG_DEFAULT_MAX_UNPACKED,
                        .max_unpacked_files = CONFIG_DEFAULT_MAX_UNPACKED_FILES,
                        .max_unpacked_depth = CONFIG_DEFAULT_MAX_UNPACKED_DEPTH,
                        .min_healthy_ms = CONFIG_DEFAULT_MIN_HEALTHY_MS,
                        .health_timeout_ms = CONFIG_DEFAULT_HEALTH_TIMEOUT_MS,
                        .trusted_keys = xstrdup(CONFIG_DEFAULT_TRUSTED_KEYS),
                        .revoked_keys = xstrdup(CONFIG_DEFAULT_REVOKED_KEYS),
                        .metrics_interval_ms = CONFIG_DEFAULT_METRICS_EVERY_MS};
}

void config_copy(DaemonConfig *dst, const DaemonConfig *src)
{
    *dst = (DaemonConfig){.root = xstrdup(src->root),
                          .socket_path = xstrdup(src->socket_path),
                          .writer_group = xstrdup(src->writer_group),
                          .reader_group = xstrdup(src->reader_group),
                          .readers_all = src->readers_all,
                          .max_unpacked = src->max_unpacked,
                          .max_unpacked_files = src->max_unpacked_files,
                          .max_unpacked_depth = src->max_unpacked_depth,
                          .min_healthy_ms = src->min_healthy_ms,
                          .health_timeout_ms = src->health_timeout_ms,
                          .trusted_keys = xstrdup(src->trusted_keys),
                          .revoked_keys = xstrdup(src->revoked_keys),
                          .min_version = xstrdup(src->min_version),
                          .refuse_older_than_permanent = src->refuse_older_than_permanent,
                          .metrics_file = xstrdup(src->metrics_file),
                          .metrics_interval_ms = src->metrics_interval_ms};
}

void config_clear(DaemonConfig *c)
{
    free(c->root);
    free(c->socket_path);
    free(c->writer_group);
    free(c->reader_group);
    free(c->trusted_keys);
    free(c->revoked_keys);
    free(c->min_version);
    free(c->metrics_file);
    *c = (DaemonConfig){0};
}

static void set_string(char **field, char *value)
{
    free(*field);
    *field = value;
}

int config_load(DaemonConfig *c, const char *path, char **ret_err)
{
    char *buf = NULL;
    size_t len = 0;
    int r = store_read_file(path, &buf, &len);
    if (r < 0) {
        *ret_err = xasprintf("%s: %s", path, strerror(-r));
        return r;
    }
    static const char *const keys[] = {"root",
                                       "socket",
                                       "writer_group",
                                       "reader_group",
                                       "readers",
                                       "max_unpacked_bytes",
                                       "max_unpacked_files",
                                       "max_unpacked_depth",
                                       "min_healthy_ms",
                                       "health_timeout_ms",
                                       "trusted_keys",
                                       "revoked_keys",
                                       "min_version",
                                       "refuse_older_than_permanent",
                                       "metrics_file",
                                       "metrics_interval_ms",
                                       NULL};
    DaemonConfig n;
    config_copy(&n, c);
    Diag d = {0};
    YamlCtx y;
    /* Nothing but comments (as shipped) is every default. */
    yaml_node_t *root = yaml_ctx_load_optional(&y, path, buf, len, &d);
    if (root && root->type != YAML_MAPPING_NODE) {
        yaml_error(&y, root, "the config must be a mapping");
    } else if (root) {
        yaml_map_check_keys(&y, root, keys, "config");
        char *s = NULL;
        if (yaml_get_string(&y, root, "root", false, &s) && s)
            set_string(&n.root, TAKE_PTR(s));
        if (yaml_get_string(&y, root, "socket", false, &s) && s)
            set_string(&n.socket_path, TAKE_PTR(s));
        if (yaml_get_string(&y, root, "writer_group", false, &s) && s)
            set_string(&n.writer_group, TAKE_PTR(s));
        if (yaml_get_string(&y, root, "reader_group", false, &s) && s)
            set_string(&n.reader_group, TAKE_PTR(s));
        /* Absolute: reld's working directory is no place to look for keys. */
        static const char *const dirs[] = {"trusted_keys", "revoked_keys"};
        for (size_t i = 0; i < 2; i++) {
            if (!yaml_get_string(&y, root, dirs[i], false, &s) || !s)
                continue;
            if (s[0] == '/') {
                set_string(i == 0 ? &n.trusted_keys : &n.revoked_keys, TAKE_PTR(s));
            } else {
                yaml_error(&y, yaml_map_get(&y, root, dirs[i]), "%s must be an absolute directory", dirs[i]);
                free(TAKE_PTR(s));
            }
        }
        if (yaml_get_string(&y, root, "min_version", false, &s) && s) {
            if (version_is_valid(s))
                set_string(&n.min_version, TAKE_PTR(s));
            else
                yaml_error(&y, yaml_map_get(&y, root, "min_version"), "min_version must be a release version");
            free(TAKE_PTR(s));
        }
        if (yaml_get_string(&y, root, "refuse_older_than_permanent", false, &s) && s) {
            if (strcmp(s, "true") == 0 || strcmp(s, "false") == 0)
                n.refuse_older_than_permanent = strcmp(s, "true") == 0;
            else
                yaml_error(&y, yaml_map_get(&y, root, "refuse_older_than_permanent"),
                           "refuse_older_than_permanent must be true or false");
            free(TAKE_PTR(s));
        }
        if (yaml_get_string(&y, root, "readers", false, &s) && s) {
            if (strcmp(s, "all") == 0)
                n.readers_all = true;
            else if (strcmp(s, "writers") == 0)
                n.readers_all = false;
            else
                yaml_error(&y, yaml_map_get(&y, root, "readers"), "readers must be all or writers");
            free(s);
        }
        long max = 0;
        if (yaml_get_long(&y, root, "max_unpacked_bytes", 1, 1L << 50, &max) && max)
            n.max_unpacked = (uint64_t)max;
        if (yaml_get_long(&y, root, "max_unpacked_files", 1, 1L << 40, &max) && max)
            n.max_unpacked_files = (uint64_t)max;
        if (yaml_get_long(&y, root, "max_unpacked_depth", 3, 1024, &max) && max)
            n.max_unpacked_depth = (unsigned)max;
        (void)yaml_get_long(&y, root, "min_healthy_ms", 0, 3600000, &n.min_healthy_ms); /* errors: in d */
        (void)yaml_get_long(&y, root, "health_timeout_ms", 1, 86400000, &n.health_timeout_ms);
        /* Metrics: an absolute .prom file (the textfile collector reads no
         * other; reld's working directory is no place for it). */
        char *mf = NULL;
        if (yaml_get_string(&y, root, "metrics_file", false, &mf) && mf) {
            size_t l = strlen(mf);
            if (mf[0] == '/' && l > 5 && strcmp(mf + l - 5, ".prom") == 0)
                set_string(&n.metrics_file, TAKE_PTR(mf));
            else
                yaml_error(&y, yaml_map_get(&y, root, "metrics_file"),
                           "metrics_file must be an absolute path ending in .prom");
            free(mf);
        }
        (void)yaml_get_long(&y, root, "metrics_interval_ms", 1000, 86400000, &n.metrics_interval_ms);
    }
    yaml_ctx_done(&y);
    free(buf);
    if (d.errors.n) {
        *ret_err = xstrdup(d.errors.v[0]);
        diag_clear(&d);
        config_clear(&n);
        return -EINVAL;
    }
    diag_clear(&d);
    config_clear(c);
    *c = n;
    return 0;
}
