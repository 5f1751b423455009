"""supervisord's eventlistener protocol and its XML-RPC interface over the unix socket.

Unlike supervisor.childutils.listener, `Listener.next()` can wait with a timeout, which lets the watchdog
keep its own clock. Protocol facts that matter here: supervisord sends each payload as UTF-8 text whose
`len:` counts characters, not bytes; and a PROCESS_LOG chunk that is not valid UTF-8 on its own (a read
that splits a multi-byte character) arrives as the text `Undecodable: b'...'`, see log_bytes().
"""
from __future__ import annotations

import ast
import codecs
import os
import select
import signal
import sys
import time
import xmlrpc.client
from typing import Any, BinaryIO

from supervisor.xmlrpc import SupervisorTransport

from .applog import emit, prefix  # noqa: F401  (prefix: the logs listener's, re-exported)

RPC_USER = "appliance"


def supervisor_rpc(socket_path: str, password: str) -> xmlrpc.client.ServerProxy:
    """supervisord's XML-RPC interface on its unix socket (`.supervisor.getState()` and so on)."""
    transport = SupervisorTransport(RPC_USER, password, f"unix://{socket_path}")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


def parse_tokens(line: str) -> dict[str, str]:
    """`key:value key:value` (the header line, and the first line of most payloads)."""
    return dict(token.split(":", 1) for token in line.split() if ":" in token)


def split_payload(payload: str) -> tuple[dict[str, str], str]:
    """A payload is one line of `key:value` tokens, then (for PROCESS_LOG) the program's output."""
    head, _, data = payload.partition("\n")
    return parse_tokens(head), data


UNDECODABLE = "Undecodable: "


def log_bytes(data: str) -> bytes:
    """The bytes a program wrote, from a PROCESS_LOG payload's data."""
    if data.startswith(UNDECODABLE):
        try:
            raw = ast.literal_eval(data[len(UNDECODABLE):])
            if isinstance(raw, bytes):
                return raw
        except (ValueError, SyntaxError):
            pass
    return data.encode("utf-8", "surrogateescape")


class Listener:
    """One eventlistener's side of the protocol. `next()` acknowledges the previous event by itself."""

    def __init__(self, stdin_fd: int = 0, stdout: BinaryIO | None = None) -> None:
        self.fd = stdin_fd
        self.out = stdout or sys.stdout.buffer
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.buf = ""
        self.ready = False  # READY sent, no event read since
        self.unacked = False  # an event was handed out and needs its RESULT
        # supervisord stops listeners with SIGTERM: a normal end (exit 0, not a "terminated by SIGTERM" warning).
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

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
        self.buf += self.decoder.decode(chunk)
        return True

    def next(self, timeout: float | None = None) -> tuple[dict[str, str], str] | None:
        """The next event as (headers, payload), or None when `timeout` seconds pass without one."""
        if self.unacked:
            self._write(b"RESULT 2\nOK")
            self.unacked = False
        if not self.ready:
            self._write(b"READY\n")
            self.ready = True
        deadline = None if timeout is None else time.monotonic() + timeout
        while "\n" not in self.buf:
            if not self._fill(deadline):
                return None
        line, self.buf = self.buf.split("\n", 1)
        headers = parse_tokens(line)
        size = int(headers.get("len", "0"))
        while len(self.buf) < size:  # the payload follows its header at once
            self._fill(None)
        payload, self.buf = self.buf[:size], self.buf[size:]
        self.ready, self.unacked = False, True
        return headers, payload


def say(name: str, message: str, level: str = "info", event: str = "message", **fields: Any) -> None:
    """A listener's own output (its stdout is the protocol): on stderr, prefixed text or JSON (applog)."""
    emit(name, message, level=level, event=event, stream=sys.stderr, **fields)
