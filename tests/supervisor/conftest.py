"""Fixtures of the supervisor tests (helpers in appliance_harness.py). Timings go to the test report
(record_property); tests/conftest.py gathers them from the reports into the terminal summary and a file."""
from __future__ import annotations

import pytest

from appliance_harness import Appliance, base_env

TIMING_PROPERTY = "timing: "  # what tests/conftest.py gathers ("conftest" names another module in each suite)


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
def timing(record_property):
    """timing(label, seconds): into the test report, and from there the terminal summary and the timings file
    (tests/conftest.py: with pytest-xdist the reports are what reaches the controlling process)."""
    def record(label: str, seconds: float) -> None:
        record_property(TIMING_PROPERTY + label, round(seconds, 3))
        print(f"TIMING {label}: {seconds:.2f} s")
    return record
