"""The planning steps (config/build.py, kv_tiers.py) are functions of what they are given: each returns its
part and its problems, and none edits its inputs or another step's output."""
import copy

from entrypoint.config import build, kv_tiers, resources
from entrypoint.config import schema as schema_mod
from entrypoint.config.sources import collect

from plan_argv import flag_value

SERVER = {"VLLM_MODEL": "m", "VLLM_KV_OFFLOADING_BACKEND": "lmcache", "VLLM_KV_OFFLOADING_SIZE": "4"}


def resolved(env: dict):
    builder = build.Builder(collect(env, None, [], lambda name: False), schema_mod.load(), env, resources.Host())
    builder.secrets_from_files()
    builder.apply_registry()
    builder.classify()
    builder.resolve_settings()
    return builder.resolved()


def kv_step(s, role="all"):
    command, _ = build.vllm_command(s)
    identity, flags = build.kv_identity_of(s, command.model, command.argv)
    return kv_tiers.plan_kv_tiers(kv_tiers.KvInputs(s, command.model, identity.digest, flags, command.api_port, role))


def test_the_kv_step_leaves_the_settings_alone_and_records_lmcache_spelling_in_its_part():
    s = resolved({**SERVER, "LMCACHE_EVICTION_POLICY": "lru"})
    before = copy.deepcopy(dict(s.values))
    kv = kv_step(s)
    assert kv.errors == [] and dict(s.values) == before
    assert kv.recorded["LMCACHE_EVICTION_POLICY"] == flag_value(kv.argv, "--eviction-policy")


def test_steps_give_the_same_answer_twice():
    s = resolved(SERVER)
    assert build.vllm_command(s) == build.vllm_command(s)
    assert kv_step(s) == kv_step(s)


def test_a_kv_server_plans_the_vllm_command_but_does_not_run_it(plan_for):
    env = {**SERVER, "APPLIANCE_ROLE": "kv-server"}
    command, found = build.vllm_command(resolved(env))
    assert command.argv[1:3] == ["serve", "m"] and found.errors == []  # checked as in every role
    plan = plan_for(env)
    assert plan.errors == [] and plan.vllm.argv == [] and plan.vllm.env == {} and plan.lmcache.argv
