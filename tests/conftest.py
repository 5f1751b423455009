import os
import sys
from pathlib import Path

import pytest

# Tests import the entrypoint package from the checkout (no install step needed).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# ...and this folder's shared helpers (ports.py) for every suite.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from entrypoint.config import resources  # noqa: E402

# No wall-clock deadline per Hypothesis example (its default is 200 ms): on a shared 2-core machine running the
# suites in parallel (pytest-xdist) a slow example is the machine, not the code. Tests set their own example
# counts; this only drops the deadline for those that do not set one.
# (The contract tests also run inside the product image, with pytest alone: no Hypothesis there.)
try:
    from hypothesis import settings
except ImportError:
    pass
else:
    settings.register_profile("appliance", deadline=None)
    settings.load_profile("appliance")

# The machine every in-process plan is built for, so that `auto` sizes and resource warnings never depend
# on the runner: a 64 GiB cgroup limit, unlimited memlock, 500 GiB free on every volume, no container.
# (Subprocesses - serve in the supervisor and container tests - read their real machine.)
TEST_HOST = resources.FixedHost()
SYSTEM_HOST = resources.Host


@pytest.fixture(autouse=True)
def fixed_host(monkeypatch):
    monkeypatch.setattr(resources, "Host", lambda: TEST_HOST)


# -- timings (the supervisor tests' `timing` fixture) ------------------------------------------------------------
# A test records a timing as a report property named TIMING_PROPERTY + label. They are gathered here from the
# reports, in the process that prints the summary: with pytest-xdist the workers' reports reach the controlling
# process, and only it writes the file (so that parallel workers never overwrite each other's lines).
TIMING_PROPERTY = "timing: "
TIMINGS_FILE = Path(os.environ.get("APPLIANCE_SUPERVISOR_RESULTS", "/tmp/appliance-supervisor-timings.txt"))
_timings: list[tuple[str, str, float]] = []


def pytest_runtest_logreport(report):
    if report.when == "call":
        _timings.extend((report.nodeid.rsplit("::", 1)[-1], name[len(TIMING_PROPERTY):], value)
                        for name, value in report.user_properties
                        if isinstance(name, str) and name.startswith(TIMING_PROPERTY))


def pytest_terminal_summary(terminalreporter, config):
    if not _timings or hasattr(config, "workerinput"):  # a pytest-xdist worker: its controller reports
        return
    timings = sorted(_timings)
    TIMINGS_FILE.write_text("".join(f"{test}\t{label}\t{seconds:.2f} s\n" for test, label, seconds in timings))
    terminalreporter.section("supervisor timings")
    for test, label, seconds in timings:
        terminalreporter.write_line(f"{seconds:7.2f} s  {label}  ({test})")
    terminalreporter.write_line(f"(also in {TIMINGS_FILE})")


# -- pytest-xdist (scripts/test.sh: -n WORKERS --dist loadgroup) ----------------------------------------------------
# Tests of one group run on one worker, one after the other; every other test goes to any free worker. A module
# is one group when its tests share a module-scoped fixture (servers, a registry, a release run: a second worker
# would set them up again); GROUPS also keeps modules that must not run at the same time together. The supervisor
# tests each start their own `serve` on ports and directories of their own, and spread out.
#
# The groups are given by a scheduler of our own (pytest_xdist_make_scheduler) rather than xdist_group marks:
# pytest-xdist 3.8 marks a group by appending it to item._nodeid, which pytest 9 no longer reads (the test id is
# item._id), so with the marks --dist loadgroup silently spreads every test. The scheduler runs in the
# controlling process, which collects nothing: the groups are by path, and
# tests/unit/test_xdist_groups.py checks that every module with a module-scoped fixture has one.
GROUPS = {
    # module-scoped fixtures
    "tests/unit/test_router_proxy.py": "unit/test_router_proxy.py",
    "tests/property/test_any_input.py": "property/test_any_input.py",
    "tests/property/test_hostile_http.py": "property/test_hostile_http.py",
    "tests/contract/test_coordinator.py": "contract/test_coordinator.py",
    "tests/contract/test_coordinator_router.py": "contract/test_coordinator_router.py",
    "tests/container/test_release.py": "container/test_release.py",
    # both build and run llm-appliance:drill-old (container/conftest.py: old_image); the second also has a
    # module-scoped registry
    "tests/container/test_upgrade.py": "drill-old",
    "tests/container/test_compose_release.py": "drill-old",
}


def xdist_scope(nodeid: str) -> str:
    """The group of a test id (rootdir-relative, as pytest-xdist has it): its module's, else the test alone."""
    return GROUPS.get(nodeid.split("::", 1)[0], nodeid)


@pytest.hookimpl(optionalhook=True)  # pytest alone (the contract tests inside the product image) has no xdist
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_scope(nodeid)

    return GroupScheduling(config, log)
