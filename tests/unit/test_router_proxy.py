"""The coordinator router's HTTP side (entrypoint/cluster/router.py) in front of tests/stubs/vllm_stub.py (the
stand-in vLLM of the supervisor tests: no /tokenize, so every placement falls back to load) with no coordinator
at all: the request framing it accepts and refuses, streams from a server that ends its body by closing, the
API key passed through, and requests cut off by either side leave nothing in flight. The placement by the real
coordinator: tests/contract/test_coordinator_router.py."""
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
from entrypoint.config.settings import parse_http_url, parse_router_replicas
from ports import free_port

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
def routed(stub):
    proc, url = stub
    config = product.RouterConfig(coordinator=parse_http_url(f"http://127.0.0.1:{free_port()}"),
                                  replicas=parse_router_replicas(url), host="127.0.0.1", port=free_port(),
                                  lookup_timeout=0.5, request_timeout=30, health_interval=3600)
    lines: list[str] = []
    router = product.Router(config, log=lambda msg, *a, **k: lines.append(msg))
    server, _ = product.make_server(config, router)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    router.refresh()
    router.check_health()
    yield proc, router, f"http://127.0.0.1:{config.port}", config.port, lines
    server.shutdown()
    server.server_close()


AUTH = {"Authorization": f"Bearer {KEY}"}


def status_of(answer: bytes) -> int:
    """The status code of a raw answer (a request the parser refused is answered in HTTP/1.0: aiohttp's way)."""
    assert answer.startswith((b"HTTP/1.0 ", b"HTTP/1.1 ")), answer[:100]
    return int(answer.split(b" ", 2)[1])


def raw(port: int, data: bytes) -> bytes:
    """One request as bytes, the whole answer as bytes (the connection closed by the router or after 10 s)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except TimeoutError:
            pass
        return out


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
    assert router.in_flight() == 0 and not any(KEY in line for line in lines)


def test_http_1_0_clients_get_the_stream_until_the_connection_closes(routed):
    _, _, _, port, _ = routed
    body = json.dumps({"model": "m", "prompt": "x", "max_tokens": 2, "stream": True}).encode()
    out = raw(port, b"POST /v1/completions HTTP/1.0\r\nContent-Type: application/json\r\nAuthorization: Bearer "
              + KEY.encode() + b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    head, _, rest = out.partition(b"\r\n\r\n")
    # answered in the client's version (aiohttp's choice; RFC 9110 allows either), never chunked
    assert head.startswith(b"HTTP/1.0 200") and b"chunked" not in head.lower()
    assert rest.endswith(b"data: [DONE]\n\n")


def test_request_framing(routed):
    _, router, url, port, _ = routed
    body = json.dumps({"model": "m", "prompt": "x"}).encode()
    # a chunked request body is read whole and sent on with a length
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    out = raw(port, b"POST /v1/completions HTTP/1.1\r\nHost: router\r\nAuthorization: Bearer " + KEY.encode()
              + b"\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunked)
    assert out.startswith(b"HTTP/1.1 200") and b"cmpl-stub" in out
    # bad or huge lengths are refused before anything is sent on
    out = raw(port, b"POST /v1/completions HTTP/1.1\r\nHost: router\r\nContent-Length: x\r\n\r\n")
    assert status_of(out) == 400
    out = raw(port, b"POST /v1/completions HTTP/1.1\r\nHost: router\r\nContent-Length: %d\r\n\r\n"
              % (product.MAX_BODY + 1))
    assert status_of(out) == 413
    out = raw(port, b"POST /v1/completions HTTP/1.1\r\nHost: router\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
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
