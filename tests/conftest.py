import sys
from pathlib import Path

import pytest

# Tests import the entrypoint package from the checkout (no install step needed).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# ...and this folder's shared helpers (ports.py) for every suite.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from entrypoint.config import resources  # noqa: E402

# The machine every in-process plan is built for, so that `auto` sizes and resource warnings never depend
# on the runner: a 64 GiB cgroup limit, unlimited memlock, 500 GiB free on every volume, no container.
# (Subprocesses - serve in the supervisor and container tests - read their real machine.)
TEST_HOST = resources.FixedHost()
SYSTEM_HOST = resources.Host


@pytest.fixture(autouse=True)
def fixed_host(monkeypatch):
    monkeypatch.setattr(resources, "Host", lambda: TEST_HOST)
