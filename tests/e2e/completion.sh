#!/usr/bin/env bash
# relctl's bash completion (issue 17), sourced into this bash as a user's
# shell does (with bash-completion's own functions when installed) and
# asked as readline asks it: COMP_WORDS, COMP_CWORD, COMP_LINE, then the
# COMPREPLY it sets. Release versions come from a real reld on a temporary
# root with two unpacked releases. Also: every option of relctl's tables
# is offered; and zsh's _relctl in a real interactive zsh (compinit, zpty),
# sent "LINE<TAB>": the matches it offers. Prints TAP.
# Usage: completion.sh SOURCE_DIR RELCTL RELD
set -uo pipefail
src=$1 relctl=$(realpath "$2") reld=$(realpath "$3")
comp=$src/packaging/completion/relctl.bash
n=0 failed=0
tap() { # OK DESCRIPTION [DETAIL]
    n=$((n + 1))
    if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=1; [ -n "${3:-}" ] && sed 's/^/# /' <<<"$3"; fi
}
work=$(mktemp -d /tmp/reld-completion.XXXXXX)
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
echo "TAP version 13"

# A release of one plain process (nothing runs: it is only unpacked).
tarball() { # VSN FILE
    local d=$work/src$1
    mkdir -p "$d/releases/$1" "$d/lib/a-$1"
    printf 'release: plain\nvsn: "%s"\napplications:\n  - {name: a, vsn: "%s"}\n' "$1" "$1" >"$d/releases/$1/release.yaml"
    printf 'name: a\nvsn: "%s"\napplications: []\nprocesses:\n  - {name: p, exec: /bin/sh, args: ["-c", "sleep 600"]}\n' \
        "$1" >"$d/lib/a-$1/app.yaml"
    tar -czf "$2" -C "$d" releases lib
}
sock=$work/reld.sock
"$reld" --root "$work/root" --socket "$sock" >"$work/reld.log" 2>&1 &
pid=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
tarball 1.0 "$work/one.tar.gz" && tarball 2.0 "$work/two.tar.gz"
"$relctl" --socket "$sock" unpack "$work/one.tar.gz" >/dev/null &&
    "$relctl" --socket "$sock" unpack "$work/two.tar.gz" >/dev/null ||
    { echo "Bail out! reld did not unpack the releases: $(cat "$work/reld.log")"; exit 1; }

# The shell as a user has it: bash-completion if installed, then relctl's.
PATH=$(dirname "$relctl"):$PATH
unset RELD_SOCKET
bc=/usr/share/bash-completion/bash_completion
if [ -r "$bc" ]; then
    # shellcheck disable=SC1090
    . "$bc"
    with="with bash-completion"
else
    shopt -s extglob
    with="without bash-completion"
fi
# shellcheck disable=SC1090
. "$comp"
complete -p relctl >/dev/null 2>&1
tap $? "sourcing relctl.bash ($with) registers complete -F _relctl relctl"

# COMPREPLY for the line (the cursor at its end), sorted, one a line.
complete_line() {
    local line=$1
    read -r -a COMP_WORDS <<<"$line"
    [[ $line == *" " ]] && COMP_WORDS+=("")
    COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
    COMP_LINE=$line COMP_POINT=${#line}
    COMPREPLY=()
    _relctl relctl "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
    printf '%s\n' "${COMPREPLY[@]}" | sort
}
check() { # DESCRIPTION LINE EXPECTED (lines, sorted)
    local got
    got=$(complete_line "$2")
    tap "$([ "$got" = "$3" ] && echo 0 || echo 1)" "'$2' -> $(echo $3) : $1" "got: $(echo $got)"
}
has() { # DESCRIPTION LINE WORD...: the reply holds these words
    local got w missing=""
    got=$(complete_line "$2")
    shift 2
    local what=$1
    shift
    for w in "$@"; do grep -qx -- "$w" <<<"$got" || missing="$missing $w"; done
    tap "$([ -z "$missing" ] && echo 0 || echo 1)" "$what" "missing:$missing; got: $(echo $got)"
}

mkdir "$work/cwd" && cd "$work/cwd" && cp ../one.tar.gz ../two.tar.gz . || exit 1
mkdir sub && touch notes.txt x.tar.xz x.tar.gz.minisig key
has "relctl <TAB>: the commands" "relctl " "relctl <TAB>: the commands" \
    unpack install upgrade downgrade releases make-permanent remove history status top pack check relup daemon-reexec
check "a command's prefix" "relctl up" "upgrade"
check "a global option's prefix" "relctl --js" "--json"
has "--json before the command, then the command's own options" "relctl --json status --" \
    "relctl --json status --<TAB>: --watch, --json, --socket" --watch --json --socket
check "the versions reld knows, through the line's --socket" "relctl --socket $sock upgrade " "$(printf '1.0\n2.0')"
check "--socket=PATH too" "relctl --socket=$sock remove 2" "2.0"
check "the socket's value is not taken for the command" "relctl --socket $sock make-permanent 1" "1.0"
check "-H: host names" "relctl -H localhos" "localhost"
check "-H: the versions of another machine are not asked of this one" "relctl --socket $sock -H localhost upgrade " ""
check "no reld there: no versions (and no hang)" "relctl --socket $work/none upgrade " ""
has "install: versions, tarballs and directories, not other files" "relctl --socket $sock install " \
    "install <TAB>: 1.0 2.0 one.tar.gz two.tar.gz x.tar.xz sub" 1.0 2.0 one.tar.gz two.tar.gz x.tar.xz sub
got=$(complete_line "relctl --socket $sock install ")
tap "$(grep -qx -e notes.txt -e key -e x.tar.gz.minisig <<<"$got" && echo 1 || echo 0)" \
    "install <TAB> offers no file that is not a tarball" "$got"
has "install's options" "relctl install --" "install --<TAB>: --dry-run --rehearse --commit --signature --allow-downgrade" \
    --dry-run --rehearse --no-rehearse --commit --no-wait --min-healthy --health-timeout --signature --allow-downgrade
check "--signature: .minisig files and directories" "relctl unpack --signature " "$(printf 'sub\nx.tar.gz.minisig')"
check "--limit N: nothing to offer" "relctl history --limit " ""
has "pack --sign: files" "relctl pack . --sign " "pack --sign <TAB>: files" key notes.txt
check "check --root: directories" "relctl check --root " "sub"

# Every option relctl knows is offered for some command.
opts=$( (grep -ho '{"[a-z-]*", *\(no\|required\|optional\)_argument' "$src/cli/relctl.c" "$src/cli/relctl-pack.c" \
    $(ls "$src/cli/top.c" 2>/dev/null) | sed 's/{"\([a-z-]*\)".*/\1/'; echo socket; echo version; echo watch) | sort -u)
missing=$(for o in $opts; do grep -q -- "--$o\b" "$comp" || echo "--$o"; done)
tap "$([ -z "$missing" ] && echo 0 || echo 1)" "relctl.bash offers every option ($(wc -w <<<"$opts"))" "missing: $missing"

# zsh: an interactive zsh (zsh -f -i, compinit, _relctl on its fpath) on a
# pseudo-terminal of zsh's zpty module, sent "LINE<TAB>" as a user types
# it; compadd wrapped to write the matches each completion adds (after
# zsh's own matching against the prefix) to a file, and a comppostfuncs
# hook to say the completion ended. Bounded waits: 10 s a line.
zinit=$work/init.zsh zdrive=$work/drive.zsh
cat >"$zinit" <<'ZEOF'
PS1= PROMPT= RPROMPT=
bindkey -e
setopt no_beep no_auto_list no_list_beep
fpath=("$RELD_ZFPATH" $fpath)
autoload -Uz compinit && compinit -u -D
compadd() {
    # compadd -O, -A or -D only computes (the caller filters): as is.
    if [[ ${@[1,(i)(-|--)]} == *-(O|A|D)\ * ]]; then
        builtin compadd "$@"
        return
    fi
    local -a hits
    builtin compadd -A hits "$@"
    (( $#hits )) && print -rl -- $hits >>"$RELD_ZOUT"
    builtin compadd "$@"
}
_reld_done() {
    print -r -- --done-- >>"$RELD_ZOUT"
    comppostfuncs=(_reld_done) # zsh empties it after each completion
}
comppostfuncs=(_reld_done)
bindkey '^I' complete-word
print -r -- ready >"$RELD_ZOUT"
ZEOF
cat >"$zdrive" <<'ZEOF'
zmodload zsh/zpty || exit 2
local init=$1 line c i
shift
zpty z zsh -f -i
zpty -w z "source ${(q)init}"
for i in {1..200}; do [[ -s $RELD_ZOUT ]] && break; sleep 0.05; done
[[ -s $RELD_ZOUT ]] || { print "zsh did not start"; exit 1 }
for c in "$@"; do
    : >"$RELD_ZOUT"
    zpty -w -n z "$c"$'\t'
    for i in {1..200}; do
        grep -q -- --done-- "$RELD_ZOUT" && break
        while zpty -rt z line; do :; done # what zsh echoes: drained
        sleep 0.05
    done
    print -r -- "== $c"
    grep -q -- --done-- "$RELD_ZOUT" || print -r -- "(no completion ended)"
    grep -v -- --done-- "$RELD_ZOUT" | sort -u
    zpty -w -n z $'\C-u' # kill-whole-line: the next line starts empty
done
zpty -d z
ZEOF
if ! command -v zsh >/dev/null; then
    n=$((n + 1)); echo "ok $n - zsh reads _relctl # SKIP no zsh"
elif ! zsh -fc 'zmodload zsh/zpty' 2>/dev/null; then
    err=$(zsh -n "$src/packaging/completion/_relctl" 2>&1)
    tap $? "zsh reads _relctl (zsh -n); no zsh/zpty module here for the functional checks" "$err"
else
    zlines=("relctl " "relctl up" "relctl --socket $sock install " "relctl --socket $sock upgrade " "relctl install --"
        "relctl --socket $work/none upgrade " "relctl --socket=$sock remove 2" "relctl --socket $sock -H localhost upgrade ")
    zgot=$(RELD_ZOUT=$work/zsh.out RELD_ZFPATH=$src/packaging/completion timeout 60 zsh -f "$zdrive" "$zinit" \
        "${zlines[@]}" 2>&1)
    zfor() { # LINE: the matches zsh offered for it, one a line
        awk -v want="== $1" '$0 == want { on = 1; next } /^== / { on = 0 } on' <<<"$zgot"
    }
    zhas() { # DESCRIPTION LINE WORD...
        local got w missing=""
        got=$(zfor "$2")
        shift 2
        local what=$1
        shift
        for w in "$@"; do grep -qx -- "$w" <<<"$got" || missing="$missing $w"; done
        tap "$([ -n "$got" ] && [ -z "$missing" ] && echo 0 || echo 1)" "zsh: $what" \
            "missing:$missing; got: $(echo $got)"
    }
    zhas "" "relctl " "relctl <TAB>: the commands" \
        unpack install upgrade downgrade releases make-permanent remove history status top pack check relup daemon-reexec
    got=$(zfor "relctl up")
    tap "$([ "$got" = upgrade ] && echo 0 || echo 1)" "zsh: relctl up<TAB>: upgrade alone" "got: $(echo $got)"
    zhas "" "relctl --socket $sock install " \
        "relctl install <TAB>: versions from reld (through the line's --socket), tarballs, directories" \
        1.0 2.0 one.tar.gz two.tar.gz x.tar.xz sub
    got=$(zfor "relctl --socket $sock install ")
    tap "$(grep -qx -e notes.txt -e key -e x.tar.gz.minisig <<<"$got" && echo 1 || echo 0)" \
        "zsh: install <TAB> offers no file that is not a tarball" "$got"
    got=$(zfor "relctl --socket $sock upgrade ")
    tap "$([ "$got" = "$(printf '1.0\n2.0')" ] && echo 0 || echo 1)" "zsh: relctl upgrade <TAB>: the versions alone" \
        "got: $(echo $got)"
    zhas "" "relctl install --" "relctl install --<TAB>: install's options" \
        --dry-run --rehearse --no-rehearse --commit --no-wait --min-healthy --health-timeout --signature --allow-downgrade
    got=$(zfor "relctl --socket=$sock remove 2")
    tap "$([ "$got" = 2.0 ] && echo 0 || echo 1)" "zsh: --socket=PATH too" "got: $(echo $got)"
    got=$(zfor "relctl --socket $sock -H localhost upgrade ")
    tap "$([ -z "$got" ] && grep -qx -- "== relctl --socket $sock -H localhost upgrade " <<<"$zgot" && echo 0 || echo 1)" \
        "zsh: -H: the versions of another machine are not asked of this one" "got: $(echo $got)"
    got=$(zfor "relctl --socket $work/none upgrade ")
    tap "$([ -z "$got" ] && grep -qx -- "== relctl --socket $work/none upgrade " <<<"$zgot" && echo 0 || echo 1)" \
        "zsh: no reld there: no versions (and no hang)" "$zgot"
fi
echo "1..$n"
exit $failed
