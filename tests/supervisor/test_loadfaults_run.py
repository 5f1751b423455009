"""bench/loadfaults.py against the stub appliance under real supervisord: closed-loop clients, vLLM
SIGKILLed through supervisord's socket at a fixed time, and the windows showing the failures and the recovery."""
from __future__ import annotations

import json
import subprocess
import sys

from appliance_harness import REPO


def test_loadfaults_run_shows_the_fault_window_and_the_recovery(appliance, tmp_path):
    a = appliance(STUB_START_DELAY=2, APPLIANCE_STARTUP_TIMEOUT=12, APPLIANCE_GAP_ANSWER="true")
    a.wait_ready(30)
    a.wait_state("vllm", "RUNNING", 30)
    results = tmp_path / "results"
    out = subprocess.run(
        [sys.executable, "-m", "bench.loadfaults", "run", "--label", "stub", "--results", str(results),
         "--base-url", a.base,
         "--model", a.env["VLLM_MODEL"], "--fault", "kill-vllm", "--fault-at", "3", "--duration", "14",
         "--window", "2", "--clients", "3", "--prefixes", "2", "--prefix-tokens", "32", "--min-tokens", "8",
         "--max-tokens", "16", "--request-timeout", "10", "--run-dir", str(a.run.root), "--ready-timeout", "20"],
        cwd=REPO, capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    row = [json.loads(line) for line in (results / "results.jsonl").read_text().splitlines()][-1]
    assert row["injected"]["fault"] == "kill-vllm" and row["injected"]["pid"] > 0
    ws, s = row["windows"], row["summary"]
    assert len(ws) == 7
    before = [w for w in ws if w["end"] <= 3]
    assert before and all(w["ok"] > 0 and w["errors"] == 0 for w in before), ws
    # The kill, and the restart (2 s of "model load" in the stub): the gap program's 503s. Connections are
    # refused only in the moment between the crash and the gap program's next look at the port (it polls
    # every 100 ms while vLLM serves: docs/RESILIENCE.md), so only in the window of the kill, and fewer than
    # the 503s that cover the rest of the restart.
    failing = [w for w in ws if w["errors"]]
    assert failing and failing[0]["start"] >= 2, ws
    assert set().union(*(w["error_kinds"] for w in failing)) <= {"503-gap", "reset", "refused"}, ws
    refused_in = [w for w in ws if w["error_kinds"].get("refused")]
    assert all(w["start"] <= 3 < w["end"] for w in refused_in), ws
    assert s["error_kinds"].get("503-gap", 0) > s["error_kinds"].get("refused", 0), s["error_kinds"]
    # Recovered: the last windows are all successes again.
    assert ws[-1]["ok"] > 0 and ws[-1]["errors"] == 0, ws
    assert s["recovered_s"] is not None and s["recovered_s"] < 10
    assert "### Faults under load" in out.stdout and "| stub | kill-vllm | 3 s" in out.stdout
