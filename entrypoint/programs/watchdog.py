"""The `watchdog` eventlistener: restarts vLLM (and the LMCache server) when they stop doing their work.

supervisord restarts a program that exits; the watchdog handles the one that does not exit but is stuck.
vLLM's /health keeps answering 200 while its engine loop hangs, so a probe asks for proof of progress:
- idle (no request running or waiting, per /metrics): a 1-token completion must succeed;
- busy: vLLM's token counters in /metrics must have grown since the previous probe. A completion would
  only queue behind the running requests, so a busy engine that makes progress is never restarted.
Policy (APPLIANCE_* knobs): probe every HEALTH_INTERVAL s, each request with HEALTH_TIMEOUT; a program is not
judged before it first passes a probe or STARTUP_TIMEOUT s after the server process started (model load;
the launcher's waits before it come first and are bounded on their own);
HEALTH_FAILURES failed probes in a row restart it: it is killed (stuck, it could not drain anyway) and
started again. An unhealthy LMCache server is killed and vLLM stopped, then both started in order.
Where there is a disk tier, a thread of its own prunes it to its cap (disk_prune.prune) every
DISK_PRUNE_INTERVAL s, whatever the probes wait for: a backstop to LMCache's own L2 eviction, which does not
see the files an earlier LMCache server wrote (kv_tiers.py). Where there is a shared
KV store (LMCACHE_SHARED_URL), each round pings it and records the answer (status, appliance_shared_store_up);
it is never a reason to restart anything: LMCache serves without it and reconnects.
A replica's LMCache server in another container (LMCACHE_SERVER) is a dependency too: each round asks its
/healthcheck and records the answer (status, appliance_lmcache_server_up); while it does not answer, vLLM's
probes are not judged (a vLLM restarted for it would only wait for it in its launcher). A kv-server
(APPLIANCE_ROLE) has no vLLM: only its LMCache server is judged.

Probes run on the watchdog's own monotonic clock (it waits for events with a timeout), so periods under
supervisord's 5 s tick work; TICK_5 and PROCESS_STATE events wake it, and the latter track (re)starts.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from supervisor.xmlrpc import Faults

from ..common import disk_prune, state, store
from ..common.events import Listener, say, split_payload
from ..config.plan import Plan
from ..inspectors.healthcheck import api_headers, vllm_base
from ..inspectors.snapshot import parse_metrics  # prometheus_client's parser; sample names summed over label sets
from ..rundir import RunDir, read_plan
from .gap import HEADER as GAP_HEADER

NAME = "watchdog"
STORE_TIMEOUT_S = 5.0  # a store probe must not hold up the probes of vLLM and LMCache
HARD_OVER = 1.05  # the disk tier may exceed its cap by at most 5 %
DEFAULT_PRUNE_S = 5.0  # APPLIANCE_DISK_PRUNE_INTERVAL of a plan written before the setting existed
MIN_PRUNE_S = 0.5  # the shortest wait between prunes: each one stats every file of the tier
# Where a prune takes the tier once the watchdog is its only evictor (LMCache's eviction stalled): lower than
# disk_prune.PRUNE_TO, because nothing else frees space until the next prune. Measured on an H200 under load
# (docs/benchmarks/h200x2-2026-11-29-night/README.md): pruned to 0.9 of a 3 GiB cap, the tier was back at 3.0-4.0 GiB by
# every next prune (+32 % at its peak, the size of its 4 GiB tmpfs); 0.7 leaves 0.35 of the cap to refill.
ALONE_PRUNE_TO = 0.7
BUSY_GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting")
# Counters that grow while the engine works: tokens in and out, and tokens per engine step (this one grows
# during a long chunked prefill too, before the request's first output token).
PROGRESS_COUNTERS = ("vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:iteration_tokens_total_sum",
                     "vllm:iteration_tokens_total_count")


@dataclass
class Target:
    name: str
    pid: int = 0  # the process being judged (0: not running)
    started_at: float = 0.0  # monotonic time the server started (its start grace counts from there)
    ready: bool = False  # has passed a probe since it started
    failures: int = 0

    @property
    def running(self) -> bool:
        return self.pid != 0


class Watchdog:
    def __init__(self, plan: Plan, rpc: Any, record: state.Recorder | None = None) -> None:
        a = plan.appliance
        self.record = record or state.Recorder(RunDir.of(plan).state)
        self.grace = float(a.startup_timeout)
        self.interval = float(a.health_interval)
        self.timeout = float(a.health_timeout)
        self.limit = int(a.health_failures)
        self.plan, self.rpc, self.clock = plan, rpc, time.monotonic
        self.http = requests.Session()
        self.base, self.headers = vllm_base(plan), api_headers(plan)
        self.vllm = Target("vllm") if plan.vllm.argv else None  # none in the kv-server role
        self.lmcache = Target("lmcache") if plan.lmcache.health_url else None
        # When the running LMCache server was spawned (epoch s; None: none runs here). The files it wrote
        # since are its own to evict (prune_disk).
        self.lmcache_since: float | None = None
        # The lmcache_since of the server whose own files a prune had to remove (HARD_OVER): its eviction is
        # stalled from then on (prune_disk), so the watchdog is the tier's only evictor until it restarts.
        self.evicting_alone_for: float | None = None
        self.store_was_down = False  # the shared store did not answer since the LMCache server last started
        self.last_progress: float | None = None  # counters at the previous probe
        self.last_probe_at = 0.0
        self.next_probe = self.clock()

    def targets(self) -> list[Target]:
        return [t for t in (self.lmcache, self.vllm) if t]

    def target(self, name: str) -> Target | None:
        return next((t for t in self.targets() if t.name == name), None)

    # -- what supervisord says ----------------------------------------------------------------------------
    def refresh(self, t: Target) -> None:
        """Ask supervisord which process runs as `t` and since when. State events only trigger this: they
        can arrive late (buffered while we start), and a late STARTING must not restart the grace."""
        info = self.rpc.supervisor.getProcessInfo(t.name)
        if t.name == "lmcache":
            running = info["statename"] in ("STARTING", "RUNNING") and info["pid"]
            self.lmcache_since = float(info["start"]) if running and self.plan.lmcache.mode == "server" else None
        if info["statename"] not in ("STARTING", "RUNNING") or not info["pid"]:
            t.pid, t.ready, t.failures = 0, False, 0
        elif info["pid"] != t.pid:
            t.pid, t.ready, t.failures = info["pid"], False, 0
            # supervisord gives whole seconds: take the latest moment, so the grace is never cut short.
            t.started_at = self.clock() - max(0.0, time.time() - (info["start"] + 1))
            if t.name == "vllm":
                self.last_progress = None

    @staticmethod
    def launching(pid: int) -> bool:
        """Still our launcher (launch.py), waiting for LMCache, an earlier vLLM or a port (each wait is
        bounded there): not yet the server, so not judged, and its start grace has not begun."""
        try:
            return b"entrypoint.programs.launch" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False

    def on_event(self, headers: dict[str, str], payload: str) -> None:
        event = headers.get("eventname", "")
        if event.startswith("PROCESS_STATE_"):  # TICK_5 only wakes us up
            meta = split_payload(payload)[0]
            t = self.target(meta.get("processname", ""))
            # supervisord restarts what exits on its own: count it (a stop we or a shutdown asked for is
            # STOPPED, not EXITED; an expected exit code is no failure).
            if t and event == "PROCESS_STATE_EXITED" and meta.get("expected") == "0":
                self.record.restart(t.name, state.EXITED, f"exited unexpectedly (pid {meta.get('pid', '?')})")
            elif t and event == "PROCESS_STATE_BACKOFF":
                self.record.restart(t.name, state.EXITED, "exited while starting")
            if t:
                self.refresh(t)

    # -- probes ---------------------------------------------------------------------------------------------
    def _get(self, url: str, **kw: Any) -> requests.Response:
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
            if r.headers.get(GAP_HEADER):  # the gap program's 503: vLLM's own socket does not listen
                return False, f"cannot connect to {url} (vLLM does not listen; the gap program answers 503 meanwhile)"
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
        url = self.plan.lmcache.health_url
        assert url is not None  # probed only where there is an LMCache server of its own
        try:
            r = self._get(url)
        except requests.RequestException as e:
            return False, self._failure(url, e)
        return (True, "") if r.status_code == 200 else (False, f"{url} answered {r.status_code}")

    def probe_lmcache_server(self) -> bool:
        """A replica's external LMCache server: recorded, said when it changes; True when it answers."""
        server = self.plan.lmcache.server
        assert server is not None  # probed only where there is one
        try:
            r = self._get(server.health_url)
            up, why = r.status_code == 200, f"{server.health_url} answered {r.status_code}"
        except requests.RequestException as e:
            up, why = False, self._failure(server.health_url, e)
        if self.record.lmcache_server(up, "" if up else why):
            if up:
                say(NAME, f"the LMCache server {server.url} (LMCACHE_SERVER) answers")
            else:
                say(NAME, f"warning: the LMCache server {server.url} (LMCACHE_SERVER) does not answer: {why}. "
                          "vLLM is not restarted for it (its probes are not judged until the server answers)")
        return up

    def probe_store(self) -> None:
        assert self.plan.lmcache.shared_store is not None  # probed only where there is one
        url = self.plan.lmcache.shared_store.url
        up, why = store.probe(self.plan, min(self.timeout, STORE_TIMEOUT_S))
        if self.record.shared_store(up, why):
            if up:
                say(NAME, f"the shared KV store {url} answers: LMCache uses it")
            else:
                say(NAME, f"warning: the shared KV store {url} (LMCACHE_SHARED_URL) does not answer: {why}. "
                          "Serving without it (each replica computes its own prefixes) until it answers")
        if not up:
            self.store_was_down = True
        elif self.store_was_down and self.lmcache and self.lmcache.running:
            self.store_was_down = False
            self.restart_for_store(url)

    def restart_for_store(self, url: str) -> None:
        """LMCache 0.5.6's Redis client (the resp adapter) opens its connections once and never reconnects:
        after an outage, and when the server started while the store was down, every write fails until the
        server restarts (tests/contract/test_resp_reconnect.py shows it against a real redis-server). So the
        store's return restarts the LMCache server, not vLLM: vLLM's connector waits out the gap in its
        degraded mode and registers again (measured under load on the H200: no request failed)."""
        say(NAME, f"the shared KV store {url} is back: restarting the LMCache server so that it connects to it "
                  "again (LMCache does not reconnect on its own; its CPU tier starts empty, the disk tier is kept)")
        self.record.restart("lmcache", state.DEPENDENCY, "the shared KV store came back (LMCache does not reconnect)")
        self._call("stopProcess", "lmcache", True)
        self._call("startProcess", "lmcache", False)
        assert self.lmcache is not None  # called only while it runs
        self.refresh(self.lmcache)

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
        self.record.probe_failure(t.name)
        late = "" if t.ready else f", not ready {self.grace:g} s after it started (APPLIANCE_STARTUP_TIMEOUT)"
        say(NAME, f"{t.name} probe failed ({t.failures}/{self.limit}){late}: {why}")
        return t.failures >= self.limit

    def restart(self, stuck: Target, then: list[str]) -> None:
        """Kill `stuck` (a stuck server cannot drain: its requests make no progress, so waiting out the
        graceful stop would only delay the restart), stop `then` gracefully, start all again in order."""
        names = [stuck.name, *then]
        how = f"{stuck.name} killed" + (f", {' and '.join(then)} stopped" if then else "")
        say(NAME, f"{self.limit} failed probes in a row: restarting {' then '.join(names)} ({how}: a stuck server "
                  "cannot drain)")
        self.record.restart(stuck.name, state.UNHEALTHY, f"{self.limit} failed probes in a row")
        for name in then:
            self.record.restart(name, state.DEPENDENCY, f"restarted with {stuck.name}")
        for name in reversed(then):
            self._call("stopProcess", name, True)
        pid = stuck.pid
        if self._call("stopProcess", stuck.name, False) and pid:  # STOPPING, so the exit is expected
            try:
                os.killpg(pid, signal.SIGKILL)  # supervisord made it a process group leader
            except ProcessLookupError:
                pass
        deadline = self.clock() + 30
        while self.rpc.supervisor.getProcessInfo(stuck.name)["statename"] == "STOPPING" and self.clock() < deadline:
            time.sleep(0.1)
        for name in names:
            self._call("startProcess", name, False)
        for name in names:
            t = self.target(name)
            assert t is not None  # `then` names only programs watched here
            self.refresh(t)

    def _call(self, method: str, name: str, wait: bool) -> bool:
        """stopProcess/startProcess, where "already so" (it crashed meanwhile, or autorestart won) is fine."""
        try:
            return getattr(self.rpc.supervisor, method)(name, wait)
        except xmlrpc.client.Fault as e:
            if e.faultCode not in (Faults.NOT_RUNNING, Faults.ALREADY_STARTED):
                raise
            return False

    def round(self) -> None:
        now = self.clock()
        self.next_probe = max(now, self.next_probe + self.interval)
        if self.rpc.supervisor.getState()["statename"] != "RUNNING":
            return  # shutting down: nothing to judge
        for t in self.targets():
            if t.running and self.launching(t.pid):
                t.started_at = self.clock()  # the grace starts when the server itself does
        if self.plan.lmcache.shared_store:
            self.probe_store()
        if self.lmcache and self.lmcache.running and not self.launching(self.lmcache.pid):
            ok, why = self.probe_lmcache()
            if self.judge(self.lmcache, ok, why, self.clock()):
                self.restart(self.lmcache, then=["vllm"] if self.vllm else [])
                return
        server_up = self.probe_lmcache_server() if self.plan.lmcache.server else True
        if self.vllm and self.vllm.running and not self.launching(self.vllm.pid) and server_up:
            ok, why = self.probe_vllm()
            if self.judge(self.vllm, ok, why, self.clock()):
                self.restart(self.vllm, then=[])

    def prune_disk(self) -> tuple[int, int]:
        """One prune of the disk tier to its cap (called by prune_loop); returns (bytes held before, after).
        LMCache's L2 eviction counts the files its running server wrote and nothing else, and a key whose file
        is already gone when it evicts it stays counted: NativeConnectorL2Adapter uncounts a key only when
        its delete succeeds. One file of those removed here would stall its eviction for good (it picks the
        same least recently used keys every second, its usage only grows: measured under load on the H200,
        docs/RESILIENCE.md). So files written since the server started are left to LMCache, and pruned only
        when the tier is over HARD_OVER of its cap all the same (its eviction did not keep up). From then on
        that server's eviction is stalled, so every later prune takes the tier under its cap on its own, and
        further under it (ALONE_PRUNE_TO) since nothing frees space between prunes."""
        disk = self.plan.lmcache.disk
        assert disk is not None  # pruned only where there is a disk tier
        cap, dirs, since = disk.max_size_gib * disk_prune.GIB, disk_prune.tier_dirs(disk), self.lmcache_since
        alone = since is not None and getattr(self, "evicting_alone_for", None) == since
        removed, freed, held = disk_prune.prune(dirs, cap, written_before=None if alone else since,
                                                to=ALONE_PRUNE_TO if alone else disk_prune.PRUNE_TO)
        if removed:
            self.record.pruned(removed, freed)
            say(NAME, disk_prune.prune_note(disk, removed, freed, held))
        if alone or since is None or held - freed <= HARD_OVER * cap:
            return held, held - freed
        before = held
        removed, freed, held = disk_prune.prune(dirs, cap, to=ALONE_PRUNE_TO)
        if removed:
            self.record.pruned(removed, freed)
            self.evicting_alone_for = since
            say(NAME, disk_prune.prune_note(disk, removed, freed, held)
                + f"; LMCache's own eviction did not hold it under {HARD_OVER:g}x the cap, so files its server"
                  " still counts were removed too (its eviction stalls until it restarts: the watchdog prunes"
                  f" the tier alone from now on, to {ALONE_PRUNE_TO:g} of its cap, docs/RESILIENCE.md)")
        return before, held - freed

    def prune_loop(self, stop: threading.Event) -> None:
        """Prunes on its own period: a round of probes can wait up to HEALTH_TIMEOUT per request, and a
        disk tier written at GB/s must not wait for it. The period is the longest wait: the next prune
        comes sooner when the tier grows fast (prune_wait)."""
        period = float(self.plan.appliance.disk_prune_interval or DEFAULT_PRUNE_S)
        assert self.plan.lmcache.disk is not None  # started only where there is a disk tier
        cap = self.plan.lmcache.disk.max_size_gib * disk_prune.GIB
        wait, last_after, last_at = period, None, time.monotonic()
        while not stop.wait(wait):
            try:
                held, after = self.prune_disk()
            except Exception as e:  # noqa: BLE001 - a failed prune must not end the watchdog's supervision
                say(NAME, f"disk-tier prune failed ({type(e).__name__}: {e}); trying again in {period:g} s")
                wait, last_after = period, None
                continue
            now = time.monotonic()
            rate = (held - last_after) / max(now - last_at, 1e-3) if last_after is not None else 0.0
            wait, last_after, last_at = prune_wait(period, cap, after, rate), after, now


def prune_wait(period: float, cap: float, held: float, rate: float) -> float:
    """Seconds to the next prune: the period, or less when the tier, growing at `rate` bytes/s as it did
    since the previous prune, would pass HARD_OVER of its cap before then (measured: a 3 GiB tier written
    at ~0.65 GB/s under load went from 90 % to 133 % of its cap between prunes 2 s apart). Never under
    MIN_PRUNE_S, nor over the period."""
    if rate <= 0:
        return period
    room = max(0.0, HARD_OVER * cap - held)
    return min(period, max(MIN_PRUNE_S, room / rate))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    run = RunDir(Path(argv[0]).parent)
    dog = Watchdog(read_plan(argv[0]), run.rpc())
    for t in dog.targets():
        dog.refresh(t)
    if dog.plan.lmcache.disk:
        threading.Thread(target=dog.prune_loop, args=(threading.Event(),), daemon=True, name="prune").start()
    listener = Listener()
    while True:
        event = listener.next(timeout=max(0.0, dog.next_probe - dog.clock()))
        try:
            if event:
                dog.on_event(*event)
            if dog.clock() >= dog.next_probe:
                dog.round()
        except (OSError, xmlrpc.client.Error) as e:  # supervisord busy or going away: try again next round
            say(NAME, f"cannot reach supervisord ({e}); trying again in {dog.interval:g} s")
            dog.next_probe = dog.clock() + dog.interval


if __name__ == "__main__":
    sys.exit(main())
