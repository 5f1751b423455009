#!/usr/bin/env bash
# Builds the real Dockerfile on a machine without a container registry: on the local base image
# (build-local-base.sh) instead of the vLLM image.
#   test     stub vLLM and LMCache servers (tests/stubs) as the `vllm` and `lmcache` commands; everything
#            else (tini, supervisor, user, volumes, healthcheck, entrypoint) is the product's.
#   product  the image users run: vLLM, torch and LMCache from PyPI at the versions.env pins (several GB
#            to download, about 4 minutes cold on 2 cores).
# Prints the build time and the image size; the last line is IMAGE=TAG.
#
# Usage (daemon running, see scripts/ci/start-docker.sh): docker/build-image.sh [TARGET] [TAG]
#   TARGET test (default) or product; TAG defaults to llm-appliance:TARGET.
#   Env knobs: BASE_IMAGE (appliance-local-base:bookworm, built if missing; another image is pulled if
#   missing, e.g. vllm/vllm-openai:v0.32.0 where a registry is reachable), FORCE=1 (build even if cached),
#   STACK_PINS (test stage only: other pins for the entrypoint and the stubs, as the upgrade drill builds).
#
# Cache: the image carries the label appliance.build.inputs, a hash of everything the build reads: the
# Dockerfile, the files .dockerignore lets into the build context (pyproject.toml, entrypoint/ with
# versions.env, docs/, env/, the stubs), the base image's id and the target. When TAG already carries the
# hash of the current inputs, nothing is built. Otherwise Docker's layer cache still keeps what did not
# change: an edit of the entrypoint package rebuilds only the small layers above vLLM.
#
# Builder: Debian's /usr/bin/docker (20.10) has BuildKit built in and builds only the stages the target
# needs; a newer CLI without the buildx plugin cannot use BuildKit, so we fall back to the classic builder
# (which also builds the stages above the target; the Dockerfile keeps `test` above `product` for that).
set -euo pipefail

TARGET=${1:-test}
TAG=${2:-llm-appliance:$TARGET}
BASE_IMAGE=${BASE_IMAGE:-appliance-local-base:bookworm}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

say() { echo "build-image: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }
megabytes() { awk -v s="$1" 'BEGIN {printf "%.0f MB", s/1e6}'; }

case $TARGET in test|product) ;; *) die "TARGET must be test or product, not '$TARGET'" ;; esac
docker info >/dev/null 2>&1 || die "no Docker daemon answers: run scripts/ci/start-docker.sh first"
if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    if [ "$BASE_IMAGE" = appliance-local-base:bookworm ]; then
        say "$BASE_IMAGE is missing: building it"
        "$ROOT/docker/build-local-base.sh" "$BASE_IMAGE"
    else  # e.g. BASE_IMAGE=vllm/vllm-openai:v0.26.0 where a registry is reachable
        docker pull "$BASE_IMAGE" >&2 || die "base image $BASE_IMAGE is missing and cannot be pulled"
    fi
fi

# --- the inputs' hash --------------------------------------------------------------------------------------
# The context paths are read from .dockerignore's allowlist (its `!path` lines), so that the hash covers what
# Docker sends and nothing else; bytecode is excluded there and here.
inputs_hash() {
    local paths=(Dockerfile .dockerignore) p
    while read -r p; do paths+=("${p%/}"); done < <(sed -n 's/^!//p' "$ROOT/.dockerignore")
    {
        (cd "$ROOT" && find "${paths[@]}" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 2>/dev/null \
            | LC_ALL=C sort -z | xargs -0 sha256sum)
        echo "base $(docker image inspect -f '{{.Id}}' "$BASE_IMAGE")"
        echo "target $TARGET"
        echo "pins ${STACK_PINS:-}"
    } | sha256sum | cut -c1-16
}
inputs=$(inputs_hash)
old_id=$(docker image inspect -f '{{.Id}}' "$TAG" 2>/dev/null || true)
if [ "${FORCE:-0}" != 1 ] && [ -n "$old_id" ] \
        && [ "$(docker image inspect -f '{{index .Config.Labels "appliance.build.inputs"}}' "$TAG")" = "$inputs" ]; then
    say "$TAG is up to date (inputs $inputs, built $(docker image inspect -f '{{.Created}}' "$TAG" | cut -c1-19)):" \
        "$(megabytes "$(docker image inspect -f '{{.Size}}' "$TAG")"), not rebuilt"
    echo "IMAGE=$TAG"
    exit 0
fi

# --- build -------------------------------------------------------------------------------------------------
if [ -x /usr/bin/docker ] && DOCKER_BUILDKIT=1 /usr/bin/docker build --help 2>/dev/null | grep -q -- '--progress'; then
    build=(env DOCKER_BUILDKIT=1 /usr/bin/docker build --progress=plain)
else
    build=(env DOCKER_BUILDKIT=0 docker build)
fi

# The labels: the one version of package and image and its Source URL (pyproject.toml), the commit, the date.
# The revision is not among the inputs: an image reused at a later commit keeps the commit it was built at
# (scripts/release.py rebuilds the labels when that is not HEAD).
version=$(PYTHONPATH="$ROOT" python3 -m entrypoint.version)
source_url=$(python3 -c 'import re, sys; print(re.search(r"^Source = \"(.+)\"$", open(sys.argv[1]).read(), re.M).group(1))' \
    "$ROOT/pyproject.toml")
revision=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo "")
created=$(date -u +%Y-%m-%dT%H:%M:%SZ)

say "building $TAG (target $TARGET, base $BASE_IMAGE, inputs $inputs) with: ${build[*]}"
log=$(mktemp /tmp/build-image.XXXXXX.log)
t0=$SECONDS
if ! "${build[@]}" \
        --build-arg BASE_IMAGE="$BASE_IMAGE" \
        --build-arg IMAGE_VERSION="$version" \
        --build-arg IMAGE_REVISION="$revision" \
        --build-arg IMAGE_CREATED="$created" \
        --build-arg IMAGE_SOURCE="$source_url" \
        --build-arg STACK_PINS="${STACK_PINS:-}" \
        --label appliance.build.inputs="$inputs" \
        --target "$TARGET" -t "$TAG" "$ROOT" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    die "docker build failed (log above, full log in $log)"
fi
elapsed=$((SECONDS - t0))
# What the build's own checks printed (installed versions, the compiled ops, `entrypoint check`).
grep -E "^#[0-9]+ [0-9.]+ (installed: vllm|compiled lmcache.c_ops loads|ok: )" "$log" | sed 's/^#[0-9]* [0-9.]* /  /' >&2 || true
rm -f "$log"

# The image TAG named before is now untagged: drop it, so that rebuilds do not pile up gigabytes (fails
# harmlessly while a container or another tag still uses it; its shared layers stay either way).
new_id=$(docker image inspect -f '{{.Id}}' "$TAG")
if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then
    docker image rm "$old_id" >/dev/null 2>&1 || true
fi

size=$(docker image inspect -f '{{.Size}}' "$TAG")
base_size=$(docker image inspect -f '{{.Size}}' "$BASE_IMAGE")
say "built $TAG in ${elapsed}s: $(megabytes "$size") (base $(megabytes "$base_size")," \
    "appliance layers $(megabytes $((size - base_size))))"
echo "IMAGE=$TAG"
