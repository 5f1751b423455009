"""The KV identity against the real vLLM and LMCache (CPU):
- every flag of the pinned vLLM's `serve` parser is classified as KV-affecting or not (settings.KV_FLAGS /
  KV_NEUTRAL_FLAGS), so that a flag a new vLLM adds fails here until someone classifies it;
- vLLM's connector factory loads the appliance's connector from the planned --kv-transfer-config, and the
  connector salts LMCache's per-request tracker (real vLLM Request objects) by identity, adapter and own salt;
- LMCache's own storage keeps two identities, two adapters and the base model apart: chunks stored under one
  are zero hits for the others, in the CPU tier of one shared server and on the disk tier across a restart.
What this cannot show (GPU): that a hit gives what recompute gives; scripts/gpu/kv_equality.py does."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from entrypoint.config.load import make_plan
from entrypoint.config.settings import KV_FLAGS, KV_NEUTRAL_FLAGS
from entrypoint.lmcache_ext.salt import request_salt

from .test_prewarm import _layout, _server, _stop, _until

TOKENS = list(range(1000, 1000 + 600))  # two full chunks of 256 and a partial one


def test_every_flag_of_the_pinned_vllm_is_classified(serve_parser):
    from entrypoint.generators.schema import vllm_serve_parser

    _, serve = vllm_serve_parser()
    flags = {next(o for o in a.option_strings if o.startswith("--") and not o.startswith("--no-"))
             for a in serve._actions if any(o.startswith("--") and not o.startswith("--no-") for o in a.option_strings)
             and a.dest != "help"}
    flags.discard("--model")  # the model is always part of the identity (and VLLM_MODEL's own)
    unclassified = sorted(flags - set(KV_FLAGS) - KV_NEUTRAL_FLAGS)
    assert unclassified == [], ("classify these vllm serve flags in entrypoint/config/settings.py: KV_FLAGS if they "
                                f"change the KV a prompt produces, else KV_NEUTRAL_FLAGS: {unclassified}")
    assert not set(KV_FLAGS) & KV_NEUTRAL_FLAGS
    assert sorted((set(KV_FLAGS) | KV_NEUTRAL_FLAGS) - flags) == []  # no stale names


def _plan(local_model, tmp_path, **env):
    plan = make_plan(None, [], {"VLLM_MODEL": local_model, "LMCACHE_LOCAL_DISK": str(tmp_path / "kv"),
                                "LMCACHE_MAX_LOCAL_DISK_SIZE": "1", "VLLM_KV_OFFLOADING_SIZE": "0.25",
                                "LMCACHE_PREWARM_SIZE": "0", **env})
    assert plan.errors == [], plan.errors
    return plan


def _transfer(plan) -> dict:
    return json.loads(plan.vllm.argv[plan.vllm.argv.index("--kv-transfer-config") + 1])


def test_vllm_loads_the_appliances_connector_and_it_salts_every_request(stack, serve_parser, local_model, tmp_path):
    from lmcache.integration.vllm.lmcache_mp_connector import LMCacheMPConnector as Upstream
    from vllm import SamplingParams
    from vllm.config import KVTransferConfig
    from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory
    from vllm.lora.request import LoRARequest
    from vllm.v1.request import Request

    from .parsers import parse_serve_argv

    plan = _plan(local_model, tmp_path, VLLM_ENABLE_LORA="true")
    engine = parse_serve_argv(serve_parser, plan.vllm.argv).engine_args  # vLLM's parser takes the plan as is
    config = KVTransferConfig(**_transfer(plan))
    assert engine.kv_transfer_config.kv_connector_module_path == "entrypoint.lmcache_ext.connector"
    cls = KVConnectorFactory.get_connector_class(config)
    assert cls.__module__ == "entrypoint.lmcache_ext.connector" and issubclass(cls, Upstream)

    connector = object.__new__(cls)  # the scheduler side's state, without a server to connect to
    connector.request_trackers, connector.lazy_offload, connector._kv_identity = {}, False, plan.kv_identity

    def salt_of(request_id, **kwargs):
        request = Request(request_id, TOKENS, SamplingParams(max_tokens=4), None, **kwargs)
        tracker = connector._get_or_create_request_tracker(request)
        assert connector._get_or_create_request_tracker(request) is tracker  # looked up again: unchanged
        return tracker.cache_salt

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    salts = [salt_of("base"), salt_of("a", lora_request=LoRARequest("a", 1, str(tmp_path / "a"))),
             salt_of("b", lora_request=LoRARequest("b", 2, str(tmp_path / "b"))), salt_of("own", cache_salt="u1")]
    assert salts[0] == f"kv-{plan.kv_identity}" and len(set(salts)) == 4
    assert salt_of("base2") == salts[0]  # two base-model requests share


def _object_keys(ipc_salt: str, model_name: str = "m") -> list:
    """What the LMCache server derives from a connector's key: its token hasher's chunk hashes, then
    LMCache's own conversion to storage keys (the salt carried into every ObjectKey)."""
    from lmcache.v1.distributed.api import ipc_key_to_object_keys
    from lmcache.v1.multiprocess.custom_types import IPCCacheServerKey
    from lmcache.v1.multiprocess.token_hasher import TokenHasher

    ipc = IPCCacheServerKey.from_token_ids(model_name, 1, 0, TOKENS, 0, len(TOKENS), cache_salt=ipc_salt)
    hashes = TokenHasher(chunk_size=256).compute_chunk_hashes(TOKENS, end=len(TOKENS))
    (keys,) = ipc_key_to_object_keys(ipc, hashes, [0])
    assert len(keys) == 2
    return keys


def _store(ctx, keys):
    sm = ctx.storage_manager
    assert set(sm.reserve_write(keys, _layout())) == set(keys)
    sm.finish_write(keys)


def _resident(ctx, keys) -> int:
    return sum(ctx.storage_manager._l1_manager.get_object_state(k) is not None for k in keys)


def test_identities_and_adapters_never_see_each_others_chunks(stack, lmcache_parser, local_model, tmp_path):
    bf16, fp8 = _plan(local_model, tmp_path), _plan(local_model, tmp_path, VLLM_QUANTIZATION="fp8")
    assert bf16.kv_identity != fp8.kv_identity
    assert _transfer(fp8)["kv_connector_extra_config"]["appliance.kv_identity"] == fp8.kv_identity
    (tmp_path / "lora-a").mkdir()
    (tmp_path / "lora-b").mkdir()
    from vllm.lora.request import LoRARequest

    salts = {"bf16": request_salt(bf16.kv_identity), "fp8": request_salt(fp8.kv_identity),
             "adapter a": request_salt(bf16.kv_identity, LoRARequest("a", 1, str(tmp_path / "lora-a"))),
             "adapter b": request_salt(bf16.kv_identity, LoRARequest("b", 2, str(tmp_path / "lora-b")))}
    keys = {name: _object_keys(salt) for name, salt in salts.items()}
    server = _server(lmcache_parser, bf16)  # one LMCache server shared by every configuration
    try:
        for stored in ("bf16", "adapter a"):
            _store(server.ctx, keys[stored])
        hits = {name: _resident(server.ctx, k) for name, k in keys.items()}
        assert hits == {"bf16": 2, "fp8": 0, "adapter a": 2, "adapter b": 0}
        _until(lambda: len(list(Path(bf16.lmcache.disk.path).glob("*.data"))) == 4)  # written to bf16's disk tier
    finally:
        _stop(server)
    assert Path(bf16.lmcache.disk.path) != Path(fp8.lmcache.disk.path)
    restarted = _server(lmcache_parser, fp8)  # the fp8 start: its own namespace, none of bf16's files
    try:
        assert list(Path(fp8.lmcache.disk.path).glob("*.data")) == []
        assert _resident(restarted.ctx, keys["bf16"]) == 0
    finally:
        _stop(restarted)
    # LMCache names each file after its key, salt last: the identity is readable on the volume
    salts_on_disk = sorted(p.stem.rsplit("@", 1)[1] for p in Path(bf16.lmcache.disk.path).glob("*.data"))
    assert salts_on_disk == sorted([salts["bf16"]] * 2 + [salts["adapter a"]] * 2)


@pytest.mark.parametrize("salt", ["kv-0123456789abcdef", request_salt("0123456789abcdef", None, "x" * 500)])
def test_lmcache_accepts_the_salts(stack, salt):
    from lmcache.v1.distributed.api import ObjectKey

    (key,) = _object_keys(salt)[:1]
    assert isinstance(key, ObjectKey) and key.cache_salt == salt


class _Adapter:
    """LMCache's scheduler adapter as the connector uses it, recording the lookups it would send."""
    lmcache_tokens_per_chunk = 256

    def __init__(self):
        self.lookups = []

    def maybe_submit_lookup_request(self, request_id, **_):
        self.lookups.append(request_id)

    def check_lookup_result(self, request_id):
        return 0  # the server found nothing


def _scheduler_connector(skip: bool):
    from lmcache.integration.vllm.lmcache_mp_connector import LMCacheMPConnectorStats

    from entrypoint.lmcache_ext.connector import LMCacheMPConnector

    connector = object.__new__(LMCacheMPConnector)
    connector.request_trackers, connector.lazy_offload, connector._kv_identity = {}, False, "0123456789abcdef"
    connector._skip_useless_lookup, connector.lookups_skipped = skip, 0
    connector._hit_alignment_tokens, connector._reserve_last_token_for_lookup = 16, False
    connector._connector_stats, connector.scheduler_adapter = LMCacheMPConnectorStats(), _Adapter()
    return connector


# (prompt tokens, tokens vLLM holds on the GPU, whether the LMCache server is asked)
LOOKUPS = [(100, 0, False),     # shorter than one chunk: never a hit
           (255, 0, False),
           (256, 0, True),      # one full chunk
           (600, 0, True),
           (600, 256, True),    # the second chunk could come from LMCache
           (600, 512, False),   # vLLM holds both full chunks: nothing to load
           (600, 599, False),   # a full-prompt GPU hit
           (520, 500, True)]    # 500 rounds down to 496 (blocks of 16): chunk 2 is not all on the GPU


@pytest.mark.parametrize("tokens,gpu_hit,asked", LOOKUPS)
def test_no_lookup_when_it_cannot_help(stack, tokens, gpu_hit, asked):
    from vllm import SamplingParams
    from vllm.v1.request import Request

    for skip in (True, False):
        connector = _scheduler_connector(skip)
        request = Request("r", list(range(tokens)), SamplingParams(max_tokens=1), None)
        assert connector.get_num_new_matched_tokens(request, gpu_hit) == (0, False)
        tracker = connector.request_trackers["r"]
        assert connector.scheduler_adapter.lookups == (["r"] if asked or not skip else [])
        assert connector.lookups_skipped == (0 if asked or not skip else 1)
        assert tracker.num_vllm_hit_tokens == gpu_hit // 16 * 16  # what LMCache's own path records
