#!/usr/bin/env python3
"""Hostile release tarballs against the real reld and relctl (issue 11,
items 1, 2, 8 and 11, and the per-tarball limits): chains of symlinks in
many shapes, hard links through them, definitions that are such links,
a root-only file that a non-root writer must never see, application
identity by content, concurrent unpacks sharing an application version,
fsync before the release is recorded, and the limits on entries, depth and
bytes. After every refusal the root and its surroundings are as they were.
Prints TAP.

Usage: hostile.py --reld PATH --relctl PATH --shop SHOP_ROOT
"""
import argparse
import hashlib
import io
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from daemon import private_shop  # noqa: E402

A = None
N = 0
FAILED = 0
UNCLEAN = []
USERS, GROUPS = [], []
STARTED = []  # every reld this run started, stopped by its pid at the end of each test

REL1 = ("1.0", ["inventory-1.0.0", "web-1.0.0", "legacy_auth-1.0.0"])
REL2 = ("2.0", ["inventory-1.1.0", "web-2.0.1", "stats-1.0.0"])
WEB = "lib/web-2.0.1"


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


class Reld:
    def __init__(self, work, config=""):
        self.work = work
        self.root = os.path.join(work, "root")
        self.sock = os.path.join(work, "reld.sock")
        self.log_path = os.path.join(work, "reld.log")
        path = os.path.join(work, "reld.yaml")
        with open(path, "w") as f:
            f.write(config)
        self.log = open(self.log_path, "a")
        self.p = subprocess.Popen([A.reld, "--root", self.root, "--socket", self.sock, "--config", path],
                                  stderr=self.log, stdin=subprocess.DEVNULL)
        STARTED.append(self.p)
        for _ in range(500):
            if self.p.poll() is not None:
                break
            try:
                with socket.socket(socket.AF_UNIX) as probe:
                    probe.connect(self.sock)
                break
            except OSError:
                time.sleep(0.01)

    def relctl(self, *args, user=None, relctl=None):
        cmd = [relctl or A.relctl, "--socket", self.sock, *args]
        if user is not None:
            pw = pwd.getpwnam(user)
            cmd = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--"] + cmd
        p = subprocess.run(cmd, capture_output=True, timeout=60, cwd="/", stdin=subprocess.DEVNULL)
        return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")

    def text(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            self.p.wait(10)
            if self.p.returncode != 0:
                UNCLEAN.append(f"reld exited {self.p.returncode} after SIGTERM")
        self.log.close()
        log = self.text()
        if "Sanitizer" in log or "runtime error:" in log:
            UNCLEAN.append(log[log.find("=="):][:6000])


def tree(path):
    """Every path under path with its type, mode, size and link count."""
    out = {}
    for d, dirs, files in os.walk(path):
        for n in dirs + files:
            p = os.path.join(d, n)
            st = os.lstat(p)
            out[os.path.relpath(p, path)] = (stat.S_IFMT(st.st_mode), st.st_mode & 0o7777, st.st_size,
                                            st.st_nlink if not stat.S_ISDIR(st.st_mode) else 0)
    return out


def entry(name, type=tarfile.REGTYPE, data=b"", mode=0o644, linkname=""):
    return (name, type, data, mode, linkname)


def sym(name, target):
    return entry(name, tarfile.SYMTYPE, linkname=target)


def hard(name, target):
    return entry(name, tarfile.LNKTYPE, linkname=target)


def add_entry(t, e):
    name, type, data, mode, linkname = e
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.size = type, mode, linkname, len(data)
    info.mtime = 1700000000
    t.addfile(info, io.BytesIO(data) if type == tarfile.REGTYPE else None)


def release_tar(path, vsn, apps, extra=(), drop=(), before=(), shop=None):
    """A release tarball of the example root; `drop` names paths of it to
    leave out (to be replaced by `extra`), `before` entries go first."""
    shop = shop or A.shop
    with tarfile.open(path, "w") as t:
        for e in before:
            add_entry(t, e)

        def keep(info):
            return None if info.name in drop else info

        t.add(os.path.join(shop, "releases", vsn), f"releases/{vsn}", filter=keep)
        for a in apps:
            t.add(os.path.join(shop, "lib", a), f"lib/{a}", filter=keep)
        for e in extra:
            add_entry(t, e)
    os.chmod(path, 0o644)
    return path


def climb(unit, n, prefix="L"):
    """n links in unit, each looking local as text: the first goes up to
    the top of the archive, each next one a level further up through the
    one before (L2 -> L1/..). Returns the entries and the last link's name."""
    up = "/".join([".."] * (unit.count("/") + 1))
    es = [sym(f"{unit}/{prefix}1", up)]
    for k in range(2, n + 1):
        es.append(sym(f"{unit}/{prefix}{k}", f"{prefix}{k - 1}/.."))
    return es, f"{prefix}{n}"


class Env:
    """One reld, a good release 1.0 in it, the files it must never touch."""

    def __init__(self, work, config="", writer_group=None):
        self.work = work
        os.chmod(work, 0o755)
        self.tars = os.path.join(work, "tars")
        os.makedirs(self.tars)
        os.chmod(self.tars, 0o755)
        self.outside = os.path.join(work, "outside")
        os.makedirs(self.outside)
        with open(os.path.join(self.outside, "victim"), "w") as f:
            f.write("victim\n")
        # A root-only file: what a writer must never see.
        self.secret_dir = os.path.join(work, "secret")  # beside the root; work goes at the end, whatever happens
        os.makedirs(self.secret_dir, mode=0o700)
        os.chmod(self.secret_dir, 0o700)
        self.token = "s" + secrets.token_hex(8)
        self.secret = os.path.join(self.secret_dir, "secret.yaml")
        with open(self.secret, "w") as f:
            f.write(f"{self.token}_db_password: {self.token}\nname: {self.token}\n")
        os.chmod(self.secret, 0o600)
        cfg = config + (f"writer_group: {writer_group}\n" if writer_group else "")
        self.r = Reld(work, cfg)
        self.n = 0
        rc, out, err = self.r.relctl("unpack", release_tar(self.tar(), *REL1))
        tap(rc == 0, "a good release unpacks", err)
        self.snapshot()

    def tar(self):
        self.n += 1
        return os.path.join(self.tars, f"t{self.n}.tar")

    def snapshot(self):
        self.before = (tree(self.r.root), tree(self.outside), tree(self.secret_dir), os.stat("/etc/hostname").st_nlink)

    def unchanged(self):
        now = (tree(self.r.root), tree(self.outside), tree(self.secret_dir), os.stat("/etc/hostname").st_nlink)
        if now == self.before:
            return True, ""
        diff = []
        for a, b, what in zip(self.before[:3], now[:3], ("root", "outside", "secret")):
            for k in sorted(set(a) | set(b)):
                if a.get(k) != b.get(k):
                    diff.append(f"{what}: {k}: {a.get(k)} -> {b.get(k)}")
        if self.before[3] != now[3]:
            diff.append(f"/etc/hostname links {self.before[3]} -> {now[3]}")
        return False, "\n".join(diff[:20])

    def refused(self, name, path, want, user=None, relctl=None):
        """Unpacks path, expecting a refusal whose first line matches want and
        nothing changed. A release accepted all the same (as before the
        fixes) is read as the user would (relup), then removed, so that each
        case stands on its own. Returns what the user saw."""
        rc, out, err = self.r.relctl("unpack", path, user=user, relctl=relctl)
        lines = [l for l in err.splitlines() if l.startswith("relctl: ")]
        same, diff = self.unchanged()
        ok = rc == 1 and len(lines) >= 1 and re.search(want, lines[0]) is not None and same
        tap(ok, f"refused: {name}", f"rc {rc}\n{out}{err}\n{diff}")
        seen = out + err
        m = re.search(r"unpacked release \S+ (\S+)", out)
        if rc == 0 and m:
            seen += "".join(self.r.relctl("relup", "1.0", m.group(1), user=user, relctl=relctl)[1:])
            self.r.relctl("remove", m.group(1))
            self.snapshot()
        return seen

    def stop(self):
        self.r.stop()


OUT_UNIT = r"resolves outside lib/web-2\.0\.1|a loop, or more than 40 links|outside the archive refused"


def test_link_chains(work):
    e = Env(work)
    cases = []
    # Climbing chains: L1 -> ../.. (the archive's top), Lk -> L(k-1)/..:
    # every target lies inside the archive as text.
    for n in (2, 3, 4, 6, 8, 12, 16, 24, 32, 40):
        es, last = climb(WEB, n)
        cases.append((f"a chain of {n} relative links climbing out", es, OUT_UNIT))
    # The same, then a path through the chain (a link into /etc).
    for n in (2, 10, 40):
        es, last = climb(WEB, n)
        cases.append((f"a link through a chain of {n}, then down into etc/", es + [sym(f"{WEB}/etc", f"{last}/etc")],
                      OUT_UNIT))
    # Forward chains ending absolute or climbing: caught at the last link.
    for n in (2, 10, 40):
        es = [sym(f"{WEB}/F{k}", f"F{k + 1}") for k in range(1, n)] + [sym(f"{WEB}/F{n}", "/etc")]
        cases.append((f"a chain of {n} ending in an absolute target", es, r"symlink to '/etc' outside the archive"))
    es = [sym(f"{WEB}/F{k}", f"F{k + 1}") for k in range(1, 5)] + [sym(f"{WEB}/F5", "../../../..")]
    cases.append(("a chain of 5 ending in a climbing target", es, r"outside the archive refused"))
    # Through directories: links in nested directories, each relative to
    # its own, chained through each other.
    for n in (2, 5, 12):
        es = [sym(f"{WEB}/priv/d1/up", "../../../..")]  # -> the archive's top
        for k in range(2, n + 1):
            es.append(sym(f"{WEB}/priv/d{k}/up", f"../d{k - 1}/up/.."))
        cases.append((f"a chain of {n} links through directories", es, OUT_UNIT))
    # A link to a directory of the unit, then out through it.
    cases.append(("out through a link to the unit itself",
                  [sym(f"{WEB}/self", "."), sym(f"{WEB}/out", "self/self/self/../../..")], OUT_UNIT))
    cases.append(("out through a link to a subdirectory",
                  [sym(f"{WEB}/mods", "modules"), sym(f"{WEB}/priv/out", "../mods/../../..")], OUT_UNIT))
    # Inside the archive, outside the unit: units move and go on their own.
    cases.append(("a link into another application of the archive",
                  [sym(f"{WEB}/other", "../inventory-1.1.0/app.yaml")], r"resolves outside lib/web-2\.0\.1"))
    cases.append(("a link from the release directory into lib/",
                  [sym("releases/2.0/lib", "../../lib")], r"resolves outside releases/2\.0"))
    # Loops and chains longer than the kernel follows.
    cases.append(("a loop of two links", [sym(f"{WEB}/a", "b"), sym(f"{WEB}/b", "a")], r"a loop, or more than 40"))
    cases.append(("a loop through a directory link",
                  [sym(f"{WEB}/a", "b/x"), sym(f"{WEB}/b", "a/..")], r"a loop, or more than 40|resolves outside"))
    es = [sym(f"{WEB}/G{k}", f"G{k + 1}") for k in range(1, 46)] + [entry(f"{WEB}/G46", data=b"x")]
    cases.append(("a chain of 45 links to a file inside", es, r"a loop, or more than 40"))
    # Entries written through a link of the archive.
    cases.append(("a file written through a link to the archive's top",
                  [sym(f"{WEB}/top", "../.."), entry(f"{WEB}/top/lib/evil", data=b"x")], r"symlink of the archive"))
    cases.append(("a directory made through a chain",
                  climb(WEB, 3)[0] + [entry(f"{WEB}/L3/evil", tarfile.DIRTYPE, mode=0o755)], r"symlink of the archive"))
    # Links in place of the archive's structure.
    cases.append(("a symlink in place of lib/", [sym("lib", "/")], r"symlink in place of a directory"))
    cases.append(("a symlink in place of an application directory",
                  [sym("lib/extra-1.0", "/etc")], r"symlink in place of a directory"))
    for name, es, want in cases:
        e.refused(name, release_tar(e.tar(), *REL2, extra=es), want)

    # Symlinks first, then the files they would redirect.
    e.refused("the chain first, a file under it after",
              release_tar(e.tar(), *REL2, before=climb(WEB, 4)[0] + [entry(f"{WEB}/L4/x", data=b"x")]),
              r"symlink of the archive|outside")
    e.stop()


def test_hard_links(work):
    e = Env(work)
    hostname = "etc/hostname"
    # L1 is the staging directory, L2 ROOT/tmp, L3 the root, L4 what holds it.
    up = e.r.root.count("/") + 3
    for n, target, what in ((3, "reld.db", "reld's database"), (4, "outside/victim", "a file beside the root"),
                            (up, hostname, "/etc/hostname"), (40, hostname, "/etc/hostname")):
        es, last = climb(WEB, n)
        e.refused(f"a hard link to {what} through a chain of {n}",
                  release_tar(e.tar(), *REL2, extra=es + [hard(f"{WEB}/h", f"{WEB}/{last}/{target}")]),
                  r"hard link to .* refused: only a regular file the archive created")
    secret_rel = e.secret.lstrip("/")
    es, last = climb(WEB, e.r.root.count("/") + 3)
    e.refused("a hard link to a root-only file through a chain",
              release_tar(e.tar(), *REL2, extra=es + [hard(f"{WEB}/h", f"{WEB}/{last}/{secret_rel}")]),
              r"hard link to .* refused")
    es = [sym(f"{WEB}/priv/d1/up", "../../../..")] + [sym(f"{WEB}/priv/d{k}/up", f"../d{k - 1}/up/..")
                                                      for k in range(2, 12)]
    e.refused("a hard link through a chain of directories",
              release_tar(e.tar(), *REL2, extra=es + [hard(f"{WEB}/h", f"{WEB}/priv/d11/up/{hostname}")]),
              r"hard link to .* refused")
    e.refused("a hard link to a symlink of the archive",
              release_tar(e.tar(), *REL2, extra=[sym(f"{WEB}/s", "app.yaml"), hard(f"{WEB}/h", f"{WEB}/s")]),
              r"hard link to .* refused: only a regular file")
    e.refused("a hard link to a directory of the archive",
              release_tar(e.tar(), *REL2, extra=[hard(f"{WEB}/h", f"{WEB}/modules")]),
              r"hard link to .* refused: only a regular file")
    e.refused("a hard link to a file that comes later",
              release_tar(e.tar(), *REL2, before=[hard(f"{WEB}/h", f"{WEB}/priv/later")],
                          extra=[entry(f"{WEB}/priv/later", data=b"x")]),
              r"hard link to .* refused: only a regular file")
    e.refused("a hard link to a file of the root already installed",
              release_tar(e.tar(), *REL2, extra=[hard(f"{WEB}/h", "lib/web-1.0.0/app.yaml")]),
              r"hard link to .* refused: only a regular file")
    e.refused("a hard link out by '..'",
              release_tar(e.tar(), *REL2, extra=[hard(f"{WEB}/h", "../outside/victim")]),
              r"hard link to '../outside/victim' outside the archive refused")
    e.stop()


def user_relctl(work):
    path = os.path.join(work, "relctl")
    shutil.copy(A.relctl, path)
    os.chmod(path, 0o755)
    return path


def make_accounts():
    g = f"rhst{secrets.token_hex(3)}g"
    subprocess.run(["groupadd", "--system", g], check=True, capture_output=True, timeout=30)
    GROUPS.append(g)
    u = f"rhst{secrets.token_hex(3)}u"
    subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell",
                    "/usr/sbin/nologin", "--user-group", "--groups", g, u], check=True, capture_output=True, timeout=30)
    USERS.append(u)
    return g, u


def remove_accounts():
    for u in USERS[:]:
        subprocess.run(["userdel", u], capture_output=True, timeout=30)
        USERS.remove(u)
    for g in GROUPS[:]:
        subprocess.run(["groupdel", g], capture_output=True, timeout=30)
        GROUPS.remove(g)


def test_root_only_file(work):
    if os.geteuid() != 0 or not all(shutil.which(x) for x in ("useradd", "groupadd", "userdel", "groupdel",
                                                                 "setpriv")):
        skip("a non-root writer never sees a root-only file", "needs root, useradd/groupadd and setpriv")
        return
    group, user = make_accounts()
    e = Env(work, writer_group=group)
    relctl = user_relctl(work)
    secret_rel = e.secret.lstrip("/")
    seen = []

    def refused_to_user(name, path, want):
        text = e.refused(name + " (as a non-root writer)", path, want, user=user, relctl=relctl)
        seen.append(text)

    # Links enough to climb from the staging directory to / (more would
    # stay at /, fewer stop short), so that without the fix each reaches it.
    up = e.r.root.count("/") + 3
    es, last = climb(WEB, up)
    refused_to_user("app.yaml a link into a root-only file through a chain",
                    release_tar(e.tar(), *REL2, drop={f"{WEB}/app.yaml"},
                                extra=es + [sym(f"{WEB}/app.yaml", f"{last}/{secret_rel}")]), OUT_UNIT)
    es, last = climb("releases/2.0", up)
    refused_to_user("release.yaml a link into a root-only file through a chain",
                    release_tar(e.tar(), *REL2, drop={"releases/2.0/release.yaml"},
                                extra=es + [sym("releases/2.0/release.yaml", f"{last}/{secret_rel}")]),
                    r"resolves outside releases/2\.0|a loop, or more than 40")
    es, last = climb("releases/2.0", up)
    refused_to_user("relup.yaml a link into a root-only file through a chain",
                    release_tar(e.tar(), *REL2, extra=es + [sym("releases/2.0/relup.yaml", f"{last}/{secret_rel}")]),
                    r"resolves outside releases/2\.0|a loop, or more than 40")
    es, last = climb(f"{WEB}/modules", up)
    refused_to_user("a module a link into a root-only file through a chain of directories",
                    release_tar(e.tar(), *REL2, drop={f"{WEB}/modules/web_handler.so"},
                                extra=es + [sym(f"{WEB}/modules/web_handler.so", f"{last}/{secret_rel}")]),
                    r"resolves outside lib/web-2\.0\.1|a loop, or more than 40")
    es, last = climb(WEB, up)
    refused_to_user("app.yaml a hard link to a root-only file through a chain",
                    release_tar(e.tar(), *REL2, drop={f"{WEB}/app.yaml"},
                                extra=es + [hard(f"{WEB}/app.yaml", f"{WEB}/{last}/{secret_rel}")]),
                    r"hard link to .* refused")
    refused_to_user("app.yaml an absolute link to a root-only file",
                    release_tar(e.tar(), *REL2, drop={f"{WEB}/app.yaml"}, extra=[sym(f"{WEB}/app.yaml", e.secret)]),
                    r"outside the archive refused")
    e.stop()
    log = e.r.text()
    leaked = [t for t in seen if e.token in t]
    tap(not leaked and e.token not in log, "the root-only file's content is in no reply and no log line",
        "\n".join(leaked)[:2000] + log[-1000:])


def test_accepted_links(work):
    """Links that stay inside their unit are fine, and after unpacking no
    path of the release resolves outside it."""
    e = Env(work)
    chain = [sym(f"{WEB}/modules/router.so", "r1")] + \
        [sym(f"{WEB}/modules/r{k}", f"r{k + 1}") for k in range(1, 30)] + \
        [entry(f"{WEB}/modules/r30", data=open(os.path.join(A.shop, WEB, "modules", "router.so"), "rb").read(),
               mode=0o755)]
    extra = chain + [
        sym(f"{WEB}/priv/d1/up", "../../modules"), sym(f"{WEB}/priv/d2/up", "../d1/up/../bin"),
        sym(f"{WEB}/self", "."), sym(f"{WEB}/priv/deep", "../self/self/self/modules/r30"),
        sym(f"{WEB}/priv/dangling", "nothing/here"),
        hard(f"{WEB}/priv/copy", f"{WEB}/modules/web_stats.so"), hard(f"{WEB}/priv/copy2", f"{WEB}/priv/copy"),
        sym("releases/2.0/notes", "release.yaml"),
    ]
    rc, out, err = e.r.relctl("unpack", release_tar(e.tar(), *REL2, drop={f"{WEB}/modules/router.so"},
                                                   extra=extra))
    tap(rc == 0, "links inside their unit (a chain of 30, through directories, hard links) are accepted", err)
    bad = []
    for unit in ["releases/2.0"] + [f"lib/{a}" for a in REL2[1]]:
        top = os.path.realpath(os.path.join(e.r.root, unit))
        for d, dirs, files in os.walk(top):
            for n in dirs + files:
                p = os.path.join(d, n)
                real = os.path.realpath(p)
                if os.path.exists(p) and real != top and not real.startswith(top + "/"):
                    bad.append(f"{os.path.relpath(p, e.r.root)} -> {real}")
    tap(rc == 0 and not bad, "no path of the release resolves outside its directory", "\n".join(bad[:10]))
    st = os.stat(os.path.join(e.r.root, WEB, "priv", "copy2"))
    tap(st.st_nlink == 3, f"hard links of the archive's own file are one file ({st.st_nlink} links)")
    rc, out, err = e.r.relctl("relup", "1.0", "2.0")
    tap(rc == 0, "the release reads through its links (relup 1.0 -> 2.0)", err)
    rc, out, err = e.r.relctl("remove", "2.0")
    tap(rc == 0 and not os.path.exists(os.path.join(e.r.root, WEB)), "and goes again", err)
    e.stop()


def sha_tree(path):
    return {os.path.relpath(os.path.join(d, f), path): hashlib.sha256(open(os.path.join(d, f), "rb").read()).hexdigest()
            for d, _, files in os.walk(path) for f in files}


def test_identity(work):
    e = Env(work)
    web1 = os.path.join(A.shop, "lib", "web-1.0.0")
    so = "lib/web-1.0.0/modules/web_handler.so"

    def rel11(vsn, extra=(), drop=()):
        """Release vsn: release 1.0's applications under another release version."""
        text = open(os.path.join(A.shop, "releases", "1.0", "release.yaml")).read().replace('"1.0"', f'"{vsn}"')
        return release_tar(e.tar(), "1.0", REL1[1], drop={"releases/1.0"} | set(drop),
                           extra=[entry(f"releases/{vsn}/release.yaml", data=text.encode())] + list(extra))

    before = sha_tree(web1)
    data = open(os.path.join(A.shop, so), "rb").read()
    e.refused("the same application version with a different .so",  # still a valid module: other bytes after it
              rel11("1.1", drop={so}, extra=[entry(so, data=data + b"other code", mode=0o755)]),
              r"lib/web-1\.0\.0: this application version is already installed with different content")
    e.refused("the same application version with a .so's mode changed",
              rel11("1.1", drop={so}, extra=[entry(so, data=data, mode=0o644)]), r"already installed with different")
    e.refused("the same application version with a file more",
              rel11("1.1", extra=[entry("lib/web-1.0.0/priv/extra", data=b"x")]), r"already installed with different")
    e.refused("the same application version with a file as a link",
              rel11("1.1", drop={so}, extra=[entry("lib/web-1.0.0/modules/real.so", data=data, mode=0o755),
                                             sym(so, "real.so")]), r"already installed with different")
    rc, out, err = e.r.relctl("unpack", rel11("1.1"))
    tap(rc == 0 and sha_tree(os.path.join(e.r.root, "lib", "web-1.0.0")) == before,
        "the same application version with the same content is accepted, the installed copy kept", err)
    e.stop()


def real_module():
    """A real module's bytes (the shop's inv_store): reld reads each module's
    descriptor at unpack. Bytes appended to it keep it a valid ELF file."""
    return open(os.path.join(A.shop, "lib", "inventory-1.0.0", "modules", "inv_store.so"), "rb").read()


def small_release(path, vsn, app_vsn, payload):
    with tarfile.open(path, "w") as t:
        add_entry(t, entry(f"releases/{vsn}/release.yaml",
                           data=f'release: pair\nvsn: "{vsn}"\napplications: [{{name: shared, vsn: "{app_vsn}"}}]\n'
                           .encode()))
        add_entry(t, entry(f"lib/shared-{app_vsn}/app.yaml",
                           data=f'name: shared\nvsn: "{app_vsn}"\nmodules: [{{name: inv_store, file: modules/m.so}}]\n'
                           .encode()))
        add_entry(t, entry(f"lib/shared-{app_vsn}/modules/m.so", data=payload, mode=0o755))
    os.chmod(path, 0o644)
    return path


def test_concurrent(work):
    e = Env(work)
    env = dict(os.environ)
    bad, both_same = [], []
    payload = real_module() + os.urandom(1 << 20)
    for k in range(20):
        a = small_release(e.tar(), f"10.{k}", f"1.{k}", payload + b"A")
        b = small_release(e.tar(), f"11.{k}", f"1.{k}", payload + b"B")
        ps = [subprocess.Popen([A.relctl, "--socket", e.r.sock, "unpack", t], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=env) for t in (a, b)]
        res = [(p.wait(60), p.stderr.read().decode()) for p in ps]
        for p in ps:
            p.stdout.close()
            p.stderr.close()
        ok = [rc == 0 for rc, _ in res]
        installed = open(os.path.join(e.r.root, "lib", f"shared-1.{k}", "modules", "m.so"), "rb").read() \
            if os.path.exists(os.path.join(e.r.root, "lib", f"shared-1.{k}")) else None
        winner = payload + (b"A" if ok[0] else b"B")
        loser_err = res[1][1] if ok[0] else res[0][1]
        if sum(ok) != 1 or installed != winner or "already installed with different content" not in loser_err:
            bad.append(f"pair {k}: accepted {ok}, {res}")
    tap(not bad, "20 pairs of concurrent unpacks sharing a new application version with different content: "
        "exactly one of each is accepted and its code is what is installed", "\n".join(bad))
    for k in range(5):
        a = small_release(e.tar(), f"12.{k}", f"2.{k}", payload)
        b = small_release(e.tar(), f"13.{k}", f"2.{k}", payload)
        ps = [subprocess.Popen([A.relctl, "--socket", e.r.sock, "unpack", t], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env=env) for t in (a, b)]
        res = [(p.wait(60), p.stderr.read().decode()) for p in ps]
        for p in ps:
            p.stderr.close()
        if [rc for rc, _ in res] != [0, 0]:
            both_same.append(f"pair {k}: {res}")
    tap(not both_same, "5 pairs sharing one with the same content: both accepted", "\n".join(both_same))
    tmp = os.path.join(e.r.root, "tmp")
    tap(os.listdir(tmp) == [], "no staging directory is left", os.listdir(tmp))
    e.stop()


def content_size(vsn, apps):
    total = 0
    for top in [os.path.join(A.shop, "releases", vsn)] + [os.path.join(A.shop, "lib", a) for a in apps]:
        for d, dirs, files in os.walk(top):
            total += 512 * (len(dirs) + len(files)) + sum(os.path.getsize(os.path.join(d, f)) for f in files)
    return total


def test_limits(work):
    # How many entries and how deep the example release 2.0 is.
    count, deepest = 0, 0
    with tarfile.open(release_tar(os.path.join(work, "probe.tar"), *REL2)) as t:
        for m in t.getmembers():
            count += 1
            deepest = max(deepest, m.name.count("/") + 1)
    files, depth = count + 20, max(deepest, 6) + 2
    e = Env(work, config=f"max_unpacked_files: {files}\nmax_unpacked_depth: {depth}\n")
    rc, out, err = e.r.relctl("unpack", release_tar(e.tar(), *REL2, extra=[
        entry(f"{WEB}/priv/f{k}", data=b"x") for k in range(files - count - 1)] + [
        entry(WEB + "/priv" + "".join(f"/d{k}" for k in range(depth - 4)) + "/leaf", data=b"x")]))
    tap(rc == 0, f"exactly at the limits ({files} entries counting directories, {depth} path components) is accepted",
        err)
    if rc == 0:
        e.r.relctl("remove", "2.0")
        e.snapshot()
    e.refused(f"one entry more than max_unpacked_files ({files})",
              release_tar(e.tar(), *REL2, extra=[entry(f"{WEB}/priv/f{k}", data=b"x")
                                                 for k in range(files - count + 1)]),
              rf"^relctl: the archive holds more than the limit of {files} entries \(max_unpacked_files\)$")
    e.refused("3,000 empty files",
              release_tar(e.tar(), *REL2, extra=[entry(f"{WEB}/priv/{k}") for k in range(3000)]),
              rf"more than the limit of {files} entries \(max_unpacked_files\)$")
    e.refused(f"one path component more than max_unpacked_depth ({depth})",
              release_tar(e.tar(), *REL2, extra=[
                  entry(WEB + "/priv" + "".join(f"/d{k}" for k in range(depth - 3)) + "/leaf", data=b"x")]),
              rf"deeper than the limit of {depth} path components \(max_unpacked_depth\)$")
    e.refused("a deep directory alone",
              release_tar(e.tar(), *REL2, extra=[
                  entry(WEB + "".join(f"/d{k}" for k in range(200)), tarfile.DIRTYPE, mode=0o755)]),
              rf"deeper than the limit of {depth} path components \(max_unpacked_depth\)$")
    e.stop()
    sub = os.path.join(work, "bytes")
    os.makedirs(sub)
    limit = 2 * content_size(*REL2) + 65536  # sanitizer builds make larger binaries
    e = Env(sub, config=f"max_unpacked_bytes: {limit}\n")
    e.refused("content over max_unpacked_bytes",
              release_tar(e.tar(), *REL2, extra=[entry(f"{WEB}/priv/big", data=os.urandom(limit + 1))]),
              rf"^relctl: the archive unpacks to more than the limit of {limit} bytes \(max_unpacked_bytes\)$")
    e.stop()
    sub = os.path.join(work, "cfg")
    os.makedirs(sub)
    r = Reld(sub, "max_unpacked_depth: 2\n")
    r.p.wait(5)
    r.log.close()
    tap(r.p.returncode == 1 and "field 'max_unpacked_depth' must be an integer from 3 to" in r.text(),
        "max_unpacked_depth below 3 is a config error", r.text()[-300:])


def test_fsync(work):
    if not shutil.which("strace"):
        skip("every file and directory is fsynced before the release is recorded", "needs strace")
        return
    e = Env(work)
    trace = os.path.join(work, "strace.out")
    st = subprocess.Popen(["strace", "-f", "-qq", "-y", "-e", "trace=fsync,fdatasync,syncfs,renameat2,rename",
                           "-o", trace, "-p", str(e.r.p.pid)], stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    rc, out, err = e.r.relctl("unpack", release_tar(e.tar(), *REL2))
    time.sleep(0.2)
    st.send_signal(signal.SIGINT)
    st.wait(10)
    calls = open(trace).read().splitlines()
    synced = set()
    order = []
    pending = {}  # pid -> path of an fsync strace shows in two parts (threads)
    for line in calls:
        pid = line.split()[0]
        m = re.search(r"(fsync|fdatasync)\(\d+<([^>]*)>(\) += 0| <unfinished)", line)
        if m and m.group(3).startswith(")"):
            synced.add(m.group(2))
            order.append(("sync", m.group(2)))
        elif m:
            pending[pid] = m.group(2)
        m = re.search(r"<\.\.\. (fsync|fdatasync) resumed>\) += 0", line)
        if m and pid in pending:
            synced.add(pending[pid])
            order.append(("sync", pending.pop(pid)))
        m = re.search(r"renameat2\(.*\"([^\"]+)\", \d+<([^>]*)>, \"([^\"]+)\"", line)
        if m:
            order.append(("rename", os.path.join(m.group(2), m.group(3))))
    staged = {}
    for p in synced:
        m = re.search(r"/tmp/unpack-[^/]+/(.*)", p)
        if m:
            staged[m.group(1)] = p
    want = set()
    for unit in ["releases/2.0"] + [f"lib/{a}" for a in REL2[1]]:
        top = os.path.join(A.shop, unit)
        want.add(unit)
        for d, dirs, files in os.walk(top):
            for n in dirs + files:
                want.add(os.path.relpath(os.path.join(d, n), A.shop))
    missing = sorted(want - set(staged))
    tap(rc == 0 and not missing, f"every file and directory of the release is fsynced ({len(want)})",
        f"rc {rc} {err}\nmissing: {missing[:10]}\n" + "\n".join(calls[:10]))
    rel_dir = os.path.join(e.r.root, "releases")
    try:
        i_rename = max(i for i, (k, p) in enumerate(order) if k == "rename" and p.endswith("releases/2.0"))
        last_file_sync = max(i for i, (k, p) in enumerate(order) if k == "sync" and "/tmp/unpack-" in p)
        dir_sync = [i for i, (k, p) in enumerate(order) if k == "sync" and p == rel_dir]
        ok = last_file_sync < i_rename and dir_sync and dir_sync[-1] > i_rename
    except ValueError:
        ok = False
    tap(ok, "files before the release is moved into place, releases/ after it", "\n".join(map(str, order[-8:])))
    e.stop()


def main():
    global A
    ap = argparse.ArgumentParser()
    ap.add_argument("--reld", required=True)
    ap.add_argument("--relctl", required=True)
    ap.add_argument("--shop", required=True)
    A = ap.parse_args()
    A.reld, A.relctl, A.shop = (os.path.abspath(x) for x in (A.reld, A.relctl, A.shop))
    A.shop = private_shop(A.shop)  # its own port: not the other shop suites'
    print("TAP version 13")
    tests = (test_link_chains, test_hard_links, test_root_only_file, test_accepted_links, test_identity,
             test_concurrent, test_limits, test_fsync)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # meson's timeout: the accounts still go
    try:
        run_all(tests, os.environ.get("HOSTILE_ONLY"))
    finally:
        remove_accounts()
    tap(not UNCLEAN, "every reld stopped cleanly, with no sanitizer report", "\n".join(UNCLEAN))
    print(f"1..{N}")
    return 1 if FAILED else 0


def run_all(tests, only):
    """Each test in a fresh directory; a crash of the driver is a failed
    check; every reld started is stopped by its pid."""
    for t in tests:
        if only and only not in t.__name__:
            continue
        work = tempfile.mkdtemp(prefix="reld-hostile-")
        t0 = time.monotonic()
        try:
            t(work)
        except Exception:
            import traceback
            tap(False, f"{t.__name__} crashed", traceback.format_exc())
        finally:
            for p in STARTED:
                if p.poll() is None:
                    p.kill()
                    p.wait(10)
            STARTED.clear()
            shutil.rmtree(work, ignore_errors=True)
            print(f"# {t.__name__}: {time.monotonic() - t0:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
