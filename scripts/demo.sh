#!/usr/bin/env bash
# clipd demo: index a real Debian + Python image in a throwaway local
# registry, mount it lazily through the daemon's socket, and run python3 in
# it; then publish the index beside the image and mount it by reference on a
# second node (another daemon with an empty state and cache). Run as root (FUSE, chroot) from anywhere: `make demo` builds bin/clipd
# first. Everything it starts is stopped and removed on exit, error or Ctrl-C.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLIPD=${CLIPD:-$ROOT/bin/clipd}
WORK=""
REGISTRY_PID=""
DAEMON_PID=""
MOUNTPOINT=""
MOUNTPOINT_B=""
DAEMON_B_PID=""

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
T0=$(now_ms)
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
info() { printf '    %s\n' "$*"; }
ms() { printf '%d ms' "$1"; }
die() { printf '\033[31merror:\033[0m %s\n' "$*" >&2; exit 1; }

cleanup() {
  local rc=$?
  set +e
  if [ -n "$MOUNTPOINT" ] && mountpoint -q "$MOUNTPOINT" 2>/dev/null; then
    "$CLIPD" umount --socket "$WORK/clipd.sock" "$MOUNTPOINT" >/dev/null 2>&1 || umount -l "$MOUNTPOINT"
  fi
  if [ -n "$MOUNTPOINT_B" ] && mountpoint -q "$MOUNTPOINT_B" 2>/dev/null; then
    "$CLIPD" umount --socket "$WORK/node-b/clipd.sock" "$MOUNTPOINT_B" >/dev/null 2>&1 || umount -l "$MOUNTPOINT_B"
  fi
  for pid in "$DAEMON_B_PID" "$DAEMON_PID" "$REGISTRY_PID"; do
    [ -n "$pid" ] || continue
    kill "$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  if [ -n "$WORK" ]; then
    # Never delete through a mount that is still there.
    if [ -n "$MOUNTPOINT" ] && mountpoint -q "$MOUNTPOINT" 2>/dev/null; then umount -l "$MOUNTPOINT"; fi
    if [ -n "$MOUNTPOINT_B" ] && mountpoint -q "$MOUNTPOINT_B" 2>/dev/null; then umount -l "$MOUNTPOINT_B"; fi
    rm -rf "$WORK"
  fi
  if [ $rc -ne 0 ]; then
    printf '\n\033[31mdemo failed (exit %d)\033[0m\n' "$rc" >&2
    [ -f "${DAEMON_LOG:-}" ] && { echo "--- clipd log (tail) ---" >&2; tail -n 30 "$DAEMON_LOG" >&2; }
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ "$(id -u)" -eq 0 ] || die "run as root (FUSE mounts and chroot need it)"
[ -x "$CLIPD" ] || die "$CLIPD not found: run 'make build' (or 'make demo') first"
[ -e /dev/fuse ] || die "/dev/fuse is missing: load the fuse kernel module"

step "Checking tools"
pkgs=(docker-registry skopeo umoci fuse3)
cmds=(docker-registry skopeo umoci fusermount3)
missing=()
for i in "${!pkgs[@]}"; do
  command -v "${cmds[$i]}" >/dev/null 2>&1 || missing+=("${pkgs[$i]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  info "installing ${missing[*]} with apt-get"
  DEBIAN_FRONTEND=noninteractive apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
info "docker-registry, skopeo, umoci, fuse3: ok"

step "Finding the image"
has_tag() { grep -q "\"org.opencontainers.image.ref.name\":\"$2\"" "$1/index.json" 2>/dev/null; }
LAYOUT=$ROOT/../shared/images/debian-python
if ! has_tag "$LAYOUT" python; then
  LAYOUT=$ROOT/.cache/images/debian-python
  if ! has_tag "$LAYOUT" python; then
    info "no prebuilt image: building one with debootstrap (a few minutes, ~60 MB download)"
    "$ROOT/scripts/build-debian-image.sh" "$LAYOUT"
  fi
fi
LAYOUT=$(cd "$LAYOUT" && pwd)
info "OCI layout $LAYOUT (tag python: Debian bookworm minbase + python3)"

WORK=$(mktemp -d /tmp/clipd-demo.XXXXXX)
mkdir -p "$WORK/registry" "$WORK/state" "$WORK/cache" "$WORK/mnt"

step "Starting a throwaway registry"
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
PORT=""
for _ in $(seq 50); do
  p=$(( 20000 + RANDOM % 30000 ))
  port_in_use "$p" || { PORT=$p; break; }
done
[ -n "$PORT" ] || die "no free port found on 127.0.0.1"
HOST=127.0.0.1:$PORT
cat >"$WORK/registry/config.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $WORK/registry/storage
http:
  addr: $HOST
EOF
docker-registry serve "$WORK/registry/config.yml" >"$WORK/registry/log" 2>&1 &
REGISTRY_PID=$!
for _ in $(seq 100); do port_in_use "$PORT" && break; sleep 0.1; done
port_in_use "$PORT" || { cat "$WORK/registry/log" >&2; die "docker-registry did not start on $HOST"; }
info "docker-registry (distribution 2.8) on $HOST"

t=$(now_ms)
skopeo copy --quiet --dest-tls-verify=false "oci:$LAYOUT:python" "docker://$HOST/debian:python"
PUSH_MS=$(( $(now_ms) - t ))
info "pushed debian:python in $(ms $PUSH_MS)"
BLOB_BYTES=$(du -sb "$WORK/registry/storage/docker/registry/v2/blobs" | cut -f1)
info "the registry now holds $((BLOB_BYTES / 1024 / 1024)) MiB of blobs for this image"

step "Starting clipd serve"
# start_node DIR: a daemon with its socket, state, cache and mount root in
# DIR, logging to DIR/clipd.log; sets NODE_PID once it answers.
start_node() {
  local dir=$1
  mkdir -p "$dir"
  printf '[daemon]\nsocket = "%s/clipd.sock"\nstate_dir = "%s/state"\nmount_roots = ["%s/mnt"]\nlog_level = "info"\n\n[cache]\ndir = "%s/cache"\n' \
    "$dir" "$dir" "$dir" "$dir" >"$dir/config.toml"
  "$CLIPD" serve --config "$dir/config.toml" >"$dir/clipd.log" 2>&1 &
  NODE_PID=$!
  for _ in $(seq 100); do
    [ -S "$dir/clipd.sock" ] && "$CLIPD" ls --socket "$dir/clipd.sock" >/dev/null 2>&1 && return 0
    kill -0 "$NODE_PID" 2>/dev/null || die "clipd serve ($dir) exited: $(tail -5 "$dir/clipd.log")"
    sleep 0.1
  done
  die "clipd serve ($dir) does not answer on $dir/clipd.sock"
}
SOCK=$WORK/clipd.sock
DAEMON_LOG=$WORK/clipd.log
start_node "$WORK"
DAEMON_PID=$NODE_PID
info "clipd serve (pid $DAEMON_PID) listening on $SOCK"

step "Indexing $HOST/debian:python"
ARCHIVE=$WORK/python.clip
t=$(now_ms)
"$CLIPD" index -o "$ARCHIVE" "$HOST/debian:python"
INDEX_MS=$(( $(now_ms) - t ))
info "index: $(du -h "$ARCHIVE" | cut -f1) written in $(ms $INDEX_MS)"

step "Mounting"
MOUNTPOINT=$WORK/mnt/python
mkdir -p "$MOUNTPOINT"
t=$(now_ms)
MOUNT_ID=$("$CLIPD" mount --socket "$SOCK" "$ARCHIVE" "$MOUNTPOINT" | tail -n 1)
MOUNT_MS=$(( $(now_ms) - t ))
info "mount id $MOUNT_ID at $MOUNTPOINT in $(ms $MOUNT_MS)"
info "$(ls "$MOUNTPOINT" | tr '\n' ' ')"

# chroot with the host's /dev bound in a mount namespace of its own, as a
# runtime gives a container its /dev: the mount is nodev, so the image's own
# device nodes (/dev/null...) cannot be opened.
chroot_dev() { unshare --mount --propagation private sh -c 'r=$1; shift; mount --bind /dev "$r/dev" && exec chroot "$r" "$@"' sh "$@"; }

step "Running python3 from the lazily loaded image"
t=$(now_ms)
chroot_dev "$MOUNTPOINT" /usr/bin/python3 -c 'import json, sqlite3, email, sys; print("hello from", sys.version)' | sed 's/^/    /'
FIRST_MS=$(( $(now_ms) - t ))
t=$(now_ms)
chroot_dev "$MOUNTPOINT" /usr/bin/python3 -c 'import json, sqlite3, email, sys' >/dev/null
WARM_MS=$(( $(now_ms) - t ))

LS_JSON=$("$CLIPD" ls --socket "$SOCK" --json)
json_num() { printf '%s' "$LS_JSON" | grep -o "\"$1\": *[0-9]*" | head -n 1 | grep -o '[0-9]*$' || echo 0; }
FETCHED=$(json_num bytes_fetched)
REQUESTS=$(json_num requests)

step "Summary"
printf '    %-34s %s\n' "index (registry -> .clip)" "$(ms $INDEX_MS)"
printf '    %-34s %s\n' "mount (POST /v1/mounts)" "$(ms $MOUNT_MS)"
printf '    %-34s %s\n' "first python3 run (cold)" "$(ms $FIRST_MS)"
printf '    %-34s %s\n' "second python3 run (warm)" "$(ms $WARM_MS)"
printf '    %-34s %s bytes (%d KiB) in %s requests\n' "fetched from the registry" "$FETCHED" $((FETCHED / 1024)) "$REQUESTS"
printf '    %-34s %s bytes (%d MiB)\n' "image size in the registry" "$BLOB_BYTES" $((BLOB_BYTES / 1024 / 1024))
if [ "$BLOB_BYTES" -gt 0 ]; then
  printf '    %-34s %d.%d %%\n' "fetched / image" $((FETCHED * 100 / BLOB_BYTES)) $((FETCHED * 1000 / BLOB_BYTES % 10))
fi

step "Unmounting"
"$CLIPD" umount --socket "$SOCK" "$MOUNT_ID"
mountpoint -q "$MOUNTPOINT" && die "$MOUNTPOINT is still mounted"
info "unmounted"

step "Index once, mount anywhere: node A publishes the index beside the image"
t=$(now_ms)
PUBLISHED=$("$CLIPD" index --push "$HOST/debian:python" 2>/dev/null | grep '^published')
PUSH_INDEX_MS=$(( $(now_ms) - t ))
info "$PUBLISHED"
info "(clipd index --push in $(ms $PUSH_INDEX_MS); a local build goes in one step with"
info " clipd index oci-layout:DIR:TAG --to HOST/REPO:TAG)"

step "Node B: another daemon, empty state and cache, mounts by reference"
B=$WORK/node-b
start_node "$B"
DAEMON_B_PID=$NODE_PID
MOUNTPOINT_B=$B/mnt/python
mkdir -p "$MOUNTPOINT_B"
t=$(now_ms)
MOUNT_B_ID=$("$CLIPD" mount --socket "$B/clipd.sock" "$HOST/debian:python" "$MOUNTPOINT_B" 2>"$B/mount.err" | tail -n 1)
MOUNT_B_MS=$(( $(now_ms) - t ))
info "$(cat "$B/mount.err")"
info "clipd mount $HOST/debian:python: id $MOUNT_B_ID in $(ms $MOUNT_B_MS)"
t=$(now_ms)
chroot "$MOUNTPOINT_B" /usr/bin/python3 -c 'import json, sqlite3, email, sys; print("node B: hello from", sys.version)' | sed 's/^/    /'
FIRST_B_MS=$(( $(now_ms) - t ))
LS_JSON=$("$CLIPD" ls --socket "$B/clipd.sock" --json)
FETCHED_B=$(json_num bytes_fetched)
# The artifact's first layer: the compressed .clip without its windows.
UPFRONT=$(printf '%s\n' "$PUBLISHED" | sed -n 's/.*: \(.* fetched up front, [0-9.]*%\) of the image.*/\1/p')
"$CLIPD" images --socket "$B/clipd.sock" | sed 's/^/    /'
printf '    %-34s %s\n' "mount by reference (cold node)" "$(ms $MOUNT_B_MS)"
printf '    %-34s %s\n' "first python3 run" "$(ms $FIRST_B_MS)"
printf '    %-34s %s of the image\n' "index" "$UPFRONT"
printf '    %-34s %d KiB\n' "spans fetched for python3" $((FETCHED_B / 1024))
"$CLIPD" umount --socket "$B/clipd.sock" "$MOUNT_B_ID"
info "node B unmounted"

step "Running the image's command with runc from a clipd bundle"
# What a runtime does: one request mounts the image and writes an OCI
# runtime bundle for its config (rootfs/ inside the bundle, umoci's layout),
# then runc runs the image's command (python3, reading its program from
# stdin). The mount is writable: an overlay over the image's shared
# read-only mount, whose upper directory goes with the mount.
command -v runc >/dev/null 2>&1 || {
  info "installing runc with apt-get"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends runc
}
BUNDLE=$WORK/mnt/container
MOUNTPOINT=$BUNDLE/rootfs
t=$(now_ms)
MOUNT_ID=$("$CLIPD" mount --socket "$SOCK" --writable --bundle "$BUNDLE" "$ARCHIVE" "$MOUNTPOINT" | tail -n 1)
info "mount id $MOUNT_ID with bundle $BUNDLE in $(ms $(( $(now_ms) - t )))"
info "config.json: $(sed -n '/"args"/,/]/p' "$BUNDLE/config.json" | tr -d '\n\t ' | sed 's/,$//'), root.path $MOUNTPOINT, root.readonly false"
t=$(now_ms)
echo 'import sys, sqlite3; open("/tmp/written-by-the-container", "w").write("x"); print("hello from runc: python", sys.version.split()[0], "sqlite", sqlite3.sqlite_version)' |
  runc --root "$WORK/runc" run --bundle "$BUNDLE" "clipd-demo-$$" | sed 's/^/    /'
info "runc run in $(ms $(( $(now_ms) - t )))"
"$CLIPD" umount --socket "$SOCK" "$MOUNT_ID"
mountpoint -q "$MOUNTPOINT" && die "$MOUNTPOINT is still mounted"
[ -e "$BUNDLE" ] && die "bundle $BUNDLE is still there after umount"
info "unmounted; the bundle went with the mount; total demo time $(ms $(( $(now_ms) - T0 )))"
