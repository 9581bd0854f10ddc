#!/usr/bin/env bash
# End to end: the real relctl on the example root and on broken copies of
# it. Prints TAP.
# Usage: relctl-relup.sh RELCTL SHOP_ROOT
set -u
relctl=$1 shop=$2
work=$(mktemp -d /tmp/reld-e2e-relup-XXXXXX)
trap 'rm -rf "$work"' EXIT
n=0 failed=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
fail() { n=$((n + 1)); failed=$((failed + 1)); echo "not ok $n - $1"; shift; for l in "$@"; do echo "# $l"; done; }

# run NAME WANT_STATUS ARGS...: runs relctl, keeps stdout/stderr in $out/$err
run() {
    local want=$1; shift
    "$relctl" "$@" >"$work/out" 2>"$work/err"
    status=$?
    out=$(cat "$work/out") err=$(cat "$work/err")
    [ "$status" -eq "$want" ]
}
check() { # NAME CONDITION...
    local name=$1; shift
    if "$@"; then ok "$name"; else fail "$name" "status $status" "stdout: ${out:0:400}" "stderr: ${err:0:400}"; fi
}
contains() { [[ $1 == *"$2"* ]]; }
lines() { printf '%s\n' "$1" | grep -c .; }

echo "TAP version 13"
cp -R "$shop" "$work/root"
root=$work/root

run 0 relup --root "$root" 1.0 2.0
check "relup prints the plan" contains "$out" "relup 1.0 -> 2.0"
check "plan has the advanced code_change of web_handler" contains "$out" 'code_change up: web_handler (extra "v2-state")'
check "derived appup is shown as a warning" contains "$err" "relctl: warning: relup 1.0 -> 2.0 (up): lib/inventory-1.1.0/app.yaml has no appup entry for up from 1.0.0; derived: update inv_store {advanced: null}; add_module inv_cache"
check "removed application stops before its dependency changes" \
    bash -c "grep -n . <<<'$out' | awk '/stop_application legacy_auth/{s=NR} /load inv_store/{l=NR} END{exit !(s && l && s<l)}'"
check "added application starts last, after web and inventory resumed" \
    bash -c "sed -n '/^up/,/^down/p' <<<'$out' | grep -v '^down' | tail -1 | grep -q 'start_application stats'"

run 0 relup --root "$root" --json 1.0 2.0
check "--json is SPEC.md's shape" bash -c "python3 -c 'import json,sys; j=json.load(sys.stdin); assert j[\"from\"]==\"1.0\" and j[\"to\"]==\"2.0\"; assert j[\"up\"][3]=={\"op\":\"point_of_no_return\"}; assert any(i[\"op\"]==\"code_change\" and i[\"modules\"]==[{\"module\":\"web_handler\",\"extra\":\"v2-state\"}] for i in j[\"up\"])' <<<'$out'"
json_before=$out

run 0 relup --root "$root" --write 1.0 2.0
check "--write stores releases/2.0/relup.yaml" test -s "$root/releases/2.0/relup.yaml"
run 0 relup --root "$root" --json 1.0 2.0
check "a stored relup is used, same plan" test "$out" = "$json_before"
check "a stored relup is used, nothing derived" test -z "$err"
run 0 relup --root "$root" 1.0 2.0
check "the readable plan says it is stored" contains "$out" "(stored in releases/2.0/relup.yaml)"

echo '{from: "1.0", to: "2.0", up: [{op: load, module: web_handler, pre_purge: brutal_purge, post_purge: brutal_purge}, {op: point_of_no_return}], down: [{op: point_of_no_return}]}' >"$root/releases/2.0/relup.yaml"
run 1 relup --root "$root" 1.0 2.0
check "a bad stored relup is refused" contains "$err" "relctl: releases/2.0/relup.yaml: up: instruction 1: load before point_of_no_return"
rm "$root/releases/2.0/relup.yaml"

run 1 relup --root "$root" --no-derive 1.0 2.0
check "--no-derive refuses a missing appup entry as OTP does" contains "$err" "relctl: relup 1.0 -> 2.0 (up): lib/inventory-1.1.0/app.yaml has no appup entry for up from 1.0.0"

run 1 relup --root "$root" 1.0 9.9
check "unknown release: exit 1, one line" bash -c "[ $(lines "$err") -eq 1 ] && [[ '$err' == 'relctl: release 9.9 is not in '* ]]"

cp "$root/lib/web-2.0.1/app.yaml" "$work/web.yaml"
sed -i 's/dep_mods: \[web_router\]/dep_mods: [kv_lib]/' "$root/lib/web-2.0.1/app.yaml"
run 1 relup --root "$root" 1.0 2.0
check "unknown dep_mods module: file:line:col" contains "$err" "relctl: lib/web-2.0.1/app.yaml:25:22: unknown module 'kv_lib' in dep_mods"
cp "$work/web.yaml" "$root/lib/web-2.0.1/app.yaml"

printf 'name: web\nvsn: "2.0.1"\nmodules: [web_handler\n' >"$root/lib/web-2.0.1/app.yaml"
run 1 relup --root "$root" 1.0 2.0
check "malformed YAML: position, exit 1" contains "$err" "relctl: lib/web-2.0.1/app.yaml:4:1: did not find expected ',' or ']'"
cp "$work/web.yaml" "$root/lib/web-2.0.1/app.yaml"

ln -sf /etc/hostname "$root/lib/web-2.0.1/modules/web_handler.so"
run 1 relup --root "$root" 1.0 2.0
check "module symlinked out of the app directory is refused" contains "$err" "module file 'modules/web_handler.so' resolves outside the application's directory"

run 2 relup --root "$root" 1.0
check "usage error: exit 2" contains "$err" "relctl: relup takes two release versions"
run 2 frobnicate
check "unknown command: exit 2" contains "$err" "relctl: unknown command 'frobnicate'"
run 0 --help
check "--help" contains "$out" "relup [--root DIR]"

echo "1..$n"
[ "$failed" -eq 0 ]
