#!/usr/bin/env python3
"""Which torch can each LMCache wheel's compiled ops run on? Answered from the wheels, without installing them.

    python3 scripts/check-lmcache-torch-abi.py LMCACHE_WHEEL... -- TORCH_WHEEL...
    (fetch them with: pip download --no-deps --python-version 3.12 --only-binary=:all: \
                      --platform manylinux_2_28_x86_64 lmcache==0.5.6 torch==2.13.0 -d wheels/)

For every compiled module in an LMCache wheel (`lmcache/*.so`), the dynamic symbols it leaves undefined
(`nm -D --undefined-only`) that belong to torch (c10::, at::, torch::, caffe2:: in their mangled names) must
be exported by some library of the torch wheel (`torch/lib/*.so`, `nm -D --defined-only`). A symbol that is
not there is what makes `import` fail with "undefined symbol" at the first KV transfer. Prints a matrix,
and the missing symbols of each failing pair (demangled, first few). Exit status 0 always: it reports.

The image build checks the installed pair with `python -m entrypoint.check_lmcache_ops`, which loads the
modules with RTLD_NOW; this script is how the pins in entrypoint/versions.env were chosen (docs/UPGRADING.md).
"""
from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

TORCH_NAMESPACES = re.compile(r"(3c10|2at|5torch|6caffe2)")


def _nm(path: Path, *flags: str) -> set[str]:
    out = subprocess.run(["nm", "-D", *flags, str(path)], check=True, capture_output=True, text=True).stdout
    return {line.split()[-1].split("@")[0] for line in out.splitlines() if line.strip()}


def _extract(wheel: Path, pattern: re.Pattern, into: Path) -> list[Path]:
    paths = []
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if pattern.search(name):
                paths.append(Path(zf.extract(name, into)))
    return paths


def lmcache_needs(wheel: Path, tmp: Path) -> dict[str, set[str]]:
    needs = {}
    for so in _extract(wheel, re.compile(r"^lmcache/[^/]+\.so$"), tmp / wheel.stem):
        needs[so.name.split(".")[0]] = {s for s in _nm(so, "--undefined-only") if TORCH_NAMESPACES.search(s)}
        so.unlink()
    return needs


def torch_exports(wheel: Path, tmp: Path) -> set[str]:
    exported: set[str] = set()
    for so in _extract(wheel, re.compile(r"^torch/lib/lib[^/]+\.so[.0-9]*$"), tmp / wheel.stem):
        exported |= _nm(so, "--defined-only")
        so.unlink()  # libtorch_cuda alone is >1 GB unpacked
    return exported


def _demangle(symbols) -> list[str]:
    out = subprocess.run(["c++filt"], input="\n".join(symbols), capture_output=True, text=True).stdout
    return out.splitlines()


def _version(wheel: Path) -> str:
    return wheel.name.split("-")[1]


def main(argv: list[str]) -> int:
    if "--" not in argv:
        print(__doc__, file=sys.stderr)
        return 2
    cut = argv.index("--")
    lmcache_wheels, torch_wheels = map(lambda xs: [Path(x) for x in xs], (argv[:cut], argv[cut + 1:]))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        needs = {_version(w): lmcache_needs(w, tmp) for w in lmcache_wheels}
        exports = {_version(w): torch_exports(w, tmp) for w in torch_wheels}
    print("LMCache \\ torch | " + " | ".join(exports))
    details = []
    for lmc, modules in needs.items():
        cells = []
        for tv, exported in exports.items():
            missing = {m: sorted(s - exported) for m, s in modules.items() if s - exported}
            n_needed = sum(len(s) for s in modules.values())
            cells.append("ok (%d symbols)" % n_needed if not missing else
                         "MISSING %d of %d" % (sum(map(len, missing.values())), n_needed))
            for module, symbols in missing.items():
                shown = ", ".join(_demangle(symbols[:3]))
                details.append(f"lmcache {lmc} {module} on torch {tv}: {len(symbols)} missing, e.g. {shown}")
        print(f"{lmc} | " + " | ".join(cells))
    for line in details:
        print("  " + line[:400])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
