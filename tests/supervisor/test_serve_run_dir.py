"""A healthy start: what serve writes and passes on, prefixed output, healthcheck, LMCache supervision,
the disk tier kept under its cap."""
from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

from entrypoint.config.load import make_plan

from appliance_harness import wait_until

API_KEY = "key-from-a-file-3141"
HF_TOKEN = "hf-token-2718"


def test_ready_secrets_stay_off_disk_and_output_is_prefixed(appliance, tmp_path):
    key_file = tmp_path / "api-key"
    key_file.write_text(API_KEY + "\n")
    a = appliance(VLLM_API_KEY_FILE=key_file, HF_TOKEN=HF_TOKEN,
                  popen={"preexec_fn": lambda: resource.setrlimit(resource.RLIMIT_MEMLOCK, (1 << 20, 1 << 20))})
    a.wait_ready()
    a.wait_output("watchdog | vllm is ready")
    assert "probe failed" not in a.output()  # the watchdog's completions carry the key from the file

    # The real healthcheck, as Docker runs it (same environment: VLLM_API_KEY_FILE, not the key).
    ok = a.healthcheck()
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == f"healthy: stub/model at {a.base}\n"
    bad = a.healthcheck({**a.env, "VLLM_API_KEY_FILE": str(tmp_path / "missing")})
    assert bad.returncode == 1
    assert bad.stderr == f"unhealthy: {a.base}/v1/models answered 401\n"

    # Secrets: in vLLM's environment, nowhere on disk.
    start = a.starts("vllm")[0]
    assert start["env"]["VLLM_API_KEY"] == API_KEY and start["env"]["HF_TOKEN"] == HF_TOKEN
    for name in ("VLLM_API_KEY_FILE", "VLLM_PORT", "VLLM_KV_OFFLOADING_BACKEND", "_APPLIANCE_SECRET_ARGV"):
        assert name not in start["env"], name
    assert start["env"]["SUPERVISOR_PROCESS_NAME"] == "vllm"
    for f in (f for f in a.run.root.iterdir() if f.is_file()):
        text = f.read_text(errors="replace")
        assert API_KEY not in text and HF_TOKEN not in text, f
    plan = json.loads(a.run.plan.read_text())
    assert start["argv"] == plan["vllm"]["argv"][2:]  # after `python vllm_stub.py`
    assert oct(a.run.plan.stat().st_mode & 0o777) == "0o600"

    # Every line of the servers reaches serve's output with the program's name, non-ASCII included.
    out = a.output()
    assert f"vllm     | stub-vllm[{start['pid']}]: serving stub/model on 127.0.0.1:{a.env['VLLM_PORT']} \u2713" in out
    assert f"lmcache  | stub-lmcache[{a.pid('lmcache')}]: serving on 127.0.0.1:" in out
    assert ("warning: the locked-memory limit (ulimit -l) is 1 MiB, but the CPU tier pins 1 GiB of host memory; "
            "pinning can fail or fall back to slower transfers. Fix: compose `ulimits: {memlock: -1}` "
            "(docker run --ulimit memlock=-1)") in out
    assert "CRIT" not in out and "ERRO" not in out
    assert a.terminate() == 0


def test_api_key_on_the_command_line_reaches_vllm_but_not_the_disk(appliance):
    secret = "argv-secret-1618"
    a = appliance(VLLM_EXTRA_ARGS=f"--api-key {secret}")
    a.api_key = secret
    a.wait_ready()
    a.wait_output("watchdog | vllm is ready")  # the watchdog found the key serve handed over
    assert "probe failed" not in a.output()
    assert a.healthcheck().returncode == 0  # and the healthcheck, planning again from the environment
    start = a.starts("vllm")[0]
    assert start["argv"][-2:] == ["--api-key", secret]
    assert "_APPLIANCE_SECRET_ARGV" not in start["env"]
    for f in (f for f in a.run.root.iterdir() if f.is_file()):
        assert secret not in f.read_text(errors="replace"), f
    assert secret not in a.output()  # "Executing:" shows it redacted
    assert "--api-key '***'" in a.output()
    assert a.terminate() == 0


def test_healthcheck_fails_when_nothing_serves(tmp_path):
    from appliance_harness import Appliance, base_env
    a = Appliance(tmp_path, base_env(tmp_path))
    r = a.healthcheck()  # no plan in the run directory: built from the environment
    assert r.returncode == 1
    assert r.stderr.startswith(f"unhealthy: {a.base}/health: no answer (ConnectionError)")


def test_unhealthy_lmcache_is_restarted_then_vllm(appliance, timing):
    a = appliance(APPLIANCE_HEALTH_FAILURES=2)
    a.wait_ready()
    a.wait_output("watchdog | vllm is ready")
    lmcache, vllm = a.pid("lmcache"), a.pid("vllm")
    assert a.healthcheck().returncode == 0
    t0 = time.monotonic()
    a.trigger("lmcache-unhealthy")
    a.wait_output("lmcache probe failed (1/2)")
    unhealthy = a.healthcheck()
    assert unhealthy.returncode == 1 and "LMCache server http://127.0.0.1:" in unhealthy.stderr
    a.wait_output("watchdog | 2 failed probes in a row: restarting lmcache then vllm (lmcache killed, vllm stopped: "
                  "a stuck server cannot drain)", 20)
    wait_until(lambda: a.pid("lmcache") not in (0, lmcache) and a.pid("vllm") not in (0, vllm) and a.ready(),
               30, "both restarted and ready")
    timing("LMCache unhealthy -> both restarted, ready", time.monotonic() - t0)
    # vLLM stopped before LMCache, LMCache started before vLLM (vLLM waits for its health).
    assert a.line_index("stopped: vllm") < a.line_index("stopped: lmcache")
    assert a.line_index(f"spawned: 'lmcache' with pid {a.pid('lmcache')}") < \
        a.line_index(f"spawned: 'vllm' with pid {a.pid('vllm')}")
    assert a.healthcheck().returncode == 0


def test_disk_tier_is_pruned_to_its_cap_at_start_and_while_running(appliance, tmp_path):
    cap = 1 << 20  # LMCACHE_MAX_LOCAL_DISK_SIZE in GiB below
    env = {"LMCACHE_LOCAL_DISK": str(tmp_path / "kv"), "LMCACHE_MAX_LOCAL_DISK_SIZE": str(cap / (1 << 30))}
    a = appliance(start=False, **env)
    tier = Path(make_plan(None, [], environ=a.env).lmcache.disk.path)
    tier.mkdir(parents=True)
    files = []
    for i in range(20):  # 20 x 100 KiB = 2 MB over a 1 MiB cap; file 0 is the least recently used
        f = tier / f"chunk-{i:02d}"
        f.write_bytes(b"\0" * 100 * 1024)
        os.utime(f, (1_000_000 + i, 1_000_000 + i))
        files.append(f)
    a.start()
    a.wait_ready()
    out = a.output()
    assert (f"preflight: disk tier {tier} held 1.95 MiB, over its cap of 1 MiB (LMCACHE_MAX_LOCAL_DISK_SIZE): "
            "removed the 11 least recently used file(s), 1.07 MiB") in out
    kept = [f for f in files if f.exists()]
    assert kept == files[-len(kept):], "not the least recently used ones were removed"
    assert sum(f.stat().st_size for f in kept) <= 0.9 * cap
    for i in range(20, 30):  # the watchdog keeps it there while running (files an earlier LMCache server
        # wrote: those the running one wrote are its own eviction's, RESILIENCE.md)
        (tier / f"chunk-{i:02d}").write_bytes(b"\0" * 100 * 1024)
        os.utime(tier / f"chunk-{i:02d}", (1_000_000 + i, 1_000_000 + i))
    wait_until(lambda: sum(f.stat().st_size for f in tier.iterdir()) <= 0.9 * cap, 10, "the watchdog's prune")
    a.wait_output(f"watchdog | disk tier {tier} held")
    assert (tier / "chunk-29").exists()
    assert a.terminate() == 0


def test_in_process_mode_writes_the_lmcache_config_and_runs_vllm_alone(appliance):
    a = appliance(LMCACHE_MODE="in-process", LMCACHE_CHUNK_SIZE=512)
    a.wait_ready()
    config_file = Path(a.env["APPLIANCE_RUN_DIR"]) / "lmcache.yaml"
    assert json.loads(config_file.read_text())["chunk_size"] == 512
    assert config_file.stat().st_mode & 0o777 == 0o600  # it may hold an LMCACHE_<KEY> credential
    assert a.starts("vllm")[0]["env"]["LMCACHE_CONFIG_FILE"] == str(config_file)
    assert {p["name"] for p in a.rpc().getAllProcessInfo()} == {"logs", "on-fatal", "metrics", "gap", "vllm",
                                                                 "watchdog"}
    assert a.healthcheck().returncode == 0
    assert a.terminate() == 0
