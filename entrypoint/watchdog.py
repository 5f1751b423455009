"""The `watchdog` eventlistener: restarts vLLM (and the LMCache server) when they stop doing their work.

supervisord restarts a program that exits; the watchdog handles the one that does not exit but is stuck.
vLLM's /health keeps answering 200 while its engine loop hangs, so a probe asks for proof of progress:
- idle (no request running or waiting, per /metrics): a 1-token completion must succeed;
- busy: vLLM's token counters in /metrics must have grown since the previous probe. A completion would
  only queue behind the running requests, so a busy engine that makes progress is never restarted.
Policy (APPLIANCE_* knobs): probe every HEALTH_INTERVAL s, each request with HEALTH_TIMEOUT; a program is not
judged before it first passes a probe or STARTUP_TIMEOUT s after it entered STARTING (model load);
HEALTH_FAILURES failed probes in a row restart it. An unhealthy LMCache server is restarted, then vLLM.
Where there is a disk tier, each round also prunes it to its cap (preflight.prune).

Probes run on the watchdog's own monotonic clock (it waits for events with a timeout), so periods under
supervisord's 5 s tick work; TICK_5 and PROCESS_STATE events wake it, and the latter track (re)starts.
"""
from __future__ import annotations

import sys
import time
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path

import requests
from supervisor.xmlrpc import Faults

from . import preflight
from .events import Listener, say, split_payload, supervisor_rpc
from .healthcheck import api_base, api_headers
from .plan import Plan
from .render import RunDir, read_plan

NAME = "watchdog"
BUSY_GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting")
# Counters that grow while the engine works: tokens in and out, and tokens per engine step (this one grows
# during a long chunked prefill too, before the request's first output token).
PROGRESS_COUNTERS = ("vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:iteration_tokens_total_sum",
                     "vllm:iteration_tokens_total_count")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format, each metric summed over its label sets."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        try:
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        except (IndexError, ValueError):
            continue
    return out


@dataclass
class Target:
    name: str
    started_at: float | None = None  # monotonic time it entered STARTING; None while not running
    ready: bool = False  # has passed a probe since it started
    failures: int = 0

    def start(self, now: float) -> None:
        self.started_at, self.ready, self.failures = now, False, 0

    def stop(self) -> None:
        self.started_at, self.ready, self.failures = None, False, 0


class Watchdog:
    def __init__(self, plan: Plan, rpc, clock=time.monotonic, session: requests.Session | None = None):
        a = plan.appliance
        self.grace = float(a["APPLIANCE_STARTUP_TIMEOUT"])
        self.interval = float(a["APPLIANCE_HEALTH_INTERVAL"])
        self.timeout = float(a["APPLIANCE_HEALTH_TIMEOUT"])
        self.limit = int(a["APPLIANCE_HEALTH_FAILURES"])
        self.plan, self.rpc, self.clock = plan, rpc, clock
        self.http = session or requests.Session()
        self.base, self.headers = api_base(plan), api_headers()
        self.vllm = Target("vllm")
        self.lmcache = Target("lmcache") if plan.lmcache_health_url else None
        self.last_progress: float | None = None  # counters at the previous probe
        self.last_probe_at = 0.0
        self.next_probe = clock()

    def targets(self) -> list[Target]:
        return [t for t in (self.lmcache, self.vllm) if t]

    def target(self, name: str) -> Target | None:
        return next((t for t in self.targets() if t.name == name), None)

    # -- what supervisord says ----------------------------------------------------------------------------
    def sync(self) -> None:
        """At our own start: which programs already run, and since when."""
        now, wall = self.clock(), time.time()
        for info in self.rpc.supervisor.getAllProcessInfo():
            t = self.target(info["name"])
            if t and info["statename"] in ("STARTING", "RUNNING"):
                t.start(now - max(0.0, wall - info["start"]))

    def on_event(self, headers: dict[str, str], payload: bytes) -> None:
        event = headers.get("eventname", "")
        if not event.startswith("PROCESS_STATE_"):
            return  # TICK_5: only a wake-up
        meta, _ = split_payload(payload)
        t = self.target(meta.get("processname", ""))
        state = event[len("PROCESS_STATE_"):]
        if t is None or state == "RUNNING":
            return
        if state == "STARTING":
            t.start(self.clock())
            if t is self.vllm:
                self.last_progress = None
        else:  # STOPPING, STOPPED, EXITED, BACKOFF, FATAL: supervisord's business
            t.stop()

    # -- probes ---------------------------------------------------------------------------------------------
    def _get(self, url: str, **kw) -> requests.Response:
        return self.http.get(url, timeout=self.timeout, **kw)

    def _failure(self, url: str, e: requests.RequestException) -> str:
        if isinstance(e, requests.Timeout):
            return f"no answer from {url} within {self.timeout:g} s (APPLIANCE_HEALTH_TIMEOUT)"
        if isinstance(e, requests.ConnectionError):
            return f"cannot connect to {url}"
        return f"{url}: {type(e).__name__}: {e}"

    def sample(self) -> tuple[float | None, float]:
        """(requests running + waiting, progress counters), or (None, 0) without usable metrics."""
        r = self._get(f"{self.base}/metrics")
        if r.status_code != 200:
            return None, 0.0
        m = parse_metrics(r.text)
        if not any(g in m for g in BUSY_GAUGES):
            return None, 0.0
        return sum(m.get(g, 0.0) for g in BUSY_GAUGES), sum(m.get(c, 0.0) for c in PROGRESS_COUNTERS)

    def probe_vllm(self) -> tuple[bool, str]:
        url = f"{self.base}/health"
        now = self.clock()
        since, self.last_probe_at = now - self.last_probe_at, now
        try:
            r = self._get(url)
            if r.status_code != 200:
                return False, f"GET /health answered {r.status_code}"
            url = f"{self.base}/metrics"
            busy, progress = self.sample()
            if busy:
                previous, self.last_progress = self.last_progress, progress
                if previous is None or progress != previous:  # first sample, growth, or counters reset
                    return True, ""
                return False, (f"{busy:g} request(s) in flight but vLLM's token counters have not moved in "
                               f"{since:.1f} s (engine stuck)")
            url = f"{self.base}/v1/completions"
            r = self.http.post(url, json={"model": self.plan.served_model_name, "prompt": "ping", "max_tokens": 1},
                               headers=self.headers, timeout=self.timeout)
            if r.status_code != 200:
                return False, f"idle, and a 1-token completion answered {r.status_code}: {r.text[:200]}"
            self.last_progress = self.sample()[1] if busy is not None else None  # our token is no one's progress
            return True, ""
        except requests.RequestException as e:
            return False, self._failure(url, e)

    def probe_lmcache(self) -> tuple[bool, str]:
        url = self.plan.lmcache_health_url
        try:
            r = self._get(url)
        except requests.RequestException as e:
            return False, self._failure(url, e)
        return (True, "") if r.status_code == 200 else (False, f"{url} answered {r.status_code}")

    def judge(self, t: Target, ok: bool, why: str, now: float) -> bool:
        """Record one probe's result; True when it is time to restart."""
        if ok:
            if not t.ready:
                say(NAME, f"{t.name} is ready, {now - t.started_at:.1f} s after it started")
            elif t.failures:
                say(NAME, f"{t.name} passes its probe again after {t.failures} failed probe(s)")
            t.ready, t.failures = True, 0
            return False
        if not t.ready and now - t.started_at < self.grace:
            return False  # still loading: within the start grace a failed probe does not count
        t.failures += 1
        late = "" if t.ready else f", not ready {self.grace:g} s after it started (APPLIANCE_STARTUP_TIMEOUT)"
        say(NAME, f"{t.name} probe failed ({t.failures}/{self.limit}){late}: {why}")
        return t.failures >= self.limit

    def restart(self, names: list[str]) -> None:
        say(NAME, f"{self.limit} failed probes in a row: restarting {' then '.join(names)}")
        for name in reversed(names):
            try:
                self.rpc.supervisor.stopProcess(name, True)
            except xmlrpc.client.Fault as e:
                if e.faultCode != Faults.NOT_RUNNING:
                    raise
        for name in names:
            try:
                self.rpc.supervisor.startProcess(name, False)
            except xmlrpc.client.Fault as e:
                if e.faultCode != Faults.ALREADY_STARTED:
                    raise
        now = self.clock()
        for name in names:
            self.target(name).start(now)  # the STARTING events may come later, or not at all if missed
        self.last_progress = None

    def round(self) -> None:
        now = self.clock()
        self.next_probe = max(now, self.next_probe + self.interval)
        if self.rpc.supervisor.getState()["statename"] != "RUNNING":
            return  # shutting down: nothing to judge
        if self.lmcache and self.lmcache.started_at is not None:
            ok, why = self.probe_lmcache()
            if self.judge(self.lmcache, ok, why, self.clock()):
                self.restart(["lmcache", "vllm"])
                return
        if self.vllm.started_at is not None:
            ok, why = self.probe_vllm()
            if self.judge(self.vllm, ok, why, self.clock()):
                self.restart(["vllm"])
        disk = self.plan.disk
        if disk:
            removed, freed, held = preflight.prune(disk.path, disk.max_size_gib * preflight.GIB)
            if removed:
                say(NAME, preflight.prune_note(disk, removed, freed, held))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    run = RunDir(Path(argv[0]).parent)
    dog = Watchdog(read_plan(argv[0]), supervisor_rpc(str(run.socket)))
    dog.sync()
    listener = Listener()
    while True:
        event = listener.next(timeout=max(0.0, dog.next_probe - dog.clock()))
        if event:
            dog.on_event(*event)
        if dog.clock() >= dog.next_probe:
            dog.round()


if __name__ == "__main__":
    sys.exit(main())
