"""What the container may use: memory (cgroup limit, else MemAvailable), the locked-memory limit, a volume's
free space. `auto` tier sizes come from here, and the checks that a tier fits (warnings in `config`/`check`,
errors in preflight) read the same numbers.

Only reads (/proc, /sys/fs/cgroup, statvfs, getrlimit); the plan builder takes a `Host`, so that tests give
fixed readings (`FixedHost`) and every plan is reproducible.
"""
from __future__ import annotations

import math
import os
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

GIB = 1 << 30
CGROUP_V2_LIMIT = Path("/sys/fs/cgroup/memory.max")
CGROUP_V1_LIMIT = Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")
NO_V1_LIMIT = 1 << 60  # cgroup v1 writes "no limit" as a number near 2**63
AUTO_MEMORY_SHARE = 0.5  # of the container's memory: vLLM needs the rest (its processes, weights loading)
AUTO_DISK_SHARE = 0.8  # of the volume's free space plus what the tier already holds
AUTO_MIN_GIB = 1.0  # below this a tier is not worth its copies
FALLBACK_CPU_GIB = 5.0  # LMCache's own default, where no memory reading exists (not Linux)


def gib_text(n: float) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB / 10 else f"{n / (1 << 20):.3g} MiB"


def floor_gib(n_bytes: float) -> float:
    """Bytes -> GiB rounded down to 0.1, so an auto size never exceeds what it was derived from."""
    return math.floor(n_bytes / GIB * 10) / 10


@dataclass(frozen=True)
class Memory:
    bytes: int
    source: str  # where the number comes from, for messages


def files_under(path: str | os.PathLike[str]) -> Iterator[tuple[str, os.stat_result]]:
    """(path, stat) of every regular file below `path`, symlinks not followed; what vanishes meanwhile (LMCache
    evicting) or cannot be read is skipped. The disk tier's one walk: auto sizing, preflight's prune, status."""
    stack = [str(path)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    yield entry.path, entry.stat(follow_symlinks=False)
            except OSError:
                continue


class Host:
    """Readings of the machine the plan will run on."""

    def memory(self) -> Memory | None:
        limit = None
        try:
            text = CGROUP_V2_LIMIT.read_text().strip()
            if text != "max":
                limit = Memory(int(text), "the cgroup memory limit")
        except (OSError, ValueError):
            try:
                value = int(CGROUP_V1_LIMIT.read_text().strip())
                if value < NO_V1_LIMIT:
                    limit = Memory(value, "the cgroup memory limit")
            except (OSError, ValueError):
                pass
        available = None
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    available = Memory(int(line.split()[1]) * 1024, "MemAvailable")
        except (OSError, ValueError, IndexError):
            pass
        known = [m for m in (limit, available) if m]
        return min(known, key=lambda m: m.bytes) if known else None

    def memlock(self) -> int | None:
        """The soft locked-memory limit in bytes; None when unlimited."""
        soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        return None if soft == resource.RLIM_INFINITY else soft

    @staticmethod
    def _existing(path: str) -> Path:
        p = Path(path)
        return next((q for q in (p, *p.parents) if q.exists()), Path("/"))

    def disk_free(self, path: str) -> int | None:
        try:
            st = os.statvfs(self._existing(path))
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def tier_bytes(self, path: str) -> int:
        """What the disk tier already holds (its files count toward an `auto` cap: they are its own)."""
        return sum(st.st_size for _, st in files_under(path))

    def in_writable_layer(self, path: str) -> bool:
        """Inside a container, whether `path` is on the container's own root filesystem (no volume there)."""
        if not (os.path.exists("/.dockerenv") or os.path.exists("/run/.containerenv")):
            return False
        try:
            return os.stat(self._existing(path)).st_dev == os.stat("/").st_dev
        except OSError:
            return False


@dataclass
class FixedHost(Host):
    """Given readings (tests, and `config` for another machine)."""
    memory_bytes: int | None = 64 * GIB
    memory_source: str = "the cgroup memory limit"
    memlock_bytes: int | None = None
    free_bytes: int | None = 500 * GIB
    held_bytes: int = 0
    writable_layer: bool = False

    def memory(self) -> Memory | None:
        return None if self.memory_bytes is None else Memory(self.memory_bytes, self.memory_source)

    def memlock(self) -> int | None:
        return self.memlock_bytes

    def disk_free(self, path: str) -> int | None:
        return self.free_bytes

    def tier_bytes(self, path: str) -> int:
        return self.held_bytes

    def in_writable_layer(self, path: str) -> bool:
        return self.writable_layer


def auto_cpu_tier(host: Host) -> tuple[float | None, str]:
    """(GiB or None where too little, how it was chosen) for VLLM_KV_OFFLOADING_SIZE=auto."""
    memory = host.memory()
    if memory is None:
        return FALLBACK_CPU_GIB, "auto: no memory reading on this system, LMCache's default"
    size, why = AUTO_MEMORY_SHARE * memory.bytes, f"half of {gib_text(memory.bytes)} ({memory.source})"
    memlock = host.memlock()
    if memlock is not None and memlock < size:
        size, why = memlock, f"the locked-memory limit, {gib_text(memlock)} (ulimit -l)"
    gib = floor_gib(size)
    return (gib if gib >= AUTO_MIN_GIB else None), f"auto: {why}"


def auto_disk_tier(host: Host, base: str, path: str) -> tuple[float | None, str]:
    free = host.disk_free(base)
    if free is None:
        return None, f"auto: the free space at {base} cannot be read"
    held = host.tier_bytes(path)
    gib = floor_gib(AUTO_DISK_SHARE * (free + held))
    why = f"auto: 80% of {gib_text(free)} free at {base}" + (f" plus {gib_text(held)} it holds" if held else "")
    return (gib if gib >= AUTO_MIN_GIB else None), why
