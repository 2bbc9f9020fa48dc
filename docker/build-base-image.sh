#!/usr/bin/env bash
# Build cast's default base image without pulling from any registry: a minimal
# Debian bookworm root made by debootstrap from Debian packages, turned into an
# image with `docker import`. Idempotent: if the tag exists nothing is done.
# Prints the image tag on stdout (progress goes to stderr).
#
#   docker/build-base-image.sh [TAG]          default TAG: cast-base:bookworm
#   CAST_DEBIAN_MIRROR=http://mirror/debian docker/build-base-image.sh
#
# Needs root, debootstrap and a Docker engine. Workers use the tag through
# `--base-image` / CAST_WORKER_BASE_IMAGE (its default is this tag).
set -euo pipefail

tag="${1:-cast-base:bookworm}"
mirror="${CAST_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
suite="bookworm"

if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "$tag"
    exit 0
fi

rootfs="$(mktemp -d /tmp/cast-base-rootfs.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT

echo "debootstrap $suite from $mirror into $rootfs" >&2
debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
    "$suite" "$rootfs" "$mirror" >&2

# Leave no package lists or downloaded .debs in the image: environment builds
# run `apt-get update` themselves.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
       "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/*.log

tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' \
    --message "cast base image: debootstrap $suite minbase + python3" \
    - "$tag" >&2
echo "$tag"
