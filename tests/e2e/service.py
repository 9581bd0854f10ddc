#!/usr/bin/env python3
"""End to end: reld as a service, as systemd runs it (packaging/reld.service.in)
and as the people on the machine reach it. Prints TAP.

  - the unit's ExecStart with the shipped packaging/reld.yaml (every key
    commented: all defaults) and with an empty config, in a private mount
    namespace with tmpfs over /run/reld and /var/lib/reld;
  - signals: SIGTERM and SIGINT stop cleanly, SIGHUP reloads the config;
  - the socket's mode and group, and who may do what, with real users and
    groups (made here, removed at the end);
  - systemd's variables for reld (NOTIFY_SOCKET, WATCHDOG_*, JOURNAL_STREAM)
    do not reach the processes it starts; READY=1 comes from reld's pid;
  - a relative --root;
  - WATCHDOG=1 keeps coming while a process that ignores SIGTERM is stopped.

Root is needed for the namespace and the users (CI runs the tests as root);
without it those checks are skipped.

Usage: service.py --reld PATH --relctl PATH [--packaging SRCDIR/packaging]
"""
import argparse
import atexit
import json
import os
import pwd
import grp
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import daemon as d  # noqa: E402  (tap, skip and the counters)
from supervise import tar_release, wait_for  # noqa: E402

A = None
STARTED = []  # every Popen this file started: killed by pid at the end of each test
USERS, GROUPS = [], []  # made by this file: removed at the end, even on failure

# What systemd puts in reld's environment for reld alone.
SYSTEMD_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM", "INVOCATION_ID")


def clean_env(**extra):
    """This process's environment without what a service manager or the
    harness may have set for us (meson may itself run under systemd)."""
    env = {k: v for k, v in os.environ.items()
           if k not in SYSTEMD_VARS and not k.startswith(("LISTEN_", "RELD_"))}
    env.update(extra)
    return env


def alive(pid):
    """pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def sock_mode(path):
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return None


class Svc:
    """A reld started from argv as a service manager would: given
    environment, working directory and (optionally) mount namespace."""

    def __init__(self, work, argv, sock, env=None, cwd=None, ns=False, name="reld"):
        self.work, self.sock, self.ns = work, sock, ns
        self.log_path = os.path.join(work, f"{name}.log")
        self.log = open(self.log_path, "ab")
        self.p = subprocess.Popen(argv, env=env if env is not None else clean_env(), cwd=cwd,
                                  stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        STARTED.append(self.p)

    def is_reld(self):
        """The started process has exec'd reld (so any namespace is set up)."""
        try:
            return os.path.realpath(f"/proc/{self.p.pid}/exe") == os.path.realpath(A.reld)
        except OSError:
            return False

    def wrap(self, cmd):
        if self.ns:
            return ["nsenter", "--mount", f"--target={self.p.pid}", "--"] + cmd
        return cmd

    def relctl(self, *args, user=None, socket_arg=True, timeout=30, relctl=None):
        """relctl, as root or as user (a name: its uid, primary group and
        supplementary groups, as a login would have)."""
        cmd = [relctl or A.relctl] + (["--socket", self.sock] if socket_arg else []) + list(args)
        if user is not None:
            pw = pwd.getpwnam(user)
            cmd = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--"] + cmd
        p = subprocess.run(self.wrap(cmd), env=clean_env(), capture_output=True, timeout=timeout, cwd="/",
                           stdin=subprocess.DEVNULL)
        return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")

    def status(self):
        rc, out, err = self.relctl("status", "--json")
        return json.loads(out) if rc == 0 else {"processes": []}

    def wait_ready(self, timeout=10):
        """Until relctl status answers (or reld exits)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.p.poll() is None:
            if self.is_reld() and self.relctl("status", timeout=5)[0] == 0:
                return True
            time.sleep(0.02)
        return False

    def text(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self, sig=signal.SIGTERM, timeout=15):
        """Sends sig and waits; returns the exit status (None: still running,
        then killed)."""
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
                self.log.close()
                return None
        self.log.close()
        log = self.text()
        if "Sanitizer" in log or "runtime error:" in log:
            d.UNCLEAN.append(log[log.find("=="):][:6000])
        return self.p.returncode


def plain(work, root, sock, config=None, **kw):
    """A reld on root and sock, with config (text) in work/NAME.yaml."""
    args = [A.reld, "--root", root, "--socket", sock]
    if config is not None:
        path = os.path.join(work, f"{kw.get('name', 'reld')}.yaml")
        with open(path, "w") as f:
            f.write(config)
        args += ["--config", path]
    return Svc(work, args, sock, **kw)


def release(work, vsn, procs, app="svc", app_vsn=None, files=None):
    """Tarball of release vsn: one application `app` (version app_vsn,
    default vsn) with processes procs (dicts as in app.yaml) and files
    {path in the application's directory: (text, mode)}."""
    app_vsn = app_vsn or vsn
    src = os.path.join(work, f"src-{app}-{vsn}")
    os.makedirs(os.path.join(src, "releases", vsn))
    with open(os.path.join(src, "releases", vsn, "release.yaml"), "w") as f:
        f.write(f'release: svc\nvsn: "{vsn}"\napplications:\n  - {{name: {app}, vsn: "{app_vsn}"}}\n')
    adir = os.path.join(src, "lib", f"{app}-{app_vsn}")
    os.makedirs(adir)
    for rel, (text, mode) in (files or {}).items():
        path = os.path.join(adir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
    with open(os.path.join(adir, "app.yaml"), "w") as f:
        # JSON is YAML: every process a flow mapping, shell text quoted safely.
        f.write(f'name: {app}\nvsn: "{app_vsn}"\nprocesses:\n' + "".join(f"  - {json.dumps(p)}\n" for p in procs))
    path = os.path.join(work, f"{app}-{vsn}.tar")
    tar_release(src, path)
    os.chmod(path, 0o644)
    return path


def sh(name, script, **opts):
    return dict(name=name, exec="/bin/sh", args=["-c", script], **opts)


def running(r, n=1):
    """The processes with a pid once n of them run, else []."""
    procs = [p for p in r.status()["processes"] if p.get("pid") and p.get("state") == "running"]
    return procs if len(procs) >= n else []


class Notify:
    """A NOTIFY_SOCKET: collects (monotonic time, sender pid, message)."""

    def __init__(self, path):
        self.path = path
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.s.bind(path)
        self.s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.s.settimeout(0.05)
        self.msgs = []
        self.done = False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.done:
            try:
                data, anc, _, _ = self.s.recvmsg(4096, socket.CMSG_SPACE(12))
            except socket.timeout:
                continue
            except OSError:
                return
            pid = None
            for level, typ, cdata in anc:
                if level == socket.SOL_SOCKET and typ == socket.SCM_CREDENTIALS:
                    pid = int.from_bytes(cdata[0:4], sys.byteorder)
            self.msgs.append((time.monotonic(), pid, data.decode(errors="replace")))

    def has(self, word):
        return [m for m in list(self.msgs) if word in m[2].split("\n")]

    def close(self):
        self.done = True
        self.t.join(2)
        self.s.close()


def with_watchdog_pid(argv):
    """argv under sh, which sets WATCHDOG_PID to its own pid and execs: the
    pid reld will have, as systemd sets it."""
    return ["sh", "-c", 'WATCHDOG_PID=$$; export WATCHDOG_PID; exec "$@"', "sh"] + argv


# ---- 1. the shipped unit and config -----------------------------------------

def exec_start(config):
    """The unit's ExecStart= as argv, with @sbindir@ the built reld's directory
    and the config path (@sysconfdir@/reld/reld.yaml) replaced by config."""
    text = open(os.path.join(A.packaging, "reld.service.in")).read()
    lines = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    assert len(lines) == 1, f"reld.service.in has {len(lines)} ExecStart= lines"
    out = []
    for a in shlex.split(lines[0][len("ExecStart="):]):
        a = a.replace("@sbindir@", os.path.dirname(os.path.abspath(A.reld)))
        out.append(a.replace("@sysconfdir@/reld/reld.yaml", config))
    out[0] = out[0].lstrip("-@:+!")  # systemd's prefixes, if any
    return out


def host_tree(path):
    return d.tree(path) if os.path.isdir(path) else None


def test_shipped_config(work):
    names = ["the shipped reld.yaml", "an empty config file"]
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("nsenter")):
        for n in names:
            d.skip(f"{n}: the unit's ExecStart comes up with the defaults", "needs root, unshare and nsenter")
        return
    empty = os.path.join(work, "empty.yaml")
    open(empty, "w").close()
    shipped = os.path.join(A.packaging, "reld.yaml")
    d.tap(all(not line.strip() or line.lstrip().startswith("#") for line in open(shipped)),
          "packaging/reld.yaml holds only comments (so: every default)")
    dirs = ["/run/reld", "/var/lib/reld"]
    created = [x for x in dirs if not os.path.exists(x)]
    before = {x: host_tree(x) for x in dirs if x not in created}
    for x in created:
        os.makedirs(x)
    try:
        for name, config in zip(names, (shipped, empty)):
            argv = exec_start(config)
            left = [a for a in argv if "@" in a]
            d.tap(not left and os.path.realpath(argv[0]) == os.path.realpath(A.reld) and config in argv,
                  f"{name}: ExecStart= is {shlex.join(argv)}", left)
            script = 'mount -t tmpfs tmpfs /run/reld && mount -t tmpfs tmpfs /var/lib/reld && exec "$@"'
            r = Svc(work, ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"] + argv,
                    "/run/reld/reld.sock", ns=True, name=f"reld-ns{names.index(name)}")
            ready = r.wait_ready()
            d.tap(ready, f"{name}: reld comes up on /var/lib/reld and /run/reld/reld.sock, relctl status answers",
                  f"exit {r.p.poll()}\n{r.text()[-1500:]}")
            if ready:
                st = r.status()
                mode = subprocess.run(r.wrap(["stat", "-c", "%a", "/run/reld/reld.sock"]), capture_output=True,
                                      text=True, timeout=10).stdout.strip()
                d.tap(st.get("root") == "/var/lib/reld" and mode == "660",
                      f"{name}: root /var/lib/reld, socket mode {mode} (0660: readers are writers)", st)
                rc, out, err = r.relctl("status", socket_arg=False)
                d.tap(rc == 0, f"{name}: relctl finds the default socket without --socket", err)
            rc = r.stop()
            if ready:
                d.tap(rc == 0, f"{name}: SIGTERM, exit {rc}", r.text()[-800:])
    finally:
        for x in created:
            try:
                os.rmdir(x)
            except OSError as e:
                d.tap(False, f"{x}, made for the test, is empty again", e)
                shutil.rmtree(x, ignore_errors=True)
    changed = [x for x, t in before.items() if host_tree(x) != t]
    d.tap(not changed, "the machine's own /run/reld and /var/lib/reld were not touched "
          f"(made for the test: {created or 'none'})", changed)


# ---- 2. signals ----------------------------------------------------------------

def sleepers(work):
    return release(work, "1", [sh("a", "exec sleep 60", shutdown_ms=2000), sh("b", "exec sleep 60", shutdown_ms=2000)])


def test_stop_signals(work):
    tar = sleepers(work)
    for sig in (signal.SIGTERM, signal.SIGINT):
        root = os.path.join(work, sig.name)
        os.makedirs(root)
        r = plain(root, os.path.join(root, "root"), os.path.join(root, "reld.sock"))
        r.wait_ready()
        rc, out, err = r.relctl("install", tar)
        procs = wait_for(lambda: running(r, 2))
        pids = [p["pid"] for p in procs]
        d.tap(rc == 0 and len(pids) == 2, f"{sig.name}: two processes run under reld", err)
        t0 = time.monotonic()
        code = r.stop(sig)
        took = time.monotonic() - t0
        gone = wait_for(lambda: not any(alive(p) for p in pids), timeout=5)
        d.tap(code == 0 and gone and not os.path.exists(r.sock),
              f"{sig.name}: reld exits 0 in {took:.1f} s, its processes are gone, the socket file is removed",
              f"exit {code}, still alive {[p for p in pids if alive(p)]}, socket left {os.path.exists(r.sock)}\n"
              f"{r.text()[-800:]}")


def test_sighup(work):
    cfg = os.path.join(work, "reld.yaml")
    r = plain(work, os.path.join(work, "root"), os.path.join(work, "reld.sock"), config="readers: writers\n")
    d.tap(r.wait_ready(), "reld runs with readers: writers", r.text()[-800:])
    r.relctl("install", sleepers(work))
    pids = sorted(p["pid"] for p in wait_for(lambda: running(r, 2)))
    d.tap(sock_mode(r.sock) == 0o660, f"readers: writers: the socket is 0660 ({oct(sock_mode(r.sock) or 0)})")
    relctl = user_relctl(work)

    def hup(text, want):
        """Writes the config, sends SIGHUP, waits for a new log line
        containing want; returns the new log text."""
        with open(cfg, "w") as f:
            f.write(text)
        mark = len(r.text())
        r.p.send_signal(signal.SIGHUP)
        wait_for(lambda: r.p.poll() is not None or want in r.text()[mark:].lower())
        return r.text()[mark:]

    new = hup("readers: all\n", "reload")
    d.tap(r.p.poll() is None, "SIGHUP does not stop reld", f"exit {r.p.poll()}\n{new[-800:]}")
    if r.p.poll() is not None:
        d.tap(False, "the other SIGHUP checks (not run: reld is gone)")
        return
    d.tap("reload" in new.lower(), "SIGHUP: reld logs that it reloads its config", new[-800:])
    mode = wait_for(lambda: sock_mode(r.sock) == 0o666, timeout=2) and 0o666 or sock_mode(r.sock)
    d.tap(mode == 0o666, f"the changed readers: all takes effect: the socket is 0666 ({oct(mode or 0)})")
    if os.geteuid() == 0:
        rc, out, err = r.relctl("releases", user="nobody", relctl=relctl)
        d.tap(rc == 0 and "1" in out, "a new connection of a user in no group may read", err)
    else:
        d.skip("a new connection of a user in no group may read", "needs root")
    d.tap(r.p.poll() is None and sorted(p["pid"] for p in running(r, 2)) == pids,
          "the supervised processes keep running across the reload (same pids)", r.status())

    new = hup("readers: [all\n", "reld.yaml")
    d.tap(r.p.poll() is None and "reld.yaml" in new,
          "a broken config at SIGHUP is logged (naming the file) and reld keeps running",
          f"exit {r.p.poll()}\n{new[-800:]}")
    rc, out, err = r.relctl("status")
    d.tap(rc == 0 and sock_mode(r.sock) == 0o666, "the old config stays: reld serves, the socket is still 0666",
          f"{err} mode {oct(sock_mode(r.sock) or 0)}")
    if os.geteuid() == 0:
        rc, out, err = r.relctl("releases", user="nobody", relctl=relctl)
        d.tap(rc == 0, "and readers: all still holds", err)
    else:
        d.skip("and readers: all still holds", "needs root")

    new = hup("readers: writers\n", "reload")
    mode = wait_for(lambda: sock_mode(r.sock) == 0o660, timeout=2) and 0o660 or sock_mode(r.sock)
    d.tap(r.p.poll() is None and mode == 0o660, f"back to readers: writers at the next SIGHUP: 0660 ({oct(mode or 0)})",
          new[-800:])
    if os.geteuid() == 0:
        rc, out, err = r.relctl("releases", user="nobody", relctl=relctl)
        d.tap(rc == 1, "and a user in no group is refused again", out + err)
    else:
        d.skip("and a user in no group is refused again", "needs root")
    code = r.stop()
    d.tap(code == 0, f"SIGTERM after the reloads: exit {code}", r.text()[-800:])


# ---- 3. socket mode, group and rights with real users ----------------------

def user_relctl(work):
    """A copy of relctl that any user can run (the build tree may not be
    reachable for them); work becomes 0755."""
    os.chmod(work, 0o755)
    path = os.path.join(work, "relctl")
    if not os.path.exists(path):
        shutil.copy(A.relctl, path)
        os.chmod(path, 0o755)
    return path


def make_group():
    name = f"rsvc{secrets.token_hex(4)}g"
    subprocess.run(["groupadd", "--system", name], check=True, capture_output=True, timeout=30)
    GROUPS.append(name)
    return name


def make_user(groups=()):
    name = f"rsvc{secrets.token_hex(4)}u"
    cmd = ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
           "--user-group"]
    if groups:
        cmd += ["--groups", ",".join(groups)]
    subprocess.run(cmd + [name], check=True, capture_output=True, timeout=30)
    USERS.append(name)
    return name


def remove_accounts():
    for u in USERS[:]:
        subprocess.run(["userdel", u], capture_output=True, timeout=30)
        USERS.remove(u)
    for g in GROUPS[:]:
        subprocess.run(["groupdel", g], capture_output=True, timeout=30)
        GROUPS.remove(g)


def refused_by_reld(rc, err, user):
    """One line, from reld (its refusal names the user), not connect()'s EACCES."""
    uid = pwd.getpwnam(user).pw_uid
    lines = err.strip().splitlines()
    return (rc == 1 and len(lines) == 1 and
            lines[0].startswith(f"relctl: permission denied: {user} (uid {uid}, pid ") and "cannot reach" not in err)


def test_rights(work):
    if os.geteuid() != 0 or not all(shutil.which(x) for x in ("useradd", "groupadd", "userdel", "groupdel",
                                                                 "setpriv")):
        d.skip("socket mode, group and rights with real users", "needs root, useradd/groupadd and setpriv")
        return
    relctl = user_relctl(work)
    gw, gr = make_group(), make_group()
    writer, reader, other = make_user([gw]), make_user([gr]), make_user()
    tars = [release(work, v, [sh("p", "exec sleep 60", shutdown_ms=500)]) for v in ("1", "2", "3")]
    n = 0

    def reld_with(config):
        nonlocal n
        n += 1
        sub = os.path.join(work, f"r{n}")
        os.makedirs(sub)
        os.chmod(sub, 0o755)
        r = plain(sub, os.path.join(sub, "root"), os.path.join(sub, "reld.sock"), config=config)
        ok = r.wait_ready()
        if not ok:
            d.tap(False, f"reld starts with {config!r}", r.text()[-800:])
        return r

    def as_(r, user, *args):
        return r.relctl(*args, user=user, relctl=relctl)

    # writer_group only, readers: writers: 0660, group writer_group.
    r = reld_with(f"writer_group: {gw}\nreaders: writers\n")
    st = os.stat(r.sock)
    d.tap(stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == grp.getgrnam(gw).gr_gid,
          f"writer_group, readers: writers: socket 0660, group {gw} ({oct(stat.S_IMODE(st.st_mode))}, gid {st.st_gid})")
    rc, out, err = as_(r, writer, "unpack", tars[0])
    rc2, out2, err2 = as_(r, writer, "releases")
    d.tap(rc == 0 and rc2 == 0 and "1" in out2, "a member of writer_group unpacks and reads", err + err2)
    rc, out, err = as_(r, reader, "releases")
    rc2, out2, err2 = as_(r, other, "releases")
    d.tap(rc == 1 and rc2 == 1, "without reader_group, others may not read (the socket is not theirs)", err + err2)
    r.stop()

    # writer_group and reader_group: 0666, reld decides.
    r = reld_with(f"writer_group: {gw}\nreader_group: {gr}\n")
    st = os.stat(r.sock)
    d.tap(stat.S_IMODE(st.st_mode) == 0o666 and st.st_gid == grp.getgrnam(gw).gr_gid,
          f"writer_group and reader_group: socket 0666, group {gw} ({oct(stat.S_IMODE(st.st_mode))}, gid {st.st_gid})")
    r.relctl("unpack", tars[0])
    rc, out, err = as_(r, reader, "status")
    d.tap(rc == 0, "a member of reader_group runs relctl status", err)
    rc, out, err = as_(r, reader, "releases")
    d.tap(rc == 0 and "1" in out, "a member of reader_group runs relctl releases", err)
    rc, out, err = as_(r, reader, "remove", "1")
    d.tap(refused_by_reld(rc, err, reader), "a member of reader_group: remove is refused with one line", err)
    rc, out, err = as_(r, reader, "unpack", tars[1])
    d.tap(refused_by_reld(rc, err, reader), "a member of reader_group: unpack is refused with one line", err)
    rc, out, err = r.relctl("releases", "--json")
    d.tap(rc == 0 and [x["vsn"] for x in json.loads(out)["releases"]] == ["1"], "and nothing changed", out + err)
    rc, out, err = as_(r, other, "releases")
    d.tap(refused_by_reld(rc, err, other), "a user in neither group: reld refuses (not connect())", err)
    rc, out, err = as_(r, other, "status")
    d.tap(refused_by_reld(rc, err, other), "a user in neither group: status refused too", err)
    rc, out, err = as_(r, writer, "unpack", tars[1])
    rc2, out2, err2 = as_(r, writer, "remove", "2")
    d.tap(rc == 0 and rc2 == 0, "a member of writer_group still unpacks and removes", err + err2)
    r.stop()

    # reader_group alone: 0666 as well.
    r = reld_with(f"reader_group: {gr}\n")
    d.tap(sock_mode(r.sock) == 0o666, f"reader_group alone: socket 0666 ({oct(sock_mode(r.sock) or 0)})")
    r.relctl("unpack", tars[0])
    rc, out, err = as_(r, reader, "releases")
    d.tap(rc == 0 and "1" in out, "a member of reader_group reads", err)
    rc, out, err = as_(r, reader, "unpack", tars[2])
    d.tap(refused_by_reld(rc, err, reader), "and may not unpack", err)
    rc, out, err = as_(r, other, "releases")
    d.tap(refused_by_reld(rc, err, other), "a user in no group is refused by reld", err)
    rc, out, err = as_(r, writer, "releases")
    d.tap(refused_by_reld(rc, err, writer), "a member of a group reld was not told about is refused by reld", err)
    r.stop()

    # readers: all.
    r = reld_with("readers: all\n")
    d.tap(sock_mode(r.sock) == 0o666, f"readers: all: socket 0666 ({oct(sock_mode(r.sock) or 0)})")
    r.relctl("unpack", tars[0])
    rc, out, err = as_(r, other, "releases")
    rc2, out2, err2 = as_(r, other, "status")
    d.tap(rc == 0 and "1" in out and rc2 == 0, "readers: all: a user in no group reads", err + err2)
    rc, out, err = as_(r, other, "remove", "1")
    d.tap(refused_by_reld(rc, err, other), "readers: all: and may not remove", err)
    rc, out, err = as_(r, other, "unpack", tars[2])
    d.tap(refused_by_reld(rc, err, other), "readers: all: nor unpack", err)
    r.stop()
    remove_accounts()
    gone = [x for x in (writer, reader, other) if subprocess.run(["getent", "passwd", x], capture_output=True).returncode
            == 0] + [x for x in (gw, gr) if subprocess.run(["getent", "group", x], capture_output=True).returncode == 0]
    d.tap(not gone, "the test's users and groups are removed", gone)


# ---- 4. reld's systemd variables stay with reld ----------------------------

def test_environment(work):
    notify = Notify(os.path.join(work, "notify.sock"))
    envfile = os.path.join(work, "env.txt")
    try:
        env = clean_env(NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="60000000", JOURNAL_STREAM="8:424242",
                        INVOCATION_ID="0123456789abcdef0123456789abcdef", SVC_CANARY="passed")
        sock = os.path.join(work, "reld.sock")
        r = Svc(work, with_watchdog_pid([A.reld, "--root", os.path.join(work, "root"), "--socket", sock]), sock,
                env=env)
        ready = wait_for(lambda: notify.has("READY=1") or r.p.poll() is not None, timeout=10)
        got = notify.has("READY=1")
        d.tap(got and got[0][1] == r.p.pid, f"READY=1 arrives on NOTIFY_SOCKET, sent by reld's pid {r.p.pid}",
              f"{ready} {notify.msgs[:5]} {r.text()[-500:]}")
        rc, out, err = r.relctl("install", release(work, "1", [
            sh("envdump", f"env > {envfile}.tmp && mv {envfile}.tmp {envfile}; exec sleep 60")]))
        d.tap(rc == 0 and wait_for(lambda: os.path.exists(envfile)), "a process writes its environment", err)
        seen = {}
        if os.path.exists(envfile):
            for line in open(envfile, errors="replace"):
                k, _, v = line.rstrip("\n").partition("=")
                seen[k] = v
        d.tap(seen.get("SVC_CANARY") == "passed", "the rest of reld's environment reaches the process",
              sorted(seen))
        leaked = [k for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM") if k in seen]
        d.tap(seen and not leaked, "NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID, JOURNAL_STREAM do not reach it",
              {k: seen[k] for k in leaked})
        # INVOCATION_ID names the unit's invocation, which the process is
        # part of (same cgroup): it may pass either way.
        print(f"# INVOCATION_ID {'reaches' if 'INVOCATION_ID' in seen else 'does not reach'} the process "
              "(either is accepted)")
        code = r.stop()
        stopping = wait_for(lambda: notify.has("STOPPING=1"), timeout=2)
        d.tap(code == 0 and stopping, f"SIGTERM: STOPPING=1, exit {code}", notify.msgs[-3:])
    finally:
        notify.close()


# ---- 5. a relative --root ------------------------------------------------------

SERVE = """#!{python}
import os, socket
s = socket.socket(fileno=3)  # LISTEN_FDS=1: the socket reld holds
while True:
    c, _ = s.accept()
    c.sendall(("pong " + os.getcwd() + "\\n").encode())
    c.close()
"""


def test_relative_root(work):
    cwd = os.path.join(work, "cwd")
    os.makedirs(cwd)
    svc = os.path.join(work, "svc.sock")
    python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else os.path.realpath(sys.executable)
    tar = release(work, "1", [dict(name="serve", exec="bin/serve", shutdown_ms=1000,
                                   sockets=[dict(name="s", listen=f"unix:{svc}")])],
                  app="srv", files={"bin/serve": (SERVE.format(python=python), 0o755)})
    sock = os.path.join(work, "reld.sock")
    r = Svc(work, [os.path.abspath(A.reld), "--root", "./root", "--socket", sock], sock, cwd=cwd)
    d.tap(r.wait_ready(), "reld --root ./root starts", r.text()[-800:])
    rc, out, err = r.relctl("install", tar)
    d.tap(rc == 0 and os.path.isdir(os.path.join(cwd, "root", "releases", "1")),
          "install puts the release under ./root, relative to reld's working directory", err)
    procs = wait_for(lambda: running(r))
    reply = ""
    try:
        with socket.socket(socket.AF_UNIX) as c:
            c.settimeout(5)
            c.connect(svc)  # reld holds the socket: this works even if nothing serves; the reply does not
            reply = c.recv(4096).decode()
    except OSError as e:
        reply = f"{e}"
    want = "pong " + os.path.realpath(os.path.join(cwd, "root", "lib", "srv-1"))
    d.tap(reply.strip() == want, "its process (exec bin/serve, relative to the application) serves on the socket "
          "reld holds, from its application's directory", f"got {reply!r}, want {want!r}\n{r.text()[-1000:]}")
    st = r.status()["processes"]
    d.tap(procs and st and st[0]["state"] == "running" and st[0]["restarts"] == 0 and st[0]["pid"] == procs[0]["pid"]
          and alive(procs[0]["pid"]) and "status 127" not in r.text(),
          "and runs: not restarted, no exit 127", st)
    code = r.stop()
    d.tap(code == 0, f"SIGTERM: exit {code}", r.text()[-800:])


# ---- 6. the watchdog while a process is stopped -----------------------------

def max_gap(times, start, end):
    pts = [start] + [t for t in times if start < t < end] + [end]
    return max(b - a for a, b in zip(pts, pts[1:]))


def test_watchdog(work):
    notify = Notify(os.path.join(work, "notify.sock"))
    try:
        env = clean_env(NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="200000")
        sock = os.path.join(work, "reld.sock")
        r = Svc(work, with_watchdog_pid([A.reld, "--root", os.path.join(work, "root"), "--socket", sock]), sock,
                env=env)
        d.tap(r.wait_ready(), "reld runs under WATCHDOG_USEC=200000", r.text()[-800:])
        stubborn = "trap '' TERM; exec sleep 60"  # sleep inherits the ignored SIGTERM
        v1 = release(work, "1", [sh("p", stubborn, shutdown_ms=3000)], app="slow")
        v2 = release(work, "2", [sh("p", stubborn, shutdown_ms=3000)], app="slow")
        rc, out, err = r.relctl("install", v1)
        old = wait_for(lambda: running(r))
        d.tap(rc == 0 and old, "release 1: a process that ignores SIGTERM, shutdown_ms 3000", err)
        t = time.monotonic()
        time.sleep(1.0)
        pings = [m for m in notify.has("WATCHDOG=1") if t < m[0]]
        d.tap(len(pings) >= 5 and all(m[1] == r.p.pid for m in pings),
              f"WATCHDOG=1 every ~100 ms from reld's pid ({len(pings)} in 1 s)", notify.msgs[-5:])
        if not old:
            return
        pid = old[0]["pid"]
        t0 = time.monotonic()
        up = subprocess.Popen([A.relctl, "--socket", sock, "install", v2], env=clean_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
        STARTED.append(up)
        died, status_took = None, None
        deadline = t0 + 30
        while time.monotonic() < deadline and (died is None or up.poll() is None):
            now = time.monotonic()
            if died is None and not alive(pid):
                died = now - t0
            if status_took is None and now - t0 > 0.5 and died is None:
                s0 = time.monotonic()
                r.relctl("status", timeout=20)
                status_took = time.monotonic() - s0
            time.sleep(0.01)
        out, err = up.communicate(timeout=30)
        new = wait_for(lambda: [p for p in running(r) if p["pid"] != pid and p.get("vsn") == "2"])
        t1 = time.monotonic() + 0.5
        time.sleep(0.5)
        d.tap(up.returncode == 0 and new, "install of release 2 replaces the process", out + err)
        d.tap(died is not None and 2.5 <= died <= 10,
              f"the old process ignores SIGTERM and is killed after its shutdown_ms ({died and round(died, 2)} s)",
              r.text()[-800:])
        times = [m[0] for m in notify.has("WATCHDOG=1")]
        gap = max_gap(times, t0 - 0.2, t1)
        d.tap(gap < 1.0, f"WATCHDOG=1 keeps coming meanwhile (longest gap {gap:.2f} s, bound 1 s)",
              [round(b - a, 2) for a, b in zip(times, times[1:]) if b - a > 0.3])
        d.tap(status_took is not None and status_took < 1.0,
              f"and relctl status answers while the process is being stopped "
              f"({status_took and round(status_took * 1000)} ms)")
        code = r.stop()
        d.tap(code == 0, f"SIGTERM: exit {code}", r.text()[-800:])
    finally:
        notify.close()


TESTS = (test_shipped_config, test_stop_signals, test_sighup, test_rights, test_environment, test_relative_root,
         test_watchdog)


def kill_started():
    """Ends what this file started, by pid; supervised processes die with
    their reld (PR_SET_PDEATHSIG)."""
    for p in STARTED:
        if p.poll() is None:
            p.kill()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
    STARTED.clear()


def main():
    global A
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--reld", required=True)
    ap.add_argument("--relctl", required=True)
    ap.add_argument("--packaging", default=os.path.join(here, "..", "..", "packaging"))
    ap.add_argument("--only", help="run only the tests whose name contains this")
    A = ap.parse_args()
    A.reld, A.relctl, A.packaging = (os.path.abspath(x) for x in (A.reld, A.relctl, A.packaging))
    d.A = argparse.Namespace(reld=A.reld, relctl=A.relctl, shop=None)
    atexit.register(remove_accounts)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # a meson timeout: still remove the accounts
    print("TAP version 13")
    t_all = time.monotonic()
    try:
        for t in TESTS:
            if A.only and A.only not in t.__name__:
                continue
            work = tempfile.mkdtemp(prefix="reld-svc-")
            t_start = time.monotonic()
            try:
                t(work)
            except Exception:
                d.tap(False, f"{t.__name__} crashed", traceback.format_exc())
            finally:
                kill_started()
                remove_accounts()
                shutil.rmtree(work, ignore_errors=True)
                print(f"# {t.__name__}: {time.monotonic() - t_start:.1f} s")
    finally:
        kill_started()
        remove_accounts()
    d.tap(not d.UNCLEAN, "every reld stopped with no sanitizer report", "\n".join(d.UNCLEAN))
    print(f"# total {time.monotonic() - t_all:.1f} s")
    print(f"1..{d.N}")
    return 1 if d.FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
