"""The stubs' HTTP server: a client that hangs up early is not a crash, any other handler error still is
(the supervisor tests fail on a traceback in the logs, so both halves matter)."""
from __future__ import annotations

import socket
import struct
import sys
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "stubs"))
from quiet_http import QuietHTTPServer  # noqa: E402


class Recorded(QuietHTTPServer):
    """Notes what reached handle_error, after the server under test has dealt with it."""
    def __init__(self, *a):
        super().__init__(*a)
        self.errors, self.handled = [], threading.Event()

    def handle_error(self, request, client_address):
        super().handle_error(request, client_address)
        self.errors.append(sys.exc_info()[1])
        self.handled.set()


def serve(on_get):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            on_get(self)

    server = Recorded(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def ask_and_hang_up(server) -> None:
    c = socket.create_connection(server.server_address)
    c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
    c.close()


@pytest.mark.parametrize("error", ["hang-up", "bug"])
def test_a_client_hanging_up_is_silent_and_a_handler_bug_is_not(error, capfd):
    hung_up = threading.Event()

    def on_get(h):
        if error == "bug":
            raise ValueError("a bug in the handler")
        hung_up.wait(5)
        h.send_response(200)
        h.end_headers()
        for _ in range(64):  # the first writes may still land in the socket buffer
            h.wfile.write(b"x" * 65536)

    server = serve(on_get)
    try:
        ask_and_hang_up(server)
        hung_up.set()
        assert server.handled.wait(5)
        server.shutdown()
    finally:
        server.server_close()
    err = capfd.readouterr().err
    if error == "bug":
        assert isinstance(server.errors[0], ValueError)
        assert "ValueError: a bug in the handler" in err
    else:
        assert isinstance(server.errors[0], ConnectionError)
        assert err == ""
