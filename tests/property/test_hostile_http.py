"""Hostile HTTP against the appliance's network surfaces on common/webserver.py: the coordinator router (in front
of a recording replica, tests/router_stands.py), the metrics endpoint and the gap program's 503 on vLLM's port
(tests/gap_stand.py). Generated requests, sent as raw
bytes: request lines and versions, header names and values, every way to frame a body (lengths, chunks, both,
neither), obsolete line folding, bare LF, oversized fields; delivered whole, cut off and closed, or cut off and
left hanging (a slow or idle client). For each: a well-formed answer whose status is the replica's (the router
passed a valid request on; the gap's 503 with Retry-After) or a 4xx/505 of the server's own, or a connection
closed without an answer; then a
normal request is answered; at the end nothing is in flight and no traceback or planted secret reached any
output. No timing in the assertions: the servers' client timeout is short, so that a hanging example ends when
the server closes the connection.
"""
from __future__ import annotations

import os
import socket

import pytest

pytest.importorskip("hypothesis", reason="the property suite needs hypothesis (scripts/test.sh installs it)")

import requests  # noqa: E402
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402
from prometheus_client.core import GaugeMetricFamily  # noqa: E402

from entrypoint.common import webserver  # noqa: E402
from entrypoint.programs import gap, metrics  # noqa: E402

from gap_stand import RETRY_AFTER, serve_gap  # noqa: E402
from ports import free_port  # noqa: E402
from raw_http import status_of  # noqa: E402
from router_stands import echo_server, serve_router, url_of, wait_until_idle  # noqa: E402

SECRET = "sk-hostile-planted-Zq"
CLIENT_TIMEOUT = 0.3  # s: a hanging example waits this long for the server to close it
MAX_BODY = 256  # bytes: the generated bodies (up to 300, or any declared length) fall on both sides of it
# Each example costs at most about CLIENT_TIMEOUT, so the default 30 examples take a few seconds, the same ones at
# every run. HOSTILE_EXAMPLES=500 runs that many random ones instead (a longer hunt, by hand).
EXAMPLES = os.environ.get("HOSTILE_EXAMPLES")
HOSTILE = settings(max_examples=int(EXAMPLES or 30), derandomize=EXAMPLES is None, deadline=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

EOL = st.sampled_from([b"\r\n"] * 6 + [b"\n", b"\r"])
METHODS = st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT",
                           b"TRACE", b"G@T", b"", b"get"])
TARGETS = st.one_of(
    st.sampled_from([b"/v1/completions", b"/v1/models", b"/health", b"/metrics", b"*", b"http://x/v1/models",
                     b"/%zz", b"/a b", b"", b"/v1/models?key=" + SECRET.encode()]),
    st.binary(max_size=16).map(lambda b: b"/" + b))
VERSIONS = st.sampled_from([b"HTTP/1.1"] * 4 + [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.2", b"http/1.1", b"HTTP/1",
                            b"HTTP/1.1 ", b""])
LENGTHS = st.one_of(st.sampled_from([b"0", b"5", b"-1", b"+5", b"0x5", b"5, 5", b" 5", b"5 5", b"",
                                     b"99999999999999999999999"]),
                    st.integers(0, 400).map(lambda n: str(n).encode()))
CODINGS = st.sampled_from([b"chunked", b"gzip", b"chunked, gzip", b"gzip, chunked", b"xchunked", b" chunked",
                           b"identity", b"CHUNKED"])
CHUNK_SIZES = st.one_of(st.sampled_from([b"-1", b"+5", b"0x5", b"ffffffffffffffffffff", b"zz", b"", b"5;a=b",
                                         b" 5"]),
                        st.integers(0, 300).map(lambda n: b"%x" % n))
HEADERS = st.one_of(
    st.tuples(st.just(b"Host"), st.sampled_from([b"router", b"", b"a b", b"x:1"])),
    st.tuples(st.just(b"Content-Length"), LENGTHS),
    st.tuples(st.just(b"Transfer-Encoding"), CODINGS),
    st.tuples(st.just(b"Connection"), st.sampled_from([b"close", b"keep-alive", b"X-Hop", b"upgrade"])),
    st.tuples(st.sampled_from([b"X-Forwarded-For", b"Forwarded", b"Expect", b"Upgrade", b"TE", b"Trailer"]),
              st.sampled_from([b"6.6.6.6", b"100-continue", b"h2c", b"trailers", b"for=x"])),
    st.tuples(st.just(b"Authorization"), st.just(b"Bearer " + SECRET.encode())),
    st.tuples(st.binary(min_size=0, max_size=12), st.binary(max_size=24)),  # any bytes in a name or a value
    st.tuples(st.just(b"X-Folded"), st.just(b"a\r\n b")),  # obsolete line folding
    st.integers(8000, 20000).map(lambda n: (b"X-Long", b"a" * n)),
)


def sometimes(draw, hostile, usual: bytes, one_in: int = 4) -> bytes:
    """`usual` most of the time, else something drawn from `hostile`: a request mostly well formed reaches the
    layers behind the parser (body limits, timeouts, the relay) instead of stopping at its first byte."""
    return draw(hostile) if draw(st.integers(1, one_in)) == 1 else usual


@st.composite
def chunked(draw, body: bytes) -> bytes:
    """`body` in chunks, the sizes now and then hostile, the last chunk and trailers now and then odd or missing."""
    pieces, at = [], 0
    while at < len(body):
        n = draw(st.integers(1, max(1, len(body) - at)))
        pieces.append(sometimes(draw, CHUNK_SIZES, b"%x" % n, 6) + b"\r\n" + body[at:at + n] + b"\r\n")
        at += n
    return b"".join(pieces) + sometimes(draw, st.sampled_from([b"0\r\nX-T: 1\r\n\r\n", b"", b"0\r\n", b"-0\r\n\r\n"]),
                                        b"0\r\n\r\n")


COMPLETION = (b"POST", b"/v1/completions", b'{"model": "m", "prompt": "hi"}')
SCRAPE = (b"GET", b"/metrics", b"")


@st.composite
def hostile_requests(draw, usual: tuple[bytes, bytes, bytes]) -> tuple[bytes, str]:
    """(bytes, how they are delivered: whole, cut and closed, cut and left hanging), around the `usual` request
    (method, target, body) of the server under test."""
    eol = sometimes(draw, EOL, b"\r\n", 8)
    line = (sometimes(draw, METHODS, usual[0]) + b" " + sometimes(draw, TARGETS, usual[1]) + b" "
            + sometimes(draw, VERSIONS, b"HTTP/1.1"))
    body = sometimes(draw, st.binary(max_size=300), usual[2])
    fields = [(b"Host", b"router")] if draw(st.integers(1, 8)) > 1 else []
    framing = draw(st.sampled_from(["length", "length", "chunked", "chunked", "none", "both"]))
    if framing in ("length", "both"):
        fields.append((b"Content-Length", sometimes(draw, LENGTHS, str(len(body)).encode())))
    if framing in ("chunked", "both"):
        fields.append((b"Transfer-Encoding", sometimes(draw, CODINGS, b"chunked")))
        body = draw(chunked(body))
    if framing == "none":
        body = b""
    if draw(st.booleans()):
        fields.append((b"Connection", b"close"))
    fields += draw(st.lists(HEADERS, max_size=3))
    fields = draw(st.permutations(fields))
    data = line + eol + b"".join(name + b": " + value + eol for name, value in fields) + eol + body
    how = draw(st.sampled_from(["whole"] * 4 + ["cut", "hang"]))
    if how != "whole":
        data = data[:draw(st.integers(0, max(0, len(data) - 1)))]
    return data, how


def deliver(port: int, data: bytes, how: str) -> bytes:
    """What the server answered before it closed the connection. `hang` sends and waits: the server's client
    timeout ends it (the socket's own 10 s would only mean the server never did, and fail below)."""
    out = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            s.sendall(data)
            if how == "cut":
                s.shutdown(socket.SHUT_WR)
            while chunk := s.recv(65536):
                out += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass
        except TimeoutError:
            pytest.fail(f"the server kept a connection open past its client timeout: {data[:200]!r}")
    return out


def status_seen(out: bytes, how: str) -> int | None:
    """The answer's status, or None for a connection closed without an answer (fine for a request that never
    became whole or valid); noted as a hypothesis event, so that a run shows what the examples reached."""
    status = status_of(out) if out else None
    event(f"{how}: {status or 'closed without an answer'}")
    return status


def check_answer(out: bytes, how: str, error_type: str, passed_on: bool = False, ok: bool = True) -> None:
    """A closed connection, or a well-formed answer that is no failure of the server's own (its errors carry
    `error_type`; with `passed_on`, any other answer is the replica's to a request the router found valid)."""
    status = status_seen(out, how)
    if status is None:
        return
    own = not passed_on or b'"type": "%s"' % error_type.encode() in out
    if own:
        assert status < 500 or status == 505, out[:300]
    if not ok:
        assert status >= 400, out[:300]


@pytest.fixture(scope="module")
def replica():
    server = echo_server("A")
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def router(replica):
    r, server, port, lines = serve_router(url_of(replica), client_timeout=CLIENT_TIMEOUT, max_body=MAX_BODY)
    yield r, port, lines
    server.shutdown()
    server.server_close()


@HOSTILE
@given(request=hostile_requests(COMPLETION))
def test_the_router_answers_hostile_requests_cleanly_and_keeps_serving(router, capfd, request):
    r, port, lines = router
    data, how = request
    check_answer(deliver(port, data, how), how, "router_error", passed_on=True)
    assert requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).json() == {"replica": "A"}
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err and SECRET not in out + err
    assert not any("Traceback" in line or "internal error" in line or SECRET in line for line in lines)
    wait_until_idle(r)


@pytest.fixture
def metrics_endpoint():
    registry = CollectorRegistry(auto_describe=False)

    class Up:
        def collect(self):
            yield GaugeMetricFamily("appliance_test_up", "A test gauge.", value=1.0)

    registry.register(Up())
    lines: list[str] = []
    limits = webserver.Limits(**{**metrics.LIMITS.__dict__, "idle_timeout": CLIENT_TIMEOUT,
                                 "read_timeout": CLIENT_TIMEOUT, "max_body": MAX_BODY})
    server = webserver.Server(metrics.make_handler(registry), "127.0.0.1", free_port(), limits,
                              lambda msg, *a, **k: lines.append(msg), error_type="metrics_error")
    server.start_thread("test-metrics")
    yield server.port, lines
    server.shutdown()
    server.server_close()


@HOSTILE
@given(request=hostile_requests(SCRAPE))
def test_the_metrics_endpoint_answers_hostile_requests_cleanly_and_keeps_serving(metrics_endpoint, capfd, request):
    port, lines = metrics_endpoint
    data, how = request
    out = deliver(port, data, how)
    # a 200 only for a scrape: GET or HEAD of /metrics
    check_answer(out, how, "metrics_error", ok=data.startswith((b"GET /metrics ", b"HEAD /metrics ")))
    assert requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text.startswith("# HELP appliance_test_up")
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err and SECRET not in out + err and lines == []


@pytest.fixture(scope="module")
def gap_stand():
    """The gap program on a free port, its client timeouts short (a hanging example ends when it closes)."""
    stand = serve_gap(idle_timeout=CLIENT_TIMEOUT, read_timeout=CLIENT_TIMEOUT)
    yield stand
    stand.stop()


@HOSTILE
@given(request=hostile_requests(COMPLETION))
def test_the_gap_program_answers_hostile_requests_cleanly_and_keeps_serving(gap_stand, capfd, request):
    data, how = request
    out = deliver(gap_stand.port, data, how)
    status = status_seen(out, how)
    if status == 503:  # the gap's own answer, never a failure
        head = out.partition(b"\r\n\r\n")[0]
        assert b"\r\nRetry-After: %d\r\n" % RETRY_AFTER in head and b"\r\nX-Appliance-Gap: 1\r\n" in head, out[:300]
    else:
        assert status is None or 400 <= status < 500 or status == 505, out[:300]
    r = requests.get(f"http://127.0.0.1:{gap_stand.port}/v1/models", timeout=10)
    assert r.status_code == 503 and r.headers[gap.HEADER] == "1"
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err and SECRET not in out + err and gap_stand.other_lines() == []


@pytest.fixture
def front_proxy(replica):
    """The front proxy (entrypoint/front/proxy.py) in front of the recording replica, its limits short."""
    from entrypoint.front import proxy as front
    lines: list[str] = []
    limits = webserver.Limits(idle_timeout=CLIENT_TIMEOUT, read_timeout=CLIENT_TIMEOUT, max_body=MAX_BODY,
                              max_connections=64)
    port = free_port()
    server, p = front.serve("127.0.0.1", port, front.Config(upstream=url_of(replica), limits=limits,
                                                            health_interval=0.05),
                            lambda msg, *a, **k: lines.append(msg))
    while requests.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code != 200:
        pass  # the proxy's first probe of the replica
    yield p, port, lines
    server.shutdown()
    server.server_close()


@HOSTILE
@given(request=hostile_requests(COMPLETION))
def test_the_front_proxy_answers_hostile_requests_cleanly_and_keeps_serving(front_proxy, capfd, request):
    p, port, lines = front_proxy
    data, how = request
    check_answer(deliver(port, data, how), how, "front_proxy_error", passed_on=True)
    assert requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).json() == {"replica": "A"}
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err and SECRET not in out + err
    assert not any("Traceback" in line or "internal error" in line or SECRET in line for line in lines)
    assert p.counters.held_now == 0 and p.counters.dropped == 0
