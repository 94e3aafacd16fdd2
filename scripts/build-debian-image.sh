#!/usr/bin/env bash
# Builds the debian-python OCI image layout the tests and the demo use when
# ../shared/images/debian-python is absent:
#
#   tag minbase  1 layer:  debootstrap --variant=minbase bookworm
#   tag python   2 layers: the same layer + apt-get install --no-install-recommends python3
#
# Usage: scripts/build-debian-image.sh OUTDIR
#
# Needs root, debootstrap, umoci and network access to deb.debian.org (or
# $DEBIAN_MIRROR); downloads about 60 MB. Idempotent: an OUTDIR that already
# holds both tags is left alone, and the layout is built in a temporary
# directory beside OUTDIR and renamed into place only when complete.
set -euo pipefail

MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=${DEBIAN_SUITE:-bookworm}

if [ $# -ne 1 ]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
OUT=$(realpath -m "$1")
start=$(date +%s)
say() { printf '[build-debian-image %4ds] %s\n' "$(( $(date +%s) - start ))" "$*"; }

has_tag() { grep -q "\"org.opencontainers.image.ref.name\":\"$1\"" "$OUT/index.json" 2>/dev/null; }
if has_tag minbase && has_tag python; then
  say "$OUT already has tags minbase and python; nothing to do"
  exit 0
fi

[ "$(id -u)" -eq 0 ] || { echo "$0: must run as root (debootstrap, chroot)" >&2; exit 1; }
for tool in debootstrap umoci chroot; do
  command -v "$tool" >/dev/null || { echo "$0: $tool is missing (apt-get install $tool)" >&2; exit 1; }
done

mkdir -p "$(dirname "$OUT")"
WORK=$(mktemp -d "$OUT.tmp.XXXXXX")
LAYOUT=$WORK/layout
cleanup() {
  # Whatever happened, leave no bind mount behind before deleting.
  for m in proc dev; do
    for b in "$WORK"/b1/rootfs "$WORK"/b2/rootfs; do
      if mountpoint -q "$b/$m" 2>/dev/null; then umount -l "$b/$m" || true; fi
    done
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

say "creating the layout in $WORK"
umoci init --layout "$LAYOUT"
umoci new --image "$LAYOUT:minbase"
umoci config --image "$LAYOUT:minbase" \
  --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --config.cmd /bin/bash
# Unpacking the empty image gives a bundle whose mtree is the empty tree, so
# the repack below records the whole debootstrapped root as one layer.
umoci unpack --image "$LAYOUT:minbase" "$WORK/b1"

say "debootstrap --variant=minbase $SUITE from $MIRROR (downloads ~40 MB)"
debootstrap --variant=minbase "$SUITE" "$WORK/b1/rootfs" "$MIRROR"
rm -rf "$WORK"/b1/rootfs/var/cache/apt/archives/*.deb "$WORK"/b1/rootfs/var/lib/apt/lists/*

say "repacking tag minbase (layer 1)"
umoci repack --image "$LAYOUT:minbase" "$WORK/b1"
rm -rf "$WORK/b1"

# umoci repack --image L:TAG overwrites TAG: give python its own tag first so
# that minbase keeps one layer.
umoci tag --image "$LAYOUT:minbase" python
umoci unpack --image "$LAYOUT:python" "$WORK/b2"
R=$WORK/b2/rootfs

say "installing python3 in a chroot"
mount -t proc proc "$R/proc"
mount --bind /dev "$R/dev"
cp /etc/resolv.conf "$R/etc/resolv.conf"
chroot "$R" /usr/bin/env DEBIAN_FRONTEND=noninteractive apt-get -q update
chroot "$R" /usr/bin/env DEBIAN_FRONTEND=noninteractive apt-get -q install -y --no-install-recommends python3
chroot "$R" apt-get clean
rm -rf "$R"/var/lib/apt/lists/*
umount -l "$R/dev"
umount -l "$R/proc"

say "repacking tag python (layer 2)"
umoci repack --image "$LAYOUT:python" "$WORK/b2"
umoci config --image "$LAYOUT:python" --config.cmd /usr/bin/python3
rm -rf "$WORK/b2"
umoci gc --layout "$LAYOUT"

rm -rf "$OUT"
mv "$LAYOUT" "$OUT"
has_tag minbase && has_tag python || { echo "$0: $OUT lacks a tag after the build" >&2; exit 1; }
du -sh "$OUT" | sed 's/^/  size: /'
say "done: $OUT (tags minbase, python)"
