"""Prometheus itself (Debian's package, run by this test) scrapes a running test container: vLLM's endpoint on
the API port and the appliance's on APPLIANCE_METRICS_PORT (the LMCache stub's families and the appliance's).
PromQL over what it ingested must give the values the stubs and supervision produced, after a forced restart too,
and every query of the Grafana dashboard must give data (or wait for its metric's first event).
"""
from __future__ import annotations

import importlib.util
import shutil
import subprocess

import requests

from .conftest import ROOT, VLLM_PROCESS, missing, wait_until
from ports import free_port

CONTROL = {"STUB_CONTROL_DIR": "/tmp"}


def dashboard_check():
    spec = importlib.util.spec_from_file_location("check_dashboard",
                                                  ROOT / "scripts" / "observability" / "check_dashboard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module




def test_prometheus_ingests_both_endpoints_and_sees_a_restart(appliance, tmp_path):
    binary = shutil.which("prometheus")
    if not binary:
        missing("the prometheus server is not installed (Debian: apt-get install prometheus; "
                "scripts/test.sh installs it)")
    app = appliance(env=CONTROL)
    app.wait_healthy(timeout=60)
    ip = app.raw.attrs["NetworkSettings"]["IPAddress"]
    config = tmp_path / "prometheus.yml"
    config.write_text(f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: vllm
    static_configs: [{{targets: ["{ip}:8000"]}}]
  - job_name: appliance
    static_configs: [{{targets: ["{ip}:9464"]}}]
""")
    port = free_port()
    prom = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}/api/v1/query"

    def query(expr: str) -> list[dict]:
        r = requests.get(api, params={"query": expr}, timeout=5).json()
        assert r["status"] == "success", r
        return r["data"]["result"]

    def value(expr: str) -> float | None:
        result = query(expr)
        return float(result[0]["value"][1]) if len(result) == 1 else None

    try:
        wait_until(lambda: value('sum(up{job=~"vllm|appliance"})') == 2, 60, what="both targets up in Prometheus")
        # the LMCache server's families, through the appliance's endpoint (the stub serves the real names)
        assert wait_until(lambda: value("lmcache_mp_lookup_hit_l1_tokens_total") == 2048, 20,
                          what="the LMCache stub's lookup counters")
        assert value("lmcache_mp_lookup_hit_l2_tokens_total / lmcache_mp_lookup_requested_tokens_total") == 0.25
        assert value('appliance_program_up{program="vllm"}') == 1
        cap = value('appliance_tier_capacity_bytes{tier="cpu"}')
        assert cap and value('appliance_tier_used_bytes{tier="cpu"} / appliance_tier_capacity_bytes{tier="cpu"}') \
            == 512 * 1024 ** 2 / cap
        assert value('sum(vllm:prompt_tokens_total)') is not None  # vLLM's own endpoint, scraped beside it
        assert (value('appliance_restarts_total{program="vllm",reason="exited"}') or 0) == 0

        (old,) = app.pids(VLLM_PROCESS)
        app.exec("pkill", "-KILL", "-f", VLLM_PROCESS)
        wait_until(lambda: [p for p in app.pids(VLLM_PROCESS) if p != old], 30, what="a new vLLM process")
        app.wait_healthy(timeout=60)
        wait_until(lambda: value('appliance_restarts_total{program="vllm",reason="exited"}') == 1, 30,
                   what="the restart in Prometheus")
        assert value('sum(appliance_restarts_total{reason=~"unhealthy|dependency"})') == 0
        # Two more scrapes of the appliance's endpoint (seen by their timestamps, not by waiting 2 s): the count
        # stays 1 (a counter, not an event per scrape).
        for _ in range(2):
            scraped = value('timestamp(up{job="appliance"})')
            wait_until(lambda: value('timestamp(up{job="appliance"})') > scraped, 30, what="another scrape")
        assert value('appliance_restarts_total{program="vllm",reason="exited"}') == 1

        # Every panel of the dashboard, its query run by this Prometheus: data, or "not yet" for a metric that
        # has no series before its first event (scripts/observability/check_dashboard.py prometheus).
        rows = dashboard_check().query_panels(f"http://127.0.0.1:{port}", f"http://{ip}:8000", f"http://{ip}:9464")
        table = "\n".join(f"{r['result']}: {r['panel']}: {r['expr']}" for r in rows)
        assert all(r["result"] == "data" or r["result"].startswith("not yet: ") for r in rows), table
        assert sum(r["result"] == "data" for r in rows) >= len(rows) - 2, table
        print(table)
    finally:
        prom.terminate()
        prom.wait(10)
