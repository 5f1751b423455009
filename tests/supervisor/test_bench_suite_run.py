"""bench/suite.py for real on a CPU: `python -m bench.suite startvs` starts the appliance (the stub vLLM and
LMCache, under real supervisord), times it to ready, stops it, then a bare `vllm serve` (the stub) from the
appliance's rendered plan, and writes the startup tables, as it does on the GPU (docs/benchmarks/METHOD.md)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from appliance_harness import REPO, STUBS
from ports import free_ports


def test_the_startvs_suite_runs_the_appliance_and_a_bare_vllm_and_writes_the_tables(tmp_path):
    api, lmc, lmc_http, lmc_metrics, metrics = free_ports(5)
    (tmp_path / "control").mkdir()
    out = tmp_path / "out"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "STUB_NO_GPU": "1", "STUB_CONTROL_DIR": str(tmp_path / "control"),
           "OUT": str(out), "SITE": "", "PY": sys.executable, "MODEL": "stub/model", "SERVED": "stub/model",
           "PORT": str(api), "START_TIMEOUT": "60",
           "VLLM_CMD": f"{sys.executable} {STUBS / 'vllm_stub.py'}",
           "LMCACHE_CMD": f"{sys.executable} {STUBS / 'lmcache_stub.py'}",
           "EXTRA_ENV": f"APPLIANCE_LMCACHE_PORT={lmc} APPLIANCE_LMCACHE_HTTP_PORT={lmc_http} "
                        f"APPLIANCE_LMCACHE_METRICS_PORT={lmc_metrics} APPLIANCE_METRICS_PORT={metrics} "
                        "VLLM_HOST=127.0.0.1 APPLIANCE_STARTUP_TIMEOUT=10"}
    run = subprocess.run([sys.executable, "-m", "bench.suite", "startvs"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=240)
    console = run.stdout
    assert run.returncode == 0, console + run.stderr
    assert "FAILED" not in console, console
    rows = [json.loads(line) for line in (out / "results" / "results.jsonl").read_text().splitlines()]
    starts = {r["label"]: r for r in rows if r["bench"] == "startup"}
    assert starts["no-offload"]["ok"] and starts["bare-vllm"]["ok"] and starts["bare-vllm"]["bare"]
    assert {r["label"] for r in rows if r["bench"] == "stop"} == {"no-offload", "bare-vllm"}
    logs = out / "logs"
    assert (logs / "no-offload" / "plan.json").is_file() and (logs / "no-offload" / "vllm.log").is_file()
    assert f"VLLM_PORT={api}" in (logs / "no-offload" / "appliance.env").read_text().splitlines()
    assert (logs / "bare-vllm" / "vllm.log").is_file()
    # the tables come last, on the console and in suite.log
    assert (out / "results" / "startup.md").is_file()
    tables = console[console.index("done in"):]
    assert "serve to ready next to a bare `vllm serve`" in tables and "| no-offload |" in tables
    assert (logs / "suite.log").read_text() == console
