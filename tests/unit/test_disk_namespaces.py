"""After an upgrade the disk tier volume holds the old LMCache version's namespace next to the new one: it is
left alone (never read) and counts against the cap, its files pruned first since nothing uses them."""
from __future__ import annotations

import os

from entrypoint.common.disk_prune import prune, tier_dirs
from entrypoint.config.kv_tiers import OTHER_NAMESPACES, disk_namespace
from entrypoint.config.plan import DiskTier
from entrypoint.supervise.preflight import Findings, check_disk_tier

GIB = 1 << 30


def namespace(version: str) -> str:
    return disk_namespace("org/m", "0123456789abcdef", version)


def fill(directory, n: int, size: int, mtime: float) -> list:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = directory / f"chunk-{i}"
        path.write_bytes(b"\0" * size)
        os.utime(path, (mtime + i, mtime + i))
        paths.append(path)
    return paths


def test_the_cap_covers_the_appliances_other_namespaces_only(tmp_path):
    old, new = tmp_path / namespace("0.5.3"), tmp_path / namespace("0.5.6")
    fill(old, 2, 10, 1000)
    unrelated = tmp_path / "operator-data"
    fill(unrelated, 1, 10, 1000)
    (tmp_path / "stray-file__lmcache-0.5.3").write_bytes(b"x")  # a file, not a namespace
    disk = DiskTier(base=str(tmp_path), path=str(new), max_size_gib=1.0)
    assert tier_dirs(disk) == [str(new), str(old)]


def test_old_namespace_counts_and_its_files_go_first(tmp_path):
    old, new = tmp_path / namespace("0.5.3"), tmp_path / namespace("0.5.6")
    old_files = fill(old, 4, 1000, 1_000)  # written by the old version, never read since
    new_files = fill(new, 8, 1000, 2_000)
    disk = DiskTier(base=str(tmp_path), path=str(new), max_size_gib=10_000 / GIB, others=OTHER_NAMESPACES)
    removed, freed, held = prune(tier_dirs(disk), disk.max_size_gib * GIB)
    assert held == 12_000 and removed == 3 and freed == 3_000  # down to 90% of the cap
    assert [p.exists() for p in old_files] == [False, False, False, True]
    assert all(p.exists() for p in new_files)


def test_preflight_prunes_across_namespaces_and_says_so(tmp_path):
    old, new = tmp_path / namespace("0.5.3"), tmp_path / namespace("0.5.6")
    fill(old, 5, 1000, 1_000)
    disk = DiskTier(base=str(tmp_path), path=str(new), max_size_gib=2_000 / GIB)
    found = Findings()
    check_disk_tier(disk, found)
    assert found.errors == []
    assert sum(f.stat().st_size for f in old.iterdir()) <= 1_800
    assert len(found.notes) == 1 and "removed the 4 least recently used file(s)" in found.notes[0]
