"""The release command rehearsed on the product image CI builds (scripts/release.py --skip-tests: the tests are
this run; no push): the image's labels, its release tags, the SBOM, the layer report and the notes."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import tomllib

from entrypoint.config.schema import pinned_versions
from entrypoint.version import describe, release_tags, version

from .conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
REPOSITORY = PYPROJECT["tool"]["appliance"]["image"]
BUILT = "llm-appliance:product"


def git(*args) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def release(product_image, tmp_path_factory):
    """One run of the release command, as CI runs it: from a clean tree (a developer's uncommitted changes are
    rehearsed with --allow-dirty, and then the notes must say so)."""
    assert product_image == BUILT, "scripts/release.py releases what docker/build-image.sh product tags"
    out = tmp_path_factory.mktemp("release")
    dirty = bool(git("status", "--porcelain"))
    cmd = [sys.executable, str(ROOT / "scripts" / "release.py"), "--skip-tests", "--out", str(out)]
    result = subprocess.run(cmd + (["--allow-dirty"] if dirty else []), cwd=ROOT, capture_output=True, text=True,
                            timeout=900, env=os.environ)
    sys.stderr.write(result.stderr[-6000:])
    assert result.returncode == 0, result.stderr[-4000:]
    return {"out": out, "notes": result.stdout, "dirty": dirty, "log": result.stderr}


def labels(docker_client, image: str) -> dict[str, str]:
    return docker_client.images.get(image).labels


def test_the_image_is_labelled_with_the_version_commit_and_source(release, docker_client):
    found = labels(docker_client, BUILT)
    assert found["org.opencontainers.image.version"] == found["appliance.version"] == version() \
        == PYPROJECT["project"]["version"]
    assert found["org.opencontainers.image.source"] == PYPROJECT["project"]["urls"]["Source"]
    assert found["org.opencontainers.image.revision"] == git("rev-parse", "HEAD")
    pins = pinned_versions()
    assert (found["appliance.vllm.version"], found["appliance.lmcache.version"]) == (pins["VLLM_VERSION"],
                                                                                     pins["LMCACHE_VERSION"])
    assert "+ docker push" not in release["log"]  # a rehearsal never pushes


def test_the_release_tags_are_the_built_image(release, docker_client):
    built = docker_client.images.get(BUILT).id
    for tag in release_tags():
        assert docker_client.images.get(f"{REPOSITORY}:{tag}").id == built


def test_the_image_says_its_version(release, docker_client):
    out = docker_client.containers.run(BUILT, ["--version"], remove=True, network_mode="none")
    assert out.decode().strip() == describe()


def test_the_sbom_lists_the_pinned_stack_and_the_appliance(release):
    doc = json.loads((release["out"] / "sbom.spdx.json").read_text())
    assert doc["spdxVersion"].startswith("SPDX-2.") and any("syft" in c for c in doc["creationInfo"]["creators"])
    packages = {}
    for p in doc["packages"]:
        packages.setdefault(p["name"].lower(), set()).add(p.get("versionInfo"))
    pins = pinned_versions()
    assert packages["vllm"] == {pins["VLLM_VERSION"]}
    assert packages["lmcache"] == {pins["LMCACHE_VERSION"]}
    assert {v.split("+")[0] for v in packages["torch"]} == {pins["TORCH_VERSION"]}
    assert version() in packages["llm-appliance"]  # the appliance's own wheel (and the SBOM's subject)
    assert packages["supervisor"] == {"4.3.0"}  # a runtime dependency, pinned in pyproject.toml
    assert "tini" in packages and len(doc["packages"]) > 300  # Debian's packages too, not only Python's


def test_the_layer_report_adds_up_to_the_image(release, docker_client):
    text = (release["out"] / "layers.txt").read_text()
    sizes = [float(m) for m in re.findall(r"^\s+([\d.]+) MB  ", text, re.M)]
    image_size = docker_client.images.get(BUILT).attrs["Size"]
    assert abs(sum(sizes) * 1e6 - image_size) < 0.01 * image_size
    biggest = max(re.findall(r"^\s+([\d.]+) MB  (.*)$", text, re.M), key=lambda m: float(m[0]))
    assert 'pip install --no-cache-dir "vllm==$VLLM_VERSION"' in biggest[1]  # the one big layer, named


def test_the_notes_name_the_tags_the_files_and_the_upgrade(release):
    notes = release["notes"]
    assert notes == (release["out"] / "notes.md").read_text() + "\n"
    assert notes.startswith(f"# llm-appliance {version()}\n")
    assert f"`{REPOSITORY}:{release_tags()[0]}`" in notes and "(not pushed)" in notes
    assert "sbom.spdx.json" in notes and "layers.txt" in notes
    assert "**Upgrade**" in notes  # the CHANGELOG entry
    assert ("**Not a release" in notes) == release["dirty"]
