"""The harness itself: it can fail (negative controls), it runs the pinned versions, and the committed schema
is what the installed vLLM/LMCache generate."""
from __future__ import annotations

import importlib.metadata
import json
import subprocess
from pathlib import Path

import pytest

from entrypoint.config import schema as schema_mod

from .parsers import load_lmcache_config, parse_lmcache_server_argv, parse_serve_argv, unknown_lmcache_keys

REPO = Path(__file__).resolve().parents[2]
GOOD_VLLM = ["vllm", "serve", "org/model", "--max-model-len", "4096"]
GOOD_LMCACHE = ["lmcache", "server", "--l1-size-gb", "5", "--eviction-policy", "LRU"]


@pytest.mark.parametrize("bad", [
    ["--made-up-flag", "1"],  # a flag vLLM does not have
    ["--dtype", "float64"],  # not a choice
    ["--max-num-seqs", "many"],  # not an int
    ["--enable-prefix-caching", "true"],  # a boolean flag takes no value
    ["--compilation-config", "{not json"],  # not JSON
], ids=["unknown-flag", "bad-choice", "bad-int", "bool-with-value", "bad-json"])
def test_vllm_rejects_a_bad_argv_with_exit_code_2(bad, serve_parser, capsys):
    parse_serve_argv(serve_parser, GOOD_VLLM)  # the same helper passes the good argv ...
    with pytest.raises(SystemExit) as exc:  # ... and the real parser stops on a bad one, as in CI
        parse_serve_argv(serve_parser, GOOD_VLLM + bad)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_vllm_serve_checks_run_after_parsing(serve_parser):
    with pytest.raises(TypeError, match="--enable-auto-tool-choice requires --tool-call-parser"):
        parse_serve_argv(serve_parser, GOOD_VLLM + ["--enable-auto-tool-choice"])
    with pytest.raises(KeyError, match="invalid tool call parser"):
        parse_serve_argv(serve_parser, GOOD_VLLM + ["--enable-auto-tool-choice", "--tool-call-parser", "nope"])


@pytest.mark.parametrize("bad", [
    ["--eviction-policy", "FIFO"],  # not a choice
    ["--made-up-flag"],
    ["--chunk-size", "big"],
], ids=["bad-choice", "unknown-flag", "bad-int"])
def test_lmcache_server_rejects_a_bad_argv_with_exit_code_2(bad, lmcache_parser, capsys):
    parse_lmcache_server_argv(lmcache_parser, GOOD_LMCACHE)
    with pytest.raises(SystemExit) as exc:
        parse_lmcache_server_argv(lmcache_parser, GOOD_LMCACHE + bad)
    assert exc.value.code == 2


def test_lmcache_server_rejects_a_bad_l2_adapter(lmcache_parser):
    with pytest.raises(ValueError, match="base_path"):
        parse_lmcache_server_argv(lmcache_parser, GOOD_LMCACHE + ["--l2-adapter", '{"type":"fs_native"}'])
    with pytest.raises(ValueError, match="unknown adapter type"):
        parse_lmcache_server_argv(lmcache_parser, GOOD_LMCACHE + ["--l2-adapter", '{"type":"floppy"}'])


def test_in_process_checks_catch_what_lmcache_only_warns_about(stack, tmp_path):
    assert unknown_lmcache_keys({"chunk_size": 256, "max_local_cpu_sise": 5}) == ["max_local_cpu_sise"]
    loaded = load_lmcache_config({"max_local_cpu_size": "lots"}, tmp_path)
    assert loaded.max_local_cpu_size is None  # LMCache warns and drops it: the "dropped" check catches this


def test_the_pinned_versions_are_installed():
    pinned = schema_mod.pinned_versions()
    assert importlib.metadata.version("vllm") == pinned["VLLM_VERSION"]
    assert importlib.metadata.version("lmcache") == pinned["LMCACHE_VERSION"]


def test_committed_schema_is_what_the_installed_packages_generate(regenerated_schema):
    """An upgrade of vLLM/LMCache (or a change of the generator) without regenerating fails here.
    The generator runs in the background from the session's start (conftest.regenerated_schema)."""
    proc, out, log = regenerated_schema
    try:
        proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail("python -m entrypoint.generators.schema did not finish in 300 s")
    assert proc.returncode == 0, log.read_text()[-3000:]
    generated = sorted(p.name for p in out.glob("*.json"))
    pinned = schema_mod.pinned_versions()
    assert generated == sorted([f"lmcache-{pinned['LMCACHE_VERSION']}.json", f"vllm-{pinned['VLLM_VERSION']}.json"])
    for name in generated:
        committed_path = REPO / "entrypoint" / "config" / "schema" / name
        assert committed_path.exists(), f"entrypoint/schema/{name} is not committed"
        new, old = json.loads((out / name).read_text()), json.loads(committed_path.read_text())
        drift = [f"{key}: {_describe(old.get(key), new.get(key))}" for key in sorted(set(new) | set(old))
                 if new.get(key) != old.get(key)]
        assert not drift, (f"entrypoint/schema/{name} is stale; regenerate it with "
                           f"`python -m entrypoint.generators.schema --cpu-only` in the contract venv:\n  "
                           + "\n  ".join(drift))
        assert (out / name).read_text() == committed_path.read_text(), f"{name}: same content, other formatting"


def _describe(old, new) -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        added, removed = sorted(set(new) - set(old)), sorted(set(old) - set(new))
        changed = sorted(k for k in set(old) & set(new) if old[k] != new[k])
        return f"added {added[:10]}, removed {removed[:10]}, changed {changed[:10]}"
    if isinstance(old, list) and isinstance(new, list):
        return f"added {sorted(set(map(str, new)) - set(map(str, old)))[:10]}, " \
               f"removed {sorted(set(map(str, old)) - set(map(str, new)))[:10]}"
    return f"{old!r} -> {new!r}"


def test_schema_lists_the_connector_keys_the_installed_lmcache_reads(stack):
    """The plan only sets `lmcache.mp.*` keys the schema lists (kv_tiers.connector_key_settings): the list must
    be what the connector really reads, read here independently (parsers.connector_extra_config_keys)."""
    from .parsers import connector_extra_config_keys

    listed = {f"lmcache.mp.{k}" for k in schema_mod.load().lmcache_connector_keys}
    read = {k for k in connector_extra_config_keys() if k.startswith("lmcache.mp.")}  # LMCache's, not ours
    assert read <= listed, f"read by the connector but missing from the schema: {sorted(read - listed)}"


def test_schema_lists_the_installed_lmcache_server_flags(lmcache_parser):
    flags = schema_mod.load().lmcache_server_flags
    for action in lmcache_parser._actions:
        for option in action.option_strings:
            if option.startswith("--") and action.dest != "help":
                assert flags[option]["required"] == action.required
                assert flags[option]["choices"] == ([str(c) for c in action.choices] if action.choices else None)


def test_lmcaches_compiled_ops_resolve_against_the_installed_torch(stack, monkeypatch, tmp_path):
    """What the image build runs (entrypoint.check_lmcache_ops), here with a CPU torch: the modules that need
    CUDA are skipped, the others must load with every torch symbol resolved; a module that does not load fails."""
    import io

    from entrypoint import check_lmcache_ops as check_ops

    out = io.StringIO()
    assert check_ops.check(cpu_only=True, out=out) >= 1, out.getvalue()
    assert "resolves against torch" in out.getvalue()
    broken = tmp_path / "cuda_ops.cpython-312-x86_64-linux-gnu.so"
    broken.write_bytes(b"\x7fELF not really")
    monkeypatch.setattr(check_ops, "compiled_modules", lambda: [broken])
    with pytest.raises(check_ops.OpsMismatch, match="do not resolve against the installed torch"):
        check_ops.check(cpu_only=True, out=io.StringIO())
