"""KV reuse benchmark: TTFT of long prompts cold, from the GPU prefix cache, from the offload tier after a
GPU cache reset, after a restart of vLLM alone and after a restart of everything (disk tier).

Runs in steps against an appliance that is up; each step appends rows to RESULTS/results.jsonl:

  reuse.py run   --label lmcache-server --base-url http://127.0.0.1:8000 --model llama8b --results R
        per prompt: cold, gpu_hit, then POST /reset_prefix_cache, after_reset
  reuse.py again --label lmcache-server --phase after_vllm_restart --restart kill-vllm \\
                 --supervisor-socket /tmp/run-x/supervisor.sock --results R
        restart through supervisord (kill-vllm: SIGKILL mid-request, supervisord respawns it; vllm: stop and
        start; all: lmcache and vllm; none: done outside), time restart-to-ready, then each prompt once
  reuse.py churn --label lmcache-arc --tokens 8000 --prompts 6 --passes 2 --results R
        a working set larger than the CPU tier: the prompts in turn, each after a GPU reset (so every hit comes
        from LMCache), pass after pass; rows churn_pass1, churn_pass2, ... (what the eviction and L2 prefetch
        policies keep in the CPU tier shows in the later passes)
  reuse.py again ... --page-cache cold
        marks the rows as measured after the page cache was dropped (the suite does it, as root): the report
        keeps them out of the main tables and shows them next to the warm ones (issue 12, target 5)
  reuse.py report --results R [--baseline no-offload]
        medians per phase and length, ratio to the baseline's recompute, copy floor, the cost of storing on cold
        requests, disk-tier numbers with the page cache warm and dropped, the issues' targets

Prompts are exact-length token-id lists (deterministic per seed and length), sent to /v1/completions with
max_tokens=1, so TTFT is the whole request time. `run` and `again` must use the same --tokens/--seeds.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
import time

from bench import common as c

PHASES = ("cold", "gpu_hit", "gpu_hit_settled", "after_reset", "after_vllm_restart", "after_full_restart",
          "restored_gpu_hit", "restored_after_reset")
# `run --hit-after-settle`: one more GPU hit after --settle seconds (gpu_hit_settled): tells a hit that waits
# for the offload tier's store of the cold request just before it from one that pays on every request.
# `again --restored-rounds N`: after the phase's round, rounds 2..N of the same prompts (restored_gpu_hit: what
# a prefix that came back from disk costs from then on; vLLM has it on the GPU) and, after a GPU reset, one more
# (restored_after_reset: a CPU-tier hit, if the LMCache server kept what it read from disk in its CPU tier).
RESTART_FOR_PHASE = {"after_vllm_restart": "vllm", "after_full_restart": "all"}
# The targets (docs/benchmarks/targets-issue-5.md repeats them), evaluated at this prompt length.
TARGET_TOKENS = 16000
CPU_HIT_VS_RECOMPUTE = 0.25
CPU_HIT_VS_FLOOR = 2.0
VLLM_RESTART_VS_RECOMPUTE = 0.30
FULL_RESTART_VS_RECOMPUTE = 1.0
COLD_OVERHEAD = 0.10
COLD_OVERHEAD_R2 = 0.05          # issue 12, target 5: the cost of storing on cold requests
COLD_CACHE_PHASES = ("after_full_restart", "restored_gpu_hit", "restored_after_reset")  # read from the disk tier
# Issue 12 ("performance, round 2"), same baseline and length, plus the short-prompt hit cost.
HIT_VS_NO_OFFLOAD = 1.1          # a GPU prefix hit with LMCache on, x the same hit without it
SHORT_TOKENS, SHORT_HIT_MS = 128, 2.0   # ... and at 128 tokens, at most this many ms more
LOAD_VS_FLOOR = 1.2              # CPU-tier load cost (after_reset - gpu_hit) x the host-to-device copy floor
RESTORED_VS_BEFORE = 1.1         # after a full restart, rounds 2+ (and after a GPU reset) x the same before it


def _ints(text: str) -> list[int]:
    return [int(x) for x in str(text).split(",") if x.strip()]


def seeds_of(a) -> list[int]:
    return _ints(a.seed_list) if a.seed_list else list(range(a.seeds))


def ttft(a, prompt: list[int]) -> dict:
    """One measured request, with vLLM's own clocks of it (common.with_clocks) unless --no-clocks."""
    def go():
        return c.completion_ttft(a.base_url, a.model, prompt, a.request_timeout)
    return go() if a.no_clocks else c.with_clocks(a.base_url, go)


SPLIT_KEYS = ("frontend_s", *c.ENGINE_CLOCKS, "lookups", "engine_requests")


def _row(a, phase, tokens, seed, res, **extra) -> dict:
    """Build, log and append one result row at once (a run cut short keeps what it measured)."""
    row = {"bench": "reuse", "label": a.label, "phase": phase, "tokens": tokens, "seed": seed,
           "ttft_s": res.get("ttft_s"), "prompt_tokens": res.get("prompt_tokens"), "ok": res.get("ok"),
           "error": res.get("error"), **{k: res[k] for k in SPLIT_KEYS if k in res}, **extra}
    status = f"{row['ttft_s']:.3f} s" if row["ok"] else f"FAILED ({row['error']})"
    if row["ok"] and row["prompt_tokens"] not in (None, tokens):
        c.log(f"warning: sent {tokens} tokens, server counted {row['prompt_tokens']}")
    c.log(f"{a.label:>16} {phase:<19} {tokens:>6} tok seed {seed}: {status}")
    c.append_rows(a.results, [row])
    return row


def warmup(a, tag: str, retrieve: bool = False) -> list[dict]:
    """Fresh prompts (never a measured one) so that first-request costs stay out of the numbers; with
    `retrieve`, the last one again after a GPU reset, which warms the offload tier's load path too."""
    rows, lengths = [], _ints(a.warmup_tokens)
    for n in lengths:
        prompt = c.token_prompt(f"{tag}-{time.time_ns()}", n, "warmup")
        rows.append(_row(a, "warmup", n, -1, ttft(a, prompt)))
    if retrieve and lengths:
        c.reset_prefix_cache(a.base_url)
        time.sleep(a.settle)
        rows.append(_row(a, "warmup_hit", lengths[-1], -1,
                         ttft(a, prompt)))
    return rows


def cmd_run(a) -> int:
    c.wait_ready(a.base_url, a.model, timeout=a.ready_timeout)
    rows = [] if a.no_warmup else warmup(a, "run")
    for n in _ints(a.tokens):
        for seed in seeds_of(a):
            prompt = c.token_prompt(seed, n, a.salt)
            rows.append(_row(a, "cold", n, seed, ttft(a, prompt)))
            rows.append(_row(a, "gpu_hit", n, seed, ttft(a, prompt)))
            if a.hit_after_settle:
                time.sleep(a.settle)
                rows.append(_row(a, "gpu_hit_settled", n, seed,
                                 ttft(a, prompt)))
            c.reset_prefix_cache(a.base_url)
            time.sleep(a.settle)  # let an offload tier finish storing what the cold request computed
            rows.append(_row(a, "after_reset", n, seed,
                             ttft(a, prompt)))
    return _exit_status(rows)


def cmd_churn(a) -> int:
    c.wait_ready(a.base_url, a.model, timeout=a.ready_timeout)
    rows = [] if a.no_warmup else warmup(a, "churn")
    n = _ints(a.tokens)[0]
    for p in range(1, a.passes + 1):
        for i in range(a.prompts):
            c.reset_prefix_cache(a.base_url)
            res = ttft(a, c.token_prompt(1000 + i, n, a.salt))
            rows.append(_row(a, f"churn_pass{p}", n, i, res))
            time.sleep(a.settle)  # the store of a cold pass finishes before the next prompt
    return _exit_status(rows)


def _inflight(a, result: dict) -> threading.Thread:
    """A long fresh request that is running while vLLM gets killed (its failure is expected)."""
    def go():
        result.update(c.stream_completion(a.base_url, a.model, c.token_prompt(time.time_ns(), a.inflight_tokens,
                                                                              "inflight"), 256, a.request_timeout))
    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def restart(a) -> dict:
    """Restart what the phase needs through supervisord; returns what was observed (pids, times)."""
    how = a.restart or RESTART_FOR_PHASE.get(a.phase, "none")
    info = {"restart": how}
    if how == "none":
        return info
    sup = c.Supervisor(a.supervisor_socket or c.socket_from_run_dir(a.run_dir))
    has_lmcache = sup.has("lmcache")
    old_vllm = sup.pid("vllm")
    old_lmcache = sup.pid("lmcache") if has_lmcache else None
    t0 = time.perf_counter()
    inflight: dict = {}
    thread = None
    if how == "kill-vllm":
        if a.inflight_tokens:
            thread = _inflight(a, inflight)
            time.sleep(a.kill_after)
        t0 = time.perf_counter()
        sup.kill("vllm", signal.SIGKILL, group=a.kill_group)
        c.log(f"SIGKILL to vLLM (pid {old_vllm}{', and its process group' if a.kill_group else ''})")
        info["killed"] = "process group" if a.kill_group else "main process"
        sup.wait_new_pid("vllm", old_vllm, timeout=a.ready_timeout)
    elif how == "vllm":
        sup.restart(["vllm"])
    elif how == "all":
        sup.restart(["vllm", "lmcache"] if has_lmcache else ["vllm"])
    elif how == "lmcache":
        sup.restart(["lmcache"])
    else:
        raise c.BenchError(f"--restart {how}: expected none, vllm, kill-vllm, all or lmcache")
    info["ready_s"] = c.wait_ready(a.base_url, a.model, timeout=a.ready_timeout, alive=sup.alive)
    info["restart_to_ready_s"] = time.perf_counter() - t0
    if how == "kill-vllm" and thread:
        thread.join(timeout=30)
        info["inflight_request"] = {k: inflight.get(k) for k in ("ok", "error", "ttft_s")}
    info["vllm_pid"] = [old_vllm, sup.pid("vllm")]
    if has_lmcache:
        info["lmcache_pid"] = [old_lmcache, sup.pid("lmcache")]
        info["lmcache_kept"] = info["lmcache_pid"][0] == info["lmcache_pid"][1]
    if info["vllm_pid"][0] == info["vllm_pid"][1]:
        raise c.BenchError(f"vLLM pid unchanged ({old_vllm}) after --restart {how}: nothing was restarted")
    c.log(f"restart {how}: ready {info['restart_to_ready_s']:.1f} s after the restart began; {info}")
    return info


def cmd_again(a) -> int:
    head = {"bench": "reuse", "label": a.label, "phase": "restart:" + a.phase, "tokens": None, "seed": None,
            "ttft_s": None}
    try:
        info = restart(a)
    except Exception as e:  # recorded, then fatal: the measurements after it would mean nothing
        c.append_rows(a.results, [{**head, "ok": False, "error": f"{e.__class__.__name__}: {e}"}])
        raise c.BenchError(f"restart for {a.phase} failed: {e}") from e
    mark = {"page_cache": a.page_cache} if a.page_cache else {}
    rows = [{**head, "ok": True, **info, **mark}]
    c.append_rows(a.results, rows)
    if not a.no_warmup:
        rows += warmup(a, a.phase, retrieve=True)
    for n in _ints(a.tokens):
        for seed in seeds_of(a):
            res = ttft(a, c.token_prompt(seed, n, a.salt))
            rows.append(_row(a, a.phase, n, seed, res, **mark))
    if a.restored_rounds > 1:
        rows += restored_rounds(a, mark)
    return _exit_status(rows)


def restored_rounds(a, mark: dict | None = None) -> list[dict]:
    """Rounds 2..N of the phase's prompts, then a GPU reset and one more round (see PHASES)."""
    rows, mark = [], mark or {}
    for r in range(2, a.restored_rounds + 1):
        for n in _ints(a.tokens):
            for seed in seeds_of(a):
                res = ttft(a, c.token_prompt(seed, n, a.salt))
                rows.append(_row(a, "restored_gpu_hit", n, seed, res, round=r, **mark))
    c.reset_prefix_cache(a.base_url)
    time.sleep(a.settle)
    for n in _ints(a.tokens):
        for seed in seeds_of(a):
            res = ttft(a, c.token_prompt(seed, n, a.salt))
            rows.append(_row(a, "restored_after_reset", n, seed, res, **mark))
    return rows


def _exit_status(rows) -> int:
    bad = [r for r in rows if not r.get("ok")]
    for r in bad:
        c.log(f"FAILED: {r['label']} {r['phase']} {r.get('tokens')} tok seed {r.get('seed')}: {r.get('error')}")
    return 1 if bad else 0


# --- report ----------------------------------------------------------------------------------------------

def summarize(rows: list[dict]) -> dict:
    """{label: {tokens: {phase: median TTFT}}} over successful measured rows, plus restart times. Rows measured
    after the page cache was dropped (`page_cache: cold`) are summarized apart (`cold_page_cache`)."""
    out: dict = {}
    cold: dict = {}
    restarts: dict = {}
    for r in rows:
        if r.get("bench") != "reuse":
            continue
        dropped = r.get("page_cache") == "cold"
        if str(r.get("phase", "")).startswith("restart:") and r.get("restart_to_ready_s") is not None:
            phase = r["phase"][len("restart:"):] + (" (page cache dropped)" if dropped else "")
            restarts.setdefault(r["label"], {})[phase] = r["restart_to_ready_s"]
        if r.get("phase") in PHASES and r.get("ok") and r.get("ttft_s") is not None:
            (cold if dropped else out).setdefault(r["label"], {}).setdefault(int(r["tokens"]), {}).setdefault(
                r["phase"], []).append(r["ttft_s"])
    med = {lab: {n: {ph: c.median(v) for ph, v in phases.items()} for n, phases in by_n.items()}
           for lab, by_n in out.items()}
    counts = {lab: {n: {ph: len(v) for ph, v in phases.items()} for n, phases in by_n.items()}
              for lab, by_n in out.items()}
    cold_med = {lab: {n: {ph: c.median(v) for ph, v in phases.items()} for n, phases in by_n.items()}
                for lab, by_n in cold.items()}
    return {"median": med, "count": counts, "restart_to_ready_s": restarts, "cold_page_cache": cold_med}


def page_cache_rows(med: dict, cold: dict) -> list[list]:
    """The disk-tier phases with the page cache warm (as left by the run before) and dropped, side by side."""
    out = []
    for lab in sorted(cold):
        for n in sorted(cold[lab]):
            for ph in COLD_CACHE_PHASES:
                w, d = med.get(lab, {}).get(n, {}).get(ph), cold[lab][n].get(ph)
                if w is None and d is None:
                    continue
                out.append([lab, str(n), ph, w, d, (d / w) if (d is not None and w) else None])
    return out


def cold_cost_rows(med: dict, baseline: str, candidates: list[str]) -> list[list]:
    """Cold requests (nothing to reuse) of each configuration against the baseline's: what storing costs."""
    out = []
    for lab in candidates:
        for n in sorted(med.get(lab, {})):
            cold, base = med[lab][n].get("cold"), med.get(baseline, {}).get(n, {}).get("cold")
            if cold is None:
                continue
            ratio = (cold / base) if base else None
            out.append([lab, str(n), cold, base, ratio, None if ratio is None else f"{100 * (ratio - 1):+.1f}%"])
    return out


def churn_summary(rows: list[dict]) -> dict:
    """{label: {tokens: {pass: mean TTFT}}} of `churn` rows (a mean: a pass mixes CPU-tier and disk hits)."""
    out: dict = {}
    for r in rows:
        ph = str(r.get("phase", ""))
        if r.get("bench") == "reuse" and ph.startswith("churn_pass") and r.get("ok") and r.get("ttft_s") is not None:
            out.setdefault(r["label"], {}).setdefault(int(r["tokens"]), {}).setdefault(
                int(ph[len("churn_pass"):]), []).append(r["ttft_s"])
    return {lab: {n: {p: sum(v) / len(v) for p, v in d.items()} for n, d in by_n.items()} for lab, by_n in out.items()}


def recompute_s(med: dict, baseline: str, tokens: int):
    """The baseline's recompute time: no-offload after a GPU reset (a full prefill), else its cold TTFT."""
    phases = med.get(baseline, {}).get(tokens, {})
    return phases.get("after_reset") or phases.get("cold")


def evaluate(med: dict, baseline: str, candidates: list[str], kv_bpt: int | None, gbps: float | None,
             tokens: int = TARGET_TOKENS) -> list[dict]:
    targets = []
    rec = recompute_s(med, baseline, tokens)
    floor = c.copy_floor_s(kv_bpt, tokens, gbps) if kv_bpt and gbps else None
    for lab in candidates:
        ph = med.get(lab, {}).get(tokens, {})
        ratio = lambda x: (x / rec) if (x is not None and rec) else None  # noqa: E731
        k = f"{tokens // 1000}k" if tokens % 1000 == 0 else str(tokens)
        targets.append(c.target_row(f"{lab}: CPU-tier hit (after GPU reset), {k}, x recompute",
                                    ratio(ph.get("after_reset")), CPU_HIT_VS_RECOMPUTE, "x"))
        targets.append(c.target_row(f"{lab}: CPU-tier hit, {k}, x copy floor",
                                    (ph["after_reset"] / floor) if (floor and ph.get("after_reset")) else None,
                                    CPU_HIT_VS_FLOOR, "x"))
        targets.append(c.target_row(f"{lab}: after vLLM restart, {k}, x recompute",
                                    ratio(ph.get("after_vllm_restart")), VLLM_RESTART_VS_RECOMPUTE, "x"))
        targets.append(c.target_row(f"{lab}: after full restart (disk), {k}, x recompute",
                                    ratio(ph.get("after_full_restart")), FULL_RESTART_VS_RECOMPUTE, "x"))
        targets += round2_targets(med, baseline, lab, tokens, floor)
        for n in sorted(med.get(lab, {})):
            base_cold = med.get(baseline, {}).get(n, {}).get("cold")
            cold = med[lab][n].get("cold")
            overhead = 100 * (cold / base_cold - 1) if (cold and base_cold) else None
            targets.append(c.target_row(f"{lab}: cold-request cost of storing, {n} tok, over {baseline}",
                                        overhead, 100 * COLD_OVERHEAD, "%"))
            targets.append(c.target_row(f"{lab}: cold-request cost of storing, {n} tok, over {baseline} (issue 12)",
                                        overhead, 100 * COLD_OVERHEAD_R2, "%"))
    return targets


def round2_targets(med: dict, baseline: str, lab: str, tokens: int, floor) -> list[dict]:
    """Issue 12's targets 1 and 2 for one configuration (n/a where a phase was not measured). A "GPU hit" is
    gpu_hit_settled where measured: the hit right after a cold request also waits for that request's store
    (reported on its own row), which is not the steady cost of a hit."""
    ph, base = med.get(lab, {}).get(tokens, {}), med.get(baseline, {}).get(tokens, {})
    short, base_short = med.get(lab, {}).get(SHORT_TOKENS, {}), med.get(baseline, {}).get(SHORT_TOKENS, {})
    hit = lambda d: d.get("gpu_hit_settled") or d.get("gpu_hit")  # noqa: E731
    div = lambda x, y: (x / y) if (x is not None and y) else None  # noqa: E731
    k = f"{tokens // 1000}k" if tokens % 1000 == 0 else str(tokens)
    load = (ph["after_reset"] - hit(ph)) if (ph.get("after_reset") and hit(ph)) else None
    extra_ms = 1000 * (hit(short) - hit(base_short)) if (hit(short) and hit(base_short)) else None
    rows = [
        c.target_row(f"{lab}: GPU hit, {k}, x {baseline} GPU hit", div(hit(ph), hit(base)), HIT_VS_NO_OFFLOAD, "x"),
        c.target_row(f"{lab}: GPU hit, {SHORT_TOKENS} tok, ms over {baseline}", extra_ms, SHORT_HIT_MS, "ms"),
        c.target_row(f"{lab}: CPU-tier load cost (after_reset - GPU hit), {k}, x copy floor", div(load, floor),
                     LOAD_VS_FLOOR, "x"),
        c.target_row(f"{lab}: after full restart, rounds 2+, {k}, x GPU hit before",
                     div(ph.get("restored_gpu_hit"), hit(ph)), RESTORED_VS_BEFORE, "x"),
        c.target_row(f"{lab}: after full restart + GPU reset, {k}, x CPU-tier hit before",
                     div(ph.get("restored_after_reset"), ph.get("after_reset")), RESTORED_VS_BEFORE, "x"),
    ]
    if ph.get("gpu_hit_settled") and base.get("gpu_hit"):
        rows.insert(1, c.target_row(f"{lab}: GPU hit right after the cold request (its store in flight), {k}, "
                                    f"x {baseline}", div(ph.get("gpu_hit"), base.get("gpu_hit")),
                                    HIT_VS_NO_OFFLOAD, "x"))
    return rows


def kv_and_bandwidth(rows, a):
    h2d = c.latest_h2d(rows)
    gbps = a.gb_per_s or (h2d or {}).get("gb_per_s")
    recorded = [r["kv_bytes_per_token"] for r in rows if r.get("bench") == "h2d" and r.get("kv_bytes_per_token")]
    if a.model_config:
        kv_bpt = c.kv_bytes_per_token(c.load_model_config(a.model_config))
    elif recorded:
        kv_bpt = recorded[-1]
    else:
        kv_bpt = c.kv_bytes_per_token(c.LLAMA3_8B_SHAPE)
        c.log("note: no --model-config and none recorded; KV bytes per token of the Llama-3-8B shape assumed")
    return kv_bpt, gbps, h2d


def build_report(rows: list[dict], baseline: str, kv_bpt: int | None, gbps: float | None,
                 h2d: dict | None = None, target_tokens: int = TARGET_TOKENS) -> tuple[dict, str]:
    s = summarize(rows)
    med = s["median"]
    if not med and not churn_summary(rows) and not s["cold_page_cache"]:
        raise c.BenchError("no reuse rows in the results (run `reuse.py run` first)")
    labels = sorted(med, key=lambda lab: (lab != baseline, lab))
    candidates = [lab for lab in labels if lab != baseline]
    all_tokens = sorted({n for lab in med for n in med[lab]})
    md = ["### TTFT, seconds (median over prompts)", ""]
    head = ["config", "tokens", *PHASES]
    md.append(c.markdown_table(head, [[lab, str(n), *[med[lab][n].get(ph) for ph in PHASES]]
                                      for lab in labels for n in sorted(med[lab])]))
    md += ["", f"### Ratio to recompute ({baseline}, prefill after a GPU reset)", ""]
    ratio_rows = []
    for lab in labels:
        for n in sorted(med[lab]):
            rec = recompute_s(med, baseline, n)
            ratio_rows.append([lab, str(n), rec, *[(med[lab][n][ph] / rec) if rec and med[lab][n].get(ph)
                                                           else None for ph in PHASES]])
    md.append(c.markdown_table(["config", "tokens", "recompute s", *PHASES], ratio_rows))
    floor_rows = []
    if kv_bpt:
        for n in all_tokens:
            floor = c.copy_floor_s(kv_bpt, n, gbps) if gbps else None
            for lab in candidates:
                hit = med[lab].get(n, {}).get("after_reset")
                floor_rows.append([str(n), f"{kv_bpt * n / 1e9:.2f}", floor, lab, hit,
                                   (hit / floor) if (hit and floor) else None])
        bw = f"{gbps:.1f} GB/s, pinned memory" if gbps else "not measured"
        if h2d and h2d.get("device_name"):
            bw += f", {h2d['device_name']}"
        md += ["", f"### Copy floor: KV bytes/token {kv_bpt} x tokens / host-to-device bandwidth ({bw})", ""]
        md.append(c.markdown_table(["tokens", "KV GB", "floor s", "config", "CPU-tier hit s", "x floor"], floor_rows))
    cost = cold_cost_rows(med, baseline, candidates)
    if cost:
        md += ["", f"### Cold requests (first time, nothing to reuse): the cost of storing, median s vs {baseline}", ""]
        md.append(c.markdown_table(["config", "tokens", "cold s", f"{baseline} cold s", "x", "cost"], cost))
    warm_cold = page_cache_rows(med, s["cold_page_cache"])
    if warm_cold:
        md += ["", "### Disk tier with the page cache warm and dropped (median s; warm: as the run before left it, "
                   "dropped: `echo 3 > /proc/sys/vm/drop_caches` before the restart)", ""]
        md.append(c.markdown_table(["config", "tokens", "phase", "page cache warm", "page cache dropped",
                                    "dropped x warm"], warm_cold))
    if s["restart_to_ready_s"]:
        md += ["", "### Restart to ready, seconds (through supervisord)", ""]
        md.append(c.markdown_table(["config", "phase", "seconds"],
                                   [[lab, ph, v] for lab, d in sorted(s["restart_to_ready_s"].items())
                                    for ph, v in sorted(d.items())]))
    churn = churn_summary(rows)
    if churn:
        passes = sorted({p for by_n in churn.values() for d in by_n.values() for p in d})
        md += ["", "### Working set larger than the CPU tier: mean TTFT per pass, seconds (every request after a "
                   "GPU reset)", ""]
        md.append(c.markdown_table(["config", "tokens", *[f"pass {p}" for p in passes]],
                                   [[lab, str(n), *[d.get(p) for p in passes]]
                                    for lab, by_n in sorted(churn.items()) for n, d in sorted(by_n.items())]))
    clocks = c.clock_medians([r for r in rows if r.get("bench") == "reuse"],
                             lambda r: (r["label"], r["tokens"],
                                        r["phase"] + (" (page cache dropped)"
                                                      if r.get("page_cache") == "cold" else "")))
    md += c.clock_markdown(clocks, ["config", "tokens", "phase"])
    targets = evaluate(med, baseline, candidates, kv_bpt, gbps, target_tokens)
    md += ["", f"### Targets (issues 5 and 12; baseline {baseline}, {target_tokens} tokens)", "",
           c.targets_markdown(targets)]
    summary = {"baseline": baseline, "median_ttft_s": med, "churn_mean_ttft_s": churn, "count": s["count"],
               "cold_page_cache_median_ttft_s": s["cold_page_cache"],
               "restart_to_ready_s": s["restart_to_ready_s"], "kv_bytes_per_token": kv_bpt,
               "h2d_gb_per_s": gbps, "h2d": h2d, "targets": targets,
               "clocks_median_s": {" / ".join(map(str, g)): m for g, m in clocks.items()}}
    return summary, "\n".join(md)


def chart(med: dict, labels: list[str], floors: dict | None = None):
    """Bars per phase and config, one panel per prompt length; the copy floor as a dashed line."""
    def draw(plt, path):
        tokens = sorted({n for lab in labels for n in med[lab]})
        fig, axes = plt.subplots(1, len(tokens), figsize=(6 * len(tokens), 4.5), squeeze=False)
        width = 0.8 / max(1, len(labels))
        for ax, n in zip(axes[0], tokens):
            for i, lab in enumerate(labels):
                vals = [med[lab].get(n, {}).get(ph) or 0 for ph in PHASES]
                ax.bar([x + i * width for x in range(len(PHASES))], vals, width, label=lab)
            ax.set_xticks([x + width * (len(labels) - 1) / 2 for x in range(len(PHASES))])
            ax.set_xticklabels([p.replace("_", "\n") for p in PHASES], fontsize=8)
            if floors and floors.get(n):
                ax.axhline(floors[n], linestyle="--", color="gray", linewidth=1, label="copy floor")
            ax.set_ylabel("TTFT, s (median)")
            ax.set_title(f"{n} tokens")
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    return draw


def cmd_report(a) -> int:
    rows = c.load_rows(a.results)
    kv_bpt, gbps, h2d = kv_and_bandwidth(rows, a)
    summary, md = build_report(rows, a.baseline, kv_bpt, gbps, h2d, a.target_tokens)
    med = summary["median_ttft_s"]
    labels = sorted(med, key=lambda lab: (lab != a.baseline, lab))
    floors = {n: c.copy_floor_s(kv_bpt, n, gbps) for n in {n for lab in med for n in med[lab]}} if gbps else {}
    return c.publish_report(a.results, "reuse", summary, md, chart(med, labels, floors))


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def measured(p):
        p.add_argument("--label", required=True, help="configuration name, e.g. no-offload, lmcache-server")
        p.add_argument("--base-url", default="http://127.0.0.1:8000")
        p.add_argument("--model", default="llama8b", help="served model name")
        p.add_argument("--tokens", default="16000,30000", help="prompt lengths, comma-separated")
        p.add_argument("--seeds", type=int, default=3, help="prompts per length (seeds 0..N-1)")
        p.add_argument("--seed-list", help="explicit seeds, comma-separated (overrides --seeds)")
        p.add_argument("--salt", default="reuse", help="change it to get prompts no tier has seen")
        p.add_argument("--request-timeout", type=float, default=300)
        p.add_argument("--ready-timeout", type=float, default=300)
        p.add_argument("--no-warmup", action="store_true")
        p.add_argument("--no-clocks", action="store_true",
                       help="do not read vLLM's /metrics around each request (its clocks split the TTFT)")
        p.add_argument("--warmup-tokens", default="1024,8192",
                       help="lengths of the fresh warm-up prompts (8192: one full prefill chunk)")
        p.add_argument("--settle", type=float, default=1.0,
                       help="seconds between a GPU reset and the re-request (the tier finishes storing)")
        p.add_argument("--results", required=True, help="results folder (results.jsonl is appended)")

    run = sub.add_parser("run", help="cold, gpu_hit, after_reset")
    measured(run)
    run.add_argument("--hit-after-settle", action="store_true",
                     help="one more GPU hit --settle seconds after the first (gpu_hit_settled)")
    again = sub.add_parser("again", help="restart through supervisord, then each prompt once")
    measured(again)
    again.add_argument("--phase", required=True, help="after_vllm_restart, after_full_restart, or your own")
    again.add_argument("--restart", choices=("none", "vllm", "kill-vllm", "all", "lmcache"),
                       help="default: vllm for after_vllm_restart, all for after_full_restart, else none")
    again.add_argument("--supervisor-socket", help="supervisord's unix socket (default: found in --run-dir)")
    again.add_argument("--run-dir", help="the appliance's APPLIANCE_RUN_DIR")
    again.add_argument("--inflight-tokens", type=int, default=2048,
                       help="kill-vllm: a fresh request of this many tokens is in flight at the kill (0: none)")
    again.add_argument("--kill-after", type=float, default=0.5,
                       help="kill-vllm: seconds into that request (it streams 256 tokens: still running)")
    again.add_argument("--kill-group", action="store_true",
                       help="kill-vllm: SIGKILL vLLM's whole process group (engine core too), not only its "
                            "main process (then the appliance must clear the orphaned engine core itself)")
    again.add_argument("--page-cache", choices=("warm", "cold"),
                       help="cold: the page cache was dropped before this restart (rows marked, reported apart)")
    again.add_argument("--restored-rounds", type=int, default=1,
                       help="N > 1: then rounds 2..N of the same prompts (restored_gpu_hit) and, after a GPU "
                            "reset, one more (restored_after_reset)")
    churn = sub.add_parser("churn", help="a working set larger than the CPU tier, pass after pass")
    measured(churn)
    churn.add_argument("--prompts", type=int, default=6)
    churn.add_argument("--passes", type=int, default=2)
    rep = sub.add_parser("report", help="tables, targets, chart from the results folder")
    rep.add_argument("--results", required=True)
    rep.add_argument("--baseline", default="no-offload")
    rep.add_argument("--model-config", help="model dir or config.json (default: recorded with bandwidth)")
    rep.add_argument("--gb-per-s", type=float, help="host-to-device bandwidth (default: the measured one)")
    rep.add_argument("--target-tokens", type=int, default=TARGET_TOKENS, help="prompt length the targets use")
    return ap


def main(argv=None) -> int:
    return c.dispatch(parser(), {"run": cmd_run, "again": cmd_again, "churn": cmd_churn, "report": cmd_report}, argv)


if __name__ == "__main__":
    sys.exit(main())
