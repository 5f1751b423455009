"""Hot prefixes pre-warmed (entrypoint/lmcache_ext/prewarm.py) against LMCache's real classes on CPU: its
storage manager (CPU tier + the fs_native disk tier the plan configures), its event bus, its layout
registry, its warm prefetch. One server records the hot chunks; a new one, on the same disk tier, loads
them into its CPU tier once a KV layout is registered. What this cannot show (GPU): the TTFT of the first
request after a restart; bench/suite.py options (lmcache-prewarm) measures it."""
from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest

from entrypoint.config.load import make_plan

from .parsers import parse_lmcache_server_argv
from ports import free_port


def _server(lmcache_parser, plan):
    """What `lmcache server` builds from the plan's argv before its transports: the event bus, the
    context (storage manager, layout registry), and the appliance's server module through LMCache's loader."""
    from lmcache.v1.mp_observability.event_bus import EventBusConfig, init_event_bus
    from lmcache.v1.multiprocess.engine_context import MPCacheServerContext
    from lmcache.v1.multiprocess.ext_server_module import load_server_module_components

    parsed = parse_lmcache_server_argv(lmcache_parser, plan.lmcache.argv)
    bus = init_event_bus(EventBusConfig())
    bus.start()
    ctx = MPCacheServerContext(parsed.storage, chunk_size=parsed.mp.chunk_size)
    components = load_server_module_components(parsed.mp.server_modules, server_context=ctx,
                                               mp_config=parsed.mp, coordinator_config=None, built_modules=[])
    return SimpleNamespace(ctx=ctx, bus=bus, modules=list(components.modules), spec=parsed.mp.server_modules)


def _stop(server):
    for m in server.modules:
        m.close()
    server.bus.stop()
    server.ctx.close()


def _layout():
    import torch
    from lmcache.v1.distributed.api import MemoryLayoutDesc

    return MemoryLayoutDesc(shapes=[torch.Size([2, 16, 256])], dtypes=[torch.bfloat16])  # 16 KiB a chunk


def _keys(n, start=0):
    from lmcache.v1.distributed.api import ObjectKey

    rank = ObjectKey.ComputeKVRank(1, 0, 1, 0)
    return [ObjectKey(chunk_hash=i.to_bytes(32, "big"), model_name="m", kv_rank=rank) for i in range(start, start + n)]


def _store(ctx, keys):
    """A vLLM store: the chunks written into the CPU tier, then (LMCache's store controller) to disk."""
    sm = ctx.storage_manager
    objs = sm.reserve_write(keys, _layout())
    assert set(objs) == set(keys)
    sm.finish_write(keys)


def _until(what, seconds=30.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _l1_count(ctx) -> int:
    return ctx.storage_manager.report_status()["l1_manager"]["total_object_count"]


@pytest.fixture
def prewarm_plan(local_model, tmp_path):
    def make(**env):
        plan = make_plan(None, [], {"VLLM_MODEL": local_model, "LMCACHE_LOCAL_DISK": str(tmp_path / "kv"),
                                    "LMCACHE_MAX_LOCAL_DISK_SIZE": "1", "VLLM_KV_OFFLOADING_SIZE": "0.25", **env})
        assert plan.errors == [], plan.errors
        return plan
    return make


def test_lmcache_loads_the_module_from_the_planned_flag(lmcache_parser, prewarm_plan):
    plan = prewarm_plan(LMCACHE_PREWARM_SIZE="0.1")
    server = _server(lmcache_parser, plan)
    try:
        (spec,) = server.spec
        assert spec.module_path == "entrypoint.lmcache_ext.prewarm"
        (module,) = server.modules  # LMCache's loader accepted what the factory returned as an EngineModule
        status = module.report_status()["appliance_prewarm"]
        assert status["key_file"].startswith(plan.lmcache.disk.path + "/")
        assert status["max_bytes"] == int(0.1 * (1 << 30))
    finally:
        _stop(server)


def test_hot_chunks_recorded_by_one_server_are_loaded_by_the_next(lmcache_parser, prewarm_plan):
    from pathlib import Path

    plan = prewarm_plan(LMCACHE_PREWARM_SIZE="0.0002")  # ~210 KB: 13 chunks of 16 KiB
    first = _server(lmcache_parser, plan)
    cold, hot = _keys(10), _keys(10, start=100)
    def disk_files():
        return [p for p in Path(plan.lmcache.disk.path).iterdir() if p.suffix == ".data"]
    try:
        _store(first.ctx, cold)
        # LMCache's disk writes read the chunks from the CPU tier (a use): let the cold ones finish first
        _until(lambda: len(disk_files()) == 10)
        _until(lambda: first.bus.queue_depth() == 0)
        _store(first.ctx, hot)  # the most recent: these are the ones kept under the bound
        _until(lambda: len(disk_files()) == 20)  # LMCache's store controller wrote every chunk to the disk tier
        _until(lambda: first.bus.queue_depth() == 0)  # and the module has seen the CPU tier's events
    finally:
        _stop(first)  # close() records
    key_file = Path(first.modules[0].report_status()["appliance_prewarm"]["key_file"])
    rows = json.loads(key_file.read_text())["keys"]
    recorded = [bytes.fromhex(r[4]) for r in rows]
    assert len(rows) == 13 and sum(r[5] for r in rows) <= int(0.0002 * (1 << 30))
    assert recorded[:10] == [k.chunk_hash for k in hot]  # most recent first, each prefix head first
    assert recorded[10:] == [k.chunk_hash for k in cold[:3]]

    second = _server(lmcache_parser, plan)  # a restart: an empty CPU tier, the same disk tier
    try:
        module = second.modules[0]
        assert _l1_count(second.ctx) == 0
        seen = module.rounds
        _until(lambda: module.rounds >= seen + 2)  # two looks at the layout registry
        assert module.report_status()["appliance_prewarm"]["state"] == "waiting"  # no layout yet: no load
        second.ctx.layout_desc_registry.register("m", 1, _layout())  # what vLLM's KV registration does
        status = _until(lambda: (s := module.report_status()["appliance_prewarm"])["state"] == "done" and s)
        assert (status["loaded_chunks"], status["asked_chunks"]) == (13, 13)
        assert _l1_count(second.ctx) == 13
        l1 = second.ctx.storage_manager
        resident = [k for k in hot + cold[:3] if l1._l1_manager.get_object_state(k) is not None]
        assert len(resident) == 13  # exactly the recorded chunks, now in the CPU tier
    finally:
        _stop(second)


BAD_ROWS = (b'{"format": "appliance-prewarm/1", "keys": [["m", 1, 0, "", "zz", 5], 7, null, '
            b'["m@x", 16777472, 0, "", "00", 5], ["m", -1, 0, "", "00", 5]]}')  # each row wrong in its own way


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b'{"format": "other", "keys": []}', BAD_ROWS,
                                     bytes(range(256))])
def test_a_corrupt_or_foreign_key_file_never_stops_the_server(lmcache_parser, prewarm_plan, content):
    from pathlib import Path

    plan = prewarm_plan(LMCACHE_PREWARM_SIZE="0.1")
    Path(plan.lmcache.disk.path).mkdir(parents=True, exist_ok=True)
    spec = json.loads(plan.lmcache.argv[plan.lmcache.argv.index("--server-module") + 1])
    Path(spec["config"]["key_file"]).write_bytes(content)
    server = _server(lmcache_parser, plan)
    try:
        (module,) = server.modules
        assert module.report_status()["appliance_prewarm"]["state"] == "nothing to load"
        _store(server.ctx, _keys(3))
        _until(lambda: module.report_status() and server.bus.queue_depth() == 0 and module._hot.generation)
        module.record()  # and the next record replaces the bad file with a good one
        assert len(json.loads(Path(spec["config"]["key_file"]).read_text())["keys"]) == 3
    finally:
        _stop(server)


def test_a_bad_module_config_is_a_log_line_not_a_dead_server(lmcache_parser, prewarm_plan):
    from entrypoint.lmcache_ext import prewarm

    for config in ({}, {"key_file": "/x", "max_bytes": "lots"}, {"key_file": "/x", "max_bytes": -1}):
        assert prewarm.build_server_modules(SimpleNamespace(config=config, server_context=None)) is None


@pytest.mark.parametrize("key_file", ["recorded", "corrupt"])
def test_the_real_lmcache_server_loads_the_module_reads_the_key_file_and_keeps_it(stack, prewarm_plan, tmp_path,
                                                                                  key_file):
    """`lmcache server` itself, started on CPU with the plan's argv: it imports the module from the
    `--server-module` flag, reads the key file, reports it in its own /status, waits for a KV registration
    (none comes: no vLLM here), and on SIGTERM stops cleanly without overwriting the record with an
    empty one (a restart before vLLM registered forgets nothing)."""
    import os
    import signal
    import subprocess
    import sys
    import urllib.request
    from pathlib import Path

    from entrypoint.lmcache_ext import prewarm

    http = free_port()
    plan = prewarm_plan(LMCACHE_PREWARM_SIZE="0.1", APPLIANCE_LMCACHE_PORT=str(free_port()),
                        APPLIANCE_LMCACHE_HTTP_PORT=str(http), APPLIANCE_LMCACHE_METRICS_PORT=str(free_port()),
                        APPLIANCE_LMCACHE_COMMAND=f"{sys.executable} -m lmcache.cli.main")
    spec = json.loads(plan.lmcache.argv[plan.lmcache.argv.index("--server-module") + 1])
    path = Path(spec["config"]["key_file"])
    path.parent.mkdir(parents=True)
    if key_file == "recorded":
        prewarm.write_key_file(path, [(k, 16384) for k in _keys(3)])
    else:
        path.write_bytes(b'{"format": "appliance-prewarm/1", "keys": [1, 2')
    before = path.read_bytes()
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    with open(tmp_path / "lmcache.log", "w") as log:
        server = subprocess.Popen(plan.lmcache.argv, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        def status():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/status", timeout=2) as r:
                    return json.load(r)
            except OSError:
                assert server.poll() is None, (tmp_path / "lmcache.log").read_text()[-3000:]
                return None
        mine = _until(status, seconds=120)["appliance_prewarm"]
        assert mine["key_file"] == str(path)
        expected = ("waiting", 3) if key_file == "recorded" else ("nothing to load", 0)
        assert (mine["state"], mine["to_load"]) == expected
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) is not None
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    text = (tmp_path / "lmcache.log").read_text()
    if key_file == "recorded":
        assert f"{path}: 3 chunks" in text
    else:
        assert "unreadable" in text and "Traceback" not in text
    assert path.read_bytes() == before  # nothing new in the CPU tier: the record is left as it was
