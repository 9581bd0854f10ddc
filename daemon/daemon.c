/* reld as a service (daemon.h). */
#include "daemon.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-event.h>
#include <unistd.h>

#include "crashpoint.h"
#include "log.h"
#include "manager.h"
#include "reexec.h"
#include "server.h"
#include "util.h"

struct Daemon {
    DaemonConfig cfg;
    char *config_path;
    sd_event *ev;
    Manager *m;
    Server *server;
    bool stopping;
    int reexec_reply_fd;       /* after a re-exec: the connection of the relctl that asked, to answer once ready */
    long long reexec_asked_us; /* when it asked (mono_us()) */
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

/* relctl daemon-reexec (manager_reexec()): the control socket and the
 * asking connection go into the state too; returns only on a failure. */
static int do_reexec(void *userdata, void *caller, json_t *state, Diag *diag)
{
    Daemon *d = userdata;
    int sfd = server_fd(d->server), cfd = server_client_fd(d->server, caller);
    /* A copy of the connection: the client keeps its own if this fails. */
    int reply = cfd >= 0 ? fcntl(cfd, F_DUPFD_CLOEXEC, 3) : -1;
    json_object_set_new(state, "server_fd", json_integer(sfd));
    json_object_set_new(state, "reply_fd", json_integer(reply));
    json_object_set_new(state, "requested_us", json_integer(mono_us()));
    reexec_keep_fd(state, sfd);
    if (reply >= 0)
        reexec_keep_fd(state, reply);
    (void)sd_notify(false, "RELOADING=1"); /* no systemd: nobody to tell */
    int r = reexec_exec(state, diag);
    if (reply >= 0)
        close(reply);
    (void)sd_notify(false, "READY=1");
    log_error("%s", diag->errors.n ? diag->errors.v[0] : "cannot re-execute reld");
    return r;
}

int daemon_new(const DaemonConfig *cfg, const char *config_path, Daemon **ret)
{
    return daemon_new_from(cfg, config_path, NULL, ret);
}

int daemon_new_from(const DaemonConfig *cfg, const char *config_path, const json_t *state, Daemon **ret)
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
    json_t *sfd = json_object_get(state, "server_fd"), *reply = json_object_get(state, "reply_fd");
    d->reexec_reply_fd = json_is_integer(reply) ? (int)json_integer_value(reply) : -1;
    d->reexec_asked_us = json_integer_value(json_object_get(state, "requested_us"));
    if (r >= 0)
        r = manager_new_from(d->ev, &d->cfg, json_object_get(state, "manager"), &d->m);
    if (r >= 0)
        r = server_new_from(d->ev, d->m, &d->cfg, json_is_integer(sfd) ? (int)json_integer_value(sfd) : -1, &d->server);
    if (r < 0) {
        daemon_free(d);
        return r;
    }
    manager_set_reexec(d->m, do_reexec, d);
    if (state)
        CRASH_POINT("reexec:restored"); /* the new reld, before it is ready */
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
    (void)sd_notifyf(false, "READY=1\nMAINPID=%d\nSTATUS=root %s", (int)getpid(),
                     d->cfg.root); /* no systemd: nobody to tell */
    if (d->reexec_reply_fd >= 0) {
        /* The answer to relctl daemon-reexec, from the new reld, ready. */
        double ms = (double)(mono_us() - d->reexec_asked_us) / 1000.0;
        log_info("re-executed in %.1f ms (pid %d)", ms, (int)getpid());
        char *line = xasprintf("{\"ok\":true,\"pid\":%d,\"reexec_ms\":%.3f}\n", (int)getpid(), ms);
        if (write(d->reexec_reply_fd, line, strlen(line)) < 0)
            log_warning("cannot answer the relctl that asked for the re-exec: %s", strerror(errno));
        free(line);
        close(d->reexec_reply_fd);
        d->reexec_reply_fd = -1;
    }
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
    if (d->reexec_reply_fd > 2)
        close(d->reexec_reply_fd);
    if (manager_free(d->m)) /* a worker thread still uses it: exit without freeing */
        return NULL;
    sd_event_unref(d->ev);
    config_clear(&d->cfg);
    free(d->config_path);
    free(d);
    return NULL;
}
