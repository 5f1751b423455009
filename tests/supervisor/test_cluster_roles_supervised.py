"""The one-host cluster roles under real supervisord, with the stub servers: a kv-server appliance
(APPLIANCE_ROLE=kv-server) runs only its LMCache server, on all interfaces, and is healthy; a replica
(LMCACHE_SERVER) waits for it before starting vLLM, serves, and keeps serving when it goes away (vLLM is not
judged, so not restarted, while it is down; the watchdog, `status` and the metrics say so), then sees it come
back."""
from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

from entrypoint.inspectors.snapshot import parse_metrics

from appliance_harness import REPO, wait_until


def scrape(a) -> dict[str, float]:
    try:
        r = requests.get(f"http://127.0.0.1:{a.env['APPLIANCE_METRICS_PORT']}/metrics", timeout=5)
    except requests.RequestException:
        return {}
    return parse_metrics(r.text) if r.status_code == 200 else {}


def status(a, fmt: str = "json"):
    out = subprocess.run([sys.executable, "-m", "entrypoint", "status", "--format", fmt], cwd=REPO, env=a.env,
                         capture_output=True, text=True, timeout=30)
    return out.returncode, (json.loads(out.stdout) if fmt == "json" else out.stdout)


def non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # picks the outbound interface; sends nothing
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def kv_server(appliance, tmp_path, name: str, ports: dict[str, str] | None = None):
    """A kv-server appliance in its own run and control directories (ports: reuse another's)."""
    return appliance(APPLIANCE_ROLE="kv-server", APPLIANCE_RUN_DIR=tmp_path / name / "run",
                     STUB_CONTROL_DIR=tmp_path / name / "control", **(ports or {}))


@contextlib.contextmanager
def down_server(port: int):
    """A kv-server that is down but whose port answers: 503 to every request. Yields the times of the health
    probes (GET /healthcheck) it answered; the replica's watchdog sends one a round."""
    probes: list[float] = []

    class Down(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            if self.path == "/healthcheck":
                probes.append(time.monotonic())
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Down)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield probes
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def server_ready(server) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{server.env['APPLIANCE_LMCACHE_HTTP_PORT']}/healthcheck",
                            timeout=0.5).status_code == 200
    except requests.RequestException:
        return False


def test_the_kv_server_role_runs_only_the_lmcache_server(appliance, tmp_path):
    s = kv_server(appliance, tmp_path, "kv")
    wait_until(lambda: server_ready(s), 30, "the kv-server's LMCache server")
    lmcache = s.wait_state("lmcache", "RUNNING")
    assert sorted(p["name"] for p in s.rpc().getAllProcessInfo()) == ["lmcache", "logs", "metrics", "on-fatal",
                                                                     "watchdog"]
    (start,) = s.starts("lmcache")
    argv = start["argv"]
    assert argv[argv.index("--host") + 1] == argv[argv.index("--http-host") + 1] == "0.0.0.0"
    address = non_loopback_address()
    if address:  # what the replicas use: the compose network, not loopback
        assert requests.get(f"http://{address}:{s.env['APPLIANCE_LMCACHE_HTTP_PORT']}/healthcheck",
                            timeout=5).status_code == 200
        socket.create_connection((address, int(s.env["APPLIANCE_LMCACHE_PORT"])), timeout=5).close()
    check = s.healthcheck()
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith("healthy: the LMCache server (APPLIANCE_ROLE=kv-server) at http://127.0.0.1:")
    rc, d = status(s)
    assert rc == 0 and d["role"] == "kv-server" and d["lmcache_up"] is True and d["vllm_up"] is False
    rc, text = status(s, "text")
    assert text.startswith("Appliance: the LMCache server only (APPLIANCE_ROLE=kv-server), for stub/model")
    wait_until(lambda: scrape(s).get("appliance_lmcache_metrics_up") == 1.0, 20, "the LMCache server's metrics")
    assert "spawned: 'vllm'" not in s.output()

    # The watchdog judges the LMCache server alone: an unhealthy one is restarted, with no vLLM to stop.
    s.trigger("lmcache-unhealthy")
    wait_until(lambda: s.info("lmcache")["pid"] != lmcache["pid"] and s.info("lmcache")["statename"] == "RUNNING",
               30, "the unhealthy LMCache server restarted")
    wait_until(lambda: server_ready(s), 30, "the restarted LMCache server healthy")
    assert s.healthcheck().returncode == 0
    assert s.terminate() == 0


def test_a_replica_waits_for_its_kv_server_and_outlives_it(appliance, tmp_path):
    # The replica first: its launcher must wait for the kv-server before starting vLLM.
    probe = appliance(start=False)  # only for a set of free ports
    zmq_port, http_port = probe.env["APPLIANCE_LMCACHE_PORT"], probe.env["APPLIANCE_LMCACHE_HTTP_PORT"]
    r = appliance(LMCACHE_SERVER=f"127.0.0.1:{zmq_port}", APPLIANCE_LMCACHE_HTTP_PORT=http_port,
                  APPLIANCE_LMCACHE_PORT=None, APPLIANCE_LMCACHE_WAIT=60,
                  APPLIANCE_RUN_DIR=tmp_path / "replica" / "run", STUB_CONTROL_DIR=tmp_path / "replica" / "control")
    r.wait_output(f"waiting for the LMCache server tcp://127.0.0.1:{zmq_port} (LMCACHE_SERVER) at "
                  f"http://127.0.0.1:{http_port}/healthcheck", 30)
    assert not r.ready() and r.starts("vllm") == []
    assert sorted(p["name"] for p in r.rpc().getAllProcessInfo()) == ["gap", "logs", "metrics", "on-fatal", "vllm",
                                                                     "watchdog"]

    ports = {"APPLIANCE_LMCACHE_PORT": zmq_port, "APPLIANCE_LMCACHE_HTTP_PORT": http_port}
    s = kv_server(appliance, tmp_path, "kv", ports)
    r.wait_ready(60)
    (vllm_start,) = r.starts("vllm")
    argv = vllm_start["argv"]
    extra = json.loads(argv[argv.index("--kv-transfer-config") + 1])["kv_connector_extra_config"]
    assert (extra["lmcache.mp.host"], extra["lmcache.mp.port"]) == ("tcp://127.0.0.1", int(zmq_port))
    vllm_pid = r.wait_state("vllm", "RUNNING")["pid"]
    wait_until(lambda: scrape(r).get("appliance_lmcache_server_up") == 1.0, 20, "appliance_lmcache_server_up 1")
    assert r.healthcheck().returncode == 0 and r.completion().status_code == 200

    # The kv-server goes away: the replica serves on (the stub vLLM does not need it), vLLM is not restarted,
    # and every view of the replica says the server is down.
    assert s.terminate() == 0
    r.wait_output(f"warning: the LMCache server tcp://127.0.0.1:{zmq_port} (LMCACHE_SERVER) does not answer", 20)
    wait_until(lambda: scrape(r).get("appliance_lmcache_server_up") == 0.0, 20, "appliance_lmcache_server_up 0")
    rc, d = status(r)
    assert rc == 0 and d["lmcache_server"]["up"] is False and d["lmcache_server_url"] == f"tcp://127.0.0.1:{zmq_port}"
    rc, text = status(r, "text")
    assert f"LMCache server tcp://127.0.0.1:{zmq_port} (LMCACHE_SERVER): DOWN (cannot connect to" in text
    for _ in range(3):
        assert r.completion().status_code == 200
    # Worse: vLLM hangs meanwhile (as a real one may, its lookups waiting for the server). It is not judged
    # while its server is down: a restart would only wait for the server in the launcher, and give up.
    # Six watchdog rounds, counted (twice APPLIANCE_HEALTH_FAILURES=3), not six seconds of a busy machine: the
    # server's port answers 503 meanwhile, which is down as well, and each round asks it once.
    r.trigger("vllm-hang")
    wait_until(lambda: not (r.control / "vllm-hang").exists(), 10, "the stub to take the hang trigger")
    with down_server(int(http_port)) as rounds:
        wait_until(lambda: len(rounds) >= 6, 60, "six watchdog rounds with the kv-server down")
    assert r.info("vllm")["pid"] == vllm_pid and "probe failed" not in r.output()

    # It comes back (a new kv-server container on the same ports): reported up again, and now the hung vLLM
    # is judged and restarted as any hung vLLM is.
    kv_server(appliance, tmp_path, "kv2", ports)
    wait_until(lambda: scrape(r).get("appliance_lmcache_server_up") == 1.0, 30, "appliance_lmcache_server_up 1 again")
    r.wait_output(f"the LMCache server tcp://127.0.0.1:{zmq_port} (LMCACHE_SERVER) answers")
    wait_until(lambda: r.info("vllm")["pid"] != vllm_pid, 30, "the hung vLLM restarted once its server is back")
    r.wait_ready(30)
    assert len(r.starts("vllm")) == 2 and r.completion().status_code == 200
    assert r.terminate() == 0
