#!/usr/bin/env python3
"""A stand-in for `vllm serve`: an OpenAI-compatible server (stdlib only) that can fail on demand.

Accepts the argv the appliance generates (`serve MODEL --host H --port P [--served-model-name N]
[--shutdown-timeout S] ...`, everything else ignored) and serves /health, /version (the VLLM_VERSION of the
image's versions.env), /v1/models, /v1/completions (1 token, or `"stub_seconds": s` in the body for a long
request that generates a token every STUB_TOKEN_INTERVAL s) and /metrics with vLLM's names
(vllm:num_requests_running, vllm:num_requests_waiting, vllm:prompt_tokens_total, vllm:generation_tokens_total,
the _bucket, _sum and _count of vllm:time_to_first_token_seconds, vllm:request_queue_time_seconds and
vllm:request_prefill_time_seconds, queue and prefill recorded when a request finishes as vLLM does;
vllm:prefix_cache_queries_total and vllm:external_prefix_cache_queries_total counting prompt tokens, and their
_hits_total, 0: the stub caches nothing; and stub_metrics_scrapes_total). /v1/* need
`Authorization: Bearer $VLLM_API_KEY` when VLLM_API_KEY is set, like vLLM.

Switches (environment, read at start):
  STUB_START_DELAY=s       seconds of "model load" before the port opens
  STUB_EXIT_AT_START=code  exit with this status at once (a crash loop)
  STUB_IGNORE_SIGTERM=1    ignore SIGTERM (supervisord has to SIGKILL the group)
  STUB_CHILDREN=n          start n worker processes in the process group, like vLLM's engine/workers
  STUB_ORPHAN_CHILDREN=1   the workers ignore SIGTERM and outlive the server (a straggler)
  STUB_MAX_CONCURRENCY=n   at most n completions at once, the others wait (a full batch)
  STUB_TOKEN_INTERVAL=s    seconds per generated token of a long request (default 0.05)
  STUB_STREAM=1            answer `"stream": true` completions as vLLM does (server-sent events: a chunk
                           per token up to max_tokens, a usage chunk, `data: [DONE]`), for dry runs of
                           the streaming bench scripts; off by default (then one JSON answer)
  STUB_STREAM=model        stream completions and chat completions from fake_model.py (tokens that depend on
                           the whole context, vLLM's shapes with return_token_ids), an event every
                           STUB_TOKEN_INTERVAL s: what the front proxy's crash tests cut and continue
  STUB_CONTROL_DIR=dir     runtime triggers, files consumed by the process that acts on them:
                             vllm-crash   exit 1 now
                             vllm-hang    engine stuck: /health stays 200, /metrics frozen, completions never end
                             vllm-freeze  stop answering anything, /health included
                           and where each start records {"pid", "argv", "env"} as vllm-start-<pid>.json.
On SIGTERM: stop accepting, let running requests finish (up to --shutdown-timeout), stop the workers, exit 0.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import fake_model  # next to this file: the stubs run as scripts
from quiet_http import QuietHTTPServer, built_versions

ENV = os.environ


def say(msg: str) -> None:
    print(f"stub-vllm[{os.getpid()}]: {msg}", flush=True)


CLOCKS = ("vllm:time_to_first_token_seconds", "vllm:request_queue_time_seconds", "vllm:request_prefill_time_seconds")
BUCKETS = (0.01, 0.1, 1.0, 10.0)  # upper bounds of the clocks' histogram buckets (and +Inf), seconds


class Engine:
    """Request accounting and the counters /metrics shows."""

    def __init__(self, max_concurrency: int, token_interval: float):
        self.lock = threading.Condition()
        self.running = self.waiting = 0
        self.prompt_tokens = self.generation_tokens = 0
        self.max_concurrency, self.token_interval = max_concurrency, token_interval
        self.hung = threading.Event()
        self.frozen = threading.Event()
        self.scrapes = 0  # GET /metrics answered (the watchdog's busy probes)
        self.inflight = 0  # POSTs being handled (until the answer is sent), for the graceful drain
        # histogram name -> [sum, count, count per bucket of BUCKETS] (the dashboard's quantiles read the buckets)
        self.clocks = {name: [0.0, 0, [0] * len(BUCKETS)] for name in CLOCKS}

    def clock(self, name: str, seconds: float) -> None:
        with self.lock:
            self.clocks[name][0] += seconds
            self.clocks[name][1] += 1
            for i, bound in enumerate(BUCKETS):
                self.clocks[name][2][i] += seconds <= bound

    def complete(self, prompt: str, seconds: float) -> int:
        arrived = time.monotonic()
        with self.lock:
            self.waiting += 1
            while self.max_concurrency and self.running >= self.max_concurrency:
                self.lock.wait()
            self.waiting -= 1
            self.running += 1
        scheduled = first = time.monotonic()
        try:
            self.block_if_hung()
            with self.lock:
                self.prompt_tokens += max(1, len(prompt.split()))
            tokens, deadline = 0, time.monotonic() + seconds
            while True:
                self.block_if_hung()
                with self.lock:
                    self.generation_tokens += 1
                tokens += 1
                if tokens == 1:
                    first = time.monotonic()
                    self.clock("vllm:time_to_first_token_seconds", first - arrived)
                if time.monotonic() >= deadline:
                    return tokens
                time.sleep(self.token_interval)
        finally:
            self.clock("vllm:request_queue_time_seconds", scheduled - arrived)
            self.clock("vllm:request_prefill_time_seconds", first - scheduled)
            with self.lock:
                self.running -= 1
                self.lock.notify_all()

    def block_if_hung(self) -> None:
        while self.hung.is_set():
            time.sleep(3600)


def make_handler(engine: Engine, model: str, api_key: str | None):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # one line per request would drown the test output
            pass

        def send_json(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def send_text(self, code: int, text: str) -> None:
            data = text.encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def send_stream(self, body: dict, tokens: int) -> None:
            prompt = body.get("prompt")
            usage = {"prompt_tokens": len(prompt) if isinstance(prompt, list) else len(str(prompt).split()),
                     "completion_tokens": tokens}
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")  # no length: the end of the body is the end of the stream
            self.end_headers()
            self.close_connection = True
            chunk = {"id": "cmpl-stub", "object": "text_completion", "model": model}
            events = [{**chunk, "choices": [{"index": 0, "text": " ok", "finish_reason": None}]}] * tokens
            events.append({**chunk, "choices": [], "usage": usage})
            self.wfile.write(b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
                             + b"data: [DONE]\n\n")

        def send_model_stream(self, body: dict) -> None:
            """fake_model's events, one every STUB_TOKEN_INTERVAL s, flushed as they go (a crash cuts the stream
            where it is)."""
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            with engine.lock:
                engine.running += 1
            try:
                for event in fake_model.events(self.path, body, model):
                    self.wfile.write(b"data: " + json.dumps(event).encode() + b"\n\n")
                    self.wfile.flush()
                    time.sleep(engine.token_interval)
                self.wfile.write(b"data: [DONE]\n\n")
            finally:
                with engine.lock:
                    engine.running -= 1

        def authorized(self) -> bool:
            if api_key and self.headers.get("Authorization") != f"Bearer {api_key}":
                self.send_json(401, {"error": "Unauthorized"})
                return False
            return True

        def do_GET(self):
            while engine.frozen.is_set():
                time.sleep(3600)
            if self.path == "/health":
                self.send_text(200, "")
            elif self.path == "/version":  # as vLLM's: the version this image was built with
                self.send_json(200, {"version": built_versions().get("VLLM_VERSION", "unknown")})
            elif self.path == "/metrics":
                labels = f'{{engine="0",model_name="{model}"}}'
                with engine.lock:
                    engine.scrapes += 1
                    lines = [
                        "# TYPE vllm:num_requests_running gauge",
                        f"vllm:num_requests_running{labels} {engine.running}.0",
                        "# TYPE vllm:num_requests_waiting gauge",
                        f"vllm:num_requests_waiting{labels} {engine.waiting}.0",
                        "# TYPE vllm:prompt_tokens_total counter",
                        f"vllm:prompt_tokens_total{labels} {engine.prompt_tokens}.0",
                        "# TYPE vllm:generation_tokens_total counter",
                        f"vllm:generation_tokens_total{labels} {engine.generation_tokens}.0",
                        f"stub_metrics_scrapes_total {engine.scrapes}.0",
                    ]
                    for kind in ("prefix_cache", "external_prefix_cache"):  # queried tokens, none a hit
                        lines += [f"# TYPE vllm:{kind}_queries_total counter",
                                  f"vllm:{kind}_queries_total{labels} {engine.prompt_tokens}.0",
                                  f"# TYPE vllm:{kind}_hits_total counter", f"vllm:{kind}_hits_total{labels} 0.0"]
                    for name, (total, count, buckets) in engine.clocks.items():
                        lines += [f"# TYPE {name} histogram"]
                        lines += [f'{name}_bucket{{engine="0",model_name="{model}",le="{bound}"}} {n}.0'
                                  for bound, n in zip(BUCKETS, buckets)]
                        lines += [f'{name}_bucket{{engine="0",model_name="{model}",le="+Inf"}} {count}.0',
                                  f"{name}_sum{labels} {total}", f"{name}_count{labels} {count}.0"]
                self.send_text(200, "\n".join(lines) + "\n")
            elif self.path == "/v1/models":
                if self.authorized():
                    self.send_json(200, {"object": "list",
                                         "data": [{"id": model, "object": "model", "owned_by": "vllm",
                                                   "max_model_len": fake_model.MAX_MODEL_LEN}]})
            else:
                self.send_json(404, {"error": "not found"})

        def do_POST(self):
            with engine.lock:
                engine.inflight += 1
            try:
                self.post()
            finally:
                with engine.lock:
                    engine.inflight -= 1

        def post(self):
            while engine.frozen.is_set():
                time.sleep(3600)
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            if self.path == "/reset_prefix_cache" and os.environ.get("VLLM_SERVER_DEV_MODE") == "1":
                self.send_json(200, {})  # vLLM's dev-mode endpoint, which the bench scripts call
                return
            model_stream = ENV.get("STUB_STREAM") == "model"
            if self.path != "/v1/completions" and not (model_stream and self.path == "/v1/chat/completions"):
                self.send_json(404, {"error": "not found"})
                return
            if not self.authorized():
                return
            if body.get("model") != model:
                self.send_json(404, {"error": f"The model `{body.get('model')}` does not exist."})
                return
            if model_stream and body.get("stream"):
                self.send_model_stream(body)
                return
            seconds = float(body.get("stub_seconds", 0))
            tokens = engine.complete(str(body.get("prompt", "")), seconds)
            if body.get("stream") and ENV.get("STUB_STREAM") == "1":
                self.send_stream(body, max(tokens, int(body.get("max_tokens") or 1)))
                return
            # `system_fingerprint`: which replica answered (its host name), for tests behind a router.
            self.send_json(200, {"id": "cmpl-stub", "object": "text_completion", "created": int(time.time()),
                                 "system_fingerprint": socket.gethostname(),
                                 "model": model, "choices": [{"index": 0, "text": " ok" * tokens,
                                                              "finish_reason": "length"}],
                                 "usage": {"completion_tokens": tokens}})

    return Handler


def worker(orphan: bool) -> None:
    """A child like vLLM's workers: exits with its parent unless it is meant to be a straggler."""
    if orphan:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    parent = os.getppid()
    say(f"worker started (parent {parent})")
    while orphan or os.getppid() == parent:
        time.sleep(0.2)


def watch_triggers(control: Path | None, engine: Engine) -> None:
    def take(name: str) -> bool:
        try:
            (control / name).unlink()
            return True
        except FileNotFoundError:
            return False

    while control:
        if take("vllm-crash"):
            say("crashing as asked (vllm-crash)")
            os._exit(1)
        if take("vllm-hang"):
            say("engine hangs as asked (vllm-hang); /health stays 200")
            engine.hung.set()
        if take("vllm-freeze"):
            say("stops answering as asked (vllm-freeze)")
            engine.frozen.set()
        time.sleep(0.05)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(ENV.get("STUB_ORPHAN_CHILDREN") == "1")
        return 0
    p = argparse.ArgumentParser()
    p.add_argument("command")
    p.add_argument("model")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", nargs="+")
    p.add_argument("--shutdown-timeout", type=float, default=0)
    p.add_argument("--api-key")
    args, _ = p.parse_known_args()
    control = Path(ENV["STUB_CONTROL_DIR"]) if ENV.get("STUB_CONTROL_DIR") else None
    if control:
        (control / f"vllm-start-{os.getpid()}.json").write_text(
            json.dumps({"pid": os.getpid(), "argv": sys.argv[1:], "env": dict(ENV)}))
    if ENV.get("STUB_EXIT_AT_START"):
        say(f"exiting with status {ENV['STUB_EXIT_AT_START']} as asked (STUB_EXIT_AT_START)")
        return int(ENV["STUB_EXIT_AT_START"])
    stop = threading.Event()
    if ENV.get("STUB_IGNORE_SIGTERM") == "1":
        signal.signal(signal.SIGTERM, lambda *_: say("SIGTERM ignored as asked (STUB_IGNORE_SIGTERM)"))
    else:
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    children = [subprocess.Popen([sys.executable, __file__, "--worker"])
                for _ in range(int(ENV.get("STUB_CHILDREN", "0")))]
    engine = Engine(int(ENV.get("STUB_MAX_CONCURRENCY", "0")), float(ENV.get("STUB_TOKEN_INTERVAL", "0.05")))
    threading.Thread(target=watch_triggers, args=(control, engine), daemon=True).start()
    model = (args.served_model_name or [args.model])[0]
    handler = make_handler(engine, model, args.api_key or ENV.get("VLLM_API_KEY"))
    # As vLLM (launchers/launcher.py: setup_server): the port is bound before the model loads, and listened
    # on only once the server serves; in between a connection is refused (or goes to another listener).
    server = QuietHTTPServer((args.host, args.port), handler, bind_and_activate=False)
    server.server_bind()
    delay = float(ENV.get("STUB_START_DELAY", "0"))
    if delay:
        say(f"loading the model for {delay:g} s (STUB_START_DELAY)")
        if stop.wait(delay):
            return 0
    server.server_activate()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    say(f"serving {model} on {args.host}:{args.port} \u2713")  # non-ASCII on purpose: the log relay must cope
    stop.wait()
    server.shutdown()  # no new connections; handlers already running go on
    server.server_close()
    say(f"SIGTERM: draining {engine.running} running request(s), up to {args.shutdown_timeout:g} s")
    deadline = time.monotonic() + args.shutdown_timeout
    while time.monotonic() < deadline:
        with engine.lock:
            if engine.inflight == 0:
                break
        time.sleep(0.05)
    for child in children:
        child.terminate()
    for child in children:
        try:
            child.wait(5)
        except subprocess.TimeoutExpired:
            pass
    say("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
