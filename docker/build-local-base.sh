#!/usr/bin/env bash
# Builds a minimal Debian bookworm image locally, to stand in for the product's CUDA/vLLM base image
# (docker build --build-arg BASE_IMAGE=appliance-local-base:bookworm ...). Needed because no container
# registry can be reached from the build machines: the only way to get a base image is debootstrap from
# the Debian mirror + `docker import`.
#
# Usage (as root, daemon running, see start-docker.sh): docker/build-local-base.sh [TAG]
#   TAG defaults to appliance-local-base:bookworm. Skips if TAG exists, unless FORCE=1.
# Env knobs: SUITE (bookworm), DEBIAN_MIRROR (http://deb.debian.org/debian), CACHE_DIR (/root/.cache/appliance)
#
# What the image promises to Dockerfiles built on it (same as the real vLLM base, as far as tests care):
#   - python3 (3.11) with pip and venv, `python` -> python3, tini, procps, curl, ca-certificates.
#   - pip may install into the system python: the EXTERNALLY-MANAGED marker is removed and
#     PIP_BREAK_SYSTEM_PACKAGES=1 is set (the vLLM image installs into its system python too).
#   - the build host's CA bundle is trusted (TLS interception on CI machines), through the system bundle
#     and PIP_CERT / REQUESTS_CA_BUNDLE / SSL_CERT_FILE. These are test workarounds: they live here, not in
#     the product Dockerfile.
#   - apt works inside builds (sources for bookworm, -updates and -security); package lists are removed,
#     so run apt-get update first.
set -euo pipefail

TAG=${1:-appliance-local-base:bookworm}
SUITE=${SUITE:-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE_DIR=${CACHE_DIR:-/root/.cache/appliance}
PACKAGES=python3,python3-venv,python3-pip,python-is-python3,ca-certificates,tini,procps,curl
HOST_BUNDLE=/etc/ssl/certs/ca-certificates.crt
export DEBIAN_FRONTEND=noninteractive

say() { echo "build-local-base: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap needs it)"
docker info >/dev/null 2>&1 || die "no Docker daemon answers: run scripts/ci/start-docker.sh first"

if [ "${FORCE:-0}" != 1 ] && docker image inspect "$TAG" >/dev/null 2>&1; then
    say "$TAG exists (FORCE=1 to rebuild)"
    exit 0
fi

if ! command -v debootstrap >/dev/null; then
    say "installing debootstrap"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi

# Work on disk (/var/tmp), not on a possibly small tmpfs /tmp: the rootfs is ~200 MB unpacked.
WORK=$(mktemp -d /var/tmp/appliance-base.XXXXXX)
ROOT=$WORK/rootfs
cleanup() {
    # debootstrap mounts proc/sys (and may bind /dev) inside the target; a failed run can leave them
    # mounted, and rm -rf through a bind mount of /dev or /proc would be a disaster. Unmount, deepest first,
    # and never let rm cross a filesystem boundary.
    local m
    awk -v r="$WORK" 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done
    rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT

# The .deb set is cached by suite, architecture and package list: a second run on the same machine
# (FORCE=1, or after /var/lib/docker was wiped) downloads nothing. The first run works from scratch.
ARCH=$(dpkg --print-architecture)
KEY=$(printf '%s %s %s' "$SUITE" "$ARCH" "$PACKAGES" | sha256sum | cut -c1-12)
TARBALL=$CACHE_DIR/debootstrap-$SUITE-$ARCH-$KEY.tgz
mkdir -p "$CACHE_DIR" "$ROOT"

t0=$SECONDS
if [ ! -s "$TARBALL" ]; then
    say "downloading $SUITE packages into $TARBALL"
    # Written under a temporary name and renamed, so an interrupted run never leaves a broken cache.
    debootstrap --variant=minbase --include="$PACKAGES" --make-tarball="$TARBALL.part" \
        "$SUITE" "$WORK/dl" "$MIRROR" >"$WORK/debootstrap-dl.log" 2>&1 \
        || { tail -n 20 "$WORK/debootstrap-dl.log" >&2; die "debootstrap --make-tarball failed"; }
    mv "$TARBALL.part" "$TARBALL"
fi
t1=$SECONDS
say "installing $SUITE (minbase + $PACKAGES)"
debootstrap --variant=minbase --include="$PACKAGES" --unpack-tarball="$TARBALL" \
    "$SUITE" "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -n 20 "$WORK/debootstrap.log" >&2; die "debootstrap failed (delete $TARBALL if it is stale)"; }
t2=$SECONDS

# --- shape the rootfs ------------------------------------------------------------------------------------
# apt inside later builds: the release alone lacks security fixes; use the canonical mirror names.
cat >"$ROOT/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
EOF
# Same dpkg/apt habits as Docker's official debian images: no recommends, keep images small.
cat >"$ROOT/etc/apt/apt.conf.d/90appliance-ci" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
EOF

# Trust what the host trusts. The interception CAs go to /usr/local/share/ca-certificates too, so that an
# `update-ca-certificates` run by a later apt-get install keeps them; then the host bundle itself is
# copied, so the image trusts exactly the same set even where the two ca-certificates versions differ.
if [ -d /usr/local/share/ca-certificates ]; then
    cp -a /usr/local/share/ca-certificates/. "$ROOT/usr/local/share/ca-certificates/"
fi
chroot "$ROOT" update-ca-certificates >/dev/null 2>&1 || say "update-ca-certificates in chroot failed (bundle copied anyway)"
[ -s "$HOST_BUNDLE" ] && cp "$HOST_BUNDLE" "$ROOT/etc/ssl/certs/ca-certificates.crt"

# pip into the system python, as in the vLLM image (which has no such marker).
rm -f "$ROOT"/usr/lib/python3*/EXTERNALLY-MANAGED

# Docker provides these at run time; a copy of the build host's would only mislead.
rm -f "$ROOT/etc/resolv.conf" "$ROOT/etc/hostname"
# Size: package caches and lists, docs, man pages, debootstrap's leftovers.
rm -rf "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/* \
       "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/* \
       "$ROOT"/var/log/*.log "$ROOT"/var/log/apt/* "$ROOT"/debootstrap
find "$ROOT/usr/lib" -name __pycache__ -type d -prune -exec rm -rf {} +

# --- import ----------------------------------------------------------------------------------------------
CA=/etc/ssl/certs/ca-certificates.crt
# With FORCE=1 the previous image would stay behind untagged; note it to drop it after the import.
old_id=$(docker image inspect -f '{{.Id}}' "$TAG" 2>/dev/null || true)
t3=$SECONDS
# /dev, /proc, /sys contents are supplied by the runtime; device nodes in the tar are useless there.
tar -C "$ROOT" --numeric-owner --exclude=./dev/* --exclude=./proc/* --exclude=./sys/* -cf - . \
| docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "ENV SSL_CERT_FILE=$CA" \
    --change "ENV REQUESTS_CA_BUNDLE=$CA" \
    --change "ENV PIP_CERT=$CA" \
    --change 'ENV PIP_BREAK_SYSTEM_PACKAGES=1' \
    --change 'ENV PIP_DISABLE_PIP_VERSION_CHECK=1' \
    --change 'ENV PIP_ROOT_USER_ACTION=ignore' \
    --change "LABEL org.opencontainers.image.description=\"Local stand-in for the appliance base image ($SUITE minbase)\"" \
    --change 'CMD ["/bin/bash"]' \
    --message "debootstrap $SUITE minbase + $PACKAGES" \
    - "$TAG" >/dev/null
t4=$SECONDS
if [ -n "$old_id" ] && [ "$old_id" != "$(docker image inspect -f '{{.Id}}' "$TAG")" ]; then
    # Fails harmlessly while containers or child images still use it.
    docker image rm "$old_id" >/dev/null 2>&1 || true
fi

say "built $TAG: $(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}')," \
    "download $((t1 - t0))s, debootstrap $((t2 - t1))s, import $((t4 - t3))s, total $((t4 - t0))s"
docker run --rm "$TAG" python -c 'import sys, ssl, venv; print("python", sys.version.split()[0], "ok")' >&2
