"""One look at the running appliance: processes, what supervision did, the KV tiers and their hit rates.

`status` prints it and the metrics exporter turns it into Prometheus families. Everything is read from the
running pieces, each with a short timeout so that one that hangs cannot stall the answer: supervisord
(XML-RPC: pid, state, uptime), the watchdog's record (state.json), the LMCache server (its /status for the
CPU tier's fill, its /metrics for hits per tier), vLLM's /metrics (GPU prefix-cache hits), and the disk tier's
directory (its size). A piece that does not answer is reported as such, never guessed.
"""
from __future__ import annotations

import os
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import requests

from ..common import state
from ..config import resources
from ..config.plan import Plan
from ..rundir import RunDir
from .healthcheck import api_headers, vllm_base

TIMEOUT_S = 0.4  # per HTTP call; they run in parallel, so `status` stays well under a second
GIB = 1024 ** 3
# LMCache server counters (lmcache.v1.mp_observability, as the OpenTelemetry Prometheus exporter names them).
LMC_REQUESTED = "lmcache_mp_lookup_requested_tokens_total"
LMC_HIT = "lmcache_mp_lookup_hit_tokens_total"
LMC_HIT_L1 = "lmcache_mp_lookup_hit_l1_tokens_total"
LMC_HIT_L2 = "lmcache_mp_lookup_hit_l2_tokens_total"
VLLM_QUERIES = "vllm:prefix_cache_queries_total"
VLLM_HITS = "vllm:prefix_cache_hits_total"


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format, each sample name summed over its label sets (what the ratios need)."""
    from prometheus_client.parser import text_string_to_metric_families
    out: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[s.name] = out.get(s.name, 0.0) + float(s.value)
    except (ValueError, TypeError):  # a malformed exposition: what was read so far is still true
        pass
    return out


def ratio(hit: float | None, total: float | None) -> float | None:
    return None if not total or hit is None else hit / total


def dir_bytes(path: str) -> int | None:
    """Bytes of the files under `path` (None when it does not exist)."""
    if not os.path.isdir(path):
        return None
    return sum(st.st_size for _, st in resources.files_under(path))


def l1_usage(status: dict) -> tuple[int, int] | None:
    """(used, total) bytes of the LMCache server's CPU tier from its /status (0.5.3 and 0.5.6 shapes)."""
    sm = status.get("storage_manager", status)
    pair = sm.get("l1_usage") if isinstance(sm, dict) else None
    if isinstance(pair, (list, tuple)) and len(pair) == 2:
        return int(pair[0]), int(pair[1])
    used = total = 0
    found = False

    def walk(node: object) -> None:
        nonlocal used, total, found
        if isinstance(node, dict):
            if "memory_used_bytes" in node:
                used += int(node["memory_used_bytes"])
                total += int(node.get("memory_total_bytes", 0))
                found = True
                return
            for value in node.values():
                walk(value)
    walk(sm)
    return (used, total) if found else None


@dataclass
class Snapshot:
    taken_at: float
    processes: list[dict] = field(default_factory=list)  # name, state, pid, uptime_s
    supervisor_up: bool = False
    record: dict = field(default_factory=dict)  # state.json
    tiers: list[dict] = field(default_factory=list)  # name, capacity_bytes, used_bytes, hit_rate, path
    gpu_prefix_hit_rate: float | None = None
    lmcache_metrics_text: str | None = None  # the LMCache server's own exposition, re-exposed by the exporter
    lmcache_up: bool | None = None  # None: no LMCache server in this plan
    vllm_up: bool = False

    def to_dict(self) -> dict:
        return {"taken_at": self.taken_at, "supervisor_up": self.supervisor_up, "processes": self.processes,
                "restarts": self.record.get("restarts", {}), "last_restart": self.record.get("last_restart"),
                "probe_failures": self.record.get("probe_failures", {}),
                "disk_tier_pruned": {"files": self.record.get("pruned_files", 0),
                                     "bytes": self.record.get("pruned_bytes", 0)},
                "warnings": self.record.get("warnings", []), "tiers": self.tiers,
                "gpu_prefix_cache_hit_rate": self.gpu_prefix_hit_rate, "vllm_up": self.vllm_up,
                "lmcache_up": self.lmcache_up, "shared_store": self.record.get("shared_store"),
                "lmcache_server": self.record.get("lmcache_server")}


def lmcache_metrics_url(plan: Plan) -> str | None:
    """`lmcache server` serves its metrics on its HTTP port: the command starts the HTTP frontend with
    start_prometheus_http_server=False (lmcache/v1/multiprocess/http_server.py, 0.5.3 and 0.5.6), so the
    --prometheus-port exporter never listens; found on the H200 with 0.5.6 (connection refused on 9090,
    "standalone metrics HTTP server disabled" in its log)."""
    url = plan.lmcache.health_url
    return url.rsplit("/", 1)[0] + "/metrics" if plan.lmcache.mode == "server" and url else None


def lmcache_status_url(plan: Plan) -> str | None:
    url = plan.lmcache.health_url
    return url.rsplit("/", 1)[0] + "/status" if url else None


def take(plan: Plan, run: RunDir) -> Snapshot:
    snap = Snapshot(taken_at=time.time(), record=state.load(run.state))
    http = requests.Session()

    def get(url: str | None, headers: Mapping[str, str] | None = None) -> requests.Response | None:
        if not url:
            return None
        try:
            r = http.get(url, timeout=TIMEOUT_S, headers=headers)
            return r if r.status_code == 200 else None
        except requests.RequestException:
            return None

    base = vllm_base(plan)
    with ThreadPoolExecutor(max_workers=4) as pool:
        vllm_metrics = pool.submit(get, f"{base}/metrics" if plan.vllm.argv else None, api_headers(plan))
        lmc_metrics = pool.submit(get, lmcache_metrics_url(plan))
        lmc_status = pool.submit(get, lmcache_status_url(plan))
        disk_used = pool.submit(dir_bytes, plan.lmcache.disk.path) if plan.lmcache.disk else None
        processes = pool.submit(_processes, run)
        snap.supervisor_up, snap.processes = processes.result()
        vm = vllm_metrics.result()
        lm = lmc_metrics.result()
        ls = lmc_status.result()
        du = disk_used.result() if disk_used else None

    snap.vllm_up = vm is not None
    if vm is not None:
        m = parse_metrics(vm.text)
        snap.gpu_prefix_hit_rate = ratio(m.get(VLLM_HITS), m.get(VLLM_QUERIES))
    lmc = parse_metrics(lm.text) if lm is not None else {}
    if plan.lmcache.mode == "server":
        snap.lmcache_up = lm is not None or ls is not None
        snap.lmcache_metrics_text = lm.text if lm is not None else None
    cpu_gib = plan.tiers.cpu_tier_gib
    if plan.lmcache.mode and cpu_gib:
        usage = None
        if ls is not None:
            try:
                usage = l1_usage(ls.json())
            except ValueError:
                usage = None
        snap.tiers.append({"name": "cpu", "capacity_bytes": int(float(cpu_gib) * GIB),
                           "used_bytes": usage[0] if usage else None,
                           "hit_rate": ratio(lmc.get(LMC_HIT_L1), lmc.get(LMC_REQUESTED)),
                           "path": None})
    if plan.lmcache.disk:
        snap.tiers.append({"name": "disk", "capacity_bytes": int(plan.lmcache.disk.max_size_gib * GIB),
                           "used_bytes": du, "hit_rate": ratio(lmc.get(LMC_HIT_L2), lmc.get(LMC_REQUESTED)),
                           "path": plan.lmcache.disk.path})
    return snap


def _processes(run: RunDir) -> tuple[bool, list[dict]]:
    try:
        rpc = run.rpc()
        infos = rpc.supervisor.getAllProcessInfo()
    except Exception:  # no socket, no password file, supervisord stopping: reported as "not running"
        return False, []
    now = time.time()
    out = []
    for info in infos:
        running = info["statename"] in ("RUNNING", "STARTING") and info["pid"]
        out.append({"name": info["name"], "state": info["statename"], "pid": info["pid"] or None,
                    "uptime_s": round(now - info["start"], 1) if running and info["start"] else None})
    return True, out
