"""Contract tests need the real vLLM and LMCache (scripts/ci/install-contract-venv.sh builds a CPU venv).

Without them the whole folder is skipped with a reason, so that a plain unit-test run still works.
With them installed, a broken install fails loudly (the session fixtures import them), it does not skip.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
MISSING = [name for name in ("vllm", "lmcache") if importlib.util.find_spec(name) is None]
SKIP_REASON = (f"contract tests need the pinned vLLM and LMCache ({', '.join(MISSING)} not importable); "
               "run them with the contract venv: bash scripts/ci/install-contract-venv.sh VENV && "
               "VENV/bin/python -m pytest tests/contract")

# A Llama-3.2-1B-shaped model (config.json, no weights) is enough for vLLM's engine config. The copy in
# data/ keeps CI self-contained; the shared GPU folder, where present, adds its tokenizer files.
MODEL_CONFIG = HERE / "data" / "llama-1b-shape" / "config.json"
SHARED_MODEL = HERE.parents[2] / "shared" / "gpu" / "model"


def pytest_collection_modifyitems(config, items):
    if not MISSING:
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def stack():
    """The real stack, with LMCache's compiled ops stood in (they need CUDA) and, in serve_parser, vLLM's
    CPU platform forced: the same steps `python -m entrypoint.generators.schema --cpu-only` takes.
    Hub offline mode is turned off for the session: with HF_HUB_OFFLINE=1 in the runner's environment,
    AsyncEngineArgs.__post_init__ resolves every hub id through the local HF cache and fails for ids that
    are not downloaded. Without it nothing here reaches the network: hub ids stay strings (no model is
    loaded) and the engine-config test uses a local directory."""
    import huggingface_hub.constants

    from entrypoint.generators.schema import stub_lmcache_compiled_ops

    stub_lmcache_compiled_ops()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        yield


@pytest.fixture(scope="session")
def serve_parser(stack):
    """The real top-level `vllm` parser with its `serve` subcommand (built once: importing takes ~8 s)."""
    from entrypoint.generators.schema import vllm_serve_parser

    parser, _serve = vllm_serve_parser()
    return parser


@pytest.fixture(scope="session")
def lmcache_parser(stack):
    """The real `lmcache server` parser."""
    from entrypoint.generators.schema import lmcache_server_parser

    return lmcache_server_parser()


@pytest.fixture(scope="session")
def local_model(tmp_path_factory) -> str:
    """A model directory vLLM can build its engine config from: config.json + tokenizer, no weights."""
    target = tmp_path_factory.mktemp("llama-1b-shape")
    shared_config = SHARED_MODEL / "config-llama-1b-shape.json"
    shutil.copy(shared_config if shared_config.exists() else MODEL_CONFIG, target / "config.json")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (SHARED_MODEL / name).exists():
            shutil.copy(SHARED_MODEL / name, target / name)
    return str(target)


# -- schema regeneration, in the background ---------------------------------------------------------------
DRIFT_TEST = "test_committed_schema_is_what_the_installed_packages_generate"
REPO = HERE.parents[1]


@pytest.fixture(scope="session")
def regenerated_schema(tmp_path_factory):
    """`python -m entrypoint.generators.schema --cpu-only` as the image build runs it: a fresh process, without the
    runner's VLLM_*/LMCACHE_*/APPLIANCE_* variables. Yields (process, output dir, log file)."""
    out = tmp_path_factory.mktemp("schema")
    log = out / "schema_gen.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "LMCACHE_", "APPLIANCE_"))}
    env["PYTHONPATH"] = str(REPO)
    with open(log, "w") as stream:
        proc = subprocess.Popen([sys.executable, "-m", "entrypoint.generators.schema", "--cpu-only", "--out", str(out)],
                                cwd=REPO, env=env, stdout=stream, stderr=subprocess.STDOUT)
    yield proc, out, log
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session", autouse=True)
def _start_schema_regeneration_early(request):
    """Regenerating takes ~10 s (a fresh process imports vLLM): start it with the first contract test, so that
    it runs while the others do, when the drift test is among the selected tests. Not in a pytest-xdist worker:
    every worker collects every test, so each would start its own; there the drift test starts it itself, while
    the other workers run on."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    if any(getattr(item, "originalname", item.name) == DRIFT_TEST for item in request.session.items):
        request.getfixturevalue("regenerated_schema")
