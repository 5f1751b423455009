"""vLLM serve flags: a value checked against the installed parser's type, and written the way its action reads it."""
from __future__ import annotations

import json
import re
import shlex

from .settings import ValueProblem, parse_bool

_TOKENS = re.compile(r"^(\d+(\.\d+)?[kKmMgG]?|auto|-1)$")
_HUMAN_INT = re.compile(r"^\d+(\.\d+)?[kKmMgG]?$")


def parse_flag_value(spec: dict, raw: str):
    """Check a value against the installed vLLM's type for that flag; returns the typed value."""
    kind = spec["kind"]
    text = raw.strip()
    if kind in ("bool", "flag"):
        return parse_bool(text)
    if kind == "int":
        values = shlex.split(text) if spec["nargs"] in ("+", "*") else [text]
        for v in values:
            try:
                int(v)
            except ValueError:
                raise ValueProblem("must be a whole number") from None
        return text if len(values) > 1 else int(text)
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            raise ValueProblem("must be a number") from None
    if kind == "int_human":
        if not _HUMAN_INT.match(text):
            raise ValueProblem("must be a whole number, optionally with k/m/g, e.g. 4096 or 32k")
        return text
    if kind == "int_human_or_auto":
        if not _TOKENS.match(text):
            raise ValueProblem("must be a whole number (e.g. 32768 or 32k), or auto")
        return text
    if kind == "choice":
        choices = spec["choices"] or []
        if text in choices:
            return text
        folded = {c.lower(): c for c in choices}
        if text.lower() in folded:
            return folded[text.lower()]
        raise ValueProblem("must be one of: " + ", ".join(choices))
    if kind == "json" and text[:1] in "{[":
        try:
            json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueProblem(f"is not valid JSON ({e.msg} at column {e.colno})") from None
    return text


def number_text(value: float) -> str:
    """5.0 -> "5", 0.87654321 -> "0.87654321": no ".0" noise and no precision lost (unlike %g)."""
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def flag_args(flag: str, spec: dict | None, value) -> list[str]:
    """How one flag is written on vLLM's command line, following the installed parser's action."""
    kind = spec["kind"] if spec else "str"
    if kind == "bool":
        return [flag] if value else ["--no-" + flag[2:]]
    if kind == "flag":
        return [flag] if value else []
    text = number_text(value) if isinstance(value, float) else str(value)
    if spec and spec.get("append"):
        return [part for token in shlex.split(text) for part in (flag, token)]
    if spec and spec.get("nargs") in ("+", "*"):
        return [flag, *shlex.split(text)]
    return [flag, text]
