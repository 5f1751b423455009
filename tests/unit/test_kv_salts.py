"""The salts that keep KV apart in LMCache's keys (lmcache_ext/salt.py: KV identity, LoRA adapter, the request's
own salt) and in vLLM's prefix cache too (vllm_ext/tenant_salt.py: one tenant per API key)."""
from __future__ import annotations

import asyncio
import json
import os
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from entrypoint.lmcache_ext.salt import request_salt
from entrypoint.vllm_ext.tenant_salt import TenantSaltMiddleware, tenant_salt

FORBIDDEN = set("@/\\\x00")  # LMCache's ObjectKey refuses these in a salt, and more than 128 characters


def lora(name, path):
    return SimpleNamespace(lora_name=name, lora_int_id=1, lora_path=str(path))


def test_base_model_requests_share_one_readable_salt():
    assert request_salt("0123456789abcdef") == "kv-0123456789abcdef"
    assert request_salt("0123456789abcdef", None, "") == "kv-0123456789abcdef"


def test_adapters_base_model_and_identities_never_share(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_model.safetensors").write_bytes(name.encode() * 10)
    salts = {request_salt("id1"), request_salt("id2"), request_salt("id1", lora("a", tmp_path / "a")),
             request_salt("id1", lora("b", tmp_path / "b")), request_salt("id2", lora("a", tmp_path / "a")),
             request_salt("id1", None, "user-salt")}
    assert len(salts) == 6


def test_an_adapter_reloaded_in_place_is_another_adapter(tmp_path):
    (tmp_path / "adapter_model.safetensors").write_bytes(b"x" * 10)
    before = request_salt("id", lora("a", tmp_path))
    assert request_salt("id", lora("a", tmp_path)) == before
    st_ = (tmp_path / "adapter_model.safetensors").stat()
    os.utime(tmp_path / "adapter_model.safetensors", ns=(st_.st_atime_ns, st_.st_mtime_ns + 1000))
    assert request_salt("id", lora("a", tmp_path)) != before


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789abcdef", min_size=16, max_size=16), st.text(), st.text(), st.text())
def test_any_input_gives_a_salt_lmcache_accepts(identity, name, path, own):
    salt = request_salt(identity, lora(name, path), own)
    assert len(salt) <= 128 and not FORBIDDEN & set(salt)
    assert tenant_salt(own, name).startswith("t-") and not FORBIDDEN & set(tenant_salt(own, name))


def _through(middleware_app, body: bytes, headers=(), path="/v1/completions", method="POST", chunks=1):
    """Send one request through the middleware to an app that records what it received."""
    seen = {}

    async def app(scope, receive, send):
        parts, more = [], True
        while more:
            message = await receive()
            parts.append(message.get("body", b""))
            more = message.get("more_body", False)
        seen["body"], seen["headers"] = b"".join(parts), dict(scope["headers"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    pieces = [body[len(body) * i // chunks:len(body) * (i + 1) // chunks] for i in range(chunks)]
    messages = [{"type": "http.request", "body": p, "more_body": i < len(pieces) - 1} for i, p in enumerate(pieces)]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "root_path": "",
             "headers": [(b"content-length", str(len(body)).encode()), *headers]}
    asyncio.run(middleware_app(app)(scope, receive, send))
    assert sent[0]["status"] == 200
    return seen


def _salt_of(seen) -> str | None:
    return json.loads(seen["body"]).get("cache_salt")


def test_each_api_key_is_a_tenant_with_its_own_salt():
    body = json.dumps({"model": "m", "prompt": "hello"}).encode()
    a1 = _through(TenantSaltMiddleware, body, [(b"authorization", b"Bearer key-a")], chunks=3)
    a2 = _through(TenantSaltMiddleware, body, [(b"authorization", b"bearer key-a")])
    b = _through(TenantSaltMiddleware, body, [(b"authorization", b"Bearer key-b")], path="/v1/chat/completions")
    assert _salt_of(a1) == _salt_of(a2) == tenant_salt("key-a") != _salt_of(b)
    assert "key-a" not in a1["body"].decode()  # the salt is a hash, never the key
    assert a1["headers"][b"content-length"] == str(len(a1["body"])).encode()
    assert json.loads(a1["body"])["prompt"] == "hello"


def test_a_clients_own_salt_stays_inside_its_tenant():
    with_salt = json.dumps({"prompt": "p", "cache_salt": "mine"}).encode()
    a = _through(TenantSaltMiddleware, with_salt, [(b"authorization", b"Bearer key-a")])
    b = _through(TenantSaltMiddleware, with_salt, [(b"authorization", b"Bearer key-b")])
    plain = _through(TenantSaltMiddleware, b'{"prompt": "p"}', [(b"authorization", b"Bearer key-a")])
    assert len({_salt_of(a), _salt_of(b), _salt_of(plain)}) == 3


def test_what_it_does_not_salt_passes_unchanged():
    auth = [(b"authorization", b"Bearer key-a")]
    for body, headers, path, method in ((b"not json", auth, "/v1/completions", "POST"),
                                        (b"[1, 2]", auth, "/v1/completions", "POST"),
                                        (b'{"prompt": "p"}', [], "/v1/completions", "POST"),  # vLLM refuses it
                                        (b'{"prompt": "p"}', [(b"authorization", b"Basic a2V5")], "/v1/completions",
                                         "POST"),
                                        (b'{"prompt": "p"}', auth, "/tokenize", "POST"),
                                        (b"", auth, "/v1/completions", "GET")):
        seen = _through(TenantSaltMiddleware, body, headers, path=path, method=method)
        assert seen["body"] == body
