"""The second round of hostile input, class by class: files the operator names (bounded, never blocking),
`check` as the whole truth (what a launcher would refuse), near-miss names, secrets that travel (copies, URL
passwords), and flags that open listeners the appliance does not own. Messages are pinned word for word."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from entrypoint.config.settings import LMCACHE_OWNED_FLAGS, LMCACHE_REFUSED_FLAGS, OWNED_FLAGS, REFUSED_FLAGS
from entrypoint.programs.launch import secret_argv_values, server_environment

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-planted-key-4242"


def run_check(*args, env=None, timeout=30):
    """`check` as an operator runs it; a blocking read would hit the timeout and fail the test."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "LMCACHE_", "APPLIANCE_"))}
    out = subprocess.run([sys.executable, "-m", "entrypoint", "check", *args], cwd=ROOT, timeout=timeout,
                         env={**base, "PYTHONPATH": str(ROOT), **(env or {})}, capture_output=True, text=True)
    assert "Traceback" not in out.stderr + out.stdout
    return out


# -- files the operator names -------------------------------------------------------------------------------
@pytest.fixture
def special_files(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    big = tmp_path / "big"
    big.write_bytes(b"A" * ((1 << 20) + 1))
    return {"a FIFO (named pipe)": str(fifo), "a character device": "/dev/zero", "a directory": str(tmp_path),
            "big": str(big)}


@pytest.mark.parametrize("setting", ["VLLM_API_KEY_FILE", "HF_TOKEN_FILE", "APPLIANCE_MODEL_REGISTRY_FILE"])
def test_named_files_that_are_not_regular_files_are_refused_without_blocking(plan_for, special_files, setting):
    for kind, path in special_files.items():
        plan = plan_for({setting: path})
        if kind == "big":
            limit = "1024 KiB" if setting.startswith("APPLIANCE") else "64 KiB"
            want = f"{setting}={path!r}: is larger than {limit}, too big for what it names; name the right file"
        else:
            want = f"{setting}={path!r}: is {kind}, not a regular file; name a file"
        assert want in plan.errors


def test_the_env_file_is_bounded_too(special_files):
    for kind, path in special_files.items():
        out = run_check("--env-file", path)
        assert out.returncode == 2
        want = ("is larger than 1024 KiB, too big for what it names; name the right file" if kind == "big"
                else f"is {kind}, not a regular file; name a file")
        assert f"error: --env-file {path}: {want}" in out.stderr


def test_a_fifo_secret_file_does_not_hang_check(special_files):
    out = run_check(env={"VLLM_API_KEY_FILE": special_files["a FIFO (named pipe)"]}, timeout=20)
    assert out.returncode == 2 and "is a FIFO (named pipe), not a regular file" in out.stderr


def test_a_link_to_a_regular_file_is_fine(plan_for, tmp_path):
    (tmp_path / "key").write_text(KEY + "\n")
    (tmp_path / "link").symlink_to(tmp_path / "key")
    plan = plan_for({"VLLM_API_KEY_FILE": str(tmp_path / "link")})
    assert plan.errors == [] and plan.vllm.env["VLLM_API_KEY"] == KEY


# -- secrets are one line ----------------------------------------------------------------------------------
def test_a_two_line_key_file_is_refused_and_never_shown(tmp_path):
    (tmp_path / "key").write_text(f"{KEY}\nsecond-line-{KEY}\n")
    out = run_check(env={"VLLM_API_KEY_FILE": str(tmp_path / "key")})
    assert out.returncode == 2
    assert (f"error: VLLM_API_KEY_FILE='{tmp_path / 'key'}': the file holds 2 lines; a secret is one line of "
            "printable text (not shown)") in out.stderr
    assert KEY not in out.stdout + out.stderr


@pytest.mark.parametrize("value,what", [(f"{KEY}\r\nx", "2 lines"), (f"{KEY}\x1b[0m", "a control character"),
                                        (f"a\tb{KEY}", "a control character")])
def test_a_secret_with_a_line_break_or_control_character_is_refused(plan_for, value, what):
    plan = plan_for({"VLLM_API_KEY": value})
    assert plan.errors == [f"VLLM_API_KEY holds {what}; a secret is one line of printable text (not shown)"]
    assert KEY not in json.dumps(plan.to_dict())


# -- check is the whole truth -------------------------------------------------------------------------------
def test_a_launch_past_the_kernels_limit_is_found_by_check(plan_for):
    big = {f"BIG_{i}": "x" * 120_000 for i in range(20)}  # each under MAX_ARG_STRLEN, 2.4 MB together
    plan = plan_for(big)
    assert any(e.startswith("the command line and environment of vLLM add up to ") and
               e.endswith("the kernel accepts for a new process (ARG_MAX); shorten the longest values "
                          "(VLLM_EXTRA_ARGS, JSON settings, variables passed through)") for e in plan.errors)


def test_nul_bytes_in_an_env_file_are_found(tmp_path):
    env = tmp_path / ".env"
    env.write_bytes(b"VLLM_SERVED_MODEL_NAME=a\\x00b\nHTTP_PROXY=\"a\x00b\"\n")
    out = run_check("--env-file", str(env))
    assert out.returncode == 2 and "HTTP_PROXY: contains a NUL character" in out.stderr


# -- near-miss names ----------------------------------------------------------------------------------------
NEAR = {"vllm_model": "VLLM_MODEL", "Vllm_Port": "VLLM_PORT", "VLLM_max_model_len": "VLLM_MAX_MODEL_LEN",
        "VLLM_\u041cODEL": "VLLM_MODEL",  # Cyrillic capital EM
        "\uff36LLM_PORT": "VLLM_PORT",  # full-width V
        "VLLM_PO\u200bRT": "VLLM_PORT",  # a zero-width space
        "VLLM-PORT": "VLLM_PORT", "hf_token": "HF_TOKEN", "lmcache_chunk_size": "LMCACHE_CHUNK_SIZE",
        "appliance_health_interval": "APPLIANCE_HEALTH_INTERVAL", "vllm_api_key_file": "VLLM_API_KEY_FILE"}


@pytest.mark.parametrize("name", sorted(NEAR))
def test_near_miss_names_are_errors_that_name_the_right_one(tmp_path, name):
    (tmp_path / ".env").write_text(f"{name}=1234\n", encoding="utf-8")
    out = run_check("--env-file", str(tmp_path / ".env"))
    assert out.returncode == 2
    assert (f"error: {name!r} (in the env file): not read, although it looks like an appliance setting: names are "
            f"exact, in capitals and plain Latin letters; write it as {NEAR[name]}") in out.stderr


def test_near_miss_names_in_the_environment_too(plan_for):
    plan = plan_for({"vllm_port": "9000"})
    assert plan.errors == ["'vllm_port' (in the environment): not read, although it looks like an appliance "
                           "setting: names are exact, in capitals and plain Latin letters; write it as VLLM_PORT"]


def test_other_lowercase_names_pass_through(plan_for):
    assert plan_for({"http_proxy": "http://proxy:3128", "home": "/root"}).errors == []


# -- secrets that travel ------------------------------------------------------------------------------------
def test_a_secret_copied_into_another_value_is_refused(tmp_path):
    env = tmp_path / ".env"
    env.write_text(f"VLLM_API_KEY={KEY}\nVLLM_SERVED_MODEL_NAME=${{VLLM_API_KEY}}\nMY_LABEL=x-${{VLLM_API_KEY}}\n")
    out = run_check("--env-file", str(env))
    assert out.returncode == 2
    for name in ("MY_LABEL", "VLLM_SERVED_MODEL_NAME"):
        assert (f"error: {name} contains the value of VLLM_API_KEY (a ${{VLLM_API_KEY}} in the .env?): a secret must "
                f"not travel in another variable, where it would be printed; remove it from {name}") in out.stderr
    assert KEY not in out.stdout + out.stderr


URL_VALUES = {"HTTPS_PROXY": "http://bob:pw-proxy-77@proxy:3128",
              "VLLM_OTLP_TRACES_ENDPOINT": "http://otel-user:pw-trace-77@otel:4317",
              "VLLM_EXTRA_ARGS": "--tool-server http://u:pw-tool-77@tools:8080"}


@pytest.fixture
def url_plan(plan_for, tmp_path):
    """HTTPS_PROXY in the .env (passed through to the servers), the others in the environment."""
    (tmp_path / ".env").write_text(f"HTTPS_PROXY={URL_VALUES['HTTPS_PROXY']}\n")
    return plan_for({k: v for k, v in URL_VALUES.items() if k != "HTTPS_PROXY"}, env_file=str(tmp_path / ".env"))


def test_url_passwords_are_redacted_in_every_output(url_plan):
    plan = url_plan
    assert plan.errors == []
    shown = json.dumps(plan.to_dict())
    assert "pw-" not in shown
    assert "http://bob:***@proxy:3128" in shown and "http://otel-user:***@otel:4317" in shown
    assert "http://u:***@tools:8080" in shown
    assert plan.mask("calling http://u:pw-tool-77@tools:8080 failed") == "calling http://u:***@tools:8080 failed"
    assert {"pw-proxy-77", "pw-trace-77", "pw-tool-77"} <= plan.secret_values  # masked in the container log too


def test_the_programs_still_get_the_real_urls(url_plan):
    plan = url_plan
    written = plan.to_dict()
    hidden = json.loads(secret_argv_values(plan))["vllm"]
    argv = [hidden.get(str(i), a) for i, a in enumerate(written["vllm"]["argv"])]
    assert argv == plan.vllm.argv and "http://u:pw-tool-77@tools:8080" in argv
    environ = {"HTTPS_PROXY": URL_VALUES["HTTPS_PROXY"]}  # where `serve` put it (export_secrets)
    env = server_environment(plan, written["vllm"]["env"], environ)
    assert env["HTTPS_PROXY"] == URL_VALUES["HTTPS_PROXY"]


# -- listeners the appliance does not own ------------------------------------------------------------------
@pytest.mark.parametrize("flag", sorted(REFUSED_FLAGS))
def test_flags_that_open_listeners_are_refused_by_every_route(plan_for, flag):
    reason = REFUSED_FLAGS[flag]
    name = "VLLM_" + flag[2:].upper().replace("-", "_")
    assert f"{name}: {flag} is not allowed: {reason}" in plan_for({name: "1"}).errors
    assert f"VLLM_EXTRA_ARGS: {flag} is not allowed: {reason}" in plan_for({"VLLM_EXTRA_ARGS": f"{flag}=1"}).errors
    assert f"the arguments after `--`: {flag} is not allowed: {reason}" in plan_for(
        {}, overrides=["--", f"{flag}=1"]).errors


@pytest.mark.parametrize("flag", sorted(LMCACHE_REFUSED_FLAGS))
def test_lmcache_flags_that_open_listeners_are_refused(plan_for, flag):
    plan = plan_for({"LMCACHE_SERVER_EXTRA_ARGS": f"{flag} x"})
    assert plan.errors == [f"LMCACHE_SERVER_EXTRA_ARGS: {flag} is not allowed: {LMCACHE_REFUSED_FLAGS[flag]}"]


def test_the_readme_lists_exactly_the_owned_and_refused_flags():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("**Owned and refused flags.**"):text.index("No value becomes a flag:")]
    owned, refused = section.split("are refused the same way")
    vllm_owned, lmc_owned = owned.split("`lmcache server`:")
    vllm_refused, lmc_refused = refused.split("`lmcache server`:")

    def flags(part):
        return set(re.findall(r"`(--[a-z0-9-]+)`", part))
    assert flags(vllm_owned) == set(OWNED_FLAGS) and flags(lmc_owned) == set(LMCACHE_OWNED_FLAGS)
    assert flags(vllm_refused) == set(REFUSED_FLAGS) and flags(lmc_refused) == set(LMCACHE_REFUSED_FLAGS)
