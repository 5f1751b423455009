"""The resilience settings (APPLIANCE_GAP_ANSWER, APPLIANCE_GAP_RETRY_AFTER, APPLIANCE_DISK_PRUNE_INTERVAL):
validation with a clear error and exit 2, and what they render."""
import configparser
import os
import subprocess
import sys
from pathlib import Path

import pytest

from entrypoint.config.load import make_plan
from entrypoint.programs import on_fatal
from entrypoint.render.supervisord_conf import render
from entrypoint.rundir import RunDir

ROOT = Path(__file__).resolve().parents[2]


def config(env: dict) -> subprocess.CompletedProcess:
    base = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "entrypoint", "config"], cwd=ROOT, env={**base, **env},
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name,value,message", [
    ("APPLIANCE_GAP_ANSWER", "sometimes", "must be true or false"),
    ("APPLIANCE_GAP_ANSWER", "--port=1", "must be true or false"),
    ("APPLIANCE_GAP_RETRY_AFTER", "0", "must be at least 1"),
    ("APPLIANCE_GAP_RETRY_AFTER", "-5", "must be at least 1"),
    ("APPLIANCE_GAP_RETRY_AFTER", "2.5", "must be a whole number"),
    ("APPLIANCE_GAP_RETRY_AFTER", "99999999999", "must be at most 604800"),
    ("APPLIANCE_GAP_RETRY_AFTER", "5\nRetry-After: 0", "must be a whole number"),
    ("APPLIANCE_DISK_PRUNE_INTERVAL", "0", "must be at least 1"),
    ("APPLIANCE_DISK_PRUNE_INTERVAL", "soon", "must be a whole number"),
    ("APPLIANCE_DISK_PRUNE_INTERVAL", "nan", "must be a whole number"),
])
def test_bad_values_are_a_clear_error_with_exit_2(name, value, message):
    out = config({name: value})
    assert out.returncode == 2, out.stdout
    assert f"error: {name}=" in out.stderr and message in out.stderr
    assert "Traceback" not in out.stderr


def test_defaults():
    plan = make_plan(None, [], {})
    assert plan.errors == []
    a = plan.appliance
    assert (a.gap_answer, a.gap_retry_after, a.disk_prune_interval) == (True, 5, 5)


def programs(env: dict, tmp_path) -> dict[str, dict[str, str]]:
    plan = make_plan(None, [], {"APPLIANCE_RUN_DIR": str(tmp_path), **env})
    assert plan.errors == []
    ini = configparser.RawConfigParser()
    ini.read_string(render(plan, RunDir(tmp_path), "pw"))
    return {s.split(":", 1)[1]: dict(ini[s]) for s in ini.sections() if s.startswith(("program:", "eventlistener:"))}


def test_gap_program_starts_before_vllm_and_stops_after_it(tmp_path):
    progs = programs({"APPLIANCE_GAP_ANSWER": "true"}, tmp_path)
    gap = progs["gap"]
    assert "entrypoint.programs.gap" in gap["command"] and gap["startsecs"] == "1"
    # supervisord starts in ascending priority and stops in descending: the gap answers before vLLM serves
    # and while it drains.
    assert int(progs["metrics"]["priority"]) < int(gap["priority"]) < int(progs["lmcache"]["priority"]) \
        < int(progs["vllm"]["priority"])
    assert "gap" in on_fatal.OPTIONAL  # serving goes on without it


def test_gap_answer_off_renders_no_gap_program(tmp_path):
    assert "gap" not in programs({"APPLIANCE_GAP_ANSWER": "off"}, tmp_path)
