#!/usr/bin/env bash
# Builds the real Dockerfile for CPU-only CI: on the local base image (build-local-base.sh) instead of the
# vLLM image, and with --target test, which installs the stub vLLM and LMCache servers (tests/stubs) as the
# `vllm` and `lmcache` commands. Everything else (tini, supervisor, user, volumes, healthcheck, entrypoint)
# is the product's. Prints the build time and the image size.
#
# Usage (daemon running, see start-docker.sh): scripts/ci/build-test-image.sh [TAG]
#   TAG defaults to llm-appliance:test. Env knobs: BASE_IMAGE (appliance-local-base:bookworm, built if
#   missing), TARGET (test), STACK_PINS (test stage: other pins for the stubs, as the upgrade drill builds).
#
# Builder: Debian's /usr/bin/docker (20.10) has BuildKit built in and builds only the stages the target
# needs; a newer CLI without the buildx plugin cannot use BuildKit, so we fall back to the classic builder
# (which also builds the stages above the target; the Dockerfile keeps `test` above `product` for that).
set -euo pipefail

TAG=${1:-llm-appliance:test}
BASE_IMAGE=${BASE_IMAGE:-appliance-local-base:bookworm}
TARGET=${TARGET:-test}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)

say() { echo "build-test-image: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

docker info >/dev/null 2>&1 || die "no Docker daemon answers: run scripts/ci/start-docker.sh first"
if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    [ "$BASE_IMAGE" = appliance-local-base:bookworm ] || die "base image $BASE_IMAGE is missing"
    say "$BASE_IMAGE is missing: building it"
    "$ROOT/scripts/ci/build-local-base.sh" "$BASE_IMAGE"
fi

if [ -x /usr/bin/docker ] && DOCKER_BUILDKIT=1 /usr/bin/docker build --help 2>/dev/null | grep -q -- '--progress'; then
    build=(env DOCKER_BUILDKIT=1 /usr/bin/docker build --progress=plain)
else
    build=(env DOCKER_BUILDKIT=0 docker build)
fi

version=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo dev)
revision=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo "")
created=$(date -u +%Y-%m-%dT%H:%M:%SZ)

say "building $TAG (target $TARGET, base $BASE_IMAGE) with: ${build[*]}"
log=$(mktemp /tmp/build-test-image.XXXXXX.log)
t0=$SECONDS
if ! "${build[@]}" \
        --build-arg BASE_IMAGE="$BASE_IMAGE" \
        --build-arg IMAGE_VERSION="$version" \
        --build-arg IMAGE_REVISION="$revision" \
        --build-arg IMAGE_CREATED="$created" \
        --build-arg STACK_PINS="${STACK_PINS:-}" \
        --target "$TARGET" -t "$TAG" "$ROOT" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    die "docker build failed (log above, full log in $log)"
fi
elapsed=$((SECONDS - t0))
rm -f "$log"

size=$(docker image inspect -f '{{.Size}}' "$TAG")
base_size=$(docker image inspect -f '{{.Size}}' "$BASE_IMAGE")
say "built $TAG in ${elapsed}s: $(awk -v s="$size" -v b="$base_size" \
    'BEGIN {printf "%.0f MB (base %.0f MB, appliance layers %.1f MB)", s/1e6, b/1e6, (s-b)/1e6}')"
echo "IMAGE=$TAG"
