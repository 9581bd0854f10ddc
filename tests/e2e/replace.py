#!/usr/bin/env python3
"""End to end: plain processes (no runtime) replaced at an upgrade's
switch-over without a failed request (issue 13, item 2; docs/formats.md
"Replacing a process"). A real server (python, below) takes the listening
socket reld holds (LISTEN_FDS), says READY=1 on NOTIFY_SOCKET after a
delay and stops gracefully on the signal it is told to; clients connect
all through the upgrades. Prints TAP.

  1. overlap + ready: notify + stop_signal: SIGINT: the new process starts
     on the very same socket, says READY=1, and only then is the old one
     told (SIGINT) to stop; 0 failed requests through two upgrades; then a
     re-exec of reld keeps the process and its socket;
  2. ready: notify never sent, ready_timeout_ms: 400: the upgrade fails
     with one line, the new process is gone, the old one serves on
     (same pid), release 1 stays current, 0 failed requests; a new
     version that exits at once: the same, its output quoted;
  3. ready: health (an exec check that asks the new process, RELD_PID);
  4. overlap: false + stop_signal: SIGWINCH: the old process has stopped
     before the new one starts (today's way, for servers that cannot run
     twice), and still no failed request (the socket stays with reld).

Usage: replace.py --reld PATH --relctl PATH
"""
import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tarfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import daemon as d  # noqa: E402
import supervise  # noqa: E402  (wait_for)

A = None
PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else os.path.realpath(sys.executable)

# The server: --tag T --log FILE [--ready notify|never|file] [--ready-delay S] [--graceful SIGNAME].
# Every line it logs: "MONOTONIC_NS PID TAG what".
SERVER = """#!{python}
import os, select, signal, socket, sys, time
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
tag, log = args["--tag"], args["--log"]
def note(what):
    with open(log, "a") as f:
        f.write(f"{{time.monotonic_ns()}} {{os.getpid()}} {{tag}} {{what}}\\n")
stop = []
signal.signal(signal.Signals[args.get("--graceful", "SIGTERM")], lambda sig, frame: stop.append(sig))
lsock = socket.socket(fileno=3)  # LISTEN_FDS=1: the socket reld holds
note(f"start inode={{os.fstat(3).st_ino}} listen_pid={{os.environ.get('LISTEN_PID')}}")
time.sleep(float(args.get("--ready-delay", "0")))
ready = args.get("--ready", "notify")
note("ready")  # before it says so: reld may tell the old one to stop at once
if ready == "notify":
    addr = os.environ["NOTIFY_SOCKET"]
    n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    n.sendto(b"STATUS=starting\\nREADY=1\\n", "\\0" + addr[1:] if addr.startswith("@") else addr)
    n.close()
elif ready == "file":
    open(os.path.join(os.path.dirname(log), f"ready-{{os.getpid()}}"), "w").close()
lsock.setblocking(False)
served = 0
while not stop:
    if not select.select([lsock], [], [], 0.05)[0]:
        continue
    try:
        c, _ = lsock.accept()
    except BlockingIOError:  # the other process took it
        continue
    c.setblocking(True)
    c.settimeout(5)
    try:
        c.recv(100)
        time.sleep(0.005)  # in flight long enough for a stop to meet a request
        c.sendall(f"{{tag}} {{os.getpid()}}\\n".encode())
    finally:
        c.close()
    served += 1
note(f"stopping signal={{signal.Signals(stop[0]).name}} served={{served}}")
"""


def release(work, vsn, port, extra, server_args, shutdown_ms=3000):
    """Release vsn of application web (vsn.0): one process serving on port."""
    src = os.path.join(work, f"src-{vsn}")
    app = os.path.join(src, "lib", f"web-{vsn}.0")
    os.makedirs(os.path.join(app, "bin"))
    with open(os.path.join(app, "bin", "server"), "w") as f:
        f.write(SERVER.format(python=PYTHON))
    os.chmod(os.path.join(app, "bin", "server"), 0o755)
    args = ["--tag", f"v{vsn}", "--log", os.path.join(work, "events.log")] + server_args
    with open(os.path.join(app, "app.yaml"), "w") as f:
        f.write(f'name: web\nvsn: "{vsn}.0"\nprocesses:\n  - name: web\n    exec: bin/server\n'
                f'    args: {json.dumps(args)}\n    shutdown_ms: {shutdown_ms}\n'
                f'    sockets: [{{name: http, listen: "127.0.0.1:{port}"}}]\n{extra}')
    os.makedirs(os.path.join(src, "releases", vsn))
    with open(os.path.join(src, "releases", vsn, "release.yaml"), "w") as f:
        f.write(f'release: web\nvsn: "{vsn}"\napplications:\n  - {{name: web, vsn: "{vsn}.0"}}\n')
    path = os.path.join(work, f"web-{vsn}.tar.gz")
    with tarfile.open(path, "w:gz") as t:
        t.add(os.path.join(src, "releases"), "releases")
        t.add(os.path.join(src, "lib"), "lib")
    return path


class Load:
    """Clients that connect, ask and read the answer, one connection per
    request, until stopped: every failure (refused, reset, no answer) is
    counted, with the answers' tags."""

    def __init__(self, port, clients=3):
        self.port, self.ok, self.failed, self.tags, self.errors = port, 0, 0, {}, []
        self.lock, self.done = threading.Lock(), False
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(clients)]
        for t in self.threads:
            t.start()

    def run(self):
        while not self.done:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as c:
                    c.sendall(b"GET\n")
                    data = b""
                    while True:
                        b = c.recv(100)
                        if not b:
                            break
                        data += b
                tag = data.decode().split()[0] if data else None
                with self.lock:
                    if tag:
                        self.ok += 1
                        self.tags[tag] = self.tags.get(tag, 0) + 1
                    else:
                        self.failed += 1
                        self.errors.append("empty answer")
            except OSError as e:
                with self.lock:
                    self.failed += 1
                    self.errors.append(repr(e))

    def stop(self):
        self.done = True
        for t in self.threads:
            t.join(20)
        return self


def events(work):
    """[(ns, pid, tag, what)] of the servers' log."""
    path = os.path.join(work, "events.log")
    if not os.path.exists(path):
        return []
    return [(int(a), int(b), c, w) for a, b, c, w in
            (line.rstrip("\n").split(" ", 3) for line in open(path) if line.count(" ") >= 3)]


def first(ev, tag, what):
    """The first event of tag whose text starts with what, or None."""
    return next((e for e in ev if e[2] == tag and e[3].startswith(what)), None)


def procs(r):
    rc, out, err = r.relctl("status", "--json")
    return [p for p in json.loads(out)["processes"] if p["pid"]] if rc == 0 else []


def current(r):
    rc, out, err = r.relctl("status", "--json")
    st = json.loads(out) if rc == 0 else {}
    return [p.get("vsn") for p in st.get("processes", [])]


def history(r):
    """[(kind, pid)] of the process records in reld's history."""
    rc, out, err = r.relctl("history", "--json")
    return [(e["kind"], (e.get("detail") or {}).get("pid")) for e in json.loads(out)["events"]
            if e["kind"].startswith("process_")] if rc == 0 else []


def wait_for(pred, timeout=20.0):
    return supervise.wait_for(pred, timeout)


def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def test_overlap_notify(work):
    port = d.free_port()
    extra = "    stop_signal: SIGINT\n    ready: notify\n    ready_timeout_ms: 10000\n"
    r = d.Reld(work)
    rc, out, err = r.relctl("install", release(work, "1", port, extra, ["--graceful", "SIGINT"]))
    d.tap(rc == 0 and wait_for(lambda: first(events(work), "v1", "ready")), "release 1 installed, its server ready",
          out + err)
    load = Load(port)
    wait_for(lambda: load.ok >= 20)
    for vsn in ("2", "3"):
        rc, out, err = r.relctl("install", release(work, vsn, port, extra,
                                                    ["--graceful", "SIGINT", "--ready-delay", "0.3"]))
        d.tap(rc == 0, f"upgrade to {vsn}: replaced with overlap", out + err)
        seen = load.ok
        wait_for(lambda: load.ok >= seen + 20)
    load.stop()
    d.tap(load.failed == 0 and load.tags.get("v3", 0) > 0 and load.tags.get("v2", 0) > 0,
          f"{load.ok} requests through two replacements, 0 failed, answered by v1, v2 and v3",
          f"ok {load.ok} failed {load.failed} {load.tags} {load.errors[:5]}")
    ev = events(work)
    for old, new in (("v1", "v2"), ("v2", "v3")):
        ready, stopping, start = first(ev, new, "ready"), first(ev, old, "stopping"), first(ev, new, "start")
        d.tap(ready and stopping and start and start[0] < ready[0] < stopping[0],
              f"{new} started and said READY=1 before {old} was told to stop", ev)
        d.tap(stopping and stopping[3].startswith("stopping signal=SIGINT"),
              f"{old} was stopped with its stop_signal, SIGINT (and served until then)", stopping)
    starts = [e for e in ev if e[3].startswith("start")]
    inodes = {re.search(r"inode=(\d+)", e[3]).group(1) for e in starts}
    d.tap(len(starts) == 3 and len(inodes) == 1 and
          all(re.search(r"listen_pid=(\d+)", e[3]).group(1) == str(e[1]) for e in starts),
          "the three servers got the very same listening socket (one inode), LISTEN_PID their own pid", starts)
    log = open(os.path.join(work, "reld.log"), errors="replace").read()
    d.tap(re.search(r"web/web\[\d+\] ready \(READY=1\)", log) and
          re.search(r"web/web\[\d+\] started beside \d+", log), "reld's log says so", log[-1500:])
    ps = procs(r)
    pid = ps[0]["pid"] if ps else 0
    d.tap(len(ps) == 1 and ps[0]["vsn"] == "3.0" and pid == first(ev, "v3", "start")[1] and
          not alive(first(ev, "v1", "start")[1]) and not alive(first(ev, "v2", "start")[1]),
          "status: the v3 process runs, the old ones are gone", ps)
    # The socket survives a re-exec of reld (the Proc's held sockets, reexec.c).
    rc, out, err = r.relctl("daemon-reexec")
    ok = wait_for(lambda: procs(r))
    load = Load(port, clients=1)
    wait_for(lambda: load.ok >= 10)
    load.stop()
    d.tap(rc == 0 and ok and ok[0]["pid"] == pid and load.failed == 0 and load.tags.get("v3"),
          "after a re-exec of reld, the same process serves on the same socket", (rc, err, ok, load.errors[:3]))
    r.stop()


def test_ready_timeout(work):
    port = d.free_port()
    r = d.Reld(work)
    rc, out, err = r.relctl("install", release(work, "1", port, "    stop_signal: SIGINT\n    ready: notify\n",
                                               ["--graceful", "SIGINT"]))
    before = wait_for(lambda: procs(r))
    load = Load(port)
    wait_for(lambda: load.ok >= 20)
    rc, out, err = r.relctl("install", release(work, "2", port,
                                               "    stop_signal: SIGINT\n    ready: notify\n"
                                               "    ready_timeout_ms: 400\n", ["--ready", "never", "--graceful",
                                                                               "SIGINT"]))
    seen = load.ok
    wait_for(lambda: load.ok >= seen + 20)
    load.stop()
    lines = [line for line in err.splitlines() if "not ready within" in line]
    d.tap(rc != 0 and len(lines) == 1 and
          re.search(r"web/web\[\d+\]: not ready within 400 ms \(no READY=1 on its NOTIFY_SOCKET\): stopped; "
                    r"process \d+ serves on", lines[0]),
          "a new version that never says READY=1: the upgrade fails with one line naming the process and the wait",
          out + err)
    ev = events(work)
    v2 = first(ev, "v2", "start")
    after = procs(r)
    d.tap(before and after and after[0]["pid"] == before[0]["pid"] and after[0]["vsn"] == "1.0" and
          not first(ev, "v1", "stopping"),
          "the old process was never told to stop and runs on, on release 1", (before, after, ev))
    stopped = wait_for(lambda: first(events(work), "v2", "stopping"))
    d.tap(v2 and stopped and stopped[3].startswith("stopping signal=SIGINT") and wait_for(lambda: not alive(v2[1])),
          "the new process (which served without saying READY=1) was stopped with its stop_signal, and is gone",
          events(work))
    d.tap(load.failed == 0 and load.tags.get("v1", 0) > 0,
          f"{load.ok} requests, 0 failed (answered by v1, and by v2 until it stopped)",
          f"{load.tags} {load.errors[:5]}")
    rc, out, err = r.relctl("status")
    d.tap(re.search(r"\b1\b.*current", out) or re.search(r"current.*\b1\b", out),
          "release 1 is still the current release", out)
    r.stop()


def test_new_version_ends(work):
    """A new version that exits at once (exit 3, one line of output): the
    upgrade fails with one line quoting it; the old process never stops."""
    port = d.free_port()
    r = d.Reld(work)
    rc, out, err = r.relctl("install", release(work, "1", port, "    ready: notify\n", []))
    before = wait_for(lambda: procs(r))
    tar = release(work, "2", port, "    ready: notify\n", [])
    with tarfile.open(tar) as t:  # the same release, its server replaced by one that fails
        t.extractall(os.path.join(work, "bad"))
    bad = os.path.join(work, "bad", "lib", "web-2.0", "bin", "server")
    with open(bad, "w") as f:
        f.write("#!/bin/sh\necho cannot open the database\nexit 3\n")
    with tarfile.open(tar, "w:gz") as t:
        t.add(os.path.join(work, "bad", "releases"), "releases")
        t.add(os.path.join(work, "bad", "lib"), "lib")
    load = Load(port, clients=1)
    rc, out, err = r.relctl("install", tar)
    seen = load.ok
    wait_for(lambda: load.ok >= seen + 10)
    load.stop()
    lines = [line for line in err.splitlines() if "before it was ready" in line]
    d.tap(rc != 0 and len(lines) == 1 and
          re.search(r"web/web: its new version ended before it was ready \(its last output: cannot open the "
                    r"database\); process \d+ serves on", lines[0]),
          "a new version that exits at once: the upgrade fails with one line quoting its output", out + err)
    after = procs(r)
    d.tap(before and after and after[0]["pid"] == before[0]["pid"] and after[0]["vsn"] == "1.0" and
          not first(events(work), "v1", "stopping") and load.failed == 0 and load.tags.get("v1"),
          f"the old process was never told to stop and serves on ({load.ok} requests, 0 failed)",
          (before, after, load.errors[:3]))
    r.stop()


def test_old_dies_during_overlap(work):
    """The old run dies during the overlap and the new run then fails (not
    ready in time; or it exits): the upgrade fails with one line saying the
    old process is gone and restarted on release 1, and it is, on release
    1's definition (not the new version's)."""
    for case in ("timeout", "exits"):
        port = d.free_port()
        sub = os.path.join(work, case)
        os.makedirs(sub)
        r = d.Reld(sub)
        rc, out, err = r.relctl("install", release(sub, "1", port, "    ready: notify\n", []))
        v1 = wait_for(lambda: first(events(sub), "v1", "ready"))
        tar = release(sub, "2", port, "    ready: notify\n    ready_timeout_ms: 800\n", ["--ready", "never"])
        if case == "exits":  # a server that fails once the old one is gone
            with tarfile.open(tar) as t:
                t.extractall(os.path.join(sub, "bad"))
            with open(os.path.join(sub, "bad", "lib", "web-2.0", "bin", "server"), "w") as f:
                f.write(f"#!/bin/sh\necho \"0 $$ v2 start\" >>{sub}/events.log\n"
                        f"while kill -0 {v1[1]} 2>/dev/null; do sleep 0.05; done\necho no database\nexit 3\n")
            with tarfile.open(tar, "w:gz") as t:
                t.add(os.path.join(sub, "bad", "releases"), "releases")
                t.add(os.path.join(sub, "bad", "lib"), "lib")
        up = subprocess.Popen([A.relctl, "install", tar], env=dict(os.environ, RELD_SOCKET=r.sock),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        beside = wait_for(lambda: "started beside" in open(os.path.join(sub, "reld.log"), errors="replace").read())
        os.kill(v1[1], 9)
        out, err = up.communicate(timeout=30)
        lines = [line for line in err.splitlines() if "web/web" in line]
        d.tap(beside and up.returncode != 0 and len(lines) == 1 and
              "the old process ended meanwhile and is restarted on release 1" in lines[0] and
              "serves on" not in lines[0], f"{case}: the upgrade fails with one line: the old process is gone, "
              "restarted on release 1", err)
        again = wait_for(lambda: [e for e in events(sub) if e[2] == "v1" and e[3] == "ready" and e[1] != v1[1]])
        ps = wait_for(lambda: [p for p in procs(r) if again and p["pid"] == again[0][1]])
        v2 = [e for e in events(sub) if e[2] == "v2" and e[3].startswith("start")]
        d.tap(again and ps and ps[0]["vsn"] == "1.0" and len(v2) <= 1 and current(r) == ["1.0"],
              f"{case}: the process restarted on release 1's definition (a v1 server), the new version not again",
              (again, ps, v2, open(os.path.join(sub, "reld.log"), errors="replace").read()[-2000:]))
        if case == "exits":
            h = history(r)
            d.tap(v2 and ("process_start", v2[0][1]) in h and ("process_exit", v2[0][1]) in h,
                  "exits: the history has the new version's start and its end", (v2, h))
        r.stop()


def test_old_dies_commit(work):
    """The old run dies during the overlap, then the new run is ready: the
    upgrade succeeds; the old run's end is in the history and told as an
    event, as any process's end."""
    port = d.free_port()
    r = d.Reld(work)
    rc, out, err = r.relctl("install", release(work, "1", port, "    ready: notify\n", []))
    v1 = wait_for(lambda: first(events(work), "v1", "ready"))
    up = subprocess.Popen([A.relctl, "install", release(work, "2", port, "    ready: notify\n", ["--ready-delay", "1"])],
                          env=dict(os.environ, RELD_SOCKET=r.sock), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
    wait_for(lambda: first(events(work), "v2", "start"))
    os.kill(v1[1], 9)
    out, err = up.communicate(timeout=30)
    h = history(r)
    log = open(os.path.join(work, "reld.log"), errors="replace").read()
    d.tap(up.returncode == 0 and ("process_exit", v1[1]) in h and
          re.search(rf"web/web \(pid {v1[1]}\) ended during its replacement: killed by signal 9.*event=process_exited",
                    log), "the old run's end during the overlap: in the history and an event; the upgrade succeeds",
          (up.returncode, err, h, log[-1500:]))
    r.stop()


def test_reexec_while_discarded_run_stops(work):
    """A new version not kept that ignores its stop_signal (SIGWINCH) until
    its SIGKILL: a re-exec of reld meanwhile is refused (the new reld would
    know nothing of that run), and goes through once it is gone."""
    port = d.free_port()
    r = d.Reld(work)
    rc, out, err = r.relctl("install", release(work, "1", port, "    ready: notify\n", []))
    v1 = wait_for(lambda: first(events(work), "v1", "ready"))
    rc, out, err = r.relctl("install", release(work, "2", port, "    ready: notify\n    ready_timeout_ms: 300\n"
                                               "    stop_signal: SIGWINCH\n", ["--ready", "never"], shutdown_ms=1500))
    v2 = first(events(work), "v2", "start")
    rc2, out2, err2 = r.relctl("daemon-reexec")
    d.tap(rc != 0 and v2 and alive(v2[1]) and rc2 != 0 and f"(pid {v2[1]}) is still stopping" in err2,
          "a re-exec while the new version not kept is still stopping is refused, saying so", (rc, v2, rc2, err2))
    gone = wait_for(lambda: not alive(v2[1]), timeout=10)
    rc3, out3, err3 = r.relctl("daemon-reexec")
    ps = wait_for(lambda: procs(r))
    d.tap(gone and rc3 == 0 and ps and ps[0]["pid"] == v1[1] and ps[0]["vsn"] == "1.0",
          "once it is gone, the re-exec goes through; the old process serves on", (gone, rc3, err3, ps))
    r.stop()


def test_reld_stops_during_overlap(work):
    """reld told to stop while a new version is not ready yet: both
    processes go, reld exits 0 (no sanitizer report: the Successor and the
    run before freed on the way)."""
    port = d.free_port()
    r = d.Reld(work)
    rc, out, err = r.relctl("install", release(work, "1", port, "    ready: notify\n", []))
    v1 = wait_for(lambda: first(events(work), "v1", "ready"))
    up = subprocess.Popen([A.relctl, "install", release(work, "2", port, "    ready: notify\n",
                                                        ["--ready-delay", "30"])],
                          env=dict(os.environ, RELD_SOCKET=r.sock), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    v2 = wait_for(lambda: first(events(work), "v2", "start"))
    code = r.stop()
    up.communicate(timeout=30)
    d.tap(v1 and v2 and code == 0 and wait_for(lambda: not alive(v1[1]) and not alive(v2[1]), timeout=10),
          "reld stopped while the new version is not ready: exit 0, the old and the new process gone",
          (code, v1, v2, open(os.path.join(work, "reld.log"), errors="replace").read()[-1500:]))


def test_reld_stops_while_retiring(work):
    """reld told to stop while the old run is still stopping after the new
    one was committed (it ignores its stop_signal, SIGWINCH, until its
    SIGKILL): the process's definition is the new release's, kept until
    every process has stopped (an ASan build reported a use after free)."""
    port = d.free_port()
    r = d.Reld(work)
    rc, out, err = r.relctl("install", release(work, "1", port, "    ready: notify\n    stop_signal: SIGWINCH\n", [],
                                               shutdown_ms=1000))
    v1 = wait_for(lambda: first(events(work), "v1", "ready"))
    up = subprocess.Popen([A.relctl, "install", release(work, "2", port, "    ready: notify\n", [])],
                          env=dict(os.environ, RELD_SOCKET=r.sock), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    retiring = wait_for(lambda: "told to stop (SIGWINCH)" in open(os.path.join(work, "reld.log"),
                                                                  errors="replace").read())
    v2 = first(events(work), "v2", "start")
    code = r.stop()
    up.communicate(timeout=30)
    log = open(os.path.join(work, "reld.log"), errors="replace").read()
    d.tap(v1 and v2 and retiring and code == 0 and "Sanitizer" not in log and
          wait_for(lambda: not alive(v1[1]) and not alive(v2[1]), timeout=10),
          "reld stopped while the old run retires: exit 0, both runs gone", (code, v1, v2, log[-1500:]))


def test_ready_health(work):
    port = d.free_port()
    check = f"    health: {{exec: [/bin/sh, -c, 'test -e {work}/ready-$RELD_PID'], interval_ms: 100}}\n"
    extra = "    ready: health\n    ready_timeout_ms: 10000\n" + check
    r = d.Reld(work)
    rc, out, err = r.relctl("install", release(work, "1", port, extra, ["--ready", "file"]))
    wait_for(lambda: procs(r))
    load = Load(port)
    wait_for(lambda: load.ok >= 20)
    rc, out, err = r.relctl("install", release(work, "2", port, extra, ["--ready", "file", "--ready-delay", "0.4"]))
    seen = load.ok
    wait_for(lambda: load.ok >= seen + 20)
    load.stop()
    ev = events(work)
    ready, stopping = first(ev, "v2", "ready"), first(ev, "v1", "stopping")
    d.tap(rc == 0 and ready and stopping and ready[0] < stopping[0] and
          stopping[3].startswith("stopping signal=SIGTERM"),
          "ready: health: the old process is told to stop (SIGTERM, the default) once the new one passes its check",
          (out + err, ev))
    d.tap(load.failed == 0 and load.tags.get("v2"), f"{load.ok} requests, 0 failed", f"{load.tags} {load.errors[:5]}")
    r.stop()


def test_overlap_false(work):
    port = d.free_port()
    extra = "    overlap: false\n    stop_signal: SIGWINCH\n"
    r = d.Reld(work)
    rc, out, err = r.relctl("install", release(work, "1", port, extra, ["--graceful", "SIGWINCH", "--ready", "none"]))
    wait_for(lambda: procs(r))
    load = Load(port)
    wait_for(lambda: load.ok >= 20)
    rc, out, err = r.relctl("install", release(work, "2", port, extra, ["--graceful", "SIGWINCH", "--ready", "none"]))
    seen = load.ok
    wait_for(lambda: load.ok >= seen + 20)
    load.stop()
    ev = events(work)
    stopping, start = first(ev, "v1", "stopping"), first(ev, "v2", "start")
    d.tap(rc == 0 and stopping and start and stopping[3].startswith("stopping signal=SIGWINCH"),
          "overlap: false: the old process gets its stop_signal, SIGWINCH", (out + err, ev))
    log = open(os.path.join(work, "reld.log"), errors="replace").read()
    m = re.search(r"web/web\[(\d+)\] stopped .*?web/web\[(\d+)\] started", log[log.find("upgrade from 1"):], re.S)
    d.tap(m and int(m.group(1)) == stopping[1] and int(m.group(2)) == start[1] and "started beside" not in log,
          "and has exited before the new one starts (reld's log: stopped, then started)", log[-1500:])
    d.tap(load.failed == 0 and load.tags.get("v2"), f"{load.ok} requests, 0 failed (reld holds the socket meanwhile)",
          f"{load.tags} {load.errors[:5]}")
    r.stop()


def main():
    global A
    ap = argparse.ArgumentParser()
    ap.add_argument("--reld", required=True)
    ap.add_argument("--relctl", required=True)
    A = ap.parse_args()
    d.A = argparse.Namespace(reld=A.reld, relctl=A.relctl, shop=None)
    d.DEFAULT_CONFIG = "min_healthy_ms: 100\n"
    return d.run_tests((test_overlap_notify, test_ready_timeout, test_new_version_ends, test_old_dies_during_overlap, test_old_dies_commit,
                        test_reexec_while_discarded_run_stops, test_reld_stops_during_overlap,
                        test_reld_stops_while_retiring, test_ready_health, test_overlap_false),
                       "reld-replace-")


if __name__ == "__main__":
    sys.exit(main())
