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
- a lookup-status wait that ends as soon as LMCache's heartbeat has marked the server unhealthy: with
  blocking lookup status (LMCACHE_NONBLOCKING_LOOKUP=false, the faster default) LMCache 0.5.6 waits for the
  answer with `future.result(timeout=mq_timeout)`, which does not look at the health flag, so a dead server
  stalled vLLM's scheduler until it was back or for mq_timeout (30 s) (docs/RESILIENCE.md). The wait now looks
  at the flag every HEALTH_CHECK_S and gives up as a timeout would (LMCache then answers 0: a miss, recomputed).
  A healthy server's answer wakes it at once, as before.
Runs inside vLLM's processes (scheduler and workers), so it may import vLLM and LMCache.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from lmcache.integration.vllm.lmcache_mp_connector import LMCacheMPConnector as _LMCacheMPConnector
from lmcache.integration.vllm.lmcache_mp_metadata import LMCacheMPRequestState
from lmcache.v1.mp_observability.errors import LMCacheTimeoutError

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


HEALTH_CHECK_S = 0.05  # how often a blocked lookup-status wait looks at the server's health


class HealthBoundFuture:
    """A lookup-status future (LMCache's MessagingFuture) whose blocking `result` ends with LMCache's timeout error
    once `healthy()` turns false, instead of at the end of its timeout. Everything else is the future's own."""

    def __init__(self, future: Any, healthy: Callable[[], bool]) -> None:
        self._future, self._healthy = future, healthy

    def query(self) -> bool:
        return self._future.query()

    def result(self, timeout: float | None = None) -> Any:
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            left = HEALTH_CHECK_S if end is None else min(HEALTH_CHECK_S, max(0.0, end - time.monotonic()))
            if self._future.wait(left):
                return self._future.result(0)
            if not self._healthy():
                raise LMCacheTimeoutError("the LMCache server was marked unhealthy during the lookup status wait")
            if end is not None and time.monotonic() >= end:
                raise LMCacheTimeoutError("Future result not available within timeout")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._future, name)


def bound_status_waits(adapter: Any) -> None:
    """Every lookup-status future of the scheduler adapter's server clients becomes a HealthBoundFuture."""
    for client in adapter.req_clients.values():
        original = client.query_prefetch_status

        def query_prefetch_status(request_id: Any, _original: Any = original) -> HealthBoundFuture:
            return HealthBoundFuture(_original(request_id), lambda: adapter.is_healthy)

        client.query_prefetch_status = query_prefetch_status


class LMCacheMPConnector(_LMCacheMPConnector):
    """Same name as LMCache's class: vLLM treats a connector by its name in places."""

    def __init__(self, vllm_config: Any, role: Any, kv_cache_config: Any = None) -> None:
        super().__init__(vllm_config, role, kv_cache_config)
        transfer = vllm_config.kv_transfer_config
        identity = transfer.get_from_extra_config(IDENTITY_CONFIG_KEY, "")
        if not identity:
            raise ValueError(f"{IDENTITY_CONFIG_KEY} is missing from kv_connector_extra_config: the appliance "
                             "writes it; a connector without it would share KV across identities")
        self._kv_identity = str(identity)
        self._skip_useless_lookup = bool(transfer.get_from_extra_config(SKIP_LOOKUP_CONFIG_KEY, False))
        self.lookups_skipped = 0
        adapter = getattr(self, "scheduler_adapter", None)  # the scheduler's connector only
        if adapter is not None:
            bound_status_waits(adapter)

    def _get_or_create_request_tracker(self, request: Any) -> Any:
        tracker = super()._get_or_create_request_tracker(request)
        # Idempotent (derived from the request, not from the tracker), so a tracker seen twice is unchanged.
        tracker.cache_salt = request_salt(self._kv_identity, getattr(request, "lora_request", None),
                                          getattr(request, "cache_salt", None))
        return tracker

    def get_num_new_matched_tokens(self, request: Any, num_computed_tokens: int) -> tuple[int | None, bool]:
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
