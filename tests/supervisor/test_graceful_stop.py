"""Stopping: graceful SIGTERM, a server that ignores it, forced restarts and stragglers; nothing left behind."""
from __future__ import annotations

import os
import signal
import threading
import time

from appliance_harness import alive, wait_until


def test_sigterm_lets_the_running_request_finish_then_exits_zero(appliance, timing):
    a = appliance(APPLIANCE_SHUTDOWN_TIMEOUT=10)
    a.wait_ready()
    result = {}
    request = threading.Thread(target=lambda: result.setdefault("r", a.completion(3)))
    request.start()
    wait_until(lambda: a.metrics().get("vllm:num_requests_running") == 1, 5, "the request to run")
    sent = time.monotonic()
    a.proc.send_signal(signal.SIGTERM)
    rc = a.wait_exit(40)
    timing("SIGTERM with a 3 s request in flight -> exit", time.monotonic() - sent)
    request.join(5)
    assert rc == 0, a.output()
    assert result["r"].status_code == 200
    out = a.output()
    assert "SIGTERM: draining 1 running request(s), up to 10 s" in out
    assert "Traceback" not in out and "terminated by SIGTERM" not in out  # every program ended on its own
    # vLLM first (it may still use the LMCache server while it drains), then LMCache.
    assert a.line_index("stopped: vllm (exit status 0)") < a.line_index("stopped: lmcache (exit status 0)")
    assert a.session() == []


def test_sigterm_during_a_crash_loop_is_still_a_clean_stop(appliance):
    """supervisord gives up on a program in BACKOFF when it shuts down, which looks like FATAL: on-fatal must
    not turn a `docker stop` into a failure."""
    a = appliance(STUB_EXIT_AT_START=1)
    a.wait_output("exited: vllm (exit status 1; not expected)")
    rc = a.terminate()
    assert rc == 0, a.output()
    out = a.output()
    assert "on-fatal | vllm failed" not in out and "Traceback" not in out and "exited: on-fatal" not in out
    assert a.session() == []


def test_server_ignoring_sigterm_is_killed_with_its_workers(appliance, timing):
    a = appliance(STUB_IGNORE_SIGTERM=1, STUB_CHILDREN=2, APPLIANCE_SHUTDOWN_TIMEOUT=1)
    a.wait_ready()
    group = a.pid()
    wait_until(lambda: len([p for p in a.session() if p.pgid == group]) == 3, 10, "the server and 2 workers")
    sent = time.monotonic()
    rc = a.terminate(60)
    timing("SIGTERM ignored -> killed after stopwaitsecs (1 + 10 s) -> exit", time.monotonic() - sent)
    assert rc == 0, a.output()
    assert "stopped: vllm (terminated by SIGKILL)" in a.output()
    assert a.session() == []


def test_ten_forced_restarts_leave_no_zombies_and_no_leftovers(appliance, timing):
    """Five restarts through supervisord (what the watchdog does) and five SIGKILLs of vLLM's main process
    (an OOM kill), each with two workers that have to go with it."""
    a = appliance(STUB_CHILDREN=2, APPLIANCE_STARTUP_TIMEOUT=1)
    a.wait_ready()
    a.wait_state("vllm", "RUNNING")
    baseline = len(a.session())
    durations = []
    for i in range(10):
        old = a.pid()
        t0 = time.monotonic()
        if i % 2 == 0:
            a.rpc().stopProcess("vllm", True)
            a.rpc().startProcess("vllm", False)
        else:
            os.kill(old, signal.SIGKILL)
        wait_until(lambda: a.pid() not in (0, old) and a.ready(), 30, f"vLLM ready after restart {i + 1}")
        durations.append(time.monotonic() - t0)
        a.wait_state("vllm", "RUNNING")  # so that a SIGKILL is a crash of a started program, not a failed start
    timing("forced restart -> ready (mean of 10)", sum(durations) / len(durations))
    leader = a.pid()

    def settled():
        procs = a.session()
        stubs = [p for p in procs if "vllm_stub.py" in p.cmdline]
        return (not [p for p in procs if p.state == "Z"] and len(stubs) == 3
                and all(p.pgid == leader for p in stubs) and len(procs) == baseline)

    wait_until(settled, 10, f"no zombies, one vLLM with 2 workers, {baseline} processes as before the restarts")
    assert a.spawns("vllm") == 11
    assert a.terminate() == 0
    assert a.session() == []


def test_straggler_of_an_earlier_vllm_is_killed_before_the_next_starts(appliance, timing):
    """A worker that outlives vLLM's main process (ignores SIGTERM, left alone by a SIGKILL of its parent) may
    hold GPU memory: the next vLLM waits for it, then kills it."""
    a = appliance(STUB_CHILDREN=1, STUB_ORPHAN_CHILDREN=1, APPLIANCE_STARTUP_TIMEOUT=1)
    a.wait_ready()
    old = a.wait_state("vllm", "RUNNING")["pid"]
    worker = wait_until(lambda: next((p.pid for p in a.session() if p.ppid == old), None), 10, "the worker")
    # Kill only once the worker is up: one still starting would write its first line into the pipe that
    # supervisord closes when its parent dies, and die of EPIPE instead of straggling.
    a.wait_output(f"stub-vllm[{worker}]: worker started (parent {old})")
    killed = time.monotonic()
    os.kill(old, signal.SIGKILL)
    a.wait_output(f"vllm     | [appliance] waiting for 1 earlier vllm process(es) to exit: pid {worker}")
    a.wait_output(f"vllm     | [appliance] still alive after 10 s, killing: pid {worker}", 20)
    ready = a.wait_ready(30)
    timing("straggler: SIGKILL of vLLM -> ready again (10 s grace for the worker)", ready - killed)
    assert not alive(worker)
    assert a.terminate() == 0
    assert "appliance: killing 1 leftover process(es)" in a.output()  # the new worker ignores SIGTERM too
    assert a.session() == []
