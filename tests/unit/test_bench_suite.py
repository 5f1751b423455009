"""The GPU suites' runner (bench/suite.py, `python -m bench.suite`) on a CPU: its arguments, the plan of steps
each suite runs (its --dry-run prints every command instead of running it), the words each configuration gives
the appliance, the budget, and the tables written at the end. What the steps measure runs on the GPU only
(docs/benchmarks/METHOD.md)."""
from __future__ import annotations

import io
import json
import sys

import pytest

from bench import suite


def run(argv: list[str], tmp_path, **env: str) -> tuple[int, str]:
    out = io.StringIO()
    rc = suite.main(argv, environ={"OUT": str(tmp_path / "out"), "SITE": "", "PY": "python3", **env}, stdout=out)
    return rc, out.getvalue()


def steps(text: str) -> list[str]:
    """The plan: each bench tool call as `tool subcommand [label]`, each appliance start as `serve`."""
    found = []
    for line in text.splitlines():
        if not line.startswith("+ "):
            continue
        w = line[2:].split()
        if "-m" in w and w[w.index("-m") + 1].startswith("bench."):
            i = w.index("-m")
            label = w[w.index("--label") + 1] if "--label" in w else ""
            found.append(f"{w[i + 1].split('.', 1)[1]} {w[i + 2]} {label}".strip())
        elif w[-3:] == ["-m", "entrypoint", "serve"]:
            found.append("serve")
        elif w[-3:] == ["-m", "entrypoint", "router"]:
            found.append("appliance router")
    return found


# --- arguments ----------------------------------------------------------------------------------------------

def test_no_suite_prints_the_usage_and_exits_2(tmp_path):
    rc, out = run([], tmp_path)
    assert rc == 2
    assert "python3 -m bench.suite reuse" in out and "python3 -m bench.suite coord" in out


def test_an_unknown_suite_is_refused_before_anything_runs(tmp_path):
    rc, out = run(["--dry-run", "reuse", "nonsense"], tmp_path)
    assert rc == 2 and out.startswith("unknown suite: nonsense (")
    assert all(s in out for s in suite.SUITES)
    assert not (tmp_path / "out").exists()  # not even the results folder


def test_the_suites_are_the_bash_runners_ten():
    assert sorted(suite.SUITES) == ["cluster", "coord", "faults", "loadfaults", "multiround", "options", "reuse",
                                    "startvs", "tp", "workloads"]


def test_dry_run_is_an_option_and_suites_are_positional():
    a = suite.parser().parse_args(["--dry-run", "reuse", "multiround"])
    assert a.dry_run and a.suites == ["reuse", "multiround"]
    assert not suite.parser().parse_args(["tp"]).dry_run


# --- the plan of each suite ------------------------------------------------------------------------------------

PLANS = {
    "reuse": ["common bandwidth",
              "serve", "startup wait no-offload", "reuse run no-offload", "startup stop no-offload",
              "serve", "startup wait lmcache-server", "reuse run lmcache-server", "reuse again lmcache-server",
              "startup stop lmcache-server",
              "serve", "startup wait lmcache-server-restarted", "reuse again lmcache-server",
              "faults kill-lmcache", "faults sigterm-inflight",
              "startup report", "reuse report", "faults report"],
    "options": ["common bandwidth",
                "serve", "startup wait no-offload", "reuse run no-offload", "startup stop no-offload",
                "serve", "startup wait lmcache", "reuse run lmcache", "startup stop lmcache",
                "serve", "startup wait lmcache-restarted", "reuse again lmcache", "startup stop lmcache-restarted",
                "serve", "startup wait lmcache-blocking", "reuse run lmcache-blocking", "startup stop lmcache-blocking",
                "startup report", "reuse report"],
    "multiround": ["common bandwidth",
                   *[s for label in ("no-offload", "lmcache", "native")
                     for s in ("serve", f"startup wait {label}", f"multiround run {label}", f"startup stop {label}")],
                   "startup report", "multiround report"],
    "tp": ["common bandwidth",
           "serve", "startup wait tp2-lmcache-server", "reuse run tp2-lmcache-server", "reuse again tp2-lmcache-server",
           "startup stop tp2-lmcache-server",
           "serve", "startup wait tp2-lmcache-server-restarted", "reuse again tp2-lmcache-server",
           "startup stop tp2-lmcache-server-restarted",
           "serve", "startup wait tp2-lmcache-inproc", "reuse run tp2-lmcache-inproc",
           "startup stop tp2-lmcache-inproc",
           "serve", "startup wait no-offload", "reuse run no-offload", "startup stop no-offload",
           "startup report", "reuse report"],
    "cluster": ["cluster router", "common kv-bytes", "serve", "serve",
                "startup wait cl-a", "startup wait cl-b", "startup wait cl-c",
                "cluster pair store", "common kv-bytes", "cluster plain-read", "cluster pair shared-server",
                "cluster router", "cluster route 2x-cache_aware", "cluster router", "cluster route 2x-round_robin",
                "cluster router", "cluster route 1x", "cluster outage store-outage",
                "startup stop cl-a", "startup stop cl-b", "startup report", "cluster report"],
    "faults": ["serve", "startup wait faults", "faults disk-fill", "reuse run faults", "reuse again faults",
               "faults kill-lmcache", "faults sigterm-inflight", "startup report", "faults report"],
    "loadfaults": ["serve", "startup wait loadfaults", "loadfaults run lmcache-kill", "loadfaults run disk-full",
                   "loadfaults run vllm-kill", "loadfaults run sigterm", "startup report", "loadfaults report"],
    "coord": ["cluster router", "serve", "serve", "startup wait cl-coa", "startup wait cl-cob",
              "cluster route coord-2x-coordinator", "appliance router", "cluster route coord-2x-router",
              "cluster router", "cluster route coord-2x-cache_aware", "cluster router",
              "cluster route coord-2x-round_robin", "startup stop cl-coa", "startup stop cl-cob",
              "startup report", "cluster report"],
    "workloads": [*[s for label in ("no-offload", "lmcache", "native")
                    for s in ("serve", f"startup wait {label}", f"longdoc run {label}", f"multiround run {label}",
                              f"startup stop {label}")],
                  "startup wait bare-vllm", "startup stop bare-vllm",
                  "startup report", "longdoc report", "multiround report"],
    "startvs": ["serve", "startup wait no-offload", "startup stop no-offload", "startup wait bare-vllm",
                "startup stop bare-vllm", "startup report"],
}


@pytest.mark.parametrize("name", suite.SUITES)
def test_each_suite_plans_its_steps_in_the_bash_runners_order(name, tmp_path):
    rc, out = run(["--dry-run", name], tmp_path)
    assert rc == 0, out
    assert steps(out) == PLANS[name], out
    assert "FAILED" not in out and "SKIPPED" not in out
    assert (tmp_path / "out" / "logs" / "suite.log").read_text() == out  # the console, kept


def test_the_reuse_suite_gives_each_configuration_its_words_and_the_shared_environment(tmp_path):
    rc, out = run(["--dry-run", "reuse"], tmp_path, KVDISK="/tmp/kvd", CPU_TIER_GIB="7")
    env = (tmp_path / "out" / "logs" / "lmcache-server" / "appliance.env").read_text().splitlines()
    assert env[:11] == [  # docs/benchmarks/METHOD.md lists the same
        "APPLIANCE_VLLM_COMMAND=python3 -m vllm.entrypoints.cli.main",
        "APPLIANCE_LMCACHE_COMMAND=python3 -m lmcache.cli.main", "VLLM_MODEL=/tmp/model-8b",
        "VLLM_SERVED_MODEL_NAME=llama8b", "VLLM_PORT=8000", "VLLM_LOAD_FORMAT=dummy", "VLLM_ENFORCE_EAGER=true",
        "VLLM_GPU_MEMORY_UTILIZATION=0.6", "VLLM_SERVER_DEV_MODE=1", "VLLM_USE_FLASHINFER_SAMPLER=0",
        "HF_HUB_OFFLINE=1"]
    assert env[11:] == ["APPLIANCE_RUN_DIR=/tmp/run-lmcache-server", "VLLM_KV_OFFLOADING_BACKEND=lmcache",
                        "VLLM_KV_OFFLOADING_SIZE=7", "LMCACHE_LOCAL_DISK=/tmp/kvd", "LMCACHE_MAX_LOCAL_DISK_SIZE=40",
                        "VLLM_MAX_MODEL_LEN=32768"]
    assert "+ rm -rf /tmp/kvd\n" in out  # no prompt of an earlier call may be found on disk
    assert "--phase after_full_restart --restart none --page-cache warm" in out


def test_a_pinned_suite_moves_its_ports_run_directories_and_gpu(tmp_path):
    rc, out = run(["--dry-run", "multiround"], tmp_path, GPU="1", MR_CONFIGS="lmcache-mw4", EXTRA_ENV="X_Y=1")
    env = (tmp_path / "out" / "logs" / "lmcache-mw4" / "appliance.env").read_text().splitlines()
    assert "VLLM_PORT=8001" in env and "APPLIANCE_RUN_DIR=/tmp/run-g1-lmcache-mw4" in env
    assert env[12:14] == ["APPLIANCE_LMCACHE_PORT=5565", "APPLIANCE_LMCACHE_HTTP_PORT=8081"]
    assert env[-3:] == ["APPLIANCE_LMCACHE_METRICS_PORT=9091", "APPLIANCE_METRICS_PORT=9465", "X_Y=1"]
    assert "--base-url http://127.0.0.1:8001" in out
    runner = suite.Runner({"GPU": "1", "OUT": str(tmp_path / "o")}, dry_run=True)
    assert runner.app_env()["CUDA_VISIBLE_DEVICES"] == "1" and runner.pids_file.name == "bench-suite-g1.pids"


def test_the_appliance_starts_without_the_callers_settings(tmp_path):
    runner = suite.Runner({"VLLM_MODEL": "other", "LMCACHE_X": "1", "APPLIANCE_Y": "2", "HOME": "/h",
                           "OUT": str(tmp_path)}, dry_run=True)
    env = runner.app_env(["VLLM_PORT=9"], pythonpath="/s")
    assert env == {"HOME": "/h", "OUT": str(tmp_path), "VLLM_PORT": "9", "PYTHONPATH": "/s"}


def test_unknown_configurations_fail_and_the_others_still_run(tmp_path):
    rc, out = run(["--dry-run", "multiround"], tmp_path, MR_CONFIGS="lmcache-typo native")
    assert "=== [0s] FAILED: unknown multiround configuration lmcache-typo" in out
    assert steps(out)[1:5] == ["serve", "startup wait native", "multiround run native", "startup stop native"]
    assert out.rstrip().endswith("+ python3 -m bench.multiround report --results " + str(tmp_path / "out/results"))


def test_a_spent_budget_skips_every_step_and_says_so(tmp_path):
    rc, out = run(["--dry-run", "reuse"], tmp_path, SUITE_BUDGET_S="0")
    assert steps(out) == ["common bandwidth", "startup report", "reuse report"]
    assert "SKIPPED (budget: 0 s left, reuse no-offload needs ~140 s)" in out
    assert "  - skipped: reuse lmcache-server" in out


def test_the_options_suite_restarts_and_drops_the_page_cache_when_asked(tmp_path):
    rc, out = run(["--dry-run", "options"], tmp_path, OPT_CONFIGS="lmcache-noprewarm", OPT_RESTART="lmcache-noprewarm",
                  REUSE_DROP_CACHES="1")
    assert steps(out)[-6:-2] == ["serve", "startup wait lmcache-noprewarm-restarted-cold",
                                 "reuse again lmcache-noprewarm", "startup stop lmcache-noprewarm-restarted-cold"]
    assert "+ sync; echo 3 > /proc/sys/vm/drop_caches" in out and "--page-cache cold" in out
    env = (tmp_path / "out" / "logs" / "lmcache-noprewarm" / "appliance.env").read_text()
    assert "LMCACHE_PREWARM_SIZE=0\n" in env and "LMCACHE_LOCAL_DISK=/tmp/kvdisk-lmcache-noprewarm\n" in env


def test_the_options_suite_churns_instead_of_reuse(tmp_path):
    rc, out = run(["--dry-run", "options"], tmp_path, OPT_CONFIGS="lmcache-arc", OPT_MODE="churn")
    assert steps(out)[1:5] == ["serve", "startup wait lmcache-arc", "reuse churn lmcache-arc",
                               "startup stop lmcache-arc"]
    assert "--tokens 8000 --prompts 6 --passes 2" in out


def test_the_loadfaults_runs_can_be_chosen(tmp_path):
    rc, out = run(["--dry-run", "loadfaults"], tmp_path, LF_RUNS="disk-full")
    assert [s for s in steps(out) if s.startswith("loadfaults run")] == ["loadfaults run disk-full"]
    assert "--fault fill-disk:/tmp/kvsmall-lf" in out and "--leave-mib 64" in out


def test_the_configurations_words():
    assert suite.opt_words("lmcache-eager-arc", "20", "/k", "40") == [
        "VLLM_KV_OFFLOADING_BACKEND=lmcache", "VLLM_KV_OFFLOADING_SIZE=20", "LMCACHE_LOCAL_DISK=/k-lmcache-eager-arc",
        "LMCACHE_MAX_LOCAL_DISK_SIZE=40", "LMCACHE_EAGER_PREFETCH=true", "LMCACHE_EVICTION_POLICY=ARC"]
    assert suite.opt_words("no-offload", "20", "/k", "40") == ["VLLM_KV_OFFLOADING_BACKEND=none"]
    assert suite.opt_words("lmcache-nope", "20", "/k", "40") is None
    assert suite.opt_words("native", "20", "/k", "40") is None


def test_plan_helpers_read_a_rendered_plan():
    plan = {"vllm": {"argv": ["python3", "-m", "vllm", "serve", "/m", "--port", "8000"], "env": {}},
            "lmcache": {"argv": ["server", "--l1-size-gb", "20"], "disk": {"max_size_gib": 40}},
            "sources": {"size": "ignored"}}
    assert suite.plan_argv(plan, [("--port", "8002"), ("--host", "127.0.0.1")]) == [
        "serve", "/m", "--port", "8002", "--host", "127.0.0.1"]
    assert suite.plan_sizes(plan) == ["    lmcache.argv: --l1-size-gb 20", "    lmcache.disk.max_size_gib = 40"]


# --- the tables at the end ---------------------------------------------------------------------------------------

def test_the_reports_are_written_last_once_each_and_a_failed_one_shows_its_error(tmp_path):
    res = tmp_path / "out" / "results"
    res.mkdir(parents=True)
    rows = [{"bench": "startup", "label": "no-offload", "ok": True, "ready_s": 61.5, "started_at": 1.0}]
    (res / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = io.StringIO()
    runner = suite.Runner({"OUT": str(tmp_path / "out"), "SITE": "", "PY": sys.executable}, stdout=out)
    runner.reports = ["startup", "startup", "nonesuch"]
    runner.logs.mkdir(parents=True)
    runner.write_reports()
    text = out.getvalue()
    assert text.count("no-offload") == 1 and "61.5" in text  # the startup table, once
    assert "(nonesuch.py report failed:)" in text and "No module named bench.nonesuch" in text
    assert (runner.logs / "report-nonesuch.err").is_file() and (runner.logs / "report-startup.err").is_file()
    assert (res / "startup.md").is_file()  # the report's own file, as the bash runner left it


def test_the_end_of_a_call_lists_what_failed_or_was_skipped(tmp_path):
    rc, out = run(["--dry-run", "startvs"], tmp_path, STARTVS_CONFIGS="bogus")
    tail = out[out.index("done in"):]
    assert "  - unknown startvs configuration bogus" in tail


def test_sigterm_stops_the_step_and_the_appliance_and_still_prints_the_end(tmp_path):
    """SIGTERM (a device call running out): "interrupted", the running step and the appliance stopped, the list
    of what failed and the tables, exit 130 (the bash runner's trap)."""
    import signal
    import subprocess
    import time

    fake = tmp_path / "py"  # stands in for the Python of the appliance: serve and wait hang, stop SIGTERMs --pid
    fake.write_text(f"#!{sys.executable}\n"
                    "import os, signal, sys, time\n"
                    "a = sys.argv[1:]\n"
                    "open(os.environ['MARK'], 'a').write(' '.join(a[:3]) + '\\n')\n"
                    "if a[:3] == ['-m', 'entrypoint', 'serve'] or 'wait' in a:\n"
                    "    time.sleep(120)\n"
                    "if 'stop' in a:\n"
                    "    os.kill(int(a[a.index('--pid') + 1]), signal.SIGTERM)\n")
    fake.chmod(0o755)
    mark = tmp_path / "mark"
    env = {"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "out"), "SITE": "", "PY": str(fake), "MARK": str(mark),
           "PYTHONPATH": str(suite.ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "bench.suite", "startvs"], cwd=suite.ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for _ in range(600):  # until the appliance is started and the wait for it runs
        if mark.is_file() and {"-m bench.startup wait", "-m entrypoint serve"} <= set(mark.read_text().splitlines()):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "interrupted" in out and "stopping no-offload (exit)" in out and "serve exit code: 143" in out
    assert out.index("interrupted") < out.index("stopping no-offload (exit)") < out.index("done in")
    assert "  - no-offload did not get ready" not in out  # interrupted, not failed
    calls = mark.read_text().splitlines()  # serve runs in the background: it and the wait start in either order
    assert sorted(calls[:2]) == ["-m bench.startup wait", "-m entrypoint serve"]
    assert calls[2:] == ["-m bench.startup stop", "-m bench.startup report"]  # the tables, still
