"""Tenants' KV caches kept apart (APPLIANCE_TENANT_ISOLATION): each API key is a tenant, and every generation
request gets a `cache_salt` derived from the key it was sent with.

vLLM makes `cache_salt` part of its own prefix-cache hash and LMCache part of each chunk's key, so a tenant's
prompts are hits only for requests sent with the same key: nobody can learn from time-to-first-token whether
another tenant sent a prompt (vLLM's prefix cache and every offloaded tier alike). A salt the client sent is
kept inside the tenant's (two salts of one tenant still differ). The salt is a hash: the key never leaves this
process, and the salt cannot be turned back into it.

A pure ASGI middleware added by `vllm serve --middleware`: it reads the JSON body of the generation endpoints,
sets `cache_salt`, and hands the rewritten body on. A body that is not a JSON object passes unchanged (vLLM
answers it with its own 400); requests without a bearer token pass unchanged (vLLM's key check, behind this,
refuses them).
"""
from __future__ import annotations

import hashlib
import json

from .asgi import App, Message, Receive, Scope, Send

# The endpoints whose requests accept vLLM's `cache_salt` and compute KV for a prompt.
SALTED_PATHS = frozenset({"/v1/completions", "/v1/chat/completions", "/v1/responses", "/v1/messages"})
MAX_BODY = 64 << 20  # a body past this is passed on unread (vLLM's own limits answer it)


def tenant_salt(api_key: str, own_salt: object = None) -> str:
    """`t-<hash of key>`, or `t-<hash of key and the client's salt>`; <= 128 characters, no `@ / \\`."""
    digest = hashlib.sha256(b"appliance-tenant\0" + api_key.encode("utf-8", "surrogatepass"))
    if isinstance(own_salt, str) and own_salt:
        digest.update(b"\0" + own_salt.encode("utf-8", "surrogatepass"))
    return "t-" + digest.hexdigest()[:32]


def bearer_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() != "bearer":
                return None
            return token.strip() or None
    return None


def salted_body(body: bytes, api_key: str) -> bytes | None:
    """The body with the tenant's cache_salt, or None where it is not a JSON object (left to vLLM)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    data["cache_salt"] = tenant_salt(api_key, data.get("cache_salt"))
    return json.dumps(data).encode()


class TenantSaltMiddleware:
    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope.get("method") != "POST"
                or scope.get("path", "").removeprefix(scope.get("root_path", "")) not in SALTED_PATHS):
            return await self.app(scope, receive, send)
        token = bearer_token(scope.get("headers", []))
        if token is None:
            return await self.app(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left: nothing to answer
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > MAX_BODY:
                break
        body = b"".join(chunks)
        salted = salted_body(body, token) if not more else None
        if salted is not None:
            body = salted
            headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
            scope = {**scope, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": more}
            return await receive()

        return await self.app(scope, replay, send)
