"""entrypoint/common/webserver.py on its own, with handlers written for the test: what neither the router's nor
the metrics endpoint's tests reach (a failing handler, every connection busy, the drain at a stop)."""
from __future__ import annotations

import asyncio
import socket
import threading

import pytest
import requests
from aiohttp import web

from entrypoint.common import webserver

from ports import free_port
from raw_http import exchange, status_of

SECRET = "sk-webserver-planted-Zq"


@pytest.fixture
def serve():
    """serve(handler, **Limits fields) -> (server, port, log lines); stopped after the test."""
    started = []

    def start(handler, **limits):
        lines: list[str] = []
        server = webserver.Server(handler, "127.0.0.1", free_port(), webserver.Limits(**limits),
                                  lambda msg, *a, **k: lines.append(msg))
        server.start_thread("test-webserver")
        started.append(server)
        return server, server.port, lines

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


def test_a_failing_handler_is_a_500_and_one_line_without_traceback_or_data(serve, capfd):
    async def handler(request):
        raise RuntimeError(f"failed on {SECRET}")

    server, port, lines = serve(handler)
    r = requests.get(f"http://127.0.0.1:{port}/x", headers={"Authorization": f"Bearer {SECRET}"}, timeout=10)
    assert r.status_code == 500 and r.json()["error"]["message"] == "internal error"
    assert len(lines) == 1 and lines[0].startswith("internal error (RuntimeError at test_webserver.py:")
    out, err = capfd.readouterr()
    assert SECRET not in out + err + r.text + lines[0] and "Traceback" not in out + err
    assert server.refused == {500: 1}


def test_when_every_connection_is_busy_a_new_one_is_answered_503(serve):
    release, entered = threading.Event(), threading.Semaphore(0)

    async def handler(request):
        entered.release()
        await asyncio.get_running_loop().run_in_executor(None, release.wait, 30)
        return web.Response(text="done")

    server, port, _ = serve(handler, max_connections=2)
    busy = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
    try:
        for s in busy:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert entered.acquire(timeout=10) and entered.acquire(timeout=10)  # both are being answered
        out = exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(out) == 503 and b"too many connections" in out and server.refused == {503: 1}
    finally:
        release.set()
        for s in busy:
            assert s.recv(100).startswith(b"HTTP/1.1 200")
            s.close()
    assert requests.get(f"http://127.0.0.1:{port}/", timeout=10).text == "done"


def test_a_stop_lets_requests_being_answered_finish_within_the_drain(serve):
    release, entered = threading.Event(), threading.Semaphore(0)

    async def handler(request):
        entered.release()
        await asyncio.get_running_loop().run_in_executor(None, release.wait, 30)
        return web.Response(text="done")

    server, port, _ = serve(handler)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert entered.acquire(timeout=10)
        idle = socket.create_connection(("127.0.0.1", port), timeout=10)
        result = {}
        stopping = threading.Thread(target=lambda: result.update(cut=server.shutdown(drain_s=30)))
        stopping.start()
        assert idle.recv(100) == b""  # an idle connection is closed at once
        idle.close()
        release.set()
        assert s.recv(1000).startswith(b"HTTP/1.1 200")
        stopping.join(30)
    assert result == {"cut": 0}
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/", timeout=10)


def handed_socket() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    return s


def test_a_server_without_a_socket_of_its_own_serves_the_sockets_it_is_handed():
    """The gap program's way: its share of vLLM's port comes and goes while the server runs."""
    async def handler(request):
        return web.Response(text="handed")

    server = webserver.Server(handler, None, None, webserver.Limits(), lambda msg, *a, **k: None)
    server.start_thread("test-handed")
    try:
        assert server.port is None
        sock = handed_socket()
        port = sock.getsockname()[1]
        server.serve_socket(sock)
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=10).text == "handed"
        early = socket.create_connection(("127.0.0.1", port), timeout=10)  # accepted, not yet asked
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=10).text == "handed"  # `early` was accepted first
        server.close_socket(sock)
        assert sock.fileno() == -1, "closed by close_socket"
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/", timeout=10)
        # a connection accepted before the close is still served after it
        early.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert early.recv(1000).startswith(b"HTTP/1.1 200")
        early.close()
    finally:
        server.shutdown()


def test_close_socket_answers_the_connections_waiting_in_the_accept_queue():
    """Closing a listening socket resets the connections the kernel queued on it; close_socket accepts them first."""
    async def handler(request):
        return web.Response(text="queued")

    server = webserver.Server(handler, None, None, webserver.Limits(), lambda msg, *a, **k: None)
    server.start_thread("test-queued")
    sock = handed_socket()
    port = sock.getsockname()[1]
    try:
        server.serve_socket(sock)
        # The moment of a release: connections the kernel completed and the loop has not accepted yet (here the
        # loop stops watching the socket, so that they stay in the accept queue whatever the timing).
        unwatched = threading.Event()
        server.loop.call_soon_threadsafe(lambda: (server.loop.remove_reader(sock.fileno()), unwatched.set()))
        assert unwatched.wait(10)
        queued = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
        for s in queued:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        server.close_socket(sock)
        for s in queued:
            out = exchange_on(s)
            assert status_of(out) == 200 and out.endswith(b"queued")
    finally:
        server.shutdown()


def exchange_on(s: socket.socket) -> bytes:
    out = b""
    with s:
        while chunk := s.recv(65536):
            out += chunk
    return out
