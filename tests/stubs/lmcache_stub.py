#!/usr/bin/env python3
"""A stand-in for `lmcache server` (stdlib only): accepts the argv the appliance generates (`server --host H
--port P --http-host HH --http-port HP ...`, the rest ignored), holds --port open like the real ZMQ socket
and answers GET /healthcheck on the HTTP port (with the LMCACHE_VERSION of the image's versions.env).

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


def say(msg: str) -> None:
    print(f"stub-lmcache[{os.getpid()}]: {msg}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("command")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5555)
    p.add_argument("--http-host", default="127.0.0.1")
    p.add_argument("--http-port", type=int, default=8080)
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
            code = 404 if self.path != "/healthcheck" else (503 if unhealthy.is_set() else 200)
            body = json.dumps({"status": "healthy" if code == 200 else "unhealthy", "version": version}).encode()
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
