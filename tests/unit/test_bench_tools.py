"""The pure parts of the benchmark tools (the bench package): prompts, KV sizes, the copy floor, the reports and
their verdicts against the issue's targets. No server, no GPU; the chart only where matplotlib is installed."""
import json

import pytest

from bench import common, from_log, multiround, reuse, suite

LLAMA3_8B = {"num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 4096,
             "head_dim": 128, "torch_dtype": "bfloat16"}


# --- prompts ---------------------------------------------------------------------------------------------

def test_prompt_has_the_exact_length_and_ids_inside_the_vocabulary():
    for n in (0, 1, 16000):
        p = common.token_prompt(3, n, "reuse")
        assert len(p) == n
        assert all(common.TOKEN_LOW <= t < common.TOKEN_HIGH < 32000 for t in p)


def test_prompt_is_the_same_for_the_same_seed_and_differs_otherwise():
    assert common.token_prompt(0, 500, "s") == common.token_prompt(0, 500, "s")
    assert common.token_prompt(0, 500, "s") != common.token_prompt(1, 500, "s")
    assert common.token_prompt(0, 500, "s") != common.token_prompt(0, 500, "other salt")


def test_prompts_of_two_lengths_share_no_prefix():
    # a 30k prompt must not find the KV of the 16k prompt with the same seed
    short, long = common.token_prompt(0, 1600, "s"), common.token_prompt(0, 3000, "s")
    assert long[:16] != short[:16]


# --- KV bytes and the copy floor -------------------------------------------------------------------------

def test_kv_bytes_per_token_of_the_llama3_8b_shape():
    assert common.kv_bytes_per_token(LLAMA3_8B) == 131072
    assert common.kv_bytes_per_token(common.LLAMA3_8B_SHAPE) == 131072


def test_kv_bytes_per_token_other_shapes():
    llama_1b = {"num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
                "hidden_size": 2048, "torch_dtype": "bfloat16"}
    assert common.kv_bytes_per_token(llama_1b) == 2 * 16 * 8 * 64 * 2
    no_head_dim = {"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 256, "torch_dtype": "float32"}
    assert common.kv_bytes_per_token(no_head_dim) == 2 * 2 * 4 * 64 * 4  # MHA: KV heads = heads
    assert common.kv_bytes_per_token({"text_config": LLAMA3_8B}) == 131072
    assert common.kv_bytes_per_token(LLAMA3_8B, dtype_bytes=1) == 65536  # fp8 KV cache
    with pytest.raises(ValueError):
        common.kv_bytes_per_token({**LLAMA3_8B, "torch_dtype": "int3"})


def test_load_model_config_takes_the_directory_or_the_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA3_8B))
    assert common.load_model_config(tmp_path) == common.load_model_config(tmp_path / "config.json") == LLAMA3_8B


def test_copy_floor():
    # 16000 tokens x 128 KiB = 2.097 GB; at 50 GB/s 41.9 ms
    assert common.copy_floor_s(131072, 16000, 50.0) == pytest.approx(0.0419, abs=1e-4)
    with pytest.raises(ValueError):
        common.copy_floor_s(131072, 16000, 0)


def test_bandwidth_measure_says_why_when_it_cannot():
    result = common.measure_h2d_bandwidth(size_gib=0.001, reps=1)
    assert result["ok"] or result["note"]


# --- statistics and tables -------------------------------------------------------------------------------

def test_percentile_interpolates_and_ignores_missing_values():
    assert common.percentile([3, 1, 2, None], 50) == 2
    assert common.percentile([1, 2, 3, 4], 50) == 2.5
    assert common.percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 90) == pytest.approx(9.1)
    assert common.percentile([], 50) is None
    assert common.percentile([7], 90) == 7


def test_markdown_table_aligns_columns():
    text = common.markdown_table(["a", "bb"], [["x", 0.5], ["long", None]])
    lines = text.splitlines()
    assert lines[0] == "| a    | bb    |"
    assert lines[2] == "| x    | 0.500 |"
    assert lines[3] == "| long | -     |"
    assert len({len(line) for line in lines}) == 1


def test_target_verdicts():
    assert common.target_row("t", 0.2, 0.25)["verdict"] == "pass"
    assert common.target_row("t", 0.3, 0.25)["verdict"] == "miss"
    assert common.target_row("t", None, 0.25)["verdict"] == "n/a"
    assert common.target_row("t", 3.0, 2.0, lower_is_better=False)["verdict"] == "pass"


def test_results_are_appended_and_read_back(tmp_path):
    common.append_rows(tmp_path, [{"bench": "reuse", "x": 1}])
    common.append_rows(tmp_path, [{"bench": "multiround", "x": 2}])
    with (tmp_path / common.RESULTS_FILE).open("a") as f:
        f.write('{"bench": "reuse", "cut sho')  # a run killed mid-write
    assert [r["x"] for r in common.load_rows(tmp_path)] == [1, 2]
    assert [r["x"] for r in common.load_rows(tmp_path, "reuse")] == [1]


# --- reuse report ----------------------------------------------------------------------------------------

def reuse_rows(label, tokens, **phase_times):
    return [{"bench": "reuse", "label": label, "phase": phase, "tokens": tokens, "seed": i, "ttft_s": t, "ok": True}
            for phase, times in phase_times.items() for i, t in enumerate(times)]


def measured_reuse_rows(cpu_hit=0.10, after_vllm=0.13, after_all=0.40, cold=0.53):
    rows = reuse_rows("no-offload", 16000, cold=[0.50, 0.49, 0.51], gpu_hit=[0.07] * 3, after_reset=[0.48, 0.50, 0.49])
    rows += reuse_rows("no-offload", 30000, cold=[1.1] * 3, gpu_hit=[0.08] * 3, after_reset=[1.1] * 3)
    rows += reuse_rows("lmcache-server", 16000, cold=[cold] * 3, gpu_hit=[0.08] * 3, after_reset=[cpu_hit] * 3,
                       after_vllm_restart=[after_vllm] * 3, after_full_restart=[after_all] * 3)
    rows += [{"bench": "reuse", "label": "lmcache-server", "phase": "restart:after_vllm_restart", "ok": True,
              "restart_to_ready_s": 71.0},
             {"bench": "reuse", "label": "lmcache-server", "phase": "warmup", "tokens": 1024, "ttft_s": 9.0,
              "ok": True},
             {"bench": "reuse", "label": "lmcache-server", "phase": "after_reset", "tokens": 16000, "ttft_s": None,
              "ok": False, "error": "HTTP 500"}]
    return rows


def verdicts(targets):
    return {t["target"]: t["verdict"] for t in targets}


def test_reuse_summary_takes_medians_of_successful_measured_rows():
    s = reuse.summarize(measured_reuse_rows())
    assert s["median"]["no-offload"][16000]["cold"] == 0.50
    assert s["count"]["lmcache-server"][16000]["after_reset"] == 3  # the failed row is left out
    assert "warmup" not in s["median"]["lmcache-server"][16000]
    assert 1024 not in s["median"]["lmcache-server"]
    assert s["restart_to_ready_s"] == {"lmcache-server": {"after_vllm_restart": 71.0}}
    assert reuse.recompute_s(s["median"], "no-offload", 16000) == 0.49  # after_reset median


def test_reuse_targets_pass():
    summary, md = reuse.build_report(measured_reuse_rows(), "no-offload", 131072, 50.0)
    v = verdicts(summary["targets"])
    assert v["lmcache-server: CPU-tier hit (after GPU reset), 16k, x recompute"] == "pass"  # 0.10/0.49 = 0.20
    assert v["lmcache-server: CPU-tier hit, 16k, x copy floor"] == "miss"  # 0.10 / 0.042 = 2.4
    assert v["lmcache-server: after vLLM restart, 16k, x recompute"] == "pass"  # 0.27
    assert v["lmcache-server: after full restart (disk), 16k, x recompute"] == "pass"  # 0.82
    assert v["lmcache-server: cold-request cost of storing, 16000 tok, over no-offload"] == "pass"  # +6 %
    assert "| lmcache-server | 16000  |" in md
    assert md.index("### Targets") > md.index("### Copy floor")


def test_reuse_targets_miss_and_not_measured():
    rows = [r for r in measured_reuse_rows(cpu_hit=0.2, after_vllm=0.58, cold=0.60)
            if r.get("phase") != "after_full_restart"]
    summary, md = reuse.build_report(rows, "no-offload", 131072, None)
    v = verdicts(summary["targets"])
    assert v["lmcache-server: CPU-tier hit (after GPU reset), 16k, x recompute"] == "miss"  # 0.41
    assert v["lmcache-server: CPU-tier hit, 16k, x copy floor"] == "n/a"  # bandwidth not measured
    assert v["lmcache-server: after vLLM restart, 16k, x recompute"] == "miss"
    assert v["lmcache-server: after full restart (disk), 16k, x recompute"] == "n/a"
    assert v["lmcache-server: cold-request cost of storing, 16000 tok, over no-offload"] == "miss"  # +20 %
    assert "MISS" in md


def test_round2_targets_no_tax_on_hits_and_restored_prefixes():
    rows = reuse_rows("no-offload", 16000, gpu_hit=[0.070] * 3, after_reset=[0.49] * 3)
    rows += reuse_rows("no-offload", 128, gpu_hit=[0.020] * 3)
    rows += reuse_rows("lmcache", 16000, gpu_hit=[0.075] * 3, after_reset=[0.125] * 3,
                       restored_gpu_hit=[0.074, 0.076, 0.30], restored_after_reset=[0.15] * 3)
    rows += reuse_rows("lmcache", 128, gpu_hit=[0.0235] * 3)
    summary, md = reuse.build_report(rows, "no-offload", 131072, 50.0)
    v = verdicts(summary["targets"])
    assert v["lmcache: GPU hit, 16k, x no-offload GPU hit"] == "pass"  # 1.07
    assert v["lmcache: GPU hit, 128 tok, ms over no-offload"] == "MISS".lower()  # +3.5 ms
    # load cost 0.050 s; floor 16000 x 131072 B / 50 GB/s = 0.042 s -> 1.19x
    assert v["lmcache: CPU-tier load cost (after_reset - GPU hit), 16k, x copy floor"] == "pass"
    assert v["lmcache: after full restart, rounds 2+, 16k, x GPU hit before"] == "pass"  # median 0.076 / 0.075
    assert v["lmcache: after full restart + GPU reset, 16k, x CPU-tier hit before"] == "miss"  # 1.2x
    assert "restored_gpu_hit" in md


def test_churn_passes_are_averaged_and_reported():
    rows = reuse_rows("no-offload", 16000, after_reset=[0.49] * 3)
    rows += reuse_rows("lmcache-arc", 8000, churn_pass1=[0.30, 0.32], churn_pass2=[0.10, 0.20])
    summary, md = reuse.build_report(rows, "no-offload", 131072, 50.0)
    assert summary["churn_mean_ttft_s"]["lmcache-arc"][8000] == pytest.approx({1: 0.31, 2: 0.15})
    assert "| lmcache-arc | 8000   | 0.310  | 0.150  |" in md


def test_reuse_report_without_rows_fails_loudly():
    with pytest.raises(common.BenchError):
        reuse.build_report([], "no-offload", 131072, 50.0)


def test_reuse_report_writes_json_markdown_and_maybe_a_chart(tmp_path):
    common.append_rows(tmp_path, measured_reuse_rows())
    common.append_rows(tmp_path, [{"bench": "h2d", "ok": True, "gb_per_s": 52.0, "kv_bytes_per_token": 131072}])
    assert reuse.main(["report", "--results", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "reuse.json").read_text())
    assert summary["h2d_gb_per_s"] == 52.0 and summary["kv_bytes_per_token"] == 131072
    assert (tmp_path / "reuse.md").read_text().startswith("### TTFT")
    pytest.importorskip("matplotlib")
    assert (tmp_path / "reuse.png").stat().st_size > 1000


# --- multiround report -----------------------------------------------------------------------------------

def test_working_set_and_last_context():
    assert multiround.working_set_tokens(20, 8, 2000, 768, 32) == 2000 + 20 * 8 * 800
    assert multiround.final_context_tokens(8, 2000, 768, 32) == 8400


def test_conversation_history_grows_by_message_and_answer():
    class A:
        user_tokens, answer_tokens, salt = 10, 4, "t"
    system = common.token_prompt("system", 20, "t")
    conv = multiround.Conversation(A, 0, system)
    p0 = conv.prompt(0)
    assert len(p0) == 30 and p0[:20] == system
    conv.answered(0, p0, 3)
    p1 = conv.prompt(1)
    assert len(p1) == 30 + 3 + 10 and p1[:30] == p0  # the previous prompt is a prefix of the next


def mr_rows(label, ttfts, tokens_per_s=1000.0):
    rows = [{"bench": "multiround", "label": label, "user": i % 4, "round": i // 4, "ttft_s": t, "ok": True}
            for i, t in enumerate(ttfts)]
    rows.append({"bench": "multiround_run", "label": label, "tokens_per_s": tokens_per_s, "wall_s": 10.0,
                 "working_set_tokens": 100000, "params": {"users": 4, "rounds": 2, "gpu_kv_tokens": 25000}})
    return rows


def test_multiround_targets():
    rows = (mr_rows("no-offload", [0.4] * 8) + mr_rows("native", [0.15] * 8) + mr_rows("lmcache", [0.1] * 8))
    summary, md = multiround.build_report(rows, "no-offload", "lmcache", "native", from_round=1)
    assert summary["labels"]["lmcache"]["p50_s"] == 0.1
    assert [t["verdict"] for t in summary["targets"]] == ["pass", "pass", "pass"]  # the same tok/s: not lower
    assert "4.0 x the GPU KV cache of 25000 tokens" in md
    rows = (mr_rows("no-offload", [0.4] * 8) + mr_rows("native", [0.15] * 8) + mr_rows("lmcache", [0.3] * 8))
    summary, _ = multiround.build_report(rows, "no-offload", "lmcache", "native", from_round=1)
    assert [t["verdict"] for t in summary["targets"]] == ["miss", "miss", "pass"]


def test_multiround_uses_the_last_run_of_a_label():
    rows = mr_rows("lmcache", [5.0] * 8) + mr_rows("lmcache", [0.1] * 8) + mr_rows("no-offload", [0.4] * 8)
    summary, _ = multiround.build_report(rows, "no-offload", "lmcache", "native", from_round=0)
    assert summary["labels"]["lmcache"]["p50_s"] == 0.1
    assert summary["labels"]["lmcache"]["requests"] == 8
    assert [t["verdict"] for t in summary["targets"]] == ["pass", "n/a", "pass"]  # no native run


# --- from_log: results rebuilt from a suite's console log ------------------------------------------------

SUITE_LOG = """\
=== [0s] suite reuse on vm; budget 560 s
    gpu: NVIDIA H200, 143771 MiB, 580.159.04
host->device (pinned, 1 GiB x 5): 54.9 GB/s median [54.79, 55.01, 54.82, 54.87, 54.97]; device->host 55.2 GB/s; NVIDIA H200
=== [5s] start no-offload: VLLM_KV_OFFLOADING_BACKEND=none VLLM_MAX_MODEL_LEN=32768
startup no-offload: ready_s 115.3 s, supervisor_socket_s 0.9 s, vllm_spawned_s 1.5 s
[01:57:13]       no-offload warmup                1024 tok seed -1: 0.066 s
[01:57:13]       no-offload cold                 16000 tok seed 0: 0.492 s
[01:57:13]       no-offload gpu_hit              16000 tok seed 0: 0.147 s
[01:57:15]       no-offload after_reset          16000 tok seed 0: 0.487 s
stop no-offload: clean in 2.2 s
[01:58:59]   lmcache-server cold                 16000 tok seed 0: 0.510 s
[01:58:59]   lmcache-server gpu_hit              16000 tok seed 0: 0.083 s
[01:59:00]   lmcache-server after_reset          16000 tok seed 0: FAILED (HTTP 500: boom)
[01:59:12] SIGKILL to vLLM (pid 1207)
[02:02:15] restart kill-vllm: ready 183.4 s after the restart began; {'restart': 'kill-vllm', 'restart_to_ready_s': 183.425, 'vllm_pid': [1207, 2002]}
[02:02:15]   lmcache-server warmup                1024 tok seed -1: 0.074 s
[02:02:17]   lmcache-server after_vllm_restart   16000 tok seed 0: 0.105 s
[02:03:38]   lmcache-server warmup                1024 tok seed -1: 0.108 s
[02:03:40]   lmcache-server after_full_restart   16000 tok seed 0: 0.264 s
[02:03:55] fault SIGTERM during a long request: OK: in-flight request completed with 256/256 tokens, 5.8 s after SIGTERM; serve exited 13.6 s after SIGTERM
[02:08:58] native: 2 users x 2 rounds, concurrency 3; working set 5200 tokens, last request 3600 tokens
[02:08:59] native u 0 r0: ttft 0.080 s, 2768 prompt tok
[02:08:59] native u 1 r0: ttft 0.100 s, 2768 prompt tok
[02:09:00] native u 0 r1: ttft 0.050 s, 3568 prompt tok
[02:09:00] user 1 round 1: FAILED stream cut
[02:09:46] native: 3 ok / 1 failed in 0.6 s; p50 0.080 s, p90 0.096 s, 15000 tok/s; stopped by deadline: 0 users

### serve to ready, seconds (from launching `python -m entrypoint serve`)

| config     | ok  | ready s | supervisord socket s | lmcache spawned s | vllm spawned s | error |
|------------|-----|---------|----------------------|-------------------|----------------|-------|
| no-offload | yes | 115.278 | 0.899                | -                 | 1.465          |       |

### Copy floor: KV bytes/token 131072 x tokens / host-to-device bandwidth (54.9 GB/s, pinned memory, NVIDIA H200)
"""  # noqa: E501 - a suite's console log, verbatim: its long lines are what from_log parses


def test_from_log_rebuilds_the_rows_the_bench_scripts_append():
    rows = from_log.rebuild(SUITE_LOG, "suite.log", date="2026-11-28", answer_tokens=32, system_tokens=2000,
                            user_tokens=768, max_seconds=60, think_time=0.0, stagger=0.05, kv_bytes_per_token=None)
    assert all(r["from_log"] == "suite.log" for r in rows)
    h2d = common.latest_h2d(rows)
    assert h2d["gb_per_s"] == 54.87 and h2d["kv_bytes_per_token"] == 131072  # the median of the five, not 54.9
    start = next(r for r in rows if r["bench"] == "startup")
    assert start["ready_s"] == 115.278 and start["vllm_spawned_s"] == 1.465  # the final table's digits
    assert next(r for r in rows if r["bench"] == "stop")["stop_s"] == 2.2
    failed = next(r for r in rows if r.get("error"))
    assert failed["phase"] == "after_reset" and failed["ok"] is False and failed["ttft_s"] is None
    heads = {r["phase"]: r for r in rows if str(r.get("phase")).startswith("restart:")}
    assert heads["restart:after_vllm_restart"]["restart_to_ready_s"] == 183.425
    assert heads["restart:after_vllm_restart"]["label"] == "lmcache-server"
    assert heads["restart:after_full_restart"]["restart"] == "none"  # logged nothing; its head row is back
    s = reuse.summarize(rows)
    assert s["median"]["lmcache-server"][16000] == {"cold": 0.51, "gpu_hit": 0.083, "after_vllm_restart": 0.105,
                                                    "after_full_restart": 0.264}
    assert s["restart_to_ready_s"] == {"lmcache-server": {"after_vllm_restart": 183.425}}
    first = next(r for r in rows if r["bench"] == "reuse")
    assert first["time"] == 1795831033.0  # 2026-11-28 01:57:13 UTC
    assert next(r for r in rows if r["bench"] == "fault")["exited_s"] == 13.6
    run = next(r for r in rows if r["bench"] == "multiround_run")
    assert (run["requests"], run["failed"], run["prompt_tokens"], run["completion_tokens"]) == (4, 1, 9104, 96)
    assert run["wall_s"] == pytest.approx((9104 + 96) / 15000)
    assert run["params"]["users"] == 2 and run["params"]["max_seconds"] == 60
    summary, md = multiround.build_report(rows, "no-offload", "lmcache", "native", from_round=1)
    assert summary["labels"]["native"]["p50_by_round_s"] == {0: 0.09, 1: 0.05}
    assert summary["labels"]["native"]["failed"] == 1


# --- the GPU suite's configuration tables (bench/suite.py) ------------------------------------------------


def test_multiround_labels_become_the_documented_settings():
    assert suite.mr_backend("no-offload", "20") == ["VLLM_KV_OFFLOADING_BACKEND=none"]
    assert suite.mr_backend("native", "20") == ["VLLM_KV_OFFLOADING_BACKEND=native", "VLLM_KV_OFFLOADING_SIZE=20"]
    assert suite.mr_backend("lmcache-inproc-mnbt2048", "20") == [
        "VLLM_KV_OFFLOADING_BACKEND=lmcache", "VLLM_KV_OFFLOADING_SIZE=20", "LMCACHE_MODE=in-process",
        "VLLM_MAX_NUM_BATCHED_TOKENS=2048"]
    assert "LMCACHE_SERVER_EXTRA_ARGS=--max-workers 4" in suite.mr_backend("lmcache-mw4", "20")
    assert "LMCACHE_LOOKUP_WORKERS=1" in suite.mr_backend("lmcache-cpuw1", "20")
    assert "LMCACHE_CHUNK_SIZE=512" in suite.mr_backend("lmcache-chunk512", "20")
    assert "LMCACHE_NONBLOCKING_LOOKUP=true" in suite.mr_backend("lmcache-nonblocking", "20")
    assert suite.mr_backend("lmcache-typo", "20") is None


def test_a_pinned_suite_moves_only_the_metrics_ports():
    words = ["VLLM_KV_OFFLOADING_BACKEND=lmcache", "LMCACHE_SERVER_EXTRA_ARGS=--max-workers 4"]
    assert suite.with_instance_ports(words, "1") == [
        "VLLM_KV_OFFLOADING_BACKEND=lmcache", "LMCACHE_SERVER_EXTRA_ARGS=--max-workers 4",
        "APPLIANCE_LMCACHE_METRICS_PORT=9091", "APPLIANCE_METRICS_PORT=9465"]
    assert suite.with_instance_ports(words, "") == words  # all GPUs: nothing moved


def test_sse_chunks_marks_a_complete_stream_and_not_a_cut_one():
    lines = [b"data: {\"choices\": [{\"text\": \"a\"}]}\n", b"\n", b": keep-alive\n", b"data: [DONE]\n",
             b"data: {\"after\": 1}\n"]
    complete = list(common.sse_chunks(lines))
    assert complete[:-1] == [{"choices": [{"text": "a"}]}] and complete[-1] is common.STREAM_DONE
    assert common.STREAM_DONE not in list(common.sse_chunks(lines[:3]))  # the server went away mid-answer


def test_histogram_totals_add_up_label_sets_and_skip_buckets_and_comments():
    text = "\n".join([
        "# HELP vllm:request_queue_time_seconds queue",
        "# TYPE vllm:request_queue_time_seconds histogram",
        'vllm:request_queue_time_seconds_bucket{engine="0",le="0.1",model_name="m"} 2.0',
        'vllm:request_queue_time_seconds_sum{engine="0",model_name="m"} 0.25',
        'vllm:request_queue_time_seconds_count{engine="0",model_name="m"} 2.0',
        'vllm:request_queue_time_seconds_sum{engine="1",model_name="a } b"} 0.5',  # a brace inside a label value
        'vllm:request_queue_time_seconds_count{engine="1",model_name="a } b"} 1.0',
        "vllm:time_to_first_token_seconds_sum 1e-1",
        "vllm:time_to_first_token_seconds_count 1",
        "vllm:request_queue_time_seconds_created 1700000000.0",
        "garbage line",
    ])
    totals = common.histogram_totals(text, common.ENGINE_CLOCKS.values())
    assert totals["vllm:request_queue_time_seconds"] == [0.75, 3.0]
    assert totals["vllm:time_to_first_token_seconds"] == [0.1, 1.0]
    assert totals["vllm:lmcache_mp_lookup_duration_seconds"] == [0.0, 0.0]


def test_clock_split_of_one_request_and_of_several():
    fam = common.ENGINE_CLOCKS
    before = {f: [0.0, 0.0] for f in fam.values()}
    one = {**before, fam["engine_ttft_s"]: [0.1, 1.0], fam["queue_s"]: [0.02, 1.0], fam["prefill_s"]: [0.07, 1.0],
           fam["lookup_s"]: [0.015, 1.0]}
    split = common.clock_split(before, one)
    assert split == {"engine_requests": 1, "engine_ttft_s": 0.1, "queue_s": 0.02, "prefill_s": 0.07,
                     "lookup_s": 0.015, "lookups": 1}
    three = {**one, fam["engine_ttft_s"]: [0.4, 4.0], fam["queue_s"]: [0.32, 4.0]}
    split = common.clock_split(one, three)
    assert split["engine_requests"] == 3 and abs(split["queue_s"] - 0.1) < 1e-9
    assert "prefill_s" not in split and split["lookups"] == 0  # nothing new recorded: no mean to give
    assert common.clock_split(None, one) == {} and common.clock_split(one, None) == {}


def test_clock_medians_group_the_rows_that_carry_clocks():
    rows = [{"ok": True, "label": "a", "ttft_s": t, "engine_ttft_s": t - 0.01, "frontend_s": 0.01, "queue_s": q,
             "prefill_s": t - 0.01 - q} for t, q in ((0.1, 0.01), (0.2, 0.03), (0.3, 0.02))]
    rows += [{"ok": True, "label": "a", "ttft_s": 9.0}, {"ok": False, "label": "a", "engine_ttft_s": 9.0}]
    med = common.clock_medians(rows, lambda r: (r["label"],))
    assert med[("a",)]["n"] == 3 and med[("a",)]["ttft_s"] == 0.2 and med[("a",)]["queue_s"] == 0.02
    assert med[("a",)]["lookup_s"] is None
    assert "| a " in "\n".join(common.clock_markdown(med, ["config"]))
    assert common.clock_markdown({}, ["config"]) == []
