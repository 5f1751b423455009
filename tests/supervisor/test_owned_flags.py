"""Supervision follows what vLLM really uses: a flag it relies on, given where supervision cannot follow it,
stops `serve` before anything starts; given where it can (overrides after `serve`), the watchdog and the
healthcheck probe the port and name vLLM really serves. A launcher that gives up ends the appliance as a
FATAL program does, however the start grace is set."""
from __future__ import annotations

import socket

import pytest

from appliance_harness import free_ports


@pytest.mark.parametrize("name, value, error", [
    ("VLLM_EXTRA_ARGS", "--port {other}", "error: VLLM_EXTRA_ARGS: --port is set by the appliance; use VLLM_PORT"),
    ("VLLM_EXTRA_ARGS", "--served-model-name other",
     "error: VLLM_EXTRA_ARGS: --served-model-name is set by the appliance; use VLLM_SERVED_MODEL_NAME (the health "
     "checks ask for the first name)"),
    ("LMCACHE_SERVER_EXTRA_ARGS", "--http-port {other}",
     "error: LMCACHE_SERVER_EXTRA_ARGS: --http-port is set by the appliance; use APPLIANCE_LMCACHE_HTTP_PORT"),
], ids=["vllm-port", "vllm-served-name", "lmcache-http-port"])
def test_an_owned_flag_in_extra_args_stops_serve_before_anything_starts(appliance, name, value, error):
    (other,) = free_ports(1)
    a = appliance(**{name: value.format(other=other)})
    assert a.wait_exit(30) == 2
    out = a.output()
    assert error in out.splitlines(), out
    assert "1 problem(s); nothing was started. See docs/ENVIRONMENT.md." in out
    assert not a.run.root.exists() and not list(a.control.glob("*-start-*.json"))


def test_port_and_name_given_after_serve_are_what_supervision_probes(appliance):
    (port,) = free_ports(1)
    a = appliance(args=["--port", str(port), "--served-model-name", "stub/model"], VLLM_SERVED_MODEL_NAME="other")
    a.base = f"http://127.0.0.1:{port}"  # the port vLLM really listens on
    a.wait_ready()
    a.wait_output("watchdog | vllm is ready")  # its completion asked for the served name on that port
    start = a.starts("vllm")[0]
    assert start["argv"].count("--port") == 1 and start["argv"][start["argv"].index("--port") + 1] == str(port)
    assert start["argv"][start["argv"].index("--served-model-name") + 1] == "stub/model"
    ok = a.healthcheck()
    assert ok.returncode == 0 and ok.stdout == f"healthy: stub/model at {a.base}\n", ok.stderr
    assert "probe failed" not in a.output()
    assert a.terminate() == 0


def test_a_launcher_that_gives_up_after_the_start_grace_ends_fatal(appliance):
    """APPLIANCE_STARTUP_TIMEOUT=5 and a busy API port: each launch waits 10 s for the port, longer than
    supervisord's startsecs, so supervisord alone would count every launch as started and restart forever."""
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        a = appliance(start=False, APPLIANCE_STARTUP_TIMEOUT=5)
        busy.bind(("127.0.0.1", int(a.env["VLLM_PORT"])))
        busy.listen()
        a.start()
        rc = a.wait_exit(120)
    out = a.output()
    assert rc == 1, out
    assert a.spawns("vllm") == 4
    assert "vllm     | [appliance] error: gave up 4 times in a row: stopping the appliance (as for a program that " \
           "is FATAL)" in out
    assert "appliance: stopped because 'vllm' failed 4 times in a row (FATAL); its last lines are above" in out
    assert not list(a.control.glob("vllm-start-*.json"))  # vLLM itself never started
