#!/usr/bin/env python3
"""End to end: `relctl check` and `relctl pack` with the real relctl on real
tarballs of the example service (examples/kvcounter), good and broken as a
user breaks them: a host linked against the shared runtime, a module whose
descriptor names another module, a script whose interpreter is missing, an
appup that misses a changed module or load_modules across a state layout
change, an application changed under the same version, a hostile tarball.
Prints TAP.

Usage: check.py --relctl PATH --kvroot DIR --tests BUILD/tests
"""
import argparse
import json
import os
import shutil
import subprocess
import tarfile
import tempfile

N = 0
FAILED = 0


def tap(ok, name, detail=""):
    global N, FAILED
    N += 1
    if not ok:
        FAILED += 1
    print(("ok" if ok else "not ok") + " %d - %s" % (N, name))
    if not ok and detail:
        for line in str(detail).splitlines()[:20]:
            print("# " + line)


def relctl(*args):
    env = dict(os.environ, TMPDIR=A.tmp)
    p = subprocess.run([A.relctl] + list(args), capture_output=True, text=True, timeout=120, env=env)
    return p.returncode, p.stdout, p.stderr


def src(work, v, name=None):
    """A directory laid out as release v's tarball, copied from the kv root."""
    d = os.path.join(work, name or "src%s" % v)
    os.makedirs(os.path.join(d, "releases"))
    os.makedirs(os.path.join(d, "lib"))
    shutil.copytree(os.path.join(A.kvroot, "releases", v), os.path.join(d, "releases", v))
    shutil.copytree(os.path.join(A.kvroot, "lib", "kvcounter-%s.0.0" % v), os.path.join(d, "lib", "kvcounter-%s.0.0" % v))
    return d


def pack(work, d, name):
    out = os.path.join(work, name)
    rc, o, e = relctl("pack", d, "-o", out)
    return rc, out, e


def main():
    work = tempfile.mkdtemp(prefix="reld-e2e-check-")
    A.tmp = os.path.join(work, "tmp")  # where relctl check unpacks tarballs
    os.mkdir(A.tmp)
    try:
        run(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("1..%d" % N)
    return 1 if FAILED else 0


def run(work):
    print("TAP version 13")
    tars = {}
    for v in ("1", "2", "3"):
        rc, tars[v], err = pack(work, src(work, v), "kv-%s.tar.gz" % v)
        tap(rc == 0 and os.path.exists(tars[v]), "pack checks and packs kv %s" % v, err)

    rc, o, e = relctl("check", tars["1"], tars["2"])
    tap(rc == 0 and o == "module kv_server 2 (ABI 2, state_version 2) lib/kvcounter-2.0.0/modules/kv_server.so\n"
        "check 1 -> 2: 1 modules, 1 executables: 0 errors, 0 warnings\n" and e == "",
        "check OLD.tar.gz NEW.tar.gz: clean, exit 0", o + e)
    rc, o, e = relctl("check", "--strict", tars["2"], tars["3"])
    tap(rc == 0 and "2 modules" in o and e == "", "check --strict 2 -> 3: clean", o + e)
    rc, o, e = relctl("check", tars["3"])
    tap(rc == 0 and o.splitlines()[-1].startswith("check 3: 2 modules, 1 executables: 0 errors") and
        "module kv_lib 1 (ABI 2, state_version 0) lib/kvcounter-3.0.0/modules/kv_lib.so" in o.splitlines(),
        "check of one tarball: each module's name and version as its file says", o + e)
    rc, o, e = relctl("check", "--root", A.kvroot, "1", "3")
    tap(rc == 0 and e == "", "check --root DIR OLD NEW", o + e)
    rc, o, e = relctl("check", "--json", tars["1"], tars["2"])
    try:
        j = json.loads(o)
        m = j["modules"][0]
        good = (rc == 0 and j["ok"] is True and j["from"] == "1" and j["release"] == "2" and j["errors"] == 0 and
                m["module"] == "kv_server" and m["descriptor"]["name"] == "kv_server" and
                m["descriptor"]["version"] == "2" and m["descriptor"]["abi"] in (1, 2) and len(m["sha256"]) == 64)
    except (ValueError, KeyError, IndexError) as x:
        good, o = False, o + repr(x)
    tap(good, "check --json: the modules' descriptors as read from the files", o + e)
    rc, o, e = relctl("check", src(work, "2", "dir2"))
    tap(rc == 0, "check of a directory laid out as a tarball", o + e)

    # The case: a host linked against libreld-runtime.so, which is
    # neither in the release nor on the system.
    d = src(work, "2", "shared-runtime")
    shutil.copy(os.path.join(A.tests, "check-needs-runtime"), os.path.join(d, "lib/kvcounter-2.0.0/bin/kv-host"))
    rc, out, e = pack(work, d, "shared.tar.gz")
    want = "%s/lib/kvcounter-2.0.0/bin/kv-host: error: needs libreld-runtime.so.0, found neither in the release " \
           "nor on this system (process kv of kvcounter)" % d
    tap(rc == 1 and want in e.splitlines() and not os.path.exists(out) and not os.path.exists(out + ".tmp"),
        "pack refuses a host whose libreld-runtime.so.0 is nowhere, and writes nothing", e)
    rc, o, e = relctl("check", tars["1"], d)
    tap(rc == 1 and want in e.splitlines() and "1 errors" in o, "check names the missing library, exit 1", o + e)
    rc, o, e = relctl("pack", "--no-check", d, "-o", out)
    tap(rc == 0 and os.path.exists(out) and "packed without its checks (--no-check)" in e,
        "pack --no-check (a release for another machine) packs it, and says so", o + e)
    os.unlink(out)
    # Made by hand (tar), not by pack: check reads the tarball.
    t = os.path.join(work, "by-hand.tar.gz")
    with tarfile.open(t, "w:gz") as tf:
        tf.add(os.path.join(d, "releases"), "releases")
        tf.add(os.path.join(d, "lib"), "lib")
    rc, o, e = relctl("check", t)
    tap(rc == 1 and "lib/kvcounter-2.0.0/bin/kv-host: error: needs libreld-runtime.so.0, found neither in the "
        "release nor on this system (process kv of kvcounter)" in e.splitlines(),
        "check of a tarball made with tar names the file inside it", o + e)

    # A module whose descriptor names another module (it crash-loops at its
    # first start otherwise).
    d = src(work, "2", "bad-name")
    shutil.copy(os.path.join(A.tests, "bad-bad_name.so"), os.path.join(d, "lib/kvcounter-2.0.0/modules/kv_server.so"))
    rc, out, e = pack(work, d, "bad-name.tar.gz")
    tap(rc == 1 and ("%s/lib/kvcounter-2.0.0/app.yaml:4:11: error: module kv_server: modules/kv_server.so's "
                     "descriptor names module 'other' (version 9), not kv_server: the runtime refuses it" % d)
        in e.splitlines() and not os.path.exists(out), "pack refuses a module whose descriptor names another", e)
    shutil.copy(os.path.join(A.tests, "bad-no_desc.so"), os.path.join(d, "lib/kvcounter-2.0.0/modules/kv_server.so"))
    rc, o, e = relctl("check", d)
    tap(rc == 1 and "module kv_server: modules/kv_server.so: exports no reld_module symbol" in e,
        "check: a module without a descriptor", o + e)

    # A script whose interpreter does not exist here.
    d = src(work, "2", "script")
    p = os.path.join(d, "lib/kvcounter-2.0.0/bin/kv-host")
    os.unlink(p)
    with open(p, "w") as f:
        f.write("#!/opt/nowhere/python9\nprint('hi')\n")
    os.chmod(p, 0o755)
    rc, out, e = pack(work, d, "script.tar.gz")
    tap(rc == 1 and "its interpreter /opt/nowhere/python9 does not exist (process kv of kvcounter)" in e,
        "pack refuses a script whose interpreter is missing", e)

    # An appup entry that does not reach the changed kv_server: a warning,
    # an error with --strict.
    d = src(work, "2", "uncovered")
    y = os.path.join(d, "lib/kvcounter-2.0.0/app.yaml")
    text = open(y).read().replace('      instructions:\n        - {update: kv_server, change: {advanced: "array-to-table"}}',
                                  "      instructions: []", 1)
    open(y, "w").write(text)
    rc, o, e = relctl("check", tars["1"], d)
    want = "warning: module kv_server changed from kvcounter 1.0.0 to 2.0.0 but no instruction of the appup entry " \
           "up from 1.0.0 loads it"
    tap(rc == 0 and want in e and len(e.splitlines()) == 1, "check warns of a changed module the appup does not load", o + e)
    rc2, o2, e2 = relctl("check", "--strict", tars["1"], d)
    tap(rc2 == 1 and want.replace("warning", "error") in e2, "check --strict: the same is an error, exit 1", o2 + e2)

    # load_module across a state layout change (kv_server 1 has
    # state_version 1, 2 has 2).
    d = src(work, "2", "load-module")
    y = os.path.join(d, "lib/kvcounter-2.0.0/app.yaml")
    text = open(y).read().replace('{update: kv_server, change: {advanced: "array-to-table"}}', "{load_module: kv_server}")
    open(y, "w").write(text)
    rc, o, e = relctl("check", tars["1"], d)
    tap(rc == 0 and "warning: load_module kv_server: its state layout changes (state_version 1 in kvcounter 1.0.0, "
        "2 in 2.0.0) but load_module runs no code_change; use update" in e, "check warns of a load_module across "
        "state versions, exit 0", o + e)
    rc, o, e = relctl("check", "--strict", tars["1"], d)
    tap(rc == 1 and "error: load_module kv_server: its state layout changes" in e, "--strict: an error, exit 1", o + e)

    # The same application version with other content.
    d = src(work, "2", "same-vsn")
    os.rename(os.path.join(d, "releases/2"), os.path.join(d, "releases/2b"))
    y = os.path.join(d, "releases/2b/release.yaml")
    text = open(y).read().replace('vsn: "2"', 'vsn: "2b"')
    open(y, "w").write(text)
    shutil.copy(os.path.join(os.path.dirname(A.tests), "examples", "kv_server-2b.so"),
                os.path.join(d, "lib/kvcounter-2.0.0/modules/kv_server.so"))
    rc, o, e = relctl("check", tars["2"], d)
    tap(rc == 1 and "error: application kvcounter 2.0.0 differs between release 2 and 2b but keeps its version" in e,
        "check: an application changed under the same version", o + e)

    # Hostile and unreadable input, usage.
    t = os.path.join(work, "hostile.tar.gz")
    with tarfile.open(t, "w:gz") as tf:
        info = tarfile.TarInfo("../escape")
        info.size = 0
        tf.addfile(info)
    rc, o, e = relctl("check", t)
    tap(rc == 1 and e.startswith(t + ": error: ") and len(e.splitlines()) >= 1 and not os.path.exists(
        os.path.join(work, "escape")), "a hostile tarball is refused as reld refuses it", o + e)
    rc, o, e = relctl("check", os.path.join(work, "nothing.tar.gz"))
    tap(rc == 1 and e == "relctl: %s: No such file or directory\n" % os.path.join(work, "nothing.tar.gz"),
        "a missing file: one line, exit 1", e)
    rc, o, e = relctl("check", tars["1"], os.path.join(work, "nothing.tar.gz"))
    tap(rc == 1 and o == "" and e == "relctl: %s: No such file or directory\n" % os.path.join(work, "nothing.tar.gz"),
        "OLD good, NEW missing: no summary, exit 1", o + e)
    rc, o, e = relctl("check", "--json", os.path.join(work, "nothing.tar.gz"), tars["1"])
    tap(rc == 1 and json.loads(o)["ok"] is False, "--json when a release cannot be read: ok false, exit 1", o + e)
    rc, o, e = relctl("check")
    tap(rc == 2 and "usage" in e, "no argument: usage, exit 2", e)
    rc, o, e = relctl("check", "a", "b", "c")
    tap(rc == 2, "three arguments: usage, exit 2", e)
    rc, o, e = relctl("check", "--root", A.kvroot, "1", "../x")
    tap(rc == 2 and "is not a release version" in e, "--root with a bad version: exit 2", e)
    rc, o, e = relctl("check", "--root", A.kvroot, "1", "9")
    tap(rc == 1 and "release 9 is not in" in e, "--root with a version not there: exit 1", e)
    rc, o, e = relctl("check", "--help")
    tap(rc == 0 and "Usage: relctl check" in o, "--help", o + e)
    left = os.listdir(A.tmp)
    tap(left == [], "every temporary root is gone, after failures too", left)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--relctl", required=True)
    ap.add_argument("--kvroot", required=True)
    ap.add_argument("--tests", required=True)
    A = ap.parse_args()
    A.relctl, A.kvroot, A.tests = (os.path.abspath(x) for x in (A.relctl, A.kvroot, A.tests))
    raise SystemExit(main())
