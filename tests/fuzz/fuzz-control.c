/* fuzz-control: the runtime's control protocol (docs/runtime.md), as a
 * managed process meets it. The input is what reld would write on the
 * control socket: requests, one a line. Each input gets a fresh runtime
 * whose channel (RELD_CONTROL_FD) is one end of a socketpair, with module
 * fuzzmod version 1 loaded (RELD_MODULES); this file plays reld on the
 * other end. Each line goes to the runtime's handler through the seam
 * rel_runtime_fuzz_line() (runtime.c, only with RELD_FUZZING, which this
 * target compiles runtime.c with): no thread of ours, and a suspended
 * process goes on taking requests instead of waiting for the channel.
 *
 * Property: the process answers every request exactly once, with one JSON
 * object per line (the protocol's promise: a request left unanswered
 * leaves reld waiting), after its hello. load_object_code is answered by
 * the runtime's loader thread, later: answers are counted, not ordered,
 * once the runtime is freed.
 * Objects to load: fuzzmod-1.so, fuzzmod-2.so, fuzzmod-3.so, broken-1.so
 * (whose init fails), by these names: the target's run path is their
 * directory. */
#include <dlfcn.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fuzz.h"
#include "reld-runtime.h"

#define MAX_LINE 65536 /* runtime.c's limit of a request: pump() refuses longer ones */

/* The seam (runtime.c). */
void rel_runtime_fuzz_line(RelRuntime *rt, const char *line, size_t len);

static const char *const objects[] = {"fuzzmod-1.so", "fuzzmod-2.so", "fuzzmod-3.so", "broken-1.so"};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    /* Kept open for the process's life: the runtime's dlopen and dlclose
     * of them then only count references (no mapping per input), and a
     * missing object is found here, not as a "dlopen" answer. */
    for (size_t i = 0; i < sizeof(objects) / sizeof(objects[0]); i++)
        FUZZ_ASSERT(dlopen(objects[i], RTLD_NOW | RTLD_LOCAL), "%s: %s", objects[i], dlerror());
    setenv("RELD_MODULES", "fuzzmod=fuzzmod-1.so", 1);
    setenv("RELD_PROCESS", "fuzz", 1);
    return 0;
}

/* reld's end of the channel: what it has read. */
typedef struct Peer {
    int fd;
    size_t got; /* complete lines, the hello included */
    char *partial;
    size_t partial_len, partial_cap;
} Peer;

static void peer_line(Peer *p)
{
    if (fuzz_verbose())
        fprintf(stderr, "< %.*s\n", (int)p->partial_len, p->partial);
    json_error_t err;
    json_t *msg = json_loadb(p->partial, p->partial_len, 0, &err);
    FUZZ_ASSERT(json_is_object(msg), "answer %zu is not a JSON object (%s): %.*s", p->got, err.text,
                (int)(p->partial_len > 300 ? 300 : p->partial_len), p->partial);
    if (p->got == 0)
        FUZZ_ASSERT(json_is_string(json_object_get(msg, "event")), "the first line is not the hello");
    else
        FUZZ_ASSERT(json_is_boolean(json_object_get(msg, "ok")) && json_object_get(msg, "id"),
                    "answer %zu has no ok or no id", p->got);
    json_decref(msg);
    p->got++;
    p->partial_len = 0;
}

/* Reads what the process sent. Returns false when nothing was there, or
 * at the end of file. */
static bool peer_read(Peer *p)
{
    char buf[4096];
    ssize_t n = recv(p->fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (n <= 0)
        return false;
    for (ssize_t i = 0; i < n; i++) {
        if (buf[i] == '\n') {
            peer_line(p);
            continue;
        }
        if (p->partial_len == p->partial_cap) {
            p->partial_cap = p->partial_cap ? 2 * p->partial_cap : 4096;
            p->partial = realloc(p->partial, p->partial_cap);
            FUZZ_ASSERT(p->partial, "out of memory");
        }
        p->partial[p->partial_len++] = buf[i];
    }
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int sv[2];
    FUZZ_ASSERT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0, "socketpair: %s", strerror(errno));
    char fd[16];
    snprintf(fd, sizeof(fd), "%d", sv[1]);
    setenv("RELD_CONTROL_FD", fd, 1);
    RelRuntime *rt = NULL;
    char err[512];
    FUZZ_ASSERT(rel_runtime_new(&rt, err, sizeof(err)) == 0, "rel_runtime_new: %s", err);

    /* Lines as pump() reads them: empty ones skipped, an unterminated last
     * one not read; an over-long one pump() answers itself. */
    Peer peer = {.fd = sv[0]};
    size_t requests = 0;
    const char *line = (const char *)data, *end = line + size, *nl;
    for (; (nl = memchr(line, '\n', (size_t)(end - line))); line = nl + 1) {
        size_t len = (size_t)(nl - line);
        if (len == 0 || len > MAX_LINE)
            continue;
        rel_runtime_fuzz_line(rt, line, len);
        requests++;
        while (peer_read(&peer)) /* so that the channel never fills */
            ;
    }
    /* The loader thread finishes its jobs (each answered) before it is
     * joined, then sv[1] closes: everything the process will ever send is
     * there, up to the end of file. Nothing waits, nothing is timed. */
    rel_runtime_free(rt);
    while (peer_read(&peer))
        ;
    FUZZ_ASSERT(peer.got == requests + 1, "%zu answers to %zu requests (and the hello: %s)",
                peer.got ? peer.got - 1 : 0, requests, peer.got ? "yes" : "no");
    FUZZ_ASSERT(peer.partial_len == 0, "%zu bytes after the last answer, not a line", peer.partial_len);
    close(sv[0]);
    free(peer.partial);
    return 0;
}
