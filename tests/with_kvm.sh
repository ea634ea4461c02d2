#!/usr/bin/env bash
# tests/with_kvm.sh: checks scripts/with-kvm end to end (each check boots one L1 when the
# harness runs nested). Plain bash; prints "ok"/"not ok" per check and a closing
# "N passed, N failed" line; exits non-zero when any check fails.
# check NAME eval '...': the single quotes are for eval to expand.
# shellcheck disable=SC2016
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
wk=$root/scripts/with-kvm
tmp=$(mktemp -d /var/tmp/with-kvm-test.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0
export BRIG_WITH_KVM_TIMEOUT=${BRIG_WITH_KVM_TIMEOUT:-900}   # a hang fails the test, never CI

check() {   # check NAME CONDITION-COMMAND...
    local name=$1; shift
    if "$@"; then
        passed=$((passed + 1)); echo "ok - $name"
    else
        failed=$((failed + 1)); echo "not ok - $name"
        for f in "$tmp"/out "$tmp"/err; do   # what the last harness run printed
            [ -s "$f" ] && sed "s|^|    ${f##*/}: |" "$f" | head -n 20
        done
    fi
}
run() { "$wk" "$@" >"$tmp/out" 2>"$tmp/err"; echo $? >"$tmp/rc"; }   # run CMD: harness → files
rc_is() { [ "$(cat "$tmp/rc")" = "$1" ]; }
out_is() { [ "$(cat "$tmp/out"; echo .)" = "$1." ]; }   # exact, trailing newlines included
err_is() { [ "$(cat "$tmp/err"; echo .)" = "$1." ]; }

# Harness-only checks: no VM.
run --help
check "--help exits 0 and explains usage" eval 'rc_is 0 && grep -q BRIG_TEST_KVM "$tmp/out"'
run --prepare
check "--prepare exits 0 (the L1 kernel is cached)" rc_is 0
BRIG_TEST_KVM=bogus run true
check "a bad BRIG_TEST_KVM is refused with 125" eval 'rc_is 125 && [ "$(wc -l <"$tmp/err")" = 1 ]'

run sh -c 'exit 7'
check "exit status propagates (7)" rc_is 7

run sh -c 'echo out; echo err >&2'
check "stdout and stderr arrive separately and exactly" eval 'rc_is 0 && out_is "out
" && err_is "err
"'

head -c 1048576 /dev/urandom >"$tmp/random.bin"
run cat "$tmp/random.bin"
check "1 MiB of random bytes pass 8-bit clean" eval \
    '[ "$(sha256sum <"$tmp/out")" = "$(sha256sum <"$tmp/random.bin")" ] && [ ! -s "$tmp/err" ]'

# A real KVM guest: a 64 KiB "BIOS" whose reset vector (real mode, at its last 16 bytes)
# writes 0x2a to isa-debug-exit; QEMU then exits with (0x2a << 1) | 1 = 85.
{ head -c 65520 /dev/zero; printf '\xb0\x2a\xe6\xf4\xf4'; head -c 11 /dev/zero; } >"$tmp/bios.bin"
mkdir -p "$tmp/cwd dir"
(cd "$tmp/cwd dir" && WITH_KVM_TEST_VAR=$'a b\n$c' run bash -c '
    set -e
    test -c /dev/kvm && exec 3<>/dev/kvm && echo "kvm-opens"
    echo "mode=$BRIG_KVM_MODE"
    echo "cwd=$PWD"
    printf "var=%s|\n" "$WITH_KVM_TEST_VAR"
    cp "$2" "$2.copy"
    perl -MSocket -e '\''socket(my $s, PF_UNIX, SOCK_STREAM, 0) or die "socket: $!";
        bind($s, pack_sockaddr_un("/run/with-kvm-test.sock")) or die "bind: $!";
        listen($s, 1) or die "listen: $!";
        socket(my $c, PF_UNIX, SOCK_STREAM, 0) or die;
        connect($c, pack_sockaddr_un("/run/with-kvm-test.sock")) or die "connect: $!";
        print "unix-socket-ok\n"'\''
    set +e
    timeout 120 qemu-system-x86_64 -enable-kvm -M pc -m 16 -nodefaults -no-user-config \
        -display none -bios "$1" -device isa-debug-exit,iobase=0xf4,iosize=4 \
        </dev/null >/dev/null 2>&1
    echo "kvm-guest=$?"
' with-kvm-test "$tmp/bios.bin" "$tmp/random.bin")
check "/dev/kvm exists inside and opens read-write" grep -qx kvm-opens "$tmp/out"
expected_mode=$(grep -o '^mode=.*' "$tmp/out")
case ${BRIG_TEST_KVM:-auto} in
nested | host) want="mode=$BRIG_TEST_KVM" ;;
*) want=$expected_mode ;;   # auto: either, but it must be set
esac
check "BRIG_KVM_MODE is set (${want#mode=})" eval '[ "$expected_mode" = "$want" ] && [ "$want" != "mode=" ]'
check "cwd propagates" grep -qxF "cwd=$tmp/cwd dir" "$tmp/out"
check "environment propagates" eval '[ "$(sed -n "/^var=/,/|$/p" "$tmp/out")" = "var=a b
\$c|" ]'
check "a Unix socket binds and connects under /run" grep -qx unix-socket-ok "$tmp/out"
check "a file written inside is on the host afterwards, intact" \
    eval '[ "$(sha256sum <"$tmp/random.bin.copy")" = "$(sha256sum <"$tmp/random.bin")" ]'
check "a real KVM guest runs (qemu -enable-kvm, isa-debug-exit 85)" grep -qx kvm-guest=85 "$tmp/out"

"$wk" true <&- >"$tmp/out" 2>"$tmp/err"
echo $? >"$tmp/rc"
check "works with stdin closed" rc_is 0

if [ "$expected_mode" = mode=nested ]; then
    # L1's kernel crashes under CMD (sysrq c: panic): one line saying so, the console, 125.
    run sh -c 'echo before; [ "$BRIG_KVM_MODE" = nested ] && echo c >/proc/sysrq-trigger; sleep 60'
    check "L1 dying under CMD gives 125, a one-line reason and the console tail" eval \
        'rc_is 125 && out_is "before
" && grep -q "^with-kvm: L1 ended without an exit status.*: Kernel panic.*sysrq" "$tmp/err" &&
        grep -q "^  | " "$tmp/err"'
fi

BRIG_WITH_KVM_TIMEOUT=30 run sh -c 'sleep 1000; echo never'
check "BRIG_WITH_KVM_TIMEOUT ends a command that never finishes (124)" \
    eval 'rc_is 124 && grep -q "timed out" "$tmp/err" && [ ! -s "$tmp/out" ]'
if [ "$expected_mode" = mode=nested ]; then
    check "... and shows what ran in L1, thread by thread" eval \
        'grep -q "^process [0-9]*: sleep 1000" "$tmp/err" && grep -q "^  thread .* sleep .* wchan=" "$tmp/err"'
fi
BRIG_WITH_KVM_TIMEOUT=soon run true
check "a BRIG_WITH_KVM_TIMEOUT that is not seconds is refused with 125" \
    eval 'rc_is 125 && [ "$(wc -l <"$tmp/err")" = 1 ]'
BRIG_WITH_KVM_STALL=-1 run true
check "a BRIG_WITH_KVM_STALL that is not seconds is refused with 125" \
    eval 'rc_is 125 && [ "$(wc -l <"$tmp/err")" = 1 ]'

if [ "$expected_mode" = mode=nested ]; then
    # A QEMU TCG livelock (L1 stops running; QEMU spins) simulated by SIGSTOPping QEMU: the
    # command says which L1 it runs in (with_kvm.work= on L1's kernel command line, also on
    # QEMU's), makes its marker and sleeps; freeze_qemu, on the host, then stops that QEMU.
    # With the marker there (a rerun), the command just ends.
    freeze_cmd='if [ ! -e "$1" ]; then
        : >"$1"; sync
        echo "freeze-me $(sed -n "s/.*with_kvm\.work=\([^ ]*\).*/\1/p" /proc/cmdline)"
        sleep 600
    fi
    echo ran-to-the-end'
    freeze_qemu() {   # in the background: SIGSTOPs the QEMU whose L1 printed "freeze-me WORK"
        local w='' pid
        for _ in $(seq 600); do
            w=$(sed -n 's/^freeze-me //p' "$tmp/out" 2>/dev/null) && [ -n "$w" ] && break
            sleep 0.1
        done
        [ -n "$w" ] || return   # (never an empty pattern: it would match others' QEMUs)
        for pid in $(pgrep -f -- "with_kvm.work=$w "); do   # QEMU, and timeout(1) around it
            [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = qemu-system-x86 ] || continue
            echo "$pid" >"$tmp/frozen"; kill -STOP "$pid"
        done
    }
    stopped_qemu_gone() {   # the QEMU freeze_qemu stopped is gone (else: kill it, fail)
        local pid; pid=$(cat "$tmp/frozen" 2>/dev/null) || return 1
        ! kill -0 "$pid" 2>/dev/null || { kill -KILL "$pid"; return 1; }
    }
    froze() {   # froze RETRIES: runs freeze_cmd under freeze_qemu
        rm -f "$tmp/frozen"; : >"$tmp/out"
        freeze_qemu &
        BRIG_WITH_KVM_STALL=10 BRIG_WITH_KVM_RETRIES=$1 run sh -c "$freeze_cmd" sh "$tmp/marker$1"
        wait
    }
    froze 0
    check "an L1 that stops running is killed after BRIG_WITH_KVM_STALL, one line, exit 123" eval \
        'rc_is 123 && stopped_qemu_gone && out_is "$(head -n1 "$tmp/out")
" && [ "$(grep -c "^with-kvm: L1 stopped running (no heartbeat for [0-9]* s.*): QEMU TCG livelock; .*exit 123" "$tmp/err")" = 1 ] &&
        ! grep -q "timed out\|again" "$tmp/err"'
    froze 1
    check "... and with BRIG_WITH_KVM_RETRIES=1 the command runs again in a fresh L1" eval \
        'rc_is 0 && stopped_qemu_gone && [ "$(sed -n 2p "$tmp/out")" = ran-to-the-end ] &&
        grep -q "^with-kvm: L1 stopped running (no heartbeat .*QEMU TCG livelock; .*(rerun 1 of BRIG_WITH_KVM_RETRIES=1)" "$tmp/err"'
fi

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
