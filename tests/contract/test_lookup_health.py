"""A dead LMCache server no longer stalls vLLM's scheduler for mq_timeout (issue 23): with blocking lookup status
(LMCACHE_NONBLOCKING_LOOKUP=false), the pinned LMCache's `check_lookup_result` waits on the status future with
`result(timeout=mq_timeout)`, which never looks at the heartbeat's health flag. The appliance's connector
(lmcache_ext/connector.py) hands the scheduler adapter futures whose wait ends once the flag is down.

Run against the real LMCacheMPSchedulerAdapter.check_lookup_result and LMCache's real MessagingFuture; only the
server is missing (its client hands out futures that never complete, as a dead server's)."""
from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("lmcache", reason="the contract suite needs the LMCache of versions.env (scripts/test.sh)")

from lmcache.integration.vllm.vllm_multi_process_adapter import LMCacheMPSchedulerAdapter  # noqa: E402
from lmcache.v1.multiprocess.futures import MessagingFuture  # noqa: E402

from entrypoint.lmcache_ext.connector import HealthBoundFuture, bound_status_waits  # noqa: E402

URL = "tcp://127.0.0.1:5555"


class DeadServer:
    """The client of a server that died after acknowledging the lookup: its status never comes."""

    def __init__(self):
        self.asked: list[str] = []

    def query_prefetch_status(self, request_id: str) -> MessagingFuture:
        self.asked.append(request_id)
        return MessagingFuture()


def adapter_waiting_on(client, mq_timeout: float) -> LMCacheMPSchedulerAdapter:
    """The real adapter's state after a lookup of request "r" was acknowledged (what check_lookup_result reads)."""
    a = object.__new__(LMCacheMPSchedulerAdapter)
    a._server_urls, a.req_clients = [URL], {URL: client}
    a._nonblocking_lookup_status, a._mq_timeout = False, mq_timeout
    a._pending_lookups, a._unacked_lookups, a._finished_lookup_results = {"r"}, {}, {}
    a._per_server_hits, a._lookup_status, a._lookup_params = {}, {}, {}
    a._health_events = {URL: threading.Event()}
    a._health_events[URL].set()
    return a


def check_in_thread(adapter) -> tuple[threading.Thread, list]:
    out: list = []
    t = threading.Thread(target=lambda: out.append(adapter.check_lookup_result("r")), daemon=True)
    t.start()
    return t, out


def test_a_dead_servers_lookup_status_wait_ends_when_the_heartbeat_marks_it_unhealthy():
    client = DeadServer()
    adapter = adapter_waiting_on(client, mq_timeout=600)
    bound_status_waits(adapter)
    t, out = check_in_thread(adapter)
    time.sleep(0.3)
    assert t.is_alive() and client.asked == ["r"]  # blocked on the status, as LMCache's blocking path is
    adapter._health_events[URL].clear()  # what HeartbeatThread does after an unanswered ping
    t.join(10)
    assert not t.is_alive(), "the wait went on after the server was marked unhealthy"
    assert out == [0]  # LMCache's answer to a timed-out status: a miss, the prompt is computed


def test_without_the_bound_the_pinned_lmcache_waits_out_mq_timeout():
    """What the bound is for: the pinned LMCache alone still waits (here a 2 s mq_timeout) after the flag is
    down. When this fails, LMCache ends the wait itself: the bound can go."""
    adapter = adapter_waiting_on(DeadServer(), mq_timeout=2)
    t, out = check_in_thread(adapter)
    time.sleep(0.3)
    adapter._health_events[URL].clear()
    t.join(1.0)
    assert t.is_alive(), "LMCache now ends the status wait on its own when unhealthy"
    t.join(10)
    assert out == [0]


def test_a_healthy_answer_comes_through_unchanged():
    future = MessagingFuture()
    bound = HealthBoundFuture(future, lambda: True)
    threading.Timer(0.2, lambda: (setattr(future, "result_", 512), future.is_done_.set())).start()
    assert bound.result(timeout=10) == 512 and bound.query()
    with pytest.raises(TimeoutError):
        HealthBoundFuture(MessagingFuture(), lambda: True).result(timeout=0.1)  # a plain timeout stays one
