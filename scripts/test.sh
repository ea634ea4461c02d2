#!/usr/bin/env bash
# Runs brig's checks and tests. Tests that boot microVMs re-run themselves under
# scripts/with-kvm when this host has no usable KVM, so every test runs here too.
# Extra arguments go to `cargo test` as they are (e.g. scripts/test.sh --test boot).
#
# Without arguments the integration test binaries run BRIG_TEST_JOBS at a time (default 2),
# longest first: each nested-KVM binary keeps one host CPU busy with its own L1 (a
# one-vCPU TCG VM), so two side by side take half the time of one after the other. Each
# binary's output is printed whole when it ends; the run goes on past a failing binary
# and ends by naming every one that failed. They run the release brig (BRIG_TEST_BIN),
# the build users run; the unit tests run cargo's test build.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "test.sh: cargo fmt --check" >&2
cargo fmt --all -- --check
echo "test.sh: scripts/check-layers (no module imports from a layer above it)" >&2
scripts/check-layers
echo "test.sh: cargo clippy --workspace --all-targets -- -D warnings" >&2
cargo clippy --locked --workspace --all-targets -- -D warnings
echo "test.sh: cargo build --release (the brig the integration tests run)" >&2
cargo build --locked --release --bins
scripts/link-bins
export BRIG_TEST_BIN=$PWD/target/release/brig

if [ $# -gt 0 ]; then
    echo "test.sh: cargo test $*" >&2
    exec cargo test --locked --workspace "$@"
fi

echo "test.sh: unit tests and doc tests" >&2
cargo test --locked --workspace --lib --bins
cargo test --locked --workspace --doc

echo "test.sh: building the integration tests" >&2
list=$(mktemp)
trap 'rm -f "$list"' EXIT
cargo test --locked --workspace --tests --no-run --message-format=json |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    t = m.get("target", {})
    if m.get("reason") == "compiler-artifact" and t.get("kind") == ["test"] and m.get("executable"):
        print(t["name"], m["executable"])
' >"$list"

# Seconds each took alone on the 2-core development machine (a guess for new ones): the
# queue starts with the longest, so that no long one starts last.
declare -A SECS=([suites]=700 [run]=520 [oci]=470 [compare]=350 [sandbox]=320 [network]=220
    [security]=170 [volumes]=150 [with_kvm.sh]=120 [boot]=80 [compat]=80 [image]=10 [cli]=1)
queue=$(mktemp -d)
trap 'rm -rf "$list" "$queue"' EXIT
{
    echo "with_kvm.sh tests/with_kvm.sh"
    cat "$list"
} | while read -r name exe; do
    printf '%s %s %s\n' "${SECS[$name]:-300}" "$name" "$exe"
done | sort -rn | cut -d' ' -f2- >"$queue/todo"

# take: the next "NAME PATH" of the queue, or nothing when it is empty.
take() {
    (
        flock 9
        head -n1 "$queue/todo"
        sed -i 1d "$queue/todo"
    ) 9>"$queue/lock"
}

worker() {
    local name exe start status
    while read -r name exe < <(take) && [ -n "$name" ]; do
        start=$SECONDS
        if "$exe" >"$queue/$name.log" 2>&1; then status=ok; else status=FAILED; fi
        (
            flock 9
            echo "test.sh: ==== $name: $status in $((SECONDS - start)) s ====" >&2
            cat "$queue/$name.log" >&2
            [ "$status" = ok ] || echo "$name" >>"$queue/failed"
        ) 9>"$queue/lock"
    done
}

jobs=${BRIG_TEST_JOBS:-2}
echo "test.sh: $(wc -l <"$queue/todo") test binaries, $jobs at a time" >&2
start=$SECONDS
for _ in $(seq "$jobs"); do worker & done
wait
if [ -s "$queue/failed" ]; then
    echo "test.sh: FAILED after $((SECONDS - start)) s: $(tr '\n' ' ' <"$queue/failed")" >&2
    exit 1
fi
echo "test.sh: every test binary passed, in $((SECONDS - start)) s" >&2
