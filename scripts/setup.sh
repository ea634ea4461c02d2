#!/usr/bin/env bash
# Sets up this machine for brig, idempotently: Debian packages, the guest kernel (cached),
# a release build of brig (which builds and embeds the guest init), and the nested-KVM test
# harness's cache. Safe to run again: each step is a no-op when its result is current.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "setup: $*" >&2; }

# Build and runtime tools (kernel build, tests, image tools, the nested-KVM harness).
packages=(
  build-essential bc bison flex libelf-dev libssl-dev cpio xz-utils   # guest kernel build
  linux-source-6.12                                                   # guest kernel source
  qemu-system-x86 busybox-static zstd                                 # with-kvm harness, test payloads
  erofs-utils e2fsprogs                                               # rootfs images
  skopeo umoci docker-registry runc crun debootstrap                  # image tests, baselines
  podman iptables containerd docker.io                                # compare --runtime podman; tests/oci.rs (ctr, podman, dockerd)
  protobuf-compiler containernetworking-plugins                       # tests/oci/cri.rs: the CRI client's build, the pod network
  golang-go                                                           # Go stdlib tests (tests/suites.rs)
  nftables passt iproute2                                             # sandbox networking (NAT, rootless)
  iperf3 socat fio                                                    # network tests, bench-net, bench-volume
  chromium                                                            # tests/compare.rs renders the HTML report
  libcap-ng-dev libseccomp-dev                                        # building virtiofsd (volumes)
  util-linux ca-certificates curl python3                              # python3: scripts/local-image, check-layers, benchmarks
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  say "Debian packages: all present"
fi

# tests/compat.rs runs 32-bit x86 binaries: Debian's busybox-static:i386, fetched with
# `apt-get download`, which needs apt to know the i386 architecture (nothing is installed).
if ! dpkg --print-foreign-architectures | grep -qx i386; then
  say "adding the i386 architecture to apt (for tests/compat.rs)"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo dpkg --add-architecture i386
  $sudo apt-get update -q || say "warning: apt-get update failed; tests/compat.rs may not find busybox-static:i386"
fi

# The `kvm` group (/dev/kvm root:kvm 0660 for its members), as Debian's udev makes it: the
# rootless tests run brig as a member. A minimal system (a container image) may lack it.
if ! getent group kvm >/dev/null; then
  say "adding the kvm group"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo groupadd --system kvm
fi

command -v cargo >/dev/null || { say "error: cargo is not installed (https://rustup.rs)"; exit 1; }

# Volumes (-v) are served by virtiofsd, the Rust one (Debian 12 has no package; QEMU's old C
# virtiofsd lacks --translate-uid and rootless operation). Pinned, built once.
virtiofsd_version=1.14.0
if ! /usr/local/bin/virtiofsd --version 2>/dev/null | grep -q "$virtiofsd_version"; then
  say "virtiofsd $virtiofsd_version (cargo install, a few minutes)"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  tmp=$(mktemp -d)
  cargo install --locked --quiet --root "$tmp" "virtiofsd@$virtiofsd_version"
  $sudo install -m 0755 "$tmp/bin/virtiofsd" /usr/local/bin/virtiofsd
  rm -rf "$tmp"
else
  say "virtiofsd $virtiofsd_version: present"
fi

say "guest kernel"
kernels/build.sh >/dev/null

say "brig (release build, with the guest init embedded)"
cargo build --release --locked
# .cargo/config.toml names the target (brig is static-pie): the binary is built under
# target/x86_64-unknown-linux-gnu/; target/release/brig is where everything looks for it.
# brig as an OCI runtime is the same binary under the name brig-runc (dispatched on argv[0]).
scripts/link-bins

# A small image from Debian's busybox-static, so that the README's first `brig run` works
# offline (issue 11); re-importing the same busybox is a no-op.
say "a local image: localhost/busybox (Debian's busybox-static)"
scripts/local-image

# The template `brig run`'s default shape restores (issue 11), so that the first run does
# not pay for making it. Only where KVM can run a guest's user space (not PVM, not none).
if target/release/brig info 2>/dev/null | grep -q '^kvm: .*(API '; then
  say "the default template (brig template build: one cold boot, saved)"
  target/release/brig template build || say "warning: no default template; the first brig run makes it"
else
  say "no usable KVM here: the default template is made by the first brig run on a KVM host"
fi

say "nested-KVM test harness cache"
scripts/with-kvm --prepare

say "done: target/release/brig (and brig-runc), kernel $(kernels/build.sh --print-path)"
