#!/usr/bin/env python3
"""End to end: a fleet (issue 15). Four nodes on this machine, each its own
reld with its own root and socket running the kvcounter example under load,
reached over the real OpenSSH (Debian's sshd on loopback, its own host key
and config in a temporary directory: the machine's own sshd is not touched)
as distinct hosts - one sshd listening on one port per node, whose `Match
LocalPort` sets that node's RELD_SOCKET (docs/fleet.md "Testing"). Prints TAP.

- relctl -H [USER@]HOST[:PORT]: the same output, --json and exit status as
  locally; a tarball streamed over the connection (a file, standard input);
  --socket forwarded and $RELD_SOCKET not; quoting; an unreachable host
  (exit 5, one line); pack refused;
- the Ansible collection (contrib/ansible) built and installed with
  ansible-galaxy, its documentation read by ansible-doc, and its rolling
  playbook run by the real ansible-playbook:
  an unreachable node at the start stops the play before any node is
  touched; a release unhealthy on the canary: the canary goes back by
  itself, the play stops, no other node is touched, the result says why; a
  good release node by node (one canary, then batches), with the drain
  hooks around each node, every node on it and permanent, 0 failed
  requests; the same play again changes nothing; a release that fails on
  the third node (serial 1): the first two go back when the playbook asks
  for it, else stay on it, the fourth is untouched; an unreachable node
  with max_unreachable 25 %: reported, and the others go on.

Skips, with a line, only where sshd or ansible-playbook cannot run.

Usage: fleet.py --reld PATH --relctl PATH --kvroot KVCOUNTER_ROOT --collection contrib/ansible
"""
import argparse
import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import daemon as d  # noqa: E402  (Reld, tap, skip)
import supervise  # noqa: E402  (wait_for)

sys.path.insert(0, os.path.join(HERE, "..", "runtime"))
from hotcode import free_port, request  # noqa: E402

A = None
NODES = 4
SSHD = "/usr/sbin/sshd"
CONFIG = "min_healthy_ms: 100\nhealth_timeout_ms: 3000\ntrusted_keys: DIR/trusted.d\nrevoked_keys: DIR/revoked.d\n"
TCP = '    health: {tcp: "127.0.0.1:PORT", interval_ms: 100}\n'
RUNTIME = "    health: {runtime: true, interval_ms: 100}\n"
# Release 3's own check: the node is sick while the file $FLEET_NODE/sick
# exists (reld's environment; each node's reld has its own).
SICK = ("    health:\n      - {runtime: true, interval_ms: 100}\n"
        "      - exec: [/bin/sh, -c, 'if [ -e \"$FLEET_NODE/sick\" ]; then echo \"$FLEET_NODE/sick exists\"; "
        "exit 1; fi']\n        interval_ms: 100\n")


def wait_for(pred, timeout=20.0):
    return supervise.wait_for(pred, timeout)  # its poll, this suite's default bound


# ---- the nodes -------------------------------------------------------------------------------------


class Node:
    """One machine of the fleet: its directory, its reld (own root and
    socket), the port of its kvcounter, its ssh port and its tarballs."""

    def __init__(self, work, i, key):
        self.name = f"node{i}"
        self.dir = os.path.join(work, self.name)
        os.makedirs(self.dir)
        self.kv_port = free_port()
        self.ssh_port = None
        self.tarballs = {v: self.tarball(v, key) for v in ("1", "2", "2.7", "3")}
        # Every node requires releases signed by the fleet's key: each
        # install below streams the signature with the tarball.
        for sub in ("trusted.d", "revoked.d"):
            os.makedirs(os.path.join(self.dir, sub))
        shutil.copy(key + ".pub", os.path.join(self.dir, "trusted.d", "fleet.pub"))
        os.environ["FLEET_NODE"] = self.dir  # reld's environment, which its exec checks get
        self.reld = d.Reld(self.dir, config=CONFIG.replace("DIR", self.dir))
        del os.environ["FLEET_NODE"]
        self.sock = self.reld.sock

    def tarball(self, vsn, key):
        """Release vsn of the kvcounter example for this node, signed by key
        (FILE.minisig beside it): its port, a health check, kv_server 2sick
        for 2.7 (always unhealthy)."""
        base, app_vsn, module, health = {
            "1": ("1.0.0", "1.0.0", None, TCP), "2": ("2.0.0", "2.0.0", None, TCP),
            "2.7": ("2.0.0", "2.7.0", "2sick", RUNTIME), "3": ("3.0.0", "3.0.0", None, SICK)}[vsn]
        src = os.path.join(self.dir, f"src-{vsn}")
        app_dir = os.path.join(src, "lib", f"kvcounter-{app_vsn}")
        shutil.copytree(os.path.join(A.kvroot, "lib", f"kvcounter-{base}"), app_dir)
        y = os.path.join(app_dir, "app.yaml")
        text = open(y).read().replace(f'vsn: "{base}"', f'vsn: "{app_vsn}"')
        text = text.replace("127.0.0.1:17411", f"127.0.0.1:{self.kv_port}")
        text = text.replace("    shutdown_ms: 2000\n", "    shutdown_ms: 2000\n" + health.replace("PORT", str(self.kv_port)))
        open(y, "w").write(text)
        if module:
            shutil.copy(os.path.join(os.path.dirname(A.kvroot), f"kv_server-{module}.so"),
                        os.path.join(app_dir, "modules", "kv_server.so"))
        os.makedirs(os.path.join(src, "releases", vsn))
        with open(os.path.join(src, "releases", vsn, "release.yaml"), "w") as f:
            f.write(f'release: kv\nvsn: "{vsn}"\napplications:\n  - {{name: kvcounter, vsn: "{app_vsn}"}}\n')
        path = os.path.join(self.dir, f"kv-{vsn}.tar.gz")
        with tarfile.open(path, "w:gz") as t:
            t.add(os.path.join(src, "releases"), "releases")
            t.add(os.path.join(src, "lib"), "lib")
        p = subprocess.run(["minisign", "-S", "-s", key + ".sec", "-m", path, "-t", f"reld release=kv vsn={vsn}"],
                           capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
        if p.returncode != 0:
            raise RuntimeError(f"minisign -S {path}: {p.stderr.decode(errors='replace')}")
        return path

    def status(self):
        rc, out, err = self.reld.relctl("status", "--json")
        return json.loads(out) if rc == 0 else {}

    def state(self):
        """(running, permanent, the code the service runs, the releases reld knows)."""
        st = self.status()
        try:
            code = request(self.kv_port, "VERSION")
        except OSError as e:
            code = f"unreachable: {e}"
        return (st.get("running"), st.get("permanent"), code, sorted(r["vsn"] for r in st.get("releases") or []))

    def touched(self):
        """The node's history: every event and attempt, to tell it was not touched."""
        rc, out, err = self.reld.relctl("history", "--json", "--limit", "1000")
        h = json.loads(out) if rc == 0 else {}
        return len(h.get("events") or []), len(h.get("attempts") or [])


class Load:
    """Requests to one node's service while the fleet changes: two
    connections, each an INCR of its own keys every 20 ms whose reply must
    carry the count it expects. A request fails when its connection is
    refused or reset, its reply does not come within 2 s, or it is wrong."""

    def __init__(self, node):
        self.node, self.ok, self.failed, self.errors = node, 0, 0, []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.conn, args=(c,), daemon=True) for c in range(2)]
        for t in self.threads:
            t.start()

    def conn(self, c):
        counts, s, buf, k = {}, None, b"", 0
        while not self.stop.is_set():
            key = f"load_{c}_{k % 8}"
            k += 1
            try:
                if s is None:
                    s = socket.create_connection(("127.0.0.1", self.node.kv_port), timeout=2)
                    buf = b""
                s.sendall(f"INCR {key}\n".encode())
                while b"\n" not in buf:
                    chunk = s.recv(4096)
                    if not chunk:
                        raise OSError("connection closed")
                    buf += chunk
                line, buf = buf.split(b"\n", 1)
                want = counts.get(key, 0) + 1
                if line.decode() != f"OK {key} {want}":
                    raise OSError(f"wrong reply {line!r}, want {want}")
                counts[key] = want
                with self.lock:
                    self.ok += 1
            except OSError as e:
                with self.lock:
                    self.failed += 1
                    self.errors.append(f"{self.node.name}: {e}")
                if s is not None:
                    s.close()
                s = None
                time.sleep(0.05)
            self.stop.wait(0.02)
        if s is not None:
            s.close()

    def counts(self):
        with self.lock:
            return self.ok, self.failed

    def end(self):
        self.stop.set()
        for t in self.threads:
            t.join(10)


# ---- ssh -------------------------------------------------------------------------------------------


class Sshd:
    """Debian's sshd on 127.0.0.1, one port per node, with its own host key,
    config and authorized key in work; `Match LocalPort` gives each port
    its node's RELD_SOCKET and a PATH with the relctl under test."""

    def __init__(self, work, nodes, relctl_dir):
        self.work, self.p = work, None
        self.user = getpass.getuser()
        self.key = os.path.join(work, "userkey")
        host_key = os.path.join(work, "hostkey")
        for k in (self.key, host_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", k], check=True)
        shutil.copy(self.key + ".pub", os.path.join(work, "authorized_keys"))
        lines = [f"ListenAddress 127.0.0.1:{n.ssh_port}" for n in nodes]
        lines += [f"HostKey {host_key}", f"PidFile {work}/sshd.pid", f"AuthorizedKeysFile {work}/authorized_keys",
                  "StrictModes no",  # the keys live under /tmp, which is world-writable
                  "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no",
                  "PermitRootLogin prohibit-password", "LogLevel ERROR"]
        for n in nodes:
            lines += [f"Match LocalPort {n.ssh_port}",
                      f"  SetEnv RELD_SOCKET={n.sock} PATH={relctl_dir}:/usr/bin:/bin"]
        self.config = os.path.join(work, "sshd_config")
        open(self.config, "w").write("\n".join(lines) + "\n")
        pub = open(host_key + ".pub").read().strip()
        self.known_hosts = os.path.join(work, "known_hosts")
        open(self.known_hosts, "w").write("".join(f"[127.0.0.1]:{n.ssh_port} {pub}\n" for n in nodes))
        # The client side for relctl -H: an ssh_config of its own (no ~/.ssh).
        self.ssh_config = os.path.join(work, "ssh_config")
        open(self.ssh_config, "w").write(
            f"Host *\n  IdentityFile {self.key}\n  IdentitiesOnly yes\n  UserKnownHostsFile {self.known_hosts}\n"
            "  StrictHostKeyChecking yes\n  BatchMode yes\n  LogLevel ERROR\n  ConnectTimeout 10\n")
        self.wrapper = os.path.join(work, "ssh")
        open(self.wrapper, "w").write(f'#!/bin/sh\nexec ssh -F {self.ssh_config} "$@"\n')
        os.chmod(self.wrapper, 0o755)

    def start(self, nodes):
        """None when it listens on every port, else why it cannot."""
        if os.geteuid() == 0 and not os.path.isdir("/run/sshd"):
            os.makedirs("/run/sshd", 0o755)  # sshd's privilege separation directory, as its unit makes it
        self.log = open(os.path.join(self.work, "sshd.log"), "w")
        self.p = subprocess.Popen([SSHD, "-D", "-e", "-f", self.config], stderr=self.log, stdin=subprocess.DEVNULL)

        def listening():
            if self.p.poll() is not None:
                return True
            for n in nodes:
                try:
                    socket.create_connection(("127.0.0.1", n.ssh_port), timeout=1).close()
                except OSError:
                    return False
            return True
        wait_for(listening, 20)
        if self.p.poll() is not None:
            return "sshd exited: " + open(os.path.join(self.work, "sshd.log")).read().strip().replace("\n", " | ")
        return None

    def stop(self):
        if self.p and self.p.poll() is None:
            self.p.terminate()
            self.p.wait(10)


def signature(node, vsn):
    """The signature reld verified release vsn with (releases --json)."""
    rc, out, err = node.reld.relctl("releases", "--json")
    for r in json.loads(out)["releases"] if rc == 0 else []:
        if r["vsn"] == vsn:
            return r.get("signature")
    return None


def relctl_h(sshd, *args, stdin=None, env=None):
    """relctl with -H as a user runs it; $RELCTL_SSH is ssh with the test's own ssh_config."""
    e = dict(os.environ, RELCTL_SSH=sshd.wrapper, **(env or {}))
    e.pop("RELD_SOCKET", None)
    p = subprocess.run([A.relctl, *args], capture_output=True, stdin=stdin if stdin else subprocess.DEVNULL, env=e,
                       timeout=120)
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


# ---- relctl -H ---------------------------------------------------------------------------------------


def test_relctl_h(work, sshd, nodes):
    n1, n2 = nodes[0], nodes[1]
    h1 = f"{sshd.user}@127.0.0.1:{n1.ssh_port}"
    rc, out, err = relctl_h(sshd, "-H", h1, "install", "--commit", n1.tarballs["1"])
    d.tap(rc == 0 and out.startswith("unpacked release 1\ninstalled release 1") and "permanent" in out and err == "",
          f"relctl -H USER@HOST:PORT install --commit TARBALL: streamed and installed there: {out.splitlines()[-1]}",
          f"{rc} {out} {err}")
    d.tap(n1.state()[:2] == ("1", "1") and wait_for(lambda: n1.state()[2] == "OK kv_server 1") and
          (signature(n1, "1") or {}).get("trusted_comment") == "reld release=kv vsn=1",
          "node1's own reld runs it, permanent, verified with the signature sent before the tarball",
          f"{n1.state()} {signature(n1, '1')}")
    # The other nodes: standard input through -H, the signature named by
    # --signature, or the stream itself as reld reads it (signature, tarball).
    ok, outs = True, []
    for k, n in enumerate(nodes[1:]):
        tar = n.tarballs["1"]
        if k == 0:
            stream = open(tar, "rb")
            args = ["--signature", tar + ".minisig", "-"]
        else:
            stream = open(os.path.join(work, f"stream-{n.name}"), "wb+")
            stream.write(open(tar + ".minisig", "rb").read() + open(tar, "rb").read())
            stream.seek(0)
            args = ["-"]
        rc, out, err = relctl_h(sshd, "-H", f"127.0.0.1:{n.ssh_port}", "install", "--commit", *args, stdin=stream)
        stream.close()
        outs.append(f"{rc} {out} {err}")
        ok = ok and rc == 0 and "installed release 1" in out
    d.tap(ok and all(n.state()[:2] == ("1", "1") for n in nodes) and
          all((signature(n, "1") or {}).get("trusted_comment") == "reld release=kv vsn=1" for n in nodes),
          "-H install --signature SIG - < TARBALL, and cat SIG TARBALL | -H install -: node2-4 on release 1, verified",
          f"{[n.state() for n in nodes]} {outs}")
    wait_for(lambda: all(n.state()[2] == "OK kv_server 1" for n in nodes))
    rc, out, err = relctl_h(sshd, "-H", f"127.0.0.1:{n2.ssh_port}", "status", "--json")
    # What does not change between two calls (uptimes, figures and health checks do).
    def stable(st):
        return ({k: st.get(k) for k in ("root", "running", "current", "permanent", "releases")},
                [{k: p.get(k) for k in ("app", "process", "pid", "state", "modules")} for p in st.get("processes", [])])
    local = stable(n2.status())
    remote = stable(json.loads(out)) if rc == 0 else ({}, [])
    d.tap(rc == 0 and remote == local and remote[0]["root"] == n2.reld.root and remote[1][0]["pid"] > 0,
          "status --json over -H is the node's own (its root, its processes)", f"{rc} {err} {remote} {local}")
    rc, out, err = relctl_h(sshd, "-H", f"127.0.0.1:{n2.ssh_port}", "upgrade", "9.9")
    lrc, lout, lerr = n2.reld.relctl("upgrade", "9.9")
    d.tap(rc == lrc == 1 and err == lerr and out == lout, f"a refusal: the same exit status ({rc}) and line as locally",
          f"{rc} {out} {err} / {lrc} {lout} {lerr}")
    rc, out, err = relctl_h(sshd, "-H", f"127.0.0.1:{n2.ssh_port}", "frobnicate")
    d.tap(rc == 2 and "unknown command 'frobnicate'" in err, "a usage error there: exit 2", f"{rc} {err}")
    rc, out, err = relctl_h(sshd, "--socket", "/nonexistent/reld.sock", "-H", f"127.0.0.1:{n2.ssh_port}", "status",
                            env={"RELD_SOCKET": n1.sock})
    d.tap(rc == 1 and "cannot reach reld at /nonexistent/reld.sock" in err,
          "--socket goes along (a path on the remote machine)", f"{rc} {err}")
    e = dict(os.environ, RELCTL_SSH=sshd.wrapper, RELD_SOCKET="/nonexistent/local.sock")
    p = subprocess.run([A.relctl, "-H", f"127.0.0.1:{n2.ssh_port}", "status", "--json"], capture_output=True,
                       env=e, stdin=subprocess.DEVNULL, timeout=60)
    d.tap(p.returncode == 0 and json.loads(p.stdout)["root"] == n2.reld.root,
          "$RELD_SOCKET here is not sent: the remote default (its login environment's) is used", p.stderr)
    arg = "x'$(echo A)`echo B`; echo PWNED >&2; echo '"
    rc, out, err = relctl_h(sshd, "-H", f"127.0.0.1:{n2.ssh_port}", "upgrade", arg)
    d.tap(rc == 2 and f"'{arg}' is not a release version" in err and "PWNED" not in err.splitlines(),
          "an argument with quotes, $( ), backquotes and ; reaches the remote relctl as one argument, untouched",
          f"{rc} {err}")
    dead = free_port()
    t0 = time.monotonic()
    rc, out, err = relctl_h(sshd, "-H", f"127.0.0.1:{dead}", "status")
    took = time.monotonic() - t0
    d.tap(rc == 5 and err.strip().splitlines()[-1] ==
          "relctl: cannot reach 127.0.0.1 over ssh, or the connection was lost (ssh exited 255)",
          f"an unreachable host: exit 5 and one line of relctl's after ssh's ({took:.2f} s)", f"{rc} {err}")
    rc, out, err = relctl_h(sshd, "-H", f"127.0.0.1:{n2.ssh_port}", "install", os.path.join(work, "nope.tar.gz"))
    d.tap(rc == 2 and "nope.tar.gz: No such file or directory" in err, "a tarball that is not here: said here, exit 2",
          err)
    rc, out, err = relctl_h(sshd, "-H", f"127.0.0.1:{n2.ssh_port}", "pack", work, "-o", "x.tar.gz")
    d.tap(rc == 2 and "pack writes files on this machine" in err, "pack is refused with -H", err)
    unsigned = os.path.join(work, "kv-2-unsigned.tar.gz")
    shutil.copy(n2.tarballs["2"], unsigned)
    rc, out, err = relctl_h(sshd, "-H", f"127.0.0.1:{n2.ssh_port}", "unpack", unsigned)
    d.tap(rc == 1 and "the tarball is not signed" in err and "2" not in n2.state()[3],
          "an unsigned tarball to a node that requires signatures: reld's refusal, exit 1", f"{rc} {err}")
    rc, out, err = relctl_h(sshd, "-H", f"127.0.0.1:{n2.ssh_port}", "unpack", "--signature",
                            n2.tarballs["1"] + ".minisig", n2.tarballs["2"])
    d.tap(rc == 1 and "2" not in n2.state()[3] and "relctl: " in err,
          f"another tarball's signature (--signature): refused there: {err.strip().splitlines()[-1][:100]}",
          f"{rc} {err}")
    bad = os.path.join(work, "bad.minisig")
    open(bad, "w").write("not a signature\n")
    rc, out, err = relctl_h(sshd, "-H", f"127.0.0.1:{n2.ssh_port}", "unpack", "--signature", bad, n2.tarballs["2"])
    d.tap(rc == 1 and "not a minisign signature" in err and "2" not in n2.state()[3],
          "a signature file that is none: refused here, nothing sent", f"{rc} {err}")


# ---- Ansible -------------------------------------------------------------------------------------------


class Ansible:
    def __init__(self, work, sshd, nodes):
        self.work, self.sshd, self.nodes, self.runs = work, sshd, nodes, 0
        self.dead_port = free_port()  # node5: nothing listens there
        self.env = dict(os.environ)
        self.env.pop("RELD_SOCKET", None)
        for k, v in {"ANSIBLE_CONFIG": os.path.join(work, "ansible.cfg"), "ANSIBLE_HOME": os.path.join(work, "ah"),
                     "ANSIBLE_LOCAL_TEMP": os.path.join(work, "ah", "tmp"),
                     "ANSIBLE_REMOTE_TEMP": os.path.join(work, "ah", "remote-tmp"),  # the hooks run on localhost
                     "ANSIBLE_COLLECTIONS_PATH": os.path.join(work, "collections"),
                     "ANSIBLE_SSH_CONTROL_PATH_DIR": os.path.join(work, "cp"),
                     "ANSIBLE_CALLBACK_PLUGINS": os.path.join(HERE, "fleet-plugins"),
                     "ANSIBLE_CALLBACKS_ENABLED": "reld_record", "ANSIBLE_NOCOLOR": "1",
                     "ANSIBLE_RETRY_FILES_ENABLED": "0", "ANSIBLE_HOST_KEY_CHECKING": "1",
                     "ANSIBLE_DEPRECATION_WARNINGS": "0", "ANSIBLE_LOCALHOST_WARNING": "0",
                     "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
                     # Ansible's default without -C: compressing tarballs on loopback only costs CPU.
                     "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=60s"}.items():
            self.env[k] = v
        open(self.env["ANSIBLE_CONFIG"], "w").write("[defaults]\n")
        common = f"-o UserKnownHostsFile={sshd.known_hosts} -o StrictHostKeyChecking=yes -o BatchMode=yes"
        hosts = "".join(f"        {n.name}: {{ansible_host: 127.0.0.1, ansible_port: {n.ssh_port}}}\n" for n in nodes)
        self.inventory = os.path.join(work, "inventory.yml")
        self.inventory_dead = os.path.join(work, "inventory-dead.yml")
        for path, extra in ((self.inventory, ""),
                            (self.inventory_dead, f"        node5: {{ansible_host: 127.0.0.1, ansible_port: "
                                                  f"{self.dead_port}}}\n")):
            open(path, "w").write(
                "all:\n  children:\n    reld_nodes:\n      hosts:\n" + hosts + extra +
                f"      vars:\n        ansible_user: {sshd.user}\n        ansible_ssh_private_key_file: {sshd.key}\n"
                f"        ansible_ssh_common_args: \"{common}\"\n")

    def install(self):
        """The collection as a user gets it: ansible-galaxy collection build, then install."""
        dist = os.path.join(self.work, "dist")
        b = subprocess.run(["ansible-galaxy", "collection", "build", A.collection, "--output-path", dist],
                           capture_output=True, text=True, env=self.env, timeout=120)
        built = [f for f in os.listdir(dist) if f.endswith(".tar.gz")] if os.path.isdir(dist) else []
        i = subprocess.run(["ansible-galaxy", "collection", "install", "--offline", "-p",
                            self.env["ANSIBLE_COLLECTIONS_PATH"], os.path.join(dist, built[0]) if built else "-"],
                           capture_output=True, text=True, env=self.env, timeout=120)
        return b.returncode == 0 and i.returncode == 0 and built, b.stdout + b.stderr + i.stdout + i.stderr

    def play(self, extra, inventory=None):
        """ansible-playbook reld.fleet.rolling: (exit status, the records, seconds)."""
        return self.run([inventory or self.inventory, "reld.fleet.rolling", "-e", json.dumps(extra)])

    def playbook(self, text):
        """A playbook of the test's own, on the four nodes."""
        path = os.path.join(self.work, f"play-{self.runs + 1}.yml")
        open(path, "w").write(text)
        return self.run([self.inventory, path])

    def run(self, args):
        self.runs += 1
        record = os.path.join(self.work, f"record-{self.runs}.ndjson")
        env = dict(self.env, RELD_RECORD=record)
        t0 = time.monotonic()
        p = subprocess.run(["ansible-playbook", "-i", *args], capture_output=True, text=True, env=env, timeout=300,
                           stdin=subprocess.DEVNULL)
        took = time.monotonic() - t0
        open(os.path.join(self.work, f"play-{self.runs}.log"), "w").write(p.stdout + p.stderr)
        recs = [json.loads(line) for line in open(record)] if os.path.exists(record) else []
        return p.returncode, Records(recs, p.stdout + p.stderr), took


CHECK_PLAY = """
- hosts: reld_nodes
  gather_facts: false
  tasks:
    - name: Dry run of going back to 2
      reld.fleet.release:
        version: "2"
      check_mode: true
    - name: Dry run of a tarball not unpacked on the node
      reld.fleet.release:
        src: "FLEET/{{ inventory_hostname }}/kv-2.7.tar.gz"
      check_mode: true
      when: inventory_hostname == "node2"
    - name: Release 2 on node1, not permanent
      reld.fleet.release:
        version: "2"
        commit: false
      when: inventory_hostname == "node1"
    - name: Read the releases
      reld.fleet.release_facts:
"""


class Records:
    def __init__(self, recs, log):
        self.recs, self.log = recs, log

    def results(self, task, kind=None):
        return [r for r in self.recs if r.get("task") == task and (kind is None or r["kind"] == kind)]

    def release(self, host):
        """The result of the release task on host (None when it did not run)."""
        for r in self.results("Install, wait for health, commit"):
            if r["host"] == host:
                return r
        return None

    def stats(self):
        for r in self.recs:
            if r["kind"] == "stats":
                return r["hosts"]
        return {}

    def order(self, task):
        return [r["host"] for r in self.results(task) if r["kind"] != "skipped"]

    def __str__(self):
        return self.log[-3000:]


def src_vars(fleet, vsn, **more):
    v = {"reld_release_src": f"{fleet}/{{{{ inventory_hostname }}}}/kv-{vsn}.tar.gz",
         "reld_health_timeout_ms": 2000}
    v.update(more)
    return v


def test_ansible(work, sshd, nodes):
    if not shutil.which("ansible-playbook"):
        d.skip("the Ansible collection", "ansible-playbook is not installed (Debian's ansible-core)")
        return
    an = Ansible(work, sshd, nodes)
    ok, log = an.install()
    d.tap(ok, "ansible-galaxy collection build contrib/ansible, then install: reld.fleet", log)
    if not ok:
        return
    p = subprocess.run(["ansible-doc", "reld.fleet.release", "reld.fleet.release_facts"], capture_output=True,
                       text=True, env=an.env, timeout=120)
    d.tap(p.returncode == 0 and "rolled_back" in p.stdout and "ansible_facts" in p.stdout and
          "EXAMPLES" in p.stdout and "RETURN VALUES" in p.stdout,
          "ansible-doc reads both modules' documentation, examples and return values", p.stdout[-2000:] + p.stderr)
    loads = [Load(n) for n in nodes]
    names = [n.name for n in nodes]
    wait_for(lambda: all(ld.counts()[0] > 5 for ld in loads))

    def failed_requests():
        return sum(ld.counts()[1] for ld in loads)

    def scenario_load(before, what):
        f = failed_requests() - before
        oks = sum(ld.counts()[0] for ld in loads)
        d.tap(f == 0, f"{what}: 0 failed requests on every node ({oks} so far)",
              "\n".join(sum((ld.errors[-5:] for ld in loads), [])))

    try:
        # -- an unreachable node at the start, none allowed: nothing is touched.
        before = [n.touched() for n in nodes]
        rc, recs, took = an.play(src_vars(work, "2"), inventory=an.inventory_dead)
        st = recs.stats()
        d.tap(rc != 0 and st.get("node5", {}).get("unreachable") == 1 and recs.release("node1") is None and
              [n.touched() for n in nodes] == before and all(n.state()[:2] == ("1", "1") for n in nodes),
              f"node5 unreachable at the start: reported, the play stops, no node touched (exit {rc}, {took:.1f} s)",
              recs)

        # -- a release unhealthy on the canary: back by itself there, the play stops.
        f0 = failed_requests()
        before = [n.touched() for n in nodes[1:]]
        rc, recs, took = an.play(src_vars(work, "2.7", reld_health_timeout_ms=1500))
        r = recs.release("node1") or {}
        res = r.get("result", {})
        d.tap(rc != 0 and r.get("kind") == "failed" and res.get("outcome") == "rolled_back" and
              "kv_server 2sick is unhealthy on purpose" in res.get("msg", "") and
              all(recs.release(h) is None for h in names[1:]),
              f"2.7 unhealthy on the canary: outcome rolled_back, the reason, the play stops ({took:.1f} s): "
              f"{res.get('msg', '')[:140]}", recs)
        d.tap(nodes[0].state()[:3] == ("1", "1", "OK kv_server 1") and "2.7" in nodes[0].state()[3] and
              [n.touched() for n in nodes[1:]] == before and all("2.7" not in n.state()[3] for n in nodes[1:]),
              "the canary runs release 1 again; no other node was touched (2.7 not even unpacked there)",
              [n.state() for n in nodes])
        fail = recs.results("Stop the roll-out", "failed")
        d.tap(len(fail) == 1 and "outcome rolled_back" in fail[0]["result"].get("msg", "") and
              recs.stats().get("node1", {}).get("failures") == 1,
              "the play's result says why: node1 failed, outcome rolled_back", recs)
        scenario_load(f0, "the canary's rollback")

        # -- a good release, node by node: the whole roll-out, timed.
        f0 = failed_requests()
        hooks = os.path.join(work, "hooks.log")
        hook = os.path.join(work, "hook")
        open(hook, "w").write(f'#!/bin/sh\necho "$1 $2" >> {hooks}\n')
        os.chmod(hook, 0o755)
        rc, recs, took_rollout = an.play(src_vars(work, "2", reld_drain_command=[hook, "drain", "{{ inventory_hostname }}"],
                                                  reld_undrain_command=[hook, "undrain", "{{ inventory_hostname }}"]))
        states = [n.state() for n in nodes]
        d.tap(rc == 0 and all(s[:3] == ("2", "2", "OK kv_server 2") for s in states) and
              all((recs.release(h) or {}).get("result", {}).get("outcome") == "committed" for h in names),
              f"release 2 rolled out to 4 nodes in {took_rollout:.1f} s: every node on it, permanent", f"{states} {recs}")
        replies = [(recs.release(h) or {}).get("result", {}).get("reply", {}) for h in names]
        d.tap(all(isinstance(r.get("ms"), (int, float)) and isinstance(r.get("health"), dict) for r in replies),
              "reld's own part per node, upgrade + health gate: " +
              ", ".join(f"{r.get('ms', 0):.1f} + {r.get('health', {}).get('waited_ms', 0)} ms" for r in replies), replies)
        sigs = [(signature(n, "2") or {}).get("trusted_comment") for n in nodes]
        d.tap(sigs == ["reld release=kv vsn=2"] * 4, "each node verified release 2's signature, streamed with it",
              sigs)
        order = recs.order("Install, wait for health, commit")
        lines = open(hooks).read().split("\n") if os.path.exists(hooks) else []
        d.tap(order[:2] == ["node1", "node2"] and sorted(order[2:]) == ["node3", "node4"] and
              lines[:4] == ["drain node1", "undrain node1", "drain node2", "undrain node2"] and
              sorted(lines[4:6]) == ["drain node3", "drain node4"] and
              sorted(lines[6:8]) == ["undrain node3", "undrain node4"],
              "batches [1, 25%, 100%]: node1 (the canary), node2, then node3 and node4; drained before, back after",
              f"{order} {lines}")
        scenario_load(f0, "the roll-out of 2")

        # -- the same play again: nothing changes.
        before = [n.touched() for n in nodes]
        rc, recs, took = an.play(src_vars(work, "2"))
        st = recs.stats()
        d.tap(rc == 0 and all(st.get(h, {}).get("changed") == 0 for h in names) and
              all((recs.release(h) or {}).get("result", {}).get("outcome") == "unchanged" for h in names) and
              [n.touched() for n in nodes] == before,
              f"the same play again: changed=0 on every node, outcome unchanged, nothing recorded ({took:.1f} s)",
              f"{st} {recs}")

        # -- release 3 fails on the third node (serial 1); the playbook takes the first two back.
        f0 = failed_requests()
        open(os.path.join(nodes[2].dir, "sick"), "w").close()
        before4 = nodes[3].touched()
        rc, recs, took = an.play(src_vars(work, "3", reld_serial=1, reld_rollback_on_failure=True))
        r3 = (recs.release("node3") or {}).get("result", {})
        back = recs.results("Take the nodes already done back to their release before", "ok")
        states = [n.state() for n in nodes]
        d.tap(rc != 0 and r3.get("outcome") == "rolled_back" and "sick exists" in r3.get("msg", "") and
              [(recs.release(h) or {}).get("result", {}).get("outcome") for h in names[:2]] == ["committed"] * 2 and
              recs.release("node4") is None,
              f"3 unhealthy on node3: node1 and node2 took it, node3 went back by itself ({took:.1f} s): "
              f"{r3.get('msg', '')[:120]}", recs)
        d.tap(len(back) == 1 and [x.get("item") for x in back[0]["result"].get("results", [])] == ["node1", "node2"] and
              all(s[:3] == ("2", "2", "OK kv_server 2") for s in states[:3]) and nodes[3].touched() == before4 and
              states[3][:3] == ("2", "2", "OK kv_server 2"),
              "asked to (reld_rollback_on_failure), the playbook takes node1 and node2 back to 2, permanent; "
              "node4 untouched", f"{states} {back}")
        scenario_load(f0, "a failure on the third node, the first two taken back")

        # -- the same failure, the playbook not asked to go back: the first two stay on 3.
        f0 = failed_requests()
        rc, recs, took = an.play(src_vars(work, "3", reld_serial=1))
        states = [n.state() for n in nodes]
        d.tap(rc != 0 and (recs.release("node3") or {}).get("result", {}).get("outcome") == "rolled_back" and
              [s[:3] for s in states] == [("3", "3", "OK kv_server 3")] * 2 + [("2", "2", "OK kv_server 2")] * 2 and
              recs.release("node4") is None and nodes[3].touched() == before4 and
              recs.results("Take the nodes already done back to their release before", "ok") == [],
              f"not asked to go back: node1 and node2 stay on 3, node3 back on 2, node4 untouched ({took:.1f} s)",
              f"{states} {recs}")
        scenario_load(f0, "a failure on the third node")

        # -- an unreachable node, 25 % allowed: reported, and the others go on.
        f0 = failed_requests()
        os.unlink(os.path.join(nodes[2].dir, "sick"))
        rc, recs, took = an.play(src_vars(work, "3", reld_max_unreachable_percent=25), inventory=an.inventory_dead)
        st = recs.stats()
        states = [n.state() for n in nodes]
        outs = [(recs.release(h) or {}).get("result", {}).get("outcome") for h in names]
        d.tap(st.get("node5", {}).get("unreachable") == 1 and outs == ["unchanged", "unchanged", "committed",
                                                                       "committed"] and
              all(s[:3] == ("3", "3", "OK kv_server 3") for s in states) and recs.release("node5") is None,
              f"node5 unreachable, 25 % allowed: reported (exit {rc}), the four others end on 3 ({took:.1f} s)",
              f"{st} {outs} {states} {recs}")
        scenario_load(f0, "the roll-out past an unreachable node")

        # -- check mode (reld's dry run), commit: false, and the facts module, in one play of the test's own.
        f0 = failed_requests()
        before = [n.touched() for n in nodes]
        rc, recs, took = an.playbook(CHECK_PLAY.replace("FLEET", work))
        dry = recs.results("Dry run of going back to 2")
        d.tap(rc == 0 and len(dry) == 4 and all(r["kind"] == "ok" and r["result"].get("changed") is True and
                                                r["result"].get("outcome") == "dry_run" and
                                                r["result"]["dry_run"].get("to") == "2" for r in dry) and
              [n.touched()[0] for n in nodes[1:]] == [t[0] for t in before[1:]] and
              all(n.state()[:3] == ("3", "3", "OK kv_server 3") for n in nodes[1:]),
              f"check mode is reld's dry run: changed, outcome dry_run, the plan to 2; nothing changed ({took:.1f} s)",
              recs)
        new = recs.results("Dry run of a tarball not unpacked on the node", "ok")
        d.tap(len(new) == 1 and new[0]["result"].get("changed") is True and
              new[0]["result"].get("msg") == "release 2.7 is not on the node: it would be unpacked, then installed" and
              "2.7" not in nodes[1].state()[3],
              "check mode with a tarball not unpacked there: a change, said so, nothing sent", new)
        cur = recs.results("Release 2 on node1, not permanent", "ok")
        facts = recs.results("Read the releases", "ok")
        reld = {r["host"]: r["result"].get("ansible_facts", {}).get("reld", {}) for r in facts}
        d.tap(len(cur) == 1 and cur[0]["result"].get("outcome") == "current" and
              nodes[0].state()[:3] == ("2", "3", "OK kv_server 2") and
              (reld.get("node1", {}).get("running"), reld.get("node1", {}).get("permanent")) == ("2", "3") and
              reld.get("node2", {}).get("running") == "3" and
              reld.get("node1", {}).get("processes", [{}])[0].get("health", {}).get("state") == "healthy" and
              (reld.get("node1", {}).get("last_outcome") or {}).get("outcome") == "current",
              "commit: false leaves node1 on 2, current, 3 permanent; release_facts says so (running, permanent, "
              "processes, last outcome)", f"{reld} {recs}")
        scenario_load(f0, "the dry runs and an upgrade without commit")
        d.tap(all(n.touched()[1] > 0 for n in nodes),
              f"{an.runs} plays; the rolling roll-out of 2 took {took_rollout:.1f} s for 4 nodes")
    finally:
        for ld in loads:
            ld.end()
        # Ansible's ssh masters (ControlPersist) would outlive the test.
        cp = an.env["ANSIBLE_SSH_CONTROL_PATH_DIR"]
        for sock in os.listdir(cp) if os.path.isdir(cp) else []:
            subprocess.run(["ssh", "-o", f"ControlPath={os.path.join(cp, sock)}", "-O", "exit", "fleet"],
                           capture_output=True, timeout=30)


def main():
    global A
    ap = argparse.ArgumentParser()
    ap.add_argument("--reld", required=True)
    ap.add_argument("--relctl", required=True)
    ap.add_argument("--kvroot", required=True)
    ap.add_argument("--collection", required=True)
    A = ap.parse_args()
    d.A = A
    if not shutil.which("minisign"):
        print("1..0 # SKIP minisign is not installed (scripts/install-deps)")
        return 0
    if not os.access(SSHD, os.X_OK) or not shutil.which("ssh"):
        print("1..0 # SKIP sshd or ssh is not installed (Debian's openssh-server, openssh-client)")
        return 0
    work = tempfile.mkdtemp(prefix="reld-fleet-")
    nodes = []
    sshd = None
    try:
        key = os.path.join(work, "fleet")
        subprocess.run(["minisign", "-G", "-W", "-p", key + ".pub", "-s", key + ".sec"], check=True,
                       capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
        for i in range(NODES):
            nodes.append(Node(work, i + 1, key))  # one by one: the finally below stops every reld started
        for n in nodes:
            n.ssh_port = free_port()
        sshd = Sshd(work, nodes, os.path.dirname(os.path.abspath(A.relctl)))
        why = sshd.start(nodes)
        if why:
            print(f"1..0 # SKIP sshd cannot start here: {why}")
            return 0
        test_relctl_h(work, sshd, nodes)
        test_ansible(work, sshd, nodes)
    finally:
        for n in nodes:
            n.reld.stop()
        if sshd:
            sshd.stop()
    print(f"1..{d.N}")
    if d.UNCLEAN:
        print("# reld was not clean:\n# " + "\n# ".join(d.UNCLEAN)[:3000])
        return 1
    if d.FAILED == 0:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"# work directory kept: {work}")
    return 1 if d.FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
