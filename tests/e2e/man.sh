#!/usr/bin/env bash
# The man pages (issue 17): groff has nothing to warn about in any of them
# (man --warnings), and relctl.1 names every command relctl dispatches and
# every option its option tables (relctl.c, relctl-pack.c, top.c) and its own
# parsing know. Prints TAP.
# Usage: man.sh SOURCE_DIR RELCTL
set -uo pipefail
src=$1 relctl=$2
n=0 failed=0
tap() { # OK DESCRIPTION [DETAIL]
    n=$((n + 1))
    if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=1; [ -n "${3:-}" ] && sed 's/^/# /' <<<"$3"; fi
}
echo "TAP version 13"
pages=(docs/relctl.1 docs/reld.8 docs/reld.yaml.5 docs/reld-app.yaml.5)
if ! command -v man >/dev/null; then
    for p in "${pages[@]}"; do n=$((n + 1)); echo "ok $n - $p # SKIP no man (man-db)"; done
    echo "1..$n"; exit 0
fi
for p in "${pages[@]}"; do
    warn=$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -E UTF-8 -l "$src/$p" 2>&1 >/dev/null)
    rc=$?
    lines=$(LC_ALL=C.UTF-8 MANWIDTH=80 man -E UTF-8 -l "$src/$p" 2>/dev/null | wc -l)
    tap "$([ $rc = 0 ] && [ -z "$warn" ] && [ "$lines" -gt 40 ] && echo 0 || echo 1)" \
        "man --warnings -l $p: no warning ($lines lines)" "rc $rc: $warn"
done

page=$(LC_ALL=C.UTF-8 MANWIDTH=200 man -E UTF-8 -l "$src/docs/relctl.1" 2>/dev/null | col -b)
# The commands: relctl.c's dispatch, strcmp(a[0], "CMD").
cmds=$(grep -o 'strcmp(a\[0\], "[a-z-]*")' "$src/cli/relctl.c" | sed 's/.*"\(.*\)")/\1/' | sort -u)
missing=$(for c in $cmds; do grep -qE "^ {7}$c( |,|$)|, $c " <<<"$page" || echo "$c"; done)
tap "$([ -n "$cmds" ] && [ -z "$missing" ] && echo 0 || echo 1)" \
    "relctl.1 describes every command: $(echo $cmds)" "missing: $missing"
# The options: {"NAME", ...} of every option table, and relctl's own.
opts=$( (grep -ho '{"[a-z-]*", *\(no\|required\|optional\)_argument' "$src/cli/relctl.c" "$src/cli/relctl-pack.c" \
    $(ls "$src/cli/top.c" 2>/dev/null) |
    sed 's/{"\([a-z-]*\)".*/\1/'; echo socket; echo version; echo watch) | sort -u)
missing=$(for o in $opts; do grep -q -- "--$o\b" <<<"$page" || echo "--$o"; done)
tap "$([ -n "$opts" ] && [ -z "$missing" ] && echo 0 || echo 1)" \
    "relctl.1 describes every option ($(wc -w <<<"$opts"))" "missing: $missing"
missing=""
for s in "EXIT STATUS" "ENVIRONMENT" "FILES" "EXAMPLES" "JSON OUTPUT"; do
    grep -qx "$s" <<<"$page" || missing="$missing $s"
done
tap "$([ -z "$missing" ] && echo 0 || echo 1)" "relctl.1 has EXIT STATUS, ENVIRONMENT, FILES, EXAMPLES, JSON OUTPUT" "missing:$missing"
# relctl --help names the same commands.
help=$("$relctl" --help)
missing=$(for c in $cmds; do grep -qE "^  +$c\b|/ $c\b" <<<"$help" || echo "$c"; done)
tap "$([ -z "$missing" ] && echo 0 || echo 1)" "relctl --help lists every command" "missing: $missing"
echo "1..$n"
exit $failed
