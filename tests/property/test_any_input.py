"""Any input: generated .env files, environments and command lines, built from the settings registry itself
(so a new setting is fuzzed the day it is added). For each: exit 0 or 2, no traceback, no planted secret in
any output, JSON that follows docs/config.schema.json, and, when it is valid, a command line on which each
flag supervision relies on appears once. Runs in-process through cli.main (fast), plus a few subprocesses.

Failing examples hypothesis finds are kept as @example cases of the property that found them.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from unittest import mock

import pytest

REASON = "the property suite needs hypothesis and jsonschema (scripts/test.sh installs them in the test venv)"
jsonschema = pytest.importorskip("jsonschema", reason=REASON)
pytest.importorskip("hypothesis", reason=REASON)

from hypothesis import HealthCheck, event, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from entrypoint import cli  # noqa: E402
from entrypoint.config import schema as schema_mod  # noqa: E402
from entrypoint.config.flags import resolve_flag  # noqa: E402
from entrypoint.config.settings import LMCACHE_OWNED_FLAGS, OWNED_FLAGS, SETTINGS  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = json.loads((ROOT / "docs" / "config.schema.json").read_text())
SCHEMA = schema_mod.load()
SERVE_FLAGS = SCHEMA.serve_flags
BOOL_FLAGS = [f for f, spec in SERVE_FLAGS.items() if spec["kind"] == "bool"]
LMCACHE_FLAGS = SCHEMA.lmcache["server_flags"]
# Random examples by hand (new ones every run: a hunt); the same ones in CI (CI=true), so that a red CI means a
# change broke something, not that this run drew a new example. A find becomes an @example below.
FUZZ = settings(max_examples=200, deadline=None, derandomize=bool(os.environ.get("CI")),
                suppress_health_check=[HealthCheck.too_slow])

# -- names: the registry's own, vLLM's flags and variables, LMCache's keys, and typos of all of them ----------
REAL_NAMES = sorted({s.name for s in SETTINGS} | set(SCHEMA.flag_by_env_name) | set(SCHEMA.vllm_env_vars)
                    | {f"LMCACHE_{k.upper()}" for k in SCHEMA.lmcache_keys} | {"HF_TOKEN", "HF_HOME"})


def typo(name: str, where: int, how: str) -> str:
    i = where % (len(name) + 1)
    return {"drop": name[:i] + name[i + 1:], "double": name[:i] + name[i:i + 1] * 2 + name[i + 1:],
            "lower": name.lower(), "suffix": name + "S", "swap": name[:i] + name[i + 1:i + 2] + name[i:i + 1]
            + name[i + 2:]}[how]


names = st.one_of(
    st.sampled_from(REAL_NAMES),
    st.builds(typo, st.sampled_from(REAL_NAMES), st.integers(0, 40),
              st.sampled_from(["drop", "double", "lower", "suffix", "swap"])),
    st.from_regex(r"\A(VLLM|LMCACHE|APPLIANCE)_[A-Z_]{1,20}\Z"),
)

# -- values: each kind, plus hostile text ----------------------------------------------------------------
flag_spellings = st.sampled_from(sorted(OWNED_FLAGS) + sorted(SERVE_FLAGS)[:40]).flatmap(
    lambda f: st.sampled_from([f, f.replace("-", "_"), f[: max(4, len(f) - 3)], f + "=1", f + ".x"]))
hostile = st.one_of(
    st.text(max_size=40),  # any unicode, control characters included
    st.text(alphabet="'\"`$\\ -=;#%{}[]\n\t", max_size=20),  # quotes, shell and ini syntax
    st.from_regex(r"\A--?[a-z-]{1,20}\Z"),  # leading dashes
    st.sampled_from(["--trust-remote-code", "-1", "auto", "AUTO", "32k", "1.5K", "0", "nan", "inf", "1e400",
                     "9" * 400, "true", "maybe", "{}", "[", '{"a": 1}', "", " ", "/", "file:///x", "bob's-model"]),
    st.integers(-10**30, 10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.lists(flag_spellings | st.from_regex(r"\A[a-z0-9./]{0,8}\Z"), max_size=6).map(" ".join),
)


def kind_values(setting) -> st.SearchStrategy[str]:
    k = setting.kind
    if k == "bool":
        return st.sampled_from(["true", "false", "1", "0", "YES", "off", "maybe"])
    if k in ("int", "seconds", "port", "human_int_or_auto"):
        return st.one_of(st.integers(-5, 70000).map(str), st.sampled_from(["32k", "auto", "-1", "9" * 30]))
    if k in ("gib", "gib_auto", "gib_auto_off", "fraction"):
        return st.one_of(st.floats(-1, 1e6).map(str), st.just("auto"), st.just("0"))
    if k == "choice":
        return st.sampled_from([*setting.choices, *(c.upper() for c in setting.choices), "bogus"])
    if k == "disk":
        return st.sampled_from(["true", "false", "/data/kv", "file:///x/", "rel", "/a\nb"])
    if k == "mp_server":  # LMCACHE_SERVER: the forms it takes, the near misses, and anything
        return st.one_of(st.sampled_from(["kv-server:5555", "tcp://kv-server", "TCP://10.0.0.2:6000", "kv-server:0",
                                          "-kv:1", "--port", "[::1]:5555", "ipc:///tmp/x", "grpc://kv:1", "a:b:c",
                                          ":5555", "kv server:1", "kv-server:5555/", "u@kv:1", "kv:99999"]),
                         st.from_regex(r"\A(tcp://)?[-a-z0-9.]{0,12}(:[0-9-]{0,6})?\Z"), hostile)
    if k in ("http_url", "router_replicas"):  # the router's URLs: the forms they take, the near misses
        return st.one_of(st.sampled_from(["http://coordinator:9300", "HTTPS://[fd00::1]:443", "http://r:8000=8081",
                                          "http://a:1 http://a:1", "http://r:8000=0", "coordinator:9300",
                                          "http://c:9300/api", "http://c:99999", "--port", "http://-c:1"]),
                         st.from_regex(r"\A(https?://)?[-a-z0-9.]{0,10}(:[0-9]{0,6})?(=[0-9a-z]{0,6})?\Z"), hostile)
    return hostile


own_values = st.sampled_from(SETTINGS).flatmap(lambda s: st.tuples(st.just(s.name), kind_values(s)))

# -- planted secrets ---------------------------------------------------------------------------------------
secrets_ = st.from_regex(r"\Ask[A-Za-z0-9]{10}Zq\Z")


def plant(secret: str, where: str) -> dict[str, str]:
    return {
        "api_key": {"VLLM_API_KEY": secret},
        "hf_token": {"HF_TOKEN": secret},
        "vllm_hf_token": {"VLLM_HF_TOKEN": secret},
        "pattern": {"MY_SERVICE_TOKEN": secret},
        "aws": {"AWS_SECRET_ACCESS_KEY": secret},
        "resp": {"LMCACHE_RESP_PASSWORD": secret},
        "extra_one": {"VLLM_EXTRA_ARGS": f"--api-key {secret}"},
        "extra_two": {"VLLM_EXTRA_ARGS": f"--seed 1 --api-key k{secret} {secret} --enforce-eager"},
        "extra_eq": {"VLLM_EXTRA_ARGS": f"--api-key={secret}"},
        "extra_abbrev": {"VLLM_EXTRA_ARGS": f"--api_k {secret}"},
        "extra_unbalanced": {"VLLM_EXTRA_ARGS": f"--api-key '{secret} --seed 1"},
        "lmcache_json": {"LMCACHE_SERVER_EXTRA_ARGS":
                         f"--l2-adapter '{{\"type\":\"resp\",\"password\":\"{secret}\"}}'"},
        "lmcache_unbalanced": {"LMCACHE_SERVER_EXTRA_ARGS": f"--l2-adapter '{{\"password\":\"{secret}\"}}"},
        # a password in a URL is refused, and never echoed in the refusal
        "router_url": {"APPLIANCE_ROUTER_COORDINATOR_URL": f"http://admin:{secret}@coordinator:9300"},
        "router_replicas": {"APPLIANCE_ROUTER_REPLICAS": f"http://r0:8000 http://u:{secret}@r1:8000=8081"},
    }[where]


PLACES = ["api_key", "hf_token", "vllm_hf_token", "pattern", "aws", "resp", "extra_one", "extra_two", "extra_eq",
          "extra_abbrev", "extra_unbalanced", "lmcache_json", "lmcache_unbalanced", "router_url", "router_replicas"]


@st.composite
def inputs(draw):
    """(environment, env-file text, command-line overrides, planted secrets)."""
    env = dict(draw(st.lists(st.tuples(names, hostile) | own_values, max_size=6)))
    file_pairs = draw(st.lists(st.tuples(names, hostile) | own_values, max_size=6))
    planted = []
    for where in draw(st.lists(st.sampled_from(PLACES), max_size=3, unique=True)):
        secret = draw(secrets_)
        planted.append(secret)
        target = env if draw(st.booleans()) else None
        for name, value in plant(secret, where).items():
            if target is not None:
                target[name] = value
            else:
                file_pairs.append((name, value))
    lines = []
    for name, value in file_pairs:
        style = draw(st.sampled_from(["plain", "double", "single", "export", "garbage"]))
        if style == "double":
            value = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        elif style == "single" and "'" not in value:
            value = f"'{value}'"
        lines.append({"export": f"export {name}={value}", "garbage": f"{name}{value}"}.get(style, f"{name}={value}"))
    if draw(st.booleans()):
        lines.append(draw(st.text(max_size=30)))  # a line that may not be NAME=value at all
    overrides = draw(st.lists(flag_spellings | hostile, max_size=4))
    env = {k: v for k, v in env.items() if "\0" not in k + v and "=" not in k and k}  # what os.environ can hold
    return env, "\n".join(lines), overrides, planted


def run_main(argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ, env, clear=True), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        try:
            rc = cli.main(argv)
        except SystemExit as e:  # argparse's own usage errors
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


def check_output(rc: int, out: str, err: str, planted: list[str]) -> None:
    assert rc in (0, 2), (rc, err[-2000:])
    assert "Traceback" not in out + err, err[-3000:]
    for secret in planted:
        assert secret not in out and secret not in err, f"planted secret {secret} printed"


def owned_counts(argv: list[str], flags, owned, bools=(), underscores=True) -> dict[str, int]:
    counts = dict.fromkeys(owned, 0)
    for arg in argv:
        flag = resolve_flag(arg, flags, bools, underscores)
        if flag in counts:
            counts[flag] += 1
    return counts


def check_plan_json(data: dict) -> None:
    jsonschema.validate(data, CONTRACT)
    if data["errors"]:
        return
    if data["role"] == "kv-server":  # the LMCache server only, for the replicas of its host
        assert data["vllm"]["argv"] == [] and data["lmcache"]["mode"] == "server", data
        lmc = owned_counts(data["lmcache"]["argv"], LMCACHE_FLAGS, LMCACHE_OWNED_FLAGS, underscores=False)
        assert all(n == 1 for n in lmc.values()), (lmc, data["lmcache"]["argv"])
        argv = data["lmcache"]["argv"]
        assert argv[argv.index("--host") + 1] == argv[argv.index("--http-host") + 1] == "0.0.0.0"
        return
    vllm = owned_counts(data["vllm"]["argv"], SERVE_FLAGS, OWNED_FLAGS, BOOL_FLAGS)
    for flag in ("--host", "--port", "--shutdown-timeout"):
        assert vllm[flag] == 1, (flag, data["vllm"]["argv"])
    assert all(n <= 1 for n in vllm.values()), vllm
    assert vllm["--kv-transfer-config"] == (1 if data["lmcache"]["mode"] in ("server", "in-process", "external")
                                            else 0)
    if data["lmcache"]["mode"] == "external":  # a replica: the connector at LMCACHE_SERVER, nothing else
        argv = data["vllm"]["argv"]
        extra = json.loads(argv[argv.index("--kv-transfer-config") + 1])["kv_connector_extra_config"]
        server = data["lmcache"]["server"]
        assert f"{extra['lmcache.mp.host']}:{extra['lmcache.mp.port']}" == server["url"], (extra, server)
        assert re.fullmatch(r"tcp://[a-z0-9][a-z0-9.-]*:[0-9]{1,5}", server["url"]), server
        assert data["lmcache"]["argv"] is None and data["lmcache"]["disk"] is None
    # after APPLIANCE_VLLM_COMMAND, which may be several words ("python3 -m vllm.entrypoints.cli.main")
    command = shlex.split(str(data["values"].get("APPLIANCE_VLLM_COMMAND") or "vllm"))
    assert data["vllm"]["argv"][len(command):len(command) + 2] == ["serve", data["model"]], data["vllm"]["argv"]
    assert not data["model"].startswith("-")
    if data["lmcache"]["mode"] == "server":
        lmc = owned_counts(data["lmcache"]["argv"], LMCACHE_FLAGS, LMCACHE_OWNED_FLAGS, underscores=False)
        assert all(n == 1 for n in lmc.values()), (lmc, data["lmcache"]["argv"])


@FUZZ
@given(inputs())
@example(({}, "VLLM_SERVED_MODEL_NAME=bob's-model", [], []))
@example(({}, "", ["-h"], []))
@example(({"VLLM_EXTRA_ARGS": "--x " + "[" * 990 + "]" * 990, "VLLM_COMPILATION_CONFIG": "[" * 990 + "]" * 990},
          "", [], []))  # found by hand: json and the redaction recursed past Python's limit
@example(({"VLLM_EXTRA_ARGS": "--api-key 'skAAAAAAAAAAZq --seed 1"}, "", [], ["skAAAAAAAAAAZq"]))
def test_config_json_for_any_input(case):
    env, env_text, overrides, planted = case
    with tempfile.TemporaryDirectory() as tmp:
        env_file = Path(tmp) / ".env"
        env_file.write_text(env_text, encoding="utf-8", errors="surrogateescape")
        rc, out, err = run_main(["config", "--format", "json", "--env-file", str(env_file), *overrides], env)
    check_output(rc, out, err, planted)
    if out.startswith("usage: "):  # argparse's help (-h, -hh, --help or a prefix of it), no plan
        assert rc == 0 and any(o.startswith("-h") or (o.startswith("--h") and "--help".startswith(o))
                               for o in overrides), overrides
        return
    if rc == 2 and not out:
        assert err.startswith("usage: "), err  # argparse refused our own options (`--format bogus`)
        return
    data = json.loads(out)
    check_plan_json(data)
    assert rc == (2 if data["errors"] else 0)


@FUZZ
@given(inputs())
def test_config_text_and_check_for_any_input(case):
    env, env_text, overrides, planted = case
    with tempfile.TemporaryDirectory() as tmp:
        env_file = Path(tmp) / ".env"
        env_file.write_text(env_text, encoding="utf-8", errors="surrogateescape")
        for command in ("config", "check"):
            rc, out, err = run_main([command, "--env-file", str(env_file), *overrides], env)
            check_output(rc, out, err, planted)


@FUZZ
@given(st.binary(max_size=200), st.lists(secrets_, max_size=2))
def test_any_bytes_as_an_env_file(raw, planted):
    """Not UTF-8, NUL bytes, stray quotes: a message with the line, never a traceback."""
    text = b"".join(b"VLLM_API_KEY=" + s.encode() + b"\n" for s in planted) + raw
    with tempfile.TemporaryDirectory() as tmp:
        env_file = Path(tmp) / ".env"
        env_file.write_bytes(text)
        rc, out, err = run_main(["config", "--format", "json", "--env-file", str(env_file)], {})
    check_output(rc, out, err, planted)
    jsonschema.validate(json.loads(out), CONTRACT)


# -- supervision follows what vLLM really reads ----------------------------------------------------------
supervision_tokens = st.sampled_from(["--port", "--port=9001", "--por", "--host", "--host=::", "--served-model-name",
                                      "--served_model_name", "--model", "--seed", "1", "--enforce-eager", "9002",
                                      "other-name", "--kv-transfer-config.kv_role", "kv_both", "--uds", "/s",
                                      "--max-model-len", "2048"])


@pytest.fixture(scope="module")
def serve_parser():
    pytest.importorskip("vllm", reason="the real vLLM parser is in the contract venv (scripts/ci)")
    from entrypoint.generators.schema import vllm_serve_parser
    return vllm_serve_parser()[0]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(host=st.sampled_from(["", "127.0.0.1", "0.0.0.0", "::"]), port=st.sampled_from(["", "8000", "9000"]),
       served=st.sampled_from(["", "chat", "a b", "bob's-model"]), model=st.sampled_from(["", "org/m", "/models/x"]),
       extra=st.lists(supervision_tokens, max_size=5), raw=st.lists(supervision_tokens, max_size=3),
       cli_flags=st.lists(st.sampled_from([["--port", "9003"], ["--served-model-name", "cli-name"],
                                           ["--host", "127.0.0.1"]]), max_size=2))
def test_supervision_probes_what_vllm_really_uses(serve_parser, host, port, served, model, extra, raw, cli_flags):
    from entrypoint.config.load import make_plan
    env = {k: v for k, v in (("VLLM_HOST", host), ("VLLM_PORT", port), ("VLLM_SERVED_MODEL_NAME", served),
                             ("VLLM_MODEL", model), ("VLLM_EXTRA_ARGS", " ".join(extra))) if v}
    overrides = [part for pair in cli_flags for part in pair] + (["--", *raw] if raw else [])
    plan = make_plan(None, overrides, env)
    if plan.errors:
        event("refused by the appliance")
        return  # refused: nothing starts, so nothing is supervised
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            args = serve_parser.parse_args(["serve", *plan.vllm.argv[2:]])
    except SystemExit:
        event("refused by vLLM's parser")
        return  # vLLM itself refuses the command line (a stray positional, a flag without value): FATAL
    event("started: supervision compared with vLLM's reading")
    assert args.model_tag == plan.model
    assert (args.host or "0.0.0.0", args.port) == (plan.api_host or "0.0.0.0", plan.api_port)
    assert (args.served_model_name or [plan.model])[0] == plan.served_model_name


# -- a few real subprocesses -------------------------------------------------------------------------------
@pytest.mark.parametrize("env", [
    {"VLLM_HF_TOKEN": "skSUBPROCESS1Zq", "VLLM_EXTRA_ARGS": "--api-key skSUBPROCESS2Zq skSUBPROCESS3Zq"},
    {"VLLM_EXTRA_ARGS": "--api-key 'skSUBPROCESS1Zq", "AWS_SECRET_ACCESS_KEY": "skSUBPROCESS2Zq"},
    {"VLLM_MODEL": "--trust-remote-code", "HF_TOKEN": "skSUBPROCESS1Zq"},
], ids=["valid", "unsplittable", "injection"])
@pytest.mark.parametrize("command", [["config"], ["config", "--format", "json"], ["check"]])
def test_subprocess_output(env, command):
    out = subprocess.run([sys.executable, "-m", "entrypoint", *command], cwd=ROOT, capture_output=True, text=True,
                         env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), **env}, timeout=60)
    planted = re.findall(r"skSUBPROCESS\dZq", " ".join(env.values()))
    check_output(out.returncode, out.stdout, out.stderr, planted)
    if command[-1] == "json":
        jsonschema.validate(json.loads(out.stdout), CONTRACT)


# -- near-miss names (hardening round 2): any spelling of a setting that differs by case or look-alikes ------
LOOKALIKES = {"A": "\u0410", "E": "\u0415", "M": "\u041c", "O": "\u041e", "P": "\u0420", "T": "\u0422",
              "C": "\u0421", "H": "\u041d", "K": "\u039a", "_": "-"}


def near_spelling(name: str, flips: list[bool], swaps: list[bool]) -> str:
    out = []
    for i, ch in enumerate(name):
        if swaps[i % len(swaps)] and ch in LOOKALIKES:
            ch = LOOKALIKES[ch]
        elif flips[i % len(flips)]:
            ch = ch.lower()
        out.append(ch)
    return "".join(out)


@FUZZ
@given(st.sampled_from(sorted(s.name for s in SETTINGS)), st.lists(st.booleans(), min_size=1, max_size=8),
       st.lists(st.booleans(), min_size=1, max_size=8), st.booleans())
def test_a_near_miss_spelling_is_an_error_naming_the_setting(name, flips, swaps, in_file):
    spelled = near_spelling(name, flips, swaps)
    env, env_file = ({}, None) if in_file else ({spelled: "1"}, None)
    with tempfile.TemporaryDirectory() as d:
        if in_file:
            env_file = os.path.join(d, ".env")
            Path(env_file).write_text(f"{spelled}=1\n", encoding="utf-8")
        from entrypoint.config.load import make_plan
        plan = make_plan(env_file, [], environ=env)
    if spelled == name:
        return
    where = "env file" if in_file else "environment"
    assert (f"{spelled!r} (in the {where}): not read, although it looks like an appliance setting: names are exact, "
            f"in capitals and plain Latin letters; write it as {name}") in plan.errors


# -- hostile files (hardening round 2): whatever a named file is, `check` answers at once, naming the setting ---
FILE_SETTINGS = ("VLLM_API_KEY_FILE", "HF_TOKEN_FILE", "LMCACHE_SHARED_PASSWORD_FILE", "APPLIANCE_MODEL_REGISTRY_FILE")


def _hostile_file(directory: str, kind: str, content: bytes) -> str:
    path = os.path.join(directory, "named")
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        os.mkdir(path)
    elif kind == "device":
        return "/dev/zero"
    elif kind == "loop":
        os.symlink(path, path)
    elif kind == "missing":
        pass
    elif kind == "huge":
        with open(path, "wb") as f:
            f.truncate(2 << 20)  # sparse: 2 MiB that cost nothing
    else:
        Path(path).write_bytes(content)
    return path


@FUZZ
@given(st.sampled_from(FILE_SETTINGS), st.sampled_from(["fifo", "directory", "device", "loop", "missing", "huge",
                                                          "regular"]), st.binary(max_size=300))
def test_any_named_file_gives_a_plan_or_an_error_naming_its_setting(setting, kind, content):
    from entrypoint.config.load import make_plan

    with tempfile.TemporaryDirectory() as d:
        path = _hostile_file(d, kind, content)
        plan = make_plan(None, [], environ={setting: path, "VLLM_KV_OFFLOADING_BACKEND": "lmcache",
                                            **({"LMCACHE_SHARED_URL": "redis://store:6379"}
                                               if setting.startswith("LMCACHE_SHARED") else {})})
    mine = [e for e in plan.errors if e.startswith(f"{setting}=")]
    if kind != "regular":
        assert mine, plan.errors  # never read as if it were a secret or a registry
    text = json.dumps(plan.to_dict())
    secret = content.decode("utf-8", "replace").strip()
    if setting != "APPLIANCE_MODEL_REGISTRY_FILE" and len(secret) >= 12 and "\n" not in secret:
        assert secret not in text
