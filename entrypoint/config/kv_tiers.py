"""The KV offloading step of a plan: which tiers exist, how big they are, and how vLLM reaches them.

`lmcache` in server mode (the default) starts a supervised LMCache server and points vLLM's LMCacheMPConnector
at it; in-process mode renders LMCache's config file for LMCacheConnectorV1; `native` uses vLLM's own CPU
offload. `plan_kv_tiers` is the step: it takes the resolved settings and what the vLLM command step found
(KvInputs) and returns the KV part of the plan with its problems (KvPart); the functions below each fill in
their piece of that one KvPart.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import resources, roles
from .flags import number_text, resolve_flag
from .plan import DiskTier, LmcacheServer, SharedStore
from .resolved import Problems, Resolved
from .settings import (
    AUTO,
    DEFAULT_DISK_TIER_PATH,
    LMCACHE_OWNED_FLAGS,
    LMCACHE_REFUSED_FLAGS,
    SETTINGS,
    DiskChoice,
    MPServer,
    StoreURL,
    owned_flag_problem,
)
from .sources import REGISTRY

LMCACHE_CONNECTOR_MP = "LMCacheMPConnector"
LMCACHE_CONNECTOR_IN_PROCESS = "LMCacheConnectorV1"
CONNECTOR_MODULE = "entrypoint.lmcache_ext.connector"
IDENTITY_MIDDLEWARE = "entrypoint.vllm_ext.identity.KvIdentityMiddleware"
IDENTITY_CONFIG_KEY = "appliance.kv_identity"  # kv_connector_extra_config keys the connector reads
SKIP_LOOKUP_CONFIG_KEY = "appliance.skip_useless_lookup"
APPLIANCE_CONNECTOR_SETTINGS = ("LMCACHE_SKIP_USELESS_LOOKUP",)  # read by the appliance's connector: server mode
LMCACHE_REAP_S = 30  # LMCache server: seconds of silence before a dead vLLM's KV registration is dropped
# vLLM -> LMCache server pings (LMCache wants the reap timeout >= 3x this). They also decide how soon vLLM
# stops waiting on a dead server: each ping waits `interval` for its answer (HeartbeatThread._execute,
# send_ping in lmcache/integration/vllm/vllm_multi_process_adapter.py), so a dead server is seen within 2x
# this; from then on lookups answer 0 (LMCacheMPSchedulerAdapter.check_lookup_result), loads and stores are
# not submitted, and pending ones are drained as failed (LMCacheMPWorkerAdapter.submit_retrieve_request,
# get_finished): "degraded mode" (docs/RESILIENCE.md). 5 s means up to 10 s of stalled requests after the
# server dies; 2 s would mean 4 s, but also that a server too busy to answer a ping within 2 s counts as dead
# under load. It stays at 5 s, the interval every GPU run so far used, until the load-and-fault suite
# (bench/suite.py loadfaults) has measured 2 s under load.
LMCACHE_HEARTBEAT_S = 5  # LMCACHE_HEARTBEAT_INTERVAL's default (settings.py)
MAX_LOOKUP_WORKERS = 64  # LMCACHE_LOOKUP_WORKERS: a bound that catches a typo (4000) before LMCache starts the threads
# Bound on one synchronous message to the server while its pings still answer (lookup acknowledgements,
# prefetch status, KV registration, clear): LMCache's default is 300 s (ExtraConfigDefault.mq_timeout), for
# which a request whose lookup is lost would wait in the queue. The launcher starts vLLM only once the
# server's /healthcheck answers, so 30 s is far above what registration takes.
LMCACHE_MQ_TIMEOUT_S = 30.0
# vLLM's KVTransferConfig.kv_load_failure_policy (default "fail"): a request whose KV load from LMCache failed
# (the server died, or was marked unhealthy) is rescheduled and its prompt recomputed (v1/core/sched/
# scheduler.py: recompute_kv_load_failures) instead of ending with an error.
KV_LOAD_FAILURE_POLICY = "recompute"
# The disk tier after an upgrade: the namespace names the LMCache version (disk_namespace), and no release
# note promises that fs_native's files of one version read back in another, so a new version starts its own
# namespace. The old one is left alone (a rollback finds it again) and counts against the cap
# (common/disk_prune.tier_dirs), so that the volume never holds more than LMCACHE_MAX_LOCAL_DISK_SIZE.
NAMESPACE_MARK = "__lmcache-"
OTHER_NAMESPACES = ("kept, not read (another KV identity: other weights, KV-affecting settings, vLLM or LMCache "
                    "version, chunk size; `config` shows this one's inputs); they count against "
                    "LMCACHE_MAX_LOCAL_DISK_SIZE, least recently used files pruned first (docs/UPGRADING.md)")
# LMCache's RESP client reads the store's credentials from these when its config leaves them empty
# (resp_l2_adapter.py, redis_adapter.py): the password never has to be on a command line or in a file.
RESP_PASSWORD_ENV = "LMCACHE_RESP_PASSWORD"
RESP_USERNAME_ENV = "LMCACHE_RESP_USERNAME"
SHARED_SETTINGS = ("LMCACHE_SHARED_URL", "LMCACHE_SHARED_USERNAME", "LMCACHE_SHARED_PASSWORD",
                   "LMCACHE_SHARED_MAX_SIZE")
# Hot prefixes pre-warmed (prewarm_module): the server module, its key file in the disk tier's namespace
# directory (the namespace names model, chunk size, TP size and LMCache version, so the keys always fit the
# files next to them), and the share of the CPU tier `auto` loads: half, so that what the first requests
# store after a restart finds free room and loading never makes LMCache evict on its own.
PREWARM_MODULE = "entrypoint.lmcache_ext.prewarm"
PREWARM_KEY_FILE = ".appliance-prewarm-keys.json"
PREWARM_AUTO_SHARE = 0.5
PREWARM_SETTINGS = ("LMCACHE_PREWARM_SIZE", "LMCACHE_PREWARM_RECORD_INTERVAL")
L2_TRIGGER_WATERMARK = 0.8  # share of the disk tier's cap at which LMCache's L2 eviction starts
L2_EVICTION_RATIO = 0.2  # share of its keys it then deletes (down to ~64% of the cap)
LMCACHE_KEYS_WITH_SERVER_EQUIVALENT = {"chunk_size", "local_cpu", "max_local_cpu_size", "local_disk",
                                       "max_local_disk_size"}


def model_slug(model: str) -> str:
    """A directory-safe name for a model id or path (a path gets a hash so that two `model` dirs differ)."""
    if model.startswith(("/", ".")):
        digest = hashlib.sha256(model.encode()).hexdigest()[:8]
        base = Path(model.rstrip("/")).name or "model"
        return re.sub(r"[^A-Za-z0-9._-]", "_", f"{base}-{digest}")
    return re.sub(r"[^A-Za-z0-9._-]", "_", model.replace("/", "--"))


def disk_namespace(model: str, identity: str, lmcache_version: str) -> str:
    """The disk tier's directory for one KV identity (kv_identity.py: weights, KV-affecting flags, versions,
    chunk size), so that a change of any of them never reads another's files, and the model and LMCache
    version stay readable in the name."""
    return f"{model_slug(model)}__kv-{identity}{NAMESPACE_MARK}{lmcache_version}"


@dataclass(frozen=True)
class KvInputs:
    s: Resolved
    model: str
    identity: str  # the KV identity's digest (kv_identity.py)
    vllm_flags: dict[str, str]  # every flag vLLM will be given -> its last value
    api_port: int
    role: str


@dataclass
class KvPart(Problems):
    """The KV step's output: the LMCache program (or none), the tiers, and what vLLM is given to reach them."""
    mode: str | None = None
    argv: list[str] | None = None  # the LMCache server's command (server mode)
    config: dict | None = None  # in-process mode: LMCache's config, rendered to config_file
    config_file: str | None = None
    env: dict[str, str] = field(default_factory=dict)  # the LMCache server's environment additions
    health_url: str | None = None
    disk: DiskTier | None = None
    shared_store: SharedStore | None = None
    server: LmcacheServer | None = None  # a replica's LMCache server (LMCACHE_SERVER)
    vllm_argv: list[str] = field(default_factory=list)  # appended to the vLLM command
    vllm_env: dict[str, str] = field(default_factory=dict)  # added to vLLM's environment
    cpu_tier_gib: float | None = None
    cpu_tier_source: str = ""  # a variable, or auto's reading
    disk_tier_source: str = ""
    prewarm: tuple[float, str] | None = None  # (GiB pre-warmed, why/how)
    recorded: dict[str, object] = field(default_factory=dict)  # values recorded as LMCache spells them


def plan_kv_tiers(inputs: KvInputs) -> KvPart:
    out = KvPart()
    kv_offloading(inputs, out)
    return out


def kv_offloading(inputs: KvInputs, out: KvPart) -> None:
    v = inputs.s.values
    backend = v.get("VLLM_KV_OFFLOADING_BACKEND")
    backend = None if backend == "none" else backend
    lmcache_names = sorted(n for n in inputs.s.user_given if n.startswith("LMCACHE_"))
    if backend != "lmcache" and lmcache_names:
        out.error(f"{', '.join(lmcache_names)}: LMCache settings take effect only with "
                  f"VLLM_KV_OFFLOADING_BACKEND=lmcache (it is {backend or 'none'}); set it, or remove them")
    problem = roles.role_problem(inputs.role, v.get("LMCACHE_SERVER"), backend, v.get("LMCACHE_MODE"))
    if problem:
        out.error(problem)
        return
    if backend is None:
        if "VLLM_KV_OFFLOADING_SIZE" in inputs.s.user_given:
            out.error("VLLM_KV_OFFLOADING_SIZE is set but VLLM_KV_OFFLOADING_BACKEND is none: set "
                      "VLLM_KV_OFFLOADING_BACKEND=lmcache (or native), or remove VLLM_KV_OFFLOADING_SIZE")
        return
    if backend == "lmcache" and inputs.vllm_flags.get("--enable-prompt-embeds") == "true":
        # LMCache 0.5.6 keys a chunk by its token ids (multimodal inputs by their hashes too), never by prompt
        # embeddings: two different embedded prompts with the same placeholder ids would share KV.
        out.error("VLLM_ENABLE_PROMPT_EMBEDS with VLLM_KV_OFFLOADING_BACKEND=lmcache: LMCache keys KV by token ids, "
                  "and a prompt given as embeddings is not its token ids, so different prompts could load each "
                  "other's KV. Use VLLM_KV_OFFLOADING_BACKEND=native (vLLM keys by the embeddings) or none")
    if backend == "lmcache" and v.get("LMCACHE_SERVER") is not None:
        external_server(inputs, out)  # a replica: the tiers are the LMCache server's, not sized here
        return
    cpu = cpu_tier_gib(inputs, out)
    if cpu is None:
        return  # too little memory for a tier: reported by cpu_tier_gib (offloading off, or an error)
    out.cpu_tier_gib = cpu
    check_cpu_tier_fits(inputs, out, cpu)
    if backend == "native":
        out.mode = "native"
        out.vllm_argv += ["--kv-offloading-backend", "native", "--kv-offloading-size", number_text(cpu)]
        return
    mode = v["LMCACHE_MODE"]
    out.mode = mode
    chunk = int(v["LMCACHE_CHUNK_SIZE"])
    tp = int(v["VLLM_TENSOR_PARALLEL_SIZE"])
    disk_choice: DiskChoice = v["LMCACHE_LOCAL_DISK"]
    if disk_choice.enabled:
        disk_tier(inputs, out, disk_choice, chunk, tp)
    shared_store(inputs, out)
    if mode == "server":
        lmcache_server(inputs, out, cpu, chunk)
    else:
        in_process_identity(inputs, out)
        lmcache_in_process(inputs, out, cpu, chunk, tp)
    out.env = dict(inputs.s.lmcache_env)
    shared_store_credentials(inputs, out)


def external_server(inputs: KvInputs, out: KvPart) -> None:
    """A replica: vLLM's connector points at LMCACHE_SERVER; no LMCache program, no tiers of its own."""
    v = inputs.s.values
    server: MPServer = v["LMCACHE_SERVER"]
    for key in sorted(inputs.s.lmcache_keys):
        if key not in LMCACHE_KEYS_WITH_SERVER_EQUIVALENT:
            out.error(f"LMCACHE_{key.upper()}: applies in in-process mode only (LMCACHE_MODE=in-process); a replica "
                      "with LMCACHE_SERVER uses that server's configuration")
    port = server.port or int(v["APPLIANCE_LMCACHE_PORT"])
    http_port = int(v["APPLIANCE_LMCACHE_HTTP_PORT"])
    out.mode = "external"
    out.server = LmcacheServer(url=f"tcp://{server.host}:{port}", host=server.host, port=port,
                               health_url=f"http://{server.host}:{http_port}/healthcheck")
    out.vllm_argv += ["--kv-transfer-config", mp_transfer_config(inputs, out, server.host, port)]
    announce_identity(inputs, out)


def shared_store(inputs: KvInputs, out: KvPart) -> None:
    """LMCACHE_SHARED_*: the store every replica shares (plan.lmcache.shared_store), checked before either mode
    uses it."""
    v = inputs.s.values
    url: StoreURL | None = v.get("LMCACHE_SHARED_URL")
    if url is None:
        given = [n for n in SHARED_SETTINGS if n in inputs.s.user_given]
        if given:
            out.error(f"{', '.join(given)}: set LMCACHE_SHARED_URL too (redis://host:port of the shared store), "
                      "or remove them")
        return
    for name in (RESP_PASSWORD_ENV, RESP_USERNAME_ENV):
        ours = "LMCACHE_SHARED_PASSWORD" if name == RESP_PASSWORD_ENV else "LMCACHE_SHARED_USERNAME"
        if name in inputs.s.lmcache_env:
            out.error(f"{name} is set and LMCACHE_SHARED_URL too: set {ours} instead (the appliance passes it to "
                      f"LMCache as {name})")
    out.shared_store = SharedStore(url=url.url, host=url.bare_host, port=url.port,
                                 username=v.get("LMCACHE_SHARED_USERNAME", ""))


def shared_store_credentials(inputs: KvInputs, out: KvPart) -> None:
    """The password reaches LMCache only through its environment: the server's in server mode (vLLM never sees
    it), vLLM's in in-process mode, where LMCache runs inside vLLM."""
    password = inputs.s.raw.values.get("LMCACHE_SHARED_PASSWORD", "")
    if not out.shared_store or not password:
        return
    env = out.env if out.mode == "server" else out.vllm_env
    env[RESP_PASSWORD_ENV] = password


def disk_tier(inputs: KvInputs, out: KvPart, choice: DiskChoice, chunk: int, tp: int) -> None:
    v = inputs.s.values
    base = choice.path or DEFAULT_DISK_TIER_PATH
    ns = disk_namespace(inputs.model, inputs.identity, inputs.s.schema.lmcache_version)
    path = f"{base.rstrip('/')}/{ns}"
    size = v["LMCACHE_MAX_LOCAL_DISK_SIZE"]
    if size == AUTO:
        size, out.disk_tier_source = resources.auto_disk_tier(inputs.s.host, base, path)
        if size is None:
            out.error(f"LMCACHE_MAX_LOCAL_DISK_SIZE=auto: too little room for a disk tier at {base} "
                      f"({out.disk_tier_source.removeprefix('auto: ')}; at least {resources.AUTO_MIN_GIB:g} GiB); free "
                      "space on the volume, or set LMCACHE_LOCAL_DISK=false")
            return
    else:
        out.disk_tier_source = "LMCACHE_MAX_LOCAL_DISK_SIZE"
    out.disk = DiskTier(base=base, path=path, max_size_gib=float(size), others=OTHER_NAMESPACES)
    if inputs.s.host.in_writable_layer(base):
        out.warn(f"the disk tier {base} is not on a volume: it lives in the container's writable layer "
                 "(slower, and lost when the container is re-created). Mount a volume there (compose: "
                 f"`volumes: [\"kv-disk:{base}\"]`), or set LMCACHE_LOCAL_DISK=true for the image's volume")


def cpu_tier_gib(inputs: KvInputs, out: KvPart) -> float | None:
    """The CPU tier (GiB, all GPUs together): the operator's size, the registry's, or auto from the readings.
    None (recorded as an error, or as offloading off with a warning) where auto finds too little memory."""
    v = inputs.s.values
    # a size in GiB, AUTO, or None (unset)
    kv: Any = v.get("VLLM_KV_OFFLOADING_SIZE")
    lmc: Any = v.get("LMCACHE_MAX_LOCAL_CPU_SIZE")
    kv_user, lmc_user = ("VLLM_KV_OFFLOADING_SIZE" in inputs.s.user_given,
                         "LMCACHE_MAX_LOCAL_CPU_SIZE" in inputs.s.user_given)
    if kv_user and lmc_user and kv != lmc and (AUTO in (kv, lmc) or abs(kv - lmc) > 1e-9):
        out.error(f"VLLM_KV_OFFLOADING_SIZE={_gib(kv)} and LMCACHE_MAX_LOCAL_CPU_SIZE={_gib(lmc)} describe the same "
                  "CPU tier but differ: set only one of them (or both to the same value)")
    chosen, name = AUTO, None
    for value, given, var in ((kv, kv_user, "VLLM_KV_OFFLOADING_SIZE"), (lmc, lmc_user, "LMCACHE_MAX_LOCAL_CPU_SIZE"),
                              (kv, True, "VLLM_KV_OFFLOADING_SIZE"), (lmc, True, "LMCACHE_MAX_LOCAL_CPU_SIZE")):
        if value is not None and given:
            chosen, name = value, var
            break
    if chosen != AUTO:
        assert name is not None  # set with chosen
        out.cpu_tier_source = name + (" (model registry)" if inputs.s.raw.sources.get(name) == REGISTRY else "")
        return float(chosen)
    size, out.cpu_tier_source = resources.auto_cpu_tier(inputs.s.host)
    if size is not None:
        return size
    why = out.cpu_tier_source.removeprefix("auto: ")
    fix = ("raise the locked-memory limit (compose `ulimits: {memlock: -1}`, docker run --ulimit memlock=-1)"
           if "locked-memory" in why else "give the container more memory")
    if name is None and "VLLM_KV_OFFLOADING_BACKEND" not in inputs.s.user_given:  # nobody asked for offloading
        out.warn(f"KV offloading is off: too little memory for a CPU tier ({why}; at least "
                 f"{resources.AUTO_MIN_GIB:g} GiB). To have one, {fix}; to silence this, set "
                 "VLLM_KV_OFFLOADING_BACKEND=none")
    else:
        out.error(f"VLLM_KV_OFFLOADING_SIZE=auto: too little memory for a CPU tier ({why}; at least "
                  f"{resources.AUTO_MIN_GIB:g} GiB); {fix}, set a size, or set VLLM_KV_OFFLOADING_BACKEND=none")
    return None


def check_cpu_tier_fits(inputs: KvInputs, out: KvPart, cpu: float) -> None:
    """A tier larger than the container's memory: a warning here, an error in preflight (same readings)."""
    problem = cpu_tier_problem(inputs.s.host, cpu, out.cpu_tier_source)
    if problem:
        out.warn(problem + "; `serve` refuses to start with it")


def cpu_tier_problem(host: resources.Host, cpu: float, source: str) -> str | None:
    memory = host.memory()
    if memory is None or cpu * resources.GIB <= memory.bytes:
        return None
    fit, _ = resources.auto_cpu_tier(host)
    var = source.split(" ", 1)[0] if source.startswith(("VLLM_", "LMCACHE_")) else "VLLM_KV_OFFLOADING_SIZE"
    fix = (f"set {var}={number_text(fit)} (or auto)" if fit else
           "give the container more memory, or set VLLM_KV_OFFLOADING_BACKEND=none")
    return (f"the CPU tier of {number_text(cpu)} GiB ({source}) is larger than the "
            f"{resources.gib_text(memory.bytes)} of memory this container may use ({memory.source}); {fix}")


def _gib(value: float | str) -> str:
    return value if value == AUTO else f"{value:g}"


def lmcache_server(inputs: KvInputs, out: KvPart, cpu: float, chunk: int) -> None:
    v = inputs.s.values
    if v["LMCACHE_LOCAL_CPU"] is False:
        out.error("LMCACHE_LOCAL_CPU=false: the LMCache server always keeps a CPU tier; for a disk-only "
                  "cache set LMCACHE_MODE=in-process")
    for key in sorted(inputs.s.lmcache_keys):
        if key not in LMCACHE_KEYS_WITH_SERVER_EQUIVALENT:
            out.error(f"LMCACHE_{key.upper()}: applies in in-process mode only (LMCACHE_MODE=in-process); "
                      "the LMCache server takes extra options from LMCACHE_SERVER_EXTRA_ARGS")
    port, http_port = int(v["APPLIANCE_LMCACHE_PORT"]), int(v["APPLIANCE_LMCACHE_HTTP_PORT"])
    metrics_port = int(v["APPLIANCE_LMCACHE_METRICS_PORT"])
    # Every flag is given explicitly, so that a release that changes a default (0.5.6: --http-host
    # 0.0.0.0 -> 127.0.0.1) or stops requiring one (--l1-size-gb) does not change what runs.
    bind = roles.lmcache_bind_host(inputs.role)
    argv = [*inputs.s.split("APPLIANCE_LMCACHE_COMMAND", str(v["APPLIANCE_LMCACHE_COMMAND"]), out), "server",
            "--host", bind, "--port", str(port),
            "--http-host", bind, "--http-port", str(http_port),
            "--chunk-size", str(chunk), "--l1-size-gb", number_text(cpu),
            # A vLLM that dies keeps its GPU KV cache mapped in the server until the server reaps it:
            # 120 s by default, during which a restarted vLLM finds too little free GPU memory and fails.
            # 30 s is LMCache's floor; vLLM pings every LMCACHE_HEARTBEAT_S, well under a third of it.
            "--worker-reap-timeout-seconds", str(LMCACHE_REAP_S),
            # Its exporter, read (and re-exposed with the appliance's own) by the `metrics` program.
            "--prometheus-port", str(metrics_port)]
    argv += server_flag_settings(inputs, out)
    if int(v.get("LMCACHE_LOOKUP_WORKERS") or 1) > MAX_LOOKUP_WORKERS:
        out.error(inputs.s.bad_value("LMCACHE_LOOKUP_WORKERS", str(v["LMCACHE_LOOKUP_WORKERS"]),
                                     f"at most {MAX_LOOKUP_WORKERS} (threads of one pool; more only contend for "
                                     "the same locks)"))
    if out.disk:
        # fs_native: LMCache's C++ file-system tier. Unlike the `fs` adapter it declares a capacity, and
        # with an `eviction` block LMCache's L2EvictionController (storage_controllers/eviction_controller.py)
        # checks it every second: at trigger_watermark of max_capacity_gb it deletes eviction_ratio of its
        # least recently used keys. Written out, not left to LMCache's defaults (0.8, 0.2), so that a release
        # that changes them does not change the cap. What it cannot see: its usage counts only the keys this
        # server process stored (L2AdapterInterface._notify_keys_stored; NativeConnectorL2Adapter does not
        # scan base_path at start), so files an earlier server wrote (before a restart) are read but never
        # counted or evicted: the watchdog's prune (APPLIANCE_DISK_PRUNE_INTERVAL) holds the cap for those.
        adapter = {"type": "fs_native", "base_path": out.disk.path, "max_capacity_gb": out.disk.max_size_gib,
                   "eviction": {"eviction_policy": "LRU", "trigger_watermark": L2_TRIGGER_WATERMARK,
                                "eviction_ratio": L2_EVICTION_RATIO}}
        argv += ["--l2-adapter", json.dumps(adapter, separators=(",", ":"))]
    if out.shared_store:
        argv += ["--l2-adapter", json.dumps(shared_adapter(inputs, out), separators=(",", ":"))]
    argv += prewarm_module(inputs, out, cpu)
    planned = set(a for a in argv if a.startswith("--"))
    known_to_installed_lmcache(inputs, out, sorted(planned), "")
    server_flags = inputs.s.schema.lmcache_server_flags
    for arg in inputs.s.split("LMCACHE_SERVER_EXTRA_ARGS", str(v.get("LMCACHE_SERVER_EXTRA_ARGS", "")), out):
        flag = resolve_flag(arg, server_flags, underscores=False) if server_flags else arg.split("=", 1)[0]
        shown = arg.split("=", 1)[0]
        typed = flag if shown == flag else f"{shown} (read by LMCache as {flag})"
        if flag is None and arg.startswith("--") and arg != "--":
            out.error(f"LMCACHE_SERVER_EXTRA_ARGS: {shown}: the installed LMCache {inputs.s.schema.lmcache_version} "
                      f"has no `lmcache server {shown}` flag (docs/UPGRADING.md)")
        elif flag == "ambiguous":
            out.error(f"LMCACHE_SERVER_EXTRA_ARGS: {shown} is an abbreviation of several lmcache server flags; "
                      "write the flag in full")
        elif flag is not None and owned_flag_problem(flag, LMCACHE_OWNED_FLAGS, LMCACHE_REFUSED_FLAGS):
            out.error(f"LMCACHE_SERVER_EXTRA_ARGS: {typed} "
                      f"{owned_flag_problem(flag, LMCACHE_OWNED_FLAGS, LMCACHE_REFUSED_FLAGS)}")
        elif flag in planned and flag not in ("--l2-adapter", "--server-module"):  # these add: several allowed
            out.error(f"LMCACHE_SERVER_EXTRA_ARGS: {typed} is set by the appliance (vLLM's LMCache server would "
                      "see both values)")
        argv.append(arg)
    out.argv = argv
    out.health_url = f"http://127.0.0.1:{http_port}/healthcheck"
    out.vllm_argv += ["--kv-transfer-config", mp_transfer_config(inputs, out, "127.0.0.1", port)]
    announce_identity(inputs, out)
    ports = {"VLLM_PORT": inputs.api_port, "APPLIANCE_LMCACHE_PORT": port, "APPLIANCE_LMCACHE_HTTP_PORT": http_port,
             "APPLIANCE_LMCACHE_METRICS_PORT": metrics_port, "APPLIANCE_METRICS_PORT": int(v["APPLIANCE_METRICS_PORT"])}
    if inputs.role == "kv-server":
        del ports["VLLM_PORT"]  # no vLLM in this container
    for number in sorted(set(ports.values())):
        same = [name for name, n in ports.items() if n == number]
        if len(same) > 1:
            out.error(" and ".join(f"{name}={number}" for name in same) + ": must differ (one port, one listener)")


def prewarm_module(inputs: KvInputs, out: KvPart, cpu: float) -> list[str]:
    """LMCACHE_PREWARM_*: the appliance's server module (entrypoint/lmcache_ext/prewarm.py) that records the
    CPU tier's hot chunks next to the disk tier and loads them back into the CPU tier after a restart. Only
    where it can work: server mode (the module runs in the LMCache server), a disk tier (what it loads from),
    an LMCache with `--server-module` (0.5.6; 0.5.3 has none). Elsewhere the default is off, with the reason
    in `config`; a value the operator set there is an error (they asked for something that cannot happen)."""
    v = inputs.s.values
    size = v.get("LMCACHE_PREWARM_SIZE", AUTO)
    given = [n for n in PREWARM_SETTINGS if n in inputs.s.user_given]
    why = None
    if size != AUTO and float(size) == 0:
        why, given = "off: LMCACHE_PREWARM_SIZE=0", []
    elif not out.disk:
        why = "off: no disk tier to load from (LMCACHE_LOCAL_DISK)"
    elif "--server-module" not in inputs.s.schema.lmcache_server_flags:
        why = (f"off: the installed LMCache {inputs.s.schema.lmcache_version} has no `lmcache server --server-module` "
               "(0.5.6 has)")
    if why:
        out.prewarm = (0.0, why)
        if given:
            out.error(f"{', '.join(given)}: no hot-prefix pre-warming here ({why.removeprefix('off: ')}); unset "
                      f"{' and '.join(given)}, or set LMCACHE_PREWARM_SIZE=0")
        return []
    gib = cpu * PREWARM_AUTO_SHARE if size == AUTO else float(size)
    note = (f"auto: {PREWARM_AUTO_SHARE:g} of the {number_text(cpu)} GiB CPU tier" if size == AUTO
            else "LMCACHE_PREWARM_SIZE")
    if gib > cpu:
        out.warn(f"LMCACHE_PREWARM_SIZE={number_text(gib)} is larger than the CPU tier "
                 f"({number_text(cpu)} GiB): at most the CPU tier is pre-warmed")
        gib, note = cpu, f"LMCACHE_PREWARM_SIZE, capped at the {number_text(cpu)} GiB CPU tier"
    assert out.disk is not None  # no disk tier: returned above
    key_file = f"{out.disk.path}/{PREWARM_KEY_FILE}"
    out.prewarm = (gib, f"{note}; hot chunks recorded in {key_file}")
    spec = {"module_path": PREWARM_MODULE, "factory_name": "build_server_modules",
            "config": {"key_file": key_file, "max_bytes": max(int(gib * resources.GIB), 1),
                       "record_interval_s": int(v["LMCACHE_PREWARM_RECORD_INTERVAL"])}}
    return ["--server-module", json.dumps(spec, separators=(",", ":"))]


def announce_identity(inputs: KvInputs, out: KvPart) -> None:
    """vLLM answers GET /appliance/kv-identity (vllm_ext/identity.py): the coordinator router salts its lookups the
    way this replica's connector salts its chunks."""
    out.vllm_argv += ["--middleware", IDENTITY_MIDDLEWARE]
    out.vllm_env["APPLIANCE_KV_IDENTITY"] = inputs.identity
    if inputs.s.values.get("APPLIANCE_TENANT_ISOLATION"):
        out.vllm_env["APPLIANCE_TENANT_SALT"] = "1"


def mp_transfer_config(inputs: KvInputs, out: KvPart, host: str, port: int) -> str:
    """vLLM's --kv-transfer-config for an LMCache server at host:port. LMCache's connector joins
    `{lmcache.mp.host}:{lmcache.mp.port}` into the ZMQ URL, so the host carries the tcp:// scheme."""
    heartbeat = inputs.s.values.get("LMCACHE_HEARTBEAT_INTERVAL", LMCACHE_HEARTBEAT_S)
    if 3 * float(heartbeat) > LMCACHE_REAP_S:  # LMCache's own rule (MPServerConfig): 3 pings per reap timeout
        out.error(f"LMCACHE_HEARTBEAT_INTERVAL={heartbeat}: at most {LMCACHE_REAP_S // 3} s (the LMCache server "
                  f"reaps a vLLM it has not heard from for {LMCACHE_REAP_S} s)")
    extra_config = {"lmcache.mp.host": f"tcp://{host}", "lmcache.mp.port": port,
                    "lmcache.mp.heartbeat_interval": LMCACHE_HEARTBEAT_S,
                    "lmcache.mp.mq_timeout": LMCACHE_MQ_TIMEOUT_S, **connector_key_settings(inputs, out),
                    IDENTITY_CONFIG_KEY: inputs.identity,
                    SKIP_LOOKUP_CONFIG_KEY: bool(inputs.s.values.get("LMCACHE_SKIP_USELESS_LOOKUP"))}
    # The appliance's subclass of LMCache's connector (same class name, so that vLLM treats it as LMCache's):
    # it folds the KV identity and the request's LoRA adapter into every chunk key (lmcache_ext/connector.py).
    transfer = {"kv_connector": LMCACHE_CONNECTOR_MP, "kv_connector_module_path": CONNECTOR_MODULE,
                "kv_role": "kv_both",
                "kv_load_failure_policy": KV_LOAD_FAILURE_POLICY, "kv_connector_extra_config": extra_config}
    return json.dumps(transfer, separators=(",", ":"))


def shared_adapter(inputs: KvInputs, out: KvPart) -> dict[str, object]:
    """The shared store as an LMCache `resp` L2 adapter, after the local disk tier (LMCache looks tiers up in
    order, so a chunk on the local disk is read from there). `shared` tells LMCache's coordinator that other
    servers see the same objects; the keys are content hashes of model + tokens, so servers with the same
    model, chunk size and parallelism find each other's chunks. No password key: LMCache reads it from
    LMCACHE_RESP_PASSWORD (shared_store_credentials)."""
    store = out.shared_store
    assert store is not None  # called only with a shared store
    adapter: dict[str, object] = {"type": "resp", "host": store.host, "port": store.port, "shared": True}
    if store.username:
        adapter["username"] = store.username
    size = inputs.s.values.get("LMCACHE_SHARED_MAX_SIZE")
    if size is not None:
        adapter["max_capacity_gb"] = float(size)
        adapter["eviction"] = {"eviction_policy": "LRU"}
    return adapter


def per_worker(total_gib: float, tp: int) -> float:
    """One worker's share, rounded down to 1 MB (the shares never add up to more than the total) but never
    to 0, which LMCache would read as "no tier"."""
    return max(math.floor(total_gib / tp * 1000) / 1000, 0.001)


def known_to_installed_lmcache(inputs: KvInputs, out: KvPart, flags: list[str], where: str) -> None:
    known = inputs.s.schema.lmcache_server_flags
    for flag in dict.fromkeys(flags):
        if flag not in known:
            out.error(f"{where}{flag}: the installed LMCache {inputs.s.schema.lmcache_version} has no `lmcache server "
                      f"{flag}` flag (docs/UPGRADING.md)")


def server_flag_settings(inputs: KvInputs, out: KvPart) -> list[str]:
    """The registry's settings that are `lmcache server` flags, checked against the installed LMCache's
    parser (schema): the flag must exist and the value be one of its choices, else an error naming the
    version. The choices come from the schema, so a release that adds one (ARC in 0.5.6) needs no code."""
    argv = []
    flags, version = inputs.s.schema.lmcache_server_flags, inputs.s.schema.lmcache_version
    for s in SETTINGS:
        if not s.server_flag or s.name not in inputs.s.values:
            continue
        spec, value = flags.get(s.server_flag), str(inputs.s.values[s.name]).strip()
        if spec is None and s.name not in inputs.s.user_given:
            continue  # the appliance's default for a flag this LMCache does not have: LMCache's own behaviour
        if spec is None:
            out.error(f"{s.name}: the installed LMCache {version} has no `lmcache server {s.server_flag}`; "
                      "unset it or use an image with a newer LMCache (docs/UPGRADING.md)")
            continue
        if spec["choices"]:
            match = next((c for c in spec["choices"] if c.lower() == value.lower()), None)
            if match is None:
                out.error(inputs.s.bad_value(s.name, value, f"must be one of the installed LMCache {version}'s "
                                                            f"{s.server_flag} choices: {', '.join(spec['choices'])}"))
                continue
            value = out.recorded[s.name] = match  # the plan records LMCache's spelling
        argv += [s.server_flag, value]
    return argv


def connector_key_settings(inputs: KvInputs, out: KvPart) -> dict[str, object]:
    """The registry's settings that are keys of vLLM's LMCache connector config, set when the operator sets
    them or the registry has a measured default (LMCache's own defaults otherwise), and only keys the
    installed LMCache's connector reads (a default for a key it lacks is dropped; a value set is an error)."""
    keys: dict[str, object] = {}
    for s in SETTINGS:
        if not s.connector_key or s.name not in inputs.s.values:
            continue
        if s.connector_key not in inputs.s.schema.lmcache_connector_keys:
            if s.name not in inputs.s.user_given:
                continue
            out.error(f"{s.name}: the installed LMCache {inputs.s.schema.lmcache_version}'s vLLM connector has no "
                      f"lmcache.mp.{s.connector_key}; unset it or use an image with a newer LMCache "
                      "(docs/UPGRADING.md)")
            continue
        keys[f"lmcache.mp.{s.connector_key}"] = inputs.s.values[s.name]
    return keys


def server_mode_only(inputs: KvInputs, out: KvPart) -> None:
    for s in SETTINGS:
        if (s.server_flag or s.connector_key or s.name in APPLIANCE_CONNECTOR_SETTINGS) and \
                s.name in inputs.s.user_given:
            out.error(f"{s.name}: applies in server mode only (LMCACHE_MODE=server)")


def in_process_identity(inputs: KvInputs, out: KvPart) -> None:
    """In-process LMCache (LMCacheConnectorV1) keys a chunk by model name and tokens only, and the appliance's
    connector (KV identity and adapter in every key) is the server-mode one. Its CPU tier lives and dies with
    one vLLM process (one identity) and its disk tier is per-identity and not reused after a restart, so what
    could mix KV of different weights or adapters is refused: LoRA adapters and a store shared with others."""
    if inputs.vllm_flags.get("--enable-lora") == "true":
        out.error("VLLM_ENABLE_LORA with LMCACHE_MODE=in-process: in-process LMCache keys KV by model and tokens "
                  "only, so KV computed under one LoRA adapter would be loaded for another or for the base model. "
                  "Use LMCACHE_MODE=server (the appliance keys each adapter apart there) or "
                  "VLLM_KV_OFFLOADING_BACKEND=native")
    if out.shared_store:
        out.error("LMCACHE_SHARED_URL with LMCACHE_MODE=in-process: in-process LMCache keys the shared store by "
                  "model name and tokens only, so a replica with other weights under the same name would load this "
                  "one's KV (and the reverse). Use LMCACHE_MODE=server, where every key carries the KV identity")


def lmcache_in_process(inputs: KvInputs, out: KvPart, cpu: float, chunk: int, tp: int) -> None:
    v = inputs.s.values
    if "LMCACHE_SERVER_EXTRA_ARGS" in v:
        out.error("LMCACHE_SERVER_EXTRA_ARGS: applies in server mode only (LMCACHE_MODE=server)")
    server_mode_only(inputs, out)
    prewarm_given = [n for n in PREWARM_SETTINGS if n in inputs.s.user_given and v.get(n) != 0]
    if prewarm_given:
        out.error(f"{', '.join(prewarm_given)}: hot-prefix pre-warming is done by the LMCache server (LMCACHE_MODE="
                  "server); unset it in in-process mode, or set LMCACHE_PREWARM_SIZE=0")
    out.prewarm = (0.0, "off: LMCACHE_MODE=in-process (the LMCache server pre-warms, in server mode)")
    if "LMCACHE_CONFIG_FILE" in inputs.s.lmcache_env:
        out.error("LMCACHE_CONFIG_FILE: the appliance renders LMCache's config file itself; set its keys "
                  "as LMCACHE_<KEY> variables instead (docs/ENVIRONMENT.md)")
    # Sizes are for all GPUs together; in-process, each of the TP workers holds its own share.
    config: dict[str, object] = {
        "chunk_size": chunk,
        "local_cpu": bool(v["LMCACHE_LOCAL_CPU"]),
        "max_local_cpu_size": per_worker(cpu, tp),
        # Python's hash differs per process; vLLM's sha256_cbor makes chunk keys stable.
        "pre_caching_hash_algorithm": "sha256_cbor",
    }
    if out.disk:
        config["local_disk"] = f"file://{out.disk.path}/"
        config["max_local_disk_size"] = per_worker(out.disk.max_size_gib, tp)
        out.warn("LMCACHE_MODE=in-process keeps its disk-tier index in memory: after a restart the "
                 "files on disk are not reused. LMCACHE_MODE=server reuses them.")
    config.update(inputs.s.lmcache_keys)
    run_dir = str(v["APPLIANCE_RUN_DIR"])
    out.config = config
    out.config_file = f"{run_dir.rstrip('/')}/lmcache.yaml"
    out.vllm_env["LMCACHE_CONFIG_FILE"] = out.config_file
    out.vllm_env.setdefault("PYTHONHASHSEED", inputs.s.environ.get("PYTHONHASHSEED", "0"))
    transfer = {"kv_connector": LMCACHE_CONNECTOR_IN_PROCESS, "kv_role": "kv_both",
                "kv_load_failure_policy": KV_LOAD_FAILURE_POLICY}
    out.vllm_argv += ["--kv-transfer-config", json.dumps(transfer, separators=(",", ":"))]
