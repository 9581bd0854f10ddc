#!/usr/bin/env python3
"""The runtime as a user gets it, under the real reld: `meson install` into
a private prefix, then the kvcounter modules and its threaded host built
out of tree with nothing but that prefix's header and `pkg-config
reld-runtime` (the commands docs/runtime.md gives), packed into release
tarballs and run by reld: installed, upgraded 1 -> 2 and back under load
with the same pid. The host's runtime is linked in: the tarball runs
where no libreld-runtime.so is. Prints TAP.

Usage: installed.py --build BUILD --src SOURCE --reld PATH --relctl PATH
                    --loadgen PATH [--sanitize B_SANITIZE]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))
import daemon as d  # noqa: E402  (its Reld, tap and counters)

sys.path.insert(0, HERE)
from hotcode import free_port, request  # noqa: E402

A = None


def run(cmd, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    return p.returncode, p.stdout, p.stderr


def sh(line):
    return run(["sh", "-c", line])


def tarball(work, vsn, host, module, port):
    """Release vsn of kvcounter (the example's release.yaml and app.yaml,
    listening on port) with the out-of-tree host and module."""
    root = os.path.join(A.src, "examples", "kvcounter", "root")
    app = f"kvcounter-{vsn}.0.0"
    src = os.path.join(work, f"src-{vsn}")
    os.makedirs(os.path.join(src, "lib", app, "bin"))
    os.makedirs(os.path.join(src, "lib", app, "modules"))
    shutil.copytree(os.path.join(root, "releases", vsn), os.path.join(src, "releases", vsn))
    text = open(os.path.join(root, "lib", app, "app.yaml")).read().replace("127.0.0.1:17411", f"127.0.0.1:{port}")
    open(os.path.join(src, "lib", app, "app.yaml"), "w").write(text)
    shutil.copy(host, os.path.join(src, "lib", app, "bin", "kv-host"))
    shutil.copy(module, os.path.join(src, "lib", app, "modules", "kv_server.so"))
    path = os.path.join(work, f"kv-{vsn}.tar.gz")
    with tarfile.open(path, "w:gz") as t:
        t.add(os.path.join(src, "releases", vsn), f"releases/{vsn}")
        t.add(os.path.join(src, "lib", app), f"lib/{app}")
    return path


def test_installed(work):
    stage = os.path.join(work, "stage")
    rc, out, err = run(["meson", "install", "-C", A.build, "--destdir", stage, "--no-rebuild", "--quiet"])
    d.tap(rc == 0, "meson install into a private prefix", err)
    pcs = [os.path.join(dp, f) for dp, _, fs in os.walk(stage) for f in fs if f == "reld-runtime.pc"]
    d.tap(len(pcs) == 1, "reld-runtime.pc is installed", pcs)
    env = dict(os.environ, PKG_CONFIG_PATH=os.path.dirname(pcs[0]))
    prefix = subprocess.run(["pkg-config", "--variable=prefix", "reld-runtime"], env=env, capture_output=True,
                            text=True).stdout.strip()
    pc = ["pkg-config", f"--define-variable=prefix={stage}{prefix}"]

    def flags(*what):
        p = subprocess.run(pc + list(what) + ["reld-runtime"], env=env, capture_output=True, text=True)
        return p.stdout.split()

    cflags, libs = flags("--cflags"), flags("--libs")
    san = [f"-fsanitize={A.sanitize}"] if A.sanitize != "none" else []
    ex = os.path.join(A.src, "examples", "kvcounter")
    out = os.path.join(work, "out")
    os.mkdir(out)

    # The include docs/runtime.md writes, and the header's own example.
    probe = os.path.join(out, "probe.c")
    open(probe, "w").write("#include <reld/reld-runtime.h>\n#include <stdio.h>\n"
                           "int main(void) { char err[256]; RelRuntime *rt;\n"
                           "  if (rel_runtime_new(&rt, err, sizeof(err)) < 0) { fprintf(stderr, \"%s\\n\", err);"
                           " return 1; }\n  printf(\"%d\\n\", rel_runtime_fd(rt)); rel_runtime_free(rt); return 0; }\n")
    rc, o, e = run(["cc", *san, "-Wall", "-Werror", *cflags, probe, "-o", os.path.join(out, "probe"), *libs])
    d.tap(rc == 0, "#include <reld/reld-runtime.h> and rel_runtime_new(&rt, err, sizeof(err)) build with "
          "pkg-config --cflags --libs reld-runtime", e)
    rc, o, e = run([os.path.join(out, "probe")], env=dict(os.environ, RELD_CONTROL_FD="", RELD_MODULES=""))
    d.tap(rc == 0 and o == "-1\n", "and run unmanaged (rel_runtime_fd -1)", o + e)

    mods = {"1": [os.path.join(ex, "kv_server_v1.c")], "2": [os.path.join(ex, "kv_server_table.c"), "-DKV_VERSION=2"]}
    ok = True
    for v, src in mods.items():
        rc, o, e = run(["cc", *san, "-shared", "-fPIC", "-fvisibility=hidden", *cflags, *src,
                        "-o", os.path.join(out, f"kv_server-{v}.so")])
        ok = ok and rc == 0
    d.tap(ok, "kv_server 1 and 2 build out of tree: cc -shared -fPIC $(pkg-config --cflags reld-runtime)", e)
    host = os.path.join(out, "kv-host-mt")
    rc, o, e = run(["cc", *san, *cflags, os.path.join(ex, "kv-host-mt.c"), "-o", host, *libs])
    d.tap(rc == 0, "the threaded host builds: cc $(pkg-config --cflags reld-runtime) host.c -o host "
          f"$(pkg-config --libs reld-runtime) = {' '.join(libs)}", e)
    rc, o, e = run(["readelf", "-d", host])
    needed = [line for line in o.splitlines() if "NEEDED" in line]
    d.tap(rc == 0 and needed and not any("reld-runtime" in line for line in needed),
          "the host carries its runtime: no libreld-runtime.so among its NEEDED", "\n".join(needed))

    d.DEFAULT_CONFIG = "min_healthy_ms: 100\n"
    port = free_port()
    os.makedirs(os.path.join(work, "reld"))
    r = d.Reld(os.path.join(work, "reld"))
    rc, o, e = r.relctl("install", tarball(work, "1", host, os.path.join(out, "kv_server-1.so"), port))
    d.tap(rc == 0 and request(port, "INCR kept") == "OK kept 1",
          "reld installs release 1 of the out-of-tree build and it serves", o + e)
    rc, o, e = r.relctl("unpack", tarball(work, "2", host, os.path.join(out, "kv_server-2.so"), port))
    d.tap(rc == 0, "release 2 unpacked (its module's descriptor checked)", o + e)

    def pid():
        rc, o, e = r.relctl("status", "--json")
        return [p.get("pid") for p in json.loads(o)["processes"]] if rc == 0 else None

    before = pid()
    for verb, vsn in (("upgrade", "2"), ("downgrade", "1")):
        load = subprocess.Popen([A.loadgen, "--port", str(port), "--rate", "1000", "--duration", "1.5", "--conns",
                                 "8", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(0.4)
        rc, o, e = r.relctl(verb, vsn)
        res = json.loads(load.communicate(timeout=60)[0].strip().splitlines()[-1])
        d.tap(rc == 0 and res["failed"] == 0 and res["ok"] > 1000 and request(port, "GET kept") == "OK kept 1",
              f"{verb} to {vsn} under load: {res['ok']} requests, 0 failed, state kept", f"{o}{e}{res}")
    d.tap(before and pid() == before, f"the same process throughout (pid {before})", pid())
    r.stop()


def main():
    global A
    ap = argparse.ArgumentParser()
    for a in ("--build", "--src", "--reld", "--relctl", "--loadgen"):
        ap.add_argument(a, required=True)
    ap.add_argument("--sanitize", default="none")
    A = ap.parse_args()
    d.A = argparse.Namespace(reld=A.reld, relctl=A.relctl, shop=None)
    return d.run_tests((test_installed,), "reld-installed-")


if __name__ == "__main__":
    sys.exit(main())
