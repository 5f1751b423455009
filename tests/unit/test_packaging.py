"""pyproject.toml: the package, its runtime dependencies (pinned there and nowhere else), the `appliance`
command, and requirements/test.txt, the lock CI installs from."""
from __future__ import annotations

import re
from fnmatch import fnmatch
from pathlib import Path

import tomllib
from packaging.requirements import Requirement

from entrypoint.cli import main
from entrypoint.config.schema import pinned_versions

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCK = dict(re.findall(r"^([\w.-]+)==(\S+)$", (ROOT / "requirements" / "test.txt").read_text(), re.MULTILINE))


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_appliance_command_is_the_cli():
    assert PROJECT["project"]["scripts"] == {"appliance": "entrypoint.cli:main"}
    assert callable(main)


def test_the_lock_pins_every_dependency_within_its_range():
    """A dependency added to pyproject.toml without regenerating the lock fails here."""
    lock = {canonical(name): version for name, version in LOCK.items()}
    wanted = [*PROJECT["project"]["dependencies"],
              *(r for extra in ("test", "bench") for r in PROJECT["project"]["optional-dependencies"][extra])]
    for line in wanted:
        req = Requirement(line.split("#")[0])
        assert canonical(req.name) in lock, f"{req.name} is not in requirements/test.txt"
        assert req.specifier.contains(lock[canonical(req.name)]), f"{req.name}=={lock[canonical(req.name)]} vs {req}"


def test_the_runtime_dependencies_are_pinned_only_in_pyproject():
    """The Dockerfile reads them from pyproject.toml; no second list anywhere it or CI installs from."""
    for path in ("Dockerfile", "scripts/test.sh", "scripts/ci/install-contract-venv.sh"):
        text = (ROOT / path).read_text()
        for name in ("supervisor", "python-dotenv"):
            assert not re.search(rf"\b{name}[=<>]", text), f"{path} pins {name}"


def test_the_package_data_holds_what_is_read_at_run_time():
    patterns = PROJECT["tool"]["setuptools"]["package-data"]["entrypoint"]
    pins = pinned_versions()
    for needed in ("versions.env", f"config/schema/vllm-{pins['VLLM_VERSION']}.json",
                   f"config/schema/lmcache-{pins['LMCACHE_VERSION']}.json"):
        assert (ROOT / "entrypoint" / needed).exists()
        assert any(fnmatch(needed, pattern) for pattern in patterns), needed


def test_the_bench_package_stays_out_of_the_image_and_its_build_hash():
    """bench/ (the benchmark tools, the GPU suites' runner, raw results) is not installed by `pip install .` and
    is not in the Docker build context, whose allowlist docker/build-image.sh also hashes as the image's inputs."""
    assert PROJECT["tool"]["setuptools"]["packages"]["find"]["include"] == ["entrypoint*"]
    allowed = [line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")]
    assert allowed and not any(path == "bench" or path.startswith("bench/") for path in allowed), allowed
    assert (ROOT / "bench" / "__init__.py").is_file() and (ROOT / "bench" / "suite.py").is_file()
