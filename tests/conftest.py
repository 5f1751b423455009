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
# Tests of one group run on one worker, one after the other; every other test goes to any free worker. A test
# module is one group when a test of it uses a module-scoped fixture (servers, a registry, a release run: a
# second worker would set them up again); the supervisor tests each start their own `serve` on ports and
# directories of their own. SHARED_GROUPS: modules that must not run at the same time as each other.
SHARED_GROUPS = {
    # both build and run llm-appliance:drill-old (container/conftest.py: old_image)
    "container/test_upgrade.py": "drill-old",
    "container/test_compose_release.py": "drill-old",
}


def _uses_module_fixture(item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    return bool(info) and any(d.scope in ("module", "package", "class")
                              for defs in info.name2fixturedefs.values() for d in defs)


def pytest_collection_modifyitems(config, items):
    if not config.pluginmanager.hasplugin("xdist"):  # e.g. the contract tests inside the product image
        return
    tests = Path(__file__).resolve().parent
    shared = {str(item.fspath) for item in items if _uses_module_fixture(item)}
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        relative = Path(str(item.fspath)).resolve().relative_to(tests).as_posix()
        group = SHARED_GROUPS.get(relative) or (relative if str(item.fspath) in shared else None)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
