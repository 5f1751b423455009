"""Faults of a running vLLM and what the appliance does about them: crash, hang, slow start, busy, crash loop."""
from __future__ import annotations

import json
import re
import threading
import time

import pytest

from appliance_harness import alive, wait_until


def test_crash_is_restarted_and_ready_again(appliance, timing):
    a = appliance(APPLIANCE_STARTUP_TIMEOUT=2)
    a.wait_ready()
    old = a.wait_state("vllm", "RUNNING")["pid"]  # up longer than startsecs: a crash of a serving engine
    a.trigger("vllm-crash")
    crashed = wait_until(lambda: not alive(old) and time.monotonic(), 10, "the stub to crash")
    ready = wait_until(lambda: a.pid() not in (0, old) and a.ready() and time.monotonic(), 30, "vLLM ready again")
    timing("crash -> ready again", ready - crashed)
    assert "exited: vllm (exit status 1; not expected)" in a.output()
    assert a.spawns("vllm") == 2
    assert a.info("lmcache")["pid"] == a.starts("lmcache")[0]["pid"]  # only vLLM was restarted
    assert a.completion().status_code == 200


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "busy"])
def test_hang_is_restarted_after_n_failed_probes_not_before(appliance, timing, busy):
    """/health stays 200 while the engine is stuck: only the proof of progress catches it."""
    a = appliance(APPLIANCE_HEALTH_FAILURES=3, APPLIANCE_HEALTH_INTERVAL=1, APPLIANCE_HEALTH_TIMEOUT=1)
    a.wait_ready()
    a.wait_output("watchdog | vllm is ready")
    old = a.pid()
    if busy:
        threading.Thread(target=lambda: _ignore(a.completion, 120), daemon=True).start()
        wait_until(lambda: a.metrics().get("vllm:num_requests_running") == 1, 10, "a running request")
    hung = time.monotonic()
    a.trigger("vllm-hang")
    wait_until(lambda: (a.control / "vllm-hang").exists() is False, 5, "the stub to take the trigger")
    a.wait_output("vllm probe failed (2/3)", 20)
    assert a.pid() == old, "restarted before the third failed probe"
    assert a.ready(), "/health and /v1/models must keep answering in a hang (what makes it a hang)"
    restarted = wait_until(lambda: a.pid() not in (0, old) and time.monotonic(), 20, "vLLM restarted")
    ready = a.wait_ready()
    timing(f"hang ({'busy' if busy else 'idle'}) -> restart", restarted - hung)
    timing(f"hang ({'busy' if busy else 'idle'}) -> ready again", ready - hung)
    watchdog = [line for _, line in a.lines if line.startswith("watchdog |")]
    failures = [line for line in watchdog if "probe failed" in line]
    assert [re.search(r"\((\d)/3\)", f).group(1) for f in failures] == ["1", "2", "3"]
    restart = watchdog.index("watchdog | 3 failed probes in a row: restarting vllm (vllm killed: a stuck server "
                             "cannot drain)")
    assert watchdog.index(failures[-1]) < restart
    assert "stopped: vllm (terminated by SIGKILL)" in a.output()  # a stuck engine is not left to drain
    # Idle, the 1-token completion times out; from then on that stuck probe request makes vLLM "busy", and
    # its token counters do not move.
    first = "token counters have not moved" if busy else "/v1/completions within 1 s (APPLIANCE_HEALTH_TIMEOUT)"
    assert first in failures[0]
    assert "token counters have not moved" in failures[-1]
    assert restarted - hung >= 2.0, "three probes one second apart take at least two seconds"
    assert a.spawns("vllm") == 2
    record = json.loads(a.run.state.read_text())  # what `status` and the metrics exporter report
    assert record["restarts"] == {"vllm": {"unhealthy": 1}} and record["probe_failures"]["vllm"] >= 3
    assert record["last_restart"]["detail"] == "3 failed probes in a row"


def _ignore(call, *args):
    try:
        call(*args)
    except Exception:
        pass  # the request dies with the hung engine


def test_slow_start_within_grace_is_not_restarted(appliance, timing):
    a = appliance(STUB_START_DELAY=5, APPLIANCE_STARTUP_TIMEOUT=12, APPLIANCE_HEALTH_FAILURES=2)
    spawned = a.wait_output("spawned: 'vllm'")
    ready = a.wait_ready(30)
    a.wait_output("watchdog | vllm is ready")
    timing("slow start (STUB_START_DELAY=5) -> ready", ready - spawned)
    assert ready - spawned >= 5
    assert a.spawns("vllm") == 1
    assert "probe failed" not in a.output()


def test_start_beyond_grace_is_restarted(appliance):
    a = appliance(STUB_START_DELAY=60, APPLIANCE_STARTUP_TIMEOUT=3, APPLIANCE_HEALTH_FAILURES=2)
    spawned = a.wait_output("spawned: 'vllm'")
    restart = a.wait_output("watchdog | 2 failed probes in a row: restarting vllm (vllm killed: a stuck server "
                            "cannot drain)", 30)
    assert restart - spawned >= 3 + 1, "judged before the start grace ended"
    assert ("vllm probe failed (1/2), not ready 3 s after it started (APPLIANCE_STARTUP_TIMEOUT): cannot connect "
            f"to {a.base}/health") in a.output()
    wait_until(lambda: a.spawns("vllm") == 2, 20, "a second start")


def test_busy_engine_that_progresses_is_not_restarted(appliance):
    """One request fills the batch (STUB_MAX_CONCURRENCY=1): a 1-token completion probe would queue behind
    it and time out, so only the token counters can show that the engine works."""
    a = appliance(STUB_MAX_CONCURRENCY=1, APPLIANCE_HEALTH_FAILURES=2)
    a.wait_ready()
    a.wait_output("watchdog | vllm is ready")
    old, scrapes = a.pid(), a.metrics()["stub_metrics_scrapes_total"]
    result = {}
    long = threading.Thread(target=lambda: result.setdefault("r", a.completion(8)))
    long.start()
    wait_until(lambda: a.metrics().get("vllm:num_requests_running") == 1, 5, "the long request to run")
    with pytest.raises(Exception):
        a.completion(timeout=1)  # what a completion probe would see now
    long.join(30)
    assert result["r"].status_code == 200
    assert len(result["r"].json()["choices"][0]["text"].split()) > 50  # tokens kept coming
    assert a.metrics()["stub_metrics_scrapes_total"] - scrapes >= 6, "the watchdog did not probe while busy"
    assert a.pid() == old
    assert "probe failed" not in a.output()
    assert a.spawns("vllm") == 1


def test_crash_loop_stops_the_appliance_with_an_error(appliance, timing):
    a = appliance(STUB_EXIT_AT_START=3)
    rc = a.wait_exit(60)
    timing("crash loop -> serve exited", time.monotonic() - a.started_at)
    out = a.output()
    assert rc == 1, out
    assert "on-fatal | vllm failed to start 4 times in a row (FATAL): stopping the appliance" in out
    assert "on-fatal | last " in out and "on-fatal |   stub-vllm[" in out
    assert "exiting with status 3 as asked (STUB_EXIT_AT_START)" in out.split("on-fatal | vllm failed")[1]
    assert out.rstrip().endswith("appliance: stopped because 'vllm' failed 4 times in a row (FATAL); its last "
                                 "lines are above")
    assert a.spawns("vllm") == 4
    assert "Traceback" not in out
    assert a.session() == [], "processes left after exit"
