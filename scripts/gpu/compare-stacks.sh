#!/usr/bin/env bash
# The reuse suite on one stack, with the knobs both stacks share, so that two calls on the same machine give
# numbers side by side (docs/UPGRADING.md). Runs ON the GPU machine, after the bundles are installed:
#   old: ../shared/gpu/make-bundle.sh -> /tmp/site      (vLLM 0.26.0 + LMCache 0.5.3 + torch 2.11.0)
#   new: scripts/gpu/make-bundle-new.sh -> /tmp/site-new (vLLM 0.32.0 + LMCache 0.5.6 + torch 2.13.0)
#
#   bash scripts/gpu/compare-stacks.sh new|old [OUT]     results in OUT/<stack>/ and OUT/<stack>.tar.gz
#
# Both run this checkout's appliance (`python3 -m entrypoint serve`); each reads the schema of the stack it
# finds installed (entrypoint/config/schema holds both). One device call each (SUITE_BUDGET_S, default 420).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
STACK=${1:?usage: compare-stacks.sh new|old [OUT]}
OUT_DIR=${2:-${OUT:-/tmp/compare}}
case $STACK in
    new) SITE=/tmp/site-new ;;
    old) SITE=/tmp/site ;;
    *) echo "usage: compare-stacks.sh new|old [OUT]" >&2; exit 2 ;;
esac
export SITE OUT=/tmp/compare-$STACK
export SUITE_BUDGET_S=${SUITE_BUDGET_S:-420} REUSE_TOKENS=${REUSE_TOKENS:-16000} REUSE_SEEDS=${REUSE_SEEDS:-3}
export REUSE_FAULTS=${REUSE_FAULTS:-0} CPU_TIER_GIB=${CPU_TIER_GIB:-20} DISK_TIER_GIB=${DISK_TIER_GIB:-40}
export GPU_UTIL=${GPU_UTIL:-0.6} MODEL=${MODEL:-/tmp/model-8b} SERVED=${SERVED:-llama8b}
rm -rf "$OUT"
PYTHONPATH=$SITE python3 -c "import importlib.metadata as m, torch; print('stack $STACK:', 'vllm', m.version('vllm'), 'lmcache', m.version('lmcache'), 'torch', torch.__version__)"
(cd "$ROOT" && "${PY:-python3}" -m bench.suite reuse)
rc=$?
mkdir -p "$OUT_DIR"
tar -C "$OUT" -czf "$OUT_DIR/$STACK.tar.gz" --exclude='*.png' results logs
exit $rc
