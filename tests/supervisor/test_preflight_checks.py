"""Preflight failures: a clear message that names the path or limit and the fix, exit 3, nothing started.

The disk cases use real filesystems: a tmpfs mounted read-only, a tiny tmpfs. That needs root with mount
rights (CI runs as root); elsewhere the read-only case falls back to a directory without write permission
and the small-disk case to a cap larger than any disk.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from entrypoint.config.load import make_plan
from entrypoint.supervise.preflight import MAX_SOCKET_PATH

EXIT_PREFLIGHT = 3


@pytest.fixture
def tmpfs(tmp_path):
    """tmpfs(size, read_only=False, prepare=None) -> a mounted directory, or None without mount rights."""
    mounted = []

    def mount(size: str, read_only: bool = False, prepare=None):
        where = tmp_path / f"tmpfs{len(mounted)}"
        where.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True).returncode != 0:
            return None
        mounted.append(where)
        if prepare:
            prepare(where)
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fails_preflight(a, *expected: str) -> str:
    rc = a.wait_exit(30)
    out = a.output()
    assert rc == EXIT_PREFLIGHT, out
    for line in expected:
        assert line in out.splitlines(), f"{line!r} not a line of:\n{out}"
    assert out.splitlines()[-1] == f"{len(expected)} preflight problem(s); nothing was started."
    assert not a.run.conf.exists() and not a.run.plan.exists(), "files written"
    assert "Executing" not in out and not list(a.control.glob("*-start-*.json")), "something was started"
    return out


def tier_of(env) -> str:
    return make_plan(None, [], environ=env).lmcache.disk.path


@pytest.mark.parametrize("exists", [False, True], ids=["to-create", "existing"])
def test_read_only_disk_tier(appliance, tmpfs, tmp_path, exists):
    a = appliance(start=False)
    a.env["LMCACHE_LOCAL_DISK"] = str(tmp_path / "tmpfs0")
    tier = tier_of(a.env)
    ro = tmpfs("8m", read_only=True, prepare=lambda d: exists and Path(tier).mkdir(parents=True))
    if ro is None:
        if os.getuid() == 0:
            pytest.skip("needs mount rights for a read-only tmpfs (root can write anywhere else)")
        (tmp_path / "tmpfs0").mkdir()
        if exists:
            Path(tier).mkdir(parents=True)
        os.chmod(tmp_path / "tmpfs0", 0o555)
        os.chmod(tier, 0o555) if exists else None
    a.start()
    base = tmp_path / "tmpfs0"
    fix = (f"mount a writable volume at {base} (compose: `volumes: [\"kv-disk:{base}\"]`), "
           "or set LMCACHE_LOCAL_DISK to a writable path, or LMCACHE_LOCAL_DISK=false to run without a disk tier")
    reason = "Read-only file system" if ro else "Permission denied"
    if exists:
        expected = (f"error: disk tier {tier}: not writable by uid {os.getuid()} ({reason}); mount the volume "
                    f"read-write and writable for uid {os.getuid()}, or set LMCACHE_LOCAL_DISK to a writable path, or "
                    "LMCACHE_LOCAL_DISK=false to run without a disk tier")
    else:
        expected = f"error: disk tier {tier}: cannot create the directory: {reason} in {tmp_path / 'tmpfs0'}; {fix}"
    fails_preflight(a, expected)


def test_too_little_space_for_the_disk_tier(appliance, tmpfs, tmp_path):
    small = tmpfs("64m")
    base = small or tmp_path
    size = "1" if small else "1000000"  # GiB: more than the tmpfs, or than any disk
    a = appliance(start=False, LMCACHE_LOCAL_DISK=base, LMCACHE_MAX_LOCAL_DISK_SIZE=size)
    tier = tier_of(a.env)
    a.start()
    out = a.wait_exit(30) and a.output()
    line = next(line for line in out.splitlines() if line.startswith("error: "))
    st = os.statvfs(base)
    have_gib = st.f_bavail * st.f_frsize / (1 << 30)
    need = size if small else "1e+06"
    assert line.startswith(f"error: disk tier {tier}: LMCACHE_MAX_LOCAL_DISK_SIZE={size} GiB needs {need} GiB free "
                           "but its filesystem has ")
    if small:
        assert line == (f"error: disk tier {tier}: LMCACHE_MAX_LOCAL_DISK_SIZE=1 GiB needs 1 GiB free but its "
                        "filesystem has 64 MiB available; lower LMCACHE_MAX_LOCAL_DISK_SIZE to at most 0.06, or give "
                        "the volume more space")
    else:
        assert f"lower LMCACHE_MAX_LOCAL_DISK_SIZE to at most {int(have_gib * 100) / 100:g}" in line
    fails_preflight(a, line)


def test_disk_tier_whose_parent_cannot_be_created(appliance, tmp_path):
    (tmp_path / "a-file").write_text("not a directory")
    a = appliance(start=False, LMCACHE_LOCAL_DISK=tmp_path / "a-file" / "kv")
    tier = tier_of(a.env)
    a.start()
    fails_preflight(a, f"error: disk tier {tier}: cannot create the directory: {tmp_path / 'a-file'} is not a "
                       f"directory; "
                       f"mount a writable volume at {tmp_path / 'a-file' / 'kv'} (compose: `volumes: [\"kv-disk:"
                       f"{tmp_path / 'a-file' / 'kv'}\"]`), or set LMCACHE_LOCAL_DISK to a writable path, or "
                       "LMCACHE_LOCAL_DISK=false to run without a disk tier")


def test_fewer_gpus_than_tensor_parallel_size(appliance, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)'\n")
    fake.chmod(0o755)
    a = appliance(start=False, VLLM_TENSOR_PARALLEL_SIZE=2)
    a.env["PATH"] = f"{bin_dir}:{a.env['PATH']}"
    a.start()
    fails_preflight(a, "error: VLLM_TENSOR_PARALLEL_SIZE x VLLM_PIPELINE_PARALLEL_SIZE = 2 needs 2 GPUs, but 1 is "
                       "visible (nvidia-smi -L); give the container the GPUs: compose `deploy.resources."
                       "reservations.devices: [{driver: nvidia, count: all, capabilities: [gpu]}]` (docker run --gpus "
                       "all), or lower VLLM_TENSOR_PARALLEL_SIZE")


def test_run_dir_too_long_for_a_socket(appliance, tmp_path):
    long = tmp_path / ("r" * MAX_SOCKET_PATH)
    a = appliance(start=False, APPLIANCE_RUN_DIR=long)
    a.start()
    fails_preflight(a, f"error: APPLIANCE_RUN_DIR={long}: too long for supervisord's unix socket "
                       f"({long}/supervisor.sock is {len(str(long)) + 16} characters, at most {MAX_SOCKET_PATH}); "
                       "choose a shorter path")
