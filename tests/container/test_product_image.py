"""The product image itself: the real vLLM, torch and LMCache of versions.env, no stubs, on a machine without
a GPU (docker/build-image.sh product, on the local base image here, on vLLM's image where a registry is
reachable). What the build checks once is checked again here on the image users get, and the contract tests
run inside it, with its own Python and packages."""
from __future__ import annotations

import json
import re

import pytest
import tomllib

from entrypoint.config.load import make_plan
from entrypoint.config.schema import pinned_versions

from .conftest import ROOT, runner

EXIT_PREFLIGHT = 3
NO_GPU = ("error: no GPU is visible (no /dev/nvidia* device, no nvidia-smi): vLLM needs an NVIDIA GPU. Run the "
          "container with `docker run --gpus all ...` (compose: the shipped compose.yaml reserves them) on a host "
          "with the NVIDIA driver and the NVIDIA Container Toolkit installed")


@pytest.fixture
def run_product(docker_client, product_image):
    """run_product(command, timeout=..., **create_kwargs) -> (exit code, output), like run_once."""
    return runner(docker_client, product_image, 300)


def python(code: str) -> list[str]:
    """A command for the image's entrypoint: any command other than its own runs as given."""
    return ["python3", "-c", code]


# -- what the image contains ---------------------------------------------------------------------------------
def test_check_passes_with_the_schema_generated_from_the_installed_packages(run_product):
    code, out = run_product(["check"])
    # The embedded default listens on 0.0.0.0 without an API key: valid, with the one warning that says so.
    assert code == 0, out
    assert sorted(out.splitlines()) == [
        "ok: Qwen/Qwen3-0.6B on port 8000, KV offloading server",
        "warning: no API key is set and the API listens on 0.0.0.0:8000: anyone who reaches that port can use the "
        "model. Set VLLM_API_KEY (or VLLM_API_KEY_FILE), or VLLM_HOST=127.0.0.1 to listen on loopback only"], out


def test_installed_versions_are_versions_env_and_pyproject(run_product, docker_client, product_image):
    code, out = run_product(python(
        "import importlib.metadata as m, json, torch; "
        "print(json.dumps({d: m.version(d) for d in ('vllm', 'lmcache', 'supervisor', 'python-dotenv', "
        "'requests', 'llm-appliance')} | {'torch': torch.__version__, 'cuda': torch.version.cuda}))"))
    assert code == 0, out
    found = json.loads(out.splitlines()[-1])
    pins = pinned_versions()
    assert found["vllm"] == pins["VLLM_VERSION"]
    assert found["lmcache"] == pins["LMCACHE_VERSION"]
    assert found["torch"].split("+")[0] == pins["TORCH_VERSION"]
    assert found["cuda"] == pins["CUDA_VERSION"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert found["llm-appliance"] == project["version"]
    for requirement in project["dependencies"]:
        name, _, version = requirement.partition("==")
        if version:  # the exact pins; requests is a range, vLLM's own choice within it
            assert found[name] == version, requirement
    labels = docker_client.images.get(product_image).labels
    assert labels["appliance.variant"] == "product"
    assert [labels[f"appliance.{n}.version"] for n in ("vllm", "lmcache", "torch", "cuda")] == \
        [pins[f"{n.upper()}_VERSION"] for n in ("vllm", "lmcache", "torch", "cuda")]


def test_lmcache_compiled_ops_load_with_every_torch_symbol_resolved(run_product):
    """`import lmcache` alone does not prove the compiled ops match torch (0.5.3 even falls back to a shim), so
    every compiled module is loaded with RTLD_NOW (entrypoint.check_lmcache_ops, what the build runs): that
    fails on a torch/LMCache mismatch, and works without a GPU."""
    code, out = run_product(["python3", "-m", "entrypoint.check_lmcache_ops"])
    assert code == 0, out
    resolved = [line for line in out.splitlines() if line.startswith("resolves against torch ")]
    assert len(resolved) >= 2 and any("cuda_ops" in line or "c_ops" in line for line in resolved), out
    assert out.splitlines()[-1] == f"ok: {len(resolved)} compiled LMCache module(s) resolve against the installed torch"


def test_the_package_is_installed_and_the_appliance_command_runs(run_product):
    code, out = run_product(python("import entrypoint; print(entrypoint.__file__)"))
    assert code == 0, out
    assert re.fullmatch(r"/usr/(local/)?lib/python3[.\d]*/(site|dist)-packages/entrypoint/__init__\.py\n", out), out
    code, out = run_product(["appliance", "config", "--max-model-len", "1234"])
    assert code == 0, out
    assert "vllm serve Qwen/Qwen3-0.6B" in out and "--max-model-len 1234" in out


def test_vllm_serve_help_runs_on_the_cpu_platform(run_product):
    """vLLM's CLI cannot build its parser without a GPU ("Failed to infer device type"): the CPU platform is
    forced the way the schema generator and the contract tests do (vLLM's own bench command does the same),
    then vLLM's real `vllm` main runs `serve --help`."""
    code, out = run_product(python(
        "import sys\n"
        "from entrypoint.generators.schema import _force_cpu_platform\n"
        "_force_cpu_platform()\n"
        "from vllm.entrypoints.cli.main import main\n"
        "sys.argv = ['vllm', 'serve', '--help=all']\n"
        "main()"))
    assert code == 0, out[-3000:]
    for flag in ("--max-model-len", "--kv-transfer-config", "--tensor-parallel-size", "--served-model-name"):
        assert flag in out, flag


def test_lmcache_server_help_lists_the_flags_the_default_plan_passes(run_product):
    code, out = run_product(["lmcache", "server", "--help"])
    assert code == 0, out[-3000:]
    argv = make_plan(None, [], environ={}).to_dict()["lmcache"]["argv"]
    assert argv[:2] == ["lmcache", "server"]
    flags = [arg for arg in argv if arg.startswith("--")]
    assert len(flags) >= 5 and not [flag for flag in flags if flag not in out]


# -- the contract tests, inside the image ------------------------------------------------------------------
# The drift test regenerates the schema and compares it with the committed copy byte for byte; the copy is
# generated in the contract venv, whose CPU torch (CONTRACT_CPU_TORCH_VERSION) prints some vLLM defaults
# differently from the image's CUDA torch (compilation_config's inductor settings). Here the next test
# compares what validation uses instead.
DRIFT_TEST = "test_committed_schema_is_what_the_installed_packages_generate"  # tests/contract/test_harness.py
# needs a redis-server binary, which the product image does not ship; it runs in the contract venv in CI
NEEDS_REDIS = "test_resp_reconnect"


def test_the_contract_tests_pass_inside_the_product_image(run_product):
    """tests/contract with the image's Python, vLLM and LMCache (CUDA builds, CPU platform forced), against the
    installed appliance package: the checkout's tests and env files are mounted, its entrypoint package is not.
    pytest is installed into the throwaway container only (the lock's versions), never into the image."""
    lock = dict(re.findall(r"^([\w-]+)==(\S+)$", (ROOT / "requirements" / "test.txt").read_text(), re.M))
    tools = " ".join(f"{name}=={lock[name]}" for name in ("pytest", "pluggy", "iniconfig"))
    script = (f"python3 -m pip install -q --no-cache-dir --no-deps {tools} >&2 && "
              "python3 -c 'import sys; sys.path.insert(0, \"/src\"); import entrypoint; print(\"entrypoint from\", "
              "entrypoint.__file__)' && "
              f"python3 -m pytest -p no:cacheprovider -W ignore -q -rs /src/tests/contract "
              f"-k 'not {DRIFT_TEST} and not {NEEDS_REDIS}'")
    # bench/: the coordinator test drives the cluster bench's router (the installed appliance is its entrypoint)
    volumes = {str(ROOT / "tests"): {"bind": "/src/tests", "mode": "ro"},
               str(ROOT / "env"): {"bind": "/src/env", "mode": "ro"},
               str(ROOT / "bench"): {"bind": "/src/bench", "mode": "ro"}}
    code, out = run_product(["bash", "-c", script], timeout=900, volumes=volumes, working_dir="/src",
                            environment={"PYTHONDONTWRITEBYTECODE": "1", "PIP_BREAK_SYSTEM_PACKAGES": "1"})
    print(out[-3000:])
    assert code == 0, out[-6000:]
    origin = next(line for line in out.splitlines() if line.startswith("entrypoint from "))
    assert "-packages/entrypoint/" in origin, origin  # the installed package, not a copy of the checkout
    summary = out.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary) and "skipped" not in summary and "failed" not in summary, summary


def test_the_schema_the_build_generated_is_the_committed_one(run_product):
    """The image validates against a schema generated at build from its own vLLM and LMCache; `config` and the
    unit tests outside it use the committed copy. Everything validation reads must agree: flags, their kinds and
    choices, vLLM's variables, tool-call parsers, LMCache's keys, server flags and L2 adapter types."""
    pins = pinned_versions()
    for name in (f"vllm-{pins['VLLM_VERSION']}.json", f"lmcache-{pins['LMCACHE_VERSION']}.json"):
        code, out = run_product(python(
            "import importlib.resources as r, sys; "
            f"sys.stdout.write(r.files('entrypoint.config').joinpath('schema', {name!r}).read_text())"))
        assert code == 0, out[-3000:]
        built = json.loads(out)
        committed = json.loads((ROOT / "entrypoint" / "config" / "schema" / name).read_text())
        for schema in (built, committed):
            for flag in schema.get("serve_flags", {}).values():
                flag.pop("default")  # printed by torch-dependent reprs (see DRIFT_TEST above)
        drift = sorted(key for key in set(built) | set(committed) if built.get(key) != committed.get(key))
        assert not drift, f"{name}: the committed copy differs from the image's in {drift}"


# -- starting it ---------------------------------------------------------------------------------------------
def test_serve_without_a_gpu_stops_at_preflight_with_the_gpus_all_fix(run_product, docker_client, product_image):
    assert not [e for e in docker_client.images.get(product_image).attrs["Config"]["Env"] if e.startswith("STUB_")]
    code, out = run_product(["serve"], timeout=120)
    assert code == EXIT_PREFLIGHT, out
    assert [line for line in out.splitlines() if line.startswith("error:")] == [NO_GPU]
    assert out.splitlines()[-1] == "1 preflight problem(s); nothing was started."
    assert "Traceback" not in out


def test_the_non_root_user_starts_it_up_to_the_gpu_check(run_product):
    """As `appliance` (docker run --user appliance, compose `user: appliance`): the run directory, the volumes and
    the model cache are writable, so the only problem left on this machine is the missing GPU."""
    code, out = run_product(["serve"], user="appliance", timeout=120,
                            environment={"LMCACHE_LOCAL_DISK": "true", "LMCACHE_MAX_LOCAL_DISK_SIZE": "1"})
    assert code == EXIT_PREFLIGHT, out
    assert [line for line in out.splitlines() if line.startswith("error:")] == [NO_GPU]
    code, out = run_product(["bash", "-c", "id -un && touch $HF_HOME/probe && python3 -c 'import vllm, lmcache'"],
                            user="appliance")
    assert (code, out.splitlines()[0]) == (0, "appliance"), out
