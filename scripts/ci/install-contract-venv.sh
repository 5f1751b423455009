#!/usr/bin/env bash
# Installs the pinned vLLM and LMCache into a CPU-only virtualenv, so that the contract tests can parse our
# output with the real vLLM serve parser and LMCache's own parser/config classes (no GPU needed).
# Lean install: CPU torch, vLLM/LMCache without deps, then their pure-Python requirements minus GPU-only ones.
# Usage: install-contract-venv.sh VENV_DIR     (idempotent: a venv that already imports both is kept)
# scripts/test.sh names VENV_DIR after a hash of versions.env and this script: new pins get a new venv next to
# the old one. The appliance package and the test tools go in afterwards (scripts/test.sh, requirements/test.txt).
set -euo pipefail
VENV=${1:?usage: install-contract-venv.sh VENV_DIR}
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=/dev/null
. "$HERE/../../entrypoint/versions.env"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - <<PY 2>/dev/null
import importlib.metadata as m
assert m.version("vllm") == "$VLLM_VERSION" and m.version("lmcache") == "$LMCACHE_VERSION"
import vllm.engine.arg_utils, lmcache.v1.config
PY
then echo "contract venv ready: $VENV"; exit 0; fi
python3 -m venv "$VENV"
PIP="$VENV/bin/python -m pip install -q --disable-pip-version-check"
$PIP --upgrade pip
# The CPU torch wheel; vLLM wants $TORCH_VERSION (CUDA) but its argument parser does not care.
$PIP "torch==${CONTRACT_CPU_TORCH_VERSION}"
$PIP --no-deps "vllm==${VLLM_VERSION}" "lmcache==${LMCACHE_VERSION}"
# Requirements of both, minus GPU-only packages (and torch, already there).
"$VENV/bin/python" - > "$VENV/contract-reqs.txt" <<'PY'
import importlib.metadata as m, re
# Kept although GPU-free parsing does not need them: awscrt and google-cloud-bigtable, without which LMCache
# registers fewer L2 adapter types (s3, bigtable) than in the product image.
skip = re.compile(r"^(torch|torchaudio|torchvision|torchcodec|nvidia-|flashinfer|tilelang|apache-tvm-ffi|quack-kernels|"
                  r"tokenspeed|humming-kernels|fastsafetensors|nvtx|pynvvideocodec|ninja|cupy|cufile|"
                  r"opencv)", re.I)
reqs = set()
for dist in ("vllm", "lmcache"):
    for r in m.requires(dist) or []:
        if "extra ==" in r:
            continue
        name = re.split(r"[ ;<>=!~\[]", r, 1)[0]
        if not skip.match(name):
            reqs.add(r)
print("\n".join(sorted(reqs)))
PY
$PIP -r "$VENV/contract-reqs.txt"
"$VENV/bin/python" -c "import vllm.engine.arg_utils, lmcache.v1.config; print('contract venv ready')"
