import pytest

from entrypoint.config.load import make_plan


@pytest.fixture
def plan_for():
    """Build a plan from an explicit environment (never the test runner's own), for the fixed machine of
    tests/conftest.py unless `host` gives other readings."""
    def build(env=None, overrides=(), env_file=None, host=None):
        return make_plan(env_file, list(overrides), environ=dict(env or {}), host=host)
    return build
