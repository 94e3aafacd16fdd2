#!/usr/bin/env bash
# Installs the Debian packages clipd's tests and demo use, if any is missing.
set -euo pipefail
pkgs=(docker-registry skopeo umoci fuse3 zstd pigz debootstrap systemd runc)
cmds=(docker-registry skopeo umoci fusermount3 zstd pigz debootstrap systemd-socket-activate runc)
missing=()
for i in "${!pkgs[@]}"; do
  command -v "${cmds[$i]}" >/dev/null 2>&1 || missing+=("${pkgs[$i]}")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
