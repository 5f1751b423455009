"""The shared KV tier (LMCACHE_SHARED_*) as the installed LMCache reads it: the resp adapter's config class, with
the password only in the environment (server mode; in-process mode refuses a shared store). The plan matrix
(cases.py) checks the rest of the argv around it."""
from __future__ import annotations

import json

import pytest

from entrypoint.config.load import make_plan

from .parsers import parse_lmcache_server_argv

MODEL = "facebook/opt-125m"
BASE = {"VLLM_MODEL": MODEL, "VLLM_KV_OFFLOADING_BACKEND": "lmcache", "VLLM_KV_OFFLOADING_SIZE": "5"}
PASSWORD = "pw-that-must-not-leak-7"


def _resp_adapters(plan) -> list[dict]:
    argv = plan.lmcache.argv
    specs = [json.loads(argv[i + 1]) for i, a in enumerate(argv) if a == "--l2-adapter"]
    return [s for s in specs if s["type"] == "resp"]


def test_password_is_only_in_the_lmcache_servers_environment(lmcache_parser):
    plan = make_plan(None, [], {**BASE, "LMCACHE_SHARED_URL": "redis://kv-store:6379",
                                "LMCACHE_SHARED_PASSWORD": PASSWORD})
    assert plan.errors == []
    assert plan.lmcache.env["LMCACHE_RESP_PASSWORD"] == PASSWORD
    assert "LMCACHE_RESP_PASSWORD" not in plan.vllm.env and "LMCACHE_SHARED_PASSWORD" not in plan.vllm.env
    assert "LMCACHE_SHARED_PASSWORD" in plan.vllm.env_removed
    assert PASSWORD not in " ".join(plan.lmcache.argv + plan.vllm.argv)
    assert PASSWORD not in json.dumps(plan.to_dict())
    server = parse_lmcache_server_argv(lmcache_parser, plan.lmcache.argv)
    (adapter,) = [a for a in server.storage.l2_adapter_config.adapters if a.shared]
    assert adapter.password == ""


def test_lmcache_resp_factory_takes_the_password_from_the_environment(monkeypatch, lmcache_parser):
    """What LMCache 0.5.6's factory hands its native client: config first, LMCACHE_RESP_PASSWORD as the
    fallback (resp_l2_adapter._create_resp_l2_adapter). The client class is replaced to see the arguments
    without connecting."""
    import lmcache.lmcache_redis as native
    from lmcache.v1.distributed.l2_adapters import resp_l2_adapter

    seen = {}

    class Client:
        def __init__(self, *args):
            seen["args"] = args

    monkeypatch.setattr(native, "LMCacheRedisClient", Client)
    monkeypatch.setattr("lmcache.v1.distributed.l2_adapters.native_connector_l2_adapter.NativeConnectorL2Adapter",
                        lambda client, **kw: ("adapter", client, kw))
    plan = make_plan(None, [], {**BASE, "LMCACHE_SHARED_URL": "redis://kv-store:6390",
                                "LMCACHE_SHARED_USERNAME": "replica", "LMCACHE_SHARED_PASSWORD": PASSWORD,
                                "LMCACHE_SHARED_MAX_SIZE": "8"})
    server = parse_lmcache_server_argv(lmcache_parser, plan.lmcache.argv)
    (config,) = [a for a in server.storage.l2_adapter_config.adapters if a.shared]
    for name, value in plan.lmcache.env.items():
        monkeypatch.setenv(name, value)
    _, _, kw = resp_l2_adapter._create_resp_l2_adapter(config)
    assert seen["args"] == ("kv-store", 6390, 8, "replica", PASSWORD)
    assert kw == {"max_capacity_gb": 8.0}


@pytest.mark.parametrize("url, host, port", [
    ("redis://KV-Store:6379", "kv-store", 6379), ("redis://10.1.2.3", "10.1.2.3", 6379),
    ("valkey://[fd00::7]:7000/0", "fd00::7", 7000)])
def test_url_forms_reach_lmcache_as_host_and_port(lmcache_parser, url, host, port):
    plan = make_plan(None, [], {**BASE, "LMCACHE_SHARED_URL": url})
    assert plan.errors == []
    server = parse_lmcache_server_argv(lmcache_parser, plan.lmcache.argv)
    (adapter,) = server.storage.l2_adapter_config.adapters
    assert (adapter.host, adapter.port, adapter.shared) == (host, port, True)
    assert _resp_adapters(plan) == [{"type": "resp", "host": host, "port": port, "shared": True}]


