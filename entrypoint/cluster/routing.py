"""Where a request goes, from LMCache's coordinator: pure placement logic, no I/O.

LMCache's coordinator (`lmcache coordinator`) keeps a directory fed by its servers' cache events
(`--coordinator-url` + `--coordinator-event-reporting`, or LMCACHE_COORDINATOR_URL / _EVENT_REPORTING): each
object key -> its placements (instance_id, tier l1/l2, backend, shared). POST /directory/lookup resolves a
request's token ids to those placements with the fleet's chunk size and hash. vllm-router 0.1.17 has no policy
that asks it, so the appliance's router (router.py) and the cluster bench (bench/cluster.py) do, per
request: the request's tokens (a replica's /tokenize), the lookup, then the replica whose LMCache server holds
the longest prefix (docs/SCALE-OUT.md "LMCache's coordinator")."""
from __future__ import annotations

from collections.abc import Iterable, Sequence

# The requests placed by where their prompt's KV cache is; every other one goes to the least loaded replica.
PLACED_PATHS = ("/v1/completions", "/v1/chat/completions")


class NoReplica(RuntimeError):
    """No healthy replica may take the request."""


def held_prefix(results: list[dict]) -> dict[str, int]:
    """From a /directory/lookup answer: per instance_id, how many leading chunks of the request it holds.
    The answer lists the request's keys in chunk order (one per chunk and object group); a chunk counts for an
    instance when any of its keys has a placement there. A placement on a shared backend (a store every
    server reads alike) counts for every instance; "*" is the prefix held by shared placements alone."""
    order: dict = {}
    held: list[set] = []
    for r in results:
        h = (r.get("key") or {}).get("chunk_hash_hex")
        if h not in order:
            order[h] = len(held)
            held.append(set())
        for p in r.get("placements") or []:
            held[order[h]].add("*" if p.get("shared") else p.get("instance_id"))
    out = {}
    for inst in set().union(set(), *held):
        n = 0
        for s in held:
            if inst not in s and "*" not in s:
                break
            n += 1
        out[inst] = n
    out.setdefault("*", 0)
    return out


def choose_replica(prefix: dict[str, int], replica_of: dict[str, int], inflight: Sequence[int], turn: int,
                   healthy: Sequence[bool] | None = None) -> tuple[int, int]:
    """(replica, chunks it holds): the longest held prefix wins; among equals the fewest requests in flight,
    then the turn (round robin). Instances that are not one of the replicas' servers are ignored, and so are
    replicas that are not healthy (`healthy[i]` false). ValueError when no replica may take the request."""
    allowed = [i for i in range(len(inflight)) if healthy is None or healthy[i]]
    if not allowed:
        raise ValueError("no healthy replica")
    best = {i: prefix.get("*", 0) for i in allowed}
    for inst, n in prefix.items():
        i = replica_of.get(inst)
        if i in best:
            best[i] = max(best[i], n)
    top = max(best.values())
    tied = [i for i in allowed if best[i] == top]
    least = min(inflight[i] for i in tied)
    tied = [i for i in tied if inflight[i] == least]
    return tied[turn % len(tied)], top


def match_instances(instances: Iterable[dict], replicas: Sequence[tuple[frozenset[str], int | None]]) -> dict[str, int]:
    """instance_id -> replica index, from the coordinator's /instances (each server's `ip` and `http_port`).
    `replicas[i]` is (the IP addresses replica i's host resolves to, the HTTP port of its LMCache server or
    None for any). A server matches a replica by its IP address and, where given, its port; one that matches
    several replicas (several replicas on one address and no port to tell them apart) is left out: routing
    by it could send a prompt to the wrong replica, and leaving it out only costs its hits."""
    out: dict[str, int] = {}
    for inst in instances:
        if not isinstance(inst, dict) or not isinstance(inst.get("instance_id"), str):
            continue
        ip, port = inst.get("ip"), inst.get("http_port")
        hits = [i for i, (ips, want) in enumerate(replicas) if ip in ips and (want is None or want == port)]
        if len(hits) == 1:
            out[inst["instance_id"]] = hits[0]
    return out


# The fields of a chat request that change its rendered prompt, hence its tokens: vLLM's TokenizeChatRequest
# takes them as its chat completion request does (tests/contract/test_coordinator_router.py checks both).
CHAT_RENDER_FIELDS = ("add_generation_prompt", "continue_final_message", "chat_template", "chat_template_kwargs",
                      "tools", "add_special_tokens", "mm_processor_kwargs", "media_io_kwargs")


def tokenize_body(path: str, body: dict) -> dict | None:
    """What vLLM's POST /tokenize takes for a completion or chat request (the same text, so the same tokens
    vLLM will compute KV for), or None when there is nothing to tokenize (no prompt, a batch of prompts)."""
    model = body.get("model")
    if path.endswith("/chat/completions"):
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return None
        out: dict[str, object] = {"messages": messages}
        for k in CHAT_RENDER_FIELDS:
            if k in body:  # these change the rendered prompt, hence its tokens
                out[k] = body[k]
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            return None  # token ids, or a batch: placement by its first prompt only would mislead
        out = {"prompt": prompt}
        if "add_special_tokens" in body:
            out["add_special_tokens"] = body["add_special_tokens"]
    if isinstance(model, str):
        out["model"] = model
    return out
