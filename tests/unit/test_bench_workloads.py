"""Issue 12's workload benchmarks (the bench package): long-document QA (longdoc.py), multi-round QA at a fixed
request rate (multiround.py --rate), start time next to a bare `vllm serve` (startup.py), the cold-request and
page-cache tables (reuse.py), the workloads suite's configuration words (bench/suite.py); and both workloads run
end to end against the stub vLLM (streaming), which is what the GPU suite does with the real one."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from bench import common, longdoc, multiround, reuse, startup, suite

from ports import free_port

REPO = Path(__file__).resolve().parents[2]


def args(**kw):
    return types.SimpleNamespace(**kw)


# --- longdoc: prompts ------------------------------------------------------------------------------------

LD = dict(doc_tokens=300, question_tokens=20, salt="t")


def test_longdoc_request_is_the_document_then_a_question_of_the_pass():
    a = args(**LD)
    p1, p2 = longdoc.prompt(a, 3, 1), longdoc.prompt(a, 3, 2)
    assert len(p1) == len(p2) == 320
    assert p1[:300] == p2[:300] == longdoc.document(a, 3)  # the document is what pass 2 reuses
    assert p1[300:] != p2[300:]  # another question each pass
    assert longdoc.prompt(a, 3, 1) == p1  # deterministic (every configuration sends the same)


def test_longdoc_documents_share_no_prefix():
    a = args(**LD)
    docs = [longdoc.document(a, d) for d in range(5)]
    assert len({tuple(d[:16]) for d in docs}) == 5


def test_longdoc_documents_outgrow_the_gpu_kv_cache():
    assert longdoc.documents_tokens(20, 10000) == 200000  # 6.1x the 32,768-token cap, 3.1x 65,536


# --- longdoc: report -------------------------------------------------------------------------------------

def ld_rows(label, pass1, pass2, failed_pass2=0):
    rows = [{"bench": "longdoc", "label": label, "pass": 1, "doc": i, "ttft_s": t, "ok": True}
            for i, t in enumerate(pass1)]
    rows += [{"bench": "longdoc", "label": label, "pass": 2, "doc": i, "ttft_s": t, "ok": True}
             for i, t in enumerate(pass2)]
    rows += [{"bench": "longdoc", "label": label, "pass": 2, "doc": 99, "ttft_s": None, "ok": False,
              "error": "HTTP 500"}] * failed_pass2
    rows.append({"bench": "longdoc_run", "label": label, "documents_tokens": 200000,
                 "params": {"docs": len(pass1), "doc_tokens": 10000, "question_tokens": 64, "output_tokens": 8,
                            "inflight": 1, "gpu_kv_tokens": 65536},
                 "pass1": {"wall_s": 6.0}, "pass2": {"wall_s": 3.0}})
    return rows


def test_longdoc_targets_pass():
    rows = (ld_rows("no-offload", [0.26, 0.28], [0.26, 0.28]) + ld_rows("native", [0.27] * 2, [0.09, 0.11])
            + ld_rows("lmcache", [0.27, 0.28], [0.05, 0.07]))
    summary, md = longdoc.build_report(rows, "no-offload", "lmcache", "native")
    s = summary["labels"]
    assert s["lmcache"]["pass2"]["mean_s"] == pytest.approx(0.06) and s["lmcache"]["pass1"]["p50_s"] == 0.275
    t = {x["target"]: x for x in summary["targets"]}
    assert t["lmcache: pass 2 mean TTFT x no-offload"]["value"] == pytest.approx(0.06 / 0.27)
    assert t["lmcache: pass 2 mean TTFT x no-offload"]["verdict"] == "pass"
    assert t["lmcache: pass 2 mean TTFT x native"]["value"] == pytest.approx(0.6)
    assert t["lmcache: pass 1 (cold) mean TTFT over no-offload"]["value"] == pytest.approx(100 * (0.275 / 0.27 - 1))
    assert all(x["verdict"] == "pass" for x in summary["targets"])
    assert md.index("| no-offload") < md.index("| native") < md.index("| lmcache")
    assert "200000 KV tokens, GPU KV cache 65536" in md


def test_longdoc_targets_miss_with_the_issues_numbers_and_na_without_native():
    # issue 12's table: no offload 0.265 / 0.265, LMCache server mode 0.287 / 0.109
    rows = ld_rows("no-offload", [0.265] * 4, [0.265] * 4) + ld_rows("lmcache", [0.287] * 4, [0.109] * 4,
                                                                     failed_pass2=1)
    summary, md = longdoc.build_report(rows, "no-offload", "lmcache", "native")
    v = [x["verdict"] for x in summary["targets"]]
    assert v == ["miss", "n/a", "miss"]  # 0.41x, no native run, +8.3 %
    assert summary["labels"]["lmcache"]["pass2"]["failed"] == 1
    assert "| 1/9" in md and "MISS" in md


def test_longdoc_report_uses_each_labels_last_run_and_writes_its_files(tmp_path):
    common.append_rows(tmp_path, ld_rows("lmcache", [9.0] * 2, [9.0] * 2))
    common.append_rows(tmp_path,
                       ld_rows("lmcache", [0.3] * 2, [0.05] * 2) + ld_rows("no-offload", [0.3] * 2, [0.3] * 2))
    assert longdoc.main(["report", "--results", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "longdoc.json").read_text())
    assert summary["labels"]["lmcache"]["pass2"]["mean_s"] == 0.05
    assert summary["labels"]["lmcache"]["pass1"]["requests"] == 2
    assert (tmp_path / "longdoc.md").read_text().startswith("### Long-document QA")


def test_longdoc_report_without_runs_fails_loudly(tmp_path):
    assert longdoc.main(["report", "--results", str(tmp_path)]) == 2


# --- multiround: the fixed-rate schedule, histories --------------------------------------------------------

def test_schedule_starts_request_k_at_k_over_rate_and_the_users_take_turns():
    plan = multiround.schedule(users=3, rounds=2, rate=2.0, max_seconds=60)
    assert plan == [(0.0, 0, 0), (0.5, 1, 0), (1.0, 2, 0), (1.5, 0, 1), (2.0, 1, 1), (2.5, 2, 1)]
    user0 = [t for t, u, _ in plan if u == 0]
    assert user0[1] - user0[0] == 3 / 2.0  # each user every users / rate seconds


def test_schedule_stops_at_max_seconds_and_keeps_each_users_rounds_in_order():
    plan = multiround.schedule(users=10, rounds=4, rate=0.9, max_seconds=45)
    assert len(plan) == 40 and plan[-1][0] == pytest.approx(39 / 0.9) and plan[-1][0] <= 45
    short = multiround.schedule(users=10, rounds=4, rate=0.9, max_seconds=30)
    assert len(short) == 28  # k / 0.9 <= 30
    for u in range(10):
        rounds = [r for _, uu, r in short if uu == u]
        assert rounds == sorted(rounds) == list(range(len(rounds)))
    with pytest.raises(ValueError):
        multiround.schedule(10, 4, 0, 45)


def test_the_workloads_suites_multiround_grows_past_16000_tokens():
    # bench.suite WL_MR_ARGS: 10 users, 4 rounds, system 1000, own history 12000, 1000 + 100 per round
    assert multiround.final_context_tokens(4, 1000, 1000, 100, history=12000) == 17400
    last_prompt = 1000 + 12000 + 3 * (1000 + 100) + 1000
    assert last_prompt > 16000
    assert multiround.working_set_tokens(10, 4, 1000, 1000, 100, history=12000) == 1000 + 10 * (12000 + 4400)
    assert multiround.working_set_tokens(20, 8, 2000, 768, 32) == 2000 + 20 * 8 * 800  # unchanged without history


def test_conversation_starts_from_its_own_history():
    a = args(user_tokens=10, answer_tokens=4, salt="t", history_tokens=50)
    system = common.token_prompt("system", 20, "t")
    c0, c1 = multiround.Conversation(a, 0, system), multiround.Conversation(a, 1, system)
    p0 = c0.prompt(0)
    assert len(p0) == 20 + 50 + 10 and p0[:20] == system
    assert c1.prompt(0)[20:70] != p0[20:70]  # each user's history is its own
    c0.answered(0, p0, 4)
    assert c0.prompt(1)[:len(p0)] == p0 and len(c0.prompt(1)) == 80 + 4 + 10


def test_run_rate_keeps_the_schedule_and_records_a_late_round(monkeypatch):
    """Open loop: nobody waits for another user's answer; a user whose answer is slow sends its next round
    late (as soon as the answer is in), and that lateness is recorded."""
    sent = []

    def fake_stream(base, model, prompt, max_tokens, timeout):
        sent.append(len(prompt))
        if len(sent) == 1:  # user 0, round 0: slow
            time.sleep(0.6)
        return {"ok": True, "ttft_s": 0.001, "latency_s": 0.002, "prompt_tokens": len(prompt),
                "completion_tokens": max_tokens, "error": None}

    monkeypatch.setattr(multiround.c, "stream_completion", fake_stream)
    a = args(label="t", users=2, rounds=2, rate=10.0, max_seconds=5, system_tokens=5, user_tokens=3, answer_tokens=2,
             history_tokens=0, salt="t", base_url="x", model="m", request_timeout=5, max_model_len=1000,
             stop_on_error=False)
    rows = []
    stats = multiround.run_rate(a, rows.append)
    assert stats["requests"] == 4 and stats["failed"] == 0 and stats["scheduled"] == 4
    by = {(r["user"], r["round"]): r for r in rows}
    assert all(r["sent_at_s"] >= r["scheduled_at_s"] - 0.01 for r in rows)  # never early
    assert by[(0, 1)]["late_s"] > 0.3 and stats["late"] >= 1  # scheduled at 0.2 s, its round 0 took 0.6 s
    assert by[(1, 0)]["sent_at_s"] < by[(0, 1)]["sent_at_s"]  # user 1 did not wait for user 0
    assert by[(0, 1)]["prompt_len"] == 5 + 3 + 2 + 3  # the history grew by the answer and a message


def mr_rows(label, ttfts, tokens_per_s):
    rows = [{"bench": "multiround", "label": label, "user": i % 4, "round": i // 4, "ttft_s": t, "ok": True}
            for i, t in enumerate(ttfts)]
    rows.append({"bench": "multiround_run", "label": label, "tokens_per_s": tokens_per_s, "wall_s": 45.0,
                 "working_set_tokens": 164000, "scheduled": 8, "late": 0,
                 "params": {"users": 4, "rounds": 2, "rate": 0.9, "history_tokens": 12000, "gpu_kv_tokens": 65536}})
    return rows


def test_multiround_issue12_targets_and_the_open_loop_heading():
    rows = (mr_rows("no-offload", [0.5] * 8, 1000.0) + mr_rows("native", [0.2] * 8, 1010.0)
            + mr_rows("lmcache", [0.15] * 8, 1005.0))
    summary, md = multiround.build_report(rows, "no-offload", "lmcache", "native", from_round=1)
    t = {x["target"]: x for x in summary["targets"]}
    assert t["lmcache: p50 TTFT x no-offload"]["verdict"] == "pass"  # 0.30
    assert t["lmcache: p50 TTFT x native"]["verdict"] == "pass"  # 0.75 <= 0.9
    assert t["lmcache: throughput (tok/s) x no-offload"]["value"] == pytest.approx(1.005)
    assert t["lmcache: throughput (tok/s) x no-offload"]["verdict"] == "pass"
    assert "0.9 requests/s (open loop)" in md and "own history 12000" in md and "| 0/8" in md
    rows = (mr_rows("no-offload", [0.5] * 8, 1000.0) + mr_rows("native", [0.2] * 8, 1010.0)
            + mr_rows("lmcache", [0.19] * 8, 990.0))
    summary, _ = multiround.build_report(rows, "no-offload", "lmcache", "native", from_round=1)
    assert [x["verdict"] for x in summary["targets"]] == ["pass", "miss", "miss"]  # 0.95x native, 0.99x tok/s


# --- startup: next to a bare vllm serve --------------------------------------------------------------------

def start_row(label, ready, at, **kw):
    return {"bench": "startup", "label": label, "ok": True, "ready_s": ready, "started_at": at, **kw}


def test_appliance_starts_next_to_the_last_good_bare_start():
    rows = [start_row("no-offload", 64.0, 100.0), start_row("lmcache", 80.0, 300.0),
            start_row("bare-vllm", 50.0, 400.0, bare=True), start_row("bare-vllm", 61.0, 500.0, bare=True),
            {"bench": "startup", "label": "bare-vllm", "ok": False, "bare": True, "error": "not ready"},
            {"bench": "startup", "label": "native", "ok": False, "error": "not ready"}]
    summary, md = startup.build_report(rows)
    assert [(t["label"], t["diff_s"], t["started"]) for t in summary["vs_bare"]] == [
        ("no-offload", 3.0, "before"), ("lmcache", 19.0, "before")]
    assert [t["verdict"] for t in summary["targets"]] == ["pass", "miss"]
    assert "bare-vllm (bare vllm serve)" in md and "### Targets (issue 12, target 6" in md


def test_no_bare_start_no_comparison():
    summary, md = startup.build_report([start_row("no-offload", 64.0, 100.0)])
    assert summary["targets"] == [] and "bare" not in md


def test_startup_wait_marks_a_bare_row(tmp_path):
    started = time.time()
    server, port = serve_stub(tmp_path)
    try:
        assert startup.main(["wait", "--bare", "--label", "bare-vllm", "--results", str(tmp_path),
                             "--base-url", f"http://127.0.0.1:{port}", "--model", "llama8b",
                             "--started-at", str(started), "--pid", str(server.pid), "--timeout", "60"]) == 0
    finally:
        stop(server)
    row = common.load_rows(tmp_path, "startup")[-1]
    assert row["bare"] is True and row["ok"] and row["ready_s"] > 0


# --- reuse: the cost of storing, the page cache warm and dropped ---------------------------------------------

def reuse_rows(label, tokens, page_cache=None, **phase_times):
    mark = {"page_cache": page_cache} if page_cache else {}
    return [{"bench": "reuse", "label": label, "phase": ph, "tokens": tokens, "seed": i, "ttft_s": t, "ok": True,
             **mark} for ph, times in phase_times.items() for i, t in enumerate(times)]


def test_cold_page_cache_rows_are_kept_apart_and_shown_next_to_the_warm_ones():
    rows = reuse_rows("no-offload", 16000, cold=[0.50] * 3, gpu_hit=[0.06] * 3, after_reset=[0.49] * 3)
    rows += reuse_rows("lmcache", 16000, cold=[0.52] * 3, gpu_hit=[0.06] * 3, after_reset=[0.10] * 3)
    rows += reuse_rows("lmcache", 16000, page_cache="warm", after_full_restart=[0.23] * 3,
                       restored_gpu_hit=[0.07] * 3)
    rows += reuse_rows("lmcache", 16000, page_cache="cold", after_full_restart=[0.46] * 3,
                       restored_gpu_hit=[0.08] * 3)
    rows += [{"bench": "reuse", "label": "lmcache", "phase": "restart:after_full_restart", "ok": True,
              "restart_to_ready_s": 81.0, "page_cache": "cold"}]
    s = reuse.summarize(rows)
    assert s["median"]["lmcache"][16000]["after_full_restart"] == 0.23  # the warm one, not a mix
    assert s["cold_page_cache"]["lmcache"][16000] == {"after_full_restart": 0.46, "restored_gpu_hit": 0.08}
    assert s["restart_to_ready_s"]["lmcache"] == {"after_full_restart (page cache dropped)": 81.0}
    summary, md = reuse.build_report(rows, "no-offload", 131072, 50.0)
    assert "### Disk tier with the page cache warm and dropped" in md
    assert re.search(r"\| lmcache \| 16000\s*\| after_full_restart\s*\| 0\.230\s*\| 0\.460\s*\| 2\.000", md), md
    v = {t["target"]: t for t in summary["targets"]}
    assert v["lmcache: after full restart (disk), 16k, x recompute"]["value"] == pytest.approx(0.23 / 0.49)


def test_cold_request_cost_of_storing_is_printed_and_held_to_5_percent():
    rows = reuse_rows("no-offload", 16000, cold=[0.50] * 3, after_reset=[0.49] * 3)
    rows += reuse_rows("lmcache", 16000, cold=[0.52] * 3, after_reset=[0.10] * 3)
    rows += reuse_rows("lmcache-inproc", 16000, cold=[0.54] * 3, after_reset=[0.08] * 3)
    summary, md = reuse.build_report(rows, "no-offload", 131072, 50.0)
    assert "### Cold requests (first time, nothing to reuse): the cost of storing" in md
    assert re.search(r"\| lmcache\s*\| 16000\s*\| 0\.520\s*\| 0\.500\s*\| 1\.040\s*\| \+4\.0%", md), md
    v = {t["target"]: t["verdict"] for t in summary["targets"]}
    assert v["lmcache: cold-request cost of storing, 16000 tok, over no-offload (issue 12)"] == "pass"  # +4 %
    assert v["lmcache-inproc: cold-request cost of storing, 16000 tok, over no-offload (issue 12)"] == "miss"  # +8 %
    assert v["lmcache-inproc: cold-request cost of storing, 16000 tok, over no-offload"] == "pass"  # issue 5: 10 %


# --- bench/suite.py: the workloads configurations ----------------------------------------------------------


def test_workloads_configurations_share_the_gpu_cap_and_size_the_cpu_tier_for_the_documents():
    runner = suite.Runner({"CPU_TIER_GIB": "20"}, dry_run=True)  # the workloads' own CPU tier, not CPU_TIER_GIB
    cap = ["VLLM_KV_CACHE_MEMORY_BYTES=8589934592", "VLLM_MAX_MODEL_LEN=20480"]
    assert runner.wl("no-offload") == ["VLLM_KV_OFFLOADING_BACKEND=none", *cap]
    assert runner.wl("lmcache") == [
        "VLLM_KV_OFFLOADING_BACKEND=lmcache", "VLLM_KV_OFFLOADING_SIZE=40", *cap]  # LMCache's defaults otherwise
    assert runner.wl("native") == ["VLLM_KV_OFFLOADING_BACKEND=native", "VLLM_KV_OFFLOADING_SIZE=40", *cap]
    assert runner.wl("nonsense") is None


# --- end to end against the stub vLLM (streaming), as the suite runs them on the GPU ------------------------



def serve_stub(tmp_path):
    port = free_port()
    env = {**os.environ, "STUB_STREAM": "1", "STUB_TOKEN_INTERVAL": "0.001", "VLLM_SERVER_DEV_MODE": "1"}
    server = subprocess.Popen([sys.executable, str(REPO / "tests" / "stubs" / "vllm_stub.py"), "serve", "stub/model",
                               "--host", "127.0.0.1", "--port", str(port), "--served-model-name", "llama8b"],
                              env=env, stdout=(tmp_path / "stub.log").open("w"), stderr=subprocess.STDOUT)
    return server, port


def stop(server):
    server.terminate()
    try:
        server.wait(10)
    except subprocess.TimeoutExpired:
        server.kill()


@pytest.fixture
def stub_base(tmp_path):
    """The stub vLLM (streaming, with vLLM's clocks in /metrics) running and ready: its base URL."""
    server, port = serve_stub(tmp_path)
    try:
        common.wait_ready(f"http://127.0.0.1:{port}", "llama8b", timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(server)


def test_both_workloads_run_end_to_end_against_the_streaming_stub(tmp_path, stub_base):
    base, res = stub_base, tmp_path / "results"
    for label in ("no-offload", "lmcache"):
        assert longdoc.main(["run", "--label", label, "--base-url", base, "--results", str(res), "--docs", "3",
                             "--doc-tokens", "500", "--question-tokens", "10", "--settle", "0",
                             "--warmup-tokens", "32", "--gpu-kv-tokens", "1000"]) == 0
        assert multiround.main(["run", "--label", label, "--base-url", base, "--results", str(res),
                                "--users", "3", "--rounds", "2", "--rate", "20", "--max-seconds", "5",
                                "--system-tokens", "20", "--history-tokens", "50", "--user-tokens", "10",
                                "--answer-tokens", "5", "--no-warmup"]) == 0
    rows = common.load_rows(res)
    docs = [r for r in rows if r["bench"] == "longdoc"]
    assert len(docs) == 2 * 3 * 3 and all(r["ok"] for r in docs)  # pass 1, pass 2, and the GPU hit after each
    assert [r["pass"] for r in docs if r["label"] == "lmcache"] == [1, 1, 1, 2, 3, 2, 3, 2, 3]
    assert [r["doc"] for r in docs if r["label"] == "lmcache" and r["pass"] > 1] == [0, 0, 1, 1, 2, 2]
    assert {r["prompt_tokens"] for r in docs} == {510}  # what the server counted = what was sent
    assert all(r["completion_tokens"] == 8 for r in docs)
    # vLLM's clocks of each request (the stub records them as vLLM does): one request each, and the client's
    # TTFT is the engine's plus a frontend share that cannot be negative
    assert all(r["engine_requests"] == 1 and r["frontend_s"] >= 0 for r in docs)
    assert all(r["queue_s"] >= 0 and r["prefill_s"] >= 0 and "lookup_s" not in r for r in docs)
    mr = [r for r in rows if r["bench"] == "multiround"]
    assert len(mr) == 2 * 6 and all(r["ok"] for r in mr)
    assert sorted({r["prompt_tokens"] for r in mr}) == [80, 95]  # 20 + 50 + 10, then + 5 + 10
    runs = [r for r in rows if r["bench"] == "multiround_run"]
    assert [r["clocks_mean_s"]["engine_requests"] for r in runs] == [6, 6]  # the warm-up is before the first read
    assert longdoc.main(["report", "--results", str(res)]) == 0
    assert multiround.main(["report", "--results", str(res)]) == 0
    assert json.loads((res / "multiround.json").read_text())["labels"]["lmcache"]["requests"] == 6
    report = json.loads((res / "longdoc.json").read_text())
    assert report["labels"]["lmcache"]["pass3"]["requests"] == 3
    assert report["clocks_median_s"]["lmcache / GPU hit"]["n"] == 3
    md = (res / "longdoc.md").read_text()
    assert "GPU hit mean" in md and "Where the time went" in md
    assert "Where the time went" in (res / "multiround.md").read_text()


def test_reuse_run_splits_each_ttft_with_vllms_clocks_and_reports_them(tmp_path, stub_base):
    base, res = stub_base, tmp_path / "results"
    assert reuse.main(["run", "--label", "lmcache", "--base-url", base, "--results", str(res), "--tokens", "300",
                       "--seeds", "2", "--warmup-tokens", "32", "--settle", "0"]) == 0
    assert reuse.main(["run", "--label", "no-offload", "--base-url", base, "--results", str(res),
                       "--tokens", "300", "--seeds", "1", "--no-warmup", "--no-clocks", "--settle", "0"]) == 0
    rows = [r for r in common.load_rows(res) if r["bench"] == "reuse"]
    timed = [r for r in rows if r["label"] == "lmcache"]
    assert len(timed) == 1 + 2 * 3 and all(r["engine_requests"] == 1 for r in timed)
    assert all(r["frontend_s"] >= 0 and r["ttft_s"] >= r["engine_ttft_s"] for r in timed)
    assert not any("engine_ttft_s" in r for r in rows if r["label"] == "no-offload")  # --no-clocks
    assert reuse.main(["report", "--results", str(res)]) == 0
    clocks = json.loads((res / "reuse.json").read_text())["clocks_median_s"]
    assert clocks["lmcache / 300 / after_reset"]["n"] == 2 and not any(k.startswith("no-offload") for k in clocks)
