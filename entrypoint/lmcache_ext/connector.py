"""vLLM's LMCache connector with the appliance's KV identity in every chunk key.

vLLM loads it through `kv_connector_module_path` in the --kv-transfer-config the appliance writes
(config/kv_tiers.mp_transfer_config). It is LMCache's own connector; the one change is the cache salt each
request's chunks are stored and looked up under (salt.request_salt: KV identity, LoRA adapter, the request's
own salt), set where LMCache builds its per-request tracker, which every lookup, load and store reads.
Runs inside vLLM's processes (scheduler and workers), so it may import vLLM and LMCache.
"""
from __future__ import annotations

from lmcache.integration.vllm.lmcache_mp_connector import LMCacheMPConnector as _LMCacheMPConnector

from ..config.kv_tiers import IDENTITY_CONFIG_KEY
from .salt import request_salt


class LMCacheMPConnector(_LMCacheMPConnector):
    """Same name as LMCache's class: vLLM treats a connector by its name in places."""

    def __init__(self, vllm_config, role, kv_cache_config=None):
        super().__init__(vllm_config, role, kv_cache_config)
        identity = vllm_config.kv_transfer_config.get_from_extra_config(IDENTITY_CONFIG_KEY, "")
        if not identity:
            raise ValueError(f"{IDENTITY_CONFIG_KEY} is missing from kv_connector_extra_config: the appliance "
                             "writes it; a connector without it would share KV across identities")
        self._kv_identity = str(identity)

    def _get_or_create_request_tracker(self, request):
        tracker = super()._get_or_create_request_tracker(request)
        # Idempotent (derived from the request, not from the tracker), so a tracker seen twice is unchanged.
        tracker.cache_salt = request_salt(self._kv_identity, getattr(request, "lora_request", None),
                                          getattr(request, "cache_salt", None))
        return tracker
