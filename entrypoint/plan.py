"""Settings -> Plan: the validated launch plan (vLLM argv and environment, LMCache argv or config).

Building a Plan is pure: it reads no volume, writes nothing and starts nothing (it may read the
`*_FILE` secrets and the registry file the operator names). `config` prints it, `serve` runs it.
Every problem is collected, not raised, so that one run reports all of them.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from . import models
from .schema import Schema
from .settings import (BY_NAME, DEFAULT_DISK_TIER_PATH, FILE_SECRETS, OWNED_FLAGS, SECRET_NAMES, SETTINGS,
                       DiskChoice, ValueProblem, parse_bool, parse_value)
from .sources import DEFAULT, ENV_FILE, ENVIRONMENT, REGISTRY, RawInputs

REDACTED = "***"
SECRET_FLAGS = ("--api-key", "--hf-token")  # vLLM flags whose value is a secret
LMCACHE_CONNECTOR_MP = "LMCacheMPConnector"
LMCACHE_CONNECTOR_IN_PROCESS = "LMCacheConnectorV1"
DEFAULT_CPU_TIER_GIB = 5.0  # LMCache's own default max_local_cpu_size
LMCACHE_REAP_S = 30  # LMCache server: seconds of silence before a dead vLLM's KV registration is dropped
LMCACHE_HEARTBEAT_S = 5  # vLLM -> LMCache server pings; LMCache wants the reap timeout >= 3x this
LMCACHE_KEYS_WITH_SERVER_EQUIVALENT = {"chunk_size", "local_cpu", "max_local_cpu_size", "local_disk",
                                       "max_local_disk_size"}


@dataclass
class DiskTier:
    base: str  # the volume or path the operator chose
    path: str  # namespaced directory actually used (what makes KV reusable)
    max_size_gib: float


@dataclass
class Plan:
    vllm_argv: list[str] = field(default_factory=list)
    vllm_env: dict[str, str] = field(default_factory=dict)  # added or passed through to vLLM
    vllm_env_removed: list[str] = field(default_factory=list)  # translated: never reach vLLM
    lmcache_mode: str | None = None  # "server", "in-process", "native" or None
    lmcache_argv: list[str] | None = None  # server mode
    lmcache_config: dict | None = None  # in-process mode (rendered to lmcache_config_file)
    lmcache_config_file: str | None = None
    lmcache_env: dict[str, str] = field(default_factory=dict)
    lmcache_health_url: str | None = None
    disk: DiskTier | None = None
    model: str = ""
    served_model_name: str = ""
    api_host: str = "0.0.0.0"
    api_port: int = 8000
    appliance: dict[str, object] = field(default_factory=dict)  # APPLIANCE_* values, for supervision
    values: dict[str, object] = field(default_factory=dict)  # every resolved variable
    sources: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def to_dict(self, redact: bool = True) -> dict:
        """The output contract of `config --format json`; secrets redacted unless asked otherwise."""
        hide = _redact_env if redact else dict
        hide_argv = _redact_argv if redact else list
        return {
            "vllm": {"argv": hide_argv(self.vllm_argv), "env": hide(self.vllm_env),
                     "env_removed": sorted(self.vllm_env_removed)},
            "lmcache": {"mode": self.lmcache_mode,
                        "argv": hide_argv(self.lmcache_argv) if self.lmcache_argv is not None else None,
                        "config": self.lmcache_config, "config_file": self.lmcache_config_file,
                        "env": hide(self.lmcache_env), "health_url": self.lmcache_health_url,
                        "disk": dataclasses.asdict(self.disk) if self.disk else None},
            "model": self.model, "served_model_name": self.served_model_name,
            "api": {"host": self.api_host, "port": self.api_port},
            "appliance": self.appliance,
            "values": {k: _redact_value(k, v) if redact else v for k, v in self.values.items()},
            "sources": self.sources, "warnings": self.warnings, "errors": self.errors,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        """Read back a plan written by `serve` (the supervised programs start from it)."""
        disk = d["lmcache"].get("disk")
        return cls(vllm_argv=d["vllm"]["argv"], vllm_env=d["vllm"]["env"], vllm_env_removed=d["vllm"]["env_removed"],
                   lmcache_mode=d["lmcache"]["mode"], lmcache_argv=d["lmcache"]["argv"],
                   lmcache_config=d["lmcache"]["config"], lmcache_config_file=d["lmcache"]["config_file"],
                   lmcache_env=d["lmcache"]["env"], lmcache_health_url=d["lmcache"]["health_url"],
                   disk=DiskTier(**disk) if disk else None, model=d["model"],
                   served_model_name=d["served_model_name"], api_host=d["api"]["host"], api_port=d["api"]["port"],
                   appliance=d["appliance"], values=d["values"], sources=d["sources"],
                   warnings=d["warnings"], errors=d["errors"])


def _redact_env(env: Mapping[str, str]) -> dict[str, str]:
    return {k: (REDACTED if k in SECRET_NAMES else v) for k, v in env.items()}


def _redact_value(name: str, value):
    if name in SECRET_NAMES:
        return REDACTED
    if name.endswith("EXTRA_ARGS") and isinstance(value, str):  # may hold `--api-key ...`
        try:
            return shlex.join(_redact_argv(shlex.split(value)))
        except ValueError:
            return value
    return value


def _redact_argv(argv: list[str]) -> list[str]:
    out = []
    for i, arg in enumerate(argv):
        if i > 0 and argv[i - 1] in SECRET_FLAGS:
            out.append(REDACTED)
        elif any(arg.startswith(f + "=") for f in SECRET_FLAGS):
            out.append(arg.split("=", 1)[0] + "=" + REDACTED)
        else:
            out.append(arg)
    return out


def _suggest(name: str, candidates) -> str:
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.75)
    return f"; did you mean {match[0]}?" if match else ""


_TOKENS = re.compile(r"^(\d+(\.\d+)?[kKmMgG]?|auto|-1)$")
_HUMAN_INT = re.compile(r"^\d+(\.\d+)?[kKmMgG]?$")


def parse_flag_value(spec: dict, raw: str):
    """Check a value against the installed vLLM's type for that flag; returns the typed value."""
    kind = spec["kind"]
    text = raw.strip()
    if kind in ("bool", "flag"):
        return parse_bool(text)
    if kind == "int":
        values = shlex.split(text) if spec["nargs"] in ("+", "*") else [text]
        for v in values:
            try:
                int(v)
            except ValueError:
                raise ValueProblem("must be a whole number") from None
        return text if len(values) > 1 else int(text)
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            raise ValueProblem("must be a number") from None
    if kind == "int_human":
        if not _HUMAN_INT.match(text):
            raise ValueProblem("must be a whole number, optionally with k/m/g, e.g. 4096 or 32k")
        return text
    if kind == "int_human_or_auto":
        if not _TOKENS.match(text):
            raise ValueProblem("must be a whole number (e.g. 32768 or 32k), or auto")
        return text
    if kind == "choice":
        choices = spec["choices"] or []
        if text in choices:
            return text
        folded = {c.lower(): c for c in choices}
        if text.lower() in folded:
            return folded[text.lower()]
        raise ValueProblem("must be one of: " + ", ".join(choices))
    if kind == "json" and text[:1] in "{[":
        try:
            json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueProblem(f"is not valid JSON ({e.msg} at column {e.colno})") from None
    return text


def number_text(value: float) -> str:
    """5.0 -> "5", 0.87654321 -> "0.87654321": no ".0" noise and no precision lost (unlike %g)."""
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def flag_args(flag: str, spec: dict | None, value) -> list[str]:
    """How one flag is written on vLLM's command line, following the installed parser's action."""
    kind = spec["kind"] if spec else "str"
    if kind == "bool":
        return [flag] if value else ["--no-" + flag[2:]]
    if kind == "flag":
        return [flag] if value else []
    text = number_text(value) if isinstance(value, float) else str(value)
    if spec and spec.get("append"):
        return [part for token in shlex.split(text) for part in (flag, token)]
    if spec and spec.get("nargs") in ("+", "*"):
        return [flag, *shlex.split(text)]
    return [flag, text]


def model_slug(model: str) -> str:
    """A directory-safe name for a model id or path (a path gets a hash so that two `model` dirs differ)."""
    if model.startswith(("/", ".")):
        digest = hashlib.sha256(model.encode()).hexdigest()[:8]
        base = Path(model.rstrip("/")).name or "model"
        return re.sub(r"[^A-Za-z0-9._-]", "_", f"{base}-{digest}")
    return re.sub(r"[^A-Za-z0-9._-]", "_", model.replace("/", "--"))


def disk_namespace(model: str, revision: str | None, dtype: str, chunk_size: int, tp: int,
                   lmcache_version: str) -> str:
    """Everything that decides whether stored KV can be reused goes into the directory name, so that a
    change of model, revision, dtype, chunk size, TP size or LMCache version never reads another's cache."""
    rev = re.sub(r"[^A-Za-z0-9._-]", "_", revision or "default")
    return f"{model_slug(model)}__rev-{rev}__dtype-{dtype}__chunk-{chunk_size}__tp-{tp}__lmcache-{lmcache_version}"


def _typed_lmcache_value(type_name: str, raw: str):
    t = type_name.replace("Optional[", "").rstrip("]")
    if t == "int":
        return int(raw)
    if t == "float":
        return float(raw)
    if t == "bool":
        return parse_bool(raw)
    if raw.strip()[:1] in "[{":
        return json.loads(raw)
    return raw


class _Builder:
    """Holds the state of one plan build; each method handles one concern and records problems."""

    def __init__(self, raw: RawInputs, schema: Schema, environ: Mapping[str, str]):
        self.raw, self.schema, self.environ = raw, schema, environ
        self.plan = Plan(errors=list(raw.errors))
        self.values: dict[str, object] = {}  # typed values of explicit settings
        self.user_given: set[str] = set()  # names set by the operator (not registry, not default)
        self.generic_flags: dict[str, tuple[str, object]] = {}  # name -> (flag, typed value)
        self.vllm_passthrough: dict[str, str] = {}
        self.lmcache_keys: dict[str, object] = {}  # in-process config keys from LMCACHE_<KEY>
        self.lmcache_env: dict[str, str] = {}

    # -- helpers ---------------------------------------------------------------------------------------
    def error(self, msg: str) -> None:
        self.plan.errors.append(msg)

    def label(self, name: str) -> str:
        """How the operator wrote it: `--max-model-len` on the command line, else the variable name."""
        return self.raw.cli_flags.get(name, name)

    def bad_value(self, name: str, raw: str, problem: str) -> None:
        shown = REDACTED if name in SECRET_NAMES else raw
        example = BY_NAME[name].example if name in BY_NAME else None
        fix = f", e.g. {self.label(name)}={example}" if example and not problem.endswith(example) else ""
        self.error(f"{self.label(name)}={shown!r}: {problem}{fix}")

    # -- steps -----------------------------------------------------------------------------------------
    def secrets_from_files(self) -> None:
        for var, file_var in FILE_SECRETS.items():
            direct, path = self.raw.values.get(var), self.raw.values.get(file_var)
            if direct and path:
                self.error(f"{var} and {file_var} are both set: set only one of them")
            elif path:
                try:
                    self.raw.values[var] = Path(path).read_text().strip()
                    self.raw.sources[var] = self.raw.sources[file_var]
                except OSError as e:
                    self.error(f"{file_var}={path!r}: cannot read the file ({e.strerror}); mount it or fix the path")
            self.raw.values.pop(file_var, None)

    def classify(self) -> None:
        """Every VLLM_/LMCACHE_/APPLIANCE_ name is an appliance setting, a vLLM flag, a variable vLLM or
        LMCache reads itself, or a mistake."""
        flags = self.schema.flag_by_env_name
        for name in sorted(self.raw.values):
            if name in BY_NAME or name in FILE_SECRETS.values():
                continue
            value = self.raw.values[name]
            if name.startswith("VLLM_") and name in flags:
                flag = flags[name]
                if flag in OWNED_FLAGS:
                    self.error(f"{self.label(name)}: {flag} is set by the appliance; {OWNED_FLAGS[flag]}")
                elif value.strip() != "":
                    try:
                        self.generic_flags[name] = (flag, parse_flag_value(self.schema.serve_flags[flag], value))
                        if self.raw.sources.get(name) != REGISTRY:
                            self.user_given.add(name)
                    except ValueProblem as e:
                        self.bad_value(name, value, str(e))
            elif name.startswith("VLLM_") and name in self.schema.vllm_env_vars:
                self.vllm_passthrough[name] = value
            elif name.startswith("LMCACHE_") and name[len("LMCACHE_"):].lower() in self.schema.lmcache_keys:
                key = name[len("LMCACHE_"):].lower()
                try:
                    self.lmcache_keys[key] = _typed_lmcache_value(self.schema.lmcache_keys[key]["type"], value)
                    self.user_given.add(name)
                except (ValueError, json.JSONDecodeError):
                    self.bad_value(name, value, f"must be of type {self.schema.lmcache_keys[key]['type']} "
                                                f"(LMCache config key {key})")
            elif name.startswith("LMCACHE_") and name in self.schema.lmcache_other_env_vars:
                self.lmcache_env[name] = value
            else:
                self.unknown(name)

    def unknown(self, name: str) -> None:
        candidates = (set(BY_NAME) | set(self.schema.flag_by_env_name) | self.schema.vllm_env_vars
                      | {f"LMCACHE_{k.upper()}" for k in self.schema.lmcache_keys})
        if name in self.raw.cli_flags:
            flag = self.raw.cli_flags[name]
            cli_candidates = {s.cli_flag for s in SETTINGS} | set(self.schema.serve_flags)
            self.error(f"{flag}: unknown option{_suggest(flag, cli_candidates)}")
        else:
            self.error(f"{name}: unknown variable{_suggest(name, candidates)} (names under VLLM_, LMCACHE_ "
                       "and APPLIANCE_ must be appliance settings, vllm serve flags, or variables vLLM or "
                       "LMCache read; see docs/ENVIRONMENT.md)")

    def apply_registry(self) -> None:
        model = self.raw.values.get("VLLM_MODEL", "").strip() or BY_NAME["VLLM_MODEL"].default
        extra = self.raw.values.get("APPLIANCE_MODEL_REGISTRY_FILE", "").strip() or None
        try:
            registry = models.load_registry(extra)
        except (OSError, ValueError) as e:
            problem = getattr(e, "strerror", None) or str(e)
            self.error(f"APPLIANCE_MODEL_REGISTRY_FILE={extra!r}: {problem}")
            registry = models.MODEL_REGISTRY
        for key, value in registry.get(model, {}).items():
            name = models.registry_env_name(key)
            known = (name in BY_NAME or name in self.schema.flag_by_env_name)
            if not known:
                self.error(f"model registry entry {model!r}: {key!r} is not a setting (it would be {name})")
                continue
            if self.raw.values.get(name, "").strip() == "":  # the environment wins over the registry
                self.raw.values[name] = models.registry_value_text(value)
                self.raw.sources[name] = REGISTRY

    def resolve_settings(self) -> None:
        for s in SETTINGS:
            raw = self.raw.values.get(s.name)
            if raw is not None and raw.strip() != "":
                try:
                    self.values[s.name] = parse_value(s, raw, self.schema.tool_call_parsers)
                    if self.raw.sources.get(s.name) != REGISTRY:
                        self.user_given.add(s.name)
                except ValueProblem as e:
                    self.bad_value(s.name, raw, str(e))
                    if s.default is not None:  # carry on with the default to find the other problems
                        self.values[s.name] = s.default
            elif s.default is not None:
                self.values[s.name] = s.default
                self.raw.sources[s.name] = DEFAULT
        self.values.setdefault("LMCACHE_LOCAL_DISK", DiskChoice(False))

    def vllm_command(self) -> None:
        v, p = self.values, self.plan
        p.model = str(v["VLLM_MODEL"])
        p.api_host, p.api_port = str(v["VLLM_HOST"]), int(v["VLLM_PORT"])
        names = shlex.split(str(v.get("VLLM_SERVED_MODEL_NAME", "")))
        p.served_model_name = names[0] if names else p.model  # vLLM answers to the first name
        argv = [*shlex.split(str(v["APPLIANCE_VLLM_COMMAND"])), "serve", p.model]
        flags = self.schema.serve_flags
        for s in SETTINGS:
            if s.flag and s.name in v:
                if s.flag not in flags:
                    self.error(f"{s.name}: the installed vLLM {self.schema.vllm_version} has no {s.flag} flag")
                    continue
                argv += flag_args(s.flag, flags[s.flag], v[s.name])
        for name in sorted(self.generic_flags):
            flag, value = self.generic_flags[name]
            argv += flag_args(flag, flags[flag], value)
        argv += ["--shutdown-timeout", str(v["APPLIANCE_SHUTDOWN_TIMEOUT"])]
        p.vllm_argv = argv
        if v.get("VLLM_ENABLE_AUTO_TOOL_CHOICE") and not v.get("VLLM_TOOL_CALL_PARSER"):
            self.error("VLLM_ENABLE_AUTO_TOOL_CHOICE=true needs VLLM_TOOL_CALL_PARSER (vLLM refuses to start "
                       "without it), e.g. VLLM_TOOL_CALL_PARSER=hermes")
        if "VLLM_CPU_OFFLOAD_GB" in v:
            p.warnings.append(
                f"VLLM_CPU_OFFLOAD_GB={v['VLLM_CPU_OFFLOAD_GB']:g} offloads model weights to CPU RAM, not the KV "
                "cache (vllm --cpu-offload-gb; deprecated here). To offload the KV cache instead: remove "
                "VLLM_CPU_OFFLOAD_GB and set VLLM_KV_OFFLOADING_BACKEND=lmcache and VLLM_KV_OFFLOADING_SIZE=<GiB>.")
        if "VLLM_HF_TOKEN" in self.generic_flags:
            p.warnings.append("VLLM_HF_TOKEN puts the token on vLLM's command line; prefer HF_TOKEN")

    def kv_offloading(self) -> None:
        v, p = self.values, self.plan
        backend = v.get("VLLM_KV_OFFLOADING_BACKEND")
        backend = None if backend == "none" else backend
        lmcache_names = sorted(n for n in self.user_given if n.startswith("LMCACHE_"))
        if backend != "lmcache" and lmcache_names:
            self.error(f"{', '.join(lmcache_names)}: LMCache settings take effect only with "
                       f"VLLM_KV_OFFLOADING_BACKEND=lmcache (it is {backend or 'unset'}); set it, or remove them")
        if backend is None:
            if "VLLM_KV_OFFLOADING_SIZE" in self.user_given:
                self.error("VLLM_KV_OFFLOADING_SIZE is set but VLLM_KV_OFFLOADING_BACKEND is not: set "
                           "VLLM_KV_OFFLOADING_BACKEND=lmcache (or native)")
            return
        cpu = self.cpu = self.cpu_tier_gib()
        if backend == "native":
            p.lmcache_mode = "native"
            p.vllm_argv += ["--kv-offloading-backend", "native", "--kv-offloading-size", number_text(cpu)]
            return
        mode = v["LMCACHE_MODE"]
        p.lmcache_mode = mode
        chunk = int(v["LMCACHE_CHUNK_SIZE"])
        tp = int(v["VLLM_TENSOR_PARALLEL_SIZE"])
        disk_choice: DiskChoice = v["LMCACHE_LOCAL_DISK"]
        if disk_choice.enabled:
            base = disk_choice.path or DEFAULT_DISK_TIER_PATH
            revision = self.generic_flags.get("VLLM_REVISION", (None, None))[1]
            ns = disk_namespace(p.model, revision, str(v.get("VLLM_DTYPE", "auto")), chunk, tp,
                                self.schema.lmcache_version)
            p.disk = DiskTier(base=base, path=f"{base.rstrip('/')}/{ns}",
                              max_size_gib=float(v["LMCACHE_MAX_LOCAL_DISK_SIZE"]))
        if mode == "server":
            self.lmcache_server(cpu, chunk)
        else:
            self.lmcache_in_process(cpu, chunk, tp)
        p.lmcache_env = dict(self.lmcache_env)

    def cpu_tier_gib(self) -> float:
        v = self.values
        kv, lmc = v.get("VLLM_KV_OFFLOADING_SIZE"), v.get("LMCACHE_MAX_LOCAL_CPU_SIZE")
        kv_user, lmc_user = "VLLM_KV_OFFLOADING_SIZE" in self.user_given, "LMCACHE_MAX_LOCAL_CPU_SIZE" in self.user_given
        if kv_user and lmc_user and abs(kv - lmc) > 1e-9:
            self.error(f"VLLM_KV_OFFLOADING_SIZE={kv:g} and LMCACHE_MAX_LOCAL_CPU_SIZE={lmc:g} describe the same "
                       "CPU tier but differ: set only one of them (or both to the same value)")
        for value, given in ((kv, kv_user), (lmc, lmc_user), (kv, True), (lmc, True)):
            if value is not None and given:
                return float(value)
        return DEFAULT_CPU_TIER_GIB

    def lmcache_server(self, cpu: float, chunk: int) -> None:
        v, p = self.values, self.plan
        if v["LMCACHE_LOCAL_CPU"] is False:
            self.error("LMCACHE_LOCAL_CPU=false: the LMCache server always keeps a CPU tier; for a disk-only "
                       "cache set LMCACHE_MODE=in-process")
        for key in sorted(self.lmcache_keys):
            if key not in LMCACHE_KEYS_WITH_SERVER_EQUIVALENT:
                self.error(f"LMCACHE_{key.upper()}: applies in in-process mode only (LMCACHE_MODE=in-process); "
                           "the LMCache server takes extra options from LMCACHE_SERVER_EXTRA_ARGS")
        port, http_port = int(v["APPLIANCE_LMCACHE_PORT"]), int(v["APPLIANCE_LMCACHE_HTTP_PORT"])
        argv = [*shlex.split(str(v["APPLIANCE_LMCACHE_COMMAND"])), "server",
                "--host", "127.0.0.1", "--port", str(port),
                "--http-host", "127.0.0.1", "--http-port", str(http_port),
                "--chunk-size", str(chunk), "--l1-size-gb", number_text(cpu),
                "--eviction-policy", str(v["LMCACHE_EVICTION_POLICY"]),
                # A vLLM that dies keeps its GPU KV cache mapped in the server until the server reaps it:
                # 120 s by default, during which a restarted vLLM finds too little free GPU memory and fails.
                # 30 s is LMCache's floor; vLLM pings every LMCACHE_HEARTBEAT_S, well under a third of it.
                "--worker-reap-timeout-seconds", str(LMCACHE_REAP_S)]
        if p.disk:
            # fs_native: LMCache's C++ file-system tier. Unlike the `fs` adapter it declares a capacity,
            # so LMCache's own L2 eviction keeps it under LMCACHE_MAX_LOCAL_DISK_SIZE.
            adapter = {"type": "fs_native", "base_path": p.disk.path, "max_capacity_gb": p.disk.max_size_gib,
                       "eviction": {"eviction_policy": "LRU"}}
            argv += ["--l2-adapter", json.dumps(adapter, separators=(",", ":"))]
        argv += shlex.split(str(v.get("LMCACHE_SERVER_EXTRA_ARGS", "")))
        p.lmcache_argv = argv
        p.lmcache_health_url = f"http://127.0.0.1:{http_port}/healthcheck"
        transfer = {"kv_connector": LMCACHE_CONNECTOR_MP, "kv_role": "kv_both",
                    "kv_connector_extra_config": {"lmcache.mp.host": "tcp://127.0.0.1", "lmcache.mp.port": port,
                                                  "lmcache.mp.heartbeat_interval": LMCACHE_HEARTBEAT_S}}
        p.vllm_argv += ["--kv-transfer-config", json.dumps(transfer, separators=(",", ":"))]
        if len({port, http_port, p.api_port}) < 3:
            self.error(f"VLLM_PORT={p.api_port}, APPLIANCE_LMCACHE_PORT={port} and APPLIANCE_LMCACHE_HTTP_PORT="
                       f"{http_port} must all differ")

    def lmcache_in_process(self, cpu: float, chunk: int, tp: int) -> None:
        v, p = self.values, self.plan
        if "LMCACHE_SERVER_EXTRA_ARGS" in v:
            self.error("LMCACHE_SERVER_EXTRA_ARGS: applies in server mode only (LMCACHE_MODE=server)")
        if "LMCACHE_CONFIG_FILE" in self.lmcache_env:
            self.error("LMCACHE_CONFIG_FILE: the appliance renders LMCache's config file itself; set its keys "
                       "as LMCACHE_<KEY> variables instead (docs/ENVIRONMENT.md)")
        # Sizes are for all GPUs together; in-process, each of the TP workers holds its own share.
        config: dict[str, object] = {
            "chunk_size": chunk,
            "local_cpu": bool(v["LMCACHE_LOCAL_CPU"]),
            "max_local_cpu_size": round(cpu / tp, 3),
            # Python's hash differs per process; vLLM's sha256_cbor makes chunk keys stable.
            "pre_caching_hash_algorithm": "sha256_cbor",
        }
        if p.disk:
            config["local_disk"] = f"file://{p.disk.path}/"
            config["max_local_disk_size"] = round(p.disk.max_size_gib / tp, 3)
            p.warnings.append("LMCACHE_MODE=in-process keeps its disk-tier index in memory: after a restart the "
                              "files on disk are not reused. LMCACHE_MODE=server reuses them.")
        config.update(self.lmcache_keys)
        run_dir = str(v["APPLIANCE_RUN_DIR"])
        p.lmcache_config = config
        p.lmcache_config_file = f"{run_dir.rstrip('/')}/lmcache.yaml"
        p.vllm_env["LMCACHE_CONFIG_FILE"] = p.lmcache_config_file
        p.vllm_env.setdefault("PYTHONHASHSEED", self.environ.get("PYTHONHASHSEED", "0"))
        transfer = {"kv_connector": LMCACHE_CONNECTOR_IN_PROCESS, "kv_role": "kv_both"}
        p.vllm_argv += ["--kv-transfer-config", json.dumps(transfer, separators=(",", ":"))]

    def extra_args(self) -> None:
        v, p = self.values, self.plan
        extra = []
        try:
            extra = shlex.split(str(v.get("VLLM_EXTRA_ARGS", ""))) + self.raw.extra_args
        except ValueError as e:
            self.error(f"VLLM_EXTRA_ARGS: cannot be split like a shell command line ({e})")
        for arg in extra:
            flag = arg.split("=", 1)[0]
            if flag in OWNED_FLAGS:
                self.error(f"VLLM_EXTRA_ARGS: {flag} is set by the appliance; {OWNED_FLAGS[flag]}")
        p.vllm_argv += extra

    def environment(self) -> None:
        """vLLM's environment: its own variables pass through, ours are removed (VLLM_PORT above all)."""
        p = self.plan
        consumed = {n for n in self.raw.values if n not in self.vllm_passthrough and n not in self.lmcache_env
                    and self.raw.sources.get(n) in (ENVIRONMENT, ENV_FILE)}
        secrets_passed = {n for n in FILE_SECRETS if n in self.raw.values}
        p.vllm_env_removed = sorted((consumed - secrets_passed) | {n for n in FILE_SECRETS.values()
                                                                   if n in self.environ})
        p.vllm_env.update(self.vllm_passthrough)
        p.vllm_env.update(self.lmcache_env)
        p.vllm_env.update(self.raw.passthrough)
        for name in secrets_passed:
            p.vllm_env[name] = self.raw.values[name]

    def record(self) -> None:
        p = self.plan
        for name, value in self.values.items():
            p.values[name] = dataclasses.asdict(value) if isinstance(value, DiskChoice) else value
        for name, (_, value) in self.generic_flags.items():
            p.values[name] = value
        for name in sorted(set(p.values) | set(self.vllm_passthrough) | set(self.lmcache_env)):
            p.sources[name] = self.raw.sources.get(name, DEFAULT)
        p.appliance = {s.name: self.values.get(s.name) for s in SETTINGS if s.group == "Appliance"}
        if p.lmcache_mode:
            p.appliance["cpu_tier_gib"] = self.cpu

    def build(self) -> Plan:
        self.secrets_from_files()
        self.apply_registry()
        self.classify()
        self.resolve_settings()
        if any(n not in self.values for n in ("VLLM_MODEL", "VLLM_PORT", "APPLIANCE_VLLM_COMMAND")):
            return self.plan  # a required value did not parse; its error is recorded
        self.vllm_command()
        self.kv_offloading()
        self.extra_args()
        self.environment()
        self.record()
        return self.plan


def build_plan(raw: RawInputs, schema: Schema, environ: Mapping[str, str]) -> Plan:
    return _Builder(raw, schema, environ).build()

