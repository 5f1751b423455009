"""The coordinator router's HTTP side: the server clients talk to and the relay to the chosen replica, on
aiohttp (common/webserver.py: framing, limits and timeouts). The placement itself is router.Router's.

Per request: the body read whole (within the body limit and the client timeout), its placement (Router.locate:
blocking calls to a replica's /tokenize and the coordinator, in a thread pool), then the replica's answer
relayed as it comes: status and headers, the body chunk by chunk (server-sent events too). A replica that
fails before its answer begins costs one more try on another one. Every request counted in flight is counted
out in a `finally`, whatever ends it: an answer, an error, or the client leaving (which cancels the handler
and with it the upstream request)."""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeAlias

import aiohttp
from aiohttp import web
from yarl import URL

from ..common.webserver import Limits, Log, Refused, Server, end_to_end, read_body, target
from .routing import PLACED_PATHS, NoReplica

# router.py's Router and Replica are Any here: router.py imports this module, and no import may go back, not even
# for types (tests/unit/test_import_graph.py).
Router: TypeAlias = Any
Replica: TypeAlias = Any

CONNECT_TIMEOUT = 5.0
PLACEMENT_THREADS = 32  # placements at once (each up to two lookups of APPLIANCE_ROUTER_LOOKUP_TIMEOUT)
ERROR_TYPE = "router_error"
# Client-sent forwarding fields are not passed on: the router is the edge, and a client could name any address
# or scheme in them. The router writes X-Forwarded-For and X-Forwarded-Proto of its own.
FORWARDING_PREFIX = "x-forwarded-"
FORWARDING = frozenset(("forwarded", "x-real-ip"))
# The client's own headers aiohttp would otherwise add to the upstream request.
NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


class UpstreamError(RuntimeError):
    """A replica failed before its answer began: it refused or timed out the connection (`connected` false: it is
    taken out until its health check passes), or it took the request and closed or timed out without a status."""

    def __init__(self, connected: bool, message: str):
        super().__init__(message)
        self.connected = connected


def forward_headers(request: web.BaseRequest) -> list[tuple[str, str]]:
    """What the replica gets: the client's end-to-end fields, minus its forwarding claims, plus the router's."""
    out = [(k, v) for k, v in end_to_end(request.headers)
           if not k.lower().startswith(FORWARDING_PREFIX) and k.lower() not in FORWARDING]
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if peer:
        out.append(("X-Forwarded-For", str(peer[0])))
    out.append(("X-Forwarded-Proto", "http"))
    return out


class Proxy:
    """The request handler of the router's server (one per router)."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.placement = ThreadPoolExecutor(PLACEMENT_THREADS, thread_name_prefix="router-placement")
        self.session: aiohttp.ClientSession | None = None
        self.server: Server | None = None  # set by `make_server`; its refusals are counted in /metrics

    def upstream(self) -> aiohttp.ClientSession:
        """The client to the replicas (made on the server's loop at its first use). A connection per request, as
        vLLM closes idle ones on its own schedule: a reused one could fail after the request was sent. Bodies are
        passed on as they are (no decompression); the client's headers go as it sent them (no defaults added)."""
        if self.session is None:
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True, limit=0), auto_decompress=False,
                skip_auto_headers=NO_AUTO_HEADERS, cookie_jar=aiohttp.DummyCookieJar())
        return self.session

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method == "GET" and request.raw_path == "/health":
            ok = self.router.healthy_count() > 0
            return web.Response(status=200 if ok else 503, text="ok\n" if ok else "no healthy replica\n")
        if request.method == "GET" and request.raw_path == "/metrics":
            refused = {}
            if self.server is not None:
                with self.server.refused_lock:
                    refused = dict(self.server.refused)
            return web.Response(body=self.router.metrics_text(refused),
                                headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})
        return await self.proxy(request)

    async def proxy(self, request: web.BaseRequest) -> web.StreamResponse:
        router = self.router
        body = await read_body(request)
        headers = forward_headers(request)
        path = target(request)
        placed_path = path.split("?", 1)[0]
        t = time.perf_counter()
        prefix, info = await asyncio.get_running_loop().run_in_executor(
            self.placement, router.locate, placed_path, body, dict(headers))
        tried: list = []
        for attempt in range(2):  # a replica that fails before answering: once more on another one
            try:
                replica, held = router.pick(prefix, tuple(tried))
            except NoReplica:
                if tried:
                    raise Refused(502, "the replica did not answer") from None
                with router.metrics.lock:
                    router.metrics.no_replica += 1
                raise Refused(503, "no healthy replica") from None
            try:
                if attempt == 0 and placed_path in PLACED_PATHS:
                    router.metrics.routed(time.perf_counter() - t, held, info["fallback"])
                elif attempt:
                    with router.metrics.lock:
                        router.metrics.retries += 1
                try:
                    resp = await self.send(replica, request.method, path, body, headers)
                except UpstreamError as e:
                    router.failed(replica, e.connected, str(e))
                    tried.append(replica)
                    continue
                async with resp:
                    return await self.relay(request, resp)
            finally:
                router.done(replica)
        raise Refused(502, "the replicas did not answer")

    async def send(self, replica: Replica, method: str, path: str, body: bytes, headers: list
                   ) -> aiohttp.ClientResponse:
        """The replica's response, its head read; UpstreamError when it fails before that (nothing has gone back to
        the client yet)."""
        timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT, sock_connect=CONNECT_TIMEOUT,
                                        sock_read=self.router.config.request_timeout)
        try:
            return await self.upstream().request(
                method, URL(replica.url + path, encoded=True), data=body if body or method in ("POST", "PUT", "PATCH")
                else None, headers=headers, allow_redirects=False, timeout=timeout)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as e:
            # a pod that is gone may not even refuse: CONNECT_TIMEOUT, not the request's
            raise UpstreamError(False, f"no connection ({e.__class__.__name__})") from None
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
            raise UpstreamError(True, f"no answer ({e.__class__.__name__})") from None

    async def relay(self, request: web.BaseRequest, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
        """The replica's answer as it comes: status and headers, then the body chunk by chunk. Without a length
        from the replica, an HTTP/1.1 client gets it chunked and an HTTP/1.0 one until the connection closes."""
        resp = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for k, v in end_to_end(upstream.headers):
            resp.headers.add(k, v)
        length = upstream.headers.get("Content-Length")
        bodyless = request.method == "HEAD" or upstream.status in (204, 304) or upstream.status < 200
        if length is not None and length.isdigit():
            if bodyless:
                resp.headers["Content-Length"] = length
            else:
                resp.content_length = int(length)
        await resp.prepare(request)
        if bodyless:
            return resp
        try:
            async for data in upstream.content.iter_any():
                await resp.write(data)
            await resp.write_eof()
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
            # The client left, or the replica broke off mid-answer: nothing more can be said on this connection,
            # and an unfinished chunked answer must not look finished.
            request.protocol.force_close()
        return resp

    async def close(self) -> None:
        """At the server's stop, on its loop: the client to the replicas, and the placement threads."""
        if self.session is not None:
            await self.session.close()
        self.placement.shutdown(wait=False, cancel_futures=True)


def make(router: Router, limits: Limits, host: str, port: int, log: Log) -> Server:
    """The router's server, listening (OSError: the port is taken); `serve_forever` or `start_thread` runs it."""
    proxy = Proxy(router)
    server = Server(proxy, host, port, limits, log, error_type=ERROR_TYPE, on_stop=proxy.close)
    proxy.server = server
    return server

