"""The KV offloading step of a plan: which tiers exist, how big they are, and how vLLM reaches them.

`lmcache` in server mode (the default) starts a supervised LMCache server and points vLLM's LMCacheMPConnector
at it; in-process mode renders LMCache's config file for LMCacheConnectorV1; `native` uses vLLM's own CPU
offload. Each function takes the plan builder (build.py) and records problems on it.
"""
from __future__ import annotations

import hashlib
import json
import re
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from .flags import number_text
from .plan import DiskTier
from .settings import DEFAULT_DISK_TIER_PATH, DiskChoice

if TYPE_CHECKING:
    from .build import Builder

LMCACHE_CONNECTOR_MP = "LMCacheMPConnector"
LMCACHE_CONNECTOR_IN_PROCESS = "LMCacheConnectorV1"
DEFAULT_CPU_TIER_GIB = 5.0  # LMCache's own default max_local_cpu_size
LMCACHE_REAP_S = 30  # LMCache server: seconds of silence before a dead vLLM's KV registration is dropped
LMCACHE_HEARTBEAT_S = 5  # vLLM -> LMCache server pings; LMCache wants the reap timeout >= 3x this
LMCACHE_KEYS_WITH_SERVER_EQUIVALENT = {"chunk_size", "local_cpu", "max_local_cpu_size", "local_disk",
                                       "max_local_disk_size"}


def model_slug(model: str) -> str:
    """A directory-safe name for a model id or path (a path gets a hash so that two `model` dirs differ)."""
    if model.startswith(("/", ".")):
        digest = hashlib.sha256(model.encode()).hexdigest()[:8]
        base = Path(model.rstrip("/")).name or "model"
        return re.sub(r"[^A-Za-z0-9._-]", "_", f"{base}-{digest}")
    return re.sub(r"[^A-Za-z0-9._-]", "_", model.replace("/", "--"))


def disk_namespace(model: str, revision: str | None, dtype: str, chunk_size: int, tp: int,
                   lmcache_version: str) -> str:
    """Everything that decides whether stored KV can be reused goes into the directory name, so that a
    change of model, revision, dtype, chunk size, TP size or LMCache version never reads another's cache."""
    rev = re.sub(r"[^A-Za-z0-9._-]", "_", revision or "default")
    return f"{model_slug(model)}__rev-{rev}__dtype-{dtype}__chunk-{chunk_size}__tp-{tp}__lmcache-{lmcache_version}"


def kv_offloading(b: Builder) -> None:
    v, p = b.values, b.plan
    backend = v.get("VLLM_KV_OFFLOADING_BACKEND")
    backend = None if backend == "none" else backend
    lmcache_names = sorted(n for n in b.user_given if n.startswith("LMCACHE_"))
    if backend != "lmcache" and lmcache_names:
        b.error(f"{', '.join(lmcache_names)}: LMCache settings take effect only with "
                   f"VLLM_KV_OFFLOADING_BACKEND=lmcache (it is {backend or 'unset'}); set it, or remove them")
    if backend is None:
        if "VLLM_KV_OFFLOADING_SIZE" in b.user_given:
            b.error("VLLM_KV_OFFLOADING_SIZE is set but VLLM_KV_OFFLOADING_BACKEND is not: set "
                       "VLLM_KV_OFFLOADING_BACKEND=lmcache (or native)")
        return
    cpu = b.cpu = cpu_tier_gib(b)
    if backend == "native":
        p.lmcache_mode = "native"
        p.vllm_argv += ["--kv-offloading-backend", "native", "--kv-offloading-size", number_text(cpu)]
        return
    mode = v["LMCACHE_MODE"]
    p.lmcache_mode = mode
    chunk = int(v["LMCACHE_CHUNK_SIZE"])
    tp = int(v["VLLM_TENSOR_PARALLEL_SIZE"])
    disk_choice: DiskChoice = v["LMCACHE_LOCAL_DISK"]
    if disk_choice.enabled:
        base = disk_choice.path or DEFAULT_DISK_TIER_PATH
        revision = b.generic_flags.get("VLLM_REVISION", (None, None))[1]
        ns = disk_namespace(p.model, revision, str(v.get("VLLM_DTYPE", "auto")), chunk, tp,
                            b.schema.lmcache_version)
        p.disk = DiskTier(base=base, path=f"{base.rstrip('/')}/{ns}",
                          max_size_gib=float(v["LMCACHE_MAX_LOCAL_DISK_SIZE"]))
    if mode == "server":
        lmcache_server(b, cpu, chunk)
    else:
        lmcache_in_process(b, cpu, chunk, tp)
    p.lmcache_env = dict(b.lmcache_env)


def cpu_tier_gib(b: Builder) -> float:
    v = b.values
    kv, lmc = v.get("VLLM_KV_OFFLOADING_SIZE"), v.get("LMCACHE_MAX_LOCAL_CPU_SIZE")
    kv_user, lmc_user = "VLLM_KV_OFFLOADING_SIZE" in b.user_given, "LMCACHE_MAX_LOCAL_CPU_SIZE" in b.user_given
    if kv_user and lmc_user and abs(kv - lmc) > 1e-9:
        b.error(f"VLLM_KV_OFFLOADING_SIZE={kv:g} and LMCACHE_MAX_LOCAL_CPU_SIZE={lmc:g} describe the same "
                   "CPU tier but differ: set only one of them (or both to the same value)")
    for value, given in ((kv, kv_user), (lmc, lmc_user), (kv, True), (lmc, True)):
        if value is not None and given:
            return float(value)
    return DEFAULT_CPU_TIER_GIB


def lmcache_server(b: Builder, cpu: float, chunk: int) -> None:
    v, p = b.values, b.plan
    if v["LMCACHE_LOCAL_CPU"] is False:
        b.error("LMCACHE_LOCAL_CPU=false: the LMCache server always keeps a CPU tier; for a disk-only "
                   "cache set LMCACHE_MODE=in-process")
    for key in sorted(b.lmcache_keys):
        if key not in LMCACHE_KEYS_WITH_SERVER_EQUIVALENT:
            b.error(f"LMCACHE_{key.upper()}: applies in in-process mode only (LMCACHE_MODE=in-process); "
                       "the LMCache server takes extra options from LMCACHE_SERVER_EXTRA_ARGS")
    port, http_port = int(v["APPLIANCE_LMCACHE_PORT"]), int(v["APPLIANCE_LMCACHE_HTTP_PORT"])
    metrics_port = int(v["APPLIANCE_LMCACHE_METRICS_PORT"])
    argv = [*shlex.split(str(v["APPLIANCE_LMCACHE_COMMAND"])), "server",
            "--host", "127.0.0.1", "--port", str(port),
            "--http-host", "127.0.0.1", "--http-port", str(http_port),
            "--chunk-size", str(chunk), "--l1-size-gb", number_text(cpu),
            "--eviction-policy", str(v["LMCACHE_EVICTION_POLICY"]),
            # A vLLM that dies keeps its GPU KV cache mapped in the server until the server reaps it:
            # 120 s by default, during which a restarted vLLM finds too little free GPU memory and fails.
            # 30 s is LMCache's floor; vLLM pings every LMCACHE_HEARTBEAT_S, well under a third of it.
            "--worker-reap-timeout-seconds", str(LMCACHE_REAP_S),
            # Its exporter, read (and re-exposed with the appliance's own) by the `metrics` program.
            "--prometheus-port", str(metrics_port)]
    if p.disk:
        # fs_native: LMCache's C++ file-system tier. Unlike the `fs` adapter it declares a capacity,
        # so LMCache's own L2 eviction keeps it under LMCACHE_MAX_LOCAL_DISK_SIZE.
        adapter = {"type": "fs_native", "base_path": p.disk.path, "max_capacity_gb": p.disk.max_size_gib,
                   "eviction": {"eviction_policy": "LRU"}}
        argv += ["--l2-adapter", json.dumps(adapter, separators=(",", ":"))]
    argv += shlex.split(str(v.get("LMCACHE_SERVER_EXTRA_ARGS", "")))
    p.lmcache_argv = argv
    p.lmcache_health_url = f"http://127.0.0.1:{http_port}/healthcheck"
    transfer = {"kv_connector": LMCACHE_CONNECTOR_MP, "kv_role": "kv_both",
                "kv_connector_extra_config": {"lmcache.mp.host": "tcp://127.0.0.1", "lmcache.mp.port": port,
                                              "lmcache.mp.heartbeat_interval": LMCACHE_HEARTBEAT_S}}
    p.vllm_argv += ["--kv-transfer-config", json.dumps(transfer, separators=(",", ":"))]
    ports = {"VLLM_PORT": p.api_port, "APPLIANCE_LMCACHE_PORT": port, "APPLIANCE_LMCACHE_HTTP_PORT": http_port,
             "APPLIANCE_LMCACHE_METRICS_PORT": metrics_port, "APPLIANCE_METRICS_PORT": int(v["APPLIANCE_METRICS_PORT"])}
    for number in sorted(set(ports.values())):
        same = [name for name, n in ports.items() if n == number]
        if len(same) > 1:
            b.error(" and ".join(f"{name}={number}" for name in same) + ": must differ (one port, one listener)")


def lmcache_in_process(b: Builder, cpu: float, chunk: int, tp: int) -> None:
    v, p = b.values, b.plan
    if "LMCACHE_SERVER_EXTRA_ARGS" in v:
        b.error("LMCACHE_SERVER_EXTRA_ARGS: applies in server mode only (LMCACHE_MODE=server)")
    if "LMCACHE_CONFIG_FILE" in b.lmcache_env:
        b.error("LMCACHE_CONFIG_FILE: the appliance renders LMCache's config file itself; set its keys "
                   "as LMCACHE_<KEY> variables instead (docs/ENVIRONMENT.md)")
    # Sizes are for all GPUs together; in-process, each of the TP workers holds its own share.
    config: dict[str, object] = {
        "chunk_size": chunk,
        "local_cpu": bool(v["LMCACHE_LOCAL_CPU"]),
        "max_local_cpu_size": round(cpu / tp, 3),
        # Python's hash differs per process; vLLM's sha256_cbor makes chunk keys stable.
        "pre_caching_hash_algorithm": "sha256_cbor",
    }
    if p.disk:
        config["local_disk"] = f"file://{p.disk.path}/"
        config["max_local_disk_size"] = round(p.disk.max_size_gib / tp, 3)
        p.warnings.append("LMCACHE_MODE=in-process keeps its disk-tier index in memory: after a restart the "
                          "files on disk are not reused. LMCACHE_MODE=server reuses them.")
    config.update(b.lmcache_keys)
    run_dir = str(v["APPLIANCE_RUN_DIR"])
    p.lmcache_config = config
    p.lmcache_config_file = f"{run_dir.rstrip('/')}/lmcache.yaml"
    p.vllm_env["LMCACHE_CONFIG_FILE"] = p.lmcache_config_file
    p.vllm_env.setdefault("PYTHONHASHSEED", b.environ.get("PYTHONHASHSEED", "0"))
    transfer = {"kv_connector": LMCACHE_CONNECTOR_IN_PROCESS, "kv_role": "kv_both"}
    p.vllm_argv += ["--kv-transfer-config", json.dumps(transfer, separators=(",", ":"))]
