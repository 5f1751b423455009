"""What the gap answer (APPLIANCE_GAP_ANSWER, entrypoint/programs/gap.py) costs on the normal path.

  gap_cost.py local [--requests 3000]
        a stand-in server on a loopback port, with SO_REUSEPORT as vLLM gets it through reuse_port.py;
        request latency with no gap program, then with one watching the port (released, as while vLLM
        serves); and the gap program's CPU time over the run
  gap_cost.py appliance --base-url URL --run-dir DIR [--model M --requests 500]
        the same latency numbers against a running appliance (run it once with APPLIANCE_GAP_ANSWER=true
        and once with false), and the CPU time of its `gap` program over the run

Prints the numbers (no file): p50/p90/p99 latency per configuration, fresh connection per request (where a
per-connection cost would show) and one kept-alive connection.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from bench import common as c

ROOT = Path(__file__).resolve().parents[1]
RELEASED_POLL_S = 0.1  # entrypoint/programs/gap.py


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def latencies(host: str, port: int, n: int, path: str, keep_alive: bool, body: bytes | None = None,
              headers: dict | None = None) -> list[float]:
    out = []
    conn = None
    for _ in range(n):
        if conn is None or not keep_alive:
            conn = http.client.HTTPConnection(host, port, timeout=30)
        t = time.perf_counter()
        conn.request("POST" if body else "GET", path, body, headers or {})
        r = conn.getresponse()
        r.read()
        out.append(time.perf_counter() - t)
        if r.status != 200:
            raise c.BenchError(f"{path} answered {r.status}")
        if not keep_alive:
            conn.close()
    return out


def line(label: str, xs: list[float]) -> str:
    ms = [x * 1000 for x in xs]
    return (f"  {label:<44} p50 {c.percentile(ms, 50):7.3f} ms  p90 {c.percentile(ms, 90):7.3f} ms  "
            f"p99 {c.percentile(ms, 99):7.3f} ms  (n={len(ms)})")


class Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as uvicorn: no Nagle delay

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


class Shared(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self):
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # as reuse_port.py makes vLLM's
        super().server_bind()


GAP = ("import sys, signal; from entrypoint.programs.gap import Gap; "
       "g = Gap('127.0.0.1', int(sys.argv[1]), 5); signal.signal(signal.SIGTERM, lambda *_: g.stopping.set()); "
       "g.run()")


def cmd_local(a) -> int:
    server = Shared(("127.0.0.1", 0), Ok)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    latencies("127.0.0.1", port, 200, "/", False)  # warm up
    print(f"stand-in server on 127.0.0.1:{port} (SO_REUSEPORT), {a.requests} requests per line")
    results = {}
    for with_gap in (False, True, False, True):  # alternated, so that drift shows
        gap = None
        if with_gap:
            gap = subprocess.Popen([sys.executable, "-c", GAP, str(port)], cwd=ROOT)  # the repo root: `entrypoint`
            time.sleep(1.0)  # it sees the listener and stays released
            cpu0, t0 = cpu_seconds(gap.pid), time.monotonic()
        name = "gap program watching" if with_gap else "no gap program"
        fresh = latencies("127.0.0.1", port, a.requests, "/", False)
        kept = latencies("127.0.0.1", port, a.requests, "/", True)
        results.setdefault(name, {"fresh": [], "kept": []})
        results[name]["fresh"] += fresh
        results[name]["kept"] += kept
        if gap is not None:
            cpu, wall = cpu_seconds(gap.pid) - cpu0, time.monotonic() - t0
            results[name].setdefault("cpu", []).append(cpu / wall)
            gap.terminate()
            gap.wait(10)
    for name, r in results.items():
        print(line(f"{name}, new connection each", r["fresh"]))
        print(line(f"{name}, one kept-alive connection", r["kept"]))
        if "cpu" in r:
            print(f"  {name}: its CPU use {100 * max(r['cpu']):.2f}% of one core (while released: one sock_diag "
                  f"query every {RELEASED_POLL_S:g} s)")
    server.shutdown()
    return 0


def cmd_appliance(a) -> int:
    from urllib.parse import urlsplit
    url = urlsplit(a.base_url)
    sup = c.Supervisor(c.socket_from_run_dir(a.run_dir))
    gap_pid = sup.pid("gap") if sup.has("gap") else 0
    c.wait_ready(a.base_url, a.model, timeout=60)
    body = json.dumps({"model": a.model, "prompt": [11, 12, 13, 14], "max_tokens": 1}).encode()
    hdr = {"Content-Type": "application/json"}
    latencies(url.hostname, url.port or 80, 20, "/v1/completions", False, body, hdr)  # warm up
    cpu0, t0 = (cpu_seconds(gap_pid), time.monotonic()) if gap_pid else (0.0, time.monotonic())
    fresh = latencies(url.hostname, url.port or 80, a.requests, "/v1/completions", False, body, hdr)
    kept = latencies(url.hostname, url.port or 80, a.requests, "/v1/completions", True, body, hdr)
    print(f"{a.base_url}: 1-token completions; gap program {'pid ' + str(gap_pid) if gap_pid else 'not running'}")
    print(line("new connection each", fresh))
    print(line("one kept-alive connection", kept))
    if gap_pid:
        wall = time.monotonic() - t0
        print(f"  gap program CPU: {cpu_seconds(gap_pid) - cpu0:.3f} s over {wall:.1f} s "
              f"({100 * (cpu_seconds(gap_pid) - cpu0) / wall:.2f}% of one core)")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    lo = sub.add_parser("local")
    lo.add_argument("--requests", type=int, default=3000)
    ap_ = sub.add_parser("appliance")
    ap_.add_argument("--base-url", default="http://127.0.0.1:8000")
    ap_.add_argument("--model", default="llama8b")
    ap_.add_argument("--run-dir", required=True)
    ap_.add_argument("--requests", type=int, default=500)
    a = ap.parse_args(argv)
    try:
        return {"local": cmd_local, "appliance": cmd_appliance}[a.cmd](a)
    except c.BenchError as e:
        c.log(f"ERROR: {e}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
