/* reld as a service (daemon.h). */
#include "daemon.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-event.h>

#include "log.h"
#include "manager.h"
#include "server.h"
#include "util.h"

struct Daemon {
    DaemonConfig cfg;
    char *config_path;
    sd_event *ev;
    Manager *m;
    Server *server;
    bool stopping;
};

static void on_stopped(void *userdata)
{
    Daemon *d = userdata;
    (void)sd_event_exit(d->ev, 0); /* cannot fail on a running loop */
}

static int on_stop_signal(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata)
{
    Daemon *d = userdata;
    if (d->stopping)
        return 0;
    d->stopping = true;
    log_info("%s: stopping every process, then reld", strsignal((int)si->ssi_signo));
    (void)sd_notify(false, "STOPPING=1"); /* no systemd: nobody to tell */
    d->server = server_free(d->server);   /* no new requests while stopping */
    manager_shutdown(d->m, on_stopped, d);
    return 0;
}

static int on_reload_signal(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata)
{
    Daemon *d = userdata;
    if (!d->config_path || d->stopping) {
        log_info("SIGHUP: no configuration file to reload");
        return 0;
    }
    (void)sd_notify(false, "RELOADING=1");
    DaemonConfig n;
    config_copy(&n, &d->cfg);
    char *err = NULL;
    int r = config_load(&n, d->config_path, &err);
    if (r < 0) {
        log_error("SIGHUP: cannot reload %s, keeping the configuration in use: %s", d->config_path, err);
    } else if (strcmp(n.root, d->cfg.root) != 0 || strcmp(n.socket_path, d->cfg.socket_path) != 0) {
        log_error("SIGHUP: %s changes root or socket, which needs a restart of reld; nothing reloaded", d->config_path);
    } else if (server_set_rights(d->server, &n) < 0) {
        log_error("SIGHUP: cannot apply %s; rights unchanged", d->config_path);
    } else {
        manager_set_unpack_limits(d->m, &n);
        config_clear(&d->cfg);
        d->cfg = n;
        n = (DaemonConfig){0};
        log_info("reloaded the configuration from %s", d->config_path);
    }
    config_clear(&n);
    free(err);
    (void)sd_notify(false, "READY=1");
    return 0;
}

int daemon_new(const DaemonConfig *cfg, const char *config_path, Daemon **ret)
{
    /* Before any thread exists: sd-event's child sources need SIGCHLD
     * blocked everywhere, and the service's signals arrive as events. */
    sigset_t ss;
    sigemptyset(&ss);
    sigaddset(&ss, SIGCHLD);
    sigaddset(&ss, SIGTERM);
    sigaddset(&ss, SIGINT);
    sigaddset(&ss, SIGHUP);
    if (sigprocmask(SIG_BLOCK, &ss, NULL) < 0)
        return -errno;
    (void)signal(SIGPIPE, SIG_IGN); /* a client or process that vanishes is an error to handle, not our death */
    Daemon *d = xcalloc(1, sizeof(*d));
    config_copy(&d->cfg, cfg);
    d->config_path = xstrdup(config_path);
    int r = sd_event_new(&d->ev);
    if (r < 0)
        log_error("cannot create the event loop: %s", strerror(-r));
    if (r >= 0 && ((r = sd_event_add_signal(d->ev, NULL, SIGTERM, on_stop_signal, d)) < 0 ||
                   (r = sd_event_add_signal(d->ev, NULL, SIGINT, on_stop_signal, d)) < 0 ||
                   (r = sd_event_add_signal(d->ev, NULL, SIGHUP, on_reload_signal, d)) < 0))
        log_error("cannot watch signals: %s", strerror(-r));
    if (r >= 0)
        r = manager_new(d->ev, &d->cfg, &d->m);
    if (r >= 0)
        r = server_new(d->ev, d->m, &d->cfg, &d->server);
    if (r < 0) {
        daemon_free(d);
        return r;
    }
    *ret = d;
    return 0;
}

int daemon_run(Daemon *d)
{
    /* WATCHDOG=1 at half of WatchdogSec=, when systemd asks for it. */
    int r = sd_event_set_watchdog(d->ev, true);
    if (r < 0)
        log_warning("cannot arm systemd's watchdog: %s", strerror(-r));
    log_info("ready: root %s, socket %s", d->cfg.root, d->cfg.socket_path);
    (void)sd_notifyf(false, "READY=1\nSTATUS=root %s", d->cfg.root); /* no systemd: nobody to tell */
    r = sd_event_loop(d->ev);
    if (r < 0)
        log_error("the event loop failed: %s", strerror(-r));
    return r < 0 ? 1 : 0;
}

Daemon *daemon_free(Daemon *d)
{
    if (!d)
        return NULL;
    d->server = server_free(d->server);
    if (manager_free(d->m)) /* a worker thread still uses it: exit without freeing */
        return NULL;
    sd_event_unref(d->ev);
    config_clear(&d->cfg);
    free(d->config_path);
    free(d);
    return NULL;
}
