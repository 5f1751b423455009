"""The front proxy: the only thing on vLLM's public port, in front of a vLLM on loopback, so that a vLLM crash
costs clients a pause instead of errors.

- While vLLM is down (starting, restarting), new requests are **held** and sent once it is ready again, in the
  order they came; past `max_held` requests or `max_hold_s` seconds of waiting: 503 with Retry-After, as the gap
  program answers today.
- A request that died with vLLM before its answer began is **sent again** once vLLM is back (at most
  `max_resends` times): inference has no side effect, and the client saw nothing yet.
- A stream that died after its first token is **continued** on the restarted vLLM from exactly the tokens
  already sent (continuation.py), so the client reads one uninterrupted stream. A stream that cannot be continued
  faithfully (continuation.unresumable names why) ends with one error event, as a dropped stream does today.
- `/health` (and the other probes: PROBES) answers 503 while vLLM is down or the proxy stops, so that readiness
  fails before anything else and a scrape is never held.
- On stop (`Server.shutdown(drain_s)`): no new connection is accepted; requests in flight finish.
- The API key, when set, is checked here (vLLM's own check stays: a second lock on loopback).

Built on common/webserver.py (aiohttp: strict framing, limits and timeouts); aiohttp is also its client.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from ..common.webserver import Limits, Log, Refused, Server, end_to_end, error_response, read_body, target
from .continuation import CHAT, COMPLETIONS, Stream, parse_event, unresumable, upstream_body

ERROR_TYPE = "front_proxy_error"
HEADER = "X-Appliance-Front"  # on the proxy's own answers (held past the bound, unauthorized): never on vLLM's
MAX_EVENT = 64 * 1024 * 1024  # bytes of one server-sent event from vLLM (the first carries the prompt's token ids)
SSE_TYPE = "text/event-stream"
# Asked by load balancers and scrapers about the present: answered 503 at once while vLLM is down, not held.
PROBES = frozenset(("/health", "/metrics", "/ping", "/version", "/load"))


@dataclass(frozen=True)
class Config:
    upstream: str  # vLLM on loopback, e.g. http://127.0.0.1:18000
    # The keys vLLM accepts (VLLM_API_KEY, --api-key k1 k2): checked here first; vLLM checks them again.
    api_keys: tuple[str, ...] = ()
    max_held: int = 1024  # requests waiting for vLLM at once; more get 503 at once
    max_hold_s: float = 120.0  # how long a request may wait for vLLM, in all
    retry_after: int = 5
    max_resends: int = 3  # times one request is sent again after vLLM died under it
    reasoning_parser: bool = False  # vLLM parses reasoning out of chat streams: those cannot be continued
    health_interval: float = 0.25  # s between probes of vLLM's /health while it is down (1 s while it serves)
    limits: Limits = Limits()


@dataclass
class Counters:
    """What the metrics show (appliance_front_*)."""

    held_now: int = 0
    held_total: int = 0
    resent: int = 0
    resumed: int = 0
    dropped: int = 0  # past the hold bound, or a stream that could not be continued
    oldest_held: dict[int, float] = field(default_factory=dict)  # id(request) -> since (monotonic)

    def queue_age(self) -> float:
        return time.monotonic() - min(self.oldest_held.values()) if self.oldest_held else 0.0


class VllmDown(Exception):
    """vLLM closed the connection or could not be reached: it died (or is not up yet)."""


class FrontProxy:
    def __init__(self, config: Config, log: Log | None = None) -> None:
        self.config = config
        self.log = log or (lambda message, **kw: None)
        self.counters = Counters()
        self.ready: asyncio.Event | None = None  # vLLM serves (created on the server's loop)
        self.stopping = False
        self.max_model_len: int | None = None
        self.session: aiohttp.ClientSession | None = None
        self.watcher: asyncio.Task | None = None

    # -- vLLM's state ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        """On the server's loop, before the first request: the client session and the watch of vLLM."""
        self.ready = asyncio.Event()
        # No pool limit (the server's connection limit bounds it); no total timeout (a stream may run long).
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                             timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
                                             auto_decompress=False)
        self.watcher = asyncio.create_task(self.watch())

    async def close(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()
        if self.session is not None:
            await self.session.close()

    def vllm_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.config.api_keys[0]}"} if self.config.api_keys else {}

    async def probe(self) -> bool:
        """vLLM answers /health 200 and lists its model (whose max_model_len bounds a continued chat)."""
        assert self.session is not None
        try:
            timeout = aiohttp.ClientTimeout(total=2)
            async with self.session.get(self.config.upstream + "/health", timeout=timeout) as r:
                if r.status != 200:
                    return False
            async with self.session.get(self.config.upstream + "/v1/models", headers=self.vllm_headers(),
                                        timeout=timeout) as r:
                if r.status != 200:
                    return False
                data = await r.json(content_type=None)
                lengths = [m.get("max_model_len") for m in data.get("data", []) if isinstance(m, dict)]
                self.max_model_len = next((n for n in lengths if isinstance(n, int)), self.max_model_len)
            return True
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, AttributeError):
            return False

    async def watch(self) -> None:
        assert self.ready is not None
        while True:
            up = await self.probe()
            if up and not self.ready.is_set():
                self.log("vLLM serves: releasing held requests", event="vllm_up",
                         held=self.counters.held_now)
                self.ready.set()
            elif not up and self.ready.is_set():
                self.lost()
            await asyncio.sleep(1.0 if self.ready.is_set() else self.config.health_interval)

    def lost(self) -> None:
        """vLLM is gone: hold what comes until the watch sees it serve again."""
        assert self.ready is not None
        if self.ready.is_set():
            self.ready.clear()
            self.log("vLLM does not serve: holding requests", event="vllm_down")

    async def hold(self, since: float) -> None:
        """Wait for vLLM within the bounds (Refused 503 past them). `since`: when the request arrived."""
        assert self.ready is not None
        if self.ready.is_set():
            return
        c, key = self.counters, object()
        if c.held_now >= self.config.max_held:
            c.dropped += 1
            raise Refused(503, f"vLLM is restarting and {c.held_now} requests already wait; "
                               f"retry after {self.config.retry_after} s")
        left = self.config.max_hold_s - (time.monotonic() - since)
        c.held_now += 1
        c.held_total += 1
        c.oldest_held[id(key)] = since
        try:
            await asyncio.wait_for(self.ready.wait(), max(left, 0))
        except asyncio.TimeoutError:
            c.dropped += 1
            raise Refused(503, f"vLLM did not come back within {self.config.max_hold_s:g} s; "
                               f"retry after {self.config.retry_after} s") from None
        finally:
            c.held_now -= 1
            c.oldest_held.pop(id(key), None)

    # -- requests -------------------------------------------------------------------------------------------
    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            return await self.answer(request)
        except Refused as e:
            if e.status != 503:  # a malformed request (webserver.py answers it)
                raise
            return self.own(503, e.reason)  # past the hold bound: with Retry-After, marked as the proxy's

    async def answer(self, request: web.BaseRequest) -> web.StreamResponse:
        arrived = time.monotonic()
        path = request.path
        if path in PROBES:  # a probe asks about now: never held
            if self.stopping or self.ready is None or not self.ready.is_set():
                return self.own(503, "vLLM is not serving (starting, restarting or stopping)")
        elif self.config.api_keys and path.startswith("/v1/") and not self.authorized(request):
            resp = web.json_response({"error": "Unauthorized"}, status=401)  # vLLM's own answer
            resp.headers[HEADER] = "1"
            return resp
        body = await read_body(request)
        await self.hold(arrived)
        headers = end_to_end(request.headers)
        payload = None
        if request.method == "POST" and path in (COMPLETIONS, CHAT):
            try:
                payload = json.loads(body)
            except ValueError:
                payload = None  # vLLM answers it (400)
        if isinstance(payload, dict) and payload.get("stream") is True:
            return await self.stream(request, path, payload, headers, arrived)
        return await self.forward(request, body, headers, arrived)

    def authorized(self, request: web.BaseRequest) -> bool:
        given = request.headers.get("Authorization", "").encode()
        # Every key compared (no early exit): the time taken does not tell which key came close.
        return sum(hmac.compare_digest(given, f"Bearer {k}".encode()) for k in self.config.api_keys) > 0

    def own(self, status: int, reason: str) -> web.Response:
        resp = error_response(status, reason, "service_unavailable" if status == 503 else ERROR_TYPE)
        if status == 503:
            resp.headers["Retry-After"] = str(self.config.retry_after)
        resp.headers[HEADER] = "1"
        return resp

    async def forward(self, request: web.BaseRequest, body: bytes, headers: list[tuple[str, str]], arrived: float
                      ) -> web.StreamResponse:
        """A request whose answer is read whole before it is passed on: sent again if vLLM dies first. An answer
        that is itself a stream (a stream the proxy does not continue) is passed on as it comes."""
        assert self.session is not None
        for attempt in range(self.config.max_resends + 1):
            if attempt:
                self.counters.resent += 1
                await self.hold(arrived)
            try:
                async with self.session.request(request.method, self.config.upstream + target(request),
                                                 data=body or None, headers=headers) as up:
                    if up.content_type == SSE_TYPE:
                        return await self.pass_stream(request, up)
                    data = await up.read()
                    resp = web.Response(status=up.status, body=data, headers=_answer_headers(up))
                    return resp
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError):
                self.lost()
        self.counters.dropped += 1
        return self.own(503, f"vLLM died under this request {self.config.max_resends + 1} times; "
                             f"retry after {self.config.retry_after} s")

    async def pass_stream(self, request: web.BaseRequest, up: aiohttp.ClientResponse) -> web.StreamResponse:
        out = web.StreamResponse(status=up.status, headers=_answer_headers(up))
        await out.prepare(request)
        try:
            async for data in up.content.iter_any():
                await out.write(data)
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError):
            self.lost()
            self.counters.dropped += 1
            await _write_event(out, {"error": {"message": "vLLM stopped during this stream", "type": ERROR_TYPE,
                                               "code": 503}})
        await out.write_eof()
        return out

    async def stream(self, request: web.BaseRequest, path: str, body: dict, headers: list[tuple[str, str]],
                     arrived: float) -> web.StreamResponse:
        """A completion or chat stream, continued on the restarted vLLM if vLLM dies during it."""
        assert self.session is not None
        why = unresumable(path, body, self.config.reasoning_parser)
        s = Stream(path, body)
        send_path, send_body, continuing = path, (body if why else upstream_body(path, body)), False
        out: web.StreamResponse | None = None
        headers = [(k, v) for k, v in headers if k.lower() != "content-type"]
        for attempt in range(self.config.max_resends + 1):
            if attempt:
                try:
                    await self.hold(arrived if out is None else time.monotonic())
                except Refused as e:
                    if out is None:
                        raise
                    return await self.end_broken(out, e.reason)
            try:
                async with self.session.post(self.config.upstream + send_path, json=send_body,
                                             headers=headers) as up:
                    if up.status != 200 or up.content_type != SSE_TYPE:
                        data = await up.read()
                        if out is None:  # vLLM's own answer (a 400, ...), passed on as it is
                            return web.Response(status=up.status, body=data, headers=_answer_headers(up))
                        return await self.end_broken(out, f"vLLM refused the continuation ({up.status})")
                    if out is None:
                        out = web.StreamResponse(status=200, headers=_answer_headers(up))
                        await out.prepare(request)
                    async for text in _events(up.content):
                        event = parse_event(text)
                        if event is None:
                            await out.write(b"data: " + text.encode() + b"\n\n")
                            if text.strip() == "[DONE]":
                                await out.write_eof()
                                return out
                            continue
                        shown = s.rest(event) if continuing else s.observe(event)
                        if shown is not None:
                            await _write_event(out, shown)
                    raise aiohttp.ServerDisconnectedError()  # ended without [DONE]: vLLM went away
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError):
                self.lost()
            # vLLM died during this stream.
            if s.finish_reason is not None:  # every token was sent: only the end is owed
                assert out is not None
                for event in s.closing():
                    await _write_event(out, event)
                await out.write(b"data: [DONE]\n\n")
                await out.write_eof()
                return out
            if s.resend_whole:
                continue  # nothing reached the client: the same request again
            if why or not s.can_continue():
                assert out is not None
                return await self.end_broken(out, f"vLLM stopped during this stream, which cannot be continued: "
                                                  f"{why or 'vLLM did not say its prompt tokens'}")
            send_path, send_body, continuing = COMPLETIONS, s.continuation(self.max_model_len), True
            self.counters.resumed += 1
        if out is None:
            self.counters.dropped += 1
            return self.own(503, f"vLLM died under this request {self.config.max_resends + 1} times; "
                                 f"retry after {self.config.retry_after} s")
        return await self.end_broken(out, f"vLLM died under this stream {self.config.max_resends + 1} times")

    async def end_broken(self, out: web.StreamResponse, reason: str) -> web.StreamResponse:
        self.counters.dropped += 1
        await _write_event(out, {"error": {"message": reason, "type": ERROR_TYPE, "code": 503}})
        await out.write_eof()
        return out


def _answer_headers(up: aiohttp.ClientResponse) -> list[tuple[str, str]]:
    return end_to_end(up.headers)


async def _write_event(out: web.StreamResponse, event: Any) -> None:
    await out.write(b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n")


async def _events(content: aiohttp.StreamReader) -> AsyncIterator[str]:
    """The `data:` payloads of a server-sent event stream, one per event (an event over MAX_EVENT bytes ends the
    stream as if vLLM had gone away: nothing vLLM sends is that large)."""
    buffer = b""
    async for chunk in content.iter_any():
        buffer += chunk
        while True:
            end = buffer.find(b"\n\n")
            if end < 0:
                break
            raw, buffer = buffer[:end], buffer[end + 2:]
            lines = [line[5:].lstrip(b" ") for line in raw.split(b"\n") if line.startswith(b"data:")]
            if lines:
                yield b"\n".join(lines).decode("utf-8", "replace")
        if len(buffer) > MAX_EVENT:
            raise aiohttp.ClientPayloadError("event too large")


def serve(host: str, port: int, config: Config, log: Log | None = None) -> tuple[Server, FrontProxy]:
    """A running proxy on host:port (its loop in a thread of its own); stop it with `server.shutdown(drain_s)`
    after setting `proxy.stopping`."""
    proxy = FrontProxy(config, log)
    server = Server(proxy.handle, host, port, config.limits, log or (lambda *a, **k: None),
                    error_type=ERROR_TYPE, on_stop=proxy.close)
    server.start_thread("front-proxy")
    assert server.loop is not None
    asyncio.run_coroutine_threadsafe(proxy.start(), server.loop).result()
    return server, proxy
