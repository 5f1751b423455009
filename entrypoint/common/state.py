"""What supervision did, kept in the run directory (`state.json`) for `status` and the metrics exporter.

supervisord knows what runs now but not how often or why a program was restarted; the watchdog sees every
state change and makes the restart decisions, so it is the one writer after start (serve writes the start
record first). Readers take a snapshot; writes replace the file atomically, so a reader never sees half.
"""
from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

_T = TypeVar("_T")

# Why a program was (re)started by supervision, the `reason` label of appliance_restarts_total.
EXITED = "exited"  # it exited or crashed (or failed to start) and supervisord started it again
UNHEALTHY = "unhealthy"  # the watchdog killed it after failed probes (hung, or not ready in time)
DEPENDENCY = "dependency"  # stopped and started again because the LMCache server it needs was restarted
REASONS = (EXITED, UNHEALTHY, DEPENDENCY)


def empty() -> dict:
    return {"started_at": time.time(), "restarts": {}, "probe_failures": {}, "last_restart": None,
            "pruned_files": 0, "pruned_bytes": 0, "warnings": [],
            "shared_store": None,  # {up, since, detail, changes}: the watchdog's last probe of LMCACHE_SHARED_URL
            "lmcache_server": None}  # the same for a replica's LMCache server (LMCACHE_SERVER)


def load(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return empty()
    base = empty()
    base.update(data if isinstance(data, dict) else {})
    return base


def save(path: Path, data: dict) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


def _locked(method: Callable[..., _T]) -> Callable[..., _T]:
    """Recorder methods run one at a time: the watchdog's prune thread records too, and saving iterates the
    record."""
    def locked(self: Recorder, *args: Any, **kwargs: Any) -> _T:
        with self.lock:
            return method(self, *args, **kwargs)
    locked.__name__, locked.__doc__ = method.__name__, method.__doc__
    return locked


class Recorder:
    """The watchdog's handle on state.json: it keeps the record in memory and writes it after each change."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.data = load(self.path)
        self.lock = threading.RLock()  # see _locked

    def _save(self) -> None:
        try:
            save(self.path, self.data)
        except OSError:
            pass  # a full or read-only run directory must not stop supervision

    @_locked
    def restart(self, program: str, reason: str, detail: str = "") -> None:
        per = self.data["restarts"].setdefault(program, {})
        per[reason] = per.get(reason, 0) + 1
        self.data["last_restart"] = {"program": program, "reason": reason, "detail": detail, "at": time.time()}
        self._save()

    @_locked
    def probe_failure(self, program: str) -> None:
        self.data["probe_failures"][program] = self.data["probe_failures"].get(program, 0) + 1
        self._save()

    @_locked
    def shared_store(self, up: bool, detail: str) -> bool:
        """The store's probe result; True when it differs from the previous one (or is the first)."""
        return self.dependency("shared_store", up, detail)

    def lmcache_server(self, up: bool, detail: str) -> bool:
        """A replica's external LMCache server (LMCACHE_SERVER), as shared_store."""
        return self.dependency("lmcache_server", up, detail)

    def dependency(self, key: str, up: bool, detail: str) -> bool:
        last = self.data.get(key)
        if last and last.get("up") == up:
            if last.get("detail") != detail:
                last["detail"] = detail
                self._save()
            return False
        self.data[key] = {"up": up, "since": time.time(), "detail": detail,
                                     "changes": (last or {}).get("changes", -1) + 1}
        self._save()
        return True

    @_locked
    def pruned(self, files: int, freed: int) -> None:
        self.data["pruned_files"] += files
        self.data["pruned_bytes"] += freed
        self._save()


def start(path: Path, warnings: list[str]) -> None:
    """A new record at every start of the appliance (serve): counts are since this start."""
    data = empty()
    data["warnings"] = list(warnings)
    save(path, data)
