"""The KV identity (entrypoint/config/kv_identity.py): it changes for everything that changes the KV a prompt
produces, and for nothing else; weights replaced in place and a moved hub ref are new identities; `config` shows
it; a start that finds another identity's KV on the volume says what changed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from entrypoint.config import kv_identity
from entrypoint.config.kv_identity import MANIFEST_FILE, changed
from entrypoint.supervise.preflight import Findings, check_disk_tier, note_kv_identity

from plan_argv import kv_transfer

ROOT = Path(__file__).resolve().parents[2]
BASE = {"VLLM_MODEL": "org/m", "VLLM_KV_OFFLOADING_BACKEND": "lmcache", "VLLM_KV_OFFLOADING_SIZE": "4"}

# Each changes the KV a prompt produces (or its layout): a new identity, so stored KV is never reused.
KV_CHANGES = {
    "another model": {"VLLM_MODEL": "org/other"},
    "fp8 quantization": {"VLLM_QUANTIZATION": "fp8"},
    "fp8 quantization in VLLM_EXTRA_ARGS": {"VLLM_EXTRA_ARGS": "--quantization fp8"},
    "fp8 quantization, = form": {"VLLM_EXTRA_ARGS": "--quantization=fp8"},
    "KV cache dtype": {"VLLM_KV_CACHE_DTYPE": "fp8"},
    "dtype": {"VLLM_DTYPE": "half"},
    "rope scaling": {"VLLM_HF_OVERRIDES": '{"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}'},
    "revision": {"VLLM_REVISION": "v2"},
    "tensor parallel": {"VLLM_TENSOR_PARALLEL_SIZE": "2"},
    "chunk size": {"LMCACHE_CHUNK_SIZE": "512"},
    "dummy weights": {"VLLM_LOAD_FORMAT": "dummy"},
    "remote code": {"VLLM_TRUST_REMOTE_CODE": "true"},
    "sliding window off": {"VLLM_DISABLE_SLIDING_WINDOW": "true"},
}
# Each changes serving only: the same identity, so a harmless edit of .env keeps the cache.
HARMLESS = {
    "served model name": {"VLLM_SERVED_MODEL_NAME": "my-model"},
    "port": {"VLLM_PORT": "9000"},
    "max model length": {"VLLM_MAX_MODEL_LEN": "8192"},
    "API key": {"VLLM_API_KEY": "sk-1"},
    "GPU memory share": {"VLLM_GPU_MEMORY_UTILIZATION": "0.5"},
    "max sequences": {"VLLM_MAX_NUM_SEQS": "8"},
    "eager mode": {"VLLM_ENFORCE_EAGER": "true"},
    "tool parser": {"VLLM_TOOL_CALL_PARSER": "hermes", "VLLM_ENABLE_AUTO_TOOL_CHOICE": "true"},
    "CPU tier size": {"VLLM_KV_OFFLOADING_SIZE": "8"},
    "disk tier": {"LMCACHE_LOCAL_DISK": "/tmp/elsewhere"},
    "watchdog": {"APPLIANCE_HEALTH_INTERVAL": "3"},
    "seed": {"VLLM_SEED": "7"},
    "prefix caching off": {"VLLM_ENABLE_PREFIX_CACHING": "false"},
}


@pytest.fixture
def identity_of(plan_for):
    def identity(extra=None, **kwargs):
        plan = plan_for({**BASE, **(extra or {})}, **kwargs)
        assert plan.errors == [], plan.errors
        assert len(plan.kv_identity) == kv_identity.DIGEST_CHARS
        assert kv_transfer(plan)["kv_connector_extra_config"]["appliance.kv_identity"] == plan.kv_identity
        return plan.kv_identity
    return identity


@pytest.mark.parametrize("what", sorted(KV_CHANGES))
def test_every_kv_affecting_setting_gives_a_new_identity(identity_of, what):
    assert identity_of(KV_CHANGES[what]) != identity_of()


@pytest.mark.parametrize("what", sorted(HARMLESS))
def test_harmless_settings_keep_the_identity(identity_of, what):
    assert identity_of(HARMLESS[what]) == identity_of()


def test_every_kv_change_is_a_different_identity_from_every_other(identity_of):
    identities = {identity_of(env) for env in KV_CHANGES.values()}
    assert len(identities) == len(KV_CHANGES) - 2  # the three spellings of --quantization fp8 are one


def test_a_command_line_override_counts_like_the_variable(identity_of):
    assert identity_of(overrides=["--quantization", "fp8"]) == identity_of({"VLLM_QUANTIZATION": "fp8"})


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(["factor", "rope_type", "original_max_position_embeddings", "beta"]),
                       st.one_of(st.integers(0, 10**6), st.text(max_size=8)), min_size=1, max_size=4),
       st.sampled_from([(",", ":"), (", ", ": "), (" ,  ", " : ")]), st.booleans())
def test_json_values_count_by_content_not_by_spelling(identity_of, overrides, separators, reverse):
    items = sorted(overrides.items(), reverse=reverse)
    compact = json.dumps({"rope_scaling": dict(sorted(overrides.items()))}, separators=(",", ":"))
    spelled = json.dumps({"rope_scaling": dict(items)}, separators=separators)
    assert identity_of({"VLLM_HF_OVERRIDES": spelled}) == identity_of({"VLLM_HF_OVERRIDES": compact})


def _model_dir(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"hidden_size": 64}')
    (model / "model.safetensors").write_bytes(b"w" * 1000)
    (model / "tokenizer.json").write_text("{}")
    return model


def test_weights_replaced_in_place_are_a_new_identity(identity_of, tmp_path):
    model = _model_dir(tmp_path)
    env = {"VLLM_MODEL": str(model)}
    before = identity_of(env)
    assert identity_of(env) == before  # read twice, the same
    os.utime(model / "tokenizer.json", ns=(1, 1))
    assert identity_of(env) == before  # the tokenizer does not change the KV of given token ids
    weights = model / "model.safetensors"
    st_ = weights.stat()
    os.utime(weights, ns=(st_.st_atime_ns, st_.st_mtime_ns + 1_000_000))  # same size, rewritten
    after_touch = identity_of(env)
    assert after_touch != before
    (model / "config.json").write_text('{"hidden_size": 65}')  # config edited
    os.utime(model / "config.json", ns=(1, 1))
    assert identity_of(env) != after_touch
    (model / "model-00002.safetensors").write_bytes(b"x")  # a shard added
    assert identity_of(env) not in (before, after_touch)


def test_a_moved_hub_ref_is_a_new_identity_and_a_pinned_commit_is_not(identity_of, tmp_path):
    hub = tmp_path / "hf" / "hub" / "models--org--m"
    (hub / "refs").mkdir(parents=True)
    env = {"HF_HOME": str(tmp_path / "hf")}
    not_downloaded = identity_of(env)
    (hub / "refs" / "main").write_text("a" * 40)
    first = identity_of(env)
    (hub / "refs" / "main").write_text("b" * 40)  # a re-download found a new `main`
    second = identity_of(env)
    assert len({not_downloaded, first, second}) == 3
    pinned = {**env, "VLLM_REVISION": "c" * 40}
    assert identity_of(pinned) == identity_of({**pinned, "HF_HOME": str(tmp_path / "elsewhere")})
    (hub / "refs" / "v2").write_text("d" * 40)
    assert identity_of({**env, "VLLM_REVISION": "v2"}) not in (first, second)


def test_the_hub_cache_is_found_where_vllm_looks(tmp_path):
    assert kv_identity.hub_cache_dir({"HF_HOME": "/h"}, None) == Path("/h/hub")
    assert kv_identity.hub_cache_dir({"HF_HOME": "/h", "HF_HUB_CACHE": "/c"}, None) == Path("/c")
    assert kv_identity.hub_cache_dir({"HF_HUB_CACHE": "/c"}, "/d") == Path("/d")  # --download-dir wins


def test_config_shows_the_identity_and_its_inputs_stable_across_runs(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "LMCACHE_", "APPLIANCE_"))}
    env.update(BASE, VLLM_QUANTIZATION="fp8", PYTHONPATH=str(ROOT))
    def run(*args):
        out = subprocess.run([sys.executable, "-m", "entrypoint", "config", *args], cwd=ROOT, env=env,
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return out.stdout
    first, second = json.loads(run("--format", "json")), json.loads(run("--format", "json"))
    assert first["kv_identity"] == second["kv_identity"] and len(first["kv_identity"]) == 16
    assert first["kv_identity_inputs"]["parts"]["vllm --quantization"] == "fp8"
    text = run()
    assert f"KV identity: {first['kv_identity']}" in text
    assert "  vllm --quantization" in text and "  weights " in text


def test_a_credential_in_a_kv_flag_is_shown_redacted(plan_for):
    plan = plan_for({**BASE, "VLLM_MODEL_LOADER_EXTRA_CONFIG": '{"s3_secret_access_key": "sk-LEAK", "n": 1}'})
    shown = json.dumps(plan.to_dict())
    assert "sk-LEAK" not in shown
    assert plan.to_dict()["kv_identity_inputs"]["parts"]["vllm --model-loader-extra-config"] == (
        '{"n":1,"s3_secret_access_key":"***"}')


def test_what_changed_is_said_in_words(plan_for, tmp_path):
    model = _model_dir(tmp_path)
    def identity(extra=None):
        plan = plan_for({**BASE, "VLLM_MODEL": str(model), **(extra or {})})
        return kv_identity.KvIdentity(plan.kv_identity, plan.kv_identity_inputs.parts, plan.kv_identity_inputs.files)
    old = identity().manifest()
    weights = model / "model.safetensors"
    os.utime(weights, ns=(1, weights.stat().st_mtime_ns + 5))
    assert changed(old, identity()) == "weights changed: model.safetensors size/mtime"
    assert changed(old, identity({"VLLM_QUANTIZATION": "fp8"})).endswith("vllm --quantization: not set -> fp8")
    assert changed({}, identity()) == "its inputs are not recorded: written before the appliance recorded them"


def test_a_start_finds_another_identitys_kv_and_says_why_once(plan_for, tmp_path):
    model = _model_dir(tmp_path)
    base = {**BASE, "VLLM_MODEL": str(model), "LMCACHE_LOCAL_DISK": str(tmp_path / "kv"),
            "LMCACHE_MAX_LOCAL_DISK_SIZE": "1", "VLLM_API_KEY": "sk-secret-key"}
    def start(extra=None):
        plan = plan_for({**base, **(extra or {})})
        assert plan.errors == []
        found = Findings()
        check_disk_tier(plan.lmcache.disk, found)
        note_kv_identity(plan, found)
        return plan, found
    first, found = start()
    assert found.notes == [] and found.warnings == []
    manifest = json.loads((Path(first.lmcache.disk.path) / MANIFEST_FILE).read_text())
    assert manifest["kv_identity"] == first.kv_identity
    (Path(first.lmcache.disk.path) / "chunk.data").write_bytes(b"kv")
    again, found = start()  # the same identity: same directory, nothing to say
    assert again.lmcache.disk.path == first.lmcache.disk.path and found.notes == []
    fp8, found = start({"VLLM_QUANTIZATION": "fp8"})
    assert fp8.lmcache.disk.path != first.lmcache.disk.path
    (note,) = found.notes
    assert note == (f"the disk tier holds KV of another identity, {Path(first.lmcache.disk.path).name}: not read by "
                    "this start (vllm --quantization: not set -> fp8); its files, least recently used, go first when "
                    "the tier is over LMCACHE_MAX_LOCAL_DISK_SIZE")
    for path in Path(tmp_path / "kv").rglob("*"):
        if path.is_file():
            assert b"sk-secret-key" not in path.read_bytes()


def test_lora_is_refused_in_process_and_keyed_per_adapter_in_server_mode(plan_for):
    plan = plan_for({**BASE, "VLLM_ENABLE_LORA": "true", "LMCACHE_MODE": "in-process"})
    assert plan.errors == [
        "VLLM_ENABLE_LORA with LMCACHE_MODE=in-process: in-process LMCache keys KV by model and tokens only, so "
        "KV computed under one LoRA adapter would be loaded for another or for the base model. Use "
        "LMCACHE_MODE=server (the appliance keys each adapter apart there) or VLLM_KV_OFFLOADING_BACKEND=native"]
    assert plan_for({**BASE, "VLLM_EXTRA_ARGS": "--enable-lora", "LMCACHE_MODE": "in-process"}).errors
    server = plan_for({**BASE, "VLLM_ENABLE_LORA": "true"})
    assert server.errors == []
    assert kv_transfer(server)["kv_connector_module_path"] == "entrypoint.lmcache_ext.connector"


def test_tenant_isolation_needs_a_key_and_adds_the_middleware(plan_for):
    plan = plan_for({**BASE, "APPLIANCE_TENANT_ISOLATION": "true"})
    assert plan.errors == ["APPLIANCE_TENANT_ISOLATION=true needs API keys (each key is a tenant): set "
                           "VLLM_API_KEY, or several keys with `--api-key k1 k2` in VLLM_EXTRA_ARGS"]
    for env in ({"VLLM_API_KEY": "k"}, {"VLLM_EXTRA_ARGS": "--api-key k1 k2"}):
        plan = plan_for({**BASE, "APPLIANCE_TENANT_ISOLATION": "true", **env})
        assert plan.errors == []
        middleware = [plan.vllm.argv[i + 1] for i, a in enumerate(plan.vllm.argv) if a == "--middleware"]
        assert middleware == ["entrypoint.vllm_ext.identity.KvIdentityMiddleware",
                              "entrypoint.vllm_ext.tenant_salt.TenantSaltMiddleware"]
        assert plan.vllm.env["APPLIANCE_TENANT_SALT"] == "1"  # announced to the coordinator router
    plain = plan_for({**BASE, "VLLM_API_KEY": "k"})  # off by default
    assert "entrypoint.vllm_ext.tenant_salt.TenantSaltMiddleware" not in plain.vllm.argv
    assert "APPLIANCE_TENANT_SALT" not in plain.vllm.env


@pytest.mark.parametrize("raw", ["-x", "'true'", "yes please", "tru\udcff"])
def test_tenant_isolation_hostile_values_are_clear_errors(plan_for, raw):
    plan = plan_for({**BASE, "VLLM_API_KEY": "sk-planted", "APPLIANCE_TENANT_ISOLATION": raw})
    assert plan.errors and all(e.startswith("APPLIANCE_TENANT_ISOLATION=") for e in plan.errors)
    assert "sk-planted" not in json.dumps(plan.to_dict())


@pytest.mark.parametrize("env", [{"VLLM_ENABLE_PROMPT_EMBEDS": "true"}, {"VLLM_EXTRA_ARGS": "--enable-prompt-embeds"}])
def test_prompt_embeddings_are_refused_with_lmcache(plan_for, env):
    plan = plan_for({**BASE, **env})
    assert plan.errors == [
        "VLLM_ENABLE_PROMPT_EMBEDS with VLLM_KV_OFFLOADING_BACKEND=lmcache: LMCache keys KV by token ids, and a "
        "prompt given as embeddings is not its token ids, so different prompts could load each other's KV. Use "
        "VLLM_KV_OFFLOADING_BACKEND=native (vLLM keys by the embeddings) or none"]
    assert plan_for({**BASE, **env, "VLLM_KV_OFFLOADING_BACKEND": "native"}).errors == []
    assert plan_for({**BASE, **env, "LMCACHE_SERVER": "kv-server:5555"}).errors == plan.errors  # a replica too
