"""Placement by LMCache's coordinator (entrypoint/cluster/routing.py: the appliance's router and the cluster
bench's client-side router share it): which replica a /directory/lookup answer sends a request to. The real
coordinator's answers: tests/contract/test_coordinator.py and test_coordinator_router.py."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import cluster
from entrypoint.cluster import routing
from entrypoint.cluster.routing import (
    choose_replica,
    held_prefix,
    match_instances,
    tokenize_body,
)


def key(chunk):
    return {"chunk_hash_hex": f"{chunk:064x}", "model_name": "m", "kv_rank": 0, "object_group_id": 0, "cache_salt": ""}


def placed(*where, shared=False):
    return [{"instance_id": i, "incarnation": 1, "tier": "l1", "backend": "dram", "size_bytes": 1, "shared": shared}
            for i in where]


def answer(*chunks):
    return [{"key": key(n), "placements": p, "token_ids": [], "access_count": 0} for n, p in enumerate(chunks)]


def test_held_prefix_counts_leading_chunks_per_instance():
    got = held_prefix(answer(placed("a", "b"), placed("a", "b"), placed("a"), placed("b"), placed("a")))
    assert got == {"a": 3, "b": 2, "*": 0}  # b's 4th chunk is past a hole: not a prefix


def test_held_prefix_a_shared_placement_counts_for_everyone():
    got = held_prefix(answer(placed("x", shared=True), placed("a"), placed("x", shared=True), []))
    assert got == {"a": 3, "*": 1}


def test_held_prefix_several_keys_of_one_chunk_are_one_chunk():
    rows = answer(placed("a"), placed("b"))
    rows.insert(1, {"key": key(0) | {"object_group_id": 1}, "placements": placed("b")})  # chunk 0, group 1
    assert held_prefix(rows) == {"a": 1, "b": 2, "*": 0}


def test_held_prefix_of_nothing():
    assert held_prefix([]) == {"*": 0}
    assert held_prefix(answer([], [])) == {"*": 0}


def test_choose_the_longest_prefix_then_the_least_loaded_then_the_turn():
    replica_of = {"srv-a": 0, "srv-b": 1}
    assert choose_replica({"srv-a": 2, "srv-b": 5, "*": 0}, replica_of, [9, 0], 0) == (1, 5)
    assert choose_replica({"srv-a": 5, "srv-b": 5, "*": 0}, replica_of, [3, 1], 0) == (1, 5)
    assert choose_replica({"*": 0}, replica_of, [1, 1], 0) == (0, 0)
    assert choose_replica({"*": 0}, replica_of, [1, 1], 1) == (1, 0)
    # an instance that is no replica's server (another fleet member) is ignored; shared chunks count for all
    assert choose_replica({"srv-z": 9, "*": 3}, replica_of, [0, 2], 0) == (0, 3)


def test_the_report_shows_the_coordinator_run_and_the_outage_recovery():
    route = {"bench": "cluster_route", "label": "coord-2x-coordinator", "policy": "coordinator", "replicas": 2,
             "requests": 10, "failed": 0, "ttft_p50_s": 0.2, "ttft_p90_s": 0.4, "tokens_per_s": 1000,
             "requests_per_s": 2, "per_replica": {}, "route_p50_s": 0.004, "route_p90_s": 0.009,
             "held_share_mean": 0.83, "route_errors": 1, "params": {"users": 24}}
    outage = {"bench": "cluster_outage", "label": "store-outage", "down_s": 5, "load_requests": 90, "load_failed": 0,
              "load_max_s": 0.3, "writer_ok_while_down": True, "lmcache_restarted_s": 10.2,
              "store_writes_back_s": 24.0, "reader_hits_back_s": 27.5}
    _, md = cluster.build_report([route, outage], 131072)
    assert "routing p50 0.004 s, p90 0.009 s" in md and "held 83 %" in md and "1 routing errors" in md
    row = next(line for line in md.splitlines() if line.startswith("| 5 "))
    assert [cell.strip() for cell in row.strip("|").split("|")][5:] == ["10.200", "24.000", "27.500"]


def test_the_bench_uses_the_products_placement():
    assert cluster.held_prefix is routing.held_prefix and cluster.choose_replica is routing.choose_replica


def test_unhealthy_replicas_are_never_chosen():
    replica_of = {"srv-a": 0, "srv-b": 1}
    assert choose_replica({"srv-a": 2, "srv-b": 5, "*": 0}, replica_of, [0, 0], 0, [True, False]) == (0, 2)
    with pytest.raises(ValueError, match="no healthy replica"):
        choose_replica({"*": 0}, replica_of, [0, 0], 0, [False, False])


# -- properties --------------------------------------------------------------------------------------------
INSTANCES = ["a", "b", "c", "z"]
chunks = st.lists(st.lists(st.tuples(st.sampled_from(INSTANCES), st.booleans()), max_size=4), max_size=8)


def brute_prefix(rows: list[list[tuple[str, bool]]], inst: str) -> int:
    n = 0
    for placements in rows:
        if not any(i == inst or shared for i, shared in placements):
            break
        n += 1
    return n


def as_answer(rows):
    return [{"key": key(n), "placements": [{"instance_id": i, "shared": sh} for i, sh in p]}
            for n, p in enumerate(rows)]


@given(chunks)
def test_held_prefix_is_the_leading_run_of_chunks_each_instance_can_read(rows):
    got = held_prefix(as_answer(rows))
    for inst in INSTANCES:  # an instance absent from the answer reads what shared placements give everyone
        assert got.get(inst, got["*"]) == brute_prefix(rows, inst) <= len(rows)
    assert got["*"] == brute_prefix(rows, "*")
    assert all(n >= got["*"] for n in got.values())


@given(chunks, chunks)
def test_held_prefix_never_shrinks_when_the_request_grows(rows, more):
    short, long_ = held_prefix(as_answer(rows)), held_prefix(as_answer(rows + more))
    for inst, n in short.items():
        assert long_.get(inst, long_["*"]) >= n


@given(st.dictionaries(st.sampled_from(INSTANCES + ["*"]), st.integers(0, 9)),
       st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=1, max_size=5), st.integers(0, 100))
def test_the_choice_is_healthy_holds_the_longest_prefix_and_is_least_loaded_among_equals(prefix, reps, turn):
    inflight = [n for n, _ in reps]
    healthy = [h for _, h in reps]
    replica_of = {inst: i for i, inst in enumerate(INSTANCES) if i < len(reps)}
    if not any(healthy):
        with pytest.raises(ValueError):
            choose_replica(prefix, replica_of, inflight, turn, healthy)
        return
    i, held = choose_replica(prefix, replica_of, inflight, turn, healthy)
    assert healthy[i]

    def holds(r):
        return max([prefix.get("*", 0)] + [n for inst, n in prefix.items() if replica_of.get(inst) == r])

    assert held == holds(i) == max(holds(r) for r in range(len(reps)) if healthy[r])
    assert inflight[i] == min(inflight[r] for r in range(len(reps)) if healthy[r] and holds(r) == held)


def test_servers_are_matched_to_replicas_by_address_and_port():
    instances = [{"instance_id": "s0", "ip": "10.0.0.1", "http_port": 8080},
                 {"instance_id": "s1", "ip": "10.0.0.2", "http_port": 8080},
                 {"instance_id": "s2", "ip": "127.0.0.1", "http_port": 38080},
                 {"instance_id": "s3", "ip": "127.0.0.1", "http_port": 38081},
                 {"instance_id": "other", "ip": "10.9.9.9", "http_port": 8080}, "junk", {"ip": "10.0.0.1"}]
    replicas = [(frozenset({"10.0.0.1"}), None), (frozenset({"10.0.0.2", "fd00::2"}), None),
                (frozenset({"127.0.0.1"}), 38081)]
    assert match_instances(instances, replicas) == {"s0": 0, "s1": 1, "s3": 2}
    # two replicas on one address and no port to tell them apart: their servers are left out, not guessed
    assert match_instances(instances, [(frozenset({"127.0.0.1"}), None)] * 2) == {}


def test_what_is_tokenized_is_what_vllm_renders():
    assert tokenize_body("/v1/completions", {"model": "m", "prompt": "hi", "max_tokens": 3}) == \
        {"model": "m", "prompt": "hi"}
    assert tokenize_body("/v1/completions", {"model": "m", "prompt": ["hi"]}) == {"model": "m", "prompt": "hi"}
    for prompt in (["a", "b"], [1, 2, 3], "", None, 7):  # a batch, token ids, nothing: no placement
        assert tokenize_body("/v1/completions", {"model": "m", "prompt": prompt}) is None
    msgs = [{"role": "user", "content": "hi"}]
    assert tokenize_body("/v1/chat/completions", {"model": "m", "messages": msgs, "tools": [], "stream": True,
                                                   "add_generation_prompt": True}) == \
        {"model": "m", "messages": msgs, "tools": [], "add_generation_prompt": True}
    assert tokenize_body("/v1/chat/completions", {"model": "m", "messages": "hi"}) is None


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                      max_size=3), max_leaves=10)


@given(st.sampled_from(["/v1/completions", "/v1/chat/completions"]),
       st.dictionaries(st.sampled_from(["model", "prompt", "messages", "tools", "add_special_tokens", "x"]),
                       json_values, max_size=5))
def test_any_request_body_gives_a_tokenize_body_or_none(path, body):
    out = tokenize_body(path, body)
    assert out is None or ("prompt" in out) != ("messages" in out)
    if out is not None and "prompt" in out:
        assert isinstance(out["prompt"], str) and out["prompt"]
