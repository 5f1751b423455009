"""One step further than parsing: vLLM builds its whole VllmConfig from the plan's argv, on the CPU platform.

This is where vLLM checks flags against each other and against the model (KVTransferConfig, cache and
parallel configs, max_model_len against the model's context). It needs the model's config.json, not its
weights: a Llama-3.2-1B-shaped config (conftest.local_model). Cases whose flags only make sense on a GPU
(fp8 KV cache, CUDA graph sizes) stay in test_plans.py, which stops at the parser and engine arguments.
"""
from __future__ import annotations

import pytest

from entrypoint.config.load import make_plan

from .parsers import parse_serve_argv

DISK = "/tmp/appliance-contract/kv-disk"

CASES = {
    "no-offloading": {"VLLM_KV_OFFLOADING_BACKEND": "none"},
    "lmcache-server-disk": {"VLLM_KV_OFFLOADING_BACKEND": "lmcache", "VLLM_KV_OFFLOADING_SIZE": "6",
                            "LMCACHE_LOCAL_DISK": DISK, "APPLIANCE_LMCACHE_PORT": "6100",
                            "VLLM_DISABLE_HYBRID_KV_CACHE_MANAGER": "true"},
    "lmcache-in-process-tp2": {"VLLM_KV_OFFLOADING_BACKEND": "lmcache", "LMCACHE_MODE": "in-process",
                               "LMCACHE_LOCAL_DISK": DISK, "VLLM_TENSOR_PARALLEL_SIZE": "2"},
    "native": {"VLLM_KV_OFFLOADING_BACKEND": "native", "VLLM_KV_OFFLOADING_SIZE": "3"},
    "generic-flags": {"VLLM_KV_OFFLOADING_BACKEND": "none", "VLLM_ENABLE_PREFIX_CACHING": "false",
                      "VLLM_SERVED_MODEL_NAME": "alpha beta",
                      "VLLM_MAX_NUM_SEQS": "32", "VLLM_MAX_NUM_BATCHED_TOKENS": "8192", "VLLM_DTYPE": "bfloat16",
                      "VLLM_GPU_MEMORY_UTILIZATION": "0.8", "VLLM_SEED": "11", "VLLM_TOOL_CALL_PARSER": "llama3_json",
                      "VLLM_ENABLE_AUTO_TOOL_CHOICE": "true", "VLLM_EXTRA_ARGS": "--max-logprobs 5"},
}


@pytest.mark.parametrize("name", list(CASES))
def test_vllm_builds_its_engine_config_from_the_plan(name, serve_parser, local_model):
    env = {"VLLM_MODEL": local_model, "VLLM_MAX_MODEL_LEN": "4096", **CASES[name]}
    plan = make_plan(None, [], env)
    assert plan.errors == [], plan.errors
    parsed = parse_serve_argv(serve_parser, plan.vllm.argv)
    config = parsed.engine_args.create_engine_config()

    assert config.model_config.model == local_model
    assert config.model_config.max_model_len == 4096
    assert config.parallel_config.tensor_parallel_size == plan.values["VLLM_TENSOR_PARALLEL_SIZE"]
    kv = config.kv_transfer_config
    if plan.lmcache.mode == "server":
        assert kv.kv_connector == "LMCacheMPConnector" and kv.is_kv_transfer_instance
        assert kv.get_from_extra_config("lmcache.mp.port", None) == 6100
        assert kv.get_from_extra_config("lmcache.mp.host", None) == "tcp://127.0.0.1"
        assert config.cache_config.kv_offloading_size is None  # vLLM's own offloading stays off
    elif plan.lmcache.mode == "in-process":
        assert kv.kv_connector == "LMCacheConnectorV1" and kv.is_kv_transfer_instance
        assert config.scheduler_config.disable_hybrid_kv_cache_manager  # vLLM turns it off for this connector
    elif plan.lmcache.mode == "native":
        # vLLM turns --kv-offloading-backend native into its OffloadingConnector sized from the flag.
        assert kv.kv_connector == "OffloadingConnector"
        assert config.cache_config.kv_offloading_backend == "native"
        assert config.cache_config.kv_offloading_size == 3.0
    else:
        assert kv is None
    if name == "generic-flags":
        assert config.cache_config.enable_prefix_caching is False
        assert config.model_config.served_model_name == "alpha"  # the first name (vLLM keeps one here)
        assert parsed.engine_args.served_model_name == ["alpha", "beta"]
        assert config.scheduler_config.max_num_seqs == 32
        assert config.scheduler_config.max_num_batched_tokens == 8192
        assert str(config.model_config.dtype) == "torch.bfloat16"
        assert config.cache_config.gpu_memory_utilization == 0.8
        assert config.model_config.seed == 11
        assert config.model_config.max_logprobs == 5
