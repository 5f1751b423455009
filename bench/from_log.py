"""Rebuild results.jsonl from the console log of `python -m bench.suite` (logs/suite.log), for when the
machine's results folder did not come back but its console did.

    python -m bench.from_log logs/suite.log --results DIR [--date 2026-11-28] [--report reuse,startup]

Every line the bench scripts log becomes the row they would have appended: per-request reuse rows (`cold`,
`gpu_hit`, ..., warm-ups), restart rows (the logged dict is the row's own data), multi-round requests and run
summaries, the host-to-device bandwidth, startup and stop rows, fault rows. Then the scripts' own `report`
subcommands render the tables and charts from DIR (`--report` runs them).

What the console does not carry, and what is done about it:
- TTFTs are logged to the millisecond; medians of them equal the logged medians, ratios may differ from the
  ones printed on the machine in the last digit. Where the suite's final tables (printed last) carry more
  digits (startup ready/stop seconds), those are used.
- KV bytes per token: from the printed copy-floor heading, else --kv-bytes-per-token / --model-config.
- Multi-round: a request's completion_tokens is taken to be --answer-tokens (the runs use ignore_eos, so the
  server generates exactly max_tokens); system/user/answer sizes come from the printed report heading, else
  the options (multiround.py's defaults); max_seconds, think_time, stagger from the options; latency_s and
  sent_at_s are not logged (None). The run's wall time is (prompt + completion tokens) / the logged tok/s.
- Fault rows keep check, ok and observed (all the report uses) and the few numbers the text states.
- A restart done outside the benchmark (`--restart none`) logs nothing; its head row is added back.
Every row carries "from_log": the log's file name, so reconstructed results are never mistaken for raw ones.
"""
from __future__ import annotations

import argparse
import ast
import calendar
import re
import sys
import time
from pathlib import Path

from bench import common as c

TS = r"^\[(?P<ts>\d\d:\d\d:\d\d)\] "
RE = {name: re.compile(rx) for name, rx in {
    "reuse": TS + r"\s*(?P<label>\S+) (?P<phase>\S+)\s+(?P<tokens>\d+) tok seed (?P<seed>-?\d+): "
                  r"(?:(?P<ttft>[\d.]+) s|FAILED \((?P<error>.*)\))$",
    "prompt_warn": TS + r"warning: sent (?P<sent>\d+) tokens, server counted (?P<counted>\S+)$",
    "restart": TS + r"restart (?P<how>\S+): ready [\d.]+ s after the restart began; (?P<info>\{.*\})$",
    "restart_fail": TS + r"ERROR: restart for (?P<phase>\S+) failed: (?P<error>.*)$",
    "fault": TS + r"fault (?P<check>.+?): (?P<ok>OK|FAILED): (?P<observed>.*)$",
    "disk_fill": TS + r"disk-fill \d+/\d+: (?P<res>.*?) (?P<ttft>[\d.]+|-) s; ",
    "mr_head": TS + r"(?P<label>\S+): (?P<users>\d+) users x (?P<rounds>\d+) rounds, concurrency (?P<conc>\d+); "
                    r"working set (?P<ws>\d+) tokens, last request (?P<last>\d+) tokens$",
    "mr_req": TS + r"(?P<label>\S+) u\s*(?P<user>\d+) r(?P<round>\d+): ttft (?P<ttft>[\d.]+) s, "
                   r"(?P<pt>\S+) prompt tok$",
    "mr_fail": TS + r"user (?P<user>\d+) round (?P<round>\d+): FAILED (?P<error>.*)$",
    "mr_run": TS + r"(?P<label>\S+): (?P<ok>\d+) ok / (?P<failed>\d+) failed in (?P<wall>[\d.]+) s; "
                   r"p50 (?P<p50>\S+) s, p90 (?P<p90>\S+) s, (?P<tps>\S+) tok/s; "
                   r"stopped by deadline: (?P<deadline>\d+) users$",
    "h2d": r"^host->device \(pinned, (?P<gib>[\d.]+) GiB x (?P<reps>\d+)\): (?P<gbps>[\d.]+) GB/s median "
           r"\[(?P<all>[^\]]*)\]; device->host (?P<d2h>[\d.]+) GB/s; (?P<dev>.+)$",
    "h2d_none": r"^host->device bandwidth not measured: (?P<note>.*)$",
    "start": r"^=== \[\d+s\] start (?P<label>\S+): (?P<env>.*)$",
    "start_fail": r"^=== \[\d+s\] FAILED: (?P<label>\S+) did not get ready$",
    "startup": r"^startup (?P<label>\S+): (?P<parts>.*)$",
    "stop": r"^stop (?P<label>\S+): (?P<clean>clean|NOT clean) in (?P<s>[\d.]+) s",
    "kv_tokens": r"^\s+vllm: GPU KV cache size: (?P<n>[\d,]+) tokens",
    "suite": r"^=== \[\d+s\] suite (?P<suites>.*) on \S+; budget (?P<budget>\d+) s$",
    "gpu": r"^\s+gpu: (?P<gpu>.*)$",
    "cpu": r"^\s+cpu: (?P<cpu>.*)$",
    # the final tables, printed after the run
    "heading": r"^### (?P<title>.*)$",
    "table_row": r"^\| (?P<cells>.*) \|$",
    "kv_bpt": r"^### Copy floor: KV bytes/token (?P<n>\d+) ",
    "mr_shape": r"^### Multi-round: .* system (?P<system>\d+) \+ (?P<user>\d+) tok/round \+ answer (?P<answer>\d+),",
}.items()}
MEASURED_FIRST = ("cold", "gpu_hit", "after_reset")  # `reuse.py run`; any other phase is `reuse.py again`
WARMUPS = ("warmup", "warmup_hit")


def _num(text):
    if text in (None, "-", "None", ""):
        return None
    try:
        return int(text)
    except ValueError:
        return float(text)


def final_tables(lines: list[str]) -> dict:
    """What the suite printed last: startup/stop seconds with 3 decimals, the KV bytes per token, the
    multi-round prompt shape."""
    out: dict = {"startup": {}, "stop": {}, "kv_bytes_per_token": None, "mr_shape": None}
    section = None
    for line in lines:
        if m := RE["kv_bpt"].match(line):
            out["kv_bytes_per_token"] = int(m["n"])
        if m := RE["mr_shape"].match(line):
            out["mr_shape"] = {k: int(v) for k, v in m.groupdict().items()}
        if m := RE["heading"].match(line):
            section = m["title"]
            continue
        m = RE["table_row"].match(line)
        if not m or not section or set(m["cells"]) <= set("-| "):
            continue
        cells = [x.strip() for x in m["cells"].split("|")]
        if section.startswith("serve to ready") and len(cells) == 7 and cells[0] != "config":
            out["startup"].setdefault(cells[0], []).append(
                {"ready_s": _num(cells[2]), "supervisor_socket_s": _num(cells[3]),
                 "lmcache_spawned_s": _num(cells[4]), "vllm_spawned_s": _num(cells[5])})
        elif section.startswith("SIGTERM to serve") and len(cells) == 4 and cells[0] != "config":
            out["stop"].setdefault(cells[0], []).append(_num(cells[2]))
    return out


class Parser:
    def __init__(self, source: str, date: str | None, answer_tokens: int, system_tokens: int, user_tokens: int,
                 max_seconds, think_time: float, stagger: float, kv_bytes_per_token: int | None):
        self.source, self.date = source, date
        self.shape = {"system": system_tokens, "user": user_tokens, "answer": answer_tokens}
        self.mr_opts = {"max_seconds": max_seconds, "think_time": think_time, "stagger": stagger}
        self.kv_bpt = kv_bytes_per_token
        self.rows: list[dict] = []
        self.ts = None
        self.env: dict[str, dict] = {}  # per started label: its VAR=value words
        self.kv_tokens: dict[str, int] = {}
        self.last_start = None
        self.pending_restart: dict | None = None  # a restart row waiting for its label and phase
        self.restarted: set = set()  # (label, phase) that have a restart head row
        self.warmup_from: int | None = None  # index of the first warm-up row of the current streak
        self.counted: int | None = None  # a prompt-token warning for the next reuse row
        self.last_label = None
        self.mr: dict[str, dict] = {}  # per label: header numbers
        self.disk_fill_ttfts: list = []
        self.machine: dict = {"bench": "suite"}
        self.tables: dict = {}

    def epoch(self):
        if not (self.date and self.ts):
            return None
        return float(calendar.timegm(time.strptime(f"{self.date} {self.ts}", "%Y-%m-%d %H:%M:%S")))

    def add(self, row: dict, at: int | None = None) -> dict:
        row["from_log"] = self.source
        row.setdefault("time", self.epoch())
        if at is None:
            self.rows.append(row)
        else:
            self.rows.insert(at, row)
        return row

    def parse(self, lines: list[str]) -> list[dict]:
        self.tables = final_tables(lines)
        if self.tables["mr_shape"]:
            self.shape = self.tables["mr_shape"]
        self.kv_bpt = self.tables["kv_bytes_per_token"] or self.kv_bpt
        self.add(self.machine)
        starts: dict[str, int] = {}
        stops: dict[str, int] = {}
        for line in lines:
            line = line.rstrip("\n")
            if line.startswith("### "):
                break  # the final tables: read above
            m = re.match(TS, line)
            self.ts = m["ts"] if m else None  # a row's time only from its own line
            for name in ("reuse", "prompt_warn", "restart", "restart_fail", "fault", "disk_fill", "mr_head",
                         "mr_req", "mr_fail", "mr_run", "h2d", "h2d_none", "start", "start_fail", "startup",
                         "stop", "kv_tokens", "suite", "gpu", "cpu"):
                m = RE[name].match(line)
                if m:
                    getattr(self, "on_" + name)(m, starts, stops)
                    break
        if self.pending_restart is not None:  # no measured row followed: keep what is known
            self.pending_restart.setdefault("label", self.last_label)
        return self.rows

    # --- suite, machine, startup ---------------------------------------------------------------------------

    def on_suite(self, m, *_):
        self.machine.update(suites=m["suites"].split(), budget_s=int(m["budget"]))

    def on_gpu(self, m, *_):
        self.machine["gpu"] = m["gpu"]

    def on_cpu(self, m, *_):
        self.machine["host"] = m["cpu"]

    def on_start(self, m, *_):
        self.last_start = m["label"]
        self.env[m["label"]] = dict(w.split("=", 1) for w in m["env"].split() if "=" in w)

    def on_kv_tokens(self, m, *_):
        if self.last_start and self.last_start not in self.kv_tokens:
            self.kv_tokens[self.last_start] = int(m["n"].replace(",", ""))

    def on_startup(self, m, starts, _):
        label = m["label"]
        row = {"bench": "startup", "label": label, "ok": True}
        for part in m["parts"].split(", "):
            k, _, v = part.partition(" ")
            row[k] = _num(v.removesuffix(" s"))
        printed = self.tables["startup"].get(label, [])
        i = starts.get(label, 0)
        if i < len(printed):  # the final table's 3 decimals
            row.update({k: v for k, v in printed[i].items() if v is not None})
        starts[label] = i + 1
        self.add(row)

    def on_start_fail(self, m, *_):
        self.add({"bench": "startup", "label": m["label"], "ok": False, "error": "did not get ready (suite log)"})

    def on_stop(self, m, _, stops):
        label = m["label"]
        printed = self.tables["stop"].get(label, [])
        i = stops.get(label, 0)
        stops[label] = i + 1
        clean = m["clean"] == "clean"
        self.add({"bench": "stop", "label": label, "ok": clean, "serve_exited": clean,
                  "stop_s": printed[i] if i < len(printed) else float(m["s"]), "killed_leftovers": []})

    def on_h2d(self, m, *_):
        h2d_all = [float(x) for x in m["all"].split(",") if x.strip()]
        row = {"bench": "h2d", "ok": True, "gb_per_s": c.median(h2d_all) if h2d_all else float(m["gbps"]),
               "h2d_all": h2d_all, "d2h_gb_per_s": float(m["d2h"]), "bytes": int(float(m["gib"]) * (1 << 30)),
               "reps": int(m["reps"]), "device_name": m["dev"]}
        if self.kv_bpt:
            row["kv_bytes_per_token"] = self.kv_bpt
        self.add(row)

    def on_h2d_none(self, m, *_):
        self.add({"bench": "h2d", "ok": False, "note": m["note"]})

    # --- reuse -----------------------------------------------------------------------------------------------

    def on_prompt_warn(self, m, *_):
        self.counted = _num(m["counted"])

    def on_reuse(self, m, *_):
        label, phase, tokens = m["label"], m["phase"], int(m["tokens"])
        ok = m["ttft"] is not None
        if phase in WARMUPS:
            if self.warmup_from is None:
                self.warmup_from = len(self.rows)
        else:
            if phase not in MEASURED_FIRST and (label, phase) not in self.restarted:
                if self.pending_restart is not None:  # the logged restart belongs to this phase
                    self.pending_restart.update(label=label, phase="restart:" + phase)
                    self.pending_restart = None
                else:  # `--restart none`: restart() logged nothing, cmd_again still wrote its head row
                    self.add({"bench": "reuse", "label": label, "phase": "restart:" + phase, "tokens": None,
                              "seed": None, "ttft_s": None, "ok": True, "restart": "none"},
                             at=self.warmup_from)
                self.restarted.add((label, phase))
            self.warmup_from = None
        prompt_tokens = self.counted if self.counted is not None else (tokens if ok else None)
        self.counted = None
        self.last_label = label
        self.add({"bench": "reuse", "label": label, "phase": phase, "tokens": tokens, "seed": int(m["seed"]),
                  "ttft_s": float(m["ttft"]) if ok else None, "prompt_tokens": prompt_tokens, "ok": ok,
                  "error": m["error"]})

    def on_restart(self, m, *_):
        info = ast.literal_eval(m["info"])
        self.pending_restart = self.add({"bench": "reuse", "label": self.last_label,
                                         "phase": "restart:after_vllm_restart", "tokens": None, "seed": None,
                                         "ttft_s": None, "ok": True, **info})
        self.warmup_from = None

    def on_restart_fail(self, m, *_):
        self.add({"bench": "reuse", "label": self.last_label, "phase": "restart:" + m["phase"], "tokens": None,
                  "seed": None, "ttft_s": None, "ok": False, "error": m["error"]})
        self.restarted.add((self.last_label, m["phase"]))

    # --- faults ----------------------------------------------------------------------------------------------

    def on_disk_fill(self, m, *_):
        self.disk_fill_ttfts.append(_num(m["ttft"]))

    def on_fault(self, m, *_):
        obs = m["observed"]
        row = {"bench": "fault", "check": m["check"], "ok": m["ok"] == "OK", "observed": obs}
        if m["check"] == "disk tier fills up":
            row["ttft_s"], self.disk_fill_ttfts = self.disk_fill_ttfts, []
            row["filled"] = "file system FULL" in obs
            if g := re.search(r"'no space' lines in lmcache.log: (\S+);", obs):
                row["nospace_lines"] = _num(g[1])
        if g := re.search(r"lmcache pid (\d+)->(\d+), vllm pid (\d+)->(\d+)", obs):
            row["lmcache_pid"], row["vllm_pid"] = [int(g[1]), int(g[2])], [int(g[3]), int(g[4])]
        if g := re.search(r"first ok (\S+) s after the kill", obs):
            row["first_ok_s"] = _num(g[1])
        if g := re.search(r"tok cold (\S+) s, after GPU reset (\S+) s", obs):
            row["after_cold_s"], row["after_hit_s"] = _num(g[1]), _num(g[2])
        if g := re.search(r"serve exited (\S+) s after SIGTERM", obs):
            row["exited_s"] = _num(g[1])
        if g := re.search(r"new request 0.5 s after SIGTERM: (\w+)", obs):
            row["new_request_ok"] = g[1] == "accepted"
        self.add(row)

    # --- multi-round -----------------------------------------------------------------------------------------

    def on_mr_head(self, m, *_):
        from bench.multiround import final_context_tokens, working_set_tokens
        users, rounds = int(m["users"]), int(m["rounds"])
        s = self.shape
        ws = working_set_tokens(users, rounds, s["system"], s["user"], s["answer"])
        last = final_context_tokens(rounds, s["system"], s["user"], s["answer"])
        if (ws, last) != (int(m["ws"]), int(m["last"])):
            c.log(f"warning: {m['label']}: system/user/answer tokens {s} give working set {ws} and last request "
                  f"{last}, the log says {m['ws']} and {m['last']}: pass the right --system-tokens etc.")
        self.last_label = m["label"]
        self.mr[m["label"]] = {"users": users, "rounds": rounds, "concurrency": int(m["conc"]),
                               "working_set_tokens": int(m["ws"])}

    def on_mr_req(self, m, *_):
        pt = _num(m["pt"])
        self.last_label = m["label"]
        self.add({"bench": "multiround", "label": m["label"], "user": int(m["user"]), "round": int(m["round"]),
                  "sent_at_s": None, "prompt_len": pt, "ok": True, "ttft_s": float(m["ttft"]), "latency_s": None,
                  "prompt_tokens": pt, "completion_tokens": self.shape["answer"], "error": None})

    def on_mr_fail(self, m, *_):
        self.add({"bench": "multiround", "label": self.last_label, "user": int(m["user"]), "round": int(m["round"]),
                  "sent_at_s": None, "prompt_len": None, "ok": False, "ttft_s": None, "latency_s": None,
                  "prompt_tokens": None, "completion_tokens": 0, "error": m["error"]})

    def on_mr_run(self, m, *_):
        label = m["label"]
        reqs = [r for r in self.rows if r.get("bench") == "multiround" and r["label"] == label
                and not r.get("_done")]
        for r in reqs:
            r["_done"] = True
        ok = [r for r in reqs if r["ok"]]
        prompt_tok = sum(r["prompt_tokens"] or 0 for r in ok)
        out_tok = sum(r["completion_tokens"] or 0 for r in ok)
        tps, logged_wall = _num(m["tps"]), float(m["wall"])
        wall = (prompt_tok + out_tok) / tps if tps else logged_wall
        if abs(wall - logged_wall) > 0.06:  # the token counts do not add up to the logged rate: keep the log's
            c.log(f"warning: {label}: tokens / tok/s = {wall:.2f} s, the log says {logged_wall} s; using the log's")
            wall = logged_wall
        head = self.mr.get(label, {})
        env = self.env.get(label, {})
        params = {"users": head.get("users"), "rounds": head.get("rounds"), "system_tokens": self.shape["system"],
                  "user_tokens": self.shape["user"], "answer_tokens": self.shape["answer"],
                  "concurrency": head.get("concurrency"), **self.mr_opts,
                  "max_model_len": _num(env.get("VLLM_MAX_MODEL_LEN")) or 16384,
                  "gpu_kv_tokens": self.kv_tokens.get(label)}
        ttft = [r["ttft_s"] for r in ok]
        row = {"bench": "multiround_run", "label": label, "ok": int(m["failed"]) == 0 and bool(ok), "params": params,
               "working_set_tokens": head.get("working_set_tokens"), "requests": len(reqs),
               "failed": int(m["failed"]), "stopped_by_deadline": int(m["deadline"]), "stopped_by_length": None,
               "wall_s": wall, "threads_left": None, "prompt_tokens": prompt_tok, "completion_tokens": out_tok,
               "tokens_per_s": tps, "output_tokens_per_s": out_tok / wall if wall else None,
               "requests_per_s": len(ok) / wall if wall else None,
               "ttft_p50_s": c.percentile(ttft, 50), "ttft_p90_s": c.percentile(ttft, 90)}
        for key, logged in (("ttft_p50_s", m["p50"]), ("ttft_p90_s", m["p90"])):
            if row[key] is not None and _num(logged) is not None and abs(row[key] - _num(logged)) > 0.0015:
                c.log(f"warning: {label}: {key} from the requests {row[key]:.4f} s, logged {logged} s")
        if len(ok) != int(m["ok"]):
            c.log(f"warning: {label}: {len(ok)} request lines, the summary says {m['ok']} ok")
        self.add(row)


def rebuild(text: str, source: str, **opts) -> list[dict]:
    rows = Parser(source, **opts).parse(text.splitlines())
    for r in rows:
        r.pop("_done", None)
    return rows


REPORTS = ("startup", "reuse", "multiround", "faults")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("logs", nargs="+", help="suite.log files (one results folder for all of them)")
    ap.add_argument("--results", required=True, help="folder for results.jsonl (and the reports)")
    ap.add_argument("--date", help="YYYY-MM-DD of the run (the log has times of day only), for each row's time")
    ap.add_argument("--append", action="store_true", help="add to an existing results.jsonl")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing results.jsonl")
    ap.add_argument("--kv-bytes-per-token", type=int, help="when the log has no copy-floor table")
    ap.add_argument("--model-config", help="model dir or config.json, for the KV bytes per token")
    ap.add_argument("--answer-tokens", type=int, default=32, help="multiround: max_tokens of each answer")
    ap.add_argument("--system-tokens", type=int, default=2000)
    ap.add_argument("--user-tokens", type=int, default=768)
    ap.add_argument("--max-seconds", type=float, help="multiround: the run's --max-seconds (not logged)")
    ap.add_argument("--think-time", type=float, default=0.0)
    ap.add_argument("--stagger", type=float, default=0.05)
    ap.add_argument("--report", default="", help=f"then run these reports, comma-separated ({','.join(REPORTS)})")
    ap.add_argument("--png-colors", type=int, default=0,
                    help="then reduce the folder's PNG charts to this many colours (small files to commit; Pillow)")
    a = ap.parse_args(argv)
    out = Path(a.results) / c.RESULTS_FILE
    if out.exists() and not (a.append or a.overwrite):
        c.log(f"ERROR: {out} exists: --append or --overwrite")
        return 2
    if out.exists() and a.overwrite:
        out.unlink()
    kv_bpt = a.kv_bytes_per_token or (c.kv_bytes_per_token(c.load_model_config(a.model_config))
                                      if a.model_config else None)
    for log in a.logs:
        rows = rebuild(Path(log).read_text(errors="replace"), Path(log).name, date=a.date,
                       answer_tokens=a.answer_tokens, system_tokens=a.system_tokens, user_tokens=a.user_tokens,
                       max_seconds=a.max_seconds, think_time=a.think_time, stagger=a.stagger,
                       kv_bytes_per_token=kv_bpt)
        c.append_rows(a.results, rows)
        kinds: dict = {}
        for r in rows:
            kinds[r["bench"]] = kinds.get(r["bench"], 0) + 1
        c.log(f"{log}: {len(rows)} rows ({', '.join(f'{k} {v}' for k, v in kinds.items())}) -> {out}")
    status = 0
    for name in [x for x in a.report.split(",") if x]:
        if name not in REPORTS:
            c.log(f"ERROR: unknown report {name!r} ({', '.join(REPORTS)})")
            return 2
        module = __import__(name)
        status |= module.main(["report", "--results", a.results])
    if a.png_colors:
        shrink_pngs(Path(a.results), a.png_colors)
    return status


def shrink_pngs(folder: Path, colors: int) -> None:
    """Palette PNGs: a chart of a few flat colours loses nothing visible and most of its bytes."""
    try:
        from PIL import Image
    except ImportError:
        c.log("note: Pillow not importable; PNGs left as they are")
        return
    for path in sorted(folder.glob("*.png")):
        before = path.stat().st_size
        Image.open(path).convert("RGB").quantize(colors=colors).save(path, optimize=True)
        c.log(f"{path}: {before // 1024} -> {path.stat().st_size // 1024} KiB ({colors} colours)")


if __name__ == "__main__":
    sys.exit(main())
