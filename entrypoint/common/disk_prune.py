"""The disk tier's cap, kept by removing its least recently used files: a backstop to LMCache's own eviction.

Preflight prunes once before anything starts, the watchdog every while after (its own thread). The cap covers
the appliance's other namespaces on the volume too (tier_dirs): after an upgrade the old version's files stay
there, unread, and go first.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..config import resources
from ..config.kv_tiers import NAMESPACE_MARK
from ..config.plan import DiskTier

GIB = 1 << 30
PRUNE_TO = 0.9  # an over-full disk tier is pruned to this share of its cap


def size_text(n: float) -> str:
    return f"{n / GIB:.3g} GiB" if n >= GIB / 10 else f"{n / (1 << 20):.3g} MiB"


def tier_files(path: str | Path) -> list[tuple[float, int, str, float]]:
    """(last use, size, path, last write) of every file under the disk tier; last use is the later of atime
    and mtime, since volumes are often mounted noatime."""
    return [(max(st.st_atime, st.st_mtime), st.st_size, name, st.st_mtime)
            for name, st in resources.files_under(path)]


def tier_dirs(disk: DiskTier) -> list[str]:
    """The directories the cap covers: this plan's namespace and the appliance's other namespaces next to it
    (another model, chunk size, or LMCache version: an upgrade leaves the old version's files there, unread).
    Only names the appliance makes (kv_tiers.disk_namespace) count: a base path may hold other data."""
    dirs = [disk.path]
    try:
        entries = list(os.scandir(disk.base))
    except OSError:
        return dirs
    for entry in entries:
        if entry.path != disk.path and NAMESPACE_MARK in entry.name and entry.is_dir(follow_symlinks=False):
            dirs.append(entry.path)
    return dirs


def prune(path: str | Path | list, max_bytes: float, written_before: float | None = None,
          to: float = PRUNE_TO) -> tuple[int, int, int]:
    """Over the cap, remove least recently used files down to `to` (a share) of it, across all the directories
    given (tier_dirs). Returns (files removed, bytes removed, bytes held before).
    written_before (epoch s): only files last written before it may go; the running LMCache server counts the
    files it wrote itself, and one removed under it is never uncounted (below), so those are left to its own
    eviction (see the watchdog)."""
    files = [f for p in (path if isinstance(path, list) else [path]) for f in tier_files(p)]
    total = sum(size for _, size, _, _ in files)
    removed = freed = 0
    if total <= max_bytes:
        return 0, 0, total
    for _, size, name, written in sorted(files):
        if total - freed <= to * max_bytes:
            break
        if written_before is not None and written >= written_before:
            continue
        try:
            os.unlink(name)
        except FileNotFoundError:
            pass  # evicted by LMCache meanwhile: gone all the same
        except OSError:
            continue
        freed += size
        removed += 1
    return removed, freed, total


def prune_note(disk: DiskTier, removed: int, freed: int, held: int) -> str:
    return (f"disk tier {disk.path} held {size_text(held)}, over its cap of {size_text(disk.max_size_gib * GIB)} "
            f"(LMCACHE_MAX_LOCAL_DISK_SIZE): removed the {removed} least recently used file(s), {size_text(freed)}")
