"""supervisord's eventlistener protocol (read as bytes) and its XML-RPC interface over the unix socket.

supervisor.childutils reads the protocol from text stdin, where `len:` counts bytes but read(n) counts
characters: the first non-ASCII log line (vLLM's progress bars) would desynchronise it. So we read bytes,
and we can wait for an event with a timeout, which lets the watchdog keep its own clock.
"""
from __future__ import annotations

import os
import select
import sys
import time
import xmlrpc.client

from supervisor.xmlrpc import SupervisorTransport


def supervisor_rpc(socket_path: str) -> xmlrpc.client.ServerProxy:
    """The `supervisor.*` XML-RPC namespace of the supervisord listening on `socket_path`."""
    transport = SupervisorTransport(None, None, f"unix://{socket_path}")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


def parse_tokens(line: bytes) -> dict[str, str]:
    """`key:value key:value` (the header line, and the first line of most payloads)."""
    return dict(token.split(":", 1) for token in line.decode("utf-8", "replace").split() if ":" in token)


def split_payload(payload: bytes) -> tuple[dict[str, str], bytes]:
    """A payload is one line of `key:value` tokens, then (for PROCESS_LOG) the raw data."""
    head, _, data = payload.partition(b"\n")
    return parse_tokens(head), data


class Listener:
    """One eventlistener's side of the protocol. `next()` acknowledges the previous event by itself."""

    def __init__(self, stdin_fd: int = 0, stdout=None):
        self.fd = stdin_fd
        self.out = stdout or sys.stdout.buffer
        self.buf = b""
        self.ready = False  # READY sent, no event read since
        self.unacked = False  # an event was handed out and needs its RESULT

    def _write(self, data: bytes) -> None:
        self.out.write(data)
        self.out.flush()

    def _fill(self, deadline: float | None) -> bool:
        """Read what stdin has; False on timeout. EOF means supervisord is gone: exit quietly."""
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        readable, _, _ = select.select([self.fd], [], [], timeout)
        if not readable:
            return False
        chunk = os.read(self.fd, 65536)
        if not chunk:
            sys.exit(0)
        self.buf += chunk
        return True

    def next(self, timeout: float | None = None) -> tuple[dict[str, str], bytes] | None:
        """The next event as (headers, payload), or None when `timeout` seconds pass without one."""
        if self.unacked:
            self._write(b"RESULT 2\nOK")
            self.unacked = False
        if not self.ready:
            self._write(b"READY\n")
            self.ready = True
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.buf:
            if not self._fill(deadline):
                return None
        line, self.buf = self.buf.split(b"\n", 1)
        headers = parse_tokens(line)
        size = int(headers.get("len", "0"))
        while len(self.buf) < size:  # the payload follows its header at once
            self._fill(None)
        payload, self.buf = self.buf[:size], self.buf[size:]
        self.ready, self.unacked = False, True
        return headers, payload


NAME_WIDTH = 8  # the longest program name (watchdog, on-fatal), so that the `|` columns line up


def prefix(name: str) -> str:
    """What starts every line a program prints to the container's output, docker-compose style."""
    return f"{name:<{NAME_WIDTH}} | "


def say(name: str, message: str) -> None:
    """A listener's own output (its stdout is the protocol): prefixed lines on stderr."""
    for line in message.splitlines() or [""]:
        sys.stderr.write(prefix(name) + line + "\n")
    sys.stderr.flush()
