"""`python -m entrypoint <command>`: the container's entrypoint and the operator's tool.

    config [--env-file F] [--format json|text] [OVERRIDES]   print the launch plan (exit 0) or problems (exit 2)
    check  [--env-file F] [OVERRIDES]                       validate only, one line per problem
    serve  [--env-file F] [OVERRIDES]                       validate, preflight, start supervisord
    status [--format json|text]                             what runs, restarts and why, each KV tier's fill and hits
    healthcheck                                             exit 0 only when the appliance is ready
    --version                                               the appliance's version and the vLLM/LMCache it ships
    router [--env-file F] [--check]                         the coordinator router in front of replicas
                                                            (APPLIANCE_ROUTER_*; docs/SCALE-OUT.md)

OVERRIDES are `vllm serve`-style flags that override the environment: `--max-model-len 4096`,
`--kv-offloading-backend lmcache`, `--lmcache-chunk-size 512`, a model id first, raw arguments after `--`.
Any other command (`bash`, `nvidia-smi`) is executed as given, as in the official database images;
a first argument that looks like a flag means `serve` with those flags.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from typing import TextIO

from .config.load import make_plan
from .config.plan import Plan

COMMANDS = ("config", "check", "serve", "status", "healthcheck", "router")
EXIT_INVALID = 2


def format_text(plan: Plan) -> str:
    d = plan.to_dict()
    lines = [f"Model: {plan.model} (served as {plan.served_model_name})", "", "vLLM command:",
             _shell(d["vllm"]["argv"], "  ") if d["vllm"]["argv"] else
             f"  none: APPLIANCE_ROLE={plan.role} runs only the LMCache server"]
    if d["vllm"]["env"]:
        lines += ["", "vLLM environment (added or passed through):"]
        lines += [f"  {k}={v}" for k, v in sorted(d["vllm"]["env"].items())]
    if d["vllm"]["env_removed"]:
        lines += ["", "Removed from vLLM's environment (translated above): " + ", ".join(d["vllm"]["env_removed"])]
    if plan.appliance.front_proxy and plan.vllm.argv:
        host, port = plan.vllm_address
        lines += ["", f"Front proxy on {plan.api_host}:{plan.api_port}; vLLM behind it on {host}:{port} "
                      "(APPLIANCE_FRONT_PROXY)"]
    mode = plan.lmcache.mode
    lines += ["", f"KV offloading: {mode or 'off'}"]
    if mode == "server":
        lines += ["  LMCache server command:", _shell(d["lmcache"]["argv"], "    ")]
    elif mode == "external":
        server = plan.lmcache.server
        assert server is not None  # external mode names its server
        lines += [f"  LMCache server (LMCACHE_SERVER): {server.url}, health "
                  f"{server.health_url}; its tiers are sized there"]
    elif mode == "in-process":
        config = plan.lmcache.config
        assert config is not None  # in-process mode has its config
        lines += [f"  LMCache config ({plan.lmcache.config_file}):"]
        lines += [f"    {k}: {json.dumps(v)}" for k, v in config.items()]
    if mode and plan.tiers.cpu_tier_gib:
        lines += [f"  CPU tier: {plan.tiers.cpu_tier_gib:g} GiB ({plan.tiers.cpu_tier_source})"]
    if plan.lmcache.disk:
        lines += [f"  Disk tier: {plan.lmcache.disk.path} (at most {plan.lmcache.disk.max_size_gib:g} GiB, "
                  f"{plan.tiers.disk_tier_source})"]
        if plan.lmcache.disk.others:
            lines += [f"  Other namespaces in {plan.lmcache.disk.base}: {plan.lmcache.disk.others}"]
    if plan.tiers.prewarm_note:
        gib = plan.tiers.prewarm_gib or 0
        lines += [f"  Pre-warm at start: {f'up to {gib:g} GiB of the hottest chunks, disk -> CPU tier' if gib else ''}"
                  f"{' (' if gib else ''}{plan.tiers.prewarm_note}{')' if gib else ''}"]
    if plan.kv_identity:
        lines += ["", f"KV identity: {plan.kv_identity} (stored KV is reused only by a start with the same identity; "
                  "docs/UPGRADING.md)"]
        parts = d["kv_identity_inputs"].get("parts", {})
        width = max((len(k) for k in parts), default=0)
        lines += [f"  {k.ljust(width)}  {v}" for k, v in parts.items()]
    lines += ["", "Values (source):"]
    width = max((len(k) for k in d["values"]), default=0)
    for name in sorted(d["values"]):
        lines.append(f"  {name.ljust(width)} = {_show(d['values'][name])}  ({d['sources'].get(name, 'default')})")
    for title, items in (("Warnings", d["warnings"]), ("Errors", d["errors"])):
        if items:
            lines += ["", f"{title}:"] + [f"  - {m}" for m in items]
    return plan.mask("\n".join(lines))


def _shell(argv: list[str], indent: str) -> str:
    """A copy-pasteable command, one `--flag value` per line."""
    lines: list[list[str]] = [[]]
    for arg in argv:
        if arg.startswith("--") and lines[-1]:
            lines.append([])
        lines[-1].append(shlex.quote(arg))
    return indent + (" \\\n" + indent + "  ").join(" ".join(line) for line in lines)


def _show(value: object) -> str:
    if isinstance(value, dict):  # LMCACHE_LOCAL_DISK
        return (value.get("path") or "true (image volume)") if value.get("enabled") else "false"
    return json.dumps(value) if not isinstance(value, str) else value


def report_problems(plan: Plan, stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    for msg in plan.errors:
        print(f"error: {plan.mask(msg)}", file=stream)
    if plan.errors:
        print(f"{len(plan.errors)} problem(s); nothing was started. See docs/ENVIRONMENT.md.", file=stream)


def _parser(command: str) -> argparse.ArgumentParser:
    # No abbreviations: `--en` or `--for` among the overrides must not be taken for --env-file / --format.
    p = argparse.ArgumentParser(prog=f"python -m entrypoint {command}", add_help=True, allow_abbrev=False)
    p.add_argument("--env-file", help="a .env file (the real environment wins over it)")
    if command == "config":
        p.add_argument("--format", choices=("json", "text"), default="text")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # `config | head -1`: the reader is gone, which is no error of ours. Point stdout at /dev/null so
        # that the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["--version"], ["-V"]):  # before the rule below, which would take it for a serve flag
        from .version import describe
        print(describe())
        return 0
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["serve", *argv]
    command, rest = argv[0], argv[1:]
    if command in ("-h", "--help"):
        print(__doc__)
        return 0
    if command not in COMMANDS:
        os.execvp(command, argv)  # `docker run image bash`: run it as given
    if command == "status":
        from .inspectors.status import main as status_main
        return status_main(rest)
    if command == "healthcheck":
        from .inspectors.healthcheck import main as healthcheck_main
        return healthcheck_main(rest)
    if command == "router":
        from .cluster.router import main as router_main
        return router_main(rest)
    opts, overrides = _parser(command).parse_known_args(rest)
    plan = make_plan(opts.env_file, overrides)
    for w in plan.warnings:
        print(f"warning: {plan.mask(w)}", file=sys.stderr)
    if command == "config":
        if opts.format == "json":
            print(json.dumps(plan.to_dict(), indent=2))
        else:
            print(format_text(plan))
        report_problems(plan)
        return EXIT_INVALID if plan.errors else 0
    if plan.errors:
        report_problems(plan)
        return EXIT_INVALID
    if command == "check":
        print(f"ok: {plan.model} on port {plan.api_port}, KV offloading {plan.lmcache.mode or 'off'}")
        return 0
    from .supervise.serve import serve
    return serve(plan, env_file_values=None)
