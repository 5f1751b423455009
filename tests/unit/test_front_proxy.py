"""The front proxy (entrypoint/front/proxy.py) in front of the stub vLLM, which the tests kill and start again:
held requests, requests sent again, streams continued across the crash, the hold bound, the API key."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from entrypoint.front.continuation import CHAT, COMPLETIONS
from entrypoint.front.proxy import HEADER, Config, serve

from ports import free_ports
from stubs import fake_model

STUB = Path(__file__).resolve().parents[1] / "stubs" / "vllm_stub.py"
MODEL = "stub/model"
KEY = "front-proxy-test-key"


class Vllm:
    """The stub vLLM on a fixed port, started and SIGKILLed at will (the same port each time, as a restart)."""

    def __init__(self, port: int, tmp: Path):
        self.port, self.tmp, self.proc = port, tmp, None

    def start(self) -> None:
        env = {**os.environ, "STUB_STREAM": "model", "STUB_TOKEN_INTERVAL": "0.04", "VLLM_API_KEY": KEY}
        self.proc = subprocess.Popen([sys.executable, str(STUB), "serve", MODEL, "--host", "127.0.0.1",
                                      "--port", str(self.port)], env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def stack(tmp_path):
    vllm_port, proxy_port = free_ports(2)
    vllm = Vllm(vllm_port, tmp_path)
    vllm.start()
    server, proxy = serve("127.0.0.1", proxy_port, Config(upstream=f"http://127.0.0.1:{vllm_port}", api_keys=(KEY,),
                                                           max_hold_s=15, health_interval=0.05))
    base = f"http://127.0.0.1:{proxy_port}"
    deadline = time.monotonic() + 20
    while requests.get(f"{base}/health", timeout=2).status_code != 200:
        assert time.monotonic() < deadline, "the proxy never saw the stub vLLM serve"
        time.sleep(0.05)
    yield base, vllm, proxy
    proxy.stopping = True
    server.shutdown(1)
    server.server_close()
    vllm.kill()


def post(base: str, path: str, body: dict, **kw) -> requests.Response:
    return requests.post(base + path, json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=30, **kw)


def read_stream(resp: requests.Response) -> list:
    out = []
    for line in resp.iter_lines():
        if line.startswith(b"data: "):
            data = line[6:].decode()
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def text(events: list, path: str) -> str:
    key = (lambda c: (c.get("delta") or {}).get("content", "")) if path == CHAT else (lambda c: c.get("text", ""))
    return "".join(key(c) for e in events if isinstance(e, dict) for c in e.get("choices") or [])


def kill_and_restart(vllm: Vllm, after: float, down: float) -> threading.Thread:
    def run():
        time.sleep(after)
        vllm.kill()
        time.sleep(down)
        vllm.start()
    t = threading.Thread(target=run)
    t.start()
    return t


def test_requests_pass_through_and_the_key_is_checked_at_the_proxy(stack):
    base, _, _ = stack
    r = post(base, COMPLETIONS, {"model": MODEL, "prompt": "hello", "max_tokens": 1})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == " ok"
    r = requests.post(base + COMPLETIONS, json={"model": MODEL, "prompt": "x"}, timeout=10)
    assert r.status_code == 401 and r.headers.get(HEADER) == "1"
    r = requests.post(base + COMPLETIONS, json={"model": MODEL, "prompt": "x"}, timeout=10,
                      headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    assert requests.get(base + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=10).ok


@pytest.mark.parametrize("path", [COMPLETIONS, CHAT])
def test_a_stream_cut_by_a_crash_continues_where_it_stopped(stack, path):
    base, vllm, proxy = stack
    body = {"model": MODEL, "stream": True, "max_tokens": 40, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    body.update({"messages": [{"role": "user", "content": "tell me"}]} if path == CHAT else {"prompt": "tell me"})
    expected = fake_model.events(path, body, MODEL)
    crash = kill_and_restart(vllm, after=0.6, down=0.5)  # about 15 of 40 tokens in
    events = read_stream(post(base, path, body, stream=True))
    crash.join()
    assert proxy.counters.resumed == 1
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    assert not any(isinstance(e, dict) and "error" in e for e in events)
    assert text(events, path) == text(expected, path) and len(text(events, path)) > 20
    assert events[-2]["usage"] == expected[-1]["usage"]
    assert {e["id"] for e in events if isinstance(e, dict)} == {expected[0]["id"]}
    assert not any("token_ids" in c or "prompt_token_ids" in c
                   for e in events if isinstance(e, dict) for c in e.get("choices") or [])


def test_a_request_in_flight_is_sent_again_and_new_ones_are_held(stack):
    base, vllm, proxy = stack
    vllm.kill()
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(
        post(base, COMPLETIONS, {"model": MODEL, "prompt": "held", "max_tokens": 1}))) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    assert proxy.counters.held_now == 3 and not results
    vllm.start()
    for t in threads:
        t.join(30)
    assert [r.status_code for r in results] == [200, 200, 200]
    # a request that vLLM was answering when it died: sent again once it is back
    crash = kill_and_restart(vllm, after=0.3, down=0.5)
    r = post(base, COMPLETIONS, {"model": MODEL, "prompt": "long", "max_tokens": 1, "stub_seconds": 1.0})
    crash.join()
    assert r.status_code == 200 and proxy.counters.resent >= 1


def test_past_the_hold_bound_503_with_retry_after(tmp_path):
    vllm_port, proxy_port = free_ports(2)  # nothing listens on vllm_port
    server, proxy = serve("127.0.0.1", proxy_port, Config(upstream=f"http://127.0.0.1:{vllm_port}", max_hold_s=0.5,
                                                           retry_after=7, max_held=1))
    try:
        r = requests.post(f"http://127.0.0.1:{proxy_port}{COMPLETIONS}", json={"model": MODEL}, timeout=10)
        assert r.status_code == 503 and r.headers["Retry-After"] == "7" and r.headers[HEADER] == "1"
        assert "did not come back within 0.5 s" in r.json()["error"]["message"]
        for probe in ("/health", "/metrics"):  # probes are never held
            assert requests.get(f"http://127.0.0.1:{proxy_port}{probe}", timeout=5).status_code == 503
        assert proxy.counters.dropped == 1  # the held request; probes are no drop
    finally:
        server.shutdown(0)
        server.server_close()


def test_a_stream_that_cannot_be_continued_ends_with_an_error_event(stack):
    base, vllm, proxy = stack
    body = {"model": MODEL, "prompt": "seeded", "stream": True, "max_tokens": 40, "ignore_eos": True, "seed": 3}
    crash = kill_and_restart(vllm, after=0.5, down=0.3)
    events = read_stream(post(base, COMPLETIONS, body, stream=True))
    crash.join()
    assert "seed" in events[-1]["error"]["message"] and proxy.counters.resumed == 0
    assert 0 < len(text(events, COMPLETIONS)) < 40


def test_idle_and_slow_clients_do_not_stop_it_from_serving(stack):
    """300 connections that never send a whole request (idle, or a body that never ends): a normal request is
    answered meanwhile (the connection limit itself is webserver.py's, tested with the router and the gap)."""
    base, _, _ = stack
    port = int(base.rsplit(":", 1)[1])
    idle = []
    for i in range(300):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        if i % 2:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")  # slow body
        idle.append(s)
    try:
        r = post(base, COMPLETIONS, {"model": MODEL, "prompt": "still there", "max_tokens": 1})
        assert r.status_code == 200
    finally:
        for s in idle:
            s.close()
