#!/usr/bin/env bash
# Build cast's default base image without pulling from any registry: a minimal
# Debian bookworm root made by debootstrap from Debian packages, turned into an
# image with `docker import`. Idempotent: if the tag exists nothing is done.
# Prints the image tag on stdout (progress goes to stderr).
#
#   docker/build-base-image.sh [TAG]          default TAG: cast-base:bookworm
#   CAST_DEBIAN_MIRROR=http://mirror/debian docker/build-base-image.sh
#
# The mirror defaults to the one the host's own apt sources use for bookworm
# (/etc/apt/sources.list, sources.list.d/*.list and deb822 *.sources), so the
# image comes from wherever this host is allowed to fetch packages.
#
# Needs root, debootstrap and a Docker engine. Workers use the tag through
# `--base-image` / CAST_WORKER_BASE_IMAGE (its default is this tag).
set -euo pipefail

tag="${1:-cast-base:bookworm}"
suite="bookworm"
apt_dir="/etc/apt"

# Prints the first URI of an enabled `deb` source for $suite; one-line entries
# may carry [options], deb822 stanzas may span lines and be `Enabled: no`.
host_mirror() {
    local files=() file
    for file in "$apt_dir"/sources.list "$apt_dir"/sources.list.d/*.list "$apt_dir"/sources.list.d/*.sources; do
        [ -f "$file" ] && files+=("$file")
    done
    [ ${#files[@]} -gt 0 ] || return 0
    awk -v suite="$suite" '
        function has(list, word) { return (" " list " ") ~ (" " word " ") }
        function pick(uri) { if (uri ~ /^(https?|file):/ && !found) { print uri; found = 1 } }
        function flush() {
            if (has(types, "deb") && has(suites, suite) && tolower(enabled) != "no") pick(uris)
            types = suites = uris = enabled = ""
        }
        FNR == 1 { flush() }
        /^[[:space:]]*#/ { next }
        FILENAME ~ /\.sources$/ {
            if ($0 ~ /^[[:space:]]*$/) { flush(); next }
            if ($0 ~ /^[[:space:]]/) next  # a continuation line (e.g. an inline key)
            key = tolower($1); sub(/:$/, "", key)
            value = $0; sub(/^[^:]*:[[:space:]]*/, "", value); gsub(/[[:space:]]+/, " ", value)
            if (key == "types") types = value
            else if (key == "uris") { split(value, first, " "); uris = first[1] }
            else if (key == "suites") suites = value
            else if (key == "enabled") enabled = value
            next
        }
        $1 == "deb" {
            line = $0; sub(/\[[^]]*\]/, "", line)
            split(line, field, " ")
            if (field[3] == suite) pick(field[2])
        }
        END { flush() }
    ' "${files[@]}"
}

if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "$tag"
    exit 0
fi

mirror="${CAST_DEBIAN_MIRROR:-$(host_mirror)}"
if [ -z "$mirror" ]; then
    echo "no deb source for $suite in $apt_dir's sources; set CAST_DEBIAN_MIRROR to a Debian mirror" >&2
    exit 1
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
