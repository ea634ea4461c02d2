#!/usr/bin/env bash
# Compares two guest kernels booted by brig: cold boot wall time (`brig boot` of busybox as
# /bin/true, 256 MiB, 1 vCPU; runs alternate, after one warm-up each) and the guest's memory
# (MemTotal and MemAvailable after boot), plus vmlinux sizes. For judging a config change:
#
#   kernels/compare-boot.sh [--runs N] [--brig PATH] OLD_VMLINUX NEW_VMLINUX
#
# Runs inside ONE scripts/with-kvm (re-executes itself there when BRIG_KVM_MODE is unset): on
# a development machine the times are nested-TCG times, so only the ratio means something.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
runs=10
brig=$here/target/release/brig
while [ $# -gt 2 ]; do
  case $1 in
    --runs) runs=$2; shift 2 ;;
    --brig) brig=$2; shift 2 ;;
    *) break ;;
  esac
done
[ $# = 2 ] || { echo "usage: $0 [--runs N] [--brig PATH] OLD_VMLINUX NEW_VMLINUX" >&2; exit 2; }
old=$(realpath "$1") new=$(realpath "$2") brig=$(realpath "$brig")
if [ -z "${BRIG_KVM_MODE:-}" ]; then
  exec "$here/scripts/with-kvm" "$0" --runs "$runs" --brig "$brig" "$old" "$new"
fi

work=$(mktemp -d /run/compare-boot.XXXXXX)
trap 'rm -rf "$work"' EXIT
cp "$old" "$work/old"; cp "$new" "$work/new"

boot() {  # boot KERNEL CMD...: prints wall ms
  local k=$1; shift
  local t0 t1
  t0=$(date +%s%N)
  "$brig" boot --kernel "$work/$k" --mem 256 --cpus 1 --add /bin/busybox:/bin/busybox "$@" >/dev/null
  t1=$(date +%s%N)
  echo $(( (t1 - t0) / 1000000 ))
}

declare -A times=([old]="" [new]="")
for k in old new; do boot "$k" -- /bin/busybox true >/dev/null; done   # warm-up
for _ in $(seq "$runs"); do
  for k in old new; do times[$k]+="$(boot "$k" -- /bin/busybox true) "; done
done

stats() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {printf "min %6d  median %6d  max %6d ms", a[1], (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2), a[NR]}'; }
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

echo "brig boot (256 MiB, 1 vCPU, busybox true), $runs runs each, alternating:"
for k in old new; do
  mem=$("$brig" boot --kernel "$work/$k" --mem 256 --cpus 1 --add /bin/busybox:/bin/busybox \
    -- /bin/busybox sh -c 'grep -E "^(MemTotal|MemAvailable):" /proc/meminfo' | awk '{printf "%s %s kB  ", $1, $2}')
  printf '  %-4s %s   %s  vmlinux %s\n' "$k" "$(echo "${times[$k]}" | stats)" "$mem" "$(du -h "$work/$k" | cut -f1)"
done
mo=$(echo "${times[old]}" | median); mn=$(echo "${times[new]}" | median)
awk -v o="$mo" -v n="$mn" 'BEGIN {printf "median new/old: %.3f (%+.1f%%)\n", n/o, (n/o-1)*100}'
