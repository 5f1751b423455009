"""The coordinator router's settings (APPLIANCE_ROUTER_*, entrypoint/config/settings.py) as `python -m entrypoint
router` reads them: every value is a working configuration or a clear error naming the variable (exit 2), never a
traceback, and a password in a URL is never printed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entrypoint.cluster.router import SETTING_NAMES, Router, RouterConfig, load_config
from entrypoint.config.load import make_plan
from entrypoint.config.settings import (
    ValueProblem,
    parse_http_url,
    parse_router_replicas,
)

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "hunter2-Zq"
BASE = {"APPLIANCE_ROUTER_COORDINATOR_URL": "http://coordinator:9300"}


def test_a_full_configuration():
    config, errors = load_config({**BASE, "APPLIANCE_ROUTER_REPLICAS": " http://Replica-0:8000=8081\thttp://10.0.0.7 ",
                                  "APPLIANCE_ROUTER_PORT": "9000", "APPLIANCE_ROUTER_LOOKUP_TIMEOUT": "0.25",
                                  "APPLIANCE_ROUTER_HEALTH_INTERVAL": "3", "VLLM_TENSOR_PARALLEL_SIZE": "2",
                                  "UNRELATED": "x"})
    assert errors == []
    assert config.coordinator.url == "http://coordinator:9300"
    assert [(r.url, r.host, r.lmcache_http_port) for r in config.replicas] == [
        ("http://replica-0:8000", "replica-0", 8081), ("http://10.0.0.7:80", "10.0.0.7", None)]
    assert (config.port, config.lookup_timeout, config.health_interval, config.world_size) == (9000, 0.25, 3.0, 2)


def test_the_defaults_discover_the_replicas_through_the_coordinator():
    config, errors = load_config(BASE)
    assert errors == [] and config.replicas == () and config.replica_port == 8000 and config.port == 8000
    assert config.lookup_timeout == 0.5 and config.request_timeout == 600 and config.health_interval == 10


@pytest.mark.parametrize("name,value,problem", [
    ("APPLIANCE_ROUTER_COORDINATOR_URL", "", "not set"),
    ("APPLIANCE_ROUTER_COORDINATOR_URL", "coordinator:9300", "http://"),
    ("APPLIANCE_ROUTER_COORDINATOR_URL", f"http://admin:{PASSWORD}@coordinator:9300", "credentials"),
    ("APPLIANCE_ROUTER_COORDINATOR_URL", "http://coordinator:9300/api", "no path"),
    ("APPLIANCE_ROUTER_COORDINATOR_URL", "http://coordinator:0", "port"),
    ("APPLIANCE_ROUTER_COORDINATOR_URL", "http://coord inator:1", "spaces"),
    ("APPLIANCE_ROUTER_COORDINATOR_URL", "http://--x:1", "invalid host"),
    ("APPLIANCE_ROUTER_REPLICAS", "http://a:8000 http://a:8000", "twice"),
    ("APPLIANCE_ROUTER_REPLICAS", "http://a:8000=0", "1-65535"),
    ("APPLIANCE_ROUTER_REPLICAS", "http://a:8000=x", "1-65535"),
    ("APPLIANCE_ROUTER_REPLICAS", "http://a:8000 --worker-urls", "replica 2"),
    ("APPLIANCE_ROUTER_REPLICAS", f"http://u:{PASSWORD}@a:8000", "credentials"),
    ("APPLIANCE_ROUTER_REPLICAS", " ".join(f"http://r{i}:1" for i in range(300)), "at most"),
    ("APPLIANCE_ROUTER_PORT", "65536", "port"),
    ("APPLIANCE_ROUTER_REPLICA_PORT", "http", "port"),
    ("APPLIANCE_ROUTER_LOOKUP_TIMEOUT", "0", "seconds"),
    ("APPLIANCE_ROUTER_LOOKUP_TIMEOUT", "nan", "seconds"),
    ("APPLIANCE_ROUTER_LOOKUP_TIMEOUT", "1e400", "seconds"),
    ("APPLIANCE_ROUTER_REQUEST_TIMEOUT", "0", "at least 1"),
    ("APPLIANCE_ROUTER_HEALTH_INTERVAL", "0.5", "whole number"),
    ("VLLM_TENSOR_PARALLEL_SIZE", "0", "at least 1"),
])
def test_a_bad_value_is_an_error_naming_the_variable(name, value, problem):
    config, errors = load_config({**BASE, name: value})
    assert config is None and len(errors) == 1
    assert errors[0].startswith(name + ":") and problem in errors[0], errors
    assert PASSWORD not in errors[0]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SETTING_NAMES), st.text(max_size=60))
def test_any_value_is_a_configuration_or_an_error(name, value):
    config, errors = load_config({**BASE, name: value})  # raises nothing
    assert (config is None) == bool(errors)
    if config is not None:
        assert all(r.url.startswith(("http://", "https://")) and " " not in r.url for r in config.replicas)


@given(st.text(alphabet="abc:/@[]=.0123456789 -", max_size=40))
def test_the_url_parsers_raise_only_their_own_error(text):
    for parse in (parse_http_url, parse_router_replicas):
        try:
            parse(text)
        except ValueProblem:
            pass


def test_the_appliances_own_check_validates_them_too():
    """A replica's `config` validates the same .env (the registry is one), and its JSON plan stays plain."""
    plan = make_plan(None, [], {"VLLM_KV_OFFLOADING_BACKEND": "none", **BASE,
                                "APPLIANCE_ROUTER_REPLICAS": "http://A:1=2  http://b:3"})
    assert plan.errors == []
    assert json.loads(json.dumps(plan.to_dict()))["values"]["APPLIANCE_ROUTER_REPLICAS"] == "http://a:1=2 http://b:3"
    plan = make_plan(None, [], {"VLLM_KV_OFFLOADING_BACKEND": "none",
                                "APPLIANCE_ROUTER_COORDINATOR_URL": f"http://u:{PASSWORD}@c:1"})
    assert len(plan.errors) == 1 and "APPLIANCE_ROUTER_COORDINATOR_URL" in plan.errors[0]
    assert PASSWORD not in plan.errors[0] and "***@c:1" in plan.errors[0]


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("APPLIANCE_", "VLLM_", "LMCACHE_"))}
    return subprocess.run([sys.executable, "-m", "entrypoint", "router", *args], env={**clean, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)


def test_the_command_refuses_bad_settings_with_exit_2_and_no_traceback():
    out = _cli({"APPLIANCE_ROUTER_COORDINATOR_URL": f"http://u:{PASSWORD}@c:1", "APPLIANCE_ROUTER_PORT": "x"})
    assert out.returncode == 2, out
    assert "APPLIANCE_ROUTER_COORDINATOR_URL" in out.stderr and "APPLIANCE_ROUTER_PORT" in out.stderr
    assert "Traceback" not in out.stderr and PASSWORD not in out.stdout + out.stderr
    assert _cli({}).returncode == 2
    ok = _cli(BASE, "--check")
    assert ok.returncode == 0 and "coordinator http://coordinator:9300" in ok.stdout, ok


def test_the_command_reads_an_env_file(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("APPLIANCE_ROUTER_COORDINATOR_URL=http://from-file:9300\nAPPLIANCE_ROUTER_PORT=8100\n")
    out = _cli({}, "--env-file", str(env_file), "--check")
    assert out.returncode == 0 and "router on port 8100, coordinator http://from-file:9300" in out.stdout, out


def test_discovered_replicas_follow_the_coordinators_instances():
    config, _ = load_config({**BASE, "APPLIANCE_ROUTER_REPLICA_PORT": "8001"})
    router = Router(config, log=lambda *a, **k: None)
    router._discover([{"instance_id": "s0", "ip": "10.0.0.1", "http_port": 8080},
                      {"instance_id": "s1", "ip": "fd00::1", "http_port": 8080},
                      {"instance_id": "bad", "ip": "-x", "http_port": 8080}, {"instance_id": "no-ip"}])
    assert [r.url for r in router.replicas] == ["http://10.0.0.1:8001", "http://[fd00::1]:8001"]
    first = router.replicas[0]
    first.healthy, first.requests = True, 5
    router._discover([{"instance_id": "s0-restarted", "ip": "10.0.0.1", "http_port": 8080},
                      {"instance_id": "s2", "ip": "10.0.0.3", "http_port": 8080}])
    assert [r.url for r in router.replicas] == ["http://10.0.0.1:8001", "http://10.0.0.3:8001"]
    assert router.replicas[0] is first and first.healthy and first.requests == 5  # the same replica, kept
    assert not router.replicas[1].healthy  # a new one gets traffic after its first health check
    # a restarted coordinator lists nobody until the next heartbeats: healthy replicas stay, the others go
    router.replicas[1].healthy = True
    router._discover([])
    assert [r.url for r in router.replicas] == ["http://10.0.0.1:8001", "http://10.0.0.3:8001"]
    router.replicas[1].healthy = False
    router._discover([])
    assert [r.url for r in router.replicas] == ["http://10.0.0.1:8001"]
    assert isinstance(config, RouterConfig)
