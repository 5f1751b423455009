"""Version-aware wiring: the plan follows the schema of the installed vLLM/LMCache (committed for both the
current pins and the previous ones), and a setting the installed version does not know is an error naming it."""
from __future__ import annotations

import copy
import json

import pytest

from entrypoint.config import schema as schema_mod
from entrypoint.config.load import make_plan

from plan_argv import flag_value, kv_transfer

OLD = {"vllm": "0.26.0", "lmcache": "0.5.3"}  # the stack before docs/UPGRADING.md's upgrade
SERVER = {"VLLM_KV_OFFLOADING_BACKEND": "lmcache"}


def schema_of(vllm: str, lmcache: str) -> schema_mod.Schema:
    read = lambda name, v: json.loads((schema_mod.SCHEMA_DIR / f"{name}-{v}.json").read_text())  # noqa: E731
    return schema_mod.Schema(vllm=read("vllm", vllm), lmcache=read("lmcache", lmcache))


@pytest.fixture
def on_stack(monkeypatch):
    """Build plans as an image with the given versions installed would (its generated schema)."""
    def build(schema, env, overrides=()):
        monkeypatch.setattr(schema_mod, "load", lambda: schema)
        return make_plan(None, list(overrides), dict(env))
    return build


def new_schema() -> schema_mod.Schema:
    pins = schema_mod.pinned_versions()
    return schema_of(pins["VLLM_VERSION"], pins["LMCACHE_VERSION"])


def test_both_stacks_have_a_committed_schema():
    assert new_schema().lmcache_version != OLD["lmcache"]
    assert schema_of(**OLD).lmcache_version == OLD["lmcache"]


@pytest.mark.parametrize("env", [{}, SERVER, {**SERVER, "LMCACHE_LOCAL_DISK": "true"},
                                 {**SERVER, "LMCACHE_MODE": "in-process", "LMCACHE_LOCAL_DISK": "true"}],
                         ids=["defaults", "server", "server-disk", "in-process-disk"])
def test_the_same_env_is_valid_on_both_stacks(on_stack, env):
    old, new = on_stack(schema_of(**OLD), env), on_stack(new_schema(), env)
    assert old.errors == [] and new.errors == []
    # Every flag explicit: a changed LMCache default changes nothing but the disk namespace.
    def same(argv):
        return [a.replace(old.lmcache.disk.path, "<disk>") if old.lmcache.disk else a for a in argv or []]
    new_argv = list(new.lmcache.argv or [])
    if "--server-module" in new_argv:  # hot-prefix pre-warming: only an LMCache with server modules (0.5.6)
        at = new_argv.index("--server-module")
        del new_argv[at:at + 2]
        assert "--server-module" not in (old.lmcache.argv or [])
    assert same(old.lmcache.argv) == [a.replace(new.lmcache.disk.path, "<disk>") if new.lmcache.disk else a
                                      for a in new_argv]
    if new.lmcache.disk:  # the disk namespace names the LMCache version: the new one never reads the old one's files
        assert new.lmcache.disk.base == old.lmcache.disk.base and new.lmcache.disk.path != old.lmcache.disk.path
        assert new.lmcache.disk.path.endswith(f"__lmcache-{new_schema().lmcache_version}")


def test_arc_eviction_needs_the_lmcache_that_has_it(on_stack):
    env = {**SERVER, "LMCACHE_EVICTION_POLICY": "arc"}
    new = on_stack(new_schema(), env)
    assert new.errors == []
    assert flag_value(new.lmcache.argv, "--eviction-policy") == "ARC"
    assert new.values["LMCACHE_EVICTION_POLICY"] == "ARC"
    old = on_stack(schema_of(**OLD), env)
    assert len(old.errors) == 1
    assert "LMCache 0.5.3" in old.errors[0] and "LRU, IsolatedLRU, noop" in old.errors[0]


def test_an_eviction_policy_no_lmcache_has_is_an_error(on_stack):
    plan = on_stack(new_schema(), {**SERVER, "LMCACHE_EVICTION_POLICY": "--port=1"})
    assert len(plan.errors) == 1 and "--eviction-policy choices" in plan.errors[0]


@pytest.mark.parametrize("name,key", [("LMCACHE_EAGER_PREFETCH", "eager_prefetch"),
                                      ("LMCACHE_NONBLOCKING_LOOKUP", "nonblocking_lookup_status")])
def test_connector_options_need_the_lmcache_that_reads_them(on_stack, name, key):
    new = on_stack(new_schema(), {**SERVER, name: "on"})
    assert new.errors == []
    assert kv_transfer(new)["kv_connector_extra_config"][f"lmcache.mp.{key}"] is True
    old = on_stack(schema_of(**OLD), {**SERVER, name: "on"})
    assert old.errors == [f"{name}: the installed LMCache 0.5.3's vLLM connector has no lmcache.mp.{key}; unset "
                          "it or use an image with a newer LMCache (docs/UPGRADING.md)"]


def test_measured_defaults_where_the_installed_lmcache_has_them(on_stack):
    """Blocking lookup status and the retain L2 prefetch policy are the appliance's defaults (measured,
    docs/BENCHMARKS.md); eager prefetch stays LMCache's. On 0.5.3, whose connector has no
    nonblocking_lookup_status key (it always blocks), the default is dropped, not an error."""
    plan = on_stack(new_schema(), SERVER)
    assert plan.errors == []
    extra = kv_transfer(plan)["kv_connector_extra_config"]
    assert set(extra) == {"lmcache.mp.host", "lmcache.mp.port", "lmcache.mp.heartbeat_interval",
                          "lmcache.mp.mq_timeout", "lmcache.mp.nonblocking_lookup_status", "appliance.kv_identity",
                          "appliance.skip_useless_lookup"}
    assert extra["lmcache.mp.nonblocking_lookup_status"] is False
    assert flag_value(plan.lmcache.argv, "--l2-prefetch-policy") == "retain"
    old = on_stack(schema_of(**OLD), SERVER)
    assert old.errors == []
    assert "lmcache.mp.nonblocking_lookup_status" not in kv_transfer(old)["kv_connector_extra_config"]
    assert flag_value(old.lmcache.argv, "--l2-prefetch-policy") == "retain"
    back = on_stack(new_schema(), {**SERVER, "LMCACHE_NONBLOCKING_LOOKUP": "true",
                                   "LMCACHE_L2_PREFETCH_POLICY": "default"})
    assert kv_transfer(back)["kv_connector_extra_config"]["lmcache.mp.nonblocking_lookup_status"] is True
    assert flag_value(back.lmcache.argv, "--l2-prefetch-policy") == "default"


def test_l2_prefetch_policy(on_stack):
    plan = on_stack(new_schema(), {**SERVER, "LMCACHE_L2_PREFETCH_POLICY": "Retain"})
    assert plan.errors == [] and flag_value(plan.lmcache.argv, "--l2-prefetch-policy") == "retain"


def test_server_options_are_refused_in_process(on_stack):
    plan = on_stack(new_schema(), {**SERVER, "LMCACHE_MODE": "in-process", "LMCACHE_EAGER_PREFETCH": "true",
                                   "LMCACHE_EVICTION_POLICY": "LRU"})
    assert sorted(plan.errors) == ["LMCACHE_EAGER_PREFETCH: applies in server mode only (LMCACHE_MODE=server)",
                                   "LMCACHE_EVICTION_POLICY: applies in server mode only (LMCACHE_MODE=server)"]


def test_extra_server_args_are_checked_against_the_installed_lmcache(on_stack):
    env = {**SERVER, "LMCACHE_SERVER_EXTRA_ARGS": "--isolated-ipc --max-workers=2"}
    assert on_stack(new_schema(), env).errors == []
    old = on_stack(schema_of(**OLD), env)
    assert old.errors == ["LMCACHE_SERVER_EXTRA_ARGS: --isolated-ipc: the installed LMCache 0.5.3 has no "
                          "`lmcache server --isolated-ipc` flag (docs/UPGRADING.md)"]


def test_a_flag_the_installed_lmcache_dropped_is_an_error_naming_it(on_stack):
    schema = new_schema()
    lmcache = copy.deepcopy(schema.lmcache)
    del lmcache["server_flags"]["--worker-reap-timeout-seconds"]
    lmcache["lmcache_version"] = "9.9.9"
    plan = on_stack(schema_mod.Schema(vllm=schema.vllm, lmcache=lmcache), SERVER)
    assert plan.errors == ["--worker-reap-timeout-seconds: the installed LMCache 9.9.9 has no `lmcache server "
                           "--worker-reap-timeout-seconds` flag (docs/UPGRADING.md)"]


def test_a_vllm_flag_the_installed_vllm_lacks_is_an_error_naming_it(on_stack):
    schema = new_schema()
    vllm = copy.deepcopy(schema.vllm)
    del vllm["serve_flags"]["--max-model-len"]
    vllm["vllm_version"] = "9.9.9"
    plan = on_stack(schema_mod.Schema(vllm=vllm, lmcache=schema.lmcache), {"VLLM_MAX_MODEL_LEN": "4096"})
    assert plan.errors == ["VLLM_MAX_MODEL_LEN: the installed vLLM 9.9.9 has no --max-model-len flag"]


def test_a_variable_the_new_vllm_dropped_is_an_error_naming_the_versions(on_stack):
    """VLLM_ENGINE_ITERATION_TIMEOUT_S is read by vLLM 0.26.0, not by 0.32.0 (docs/UPGRADING.md)."""
    env = {"VLLM_ENGINE_ITERATION_TIMEOUT_S": "120"}
    assert on_stack(schema_of(**OLD), env).errors == []
    (error,) = on_stack(new_schema(), env).errors
    assert error.startswith("VLLM_ENGINE_ITERATION_TIMEOUT_S: unknown variable")
    assert f"vLLM {new_schema().vllm_version} and LMCache {new_schema().lmcache_version}" in error


def test_committed_lmcache_schemas_list_the_adapter_types_the_plan_writes():
    """The generator once read LMCache 0.5.6's adapter registry before the adapters registered themselves (an
    empty list). Every committed schema must know the types the appliance renders."""
    import json

    from entrypoint.config.schema import SCHEMA_DIR
    for path in sorted(SCHEMA_DIR.glob("lmcache-*.json")):
        types = json.loads(path.read_text())["l2_adapter_types"]
        assert {"fs_native", "resp"} <= set(types), (path.name, types)


def test_lookup_workers_default_bound_and_extra_args(on_stack):
    plan = on_stack(new_schema(), SERVER)
    assert plan.errors == [] and flag_value(plan.lmcache.argv, "--max-cpu-workers") == "1"  # LMCache's own, explicit
    assert flag_value(on_stack(schema_of(**OLD), SERVER).lmcache.argv, "--max-cpu-workers") == "1"
    four = on_stack(new_schema(), {**SERVER, "LMCACHE_LOOKUP_WORKERS": "4"})
    assert four.errors == [] and flag_value(four.lmcache.argv, "--max-cpu-workers") == "4"
    assert on_stack(new_schema(), {**SERVER, "LMCACHE_LOOKUP_WORKERS": "65"}).errors == [
        "LMCACHE_LOOKUP_WORKERS='65': at most 64 (threads of one pool; more only contend for the same locks), "
        "e.g. LMCACHE_LOOKUP_WORKERS=4"]
    extra = on_stack(new_schema(), {**SERVER, "LMCACHE_SERVER_EXTRA_ARGS": "--max-cpu-workers=2"})
    assert extra.errors == ["LMCACHE_SERVER_EXTRA_ARGS: --max-cpu-workers is set by the appliance; use "
                            "LMCACHE_LOOKUP_WORKERS"]
    # --max-workers sizes both pools; the lookup pool keeps LMCACHE_LOOKUP_WORKERS (LMCache: the per-pool flag wins)
    both = on_stack(new_schema(), {**SERVER, "LMCACHE_SERVER_EXTRA_ARGS": "--max-workers 2"})
    assert both.errors == [] and flag_value(both.lmcache.argv, "--max-cpu-workers") == "1"
