"""Where raw values come from: the command line after `serve`, the environment, an env file.

Precedence, highest first: command line > environment > env file > model registry > default
(the last two are applied in `plan.py`). Each value remembers its source, which `config` prints.
"""
from __future__ import annotations

import io
import os
import re
import shlex
import unicodedata
from dataclasses import dataclass, field
from typing import Callable, Mapping

from dotenv.parser import parse_stream

from .files import ENV_FILE_LIMIT, FileProblem, read_bounded
from .secrets import secret_flag
from .settings import FILE_SECRETS, MAX_VALUE_BYTES, PREFIXES

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
    # Names that are ours but for letter case or look-alike characters (`vllm_model`, a Cyrillic М in VLLM_):
    # name -> (its plain spelling, where it came from). Never used: each is an error that names the right one.
    near_misses: dict[str, tuple[str, str]] = field(default_factory=dict)


def is_ours(name: str) -> bool:
    return name.startswith(PREFIXES) or name in FILE_SECRETS or name in FILE_SECRETS.values()


# Letters that look like Latin capitals in the fonts operators read .env files in (Cyrillic, Greek), and
# characters that vanish or pass for `_` on screen. NFKC already folds full-width forms (Ｖ -> V).
_LOOKALIKES = str.maketrans({**dict(zip("АВЕКМНОРСТХІЈЅԚԜаеорсухіјѕԁһӏ", "ABEKMHOPCTXIJSQWaeopcyxijsdhl")),
                             **dict(zip("ΑΒΕΖΗΙΚΜΝΟΡΤΥΧοιν", "ABEZHIKMNOPTYXoiv")),
                             "-": "_", "\u2010": "_", "\u2011": "_", "\u2012": "_", "\u2013": "_", "\u2212": "_",
                             "\u200b": None, "\u200c": None, "\u200d": None, "\u2060": None, "\ufeff": None})


def plain_name(name: str) -> str:
    """The name as the operator meant it: look-alike characters replaced, in capitals."""
    return unicodedata.normalize("NFKC", name).translate(_LOOKALIKES).upper()


def near_miss(name: str) -> str | None:
    """The plain spelling of a name that is ours but for case or look-alike characters, else None."""
    plain = plain_name(name)
    return plain if plain != name and is_ours(plain) else None


_CREDENTIAL_WORD = re.compile(r"KEY|TOKEN|PASS|SECRET|CREDENTIAL")


class EnvFileError(ValueError):
    """A problem of one line of an env file (its message names the line)."""


_REFERENCE = re.compile(r"\$(?:\$|\{(?P<braced>[^}]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?$", re.DOTALL)


def interpolate(value: str, lookup: Callable[[str], str | None], where: str) -> str:
    """`$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:+alt}`, `${VAR+alt}`, `${VAR:?msg}`,
    `${VAR?msg}` and `$$` as docker compose expands them in an env file; raises EnvFileError."""
    def expand(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        if m.group("plain"):
            return lookup(m.group("plain")) or ""
        inner = _BRACED.match(m.group("braced"))
        if not inner:
            raise EnvFileError(f"{where}: ${{{m.group('braced')}}} is not a valid reference; write ${{NAME}}, "
                               "or $$ for a literal $")
        name, op, arg = inner.group("name"), inner.group("op"), inner.group("arg") or ""
        current = lookup(name)
        present = current is not None and (current != "" or not (op or "").startswith(":"))
        if op in (":-", "-"):
            return current if current is not None and present else interpolate(arg, lookup, where)
        if op in (":+", "+"):
            return interpolate(arg, lookup, where) if present else ""
        if op in (":?", "?"):
            if not present:
                raise EnvFileError(f"{where}: {name} is required: {arg or 'it is not set'}")
            assert current is not None  # present
            return current
        return current or ""
    return _REFERENCE.sub(expand, value)


def _single_quoted(line: str) -> bool:
    """Whether the value of this env-file line is in single quotes (compose takes those literally)."""
    m = re.match(r"\s*(?:export\s+)?[^=]*=\s*(.)", line)
    return m is not None and m.group(1) == "'"


def read_env_file(path: str, environ: Mapping[str, str] | None = None) -> tuple[dict[str, str], list[str]]:
    """(values, problems) of an env file, read as docker compose reads it: UTF-8, `NAME=value` lines,
    quotes, `export`, comments, and $VAR / ${VAR} expansion from earlier lines, then the environment.
    python-dotenv parses each line; a line it cannot read is a problem with its number (it only logs those).
    Raises FileProblem for a file that cannot be used (files.read_bounded)."""
    data = read_bounded(path, ENV_FILE_LIMIT)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        return {}, [f"--env-file {path}: line {line} is not UTF-8 text (byte 0x{data[e.start]:02x} at column "
                    f"{column}); save the file as UTF-8"]
    text = text.removeprefix("\ufeff")  # a byte-order mark, as some editors write
    values: dict[str, str] = {}
    problems: list[str] = []
    environ = os.environ if environ is None else environ
    for binding in parse_stream(io.StringIO(text)):
        line = binding.original.line
        where = f"--env-file {path}: line {line}"
        if binding.error:
            problems.append(f"{where}: cannot be read as NAME=value (an unclosed quote, or no name before '=')")
            continue
        if binding.key is None:
            continue  # a comment or a blank line
        if binding.value is None:
            # The line is quoted only when it is plainly a name: `VLLM_API_KEY sk-...` must not print the key.
            if re.fullmatch(r"[A-Z][A-Z0-9_]{0,63}", binding.key) and not _CREDENTIAL_WORD.search(binding.key[1:]):
                problems.append(f"{where}: {binding.key!r} has no '=': write {binding.key}=value, or remove the line")
            else:
                problems.append(f"{where}: has no '=' (not shown: it may hold a secret); write NAME=value, or remove "
                                "the line")
            continue
        value = binding.value
        if not _single_quoted(binding.original.string):
            try:
                value = interpolate(value, lambda n: values.get(n, environ.get(n)), where)
            except EnvFileError as e:
                problems.append(str(e))
                continue
        values[binding.key] = value
    return values, problems


def value_problem(name: str, value: str) -> str | None:
    """What makes any value unusable in an environment or an argv, whatever the variable."""
    if "\0" in value:
        return f"{name}: contains a NUL character, which no environment variable or argument can hold"
    size = len(value.encode("utf-8", "surrogateescape"))
    if size >= MAX_VALUE_BYTES:
        return (f"{name}: is {size} bytes long; the kernel refuses a single variable or argument of "
                f"{MAX_VALUE_BYTES} bytes or more")
    return None


def collect(environ: dict[str, str], env_file: str | None = None, overrides: list[str] | None = None,
            flag_kind: Callable[[str], bool] | None = None) -> RawInputs:
    """Gather raw values. `flag_kind(name)` says whether a VLLM_* name is a boolean flag (for overrides)."""
    raw = RawInputs()
    if env_file:
        try:
            file_values, problems = read_env_file(env_file, environ)
        except FileProblem as e:
            problems, file_values = [f"--env-file {env_file}: {e}"], {}
        raw.errors += problems
        for name, value in file_values.items():
            if plain := near_miss(name):
                raw.near_misses[name] = (plain, ENV_FILE)
            elif is_ours(name):
                raw.values[name], raw.sources[name] = value, ENV_FILE
            elif name not in environ:
                raw.passthrough[name] = value
    for name, value in environ.items():
        if plain := near_miss(name):
            raw.near_misses[name] = (plain, ENVIRONMENT)
        elif is_ours(name):
            raw.values[name], raw.sources[name] = value, ENVIRONMENT
    if overrides:
        parse_overrides(overrides, raw, flag_kind or (lambda name: False))
    for values in (raw.values, raw.passthrough):
        for name in sorted(values):
            problem = value_problem(name, values[name])
            if problem:
                raw.errors.append(problem)
                del values[name]  # reported; planning goes on without it
    return raw


def override_env_name(flag: str) -> str:
    """`--max-model-len` -> VLLM_MAX_MODEL_LEN; `--lmcache-chunk-size` -> LMCACHE_CHUNK_SIZE."""
    body = flag[2:].upper().replace("-", "_")
    if body.startswith(("LMCACHE_", "APPLIANCE_")):
        return body
    return "VLLM_" + body


def parse_overrides(args: list[str], raw: RawInputs, is_bool: Callable[[str], bool]) -> None:
    """Command-line overrides after `serve`, in vLLM's own syntax; each one sets the matching variable.

    `serve MODEL` sets VLLM_MODEL; `--flag value` / `--flag=value`; a boolean flag alone is true and
    `--no-flag` is false; everything after `--` is appended raw (like VLLM_EXTRA_ARGS).
    """
    i, after_secret = 0, False
    while i < len(args):
        arg = args[i]
        if arg == "--":
            raw.extra_args.extend(args[i + 1:])
            return
        if not arg.startswith("--"):
            if i == 0 and not arg.startswith("-"):
                raw.values["VLLM_MODEL"], raw.sources["VLLM_MODEL"] = arg, COMMAND_LINE
            else:
                # A second value of `--api-key k1 k2` is a secret too: never quote it.
                shown = "(a further value of a secret option, not shown)" if after_secret else shlex.quote(arg)
                raw.errors.append(f"command line: unexpected argument {shown}: options are "
                                  "--flag value; put raw vLLM arguments after `--`")
            i += 1
            continue
        after_secret = bool(secret_flag(arg))
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

