"""The user's document (cmw-vllm): its three configuration methods, two examples and LMCACHE_* variables."""
import json

from plan_argv import flag_value, kv_transfer


def write_env(tmp_path, text):
    path = tmp_path / ".env"
    path.write_text(text)
    return str(path)


def test_method1_env_file_with_inline_comments(tmp_path, plan_for):
    env_file = write_env(tmp_path, (
        "# LMCache KV cache offloading\n"
        "VLLM_KV_OFFLOADING_BACKEND=lmcache\n"
        "VLLM_KV_OFFLOADING_SIZE=5.0  # Size in GB for CPU cache\n"
        "VLLM_DISABLE_HYBRID_KV_CACHE_MANAGER=true  # Required for LMCache\n"))
    plan = plan_for(env_file=env_file)
    assert plan.errors == []
    assert plan.lmcache.mode == "server"
    assert flag_value(plan.lmcache.argv, "--l1-size-gb") == "5"
    assert "--disable-hybrid-kv-cache-manager" in plan.vllm.argv
    assert kv_transfer(plan)["kv_connector"] == "LMCacheMPConnector"
    # vLLM >= 0.23 reads --kv-offloading-backend lmcache as "connect to a server" and ignores the size:
    # the appliance must never pass it through.
    assert "--kv-offloading-backend" not in plan.vllm.argv
    assert plan.sources["VLLM_KV_OFFLOADING_SIZE"] == "env file"


def test_method2_model_registry(plan_for):
    plan = plan_for({"VLLM_MODEL": "ai-sage/GigaChat3-10B-A1.8B-bf16"})
    assert plan.errors == []
    assert flag_value(plan.vllm.argv, "--max-model-len") == "128000"
    assert flag_value(plan.vllm.argv, "--tool-call-parser") == "gigachat3"
    assert "--disable-hybrid-kv-cache-manager" in plan.vllm.argv
    assert flag_value(plan.lmcache.argv, "--l1-size-gb") == "5"
    assert plan.sources["VLLM_MAX_MODEL_LEN"] == "registry"
    assert plan.sources["VLLM_MODEL"] == "environment"


def test_registry_is_under_the_environment(plan_for):
    plan = plan_for({"VLLM_MODEL": "ai-sage/GigaChat3-10B-A1.8B-bf16", "VLLM_MAX_MODEL_LEN": "64000"})
    assert flag_value(plan.vllm.argv, "--max-model-len") == "64000"
    assert plan.sources["VLLM_MAX_MODEL_LEN"] == "environment"


def test_method3_command_line_overrides(plan_for):
    plan = plan_for({"VLLM_MODEL": "org/some-model"},
                    ["--kv-offloading-backend", "lmcache", "--kv-offloading-size", "5.0",
                     "--disable-hybrid-kv-cache-manager"])
    assert plan.errors == []
    assert plan.lmcache.mode == "server"
    assert flag_value(plan.lmcache.argv, "--l1-size-gb") == "5"
    assert "--kv-offloading-backend" not in plan.vllm.argv
    assert "--disable-hybrid-kv-cache-manager" in plan.vllm.argv
    assert plan.sources["VLLM_KV_OFFLOADING_BACKEND"] == "command line"


def test_command_line_beats_environment(plan_for):
    plan = plan_for({"VLLM_MAX_MODEL_LEN": "8192"}, ["--max-model-len=4096", "--no-enable-prefix-caching"])
    assert flag_value(plan.vllm.argv, "--max-model-len") == "4096"
    assert "--no-enable-prefix-caching" in plan.vllm.argv


def test_example1_long_context(tmp_path, plan_for):
    env_file = write_env(tmp_path, (
        "# .env\nVLLM_MODEL=ai-sage/GigaChat3-10B-A1.8B-bf16\nVLLM_MAX_MODEL_LEN=128000\n"
        "VLLM_KV_OFFLOADING_BACKEND=lmcache\nVLLM_KV_OFFLOADING_SIZE=10.0  # 10GB CPU cache\n"
        "VLLM_DISABLE_HYBRID_KV_CACHE_MANAGER=true\n"))
    plan = plan_for(env_file=env_file)
    assert plan.errors == []
    assert plan.vllm.argv[:3] == ["vllm", "serve", "ai-sage/GigaChat3-10B-A1.8B-bf16"]
    assert flag_value(plan.lmcache.argv, "--l1-size-gb") == "10"  # the env file beats the registry's 5
    assert flag_value(plan.vllm.argv, "--max-model-len") == "128000"


def test_example2_multi_round(plan_for):
    plan = plan_for({"VLLM_KV_OFFLOADING_BACKEND": "lmcache", "VLLM_KV_OFFLOADING_SIZE": "5.0"})
    assert plan.errors == []
    assert flag_value(plan.lmcache.argv, "--l1-size-gb") == "5"
    assert kv_transfer(plan)["kv_connector_extra_config"] == {"lmcache.mp.host": "tcp://127.0.0.1",
                                                            "lmcache.mp.port": 5555,
                                                            "lmcache.mp.heartbeat_interval": 5,
                                                            "lmcache.mp.mq_timeout": 30.0,
                                                            "lmcache.mp.nonblocking_lookup_status": False,
                                                            "appliance.kv_identity": plan.kv_identity,
                                                            "appliance.skip_useless_lookup": False}
    # a load from a dead LMCache server is recomputed, not an error (docs/RESILIENCE.md)
    assert kv_transfer(plan)["kv_load_failure_policy"] == "recompute"
    # a dead vLLM's GPU memory is released by the server after 30 s (LMCache's default is 120 s)
    assert flag_value(plan.lmcache.argv, "--worker-reap-timeout-seconds") == "30"


def test_advanced_lmcache_variables_cpu_and_disk(plan_for):
    plan = plan_for({"VLLM_KV_OFFLOADING_BACKEND": "lmcache", "LMCACHE_LOCAL_CPU": "True",
                     "LMCACHE_MAX_LOCAL_CPU_SIZE": "5.0", "LMCACHE_LOCAL_DISK": "True",
                     "LMCACHE_MAX_LOCAL_DISK_SIZE": "50.0"})
    assert plan.errors == []
    assert flag_value(plan.lmcache.argv, "--l1-size-gb") == "5"
    adapter = json.loads(flag_value(plan.lmcache.argv, "--l2-adapter"))
    assert adapter["type"] == "fs_native"
    assert adapter["max_capacity_gb"] == 50.0
    assert adapter["eviction"] == {"eviction_policy": "LRU", "trigger_watermark": 0.8, "eviction_ratio": 0.2}
    assert adapter["base_path"] == plan.lmcache.disk.path
    assert plan.lmcache.disk.path.startswith("/var/lib/appliance/kv-disk/Qwen--Qwen3-0.6B__")
    assert sorted(n for n in plan.vllm.env_removed if n.startswith("LMCACHE_")) == [
        "LMCACHE_LOCAL_CPU", "LMCACHE_LOCAL_DISK", "LMCACHE_MAX_LOCAL_CPU_SIZE", "LMCACHE_MAX_LOCAL_DISK_SIZE"]


def test_cpu_offload_gb_is_translated_with_a_migration_warning(plan_for):
    plan = plan_for({"VLLM_CPU_OFFLOAD_GB": "4", "VLLM_API_KEY": "sk-test"})
    assert plan.errors == []
    assert flag_value(plan.vllm.argv, "--cpu-offload-gb") == "4"
    assert plan.warnings == [
        "VLLM_CPU_OFFLOAD_GB=4 offloads model weights to CPU RAM, not the KV cache (vllm --cpu-offload-gb; "
        "deprecated here). To offload the KV cache instead: remove VLLM_CPU_OFFLOAD_GB and set "
        "VLLM_KV_OFFLOADING_BACKEND=lmcache and VLLM_KV_OFFLOADING_SIZE=<GiB>."]
