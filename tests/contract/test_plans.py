"""Every plan of the matrix (cases.py) and every env/*.env example, read by the installed (pinned) vLLM serve
parser and by LMCache's own server parser and config class. A flag either rejects fails here."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest

from entrypoint.config.load import make_plan

from .cases import CASES, Case
from .parsers import (
    connector_extra_config_keys,
    load_lmcache_config,
    parse_lmcache_server_argv,
    parse_serve_argv,
    registered_kv_connectors,
    unknown_lmcache_keys,
)

REPO = Path(__file__).resolve().parents[2]
ENV_FILES = sorted((REPO / "env").glob("*.env"))
GIB = 1 << 30


def build(case: Case):
    plan = make_plan(None, list(case.overrides), dict(case.env))
    assert plan.errors == [], f"the plan itself is invalid: {plan.errors}"
    assert plan.lmcache.mode == case.mode
    return plan


def by_mode(mode):
    return [pytest.param(c, id=c.id) for c in CASES if c.mode == mode]


def attr(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


# -- checks that follow from the plan alone (cases and env files) ---------------------------------------

def check_vllm_follows_plan(plan, parsed) -> None:
    args, engine = parsed.args, parsed.engine_args
    assert engine.model == plan.model
    assert (args.host, args.port) == plan.vllm_address  # the API's, or loopback behind the front proxy
    assert args.shutdown_timeout == plan.appliance.shutdown_timeout
    assert engine.tensor_parallel_size == plan.values["VLLM_TENSOR_PARALLEL_SIZE"]
    if "VLLM_MAX_MODEL_LEN" in plan.values:
        assert engine.max_model_len == plan.values["VLLM_MAX_MODEL_LEN"]
    if "VLLM_SERVED_MODEL_NAME" in plan.values:
        assert engine.served_model_name[0] == plan.served_model_name  # vLLM answers to the first name
    else:
        assert engine.served_model_name is None and plan.served_model_name == plan.model
    kv = engine.kv_transfer_config
    if plan.lmcache.mode in ("server", "in-process"):
        expected = {"server": "LMCacheMPConnector", "in-process": "LMCacheConnectorV1"}[plan.lmcache.mode]
        assert kv.kv_connector == expected and kv.kv_role == "kv_both"
        assert kv.kv_connector in registered_kv_connectors()
        assert engine.kv_offloading_size is None  # the connector is explicit, vLLM's own offloading is off
    else:
        assert kv is None
    if plan.lmcache.mode == "server":
        unread = set(kv.kv_connector_extra_config) - connector_extra_config_keys()
        assert not unread, f"keys the LMCache MP connector never reads: {sorted(unread)}"
    if plan.lmcache.mode == "in-process":
        assert plan.vllm.env["LMCACHE_CONFIG_FILE"] == plan.lmcache.config_file
        assert plan.vllm.env.get("PYTHONHASHSEED")
    if plan.lmcache.mode == "native":
        assert engine.kv_offloading_backend == "native"
        assert engine.kv_offloading_size == plan.tiers.cpu_tier_gib
    if plan.lmcache.mode is None:
        assert engine.kv_offloading_size is None


def check_server_follows_plan(plan, server, parsed_vllm) -> None:
    """The LMCache server the plan starts is the one vLLM's connector talks to, sized as the plan says."""
    from lmcache.v1.distributed.l2_adapters.config import get_l2_adapter_config_class

    extra = parsed_vllm.engine_args.kv_transfer_config.kv_connector_extra_config
    assert urlsplit(extra["lmcache.mp.host"]).scheme == "tcp"
    assert urlsplit(extra["lmcache.mp.host"]).hostname == server.mp.host
    assert int(extra["lmcache.mp.port"]) == server.mp.port
    assert plan.lmcache.health_url == f"http://{server.http.http_host}:{server.http.http_port}/healthcheck"
    storage = server.storage
    assert storage.l1_manager_config.memory_config.size_in_bytes == int(plan.tiers.cpu_tier_gib * GIB)
    assert server.mp.chunk_size == plan.values["LMCACHE_CHUNK_SIZE"]
    assert storage.eviction_config.eviction_policy == plan.values["LMCACHE_EVICTION_POLICY"]
    adapters = storage.l2_adapter_config.adapters
    if plan.lmcache.shared_store:  # the shared store comes last: the local disk tier is looked up first
        check_shared_adapter(plan, adapters.pop())
    if plan.lmcache.disk is None:
        assert adapters == []
        return
    assert len(adapters) == 1
    adapter = adapters[0]
    assert isinstance(adapter, get_l2_adapter_config_class("fs_native"))
    assert adapter.base_path == plan.lmcache.disk.path
    assert adapter.max_capacity_gb == plan.lmcache.disk.max_size_gib
    # Without an eviction config LMCache never evicts from L2 and the disk tier grows past its cap.
    assert adapter.eviction_config is not None
    assert adapter.eviction_config.eviction_policy == "LRU"


def check_shared_adapter(plan, adapter) -> None:
    """LMCACHE_SHARED_*: LMCache's own resp adapter config, marked shared, with no password in it."""
    from lmcache.v1.distributed.l2_adapters.config import get_l2_adapter_config_class

    assert isinstance(adapter, get_l2_adapter_config_class("resp"))
    store = plan.lmcache.shared_store
    assert (adapter.host, adapter.port, adapter.username) == (store.host, store.port, store.username)
    assert adapter.shared is True
    assert adapter.password == ""  # LMCache takes it from LMCACHE_RESP_PASSWORD in its environment
    cap = plan.values.get("LMCACHE_SHARED_MAX_SIZE")
    assert adapter.max_capacity_gb == (cap or 0)
    assert (adapter.eviction_config is not None) == (cap is not None)


def check_in_process_follows_plan(plan, loaded) -> None:
    config = plan.lmcache.config
    assert unknown_lmcache_keys(config) == [], "LMCache would only warn about these keys and drop them"
    assert set(config) <= loaded._user_set_keys  # LMCache took every key as set by us
    tp = plan.values["VLLM_TENSOR_PARALLEL_SIZE"]
    assert loaded.chunk_size == plan.values["LMCACHE_CHUNK_SIZE"]
    assert loaded.max_local_cpu_size == pytest.approx(plan.tiers.cpu_tier_gib / tp, abs=1e-3)
    if plan.lmcache.disk:
        assert loaded.local_disk == plan.lmcache.disk.path + "/"  # LMCache strips file://
        assert loaded.max_local_disk_size == pytest.approx(plan.lmcache.disk.max_size_gib / tp, abs=1e-3)
    else:
        assert loaded.local_disk is None
    # Stable chunk hashes across processes: LMCache looks this name up in vLLM's hash registry.
    assert loaded.pre_caching_hash_algorithm == "sha256_cbor"
    from vllm.utils.hashing import get_hash_fn_by_name

    assert callable(get_hash_fn_by_name(loaded.pre_caching_hash_algorithm))
    for key, value in config.items():  # a value LMCache cannot convert silently becomes None
        got = getattr(loaded, key)
        assert got is not None, f"LMCache dropped {key}={value!r}"
        if key != "local_disk":
            assert got == value, f"{key}: plan {value!r}, LMCache {got!r}"


# -- the matrix ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_vllm_serve_parser_accepts_the_plan(case, serve_parser):
    plan = build(case)
    parsed = parse_serve_argv(serve_parser, plan.vllm.argv)
    wrong = [f"{name}: plan meant {expected!r}, vLLM parsed {attr(parsed.args, name)!r}"
             for name, expected in case.vllm.items() if attr(parsed.args, name) != expected]
    assert not wrong, "\n".join(wrong + [f"argv: {plan.vllm.argv}"])
    check_vllm_follows_plan(plan, parsed)


@pytest.mark.parametrize("case", by_mode("server"))
def test_lmcache_server_parser_accepts_the_plan(case, lmcache_parser, serve_parser):
    plan = build(case)
    server = parse_lmcache_server_argv(lmcache_parser, plan.lmcache.argv)
    want = case.lmcache
    adapters = server.storage.l2_adapter_config.adapters
    got = {"l1 bytes": server.storage.l1_manager_config.memory_config.size_in_bytes,
           "chunk": server.mp.chunk_size, "zmq": (server.mp.host, server.mp.port),
           "http": (server.http.http_host, server.http.http_port),
           "eviction": server.storage.eviction_config.eviction_policy,
           "disk cap GiB": next((a.max_capacity_gb for a in adapters if not a.shared), None),
           **{f"mp.{k}": getattr(server.mp, k) for k in want.get("mp", {})}}
    if "prefetch_policy" in want:
        got["prefetch policy"] = server.storage.prefetch_policy
    vllm_extra = parse_serve_argv(serve_parser, plan.vllm.argv).engine_args.kv_transfer_config.kv_connector_extra_config
    got.update({f"connector {k}": vllm_extra.get(k) for k in want.get("connector", {})})
    meant = {"l1 bytes": int(want["l1_gib"] * GIB), "chunk": want["chunk"], "zmq": ("127.0.0.1", want["port"]),
             "http": ("127.0.0.1", want["http_port"]), "eviction": want["eviction"],
             "disk cap GiB": want["disk_gib"], **{f"mp.{k}": v for k, v in want.get("mp", {}).items()},
             **({"prefetch policy": want["prefetch_policy"]} if "prefetch_policy" in want else {}),
             **{f"connector {k}": v for k, v in want.get("connector", {}).items()}}
    wrong = [f"{k}: plan meant {meant[k]!r}, LMCache parsed {got[k]!r}" for k in meant if got[k] != meant[k]]
    assert not wrong, "\n".join(wrong + [f"argv: {plan.lmcache.argv}"])
    check_server_follows_plan(plan, server, parse_serve_argv(serve_parser, plan.vllm.argv))


@pytest.mark.parametrize("case", by_mode("in-process"))
def test_lmcache_config_class_accepts_the_in_process_config(case, stack, tmp_path):
    plan = build(case)
    loaded = load_lmcache_config(plan.lmcache.config, tmp_path)
    want = case.lmcache
    assert loaded.chunk_size == want["chunk"]
    assert loaded.local_cpu is want["local_cpu"]
    assert loaded.max_local_cpu_size == want["cpu_per_worker"]
    if want["disk_per_worker"] is None:
        assert loaded.local_disk is None
    else:
        assert loaded.max_local_disk_size == want["disk_per_worker"]
    for key, expected in want.get("keys", {}).items():
        assert getattr(loaded, key) == expected
    check_in_process_follows_plan(plan, loaded)


# -- the shipped examples --------------------------------------------------------------------------------

@pytest.mark.parametrize("env_file", ENV_FILES, ids=[p.name for p in ENV_FILES])
def test_env_example_file(env_file, serve_parser, lmcache_parser, tmp_path):
    plan = make_plan(str(env_file), [], {})
    assert plan.errors == [], f"{env_file.name}: {plan.errors}"
    parsed = parse_serve_argv(serve_parser, plan.vllm.argv)
    check_vllm_follows_plan(plan, parsed)
    if plan.lmcache.mode == "server":
        check_server_follows_plan(plan, parse_lmcache_server_argv(lmcache_parser, plan.lmcache.argv), parsed)
    elif plan.lmcache.mode == "in-process":
        check_in_process_follows_plan(plan, load_lmcache_config(plan.lmcache.config, tmp_path))
