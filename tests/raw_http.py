"""Raw HTTP over a socket, for the tests that send what no HTTP client library would (malformed framing, partial
requests, resets). Every suite imports it as `raw_http` (tests/conftest.py puts this folder on the import path)."""
from __future__ import annotations

import socket
import struct


def exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send `data`, then read until the server closes the connection (or `timeout` passes without a byte: what
    came until then). A server that stops reading or resets the connection early leaves what was received."""
    out = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
            while chunk := s.recv(65536):
                out += chunk
        except (TimeoutError, ConnectionResetError, BrokenPipeError):
            pass
    return out


def status_of(answer: bytes) -> int:
    """The status code of a raw answer (a request the parser refused is answered in HTTP/1.0: aiohttp's way)."""
    assert answer.startswith((b"HTTP/1.0 ", b"HTTP/1.1 ")), answer[:100]
    return int(answer.split(b" ", 2)[1])


def reset(s: socket.socket) -> None:
    """Close with a TCP reset instead of a FIN (SO_LINGER 0), as a client that crashed or was killed."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
