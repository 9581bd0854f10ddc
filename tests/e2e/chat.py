#!/usr/bin/env python3
"""The chat example of docs/porting.md under the real reld: releases 1 and
2 of examples/chat packed (a free port written into app.yaml), 1
installed, clients connected and subscribed, upgraded to 2 while they stay
connected (the field 2 adds to the client struct is live: STATS), and
downgraded back to 1 likewise, the same process throughout. Prints TAP.

Usage: chat.py --reld PATH --relctl PATH --src EXAMPLES_CHAT_DIR --bin BUILD_EXAMPLES_DIR
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import daemon as d  # noqa: E402  (its Reld, tap and counters)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "runtime"))
from hotcode import free_port  # noqa: E402

A = None


def tarball(r, work, vsn, port):
    """Release vsn of the chat example, listening on port, packed by
    relctl pack (which checks the modules and executables first)."""
    app = f"chat-{vsn}.0.0"
    src = os.path.join(work, f"src-{vsn}")
    shutil.copytree(os.path.join(A.src, "root", "releases", vsn), os.path.join(src, "releases", vsn))
    lib = os.path.join(src, "lib", app)
    shutil.copytree(os.path.join(A.src, "root", "lib", app), lib)
    text = open(os.path.join(lib, "app.yaml")).read()
    open(os.path.join(lib, "app.yaml"), "w").write(text.replace("127.0.0.1:17421", f"127.0.0.1:{port}"))
    os.makedirs(os.path.join(lib, "bin"))
    os.makedirs(os.path.join(lib, "modules"))
    shutil.copy(os.path.join(A.bin, "chat-host"), os.path.join(lib, "bin", "chat-host"))
    shutil.copy(os.path.join(A.bin, f"chat_server-{vsn}.so"), os.path.join(lib, "modules", "chat_server.so"))
    out = os.path.join(work, f"chat-{vsn}.tar.gz")
    rc, o, e = r.relctl("pack", src, "-o", out)
    d.tap(rc == 0, f"relctl pack release {vsn}", o + e)
    return out


class Client:
    """A connected chat client reading lines with a bounded wait."""

    def __init__(self, port, nick):
        self.nick = nick
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def send(self, line):
        self.s.sendall((line + "\n").encode())

    def line(self):
        """The next line, or None when the server closed the connection
        (or sent nothing for 10 s)."""
        while b"\n" not in self.buf:
            try:
                chunk = self.s.recv(4096)
            except OSError:
                return None
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def ask(self, line):
        """Sends line; the lines up to and including the reply (OK or ERR)."""
        self.send(line)
        got = []
        while True:
            r = self.line()
            got.append(r)
            if r is None or r.startswith("OK") or r.startswith("ERR"):
                return got


def test_chat(work):
    d.DEFAULT_CONFIG = "min_healthy_ms: 100\n"
    port = free_port()
    r = d.Reld(work)
    one, two = tarball(r, work, "1", port), tarball(r, work, "2", port)
    rc, o, e = r.relctl("check", one, two)
    d.tap(rc == 0, "relctl check 1 2: the appup updates chat_server, whose state_version changes, with code_change",
          o + e)
    rc, o, e = r.relctl("install", one)
    d.tap(rc == 0, "reld installs release 1 of the chat example", o + e)
    rc, o, e = r.relctl("unpack", two)
    d.tap(rc == 0, "release 2 unpacked", o + e)

    def pid():
        rc, o, e = r.relctl("status", "--json")
        return [p.get("pid") for p in json.loads(o)["processes"]] if rc == 0 else None

    before = pid()
    # The host's stdout is line-buffered (docs/porting.md): its first line
    # is in reld's log while it runs, not when it exits.
    want = f"chat/chat[{before[0] if before else '?'}]: chat-host: serving with chat_server 1"
    for _ in range(1000):
        if want in open(os.path.join(work, "reld.log"), errors="replace").read():
            break
        time.sleep(0.01)
    d.tap(want in open(os.path.join(work, "reld.log"), errors="replace").read(),
          "the host's stdout line, relayed by reld while it runs (line-buffered)", want)
    cs = [Client(port, f"c{i}") for i in range(4)]
    ok = all(c.ask(f"NICK {c.nick}") == [f"OK nick {c.nick}"] and c.ask("SUB news") == ["OK sub news"] for c in cs)
    ok = ok and cs[3].ask("SUB sports") == ["OK sub sports"]
    d.tap(ok and cs[0].ask("VERSION") == ["OK chat_server 1"],
          "4 clients connected to chat_server 1, each with a nick, subscribed to news (c3 to sports too)")
    got = cs[1].ask("PUB news before")
    d.tap(got == ["MSG news c1: before", "OK delivered 4"] and all(c.line() == "MSG news c1: before" for c in cs
                                                                   if c is not cs[1]),
          "a message published on 1 reaches the 4 subscribers", got)
    d.tap(cs[0].ask("STATS") == ["ERR unknown command STATS"], "1 has no STATS")

    def publish(who, topic, text, subscribers):
        """who publishes; each of subscribers gets it, once, nobody else."""
        got = who.ask(f"PUB {topic} {text}")
        want = f"MSG {topic} {who.nick}: {text}"
        ok = got == ([want] if who in subscribers else []) + [f"OK delivered {len(subscribers)}"]
        for c in subscribers:
            if c is not who:
                ok = ok and c.line() == want
        return ok, got

    rc, o, e = r.relctl("upgrade", "--dry-run", "2")
    d.tap(rc == 0 and "rehearsal: ok" in o,
          "upgrade --dry-run 2: the rehearsal converts a copy of the live state up and down (verify passes)", o + e)
    for verb, vsn in (("upgrade", "2"), ("downgrade", "1")):
        rc, o, e = r.relctl(verb, vsn)
        d.tap(rc == 0, f"{verb} to {vsn} with the 4 clients connected", o + e)
        versions = [c.ask("VERSION") for c in cs]
        d.tap(all(v == [f"OK chat_server {vsn}"] for v in versions),
              f"no client dropped: each of the 4 answered by chat_server {vsn} on its old connection", versions)
        ok, got = publish(cs[2], "news", f"after {verb}", cs)
        d.tap(ok, f"after the {verb}, a message on news reaches all 4 subscribers (nicks and subscriptions kept)",
              got)
        ok, got = publish(cs[0], "sports", "goal", [cs[3]])
        d.tap(ok, f"after the {verb}, one on sports reaches c3 alone", got)
        late = Client(port, "late")
        ok = late.ask("NICK late") == ["OK nick late"] and late.ask("SUB news") == ["OK sub news"]
        ok2, got = publish(late, "news", "hello", cs + [late])
        d.tap(ok and ok2, f"a client connecting after the {verb} joins the same state", got)
        late.s.close()
        stats = [c.ask("STATS") for c in cs]
        if vsn == "2":
            # received: 0 from the conversion (the field's default), then
            # 2 on news for everyone, 1 on sports for c3; published: 1 on 1
            # before, 3 since (the count kept through code_change).
            want = [[f"OK received {3 if c is cs[3] else 2} published 4"] for c in cs]
        else:
            want = [["ERR unknown command STATS"]] * 4
        d.tap(stats == want, f"the field 2 added: STATS {'live' if vsn == '2' else 'gone again'} on {vsn}", stats)
    d.tap(before and pid() == before, f"the same process throughout (pid {before})", pid())
    for c in cs:
        c.s.close()
    r.stop()


def test_plain(work):
    """The server before the port, and both programs refusing bad input."""
    p = subprocess.run([os.path.join(A.bin, "chat-plain"), "70000"], capture_output=True, text=True, timeout=10)
    d.tap(p.returncode == 2 and p.stderr == "usage: chat-plain PORT (1 to 65535)\n",
          "chat-plain 70000: exit 2, one line", p.stderr)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "RELD_"))}
    p = subprocess.run([os.path.join(A.bin, "chat-host")], capture_output=True, text=True, timeout=10, env=env)
    d.tap(p.returncode == 2 and p.stderr == "chat-host: needs one listening socket from reld (LISTEN_FDS=1, "
          "LISTEN_PID)\n", "chat-host outside reld: exit 2, one line", p.stderr)
    port = free_port()
    srv = subprocess.Popen([os.path.join(A.bin, "chat-plain"), str(port)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(1000):  # until it listens
            try:
                a = Client(port, "a")
                break
            except OSError:
                time.sleep(0.01)
        b = Client(port, "b")
        ok = a.ask("NICK a") == ["OK nick a"] and a.ask("SUB t") == ["OK sub t"] and b.ask("SUB t") == ["OK sub t"]
        got = b.ask("PUB t hi")
        d.tap(ok and got == ["MSG t anon: hi", "OK delivered 2"] and a.line() == "MSG t anon: hi"
              and b.ask("VERSION") == ["OK chat-plain, 2 clients, 1 published"],
              "chat-plain, the server before the port, speaks the same protocol", got)
        a.s.close()
        b.s.close()
    finally:
        srv.kill()
        srv.wait()


def main():
    global A
    ap = argparse.ArgumentParser()
    for a in ("--reld", "--relctl", "--src", "--bin"):
        ap.add_argument(a, required=True)
    A = ap.parse_args()
    d.A = argparse.Namespace(reld=A.reld, relctl=A.relctl, shop=None)
    return d.run_tests((test_plain, test_chat), "reld-chat-")


if __name__ == "__main__":
    sys.exit(main())
