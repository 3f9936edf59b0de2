#!/usr/bin/env bash
# A Debian bookworm base image built with debootstrap, for hosts that reach Debian's archive but no
# container registry. It stands in for debian:bookworm-slim: the minbase variant, the same apt sources,
# and the slim image's dpkg excludes (no manuals, docs or translations).
#
#   deploy/image/base.sh [TAG]        # default TAG: localhost/niff-debootstrap:bookworm
#
# The root file system is cached as build/image/debian-bookworm.tar.gz: later runs (and a fresh
# container storage) import it again in seconds. Needs root, debootstrap and podman or docker.
# Settings (environment): CONTAINER_ENGINE, DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tag="${1:-localhost/niff-debootstrap:bookworm}"
engine="${CONTAINER_ENGINE:-podman}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
cache="$here/../../build/image/debian-bookworm.tar.gz"

log() { printf 'base: %s\n' "$*" >&2; }

if "$engine" image inspect "$tag" >/dev/null 2>&1; then
    log "$tag is there"
    exit 0
fi

if [[ ! -f "$cache" ]]; then
    rootfs="$(mktemp -d)"
    trap 'rm -rf "$rootfs"' EXIT
    log "debootstrap bookworm from $mirror"
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >/dev/null
    rm -f "$rootfs/etc/apt/sources.list"
    cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/slim" <<'EXCLUDES'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
EXCLUDES
    # What the excludes would have kept out, had they been there from the start.
    find "$rootfs/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete
    rm -rf "$rootfs"/usr/share/{man,groff,info,lintian,linda,locale}/* \
        "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
        "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/*
    mkdir -p "$(dirname "$cache")"
    tar --numeric-owner -C "$rootfs" -czf "$cache.part" .
    mv "$cache.part" "$cache"
fi
log "importing $cache as $tag"
if ! output="$("$engine" import --change 'CMD ["bash"]' "$cache" "$tag" 2>&1)"; then
    printf '%s\n' "$output" >&2
    exit 1
fi
