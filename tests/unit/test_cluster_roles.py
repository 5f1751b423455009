"""APPLIANCE_ROLE=kv-server and LMCACHE_SERVER (a replica): every message an operator can see, word for word,
and what each role renders for supervisord. What vLLM and LMCache make of the plans: tests/contract/
test_cluster_roles.py; the roles running under supervisord: tests/supervisor/test_cluster_roles.py."""
from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entrypoint import cli
from entrypoint.config.settings import MPServer, ValueProblem, parse_mp_server
from entrypoint.render.supervisord_conf import render
from entrypoint.rundir import RunDir

from plan_argv import kv_transfer

BASE = {"VLLM_MODEL": "facebook/opt-125m", "VLLM_KV_OFFLOADING_BACKEND": "lmcache", "VLLM_KV_OFFLOADING_SIZE": "5",
        "VLLM_HOST": "127.0.0.1"}
KV_SERVER = {**BASE, "APPLIANCE_ROLE": "kv-server"}
REPLICA = {**BASE, "LMCACHE_SERVER": "kv-server:5555"}
EG = ", e.g. LMCACHE_SERVER=kv-server:5555"


@pytest.mark.parametrize("value, problem", [
    ("--port", "starts with '-': must be host:port, e.g. kv-server:5555"),
    ("-kv-server:5555", "starts with '-': must be host:port, e.g. kv-server:5555"),
    (":5555", "has no host: host:port, e.g. kv-server:5555"),
    ("kv-server:0", "has an invalid port: must be 1-65535, e.g. kv-server:5555"),
    ("kv-server:65536", "has an invalid port: must be 1-65535, e.g. kv-server:5555"),
    ("kv-server:zmq", "has an invalid port: must be 1-65535, e.g. kv-server:5555"),
    ("kv-server:", "has an invalid port: must be 1-65535, e.g. kv-server:5555"),
    ("ipc:///run/lmcache.sock", "has the scheme 'ipc': the LMCache server of a kv-server container listens on ZMQ "
     "TCP; write host:port or tcp://host:port" + EG),
    ("grpc://kv-server:5555", "has the scheme 'grpc': the LMCache server of a kv-server container listens on ZMQ "
     "TCP; write host:port or tcp://host:port" + EG),
    ("http://kv-server:8080", "has the scheme 'http': the LMCache server of a kv-server container listens on ZMQ "
     "TCP; write host:port or tcp://host:port" + EG),
    ("kv-server:5555/x", "must be host:port only (no path, query or credentials), e.g. kv-server:5555"),
    ("user@kv-server:5555", "must be host:port only (no path, query or credentials), e.g. kv-server:5555"),
    ("[fd00::1]:5555", "is an IPv6 address: LMCache's ZMQ client does not enable IPv6; use a host name or an IPv4 "
     "address" + EG),
    ("fd00::1", "is an IPv6 address: LMCache's ZMQ client does not enable IPv6; use a host name or an IPv4 "
     "address" + EG),
    ("kv_server;rm:5555", "has an invalid host 'kv_server;rm': a DNS name or an IPv4 address" + EG),
    ("kv server:5555", "must be host:port without spaces or control characters, e.g. kv-server:5555"),
    ("kv-server:5555\n--port 1", "must be host:port without spaces or control characters, e.g. kv-server:5555"),
])
def test_bad_server_addresses_are_refused_with_the_fix(plan_for, value, problem):
    plan = plan_for({**BASE, "LMCACHE_SERVER": value})
    assert plan.errors == [f"LMCACHE_SERVER={value!r}: {problem}"]
    assert plan.lmcache.server is None  # nothing of the value reaches vLLM's connector
    assert kv_transfer(plan)["kv_connector_extra_config"]["lmcache.mp.host"] == "tcp://127.0.0.1"


@pytest.mark.parametrize("value, host, port", [
    ("kv-server:5555", "kv-server", 5555), ("tcp://KV-Server:6000", "kv-server", 6000),
    ("TCP://10.0.0.2", "10.0.0.2", None), ("kv-server.cluster.local", "kv-server.cluster.local", None)])
def test_server_address_forms(value, host, port):
    assert parse_mp_server(value) == MPServer(host, port)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=60), st.from_regex(r"\A(tcp://)?[-a-zA-Z0-9._:]{0,20}\Z")))
def test_any_server_text_parses_or_is_refused(text):
    """Never an exception other than ValueProblem; what parses is a host that cannot be read as a flag."""
    try:
        server = parse_mp_server(text)
    except ValueProblem:
        return
    assert server.host and server.host[0].isalnum() and all(c.isalnum() or c in ".-" for c in server.host)
    assert server.port is None or 1 <= server.port <= 65535


def test_an_empty_value_is_unset_as_for_every_setting(plan_for):
    """Compose passes `LMCACHE_SERVER=` for a variable it interpolates empty: that is the ordinary appliance."""
    plan = plan_for({**BASE, "LMCACHE_SERVER": "  "})
    assert plan.errors == [] and plan.lmcache.mode == "server" and plan.lmcache.server is None


@pytest.mark.parametrize("env, errors", [
    ({**REPLICA, "LMCACHE_MODE": "in-process"}, [
        "LMCACHE_SERVER points vLLM at an LMCache server, but LMCACHE_MODE=in-process runs LMCache inside vLLM: set "
        "LMCACHE_MODE=server (the default), or remove LMCACHE_SERVER"]),
    ({**REPLICA, "VLLM_KV_OFFLOADING_BACKEND": "native"}, [
        "LMCACHE_SERVER: LMCache settings take effect only with VLLM_KV_OFFLOADING_BACKEND=lmcache (it is native); "
        "set it, or remove them"]),
    ({**REPLICA, "LMCACHE_REMOTE_URL": "lm://x:1"}, [
        "LMCACHE_REMOTE_URL: applies in in-process mode only (LMCACHE_MODE=in-process); a replica with "
        "LMCACHE_SERVER uses that server's configuration"]),
    ({**KV_SERVER, "LMCACHE_SERVER": "kv-server:5555"}, [
        "APPLIANCE_ROLE=kv-server and LMCACHE_SERVER are both set: a kv-server runs the LMCache server itself; set "
        "LMCACHE_SERVER on the replicas only (compose.cluster.yaml sets it in their environment)"]),
    ({**KV_SERVER, "LMCACHE_MODE": "in-process"}, [
        "APPLIANCE_ROLE=kv-server runs an LMCache server for other containers: it needs "
        "VLLM_KV_OFFLOADING_BACKEND=lmcache and LMCACHE_MODE=server (they are lmcache and in-process)"]),
    ({**KV_SERVER, "VLLM_KV_OFFLOADING_BACKEND": "none", "VLLM_KV_OFFLOADING_SIZE": ""}, [
        "APPLIANCE_ROLE=kv-server runs an LMCache server for other containers: it needs "
        "VLLM_KV_OFFLOADING_BACKEND=lmcache and LMCACHE_MODE=server (they are none and server)"]),
    ({**BASE, "APPLIANCE_ROLE": "replica"}, ["APPLIANCE_ROLE='replica': must be one of: all, kv-server, e.g. "
                                             "APPLIANCE_ROLE=kv-server"]),
])
def test_roles_that_contradict_the_settings(plan_for, env, errors):
    assert plan_for(env).errors == errors


def test_the_servers_settings_are_accepted_and_left_to_the_server_in_a_replica(plan_for, tmp_path):
    """One .env for the cluster: the replica reads the kv-server's tier settings and sizes nothing with them."""
    plan = plan_for({**REPLICA, "LMCACHE_LOCAL_DISK": str(tmp_path), "LMCACHE_MAX_LOCAL_DISK_SIZE": "20",
                     "LMCACHE_EVICTION_POLICY": "ARC", "LMCACHE_L2_PREFETCH_POLICY": "retain",
                     "LMCACHE_SHARED_URL": "redis://kv-store:6379", "LMCACHE_SHARED_MAX_SIZE": "8",
                     "LMCACHE_SHARED_PASSWORD": "pw-77", "LMCACHE_SERVER_EXTRA_ARGS": "--max-workers 2",
                     "LMCACHE_NONBLOCKING_LOOKUP": "false"})
    assert plan.errors == [] and plan.warnings == []
    assert (plan.lmcache.mode, plan.lmcache.argv, plan.lmcache.disk, plan.lmcache.shared_store, plan.lmcache.env) == (
        "external", None, None, None, {})
    assert plan.tiers.cpu_tier_gib is None  # no tier here: nothing for preflight to check against memory
    transfer = kv_transfer(plan)  # the same connector settings as a replica with its own server
    assert transfer["kv_load_failure_policy"] == "recompute"
    assert transfer["kv_connector_extra_config"] == {
        "lmcache.mp.host": "tcp://kv-server", "lmcache.mp.port": 5555, "lmcache.mp.heartbeat_interval": 5,
        "lmcache.mp.mq_timeout": 30.0, "lmcache.mp.nonblocking_lookup_status": False,  # the connector's own
        "appliance.kv_identity": plan.kv_identity,  # and the replica's KV identity, in every chunk key
        "appliance.skip_useless_lookup": False}
    assert "pw-77" not in str(plan.to_dict()) + str(plan.vllm.env)


def test_the_kv_server_ignores_the_api_port_and_warns_about_no_api_key(plan_for):
    plan = plan_for({**KV_SERVER, "VLLM_HOST": "0.0.0.0", "VLLM_PORT": "8080"})  # 8080 = its HTTP port
    assert plan.errors == [] and plan.warnings == []
    assert plan.vllm.argv == [] and plan.lmcache.health_url == "http://127.0.0.1:8080/healthcheck"


def test_config_says_what_each_role_runs(capsys, monkeypatch):
    monkeypatch.setattr(os, "environ", dict(KV_SERVER))
    assert cli.main(["config"]) == 0
    out = capsys.readouterr().out
    assert "vLLM command:\n  none: APPLIANCE_ROLE=kv-server runs only the LMCache server" in out
    assert "--host 0.0.0.0" in out and "--http-host 0.0.0.0" in out
    monkeypatch.setattr(os, "environ", dict(REPLICA))
    assert cli.main(["config"]) == 0
    out = capsys.readouterr().out
    assert ("KV offloading: external\n  LMCache server (LMCACHE_SERVER): tcp://kv-server:5555, health "
            "http://kv-server:8080/healthcheck; its tiers are sized there") in out


def test_supervisord_runs_only_the_roles_programs(plan_for, tmp_path):
    run = RunDir(tmp_path)
    # APPLIANCE_GAP_ANSWER from the one .env: the replicas' vLLM port has a gap program, the kv-server none.
    server = render(plan_for({**KV_SERVER, "APPLIANCE_RUN_DIR": str(tmp_path), "APPLIANCE_GAP_ANSWER": "true"}),
                    run, "pw")
    replica = render(plan_for({**REPLICA, "APPLIANCE_RUN_DIR": str(tmp_path), "APPLIANCE_GAP_ANSWER": "true"}),
                     run, "pw")
    def programs(conf):
        return [line for line in conf.splitlines() if line.startswith(("[program:", "[eventlistener:"))]
    assert programs(server) == ["[eventlistener:logs]", "[eventlistener:on-fatal]", "[program:lmcache]",
                                "[eventlistener:watchdog]", "[program:metrics]"]
    assert programs(replica) == ["[eventlistener:logs]", "[eventlistener:on-fatal]", "[program:vllm]",
                                 "[eventlistener:watchdog]", "[program:gap]", "[program:metrics]"]


def test_the_watchdog_judges_only_what_runs_in_the_role(plan_for, tmp_path):
    from entrypoint.common.state import Recorder
    from entrypoint.programs.watchdog import Watchdog

    server = Watchdog(plan_for(KV_SERVER), rpc=None, record=Recorder(tmp_path / "a.json"))
    replica = Watchdog(plan_for(REPLICA), rpc=None, record=Recorder(tmp_path / "b.json"))
    assert [t.name for t in server.targets()] == ["lmcache"]
    assert [t.name for t in replica.targets()] == ["vllm"]


def test_the_launcher_waits_for_the_external_server(plan_for):
    from entrypoint.programs.launch import lmcache_wait_url

    assert lmcache_wait_url(plan_for(REPLICA)) == ("http://kv-server:8080/healthcheck",
                                                   "the LMCache server tcp://kv-server:5555 (LMCACHE_SERVER)")
    assert lmcache_wait_url(plan_for(BASE)) == ("http://127.0.0.1:8080/healthcheck", "the LMCache server")
