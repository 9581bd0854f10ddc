#!/usr/bin/env bash
# The runtime as a user gets it: `meson install` into a staging directory,
# then a module and a host built out of tree with only pkg-config's flags,
# and the host loading the module. Prints TAP.
# Usage: out-of-tree.sh BUILD_DIR SOURCE_DIR [SANITIZE]
# SANITIZE is the build's b_sanitize: a program using a sanitized runtime
# is built with the same sanitizer, as its user would.
set -u
build=$1 src=$2 sanitize=${3:-none}
san=""
[ "$sanitize" != none ] && san="-fsanitize=$sanitize"
stage=$(mktemp -d /tmp/reld-oot-XXXXXX)
trap 'rm -rf "$stage"' EXIT
n=0 failed=0
check() { n=$((n + 1)); if eval "$2" >"$stage/log" 2>&1; then echo "ok $n - $1"; else failed=$((failed + 1)); echo "not ok $n - $1"; sed 's/^/# /' "$stage/log" | tail -20; fi; }

echo "TAP version 13"
check "meson install into a staging directory" "meson install -C '$build' --destdir '$stage/root' --no-rebuild --quiet"
pc=$(find "$stage/root" -name reld-runtime.pc | head -1)
check "reld-runtime.pc is installed" "test -n '$pc'"
export PKG_CONFIG_PATH=$(dirname "$pc")
# Point the staged .pc at the staging directory, as a packager's sysroot would.
prefix=$(pkg-config --variable=prefix reld-runtime)
flags="pkg-config --define-variable=prefix=$stage/root$prefix"
check "the header is installed as reld/reld-runtime.h" "test -f \"\$($flags --variable=includedir reld-runtime)/reld/reld-runtime.h\""

cat >"$stage/hello.c" <<'C'
#include <reld-runtime.h>
static int answer(void) { return 42; }
static const struct { int (*answer)(void); } api = {answer};
RELD_MODULE_DEFINE(.name = "hello", .version = "1", .api = &api);
C
cat >"$stage/host.c" <<'C'
#include <reld-runtime.h>
#include <stdio.h>
int main(int argc, char **argv)
{
    char err[256];
    RelRuntime *rt;
    if (rel_runtime_new(&rt, err, sizeof(err)) < 0 || rel_runtime_load(rt, "hello", argv[1], err, sizeof(err)) < 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    const struct { int (*answer)(void); } *api = rel_module_api(rel_runtime_module(rt, "hello"));
    printf("%d %s\n", api->answer(), rel_module_version(rel_runtime_module(rt, "hello")));
    rel_runtime_free(rt);
    return 0;
}
C
check "a module builds out of tree with pkg-config --cflags" \
    "cc $san -shared -fPIC -fvisibility=hidden \$($flags --cflags reld-runtime) '$stage/hello.c' -o '$stage/hello.so'"
check "the module exports only its descriptor" "nm -D --defined-only '$stage/hello.so' | grep -w reld_module"
check "a host builds and links out of tree with pkg-config --cflags --libs" \
    "cc $san \$($flags --cflags reld-runtime) '$stage/host.c' -o '$stage/host' \$($flags --libs reld-runtime)"
libdir=$($flags --variable=libdir reld-runtime)
check "the host loads the module through the installed runtime" \
    "test \"\$(LD_LIBRARY_PATH='$libdir' '$stage/host' '$stage/hello.so')\" = '42 1'"
check "relctl-pack, which relctl runs for pack, is installed in libexec/reld" \
    "test -x '$stage/root$prefix/libexec/reld/relctl-pack'"
# Staged, relctl finds no relctl-pack beside it nor in its (unstaged) libexec: one clear line.
if [ ! -e "$prefix/libexec/reld/relctl-pack" ]; then
    check "relctl pack without relctl-pack says so, exit 1" \
        "out=\$('$stage/root$prefix/bin/relctl' pack x -o y 2>&1); test \$? -eq 1 && test \"\$out\" = 'relctl: cannot run $prefix/libexec/reld/relctl-pack: No such file or directory'"
fi
check "relctl itself does not load libarchive (4 ms of start-up per command)" \
    "ldd '$stage/root$prefix/bin/relctl' && ! ldd '$stage/root$prefix/bin/relctl' | grep -q libarchive"
echo "1..$n"
[ "$failed" -eq 0 ]
