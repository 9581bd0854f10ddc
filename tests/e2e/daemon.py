#!/usr/bin/env python3
"""End to end: the real reld on a temporary root and socket, driven by the
real relctl, as a user would. Prints TAP.

Usage: daemon.py --reld PATH --relctl PATH --shop SHOP_ROOT
"""
import argparse
import io
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

A = None
N = 0
FAILED = 0
UNCLEAN = []  # reld logs with a sanitizer report, or a SIGTERM stop that did not exit 0


def tap(ok, name, detail=""):
    global N, FAILED
    N += 1
    FAILED += 0 if ok else 1
    print(f"{'ok' if ok else 'not ok'} {N} - {name}")
    if not ok and detail:
        for line in str(detail).splitlines()[:30]:
            print(f"# {line}")
    sys.stdout.flush()


def skip(name, why):
    global N
    N += 1
    print(f"ok {N} - {name} # SKIP {why}")


# The config of a Reld started without one (None: reld's defaults). Suites
# that do not test the health gate set a short window ("min_healthy_ms:
# 100"): every install waits that long for health, 1 s by default.
DEFAULT_CONFIG = None


class Reld:
    def __init__(self, work, config=None):
        self.work = work
        self.root = os.path.join(work, "root")
        self.sock = os.path.join(work, "reld.sock")
        self.config = config if config is not None else DEFAULT_CONFIG
        self.start()

    def start(self):
        args = [A.reld, "--root", self.root, "--socket", self.sock]
        if self.config:
            path = os.path.join(self.work, "reld.yaml")
            with open(path, "w") as f:
                f.write(self.config)
            args += ["--config", path]
        self.log = open(os.path.join(self.work, "reld.log"), "a")
        self.p = subprocess.Popen(args, stderr=self.log)
        for _ in range(3000):  # until it accepts (a killed reld leaves its socket file); ASan on a loaded machine is slow
            if self.p.poll() is not None:
                break
            try:
                with socket.socket(socket.AF_UNIX) as probe:
                    probe.connect(self.sock)
                break
            except OSError:
                time.sleep(0.01)

    def relctl(self, *args, stdin=None, user=None):
        cmd = [A.relctl, *args]
        if user is not None:
            cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"] + cmd
        p = subprocess.run(cmd, env=dict(os.environ, RELD_SOCKET=self.sock), capture_output=True,
                           stdin=stdin, timeout=60)
        return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")

    def stop(self, sig=signal.SIGTERM):
        if self.p.poll() is None:
            self.p.send_signal(sig)
            self.p.wait(10)
            if sig == signal.SIGTERM and self.p.returncode != 0:
                UNCLEAN.append(f"reld exited {self.p.returncode} after SIGTERM")
        self.log.close()
        log = open(os.path.join(self.work, "reld.log"), errors="replace").read()
        if "Sanitizer" in log or "runtime error:" in log:
            UNCLEAN.append(log[log.find("=="):][:6000])
        return self.p.returncode


def tree(path):
    """Every path under path, for 'nothing else changed' checks."""
    out = set()
    for d, dirs, files in os.walk(path):
        for n in dirs + files:
            out.add(os.path.relpath(os.path.join(d, n), path))
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def private_shop(shop):
    """A copy of the example shop whose web application listens on a free
    port instead of its fixed 8080, so that suites and test runs on one
    machine do not take each other's port. Removed at exit."""
    import atexit
    dst = tempfile.mkdtemp(prefix="reld-shop-")
    atexit.register(shutil.rmtree, dst, True)
    shutil.copytree(shop, dst, symlinks=True, dirs_exist_ok=True)
    port = str(free_port())
    for d, _, files in os.walk(os.path.join(dst, "lib")):
        if "app.yaml" in files:
            p = os.path.join(d, "app.yaml")
            text = open(p).read()
            if "8080" in text:
                with open(p, "w") as f:
                    f.write(text.replace("127.0.0.1:8080", f"127.0.0.1:{port}").replace('"8080"', f'"{port}"'))
    return dst


def release_tar(shop, vsn, apps, path, mode="w:gz", mutate=None):
    """A release tarball of the example root, optionally changed by mutate(tar)."""
    with tarfile.open(path, mode) as t:
        t.add(os.path.join(shop, "releases", vsn), f"releases/{vsn}")
        for a in apps:
            t.add(os.path.join(shop, "lib", a), f"lib/{a}")
        if mutate:
            mutate(t)
    return path


REL1 = ("1.0", ["inventory-1.0.0", "web-1.0.0", "legacy_auth-1.0.0"])
REL2 = ("2.0", ["inventory-1.1.0", "web-2.0.1", "stats-1.0.0"])


def add_entry(t, name, type=tarfile.REGTYPE, data=b"", mode=0o644, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.size = type, mode, linkname, len(data)
    t.addfile(info, io.BytesIO(data) if type == tarfile.REGTYPE else None)


def test_unpack_and_states(work):
    r = Reld(work)
    tap(r.p.poll() is None and os.path.exists(r.sock), "reld starts on a temporary root, unprivileged layout")
    mode = os.stat(r.sock).st_mode & 0o777
    tap(mode == 0o660, f"the control socket is 0660 ({oct(mode)})")

    t1 = release_tar(A.shop, *REL1, os.path.join(work, "shop-1.0.tar.gz"))
    rc, out, err = r.relctl("unpack", t1)
    tap(rc == 0 and "unpacked release shop 1.0" in out, "unpack a .tar.gz from a file", err)
    t2 = release_tar(A.shop, *REL2, os.path.join(work, "shop-2.0.tar.xz"), "w:xz")
    with open(t2, "rb") as f:
        rc, out, err = r.relctl("unpack", "-", stdin=f)
    tap(rc == 0 and "2.0" in out, "unpack a .tar.xz from standard input (a pipe)", err)
    tap(os.path.isdir(os.path.join(r.root, "lib", "web-2.0.1", "modules")), "files are in place")
    tap(os.listdir(os.path.join(r.root, "tmp")) == [], "no staging directory is left")

    rc, out, err = r.relctl("releases", "--json")
    rels = json.loads(out)["releases"] if rc == 0 else []
    tap([(x["vsn"], x["state"]) for x in rels] == [("1.0", "unpacked"), ("2.0", "unpacked")],
        "releases: 1.0 and 2.0, unpacked", out + err)

    rc, out, err = r.relctl("relup", "1.0", "2.0", "--json")
    tap(rc == 0 and json.loads(out)["up"][3] == {"op": "point_of_no_return"} and "derived" in err,
        "relup against the daemon's root", err)

    rc, out, err = r.relctl("make-permanent", "1.0")
    tap(rc == 1 and err.strip() == "relctl: release 1.0 is unpacked; only the current release can be made permanent",
        "make-permanent of an unpacked release is refused with one line", err)
    rc, out, err = r.relctl("make-permanent")
    tap(rc == 1 and "no release is current" in err, "make-permanent with nothing current is refused", err)
    rc, out, err = r.relctl("remove", "9.9")
    tap(rc == 1 and err.strip() == "relctl: release 9.9 is not known", "remove of an unknown release is refused", err)
    rc, out, err = r.relctl("remove")
    tap(rc == 2, "remove without a version is a usage error", err)

    rc, out, err = r.relctl("remove", "2.0")
    tap(rc == 0 and not os.path.exists(os.path.join(r.root, "releases", "2.0")) and
        not os.path.exists(os.path.join(r.root, "lib", "stats-1.0.0")) and
        os.path.exists(os.path.join(r.root, "lib", "web-1.0.0")),
        "remove deletes the release and the application versions only it used", err)

    # States the daemon cannot reach yet without install (issue 5) are set
    # in the database directly, to check the refusals that depend on them.
    db = sqlite3.connect(os.path.join(r.root, "reld.db"))
    db.execute("UPDATE releases SET state = 'permanent' WHERE vsn = '1.0'")
    db.commit()
    db.close()
    rc, out, err = r.relctl("remove", "1.0")
    tap(rc == 1 and err.strip() == "relctl: release 1.0 is permanent; it cannot be removed",
        "remove of the permanent release is refused", err)
    rc, out, err = r.relctl("make-permanent", "1.0")
    tap(rc == 0, "make-permanent of the permanent release is a no-op", err)

    rc, out, err = r.relctl("history", "--json")
    h = json.loads(out) if rc == 0 else {"events": []}
    kinds = [(e["kind"], e["release"]) for e in h["events"]]
    tap(kinds == [("unpacked", "1.0"), ("unpacked", "2.0"), ("removed", "2.0")] and
        all("uid" in e["who"] for e in h["events"]), "history: unpacks and the removal, with who asked", kinds)
    rc, out, err = r.relctl("status")
    tap(rc == 0 and "permanent 1.0" in out, "status names the permanent release", out + err)
    try:
        p = subprocess.run([A.relctl, "status", "--watch", "0.2"], env=dict(os.environ, RELD_SOCKET=r.sock),
                           capture_output=True, text=True, timeout=1.1)
        watched = p.stdout
    except subprocess.TimeoutExpired as e:
        watched = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    tap(watched.count("relctl status, every 0.2 s") >= 3 and watched.count("permanent 1.0") >= 3,
        "status --watch refreshes until interrupted", watched[-300:])

    r2 = Reld(work)
    r2.p.wait(5)
    tap(r2.p.returncode == 1, "a second reld on the same root refuses to start")
    r2.log.close()
    r.stop()
    return r


def content_size(vsn, apps):
    total = 0
    for top in [os.path.join(A.shop, "releases", vsn)] + [os.path.join(A.shop, "lib", a) for a in apps]:
        for d, dirs, files in os.walk(top):
            total += 512 * (len(dirs) + len(files)) + sum(os.path.getsize(os.path.join(d, f)) for f in files)
    return total


def test_hostile(work):
    # A limit well above both example releases (their size depends on the
    # build: sanitizers make binaries larger), and a file above it.
    limit = 2 * max(content_size(*REL1), content_size(*REL2)) + 65536
    r = Reld(work, config=f"max_unpacked_bytes: {limit}\n")
    good = release_tar(A.shop, *REL1, os.path.join(work, "good.tar.gz"))
    tap(r.relctl("unpack", good)[0] == 0, f"a good release unpacks (limit {limit} bytes)")
    outside = os.path.join(work, "outside")
    os.makedirs(outside)
    before_root, before_out = tree(r.root), tree(outside)

    def extra(name, **kw):
        return lambda t: add_entry(t, name, **kw)

    evil = os.path.join(outside, "evil")
    cases = [
        ("absolute path", extra(evil, data=b"x"), "absolute path refused"),
        ("'..' in a path", extra("lib/web-2.0.1/../../../outside/evil", data=b"x"), "path with '..'"),
        ("symlink to an absolute path", extra("lib/web-2.0.1/link", type=tarfile.SYMTYPE, linkname="/etc/passwd"),
         "symlink to '/etc/passwd' outside the archive refused"),
        ("symlink climbing out", extra("lib/web-2.0.1/link", type=tarfile.SYMTYPE, linkname="../../../outside"),
         "outside the archive refused"),
        ("hard link outside", extra("lib/web-2.0.1/hl", type=tarfile.LNKTYPE, linkname="../outside/evil"),
         "hard link to '../outside/evil' outside the archive refused"),
        ("character device", extra("lib/web-2.0.1/dev", type=tarfile.CHRTYPE), "device file refused"),
        ("block device", extra("lib/web-2.0.1/blk", type=tarfile.BLKTYPE), "device file refused"),
        ("FIFO", extra("lib/web-2.0.1/fifo", type=tarfile.FIFOTYPE), "FIFO refused"),
        ("setuid bit", extra("lib/web-2.0.1/bin/su", data=b"x", mode=0o4755), "setuid/setgid bits refused"),
        ("setgid bit", extra("lib/web-2.0.1/bin/sg", data=b"x", mode=0o2755), "setuid/setgid bits refused"),
        ("content over the limit", extra("lib/web-2.0.1/priv/big", data=os.urandom(limit + 1)),
         f"more than the limit of {limit} bytes"),
        ("a path outside releases/ and lib/", extra("etc/cron.d/evil", data=b"x"), "not part of a release tarball"),
        ("an application directory the release does not use", extra("lib/extra-1.0/app.yaml", data=b"name: x\n"),
         "lib/extra-1.0: not an application of release 2.0"),
        ("the same file twice", extra("lib/web-2.0.1/app.yaml", data=b"x"), "the archive holds it twice"),
    ]
    for name, mutate, want in cases:
        path = release_tar(A.shop, *REL2, os.path.join(work, "evil.tar"), "w", mutate)
        rc, out, err = r.relctl("unpack", path)
        lines = [l for l in err.splitlines() if l.startswith("relctl: ")]
        tap(rc == 1 and lines and want in lines[0] and len(lines) == 1, f"refused: {name}", err)

    def raw(name, data):
        path = os.path.join(work, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    gz = open(release_tar(A.shop, *REL2, os.path.join(work, "t.tar.gz")), "rb").read()
    empty_tar = io.BytesIO()
    tarfile.open(fileobj=empty_tar, mode="w").close()
    other = release_tar(A.shop, *REL1, os.path.join(work, "other.tar"), "w",
                        lambda t: add_entry(t, "releases/1.0/notes.txt", data=b"not in the first tarball\n"))
    files = [
        ("corrupt archive", raw("c.tar.gz", os.urandom(4096)), "cannot read the archive"),
        ("truncated archive", raw("t2.tar.gz", gz[: len(gz) // 2]), "truncated"),
        ("empty file", raw("e.tar", b""), ""),
        ("empty archive", raw("e2.tar", empty_tar.getvalue()), "empty archive"),
        ("a release already present with other content", other, "release 1.0 is already present with different content"),
    ]
    for name, path, want in files:
        rc, out, err = r.relctl("unpack", path)
        tap(rc == 1 and want in err and err.startswith("relctl: "), f"refused: {name}", err)
    rc, out, err = r.relctl("unpack", good)
    tap(rc == 0, "the same tarball again proceeds (nothing changes)", err)

    # Definitions that disagree with the files.
    def bad_app(t):
        add_entry(t, "lib/stats-1.0.0/app.yaml", data=b"name: stats\nvsn: \"9.9\"\nmodules: [stats_collector]\n")

    disagreements = [
        ("an application's version disagrees with its directory", ["inventory-1.1.0", "web-2.0.1"], bad_app,
         "defines stats 9.9 but the release wants stats 1.0.0"),
        ("an application missing from the tarball", ["inventory-1.1.0", "web-2.0.1"], None,
         "lib/stats-1.0.0/app.yaml: cannot read"),
    ]
    for name, apps, mutate, want in disagreements:
        path = release_tar(A.shop, "2.0", apps, os.path.join(work, "d.tar"), "w", mutate)
        rc, out, err = r.relctl("unpack", path)
        tap(rc == 1 and want in err, f"refused: {name}", err)

    tap(tree(r.root) == before_root, "after every refusal the root is as it was",
        sorted(tree(r.root) ^ before_root)[:20])
    tap(tree(outside) == before_out and not os.path.exists(evil), "nothing was written outside the root")
    rc, out, err = r.relctl("releases", "--json")
    tap([x["vsn"] for x in json.loads(out)["releases"]] == ["1.0"], "the database knows only 1.0")
    r.stop()


def test_clients(work):
    r = Reld(work, config="readers: all\n")
    release = release_tar(A.shop, *REL1, os.path.join(work, "r.tar.gz"))
    r.relctl("unpack", release)
    # A client that connects and never finishes its request, another that
    # sends half a line, and a pipe that trickles a tarball: none blocks
    # the daemon.
    silent = socket.socket(socket.AF_UNIX)
    silent.connect(r.sock)
    half = socket.socket(socket.AF_UNIX)
    half.connect(r.sock)
    half.sendall(b'{"cmd": "rel')
    slow_r, slow_w = os.pipe()
    trickle = subprocess.Popen([A.relctl, "unpack", "-"], stdin=slow_r, env=dict(os.environ, RELD_SOCKET=r.sock),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.close(slow_r)
    os.write(slow_w, b"\x1f\x8b")  # the start of a gzip stream, then nothing
    results = []

    def one():
        results.append(r.relctl("releases", "--json")[0])

    t0 = time.monotonic()
    threads = [threading.Thread(target=one) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - t0
    tap(results == [0] * 50, f"50 concurrent clients answered while others stall ({took:.2f} s)", results)
    os.close(slow_w)
    trickle.wait(10)
    tap(trickle.returncode == 1, "the trickled, cut-off tarball is refused when its pipe closes")
    silent.close()
    half.close()

    if os.geteuid() != 0 or not shutil.which("setpriv"):
        skip("an unprivileged writer is refused", "needs root and setpriv")
        skip("an unprivileged reader is allowed by readers: all", "needs root and setpriv")
    else:
        os.chmod(r.sock, 0o666)  # let another user reach the socket; SO_PEERCRED decides
        os.chmod(work, 0o755)
        with open(release, "rb") as f:
            rc, out, err = r.relctl("unpack", "-", stdin=f, user=65534)
        tap(rc == 1 and "permission denied" in err and "uid 65534" in err, "an unprivileged writer is refused", err)
        rc, out, err = r.relctl("releases", user=65534)
        tap(rc == 0 and "1.0" in out, "an unprivileged reader is allowed by readers: all", err)
    r.stop()


def fd_target(pid, fd):
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:  # closed meanwhile
        return ""


def test_crash(work):
    r = Reld(work)
    r.relctl("unpack", release_tar(A.shop, *REL1, os.path.join(work, "k.tar.gz")))
    # kill -9 in the middle of an unpack fed by a pipe
    rd, wr = os.pipe()
    trickle = subprocess.Popen([A.relctl, "unpack", "-"], stdin=rd, env=dict(os.environ, RELD_SOCKET=r.sock),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.close(rd)
    data = open(release_tar(A.shop, *REL2, os.path.join(work, "k2.tar")), "rb").read()
    os.write(wr, data[: len(data) // 2])
    time.sleep(0.3)
    # A stream is spooled first, to an unnamed file in tmp/ (O_TMPFILE).
    tmp = os.path.join(r.root, "tmp")
    staged = os.listdir(tmp) + [t for t in (fd_target(r.p.pid, fd) for fd in os.listdir(f"/proc/{r.p.pid}/fd"))
                                if t.startswith(tmp + "/")]
    r.stop(signal.SIGKILL)
    os.close(wr)
    trickle.wait(10)
    tap(staged and trickle.returncode == 1, "kill -9 of reld during an unpack; relctl says it failed", staged)
    r = Reld(work)
    rc, out, err = r.relctl("releases", "--json")
    tap(rc == 0 and [x["vsn"] for x in json.loads(out)["releases"]] == ["1.0"], "restarted: releases intact", out)
    tmp = os.path.join(r.root, "tmp")
    tap(not os.path.exists(tmp) or os.listdir(tmp) == [], "the interrupted unpack's staging directory is gone")
    db = sqlite3.connect(os.path.join(r.root, "reld.db"))
    ok = db.execute("PRAGMA integrity_check").fetchone()[0]
    version = db.execute("PRAGMA user_version").fetchone()[0]
    db.close()
    tap(ok == "ok" and version == 3, f"database intact (integrity_check {ok}, schema {version})")
    r.stop()

    # A current release never made permanent is rolled back at start.
    db = sqlite3.connect(os.path.join(r.root, "reld.db"))
    db.execute("UPDATE releases SET state = 'current' WHERE vsn = '1.0'")
    db.commit()
    db.close()
    r = Reld(work)
    rc, out, err = r.relctl("releases", "--json")
    tap(json.loads(out)["releases"][0]["state"] == "unpacked", "a current release never made permanent is rolled back")
    r.stop()


def test_pack(work):
    r = Reld(work)
    d = os.path.join(work, "dir")
    os.makedirs(os.path.join(d, "releases"))
    os.makedirs(os.path.join(d, "lib"))
    shutil.copytree(os.path.join(A.shop, "releases", "1.0"), os.path.join(d, "releases", "1.0"))
    for a in REL1[1]:
        shutil.copytree(os.path.join(A.shop, "lib", a), os.path.join(d, "lib", a))
    out = os.path.join(work, "packed.tar.xz")
    rc, o, err = r.relctl("pack", d, "-o", out)
    tap(rc == 0 and os.path.exists(out), "pack validates a directory and writes its tarball", err)
    rc, o, err = r.relctl("unpack", out)
    tap(rc == 0 and "shop 1.0" in o, "reld accepts what pack wrote", err)
    os.unlink(os.path.join(d, "lib", "web-1.0.0", "app.yaml"))
    bad = os.path.join(work, "bad.tar.gz")
    rc, o, err = r.relctl("pack", d, "-o", bad)
    tap(rc == 1 and "lib/web-1.0.0/app.yaml: cannot read" in err and not os.path.exists(bad) and
        not os.path.exists(bad + ".tmp"), "pack refuses an invalid release and writes nothing", err)
    r.stop()


def test_remove_keeps_dirs_when_unsure(work):
    r = Reld(work)
    r.relctl("unpack", release_tar(A.shop, *REL1, os.path.join(work, "a.tar.gz")))
    r.relctl("unpack", release_tar(A.shop, *REL2, os.path.join(work, "b.tar.gz")))
    with open(os.path.join(r.root, "releases", "1.0", "release.yaml"), "w") as f:
        f.write("release: [broken\n")
    rc, out, err = r.relctl("remove", "2.0")
    tap(rc == 0 and not os.path.exists(os.path.join(r.root, "releases", "2.0")) and
        os.path.isdir(os.path.join(r.root, "lib", "stats-1.0.0")),
        "remove keeps every application directory when another release's definition cannot be read", err)
    r.stop()
    log = open(os.path.join(work, "reld.log")).read()
    tap("release 2.0's application directories stay: a release's definition cannot be read" in log,
        "and says so in its log", log[-500:])


def test_config_errors(work):
    r = Reld(work, config="writer_grop: ops\n")
    r.p.wait(5)
    r.log.close()
    log = open(os.path.join(work, "reld.log")).read()
    tap(r.p.returncode == 1 and "reld.yaml:1:1: unknown key 'writer_grop' in config" in log,
        "a config file mistake: exit 1 with file:line:col", log[-500:])


def test_notify(work):
    ns = os.path.join(work, "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(ns)
    s.settimeout(5)
    os.environ["NOTIFY_SOCKET"] = ns
    try:
        r = Reld(work)
        msg = s.recv(4096).decode()
        tap("READY=1" in msg and "STATUS=" in msg, "sd_notify READY=1 and STATUS= under a notify socket", msg)
        r.stop()
    finally:
        del os.environ["NOTIFY_SOCKET"]
        s.close()


def main():
    global A
    ap = argparse.ArgumentParser()
    ap.add_argument("--reld", required=True)
    ap.add_argument("--relctl", required=True)
    ap.add_argument("--shop", required=True)
    A = ap.parse_args()
    A.shop = private_shop(A.shop)
    return run_tests((test_unpack_and_states, test_hostile, test_clients, test_crash, test_pack,
                      test_remove_keeps_dirs_when_unsure, test_config_errors, test_notify), "reld-e2e-")


def run_tests(tests, prefix):
    """Runs each test(work) in a fresh directory, as TAP; a crash of the
    driver is a failed check. Returns the exit status."""
    print("TAP version 13")
    for t in tests:
        work = tempfile.mkdtemp(prefix=prefix)
        try:
            t(work)
        except Exception:
            import traceback
            tap(False, f"{t.__name__} crashed", traceback.format_exc())
        finally:
            subprocess.run(["pkill", "-f", f"reld --root {work}"], capture_output=True)
            shutil.rmtree(work, ignore_errors=True)
    tap(not UNCLEAN, "every reld stopped cleanly, with no sanitizer report", "\n".join(UNCLEAN))
    print(f"1..{N}")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
