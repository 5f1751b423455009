"""Model registry: per-model defaults, applied under the environment (the environment always wins).

Keys are the lower-case names of appliance variables without the `VLLM_` prefix, as in cmw-vllm's
`model_registry.py` ("max_model_len" is VLLM_MAX_MODEL_LEN); any `vllm serve` flag works the same way
("enable_prefix_caching" is VLLM_ENABLE_PREFIX_CACHING). Operators add or override entries without
rebuilding the image with APPLIANCE_MODEL_REGISTRY_FILE (a JSON file of the same shape).
"""
from __future__ import annotations

import json

from .files import REGISTRY_FILE_LIMIT, read_bounded

MODEL_REGISTRY: dict[str, dict[str, object]] = {
    # The seed's entry (cmw-vllm): long context with LMCache offloading.
    "ai-sage/GigaChat3-10B-A1.8B-bf16": {
        "max_model_len": 128000,
        "kv_offloading_backend": "lmcache",
        "kv_offloading_size": 5.0,
        "disable_hybrid_kv_cache_manager": True,
        "tool_call_parser": "gigachat3",
        "enable_auto_tool_choice": True,
    },
    # The embedded default: small enough for any recent NVIDIA GPU, with the CPU tier on.
    "Qwen/Qwen3-0.6B": {
        "max_model_len": 32768,
        "kv_offloading_backend": "lmcache",
        "kv_offloading_size": 4.0,
        "tool_call_parser": "hermes",
        "enable_auto_tool_choice": True,
    },
    "Qwen/Qwen3-8B": {
        "max_model_len": 32768,
        "kv_offloading_backend": "lmcache",
        "kv_offloading_size": 20.0,
        "tool_call_parser": "hermes",
        "enable_auto_tool_choice": True,
    },
    "Qwen/Qwen2.5-7B-Instruct": {
        "max_model_len": 32768,
        "kv_offloading_backend": "lmcache",
        "kv_offloading_size": 20.0,
        "tool_call_parser": "hermes",
        "enable_auto_tool_choice": True,
    },
    "meta-llama/Llama-3.1-8B-Instruct": {
        "max_model_len": 131072,
        "kv_offloading_backend": "lmcache",
        "kv_offloading_size": 20.0,
        "tool_call_parser": "llama3_json",
        "enable_auto_tool_choice": True,
    },
    "mistralai/Mistral-7B-Instruct-v0.3": {
        "max_model_len": 32768,
        "kv_offloading_backend": "lmcache",
        "kv_offloading_size": 20.0,
        "tool_call_parser": "mistral",
        "enable_auto_tool_choice": True,
        "tokenizer_mode": "mistral",
    },
    "openai/gpt-oss-20b": {
        "max_model_len": 131072,
        "kv_offloading_backend": "lmcache",
        "kv_offloading_size": 20.0,
        "tool_call_parser": "openai",
        "enable_auto_tool_choice": True,
    },
}


def registry_env_name(key: str) -> str:
    """"max_model_len" -> "VLLM_MAX_MODEL_LEN" (keys are written without the prefix, as in the seed);
    "lmcache_chunk_size" -> "LMCACHE_CHUNK_SIZE"."""
    if key.lower().startswith(("lmcache_", "appliance_")):
        return key.upper()
    return "VLLM_" + key.upper()


def load_registry(extra_file: str | None) -> dict[str, dict[str, object]]:
    """The built-in registry, with the entries of an operator's JSON file merged over it."""
    registry = {model: dict(entry) for model, entry in MODEL_REGISTRY.items()}
    if extra_file:
        data = json.loads(read_bounded(extra_file, REGISTRY_FILE_LIMIT))
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise ValueError('must be a JSON object of model id -> object, e.g. {"org/model": {"max_model_len": 8192}}')
        for model, entry in data.items():
            registry.setdefault(model, {}).update(entry)
    return registry


def registry_value_text(value: object) -> str:
    """Registry values are Python values; settings parse text, so render them the way a user would type them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
