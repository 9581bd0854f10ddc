# -*- coding: utf-8 -*-
# A callback plugin for tests/e2e/fleet.py: every task result, play start
# and the final stats as one JSON line each in the file $RELD_RECORD, so the
# test reads what Ansible did instead of parsing its screen output.
from __future__ import annotations

import json
import os

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "reld_record"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self._out = open(os.environ["RELD_RECORD"], "a")

    def _write(self, rec):
        self._out.write(json.dumps(rec, default=str) + "\n")
        self._out.flush()

    def _result(self, kind, result):
        delegated = result._result.get("_ansible_delegated_vars") or {}
        self._write({"kind": kind, "host": result._host.get_name(), "task": result._task.get_name(),
                     "action": result._task.action, "delegate": delegated.get("ansible_host"),
                     "result": {k: v for k, v in result._result.items() if not k.startswith("_ansible")}})

    def v2_playbook_on_play_start(self, play):
        self._write({"kind": "play", "name": play.get_name()})

    def v2_runner_on_ok(self, result):
        self._result("ok", result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._result("failed", result)

    def v2_runner_on_unreachable(self, result):
        self._result("unreachable", result)

    def v2_runner_on_skipped(self, result):
        self._result("skipped", result)

    def v2_playbook_on_stats(self, stats):
        self._write({"kind": "stats", "hosts": {h: stats.summarize(h) for h in sorted(stats.processed)}})
