"""Static checks of the Dockerfile, the compose files and the publishing workflow: no daemon needed."""
from __future__ import annotations

import json
import re
import subprocess

from entrypoint.config.schema import pinned_versions
from entrypoint.version import release_tags, version

from .conftest import ROOT

DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"
COMPOSE_TEST = ROOT / "docker" / "compose.test.yaml"
WORKFLOW = ROOT / ".github" / "workflows" / "release.yml"
COMPOSE_RELEASE = ROOT / "tests" / "container" / "compose.release.yaml"


def run(*cmd, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=ROOT, env=env)


def test_hadolint_passes_the_dockerfile(hadolint):
    result = run(hadolint, "--no-color", DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_labels_repeat_versions_env():
    """Docker cannot read versions.env into a LABEL: the PINNED_* defaults repeat it (the build checks too)."""
    pins = pinned_versions()
    defaults = dict(re.findall(r"^ARG PINNED_(\w+)=(\S+)$", DOCKERFILE.read_text(), re.M))
    assert defaults == {name: pins[f"{name}_VERSION"] for name in ("VLLM", "LMCACHE", "TORCH", "CUDA")}
    base = re.search(r"^ARG BASE_IMAGE=\S+:v(\S+)$", DOCKERFILE.read_text(), re.M)
    assert base and base.group(1) == pins["VLLM_VERSION"], "the default BASE_IMAGE is the pinned vLLM's image"


def test_the_product_installs_from_pypi_alone():
    """PyPI's torch and vLLM wheels for the pinned versions are CUDA 13 builds: an extra index adds nothing, and
    where it is unreachable (mirrors, proxies, this build machine) pip retries it for every package (21+ min)."""
    text = DOCKERFILE.read_text()
    assert "--extra-index-url" not in text and "--index-url" not in text
    assert ".pth" not in text  # the package is pip-installed, not put on sys.path


def _config(compose_binary, *files) -> dict:
    args = [a for f in files for a in ("-f", f)]
    quiet = run(compose_binary, *args, "config", "-q")
    assert quiet.returncode == 0, quiet.stderr
    full = run(compose_binary, *args, "config", "--format", "json")
    assert full.returncode == 0, full.stderr
    return json.loads(full.stdout)["services"]["appliance"]


def test_compose_file_is_valid_and_has_what_a_gpu_host_needs(compose_binary):
    svc = _config(compose_binary, COMPOSE)
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": -1, "capabilities": ["gpu"]}]
    assert svc["ipc"] == "host"
    assert svc["ulimits"]["memlock"] == -1
    assert svc["restart"] == "unless-stopped"
    assert svc["healthcheck"]["test"] == ["CMD", "python3", "-m", "entrypoint", "healthcheck"]
    assert [v["target"] for v in svc["volumes"]] == ["/var/lib/appliance/hf-cache", "/var/lib/appliance/kv-disk"]
    assert [(p["published"], p["target"]) for p in svc["ports"]] == [("8000", 8000), ("9464", 9464)]  # API, metrics
    # Longer than supervisord's stop wait for vLLM, which is longer than vLLM's shutdown timeout (30 s).
    assert _seconds(svc["stop_grace_period"]) >= 60


def test_compose_port_follows_vllm_port_from_the_env(compose_binary):
    env = {"PATH": "/usr/bin:/bin", "VLLM_PORT": "9000"}
    result = run(compose_binary, "-f", COMPOSE, "config", "--format", "json", env=env)
    assert result.returncode == 0, result.stderr
    ports = json.loads(result.stdout)["services"]["appliance"]["ports"]
    assert [(p["published"], p["target"]) for p in ports] == [("9000", 9000), ("9464", 9464)]


def test_compose_test_override_drops_gpu_and_memlock_and_swaps_the_image(compose_binary):
    svc = _config(compose_binary, COMPOSE, COMPOSE_TEST)
    assert "deploy" not in svc
    assert "ulimits" not in svc
    assert "build" not in svc
    assert svc["image"] == "llm-appliance:test"
    assert svc["pull_policy"] == "never"
    assert svc["ipc"] == "host" and svc["restart"] == "unless-stopped"  # the rest is the product's


def test_compose_runs_the_release_and_builds_it_as_that_version(compose_binary):
    """As compose reads it: the published image of this version by default, built from this checkout's
    Dockerfile where it cannot be pulled. The release tests' override keeps both and builds the stub stage."""
    image = re.search(r'^image = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    svc = _config(compose_binary, COMPOSE)
    assert svc["image"] == f"{image}:{release_tags()[0]}"
    assert (svc["build"]["context"], svc["build"]["args"]) == (str(ROOT), {"IMAGE_VERSION": version()})
    svc = _config(compose_binary, COMPOSE, COMPOSE_RELEASE)
    assert svc["image"] == f"{image}:{release_tags()[0]}" and "pull_policy" not in svc
    assert svc["build"] == {"context": str(ROOT), "dockerfile": "Dockerfile", "target": "test",
                            "args": {"IMAGE_VERSION": version(), "BASE_IMAGE": "appliance-local-base:bookworm"}}
    assert "deploy" not in svc and "ulimits" not in svc


def _seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)([hms])", duration))


def lint_workflow(tools: dict, path) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    """actionlint with shellcheck, and zizmor offline (its online audits ask GitHub's API)."""
    return (run(tools["actionlint"], "-no-color", "-shellcheck", tools["shellcheck"], path),
            run(tools["zizmor"], "--offline", "--no-progress", path))


def test_the_publishing_workflow_passes_actionlint_and_zizmor(workflow_linters):
    actionlint, zizmor = lint_workflow(workflow_linters, WORKFLOW)
    assert actionlint.returncode == 0, actionlint.stdout + actionlint.stderr
    assert zizmor.returncode == 0, zizmor.stdout + zizmor.stderr


def test_the_workflow_lint_catches_an_injection_and_an_unquoted_variable(workflow_linters, tmp_path):
    """The lint can fail: a step that pastes a commit message into its script, and one unquoted variable."""
    bad = tmp_path / ".github" / "workflows" / "release.yml"
    bad.parent.mkdir(parents=True)
    text = WORKFLOW.read_text()
    step = "      - name: The tag names pyproject.toml's version\n"
    assert step in text
    bad.write_text(text.replace(step, "      - run: echo ${{ github.event.head_commit.message }}\n"
                                      "      - run: ls $HOME\n" + step))
    actionlint, zizmor = lint_workflow(workflow_linters, bad)
    assert actionlint.returncode != 0 and "head_commit.message" in actionlint.stdout
    assert "SC2086" in actionlint.stdout  # shellcheck ran on the run: scripts
    assert zizmor.returncode != 0 and "template-injection" in zizmor.stdout
