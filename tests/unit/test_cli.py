"""The command line as operators use it: exit codes, output contract, speed, generated files."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(*args, env=None, **kwargs):
    # A clean environment: only what the test gives, so the runner's own variables never leak in.
    base = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "entrypoint", *args], cwd=ROOT, env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=60, **kwargs)


def test_config_json_output_contract():
    out = run("config", "--format", "json", env={"VLLM_KV_OFFLOADING_BACKEND": "lmcache", "VLLM_API_KEY": "sk-1"})
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["vllm"]["argv"][:2] == ["vllm", "serve"]
    assert data["vllm"]["env"] == {"VLLM_API_KEY": "***", "APPLIANCE_KV_IDENTITY": data["kv_identity"]}
    assert data["vllm"]["env_removed"] == ["VLLM_KV_OFFLOADING_BACKEND"]
    assert data["lmcache"]["mode"] == "server"
    assert data["lmcache"]["argv"][:2] == ["lmcache", "server"]
    assert data["lmcache"]["config"] is None
    assert data["warnings"] == [] and data["errors"] == []
    assert data["sources"]["VLLM_KV_OFFLOADING_BACKEND"] == "environment"
    assert "sk-1" not in out.stdout + out.stderr


def test_config_reports_every_problem_and_exits_2():
    out = run("config", env={"VLLM_MAX_MODEL_LENN": "1", "VLLM_PORT": "http"})
    assert out.returncode == 2
    assert "error: VLLM_MAX_MODEL_LENN: unknown variable; did you mean VLLM_MAX_MODEL_LEN?" in out.stderr
    assert "error: VLLM_PORT='http': must be a port number (1-65535)" in out.stderr
    assert "2 problem(s); nothing was started." in out.stderr


def test_check_prints_one_line_per_problem():
    out = run("check", env={"VLLM_GPU_MEMORY_UTILIZATION": "0", "LMCACHE_MODE": "x"})
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2
    ok = run("check", env={})
    assert ok.returncode == 0 and ok.stdout.startswith("ok: Qwen/Qwen3-0.6B on port 8000")


def test_serve_with_bad_input_exits_2_before_anything_starts(tmp_path):
    run_dir = tmp_path / "run"
    out = run("serve", "--max-model-len", "big", env={"APPLIANCE_RUN_DIR": str(run_dir)})
    assert out.returncode == 2
    assert "error: --max-model-len='big': must be a whole number" in out.stderr
    assert not run_dir.exists()


def test_config_text_shows_sources_and_overrides():
    out = run("config", "--kv-offloading-backend", "lmcache", "--kv-offloading-size", "5",
              env={"VLLM_MODEL": "org/m", "VLLM_MAX_MODEL_LEN": "4096"})
    assert out.returncode == 0, out.stderr
    assert re.search(r"\n  VLLM_KV_OFFLOADING_SIZE +=  5.0  \(command line\)\n".replace("=  ", "= "), out.stdout)
    assert re.search(r"\n  VLLM_MAX_MODEL_LEN +=  4096  \(environment\)\n".replace("=  ", "= "), out.stdout)
    assert "    --l1-size-gb 5 \\" in out.stdout


def test_config_never_imports_torch_or_vllm():
    code = ("import sys; from entrypoint.cli import main; rc = main(['config', '--format', 'json']); "
            "bad = [m for m in ('torch', 'vllm', 'lmcache') if m in sys.modules]; "
            "sys.exit(3 if bad else rc)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr


def test_other_commands_run_as_given():
    out = run("bash", "-c", "echo ok")
    assert out.returncode == 0 and out.stdout == "ok\n"


def test_a_first_flag_means_serve(monkeypatch):
    from entrypoint import cli
    seen = {}
    monkeypatch.setattr(cli, "make_plan", lambda env_file, overrides: seen.setdefault("o", overrides) and
                        (_ for _ in ()).throw(SystemExit(0)))
    with pytest.raises(SystemExit):
        cli.main(["--max-model-len", "4096"])
    assert seen["o"] == ["--max-model-len", "4096"]


@pytest.mark.parametrize("env_file", sorted((ROOT / "env").glob("*.env")), ids=lambda p: p.name)
def test_every_example_env_file_passes_check(env_file):
    out = run("check", "--env-file", str(env_file))
    assert out.returncode == 0, out.stderr


def test_generated_docs_and_examples_are_up_to_date():
    out = subprocess.run([sys.executable, "-m", "entrypoint.generators.docs", "--check"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
