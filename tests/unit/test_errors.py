"""Every error message a user can see, word for word: bad input is reported all at once, with the fix."""
import pytest


def test_typo_in_a_variable_name_suggests_the_closest(plan_for):
    plan = plan_for({"VLLM_MAX_MODEL_LENN": "4096"})
    assert plan.errors == [
        "VLLM_MAX_MODEL_LENN: unknown variable; did you mean VLLM_MAX_MODEL_LEN? (names under VLLM_, LMCACHE_ "
        "and APPLIANCE_ must be appliance settings, vllm serve flags, or variables vLLM or LMCache read; the "
        "installed vLLM 0.32.0 and LMCache 0.5.6: see docs/ENVIRONMENT.md, docs/UPGRADING.md)"]


@pytest.mark.parametrize("name, suggestion", [
    ("LMCACHE_MAX_LOCAL_CPU_SIZ", "LMCACHE_MAX_LOCAL_CPU_SIZE"),
    ("VLLM_KV_OFFLOADING_BACKEN", "VLLM_KV_OFFLOADING_BACKEND"),
    ("APPLIANCE_HEALTH_INTERVALS", "APPLIANCE_HEALTH_INTERVAL"),
    ("VLLM_ENABLE_PREFIX_CACHNG", "VLLM_ENABLE_PREFIX_CACHING"),  # a generic vllm serve flag
    ("VLLM_LOGING_LEVEL", "VLLM_LOGGING_LEVEL"),  # a variable vLLM reads itself
])
def test_typos_in_every_namespace(plan_for, name, suggestion):
    plan = plan_for({name: "1", "VLLM_KV_OFFLOADING_BACKEND": "lmcache"})
    assert any(e.startswith(f"{name}: unknown variable; did you mean {suggestion}?") for e in plan.errors), plan.errors


def test_unknown_name_without_a_close_match(plan_for):
    plan = plan_for({"VLLM_TOTALLY_MADE_UP_THING": "1"})
    assert plan.errors[0].startswith("VLLM_TOTALLY_MADE_UP_THING: unknown variable (names under")


def test_typo_on_the_command_line_suggests_the_flag(plan_for):
    plan = plan_for({}, ["--max-model-lenn", "4096"])
    assert plan.errors == ["--max-model-lenn: unknown option; did you mean --max-model-len?"]


def test_command_line_flag_without_value(plan_for):
    plan = plan_for({}, ["--max-model-len"])
    assert plan.errors == ["command line: --max-model-len needs a value, e.g. --max-model-len VALUE"]


def test_all_problems_are_reported_in_one_run(plan_for):
    plan = plan_for({"VLLM_MAX_MODEL_LEN": "lots", "VLLM_GPU_MEMORY_UTILIZATION": "1.5", "VLLM_PORT": "70000",
                     "VLLM_KV_OFFLOADING_BACKEND": "lmcache", "VLLM_KV_OFFLOADING_SIZE": "-1",
                     "VLLM_TRUST_REMOTE_CODE": "maybe", "VLLM_TENSOR_PARALLEL_SIZE": "0",
                     "LMCACHE_MODE": "cluster"})
    assert sorted(plan.errors) == sorted([
        "LMCACHE_MODE='cluster': must be one of: server, in-process",
        "VLLM_GPU_MEMORY_UTILIZATION='1.5': must be a number in (0, 1], e.g. 0.9",
        "VLLM_KV_OFFLOADING_SIZE='-1': must be a size in GiB greater than 0, e.g. 5.0, or auto",
        "VLLM_MAX_MODEL_LEN='lots': must be a whole number (e.g. 32768 or 32k), or auto",
        "VLLM_PORT='70000': must be a port number (1-65535)",
        "VLLM_TENSOR_PARALLEL_SIZE='0': must be at least 1",
        "VLLM_TRUST_REMOTE_CODE='maybe': must be true or false (also accepted: 1/0, yes/no, on/off)",
    ])


def test_cpu_tier_given_twice_with_different_values(plan_for):
    plan = plan_for({"VLLM_KV_OFFLOADING_BACKEND": "lmcache", "VLLM_KV_OFFLOADING_SIZE": "10",
                     "LMCACHE_MAX_LOCAL_CPU_SIZE": "5.0"})
    assert plan.errors == ["VLLM_KV_OFFLOADING_SIZE=10 and LMCACHE_MAX_LOCAL_CPU_SIZE=5 describe the same CPU "
                           "tier but differ: set only one of them (or both to the same value)"]


def test_cpu_tier_given_twice_with_the_same_value_is_fine(plan_for):
    plan = plan_for({"VLLM_KV_OFFLOADING_BACKEND": "lmcache", "VLLM_KV_OFFLOADING_SIZE": "5",
                     "LMCACHE_MAX_LOCAL_CPU_SIZE": "5.0"})
    assert plan.errors == []


def test_lmcache_settings_without_the_lmcache_backend(plan_for):
    plan = plan_for({"VLLM_MODEL": "org/m", "LMCACHE_LOCAL_DISK": "true", "VLLM_KV_OFFLOADING_BACKEND": "none"})
    assert plan.errors == ["LMCACHE_LOCAL_DISK: LMCache settings take effect only with "
                           "VLLM_KV_OFFLOADING_BACKEND=lmcache (it is none); set it, or remove them"]


def test_offloading_size_without_a_backend(plan_for):
    plan = plan_for({"VLLM_MODEL": "org/m", "VLLM_KV_OFFLOADING_SIZE": "5", "VLLM_KV_OFFLOADING_BACKEND": "none"})
    assert plan.errors == ["VLLM_KV_OFFLOADING_SIZE is set but VLLM_KV_OFFLOADING_BACKEND is none: set "
                           "VLLM_KV_OFFLOADING_BACKEND=lmcache (or native), or remove VLLM_KV_OFFLOADING_SIZE"]


def test_flags_the_appliance_owns_are_refused(plan_for):
    plan = plan_for({"VLLM_KV_TRANSFER_CONFIG": '{"kv_connector":"X"}', "VLLM_SHUTDOWN_TIMEOUT": "5",
                     "VLLM_EXTRA_ARGS": "--kv-offloading-backend lmcache"})
    assert sorted(plan.errors) == [
        "VLLM_EXTRA_ARGS: --kv-offloading-backend is set by the appliance; use VLLM_KV_OFFLOADING_BACKEND",
        "VLLM_KV_TRANSFER_CONFIG: --kv-transfer-config is set by the appliance; the appliance writes it from "
        "VLLM_KV_OFFLOADING_BACKEND; set VLLM_KV_OFFLOADING_BACKEND=none to pass your own",
        "VLLM_SHUTDOWN_TIMEOUT: --shutdown-timeout is set by the appliance; use APPLIANCE_SHUTDOWN_TIMEOUT, "
        "which also sizes supervisord's stop wait",
    ]


def test_generic_flag_types_come_from_the_installed_vllm(plan_for):
    plan = plan_for({"VLLM_MAX_NUM_SEQS": "many", "VLLM_KV_CACHE_DTYPE": "fp7",
                     "VLLM_COMPILATION_CONFIG": "{not json", "VLLM_ENABLE_PREFIX_CACHING": "perhaps"})
    assert sorted(plan.errors) == sorted([
        "VLLM_COMPILATION_CONFIG='{not json': is not valid JSON (Expecting property name enclosed in double "
        "quotes at column 2)",
        "VLLM_ENABLE_PREFIX_CACHING='perhaps': must be true or false (also accepted: 1/0, yes/no, on/off)",
        "VLLM_MAX_NUM_SEQS='many': must be a whole number",
        next(e for e in plan.errors if e.startswith("VLLM_KV_CACHE_DTYPE='fp7': must be one of: ")),
    ])
    assert "fp8" in next(e for e in plan.errors if e.startswith("VLLM_KV_CACHE_DTYPE"))


def test_unknown_tool_call_parser(plan_for):
    plan = plan_for({"VLLM_MODEL": "org/m", "VLLM_TOOL_CALL_PARSER": "gigachat4"})
    assert plan.errors[0].startswith("VLLM_TOOL_CALL_PARSER='gigachat4': is not a tool-call parser of the "
                                     "installed vLLM; valid: ")
    assert "gigachat3" in plan.errors[0]


def test_auto_tool_choice_needs_a_parser(plan_for):
    plan = plan_for({"VLLM_MODEL": "org/m", "VLLM_ENABLE_AUTO_TOOL_CHOICE": "true"})
    assert plan.errors == ["VLLM_ENABLE_AUTO_TOOL_CHOICE=true needs VLLM_TOOL_CALL_PARSER (vLLM refuses to "
                           "start without it), e.g. VLLM_TOOL_CALL_PARSER=hermes"]


def test_server_mode_rejects_in_process_only_keys(plan_for):
    plan = plan_for({"VLLM_KV_OFFLOADING_BACKEND": "lmcache", "LMCACHE_USE_LAYERWISE": "true"})
    assert plan.errors == ["LMCACHE_USE_LAYERWISE: applies in in-process mode only (LMCACHE_MODE=in-process); "
                           "the LMCache server takes extra options from LMCACHE_SERVER_EXTRA_ARGS"]


def test_server_mode_always_has_a_cpu_tier(plan_for):
    plan = plan_for({"VLLM_KV_OFFLOADING_BACKEND": "lmcache", "LMCACHE_LOCAL_CPU": "false"})
    assert plan.errors == ["LMCACHE_LOCAL_CPU=false: the LMCache server always keeps a CPU tier; for a "
                           "disk-only cache set LMCACHE_MODE=in-process"]


def test_lmcache_key_of_the_wrong_type(plan_for):
    plan = plan_for({"VLLM_KV_OFFLOADING_BACKEND": "lmcache", "LMCACHE_MODE": "in-process",
                     "LMCACHE_BLEND_MIN_TOKENS": "some"})
    assert plan.errors == ["LMCACHE_BLEND_MIN_TOKENS='some': must be of type int (LMCache config key "
                           "blend_min_tokens)"]


@pytest.mark.parametrize("value", ["relative/dir", "cache"])
def test_disk_tier_must_be_absolute(plan_for, value):
    plan = plan_for({"VLLM_KV_OFFLOADING_BACKEND": "lmcache", "LMCACHE_LOCAL_DISK": value})
    assert plan.errors == [f"LMCACHE_LOCAL_DISK={value!r}: must be an absolute path, a file:// URL, true (the "
                           "image's volume) or false, e.g. LMCACHE_LOCAL_DISK=true"]


def test_ports_must_differ(plan_for):
    plan = plan_for({"VLLM_KV_OFFLOADING_BACKEND": "lmcache", "VLLM_PORT": "5555"})
    assert plan.errors == ["VLLM_PORT=5555 and APPLIANCE_LMCACHE_PORT=5555: must differ (one port, one listener)"]


def test_secret_and_its_file_both_set(tmp_path, plan_for):
    secret = tmp_path / "key"
    secret.write_text("sk-file\n")
    plan = plan_for({"VLLM_API_KEY": "sk-env", "VLLM_API_KEY_FILE": str(secret)})
    assert plan.errors == ["VLLM_API_KEY and VLLM_API_KEY_FILE are both set: set only one of them"]


def test_unreadable_secret_file(plan_for):
    plan = plan_for({"HF_TOKEN_FILE": "/nonexistent/token"})
    assert plan.errors == ["HF_TOKEN_FILE='/nonexistent/token': cannot read the file (No such file or "
                           "directory); mount it or fix the path"]


def test_bad_registry_file(tmp_path, plan_for):
    reg = tmp_path / "models.json"
    reg.write_text('["not", "an", "object"]')
    plan = plan_for({"APPLIANCE_MODEL_REGISTRY_FILE": str(reg)})
    assert plan.errors == [f"APPLIANCE_MODEL_REGISTRY_FILE={str(reg)!r}: must be a JSON object of model id -> "
                           'object, e.g. {"org/model": {"max_model_len": 8192}}']


def test_registry_entry_with_an_unknown_key(tmp_path, plan_for):
    reg = tmp_path / "models.json"
    reg.write_text('{"org/m": {"max_model_lenn": 8192}}')
    plan = plan_for({"APPLIANCE_MODEL_REGISTRY_FILE": str(reg), "VLLM_MODEL": "org/m"})
    assert plan.errors == ["model registry entry 'org/m': 'max_model_lenn' is not a setting (it would be "
                           "VLLM_MAX_MODEL_LENN)"]


def test_missing_env_file(plan_for):
    plan = plan_for({}, env_file="/nonexistent/.env")
    assert plan.errors == ["--env-file /nonexistent/.env: cannot read the file (No such file or directory); "
                           "mount it or fix the path"]


def test_in_process_mode_renders_its_own_config_file(plan_for):
    plan = plan_for({"VLLM_KV_OFFLOADING_BACKEND": "lmcache", "LMCACHE_MODE": "in-process",
                     "LMCACHE_CONFIG_FILE": "/etc/lmcache.yaml"})
    assert plan.errors == ["LMCACHE_CONFIG_FILE: the appliance renders LMCache's config file itself; set its "
                           "keys as LMCACHE_<KEY> variables instead (docs/ENVIRONMENT.md)"]
