"""The gap program (entrypoint/programs/gap.py) answering on a free port in the test's own process, for its unit and
property tests. Every suite imports it as `gap_stand` (tests/conftest.py puts this folder on the import path)."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from entrypoint.common.webserver import Limits
from entrypoint.programs import gap as product

from ports import free_port

RETRY_AFTER = 7
PORT_EVENTS = ("holding", "released")  # taking and letting go of the port: the only lines a client may cause


@dataclass
class GapStand:
    gap: product.Gap
    port: int
    thread: threading.Thread
    lines: list[tuple[str, str]] = field(default_factory=list)  # (event, message) of everything it said

    def other_lines(self) -> list[tuple[str, str]]:
        """What it said besides taking and letting go of the port (a failure, an error of its server)."""
        return [line for line in self.lines if line[0] not in PORT_EVENTS]

    def stop(self, within: float = 30.0) -> None:
        self.gap.stopping.set()
        self.thread.join(within)
        assert not self.thread.is_alive(), "the gap program did not stop"


def serve_gap(within: float = 10.0, **limits) -> GapStand:
    """A gap program holding a free port of 127.0.0.1 (nothing else listens there), with the program's limits
    but for `limits`; its answers say Retry-After: RETRY_AFTER. `stop()` ends it."""
    lines: list[tuple[str, str]] = []
    gap = product.Gap("127.0.0.1", free_port(), RETRY_AFTER,
                      say=lambda message, event="message", **kw: lines.append((event, message)),
                      limits=Limits(**{**product.LIMITS.__dict__, **limits}))
    thread = threading.Thread(target=gap.run, name="test-gap", daemon=True)
    thread.start()
    deadline = time.monotonic() + within
    while gap.sock is None:
        assert time.monotonic() < deadline, f"the gap program did not take the port: {lines}"
        time.sleep(0.01)
    return GapStand(gap, gap.port, thread, lines)
