"""Generate the schema files the entrypoint validates against, from the *installed* vLLM and LMCache.

    python -m entrypoint.generators.schema [--out DIR]

Writes `vllm-<version>.json` (every `vllm serve` flag with its type and choices, every environment
variable vLLM itself reads, the registered tool-call parsers) and `lmcache-<version>.json` (every
LMCache config key, the `lmcache server` flags, the L2 adapter types). The image build runs this and
fails if it cannot; a copy for the pinned versions is committed so that `config`, `check` and the unit
tests work without vLLM installed. This module is the only one that imports vLLM or LMCache.
"""
from __future__ import annotations

import argparse
import ast
import importlib.metadata
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "config" / "schema"


def _force_cpu_platform() -> None:
    # Without a GPU vLLM cannot infer its platform and the serve parser fails to build;
    # forcing the CPU platform is what vLLM's own bench command does. Harmless on a GPU host.
    from vllm import platforms

    if platforms.current_platform.is_unspecified():
        from vllm.platforms.cpu import CpuPlatform

        platforms.current_platform = CpuPlatform()


def vllm_serve_parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The real `vllm serve` argument parser (shared with the contract tests)."""
    _force_cpu_platform()
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(description="vLLM CLI")
    sub = parser.add_subparsers(required=False, dest="subparser")
    cmd = ServeSubcommand()
    serve = cmd.subparser_init(sub)
    serve.set_defaults(dispatch_function=cmd.cmd)
    return parser, serve


def _inner_type(t: Any) -> tuple[Any, bool]:
    # vLLM wraps many types as optional_type(inner): look through the closure.
    if t is not None and getattr(t, "__name__", "") == "_optional_type" and t.__closure__:
        for cell in t.__closure__:
            if callable(cell.cell_contents):
                return cell.cell_contents, True
    return t, False


def _kind(action: argparse.Action) -> str:
    name = type(action).__name__
    if name == "BooleanOptionalAction":
        return "bool"
    if name in ("_StoreTrueAction", "_StoreFalseAction"):
        return "flag"
    t, _ = _inner_type(action.type)
    tname = getattr(t, "__name__", "")
    if action.choices and not callable(action.choices):
        return "choice"
    return {
        "int": "int",
        "float": "float",
        "str": "str",
        "human_readable_int": "int_human",
        "human_readable_int_or_auto": "int_human_or_auto",
        "loads": "json",
        "parse_dataclass": "json",
        "union_dict_and_str": "json_or_str",
    }.get(tname, "str")


def _jsonable(value: object) -> object:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return repr(value)


def vllm_schema() -> dict:
    _, serve = vllm_serve_parser()
    flags = {}
    for action in serve._actions:
        if not action.option_strings or action.dest == "help":
            continue
        long = [o for o in action.option_strings if o.startswith("--") and not o.startswith("--no-")]
        if not long:
            continue
        flag = long[0]
        flags[flag] = {
            "dest": action.dest,
            "kind": _kind(action),
            "choices": sorted(map(str, action.choices)) if action.choices and not callable(action.choices) else None,
            "nargs": action.nargs if isinstance(action.nargs, (str, type(None))) else str(action.nargs),
            "append": type(action).__name__ == "_AppendAction",
            "default": _jsonable(action.default),
            "help": (action.help or "").strip().split("\n")[0][:300],
        }
    import vllm.envs
    from vllm.tool_parsers.abstract_tool_parser import ToolParserManager

    return {
        "vllm_version": importlib.metadata.version("vllm"),
        "serve_flags": dict(sorted(flags.items())),
        "env_vars": sorted(vllm.envs.environment_variables),
        "tool_call_parsers": ToolParserManager.list_registered(),
    }


def lmcache_server_parser() -> argparse.ArgumentParser:
    """The real `lmcache server` argument parser (shared with the contract tests)."""
    from lmcache.cli.commands.server import ServerCommand

    parser = argparse.ArgumentParser(prog="lmcache server")
    ServerCommand().add_arguments(parser)
    if len(parser._actions) < 10:  # LMCache silently registers nothing if its server deps fail to import
        raise RuntimeError("lmcache server arguments could not be loaded (server dependencies missing)")
    return parser


def lmcache_server_flags(parser: argparse.ArgumentParser) -> dict[str, dict]:
    """Every `lmcache server` flag with what the plan needs to know of it (defaults and required-ness
    change between releases: 0.5.6 made --l1-size-gb optional and moved --http-host to 127.0.0.1)."""
    flags = {}
    for action in parser._actions:
        for option in action.option_strings:
            if option.startswith("--") and action.dest != "help":
                flags[option] = {
                    "dest": action.dest,
                    "required": bool(action.required),
                    "choices": [str(c) for c in action.choices] if action.choices else None,
                    "default": _jsonable(action.default),
                }
    return dict(sorted(flags.items()))


def connector_extra_config_keys(package_dir: Path) -> dict[str, object]:
    """The `lmcache.mp.<key>` keys LMCache's vLLM MP connector reads, with their defaults where the
    installed LMCache declares them (its ExtraConfigDefault enum; the rest are literal
    `get_from_extra_config("lmcache.mp.<key>", default)` calls). Read from the sources, since importing the
    connector needs CUDA."""
    keys: dict[str, object] = {}
    integration = package_dir / "integration" / "vllm"
    for path in sorted(integration.rglob("*.py")):
        if "tests" in path.relative_to(integration).parts:
            continue
        source = path.read_text(errors="ignore")
        for key, default in re.findall(r"[\"']lmcache\.mp\.([a-z_]+)[\"']\s*,\s*([^)\n]*)", source):
            keys.setdefault(key, _literal(default))
        for key in re.findall(r"[\"']lmcache\.mp\.([a-z_]+)[\"']", source):
            keys.setdefault(key, None)
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name == "ExtraConfigDefault":
                for stmt in node.body:
                    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 \
                            and isinstance(stmt.targets[0], ast.Name):
                        keys[stmt.targets[0].id] = _literal(ast.unparse(stmt.value))
    return dict(sorted(keys.items()))


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return None


def lmcache_schema() -> dict:
    from lmcache.v1 import config as lmc_config
    from lmcache.v1.distributed.l2_adapters import config as l2_config

    keys = {}
    for key, spec in lmc_config._CONFIG_DEFINITIONS.items():
        t = spec.get("type")
        tname = getattr(t, "__name__", None) or str(t).replace("typing.", "")
        keys[key] = {"type": tname, "default": _jsonable(spec.get("default"))}
    # Environment variables LMCache reads outside its config keys (logging, config file, ...):
    # scanned from the installed sources so that they are valid names without a hand-kept list.
    pkg = Path(lmc_config.__file__).parents[1]
    env_names = set()  # names ending in "_" are prefixes, not variables
    for path in pkg.rglob("*.py"):
        env_names.update(re.findall(r"[\"'](LMCACHE_[A-Z0-9_]+)[\"']", path.read_text(errors="ignore")))
    config_envs = {f"LMCACHE_{k.upper()}" for k in keys}
    # Adapter types register themselves when the server command's modules are imported: build its parser
    # first, then read the registry (read before, it is empty on LMCache 0.5.6).
    server_flags = lmcache_server_flags(lmcache_server_parser())
    adapters = sorted(l2_config._L2_ADAPTER_CONFIG_REGISTRY)
    return {
        "lmcache_version": importlib.metadata.version("lmcache"),
        "config_keys": keys,
        "other_env_vars": sorted(n for n in env_names - config_envs if not n.endswith("_")),
        "server_flags": server_flags,
        "connector_extra_config": connector_extra_config_keys(pkg),
        "l2_adapter_types": adapters,
    }


def stub_lmcache_compiled_ops() -> None:
    """On a machine without CUDA, LMCache's compiled ops cannot load (they link libc10_cuda), and its
    parser modules import them at module level although parsing never calls them. Stand them in."""
    try:
        import lmcache.c_ops  # noqa: F401
    except ImportError:
        from unittest import mock

        sys.modules["lmcache.c_ops"] = mock.MagicMock(name="lmcache.c_ops")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=SCHEMA_DIR)
    p.add_argument("--cpu-only", action="store_true",
                   help="stand in LMCache's compiled ops (CPU machines); the image build never passes this")
    args = p.parse_args(argv)
    if args.cpu_only:
        stub_lmcache_compiled_ops()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, build in (("vllm", vllm_schema), ("lmcache", lmcache_schema)):
        schema = build()
        version = schema[f"{name}_version"]
        path = args.out / f"{name}-{version}.json"
        path.write_text(json.dumps(schema, indent=1, sort_keys=False) + "\n")
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
