"""The `gap` program: HTTP 503 with Retry-After on vLLM's port while vLLM does not serve it.

    python -m entrypoint.programs.gap PLAN_FILE

Without it a client sees "connection refused" for the whole of a vLLM restart (the launcher's waits, then
the model load: a minute and more). With it, the same client gets an explicit, retryable answer.

How it stays out of the way (no proxy, no cost on the normal path): it listens on VLLM_HOST:VLLM_PORT with
SO_REUSEPORT only while no other socket listens there. vLLM is started through reuse_port.py, so its socket
sets SO_REUSEPORT too and both can be bound at once. vLLM binds at start but listens only when it serves;
as soon as the kernel shows another listener on the port (listeners()), this program answers what is queued on
its socket and closes it. From then on every connection goes to vLLM. When vLLM's listener disappears (crash,
stop, restart) it listens again, within RELEASED_POLL_S; in that instant a client is refused as before.

The overlap: between vLLM's listen() and this program's close (at most HOLDING_POLL_S), the kernel spreads new
connections over both sockets, so about half of the connections of those few tens of milliseconds get a 503
(with Retry-After) instead of vLLM. A connection whose handshake completes in the microseconds between the last
accept and the close is reset (Linux hands queued connections of a closed SO_REUSEPORT socket to the others only
with the net.ipv4.tcp_migrate_req sysctl).

Where vLLM cannot be started through reuse_port.py (APPLIANCE_VLLM_COMMAND is not a Python program), the
launcher writes GAP_OFF (its pid) before it starts vLLM; this program then lets go of the port until that
process is gone, so vLLM can bind it: the 503 answer covers the launcher's waits but not the model load.

Its port is vLLM's public API port, so what arrives there is hostile input: the answers are served by
common/webserver.py (aiohttp: strict framing, a connection limit, head and body timeouts, header limits, no
traceback in the log) on one event loop in a thread of its own, which is handed the socket while this program
holds the port (Server.serve_socket) and closes it on release (Server.close_socket: what is queued is answered
first). Connections accepted before a release are answered after it too. The main thread only watches the port.
"""
from __future__ import annotations

import errno
import os
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from ..common import applog, state
from ..common.procs import pid_alive
from ..common.webserver import BACKLOG, Limits, Server, error_response
from ..rundir import RunDir, read_plan

NAME = "gap"
GAP_OFF = "gap.off"  # in the run directory: "<pid>" of a vLLM that must bind the port alone
GAP_STATE = "gap.json"  # in the run directory: {"holding", "answered", "since"} for the metrics exporter
STATE_EVERY_S = 1.0  # while answering, the count is written at most this often
HOLDING_POLL_S = 0.05  # while answering: how soon vLLM's listener is seen (the overlap above)
RELEASED_POLL_S = 0.1  # while vLLM serves: how soon its death is seen (one sock_diag query)
READ_TIMEOUT_S = 5.0  # a client that has not sent a whole request head within this is dropped
# The answer is the same for everyone and takes no time, so a connection is busy only for an instant: the limit
# bounds what idle or slow clients hold (the idlest one makes room for a new one), well below the usual 1024 open
# files. idle_timeout bounds the head (from the connection: its bytes do not renew it). No body is ever read (see
# Gap.answer), so max_body is 0 (read_body would refuse any): after the answer, aiohttp reads and drops what body
# comes for up to lingering_s (within read_timeout), keeping none of it.
LIMITS = Limits(max_connections=512, idle_timeout=READ_TIMEOUT_S, read_timeout=READ_TIMEOUT_S, max_body=0,
                lingering_s=2.0)
STOP_DRAIN_S = 1.0  # at a stop, answers being written may finish within this
ERROR_TYPE = "gap_error"  # `error.type` of the server's own refusals (malformed requests, too many connections)
LISTEN_STATE = "0A"  # TCP_LISTEN in /proc/net/tcp
HEADER = "X-Appliance-Gap"  # marks the appliance's answer (vLLM's own answers never carry it)


def listeners(port: int, proc_net: str | None = None) -> set[int]:
    """Socket inodes listening on TCP `port` (any address, IPv4 and IPv6) in this network namespace: from the
    kernel's sock_diag netlink interface, asked for listening sockets only (the kernel then walks its
    listening hash alone, never the connections: a few microseconds however busy vLLM is), or, where
    netlink is not available, from /proc/net/tcp{,6} (which walks every connection bucket: milliseconds)."""
    if proc_net is None:
        found = diag_listeners(port)
        if found is not None:
            return found
    return proc_listeners(port, proc_net or "/proc/net")


NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY = 4, 20
NLM_F_REQUEST, NLM_F_DUMP, NLMSG_ERROR, NLMSG_DONE = 0x1, 0x300, 2, 3
TCPF_LISTEN = 1 << 10


def diag_listeners(port: int) -> set[int] | None:
    """linux/inet_diag.h: one SOCK_DIAG_BY_FAMILY dump per address family, states = TCPF_LISTEN; None when
    the kernel does not answer it."""
    found: set[int] = set()
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as nl:
            nl.settimeout(1.0)
            for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), 1):
                # nlmsghdr (16) + inet_diag_req_v2: family, protocol, ext, pad, states, inet_diag_sockid (48)
                req = struct.pack("=BBBBI48x", family, socket.IPPROTO_TCP, 0, 0, TCPF_LISTEN)
                nl.send(struct.pack("=IHHII", 16 + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP,
                                    seq, 0) + req)
                done = False
                while not done:
                    data = nl.recv(65536)
                    offset = 0
                    while offset + 16 <= len(data):
                        length, kind = struct.unpack_from("=IH", data, offset)
                        if length < 16:
                            return None
                        if kind == NLMSG_DONE:
                            done = True
                            break
                        if kind == NLMSG_ERROR:
                            return None
                        # inet_diag_msg: family, state, timer, retrans, then inet_diag_sockid (sport big-endian
                        # first), expires, rqueue, wqueue, uid, inode
                        body = offset + 16
                        sport = struct.unpack_from("!H", data, body + 4)[0]
                        inode = struct.unpack_from("=I", data, body + 68)[0]
                        if sport == port:
                            found.add(inode)
                        offset += (length + 3) & ~3
    except (OSError, struct.error):
        return None
    return found


def proc_listeners(port: int, proc_net: str = "/proc/net") -> set[int]:
    found: set[int] = set()
    for name in ("tcp", "tcp6"):
        try:
            with open(os.path.join(proc_net, name)) as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if len(fields) > 9 and fields[3] == LISTEN_STATE and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        found.add(int(fields[9]))
        except OSError:
            continue
    return found


class Gap:
    def __init__(self, host: str, port: int, retry_after: int, off_file: Path | None = None,
                 say: Callable[..., None] | None = None, proc_net: str | None = None, state_file: Path | None = None,
                 limits: Limits = LIMITS) -> None:
        self.host, self.port, self.retry_after = host, port, retry_after
        self.off_file, self.proc_net, self.state_file = off_file, proc_net, state_file
        self.state_written, self.state_shown = 0.0, (False, 0)
        self.say = say or (lambda message, **kw: None)
        self.sock: socket.socket | None = None
        self.inode = 0
        self.answered = 0  # written on the server's loop, read by the watching thread: an int, no lock needed
        self.rounds = 0  # rounds of the watching loop so far (a test waits for rounds instead of sleeping)
        self.bind_problem = ""
        self.stopping = threading.Event()
        self.http = Server(self.answer, None, None, limits, self.log, error_type=ERROR_TYPE)
        self.http_thread: threading.Thread | None = None

    @staticmethod
    def why() -> str:
        return "vLLM is not serving (starting, restarting or stopping)"

    def log(self, message: str, level: str = "info", event: str = "message", **fields: Any) -> None:
        """The server's own lines (a failure of its code; never a request's bytes), through `say`."""
        self.say(message, event=event, level=level, **fields)

    async def answer(self, request: web.BaseRequest) -> web.StreamResponse:
        """Every request that got past the server's checks: 503 + Retry-After, in OpenAI's error shape (OpenAI
        clients show the message), on a connection that then closes (the next request opens a new connection:
        maybe to vLLM). Answered at once, without reading the body: the answer does not depend on it, a client
        that sent `Expect: 100-continue` is spared the upload, and a slow one cannot turn its 503 into a 408.
        What body comes anyway aiohttp reads and drops after the answer (LIMITS.lingering_s, nothing kept), so
        that the client reads the 503 instead of a reset. HEAD: aiohttp sends the head alone."""
        self.answered += 1
        resp = error_response(503, f"{self.why()}; retry after {self.retry_after} s", "service_unavailable")
        resp.headers["Retry-After"] = str(self.retry_after)
        resp.headers[HEADER] = "1"
        return resp

    # -- the port -------------------------------------------------------------------------------------------
    def family(self) -> int:
        # As vLLM's create_server_socket: IPv6 only for an IPv6 literal.
        try:
            socket.inet_pton(socket.AF_INET6, self.host)
            return socket.AF_INET6
        except OSError:
            return socket.AF_INET

    def hold(self) -> bool:
        s = socket.socket(self.family(), socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind((self.host, self.port))
            s.listen(BACKLOG)
        except OSError as e:
            s.close()
            problem = e.strerror or str(e)
            if problem != self.bind_problem:  # say it once, not every poll
                self.bind_problem = problem
                busy = e.errno == errno.EADDRINUSE
                self.say(f"cannot listen on {self.host}:{self.port} ({problem}); "
                         + ("a process that did not set SO_REUSEPORT holds it; " if busy else "")
                         + "trying again", event="bind_failed")
            return False
        self.bind_problem = ""
        self.serving().serve_socket(s)
        self.sock, self.inode = s, os.fstat(s.fileno()).st_ino
        self.say(f"answering {self.host}:{self.port} with 503 (Retry-After: {self.retry_after}) while vLLM does "
                 "not serve it", event="holding")
        self.write_state(force=True)
        return True

    def serving(self) -> Server:
        """The HTTP server, started at the first hold (its loop runs in a thread of its own)."""
        if self.http_thread is None:
            self.http_thread = self.http.start_thread("gap-http")
        return self.http

    def write_state(self, force: bool = False) -> None:
        """What the metrics exporter shows (appliance_gap_holding, appliance_gap_answers): atomically, at every
        change of hands, and otherwise when the count moved, at most every STATE_EVERY_S."""
        now = time.monotonic()
        shown = (self.sock is not None, self.answered)
        if self.state_file is None or (not force and (shown == self.state_shown
                                                      or now - self.state_written < STATE_EVERY_S)):
            return
        self.state_written, self.state_shown = now, shown
        try:
            state.save(self.state_file, {"holding": shown[0], "answered": shown[1], "since": time.time()})
        except OSError:
            pass  # a full run directory must not stop the answers

    def release(self, why: str) -> None:
        """Answer what is already queued on our socket, then close it (Server.close_socket)."""
        assert self.sock is not None
        self.http.close_socket(self.sock)
        self.sock, self.inode = None, 0
        self.say(f"{why}: the port is vLLM's alone ({self.answered} answered with 503 so far)", event="released")
        self.write_state(force=True)

    # -- the loop -------------------------------------------------------------------------------------------
    def stand_down(self) -> bool:
        """A vLLM that cannot share the port runs (GAP_OFF names its pid): leave the port to it."""
        if self.off_file is None:
            return False
        try:
            pid = int(self.off_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return False
        if pid_alive(pid):
            return True
        try:
            self.off_file.unlink()
        except OSError:
            pass
        return False

    def others_listen(self) -> bool:
        return bool(listeners(self.port, self.proc_net) - {self.inode})

    def step(self) -> None:
        """One round: decide whether to hold the port, then wait a poll (the server answers meanwhile)."""
        self.rounds += 1
        off = self.stand_down()
        others = self.others_listen()
        if self.sock is not None and (off or others):
            self.release("vLLM listens on the port" if others else "a vLLM that cannot share the port starts")
        elif self.sock is None and not off and not others:
            self.hold()
        self.stopping.wait(RELEASED_POLL_S if self.sock is None else HOLDING_POLL_S)
        self.write_state()  # the answers of this round (and those to connections accepted before a release)

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                self.step()
            if self.sock is not None:
                self.release("stopping")
        finally:
            self.http.shutdown(STOP_DRAIN_S)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        print("usage: python -m entrypoint.programs.gap PLAN_FILE", file=sys.stderr)
        return 2
    plan = read_plan(argv[0])
    run = RunDir(Path(argv[0]).parent)

    def say(message: str, event: str = "message", level: str = "info", **fields: Any) -> None:
        applog.emit(NAME, message, level=level, event=event, stream=sys.stdout, text_prefix="", **fields)

    gap = Gap(plan.api_host, plan.api_port, int(plan.appliance.gap_retry_after),
              run.root / GAP_OFF, say, state_file=run.root / GAP_STATE)
    signal.signal(signal.SIGTERM, lambda *_: gap.stopping.set())
    gap.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
