"""Hostile or careless input (issue: no input can crash the entrypoint, inject a flag, desynchronise supervision
or leak a secret). Each example of the issue, word for word on the messages."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from entrypoint import cli
from entrypoint.config import resources
from entrypoint.config.kv_tiers import per_worker

ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = {"VLLM_HOST": "127.0.0.1"}  # no API-key warning in tests about something else


def run_cli(argv, env, capsys, monkeypatch):
    """cli.main in-process with exactly `env` as the environment."""
    monkeypatch.setattr(os, "environ", dict(env))
    rc = cli.main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


# -- 1. values never become flags ------------------------------------------------------------------------
def test_a_model_that_looks_like_a_flag_is_refused(plan_for):
    plan = plan_for({"VLLM_MODEL": "--trust-remote-code"})
    assert plan.errors == ["VLLM_MODEL='--trust-remote-code': a model id or path cannot start with '-' (vLLM "
                           "would read it as an option), e.g. VLLM_MODEL=Qwen/Qwen3-0.6B"]


def test_a_model_on_the_command_line_that_looks_like_a_flag_is_refused(plan_for):
    plan = plan_for({}, ["--model", "-x"])
    assert plan.errors == ["--model='-x': a model id or path cannot start with '-' (vLLM would read it as an "
                           "option), e.g. --model=Qwen/Qwen3-0.6B"]


@pytest.mark.parametrize("env, error", [
    ({"VLLM_SERVED_MODEL_NAME": "chat --trust-remote-code"},
     "VLLM_SERVED_MODEL_NAME='chat --trust-remote-code': the name '--trust-remote-code' starts with '-' (vLLM "
     "would read it as an option)"),
    ({"VLLM_MIDDLEWARE": "-x"}, "VLLM_MIDDLEWARE='-x': the value '-x' starts with '-' (vLLM would read it as "
                                "an option)"),
    ({"VLLM_LORA_MODULES": "a=/x --enforce-eager"},
     "VLLM_LORA_MODULES='a=/x --enforce-eager': the value '--enforce-eager' starts with '-' (vLLM would read "
     "it as an option)"),
])
def test_list_values_cannot_smuggle_a_flag(plan_for, env, error):
    assert plan_for(env).errors == [error]


@pytest.mark.parametrize("value", ["--kv-transfer-config", "kv-server:5555 --port 9", "-x:1", "tcp://--host:1"])
def test_the_lmcache_server_address_cannot_become_a_flag(plan_for, value):
    """LMCACHE_SERVER lands in vLLM's --kv-transfer-config JSON: refused before, whatever it holds."""
    plan = plan_for({"LMCACHE_SERVER": value, **LOOPBACK})
    assert len(plan.errors) == 1 and plan.errors[0].startswith(f"LMCACHE_SERVER={value!r}: ")
    assert plan.lmcache.server is None
    assert plan.vllm.argv.count("--kv-transfer-config") == 1  # the appliance's own, at its own server
    assert json.loads(plan.vllm.argv[plan.vllm.argv.index("--kv-transfer-config") + 1])[
        "kv_connector_extra_config"]["lmcache.mp.host"] == "tcp://127.0.0.1"


def test_a_single_value_that_starts_with_a_dash_is_passed_in_the_equals_form(plan_for):
    plan = plan_for({"VLLM_TOKENIZER": "-odd-tokenizer", **LOOPBACK})
    assert plan.errors == []
    assert "--tokenizer=-odd-tokenizer" in plan.vllm.argv and "-odd-tokenizer" not in plan.vllm.argv


# -- 2. the appliance owns what supervision depends on ---------------------------------------------------
@pytest.mark.parametrize("extra, error", [
    ("--port 9000", "VLLM_EXTRA_ARGS: --port is set by the appliance; use VLLM_PORT"),
    ("--port=9000", "VLLM_EXTRA_ARGS: --port is set by the appliance; use VLLM_PORT"),
    ("--por 9000", "VLLM_EXTRA_ARGS: --por (read by vLLM as --port) is set by the appliance; use VLLM_PORT"),
    ("--host 0.0.0.0", "VLLM_EXTRA_ARGS: --host is set by the appliance; use VLLM_HOST"),
    ("--served-model-name other", "VLLM_EXTRA_ARGS: --served-model-name is set by the appliance; use "
                                  "VLLM_SERVED_MODEL_NAME (the health checks ask for the first name)"),
    ("--served_model_name other", "VLLM_EXTRA_ARGS: --served_model_name (read by vLLM as --served-model-name) is "
                                  "set by the appliance; use VLLM_SERVED_MODEL_NAME (the health checks ask for "
                                  "the first name)"),
    ("--kv-transfer-config.kv_role kv_both",
     "VLLM_EXTRA_ARGS: --kv-transfer-config.kv_role (read by vLLM as --kv-transfer-config) is set by the "
     "appliance; the appliance writes it from VLLM_KV_OFFLOADING_BACKEND; set VLLM_KV_OFFLOADING_BACKEND=none "
     "to pass your own"),
    ("--uds /tmp/vllm.sock", "VLLM_EXTRA_ARGS: --uds is set by the appliance; the appliance's health checks "
                             "reach vLLM over TCP; use VLLM_HOST and VLLM_PORT"),
    ("--ssl-certfile /c.pem", "VLLM_EXTRA_ARGS: --ssl-certfile is set by the appliance; the appliance's health "
                              "checks speak plain HTTP to vLLM; terminate TLS in front of the appliance (a "
                              "reverse proxy)"),
    ("--po 9000", "VLLM_EXTRA_ARGS: --po is an abbreviation of several vllm serve flags; write the flag in full"),
    ("--max-model-len 8192", "VLLM_EXTRA_ARGS: --max-model-len is already set by VLLM_MAX_MODEL_LEN (from the "
                             "model registry); set it there only (vLLM would see both values)"),
])
def test_owned_flags_in_extra_args_name_the_variable_to_use(plan_for, extra, error):
    assert plan_for({"VLLM_EXTRA_ARGS": extra}).errors == [error]


def test_owned_flags_after_the_double_dash(plan_for):
    plan = plan_for({}, ["--", "--port", "9000", "--host", "::"])
    assert plan.errors == ["the arguments after `--`: --port is set by the appliance; use VLLM_PORT",
                           "the arguments after `--`: --host is set by the appliance; use VLLM_HOST"]


def test_owned_flags_as_generic_variables(plan_for):
    plan = plan_for({"VLLM_UDS": "/tmp/s", "VLLM_HEADLESS": "true"})
    assert sorted(plan.errors) == [
        "VLLM_HEADLESS: --headless is set by the appliance; it starts no API server for the appliance to serve "
        "and supervise",
        "VLLM_UDS: --uds is set by the appliance; the appliance's health checks reach vLLM over TCP; use "
        "VLLM_HOST and VLLM_PORT"]


def test_overrides_after_serve_are_followed_by_the_plan_and_supervision(plan_for):
    plan = plan_for({"VLLM_PORT": "9000", "VLLM_SERVED_MODEL_NAME": "a"},
                    ["--port", "9001", "--served-model-name", "b", "--host", "127.0.0.1"])
    assert plan.errors == []
    assert (plan.api_host, plan.api_port, plan.served_model_name) == ("127.0.0.1", 9001, "b")
    assert plan.vllm.argv.count("--port") == 1 and plan.vllm.argv.count("--served-model-name") == 1


@pytest.mark.parametrize("extra, error", [
    ("--port 1", "LMCACHE_SERVER_EXTRA_ARGS: --port is set by the appliance; use APPLIANCE_LMCACHE_PORT"),
    ("--http-p 2", "LMCACHE_SERVER_EXTRA_ARGS: --http-p (read by LMCache as --http-port) is set by the appliance; "
                   "use APPLIANCE_LMCACHE_HTTP_PORT"),
    ("--host 0.0.0.0", "LMCACHE_SERVER_EXTRA_ARGS: --host is set by the appliance; the LMCache server listens on "
                       "127.0.0.1 (vLLM in this container is its only client), or on all interfaces with "
                       "APPLIANCE_ROLE=kv-server"),
    ("--l1-size-gb 9", "LMCACHE_SERVER_EXTRA_ARGS: --l1-size-gb is set by the appliance; use "
                       "VLLM_KV_OFFLOADING_SIZE"),
])
def test_owned_lmcache_server_flags(plan_for, extra, error):
    assert plan_for({"LMCACHE_SERVER_EXTRA_ARGS": extra}).errors == [error]


def test_a_second_l2_adapter_is_allowed(plan_for):
    plan = plan_for({"LMCACHE_SERVER_EXTRA_ARGS": '--l2-adapter \'{"type":"mock"}\'', **LOOPBACK})
    assert plan.errors == [] and plan.lmcache.argv[-2:] == ["--l2-adapter", '{"type":"mock"}']


# -- 3. secrets ------------------------------------------------------------------------------------------
def test_vllm_hf_token_is_hidden_in_values_and_json(plan_for):
    plan = plan_for({"VLLM_HF_TOKEN": "hf_planted_value", **LOOPBACK})
    shown = json.dumps(plan.to_dict())
    assert "hf_planted_value" not in shown
    assert plan.to_dict()["values"]["VLLM_HF_TOKEN"] == "***"
    assert plan.vllm.argv[plan.vllm.argv.index("--hf-token") + 1] == "hf_planted_value"  # vLLM gets it


def test_every_value_of_a_multi_value_api_key_is_hidden(plan_for):
    plan = plan_for({"VLLM_EXTRA_ARGS": "--api-key k1-planted k2-planted --seed 1", **LOOPBACK})
    d = plan.to_dict()
    assert d["vllm"]["argv"][-5:] == ["--api-key", "***", "***", "--seed", "1"]
    assert d["values"]["VLLM_EXTRA_ARGS"] == "--api-key '***' '***' --seed 1"
    assert "planted" not in json.dumps(d)


@pytest.mark.parametrize("extra", ["--api-key=k1-planted", "--api_key k1-planted", "--api-k k1-planted",
                                   "--hf-token=k1-planted"])
def test_secret_flags_in_every_spelling(plan_for, extra):
    plan = plan_for({"VLLM_EXTRA_ARGS": extra, **LOOPBACK})
    assert "k1-planted" not in json.dumps(plan.to_dict())


def test_extra_args_that_cannot_be_split_never_show_the_key(plan_for, capsys, monkeypatch):
    env = {"VLLM_EXTRA_ARGS": "--api-key 'k1-planted --seed 1", **LOOPBACK}
    plan = plan_for(env)
    assert plan.errors == ["VLLM_EXTRA_ARGS: cannot be split like a shell command line (No closing quotation); "
                           "balance the quotes, or escape a quote that belongs to a value with a backslash"]
    assert plan.to_dict()["values"]["VLLM_EXTRA_ARGS"] == "--api-key *** --seed 1"
    rc, out, err = run_cli(["config"], env, capsys, monkeypatch)
    assert rc == 2 and "k1-planted" not in out + err


def test_an_empty_api_key_file_is_an_error(tmp_path, plan_for):
    key = tmp_path / "key"
    key.write_text(" \n\t\n")
    plan = plan_for({"VLLM_API_KEY_FILE": str(key)})
    assert plan.errors == [f"VLLM_API_KEY_FILE={str(key)!r}: the file is empty (or only white space); put the "
                           "secret in it, or unset VLLM_API_KEY_FILE"]


@pytest.mark.parametrize("name", ["AWS_SECRET_ACCESS_KEY", "LMCACHE_RESP_PASSWORD", "MY_SERVICE_TOKEN",
                                  "OPENAI_API_KEY", "DB_PASSWORD", "X_SECRET_SAUCE"])
def test_credentials_by_pattern_are_hidden(tmp_path, plan_for, name):
    env_file = tmp_path / ".env"
    env_file.write_text(f"{name}=planted-credential\n")
    plan = plan_for({"VLLM_KV_OFFLOADING_BACKEND": "lmcache", **LOOPBACK}, env_file=str(env_file))
    assert plan.errors == []
    assert "planted-credential" not in json.dumps(plan.to_dict())


def test_a_secret_in_a_json_argument_is_hidden(plan_for):
    adapter = '{"type":"resp","host":"valkey","port":6379,"password":"planted-pw"}'
    plan = plan_for({"LMCACHE_SERVER_EXTRA_ARGS": f"--l2-adapter '{adapter}'", **LOOPBACK})
    assert plan.errors == []
    assert "planted-pw" not in json.dumps(plan.to_dict())
    assert plan.lmcache.argv[-1] == adapter  # the server gets it


def test_a_second_api_key_on_the_command_line_is_never_quoted(plan_for):
    plan = plan_for({}, ["--api-key", "k1-planted", "k2-planted"])
    assert plan.errors == ["command line: unexpected argument (a further value of a secret option, not shown): "
                           "options are --flag value; put raw vLLM arguments after `--`"]
    assert "planted" not in json.dumps(plan.to_dict())


def test_no_api_key_on_a_public_address_is_one_warning(plan_for):
    assert plan_for({}).warnings == [
        "no API key is set and the API listens on 0.0.0.0:8000: anyone who reaches that port can use the model. "
        "Set VLLM_API_KEY (or VLLM_API_KEY_FILE), or VLLM_HOST=127.0.0.1 to listen on loopback only"]
    assert plan_for({"VLLM_API_KEY": "sk-1"}).warnings == []
    assert plan_for({"VLLM_HOST": "127.0.0.1"}).warnings == []


# -- 4. errors, never tracebacks -------------------------------------------------------------------------
def test_an_env_file_that_is_not_utf8(tmp_path, plan_for):
    env_file = tmp_path / ".env"
    env_file.write_bytes(b"VLLM_MODEL=org/m\nVLLM_SERVED_MODEL_NAME=caf\xe9\n")
    plan = plan_for(env_file=str(env_file))
    assert plan.errors == [f"--env-file {env_file}: line 2 is not UTF-8 text (byte 0xe9 at column 27); save the "
                           "file as UTF-8"]


def test_an_apostrophe_in_the_served_model_name(tmp_path, plan_for):
    env_file = tmp_path / ".env"
    env_file.write_text("VLLM_SERVED_MODEL_NAME=bob's-model\n")
    plan = plan_for(LOOPBACK, env_file=str(env_file))
    assert plan.errors == [] and plan.served_model_name == "bob's-model"
    assert plan.vllm.argv[plan.vllm.argv.index("--served-model-name") + 1] == "bob's-model"


@pytest.mark.parametrize("name", ["VLLM_EXTRA_ARGS", "LMCACHE_SERVER_EXTRA_ARGS", "APPLIANCE_VLLM_COMMAND",
                                  "APPLIANCE_LMCACHE_COMMAND", "VLLM_CUDAGRAPH_CAPTURE_SIZES"])
def test_unbalanced_quotes_in_any_shell_split_setting(plan_for, name):
    plan = plan_for({name: "it's"})
    split_error = ("cannot be split like a shell command line (No closing quotation); balance the quotes, or "
                   "escape a quote that belongs to a value with a backslash")
    expected = f"{name}='it'\"'\"'s': {split_error}" if name == "VLLM_CUDAGRAPH_CAPTURE_SIZES" else \
        f"{name}: {split_error}"
    assert plan.errors == [expected.replace("'it'\"'\"'s'", '"it\'s"')]


def test_an_env_file_line_without_equals_sign_is_reported_with_its_number(tmp_path, plan_for):
    env_file = tmp_path / ".env"
    env_file.write_text("# comment\nVLLM_MODEL=org/m\nVLLM_MAX_MODEL_LEN\n")
    plan = plan_for(env_file=str(env_file))
    assert plan.errors == [f"--env-file {env_file}: line 3: 'VLLM_MAX_MODEL_LEN' has no '=': write "
                           "VLLM_MAX_MODEL_LEN=value, or remove the line"]


def test_an_env_file_line_that_cannot_be_parsed(tmp_path, plan_for):
    env_file = tmp_path / ".env"
    env_file.write_text("VLLM_MODEL=org/m\n=5\n")
    plan = plan_for(env_file=str(env_file))
    assert plan.errors == [f"--env-file {env_file}: line 2: cannot be read as NAME=value (an unclosed quote, or "
                           "no name before '=')"]


def test_env_file_interpolation_as_compose_does_it(tmp_path, plan_for):
    env_file = tmp_path / ".env"
    env_file.write_text("ORG=acme\nVLLM_MODEL=$ORG/${NAME:-base}\nVLLM_SERVED_MODEL_NAME='$ORG'\n"
                        "VLLM_EXTRA_ARGS=--seed ${SEED} --max-logprobs $$5\n")
    plan = plan_for({"SEED": "7", **LOOPBACK}, env_file=str(env_file))
    assert plan.model == "acme/base"
    assert plan.served_model_name == "$ORG"  # single quotes: literal
    assert plan.vllm.argv[-4:] == ["--seed", "7", "--max-logprobs", "$5"]


def test_a_required_variable_missing_in_interpolation(tmp_path, plan_for):
    env_file = tmp_path / ".env"
    env_file.write_text("VLLM_MODEL=${MODEL:?set MODEL to the model id}\n")
    plan = plan_for(env_file=str(env_file))
    assert plan.errors == [f"--env-file {env_file}: line 1: MODEL is required: set MODEL to the model id"]


@pytest.mark.parametrize("env, error", [
    ({"VLLM_EXTRA_ARGS": "x" * 200_000}, "VLLM_EXTRA_ARGS: is 200000 bytes long; the kernel refuses a single "
                                         "variable or argument of 131072 bytes or more"),
    ({"VLLM_MAX_MODEL_LEN": "9" * 5000}, "VLLM_MAX_MODEL_LEN='" + "9" * 200 + "... (5000 characters)': must be a "
                                         "whole number (e.g. 32768 or 32k), or auto"),
    ({"VLLM_KV_OFFLOADING_SIZE": "1e400"}, "VLLM_KV_OFFLOADING_SIZE='1e400': must be a size in GiB greater than "
                                           "0, e.g. 5.0, or auto"),
    ({"APPLIANCE_STARTUP_TIMEOUT": "99999999999"}, "APPLIANCE_STARTUP_TIMEOUT='99999999999': must be at most "
                                                   "604800 (a week)"),
])
def test_huge_values(plan_for, env, error):
    assert plan_for(env).errors == [error]


def test_a_nul_byte_in_an_env_file(tmp_path, plan_for):
    env_file = tmp_path / ".env"
    env_file.write_bytes(b"HF_HOME=/models\x00x\n")
    plan = plan_for(env_file=str(env_file))
    assert plan.errors == ["HF_HOME: contains a NUL character, which no environment variable or argument can hold"]


def test_config_piped_into_head_exits_quietly():
    out = subprocess.run(f"{sys.executable} -m entrypoint config | head -1", shell=True, cwd=ROOT,
                         capture_output=True, text=True, env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)})
    assert out.stdout.startswith("Model: ") and "Traceback" not in out.stderr and "BrokenPipe" not in out.stderr


# -- 5. agree with what vLLM accepts ---------------------------------------------------------------------
@pytest.mark.parametrize("raw, parsed, argv", [("32k", 32000, "32000"), ("32K", 32768, "32768"),
                                               ("25.6k", 25600, "25600"), ("auto", -1, "auto"), ("-1", -1, "auto")])
def test_max_model_len_as_vllm_reads_it(plan_for, raw, parsed, argv):
    plan = plan_for({"VLLM_MAX_MODEL_LEN": raw})
    assert plan.errors == [] and plan.values["VLLM_MAX_MODEL_LEN"] == parsed
    assert plan.vllm.argv[plan.vllm.argv.index("--max-model-len") + 1] == argv


def test_where_the_appliance_is_stricter_it_says_why(plan_for):
    assert plan_for({"VLLM_MAX_MODEL_LEN": "1.5K"}).errors == [
        "VLLM_MAX_MODEL_LEN='1.5K': takes no decimals with the binary suffix K (vLLM refuses it), e.g. 1.5k (x1000)"]
    assert plan_for({"VLLM_MAX_MODEL_LEN": "0"}).errors == ["VLLM_MAX_MODEL_LEN='0': must be at least 1, or auto, "
                                                            "e.g. VLLM_MAX_MODEL_LEN=32768"]


# -- 6. consistent supervision settings ------------------------------------------------------------------
def test_a_percent_sign_in_the_run_dir_reaches_supervisord_escaped(tmp_path, plan_for):
    from supervisor.options import ServerOptions

    from entrypoint.render.supervisord_conf import render
    from entrypoint.rundir import RunDir
    run_dir = tmp_path / "100%run"
    plan = plan_for({"APPLIANCE_RUN_DIR": str(run_dir), **LOOPBACK})
    assert plan.errors == []
    run = RunDir.of(plan)
    run.root.mkdir()
    run.conf.write_text(render(plan, run, "pw"))
    options = ServerOptions()
    options.realize(["-c", str(run.conf)])
    for name in ("vllm", "lmcache"):
        program = next(g for g in options.process_group_configs if g.name == name).process_configs[0]
        assert str(run.plan) in program.command and program.stdout_logfile == str(run.log(name))
    assert (options.logfile, options.pidfile, options.childlogdir) == (
        str(run.root / "supervisord.log"), str(run.root / "supervisord.pid"), str(run.root))
    assert options.server_configs[0]["file"] == str(run.socket)


@pytest.mark.parametrize("value, error", [
    ("/tmp/a\n[program:evil]", "APPLIANCE_RUN_DIR='/tmp/a\\n[program:evil]': must be an absolute path without "
                               "control characters, e.g. /run/appliance"),
    ("/tmp/a ;b", "APPLIANCE_RUN_DIR='/tmp/a ;b': cannot hold a space followed by ';' or '#' (supervisord reads "
                  "the rest as a comment)"),
    ("run", "APPLIANCE_RUN_DIR='run': must be an absolute path without control characters, e.g. /run/appliance"),
])
def test_run_dir_values_that_would_break_supervisord_conf(plan_for, value, error):
    assert plan_for({"APPLIANCE_RUN_DIR": value}).errors == [error]


@pytest.mark.parametrize("total, tp, share", [(0.001, 8, 0.001), (1, 3, 0.333), (20, 2, 10.0)])
def test_in_process_share_never_rounds_to_zero(total, tp, share):
    assert per_worker(total, tp) == share


# -- 7. resource sanity ----------------------------------------------------------------------------------
def test_a_cpu_tier_larger_than_the_container_memory_warns_with_the_size_to_use(plan_for):
    host = resources.FixedHost(memory_bytes=16 << 30, memory_source="the cgroup memory limit")
    plan = plan_for({"VLLM_KV_OFFLOADING_SIZE": "40", **LOOPBACK}, host=host)
    assert plan.errors == []
    assert plan.warnings == ["the CPU tier of 40 GiB (VLLM_KV_OFFLOADING_SIZE) is larger than the 16.0 GiB of "
                             "memory this container may use (the cgroup memory limit); set "
                             "VLLM_KV_OFFLOADING_SIZE=8 (or auto); `serve` refuses to start with it"]


def test_preflight_refuses_a_cpu_tier_larger_than_the_container_memory(plan_for):
    from entrypoint.supervise.preflight import Findings, check_memory
    host = resources.FixedHost(memory_bytes=16 << 30, memory_source="MemAvailable")
    plan = plan_for({"LMCACHE_MAX_LOCAL_CPU_SIZE": "20", **LOOPBACK}, host=host)
    found = Findings()
    check_memory(plan, found, host)
    assert found.errors == ["the CPU tier of 20 GiB (LMCACHE_MAX_LOCAL_CPU_SIZE) is larger than the 16.0 GiB of "
                            "memory this container may use (MemAvailable); set LMCACHE_MAX_LOCAL_CPU_SIZE=8 (or "
                            "auto)"]


def test_auto_sizes_from_memory_and_says_so(plan_for):
    plan = plan_for({"VLLM_MODEL": "org/m", **LOOPBACK}, host=resources.FixedHost(memory_bytes=24 << 30))
    assert plan.errors == [] and plan.warnings == []
    assert plan.lmcache.mode == "server"  # on by default, for a model the registry does not know
    assert plan.lmcache.argv[plan.lmcache.argv.index("--l1-size-gb") + 1] == "12"
    assert plan.tiers.cpu_tier_source == "auto: half of 24.0 GiB (the cgroup memory limit)"


def test_auto_is_capped_by_memlock(plan_for):
    host = resources.FixedHost(memory_bytes=64 << 30, memlock_bytes=3 << 30)
    plan = plan_for({"VLLM_KV_OFFLOADING_SIZE": "auto", **LOOPBACK}, host=host)
    assert plan.tiers.cpu_tier_gib == 3.0
    assert plan.tiers.cpu_tier_source == "auto: the locked-memory limit, 3.0 GiB (ulimit -l)"


def test_default_offloading_turns_itself_off_with_a_warning_when_nothing_fits(plan_for):
    host = resources.FixedHost(memlock_bytes=8 << 20)
    plan = plan_for({"VLLM_MODEL": "org/m", **LOOPBACK}, host=host)
    assert plan.errors == [] and plan.lmcache.mode is None
    assert plan.warnings == ["KV offloading is off: too little memory for a CPU tier (the locked-memory limit, "
                             "8 MiB (ulimit -l); at least 1 GiB). To have one, raise the locked-memory limit "
                             "(compose `ulimits: {memlock: -1}`, docker run --ulimit memlock=-1); to silence "
                             "this, set VLLM_KV_OFFLOADING_BACKEND=none"]


def test_asked_for_offloading_that_cannot_fit_is_an_error(plan_for):
    host = resources.FixedHost(memory_bytes=1 << 30)
    plan = plan_for({"VLLM_MODEL": "org/m", "VLLM_KV_OFFLOADING_BACKEND": "lmcache"}, host=host)
    assert plan.errors == ["VLLM_KV_OFFLOADING_SIZE=auto: too little memory for a CPU tier (half of 1.0 GiB (the "
                           "cgroup memory limit); at least 1 GiB); give the container more memory, set a size, "
                           "or set VLLM_KV_OFFLOADING_BACKEND=none"]


def test_backend_none_turns_offloading_off(plan_for):
    plan = plan_for({"VLLM_MODEL": "org/m", "VLLM_KV_OFFLOADING_BACKEND": "none", **LOOPBACK})
    assert plan.errors == [] and plan.lmcache.mode is None and plan.warnings == []


def test_auto_disk_tier_from_free_space_and_what_it_holds(plan_for):
    host = resources.FixedHost(free_bytes=100 << 30, held_bytes=20 << 30)
    plan = plan_for({"LMCACHE_LOCAL_DISK": "true", "LMCACHE_MAX_LOCAL_DISK_SIZE": "auto", **LOOPBACK}, host=host)
    assert plan.errors == [] and plan.lmcache.disk.max_size_gib == 96.0
    assert plan.tiers.disk_tier_source == ("auto: 80% of 100.0 GiB free at /var/lib/appliance/kv-disk plus "
                                                  "20.0 GiB it holds")


def test_a_disk_tier_in_the_writable_layer_is_a_warning(plan_for):
    plan = plan_for({"LMCACHE_LOCAL_DISK": "/data/kv", **LOOPBACK}, host=resources.FixedHost(writable_layer=True))
    assert plan.errors == []
    assert plan.warnings == ["the disk tier /data/kv is not on a volume: it lives in the container's writable "
                             "layer (slower, and lost when the container is re-created). Mount a volume there "
                             "(compose: `volumes: [\"kv-disk:/data/kv\"]`), or set LMCACHE_LOCAL_DISK=true for the "
                             "image's volume"]


def test_config_shows_the_chosen_sizes_and_their_source(capsys, monkeypatch):
    rc, out, _ = run_cli(["config"], {"VLLM_MODEL": "org/m", "LMCACHE_LOCAL_DISK": "true", **LOOPBACK}, capsys,
                         monkeypatch)
    assert rc == 0
    assert "  CPU tier: 32 GiB (auto: half of 64.0 GiB (the cgroup memory limit))" in out.splitlines()
    assert any(line.startswith("  Disk tier: /var/lib/appliance/kv-disk/org--m__") and
               line.endswith("(at most 50 GiB, LMCACHE_MAX_LOCAL_DISK_SIZE)") for line in out.splitlines())


def test_a_line_without_equals_sign_that_may_hold_a_secret_is_not_quoted(tmp_path, plan_for):
    env_file = tmp_path / ".env"
    env_file.write_text("VLLM_API_KEYsk-planted\n")  # the = forgotten
    plan = plan_for(env_file=str(env_file))
    assert plan.errors == [f"--env-file {env_file}: line 1: has no '=' (not shown: it may hold a secret); write "
                           "NAME=value, or remove the line"]


# -- secrets at run time: which process gets them, and the log relay -------------------------------------
def test_the_lmcache_server_never_gets_vllms_secrets(plan_for):
    from entrypoint.programs.launch import SECRET_ARGV_VAR, lmcache_environment, server_environment
    env_file_password = {"LMCACHE_RESP_PASSWORD": "resp-pw"}
    plan = plan_for({"VLLM_KV_OFFLOADING_BACKEND": "lmcache", **env_file_password, **LOOPBACK})
    running = {"VLLM_API_KEY": "sk-1", "HF_TOKEN": "hf-1", "VLLM_API_KEY_FILE": "/run/secrets/k",
               SECRET_ARGV_VAR: "{}", "PATH": "/usr/bin", "LMCACHE_RESP_PASSWORD": "resp-pw"}
    lmcache = lmcache_environment(plan, running)
    assert "VLLM_API_KEY" not in lmcache and "HF_TOKEN" not in lmcache and "VLLM_API_KEY_FILE" not in lmcache
    assert lmcache["LMCACHE_RESP_PASSWORD"] == "resp-pw" and SECRET_ARGV_VAR not in lmcache
    vllm = server_environment(plan, plan.vllm.env, running)
    assert vllm["VLLM_API_KEY"] == "sk-1" and vllm["HF_TOKEN"] == "hf-1"


def test_the_log_relay_masks_every_known_secret_whoever_prints_it():
    from entrypoint.programs.logs import mask, secret_bytes
    environ = {"VLLM_API_KEY": "sk-env-key", "MY_TOKEN": "tok-12345", "PATH": "/usr/bin",
               "_APPLIANCE_SECRET_ARGV": json.dumps({"vllm": {"9": "k1-argv", "10": "--api-key=k2-argv"},
                                                    "lmcache": {"20": '{"type":"resp","password":"pw-json"}'}})}
    secrets = secret_bytes(environ)
    line = b"INFO non-default args: {'api_key': ['k1-argv', 'k2-argv']} sk-env-key tok-12345 pw-json /usr/bin"
    assert mask(line, secrets) == b"INFO non-default args: {'api_key': ['***', '***']} *** *** *** /usr/bin"


# -- a launcher that gives up ----------------------------------------------------------------------------
def test_give_ups_are_counted_and_reset_by_a_start(tmp_path, monkeypatch):
    from entrypoint.programs import launch
    from entrypoint.render.supervisord_conf import START_RETRIES
    from entrypoint.rundir import RunDir
    run = RunDir(tmp_path)
    shutdowns = []

    class Rpc:
        class supervisor:  # noqa: N801 - the shape of supervisord's XML-RPC proxy
            @staticmethod
            def shutdown():
                shutdowns.append(True)

    monkeypatch.setattr(RunDir, "rpc", lambda self: Rpc)
    monkeypatch.setenv("SUPERVISOR_SERVER_URL", "unix:///x")
    for _ in range(START_RETRIES):
        assert launch.gave_up(run, "vllm") == 1
    assert shutdowns == [] and not run.fatal.exists()
    launch.gave_up(run, "vllm")
    assert shutdowns == [True] and run.fatal.read_text() == "vllm\n"
    launch.give_ups(run, "vllm").write_text("1 3\n")  # left by another supervisord: not counted
    launch.gave_up(run, "vllm")
    assert launch.give_ups(run, "vllm").read_text() == f"{os.getppid()} 1\n" and shutdowns == [True]
    launch.give_ups(run, "lmcache").write_text("3\n")
    monkeypatch.setattr(launch.os, "execvpe", lambda *a: None)
    launch._exec(run, "lmcache", ["true"], {})
    assert not launch.give_ups(run, "lmcache").exists()


def test_api_key_spellings_are_written_out_for_the_health_checks(plan_for):
    plan = plan_for({"VLLM_EXTRA_ARGS": "--api_key k1-planted --api-k=k2-planted", **LOOPBACK})
    assert plan.vllm.argv[-3:] == ["--api-key", "k1-planted", "--api-key=k2-planted"]


def test_api_key_twice_would_desynchronise_the_probes(plan_for):
    plan = plan_for({"VLLM_API_KEY": "sk-env", "VLLM_EXTRA_ARGS": "--api-key sk-cli"})
    assert plan.errors == ["VLLM_API_KEY and --api-key are both set: vLLM ignores VLLM_API_KEY when --api-key is "
                           "given; set only one of them (preferably VLLM_API_KEY or VLLM_API_KEY_FILE)"]


def test_a_white_space_api_key_is_an_error(plan_for):
    assert plan_for({"VLLM_API_KEY": "  "}).errors == ["VLLM_API_KEY is only white space: set the secret, or leave "
                                                       "VLLM_API_KEY empty (unset)"]


@pytest.mark.parametrize("name", ["VLLM_COMPILATION_CONFIG", "VLLM_EXTRA_ARGS", "LMCACHE_SERVER_EXTRA_ARGS"])
def test_json_nested_past_the_recursion_limit(plan_for, name, capsys, monkeypatch):
    deep = "[" * 990 + "]" * 990
    rc, out, err = run_cli(["config", "--format", "json"], {name: f"--l2-adapter {deep}" if "LMCACHE" in name
                                                            else deep, **LOOPBACK}, capsys, monkeypatch)
    assert "Traceback" not in err and rc in (0, 2)
    if name == "VLLM_COMPILATION_CONFIG":
        assert json.loads(out)["errors"] == [f"VLLM_COMPILATION_CONFIG='{deep[:200]}... (1980 characters)': is "
                                             "JSON nested deeper than 64 levels"]


def test_names_that_only_look_like_credentials_are_shown(plan_for):
    plan = plan_for({"VLLM_ALLOW_CREDENTIALS": "true", "VLLM_MAX_NUM_BATCHED_TOKENS": "8k", **LOOPBACK})
    assert plan.to_dict()["values"]["VLLM_ALLOW_CREDENTIALS"] is True
    assert plan.to_dict()["values"]["VLLM_MAX_NUM_BATCHED_TOKENS"] == "8k"


def test_secrets_swallowed_by_an_unbalanced_quote_stay_hidden(plan_for):
    """An env file's `VLLM_HOST='` can make its next lines part of that value (the property tests found it): the
    secrets on those lines are still masked wherever the value is shown."""
    plan = plan_for({"VLLM_MODEL": "m'\nHF_TOKEN=hf-swallowed-1\nVLLM_EXTRA_ARGS=--api-key swallowed-key-2\n"})
    assert plan.errors and "contains a control character" in plan.errors[0]  # the value is quoted in it
    shown = json.dumps(plan.to_dict())
    assert "hf-swallowed-1" not in shown and "swallowed-key-2" not in shown
