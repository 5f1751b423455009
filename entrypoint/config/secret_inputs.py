"""The secrets step: where the secrets come from (VAR or VAR_FILE), and where else they must not travel.

Runs first, on the raw values, so that every later step and message works with the secret read from its
file, and so that a secret copied into another value is refused before it reaches a command line.
"""
from __future__ import annotations

from typing import Mapping

from .files import SECRET_FILE_LIMIT, FileProblem, read_bounded
from .resolved import Problems
from .secrets import is_secret_name, raw_secret_values
from .settings import FILE_SECRETS

MIN_COPIED_SECRET = 6  # a shorter secret inside another value is as likely a coincidence ("sk" in "disk")


def secrets_from_files(values: Mapping[str, str]) -> tuple[dict[str, str], Problems]:
    """VAR / VAR_FILE (FILE_SECRETS): one of the two at most; the file is read. Returns {VAR: the secret read
    from VAR_FILE}; the caller puts it in place of VAR_FILE."""
    found, read = Problems(), {}
    for var, file_var in FILE_SECRETS.items():
        direct, path = values.get(var), values.get(file_var)
        if direct and not direct.strip():
            found.error(f"{var} is only white space: set the secret, or leave {var} empty (unset)")
        if direct and path:
            found.error(f"{var} and {file_var} are both set: set only one of them")
        elif path:
            try:
                secret = read_bounded(path, SECRET_FILE_LIMIT).decode("utf-8").strip()
            except FileProblem as e:
                found.error(f"{file_var}={path!r}: {e}")
            except UnicodeDecodeError:
                found.error(f"{file_var}={path!r}: the file is not UTF-8 text; write the secret as plain text")
            else:
                if not secret:  # an empty key would start vLLM with no authentication at all
                    found.error(f"{file_var}={path!r}: the file is empty (or only white space); put the "
                                f"secret in it, or unset {file_var}")
                elif _unprintable(secret):
                    found.error(f"{file_var}={path!r}: the file holds {_unprintable(secret)}; a secret is one "
                                "line of printable text (not shown)")
                else:
                    read[var] = secret
        elif direct and _unprintable(direct.strip()):
            found.error(f"{var} holds {_unprintable(direct.strip())}; a secret is one line of printable text "
                        "(not shown)")
    return read, found


def secret_copies(values: Mapping[str, str], passthrough: Mapping[str, str], environ: Mapping[str, str]) -> Problems:
    """A secret copied into another value (`VLLM_SERVED_MODEL_NAME=${VLLM_API_KEY}` in an .env, which compose
    and python-dotenv expand) would travel wherever that value goes: a command line, a metrics label, a log.
    Refused, naming both variables and neither value."""
    found = Problems()
    secrets = {n: v.strip() for source in (values, passthrough, environ)
               for n, v in source.items() if is_secret_name(n) and len(v.strip()) >= MIN_COPIED_SECRET}
    for source in (values, passthrough):
        for name, value in sorted(source.items()):
            if is_secret_name(name) or name in FILE_SECRETS.values():
                continue
            allowed = set(raw_secret_values(value)) if name.endswith("EXTRA_ARGS") else set()
            for secret_name, secret in sorted(secrets.items()):
                if secret in value and secret not in allowed:
                    found.error(f"{name} contains the value of {secret_name} (a ${{{secret_name}}} in the .env?): "
                                "a secret must not travel in another variable, where it would be printed; "
                                f"remove it from {name}")
                    break
    return found


def swallowed_secrets(values: Mapping[str, str]) -> set[str]:
    """An unbalanced quote in an env file makes the lines after it part of one value (`VLLM_HOST='` then
    `HF_TOKEN=...`): the secrets on those lines stay secrets wherever that value is shown."""
    swallowed: set[str] = set()
    for value in values.values():
        for line in value.splitlines()[1:]:
            name, sep, text = line.partition("=")
            secret = text.strip().strip("'\"").strip()
            if sep and secret and is_secret_name(name.strip()):
                swallowed.add(secret)
            elif sep and name.strip().endswith("EXTRA_ARGS"):  # `--api-key k` inside the swallowed text
                swallowed.update(raw_secret_values(text))
    return swallowed


def _unprintable(secret: str) -> str | None:
    """What makes a secret unusable where it goes: an HTTP header (the API key clients and the health probes
    send) and a log line (where it is masked line by line) hold no line break or control character."""
    lines = secret.count("\n") + 1
    if lines > 1:
        return f"{lines} lines"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in secret):
        return "a control character"
    return None
