#!/usr/bin/env python3
"""End to end: upgrades you can trust (issue 10) on the kvcounter example
under load, with the real reld and relctl. Prints TAP.

- the health gate: an upgrade is done when the new release is healthy
  (the runtime's health command, the module's health callback);
- an unhealthy new release goes back by itself, once: exit 3, the old
  release runs with its state, 0 failed requests; an unhealthy old release
  too: exit 4 (needs an operator);
- a first install that crash-loops fails, names the process and quotes its
  output, and leaves nothing current;
- a rehearsal on a copy of the live state catches a code_change that
  crashes only on the live state (more than 1,000 keys); without it the same
  upgrade crashes the process and the restart loses the state;
- the same release again, the same tarball again: nothing changes, success;
- --commit, and --json on a failure (the outcome is in it);
- --dry-run changes nothing: the plan with the kv process's pid, the
  expected pause from an earlier upgrade, the rehearsal; on 2crash (more
  than 1,000 keys) the rehearsal's crash refuses it (exit 1); with code
  pinned (HOLD) it says the purge would kill the process, and it does.

Usage: trusted.py --reld PATH --relctl PATH --kvroot KVCOUNTER_ROOT --loadgen PATH
"""
import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import daemon as d  # noqa: E402  (Reld, tap, run_tests)
import supervise  # noqa: E402  (wait_for)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "runtime"))
from hotcode import free_port, request  # noqa: E402

A = None
HEALTH = "    health: {runtime: true, interval_ms: 100, timeout_ms: 2000}\n"


def kv_release(work, port, vsn, base, module=None, health=True):
    """Release vsn of the kvcounter example: application kvcounter-<base>'s
    definitions (with a runtime health check), listening on port, as
    application version VSN.0 ("2.7" -> "2.7.0"; "1" and "2" keep their
    own), with kv_server.so replaced by the build's kv_server-MODULE.so."""
    app_vsn = base if vsn in ("1", "2", "3") else f"{vsn}.0"
    src = os.path.join(work, f"src-{vsn}")
    shutil.rmtree(src, ignore_errors=True)
    app_dir = os.path.join(src, "lib", f"kvcounter-{app_vsn}")
    shutil.copytree(os.path.join(A.kvroot, "lib", f"kvcounter-{base}"), app_dir)
    y = os.path.join(app_dir, "app.yaml")
    text = open(y).read().replace(f'vsn: "{base}"', f'vsn: "{app_vsn}"').replace("127.0.0.1:17411",
                                                                                  f"127.0.0.1:{port}")
    if health:
        text = text.replace("    shutdown_ms: 2000\n", "    shutdown_ms: 2000\n" + HEALTH)
    open(y, "w").write(text)
    if module:
        shutil.copy(os.path.join(os.path.dirname(A.kvroot), f"kv_server-{module}.so"),
                    os.path.join(app_dir, "modules", "kv_server.so"))
    os.makedirs(os.path.join(src, "releases", vsn))
    with open(os.path.join(src, "releases", vsn, "release.yaml"), "w") as f:
        f.write(f'release: kv\nvsn: "{vsn}"\napplications:\n  - {{name: kvcounter, vsn: "{app_vsn}"}}\n')
    path = os.path.join(work, f"kv-{vsn}.tar.gz")
    with tarfile.open(path, "w:gz") as t:
        t.add(os.path.join(src, "releases"), "releases")
        t.add(os.path.join(src, "lib"), "lib")
    return path


def status(r):
    rc, out, err = r.relctl("status", "--json")
    return json.loads(out) if rc == 0 else {"processes": []}


def kv_pid(r):
    ps = [p for p in status(r)["processes"] if p.get("pid")]
    return ps[0]["pid"] if ps else 0


def versions(r):
    st = status(r)["processes"]
    return [(m["name"], m["version"]) for m in (st[0]["modules"] or [])] if st else []


def wait_for(pred, timeout=15.0):
    return supervise.wait_for(pred, timeout)  # its poll, this suite's default bound


def fill(port, n):
    """INCR of n distinct keys, pipelined on one connection; the replies read."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        for start in range(0, n, 500):
            batch = range(start, min(n, start + 500))
            s.sendall("".join(f"INCR fill{k}\n" for k in batch).encode())
            want, got = len(batch), b""
            while got.count(b"\n") < want:
                chunk = s.recv(65536)
                if not chunk:
                    raise RuntimeError("the service closed the connection while filling")
                got += chunk


class Load:
    """loadgen at 2,000 requests/s on 8 connections while a command runs."""

    def __init__(self, port, seconds):
        self.p = subprocess.Popen([A.loadgen, "--port", str(port), "--rate", "2000", "--duration", str(seconds),
                                   "--conns", "8", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        time.sleep(0.3)

    def result(self):
        out = self.p.communicate(timeout=120)[0]
        return json.loads(out.strip().splitlines()[-1])


def history_kinds(r):
    rc, out, err = r.relctl("history", "--json", "--limit", "1000")
    return [e["kind"] for e in json.loads(out)["events"]] if rc == 0 else []


def started(work):
    """reld running release 1 of kvcounter (health-checked), permanent; the
    port and the reld."""
    port = free_port()
    r = d.Reld(work)
    rc, out, err = r.relctl("install", "--commit", "--min-healthy", "200", kv_release(work, port, "1", "1.0.0"))
    if rc != 0:
        raise RuntimeError(f"install of release 1: {rc} {out} {err}")
    wait_for(lambda: versions(r))
    return r, port


# ---- the health gate --------------------------------------------------------------------------


def test_gated_upgrade(work):
    r, port = started(work)
    d.tap(status(r)["permanent"] == "1" and history_kinds(r).count("health") == 1,
          "install --commit: healthy (the runtime's health command), then permanent in the same command",
          status(r))
    r.relctl("unpack", kv_release(work, port, "2", "2.0.0"))
    for _ in range(5):
        request(port, "INCR kept")
    load = Load(port, 2.5)
    rc, out, err = r.relctl("upgrade", "--min-healthy", "500", "2")
    res = load.result()
    d.tap(rc == 0 and "healthy after" in out and res["failed"] == 0 and res["final_mismatches"] == 0,
          f"upgrade to 2 under load waits for health: {out.strip()}; {res['ok']} requests, 0 failed",
          f"{rc} {out} {err} {res}")
    st = status(r)
    d.tap(st["current"] == "2" and st["last_outcome"]["outcome"] == "current" and
          st["processes"][0]["health"]["state"] == "healthy",
          "status: current 2, the last outcome, the process's health", st)
    rc, out, err = r.relctl("upgrade", "2")
    d.tap(rc == 0 and "already running" in out, "upgrade to the release that runs: success, nothing changes",
          out + err)
    rc, out, err = r.relctl("downgrade", "--json", "1")
    rep = json.loads(out) if out.strip() else {}
    d.tap(rc == 0 and rep.get("outcome") == "current" and rep.get("health", {}).get("healthy") is True,
          "downgrade --json: outcome current, health in the reply", out + err)
    rc, out, err = r.relctl("install", os.path.join(work, "kv-2.tar.gz"))
    d.tap(rc == 0 and "already unpacked: release 2" in out and "upgrade from 1 to 2" in out,
          "install of the same tarball after a downgrade: it goes on", out + err)
    d.tap(request(port, "GET kept") == "OK kept 5", "the counter from before is kept throughout")
    r.stop()


def test_unhealthy_upgrade_goes_back(work):
    r, port = started(work)
    r.relctl("unpack", kv_release(work, port, "2.7", "2.0.0", module="2sick"))
    for _ in range(7):
        request(port, "INCR kept")
    pid = kv_pid(r)
    load = Load(port, 4)
    t0 = time.monotonic()
    rc, out, err = r.relctl("upgrade", "--min-healthy", "300", "--health-timeout", "1500", "2.7")
    took = time.monotonic() - t0
    res = load.result()
    d.tap(rc == 3 and "did not become healthy" in err and "kv_server 2sick is unhealthy on purpose" in err and
          "outcome: rolled_back" in err,
          f"an unhealthy upgrade goes back by itself: exit 3 in {took:.1f} s, the reason quoted", f"{rc} {out} {err}")
    d.tap(res["failed"] == 0 and res["final_mismatches"] == 0,
          f"under load: {res['ok']} requests during upgrade and rollback, 0 failed", res)
    st = status(r)
    d.tap(kv_pid(r) == pid and versions(r) == [("kv_server", "1")] and request(port, "GET kept") == "OK kept 7" and
          st["permanent"] == "1" and [x["state"] for x in st["releases"] if x["vsn"] == "2.7"] == ["unpacked"],
          "release 1 runs again: same pid, its code, its counters; 2.7 is unpacked", st)
    kinds = history_kinds(r)
    d.tap(kinds.count("automatic_rollback") == 1 and st["last_outcome"]["outcome"] == "rolled_back" and
          "2sick" in st["last_outcome"]["reason"],
          "recorded once (no loop): the automatic rollback, the outcome and why", kinds)
    # The old release unhealthy too: an operator is needed.
    request(port, "INCR __unhealthy")
    rc, out, err = r.relctl("upgrade", "--json", "--min-healthy", "300", "--health-timeout", "1500", "2.7")
    rep = json.loads(out) if out.strip() else {}
    d.tap(rc == 4 and rep.get("outcome") == "needs_operator" and "not healthy either" in err,
          "the release before is unhealthy too: exit 4, needs_operator (--json prints the failed reply)",
          f"{rc} {out} {err}")
    d.tap(history_kinds(r).count("automatic_rollback") == 2, "again one automatic rollback, not a loop")
    r.stop()


def test_crash_looping_first_install(work):
    port = free_port()

    def broken(text):
        return text.replace("exec: bin/kv-host", "exec: bin/broken-host")

    path = kv_release(work, port, "1", "1.0.0")
    src = os.path.join(work, "src-1", "lib", "kvcounter-1.0.0")
    with open(os.path.join(src, "bin", "broken-host"), "w") as f:
        f.write("#!/bin/sh\necho 'broken-host: error while loading shared libraries: libreld-runtime.so.0: "
                "cannot open shared object file: No such file or directory' >&2\nexit 127\n")
    os.chmod(os.path.join(src, "bin", "broken-host"), 0o755)
    y = os.path.join(src, "app.yaml")
    text = broken(open(y).read())
    open(y, "w").write(text)
    with tarfile.open(path, "w:gz") as t:
        t.add(os.path.join(work, "src-1", "releases"), "releases")
        t.add(os.path.join(work, "src-1", "lib"), "lib")
    r = d.Reld(work)
    rc, out, err = r.relctl("install", "--health-timeout", "30000", path)
    d.tap(rc == 3 and "kvcounter/kv" in err and "exit 127" in err and "libreld-runtime.so.0" in err,
          "a first install whose process cannot start fails (exit 3), naming it and quoting its output",
          f"{rc} {out} {err}")
    st = status(r)
    d.tap(st["current"] is None and st["running"] is None and not [p for p in st["processes"] if p.get("pid")] and
          [x["state"] for x in st["releases"]] == ["unpacked"],
          "nothing runs and the release is not left current", st)
    rc, out, err = r.relctl("make-permanent", "1")
    d.tap(rc == 1 and "only the current release" in err, "so it cannot be made permanent", err)
    r.stop()


# ---- rehearsal on a copy of the live state ------------------------------------------------------


def test_rehearsal(work):
    r, port = started(work)
    r.relctl("unpack", kv_release(work, port, "2.8", "2.0.0", module="2crash"))
    fill(port, 1500)  # more than the 1,000 keys on which 2crash's code_change aborts
    for _ in range(3):
        request(port, "INCR kept")
    pid = kv_pid(r)
    load = Load(port, 3)
    rc, out, err = r.relctl("upgrade", "--rehearse", "2.8")
    res = load.result()
    d.tap(rc == 1 and "rehearsal failed" in err and "SIGABRT" in err and "outcome: refused" in err,
          "--rehearse: the copy's code_change crashes on the live state; refused before anything changed",
          f"{rc} {out} {err}")
    d.tap(res["failed"] == 0 and res["final_mismatches"] == 0,
          f"under load: {res['ok']} requests during the rehearsal, 0 failed", res)
    d.tap(kv_pid(r) == pid and versions(r) == [("kv_server", "1")] and request(port, "GET kept") == "OK kept 3" and
          request(port, "GET fill1499") == "OK fill1499 1" and status(r)["permanent"] == "1",
          "same pid, release 1 still runs with its counters", status(r))
    rc, out, err = r.relctl("upgrade", "2.8")
    back = wait_for(lambda: kv_pid(r) not in (0, pid) and versions(r) == [("kv_server", "1")])
    d.tap(rc == 3 and back and "went away" in err,
          "without --rehearse the same upgrade crashes the process; reld restarts it on release 1 (exit 3)",
          f"{rc} {out} {err}")
    d.tap(request(port, "GET kept") == "OK kept 0", "and the restart lost the state: what the rehearsal saved",
          request(port, "GET kept"))
    r.stop()


# ---- dry run ------------------------------------------------------------------------------------


def test_dry_run(work):
    r, port = started(work)
    r.relctl("unpack", kv_release(work, port, "2", "2.0.0"))
    rc, out, err = r.relctl("upgrade", "--dry-run", "2")
    d.tap(rc == 0 and "expected pause: no earlier upgrade from 1 to 2" in out,
          "before any upgrade: no earlier upgrade to expect a pause from", f"{rc} {out} {err}")
    # An earlier upgrade and its way back: the history's pauses.
    rc1, out1, err1 = r.relctl("upgrade", "--min-healthy", "100", "2")
    rc2, out2, err2 = r.relctl("downgrade", "--min-healthy", "100", "1")
    d.tap(rc1 == 0 and rc2 == 0, "an upgrade to 2 and back to 1 first", f"{out1} {err1} {out2} {err2}")
    for _ in range(5):
        request(port, "INCR kept")
    pid = kv_pid(r)
    n_attempts = len(json.loads(r.relctl("history", "--json", "--limit", "1000")[1])["attempts"])
    load = Load(port, 3)
    rc, out, err = r.relctl("upgrade", "--dry-run", "2")
    res = load.result()
    d.tap(rc == 0 and "dry run: upgrade from 1 to 2" in out and f"kvcounter/kv[{pid}]: suspended (kv_server); expected pause" in out
          and "expected pause per process (the last of 1 earlier upgrades from 1 to 2)" in out and
          f"kvcounter/kv[{pid}]: ok" in out and "nothing changed (outcome dry_run)" in out,
          f"upgrade --dry-run 2: the plan, the kv process by its pid, its expected pause, the rehearsal "
          f"(exit {rc})", f"{rc} {out} {err}")
    print("# " + "\n# ".join(out.strip().splitlines()))
    d.tap(res["failed"] == 0 and res["final_mismatches"] == 0,
          f"under load: {res['ok']} requests during the dry run, 0 failed", res)
    st = status(r)
    d.tap(kv_pid(r) == pid and versions(r) == [("kv_server", "1")] and request(port, "GET kept") == "OK kept 5" and
          st["permanent"] == "1" and st["last_outcome"]["outcome"] == "current" and
          [x["state"] for x in st["releases"] if x["vsn"] == "2"] == ["unpacked"],
          "nothing changed: same pid, release 1 permanent with its counters, 2 unpacked, the last outcome kept", st)
    rc, out, err = r.relctl("upgrade", "--dry-run", "--json", "--no-rehearse", "2")
    rep = json.loads(out) if out.strip() else {}
    suspends = [p for i in rep.get("instructions", []) for p in i["processes"] if p.get("does") == "suspended"]
    pause = rep.get("expected_pause_ms", {}).get("kvcounter/kv", {})
    d.tap(rc == 0 and rep.get("outcome") == "dry_run" and rep.get("rehearsal") is None and
          [p["pid"] for p in suspends] == [pid] and pause.get("last", 0) > 0 and pause.get("of") == 1,
          f"--json --no-rehearse: the same as an object, expected pause {pause.get('last', 0):.3f} ms, "
          "no rehearsal", out + err)
    hist = json.loads(r.relctl("history", "--json", "--limit", "1000")[1])["attempts"]
    d.tap(len(hist) == n_attempts + 1 and hist[-1]["kind"] == "dry_run" and
          [i["instr"]["op"] for i in hist[-1]["instructions"]] == ["rehearse"],
          "the rehearsal is recorded as an attempt of kind dry_run (its instruction 0 only); --no-rehearse "
          "records nothing", hist[-1] if hist else None)
    # The rehearsal's crash on the live state refuses the dry run.
    r.relctl("unpack", kv_release(work, port, "2.8", "2.0.0", module="2crash"))
    fill(port, 1500)  # more than the 1,000 keys on which 2crash's code_change aborts
    load = Load(port, 3)
    rc, out, err = r.relctl("upgrade", "--dry-run", "2.8")
    res = load.result()
    d.tap(rc == 1 and "SIGABRT" in err and "rehearsal: FAILED" in out and "it would be refused" in out and
          "outcome: refused" in err,
          "--dry-run on 2crash with 1,500 keys: the rehearsal's crash, exit 1", f"{rc} {out} {err}")
    d.tap(res["failed"] == 0 and kv_pid(r) == pid and versions(r) == [("kv_server", "1")] and
          request(port, "GET kept") == "OK kept 5" and request(port, "GET fill1499") == "OK fill1499 1" and
          status(r)["permanent"] == "1",
          f"nothing changed: {res['ok']} requests, 0 failed, same pid, release 1 with its counters", res)
    # Code in use: the load makes it old, and the brutal post_purge would kill the process.
    request(port, "HOLD 60000")
    pinned = wait_for(lambda: [m for p in status(r)["processes"] for m in (p["modules"] or []) if m.get("pins")])
    rc, out, err = r.relctl("upgrade", "--dry-run", "--no-rehearse", "--json", "2")
    rep = json.loads(out) if out.strip() else {}
    loads = [p for i in rep.get("instructions", []) for p in i["processes"] if p.get("does") == "loads"]
    rc2, out2, err2 = r.relctl("upgrade", "--dry-run", "--no-rehearse", "2")
    d.tap(pinned and rc == 0 and [(p["pid"], p["kills"]) for p in loads] == [(pid, True)] and
          "the purge KILLS it" in out2 and kv_pid(r) == pid,
          "kv_server pinned (HOLD): the dry run says the purge would kill the process, and nothing happens to it",
          f"{pinned} {rc} {out} {err} {out2} {err2}")
    rc, out, err = r.relctl("upgrade", "--dry-run", "1")
    d.tap(rc == 0 and "release 1 already runs: unchanged" in out, "--dry-run of the running release: unchanged",
          out + err)
    rc, out, err = r.relctl("upgrade", "--dry-run", "9")
    d.tap(rc == 1 and "release 9 is not known" in err, "--dry-run of a release not known: refused, one line", err)
    rc, out, err = r.relctl("upgrade", "--dry-run", "--commit", "2")
    d.tap(rc == 2 and "--dry-run changes nothing" in err, "--dry-run --commit: a usage error", err)
    # The prediction holds: the real upgrade's post_purge kills the process still holding the old code.
    rc, out, err = r.relctl("upgrade", "--min-healthy", "100", "2")
    killed = wait_for(lambda: kv_pid(r) not in (0, pid))
    # Its SIGKILL is logged as an exit ("killed by signal 9"), or, when the
    # switch-over came before reld reaped it (its control channel closed
    # first, so it no longer counts as a runtime process there), as the
    # stop of the run a new one replaces ("stopped"/"ended (signal 9)").
    log = open(os.path.join(work, "reld.log")).read()
    said = re.search(rf"kvcounter/kv\[{pid}\] (killed by signal 9|stopped \(signal 9\)|ended \(signal 9\))", log)
    d.tap(killed and said, f"and the real upgrade does kill it (exit {rc}; reld restarts it)",
          f"{rc} {out} {err}\n" + "".join(log.splitlines(True)[-20:]))
    d.tap(f"warning: kvcounter/kv[{pid}]: the purge of kv_server ended it" in err and "state is lost" in err,
          "and says so: a warning names the process, the module and the lost state", err)
    r.stop()
    # A first install: what would start.
    w2 = os.path.join(work, "first")
    os.makedirs(w2)
    r = d.Reld(w2)
    rc, out, err = r.relctl("install", "--dry-run", kv_release(w2, free_port(), "1", "1.0.0"))
    st = status(r)
    d.tap(rc == 0 and "would start, in order:" in out and "kvcounter 1.0.0: kv" in out and st["running"] is None and
          [x["state"] for x in st["releases"]] == ["unpacked"],
          "install --dry-run with nothing running: what would start; nothing runs, the release is unpacked",
          f"{rc} {out} {err} {st}")
    r.stop()


def main():
    global A
    ap = argparse.ArgumentParser()
    ap.add_argument("--reld", required=True)
    ap.add_argument("--relctl", required=True)
    ap.add_argument("--kvroot", required=True)
    ap.add_argument("--loadgen", required=True)
    A = ap.parse_args()
    d.A = argparse.Namespace(reld=A.reld, relctl=A.relctl, shop=None)
    return d.run_tests((test_gated_upgrade, test_unhealthy_upgrade_goes_back, test_crash_looping_first_install,
                        test_rehearsal, test_dry_run), "reld-trust-")


if __name__ == "__main__":
    sys.exit(main())
