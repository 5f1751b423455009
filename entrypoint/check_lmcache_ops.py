"""Prove at build time that LMCache's compiled extensions resolve against the installed torch.

    python -m entrypoint.check_lmcache_ops [--cpu-only]

LMCache ships its compiled ops built against one torch release, and a wrong pair is silent until the
first KV transfer: LMCache 0.5.3 even answers `import lmcache.c_ops` with a shim that falls back to torch.
So every compiled module of the installed LMCache (`lmcache/*.so`: cuda_ops, lmcache_native, lmcache_fs,
... from 0.5.4 on; c_ops and native_storage_ops before) is loaded with RTLD_NOW after `import torch`,
which makes the dynamic loader resolve every torch symbol it needs, and fails naming the first missing one.
No extension code runs (no PyInit), so no GPU is needed. The image build runs this without --cpu-only.

--cpu-only (contract venvs, CI): modules that need CUDA libraries torch does not have (a CPU torch) are
reported and skipped instead of failing; the others are still checked. scripts/check-lmcache-torch-abi.py
does the same check on wheels without installing them (undefined symbols vs torch's exported ones).
"""
from __future__ import annotations

import argparse
import ctypes
import importlib.metadata
import importlib.util
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

# A library the module links that a CPU-only torch does not bring (libcudart, libc10_cuda, ...).
_CUDA_LIBRARY = re.compile(r"lib(cudart|cuda|c10_cuda|torch_cuda|nccl|cublas|cufile)[\w.]*\.so")


class OpsMismatch(RuntimeError):
    pass


def compiled_modules() -> list[Path]:
    spec = importlib.util.find_spec("lmcache")
    if spec is None or not spec.submodule_search_locations:
        raise OpsMismatch("lmcache is not installed")
    pkg = Path(list(spec.submodule_search_locations)[0])
    found = sorted(pkg.glob("*.so"))
    if not found:
        raise OpsMismatch(f"no compiled module in {pkg}: this LMCache wheel was built without its ops")
    return found


def check(cpu_only: bool = False, out: TextIO = sys.stdout) -> int:
    """Load every compiled LMCache module with RTLD_NOW; return how many loaded, raise OpsMismatch."""
    modules = compiled_modules()
    import torch  # loads libc10/libtorch (and, for a CUDA torch, its CUDA libraries) process-wide

    versions = (importlib.metadata.version("lmcache"), torch.__version__, torch.version.cuda or "none")
    print("lmcache %s, torch %s, CUDA %s" % versions, file=out)
    loaded, problems = 0, []
    for path in modules:
        try:
            ctypes.CDLL(str(path), mode=os.RTLD_NOW | os.RTLD_LOCAL)
        except OSError as e:
            message = str(e)
            if cpu_only and torch.version.cuda is None and _CUDA_LIBRARY.search(message):
                print(f"skipped (needs CUDA, this torch is CPU-only): {path.name}: {message}", file=out)
                continue
            problems.append(f"{path.name}: {message}")
            continue
        loaded += 1
        print(f"resolves against torch {torch.__version__}: {path.name}", file=out)
    if problems:
        raise OpsMismatch(
            f"LMCache {versions[0]}'s compiled ops do not resolve against the installed torch {versions[1]} "
            "(LMCache wheels are built for one torch release; pin the pair in entrypoint/versions.env, "
            "docs/UPGRADING.md):\n  " + "\n  ".join(problems))
    if loaded == 0:
        raise OpsMismatch("no compiled LMCache module could be checked")
    return loaded


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu-only", action="store_true",
                   help="skip modules that need CUDA when torch is a CPU build; the image build never passes it")
    args = p.parse_args(argv)
    try:
        n = check(cpu_only=args.cpu_only)
    except OpsMismatch as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"ok: {n} compiled LMCache module(s) resolve against the installed torch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
