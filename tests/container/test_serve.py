"""`serve`: the container becomes healthy, serves the API, and flags after `serve` reach vLLM."""
from __future__ import annotations

import json

import pytest

from .conftest import LMCACHE_PROCESS, VLLM_PROCESS, problem_lines


def test_default_config_becomes_healthy_and_serves_the_embedded_model(appliance):
    app = appliance()
    app.wait_healthy(timeout=60)
    models = json.loads(app.exec("curl", "-fsS", "http://127.0.0.1:8000/v1/models"))
    assert [m["id"] for m in models["data"]] == ["Qwen/Qwen3-0.6B"]
    # The default runs the LMCache server next to vLLM, and vLLM is pointed at it.
    assert len(app.pids(LMCACHE_PROCESS)) == 1
    (vllm,) = app.pids(VLLM_PROCESS)
    argv = app.cmdline(vllm)
    assert "--kv-transfer-config" in argv
    assert problem_lines(app.logs()) == []
    # Program output reaches the container's log, prefixed with the program's name.
    assert "vllm     | stub-vllm" in app.logs()


@pytest.mark.parametrize("command", [
    ["serve", "--max-model-len", "1234", "--served-model-name", "tiny"],
    ["--max-model-len", "1234", "--served-model-name", "tiny"],  # a first flag means `serve`
], ids=["after-serve", "flags-only"])
def test_flags_after_serve_reach_vllm(appliance, command):
    app = appliance(command=command)
    app.wait_healthy(timeout=60)
    (vllm,) = app.pids(VLLM_PROCESS)
    argv = app.cmdline(vllm)
    assert argv[argv.index("--max-model-len") + 1] == "1234"
    assert argv[argv.index("--served-model-name") + 1] == "tiny"
    models = json.loads(app.exec("curl", "-fsS", "http://127.0.0.1:8000/v1/models"))
    assert [m["id"] for m in models["data"]] == ["tiny"]


def test_runs_as_the_non_root_user(appliance):
    app = appliance(user="appliance", env={"LMCACHE_LOCAL_DISK": "true", "LMCACHE_MAX_LOCAL_DISK_SIZE": "1"})
    app.wait_healthy(timeout=60)
    (vllm,) = app.pids(VLLM_PROCESS)
    assert app.exec("stat", "-c", "%U", f"/proc/{vllm}").strip() == "appliance"
