"""The coordinator router asks LMCache's coordinator with the cache salt each replica's connector gives a
request's chunks (its KV identity, the tenant's salt, the request's own), read from the replica's
GET /appliance/kv-identity; without it the lookups would find nothing once chunks carry the identity."""
from __future__ import annotations

import asyncio
import json

import pytest

from entrypoint.cluster import router as router_mod
from entrypoint.config.settings import parse_http_url, parse_router_replicas
from entrypoint.lmcache_ext.salt import request_salt
from entrypoint.vllm_ext.identity import PATH, KvIdentityMiddleware, announcement
from entrypoint.vllm_ext.tenant_salt import tenant_salt

IDENTITY = "0123456789abcdef"


@pytest.fixture
def router(monkeypatch):
    """A Router whose HTTP calls are answered here: /appliance/kv-identity, /tokenize, /v1/models, and the
    coordinator's /directory/lookup (its body recorded)."""
    calls = {"lookups": [], "identity": {"kv_identity": IDENTITY, "tenant_isolation": False}, "asked": 0}

    def call_json(base, path, payload=None, headers=None, timeout=5.0):
        if path == PATH:
            calls["asked"] += 1
            return (200, calls["identity"]) if calls["identity"] is not None else (404, None)
        if path == "/tokenize":
            return 200, {"tokens": list(range(600))}
        if path == "/v1/models":
            return 200, {"data": [{"id": "m", "root": "/models/m"}]}
        if path == "/directory/lookup":
            calls["lookups"].append(payload)
            return 200, {"chunks": 2, "results": []}
        raise AssertionError(path)

    monkeypatch.setattr(router_mod, "call_json", call_json)
    config = router_mod.RouterConfig(coordinator=parse_http_url("http://coordinator:9300"),
                                     replicas=tuple(parse_router_replicas("http://replica-0:8000")))
    r = router_mod.Router(config, log=lambda *a, **k: None)
    for replica in r.replicas:
        replica.healthy = True
    return r, calls


def locate(r, body: dict, headers=None):
    r.locate("/v1/completions", json.dumps(body).encode(), headers or {})


def test_the_lookup_carries_the_replicas_identity_salt(router):
    r, calls = router
    locate(r, {"model": "m", "prompt": "hello"})
    locate(r, {"model": "m", "prompt": "hello", "cache_salt": "mine"})
    assert [c["cache_salt"] for c in calls["lookups"]] == [request_salt(IDENTITY), request_salt(IDENTITY, None, "mine")]
    assert calls["lookups"][0]["cache_salt"] == f"kv-{IDENTITY}"  # what the connector gives a base-model request
    assert calls["asked"] == 1  # the identity is kept, not asked per request


def test_tenants_are_looked_up_under_their_own_salt(router):
    r, calls = router
    calls["identity"] = {"kv_identity": IDENTITY, "tenant_isolation": True}
    locate(r, {"model": "m", "prompt": "p"}, {"Authorization": "Bearer key-a"})
    locate(r, {"model": "m", "prompt": "p", "cache_salt": "s"}, {"Authorization": "Bearer key-b"})
    # what the tenant middleware sets, then what the connector makes of it
    assert [c["cache_salt"] for c in calls["lookups"]] == [
        request_salt(IDENTITY, None, tenant_salt("key-a")), request_salt(IDENTITY, None, tenant_salt("key-b", "s"))]


def test_a_replica_without_the_endpoint_is_looked_up_with_lmcaches_plain_salt(router):
    r, calls = router
    calls["identity"] = None
    locate(r, {"model": "m", "prompt": "p"})
    locate(r, {"model": "m", "prompt": "p", "cache_salt": "x"})
    assert [c["cache_salt"] for c in calls["lookups"]] == ["", "x"]


def test_the_endpoint_answers_what_the_plan_put_in_vllms_environment(monkeypatch):
    monkeypatch.setenv("APPLIANCE_KV_IDENTITY", IDENTITY)
    monkeypatch.setenv("APPLIANCE_TENANT_SALT", "1")
    assert announcement() == {"kv_identity": IDENTITY, "tenant_isolation": True}
    sent, passed = [], []

    async def app(scope, receive, send):
        passed.append(scope["path"])

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b""}

    middleware = KvIdentityMiddleware(app)
    for path, method in ((PATH, "GET"), ("/v1/models", "GET"), (PATH, "POST")):
        asyncio.run(middleware({"type": "http", "path": path, "method": method, "headers": []}, receive, send))
    assert sent[0]["status"] == 200 and json.loads(sent[1]["body"]) == announcement()
    assert passed == ["/v1/models", PATH]  # anything else goes on to vLLM
