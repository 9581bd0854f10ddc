# -*- coding: utf-8 -*-
# The documentation of reld.fleet.release_facts; the action plugin of the
# same name (plugins/action/release_facts.py) does the work.
from __future__ import annotations

DOCUMENTATION = r'''
---
module: release_facts
short_description: The releases of a node's reld, as facts
description:
  - Reads C(relctl status --json) on the node through the task's connection and sets
    C(ansible_facts.reld) - the release that runs, the permanent one, the releases reld knows, the processes it
    supervises with their health, and the last install's outcome.
  - Changes nothing; runs in check mode too.
  - The node needs C(relctl) and a running C(reld); not Python.
version_added: 0.1.0
author:
  - reld developers
options:
  socket:
    description: reld's control socket on the node; without it relctl's default there (C($RELD_SOCKET), else C(/run/reld/reld.sock)).
    type: str
  relctl:
    description: The relctl command on the node.
    type: str
    default: relctl
seealso:
  - module: reld.fleet.release
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  facts:
    support: full
  platform:
    platforms: posix
'''

EXAMPLES = r'''
- name: Read the node's releases
  reld.fleet.release_facts:

- name: Say what runs where
  ansible.builtin.debug:
    msg: "{{ inventory_hostname }} runs {{ ansible_facts.reld.running }} (permanent {{ ansible_facts.reld.permanent }})"

- name: Stop when the last install needed an operator
  ansible.builtin.assert:
    that: (ansible_facts.reld.last_outcome or {}).outcome | default('') != 'needs_operator'
'''

RETURN = r'''
ansible_facts:
  description: The facts set.
  returned: success
  type: complex
  contains:
    reld:
      description: The node's reld.
      returned: success
      type: complex
      contains:
        running:
          description: The release that runs (null when none).
          type: str
          sample: "2"
        current:
          description: The release in state current - running, not permanent yet (null when none).
          type: str
          sample: "2"
        permanent:
          description: The release reld starts after a restart (null when none).
          type: str
          sample: "2"
        releases:
          description: The releases reld knows, each with its vsn, name, state and when it was unpacked.
          type: list
          elements: dict
          sample: [{"vsn": "2", "name": "kv", "state": "permanent", "unpacked_at": "2026-12-02T04:40:00Z"}]
        processes:
          description: The supervised processes - app, process, pid, state, restarts, modules, health.
          type: list
          elements: dict
        last_outcome:
          description: The last install, upgrade or downgrade - release, outcome, at, reason (null when none).
          type: dict
          sample: {"release": "2.7", "outcome": "rolled_back", "at": "2026-12-02T04:41:00Z", "reason": "..."}
        upgrade:
          description: The upgrade under way, or null.
          type: dict
        root:
          description: reld's release root on the node.
          type: str
        signatures:
          description: Whether reld requires signed tarballs.
          type: str
'''
