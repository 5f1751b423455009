"""The `front` program: the front proxy (front/proxy.py) on vLLM's public port, with APPLIANCE_FRONT_PROXY.

    python -m entrypoint.programs.front PLAN_FILE

vLLM listens on loopback behind it (plan.vllm_host:vllm_port). supervisord starts it right after vLLM and stops
it before vLLM (priority 25): on SIGTERM `/health` answers 503 at once (readiness fails first), no connection
is accepted any more, the requests in flight finish within APPLIANCE_SHUTDOWN_TIMEOUT, and only then is vLLM
stopped: no request is accepted that will not be answered.

Its counters (held, sent again, continued, dropped, the oldest held request's age) are written to FRONT_STATE in
the run directory about every second, for the metrics program (appliance_front_*).
"""
from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..common import applog, state
from ..common.webserver import Limits
from ..config.plan import Plan
from ..front.proxy import Config, FrontProxy, serve
from ..inspectors.healthcheck import api_keys, vllm_base
from ..rundir import RunDir, read_plan

NAME = "front"
FRONT_STATE = "front.json"  # in the run directory: the proxy's counters, for the metrics program
STATE_EVERY_S = 1.0
# vLLM's clients stream for minutes and send prompts of megabytes: the limits are a server's, not the gap's.
LIMITS = Limits(max_connections=4096, idle_timeout=75.0, read_timeout=60.0, max_body=256 * 1024 * 1024)


def config_of(plan: Plan) -> Config:
    a = plan.appliance
    return Config(upstream=vllm_base(plan), api_keys=api_keys(plan), max_held=int(a.front_max_held),
                  max_hold_s=float(a.front_max_hold), retry_after=int(a.gap_retry_after),
                  max_resends=int(a.front_max_resends),
                  reasoning_parser="--reasoning-parser" in plan.vllm.argv, limits=LIMITS)


def state_of(proxy: FrontProxy) -> dict:
    c = proxy.counters
    return {"ready": bool(proxy.ready is not None and proxy.ready.is_set()), "held": c.held_now,
            "held_total": c.held_total, "resent": c.resent, "resumed": c.resumed, "dropped": c.dropped,
            "queue_age_seconds": round(c.queue_age(), 3), "since": time.time()}


def write_state(path: Path, proxy: FrontProxy) -> None:
    try:
        state.save(path, state_of(proxy))  # atomically: the metrics program never reads half of it
    except OSError:
        pass  # a full run directory must not stop the proxy


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        print("usage: python -m entrypoint.programs.front PLAN_FILE", file=sys.stderr)
        return 2
    plan = read_plan(argv[0])
    run = RunDir(Path(argv[0]).parent)

    def say(message: str, level: str = "info", event: str = "message", **fields: Any) -> None:
        applog.emit(NAME, message, level=level, event=event, stream=sys.stdout, text_prefix="", **fields)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        server, proxy = serve(plan.api_host, plan.api_port, config_of(plan), say)
    except OSError as e:
        say(f"cannot listen on {plan.api_host}:{plan.api_port} ({e.strerror}); is another process on it?",
            level="error", event="bind_failed")
        return 1
    say(f"front proxy on {plan.api_host}:{plan.api_port}, vLLM behind it at {proxy.config.upstream}",
        event="start")
    state = run.root / FRONT_STATE
    while not stop.wait(STATE_EVERY_S):
        write_state(state, proxy)
    # Readiness fails first, then no new connection; what is in flight may finish.
    proxy.stopping = True
    drain = float(plan.appliance.shutdown_timeout)
    say(f"SIGTERM: answering what is in flight (up to {drain:g} s), accepting nothing new", event="stopping")
    cut = server.shutdown(drain)
    server.server_close()
    write_state(state, proxy)
    if cut:
        say(f"{cut} request(s) still in flight after {drain:g} s were cut off", level="warning", event="cut_off")
    return 0


if __name__ == "__main__":
    sys.exit(main())
