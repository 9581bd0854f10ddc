#!/usr/bin/env python3
"""End to end: reld under a real systemd, installed as a user installs it.
Prints TAP.

`meson install --destdir` puts the build into a temporary directory; a
container (systemd-nspawn -b, --volatile=yes: the machine's own /usr
read-only, everything else a fresh tmpfs) boots the machine's systemd with
that install bound at its prefix (/usr/local); the unit and the tmpfiles.d
entry go into the container's /etc, with a drop-in `WatchdogSec=2s` so that
a starved watchdog shows within seconds. Then, through `nsenter` into the
container (it is not registered with machined), systemctl, journalctl and
the installed relctl check:

  1. `systemctl start reld` with the shipped config: READY=1 (active), the
     socket at /run/reld/reld.sock;
  2. a release of a plain /bin/sh process: it runs, and its stdout and
     stderr are in the journal under its own identifier (app/process);
  3. reld's lines carry priorities: an error is in `journalctl -p err`,
     information is not;
  4. `systemctl reload reld` (SIGHUP) keeps reld (same MainPID, no restart);
  5. under WatchdogSec=2s, replacing a process that ignores SIGTERM with
     shutdown_ms 8000 does not get reld killed by the watchdog;
  6. the process's environment holds none of reld's systemd variables;
     JOURNAL_STREAM names the process's own stream;
  7. `systemctl stop reld` stops the processes and reld cleanly.

With --package SOURCE (the normal build in scripts/test), the same checks
run on reld as the Debian package installs it: a copy of SOURCE's files
(outside the shared tree, so no build product lands there) is built with
`dpkg-buildpackage -us -uc -b` (nocheck: the suites run here anyway), the
container boots on an overlay of this machine's / (its upper layer a
tmpfs, nothing written to the machine), and inside it `dpkg -i` installs
reld, libreld-runtime0 and libreld-runtime-dev. Before the checks: what
went where (dpkg -L against the expected contents), the conffile, the
group reld and the socket's, the unit enabled and started by the package
(with the test's drop-in already in place), `systemd-analyze verify` of
the installed unit. After them, a package upgrade under load: reld runs
the kvcounter example (--kvroot; its listening socket held by reld) beside
the process it had, a client drives it on the container's loopback through
the whole `dpkg -i` of the same packages repacked under a higher version
(a true upgrade: prerm upgrade, postinst configure OLD, which re-executes
reld in place): no request fails, reld keeps its MainPID (NRestarts 0),
its processes their pids; the re-exec's time (request to ready, from the
journal) and dpkg's are printed. Then
`dpkg --purge` leaves none of the packages' files, no /etc/reld, no
/var/lib/reld, no unit link, and the system group reld (Debian keeps
system groups).

Everything it starts is killed at the end, even on failure or a timeout:
the container's init by SIGKILL (its whole pid namespace goes with it), and
a guardian process does the same if this driver itself is killed.
Without root, systemd-nspawn, or a machine that lets a container boot,
every check is skipped (TAP `# SKIP`).

Usage: systemd.py --build BUILD_DIR [--package SOURCE_DIR --kvroot KVCOUNTER_ROOT]
"""
import argparse
import atexit
import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import daemon as d  # noqa: E402  (tap, skip and the counters)
from supervise import tar_release, wait_for  # noqa: E402

A = None
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
IN = "/mnt/reld-e2e"  # the work directory, as the container sees it
CHECKS = [
    "1. systemctl start reld with the shipped config: active, /run/reld/reld.sock",
    "2. a plain process runs; its output is in the journal under its own identifier",
    "3. reld's lines carry priorities: errors in -p err, information not",
    "4. systemctl reload reld (SIGHUP) keeps reld running",
    "5. WatchdogSec=2s: a process slow to stop does not starve the watchdog",
    "6. systemd's variables for reld do not reach the process",
    "7. systemctl stop reld stops the processes and reld cleanly",
    "8. kill -9 of reld: systemd starts it again, the permanent release runs again",
]

# What systemd sets for reld alone (LISTEN_* it does not set here, but reld
# must not pass them on either).
LEAKS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


class Container:
    """A booted systemd-nspawn container, its init the leader."""

    def __init__(self):
        self.p = None
        self.leader = None
        self.leader_start = None
        self.log_path = None
        self.guard = None

    def kill(self):
        """SIGKILL the container's init (its pid namespace dies with it),
        then reap nspawn (asked to stop its container, if it has one we do
        not know of)."""
        if self.leader is not None:
            try:
                if start_time(self.leader) == self.leader_start:
                    os.kill(self.leader, signal.SIGKILL)
            except (OSError, IndexError):
                pass
        if self.p is not None and self.p.poll() is None:
            if self.leader is None:
                self.p.terminate()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
        if self.guard is not None:
            try:
                self.guard.stdin.write("clear\n")
                self.guard.stdin.close()
                self.guard.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                pass
            self.guard = None

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""


C = Container()

# A process of its own session (a timeout's kill of the process group does
# not reach it) that, when this driver's pipe closes without "clear",
# SIGKILLs the pids it was told of, if each still is the process it was.
GUARD = r"""
import os, shutil, signal, sys, time
told, dirs = [], []
for line in sys.stdin:
    w = line.split(" ", 1)
    if w[0] == "clear":
        told, dirs = [], []
    elif w[0] == "dir":
        dirs.append(w[1].rstrip("\n"))
    elif len(w) == 2:
        told.append((int(w[0]), w[1].strip()))
for pid, start in reversed(told):  # the container's init first
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[19] == start:
                os.kill(pid, signal.SIGKILL)
    except (OSError, IndexError):
        pass
deadline = time.monotonic() + 10  # nspawn unmounts, exits
while told and time.monotonic() < deadline and any(os.path.exists(f"/proc/{pid}") for pid, _ in told):
    time.sleep(0.1)
for d in dirs:
    shutil.rmtree(d, ignore_errors=True)
"""


def start_time(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[19]


def guard(pid=None, path=None):
    """Tells the guardian of pid (to kill) or path (to remove)."""
    if C.guard is None:
        C.guard = subprocess.Popen([sys.executable, "-c", GUARD], stdin=subprocess.PIPE, text=True,
                                   start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        C.guard.stdin.write(f"dir {path}\n" if path else f"{pid} {start_time(pid)}\n")
        C.guard.stdin.flush()
    except OSError:
        pass


def cx(*cmd, timeout=30):
    """cmd inside the container (all its namespaces), with a clean
    environment, as root: (status, stdout, stderr)."""
    argv = ["nsenter", "-t", str(C.leader), "-a", "--", "env", "-i", f"PATH={PATH}", "LANG=C.UTF-8"] + list(cmd)
    try:
        p = subprocess.run(argv, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        return 124, (e.stdout or b"").decode(errors="replace"), f"timed out after {timeout} s"
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def show(*props):
    rc, out, err = cx("systemctl", "show", "reld", *(f"--property={p}" for p in props))
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def journal(*args):
    """journalctl -o json entries (dicts) for args."""
    rc, out, err = cx("journalctl", "--no-pager", "-o", "json", *args)
    entries = []
    for line in out.splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        m = e.get("MESSAGE")
        if isinstance(m, list):  # journald's form for non-UTF-8 text
            e["MESSAGE"] = bytes(m).decode(errors="replace")
        entries.append(e)
    return entries


def messages(*args):
    return [e.get("MESSAGE", "") for e in journal(*args)]


def alive_in(pid):
    """pid, in the container's pid namespace, exists and is no zombie."""
    rc, out, err = cx("cat", f"/proc/{pid}/stat")
    return rc == 0 and out.rsplit(")", 1)[-1].split()[:1] != ["Z"]


def status():
    rc, out, err = cx("relctl", "status", "--json")
    try:
        return json.loads(out) if rc == 0 else {"processes": []}
    except ValueError:
        return {"processes": []}


def running(app, vsn):
    return [p for p in status()["processes"]
            if p.get("app") == app and p.get("vsn") == vsn and p.get("pid") and p.get("state") == "running"]


def release(vsn, apps):
    """Tarball of release vsn, as supervise.py's plain_release builds one:
    apps is {app: (app_vsn, [process dicts as in app.yaml])}. Its path
    inside the container."""
    src = os.path.join(A.work, f"src{vsn}")
    os.makedirs(os.path.join(src, "releases", vsn))
    refs = "".join(f'  - {{name: {a}, vsn: "{v}"}}\n' for a, (v, _) in apps.items())
    with open(os.path.join(src, "releases", vsn, "release.yaml"), "w") as f:
        f.write(f'release: plain\nvsn: "{vsn}"\napplications:\n{refs}')
    for a, (v, procs) in apps.items():
        os.makedirs(os.path.join(src, "lib", f"{a}-{v}"))
        with open(os.path.join(src, "lib", f"{a}-{v}", "app.yaml"), "w") as f:
            # JSON is YAML: each process a flow mapping, shell text quoted safely.
            f.write(f'name: {a}\nvsn: "{v}"\napplications: []\nprocesses:\n' +
                    "".join(f"  - {json.dumps(p)}\n" for p in procs))
    tar_release(src, os.path.join(A.work, f"plain-{vsn}.tar"))
    return f"{IN}/plain-{vsn}.tar"


def sh(name, script, **opts):
    return dict(name=name, exec="/bin/sh", args=["-c", script], **opts)


# ---- setting up: install, boot ----------------------------------------------------

def why_not():
    """Why this machine cannot run the test, or None."""
    if os.geteuid() != 0:
        return "needs root (systemd-nspawn)"
    for tool in ("systemd-nspawn", "nsenter", "meson"):
        if not shutil.which(tool):
            return f"no {tool} (scripts/install-deps test installs systemd-container)"
    if not any(os.access(p, os.X_OK) for p in ("/usr/lib/systemd/systemd", "/lib/systemd/systemd")):
        return "no systemd on this machine"
    return None


def install():
    """meson install --destdir into the work directory; returns that
    directory, the install's prefix (from the unit's ExecStart) and the
    paths of reld.service, reld.conf (tmpfiles.d) and reld.yaml, or raises
    with the reason."""
    dest = os.path.join(A.work, "dest")
    p = subprocess.run(["meson", "install", "-C", A.build, "--no-rebuild", "--quiet", "--destdir", dest],
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        raise RuntimeError(f"meson install --destdir failed: {p.stdout[-1500:]}{p.stderr[-1500:]}")
    found = {}
    for top, dirs, files in os.walk(dest):
        for name in files:
            if name in ("reld.service", "reld.conf", "reld.yaml"):
                found[name] = os.path.join(top, name)
    missing = [n for n in ("reld.service", "reld.conf", "reld.yaml") if n not in found]
    if missing:
        raise RuntimeError(f"meson install put no {', '.join(missing)} under {dest}")
    unit = open(found["reld.service"]).read()
    exec_start = [line for line in unit.splitlines() if line.startswith("ExecStart=")][0]
    binary = shlex.split(exec_start[len("ExecStart="):])[0].lstrip("-@:+!")
    prefix = os.path.dirname(os.path.dirname(binary))  # PREFIX/sbin/reld
    return dest, prefix, found


# The container's root for --package: an overlay of this machine's /, its
# upper layer a tmpfs, mounted in a mount namespace of its own (it goes
# when the container does). nspawn's --volatile=overlay does not take /.
OVERLAY = ('mount -t tmpfs -o mode=0755 tmpfs "$1" && mkdir "$1/upper" "$1/work" "$1/root" && '
           'mount -t overlay overlay -o "lowerdir=/,upperdir=$1/upper,workdir=$1/work" "$1/root" && shift && exec "$@"')


def boot(dest, prefix):
    """Boots the container; returns None, or why it cannot boot here.
    With dest None (--package), on an overlay of / instead of / with the
    install bound at its prefix."""
    C.log_path = os.path.join(A.work, "nspawn.log")
    name = f"reld-e2e-{os.getpid()}"
    if dest is None:
        ovl = os.path.join(A.work, "overlay")
        os.mkdir(ovl)
        root = ["unshare", "--mount", "--propagation", "private", "sh", "-c", OVERLAY, "sh", ovl,
                "systemd-nspawn", "-D", os.path.join(ovl, "root")]
    else:
        root = ["systemd-nspawn", "-D", "/", "--volatile=yes", f"--bind-ro={dest}{prefix}:{prefix}"]
    argv = root + ["--register=no", "--keep-unit", "--private-network", "--console=read-only", f"--machine={name}",
                   f"--bind={A.work}:{IN}",
                   "-b", "systemd.firstboot=off", "systemd.unit=basic.target", "systemd.show_status=false"]
    log = open(C.log_path, "wb")
    C.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/")
    log.close()
    guard(C.p.pid)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and C.leader is None:
        if C.p.poll() is not None:
            return f"systemd-nspawn exited {C.p.returncode}: {C.log()[-600:]!r}"
        for ent in os.listdir("/proc"):
            if not ent.isdigit():
                continue
            try:
                with open(f"/proc/{ent}/status") as f:
                    st = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
            except OSError:
                continue
            if st.get("PPid") == str(C.p.pid) and st.get("NSpid", "").split()[-1:] == ["1"] and \
                    len(st["NSpid"].split()) > 1:
                C.leader, C.leader_start = int(ent), start_time(int(ent))
                guard(C.leader)
                break
        time.sleep(0.05)
    if C.leader is None:
        return f"no container init appeared: {C.log()[-600:]!r}"
    state = ""
    while time.monotonic() < deadline:
        if C.p.poll() is not None:
            return f"systemd-nspawn exited {C.p.returncode}: {C.log()[-600:]!r}"
        rc, out, err = cx("systemctl", "is-system-running", timeout=10)
        state = out.strip()
        if state in ("running", "degraded"):
            return None
        time.sleep(0.1)
    return f"the container's systemd did not finish booting (is-system-running: {state!r}): {C.log()[-600:]!r}"


DROP_IN = """[Service]
# A starved watchdog shows within seconds.
WatchdogSec=2s
# How reld's main process ended (systemd forgets it once the unit is
# inactive and unloaded): SERVICE_RESULT EXIT_CODE EXIT_STATUS, a line a stop.
ExecStopPost=/bin/sh -c 'echo "$$SERVICE_RESULT $$EXIT_CODE $$EXIT_STATUS" >> /run/reld-e2e-exits'
"""


def put_in_place(found, prefix):
    """What a user does after meson install: the unit and the tmpfiles.d
    entry into /etc (the container's /usr is the machine's, read-only),
    daemon-reload, tmpfiles; plus the test's drop-in."""
    unit = f"{IN}/{os.path.relpath(found['reld.service'], A.work)}"
    tmpf = f"{IN}/{os.path.relpath(found['reld.conf'], A.work)}"
    with open(os.path.join(A.work, "e2e.conf"), "w") as f:
        f.write(DROP_IN)
        with open(os.path.join(A.work, "dest", prefix.lstrip("/"), "sbin", "reld"), "rb") as b:
            if b"__asan_init" in b.read():
                # LeakSanitizer stops reld's threads with ptrace at exit,
                # which the unit's SystemCallFilter=@system-service denies.
                f.write("SystemCallFilter=@debug\n")
    script = (f"install -D -m 644 {unit} /etc/systemd/system/reld.service && "
              f"install -D -m 644 {tmpf} /etc/tmpfiles.d/reld.conf && "
              f"install -D -m 644 {IN}/e2e.conf /etc/systemd/system/reld.service.d/e2e.conf && "
              "systemctl daemon-reload && systemd-tmpfiles --create reld.conf && "
              f"test -x {prefix}/sbin/reld && test -f {prefix}/etc/reld/reld.yaml -o -f /etc/reld/reld.yaml")
    return cx("sh", "-c", script)


def exits():
    """The lines ExecStopPost= wrote: one per end of reld's main process."""
    rc, out, err = cx("cat", "/run/reld-e2e-exits")
    return out.splitlines() if rc == 0 else []


# ---- the checks ---------------------------------------------------------------

def run_checks(before_stop=None):
    S = {}  # what later checks need from earlier ones

    # 1. start
    t0 = time.monotonic()
    rc, out, err = cx("systemctl", "start", "reld", timeout=40)
    took = time.monotonic() - t0
    s = show("ActiveState", "SubState", "MainPID", "NRestarts", "WatchdogUSec", "ExecStart")
    S["main"] = s.get("MainPID")
    d.tap(rc == 0 and s.get("ActiveState") == "active" and s.get("SubState") == "running" and
          s.get("MainPID", "0") != "0",
          f"1. systemctl start reld: active (running) in {took:.1f} s, READY=1 reached, MainPID {s.get('MainPID')}",
          f"rc {rc} {err}\n{s}\n" + "\n".join(messages("-u", "reld")[-15:]))
    d.tap(s.get("WatchdogUSec") == "2s" and "--config" in s.get("ExecStart", ""),
          "   the shipped unit's ExecStart (--config), WatchdogSec=2s from the drop-in", s)
    rc, out, err = cx("test", "-S", "/run/reld/reld.sock")
    rc2, out2, err2 = cx("relctl", "status")
    d.tap(rc == 0 and rc2 == 0 and "root /var/lib/reld" in out2,
          "1. the socket is /run/reld/reld.sock; the installed relctl finds it without --socket", out2 + err2)
    ready = [e for e in journal("-u", "reld", "-t", "reld") if e.get("MESSAGE", "").startswith("ready:")]
    d.tap(ready and ready[0].get("_PID") == S["main"],
          "1. reld's 'ready:' line is in the journal from its MainPID", ready[:1])
    if s.get("ActiveState") != "active":
        return

    # 2. a plain process; 6. its environment
    # Its environment twice: as the shell sees it (`env`), and as reld
    # passed it (/proc/$$/environ, before the shell dedupes a variable
    # given twice, of which a C program's getenv() takes the first).
    stubborn = ("cp /proc/$$/environ {IN}/environ-1 && env > {IN}/env-1.tmp && mv {IN}/env-1.tmp {IN}/env-1.txt; "
                "echo hello-stdout-1; echo hello-stderr-1 >&2; trap '' TERM; exec sleep 600").format(IN=IN)
    v1 = release("1", {"svc": ("1", [sh("p", stubborn, shutdown_ms=8000)])})
    rc, out, err = cx("relctl", "install", v1)
    procs = wait_for(lambda: running("svc", "1"))
    pid1 = procs[0]["pid"] if procs else None
    S["pid1"] = pid1
    d.tap(rc == 0 and pid1 and alive_in(pid1),
          f"2. relctl install of a release of a plain /bin/sh process: it runs (pid {pid1})", out + err)
    def hellos():
        g = {e["MESSAGE"]: e for e in journal("-t", "svc/p") if e.get("MESSAGE", "").endswith("-1")}
        return g if len(g) >= 2 else None

    got = wait_for(hellos) or {}
    o, e_ = got.get("hello-stdout-1", {}), got.get("hello-stderr-1", {})
    d.tap(o.get("_PID") == str(pid1) and o.get("PRIORITY") == "6" and o.get("SYSLOG_IDENTIFIER") == "svc/p",
          "2. its stdout is in the journal: journalctl -t svc/p, _PID the process's, priority info", o or got)
    d.tap(e_.get("_PID") == str(pid1) and e_.get("PRIORITY") == "4",
          "2. its stderr too, priority warning", e_ or got)
    relayed = [m for m in messages("-t", "reld") if "hello-" in m]
    d.tap(not relayed, "2. and reld does not relay it into its own log (SYSLOG_IDENTIFIER=reld)", relayed)

    envfile = os.path.join(A.work, "env-1.txt")
    seen, raw = {}, []
    if wait_for(lambda: os.path.exists(envfile)):
        for line in open(envfile, errors="replace"):
            k, _, v = line.rstrip("\n").partition("=")
            seen[k] = v
        with open(os.path.join(A.work, "environ-1"), "rb") as f:
            raw = [x.decode(errors="replace").partition("=")[::2] for x in f.read().split(b"\0") if x]
    leaked = sorted({f"{k}={v}" for k, v in list(seen.items()) + raw if k in LEAKS})
    d.tap(seen and raw and not leaked,
          "6. " + ", ".join(LEAKS[:3]) + " (and LISTEN_*) do not reach the process (its /proc/PID/environ and env)",
          leaked or "the process wrote no environment")
    rc, out, err = cx("sh", "-c", f"tr '\\0' '\\n' < /proc/{S['main']}/environ | sed -n 's/^JOURNAL_STREAM=//p'")
    reld_stream = out.strip()
    own = set()
    for fd in (1, 2):
        rc2, out2, err2 = cx("stat", "-L", "-c", "%d:%i", f"/proc/{pid1}/fd/{fd}")
        if rc2 == 0:
            own.add(out2.strip())
    streams = [v for k, v in raw if k == "JOURNAL_STREAM"]
    js = seen.get("JOURNAL_STREAM")
    d.tap(seen and reld_stream and streams == ([js] if js else []) and all(v != reld_stream and v in own
                                                                           for v in streams),
          f"6. JOURNAL_STREAM {js or '(unset)'} is not reld's ({reld_stream or '?'}): "
          f"it names the process's own stream, once",
          f"given {streams}, the shell's {js}, the process's stdout/stderr {sorted(own)}")
    extra = sorted(k for k in seen if k in ("INVOCATION_ID", "SYSTEMD_EXEC_PID", "RUNTIME_DIRECTORY",
                                            "STATE_DIRECTORY"))
    print(f"# reach the process as well (accepted): {', '.join(extra) or 'none'}")

    # 4. reload
    before = show("MainPID", "NRestarts")
    rc, out, err = cx("systemctl", "reload", "reld", timeout=30)
    reloaded = wait_for(lambda: [m for m in messages("-u", "reld", "-t", "reld")
                                 if m.startswith("reloaded the configuration")])
    time.sleep(0.3)
    after = show("MainPID", "NRestarts", "ActiveState", "SubState")
    d.tap(rc == 0 and after.get("MainPID") == before.get("MainPID") == S["main"] and
          after.get("NRestarts") == before.get("NRestarts") == "0" and after.get("SubState") == "running",
          f"4. systemctl reload reld: reld keeps running (MainPID {after.get('MainPID')}, "
          f"NRestarts {after.get('NRestarts')})", f"rc {rc} {err}\nbefore {before}\nafter {after}")
    d.tap(reloaded, "4. the journal shows 'reloaded the configuration'", messages("-u", "reld")[-8:])
    d.tap(pid1 and alive_in(pid1) and running("svc", "1"), "4. and the process runs on, untouched")

    # 5. the watchdog while a process is slow to stop
    v2 = release("2", {"svc": ("2", [sh("p", "echo hello-stdout-2; exec sleep 600", shutdown_ms=8000)])})
    argv = ["nsenter", "-t", str(C.leader), "-a", "--", "env", "-i", f"PATH={PATH}", "relctl", "install", v2]
    t0 = time.monotonic()
    up = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    seen_states = set()
    while up.poll() is None and time.monotonic() - t0 < 30:
        s = show("MainPID", "NRestarts", "ActiveState")
        seen_states.add((s.get("MainPID"), s.get("NRestarts"), s.get("ActiveState")))
        time.sleep(0.25)
    if up.poll() is None:
        up.kill()
    out, err = up.communicate(timeout=10)
    took = time.monotonic() - t0
    time.sleep(2.5)  # one more watchdog interval: a late kill would show
    s = show("MainPID", "NRestarts", "ActiveState", "Result")
    seen_states.add((s.get("MainPID"), s.get("NRestarts"), s.get("ActiveState")))
    d.tap(up.returncode == 0 and 7.0 <= took <= 15.0,
          f"5. relctl install 2 replaces a process that ignores SIGTERM (shutdown_ms 8000) in {took:.1f} s",
          out + err)
    d.tap(seen_states == {(S["main"], "0", "active")},
          f"5. meanwhile and after: MainPID {S['main']}, NRestarts 0, active throughout (WatchdogSec=2s)",
          sorted(seen_states, key=str))
    dog = [m for m in messages("-u", "reld") if "atchdog" in m]
    d.tap(not dog and not exits(), "5. no watchdog timeout in the journal, reld's main process never ended",
          dog + exits())
    new = wait_for(lambda: running("svc", "2"))
    killed = [m for m in messages("-u", "reld", "-t", "reld") if m.startswith(f"svc/p[{pid1}] stopped")]
    d.tap(new and pid1 and not alive_in(pid1) and new[0]["pid"] != pid1,
          f"5. the old process {pid1} is gone ({killed[0] if killed else '?'}), the new one runs "
          f"(pid {new[0]['pid'] if new else '?'})", status()["processes"])
    S["pid2"] = new[0]["pid"] if new else None

    # 3. priorities: a process that cannot stay up ends in an error line
    v3 = release("3", {"svc": ("2", [sh("p", "echo hello-stdout-2; exec sleep 600", shutdown_ms=8000)]),
                       "crash": ("1", [sh("p", "echo crash-3 >&2; exit 3", shutdown_ms=500)])})
    rc, out, err = cx("relctl", "install", v3)
    print(f"# relctl install 3 (adds an application whose process exits at once): exit {rc} "
          f"{(out + err).strip().splitlines()[-1:] or ''}")
    errs = wait_for(lambda: [e for e in journal("-u", "reld", "-p", "err", "-t", "reld")
                             if "application crash" in e.get("MESSAGE", "")])
    d.tap(errs and errs[0].get("PRIORITY") == "3" and errs[0].get("_PID") == S["main"] and
          not re.match(r"<\d>|reld:", errs[0]["MESSAGE"]),
          f"3. journalctl -u reld -p err shows reld's error: {errs[0]['MESSAGE'] if errs else '(none)'}",
          "\n".join(f"<{e.get('PRIORITY')}> {e.get('SYSLOG_IDENTIFIER')}: {e.get('MESSAGE')}"
                    for e in journal("-u", "reld")[-15:]))
    err_all = journal("-u", "reld", "-p", "err")
    infos = [e for e in err_all if re.match(r"ready:|app/|\w+/p\[\d+\] (started|stopped)|installed release|"
                                            r"reloaded|unpacked", e.get("MESSAGE", ""))]
    info_all = journal("-u", "reld", "-t", "reld", "-p", "info")
    ready_info = [e for e in info_all if e.get("MESSAGE", "").startswith("ready:") and e.get("PRIORITY") == "6"]
    warn = [e for e in err_all if e.get("MESSAGE", "").startswith(("hello-stderr", "crash-3"))]
    d.tap(ready_info and not infos and not warn,
          "3. information ('ready:', 'started', 'installed release') is priority 6, not in -p err; "
          "nor are the processes' stderr lines (warning)",
          [e.get("MESSAGE") for e in infos + warn] or "no 'ready:' at priority 6")
    prefixed = [e["MESSAGE"] for e in journal("-u", "reld", "-t", "reld") if re.match(r"<\d>|reld:", e["MESSAGE"])]
    d.tap(not prefixed, "3. reld's journal lines carry neither '<N>' nor 'reld:'", prefixed[:5])

    if before_stop:
        before_stop(S)

    # 7. stop
    pids = [p["pid"] for p in status()["processes"] if p.get("pid")]
    t0 = time.monotonic()
    rc, out, err = cx("systemctl", "stop", "reld", timeout=60)
    took = time.monotonic() - t0
    s = show("ActiveState", "SubState", "Result", "NRestarts")
    ends = exits()
    d.tap(rc == 0 and s.get("ActiveState") == "inactive" and s.get("Result") == "success" and
          s.get("NRestarts") == "0" and ends == ["success exited 0"],
          f"7. systemctl stop reld in {took:.1f} s: inactive, Result=success, reld exited 0",
          f"rc {rc} {err}\n{s}\nExecStopPost saw {ends}\n" +
          "\n".join(f"{e.get('_PID')} <{e.get('PRIORITY')}> {e.get('MESSAGE')}" for e in journal("-u", "reld")[-12:]))
    left = [p for p in pids if alive_in(p)]
    stopped = [m for m in messages("-u", "reld", "-t", "reld") if re.match(r"svc/p\[\d+\] stopped", m)]
    killed = [e["MESSAGE"] for e in journal("-u", "reld", "_PID=1")
              if re.search(r"SIGKILL|left-over process|Killing process", e.get("MESSAGE", ""))]
    d.tap(pids and not left and S.get("pid2") and any(m.startswith(f"svc/p[{S['pid2']}] stopped") for m in stopped)
          and not killed,
          f"7. its processes {pids} are gone, stopped by reld, none left for systemd to kill",
          f"alive {left}; reld: {stopped}; systemd: {killed}")
    rc, out, err = cx("test", "-e", "/run/reld/reld.sock")
    d.tap(rc != 0, "7. the socket file is removed")

    # 8. a crash: Restart=on-failure starts reld again; KillMode=mixed took
    # its processes with it, and the new reld boots the permanent release.
    rc, out, err = cx("systemctl", "start", "reld", timeout=60)
    first = show("MainPID").get("MainPID", "0")
    rc2, out2, err2 = cx("relctl", "install", "--commit", "2", timeout=60)
    old = wait_for(lambda: running("svc", "2"), timeout=20)
    cx("sh", "-c", f"kill -KILL {first}")

    def restarted():
        s = show("MainPID", "NRestarts", "ActiveState")
        return s if s.get("NRestarts") == "1" and s.get("ActiveState") == "active" and \
            s.get("MainPID") not in ("0", first) else None
    back = wait_for(restarted, timeout=30)
    new = wait_for(lambda: [p for p in running("svc", "2") if old and p["pid"] != old[0]["pid"]], timeout=30)
    d.tap(rc == 0 and rc2 == 0 and old and back and new and not alive_in(old[0]["pid"]),
          f"8. kill -9 of reld (MainPID {first}): systemd starts it again (MainPID {back and back['MainPID']}, "
          f"NRestarts 1), the permanent release 2 runs again (pid {new and new[0]['pid']}; the old "
          f"{old and old[0]['pid']} went with reld's cgroup)",
          f"start {rc} {err}\ninstall --commit 2: {rc2} {out2} {err2}\nold {old} back {back} new {new}\n" +
          "\n".join(f"{e.get('_PID')} <{e.get('PRIORITY')}> {e.get('MESSAGE')}" for e in journal("-u", "reld")[-12:]))
    reports = [m for m in messages("-u", "reld") if "Sanitizer" in m or "runtime error:" in m]
    d.tap(not reports, "reld's journal holds no sanitizer report", "\n".join(reports[:20]))


# ---- the Debian package (--package) -----------------------------------------------

PACKAGES = ("reld", "libreld-runtime0", "libreld-runtime-dev")
# What each package holds (files and links; dpkg -L without directories),
# as fnmatch patterns; {ma} is the multiarch directory.
CONTENTS = {
    "reld": ["/etc/reld/reld.yaml", "/lib/systemd/system/reld.service", "/usr/bin/relctl",
             "/usr/lib/tmpfiles.d/reld.conf", "/usr/libexec/reld/relctl-*", "/usr/sbin/reld",
             "/usr/share/bash-completion/completions/relctl", "/usr/share/doc/reld/changelog.gz",
             "/usr/share/doc/reld/copyright", "/usr/share/man/man1/relctl.1.gz", "/usr/share/man/man5/reld-app.yaml.5.gz",
             "/usr/share/man/man5/reld.yaml.5.gz", "/usr/share/man/man8/reld.8.gz",
             "/usr/share/zsh/vendor-completions/_relctl"],
    "libreld-runtime0": ["/usr/lib/{ma}/libreld-runtime.so.0", "/usr/lib/{ma}/libreld-runtime.so.0.*",
                         "/usr/share/doc/libreld-runtime0/changelog.gz", "/usr/share/doc/libreld-runtime0/copyright"],
    "libreld-runtime-dev": ["/usr/include/reld/reld-runtime.h", "/usr/lib/{ma}/libreld-runtime.a",
                            "/usr/lib/{ma}/libreld-runtime.so", "/usr/lib/{ma}/pkgconfig/reld-runtime.pc",
                            "/usr/share/doc/libreld-runtime-dev/changelog.gz",
                            "/usr/share/doc/libreld-runtime-dev/copyright"],
}


def package_why_not():
    for tool in ("dpkg-buildpackage", "dh", "unshare"):
        if not shutil.which(tool):
            return f"no {tool} (scripts/install-deps test installs dpkg-dev and debhelper)"
    if not os.path.isfile(os.path.join(A.package, "debian", "control")):
        return f"no debian/control in {A.package}"
    return None


def build_debs():
    """dpkg-buildpackage -b on a copy of the source's files (git's list:
    tracked and untracked, not ignored, as they are on disk); returns the
    paths of the .debs (no -dbgsym) and the seconds it took, or raises."""
    src = os.path.join(A.work, "src")
    t0 = time.monotonic()
    p = subprocess.run(["git", "-C", A.package, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                       capture_output=True, timeout=60)
    if p.returncode != 0:
        raise RuntimeError(f"git ls-files in {A.package}: {p.stderr.decode(errors='replace')[-300:]}")
    for rel in filter(None, p.stdout.decode().split("\0")):
        f = os.path.join(A.package, rel)
        if os.path.isfile(f) and not os.path.islink(f):
            os.makedirs(os.path.dirname(os.path.join(src, rel)), exist_ok=True)
            shutil.copy2(f, os.path.join(src, rel))
    env = dict(os.environ, DEB_BUILD_OPTIONS="nocheck noautodbgsym parallel=2", LC_ALL="C.UTF-8")
    with open(os.path.join(A.work, "dpkg-buildpackage.log"), "w") as log:
        p = subprocess.run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=src, stdout=log, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, env=env, timeout=900)
    if p.returncode != 0:
        with open(os.path.join(A.work, "dpkg-buildpackage.log"), errors="replace") as f:
            raise RuntimeError(f"dpkg-buildpackage exited {p.returncode}: {f.read()[-2000:]}")
    debs = sorted(os.path.join(A.work, f) for f in os.listdir(A.work)
                  if f.endswith(".deb") and "-dbgsym_" not in f and f.split("_")[0] in PACKAGES)
    return debs, time.monotonic() - t0


def files_of(pkg):
    """pkg's files and links as dpkg -L lists them (no directories)."""
    rc, out, err = cx("sh", "-c", f'dpkg -L {pkg} | while read -r f; do [ -d "$f" ] || echo "$f"; done')
    return sorted(out.split()) if rc == 0 else []


def install_package(debs):
    """The test's drop-in first (the package's own start is the first
    one), then dpkg -i, as an administrator does. (rc, out, err)."""
    with open(os.path.join(A.work, "e2e.conf"), "w") as f:
        f.write(DROP_IN)
    names = " ".join(f"{IN}/{os.path.basename(x)}" for x in debs)
    # man-db's trigger rebuilds the whole index without it: not what is
    # tested. A policy-rc.d that forbids starting services (as container
    # images have) is this machine's, not the one a package meets.
    return cx("sh", "-c", f"install -D -m 644 {IN}/e2e.conf /etc/systemd/system/reld.service.d/e2e.conf && "
              "rm -f /var/lib/man-db/auto-update /usr/sbin/policy-rc.d && "
              f"dpkg -i {names}", timeout=120)


def package_checks(debs, rc, out, err):
    """What the installed package did, before the service checks."""
    d.tap(rc == 0, f"dpkg -i {' '.join(os.path.basename(x) for x in debs)} in the container", out + err)
    rc, ma, _ = cx("dpkg-architecture", "-qDEB_HOST_MULTIARCH")
    ma = ma.strip() or "x86_64-linux-gnu"
    for pkg in PACKAGES:
        got, want = files_of(pkg), [w.format(ma=ma) for w in CONTENTS[pkg]]
        extra = [f for f in got if not any(fnmatch.fnmatch(f, w) for w in want)]
        missing = [w for w in want if not any(fnmatch.fnmatch(f, w) for f in got)]
        d.tap(got and not extra and not missing, f"{pkg}: {len(got)} files where they belong: " + ", ".join(got),
              f"missing {missing}, not expected {extra}")
    rc, out, err = cx("dpkg-query", "-W", "-f=${Conffiles}", "reld")
    rc2, conf, _ = cx("cat", "/etc/reld/reld.yaml")
    d.tap("/etc/reld/reld.yaml" in out and re.search(r"^writer_group: reld$", conf, re.M),
          "/etc/reld/reld.yaml is a conffile and names writer_group: reld", out + err)
    rc, out, err = cx("getent", "group", "reld")
    gid = int(out.split(":")[2]) if rc == 0 and out.count(":") >= 3 else None
    rc2, st, err2 = cx("stat", "-c", "%A %G", "/run/reld/reld.sock")
    d.tap(gid is not None and gid < 1000 and st.split() == ["srw-rw----", "reld"],
          f"postinst made the system group reld (gid {gid}); the socket is {st.strip() or '?'}", out + err + st + err2)
    s = show("ActiveState", "SubState", "UnitFileState", "FragmentPath", "WatchdogUSec")
    d.tap(s.get("UnitFileState") == "enabled" and s.get("ActiveState") == "active" and
          s.get("FragmentPath") == "/lib/systemd/system/reld.service" and s.get("WatchdogUSec") == "2s",
          "the package enabled and started /lib/systemd/system/reld.service (dh_installsystemd), "
          "with the test's drop-in", s)
    rc, out, err = cx("systemd-analyze", "verify", "/lib/systemd/system/reld.service", timeout=60)
    mine = [line for line in (out + err).splitlines() if "reld" in line]
    d.tap(rc == 0 and not mine, "systemd-analyze verify /lib/systemd/system/reld.service: no complaint", out + err)
    rc, vsn, _ = cx("dpkg-query", "-W", "-f=${Version}", "reld")
    rc1, o1, _ = cx("reld", "--version")
    rc2, o2, _ = cx("relctl", "--version")
    d.tap(vsn and o1.strip() == f"reld {vsn}" and o2.strip() == f"relctl {vsn}",
          f"reld --version, relctl --version: {o1.strip()!r}, {o2.strip()!r} (package {vsn})")
    rc, out, err = cx("pkg-config", "--cflags", "--libs", "reld-runtime")
    d.tap(rc == 0 and "-I/usr/include/reld" in out and "-lreld-runtime" in out,
          f"pkg-config reld-runtime: {out.strip()}", err)


# A client of the kvcounter service: CONNS connections, each an INCR of a
# key of its own at RATE/CONNS a second, each reply's count checked (one
# more than the last); a request fails when its connection is refused or
# reset, its reply takes more than 2 s, or it is wrong. It says "started"
# once every connection has had a reply, answers each line of its stdin
# with the requests sent so far, runs until its stdin closes, then GETs
# every key (the count must be what the last reply said) and prints its
# figures as a JSON line. It runs in the container's network namespace
# only (nsenter -n: the container has a private network; the program is
# this machine's).
LOAD = r"""
import json, socket, sys, threading, time
port, conns, rate = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
stop = threading.Event()
st = [dict(sent=0, ok=0, failed=0, count=0, last="") for _ in range(conns)]
def talk(s, f, line):
    s.sendall(line.encode())
    reply = f.readline().decode()
    if not reply:
        raise ConnectionError("connection closed")
    return reply
def run(i):
    c, key, s, f, due = st[i], f"pkgload{port}_c{i}", None, None, time.monotonic()
    while not stop.is_set():
        due += conns / rate
        time.sleep(max(0.0, due - time.monotonic()))
        c["sent"] += 1
        try:
            if s is None:
                s = socket.create_connection(("127.0.0.1", port), timeout=2)
                f = s.makefile("rb")
            w = talk(s, f, f"INCR {key}\n").split()
            got = int(w[2]) if len(w) == 3 and w[:2] == ["OK", key] else None
            if got is not None and (c["count"] is None or got == c["count"] + 1):
                c["ok"] += 1
            else:
                c["failed"] += 1
                c["last"] = f"wrong reply {w} after count {c['count']}"
            c["count"] = got
        except (OSError, ValueError) as e:
            c["failed"] += 1
            c["last"] = repr(e)
            c["count"] = None  # the server may have counted it: the next reply says
            if s is not None:
                s.close()
            s = None
    if s is not None:
        s.close()
threads = [threading.Thread(target=run, args=(i,)) for i in range(conns)]
for t in threads:
    t.start()
deadline = time.monotonic() + 20
while time.monotonic() < deadline and not all(c["ok"] for c in st):
    time.sleep(0.02)
print("started" if all(c["ok"] for c in st) else "no reply", flush=True)
for _ in sys.stdin:
    print(sum(c["sent"] for c in st), flush=True)
stop.set()
for t in threads:
    t.join()
bad = []
for i, c in enumerate(st):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            w = talk(s, s.makefile("rb"), f"GET pkgload{port}_c{i}\n").split()
        if c["count"] is not None and w[-1:] != [str(c["count"])]:
            bad.append(f"c{i}: {w}, the last reply said {c['count']}")
    except (OSError, ValueError) as e:
        bad.append(f"c{i}: {e!r}")
print(json.dumps(dict(sent=sum(c["sent"] for c in st), ok=sum(c["ok"] for c in st),
                      failed=sum(c["failed"] for c in st), last=[c["last"] for c in st if c["last"]],
                      final_counts_wrong=bad)), flush=True)
"""


def container_port():
    """A port free in the container's network namespace (bound to 0 there,
    read, closed), or None."""
    rc, out, err = cx("python3", "-c", "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); "
                      "print(s.getsockname()[1])")
    return int(out) if rc == 0 and out.strip().isdigit() else None


def kv_release(vsn, port):
    """Release vsn: application svc as release 2 has it (its process kept
    by the upgrade to it) and the kvcounter example (its host links the
    runtime statically), listening on port through a socket reld holds.
    Its path inside the container."""
    src = os.path.join(A.work, f"src{vsn}")
    os.makedirs(os.path.join(src, "releases", vsn))
    with open(os.path.join(src, "releases", vsn, "release.yaml"), "w") as f:
        f.write(f'release: plain\nvsn: "{vsn}"\napplications:\n  - {{name: svc, vsn: "2"}}\n'
                '  - {name: kvcounter, vsn: "1.0.0"}\n')
    shutil.copytree(os.path.join(A.work, "src2", "lib", "svc-2"), os.path.join(src, "lib", "svc-2"))
    kv = os.path.join(src, "lib", "kvcounter-1.0.0")
    shutil.copytree(os.path.join(A.kvroot, "lib", "kvcounter-1.0.0"), kv)
    with open(os.path.join(kv, "app.yaml")) as f:
        text = f.read()
    text = text.replace("127.0.0.1:17411", f"127.0.0.1:{port}").replace(
        "    shutdown_ms: 2000\n", "    shutdown_ms: 2000\n    health: {runtime: true, interval_ms: 100}\n")
    with open(os.path.join(kv, "app.yaml"), "w") as f:
        f.write(text)
    tar_release(src, os.path.join(A.work, f"plain-{vsn}.tar"))
    return f"{IN}/plain-{vsn}.tar"


def higher_version(debs):
    """The built packages again under a higher version (VERSION+e2e1): the
    same binaries, repacked (dpkg-deb -R, Version: and the exact
    dependencies between them bumped, dpkg-deb -b), so that dpkg -i is a
    true upgrade: the old prerm upgrade NEW, the new postinst configure
    OLD. (old version, new version, the new .debs), or raises."""
    out, old, new = [], None, None
    for deb in debs:
        tree = os.path.join(A.work, "repack")
        subprocess.run(["dpkg-deb", "-R", deb, tree], check=True, capture_output=True, timeout=60)
        control = os.path.join(tree, "DEBIAN", "control")
        with open(control) as f:
            text = f.read()
        old = re.search(r"^Version: (\S+)$", text, re.M).group(1)
        new = f"{old}+e2e1"
        text = re.sub(r"^Version: \S+$", f"Version: {new}", text, flags=re.M).replace(f"(= {old})", f"(= {new})")
        with open(control, "w") as f:
            f.write(text)
        name = os.path.basename(deb).split("_")
        path = os.path.join(A.work, "upgrade", "_".join([name[0], new] + name[2:]))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        subprocess.run(["dpkg-deb", "-Zgzip", "-z1", "-b", tree, path], check=True, capture_output=True, timeout=120)
        shutil.rmtree(tree)
        out.append(path)
    return old, new, out


def upgrade_keeps(debs):
    """Returns the check run before `systemctl stop`: a package upgrade
    under load. reld runs the kvcounter service (its listening socket held
    by reld) and svc's process; a client drives the service on the
    container's loopback through the whole `dpkg -i` of the same packages
    under a higher version. Nothing may fail, reld keeps its MainPID (the
    postinst re-executes it in place) and its processes their pids."""
    def check(S):
        try:
            old, new, upgrade = higher_version(debs)
        except (subprocess.CalledProcessError, OSError, AttributeError) as e:
            d.tap(False, "the packages repacked under a higher version", e)
            return
        port = container_port()
        rc, out, err = cx("relctl", "install", "--min-healthy", "100", kv_release("4", port), timeout=60)
        kv = wait_for(lambda: running("kvcounter", "1.0.0"))
        d.tap(port and rc == 0 and kv, f"release 4: svc kept, the kvcounter service added, on port {port} "
              f"(free-picked in the container), its socket held by reld (pid {kv and kv[0]['pid']})", out + err)
        if not kv:
            return
        load = subprocess.Popen(["nsenter", "-t", str(C.leader), "-n", "--", sys.executable, "-c", LOAD, str(port),
                                 "4", "400"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            said = load.stdout.readline().strip()
            before = show("MainPID", "NRestarts")
            pids = sorted(p["pid"] for p in status()["processes"] if p.get("pid"))
            reexecs = len([m for m in messages("-u", "reld", "-t", "reld") if m.startswith("re-executed in")])
            names = [f"{IN}/upgrade/{os.path.basename(x)}" for x in upgrade]
            load.stdin.write("mark\n")
            load.stdin.flush()
            sent0 = load.stdout.readline().strip()
            t0 = time.monotonic()
            rc, out, err = cx("dpkg", "-i", *names, timeout=120)
            took = time.monotonic() - t0
            load.stdin.write("mark\n")
            load.stdin.flush()
            sent1 = load.stdout.readline().strip()
            during = int(sent1) - int(sent0) if sent0.isdigit() and sent1.isdigit() else None
            time.sleep(1)  # and a second after it: what the new reld does once ready
        finally:
            try:
                lout, lerr = load.communicate("", timeout=30)
            except subprocess.TimeoutExpired:
                load.kill()
                lout, lerr = load.communicate()
        try:
            res = json.loads(lout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            res = {}
        after = show("MainPID", "NRestarts", "ActiveState")
        now = sorted(p["pid"] for p in status()["processes"] if p.get("pid"))
        rc2, vsn, _ = cx("dpkg-query", "-W", "-f=${Version}", "reld")
        d.tap(rc == 0 and f"over ({old})" in out and vsn == new,
              f"dpkg -i of reld, libreld-runtime0, libreld-runtime-dev {new} over {old} (the same binaries under a "
              f"higher version: prerm upgrade, postinst configure {old}) in {took:.2f} s", f"rc {rc}\n{out}\n{err}")
        lines = [m for m in messages("-u", "reld", "-t", "reld") if m.startswith("re-executed in")][reexecs:]
        ms = re.match(r"re-executed in ([\d.]+) ms \(pid (\d+)\)", lines[0]) if len(lines) == 1 else None
        rc3, exe, _ = cx("readlink", f"/proc/{before.get('MainPID')}/exe")
        d.tap(ms and ms.group(2) == before.get("MainPID") and exe.strip() == "/usr/sbin/reld",
              f"the postinst re-executed reld once, in place: 're-executed in {ms and ms.group(1)} ms' "
              f"(request to ready), its exe the new /usr/sbin/reld ({exe.strip()})", (lines, exe))
        d.tap(after.get("MainPID") == before.get("MainPID") and after.get("NRestarts") == "0" and
              after.get("ActiveState") == "active" and pids and now == pids and all(alive_in(p) for p in pids),
              f"reld kept (MainPID {after.get('MainPID')}, NRestarts 0), its processes kept (pids {now})",
              f"before {before} {pids}\nafter {after} {now}")
        d.tap(said == "started" and during and res.get("failed") == 0 and
              not res.get("final_counts_wrong"),
              f"under load through the whole dpkg -i and a second after: {res.get('failed')} failed of "
              f"{res.get('sent')} requests ({during} during dpkg -i), every count right",
              f"{said}\n{res}\n{lerr[-1500:]}")
        said_pi = [line for line in (out + err).splitlines() if line.startswith("reld:") or "re-exec" in line]
        print(f"# package upgrade under load: dpkg -i {took:.2f} s, {res.get('failed')} failed of "
              f"{res.get('sent')} requests ({during} during dpkg -i; 400/s on 4 connections), MainPID {after.get('MainPID')} kept, "
              f"NRestarts {after.get('NRestarts')}, pids {now} kept, reld re-exec {ms and ms.group(1)} ms "
              f"(request to ready); postinst: {' / '.join(said_pi) or 'nothing said'}")
    return check


def purge_checks():
    """dpkg --purge leaves nothing but what Debian keeps (the system group)."""
    files = {pkg: files_of(pkg) for pkg in PACKAGES}
    cx("rm", "-rf", "/etc/systemd/system/reld.service.d", "/run/reld-e2e-exits")  # the test's own
    rc, out, err = cx("dpkg", "--purge", *PACKAGES, timeout=120)
    left = [f for fs in files.values() for f in fs]
    rc2, out2, _ = cx("sh", "-c", "for f in " + " ".join(left + ["/etc/reld", "/var/lib/reld", "/run/reld",
                                                                   "/etc/systemd/system/multi-user.target.wants/"
                                                                   "reld.service"]) +
                      '; do [ -e "$f" ] || [ -L "$f" ] && echo "$f"; done; exit 0')
    rc3, st, _ = cx("dpkg-query", "-W", "-f=${Status}\\n", *PACKAGES)
    rc4, grp, _ = cx("getent", "group", "reld")
    rc5, en, _ = cx("systemctl", "is-enabled", "reld")
    d.tap(rc == 0 and left and not out2.split() and "install ok installed" not in st and
          en.strip() in ("", "not-found") and rc4 == 0,
          f"dpkg --purge: none of the {len(left)} files, no /etc/reld, /var/lib/reld, /run/reld, no unit link "
          f"(is-enabled: {en.strip() or rc5}); the system group reld stays, as Debian keeps them",
          f"rc {rc} {err[-800:]}\nleft: {out2.split()}\nstatus: {st}")


def main():
    global A
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True, help="the meson build directory to install from")
    ap.add_argument("--package", help="a source tree with debian/: test reld as its Debian package installs it")
    ap.add_argument("--kvroot", help="the kvcounter example's root (--package: the service under load)")
    A = ap.parse_args()
    if A.package and not A.kvroot:
        ap.error("--package needs --kvroot (the service kept under load through the upgrade)")
    A.build = os.path.abspath(A.build)
    if A.package:
        return main_package()
    print("TAP version 13")
    reason = why_not()
    if reason:
        for c in CHECKS:
            d.skip(c, reason)
        print(f"1..{d.N}")
        return 0
    A.work = tempfile.mkdtemp(prefix="reld-systemd-")
    guard(path=A.work)
    atexit.register(C.kill)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # a timeout: still kill the container
    t_all = time.monotonic()
    try:
        try:
            dest, prefix, found = install()
        except Exception as e:  # noqa: BLE001
            d.tap(False, "meson install --destdir of the build", e)
            print(f"1..{d.N}")
            return 1
        if prefix in ("/", "/usr") or not os.path.isdir(dest + prefix):
            for c in CHECKS:
                d.skip(c, f"the build's prefix is {prefix}: the container can take only a prefix of its own "
                          "such as /usr/local")
            print(f"1..{d.N}")
            return 0
        reason = boot(dest, prefix)
        if reason:
            for c in CHECKS:
                d.skip(c, f"systemd-nspawn cannot boot a container here: {reason}"[:400].replace("\n", " "))
            print(f"1..{d.N}")
            return 0
        print(f"# container booted in {time.monotonic() - t_all:.1f} s (leader pid {C.leader})")
        rc, out, err = put_in_place(found, prefix)
        d.tap(rc == 0, f"installed in the container: {prefix}/sbin/reld, /etc/systemd/system/reld.service "
              "(+ drop-in WatchdogSec=2s), /etc/tmpfiles.d/reld.conf; daemon-reload", out + err)
        if rc == 0:
            try:
                run_checks()
            except Exception:  # noqa: BLE001
                d.tap(False, "the checks crashed", traceback.format_exc())
                print("\n".join(f"# {m}" for m in messages("-u", "reld")[-20:]))
    finally:
        C.kill()
        shutil.rmtree(A.work, ignore_errors=True)
    print(f"# total {time.monotonic() - t_all:.1f} s")
    print(f"1..{d.N}")
    return 1 if d.FAILED else 0


def main_package():
    """--package: the checks on the installed Debian package."""
    A.package = os.path.abspath(A.package)
    print("TAP version 13")
    reason = why_not() or package_why_not()
    if reason:
        d.skip("the Debian package: build, install, service checks, upgrade, purge", reason)
        print(f"1..{d.N}")
        return 0
    A.work = tempfile.mkdtemp(prefix="reld-package-")
    guard(path=A.work)
    atexit.register(C.kill)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    t_all = time.monotonic()
    try:
        try:
            debs, took = build_debs()
        except Exception as e:  # noqa: BLE001
            d.tap(False, "dpkg-buildpackage -us -uc -b of a copy of the source", e)
            print(f"1..{d.N}")
            return 1
        d.tap(len(debs) == len(PACKAGES), f"dpkg-buildpackage -us -uc -b (nocheck) in {took:.1f} s: "
              + ", ".join(os.path.basename(x) for x in debs), debs)
        if shutil.which("lintian"):
            changes = [os.path.join(A.work, f) for f in os.listdir(A.work) if f.endswith(".changes")]
            p = subprocess.run(["lintian", "--fail-on", "error,warning", *changes], capture_output=True, text=True,
                               timeout=300, stdin=subprocess.DEVNULL)
            tags = [line for line in p.stdout.splitlines() if re.match(r"[EWIPX]: ", line)]
            d.tap(p.returncode == 0 and not [t for t in tags if t[0] in "EW"],
                  f"lintian: no error, no warning ({len(tags)} other tags)", p.stdout + p.stderr)
            for t in tags:
                print(f"# lintian {t}")
        else:
            d.skip("lintian: no error, no warning", "no lintian (scripts/install-deps test installs it)")
        reason = boot(None, None)
        if reason:
            d.skip("the package in a container", f"systemd-nspawn cannot boot a container here: {reason}"[:400]
                   .replace("\n", " "))
            print(f"1..{d.N}")
            return 0
        print(f"# container booted on an overlay of / (leader pid {C.leader})")
        rc, out, err = install_package(debs)
        package_checks(debs, rc, out, err)
        if rc == 0:
            try:
                run_checks(before_stop=upgrade_keeps(debs))
                purge_checks()
            except Exception:  # noqa: BLE001
                d.tap(False, "the checks crashed", traceback.format_exc())
                print("\n".join(f"# {m}" for m in messages("-u", "reld")[-20:]))
    finally:
        C.kill()
        shutil.rmtree(A.work, ignore_errors=True)
    print(f"# total {time.monotonic() - t_all:.1f} s")
    print(f"1..{d.N}")
    return 1 if d.FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
