#pragma once
/* config: reld's configuration file (YAML, docs/daemon.md). An empty file,
 * or one of comments only (as shipped in packaging/reld.yaml), means every
 * default. Unknown keys and wrong values are errors, "file:line:col: what".
 *
 * Ownership: a DaemonConfig owns its strings; config_clear() frees them
 * and config_copy() duplicates them.
 *
 * Errors: 0, or -EINVAL (a wrong file) / -errno (unreadable) with one line
 * in *ret_err (caller frees). The config is untouched on failure. */
#include <stdbool.h>
#include <stdint.h>

typedef struct DaemonConfig {
    char *root;                  /* default /var/lib/reld */
    char *socket_path;           /* default /run/reld/reld.sock */
    char *writer_group;          /* members may change releases; NULL: only root and reld's own user */
    char *reader_group;          /* members may read; NULL: see readers_all */
    bool readers_all;            /* anyone who can reach the socket may read */
    uint64_t max_unpacked;       /* bytes, default 1 GiB */
    uint64_t max_unpacked_files; /* entries of one tarball, default 100,000 */
    unsigned max_unpacked_depth; /* path components of an entry, default 32 */
    /* The health gate after install, upgrade and downgrade (health.h): the
     * new release must stay healthy this long, within this time. */
    long min_healthy_ms;    /* default 1000 */
    long health_timeout_ms; /* default 60000 */
    /* Signed releases (docs/signing.md): minisign public keys, and revoked
     * key ids or keys. Once trusted_keys holds a key, every tarball must be
     * signed by one of them that is not revoked. */
    char *trusted_keys; /* default /etc/reld/trusted.d */
    char *revoked_keys; /* default /etc/reld/revoked.d */
    /* The downgrade floor: a tarball of an older release (strverscmp) is
     * refused at unpack unless the request allows a downgrade. */
    char *min_version;                /* NULL: none */
    bool refuse_older_than_permanent; /* default false */
    /* Prometheus metrics for node_exporter's textfile collector
     * (metrics.h): written to this file (absolute, ending in .prom) every
     * metrics_interval_ms and soon after a change. */
    char *metrics_file;       /* NULL: off (the default) */
    long metrics_interval_ms; /* default 15000, at least 1000 */
} DaemonConfig;

#define CONFIG_DEFAULT_ROOT               "/var/lib/reld"
#define CONFIG_DEFAULT_SOCKET             "/run/reld/reld.sock"
#define CONFIG_DEFAULT_MAX_UNPACKED       (1ULL << 30)
#define CONFIG_DEFAULT_MAX_UNPACKED_FILES 100000ULL
#define CONFIG_DEFAULT_MAX_UNPACKED_DEPTH 32U
#define CONFIG_DEFAULT_MIN_HEALTHY_MS     1000L
#define CONFIG_DEFAULT_HEALTH_TIMEOUT_MS  60000L
#define CONFIG_DEFAULT_TRUSTED_KEYS       "/etc/reld/trusted.d"
#define CONFIG_DEFAULT_REVOKED_KEYS       "/etc/reld/revoked.d"
#define CONFIG_DEFAULT_METRICS_EVERY_MS   15000L

/* Every default. */
void config_init(DaemonConfig *c);
/* Reads path over c's values: keys it lacks keep theirs. */
int config_load(DaemonConfig *c, const char *path, char **ret_err);
void config_copy(DaemonConfig *dst, const DaemonConfig *src);
void config_clear(DaemonConfig *c);
