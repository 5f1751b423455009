"""Fault checks against a running appliance (LMCache server mode), each recorded as a `fault` row:

  faults.py disk-fill --disk DIR [--prompts 12 --tokens 8000]
        distinct long prompts until the disk tier's file system is full: every request must still succeed
  faults.py kill-lmcache --run-dir D
        SIGKILL the LMCache server; probe with small requests every second: how long serving is interrupted,
        whether supervisord restarted the server (and vLLM), whether a new prompt is stored and hit again
  faults.py sigterm-inflight --serve-pid PID
        a long streamed request; SIGTERM to `serve` once its first token is out: the request must complete,
        and the appliance must exit

(Killing vLLM mid-request is `reuse.py again --restart kill-vllm`.)  `faults.py report` prints the table.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

from bench import common as c


def _row(a, check: str, ok: bool, observed: str, **extra) -> dict:
    row = {"bench": "fault", "check": check, "ok": ok, "observed": observed, **extra}
    c.append_rows(a.results, [row])
    c.log(f"fault {check}: {'OK' if ok else 'FAILED'}: {observed}")
    return row


def _grep(path: Path, words: tuple[str, ...]) -> int:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return 0
    return sum(text.count(w) for w in words)


def fill(disk: Path, leave_bytes: int, chunk: int = 64 << 20) -> Path:
    """Another tenant fills the volume: a file beside the tier's own directory, until `leave_bytes` are left."""
    filler = disk / "filler-not-kv.bin"
    block = b"\0" * chunk
    with filler.open("wb") as f:
        while shutil.disk_usage(disk).free > leave_bytes + chunk:
            f.write(block)
            f.flush()
            os.fsync(f.fileno())
        rest = shutil.disk_usage(disk).free - leave_bytes
        if rest > 0:
            f.write(b"\0" * rest)
    return filler


def cmd_disk_fill(a) -> int:
    c.wait_ready(a.base_url, a.model, timeout=60)
    disk = Path(a.disk)
    size = shutil.disk_usage(disk).total
    filler = None
    if size <= a.fill_max_gib * 2**30:  # a small volume (the suite's tmpfs): fill it from outside
        filler = fill(disk, a.leave_mib << 20)
        c.log(f"filled {disk} from outside: {shutil.disk_usage(disk).free / 2**20:.0f} MiB left")
    else:
        c.log(f"{disk} is {size / 2**30:.0f} GiB, not a small volume: not filled from outside; only LMCache's cap "
              "and eviction are exercised")
    results, usage = [], []
    for i in range(a.prompts):
        res = c.completion_ttft(a.base_url, a.model, c.token_prompt(f"fill-{time.time_ns()}", a.tokens, "fault"),
                                a.request_timeout)
        results.append(res)
        used = shutil.disk_usage(disk).used
        usage.append(used)
        c.log(f"disk-fill {i + 1}/{a.prompts}: {'ok' if res['ok'] else res['error']} {c.fmt(res['ttft_s'])} s; "
              f"{disk} {used / 2**30:.2f} of {size / 2**30:.2f} GiB used")
    time.sleep(a.settle)  # stores still in flight
    full = max(usage + [shutil.disk_usage(disk).used]) >= 0.95 * size
    lmlog = Path(a.run_dir or "") / "lmcache.log"
    nospace = _grep(lmlog, ("No space left", "ENOSPC", "Errno 28")) if a.run_dir else None
    # and serving still works after it: a prompt stored, evicted from the GPU, asked again
    again = c.completion_ttft(a.base_url, a.model, c.token_prompt("after-fill", a.tokens, "fault"), a.request_timeout)
    c.reset_prefix_cache(a.base_url)
    time.sleep(1)
    hit = c.completion_ttft(a.base_url, a.model, c.token_prompt("after-fill", a.tokens, "fault"), a.request_timeout)
    ok_all = all(r["ok"] for r in results) and again["ok"] and hit["ok"]
    if filler:
        filler.unlink()
    _row(a, "disk tier fills up", ok_all,
         f"{'filled from outside, ' if filler else ''}"
         f"{sum(r['ok'] for r in results)}/{len(results)} requests of {a.tokens} tokens ok; file system "
         f"{'FULL' if full else 'not full'} (peak {max(usage) / 2**30:.2f} of {size / 2**30:.2f} GiB); "
         f"'no space' lines in lmcache.log: {nospace}; afterwards cold {c.fmt(again['ttft_s'])} s, "
         f"after GPU reset {c.fmt(hit['ttft_s'])} s",
         filled=full, disk_bytes=size, peak_used=max(usage), nospace_lines=nospace,
         ttft_s=[r["ttft_s"] for r in results], errors=[r["error"] for r in results if not r["ok"]])
    return 0 if ok_all else 1


def cmd_kill_lmcache(a) -> int:
    sup = c.Supervisor(a.supervisor_socket or c.socket_from_run_dir(a.run_dir))
    if not sup.has("lmcache"):
        raise c.BenchError("no lmcache program (LMCache server mode only)")
    c.wait_ready(a.base_url, a.model, timeout=60)
    old_l, old_v = sup.pid("lmcache"), sup.pid("vllm")
    stored = c.token_prompt("before-kill", a.tokens, "fault")
    before = c.completion_ttft(a.base_url, a.model, stored, a.request_timeout)
    time.sleep(1)
    t0 = time.time()
    sup.kill("lmcache", signal.SIGKILL, group=a.kill_group)
    c.log(f"SIGKILL to the LMCache server (pid {old_l})")
    timeline, first_ok, streak = [], None, 0
    while time.time() - t0 < a.max_seconds:
        t = time.time()
        res = c.completion_ttft(a.base_url, a.model, c.token_prompt(f"probe-{time.time_ns()}", 256, "fault"),
                                a.probe_timeout)
        try:
            states = {n: sup.info(n)["statename"] for n in ("lmcache", "vllm")}
        except Exception as e:  # noqa: BLE001
            states = {"error": str(e)}
        timeline.append({"t": round(t - t0, 2), "ok": res["ok"], "s": res["ttft_s"], "error": res["error"],
                         "states": states})
        streak = streak + 1 if res["ok"] else 0
        if res["ok"] and first_ok is None:
            first_ok = t - t0
        new_l = sup.pid("lmcache")
        if streak >= 3 and new_l not in (0, old_l):
            break
        time.sleep(max(0.0, 1.0 - (time.time() - t)))
    new_l, new_v = sup.pid("lmcache"), sup.pid("vllm")
    failed = [p for p in timeline if not p["ok"]]
    # the new server stores and serves again: a fresh prompt, GPU reset, asked again
    fresh = c.token_prompt("after-kill", a.tokens, "fault")
    cold = c.completion_ttft(a.base_url, a.model, fresh, a.request_timeout)
    c.reset_prefix_cache(a.base_url)
    time.sleep(1)
    hit = c.completion_ttft(a.base_url, a.model, fresh, a.request_timeout)
    ok = bool(timeline) and timeline[-1]["ok"] and cold["ok"] and hit["ok"] and new_l not in (0, old_l)
    _row(a, "LMCache server killed", ok,
         f"lmcache pid {old_l}->{new_l}, vllm pid {old_v}->{new_v} ({'restarted' if new_v != old_v else 'kept'}); "
         f"{len(failed)}/{len(timeline)} probes failed, first ok {c.fmt(first_ok, 1)} s after the kill; "
         f"afterwards {a.tokens} tok cold {c.fmt(cold['ttft_s'])} s, after GPU reset {c.fmt(hit['ttft_s'])} s "
         f"(before the kill: cold {c.fmt(before['ttft_s'])} s)",
         lmcache_pid=[old_l, new_l], vllm_pid=[old_v, new_v], timeline=timeline, first_ok_s=first_ok,
         after_cold_s=cold["ttft_s"], after_hit_s=hit["ttft_s"])
    return 0 if ok else 1


def cmd_sigterm_inflight(a) -> int:
    c.wait_ready(a.base_url, a.model, timeout=60)
    result: dict = {}

    def go():
        result.update(c.stream_completion(a.base_url, a.model, c.token_prompt(time.time_ns(), a.tokens, "fault"),
                                          a.max_tokens, a.request_timeout))

    t = threading.Thread(target=go, daemon=True)
    t.start()
    time.sleep(a.after)  # well inside the prefill of a long prompt, or its decode
    t_term = time.time()
    os.kill(a.serve_pid, signal.SIGTERM)
    c.log(f"SIGTERM to serve (pid {a.serve_pid}) {a.after:.1f} s into a {a.tokens}-token request")
    time.sleep(0.5)
    refused = c.completion_ttft(a.base_url, a.model, c.token_prompt("late", 64, "fault"), 10)
    t.join(timeout=a.request_timeout)
    done_after = time.time() - t_term
    exited = None
    while time.time() - t_term < a.exit_timeout:
        if not c.pid_alive(a.serve_pid):
            exited = time.time() - t_term
            break
        time.sleep(0.2)
    ok = bool(result.get("ok")) and result.get("completion_tokens") == a.max_tokens and exited is not None
    exit_text = c.fmt(exited, 1) + " s" if exited is not None else f"NOT within {a.exit_timeout} s"
    _row(a, "SIGTERM during a long request", ok,
         f"in-flight request {'completed' if result.get('ok') else 'FAILED: ' + str(result.get('error'))} with "
         f"{result.get('completion_tokens')}/{a.max_tokens} tokens, {done_after:.1f} s after SIGTERM; a new request "
         f"0.5 s after SIGTERM: {'accepted' if refused['ok'] else 'refused'}; serve exited "
         f"{exit_text} after SIGTERM",
         inflight=result, new_request_ok=refused["ok"], exited_s=exited)
    return 0 if ok else 1


def cmd_report(a) -> int:
    rows = [r for r in c.load_rows(a.results) if r.get("bench") == "fault"]
    reuse_kills = [r for r in c.load_rows(a.results, "reuse") if r.get("restart") == "kill-vllm"]
    table = [[r["check"], "ok" if r["ok"] else "FAILED", r["observed"]] for r in rows]
    for r in reuse_kills:
        inflight = r.get("inflight_request") or {}
        table.append(["vLLM killed (SIGKILL, mid-request)", "ok" if r.get("ok") else "FAILED",
                      f"{r.get('killed')}; vllm pid {r.get('vllm_pid')}; lmcache kept: {r.get('lmcache_kept')}; "
                      f"ready {c.fmt(r.get('restart_to_ready_s'), 1)} s after the kill; in-flight request: "
                      f"{'ok' if inflight.get('ok') else inflight.get('error')}"])
    md = "### Fault checks\n\n" + c.markdown_table(["check", "result", "observed"], table)
    c.write_report(a.results, "faults", {"faults": rows, "vllm_kills": reuse_kills}, md)
    print(md)
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p):
        p.add_argument("--base-url", default="http://127.0.0.1:8000")
        p.add_argument("--model", default="llama8b")
        p.add_argument("--results", required=True)
        p.add_argument("--run-dir", help="the appliance's APPLIANCE_RUN_DIR")
        p.add_argument("--supervisor-socket")
        p.add_argument("--request-timeout", type=float, default=300)

    d = sub.add_parser("disk-fill")
    common(d)
    d.add_argument("--disk", required=True, help="the disk tier's directory (LMCACHE_LOCAL_DISK)")
    d.add_argument("--prompts", type=int, default=12)
    d.add_argument("--tokens", type=int, default=8000)
    d.add_argument("--settle", type=float, default=3.0)
    d.add_argument("--leave-mib", type=int, default=64, help="free space left by the outside filler")
    d.add_argument("--fill-max-gib", type=float, default=8, help="fill from outside only volumes this small")
    k = sub.add_parser("kill-lmcache")
    common(k)
    k.add_argument("--tokens", type=int, default=8000)
    k.add_argument("--max-seconds", type=float, default=150,
                   help="probe this long after the kill at most (a wedged vLLM takes the watchdog ~1 min to see)")
    k.add_argument("--probe-timeout", type=float, default=10)
    k.add_argument("--kill-group", action="store_true", help="SIGKILL the server's whole process group")
    s = sub.add_parser("sigterm-inflight")
    common(s)
    s.add_argument("--serve-pid", type=int, required=True)
    s.add_argument("--tokens", type=int, default=30000)
    s.add_argument("--max-tokens", type=int, default=256)
    s.add_argument("--after", type=float, default=0.5, help="seconds into the request")
    s.add_argument("--exit-timeout", type=float, default=90)
    r = sub.add_parser("report")
    r.add_argument("--results", required=True)
    return ap


def main(argv=None) -> int:
    return c.dispatch(parser(), {"disk-fill": cmd_disk_fill, "kill-lmcache": cmd_kill_lmcache,
                                 "sigterm-inflight": cmd_sigterm_inflight, "report": cmd_report}, argv)


if __name__ == "__main__":
    sys.exit(main())
