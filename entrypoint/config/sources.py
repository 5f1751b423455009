"""Where raw values come from: the command line after `serve`, the environment, an env file.

Precedence, highest first: command line > environment > env file > model registry > default
(the last two are applied in `plan.py`). Each value remembers its source, which `config` prints.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from dotenv import dotenv_values

from .settings import FILE_SECRETS, PREFIXES

COMMAND_LINE = "command line"
ENVIRONMENT = "environment"
ENV_FILE = "env file"
REGISTRY = "registry"
DEFAULT = "default"


@dataclass
class RawInputs:
    values: dict[str, str] = field(default_factory=dict)  # our names (VLLM_*, LMCACHE_*, APPLIANCE_*, secrets)
    sources: dict[str, str] = field(default_factory=dict)
    # Other variables of the env file (HF_HOME, CUDA_VISIBLE_DEVICES, ...) that the environment does not
    # already have: they reach the servers' environment unchanged.
    passthrough: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)  # after `--` on the command line
    errors: list[str] = field(default_factory=list)
    cli_flags: dict[str, str] = field(default_factory=dict)  # name -> the flag the user typed, for messages


def is_ours(name: str) -> bool:
    return name.startswith(PREFIXES) or name in FILE_SECRETS or name in FILE_SECRETS.values()


def read_env_file(path: str) -> dict[str, str]:
    # python-dotenv handles quotes, `export`, comments and ${VAR} expansion as compose does, but returns
    # nothing for a missing file: open it first so that a wrong path is an error, not an empty config.
    with open(path, encoding="utf-8") as stream:
        return {k: (v if v is not None else "") for k, v in dotenv_values(stream=stream).items()}


def collect(environ: dict[str, str], env_file: str | None = None, overrides: list[str] | None = None,
            flag_kind=None) -> RawInputs:
    """Gather raw values. `flag_kind(name)` says whether a VLLM_* name is a boolean flag (for overrides)."""
    raw = RawInputs()
    if env_file:
        try:
            file_values = read_env_file(env_file)
        except OSError as e:
            raw.errors.append(f"--env-file {env_file}: cannot read it ({e.strerror}); check the path")
            file_values = {}
        for name, value in file_values.items():
            if is_ours(name):
                raw.values[name], raw.sources[name] = value, ENV_FILE
            elif name not in environ:
                raw.passthrough[name] = value
    for name, value in environ.items():
        if is_ours(name):
            raw.values[name], raw.sources[name] = value, ENVIRONMENT
    if overrides:
        parse_overrides(overrides, raw, flag_kind or (lambda name: False))
    return raw


def override_env_name(flag: str) -> str:
    """`--max-model-len` -> VLLM_MAX_MODEL_LEN; `--lmcache-chunk-size` -> LMCACHE_CHUNK_SIZE."""
    body = flag[2:].upper().replace("-", "_")
    if body.startswith(("LMCACHE_", "APPLIANCE_")):
        return body
    return "VLLM_" + body


def parse_overrides(args: list[str], raw: RawInputs, is_bool) -> None:
    """Command-line overrides after `serve`, in vLLM's own syntax; each one sets the matching variable.

    `serve MODEL` sets VLLM_MODEL; `--flag value` / `--flag=value`; a boolean flag alone is true and
    `--no-flag` is false; everything after `--` is appended raw (like VLLM_EXTRA_ARGS).
    """
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            raw.extra_args.extend(args[i + 1:])
            return
        if not arg.startswith("--"):
            if i == 0 and not arg.startswith("-"):
                raw.values["VLLM_MODEL"], raw.sources["VLLM_MODEL"] = arg, COMMAND_LINE
            else:
                raw.errors.append(f"command line: unexpected argument {shlex.quote(arg)}: options are "
                                  "--flag value; put raw vLLM arguments after `--`")
            i += 1
            continue
        flag, eq, value = arg.partition("=")
        name = override_env_name(flag)
        negated = False
        if flag.startswith("--no-") and not eq:
            positive = override_env_name("--" + flag[5:])
            if is_bool(positive):
                name, negated = positive, True
        if negated:
            value = "false"
        elif is_bool(name) and not eq:
            value = "true"
        elif not eq:
            if i + 1 >= len(args) or (args[i + 1].startswith("--") and len(args[i + 1]) > 2):
                raw.errors.append(f"command line: {flag} needs a value, e.g. {flag} VALUE")
                i += 1
                continue
            value = args[i + 1]
            i += 1
        raw.values[name], raw.sources[name] = value, COMMAND_LINE
        raw.cli_flags[name] = flag
        i += 1

