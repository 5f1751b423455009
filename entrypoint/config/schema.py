"""What the installed vLLM and LMCache accept, read from generated JSON (never by importing them).

`python -m entrypoint.generators.schema` writes the files from the installed packages (the image build does,
and fails if it cannot); the copies for the pinned versions are committed, so `config`, `check` and the
tests work without vLLM installed and answer without importing torch.
"""
from __future__ import annotations

import functools
import importlib.metadata
import json
import os
from dataclasses import dataclass
from pathlib import Path

SCHEMA_DIR = Path(__file__).parent / "schema"
VERSIONS_FILE = Path(__file__).resolve().parents[1] / "versions.env"


def pinned_versions() -> dict[str, str]:
    """The versions the image ships (entrypoint/versions.env, the one place they are pinned)."""
    out = {}
    for line in VERSIONS_FILE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def _installed(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _load(name: str, pinned_key: str) -> dict:
    directory = Path(os.environ.get("APPLIANCE_SCHEMA_DIR", SCHEMA_DIR))
    installed = _installed(name)
    version = installed or pinned_versions()[pinned_key]
    path = directory / f"{name}-{version}.json"
    if not path.exists():
        raise FileNotFoundError(
            f"no schema for {name} {version} in {directory}: run `python -m entrypoint.generators.schema` "
            f"with {name} {version} installed")
    return json.loads(path.read_text())


@dataclass(frozen=True)
class Schema:
    vllm: dict
    lmcache: dict

    @property
    def vllm_version(self) -> str:
        return self.vllm["vllm_version"]

    @property
    def lmcache_version(self) -> str:
        return self.lmcache["lmcache_version"]

    @property
    def serve_flags(self) -> dict[str, dict]:
        return self.vllm["serve_flags"]

    @functools.cached_property
    def vllm_env_vars(self) -> frozenset[str]:
        return frozenset(self.vllm["env_vars"])

    @property
    def tool_call_parsers(self) -> list[str]:
        return self.vllm["tool_call_parsers"]

    @property
    def lmcache_keys(self) -> dict[str, dict]:
        return self.lmcache["config_keys"]

    @functools.cached_property
    def lmcache_other_env_vars(self) -> frozenset[str]:
        return frozenset(self.lmcache["other_env_vars"])

    @property
    def lmcache_server_flags(self) -> dict[str, dict]:
        """`lmcache server` flag -> {dest, required, choices, default} of the installed LMCache."""
        return self.lmcache["server_flags"]

    @property
    def lmcache_connector_keys(self) -> dict[str, object]:
        """`lmcache.mp.<key>` -> default, for the keys the installed LMCache's vLLM connector reads."""
        return self.lmcache["connector_extra_config"]

    @staticmethod
    def env_name_of_flag(flag: str) -> str:
        return "VLLM_" + flag.lstrip("-").upper().replace("-", "_")

    @functools.cached_property
    def flag_by_env_name(self) -> dict[str, str]:
        return {self.env_name_of_flag(flag): flag for flag in self.serve_flags}


@functools.lru_cache(maxsize=1)
def load() -> Schema:
    return Schema(vllm=_load("vllm", "VLLM_VERSION"), lmcache=_load("lmcache", "LMCACHE_VERSION"))
