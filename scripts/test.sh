#!/usr/bin/env bash
# Runs brig's checks and tests. Tests that boot microVMs re-run themselves under
# scripts/with-kvm when this host has no usable KVM, so every test runs here too.
# Extra arguments go to `cargo test` (e.g. scripts/test.sh --test boot).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "test.sh: cargo fmt --check" >&2
cargo fmt --all -- --check
echo "test.sh: scripts/check-layers (no module imports from a layer above it)" >&2
scripts/check-layers
echo "test.sh: cargo clippy --workspace --all-targets -- -D warnings" >&2
cargo clippy --locked --workspace --all-targets -- -D warnings
echo "test.sh: tests/with_kvm.sh (the nested-KVM harness itself)" >&2
tests/with_kvm.sh
echo "test.sh: cargo test" >&2
cargo test --locked --workspace "$@"
