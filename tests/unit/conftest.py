import json

import pytest

from entrypoint.config.load import make_plan


@pytest.fixture
def plan_for():
    """Build a plan from an explicit environment (never the test runner's own)."""
    def build(env=None, overrides=(), env_file=None):
        return make_plan(env_file, list(overrides), environ=dict(env or {}))
    return build


def kv_transfer(plan):
    argv = plan.vllm_argv
    return json.loads(argv[argv.index("--kv-transfer-config") + 1])


def flag_value(argv, flag):
    assert flag in argv, f"{flag} not in {argv}"
    return argv[argv.index(flag) + 1]
