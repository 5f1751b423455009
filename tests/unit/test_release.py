"""One version for the package and the image, and every file that names the release agreeing with it: pyproject.toml,
`appliance --version`, the CHANGELOG entry, compose.yaml, compose.cluster.yaml, deploy/kubernetes. And
scripts/release.py's checks before it builds anything (a dirty tree, a version without its CHANGELOG entry).
The release itself, on the real image: tests/container/test_release.py; the workflow's lint: test_static_checks.py."""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml

from entrypoint.config.schema import pinned_versions
from entrypoint.version import describe, release_tags, version

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
IMAGE = PYPROJECT["tool"]["appliance"]["image"]


class ComposeLoader(yaml.SafeLoader):
    """Compose's own tags (`!override`, `!reset`) read as the plain value they tag."""


ComposeLoader.add_multi_constructor("!", lambda loader, tag, node: {
    yaml.MappingNode: loader.construct_mapping, yaml.SequenceNode: loader.construct_sequence,
    yaml.ScalarNode: loader.construct_scalar}[type(node)](node))


def release_module():
    spec = importlib.util.spec_from_file_location("release", ROOT / "scripts" / "release.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_version_is_pyprojects_and_the_tags_name_the_stack():
    pins = pinned_versions()
    assert version() == PYPROJECT["project"]["version"]
    assert release_tags() == [f"{version()}-vllm{pins['VLLM_VERSION']}-lmcache{pins['LMCACHE_VERSION']}", version()]
    assert all(re.fullmatch(r"[\w][\w.-]{0,127}", t) for t in release_tags())  # what Docker accepts as a tag


def test_appliance_version_prints_the_release_and_its_stack():
    out = subprocess.run([sys.executable, "-m", "entrypoint", "--version"], cwd=ROOT, capture_output=True, text=True,
                         env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)}, timeout=60)
    assert out.returncode == 0, out.stderr
    pins = pinned_versions()
    assert out.stdout.strip() == describe() == (
        f"llm-appliance {PYPROJECT['project']['version']} (vLLM {pins['VLLM_VERSION']}, LMCache "
        f"{pins['LMCACHE_VERSION']}, torch {pins['TORCH_VERSION']}, CUDA {pins['CUDA_VERSION']})")


def test_the_changelog_has_this_versions_entry_with_its_stack_and_upgrade_notes():
    release = release_module()
    pins = pinned_versions()
    entry = release.changelog_entry(version(), pins)
    assert "**Upgrade**" in entry
    with pytest.raises(release.ReleaseError, match="names vLLM .* but entrypoint/versions.env pins vLLM 9.9.9"):
        release.changelog_entry(version(), {**pins, "VLLM_VERSION": "9.9.9"})
    with pytest.raises(release.ReleaseError, match=r"no entry for 9\.9\.9 .*## 9\.9\.9 \(vLLM"):
        release.changelog_entry("9.9.9", pins)


@pytest.mark.parametrize("compose_file,path", [("compose.yaml", ("services", "appliance")),
                                               ("compose.cluster.yaml", ("x-appliance",))])
def test_compose_names_the_published_release_and_builds_it_as_that_version(compose_file, path):
    service = yaml.load((ROOT / compose_file).read_text(), Loader=ComposeLoader)
    for key in path:
        service = service[key]
    default = re.fullmatch(r"\$\{APPLIANCE_IMAGE:-(.+)\}", service["image"])
    assert default and default.group(1) == f"{IMAGE}:{release_tags()[0]}"
    assert service["build"] == {"context": ".", "args": {"IMAGE_VERSION": version()}}


def test_kubernetes_runs_the_published_release():
    kustomization = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "kustomization.yaml").read_text())
    image = {i["name"]: i for i in kustomization["images"]}["llm-appliance"]
    assert (image["newName"], image["newTag"]) == (IMAGE, release_tags()[0])


def test_the_workflow_pushes_and_releases_with_the_release_command():
    """The publishing workflow's work is scripts/release.py, the command CI rehearses (no other build path)."""
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "release.yml").read_text())
    assert workflow[True] == {"push": {"tags": ["v*"]}}  # YAML 1.1 reads the key `on` as True
    runs = [s.get("run", "") for s in workflow["jobs"]["release"]["steps"]]
    (release,) = [r for r in runs if "scripts/release.py" in r]
    assert "--push" in release and "--skip-tests" not in release  # the tests run before anything is pushed
    assert not any("docker build" in r or "docker push" in r or "syft" in r for r in runs)
    assert any("gh release create" in r and "dist/sbom.spdx.json" in r for r in runs)


# -- release.py refuses before building: on a copy of the files it reads, in its own git repository -------------
@pytest.fixture
def repo(tmp_path):
    for name in ("pyproject.toml", "CHANGELOG.md", ".gitignore", "scripts/release.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "entrypoint", tmp_path / "entrypoint", ignore=shutil.ignore_patterns("__pycache__"))
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "copy"], check=True)
    return tmp_path, git


def run_release(root: Path, *args) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(root)}  # no docker needed: each case stops before it
    return subprocess.run([sys.executable, str(root / "scripts" / "release.py"), *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=60)


def test_release_refuses_a_tree_with_uncommitted_changes(repo):
    root, _ = repo
    (root / "entrypoint" / "new.py").write_text("# not committed\n")
    out = run_release(root, "--skip-tests")
    assert out.returncode == 1
    assert "error: the tree has uncommitted changes" in out.stderr and "?? entrypoint/new.py" in out.stderr


def test_release_refuses_a_version_without_its_changelog_entry(repo):
    root, git = repo
    text = (root / "pyproject.toml").read_text()
    (root / "pyproject.toml").write_text(re.sub(r'^version = ".*"$', 'version = "9.9.9"', text, count=1, flags=re.M))
    subprocess.run([*git, "commit", "-q", "-am", "bump"], check=True)
    out = run_release(root, "--skip-tests")
    assert out.returncode == 1
    assert "error: CHANGELOG.md has no entry for 9.9.9 (pyproject.toml's version)" in out.stderr
    assert "+ docker" not in out.stderr  # nothing was built
