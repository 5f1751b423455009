"""The pure parts of bench/loadfaults.py: the per-window table, the fault summary the issue's targets
read, the report and chart. A run against the stub vLLM under real supervisord is
tests/supervisor/test_loadfaults_run.py."""
import importlib.util
import json
from pathlib import Path

import pytest

from bench import common, loadfaults


def rec(start, end, ok=True, error=None, ttft=0.1):
    return {"start": start, "end": end, "ok": ok, "error": None if ok else error, "ttft_s": ttft if ok else None,
            "kind": "random"}


def test_windows_count_by_end_time_with_ttft_percentiles_of_successes():
    records = [rec(0, 1, ttft=0.1), rec(0, 3, ttft=0.3), rec(1, 9.5, ttft=0.9), rec(2, 12, ok=False, error="reset"),
               rec(12, 12.5, ok=False, error="503-gap"), rec(13, 20, ttft=2.0)]
    ws = loadfaults.windows(records, 20, 10)
    assert [(w["start"], w["end"], w["ok"], w["errors"]) for w in ws] == [(0, 10, 3, 0), (10, 20, 1, 2)]
    assert ws[0]["ttft_p50"] == pytest.approx(0.3) and ws[0]["ttft_p90"] == pytest.approx(0.78)
    assert ws[1]["error_kinds"] == {"reset": 1, "503-gap": 1}
    assert ws[1]["ttft_p50"] == 2.0  # the request ending exactly at the end of the run is in the last window


def test_windows_of_a_partial_last_window_and_an_empty_one():
    ws = loadfaults.windows([rec(0, 1)], 25, 10)
    assert [(w["start"], w["end"]) for w in ws] == [(0, 10), (10, 20), (20, 30)]
    assert ws[1] == {"start": 10, "end": 20, "ok": 0, "errors": 0, "error_kinds": {}, "ttft_p50": None,
                     "ttft_p90": None, "shared_ttft_p50": None}


def test_summary_separates_in_flight_failures_from_later_ones():
    fault = 10.0
    records = [
        rec(5, 9),                                   # done before the fault
        rec(8, 11, ok=False, error="reset"),         # in flight at the fault, failed
        rec(9, 12),                                  # in flight, saved
        rec(11, 12, ok=False, error="503-gap"),      # started 1 s after: within the first 5 s
        rec(16, 17, ok=False, error="refused"),      # started 6 s after: late
        rec(17, 18),                                 # the first success after the last failure ended
        rec(18, 19),
    ]
    s = loadfaults.summary(records, fault)
    assert (s["in_flight_at_fault"], s["failed_in_flight"]) == (2, 1)
    assert (s["failed_started_after"], s["failed_started_late"]) == (2, 1)
    assert s["error_kinds"] == {"reset": 1, "503-gap": 1, "refused": 1}
    assert s["last_error_end_s"] == 7.0 and s["recovered_s"] == 8.0
    assert (s["requests"], s["ok"], s["errors"]) == (7, 4, 3)


def test_summary_without_a_fault_or_failures():
    s = loadfaults.summary([rec(0, 1), rec(1, 2)], None)
    assert s["errors"] == 0 and s["in_flight_at_fault"] is None
    s = loadfaults.summary([rec(0, 1), rec(1, 2)], 1.5)
    assert s["failed_in_flight"] == 0 and s["last_error_end_s"] is None and s["recovered_s"] is None


def test_classify_the_ways_a_request_fails():
    import http.client
    assert loadfaults.classify(ConnectionRefusedError()) == "refused"
    assert loadfaults.classify(ConnectionResetError()) == "reset"
    assert loadfaults.classify(http.client.RemoteDisconnected("x")) == "reset"
    assert loadfaults.classify(TimeoutError()) == "timeout"
    assert loadfaults.classify(OSError("boom")) == "OSError"


def test_workload_mixes_shared_prefixes_and_random_prompts():
    a = loadfaults.parser().parse_args(["run", "--label", "x", "--results", "/tmp/x", "--prefixes", "3",
                                        "--prefix-tokens", "64", "--min-tokens", "10", "--max-tokens", "20"])
    load = loadfaults.Workload(a, seed=1)
    drawn = [load.next() for _ in range(200)]
    shared = [p for kind, p in drawn if kind == "shared"]
    random_ = [p for kind, p in drawn if kind == "random"]
    assert 60 < len(shared) < 140  # --shared-share 0.5
    assert {tuple(p[:64]) for p in shared} <= {tuple(x) for x in load.prefixes} and len(load.prefixes) == 3
    assert all(len(p) == 64 + 32 for p in shared) and all(10 <= len(p) <= 20 for p in random_)


def test_report_writes_markdown_json_and_chart(tmp_path):
    row = {"bench": "loadfaults", "label": "lmcache-server", "fault": "kill-lmcache", "fault_at": 10.0, "clients": 4,
           "windows": loadfaults.windows([rec(0, 5), rec(8, 12, ok=False, error="reset"), rec(12, 19)], 20, 10),
           "summary": loadfaults.summary([rec(0, 5), rec(8, 12, ok=False, error="reset"), rec(12, 19)], 10.0)}
    common.append_rows(tmp_path, [row])
    assert loadfaults.main(["report", "--results", str(tmp_path)]) == 0
    md = (tmp_path / "loadfaults.md").read_text()
    assert "| lmcache-server | kill-lmcache | 10 s" in md and "1/1" in md and "reset 1" in md
    assert "| 10-20" in md
    assert json.loads((tmp_path / "loadfaults.json").read_text())["runs"][0]["label"] == "lmcache-server"
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "loadfaults.png").stat().st_size > 1000
    else:
        pytest.skip("matplotlib is not installed: no chart to check")


def test_unknown_fault_is_an_error():
    a = loadfaults.parser().parse_args(["run", "--label", "x", "--results", "/tmp/x"])
    with pytest.raises(common.BenchError):
        loadfaults.inject(a, "unplug-the-gpu")


def test_tier_samples_per_window_disk_overshoot_and_cpu_tier_failures():
    gib = 2**30
    samples = [{"t": 1, "disk_bytes": 1 * gib, "l1_failures": 0.0},
               {"t": 5, "disk_bytes": 4 * gib, "l1_failures": 10.0},
               {"t": 11, "disk_bytes": int(4.4 * gib), "l1_failures": 25.0},
               {"t": 15, "disk_bytes": 3 * gib, "l1_failures": None}]
    ws = loadfaults.windows([], 20, 10)
    loadfaults.add_samples(ws, samples, cap_gib=4)
    assert (ws[0]["disk_peak_gib"], ws[0]["disk_over_cap_pct"], ws[0]["l1_alloc_failures"]) == (4.0, 0.0, 10.0)
    assert (ws[1]["disk_peak_gib"], ws[1]["disk_over_cap_pct"], ws[1]["l1_alloc_failures"]) == (4.4, 10.0, 15.0)
    s = loadfaults.tier_summary(samples, 4)
    assert s == {"disk_peak_gib": 4.4, "disk_cap_gib": 4, "disk_over_cap_pct": 10.0, "l1_alloc_failures": 25.0}
    assert loadfaults.tier_summary([], None)["disk_peak_gib"] is None


def test_metric_sum_adds_the_label_sets_of_one_family(tmp_path):
    text = ("# TYPE lmcache_mp_l1_allocation_failure_chunks_total counter\n"
            'lmcache_mp_l1_allocation_failure_chunks_total{during="l1_store",model_name="m"} 12.0\n'
            'lmcache_mp_l1_allocation_failure_chunks_total{during="l2_prefetch",model_name="m"} 3\n'
            "lmcache_mp_l1_allocation_failure_chunks_total_created 1.7e9\n")
    assert loadfaults.metric_sum(text, loadfaults.L1_FAILURES) == 15.0
    assert loadfaults.metric_sum("other 1\n", loadfaults.L1_FAILURES) is None
    fixture = Path(__file__).resolve().parents[1] / "stubs" / "fixtures" / "lmcache-0.5.6-metrics.txt"
    assert loadfaults.L1_FAILURES in fixture.read_text(), "the name LMCache 0.5.6 really exposes"
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_bytes(b"1" * 1000)
    (tmp_path / "y").write_bytes(b"1" * 24)
    assert loadfaults.dir_bytes(str(tmp_path)) == 1024


def test_hit_tokens_per_window_count_growth_across_a_server_restart():
    samples = [{"t": 1, "disk_bytes": None, "l1_failures": None, "hit_tokens": 100.0},
               {"t": 9, "disk_bytes": None, "l1_failures": None, "hit_tokens": 400.0},
               {"t": 12, "disk_bytes": None, "l1_failures": None, "hit_tokens": None},  # the server is down
               {"t": 15, "disk_bytes": None, "l1_failures": None, "hit_tokens": 0.0},  # restarted: from 0
               {"t": 19, "disk_bytes": None, "l1_failures": None, "hit_tokens": 250.0}]
    ws = loadfaults.windows([], 20, 10)
    loadfaults.add_samples(ws, samples, None)
    assert [w["hit_tokens"] for w in ws] == [300.0, 250.0]
    assert loadfaults.windows([rec(0, 1, ttft=0.5) | {"kind": "shared"}, rec(0, 2, ttft=2.0)], 10, 10)[0][
        "shared_ttft_p50"] == 0.5


def test_fill_disk_refuses_a_large_file_system(tmp_path):
    a = loadfaults.parser().parse_args(["run", "--label", "x", "--results", str(tmp_path), "--fill-max-gib", "0.001"])
    with pytest.raises(common.BenchError, match="not filled"):
        loadfaults.inject(a, f"fill-disk:{tmp_path}")
    assert list(tmp_path.iterdir()) == []
