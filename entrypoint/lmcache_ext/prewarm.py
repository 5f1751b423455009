"""Hot prefixes pre-warmed: an LMCache server module (`lmcache server --server-module`, LMCache >= 0.5.6).

While the server runs, it follows which chunks the CPU tier (LMCache's L1) holds and how recently each was
written or read, from LMCache's own event bus (the L1 events its metrics use), and every
`record_interval_s` (and when the server stops) writes the most recently used ones, up to `max_bytes`, to
`key_file` next to the disk tier. Periodic, so that a SIGKILL loses at most one interval.

When the server starts again (a restart, an image upgrade with the same LMCache version: the disk tier's
namespace names it), it reads that file and, as soon as vLLM has registered its KV cache (LMCache needs the
memory layout to allocate CPU-tier objects; before that it knows only keys), submits the keys as LMCache's
own key-based warm prefetch (WarmPrefetchJobs, lmcache/v1/multiprocess/warm_prefetch.py: disk -> CPU tier,
resident and unpinned), so that the first request for a hot prefix is a CPU-tier hit, not a disk read.

Never fatal to the LMCache server: a missing, corrupt or foreign key file, a key LMCache rejects, an LMCache
without the APIs used here: each is one log line and the server runs on without pre-warming.
The factory is `build_server_modules`; its config (built by entrypoint/config/kv_tiers.py):
{"key_file": path, "max_bytes": int, "record_interval_s": float}.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

FORMAT = "appliance-prewarm/1"
POLL_S = 0.5  # how often the layout registry and the running prefetches are checked
GIB = 1 << 30

try:
    from lmcache.logging import init_logger

    log = init_logger(__name__)  # LMCache's handler: the lines land in the LMCache server's log
except Exception:  # noqa: BLE001 - outside LMCache (a unit test of the pure parts)
    log = logging.getLogger(__name__)


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB // 10 else f"{n / (1 << 20):.1f} MiB"


# -- the key file ------------------------------------------------------------------------------------------
# One row per chunk, most recently used first: [model_name, kv_rank, object_group_id, cache_salt,
# chunk_hash_hex, size_bytes]. Plain JSON, so that an operator can read it; written to a temporary file
# and renamed, so that a reader never sees half of one.

def encode_row(key: Any, size: int) -> list:
    return [key.model_name, key.kv_rank, key.object_group_id, key.cache_salt, key.chunk_hash.hex(), int(size)]


def decode_rows(data: Any, object_key: Any) -> tuple[list[tuple[object, int]], int]:
    """(key, size) pairs from a key file's parsed JSON, and how many rows were skipped. `object_key` is
    LMCache's ObjectKey class (its own checks run: a row it rejects is skipped). Raises ValueError when the
    file is not ours at all."""
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("keys"), list):
        raise ValueError(f"not an {FORMAT} key file")
    out, skipped, seen = [], 0, set()
    for row in data["keys"]:
        try:
            model, rank, group, salt, digest, size = row
            if not (isinstance(model, str) and isinstance(salt, str) and isinstance(digest, str)
                    and all(type(n) is int for n in (rank, group, size)) and size > 0 and rank >= 0):
                raise ValueError(row)
            key = object_key(chunk_hash=bytes.fromhex(digest), model_name=model, kv_rank=rank,
                             object_group_id=group, cache_salt=salt)
        except (ValueError, TypeError):
            skipped += 1
            continue
        if key not in seen:
            seen.add(key)
            out.append((key, size))
    return out, skipped


def read_key_file(path: Path, object_key: Any) -> tuple[list[tuple[object, int]], str]:
    """The recorded keys (most recent first) and a note for the log; never raises."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return [], f"no key file {path} yet (nothing recorded: the first start, or a new namespace)"
    except (OSError, ValueError) as e:
        return [], f"key file {path} unreadable ({type(e).__name__}: {e}); nothing pre-warmed"
    try:
        rows, skipped = decode_rows(data, object_key)
    except ValueError as e:
        return [], f"key file {path}: {e}; nothing pre-warmed"
    note = f"key file {path}: {len(rows)} chunks" + (f", {skipped} malformed rows skipped" if skipped else "")
    return rows, note


def write_key_file(path: Path, rows: list[tuple[object, int]]) -> None:
    body = json.dumps({"format": FORMAT, "written": time.time(),
                       "keys": [encode_row(k, s) for k, s in rows]}, separators=(",", ":"))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(body)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def bounded(rows: Iterable[tuple[Any, int]], max_bytes: int) -> list[tuple[Any, int]]:
    """The longest head of `rows` (most recent first) whose sizes add up to at most max_bytes."""
    out, total = [], 0
    for key, size in rows:
        if total + size > max_bytes:
            break
        out.append((key, size))
        total += size
    return out


# -- what the CPU tier holds, most recently used last -------------------------------------------------------
class HotKeys:
    """LMCache's L1 LRU order, rebuilt from its L1 events (the eviction policy's own order is private).
    Keys of one event are taken last-to-first, as LMCache's LRU policy does: the first chunk of a prefix
    ends up the most recent, so that a byte bound cuts a prefix at its tail, never at its head."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._order: OrderedDict[object, int] = OrderedDict()
        self.generation = 0  # bumped on every change: nothing to write while it stands still

    def written(self, keys: Iterable[object], metas: Iterable[Any]) -> None:
        with self._lock:
            for key, meta in reversed(list(zip(keys, metas))):
                self._order[key] = int(getattr(meta, "size_bytes", 0) or 0)
                self._order.move_to_end(key)
            self.generation += 1

    def used(self, keys: Iterable[object]) -> None:
        with self._lock:
            for key in reversed(list(keys)):
                if key in self._order:
                    self._order.move_to_end(key)
            self.generation += 1

    def removed(self, keys: Iterable[object]) -> None:
        with self._lock:
            for key in keys:
                self._order.pop(key, None)
            self.generation += 1

    def most_recent_first(self) -> list[tuple[object, int]]:
        with self._lock:
            return [(k, s) for k, s in reversed(self._order.items()) if s > 0]


# -- the server module --------------------------------------------------------------------------------------
class Prewarm:
    """The EngineModule (context, report_status, close) LMCache composes into its server."""

    def __init__(self, ctx: Any, key_file: str, max_bytes: int, record_interval_s: float) -> None:
        # Everything this module uses of LMCache, imported here: an LMCache without it fails the factory
        # (one log line, no module), not a thread later.
        from lmcache.v1.distributed.api import GroupedObjectKeys, ObjectKey
        from lmcache.v1.mp_observability.event import EventType
        from lmcache.v1.mp_observability.event_bus import get_event_bus
        from lmcache.v1.multiprocess.warm_prefetch import PENDING, WarmPrefetchJobs

        self._lmcache = SimpleNamespace(GroupedObjectKeys=GroupedObjectKeys, ObjectKey=ObjectKey,
                                        PENDING=PENDING, jobs=WarmPrefetchJobs())
        ctx.layout_desc_registry.find_group_layout_descs  # noqa: B018 - the registry API _submit_ready uses

        self._ctx = ctx
        self._path = Path(key_file)
        self._max_bytes = int(max_bytes)
        self._interval = float(record_interval_s)
        self._hot = HotKeys()
        self._written_generation = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._status: dict[str, object] = {"key_file": str(self._path), "max_bytes": self._max_bytes,
                                           "state": "starting", "recorded_chunks": 0}
        bus = get_event_bus()
        self._recording = bool(getattr(bus, "enabled", False))
        if self._recording:
            for event in (EventType.L1_WRITE_FINISHED, EventType.L1_WRITE_FINISHED_AND_READ_RESERVED):
                bus.subscribe(event, lambda e: self._hot.written(e.metadata.get("keys", ()),
                                                                 e.metadata.get("meta", ())))
            for event in (EventType.L1_READ_RESERVED, EventType.L1_READ_FINISHED, EventType.L1_KEYS_ACCESSED):
                bus.subscribe(event, lambda e: self._hot.used(e.metadata.get("keys", ())))
            bus.subscribe(EventType.L1_KEYS_EVICTED, lambda e: self._hot.removed(e.metadata.get("keys", ())))
        else:
            log.warning("appliance prewarm: LMCache's event bus is off (--disable-observability): the hot "
                        "chunks are not recorded; a key file already written is still loaded")
        rows, note = read_key_file(self._path, ObjectKey)
        self._pending = bounded(rows, self._max_bytes)  # recorded, not yet submitted
        # Recorded keys not yet loaded stay in the next record (after the hot ones), so that a restart
        # before vLLM registered does not forget them.
        self._carry: list[tuple[object, int]] = list(self._pending)
        log.info("appliance prewarm: %s; up to %s (%d chunks, %s) to load into the CPU tier once vLLM "
                 "registers its KV cache; hot chunks recorded every %gs%s", note, _gib(self._max_bytes),
                 len(self._pending), _gib(sum(s for _, s in self._pending)), self._interval,
                 "" if self._recording else " (recording off)")
        self._status.update(state="waiting" if self._pending else "nothing to load", to_load=len(self._pending))
        self.rounds = 0  # rounds of the loop so far (each checks the layout registry)
        self._thread = threading.Thread(target=self._run, name="appliance-prewarm", daemon=True)
        self._thread.start()

    # EngineModule protocol
    @property
    def context(self) -> Any:
        return self._ctx

    def report_status(self) -> dict:
        with self._lock:
            return {"appliance_prewarm": dict(self._status)}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.record()

    # the work
    def record(self) -> None:
        """Write the hot set when it changed since the last write; never raises."""
        generation = self._hot.generation
        if not self._recording or generation == self._written_generation:
            return
        hot = self._hot.most_recent_first()
        seen = {k for k, _ in hot}
        rows = bounded(hot + [(k, s) for k, s in self._carry if k not in seen], self._max_bytes)
        try:
            write_key_file(self._path, rows)
        except OSError as e:
            log.warning("appliance prewarm: cannot write %s (%s); the next start pre-warms less", self._path, e)
            return
        self._written_generation = generation
        with self._lock:
            self._status["recorded_chunks"] = len(rows)
            self._status["recorded_bytes"] = sum(s for _, s in rows)

    def _run(self) -> None:
        lmc = self._lmcache
        jobs, started, next_record = lmc.jobs, None, time.monotonic() + self._interval
        running: dict[str, int] = {}  # request id -> how many keys it asked for, while it loads
        loaded = asked = loaded_bytes = 0
        sizes: dict[str, int] = {}
        while not self._stop.wait(POLL_S / 5 if running else POLL_S):  # a finer clock while loading
            self.rounds += 1  # observable: a test waits for rounds instead of sleeping
            try:
                if self._pending:
                    submitted = self._submit_ready(jobs)
                    if submitted:
                        started = started or time.monotonic()
                        for request_id, (count, nbytes) in submitted.items():
                            running[request_id] = count
                            sizes[request_id] = nbytes
                        with self._lock:
                            self._status["state"] = "loading"
                for request_id in list(running):
                    status = jobs.poll(self._ctx.storage_manager, request_id)
                    if status.state != lmc.PENDING:  # completed (or unknown: gone all the same)
                        count = running.pop(request_id)
                        asked += count
                        loaded += status.found_keys
                        loaded_bytes += sizes.pop(request_id) * status.found_keys // max(count, 1)
                        if not running and not self._pending:
                            took = time.monotonic() - (started or time.monotonic())
                            self._carry = []
                            log.info("appliance prewarm: loaded %d of %d recorded chunks (%s) from the disk "
                                     "tier into the CPU tier in %.2f s", loaded, asked, _gib(loaded_bytes), took)
                            with self._lock:
                                self._status.update(state="done", loaded_chunks=loaded, asked_chunks=asked,
                                                    loaded_bytes=loaded_bytes, seconds=round(took, 3))
                if time.monotonic() >= next_record:
                    next_record = time.monotonic() + self._interval
                    self.record()
            except Exception:  # noqa: BLE001 - never take the LMCache server down
                log.exception("appliance prewarm: step failed; pre-warming stops, the server runs on")
                self._pending, running = [], {}
                with self._lock:
                    self._status["state"] = "failed"

    def _submit_ready(self, jobs: Any) -> dict[str, tuple[int, int]]:
        """Submit the recorded keys of every (model, world size) whose KV layout is now registered: one warm
        prefetch per (object group, kv rank) row, as LMCache's prefetch rows are. Returns {request id:
        (chunks, bytes)}."""
        GroupedObjectKeys, ObjectKey = self._lmcache.GroupedObjectKeys, self._lmcache.ObjectKey
        registry = self._ctx.layout_desc_registry
        rows: dict[tuple, list] = {}
        for key, size in self._pending:
            world = ObjectKey.WorldSizeFromKVRank(key.kv_rank)
            rows.setdefault((key.model_name, world, key.object_group_id, key.kv_rank), []).append((key, size))
        out, left = {}, []
        for (model, world, group, rank), items in rows.items():
            layouts = registry.find_group_layout_descs(model, world) if registry.find(model, world) else None
            if layouts is None:
                left += items  # vLLM has not registered this model yet (or never will: another model)
                continue
            layout = layouts.get(group) or registry.find(model, world)
            row = GroupedObjectKeys(keys=[k for k, _ in items], object_group_id=group, layout_desc=layout)
            request_id = jobs.submit(self._ctx.storage_manager, [row])
            out[request_id] = (len(items), sum(s for _, s in items))
            log.info("appliance prewarm: model %s (world size %d, kv rank %#x): loading %d chunks (%s) from "
                     "the disk tier", model, world, rank, len(items), _gib(out[request_id][1]))
        self._pending = left
        return out


def build_server_modules(build_context: Any) -> Prewarm | None:
    """LMCache's factory hook (ExtServerModuleBuildContext -> modules). Any problem: no module, one log line."""
    config = getattr(build_context, "config", None) or {}
    try:
        key_file, max_bytes = str(config["key_file"]), int(config["max_bytes"])
        interval = float(config.get("record_interval_s", 30))
        if max_bytes <= 0 or interval <= 0:
            raise ValueError("max_bytes and record_interval_s must be > 0")
        return Prewarm(build_context.server_context, key_file, max_bytes, interval)
    except Exception as e:  # noqa: BLE001 - an LMCache without these APIs, a bad config: serve without it
        log.error("appliance prewarm: off (%s: %s); the LMCache server runs without pre-warming",
                  type(e).__name__, e)
        return None
