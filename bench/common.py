"""Shared pieces of the appliance benchmarks: prompts, HTTP, supervisord control, results, copy floor.

Part of the `bench` package (run from the repository root: `python -m bench.<tool>`), next to the appliance's
own code: Prometheus text is read with the appliance's parser (entrypoint.inspectors.snapshot.parse_metrics,
prometheus_client's) and supervisord is driven through the appliance's XML-RPC transport
(entrypoint.common.events.supervisor_rpc); both are imported where used, so the pure parts (prompts, tables)
need the standard library only. matplotlib (charts) and torch (host-to-device bandwidth) are imported only
where used, and skipped with a note when missing.

Also a small CLI:
    python -m bench.common bandwidth --results DIR [--model-config /tmp/model-8b]
    python -m bench.common kv-bytes --model-config /tmp/model-8b [--tokens 16000]
"""
from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import random
import signal
import statistics
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import xmlrpc.client
from pathlib import Path

from entrypoint.common.procs import pid_alive  # noqa: F401 - the tools call it as c.pid_alive

# Token ids of the exact-length prompts: inside the 32000-entry vocabulary of the GPU bundle's byte-level
# BPE, away from the special tokens at the bottom (bos=0, eos=1).
TOKEN_LOW, TOKEN_HIGH = 10, 31000
RESULTS_FILE = "results.jsonl"
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "half": 2, "float32": 4, "float": 4, "fp8": 1, "float8_e4m3fn": 1}
# The shape the GPU runs use (shared/gpu/model/config-llama-8b-shape.json), when no config is at hand.
LLAMA3_8B_SHAPE = {"num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                   "hidden_size": 4096, "head_dim": 128, "torch_dtype": "bfloat16"}


class BenchError(RuntimeError):
    """A benchmark cannot go on (server not ready, restart failed): the scripts exit non-zero with it."""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- prompts ---------------------------------------------------------------------------------------------

def token_prompt(seed, n: int, salt: str = "") -> list[int]:
    """`n` token ids, the same for the same (salt, seed, n) in any process; different lengths never share
    a prefix (a 30k prompt must not hit the KV of the 16k prompt with the same seed)."""
    if n < 0:
        raise ValueError("prompt length must be >= 0")
    rng = random.Random(f"{salt}:{seed}:{n}")  # str seeds are hashed with sha512: stable across processes
    return [rng.randrange(TOKEN_LOW, TOKEN_HIGH) for _ in range(n)]


# --- KV cache size and the copy floor --------------------------------------------------------------------

def load_model_config(path) -> dict:
    """config.json of a model, given the file or its directory."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    return json.loads(p.read_text())


def kv_bytes_per_token(config: dict, dtype_bytes: int | None = None) -> int:
    """Bytes of KV cache one token takes in the whole model: K and V, every layer, every KV head.
    (Tensor parallelism splits it over GPUs; the sum is the same.)"""
    cfg = config.get("text_config", config)  # multimodal configs nest the language model's
    layers = int(cfg["num_hidden_layers"])
    heads = int(cfg.get("num_attention_heads"))
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads)
    if dtype_bytes is None:
        dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16").replace("torch.", "")
        if dtype not in DTYPE_BYTES:
            raise ValueError(f"unknown dtype {dtype!r} in the model config; pass dtype_bytes")
        dtype_bytes = DTYPE_BYTES[dtype]
    return 2 * layers * kv_heads * head_dim * dtype_bytes


def copy_floor_s(kv_bpt: int, tokens: int, gb_per_s: float) -> float:
    """Least time to move the KV cache of `tokens` tokens over a link of `gb_per_s` (1e9 bytes/s)."""
    if gb_per_s <= 0:
        raise ValueError("bandwidth must be > 0")
    return kv_bpt * tokens / (gb_per_s * 1e9)


def measure_h2d_bandwidth(size_gib: float = 1.0, reps: int = 5, device: str = "cuda") -> dict:
    """Pinned host memory -> GPU copy bandwidth with torch (what a CPU-tier KV load is bounded by).
    Returns {"ok": False, "note": why} when torch or a GPU is not there."""
    try:
        import torch
    except Exception as e:  # noqa: BLE001 - any import failure means "cannot measure here"
        return {"ok": False, "note": f"torch not importable ({e.__class__.__name__}: {e})"}
    if not torch.cuda.is_available():
        return {"ok": False, "note": "torch has no CUDA device here"}
    n = int(size_gib * (1 << 30))
    host = torch.empty(n, dtype=torch.uint8, pin_memory=True)
    host.fill_(7)
    dev = torch.empty(n, dtype=torch.uint8, device=device)
    dev.copy_(host, non_blocking=True)  # warm-up: driver mappings, first touch
    torch.cuda.synchronize()
    h2d, d2h = [], []
    for _ in range(reps):
        t = time.perf_counter()
        dev.copy_(host, non_blocking=True)
        torch.cuda.synchronize()
        h2d.append(n / (time.perf_counter() - t) / 1e9)
    for _ in range(max(1, reps // 2)):
        t = time.perf_counter()
        host.copy_(dev, non_blocking=True)
        torch.cuda.synchronize()
        d2h.append(n / (time.perf_counter() - t) / 1e9)
    name = torch.cuda.get_device_name(0)
    del host, dev
    torch.cuda.empty_cache()
    return {"ok": True, "gb_per_s": statistics.median(h2d), "h2d_all": [round(x, 2) for x in h2d],
            "d2h_gb_per_s": statistics.median(d2h), "bytes": n, "reps": reps, "device_name": name,
            "torch": torch.__version__}


# --- HTTP ------------------------------------------------------------------------------------------------

def _request(url: str, body=None, timeout: float = 600.0, method: str | None = None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"),
                                 headers={"Content-Type": "application/json"})
    api_key = os.environ.get("BENCH_API_KEY")
    if api_key:
        req.add_header("Authorization", f"Bearer {api_key}")
    return urllib.request.urlopen(req, timeout=timeout)


def http_json(url: str, body=None, timeout: float = 600.0, method: str | None = None):
    """(status, parsed JSON or text, seconds); HTTP errors return their status, connection errors raise."""
    t = time.perf_counter()
    try:
        with _request(url, body, timeout, method) as r:
            raw, status = r.read(), r.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    dt = time.perf_counter() - t
    try:
        return status, json.loads(raw or b"null"), dt
    except json.JSONDecodeError:
        return status, raw.decode(errors="replace"), dt


def completion_ttft(base: str, model: str, prompt: list[int], timeout: float = 600.0) -> dict:
    """TTFT of a non-streamed completion with max_tokens=1: the whole request is the prefill (or the
    KV load) plus one decode step, which is what the reuse benchmark compares."""
    body = {"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0}
    try:
        status, data, dt = http_json(base.rstrip("/") + "/v1/completions", body, timeout)
    except (OSError, http.client.HTTPException) as e:
        return {"ok": False, "ttft_s": None, "prompt_tokens": None, "error": f"{e.__class__.__name__}: {e}"}
    if status != 200 or not isinstance(data, dict):
        return {"ok": False, "ttft_s": dt, "prompt_tokens": None, "error": f"HTTP {status}: {str(data)[:300]}"}
    usage = data.get("usage") or {}
    return {"ok": True, "ttft_s": dt, "prompt_tokens": usage.get("prompt_tokens"), "error": None}


STREAM_DONE = object()  # what sse_chunks yields last when the stream ended with `data: [DONE]`


def sse_chunks(lines):
    """The JSON chunks of an OpenAI-style event stream (`data: {...}` lines), then STREAM_DONE if the stream
    ended with `data: [DONE]`; a stream that stops without it (the server went away) just ends."""
    for raw in lines:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            yield STREAM_DONE
            return
        yield json.loads(payload)


def stream_completion(base: str, model: str, prompt: list[int], max_tokens: int, timeout: float = 600.0,
                      ignore_eos: bool = True) -> dict:
    """A streamed completion: time to the first chunk that carries a token (TTFT) and to the end."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "ignore_eos": ignore_eos, "stream_options": {"include_usage": True}}
    out = {"ok": False, "ttft_s": None, "latency_s": None, "prompt_tokens": None, "completion_tokens": 0,
           "error": None}
    t = time.perf_counter()
    done = False
    try:
        with _request(base.rstrip("/") + "/v1/completions", body, timeout) as r:
            for chunk in sse_chunks(r):
                if chunk is STREAM_DONE:
                    done = True
                    break
                if chunk.get("choices") and out["ttft_s"] is None:
                    out["ttft_s"] = time.perf_counter() - t
                usage = chunk.get("usage")
                if usage:
                    out["prompt_tokens"] = usage.get("prompt_tokens")
                    out["completion_tokens"] = usage.get("completion_tokens") or 0
        out["latency_s"] = time.perf_counter() - t
        out["ok"] = out["ttft_s"] is not None and done
        if out["ttft_s"] is None:
            out["error"] = "stream ended without a token"
        elif not done:  # the server went away mid-answer (the connection closed without [DONE])
            out["error"] = f"stream cut after {out['latency_s']:.2f} s, before [DONE]"
    except urllib.error.HTTPError as e:
        out["error"] = f"HTTP {e.code}: {e.read()[:300].decode(errors='replace')}"
    except (OSError, http.client.HTTPException, ValueError) as e:
        out["error"] = f"{e.__class__.__name__}: {e}"
    if out["latency_s"] is None:
        out["latency_s"] = time.perf_counter() - t
    return out


# vLLM's own clocks of a request (its Prometheus histograms), to split a TTFT measured one request at a time into
# where it went: engine_ttft_s (arrival in vLLM's frontend -> first token; the client's TTFT minus it is HTTP and
# request parsing), queue_s (waiting to be scheduled: with LMCache's blocking lookup this holds the lookup),
# prefill_s (scheduled -> first token: the KV load and the forward pass) and lookup_s (the LMCache connector's
# lookup as vLLM's scheduler timed it; absent without LMCache's server mode).
ENGINE_CLOCKS = {"engine_ttft_s": "vllm:time_to_first_token_seconds",
                 "queue_s": "vllm:request_queue_time_seconds",
                 "prefill_s": "vllm:request_prefill_time_seconds",
                 "lookup_s": "vllm:lmcache_mp_lookup_duration_seconds"}
def metrics(text: str) -> dict[str, float]:
    """Prometheus text, each sample name summed over its label sets: the appliance's own parser
    (entrypoint.inspectors.snapshot.parse_metrics, prometheus_client's), the one every bench tool uses."""
    from entrypoint.inspectors.snapshot import parse_metrics
    return parse_metrics(text)


def histogram_totals(text: str, families) -> dict:
    """{family: [sum, count]} of Prometheus histograms, added up over their label sets."""
    sums = metrics(text)
    return {f: [sums.get(f + "_sum", 0.0), sums.get(f + "_count", 0.0)] for f in families}


def metric_sum(text: str, name: str) -> float | None:
    """A sample name's value summed over its label sets, None when absent."""
    return metrics(text).get(name)


def engine_clocks(base: str, timeout: float = 10.0) -> dict | None:
    """ENGINE_CLOCKS' totals from vLLM's /metrics now, or None when it cannot be read."""
    try:
        with _request(base.rstrip("/") + "/metrics", timeout=timeout) as r:
            text = r.read().decode(errors="replace")
    except (OSError, http.client.HTTPException, ValueError):
        return None
    return histogram_totals(text, ENGINE_CLOCKS.values())


def clock_split(before: dict | None, after: dict | None) -> dict:
    """What the requests between two engine_clocks() readings spent, per ENGINE_CLOCKS key: the value itself
    for one request, the mean for several (`engine_requests` says how many; `lookups` counts the lookups)."""
    if not before or not after:
        return {}
    n = after[ENGINE_CLOCKS["engine_ttft_s"]][1] - before[ENGINE_CLOCKS["engine_ttft_s"]][1]
    out: dict = {"engine_requests": int(n)}
    for key, fam in ENGINE_CLOCKS.items():
        total, count = (after[fam][0] - before[fam][0]), (after[fam][1] - before[fam][1])
        if key == "lookup_s":
            out["lookups"] = int(count)
        if count > 0:
            out[key] = total / count
    return out


def with_clocks(base: str, fn, settle_s: float = 3.0) -> dict:
    """fn()'s result (a request's dict) plus clock_split of it: vLLM records a request's queue and prefill times
    when it finishes, which can be a moment after the client has its answer, so the second reading waits (up to
    `settle_s`) until the request shows. Meant for one request at a time; fields are absent where /metrics fails."""
    before = engine_clocks(base)
    res = fn()
    if before is None or not res.get("ok"):
        return res
    queue = ENGINE_CLOCKS["queue_s"]
    deadline = time.perf_counter() + settle_s
    after = engine_clocks(base)
    while after is not None and after[queue][1] <= before[queue][1] and time.perf_counter() < deadline:
        time.sleep(0.02)
        after = engine_clocks(base)
    split = clock_split(before, after)
    if split and res.get("ttft_s") is not None and split.get("engine_ttft_s") is not None \
            and split["engine_requests"] == 1:
        split["frontend_s"] = res["ttft_s"] - split["engine_ttft_s"]
    return {**res, **split}


CLOCK_COLUMNS = ("ttft_s", "frontend_s", "queue_s", "lookup_s", "prefill_s")


def clock_medians(rows: list[dict], group) -> dict:
    """{group(row): {column: median}} over successful rows that carry vLLM's clocks (with_clocks)."""
    groups: dict = {}
    for r in rows:
        if r.get("ok") and r.get("engine_ttft_s") is not None:
            groups.setdefault(group(r), []).append(r)
    return {g: {k: median([r[k] for r in rs if r.get(k) is not None]) for k in CLOCK_COLUMNS} | {"n": len(rs)}
            for g, rs in groups.items()}


def clock_markdown(medians: dict, head: list[str]) -> list[str]:
    """The table of clock_medians (its group keys as the first columns), with the reading of each column."""
    if not medians:
        return []
    rows = [[*map(str, g), m["n"], *[m[k] for k in CLOCK_COLUMNS]] for g, m in sorted(medians.items(), key=str)]
    return ["", "### Where the time went: vLLM's own clocks, median seconds per request", "",
            "TTFT as the client saw it = frontend (HTTP, request parsing: the client's TTFT minus vLLM's) + queue "
            "(arrival -> scheduled; with LMCache's blocking lookup the lookup waits here) + prefill (scheduled -> "
            "first token: the KV load and the forward pass); lookup: LMCache's lookup as vLLM's scheduler timed "
            "it (part of the queue).", "",
            markdown_table([*head, "n", "TTFT", "frontend", "queue", "lookup", "prefill"], rows)]


def reset_prefix_cache(base: str, tries: int = 3) -> None:
    """Empty vLLM's GPU prefix cache (needs VLLM_SERVER_DEV_MODE=1 in vLLM's environment)."""
    last = None
    for _ in range(tries):
        try:
            status, data, _ = http_json(base.rstrip("/") + "/reset_prefix_cache", {}, timeout=60)
        except (OSError, http.client.HTTPException) as e:
            status, data = None, f"{e.__class__.__name__}: {e}"
        if status == 200:
            return
        last = f"HTTP {status}: {str(data)[:200]}"
        if status == 404:
            break
        time.sleep(0.5)
    hint = " (404: is VLLM_SERVER_DEV_MODE=1 set for vLLM?)" if last and "404" in last else ""
    raise BenchError(f"POST /reset_prefix_cache failed: {last}{hint}")


def is_ready(base: str, model: str | None = None, timeout: float = 5.0) -> bool:
    """/health answers 200 and /v1/models lists the model (the same test as the appliance's healthcheck)."""
    try:
        status, _, _ = http_json(base.rstrip("/") + "/health", timeout=timeout)
        if status != 200:
            return False
        status, data, _ = http_json(base.rstrip("/") + "/v1/models", timeout=timeout)
        if status != 200 or not isinstance(data, dict):
            return False
        return model is None or any(m.get("id") == model for m in data.get("data", []))
    except (OSError, http.client.HTTPException, ValueError):
        return False


def wait_ready(base: str, model: str | None = None, timeout: float = 600.0, interval: float = 0.25,
               alive=None) -> float:
    """Seconds until ready; BenchError after `timeout` or as soon as `alive()` says the server died."""
    t = time.perf_counter()
    while True:
        if is_ready(base, model):
            return time.perf_counter() - t
        if alive is not None and not alive():
            raise BenchError(f"{base}: the server (or its supervisor) gave up before it was ready")
        if time.perf_counter() - t > timeout:
            raise BenchError(f"{base} not ready after {timeout:.0f} s "
                             f"(/health and /v1/models{' ' + model if model else ''})")
        time.sleep(interval)


def dispatch(parser: argparse.ArgumentParser, commands: dict, argv: list[str] | None = None) -> int:
    """A tool's main: its subcommand (`commands[name](args)`); a BenchError is one line and exit 2."""
    a = parser.parse_args(argv)
    try:
        return commands[a.cmd](a)
    except BenchError as e:
        log(f"ERROR: {e}")
        return 2


# --- supervisord -----------------------------------------------------------------------------------------

class Supervisor:
    """supervisord's XML-RPC interface on its unix socket: what `supervisorctl` does, from Python, through the
    appliance's own transport. Credentials: the password given, or the appliance's (RunDir.password, next to
    the socket), or none. `timeout` is kept for the callers' sake: the appliance's transport (supervisor's
    SupervisorTransport) does not take one."""

    def __init__(self, socket_path: str, timeout: float = 120.0, password: str | None = None):
        if not socket_path:
            raise BenchError("no supervisord socket given (--supervisor-socket or --run-dir)")
        self.socket_path, self.timeout = socket_path, timeout
        if password is None:  # what `serve` renders next to the socket (entrypoint.rundir.RunDir)
            from entrypoint.rundir import RunDir
            pw_file = RunDir(Path(socket_path).parent).password
            if pw_file.exists():
                password = pw_file.read_text().strip()
        self.password = password

    @property
    def rpc(self):
        """A fresh proxy per use (entrypoint.common.events.supervisor_rpc): its transport keeps one connection,
        which threads must not share."""
        from entrypoint.common.events import supervisor_rpc
        return supervisor_rpc(self.socket_path, self.password).supervisor

    def processes(self) -> list[dict]:
        return self.rpc.getAllProcessInfo()

    def full_name(self, name: str) -> str:
        """`group:name` as XML-RPC wants it; accepts the program name alone."""
        for p in self.processes():
            if name in (p["name"], f"{p['group']}:{p['name']}"):
                return f"{p['group']}:{p['name']}"
        raise BenchError(f"supervisord ({self.socket_path}) has no program {name!r}")

    def has(self, name: str) -> bool:
        return any(name in (p["name"], f"{p['group']}:{p['name']}") for p in self.processes())

    def info(self, name: str) -> dict:
        return self.rpc.getProcessInfo(self.full_name(name))

    def pid(self, name: str) -> int:
        return int(self.info(name)["pid"])

    def stop(self, name: str) -> None:
        try:
            self.rpc.stopProcess(self.full_name(name), True)
        except xmlrpc.client.Fault as e:
            if "NOT_RUNNING" not in e.faultString:
                raise

    def start(self, name: str, wait: bool = False) -> None:
        try:
            self.rpc.startProcess(self.full_name(name), wait)
        except xmlrpc.client.Fault as e:
            if "ALREADY_STARTED" not in e.faultString:
                raise

    def restart(self, names: list[str]) -> None:
        """Stop in the order given, start in reverse (e.g. ["vllm", "lmcache"]: the server first again)."""
        for name in names:
            self.stop(name)
        for name in reversed(names):
            self.start(name)

    def kill(self, name: str, sig: int = signal.SIGKILL, group: bool = True) -> int:
        """Signal a program the way a crash would (no supervisord stop). supervisord starts each program in
        its own process group, so group=True also takes the children (vLLM's engine core process)."""
        pid = self.pid(name)
        if pid <= 0:
            raise BenchError(f"program {name} is not running")
        if group:
            os.killpg(os.getpgid(pid), sig)
        else:
            os.kill(pid, sig)
        return pid

    def alive(self, name: str = "vllm") -> bool:
        """supervisord answers and has not given up on `name` (FATAL: the appliance is stopping)."""
        try:
            return self.info(name)["statename"] != "FATAL"
        except (OSError, xmlrpc.client.Fault, xmlrpc.client.ProtocolError, http.client.HTTPException):
            return False

    def wait_new_pid(self, name: str, old_pid: int, timeout: float = 120.0) -> int:
        """Until supervisord runs `name` with another pid than `old_pid` (it noticed the death, respawned)."""
        t = time.perf_counter()
        while time.perf_counter() - t < timeout:
            try:
                info = self.info(name)
            except (OSError, xmlrpc.client.Fault, xmlrpc.client.ProtocolError, http.client.HTTPException):
                if not Path(self.socket_path).exists():
                    raise BenchError(f"supervisord is gone ({self.socket_path} removed): the appliance stopped")
                time.sleep(0.2)
                continue
            if info["statename"] == "FATAL":
                raise BenchError(f"supervisord gave up on {name} (FATAL): {info.get('spawnerr') or info}")
            if info["pid"] and info["pid"] != old_pid and info["statename"] in ("STARTING", "RUNNING"):
                return int(info["pid"])
            time.sleep(0.2)
        raise BenchError(f"supervisord did not restart {name} within {timeout:.0f} s")


def socket_from_run_dir(run_dir: str | None) -> str | None:
    """The supervisord socket `serve` renders into its run directory (the appliance's RunDir), else one
    another supervisord left there."""
    if not run_dir:
        return None
    from entrypoint.rundir import RunDir
    if RunDir(Path(run_dir)).socket.exists():
        return str(RunDir(Path(run_dir)).socket)
    for name in ("supervisor.sock", "supervisord.sock"):
        if (Path(run_dir) / name).exists():
            return str(Path(run_dir) / name)
    socks = sorted(Path(run_dir).glob("*.sock"))
    return str(socks[0]) if socks else str(Path(run_dir) / "supervisor.sock")


# --- statistics and results ------------------------------------------------------------------------------

def percentile(values, q: float):
    """Linear-interpolated percentile (q in 0..100) of the values that are not None; None if empty."""
    xs = sorted(v for v in values if v is not None)
    if not xs:
        return None
    if len(xs) == 1:
        return xs[0]
    k = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def median(values):
    return percentile(values, 50)


_lock = threading.Lock()


def append_rows(results_dir, rows: list[dict]) -> Path:
    """Append result rows (one JSON object a line) to DIR/results.jsonl; every step of a suite adds to it."""
    d = Path(results_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / RESULTS_FILE
    with _lock, path.open("a") as f:
        for row in rows:
            row.setdefault("time", time.time())
            f.write(json.dumps(row, sort_keys=True) + "\n")
    return path


def load_rows(results_dir, bench: str | None = None) -> list[dict]:
    path = Path(results_dir) / RESULTS_FILE
    if not path.exists():
        return []
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                log(f"warning: {path}:{n} is not JSON (a run killed mid-write?); skipped")
    return [r for r in rows if bench is None or r.get("bench") == bench]


def fmt(value, digits: int = 3, suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}{suffix}"
    return f"{value}{suffix}"


def markdown_table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(h) for h in headers]] + [[c if isinstance(c, str) else fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells[1:]]
    return "\n".join(lines)


def pyplot():
    """matplotlib's pyplot on the Agg backend, or None (the chart is then skipped, with a note)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except Exception as e:  # noqa: BLE001
        log(f"note: no chart ({e.__class__.__name__}: {e}); install matplotlib for PNG charts")
        return None


def write_report(results_dir, name: str, summary: dict, markdown: str, chart=None) -> dict:
    """DIR/<name>.json, DIR/<name>.md and, when matplotlib is there, DIR/<name>.png (chart(plt, path))."""
    d = Path(results_dir)
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.json").write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    (d / f"{name}.md").write_text(markdown + "\n")
    written = {"json": str(d / f"{name}.json"), "md": str(d / f"{name}.md"), "png": None}
    if chart is not None:
        plt = pyplot()
        if plt is not None:
            path = d / f"{name}.png"
            try:
                chart(plt, path)
                written["png"] = str(path)
            except Exception as e:  # noqa: BLE001 - a chart must never lose the tables
                log(f"warning: chart {path} failed: {e.__class__.__name__}: {e}")
            finally:
                plt.close("all")
    return written


def last_runs(rows: list[dict], bench: str) -> dict:
    """{label: (run summary row, its request rows)} for the last `run` of each label: a bench appends its
    request rows (`bench`), then one summary row (`bench`_run) per run."""
    out, reqs = {}, {}
    for r in rows:
        if r.get("bench") == bench:
            reqs.setdefault(r.get("label"), []).append(r)
        elif r.get("bench") == f"{bench}_run":
            out[r["label"]] = (r, reqs.pop(r["label"], []))
    return out


def publish_report(results_dir, name: str, summary: dict, markdown: str, chart=None) -> int:
    """write_report, say what was written, and print the tables (a `report` command's last step)."""
    log(f"wrote {write_report(results_dir, name, summary, markdown, chart)}")
    print(markdown)
    return 0


def target_row(name: str, value, limit, unit: str = "", lower_is_better: bool = True) -> dict:
    """One target: value vs limit -> pass / miss / n/a (not measured)."""
    if value is None or limit is None:
        verdict = "n/a"
    else:
        verdict = "pass" if (value <= limit if lower_is_better else value >= limit) else "miss"
    return {"target": name, "value": value, "limit": limit, "unit": unit, "verdict": verdict}


def targets_markdown(targets: list[dict]) -> str:
    return markdown_table(["target", "measured", "limit", "verdict"],
                          [[t["target"], fmt(t["value"], 1 if t["unit"] == "%" else 2, t["unit"]),
                            fmt(t["limit"], 1 if t["unit"] == "%" else 2, t["unit"]),
                            t["verdict"].upper() if t["verdict"] == "miss" else t["verdict"]] for t in targets])


def latest_h2d(rows: list[dict]) -> dict | None:
    measured = [r for r in rows if r.get("bench") == "h2d" and r.get("ok")]
    return measured[-1] if measured else None


# --- CLI -------------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    bw = sub.add_parser("bandwidth", help="measure pinned host-to-GPU copy bandwidth, append a row")
    bw.add_argument("--results", required=True)
    bw.add_argument("--model-config", help="model dir or config.json, for KV bytes per token")
    bw.add_argument("--size-gib", type=float, default=1.0)
    bw.add_argument("--reps", type=int, default=5)
    kv = sub.add_parser("kv-bytes", help="KV bytes per token of a model config, and copy floors")
    kv.add_argument("--model-config", required=True)
    kv.add_argument("--tokens", default="16000,30000")
    kv.add_argument("--gb-per-s", type=float, default=None)
    a = ap.parse_args(argv)
    if a.cmd == "bandwidth":
        row = {"bench": "h2d", **measure_h2d_bandwidth(a.size_gib, a.reps)}
        if a.model_config:
            row["kv_bytes_per_token"] = kv_bytes_per_token(load_model_config(a.model_config))
            row["model_config"] = a.model_config
        append_rows(a.results, [row])
        if row["ok"]:
            print(f"host->device (pinned, {a.size_gib:g} GiB x {a.reps}): {row['gb_per_s']:.1f} GB/s median "
                  f"{row['h2d_all']}; device->host {row['d2h_gb_per_s']:.1f} GB/s; {row['device_name']}")
        else:
            print(f"host->device bandwidth not measured: {row['note']}")
        return 0
    bpt = kv_bytes_per_token(load_model_config(a.model_config))
    print(f"KV bytes per token: {bpt} ({bpt / 1024:.0f} KiB)")
    for n in (int(x) for x in a.tokens.split(",")):
        line = f"  {n} tokens: {bpt * n / 1e9:.3f} GB"
        if a.gb_per_s:
            line += f", copy floor {copy_floor_s(bpt, n, a.gb_per_s) * 1000:.1f} ms at {a.gb_per_s:g} GB/s"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
