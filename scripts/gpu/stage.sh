#!/usr/bin/env bash
# Puts the current stack (vLLM 0.32.0 + LMCache 0.5.6 + torch 2.13.0) on a bare lent GPU machine in as few
# device calls as the 64 MiB-per-call limit allows: the two bundles (../shared/gpu/make-bundle.sh -> .gpu,
# scripts/gpu/make-bundle-new.sh -> .gpu-new) are packed into one uncompressed tar (its pieces are compressed
# already), cut into equal parts; each call carries one part, and the last one installs.
#
#   here:  bash scripts/gpu/stage.sh pack [PART_BYTES]     -> .gpu-stage/part00 .. partNN (ignored by git)
#   there: mkdir -p /tmp/parts && mv .gpu-stage/partNN /tmp/parts/       (one call per part)
#          bash scripts/gpu/stage.sh install                -> /tmp/site-new, /tmp/model-8b, /tmp/model-1b
#
# What the old bundle adds to the new one: its small wheels (supervisor, python-dotenv, ... that the new pins
# share) and the model configs. Its LMCache 0.5.3 wheel is left out (the new stack has 0.5.6).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
case ${1:-} in
pack)
    part=${2:-59100000}  # with the checkout (~4 MB, growing) under the 64 MiB (67,108,864 bytes) a call carries
    dest=$ROOT/.gpu-stage
    grep -qxF "/.gpu-stage/" "$ROOT/.git/info/exclude" || echo "/.gpu-stage/" >> "$ROOT/.git/info/exclude"
    rm -rf "$dest" && mkdir -p "$dest"
    tmp=$(mktemp -d)
    mkdir -p "$tmp/stage" "$tmp/stage-new"
    cp -r "$ROOT/.gpu/model" "$tmp/stage/"
    for d in "$ROOT"/.gpu/wheels-*; do
        mkdir -p "$tmp/stage/$(basename "$d")"
        find "$d" -name '*.whl' ! -name 'lmcache-*' -exec cp {} "$tmp/stage/$(basename "$d")/" \;
    done
    cp -r "$ROOT"/.gpu-new/torch.whl.* "$ROOT"/.gpu-new/vllm.tar.xz.part* "$ROOT"/.gpu-new/wheels-new-* \
        "$ROOT/.gpu-new/install-new.sh" "$tmp/stage-new/"
    tar -C "$tmp" -cf - stage stage-new | split -b "$part" -d - "$dest/part"
    rm -rf "$tmp"
    find "$dest" -maxdepth 1 -type f -printf '  %f %s\n' | sort
    parts=("$dest"/part*)
    echo "${#parts[@]} parts: one device call each"
    ;;
install)
    [ -f /tmp/site-new/.done ] && { echo "already installed in /tmp/site-new"; exit 0; }
    cat /tmp/parts/part* | tar -C /tmp -xf -
    rm -rf /tmp/parts
    mkdir -p /tmp/model-8b /tmp/model-1b
    for s in 8b 1b; do
        cp /tmp/stage/model/tokenizer*.json /tmp/stage/model/special_tokens_map.json /tmp/model-$s/
        cp /tmp/stage/model/config-llama-$s-shape.json /tmp/model-$s/config.json
    done
    mkdir -p /tmp/stage-new/app/bench && cp -r "$ROOT/entrypoint" "$ROOT/scripts" /tmp/stage-new/app/
    cp "$ROOT"/bench/*.py /tmp/stage-new/app/bench/   # the bench tools (python -m bench.suite), not bench/runs/
    bash /tmp/stage-new/install-new.sh
    ;;
*) sed -n '2,13p' "$0"; exit 2 ;;
esac
