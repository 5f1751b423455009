"""The settings registry: every environment variable the appliance itself defines, in one table.

This table drives validation (`parse_value`), translation (`plan.py` reads `Setting.flag`), the
generated reference `docs/ENVIRONMENT.md`, the `env/*.env` examples, and the command-line overrides
after `serve` (`--max-model-len 4096` is `VLLM_MAX_MODEL_LEN=4096`). To find where a variable is
handled, search its name here and in `plan.py`.

Not in this table, because they come from the installed vLLM/LMCache (see `schema.py`):
- any other `vllm serve` flag as `VLLM_<FLAG_IN_UPPER_SNAKE>` (validated by the flag's schema type),
- variables vLLM itself reads (`vllm/envs.py`), passed through unchanged,
- LMCache config keys as `LMCACHE_<KEY>` (in-process mode) and variables LMCache reads itself.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")

# Where the image mounts its volumes (compose.yaml and the Dockerfile use the same paths).
DEFAULT_DISK_TIER_PATH = "/var/lib/appliance/kv-disk"
DEFAULT_RUN_DIR = "/run/appliance"


@dataclass(frozen=True)
class Setting:
    name: str
    # see parse_value: str, int, bool, gib, gib_auto, gib_auto_off, port, fraction, choice, seconds, disk, args, ...
    kind: str
    # (model, names, path, human_int_or_auto: values that land in an argv or a file name are checked for it)
    doc: str
    default: object = None
    group: str = "vLLM"
    flag: str | None = None  # the `vllm serve` flag this becomes, when it is a plain 1:1 translation
    target: str = ""  # what it turns into, for the docs (defaults to the flag)
    choices: tuple[str, ...] = ()
    registry_key: str | None = None  # key of this setting in a model-registry entry (seed style)
    secret: bool = False
    example: str | None = None  # value shown in env/*.env examples and the docs
    minimum: float | None = None  # for int/float/seconds: inclusive lower bound
    # LMCache server mode: the `lmcache server` flag this becomes, or the `lmcache.mp.<key>` of vLLM's
    # connector config. Both are checked against the installed LMCache's schema (kv_tiers.py), so a
    # setting an older LMCache does not have is an error naming its version, not a flag it rejects.
    server_flag: str | None = None
    connector_key: str | None = None
    # Part of the KV identity (kv_identity.py): a change of this value changes the KV a prompt produces, so KV
    # stored under the old value is never reused. Settings that are `vllm serve` flags are classified by flag
    # in KV_FLAGS / KV_NEUTRAL_FLAGS below instead.
    kv: bool = False

    @property
    def cli_flag(self) -> str:
        """The override flag after `serve`: VLLM_MAX_MODEL_LEN -> --max-model-len, LMCACHE_X -> --lmcache-x."""
        base = self.name[len("VLLM_"):] if self.name.startswith("VLLM_") else self.name
        return "--" + base.lower().replace("_", "-")

    @property
    def target_text(self) -> str:
        return self.target or (f"vllm serve {self.flag}" if self.flag else "")


def _s(*args: Any, **kwargs: Any) -> Setting:
    return Setting(*args, **kwargs)


SETTINGS: tuple[Setting, ...] = (
    # --- vLLM: the seed's variables -------------------------------------------------------------------
    _s("VLLM_MODEL", "model", "Model to serve: a Hugging Face id or a path inside the container.",
       default="Qwen/Qwen3-0.6B", target="vllm serve <model> (positional)", example="Qwen/Qwen3-0.6B", kv=True),
    _s("VLLM_HOST", "str", "Address the OpenAI-compatible API listens on.", default="0.0.0.0", flag="--host"),
    _s("VLLM_PORT", "port", "Port of the OpenAI-compatible API. (vLLM itself reads VLLM_PORT as an internal "
       "port; the appliance translates it to --port and removes it from vLLM's environment.)",
       default=8000, flag="--port"),
    _s("VLLM_SERVED_MODEL_NAME", "names", "Model name clients send in requests (default: the model id). Several "
       "names: separated by spaces; the first is the one the appliance's health checks use.",
       flag="--served-model-name", registry_key="served_model_name"),
    _s("VLLM_MAX_MODEL_LEN", "human_int_or_auto", "Maximum context length in tokens (prompt + output), as vLLM "
       "reads it: 32768, 32k (x1000), 32K (x1024), or auto (the longest the GPU memory allows).",
       flag="--max-model-len", registry_key="max_model_len", minimum=1, example="32768"),
    _s("VLLM_GPU_MEMORY_UTILIZATION", "fraction", "Share of GPU memory vLLM may use, in (0, 1].",
       flag="--gpu-memory-utilization", registry_key="gpu_memory_utilization", example="0.9"),
    _s("VLLM_TENSOR_PARALLEL_SIZE", "int", "Number of GPUs to shard the model over.",
       default=1, flag="--tensor-parallel-size", registry_key="tensor_parallel_size", minimum=1),
    _s("VLLM_DTYPE", "choice", "Weights and activations dtype.", flag="--dtype", registry_key="dtype",
       choices=("auto", "bfloat16", "float", "float16", "float32", "half")),
    _s("VLLM_TRUST_REMOTE_CODE", "bool", "Allow the model repository's own Python code to run.",
       flag="--trust-remote-code", registry_key="trust_remote_code"),
    _s("VLLM_LOAD_FORMAT", "str", "Weight format to load (auto, safetensors, dummy, ...).",
       flag="--load-format", registry_key="load_format"),
    _s("VLLM_TOOL_CALL_PARSER", "tool_parser", "Tool-call parser for the model's tool-call format "
       "(one of the parsers the installed vLLM registers).", flag="--tool-call-parser",
       registry_key="tool_call_parser", example="hermes"),
    _s("VLLM_ENABLE_AUTO_TOOL_CHOICE", "bool", "Let the model decide when to call tools (needs "
       "VLLM_TOOL_CALL_PARSER).", flag="--enable-auto-tool-choice", registry_key="enable_auto_tool_choice"),
    _s("VLLM_DISABLE_HYBRID_KV_CACHE_MANAGER", "bool", "Turn off vLLM's hybrid KV cache manager. vLLM >= 0.22 "
       "does this by itself where a KV connector needs it, so it is accepted and harmless.",
       flag="--disable-hybrid-kv-cache-manager", registry_key="disable_hybrid_kv_cache_manager"),
    _s("VLLM_CPU_OFFLOAD_GB", "gib", "Deprecated: offloads model *weights* (not KV cache) to CPU RAM, "
       "translated to --cpu-offload-gb with a warning. For KV cache use VLLM_KV_OFFLOADING_BACKEND.",
       flag="--cpu-offload-gb", registry_key="cpu_offload_gb"),
    _s("VLLM_EXTRA_ARGS", "args", "Raw arguments appended to `vllm serve` (shell-split). Escape hatch: vLLM "
       "checks them, except that flags the appliance sets or supervises by (--host, --port, --served-model-name, "
       "--kv-transfer-config, ...) are refused with the variable to use instead.", target="appended to vllm serve",
       example="--enable-prefix-caching"),
    # --- KV offloading -------------------------------------------------------------------------------
    _s("VLLM_KV_OFFLOADING_BACKEND", "choice", "KV cache offloading: `lmcache` (LMCache CPU + disk tiers; the "
       "default, for every model), `native` (vLLM's own CPU offload), or `none` for no offloading.",
       default="lmcache", group="KV offloading", choices=("lmcache", "native", "none"),
       registry_key="kv_offloading_backend",
       target="lmcache: LMCache server + --kv-transfer-config; native: --kv-offloading-backend native",
       example="lmcache"),
    _s("VLLM_KV_OFFLOADING_SIZE", "gib_auto", "Size of the CPU tier in GiB, for all GPUs together (same tier as "
       "LMCACHE_MAX_LOCAL_CPU_SIZE; set either), or `auto` (the default unless the model registry sizes it): half "
       "the memory the container may use (cgroup limit, else MemAvailable), at most the locked-memory limit. "
       "`config` shows the chosen size and where it came from.", group="KV offloading",
       registry_key="kv_offloading_size", target="lmcache server --l1-size-gb / --kv-offloading-size",
       example="5.0"),
    _s("APPLIANCE_TENANT_ISOLATION", "bool", "Keep tenants' KV caches apart: each API key is a tenant, and every "
       "generation request gets a cache salt derived from the key it was sent with, so a prompt is a cache hit "
       "(GPU prefix cache and every offloaded tier) only for requests sent with the same key, and no tenant can "
       "tell from time-to-first-token whether another sent a prompt. Costs the sharing of common prefixes (a "
       "system prompt) across tenants: each tenant computes and stores its own copy. Needs an API key "
       "(VLLM_API_KEY, or several keys with `--api-key k1 k2` in VLLM_EXTRA_ARGS). Off by default.",
       default=False, group="KV offloading",
       target="vllm serve --middleware entrypoint.vllm_ext.tenant_salt.TenantSaltMiddleware", example="true"),
    # --- LMCache -------------------------------------------------------------------------------------
    _s("LMCACHE_MODE", "choice", "`server`: a supervised LMCache server holds the tiers, so they survive a "
       "vLLM restart (default). `in-process`: LMCache runs inside each vLLM worker: the fastest hit for one long "
       "prompt at a time, but slower under concurrent load, and its tiers do not survive a vLLM restart "
       "(docs/BENCHMARKS.md, run 2).", default="server",
       group="LMCache", choices=("server", "in-process"), target="process layout"),
    _s("LMCACHE_LOCAL_CPU", "bool", "Keep a CPU tier. Server mode always has one; `false` is only "
       "valid with LMCACHE_MODE=in-process.", default=True, group="LMCache",
       target="LMCache local_cpu"),
    _s("LMCACHE_MAX_LOCAL_CPU_SIZE", "gib_auto", "Size of the CPU tier in GiB, for all GPUs together (same tier "
       "as VLLM_KV_OFFLOADING_SIZE).", group="LMCache", target="lmcache server --l1-size-gb / max_local_cpu_size",
       example="5.0"),
    _s("LMCACHE_LOCAL_DISK", "disk", "Disk tier: a path, a file:// URL, or `true` for the image's volume "
       f"({DEFAULT_DISK_TIER_PATH}); `false` or empty for none. A subdirectory per KV identity (weights, "
       "KV-affecting settings, vLLM and LMCache versions; `config` shows it) keeps caches that must not mix apart.",
       group="LMCache",
       target="lmcache server --l2-adapter fs_native / local_disk", example="true"),
    _s("LMCACHE_MAX_LOCAL_DISK_SIZE", "gib_auto", "Cap of the disk tier in GiB, for all GPUs together; the tier "
       "never grows past it (LMCache's L2 eviction, plus a prune at start). `auto`: 80% of the volume's free space "
       "plus what the tier already holds.", default=50.0, group="LMCache",
       target="fs_native max_capacity_gb + LRU eviction / max_local_disk_size", example="50.0"),
    _s("LMCACHE_CHUNK_SIZE", "int", "Tokens per KV chunk LMCache stores and looks up.", default=256,
       group="LMCache", minimum=1, target="lmcache server --chunk-size / chunk_size", kv=True),
    _s("LMCACHE_EVICTION_POLICY", "str", "Eviction policy of the LMCache server's CPU tier: one of the installed "
       "LMCache's `--eviction-policy` choices (LMCache 0.5.6: LRU, ARC, IsolatedLRU, noop; ARC is new in 0.5.6). "
       "LRU is what was measured (docs/BENCHMARKS.md).", default="LRU", group="LMCache",
       server_flag="--eviction-policy", target="lmcache server --eviction-policy", example="LRU"),
    _s("LMCACHE_L2_PREFETCH_POLICY", "str", "How the LMCache server treats chunks it reads from the disk tier "
       "into the CPU tier: `retain` keeps them there (a prefix restored from disk is a CPU-tier or GPU hit from "
       "then on), `default` (LMCache's own default) holds them only for the request, so every later request "
       "reads the disk again even when vLLM has the prefix on the GPU (`retain` measured faster after a restart, "
       "and no slower with a working set larger than the CPU tier: docs/BENCHMARKS.md). Any of the installed "
       "LMCache's "
       "`--l2-prefetch-policy` choices.", default="retain", group="LMCache",
       server_flag="--l2-prefetch-policy", target="lmcache server --l2-prefetch-policy", example="retain"),
    _s("LMCACHE_PREWARM_SIZE", "gib_auto_off", "Hot prefixes pre-warmed (LMCache >= 0.5.6, server mode with a disk "
       "tier): the LMCache server records which chunks its CPU tier holds, most recently used first (every "
       "LMCACHE_PREWARM_RECORD_INTERVAL and when it stops, in a small file in the disk tier's directory), and when "
       "it starts again loads them from the disk tier into the CPU tier as soon as vLLM has registered its KV "
       "cache, so that the first request after a restart or an image upgrade is a CPU-tier hit, not a disk read. "
       "This bounds how much it loads, in GiB for all GPUs together; `0` turns it off. `auto` (the default): half "
       "the CPU tier: the hottest prefixes come back, and the other half stays free for what the first requests "
       "store, so that loading never evicts on its own; the load reads at most that much from the disk, in the "
       "background. `config` shows the size (the first request after a full restart, with and without it: "
       "docs/BENCHMARKS.md). Ignored (with a note) in "
       "in-process or native mode, on a replica, without a disk tier or on an LMCache without server modules; "
       "set there explicitly, it is an error.",
       default="auto", group="LMCache", example="auto",
       target="lmcache server --server-module entrypoint.lmcache_ext.prewarm (max_bytes)"),
    _s("LMCACHE_PREWARM_RECORD_INTERVAL", "seconds", "How often the LMCache server records its hot chunks for "
       "LMCACHE_PREWARM_SIZE (seconds; also when it stops). A SIGKILL loses at most this much of the record; "
       "a record is a few hundred bytes per chunk, written only when the CPU tier changed.", default=30,
       group="LMCache", minimum=1,
       target="lmcache server --server-module entrypoint.lmcache_ext.prewarm (record_interval_s)"),
    _s("LMCACHE_EAGER_PREFETCH", "bool", "LMCache >= 0.5.6: start the LMCache lookup when a request is queued, "
       "not when it is scheduled. Unset: LMCache's own default (off; measured: no gain, docs/BENCHMARKS.md).",
       group="LMCache",
       connector_key="eager_prefetch", target="kv_connector_extra_config lmcache.mp.eager_prefetch"),
    _s("LMCACHE_NONBLOCKING_LOOKUP", "bool", "LMCache >= 0.5.5: poll the LMCache server's lookup answers "
       "without blocking vLLM's scheduler thread (`true`, LMCache's own default) or wait for them in the step "
       "(`false`, measured faster for GPU and CPU-tier hits: docs/BENCHMARKS.md). Not set on an "
       "LMCache that lacks the key (0.5.3 always waits).", default=False, group="LMCache",
       connector_key="nonblocking_lookup_status",
       target="kv_connector_extra_config lmcache.mp.nonblocking_lookup_status"),
    _s("LMCACHE_SKIP_USELESS_LOOKUP", "bool", "Skip vLLM's lookup round trip to the LMCache server when its answer "
       "cannot add anything: a prompt shorter than one LMCache chunk (LMCACHE_CHUNK_SIZE), or one whose every full "
       "chunk vLLM already holds on the GPU. LMCache stores and loads whole chunks only, so such a lookup always "
       "finds nothing to load, yet the scheduler waits for it. Server mode (the appliance's connector, "
       "entrypoint/lmcache_ext/connector.py); measurements in docs/BENCHMARKS.md.", default=False,
       group="LMCache", target="kv_connector_extra_config appliance.skip_useless_lookup"),
    _s("LMCACHE_LOOKUP_WORKERS", "int", "Threads of the LMCache server's pool for lookups and the other "
       "requests that do not move KV (its `--max-cpu-workers`; stores and loads keep their own thread). 1 is "
       "LMCache's own default, written out so that a release that changes it changes nothing here. At most 64. "
       "Measured: no steady gain from more threads, so LMCache's default stays (docs/BENCHMARKS.md).", default=1,
       group="LMCache", minimum=1, server_flag="--max-cpu-workers",
       target="lmcache server --max-cpu-workers", example="4"),
    _s("LMCACHE_HEARTBEAT_INTERVAL", "seconds", "Seconds between vLLM's pings of the LMCache server. An "
       "unanswered ping puts vLLM's connector in its degraded mode: lookups miss and loads fail over to "
       "recompute, so a dead server holds requests up for at most two intervals (docs/RESILIENCE.md). At most "
       "10 (LMCache reaps a vLLM that missed 30 s of pings).", default=5, group="LMCache", minimum=1,
       connector_key="heartbeat_interval", target="kv_connector_extra_config lmcache.mp.heartbeat_interval"),
    # --- Shared KV tier (scale out: replicas on several hosts share one store; docs/SCALE-OUT.md) ----------
    _s("LMCACHE_SHARED_URL", "store_url", "A Redis/Valkey server every replica shares as an extra KV tier: "
       "`redis://host:port` (port default 6379). Server mode: an extra `--l2-adapter` of LMCache's `resp` type "
       "with `\"shared\": true` (server mode only: in-process LMCache's keys would not carry the KV identity). "
       "LMCache's RESP client has "
       "no TLS (no rediss://) and no database index: keep the store on a private network. The appliance starts "
       "and serves without the store (a warning, appliance_shared_store_up 0) and uses it when it answers.",
       group="Shared KV tier", target="lmcache server --l2-adapter {\"type\":\"resp\",...}",
       example="redis://kv-store:6379"),
    _s("LMCACHE_SHARED_USERNAME", "store_user", "Redis ACL user for LMCACHE_SHARED_URL (empty: the default "
       "user).", group="Shared KV tier", target="resp adapter username"),
    _s("LMCACHE_SHARED_PASSWORD", "str", "Password for LMCACHE_SHARED_URL. Never on a command line or in a "
       "file the appliance writes: it reaches LMCache only as LMCACHE_RESP_PASSWORD in its environment (the "
       "LMCache server's; vLLM's in in-process mode).", group="Shared KV tier", secret=True,
       target="LMCACHE_RESP_PASSWORD in LMCache's environment"),
    _s("LMCACHE_SHARED_PASSWORD_FILE", "str", "File holding LMCACHE_SHARED_PASSWORD (Docker/Kubernetes "
       "secrets). Set one of the two.", group="Shared KV tier", target="read, passed as LMCACHE_RESP_PASSWORD"),
    _s("LMCACHE_SHARED_MAX_SIZE", "gib", "This server's share of the shared store in GiB: above it, the LMCache "
       "server deletes the least recently used objects it stored there. Unset: no cap from LMCache; the store's "
       "own `maxmemory` with `allkeys-lru` is the cap for all replicas together (compose.cluster.yaml sets it). "
       "Server mode only.", group="Shared KV tier", target="resp adapter max_capacity_gb + LRU eviction",
       example="100"),
    # --- Cluster roles (one host: replicas share one LMCache server; docs/SCALE-OUT.md) ----------------------
    _s("APPLIANCE_ROLE", "choice", "What this container runs. `all` (default): vLLM and, in server mode, its own "
       "LMCache server. `kv-server`: only the LMCache server (CPU and disk tiers, the shared store), listening on "
       "all interfaces (APPLIANCE_LMCACHE_PORT, APPLIANCE_LMCACHE_HTTP_PORT) for the replicas of this host "
       "(LMCACHE_SERVER); the vLLM settings are still checked (one .env for the cluster) but no vLLM starts. "
       "Never publish its ports: the LMCache server has no authentication.", default="all",
       group="Cluster roles", choices=("all", "kv-server"), target="process layout",
       example="kv-server"),
    _s("LMCACHE_SERVER", "mp_server", "A replica: the LMCache server this vLLM uses instead of starting its own, "
       "as `host:port` or `tcp://host:port` (port default: APPLIANCE_LMCACHE_PORT), e.g. kv-server:5555 (a "
       "container in the kv-server role). It must share this host's IPC namespace (compose `ipc: host`): the "
       "server maps vLLM's GPU KV cache through CUDA IPC. The launcher waits for its /healthcheck on "
       "APPLIANCE_LMCACHE_HTTP_PORT; the watchdog reports it and never restarts vLLM for it. The server's "
       "settings (tier sizes, disk tier, eviction, L2 policies, LMCACHE_SHARED_*) are accepted and ignored here: "
       "they size that server, and one .env serves both roles.", group="Cluster roles",
       target="kv_connector_extra_config lmcache.mp.host/port", example="kv-server:5555"),
    _s("LMCACHE_SERVER_EXTRA_ARGS", "args", "Raw arguments appended to `lmcache server` (shell-split). "
       "Escape hatch, server mode only.", group="LMCache", target="appended to lmcache server"),
    # --- Secrets -------------------------------------------------------------------------------------
    _s("VLLM_API_KEY", "str", "API key clients must send. Read by vLLM itself; never printed.", group="Secrets",
       secret=True, target="passed to vLLM's environment"),
    _s("VLLM_API_KEY_FILE", "str", "File holding VLLM_API_KEY (Docker secrets). Set one of the two.",
       group="Secrets", target="read, passed as VLLM_API_KEY"),
    _s("HF_TOKEN", "str", "Hugging Face token for gated models. Never printed.", group="Secrets", secret=True,
       target="passed to vLLM's environment"),
    _s("HF_TOKEN_FILE", "str", "File holding HF_TOKEN. Set one of the two.", group="Secrets",
       target="read, passed as HF_TOKEN"),
    # --- Appliance: processes and supervision ---------------------------------------------------------
    _s("APPLIANCE_RUN_DIR", "path", "Where `serve` writes the rendered supervisord config and plan.",
       default=DEFAULT_RUN_DIR, group="Appliance", target="run directory"),
    _s("APPLIANCE_VLLM_COMMAND", "args", "Command that starts vLLM (before `serve`).", default="vllm",
       group="Appliance", target="vllm argv[0:]"),
    _s("APPLIANCE_LMCACHE_COMMAND", "args", "Command that starts LMCache (before `server`).", default="lmcache",
       group="Appliance", target="lmcache argv[0:]"),
    _s("APPLIANCE_LMCACHE_PORT", "port", "ZMQ port of the LMCache server (loopback only; all interfaces "
       "with APPLIANCE_ROLE=kv-server; a replica's LMCACHE_SERVER port defaults to it).", default=5555,
       group="Appliance", target="lmcache server --port, lmcache.mp.port"),
    _s("APPLIANCE_LMCACHE_HTTP_PORT", "port", "HTTP port of the LMCache server, for its /healthcheck (a "
       "replica with LMCACHE_SERVER asks the server's there).",
       default=8080, group="Appliance", target="lmcache server --http-port"),
    _s("APPLIANCE_LMCACHE_METRICS_PORT", "port", "The LMCache server's `--prometheus-port` (kept off the "
       "other ports). LMCache 0.5.x's `server` command does not start that exporter: it serves its metrics on "
       "its HTTP port (APPLIANCE_LMCACHE_HTTP_PORT, `/metrics`), where the appliance's metrics endpoint reads "
       "and re-exposes them (seen on an H200 with 0.5.6).", default=9090, group="Appliance",
       target="lmcache server --prometheus-port"),
    _s("APPLIANCE_METRICS_PORT", "port", "Port of the appliance's Prometheus endpoint (/metrics): the LMCache "
       "server's metrics and the appliance's own (restarts, probes, tiers). vLLM's stay on VLLM_PORT.",
       default=9464, group="Appliance", target="metrics program"),
    _s("APPLIANCE_LOG_FORMAT", "choice", "Format of the appliance's own log lines (serve, preflight, launcher, "
       "watchdog, on-fatal): `text`, or `json` (one object per line with ts, program, level, event, message; "
       "vLLM's and LMCache's lines are wrapped as event `output`).", default="text", group="Appliance",
       choices=("text", "json"), target="log lines"),
    _s("APPLIANCE_MODEL_REGISTRY_FILE", "str", "JSON file of extra model-registry entries "
       "({\"org/model\": {\"max_model_len\": 32768, ...}}), merged over the built-in ones.",
       group="Appliance", target="model registry"),
    _s("APPLIANCE_STARTUP_TIMEOUT", "seconds", "Grace period for vLLM to load the model before the watchdog "
       "probes it (vLLM's own start budget is 600 s).", default=900, group="Appliance", minimum=1,
       target="watchdog start grace"),
    _s("APPLIANCE_HEALTH_INTERVAL", "seconds", "Seconds between watchdog probes.", default=10,
       group="Appliance", minimum=1, target="watchdog probe period"),
    _s("APPLIANCE_HEALTH_TIMEOUT", "seconds", "Timeout of one watchdog probe.", default=30, group="Appliance",
       minimum=1, target="watchdog probe timeout"),
    _s("APPLIANCE_HEALTH_FAILURES", "int", "Consecutive failed probes before the watchdog restarts vLLM.",
       default=3, group="Appliance", minimum=1, target="watchdog restart threshold"),
    _s("APPLIANCE_SHUTDOWN_TIMEOUT", "seconds", "Seconds vLLM may take to finish in-flight requests on stop.",
       default=30, group="Appliance", minimum=0, target="vllm serve --shutdown-timeout; supervisord stopwaitsecs"),
    # --- Resilience: the answer while vLLM is down, and the disk tier's backstop prune.
    _s("APPLIANCE_GAP_ANSWER", "bool", "While vLLM is not serving (starting, restarting after a crash, draining "
       "at stop), answer its port with HTTP 503 and a Retry-After header instead of refusing connections. The "
       "`gap` program shares the port with vLLM through SO_REUSEPORT and lets go of it as soon as vLLM listens, "
       "so it is never in the path of a request vLLM serves (how it measured under load: docs/RESILIENCE.md).",
       default=True,
       group="Appliance", target="gap program; vLLM's API socket with SO_REUSEPORT"),
    _s("APPLIANCE_GAP_RETRY_AFTER", "seconds", "Seconds the 503 answer (of the gap program, or of the front proxy "
       "past its hold bounds) asks clients to wait before they try again (its Retry-After header).", default=5,
       group="Appliance", minimum=1, target="gap program; front proxy"),
    _s("APPLIANCE_FRONT_PROXY", "bool", "Put the front proxy on vLLM's port, in place of the gap program: vLLM "
       "listens on 127.0.0.1:APPLIANCE_FRONT_VLLM_PORT behind it. While vLLM restarts after a crash, the proxy "
       "holds new requests and releases them when vLLM serves again, sends again the requests that died with it, "
       "and continues their streams on the restarted vLLM from the tokens already sent, so that a client reads "
       "one uninterrupted stream (docs/RESILIENCE.md says which requests cannot be continued). It checks the API "
       "key itself. Off until its cost per request is measured on a GPU.", default=False, group="Appliance",
       target="front program on VLLM_HOST:VLLM_PORT; vllm serve --host 127.0.0.1 --port APPLIANCE_FRONT_VLLM_PORT"),
    _s("APPLIANCE_FRONT_VLLM_PORT", "port", "Port vLLM listens on, on loopback, behind the front proxy "
       "(APPLIANCE_FRONT_PROXY=true). Never reachable from outside the container.", default=18000,
       group="Appliance", target="vllm serve --port (with APPLIANCE_FRONT_PROXY)"),
    _s("APPLIANCE_FRONT_MAX_HELD", "int", "Requests the front proxy holds at once while vLLM is down; more are "
       "answered 503 with Retry-After at once.", default=1024, group="Appliance", minimum=1,
       target="front proxy"),
    _s("APPLIANCE_FRONT_MAX_HOLD", "seconds", "Longest a request waits in the front proxy for vLLM to serve "
       "again (it covers a restart: the model load included); past it, 503 with Retry-After.", default=120,
       group="Appliance", minimum=1, target="front proxy"),
    _s("APPLIANCE_FRONT_MAX_RESENDS", "int", "Times the front proxy sends a request again, or continues its "
       "stream, after vLLM died under it; past it the client gets 503 (or an error event in its stream).",
       default=3, group="Appliance", minimum=0, target="front proxy"),
    _s("APPLIANCE_DISK_PRUNE_INTERVAL", "seconds", "Longest wait between the watchdog's prunes of the disk tier "
       "to its cap, a backstop to LMCache's own eviction (which does not see files an earlier LMCache server "
       "wrote). Over the cap, the least recently used files go, down to 90% of it. The next prune comes "
       "sooner (down to 0.5 s) when the tier grows fast enough to pass 105% of its cap before it.", default=5,
       group="Appliance", minimum=1, target="watchdog disk-tier prune period"),
    # --- Compose: read by compose.yaml from the project's .env; they also reach the container through
    # `env_file: .env`, where the entrypoint accepts and ignores them.
    _s("APPLIANCE_IMAGE", "str", "Image compose runs; an upgrade is a new tag here, then `docker compose up -d`.",
       group="Compose", target="compose.yaml image"),
    _s("APPLIANCE_HOST_PORT", "port", "Host port published for the API (default: VLLM_PORT).",
       group="Compose", target="compose.yaml ports"),
    _s("APPLIANCE_METRICS_HOST_PORT", "port", "Host port published for the metrics endpoint (default: "
       "APPLIANCE_METRICS_PORT).", group="Compose", target="compose.yaml ports"),
    _s("APPLIANCE_PROMETHEUS_IMAGE", "str", "Prometheus image of the `monitoring` profile.", group="Compose",
       target="compose.yaml prometheus image"),
    _s("APPLIANCE_GRAFANA_IMAGE", "str", "Grafana image of the `monitoring` profile.", group="Compose",
       target="compose.yaml grafana image"),
    # compose.cluster.yaml's (README "Scale out"): read by compose from the same .env as the replicas.
    *(_s(f"APPLIANCE_REPLICA_{i}_GPUS", "str", f"GPU ids of replica-{i} in compose.cluster.yaml (default {i}); "
         "several as \"0,1\" with VLLM_TENSOR_PARALLEL_SIZE. replica-2 and -3 run with COMPOSE_PROFILES="
         "replicas-3 or replicas-4.", group="Compose", target="compose.cluster.yaml device_ids") for i in range(4)),
    _s("APPLIANCE_ROUTER_WORKERS", "str", "The replicas the router sends to, space-separated URLs (default: "
       "http://replica-0:VLLM_PORT http://replica-1:VLLM_PORT).", group="Compose",
       target="compose.cluster.yaml vllm-router --worker-urls"),
    _s("APPLIANCE_ROUTER_POLICY", "str", "The router's policy: cache_aware (default), round_robin, power_of_two, "
       "consistent_hash, ... (vllm-router --policy).", group="Compose", target="vllm-router --policy"),
    _s("APPLIANCE_ROUTER_HEALTH_INTERVAL", "seconds", "Seconds between the router's health checks of each replica: "
       "vllm-router's in compose.cluster.yaml, and the coordinator router's (`router`).", default=10, minimum=1,
       group="Compose", target="vllm-router --health-check-interval-secs; router health checks"),
    _s("APPLIANCE_ROUTER_IMAGE", "str", "The router's image (docker/router/Dockerfile).", group="Compose",
       target="compose.cluster.yaml router image"),
    _s("APPLIANCE_STORE_IMAGE", "str", "The shared store's image (default valkey/valkey:8.1; any Redis >= 6 "
       "with a valkey-server command).", group="Compose", target="compose.cluster.yaml kv-store image"),
    _s("APPLIANCE_STORE_MAXMEMORY", "str", "The shared store's memory cap for all replicas together (default "
       "16gb); the least recently used chunks go first.", group="Compose",
       target="valkey-server --maxmemory (allkeys-lru)"),
    _s("APPLIANCE_LMCACHE_WAIT", "seconds", "How long vLLM waits for the LMCache server to be healthy.",
       default=300, group="Appliance", minimum=1, target="vllm program start"),
    # --- The coordinator router (`python -m entrypoint router`; docs/SCALE-OUT.md "The coordinator router") ----
    _s("APPLIANCE_ROUTER_COORDINATOR_URL", "http_url", "LMCache's coordinator (`lmcache coordinator`) the router "
       "asks where each prompt's KV cache is: http://host:port, no credentials. Required by `router`; the replicas' "
       "LMCache servers register with the same coordinator (LMCACHE_COORDINATOR_URL, "
       "LMCACHE_COORDINATOR_EVENT_REPORTING=1).", group="Router", target="router: POST /directory/lookup",
       example="http://coordinator:9300"),
    _s("APPLIANCE_ROUTER_REPLICAS", "router_replicas", "The vLLM replicas the router sends to, space-separated "
       "http://host:port URLs. Each is matched to the LMCache server that registered with the coordinator from "
       "the same IP address; where several servers share an address (one host), append that server's HTTP port "
       "(APPLIANCE_LMCACHE_HTTP_PORT of the replica): http://host:8000=8081. Empty (default): every server "
       "registered with the coordinator is a replica at http://its-ip:APPLIANCE_ROUTER_REPLICA_PORT (Kubernetes: "
       "the pod IPs).", group="Router", target="router replicas",
       example="http://replica-0:8000 http://replica-1:8000"),
    _s("APPLIANCE_ROUTER_REPLICA_PORT", "port", "vLLM's port on the replicas the router finds through the "
       "coordinator (APPLIANCE_ROUTER_REPLICAS empty).", default=8000, group="Router", target="router replicas"),
    _s("APPLIANCE_ROUTER_PORT", "port", "Port the router listens on (all interfaces): the OpenAI-compatible API, "
       "/health and /metrics.", default=8000, group="Router", target="router listen port"),
    _s("APPLIANCE_ROUTER_LOOKUP_TIMEOUT", "duration", "Seconds the router waits for a replica's /tokenize and for "
       "the coordinator's lookup, each, before it places the request on the least loaded replica instead (fail "
       "open, counted in /metrics).", default=0.5, group="Router", target="router placement",
       example="0.5"),
    _s("APPLIANCE_ROUTER_REQUEST_TIMEOUT", "seconds", "Seconds the router waits for a replica's next bytes "
       "(the first token, or the next streamed chunk) before it gives up on the request.", default=600,
       minimum=1, group="Router", target="router upstream timeout"),
    _s("APPLIANCE_ROUTER_MAX_CONNECTIONS", "int", "Client connections the router holds at once. At the limit, a "
       "new connection closes the one idle the longest; when none is idle, its request is answered 503.",
       default=1024, minimum=1, group="Router", target="router connection limit"),
    _s("APPLIANCE_ROUTER_CLIENT_TIMEOUT", "seconds", "Seconds the router waits on a client: for a request's "
       "headers (from the connection, or the previous answer: an idle connection is closed) and, again, for its "
       "body (408).", default=30, minimum=1, group="Router", target="router client timeouts"),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
BY_CLI_FLAG: dict[str, Setting] = {s.cli_flag: s for s in SETTINGS}
SECRET_NAMES = frozenset(s.name for s in SETTINGS if s.secret)
PREFIXES = ("VLLM_", "LMCACHE_", "APPLIANCE_")

# Secrets that may come from a file instead (postgres-image style VAR / VAR_FILE).
FILE_SECRETS = {"VLLM_API_KEY": "VLLM_API_KEY_FILE", "HF_TOKEN": "HF_TOKEN_FILE",
                "LMCACHE_SHARED_PASSWORD": "LMCACHE_SHARED_PASSWORD_FILE"}
VLLM_SECRETS = ("VLLM_API_KEY", "HF_TOKEN")  # the secrets vLLM itself reads (passed on to its environment)

# Flags the appliance owns: what supervision relies on (the watchdog, healthcheck, preflight and launcher
# probe the API at VLLM_HOST:VLLM_PORT under the served name, over plain HTTP; vLLM reaches the LMCache server
# through the --kv-transfer-config the appliance writes) and what the appliance sizes. Given by any route
# (VLLM_<FLAG>, VLLM_EXTRA_ARGS, arguments after `--`), each is an error that names the variable to use.
# The command-line overrides after `serve` (`--port 9000`) are those variables, so they are followed instead.
_TLS = ("the appliance's health checks speak plain HTTP to vLLM; terminate TLS in front of the appliance (a "
        "reverse proxy)")
OWNED_FLAGS = {
    "--host": "use VLLM_HOST",
    "--port": "use VLLM_PORT",
    "--model": "use VLLM_MODEL",
    "--served-model-name": "use VLLM_SERVED_MODEL_NAME (the health checks ask for the first name)",
    "--uds": "the appliance's health checks reach vLLM over TCP; use VLLM_HOST and VLLM_PORT",
    "--headless": "it starts no API server for the appliance to serve and supervise",
    "--ssl-certfile": _TLS,
    "--ssl-keyfile": _TLS,
    "--config": "the appliance must see every setting: give the file's values as VLLM_<FLAG> variables",
    "--kv-transfer-config": "the appliance writes it from VLLM_KV_OFFLOADING_BACKEND; set "
                            "VLLM_KV_OFFLOADING_BACKEND=none to pass your own",
    "--kv-offloading-backend": "use VLLM_KV_OFFLOADING_BACKEND",
    "--kv-offloading-size": "use VLLM_KV_OFFLOADING_SIZE",
    "--shutdown-timeout": "use APPLIANCE_SHUTDOWN_TIMEOUT, which also sizes supervisord's stop wait",
}
# Flags that open listeners the appliance does not own (it would neither supervise nor protect them), or switch
# the API port's protocol away from what its probes and clients speak: refused, by any route, with the reason.
REFUSED_FLAGS = {
    "--ssl-ca-certs": _TLS, "--ssl-cert-reqs": _TLS, "--ssl-ciphers": _TLS, "--enable-ssl-refresh": _TLS,
    "--grpc": "the API port serves HTTP (the OpenAI-compatible API, which the health checks probe); a gRPC server "
              "there is not what the appliance supervises",
    "--grpc-port": "it opens a second listener (gRPC) that the appliance neither supervises nor protects",
    "--kv-events-config": "it opens a ZMQ publisher port that the appliance neither supervises nor protects",
    **dict.fromkeys(("--data-parallel-address", "--data-parallel-rpc-port", "--data-parallel-supervisor-port",
                     "--data-parallel-external-lb", "--data-parallel-hybrid-lb",
                     "--data-parallel-multi-port-external-lb", "--nnodes", "--node-rank", "--master-addr",
                     "--master-port"),
                    "multi-node and external-load-balancer data parallelism open listeners the appliance does not "
                    "own; one appliance serves the GPUs of one host (more: docs/SCALE-OUT.md)"),
}
# The same for `lmcache server` (LMCACHE_SERVER_EXTRA_ARGS). Any other flag the plan already passes it is
# refused too (never two values on one command line).
LMCACHE_OWNED_FLAGS = {
    "--host": "the LMCache server listens on 127.0.0.1 (vLLM in this container is its only client), or on all "
              "interfaces with APPLIANCE_ROLE=kv-server",
    "--http-host": "the LMCache server listens on 127.0.0.1 (vLLM in this container is its only client), or on "
                   "all interfaces with APPLIANCE_ROLE=kv-server",
    "--port": "use APPLIANCE_LMCACHE_PORT",
    "--http-port": "use APPLIANCE_LMCACHE_HTTP_PORT",
    "--l1-size-gb": "use VLLM_KV_OFFLOADING_SIZE",
    "--chunk-size": "use LMCACHE_CHUNK_SIZE",
    "--eviction-policy": "use LMCACHE_EVICTION_POLICY",
    "--max-cpu-workers": "use LMCACHE_LOOKUP_WORKERS",
    "--worker-reap-timeout-seconds": "the launcher's wait for GPU memory after a vLLM crash is sized from it",
    "--prometheus-port": "use APPLIANCE_LMCACHE_METRICS_PORT (the appliance's metrics endpoint reads it there)",
}
LMCACHE_REFUSED_FLAGS = {
    "--p2p-listen-url": "it opens a peer-to-peer listener that the appliance neither supervises nor protects",
    "--transport": "vLLM's connector reaches the server over the transport the appliance plans (ZMQ on "
                   "APPLIANCE_LMCACHE_PORT)",
}


def owned_flag_problem(flag: str, owned: dict[str, str], refused: dict[str, str]) -> str | None:
    """Why an operator may not pass `flag` (OWNED_FLAGS / REFUSED_FLAGS, or LMCache's), or None."""
    if flag in owned:
        return f"is set by the appliance; {owned[flag]}"
    if flag in refused:
        return f"is not allowed: {refused[flag]}"
    return None

# The KV identity (kv_identity.py, docs/UPGRADING.md "What invalidates the KV cache"): every `vllm serve` flag
# of the pinned vLLM is in exactly one of these two (tests/contract/test_kv_identity_flags.py), so that a flag
# a new vLLM adds is classified once, here. A flag in KV_FLAGS changes the KV a prompt produces (or its layout),
# so its value is part of the identity and a change of it never reuses stored KV; when unsure, a flag goes here
# (a needless miss costs a recompute, a wrong hit a wrong answer). A flag in KV_NEUTRAL_FLAGS changes serving,
# scheduling, sampling, logging or numerics at the level of bf16 noise only (kernels, compilation, batching),
# so editing it keeps the cache. Per-request inputs are keyed per request (LoRA adapters, cache_salt).
KV_FLAGS = {
    "--revision": "which weights are loaded",
    "--code-revision": "which modeling code runs (remote code)",
    "--trust-remote-code": "the repository's own modeling code instead of vLLM's",
    "--model-impl": "which implementation of the model runs",
    "--model-class-overrides": "which model class runs",
    "--hf-config-path": "the model config the layers are built from",
    "--hf-overrides": "model config overrides (rope scaling, layer counts, ...)",
    "--config-format": "how the model config is read",
    "--convert": "the model is converted to another task",
    "--runner": "which runner (and so which model head and layers) runs",
    "--load-format": "how the weights are loaded (dummy weights are random)",
    "--model-loader-extra-config": "options of the weight loader",
    "--dtype": "the precision of weights and activations",
    "--quantization": "quantized weights compute other KV",
    "--quantization-config": "quantized weights compute other KV",
    "--kv-cache-dtype": "the KV cache's own precision",
    "--kv-cache-dtype-skip-layers": "the KV cache's own precision, per layer",
    "--tensor-parallel-size": "how the KV is sharded over GPUs",
    "--pipeline-parallel-size": "how the layers are split over GPUs",
    "--decode-context-parallel-size": "how the KV is laid out over GPUs",
    "--prefill-context-parallel-size": "how the KV is laid out over GPUs",
    "--dcp-kv-cache-interleave-size": "how the KV is laid out over GPUs",
    "--cp-kv-cache-interleave-size": "how the KV is laid out over GPUs",
    "--block-size": "the KV cache's block layout",
    "--disable-sliding-window": "which tokens each layer attends to",
    "--kv-sharing-fast-prefill": "which layers compute their own KV",
    "--swa-bounded-replay": "sliding-window KV replay",
    "--mamba-cache-dtype": "the precision of the stored state",
    "--mamba-ssm-cache-dtype": "the precision of the stored state",
    "--mamba-cache-mode": "what state is stored",
    "--mamba-block-size": "the state's block layout",
    "--mamba-backend": "how the state is computed",
    "--mamba-ssu-algorithm": "how the state is computed",
    "--enable-mamba-cache-stochastic-rounding": "the stored state's rounding",
    "--mamba-cache-philox-rounds": "the stored state's rounding",
    "--use-replayssm": "how the state is stored",
    "--replayssm-buffer-len": "how the state is stored",
    "--mm-encoder-attn-dtype": "the precision of multimodal embeddings in the prompt",
    "--mm-encoder-fp8-scale-path": "the precision of multimodal embeddings in the prompt",
    "--mm-processor-kwargs": "how images and audio become prompt embeddings",
    "--worker-cls": "custom worker code",
    "--worker-extension-cls": "custom worker code",
    "--additional-config": "platform-specific model options",
    "--engram-config": "model-specific options",
    "--diffusion-config": "model-specific options",
    "--enable-hc-sp": "model-specific options",
}
KV_NEUTRAL_FLAGS = frozenset({
    "--aggregate-engine-logging", "--all2all-backend", "--allow-credentials", "--allow-deprecated-quantization",
    "--allowed-headers", "--allowed-local-media-path", "--allowed-media-domains", "--allowed-methods",
    "--allowed-origins", "--anthropic-disabled-thinking-effort", "--api-key", "--api-server-count",
    "--async-scheduling", "--attention-backend", "--attention-config", "--aux-output-config", "--chat-template",
    "--chat-template-content-format", "--cohere-format", "--cohere-is-reasoning-model", "--collect-detailed-traces",
    "--compilation-config", "--config", "--cpu-distributed-timeout-seconds", "--cpu-offload-gb",
    "--cpu-offload-params", "--cudagraph-capture-sizes", "--cudagraph-metrics", "--custom-histogram-buckets",
    "--data-parallel-address", "--data-parallel-backend", "--data-parallel-external-lb", "--data-parallel-hybrid-lb",
    "--data-parallel-multi-port-external-lb", "--data-parallel-rank", "--data-parallel-rpc-port",
    "--data-parallel-size", "--data-parallel-size-local", "--data-parallel-start-rank",
    "--data-parallel-supervisor-port", "--dbo-decode-token-threshold", "--dbo-prefill-token-threshold",
    "--dcp-comm-backend", "--dcp-q-replicate", "--default-chat-template-kwargs", "--default-mm-loras",
    "--device-ids", "--disable-access-log-for-endpoints", "--disable-cascade-attn", "--disable-chunked-mm-input",
    "--disable-custom-all-reduce", "--disable-fastapi-docs", "--disable-hybrid-kv-cache-manager",
    "--disable-log-stats", "--disable-nccl-for-dp-synchronization", "--disable-uvicorn-access-log",
    "--distributed-executor-backend", "--distributed-timeout-seconds", "--download-dir",
    "--dp-supervisor-probe-failure-threshold", "--dp-supervisor-probe-interval-s", "--dp-supervisor-probe-timeout-s",
    "--dp-sync-interval", "--ec-manager-config", "--ec-transfer-config", "--elastic-ep-max-dp-size",
    "--enable-auto-tool-choice", "--enable-batch-sharded-sampling", "--enable-chunked-prefill",
    "--enable-cumem-allocator", "--enable-dbo", "--enable-elastic-ep", "--enable-ep-weight-filter", "--enable-eplb",
    "--enable-expert-parallel", "--enable-fault-tolerance", "--enable-flash-late-interaction",
    "--enable-flashinfer-autotune", "--enable-force-include-usage", "--enable-layerwise-nvtx-tracing",
    "--enable-log-deltas", "--enable-log-outputs", "--enable-log-requests", "--enable-logging-iteration-details",
    "--enable-lora", "--enable-mamba-shared-prefix-checkpoint", "--enable-mfu-metrics",
    "--enable-mixed-moe-lora-format", "--enable-mm-embeds", "--enable-moe-shared-loras",
    "--enable-nccl-comm-suspend", "--enable-offline-docs", "--enable-per-request-metrics", "--enable-prefix-caching",
    "--enable-prompt-embeds", "--enable-prompt-tokens-details", "--enable-request-id-headers",
    "--enable-return-routed-experts", "--enable-scale-out", "--enable-server-load-tracking",
    "--enable-shm-tensor-arena", "--enable-sleep-mode", "--enable-ssl-refresh", "--enable-tokenizer-info-endpoint",
    "--enable-tower-connector-lora", "--enable-trace-replay", "--enforce-eager", "--eplb-config",
    "--exclude-tools-when-tool-choice-none", "--expert-placement-strategy", "--fail-on-environ-validation",
    "--fault-tolerance-config", "--fingerprint-mode", "--fingerprint-value", "--fully-sharded-loras",
    "--gdn-prefill-backend", "--generation-config", "--gpu-memory-utilization", "--grpc", "--grpc-port",
    "--h11-max-header-count", "--h11-max-incomplete-event-size", "--headless", "--hf-token", "--host",
    "--ignore-patterns", "--interleave-mm-strings", "--io-processor-plugin", "--ir-op-priority",
    "--jit-monitor-mode", "--jit-monitor-verbose", "--kda-decode-backend", "--kda-prefill-backend",
    "--kernel-config", "--kv-cache-memory-bytes", "--kv-cache-metrics", "--kv-cache-metrics-sample",
    "--kv-events-config", "--kv-offloading-backend", "--kv-offloading-size", "--kv-transfer-config",
    "--language-model-only", "--limit-mm-per-prompt", "--linear-backend", "--log-config-file", "--log-error-stack",
    "--log-level", "--logging-config", "--logits-processors", "--logprobs-mode", "--long-prefill-token-threshold",
    "--long-prefill-token-threshold-adaptive", "--lora-dtype", "--lora-modules", "--lora-target-modules",
    "--master-addr", "--master-port", "--max-cpu-loras", "--max-cudagraph-capture-size", "--max-log-len",
    "--max-logprobs", "--max-lora-cls-labels", "--max-lora-rank", "--max-loras", "--max-model-len",
    "--max-num-active-seqs", "--max-num-batched-tokens", "--max-num-queued-reqs", "--max-num-queued-tokens",
    "--max-num-scheduled-tokens", "--max-num-seqs", "--max-parallel-loading-workers", "--media-io-kwargs",
    "--middleware", "--mm-device-do-normalize", "--mm-encoder-attn-backend", "--mm-encoder-fp8-scale-save-margin",
    "--mm-encoder-fp8-scale-save-path", "--mm-encoder-only", "--mm-encoder-tp-mode", "--mm-hasher-algorithm",
    "--mm-ipc-gpu-memory-gb", "--mm-processor-cache-gb", "--mm-processor-cache-type", "--mm-processor-device",
    "--mm-shm-cache-max-object-size-mb", "--mm-tensor-ipc", "--moe-backend", "--nnodes", "--node-rank",
    "--num-gpu-blocks-override", "--numa-bind", "--numa-bind-cpus", "--numa-bind-nodes", "--offload-backend",
    "--offload-group-size", "--offload-num-in-group", "--offload-params", "--offload-prefetch-step",
    "--optimization-level", "--otlp-traces-endpoint", "--override-generation-config",
    "--per-request-spec-decode-metrics", "--performance-mode", "--pooler-config", "--port",
    "--prefill-schedule-interval", "--prefix-cache-retention-interval", "--prefix-caching-hash-algo",
    "--prefix-match-unit", "--profiler-config", "--pt-load-map-location", "--ray-workers-use-nsight",
    "--reasoning-config", "--reasoning-parser", "--reasoning-parser-plugin", "--renderer-num-workers",
    "--response-role", "--return-sampling-mask", "--return-tokens-as-token-ids", "--root-path",
    "--safetensors-load-strategy", "--safetensors-prefetch-block-size", "--safetensors-prefetch-num-threads",
    "--scheduler-cls", "--scheduler-reserve-full-isl", "--scheduling-policy", "--seed", "--served-model-name",
    "--show-hidden-metrics-for-version", "--shutdown-timeout", "--skip-mm-profiling", "--skip-tokenizer-init",
    "--sleep-mode-offload-cudagraph", "--sleep-preserve-parameter-names", "--sparse-indexer-topk-backend",
    "--spec-method", "--spec-model", "--spec-tokens", "--specialize-active-lora", "--speculative-config",
    "--sse-keep-alive-interval", "--ssl-ca-certs", "--ssl-cert-reqs", "--ssl-certfile", "--ssl-ciphers",
    "--ssl-keyfile", "--stream-interval", "--structured-outputs-config", "--tokenizer", "--tokenizer-mode",
    "--tokenizer-revision", "--tokens-only", "--tool-call-parser", "--tool-parser-plugin", "--tool-server",
    "--tool-strict-level", "--trust-request-chat-template", "--trust-request-mm-kwargs", "--ubatch-size", "--uds",
    "--use-fp64-gumbel", "--use-tqdm-on-load", "--uvicorn-log-level", "--video-pruning-method",
    "--video-pruning-rate", "--watermark", "--watermark-config", "--weight-transfer-config",
})

MAX_VALUE_BYTES = 131072  # Linux MAX_ARG_STRLEN: execve refuses a longer single argument or variable
MAX_SECONDS = 7 * 86400  # longer waits overflow select() timeouts and mean "never" anyway
AUTO = "auto"
_N = TypeVar("_N", int, float)


class ValueProblem(ValueError):
    """A value that does not parse; the message says what was expected (the caller adds name and value)."""


def parse_bool(raw: str) -> bool:
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueProblem("must be true or false (also accepted: 1/0, yes/no, on/off)")


def _number(raw: str, cast: Callable[[str], _N], what: str) -> _N:
    try:
        value = cast(raw.strip())
    except (ValueError, OverflowError):
        raise ValueProblem(f"must be {what}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueProblem(f"must be {what}")
    return value


def _human_int(text: str, allow_auto: bool) -> int:
    """vLLM's own human_readable_int(_or_auto): 32768, 32k (x1000), 32K (x1024), 25.6k; -1 or auto."""
    if allow_auto and (text == "-1" or text.lower() == AUTO):
        return -1
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgGtT])", text)
    if m:
        number, suffix = m.groups()
        if suffix.islower():
            return int(float(number) * 1000 ** ("kmgt".index(suffix) + 1))
        if "." not in number:
            return int(number) * 1024 ** ("KMGT".index(suffix) + 1)
        raise ValueProblem(f"takes no decimals with the binary suffix {suffix} (vLLM refuses it), e.g. "
                           f"{number}{suffix.lower()} (x1000)")
    try:
        return int(text)
    except ValueError:
        raise ValueProblem("must be a whole number (e.g. 32768 or 32k)" + (", or auto" if allow_auto else "")) \
            from None


MAX_JSON_DEPTH = 64  # deeper JSON is no configuration, and would overflow the recursion of json and the redaction


def json_depth(text: str) -> int:
    """How deeply brackets nest in `text`, outside JSON strings (without parsing: parsers recurse)."""
    depth = deepest = 0
    in_string = escaped = False
    for c in text:
        if in_string:
            escaped, in_string = (False, True) if escaped else (c == "\\", c != '"')
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth -= 1
    return deepest


def load_json(text: str) -> Any:
    """json.loads for an operator's value: a ValueProblem, never a RecursionError."""
    if json_depth(text) > MAX_JSON_DEPTH:
        raise ValueProblem(f"is JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueProblem(f"is not valid JSON ({e.msg} at column {e.colno})") from None


def has_control(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def split_names(raw: str) -> list[str]:
    """VLLM_SERVED_MODEL_NAME: names separated by white space (no shell quoting: `bob's-model` is one name)."""
    return raw.split()


def parse_value(setting: Setting, raw: str, tool_parsers: list[str] | None = None) -> Any:
    """Turn the raw text of a variable into its typed value, or raise ValueProblem (one parser per kind)."""
    return PARSERS[setting.kind](setting, raw, tool_parsers or [])


def _model(setting: Setting, raw: str, _tp: list[str]) -> str:
    text = raw.strip()
    if text.startswith("-"):
        raise ValueProblem("a model id or path cannot start with '-' (vLLM would read it as an option)")
    if has_control(text):
        raise ValueProblem("contains a control character (a line break?); a model id or path cannot")
    return text


def _names(setting: Setting, raw: str, _tp: list[str]) -> str:
    names = split_names(raw)
    bad = [n for n in names if n.startswith("-")]
    if bad:
        raise ValueProblem(f"the name {bad[0]!r} starts with '-' (vLLM would read it as an option)")
    if has_control(raw.strip()):
        raise ValueProblem("contains a control character; names are separated by spaces")
    return " ".join(names)


def _path(setting: Setting, raw: str, _tp: list[str]) -> str:
    text = raw.strip()
    if not text.startswith("/") or has_control(text):
        raise ValueProblem("must be an absolute path without control characters, e.g. /run/appliance")
    if re.search(r"\s[;#]", text):
        raise ValueProblem("cannot hold a space followed by ';' or '#' (supervisord reads the rest as a comment)")
    return text.rstrip("/") or "/"


def _human_int_or_auto(setting: Setting, raw: str, _tp: list[str]) -> int:
    value = _human_int(raw.strip(), allow_auto=True)
    if value != -1 and value < 1:
        raise ValueProblem("must be at least 1, or auto")
    return value


def _whole(setting: Setting, raw: str, _tp: list[str]) -> int:
    value = _number(raw, int, "a whole number")
    if setting.kind == "seconds" and value > MAX_SECONDS:
        raise ValueProblem(f"must be at most {MAX_SECONDS} (a week)")
    if setting.minimum is not None and value < setting.minimum:
        raise ValueProblem(f"must be at least {setting.minimum:g}")
    return value


def _port(setting: Setting, raw: str, _tp: list[str]) -> int:
    value = _number(raw, int, "a port number (1-65535)")
    if not 1 <= value <= 65535:
        raise ValueProblem("must be a port number (1-65535)")
    return value


def _gib(setting: Setting, raw: str, _tp: list[str]) -> float | str:
    kind = setting.kind  # gib, gib_auto (also `auto`), gib_auto_off (also `auto`, and 0 for off)
    if kind != "gib" and raw.strip().lower() == AUTO:
        return AUTO
    what = ("a size in GiB greater than 0, e.g. 5.0" if kind != "gib_auto_off" else
            "a size in GiB, e.g. 5.0, or 0 for off") + (", or auto" if kind != "gib" else "")
    value = _number(raw, float, what)
    if value < 0 or (value == 0 and kind != "gib_auto_off"):
        raise ValueProblem(f"must be {what}")
    return value + 0.0  # -0.0 is 0


def _fraction(setting: Setting, raw: str, _tp: list[str]) -> float:
    value = _number(raw, float, "a number in (0, 1], e.g. 0.9")
    if not 0 < value <= 1:
        raise ValueProblem("must be a number in (0, 1], e.g. 0.9")
    return value


def _choice(setting: Setting, raw: str, _tp: list[str]) -> str:
    for choice in setting.choices:
        if raw.strip().lower() == choice.lower():
            return choice
    raise ValueProblem("must be one of: " + ", ".join(setting.choices))


def _tool_parser(setting: Setting, raw: str, tool_parsers: list[str]) -> str:
    if tool_parsers and raw not in tool_parsers:
        raise ValueProblem("is not a tool-call parser of the installed vLLM; valid: " + ", ".join(tool_parsers))
    return raw


def _router_replicas(setting: Setting, raw: str, _tp: list[str]) -> str:
    # normalized text (plans hold plain values); the router parses it again
    return " ".join(r.url + (f"={r.lmcache_http_port}" if r.lmcache_http_port else "")
                    for r in parse_router_replicas(raw))


def _duration(setting: Setting, raw: str, _tp: list[str]) -> float:
    value = _number(raw, float, "a number of seconds, e.g. 0.5")
    if not 0 < value <= MAX_SECONDS:
        raise ValueProblem(f"must be a number of seconds in (0, {MAX_SECONDS}], e.g. 0.5")
    return value


def _store_user(setting: Setting, raw: str, _tp: list[str]) -> str:
    text = raw.strip()
    if not re.fullmatch(r"[A-Za-z0-9._@:+=-]{1,256}", text):
        raise ValueProblem("must be a Redis user name: 1-256 letters, digits or ._@:+=- (no spaces)")
    return text


# One parser per kind of value (Setting.kind): each takes (setting, raw text, the installed tool parsers).
PARSERS = {
    "str": lambda s, raw, tp: raw, "args": lambda s, raw, tp: raw,
    "model": _model, "names": _names, "path": _path, "human_int_or_auto": _human_int_or_auto,
    "bool": lambda s, raw, tp: parse_bool(raw), "int": _whole, "seconds": _whole, "port": _port,
    "gib": _gib, "gib_auto": _gib, "gib_auto_off": _gib, "fraction": _fraction, "choice": _choice,
    "tool_parser": _tool_parser, "disk": lambda s, raw, tp: parse_disk(raw),
    "store_url": lambda s, raw, tp: parse_store_url(raw), "mp_server": lambda s, raw, tp: parse_mp_server(raw),
    "http_url": lambda s, raw, tp: parse_http_url(raw).url, "router_replicas": _router_replicas,
    "duration": _duration, "store_user": _store_user,
}


@dataclass(frozen=True)
class DiskChoice:
    """LMCACHE_LOCAL_DISK parsed: off, the image's default volume, or an explicit absolute path."""
    enabled: bool
    path: str | None = field(default=None)


def parse_disk(raw: str) -> DiskChoice:
    text = raw.strip()
    if text == "" or text.lower() in FALSE_WORDS:
        return DiskChoice(False)
    if text.lower() in TRUE_WORDS:
        return DiskChoice(True, None)
    if text.startswith("file://"):
        text = text[len("file://"):]
    if not text.startswith("/") or has_control(text):
        raise ValueProblem("must be an absolute path, a file:// URL, true (the image's volume) or false")
    return DiskChoice(True, text.rstrip("/") or "/")


DEFAULT_STORE_PORT = 6379
# A host name (RFC 1123 labels), an IPv4 address, or an IPv6 address in brackets.
_HOST = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}"
                   r"[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]{2,45}\]")


class _HostPort:
    host: str

    @property
    def bare_host(self) -> str:
        """The host as a socket or LMCache wants it (an IPv6 address without its brackets)."""
        return self.host.strip("[]")


@dataclass(frozen=True)
class StoreURL(_HostPort):
    """LMCACHE_SHARED_URL parsed: what LMCache's RESP client can reach (plain TCP, database 0)."""
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}"


def parse_store_url(raw: str) -> StoreURL:
    """redis://host[:port][/0], strictly: every other form is refused with what to write instead, because the
    parts LMCache's RESP client cannot honour (TLS, a database, a password in the URL) would otherwise be
    silently ignored or leak."""
    text = raw.strip()
    if has_control(text) or any(c.isspace() for c in text):
        raise ValueProblem("must be redis://host:port without spaces or control characters")
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ValueProblem("must be a URL: redis://host:port, e.g. redis://kv-store:6379")
    if scheme in ("rediss", "valkeys"):
        raise ValueProblem("asks for TLS, which LMCache's RESP client does not support (it speaks plain TCP): "
                           "use redis:// on a private network, or a TLS tunnel (stunnel, a service mesh) next to "
                           "each replica")
    if scheme not in ("redis", "valkey"):
        raise ValueProblem(f"has the scheme {scheme!r}: must be redis://host:port (a Redis or Valkey server)")
    if "@" in rest:
        raise ValueProblem("holds credentials: set LMCACHE_SHARED_USERNAME and LMCACHE_SHARED_PASSWORD (or "
                           "LMCACHE_SHARED_PASSWORD_FILE) instead, so that the password is never part of a URL "
                           "the appliance prints")
    if "?" in rest or "#" in rest:
        raise ValueProblem("takes no query or fragment: redis://host:port")
    hostport, _, path = rest.partition("/")
    if path not in ("", "0"):
        raise ValueProblem("names a database: LMCache's RESP client always uses database 0; use another Redis "
                           "server (or ACL key prefixes) to keep caches apart")
    m = re.fullmatch(r"(?P<host>\[[^\]]*\]|[^:]*)(?::(?P<port>[^:]*))?", hostport)
    if not m or not m.group("host"):
        raise ValueProblem("has no host: redis://host:port, e.g. redis://kv-store:6379")
    host, port_text = m.group("host"), m.group("port")
    if not _HOST.fullmatch(host):
        raise ValueProblem(f"has an invalid host {host[:80]!r}: a DNS name, an IPv4 address or [IPv6]")
    if port_text is None:
        port = DEFAULT_STORE_PORT
    elif not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueProblem("has an invalid port: must be 1-65535, e.g. redis://kv-store:6379")
    else:
        port = int(port_text)
    return StoreURL(host.lower(), port)


@dataclass(frozen=True)
class MPServer:
    """LMCACHE_SERVER parsed: the LMCache server a replica's connector reaches over ZMQ TCP."""
    host: str
    port: int | None  # None: APPLIANCE_LMCACHE_PORT


def parse_mp_server(raw: str) -> MPServer:
    """host[:port] or tcp://host[:port], strictly: LMCache's connector builds `{lmcache.mp.host}:{port}` and
    hands it to ZMQ, so anything else (another transport, a path, IPv6, which its ZMQ sockets are not set up
    for) is refused here with what to write, not found out by a vLLM that cannot connect."""
    text = raw.strip()
    if has_control(text) or any(c.isspace() for c in text):
        raise ValueProblem("must be host:port without spaces or control characters, e.g. kv-server:5555")
    if text.startswith("-"):
        raise ValueProblem("starts with '-': must be host:port, e.g. kv-server:5555")
    scheme, sep, rest = text.partition("://")
    if sep:
        if scheme.lower() != "tcp":
            raise ValueProblem(f"has the scheme {scheme[:20]!r}: the LMCache server of a kv-server container "
                               "listens on ZMQ TCP; write host:port or tcp://host:port")
        text = rest
    if any(c in text for c in "/?#@"):
        raise ValueProblem("must be host:port only (no path, query or credentials), e.g. kv-server:5555")
    if text.startswith("[") or text.count(":") > 1:
        raise ValueProblem("is an IPv6 address: LMCache's ZMQ client does not enable IPv6; use a host name or "
                           "an IPv4 address")
    host, colon, port_text = text.partition(":")
    if not host:
        raise ValueProblem("has no host: host:port, e.g. kv-server:5555")
    if not _HOST.fullmatch(host):
        raise ValueProblem(f"has an invalid host {host[:80]!r}: a DNS name or an IPv4 address")
    if not colon:
        return MPServer(host.lower(), None)
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueProblem("has an invalid port: must be 1-65535, e.g. kv-server:5555")
    return MPServer(host.lower(), int(port_text))


# --- The coordinator router's addresses (APPLIANCE_ROUTER_*) ----------------------------------------------
@dataclass(frozen=True)
class HTTPURL(_HostPort):
    """An http(s)://host:port the router talks to (no credentials, path, query: it would print them or drop them)."""
    scheme: str
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


def parse_http_url(raw: str) -> HTTPURL:
    text = raw.strip()
    if has_control(text) or any(c.isspace() for c in text):
        raise ValueProblem("must be http://host:port without spaces or control characters")
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("http", "https"):
        raise ValueProblem("must be an http:// URL: http://host:port")
    if "@" in rest:
        raise ValueProblem("holds credentials (user@ or user:password@), which the router would have to print "
                           "or log; reach the service without them (a private network, a NetworkPolicy)")
    if "?" in rest or "#" in rest:
        raise ValueProblem("takes no query or fragment: http://host:port")
    hostport, _, path = rest.partition("/")
    if path:
        raise ValueProblem("takes no path: http://host:port")
    m = re.fullmatch(r"(?P<host>\[[^\]]*\]|[^:]*)(?::(?P<port>[^:]*))?", hostport)
    if not m or not m.group("host"):
        raise ValueProblem("has no host: http://host:port")
    host, port_text = m.group("host"), m.group("port")
    if not _HOST.fullmatch(host):
        raise ValueProblem(f"has an invalid host {host[:80]!r}: a DNS name, an IPv4 address or [IPv6]")
    if port_text is None:
        port = 443 if scheme == "https" else 80
    elif not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueProblem("has an invalid port: must be 1-65535, e.g. http://replica-0:8000")
    else:
        port = int(port_text)
    return HTTPURL(scheme, host.lower(), port)


@dataclass(frozen=True)
class RouterReplica:
    """One entry of APPLIANCE_ROUTER_REPLICAS: a vLLM replica, and (optionally) the HTTP port its LMCache server
    registered with the coordinator, for when several servers share one IP address."""
    url: str
    host: str  # bare (an IPv6 address without brackets), for name resolution
    lmcache_http_port: int | None = None


MAX_ROUTER_REPLICAS = 256


def parse_router_replicas(raw: str) -> tuple[RouterReplica, ...]:
    entries = raw.split()
    if len(entries) > MAX_ROUTER_REPLICAS:
        raise ValueProblem(f"lists {len(entries)} replicas; at most {MAX_ROUTER_REPLICAS}")
    out: list[RouterReplica] = []
    for n, entry in enumerate(entries, 1):
        url_text, eq, port_text = entry.partition("=")
        try:
            url = parse_http_url(url_text)
        except ValueProblem as e:
            raise ValueProblem(f"replica {n}: {e}") from None
        port = None
        if eq:
            if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
                raise ValueProblem(f"replica {n}: the LMCache HTTP port after '=' must be 1-65535, e.g. "
                                   "http://replica-0:8000=8081")
            port = int(port_text)
        if any(r.url == url.url for r in out):
            raise ValueProblem(f"replica {n}: {url.url} is listed twice")
        out.append(RouterReplica(url.url, url.bare_host, port))
    return tuple(out)
