# -*- coding: utf-8 -*-
# reld.fleet.release_facts: the node's releases as facts (ansible_facts.reld),
# from relctl status --json run through the task's connection.
# Documentation and return values: plugins/modules/release_facts.py.
from __future__ import annotations

from ansible.plugins.action import ActionBase

from ansible_collections.reld.fleet.plugins.plugin_utils import relctl as R

ARGUMENT_SPEC = dict(socket=dict(type="str"), relctl=dict(type="str", default="relctl"))


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True  # it only reads
    _supports_async = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        _, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        rc, out, err = R.run(self, args["relctl"], args["socket"], ["status", "--json"])
        st = R.reply(out)
        if rc != 0 or st is None:
            result.update(failed=True, rc=rc, reasons=R.reasons(err),
                          msg="relctl status on the node: %s" % ("; ".join(R.reasons(err)) or "exit %d" % rc))
            return result
        facts = {
            "running": st.get("running"),
            "current": st.get("current"),
            "permanent": st.get("permanent"),
            "releases": st.get("releases") or [],
            "processes": st.get("processes") or [],
            "last_outcome": st.get("last_outcome"),
            "upgrade": st.get("upgrade"),
            "root": st.get("root"),
            "signatures": st.get("signatures"),
        }
        result.update(changed=False, ansible_facts={"reld": facts})
        return result
