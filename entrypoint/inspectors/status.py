"""`python -m entrypoint status [--format json]`: a short summary of the running appliance, for operators
(`docker compose exec appliance status`) and scripts. Read from the running processes (snapshot.py), from the
run directory `serve` wrote (APPLIANCE_RUN_DIR, default /run/appliance).

Exit codes: 0 when supervisord answers and every program runs, 1 when something is down, 3 when no appliance
has been started in this run directory.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from ..config.settings import DEFAULT_RUN_DIR
from ..rundir import RunDir, read_plan
from ..version import version
from . import snapshot

EXIT_DOWN = 1
EXIT_NOT_STARTED = 3


def _size(n: float | None) -> str:
    if n is None:
        return "?"
    for unit, scale in (("GiB", 1024 ** 3), ("MiB", 1024 ** 2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 86400}d{s % 86400 // 3600}h" if s >= 86400 else (
        f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s")


def text(d: dict) -> str:
    lines = [f"Appliance: {d['model']} (served as {d['served_model_name']}), KV offloading {d['kv_offloading']}"
             if d.get("role", "all") == "all" else
             f"Appliance: the LMCache server only (APPLIANCE_ROLE={d['role']}), for {d['model']}"]
    lines[0] += f"; llm-appliance {d['version']}"
    if not d["supervisor_up"]:
        lines.append("supervisord: not answering (stopped, or still starting)")
    lines.append("")
    lines.append(f"  {'program':<10} {'state':<10} {'pid':>8} {'uptime':>8} {'restarts':>9}")
    for p in d["processes"]:
        n = sum(d["restarts"].get(p["name"], {}).values())
        lines.append(f"  {p['name']:<10} {p['state']:<10} {p['pid'] or '-':>8} {_ago(p['uptime_s']):>8} {n:>9}")
    last = d["last_restart"]
    if last:
        lines.append(f"  last restart: {last['program']} ({last['reason']}) {_ago(time.time() - last['at'])} ago"
                     + (f": {last['detail']}" if last.get("detail") else ""))
    lines.append("")
    lines.append(f"  {'tier':<6} {'used':>10} {'cap':>10} {'hit rate':>9}")
    if d.get("role", "all") == "all":  # a kv-server has no vLLM
        lines.append(f"  {'gpu':<6} {'':>10} {'':>10} {_pct(d['gpu_prefix_cache_hit_rate']):>9}  (vLLM prefix cache)")
    for t in d["tiers"]:
        lines.append(f"  {t['name']:<6} {_size(t['used_bytes']):>10} {_size(t['capacity_bytes']):>10} "
                     f"{_pct(t['hit_rate']):>9}" + (f"  {t['path']}" if t.get("path") else ""))
    if d.get("shared_store_url"):
        lines.append(_dependency(f"shared store {d['shared_store_url']}", d.get("shared_store"),
                                 "; serving without it"))
    if d.get("lmcache_server_url"):
        lines.append(_dependency(f"LMCache server {d['lmcache_server_url']} (LMCACHE_SERVER)", d.get("lmcache_server")))
    pruned = d["disk_tier_pruned"]
    if pruned["files"]:
        lines.append(f"  disk tier pruned to its cap: {pruned['files']} files, {_size(pruned['bytes'])}")
    if d["warnings"]:
        lines += ["", "Warnings at start:"] + [f"  - {w}" for w in d["warnings"]]
    return "\n".join(lines)



def _dependency(name: str, probe: dict | None, when_down: str = "") -> str:
    """A line for something the watchdog probes (the shared store, an external LMCache server)."""
    if not probe:
        return f"  {name}: not probed yet"
    how = "up" if probe["up"] else f"DOWN ({probe['detail']}){when_down}"
    return f"  {name}: {how}, since {_ago(time.time() - probe['since'])}"

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m entrypoint status",
                                description="A short summary of the running appliance.")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--run-dir", default=os.environ.get("APPLIANCE_RUN_DIR") or DEFAULT_RUN_DIR)
    a = p.parse_args(argv)
    run = RunDir(Path(a.run_dir))
    if not run.plan.exists():
        print(f"no appliance was started here ({run.plan} is missing): start it with `serve`", file=sys.stderr)
        return EXIT_NOT_STARTED
    try:
        plan = read_plan(run.plan)
    except (OSError, ValueError, KeyError) as e:
        print(f"cannot read {run.plan}: {e}", file=sys.stderr)
        return EXIT_NOT_STARTED
    snap = snapshot.take(plan, run)
    d = {"version": version(), "model": plan.model, "served_model_name": plan.served_model_name,
         "kv_offloading": plan.lmcache.mode or "off",
         "shared_store_url": plan.lmcache.shared_store and plan.lmcache.shared_store.url, "role": plan.role,
         "lmcache_server_url": plan.lmcache.server and plan.lmcache.server.url, **snap.to_dict()}
    print(json.dumps(d, indent=2) if a.format == "json" else text(d))
    down = not snap.supervisor_up or any(proc["state"] != "RUNNING" for proc in snap.processes)
    return EXIT_DOWN if down else 0


if __name__ == "__main__":
    sys.exit(main())
