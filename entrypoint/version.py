"""The appliance's version: one number for the package and the image, pyproject.toml's `[project] version`.

The image carries it as `org.opencontainers.image.version` (docker/build-image.sh), `appliance --version` and
`status` print it, and a release is tagged `<version>-vllm<X>-lmcache<Y>` (what it ships, from versions.env)
plus `<version>`, the tag that moves to the latest build of that version (CHANGELOG.md, scripts/release.py).

    python3 -m entrypoint.version            # 0.1.0
    python3 -m entrypoint.version --tags     # 0.1.0-vllm0.32.0-lmcache0.5.6 and 0.1.0, one a line
"""
from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path

from .config.schema import pinned_versions

DIST = "llm-appliance"
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def version() -> str:
    """In a checkout, pyproject.toml itself (an installed copy of an older checkout must not answer for it);
    in the image and other installs, the package's metadata, which pip wrote from the same line."""
    if PYPROJECT.is_file():
        text = PYPROJECT.read_text()
        if re.search(rf'^name\s*=\s*"{DIST}"', text, re.M):
            match = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M)
            if match:
                return match.group(1)
    try:
        return importlib.metadata.version(DIST)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def release_tags(pins: dict[str, str] | None = None) -> list[str]:
    """The image tags of this version: the one that names the stack it ships first (it never moves to another
    stack), then the moving `<version>`."""
    pins = pins or pinned_versions()
    return [f"{version()}-vllm{pins['VLLM_VERSION']}-lmcache{pins['LMCACHE_VERSION']}", version()]


def describe() -> str:
    """`appliance --version`: the appliance and the stack it was built with."""
    pins = pinned_versions()
    return (f"llm-appliance {version()} (vLLM {pins['VLLM_VERSION']}, LMCache {pins['LMCACHE_VERSION']}, "
            f"torch {pins['TORCH_VERSION']}, CUDA {pins['CUDA_VERSION']})")


if __name__ == "__main__":
    print("\n".join(release_tags()) if sys.argv[1:] == ["--tags"] else version())
