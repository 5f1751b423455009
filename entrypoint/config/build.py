"""Settings -> Plan: the steps that turn the collected values into a validated launch plan.

Building a Plan is pure: it reads no volume, writes nothing and starts nothing (it may read the
`*_FILE` secrets and the registry file the operator names). Every problem is collected, not raised,
so that one run reports all of them.

Two phases. `Builder` collects: secrets from files, the model registry, every name classified, every
setting parsed, into one `Resolved` (resolved.py). Then the steps, in the order of `Builder.build`: each is a
function that takes what it needs and returns its part of the plan with its problems (the KV offloading
step lives in kv_tiers.py); `build` assembles the parts, so that no step edits another's output.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Mapping

from . import kv_identity, kv_tiers, models, resources, roles, secret_inputs
from .flags import AMBIGUOUS, flag_args, parse_flag_value, resolve_flag, split_args
from .plan import SETTING, AppliancePrograms, KvIdentityInputs, KvTiers, LmcachePart, Plan, VllmPart
from .resolved import Problems, Resolved, bad_value, label
from .schema import Schema
from .secrets import SECRET_FLAGS, is_secret_name, raw_secret_values, secret_argv_values, url_passwords
from .settings import (
    BY_NAME,
    FILE_SECRETS,
    OWNED_FLAGS,
    REFUSED_FLAGS,
    SETTINGS,
    VLLM_SECRETS,
    DiskChoice,
    MPServer,
    StoreURL,
    ValueProblem,
    load_json,
    owned_flag_problem,
    parse_bool,
    parse_value,
)
from .sources import DEFAULT, ENV_FILE, ENVIRONMENT, REGISTRY, RawInputs

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
TENANT_MIDDLEWARE = "entrypoint.vllm_ext.tenant_salt.TenantSaltMiddleware"
REQUIRED = ("VLLM_MODEL", "VLLM_PORT", "APPLIANCE_VLLM_COMMAND")  # without them no step can run


def _suggest(name: str, candidates: Iterable[str]) -> str:
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.75)
    return f"; did you mean {match[0]}?" if match else ""


def _typed_lmcache_value(type_name: str, raw: str) -> Any:
    t = type_name.replace("Optional[", "").rstrip("]")
    if t == "int":
        return int(raw)
    if t == "float":
        value = float(raw)
        if not math.isfinite(value):
            raise ValueError(raw)
        return value
    if t == "bool":
        return parse_bool(raw)
    if raw.strip()[:1] in "[{":
        return load_json(raw)
    return raw


class Builder:
    """Collects the raw inputs into typed settings (Resolved), then runs the steps and assembles the plan."""

    def __init__(self, raw: RawInputs, schema: Schema, environ: Mapping[str, str], host: resources.Host):
        self.raw, self.schema, self.environ, self.host = raw, schema, environ, host
        self.errors: list[str] = list(raw.errors)  # the collecting phase's problems
        self.values: dict[str, Any] = {}  # typed values of explicit settings
        self.user_given: set[str] = set()  # names set by the operator (not registry, not default)
        self.generic_flags: dict[str, tuple[str, object]] = {}  # name -> (flag, typed value)
        self.vllm_passthrough: dict[str, str] = {}
        self.lmcache_keys: dict[str, object] = {}  # in-process config keys from LMCACHE_<KEY>
        self.lmcache_env: dict[str, str] = {}
        self.swallowed: set[str] = set()  # secrets inside another variable's multi-line value (swallowed_secrets)

    def error(self, msg: str) -> None:
        self.errors.append(msg)

    def label(self, name: str) -> str:
        return label(self.raw, name)

    def bad_value(self, name: str, raw: str, problem: str) -> None:
        self.error(bad_value(self.raw, name, raw, problem))

    # -- collecting ------------------------------------------------------------------------------------
    def secrets_from_files(self) -> None:
        read, found = secret_inputs.secrets_from_files(self.raw.values)
        self.errors += found.errors
        for var, file_var in FILE_SECRETS.items():
            if var in read:
                self.raw.values[var] = read[var]
                self.raw.sources[var] = self.raw.sources[file_var]
            self.raw.values.pop(file_var, None)

    def classify(self) -> None:
        """Every VLLM_/LMCACHE_/APPLIANCE_ name is an appliance setting, a vLLM flag, a variable vLLM or
        LMCache reads itself, or a mistake."""
        flags = self.schema.flag_by_env_name
        for name, (plain, where) in sorted(self.raw.near_misses.items()):
            candidates = self.known_names()
            right = plain if plain in candidates else next(iter(difflib.get_close_matches(plain, candidates, n=1)),
                                                           None)
            fix = f"write it as {right}" if right else "write the name in capitals and plain Latin letters"
            self.error(f"{name!r} (in the {where}): not read, although it looks like an appliance setting: names "
                       f"are exact, in capitals and plain Latin letters; {fix}")
        for name in sorted(self.raw.values):
            if name in BY_NAME or name in FILE_SECRETS.values():
                continue
            value = self.raw.values[name]
            if name.startswith("VLLM_") and name in flags:
                flag = flags[name]
                if owned_flag_problem(flag, OWNED_FLAGS, REFUSED_FLAGS):
                    self.error(f"{self.label(name)}: {flag} {owned_flag_problem(flag, OWNED_FLAGS, REFUSED_FLAGS)}")
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
                except (ValueError, ValueProblem):
                    self.bad_value(name, value, f"must be of type {self.schema.lmcache_keys[key]['type']} "
                                                f"(LMCache config key {key})")
            elif name.startswith("LMCACHE_") and name in self.schema.lmcache_other_env_vars:
                self.lmcache_env[name] = value
            else:
                self.unknown(name)

    def known_names(self) -> set[str]:
        return (set(BY_NAME) | set(FILE_SECRETS.values()) | set(self.schema.flag_by_env_name)
                | self.schema.vllm_env_vars | {f"LMCACHE_{k.upper()}" for k in self.schema.lmcache_keys})

    def unknown(self, name: str) -> None:
        candidates = self.known_names() - set(FILE_SECRETS.values())
        if name in self.raw.cli_flags:
            flag = self.raw.cli_flags[name]
            cli_candidates = {s.cli_flag for s in SETTINGS} | set(self.schema.serve_flags)
            self.error(f"{flag}: unknown option{_suggest(flag, cli_candidates)}")
        else:
            # The versions are named: after an upgrade, a flag or variable the new vLLM dropped lands here.
            self.error(f"{name}: unknown variable{_suggest(name, candidates)} (names under VLLM_, LMCACHE_ "
                       "and APPLIANCE_ must be appliance settings, vllm serve flags, or variables vLLM or "
                       f"LMCache read; the installed vLLM {self.schema.vllm_version} and LMCache "
                       f"{self.schema.lmcache_version}: see docs/ENVIRONMENT.md, docs/UPGRADING.md)")

    def apply_registry(self) -> None:
        model = self.raw.values.get("VLLM_MODEL", "").strip() or str(BY_NAME["VLLM_MODEL"].default)
        extra = self.raw.values.get("APPLIANCE_MODEL_REGISTRY_FILE", "").strip() or None
        try:
            registry = models.load_registry(extra)
        except (OSError, ValueError, RecursionError) as e:
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

    def resolved(self) -> Resolved:
        return Resolved(raw=self.raw, schema=self.schema, environ=self.environ, host=self.host,
                        values=dict(self.values), user_given=frozenset(self.user_given),
                        generic_flags=dict(self.generic_flags), vllm_passthrough=dict(self.vllm_passthrough),
                        lmcache_keys=dict(self.lmcache_keys), lmcache_env=dict(self.lmcache_env))

    # -- the steps, assembled ----------------------------------------------------------------------------
    def build(self) -> Plan:
        plan = Plan(errors=self.errors)
        try:
            self.swallowed = secret_inputs.swallowed_secrets(self.raw.values)
            self.secrets_from_files()
            self.errors += secret_inputs.secret_copies(self.raw.values, self.raw.passthrough, self.environ).errors
            self.apply_registry()
            self.classify()
            self.resolve_settings()
            if any(n not in self.values for n in REQUIRED):
                return plan  # a required value did not parse; its error is recorded
            s = self.resolved()
            role = str(s.values.get("APPLIANCE_ROLE", "all"))
            command, found = vllm_command(s)
            _add(plan, found)
            identity, vllm_flags = kv_identity_of(s, command.model, command.argv)
            kv = kv_tiers.plan_kv_tiers(kv_tiers.KvInputs(s, command.model, identity.digest, vllm_flags,
                                                          command.api_port, role))
            _add(plan, kv)
            extra, found = extra_args(s, command.argv + kv.vllm_argv, command.flag_setters)
            _add(plan, found)
            argv = command.argv + kv.vllm_argv + extra
            _add(plan, api_exposure(s, role, command.api_host, command.api_port, argv))
            tenant, found = tenant_isolation(s, role, argv)
            _add(plan, found)
            env, removed = environment(s)
            plan.vllm = (VllmPart(argv=argv + tenant, env={**kv.vllm_env, **env}, env_removed=removed)
                         if roles.runs_vllm(role) else VllmPart(env_removed=removed))
            plan.model, plan.served_model_name, plan.role = command.model, command.served_model_name, role
            plan.api_host, plan.api_port = command.api_host, command.api_port
            if (command.vllm_host, command.vllm_port) != (command.api_host, command.api_port):
                plan.vllm_host, plan.vllm_port = command.vllm_host, command.vllm_port
            _add(plan, front_proxy(s, role))
            plan.kv_identity = identity.digest
            plan.kv_identity_inputs = KvIdentityInputs(parts=identity.parts, files=identity.files)
            plan.lmcache = LmcachePart(mode=kv.mode, argv=kv.argv, config=kv.config, config_file=kv.config_file,
                                       env=kv.env, health_url=kv.health_url, disk=kv.disk,
                                       shared_store=kv.shared_store, server=kv.server)
            _add(plan, launch_limits(s.environ, plan))
            plan.values, plan.sources = recorded_values(s, kv)
            plan.appliance = appliance_programs(s.values)
            plan.tiers = kv_tiers_of(kv)
        finally:
            plan.secret_values = secret_values(self.raw, self.environ, self.swallowed,
                                               (plan.vllm.argv, plan.lmcache.argv or []))
        return plan


def _add(plan: Plan, found: Problems) -> None:
    """A step's problems onto the plan, after those of the steps before it (the order `config` shows)."""
    plan.errors += found.errors
    plan.warnings += found.warnings


# -- the steps -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VllmCommand:
    model: str
    served_model_name: str
    api_host: str
    api_port: int
    vllm_host: str  # where vLLM listens: the API's address, or loopback behind the front proxy
    vllm_port: int
    argv: list[str]  # `vllm serve MODEL` and the flags the settings translate to
    flag_setters: dict[str, str]  # vLLM flag -> the variable that put it on the command line


def vllm_command(s: Resolved) -> tuple[VllmCommand, Problems]:
    v, found = s.values, Problems()
    model = str(v["VLLM_MODEL"])
    names = str(v.get("VLLM_SERVED_MODEL_NAME", "")).split()
    setters: dict[str, str] = {}

    def flag(name: str, flag: str, value: Any) -> list[str]:
        setters[flag] = name
        try:
            return flag_args(flag, s.schema.serve_flags[flag], value)
        except ValueProblem as e:
            found.error(s.bad_value(name, str(value), str(e)))
            return []

    argv = [*s.split("APPLIANCE_VLLM_COMMAND", str(v["APPLIANCE_VLLM_COMMAND"]), found), "serve", model]
    flags = s.schema.serve_flags
    for setting in SETTINGS:
        if setting.flag and setting.name in v:
            if setting.flag not in flags:
                found.error(f"{setting.name}: the installed vLLM {s.schema.vllm_version} has no {setting.flag} flag")
                continue
            value = v[setting.name]
            if setting.name in ("VLLM_HOST", "VLLM_PORT"):  # behind the front proxy, vLLM moves to loopback
                value = dict(zip(("VLLM_HOST", "VLLM_PORT"), vllm_listens(v)))[setting.name]
            if setting.kind == "human_int_or_auto" and value == -1:
                value = "auto"
            elif setting.kind == "names":
                value = str(value).split()
            argv += flag(setting.name, setting.flag, value)
    for name in sorted(s.generic_flags):
        flag_name, value = s.generic_flags[name]
        argv += flag(name, flag_name, value)
    argv += ["--shutdown-timeout", str(v["APPLIANCE_SHUTDOWN_TIMEOUT"])]
    if v.get("VLLM_ENABLE_AUTO_TOOL_CHOICE") and not v.get("VLLM_TOOL_CALL_PARSER"):
        found.error("VLLM_ENABLE_AUTO_TOOL_CHOICE=true needs VLLM_TOOL_CALL_PARSER (vLLM refuses to start "
                    "without it), e.g. VLLM_TOOL_CALL_PARSER=hermes")
    if "VLLM_CPU_OFFLOAD_GB" in v:
        found.warn(
            f"VLLM_CPU_OFFLOAD_GB={v['VLLM_CPU_OFFLOAD_GB']:g} offloads model weights to CPU RAM, not the KV "
            "cache (vllm --cpu-offload-gb; deprecated here). To offload the KV cache instead: remove "
            "VLLM_CPU_OFFLOAD_GB and set VLLM_KV_OFFLOADING_BACKEND=lmcache and VLLM_KV_OFFLOADING_SIZE=<GiB>.")
    if "VLLM_HF_TOKEN" in s.generic_flags:
        found.warn("VLLM_HF_TOKEN puts the token on vLLM's command line; prefer HF_TOKEN")
    command = VllmCommand(model=model, served_model_name=names[0] if names else model,  # vLLM answers to the first
                          api_host=str(v["VLLM_HOST"]), api_port=int(v["VLLM_PORT"]),
                          vllm_host=vllm_listens(v)[0], vllm_port=vllm_listens(v)[1], argv=argv,
                          flag_setters=setters)
    return command, found


def vllm_listens(v: Mapping[str, Any]) -> tuple[str, int]:
    """Where vLLM listens: VLLM_HOST:VLLM_PORT, or behind the front proxy (APPLIANCE_FRONT_PROXY, which then holds
    the API address) loopback:APPLIANCE_FRONT_VLLM_PORT."""
    if v.get("APPLIANCE_FRONT_PROXY"):
        return "127.0.0.1", int(v["APPLIANCE_FRONT_VLLM_PORT"])
    return str(v["VLLM_HOST"]), int(v["VLLM_PORT"])


def front_proxy(s: Resolved, role: str) -> Problems:
    """APPLIANCE_FRONT_PROXY: vLLM's own port must be free of the others the appliance opens."""
    found, v = Problems(), s.values
    if not v.get("APPLIANCE_FRONT_PROXY") or role == roles.KV_SERVER:
        return found
    port = int(v["APPLIANCE_FRONT_VLLM_PORT"])
    for other in ("VLLM_PORT", "APPLIANCE_METRICS_PORT", "APPLIANCE_LMCACHE_PORT", "APPLIANCE_LMCACHE_HTTP_PORT",
                  "APPLIANCE_LMCACHE_METRICS_PORT"):
        if other in v and int(v[other]) == port:
            found.error(f"APPLIANCE_FRONT_VLLM_PORT={port} is also {other}: vLLM behind the front proxy needs a "
                        f"port of its own, e.g. APPLIANCE_FRONT_VLLM_PORT={port + 10000 if port < 55535 else 18000}")
    return found


def kv_identity_of(s: Resolved, model: str, argv: list[str]) -> tuple[kv_identity.KvIdentity, dict[str, str]]:
    """The KV identity (kv_identity.py) of everything vLLM will be given: the planned flags, VLLM_EXTRA_ARGS and
    the arguments after `--` (their problems are reported by extra_args; here they are only read), and those
    flags with their values."""
    v = s.values
    try:
        extra = split_args(str(v.get("VLLM_EXTRA_ARGS", "")))
    except ValueProblem:
        extra = []
    vllm_flags = kv_identity.flag_values(argv[argv.index("serve") + 2:] + extra + list(s.raw.extra_args),
                                         s.schema.serve_flags)
    identity = kv_identity.compute(model, vllm_flags, {**s.environ, **s.raw.passthrough}, s.schema.vllm_version,
                                   s.schema.lmcache_version, int(v.get("LMCACHE_CHUNK_SIZE", 256)))
    return identity, vllm_flags


def extra_args(s: Resolved, argv: list[str], flag_setters: Mapping[str, str]) -> tuple[list[str], Problems]:
    """VLLM_EXTRA_ARGS and the arguments after `--`: appended as they are to `argv` (the command planned so far),
    but a flag the appliance owns or has already set is refused, however argparse would spell it (`--port=1`,
    `--por 1`, `--served_model_name`). Returns the arguments to append."""
    found, flags = Problems(), s.schema.serve_flags
    bools = [f for f, spec in flags.items() if spec["kind"] == "bool"]
    sources = [("VLLM_EXTRA_ARGS", s.split("VLLM_EXTRA_ARGS", str(s.values.get("VLLM_EXTRA_ARGS", "")), found)),
               ("the arguments after `--`", list(s.raw.extra_args))]
    added: list[str] = []
    for where, extra in sources:
        for i, arg in enumerate(extra):
            flag = resolve_flag(arg, flags, bools)
            shown = arg.split("=", 1)[0]
            if flag in SECRET_FLAGS and shown != flag:
                # `--api_key`, `--api-k`: written out, so that the health checks find the key vLLM reads.
                extra[i] = flag + arg[len(shown):]
            if flag == AMBIGUOUS:
                found.error(f"{where}: {shown} is an abbreviation of several vllm serve flags; write the flag "
                            "in full")
            elif flag is not None and owned_flag_problem(flag, OWNED_FLAGS, REFUSED_FLAGS):
                found.error(f"{where}: {_as_typed(shown, flag)} "
                            f"{owned_flag_problem(flag, OWNED_FLAGS, REFUSED_FLAGS)}")
            elif flag is not None and flag in flag_setters:
                setter = flag_setters[flag]
                registry = " (from the model registry)" if s.raw.sources.get(setter) == REGISTRY else ""
                found.error(f"{where}: {_as_typed(shown, flag)} is already set by {setter}{registry}; set it "
                            f"there only (vLLM would see both values)")
        added += extra
    if any(resolve_flag(arg, flags, bools) == "--api-key" for arg in argv + added):
        if s.raw.values.get("VLLM_API_KEY"):  # vLLM would take only --api-key; the probes would send this
            found.error("VLLM_API_KEY and --api-key are both set: vLLM ignores VLLM_API_KEY when --api-key is "
                        "given; set only one of them (preferably VLLM_API_KEY or VLLM_API_KEY_FILE)")
        else:
            found.warn("--api-key in VLLM_EXTRA_ARGS puts the key on vLLM's command line, which vLLM "
                       "logs; prefer VLLM_API_KEY or VLLM_API_KEY_FILE")
    return added, found


def api_keyed(s: Resolved, argv: list[str]) -> bool:
    return bool(s.raw.values.get("VLLM_API_KEY")) or any(
        resolve_flag(a, s.schema.serve_flags) == "--api-key" for a in argv)


def api_exposure(s: Resolved, role: str, host: str, port: int, argv: list[str]) -> Problems:
    found = Problems()
    if role == roles.KV_SERVER:
        return found  # no API here (kv_tiers.lmcache_server binds the LMCache server's ports instead)
    if not api_keyed(s, argv) and host not in LOOPBACK_HOSTS:
        found.warn(f"no API key is set and the API listens on {host}:{port}: anyone who "
                   "reaches that port can use the model. Set VLLM_API_KEY (or VLLM_API_KEY_FILE), or "
                   "VLLM_HOST=127.0.0.1 to listen on loopback only")
    return found


def tenant_isolation(s: Resolved, role: str, argv: list[str]) -> tuple[list[str], Problems]:
    """APPLIANCE_TENANT_ISOLATION: vLLM's API server salts each request's cache by its API key
    (vllm_ext/tenant_salt.py), which partitions vLLM's prefix cache and every LMCache tier alike. Returns the
    arguments to append to vLLM's command."""
    found = Problems()
    if not s.values.get("APPLIANCE_TENANT_ISOLATION") or role == roles.KV_SERVER:
        return [], found
    if not api_keyed(s, argv):
        found.error("APPLIANCE_TENANT_ISOLATION=true needs API keys (each key is a tenant): set VLLM_API_KEY, or "
                    "several keys with `--api-key k1 k2` in VLLM_EXTRA_ARGS")
        return [], found
    return ["--middleware", TENANT_MIDDLEWARE], found


def environment(s: Resolved) -> tuple[dict[str, str], list[str]]:
    """vLLM's environment: its own variables pass through, ours are removed (VLLM_PORT above all). Returns
    (what is added or passed through, the names removed)."""
    consumed = {n for n in s.raw.values if n not in s.vllm_passthrough and n not in s.lmcache_env
                and s.raw.sources.get(n) in (ENVIRONMENT, ENV_FILE)}
    # vLLM's own secrets; the shared store's password goes to LMCache only (kv_tiers.shared_store_credentials).
    secrets_passed = {n for n in FILE_SECRETS if n in s.raw.values and n in VLLM_SECRETS}
    removed = sorted((consumed - secrets_passed) | {n for n in FILE_SECRETS.values() if n in s.environ})
    env = {**s.vllm_passthrough, **s.lmcache_env, **s.raw.passthrough}
    for name in secrets_passed:
        env[name] = s.raw.values[name]
    return env, removed


def launch_limits(environ: Mapping[str, str], plan: Plan) -> Problems:
    """What execve would refuse when the launcher starts a server: a command line and environment past the
    kernel's ARG_MAX together (each value alone is bounded in sources.value_problem)."""
    found, limit = Problems(), _arg_max()
    base = {k: v for k, v in environ.items() if k not in plan.vllm.env_removed}
    for program, argv, env in (("vLLM", plan.vllm.argv, {**base, **plan.vllm.env}),
                               ("the LMCache server", plan.lmcache.argv or [], {**base, **plan.lmcache.env})):
        if not argv:
            continue
        size = (sum(len(a.encode("utf-8", "surrogateescape")) + 1 + 8 for a in argv)
                + sum(len(f"{k}={v}".encode("utf-8", "surrogateescape")) + 1 + 8 for k, v in env.items()))
        if size > limit:
            found.error(f"the command line and environment of {program} add up to {size} bytes, more than the "
                        f"{limit} the kernel accepts for a new process (ARG_MAX); shorten the longest values "
                        "(VLLM_EXTRA_ARGS, JSON settings, variables passed through)")
    return found


def recorded_values(s: Resolved, kv: kv_tiers.KvPart) -> tuple[dict[str, object], dict[str, str]]:
    """Every resolved value as the plan shows it (plain JSON), and where each came from."""
    values: dict[str, object] = {}
    for name, value in {**s.values, **kv.recorded}.items():
        values[name] = (dataclasses.asdict(value) if isinstance(value, DiskChoice)
                        else value.url if isinstance(value, StoreURL)
                        else f"{value.host}:{value.port or ''}".rstrip(":") if isinstance(value, MPServer)
                        else value)
    for name, (_, value) in s.generic_flags.items():
        values[name] = value
    sources = {name: s.raw.sources.get(name, DEFAULT)
               for name in sorted(set(values) | set(s.vllm_passthrough) | set(s.lmcache_env))}
    return values, sources


def appliance_programs(values: Mapping[str, Any]) -> AppliancePrograms:
    """The APPLIANCE_* values the supervised programs read, each from the setting its field names."""
    return AppliancePrograms(**{f.name: values[f.metadata[SETTING]] for f in dataclasses.fields(AppliancePrograms)
                                if f.metadata[SETTING] in values})


def kv_tiers_of(kv: kv_tiers.KvPart) -> KvTiers:
    prewarm_gib, prewarm_note = kv.prewarm or (0.0, "")
    return KvTiers(cpu_tier_gib=kv.cpu_tier_gib if kv.mode else None,
                   cpu_tier_source=kv.cpu_tier_source if kv.mode else "",
                   disk_tier_source=kv.disk_tier_source if kv.disk else "",
                   prewarm_gib=prewarm_gib, prewarm_note=prewarm_note)


def secret_values(raw: RawInputs, environ: Mapping[str, str], swallowed: set[str],
                  commands: tuple[list[str], ...]) -> set[str]:
    """Every secret value met (in the inputs and on the planned command lines), so that messages quoting an
    input can never show one (Plan.mask)."""
    found: set[str] = set()
    for values in (raw.values, raw.passthrough, environ):
        found.update(v for n, v in values.items() if is_secret_name(n) and v)
    for name in ("VLLM_EXTRA_ARGS", "LMCACHE_SERVER_EXTRA_ARGS"):
        found.update(raw_secret_values(raw.values.get(name, "")))
    found.update(secret_argv_values(raw.extra_args))
    for argv in commands:
        found.update(secret_argv_values(argv))
    found.update(swallowed)
    for values in (raw.values, raw.passthrough, environ):
        found.update(p for v in values.values() for p in url_passwords(v))
    found.update(p for argv in commands for a in argv for p in url_passwords(a))
    return found


def _arg_max() -> int:
    try:
        return int(os.sysconf("SC_ARG_MAX"))
    except (ValueError, OSError, AttributeError):
        return 2 << 20  # Linux's usual value (a quarter of an 8 MiB stack)


def _as_typed(shown: str, flag: str) -> str:
    return flag if shown == flag else f"{shown} (read by vLLM as {flag})"


def build_plan(raw: RawInputs, schema: Schema, environ: Mapping[str, str], host: resources.Host | None = None) -> Plan:
    return Builder(raw, schema, environ, host or resources.Host()).build()
