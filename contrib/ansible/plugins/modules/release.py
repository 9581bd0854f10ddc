# -*- coding: utf-8 -*-
# The documentation of reld.fleet.release; the action plugin of the same
# name (plugins/action/release.py) does the work on the controller.
from __future__ import annotations

DOCUMENTATION = r'''
---
module: release
short_description: Bring a node to a reld release, health-gated, with reld's own rollback
description:
  - Brings the node's reld to a release, as C(relctl install) does there, from a release tarball on the
    controller (I(src)), which is streamed over the task's connection as relctl's standard input (no copy
    step, no path on the node), or from a release already unpacked on the node (I(version)).
  - reld goes to the release (a first start, or a live upgrade or downgrade by the relup), waits until it is
    healthy for C(min_healthy_ms), and goes back by itself when it is not. With I(commit) the release is made
    permanent in the same command.
  - Idempotent. Nothing changes (C(changed=false), C(outcome=unchanged)) when the node already runs the release,
    and, with I(commit), it is permanent. A tarball is streamed only when its release is not unpacked there yet.
  - A release reld does not take fails the task with reld's outcome in C(outcome) - C(refused) (nothing
    changed), C(rolled_back) (reld went back by itself to the release before), C(needs_operator) (the way
    back failed) - and the reason in C(msg), so that C(max_fail_percentage) and C(any_errors_fatal) act on it.
  - A node that cannot be reached is unreachable, as for any task.
  - The node needs C(relctl) and a running C(reld); not Python.
version_added: 0.1.0
author:
  - reld developers
options:
  src:
    description:
      - A release tarball on the controller (as C(relctl pack) writes it). A relative path is looked up as
        M(ansible.builtin.copy) does (the role's C(files/), the playbook's directory).
      - The release version is read from the tarball (its C(releases/VSN/) directory).
      - Its signature C(SRC.minisig) is sent with it when it exists (see I(signature)).
      - The whole tarball is held in the controller's memory while it is sent.
    type: path
  version:
    description:
      - The release version. Without I(src) it must be unpacked on the node already; with I(src) it must be the
        version in the tarball.
    type: str
  signature:
    description:
      - The tarball's minisign signature on the controller, when it is not I(src) with C(.minisig) appended.
        It must exist.
    type: path
  commit:
    description:
      - Make the release permanent once it is healthy (C(relctl install --commit)). Without it the release is
        current, and the node comes back on its permanent release after a restart of reld.
    type: bool
    default: true
  wait:
    description:
      - Wait for the health gate. V(false) is C(relctl install --no-wait) - and then reld does not go back by
        itself.
    type: bool
    default: true
  min_healthy_ms:
    description: How long the release must stay healthy (C(--min-healthy)); reld's configuration when not given.
    type: int
  health_timeout_ms:
    description: How long reld waits for that before it goes back (C(--health-timeout)); reld's configuration when not given.
    type: int
  rehearse:
    description: Each process converts a copy of its live state with the new code first (C(--rehearse)).
    type: bool
    default: false
  allow_downgrade:
    description: Unpack a tarball older than the node's downgrade floor (C(--allow-downgrade)).
    type: bool
    default: false
  socket:
    description:
      - reld's control socket on the node (C(relctl --socket)). Without it relctl's default there -
        C($RELD_SOCKET) in the login environment, else C(/run/reld/reld.sock).
    type: str
  relctl:
    description: The relctl command on the node (a name on its C(PATH), or a path).
    type: str
    default: relctl
notes:
  - Check mode is reld's dry run (C(relctl install --dry-run)) - the plan, the processes each step reaches,
    the rehearsal - and changes nothing. A release that is not unpacked on the node yet is reported as a
    change without a plan (unpacking it would be a change).
  - Become works as for any command; a password prompt cannot be answered while a tarball is streamed
    (as with pipelining), so use become without a password prompt.
  - Runs on the controller (an action plugin); the node needs no Python.
seealso:
  - module: reld.fleet.release_facts
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    platforms: posix
'''

EXAMPLES = r'''
- name: Install release 2 from a tarball on the controller, permanent once healthy
  reld.fleet.release:
    src: dist/kv-2.tar.gz

- name: Go to release 2.1, already unpacked on the node, without making it permanent
  reld.fleet.release:
    version: "2.1"
    commit: false
    min_healthy_ms: 5000
    health_timeout_ms: 60000

- name: A node whose reld listens elsewhere; relctl not on the PATH
  reld.fleet.release:
    src: dist/kv-2.tar.gz
    socket: /srv/kv/reld.sock
    relctl: /opt/reld/bin/relctl

- name: Keep going on a rollback, and act on it
  reld.fleet.release:
    src: dist/kv-2.tar.gz
  register: up
  ignore_errors: true
- name: Tell the operator
  ansible.builtin.debug:
    msg: "{{ inventory_hostname }} is back on {{ up.previous.running }}: {{ up.msg }}"
  when: up.outcome == "rolled_back"
'''

RETURN = r'''
outcome:
  description:
    - What reld did. C(unchanged) (already there), C(current) (runs, not permanent), C(committed) (runs,
      permanent), C(dry_run) (check mode); on failure C(refused), C(rolled_back), C(needs_operator), C(usage),
      C(no_relctl) (no relctl on the node) or C(error) (reld could not be asked).
  returned: always
  type: str
  sample: committed
release:
  description: The release version the task brings the node to.
  returned: always
  type: str
  sample: "2"
previous:
  description: The release that ran and the permanent one before the task.
  returned: when the node answered
  type: dict
  sample: {"running": "1", "permanent": "1"}
running:
  description: The release that runs after the task.
  returned: success
  type: str
  sample: "2"
permanent:
  description: The permanent release after the task.
  returned: success
  type: str
  sample: "2"
unpacked:
  description: Whether the tarball was streamed and unpacked on the node by this task.
  returned: when reld was asked to install
  type: bool
reply:
  description: reld's reply as C(relctl install --json) prints it (from, installed, direction, health, reason, ...).
  returned: when reld was asked to install
  type: dict
warnings:
  description: What reld did on the way (the way back it took, a process it had to end), shown as warnings.
  returned: when reld said so
  type: list
  elements: str
  sample: ["release 1 runs again, healthy"]
reasons:
  description: relctl's error lines, without their C(relctl:) prefix and its progress lines.
  returned: when reld was asked
  type: list
  elements: str
  sample: ["release 2.7 did not become healthy within 1500 ms: kv/kv: runtime: kv_server 2sick is unhealthy on purpose"]
rc:
  description: relctl's exit status on the node (0, 1 refused, 2 usage, 3 rolled back, 4 needs an operator).
  returned: when reld was asked to install
  type: int
dry_run:
  description: reld's dry-run report (the plan, the processes each instruction reaches, the rehearsal).
  returned: in check mode, when the release is unpacked on the node
  type: dict
'''
