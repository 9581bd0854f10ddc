#!/usr/bin/env python3
"""End to end: every kind of relup instruction does what it says (issue 9).

Each test runs real upgrades (and downgrades) through the real reld on a
temporary root, driven by the real relctl, against real processes (the
kvcounter host and modules, /bin/sh and python3 processes), and asserts
the instruction's EFFECT on what runs: the pid changed or not, the state
kept or not, modules present or gone in `relctl status --json` and in the
process's memory map, processes alive or gone. Also what must not change:
other processes' pids, state where the instruction keeps it. Scripts come
from appups (computed relups) and, for exact low-level instructions, from
stored relups (releases/<vsn>/relup.yaml, SPEC.md's shape). Prints TAP.

Usage: instructions.py --reld PATH --relctl PATH --kvroot KVCOUNTER_ROOT
"""
import argparse
import json
import os
import socket
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import daemon as d  # noqa: E402  (Reld, tap, run_tests)
import supervise as s  # noqa: E402  (status, wait_for, reld_with, tar_release, relctl_background)
from hotcode import free_port  # noqa: E402  (supervise put tests/runtime on the path)

A = None


# ---- fixtures: releases built here from the kvcounter build ---------------

def kv_file(name):
    """A file meson built for the kvcounter example: kv-host, kv_server-N.so, kv_lib-1.so."""
    if name == "kv-host":
        return os.path.join(A.kvroot, "lib", "kvcounter-1.0.0", "bin", "kv-host")
    return os.path.join(os.path.dirname(A.kvroot), name)


def kv_app(vsn, procs, server, lib=False, deps=(), appup=None):
    """The kvcounter application at version vsn, kv_server of build `server`
    (1, 2 or 3), with kv_lib if lib. procs: [(process, port, [modules])]."""
    modules = ["kv_server"] + (["kv_lib"] if lib else [])
    text = f'name: kvcounter\nvsn: "{vsn}"\n'
    if deps:
        text += f"applications: [{', '.join(deps)}]\n"
    text += f"modules: [{', '.join(modules)}]\nprocesses:\n"
    for name, port, mods in procs:
        text += (f"  - name: {name}\n    exec: bin/kv-host\n    modules: [{', '.join(mods)}]\n"
                 f"    shutdown_ms: 2000\n    sockets:\n      - {{name: {name}, listen: \"127.0.0.1:{port}\"}}\n")
    if appup:
        text += "appup: " + json.dumps(appup) + "\n"
    files = {"bin/kv-host": kv_file("kv-host"), "modules/kv_server.so": kv_file(f"kv_server-{server}.so")}
    if lib:
        files["modules/kv_lib.so"] = kv_file("kv_lib-1.so")
    return ("kvcounter", vsn, text, files)


def plain_app(name, vsn, deps=()):
    """An application of one /bin/sh process `p` (no runtime)."""
    text = (f'name: {name}\nvsn: "{vsn}"\napplications: [{", ".join(deps)}]\nprocesses:\n'
            f'  - {{name: p, exec: /bin/sh, args: [-c, "exec sleep 300"], shutdown_ms: 500}}\n')
    return (name, vsn, text, {})


PROBE = """import os, socket, time
try:
    c = socket.create_connection(("127.0.0.1", {port}), timeout=5)
    c.sendall(b"VERSION\\n")
    got = c.recv(200).decode().strip()
except OSError as e:
    got = "ERR " + repr(e)
open({out!r} + ".tmp", "w").write(got)
os.rename({out!r} + ".tmp", {out!r})
time.sleep(300)
"""


def probe_app(vsn, port, out, deps):
    """An application `probe` whose process, when it starts, asks the
    kvcounter service on port for its VERSION and writes the answer to out."""
    code = PROBE.format(port=port, out=out)
    text = (f'name: probe\nvsn: "{vsn}"\napplications: [{", ".join(deps)}]\nprocesses:\n'
            f'  - {{name: p, exec: {json.dumps(sys.executable)}, args: [-c, {json.dumps(code)}], shutdown_ms: 500}}\n')
    return ("probe", vsn, text, {})


def release(work, vsn, apps, relup=None):
    """The tarball of release vsn (named inst) of apps, with a stored relup if given."""
    src = tempfile.mkdtemp(prefix=f"rel-{vsn}-", dir=work)
    os.makedirs(os.path.join(src, "releases", vsn))
    refs = "".join(f'  - {{name: {a[0]}, vsn: "{a[1]}"}}\n' for a in apps)
    with open(os.path.join(src, "releases", vsn, "release.yaml"), "w") as f:
        f.write(f'release: inst\nvsn: "{vsn}"\napplications:\n{refs}')
    if relup:
        with open(os.path.join(src, "releases", vsn, "relup.yaml"), "w") as f:
            json.dump(relup, f, indent=1)
    for name, avsn, text, files in apps:
        top = os.path.join(src, "lib", f"{name}-{avsn}")
        os.makedirs(top)
        with open(os.path.join(top, "app.yaml"), "w") as f:
            f.write(text)
        for rel, path in files.items():
            os.makedirs(os.path.dirname(os.path.join(top, rel)), exist_ok=True)
            with open(path, "rb") as i, open(os.path.join(top, rel), "wb") as o:
                o.write(i.read())
            os.chmod(os.path.join(top, rel), 0o755)
    return s.tar_release(src, os.path.join(work, f"inst-{vsn}.tar"))


def setup(res, what):
    """A step of a test's set-up must work, else the test stops (a failed check)."""
    rc, out, err = res
    if rc != 0:
        raise RuntimeError(f"set-up failed: {what}: {err.strip()}")


def load(a):
    return {"op": "load", "module": a, "pre_purge": "brutal_purge", "post_purge": "brutal_purge"}


PONR = {"op": "point_of_no_return"}


# ---- observing what runs ---------------------------------------------------

def procs(r):
    return {f"{p['app']}/{p['process']}": p for p in s.status(r)["processes"]}


def pid(r, label):
    p = procs(r).get(label)
    return p["pid"] if p else 0


def mods(r, label):
    p = procs(r).get(label) or {}
    return {m["name"]: m for m in (p.get("modules") or [])}


def vers(r, label):
    """{module: (version, old_version)} of a process."""
    return {n: (m["version"], m["old_version"]) for n, m in mods(r, label).items()}


def alive(p):
    try:
        with open(f"/proc/{p}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def ask(port, line, timeout=2.0):
    """One request line to the kvcounter service on port, and its reply line
    (the socket is reld's, so a stopped process shows as no answer)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as c:
            c.sendall((line + "\n").encode())
            data = b""
            while not data.endswith(b"\n"):
                chunk = c.recv(4096)
                if not chunk:
                    break
                data += chunk
            return data.decode().strip()
    except OSError as e:
        return f"(no answer: {e})"


def maps(p):
    try:
        with open(f"/proc/{p}/maps") as f:
            return f.read()
    except OSError:
        return ""


def users_of(prefix):
    """Every process that maps a file under prefix or runs an executable there."""
    hits = []
    for n in os.listdir("/proc"):
        if not n.isdigit():
            continue
        try:
            exe = os.readlink(f"/proc/{n}/exe")
        except OSError:
            exe = ""
        if exe.startswith(prefix) or prefix in maps(n):
            hits.append(int(n))
    return hits


def ready(r, labels):
    """Waits until every process of labels runs (and those of kvcounter said hello)."""
    def ok():
        ps = procs(r)
        return all(ps.get(x, {}).get("pid") and alive(ps[x]["pid"]) and
                   (not x.startswith("kvcounter/") or ps[x]["modules"]) for x in labels)
    return s.wait_for(ok, timeout=10)


def attempt(r):
    rc, out, err = r.relctl("history", "--json")
    a = json.loads(out)["attempts"] if rc == 0 else []
    return a[-1] if a else {}


def ops(a):
    return [i["instr"]["op"] for i in a.get("instructions") or []]


def all_ok(a):
    return a.get("result") == "ok" and a.get("instructions") and all(i["outcome"] == "ok" for i in a["instructions"])


def upgrade_at(r, done):
    """Waits until the upgrade under way has done `done` instructions (a
    RELD_TEST_DELAY_BEFORE pause); returns the status then."""
    return s.wait_for(lambda: (s.status(r).get("upgrade") or {}).get("done") == done, timeout=10)


def mk_reld(work, sub, **hooks):
    return s.reld_with(os.path.join(work, sub), **hooks)


# ---- the tests ---------------------------------------------------------------

def test_update_code_change(work):
    """update with {advanced: EXTRA}: load_object_code, point_of_no_return,
    suspend, load, code_change, resume. Same process, state converted and
    kept; load_object_code alone changes nothing that runs."""
    port = free_port()
    side = plain_app("side", "1")
    ex = {"advanced": "array-to-table"}
    one = release(work, "1", [kv_app("1.0.0", [("kv", port, ["kv_server"])], "1"), side])
    two = release(work, "2", [kv_app("2.0.0", [("kv", port, ["kv_server"])], "2", appup={
        "up": [{"from": "1.0.0", "instructions": [{"update": "kv_server", "change": ex}]}],
        "down": [{"to": "1.0.0", "instructions": [{"update": "kv_server", "change": ex}]}]}), side])
    r = mk_reld(work, "upd", RELD_TEST_DELAY_BEFORE="2:1000")
    setup(r.relctl("install", one), "install 1")
    setup(r.relctl("unpack", two), "unpack 2")
    ready(r, ["kvcounter/kv", "side/p"])
    for _ in range(5):
        ask(port, "INCR a")
    kv, sp = pid(r, "kvcounter/kv"), pid(r, "side/p")
    new_so = os.path.join(r.root, "lib", "kvcounter-2.0.0", "modules", "kv_server.so")

    up = s.relctl_background(r, "upgrade", "2")
    mid = upgrade_at(r, 1)
    seen = (new_so in maps(kv), ask(port, "VERSION"), ask(port, "GET a"), vers(r, "kvcounter/kv"))
    d.tap(mid and seen == (True, "OK kv_server 1", "OK a 5", {"kv_server": ("1", None)}),
          "load_object_code: the new kv_server.so is mapped in the process, yet version 1 still serves, "
          "state untouched", seen)
    out, err = up.communicate(timeout=60)
    d.tap(up.returncode == 0, "upgrade 1 -> 2 (update kv_server, advanced)", err)
    d.tap(pid(r, "kvcounter/kv") == kv and alive(kv) and procs(r)["kvcounter/kv"]["restarts"] == 0,
          "update: the same process (pid unchanged, no restart)", procs(r))
    d.tap(ask(port, "VERSION") == "OK kv_server 2" and ask(port, "GET a") == "OK a 5" and
          ask(port, "INCR a") == "OK a 6",
          "update: version 2 serves with the state code_change converted (counter 5 kept, then 6)")
    d.tap(vers(r, "kvcounter/kv") == {"kv_server": ("2", None)},
          "status: kv_server 2, the old version purged", vers(r, "kvcounter/kv"))
    d.tap(pid(r, "side/p") == sp, "the other application's process is untouched", procs(r))
    a = attempt(r)
    d.tap(ops(a) == ["load_object_code", "point_of_no_return", "suspend", "load", "code_change", "resume"] and
          all_ok(a) and a["instructions"][4]["instr"].get("mode") == "up",
          "history: the six instructions, code_change up, each ok", a)

    up = s.relctl_background(r, "downgrade", "1")
    upgrade_at(r, 1)
    out, err = up.communicate(timeout=60)
    d.tap(up.returncode == 0 and pid(r, "kvcounter/kv") == kv and ask(port, "VERSION") == "OK kv_server 1" and
          ask(port, "GET a") == "OK a 6" and pid(r, "side/p") == sp,
          "downgrade 2 -> 1: same process, version 1, counter converted back down and kept", err)
    a = attempt(r)
    d.tap(ops(a) == ["load_object_code", "point_of_no_return", "suspend", "code_change", "load", "resume"] and
          all_ok(a) and a["instructions"][3]["instr"].get("mode") == "down",
          "history of the downgrade: code_change down before the load, each ok", a)
    r.stop()


def test_load_module(work):
    """load_module: load_object_code, point_of_no_return, load. The new code
    runs in the same process, no suspend and no code_change; the state is
    used as it is."""
    port = free_port()
    side = plain_app("side", "1")
    two = release(work, "2", [kv_app("2.0.0", [("kv", port, ["kv_server"])], "2"), side])
    lm = [{"load_module": "kv_server"}]
    three = release(work, "2.6", [kv_app("2.6.0", [("kv", port, ["kv_server"])], "3", appup={
        "up": [{"from": "2.0.0", "instructions": lm}], "down": [{"to": "2.0.0", "instructions": lm}]}), side])
    r = mk_reld(work, "lm")
    setup(r.relctl("install", two), "install 2")
    setup(r.relctl("unpack", three), "unpack 2.6")
    ready(r, ["kvcounter/kv", "side/p"])
    for _ in range(3):
        ask(port, "INCR b")
    kv, sp = pid(r, "kvcounter/kv"), pid(r, "side/p")
    rc, out, err = r.relctl("upgrade", "2.6")
    d.tap(rc == 0, "upgrade 2 -> 2.6 (load_module kv_server)", err)
    d.tap(pid(r, "kvcounter/kv") == kv and ask(port, "VERSION") == "OK kv_server 3",
          "load_module: the new code (kv_server 3) runs in the same process", procs(r))
    d.tap(ask(port, "GET b") == "OK b 3" and vers(r, "kvcounter/kv") == {"kv_server": ("3", None)} and
          pid(r, "side/p") == sp, "load_module: state as it was, old code purged, other process untouched",
          vers(r, "kvcounter/kv"))
    a = attempt(r)
    d.tap(ops(a) == ["load_object_code", "point_of_no_return", "load"] and all_ok(a),
          "history: load_object_code, point_of_no_return, load, each ok (no suspend, no code_change)", a)
    rc, out, err = r.relctl("downgrade", "2")
    d.tap(rc == 0 and pid(r, "kvcounter/kv") == kv and ask(port, "VERSION") == "OK kv_server 2" and
          ask(port, "GET b") == "OK b 3" and pid(r, "side/p") == sp,
          "downgrade by load_module: version 2 again, same process, state as it was", err)
    r.stop()


def test_add_delete_module(work):
    """add_module (load_object_code, load) and delete_module (remove, purge),
    nothing else: the module appears in and leaves the same process."""
    port = free_port()
    side = plain_app("side", "1")
    two = release(work, "2", [kv_app("2.0.0", [("kv", port, ["kv_server"])], "2"), side])
    more = release(work, "2.8", [kv_app("2.8.0", [("kv", port, ["kv_server", "kv_lib"])], "2", lib=True, appup={
        "up": [{"from": "2.0.0", "instructions": [{"add_module": "kv_lib"}]}],
        "down": [{"to": "2.0.0", "instructions": [{"delete_module": "kv_lib"}]}]}), side])
    r = mk_reld(work, "mod", RELD_TEST_DELAY_BEFORE="3:1000")
    setup(r.relctl("install", two), "install 2")
    setup(r.relctl("unpack", more), "unpack 2.8")
    ready(r, ["kvcounter/kv", "side/p"])
    for _ in range(4):
        ask(port, "INCR c")
    kv, sp = pid(r, "kvcounter/kv"), pid(r, "side/p")
    lib_so = os.path.join(r.root, "lib", "kvcounter-2.8.0", "modules", "kv_lib.so")

    up = s.relctl_background(r, "upgrade", "2.8")
    mid = upgrade_at(r, 2)
    seen = (vers(r, "kvcounter/kv"), lib_so in maps(kv))
    d.tap(mid and seen == ({"kv_server": ("2", None)}, True),
          "add_module, before its load: kv_lib's code is staged in the process, not yet a module of it", seen)
    out, err = up.communicate(timeout=60)
    d.tap(up.returncode == 0, "upgrade 2 -> 2.8 (add_module kv_lib)", err)
    d.tap(vers(r, "kvcounter/kv") == {"kv_server": ("2", None), "kv_lib": ("1", None)} and
          pid(r, "kvcounter/kv") == kv,
          "add_module: kv_lib 1 is a module of the same process; kv_server 2 unchanged", procs(r))
    d.tap(ask(port, "GET c") == "OK c 4" and ask(port, "VERSION") == "OK kv_server 2" and pid(r, "side/p") == sp,
          "add_module: the process serves with its state; the other process untouched")
    a = attempt(r)
    d.tap(ops(a) == ["load_object_code", "point_of_no_return", "load"] and all_ok(a) and
          a["instructions"][2]["instr"].get("module") == "kv_lib",
          "history: load_object_code, point_of_no_return, load kv_lib, each ok", a)

    up = s.relctl_background(r, "downgrade", "2")
    mid = upgrade_at(r, 2)
    lib = mods(r, "kvcounter/kv").get("kv_lib")
    seen = (lib and lib["version"], lib_so in maps(kv))
    d.tap(mid and seen == (None, True),
          "delete_module, between its remove and its purge: kv_lib is no longer current, its code still mapped",
          (seen, mods(r, "kvcounter/kv")))
    out, err = up.communicate(timeout=60)
    d.tap(up.returncode == 0, "downgrade 2.8 -> 2 (delete_module kv_lib)", err)
    gone = s.wait_for(lambda: lib_so not in maps(kv))
    d.tap(vers(r, "kvcounter/kv") == {"kv_server": ("2", None)} and gone and pid(r, "kvcounter/kv") == kv,
          "delete_module: kv_lib has left the process's modules and its memory; same process", procs(r))
    d.tap(ask(port, "GET c") == "OK c 4" and pid(r, "side/p") == sp,
          "delete_module: kv_server's state kept; the other process untouched")
    a = attempt(r)
    d.tap(ops(a) == ["point_of_no_return", "remove", "purge"] and all_ok(a),
          "history: point_of_no_return, remove, purge, each ok", a)
    r.stop()


def test_purge(work):
    """purge, from a stored relup: the load keeps the old version (its
    post_purge is soft and comes only after the script); the purge
    instruction drops it, in the same process, the state untouched."""
    port = free_port()
    side = plain_app("side", "1")
    base = kv_app("2.0.0", [("kv", port, ["kv_server"])], "2")
    up = [{"op": "load_object_code", "app": "kvcounter", "vsn": "2.9.0", "modules": ["kv_server"]}, PONR,
          dict(load("kv_server"), post_purge="soft_purge"), {"op": "purge", "modules": ["kv_server"]},
          {"op": "suspend", "modules": ["kv_server"]}, {"op": "resume", "modules": ["kv_server"]}]
    down = [{"op": "load_object_code", "app": "kvcounter", "vsn": "2.0.0", "modules": ["kv_server"]}, PONR,
            load("kv_server")]
    two = release(work, "2", [base, side])
    nine = release(work, "2.9", [kv_app("2.9.0", [("kv", port, ["kv_server"])], "3"), side],
                   relup={"from": "2", "to": "2.9", "up": up, "down": down})
    old_so = "lib/kvcounter-2.0.0/modules/kv_server.so"
    # Paused before the purge (4), then, on another root, after it (before 5).
    for k, want_old, what in ((4, "2", "before the purge: the load left version 2 as old code"),
                              (5, None, "after the purge: version 2 is gone")):
        r = mk_reld(work, f"purge{k}", RELD_TEST_DELAY_BEFORE=f"{k}:1000")
        setup(r.relctl("install", two), "install 2")
        setup(r.relctl("unpack", nine), "unpack 2.9")
        ready(r, ["kvcounter/kv", "side/p"])
        ask(port, "INCR e")
        kv, sp = pid(r, "kvcounter/kv"), pid(r, "side/p")
        bg = s.relctl_background(r, "upgrade", "2.9")
        mid = upgrade_at(r, k - 1)
        mapped = s.wait_for(lambda: (os.path.join(r.root, old_so) in maps(kv)) == (want_old is not None), timeout=0.5)
        seen = (vers(r, "kvcounter/kv"), mapped)
        d.tap(mid and seen == ({"kv_server": ("3", want_old)}, True),
              f"stored relup, {what} (status and the process's memory map)", seen)
        out, err = bg.communicate(timeout=60)
        a = attempt(r)
        d.tap(bg.returncode == 0 and ops(a) == [i["op"] for i in up] and all_ok(a),
              "the stored relup ran as written, each instruction ok", (err, a))
        d.tap(vers(r, "kvcounter/kv") == {"kv_server": ("3", None)} and pid(r, "kvcounter/kv") == kv and
              ask(port, "GET e") == "OK e 1" and ask(port, "VERSION") == "OK kv_server 3" and pid(r, "side/p") == sp,
              "purge: same process, its state and current code untouched, the other process too", procs(r))
        r.stop()


def restart_fixture(work, port, port2, vsn, appup=None, relup=None):
    """kvcounter 3 with two processes: kv runs kv_server, kv2 kv_server and
    kv_lib; and an unrelated application side."""
    p = [("kv", port, ["kv_server"]), ("kv2", port2, ["kv_server", "kv_lib"])]
    return release(work, vsn, [kv_app(f"{vsn}.0" if vsn.count(".") == 1 else f"{vsn}.0.0", p, "3", lib=True,
                                      appup=appup), plain_app("side", "1")], relup=relup)


def check_restart(r, port, port2, verb, vsn, how, want_ops):
    """A stop [kv_lib] / start [kv_lib]: kv2 (which runs kv_lib) is a new
    process with fresh state; kv (which does not) is untouched."""
    key = "x" + vsn.replace(".", "_")  # a counter of this step only
    for _ in range(2):
        ask(port, f"INCR {key}")
    for _ in range(4):
        ask(port2, f"INCR {key}")
    kv, kv2, sp = pid(r, "kvcounter/kv"), pid(r, "kvcounter/kv2"), pid(r, "side/p")
    rc, out, err = r.relctl(verb, vsn)
    d.tap(rc == 0, f"{verb} to {vsn} ({how})", err)
    a = attempt(r)
    d.tap(ops(a) == want_ops and all_ok(a) and a["instructions"][-2]["instr"].get("modules") == ["kv_lib"],
          f"{how}: history records {', '.join(want_ops)}, each ok", a)
    new = s.wait_for(lambda: pid(r, "kvcounter/kv2") not in (0, kv2) and mods(r, "kvcounter/kv2"), timeout=5)
    d.tap(new and not alive(kv2),
          f"{how}: the process running kv_lib (kv2) was stopped and started: its pid changed ({kv2} -> "
          f"{pid(r, 'kvcounter/kv2')}) and the old one is gone", procs(r))
    serves = ask(port2, "VERSION"), ask(port2, "TOP 1")
    d.tap(serves[0] == "OK kv_server 3" and serves[1].startswith("OK"),
          f"{how}: kv2 serves again, kv_lib with it (TOP)", serves)
    got = ask(port2, f"GET {key}") if serves[0].startswith("OK") else "kv2 does not answer"
    d.tap(got == f"OK {key} 0", f"{how}: kv2 starts with fresh state, as a new process does", got)
    d.tap(pid(r, "kvcounter/kv") == kv and ask(port, f"GET {key}") == f"OK {key} 2" and pid(r, "side/p") == sp,
          f"{how}: kv (kv_server only) keeps its pid and its state; the other application is untouched", procs(r))


def test_restart(work):
    """restart [kv_lib] in an appup -> stop [kv_lib], start [kv_lib]; and the
    same low-level stop/start from a stored relup."""
    port, port2 = free_port(), free_port()
    three = restart_fixture(work, port, port2, "3")
    rs = [{"restart": ["kv_lib"]}]
    appup = restart_fixture(work, port, port2, "3.1", appup={
        "up": [{"from": "3.0.0", "instructions": rs}], "down": [{"to": "3.0.0", "instructions": rs}]})
    ss = [PONR, {"op": "stop", "modules": ["kv_lib"]}, {"op": "start", "modules": ["kv_lib"]}]
    stored = restart_fixture(work, port, port2, "3.5", relup={"from": "3", "to": "3.5", "up": ss, "down": ss})
    r = mk_reld(work, "rs")
    setup(r.relctl("install", three), "install 3")
    setup(r.relctl("unpack", appup), "unpack 3.1")
    setup(r.relctl("unpack", stored), "unpack 3.5")
    ready(r, ["kvcounter/kv", "kvcounter/kv2", "side/p"])
    want = ["point_of_no_return", "stop", "start"]
    check_restart(r, port, port2, "upgrade", "3.1", "appup restart [kv_lib]", want)
    check_restart(r, port, port2, "downgrade", "3", "appup restart [kv_lib], going down", want)
    check_restart(r, port, port2, "upgrade", "3.5", "stored relup stop/start [kv_lib]", want)
    r.stop()


def test_suspend_resume(work):
    """suspend [kv_lib] / resume [kv_lib] from a stored relup, reld held
    between them (RELD_TEST_PAUSE_BEFORE): the process running kv_lib (kv2)
    stops serving and answers once resumed, in the same process with its
    state; the process that does not run kv_lib (kv) serves throughout."""
    port, port2 = free_port(), free_port()
    three = restart_fixture(work, port, port2, "3")
    sr = [PONR, {"op": "suspend", "modules": ["kv_lib"]}, {"op": "resume", "modules": ["kv_lib"]}]
    seven = restart_fixture(work, port, port2, "3.7", relup={"from": "3", "to": "3.7", "up": sr, "down": sr})
    r = mk_reld(work, "sr", RELD_TEST_PAUSE_BEFORE="3:1500")
    setup(r.relctl("install", three), "install 3")
    setup(r.relctl("unpack", seven), "unpack 3.7")
    ready(r, ["kvcounter/kv", "kvcounter/kv2", "side/p"])
    ask(port, "INCR s")
    for _ in range(3):
        ask(port2, "INCR s")
    kv, kv2 = pid(r, "kvcounter/kv"), pid(r, "kvcounter/kv2")
    bg = s.relctl_background(r, "upgrade", "3.7")
    # Until a request to kv2 goes unanswered for 200 ms: kv2 is suspended.
    held, deadline = None, time.monotonic() + 10
    while held is None and time.monotonic() < deadline and bg.poll() is None:
        c = socket.create_connection(("127.0.0.1", port2), timeout=5)
        c.sendall(b"GET s\n")
        c.settimeout(0.2)
        try:
            c.recv(100)
            c.close()
        except socket.timeout:
            held = c
        else:
            time.sleep(0.02)
    meanwhile = ask(port, "GET s") if held else None
    late = None
    if held:
        held.settimeout(5)
        try:
            late = held.recv(100).decode().strip()
        except OSError as e:
            late = f"(no answer: {e})"
        held.close()
    out, err = bg.communicate(timeout=60)
    d.tap(held is not None, "suspend [kv_lib]: kv2, which runs kv_lib, stops serving (a request waits)", err)
    d.tap(meanwhile == "OK s 1", "suspend [kv_lib]: kv, which does not run kv_lib, serves meanwhile", meanwhile)
    d.tap(late == "OK s 3", "resume [kv_lib]: kv2 goes on and answers the request that waited, state intact", late)
    a = attempt(r)
    d.tap(bg.returncode == 0 and ops(a) == [i["op"] for i in sr] and all_ok(a),
          "the stored suspend/resume ran as written, each ok", (err, a))
    d.tap(pid(r, "kvcounter/kv") == kv and pid(r, "kvcounter/kv2") == kv2 and ask(port2, "INCR s") == "OK s 4",
          "suspend/resume: same processes, state kept", procs(r))
    r.stop()


def test_restart_application(work):
    """restart_application kvcounter: its processes are new (pids, state),
    with the new version's code; other applications, one depending on it,
    keep their processes."""
    port, port2 = free_port(), free_port()
    p = [("kv", port, ["kv_server"]), ("kv2", port2, ["kv_server", "kv_lib"])]
    ra = [{"restart_application": "kvcounter"}]
    others = [plain_app("side", "1"), plain_app("aux", "1", deps=["kvcounter"])]
    three = release(work, "3", [kv_app("3.0.0", p, "3", lib=True)] + others)
    again = release(work, "3.3", [kv_app("3.3.0", p, "3", lib=True, appup={
        "up": [{"from": "3.0.0", "instructions": ra}], "down": [{"to": "3.0.0", "instructions": ra}]})] + others)
    r = mk_reld(work, "ra")
    setup(r.relctl("install", three), "install 3")
    setup(r.relctl("unpack", again), "unpack 3.3")
    labels = ["kvcounter/kv", "kvcounter/kv2", "side/p", "aux/p"]
    ready(r, labels)
    for verb, vsn, avsn in (("upgrade", "3.3", "3.3.0"), ("downgrade", "3", "3.0.0")):
        ask(port, "INCR y")
        ask(port2, "INCR y")
        before = {x: pid(r, x) for x in labels}
        rc, out, err = r.relctl(verb, vsn)
        d.tap(rc == 0, f"{verb} to {vsn} (restart_application kvcounter)", err)
        a = attempt(r)
        o = ops(a)
        d.tap(all_ok(a) and o and o[o.index("point_of_no_return") + 1] == "stop_application" and
              o[-1] == "start_application" and o.count("remove") == 2 and "purge" in o,
              "history: stop_application, remove, purge, the loads, start_application, each ok", a)
        ready(r, labels)
        now = {x: pid(r, x) for x in labels}
        d.tap(all(now[x] != before[x] and not alive(before[x]) for x in labels[:2]),
              "restart_application: both of kvcounter's processes are new (new pids, the old ones gone)",
              (before, now))
        d.tap(ask(port, "GET y") == "OK y 0" and ask(port2, "GET y") == "OK y 0" and
              ask(port2, "TOP 1").startswith("OK") and procs(r)["kvcounter/kv"]["vsn"] == avsn,
              f"restart_application: they serve kvcounter {avsn} with fresh state", procs(r))
        d.tap(all(now[x] == before[x] for x in labels[2:]),
              "restart_application: the other applications' processes keep their pids (aux depends on kvcounter)",
              (before, now))
    r.stop()


def test_add_remove_application(work):
    """add_application probe (start_application), which depends on kvcounter,
    upgraded 2 -> 3 in the same relup: probe starts after it; and
    remove_application probe going down (stop_application,
    unload_application): its process goes, before kvcounter changes."""
    port = free_port()
    out = os.path.join(work, "probe.out")
    side = plain_app("side", "1")
    kv2 = kv_app("2.0.0", [("kv", port, ["kv_server", ])], "2")
    ins = [{"add_module": "kv_lib"}, {"update": "kv_server", "change": {"advanced": None}, "dep_mods": ["kv_lib"]}]
    outs = [{"delete_module": "kv_lib"}, {"update": "kv_server", "change": {"advanced": None}, "dep_mods": ["kv_lib"]}]
    kv3 = kv_app("3.0.0", [("kv", port, ["kv_server", "kv_lib"])], "3", lib=True, appup={
        "up": [{"from": "2.0.0", "instructions": ins}], "down": [{"to": "2.0.0", "instructions": outs}]})
    one = release(work, "1", [kv2, side])
    two = release(work, "2", [probe_app("1", port, out, ["kvcounter"]), kv3, side])
    r = mk_reld(work, "app")
    setup(r.relctl("install", one), "install 1")
    setup(r.relctl("unpack", two), "unpack 2")
    ready(r, ["kvcounter/kv", "side/p"])
    for _ in range(3):
        ask(port, "INCR z")
    kv, sp = pid(r, "kvcounter/kv"), pid(r, "side/p")

    rc, o, err = r.relctl("upgrade", "2")
    d.tap(rc == 0, "upgrade 1 -> 2: probe added, kvcounter 2 -> 3", err)
    ready(r, ["probe/p"])
    pp = pid(r, "probe/p")
    got = s.wait_for(lambda: os.path.exists(out) and open(out).read(), timeout=10)
    d.tap(pp and alive(pp) and procs(r)["probe/p"]["state"] == "running",
          f"add_application: probe's process runs (pid {pp})", procs(r))
    d.tap(got == "OK kv_server 3",
          "add_application: probe started after its dependency was upgraded (at its start kvcounter "
          "answered 'OK kv_server 3')", got)
    a = attempt(r)
    o = ops(a)
    d.tap(all_ok(a) and "start_application" in o and "resume" in o and
          o.index("start_application") > o.index("resume") and
          a["instructions"][o.index("start_application")]["instr"].get("app") == "probe",
          "history: start_application probe after kvcounter's resume, each ok", a)
    d.tap(pid(r, "kvcounter/kv") == kv and ask(port, "GET z") == "OK z 3" and pid(r, "side/p") == sp,
          "kvcounter kept its process and state, side its process", procs(r))

    probe_dir = os.path.join(r.root, "lib", "probe-1")
    rc, o, err = r.relctl("downgrade", "1")
    d.tap(rc == 0, "downgrade 2 -> 1: probe removed, kvcounter 3 -> 2", err)
    gone = s.wait_for(lambda: not alive(pp), timeout=5)
    d.tap(gone and "probe/p" not in procs(r), f"remove_application: probe's process {pp} is gone", procs(r))
    d.tap(not users_of(probe_dir), "remove_application: nothing runs probe's code", users_of(probe_dir))
    a = attempt(r)
    o = ops(a)
    d.tap(all_ok(a) and "stop_application" in o and "unload_application" in o and "suspend" in o and
          o.index("stop_application") < o.index("unload_application") < o.index("suspend") and
          a["instructions"][o.index("stop_application")]["instr"].get("app") == "probe",
          "history: stop_application probe and unload_application probe, before kvcounter changes, each ok", a)
    d.tap(pid(r, "kvcounter/kv") == kv and ask(port, "GET z") == "OK z 3" and
          ask(port, "VERSION") == "OK kv_server 2" and pid(r, "side/p") == sp,
          "kvcounter went down in the same process with its state; side untouched", procs(r))
    r.stop()


def test_application_instructions(work):
    """An application with modules added and removed (computed relup), and
    start_application / stop_application / unload_application written in a
    stored relup: its processes start and stop, its code leaves every
    process; the other application keeps its process."""
    port = free_port()
    side = plain_app("side", "1")
    kv = kv_app("3.0.0", [("kv", port, ["kv_server", "kv_lib"])], "3", lib=True, deps=["side"])
    one = release(work, "1", [side])
    two = release(work, "2", [side, kv])
    three = release(work, "3", [side, kv], relup={
        "from": "1", "to": "3", "up": [PONR, {"op": "start_application", "app": "kvcounter"}],
        "down": [PONR, {"op": "stop_application", "app": "kvcounter"},
                 {"op": "unload_application", "app": "kvcounter"}]})
    ss = [PONR, {"op": "stop_application", "app": "side"}, {"op": "start_application", "app": "side"}]
    onefive = release(work, "1.5", [side], relup={"from": "1", "to": "1.5", "up": ss, "down": ss})
    r = mk_reld(work, "apps")
    setup(r.relctl("install", one), "install 1")
    for t, v in ((two, "2"), (three, "3"), (onefive, "1.5")):
        setup(r.relctl("unpack", t), f"unpack {v}")
    ready(r, ["side/p"])
    kv_dir = os.path.join(r.root, "lib", "kvcounter-3.0.0")

    for vsn, how, up_ops, down_ops in (
            ("2", "computed (add_application / remove_application)", None, None),
            ("3", "stored start_application / stop_application + unload_application",
             ["point_of_no_return", "start_application"],
             ["point_of_no_return", "stop_application", "unload_application"])):
        sp = pid(r, "side/p")
        rc, out, err = r.relctl("upgrade", vsn)
        d.tap(rc == 0, f"upgrade 1 -> {vsn}, {how}", err)
        a = attempt(r)
        d.tap(all_ok(a) and (ops(a) == up_ops if up_ops else ops(a)[-1] == "start_application"),
              f"{how}: history ends with start_application, each ok", a)
        ok = ready(r, ["kvcounter/kv"])
        kp = pid(r, "kvcounter/kv")
        d.tap(ok and alive(kp) and ask(port, "VERSION") == "OK kv_server 3" and ask(port, "INCR w") == "OK w 1" and
              vers(r, "kvcounter/kv") == {"kv_server": ("3", None), "kv_lib": ("1", None)},
              f"{how}: kvcounter's process runs and serves, kv_server 3 and kv_lib 1 loaded", procs(r))
        d.tap(pid(r, "side/p") == sp, f"{how}: side (which kvcounter depends on) keeps its process", procs(r))
        rc, out, err = r.relctl("downgrade", "1")
        d.tap(rc == 0, f"downgrade {vsn} -> 1", err)
        a = attempt(r)
        o = ops(a)
        d.tap(all_ok(a) and (o == down_ops if down_ops else
                             (o[:2] == ["point_of_no_return", "stop_application"] and o[-1] == "unload_application")),
              f"{how}: history: stop_application first, unload_application last, each ok", a)
        gone = s.wait_for(lambda: not alive(kp), timeout=5)
        d.tap(gone and not [x for x in procs(r) if x.startswith("kvcounter/")],
              f"{how}: kvcounter's process {kp} is gone", procs(r))
        d.tap(not users_of(kv_dir), f"{how}: no process runs or maps code from lib/kvcounter-3.0.0",
              users_of(kv_dir))
        d.tap(pid(r, "side/p") == sp, f"{how}: side keeps its process", procs(r))

    # stop_application + start_application of an application that stays.
    for verb, vsn in (("upgrade", "1.5"), ("downgrade", "1")):
        sp = pid(r, "side/p")
        rc, out, err = r.relctl(verb, vsn)
        a = attempt(r)
        d.tap(rc == 0 and ops(a) == [i["op"] for i in ss] and all_ok(a),
              f"{verb} to {vsn}: stored stop_application side, start_application side, each ok", (err, a))
        new = s.wait_for(lambda: pid(r, "side/p") not in (0, sp) and alive(pid(r, "side/p")), timeout=5)
        d.tap(new and not alive(sp), f"stop_application + start_application: side's process is new "
              f"({sp} -> {pid(r, 'side/p')})", procs(r))
    r.stop()


def main():
    global A
    ap = argparse.ArgumentParser()
    ap.add_argument("--reld", required=True)
    ap.add_argument("--relctl", required=True)
    ap.add_argument("--kvroot", required=True)
    A = ap.parse_args()
    d.A = argparse.Namespace(reld=A.reld, relctl=A.relctl, shop=None)
    d.DEFAULT_CONFIG = "min_healthy_ms: 100\n"  # the gate is trusted.py's; here each install waits 0.1 s, not 1 s
    s.A = argparse.Namespace(reld=A.reld, relctl=A.relctl, kvroot=A.kvroot, loadgen=None)
    return d.run_tests((test_update_code_change, test_load_module, test_add_delete_module, test_purge,
                        test_suspend_resume, test_restart, test_restart_application, test_add_remove_application,
                        test_application_instructions), "reld-instr-")


if __name__ == "__main__":
    sys.exit(main())
