"""vLLM's LMCache connector with the appliance's KV identity in every chunk key, and no lookup that cannot help.

vLLM loads it through `kv_connector_module_path` in the --kv-transfer-config the appliance writes
(config/kv_tiers.mp_transfer_config). It is LMCache's own connector with two changes:
- the cache salt each request's chunks are stored and looked up under (salt.request_salt: KV identity, LoRA
  adapter, the request's own salt), set where LMCache builds its per-request tracker, which every lookup,
  load and store reads;
- no lookup round trip to the LMCache server when its answer cannot add anything (LMCACHE_SKIP_USELESS_LOOKUP):
  LMCache stores and loads whole chunks only, so a prompt shorter than one chunk can never be a hit, and a
  prompt whose every full chunk vLLM already holds on the GPU (`num_computed_tokens`) has nothing to load.
  LMCache 0.5.6 still asks the server (and the scheduler waits for the answer) in both cases.
Runs inside vLLM's processes (scheduler and workers), so it may import vLLM and LMCache.
"""
from __future__ import annotations

from lmcache.integration.vllm.lmcache_mp_connector import LMCacheMPConnector as _LMCacheMPConnector
from lmcache.integration.vllm.lmcache_mp_metadata import LMCacheMPRequestState

from ..config.kv_tiers import IDENTITY_CONFIG_KEY, SKIP_LOOKUP_CONFIG_KEY
from .salt import request_salt


def lookup_can_help(num_tokens: int, num_computed_tokens: int, chunk_tokens: int, alignment: int,
                    reserve_last_token: bool = False) -> bool:
    """Whether the LMCache server could add KV beyond what vLLM holds: only a full chunk past vLLM's (aligned)
    hit can. The same arithmetic as LMCache's lookup (its aligned end) and hit accounting."""
    lookup_tokens = max(0, num_tokens - int(reserve_last_token))
    full_chunks_end = lookup_tokens // chunk_tokens * chunk_tokens
    vllm_hit = num_computed_tokens // alignment * alignment
    return full_chunks_end > 0 and full_chunks_end > vllm_hit


class LMCacheMPConnector(_LMCacheMPConnector):
    """Same name as LMCache's class: vLLM treats a connector by its name in places."""

    def __init__(self, vllm_config, role, kv_cache_config=None):
        super().__init__(vllm_config, role, kv_cache_config)
        transfer = vllm_config.kv_transfer_config
        identity = transfer.get_from_extra_config(IDENTITY_CONFIG_KEY, "")
        if not identity:
            raise ValueError(f"{IDENTITY_CONFIG_KEY} is missing from kv_connector_extra_config: the appliance "
                             "writes it; a connector without it would share KV across identities")
        self._kv_identity = str(identity)
        self._skip_useless_lookup = bool(transfer.get_from_extra_config(SKIP_LOOKUP_CONFIG_KEY, False))
        self.lookups_skipped = 0

    def _get_or_create_request_tracker(self, request):
        tracker = super()._get_or_create_request_tracker(request)
        # Idempotent (derived from the request, not from the tracker), so a tracker seen twice is unchanged.
        tracker.cache_salt = request_salt(self._kv_identity, getattr(request, "lora_request", None),
                                          getattr(request, "cache_salt", None))
        return tracker

    def get_num_new_matched_tokens(self, request, num_computed_tokens: int):
        if self._skip_useless_lookup:
            tracker = self._get_or_create_request_tracker(request)
            # Only a fresh tracker with no lookup in flight (eager prefetch submits one at queueing; a
            # preempted request or a failed load has its own path in LMCache).
            if (tracker.state == LMCacheMPRequestState.PREFETCHING and tracker.lookup_started_at is None
                    and not lookup_can_help(len(tracker.get_token_ids()), num_computed_tokens,
                                            self.scheduler_adapter.lmcache_tokens_per_chunk,
                                            self._hit_alignment_tokens, self._reserve_last_token_for_lookup)):
                vllm_hit = num_computed_tokens // self._hit_alignment_tokens * self._hit_alignment_tokens
                # What LMCache records after a lookup that found vLLM's hit: the chunks vLLM holds were stored
                # when they were computed, so they are not offloaded again.
                tracker.num_vllm_hit_tokens = vllm_hit
                tracker.num_stored_tokens = max(tracker.num_stored_tokens, vllm_hit)
                self.lookups_skipped += 1
                return 0, False
        return super().get_num_new_matched_tokens(request, num_computed_tokens)
