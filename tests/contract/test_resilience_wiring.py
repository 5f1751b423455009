"""The resilience wiring (docs/RESILIENCE.md) against the real vLLM and LMCache:

- vLLM's own API socket (launchers/launcher.py: setup_server, the single-API-server path `vllm serve` takes)
  shares the port with the gap program only through reuse_port.py;
- the connector settings that bound the wait on a dead LMCache server are ones vLLM and LMCache read, with
  the values the plan gives them;
- the disk tier's L2 eviction block is parsed by LMCache's own adapter config.
"""
from __future__ import annotations

import json
import socket

import pytest

from entrypoint.config import kv_tiers
from entrypoint.config.load import make_plan
from entrypoint.runtime import reuse_port
from entrypoint.runtime.gap import Gap

from .parsers import parse_lmcache_server_argv, parse_serve_argv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def plan_on_port(local_model):
    def make(port: int, **env):
        plan = make_plan(None, [], {"VLLM_MODEL": local_model, "VLLM_HOST": "127.0.0.1", "VLLM_PORT": str(port),
                                    "VLLM_MAX_MODEL_LEN": "4096", **env})
        assert plan.errors == [], plan.errors
        return plan
    return make


def test_vllm_single_api_server_socket_shares_the_port_only_through_reuse_port(serve_parser, plan_on_port,
                                                                              monkeypatch):
    from vllm.entrypoints.launchers.launcher import setup_server

    port = free_port()
    plan = plan_on_port(port)
    assert plan.appliance["APPLIANCE_GAP_ANSWER"] is True  # the default
    args = parse_serve_argv(serve_parser, plan.vllm_argv).args
    assert (args.api_server_count or 1) == 1 and not args.headless  # `vllm serve` runs run_server (one API server)
    gap = Gap("127.0.0.1", port, 5)
    assert gap.hold()
    try:
        # As vLLM 0.32 starts one API server (api_server/entry.py: run_server): reuse_port=False. It cannot
        # bind the port the gap program listens on.
        with pytest.raises(OSError):
            setup_server(args, reuse_port=False)
        # Through reuse_port.py (what the launcher runs), the same call binds next to the gap program.
        monkeypatch.setattr(socket.socket, "bind", socket.socket.bind)  # restored after the test
        reuse_port.patch_bind(port)
        _address, sock = setup_server(args, reuse_port=False)
        try:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
            assert not gap.others_listen(), "bound is not listening: while vLLM loads, the gap answers"
            sock.listen(16)  # what uvicorn does once vLLM serves
            assert gap.others_listen()
            gap.step()
            assert gap.sock is None, "the gap program lets go once vLLM listens"
        finally:
            sock.close()
    finally:
        if gap.sock is not None:
            gap.sock.close()


def test_the_connector_settings_that_bound_the_wait_are_read_by_vllm_and_lmcache(serve_parser, plan_on_port):
    from lmcache.integration.vllm.vllm_multi_process_adapter import ExtraConfigDefault, _resolve_extra_config

    plan = plan_on_port(free_port())
    kv = parse_serve_argv(serve_parser, plan.vllm_argv).engine_args.kv_transfer_config
    # vLLM: a failed KV load is recomputed (scheduler.py recompute_kv_load_failures), not an error.
    assert kv.kv_load_failure_policy == "recompute"
    # LMCache's connector resolves its extra config as it will at start (keys, types, values).
    resolved = _resolve_extra_config(kv.kv_connector_extra_config)
    assert resolved[ExtraConfigDefault.heartbeat_interval.name] == kv_tiers.LMCACHE_HEARTBEAT_S
    assert resolved[ExtraConfigDefault.mq_timeout.name] == kv_tiers.LMCACHE_MQ_TIMEOUT_S
    assert kv_tiers.LMCACHE_MQ_TIMEOUT_S < ExtraConfigDefault.mq_timeout.default
    assert kv_tiers.LMCACHE_HEARTBEAT_S < ExtraConfigDefault.heartbeat_interval.default
    # LMCache's own rule: the server's reap timeout must cover 3 heartbeats.
    assert 3 * kv_tiers.LMCACHE_HEARTBEAT_S <= kv_tiers.LMCACHE_REAP_S


def test_in_process_mode_recomputes_failed_loads_too(serve_parser, plan_on_port):
    plan = plan_on_port(free_port(), LMCACHE_MODE="in-process")
    kv = parse_serve_argv(serve_parser, plan.vllm_argv).engine_args.kv_transfer_config
    assert kv.kv_connector == "LMCacheConnectorV1" and kv.kv_load_failure_policy == "recompute"


def test_disk_tier_eviction_block_is_lmcaches_own(lmcache_parser, plan_on_port, tmp_path):
    plan = plan_on_port(free_port(), LMCACHE_LOCAL_DISK=str(tmp_path), LMCACHE_MAX_LOCAL_DISK_SIZE="40")
    server = parse_lmcache_server_argv(lmcache_parser, plan.lmcache_argv)
    (adapter,) = server.storage.l2_adapter_config.adapters
    assert adapter.max_capacity_gb == 40.0
    ev = adapter.eviction_config
    assert (ev.eviction_policy, ev.trigger_watermark, ev.eviction_ratio) == (
        "LRU", kv_tiers.L2_TRIGGER_WATERMARK, kv_tiers.L2_EVICTION_RATIO)
    given = json.loads(plan.lmcache_argv[plan.lmcache_argv.index("--l2-adapter") + 1])
    assert given["eviction"]["trigger_watermark"] < 1.0
