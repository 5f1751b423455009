"""APPLIANCE_FRONT_PROXY and its bounds: validation, the plan (vLLM moves to loopback behind the proxy, the API
address stays the proxy's), what is rendered, and the metrics families of its counters."""
from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from entrypoint.config.load import make_plan
from entrypoint.inspectors.healthcheck import api_base, api_keys, vllm_base
from entrypoint.programs import front, metrics, on_fatal
from entrypoint.render.supervisord_conf import render, stop_wait_seconds
from entrypoint.rundir import RunDir

from test_resilience_settings import config

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name,value,message", [
    ("APPLIANCE_FRONT_PROXY", "maybe", "must be true or false"),
    ("APPLIANCE_FRONT_VLLM_PORT", "0", "must be"),
    ("APPLIANCE_FRONT_VLLM_PORT", "--port", "must be"),
    ("APPLIANCE_FRONT_MAX_HELD", "0", "must be at least 1"),
    ("APPLIANCE_FRONT_MAX_HOLD", "forever", "must be a whole number"),
    ("APPLIANCE_FRONT_MAX_RESENDS", "-1", "must be at least 0"),
])
def test_bad_values_are_a_clear_error_with_exit_2(name, value, message):
    out = config({"APPLIANCE_FRONT_PROXY": "true", name: value})
    assert out.returncode == 2, out.stdout
    assert f"error: {name}=" in out.stderr and message in out.stderr and "Traceback" not in out.stderr


def test_off_by_default_and_vllm_keeps_the_api_port():
    plan = make_plan(None, [], {})
    assert plan.appliance.front_proxy is False
    assert plan.vllm_address == ("0.0.0.0", 8000) and vllm_base(plan) == api_base(plan) == "http://127.0.0.1:8000"
    assert plan.to_dict()["api"] == {"host": "0.0.0.0", "port": 8000, "vllm_host": None, "vllm_port": None}


def test_on_vllm_moves_to_loopback_and_the_api_port_is_the_proxys():
    plan = make_plan(None, [], {"APPLIANCE_FRONT_PROXY": "true", "VLLM_PORT": "9000",
                                "APPLIANCE_FRONT_VLLM_PORT": "19000"})
    assert plan.errors == []
    argv = plan.vllm.argv
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[argv.index("--port") + 1] == "19000"
    assert (plan.api_host, plan.api_port) == ("0.0.0.0", 9000)
    assert vllm_base(plan) == "http://127.0.0.1:19000" and api_base(plan) == "http://127.0.0.1:9000"
    assert front.config_of(plan).upstream == "http://127.0.0.1:19000"
    assert "Front proxy on 0.0.0.0:9000; vLLM behind it on 127.0.0.1:19000" in config(
        {"APPLIANCE_FRONT_PROXY": "true", "VLLM_PORT": "9000", "APPLIANCE_FRONT_VLLM_PORT": "19000"}).stdout


@pytest.mark.parametrize("other", ["VLLM_PORT", "APPLIANCE_METRICS_PORT", "APPLIANCE_LMCACHE_PORT"])
def test_vllms_port_behind_the_proxy_must_be_its_own(other):
    plan = make_plan(None, [], {"APPLIANCE_FRONT_PROXY": "true", "APPLIANCE_FRONT_VLLM_PORT": "9100", other: "9100"})
    assert any(e.startswith(f"APPLIANCE_FRONT_VLLM_PORT=9100 is also {other}") for e in plan.errors), plan.errors


def test_the_proxy_checks_every_key_vllm_accepts():
    env = {"APPLIANCE_FRONT_PROXY": "true", "VLLM_EXTRA_ARGS": "--api-key tenant-a-key-1 tenant-b-key-2"}
    plan = make_plan(None, [], env)
    assert plan.errors == []
    assert set(api_keys(plan, env)) == {"tenant-a-key-1", "tenant-b-key-2"}
    assert set(front.config_of(plan).api_keys) == {"tenant-a-key-1", "tenant-b-key-2"}


def rendered(env: dict, tmp_path) -> dict[str, dict[str, str]]:
    plan = make_plan(None, [], {"APPLIANCE_RUN_DIR": str(tmp_path), **env})
    assert plan.errors == []
    ini = configparser.RawConfigParser()
    ini.read_string(render(plan, RunDir(tmp_path), "pw"))
    return {s.split(":", 1)[1]: dict(ini[s]) for s in ini.sections() if s.startswith(("program:", "eventlistener:"))}


def test_the_front_program_replaces_the_gap_and_stops_before_vllm(tmp_path):
    progs = rendered({"APPLIANCE_FRONT_PROXY": "true", "APPLIANCE_SHUTDOWN_TIMEOUT": "12"}, tmp_path)
    assert "gap" not in progs and "entrypoint.programs.front" in progs["front"]["command"]
    # supervisord stops in descending priority: the watchdog, then the proxy (it drains), then vLLM.
    assert int(progs["vllm"]["priority"]) < int(progs["front"]["priority"]) < int(progs["watchdog"]["priority"])
    plan = make_plan(None, [], {"APPLIANCE_FRONT_PROXY": "true", "APPLIANCE_SHUTDOWN_TIMEOUT": "12"})
    assert int(progs["front"]["stopwaitsecs"]) == stop_wait_seconds(plan) > 12
    assert "front" not in on_fatal.OPTIONAL  # it is the API: the appliance does not serve on without it


def test_a_kv_server_has_no_front_proxy(tmp_path):
    progs = rendered({"APPLIANCE_FRONT_PROXY": "true", "APPLIANCE_ROLE": "kv-server"}, tmp_path)
    assert "front" not in progs and "vllm" not in progs


def test_its_counters_become_metrics(tmp_path):
    state = {"ready": False, "held": 3, "held_total": 7, "resent": 2, "resumed": 1, "dropped": 4,
             "queue_age_seconds": 1.5}
    (tmp_path / front.FRONT_STATE).write_text(json.dumps(state))
    assert metrics.state_file(RunDir(tmp_path), front.FRONT_STATE) == state

    class Families:
        def collect(self):
            yield from metrics.front_families(state)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Families())
    text = generate_latest(registry).decode()
    for line in ("appliance_front_vllm_ready 0.0", "appliance_front_held 3.0", "appliance_front_queue_age_seconds 1.5",
                 "appliance_front_held_requests_total 7.0", "appliance_front_resent_total 2.0",
                 "appliance_front_resumed_total 1.0", "appliance_front_dropped_total 4.0"):
        assert line in text.splitlines(), (line, text)
    # a corrupt state file is no metric, not a failure
    (tmp_path / front.FRONT_STATE).write_text("{not json")
    assert metrics.state_file(RunDir(tmp_path), front.FRONT_STATE) is None


FRONT_SETTINGS = ["APPLIANCE_FRONT_PROXY", "APPLIANCE_FRONT_VLLM_PORT", "APPLIANCE_FRONT_MAX_HELD",
                  "APPLIANCE_FRONT_MAX_HOLD", "APPLIANCE_FRONT_MAX_RESENDS"]
SECRET = "sk-front-planted-91827"


@pytest.mark.parametrize("name", FRONT_SETTINGS)
@pytest.mark.parametrize("value", ["", "-", "--port=1", "'5'", '"true"', "5 --api-key x", "\udcff\udcfe",
                                   SECRET, f"http://u:{SECRET}@h"])
def test_hostile_values_give_a_plan_or_exit_2_never_a_traceback_or_the_secret(name, value, tmp_path):
    env_file = tmp_path / ".env"  # non-UTF-8 bytes reach the entrypoint through an env file
    env_file.write_bytes(f"{name}={value}\n".encode("utf-8", "surrogateescape"))
    base = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "VLLM_API_KEY": SECRET}
    out = subprocess.run([sys.executable, "-m", "entrypoint", "config", "--env-file", str(env_file)], cwd=ROOT,
                         env=base, capture_output=True, text=True, timeout=60)
    assert out.returncode in (0, 2), out.stderr
    assert "Traceback" not in out.stderr and SECRET not in out.stdout + out.stderr
    if out.returncode == 2:
        assert "error: " in out.stderr
