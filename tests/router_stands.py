"""A coordinator router served in the test's own process, and replicas that record what reaches them, for the
router's unit and property tests. Every suite imports it as `router_stands` (tests/conftest.py puts this folder
on the import path)."""
from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from entrypoint.cluster import router as product
from entrypoint.config.settings import parse_http_url, parse_router_replicas

from ports import free_port


class Echo(BaseHTTPRequestHandler):
    """A replica that records what reaches it (`server.got`: method, path, headers, body) and answers with its
    name; no /tokenize (placement by load). Its answers carry hop-by-hop fields of their own, which the router
    must not pass back."""
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path == "/health":
            data = b"{}"
        elif self.path == "/tokenize":
            return self._send(404, b"{}")
        else:
            self.server.got.append((self.command, self.path, dict(self.headers.items()), body))
            data = json.dumps({"replica": self.server.name}).encode()
        self._send(200, data)

    def _send(self, status: int, data: bytes):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "X-Upstream-Hop")
        self.send_header("X-Upstream-Hop", "1")
        self.send_header("Keep-Alive", "timeout=5")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_OPTIONS = do_PATCH = do_HEAD = _answer


class EchoServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        """A client that reset a kept-alive connection (the front proxy drops its upstream connection when its own
        client leaves) is no error of the replica's; anything else is printed as usual."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


def echo_server(name: str) -> ThreadingHTTPServer:
    """An Echo replica serving on 127.0.0.1 in a background thread (`shutdown`, `server_close` to stop it)."""
    server = EchoServer(("127.0.0.1", 0), Echo)
    server.daemon_threads, server.name, server.got = True, name, []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def url_of(server: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def serve_router(*urls: str, **overrides):
    """(router, server, port, log lines): a router serving in this process in front of `urls`, no coordinator
    (every placement falls back to load), its first health check done; RouterConfig fields as `overrides`."""
    config = product.RouterConfig(**{
        "coordinator": parse_http_url(f"http://127.0.0.1:{free_port()}"),
        "replicas": parse_router_replicas(" ".join(urls)), "host": "127.0.0.1", "port": free_port(),
        "lookup_timeout": 0.5, "request_timeout": 30, "health_interval": 3600, **overrides})
    lines: list[str] = []
    router = product.Router(config, log=lambda msg, *a, **k: lines.append(msg))
    server, _ = product.make_server(config, router)
    server.start_thread("test-router")
    router.refresh()
    router.check_health()
    return router, server, config.port, lines


def wait_until_idle(router, within: float = 30.0) -> None:
    """Until nothing is in flight: a request is counted out just after its answer's last byte went out."""
    deadline = time.monotonic() + within
    while router.in_flight():
        assert time.monotonic() < deadline, "a request stayed in flight"
        time.sleep(0.01)
