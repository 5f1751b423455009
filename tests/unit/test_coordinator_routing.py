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
