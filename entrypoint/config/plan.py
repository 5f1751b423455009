"""The launch plan: a pure value (vLLM argv and environment, LMCache argv or config, the tiers, what the
supervised programs read).

`config` prints it, `serve` writes it (redacted) to the run directory and the supervised programs read it
back. It is built by `build.py` from the settings; this module only defines it. Its JSON contract (`to_dict`,
`from_dict`, docs/config.schema.json via `json_schema`) is derived from the dataclass fields below, each field
saying where it stands in the JSON, how it is redacted and what it may hold, so that nothing is written twice.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from .secrets import mask_text, redact_argv, redact_env, redact_json, redact_value
from .settings import BY_NAME

SETTING = "setting"  # field metadata: the setting whose value a field holds
KEY = "key"  # field metadata: its key in the JSON plan, where not the field's name
FROM = "from"  # field metadata of a derived field: the settings it is computed from
JSON = "json"  # field metadata of a Plan field: its path in the JSON plan
SCHEMA = "schema"  # field metadata: its JSON schema (docs/config.schema.json)
SHOW = "show"  # field metadata: how it is shown, (value, redact, plan) -> JSON (redaction), where not as it is
Show: TypeAlias = "Callable[[Any, bool, Plan], Any]"  # a SHOW function


def from_setting(name: str, **schema: Any) -> Any:
    """A field holding the typed value of one setting; its default is the setting's, so that a plan written
    before the setting existed still reads back."""
    return field(default=BY_NAME[name].default,
                 metadata={SETTING: name, KEY: name, SCHEMA: schema or _setting_schema(name)})


def derived(*settings: str, default: Any = None, **schema: Any) -> Any:
    """A field computed while planning from the named settings (documented, and found by grep)."""
    return field(default=default, metadata={FROM: settings, SCHEMA: schema})


def _setting_schema(name: str) -> dict:
    s = BY_NAME[name]
    if s.kind == "port":
        return {"type": "integer", "minimum": 1, "maximum": 65535}
    if s.kind in ("int", "seconds"):
        return {"type": "integer", **({"minimum": s.minimum} if s.minimum is not None else {"minimum": 0})}
    if s.kind == "bool":
        return {"type": "boolean"}
    if s.kind == "choice":
        return {"enum": list(s.choices)}
    if s.kind == "path":
        return {"type": "string", "pattern": "^/"}
    return {"type": "string"}


@dataclass(frozen=True)
class AppliancePrograms:
    """The APPLIANCE_* values the supervised programs read (programs/, supervise/, inspectors/): one field per
    setting. The settings that only shape the plan itself are named in PLANNING_ONLY (a unit test checks every
    APPLIANCE_* setting is one or the other, so that none is silently dropped)."""
    run_dir: str = from_setting("APPLIANCE_RUN_DIR")
    startup_timeout: int = from_setting("APPLIANCE_STARTUP_TIMEOUT", type="integer", minimum=1)
    shutdown_timeout: int = from_setting("APPLIANCE_SHUTDOWN_TIMEOUT")
    lmcache_port: int = from_setting("APPLIANCE_LMCACHE_PORT")
    lmcache_http_port: int = from_setting("APPLIANCE_LMCACHE_HTTP_PORT")
    lmcache_wait: int = from_setting("APPLIANCE_LMCACHE_WAIT")
    metrics_port: int = from_setting("APPLIANCE_METRICS_PORT")
    log_format: str = from_setting("APPLIANCE_LOG_FORMAT")
    health_interval: int = from_setting("APPLIANCE_HEALTH_INTERVAL")
    health_timeout: int = from_setting("APPLIANCE_HEALTH_TIMEOUT")
    health_failures: int = from_setting("APPLIANCE_HEALTH_FAILURES")
    gap_answer: bool = from_setting("APPLIANCE_GAP_ANSWER")
    gap_retry_after: int = from_setting("APPLIANCE_GAP_RETRY_AFTER")
    front_proxy: bool = from_setting("APPLIANCE_FRONT_PROXY")
    front_max_held: int = from_setting("APPLIANCE_FRONT_MAX_HELD")
    front_max_hold: int = from_setting("APPLIANCE_FRONT_MAX_HOLD")
    front_max_resends: int = from_setting("APPLIANCE_FRONT_MAX_RESENDS")
    disk_prune_interval: int = from_setting("APPLIANCE_DISK_PRUNE_INTERVAL")


# APPLIANCE_* settings no supervised program reads: they shape the plan (or compose, or the router) only.
PLANNING_ONLY = {
    "APPLIANCE_VLLM_COMMAND": "the first words of plan.vllm.argv",
    "APPLIANCE_LMCACHE_COMMAND": "the first words of plan.lmcache.argv",
    # The `metrics` program reads LMCache's metrics on its HTTP port (inspectors/snapshot.lmcache_metrics_url).
    "APPLIANCE_LMCACHE_METRICS_PORT": "the LMCache server's --prometheus-port in plan.lmcache.argv",
    "APPLIANCE_MODEL_REGISTRY_FILE": "read while planning (the registry's values are in plan.values)",
    "APPLIANCE_ROLE": "plan.role",
    "APPLIANCE_FRONT_VLLM_PORT": "plan.vllm_port (vLLM's own port behind the front proxy)",
    "APPLIANCE_TENANT_ISOLATION": "vLLM's --middleware and APPLIANCE_TENANT_SALT in plan.vllm.env",
}
PLANNING_ONLY_GROUPS = ("Compose", "Router")  # read by compose files and the router, never by `serve`


@dataclass(frozen=True)
class KvTiers:
    """The KV tiers as sized while planning, with where each size came from (shown by `config`, checked
    against memory by preflight)."""
    cpu_tier_gib: float | None = derived("VLLM_KV_OFFLOADING_SIZE", "LMCACHE_MAX_LOCAL_CPU_SIZE",
                                         type=["number", "null"])
    cpu_tier_source: str = derived("VLLM_KV_OFFLOADING_SIZE", "LMCACHE_MAX_LOCAL_CPU_SIZE", default="",
                                   type="string")
    disk_tier_source: str = derived("LMCACHE_MAX_LOCAL_DISK_SIZE", default="", type="string")
    prewarm_gib: float = derived(
        "LMCACHE_PREWARM_SIZE", default=0.0, type="number", minimum=0,
        description="LMCACHE_PREWARM_SIZE as planned: GiB loaded from the disk tier into the CPU tier at start "
                    "(0: off)")
    prewarm_note: str = derived("LMCACHE_PREWARM_SIZE", default="", type="string",
                                description="how prewarm_gib was chosen, or why pre-warming is off")


@dataclass(frozen=True)
class DiskTier:
    base: str = field(metadata={SCHEMA: {"type": "string", "pattern": "^/"}})  # the volume or path the operator chose
    # namespaced directory actually used (what makes KV reusable)
    path: str = field(metadata={SCHEMA: {"type": "string", "pattern": "^/"}})
    max_size_gib: float = field(metadata={SCHEMA: {"type": "number", "exclusiveMinimum": 0}})
    # what happens to the other namespaces under `base` (kv_tiers.OTHER_NAMESPACES)
    others: str = field(default="", metadata={SCHEMA: {"type": "string"}})


_PORT: dict[str, Any] = {"type": "integer", "minimum": 1, "maximum": 65535}
_HOST: dict[str, Any] = {"type": "string", "minLength": 1}


@dataclass(frozen=True)
class SharedStore:
    """The store replicas share (LMCACHE_SHARED_URL); no password (it travels in LMCache's environment)."""
    url: str = field(metadata={SETTING: "LMCACHE_SHARED_URL", SCHEMA: {"type": "string", "pattern": "^redis://"}})
    host: str = field(metadata={FROM: ("LMCACHE_SHARED_URL",), SCHEMA: _HOST})
    port: int = field(metadata={FROM: ("LMCACHE_SHARED_URL",), SCHEMA: _PORT})
    username: str = field(metadata={SETTING: "LMCACHE_SHARED_USERNAME", SCHEMA: {"type": "string"}})


@dataclass(frozen=True)
class LmcacheServer:
    """A replica's LMCache server in another container (LMCACHE_SERVER): none is started here."""
    url: str = field(metadata={FROM: ("LMCACHE_SERVER", "APPLIANCE_LMCACHE_PORT"),
                               SCHEMA: {"type": "string", "pattern": "^tcp://"}})
    host: str = field(metadata={FROM: ("LMCACHE_SERVER",), SCHEMA: _HOST})
    port: int = field(metadata={FROM: ("LMCACHE_SERVER", "APPLIANCE_LMCACHE_PORT"), SCHEMA: _PORT})
    health_url: str = field(metadata={FROM: ("LMCACHE_SERVER", "APPLIANCE_LMCACHE_HTTP_PORT"),
                                      SCHEMA: {"type": "string", "pattern": "^http://"}})


_TEXT_MAP: dict[str, Any] = {"type": "object", "additionalProperties": {"type": "string"}}


@dataclass(frozen=True)
class KvIdentityInputs:
    """What went into the KV identity (kv_identity.py): the parts `config` shows, and the weight files."""
    parts: dict[str, str] = field(default_factory=dict, metadata={SCHEMA: _TEXT_MAP})
    files: dict[str, str] = field(default_factory=dict, metadata={SCHEMA: _TEXT_MAP})


# -- how fields are shown (redaction) -------------------------------------------------------------------
def _redacted_json_text(value: str) -> str:
    if value[:1] in ("{", "["):
        try:
            return json.dumps(redact_json(json.loads(value)), sort_keys=True, separators=(",", ":"))
        except (ValueError, RecursionError):
            pass
    return value


def _mask_leaves(node: Any, mask: Callable[[str], str]) -> Any:
    if isinstance(node, str):
        return mask(node)
    if isinstance(node, dict):
        return {k: _mask_leaves(v, mask) for k, v in node.items()}
    if isinstance(node, list):
        return [_mask_leaves(v, mask) for v in node]
    return node


def _argv(value: list[str] | None, redact: bool, plan: Plan) -> list[str] | None:
    return None if value is None else redact_argv(value) if redact else list(value)


def _env(value: Mapping[str, str], redact: bool, plan: Plan) -> dict[str, str]:
    return redact_env(value) if redact else dict(value)


def _config(value: dict[str, Any] | None, redact: bool, plan: Plan) -> Any:
    return redact_json(value) if redact else value


def _sorted(value: Iterable[str], redact: bool, plan: Plan) -> list[str]:
    return sorted(value)


def _values(value: Mapping[str, Any], redact: bool, plan: Plan) -> dict[str, Any]:
    return {k: redact_value(k, v) if redact else v for k, v in value.items()}


def _messages(value: Sequence[str], redact: bool, plan: Plan) -> list[str]:
    return [plan.mask(m) for m in value] if redact else list(value)


def _identity_inputs(value: KvIdentityInputs, redact: bool, plan: Plan) -> Any:
    """A KV-affecting flag can carry a credential (--model-loader-extra-config's storage keys): shown
    redacted like every JSON argument; the digest was taken of the real value."""
    shown = _as_json(value, redact, plan)
    if redact:
        shown["parts"] = {k: plan.mask(_redacted_json_text(v)) for k, v in value.parts.items()}
    return shown


def _as_json(value: Any, redact: bool, plan: Plan) -> Any:
    """A part (a dataclass) as JSON: each field under its setting's name where it is one (from_setting: the
    JSON plan names APPLIANCE_SHUTDOWN_TIMEOUT as the operator does), else under its own name, shown as its
    metadata says."""
    if not dataclasses.is_dataclass(value):
        return value
    return {_key(f): _shown(f, getattr(value, f.name), redact, plan) for f in dataclasses.fields(value)}


def _shown(f: dataclasses.Field[Any], value: Any, redact: bool, plan: Plan) -> Any:
    show = f.metadata.get(SHOW)
    return show(value, redact, plan) if show else _as_json(value, redact, plan)


def _key(f: dataclasses.Field) -> str:
    return f.metadata.get(KEY, f.name)


def _from_json(cls: Any, data: Mapping[str, Any] | None) -> Any:
    """A part read back; a key the writer did not have takes the field's default."""
    if data is None:
        return None
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if _key(f) in data:
            kwargs[f.name] = _from_json(_part_type(hints[f.name]), data[_key(f)]) if _part_type(hints[f.name]) \
                else data[_key(f)]
    return cls(**kwargs)


def _part_type(hint: Any) -> Any:
    """The dataclass a field holds (`SharedStore | None` -> SharedStore), or None for a plain value."""
    for t in (hint, *typing.get_args(hint)):
        if dataclasses.is_dataclass(t):
            return t
    return None


def _at(*path: str, show: Any = None, **schema: Any) -> dict[str, Any]:
    """Metadata of a Plan field: where it stands in the JSON plan, how it is shown, its schema."""
    # show: a Show or None (Any: callers spread JSON-schema dicts into **schema, which mypy could take for it)
    return {JSON: path, **_as(show, **schema)}


def _as(show: Show | None = None, **schema: Any) -> dict[str, Any]:
    """Metadata of a part's field: how it is shown, its schema."""
    return {SCHEMA: schema, **({SHOW: show} if show else {})}


_ARGV: dict[str, Any] = {"type": "array", "items": {"type": "string"}}
_MESSAGES: dict[str, Any] = {"type": "array", "items": {"type": "string", "minLength": 1}}


@dataclass(frozen=True)
class VllmPart:
    """vLLM as it is started: empty argv where none runs (a kv-server)."""
    argv: list[str] = field(default_factory=list, metadata=_as(
        _argv, description="`vllm serve MODEL --flag value ...` as it is executed", **_ARGV))
    env: dict[str, str] = field(default_factory=dict, metadata=_as(
        _env, description="variables added to or passed through to vLLM's environment", **_TEXT_MAP))
    env_removed: list[str] = field(default_factory=list, metadata=_as(
        _sorted, description="variables translated to flags: they never reach vLLM", **_ARGV))


@dataclass(frozen=True)
class LmcachePart:
    """LMCache as planned (kv_tiers.py): its program or config, and the tiers it holds."""
    # "server", "in-process", "native", "external" (LMCACHE_SERVER) or None
    mode: str | None = field(default=None, metadata=_as(enum=[None, "server", "in-process", "native", "external"]))
    argv: list[str] | None = field(default=None, metadata=_as(  # server mode
        _argv, oneOf=[_ARGV, {"type": "null"}]))
    config: dict | None = field(default=None, metadata=_as(  # in-process mode (rendered to config_file)
        _config, type=["object", "null"]))
    config_file: str | None = field(default=None, metadata=_as(type=["string", "null"]))
    env: dict[str, str] = field(default_factory=dict, metadata=_as(_env, **_TEXT_MAP))
    health_url: str | None = field(default=None, metadata=_as(type=["string", "null"]))
    disk: DiskTier | None = None
    shared_store: SharedStore | None = field(default=None, metadata=_as(
        description="The store replicas share (LMCACHE_SHARED_URL), for the probes; never the password."))
    server: LmcacheServer | None = field(default=None, metadata=_as(
        description="A replica's LMCache server in another container (LMCACHE_SERVER; mode external)."))


@dataclass
class Plan:
    vllm: VllmPart = field(default_factory=VllmPart, metadata=_at("vllm"))
    lmcache: LmcachePart = field(default_factory=LmcachePart, metadata=_at("lmcache"))
    role: str = field(default="all", metadata=_at(
        "role", enum=["all", "kv-server"], description="APPLIANCE_ROLE: kv-server runs the LMCache server only"))
    kv_identity: str = field(default="", metadata=_at(
        "kv_identity", type="string", pattern="^([0-9a-f]{16})?$",
        description="The KV identity: stored KV is reused only under the same one (empty: no model planned)"))
    kv_identity_inputs: KvIdentityInputs = field(default_factory=KvIdentityInputs, metadata=_at(
        "kv_identity_inputs", show=_identity_inputs,
        description="What went into the KV identity: parts (shown by config) and files (the weights)"))
    model: str = field(default="", metadata=_at("model", type="string", **{"not": {"pattern": "^-"}}))
    served_model_name: str = field(default="", metadata=_at(
        "served_model_name", type="string", **{"not": {"pattern": "^-"}}))
    api_host: str = field(default="0.0.0.0", metadata=_at("api", "host", type="string"))
    api_port: int = field(default=8000, metadata=_at("api", "port", **_PORT))
    # Where vLLM itself listens when not on the API's address: loopback:APPLIANCE_FRONT_VLLM_PORT behind the front
    # proxy (APPLIANCE_FRONT_PROXY), which then holds the API port. None: on the API's (vllm_address).
    vllm_host: str | None = field(default=None, metadata=_at("api", "vllm_host", type=["string", "null"]))
    vllm_port: int | None = field(default=None, metadata=_at(
        "api", "vllm_port", anyOf=[_PORT, {"type": "null"}]))
    appliance: AppliancePrograms = field(default_factory=AppliancePrograms, metadata=_at(
        "appliance", description="APPLIANCE_* values the supervised programs read (one per setting)"))
    tiers: KvTiers = field(default_factory=KvTiers, metadata=_at(
        "tiers", description="The chosen tier sizes with their source, and the hot-prefix pre-warm size"))
    values: dict[str, typing.Any] = field(default_factory=dict, metadata=_at(  # every resolved variable
        "values", show=_values, type="object", propertyNames={"pattern": "^[A-Z][A-Z0-9_]*$"}))
    sources: dict[str, str] = field(default_factory=dict, metadata=_at(
        "sources", type="object",
        additionalProperties={"enum": ["command line", "environment", "env file", "registry", "default"]}))
    warnings: list[str] = field(default_factory=list, metadata=_at("warnings", show=_messages, **_MESSAGES))
    errors: list[str] = field(default_factory=list, metadata=_at("errors", show=_messages, **_MESSAGES))
    # Every secret value met while planning (never serialised): masked in any text the appliance prints.
    secret_values: set[str] = field(default_factory=set, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def vllm_address(self) -> tuple[str, int]:
        """(host, port) vLLM itself listens on: the watchdog and `status` probe it there."""
        return (self.vllm_host or self.api_host, self.vllm_port or self.api_port)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def to_dict(self, redact: bool = True) -> dict:
        """The output contract of `config --format json`; secrets redacted unless asked otherwise."""
        shown: dict = {}
        for f in _json_fields():
            value = getattr(self, f.name)
            *parents, key = f.metadata[JSON]
            node = shown
            for name in parents:
                node = node.setdefault(name, {})
            node[key] = _shown(f, value, redact, self)
        # Redacted by position above; then every known secret value masked wherever else it stands (a secret
        # copied into another value, a URL's password): nothing printed or written shows one.
        return _mask_leaves(shown, self.mask) if redact else shown

    def mask(self, text: str) -> str:
        """Free text (a message, a printed plan) with every secret value of this plan hidden."""
        return mask_text(text, self.secret_values)

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        """Read back a plan written by `serve` (the supervised programs start from it)."""
        hints = typing.get_type_hints(cls)
        kwargs: dict[str, typing.Any] = {}
        for f in _json_fields():
            node = d
            for name in f.metadata[JSON]:
                if not isinstance(node, dict) or name not in node:
                    break
                node = node[name]
            else:
                part = _part_type(hints[f.name])
                kwargs[f.name] = _from_json(part, node) if part else node
        return cls(**kwargs)


def _json_fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(Plan) if JSON in f.metadata]


# -- the JSON schema (docs/config.schema.json) ------------------------------------------------------------
def _part_schema(cls: type[Any]) -> dict:
    props = {_key(f): _field_schema(f, typing.get_type_hints(cls)[f.name]) for f in dataclasses.fields(cls)}
    required = [_key(f) for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    return {"type": "object", "additionalProperties": False, **({"required": required} if required else {}),
            "properties": props}


def _field_schema(f: dataclasses.Field[Any], hint: Any) -> dict:
    schema = dict(f.metadata.get(SCHEMA, {}))
    part = _part_type(hint)
    if part is None:
        return schema
    description = schema.pop("description", None)
    body = _part_schema(part)
    if type(None) in typing.get_args(hint):
        body = {"oneOf": [{"type": "null"}, body]}
    return {**({"description": description} if description else {}), **body, **schema}


def json_schema() -> dict:
    """docs/config.schema.json: the JSON plan's contract, walked from the fields above."""
    hints = typing.get_type_hints(Plan)
    root: dict = {"type": "object", "additionalProperties": False, "properties": {}}
    for f in _json_fields():
        *parents, key = f.metadata[JSON]
        node = root
        for name in parents:
            node = node["properties"].setdefault(name, {"type": "object", "additionalProperties": False,
                                                        "properties": {}})
        node["properties"][key] = _field_schema(f, hints[f.name])
    _require_all(root)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "https://github.com/llm-appliance/docs/config.schema.json",
            "title": "python -m entrypoint config --format json",
            "description": "The launch plan the appliance prints (and `serve` writes to plan.json in the run "
                           "directory), secrets redacted as \"***\". Exit code 0 with errors == [], or 2 with the "
                           "problems in errors.",
            **root}


def _require_all(node: dict) -> None:
    """Every key the plan writes is required (to_dict always writes all of them)."""
    if "properties" in node and "required" not in node:
        node["required"] = list(node["properties"])
        for child in node["properties"].values():
            if child.get("type") == "object":
                _require_all(child)
