"""The gap answer under real supervisord: while vLLM restarts, its port answers 503 + Retry-After instead of
refusing connections; once vLLM listens, every answer is vLLM's again."""
from __future__ import annotations

import sys
import threading
import time

import requests

from entrypoint.programs import gap as gapmod
from entrypoint.programs.gap import HEADER
from entrypoint.programs.watchdog import parse_metrics

from appliance_harness import STUBS, alive, wait_until


def poll(base: str, stop: threading.Event, seen: list) -> None:
    """A client asking every 50 ms: (time, status or exception name, Retry-After, gap header)."""
    while not stop.is_set():
        t = time.monotonic()
        try:
            r = requests.get(f"{base}/v1/models", timeout=2)
            seen.append((t, r.status_code, r.headers.get("Retry-After"), r.headers.get(HEADER)))
        except requests.RequestException as e:
            seen.append((t, type(e).__name__, None, None))
        time.sleep(0.05)


def test_restart_answers_503_with_retry_after_not_connection_refused(appliance, timing):
    a = appliance(STUB_START_DELAY=3, APPLIANCE_STARTUP_TIMEOUT=12, APPLIANCE_GAP_RETRY_AFTER=2,
                  APPLIANCE_GAP_ANSWER="true")
    # From the first second, before vLLM has loaded: the gap program answers.
    a.wait_output("spawned: 'gap'", 20)
    wait_until(lambda: _status(a.base) == 503, 10, "a 503 on the API port while vLLM loads")
    a.wait_ready(30)
    old = a.wait_state("vllm", "RUNNING", 30)["pid"]
    assert requests.get(f"{a.base}/v1/models", timeout=2).headers.get(HEADER) is None  # vLLM's own answer
    seen: list = []
    stop = threading.Event()
    client = threading.Thread(target=poll, args=(a.base, stop, seen), daemon=True)
    client.start()
    wait_until(lambda: len(seen) >= 5, 10, "the client's first answers")
    crashed_at = time.monotonic()
    a.trigger("vllm-crash")
    wait_until(lambda: not alive(old), 10, "the stub to crash")
    back = wait_until(lambda: a.pid() not in (0, old) and a.ready() and time.monotonic(), 40, "vLLM ready again")
    wait_until(lambda: len([s for s in seen if s[0] > back + 0.3]) >= 5, 10, "the client's answers after the restart")
    stop.set()
    client.join(5)
    during = [s for s in seen if crashed_at + 0.3 < s[0] < back - 0.3]
    after = [s for s in seen if s[0] > back + 0.3]
    refused = [s for s in seen if not isinstance(s[1], int)]
    detect = crashed_at + 0.05 + gapmod.RELEASED_POLL_S + 0.4  # the trigger's poll, the gap's, scheduling slack
    timing("vLLM crash -> ready again, answered by the gap meanwhile", back - crashed_at)
    print(f"client answers during the restart: {len(during)} x 503, refused {len(refused)} (all within "
          f"{max((s[0] - crashed_at for s in refused), default=0):.2f} s of the crash)")
    assert during, "the client asked during the restart"
    assert all(s[1] == 503 and s[2] == "2" and s[3] == "1" for s in during), during
    assert after and all(s[1] == 200 and s[3] is None for s in after), after
    # Refused only in the instant before the gap program sees vLLM gone (RELEASED_POLL_S); after that, at most
    # one reset, in the instant the gap program closes its socket for the new vLLM.
    assert len([s for s in refused if s[0] > detect]) <= 1, (crashed_at, refused)
    assert "Traceback" not in a.output()
    assert a.completion().status_code == 200
    # The metrics endpoint: vLLM listens again (0), and the 503s were counted.
    metrics = parse_metrics(requests.get(f"http://127.0.0.1:{a.env['APPLIANCE_METRICS_PORT']}/metrics",
                                         timeout=5).text)
    assert metrics["appliance_gap_holding"] == 0.0
    assert metrics["appliance_gap_answers_total"] >= len(during)


def test_gap_answer_off_leaves_the_port_closed_during_a_restart(appliance):
    a = appliance(STUB_START_DELAY=2, APPLIANCE_STARTUP_TIMEOUT=12, APPLIANCE_GAP_ANSWER="false")
    a.wait_ready(30)
    assert "gap" not in [p["name"] for p in a.rpc().getAllProcessInfo()]
    old = a.wait_state("vllm", "RUNNING", 30)["pid"]
    a.trigger("vllm-crash")
    wait_until(lambda: not alive(old), 10, "the stub to crash")
    # No gap program: the port is closed until the new vLLM listens.
    assert wait_until(lambda: _status(a.base) == "ConnectionError" and True, 10, "connection refused")
    a.wait_ready(30)


def test_sigterm_drain_answers_new_connections_with_503(appliance):
    """`docker stop`: vLLM stops listening and drains; the gap program (stopped after it) answers new ones."""
    a = appliance(APPLIANCE_SHUTDOWN_TIMEOUT=8, APPLIANCE_GAP_ANSWER="true")
    a.wait_ready(30)
    a.wait_state("vllm", "RUNNING", 30)
    result: dict = {}
    inflight = threading.Thread(target=lambda: result.update(r=a.completion(seconds=3)), daemon=True)
    inflight.start()
    wait_until(lambda: a.metrics().get("vllm:num_requests_running") == 1, 10, "a running request")
    a.proc.send_signal(15)
    late = wait_until(lambda: (s := _status(a.base)) == 503 and s, 10, "a 503 for a new connection while draining")
    assert late == 503
    inflight.join(15)
    assert result["r"].status_code == 200, "the request in flight completes"
    assert a.wait_exit(60) == 0


def _status(base: str):
    try:
        return requests.get(f"{base}/v1/models", timeout=2).status_code
    except requests.RequestException as e:
        return type(e).__name__


def test_a_vllm_command_that_cannot_share_the_port_gets_it_alone(appliance, tmp_path):
    """The test image's `vllm` is a shell wrapper: the launcher cannot start it through reuse_port.py, so the
    gap program lets go of the port for it (gap.off) and takes it back when that vLLM is gone."""
    wrapper = tmp_path / "vllm-wrapper"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} {STUBS / 'vllm_stub.py'} \"$@\"\n")
    wrapper.chmod(0o755)
    a = appliance(APPLIANCE_VLLM_COMMAND=str(wrapper), STUB_START_DELAY=1, APPLIANCE_STARTUP_TIMEOUT=12,
                  APPLIANCE_GAP_ANSWER="true")
    a.wait_ready(30)
    a.wait_output("is not a Python program: vLLM binds the port alone")
    old = a.wait_state("vllm", "RUNNING", 30)["pid"]
    assert (a.run.root / "gap.off").read_text().split() == [str(old)]
    a.trigger("vllm-crash")
    wait_until(lambda: not alive(old), 10, "the stub to crash")
    a.wait_ready(30)  # no EADDRINUSE: the new vLLM bound the port alone
    new = a.pid()
    assert new != old and (a.run.root / "gap.off").read_text().split() == [str(new)]
    assert a.completion().status_code == 200
    assert "Address already in use" not in a.output() and "Traceback" not in a.output()
