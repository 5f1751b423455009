"""Faults under load: closed-loop clients, one fault at a fixed time, per-window successes, errors and TTFT.

  loadfaults.py run --label L --fault kill-lmcache --run-dir D --results R [--clients 16 --duration 120
                    --fault-at 30 --window 10 ...]
  loadfaults.py report --results R

Clients: N threads in a closed loop, each sending its next request when the previous one ends (after a
503 it waits the Retry-After it was given, at most --retry-cap s; after a refused connection 0.2 s, as a
client's backoff would). A request is, with probability --shared-share, one of --prefixes shared prefixes of
--prefix-tokens tokens plus a short random tail (what an offload tier serves), else --min-tokens..--max-tokens
random tokens; --output-tokens each, streamed (TTFT is the first token; a server that answers without
streaming, as the test stub does, counts its whole answer).

Faults (at --fault-at s; `none` for a baseline):
  kill-lmcache   SIGKILL the LMCache server's process group through supervisord's socket (--run-dir)
  kill-vllm      SIGKILL vLLM's process group likewise
  fill-disk:DIR  fill the file system of DIR from outside (a filler file, --leave-mib left), removed at the end
  sigterm        SIGTERM to `serve` (--serve-pid): in-flight requests must complete, new ones be refused cleanly
  cmd:COMMAND    any shell command
Each request is recorded (start, end, outcome, TTFT); the run appends one `loadfaults` row to
results.jsonl with the windows and a summary: errors among the requests in flight at the fault, errors that
started later (in the first 5 s and after), when the last error ended, and what answered meanwhile (503 from
the appliance's gap program, refused, reset, timeout, HTTP errors). `report` writes loadfaults.md/.json/.png.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

from bench import common as c

GAP_HEADER = "X-Appliance-Gap"  # entrypoint/programs/gap.py: the appliance's 503 while vLLM is down
LATE_AFTER_S = 5.0  # issue 14: no failed request may start later than this after an LMCache server kill


# -- one request ----------------------------------------------------------------------------------------

def classify(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected,
                        http.client.IncompleteRead)):
        return "reset"
    if isinstance(exc, TimeoutError) or "timed out" in str(exc):
        return "timeout"
    return type(exc).__name__


def request(base: str, model: str, prompt: list[int], max_tokens: int, timeout: float) -> dict:
    """One streamed completion: ok, error kind, TTFT and latency, Retry-After of a 503."""
    url = urllib.parse.urlsplit(base)
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                       "stream": True, "ignore_eos": True}).encode()
    out = {"ok": False, "error": None, "ttft_s": None, "latency_s": None, "retry_after": None}
    t = time.perf_counter()
    conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=timeout)
    try:
        conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        if r.status != 200:
            r.read()
            out["error"] = "503-gap" if r.status == 503 and r.getheader(GAP_HEADER) else f"http-{r.status}"
            ra = r.getheader("Retry-After")
            out["retry_after"] = float(ra) if ra and ra.replace(".", "", 1).isdigit() else None
            return out
        if "text/event-stream" not in (r.getheader("Content-Type") or ""):
            json.loads(r.read() or b"{}")  # an answer without streaming: its end is its first token
            out["ttft_s"] = time.perf_counter() - t
            out["ok"] = True
            return out
        done = False
        for chunk in c.sse_chunks(r):
            if chunk is c.STREAM_DONE:
                done = True
                break
            if chunk.get("error"):
                out["error"] = "stream-error"
                return out
            if chunk.get("choices") and out["ttft_s"] is None:
                out["ttft_s"] = time.perf_counter() - t
        out["ok"] = done and out["ttft_s"] is not None
        if not out["ok"]:
            out["error"] = "reset" if not done else "no-token"
    except (OSError, http.client.HTTPException, ValueError) as e:
        out["error"] = classify(e)
    finally:
        out["latency_s"] = time.perf_counter() - t
        conn.close()
    return out


# -- the workload ---------------------------------------------------------------------------------------

class Workload:
    """The issue's mix: shared long prefixes and random prompts (token ids, deterministic per seed)."""

    def __init__(self, a, seed: int = 0):
        self.a = a
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.prefixes = [c.token_prompt(f"prefix-{i}", a.prefix_tokens, "loadfaults") for i in range(a.prefixes)]

    def next(self) -> tuple[str, list[int]]:
        with self.lock:
            shared = self.rng.random() < self.a.shared_share
            n = self.rng.randint(self.a.min_tokens, self.a.max_tokens)
            i = self.rng.randrange(len(self.prefixes)) if self.prefixes else 0
            seed = self.rng.getrandbits(64)
        if shared and self.prefixes:
            return "shared", self.prefixes[i] + c.token_prompt(seed, 32, "tail")
        return "random", c.token_prompt(seed, n, "random")


def client_loop(a, load: Workload, t0: float, stop_at: float, records: list, lock: threading.Lock) -> None:
    while time.time() < stop_at:
        kind, prompt = load.next()
        start = time.time()
        res = request(a.base_url, a.model, prompt, a.output_tokens, a.request_timeout)
        end = time.time()
        with lock:
            records.append({"start": round(start - t0, 3), "end": round(end - t0, 3), "ok": res["ok"],
                            "error": res["error"], "ttft_s": res["ttft_s"], "kind": kind})
        if res["error"] == "503-gap" or res["error"] == "http-503":
            time.sleep(min(res["retry_after"] or 1.0, a.retry_cap))
        elif not res["ok"] and end - start < 0.2:
            time.sleep(0.2)  # refused at once: back off as a client would, do not spin


# -- what the tiers do meanwhile -------------------------------------------------------------------------

L1_FAILURES = "lmcache_mp_l1_allocation_failure_chunks_total"  # LMCache 0.5.6: chunks the CPU tier could not take
HIT_TOKENS = "lmcache_mp_lookup_hit_tokens_total"  # tokens the LMCache server found (any tier): the cache works


def dir_bytes(path: str) -> int:
    total, stack = 0, [path]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                elif e.is_file(follow_symlinks=False):
                    total += e.stat(follow_symlinks=False).st_size
            except OSError:
                continue  # evicted meanwhile
    return total


metric_sum = c.metric_sum  # the appliance's Prometheus parser (prometheus_client's)


def sampler(a, t0: float, stop: threading.Event, samples: list) -> None:
    """Every second: the disk tier's bytes (--disk-dir) and LMCache's CPU-tier allocation failures
    (--metrics-url, the appliance's metrics endpoint)."""
    while not stop.wait(1.0):
        disk = dir_bytes(a.disk_dir) if a.disk_dir else None
        failures = hits = None
        if a.metrics_url:
            try:
                status, text, _ = c.http_json(a.metrics_url, timeout=2)
                if status == 200 and isinstance(text, str):
                    failures, hits = metric_sum(text, L1_FAILURES), metric_sum(text, HIT_TOKENS)
            except Exception:  # noqa: BLE001 - the endpoint restarting: a gap in the samples
                pass
        samples.append({"t": round(time.time() - t0, 2), "disk_bytes": disk, "l1_failures": failures,
                        "hit_tokens": hits})


def add_samples(ws: list[dict], samples: list[dict], cap_gib: float | None) -> None:
    """Per window: the disk tier's peak (and over its cap, in %), and the CPU tier's allocation failures."""
    prev = None
    for w in ws:
        inside = [x for x in samples if w["start"] <= x["t"] < w["end"]]
        disk = [x["disk_bytes"] for x in inside if x["disk_bytes"] is not None]
        w["disk_peak_gib"] = round(max(disk) / 2**30, 3) if disk else None
        w["disk_over_cap_pct"] = (round(100 * (max(disk) / (cap_gib * 2**30) - 1), 1)
                                  if disk and cap_gib else None)
        fails = [x["l1_failures"] for x in inside if x["l1_failures"] is not None]
        if fails:
            base = prev if prev is not None else fails[0]
            w["l1_alloc_failures"] = max(0.0, fails[-1] - base)
            prev = fails[-1]
        else:
            w["l1_alloc_failures"] = None
        # LMCache's hit tokens in the window: a restarted server counts from 0 again, so only growth counts
        hits = [x.get("hit_tokens") for x in inside if x.get("hit_tokens") is not None]
        before = [x.get("hit_tokens") for x in samples if x["t"] < w["start"] and x.get("hit_tokens") is not None]
        series = before[-1:] + hits
        w["hit_tokens"] = sum(max(0.0, b - a) for a, b in zip(series, series[1:])) if hits else None


# -- faults ---------------------------------------------------------------------------------------------

def inject(a, spec: str) -> dict:
    """Do the fault now; what was done, for the report (and what to undo at the end)."""
    name, _, arg = spec.partition(":")
    if name == "none":
        return {"fault": "none"}
    if name in ("kill-lmcache", "kill-vllm"):
        sup = c.Supervisor(a.supervisor_socket or c.socket_from_run_dir(a.run_dir))
        program = name.split("-", 1)[1]
        pid = sup.kill(program, signal.SIGKILL, group=True)
        return {"fault": name, "pid": pid}
    if name == "fill-disk":
        from bench.faults import fill  # the same filler as faults.py disk-fill
        total = shutil.disk_usage(arg).total
        if total > a.fill_max_gib * 2**30:  # never the host's own disk: a small volume (the suite's tmpfs) only
            raise c.BenchError(f"{arg} is on a {total / 2**30:.0f} GiB file system, more than --fill-max-gib "
                               f"{a.fill_max_gib:g}: not filled")
        filler = fill(Path(arg), a.leave_mib << 20)
        return {"fault": name, "filler": str(filler), "free_after": shutil.disk_usage(arg).free}
    if name == "sigterm":
        os.kill(a.serve_pid, signal.SIGTERM)
        return {"fault": name, "pid": a.serve_pid}
    if name == "cmd":
        done = subprocess.run(arg, shell=True, capture_output=True, text=True, timeout=60)
        return {"fault": name, "command": arg, "rc": done.returncode, "output": (done.stdout + done.stderr)[-500:]}
    raise c.BenchError(f"unknown fault {spec!r} (none, kill-lmcache, kill-vllm, fill-disk:DIR, sigterm, cmd:...)")


def undo(done: dict) -> None:
    if done.get("filler"):
        Path(done["filler"]).unlink(missing_ok=True)


# -- analysis -------------------------------------------------------------------------------------------

def windows(records: list[dict], duration: float, width: float) -> list[dict]:
    """Per window of `width` s, by the time each request ended (when its outcome was known): successes,
    errors by kind, TTFT p50/p90 of the successes. Requests still running at the end are not in them."""
    count = max(1, int(-(-duration // width)))
    out = []
    for i in range(count):
        lo, hi = i * width, (i + 1) * width
        inside = [r for r in records if lo <= r["end"] < hi or (i == count - 1 and r["end"] == hi)]
        ok = [r for r in inside if r["ok"]]
        kinds: dict[str, int] = {}
        for r in inside:
            if not r["ok"]:
                kinds[r["error"] or "?"] = kinds.get(r["error"] or "?", 0) + 1
        ttft = [r["ttft_s"] for r in ok if r["ttft_s"] is not None]
        shared = [r["ttft_s"] for r in ok if r["ttft_s"] is not None and r.get("kind") == "shared"]
        out.append({"start": lo, "end": hi, "ok": len(ok), "errors": len(inside) - len(ok), "error_kinds": kinds,
                    "ttft_p50": c.percentile(ttft, 50), "ttft_p90": c.percentile(ttft, 90),
                    "shared_ttft_p50": c.percentile(shared, 50)})
    return out


def summary(records: list[dict], fault_at: float | None, late_after: float = LATE_AFTER_S) -> dict:
    """What the targets ask: failures among the requests in flight at the fault, failures of requests started
    after it (within `late_after` s, and later), when the last failure ended, and the error kinds."""
    failed = [r for r in records if not r["ok"]]
    kinds: dict[str, int] = {}
    for r in failed:
        kinds[r["error"] or "?"] = kinds.get(r["error"] or "?", 0) + 1
    out = {"requests": len(records), "ok": len(records) - len(failed), "errors": len(failed), "error_kinds": kinds,
           "in_flight_at_fault": None, "failed_in_flight": None, "failed_started_after": None,
           "failed_started_late": None, "last_error_end_s": None, "recovered_s": None}
    if fault_at is None:
        return out
    in_flight = [r for r in records if r["start"] <= fault_at < r["end"]]
    after = [r for r in failed if r["start"] > fault_at]
    out.update(in_flight_at_fault=len(in_flight), failed_in_flight=sum(not r["ok"] for r in in_flight),
               failed_started_after=len(after),
               failed_started_late=sum(r["start"] > fault_at + late_after for r in after))
    since = [r for r in failed if r["end"] >= fault_at]
    if since:
        last = max(r["end"] for r in since)
        out["last_error_end_s"] = round(last - fault_at, 2)
        # recovered: the first success that started after the last failure ended
        back = [r["end"] for r in records if r["ok"] and r["start"] >= last]
        out["recovered_s"] = round(min(back) - fault_at, 2) if back else None
    return out


def tier_summary(samples: list[dict], cap_gib: float | None) -> dict:
    disk = [x["disk_bytes"] for x in samples if x["disk_bytes"] is not None]
    fails = [x["l1_failures"] for x in samples if x["l1_failures"] is not None]
    peak = max(disk) if disk else None
    return {"disk_peak_gib": round(peak / 2**30, 3) if peak is not None else None, "disk_cap_gib": cap_gib,
            "disk_over_cap_pct": round(100 * (peak / (cap_gib * 2**30) - 1), 1) if peak is not None and cap_gib
            else None,
            "l1_alloc_failures": max(fails) - min(fails) if fails else None}


def markdown(rows: list[dict]) -> str:
    parts = []
    table = []
    for row in rows:
        s = row["summary"]
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(s["error_kinds"].items())) or "-"
        table.append([row["label"], row["fault"], f"{row['fault_at']:g} s", str(s["requests"]), str(s["errors"]),
                      f"{s['failed_in_flight']}/{s['in_flight_at_fault']}" if s["in_flight_at_fault"] is not None
                      else "-", c.fmt(s["failed_started_after"]), c.fmt(s["failed_started_late"]),
                      c.fmt(s["last_error_end_s"], 1, " s"), c.fmt(s["recovered_s"], 1, " s"), kinds,
                      _disk(s.get("disk_peak_gib"), s.get("disk_cap_gib"), s.get("disk_over_cap_pct")),
                      c.fmt(s.get("l1_alloc_failures"), 0)])
    parts.append("### Faults under load\n\n" + c.markdown_table(
        ["run", "fault", "at", "requests", "failed", "failed in flight", "failed, started after",
         f"started > {LATE_AFTER_S:g} s after", "last failure ended", "recovered", "errors by kind",
         "disk tier peak / cap", "CPU-tier allocation failures (chunks)"], table))
    for row in rows:
        lines = [[f"{w['start']:g}-{w['end']:g}", str(w["ok"]), str(w["errors"]),
                  ", ".join(f"{k} {v}" for k, v in sorted(w["error_kinds"].items())) or "-",
                  c.fmt(w["ttft_p50"], 3), c.fmt(w["ttft_p90"], 3), c.fmt(w.get("shared_ttft_p50"), 3),
                  c.fmt(w.get("hit_tokens"), 0), c.fmt(w.get("disk_peak_gib"), 2),
                  c.fmt(w.get("l1_alloc_failures"), 0)] for w in row["windows"]]
        parts.append(f"#### {row['label']}: {row['fault']} at {row['fault_at']:g} s, {row['clients']} clients\n\n"
                     + c.markdown_table(["window (s)", "ok", "errors", "errors by kind", "TTFT p50 (s)",
                                         "TTFT p90 (s)", "shared-prefix TTFT p50 (s)", "LMCache hit tokens",
                                         "disk tier peak (GiB)", "CPU-tier alloc. failures"], lines))
    return "\n\n".join(parts)


def _disk(peak, cap, over) -> str:
    if peak is None:
        return "-"
    return f"{peak:.2f} / {cap:g} GiB ({over:+.1f}%)" if cap else f"{peak:.2f} GiB"


def chart(rows: list[dict]):
    def draw(plt, path):
        fig, axes = plt.subplots(len(rows), 1, figsize=(10, 3.2 * len(rows)), squeeze=False)
        for ax, row in zip(axes[:, 0], rows):
            ws = row["windows"]
            mids = [(w["start"] + w["end"]) / 2 for w in ws]
            width = (ws[0]["end"] - ws[0]["start"]) * 0.8 if ws else 1
            ax.bar(mids, [w["ok"] for w in ws], width=width, color="tab:green", label="ok")
            ax.bar(mids, [w["errors"] for w in ws], width=width, bottom=[w["ok"] for w in ws], color="tab:red",
                   label="errors")
            ax.set_ylabel("requests / window")
            ax.axvline(row["fault_at"], color="black", linestyle="--", label=f"{row['fault']}")
            ax2 = ax.twinx()
            ax2.plot(mids, [w["ttft_p50"] for w in ws], "o-", color="tab:blue", label="TTFT p50")
            ax2.plot(mids, [w["ttft_p90"] for w in ws], "s--", color="tab:purple", label="TTFT p90")
            ax2.set_ylabel("TTFT (s)")
            ax.set_title(f"{row['label']}: {row['fault']} at {row['fault_at']:g} s ({row['clients']} clients)")
            handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
            ax.legend(handles, [h.get_label() for h in handles], loc="upper right", fontsize=8)
        axes[-1, 0].set_xlabel("seconds since the load started")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    return draw


# -- commands -------------------------------------------------------------------------------------------

def cmd_run(a) -> int:
    c.wait_ready(a.base_url, a.model, timeout=a.ready_timeout)
    load = Workload(a, a.seed)
    records: list[dict] = []
    lock = threading.Lock()
    t0 = time.time()
    stop_at = t0 + a.duration
    threads = [threading.Thread(target=client_loop, args=(a, load, t0, stop_at, records, lock), daemon=True)
               for _ in range(a.clients)]
    samples: list[dict] = []
    stop_sampling = threading.Event()
    watcher = threading.Thread(target=sampler, args=(a, t0, stop_sampling, samples), daemon=True)
    watcher.start()
    for t in threads:
        t.start()
    c.log(f"{a.label}: {a.clients} clients for {a.duration:g} s; {a.fault} at {a.fault_at:g} s")
    done: dict = {"fault": "none"}
    if a.fault != "none":
        time.sleep(max(0.0, t0 + a.fault_at - time.time()))
        try:
            done = inject(a, a.fault)
        except Exception as e:  # noqa: BLE001 - the load goes on; the row says the fault failed
            done = {"fault": a.fault, "failed": f"{type(e).__name__}: {e}"}
        c.log(f"{a.label}: fault {a.fault} at {time.time() - t0:.1f} s: {done}")
    for t in threads:
        t.join(max(0.0, stop_at - time.time()) + a.request_timeout + 5)
    stop_sampling.set()
    watcher.join(5)
    undo(done)
    with lock:
        recs = sorted(records, key=lambda r: r["start"])
    fault_at = a.fault_at if a.fault != "none" else None
    ws = windows(recs, a.duration, a.window)
    add_samples(ws, samples, a.disk_cap_gib)
    tiers = tier_summary(samples, a.disk_cap_gib)
    row = {"bench": "loadfaults", "label": a.label, "fault": a.fault, "fault_at": a.fault_at if fault_at else 0,
           "injected": done, "clients": a.clients, "duration_s": a.duration, "window_s": a.window,
           "windows": ws, "summary": {**summary(recs, fault_at), **tiers},
           "workload": {"prefixes": a.prefixes, "prefix_tokens": a.prefix_tokens, "shared_share": a.shared_share,
                        "min_tokens": a.min_tokens, "max_tokens": a.max_tokens, "output_tokens": a.output_tokens}}
    if a.keep_requests:
        row["requests"] = recs
    c.append_rows(a.results, [row])
    print(markdown([row]))
    s = row["summary"]
    return 0 if s["requests"] else 1


def cmd_report(a) -> int:
    rows = c.load_rows(a.results, "loadfaults")
    md = markdown(rows) if rows else "### Faults under load\n\n(no runs)"
    c.write_report(a.results, "loadfaults", {"runs": rows}, md, chart(rows) if rows else None)
    print(md)
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--label", required=True)
    r.add_argument("--results", required=True)
    r.add_argument("--base-url", default="http://127.0.0.1:8000")
    r.add_argument("--model", default="llama8b")
    r.add_argument("--fault", default="none")
    r.add_argument("--fault-at", type=float, default=30.0)
    r.add_argument("--duration", type=float, default=120.0)
    r.add_argument("--window", type=float, default=10.0)
    r.add_argument("--clients", type=int, default=16)
    r.add_argument("--prefixes", type=int, default=20)
    r.add_argument("--prefix-tokens", type=int, default=8000)
    r.add_argument("--shared-share", type=float, default=0.5)
    r.add_argument("--min-tokens", type=int, default=500)
    r.add_argument("--max-tokens", type=int, default=4000)
    r.add_argument("--output-tokens", type=int, default=16)
    r.add_argument("--request-timeout", type=float, default=120.0)
    r.add_argument("--retry-cap", type=float, default=1.0, help="wait at most this after a 503's Retry-After")
    r.add_argument("--ready-timeout", type=float, default=300.0)
    r.add_argument("--run-dir", help="the appliance's APPLIANCE_RUN_DIR (supervisord's socket)")
    r.add_argument("--supervisor-socket")
    r.add_argument("--serve-pid", type=int, help="for --fault sigterm")
    r.add_argument("--leave-mib", type=int, default=64, help="for --fault fill-disk: free space left")
    r.add_argument("--fill-max-gib", type=float, default=8, help="for --fault fill-disk: fill only file systems "
                                                                  "this small")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--disk-dir", help="the disk tier's directory: its size sampled every second")
    r.add_argument("--disk-cap-gib", type=float, help="its cap (LMCACHE_MAX_LOCAL_DISK_SIZE), for the overshoot")
    r.add_argument("--metrics-url", help="the appliance's metrics endpoint (http://host:9464/metrics): LMCache's "
                                         "CPU-tier allocation failures sampled every second")
    r.add_argument("--keep-requests", action="store_true", help="every request in the row (large)")
    p = sub.add_parser("report")
    p.add_argument("--results", required=True)
    return ap


def main(argv=None) -> int:
    return c.dispatch(parser(), {"run": cmd_run, "report": cmd_report}, argv)


if __name__ == "__main__":
    sys.exit(main())
