"""LMCACHE_PREWARM_SIZE / LMCACHE_PREWARM_RECORD_INTERVAL (hot prefixes pre-warmed): the `--server-module`
the plan gives the LMCache server, where it is off and why, what `config` shows, and every bad value a clear
error with exit 2. The module itself runs against LMCache's real classes in tests/contract/test_prewarm.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from entrypoint.config import kv_tiers
from entrypoint.config import schema as schema_mod
from entrypoint.config.load import make_plan

ROOT = Path(__file__).resolve().parents[2]
DISK = {"VLLM_KV_OFFLOADING_SIZE": "8", "LMCACHE_LOCAL_DISK": "/data/kv", "LMCACHE_MAX_LOCAL_DISK_SIZE": "40"}
ON = {**DISK, "LMCACHE_PREWARM_SIZE": "auto"}  # the default, said explicitly
OFF = {**DISK, "LMCACHE_PREWARM_SIZE": "0"}


def module_spec(plan) -> dict | None:
    argv = plan.lmcache.argv or []
    specs = [json.loads(argv[i + 1]) for i, a in enumerate(argv) if a == "--server-module"]
    assert len(specs) <= 1
    return specs[0] if specs else None


def test_on_by_default_with_half_the_cpu_tier_and_0_turns_it_off():
    # on by default since the H200 runs of 11-29 (docs/BENCHMARKS.md "Hot prefixes pre-warmed"); 0 is off
    plan = make_plan(None, [], dict(OFF))
    assert plan.errors == [] and module_spec(plan) is None
    assert plan.tiers.prewarm_gib == 0
    assert make_plan(None, [], dict(ON)).lmcache.argv == make_plan(None, [], dict(DISK)).lmcache.argv
    plan = make_plan(None, [], dict(DISK))
    assert plan.errors == []
    spec = module_spec(plan)
    assert spec["module_path"] == "entrypoint.lmcache_ext.prewarm" and spec["factory_name"] == "build_server_modules"
    assert spec["config"] == {"key_file": f"{plan.lmcache.disk.path}/.appliance-prewarm-keys.json",
                              "max_bytes": 4 << 30, "record_interval_s": 30}
    assert plan.tiers.prewarm_gib == 4.0 and "auto: 0.5 of the 8 GiB CPU tier" in plan.tiers.prewarm_note


def test_a_size_and_interval_set_are_used_and_a_size_over_the_cpu_tier_is_capped():
    plan = make_plan(None, [], {**DISK, "LMCACHE_PREWARM_SIZE": "1.5", "LMCACHE_PREWARM_RECORD_INTERVAL": "5"})
    assert plan.errors == [] and module_spec(plan)["config"]["max_bytes"] == int(1.5 * (1 << 30))
    assert module_spec(plan)["config"]["record_interval_s"] == 5
    plan = make_plan(None, [], {**DISK, "LMCACHE_PREWARM_SIZE": "100"})
    assert plan.errors == [] and module_spec(plan)["config"]["max_bytes"] == 8 << 30
    assert any("LMCACHE_PREWARM_SIZE=100 is larger than the CPU tier" in w for w in plan.warnings)


@pytest.mark.parametrize("env,why", [
    ({"VLLM_KV_OFFLOADING_SIZE": "8"}, "no disk tier"),
    ({**DISK, "LMCACHE_PREWARM_SIZE": "0"}, "LMCACHE_PREWARM_SIZE=0"),
    ({**DISK, "LMCACHE_PREWARM_SIZE": "0", "LMCACHE_PREWARM_RECORD_INTERVAL": "5"}, "LMCACHE_PREWARM_SIZE=0"),
    ({**DISK, "LMCACHE_MODE": "in-process"}, "in-process"),
])
def test_off_where_it_cannot_work_with_the_reason_shown(env, why):
    plan = make_plan(None, [], env)
    assert plan.errors == [] and module_spec(plan) is None
    assert plan.tiers.prewarm_gib == 0.0 and plan.tiers.prewarm_note.startswith("off: ")


@pytest.mark.parametrize("env,message", [
    ({"VLLM_KV_OFFLOADING_SIZE": "8", "LMCACHE_PREWARM_SIZE": "2"}, "no disk tier"),
    ({**DISK, "LMCACHE_MODE": "in-process", "LMCACHE_PREWARM_SIZE": "auto"}, "LMCACHE_MODE=server"),
    ({**DISK, "VLLM_KV_OFFLOADING_BACKEND": "native", "LMCACHE_PREWARM_SIZE": "2"}, "VLLM_KV_OFFLOADING_BACKEND"),
])
def test_set_explicitly_where_it_cannot_work_is_an_error(env, message):
    plan = make_plan(None, [], env)
    assert len(plan.errors) == 1 and message in plan.errors[0] and "LMCACHE_PREWARM_" in plan.errors[0]


def test_an_lmcache_without_server_modules_drops_it_by_default_and_refuses_it_when_set(monkeypatch):
    read = lambda name, v: json.loads((schema_mod.SCHEMA_DIR / f"{name}-{v}.json").read_text())  # noqa: E731
    old = schema_mod.Schema(vllm=read("vllm", "0.26.0"), lmcache=read("lmcache", "0.5.3"))
    assert "--server-module" not in old.lmcache_server_flags
    monkeypatch.setattr(schema_mod, "load", lambda: old)
    plan = make_plan(None, [], dict(DISK))
    assert plan.errors == [] and module_spec(plan) is None
    plan = make_plan(None, [], {**DISK, "LMCACHE_PREWARM_SIZE": "2"})
    assert len(plan.errors) == 1 and "LMCache 0.5.3" in plan.errors[0]


def test_an_operators_own_server_module_is_added_not_refused():
    own = json.dumps({"module_path": "my_pkg.mod"})
    plan = make_plan(None, [], {**ON, "LMCACHE_SERVER_EXTRA_ARGS": f"--server-module '{own}'"})
    assert plan.errors == []
    argv = plan.lmcache.argv
    assert [json.loads(argv[i + 1])["module_path"] for i, a in enumerate(argv) if a == "--server-module"] == [
        kv_tiers.PREWARM_MODULE, "my_pkg.mod"]


def config(env: dict) -> subprocess.CompletedProcess:
    base = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "entrypoint", "config"], cwd=ROOT, env={**base, **env},
                          capture_output=True, text=True, timeout=60)


def test_config_shows_the_size_and_where_the_record_lives():
    out = config(DISK)
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if "Pre-warm at start:" in x)
    assert "up to 4 GiB" in line and ".appliance-prewarm-keys.json" in line
    assert "Pre-warm at start: off: LMCACHE_PREWARM_SIZE=0" in config(OFF).stdout


@pytest.mark.parametrize("name,value,message", [
    ("LMCACHE_PREWARM_SIZE", "-1", "or 0 for off, or auto"),
    ("LMCACHE_PREWARM_SIZE", "lots", "a size in GiB"),
    ("LMCACHE_PREWARM_SIZE", "nan", "a size in GiB"),
    ("LMCACHE_PREWARM_SIZE", "1e400", "a size in GiB"),
    ("LMCACHE_PREWARM_SIZE", "--server-module=x", "a size in GiB"),
    ("LMCACHE_PREWARM_RECORD_INTERVAL", "0", "must be at least 1"),
    ("LMCACHE_PREWARM_RECORD_INTERVAL", "2.5", "must be a whole number"),
    ("LMCACHE_PREWARM_RECORD_INTERVAL", "99999999999", "must be at most"),
])
def test_bad_values_are_a_clear_error_with_exit_2(name, value, message):
    out = config({**DISK, name: value})
    assert out.returncode == 2, out.stdout
    assert f"error: {name}=" in out.stderr and message in out.stderr
    assert "Traceback" not in out.stderr
    assert value not in (make_plan(None, [], {**DISK, name: value}).lmcache.argv or [])  # never a flag


def opt_words(label: str) -> list[str]:
    """bench/suite.py's options configurations (python -m bench.suite options)."""
    from bench import suite

    words = suite.opt_words(label, cpu_tier_gib="20", kvdisk="/tmp/kvdisk", disk_tier_gib="40")
    assert words is not None, label
    return words


def test_the_gpu_suite_measures_the_default_with_pre_warming_and_a_configuration_without():
    on = make_plan(None, [], dict(w.split("=", 1) for w in opt_words("lmcache")))
    off = make_plan(None, [], dict(w.split("=", 1) for w in opt_words("lmcache-noprewarm")))
    assert on.errors == [] == off.errors
    assert module_spec(on)["config"]["max_bytes"] == 10 << 30 and module_spec(off) is None
