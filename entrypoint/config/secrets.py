"""What is secret, and how it is hidden: every output of the appliance goes through these functions."""
from __future__ import annotations

import shlex
from typing import Mapping

from .settings import SECRET_NAMES

REDACTED = "***"
SECRET_FLAGS = ("--api-key", "--hf-token")  # vLLM flags whose value is a secret


def redact_env(env: Mapping[str, str]) -> dict[str, str]:
    return {k: (REDACTED if k in SECRET_NAMES else v) for k, v in env.items()}


def redact_value(name: str, value):
    if name in SECRET_NAMES:
        return REDACTED
    if name.endswith("EXTRA_ARGS") and isinstance(value, str):  # may hold `--api-key ...`
        try:
            return shlex.join(redact_argv(shlex.split(value)))
        except ValueError:
            return value
    return value


def redact_argv(argv: list[str]) -> list[str]:
    out = []
    for i, arg in enumerate(argv):
        if i > 0 and argv[i - 1] in SECRET_FLAGS:
            out.append(REDACTED)
        elif any(arg.startswith(f + "=") for f in SECRET_FLAGS):
            out.append(arg.split("=", 1)[0] + "=" + REDACTED)
        else:
            out.append(arg)
    return out
