"""Fixtures of the supervisor tests (helpers in appliance_harness.py). Timings go to the test report
(record_property), the terminal summary and RESULTS."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance_harness import Appliance, base_env

RESULTS = Path(os.environ.get("APPLIANCE_SUPERVISOR_RESULTS", "/tmp/appliance-supervisor-timings.txt"))
TIMINGS: list[tuple[str, str, float]] = []


@pytest.fixture
def appliance(tmp_path):
    """appliance(**env) -> a started Appliance; env values of None remove a variable. Always cleaned up;
    serve's output is printed at teardown (pytest shows it when the test failed)."""
    made: list[Appliance] = []

    def make(start: bool = True, popen: dict | None = None, args: list[str] = (), **overrides) -> Appliance:
        env = base_env(tmp_path)
        for name, value in overrides.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = str(value)
        a = Appliance(tmp_path, env)
        made.append(a)
        return a.start(args, **(popen or {})) if start else a

    yield make
    for a in made:
        a.cleanup()
        print(f"---- serve output ({a.env['APPLIANCE_RUN_DIR']}) ----\n{a.output()}")


@pytest.fixture
def timing(request, record_property):
    """timing(label, seconds): into the test report, the terminal summary and RESULTS."""
    def record(label: str, seconds: float) -> None:
        if not TIMINGS:
            RESULTS.write_text("")
        TIMINGS.append((request.node.name, label, seconds))
        record_property(label, round(seconds, 3))
        with RESULTS.open("a") as f:
            f.write(f"{request.node.name}\t{label}\t{seconds:.2f} s\n")
        print(f"TIMING {label}: {seconds:.2f} s")
    return record


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.section("supervisor timings")
        for test, label, seconds in TIMINGS:
            terminalreporter.write_line(f"{seconds:7.2f} s  {label}  ({test})")
        terminalreporter.write_line(f"(also in {RESULTS})")
