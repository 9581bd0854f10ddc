#!/usr/bin/env python3
"""End to end: reld re-executes itself in place (relctl daemon-reexec,
issue 17): the kvcounter example under load through several re-execs
loses no request and keeps its pids, reld keeps its pid, status is the
same, sd_notify says RELOADING=1 then READY=1; a re-exec into a missing
binary and one while an install waits for its health verdict are refused
and change nothing; a state that cannot be used, a crash at the exec and a
crash of the new reld before it is ready all end as a crash of reld does:
the permanent release boots again. Prints TAP.

Usage: reexec.py --reld PATH --relctl PATH --kvroot KVCOUNTER_ROOT --loadgen PATH
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import daemon as d  # noqa: E402
import trusted as t  # noqa: E402  (kv_release, Load, wait_for, status)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "runtime"))
from hotcode import free_port, request  # noqa: E402

A = None
N_REEXEC = 5


def since_ms(iso):
    """An ISO time of status as milliseconds. reld prints monotonic times
    as wall clock times, computed at each call: they may differ by a
    millisecond from one call to the next: same() allows 5 ms."""
    import datetime
    t = datetime.datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
    return round(t.timestamp() * 1000)


def same_status(st):
    """What must not change across a re-exec: releases, processes (pids,
    states, restarts, modules), their health (state, since, restarts) and
    the last outcome."""
    procs = [(p["app"], p["vsn"], p["process"], p["pid"], p["state"], p["restarts"], json.dumps(p["modules"]),
              p["health"]["state"], since_ms(p["health"]["since"]), p["health"]["restarts"])
             for p in st.get("processes", [])]
    return {"current": st.get("current"), "permanent": st.get("permanent"), "releases": st.get("releases"),
            "last_outcome": st.get("last_outcome"), "processes": procs}


def same(a, b):
    """same_status(a) == same_status(b), health's since to 5 ms."""
    sa, sb = same_status(a), same_status(b)
    pa, pb = sa.pop("processes"), sb.pop("processes")
    return sa == sb and len(pa) == len(pb) and all(
        x[:8] == y[:8] and x[9:] == y[9:] and abs(x[8] - y[8]) <= 5 for x, y in zip(pa, pb))


def reld_pid_children(r):
    kids = []
    for task in os.listdir(f"/proc/{r.p.pid}/task"):
        with open(f"/proc/{r.p.pid}/task/{task}/children") as f:
            kids += [int(x) for x in f.read().split()]
    return sorted(kids)


class Notify:
    """A NOTIFY_SOCKET that collects what reld says, in order."""

    def __init__(self, work):
        self.path = os.path.join(work, "notify.sock")
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.s.bind(self.path)
        self.s.settimeout(0.2)
        self.msgs, self.stop = [], False
        self.th = threading.Thread(target=self.run, daemon=True)
        self.th.start()

    def run(self):
        while not self.stop:
            try:
                self.msgs.append(self.s.recv(4096).decode())
            except OSError:
                pass

    def close(self):
        self.stop = True
        self.th.join()
        self.s.close()


def healthy(r):
    ps = t.status(r)["processes"]
    return ps and all(p["health"]["state"] == "healthy" for p in ps) and ps


def test_reexec_under_load(work):
    port = free_port()
    notify = Notify(work)
    os.environ["NOTIFY_SOCKET"] = notify.path
    try:
        r = d.Reld(work)
    finally:
        del os.environ["NOTIFY_SOCKET"]
    rc, out, err = r.relctl("install", "--commit", "--min-healthy", "100", t.kv_release(work, port, "1", "1.0.0"))
    r.relctl("unpack", t.kv_release(work, port, "2", "2.0.0"))
    d.tap(rc == 0 and t.wait_for(lambda: healthy(r)), "kvcounter 1 runs, healthy, permanent", out + err)
    for _ in range(7):
        request(port, "INCR kept")
    before = t.status(r)
    kids = reld_pid_children(r)
    load = t.Load(port, 4.0)
    replies = []
    for _ in range(N_REEXEC):
        rc, out, err = r.relctl("daemon-reexec", "--json")
        replies.append((rc, json.loads(out) if rc == 0 else err))
        time.sleep(0.3)
    res = load.result()
    d.tap(all(rc == 0 and rep["pid"] == r.p.pid for rc, rep in replies),
          f"relctl daemon-reexec x{N_REEXEC}: each answered by the new reld, same pid {r.p.pid}", replies)
    d.tap(r.alive() if hasattr(r, "alive") else r.p.poll() is None, "reld still runs")
    d.tap(res["failed"] == 0 and res["refused"] == 0 and res["ok"] > 1000,
          f"under load: {res['ok']} requests ok, {res['failed']} failed, {res['refused']} refused", res)
    after = t.status(r)
    d.tap(same(after, before), "status identical before and after (pids, restarts, health)",
          {k: (v, same_status(after)[k]) for k, v in same_status(before).items() if same_status(after)[k] != v})
    d.tap(reld_pid_children(r) == kids, f"the same children of reld: {kids}", reld_pid_children(r))
    d.tap(request(port, "GET kept") == "OK kept 7", "the service kept its state", request(port, "GET kept"))
    log = open(os.path.join(work, "reld.log"), errors="replace").read()
    d.tap(log.count("re-executed in") == N_REEXEC, "reld logs each re-exec and its time", log[-2000:])
    msgs = notify.msgs
    seq = [m.split("\n")[0] for m in msgs if m.startswith(("RELOADING=1", "READY=1"))]
    d.tap(seq[-2 * N_REEXEC:] == ["RELOADING=1", "READY=1"] * N_REEXEC and f"MAINPID={r.p.pid}" in msgs[-1],
          "sd_notify: RELOADING=1 then READY=1 (and MAINPID) at each re-exec", msgs)
    notify.close()
    rc, out, err = r.relctl("history", "--json")
    kinds = [e["kind"] for e in json.loads(out)["events"]] if rc == 0 else []
    d.tap(kinds.count("reexec") == N_REEXEC, "history: one reexec event per re-exec", kinds)
    # An upgrade after the re-execs: the control channel is the new reld's.
    load = t.Load(port, 2.0)
    rc, out, err = r.relctl("upgrade", "--min-healthy", "100", "2")
    res = load.result()
    d.tap(rc == 0 and request(port, "VERSION") == "OK kv_server 2" and request(port, "GET kept") == "OK kept 7",
          "an upgrade after the re-execs works, state kept", out + err)
    d.tap(res["failed"] == 0 and res["refused"] == 0, f"no request failed in that upgrade ({res['ok']} ok)", res)
    d.tap(t.kv_pid(r) == before["processes"][0]["pid"], "the same kv pid after the upgrade")
    r.stop()


def test_check_in_flight(work):
    """An exec health check's command running at the exec is a child the
    state does not name: the new reld kills and reaps it (no zombie), and
    the checks go on."""
    port = free_port()
    r = d.Reld(work)
    path = t.kv_release(work, port, "1", "1.0.0", health=False)
    # The same release with an exec check that is almost always running.
    src = os.path.join(work, "src-1", "lib", "kvcounter-1.0.0", "app.yaml")
    text = open(src).read().replace("    shutdown_ms: 2000\n", "    shutdown_ms: 2000\n    health:\n"
                                    "      - {exec: [/bin/sleep, \"1\"], interval_ms: 100, timeout_ms: 3000}\n")
    open(src, "w").write(text)
    import tarfile
    with tarfile.open(path, "w:gz") as tf:
        tf.add(os.path.join(work, "src-1", "releases"), "releases")
        tf.add(os.path.join(work, "src-1", "lib"), "lib")
    rc, out, err = r.relctl("install", "--min-healthy", "100", path)
    ok = rc == 0 and t.wait_for(lambda: healthy(r))
    if not ok:
        d.tap(False, "install of kvcounter with an exec health check", out + err)
    kv = t.kv_pid(r)
    sleeps = lambda: [p for p in reld_pid_children(r) if p != kv]  # noqa: E731
    running = t.wait_for(sleeps)
    rc, out, err = r.relctl("daemon-reexec")

    def zombies():
        z = []
        for p in reld_pid_children(r):
            try:
                if open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":
                    z.append(p)
            except OSError:
                pass
        return z
    gone = t.wait_for(lambda: all(p not in reld_pid_children(r) for p in running), timeout=5)
    again = t.wait_for(lambda: [p for p in sleeps() if p not in running], timeout=5)
    d.tap(ok and running and rc == 0 and gone and not zombies() and again and t.kv_pid(r) == kv,
          "a health check's command running at the exec is killed and reaped; checks go on, the process is kept",
          (ok, running, rc, err, reld_pid_children(r), zombies()))
    r.stop()


def test_refusals(work):
    port = free_port()
    binary = os.path.join(work, "reld-copy")
    shutil.copy(A.reld, binary)
    d.A.reld = binary
    try:
        r = d.Reld(work)
    finally:
        d.A.reld = A.reld
    rc, out, err = r.relctl("install", "--commit", "--min-healthy", "100", t.kv_release(work, port, "1", "1.0.0"))
    r.relctl("unpack", t.kv_release(work, port, "2", "2.0.0"))
    t.wait_for(lambda: healthy(r))
    before = t.status(r)
    os.unlink(binary)
    rc, out, err = r.relctl("daemon-reexec")
    d.tap(rc == 1 and f"{binary}: No such file or directory" in err and "reld goes on as it was" in err,
          "a re-exec into a missing binary is refused with one line", err)
    d.tap(r.p.poll() is None and same(t.status(r), before),
          "and nothing changed: same reld, same processes")
    rc, out, err = r.relctl("status")
    d.tap(rc == 0, "reld still answers", err)
    # A file that passes the check but that execve refuses (ENOEXEC): reld
    # goes on, every descriptor it had marked for the exec closed on exec
    # again (a process started afterwards inherits none of them).
    kv = t.kv_pid(r)
    fds_before = len(os.listdir(f"/proc/{kv}/fd"))
    with open(binary, "w") as f:
        f.write("not a program\n")
    os.chmod(binary, 0o755)
    rc, out, err = r.relctl("daemon-reexec")
    d.tap(rc == 1 and "execve" in err and "Exec format error" in err and "reld goes on as it was" in err,
          "a binary execve refuses: the re-exec fails with one line", err)
    d.tap(r.p.poll() is None and same(t.status(r), before), "and reld goes on, unchanged")
    os.kill(kv, 9)
    kv2 = t.wait_for(lambda: t.kv_pid(r) not in (0, kv) and t.kv_pid(r))
    t.wait_for(lambda: healthy(r))
    fds_after = len(os.listdir(f"/proc/{kv2}/fd")) if kv2 else -1
    d.tap(fds_after == fds_before, f"a process started after it inherits no descriptor of reld's ({fds_after} open, "
          f"as its first run: {fds_before})", os.listdir(f"/proc/{kv2}/fd") if kv2 else "")
    shutil.copy(A.reld, binary)
    # While an install waits for its health verdict: refused.
    up = subprocess.Popen([A.relctl, "upgrade", "--min-healthy", "3000", "2"], env=dict(os.environ, RELD_SOCKET=r.sock),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t.wait_for(lambda: t.status(r).get("health_gate"), timeout=10)
    rc, out, err = r.relctl("daemon-reexec")
    d.tap(rc == 1 and "cannot re-execute reld now: an install waits for its health verdict" in err,
          "a re-exec while an upgrade's health gate waits is refused", err)
    up.communicate(timeout=60)
    d.tap(up.returncode == 0 and request(port, "VERSION") == "OK kv_server 2", "that upgrade went on")
    rc, out, err = r.relctl("daemon-reexec")
    d.tap(rc == 0 and "reld re-executed" in out, "once it ended, the re-exec goes", out + err)
    r.stop()


def test_unusable_state(work):
    """A state reld cannot use: it kills what it cannot take over and starts
    as after a crash (the permanent release boots)."""
    port = free_port()
    r = d.Reld(work)
    r.relctl("install", "--commit", "--min-healthy", "100", t.kv_release(work, port, "1", "1.0.0"))
    t.wait_for(lambda: healthy(r))
    r.stop()
    for what, text in (("garbage", b"\x00not json"), ("a pid that is not reld's child",
                                                       json.dumps({"version": 1, "fds": [], "manager": {
                                                           "running": "1", "supervisor": {"apps": [{
                                                               "name": "kvcounter", "vsn": "1.0.0", "children": [{
                                                                   "process": "kv", "proc": {
                                                                       "pid": 1, "ctl_fd": -1, "listen_fds": [],
                                                                       "pipes": []}}]}]}}}).encode())):
        fd = os.memfd_create("state", 0)
        os.write(fd, text)
        log0 = len(open(os.path.join(work, "reld.log"), errors="replace").read())
        args = [A.reld, "--root", r.root, "--socket", r.sock, f"--reexec-state={fd}"]
        logf = open(os.path.join(work, "reld.log"), "a")
        p = subprocess.Popen(args, stderr=logf, pass_fds=(fd,))
        os.close(fd)
        r.p, r.log = p, logf
        ok = t.wait_for(lambda: healthy(r), timeout=15)
        log = open(os.path.join(work, "reld.log"), errors="replace").read()[log0:]
        lines = [ln for ln in log.splitlines() if "re-executed, but" in ln]
        d.tap(len(lines) == 1 and ok and request(port, "INCR x").startswith("OK"),
              f"a state with {what}: one line, and the permanent release boots", log[-1500:])
        r.stop()


def test_crash_points(work):
    """Under -Dtest_hooks: reld killed at the exec, and the new reld killed
    before it is ready. Either way nothing half-done: the processes went
    with reld, as in any crash, and the next start boots the permanent
    release."""
    port = free_port()
    for at in ("reexec:exec", "reexec:restored"):
        os.environ["RELD_TEST_CRASH_AT"] = at
        try:
            r = d.Reld(work)
        finally:
            del os.environ["RELD_TEST_CRASH_AT"]
        r.relctl("install", "--commit", "--min-healthy", "100", t.kv_release(work, port, "1", "1.0.0"))
        t.wait_for(lambda: healthy(r))
        kv = t.kv_pid(r)
        rc, out, err = r.relctl("daemon-reexec")
        r.p.wait(10)
        if r.p.returncode != -9:
            d.skip(f"crash point {at}", "not a -Dtest_hooks build")
            r.stop()
            return
        gone = t.wait_for(lambda: not os.path.exists(f"/proc/{kv}"), timeout=10)
        r.log.close()
        r = d.Reld(work)
        ok = t.wait_for(lambda: healthy(r), timeout=15)
        d.tap(rc != 0 and gone and ok and t.kv_pid(r) != kv and request(port, "INCR y").startswith("OK"),
              f"killed at {at}: its processes went with it; the next start boots the permanent release",
              (rc, out, err, gone, ok))
        r.stop()


def main():
    global A
    ap = argparse.ArgumentParser()
    ap.add_argument("--reld", required=True)
    ap.add_argument("--relctl", required=True)
    ap.add_argument("--kvroot", required=True)
    ap.add_argument("--loadgen", required=True)
    A = ap.parse_args()
    t.A = A
    d.A = argparse.Namespace(reld=A.reld, relctl=A.relctl, shop=None)
    return d.run_tests((test_reexec_under_load, test_check_in_flight, test_refusals, test_unusable_state,
                        test_crash_points), "reld-reexec-")


if __name__ == "__main__":
    sys.exit(main())
