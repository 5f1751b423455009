"""Free TCP ports for the servers the tests start. Every suite imports it as `ports` (tests/conftest.py puts
this folder on the import path); no test picks a port any other way.

Binding port 0 and closing the socket (the usual trick) races: the kernel may hand the same ephemeral port to
anyone else before the test's server binds it, another pytest-xdist worker included. Here instead:
  - ports come from below the kernel's ephemeral range (32768-60999 by default), so that no socket bound to
    port 0 and no outgoing connection is ever given one of them;
  - that range is cut into slots, one per pytest-xdist worker (PYTEST_XDIST_WORKER), so that the workers of
    one run never even look at the same port;
  - a port is leased by writing the pid of the test process into LEASES/<port> under an exclusive lock on
    that file: a port leased by another live process (another pytest run on the same machine, one that
    happens to use the same slot) is skipped; the lease lapses when its process exits;
  - a leased port is checked free (bound without SO_REUSEADDR, which also fails while old connections on it
    linger in TIME_WAIT) before it is handed out;
  - within a process the slot is walked round-robin, so a port comes back to the same process only after
    every other port of its slot has been handed out.
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
from pathlib import Path

from entrypoint.common.procs import pid_alive  # a lease of a process that is gone is free

LOW, HIGH = 20000, 32000  # [LOW, HIGH): below the ephemeral range, above the usual well-known servers
SLOT = 1000               # ports per slot: 12 slots
LEASES = Path(os.environ.get("APPLIANCE_TEST_PORT_LEASES", "/tmp/appliance-test-ports"))

_cursor = 0  # the next port of this process's slot, as an offset


def _slot_start() -> int:
    """The first port of this process's slot: by xdist worker number (gw0, gw1, ...), slot 0 without xdist."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    index = int(worker[2:]) + 1 if worker.startswith("gw") and worker[2:].isdigit() else 0
    return LOW + (index % ((HIGH - LOW) // SLOT)) * SLOT


def _lease(port: int) -> bool:
    """Lease `port` to this process unless another live process holds it."""
    LEASES.mkdir(mode=0o777, parents=True, exist_ok=True)
    fd = os.open(LEASES / str(port), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        owner = os.read(fd, 32).decode(errors="replace").strip()
        if owner.isdigit() and int(owner) != os.getpid() and pid_alive(int(owner)):
            return False
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        return True
    finally:
        os.close(fd)  # also releases the lock


def _bindable(port: int, host: str) -> bool:
    """Free on `host`, and for IPv4 on every address (0.0.0.0): a server may listen on either."""
    for address in (host, "0.0.0.0") if ":" not in host else (host,):
        with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((address, port))
            except OSError as e:
                if e.errno in (errno.EADDRINUSE, errno.EACCES):
                    return False
                raise
    return True


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct ports, free on `host` now and leased to this process (see above)."""
    global _cursor
    start = _slot_start()
    out: list[int] = []
    for _ in range(SLOT):
        port = start + _cursor
        _cursor = (_cursor + 1) % SLOT
        if _lease(port) and _bindable(port, host):
            out.append(port)
            if len(out) == n:
                return out
    raise RuntimeError(f"no {n} free ports in {start}-{start + SLOT - 1} (leases in {LEASES})")


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]
