"""The HTTP server under the appliance's own network surfaces: the coordinator router (cluster/router.py), the
metrics endpoint (programs/metrics.py) and the gap program's 503 on vLLM's port (programs/gap.py); a front proxy for
vLLM's port can stand on it the same way.

aiohttp's low-level server, because vLLM's image already ships it (vLLM 0.32 requires aiohttp >= 3.14.3, LMCache
too) and it is both a server and the streaming client a proxy needs, on one event loop. Its request parser
(llhttp, C) is strict where RFC 9112 says to refuse: Content-Length with Transfer-Encoding, repeated or
non-digit lengths, signed or oversized chunk sizes, a Transfer-Encoding that does not end in chunked, obsolete
line folding, whitespace before a header's colon, control characters in values, a missing or second Host in
HTTP/1.1. Each is answered 400 and the connection closed. On top of it this module:
- refuses what the parser lets by: versions other than HTTP/1.0 and 1.1 (505), Transfer-Encoding in an HTTP/1.0
  request (RFC 9112 6.1: faulty framing, 400), CONNECT and TRACE (405), a target that is not a path (400);
- bounds what a client may hold: request line and each header (max_field), the number of headers, the body
  (`read_body`: 413 past max_body), the connections (max_connections: the one idle the longest makes room for
  a new one; when every connection is busy the new one is answered 503);
- and the time it may take: a connection that has not sent a complete request head idle_timeout seconds after
  it opened or after its last answer is closed (aiohttp's keep-alive timer, which data does not reset: it bounds
  a slow head too), and a body must arrive within read_timeout (408);
- never logs a traceback nor a byte of the request: a refused request is counted (`refused`, by status code)
  and answered with a fixed reason; a failure of our own code is one line naming the exception's type and the
  place it was raised.
`serve_forever` runs the server on an event loop of its own (a thread of its own, or the main thread);
`shutdown` stops it from any other thread. A server may also serve listening sockets it is handed while it runs
(`serve_socket`, `close_socket`): the gap program's share of vLLM's port, which comes and goes."""
from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import HttpVersion10, HttpVersion11
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from multidict import MultiMapping

# Hop-by-hop fields (RFC 9110 7.6.1), never passed on by a proxy, and the framing fields the sending side sets
# itself (Host for its peer, Content-Length for the body it sends, Expect for its own 100-continue).
HOP_BY_HOP = frozenset(("connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
                        "te", "trailer", "transfer-encoding", "upgrade"))
FRAMING = frozenset(("host", "content-length", "expect"))
REASON_MAX = 120
# Connections waiting to be accepted (the kernel caps it at net.core.somaxconn). Not the connection limit: a burst
# of new connections must reach the limit's bookkeeping, which frees room for them, instead of waiting in SYN retries.
BACKLOG = min(1024, socket.SOMAXCONN)

Log = Callable[..., None]  # log(message, level="info", event="message", **fields), as applog.emit's tail
Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Limits:
    max_connections: int = 1024
    idle_timeout: float = 30.0  # s without a complete request head, from the connection or the last answer
    read_timeout: float = 30.0  # s for a request body to arrive, from its head
    max_body: int = 64 * 1024 * 1024
    max_field: int = 8190  # bytes of the request line, and of each header line (aiohttp's default)
    max_headers: int = 100
    # After an early answer (413, 408), how long the rest of the body is read and dropped, so that the client
    # reads the answer before the connection closes (at most read_timeout: no longer than a client may take).
    lingering_s: float = 2.0


class Refused(Exception):
    """A request answered with a 4xx/5xx of ours before it was handled: the status and a fixed reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def error_response(status: int, reason: str, kind: str) -> web.Response:
    """The JSON error body OpenAI-style clients read (`error.message`), on a connection that then closes."""
    body = json.dumps({"error": {"message": reason, "type": kind, "code": status}}).encode()
    resp = web.Response(status=status, body=body, content_type="application/json")
    resp.force_close()
    return resp


def end_to_end(headers: MultiMapping[str]) -> list[tuple[str, str]]:
    """The fields a proxy passes on: without the hop-by-hop ones, those the Connection field names (RFC 9110
    7.6.1) and the framing ones (the next hop gets its own)."""
    named = {t.strip().lower() for v in headers.getall("Connection", ()) for t in v.split(",")}
    return [(k, v) for k, v in headers.items()
            if k.lower() not in HOP_BY_HOP and k.lower() not in FRAMING and k.lower() not in named]


def target(request: web.BaseRequest) -> str:
    """The request's path and query as the client wrote them (origin-form; the path of an absolute-form one)."""
    raw = request.raw_path
    return raw if raw.startswith("/") else request.rel_url.raw_path_qs


async def read_body(request: web.BaseRequest) -> bytes:
    """The whole request body, within the server's max_body (else Refused 413) and read_timeout (408)."""
    limits = connection(request).owner.limits
    if request.content_length is not None and request.content_length > limits.max_body:
        raise Refused(413, f"request body larger than {limits.max_body} bytes")
    await expect_continue(request)

    async def read() -> bytes:
        parts, size = [], 0
        async for data in request.content.iter_any():
            size += len(data)
            if size > limits.max_body:  # a chunked body has no length up front: counted as it comes
                raise Refused(413, f"request body larger than {limits.max_body} bytes")
            parts.append(data)
        return b"".join(parts)

    try:
        return await asyncio.wait_for(read(), limits.read_timeout)
    except asyncio.TimeoutError:
        raise Refused(408, f"request body not received within {limits.read_timeout:g} s") from None
    except web.RequestPayloadError:  # bad chunk framing inside the body, or the client broke off
        raise Refused(400, "malformed request body framing") from None


async def expect_continue(request: web.BaseRequest) -> None:
    """`Expect: 100-continue` (curl sends it for bodies over 1 KiB, then waits a second for the go-ahead): the go-
    ahead, once the length is known to be within the limit; any other expectation is refused (RFC 9110 10.1.1).
    HTTP/1.0 has no 100-continue: ignored there. As aiohttp's web application does; its low-level server does not."""
    expect = request.headers.get("Expect")
    if expect is None or request.version != HttpVersion11:
        return
    if expect.strip().lower() != "100-continue":
        raise Refused(417, "expectation failed: only 100-continue is supported")
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # the answer itself has not begun


def where(exc: BaseException) -> str:
    """`Type at file:line` of an exception: enough to find a bug, nothing of the data it was raised on."""
    frames = traceback.extract_tb(exc.__traceback__)
    at = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}{at}"


def parser_reason(exc: BaseException | None, message: str | None) -> str:
    """A refusal's reason without the request's bytes: llhttp words its errors `reason:\\n\\n  <bytes>`, so the
    part before that is fixed text; any other wording gives way to a generic reason."""
    text = getattr(exc, "message", None) or message or ""
    if ":\n" in text:
        head = text.split(":\n", 1)[0]
        if head.isascii() and head.isprintable() and len(head) <= REASON_MAX:
            return f"malformed request: {head}"
    return "malformed request"


def strict(request: web.BaseRequest) -> Refused | None:
    """What the parser accepts and RFC 9112 does not, or this server does not serve."""
    if connection(request).unsupported_version:
        return Refused(505, "HTTP version not supported: HTTP/1.0 and HTTP/1.1 only")
    if request.version == HttpVersion10 and "Transfer-Encoding" in request.headers:
        return Refused(400, "malformed request: Transfer-Encoding in an HTTP/1.0 request")
    if request.method in ("CONNECT", "TRACE"):  # no tunnels; no echo of a request's headers (credentials) back
        return Refused(405, f"{request.method} is not served here")
    raw = request.raw_path
    if not raw.startswith("/") and not raw.lower().startswith(("http://", "https://")):  # `*`, authority-form
        return Refused(400, "malformed request: the target must be a path")
    return None


class Connection(RequestHandler):
    """aiohttp's per-connection protocol, with what the connection limit needs to know (`busy`, `idle_since`,
    `refused`) and aiohttp's error paths made quiet: no traceback, no request bytes, answers of our shape."""

    def __init__(self, manager: "_Manager", **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.owner = manager.owner
        self.busy = 0  # requests being handled (0 or 1: one at a time per connection)
        self.idle_since = time.monotonic()
        self.refused = False  # over the connection limit with nobody idle: its request gets 503
        self.unsupported_version = False  # the request being handled said HTTP/2.0 (llhttp takes it): 505

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:  # an answer was under way: nothing more can be said (aiohttp's rule)
            raise ConnectionError("answer already begun")
        if status >= 500:
            if not isinstance(exc, OSError):  # a client gone is no failure of ours
                self.owner.log(f"internal error ({where(exc) if exc else status}); answered {status}", "error",
                               "internal_error")
            reason = "internal error"
        else:
            reason = parser_reason(exc, message)
        self.owner.count_refused(status)
        return error_response(status, reason, self.owner.error_type)

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if isinstance(exc, BaseException) and not isinstance(exc, OSError):
            self.owner.log(f"{args[0] if args else 'error'} ({where(exc)})", "error", "internal_error")


def connection(request: web.BaseRequest) -> Connection:
    """The request's connection: a Connection, the only kind _Manager makes (aiohttp types it as its base)."""
    return cast(Connection, request.protocol)


class _Manager(web.Server):
    """aiohttp's connection manager, making `Connection`s and keeping to the connection limit."""

    def __init__(self, handler: Handler, owner: "Server", **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.owner = owner

    def __call__(self) -> Connection:
        return Connection(self, loop=self._loop, **self._kwargs)

    def _make_request(self, message: RawRequestMessage, payload: StreamReader, protocol: RequestHandler,
                      writer: AbstractStreamWriter, task: "asyncio.Task[None]") -> web.BaseRequest:
        # Called as each request's turn comes (one at a time per connection). A version other than 1.x is noted
        # on the connection and the request answered (505) in HTTP/1.1: aiohttp answers in the request's version.
        unsupported = message.version not in (HttpVersion10, HttpVersion11)
        if isinstance(protocol, Connection):
            protocol.unsupported_version = unsupported
        if unsupported:
            message = message._replace(version=HttpVersion11, should_close=True)
        return super()._make_request(message, payload, protocol, writer, task)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        if len(self._connections) <= self.owner.limits.max_connections:
            return
        # Full: the connection idle the longest goes (an idle keep-alive, or one still sending its head, which a
        # client can always open again); when every one is busy, the new one is told so.
        idle = [c for c in self._connections if c is not handler and isinstance(c, Connection)
                and not c.busy and not c.refused]
        if idle:
            min(idle, key=lambda c: c.idle_since).force_close()
        elif isinstance(handler, Connection):
            handler.refused = True


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port and listening (an OSError: the port is taken)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


class Server:
    """A listening socket of its own, bound to host:port at construction (an OSError there: the port is taken),
    served by aiohttp; with `host` and `port` None, none: it then serves only the sockets handed to
    `serve_socket`."""

    def __init__(self, handler: Handler, host: str | None, port: int | None, limits: Limits, log: Log,
                 error_type: str = "server_error", on_stop: Callable[[], Awaitable[None]] | None = None):
        self.handler, self.limits, self.log, self.error_type = handler, limits, log, error_type
        self.on_stop = on_stop  # awaited on the server's loop once it no longer serves (a proxy's client session)
        self.sock = listening_socket(host, port) if host is not None and port is not None else None
        self.port = self.sock.getsockname()[1] if self.sock is not None else None
        self._handed: dict[socket.socket, web.SockSite] = {}  # the sockets handed to serve_socket, still served
        self._runner: web.ServerRunner | None = None
        self.refused: dict[int, int] = {}  # status -> requests refused with it
        self.refused_lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._drain_s = 0.0
        self._cut_off = 0
        self._started = threading.Event()
        self._stopped = threading.Event()
        self._manager: _Manager | None = None

    def count_refused(self, status: int) -> None:
        with self.refused_lock:
            self.refused[status] = self.refused.get(status, 0) + 1

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        conn = connection(request)
        conn.busy += 1
        try:
            problem = Refused(503, "too many connections; try again") if conn.refused else strict(request)
            if problem is None:
                try:
                    return await self.handler(request)
                except Refused as e:
                    problem = e
            self.count_refused(problem.status)
            return error_response(problem.status, problem.reason, self.error_type)
        finally:
            conn.busy -= 1
            conn.idle_since = time.monotonic()

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError):  # a client that reset its connection: nothing to report
            return
        self.log(f"event loop: {context.get('message', 'error')}" + (f" ({where(exc)})" if exc else ""), "error",
                 "internal_error")

    async def _serve(self, stop_signals: tuple) -> None:
        loop = self.loop = asyncio.get_running_loop()
        loop.set_exception_handler(self._loop_error)
        self._stop = asyncio.Event()
        for sig in stop_signals:
            loop.add_signal_handler(sig, self._stop.set)
        lim = self.limits
        # handler_cancellation: a client that leaves cancels its handler at once (a proxy then drops the upstream
        # request, and vLLM stops generating), instead of at the handler's next write.
        self._manager = _Manager(self._handle, self, handler_cancellation=True, loop=loop, access_log=None,
                                 keepalive_timeout=lim.idle_timeout, max_line_size=lim.max_field,
                                 max_field_size=lim.max_field, max_headers=lim.max_headers,
                                 lingering_time=min(lim.lingering_s, lim.read_timeout), auto_decompress=False)
        runner = self._runner = web.ServerRunner(self._manager, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        site = None
        if self.sock is not None:
            site = web.SockSite(runner, self.sock, backlog=BACKLOG)
            await site.start()
        self._started.set()
        try:
            await self._stop.wait()
            # No new connections.
            sites = dict(self._handed)
            if site is not None and self.sock is not None:  # site is self.sock's
                sites[self.sock] = site
            self._handed.clear()
            await stop_accepting(loop, sites)
            for listening in sites.values():
                await listening.stop()
            deadline = loop.time() + self._drain_s
            while True:  # idle keep-alive connections go now; busy ones may finish within the drain time
                conns = [c for c in self._manager.connections if isinstance(c, Connection)]
                for c in conns:
                    if not c.busy:
                        c.force_close()
                busy = sum(1 for c in conns if c.busy)
                if not busy or loop.time() >= deadline:
                    self._cut_off = busy
                    break
                await asyncio.sleep(0.05)
        finally:
            await runner.cleanup()
            if self.on_stop is not None:
                await self.on_stop()

    def serve_forever(self, stop_signals: tuple = ()) -> None:
        """Serve until `shutdown` (or one of `stop_signals`, when called in the main thread)."""
        try:
            asyncio.run(self._serve(stop_signals))
        finally:
            self._started.set()
            self._stopped.set()

    def start_thread(self, name: str) -> threading.Thread:
        """`serve_forever` in a daemon thread, once it accepts connections."""
        thread = threading.Thread(target=self.serve_forever, name=name, daemon=True)
        thread.start()
        self._started.wait()
        return thread

    def shutdown(self, drain_s: float = 0.0) -> int:
        """Stop accepting, close idle connections, let requests being answered finish for up to `drain_s`
        seconds, then close the rest. Returns how many were cut off. From any thread but the server's."""
        if not self._started.is_set():
            self._stopped.set()
            return 0
        loop, stop = self.loop, self._stop
        if loop is not None and stop is not None and not self._stopped.is_set():
            self._drain_s = drain_s
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:  # the loop already ended
                pass
        self._stopped.wait()
        return self._cut_off

    def server_close(self) -> None:
        if self.sock is not None:
            self.sock.close()

    def serve_socket(self, sock: socket.socket) -> None:
        """Serve the connections of `sock` too (bound and listening; its owner decides when it stops, with
        `close_socket`). From any thread but the server's, while it runs (not alongside `shutdown`)."""
        self._on_loop(self._serve_socket(sock))

    def close_socket(self, sock: socket.socket) -> None:
        """Stop serving `sock` and close it. The connections waiting in its accept queue are accepted first and
        served like the others (closing it under them would reset them); the connections already accepted go on
        until answered or timed out. From any thread but the server's, while it runs (not alongside `shutdown`)."""
        self._on_loop(self._close_socket(sock))

    def _on_loop(self, work: Coroutine[None, None, None]) -> None:
        """Run `work` on the server's loop and wait for it (its exception, if any, is raised here)."""
        if self.loop is None or self._stopped.is_set():
            work.close()
            raise RuntimeError("the server is not running")
        asyncio.run_coroutine_threadsafe(work, self.loop).result()

    async def _serve_socket(self, sock: socket.socket) -> None:
        assert self._runner is not None  # on the server's loop: it runs
        site = web.SockSite(self._runner, sock, backlog=BACKLOG)
        await site.start()
        self._handed[sock] = site

    async def _close_socket(self, sock: socket.socket) -> None:
        site = self._handed.pop(sock, None)
        if site is None:  # not (or no longer) served: closed all the same
            sock.close()
            return
        assert self.loop is not None and self._manager is not None  # on the server's loop: it runs
        await stop_accepting(self.loop, [sock])
        queued = accept_queued(sock)
        await site.stop()  # asyncio's server closes the socket
        for conn in queued:
            try:
                await self.loop.connect_accepted_socket(self._manager, conn)
            except OSError:  # the client left already
                conn.close()


async def stop_accepting(loop: asyncio.AbstractEventLoop, socks: Iterable[socket.socket]) -> None:
    """asyncio accepts no more connections on the listening `socks`, and those it accepted just now are set up:
    closing its server under one whose setup is pending leaves that connection open and served by nobody
    (asyncio's Server._attach asserts the server is open; the failure is swallowed)."""
    for sock in socks:
        loop.remove_reader(sock.fileno())
    for _ in range(3):
        await asyncio.sleep(0)


def accept_queued(sock: socket.socket) -> list[socket.socket]:
    """The connections waiting to be accepted on a non-blocking listening socket, accepted."""
    conns: list[socket.socket] = []
    while True:
        try:
            conn, _ = sock.accept()
        except (BlockingIOError, InterruptedError):
            return conns
        except ConnectionAbortedError:  # that client reset its connection while it waited: the next one
            continue
        except OSError:  # out of file descriptors and the like: those left are reset with the socket
            return conns
        conns.append(conn)


def run_until_signalled(server: Server) -> None:
    """The main thread serves until SIGTERM or SIGINT (a supervised program's stop)."""
    server.serve_forever(stop_signals=(signal.SIGTERM, signal.SIGINT))
