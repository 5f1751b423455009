"""The launch plan: a pure value (vLLM argv and environment, LMCache argv or config, the disk tier).

`config` prints it, `serve` writes it (redacted) to the run directory and the supervised programs read it
back. It is built by `build.py` from the settings; this module only defines it and its JSON contract.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from .secrets import mask_text, redact_argv, redact_env, redact_json, redact_value


def _redacted_json_text(value: str) -> str:
    if value[:1] in ("{", "["):
        try:
            return json.dumps(redact_json(json.loads(value)), sort_keys=True, separators=(",", ":"))
        except (ValueError, RecursionError):
            pass
    return value


def _mask_leaves(node, mask):
    if isinstance(node, str):
        return mask(node)
    if isinstance(node, dict):
        return {k: _mask_leaves(v, mask) for k, v in node.items()}
    if isinstance(node, list):
        return [_mask_leaves(v, mask) for v in node]
    return node


@dataclass
class DiskTier:
    base: str  # the volume or path the operator chose
    path: str  # namespaced directory actually used (what makes KV reusable)
    max_size_gib: float
    others: str = ""  # what happens to the other namespaces under `base` (kv_tiers.OTHER_NAMESPACES)


@dataclass
class Plan:
    vllm_argv: list[str] = field(default_factory=list)
    vllm_env: dict[str, str] = field(default_factory=dict)  # added or passed through to vLLM
    vllm_env_removed: list[str] = field(default_factory=list)  # translated: never reach vLLM
    lmcache_mode: str | None = None  # "server", "in-process", "native", "external" (LMCACHE_SERVER) or None
    lmcache_argv: list[str] | None = None  # server mode
    lmcache_config: dict | None = None  # in-process mode (rendered to lmcache_config_file)
    lmcache_config_file: str | None = None
    lmcache_env: dict[str, str] = field(default_factory=dict)
    lmcache_health_url: str | None = None
    disk: DiskTier | None = None
    # The store replicas share (LMCACHE_SHARED_URL): {url, host, port, username}; no password (environment).
    shared_store: dict | None = None
    # APPLIANCE_ROLE: "all" (vLLM, and its LMCache server in server mode) or "kv-server" (the LMCache server only).
    role: str = "all"
    # LMCACHE_SERVER (a replica): the LMCache server vLLM uses, {url, host, port, health_url}; none started here.
    lmcache_server: dict | None = None
    model: str = ""
    # The KV identity (kv_identity.py): its digest, and what went into it ({parts, files}).
    kv_identity: str = ""
    kv_identity_inputs: dict = field(default_factory=dict)
    served_model_name: str = ""
    api_host: str = "0.0.0.0"
    api_port: int = 8000
    appliance: dict[str, object] = field(default_factory=dict)  # APPLIANCE_* values, for supervision
    values: dict[str, object] = field(default_factory=dict)  # every resolved variable
    sources: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # Every secret value met while planning (never serialised): masked in any text the appliance prints.
    secret_values: set[str] = field(default_factory=set, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def to_dict(self, redact: bool = True) -> dict:
        """The output contract of `config --format json`; secrets redacted unless asked otherwise."""
        hide = redact_env if redact else dict
        hide_argv = redact_argv if redact else list
        text = self.mask if redact else (lambda t: t)
        shown = {
            "vllm": {"argv": hide_argv(self.vllm_argv), "env": hide(self.vllm_env),
                     "env_removed": sorted(self.vllm_env_removed)},
            "lmcache": {"mode": self.lmcache_mode,
                        "argv": hide_argv(self.lmcache_argv) if self.lmcache_argv is not None else None,
                        "config": redact_json(self.lmcache_config) if redact else self.lmcache_config,
                        "config_file": self.lmcache_config_file,
                        "env": hide(self.lmcache_env), "health_url": self.lmcache_health_url,
                        "disk": dataclasses.asdict(self.disk) if self.disk else None,
                        "shared_store": self.shared_store, "server": self.lmcache_server},
            "role": self.role,
            "kv_identity": self.kv_identity,
            "kv_identity_inputs": self._identity_inputs(redact),
            "model": self.model, "served_model_name": self.served_model_name,
            "api": {"host": self.api_host, "port": self.api_port},
            "appliance": self.appliance,
            "values": {k: redact_value(k, v) if redact else v for k, v in self.values.items()},
            "sources": self.sources, "warnings": [text(w) for w in self.warnings],
            "errors": [text(e) for e in self.errors],
        }
        # Redacted by position above; then every known secret value masked wherever else it stands (a secret
        # copied into another value, a URL's password): nothing printed or written shows one.
        return _mask_leaves(shown, self.mask) if redact else shown

    def _identity_inputs(self, redact: bool) -> dict:
        """A KV-affecting flag can carry a credential (--model-loader-extra-config's storage keys): shown
        redacted like every JSON argument; the digest was taken of the real value."""
        if not redact or not self.kv_identity_inputs:
            return self.kv_identity_inputs
        parts = {k: self.mask(_redacted_json_text(v)) for k, v in self.kv_identity_inputs.get("parts", {}).items()}
        return {**self.kv_identity_inputs, "parts": parts}

    def mask(self, text: str) -> str:
        """Free text (a message, a printed plan) with every secret value of this plan hidden."""
        return mask_text(text, self.secret_values)

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        """Read back a plan written by `serve` (the supervised programs start from it)."""
        disk = d["lmcache"].get("disk")
        return cls(vllm_argv=d["vllm"]["argv"], vllm_env=d["vllm"]["env"], vllm_env_removed=d["vllm"]["env_removed"],
                   lmcache_mode=d["lmcache"]["mode"], lmcache_argv=d["lmcache"]["argv"],
                   lmcache_config=d["lmcache"]["config"], lmcache_config_file=d["lmcache"]["config_file"],
                   lmcache_env=d["lmcache"]["env"], lmcache_health_url=d["lmcache"]["health_url"],
                   disk=DiskTier(**disk) if disk else None, shared_store=d["lmcache"].get("shared_store"),
                   role=d.get("role", "all"), lmcache_server=d["lmcache"].get("server"),
                   model=d["model"], kv_identity=d.get("kv_identity", ""),
                   kv_identity_inputs=d.get("kv_identity_inputs") or {},
                   served_model_name=d["served_model_name"], api_host=d["api"]["host"], api_port=d["api"]["port"],
                   appliance=d["appliance"], values=d["values"], sources=d["sources"],
                   warnings=d["warnings"], errors=d["errors"])
