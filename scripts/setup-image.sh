#!/bin/sh
# Installs what the image code and its tests use from Debian: mkfs.erofs (brig needs it at
# run time), and the reference tools the tests and scripts/bench-pull run against.
set -eu
pkgs="erofs-utils docker-registry skopeo umoci busybox-static"
missing=""
for p in $pkgs; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
fi
