"""Settings -> Plan translation: vLLM argv and environment, LMCache server argv / in-process config."""
import json

import pytest

from entrypoint.config import models, schema
from entrypoint.config.kv_tiers import disk_namespace
from entrypoint.config.settings import BY_NAME, SETTINGS

from plan_argv import flag_value, kv_transfer


def test_defaults_serve_the_embedded_model_with_lmcache(plan_for):
    plan = plan_for({"VLLM_API_KEY": "sk-test"})  # without a key, a warning (test_security.py)
    assert plan.errors == [] and plan.warnings == []
    assert plan.vllm.argv[:3] == ["vllm", "serve", "Qwen/Qwen3-0.6B"]
    assert flag_value(plan.vllm.argv, "--host") == "0.0.0.0"
    assert flag_value(plan.vllm.argv, "--port") == "8000"
    assert flag_value(plan.vllm.argv, "--shutdown-timeout") == "30"
    assert plan.lmcache.mode == "server"
    assert plan.lmcache.argv[:2] == ["lmcache", "server"]
    assert plan.lmcache.health_url == "http://127.0.0.1:8080/healthcheck"
    assert plan.lmcache.disk is None


def test_vllm_port_becomes_the_api_port_and_never_reaches_vllm(plan_for):
    plan = plan_for({"VLLM_PORT": "9000", "VLLM_HOST": "127.0.0.1"})
    assert flag_value(plan.vllm.argv, "--port") == "9000"
    assert plan.api_port == 9000
    assert "VLLM_PORT" in plan.vllm.env_removed and "VLLM_PORT" not in plan.vllm.env
    assert "VLLM_HOST" in plan.vllm.env_removed


def test_environment_wins_over_env_file(tmp_path, plan_for):
    env_file = tmp_path / ".env"
    env_file.write_text("VLLM_MAX_MODEL_LEN=1000\nVLLM_DTYPE=half\nHF_HOME=/models\n")
    plan = plan_for({"VLLM_MAX_MODEL_LEN": "2000"}, env_file=str(env_file))
    assert flag_value(plan.vllm.argv, "--max-model-len") == "2000"
    assert flag_value(plan.vllm.argv, "--dtype") == "half"
    assert plan.sources["VLLM_MAX_MODEL_LEN"] == "environment"
    assert plan.sources["VLLM_DTYPE"] == "env file"
    assert plan.vllm.env["HF_HOME"] == "/models"  # other variables of the file reach vLLM unchanged


def test_empty_values_mean_unset(plan_for):
    plan = plan_for({"VLLM_MAX_MODEL_LEN": "", "VLLM_MODEL": "org/m"})
    assert plan.errors == [] and "--max-model-len" not in plan.vllm.argv


def test_vllm_own_variables_pass_through(plan_for):
    plan = plan_for({"VLLM_LOGGING_LEVEL": "DEBUG", "VLLM_ENGINE_READY_TIMEOUT_S": "1200"})
    assert plan.vllm.env == {"VLLM_LOGGING_LEVEL": "DEBUG", "VLLM_ENGINE_READY_TIMEOUT_S": "1200",
                             "APPLIANCE_KV_IDENTITY": plan.kv_identity}  # for GET /appliance/kv-identity
    assert plan.vllm.env_removed == []
    assert plan.sources["VLLM_LOGGING_LEVEL"] == "environment"


@pytest.mark.parametrize("env, expected", [
    ({"VLLM_ENABLE_PREFIX_CACHING": "false"}, ["--no-enable-prefix-caching"]),
    ({"VLLM_ENABLE_PREFIX_CACHING": "YES"}, ["--enable-prefix-caching"]),
    ({"VLLM_TRUST_REMOTE_CODE": "1"}, ["--trust-remote-code"]),
    ({"VLLM_SERVED_MODEL_NAME": "chat assistant"}, ["--served-model-name", "chat", "assistant"]),
    ({"VLLM_MAX_NUM_SEQS": "64"}, ["--max-num-seqs", "64"]),
    ({"VLLM_MAX_NUM_BATCHED_TOKENS": "16k"}, ["--max-num-batched-tokens", "16k"]),
    ({"VLLM_KV_CACHE_DTYPE": "FP8"}, ["--kv-cache-dtype", "fp8"]),
    ({"VLLM_COMPILATION_CONFIG": '{"level": 0}'}, ["--compilation-config", '{"level": 0}']),
    ({"VLLM_EXTRA_ARGS": "--seed 7 --enforce-eager"}, ["--seed", "7", "--enforce-eager"]),
    ({"VLLM_MAX_MODEL_LEN": "32k"}, ["--max-model-len", "32000"]),  # vLLM's own reading: k is x1000
    ({"VLLM_MAX_MODEL_LEN": "auto"}, ["--max-model-len", "auto"]),
])
def test_generic_flags(plan_for, env, expected):
    name = next(iter(env))
    plan = plan_for({"VLLM_MODEL": "org/m", **env})
    assert plan.errors == []
    joined = " ".join(plan.vllm.argv)
    assert " ".join(expected) in joined
    assert plan.sources[name] == "environment"


def test_flags_after_serve_accept_vllm_syntax(plan_for):
    plan = plan_for({"VLLM_KV_OFFLOADING_BACKEND": "lmcache"},
                    ["org/model", "--enforce-eager", "--max-num-seqs=8", "--lmcache-chunk-size", "512",
                     "--", "--seed", "3"])
    assert plan.errors == []
    assert plan.vllm.argv[2] == "org/model"
    assert "--enforce-eager" in plan.vllm.argv
    assert flag_value(plan.vllm.argv, "--max-num-seqs") == "8"
    assert flag_value(plan.lmcache.argv, "--chunk-size") == "512"
    assert plan.vllm.argv[-2:] == ["--seed", "3"]


def test_in_process_mode(plan_for):
    plan = plan_for({"VLLM_KV_OFFLOADING_BACKEND": "lmcache", "LMCACHE_MODE": "in-process",
                     "VLLM_KV_OFFLOADING_SIZE": "20", "VLLM_TENSOR_PARALLEL_SIZE": "2",
                     "LMCACHE_LOCAL_DISK": "file:///cache/kv/", "LMCACHE_MAX_LOCAL_DISK_SIZE": "100",
                     "LMCACHE_USE_LAYERWISE": "true", "APPLIANCE_RUN_DIR": "/tmp/run", "VLLM_HOST": "127.0.0.1"})
    assert plan.errors == []
    assert plan.lmcache.argv is None
    assert kv_transfer(plan) == {"kv_connector": "LMCacheConnectorV1", "kv_role": "kv_both",
                                 "kv_load_failure_policy": "recompute"}
    assert plan.lmcache.config == {
        "chunk_size": 256, "local_cpu": True, "max_local_cpu_size": 10.0,  # 20 GiB over 2 workers
        "pre_caching_hash_algorithm": "sha256_cbor",
        "local_disk": f"file://{plan.lmcache.disk.path}/", "max_local_disk_size": 50.0, "use_layerwise": True}
    assert plan.lmcache.disk.path.startswith("/cache/kv/Qwen--Qwen3-0.6B__")
    assert plan.vllm.env["LMCACHE_CONFIG_FILE"] == "/tmp/run/lmcache.yaml"
    assert plan.vllm.env["PYTHONHASHSEED"] == "0"
    assert "LMCACHE_USE_LAYERWISE" in plan.vllm.env_removed  # it is in the config file instead
    assert plan.warnings == ["LMCACHE_MODE=in-process keeps its disk-tier index in memory: after a restart "
                             "the files on disk are not reused. LMCACHE_MODE=server reuses them."]


def test_native_backend(plan_for):
    plan = plan_for({"VLLM_KV_OFFLOADING_BACKEND": "native", "VLLM_KV_OFFLOADING_SIZE": "8"})
    assert plan.errors == []
    assert plan.lmcache.mode == "native"
    assert plan.vllm.argv[-4:] == ["--kv-offloading-backend", "native", "--kv-offloading-size", "8"]
    assert plan.lmcache.argv is None


def test_backend_none_turns_the_registry_offloading_off(plan_for):
    plan = plan_for({"VLLM_KV_OFFLOADING_BACKEND": "none"})
    assert plan.errors == [] and plan.lmcache.mode is None
    assert "--kv-transfer-config" not in plan.vllm.argv


def test_lmcache_passthrough_variables_reach_both_processes(plan_for):
    plan = plan_for({"VLLM_KV_OFFLOADING_BACKEND": "lmcache", "LMCACHE_LOG_LEVEL": "DEBUG"})
    assert plan.errors == []
    assert plan.lmcache.env == {"LMCACHE_LOG_LEVEL": "DEBUG"}
    assert plan.vllm.env["LMCACHE_LOG_LEVEL"] == "DEBUG"


def test_server_mode_ports_and_extra_args(plan_for):
    plan = plan_for({"VLLM_KV_OFFLOADING_BACKEND": "lmcache", "APPLIANCE_LMCACHE_PORT": "6000",
                     "APPLIANCE_LMCACHE_HTTP_PORT": "6001", "LMCACHE_SERVER_EXTRA_ARGS": "--max-workers 4",
                     "APPLIANCE_LMCACHE_COMMAND": "python3 -m lmcache.cli.main"})
    assert plan.lmcache.argv[:5] == ["python3", "-m", "lmcache.cli.main", "server", "--host"]
    assert flag_value(plan.lmcache.argv, "--port") == "6000"
    assert flag_value(plan.lmcache.argv, "--http-port") == "6001"
    assert plan.lmcache.argv[-2:] == ["--max-workers", "4"]
    assert kv_transfer(plan)["kv_connector_extra_config"]["lmcache.mp.port"] == 6000


@pytest.mark.parametrize("raw, expected_base", [
    ("true", "/var/lib/appliance/kv-disk"), ("1", "/var/lib/appliance/kv-disk"),
    ("/data/kv", "/data/kv"), ("file:///data/kv/", "/data/kv")])
def test_disk_tier_forms(plan_for, raw, expected_base):
    plan = plan_for({"VLLM_KV_OFFLOADING_BACKEND": "lmcache", "LMCACHE_LOCAL_DISK": raw})
    assert plan.errors == []
    assert plan.lmcache.disk.base == expected_base
    assert plan.lmcache.disk.max_size_gib == 50.0


@pytest.mark.parametrize("raw", ["false", "", "no"])
def test_disk_tier_off(plan_for, raw):
    plan = plan_for({"VLLM_KV_OFFLOADING_BACKEND": "lmcache", "LMCACHE_LOCAL_DISK": raw})
    assert plan.errors == [] and plan.lmcache.disk is None and "--l2-adapter" not in plan.lmcache.argv


def test_disk_namespace_names_the_kv_identity():
    """Everything that changes KV is in the identity (tests/unit/test_kv_identity.py); the name keeps the model
    and the LMCache version readable."""
    assert disk_namespace("org/m", "0123456789abcdef", "0.5.6") == "org--m__kv-0123456789abcdef__lmcache-0.5.6"
    assert disk_namespace("org/m", "fedcba9876543210", "0.5.6") != disk_namespace("org/m", "0123456789abcdef", "0.5.6")
    local = disk_namespace("/models/my model", "0123456789abcdef", "0.5.6")
    assert "/" not in local and " " not in local


def test_secrets_are_redacted_everywhere_they_are_printed(tmp_path, plan_for):
    token = tmp_path / "token"
    token.write_text("hf_secret_token\n")
    plan = plan_for({"VLLM_API_KEY": "sk-very-secret", "HF_TOKEN_FILE": str(token),
                     "VLLM_EXTRA_ARGS": "--hf-token sk-other"})  # with VLLM_API_KEY, --api-key is an error
    assert plan.errors == []
    assert plan.vllm.env["VLLM_API_KEY"] == "sk-very-secret"  # the real value reaches vLLM
    assert plan.vllm.env["HF_TOKEN"] == "hf_secret_token"
    printed = json.dumps(plan.to_dict())
    for secret in ("sk-very-secret", "hf_secret_token", "sk-other"):
        assert secret not in printed
    assert plan.to_dict()["vllm"]["env"]["VLLM_API_KEY"] == "***"
    assert "HF_TOKEN_FILE" in plan.vllm.env_removed


def test_registry_file_adds_models(tmp_path, plan_for):
    reg = tmp_path / "models.json"
    reg.write_text(json.dumps({"org/mine": {"max_model_len": 8192, "enable_prefix_caching": False}}))
    plan = plan_for({"APPLIANCE_MODEL_REGISTRY_FILE": str(reg), "VLLM_MODEL": "org/mine"})
    assert plan.errors == []
    assert flag_value(plan.vllm.argv, "--max-model-len") == "8192"
    assert "--no-enable-prefix-caching" in plan.vllm.argv
    assert plan.sources["VLLM_ENABLE_PREFIX_CACHING"] == "registry"


def test_every_builtin_registry_entry_builds_a_valid_plan(plan_for):
    for model in models.MODEL_REGISTRY:
        plan = plan_for({"VLLM_MODEL": model})
        assert plan.errors == [], (model, plan.errors)


def test_registry_plan_round_trips_through_json(plan_for):
    from entrypoint.config.plan import Plan
    plan = plan_for({"VLLM_KV_OFFLOADING_BACKEND": "lmcache", "LMCACHE_LOCAL_DISK": "/d"})
    again = Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again.to_dict() == plan.to_dict()


def test_settings_table_is_consistent():
    flags = schema.load().serve_flags
    for s in SETTINGS:
        assert s.doc.endswith((".", ")")), s.name
        assert s.name.startswith(("VLLM_", "LMCACHE_", "APPLIANCE_", "HF_")), s.name
        if s.flag:
            assert s.flag in flags, f"{s.name}: {s.flag} is not a flag of the pinned vLLM"
        if s.kind == "choice":
            assert s.choices
    assert BY_NAME["VLLM_DTYPE"].choices == tuple(flags["--dtype"]["choices"][i] for i in range(6)) or \
        set(BY_NAME["VLLM_DTYPE"].choices) == set(flags["--dtype"]["choices"])


def test_every_kind_of_setting_has_its_parser():
    from entrypoint.config.settings import PARSERS, SETTINGS

    assert sorted({s.kind for s in SETTINGS} - set(PARSERS)) == []
