#!/usr/bin/env bash
# Installs stay inside their prefix (issue 17): meson's install plan
# (`meson introspect --installed`, what `meson install` follows) of this
# build, of a new configuration with a private --prefix, and with
# -Dsystemdunitdir/-Dtmpfilesdir; only the prefix /usr puts the unit and
# the tmpfiles.d entry where systemd's pkg-config says. Configures only
# (about 3 s each), builds nothing. Prints TAP.
# Usage: install-prefix.sh SOURCE_DIR BUILD_DIR
set -uo pipefail
src=$1 build=$2
n=0 failed=0
tap() { # OK DESCRIPTION [DETAIL]
    n=$((n + 1))
    if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=1; [ -n "${3:-}" ] && sed 's/^/# /' <<<"$3"; fi
}
work=$(mktemp -d /tmp/reld-prefix.XXXXXX)
trap 'rm -rf "$work"' EXIT

# The destinations of a build's install plan, one a line.
plan() {
    meson introspect --installed "$1" | python3 -c 'import json, sys; print("\n".join(sorted(json.load(sys.stdin).values())))'
}
# The option $2 of build $1.
option() {
    meson introspect --buildoptions "$1" | python3 -c 'import json, sys
print(next(o["value"] for o in json.load(sys.stdin) if o["name"] == sys.argv[1]))' "$2"
}
outside() { # PREFIX: the lines of stdin not under PREFIX
    grep -v "^$1/" || true
}

echo "TAP version 13"
prefix=$(option "$build" prefix)
out=$(plan "$build")
bad=$(outside "$prefix" <<<"$out")
tap "$([ -n "$out" ] && [ -z "$bad" ] && echo 0 || echo 1)" \
    "this build (prefix $prefix): all $(wc -l <<<"$out") files under it, the unit and tmpfiles.d entry too" "$bad"

setup() { # DIR ARGS...
    local dir=$1; shift
    meson setup "$dir" "$src" -Dtests=false "$@" >"$dir.log" 2>&1 || { cat "$dir.log"; return 1; }
}
if setup "$work/b1" --prefix="$work/p"; then
    out=$(plan "$work/b1")
    bad=$(outside "$work/p" <<<"$out")
    unit=$(grep -c "^$work/p/lib/systemd/system/reld.service$" <<<"$out")
    tmpf=$(grep -c "^$work/p/lib/tmpfiles.d/reld.conf$" <<<"$out")
    tap "$([ -z "$bad" ] && [ "$unit" = 1 ] && [ "$tmpf" = 1 ] && echo 0 || echo 1)" \
        "--prefix=DIR: all $(wc -l <<<"$out") files under DIR (DIR/lib/systemd/system/reld.service, DIR/lib/tmpfiles.d/reld.conf, DIR/etc/reld/reld.yaml)" "$bad$out"
else
    tap 1 "meson setup --prefix=DIR"
fi
if setup "$work/b2" --prefix="$work/p" -Dsystemdunitdir="$work/p/units" -Dtmpfilesdir="$work/p/tmpf"; then
    out=$(plan "$work/b2")
    tap "$(grep -qx "$work/p/units/reld.service" <<<"$out" && grep -qx "$work/p/tmpf/reld.conf" <<<"$out" && echo 0 || echo 1)" \
        "-Dsystemdunitdir and -Dtmpfilesdir say where the unit and the tmpfiles.d entry go" "$out"
else
    tap 1 "meson setup -Dsystemdunitdir -Dtmpfilesdir"
fi
if pkg-config --exists systemd; then
    if setup "$work/b3" --prefix=/usr; then
        out=$(plan "$work/b3")
        want_unit=$(pkg-config --variable=systemdsystemunitdir systemd)/reld.service
        want_tmpf=$(pkg-config --variable=tmpfilesdir systemd)/reld.conf
        tap "$(grep -qx "$want_unit" <<<"$out" && grep -qx "$want_tmpf" <<<"$out" && grep -qx /etc/reld/reld.yaml <<<"$out" && echo 0 || echo 1)" \
            "--prefix=/usr: $want_unit and $want_tmpf (systemd's pkg-config), /etc/reld/reld.yaml" "$out"
    else
        tap 1 "meson setup --prefix=/usr"
    fi
else
    n=$((n + 1)); echo "ok $n - --prefix=/usr # SKIP no systemd.pc (pkg-config)"
fi
echo "1..$n"
exit $failed
