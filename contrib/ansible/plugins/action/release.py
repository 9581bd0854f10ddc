# -*- coding: utf-8 -*-
# reld.fleet.release: brings the node to a release. It runs on the
# controller and speaks to relctl on the node through the task's
# connection; a tarball on the controller is streamed as relctl's standard
# input (no copy step, no path on the node). Documentation and return
# values: plugins/modules/release.py.
from __future__ import annotations

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.text.converters import to_native
from ansible.plugins.action import ActionBase

from ansible_collections.reld.fleet.plugins.plugin_utils import relctl as R

ARGUMENT_SPEC = dict(
    src=dict(type="path"),
    version=dict(type="str"),
    signature=dict(type="path"),
    commit=dict(type="bool", default=True),
    wait=dict(type="bool", default=True),
    min_healthy_ms=dict(type="int"),
    health_timeout_ms=dict(type="int"),
    rehearse=dict(type="bool", default=False),
    allow_downgrade=dict(type="bool", default=False),
    socket=dict(type="str"),
    relctl=dict(type="str", default="relctl"),
)


class ActionModule(ActionBase):
    TRANSFERS_FILES = False  # streamed by run(), never copied
    _supports_check_mode = True
    _supports_async = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        _, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC, required_one_of=[["src", "version"]],
                                              required_by={"signature": "src"})
        relctl, socket = args["relctl"], args["socket"]
        src, vsn = None, args["version"]
        if args["src"]:
            try:
                src = self._find_needle("files", args["src"])
                in_tarball = R.tarball_version(src)
            except (AnsibleActionFail, OSError, ValueError) as e:
                raise AnsibleActionFail("src: %s" % to_native(e))
            if vsn and vsn != in_tarball:
                raise AnsibleActionFail("src %s holds release %s, not version %s" % (args["src"], in_tarball, vsn))
            vsn = in_tarball

        # Where the node is: one status call decides whether anything is to do.
        rc, out, err = R.run(self, relctl, socket, ["status", "--json"])
        st = R.reply(out)
        if rc != 0 or st is None:
            result.update(failed=True, outcome="error", rc=rc, release=vsn, reasons=R.reasons(err),
                          msg="relctl status on the node: %s" % ("; ".join(R.reasons(err)) or "exit %d" % rc))
            return result
        before = {"running": st.get("running"), "permanent": st.get("permanent")}
        result.update(release=vsn, previous=before)
        if st.get("running") == vsn and (not args["commit"] or st.get("permanent") == vsn):
            result.update(changed=False, outcome="unchanged", running=vsn, permanent=st.get("permanent"),
                          msg="release %s already runs%s" % (vsn, ", permanent" if args["commit"] else ""))
            return result
        on_node = vsn in [r.get("vsn") for r in st.get("releases") or []]

        flags = ["--json"]
        if self._task.check_mode:
            if not on_node:
                # reld plans only from an unpacked release, and unpacking is a change.
                result.update(changed=True, outcome="dry_run",
                              msg="release %s is not on the node: it would be unpacked, then installed" % vsn)
                return result
            flags.append("--dry-run")
        else:
            flags += ["--commit"] if args["commit"] else []
            flags += [] if args["wait"] else ["--no-wait"]
        if args["min_healthy_ms"] is not None:
            flags += ["--min-healthy", str(args["min_healthy_ms"])]
        if args["health_timeout_ms"] is not None:
            flags += ["--health-timeout", str(args["health_timeout_ms"])]
        if args["rehearse"]:
            flags.append("--rehearse")

        in_data = None
        if on_node or not src:
            target = vsn  # already unpacked (or only a version given: reld says whether it knows it)
        else:
            # The stream relctl install - reads: the signature's text, then the tarball.
            try:
                sig = R.signature_text(args["signature"] or src + ".minisig", args["signature"] is not None)
                with open(src, "rb") as f:
                    in_data = (sig or b"") + f.read()
            except (OSError, ValueError) as e:
                raise AnsibleActionFail(to_native(e))
            target = "-"
            if args["allow_downgrade"]:
                flags.append("--allow-downgrade")
        rc, out, err = R.run(self, relctl, socket, ["install"] + flags + [target], in_data=in_data)
        rep = R.reply(out) or {}
        why = R.reasons(err)
        outcome = rep.get("outcome") or R.EXIT_OUTCOMES.get(rc, "error")
        result.update(rc=rc, outcome=outcome, reply=rep, reasons=why, warnings=R.warnings(err),
                      unpacked=in_data is not None)
        if rc == 0:
            if self._task.check_mode:
                result.update(changed=outcome != "unchanged", dry_run=rep,
                              msg="dry run: release %s would be installed (%s)" % (vsn, outcome))
                return result
            result.update(changed=outcome != "unchanged", running=rep.get("installed", vsn),
                          permanent=vsn if outcome == "committed" else before["permanent"],
                          msg="release %s: %s" % (vsn, outcome))
            return result
        # reld's outcome is the task's failure: refused (nothing changed),
        # rolled_back (reld went back by itself), needs_operator.
        text = {
            "refused": "refused, nothing changed",
            "rolled_back": "rolled back by itself to %s" % (before["running"] or "nothing"),
            "needs_operator": "NEEDS AN OPERATOR: the way back failed or the release before is not healthy either",
        }.get(outcome, outcome)
        reason = "; ".join(why) or rep.get("reason") or rep.get("error") or "relctl exited %d" % rc
        result.update(failed=True, changed=outcome in ("rolled_back", "needs_operator") or in_data is not None,
                      msg="release %s: %s: %s" % (vsn, text, reason))
        return result
