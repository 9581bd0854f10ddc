#!/usr/bin/env python3
"""End to end: reld on a missing, empty or damaged database (issue 11,
item 9), and `reld --recover`. The real reld and relctl on temporary roots
holding the example's releases. Prints TAP.

A start that cannot trust its database must refuse with one line that
names the file and says what to do, exit 1, and change nothing; a new root
(nothing in releases/) starts with a new database. `reld --recover` keeps
the damaged file aside and rebuilds the database from the release
directories, the permanent release from ROOT/permanent, then exits.

Usage: database.py --reld PATH --relctl PATH --shop SHOP_ROOT
"""
import argparse
import glob
import hashlib
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import daemon as d  # noqa: E402  (tap, Reld, release_tar, run_tests)

A = None


def files(root):
    """Every file under root: {relative path: (size, mtime_ns, sha256)}."""
    out = {}
    for dirpath, dirs, names in os.walk(root):
        for n in dirs + names:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            digest = ""
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            out[os.path.relpath(p, root)] = (st.st_size if digest else 0, st.st_mtime_ns if digest else 0, digest)
    return out


def start_once(root, sock, *extra, timeout=10):
    """reld run to its end (a refused start, or --recover): (rc, stderr);
    rc None when it was still running after timeout s (it started), then
    stopped with SIGTERM."""
    p = subprocess.Popen([A.reld, "--root", root, "--socket", sock, *extra], stderr=subprocess.PIPE)
    try:
        _, err = p.communicate(timeout=timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        p.terminate()
        _, err = p.communicate(timeout=30)
        rc = None
    err = err.decode(errors="replace")
    if "Sanitizer" in err or "runtime error:" in err:
        d.UNCLEAN.append(err[err.find("=="):][:6000])
    return rc, err


def prepared(work):
    """A root with releases 1.0 (permanent, running) and 2.0 (unpacked),
    reld stopped; returns the root."""
    r = d.Reld(work)
    ok = r.relctl("unpack", d.release_tar(A.shop, *d.REL1, os.path.join(work, "1.tar.gz")))[0] == 0
    ok = ok and r.relctl("unpack", d.release_tar(A.shop, *d.REL2, os.path.join(work, "2.tar.gz")))[0] == 0
    ok = ok and r.relctl("install", "1.0")[0] == 0 and r.relctl("make-permanent", "1.0")[0] == 0
    r.stop()
    if not ok:
        raise RuntimeError("cannot prepare the root: " + open(os.path.join(work, "reld.log")).read()[-2000:])
    return r.root


def releases(r):
    rc, out, err = r.relctl("releases", "--json")
    return [(x["vsn"], x["state"]) for x in json.loads(out)["releases"]] if rc == 0 else err


def running(r):
    rc, out, err = r.relctl("status", "--json")
    return sum(1 for p in json.loads(out)["processes"] if p.get("pid", 0) > 0) if rc == 0 else -1


def damaged_files(root):
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(root, "reld.db.damaged-*")))


def serves(r):
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(r.sock)
        return r.p.poll() is None
    except OSError:
        return False


# ---- a new root ------------------------------------------------------------------


def test_new_root(work):
    r = d.Reld(work)
    d.tap(serves(r) and releases(r) == [], "a new root (no directory yet) starts with a new database")
    r.stop()
    os.remove(os.path.join(r.root, "reld.db"))
    os.makedirs(os.path.join(r.root, "releases"), exist_ok=True)
    r = d.Reld(work)
    d.tap(serves(r) and releases(r) == [], "a root with an empty releases/ and no database starts")
    r.stop()
    with open(os.path.join(r.root, "reld.db"), "w"):
        pass
    r = d.Reld(work)
    d.tap(serves(r) and releases(r) == [], "a root with an empty releases/ and a 0-byte database starts")
    rc, out, err = r.relctl("unpack", d.release_tar(A.shop, *d.REL1, os.path.join(work, "1.tar.gz")))
    d.tap(rc == 0 and releases(r) == [("1.0", "unpacked")], "and its database works", err)
    r.stop()


# ---- refusals -------------------------------------------------------------------------


def refused(root, sock, what, want_in_line):
    """reld must exit 1 with one line naming the file and --recover, and
    leave every file of the root as it was."""
    before = files(root)
    rc, err = start_once(root, sock)
    lines = err.strip().splitlines()
    db = os.path.join(root, "reld.db")
    d.tap(rc == 1 and len(lines) == 1 and lines[0].startswith(f"reld: error: {db}") and
          "reld --recover" in lines[0] and want_in_line in lines[0],
          f"{what}: reld exits 1 with one line naming the file and what to do", f"exit {rc}\n{err}")
    after = files(root)
    d.tap(after == before, f"{what}: nothing in the root changed",
          "\n".join(f"{k}: {before.get(k)} -> {after.get(k)}" for k in sorted(set(before) | set(after))
                    if before.get(k) != after.get(k)))
    d.tap(not os.path.exists(sock), f"{what}: no control socket was made")


def test_refusals(work):
    template = prepared(work)
    sock = os.path.join(work, "refused.sock")
    sound = open(os.path.join(template, "reld.db"), "rb").read()

    def case(name):
        root = os.path.join(work, name)
        shutil.copytree(template, root, symlinks=True)
        return root, os.path.join(root, "reld.db")

    root, db = case("empty")
    open(db, "wb").close()
    refused(root, sock, "a 0-byte database with releases", "the file is empty (0 bytes)")
    d.tap(os.path.getsize(db) == 0, "the 0-byte file is still 0 bytes")

    root, db = case("garbage")
    with open(db, "wb") as f:
        f.write(os.urandom(16384))
    refused(root, sock, "a database of random bytes", "file is not a database")

    root, db = case("damaged-page")
    page = 4096
    with open(db, "r+b") as f:
        f.seek(page)  # page 2: the releases table, the first one the schema creates
        f.write(b"\xa5" * 512)
    refused(root, sock, "a database with a damaged page", "quick_check")

    root, db = case("missing")
    os.remove(db)
    refused(root, sock, "a missing database with releases", "holds releases")
    d.tap(not os.path.exists(db), "the missing database was not created")

    root, db = case("truncated")
    with open(db, "wb") as f:
        f.write(sound[: len(sound) // 2])
    rc, err = start_once(root, sock)
    d.tap(rc == 1 and len(err.strip().splitlines()) == 1 and "reld --recover" in err,
          "a database cut in half is refused with one line", err)


# ---- reld --recover --------------------------------------------------------------------


def recover(root, sock, what):
    rc, err = start_once(root, sock, "--recover")
    d.tap(rc == 0 and f"recovered {os.path.join(root, 'reld.db')}" in err and not os.path.exists(sock),
          f"{what}: reld --recover rebuilds the database and exits 0", f"exit {rc}\n{err}")
    return err


def test_recover_with_the_permanent_marker(work):
    root = prepared(work)
    marker = open(os.path.join(root, "permanent")).read()
    d.tap(marker == "1.0\n", "make-permanent wrote ROOT/permanent", repr(marker))
    open(os.path.join(root, "reld.db"), "wb").close()
    recover(root, os.path.join(work, "reld.sock"), "a 0-byte database")
    kept = damaged_files(root)
    d.tap(len(kept) == 1 and os.path.getsize(os.path.join(root, kept[0])) == 0,
          "the damaged file is kept aside as reld.db.damaged-<time>", kept)
    r = d.Reld(work)
    d.tap(releases(r) == [("1.0", "permanent"), ("2.0", "unpacked")],
          "releases: 1.0 permanent (from the marker), 2.0 unpacked", releases(r))
    d.tap(running(r) == 3, "the permanent release boots", running(r))
    rc, out, err = r.relctl("history", "--json")
    events = json.loads(out)["events"] if rc == 0 else []
    rec = [e for e in events if e["kind"] == "recovered"]
    d.tap(len(rec) == 1 and rec[0]["detail"]["damaged"] == kept[0] and rec[0]["detail"]["permanent"] == "1.0" and
          rec[0]["detail"]["releases"] == ["1.0", "2.0"], "the history records the recovery", rec)
    rc, out, err = r.relctl("install", "2.0")
    d.tap(rc == 0, "then 2.0 installs over 1.0", err)
    rc, out, err = r.relctl("make-permanent", "2.0")
    d.tap(rc == 0 and releases(r) == [("1.0", "old"), ("2.0", "permanent")], "and is made permanent",
          (err, releases(r)))
    d.tap(open(os.path.join(root, "permanent")).read() == "2.0\n", "the marker follows")
    r.stop()


def test_recover_without_a_marker(work):
    root = prepared(work)
    with open(os.path.join(root, "reld.db"), "wb") as f:
        f.write(os.urandom(16384))
    with open(os.path.join(root, "reld.db-wal"), "wb") as f:
        f.write(b"a WAL worth keeping")
    os.remove(os.path.join(root, "permanent"))
    recover(root, os.path.join(work, "reld.sock"), "a database of random bytes, no marker")
    kept = damaged_files(root)
    d.tap(len(kept) == 2 and kept[1] == kept[0] + "-wal" and
          open(os.path.join(root, kept[1]), "rb").read() == b"a WAL worth keeping" and
          not os.path.exists(os.path.join(root, "reld.db-wal")),
          "the damaged file is kept aside with its -wal", kept)
    r = d.Reld(work)
    d.tap(releases(r) == [("1.0", "unpacked"), ("2.0", "unpacked")] and running(r) == 0,
          "every release is unpacked; nothing boots", releases(r))
    rc, out, err = r.relctl("install", "1.0")
    rc2, out2, err2 = r.relctl("make-permanent")
    d.tap(rc == 0 and rc2 == 0 and releases(r) == [("1.0", "permanent"), ("2.0", "unpacked")] and running(r) == 3,
          "a release can then be installed and made permanent", err + err2)
    r.stop()
    r = d.Reld(work)
    d.tap(running(r) == 3, "and it boots at the next start")
    r.stop()


def test_recover_a_missing_database(work):
    root = prepared(work)
    os.remove(os.path.join(root, "reld.db"))
    recover(root, os.path.join(work, "reld.sock"), "a missing database")
    d.tap(damaged_files(root) == [], "nothing to keep aside")
    r = d.Reld(work)
    d.tap(releases(r) == [("1.0", "permanent"), ("2.0", "unpacked")] and running(r) == 3,
          "1.0 permanent and running, 2.0 unpacked", releases(r))
    r.stop()


def test_recover_what_needs_no_recovery(work):
    root = prepared(work)
    sock = os.path.join(work, "reld.sock")
    rc, err = start_once(root, sock, "--recover")
    d.tap(rc == 0 and "is sound" in err and "nothing to recover" in err and damaged_files(root) == [],
          "reld --recover on a sound database changes nothing and exits 0", err)
    r = d.Reld(work)
    d.tap(releases(r) == [("1.0", "permanent"), ("2.0", "unpacked")], "its releases are as they were")
    rc, err = start_once(root, os.path.join(work, "other.sock"), "--recover")
    d.tap(rc == 1 and "another reld runs on this root" in err, "reld --recover refuses while reld runs", err)
    r.stop()
    db = sqlite3.connect(os.path.join(root, "reld.db"))
    db.execute("PRAGMA user_version = 9")
    db.commit()
    db.close()
    rc, err = start_once(root, sock, "--recover")
    d.tap(rc == 1 and "newer than this reld's" in err and damaged_files(root) == [],
          "a database of a newer reld is not a recovery's to replace", err)
    p = subprocess.run([A.reld, "--help"], capture_output=True, text=True)
    d.tap(p.returncode == 0 and "--recover" in p.stdout, "reld --help shows --recover", p.stdout)


def main():
    global A
    ap = argparse.ArgumentParser()
    ap.add_argument("--reld", required=True)
    ap.add_argument("--relctl", required=True)
    ap.add_argument("--shop", required=True)
    A = ap.parse_args()
    A.shop = d.private_shop(A.shop)  # its own port: not the other shop suites'
    d.A = A
    return d.run_tests((test_new_root, test_refusals, test_recover_with_the_permanent_marker,
                        test_recover_without_a_marker, test_recover_a_missing_database,
                        test_recover_what_needs_no_recovery), "reld-db-e2e-")


if __name__ == "__main__":
    sys.exit(main())
