#!/usr/bin/env bash
# relctl's everyday conventions (issue 17) against a real reld: --version,
# options anywhere on the line, the JSON error object of a failed command,
# column headers, which release runs when none is current, colour only on
# a terminal (NO_COLOR honoured), no control code into a pipe (status
# --watch included). Prints TAP.
# Usage: relctl-cli.sh RELCTL RELD
set -uo pipefail
relctl=$(realpath "$1") reld=$(realpath "$2")
n=0 failed=0
tap() { # OK DESCRIPTION [DETAIL]
    n=$((n + 1))
    if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=1; [ -n "${3:-}" ] && sed 's/^/# /' <<<"$3"; fi
}
ok() { [ "$@" ] && echo 0 || echo 1; }
work=$(mktemp -d /tmp/reld-cli.XXXXXX)
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
echo "TAP version 13"
S=$work/reld.sock
"$reld" --root "$work/root" --socket "$S" >"$work/reld.log" 2>&1 &
pid=$!
for _ in $(seq 100); do [ -S "$S" ] && break; sleep 0.05; done
# A release of one plain process that stays up.
d=$work/src
mkdir -p "$d/releases/1.0" "$d/lib/a-1.0"
printf 'release: plain\nvsn: "1.0"\napplications:\n  - {name: a, vsn: "1.0"}\n' >"$d/releases/1.0/release.yaml"
printf 'name: a\nvsn: "1.0"\napplications: []\nprocesses:\n  - {name: p, exec: /bin/sh, args: ["-c", "exec sleep 600"], shutdown_ms: 500}\n' >"$d/lib/a-1.0/app.yaml"
tar -czf "$work/one.tar.gz" -C "$d" releases lib
json_get() { python3 -c 'import json, sys; d = json.load(sys.stdin); print(eval(sys.argv[1], {}, {"d": d}))' "$1"; }

v=$("$relctl" --version) r=$("$reld" --version)
tap "$(ok "${v#relctl }" = "${r#reld }" -a -n "${v#relctl }" -a "$v" != "${v#relctl [0-9]}")" \
    "relctl --version and reld --version: '$v', '$r' (meson's project version)"

out=$("$relctl" --json status --socket "$S" 2>&1)
tap "$(ok "$(json_get 'd["root"]' <<<"$out" 2>/dev/null)" = "$work/root")" \
    "relctl --json status --socket P: options before and after the command" "$out"
out=$("$relctl" --socket="$S" releases 2>&1)
tap "$(ok "$out" = "no releases")" "relctl --socket=P releases: no header without releases" "$out"

out=$("$relctl" install "$work/missing.tar.gz" --socket "$S" 2>&1)
rc=$?
tap "$(ok $rc = 2 -a "$out" = "relctl: install: $work/missing.tar.gz: No such file or directory")" \
    "relctl install /missing.tar.gz: no such file (exit 2)" "exit $rc: $out"
out=$("$relctl" --json remove 9.9 --socket "$S" 2>/dev/null)
rc=$?
tap "$(ok $rc = 1 -a "$(json_get '[d["ok"], d["exit_status"], d["error"], d["errors"]]' <<<"$out" 2>&1)" = \
    "[False, 1, 'release 9.9 is not known', ['release 9.9 is not known']]")" \
    "relctl --json remove 9.9 (refused): exit 1 and the JSON error object on stdout" "exit $rc: $out"
out=$("$relctl" --json --socket "$work/nowhere" status 2>/dev/null)
rc=$?
tap "$(ok $rc = 1 -a "$(json_get 'd["error"]' <<<"$out" 2>&1)" = "cannot reach reld at $work/nowhere: No such file or directory")" \
    "relctl --json status with no reld: exit 1, the JSON error object" "exit $rc: $out"
out=$("$relctl" --json nonesuch 2>"$work/err")
rc=$?
tap "$(ok $rc = 2 -a -z "$out" -a "$(cat "$work/err")" = "relctl: unknown command 'nonesuch' (see relctl --help)")" \
    "a usage error with --json: exit 2, its line on stderr, nothing on stdout" "exit $rc: $out $(cat "$work/err")"

out=$("$relctl" --socket "$S" install "$work/one.tar.gz" --min-healthy 0 2>&1)
rc=$?
tap "$(ok $rc = 0)" "relctl --socket P install X --min-healthy 0: options after the operand" "exit $rc: $out"
out=$("$relctl" releases --socket "$S")
tap "$(ok "$(head -1 <<<"$out" | tr -s ' ')" = "VERSION NAME STATE UNPACKED" -a "$(sed -n 2p <<<"$out" | awk '{print $1, $2, $3}')" = "1.0 plain current")" \
    "relctl releases: a header, then one line a release" "$out"
out=$("$relctl" history --socket "$S")
tap "$(ok "$(head -1 <<<"$out" | tr -s ' ')" = "AT EVENT RELEASE DETAIL, BY")" "relctl history: a header" "$out"
st=$("$relctl" --socket "$S" status)
tap "$(ok -n "$(grep -x 'current 1.0' <<<"$st")")" "relctl status: current 1.0" "$st"
# Permanent, the release is no longer current: status says which runs.
"$relctl" --socket "$S" make-permanent >/dev/null
st=$("$relctl" --socket "$S" status)
tap "$(ok -n "$(grep -x 'permanent 1.0' <<<"$st")" -a -n "$(grep -x 'current - (running: 1.0)' <<<"$st")")" \
    "relctl status after make-permanent: current - (running: 1.0)" "$st"

# Colour: on a terminal only, never with NO_COLOR or TERM=dumb.
tty=$(TERM=xterm script -qec "$relctl --socket $S status" /dev/null)
tty_nc=$(NO_COLOR=1 TERM=xterm script -qec "$relctl --socket $S status" /dev/null)
pipe=$(TERM=xterm "$relctl" --socket "$S" status)
tap "$(ok -n "$(grep -F $'\e[32mrunning\e[0m' <<<"$tty")" -a -z "$(grep -F $'\e' <<<"$tty_nc")" -a -z "$(grep -F $'\e' <<<"$pipe")")" \
    "the state in colour on a terminal; none with NO_COLOR=1, none into a pipe" "$(printf '%q\n' "$tty" "$tty_nc" "$pipe")"
watch=$(timeout 3 "$relctl" --socket "$S" status --watch 0.2)
reports=$(grep -c '^relctl status, every' <<<"$watch")
tap "$(ok "$reports" -ge 2 -a -z "$(grep -F $'\e' <<<"$watch")")" \
    "status --watch into a pipe: $reports reports one after the other, no control code" "$(printf '%q' "$watch" | head -c 600)"
watch_tty=$(TERM=xterm timeout 1.5 script -qec "$relctl --socket $S status --watch 0.3" /dev/null 2>/dev/null)
tap "$(ok -n "$(grep -F $'\e[H\e[2J' <<<"$watch_tty")")" "status --watch on a terminal clears the screen" "$(printf '%q' "$watch_tty" | head -c 300)"
echo "1..$n"
exit $failed
