"""The front proxy (APPLIANCE_FRONT_PROXY) under real supervisord, in front of the stub vLLM streaming the fake
model (tests/stubs/fake_model.py): a vLLM crash mid-stream, requests held through a restart, SIGTERM with a
stream in flight. The client sees complete answers throughout."""
from __future__ import annotations

import json
import signal
import threading
import time

import requests

from entrypoint.inspectors.snapshot import parse_metrics

from appliance_harness import alive, free_ports, wait_until
from stubs import fake_model

MODEL = "stub/model"


def front(appliance, **env):
    (vllm_port,) = free_ports(1)
    return appliance(APPLIANCE_FRONT_PROXY="true", APPLIANCE_FRONT_VLLM_PORT=vllm_port, STUB_STREAM="model",
                     STUB_TOKEN_INTERVAL="0.05", **env)


def stream(a, body: dict, events: list) -> threading.Thread:
    """Reads a completions stream into `events` (dicts, and "[DONE]") in a thread."""
    def run():
        with requests.post(f"{a.base}/v1/completions", json=body, headers=a.headers(), stream=True,
                           timeout=60) as r:
            assert r.status_code == 200, r.text
            for line in r.iter_lines():
                if line.startswith(b"data: "):
                    data = line[6:].decode()
                    events.append(data if data == "[DONE]" else json.loads(data))
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def text(events: list) -> str:
    return "".join(c.get("text", "") for e in events if isinstance(e, dict) for c in e.get("choices") or [])


def front_metrics(a) -> dict[str, float]:
    return parse_metrics(requests.get(f"http://127.0.0.1:{a.env['APPLIANCE_METRICS_PORT']}/metrics", timeout=5).text)


BODY = {"model": MODEL, "prompt": "tell me a story", "stream": True, "max_tokens": 60, "ignore_eos": True,
        "stream_options": {"include_usage": True}}


def test_a_vllm_crash_mid_stream_is_continued_on_the_restarted_vllm(appliance, timing):
    a = front(appliance)
    a.wait_ready()
    assert "spawned: 'front'" in a.output() and "spawned: 'gap'" not in a.output()
    old = a.pid()
    expected = fake_model.events("/v1/completions", BODY, MODEL)
    events: list = []
    reader = stream(a, BODY, events)
    wait_until(lambda: len(events) >= 10, 20, "ten tokens of the stream")
    crashed = time.monotonic()
    a.trigger("vllm-crash")
    wait_until(lambda: not alive(old), 10, "the stub vLLM to crash")
    reader.join(60)
    timing("vLLM crash mid-stream -> the stream goes on (stub restart)", time.monotonic() - crashed)
    assert events[-1] == "[DONE]" and not any(isinstance(e, dict) and "error" in e for e in events), events[-3:]
    assert text(events) == text(expected) and len(text(events)) > 40
    assert events[-2]["usage"] == expected[-1]["usage"]
    assert a.pid() != old  # the rest came from the restarted vLLM
    m = wait_until(lambda: (m := front_metrics(a)).get("appliance_front_resumed_total") == 1 and m, 10,
                   "the metrics to count the continued stream")
    assert m["appliance_front_dropped_total"] == 0


def test_requests_sent_during_a_restart_are_held_and_answered(appliance):
    a = front(appliance, STUB_START_DELAY=2, APPLIANCE_STARTUP_TIMEOUT=15)
    a.wait_ready()
    old = a.pid()
    a.trigger("vllm-crash")
    wait_until(lambda: not alive(old), 10, "the stub vLLM to crash")
    answers: list = []
    clients = [threading.Thread(target=lambda: answers.append(a.completion())) for _ in range(4)]
    for c in clients:
        c.start()
    wait_until(lambda: front_metrics(a).get("appliance_front_held", 0) >= 1, 10, "requests held by the proxy")
    for c in clients:
        c.join(60)
    assert [r.status_code for r in answers] == [200] * 4, [r.text for r in answers]
    assert front_metrics(a)["appliance_front_held_requests_total"] >= 4


def test_sigterm_answers_the_stream_in_flight_then_stops_vllm(appliance, timing):
    a = front(appliance, APPLIANCE_SHUTDOWN_TIMEOUT=20)
    a.wait_ready()
    events: list = []
    reader = stream(a, BODY, events)
    wait_until(lambda: len(events) >= 5, 20, "five tokens of the stream")
    sent = time.monotonic()
    a.proc.send_signal(signal.SIGTERM)
    rc = a.wait_exit(60)
    timing("SIGTERM with a 3 s stream in flight (front proxy) -> exit", time.monotonic() - sent)
    reader.join(10)
    assert rc == 0, a.output()
    assert events[-1] == "[DONE]" and text(events) == text(fake_model.events("/v1/completions", BODY, MODEL))
    # The proxy stops first (it drained the stream), then vLLM.
    assert a.line_index("stopped: front (exit status 0)") < a.line_index("stopped: vllm")
    assert a.session() == []
