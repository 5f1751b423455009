"""Observability of a running appliance (real supervisord, stub servers): the metrics endpoint, `status`,
and JSON log lines, before and after a crash."""
from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time

import requests

from entrypoint.inspectors.snapshot import parse_metrics
from entrypoint.version import version

from appliance_harness import REPO, alive, wait_until

GIB = 1024 ** 3


def scrape(a) -> tuple[str, dict[str, float]]:
    r = requests.get(f"http://127.0.0.1:{a.env['APPLIANCE_METRICS_PORT']}/metrics", timeout=5)
    r.raise_for_status()
    return r.text, parse_metrics(r.text)


def status(a, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "entrypoint", "status", *args], cwd=REPO, env=a.env,
                          capture_output=True, text=True, timeout=30)


def sample(text: str, line_start: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(line_start))
    return float(line.rsplit(" ", 1)[1])


def test_metrics_and_status_before_and_after_a_crash(appliance, tmp_path, timing):
    a = appliance(APPLIANCE_STARTUP_TIMEOUT=2, LMCACHE_LOCAL_DISK=str(tmp_path / "kv"),
                  LMCACHE_MAX_LOCAL_DISK_SIZE=2)
    a.wait_ready()
    old = a.wait_state("vllm", "RUNNING")["pid"]
    text, m = wait_until(lambda: _try(scrape, a), 20, "the metrics endpoint")
    assert sample(text, 'appliance_program_up{program="vllm"}') == 1.0
    assert sample(text, 'appliance_program_up{program="lmcache"}') == 1.0
    assert sample(text, 'appliance_tier_capacity_bytes{tier="cpu"}') == 1 * GIB  # LMCACHE_MAX_LOCAL_CPU_SIZE=1
    assert sample(text, 'appliance_tier_capacity_bytes{tier="disk"}') == 2 * GIB
    assert sample(text, 'appliance_tier_used_bytes{tier="cpu"}') == 512 * 1024 ** 2  # the stub's /status
    # the LMCache server's own families, through the one endpoint
    assert m["lmcache_mp_lookup_hit_l1_tokens_total"] == 2048 and m["lmcache_mp_lookup_requested_tokens_total"] == 4096
    assert m.get("appliance_restarts_total", 0.0) == 0.0
    # a client that connects and sends nothing holds up no scrape (wsgiref served one connection at a time), and
    # nothing but GET /metrics is served
    with socket.create_connection(("127.0.0.1", int(a.env["APPLIANCE_METRICS_PORT"])), timeout=10):
        assert scrape(a)[1]["lmcache_mp_lookup_requested_tokens_total"] == 4096
        r = requests.post(f"http://127.0.0.1:{a.env['APPLIANCE_METRICS_PORT']}/metrics", timeout=5)
        assert r.status_code == 405 and r.json()["error"]["type"] == "metrics_error"

    started = time.monotonic()
    out = status(a, "--format", "json")
    timing("status --format json", time.monotonic() - started)
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert {p["name"]: p["state"] for p in d["processes"]}["vllm"] == "RUNNING"
    tiers = {t["name"]: t for t in d["tiers"]}
    assert tiers["cpu"]["hit_rate"] == 0.5 and tiers["disk"]["hit_rate"] == 0.25  # 2048, 1024 of 4096
    assert tiers["disk"]["path"].startswith(str(tmp_path / "kv") + "/stub--model__")
    assert d["restarts"] == {} and d["last_restart"] is None
    assert d["version"] == version() != "unknown"  # pyproject.toml's, as on the image's label

    a.trigger("vllm-crash")
    wait_until(lambda: not alive(old), 10, "the stub to crash")
    wait_until(lambda: a.pid() not in (0, old) and a.ready(), 30, "vLLM ready again")
    a.wait_state("vllm", "RUNNING")  # past startsecs: `status` exits 1 while a program is still STARTING
    text, _ = wait_until(lambda: _try(scrape, a), 10, "the metrics endpoint")
    assert sample(text, 'appliance_restarts_total{program="vllm",reason="exited"}') == 1.0
    assert sample(text, 'appliance_restarts_total{program="vllm",reason="unhealthy"}') == 0.0
    d = json.loads(status(a, "--format", "json").stdout)
    assert d["restarts"] == {"vllm": {"exited": 1}} and d["last_restart"]["reason"] == "exited"
    started = time.monotonic()
    out = status(a)
    timing("status (text)", time.monotonic() - started)
    assert out.returncode == 0
    assert re.search(r"^  vllm +RUNNING +\d+ +\S+ +1$", out.stdout, re.M), out.stdout
    assert "last restart: vllm (exited)" in out.stdout
    assert out.stdout.splitlines()[0].endswith(f"; llm-appliance {version()}")
    assert a.terminate() == 0


def test_a_taken_metrics_port_is_reported_and_waited_for(appliance):
    blocker = socket.create_server(("0.0.0.0", 0))
    a = appliance(APPLIANCE_METRICS_PORT=blocker.getsockname()[1])
    try:
        a.wait_ready()
        a.wait_output(f"cannot listen on :{blocker.getsockname()[1]} (Address already in use); trying again", 20)
        assert a.completion().status_code == 200  # serving goes on
    finally:
        blocker.close()
    wait_until(lambda: _try(scrape, a), 30, "the metrics endpoint once the port is free")
    assert a.spawns("metrics") == 1 and "Traceback" not in a.output()
    assert a.terminate() == 0


def test_an_exporter_that_cannot_start_does_not_stop_the_appliance(appliance):
    """on-fatal lets the appliance serve on without its exporter (any crash at start: here its plan is gone)."""
    a = appliance()
    a.wait_ready()
    a.wait_state("vllm", "RUNNING")
    rpc = a.rpc()
    rpc.stopProcess("metrics")
    a.run.plan.rename(a.run.root / "plan.json.bak")
    rpc.startProcess("metrics", False)
    a.wait_state("metrics", "FATAL", 60)
    (a.run.root / "plan.json.bak").rename(a.run.plan)
    a.wait_output("metrics cannot start (FATAL", 10)
    assert a.completion().status_code == 200 and a.proc.poll() is None
    assert a.terminate() == 0


def test_json_log_lines(appliance):
    a = appliance(APPLIANCE_LOG_FORMAT="json", APPLIANCE_STARTUP_TIMEOUT=2)
    a.wait_ready()
    a.wait_output('"vllm is ready')
    assert a.terminate() == 0
    supervisord = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ")  # supervisord's own log format
    records = []
    for line in a.output().splitlines():
        if supervisord.match(line):
            continue
        rec = json.loads(line)  # every other line is one JSON object
        assert {"ts", "program", "level", "event", "message"} <= rec.keys(), line
        records.append(rec)
    events = {(r["program"], r["event"]) for r in records}
    assert ("serve", "exec") in events and ("watchdog", "message") in events
    assert ("vllm", "launcher") in events and ("vllm", "output") in events and ("lmcache", "output") in events


def test_status_says_when_no_appliance_was_started(tmp_path):
    out = subprocess.run([sys.executable, "-m", "entrypoint", "status", "--run-dir", str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 3
    assert out.stderr.strip() == (f"no appliance was started here ({tmp_path}/plan.json is missing): start it "
                                  "with `serve`")


def _try(fn, *args):
    try:
        return fn(*args)
    except requests.RequestException:
        return None
