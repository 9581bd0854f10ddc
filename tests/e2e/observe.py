#!/usr/bin/env python3
"""End to end: watching a live system during an upgrade (issue 16), on the
kvcounter example under load, with the real reld and relctl. Prints TAP.

- status: per process CPU %, RSS, uptime, last pause; reld's own figures;
- relctl top: one snapshot off a terminal, --json, and live in a real
  terminal (tmux: the pane captured while an upgrade sits at an instruction,
  then `q` quits);
- metrics: the file for node_exporter's textfile collector, scraped from the
  real prometheus-node-exporter on loopback, `promtool check metrics` clean;
  off by default; a wrong key refused; a file that cannot be written logged;
- events: MESSAGE_IDs and fields RELEASE, VERSION, ATTEMPT_ID, OUTCOME in
  reld's log (the journal where journald runs), an automatic rollback's too;
- sd_notify STATUS= with the upgrade's instruction k of n.

Usage: observe.py --reld PATH --relctl PATH --kvroot KVCOUNTER_ROOT --loadgen PATH
"""
import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import daemon as d  # noqa: E402  (Reld, tap, run_tests)
import trusted as t  # noqa: E402  (kv_release, Load, status)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "runtime"))
from hotcode import free_port  # noqa: E402

A = None
IDS = {"unpacked": "17875a935c0b483cb96a56f5eb00ada3", "change_started": "46d5b150be5a4684880143c304fd0a55",
       "change_done": "402cfa2a7331457290ba29687d8177ce", "rollback_started": "de4152ca5a8f4fd29be398d1f65f112a",
       "rolled_back": "9126c1b9131543799b63c3f022e64bd3", "state": "555d4727890e4d3abc793db4b681b95a"}


def wait_for(pred, timeout=20.0):
    return t.wait_for(pred, timeout)


def started(work, config, env=None):
    """reld (with config and extra environment) running release 1 of kvcounter, permanent."""
    port = free_port()
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        r = d.Reld(work, config=config)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    rc, out, err = r.relctl("install", "--commit", "--min-healthy", "100", t.kv_release(work, port, "1", "1.0.0"))
    if rc != 0:
        raise RuntimeError(f"install of release 1: {rc} {out} {err}")
    wait_for(lambda: t.versions(r))
    return r, port


class Notify:
    """A notify socket (NOTIFY_SOCKET) that keeps every datagram."""

    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.s.bind(path)
        self.s.settimeout(0.2)
        self.msgs, self.stop = [], False
        self.th = threading.Thread(target=self.run, daemon=True)
        self.th.start()

    def run(self):
        while not self.stop:
            try:
                self.msgs.append(self.s.recv(4096).decode(errors="replace"))
            except socket.timeout:
                pass

    def close(self):
        self.stop = True
        self.th.join()
        self.s.close()


def tmux(*args):
    return subprocess.run(["tmux", *args], capture_output=True, text=True, timeout=10)


def metric(text, series):
    """The value of one series line (exact name and labels), or None."""
    for ln in text.splitlines():
        if ln.startswith(series + " "):
            return float(ln.split()[-1])
    return None


def log_events(work, kind):
    log = open(os.path.join(work, "reld.log"), errors="replace").read()
    return [ln for ln in log.splitlines() if f"[event={kind} MESSAGE_ID={IDS[kind]}" in ln]


def test_watch_an_upgrade(work):
    prom = os.path.join(work, "prom")
    os.makedirs(prom)
    mfile = os.path.join(prom, "reld.prom")
    notify = Notify(os.path.join(work, "notify.sock"))
    # The upgrade waits 2.5 s before its third instruction (a test hook), so
    # that top, STATUS= and the metrics can be seen while it is under way.
    # An interval of a minute: what the test sees was written at a change.
    r, port = started(work, f"metrics_file: {mfile}\nmetrics_interval_ms: 60000\n",
                      {"NOTIFY_SOCKET": notify.s.getsockname(), "RELD_TEST_DELAY_BEFORE": "3:2500"})
    env = dict(os.environ, RELD_SOCKET=r.sock)

    st = t.status(r)
    p = st["processes"][0]
    d.tap(p["pid"] > 0 and p["rss_bytes"] > 0 and p["uptime_s"] >= 0 and 0 <= p["cpu_percent"] < 1000 and
          p["last_pause_ms"] is None and st["reld"]["rss_bytes"] > 0 and st["reld"]["pid"] == r.p.pid,
          f"status: the process's CPU % ({p['cpu_percent']:.1f}), RSS ({p['rss_bytes']} B), uptime; reld's own "
          f"RSS {st['reld']['rss_bytes'] // 1024} KiB", st)

    rc, out, err = r.relctl("top")
    d.tap(rc == 0 and re.search(rf"kvcounter/kv +{p['pid']} +running", out) and "releases 1 (permanent)" in out and
          "no upgrade under way" in out and "kv_server 1" in out,
          "relctl top off a terminal: one snapshot (releases, the process with its pid, state, modules)", out + err)
    rc, out, err = r.relctl("top", "--json")
    try:
        j = json.loads(out)
    except ValueError:
        j = {}
    d.tap(rc == 0 and j.get("processes", [{}])[0].get("pid") == p["pid"] and "reld" in j,
          "relctl top --json: the status reply with the figures", out + err)
    # Where reld is (--socket here; -H HOST the same way) goes to every relctl it runs.
    top = os.path.join(os.path.dirname(A.relctl), "relctl-top")
    env_top = {k: v for k, v in os.environ.items() if k != "RELD_SOCKET"}
    env_top["RELCTL_SELF"] = A.relctl
    p1 = subprocess.run([top, "--socket", r.sock, "top", "--once"], env=env_top, capture_output=True, text=True,
                        timeout=30)
    p2 = subprocess.run([top, "--socket", os.path.join(work, "nothing.sock"), "top", "--once"], env=env_top,
                        capture_output=True, text=True, timeout=30)
    d.tap(p1.returncode == 0 and "kvcounter/kv" in p1.stdout and p2.returncode == 1 and
          len(p2.stderr.strip().splitlines()) == 1 and "nothing.sock" in p2.stderr,
          "relctl-top passes --socket to relctl (as it would -H HOST); no reld there: one line, exit 1",
          p1.stdout + p1.stderr + p2.stderr)
    # relctl -H HOST top: the view here, reld there. ssh's place is taken by
    # a shell that runs the remote command line on this machine (the real
    # sshd is fleet.py's); relctl there is found in PATH.
    shim = os.path.join(work, "ssh-here")
    with open(shim, "w") as f:
        f.write('#!/bin/sh\nwhile [ "$1" != "--" ]; do shift; done\nshift 2\nexec sh -c "$*"\n')
    os.chmod(shim, 0o755)
    env_h = dict(env_top, RELCTL_SSH=shim, PATH=os.path.dirname(A.relctl) + ":" + os.environ["PATH"])
    p3 = subprocess.run([A.relctl, "-H", "node1", "--socket", r.sock, "top", "--once"], env=env_h,
                        capture_output=True, text=True, timeout=30)
    d.tap(p3.returncode == 0 and re.search(rf"kvcounter/kv +{p['pid']} +running", p3.stdout),
          "relctl -H HOST top: relctl-top runs here and asks through relctl -H (ssh: a local shell in its place)",
          p3.stdout + p3.stderr)
    rc, out, err = r.relctl("top", "--interval", "0")
    d.tap(rc == 2 and "--interval" in err and not out, "relctl top --interval 0: usage error, one line", err)

    # A real terminal: top live in tmux, 150x30.
    sess = f"reldtop{os.getpid()}"
    tmux("new-session", "-d", "-s", sess, "-x", "150", "-y", "30",
         f"env RELD_SOCKET={r.sock} TERM=xterm {A.relctl} top --interval 0.2")
    pane = lambda: tmux("capture-pane", "-p", "-t", sess).stdout  # noqa: E731
    first = wait_for(lambda: "kvcounter/kv" in pane() and pane())
    d.tap(first and "q quits" in first, "relctl top in tmux: the live screen", first)

    r.relctl("unpack", t.kv_release(work, port, "2", "2.0.0"))
    load = t.Load(port, 5)
    up = subprocess.Popen([A.relctl, "upgrade", "--min-healthy", "200", "2"], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    during = wait_for(lambda: re.search(r"upgrade 1 -> 2: instruction \d+ of \d+ \[#+\.+\]", pane()) and pane())
    d.tap(during, "relctl top during the upgrade: instruction k of n and its bar", pane())
    if during:
        print("# relctl top, captured during the upgrade:")
        for ln in during.rstrip().splitlines():
            print("#   " + ln.rstrip())
    # Until the upgrade ends: the metrics file said it was under way.
    in_metrics = wait_for(lambda: "reld_upgrade_in_progress 1" in (open(mfile).read() if os.path.exists(mfile)
                                                                    else "") or up.poll() is not None, 60)
    in_metrics = in_metrics is True
    out, err = up.communicate(timeout=60)
    res = load.result()
    d.tap(up.returncode == 0 and res["failed"] == 0,
          f"upgrade 1 -> 2 under load while watched: {res['ok']} requests, 0 failed", f"{out} {err} {res}")
    status_lines = [m for m in notify.msgs if "STATUS=" in m]
    d.tap(any(re.search(r"STATUS=upgrade 1 -> 2: instruction \d+ of \d+", m) for m in status_lines) and
          any("STATUS=running release 2; last upgrade of 2: current" in m for m in status_lines),
          "sd_notify STATUS=: the upgrade's instruction k of n, then the outcome", status_lines)

    tmux("send-keys", "-t", sess, "q")
    gone = wait_for(lambda: tmux("has-session", "-t", sess).returncode != 0, 10)
    d.tap(gone, "q quits relctl top (the tmux session ends with it)")
    if not gone:
        tmux("kill-session", "-t", sess)

    st = t.status(r)
    pause = st["processes"][0]["last_pause_ms"]
    d.tap(isinstance(pause, float) and pause > 0, f"status: the process's last pause ({pause} ms)", st)

    # The metrics file: written soon after the change.
    def text():
        return open(mfile).read() if os.path.exists(mfile) else ""
    done = wait_for(lambda: metric(text(), 'reld_attempts_total{kind="upgrade",outcome="current"}') == 1)
    m = text()
    series = {
        'reld_release{name="kv",version="2",state="current"}': lambda v: v == 1,
        'reld_release{name="kv",version="1",state="permanent"}': lambda v: v == 1,
        'reld_attempts_total{kind="install",outcome="committed"}': lambda v: v == 1,
        'reld_process_pause_seconds_count{process="kvcounter/kv"}': lambda v: v == 1,
        'reld_instruction_duration_seconds_count{op="suspend"}': lambda v: v >= 1,
        'reld_unpacks_total{result="ok"}': lambda v: v == 2,
        'reld_unpacked_bytes_total': lambda v: v > 0,
        'reld_processes{state="running"}': lambda v: v == 1,
        'reld_process_restarts_total{process="kvcounter/kv",application="kvcounter"}': lambda v: v == 0,
        'reld_process_healthy{process="kvcounter/kv",application="kvcounter"}': lambda v: v == 1,
        'reld_upgrade_in_progress': lambda v: v == 0,
        'reld_resident_memory_bytes': lambda v: v > 0,
    }
    bad = [s for s, ok in series.items() if metric(m, s) is None or not ok(metric(m, s))]
    d.tap(done and not bad, f"metrics file: releases, attempts by outcome, pause and instruction histograms, unpacks, "
          f"processes, health ({len(m.splitlines())} lines)", f"wrong or missing: {bad}\n{m}")
    d.tap(in_metrics, "metrics file during the upgrade: reld_upgrade_in_progress 1 (written at the change)")
    d.tap(not os.path.exists(mfile + ".tmp"), "no temporary file left beside it")
    p = subprocess.run(["promtool", "check", "metrics"], input=m, capture_output=True, text=True, timeout=30)
    d.tap(p.returncode == 0 and not (p.stdout + p.stderr).strip(), "promtool check metrics: no problem",
          p.stdout + p.stderr)

    # The real node_exporter, textfile collector only, on a free loopback port.
    nport = free_port()
    ne = subprocess.Popen(["prometheus-node-exporter", f"--web.listen-address=127.0.0.1:{nport}",
                           "--collector.disable-defaults", "--collector.textfile",
                           f"--collector.textfile.directory={prom}"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    try:
        def scrape():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{nport}/metrics", timeout=5) as f:
                    return f.read().decode()
            except OSError:
                return ""
        s = wait_for(lambda: "reld_" in scrape() and scrape())
        wanted = ['reld_release{name="kv",state="current",version="2"} 1',
                  'reld_attempts_total{kind="upgrade",outcome="current"} 1',
                  'reld_process_pause_seconds_count{process="kvcounter/kv"} 1',
                  'node_textfile_scrape_error 0']
        d.tap(s and all(w in s for w in wanted),
              f"node_exporter scrape (textfile collector, 127.0.0.1:{nport}): reld's series, no scrape error",
              [w for w in wanted if w not in (s or "")])
        if s:
            print("# scraped from node_exporter (reld_ series):")
            for ln in s.splitlines():
                if ln.startswith("reld_") and "_bucket" not in ln:
                    print("#   " + ln)
    finally:
        ne.terminate()
        ne.wait(10)

    # Events: the journal where reld's stderr is one; here, its log.
    attempt = None
    done_lines = [ln for ln in log_events(work, "change_done") if "VERSION=2 " in ln]
    mm = re.search(r"RELEASE=kv VERSION=2 ATTEMPT_ID=(\d+) OUTCOME=current\]", done_lines[0]) if done_lines else None
    attempt = mm and mm.group(1)
    d.tap(attempt and log_events(work, "change_started") and log_events(work, "unpacked") and
          any("OUTCOME=current" in ln for ln in log_events(work, "state")),
          f"events in reld's log: unpacked, change_started, state, change_done with RELEASE, VERSION, "
          f"ATTEMPT_ID={attempt}, OUTCOME", open(os.path.join(work, "reld.log")).read()[-3000:])
    if not journal_here():
        d.skip("journalctl MESSAGE_ID=... finds the events",
               "no journald to start here (needs root, unshare, systemd-journald): reld's log was checked instead")

    # An unhealthy upgrade (from 1) goes back: its events and its count.
    rc, out, err = r.relctl("downgrade", "--min-healthy", "100", "1")
    d.tap(rc == 0 and wait_for(lambda: metric(text(), 'reld_attempts_total{kind="downgrade",outcome="current"}') == 1),
          "a downgrade, counted by its kind", f"{rc} {err}")
    r.relctl("unpack", t.kv_release(work, port, "2.7", "2.0.0", module="2sick"))
    rc, out, err = r.relctl("upgrade", "--min-healthy", "200", "--health-timeout", "1000", "2.7")
    rb = log_events(work, "rolled_back")
    d.tap(rc == 3 and log_events(work, "rollback_started") and rb and "VERSION=2.7" in rb[0] and
          "OUTCOME=rolled_back" in rb[0],
          "an automatic rollback: rollback_started and rolled_back events (journalctl MESSAGE_ID="
          f"{IDS['rolled_back']} finds them)", f"{rc} {err} {rb}")
    d.tap(wait_for(lambda: metric(text(), 'reld_attempts_total{kind="upgrade",outcome="rolled_back"}') == 1),
          "metrics: the rollback counted by its outcome", text())

    # A process killed: its event, and the metrics written at once.
    pid = t.kv_pid(r)
    os.kill(pid, 9)
    series = 'reld_process_restarts_total{process="kvcounter/kv",application="kvcounter"}'
    ok = wait_for(lambda: metric(text(), series) == 1)
    ex = [ln for ln in open(os.path.join(work, "reld.log"), errors="replace").read().splitlines()
          if "[event=process_exited MESSAGE_ID=0ea72c25f27a45d887db970f1798b847 PROCESS=kvcounter/kv]" in ln]
    d.tap(ok and ex and f"(pid {pid}) ended: killed by signal 9" in ex[0],
          "a process killed: a process_exited event, and reld_process_restarts_total 1 written at the change",
          f"{ex} {metric(text(), series)}")
    r.stop()
    notify.close()


JOURNALD = "/lib/systemd/systemd-journald"


def journal_here():
    return os.geteuid() == 0 and shutil.which("unshare") and os.path.exists(JOURNALD) and shutil.which("journalctl")


def test_journal(work):
    """The events in a real journal: a private journald (in a mount namespace
    of its own, /run/systemd and /run/log on tmpfs: the machine's journal is
    not touched), reld's stderr a journal stream of it as systemd makes one
    (JOURNAL_STREAM), an upgrade, then journalctl MESSAGE_ID=..."""
    if not journal_here():
        d.skip("events in a real journal", "needs root, unshare and systemd-journald")
        return
    p = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, os.path.abspath(__file__),
                        "--journal-child", work, "--reld", A.reld, "--relctl", A.relctl, "--kvroot", A.kvroot,
                        "--loadgen", A.loadgen], capture_output=True, text=True, timeout=120)
    try:
        got = json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        d.tap(False, "events in a real journal: the child in its namespace reported", p.stdout + p.stderr)
        return
    done = [e for e in got["done"] if e.get("VERSION") == "2"]
    d.tap(done and done[0].get("RELEASE") == "kv" and done[0].get("OUTCOME") == "current" and
          done[0].get("ATTEMPT_ID", "").isdigit() and done[0].get("PRIORITY") == "5" and
          "[event=" not in done[0].get("MESSAGE", ""),
          f"journalctl MESSAGE_ID={IDS['change_done']}: the upgrade's end with RELEASE=kv VERSION=2 "
          f"ATTEMPT_ID={done[0].get('ATTEMPT_ID') if done else '?'} OUTCOME=current (a real journald)", got)
    d.tap(got["started"] and got["step"] and got["unpacked"] and got["lines"],
          "journalctl: change_started, change_step and unpacked too; reld's other lines in the same journal", got)


def journal_child(work):
    """In the private mount namespace: journald, reld on its stream, an upgrade."""
    for m in ("/run/systemd", "/run/log"):
        os.makedirs(m, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", m], check=True)
    os.makedirs("/run/systemd/journal")
    jd = subprocess.Popen([JOURNALD], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = {}
    try:
        wait_for(lambda: os.path.exists("/run/systemd/journal/stdout"), 10)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect("/run/systemd/journal/stdout")
        # identifier, unit, priority, level prefix, to syslog, kmsg, console
        s.sendall(b"reld-observe\n\n6\n1\n0\n0\n0\n")
        st = os.fstat(s.fileno())
        env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
        sock = os.path.join(work, "j.sock")
        reld = subprocess.Popen([A.reld, "--root", os.path.join(work, "jroot"), "--socket", sock], stderr=s,
                                env=env)
        wait_for(lambda: os.path.exists(sock), 30)

        def ctl(*args):
            return subprocess.run([A.relctl, *args], env=dict(os.environ, RELD_SOCKET=sock), capture_output=True,
                                  text=True, timeout=60)
        port = free_port()
        ctl("install", "--min-healthy", "100", t.kv_release(work, port, "1", "1.0.0"))
        ctl("unpack", t.kv_release(work, port, "2", "2.0.0"))
        out["upgrade"] = ctl("upgrade", "--min-healthy", "100", "2").returncode
        reld.terminate()
        reld.wait(30)

        def query(*match):
            p = subprocess.run(["journalctl", "-D", "/run/log/journal", "--no-pager", "-o", "json", *match],
                               capture_output=True, text=True, timeout=30)
            return [json.loads(ln) for ln in p.stdout.splitlines() if ln.strip()]
        found = lambda: query(f"MESSAGE_ID={IDS['change_done']}")  # noqa: E731
        wait_for(found, 10)  # journald writes what it got
        keys = ("MESSAGE", "RELEASE", "VERSION", "ATTEMPT_ID", "OUTCOME", "PRIORITY", "RELD_EVENT")
        out["done"] = [{k: e.get(k) for k in keys} for e in found()]
        out["started"] = len(query(f"MESSAGE_ID={IDS['change_started']}"))
        out["step"] = len(query("MESSAGE_ID=6ddf2e68c8c94037b36361e6aba84dce"))
        out["unpacked"] = len(query(f"MESSAGE_ID={IDS['unpacked']}"))
        out["lines"] = len(query("SYSLOG_IDENTIFIER=reld-observe"))
    finally:
        jd.terminate()
        jd.wait(10)
    print(json.dumps(out))


def test_metrics_config(work):
    # Off by default: nothing written, status still has its figures.
    r, port = started(work, None)
    st = t.status(r)
    log = open(os.path.join(work, "reld.log")).read()
    d.tap("rss_bytes" in st["processes"][0] and "metrics:" not in log and
          not [f for f in os.listdir(work) if f.endswith(".prom")],
          "metrics off by default: no file, no timer; status samples when asked", log)
    r.stop()
    # A relative path is refused, with the key named.
    p = subprocess.run([A.reld, "--root", os.path.join(work, "root2"), "--socket", os.path.join(work, "s2"),
                        "--config", cfg(work, "metrics_file: reld.prom\n")], capture_output=True, text=True,
                       timeout=30)
    lines = p.stderr.strip().splitlines()
    d.tap(p.returncode != 0 and len(lines) == 1 and "metrics_file must be an absolute path ending in .prom" in lines[0],
          "metrics_file relative: refused in one line", p.stderr)
    p = subprocess.run([A.reld, "--root", os.path.join(work, "root2"), "--socket", os.path.join(work, "s2"),
                        "--config", cfg(work, "metrics_interval_ms: 10\n")], capture_output=True, text=True,
                       timeout=30)
    d.tap(p.returncode != 0 and "metrics_interval_ms" in p.stderr, "metrics_interval_ms below 1000: refused",
          p.stderr)
    # A directory that does not exist: logged once, reld serves on.
    shutil.rmtree(os.path.join(work, "root"))
    r = d.Reld(work, config=f"metrics_file: {work}/nowhere/reld.prom\nmetrics_interval_ms: 1000\n")
    ok = wait_for(lambda: "metrics: cannot write" in open(os.path.join(work, "reld.log")).read(), 10)
    time.sleep(1.5)  # a second write fails too: still one line
    rc, out, err = r.relctl("status")
    log = open(os.path.join(work, "reld.log")).read()
    d.tap(ok and rc == 0 and log.count("metrics: cannot write") == 1,
          "a metrics file that cannot be written: one log line, reld serves on", log)
    r.stop()


def cfg(work, text):
    path = os.path.join(work, "bad.yaml")
    with open(path, "w") as f:
        f.write(text)
    return path


def main():
    global A
    ap = argparse.ArgumentParser()
    ap.add_argument("--reld", required=True)
    ap.add_argument("--relctl", required=True)
    ap.add_argument("--kvroot", required=True)
    ap.add_argument("--loadgen", required=True)
    ap.add_argument("--journal-child", help=argparse.SUPPRESS)
    A = ap.parse_args()
    d.A = argparse.Namespace(reld=A.reld, relctl=A.relctl, shop=None)
    t.A = A
    if A.journal_child:
        return journal_child(A.journal_child)
    missing = [x for x in ("tmux", "promtool", "prometheus-node-exporter") if not shutil.which(x)]
    if missing:
        print("TAP version 13\n1..0 # SKIP missing: " + " ".join(missing) + " (scripts/install-deps)")
        return 0
    return d.run_tests((test_watch_an_upgrade, test_journal, test_metrics_config), "reld-observe-")


if __name__ == "__main__":
    sys.exit(main())
