"""Time from `python -m entrypoint serve` to ready, and a clean stop.

  startup.py wait --started-at EPOCH --label X --results R [--pid PID] [--run-dir D]
        the caller started `serve` at EPOCH (`date +%s.%N`); wait until /health and /v1/models answer,
        append a `startup` row (with when supervisord spawned lmcache and vllm, if --run-dir is given)
  startup.py serve --label X --results R [--env-file F] [--log FILE] [--pid-file F]
        start `python -m entrypoint serve` here (environment + env file), measure the same, leave it running
  startup.py stop --pid PID --label X --results R [--timeout 90]
        SIGTERM to serve (supervisord stops its programs), wait; anything of it still alive after the
        timeout is SIGKILLed by pid and reported (a clean stop leaves nothing)
  startup.py wait --bare --label bare-vllm --started-at EPOCH --pid PID --results R
        the same for a bare `vllm serve` the caller started (the same model and flags as an appliance
        configuration, no supervisord, no LMCache server): the row is marked `bare`
  startup.py report --results R
        the startup and stop rows as a table; with a bare row, each appliance start next to it and issue 12's
        target 6 (serve to ready within 5 s of the bare `vllm serve`)
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench import common as c

ROOT = Path(__file__).resolve().parents[1]
VS_BARE_S = 5.0  # issue 12, target 6: `serve` to ready at most this many seconds after a bare `vllm serve`


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc), children first; supervisord's programs sit in process groups
    of their own, so a group kill of `serve` would not reach them."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def measure(a, started_at: float, alive) -> dict:
    sup_path = a.supervisor_socket or (c.socket_from_run_dir(a.run_dir) if a.run_dir else None)
    socket_seen = None
    deadline = time.time() + a.timeout
    while True:
        if socket_seen is None and a.run_dir and list(Path(a.run_dir).glob("*.sock")):
            socket_seen = time.time() - started_at
            sup_path = sup_path if (sup_path and Path(sup_path).exists()) else c.socket_from_run_dir(a.run_dir)
        if c.is_ready(a.base_url, a.model):
            break
        if alive is not None and not alive():
            raise c.BenchError("`serve` exited before the appliance was ready (see its log)")
        if time.time() > deadline:
            raise c.BenchError(f"not ready {a.timeout:.0f} s after `serve` started")
        time.sleep(0.25)
    row = {"bench": "startup", "label": a.label, "ok": True, "ready_s": time.time() - started_at,
           "started_at": started_at, "supervisor_socket_s": socket_seen}
    if getattr(a, "bare", False):
        row["bare"] = True
    if sup_path and Path(sup_path).exists():
        try:
            for p in c.Supervisor(sup_path, timeout=10).processes():
                if p["name"] not in ("lmcache", "vllm"):
                    continue
                row[f"{p['name']}_spawned_s"] = (p["start"] - started_at) if p.get("start") else None
                row[f"{p['name']}_pid"] = p.get("pid")
        except Exception as e:  # noqa: BLE001 - the breakdown is a bonus; the ready time is measured
            row["supervisor_error"] = f"{e.__class__.__name__}: {e}"
    c.append_rows(a.results, [row])
    parts = ", ".join(f"{k} {v:.1f} s" for k, v in row.items() if k.endswith("_s") and isinstance(v, float))
    print(f"startup {a.label}: {parts}")
    return row


def cmd_wait(a) -> int:
    alive = (lambda: c.pid_alive(a.pid)) if a.pid else None
    try:
        measure(a, a.started_at, alive)
    except c.BenchError as e:
        c.append_rows(a.results, [{"bench": "startup", "label": a.label, "ok": False, "error": str(e),
                                   **({"bare": True} if a.bare else {})}])
        raise
    return 0


def cmd_serve(a) -> int:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(ROOT)) if p)
    argv = [sys.executable, "-m", "entrypoint", "serve"] + (["--env-file", a.env_file] if a.env_file else [])
    log = open(a.log, "ab") if a.log else subprocess.DEVNULL
    started = time.time()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    if a.pid_file:
        Path(a.pid_file).write_text(f"{proc.pid}\n")
    print(f"serve pid {proc.pid}", flush=True)
    try:
        measure(a, started, lambda: proc.poll() is None)
    except c.BenchError as e:
        c.append_rows(a.results, [{"bench": "startup", "label": a.label, "ok": False, "error": str(e)}])
        raise
    return 0


def cmd_stop(a) -> int:
    if not c.pid_alive(a.pid):
        print(f"stop {a.label}: pid {a.pid} was not running")
        return 0
    tree = descendants(a.pid)
    names = {p: _cmdline(p) for p in tree}
    t = time.time()
    os.kill(a.pid, signal.SIGTERM)
    while c.pid_alive(a.pid) and time.time() - t < a.timeout:
        time.sleep(0.2)
    stop_s = time.time() - t
    clean = not c.pid_alive(a.pid)
    left = [p for p in [a.pid, *tree] if c.pid_alive(p)]
    for p in left:
        c.log(f"still alive after {a.timeout:.0f} s, SIGKILL: {p} {names.get(p, _cmdline(p))[:160]}")
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    row = {"bench": "stop", "label": a.label, "ok": clean and not left, "stop_s": stop_s,
           "serve_exited": clean, "killed_leftovers": [names.get(p, "?")[:160] for p in left]}
    c.append_rows(a.results, [row])
    print(f"stop {a.label}: {'clean' if row['ok'] else 'NOT clean'} in {stop_s:.1f} s"
          + (f"; SIGKILLed {len(left)} leftover(s)" if left else ""))
    return 0 if row["ok"] else 1


def vs_bare(starts: list[dict]) -> tuple[dict | None, list[dict], list[dict]]:
    """The last successful bare `vllm serve` start, and each appliance start (ok) against it: rows of the
    comparison table and issue 12's target 6 per configuration (n/a without a bare start)."""
    bare = next((r for r in reversed(starts) if r.get("bare") and r.get("ok") and r.get("ready_s")), None)
    table, targets = [], []
    for r in starts:
        if r.get("bare") or not r.get("ok") or r.get("ready_s") is None:
            continue
        diff = (r["ready_s"] - bare["ready_s"]) if bare else None
        order = None
        if bare and r.get("started_at") and bare.get("started_at"):
            order = "before" if r["started_at"] < bare["started_at"] else "after"
        table.append({"label": r["label"], "ready_s": r["ready_s"], "bare_s": bare["ready_s"] if bare else None,
                      "diff_s": diff, "x": (r["ready_s"] / bare["ready_s"]) if bare else None, "started": order})
        targets.append(c.target_row(f"{r['label']}: serve to ready, s over a bare vllm serve", diff, VS_BARE_S, "s"))
    return bare, table, targets


def build_report(rows: list[dict]) -> tuple[dict, str]:
    starts = [r for r in rows if r.get("bench") == "startup"]
    stops = [r for r in rows if r.get("bench") == "stop"]
    bare, table, targets = vs_bare(starts)
    md = ["### serve to ready, seconds (from launching `python -m entrypoint serve`)", ""]
    md.append(c.markdown_table(
        ["config", "ok", "ready s", "supervisord socket s", "lmcache spawned s", "vllm spawned s", "error"],
        [[r["label"] + (" (bare vllm serve)" if r.get("bare") else ""), "yes" if r.get("ok") else "NO",
          r.get("ready_s"), r.get("supervisor_socket_s"), r.get("lmcache_spawned_s"), r.get("vllm_spawned_s"),
          (r.get("error") or "")[:80]] for r in starts]))
    if bare:
        md += ["", f"### serve to ready next to a bare `vllm serve` ({bare['label']}: {bare['ready_s']:.1f} s, the "
                   "same model and vLLM flags; a later start may find more in the page cache)", ""]
        md.append(c.markdown_table(["config", "serve to ready s", "bare vllm serve s", "difference s", "x bare",
                                    "started"], [[t["label"], t["ready_s"], t["bare_s"], t["diff_s"], t["x"],
                                                  f"{t['started']} the bare one" if t["started"] else "-"]
                                                 for t in table]))
        md += ["", "### Targets (issue 12, target 6: start within 5 s of a bare `vllm serve`)", "",
               c.targets_markdown(targets)]
    if stops:
        md += ["", "### SIGTERM to serve -> exited, seconds", ""]
        md.append(c.markdown_table(["config", "clean", "seconds", "SIGKILLed leftovers"],
                                   [[r["label"], "yes" if r.get("ok") else "NO", r.get("stop_s"),
                                     "; ".join(r.get("killed_leftovers") or []) or "-"] for r in stops]))
    return {"startup": starts, "stop": stops, "vs_bare": table, "targets": targets if bare else []}, "\n".join(md)


def cmd_report(a) -> int:
    summary, md = build_report(c.load_rows(a.results))
    c.write_report(a.results, "startup", summary, md)
    print(md)
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("wait", "serve"):
        p = sub.add_parser(name)
        p.add_argument("--label", required=True)
        p.add_argument("--results", required=True)
        p.add_argument("--base-url", default="http://127.0.0.1:8000")
        p.add_argument("--model", default="llama8b")
        p.add_argument("--timeout", type=float, default=600)
        p.add_argument("--run-dir", help="APPLIANCE_RUN_DIR, for supervisord's spawn times")
        p.add_argument("--supervisor-socket")
        if name == "wait":
            p.add_argument("--started-at", type=float, required=True, help="epoch seconds `serve` was started")
            p.add_argument("--pid", type=int, help="serve's pid: fail at once if it exits")
            p.add_argument("--bare", action="store_true", help="the process is a bare `vllm serve`, not the appliance")
        else:
            p.add_argument("--env-file")
            p.add_argument("--log", help="serve's output (default: discarded)")
            p.add_argument("--pid-file")
    st = sub.add_parser("stop")
    st.add_argument("--pid", type=int, required=True)
    st.add_argument("--label", required=True)
    st.add_argument("--results", required=True)
    st.add_argument("--timeout", type=float, default=90)
    rep = sub.add_parser("report", help="table of the startup and stop rows")
    rep.add_argument("--results", required=True)
    return ap


def main(argv=None) -> int:
    return c.dispatch(parser(), {"wait": cmd_wait, "serve": cmd_serve, "stop": cmd_stop, "report": cmd_report}, argv)


if __name__ == "__main__":
    sys.exit(main())
