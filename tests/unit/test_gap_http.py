"""The gap program's HTTP side (gap.py on common/webserver.py) against hostile clients, over raw sockets: each
request gets the 503 or a clean 4xx/505, or its connection is closed; no traceback and no line in the log; and the
next client is answered. The port's change of hands is tests/unit/test_gap_answer.py; the generated requests are
tests/property/test_hostile_http.py. No timing in the assertions: waits are bounded by socket timeouts and
deadlines, and a test that needs the server to close a connection gives it short timeouts."""
from __future__ import annotations

import resource
import socket
import threading
import time

import pytest
import requests

from entrypoint.programs import gap as gapmod

from gap_stand import RETRY_AFTER, serve_gap
from raw_http import exchange, reset, status_of

SECRET = "sk-gap-planted-Zq"
SHORT = {"idle_timeout": 1.0, "read_timeout": 1.0}  # s: what the gap closes, it closes within a test's patience


@pytest.fixture
def gap():
    """gap(**Limits fields) -> GapStand; stopped after the test, which must have left nothing in the log."""
    started = []

    def start(**limits):
        stand = serve_gap(**{**SHORT, **limits})
        started.append(stand)
        return stand

    yield start
    for stand in started:
        stand.stop()
        assert stand.other_lines() == []


def answered_by_the_gap(port: int) -> bool:
    r = requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=10)
    return (r.status_code == 503 and r.headers["Retry-After"] == str(RETRY_AFTER)
            and r.headers[gapmod.HEADER] == "1" and r.headers["Connection"] == "close")


def read_to_end(s: socket.socket) -> bytes:
    """What the gap sends until it closes the connection (a reset ends it too; the socket's timeout fails)."""
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    return out


HEAD = b"POST /v1/completions HTTP/1.1\r\nHost: gap\r\n"
REFUSED = {
    "CL and TE": HEAD + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "two lengths": HEAD + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "a negative length": HEAD + b"Content-Length: -1\r\n\r\nhello",
    "a negative chunk": HEAD + b"Transfer-Encoding: chunked\r\n\r\n-1\r\n" + b"x" * 4096 + b"\r\n0\r\n\r\n",
    "a hex chunk prefix": HEAD + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
    "an overflowing chunk": HEAD + b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    "a coding other than chunked last": HEAD + b"Transfer-Encoding: chunked, gzip\r\n\r\nhello",
    "TE in HTTP/1.0": b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "obsolete line folding": HEAD + b"X-A: a\r\n b\r\n\r\n",
    "a header flood": HEAD + b"".join(b"X-%d: a\r\n" % i for i in range(gapmod.LIMITS.max_headers + 1)) + b"\r\n",
    "a header over max_field": HEAD + b"X-Long: " + b"a" * (gapmod.LIMITS.max_field + 1) + b"\r\n\r\n",
    "a request line over max_field": b"GET /" + b"a" * (gapmod.LIMITS.max_field + 1) + b" HTTP/1.1\r\n\r\n",
    "no Host": b"GET / HTTP/1.1\r\n\r\n",
    "HTTP/2.0": b"GET / HTTP/2.0\r\nHost: gap\r\n\r\n",
    "an asterisk target": b"OPTIONS * HTTP/1.1\r\nHost: gap\r\n\r\n",
    "a space in the path": b"GET /a b HTTP/1.1\r\nHost: gap\r\n\r\n",
    "a non-ASCII path": b"GET /v1/mod\xc3\xa9ls HTTP/1.1\r\nHost: gap\r\n\r\n",
    "CONNECT": b"CONNECT vllm:8000 HTTP/1.1\r\nHost: vllm:8000\r\n\r\n",
    "TLS to a plain port": b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 64,
    "bare LF": b"GET / HTTP/1.1\nHost: gap\n\n",
}


@pytest.mark.parametrize("data", REFUSED.values(), ids=REFUSED.keys())
def test_what_rfc_9112_refuses_gets_a_clean_4xx_or_505_and_the_next_client_the_503(gap, capfd, data):
    stand = gap()
    out = exchange(stand.port, data + SECRET.encode())
    assert (400 <= status_of(out) < 500 or status_of(out) == 505) and b"gap_error" in out
    assert stand.gap.answered == 0  # refused by the server before the gap's own answer
    assert answered_by_the_gap(stand.port)
    logged = capfd.readouterr()
    assert "Traceback" not in logged.out + logged.err and SECRET not in logged.out + logged.err + out.decode("latin-1")


@pytest.mark.parametrize("target", [b"/../../etc/passwd", b"/%zz", b"/v1/models?x=%00", b"http://elsewhere/v1/models",
                                    b"//", b"/" + b"a" * 4000])
def test_odd_paths_get_the_503_like_any_other(gap, target):
    stand = gap()
    out = exchange(stand.port, b"GET " + target + b" HTTP/1.1\r\nHost: gap\r\n\r\n")
    assert status_of(out) == 503 and b"Retry-After: 7" in out and stand.gap.answered == 1


def test_head_gets_the_head_alone_and_every_answer_closes_its_connection(gap):
    stand = gap()
    out = exchange(stand.port, b"HEAD /v1/models HTTP/1.1\r\nHost: gap\r\n\r\n")
    head, _, rest = out.partition(b"\r\n\r\n")
    assert status_of(out) == 503 and rest == b"" and b"Connection: close" in head
    assert b"Content-Length: " in head and b"X-Appliance-Gap: 1" in head
    # a keep-alive client is answered once, then closed: its next request opens a connection (maybe to vLLM)
    two = b"GET /v1/models HTTP/1.1\r\nHost: gap\r\n\r\n" * 2
    assert exchange(stand.port, two).count(b"HTTP/1.1 503") == 1


def test_a_body_is_not_waited_for_and_its_rest_is_dropped_for_a_clean_close(gap):
    """The answer comes before the body (an `Expect: 100-continue` client is spared the upload); what body comes
    anyway is read and dropped, so that the client reads its 503 and then sees the end, not a reset."""
    stand = gap()
    with socket.create_connection(("127.0.0.1", stand.port), timeout=10) as s:
        s.sendall(HEAD + b"Content-Length: 1000000\r\nExpect: 100-continue\r\n\r\n")
        answer = s.recv(65536)
        assert status_of(answer) == 503 and b"100 Continue" not in answer
        s.sendall(b"x" * 1_000_000)
        assert s.recv(100) == b""  # the end (a reset would raise here)
    big = requests.post(f"http://127.0.0.1:{stand.port}/v1/completions", json={"prompt": "x" * 2_000_000}, timeout=10)
    assert big.status_code == 503 and big.headers[gapmod.HEADER] == "1"


def test_a_framing_error_after_the_answer_closes_the_connection_quietly(gap, capfd):
    """A negative chunk size that comes after the head (the 503 already sent): the connection closes, no log."""
    stand = gap()
    for bad in (b"-1\r\n" + b"x" * 4096 + b"\r\n0\r\n\r\n", b"zz\r\nhello\r\n", b"5\r\nhelloXX0\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", stand.port), timeout=10) as s:
            s.sendall(HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
            assert status_of(s.recv(65536)) == 503
            s.sendall(bad)
            read_to_end(s)
    assert answered_by_the_gap(stand.port)
    logged = capfd.readouterr()
    assert "Traceback" not in logged.out + logged.err


def raise_open_files(need: int) -> None:
    """This process holds both ends of every connection: raise its soft limit of open files if it is lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"{need} open files needed, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


IDLE = 1500


def test_idle_connections_by_the_thousand_leave_room_for_a_client(gap):
    """http.server gave each connection a thread and had no limit. Now the connection limit (LIMITS) holds: the
    connection idle the longest is closed to make room for a new one, and the idle timeout (long here, so that only
    the limit acts) would close the rest."""
    stand = gap(idle_timeout=60.0)
    raise_open_files(2 * IDLE + 200)
    idle: list[socket.socket] = []
    try:
        for _ in range(IDLE):
            idle.append(socket.create_connection(("127.0.0.1", stand.port), timeout=10))
        assert answered_by_the_gap(stand.port)
        assert idle[0].recv(100) == b"", "the idlest connection made room"  # closed by the gap, not the timeout
        assert answered_by_the_gap(stand.port)
    finally:
        for s in idle:
            s.close()
    assert answered_by_the_gap(stand.port) and stand.gap.http.refused == {}


def test_a_slow_client_is_closed_and_holds_up_nobody(gap):
    """A head sent a byte at a time and never finished (slowloris): closed after idle_timeout, which its bytes do
    not renew; the others are answered meanwhile."""
    stand = gap()
    closed = threading.Event()

    def dribble():
        with socket.create_connection(("127.0.0.1", stand.port), timeout=10) as s:
            s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: gap\r\n")
            deadline = time.monotonic() + 30
            try:
                while time.monotonic() < deadline:
                    s.sendall(b"X")
                    time.sleep(0.05)
            except (BrokenPipeError, ConnectionResetError):
                closed.set()

    slow = threading.Thread(target=dribble, daemon=True)
    slow.start()
    for _ in range(5):
        assert answered_by_the_gap(stand.port)
    slow.join(40)
    assert closed.is_set(), "the gap kept a slow head's connection open"
    assert stand.gap.answered == 5


def test_a_client_that_resets_mid_request_is_no_traceback(gap, capfd):
    stand = gap()
    pieces = [b"", b"GET /v1/mod", HEAD + b"Content-Length: 100000\r\n\r\n" + b"x" * 1000,
              HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhe"]
    for piece in pieces:
        s = socket.create_connection(("127.0.0.1", stand.port), timeout=10)
        s.sendall(piece)
        reset(s)
    assert answered_by_the_gap(stand.port)
    logged = capfd.readouterr()
    assert "Traceback" not in logged.out + logged.err


def test_a_connection_made_before_the_release_is_answered_after_it(gap):
    """Connections the kernel completed before vLLM listened are the gap's: answered, not reset (webserver's
    close_socket accepts what is queued before it closes the socket)."""
    stand = gap()
    early = [socket.create_connection(("127.0.0.1", stand.port), timeout=10) for _ in range(3)]
    vllm = socket.socket()
    vllm.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    vllm.bind(("127.0.0.1", stand.port))
    vllm.listen(16)
    try:
        deadline = time.monotonic() + 10
        while stand.gap.sock is not None:
            assert time.monotonic() < deadline, "the gap did not let go of the port"
            time.sleep(0.01)
        for s in early:
            with s:
                s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: gap\r\n\r\n")
                assert status_of(read_to_end(s)) == 503
    finally:
        vllm.close()
