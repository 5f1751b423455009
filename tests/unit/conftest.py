import json

import pytest

from entrypoint.config import resources
from entrypoint.config.load import make_plan

# The machine every unit-test plan is built for: `auto` sizes and resource warnings never depend on the
# runner (64 GiB cgroup limit, unlimited memlock, 500 GiB free on every volume, no container).
HOST = resources.FixedHost()


@pytest.fixture(autouse=True)
def fixed_host(monkeypatch):
    """Also for plans made inside cli.main (in-process tests)."""
    monkeypatch.setattr(resources, "Host", lambda: HOST)


@pytest.fixture
def plan_for():
    """Build a plan from an explicit environment (never the test runner's own)."""
    def build(env=None, overrides=(), env_file=None, host=HOST):
        return make_plan(env_file, list(overrides), environ=dict(env or {}), host=host)
    return build


def kv_transfer(plan):
    argv = plan.vllm_argv
    return json.loads(argv[argv.index("--kv-transfer-config") + 1])


def flag_value(argv, flag):
    assert flag in argv, f"{flag} not in {argv}"
    return argv[argv.index(flag) + 1]
