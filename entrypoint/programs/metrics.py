"""The `metrics` program: one Prometheus scrape target for the LMCache server and the appliance itself.

    python -m entrypoint.programs.metrics PLAN_FILE

Listens on APPLIANCE_METRICS_PORT (all interfaces: it is the port to publish) and answers GET /metrics with
- the LMCache server's own families, as its exporter (--prometheus-port, loopback inside the container) wrote
  them: hits per tier, L1/L2 stores, loads and their throughput, allocation failures, ...;
- the appliance's `appliance_*` families: programs up and their uptime, restarts by program and reason,
  watchdog probe failures, disk-tier prune counts, configured and used tier bytes, preflight warnings,
  whether the shared KV store answers (appliance_shared_store_up), and whether the gap program answers vLLM's
  port (appliance_gap_holding) with how many 503s (appliance_gap_answers).
vLLM's own families stay on the API port (`/metrics`, next to the API), as vLLM serves them.
Labels are program names, reasons, tier names and versions: never a value from the environment that could
be a secret, and nothing unbounded.
"""
from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from ..common import applog, state
from ..common.webserver import Handler, Limits, Refused, Server, read_body, run_until_signalled
from ..config.plan import Plan
from ..inspectors import snapshot
from ..rundir import RunDir, read_plan
from .front import FRONT_STATE
from .gap import GAP_STATE

NAME = "metrics"
BIND_RETRY_S = 10.0


class ApplianceCollector:
    """Called at each scrape: a fresh snapshot, turned into metric families."""

    def __init__(self, plan: Plan, run: RunDir, versions: dict[str, str]):
        self.plan, self.run, self.versions = plan, run, versions

    def collect(self) -> Iterator[Metric]:
        snap = snapshot.take(self.plan, self.run)
        yield from self.appliance_families(snap)
        if snap.lmcache_metrics_text:
            yield from lmcache_families(snap.lmcache_metrics_text)

    def appliance_families(self, snap: snapshot.Snapshot) -> Iterator[Metric]:
        p = self.plan
        info = InfoMetricFamily("appliance", "The appliance: versions, model and KV offloading mode.")
        info.add_metric([], {"vllm_version": self.versions.get("vllm", ""),
                             "lmcache_version": self.versions.get("lmcache", ""),
                             "served_model_name": p.served_model_name,
                             "kv_offloading": p.lmcache.mode or "off"})
        yield info
        up = GaugeMetricFamily("appliance_program_up", "1 while a supervised program runs.", labels=["program"])
        uptime = GaugeMetricFamily("appliance_program_uptime_seconds", "Seconds since the program last started.",
                                   labels=["program"])
        for proc in snap.processes:
            up.add_metric([proc["name"]], 1.0 if proc["state"] == "RUNNING" else 0.0)
            if proc["uptime_s"] is not None:
                uptime.add_metric([proc["name"]], proc["uptime_s"])
        yield up
        yield uptime
        yield GaugeMetricFamily("appliance_supervisor_up", "1 while supervisord answers.",
                                value=1.0 if snap.supervisor_up else 0.0)
        restarts = CounterMetricFamily("appliance_restarts", "Restarts by supervision, by program and reason "
                                       "(exited: it exited or failed to start; unhealthy: the watchdog killed it "
                                       "after failed probes; dependency: restarted with the LMCache server).",
                                       labels=["program", "reason"])
        for program, per in sorted(snap.record.get("restarts", {}).items()):
            for reason in state.REASONS:
                restarts.add_metric([program, reason], float(per.get(reason, 0)))
        yield restarts
        probes = CounterMetricFamily("appliance_probe_failures", "Failed watchdog probes, by program.",
                                     labels=["program"])
        for program, n in sorted(snap.record.get("probe_failures", {}).items()):
            probes.add_metric([program], float(n))
        yield probes
        yield CounterMetricFamily("appliance_disk_tier_pruned_files", "Files the watchdog removed to keep the "
                                  "disk tier under its cap.", value=float(snap.record.get("pruned_files", 0)))
        yield CounterMetricFamily("appliance_disk_tier_pruned_bytes", "Bytes the watchdog removed to keep the "
                                  "disk tier under its cap.", value=float(snap.record.get("pruned_bytes", 0)))
        yield GaugeMetricFamily("appliance_warnings", "Warnings at the last start (configuration and preflight).",
                                value=float(len(snap.record.get("warnings", []))))
        cap = GaugeMetricFamily("appliance_tier_capacity_bytes", "Configured size of each KV tier.", labels=["tier"])
        used = GaugeMetricFamily("appliance_tier_used_bytes", "Bytes held by each KV tier now.", labels=["tier"])
        for tier in snap.tiers:
            cap.add_metric([tier["name"]], float(tier["capacity_bytes"]))
            if tier["used_bytes"] is not None:
                used.add_metric([tier["name"]], float(tier["used_bytes"]))
        yield cap
        yield used
        store = snap.record.get("shared_store")
        if p.lmcache.shared_store and store:  # known after the watchdog's first round
            yield GaugeMetricFamily("appliance_shared_store_up", "1 when the shared KV store (LMCACHE_SHARED_URL) "
                                    "answered the watchdog's last PING; 0: serving without it.",
                                    value=1.0 if store.get("up") else 0.0)
            yield CounterMetricFamily("appliance_shared_store_changes", "Times the shared KV store went down or "
                                      "came back since the start.", value=float(store.get("changes", 0)))
        server = snap.record.get("lmcache_server")
        if p.lmcache.server and server:  # a replica (LMCACHE_SERVER), after the watchdog's first round
            yield GaugeMetricFamily("appliance_lmcache_server_up", "1 when the LMCache server this replica uses "
                                    "(LMCACHE_SERVER) answered the watchdog's last health check.",
                                    value=1.0 if server.get("up") else 0.0)
        gap = state_file(self.run, GAP_STATE)
        if p.appliance.gap_answer and gap is not None:
            yield GaugeMetricFamily("appliance_gap_holding", "1 while the gap program answers vLLM's port with 503 "
                                    "(vLLM does not listen: starting, restarting, stopping).",
                                    value=1.0 if gap.get("holding") else 0.0)
            yield CounterMetricFamily("appliance_gap_answers", "Requests answered with 503 + Retry-After while vLLM "
                                      "did not listen (since the gap program started).",
                                      value=float(gap.get("answered", 0)))
        front = state_file(self.run, FRONT_STATE)
        if p.appliance.front_proxy and front is not None:
            yield from front_families(front)
        if snap.lmcache_up is not None:
            yield GaugeMetricFamily("appliance_lmcache_metrics_up", "1 when the LMCache server's metrics were read "
                                    "at this scrape.", value=1.0 if snap.lmcache_metrics_text else 0.0)


def state_file(run: RunDir, name: str) -> dict | None:
    """A program's state file in the run directory (gap.json, front.json), or None before it wrote one."""
    try:
        data = json.loads((run.root / name).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def front_families(state: Mapping[str, object]) -> Iterator[Metric]:
    """The front proxy's counters (front.py writes them about every second)."""
    def number(key: str) -> float:
        value = state.get(key, 0)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0

    yield GaugeMetricFamily("appliance_front_vllm_ready", "1 while the front proxy sees vLLM serve; 0: it holds new "
                            "requests until vLLM is back.", value=1.0 if state.get("ready") else 0.0)
    yield GaugeMetricFamily("appliance_front_held", "Requests the front proxy holds now, waiting for vLLM.",
                            value=number("held"))
    yield GaugeMetricFamily("appliance_front_queue_age_seconds", "How long the oldest held request has waited.",
                            value=number("queue_age_seconds"))
    for key, name, text in (
            ("held_total", "appliance_front_held_requests", "Requests that waited for vLLM in the front proxy."),
            ("resent", "appliance_front_resent", "Requests sent again after vLLM died under them."),
            ("resumed", "appliance_front_resumed", "Streams continued on the restarted vLLM after a crash."),
            ("dropped", "appliance_front_dropped", "Requests answered 503 past the hold bounds, and streams that "
                                                   "could not be continued (ended with an error event).")):
        yield CounterMetricFamily(name, text, value=number(key))


def lmcache_families(text: str) -> Iterator[Metric]:
    """The LMCache server's families, passed on as they are (a malformed tail is dropped, not guessed)."""
    try:
        yield from text_string_to_metric_families(text)
    except ValueError:
        return


def versions() -> dict[str, str]:
    import importlib.metadata as md
    out = {}
    for dist in ("vllm", "lmcache"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = ""
    return out


# Scrapers are few and ask for nothing but GET /metrics: small limits (webserver.py) so that no client can hold
# the endpoint (a connection that sends nothing is closed after idle_timeout, and never holds up a scrape).
LIMITS = Limits(max_connections=64, idle_timeout=15.0, read_timeout=10.0, max_body=64 * 1024)


def make_handler(registry: CollectorRegistry) -> Handler:
    """GET (or HEAD) /metrics: prometheus_client's exposition of `registry`, in the format the scraper accepts
    (Prometheus text or OpenMetrics). The collectors do blocking I/O (the LMCache server's exporter, supervisord):
    in a thread, so that the server keeps answering meanwhile."""
    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if request.path != "/metrics":
            raise Refused(404, "not found: the metrics are at /metrics")
        if request.method not in ("GET", "HEAD"):
            raise Refused(405, "method not allowed: GET /metrics")
        await read_body(request)  # a body is never needed, but it is read within the limits
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        output = await asyncio.get_running_loop().run_in_executor(None, encoder, registry)
        return web.Response(body=output, headers={"Content-Type": content_type})
    return handle


def log(message: str, level: str = "info", event: str = "message", **fields: Any) -> None:
    applog.emit(NAME, message, level=level, event=event, stream=sys.stdout, text_prefix="", **fields)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        print("usage: python -m entrypoint.programs.metrics PLAN_FILE", file=sys.stderr)
        return 2
    plan = read_plan(argv[0])
    run = RunDir(Path(argv[0]).parent)
    port = int(plan.appliance.metrics_port)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ApplianceCollector(plan, run, versions()))
    while True:  # a port taken by something else: say so and wait for it, never a restart loop
        try:
            server = Server(make_handler(registry), "0.0.0.0", port, LIMITS, log, error_type="metrics_error")
            break
        except OSError as e:
            log(f"cannot listen on :{port} ({e.strerror}); trying again every {BIND_RETRY_S:g} s "
                "(APPLIANCE_METRICS_PORT)", level="error", event="bind_failed", port=port)
            time.sleep(BIND_RETRY_S)
    log(f"serving the LMCache server's and the appliance's metrics on :{port}/metrics", event="listening",
        port=port)
    started = time.monotonic()
    run_until_signalled(server)  # SIGTERM (supervisord's stop) or SIGINT: a clean exit 0
    server.server_close()
    log(f"stopped after {time.monotonic() - started:.0f} s", event="stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
