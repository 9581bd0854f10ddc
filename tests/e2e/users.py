#!/usr/bin/env python3
"""End to end: processes run as the user, group, supplementary groups and
capability bounding set their app.yaml names (issue 17). As root, with a
throwaway system user and group the test creates (useradd --system) and
removes at its end; without root, one skip line. Prints TAP.

Usage: users.py --reld PATH --relctl PATH
"""
import argparse
import os
import pwd
import grp
import re
import subprocess
import sys
import tarfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import daemon as d  # noqa: E402
import supervise  # noqa: E402  (wait_for)

A = None
SUFFIX = f"{os.getpid() % 100000}"
USER, GROUP = f"reld-t{SUFFIX}", f"reld-tg{SUFFIX}"
CAP_NET_BIND_SERVICE = 10


def release(work, vsn, processes):
    """A tarball of release vsn: application idapp whose processes (name ->
    extra app.yaml lines) each run bin/show, a script that sleeps."""
    src = os.path.join(work, f"src-{vsn}")
    app = os.path.join(src, "lib", f"idapp-{vsn}.0.0")
    os.makedirs(os.path.join(app, "bin"))
    show = os.path.join(app, "bin", "show")
    with open(show, "w") as f:
        f.write("#!/bin/sh\nexec sleep 600\n")
    os.chmod(show, 0o755)
    with open(os.path.join(app, "app.yaml"), "w") as f:
        f.write(f'name: idapp\nvsn: "{vsn}.0.0"\nprocesses:\n')
        for name, extra in processes.items():
            f.write(f"  - name: {name}\n    exec: bin/show\n    shutdown_ms: 500\n{extra}")
    os.makedirs(os.path.join(src, "releases", vsn))
    with open(os.path.join(src, "releases", vsn, "release.yaml"), "w") as f:
        f.write(f'release: ids\nvsn: "{vsn}"\napplications:\n  - {{name: idapp, vsn: "{vsn}.0.0"}}\n')
    path = os.path.join(work, f"ids-{vsn}.tar.gz")
    with tarfile.open(path, "w:gz") as t:
        t.add(os.path.join(src, "releases"), "releases")
        t.add(os.path.join(src, "lib"), "lib")
    return path


def proc_status(pid):
    """Uid, Gid, Groups and CapBnd of /proc/PID/status."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("Uid", "Gid", "Groups", "CapBnd", "CapEff"):
                out[k] = v.split()
    return out


def pids(r):
    rc, out, err = r.relctl("status", "--json")
    import json
    return {p["process"]: p["pid"] for p in json.loads(out)["processes"] if p["pid"]} if rc == 0 else {}


def wait_for(pred, timeout=10.0):
    return supervise.wait_for(pred, timeout)  # its poll, this suite's default bound


def test_identities(work):
    os.chmod(work, 0o755)  # mkdtemp's 0700 would keep every user but root out of the root
    r = d.Reld(work)
    procs = {
        "named": f"    user: {USER}\n    supplementary_groups: [{GROUP}]\n"
                 "    capabilities: [CAP_NET_BIND_SERVICE]\n",
        "numeric": "    user: \"65534\"\n    group: \"65534\"\n",
        "asked": "    user: root\n    capabilities: []\n",
        "plain": "",
    }
    rc, out, err = r.relctl("install", release(work, "1", procs))
    d.tap(rc == 0, "install of a release naming users, groups and capabilities", out + err)
    ps = wait_for(lambda: len(pids(r)) == 4 and pids(r))
    uid, gid, sgid = pwd.getpwnam(USER).pw_uid, pwd.getpwnam(USER).pw_gid, grp.getgrnam(GROUP).gr_gid
    st = proc_status(ps["named"]) if ps else {}
    d.tap(st.get("Uid") == [str(uid)] * 4 and st.get("Gid") == [str(gid)] * 4,
          f"user: {USER}: real, effective, saved and fs uid and gid are the user's ({uid}, {gid})", st)
    d.tap(sorted(st.get("Groups", [])) == sorted({str(gid), str(sgid)}),
          "supplementary_groups: the user's own and the one named", st.get("Groups"))
    d.tap(int(st.get("CapBnd", ["0"])[0], 16) == 1 << CAP_NET_BIND_SERVICE and int(st["CapEff"][0], 16) == 0,
          "capabilities: [CAP_NET_BIND_SERVICE] is the bounding set (and a non-root user has none effective)", st)
    st = proc_status(ps["numeric"]) if ps else {}
    d.tap(st.get("Uid", [""])[0] == "65534" and st.get("Gid", [""])[0] == "65534" and st.get("Groups") == ["65534"],
          "user and group by number (its groups: those of the passwd entry the number has)", st)
    st = proc_status(ps["asked"]) if ps else {}
    d.tap(st.get("Uid", [""])[0] == "0" and int(st.get("CapBnd", ["1"])[0], 16) == 0
          and int(st["CapEff"][0], 16) == 0, "user: root with capabilities: [] keeps no capability at all", st)
    st = proc_status(ps["plain"]) if ps else {}
    log = open(os.path.join(work, "reld.log"), errors="replace").read()
    d.tap(st.get("Uid", [""])[0] == "0" and int(st["CapBnd"][0], 16) != 0 and
          re.search(r"app\.yaml:\d+:\d+: process plain has no user: it runs as root", log) is not None
          and "process asked has no user" not in log,
          "no user: reld's own (root), with one warning in the log; user: root says so and is not warned", log[-1500:])
    r.stop()


def test_refusals(work):
    r = d.Reld(work)
    rc, out, err = r.relctl("install", release(work, "1", {"p": "    user: no-such-user-reld\n",
                                                           "q": "    supplementary_groups: [no-such-group-reld]\n"}))
    d.tap(rc != 0 and re.search(r"app\.yaml:7:11: process p: no such user 'no-such-user-reld'", err)
          and re.search(r"app\.yaml:11:28: process q: no such group 'no-such-group-reld'", err),
          "an unknown user or group: refused at install, each with its app.yaml:L:C", err)
    d.tap(pids(r) == {}, "and nothing started")
    rc, out, err = r.relctl("install", release(work, "2", {"p": "    capabilities: [CAP_NET_BIND_SERVICE, CAP_FLY]\n"}))
    d.tap(rc != 0 and re.search(r"app\.yaml:7:42: unknown capability 'CAP_FLY'", err), "an unknown capability: refused",
          err)
    # An upgrade to a release naming a user that does not exist: refused
    # before anything changes (the process before runs on, untouched).
    os.chmod(work, 0o755)
    rc, out, err = r.relctl("install", release(work, "3", {"p": "    user: root\n"}))
    before = wait_for(lambda: pids(r))
    rc, out, err = r.relctl("install", release(work, "4", {"p": "    user: no-such-user-reld\n"}))
    d.tap(rc != 0 and re.search(r"app\.yaml:7:11: process p: no such user 'no-such-user-reld'", err)
          and "outcome: refused" in err and before and pids(r) == before,
          "an upgrade to a release naming an unknown user: refused, nothing changed", (before, pids(r), err))
    r.stop()


def test_health_identity(work):
    """An exec health check runs as the process it checks: its user, groups
    and capability bounding set (proc_identity_apply() in the check's child,
    as for the process). One check writes what it runs as into a file;
    another reads a file only root may read, and fails for the user's
    process while the same check of a root process passes."""
    os.chmod(work, 0o755)
    out = os.path.join(work, "out")
    os.mkdir(out)
    os.chmod(out, 0o1777)  # the user's check writes here
    secret = os.path.join(work, "secret")
    with open(secret, "w") as f:
        f.write("root only\n")
    os.chmod(secret, 0o600)
    check = "    health:\n      - {exec: bin/ids, interval_ms: 100}\n      - {exec: bin/peek, interval_ms: 100}\n"
    path = release(work, "1", {
        "checked": f"    user: {USER}\n    supplementary_groups: [{GROUP}]\n"
                   f"    capabilities: [CAP_NET_BIND_SERVICE]\n{check}",
        "rooted": f"    user: root\n{check}",
    })
    # The two check programs, added to the tarball's application.
    src = os.path.join(work, "src-1", "lib", "idapp-1.0.0", "bin")
    scripts = {
        "ids": f'#!/bin/sh\necho "$(id -u) $(id -g) $(id -G) $(grep ^CapBnd: /proc/self/status | cut -f2)"'
               f' > {out}/"${{RELD_PROCESS#*/}}.tmp" && mv {out}/"${{RELD_PROCESS#*/}}.tmp" {out}/"${{RELD_PROCESS#*/}}"\n',
        "peek": f"#!/bin/sh\nexec cat {secret}\n",
    }
    for name, text in scripts.items():
        with open(os.path.join(src, name), "w") as f:
            f.write(text)
        os.chmod(os.path.join(src, name), 0o755)
    with tarfile.open(path, "w:gz") as t:
        t.add(os.path.join(work, "src-1", "releases"), "releases")
        t.add(os.path.join(work, "src-1", "lib"), "lib")
    r = d.Reld(work)
    rc, o, err = r.relctl("install", "--no-wait", path)
    d.tap(rc == 0, "install of processes with exec health checks (user and root)", o + err)
    uid, gid, sgid = pwd.getpwnam(USER).pw_uid, pwd.getpwnam(USER).pw_gid, grp.getgrnam(GROUP).gr_gid

    def ids(name):
        try:
            with open(os.path.join(out, name)) as f:
                return f.read().split()
        except FileNotFoundError:
            return None

    def checks():
        import json
        rc, o, _ = r.relctl("status", "--json")
        if rc != 0:
            return None
        by = {p["process"]: p for p in json.loads(o)["processes"]}
        return {n: {c["check"]: c for c in by[n].get("health", {}).get("checks", [])} for n in by}

    got = wait_for(lambda: ids("checked"))
    d.tap(got is not None and got[:2] == [str(uid), str(gid)]
          and sorted(got[2:-1]) == sorted({str(gid), str(sgid)})
          and int(got[-1], 16) == 1 << CAP_NET_BIND_SERVICE,
          f"the user's exec check ran as uid {uid}, gid {gid}, groups {{{gid}, {sgid}}}, bounding set "
          "CAP_NET_BIND_SERVICE alone (its process's identity)", (got, checks()))
    got = wait_for(lambda: ids("rooted"))
    d.tap(got is not None and got[:2] == ["0", "0"] and int(got[-1], 16) != 0,
          "the root process's exec check ran as root, with its full bounding set", (got, checks()))

    def peeked():
        c = checks()
        ok = c and all(c.get(n, {}).get("exec bin/peek", {}).get("result") in ("pass", "fail")
                       for n in ("checked", "rooted"))
        return c if ok else None

    c = wait_for(peeked) or {}
    mine = c.get("checked", {}).get("exec bin/peek", {})
    d.tap(mine.get("result") == "fail" and re.fullmatch(r"exec bin/peek: exit 1: cat: .*secret: Permission denied",
                                                         mine.get("reason", "")) is not None,
          "a check that needs root's rights fails as the user's process's check: Permission denied, quoted", mine)
    d.tap(c.get("rooted", {}).get("exec bin/peek", {}).get("result") == "pass",
          "and the same check of a root process passes", c.get("rooted"))
    r.stop()


def main():
    global A
    ap = argparse.ArgumentParser()
    ap.add_argument("--reld", required=True)
    ap.add_argument("--relctl", required=True)
    A = ap.parse_args()
    d.A = argparse.Namespace(reld=A.reld, relctl=A.relctl, shop=None)
    if os.geteuid() != 0:
        print("TAP version 13\n1..0 # SKIP users.py needs root (it creates a system user and runs processes as it)")
        return 0
    made = []
    try:
        subprocess.run(["groupadd", "--system", GROUP], check=True, capture_output=True)
        made.append(["groupdel", GROUP])
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group",
                        USER], check=True, capture_output=True)
        made.append(["userdel", USER])
        return d.run_tests((test_identities, test_refusals, test_health_identity), "reld-users-")
    finally:
        for cmd in reversed(made):
            subprocess.run(cmd, capture_output=True)


if __name__ == "__main__":
    sys.exit(main())
