"""vLLM serve flags: a value checked against the installed parser's type, written the way its action reads
it and so that no value can be read as a flag, and raw arguments resolved to the flag argparse will see."""
from __future__ import annotations

import shlex
from typing import Any, Iterable

from .settings import ValueProblem, _human_int, load_json, parse_bool

AMBIGUOUS = "ambiguous"


def split_args(text: str) -> list[str]:
    """Shell-like splitting of a setting (`*_EXTRA_ARGS`, commands, list values), or ValueProblem."""
    try:
        return shlex.split(text)
    except ValueError as e:
        raise ValueProblem(f"cannot be split like a shell command line ({e}); balance the quotes, or escape a "
                           "quote that belongs to a value with a backslash") from None


def parse_flag_value(spec: dict, raw: str) -> Any:
    """Check a value against the installed vLLM's type for that flag; returns the typed value."""
    kind = spec["kind"]
    text = raw.strip()
    if kind in ("bool", "flag"):
        return parse_bool(text)
    if spec["nargs"] in ("+", "*") or spec.get("append"):
        values = split_args(text)
        bad = [v for v in values if v.startswith("-")]
        if bad:
            raise ValueProblem(f"the value {bad[0]!r} starts with '-' (vLLM would read it as an option)")
        if kind == "int":
            for v in values:
                try:
                    int(v)
                except ValueError:
                    raise ValueProblem("must be whole numbers separated by spaces") from None
        return text
    if kind == "int":
        try:
            return int(text)
        except ValueError:
            raise ValueProblem("must be a whole number") from None
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            raise ValueProblem("must be a number") from None
    if kind in ("int_human", "int_human_or_auto"):
        _human_int(text, allow_auto=kind == "int_human_or_auto")  # vLLM's own rule; it parses the text itself
        return text
    if kind == "choice":
        choices = spec["choices"] or []
        if text in choices:
            return text
        folded = {c.lower(): c for c in choices}
        if text.lower() in folded:
            return folded[text.lower()]
        raise ValueProblem("must be one of: " + ", ".join(choices))
    if kind == "json":  # vLLM parses it with json.loads: anything else is refused there
        load_json(text)
    return text


def number_text(value: float) -> str:
    """5.0 -> "5", 0.87654321 -> "0.87654321": no ".0" noise and no precision lost (unlike %g)."""
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def _one(flag: str, text: str) -> list[str]:
    # `--flag=-x`: argparse takes a value in the `=` form as it is, even one that looks like an option.
    return [f"{flag}={text}"] if text.startswith("-") else [flag, text]


def flag_args(flag: str, spec: dict | None, value: Any) -> list[str]:
    """How one flag is written on vLLM's command line, following the installed parser's action.
    List values were checked by parse_flag_value: no element starts with '-'."""
    kind = spec["kind"] if spec else "str"
    if kind == "bool":
        return [flag] if value else ["--no-" + flag[2:]]
    if kind == "flag":
        return [flag] if value else []
    if isinstance(value, list):  # already split (VLLM_SERVED_MODEL_NAME: by white space, not shell rules)
        return [flag, *value] if spec and spec.get("nargs") in ("+", "*") else [p for v in value for p in _one(flag, v)]
    text = number_text(value) if isinstance(value, float) else str(value)
    if spec and spec.get("append"):
        return [part for token in split_args(text) for part in _one(flag, token)]
    if spec and spec.get("nargs") in ("+", "*"):
        return [flag, *split_args(text)]
    return _one(flag, text)


def resolve_flag(arg: str, flags: Iterable[str], bools: Iterable[str] = (), underscores: bool = True) -> str | None:
    """The flag argparse will take `arg` for, so that no spelling slips past a check: `--port=9000`,
    `--port_x` (vLLM reads `_` as `-`), `--kv-transfer-config.kv_role` (vLLM's dotted JSON keys), `--no-flag`,
    and the abbreviations argparse accepts (`--por`). AMBIGUOUS for an abbreviation of several; None for
    what is no long option."""
    if not arg.startswith("--") or arg == "--":
        return None
    name = arg.split("=", 1)[0]
    if underscores:
        name = name.replace("_", "-").split(".", 1)[0]
    known = set(flags)
    if name in known:
        return name
    negatives = {"--no-" + f[2:]: f for f in bools}
    if name in negatives:
        return negatives[name]
    matches = {f for f in known if f.startswith(name)} | {p for n, p in negatives.items() if n.startswith(name)}
    if len(matches) == 1:
        return matches.pop()
    return AMBIGUOUS if matches else None
