"""Multi-round conversations: N users, M rounds each, one long shared system prompt plus a history that
grows every round (the previous answer and a new user message). With a GPU KV cache smaller than the
working set (all histories), a user's history is evicted from the GPU between two of its rounds: without
offloading it is recomputed, with an offload tier it is loaded back.

  multiround.py run --label lmcache --base-url http://127.0.0.1:8000 --model llama8b --results R
        streams every request (TTFT = first chunk), appends per-request rows and a run summary
  multiround.py run ... --rate 0.9 --users 10 --history-tokens 12000 --system-tokens 1000 --answer-tokens 100
        the same at a fixed request rate (open loop, as LMCache's multi-round QA describes it): request k starts
        k / rate seconds in, whatever is still running; the users take turns (user k mod N sends its round
        k div N, so each user sends every N / rate seconds), and a user whose previous answer is not complete
        at its turn sends as soon as it is (the lateness is recorded)
  multiround.py report --results R [--baseline no-offload --candidate lmcache --native native]
        p50/p90 TTFT, throughput per label and the issue's targets

Prompts are token ids (exact lengths); the answer appended to the history is a deterministic stand-in of the
length the server generated (dummy weights make the text meaningless anyway; the KV reuse is the same).
--history-tokens gives each user a history of its own before its first round (LMCache's "user history
prompt"), so that histories reach a given length in a few rounds. Bounded in time: no new request starts after
--max-seconds.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time

from bench import common as c

P50_VS_BASELINE = 0.5  # p50 TTFT at least 2x better than no offload (issues 5 and 12)
P50_VS_NATIVE = 0.9  # and at most 0.9x vLLM's native CPU offload at the same CPU budget (issue 12; issue 5: 1.0)
THROUGHPUT_VS_BASELINE = 1.0  # tokens/s no lower than no offload (issue 12)
LATE_S = 0.05  # --rate: a request sent this much after its time is late (its user's previous answer was not in)


def schedule(users: int, rounds: int, rate: float, max_seconds: float) -> list[tuple[float, int, int]]:
    """The fixed-rate plan: [(seconds after the start, user, round)], request k at k / rate, the users in turn
    (user k mod users sends its round k div users), none after max_seconds."""
    if rate <= 0 or users <= 0:
        raise ValueError("rate and users must be > 0")
    out, k = [], 0
    while k // users < rounds and k / rate <= max_seconds:
        out.append((k / rate, k % users, k // users))
        k += 1
    return out


def working_set_tokens(users: int, rounds: int, system: int, user: int, answer: int, history: int = 0) -> int:
    """Distinct tokens of KV all conversations hold at their end (the shared system prompt once)."""
    return system + users * (history + rounds * (user + answer))


def final_context_tokens(rounds: int, system: int, user: int, answer: int, history: int = 0) -> int:
    """Tokens of a user's last request (prompt + its answer)."""
    return system + history + rounds * (user + answer)


class Conversation:
    def __init__(self, a, user: int, system_prompt: list[int]):
        self.a, self.user, self.system = a, user, system_prompt
        own = getattr(a, "history_tokens", 0) or 0  # the user's own history before round 0
        self.history: list[int] = c.token_prompt(f"h{user}", own, a.salt) if own else []

    def prompt(self, rnd: int) -> list[int]:
        return self.system + self.history + c.token_prompt(f"u{self.user}r{rnd}", self.a.user_tokens, self.a.salt)

    def answered(self, rnd: int, prompt: list[int], completion_tokens: int) -> None:
        answer = c.token_prompt(f"a{self.user}r{rnd}", completion_tokens or self.a.answer_tokens, self.a.salt)
        self.history = prompt[len(self.system):] + answer


def run_users(a, emit) -> dict:
    system = c.token_prompt("system", a.system_tokens, a.salt)
    gate = threading.Semaphore(a.concurrency)
    start = time.perf_counter()
    deadline = start + a.max_seconds
    stats = {"requests": 0, "failed": 0, "stopped_by_deadline": 0, "stopped_by_length": 0}
    lock = threading.Lock()

    def user_loop(u: int):
        conv = Conversation(a, u, system)
        time.sleep(u * a.stagger)
        for rnd in range(a.rounds):
            prompt = conv.prompt(rnd)
            if len(prompt) + a.answer_tokens > a.max_model_len:
                with lock:
                    stats["stopped_by_length"] += 1
                return
            with gate:
                if time.perf_counter() > deadline:
                    with lock:
                        stats["stopped_by_deadline"] += 1
                    return
                t_send = time.perf_counter() - start
                res = c.stream_completion(a.base_url, a.model, prompt, a.answer_tokens, a.request_timeout)
            with lock:
                stats["requests"] += 1
                stats["failed"] += 0 if res["ok"] else 1
            emit({"bench": "multiround", "label": a.label, "user": u, "round": rnd, "sent_at_s": t_send,
                  "prompt_len": len(prompt), **res})
            if not res["ok"]:
                c.log(f"user {u} round {rnd}: FAILED {res['error']}")
                if a.stop_on_error:
                    return
            conv.answered(rnd, prompt, res.get("completion_tokens") or 0)
            if a.think_time:
                time.sleep(a.think_time)

    return join_users(a, [(u,) for u in range(a.users)], user_loop, deadline, start, stats)


def join_users(a, per_user: list[tuple], user_loop, deadline: float, start: float, stats: dict) -> dict:
    """One thread per user (user_loop(*args)), all waited for until the deadline plus one request's timeout."""
    threads = [threading.Thread(target=user_loop, args=args, daemon=True) for args in per_user]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(1.0, deadline - time.perf_counter() + a.request_timeout + 5))
    stats["wall_s"] = time.perf_counter() - start
    stats["threads_left"] = sum(t.is_alive() for t in threads)
    return stats


def run_rate(a, emit) -> dict:
    """Open loop: each request starts at its time in `schedule`, or as soon as the user's previous round is
    answered if that is later; nothing waits for other users' requests."""
    system = c.token_prompt("system", a.system_tokens, a.salt)
    plan = schedule(a.users, a.rounds, a.rate, a.max_seconds)
    start = time.perf_counter()
    deadline = start + a.max_seconds
    stats = {"requests": 0, "failed": 0, "stopped_by_deadline": 0, "stopped_by_length": 0, "scheduled": len(plan),
             "late": 0, "max_late_s": 0.0}
    lock = threading.Lock()

    def user_loop(u: int, slots: list[tuple[float, int, int]]):
        conv = Conversation(a, u, system)
        for at, _, rnd in slots:
            prompt = conv.prompt(rnd)
            if len(prompt) + a.answer_tokens > a.max_model_len:
                with lock:
                    stats["stopped_by_length"] += 1
                return
            wait = start + at - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            elif time.perf_counter() > deadline:  # its previous round ran past the end of the schedule
                with lock:
                    stats["stopped_by_deadline"] += 1
                return
            t_send = time.perf_counter() - start
            late = max(0.0, t_send - at)
            res = c.stream_completion(a.base_url, a.model, prompt, a.answer_tokens, a.request_timeout)
            with lock:
                stats["requests"] += 1
                stats["failed"] += 0 if res["ok"] else 1
                if late > LATE_S:
                    stats["late"] += 1
                stats["max_late_s"] = max(stats["max_late_s"], late)
            emit({"bench": "multiround", "label": a.label, "user": u, "round": rnd, "sent_at_s": t_send,
                  "scheduled_at_s": at, "late_s": late, "prompt_len": len(prompt), **res})
            if not res["ok"]:
                c.log(f"user {u} round {rnd}: FAILED {res['error']}")
                if a.stop_on_error:
                    return
            conv.answered(rnd, prompt, res.get("completion_tokens") or 0)

    return join_users(a, [(u, [s for s in plan if s[1] == u]) for u in range(a.users)], user_loop, deadline,
                      start, stats)


def cmd_run(a) -> int:
    c.wait_ready(a.base_url, a.model, timeout=a.ready_timeout)
    history = a.history_tokens
    ws = working_set_tokens(a.users, a.rounds, a.system_tokens, a.user_tokens, a.answer_tokens, history)
    final = final_context_tokens(a.rounds, a.system_tokens, a.user_tokens, a.answer_tokens, history)
    load = f"{a.rate:g} requests/s (open loop)" if a.rate else f"concurrency {a.concurrency}"
    c.log(f"{a.label}: {a.users} users x {a.rounds} rounds, {load}; working set {ws} tokens, "
          f"last request {final} tokens")
    if not a.no_warmup:  # first-request costs out of the numbers; a prompt no user sends
        w = c.stream_completion(a.base_url, a.model, c.token_prompt(time.time_ns(), 1024, "warmup"), 4,
                                a.request_timeout)
        if not w["ok"]:
            raise c.BenchError(f"warm-up request failed: {w['error']}")
    rows: list[dict] = []
    lock = threading.Lock()

    def emit(row):  # appended at once: a run cut short keeps what it measured
        with lock:
            rows.append(row)
        c.append_rows(a.results, [row])
        if row["ok"]:
            c.log(f"{a.label} u{row['user']:>2} r{row['round']}: ttft {row['ttft_s']:.3f} s, "
                  f"{row['prompt_tokens']} prompt tok")

    before = None if a.no_clocks else c.engine_clocks(a.base_url)
    stats = run_rate(a, emit) if a.rate else run_users(a, emit)
    time.sleep(0.5 if before else 0)  # vLLM records the last requests' times as they finish
    clocks = c.clock_split(before, c.engine_clocks(a.base_url) if before else None)
    ok = [r for r in rows if r["ok"]]
    prompt_tok = sum(r.get("prompt_tokens") or r["prompt_len"] for r in ok)
    out_tok = sum(r.get("completion_tokens") or 0 for r in ok)
    summary = {"bench": "multiround_run", "label": a.label, "ok": stats["failed"] == 0 and bool(ok),
               "params": {k: getattr(a, k) for k in ("users", "rounds", "system_tokens", "user_tokens",
                                                     "answer_tokens", "concurrency", "max_seconds", "think_time",
                                                     "stagger", "max_model_len", "gpu_kv_tokens", "rate",
                                                     "history_tokens")},
               "working_set_tokens": ws, **stats, "prompt_tokens": prompt_tok, "completion_tokens": out_tok,
               "tokens_per_s": (prompt_tok + out_tok) / stats["wall_s"] if stats["wall_s"] else None,
               "output_tokens_per_s": out_tok / stats["wall_s"] if stats["wall_s"] else None,
               "requests_per_s": len(ok) / stats["wall_s"] if stats["wall_s"] else None,
               "ttft_p50_s": c.percentile([r["ttft_s"] for r in ok], 50),
               "ttft_p90_s": c.percentile([r["ttft_s"] for r in ok], 90),
               # vLLM's clocks over the run, means per request (common.ENGINE_CLOCKS): with requests in flight
               # together only the means can be told apart, not each request's
               "clocks_mean_s": clocks}
    c.append_rows(a.results, [summary])
    c.log(f"{a.label}: {len(ok)} ok / {stats['failed']} failed in {stats['wall_s']:.1f} s; "
          f"p50 {c.fmt(summary['ttft_p50_s'])} s, p90 {c.fmt(summary['ttft_p90_s'])} s, "
          f"{c.fmt(summary['tokens_per_s'], 0)} tok/s; stopped by deadline: {stats['stopped_by_deadline']} users"
          + (f"; {stats['late']} of {stats['scheduled']} scheduled requests late (max {stats['max_late_s']:.2f} s)"
             if a.rate else ""))
    if stats["failed"] or not ok:
        c.log(f"ERROR: {stats['failed']} request(s) failed")
        return 1
    return 0


# --- report ----------------------------------------------------------------------------------------------

def summarize(rows: list[dict], from_round: int = 0) -> dict:
    """Per label: TTFT percentiles over its last run's requests, and that run's throughput."""
    out = {}
    for label, (run, reqs) in c.last_runs(rows, "multiround").items():
        ttft = [r["ttft_s"] for r in reqs if r.get("ok")]
        later = [r["ttft_s"] for r in reqs if r.get("ok") and r.get("round", 0) >= from_round]
        by_round = {}
        for r in reqs:
            if r.get("ok"):
                by_round.setdefault(int(r["round"]), []).append(r["ttft_s"])
        out[label] = {"requests": len(reqs), "failed": sum(not r.get("ok") for r in reqs),
                      "p50_s": c.percentile(ttft, 50), "p90_s": c.percentile(ttft, 90),
                      "mean_s": (sum(ttft) / len(ttft)) if ttft else None,
                      "p50_later_s": c.percentile(later, 50), "p90_later_s": c.percentile(later, 90),
                      "tokens_per_s": run.get("tokens_per_s"), "output_tokens_per_s": run.get("output_tokens_per_s"),
                      "requests_per_s": run.get("requests_per_s"), "wall_s": run.get("wall_s"),
                      "scheduled": run.get("scheduled"), "late": run.get("late"),
                      "working_set_tokens": run.get("working_set_tokens"), "params": run.get("params"),
                      "p50_by_round_s": {k: c.median(v) for k, v in sorted(by_round.items())},
                      "clocks_mean_s": run.get("clocks_mean_s") or {}}
    return out


def evaluate(s: dict, baseline: str, candidate: str, native: str) -> list[dict]:
    cand, base, nat = s.get(candidate, {}), s.get(baseline, {}), s.get(native, {})
    ratio = lambda x, y: (x / y) if (x is not None and y) else None  # noqa: E731
    return [c.target_row(f"{candidate}: p50 TTFT x {baseline}", ratio(cand.get("p50_s"), base.get("p50_s")),
                         P50_VS_BASELINE, "x"),
            c.target_row(f"{candidate}: p50 TTFT x {native}", ratio(cand.get("p50_s"), nat.get("p50_s")),
                         P50_VS_NATIVE, "x"),
            c.target_row(f"{candidate}: throughput (tok/s) x {baseline}",
                         ratio(cand.get("tokens_per_s"), base.get("tokens_per_s")), THROUGHPUT_VS_BASELINE, "x",
                         lower_is_better=False)]


def build_report(rows, baseline: str, candidate: str, native: str, from_round: int) -> tuple[dict, str]:
    s = summarize(rows, from_round)
    if not s:
        raise c.BenchError("no multiround runs in the results (run `multiround.py run` first)")
    order = sorted(s, key=lambda lab: ({baseline: 0, native: 1, candidate: 2}.get(lab, 3), lab))
    any_params = next(iter(s.values())).get("params") or {}
    rate = any_params.get("rate")
    load = f"{rate:g} requests/s (open loop)" if rate else f"concurrency {any_params.get('concurrency')}"
    history = f" + own history {any_params['history_tokens']}" if any_params.get("history_tokens") else ""
    md = [f"### Multi-round: {any_params.get('users')} users x {any_params.get('rounds')} rounds, "
          f"system {any_params.get('system_tokens')}{history} + {any_params.get('user_tokens')} tok/round + answer "
          f"{any_params.get('answer_tokens')}, {load}", ""]
    late = any(v.get("late") is not None for v in s.values())
    md.append(c.markdown_table(
        ["config", "requests", "failed", "TTFT p50 s", "TTFT p90 s", f"p50 rounds>={from_round}",
         f"p90 rounds>={from_round}", "tok/s", "out tok/s", "req/s", "wall s", *(["late"] if late else [])],
        [[lab, str(v["requests"]), str(v["failed"]), v["p50_s"], v["p90_s"], v["p50_later_s"], v["p90_later_s"],
          c.fmt(v["tokens_per_s"], 0), c.fmt(v["output_tokens_per_s"], 0), c.fmt(v["requests_per_s"], 2),
          c.fmt(v["wall_s"], 1), *([f"{c.fmt(v.get('late'))}/{c.fmt(v.get('scheduled'))}"] if late else [])]
         for lab, v in ((lab, s[lab]) for lab in order)]))
    rounds = sorted({r for v in s.values() for r in v["p50_by_round_s"]})
    md += ["", "### p50 TTFT by round, seconds", ""]
    md.append(c.markdown_table(["config", *[f"r{r}" for r in rounds]],
                               [[lab, *[s[lab]["p50_by_round_s"].get(r) for r in rounds]] for lab in order]))
    if any(s[lab]["clocks_mean_s"] for lab in order):
        md += ["", "### Where the time went: vLLM's own clocks over the run, mean seconds per request", "",
               "engine TTFT: arrival in vLLM -> first token; queue: arrival -> scheduled (with LMCache's blocking "
               "lookup the lookup waits here, and the other requests with it); lookup: LMCache's lookup as vLLM's "
               "scheduler timed it; prefill: scheduled -> first token (KV load, forward passes, other requests' "
               "steps).", ""]
        md.append(c.markdown_table(
            ["config", "requests", "mean TTFT", "engine TTFT", "queue", "lookups", "lookup", "prefill"],
            [[lab, str(k.get("engine_requests")), s[lab]["mean_s"], k.get("engine_ttft_s"), k.get("queue_s"),
              str(k.get("lookups", "-")), k.get("lookup_s"), k.get("prefill_s")]
             for lab, k in ((lab, s[lab]["clocks_mean_s"]) for lab in order) if k]))
    targets = evaluate(s, baseline, candidate, native)
    ws = next(iter(s.values())).get("working_set_tokens")
    kv = any_params.get("gpu_kv_tokens")
    vs_gpu = f" = {ws / kv:.1f} x the GPU KV cache of {kv} tokens" if (ws and kv) else ""
    md += ["", f"### Targets (issues 5 and 12; working set {ws} tokens{vs_gpu})", "", c.targets_markdown(targets)]
    summary = {"labels": s, "targets": targets, "baseline": baseline, "candidate": candidate, "native": native}
    return summary, "\n".join(md)


def chart(rows, s: dict, order: list[str]):
    def draw(plt, path):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
        runs = c.last_runs(rows, "multiround")
        for lab in order:
            ttft = sorted(r["ttft_s"] for r in runs[lab][1] if r.get("ok"))
            if ttft:
                ax1.plot(ttft, [(i + 1) / len(ttft) for i in range(len(ttft))], label=lab)
            by_round = s[lab]["p50_by_round_s"]
            ax2.plot(list(by_round), list(by_round.values()), marker="o", label=lab)
            ax2.set_xticks(list(by_round))
        ax1.set_xlabel("TTFT, s")
        ax1.set_ylabel("share of requests")
        ax1.set_title("TTFT distribution")
        ax2.set_xlabel("round")
        ax2.set_ylabel("p50 TTFT, s")
        ax2.set_title("p50 TTFT by round")
        for ax in (ax1, ax2):
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    return draw


def cmd_report(a) -> int:
    rows = c.load_rows(a.results)
    summary, md = build_report(rows, a.baseline, a.candidate, a.native, a.from_round)
    order = sorted(summary["labels"], key=lambda lab: ({a.baseline: 0, a.native: 1, a.candidate: 2}.get(lab, 3), lab))
    return c.publish_report(a.results, "multiround", summary, md, chart(rows, summary["labels"], order))


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run")
    run.add_argument("--label", required=True)
    run.add_argument("--base-url", default="http://127.0.0.1:8000")
    run.add_argument("--model", default="llama8b")
    run.add_argument("--users", type=int, default=20)
    run.add_argument("--rounds", type=int, default=8)
    run.add_argument("--system-tokens", type=int, default=2000)
    run.add_argument("--user-tokens", type=int, default=768, help="new user message per round")
    run.add_argument("--answer-tokens", type=int, default=32, help="max_tokens of each answer (ignore_eos)")
    run.add_argument("--concurrency", type=int, default=3, help="requests in flight at most (without --rate)")
    run.add_argument("--rate", type=float, default=0.0,
                     help="requests/s: a fixed-rate open loop instead of --concurrency (see above)")
    run.add_argument("--history-tokens", type=int, default=0, help="each user's own history before round 0")
    run.add_argument("--think-time", type=float, default=0.0, help="seconds a user waits between rounds")
    run.add_argument("--stagger", type=float, default=0.05, help="user i starts i x this many seconds late")
    run.add_argument("--max-seconds", type=float, default=120, help="no new request after this")
    run.add_argument("--max-model-len", type=int, default=16384, help="a user stops before exceeding it")
    run.add_argument("--gpu-kv-tokens", type=int, help="vLLM's GPU KV cache size in tokens (its log says it), "
                     "recorded so the report can say how far the working set exceeds it")
    run.add_argument("--salt", default="multiround")
    run.add_argument("--request-timeout", type=float, default=120)
    run.add_argument("--ready-timeout", type=float, default=300)
    run.add_argument("--stop-on-error", action="store_true", help="a user stops at its first failed request")
    run.add_argument("--no-warmup", action="store_true")
    run.add_argument("--no-clocks", action="store_true", help="do not read vLLM's /metrics before and after the run")
    run.add_argument("--results", required=True)
    rep = sub.add_parser("report")
    rep.add_argument("--results", required=True)
    rep.add_argument("--baseline", default="no-offload")
    rep.add_argument("--candidate", default="lmcache")
    rep.add_argument("--native", default="native")
    rep.add_argument("--from-round", type=int, default=2, help="extra p50/p90 columns over rounds >= this")
    return ap


def main(argv=None) -> int:
    return c.dispatch(parser(), {"run": cmd_run, "report": cmd_report}, argv)


if __name__ == "__main__":
    sys.exit(main())
