#!/usr/bin/env python3
"""Hot code in C, without the daemon: this driver plays reld's side of the
control protocol (docs/runtime.md) against the real example process
(kv-host with kv_server modules) while the load generator sends requests.
Prints TAP.

Usage: hotcode.py --bin BUILD/examples --bad DIR_WITH_BAD_MODULES
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

ARGS = None
N = 0
FAILED = 0
SANITIZER_REPORTS = []  # stderr of any kv-host that reported a sanitizer error


def tap(ok, name, detail=""):
    global N, FAILED
    N += 1
    if not ok:
        FAILED += 1
    print(f"{'ok' if ok else 'not ok'} {N} - {name}")
    if not ok and detail:
        for line in str(detail).splitlines():
            print(f"# {line}")
    sys.stdout.flush()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def request(port, line):
    """One request line to the service on port, and its reply line."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall((line + "\n").encode())
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data.decode().strip()


def module(name):
    return os.path.join(ARGS.bin, f"{name}.so")


class Proc:
    """A kv-host process with a control channel, as reld would start it."""

    def __init__(self, version="1", extra_modules=(), path=None, host="kv-host", args=()):
        self.port = free_port()
        ours, theirs = socket.socketpair()
        mods = [f"kv_server={path or module('kv_server-' + version)}"] + list(extra_modules)
        env = dict(os.environ, RELD_CONTROL_FD=str(theirs.fileno()), RELD_PROCESS="kv",
                   RELD_MODULES=":".join(mods))
        self.p = subprocess.Popen([os.path.join(ARGS.bin, host), "--listen", f"127.0.0.1:{self.port}"] + list(args),
                                  env=env, pass_fds=[theirs.fileno()], stderr=subprocess.PIPE, text=True)
        theirs.close()
        self.ctl = ours
        self.buf = b""
        self.next_id = 1
        self.hello = self.read(5)
        self.wait_listening()

    def wait_listening(self):
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.01)
        raise RuntimeError("kv-host does not listen")

    def read(self, timeout):
        """One message from the process, or None on timeout."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.ctl.settimeout(left)
            try:
                chunk = self.ctl.recv(65536)
            except socket.timeout:
                return None
            if not chunk:
                raise EOFError("control channel closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def send_raw(self, data):
        self.ctl.sendall(data)

    def cmd(self, cmd, timeout=5, **fields):
        i = self.next_id
        self.next_id += 1
        self.send_raw((json.dumps(dict(fields, id=i, cmd=cmd)) + "\n").encode())
        reply = self.read(timeout)
        if reply is not None and reply.get("id") != i:
            raise RuntimeError(f"reply for {reply.get('id')}, expected {i}: {reply}")
        return reply

    def request(self, line):
        return request(self.port, line)

    def alive(self):
        return self.p.poll() is None

    def children(self):
        """The pids of the process's children, zombies included (not reaped)."""
        kids = []
        for task in os.listdir(f"/proc/{self.p.pid}/task"):
            with open(f"/proc/{self.p.pid}/task/{task}/children") as f:
                kids += [int(x) for x in f.read().split()]
        return kids

    def stop(self):
        if self.alive():
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.ctl.close()
        err = self.p.stderr.read()
        if "Sanitizer" in err or "runtime error:" in err:
            SANITIZER_REPORTS.append(err)
        return err


class Load:
    """The load generator, running while an upgrade happens."""

    def __init__(self, port, seconds=2.0, rate=2000, prefix=None):
        cmd = [os.path.join(ARGS.bin, "loadgen"), "--port", str(port), "--rate", str(rate), "--duration",
               str(seconds), "--conns", "8", "--json"]
        if prefix:
            cmd += ["--prefix", prefix]
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def result(self):
        out, err = self.p.communicate(timeout=60)
        r = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"failed": -1}
        r["stderr"] = err
        return r


def upgrade(proc, module_name, new_version, extra, down=False):
    """The relup of one updated module: load_object_code, then (after the
    point of no return) suspend, load and code_change in OTP's order for
    the direction, resume, purge. Returns (replies, suspend->resume seconds)."""
    replies = [proc.cmd("load_object_code", module=module_name, path=module(f"{module_name}-{new_version}"),
                        version=new_version)]
    t0 = time.monotonic()
    replies.append(proc.cmd("suspend", modules=[module_name]))
    if down:
        replies.append(proc.cmd("code_change", module=module_name, mode="down", extra=extra))
        replies.append(proc.cmd("load", module=module_name, pre_purge="brutal_purge"))
    else:
        replies.append(proc.cmd("load", module=module_name, pre_purge="brutal_purge"))
        replies.append(proc.cmd("code_change", module=module_name, mode="up", extra=extra))
    replies.append(proc.cmd("resume", modules=[module_name]))
    window = time.monotonic() - t0
    replies.append(proc.cmd("purge", module=module_name, method="brutal_purge"))
    return replies, window


def all_ok(replies):
    return all(r is not None and r.get("ok") for r in replies)


def check_load(name, load):
    r = load.result()
    tap(r.get("failed") == 0 and r.get("final_mismatches") == 0 and r.get("ok", 0) > 0,
        f"{name}: every request answered right under load ({r.get('ok')} ok, {r.get('failed')} failed)",
        json.dumps(r))


def test_upgrades_under_load():
    p = Proc("1")
    h = p.hello
    tap(h and h.get("event") == "hello" and h.get("protocol") == 1 and
        h.get("modules", [{}])[0].get("version") == "1", "hello names protocol 1 and kv_server 1", h)
    # Counts from before any upgrade, checked after each one.
    for _ in range(5):
        p.request("INCR before")

    load = Load(p.port, seconds=2.5)
    time.sleep(0.5)
    replies, window = upgrade(p, "kv_server", "2", "v1-to-v2")
    tap(all_ok(replies), "1 -> 2: load_object_code, suspend, load, code_change up, resume, purge", replies)
    check_load("1 -> 2", load)
    tap(p.request("VERSION") == "OK kv_server 2", "1 -> 2: version 2 serves", p.request("VERSION"))
    tap(p.request("GET before") == "OK before 5", "1 -> 2: state converted, counts kept", p.request("GET before"))
    total = p.request("TOTAL")
    tap(total.startswith("OK total ") and int(total.split()[2]) > 5, "1 -> 2: v2's new state (running total)", total)
    tap(window < 0.5, f"1 -> 2: suspended for {window * 1000:.2f} ms")

    load = Load(p.port, seconds=2.0)
    time.sleep(0.4)
    replies, _ = upgrade(p, "kv_server", "1", "v1-to-v2", down=True)
    tap(all_ok(replies), "2 -> 1: suspend, code_change down (by v2), load, resume", replies)
    check_load("2 -> 1", load)
    tap(p.request("VERSION") == "OK kv_server 1" and p.request("GET before") == "OK before 5",
        "2 -> 1: version 1 serves with the counts", p.request("GET before"))

    replies, _ = upgrade(p, "kv_server", "2", "again")
    tap(all_ok(replies), "1 -> 2 again", replies)

    # 2 -> 3: a new library module (add_module) that kv_server 3 names in
    # dep_mods: load it first, then the server, as the relup orders them.
    load = Load(p.port, seconds=2.0)
    time.sleep(0.4)
    r = [p.cmd("load_object_code", module="kv_lib", path=module("kv_lib-1"), version="1"),
         p.cmd("load_object_code", module="kv_server", path=module("kv_server-3"), version="3"),
         p.cmd("suspend", modules=["kv_server"]),
         p.cmd("load", module="kv_lib"),
         p.cmd("load", module="kv_server"),
         p.cmd("code_change", module="kv_server", mode="up", extra=None),
         p.cmd("resume", modules=["kv_server"]),
         p.cmd("purge", module="kv_server", method="soft_purge")]
    tap(all_ok(r), "2 -> 3: kv_lib added, kv_server 3 loaded after it", r)
    check_load("2 -> 3", load)
    top = p.request("TOP 1")
    tap(top.startswith("OK ") and "=" in top, "2 -> 3: the new TOP command works through kv_lib", top)
    tap(p.request("GET before") == "OK before 5", "2 -> 3: counts kept", p.request("GET before"))
    st = p.cmd("status")
    names = {m["name"]: m["version"] for m in st.get("modules", [])}
    tap(names == {"kv_server": "3", "kv_lib": "1"} and not st.get("suspended"),
        "status: kv_server 3 and kv_lib 1, not suspended", st)
    err = p.stop()
    tap("ERROR" not in err and "Sanitizer" not in err, "kv-host exits cleanly", err[-2000:])


def test_failing_code_change():
    p = Proc("1")
    for _ in range(7):
        p.request("INCR kept")
    r = [p.cmd("load_object_code", module="kv_server", path=module("kv_server-2b"), version="2b"),
         p.cmd("suspend", modules=["kv_server"]),
         p.cmd("load", module="kv_server")]
    cc = p.cmd("code_change", module="kv_server", mode="up", extra=None)
    res = p.cmd("resume", modules=["kv_server"])
    tap(all_ok(r) and cc and not cc["ok"] and cc["error"] == "code_change_failed" and
        "fails on purpose" in cc["message"], "failing code_change is refused and says why", cc)
    tap(res["ok"] and p.request("VERSION") == "OK kv_server 1", "the old version is current again",
        p.request("VERSION"))
    tap(p.request("GET kept") == "OK kept 7" and p.request("INCR kept") == "OK kept 8",
        "the old state is untouched and serves", p.request("GET kept"))
    st = p.cmd("status")["modules"][0]
    tap(st["version"] == "1" and st["old_version"] is None and st["staged_version"] is None,
        "no trace of the broken version", st)
    p.stop()

    # Down: the newer code converts before the older loads; when that
    # fails nothing has loaded, and the staged older code can be dropped.
    p = Proc("2b")
    for _ in range(3):
        p.request("INCR kept")
    r = [p.cmd("load_object_code", module="kv_server", path=module("kv_server-1"), version="1"),
         p.cmd("suspend", modules=["kv_server"])]
    cc = p.cmd("code_change", module="kv_server", mode="down", extra=None)
    r += [p.cmd("resume", modules=["kv_server"]), p.cmd("drop_object_code", module="kv_server")]
    tap(all_ok(r) and not cc["ok"] and cc["error"] == "code_change_failed",
        "failing code_change down is refused; the staged code is dropped", [cc] + r)
    st = p.cmd("status")["modules"][0]
    tap(p.request("GET kept") == "OK kept 3" and st["version"] == "2b" and st["staged_version"] is None,
        "version 2b still serves its untouched state", st)
    p.stop()


def test_suspend_timeout():
    p = Proc("1")
    with socket.create_connection(("127.0.0.1", p.port)) as busy:
        busy.sendall(b"SLEEP 1500\n")
        time.sleep(0.1)
        t0 = time.monotonic()
        reply = p.cmd("suspend", timeout=0.3, modules=["kv_server"], timeout_ms=300)
        waited = time.monotonic() - t0
        tap(reply is None and 0.25 < waited < 1.0,
            f"suspend of a busy process is not acknowledged within its 300 ms ({waited * 1000:.0f} ms)")
        late = p.read(5)  # the process reaches its safe point and acknowledges
        tap(late and late.get("ok") and late.get("suspended"), "the late acknowledgement arrives", late)
        tap(p.cmd("resume", modules=["kv_server"])["ok"], "resume after the timeout")
        busy.recv(100)
    tap(p.request("INCR t") == "OK t 1", "the process serves again")
    p.stop()


def test_purge_in_use():
    p = Proc("1")
    with socket.create_connection(("127.0.0.1", p.port)) as c:
        c.sendall(b"HOLD 1000\n")  # a long request pins version 1
        tap(c.recv(100) == b"OK held\n", "HOLD pins kv_server 1")
        r = [p.cmd("load_object_code", module="kv_server", path=module("kv_server-2"), version="2"),
             p.cmd("suspend", modules=["kv_server"]), p.cmd("load", module="kv_server"),
             p.cmd("code_change", module="kv_server", mode="up", extra=None),
             p.cmd("resume", modules=["kv_server"])]
        soft = p.cmd("purge", module="kv_server", method="soft_purge")
        tap(all_ok(r) and not soft["ok"] and soft["error"] == "in_use",
            "soft_purge of old code still in use is refused", soft)
        tap(p.request("VERSION") == "OK kv_server 2", "the new code serves meanwhile")
        time.sleep(1.2)  # the hold ends
        soft = p.cmd("purge", module="kv_server", method="soft_purge")
        tap(soft["ok"] and soft["purged"], "soft_purge succeeds once the old code is free", soft)
    p.stop()

    p = Proc("1")
    with socket.create_connection(("127.0.0.1", p.port)) as c:
        c.sendall(b"HOLD 5000\n")
        c.recv(100)
        [p.cmd("load_object_code", module="kv_server", path=module("kv_server-2"), version="2"),
         p.cmd("suspend", modules=["kv_server"]), p.cmd("load", module="kv_server"),
         p.cmd("code_change", module="kv_server", mode="up", extra=None), p.cmd("resume", modules=["kv_server"])]
        brutal = p.cmd("purge", module="kv_server", method="brutal_purge")
        try:
            p.p.wait(5)
        except subprocess.TimeoutExpired:
            pass
        tap(brutal and brutal.get("killed") and p.p.returncode == -signal.SIGKILL,
            "brutal_purge of old code in use ends the process (SIGKILL), for its supervisor to restart",
            f"{brutal} rc={p.p.returncode}")
    p.stop()


def test_bad_objects():
    p = Proc("1")
    p.request("INCR x")
    notelf = tempfile.NamedTemporaryFile("w", suffix=".so", delete=False)
    notelf.write("this is not an ELF file\n")
    notelf.close()
    cases = [
        ("no descriptor", os.path.join(ARGS.bad, "bad-no_desc.so"), None, "no_descriptor", "exports no reld_module"),
        ("wrong ABI", os.path.join(ARGS.bad, "bad-bad_abi.so"), None, "abi", "module ABI 99"),
        ("wrong name", os.path.join(ARGS.bad, "bad-bad_name.so"), None, "name", "is module 'other', not 'kv_server'"),
        ("not an ELF file", notelf.name, None, "dlopen", "cannot load"),
        ("missing file", "/nonexistent/kv.so", None, "dlopen", "cannot load"),
        ("wrong version", module("kv_server-2"), "3", "version", "is version 2 of kv_server, not 3"),
        ("the object already loaded", module("kv_server-1"), None, "same_object", "already loaded"),
    ]
    for name, path, version, code, text in cases:
        fields = {"module": "kv_server", "path": path}
        if version:
            fields["version"] = version
        r = p.cmd("load_object_code", **fields)
        tap(r and not r["ok"] and r["error"] == code and text in r["message"],
            f"bad object refused: {name} ({code})", r)
    os.unlink(notelf.name)
    st = p.cmd("status")["modules"]
    tap(st == [{"name": "kv_server", "version": "1", "old_version": None, "staged_version": None, "pins": 0,
                "old_pins": 0}], "the process is unharmed: kv_server 1 alone", st)
    tap(p.request("INCR x") == "OK x 2", "and serves with its state")
    p.stop()


def test_loader_thread():
    """New code is opened on the runtime's loader thread, which answers
    load_object_code itself; the version is adopted before the next
    command."""
    p = Proc("1")
    p.request("INCR x")
    # Two load_object_code at once: the second finds the first under way.
    for i in ("first", "second"):
        p.send_raw((json.dumps({"id": i, "cmd": "load_object_code", "module": "kv_server",
                                "path": module("kv_server-2")}) + "\n").encode())
    replies = {r["id"]: r for r in (p.read(5), p.read(5)) if r}
    tap(replies.get("first", {}).get("ok") is True and replies["first"].get("version") == "2" and
        replies.get("second", {}).get("error") == "already_staged",
        "the loader answers load_object_code, ids echoed; a second one meanwhile is refused", replies)
    st = p.cmd("status")["modules"][0]
    tap(st["version"] == "1" and st["staged_version"] == "2", "the next command finds the new code staged", st)
    tap(p.request("INCR x") == "OK x 2", "the process serves on its current code meanwhile")
    # Dropped (closed by the loader), then opened again from the same file:
    # in that order, so it is a fresh object, not the one being closed.
    r1 = p.cmd("drop_object_code", module="kv_server")
    r2 = p.cmd("load_object_code", module="kv_server", path=module("kv_server-2"))
    tap(r1 and r1["ok"] and r2 and r2["ok"], "dropped and loaded again", (r1, r2))
    r = [p.cmd(c, **f) for c, f in (("suspend", {"modules": ["kv_server"]}), ("load", {"module": "kv_server"}),
                                    ("code_change", {"module": "kv_server", "mode": "up", "extra": None}),
                                    ("resume", {"modules": ["kv_server"]}), ("purge", {"module": "kv_server"}))]
    tap(all(x and x["ok"] for x in r) and p.request("VERSION") == "OK kv_server 2" and
        p.request("GET x") == "OK x 2" and r[1]["modules"][0]["version"] == "2" and
        r[-1]["modules"][0]["old_version"] is None and not any("modules" in x for x in (r[0], r[2], r[3])),
        "and upgraded with it: version 2 serves the state; load and purge replies carry the module list, "
        "those inside the pause do not", r)
    p.stop()


def test_malformed_messages():
    p = Proc("1")
    cases = [
        (b"not json\n", "bad_request"),
        (b"[1, 2]\n", "bad_request"),
        (b'{"id": 1}\n', "bad_request"),
        (b'{"id": 2, "cmd": 5}\n', "bad_request"),
        (b'{"id": 3, "cmd": "teleport"}\n', "unknown_command"),
        (b'{"id": 4, "cmd": "load"}\n', "bad_request"),
        (b'{"id": 5, "cmd": "load", "module": "nope"}\n', "no_module"),
        (b'{"id": 6, "cmd": "suspend", "modules": "kv_server"}\n', "bad_request"),
        (b'{"id": 7, "cmd": "code_change", "module": "kv_server", "mode": "up"}\n', "not_suspended"),
        (b'{"id": 8, "cmd": "load", "module": "kv_server"}\n', "no_object_code"),
        (b'{"id": 9, "cmd": "purge", "module": "kv_server", "method": "gentle"}\n', "bad_request"),
        (b'{"id": 10, "cmd": "drop_object_code", "module": "kv_server"}\n', "no_object_code"),
        (b"\xff\xfe\x00garbage\n", "bad_request"),
        (b"x" * 70000 + b"\n", "bad_request"),
    ]
    for data, code in cases:
        p.send_raw(data)
        r = p.read(5)
        tap(r is not None and r.get("ok") is False and r.get("error") == code,
            f"malformed message refused ({code}): {data[:40]!r}", r)
    tap(p.alive() and p.request("INCR m") == "OK m 1", "the process is alive and serves")
    tap(p.cmd("status")["suspended"] is False, "and still answers the protocol")
    p.stop()


def test_reld_gone_while_suspended():
    p = Proc("1")
    tap(p.cmd("suspend", modules=["kv_server"])["suspended"], "suspended")
    p.ctl.close()
    time.sleep(0.2)
    tap(p.alive() and p.request("INCR g") == "OK g 1", "reld gone while suspended: the process resumes, unmanaged")
    p.stop()


def fill(port, n, prefix="key"):
    """INCR n distinct keys on one connection, pipelined 500 at a time (kv-host drops a client whose
    unread replies fill its buffer); True when each was answered OK."""
    ok = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        for start in range(0, n, 500):
            batch = range(start, min(n, start + 500))
            s.sendall("".join(f"INCR {prefix}{i}\n" for i in batch).encode())
            data = b""
            while data.count(b"\n") < len(batch):
                chunk = s.recv(65536)
                if not chunk:
                    return False
                data += chunk
            ok += data.count(b"OK ")
    return ok == n


def rehearse(proc, version, timeout_ms=5000, change=True, extra="array-to-table", path=None, wait=10):
    return proc.cmd("rehearse", timeout=wait, timeout_ms=timeout_ms,
                    modules=[{"module": "kv_server", "path": path or module(f"kv_server-{version}"),
                              "extra": extra, "change": change}])


def unchanged(proc, pid, counts):
    """The process is the same one, runs kv_server 1 with nothing staged, and its counters are intact."""
    st = proc.cmd("status")
    mods = st["modules"] if st else []
    got = {k: proc.request(f"GET {k}") for k in counts}
    return (proc.alive() and st and st["pid"] == pid and proc.p.pid == pid and
            mods == [{"name": "kv_server", "version": "1", "old_version": None, "staged_version": None, "pins": 0,
                      "old_pins": 0}] and
            all(got[k] == f"OK {k} {v}" for k, v in counts.items()) and
            proc.request("VERSION") == "OK kv_server 1"), (st, got)


def test_health():
    p = Proc("1")
    h = p.cmd("health")
    tap(h and h["ok"] and h["healthy"] is True and h["message"] == "" and h["modules"][0]["healthy"] is True and
        h["modules"][0]["version"] == "1" and h["modules"][0]["old_version"] is None,
        "health: kv_server 1's callback says healthy; the module list is status's, with healthy", h)
    p.request("INCR __unhealthy")
    h = p.cmd("health")
    tap(h and h["ok"] and h["healthy"] is False and
        h["message"] == "kv_server: the key __unhealthy is set (1)" and h["modules"][0]["healthy"] is False and
        h["modules"][0]["message"] == "the key __unhealthy is set (1)",
        "health: unhealthy by a request, the message names the module and its reason", h)
    replies, _ = upgrade(p, "kv_server", "2", "array-to-table")
    h = p.cmd("health")
    tap(all_ok(replies) and h["healthy"] is False and "kv_server: the key __unhealthy is set (1)" == h["message"],
        "health after 1 -> 2 asks version 2, on the converted state", h)
    p.stop()

    p = Proc("2sick")
    h = p.cmd("health")
    tap(h and h["healthy"] is False and h["message"] == "kv_server: kv_server 2sick is unhealthy on purpose",
        "health: a version that is always unhealthy (2sick)", h)
    p.stop()



def test_abi1_module():
    """Module ABI 1, whose host callbacks took no context pointer, is
    refused in one line: at start, as new code, and in a rehearsal."""
    path = os.path.join(ARGS.bad, "abi1-kv_server.so")
    want = f"{path} has module ABI 1; this runtime loads module ABI 2 only: rebuild the module against this " \
        "reld-runtime.h"
    env = dict(os.environ, RELD_MODULES=f"kv_server={path}")
    r = subprocess.run([os.path.join(ARGS.bin, "kv-host"), "--listen", f"127.0.0.1:{free_port()}"], env=env,
                       capture_output=True, text=True, timeout=30)
    tap(r.returncode == 1 and r.stderr == f"kv-host: {want}\n",
        "a host whose RELD_MODULES names a module of ABI 1 exits 1 with one line", r.stderr)
    p = Proc("1")
    r = p.cmd("load_object_code", module="kv_server", path=path)
    tap(r and r["ok"] is False and r["error"] == "abi" and r["message"] == want,
        "load_object_code of a module of ABI 1: abi, one line", r)
    r = rehearse(p, "1", path=path)
    tap(r and r["ok"] is False and r["step"] == "load" and r["message"] == f"kv_server: load: Protocol error: {want}",
        "a rehearsal with a module of ABI 1 fails at load", r)
    tap(p.request("INCR a") == "OK a 1", "the process serves on, unharmed")
    p.stop()


def thread_states(pid):
    """The scheduler state of each thread of pid (R, S, ...)."""
    states = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/stat") as f:
            states.append(f.read().rsplit(")", 1)[1].split()[0])
    return states


def test_threaded_host():
    """kv-host-mt: 12 worker threads, 8 connections of load (so that some
    workers sit in epoll_wait and must be woken), upgraded 1 -> 2 -> 1
    twice under load: every suspend answered, 0 failed requests."""
    p = Proc("1", host="kv-host-mt", args=["--threads", "12"])
    tap(p.hello and p.hello["modules"][0]["version"] == "1" and p.request("INCR t") == "OK t 1",
        "kv-host-mt with 12 workers serves kv_server 1", p.hello)
    for _ in range(500):  # bounded: the workers start after the listener
        if len(thread_states(p.p.pid)) >= 13:
            break
        time.sleep(0.01)
    tap(len(thread_states(p.p.pid)) >= 13, "it runs 12 workers beside the main thread", thread_states(p.p.pid))
    load = Load(p.port, seconds=3.0, rate=2000, prefix="mt")
    time.sleep(0.3)
    results = []
    for k in range(2):
        results.append(upgrade(p, "kv_server", "2", "array-to-table"))
        time.sleep(0.2)
        results.append(upgrade(p, "kv_server", "1", "array-to-table", down=True))
        time.sleep(0.2)
    tap(all(all_ok(r) for r, _ in results), "1 -> 2 -> 1, twice, with every worker parked for each",
        [r for r, _ in results if not all_ok(r)])
    check_load("threaded 1 -> 2 -> 1", load)
    tap(p.request("GET t") == "OK t 1" and p.request("VERSION") == "OK kv_server 1",
        "the state came through four conversions", p.request("GET t"))
    h = p.cmd("health")
    tap(h and h["ok"] and h["healthy"] is True, "health with the workers parked for it", h)
    err = p.stop()
    tap(p.p.returncode == 0, "SIGTERM ends every worker and the process, exit 0", err)


def test_rehearsal_success_under_load():
    p = Proc("1")
    pid = p.p.pid
    tap(fill(p.port, 1500), "the live state: 1,500 keys")
    for _ in range(3):
        p.request("INCR kept")
    load = Load(p.port, seconds=2.0, prefix="s")
    time.sleep(0.3)
    r = rehearse(p, "2")
    check_load("rehearsal 1 -> 2", load)
    tap(r and r["ok"] and r["rehearsed"] == [{"module": "kv_server", "from": "1", "to": "2", "mode": "up",
                                               "change": True, "verified": True}] and r["fork_us"] >= 0,
        f"rehearsal 1 -> 2 on the live state succeeds (fork {r and r.get('fork_us')} us, "
        f"{r and r.get('elapsed_ms')} ms)", r)
    ok, why = unchanged(p, pid, {"kept": 3, "key0": 1, "key1499": 1})
    tap(ok, "nothing of the rehearsal reached the process: same pid, version 1, nothing staged, counters", why)
    tap(p.children() == [], "the copy was reaped", p.children())
    # A module the process does not have yet: its code opened and started in the copy.
    r = p.cmd("rehearse", timeout_ms=5000, modules=[{"module": "kv_lib", "path": module("kv_lib-1")}])
    tap(r and r["ok"] and r["rehearsed"] == [{"module": "kv_lib", "from": None, "to": "1", "mode": "up",
                                               "change": False, "verified": False}] and
        [m["name"] for m in p.cmd("status")["modules"]] == ["kv_server"],
        "an added module is loaded and started in the copy only", r)
    p.stop()


def test_rehearsal_catches_the_live_state_crash():
    # A fresh state converts fine: what a unit test of 2crash would see.
    p = Proc("1")
    fill(p.port, 1000)
    r = rehearse(p, "2crash")
    tap(r and r["ok"], "2crash converts a state of 1,000 keys (a unit test would pass)", r)
    p.stop()

    p = Proc("1")
    pid = p.p.pid
    fill(p.port, 1001)
    for _ in range(4):
        p.request("INCR kept")
    load = Load(p.port, seconds=2.0, prefix="c")
    time.sleep(0.3)
    r = rehearse(p, "2crash")
    check_load("rehearsal of 2crash", load)
    tap(r and r["ok"] is False and r["error"] == "rehearsal_failed" and r["outcome"] == "crashed" and
        r["signal"] == "SIGABRT" and r["module"] == "kv_server" and r["step"] == "code_change up" and
        r["message"] == "kv_server: code_change up: killed by SIGABRT",
        "the rehearsal of 2crash on 1,001 keys reports the crash: module, step, signal", r)
    ok, why = unchanged(p, pid, {"kept": 4, "key0": 1, "key1000": 1})
    tap(ok, "the process is untouched: same pid, version 1, counters intact", why)
    tap(p.children() == [], "the crashed copy was reaped", p.children())

    # The same upgrade without the rehearsal: the process itself crashes.
    replies = [p.cmd("load_object_code", module="kv_server", path=module("kv_server-2crash"), version="2crash"),
               p.cmd("suspend", modules=["kv_server"]), p.cmd("load", module="kv_server")]
    try:
        cc = p.cmd("code_change", module="kv_server", mode="up", extra=None)
    except EOFError:
        cc = "control channel closed"
    try:
        p.p.wait(5)
    except subprocess.TimeoutExpired:
        pass
    tap(all_ok(replies) and not isinstance(cc, dict) and p.p.returncode == -signal.SIGABRT,
        "without the rehearsal the same upgrade kills the process (SIGABRT): its state is gone",
        f"{replies} {cc} rc={p.p.returncode}")
    p.stop()


def test_rehearsal_errors_and_timeout():
    p = Proc("1")
    pid = p.p.pid
    fill(p.port, 1200)
    r = rehearse(p, "2b")
    tap(r and r["ok"] is False and r["outcome"] == "failed" and r["step"] == "code_change up" and
        r["message"].startswith("kv_server: code_change up: ") and "fails on purpose" in r["message"] and
        r["signal"] is None,
        "a code_change that returns an error: the module's message", r)
    r = rehearse(p, "2badtotal")
    tap(r and r["ok"] is False and r["outcome"] == "failed" and r["step"] == "verify" and
        "running total 0, but the counts sum to 1200" in r["message"],
        "verify after code_change up finds a state converted wrong", r)
    r = rehearse(p, "nonexistent", path="/nonexistent/kv.so")
    tap(r and r["ok"] is False and r["step"] == "load" and "cannot load /nonexistent/kv.so" in r["message"],
        "new code that cannot be loaded fails at load", r)
    r = rehearse(p, "2", path=module("kv_server-1"))
    tap(r and r["ok"] is False and r["step"] == "load" and "already loaded" in r["message"],
        "the object already loaded is refused, as load_object_code does", r)

    load = Load(p.port, seconds=2.0, prefix="h")
    time.sleep(0.2)
    t0 = time.monotonic()
    r = rehearse(p, "2hang", timeout_ms=800)
    waited = time.monotonic() - t0
    check_load("a rehearsal that hangs", load)
    tap(r and r["ok"] is False and r["outcome"] == "timeout" and r["step"] == "code_change up" and
        r["message"] == "kv_server: code_change up: no result within 800 ms (the copy was killed)" and
        waited >= 0.75, f"a code_change that never returns: timeout, the copy killed ({waited * 1000:.0f} ms)", r)
    tap(p.children() == [], "the killed copy was reaped", p.children())

    # One at a time.
    p.send_raw((json.dumps({"id": "a", "cmd": "rehearse", "timeout_ms": 600,
                            "modules": [{"module": "kv_server", "path": module("kv_server-2hang")}]}) + "\n"
                + json.dumps({"id": "b", "cmd": "rehearse",
                              "modules": [{"module": "kv_server", "path": module("kv_server-2")}]}) + "\n").encode())
    second = p.read(5)
    tap(second and second["id"] == "b" and second["error"] == "busy", "a second rehearsal meanwhile is refused",
        second)
    tap(p.request("INCR kept") == "OK kept 1", "the process serves while the copy hangs")
    first = p.read(5)
    tap(first and first["id"] == "a" and first["outcome"] == "timeout", "the first ends in its time", first)

    bad = [({}, "modules list"), ({"modules": []}, "modules list"), ({"modules": [{"module": "kv_server"}]}, "path"),
           ({"modules": [{"path": "/x"}]}, "module"), ({"modules": ["kv_server"]}, "object"),
           ({"modules": [{"module": "kv_server", "path": "/x", "change": "yes"}]}, "change"),
           ({"modules": [{"module": "kv_server", "path": "/x"}], "timeout_ms": 0}, "timeout_ms"),
           ({"modules": [{"module": "kv_server", "path": "/x"}], "timeout_ms": "5"}, "timeout_ms")]
    for fields, word in bad:
        r = p.cmd("rehearse", **fields)
        tap(r and r["ok"] is False and r["error"] == "bad_request" and word in r["message"],
            f"rehearse refused: {json.dumps(fields)}", r)
    ok, why = unchanged(p, pid, {"kept": 1, "key0": 1})
    tap(ok and p.children() == [], "after all that the process is untouched and has no child", why)

    # reld goes away during a rehearsal: the copy is killed and reaped.
    p.send_raw((json.dumps({"id": 1, "cmd": "rehearse", "timeout_ms": 60000,
                            "modules": [{"module": "kv_server", "path": module("kv_server-2hang")}]}) + "\n").encode())
    time.sleep(0.3)
    had = p.children()
    fds = sorted(os.listdir(f"/proc/{had[0]}/fd"), key=int) if len(had) == 1 else None
    threads = os.listdir(f"/proc/{had[0]}/task") if len(had) == 1 else None
    tap(fds == ["0", "1", "2", "3"] and threads == [str(had[0])],
        "the copy has fds 0, 1, 2 and its report pipe only (no socket of the process), and one thread",
        (fds, threads))
    p.ctl.close()
    time.sleep(0.3)
    tap(len(had) == 1 and p.alive() and p.request("INCR kept") == "OK kept 2" and p.children() == [],
        "reld gone during a rehearsal: the copy is killed and reaped, the process serves on", (had, p.children()))
    p.stop()


def test_rehearsal_2_to_3():
    p = Proc("2")
    fill(p.port, 50)
    r = p.cmd("rehearse", timeout_ms=5000,
              modules=[{"module": "kv_lib", "path": module("kv_lib-1"), "version": "1"},
                       {"module": "kv_server", "path": module("kv_server-3"), "version": "3", "extra": None}])
    tap(r and r["ok"] and [x["module"] for x in r["rehearsed"]] == ["kv_lib", "kv_server"] and
        r["rehearsed"][1] == {"module": "kv_server", "from": "2", "to": "3", "mode": "up", "change": True,
                                "verified": True},
        "rehearsal of 2 -> 3: kv_lib added, kv_server converted up and down, verified both ways", r)
    # Only a load (no code_change, the same layout): the new version's verify on the state as it is.
    r = rehearse(p, "3", change=False)
    tap(r and r["ok"] and r["rehearsed"] == [{"module": "kv_server", "from": "2", "to": "3", "mode": "up",
                                               "change": False, "verified": True}],
        "a load without code_change is verified", r)
    # A downgrade: the current code (2) converts down to 1's layout, 1's verify checks it, and back up.
    r = p.cmd("rehearse", timeout_ms=5000, modules=[{"module": "kv_server", "path": module("kv_server-1"),
                                                     "mode": "down", "extra": "array-to-table"}])
    tap(r and r["ok"] and r["rehearsed"] == [{"module": "kv_server", "from": "2", "to": "1", "mode": "down",
                                               "change": True, "verified": True}],
        "rehearsal of a downgrade 2 -> 1: code_change down by the current code, verified both ways", r)
    r = p.cmd("rehearse", modules=[{"module": "kv_server", "path": module("kv_server-1"), "mode": "sideways"}])
    tap(r and r["error"] == "bad_request" and "mode" in r["message"], "a mode other than up or down is refused", r)
    r = p.cmd("rehearse", timeout_ms=5000,
              modules=[{"module": "kv_server", "path": module("kv_server-3"), "version": "4"}])
    tap(r and r["ok"] is False and r["step"] == "load" and "not 4" in r["message"],
        "a version other than the one expected fails at load", r)
    p.stop()


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--bad", required=True)
    ARGS = ap.parse_args()
    print("TAP version 13")
    for t in (test_upgrades_under_load, test_failing_code_change, test_suspend_timeout, test_purge_in_use,
              test_bad_objects, test_loader_thread, test_malformed_messages, test_reld_gone_while_suspended,
              test_health, test_abi1_module, test_threaded_host, test_rehearsal_success_under_load,
              test_rehearsal_catches_the_live_state_crash, test_rehearsal_errors_and_timeout, test_rehearsal_2_to_3):
        try:
            t()
        except Exception as e:  # a crash of the driver is a failed check, not a silent pass
            tap(False, f"{t.__name__} crashed", repr(e))
    tap(not SANITIZER_REPORTS, "no kv-host reported a sanitizer error", "\n".join(SANITIZER_REPORTS)[-3000:])
    print(f"1..{N}")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
