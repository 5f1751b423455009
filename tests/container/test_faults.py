"""Faults inside a running container, and how it stops.

The stub vLLM takes runtime triggers from STUB_CONTROL_DIR (tests/stubs/vllm_stub.py): a file named
`vllm-hang` makes its engine hang with /health still answering 200, as vLLM's does.
"""
from __future__ import annotations

import re
import time

from .conftest import LMCACHE_PROCESS, VLLM_PROCESS, wait_until

CONTROL = {"STUB_CONTROL_DIR": "/tmp"}


def _exists(app, path: str) -> bool:
    return app.raw.exec_run(["test", "-e", path]).exit_code == 0


def _answers(app) -> bool:
    return '"data"' in app.exec("curl", "-fsS", "--max-time", "2", "http://127.0.0.1:8000/v1/models", check=False)


def test_killed_vllm_is_restarted_and_the_container_healthy_again(appliance):
    app = appliance(env=CONTROL)
    app.wait_healthy(timeout=60)
    (old,) = app.pids(VLLM_PROCESS)
    (lmcache,) = app.pids(LMCACHE_PROCESS)

    app.exec("pkill", "-KILL", "-f", VLLM_PROCESS)

    new = wait_until(lambda: [p for p in app.pids(VLLM_PROCESS) if p != old], 30, what="a new vLLM process")
    assert len(new) == 1
    wait_until(lambda: _answers(app), 30, what="the API to answer again")
    app.wait_healthy(timeout=30)
    # Only vLLM was restarted: the LMCache server (and its CPU tier) lived on.
    assert app.pids(LMCACHE_PROCESS) == [lmcache]
    assert "exited: vllm (terminated by SIGKILL" in app.logs()


def test_hung_vllm_is_restarted_by_the_watchdog(appliance):
    # A hung engine never finishes the watchdog's probe request, so vLLM drains for its whole shutdown timeout
    # before it exits: keep that short here.
    app = appliance(env={**CONTROL, "APPLIANCE_SHUTDOWN_TIMEOUT": "3"})
    app.wait_healthy(timeout=60)
    (old,) = app.pids(VLLM_PROCESS)

    app.exec("touch", "/tmp/vllm-hang")
    # The stub removes the trigger file when it acts on it.
    wait_until(lambda: not _exists(app, "/tmp/vllm-hang"), 10, what="the stub to take the hang trigger")
    # /health still answers 200: only the watchdog's completion probe can tell.
    assert app.exec("curl", "-fsS", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:8000/health") == "200"

    new = wait_until(lambda: [p for p in app.pids(VLLM_PROCESS) if p != old], 45,
                     what="the watchdog to restart vLLM")
    assert len(new) == 1
    app.wait_healthy(timeout=30)
    assert re.search(r"watchdog \| .*restart", app.logs(), re.I), app.logs()


def test_docker_stop_is_graceful(appliance):
    grace = 90  # compose.yaml's stop_grace_period
    app = appliance(env={"APPLIANCE_SHUTDOWN_TIMEOUT": "30"})
    app.wait_healthy(timeout=60)

    started = time.monotonic()
    app.raw.stop(timeout=grace)
    took = time.monotonic() - started

    state = app.state()
    logs = app.logs()
    assert state["ExitCode"] == 0, logs
    assert not state["OOMKilled"]
    assert took < grace - 10, f"docker stop took {took:.1f}s"
    assert "SIGKILL" not in logs, logs
    # Both servers were asked to stop and did so on their own.
    assert "stub-vllm" in logs and re.search(r"stopped: vllm \(exit status 0\)", logs), logs
    assert re.search(r"stopped: lmcache \(exit status 0\)", logs), logs


def test_front_proxy_continues_a_stream_across_a_vllm_kill(appliance):
    """APPLIANCE_FRONT_PROXY in the image: the stream a client reads with curl goes on across a SIGKILL of vLLM
    (the stub streams fake_model's tokens, one every 0.1 s), and vLLM listens on loopback only."""
    app = appliance(env={"APPLIANCE_FRONT_PROXY": "true", "STUB_STREAM": "model", "STUB_TOKEN_INTERVAL": "0.1"})
    app.wait_healthy(timeout=60)
    (old,) = app.pids(VLLM_PROCESS)
    argv = app.cmdline(old)
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[argv.index("--port") + 1] == "18000"
    body = ('{"model": "Qwen/Qwen3-0.6B", "prompt": "once upon a time", "stream": true, "max_tokens": 40, '
            '"ignore_eos": true}')  # 16 prompt tokens + 40 within fake_model's 64
    # curl in the background writes the stream to a file; vLLM is killed while it runs.
    app.exec("sh", "-c", f"nohup curl -sN -H 'Content-Type: application/json' -d '{body}' "
                         "http://127.0.0.1:8000/v1/completions > /tmp/stream.txt 2>&1 &")

    def sent() -> int:
        return int(app.exec("sh", "-c", "grep -c '^data: {' /tmp/stream.txt || true").strip() or 0)

    wait_until(lambda: sent() >= 4, 30, what="a few tokens of the stream")
    app.exec("pkill", "-KILL", "-f", VLLM_PROCESS)
    wait_until(lambda: "data: [DONE]" in app.exec("cat", "/tmp/stream.txt"), 90, what="the end of the stream")
    stream = app.exec("cat", "/tmp/stream.txt")
    tokens = [line for line in stream.splitlines() if line.startswith("data: {")]
    assert len(tokens) == 40 and '"error"' not in stream, stream[-2000:]
    assert [p for p in app.pids(VLLM_PROCESS) if p != old], "the rest came from a restarted vLLM"
    assert "vLLM does not serve: holding requests" in app.logs()
