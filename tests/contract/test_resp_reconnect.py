"""What LMCache 0.5.6's native RESP client (`lmcache.lmcache_redis`, what the `resp` L2 adapter of
LMCACHE_SHARED_URL runs) does when its store goes away, with a real redis-server.

Each of its worker threads opens one connection when it starts and keeps it: there is no reconnect
(csrc/storage_backends/connector_base.h, `worker_loop_for_queue`). So after the store was killed and started
again every write fails until the client is created anew (the LMCache server restarted), and a client created
while the store is down never completes a request at all. The cluster GPU suite's outage step saw exactly
this (no key written in 41 s after the restart). When an LMCache upgrade reconnects, this test fails: then
docs/SCALE-OUT.md ("The store across an outage") and the watchdog's handling of the store change with it."""
from __future__ import annotations

import select
import shutil
import socket
import subprocess
import time

import pytest

from ports import free_port

REDIS = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(REDIS is None, reason="redis-server is not installed (scripts/ci/install-redis.sh)")


def _store(port: int) -> subprocess.Popen:
    proc = subprocess.Popen([REDIS, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)


def _keys(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"*1\r\n$6\r\nDBSIZE\r\n")
        return int(s.recv(64).strip()[1:])


def _set(client, keys: list[str], timeout: float = 5.0):
    """Submit one batch SET; its completion (future id, ok, error, ...) or None if none came in `timeout`."""
    buf = memoryview(bytearray(b"kv" * 2048))
    fid = client.submit_batch_set(keys, [buf] * len(keys))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        select.select([client.event_fd()], [], [], 0.2)
        for comp in client.drain_completions():
            if comp[0] == fid:
                return comp
    return None


@pytest.fixture
def native():
    from lmcache import lmcache_redis

    clients = []

    def make(port: int):
        clients.append(lmcache_redis.LMCacheRedisClient("127.0.0.1", port, 2))
        return clients[-1]

    yield make
    for c in clients:
        c.close()


def test_after_a_store_restart_every_write_fails_until_a_new_client(native):
    port = free_port()
    store = _store(port)
    try:
        client = native(port)
        assert _set(client, ["a", "b"])[1] is True and _keys(port) == 2
        store.kill()
        store.wait()
        down = _set(client, ["c"])
        assert down is not None and down[1] is False  # fails, does not hang
        store = _store(port)
        for i in range(3):  # the store answers again, empty; the old client never writes to it
            after = _set(client, [f"after{i}"])
            assert after is not None and after[1] is False, after
            assert "socket" in after[2]
            time.sleep(0.5)
        assert _keys(port) == 0
        fresh = native(port)  # what restarting the LMCache server does
        assert _set(fresh, ["new"])[1] is True and _keys(port) == 1
    finally:
        store.kill()
        store.wait()


def test_a_client_started_while_the_store_is_down_never_completes(native):
    port = free_port()
    client = native(port)
    assert _set(client, ["early"], timeout=2) is None  # its workers exited at "connection failed"
    store = _store(port)
    try:
        assert _set(client, ["late"], timeout=3) is None  # and nothing brings them back
        assert _keys(port) == 0
    finally:
        store.kill()
        store.wait()
