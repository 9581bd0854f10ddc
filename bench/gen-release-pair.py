#!/usr/bin/env python3
"""Generates the relup benchmark input: releases 1 and 2 of N applications
with M modules each, every application upgraded through its appup, with
dep_mods chains of 5 modules (update and load_module alternating) and a
dependency on the previous application and on a few earlier ones.

Writes OUT/root (a reld root: release.yaml, app.yaml, module files) and
OUT/otp (.rel, .app, .appup for systools:make_relup on the same input).

Usage: gen-release-pair.py OUT [--apps N] [--modules M]
"""
import argparse
import os
import random


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--apps", type=int, default=1000)
    ap.add_argument("--modules", type=int, default=20)
    ap.add_argument("--otp-versions", default="13.1.5 8.5.3 4.2 4.2", help="erts kernel stdlib sasl")
    a = ap.parse_args()
    rng = random.Random(1)
    erts, kernel, stdlib, sasl = a.otp_versions.split()
    names = [f"app{i:04d}" for i in range(a.apps)]
    deps = {n: ([names[i - 1]] if i else []) + sorted({names[rng.randrange(i)] for _ in range(2)} - {names[i - 1]} if i > 1 else [])
            for i, n in enumerate(names)}

    root, otp = os.path.join(a.out, "root"), os.path.join(a.out, "otp")
    for rel, vsn in (("1", "1.0.0"), ("2", "2.0.0")):
        os.makedirs(f"{root}/releases/{rel}", exist_ok=True)
        with open(f"{root}/releases/{rel}/release.yaml", "w") as f:
            f.write(f'release: big\nvsn: "{rel}"\napplications:\n')
            f.writelines(f'  - {{name: {n}, vsn: "{vsn}"}}\n' for n in names)
        os.makedirs(otp, exist_ok=True)
        with open(f"{otp}/rel{rel}.rel", "w") as f:
            apps = ", ".join([f'{{kernel, "{kernel}"}}', f'{{stdlib, "{stdlib}"}}', f'{{sasl, "{sasl}"}}'] +
                             [f'{{{n}, "{vsn}"}}' for n in names])
            f.write(f'{{release, {{"big", "{rel}"}}, {{erts, "{erts}"}}, [{apps}]}}.\n')

    for n in names:
        mods = [f"{n}_m{k:02d}" for k in range(a.modules)]
        instrs = []
        for k, m in enumerate(mods):
            dep = [mods[k + 1]] if k % 5 != 4 and k + 1 < len(mods) else []
            kind = "update" if k % 2 == 0 else "load_module"
            instrs.append((kind, m, dep))
        for vsn in ("1.0.0", "2.0.0"):
            d = f"{root}/lib/{n}-{vsn}"
            os.makedirs(f"{d}/modules", exist_ok=True)
            os.makedirs(f"{d}/bin", exist_ok=True)
            for m in mods:
                with open(f"{d}/modules/{m}.so", "w") as f:
                    f.write(f"{m} {vsn}\n")
            with open(f"{d}/bin/{n}", "w") as f:
                f.write("#!/bin/sh\n")
            with open(f"{d}/app.yaml", "w") as f:
                f.write(f'name: {n}\nvsn: "{vsn}"\napplications: [{", ".join(deps[n])}]\n')
                f.write(f'modules: [{", ".join(mods)}]\n')
                f.write(f'processes:\n  - name: {n}\n    exec: bin/{n}\n    modules: [{", ".join(mods)}]\n')
                if vsn == "2.0.0":
                    f.write("appup:\n")
                    for direction, key in (("up", "from"), ("down", "to")):
                        f.write(f'  {direction}:\n    - {key}: "1.0.0"\n      instructions:\n')
                        for kind, m, dep in instrs:
                            extra = ", change: {advanced: [v2, 1]}" if kind == "update" else ""
                            dm = f", dep_mods: [{', '.join(dep)}]" if dep else ""
                            f.write(f"        - {{{kind}: {m}{extra}{dm}}}\n")
            ebin = f"{otp}/lib/{n}-{vsn}/ebin"
            os.makedirs(ebin, exist_ok=True)
            with open(f"{ebin}/{n}.app", "w") as f:
                f.write(f'{{application, {n}, [{{vsn, "{vsn}"}}, {{description, "bench"}}, '
                        f'{{modules, [{", ".join(mods)}]}}, {{registered, []}}, '
                        f'{{applications, [{", ".join(["kernel", "stdlib"] + deps[n])}]}}]}}.\n')
            with open(f"{ebin}/{n}.appup", "w") as f:
                def erl(kind, m, dep):
                    d = "[" + ", ".join(dep) + "]"
                    if kind == "update":
                        return f"{{update, {m}, {{advanced, [v2, 1]}}, {d}}}"
                    return f"{{load_module, {m}, {d}}}"
                body = "[" + ", ".join(erl(*i) for i in instrs) + "]"
                up = f'[{{"1.0.0", {body}}}]' if vsn == "2.0.0" else "[]"
                f.write(f'{{"{vsn}", {up}, {up}}}.\n')


if __name__ == "__main__":
    main()
