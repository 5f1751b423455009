"""Feed the plan's output to the real vLLM and LMCache, the way they read it when the appliance starts them.

Each helper lets the real code raise: a flag the parser rejects ends in SystemExit(2), a bad value in a
config class in ValueError/TypeError. The tests never catch these, so any of them fails CI.
vLLM/LMCache are imported inside the functions: this module must import without them (the conftest then
skips the folder).
"""
from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path


@dataclass
class ParsedServe:
    args: argparse.Namespace  # what `vllm serve` parsed (frontend and engine flags)
    engine_args: object  # vllm.engine.arg_utils.AsyncEngineArgs built from it


def parse_serve_argv(parser, argv: list[str]) -> ParsedServe:
    """`vllm serve ...` as vLLM's CLI reads it: parse, the serve checks, the API server checks, engine args.

    `argv` is the full command (plan.vllm.argv): the executable, then `serve`, then what the parser reads.
    """
    assert argv[:2] == ["vllm", "serve"], f"not a `vllm serve` command: {argv[:2]}"
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.cli.serve import ServeSubcommand

    try:  # vLLM >= 0.27 moved the API server launcher
        from vllm.entrypoints.launchers.launcher import validate_api_server_args
    except ImportError:
        from vllm.entrypoints.openai.api_server import validate_api_server_args

    # The top-level `vllm` parser with its `serve` subcommand, as vllm/entrypoints/cli/main.py parses.
    args = parser.parse_args(["serve", *argv[2:]])
    ServeSubcommand().validate(args)  # what vllm/entrypoints/cli/main.py runs before dispatch
    if args.model_tag is not None:  # what ServeSubcommand.cmd does first
        args.model = args.model_tag
    validate_api_server_args(args)  # tool-call and reasoning parsers must be registered ones
    engine_args = AsyncEngineArgs.from_cli_args(args)
    return ParsedServe(args=args, engine_args=engine_args)


@dataclass
class ParsedLMCacheServer:
    args: argparse.Namespace
    storage: object  # lmcache.v1.distributed.config.StorageManagerConfig
    mp: object  # lmcache.v1.multiprocess.config.MPServerConfig
    http: object  # lmcache.v1.multiprocess.config.HTTPFrontendConfig


def parse_lmcache_server_argv(parser, argv: list[str]) -> ParsedLMCacheServer:
    """`lmcache server ...` as ServerCommand.execute reads it (every config it builds before starting)."""
    assert argv[:2] == ["lmcache", "server"], f"not an `lmcache server` command: {argv[:2]}"
    from lmcache.v1.distributed.config import parse_args_to_config
    from lmcache.v1.mp_observability.config import parse_args_to_observability_config
    from lmcache.v1.multiprocess.config import (
        parse_args_to_coordinator_config,
        parse_args_to_http_frontend_config,
        parse_args_to_mp_server_config,
    )

    args = parser.parse_args(argv[2:])
    parsed = ParsedLMCacheServer(args=args, storage=parse_args_to_config(args),
                                 mp=parse_args_to_mp_server_config(args),
                                 http=parse_args_to_http_frontend_config(args))
    parse_args_to_observability_config(args)
    parse_args_to_coordinator_config(args)
    return parsed


def load_lmcache_config(config: dict, directory: Path):
    """An in-process LMCache config as LMCache loads LMCACHE_CONFIG_FILE: from_file, then validate."""
    from lmcache.v1.config import LMCacheEngineConfig

    path = Path(directory) / "lmcache.yaml"
    path.write_text(json.dumps(config, indent=1) + "\n")  # JSON is YAML: LMCache reads it with yaml.safe_load
    engine_config = LMCacheEngineConfig.from_file(str(path))
    engine_config.validate()
    return engine_config


def unknown_lmcache_keys(config: dict) -> list[str]:
    """Keys LMCache does not define (it only logs a warning for them and drops them)."""
    from lmcache.v1.config import _CONFIG_DEFINITIONS

    return sorted(set(config) - set(_CONFIG_DEFINITIONS))


def connector_extra_config_keys() -> set[str]:
    """Every key the MP connector reads: the literal `lmcache.mp.*` ones from the sources of both
    implementations that vLLM may load (LMCache's own, preferred when importable, and vLLM's builtin
    fallback; read as text: importing them needs CUDA), the ones LMCache's adapter resolves through
    its ExtraConfigDefault enum (importable on a CPU), and the `appliance.*` ones of the appliance's subclass."""
    from lmcache.integration.vllm import vllm_multi_process_adapter as adapter

    keys: set[str] = set()
    for module in ("lmcache.integration.vllm.lmcache_mp_connector",
                   "vllm.distributed.kv_transfer.kv_connector.v1.lmcache_mp_connector"):
        spec = find_spec(module)
        assert spec and spec.origin, f"{module} is not installed"
        source = Path(spec.origin).read_text()
        keys |= set(re.findall(r"get_from_extra_config\(\s*\"(lmcache\.mp\.[a-z_]+)\"", source))
    assert keys, "found no lmcache.mp.* keys read by the MP connector: the pattern above is out of date"
    keys |= {adapter._EXTRA_CONFIG_KEY_PREFIX + member.name for member in adapter.ExtraConfigDefault}
    # The appliance's subclass (vLLM loads it from the plan's kv_connector_module_path) reads its own keys,
    # named by constants of config/kv_tiers.py.
    from entrypoint.config import kv_tiers

    source = Path(find_spec("entrypoint.lmcache_ext.connector").origin).read_text()
    names = re.findall(r"get_from_extra_config\(\s*([A-Z_]+)", source)
    assert names, "found no keys read by the appliance's connector: the pattern above is out of date"
    return keys | {getattr(kv_tiers, name) for name in names}


def registered_kv_connectors() -> set[str]:
    """Connector names vLLM's factory knows (registration only; loading a connector class needs CUDA)."""
    from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory

    return set(KVConnectorFactory._registry)
