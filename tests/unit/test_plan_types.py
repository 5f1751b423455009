"""The typed plan (config/plan.py): every APPLIANCE_* setting reaches the supervised programs or is named as
planning-only, and the JSON plan, its read-back and its schema all come from the same fields."""
import dataclasses
import json

import jsonschema

from entrypoint.config import plan as plan_mod
from entrypoint.config.plan import (
    FROM,
    PLANNING_ONLY,
    PLANNING_ONLY_GROUPS,
    SETTING,
    AppliancePrograms,
    KvTiers,
    LmcacheServer,
    Plan,
    SharedStore,
)
from entrypoint.config.settings import BY_NAME, SETTINGS


def test_every_appliance_setting_is_a_program_field_or_planning_only():
    fields = {f.metadata[SETTING]: f.name for f in dataclasses.fields(AppliancePrograms)}
    for s in SETTINGS:
        if not s.name.startswith("APPLIANCE_"):
            continue
        planning_only = s.name in PLANNING_ONLY or s.group in PLANNING_ONLY_GROUPS
        assert (s.name in fields) != planning_only, (
            f"{s.name}: add it to AppliancePrograms (from_setting) if a supervised program reads it, else to "
            "plan.PLANNING_ONLY with what it shapes")


def test_program_fields_name_real_settings_and_take_their_defaults():
    for f in dataclasses.fields(AppliancePrograms):
        setting = BY_NAME[f.metadata[SETTING]]
        assert f.default == setting.default
        assert f.name == setting.name.removeprefix("APPLIANCE_").lower()  # grep of either finds the other
    assert set(PLANNING_ONLY) <= set(BY_NAME)


def test_derived_fields_name_the_settings_they_come_from():
    for cls in (KvTiers, SharedStore, LmcacheServer):
        for f in dataclasses.fields(cls):
            named = f.metadata.get(FROM, ()) + ((f.metadata[SETTING],) if SETTING in f.metadata else ())
            assert named and all(n in BY_NAME for n in named), (cls.__name__, f.name)


def test_a_written_plan_reads_back_equal(plan_for):
    for env in ({"VLLM_MODEL": "m", "LMCACHE_SHARED_URL": "redis://store:6379", "LMCACHE_LOCAL_DISK": "true"},
                {"VLLM_MODEL": "m", "LMCACHE_SERVER": "kv:5555"}):
        plan = plan_for(env)
        assert plan.errors == []
        again = Plan.from_dict(json.loads(json.dumps(plan.to_dict(redact=False))))
        assert again == plan
        assert again.appliance.shutdown_timeout == plan.values["APPLIANCE_SHUTDOWN_TIMEOUT"]


def test_the_json_plan_follows_the_generated_schema(plan_for):
    plan = plan_for({"VLLM_MODEL": "m", "LMCACHE_SHARED_URL": "redis://store:6379", "LMCACHE_LOCAL_DISK": "true"})
    jsonschema.validate(plan.to_dict(), plan_mod.json_schema())
    jsonschema.validate(Plan(errors=["x"]).to_dict(), plan_mod.json_schema())
