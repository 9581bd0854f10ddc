/* The control protocol's commands (commands.h). */
#include "commands.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "sign.h"

typedef struct Command {
    const char *name;
    CommandAccess access;
    void (*run)(Client *c, json_t *req, Manager *m);
} Command;

/* ---- outcomes of the manager's operations --------------------------------- */

static void on_progress(void *userdata, json_t *line)
{
    client_send(userdata, json_incref(line));
}

static void on_done(void *userdata, int r, json_t *reply, const Diag *diag)
{
    Client *c = userdata;
    if (r < 0) {
        client_reply_diag_with(c, diag, strerror(-r), reply); /* an install's outcome goes with its reasons */
        return;
    }
    client_reply_ok_warned(c, json_deep_copy(reply), diag); /* a success may have something to say */
}

static ManagerCaller caller(Client *c)
{
    return (ManagerCaller){.progress = on_progress, .done = on_done, .userdata = c};
}

/* An install, upgrade or downgrade always says its outcome: one refused
 * before it began (not known, busy, ...) is "refused". */
static void on_install_done(void *userdata, int r, json_t *reply, const Diag *diag)
{
    json_t *full = reply ? json_incref(reply) : json_object();
    if (!json_object_get(full, "outcome"))
        json_object_set_new(full, "outcome", json_string("refused"));
    on_done(userdata, r, full, diag);
    json_decref(full);
}

/* The release version in field key of req: NULL when it is absent. A
 * field that is there but is not a string holding a release version is
 * refused (*bad), never taken as absent: for make-permanent, absent means
 * "the current release". */
static const char *version_field(Client *c, json_t *req, const char *key, bool *bad)
{
    json_t *v = json_object_get(req, key);
    if (!v || *bad)
        return NULL;
    const char *s = json_string_value(v);
    if (!s || !version_is_valid(s)) {
        *bad = true;
        client_reply_error(c,
                           "bad request: %s is not a release version (letters, digits and . _ + ~ -, starting "
                           "with a letter or digit, at most 64)",
                           key);
        return NULL;
    }
    return s;
}

/* A read: the reply or its reason. */
static void answer(Client *c, json_t *reply, Diag *diag)
{
    if (reply)
        client_reply_ok(c, reply);
    else
        client_reply_diag(c, diag, "cannot read reld's state");
    diag_clear(diag);
}

/* ---- the commands ------------------------------------------------------------ */

static bool bool_field(Client *c, json_t *req, const char *key, bool *out);

static void cmd_unpack(Client *c, json_t *req, Manager *m)
{
    if (client_n_fds(c) != 1)
        return client_reply_error(c, "unpack needs the tarball's file descriptor passed with the request");
    /* The .minisig's text (four short lines) travels in the request. */
    json_t *sig = json_object_get(req, "signature");
    if (sig && (!json_is_string(sig) || json_string_length(sig) > SIGN_TEXT_MAX))
        return client_reply_error(c, "signature must be the text of a .minisig file (at most 4096 bytes)");
    ManagerUnpack u = {.signature = sig ? json_string_value(sig) : NULL};
    if (!bool_field(c, req, "allow_downgrade", &u.allow_downgrade) || !bool_field(c, req, "stream", &u.stream))
        return;
    ManagerCaller mc = caller(c);
    manager_unpack_with(m, client_take_fd(c), &u, client_who(c), &mc);
}

/* Optional fields: absent leaves *out alone; a wrong type is refused
 * (false, the reply sent). */
static bool bool_field(Client *c, json_t *req, const char *key, bool *out)
{
    json_t *v = json_object_get(req, key);
    if (v && !json_is_boolean(v)) {
        client_reply_error(c, "bad request: %s must be true or false", key);
        return false;
    }
    if (v)
        *out = json_is_true(v);
    return true;
}

static bool ms_field(Client *c, json_t *req, const char *key, long *out)
{
    json_t *v = json_object_get(req, key);
    if (v && (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 86400000)) {
        client_reply_error(c, "bad request: %s must be milliseconds, 0 to 86400000", key);
        return false;
    }
    if (v)
        *out = (long)json_integer_value(v);
    return true;
}

/* install, upgrade, downgrade: {vsn, no_wait?, commit?, rehearse?,
 * min_healthy_ms?, health_timeout_ms?, rehearse_timeout_ms?, dry_run?} (manager.h,
 * ManagerInstall). */
static void install(Client *c, json_t *req, Manager *m, const char *direction)
{
    bool bad = false;
    ManagerInstall in = {.vsn = version_field(c, req, "vsn", &bad),
                         .direction = direction,
                         .min_healthy_ms = -1,
                         .health_timeout_ms = -1,
                         .rehearse_timeout_ms = -1};
    if (bad)
        return;
    if (!bool_field(c, req, "no_wait", &in.no_wait) || !bool_field(c, req, "commit", &in.commit) ||
        !bool_field(c, req, "rehearse", &in.rehearse) || !ms_field(c, req, "min_healthy_ms", &in.min_healthy_ms) ||
        !ms_field(c, req, "health_timeout_ms", &in.health_timeout_ms) ||
        !ms_field(c, req, "rehearse_timeout_ms", &in.rehearse_timeout_ms) ||
        !bool_field(c, req, "dry_run", &in.dry_run))
        return;
    ManagerCaller mc = {.progress = on_progress, .done = on_install_done, .userdata = c};
    manager_install(m, &in, client_who(c), &mc);
}

static void cmd_install(Client *c, json_t *req, Manager *m)
{
    install(c, req, m, NULL);
}

static void cmd_upgrade(Client *c, json_t *req, Manager *m)
{
    install(c, req, m, "upgrade");
}

static void cmd_downgrade(Client *c, json_t *req, Manager *m)
{
    install(c, req, m, "downgrade");
}

static void cmd_remove(Client *c, json_t *req, Manager *m)
{
    bool bad = false;
    const char *vsn = version_field(c, req, "vsn", &bad);
    if (bad)
        return;
    ManagerCaller mc = caller(c);
    manager_remove(m, vsn, client_who(c), &mc);
}

static void cmd_make_permanent(Client *c, json_t *req, Manager *m)
{
    bool bad = false;
    const char *vsn = version_field(c, req, "vsn", &bad);
    if (bad)
        return;
    ManagerCaller mc = caller(c);
    manager_make_permanent(m, vsn, client_who(c), &mc);
}

static void cmd_relup(Client *c, json_t *req, Manager *m)
{
    bool bad = false;
    const char *from = version_field(c, req, "from", &bad), *to = version_field(c, req, "to", &bad);
    if (bad)
        return;
    ManagerCaller mc = caller(c);
    manager_relup(m, from, to, client_who(c), &mc);
}

static void cmd_releases(Client *c, json_t *req, Manager *m)
{
    Diag d = {0};
    answer(c, manager_releases(m, &d), &d);
}

static void cmd_history(Client *c, json_t *req, Manager *m)
{
    json_int_t limit = json_integer_value(json_object_get(req, "limit"));
    Diag d = {0};
    answer(c, manager_history(m, limit > 0 && limit < 1000000 ? (int)limit : 50, &d), &d);
}

static void cmd_status(Client *c, json_t *req, Manager *m)
{
    Diag d = {0};
    answer(c, manager_status(m, &d), &d);
}

/* reld executes itself again (reexec.h): the new reld answers. */
static void cmd_daemon_reexec(Client *c, json_t *req, Manager *m)
{
    ManagerCaller mc = caller(c);
    manager_reexec(m, client_who(c), &mc);
}

static const Command commands[] = {
    {"unpack", ACCESS_WRITE, cmd_unpack},
    {"install", ACCESS_WRITE, cmd_install},
    {"upgrade", ACCESS_WRITE, cmd_upgrade},
    {"downgrade", ACCESS_WRITE, cmd_downgrade},
    {"remove", ACCESS_WRITE, cmd_remove},
    {"make-permanent", ACCESS_WRITE, cmd_make_permanent},
    {"releases", ACCESS_READ, cmd_releases},
    {"history", ACCESS_READ, cmd_history},
    {"status", ACCESS_READ, cmd_status},
    {"relup", ACCESS_READ, cmd_relup},
    {"daemon-reexec", ACCESS_WRITE, cmd_daemon_reexec},
};

void commands_handle(Client *c, json_t *req, Manager *m)
{
    const char *name = json_string_value(json_object_get(req, "cmd"));
    if (!name)
        return client_reply_error(c, "bad request: no cmd");
    const Command *cmd = NULL;
    for (size_t k = 0; k < sizeof(commands) / sizeof(commands[0]) && !cmd; k++)
        if (strcmp(commands[k].name, name) == 0)
            cmd = &commands[k];
    if (!cmd) {
        /* At most 64 bytes of it, cut between two characters. */
        int n = 0;
        while (name[n] && n < 64)
            n++;
        while (n > 0 && name[n] && ((unsigned char)name[n] & 0xc0) == 0x80)
            n--;
        return client_reply_error(c, "unknown command '%.*s'", n, name);
    }
    bool write = cmd->access == ACCESS_WRITE;
    if (write ? !client_may_write(c) : !client_may_read(c)) {
        log_notice("refused %s for %s", cmd->name, client_who(c));
        return client_reply_error(c,
                                  "permission denied: %s may not %s (see writer_group/reader_group in reld's config)",
                                  client_who(c), write ? "change releases" : "read reld's state");
    }
    cmd->run(c, req, m);
}

void commands_forget(Client *c, Manager *m)
{
    manager_forget_caller(m, c);
}
