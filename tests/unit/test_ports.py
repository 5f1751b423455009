"""tests/ports.py: ports that cannot be handed to two tests at once, across pytest-xdist workers and across
separate test runs on one machine."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import ports


@pytest.fixture
def leases(tmp_path, monkeypatch):
    monkeypatch.setattr(ports, "LEASES", tmp_path / "leases")
    monkeypatch.setattr(ports, "_cursor", 0)
    return tmp_path / "leases"


def test_ports_are_distinct_below_the_ephemeral_range_and_leased_to_this_process(leases, monkeypatch):
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    got = ports.free_ports(5) + [ports.free_port()]
    assert len(set(got)) == 6
    low_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert all(ports.LOW <= p < ports.LOW + ports.SLOT and p < low_ephemeral for p in got)
    assert all((leases / str(p)).read_text() == str(os.getpid()) for p in got)


def test_each_xdist_worker_has_a_slot_of_its_own(leases, monkeypatch):
    seen = {}
    for worker in ("gw0", "gw1", "gw7"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        monkeypatch.setattr(ports, "_cursor", 0)
        seen[worker] = ports.free_port()
    assert len({p // ports.SLOT for p in seen.values()}) == 3, seen


def test_a_port_leased_by_another_live_process_or_in_use_is_skipped(leases, monkeypatch):
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    first = ports.free_ports(3)  # three ports free here now (the machine's own servers are skipped too)
    monkeypatch.setattr(ports, "_cursor", first[0] - ports.LOW)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (leases / str(first[0])).write_text(str(other.pid))  # leased by another live process
        with socket.socket() as busy:  # in use, whoever leased it
            busy.bind(("127.0.0.1", first[1]))
            busy.listen()
            assert ports.free_port() == first[2]
    finally:
        other.kill()
        other.wait()
    monkeypatch.setattr(ports, "_cursor", first[0] - ports.LOW)
    assert ports.free_port() == first[0]  # its process has gone: the lease lapsed
