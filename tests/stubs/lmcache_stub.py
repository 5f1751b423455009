#!/usr/bin/env python3
"""A stand-in for `lmcache server` (stdlib only): accepts the argv the appliance generates (`server --host H
--port P --http-host HH --http-port HP ...`, the rest ignored), holds --port open like the real ZMQ socket
and answers GET /healthcheck on the HTTP port (with the LMCACHE_VERSION of the image's versions.env).

Metrics: GET /metrics on the HTTP port, as `lmcache server` 0.5.x serves them (its --prometheus-port exporter
is not started by the `server` command: lmcache/v1/multiprocess/http_server.py passes
start_prometheus_http_server=False), serves the metric families the real LMCache server exposes
(fixtures/lmcache-*-metrics.txt, recorded from LMCache itself), with fixed values for the lookup counters
(STUB_LOOKUP: requested 4096 tokens, hit 3072 = 2048 from L1 + 1024 from L2); GET /status on
the HTTP port answers LMCache's shape with the L1 use (STUB_L1_USED_BYTES of the --l1-size-gb).

Switches (environment, read at start): STUB_LMCACHE_START_DELAY=s before the ports open.
STUB_CONTROL_DIR=dir: triggers consumed by the process that acts on them: `lmcache-crash` (exit 1 now),
`lmcache-unhealthy` (/healthcheck answers 503 from now on); each start writes lmcache-start-<pid>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from quiet_http import QuietHTTPServer, built_versions  # next to this file: the stubs run as scripts

ENV = os.environ
FIXTURES = Path(__file__).with_name("fixtures")
STUB_LOOKUP = {"lmcache_mp_lookup_requested_tokens_total": 4096, "lmcache_mp_lookup_hit_tokens_total": 3072,
               "lmcache_mp_lookup_hit_l1_tokens_total": 2048, "lmcache_mp_lookup_hit_l2_tokens_total": 1024}
STUB_L1_USED_BYTES = 512 * 1024 ** 2


def exposition() -> str:
    """The real server's families (newest fixture), in Prometheus text format."""
    fixture = sorted(FIXTURES.glob("lmcache-*-metrics.txt"))[-1]
    out = []
    for line in fixture.read_text().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            out.append(line)
            if kind == "histogram":
                out += [f'{name}_bucket{{le="+Inf"}} 0', f"{name}_count 0", f"{name}_sum 0"]
        elif line and not line.startswith("#") and not line.split()[0].endswith(("_bucket", "_count", "_sum")):
            name = line.split()[0]
            out.append(f"{name} {STUB_LOOKUP.get(name, 0)}")
    return "\n".join(out) + "\n"


def say(msg: str) -> None:
    print(f"stub-lmcache[{os.getpid()}]: {msg}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("command")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5555)
    p.add_argument("--http-host", default="127.0.0.1")
    p.add_argument("--http-port", type=int, default=8080)
    p.add_argument("--prometheus-port", type=int, default=9090)
    p.add_argument("--l1-size-gb", type=float, default=0.0)
    args, _ = p.parse_known_args()
    control = Path(ENV["STUB_CONTROL_DIR"]) if ENV.get("STUB_CONTROL_DIR") else None
    if control:
        (control / f"lmcache-start-{os.getpid()}.json").write_text(
            json.dumps({"pid": os.getpid(), "argv": sys.argv[1:], "env": dict(ENV)}))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if stop.wait(float(ENV.get("STUB_LMCACHE_START_DELAY", "0"))):
        return 0
    unhealthy = threading.Event()
    version = built_versions().get("LMCACHE_VERSION", "unknown")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *a):
            pass

        def do_GET(self):
            if self.path == "/status":
                code, body = 200, json.dumps({"is_healthy": not unhealthy.is_set(), "storage_manager": {
                    "l1_usage": [STUB_L1_USED_BYTES, int(args.l1_size_gb * 1024 ** 3)]}}).encode()
            elif self.path == "/metrics":
                code, body = 200, exposition().encode()
            else:
                code = 404 if self.path != "/healthcheck" else (503 if unhealthy.is_set() else 200)
                body = json.dumps({"status": "healthy" if code == 200 else "unhealthy",
                                   "version": version}).encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    zmq = socket.create_server((args.host, args.port))
    http = QuietHTTPServer((args.http_host, args.http_port), Handler)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    say(f"serving on {args.host}:{args.port}, health on {args.http_host}:{args.http_port}/healthcheck "
        f"(LMCache {version})")

    def take(name: str) -> bool:
        if control is None:
            return False
        try:
            (control / name).unlink()
            return True
        except FileNotFoundError:
            return False

    while not stop.wait(0.05):
        if take("lmcache-crash"):
            say("crashing as asked (lmcache-crash)")
            os._exit(1)
        if take("lmcache-unhealthy"):
            say("unhealthy as asked (lmcache-unhealthy)")
            unhealthy.set()
    http.shutdown()
    zmq.close()
    say("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
