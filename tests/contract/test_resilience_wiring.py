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
from entrypoint.programs import reuse_port
from entrypoint.programs.gap import Gap

from .parsers import parse_lmcache_server_argv, parse_serve_argv
from ports import free_port


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
    plan = plan_on_port(port, APPLIANCE_GAP_ANSWER="true")
    assert plan.appliance.gap_answer is True
    args = parse_serve_argv(serve_parser, plan.vllm.argv).args
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
    from lmcache.integration.vllm.vllm_multi_process_adapter import (
        ExtraConfigDefault,
        _resolve_extra_config,
    )

    plan = plan_on_port(free_port())
    kv = parse_serve_argv(serve_parser, plan.vllm.argv).engine_args.kv_transfer_config
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
    kv = parse_serve_argv(serve_parser, plan.vllm.argv).engine_args.kv_transfer_config
    assert kv.kv_connector == "LMCacheConnectorV1" and kv.kv_load_failure_policy == "recompute"


def test_disk_tier_eviction_block_is_lmcaches_own(lmcache_parser, plan_on_port, tmp_path):
    plan = plan_on_port(free_port(), LMCACHE_LOCAL_DISK=str(tmp_path), LMCACHE_MAX_LOCAL_DISK_SIZE="40")
    server = parse_lmcache_server_argv(lmcache_parser, plan.lmcache.argv)
    (adapter,) = server.storage.l2_adapter_config.adapters
    assert adapter.max_capacity_gb == 40.0
    ev = adapter.eviction_config
    assert (ev.eviction_policy, ev.trigger_watermark, ev.eviction_ratio) == (
        "LRU", kv_tiers.L2_TRIGGER_WATERMARK, kv_tiers.L2_EVICTION_RATIO)
    given = json.loads(plan.lmcache.argv[plan.lmcache.argv.index("--l2-adapter") + 1])
    assert given["eviction"]["trigger_watermark"] < 1.0


def _store(adapter, keys, size: int) -> None:
    import os
    import time

    class Obj:  # what the adapter reads of an L1 memory object: its bytes
        def __init__(self):
            self.byte_array = memoryview(bytearray(os.urandom(size)))

    objs = [Obj() for _ in keys]  # alive until the C++ writers are done with them
    adapter.submit_store_task(keys, objs)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done = adapter.pop_completed_store_tasks()
        if done:
            assert all(r for r in done.values()), done
            return
        time.sleep(0.02)
    raise AssertionError("the store did not complete")


def _disk_bytes(path) -> int:
    from pathlib import Path
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def test_lmcache_l2_eviction_holds_its_own_files_not_those_of_an_earlier_server(lmcache_parser, plan_on_port,
                                                                               tmp_path):
    """LMCache's own fs_native adapter and L2 eviction controller, with the appliance's adapter spec, on CPU:
    what it stored it evicts at the watermark; after a restart (a new adapter on the same directory) the
    files of the earlier one are found by lookups but counted nowhere, so the tier can pass its cap; the
    watchdog's prune (common/disk_prune.py) brings it back. Why both exist: docs/RESILIENCE.md."""
    pytest.importorskip("lmcache.lmcache_fs", reason="LMCache's C++ file-system client is not built in this "
                        "install (fs_native needs it)")
    from lmcache.v1.distributed.api import ObjectKey
    from lmcache.v1.distributed.l2_adapters.fs_native_l2_adapter import (
        _create_fs_native_l2_adapter,
    )
    from lmcache.v1.distributed.storage_controllers.eviction_controller import (
        L2AdapterEvictionState,
        L2EvictionController,
    )

    from entrypoint.common import disk_prune

    mib = 1 << 20
    plan = plan_on_port(free_port(), LMCACHE_LOCAL_DISK=str(tmp_path), LMCACHE_MAX_LOCAL_DISK_SIZE="0.01")
    (config,) = parse_lmcache_server_argv(lmcache_parser, plan.lmcache.argv).storage.l2_adapter_config.adapters
    cap = int(config.max_capacity_gb * (1 << 30))
    keys = [ObjectKey(chunk_hash=i.to_bytes(8, "big"), model_name="m", kv_rank=0) for i in range(20)]

    first = _create_fs_native_l2_adapter(config)
    state = L2AdapterEvictionState(0, first, config.eviction_config)
    _store(first, keys[:9], mib)  # 9 MiB of a 10.24 MiB cap: over the 0.8 watermark
    assert first.get_usage().total_bytes_used == 9 * mib == _disk_bytes(plan.lmcache.disk.path)
    L2EvictionController([state])._check_and_evict(state)  # one pass of its once-a-second loop
    held = _disk_bytes(plan.lmcache.disk.path)
    assert held <= 0.8 * cap and first.get_usage().total_bytes_used == held  # its own files: evicted
    first.close()

    second = _create_fs_native_l2_adapter(config)  # the LMCache server restarted
    state = L2AdapterEvictionState(0, second, config.eviction_config)
    assert second.get_usage().total_bytes_used == 0 < held  # the earlier files count for nothing
    _store(second, keys[9:16], mib)
    L2EvictionController([state])._check_and_evict(state)
    assert second.get_usage().usage_fraction < config.eviction_config.trigger_watermark  # so: no eviction
    over = _disk_bytes(plan.lmcache.disk.path)
    assert over > cap, "LMCache alone lets the tier pass its cap after a restart"
    removed, _freed, _ = disk_prune.prune(disk_prune.tier_dirs(plan.lmcache.disk), cap)
    assert removed > 0 and _disk_bytes(plan.lmcache.disk.path) <= cap
    second.close()
