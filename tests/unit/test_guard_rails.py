"""The guard rails CI runs with the tests: ruff over the whole checkout and mypy over entrypoint/, with their
configuration in pyproject.toml ([tool.ruff], [tool.mypy]), by the interpreter running the tests (CI installs
both from the `test` extra at the versions of requirements/test.txt)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_tool(module: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed in this interpreter (pip install -c requirements/test.txt '.[test]')")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_ruff_finds_nothing():
    out = run_tool("ruff", "check", str(ROOT), timeout=120)
    assert out.returncode == 0, f"ruff check {ROOT}:\n{out.stdout}{out.stderr}"


def test_mypy_finds_nothing():
    # `files` and the options come from pyproject.toml; the cache (.mypy_cache) makes a second run quick.
    out = run_tool("mypy", timeout=600)
    assert out.returncode == 0, f"mypy:\n{out.stdout}{out.stderr}"
