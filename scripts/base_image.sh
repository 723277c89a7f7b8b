#!/usr/bin/env bash
# Build a Debian bookworm base image without an image registry: debootstrap a minimal root file system from
# the Debian mirror this machine's apt already uses, then `docker import` it. Python 3.11 and venv come from
# Debian's packages, so the Dockerfile's stages work on it exactly as on the public python:3.11 base.
#   usage: scripts/base_image.sh [TAG]        (default safealign-base:bookworm; MIRROR=... overrides)
# Idempotent: an existing TAG is kept (delete it with `docker rmi` to rebuild).
set -euo pipefail
TAG="${1:-safealign-base:bookworm}"
DOCKER="${DOCKER:-docker}"
if "$DOCKER" image inspect "$TAG" >/dev/null 2>&1; then
  echo "base image $TAG exists"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap missing: apt-get install -y debootstrap" >&2; exit 1; }
if [ -z "${MIRROR:-}" ]; then
  # The first Debian archive apt is configured with (deb822 sources first, then the one-line format).
  MIRROR="$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)"
  [ -n "$MIRROR" ] || MIRROR="$(awk '$1 == "deb" && $3 ~ /^bookworm$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)"
fi
[ -n "$MIRROR" ] || { echo "no Debian mirror found in /etc/apt: set MIRROR" >&2; exit 1; }
ROOTFS="$(mktemp -d)"
trap 'rm -rf "$ROOTFS"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$ROOTFS" "$MIRROR"
# Package lists and caches are not part of an image.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/archives/*.deb
tar -C "$ROOTFS" --numeric-owner -c . | "$DOCKER" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  - "$TAG"
echo "built $TAG"
