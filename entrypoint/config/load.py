"""Where a plan comes from: the environment, an optional .env file and command-line overrides, read
against the schema of the installed vLLM and LMCache. Used by `config`, `check`, `serve` and `healthcheck`."""
from __future__ import annotations

import os
from typing import Callable, Mapping

from . import resources
from . import schema as schema_mod
from .build import build_plan
from .plan import Plan
from .settings import BY_NAME
from .sources import collect


def _is_bool_name(schema: schema_mod.Schema) -> Callable[[str], bool]:
    def is_bool(name: str) -> bool:
        if name in BY_NAME:
            return BY_NAME[name].kind == "bool"
        flag = schema.flag_by_env_name.get(name)
        if not flag:
            return False
        return schema.serve_flags[flag]["kind"] in ("bool", "flag")
    return is_bool


def make_plan(env_file: str | None, overrides: list[str], environ: Mapping[str, str] | None = None,
              host: resources.Host | None = None) -> Plan:
    """`host`: the machine's readings for `auto` sizes and resource checks (default: this machine)."""
    environ = dict(os.environ if environ is None else environ)
    schema = schema_mod.load()
    raw = collect(environ, env_file, overrides, _is_bool_name(schema))
    return build_plan(raw, schema, environ, host or resources.Host())
