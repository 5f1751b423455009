"""What is secret, and how it is hidden. Every output of the appliance goes through these functions: `config`
(text and JSON), warnings and errors, plan.json in the run directory, the launcher's `Executing:` line and the
`logs` prefixer. A secret is:

- a variable named like a credential (`is_secret_name`): the appliance's own (VLLM_API_KEY, HF_TOKEN) and,
  by pattern, `*_TOKEN`, `*_API_KEY`, `*_PASSWORD`, `*_PASS(WD)`, `*SECRET*`, `*_PRIVATE_KEY`
  (AWS_SECRET_ACCESS_KEY, LMCACHE_RESP_PASSWORD, ...);
- every value of a secret flag (`--api-key k1 k2` takes several; `--api-key=k`, `--api_key`, and the
  abbreviations argparse accepts, `--api-k`), also inside `*_EXTRA_ARGS` text that cannot be shell-split;
- a value under a credential-like key of a JSON argument (`{"password": ...}` in an `--l2-adapter`);
- the password of any URL-shaped text (`scheme://user:password@host`), in any variable, argument or message
  (proxies, tracing endpoints, remote caches, extra arguments), wherever it stands.

Structured values are redacted by position (`redact_*`); free text (messages) additionally has every known
secret value masked (`mask_text`), so that a message quoting an argument cannot reveal one.
"""
from __future__ import annotations

import json
import re
import shlex
from typing import Any, Iterable, Mapping

from .settings import MAX_JSON_DEPTH, SECRET_NAMES, json_depth

REDACTED = "***"
SECRET_FLAGS = ("--api-key", "--hf-token")  # vLLM flags whose values are secrets
# (Not *_CREDENTIALS: vLLM's --allow-credentials is a CORS switch, GOOGLE_APPLICATION_CREDENTIALS a path.)
_SECRET_NAME = re.compile(r"(^|_)(TOKEN|API_KEY|APIKEY|PASSWORD|PASSWD|PASS|PRIVATE_KEY)$|SECRET",
                          re.IGNORECASE)
_SECRET_KEY = re.compile(r"(^|[_.-])(token|api[_-]?key|password|passwd|secret|private[_-]?key|credentials?)$"
                         r"|secret", re.IGNORECASE)
MIN_MASKED = 4  # shorter "secrets" are not masked inside free text (they would blank out ordinary words)
# user:password@ in a URL (RFC 3986 userinfo): the password is what goes, the scheme, user and host stay.
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^/@\s:]*:)(?P<password>[^/@\s]+)(?=@)")


def url_passwords(text: str) -> list[str]:
    """The passwords of the URLs in `text` (for masking them wherever they are echoed)."""
    return [m.group("password") for m in _URL_PASSWORD.finditer(text) if m.group("password") != REDACTED]


def redact_urls(text: str) -> str:
    return _URL_PASSWORD.sub(lambda m: m.group("head") + REDACTED, text)


def is_secret_name(name: str) -> bool:
    """A variable whose value is a credential. `*_FILE` variables hold a path, not the secret itself."""
    return name in SECRET_NAMES or (not name.upper().endswith("_FILE") and bool(_SECRET_NAME.search(name)))


def secret_flag(arg: str) -> str | None:
    """The secret flag `arg` stands for (`--api_key=x` and `--api-k` are --api-key to argparse), or None."""
    if not arg.startswith("--") or len(arg) < 4:
        return None
    name = arg.split("=", 1)[0].replace("_", "-")
    for flag in SECRET_FLAGS:
        if flag == name or (len(name) >= 4 and flag.startswith(name)):  # an abbreviation argparse accepts
            return flag
    return None


def _redact_json_text(arg: str) -> str:
    if not arg.lstrip().startswith(("{", "[")):
        return arg
    if json_depth(arg) > MAX_JSON_DEPTH:
        return REDACTED  # too deep to look into: hidden whole (the plan refuses such values anyway)
    try:
        data = json.loads(arg)
    except ValueError:
        return arg
    hidden = redact_json(data)
    return arg if hidden == data else json.dumps(hidden, separators=(",", ":"))


def redact_json(data: Any) -> Any:
    """A JSON value with the values under credential-like keys replaced."""
    if isinstance(data, dict):
        return {k: (REDACTED if isinstance(k, str) and _SECRET_KEY.search(k) and v not in (None, "")
                    else redact_json(v)) for k, v in data.items()}
    if isinstance(data, list):
        return [redact_json(v) for v in data]
    return data


def redact_argv(argv: list[str]) -> list[str]:
    """Every value of a secret flag (all of them: vLLM's --api-key takes several), the `=` form, and
    credential-like keys in JSON arguments."""
    out, in_secret = [], False
    for arg in argv:
        flag = secret_flag(arg)
        if flag:
            out.append(arg.split("=", 1)[0] + "=" + REDACTED if "=" in arg else arg)
            in_secret = "=" not in arg
        elif in_secret and not arg.startswith("-"):
            out.append(REDACTED)
        else:
            in_secret = False
            out.append(redact_urls(_redact_json_text(arg)))
    return out


def secret_argv_values(argv: list[str]) -> list[str]:
    """The secret values `redact_argv` hides in `argv`."""
    values = []
    for real, shown in zip(argv, redact_argv(argv)):
        if real != shown and redact_urls(real) == shown:  # only a URL's password hidden: that is the secret
            values += url_passwords(real)
        elif real != shown:
            values.append(real.split("=", 1)[1] if secret_flag(real) and "=" in real else real)
    return values


def secret_leaves(arg: str) -> list[str]:
    """The secret text inside one hidden argument: the value of `--api-key=k`, the values under credential
    keys of a JSON argument, else the argument itself."""
    if secret_flag(arg) and "=" in arg:
        return [arg.split("=", 1)[1]]
    if json_depth(arg) > MAX_JSON_DEPTH:
        return [arg]
    try:
        data = json.loads(arg)
    except ValueError:
        return [arg]
    found: list[str] = []

    def walk(node: Any, hidden: bool) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, hidden or (isinstance(k, str) and bool(_SECRET_KEY.search(k))))
        elif isinstance(node, list):
            for v in node:
                walk(v, hidden)
        elif hidden and node not in (None, ""):
            found.append(node if isinstance(node, str) else json.dumps(node))
    walk(data, False)
    return found or [arg]


def environment_secrets(environ: Mapping[str, str], argv_secrets: Mapping[str, Mapping[str, str]]) -> list[str]:
    """Every secret value a process of the appliance may meet: credential-named variables, and the hidden
    arguments `serve` handed over ({program: {index: argument}})."""
    found = [v for k, v in environ.items() if is_secret_name(k) and v]
    found += [p for v in environ.values() for p in url_passwords(v)]
    for hidden in argv_secrets.values():
        for arg in hidden.values():
            found += secret_leaves(arg)
    return found


# A credential-like key of JSON inside text that could not be parsed (an unbalanced quote around it).
_RAW_JSON_SECRET = re.compile(r'(?P<key>"[^"]*(?:token|api[_-]?key|password|passwd|secret|private[_-]?key|credential)'
                              r'[^"]*"\s*:\s*)(?P<value>"(?:[^"\\]|\\.)*"?|[^,}\s]+)', re.IGNORECASE)
_RAW_SECRET = re.compile(r"(?P<flag>--[\w-]+)(?P<sep>=|\s+)(?P<value>.*?)(?=\s+-|\s*$)", re.DOTALL)


def redact_args_text(text: str) -> str:
    """Shell-like text (`*_EXTRA_ARGS`): split and redacted; text that cannot be split (an unbalanced quote)
    has everything after a secret flag hidden up to the next option, quotes and all."""
    try:
        return shlex.join(redact_argv(shlex.split(text)))
    except ValueError:
        pass

    def hide(m: re.Match) -> str:
        return m.group("flag") + m.group("sep") + REDACTED if secret_flag(m.group("flag")) else m.group(0)

    text = _RAW_JSON_SECRET.sub(lambda m: m.group("key") + f'"{REDACTED}"', text)
    return _RAW_SECRET.sub(hide, text)


def raw_secret_values(text: str) -> list[str]:
    """The values `redact_args_text` would hide (for masking them in messages)."""
    try:
        return secret_argv_values(shlex.split(text))
    except ValueError:
        found = [m.group("value").strip('"') for m in _RAW_JSON_SECRET.finditer(text)]
        for m in _RAW_SECRET.finditer(text):
            if secret_flag(m.group("flag")):
                found.append(m.group("value"))
                found.extend(m.group("value").split())
        return found


def redact_env(env: Mapping[str, str]) -> dict[str, str]:
    return {k: (REDACTED if is_secret_name(k) else redact_urls(v)) for k, v in env.items()}


def redact_value(name: str, value: Any) -> Any:
    if is_secret_name(name):
        return REDACTED
    if name.endswith("EXTRA_ARGS") and isinstance(value, str):  # may hold `--api-key ...`
        return redact_urls(redact_args_text(value))
    if isinstance(value, str):
        return redact_urls(_redact_json_text(value))
    return value


def mask_text(text: str, secrets: Iterable[str]) -> str:
    """Free text with every known secret value replaced (longest first, so a prefix never leaves a tail)."""
    for value in sorted({s for s in secrets if s and len(s.strip()) >= MIN_MASKED}, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    return redact_urls(text)
