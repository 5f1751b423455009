"""The appliance's own log lines (serve, preflight, the launcher, the watchdog, on-fatal): docker-compose style
text by default, or one JSON object per line with APPLIANCE_LOG_FORMAT=json, for log tools.

A JSON line always has `ts` (UTC, ISO 8601), `program`, `level`, `event` and `message`; an event may add
fields of its own (`pid`, `reason`, ...). `serve` puts the chosen format into supervisord's environment, so
that every supervised program and listener writes the same way (this module reads it at each call).
"""
from __future__ import annotations

import datetime
import json
import os
import sys
from typing import Any, TextIO

ENV = "APPLIANCE_LOG_FORMAT"
FORMATS = ("text", "json")
NAME_WIDTH = 8  # the longest program name (watchdog, on-fatal), so that the `|` columns line up


def json_mode() -> bool:
    return os.environ.get(ENV, "text").strip().lower() == "json"


def prefix(name: str) -> str:
    """What starts every text line a program prints to the container's output, docker-compose style."""
    return f"{name:<{NAME_WIDTH}} | "


def record(program: str, message: str, level: str = "info", event: str = "message", **fields: Any) -> dict[str, Any]:
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
    return {"ts": now, "program": program, "level": level, "event": event, "message": message, **fields}


def as_json(program: str, message: str, level: str = "info", event: str = "message", **fields: Any) -> str:
    return json.dumps(record(program, message, level, event, **fields), ensure_ascii=False, default=str)


def is_record(line: bytes | str) -> bool:
    """A line that already is one of our JSON records (the launcher's, inside a program's output)."""
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    if not text.startswith("{\"ts\""):
        return False
    try:
        obj = json.loads(text)
    except ValueError:
        return False
    return isinstance(obj, dict) and {"program", "level", "event"} <= obj.keys()


def emit(program: str, message: str, level: str = "info", event: str = "message", stream: TextIO | None = None,
         text_prefix: str | None = None, **fields: Any) -> None:
    """Write one line (text: one per line of `message`). `text_prefix` replaces the `name | ` prefix in text
    mode, for lines another prefixer adds to (the launcher's, which the `logs` listener prefixes)."""
    stream = stream or sys.stderr
    if json_mode():
        stream.write(as_json(program, message, level, event, **fields) + "\n")
    else:
        head = prefix(program) if text_prefix is None else text_prefix
        for line in message.splitlines() or [""]:
            stream.write(head + line + "\n")
    stream.flush()
