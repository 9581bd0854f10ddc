# bash completion for relctl (reld's command line): commands, their flags,
# release versions from reld when it answers (relctl releases --json), and
# files for tarballs and directories. Installed as
# share/bash-completion/completions/relctl.

# The versions reld knows, one a line; nothing when reld does not answer
# within 2 seconds. The command line's --socket is used if it has one;
# with -H the reld is on another machine: no versions (ssh may ask for a
# password, and take its time).
_relctl_versions()
{
    local sock=() i
    for ((i = 1; i < ${#COMP_WORDS[@]} - 1; i++)); do
        case ${COMP_WORDS[i]} in
        --socket) sock=(--socket "${COMP_WORDS[i + 1]}") ;;
        --socket=*) sock=("${COMP_WORDS[i]}") ;;
        -H | -H* | --host | --host=*) return ;;
        esac
    done
    # relctl prints its JSON indented, one field a line: "vsn": "1.0",
    timeout 2 relctl "${sock[@]}" releases --json 2>/dev/null |
        sed -n 's/^ *"vsn": "\([^"\\]*\)",\{0,1\}$/\1/p'
}

_relctl()
{
    local cur prev words cword
    if declare -F _init_completion >/dev/null; then
        _init_completion -n = || return
    else
        cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD - 1]}
        words=("${COMP_WORDS[@]}") cword=$COMP_CWORD
    fi

    local commands="unpack install upgrade downgrade releases make-permanent remove history status top pack check relup
        daemon-reexec"
    local global="--socket --json --help --version -H --host"
    # Flags that take a value, so that the value is not taken for the command.
    local valued="--socket -H --host --signature --min-healthy --health-timeout --limit --sign --password-file -o --output
        --root --sysroot --interval"
    local go="--no-wait --commit --min-healthy --health-timeout --rehearse --no-rehearse --dry-run"

    # The command: the first word that is neither a flag nor a flag's value.
    local cmd="" i w
    for ((i = 1; i < cword; i++)); do
        w=${words[i]}
        case $w in
        -*) ;;
        *)
            case " ${valued//$'\n'/ } " in
            *" ${words[i - 1]} "*) continue ;;
            esac
            cmd=$w
            break
            ;;
        esac
    done

    case $prev in
    --socket) mapfile -t COMPREPLY < <(compgen -f -- "$cur"); return ;;
    -H | --host) mapfile -t COMPREPLY < <(compgen -A hostname -- "$cur"); return ;;
    --signature) mapfile -t COMPREPLY < <(compgen -f -X '!*.minisig' -- "$cur"; compgen -d -- "$cur"); return ;;
    --sign | --password-file | -o | --output) mapfile -t COMPREPLY < <(compgen -f -- "$cur"); return ;;
    --root | --sysroot) mapfile -t COMPREPLY < <(compgen -d -- "$cur"); return ;;
    --min-healthy | --health-timeout | --limit | --interval) COMPREPLY=(); return ;;
    esac

    local flags=""
    case $cmd in
    "") flags="" ;;
    unpack) flags="--signature --allow-downgrade" ;;
    install) flags="$go --signature --allow-downgrade" ;;
    upgrade | downgrade) flags=$go ;;
    history) flags="--limit" ;;
    status) flags="--watch" ;;
    top) flags="--interval --once" ;;
    pack) flags="-o --output --no-check --sign --password-file" ;;
    check) flags="--strict --root --sysroot" ;;
    relup) flags="--root --write --no-derive" ;;
    esac

    if [[ $cur == -* ]]; then
        mapfile -t COMPREPLY < <(compgen -W "$global $flags" -- "$cur")
        return
    fi
    if [ -z "$cmd" ]; then
        mapfile -t COMPREPLY < <(compgen -W "$commands" -- "$cur")
        return
    fi
    case $cmd in
    unpack)
        mapfile -t COMPREPLY < <(compgen -f -X '!*.@(tar|tar.gz|tgz|tar.xz|txz|tar.zst|tar.bz2)' -- "$cur"
            compgen -d -- "$cur")
        ;;
    install)
        mapfile -t COMPREPLY < <(compgen -W "$(_relctl_versions)" -- "$cur"
            compgen -f -X '!*.@(tar|tar.gz|tgz|tar.xz|txz|tar.zst|tar.bz2)' -- "$cur"
            compgen -d -- "$cur")
        ;;
    upgrade | downgrade | make-permanent | remove | relup)
        mapfile -t COMPREPLY < <(compgen -W "$(_relctl_versions)" -- "$cur")
        ;;
    pack) mapfile -t COMPREPLY < <(compgen -d -- "$cur") ;;
    check) mapfile -t COMPREPLY < <(compgen -f -X '!*.@(tar|tar.gz|tgz|tar.xz|txz|tar.zst|tar.bz2)' -- "$cur"
            compgen -d -- "$cur") ;;
    *) COMPREPLY=() ;;
    esac
} && complete -o filenames -F _relctl relctl
