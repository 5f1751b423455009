#!/usr/bin/env bash
# Builds the two extra images of compose.cluster.yaml on the appliance's base image, for machines without a
# registry: the router (docker/router/Dockerfile: vllm-router from PyPI) and a Redis store
# (docker/store/Dockerfile: Debian's redis-server). Docker's layer cache makes a rebuild take seconds.
# Usage: docker/build-cluster-images.sh [TAG_SUFFIX]  (default: test -> llm-appliance-router:test, -store:test)
#   BASE_IMAGE: appliance-local-base:bookworm by default (docker/build-local-base.sh).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SUFFIX=${1:-test}
BASE_IMAGE=${BASE_IMAGE:-appliance-local-base:bookworm}
for part in router store; do
    t0=$SECONDS
    docker build -q --build-arg BASE_IMAGE="$BASE_IMAGE" -t "llm-appliance-$part:$SUFFIX" "$ROOT/docker/$part" >/dev/null
    echo "build-cluster-images: llm-appliance-$part:$SUFFIX ready in $((SECONDS - t0)) s" >&2
done
