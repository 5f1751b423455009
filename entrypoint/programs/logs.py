"""The `logs` eventlistener: every line vLLM and LMCache print, on the container's output, prefixed with
the program's name (`vllm     | ...`), with every secret value the appliance knows of (credential variables,
hidden arguments: config/secrets.py) replaced by `***`, whoever printed it (vLLM logs its non-default
arguments, an --api-key included).

supervisord cannot prefix lines itself. Doing it here, from PROCESS_LOG events, leaves the programs alone:
supervisord's pid for `vllm` is vLLM's own process, so signals, process groups and exit codes are exactly
those of vLLM, and the full output also stays in the run directory's `<program>.log` for on-fatal.
"""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping

from ..common import applog
from ..common.events import Listener, log_bytes, prefix, split_payload
from ..config.secrets import MIN_MASKED, REDACTED, environment_secrets
from .launch import SECRET_ARGV_VAR

MAX_PARTIAL = 65536  # a "line" longer than this without a newline is printed as it is


def secret_bytes(environ: Mapping[str, str] | None = None) -> list[bytes]:
    """What to mask, longest first (a key that contains another is hidden whole)."""
    environ = os.environ if environ is None else environ
    try:
        hidden = json.loads(environ.get(SECRET_ARGV_VAR) or "{}")
    except ValueError:
        hidden = {}
    values = {v.encode("utf-8", "surrogateescape") for v in environment_secrets(environ, hidden)
              if len(v.strip()) >= MIN_MASKED}
    return sorted(values, key=len, reverse=True)


def mask(line: bytes, secrets: list[bytes]) -> bytes:
    for value in secrets:
        if value in line:
            line = line.replace(value, REDACTED.encode())
    return line


def render_line(name: str, line: bytes) -> bytes:
    """One line of a program's output as the container shows it: `name | line`, or with
    APPLIANCE_LOG_FORMAT=json a JSON record (event `output`; the launcher's own records pass as they are)."""
    if not applog.json_mode():
        return prefix(name).encode() + line
    if applog.is_record(line):
        return line
    return applog.as_json(name, line.decode("utf-8", "replace"), event="output").encode()


def main(argv: list[str] | None = None) -> int:
    out = sys.stderr.buffer
    secrets = secret_bytes()
    partial: dict[str, bytes] = {}  # output after the last newline, per program
    listener = Listener()
    while True:
        event = listener.next()
        if event is None:
            continue
        headers, payload = event
        meta, data = split_payload(payload)
        name = meta.get("processname", "?")
        if headers.get("eventname", "").startswith("PROCESS_LOG"):
            *lines, rest = (partial.pop(name, b"") + log_bytes(data)).split(b"\n")
            if len(rest) > MAX_PARTIAL:
                lines, rest = lines + [rest], b""
            if rest:
                partial[name] = rest
        else:  # a state change: the program may have ended in the middle of a line
            lines = [partial.pop(name)] if name in partial else []
        for line in lines:
            out.write(render_line(name, mask(line.rstrip(b"\r"), secrets)) + b"\n")
        out.flush()


if __name__ == "__main__":
    sys.exit(main())
