"""Checks before anything starts. Errors stop `serve` (nothing started); warnings explain a compose fix.

- errors: the run directory and the disk-tier directory can be created and written (write, fsync,
  delete a probe file), the disk tier's filesystem has room for LMCACHE_MAX_LOCAL_DISK_SIZE, a GPU is
  visible at all (exit 3 with the `--gpus all` fix rather than vLLM's traceback), and where `nvidia-smi`
  exists it lists enough GPUs for the tensor/pipeline-parallel size;
- errors: the CPU tier fits in the memory the container may use (config/resources.py);
- warnings: the locked-memory limit (`ulimit -l`) and /dev/shm are large enough for the CPU tier and TP;
- warnings: the shared KV store (LMCACHE_SHARED_URL) answers; the appliance starts without it (store.py).
The disk tier is also pruned to its cap here (and by the watchdog later; common/disk_prune.py): a backstop to
LMCache's eviction. The cap covers the appliance's other namespaces on the volume too (tier_dirs): after an
upgrade the old LMCache version's files stay, unread, and being the least recently used they are the first to go.
"""
from __future__ import annotations

import json
import math
import os
import resource
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from ..common import store
from ..common.disk_prune import GIB, prune, prune_note, size_text, tier_dirs
from ..config import kv_identity, resources
from ..config.kv_tiers import cpu_tier_problem
from ..config.plan import DiskTier, Plan
from ..rundir import RunDir

SHM_FOR_TP = 1 * GIB  # NCCL and vLLM's shared-memory broadcast between TP workers; Docker's default is 64 MiB
MAX_SOCKET_PATH = 100  # sun_path is 108 bytes


@dataclass
class Findings:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _blocker(path: Path, error: OSError) -> str:
    """Why mkdir -p failed, said of the deepest part of the path that exists."""
    existing = next((p for p in path.parents if os.path.lexists(p)), Path("/"))
    if not existing.is_dir():
        return f"{existing} is not a directory"
    return f"{error.strerror} in {existing}"


def check_disk_tier(disk: DiskTier, found: Findings) -> None:
    path = Path(disk.path)
    other = "set LMCACHE_LOCAL_DISK to a writable path, or LMCACHE_LOCAL_DISK=false to run without a disk tier"
    fix = f"mount a writable volume at {disk.base} (compose: `volumes: [\"kv-disk:{disk.base}\"]`), or {other}"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        found.errors.append(f"disk tier {path}: cannot create the directory: {_blocker(path, e)}; {fix}")
        return
    probe = path / f".appliance-write-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.unlink(probe)
    except OSError as e:
        found.errors.append(f"disk tier {path}: not writable by uid {os.getuid()} ({e.strerror}); mount the volume "
                            f"read-write and writable for uid {os.getuid()}, or {other}")
        return
    cap = disk.max_size_gib * GIB
    removed, freed, held = prune(tier_dirs(disk), cap)
    if removed:
        found.notes.append(prune_note(disk, removed, freed, held))
    used = held - freed
    st = os.statvfs(path)
    have = st.f_bavail * st.f_frsize
    need = cap - used
    if have < need:
        at_most = math.floor((have + used) / GIB * 100) / 100
        lower = (f"lower LMCACHE_MAX_LOCAL_DISK_SIZE to at most {at_most:g}" if at_most > 0
                 else "set LMCACHE_LOCAL_DISK=false")
        found.errors.append(f"disk tier {path}: LMCACHE_MAX_LOCAL_DISK_SIZE={disk.max_size_gib:g} GiB needs "
                            f"{size_text(need)} free but its filesystem has {size_text(have)} available; {lower}, "
                            "or give the volume more space")


def note_kv_identity(plan: Plan, found: Findings) -> None:
    """Records this start's KV identity next to its disk tier, and says once when the volume holds KV of another
    identity (another model, weights changed in place, a KV-affecting setting, an upgrade), with what changed:
    that KV is never read (its namespace differs) and goes first under the cap (prune). The record is the
    redacted one `config` shows: no secret lands on the volume."""
    disk, identity = plan.lmcache.disk, plan.kv_identity
    if disk is None or not identity or not os.path.isdir(disk.path):
        return
    inputs = plan.to_dict()["kv_identity_inputs"]
    mine = kv_identity.KvIdentity(identity, inputs.get("parts", {}), inputs.get("files", {}))
    others = []
    for directory in tier_dirs(disk)[1:]:
        manifest = Path(directory) / kv_identity.MANIFEST_FILE
        try:
            with open(manifest, "rb") as f:
                recorded = json.loads(f.read(kv_identity.MAX_CONFIG_BYTES))
            when = manifest.stat().st_mtime
        except (OSError, ValueError):
            recorded, when = {}, os.stat(directory).st_mtime if os.path.exists(directory) else 0
        others.append((when, Path(directory).name, recorded if isinstance(recorded, dict) else {}))
    if others:
        _, name, recorded = max(others)
        more = f" (and {len(others) - 1} older)" if len(others) > 1 else ""
        found.notes.append(f"the disk tier holds KV of another identity, {name}{more}: not read by this start "
                           f"({kv_identity.changed(recorded, mine)}); its files, least recently used, go first "
                           "when the tier is over LMCACHE_MAX_LOCAL_DISK_SIZE")
    target = Path(disk.path) / kv_identity.MANIFEST_FILE
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        tmp.write_text(json.dumps(mine.manifest(), indent=1, sort_keys=True))
        os.replace(tmp, target)
    except OSError as e:
        found.warnings.append(f"disk tier {disk.path}: cannot record its KV identity ({e.strerror})")


# -- memory limits ----------------------------------------------------------------------------------------
def check_memlock(cpu_gib: float | None, found: Findings) -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if not cpu_gib or soft == resource.RLIM_INFINITY or soft >= cpu_gib * GIB:
        return
    found.warnings.append(
        f"the locked-memory limit (ulimit -l) is {size_text(soft)}, but the CPU tier pins {cpu_gib:g} GiB of host "
        "memory; pinning can fail or fall back to slower transfers. Fix: compose `ulimits: {memlock: -1}` "
        "(docker run --ulimit memlock=-1)")


def check_memory(plan: Plan, found: Findings, host: resources.Host | None = None) -> None:
    """A CPU tier larger than the memory the container may use (cgroup limit, else MemAvailable) would be
    OOM-killed, or push vLLM out: refuse, with the size that fits. `config` warns from the same readings."""
    cpu = plan.tiers.cpu_tier_gib
    if not cpu or not plan.lmcache.mode:
        return
    problem = cpu_tier_problem(host or resources.Host(), float(cpu), str(plan.tiers.cpu_tier_source))
    if problem:
        found.errors.append(problem)


def check_shm(plan: Plan, cpu_gib: float | None, parallel: int, found: Findings, shm: str = "/dev/shm") -> None:
    need, why = 0, []
    if parallel > 1:
        need = SHM_FOR_TP
        why.append(f"{parallel} GPU workers (NCCL, vLLM's shared-memory broadcast)")
    if plan.lmcache.mode == "server" and cpu_gib:
        need = max(need, int(cpu_gib * GIB))
        why.append(f"the LMCache server's {cpu_gib:g} GiB CPU tier (shared with vLLM through /dev/shm, else a "
                   "slower copy)")
    if not need:
        return
    try:
        st = os.statvfs(shm)
        have = st.f_bavail * st.f_frsize
    except OSError:
        have = 0
    if have < need:
        found.warnings.append(
            f"{shm} has {size_text(have)} free, but {' and '.join(why)} want {size_text(need)}. Fix: compose "
            f"`ipc: host` (or `shm_size: {math.ceil(need / GIB) + 1}gb`), docker run --ipc=host")


# -- GPUs -------------------------------------------------------------------------------------------------
# The Dockerfile's test stage (and the supervisor tests) set this: their `vllm` is a stub server that needs no
# GPU. Not a user setting: with it, a real vLLM without a GPU still fails, only later and less clearly.
STUB_NO_GPU = "STUB_NO_GPU"


def gpu_devices(dev: str | Path = "/dev") -> list[str]:
    """NVIDIA GPU device nodes: /dev/nvidia0.. (what the NVIDIA Container Toolkit adds for --gpus), or
    /dev/dxg (WSL2, where the GPU is reached through DirectX and nvidia-smi)."""
    try:
        names = os.listdir(dev)
    except OSError:
        return []
    return sorted(n for n in names if (n.startswith("nvidia") and n[6:].isdigit()) or n == "dxg")


def check_gpu_visible(environ: Mapping[str, str], found: Findings, dev: str | Path = "/dev") -> None:
    """A container started without --gpus has no GPU device and no nvidia-smi (the toolkit mounts both);
    vLLM would then crash with "Failed to infer device type" until supervisord gives up. Say so at once."""
    if environ.get(STUB_NO_GPU) == "1" or gpu_devices(dev):
        return
    if shutil.which("nvidia-smi", path=environ.get("PATH")):
        return  # check_gpus asks it
    found.errors.append("no GPU is visible (no /dev/nvidia* device, no nvidia-smi): vLLM needs an NVIDIA GPU. Run "
                        "the container with `docker run --gpus all ...` (compose: the shipped compose.yaml reserves "
                        "them) on a host with the NVIDIA driver and the NVIDIA Container Toolkit installed")


def check_gpus(parallel: int, environ: Mapping[str, str], found: Findings) -> None:
    exe = shutil.which("nvidia-smi", path=environ.get("PATH"))
    if not exe:
        return  # not a GPU host (CI); vLLM says what it misses
    fix = ("give the container the GPUs: compose `deploy.resources.reservations.devices: [{driver: nvidia, count: "
           "all, capabilities: [gpu]}]` (docker run --gpus all)")
    try:
        result = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        found.errors.append(f"nvidia-smi -L did not answer ({e}); {fix}")
        return
    if result.returncode != 0:
        first = (result.stdout + result.stderr).strip().splitlines()[:1]
        found.errors.append(f"nvidia-smi -L failed (exit {result.returncode}: {first[0] if first else 'no output'}), "
                            f"so no GPU is usable; {fix}")
        return
    count = sum(1 for line in result.stdout.splitlines() if line.startswith("GPU "))
    visible = environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    where = "nvidia-smi -L"
    if visible:
        count = min(count, len([d for d in visible.split(",") if d.strip()]))
        where += f", CUDA_VISIBLE_DEVICES={visible}"
    if count < parallel:
        found.errors.append(f"VLLM_TENSOR_PARALLEL_SIZE x VLLM_PIPELINE_PARALLEL_SIZE = {parallel} needs {parallel} "
                            f"GPUs, but {count} {'is' if count == 1 else 'are'} visible ({where}); {fix}, or lower "
                            "VLLM_TENSOR_PARALLEL_SIZE")


# -- the run directory ------------------------------------------------------------------------------------
def check_run_dir(run: RunDir, found: Findings) -> None:
    if len(str(run.socket)) > MAX_SOCKET_PATH:
        found.errors.append(f"APPLIANCE_RUN_DIR={run.root}: too long for supervisord's unix socket ({run.socket} "
                            f"is {len(str(run.socket))} characters, at most {MAX_SOCKET_PATH}); choose a shorter path")
        return
    try:
        run.root.mkdir(parents=True, exist_ok=True)
        probe = run.root / f".appliance-write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        found.errors.append(f"APPLIANCE_RUN_DIR={run.root}: cannot write there ({e.strerror}); mount a writable "
                            "directory (compose: `tmpfs: [/run/appliance]`) or set APPLIANCE_RUN_DIR")


def check(plan: Plan, environ: Mapping[str, str] | None = None) -> Findings:
    environ = os.environ if environ is None else environ
    found = Findings()
    check_run_dir(RunDir.of(plan), found)
    if plan.lmcache.disk:
        check_disk_tier(plan.lmcache.disk, found)
        note_kv_identity(plan, found)
    cpu = plan.tiers.cpu_tier_gib
    parallel = (int(plan.values.get("VLLM_TENSOR_PARALLEL_SIZE") or 1)
                * int(plan.values.get("VLLM_PIPELINE_PARALLEL_SIZE") or 1))
    check_memory(plan, found)
    check_memlock(cpu, found)
    check_shm(plan, cpu, parallel, found)
    check_gpu_visible({**environ, **plan.vllm.env}, found)
    check_gpus(parallel, {**environ, **plan.vllm.env}, found)
    check_shared_store(plan, found, environ)
    return found


STORE_TIMEOUT_S = 5.0


def check_shared_store(plan: Plan, found: Findings, environ: Mapping[str, str] | None = None) -> None:
    if not plan.lmcache.shared_store:
        return
    ok, why = store.probe(plan, STORE_TIMEOUT_S, environ)
    if ok:
        found.notes.append(f"the shared KV store {plan.lmcache.shared_store.url} answers")
    else:
        found.warnings.append(f"the shared KV store {plan.lmcache.shared_store.url} (LMCACHE_SHARED_URL) does not "
                              f"answer: {why}. Starting without it: every replica computes its own prefixes until "
                              "it answers (the watchdog keeps probing; appliance_shared_store_up shows it)")
