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


# -- pytest-xdist (scripts/test.sh runs the suites with -n and --dist loadgroup) -----------------------------------
# Tests of one group run on one worker, one after the other. A test module is one group where its tests share
# something a second worker would set up again (a module- or session-scoped fixture that starts servers or
# containers, a slow import) or must not do at the same time; elsewhere each test goes to any free worker.
# The supervisor tests each start their own `serve` on their own ports and temporary directories: spread out.
GROUP_BY_MODULE = ("contract", "property", "container")  # suites, by their folder under tests/
GROUP_MODULES = {"unit/test_router_proxy.py"}  # module-scoped fixtures
SHARED_GROUPS = {
    # both build and run llm-appliance:drill-old (conftest.old_image), which one build must tag at a time
    "container/test_upgrade.py": "drill-old",
    "container/test_compose_release.py": "drill-old",
}


def pytest_collection_modifyitems(config, items):
    if not config.pluginmanager.hasplugin("xdist"):  # e.g. the contract tests inside the product image
        return
    tests = Path(__file__).resolve().parent
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        relative = Path(str(item.fspath)).resolve().relative_to(tests).as_posix()
        group = SHARED_GROUPS.get(relative)
        if group is None and (relative.split("/")[0] in GROUP_BY_MODULE or relative in GROUP_MODULES):
            group = relative
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
