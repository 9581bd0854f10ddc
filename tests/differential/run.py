#!/usr/bin/env python3
"""Differential test of reld's relup engine against Erlang/OTP.

Generates random release pairs in both formats (a reld root with
release.yaml/app.yaml, and OTP .rel/.app/.appup files), computes every relup
with Erlang/OTP (otp_relup.escript, one VM for all cases) and with
`relctl relup --json --no-derive`, and compares instruction by instruction.
Prints TAP: one result per case.

Where OTP's result depends on ETS hash order (several valid topological
orders of a dep_mods component), no comparison is possible, so dep_mods are
generated as chains (plus chords and back edges, which make cycles): every
weak component then has exactly one topological order of its strong
components.

Usage: run.py --relctl PATH [--cases N] [--seed S] [--keep DIR]
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

ESCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "otp_relup.escript")
OTP_BASE_APPS = [("kernel", "8.5.3"), ("stdlib", "4.2"), ("sasl", "4.2")]
ERTS = "13.1.5"


def otp_versions():
    """The kernel/stdlib/sasl/erts versions installed here (the .rel needs them)."""
    out = subprocess.run(
        ["erl", "-noshell", "-eval",
         'io:format("~s", [erlang:system_info(version)]), '
         '[begin application:load(A), {ok, V} = application:get_key(A, vsn), io:format(" ~s", [V]) end '
         '|| A <- [kernel, stdlib, sasl]], halt().'],
        capture_output=True, text=True, check=True).stdout.split()
    return out[0], list(zip(["kernel", "stdlib", "sasl"], out[1:]))


class Case:
    def __init__(self, rng, idx):
        self.rng = rng
        self.idx = idx
        self.errors_expected = False
        n = rng.randint(1, 6)
        self.names = [f"a{i}" for i in range(n)]
        self.deps = {a: [b for b in self.names[:i] if rng.random() < 0.35]
                     for i, a in enumerate(self.names)}
        self.old = self.closed_subset(0.85)
        self.new = self.closed_subset(0.85)
        self.same_set = set(self.old) == set(self.new)
        self.vsn_old = {a: f"1.0.{rng.randint(0, 3)}" for a in self.old}
        self.vsn_new = {}
        for a in self.new:
            if a in self.old and rng.random() < 0.2:
                self.vsn_new[a] = self.vsn_old[a]
            else:
                self.vsn_new[a] = f"2.{rng.randint(0, 2)}.0"
        self.mods_old, self.mods_new = {}, {}
        for a in self.names:
            pool = [f"{a}_m{k}" for k in range(7)]
            old = [m for m in pool if rng.random() < 0.5] or [pool[0]]
            new = [m for m in old if rng.random() < 0.8] + [m for m in pool if m not in old and rng.random() < 0.3]
            if a in self.old and a in self.new and self.vsn_old[a] == self.vsn_new[a]:
                new = list(old)
            self.mods_old[a], self.mods_new[a] = old, new or [pool[6]]
        self.appups = {a: self.make_appup(a) for a in self.new
                       if a in self.old and self.vsn_old[a] != self.vsn_new[a]}
        self.link_chains_across_apps()

    def closed_subset(self, p):
        chosen = []
        for a in self.names:
            if self.rng.random() < p and all(d in chosen for d in self.deps[a]):
                chosen.append(a)
        return chosen or [self.names[0]]

    def make_appup(self, a):
        rng = self.rng
        old, new = self.mods_old[a], self.mods_new[a]
        kind = rng.random()
        if kind < 0.05:
            return {"up": [("restart_application", a)], "down": [("restart_application", a)], "chains": []}
        up, down = [], []
        for m in new:
            if m not in old:
                up.append({"op": "add_module", "mod": m})
                down.append({"op": "delete_module", "mod": m})
                continue
            r = rng.random()
            if r < 0.45:
                i = {"op": "update", "mod": m}
                if rng.random() < 0.6:
                    i["extra"] = rng.choice([f"x{rng.randint(0, 9)}", rng.randint(0, 99)])
                if rng.random() < 0.25:
                    i["timeout"] = rng.choice([1000, 5000, "infinity"])
                if rng.random() < 0.2:
                    i["pre"] = "soft_purge"
                if rng.random() < 0.2:
                    i["post"] = "soft_purge"
                up.append(i)
                down.append(dict(i))
            elif r < 0.75:
                i = {"op": "load_module", "mod": m}
                if rng.random() < 0.2:
                    i["pre"] = "soft_purge"
                up.append(i)
                down.append(dict(i))
        for m in old:
            if m not in new:
                up.append({"op": "delete_module", "mod": m})
                down.append({"op": "add_module", "mod": m})
        if rng.random() < 0.1 and new:
            ms = rng.sample(new, min(2, len(new)))
            up.append({"op": "restart", "mods": ms})
            down.append({"op": "restart", "mods": ms})
        # dep_mods: chains over a shuffled selection, in both directions alike.
        targets = [i["mod"] for i in up if isinstance(i, dict) and "mod" in i]
        rng.shuffle(targets)
        chains, k = [], 0
        while k < len(targets):
            size = rng.randint(1, 4)
            chains.append(targets[k:k + size])
            k += size
        deps = {}
        for ch in chains:
            for j in range(len(ch) - 1):
                deps.setdefault(ch[j], []).append(ch[j + 1])
            for j in range(len(ch)):
                for q in range(len(ch)):
                    if q not in (j, j + 1) and rng.random() < 0.15:
                        deps.setdefault(ch[j], []).append(ch[q])
        # Deliberate errors, now and then: both sides must refuse.
        e = rng.random()
        if e < 0.03 and targets:
            deps.setdefault(targets[0], []).append(f"{a}_m9")  # no instruction of its own
            self.errors_expected = True
        elif e < 0.06 and up and isinstance(up[0], dict) and "mod" in up[0]:
            up.append({"op": "load_module", "mod": up[0]["mod"]})  # two instructions
            self.errors_expected = True
        for lst in (up, down):
            for i in lst:
                if isinstance(i, dict) and i.get("mod") in deps:
                    i["deps"] = list(dict.fromkeys(deps[i["mod"]]))
        return {"up": up, "down": down, "chains": chains, "deps": deps, "missing": e >= 0.06 and e < 0.08}

    def link_chains_across_apps(self):
        """Joins the last module of one app's chain to the first of a chain in
        an app it depends on, each chain at most once in each role, so joined
        chains stay chains."""
        used_out, used_in = set(), set()
        for a, au in self.appups.items():
            for d in self.deps[a]:
                if d not in self.appups or self.rng.random() > 0.4:
                    continue
                src = [c for c in au.get("chains", []) if c[-1] not in used_out and c[0] not in used_in]
                dst = [c for c in self.appups[d].get("chains", []) if c[0] not in used_in and c[-1] not in used_out]
                if not src or not dst:
                    continue
                s, t = self.rng.choice(src), self.rng.choice(dst)
                used_out.add(s[-1])
                used_in.add(t[0])
                used_out.add(t[-1])  # t cannot also feed back into s
                used_in.add(s[0])
                for lst in (au["up"], au["down"]):
                    for i in lst:
                        if isinstance(i, dict) and i.get("mod") == s[-1]:
                            i.setdefault("deps", []).append(t[0])

    # ---- writing ---------------------------------------------------------

    def appup_version_match(self, a, vsn):
        """An entry matching vsn: the exact version or a regex, sometimes
        behind an entry that does not match."""
        r = self.rng.random()
        if r < 0.5:
            return [(vsn, None)]
        if r < 0.8:
            return [("9.9.9", None), (None, vsn.split(".")[0] + r"\.[0-9]+\..*")]
        return [(None, r"1\.0\.[0-9]+")]

    def write(self, d):
        os.makedirs(d)
        root, otp = os.path.join(d, "root"), os.path.join(d, "otp")
        for rel, apps, vsns in (("1", self.old, self.vsn_old), ("2", self.new, self.vsn_new)):
            os.makedirs(f"{root}/releases/{rel}")
            with open(f"{root}/releases/{rel}/release.yaml", "w") as f:
                f.write(f'release: gen\nvsn: "{rel}"\napplications:\n')
                for a in apps:
                    f.write(f'  - {{name: {a}, vsn: "{vsns[a]}"}}\n')
            os.makedirs(otp, exist_ok=True)
            with open(f"{otp}/rel{rel}.rel", "w") as f:
                base = ", ".join(f'{{{n}, "{v}"}}' for n, v in OTP_BASE_APPS)
                ours = "".join(f', {{{a}, "{vsns[a]}"}}' for a in apps)
                f.write(f'{{release, {{"gen", "{rel}"}}, {{erts, "{ERTS}"}}, [{base}{ours}]}}.\n')
        written = set()
        for apps, vsns, mods in ((self.old, self.vsn_old, self.mods_old), (self.new, self.vsn_new, self.mods_new)):
            for a in apps:
                if (a, vsns[a]) in written:
                    continue
                written.add((a, vsns[a]))
                self.write_app(root, otp, a, vsns[a], mods[a], holder=(vsns is self.vsn_new))
        mode = "full" if self.same_set else "ordered"
        with open(f"{otp}/meta.term", "w") as f:
            f.write(f'{{{mode}, "rel2", "rel1"}}.\n')

    def write_app(self, root, otp, a, vsn, mods, holder):
        app_dir = f"{root}/lib/{a}-{vsn}"
        os.makedirs(f"{app_dir}/modules")
        for m in mods:
            with open(f"{app_dir}/modules/{m}.so", "w") as f:
                f.write(f"{m} {vsn}\n")
        doc = {"name": a, "vsn": vsn, "applications": self.deps[a], "modules": mods}
        otp_up, otp_down = [], []
        au = self.appups.get(a) if holder else None
        if au:
            doc["appup"] = {"up": [], "down": []}
            old_vsn = self.vsn_old[a]
            entries = self.appup_version_match(a, old_vsn)
            if au.get("missing"):
                entries = [("9.9.9", None)]
                self.errors_expected = True
            for direction, key in (("up", "from"), ("down", "to")):
                for exact, regex in entries:
                    ours = [self.yaml_instr(i) for i in au[direction]]
                    doc["appup"][direction].append({key: exact if exact else {"regex": regex}, "instructions": ours})
                    theirs = "[" + ", ".join(self.erl_instr(i) for i in au[direction]) + "]"
                    ver = f'"{exact}"' if exact else '<<"' + regex.replace("\\", "\\\\") + '">>'
                    (otp_up if direction == "up" else otp_down).append(f"{{{ver}, {theirs}}}")
        with open(f"{app_dir}/app.yaml", "w") as f:
            json.dump(doc, f, indent=2)  # JSON is YAML
        ebin = f"{otp}/lib/{a}-{vsn}/ebin"
        os.makedirs(ebin)
        with open(f"{ebin}/{a}.app", "w") as f:
            f.write(f'{{application, {a}, [{{vsn, "{vsn}"}}, {{description, "gen"}}, '
                    f'{{modules, [{", ".join(mods)}]}}, {{registered, []}}, '
                    f'{{applications, [{", ".join(["kernel", "stdlib"] + self.deps[a])}]}}]}}.\n')
        with open(f"{ebin}/{a}.appup", "w") as f:
            f.write(f'{{"{vsn}", [{", ".join(otp_up)}], [{", ".join(otp_down)}]}}.\n')

    @staticmethod
    def yaml_instr(i):
        if isinstance(i, tuple):
            return {i[0]: i[1]}
        if i["op"] == "restart":
            return {"restart": i["mods"]}
        y = {i["op"]: i["mod"]}
        if "extra" in i:
            y["change"] = {"advanced": i["extra"]}
        if "timeout" in i:
            y["timeout_ms"] = i["timeout"]
        if "pre" in i:
            y["pre_purge"] = i["pre"]
        if "post" in i:
            y["post_purge"] = i["post"]
        if i.get("deps"):
            y["dep_mods"] = i["deps"]
        return y

    @staticmethod
    def erl_instr(i):
        if isinstance(i, tuple):
            return f"{{{i[0]}, {i[1]}}}"
        if i["op"] == "restart":
            ms = ", ".join(i["mods"])
            return f"{{stop, [{ms}]}}, {{start, [{ms}]}}"
        deps = "[" + ", ".join(i.get("deps", [])) + "]"
        pre, post = i.get("pre", "brutal_purge"), i.get("post", "brutal_purge")
        if i["op"] == "update":
            e = i.get("extra")
            change = "soft" if "extra" not in i else (
                f'{{advanced, <<"{e}">>}}' if isinstance(e, str) else f"{{advanced, {e}}}")
            if "timeout" in i:
                return f'{{update, {i["mod"]}, {i["timeout"]}, {change}, {pre}, {post}, {deps}}}'
            return f'{{update, {i["mod"]}, {change}, {pre}, {post}, {deps}}}'
        if i["op"] == "load_module":
            return f'{{load_module, {i["mod"]}, {pre}, {post}, {deps}}}'
        return f'{{{i["op"]}, {i["mod"]}, {deps}}}'


def fmt_ours(instr):
    op = instr["op"]
    def mods(ms):
        out = []
        for m in ms:
            if isinstance(m, dict):
                out.append(f'{m["module"]}:{m["timeout_ms"]}')
            else:
                out.append(m)
        return "[" + ",".join(out) + "]"
    if op == "load_object_code":
        return f'load_object_code {instr["app"]} {instr["vsn"]} {mods(instr["modules"])}'
    if op in ("load", "remove"):
        return f'{op} {instr["module"]} {instr["pre_purge"]} {instr["post_purge"]}'
    if op == "code_change":
        items = ",".join(f'{m["module"]}={json.dumps(m["extra"])}' for m in instr["modules"])
        return f'code_change {instr["mode"]} [{items}]'
    if op in ("start_application", "stop_application", "unload_application"):
        return f'{op} {instr["app"]}'
    if op == "point_of_no_return":
        return op
    return f'{op} {mods(instr["modules"])}'


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--relctl", required=True)
    ap.add_argument("--cases", type=int, default=200)
    ap.add_argument("--seed", type=int, default=int(os.environ.get("DIFF_SEED", "20261122")))
    ap.add_argument("--keep")
    args = ap.parse_args()
    global ERTS, OTP_BASE_APPS
    ERTS, OTP_BASE_APPS = otp_versions()

    work = args.keep or tempfile.mkdtemp(prefix="reld-diff-")
    if args.keep:
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work)
    rng = random.Random(args.seed)
    cases = []
    for n in range(args.cases):
        c = Case(rng, n)
        d = os.path.join(work, f"case{n:04d}")
        c.write(d)
        cases.append((c, d))
    with open(os.path.join(work, "cases.txt"), "w") as f:
        f.write("\n".join(d for _, d in cases) + "\n")
    subprocess.run(["escript", ESCRIPT, os.path.join(work, "cases.txt")], check=True)

    print("TAP version 13")
    print(f"1..{len(cases)}")
    failed = 0
    kinds = {"full": 0, "ordered": 0, "error": 0}
    for n, (c, d) in enumerate(cases, 1):
        with open(os.path.join(d, "otp.txt")) as f:
            otp = f.read()
        p = subprocess.run([args.relctl, "relup", "--root", os.path.join(d, "root"), "--json", "--no-derive", "1", "2"],
                           capture_output=True, text=True)
        mode = "full" if c.same_set else "ordered"
        if otp.startswith("error"):
            kinds["error"] += 1
            ok = p.returncode == 1 and p.stderr.startswith("relctl: ") and "Traceback" not in p.stderr
            detail = f"OTP refused ({otp.splitlines()[1][:120]}); relctl exit {p.returncode}: {p.stderr.strip()[:200]}"
        else:
            kinds[mode] += 1
            if p.returncode != 0:
                ok, detail = False, f"relctl failed: {p.stderr.strip()[:300]}"
            else:
                j = json.loads(p.stdout)
                ours = "ok\n--up\n" + "".join(fmt_ours(i) + "\n" for i in j["up"]) + \
                       "--down\n" + "".join(fmt_ours(i) + "\n" for i in j["down"])
                ok = ours == otp
                detail = ""
                if not ok:
                    import difflib
                    detail = "".join(difflib.unified_diff(otp.splitlines(True), ours.splitlines(True),
                                                          "otp", "reld", n=2))
        print(f"{'ok' if ok else 'not ok'} {n} - case{n - 1:04d} {mode}{' (error expected)' if c.errors_expected else ''}")
        if not ok:
            failed += 1
            for line in detail.splitlines():
                print("# " + line)
            print(f"# case kept in {d}")
    print(f"# compared {kinds['full']} make_relup cases, {kinds['ordered']} translate_scripts cases, "
          f"{kinds['error']} refused by both")
    if not failed and not args.keep:
        shutil.rmtree(work)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
