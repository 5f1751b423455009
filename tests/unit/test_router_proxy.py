"""The coordinator router's HTTP side (entrypoint/cluster/proxy.py on common/webserver.py) in front of
tests/stubs/vllm_stub.py (the stand-in vLLM of the supervisor tests: no /tokenize, so every placement falls back
to load) or of recording replicas (tests/router_stands.py), with no coordinator at all: the request framing it
accepts and refuses (RFC 9112), its body, connection and time limits, streams from a server that ends its body by
closing, the API key passed through, forwarding and hop-by-hop fields, round robin between two replicas, and
requests cut off by either side leave nothing in flight and no traceback. The placement by the real
coordinator: tests/contract/test_coordinator_router.py; generated hostile requests:
tests/property/test_hostile_http.py."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from entrypoint.cluster import router as product

from ports import free_port
from raw_http import exchange, reset, status_of
from router_stands import echo_server, serve_router, url_of, wait_until_idle

REPO = Path(__file__).resolve().parents[2]
KEY = "sk-stub-key-Zq"




@pytest.fixture
def stub(tmp_path):
    port = free_port()
    env = {**os.environ, "STUB_STREAM": "1", "STUB_TOKEN_INTERVAL": "0.001", "VLLM_API_KEY": KEY}
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "stubs" / "vllm_stub.py"), "serve", "stub/model",
                             "--host", "127.0.0.1", "--port", str(port), "--served-model-name", "m"],
                            env=env, stdout=(tmp_path / "stub.log").open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(url + "/health", timeout=1).status_code == 200:
                break
        except requests.RequestException:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "stub.log").read_text()
        time.sleep(0.1)
    yield proc, url
    proc.kill()
    proc.wait(10)


@pytest.fixture
def start_router():
    """start_router(*replica_urls, **RouterConfig fields) -> (router, port, log lines): router_stands.serve_router,
    stopped after the test."""
    servers = []

    def start(*urls: str, **overrides):
        router, server, port, lines = serve_router(*urls, **overrides)
        servers.append(server)
        return router, port, lines

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def routed(stub, start_router):
    proc, url = stub
    router, port, lines = start_router(url)
    yield proc, router, f"http://127.0.0.1:{port}", port, lines


AUTH = {"Authorization": f"Bearer {KEY}"}


def test_a_stream_ended_by_closing_reaches_the_client_whole_and_the_key_passes(routed):
    _, router, url, _, lines = routed
    body = {"model": "m", "prompt": "one two three", "max_tokens": 4, "stream": True}
    r = requests.post(url + "/v1/completions", json=body, headers=AUTH, timeout=30)
    events = [line for line in r.text.split("\n\n") if line]
    assert r.status_code == 200 and r.headers["Transfer-Encoding"] == "chunked"
    assert events[-1] == "data: [DONE]" and len(events) == 4 + 2  # 4 tokens, the usage, [DONE]
    assert requests.post(url + "/v1/completions", json=body, timeout=30).status_code == 401  # no key: vLLM's 401
    assert requests.get(url + "/v1/models", headers=AUTH, timeout=10).json()["data"][0]["id"] == "m"
    # no /tokenize on the stub, no coordinator: placed by load, and counted so
    text = requests.get(url + "/metrics", timeout=10).text
    assert 'appliance_router_fallbacks_total{reason="tokenize"} 2' in text
    wait_until_idle(router)
    assert not any(KEY in line for line in lines)


def test_http_1_0_clients_get_the_stream_until_the_connection_closes(routed):
    _, _, _, port, _ = routed
    body = json.dumps({"model": "m", "prompt": "x", "max_tokens": 2, "stream": True}).encode()
    out = exchange(port, b"POST /v1/completions HTTP/1.0\r\nContent-Type: application/json\r\nAuthorization: Bearer "
              + KEY.encode() + b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    head, _, rest = out.partition(b"\r\n\r\n")
    # answered in the client's version (aiohttp's way; RFC 9110 2.5 would rather say 1.1, which 1.0 clients read as
    # well), never chunked
    assert head.startswith(b"HTTP/1.0 200") and b"chunked" not in head.lower()
    assert rest.endswith(b"data: [DONE]\n\n")


def test_request_framing(routed):
    _, router, url, port, _ = routed
    body = json.dumps({"model": "m", "prompt": "x"}).encode()
    # a chunked request body is read whole and sent on with a length
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    out = exchange(port, b"POST /v1/completions HTTP/1.1\r\nHost: router\r\nAuthorization: Bearer " + KEY.encode()
              + b"\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunked)
    assert out.startswith(b"HTTP/1.1 200") and b"cmpl-stub" in out
    # bad or huge lengths are refused before anything is sent on
    out = exchange(port, b"POST /v1/completions HTTP/1.1\r\nHost: router\r\nContent-Length: x\r\n\r\n")
    assert status_of(out) == 400
    out = exchange(port, b"POST /v1/completions HTTP/1.1\r\nHost: router\r\nContent-Length: %d\r\n\r\n"
              % (product.MAX_BODY + 1))
    assert status_of(out) == 413
    out = exchange(port, b"POST /v1/completions HTTP/1.1\r\nHost: router\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    assert status_of(out) == 400
    # not JSON: no placement, passed on as is. The stub closes without an answer (vLLM would say 400): a
    # replica that took the request and said nothing is a 502, but not taken out (it did accept the connection)
    r = requests.post(url + "/v1/completions", data=b"{not json", headers=AUTH, timeout=10)
    assert r.status_code == 502 and r.json()["error"]["type"] == "router_error"
    assert router.replicas[0].healthy and router.replicas[0].errors == 1
    assert requests.get(url + "/health", timeout=10).status_code == 200 and router.in_flight() == 0


def test_a_client_that_leaves_mid_stream_leaves_nothing_in_flight(routed):
    _, router, _, port, _ = routed
    body = json.dumps({"model": "m", "prompt": "x", "max_tokens": 2000, "stream": True, "stub_seconds": 5}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: router\r\nAuthorization: Bearer " + KEY.encode()
                  + b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        deadline = time.monotonic() + 30
        while router.in_flight() == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    deadline = time.monotonic() + 60  # the router notices at its next write, when the stub answers
    while router.in_flight():
        assert time.monotonic() < deadline, "the request stayed in flight after its client left"
        time.sleep(0.1)


def test_a_replica_that_dies_mid_answer_cuts_that_answer_only(routed):
    proc, router, url, _, _ = routed
    body = {"model": "m", "prompt": "x", "max_tokens": 1, "stub_seconds": 30}
    result = {}

    def call():
        try:
            result["r"] = requests.post(url + "/v1/completions", json=body, headers=AUTH, timeout=60)
        except requests.RequestException as e:
            result["e"] = e

    t = threading.Thread(target=call)
    t.start()
    deadline = time.monotonic() + 30
    while router.in_flight() == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.kill()
    t.join(60)
    # the replica took the request and died: the client gets an error (502 or a cut connection), not a hang
    assert "e" in result or result["r"].status_code == 502, result
    assert router.in_flight() == 0
    assert requests.get(url + "/metrics", timeout=10).status_code == 200  # the router itself carries on


# -- the hardening: framing, limits, timeouts, forwarding, placement turns -----------------------------------
@pytest.fixture(scope="module")
def echo_servers():
    servers = [echo_server("A"), echo_server("B")]
    yield [url_of(s) for s in servers], servers
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def echoes(echo_servers):
    """([url of A, url of B], [A, B]), with nothing recorded yet."""
    for server in echo_servers[1]:
        server.got.clear()
    return echo_servers


def completion(prompt: str = "hi") -> bytes:
    return json.dumps({"model": "m", "prompt": prompt}).encode()


def test_two_replicas_take_turns_when_placement_falls_back(echoes, start_router):
    """No coordinator, no /tokenize: each completion falls back to load, and ties go round robin. The tokenizer's
    turn used to move the placement's too, so that every request went to the same one of two replicas."""
    urls, servers = echoes
    _, port, _ = start_router(*urls)
    names = [requests.post(f"http://127.0.0.1:{port}/v1/completions", data=completion(), timeout=30).json()["replica"]
             for _ in range(4)]
    assert names in (["A", "B", "A", "B"], ["B", "A", "B", "A"]), names


def test_forwarding_and_hop_by_hop_fields_are_the_routers_own(echoes, start_router):
    urls, (a, _) = echoes
    router, port, _ = start_router(urls[0])
    r = requests.post(f"http://127.0.0.1:{port}/v1/completions", data=completion(), timeout=30, headers={
        "Authorization": "Bearer k", "X-Custom": "kept", "X-Forwarded-For": "6.6.6.6",
        "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https", "Forwarded": "for=6.6.6.6;proto=https",
        "X-Real-IP": "6.6.6.6", "Connection": "keep-alive, X-Hop", "X-Hop": "secret", "Keep-Alive": "timeout=1",
        "Proxy-Authorization": "Basic eDp4", "TE": "trailers"})
    assert r.status_code == 200
    _, _, got, _ = a.got[-1]
    got = {k.lower(): v for k, v in got.items()}
    assert got["authorization"] == "Bearer k" and got["x-custom"] == "kept"
    assert got["x-forwarded-for"] == "127.0.0.1" and got["x-forwarded-proto"] == "http"
    for name in ("x-forwarded-host", "forwarded", "x-real-ip", "x-hop", "keep-alive", "proxy-authorization", "te"):
        assert name not in got, name
    # the replica's own hop-by-hop fields stay on its hop too
    assert "X-Upstream-Hop" not in r.headers and "Keep-Alive" not in r.headers
    wait_until_idle(router)


FRAMING = {  # RFC 9112 says to refuse each of these (or this server serves no such thing)
    "length and chunked": b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "two equal lengths": b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "two lengths": b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "a length list": b"Content-Length: 5, 5\r\n\r\nhello",
    "a signed length": b"Content-Length: +5\r\n\r\nhello",
    "a negative length": b"Content-Length: -1\r\n\r\nhello",
    "a hex length": b"Content-Length: 0x5\r\n\r\nhello",
    "an overflowing length": b"Content-Length: 99999999999999999999999\r\n\r\nhello",
    "a negative chunk": b"Transfer-Encoding: chunked\r\n\r\n-1\r\n" + b"x" * 4096 + b"\r\n0\r\n\r\n",
    "a signed chunk": b"Transfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n",
    "an overflowing chunk": b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    "a chunk without its CRLF": b"Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
    "a coding other than chunked last": b"Transfer-Encoding: chunked, gzip\r\n\r\nhello",
    "an unknown coding": b"Transfer-Encoding: gzip\r\n\r\nhello",
    "obsolete line folding": b"X-A: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    "space before the colon": b"Content-Length : 5\r\n\r\nhello",
    "a NUL in a value": b"X-A: a\x00b\r\nContent-Length: 0\r\n\r\n",
    "a second Host": b"Host: other\r\nContent-Length: 0\r\n\r\n",
}


@pytest.mark.parametrize("headers", FRAMING.values(), ids=FRAMING.keys())
def test_framing_rfc_9112_refuses_is_refused_and_never_forwarded(echoes, start_router, headers):
    urls, (a, _) = echoes
    router, port, lines = start_router(urls[0])
    logged = len(lines)
    out = exchange(port, b"POST /v1/completions HTTP/1.1\r\nHost: router\r\n" + headers)
    assert 400 <= status_of(out) < 500 and b"router_error" in out
    assert a.got == [] and router.in_flight() == 0 and lines[logged:] == []  # counted in /metrics, not logged
    assert requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=30).json() == {"replica": "A"}


@pytest.mark.parametrize("request_line, status", [
    (b"POST /v1/completions HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 400),
    (b"GET /v1/models HTTP/2.0\r\nHost: router\r\n\r\n", 505),
    (b"GET /v1/models HTTP/1.1\r\n\r\n", 400),  # no Host
    (b"CONNECT replica:8000 HTTP/1.1\r\nHost: replica:8000\r\n\r\n", 405),
    (b"TRACE /v1/models HTTP/1.1\r\nHost: router\r\nAuthorization: Bearer k\r\n\r\n", 405),
    (b"OPTIONS * HTTP/1.1\r\nHost: router\r\n\r\n", 400),
    (b"GET /v1/mod\xc3\xa9ls HTTP/1.1\r\nHost: router\r\n\r\n", 400),  # not ASCII: once stuck in flight
    (b"GET /v1/models HTTP/1.1\nHost: router\n\n", 400),  # bare LF
], ids=["TE in HTTP/1.0", "HTTP/2.0", "no Host", "CONNECT", "TRACE", "asterisk", "non-ASCII target", "bare LF"])
def test_requests_the_router_does_not_serve_get_a_clean_answer_and_nothing_stays_in_flight(
        echoes, start_router, request_line, status):
    urls, (a, _) = echoes
    router, port, lines = start_router(urls[0])
    assert status_of(exchange(port, request_line)) == status
    assert a.got == [] and router.in_flight() == 0
    assert requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=30).json() == {"replica": "A"}
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    assert f'appliance_router_refused_total{{code="{status}"}} 1.0' in text


def test_an_absolute_target_and_obs_text_go_through_as_a_path(echoes, start_router):
    urls, (a, _) = echoes
    router, port, _ = start_router(urls[0])
    out = exchange(port, b"GET http://elsewhere.example/v1/models?x=%20y HTTP/1.1\r\nHost: router\r\n"
                         b"X-Note: caf\xe9\r\nConnection: close\r\n\r\n")
    assert status_of(out) == 200 and a.got[-1][1] == "/v1/models?x=%20y"
    assert a.got[-1][2]["Host"] != "elsewhere.example" and router.in_flight() == 0


def test_a_body_over_the_limit_is_refused_however_it_is_framed(echoes, start_router):
    """A chunk size of -1 once skipped the body limit (the router buffered 200 MiB and sent it on)."""
    urls, (a, _) = echoes
    router, port, _ = start_router(urls[0], max_body=1024 * 1024)
    head = b"POST /v1/completions HTTP/1.1\r\nHost: router\r\n"
    chunk = b"x" * 65536
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(24)) + b"0\r\n\r\n"  # 1.5 MiB
    assert status_of(exchange(port, head + b"Transfer-Encoding: chunked\r\n\r\n" + chunked)) == 413
    assert status_of(exchange(port, head + b"Transfer-Encoding: chunked\r\n\r\n-1\r\n" + chunk * 24)) == 400
    assert status_of(exchange(port, head + b"Content-Length: %d\r\n\r\n" % (2 * 1024 * 1024))) == 413
    assert a.got == [] and router.in_flight() == 0
    small = b"%x\r\n%s\r\n0\r\n\r\n" % (len(completion()), completion())  # within the limit: passed on
    out = exchange(port, head + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + small)
    assert status_of(out) == 200 and a.got[-1][3] == completion()


def test_idle_and_slow_clients_do_not_stop_the_router(echoes, start_router):
    """Thousands of connections that send nothing (or a head that never ends) once left the router answering
    nobody. Now the longest idle one makes room for each new connection over the limit, a silent connection is
    closed after the client timeout, and a body that stops coming is answered 408."""
    urls, (a, _) = echoes
    router, port, lines = start_router(urls[0], max_connections=20, client_timeout=1.0)
    idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(100)]
    try:
        for s in idle[:20]:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: router\r\nX-Slow: ")  # a head that never ends
        for _ in range(3):
            assert requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=30).json() == {"replica": "A"}
        # a connection that says nothing is closed by the router (recv sees the end, not the test's timeout)
        assert idle[-1].recv(100) == b""
    finally:
        for s in idle:
            s.close()
    out = exchange(port, b"POST /v1/completions HTTP/1.1\r\nHost: router\r\nContent-Length: 100\r\n\r\n{\"mo")
    assert status_of(out) == 408 and not any(method == "POST" for method, *_ in a.got)
    assert router.in_flight() == 0 and not any("Traceback" in line or "error" in line for line in lines)


def test_a_client_that_resets_mid_stream_is_no_traceback(routed, capfd):
    _, router, url, port, lines = routed
    body = json.dumps({"model": "m", "prompt": "x", "max_tokens": 2000, "stream": True}).encode()
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: router\r\nAuthorization: Bearer " + KEY.encode()
                  + b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        assert s.recv(100).startswith(b"HTTP/1.1 200")  # the stream began
        reset(s)
        wait_until_idle(router)
    assert requests.get(url + "/v1/models", headers=AUTH, timeout=10).status_code == 200
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err and KEY not in out + err
    assert not any("Traceback" in line or KEY in line for line in lines)


def test_expect_100_continue_gets_the_go_ahead_and_other_expectations_417(echoes, start_router):
    """curl sends `Expect: 100-continue` for a body over 1 KiB and waits a second for the go-ahead."""
    urls, (a, _) = echoes
    router, port, _ = start_router(urls[0], max_body=1024 * 1024)
    body = completion("x" * 2000)
    head = b"POST /v1/completions HTTP/1.1\r\nHost: router\r\nConnection: close\r\nContent-Length: %d\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head % len(body) + b"Expect: 100-continue\r\n\r\n")
        assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(body)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    assert status_of(out) == 200 and a.got[-1][3] == body
    # too large: refused at once, without the go-ahead; an expectation nobody knows: 417
    assert status_of(exchange(port, head % (2 * 1024 * 1024) + b"Expect: 100-continue\r\n\r\n")) == 413
    assert status_of(exchange(port, head % len(body) + b"Expect: coffee\r\n\r\n" + body)) == 417
    assert len(a.got) == 1 and router.in_flight() == 0
