"""LMCache 0.5.6's coordinator, for real, on a CPU: what the cluster bench's coordinator routing relies on
(bench/cluster.py `route --coordinator`; docs/SCALE-OUT.md "LMCache's coordinator").

`lmcache coordinator` and two `lmcache server` processes started from appliance plans with LMCache's own
LMCACHE_COORDINATOR_* variables (passed through to the server's environment); KV stored into each server by
LMCache's own server benchmark client (`lmcache bench server --mode cpu`, the lmcache-driven transfer over
shared memory: the store path vLLM's connector takes, without a GPU). Then the coordinator's directory names,
per chunk of a token sequence, the server that holds it, and the bench's router picks that server's replica.
vLLM's /tokenize (the one part of a replica the router asks) is a small HTTP stand-in here."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from bench import cluster

from .lmcache_fleet import HELLO, TOKENS, tokens_of
from .lmcache_fleet import fleet as start_fleet
from .lmcache_fleet import store as _store_kv
from ports import free_ports


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """The coordinator and two LMCache servers registered with it: (coordinator URL, [(zmq, http port)], tmp)."""
    with start_fleet(tmp_path_factory.mktemp("coordinator")) as f:
        yield f.coordinator, f.servers, f.tmp


def _store(zmq_port: int, http_port: int, seq: int, tmp: Path) -> None:
    _store_kv(zmq_port, http_port, seq)


class _Tokenize(BaseHTTPRequestHandler):
    """vLLM's POST /tokenize for prompts "seq N": the tokens LMCache's benchmark client stored for seq N."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        tokens = tokens_of(body["prompt"])
        data = json.dumps({"tokens": tokens, "count": len(tokens)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def replicas():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Tokenize)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    yield [url, url]
    server.shutdown()


def test_servers_register_and_the_directory_names_where_each_prefix_is(fleet):
    coordinator, servers, tmp = fleet
    deadline = time.monotonic() + 30
    while True:  # registration is the server's first heartbeat tick
        found = requests.get(coordinator + "/instances", timeout=5).json()["instances"]
        if len(found) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert sorted(i["http_port"] for i in found) == sorted(h for _, h in servers)
    by_port = {i["http_port"]: i["instance_id"] for i in found}

    _store(*servers[0], seq=1, tmp=tmp)
    _store(*servers[1], seq=2, tmp=tmp)
    expect = {1: by_port[servers[0][1]], 2: by_port[servers[1][1]]}

    def lookup(seq):
        r = requests.post(coordinator + "/directory/lookup", json={
            "token_ids": [seq] + [HELLO] * TOKENS, "model_name": "test-model", "world_size": 1}, timeout=10)
        assert r.status_code == 200, r.text
        return r.json()

    deadline = time.monotonic() + 30  # events are flushed to the coordinator every second
    while any(cluster.held_prefix(lookup(s)["results"]).get(i, 0) < 2 for s, i in expect.items()):
        assert time.monotonic() < deadline, {s: lookup(s) for s in expect}
        time.sleep(0.5)
    for seq, inst in expect.items():
        got = lookup(seq)
        assert got["chunks"] == TOKENS // 256
        for r in got["results"]:  # one key per chunk (one rank, one object group), held in L1 of that server only
            assert [(p["instance_id"], p["tier"], p["shared"]) for p in r["placements"]] == [(inst, "l1", False)]
            assert r["key"]["model_name"] == "test-model"
        assert cluster.held_prefix(got["results"]) == {inst: 2, "*": 0}
    # A sequence nobody stored: no placement anywhere.
    assert cluster.held_prefix(lookup(99)["results"]) == {"*": 0}
    # Another model's name (vLLM's model as the connector passes it) addresses other keys.
    other = requests.post(coordinator + "/directory/lookup", json={
        "token_ids": [1] + [HELLO] * TOKENS, "model_name": "other-model", "world_size": 1}, timeout=10).json()
    assert cluster.held_prefix(other["results"]) == {"*": 0}
    # Shorter than a chunk: nothing to look up.
    assert lookup(1)["chunks"] == 2 and requests.post(coordinator + "/directory/lookup", json={
        "token_ids": [1] * 100, "model_name": "test-model", "world_size": 1}, timeout=10).json()["chunks"] == 0


def test_the_bench_router_sends_each_prompt_to_the_server_that_holds_it(fleet, replicas):
    coordinator, servers, tmp = fleet
    router = cluster.CoordinatorRouter(coordinator, replicas, [h for _, h in servers], "m")
    assert sorted(router.wait_registered(timeout=30).values()) == [0, 1]
    _store(*servers[0], seq=11, tmp=tmp)
    _store(*servers[1], seq=12, tmp=tmp)
    deadline = time.monotonic() + 30
    while True:
        picks = {seq: router.pick(f"seq {seq}") for seq in (11, 12)}
        for i, _ in picks.values():
            router.done(i)
        if all(info["held_chunks"] == 2 for _, info in picks.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert router.lookup_model == "test-model"  # read from the directory's keys
    assert picks[11][0] == 0 and picks[12][0] == 1, picks
    for _, info in picks.values():
        assert info["chunks"] == 2 and info["held_chunks"] == 2 and info["route_error"] is None
        assert 0 < info["route_s"] < 5
    # Nobody holds it: the least loaded replica (replica 0 has a request in flight).
    busy, _ = router.pick("seq 12")
    assert busy == 1
    i, info = router.pick("seq 77")
    assert (i, info["held_chunks"]) == (0, 0)
    router.done(busy)
    router.done(i)


def test_a_coordinator_that_does_not_answer_fails_open(replicas):
    (port,) = free_ports(1)
    router = cluster.CoordinatorRouter(f"http://127.0.0.1:{port}", replicas, [1, 2], "m", lookup_model="test-model")
    picks = [router.pick("seq 1") for _ in range(2)]
    assert sorted(i for i, _ in picks) == [0, 1]  # the least loaded, then the other
    assert all("coordinator" in info["route_error"] or "Connection" in info["route_error"] for _, info in picks)
    with pytest.raises(cluster.c.BenchError, match="registered"):
        router.wait_registered(timeout=1)
