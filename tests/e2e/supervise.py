#!/usr/bin/env python3
"""End to end: reld supervising real processes. Prints TAP.

Usage: supervise.py --reld PATH --relctl PATH --kvroot KVCOUNTER_ROOT --loadgen PATH
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import daemon as d  # noqa: E402  (its Reld, tap and counters)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "runtime"))
from hotcode import free_port, request  # noqa: E402


def kv_tarball(work, vsn, port, port2=None):
    """Release vsn of the kvcounter example, listening on port; with port2,
    a second process kv2 of the same application listens there."""
    src = os.path.join(work, f"kvsrc-{vsn}")
    shutil.copytree(A.kvroot, src)
    app = os.path.join(src, "lib", f"kvcounter-{vsn}.0.0", "app.yaml")
    text = open(app).read()
    if port2:
        block = text[text.index("  - name: kv\n"):text.index("appup:") if "appup:" in text else len(text)]
        text = text.replace(block, block + block.replace("name: kv\n", "name: kv2\n").replace("17411", str(port2)))
    text = text.replace("127.0.0.1:17411", f"127.0.0.1:{port}")
    open(app, "w").write(text)
    path = os.path.join(work, f"kv-{vsn}.tar.gz")
    with tarfile.open(path, "w:gz") as t:
        t.add(os.path.join(src, "releases", vsn), f"releases/{vsn}")
        t.add(os.path.join(src, "lib", f"kvcounter-{vsn}.0.0"), f"lib/kvcounter-{vsn}.0.0")
    return path


def status(r):
    rc, out, err = r.relctl("status", "--json")
    return json.loads(out) if rc == 0 else {"processes": []}


def wait_for(pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    return pred()


def reld_with(root, **hooks):
    """A reld on root (made if missing) with test hooks in its environment
    (docs/daemon.md), e.g. RELD_TEST_FAIL_AT="6"."""
    os.makedirs(root, exist_ok=True)
    os.environ.update(hooks)
    try:
        return d.Reld(root)
    finally:
        for k in hooks:
            del os.environ[k]


def kv_reld(root, work, running, unpacked, **hooks):
    """A reld on root running kvcounter release `running`, with release
    `unpacked` unpacked (tarballs made in work); returns it and the port."""
    port = free_port()
    r = reld_with(root, **hooks)
    r.relctl("install", kv_tarball(work, running, port))
    r.relctl("unpack", kv_tarball(work, unpacked, port))
    wait_for(lambda: versions(r))
    return r, port


def relctl_background(r, *args):
    return subprocess.Popen([A.relctl, *args], env=dict(os.environ, RELD_SOCKET=r.sock), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def timed_status(r):
    t0 = time.monotonic()
    st = status(r)
    return st, time.monotonic() - t0


def test_kvcounter(work):
    port = free_port()
    r = d.Reld(work)
    rc, out, err = r.relctl("install", kv_tarball(work, "1", port))
    d.tap(rc == 0 and "installed release 1" in out, "install a tarball: unpacked and started", err)
    procs = wait_for(lambda: [p for p in status(r)["processes"] if p["modules"]])
    p = procs[0] if procs else {}
    mods = [(m["name"], m["version"]) for m in p.get("modules") or []]
    d.tap(p.get("state") == "running" and mods == [("kv_server", "1")],
          "status: kvcounter/kv running kv_server 1", p)
    d.tap(request(port, "INCR a") == "OK a 1", "the service answers on the socket reld holds")
    rc, out, err = r.relctl("remove", "1")
    d.tap(rc == 1 and err.strip() == "relctl: release 1 is running; it cannot be removed",
          "remove of the running release is refused", err)

    load = subprocess.Popen([A.loadgen, "--port", str(port), "--rate", "1000", "--duration", "2.5", "--conns", "4",
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.8)
    os.kill(p["pid"], signal.SIGKILL)
    out, _ = load.communicate(timeout=30)
    res = json.loads(out.strip().splitlines()[-1])
    after = wait_for(lambda: [x for x in status(r)["processes"] if x["pid"] and x["pid"] != p["pid"]])
    d.tap(after and after[0]["restarts"] == 1, "kill -9: the permanent process is restarted", after)
    d.tap(res["refused"] == 0 and res["ok"] > 1500,
          f"no connection refused across the restart ({res['ok']} ok, {res['failed']} failed in flight, "
          f"{res['refused']} refused)", res)

    rc, out, err = r.relctl("make-permanent")
    d.tap(rc == 0, "make-permanent", err)
    r.stop()
    log = open(os.path.join(work, "reld.log")).read()
    d.tap(re.search(r"kvcounter/kv\[\d+\] stopped", log) is not None, "reld stops its processes when it stops")

    r = d.Reld(work)
    booted = wait_for(lambda: [x for x in status(r)["processes"] if x["state"] == "running" and x["modules"]])
    d.tap(booted and request(port, "VERSION") == "OK kv_server 1", "restarted reld boots the permanent release")
    rc, out, err = r.relctl("history", "--json")
    kinds = [e["kind"] for e in json.loads(out)["events"]]
    d.tap("boot" in kinds and "process_exit" in kinds and "process_restart" in kinds,
          "history: starts, exits, restarts and the boot", kinds)
    rc, out, err = r.relctl("install", "1")
    d.tap(rc == 0 and "already running" in out, "install of the running release changes nothing (and succeeds)", out + err)
    rc, out, err = r.relctl("install", kv_tarball(work, "2", port))
    d.tap(rc == 0 and "upgrade from 1 to 2" in out and request(port, "VERSION") == "OK kv_server 2",
          "install of a tarball over a running release is a live upgrade", out + err)

    # Restart intensity: too many crashes, and the application is stopped.
    for _ in range(8):
        cur = wait_for(lambda: [x for x in status(r)["processes"] if x["pid"]], timeout=2)
        if not cur:
            break
        os.kill(cur[0]["pid"], signal.SIGKILL)
        time.sleep(0.15)
    st = wait_for(lambda: [x for x in status(r)["processes"] if x["state"] == "stopped"], timeout=5)
    rc, out, err = r.relctl("history", "--json")
    limit = [e for e in json.loads(out)["events"] if e["kind"] == "restart_limit"]
    d.tap(st and limit and "more than 5 restarts" in limit[0]["detail"]["reason"],
          "beyond the restart intensity the application is stopped and it is recorded", limit or st)
    r.stop()


def tar_release(src, path):
    """Writes src's releases/ and lib/ as the tarball path; returns path."""
    with tarfile.open(path, "w") as t:
        t.add(os.path.join(src, "releases"), "releases")
        t.add(os.path.join(src, "lib"), "lib")
    return path


def variant_tarball(work, port, vsn, module_file, base="2.0.0", edit=lambda t: t):
    """Release vsn (e.g. "2.1"): kvcounter `base`'s definitions as version
    vsn.0 (app.yaml passed through edit), with kv_server.so replaced by
    module_file (bytes or a path)."""
    src = os.path.join(work, f"var-{vsn}")
    app = f"kvcounter-{vsn}.0"
    shutil.copytree(os.path.join(A.kvroot, "lib", f"kvcounter-{base}"), os.path.join(src, "lib", app))
    y = os.path.join(src, "lib", app, "app.yaml")
    text = open(y).read().replace(f'vsn: "{base}"', f'vsn: "{vsn}.0"').replace("127.0.0.1:17411",
                                                                                f"127.0.0.1:{port}")
    open(y, "w").write(edit(text))
    so = os.path.join(src, "lib", app, "modules", "kv_server.so")
    if isinstance(module_file, bytes):
        open(so, "wb").write(module_file)
    else:
        shutil.copy(module_file, so)
    os.makedirs(os.path.join(src, "releases", vsn))
    with open(os.path.join(src, "releases", vsn, "release.yaml"), "w") as f:
        f.write(f'release: kv\nvsn: "{vsn}"\napplications:\n  - {{name: kvcounter, vsn: "{vsn}.0"}}\n')
    path = os.path.join(work, f"kv-{vsn}.tar")
    return tar_release(src, path)


def versions(r):
    st = status(r)["processes"]
    return [(m["name"], m["version"]) for m in (st[0]["modules"] or [])] if st else []


def test_upgrades(work):
    port = free_port()
    r = d.Reld(work)
    r.relctl("install", kv_tarball(work, "1", port))
    for v in ("2", "3"):
        r.relctl("unpack", kv_tarball(work, v, port))
    wait_for(lambda: versions(r))
    for _ in range(5):
        request(port, "INCR kept")
    steps = [("upgrade", "2", [("kv_server", "2")]), ("downgrade", "1", [("kv_server", "1")]),
             ("upgrade", "2", [("kv_server", "2")]), ("install", "3", [("kv_server", "3"), ("kv_lib", "1")]),
             ("downgrade", "1", [("kv_server", "1")])]
    for verb, vsn, mods in steps:
        load = subprocess.Popen([A.loadgen, "--port", str(port), "--rate", "2000", "--duration", "1.5", "--conns",
                                 "8", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)
        rc, out, err = r.relctl(verb, vsn)
        res = json.loads(load.communicate(timeout=30)[0].strip().splitlines()[-1])
        d.tap(rc == 0 and res["failed"] == 0 and res["final_mismatches"] == 0 and res["ok"] > 2500,
              f"{verb} to {vsn} under load: {res['ok']} requests, 0 failed, counts kept ({out.strip()})",
              f"{out}{err}{res}")
        d.tap(versions(r) == mods and request(port, "GET kept") == "OK kept 5",
              f"{verb} to {vsn}: status shows {mods}; the counter from before every upgrade is kept", versions(r))
    d.tap(status(r)["current"] == "1" and status(r)["processes"][0]["restarts"] == 0,
          "no process was restarted; release 1 is current", status(r))
    rc, out, err = r.relctl("history", "--json")
    attempts = json.loads(out)["attempts"]
    d.tap(len(attempts) == 5 and all(a["result"] == "ok" and a["instructions"] and
                                     all(i["outcome"] == "ok" for i in a["instructions"]) for a in attempts),
          "history: five attempts, every instruction ok with its duration", attempts[-1] if attempts else out)
    rc, out, err = r.relctl("make-permanent")
    r.relctl("upgrade", "2")
    r.relctl("downgrade", "1")
    st = status(r)
    d.tap(rc == 0 and st["permanent"] == "1" and st["current"] is None,
          "back to the permanent release: it stays permanent, nothing is current", st)

    # A module that cannot load: refused at unpack (its descriptor is read
    # from the ELF file); one spoiled on disk after it: refused before the
    # point of no return.
    bad = variant_tarball(work, port, "2.9", b"not an ELF file\n")
    rc, out, err = r.relctl("unpack", bad)
    d.tap(rc == 1 and "kv_server.so: not an ELF file" in err and
          "2.9" not in [x["vsn"] for x in status(r)["releases"]],
          "a module that is no shared object is refused at unpack", err)
    r.relctl("unpack", variant_tarball(work, port, "2.1", os.path.join(A.kvroot, "lib", "kvcounter-2.0.0", "modules",
                                                                       "kv_server.so")))
    with open(os.path.join(r.root, "lib", "kvcounter-2.1.0", "modules", "kv_server.so"), "wb") as f:
        f.write(b"not an ELF file\n")
    rc, out, err = r.relctl("upgrade", "2.1")
    d.tap(rc == 1 and "cannot load" in err and "before the point of no return" in err,
          "a bad object fails the upgrade before the point of no return", err)
    st = status(r)["processes"][0]
    d.tap(versions(r) == [("kv_server", "1")] and request(port, "GET kept") == "OK kept 5" and st["restarts"] == 0,
          "the old release runs untouched, state intact, nothing restarted", st)
    d.tap(status(r)["permanent"] == "1", "release 1 is still the permanent, running release")

    # A code_change that fails: after the point of no return.
    broken = os.path.join(os.path.dirname(A.kvroot), "kv_server-2b.so")
    r.relctl("unpack", variant_tarball(work, port, "2.2", broken))
    pid = status(r)["processes"][0]["pid"]
    rc, out, err = r.relctl("upgrade", "2.2")
    d.tap(rc == 3 and "code_change_failed" in err and "ran the inverse of what was done" in err,
          "a failing code_change after the point of no return: reld runs the inverse", err)
    st = status(r)
    d.tap(request(port, "VERSION") == "OK kv_server 1" and request(port, "GET kept") == "OK kept 5" and
          st["processes"][0]["pid"] == pid and st["permanent"] == "1",
          "release 1 serves with its state, same process, still permanent", st)
    rc, out, err = r.relctl("history", "--json")
    last = json.loads(out)["attempts"][-1]
    d.tap(last["result"] == "failed" and "ran the inverse" in last["detail"] and
          any(i["outcome"].startswith("failed") for i in last["instructions"]),
          "history: the failed attempt, the failed instruction and what was done", last)

    # From 2, an upgrade that adds kv_lib and then fails in kv_server's
    # code_change: the inverse takes kv_lib out again.
    r.relctl("upgrade", "2")
    r.relctl("unpack", variant_tarball(work, port, "3.1", broken, base="3.0.0"))
    rc, out, err = r.relctl("upgrade", "3.1")
    d.tap(rc == 3 and "ran the inverse" in err and "[4/7] load kv_lib" in err,
          "2 -> 3.1: kv_lib added, kv_server's code_change fails, the inverse runs", err)
    d.tap(request(port, "VERSION") == "OK kv_server 2" and request(port, "GET kept") == "OK kept 5" and
          request(port, "TOP 1").startswith("ERR"),
          "release 2 serves with its state, and kv_lib is gone (TOP refused)", request(port, "TOP 1"))
    r.stop()


def test_crash_during_upgrade(work):
    port = free_port()
    t1, t2 = kv_tarball(work, "1", port), kv_tarball(work, "2", port)
    # The 1 -> 2 script: 1 load_object_code, 2 point_of_no_return,
    # 3 suspend, 4 load, 5 code_change, 6 resume.
    for k in (1, 2, 3, 4, 5, 6):
        root = os.path.join(work, f"crash{k}")
        r = reld_with(root, RELD_TEST_CRASH_BEFORE=str(k))
        r.relctl("install", t1)
        r.relctl("make-permanent")
        r.relctl("unpack", t2)
        pid = wait_for(lambda: [p["pid"] for p in status(r)["processes"] if p["modules"]])[0]
        rc, out, err = r.relctl("upgrade", "2")
        r.p.wait(10)
        gone = wait_for(lambda: not os.path.exists(f"/proc/{pid}") or
                        open(f"/proc/{pid}/stat").read().split()[2] == "Z", timeout=5)
        d.tap(rc == 1 and r.p.returncode == -signal.SIGKILL and gone,
              f"kill -9 of reld before instruction {k}: relctl fails, the process dies with reld", (rc, err))
        r.log.close()
        r = d.Reld(root)
        ok = wait_for(lambda: [p for p in status(r)["processes"] if p["modules"]], timeout=15)  # a loaded machine
        st = status(r)
        rc, out, err = r.relctl("history", "--json")
        h = json.loads(out)
        a = h["attempts"][-1] if h["attempts"] else {}
        # Each step is written before it runs; the suspended group 3..6 is
        # one step, its outcomes written at its resume.
        done = min(k, 3) - 1
        want = ["ok"] * done + ["interrupted"] * ((k if k < 3 else 6) - done)
        d.tap(ok and request(port, "VERSION") == "OK kv_server 1" and st["permanent"] == "1" and
              st["current"] is None and a.get("result") == "interrupted" and
              [i["outcome"] for i in a.get("instructions", [])] == want and
              any(e["kind"] == "interrupted" for e in h["events"]),
              f"restarted: release 1 serves, permanent; the attempt is 'interrupted', its instructions {want}",
              (st, a))
        r.stop()


def test_process_killed_mid_upgrade(work):
    port = free_port()
    t1, t2 = kv_tarball(work, "1", port), kv_tarball(work, "2", port)
    # Killed before load_object_code (before the point of no return), and
    # before code_change (after it): 1 load_object_code, 2 point_of_no_return,
    # 3 suspend, 4 load, 5 code_change, 6 resume.
    for k, after in ((1, False), (5, True)):
        root = os.path.join(work, f"mid{k}")
        r = reld_with(root, RELD_TEST_PAUSE_BEFORE=f"{k}:700")
        r.relctl("install", t1)
        r.relctl("unpack", t2)
        pid = wait_for(lambda: [p["pid"] for p in status(r)["processes"] if p["modules"]])[0]
        up = relctl_background(r, "upgrade", "2")
        time.sleep(0.3)
        os.kill(pid, signal.SIGKILL)
        out, err = up.communicate(timeout=30)
        want = "restarted kvcounter on release 1" if after else "before the point of no return"
        tried = "undoing the upgrade: " in err  # after the point of no return the inverse is tried first
        d.tap(up.returncode == (3 if after else 1) and want in err and tried == after,  # rolled back / refused
              f"process killed before instruction {k}: the upgrade fails and reld says what it did", err)
        served = wait_for(lambda: [p for p in status(r)["processes"] if p["pid"] and p["pid"] != pid and p["modules"]])
        d.tap(served and request(port, "VERSION") == "OK kv_server 1" and status(r)["current"] == "1",
              f"process killed before instruction {k}: release 1 serves again, still current", status(r))
        r.stop()


def test_status_during_upgrade(work):
    # Before the suspend: a long upgrade, the loop running.
    r, port = kv_reld(work, work, "1", "2", RELD_TEST_DELAY_BEFORE="3:1500")
    up = relctl_background(r, "upgrade", "2")
    time.sleep(0.5)
    st, took = timed_status(r)
    d.tap(st.get("upgrade") == {"from": "1", "to": "2", "direction": "upgrade", "done": 2, "of": 6} and took < 0.5,
          f"status answers during an upgrade ({took * 1000:.0f} ms) and shows instruction 2 of 6 done", st)
    rc, out, err = r.relctl("status")
    d.tap(rc == 0 and "upgrade from 1 to 2 under way: 2 of 6 instructions done" in out,
          "relctl status (and so status --watch) shows the progress", out)
    rc, out, err = r.relctl("history", "--json")
    d.tap(rc == 0 and json.loads(out)["attempts"][-1]["result"] is None, "history answers during it, unfinished")
    rc, out, err = r.relctl("downgrade", "1")
    d.tap(rc == 1 and "under way; one at a time" in err, "a second upgrade is refused meanwhile", err)
    rc, out, err = r.relctl("remove", "2")
    d.tap(rc == 1 and err.strip() == "relctl: release 2 is part of the upgrade from 1 to 2 under way; it cannot be "
          "removed", "and so is removing the release it goes to", err)
    out, err = up.communicate(timeout=30)
    d.tap(up.returncode == 0 and "relctl: [3/6] suspend kv_server" in err and "relctl: [6/6] resume" in err,
          "the relctl that asked shows the progress, instruction by instruction", err)
    d.tap(status(r).get("upgrade") is None and versions(r) == [("kv_server", "2")], "done: release 2 runs")
    r.stop()


def test_failed_downgrade(work):
    # The 2 -> 1 downgrade: 1 load_object_code, 2 point_of_no_return,
    # 3 suspend, 4 code_change down, 5 load, 6 resume. Failing at 6, after
    # the state went down to v1's array and v1 became current: the inverse
    # makes v2 current again and converts the state up again.
    port = free_port()
    root = os.path.join(work, "down")
    r = reld_with(root, RELD_TEST_FAIL_AT="6")
    r.relctl("install", kv_tarball(work, "2", port))
    r.relctl("make-permanent")
    r.relctl("unpack", kv_tarball(work, "1", port))
    wait_for(lambda: versions(r))
    for _ in range(7):
        request(port, "INCR kept")
    pid = status(r)["processes"][0]["pid"]
    rc, out, err = r.relctl("downgrade", "1")
    d.tap(rc == 3 and "failed on purpose" in err and "ran the inverse of what was done" in err,
          "a downgrade failing after the point of no return: reld runs its inverse", err)
    st = status(r)
    d.tap(versions(r) == [("kv_server", "2")] and request(port, "GET kept") == "OK kept 7" and
          request(port, "INCR kept") == "OK kept 8" and st["processes"][0]["pid"] == pid and
          st["processes"][0]["restarts"] == 0 and st["permanent"] == "2",
          "release 2 serves again in the same process, its counters converted back up", st)
    rc, out, err = r.relctl("history", "--json")
    last = json.loads(out)["attempts"][-1]
    d.tap(last["result"] == "failed" and "ran the inverse" in last["detail"] and
          [i["outcome"][:6] for i in last["instructions"]] == ["ok"] * 5 + ["failed"],
          "history: five instructions ok, the sixth failed, and the inverse", last)
    r.stop()

    # The 3 -> 1 downgrade removes kv_lib at 6 and purges it at 7; failing
    # at 8 (resume), kv_lib's state is gone: reld restarts instead.
    port = free_port()
    root = os.path.join(work, "down3")
    r = reld_with(root, RELD_TEST_FAIL_AT="8")
    src = os.path.join(work, "src3")
    os.makedirs(src)
    r.relctl("install", kv_tarball(src, "3", port))
    r.relctl("unpack", kv_tarball(src, "1", port))
    wait_for(lambda: versions(r))
    pid = status(r)["processes"][0]["pid"]
    rc, out, err = r.relctl("downgrade", "1")
    d.tap(rc == 3 and "kv_lib was removed and its state is gone" in err and "restarted kvcounter on release 3" in err,
          "a downgrade whose removal cannot be undone: reld says so and restarts on the old release", err)
    served = wait_for(lambda: [p for p in status(r)["processes"] if p["pid"] and p["pid"] != pid and p["modules"]])
    d.tap(served and request(port, "VERSION") == "OK kv_server 3" and request(port, "TOP 1").startswith("OK"),
          "release 3 serves again, kv_lib with it", served)
    r.stop()


def test_two_processes(work):
    # Two processes run kv_server: each instruction goes to both at once;
    # failing at the resume (6), the inverse brings both back with their
    # state; killing one of them mid-upgrade restarts the application.
    port, port2 = free_port(), free_port()
    r = reld_with(os.path.join(work, "two"), RELD_TEST_FAIL_AT="6")
    r.relctl("install", kv_tarball(work, "1", port, port2))
    r.relctl("unpack", kv_tarball(work, "2", port, port2))
    wait_for(lambda: len([p for p in status(r)["processes"] if p["modules"]]) == 2)
    for p_, n in ((port, 3), (port2, 5)):
        for _ in range(n):
            request(p_, "INCR kept")
    pids = sorted(p["pid"] for p in status(r)["processes"])
    rc, out, err = r.relctl("upgrade", "2")
    d.tap(rc == 3 and "ran the inverse" in err, "two processes, failing after the point of no return: the inverse", err)
    st = status(r)
    d.tap(sorted(p["pid"] for p in st["processes"]) == pids and
          all(p["modules"][0]["version"] == "1" for p in st["processes"]) and
          request(port, "GET kept") == "OK kept 3" and request(port2, "GET kept") == "OK kept 5" and
          request(port2, "VERSION") == "OK kv_server 1",
          "both serve version 1 again, each with its own state, same pids", st)
    rc, out, err = r.relctl("history", "--json")
    ins = json.loads(out)["attempts"][-1]["instructions"]
    d.tap([i["outcome"][:6] for i in ins] == ["ok"] * 5 + ["failed"], "the history shows where it failed", ins)
    r.stop()


def test_inverse_of_added_module(work):
    # 2 -> 3: 4 load kv_lib (added), 5 load kv_server, 6 code_change up, 7
    # resume. Failing at 7, after every change: the inverse converts
    # kv_server's state back, makes 2 current again and takes kv_lib out.
    r, port = kv_reld(os.path.join(work, "add"), work, "2", "3", RELD_TEST_FAIL_AT="7")
    for _ in range(4):
        request(port, "INCR kept")
    pid = status(r)["processes"][0]["pid"]
    rc, out, err = r.relctl("upgrade", "3")
    d.tap(rc == 3 and "ran the inverse" in err, "2 -> 3 failing at its resume: the inverse runs", err)
    d.tap(versions(r) == [("kv_server", "2")] and request(port, "VERSION") == "OK kv_server 2" and
          request(port, "GET kept") == "OK kept 4" and request(port, "TOP 1").startswith("ERR") and
          status(r)["processes"][0]["pid"] == pid,
          "release 2 serves with its state in the same process; kv_lib is gone", status(r))
    d.tap(status(r)["processes"][0]["modules"][0]["old_version"] is None,
          "the code the inverse made old was purged after it", status(r))
    r.stop()


def test_slow_process(work):
    r, port = kv_reld(work, work, "1", "2")
    for _ in range(3):
        request(port, "INCR kept")

    # The process computes for 1.5 s without reaching a safe point: the
    # upgrade waits for it, reld does not.
    busy = socket.create_connection(("127.0.0.1", port))
    busy.sendall(b"SLEEP 1500\n")
    time.sleep(0.1)
    up = relctl_background(r, "upgrade", "2")
    time.sleep(0.3)
    st, took = timed_status(r)
    d.tap(took < 0.5 and (st.get("upgrade") or {}).get("done") == 0,
          f"a process slow to answer: status answers meanwhile ({took * 1000:.0f} ms), the upgrade at 0 of 6", st)
    out, err = up.communicate(timeout=30)
    d.tap(up.returncode == 0 and versions(r) == [("kv_server", "2")] and request(port, "GET kept") == "OK kept 3",
          "then the upgrade goes on and completes, state kept", err)
    busy.close()

    # One that does not answer load_object_code within its 5 s: before the
    # point of no return. It stages the code late; reld's drop follows it.
    r.relctl("downgrade", "1")
    busy = socket.create_connection(("127.0.0.1", port))
    busy.sendall(b"SLEEP 6000\n")
    time.sleep(0.1)
    rc, out, err = r.relctl("upgrade", "2")
    d.tap(rc == 1 and "load_object_code kv_server: no answer in time" in err and
          "before the point of no return" in err,
          "a process that does not answer load_object_code: the upgrade fails before the point of no return", err)
    busy.recv(100)  # awake again
    busy.close()
    d.tap(request(port, "VERSION") == "OK kv_server 1" and request(port, "GET kept") == "OK kept 3",
          "release 1 serves with its state")
    rc, out, err = r.relctl("upgrade", "2")
    d.tap(rc == 0 and versions(r) == [("kv_server", "2")],
          "and the next upgrade goes through (the late-staged code was dropped: else 'already_staged')", err)

    # A suspend timeout of 300 ms that the process cannot meet: after the
    # point of no return, so the inverse runs (nothing to undo) and the
    # process, which suspends late, is resumed. reld waits 500 ms before
    # the suspend; the process starts sleeping once relctl shows the point
    # of no return passed.
    r.stop()
    port = free_port()
    root = os.path.join(work, "slow")
    r = reld_with(root, RELD_TEST_DELAY_BEFORE="3:500")
    r.relctl("install", kv_tarball(root, "1", port))
    slow = variant_tarball(root, port, "2.3", os.path.join(os.path.dirname(A.kvroot), "kv_server-2.so"),
                           edit=lambda t: t.replace('{update: kv_server, change: {advanced: "array-to-table"}}',
                                                    '{update: kv_server, change: {advanced: "array-to-table"}, '
                                                    'timeout_ms: 300}'))
    r.relctl("unpack", slow)
    wait_for(lambda: versions(r))
    request(port, "INCR kept")
    up = relctl_background(r, "upgrade", "2.3")
    seen = ""
    while "[2/6]" not in seen:  # past the point of no return; the suspend comes 500 ms later
        line = up.stderr.readline()
        seen += line
        if not line:
            break
    busy = socket.create_connection(("127.0.0.1", port))
    busy.sendall(b"SLEEP 1500\n")
    out, err = up.communicate(timeout=30)
    err = seen + err
    d.tap(up.returncode == 3 and "suspend: no answer in time" in err and "ran the inverse" in err,
          "a suspend that times out after the point of no return: reld says so and runs the inverse", err)
    busy.close()
    d.tap(request(port, "VERSION") == "OK kv_server 1" and request(port, "GET kept") == "OK kept 1" and
          status(r)["processes"][0]["restarts"] == 0,
          "release 1 serves, not left suspended, state kept, no restart", status(r))
    r.stop()


def test_soft_purge(work):
    # 2.4 keeps old code it cannot purge (post_purge soft_purge); 2.5's
    # load of kv_server wants a soft pre-purge, which reld must find
    # impossible before the point of no return while the old code is pinned.
    port = free_port()
    r = d.Reld(work)
    r.relctl("install", kv_tarball(work, "1", port))
    v2 = os.path.join(os.path.dirname(A.kvroot), "kv_server-2.so")
    r.relctl("unpack", variant_tarball(work, port, "2.4", v2, edit=lambda t: t.replace(
        'change: {advanced: "array-to-table"}}', 'change: {advanced: "array-to-table"}, post_purge: soft_purge}')))
    r.relctl("unpack", variant_tarball(work, port, "2.5", v2, edit=lambda t: t[:t.index("appup:")] + (
        'appup:\n  up:\n    - from: "2.4.0"\n      instructions:\n'
        '        - {load_module: kv_server, pre_purge: soft_purge}\n'
        '  down:\n    - to: "2.4.0"\n      instructions:\n        - {load_module: kv_server}\n')))
    wait_for(lambda: versions(r))
    request(port, "INCR kept")
    pid = status(r)["processes"][0]["pid"]
    d.tap(request(port, "HOLD 2500").startswith("OK"), "a request pins version 1 for 2.5 s")
    rc, out, err = r.relctl("upgrade", "2.4")
    mods = status(r)["processes"][0]["modules"]
    d.tap(rc == 0 and mods and mods[0]["old_version"] == "1" and mods[0]["old_pins"] == 1,
          "upgrade to 2.4: its soft post-purge leaves version 1, pinned, as old code", (err, mods))
    rc, out, err = r.relctl("upgrade", "2.5")
    d.tap(rc == 1 and "soft_purge of kv_server cannot be honoured" in err and "before the point of no return" in err
          and "[3/" not in err,
          "upgrade to 2.5 with a soft pre-purge: refused before the point of no return", err)
    st = status(r)
    d.tap(st["current"] == "2.4" and st["processes"][0]["pid"] == pid and request(port, "GET kept") == "OK kept 1" and
          st["processes"][0]["modules"][0]["staged_version"] is None,
          "2.4 runs untouched, the staged code dropped", st)
    time.sleep(2.6)
    rc, out, err = r.relctl("upgrade", "2.5")
    d.tap(rc == 0 and status(r)["current"] == "2.5" and request(port, "GET kept") == "OK kept 1",
          "once the pin is gone, the same upgrade goes through", err)
    r.stop()


def test_status_while_planning(work):
    # Reading the releases and the relup happens on a worker thread (0.5 s
    # and more for large releases); the hook makes it take 1 s here.
    r, port = kv_reld(os.path.join(work, "plan"), work, "1", "2", RELD_TEST_PLAN_DELAY_MS="1000")
    up = relctl_background(r, "upgrade", "2")
    time.sleep(0.3)
    t0 = time.monotonic()
    rc, out, err = r.relctl("status")
    took = time.monotonic() - t0
    d.tap(rc == 0 and took < 0.5 and "upgrade from 1 to 2 under way: reading the releases and the relup" in out,
          f"while an upgrade is planned, status answers ({took * 1000:.0f} ms) and says so", out)
    rc2, _, err2 = r.relctl("downgrade", "1")
    d.tap(rc2 == 1 and "under way; one at a time" in err2, "a second upgrade is refused from the start", err2)
    out, err = up.communicate(timeout=30)
    d.tap(up.returncode == 0 and versions(r) == [("kv_server", "2")], "then the upgrade runs", err)
    r.stop()


def plain_tarball(work):
    """Two applications of /bin/sh processes: front depends on back."""
    src = os.path.join(work, "plain")
    os.makedirs(os.path.join(src, "releases", "1"))
    with open(os.path.join(src, "releases", "1", "release.yaml"), "w") as f:
        f.write('release: plain\nvsn: "1"\napplications:\n  - {name: front, vsn: "1"}\n  - {name: back, vsn: "1"}\n')
    apps = {
        "back": "processes:\n"
                "  - {name: db, exec: /bin/sh, args: [-c, 'echo back db up; exec sleep 60'], restart: permanent}\n",
        "front": "applications: [back]\nprocesses:\n"
                 "  - {name: web, exec: /bin/sh, args: [-c, 'echo hello from sh; exec sleep 60'], restart: transient}\n"
                 "  - {name: once, exec: /bin/sh, args: [-c, 'echo once; exit 0'], restart: transient}\n"
                 "  - {name: temp, exec: /bin/sh, args: [-c, 'exec sleep 60'], restart: temporary}\n"
                 "  - {name: trans, exec: /bin/sh, args: [-c, 'exec sleep 60'], restart: transient, shutdown_ms: 300}\n",
    }
    for name, body in apps.items():
        os.makedirs(os.path.join(src, "lib", f"{name}-1"))
        with open(os.path.join(src, "lib", f"{name}-1", "app.yaml"), "w") as f:
            f.write(f'name: {name}\nvsn: "1"\n{body}')
    path = os.path.join(work, "plain.tar")
    return tar_release(src, path)


def plain_release(work, vsn, apps):
    """A release of /bin/sh processes: apps is {name: (app_vsn, deps)}."""
    src = os.path.join(work, f"plain{vsn}")
    os.makedirs(os.path.join(src, "releases", vsn))
    refs = "".join(f'  - {{name: {a}, vsn: "{v}"}}\n' for a, (v, _) in apps.items())
    with open(os.path.join(src, "releases", vsn, "release.yaml"), "w") as f:
        f.write(f'release: plain\nvsn: "{vsn}"\napplications:\n{refs}')
    for a, (v, deps) in apps.items():
        os.makedirs(os.path.join(src, "lib", f"{a}-{v}"))
        with open(os.path.join(src, "lib", f"{a}-{v}", "app.yaml"), "w") as f:
            f.write(f'name: {a}\nvsn: "{v}"\napplications: [{", ".join(deps)}]\nprocesses:\n'
                    f'  - {{name: p, exec: /bin/sh, args: [-c, "exec sleep 60"], shutdown_ms: 500}}\n')
    path = os.path.join(work, f"plain-{vsn}.tar")
    return tar_release(src, path)


def test_added_and_removed(work):
    r = d.Reld(work)
    one = plain_release(work, "1", {"front": ("1", ["back"]), "old": ("1", ["back"]), "back": ("1", [])})
    two = plain_release(work, "2", {"front": ("1", ["back"]), "new": ("1", ["back"]), "back": ("2", [])})
    rc, out, err = r.relctl("install", one)
    wait_for(lambda: len([p for p in status(r)["processes"] if p["pid"]]) == 3)
    rc, out, err = r.relctl("install", two)
    d.tap(rc == 0 and "upgrade from 1 to 2" in out, "upgrade: one application removed, one added, one changed",
          out + err)
    st = wait_for(lambda: {p["app"]: p["vsn"] for p in status(r)["processes"] if p["pid"]} ==
                  {"back": "2", "front": "1", "new": "1"}, timeout=5)
    d.tap(st, "status: back 2, front 1, new 1 run; old is gone", status(r)["processes"])
    log = open(os.path.join(work, "reld.log")).read()
    after = log[log.index("upgrade from 1 to 2"):]
    events = re.findall(r"(\w+)/p\[\d+\] (stopped|started)", after)
    d.tap(events.index(("old", "stopped")) < events.index(("back", "stopped")) and
          events.index(("back", "started")) < events.index(("new", "started")),
          "the removed application stops before back changes; the added one starts after back is upgraded",
          events)
    r.stop()


def test_policies(work):
    r = d.Reld(work)
    rc, out, err = r.relctl("install", plain_tarball(work))
    d.tap(rc == 0, "install a release of plain processes (no runtime)", err)
    procs = {p["process"]: p for p in wait_for(lambda: status(r)["processes"])}
    time.sleep(0.5)
    log = open(os.path.join(work, "reld.log")).read()
    started = re.findall(r"(\w+/\w+)\[\d+\] started", log)
    d.tap(started[:5] == ["back/db", "front/web", "front/once", "front/temp", "front/trans"],
          "dependencies first, then each application's processes in declared order", started)
    d.tap(re.search(r"front/web\[\d+\]: hello from sh", log) is not None,
          "a process's output lines go to reld's log with its name")
    st = {p["process"]: p for p in status(r)["processes"]}
    d.tap(st["once"]["state"] == "exited" and st["once"]["restarts"] == 0,
          "transient: a clean exit is not restarted", st["once"])
    os.kill(st["temp"]["pid"], signal.SIGKILL)
    os.kill(st["trans"]["pid"], signal.SIGKILL)
    time.sleep(0.5)
    st = {p["process"]: p for p in status(r)["processes"]}
    d.tap(st["temp"]["state"] == "exited" and st["temp"]["restarts"] == 0, "temporary: never restarted", st["temp"])
    d.tap(st["trans"]["state"] == "running" and st["trans"]["restarts"] == 1,
          "transient: an abnormal exit is restarted", st["trans"])
    r.stop()
    log = open(os.path.join(work, "reld.log")).read()
    stopped = re.findall(r"(\w+/\w+)\[\d+\] stopped", log)
    d.tap(stopped == ["front/trans", "front/web", "back/db"], "stops go in reverse order", stopped)


def main():
    global A
    ap = argparse.ArgumentParser()
    ap.add_argument("--reld", required=True)
    ap.add_argument("--relctl", required=True)
    ap.add_argument("--kvroot", required=True)
    ap.add_argument("--loadgen", required=True)
    A = ap.parse_args()
    d.A = argparse.Namespace(reld=A.reld, relctl=A.relctl, shop=None)
    d.DEFAULT_CONFIG = "min_healthy_ms: 100\n"  # the gate is trusted.py's; here each install waits 0.1 s, not 1 s
    return d.run_tests((test_kvcounter, test_policies, test_upgrades, test_crash_during_upgrade,
                        test_added_and_removed, test_process_killed_mid_upgrade, test_status_during_upgrade,
                        test_failed_downgrade, test_slow_process, test_soft_purge, test_two_processes,
                        test_inverse_of_added_module, test_status_while_planning), "reld-sup-")


if __name__ == "__main__":
    sys.exit(main())
