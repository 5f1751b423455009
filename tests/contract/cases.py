"""The matrix of plans the contract tests feed to the real vLLM and LMCache.

Every case is built with `make_plan(None, overrides, environ)` from an explicit environment (never the
test runner's own). `vllm` lists what the real `vllm serve` parser must end up with (attributes of the
parsed namespace); `lmcache` what LMCache's own parser/config class must end up with, per mode.
Sizes not given are `auto`: half the 64 GiB of the fixed machine in tests/conftest.py (l1_gib 32).
Checks that follow from the plan itself (model, ports, connector wiring, disk path) run for every case
and for every env/*.env file, see test_plans.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field

MODEL = "facebook/opt-125m"  # not in the model registry: only what a case sets applies
GIGACHAT = "ai-sage/GigaChat3-10B-A1.8B-bf16"
DISK = "/tmp/appliance-contract/kv-disk"  # plans are pure: nothing is created there


@dataclass
class Case:
    id: str
    env: dict[str, str]
    overrides: list[str] = field(default_factory=list)
    mode: str | None = None  # expected plan.lmcache.mode
    vllm: dict[str, object] = field(default_factory=dict)  # attribute of the parsed serve args -> value
    lmcache: dict[str, object] = field(default_factory=dict)  # mode-specific, see test_plans.py


CASES = [
    Case("no-offloading", {"VLLM_MODEL": MODEL, "VLLM_KV_OFFLOADING_BACKEND": "none", "VLLM_MAX_MODEL_LEN": "4096"},
         vllm={"max_model_len": 4096, "kv_transfer_config": None, "kv_offloading_size": None,
               "tensor_parallel_size": 1, "host": "0.0.0.0", "port": 8000, "shutdown_timeout": 30}),
    Case("front-proxy", {"VLLM_MODEL": MODEL, "VLLM_KV_OFFLOADING_BACKEND": "none", "APPLIANCE_FRONT_PROXY": "true",
                         "VLLM_PORT": "9000", "APPLIANCE_FRONT_VLLM_PORT": "19000"},
         vllm={"host": "127.0.0.1", "port": 19000}),  # vLLM behind the proxy, which holds 9000
    Case("defaults-empty-environment", {}, mode="server",
         vllm={"model": "Qwen/Qwen3-0.6B", "max_model_len": 32768, "tool_call_parser": "hermes",
               "enable_auto_tool_choice": True},
         lmcache={"l1_gib": 4, "chunk": 256, "port": 5555, "http_port": 8080, "eviction": "LRU", "disk_gib": None}),
    Case("server-cpu-only", {"VLLM_MODEL": MODEL, "VLLM_KV_OFFLOADING_BACKEND": "lmcache",
                             "VLLM_KV_OFFLOADING_SIZE": "7"}, mode="server",
         lmcache={"l1_gib": 7, "chunk": 256, "port": 5555, "http_port": 8080, "eviction": "LRU", "disk_gib": None}),
    Case("server-disk-custom-ports", {
        "VLLM_MODEL": MODEL, "VLLM_KV_OFFLOADING_BACKEND": "lmcache", "LMCACHE_MAX_LOCAL_CPU_SIZE": "6.5",
        "LMCACHE_LOCAL_DISK": DISK, "LMCACHE_MAX_LOCAL_DISK_SIZE": "20", "LMCACHE_CHUNK_SIZE": "512",
        "LMCACHE_EVICTION_POLICY": "IsolatedLRU", "APPLIANCE_LMCACHE_PORT": "6100",
        "APPLIANCE_LMCACHE_HTTP_PORT": "6101", "VLLM_PORT": "9000"}, mode="server",
         vllm={"port": 9000},
         lmcache={"l1_gib": 6.5, "chunk": 512, "port": 6100, "http_port": 6101, "eviction": "IsolatedLRU",
                  "disk_gib": 20}),
    Case("server-disk-file-url", {
        "VLLM_MODEL": MODEL, "VLLM_KV_OFFLOADING_BACKEND": "lmcache", "LMCACHE_LOCAL_DISK": f"file://{DISK}/",
        "LMCACHE_MAX_LOCAL_DISK_SIZE": "2.5"}, mode="server",
         lmcache={"l1_gib": 32, "chunk": 256, "port": 5555, "http_port": 8080, "eviction": "LRU", "disk_gib": 2.5}),
    Case("server-extra-args", {
        "VLLM_MODEL": MODEL, "VLLM_KV_OFFLOADING_BACKEND": "lmcache",
        "LMCACHE_SERVER_EXTRA_ARGS": "--max-workers 2 --hash-algorithm sha256_cbor"}, mode="server",
         lmcache={"l1_gib": 32, "chunk": 256, "port": 5555, "http_port": 8080, "eviction": "LRU", "disk_gib": None,
                  "mp": {"max_workers": 2, "hash_algorithm": "sha256_cbor"}}),
    # What LMCache 0.5.5/0.5.6 added (docs/UPGRADING.md): ARC eviction, the L2 prefetch policy, eager
    # prefetch and the non-blocking lookup; choices match case-insensitively, as LMCACHE_EVICTION_POLICY did.
    Case("server-new-lmcache-options", {
        "VLLM_MODEL": MODEL, "VLLM_KV_OFFLOADING_BACKEND": "lmcache", "VLLM_KV_OFFLOADING_SIZE": "5",
        "LMCACHE_EVICTION_POLICY": "arc",
        "LMCACHE_L2_PREFETCH_POLICY": "retain", "LMCACHE_LOCAL_DISK": DISK, "LMCACHE_EAGER_PREFETCH": "true",
        "LMCACHE_NONBLOCKING_LOOKUP": "false"}, mode="server",
         lmcache={"l1_gib": 5, "chunk": 256, "port": 5555, "http_port": 8080, "eviction": "ARC", "disk_gib": 50,
                  "prefetch_policy": "retain",
                  "connector": {"lmcache.mp.eager_prefetch": True, "lmcache.mp.nonblocking_lookup_status": False}}),
    Case("in-process-disk-tp2", {
        "VLLM_MODEL": MODEL, "VLLM_KV_OFFLOADING_BACKEND": "lmcache", "LMCACHE_MODE": "in-process",
        "VLLM_KV_OFFLOADING_SIZE": "8", "LMCACHE_LOCAL_DISK": DISK, "LMCACHE_MAX_LOCAL_DISK_SIZE": "30",
        "LMCACHE_CHUNK_SIZE": "512", "VLLM_TENSOR_PARALLEL_SIZE": "2"}, mode="in-process",
         vllm={"tensor_parallel_size": 2},
         lmcache={"chunk": 512, "local_cpu": True, "cpu_per_worker": 4.0, "disk_per_worker": 15.0}),
    Case("in-process-cpu-only-extra-keys", {
        "VLLM_MODEL": MODEL, "VLLM_KV_OFFLOADING_BACKEND": "lmcache", "LMCACHE_MODE": "in-process",
        "LMCACHE_MAX_LOCAL_CPU_SIZE": "3", "LMCACHE_SAVE_UNFULL_CHUNK": "false",
        "LMCACHE_MIN_RETRIEVE_TOKENS": "16"}, mode="in-process",
         lmcache={"chunk": 256, "local_cpu": True, "cpu_per_worker": 3.0, "disk_per_worker": None,
                  "keys": {"save_unfull_chunk": False, "min_retrieve_tokens": 16}}),
    Case("in-process-disk-only", {
        "VLLM_MODEL": MODEL, "VLLM_KV_OFFLOADING_BACKEND": "lmcache", "LMCACHE_MODE": "in-process",
        "LMCACHE_LOCAL_CPU": "false", "LMCACHE_LOCAL_DISK": DISK, "LMCACHE_MAX_LOCAL_DISK_SIZE": "10"},
         mode="in-process",
         lmcache={"chunk": 256, "local_cpu": False, "cpu_per_worker": 32.0, "disk_per_worker": 10.0}),
    Case("native", {"VLLM_MODEL": MODEL, "VLLM_KV_OFFLOADING_BACKEND": "native", "VLLM_KV_OFFLOADING_SIZE": "3"},
         mode="native",
         vllm={"kv_offloading_backend": "native", "kv_offloading_size": 3.0, "kv_transfer_config": None}),
    Case("tensor-parallel-2", {"VLLM_MODEL": MODEL, "VLLM_TENSOR_PARALLEL_SIZE": "2",
                               "VLLM_KV_OFFLOADING_BACKEND": "lmcache"}, mode="server",
         vllm={"tensor_parallel_size": 2},
         lmcache={"l1_gib": 32, "chunk": 256, "port": 5555, "http_port": 8080, "eviction": "LRU", "disk_gib": None}),
    Case("appliance-settings", {
        "VLLM_MODEL": MODEL, "VLLM_KV_OFFLOADING_BACKEND": "none", "VLLM_HOST": "127.0.0.1", "VLLM_PORT": "9001",
        "VLLM_SERVED_MODEL_NAME": "chat",
        "VLLM_MAX_MODEL_LEN": "8192", "VLLM_GPU_MEMORY_UTILIZATION": "0.85", "VLLM_DTYPE": "bfloat16",
        "VLLM_TRUST_REMOTE_CODE": "yes", "VLLM_LOAD_FORMAT": "safetensors", "VLLM_TOOL_CALL_PARSER": "llama3_json",
        "VLLM_ENABLE_AUTO_TOOL_CHOICE": "1", "VLLM_DISABLE_HYBRID_KV_CACHE_MANAGER": "true",
        "VLLM_CPU_OFFLOAD_GB": "2.5", "APPLIANCE_SHUTDOWN_TIMEOUT": "45"},
         vllm={"host": "127.0.0.1", "port": 9001, "served_model_name": ["chat"], "max_model_len": 8192,
               "gpu_memory_utilization": 0.85, "dtype": "bfloat16", "trust_remote_code": True,
               "load_format": "safetensors", "tool_call_parser": "llama3_json", "enable_auto_tool_choice": True,
               "disable_hybrid_kv_cache_manager": True, "cpu_offload_gb": 2.5, "shutdown_timeout": 45}),
    Case("generic-flags-every-kind", {
        "VLLM_MODEL": MODEL, "VLLM_KV_OFFLOADING_BACKEND": "none",
        "VLLM_ENABLE_PREFIX_CACHING": "true",  # bool (BooleanOptionalAction), true
        "VLLM_ENFORCE_EAGER": "on",  # bool
        "VLLM_DISABLE_LOG_STATS": "true",  # store_true flag
        "VLLM_MAX_NUM_SEQS": "64",  # int
        "VLLM_MM_PROCESSOR_CACHE_GB": "1.5",  # float
        "VLLM_KV_CACHE_DTYPE": "fp8",  # choice
        "VLLM_COMPILATION_CONFIG": '{"cudagraph_capture_sizes": [1, 2, 4]}',  # JSON -> dataclass
        "VLLM_HF_OVERRIDES": '{"rope_theta": 1000000}',  # JSON or str
        "VLLM_SERVED_MODEL_NAME": "alpha beta",  # nargs '+', two names
        "VLLM_CUDAGRAPH_CAPTURE_SIZES": "8 16",  # int, nargs '+'
        "VLLM_MIDDLEWARE": "acme.auth.Middleware acme.log.Middleware",  # append
        "VLLM_MAX_NUM_BATCHED_TOKENS": "8k",  # human-readable int (vLLM: k = 1000)
        "VLLM_REVISION": "main",  # str
        "VLLM_EXTRA_ARGS": "--seed 7 --max-logprobs 5",
    }, vllm={"enable_prefix_caching": True, "enforce_eager": True, "disable_log_stats": True, "max_num_seqs": 64,
             "mm_processor_cache_gb": 1.5, "kv_cache_dtype": "fp8", "hf_overrides": {"rope_theta": 1000000},
             "served_model_name": ["alpha", "beta"], "cudagraph_capture_sizes": [8, 16],
             "middleware": ["acme.auth.Middleware", "acme.log.Middleware"], "max_num_batched_tokens": 8000,
             "revision": "main", "seed": 7, "max_logprobs": 5,
             "compilation_config.cudagraph_capture_sizes": [1, 2, 4]}),
    Case("generic-flags-false", {
        "VLLM_MODEL": MODEL, "VLLM_KV_OFFLOADING_BACKEND": "none", "VLLM_ENABLE_PREFIX_CACHING": "false",
        "VLLM_ENFORCE_EAGER": "no",
        "VLLM_DISABLE_LOG_STATS": "false", "VLLM_TRUST_REMOTE_CODE": "0", "VLLM_ENABLE_AUTO_TOOL_CHOICE": "off",
        "VLLM_DISABLE_HYBRID_KV_CACHE_MANAGER": "false"},
         vllm={"enable_prefix_caching": False, "enforce_eager": False, "disable_log_stats": False,
               "trust_remote_code": False, "enable_auto_tool_choice": False,
               "disable_hybrid_kv_cache_manager": False}),
    Case("float-values-keep-their-precision", {
        "VLLM_MODEL": MODEL, "VLLM_GPU_MEMORY_UTILIZATION": "0.87654321", "VLLM_KV_OFFLOADING_BACKEND": "native",
        "VLLM_KV_OFFLOADING_SIZE": "12.3456789", "VLLM_MM_PROCESSOR_CACHE_GB": "1234567"}, mode="native",
         vllm={"gpu_memory_utilization": 0.87654321, "kv_offloading_size": 12.3456789,
               "mm_processor_cache_gb": 1234567.0}),
    Case("float-size-of-the-lmcache-server", {
        "VLLM_MODEL": MODEL, "VLLM_KV_OFFLOADING_BACKEND": "lmcache", "VLLM_KV_OFFLOADING_SIZE": "12.3456789"},
         mode="server",
         lmcache={"l1_gib": 12.3456789, "chunk": 256, "port": 5555, "http_port": 8080, "eviction": "LRU",
                  "disk_gib": None}),
    Case("cli-overrides-seed-method-3", {"VLLM_MODEL": MODEL},
         overrides=["--kv-offloading-backend", "lmcache", "--kv-offloading-size", "5",
                    "--disable-hybrid-kv-cache-manager"], mode="server",
         vllm={"disable_hybrid_kv_cache_manager": True},
         lmcache={"l1_gib": 5, "chunk": 256, "port": 5555, "http_port": 8080, "eviction": "LRU", "disk_gib": None}),
    Case("cli-overrides-model-flags-and-raw", {"VLLM_MAX_MODEL_LEN": "2048"},
         overrides=[MODEL, "--max-model-len", "4096", "--no-enable-prefix-caching", "--served-model-name=m1",
                    "--lmcache-chunk-size", "128", "--kv-offloading-backend=lmcache", "--", "--seed", "3"],
         mode="server",
         vllm={"model": MODEL, "max_model_len": 4096, "enable_prefix_caching": False, "served_model_name": ["m1"],
               "seed": 3},
         lmcache={"l1_gib": 32, "chunk": 128, "port": 5555, "http_port": 8080, "eviction": "LRU", "disk_gib": None}),
    Case("registry-gigachat3", {"VLLM_MODEL": GIGACHAT}, mode="server",
         vllm={"model": GIGACHAT, "max_model_len": 128000, "tool_call_parser": "gigachat3",
               "enable_auto_tool_choice": True, "disable_hybrid_kv_cache_manager": True},
         lmcache={"l1_gib": 5, "chunk": 256, "port": 5555, "http_port": 8080, "eviction": "LRU", "disk_gib": None}),
    # The seed document (shared/seed/000_042462d4c39e8b59.txt).
    Case("seed-method-1-env", {"VLLM_KV_OFFLOADING_BACKEND": "lmcache", "VLLM_KV_OFFLOADING_SIZE": "5.0",
                               "VLLM_DISABLE_HYBRID_KV_CACHE_MANAGER": "true"}, mode="server",
         vllm={"disable_hybrid_kv_cache_manager": True},
         lmcache={"l1_gib": 5, "chunk": 256, "port": 5555, "http_port": 8080, "eviction": "LRU", "disk_gib": None}),
    Case("seed-example-1-long-context", {
        "VLLM_MODEL": GIGACHAT, "VLLM_MAX_MODEL_LEN": "128000", "VLLM_KV_OFFLOADING_BACKEND": "lmcache",
        "VLLM_KV_OFFLOADING_SIZE": "10.0", "VLLM_DISABLE_HYBRID_KV_CACHE_MANAGER": "true"}, mode="server",
         vllm={"model": GIGACHAT, "max_model_len": 128000, "disable_hybrid_kv_cache_manager": True},
         lmcache={"l1_gib": 10, "chunk": 256, "port": 5555, "http_port": 8080, "eviction": "LRU", "disk_gib": None}),
    Case("seed-example-2-multi-round", {"VLLM_KV_OFFLOADING_BACKEND": "lmcache", "VLLM_KV_OFFLOADING_SIZE": "5.0"},
         mode="server",
         lmcache={"l1_gib": 5, "chunk": 256, "port": 5555, "http_port": 8080, "eviction": "LRU", "disk_gib": None}),
    Case("seed-advanced-lmcache-server", {
        "VLLM_KV_OFFLOADING_BACKEND": "lmcache", "LMCACHE_LOCAL_CPU": "True", "LMCACHE_MAX_LOCAL_CPU_SIZE": "5.0",
        "LMCACHE_LOCAL_DISK": "True", "LMCACHE_MAX_LOCAL_DISK_SIZE": "50.0"}, mode="server",
         lmcache={"l1_gib": 5, "chunk": 256, "port": 5555, "http_port": 8080, "eviction": "LRU", "disk_gib": 50}),
    Case("seed-advanced-lmcache-in-process", {
        "VLLM_KV_OFFLOADING_BACKEND": "lmcache", "LMCACHE_MODE": "in-process", "LMCACHE_LOCAL_CPU": "True",
        "LMCACHE_MAX_LOCAL_CPU_SIZE": "5.0", "LMCACHE_LOCAL_DISK": "True", "LMCACHE_MAX_LOCAL_DISK_SIZE": "50.0"},
         mode="in-process",
         lmcache={"chunk": 256, "local_cpu": True, "cpu_per_worker": 5.0, "disk_per_worker": 50.0}),
    # Scale out (docs/SCALE-OUT.md): the shared store is an extra resp L2 adapter after the disk tier.
    Case("server-disk-and-shared-store", {
        "VLLM_MODEL": MODEL, "VLLM_KV_OFFLOADING_BACKEND": "lmcache", "VLLM_KV_OFFLOADING_SIZE": "5",
        "LMCACHE_LOCAL_DISK": DISK, "LMCACHE_MAX_LOCAL_DISK_SIZE": "20", "LMCACHE_SHARED_URL": "redis://kv-store:6380",
        "LMCACHE_SHARED_USERNAME": "replica", "LMCACHE_SHARED_PASSWORD": "s3cret-pw", "LMCACHE_SHARED_MAX_SIZE": "64"},
         mode="server",
         lmcache={"l1_gib": 5, "chunk": 256, "port": 5555, "http_port": 8080, "eviction": "LRU", "disk_gib": 20}),
    Case("server-shared-store-only", {
        "VLLM_MODEL": MODEL, "VLLM_KV_OFFLOADING_BACKEND": "lmcache", "VLLM_KV_OFFLOADING_SIZE": "5",
        "LMCACHE_SHARED_URL": "redis://10.0.0.7"}, mode="server",
         lmcache={"l1_gib": 5, "chunk": 256, "port": 5555, "http_port": 8080, "eviction": "LRU", "disk_gib": None}),
    Case("seed-migration-cpu-offload-gb",
         {"VLLM_MODEL": MODEL, "VLLM_KV_OFFLOADING_BACKEND": "none", "VLLM_CPU_OFFLOAD_GB": "4"},
         vllm={"cpu_offload_gb": 4.0, "kv_transfer_config": None}),
]
