#!/usr/bin/env python3
"""End to end: kill -9 of reld at every step of every multi-step change
(issue 11), then a start without the fault, which must complete or undo
the change by itself, and the version used normally afterwards. Prints TAP.

Each step is a crash point (util/crashpoint.h): in a build with test hooks,
RELD_TEST_CRASH_AT=op:step makes reld SIGKILL itself there. A case passes
when reld died of SIGKILL (so the step was reached), the next start serves,
the database and the files agree (every release row has its directory and
the reverse, tmp/ is empty, every application directory belongs to a
release, the database is sound), and then the version goes through the
usual life: unpack from its tarball, install, make-permanent, its processes
run; and the other release is removed and unpacked again. Prints the
matrix (operation x step: done or undone by the restart) as TAP comments.

Steps of upgrades (before each instruction of a relup) are killed in
supervise.py (RELD_TEST_CRASH_BEFORE); here the steps around the relup.

Usage: crash.py --reld PATH --relctl PATH --shop SHOP_ROOT [--no-hooks]
"""
import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import daemon as d  # noqa: E402  (tap, Reld, release_tar, run_tests)

A = None
APPS = {d.REL1[0]: d.REL1[1], d.REL2[0]: d.REL2[1]}
MATRIX = []

# (operation, step, the base root it starts from, the version it acts on,
# the relctl command that reaches the step; make-permanent runs after an
# install of the version in the same reld, as a current release does not
# outlive a restart).
CASES = [
    ("unpack", "staged", "one-permanent", "2.0", "unpack"),
    ("unpack", "synced", "one-permanent", "2.0", "unpack"),
    ("unpack", "apps-moved", "one-permanent", "2.0", "unpack"),
    ("unpack", "release-moved", "one-permanent", "2.0", "unpack"),
    ("unpack", "on-disk", "one-permanent", "2.0", "unpack"),
    ("unpack", "recorded", "one-permanent", "2.0", "unpack"),
    ("remove", "release-aside", "two", "2.0", "remove"),
    ("remove", "aside", "two", "2.0", "remove"),
    ("remove", "recorded", "two", "2.0", "remove"),
    ("remove", "deleted", "two", "2.0", "remove"),
    ("install", "loaded", "one-unpacked", "1.0", "install"),
    ("install", "recorded", "one-unpacked", "1.0", "install"),
    ("install", "started", "one-unpacked", "1.0", "install"),
    ("upgrade", "done", "two", "2.0", "install"),
    ("upgrade", "recorded", "two", "2.0", "install"),
    ("permanent", "recorded", "two", "2.0", "make-permanent"),
    ("permanent", "marked", "two", "2.0", "make-permanent"),
]


def tarball(work, vsn):
    return d.release_tar(A.shop, vsn, APPS[vsn], os.path.join(work, f"shop-{vsn}.tar.gz"))


def must(r, *args):
    rc, out, err = r.relctl(*args)
    if rc != 0:
        raise RuntimeError(f"relctl {' '.join(args)}: {err}")
    return out


def make_bases(work):
    """The roots the cases start from, reld stopped: {name: root}."""
    steps = {
        "one-unpacked": [("unpack", "1.0")],
        "one-permanent": [("unpack", "1.0"), ("install", "1.0"), ("make-permanent", "1.0")],
        "two": [("unpack", "1.0"), ("install", "1.0"), ("make-permanent", "1.0"), ("unpack", "2.0")],
    }
    bases = {}
    for name, cmds in steps.items():
        base = os.path.join(work, "base-" + name)
        os.makedirs(base)
        r = d.Reld(base)
        for cmd, vsn in cmds:
            must(r, cmd, tarball(work, vsn) if cmd == "unpack" else vsn)
        r.stop()
        bases[name] = r.root
    return bases


def releases(r):
    return {x["vsn"]: x["state"] for x in json.loads(must(r, "releases", "--json"))["releases"]}


def disagreements(root, rels):
    """What in root disagrees with the database's releases rels: a list of lines."""
    bad = []
    dirs = set(os.listdir(os.path.join(root, "releases")))
    if dirs != set(rels):
        bad.append(f"release directories {sorted(dirs)} but database rows {sorted(rels)}")
    tmp = os.path.join(root, "tmp")
    if os.path.isdir(tmp) and os.listdir(tmp):
        bad.append(f"tmp/ holds {os.listdir(tmp)}")
    used = {a for v in dirs for a in APPS.get(v, [])}
    libs = set(os.listdir(os.path.join(root, "lib")))
    if libs - used:
        bad.append(f"application directories no release uses: {sorted(libs - used)}")
    if used - libs:
        bad.append(f"application directories missing: {sorted(used - libs)}")
    db = sqlite3.connect(os.path.join(root, "reld.db"))
    ok = db.execute("PRAGMA integrity_check").fetchone()[0]
    db.close()
    if ok != "ok":
        bad.append(f"integrity_check: {ok}")
    return bad


def running(r):
    st = json.loads(must(r, "status", "--json"))
    return st.get("running"), sum(1 for p in st["processes"] if p.get("pid", 0) > 0)


def use_normally(r, work, vsn):
    """vsn through the usual life, then the other release removed and
    unpacked again. '' when everything worked, else what did not."""
    other = "1.0" if vsn == "2.0" else "2.0"
    try:
        must(r, "unpack", tarball(work, vsn))  # present or not: the same tarball proceeds
        if releases(r).get(vsn) != "permanent":
            if running(r)[0] != vsn:
                must(r, "install", vsn)
            must(r, "make-permanent", vsn)
        rels = releases(r)
        run, n = running(r)
        if rels.get(vsn) != "permanent" or run != vsn or n == 0:
            return f"{vsn} is {rels.get(vsn)}, running {run} with {n} processes"
        if other in rels:
            must(r, "remove", other)
        must(r, "unpack", tarball(work, other))
        if releases(r).get(other) != "unpacked":
            return f"{other} is {releases(r).get(other)} after remove and unpack"
        return ""
    except RuntimeError as e:
        return str(e)


def took_effect(op, state):
    """Did op's change survive the restart? An install or upgrade never
    does: a current release never made permanent is rolled back at start,
    as OTP's release_handler does."""
    return {"unpack": state is not None, "remove": state is None, "install": state == "current",
            "upgrade": state == "current", "permanent": state == "permanent"}[op]


def test_matrix(work):
    if A.no_hooks:
        d.skip("kill -9 at every step", "reld built without test hooks (-Dtest_hooks=false)")
        return
    bases = make_bases(work)
    for op, step, base, vsn, cmd in CASES:
        name = f"{op}:{step}"
        case = os.path.join(work, f"case-{op}-{step}")
        os.makedirs(case)
        shutil.copytree(bases[base], os.path.join(case, "root"), symlinks=True)
        before = releases_of(os.path.join(case, "root"))
        os.environ["RELD_TEST_CRASH_AT"] = name
        try:
            r = d.Reld(case)
        finally:
            del os.environ["RELD_TEST_CRASH_AT"]
        if cmd == "make-permanent":
            before[vsn] = "current" if r.relctl("install", vsn)[0] == 0 else "install failed"
        rc, out, err = r.relctl(cmd, tarball(work, vsn) if cmd == "unpack" else vsn)
        try:
            r.p.wait(10)  # it kills itself at the step
        except subprocess.TimeoutExpired:
            pass
        died = r.p.poll() == -signal.SIGKILL
        r.stop()
        d.tap(died and rc != 0, f"{name}: reld killed itself at the step; relctl says it failed",
              f"reld {r.p.returncode}, relctl {rc} {err}")
        r = d.Reld(case)
        serves = r.p.poll() is None
        rels = releases(r) if serves else {}
        bad = disagreements(r.root, rels) if serves else ["reld did not start"]
        d.tap(not bad, f"{name}: the next start leaves files and database in agreement", "; ".join(bad))
        outcome = "completed" if took_effect(op, rels.get(vsn)) else "undone"
        MATRIX.append((name, outcome, f"{before.get(vsn)} -> {rels.get(vsn)}"))
        why = use_normally(r, case, vsn) if serves else "reld did not start"
        d.tap(not why, f"{name}: {vsn} then used normally (unpack, install, make-permanent, remove, unpack)", why)
        r.stop()
        shutil.rmtree(case, ignore_errors=True)
    print("# kill -9 matrix: operation:step -> what the next start made of it (state of the release before -> after)")
    for name, outcome, change in MATRIX:
        print(f"#   {name:26} {outcome:10} {change}")


def releases_of(root):
    db = sqlite3.connect(os.path.join(root, "reld.db"))
    rows = dict(db.execute("SELECT vsn, state FROM releases").fetchall())
    db.close()
    return rows


def main():
    global A
    ap = argparse.ArgumentParser()
    ap.add_argument("--reld", required=True)
    ap.add_argument("--relctl", required=True)
    ap.add_argument("--shop", required=True)
    ap.add_argument("--no-hooks", action="store_true")
    A = ap.parse_args()
    A.shop = d.private_shop(A.shop)  # its own port: not the other shop suites'
    d.A = A
    d.DEFAULT_CONFIG = "min_healthy_ms: 100\n"  # the gate is trusted.py's; here each install waits 0.1 s, not 1 s
    return d.run_tests((test_matrix,), "reld-crash-")


if __name__ == "__main__":
    sys.exit(main())
