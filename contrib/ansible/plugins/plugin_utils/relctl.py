# -*- coding: utf-8 -*-
# The part the reld.fleet action plugins share: relctl run on the node
# through the task's own connection (ssh, local, ...), so that Ansible's
# inventory, keys and become apply and the node needs nothing but relctl.
from __future__ import annotations

import json
import re
import shlex
import tarfile

# relctl's exit status (relctl(1)) as the outcome a task reports when reld
# gives none in its reply.
EXIT_OUTCOMES = {0: "ok", 1: "refused", 2: "usage", 3: "rolled_back", 4: "needs_operator", 127: "no_relctl"}


def command(relctl, socket, args):
    """The remote shell command: relctl [--socket S] ARGS, each word quoted."""
    words = [relctl] + (["--socket", socket] if socket else []) + list(args)
    return " ".join(shlex.quote(w) for w in words)


def run(action, relctl, socket, args, in_data=None):
    """relctl ARGS on the task's host: (rc, stdout, stderr). in_data (bytes)
    is its standard input. A connection that fails raises Ansible's own
    AnsibleConnectionFailure: the host is then unreachable, as for any
    task."""
    # ssh -tt (Ansible's default for a command without input) would merge
    # stderr into stdout on the terminal, and --json needs stdout alone.
    action._connection.set_option("use_tty", False)
    res = action._low_level_execute_command(command(relctl, socket, args), in_data=in_data)
    return res.get("rc", 1), res.get("stdout", ""), res.get("stderr", "")


def reply(stdout):
    """reld's reply as relctl --json prints it, or None."""
    try:
        j = json.loads(stdout)
    except ValueError:
        return None
    return j if isinstance(j, dict) else None


def reasons(stderr):
    """relctl's error lines, without their "relctl: " prefix, its progress
    lines ([k/n] instruction) and its warnings."""
    out = []
    for line in stderr.splitlines():
        line = line.strip()
        line = line[len("relctl: "):] if line.startswith("relctl: ") else line
        if line and not re.match(r"\[\d+/\d+\] ", line) and not line.startswith("warning: "):
            out.append(line)
    return out


def warnings(stderr):
    """relctl's warning lines (what reld did on the way: the way back, a process it had to end)."""
    return [line.strip()[len("relctl: warning: "):] for line in stderr.splitlines()
            if line.strip().startswith("relctl: warning: ")]


def tarball_version(path):
    """The release version a release tarball holds (its releases/VSN/
    directory), read on the controller without unpacking it. Raises
    ValueError when it names none, or more than one."""
    found = set()
    with tarfile.open(path, "r|*") as t:
        for m in t:
            parts = [p for p in m.name.split("/") if p not in ("", ".")]
            if len(parts) >= 2 and parts[0] == "releases":
                found.add(parts[1])
                if len(parts) == 3 and parts[2] == "release.yaml":
                    break  # releases/ comes first in the tarballs relctl pack writes
    if len(found) != 1:
        raise ValueError("%s: %s" % (path, "names no release (no releases/VSN/ in it)" if not found
                                     else "names more than one release: " + ", ".join(sorted(found))))
    return found.pop()


def signature_text(path, required):
    """The text of a minisign signature file, as the stream carries it
    before the tarball (four lines, the first "untrusted comment:"), or
    None when it is not there and not required. Raises ValueError."""
    try:
        with open(path, "rb") as f:
            data = f.read(4097)
    except FileNotFoundError:
        if required:
            raise ValueError("%s: no such file" % path)
        return None
    if data and not data.endswith(b"\n"):
        data += b"\n"
    if len(data) > 4096 or data.count(b"\n") != 4 or not data.startswith(b"untrusted comment:"):
        raise ValueError("%s: not a minisign signature (four lines, the first 'untrusted comment:')" % path)
    return data
