"""`GET /appliance/kv-identity` on vLLM's API port: the KV identity and whether tenants are salted apart, for the
coordinator router (cluster/router.py), which must ask LMCache's coordinator with the cache salt the replica's
connector gives its chunks (lmcache_ext/salt.py) to find where a prompt's KV is.

A pure ASGI middleware added by `vllm serve --middleware` in LMCache server and replica mode; the plan puts the
values in vLLM's environment (config/kv_tiers.py). The identity is a digest of weights and settings, no secret;
the endpoint answers without an API key (it runs before vLLM's key check) and reads no request body.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping

from .asgi import App, Receive, Scope, Send

PATH = "/appliance/kv-identity"
IDENTITY_ENV = "APPLIANCE_KV_IDENTITY"
TENANT_ENV = "APPLIANCE_TENANT_SALT"


def announcement(environ: Mapping[str, str] | None = None) -> dict:
    env = os.environ if environ is None else environ
    return {"kv_identity": env.get(IDENTITY_ENV, ""), "tenant_isolation": env.get(TENANT_ENV) == "1"}


class KvIdentityMiddleware:
    def __init__(self, app: App) -> None:
        self.app = app
        self.body = json.dumps(announcement()).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != PATH or scope.get("method") not in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(self.body)).encode())]})
        await send({"type": "http.response.body", "body": self.body if scope["method"] == "GET" else b""})
        return None
