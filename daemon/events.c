/* Events with fixed MESSAGE_IDs, to the journal or the log (events.h). */
#include "events.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-journal.h>

#include "log.h"

/* Made once with `systemd-id128 new`; never change one (operators' queries
 * and alerts name them). Listed in docs/daemon.md. */
static const struct {
    const char *name, *id;
} kinds[_EVENT_MAX] = {
    [EVENT_UNPACKED] = {"unpacked", "17875a935c0b483cb96a56f5eb00ada3"},
    [EVENT_CHANGE_STARTED] = {"change_started", "46d5b150be5a4684880143c304fd0a55"},
    [EVENT_CHANGE_STEP] = {"change_step", "6ddf2e68c8c94037b36361e6aba84dce"},
    [EVENT_CHANGE_DONE] = {"change_done", "402cfa2a7331457290ba29687d8177ce"},
    [EVENT_CHANGE_REFUSED] = {"change_refused", "cbcf33ad3b5648539cb94381fe2bb1fa"},
    [EVENT_ROLLBACK_STARTED] = {"rollback_started", "de4152ca5a8f4fd29be398d1f65f112a"},
    [EVENT_ROLLED_BACK] = {"rolled_back", "9126c1b9131543799b63c3f022e64bd3"},
    [EVENT_NEEDS_OPERATOR] = {"needs_operator", "81d8b36329734d33860354603b2f7211"},
    [EVENT_STATE] = {"state", "555d4727890e4d3abc793db4b681b95a"},
    [EVENT_PROCESS_EXITED] = {"process_exited", "0ea72c25f27a45d887db970f1798b847"},
    [EVENT_RESTART_LIMIT] = {"restart_limit", "04ca7103f7b84f3daf70a7e5d4d9efe6"},
};

static void (*listener)(EventKind kind, void *userdata);
static void *listener_data;

void events_listen(void (*fn)(EventKind kind, void *userdata), void *userdata)
{
    if (!fn && userdata != listener_data)
        return; /* another one listens now */
    listener = fn;
    listener_data = fn ? userdata : NULL;
}

const char *events_message_id(EventKind kind)
{
    return kind >= 0 && kind < _EVENT_MAX ? kinds[kind].id : NULL;
}

const char *events_name(EventKind kind)
{
    return kind >= 0 && kind < _EVENT_MAX ? kinds[kind].name : NULL;
}

void events_emit(EventKind kind, int priority, const EventFields *f, const char *fmt, ...)
{
    if (kind < 0 || kind >= _EVENT_MAX)
        return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    (void)vsnprintf(msg, sizeof(msg), fmt, ap); /* cut when longer: still one line */
    va_end(ap);
    const EventFields none = {0};
    if (!f)
        f = &none;
    char attempt[32] = "";
    if (f->attempt_id > 0)
        snprintf(attempt, sizeof(attempt), "%" PRId64, f->attempt_id);
    if (listener)
        listener(kind, listener_data);
    if (log_to_journal()) {
        /* Fields that are absent are sent empty: journalctl matches exact values. */
        int r = sd_journal_send("MESSAGE=%s", msg, "MESSAGE_ID=%s", kinds[kind].id, "PRIORITY=%d", priority,
                                "RELD_EVENT=%s", kinds[kind].name, "RELEASE=%s", f->release ? f->release : "",
                                "VERSION=%s", f->version ? f->version : "", "ATTEMPT_ID=%s", attempt, "OUTCOME=%s",
                                f->outcome ? f->outcome : "", "PROCESS=%s", f->process ? f->process : "", NULL);
        if (r >= 0)
            return;
    }
    log_full(priority, "%s [event=%s MESSAGE_ID=%s%s%s%s%s%s%s%s%s%s%s]", msg, kinds[kind].name, kinds[kind].id,
             f->release ? " RELEASE=" : "", f->release ? f->release : "", f->version ? " VERSION=" : "",
             f->version ? f->version : "", *attempt ? " ATTEMPT_ID=" : "", attempt, f->outcome ? " OUTCOME=" : "",
             f->outcome ? f->outcome : "", f->process ? " PROCESS=" : "", f->process ? f->process : "");
}

void events_status(const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    (void)vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    (void)sd_notifyf(false, "STATUS=%s", msg); /* no systemd: nobody to tell */
}
