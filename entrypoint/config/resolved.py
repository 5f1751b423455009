"""What the planning steps start from: the settings as resolved from every source (typed values, what the
operator set, what passes through), and the problems a step finds.

build.Builder collects these from the raw inputs; each step (build.py, kv_tiers.py, roles.py) then takes a
`Resolved` and returns its part of the plan with its own `Problems`, which build.py appends to the plan in
step order (the order `config` prints them in).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from . import resources
from .flags import split_args
from .schema import Schema
from .secrets import REDACTED, is_secret_name
from .settings import BY_NAME, ValueProblem
from .sources import RawInputs


@dataclass
class Problems:
    """A step's errors (the plan is refused) and warnings, in the order found."""
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def error(self, msg: str) -> None:
        self.errors.append(msg)

    def warn(self, msg: str) -> None:
        self.warnings.append(msg)


@dataclass(frozen=True)
class Resolved:
    raw: RawInputs
    schema: Schema
    environ: Mapping[str, str]
    host: resources.Host
    # Typed values of the appliance's settings (defaults included); Any, as each value's type is its setting's
    # kind (settings.parse_value checked it): int, float, bool, str, MPServer, DiskChoice, StoreURL, None, ...
    values: Mapping[str, Any]
    user_given: frozenset[str]  # names set by the operator (not registry, not default)
    generic_flags: Mapping[str, tuple[str, object]]  # VLLM_<FLAG> name -> (flag, typed value)
    vllm_passthrough: Mapping[str, str]  # variables vLLM reads itself
    lmcache_keys: Mapping[str, object]  # in-process config keys from LMCACHE_<KEY>
    lmcache_env: Mapping[str, str]  # variables LMCache reads itself

    def label(self, name: str) -> str:
        return label(self.raw, name)

    def bad_value(self, name: str, raw: str, problem: str) -> str:
        return bad_value(self.raw, name, raw, problem)

    def split(self, name: str, text: str, found: Problems) -> list[str]:
        """A shell-split setting; an unbalanced quote is an error (the value is not quoted: it may hold a key)."""
        try:
            return split_args(text)
        except ValueProblem as e:
            found.error(f"{self.label(name)}: {e}")
            return []


def label(raw: RawInputs, name: str) -> str:
    """How the operator wrote it: `--max-model-len` on the command line, else the variable name."""
    return raw.cli_flags.get(name, name)


def bad_value(raw: RawInputs, name: str, value: str, problem: str) -> str:
    """The message for a value that cannot be used (its fix named by the registry's example)."""
    # A URL's user:password@ is refused (LMCACHE_SHARED_URL, APPLIANCE_ROUTER_*) and never echoed with it.
    shown = REDACTED if is_secret_name(name) else re.sub(r"(?<=://)\S*@", "***@", shorten(value))
    example = BY_NAME[name].example if name in BY_NAME else None
    fix = f", e.g. {label(raw, name)}={example}" if example and "e.g." not in problem else ""
    return f"{label(raw, name)}={shown!r}: {problem}{fix}"


def shorten(text: str, limit: int = 200) -> str:
    """A value quoted in a message: a huge one is cut, so that one bad value cannot flood the output."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
