"""Settings -> Plan: the steps that turn the collected values into a validated launch plan.

Building a Plan is pure: it reads no volume, writes nothing and starts nothing (it may read the
`*_FILE` secrets and the registry file the operator names). Every problem is collected, not raised,
so that one run reports all of them. The steps run in the order of `Builder.build`; the KV offloading
step lives in kv_tiers.py.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from typing import Mapping

from . import kv_identity, kv_tiers, models, resources, roles
from .files import SECRET_FILE_LIMIT, FileProblem, read_bounded
from .flags import AMBIGUOUS, flag_args, parse_flag_value, resolve_flag, split_args
from .plan import SETTING, AppliancePrograms, KvIdentityInputs, KvTiers, Plan
from .schema import Schema
from .secrets import (REDACTED, SECRET_FLAGS, is_secret_name, raw_secret_values, secret_argv_values,
                      url_passwords)
from .settings import (BY_NAME, FILE_SECRETS, OWNED_FLAGS, REFUSED_FLAGS, SETTINGS, VLLM_SECRETS, DiskChoice,
                       MPServer, StoreURL, ValueProblem, load_json, owned_flag_problem, parse_bool, parse_value)
from .sources import DEFAULT, ENV_FILE, ENVIRONMENT, REGISTRY, RawInputs

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
TENANT_MIDDLEWARE = "entrypoint.vllm_ext.tenant_salt.TenantSaltMiddleware"
MIN_COPIED_SECRET = 6  # a shorter secret inside another value is as likely a coincidence ("sk" in "disk")


def _suggest(name: str, candidates) -> str:
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.75)
    return f"; did you mean {match[0]}?" if match else ""


def _typed_lmcache_value(type_name: str, raw: str):
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
    """Holds the state of one plan build; each method handles one concern and records problems."""

    def __init__(self, raw: RawInputs, schema: Schema, environ: Mapping[str, str], host: resources.Host):
        self.raw, self.schema, self.environ, self.host = raw, schema, environ, host
        self.plan = Plan(errors=list(raw.errors))
        self.flag_setters: dict[str, str] = {}  # vLLM flag -> the variable that put it on the command line
        self.values: dict[str, object] = {}  # typed values of explicit settings
        self.user_given: set[str] = set()  # names set by the operator (not registry, not default)
        self.generic_flags: dict[str, tuple[str, object]] = {}  # name -> (flag, typed value)
        self.vllm_passthrough: dict[str, str] = {}
        self.lmcache_keys: dict[str, object] = {}  # in-process config keys from LMCACHE_<KEY>
        self.lmcache_env: dict[str, str] = {}
        self.swallowed: set[str] = set()  # secrets inside another variable's multi-line value (swallowed_secrets)
        self.cpu: float | None = None  # CPU tier size (GiB), set by kv_tiers.kv_offloading
        self.cpu_source = self.disk_source = ""  # where the tier sizes come from (a variable, or auto's reading)
        self.prewarm: tuple[float, str] | None = None  # (GiB pre-warmed, why/how), set by kv_tiers.prewarm_module
        self.kv_identity: kv_identity.KvIdentity | None = None  # set by identity(), read by the KV tiers
        self.vllm_flags: dict[str, str] = {}  # every flag vLLM will be given -> its last value (identity())

    # -- helpers ---------------------------------------------------------------------------------------
    def error(self, msg: str) -> None:
        self.plan.errors.append(msg)

    def label(self, name: str) -> str:
        """How the operator wrote it: `--max-model-len` on the command line, else the variable name."""
        return self.raw.cli_flags.get(name, name)

    def bad_value(self, name: str, raw: str, problem: str) -> None:
        # A URL's user:password@ is refused (LMCACHE_SHARED_URL, APPLIANCE_ROUTER_*) and never echoed with it.
        shown = REDACTED if is_secret_name(name) else re.sub(r"(?<=://)\S*@", "***@", _shorten(raw))
        example = BY_NAME[name].example if name in BY_NAME else None
        fix = f", e.g. {self.label(name)}={example}" if example and "e.g." not in problem else ""
        self.error(f"{self.label(name)}={shown!r}: {problem}{fix}")

    def split(self, name: str, text: str) -> list[str]:
        """A shell-split setting; an unbalanced quote is an error (the value is not quoted: it may hold a key)."""
        try:
            return split_args(text)
        except ValueProblem as e:
            self.error(f"{self.label(name)}: {e}")
            return []

    # -- steps -----------------------------------------------------------------------------------------
    def secrets_from_files(self) -> None:
        for var, file_var in FILE_SECRETS.items():
            direct, path = self.raw.values.get(var), self.raw.values.get(file_var)
            if direct and not direct.strip():
                self.error(f"{var} is only white space: set the secret, or leave {var} empty (unset)")
            if direct and path:
                self.error(f"{var} and {file_var} are both set: set only one of them")
            elif path:
                try:
                    secret = read_bounded(path, SECRET_FILE_LIMIT).decode("utf-8").strip()
                except FileProblem as e:
                    self.error(f"{file_var}={path!r}: {e}")
                except UnicodeDecodeError:
                    self.error(f"{file_var}={path!r}: the file is not UTF-8 text; write the secret as plain text")
                else:
                    if not secret:  # an empty key would start vLLM with no authentication at all
                        self.error(f"{file_var}={path!r}: the file is empty (or only white space); put the "
                                   f"secret in it, or unset {file_var}")
                    elif _unprintable(secret):
                        self.error(f"{file_var}={path!r}: the file holds {_unprintable(secret)}; a secret is one "
                                   "line of printable text (not shown)")
                    else:
                        self.raw.values[var] = secret
                        self.raw.sources[var] = self.raw.sources[file_var]
            elif direct and _unprintable(direct.strip()):
                self.error(f"{var} holds {_unprintable(direct.strip())}; a secret is one line of printable text "
                           "(not shown)")
            self.raw.values.pop(file_var, None)

    def secret_copies(self) -> None:
        """A secret copied into another value (`VLLM_SERVED_MODEL_NAME=${VLLM_API_KEY}` in an .env, which compose
        and python-dotenv expand) would travel wherever that value goes: a command line, a metrics label, a log.
        Refused, naming both variables and neither value."""
        secrets = {n: v.strip() for values in (self.raw.values, self.raw.passthrough, self.environ)
                   for n, v in values.items() if is_secret_name(n) and len(v.strip()) >= MIN_COPIED_SECRET}
        for values in (self.raw.values, self.raw.passthrough):
            for name, value in sorted(values.items()):
                if is_secret_name(name) or name in FILE_SECRETS.values():
                    continue
                allowed = set(raw_secret_values(value)) if name.endswith("EXTRA_ARGS") else set()
                for secret_name, secret in sorted(secrets.items()):
                    if secret in value and secret not in allowed:
                        self.error(f"{name} contains the value of {secret_name} (a ${{{secret_name}}} in the .env?): "
                                   "a secret must not travel in another variable, where it would be printed; "
                                   f"remove it from {name}")
                        break

    def classify(self) -> None:
        """Every VLLM_/LMCACHE_/APPLIANCE_ name is an appliance setting, a vLLM flag, a variable vLLM or
        LMCache reads itself, or a mistake."""
        flags = self.schema.flag_by_env_name
        for name, (plain, where) in sorted(self.raw.near_misses.items()):
            candidates = self.known_names()
            right = plain if plain in candidates else (difflib.get_close_matches(plain, candidates, n=1) or [None])[0]
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
        model = self.raw.values.get("VLLM_MODEL", "").strip() or BY_NAME["VLLM_MODEL"].default
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

    def vllm_command(self) -> None:
        v, p = self.values, self.plan
        p.model = str(v["VLLM_MODEL"])
        p.api_host, p.api_port = str(v["VLLM_HOST"]), int(v["VLLM_PORT"])
        names = str(v.get("VLLM_SERVED_MODEL_NAME", "")).split()
        p.served_model_name = names[0] if names else p.model  # vLLM answers to the first name
        argv = [*self.split("APPLIANCE_VLLM_COMMAND", str(v["APPLIANCE_VLLM_COMMAND"])), "serve", p.model]
        flags = self.schema.serve_flags
        for s in SETTINGS:
            if s.flag and s.name in v:
                if s.flag not in flags:
                    self.error(f"{s.name}: the installed vLLM {self.schema.vllm_version} has no {s.flag} flag")
                    continue
                value = v[s.name]
                if s.kind == "human_int_or_auto" and value == -1:
                    value = "auto"
                elif s.kind == "names":
                    value = str(value).split()
                argv += self.flag(s.name, s.flag, value)
        for name in sorted(self.generic_flags):
            flag, value = self.generic_flags[name]
            argv += self.flag(name, flag, value)
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

    def identity(self) -> None:
        """The KV identity (kv_identity.py) of everything vLLM will be given: the planned flags, VLLM_EXTRA_ARGS and
        the arguments after `--` (their problems are reported by extra_args; here they are only read)."""
        p, v = self.plan, self.values
        try:
            extra = split_args(str(v.get("VLLM_EXTRA_ARGS", "")))
        except ValueProblem:
            extra = []
        argv = p.vllm_argv[p.vllm_argv.index("serve") + 2:] + extra + list(self.raw.extra_args)
        self.vllm_flags = kv_identity.flag_values(argv, self.schema.serve_flags)
        self.kv_identity = kv_identity.compute(
            p.model, self.vllm_flags, {**self.environ, **self.raw.passthrough},
            self.schema.vllm_version, self.schema.lmcache_version, int(v.get("LMCACHE_CHUNK_SIZE", 256)))
        p.kv_identity = self.kv_identity.digest
        p.kv_identity_inputs = KvIdentityInputs(parts=self.kv_identity.parts, files=self.kv_identity.files)

    def flag(self, name: str, flag: str, value) -> list[str]:
        self.flag_setters[flag] = name
        try:
            return flag_args(flag, self.schema.serve_flags[flag], value)
        except ValueProblem as e:
            self.bad_value(name, str(value), str(e))
            return []

    def extra_args(self) -> None:
        """VLLM_EXTRA_ARGS and the arguments after `--`: appended as they are, but a flag the appliance owns or
        has already set is refused, however argparse would spell it (`--port=1`, `--por 1`, `--served_model_name`)."""
        p, flags = self.plan, self.schema.serve_flags
        bools = [f for f, spec in flags.items() if spec["kind"] == "bool"]
        sources = [("VLLM_EXTRA_ARGS", self.split("VLLM_EXTRA_ARGS", str(self.values.get("VLLM_EXTRA_ARGS", "")))),
                   ("the arguments after `--`", list(self.raw.extra_args))]
        for label, extra in sources:
            for i, arg in enumerate(extra):
                flag = resolve_flag(arg, flags, bools)
                shown = arg.split("=", 1)[0]
                if flag in SECRET_FLAGS and shown != flag:
                    # `--api_key`, `--api-k`: written out, so that the health checks find the key vLLM reads.
                    extra[i] = flag + arg[len(shown):]
                if flag == AMBIGUOUS:
                    self.error(f"{label}: {shown} is an abbreviation of several vllm serve flags; write the flag "
                               "in full")
                elif owned_flag_problem(flag, OWNED_FLAGS, REFUSED_FLAGS):
                    self.error(f"{label}: {_as_typed(shown, flag)} "
                               f"{owned_flag_problem(flag, OWNED_FLAGS, REFUSED_FLAGS)}")
                elif flag in self.flag_setters:
                    setter = self.flag_setters[flag]
                    where = " (from the model registry)" if self.raw.sources.get(setter) == REGISTRY else ""
                    self.error(f"{label}: {_as_typed(shown, flag)} is already set by {setter}{where}; set it "
                               f"there only (vLLM would see both values)")
            p.vllm_argv += extra
        if any(resolve_flag(arg, flags, bools) == "--api-key" for arg in p.vllm_argv):
            if self.raw.values.get("VLLM_API_KEY"):  # vLLM would take only --api-key; the probes would send this
                self.error("VLLM_API_KEY and --api-key are both set: vLLM ignores VLLM_API_KEY when --api-key is "
                           "given; set only one of them (preferably VLLM_API_KEY or VLLM_API_KEY_FILE)")
            else:
                p.warnings.append("--api-key in VLLM_EXTRA_ARGS puts the key on vLLM's command line, which vLLM "
                                  "logs; prefer VLLM_API_KEY or VLLM_API_KEY_FILE")

    def api_exposure(self) -> None:
        p = self.plan
        if p.role == "kv-server":
            return  # no API here (kv_tiers.kv_server_role warns about the LMCache server's open ports instead)
        if not self.api_keyed() and p.api_host not in LOOPBACK_HOSTS:
            p.warnings.append(f"no API key is set and the API listens on {p.api_host}:{p.api_port}: anyone who "
                              "reaches that port can use the model. Set VLLM_API_KEY (or VLLM_API_KEY_FILE), or "
                              "VLLM_HOST=127.0.0.1 to listen on loopback only")

    def api_keyed(self) -> bool:
        return bool(self.raw.values.get("VLLM_API_KEY")) or any(
            resolve_flag(a, self.schema.serve_flags) == "--api-key" for a in self.plan.vllm_argv)

    def tenant_isolation(self) -> None:
        """APPLIANCE_TENANT_ISOLATION: vLLM's API server salts each request's cache by its API key
        (vllm_ext/tenant_salt.py), which partitions vLLM's prefix cache and every LMCache tier alike."""
        if not self.values.get("APPLIANCE_TENANT_ISOLATION") or self.plan.role == "kv-server":
            return
        if not self.api_keyed():
            self.error("APPLIANCE_TENANT_ISOLATION=true needs API keys (each key is a tenant): set VLLM_API_KEY, or "
                       "several keys with `--api-key k1 k2` in VLLM_EXTRA_ARGS")
            return
        self.plan.vllm_argv += ["--middleware", TENANT_MIDDLEWARE]

    def launch_limits(self) -> None:
        """What execve would refuse when the launcher starts a server: a command line and environment past the
        kernel's ARG_MAX together (each value alone is bounded in sources.value_problem)."""
        p = self.plan
        limit = _arg_max()
        base = {k: v for k, v in self.environ.items() if k not in p.vllm_env_removed}
        for program, argv, env in (("vLLM", p.vllm_argv, {**base, **p.vllm_env}),
                                   ("the LMCache server", p.lmcache_argv or [], {**base, **p.lmcache_env})):
            if not argv:
                continue
            size = (sum(len(a.encode("utf-8", "surrogateescape")) + 1 + 8 for a in argv)
                    + sum(len(f"{k}={v}".encode("utf-8", "surrogateescape")) + 1 + 8 for k, v in env.items()))
            if size > limit:
                self.error(f"the command line and environment of {program} add up to {size} bytes, more than the "
                           f"{limit} the kernel accepts for a new process (ARG_MAX); shorten the longest values "
                           "(VLLM_EXTRA_ARGS, JSON settings, variables passed through)")

    def environment(self) -> None:
        """vLLM's environment: its own variables pass through, ours are removed (VLLM_PORT above all)."""
        p = self.plan
        consumed = {n for n in self.raw.values if n not in self.vllm_passthrough and n not in self.lmcache_env
                    and self.raw.sources.get(n) in (ENVIRONMENT, ENV_FILE)}
        # vLLM's own secrets; the shared store's password goes to LMCache only (kv_tiers.shared_store_credentials).
        secrets_passed = {n for n in FILE_SECRETS if n in self.raw.values and n in VLLM_SECRETS}
        p.vllm_env_removed = sorted((consumed - secrets_passed) | {n for n in FILE_SECRETS.values()
                                                                   if n in self.environ})
        p.vllm_env.update(self.vllm_passthrough)
        p.vllm_env.update(self.lmcache_env)
        p.vllm_env.update(self.raw.passthrough)
        for name in secrets_passed:
            p.vllm_env[name] = self.raw.values[name]

    def collect_secrets(self) -> None:
        """Every secret value met, so that messages quoting an input can never show one (Plan.mask)."""
        found = self.plan.secret_values
        for values in (self.raw.values, self.raw.passthrough, self.environ):
            found.update(v for n, v in values.items() if is_secret_name(n) and v)
        for name in ("VLLM_EXTRA_ARGS", "LMCACHE_SERVER_EXTRA_ARGS"):
            found.update(raw_secret_values(self.raw.values.get(name, "")))
        found.update(secret_argv_values(self.raw.extra_args))
        found.update(secret_argv_values(self.plan.vllm_argv))
        found.update(secret_argv_values(self.plan.lmcache_argv or []))
        found.update(self.swallowed)
        for values in (self.raw.values, self.raw.passthrough, self.environ):
            found.update(p for v in values.values() for p in url_passwords(v))
        found.update(p for a in [*self.plan.vllm_argv, *(self.plan.lmcache_argv or [])] for p in url_passwords(a))

    def record(self) -> None:
        p = self.plan
        for name, value in self.values.items():
            p.values[name] = (dataclasses.asdict(value) if isinstance(value, DiskChoice)
                              else value.url if isinstance(value, StoreURL)
                              else f"{value.host}:{value.port or ''}".rstrip(":") if isinstance(value, MPServer)
                              else value)
        for name, (_, value) in self.generic_flags.items():
            p.values[name] = value
        for name in sorted(set(p.values) | set(self.vllm_passthrough) | set(self.lmcache_env)):
            p.sources[name] = self.raw.sources.get(name, DEFAULT)
        p.appliance = AppliancePrograms(**{f.name: self.values[f.metadata[SETTING]]
                                           for f in dataclasses.fields(AppliancePrograms)
                                           if f.metadata[SETTING] in self.values})
        prewarm_gib, prewarm_note = self.prewarm or (0.0, "")
        p.tiers = KvTiers(cpu_tier_gib=self.cpu if p.lmcache_mode else None,
                          cpu_tier_source=self.cpu_source if p.lmcache_mode else "",
                          disk_tier_source=self.disk_source if p.disk else "",
                          prewarm_gib=prewarm_gib, prewarm_note=prewarm_note)

    def swallowed_secrets(self) -> None:
        """An unbalanced quote in an env file makes the lines after it part of one value (`VLLM_HOST='` then
        `HF_TOKEN=...`): the secrets on those lines stay secrets wherever that value is shown."""
        for value in self.raw.values.values():
            for line in value.splitlines()[1:]:
                name, sep, text = line.partition("=")
                secret = text.strip().strip("'\"").strip()
                if sep and secret and is_secret_name(name.strip()):
                    self.swallowed.add(secret)
                elif sep and name.strip().endswith("EXTRA_ARGS"):  # `--api-key k` inside the swallowed text
                    self.swallowed.update(raw_secret_values(text))

    def build(self) -> Plan:
        try:
            self.swallowed_secrets()
            self.secrets_from_files()
            self.secret_copies()
            self.apply_registry()
            self.classify()
            self.resolve_settings()
            if any(n not in self.values for n in ("VLLM_MODEL", "VLLM_PORT", "APPLIANCE_VLLM_COMMAND")):
                return self.plan  # a required value did not parse; its error is recorded
            self.vllm_command()
            self.identity()
            kv_tiers.kv_offloading(self)
            self.extra_args()
            self.api_exposure()
            self.tenant_isolation()
            self.environment()
            roles.kv_server_role(self)
            self.launch_limits()
            self.record()
        finally:
            self.collect_secrets()
        return self.plan


def _arg_max() -> int:
    try:
        return int(os.sysconf("SC_ARG_MAX"))
    except (ValueError, OSError, AttributeError):
        return 2 << 20  # Linux's usual value (a quarter of an 8 MiB stack)


def _unprintable(secret: str) -> str | None:
    """What makes a secret unusable where it goes: an HTTP header (the API key clients and the health probes
    send) and a log line (where it is masked line by line) hold no line break or control character."""
    lines = secret.count("\n") + 1
    if lines > 1:
        return f"{lines} lines"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in secret):
        return "a control character"
    return None


def _shorten(text: str, limit: int = 200) -> str:
    """A value quoted in a message: a huge one is cut, so that one bad value cannot flood the output."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _as_typed(shown: str, flag: str) -> str:
    return flag if shown == flag else f"{shown} (read by vLLM as {flag})"


def build_plan(raw: RawInputs, schema: Schema, environ: Mapping[str, str], host: resources.Host | None = None) -> Plan:
    return Builder(raw, schema, environ, host or resources.Host()).build()
