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

import math
from dataclasses import dataclass, field

TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")

# Where the image mounts its volumes (compose.yaml and the Dockerfile use the same paths).
DEFAULT_DISK_TIER_PATH = "/var/lib/appliance/kv-disk"
DEFAULT_RUN_DIR = "/run/appliance"


@dataclass(frozen=True)
class Setting:
    name: str
    kind: str  # see parse_value: str, int, float, bool, gib, port, fraction, choice, seconds, disk, args
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

    @property
    def cli_flag(self) -> str:
        """The override flag after `serve`: VLLM_MAX_MODEL_LEN -> --max-model-len, LMCACHE_X -> --lmcache-x."""
        base = self.name[len("VLLM_"):] if self.name.startswith("VLLM_") else self.name
        return "--" + base.lower().replace("_", "-")

    @property
    def target_text(self) -> str:
        return self.target or (f"vllm serve {self.flag}" if self.flag else "")


def _s(*args, **kwargs) -> Setting:
    return Setting(*args, **kwargs)


SETTINGS: tuple[Setting, ...] = (
    # --- vLLM: the seed's variables -------------------------------------------------------------------
    _s("VLLM_MODEL", "str", "Model to serve: a Hugging Face id or a path inside the container.",
       default="Qwen/Qwen3-0.6B", target="vllm serve <model> (positional)", example="Qwen/Qwen3-0.6B"),
    _s("VLLM_HOST", "str", "Address the OpenAI-compatible API listens on.", default="0.0.0.0", flag="--host"),
    _s("VLLM_PORT", "port", "Port of the OpenAI-compatible API. (vLLM itself reads VLLM_PORT as an internal "
       "port; the appliance translates it to --port and removes it from vLLM's environment.)",
       default=8000, flag="--port"),
    _s("VLLM_SERVED_MODEL_NAME", "str", "Model name clients send in requests (default: the model id).",
       flag="--served-model-name", registry_key="served_model_name"),
    _s("VLLM_MAX_MODEL_LEN", "int", "Maximum context length in tokens (prompt + output).",
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
    _s("VLLM_EXTRA_ARGS", "args", "Raw arguments appended to `vllm serve` (shell-split). Escape hatch: not "
       "validated by the appliance.", target="appended to vllm serve", example="--enable-prefix-caching"),
    # --- KV offloading -------------------------------------------------------------------------------
    _s("VLLM_KV_OFFLOADING_BACKEND", "choice", "KV cache offloading: `lmcache` (LMCache CPU + disk tiers), "
       "`native` (vLLM's own CPU offload), or unset / `none` for no offloading.",
       group="KV offloading", choices=("lmcache", "native", "none"), registry_key="kv_offloading_backend",
       target="lmcache: LMCache server + --kv-transfer-config; native: --kv-offloading-backend native",
       example="lmcache"),
    _s("VLLM_KV_OFFLOADING_SIZE", "gib", "Size of the CPU tier in GiB, for all GPUs together (same tier as "
       "LMCACHE_MAX_LOCAL_CPU_SIZE; set either). Default 5.", group="KV offloading",
       registry_key="kv_offloading_size", target="lmcache server --l1-size-gb / --kv-offloading-size",
       example="5.0"),
    # --- LMCache -------------------------------------------------------------------------------------
    _s("LMCACHE_MODE", "choice", "`server`: a supervised LMCache server holds the tiers, so they survive a "
       "vLLM restart (default). `in-process`: LMCache runs inside each vLLM worker: the fastest hit for one long "
       "prompt at a time, but slower under concurrent load, and its tiers do not survive a vLLM restart "
       "(docs/BENCHMARKS.md, run 2).", default="server",
       group="LMCache", choices=("server", "in-process"), target="process layout"),
    _s("LMCACHE_LOCAL_CPU", "bool", "Keep a CPU tier. Server mode always has one; `false` is only "
       "valid with LMCACHE_MODE=in-process.", default=True, group="LMCache",
       target="LMCache local_cpu"),
    _s("LMCACHE_MAX_LOCAL_CPU_SIZE", "gib", "Size of the CPU tier in GiB, for all GPUs together (same tier "
       "as VLLM_KV_OFFLOADING_SIZE).", group="LMCache", target="lmcache server --l1-size-gb / max_local_cpu_size",
       example="5.0"),
    _s("LMCACHE_LOCAL_DISK", "disk", "Disk tier: a path, a file:// URL, or `true` for the image's volume "
       f"({DEFAULT_DISK_TIER_PATH}); `false` or empty for none. A subdirectory per model/dtype/chunk size/"
       "TP size/LMCache version keeps caches of different models apart.", group="LMCache",
       target="lmcache server --l2-adapter fs_native / local_disk", example="true"),
    _s("LMCACHE_MAX_LOCAL_DISK_SIZE", "gib", "Cap of the disk tier in GiB, for all GPUs together; the tier "
       "never grows past it (LMCache's L2 eviction, plus a prune at start).", default=50.0, group="LMCache",
       target="fs_native max_capacity_gb + LRU eviction / max_local_disk_size", example="50.0"),
    _s("LMCACHE_CHUNK_SIZE", "int", "Tokens per KV chunk LMCache stores and looks up.", default=256,
       group="LMCache", minimum=1, target="lmcache server --chunk-size / chunk_size"),
    _s("LMCACHE_EVICTION_POLICY", "choice", "Eviction policy of the LMCache server's CPU and disk tiers.",
       default="LRU", group="LMCache", choices=("LRU", "IsolatedLRU"), target="lmcache server --eviction-policy"),
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
    _s("APPLIANCE_RUN_DIR", "str", "Where `serve` writes the rendered supervisord config and plan.",
       default=DEFAULT_RUN_DIR, group="Appliance", target="run directory"),
    _s("APPLIANCE_VLLM_COMMAND", "args", "Command that starts vLLM (before `serve`).", default="vllm",
       group="Appliance", target="vllm argv[0:]"),
    _s("APPLIANCE_LMCACHE_COMMAND", "args", "Command that starts LMCache (before `server`).", default="lmcache",
       group="Appliance", target="lmcache argv[0:]"),
    _s("APPLIANCE_LMCACHE_PORT", "port", "ZMQ port of the LMCache server (loopback only).", default=5555,
       group="Appliance", target="lmcache server --port, lmcache.mp.port"),
    _s("APPLIANCE_LMCACHE_HTTP_PORT", "port", "HTTP port of the LMCache server, for its /healthcheck.",
       default=8080, group="Appliance", target="lmcache server --http-port"),
    _s("APPLIANCE_LMCACHE_METRICS_PORT", "port", "Port of the LMCache server's own Prometheus exporter "
       "(inside the container; the appliance's metrics port re-exposes it).", default=9090, group="Appliance",
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
    _s("APPLIANCE_LMCACHE_WAIT", "seconds", "How long vLLM waits for the LMCache server to be healthy.",
       default=300, group="Appliance", minimum=1, target="vllm program start"),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
BY_CLI_FLAG: dict[str, Setting] = {s.cli_flag: s for s in SETTINGS}
SECRET_NAMES = frozenset(s.name for s in SETTINGS if s.secret)
PREFIXES = ("VLLM_", "LMCACHE_", "APPLIANCE_")

# Secrets that may come from a file instead (postgres-image style VAR / VAR_FILE).
FILE_SECRETS = {"VLLM_API_KEY": "VLLM_API_KEY_FILE", "HF_TOKEN": "HF_TOKEN_FILE"}

# vLLM flags the appliance owns: setting them directly would bypass what the appliance sizes and wires.
OWNED_FLAGS = {
    "--kv-transfer-config": "the appliance writes it from VLLM_KV_OFFLOADING_BACKEND; unset the backend "
                            "to pass your own",
    "--kv-offloading-backend": "use VLLM_KV_OFFLOADING_BACKEND",
    "--kv-offloading-size": "use VLLM_KV_OFFLOADING_SIZE",
    "--shutdown-timeout": "use APPLIANCE_SHUTDOWN_TIMEOUT, which also sizes supervisord's stop wait",
}


class ValueProblem(ValueError):
    """A value that does not parse; the message says what was expected (the caller adds name and value)."""


def parse_bool(raw: str) -> bool:
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueProblem("must be true or false (also accepted: 1/0, yes/no, on/off)")


def _number(raw: str, cast, what: str):
    try:
        value = cast(raw.strip())
    except ValueError:
        raise ValueProblem(f"must be {what}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueProblem(f"must be {what}")
    return value


def parse_value(setting: Setting, raw: str, tool_parsers: list[str] | None = None):
    """Turn the raw text of a variable into its typed value, or raise ValueProblem."""
    kind = setting.kind
    if kind in ("str", "args"):
        return raw
    if kind == "bool":
        return parse_bool(raw)
    if kind in ("int", "seconds"):
        value = _number(raw, int, "a whole number")
    elif kind == "port":
        value = _number(raw, int, "a port number (1-65535)")
        if not 1 <= value <= 65535:
            raise ValueProblem("must be a port number (1-65535)")
        return value
    elif kind == "gib":
        value = _number(raw, float, "a size in GiB greater than 0, e.g. 5.0")
        if value <= 0:
            raise ValueProblem("must be a size in GiB greater than 0, e.g. 5.0")
        return value
    elif kind == "fraction":
        value = _number(raw, float, "a number in (0, 1], e.g. 0.9")
        if not 0 < value <= 1:
            raise ValueProblem("must be a number in (0, 1], e.g. 0.9")
        return value
    elif kind == "choice":
        for choice in setting.choices:
            if raw.strip().lower() == choice.lower():
                return choice
        raise ValueProblem("must be one of: " + ", ".join(setting.choices))
    elif kind == "tool_parser":
        if tool_parsers and raw not in tool_parsers:
            raise ValueProblem("is not a tool-call parser of the installed vLLM; valid: " + ", ".join(tool_parsers))
        return raw
    elif kind == "disk":
        return parse_disk(raw)
    else:  # pragma: no cover - a typo in the table above
        raise AssertionError(f"unknown kind {kind} for {setting.name}")
    if setting.minimum is not None and value < setting.minimum:
        raise ValueProblem(f"must be at least {setting.minimum:g}")
    return value


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
    if not text.startswith("/"):
        raise ValueProblem("must be an absolute path, a file:// URL, true (the image's volume) or false")
    return DiskChoice(True, text.rstrip("/") or "/")
