"""The coordinator routing of the cluster bench (scripts/bench/cluster.py): which replica a
/directory/lookup answer sends a request to. The real coordinator's answers: tests/contract/test_coordinator.py."""
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "scripts" / "bench"
sys.path.insert(0, str(BENCH))
import cluster


def key(chunk):
    return {"chunk_hash_hex": f"{chunk:064x}", "model_name": "m", "kv_rank": 0, "object_group_id": 0, "cache_salt": ""}


def placed(*where, shared=False):
    return [{"instance_id": i, "incarnation": 1, "tier": "l1", "backend": "dram", "size_bytes": 1, "shared": shared}
            for i in where]


def answer(*chunks):
    return [{"key": key(n), "placements": p, "token_ids": [], "access_count": 0} for n, p in enumerate(chunks)]


def test_held_prefix_counts_leading_chunks_per_instance():
    got = cluster.held_prefix(answer(placed("a", "b"), placed("a", "b"), placed("a"), placed("b"), placed("a")))
    assert got == {"a": 3, "b": 2, "*": 0}  # b's 4th chunk is past a hole: not a prefix


def test_held_prefix_a_shared_placement_counts_for_everyone():
    got = cluster.held_prefix(answer(placed("x", shared=True), placed("a"), placed("x", shared=True), []))
    assert got == {"a": 3, "*": 1}


def test_held_prefix_several_keys_of_one_chunk_are_one_chunk():
    rows = answer(placed("a"), placed("b"))
    rows.insert(1, {"key": key(0) | {"object_group_id": 1}, "placements": placed("b")})  # chunk 0, group 1
    assert cluster.held_prefix(rows) == {"a": 1, "b": 2, "*": 0}


def test_held_prefix_of_nothing():
    assert cluster.held_prefix([]) == {"*": 0}
    assert cluster.held_prefix(answer([], [])) == {"*": 0}


def test_choose_the_longest_prefix_then_the_least_loaded_then_the_turn():
    replica_of = {"srv-a": 0, "srv-b": 1}
    assert cluster.choose_replica({"srv-a": 2, "srv-b": 5, "*": 0}, replica_of, [9, 0], 0) == (1, 5)
    assert cluster.choose_replica({"srv-a": 5, "srv-b": 5, "*": 0}, replica_of, [3, 1], 0) == (1, 5)
    assert cluster.choose_replica({"*": 0}, replica_of, [1, 1], 0) == (0, 0)
    assert cluster.choose_replica({"*": 0}, replica_of, [1, 1], 1) == (1, 0)
    # an instance that is no replica's server (another fleet member) is ignored; shared chunks count for all
    assert cluster.choose_replica({"srv-z": 9, "*": 3}, replica_of, [0, 2], 0) == (0, 3)
