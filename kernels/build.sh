#!/usr/bin/env bash
# Build brig's guest kernel from Debian's linux-source-6.12 package.
#
#   kernels/build.sh              build (or reuse) the kernel; prints its path last
#   kernels/build.sh --print-path print where the kernel for the current inputs lives
#
# brig boots <cache>/brig/kernels/current/vmlinux by default; this script points `current`
# at the kernel it built or found.
#
# The result is cached at ${XDG_CACHE_HOME:-$HOME/.cache}/brig/kernels/<hash>/vmlinux, where
# <hash> covers the config fragment, the patches, the source package version and the recipe
# version below. When that file exists this script does nothing else.
set -euo pipefail

# Bump when the way the kernel is built changes (not for comments in this file).
RECIPE=1
here=$(cd "$(dirname "$0")" && pwd)
fragment=$here/microvm.config
src_tar=/usr/src/linux-source-6.12.tar.xz
cache=${XDG_CACHE_HOME:-$HOME/.cache}/brig/kernels

say() { echo "kernels/build.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

src_version=$(dpkg-query -W -f='${Version}' linux-source-6.12 2>/dev/null) ||
  die "Debian package linux-source-6.12 is not installed (run scripts/setup.sh or: apt-get install linux-source-6.12)"
[ -f "$src_tar" ] || die "$src_tar is missing (reinstall linux-source-6.12)"

hash=$( {
  echo "recipe $RECIPE"
  echo "source linux-source-6.12 $src_version"
  cat "$fragment"
  for p in "$here"/patches/*.patch; do
    if [ -e "$p" ]; then echo "patch $(basename "$p")"; cat "$p"; fi
  done
} | sha256sum | cut -c1-16)
out=$cache/$hash

if [ "${1:-}" = "--print-path" ]; then echo "$out/vmlinux"; exit 0; fi
# brig finds the kernel through this link: <cache>/brig/kernels/current/vmlinux.
point_current() { ln -sfn "$hash" "$cache/current.tmp" && mv -T "$cache/current.tmp" "$cache/current"; }

if [ -f "$out/vmlinux" ]; then
  point_current
  say "cached: $out/vmlinux (linux-source-6.12 $src_version, config hash $hash)"
  echo "$out/vmlinux"
  exit 0
fi

mkdir -p "$cache"
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
say "building guest kernel $hash from linux-source-6.12 $src_version in $work"
say "unpacking $src_tar"
tar -C "$work" -xf "$src_tar"
ksrc=$work/linux-source-6.12
for p in "$here"/patches/*.patch; do
  [ -e "$p" ] || continue
  say "applying $(basename "$p")"
  patch -d "$ksrc" -p1 --quiet < "$p"
done

say "make tinyconfig + microvm.config"
make -C "$ksrc" -s tinyconfig >/dev/null
"$ksrc"/scripts/kconfig/merge_config.sh -m -O "$ksrc" "$ksrc/.config" "$fragment" >/dev/null
make -C "$ksrc" -s olddefconfig >/dev/null

# tinyconfig drops options whose dependencies are missing: check every line of the fragment.
missing=0
while IFS= read -r line; do
  case "$line" in
    CONFIG_*=*)
      grep -qx -- "$line" "$ksrc/.config" || { say "config: wanted $line, got: $(grep -E "^(# )?${line%%=*}[= ]" "$ksrc/.config" || echo absent)"; missing=1; } ;;
    "# CONFIG_"*" is not set")
      opt=${line#\# }; opt=${opt%% *}
      grep -q "^$opt=" "$ksrc/.config" && { say "config: wanted $opt off, got: $(grep "^$opt=" "$ksrc/.config")"; missing=1; } ;;
  esac
done < "$fragment"
[ "$missing" = 0 ] || die "the final .config lacks options the fragment asks for (see above)"
say "final .config has every option of microvm.config"

jobs=$(nproc)
say "make -j$jobs vmlinux (a few minutes)"
start=$(date +%s)
if ! make -C "$ksrc" -s -j"$jobs" vmlinux > "$work/build.log" 2>&1; then
  tail -n 30 "$work/build.log" >&2
  die "kernel build failed (log above)"
fi
say "built in $(( $(date +%s) - start )) s"

tmpout=$(mktemp -d "$cache/out.XXXXXX")
chmod 755 "$tmpout"
cp "$ksrc/vmlinux" "$tmpout/vmlinux"
cp "$ksrc/.config" "$tmpout/config"
echo "linux-source-6.12 $src_version" > "$tmpout/source"
sync -f "$tmpout/vmlinux" 2>/dev/null || sync
rm -rf "$out"
mv "$tmpout" "$out"
point_current
say "done: $out/vmlinux ($(du -h "$out/vmlinux" | cut -f1))"
echo "$out/vmlinux"
