"""The pure parts of the cross-replica benchmark (bench/cluster.py): the crossover length, the effective
bandwidth, the report and its verdicts; its RESP client against a real redis-server where one is installed."""
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import cluster

from ports import free_port

REPO = Path(__file__).resolve().parents[2]

KV_8B = 131072  # bytes of KV per token, Llama-3-8B shape, bf16
OBJ = 256 * KV_8B  # one LMCache object: a chunk of 256 tokens


# --- crossover and bandwidth -----------------------------------------------------------------------------

def test_crossover_from_the_first_length_where_the_hit_wins_for_good():
    points = [(4000, 0.30, 0.10), (8000, 0.50, 0.25), (16000, 0.45, 0.60), (24000, 0.60, 1.00), (32000, 0.8, 1.5)]
    got = cluster.crossover(points)
    assert got["from_tokens"] == 16000 and not got["below_range"]
    # ratio 2.0 at 8000, 0.75 at 16000: 1.0 is crossed 80% of the way
    assert got["interpolated_tokens"] == 8000 + round((2.0 - 1.0) * 8000 / (2.0 - 0.75))


def test_crossover_ignores_an_early_win_that_does_not_last():
    points = [(4000, 0.09, 0.10), (8000, 0.30, 0.25), (16000, 0.40, 0.60)]
    assert cluster.crossover(points)["from_tokens"] == 16000


def test_crossover_when_the_hit_always_or_never_wins():
    assert cluster.crossover([(4000, 0.05, 0.1), (8000, 0.1, 0.3)]) == \
        {"from_tokens": 4000, "interpolated_tokens": None, "below_range": True}
    never = cluster.crossover([(4000, 0.2, 0.1), (8000, 0.4, 0.3)])
    assert never["from_tokens"] is None and never["interpolated_tokens"] is None
    assert cluster.crossover([(4000, None, 0.1)])["from_tokens"] is None


def test_loaded_bytes_counts_full_chunks_only():
    assert cluster.loaded_bytes(16000, KV_8B) == 62 * OBJ
    assert cluster.loaded_bytes(255, KV_8B) == 0
    assert cluster.loaded_bytes(512, KV_8B, object_bytes=1000) == 2000  # the store's own object size wins


def test_effective_bandwidth_is_bytes_over_the_extra_time():
    assert cluster.effective_gb_per_s(2e9, 0.6, 0.1) == pytest.approx(4.0)
    assert cluster.effective_gb_per_s(2e9, 0.1, 0.1) is None  # no extra time: not a measurement
    assert cluster.effective_gb_per_s(2e9, None, 0.1) is None
    assert cluster.effective_gb_per_s(0, 0.5, 0.1) is None


def test_host_port():
    assert cluster.host_port("redis://kv-store:6390") == ("kv-store", 6390)
    assert cluster.host_port("127.0.0.1:7000") == ("127.0.0.1", 7000)
    assert cluster.host_port("kv-store") == ("kv-store", 6379)
    assert cluster.host_port("[::1]:6380") == ("::1", 6380)


# --- report ----------------------------------------------------------------------------------------------

def pair_rows(label, by_n, object_bytes=OBJ):
    rows = []
    for n, phases in by_n.items():
        for phase, ttft in phases.items():
            rows.append({"bench": "cluster_pair", "label": label, "phase": phase, "tokens": n, "seed": 0,
                         "ttft_s": ttft, "ok": True,
                         **({"object_bytes": object_bytes, "external_hit_tokens": n // 256 * 256}
                            if phase == "reader_hit" else {})})
    rows.append({"bench": "cluster_pair", "label": label, "phase": "reader_hit", "tokens": 16000, "seed": 1,
                 "ttft_s": 99.0, "ok": False, "error": "HTTP 500"})  # a failed request counts in no median
    return rows


SYNTHETIC = (
    pair_rows("store", {
        8000: {"reader_recompute": 0.20, "writer_cold": 0.21, "reader_hit": 0.40, "reader_gpu_hit": 0.03,
               "reader_after_reset": 0.10},
        16000: {"reader_recompute": 0.50, "writer_cold": 0.52, "reader_hit": 0.45, "reader_gpu_hit": 0.05,
                "reader_after_reset": 0.15},
        32000: {"reader_recompute": 1.40, "writer_cold": 1.45, "reader_hit": 0.85, "reader_gpu_hit": 0.05,
                "reader_after_reset": 0.30}})
    + pair_rows("shared-server", {16000: {"reader_recompute": 0.50, "writer_cold": 0.5, "reader_hit": 0.10,
                                          "reader_gpu_hit": 0.05, "reader_after_reset": 0.10}})
    + [{"bench": "cluster_plain_read", "label": "plain", "client": "raw-socket (python)", "ok": True, "gb_per_s": 8.0,
        "object_bytes": OBJ, "objects": 64, "parallel": 8, "rounds_gb_per_s": [8.0]},
       {"bench": "cluster_plain_read", "label": "plain", "client": "redis-benchmark", "ok": True, "gb_per_s": 5.0,
        "object_bytes": OBJ, "objects": 64, "parallel": 8},
       {"bench": "cluster_route", "label": "2x-cache_aware", "policy": "cache_aware", "replicas": 2, "requests": 100,
        "failed": 0, "ttft_p50_s": 0.1, "ttft_p90_s": 0.3, "tokens_per_s": 50000.0, "requests_per_s": 4.0,
        "per_replica": {"http://a": {"vllm:request_success_total": 90.0},
                        "http://b": {"vllm:request_success_total": 10.0}},
        "params": {"users": 24, "rounds": 10}},
       {"bench": "cluster_outage", "label": "store-outage", "down_s": 5, "load_requests": 40, "load_failed": 0,
        "load_max_s": 0.2, "writer_ok_while_down": True, "store_writes_back_s": 1.5, "reader_hits_back_s": 4.0}])


def test_report_tables_crossover_and_targets():
    summary, md = cluster.build_report(SYNTHETIC, KV_8B)
    targets = {t["target"]: t for t in summary["targets"]}
    # (a) 0.10 / 0.50 = 0.2x recompute: under 0.25x
    a = targets["shared-server: reader hit at 16000 tok x recompute"]
    assert a["value"] == pytest.approx(0.2) and a["verdict"] == "pass"
    # (b) ratios 2.0, 0.9, 0.61: the crossing between 8000 and 16000 tokens
    cross = summary["labels"]["store"]["crossover"]
    assert cross["from_tokens"] == 16000 and 8000 < cross["interpolated_tokens"] < 16000
    assert targets["store: store hit beats recompute from (tokens)"]["verdict"] == "pass"
    # at 32000: 125 chunks x 32 MiB over 0.80 s = 5.24 GB/s, 65.5% of the best plain client (8 GB/s)
    eff = targets["store: effective store read at 32000 tok, % of the plain client"]
    assert eff["value"] == pytest.approx(100 * 125 * OBJ / 0.80 / 1e9 / 8.0)
    assert eff["verdict"] == "pass"
    assert "| 2x-cache_aware | 2" in md and "90 / 10" in md
    assert "| 5      | 40" in md  # the outage row
    assert "crossing ~" in md
    assert "| 16000  | 2.08  |" in md and "| 15872 " in md  # the KV of 62 full chunks, the tokens LMCache gave vLLM


def test_report_misses_are_misses():
    slow = pair_rows("store", {16000: {"reader_recompute": 0.5, "reader_hit": 2.0, "reader_gpu_hit": 0.05}}) + [
        {"bench": "cluster_plain_read", "client": "raw-socket (python)", "ok": True, "gb_per_s": 10.0,
         "object_bytes": OBJ, "objects": 64, "parallel": 8}]
    summary, md = cluster.build_report(slow, KV_8B)
    verdicts = {t["target"]: t["verdict"] for t in summary["targets"]}
    assert verdicts["store: store hit beats recompute from (tokens)"] == "n/a"  # never won: no length to report
    assert verdicts["store: effective store read at 16000 tok, % of the plain client"] == "miss"
    assert "never beat recompute" in md


def test_report_without_rows_is_an_error():
    with pytest.raises(cluster.c.BenchError):
        cluster.build_report([{"bench": "reuse"}], KV_8B)


def test_report_command_writes_the_files(tmp_path):
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in SYNTHETIC))
    out = subprocess.run([sys.executable, "-m", "bench.cluster", "report", "--results", str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert "### Targets (issue 15)" in out.stdout
    assert json.loads((tmp_path / "cluster.json").read_text())["targets"]
    assert (tmp_path / "cluster.md").read_text().startswith("### shared-server")


# --- the RESP client against a real Redis ----------------------------------------------------------------



@pytest.fixture
def redis_addr(tmp_path):
    exe = shutil.which("redis-server")
    if not exe:
        pytest.skip("no redis-server here (scripts/ci/install-redis.sh installs it)")
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    addr = f"127.0.0.1:{port}"
    try:
        for _ in range(100):
            if cluster.ping(addr):
                break
            time.sleep(0.05)
        yield addr
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_resp_client_store_info_and_plain_read(redis_addr):
    host, port = cluster.host_port(redis_addr)
    with cluster.Resp(host, port) as r:
        r.cmd("SET", "model@00000000@0@abc", b"\x00\x01" * 500)
        assert r.cmd("GET", "missing") is None
        buf = memoryview(bytearray(1000))
        assert r.get_into("model@00000000@0@abc", buf) == 1000 and bytes(buf[:2]) == b"\x00\x01"
        with pytest.raises(cluster.RespError):
            r.cmd("NOSUCHCOMMAND")
    info = cluster.store_info(redis_addr)
    assert info["keys"] == 1 and info["object_bytes"] == 1000 and info["used_memory"] > 0
    got = cluster.plain_read(redis_addr, object_bytes=4096, objects=10, parallel=3, reps=2)
    assert got["gb_per_s"] > 0 and len(got["rounds_gb_per_s"]) == 2
    assert cluster.store_info(redis_addr)["keys"] == 1  # its own objects deleted again


def test_wait_store_returns_when_the_keys_arrive_or_stop_moving(redis_addr, monkeypatch):
    host, port = cluster.host_port(redis_addr)
    with cluster.Resp(host, port) as r:
        for i in range(3):
            r.cmd("SET", f"k{i}", "v")
    looks, store_info = [], cluster.store_info
    monkeypatch.setattr(cluster, "store_info", lambda addr: looks.append(addr) or store_info(addr))
    # the keys are there: it returns on its first look, neither the quiet time nor the timeout is what ends it
    assert cluster.wait_store(redis_addr, before=0, expect_new=3, quiet_s=600, timeout=600)["store_new_keys"] == 3
    assert looks == [redis_addr]
    monkeypatch.undo()
    quiet = cluster.wait_store(redis_addr, before=0, expect_new=10, quiet_s=0.3)
    assert quiet["store_new_keys"] == 3 and quiet["store_wait_s"] >= 0.3
    down = cluster.wait_store("127.0.0.1:1", before=0, expect_new=1)
    assert down["store_new_keys"] is None and "store_error" in down


def test_scrape_sums_the_counters_over_their_label_sets_with_the_appliances_parser():
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    text = ("# HELP vllm:prefix_cache_hits_total hits\n# TYPE vllm:prefix_cache_hits_total counter\n"
            'vllm:prefix_cache_hits_total{engine="0",model_name="m"} 5.0\n'
            'vllm:prefix_cache_hits_total{engine="1",model_name="m {x}"} 7.0\n'
            "vllm:prefix_cache_hits_created 1.7e9\n"
            "# TYPE vllm:other_total counter\nvllm:other_total 3.0\n").encode()

    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        got = cluster.scrape(f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
    assert got == {"vllm:prefix_cache_hits_total": 12.0}  # only METRICS, summed; the _created sample is not one
    assert cluster.scrape("http://127.0.0.1:1") == {}  # nothing answers
