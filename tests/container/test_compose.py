"""The shipped compose.yaml, with docker/compose.test.yaml for a CPU-only host, through compose itself."""
from __future__ import annotations

import json
import os
import subprocess
import urllib.request
import uuid

import pytest
import requests

from .conftest import ROOT, problem_lines, wait_until
from .test_static_checks import COMPOSE, COMPOSE_TEST
from ports import free_port


def _models(port: int) -> list[str]:
    url = f"http://127.0.0.1:{port}/v1/models"
    body = wait_until(lambda: json.load(urllib.request.urlopen(url, timeout=5)), 30, what=f"{url} to answer")
    return [m["id"] for m in body["data"]]


@pytest.fixture
def project_env(image, monkeypatch):
    """A unique project name and a free host port, through the variables compose reads."""
    project = f"appliance-test-{uuid.uuid4().hex[:8]}"
    port = free_port()
    monkeypatch.setenv("COMPOSE_PROJECT_NAME", project)
    monkeypatch.setenv("APPLIANCE_HOST_PORT", str(port))
    monkeypatch.setenv("APPLIANCE_METRICS_HOST_PORT", str(free_port()))  # 9464 may be taken on a test host
    monkeypatch.setenv("APPLIANCE_TEST_IMAGE", image)
    return project, port


def test_compose_up_without_env_file_serves_the_embedded_default(request, project_env, docker_client):
    from testcontainers.compose import DockerCompose

    if (ROOT / ".env").exists():
        pytest.skip("this checkout has a .env, which compose would read: the test is about running without one")
    project, port = project_env
    compose = DockerCompose(context=str(ROOT), compose_file_name=[str(COMPOSE), str(COMPOSE_TEST)], wait=True)
    try:
        compose.start()  # docker compose up --wait: returns once the healthcheck passes, fails if it cannot
        (container,) = docker_client.containers.list(filters={"label": f"com.docker.compose.project={project}"})
        assert container.attrs["State"]["Health"]["Status"] == "healthy"
        assert container.attrs["HostConfig"]["IpcMode"] == "host"
        assert _models(port) == ["Qwen/Qwen3-0.6B"]
        assert problem_lines(container.logs().decode(errors="replace")) == []
    except BaseException:
        print("\n----- compose logs -----\n" + "\n".join(compose.get_logs()))
        raise
    finally:
        compose.stop()  # down --volumes


def test_compose_reads_dotenv_and_stops_and_goes_down_cleanly(project_env, compose_binary, docker_client, tmp_path):
    """`cp env/x.env .env && docker compose up`: the .env configures the container and the port mapping."""
    project, port = project_env
    (tmp_path / ".env").write_text("VLLM_PORT=9000\nVLLM_SERVED_MODEL_NAME=from-dotenv\n")
    # --project-directory: the .env is looked up there (for env_file and for interpolation), not in the checkout.
    base = [str(compose_binary), "--project-directory", str(tmp_path), "-f", str(COMPOSE), "-f", str(COMPOSE_TEST)]
    label = {"label": f"com.docker.compose.project={project}"}

    def compose(*args):
        return subprocess.run([*base, *args], capture_output=True, text=True, timeout=300)

    try:
        up = compose("up", "--wait")
        assert up.returncode == 0, up.stderr + compose("logs").stdout
        (container,) = docker_client.containers.list(filters=label)
        metrics_port = os.environ["APPLIANCE_METRICS_HOST_PORT"]
        assert container.attrs["HostConfig"]["PortBindings"] == {
            "9000/tcp": [{"HostIp": "", "HostPort": str(port)}],
            "9464/tcp": [{"HostIp": "", "HostPort": metrics_port}]}  # the metrics endpoint (APPLIANCE_METRICS_PORT)
        assert "appliance_program_up" in requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        assert _models(port) == ["from-dotenv"]

        stop = compose("stop")
        assert stop.returncode == 0, stop.stderr
        container.reload()
        logs = container.logs().decode(errors="replace")
        assert container.attrs["State"]["ExitCode"] == 0, logs
        assert "SIGKILL" not in logs, logs
    finally:
        down = compose("down", "--volumes")
    assert down.returncode == 0, down.stderr
    assert docker_client.containers.list(all=True, filters=label) == []
    assert docker_client.volumes.list(filters=label) == []
    assert docker_client.networks.list(filters=label) == []


def test_compose_variables_in_dotenv_do_not_stop_the_appliance(run_once):
    code, out = run_once(["check"], environment={"APPLIANCE_IMAGE": "local/llm-appliance:v2",
                                                 "APPLIANCE_HOST_PORT": "8080"})
    assert code == 0, out
