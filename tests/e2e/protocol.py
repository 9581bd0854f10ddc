#!/usr/bin/env python3
"""End to end: relctl <-> reld with hostile text (issue 11, items 5 to 7).
The real relctl refuses an argument that is not valid UTF-8, or not a
release version, with one line and exit 2, sending nothing; the real reld
answers requests whose replies would quote invalid UTF-8. Prints TAP.

Usage: protocol.py --reld PATH --relctl PATH --kvroot KVCOUNTER_ROOT
"""
import argparse
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tarfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import daemon as d  # noqa: E402  (its Reld, tap and counters)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "runtime"))
from hotcode import free_port  # noqa: E402

A = None
FF = os.fsdecode(b"\xff")  # one byte that is not UTF-8, as subprocess passes it
CUT = os.fsdecode(b"2\xc3")  # '2' and the first byte of a two-byte character


def kv_tarball(work, vsn, port):
    """Release vsn of the kvcounter example, listening on port."""
    src = os.path.join(work, f"kvsrc-{vsn}")
    shutil.copytree(A.kvroot, src)
    app = os.path.join(src, "lib", f"kvcounter-{vsn}.0.0", "app.yaml")
    text = open(app).read().replace("127.0.0.1:17411", f"127.0.0.1:{port}")
    open(app, "w").write(text)
    path = os.path.join(work, f"kv-{vsn}.tar.gz")
    with tarfile.open(path, "w:gz") as t:
        t.add(os.path.join(src, "releases", vsn), f"releases/{vsn}")
        t.add(os.path.join(src, "lib", f"kvcounter-{vsn}.0.0"), f"lib/kvcounter-{vsn}.0.0")
    return path


def state(r):
    """What a refused command must not change: the releases and their
    states in reld's replies and in its database, the processes, the history."""
    rc, out, err = r.relctl("releases", "--json")
    rels = [(x["vsn"], x["state"]) for x in json.loads(out)["releases"]] if rc == 0 else None
    rc, out, err = r.relctl("status", "--json")
    st = json.loads(out) if rc == 0 else {}
    procs = sorted((p["app"], p["process"], p["pid"], p["vsn"]) for p in st.get("processes", []))
    rc, out, err = r.relctl("history", "--json")
    h = json.loads(out) if rc == 0 else {}
    db = sqlite3.connect(os.path.join(r.root, "reld.db"))
    rows = sorted(db.execute("SELECT vsn, state FROM releases").fetchall())
    db.close()
    return {"releases": rels, "current": st.get("current"), "permanent": st.get("permanent"), "processes": procs,
            "events": len(h.get("events", [])), "attempts": len(h.get("attempts", [])), "db": rows}


def one_line(rc, out, err, want_rc, want):
    lines = err.splitlines()
    return rc == want_rc and out == "" and len(lines) == 1 and lines[0].startswith("relctl: ") and want in lines[0]


def test_arguments(work):
    port = free_port()
    r = d.Reld(work)
    rc, out, err = r.relctl("install", kv_tarball(work, "1", port))
    d.tap(rc == 0, "install release 1 (current, not permanent)", err)
    rc, out, err = r.relctl("unpack", kv_tarball(work, "2", port))
    d.tap(rc == 0, "unpack release 2", err)
    before = state(r)
    d.tap(before["current"] == "1" and before["permanent"] is None and before["processes"],
          "release 1 is current and runs; none is permanent", before)

    not_utf8 = "is not valid UTF-8"
    not_vsn = "is not a release version"
    cases = [
        (["upgrade", FF], not_utf8, "upgrade $'\\xff'"),
        (["downgrade", FF], not_utf8, "downgrade $'\\xff'"),
        (["install", FF], not_utf8, "install $'\\xff'"),
        (["relup", FF, "2"], not_utf8, "relup $'\\xff' 2"),
        (["relup", "1", FF], not_utf8, "relup 1 $'\\xff'"),
        (["make-permanent", FF], not_utf8, "make-permanent $'\\xff'"),
        (["make-permanent", CUT], not_utf8, "make-permanent with a character cut in two"),
        (["make-permanent", "--json", FF], not_utf8, "make-permanent --json $'\\xff'"),
        (["remove", FF], not_utf8, "remove $'\\xff'"),
        (["upgrade", CUT], not_utf8, "upgrade with a character cut in two"),
        (["upgrade", "../2"], not_vsn, "upgrade ../2 (UTF-8, not a version)"),
        (["make-permanent", "2 "], not_vsn, "make-permanent '2 ' (UTF-8, not a version)"),
        (["install", "./no-such.tar.gz"], "./no-such.tar.gz: No such file or directory",
         "install of a missing file that is not a version either"),
        (["install", "no-such.tar.gz"], "no-such.tar.gz: No such file or directory",
         "install of a missing tarball whose name could pass for a version"),
    ]
    for args, want, name in cases:
        prev = state(r)
        rc, out, err = r.relctl(*args)
        d.tap(one_line(rc, out, err, 2, want) and (want != not_utf8 or "\\x" in err),
              f"relctl {name}: exit 2, one line, nothing sent", f"exit {rc}\nstdout: {out}\nstderr: {err}")
        after = state(r)
        d.tap(after == prev, f"relctl {name}: nothing changed", f"{prev}\n{after}")

    after = state(r)
    d.tap(after == before and after["permanent"] is None and ("1", "current") in after["db"],
          "make-permanent with a bad version did not make the current release permanent", after)
    rc, out, err = r.relctl("make-permanent")
    d.tap(rc == 0 and out.strip() == "release 1 is permanent",
          "make-permanent without a version still means the current release", out + err)
    r.stop()


def ask_raw(sock, data, timeout=10):
    """Sends data on a new connection; what reld sent until it closed, or
    None when it did not within timeout."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    try:
        s.connect(sock)
        s.sendall(data)
        got = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return got
            got += chunk
    except socket.timeout:
        return None
    finally:
        s.close()


def test_replies(work):
    r = d.Reld(work)
    # A parse error whose message cuts a character: jansson quotes '"\'
    # and the first byte of 'é'.
    got = ask_raw(r.sock, b'{"cmd": "\\\xc3\xa9"}\n')
    lines = got.decode(errors="replace").splitlines() if got is not None else []
    reply = json.loads(lines[0]) if len(lines) == 1 else {}
    d.tap(reply.get("ok") is False and reply.get("error", "").startswith("bad request: invalid escape near") and
          "\\xc3" in reply.get("error", ""), "a request whose parse error cuts a character is answered", got)

    # A tarball with an entry whose name is not UTF-8, refused with that name.
    src = os.path.join(work, "bad.tar")
    with tarfile.open(src, "w", format=tarfile.GNU_FORMAT, encoding="utf-8", errors="surrogateescape") as t:
        info = tarfile.TarInfo(os.fsdecode(b"\xffevil"))
        info.size = 0
        t.addfile(info)
    try:
        p = subprocess.run([A.relctl, "unpack", src], env=dict(os.environ, RELD_SOCKET=r.sock), capture_output=True,
                           timeout=20)
        rc, err = p.returncode, p.stderr.decode(errors="replace")
    except subprocess.TimeoutExpired:
        rc, err = None, "relctl hung: no reply"
    lines = err.splitlines()
    d.tap(rc == 1 and len(lines) == 1 and "\\xffevil" in lines[0],
          "a refused tarball entry whose name is not UTF-8 is answered (relctl unpack: exit 1, one line)", err)
    rc, out, err = r.relctl("status")
    d.tap(rc == 0, "reld still serves", err)
    r.stop()


def main():
    global A
    ap = argparse.ArgumentParser()
    ap.add_argument("--reld", required=True)
    ap.add_argument("--relctl", required=True)
    ap.add_argument("--kvroot", required=True)
    A = ap.parse_args()
    d.A = A
    return d.run_tests((test_arguments, test_replies), "reld-protocol-")


if __name__ == "__main__":
    sys.exit(main())
