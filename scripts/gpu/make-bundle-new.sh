#!/usr/bin/env bash
# Builds the bundle that puts the current pins (entrypoint/versions.env: vLLM 0.32.0 + LMCache 0.5.6 +
# torch 2.13.0) on the lent GPU machine, which has Python 3.12 and torch 2.11.0+cu130 only. It goes on top of
# the previous stack's bundle (../shared/gpu/make-bundle.sh: vLLM 0.26.0 + LMCache 0.5.3 and their small
# wheels, staged in /tmp/stage, installed in /tmp/site): the new stack installs into /tmp/site-new, with the old
# bundle's small wheels where the new pins take the same ones, so that the suites run on either stack
# (SITE=/tmp/site or SITE=/tmp/site-new) on the same machine the same day.
#
#   bash scripts/gpu/make-bundle-new.sh [DEST]     DEST: a folder of the checkout the device tool sends,
#                                                  ignored by git (default: <checkout>/.gpu-new)
#
# Writes into DEST, every piece <= 56 MiB (one device call each):
#   torch.whl.partNN   the torch 2.13.0 cp312 manylinux wheel (~530 MB), split
#   vllm.tar.xz.partNN vLLM 0.32.0 without what Hopper never loads (FA2 kernels, Blackwell FMHA, Rust frontend)
#   wheels-new-N/      LMCache 0.5.6, torchvision 0.28.0 and every requirement whose device/old-bundle version
#                      does not satisfy the new pins (resolved here from the wheels' metadata)
#   app/               this checkout's entrypoint/, scripts/ and bench/*.py (the device tool sends the lead's checkout)
#   install-new.sh     run there after the upload: installs into /tmp/site-new and checks the pair
#                      (torch sees the GPU; LMCache's compiled ops resolve: entrypoint.check_lmcache_ops)
# Left out on purpose (the device has them in versions close enough, or the run does not use them):
# triton 3.7.1 (198 MB; the device's 3.6.0 serves vLLM's kernels and the suites run with --enforce-eager),
# numba 0.65.0 + llvmlite (vLLM's pin; the device's numba 0.68.0 imports), cuda-python (the device has
# cuda-bindings), PyNvVideoCodec (video inputs),
# NCCL 2.29.7 and cuDNN 9.20 (one GPU never calls NCCL: install-new.sh makes Python bind lazily; no convolutions),
# FlashInfer/TileLang/CUTLASS-DSL kernels (the old bundle left them out too: VLLM_USE_FLASHINFER_SAMPLER=0).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/../.." && pwd)
SHARED=${SHARED:-/work/shared/gpu}
DEST=${1:-$(git -C "$SRC" rev-parse --show-toplevel)/.gpu-new}
# shellcheck source=/dev/null
. "$SRC/entrypoint/versions.env"
mkdir -p "$DEST"
top=$(git -C "$DEST" rev-parse --show-toplevel)
name=/${DEST#"$top"/}/
grep -qxF "$name" "$top/.git/info/exclude" 2>/dev/null || echo "$name" >> "$top/.git/info/exclude"
DL=${DL:-/tmp/gpu-new-dl}
mkdir -p "$DL/wheels"
PLAT=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64
      --platform manylinux_2_31_x86_64 --platform manylinux_2_34_x86_64 --platform manylinux_2_35_x86_64
      --platform manylinux_2_39_x86_64 --platform any)
fetch() { python3 -m pip download -q --no-deps "${PLAT[@]}" -d "$1" "${@:2}" 2>&1 | grep -v "^WARNING: Location" || true; }

# 1. torch, split as it is (a wheel is already compressed)
fetch "$DL" "torch==$TORCH_VERSION"
torch_whl=$(ls "$DL"/torch-"$TORCH_VERSION"-cp312-*.whl)
rm -f "$DEST"/torch.whl.part*
split -b 56m -d "$torch_whl" "$DEST/torch.whl.part"
basename "$torch_whl" > "$DEST/torch.whl.name"

# 2. vLLM, stripped and recompressed
if [ ! -f "$DEST/vllm.tar.xz.part00" ]; then
    fetch "$DL" "vllm==$VLLM_VERSION"
    rm -rf "$DL/x" && mkdir -p "$DL/x" && (cd "$DL/x" && python3 -m zipfile -e "$DL"/vllm-"$VLLM_VERSION"-*.whl .)
    rm -f "$DL/x/vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so" "$DL/x/vllm/vllm-rs"
    rm -rf "$DL/x/vllm/third_party/fmha_sm100"
    find "$DL/x/vllm/third_party/deep_gemm" -name "_C.cpython-3*" ! -name "*312*" -delete 2>/dev/null || true
    tar -C "$DL/x" -cf - vllm "vllm-$VLLM_VERSION.dist-info" | xz -6 -T2 > "$DL/vllm.tar.xz"
    split -b 56m -d "$DL/vllm.tar.xz" "$DEST/vllm.tar.xz.part"
    rm -rf "$DL/x"
fi

# 3. the small wheels: what the new pins need beyond the device's packages and the old bundle's wheels
fetch "$DL/wheels" "lmcache==$LMCACHE_VERSION" "torchvision==0.28.0"
python3 - "$DL" "$SHARED" "$TORCH_VERSION" <<'PY'
import re, subprocess, sys, zipfile
from pathlib import Path
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

dl, shared, torch_version = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
have = {}
for listing in (shared / "device-python-packages.txt", shared / "wheels-device.txt"):
    for line in listing.read_text().split():
        if "==" in line:
            n, v = line.split("==", 1)
            have[canonicalize_name(n)] = Version(v)
# Not carried: GPU kernels the run does not load, and what the device has close enough (see the header).
skip = re.compile(r"^(torch|torchaudio|torchcodec|triton|nvidia-.*|cuda-toolkit|cuda-python|cuda-bindings|"
                  r"flashinfer-.*|tilelang|quack-kernels|tokenspeed-mla|deep-gemm|instanttensor|"
                  r"pynvvideocodec|numba|llvmlite)$")
env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
       "os_name": "posix", "platform_python_implementation": "CPython", "extra": ""}

def requirements(wheel: Path):
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(meta).decode()
    for line in text.splitlines():
        if line.startswith("Requires-Dist:"):
            r = Requirement(line.split(":", 1)[1].strip())
            if r.marker is None or r.marker.evaluate(env):
                yield r

def wheel_version(w: Path):
    parts = w.name.split("-")
    return canonicalize_name(parts[0]), Version(parts[1])

todo = sorted(dl.glob("vllm-*.whl")) + sorted((dl / "wheels").glob("*.whl"))
todo += sorted(dl.glob(f"torch-{torch_version}-*.whl"))
seen, fetched = set(), {}
for w in (dl / "wheels").glob("*.whl"):
    n, v = wheel_version(w)
    fetched[n] = v
while todo:
    wheel = todo.pop()
    if wheel in seen or not wheel.exists():
        continue
    seen.add(wheel)
    for r in requirements(wheel):
        n = canonicalize_name(r.name)
        if skip.match(n):
            continue
        for pool in (fetched, have):
            if n in pool and r.specifier.contains(pool[n], prereleases=True):
                break
        else:
            before = set((dl / "wheels").glob("*.whl"))
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                            "--python-version", "3.12", "--implementation", "cp",
                            *[a for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
                                          "manylinux_2_27_x86_64", "manylinux_2_34_x86_64", "any")
                              for a in ("--platform", p)],
                            "-d", str(dl / "wheels"), f"{r.name}{r.specifier}"], check=True,
                           stderr=subprocess.DEVNULL)
            for new in set((dl / "wheels").glob("*.whl")) - before:
                nn, vv = wheel_version(new)
                fetched[nn] = vv
                print(f"carry {new.name} (for {wheel.name.split('-')[0]}: {r})")
                todo.append(new)
PY
rm -rf "$DEST"/wheels-new-*; i=0; sum=0
# Largest first (size and path from find; wheel names have no spaces).
while read -r s f; do
    if [ "$sum" -gt 0 ] && [ $((sum + s)) -gt 55000000 ]; then i=$((i + 1)); sum=0; fi
    mkdir -p "$DEST/wheels-new-$i" && cp "$f" "$DEST/wheels-new-$i/"; sum=$((sum + s))
done < <(find "$DL/wheels" -maxdepth 1 -name '*.whl' -printf '%s %p\n' | sort -rn)

# 4. this checkout's appliance code, scripts and bench tools (bench/*.py: the suites' runner, not bench/runs/),
#    and the installer
rm -rf "$DEST/app" && mkdir -p "$DEST/app/bench"
cp -r "$SRC/entrypoint" "$SRC/scripts" "$DEST/app/"
cp "$SRC"/bench/*.py "$DEST/app/bench/"
find "$DEST/app" -name __pycache__ -prune -exec rm -rf {} +
cat > "$DEST/install-new.sh" <<'SH'
#!/bin/bash
# Runs ON the device machine, from the checkout root, after the pieces were copied to /tmp/stage-new.
# Installs the new stack into /tmp/site-new (idempotent) and checks it.
set -euo pipefail
S=/tmp/stage-new
if [ ! -f /tmp/site-new/.done ]; then
    mkdir -p /tmp/site-new
    whl=/tmp/$(cat $S/torch.whl.name)
    cat $S/torch.whl.part* > "$whl"
    # The old bundle's small wheels (/tmp/stage/wheels-*, ../shared/gpu/README.md) go in too, unless the new
    # set has the same project (pip --no-deps refuses two versions of one), so that /tmp/site-new stands alone.
    mapfile -t wheels < <(python3 - "$whl" $S/wheels-new-*/*.whl -- /tmp/stage/wheels-*/*.whl <<'PY'
import sys
from pathlib import Path
args = sys.argv[1:]; cut = args.index("--")
new, old = args[:cut], args[cut + 1:]
project = lambda w: Path(w).name.split("-")[0].lower().replace("_", "-").replace(".", "-")
names = {project(w) for w in new}
print("\n".join(new + [w for w in old if project(w) not in names]))
PY
)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site-new \
        "${wheels[@]}" 2>&1 | grep -v "Target directory" || true
    rm -f "$whl"
    # torch 2.13 links NCCL 2.29 functions (ncclCommResume, ...) that the device's NCCL 2.28 lacks, and Python
    # loads extensions with RTLD_NOW: bind lazily instead (one GPU never calls them). Bundle only.
    printf 'import os, sys\nsys.setdlopenflags(os.RTLD_LAZY | os.RTLD_LOCAL)\n' > /tmp/site-new/sitecustomize.py
    cat $S/vllm.tar.xz.part* | python3 -c "import sys,tarfile; tarfile.open(fileobj=sys.stdin.buffer, mode='r|xz').extractall('/tmp/site-new')"
    touch /tmp/site-new/.done
fi
export PYTHONPATH=/tmp/site-new:$S/app
python3 -c "import torch, vllm, lmcache, importlib.metadata as m; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available(), '| vllm', vllm.__version__, '| lmcache', m.version('lmcache'))"
python3 -m entrypoint.check_lmcache_ops
SH
chmod +x "$DEST/install-new.sh"
du -sh "$DEST"/torch.whl.part* "$DEST"/vllm.tar.xz.part* "$DEST"/wheels-new-* "$DEST/app" | sed 's/^/  /'
pieces=("$DEST"/torch.whl.part* "$DEST"/vllm.tar.xz.part* "$DEST"/wheels-new-*)
echo "pieces: ${#pieces[@]} (one device call each)"
