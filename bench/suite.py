"""The benchmark suites, run ON a GPU machine where the appliance's Python stack is installed (on the lent GPU:
docs/benchmarks/METHOD.md and scripts/gpu/stage.sh stage vLLM + LMCache into /tmp/site[-new] and the model
configs into /tmp/model-8b). Each suite starts `python3 -m entrypoint serve` once per configuration, runs the
bench tools (`python -m bench.<tool>`) against it, stops it with SIGTERM, and fits one device call (<= 10 min;
SUITE_BUDGET_S, default 540):

  python3 -m bench.suite reuse        no-offload, then lmcache-server: cold / GPU hit / after GPU reset,
                                      SIGKILL of vLLM mid-request (supervisord respawns it, the LMCache
                                      server keeps its CPU tier), the appliance restarted (disk tier);
                                      then, if time is left, the LMCache server killed and SIGTERM
                                      during a long request (the faults suite's last two checks)
  python3 -m bench.suite multiround   no-offload, lmcache, native; GPU KV cache capped (MR_KV_BYTES)
  python3 -m bench.suite faults       a disk tier that fills up (2 GiB tmpfs), kill the LMCache server,
                                      SIGTERM during a long request
  python3 -m bench.suite options      one appliance per OPT_CONFIGS entry (no-offload, lmcache, and
                                      lmcache-<change>[-<change>]: blocking, eager, retain, arc,
                                      prewarm, noprewarm, skip, noskip): reuse at
                                      16k and 128 tokens; OPT_RESTART ones restarted (disk tier, rounds)
  python3 -m bench.suite tp           tensor parallel 2 (a 2-GPU host): LMCache server mode (reuse at
                                      16k, vLLM killed, the appliance restarted: disk tier), then
                                      in-process mode; prints the CPU/disk sizes each process was given
  python3 -m bench.suite workloads    issue 12 target 4, LMCache's own workloads: no-offload, lmcache (the
                                      default), native (WL_CONFIGS), each started once: long-document QA
                                      (2 passes), multi-round QA at a fixed rate; then a bare `vllm serve`
                                      (target 6, budget permitting): ~470 s + ~70 s (WL_* knobs below)
  python3 -m bench.suite startvs      issue 12 target 6: the appliance (no offload), then a bare `vllm
                                      serve` with its vLLM argv: serve -> ready side by side, ~150 s
  python3 -m bench.suite loadfaults   issue 14: closed-loop load with an LMCache-server kill, a full disk, a
                                      vLLM kill and SIGTERM; per-window table and chart (LF_* knobs)
  python3 -m bench.suite cluster      issue 15: two replicas, shared server vs store, router (CL_* knobs)
  python3 -m bench.suite coord        issue 15: placement by LMCache's coordinator on one GPU (CO_* knobs)
  REUSE_DROP_CACHES=1: reuse's disk-tier phase runs with the page cache dropped; options restarts its
                                      OPT_RESTART ones twice, warm then dropped (issue 12 target 5)
  python3 -m bench.suite reuse multiround   (both, if the budget allows: it does not on one call)
  python3 -m bench.suite --dry-run SUITE... prints the commands a suite would run (no appliance, no GPU)

Several suites at once on a multi-GPU host: GPU=N pins one to GPU N (CUDA_VISIBLE_DEVICES) and moves its
ports (API 8000+N, LMCache 5555+10N / 8080+N / Prometheus 9090+N, metrics 9464+N), run directories and pid file, e.g.
  GPU=0 OUT=/tmp/bo/g0 python3 -m bench.suite multiround & GPU=1 OUT=/tmp/bo/g1 MR_CONFIGS=... python3 -m ... &
Multi-round configurations (MR_CONFIGS, default "no-offload lmcache native"; see mr_backend below):
  no-offload, lmcache, native, lmcache-inproc (LMCACHE_MODE=in-process), lmcache-nonblocking
  (LMCACHE_NONBLOCKING_LOOKUP=true), lmcache-mw4 (the LMCache server
  with --max-workers 4), lmcache-cpuw1 / -cpuw4 (LMCACHE_LOOKUP_WORKERS=1 / 4), lmcache-chunk512
  (LMCACHE_CHUNK_SIZE=512); any of them with a suffix -mnbtN adds VLLM_MAX_NUM_BATCHED_TOKENS=N (vLLM's token
  budget per scheduler step).

Output: $OUT/results/ (results.jsonl, <bench>.md/.json/.png), $OUT/logs/<label>/ (serve output, the run
directory's supervisord/vllm/lmcache logs, rendered config), $OUT/logs/suite.log (this console).
The tables are printed last. Every knob (KNOBS below) can be set in the environment. Run it from the
repository root (`python3 -m bench.suite`), with the Python that runs the appliance (PY, default python3).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITES = ("reuse", "options", "multiround", "tp", "cluster", "faults", "loadfaults", "coord", "workloads", "startvs")

# Every knob, its default (the environment overrides it). "" is "unset" where the bash runner tested -n/-z.
KNOBS = {
    "OUT": "/tmp/bench-out",
    "SITE": "/tmp/site",                  # the staged vLLM + LMCache (empty: use the installed ones)
    "MODEL": "/tmp/model-8b", "SERVED": "llama8b",
    "GPU": "",                            # one GPU of a multi-GPU host (see above); empty: all GPUs
    "PORT": "",                           # default 8000 + GPU
    "PY": "python3",                      # runs the appliance and the bench tools
    "VLLM_CMD": "",                       # default "$PY -m vllm.entrypoints.cli.main" (no `vllm` script in the bundle)
    "LMCACHE_CMD": "",                    # default "$PY -m lmcache.cli.main"
    "SUITE_BUDGET_S": "540",              # stop starting new steps past this (device calls end at 600 s)
    "SUITE_T0": "",                       # set it earlier to count time spent before (e.g. an install)
    "START_TIMEOUT": "300",               # serve -> ready, at most
    "KVDISK": "/tmp/kvdisk", "GPU_UTIL": "0.6", "CPU_TIER_GIB": "20", "DISK_TIER_GIB": "40",
    "TP_CPU_GIB": "16",                   # the tp suite's CPU tier (a total: in-process workers get 8 each)
    "TP_DISK_GIB": "20",
    "REUSE_TOKENS": "16000,30000", "REUSE_SEEDS": "3", "REUSE_MAX_MODEL_LEN": "32768",
    "REUSE_DROP_CACHES": "0",             # 1: drop the page cache before the disk-tier phase (needs root)
    "REUSE_FAULTS": "1",                  # 1: then, budget permitting, kill the LMCache server; SIGTERM mid-request
    "MR_KV_BYTES": "4294967296",          # GPU KV cache of the multiround runs (4 GiB = 32768 tokens of 8B)
    "MR_GPU_UTIL": "",                    # or: a small GPU memory share instead of MR_KV_BYTES
    "MR_MAX_MODEL_LEN": "16384", "MR_MAX_SECONDS": "75",
    "MR_ARGS": "",                        # extra multiround run arguments (--users 20 --rounds 8 ...)
    "MR_CONFIGS": "no-offload lmcache native",
    "MR_REUSE_TOKENS": "",                # e.g. 16000: after each multi-round run, a reuse run on the same appliance
    "EXTRA_ENV": "",                      # extra VAR=value words for every appliance, e.g. VLLM_TENSOR_PARALLEL_SIZE=2
    # options: LMCache 0.5.6's new knobs, one appliance per configuration
    "OPT_CONFIGS": "no-offload lmcache lmcache-blocking",
    "OPT_RESTART": "lmcache",             # configurations that are also restarted (disk tier, restored rounds)
    "OPT_TOKENS": "16000,128",            # 128: the short-prompt cost of a hit (issue 12 target 2)
    "OPT_ROUNDS": "4",                    # after the restart: the prompts this many times, then a GPU reset
    "OPT_RECORD": "lmcache",              # the configuration whose metrics are recorded (names, dashboard data)
    "OPT_MODE": "reuse",                  # churn: instead of reuse, OPT_CHURN prompts in turn, pass after pass,
    "OPT_CHURN": "8000 6 2",              # (tokens, prompts, passes), a working set larger than the CPU tier
    # cluster (issue 15): two replicas on a 2-GPU host
    "CL_TOKENS": "4000,8000,16000,24000,32000", "CL_SHARED_TOKENS": "8000,16000,32000", "CL_SEEDS": "1",
    "CL_MAX_MODEL_LEN": "32768",
    "CL_KV_BYTES": "21474836480",         # GPU KV cache of each vLLM (20 GiB): A and C share GPU 0
    "CL_UTIL": "0.4", "CL_C_UTIL": "0.3",
    "CL_CPU_GIB": "30",                   # each LMCache server's CPU tier
    "CL_C_GPU": "0",                      # C's GPU; A's LMCache server must see it (CUDA IPC)
    "CL_PORT": "8000",                    # A: CL_PORT, B: +1, C: +2, the router: +100
    "CL_PORT_SHIFT": "0",                 # added to the LMCache and metrics ports (5555, 8080, 9090, 9464)
    "CL_REDIS_PORT": "6390", "CL_REDIS_MAXMEMORY": "80gb",
    "CL_ROUTE_S": "40",                   # each router run
    "CL_PLAIN_OBJECTS": "64",             # plain-client read: 64 objects of 32 MiB = a 16k prompt
    "CL_ROUTE_ARGS": "",                  # extra cluster route arguments (--users 24 ...)
    "CL_OUTAGE_ARGS": "",                 # extra cluster outage arguments ("--restart-lmcache /tmp/run-cl-a,...")
    "CL_KIT": "",                         # default $ROOT/.gpu-cluster: redis/ (run.sh ...), vllm_router-*.whl
    "CL_SITE": "/tmp/site-cluster",       # where the router wheel is installed
    # coord (issue 15): placement by LMCache's coordinator, two replicas on ONE GPU
    "CO_UTIL": "0.4", "CO_KV_BYTES": "8589934592", "CO_CPU_GIB": "24", "CO_MAX_MODEL_LEN": "16384",
    "CO_PORT_SHIFT": "40", "CO_COORD_PORT": "9300", "CO_ROUTE_S": "35", "CO_ROUTE_ARGS": "",
    # workloads (issue 12 target 4) and startvs (target 6)
    "WL_CONFIGS": "no-offload lmcache native", "WL_CPU_GIB": "40", "WL_KV_BYTES": "8589934592",
    "WL_MAX_MODEL_LEN": "20480",
    "WL_LD_ARGS": "",                     # extra longdoc run arguments (--inflight 4, --docs 20 ...)
    "WL_MR_SECONDS": "45",
    "WL_MR_ARGS": "--users 10 --rounds 4 --rate 0.9 --system-tokens 1000 --history-tokens 12000 "
                  "--user-tokens 1000 --answer-tokens 100",
    "WL_STARTVS": "1",
    "STARTVS_CONFIGS": "no-offload",      # the startvs suite's appliance starts (no-offload first)
    # loadfaults (issue 14)
    "LF_DISK_GIB": "3", "LF_TMPFS": "4g", "LF_CPU_GIB": "4", "LF_PRUNE_S": "2", "LF_GAP": "true",
    "LF_FRONT": "false",                  # APPLIANCE_FRONT_PROXY: true runs the faults behind the front proxy
    "LF_HEARTBEAT": "5",                  # LMCACHE_HEARTBEAT_INTERVAL (2: the candidate for a <= 5 s stall)
    "LF_CLIENTS": "16", "LF_WINDOW": "10", "LF_SECONDS": "70", "LF_DISK_SECONDS": "45", "LF_VLLM_SECONDS": "110",
    "LF_RUNS": "",                        # default: lmcache-kill disk-full vllm-kill sigterm
}
APPLIANCE_PREFIXES = ("VLLM_", "LMCACHE_", "APPLIANCE_")


# --- the configurations: pure functions of a label (tests/unit/test_bench_suite.py) -------------------------

def mr_backend(label: str, cpu_tier_gib: str) -> list[str] | None:
    """The offloading words of a multi-round configuration (None: unknown label)."""
    base, mnbt = label, ""
    if "-mnbt" in label:
        base, mnbt = label.rsplit("-mnbt", 1)[0], label.rsplit("-mnbt", 1)[1]
    if base == "no-offload":
        words = ["VLLM_KV_OFFLOADING_BACKEND=none"]
    elif base == "native":
        words = ["VLLM_KV_OFFLOADING_BACKEND=native", f"VLLM_KV_OFFLOADING_SIZE={cpu_tier_gib}"]
    elif base in ("lmcache", "lmcache-inproc", "lmcache-mw4", "lmcache-cpuw1", "lmcache-cpuw4", "lmcache-chunk512",
                  "lmcache-nonblocking"):
        words = ["VLLM_KV_OFFLOADING_BACKEND=lmcache", f"VLLM_KV_OFFLOADING_SIZE={cpu_tier_gib}"]
        words += {  # the one change each variant makes to the default LMCache configuration
            "lmcache-inproc": ["LMCACHE_MODE=in-process"],
            # the scheduler polls the lookup instead of waiting for it: under multi-user load the LMCache
            # server answered a partly stored prompt's lookup 14-31 ms late (h200x2-2026-11-29-evening)
            "lmcache-nonblocking": ["LMCACHE_NONBLOCKING_LOOKUP=true"],
            "lmcache-mw4": ["LMCACHE_SERVER_EXTRA_ARGS=--max-workers 4"],
            # the LMCache server's LOOKUP pool (STORE/RETRIEVE keep their thread): 1 is LMCache's and the
            # appliance's default; 4 was tried for the late lookups under multi-user load (no steady gain)
            "lmcache-cpuw1": ["LMCACHE_LOOKUP_WORKERS=1"],
            "lmcache-cpuw4": ["LMCACHE_LOOKUP_WORKERS=4"],
            "lmcache-chunk512": ["LMCACHE_CHUNK_SIZE=512"],
        }.get(base, [])
    else:
        return None
    if mnbt:
        words.append(f"VLLM_MAX_NUM_BATCHED_TOKENS={mnbt}")
    return words


OPT_CHANGES = {  # each suffix of an options label is one change to LMCache's defaults
    "blocking": "LMCACHE_NONBLOCKING_LOOKUP=false",
    "eager": "LMCACHE_EAGER_PREFETCH=true",
    "retain": "LMCACHE_L2_PREFETCH_POLICY=retain",
    "arc": "LMCACHE_EVICTION_POLICY=ARC",
    "prewarm": "LMCACHE_PREWARM_SIZE=auto",      # hot-prefix pre-warming (the default since 11-29) on
    "noprewarm": "LMCACHE_PREWARM_SIZE=0",       # and off: the disk tier as it is without it
    "skip": "LMCACHE_SKIP_USELESS_LOOKUP=true",  # no lookup when it cannot help (the connector)
    "noskip": "LMCACHE_SKIP_USELESS_LOOKUP=false",
}


def opt_words(label: str, cpu_tier_gib: str, kvdisk: str, disk_tier_gib: str) -> list[str] | None:
    """The appliance words of an options configuration (None: unknown label or change)."""
    if label == "no-offload":
        return ["VLLM_KV_OFFLOADING_BACKEND=none"]
    if label != "lmcache" and not label.startswith("lmcache-"):
        return None
    words = ["VLLM_KV_OFFLOADING_BACKEND=lmcache", f"VLLM_KV_OFFLOADING_SIZE={cpu_tier_gib}",
             f"LMCACHE_LOCAL_DISK={kvdisk}-{label}", f"LMCACHE_MAX_LOCAL_DISK_SIZE={disk_tier_gib}"]
    for part in label[len("lmcache"):].split("-"):
        if not part:
            continue
        if part not in OPT_CHANGES:
            return None
        words.append(OPT_CHANGES[part])
    return words


def wl_words(label: str, wl_cpu_gib: str, wl_kv_bytes: str, wl_max_model_len: str) -> list[str] | None:
    """The appliance words of a workloads (and startvs) configuration."""
    words = mr_backend(label, wl_cpu_gib)
    if not words:
        return None
    return [*words, f"VLLM_KV_CACHE_MEMORY_BYTES={wl_kv_bytes}", f"VLLM_MAX_MODEL_LEN={wl_max_model_len}"]


def with_instance_ports(words: list[str], gpu: str) -> list[str]:
    """The configuration's words, plus (GPU=N) the metrics ports moved: two appliances on one host (GPU=0 and
    GPU=1 side by side) would both bind the LMCache server's exporter (9090) and the appliance's metrics endpoint
    (9464); the other ports move in appliance_env."""
    if gpu:
        return [*words, f"APPLIANCE_LMCACHE_METRICS_PORT={9090 + int(gpu)}",
                f"APPLIANCE_METRICS_PORT={9464 + int(gpu)}"]
    return list(words)


def plan_argv(plan: dict, overrides: list[tuple[str, str]] = ()) -> list[str]:
    """vLLM's argv from `serve` on, of a rendered plan.json, with flags replaced or added."""
    argv = plan["vllm"]["argv"]
    out = argv[argv.index("serve"):]
    for flag, value in overrides:
        if flag in out:
            out[out.index(flag) + 1] = value
        else:
            out += [flag, value]
    return out


def plan_sizes(plan: dict) -> list[str]:
    """The sizes the appliance rendered: tier flags of the argvs, and every size/disk/capacity setting."""
    lines: list[str] = []

    def show(x, path=""):
        if isinstance(x, dict):
            for k, v in x.items():
                show(v, f"{path}.{k}" if path else k)
        elif isinstance(x, list):
            for key in ("--l1-size-gb", "--l2-adapter", "--tensor-parallel-size"):
                if key in x:
                    i = x.index(key)
                    lines.append(f"    {path}: {key} {x[i + 1]}")
        elif not path.startswith("sources") and any(w in path.lower() for w in ("size", "disk", "capacity")):
            lines.append(f"    {path} = {x}")
    show(plan)
    return lines


class Skip(Exception):
    """A suite step that cannot go on (the bash runner's `return 0` out of a suite function)."""


class Job:
    """A process started in the background (an appliance, C, the router, the coordinator, a bare vLLM)."""

    def __init__(self, proc: subprocess.Popen | None, name: str):
        self.proc, self.name = proc, name

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        """The exit status the way a shell reports it (128 + signal)."""
        if self.proc is None:
            return 0
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return -1
        return 128 - rc if rc < 0 else rc


class Runner:
    """One call: the suites named, in order, then the tables. `dry_run` prints every command instead of running
    it (and starts nothing, mounts nothing, removes nothing), for a look at a suite's plan on any machine."""

    def __init__(self, environ: dict | None = None, dry_run: bool = False, stdout=None):
        self.environ = dict(os.environ if environ is None else environ)
        self.k = {name: self.environ.get(name, default) for name, default in KNOBS.items()}
        k = self.k
        self.dry = dry_run
        self.stdout = stdout or sys.stdout
        self.out = Path(k["OUT"]).absolute()  # the children run from the repo root
        self.res, self.logs = self.out / "results", self.out / "logs"
        self.gpu = k["GPU"]
        self.inst = f"g{self.gpu}-" if self.gpu else ""
        self.port = int(k["PORT"] or 8000 + int(self.gpu or 0))
        self.lmc_ports = ([f"APPLIANCE_LMCACHE_PORT={5555 + 10 * int(self.gpu)}",
                           f"APPLIANCE_LMCACHE_HTTP_PORT={8080 + int(self.gpu)}"] if self.gpu else [])
        self.base = f"http://127.0.0.1:{self.port}"
        self.py = k["PY"]
        self.vllm_cmd = k["VLLM_CMD"] or f"{self.py} -m vllm.entrypoints.cli.main"
        self.lmcache_cmd = k["LMCACHE_CMD"] or f"{self.py} -m lmcache.cli.main"
        self.budget = int(k["SUITE_BUDGET_S"])
        self.t0 = float(k["SUITE_T0"] or time.time())
        self.pids_file = Path(f"/tmp/bench-suite{'-g' + self.gpu if self.gpu else ''}.pids")
        self.cl_kit = Path(k["CL_KIT"] or ROOT / ".gpu-cluster")
        self.cl_port_shift = int(k["CL_PORT_SHIFT"])
        self.serve: Job | None = None
        self.label = ""
        self.mounted = ""                 # the faults suites' tmpfs, unmounted at exit
        self.failed: list[str] = []
        self.reports: list[str] = []      # bench tools whose `report` prints a table at the end
        self.cleanups: list = []          # a suite's own cleanup (replicas, router, a bare vLLM), before the tables
        self.cl: dict[str, Job] = {}
        self.bare: Job | None = None
        self._lock = threading.Lock()
        self._log = None

    # --- console ------------------------------------------------------------------------------------------
    def echo(self, text: str = "") -> None:
        with self._lock:
            self.stdout.write(text + "\n")
            self.stdout.flush()
            if self._log:
                self._log.write(text + "\n")
                self._log.flush()

    def elapsed(self) -> int:
        return int(time.time() - self.t0)

    def say(self, msg: str) -> None:
        self.echo(f"=== [{self.elapsed()}s] {msg}")

    def left(self) -> int:
        return self.budget - self.elapsed()

    def need(self, seconds: int, what: str) -> bool:
        """False (and a note) when the budget cannot cover it."""
        if self.left() < seconds:
            self.say(f"SKIPPED (budget: {self.left()} s left, {what} needs ~{seconds} s)")
            self.failed.append(f"skipped: {what}")
            return False
        return True

    def fail(self, what: str) -> None:
        self.say(f"FAILED: {what}")
        self.failed.append(what)

    # --- processes ------------------------------------------------------------------------------------------
    def app_env(self, words: list[str] = (), pythonpath: str | None = None, clean: bool = True, **extra) -> dict:
        """The environment of a child: this one without VLLM_*/LMCACHE_*/APPLIANCE_* (clean), plus words."""
        env = {n: v for n, v in self.environ.items() if not (clean and n.startswith(APPLIANCE_PREFIXES))}
        if self.gpu:
            env["CUDA_VISIBLE_DEVICES"] = self.gpu  # the appliance, vLLM, and the bandwidth measure use this GPU only
        for kv in words:
            if "=" in kv:
                n, v = kv.split("=", 1)
                env[n] = v
        if pythonpath is not None:
            env["PYTHONPATH"] = pythonpath
        env.update(extra)
        return env

    def site_path(self) -> str:
        """PYTHONPATH of the appliance (and of the bench tools, which import its code): the staged stack, the repo."""
        return f"{self.k['SITE']}:{ROOT}" if self.k["SITE"] else str(ROOT)

    def show(self, argv: list[str], env_words: list[str] = ()) -> None:
        self.echo("+ " + " ".join([*env_words, *(shlex.quote(a) for a in argv)]))

    def run(self, argv: list[str], env: dict | None = None, prefix: str = "", quiet: bool = False,
            stderr_to: Path | None = None, show_env: list[str] = ()) -> tuple[int, str]:
        """A command in the foreground, its output to the console (and suite.log); (status, output)."""
        if self.dry:
            self.show(argv, show_env)
            return 0, ""
        err = open(stderr_to, "w") if stderr_to else None  # noqa: SIM115 - closed below
        try:
            try:
                proc = subprocess.Popen(argv, cwd=ROOT, env=env if env is not None else self.environ, text=True,
                                        stdout=subprocess.PIPE, stderr=err or subprocess.STDOUT, errors="replace")
            except OSError as e:
                self.echo(f"{argv[0]}: {e}")
                return 127, ""
            lines = []
            try:
                for line in proc.stdout:
                    lines.append(line)
                    if not quiet:
                        self.echo(prefix + line.rstrip("\n"))
                rc = proc.wait()
            except BaseException:  # interrupted (SIGINT/SIGTERM): the step goes with the call
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                raise
        finally:
            if err:
                err.close()
        return (128 - rc if rc < 0 else rc), "".join(lines)

    def bench(self, *args: str, prefix: str = "", quiet: bool = False, stderr_to: Path | None = None):
        """`python -m bench.<tool> ...` from the repo root, with the appliance's PYTHONPATH (the tools import
        entrypoint.*: its Prometheus parser, its supervisord transport)."""
        tool, rest = args[0], list(args[1:])
        argv = [self.py, "-c", *rest] if tool == "-c" else [self.py, "-m", f"bench.{tool}", *rest]
        return self.run(argv, self.app_env(clean=False, pythonpath=self.site_path()), prefix, quiet, stderr_to)[0] == 0

    def spawn(self, argv: list[str], env: dict, log: Path, name: str, new_session: bool = False,
              append: bool = False, show_env: list[str] = ()) -> Job:
        if self.dry:
            self.show(argv, show_env)
            self.echo(f"  (in the background, output to {log})")
            return Job(None, name)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a" if append else "w") as f:
            proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                    start_new_session=new_session)
        return Job(proc, name)

    def rm(self, *paths) -> None:
        for p in paths:
            if self.dry:
                self.echo(f"+ rm -rf {p}")
            elif os.path.islink(p) or os.path.isfile(p):
                os.unlink(p)
            elif os.path.isdir(p):
                shutil.rmtree(p, ignore_errors=True)

    def tail(self, path: Path, n: int, prefix: str) -> None:
        try:
            lines = Path(path).read_text(errors="replace").splitlines()[-n:]
        except OSError:
            return
        for line in lines:
            self.echo(prefix + line)

    def url_ok(self, url: str, timeout: float = 2) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=timeout):
                return True
        except Exception:  # noqa: BLE001 - any failure is "not yet"
            return False

    def fetch(self, url: str, dest: Path | None = None) -> str | None:
        """curl -sf URL [> dest]."""
        if self.dry:
            self.echo(f"+ curl -sf {url}" + (f" > {dest}" if dest else ""))
            return None
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                text = r.read().decode(errors="replace")
        except Exception:  # noqa: BLE001
            return None
        if dest:
            Path(dest).write_text(text)
        return text

    def grep_log(self, path: Path, pattern: str, n: int | None = None) -> list[str]:
        try:
            found = re.findall(pattern, Path(path).read_text(errors="replace"))
        except OSError:
            return []
        return found[:n] if n else found

    def copy_logs(self, run: Path, dest: Path, *globs: str) -> None:
        if self.dry:
            return
        dest.mkdir(parents=True, exist_ok=True)
        for g in globs:
            for f in run.glob(g):
                try:
                    shutil.copy(f, dest / f.name)
                except OSError:
                    pass

    def wait_gpu_free(self, check: bool, label: str) -> None:
        if self.dry or not shutil.which("nvidia-smi"):
            return
        only = ["-i", self.gpu] if self.gpu else []  # a parallel suite's GPU is not ours to wait for
        q = ["nvidia-smi", *only, "--format=csv,noheader"]
        for _ in range(60):
            if not subprocess.run([*q, "--query-compute-apps=pid"], capture_output=True, text=True).stdout.strip():
                break
            time.sleep(0.5)
        if check:
            busy = subprocess.run([*q, "--query-compute-apps=pid,used_memory"], capture_output=True,
                                  text=True).stdout.strip()
            if busy:
                self.fail(f"GPU still in use after stopping {label}: {busy}")

    def kv_tokens(self, label: str) -> str:
        found = self.grep_log(Path(f"/tmp/run-{self.inst}{label}/vllm.log"), r"GPU KV cache size: [0-9,]+ tokens", 1)
        return re.sub(r"\D", "", found[0]) if found else ""

    # --- the appliance ------------------------------------------------------------------------------------
    def appliance_env(self, port: int | None = None) -> list[str]:
        """The environment every configuration shares (docs/benchmarks/METHOD.md lists the same)."""
        k = self.k
        return [f"APPLIANCE_VLLM_COMMAND={self.vllm_cmd}", f"APPLIANCE_LMCACHE_COMMAND={self.lmcache_cmd}",
                f"VLLM_MODEL={k['MODEL']}", f"VLLM_SERVED_MODEL_NAME={k['SERVED']}",
                f"VLLM_PORT={port or self.port}", "VLLM_LOAD_FORMAT=dummy", "VLLM_ENFORCE_EAGER=true",
                f"VLLM_GPU_MEMORY_UTILIZATION={k['GPU_UTIL']}", "VLLM_SERVER_DEV_MODE=1",
                "VLLM_USE_FLASHINFER_SAMPLER=0", "HF_HUB_OFFLINE=1"]

    def write_env(self, path: Path, lines: list[str]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{line}\n" for line in lines))

    def start_appliance(self, label: str, *words: str) -> bool:
        """Serve in the background, wait until ready."""
        self.label = label
        words = with_instance_ports(list(words), self.gpu)
        run = Path(f"/tmp/run-{self.inst}{label}")
        self.rm(run)
        lines = [*self.appliance_env(), f"APPLIANCE_RUN_DIR={run}", *self.lmc_ports, *words,
                 *self.k["EXTRA_ENV"].split()]
        envfile = self.logs / label / "appliance.env"
        self.write_env(envfile, lines)
        shown = [x for x in lines if re.match(r"^(VLLM_KV|LMCACHE|VLLM_MAX_|VLLM_KV_CACHE|VLLM_GPU|VLLM_TENSOR)", x)]
        self.say(f"start {label}: " + "".join(f"{x} " for x in shown))
        started = time.time()
        self.serve = self.spawn([self.py, "-m", "entrypoint", "serve"],
                                self.app_env(lines, pythonpath=self.site_path()), self.logs / label / "serve.log",
                                label, show_env=[f"PYTHONPATH={self.site_path()}", f"(env: {envfile})"])
        if not self.dry:
            with open(self.pids_file, "a") as f:
                f.write(f"{self.serve.pid}\n")
        budget = min(int(self.k["START_TIMEOUT"]), self.left())
        if self.bench("startup", "wait", "--label", label, "--results", str(self.res), "--base-url", self.base,
                      "--model", self.k["SERVED"], "--started-at", f"{started:.9f}", "--pid", str(self.serve.pid),
                      "--run-dir", str(run), "--timeout", str(budget)):
            for line in self.grep_log(run / "vllm.log", r"(?:GPU KV cache size|Maximum concurrency)[^\"\n]*", 2):
                self.echo(f"    vllm: {line}")
            return True
        self.fail(f"{label} did not get ready")
        self.tail(self.logs / label / "serve.log", 40, "    serve.log: ")
        self.stop_appliance()
        return False

    def stop_appliance(self) -> None:
        """SIGTERM to serve, wait, keep the logs; waits for the GPU to be free again."""
        if self.serve is None:
            return
        label = self.label
        if not self.bench("startup", "stop", "--pid", str(self.serve.pid), "--label", label, "--results",
                          str(self.res), "--timeout", "90"):
            self.fail(f"{label}: stop not clean")
        self.echo(f"    serve exit code: {self.serve.wait()}")
        run = Path(f"/tmp/run-{self.inst}{label}")
        self.copy_logs(run, self.logs / label, "*.log", "*.log.1", "supervisord.conf", "plan.json")
        self.serve = None
        self.wait_gpu_free(True, label)

    def cleanup_earlier(self) -> None:
        """Appliances this runner started in an earlier call on the same (warm) machine."""
        if not self.pids_file.is_file():
            return
        for pid in self.pids_file.read_text().split():
            try:
                os.kill(int(pid), 0)
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, ValueError):
                continue
            if "entrypoint serve" in cmd or "supervisord" in cmd:
                self.say(f"an earlier appliance (pid {pid}) is still running: stopping it")
                self.bench("startup", "stop", "--pid", pid, "--label", f"earlier-{pid}", "--results",
                           str(self.out / "earlier"), "--timeout", "60")
        if not self.dry:
            self.pids_file.unlink(missing_ok=True)

    def header(self, suites: list[str]) -> None:
        self.say(f"suite {' '.join(suites)} on {socket.gethostname()}; budget {self.budget} s")
        if shutil.which("nvidia-smi") and not self.dry:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                  "--format=csv,noheader"], capture_output=True, text=True).stdout
            for line in out.splitlines():
                self.echo(f"    gpu: {line}")
        mem = ""
        try:
            kb = int(next(x for x in Path("/proc/meminfo").read_text().splitlines()
                          if x.startswith("MemTotal")).split()[1])
            mem = f", {kb // 1048576} GiB RAM"
        except (OSError, StopIteration, ValueError):
            pass

        def free(path):
            try:
                return f"{shutil.disk_usage(path).free / 2**30:.0f}G free"
            except OSError:
                return "?"
        soft = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
        memlock = "unlimited" if soft == resource.RLIM_INFINITY else str(soft // 1024)
        self.echo(f"    cpu: {os.cpu_count()} cores{mem}; /tmp: {free('/tmp')}; /dev/shm: {free('/dev/shm')}; "
                  f"ulimit -l: {memlock}")
        git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        if git.returncode == 0:
            changed = subprocess.run(["git", "-C", str(ROOT), "status", "--short"], capture_output=True, text=True)
            self.echo(f"    git: {git.stdout.strip()} + {len(changed.stdout.splitlines())} changed files")
        site = self.k["SITE"]
        if site and not Path(site, ".done").is_file():
            self.fail(f"{site}/.done missing: stage the bundle first (docs/benchmarks/METHOD.md, scripts/gpu/stage.sh)")
            if not self.dry:
                raise SystemExit(1)

    def bandwidth(self) -> None:
        if not self.bench("common", "bandwidth", "--results", str(self.res), "--model-config", self.k["MODEL"]):
            self.fail("bandwidth measure")

    def on_exit(self) -> None:
        while self.cleanups:
            self.cleanups.pop()()
        if self.serve is not None:
            self.say(f"stopping {self.label} (exit)")
            self.stop_appliance()
        if self.mounted:
            if self.dry:
                self.echo(f"+ umount {self.mounted}")
            elif subprocess.run(["umount", self.mounted]).returncode != 0:
                self.echo(f"could not unmount {self.mounted}")
        self.echo()
        self.say(f"done in {self.elapsed()} s; results in {self.res}, logs in {self.logs}")
        for f in self.failed:
            self.echo(f"  - {f}")
        self.echo()
        self.write_reports()

    def write_reports(self) -> None:
        """Each bench tool's `report` once, in the order the suites named them: the tables are the last lines."""
        for tool in dict.fromkeys(self.reports):
            err = self.logs / f"report-{tool}.err"
            if not self.bench(tool, "report", "--results", str(self.res), stderr_to=None if self.dry else err):
                self.echo(f"({tool}.py report failed:)")
                self.tail(err, 10**6, "")
            self.echo()

    # --- shared steps -------------------------------------------------------------------------------------
    def kill_lmcache(self) -> None:
        """SIGKILL the LMCache server; probe until serving is back (bounded by the budget)."""
        probe = min(self.left() - 60, 150)
        if not self.need(90, "fault: kill the LMCache server"):
            return
        if not self.bench("faults", "kill-lmcache", "--base-url", self.base, "--model", self.k["SERVED"],
                          "--results", str(self.res), "--run-dir", f"/tmp/run-{self.inst}{self.label}",
                          "--max-seconds", str(probe)):
            self.fail("fault: kill the LMCache server")

    def sigterm_inflight(self) -> None:
        """The way this appliance stops: SIGTERM while a long request runs; it must complete."""
        if not self.need(45, "fault: SIGTERM during a long request"):
            return
        pid = self.serve.pid if self.serve else 0
        if not self.bench("faults", "sigterm-inflight", "--base-url", self.base, "--model", self.k["SERVED"],
                          "--results", str(self.res), "--serve-pid", str(pid)):
            self.fail("fault: SIGTERM during a long request")
        if self.serve:
            self.echo(f"    serve exit code after SIGTERM: {self.serve.wait()}")
        self.copy_logs(Path(f"/tmp/run-{self.inst}{self.label}"), self.logs / self.label, "*.log", "supervisord.conf")
        self.serve = None

    def drop_page_cache(self) -> bool:
        """Needs root (the GPU machine's user is); False, with a note, when it cannot."""
        if self.dry:
            self.echo("+ sync; echo 3 > /proc/sys/vm/drop_caches")
            return True
        os.sync()
        try:
            Path("/proc/sys/vm/drop_caches").write_text("3")
            self.echo("    page cache dropped")
            return True
        except OSError:
            self.echo("    could not drop the page cache (not root?): disk reads may come from RAM")
            return False

    def tmpfs(self, path: str, size: str, mounted_note: str | None, plain_note: str) -> None:
        Path(path).mkdir(parents=True, exist_ok=True) if not self.dry else None
        if self.dry:
            self.echo(f"+ mount -t tmpfs -o size={size} tmpfs {path}")
            self.mounted = path
        elif subprocess.run(["mountpoint", "-q", path]).returncode != 0:
            if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                              stderr=subprocess.DEVNULL).returncode == 0:
                if mounted_note:
                    self.echo(mounted_note)
                self.mounted = path
            else:
                self.echo(plain_note)
        for child in ([] if self.dry else Path(path).iterdir()):
            self.rm(child)

    def du(self, path: str, prefix: str) -> None:
        if self.dry or not os.path.exists(path):
            return
        out = subprocess.run(["du", "-sh", path], capture_output=True, text=True).stdout
        for line in out.splitlines():
            self.echo(prefix + line)

    def footprint(self) -> None:
        """What the appliance's processes hold: RSS of each (pinned CPU tiers are resident), GPU memory."""
        self.say(f"footprint of {self.label} (RSS; a pinned CPU tier is resident, so it shows here)")
        if self.dry or self.serve is None:
            return
        kids, info = {}, {}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                st = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                rss = int([x for x in Path(f"/proc/{pid}/status").read_text().splitlines()
                           if x.startswith("VmRSS")][0].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(int(st[1]), []).append(int(pid))
            info[int(pid)] = (rss, cmd)

        def walk(pid, depth):
            rss, cmd = info.get(pid, (0, "?"))
            if rss > 512 * 1024 or depth < 2:  # skip small helpers
                self.echo(f"    {'  ' * depth}{pid:>7} rss {rss / 1048576:6.1f} GiB  {cmd[:110]}")
            for kid in sorted(kids.get(pid, [])):
                walk(kid, depth + 1)
        walk(self.serve.pid, 0)
        if shutil.which("nvidia-smi"):
            out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader"],
                                 capture_output=True, text=True).stdout
            for line in out.splitlines():
                self.echo(f"    gpu: {line}")

    def sizes(self) -> None:
        """The sizes the appliance rendered for the label, and what LMCache says it was given."""
        run = Path(f"/tmp/run-{self.inst}{self.label}")
        self.say(f"sizes of {self.label} (rendered; then LMCache's own log lines)")
        try:
            for line in plan_sizes(json.loads((run / "plan.json").read_text())):
                self.echo(line)
        except (OSError, ValueError) as e:
            self.echo(f"    (no plan: {e})")
        for f in sorted([*run.glob("lmcache*.y*ml"), *run.glob("lmcache*.json")]):
            for line in f.read_text(errors="replace").splitlines():
                self.echo(f"    config: {line}")
        pat = re.compile(r"l1.*size|size.*gb|max_local_cpu_size|max_local_disk_size|max_capacity|capacity_gb|"
                         r"world_size|worker_id", re.I)
        found = set()
        for name in ("lmcache.log", "vllm.log"):
            try:
                found |= {x[:220] for x in (run / name).read_text(errors="replace").splitlines()
                          if pat.search(x) and x.strip()}
            except OSError:
                pass
        for line in sorted(found)[:14]:
            self.echo(f"    log: {line}")

    # --- reuse ----------------------------------------------------------------------------------------------
    def suite_reuse(self) -> None:
        k = self.k
        self.reports += ["startup", "reuse"]
        common = ["--base-url", self.base, "--model", k["SERVED"], "--tokens", k["REUSE_TOKENS"], "--seeds",
                  k["REUSE_SEEDS"], "--results", str(self.res)]
        self.rm(k["KVDISK"])  # no prompt of an earlier call may be found on disk
        self.bandwidth()
        # 1. the appliance's own no-offload baseline: recompute after a GPU reset
        if self.need(140, "reuse no-offload") and self.start_appliance(
                "no-offload", "VLLM_KV_OFFLOADING_BACKEND=none", f"VLLM_MAX_MODEL_LEN={k['REUSE_MAX_MODEL_LEN']}"):
            if not self.bench("reuse", "run", "--label", "no-offload", *common):
                self.fail("reuse run no-offload")
            self.stop_appliance()
        # 2. LMCache server (CPU tier + disk tier): GPU reset, then vLLM SIGKILLed mid-request (supervisord
        #    respawns it, the LMCache server keeps its CPU tier). What that tier holds by then: warm-ups 9k +
        #    3 x (16k + 30k) + 2k in flight + 1k = ~150k tokens x 128 KiB = 19.7 GB, under the 20 GiB (21.5 GB)
        #    tier: no measured prompt is evicted before it is measured.
        if not self.need(150, "reuse lmcache-server"):
            return
        lmc = ["VLLM_KV_OFFLOADING_BACKEND=lmcache", f"VLLM_KV_OFFLOADING_SIZE={k['CPU_TIER_GIB']}",
               f"LMCACHE_LOCAL_DISK={k['KVDISK']}", f"LMCACHE_MAX_LOCAL_DISK_SIZE={k['DISK_TIER_GIB']}",
               f"VLLM_MAX_MODEL_LEN={k['REUSE_MAX_MODEL_LEN']}"]
        if not self.start_appliance("lmcache-server", *lmc):
            return
        if not self.bench("reuse", "run", "--label", "lmcache-server", *common):
            self.fail("reuse run lmcache-server")
        if self.need(110, "after_vllm_restart (SIGKILL of vLLM mid-request)"):
            wait_s = min(self.left() - 100, 240)
            if not self.bench("reuse", "again", "--label", "lmcache-server", "--phase", "after_vllm_restart",
                              "--restart", "kill-vllm", "--run-dir", f"/tmp/run-{self.inst}lmcache-server",
                              "--warmup-tokens", "1024", "--ready-timeout", str(wait_s), *common):
                self.fail("after_vllm_restart (vLLM SIGKILLed: see logs/lmcache-server/vllm.log)")
        # 3. a restart of everything: the appliance stopped (SIGTERM) and started again; the disk tier remains
        self.stop_appliance()
        self.du(k["KVDISK"], "    disk tier after the stop: ")
        cache = "warm"
        if k["REUSE_DROP_CACHES"] == "1" and self.drop_page_cache():
            cache = "cold"
        if not self.need(110, "after_full_restart (the appliance restarted, disk tier)"):
            return
        if not self.start_appliance("lmcache-server-restarted", *lmc):
            return
        if not self.bench("reuse", "again", "--label", "lmcache-server", "--phase", "after_full_restart",
                          "--restart", "none", "--page-cache", cache, "--warmup-tokens", "1024", *common):
            self.fail("after_full_restart")
        # 4. faults, with what budget is left (after every measurement, so they disturb none)
        if k["REUSE_FAULTS"] == "1":
            self.reports.append("faults")
            self.kill_lmcache()
            self.sigterm_inflight()
        self.stop_appliance()

    # --- options: LMCache 0.5.6's new knobs, one appliance per configuration -----------------------------
    def record_metrics(self, when: str) -> None:
        """The LMCache server's metric names, the dashboard's data. LMCache's `server` serves its metrics on its
        HTTP port (it never starts the --prometheus-port exporter)."""
        lmc_port, app_port = 8080 + int(self.gpu or 0), 9464 + int(self.gpu or 0)
        obs = ROOT / "scripts" / "observability"
        app_url = f"http://127.0.0.1:{app_port}"
        with_site = self.app_env(clean=False, pythonpath=self.site_path())
        if when == "before":
            if self.run([self.py, str(obs / "check_dashboard.py"), "before", "--vllm", self.base, "--appliance",
                         app_url, "--out", str(self.res / "dashboard-before.json")], with_site)[0]:
                self.fail("dashboard check (before)")
            return
        no_path = {n: v for n, v in self.app_env(clean=False).items() if n != "PYTHONPATH"}
        if self.run([self.py, str(obs / "record_lmcache_metrics.py"), "--url", f"http://127.0.0.1:{lmc_port}/metrics",
                     "--out", str(self.res / "lmcache-metrics-server.txt")], no_path)[0]:
            self.fail("record the LMCache server's metrics")
        if self.run([self.py, str(obs / "record_lmcache_metrics.py"), "--url", f"{app_url}/metrics",
                     "--out", str(self.res / "lmcache-metrics-appliance.txt")], no_path)[0]:
            self.fail("record the metrics on the appliance's endpoint")
        self.fetch(f"http://127.0.0.1:{lmc_port}/metrics", self.logs / self.label / "lmcache-metrics.raw.txt")
        self.fetch(f"{app_url}/metrics", self.logs / self.label / "appliance-metrics.raw.txt")
        rc, text = self.run([self.py, str(obs / "check_dashboard.py"), "after", "--vllm", self.base, "--appliance",
                             app_url, "--before", str(self.res / "dashboard-before.json"), "--out",
                             str(self.res / "dashboard.json")], with_site)
        if not self.dry:
            (self.res / "dashboard.md").write_text(text)
        if rc:
            self.fail("dashboard check: a panel names a metric the endpoints do not expose")

    def prewarm_status(self, label: str, when: str) -> None:
        """The LMCache server's pre-warm state (its /status) and log lines."""
        text = self.fetch(f"http://127.0.0.1:{8080 + int(self.gpu or 0)}/status")
        st = None
        try:
            st = json.dumps(json.loads(text).get("appliance_prewarm")) if text else None
        except (ValueError, AttributeError):
            pass
        self.say(f"{label}: pre-warm {when}: {st or 'no status'}")
        for line in self.grep_log(Path(f"/tmp/run-{self.inst}{label}/lmcache.log"), r"appliance prewarm: .*"):
            self.echo(f"    {line[:300]}")

    def restart_cold(self, label: str, *words: str) -> None:
        """(options, REUSE_DROP_CACHES=1) after the warm restart, once more with the page cache dropped; rows
        marked page_cache=cold, reported next to the warm ones (reuse report)."""
        k = self.k
        self.stop_appliance()
        if not self.drop_page_cache():
            self.fail(f"{label}: page cache not dropped: the cold restart skipped")
            return
        if not self.need(110, f"{label}: restarted with the page cache dropped"):
            return
        if not self.start_appliance(f"{label}-restarted-cold", *words):
            return
        if not self.bench("reuse", "again", "--label", label, "--phase", "after_full_restart", "--restart", "none",
                          "--warmup-tokens", "1024", "--restored-rounds", k["OPT_ROUNDS"], "--page-cache", "cold",
                          "--base-url", self.base, "--model", k["SERVED"], "--tokens", k["OPT_TOKENS"],
                          "--seeds", k["REUSE_SEEDS"], "--results", str(self.res)):
            self.fail(f"{label}: after_full_restart, page cache dropped")

    def suite_options(self) -> None:
        k = self.k
        self.reports += ["startup", "reuse"]
        common = ["--base-url", self.base, "--model", k["SERVED"], "--tokens", k["OPT_TOKENS"], "--seeds",
                  k["REUSE_SEEDS"], "--results", str(self.res)]
        self.bandwidth()
        for label in k["OPT_CONFIGS"].split():
            words = opt_words(label, k["CPU_TIER_GIB"], k["KVDISK"], k["DISK_TIER_GIB"])
            if words is None:
                self.fail(f"unknown options configuration {label}")
                continue
            if not self.need(120, f"options {label}"):
                continue
            self.rm(f"{k['KVDISK']}-{label}")
            words = [*words, f"VLLM_MAX_MODEL_LEN={k['REUSE_MAX_MODEL_LEN']}"]
            if not self.start_appliance(label, *words):
                continue
            if label == k["OPT_RECORD"]:
                self.record_metrics("before")
            if k["OPT_MODE"] == "churn":
                churn = k["OPT_CHURN"].split()
                if not self.bench("reuse", "churn", "--label", label, "--base-url", self.base, "--model",
                                  k["SERVED"], "--tokens", churn[0], "--prompts", churn[1], "--passes", churn[2],
                                  "--warmup-tokens", "1024", "--results", str(self.res)):
                    self.fail(f"churn {label}")
                self.fetch(f"http://127.0.0.1:{8080 + int(self.gpu or 0)}/metrics",
                           self.logs / label / "lmcache-metrics.raw.txt")
                if label == k["OPT_RECORD"]:
                    self.record_metrics("after")
                self.stop_appliance()
                self.rm(f"{k['KVDISK']}-{label}")
                continue
            if not self.bench("reuse", "run", "--label", label, "--hit-after-settle", *common):
                self.fail(f"reuse run {label}")
            if label == k["OPT_RECORD"]:
                self.record_metrics("after")
            if label in k["OPT_RESTART"].split():
                self.stop_appliance()
                if self.need(110, f"{label}: the appliance restarted (disk tier, {k['OPT_ROUNDS']} rounds)") \
                        and self.start_appliance(f"{label}-restarted", *words):
                    self.prewarm_status(f"{label}-restarted", "at ready (before the 1st request)")
                    if not self.bench("reuse", "again", "--label", label, "--phase", "after_full_restart",
                                      "--restart", "none", "--warmup-tokens", "1024", "--restored-rounds",
                                      k["OPT_ROUNDS"], "--page-cache", "warm", *common):
                        self.fail(f"{label}: after_full_restart")
                    self.prewarm_status(f"{label}-restarted", "after the rounds")
                if k["REUSE_DROP_CACHES"] == "1":
                    self.restart_cold(label, *words)
            self.stop_appliance()
            self.rm(f"{k['KVDISK']}-{label}")  # several configurations per call: keep the disk free

    # --- multiround -----------------------------------------------------------------------------------------
    def suite_multiround(self) -> None:
        k = self.k
        self.reports += ["startup", "multiround"]
        gpu = ([f"VLLM_GPU_MEMORY_UTILIZATION={k['MR_GPU_UTIL']}"] if k["MR_GPU_UTIL"]
               else [f"VLLM_KV_CACHE_MEMORY_BYTES={k['MR_KV_BYTES']}"])
        args = ["--base-url", self.base, "--model", k["SERVED"], "--results", str(self.res), "--max-seconds",
                k["MR_MAX_SECONDS"], "--max-model-len", k["MR_MAX_MODEL_LEN"], *k["MR_ARGS"].split()]
        self.bandwidth()
        if k["MR_REUSE_TOKENS"]:
            self.reports.append("reuse")
        for label in k["MR_CONFIGS"].split():
            backend = mr_backend(label, k["CPU_TIER_GIB"])
            if not backend:
                self.fail(f"unknown multiround configuration {label}")
                continue
            if not self.need(int(k["MR_MAX_SECONDS"]) + 90, f"multiround {label}"):
                continue
            if not self.start_appliance(label, *backend, *gpu, f"VLLM_MAX_MODEL_LEN={k['MR_MAX_MODEL_LEN']}"):
                continue
            kv = self.kv_tokens(label)
            if not self.bench("multiround", "run", "--label", label, *args, *(["--gpu-kv-tokens", kv] if kv else [])):
                self.fail(f"multiround {label}")
            if k["MR_REUSE_TOKENS"] and self.need(40, f"reuse {label}"):
                # the same appliance, its tiers holding the conversations: what one long prompt costs cold, on a
                # GPU hit and after a GPU reset (the offload tier, or a recompute without one)
                if not self.bench("reuse", "run", "--label", label, "--base-url", self.base, "--model", k["SERVED"],
                                  "--tokens", k["MR_REUSE_TOKENS"], "--seeds", "3", "--warmup-tokens", "1024",
                                  "--results", str(self.res)):
                    self.fail(f"reuse {label}")
            self.stop_appliance()

    # --- tp ---------------------------------------------------------------------------------------------------
    def suite_tp(self) -> None:
        k = self.k
        self.reports += ["startup", "reuse"]
        tp = ["VLLM_TENSOR_PARALLEL_SIZE=2", "VLLM_MAX_MODEL_LEN=32768"]
        one = ["--base-url", self.base, "--model", k["SERVED"], "--tokens", "16000", "--seeds", "3",
               "--results", str(self.res)]
        kvdisk = k["KVDISK"]
        self.rm(kvdisk, f"{kvdisk}-inproc")
        self.bandwidth()
        # 1. server mode: one LMCache server holds the tiers for both workers; the sizes are totals
        lmc = ["VLLM_KV_OFFLOADING_BACKEND=lmcache", f"VLLM_KV_OFFLOADING_SIZE={k['TP_CPU_GIB']}",
               f"LMCACHE_LOCAL_DISK={kvdisk}", f"LMCACHE_MAX_LOCAL_DISK_SIZE={k['TP_DISK_GIB']}", *tp]
        if self.need(150, "tp2 lmcache-server") and self.start_appliance("tp2-lmcache-server", *lmc):
            self.sizes()
            if not self.bench("reuse", "run", "--label", "tp2-lmcache-server", *one):
                self.fail("reuse tp2-lmcache-server")
            self.footprint()
            if self.need(200, "tp2: vLLM killed"):
                if not self.bench("reuse", "again", "--label", "tp2-lmcache-server", "--phase", "after_vllm_restart",
                                  "--restart", "kill-vllm", "--run-dir", f"/tmp/run-{self.inst}tp2-lmcache-server",
                                  "--warmup-tokens", "1024", "--ready-timeout", "240", *one):
                    self.fail("tp2: after_vllm_restart")
            self.stop_appliance()
            if not self.dry and os.path.isdir(kvdisk):
                for entry in sorted(os.listdir(kvdisk)):
                    self.echo(f"    disk tier directory: {entry}")
            self.du(kvdisk, "    disk tier after the stop: ")
            if self.need(140, "tp2: the appliance restarted (disk tier)") \
                    and self.start_appliance("tp2-lmcache-server-restarted", *lmc):
                if not self.bench("reuse", "again", "--label", "tp2-lmcache-server", "--phase", "after_full_restart",
                                  "--restart", "none", "--warmup-tokens", "1024", *one):
                    self.fail("tp2: after_full_restart")
                self.stop_appliance()
        # 2. in-process mode: LMCache inside each worker, each with its share (total / TP) of the CPU and disk tiers
        if self.need(140, "tp2 lmcache-inproc") and self.start_appliance(
                "tp2-lmcache-inproc", "VLLM_KV_OFFLOADING_BACKEND=lmcache",
                f"VLLM_KV_OFFLOADING_SIZE={k['TP_CPU_GIB']}",
                "LMCACHE_MODE=in-process", f"LMCACHE_LOCAL_DISK={kvdisk}-inproc",
                f"LMCACHE_MAX_LOCAL_DISK_SIZE={k['TP_DISK_GIB']}", *tp):
            self.sizes()
            if not self.bench("reuse", "run", "--label", "tp2-lmcache-inproc", *one):
                self.fail("reuse tp2-lmcache-inproc")
            self.footprint()
            self.stop_appliance()
            if not self.dry and os.path.isdir(f"{kvdisk}-inproc"):
                for entry in sorted(os.listdir(f"{kvdisk}-inproc")):
                    self.du(f"{kvdisk}-inproc/{entry}", "    in-process disk tier: ")
        # 3. the no-offload baseline at TP 2 (recompute time, and the workers' RSS without a CPU tier)
        if self.need(130, "tp2 no-offload") and self.start_appliance("no-offload", "VLLM_KV_OFFLOADING_BACKEND=none",
                                                                      *tp):
            if not self.bench("reuse", "run", "--label", "no-offload", *one):
                self.fail("reuse tp2 no-offload")
            self.footprint()
            self.stop_appliance()

    # --- cluster (issue 15): two replicas on a 2-GPU host -------------------------------------------------
    # A (GPU 0) and B (GPU 1): appliances, each with its own LMCache server, sharing a Redis store started here
    # (the carried binary, $ROOT/.gpu-cluster). C: a bare `vllm serve` on A's GPU that uses A's LMCache server
    # (the one-server shape, with A's --kv-transfer-config from A's plan.json); it starts once A's LMCache server
    # answers. Steps, in order of priority, each guarded by the budget: (b) the store: a prompt computed by A,
    # served by B, at several lengths, and the same store read by a plain client; (a) the shared server: a prompt
    # computed by A, served by C; the router (vllm-router) in front of A and B: a multi-user workload, 2 replicas
    # cache_aware and round_robin, 1 replica; the store SIGKILLed and restarted under light load. Knobs: CL_*.
    def redis(self, *args: str) -> list[str]:
        return ["bash", str(self.cl_kit / "redis" / "run.sh"), *args]

    def redis_out(self, *args: str) -> str:
        if self.dry:
            self.show(self.redis(*args))
            return ""
        return subprocess.run(self.redis(*args), capture_output=True, text=True).stdout

    def cl_install(self) -> bool:
        """Idempotent: the router wheel into CL_SITE; the carried redis must run here."""
        k = self.k
        if not self.dry and not (self.cl_kit / "redis" / "run.sh").is_file():
            self.fail(f"cluster: {self.cl_kit}/redis/run.sh missing (carry .gpu-cluster)")
            return False
        if self.run(self.redis("redis-server", "--version"), prefix="    ")[0]:
            self.fail("cluster: the carried redis-server does not run")
            return False
        site = Path(k["CL_SITE"])
        if not (site / "vllm_router").is_dir():  # pip, else the wheel unpacked (all it holds is importable files)
            wheels = sorted(self.cl_kit.glob("vllm_router-*.whl")) or [self.cl_kit / "vllm_router-*.whl"]
            if self.run([self.py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(site),
                         *map(str, wheels)])[0] \
                    and self.run([self.py, "-m", "zipfile", "-e", str(wheels[0]), str(site)])[0]:
                self.fail("cluster: could not install the router wheel")
                return False
        if self.run([self.py, "-m", "bench.cluster", "router", "--", "--help"],
                    self.app_env(clean=False, pythonpath=k["CL_SITE"]), quiet=True)[0]:
            self.fail("cluster: vllm-router does not start")
            return False
        info = next(iter(site.glob("vllm_router-*.dist-info")), None)
        version = info.name[:-len(".dist-info")].split("-")[1] if info else "*"
        self.echo(f"    vllm-router {version} in {site}")
        return True

    def cl_redis_cmd(self) -> str:
        """The store: no persistence (a restart is an empty store), LRU under maxmemory."""
        k = self.k
        return (f"bash {self.cl_kit}/redis/run.sh redis-server --port {k['CL_REDIS_PORT']} --bind 127.0.0.1 "
                f"--protected-mode no --save '' --appendonly no --maxmemory {k['CL_REDIS_MAXMEMORY']} "
                f"--maxmemory-policy allkeys-lru --daemonize yes --pidfile {self.out}/redis.pid "
                f"--logfile {self.logs}/redis.log")

    def cl_redis_up(self) -> bool:
        """Start the store unless it answers (then empty it: no object of an earlier call may be found)."""
        port = self.k["CL_REDIS_PORT"]
        if "PONG" in self.redis_out("redis-cli", "-p", port, "ping"):
            self.echo(f"    a store already answers on port {port}: FLUSHALL")
            self.redis_out("redis-cli", "-p", port, "flushall")
            return True
        self.rm(self.out / "redis.pid")
        if self.run(["bash", "-c", self.cl_redis_cmd()])[0]:
            self.fail("cluster: redis-server did not start")
            return False
        for _ in range(50):
            if self.dry or "PONG" in self.redis_out("redis-cli", "-p", port, "ping"):
                return True
            time.sleep(0.1)
        self.fail("cluster: redis-server does not answer")
        return False

    def cl_start(self, name: str, gpus: str, n: int, *words: str) -> None:
        """An appliance in the background, ports moved by n."""
        port, run, shift = int(self.k["CL_PORT"]) + n, Path(f"/tmp/run-cl-{name}"), self.cl_port_shift
        self.rm(run)
        lines = [*self.appliance_env(port), f"APPLIANCE_RUN_DIR={run}",
                 f"APPLIANCE_LMCACHE_PORT={5555 + 10 * n + shift}", f"APPLIANCE_LMCACHE_HTTP_PORT={8080 + n + shift}",
                 f"APPLIANCE_LMCACHE_METRICS_PORT={9090 + n + shift}", f"APPLIANCE_METRICS_PORT={9464 + n + shift}",
                 *words, *self.k["EXTRA_ENV"].split()]
        envfile = self.logs / name / "appliance.env"
        self.write_env(envfile, lines)
        shown = [x for x in lines if re.match(r"^(VLLM_KV|LMCACHE|VLLM_GPU)", x)]
        self.say(f"start {name} on GPU {gpus}, port {port}: " + "".join(f"{x} " for x in shown))
        (self.logs / name / "started").write_text(f"{time.time():.9f}\n")
        env = self.app_env(lines, pythonpath=self.site_path(), CUDA_VISIBLE_DEVICES=gpus)
        self.cl[name] = self.spawn([self.py, "-m", "entrypoint", "serve"], env, self.logs / name / "serve.log", name,
                                   show_env=[f"CUDA_VISIBLE_DEVICES={gpus}", f"(env: {envfile})"])
        if not self.dry:
            with open(self.pids_file, "a") as f:
                f.write(f"{self.cl[name].pid}\n")

    def cl_wait(self, name: str, n: int, max_s: int | None = None) -> bool:
        """Until ready (startup row), else the serve log's tail."""
        port = int(self.k["CL_PORT"]) + n
        budget = max(min(max_s or int(self.k["START_TIMEOUT"]), self.left()), 10)
        run = Path(f"/tmp/run-cl-{name}")
        job = self.cl.get(name)
        started = (self.logs / name / "started").read_text().strip() if (self.logs / name / "started").is_file() \
            else f"{time.time():.9f}"
        if self.bench("startup", "wait", "--label", f"cl-{name}", "--results", str(self.res), "--base-url",
                      f"http://127.0.0.1:{port}", "--model", self.k["SERVED"], "--started-at", started,
                      *(["--pid", str(job.pid)] if job else []),
                      *(["--run-dir", str(run)] if run.is_dir() or self.dry else []), "--timeout", str(budget)):
            return True
        self.fail(f"cluster: {name} did not get ready")
        for f in ("serve.log", "vllm.log"):
            self.tail(self.logs / name / f, 30, f"    {name}: ")
        return False

    def cl_wait_async(self, name: str, n: int) -> threading.Thread:
        t = threading.Thread(target=lambda: setattr(t, "ok", self.cl_wait(name, n)), daemon=True)
        t.ok = False
        t.start()
        if self.dry:
            t.join()
        return t

    def killpg(self, job: Job, seconds: float) -> None:
        if self.dry or job.proc is None:
            self.echo(f"+ kill -TERM -- -{job.pid}")
            return
        try:
            os.killpg(job.pid, signal.SIGTERM)
        except OSError:
            pass
        for _ in range(int(seconds * 2)):
            if not job.alive():
                break
            time.sleep(0.5)
        try:
            os.killpg(job.pid, signal.SIGKILL)
        except OSError:
            pass

    def cl_stop(self, name: str) -> None:
        """SIGTERM to serve (or C's, the router's process group), keep the logs."""
        job = self.cl.get(name)
        if job is None:
            return
        if name in ("c", "router"):
            self.killpg(job, 30)
        else:
            if not self.bench("startup", "stop", "--pid", str(job.pid), "--label", f"cl-{name}", "--results",
                              str(self.res), "--timeout", "60"):
                self.fail(f"cluster: {name}: stop not clean")
            self.copy_logs(Path(f"/tmp/run-cl-{name}"), self.logs / name, "*.log", "supervisord.conf", "plan.json")
        job.wait()
        self.cl.pop(name, None)

    def cl_stop_parallel(self, names: list[str]) -> None:
        threads = [threading.Thread(target=self.cl_stop, args=(n,)) for n in names if n in self.cl]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def cl_cleanup(self) -> None:
        """Everything the cluster suite started (also on an early exit, before the tables)."""
        for name in ("router", "c"):
            self.cl_stop(name)
        self.cl_stop_parallel(["a", "b"])
        self.cl.clear()
        pidfile = self.out / "redis.pid"
        if pidfile.is_file():
            try:
                os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)
            except (OSError, ValueError):
                pass
            pidfile.unlink(missing_ok=True)

    def cl_start_c(self) -> bool:
        """C: `vllm serve` with A's plan (model, flags, A's --kv-transfer-config), its own port and memory."""
        k = self.k
        plan = Path("/tmp/run-cl-a/plan.json")
        health = f"http://127.0.0.1:{8080 + self.cl_port_shift}/healthcheck"
        for _ in range(0 if self.dry else 120):  # A's LMCache server (its HTTP port) must answer before C connects
            if plan.is_file() and self.url_ok(health):
                break
            if "a" not in self.cl or not self.cl["a"].alive():
                self.fail("cluster: A gone before C could start")
                return False
            time.sleep(0.5)
        if self.dry:
            argv, envs = ["serve", "(A's vLLM argv, from /tmp/run-cl-a/plan.json)"], {}
        else:
            if not plan.is_file():
                self.fail(f"cluster: no {plan}: C not started")
                return False
            p = json.loads(plan.read_text())
            argv = plan_argv(p, [("--port", str(int(k["CL_PORT"]) + 2)), ("--host", "127.0.0.1"),
                                 ("--kv-cache-memory-bytes", k["CL_KV_BYTES"]),
                                 ("--gpu-memory-utilization", k["CL_C_UTIL"])])
            envs = p["vllm"]["env"]
            if len(argv) <= 2:
                self.fail(f"cluster: no vLLM argv in {plan}")
                return False
        self.say(f"start c on GPU {k['CL_C_GPU']} (A's LMCache server): vllm {' '.join(argv)}")
        (self.logs / "c").mkdir(parents=True, exist_ok=True)
        (self.logs / "c" / "started").write_text(f"{time.time():.9f}\n")
        env = self.app_env([f"{n}={v}" for n, v in envs.items()], pythonpath=self.site_path(),
                           VLLM_SERVER_DEV_MODE="1", VLLM_USE_FLASHINFER_SAMPLER="0", HF_HUB_OFFLINE="1",
                           CUDA_VISIBLE_DEVICES=k["CL_C_GPU"])
        self.cl["c"] = self.spawn([*self.vllm_cmd.split(), *argv], env, self.logs / "c" / "vllm.log", "c",
                                  new_session=True, show_env=[f"CUDA_VISIBLE_DEVICES={k['CL_C_GPU']}"])
        return True

    def router_port(self) -> int:
        return int(self.k["CL_PORT"]) + 100

    def cl_router(self, policy: str, *urls: str) -> bool:
        """vllm-router on CL_PORT+100 (restarted for each configuration)."""
        self.cl_stop("router")
        port = int(self.k["CL_PORT"])
        log = self.logs / "router" / f"router-{policy}-{len(urls)}.log"
        self.cl["router"] = self.spawn(
            [self.py, "-m", "bench.cluster", "router", "--", "--host", "127.0.0.1", "--port", str(self.router_port()),
             "--worker-urls", *urls, "--policy", policy, "--worker-startup-check-interval", "1",
             "--health-check-interval-secs", "5", "--prometheus-host", "127.0.0.1",
             "--prometheus-port", str(29000 + port % 1000 + 100), "--log-level", "warning"],
            self.app_env(clean=False, pythonpath=self.k["CL_SITE"]), log, "router", new_session=True, append=True,
            show_env=[f"PYTHONPATH={self.k['CL_SITE']}"])
        return self.cl_router_ready("/readiness", log, f"cluster: the router ({policy}, {len(urls)} workers)")

    def cl_router_ready(self, path: str, log: Path, what: str) -> bool:
        """Until CL_PORT+100 answers PATH, else the log's tail and stop."""
        if self.dry:
            return True
        for _ in range(60):
            if self.url_ok(f"http://127.0.0.1:{self.router_port()}{path}"):
                return True
            if not self.cl["router"].alive():
                break
            time.sleep(0.5)
        self.fail(f"{what} did not get ready")
        self.tail(log, 20, "    router: ")
        self.cl_stop("router")
        return False

    def cl_product_router(self, coord: str, *replicas: str) -> bool:
        """The appliance's coordinator router on CL_PORT+100 (`python -m entrypoint router`, docs/SCALE-OUT.md),
        in place of vllm-router; replicas: URL=LMCACHE_HTTP_PORT."""
        self.cl_stop("router")
        words = [f"APPLIANCE_ROUTER_COORDINATOR_URL={coord}", f"APPLIANCE_ROUTER_REPLICAS={' '.join(replicas)}",
                 f"APPLIANCE_ROUTER_PORT={self.router_port()}", "APPLIANCE_ROUTER_HEALTH_INTERVAL=2"]
        log = self.logs / "router" / "router-product.log"
        self.cl["router"] = self.spawn([self.py, "-m", "entrypoint", "router"],
                                       self.app_env(words, pythonpath=self.site_path()), log, "router",
                                       new_session=True, append=True, show_env=words)
        return self.cl_router_ready("/health", log, "coord: the appliance's router")

    def cl_object_bytes(self) -> int:
        """One LMCache object in the store (STRLEN of a key), else one chunk of 256 tokens."""
        port = self.k["CL_REDIS_PORT"]
        key = self.redis_out("redis-cli", "-p", port, "--raw", "randomkey").strip()
        if key:
            size = self.redis_out("redis-cli", "-p", port, "--raw", "strlen", key).strip()
            if size.isdigit() and int(size) > 0:
                return int(size)
        rc, out = self.run([self.py, "-m", "bench.common", "kv-bytes", "--model-config", self.k["MODEL"],
                            "--tokens", "1"], self.app_env(clean=False, pythonpath=self.site_path()), quiet=True)
        per = next((line.split()[4] for line in out.splitlines() if "per token:" in line and len(line.split()) > 4),
                   "131072")
        return 256 * int(per)

    def sizes_of(self, name: str) -> None:
        """What an LMCache server was given (its rendered plan), e.g. its --l2-adapter for the store."""
        try:
            argv = json.loads(Path(f"/tmp/run-cl-{name}/plan.json").read_text())["lmcache"]["argv"]
        except (OSError, ValueError, KeyError, TypeError):
            return
        self.echo(f"    {name} lmcache: " + " ".join(f"{f} {argv[i + 1]}" for i, f in enumerate(argv)
                                                      if f in ("--l1-size-gb", "--l2-adapter")))

    def suite_cluster(self) -> None:
        k = self.k
        self.reports += ["startup", "cluster"]
        self.cleanups.append(self.cl_cleanup)  # the replicas, C, the router and the store go before the tables
        p = int(k["CL_PORT"])
        A, B, C = (f"http://127.0.0.1:{p + i}" for i in range(3))
        R, store = f"http://127.0.0.1:{p + 100}", f"127.0.0.1:{k['CL_REDIS_PORT']}"
        a_gpus = f"0,{k['CL_C_GPU']}" if k["CL_C_GPU"] != "0" else "0"  # A's server maps C's KV (CUDA IPC)
        ok_a = ok_b = ok_c = True
        lmc = ["VLLM_KV_OFFLOADING_BACKEND=lmcache", f"VLLM_KV_OFFLOADING_SIZE={k['CL_CPU_GIB']}",
               f"VLLM_MAX_MODEL_LEN={k['CL_MAX_MODEL_LEN']}", f"VLLM_KV_CACHE_MEMORY_BYTES={k['CL_KV_BYTES']}",
               f"VLLM_GPU_MEMORY_UTILIZATION={k['CL_UTIL']}", f"LMCACHE_SHARED_URL=redis://{store}"]
        if not self.cl_install():
            return
        self.bench("common", "kv-bytes", "--model-config", k["MODEL"], "--tokens", k["CL_TOKENS"], prefix="    ")
        if not self.cl_redis_up() or not self.need(150, "cluster: start A and B"):
            return
        # No disk tier: B's hit of A's prompt can only come from the store (or a recompute).
        self.cl_start("a", a_gpus, 0, *lmc)
        self.cl_start("b", "1", 1, *lmc)
        ok_c = self.cl_start_c()
        wa, wb = self.cl_wait_async("a", 0), self.cl_wait_async("b", 1)
        wc = self.cl_wait_async("c", 2) if ok_c else None  # in the background: its startup row is its own
        wa.join()
        if not wa.ok:
            ok_a = False
            self.fail("cluster: A not ready: (b), (a), the router and the outage skipped")
        wb.join()
        if not wb.ok:
            ok_b = False
            self.fail("cluster: B not ready: (b), the router and the outage skipped")
        if ok_a:
            self.sizes_of("a")
        # (b) each replica its own LMCache server, one store: A computes, B finds it in the store
        if ok_a and ok_b and self.need(90, "cluster (b): store hit vs recompute"):
            if not self.bench("cluster", "pair", "--label", "store", "--writer", A, "--reader", B, "--redis", store,
                              "--model", k["SERVED"], "--tokens", k["CL_TOKENS"], "--seeds", k["CL_SEEDS"],
                              "--results", str(self.res)):
                self.fail("cluster (b): pair")
            for line in self.redis_out("redis-cli", "-p", k["CL_REDIS_PORT"], "info", "memory").splitlines():
                if line.startswith("used_memory_human"):
                    self.echo(f"    store: {line.strip()}")
        if self.need(25, "cluster (b): plain-client read of the store"):
            if not self.bench("cluster", "plain-read", "--redis", store, "--object-bytes", str(self.cl_object_bytes()),
                              "--objects", k["CL_PLAIN_OBJECTS"], "--parallel", "8", "--results", str(self.res),
                              "--redis-benchmark", f"bash {self.cl_kit}/redis/run.sh redis-benchmark"):
                self.fail("cluster (b): plain read")
        # (a) one LMCache server for two vLLMs: A computes, C finds it in A's server's CPU tier
        if ok_a and ok_c and self.need(60, "cluster (a): shared LMCache server"):
            wc.join(120)
            if wc.is_alive():
                ok_c = False
                self.fail("cluster (a): C not ready in time")
            elif not wc.ok:
                ok_c = False
                self.fail("cluster (a): C did not get ready")
            if ok_c:
                if not self.bench("cluster", "pair", "--label", "shared-server", "--writer", A, "--reader", C,
                                  "--model", k["SERVED"], "--tokens", k["CL_SHARED_TOKENS"], "--seeds", k["CL_SEEDS"],
                                  "--settle", "1.5", "--results", str(self.res)):
                    self.fail("cluster (a): pair")
                pat = r"(?im)^.*(?:register|worker.*(?:added|connected)|instance).*$"
                for line in self.grep_log(Path("/tmp/run-cl-a/lmcache.log"), pat)[-4:]:
                    self.echo(f"    lmcache(a): {line[:200]}")
        self.cl_stop("c")  # frees GPU 0 memory; the router runs do not use it
        # the router in front: 2 replicas cache_aware and round_robin, then 1 replica
        if ok_a and ok_b:
            for label, pol, workers in (("2x-cache_aware", "cache_aware", [A, B]),
                                        ("2x-round_robin", "round_robin", [A, B]), ("1x", "round_robin", [A])):
                if not self.need(int(k["CL_ROUTE_S"]) + 20, f"cluster router {label}"):
                    continue
                if not self.cl_router(pol, *workers):
                    continue
                if not self.bench("cluster", "route", "--label", label, "--policy", pol, "--base-url", R,
                                  "--replicas", ",".join(workers), "--model", k["SERVED"], "--max-seconds",
                                  k["CL_ROUTE_S"], "--request-timeout", "60", "--salt",
                                  f"route-{label}-{int(time.time())}", "--results", str(self.res),
                                  *k["CL_ROUTE_ARGS"].split()):
                    self.fail(f"cluster router {label}")
            self.cl_stop("router")
        # the store SIGKILLed and restarted under light load: B keeps serving, B's store hits come back
        if ok_a and ok_b and self.need(50, "cluster: the store killed and restarted"):
            seconds = 40 if self.left() > 70 else self.left() - 30
            if not self.bench("cluster", "outage", "--label", "store-outage", "--writer", A, "--reader", B,
                              "--redis", store, "--model", k["SERVED"], "--redis-pidfile", str(self.out / "redis.pid"),
                              "--restart-cmd", self.cl_redis_cmd(), "--max-seconds", str(seconds),
                              "--results", str(self.res), *k["CL_OUTAGE_ARGS"].split()):
                self.fail("cluster: store outage")
        self.cleanups.remove(self.cl_cleanup)
        self.cl_cleanup()

    # --- coord (issue 15): placement by LMCache's coordinator, two replicas on ONE GPU ---------------------
    # A and B: appliances on the same GPU (CO_UTIL each, a capped GPU KV cache), each with its own LMCache server
    # and no store: the many-hosts shape (each host its own server) on one host. Both servers register with one
    # `lmcache coordinator` started here and report their cache events to it (LMCache's own LMCACHE_COORDINATOR_*
    # variables; the appliance passes them to its LMCache server). The `cluster` suite's multi-user workload, four
    # ways: routed in the bench client by the coordinator (cluster route --coordinator), the same placement in
    # the appliance's own router (`python -m entrypoint router`, the product), vllm-router cache_aware, round
    # robin. ~280 s. Needs the router wheel in CL_KIT (cl_install). Knobs: CO_*.
    def co_coordinator_stop(self) -> None:
        job = self.cl.get("coord")
        if job is None:
            return
        self.killpg(job, 10)
        job.wait()
        self.cl.pop("coord", None)

    def co_cleanup(self) -> None:
        self.cl_stop("router")
        self.cl_stop_parallel(["coa", "cob"])
        self.co_coordinator_stop()

    def suite_coord(self) -> None:
        k = self.k
        self.reports += ["startup", "cluster"]
        self.cleanups.append(self.co_cleanup)
        saved_shift, self.cl_port_shift = self.cl_port_shift, int(k["CO_PORT_SHIFT"])  # A, B: 8080+40, 8081+40 ...
        try:
            self._coord()
        finally:
            self.cl_port_shift = saved_shift

    def _coord(self) -> None:
        k = self.k
        p, shift = int(k["CL_PORT"]), int(k["CO_PORT_SHIFT"])
        A, B, R = f"http://127.0.0.1:{p}", f"http://127.0.0.1:{p + 1}", f"http://127.0.0.1:{p + 100}"
        coord = f"http://127.0.0.1:{k['CO_COORD_PORT']}"
        gpu = self.gpu or "0"
        if not self.cl_install() or not self.need(200, "coord: two replicas, three routings"):
            return
        self.cl["coord"] = self.spawn(
            [*self.lmcache_cmd.split(), "coordinator", "--host", "127.0.0.1", "--port", k["CO_COORD_PORT"],
             "--disable-metrics"], self.app_env(clean=False, pythonpath=k["SITE"], LMCACHE_DISABLE_BANNER="1"),
            self.logs / "coord" / "coordinator.log", "coord", new_session=True,
            show_env=[f"PYTHONPATH={k['SITE']}", "LMCACHE_DISABLE_BANNER=1"])
        co = ["VLLM_KV_OFFLOADING_BACKEND=lmcache", f"VLLM_KV_OFFLOADING_SIZE={k['CO_CPU_GIB']}",
              f"VLLM_MAX_MODEL_LEN={k['CO_MAX_MODEL_LEN']}", f"VLLM_KV_CACHE_MEMORY_BYTES={k['CO_KV_BYTES']}",
              f"VLLM_GPU_MEMORY_UTILIZATION={k['CO_UTIL']}", f"LMCACHE_COORDINATOR_URL={coord}",
              "LMCACHE_COORDINATOR_ADVERTISE_IP=127.0.0.1", "LMCACHE_COORDINATOR_EVENT_REPORTING=1",
              "LMCACHE_COORDINATOR_EVENT_FLUSH_INTERVAL=0.25"]
        self.cl_start("coa", gpu, 0, *co)
        self.cl_start("cob", gpu, 1, *co)
        wa, wb = self.cl_wait_async("coa", 0), self.cl_wait_async("cob", 1)
        wa.join()
        wb.join()
        if wa.ok and wb.ok:
            route = ["--model", k["SERVED"], "--max-seconds", k["CO_ROUTE_S"], "--request-timeout", "60"]
            for label, pol in (("coord-2x-coordinator", "coordinator"), ("coord-2x-router", "router"),
                               ("coord-2x-cache_aware", "cache_aware"), ("coord-2x-round_robin", "round_robin")):
                if not self.need(int(k["CO_ROUTE_S"]) + 15, f"coord {label}"):
                    continue
                salt = ["--salt", f"route-{label}-{int(time.time())}", "--results", str(self.res),
                        *k["CO_ROUTE_ARGS"].split()]
                if pol == "coordinator":
                    ok = self.bench("cluster", "route", "--label", label, "--policy", "coordinator", "--coordinator",
                                    coord, "--replicas", f"{A},{B}", "--lmcache-http-ports",
                                    f"{8080 + shift},{8081 + shift}", *route, *salt)
                elif pol == "router":  # the same placement, in the appliance's own router (the product)
                    if not self.cl_product_router(coord, f"{A}={8080 + shift}", f"{B}={8081 + shift}"):
                        continue
                    if not self.bench("cluster", "route", "--label", label, "--policy", "coordinator-router",
                                      "--base-url", R, "--replicas", f"{A},{B}", *route, *salt):
                        self.fail(f"coord {label}")
                    ok = True
                    for line in (self.fetch(f"{R}/metrics") or "").splitlines():
                        if re.match(r"^appliance_router_(fallbacks|prefix_placements|requests)", line):
                            self.echo(f"    router: {line}")
                    self.cl_stop("router")
                else:
                    if not self.cl_router(pol, A, B):
                        continue
                    if not self.bench("cluster", "route", "--label", label, "--policy", pol, "--base-url", R,
                                      "--replicas", f"{A},{B}", *route, *salt):
                        self.fail(f"coord {label}")
                    ok = True
                    self.cl_stop("router")
                if not ok:
                    self.fail(f"coord {label}")
            for path in ("/instances", "/directory/stats"):
                text = self.fetch(coord + path)
                try:
                    self.echo(f"    coordinator: {path} {json.dumps(json.loads(text))[:600]}")
                except (TypeError, ValueError) as e:
                    self.echo(f"    coordinator: {path}: {e}")
        self.cleanups.remove(self.co_cleanup)
        self.co_cleanup()

    # --- faults -----------------------------------------------------------------------------------------------
    def suite_faults(self) -> None:
        k = self.k
        self.reports += ["startup", "faults"]
        small = "/tmp/kvsmall"
        self.tmpfs(small, "2g", f"    2 GiB tmpfs at {small}",
                   f"    no tmpfs (mount not permitted): {small} is a plain directory, only the disk cap is exercised")
        if not self.need(150, "faults"):
            return
        # The cap fits the tmpfs (preflight insists); faults disk-fill then fills the tmpfs from outside.
        if not self.start_appliance("faults", "VLLM_KV_OFFLOADING_BACKEND=lmcache", "VLLM_KV_OFFLOADING_SIZE=4",
                                    f"LMCACHE_LOCAL_DISK={small}", "LMCACHE_MAX_LOCAL_DISK_SIZE=1.5",
                                    "VLLM_MAX_MODEL_LEN=32768"):
            return
        if not self.bench("faults", "disk-fill", "--base-url", self.base, "--model", k["SERVED"], "--results",
                          str(self.res), "--run-dir", f"/tmp/run-{self.inst}faults", "--disk", small):
            self.fail("fault: disk fill")
        # vLLM SIGKILLed: restart-to-ready (the launcher waits for the LMCache server to release the dead vLLM's
        # GPU memory), and an earlier prompt still served from the LMCache server's CPU tier afterwards
        one = ["--base-url", self.base, "--model", k["SERVED"], "--tokens", "16000", "--seeds", "1",
               "--results", str(self.res)]
        if self.need(120, "fault: kill vLLM"):
            if not self.bench("reuse", "run", "--label", "faults", *one):
                self.fail("reuse run faults")
            if not self.bench("reuse", "again", "--label", "faults", "--phase", "after_vllm_restart", "--restart",
                              "kill-vllm", "--run-dir", f"/tmp/run-{self.inst}faults", "--warmup-tokens", "1024",
                              "--ready-timeout", "200", *one):
                self.fail("fault: kill vLLM")
        self.kill_lmcache()
        self.sigterm_inflight()
        self.stop_appliance()

    # --- loadfaults (issue 14): the five faults under closed-loop load, one appliance start -------------------
    def suite_loadfaults(self) -> None:
        """LF_* knobs: clients, window, per-run seconds; a small CPU tier (full under this load: allocation
        failures counted) and a disk tier capped on a tmpfs (the disk-full fault fills the tmpfs from outside)."""
        k = self.k
        self.reports += ["startup", "loadfaults"]
        small, run, cap = "/tmp/kvsmall-lf", Path(f"/tmp/run-{self.inst}loadfaults"), k["LF_DISK_GIB"]
        self.tmpfs(small, k["LF_TMPFS"], None,
                   f"    no tmpfs (mount not permitted): {small} is a plain directory; disk-full fills its file system")
        if not self.need(240, "loadfaults"):
            return
        if not self.start_appliance("loadfaults", "VLLM_KV_OFFLOADING_BACKEND=lmcache",
                                    f"VLLM_KV_OFFLOADING_SIZE={k['LF_CPU_GIB']}", f"LMCACHE_LOCAL_DISK={small}",
                                    f"LMCACHE_MAX_LOCAL_DISK_SIZE={cap}", "VLLM_MAX_MODEL_LEN=16384",
                                    f"APPLIANCE_DISK_PRUNE_INTERVAL={k['LF_PRUNE_S']}",
                                    f"APPLIANCE_GAP_ANSWER={k['LF_GAP']}",
                                    f"APPLIANCE_FRONT_PROXY={k['LF_FRONT']}",
                                    f"LMCACHE_HEARTBEAT_INTERVAL={k['LF_HEARTBEAT']}"):
            return
        try:
            ns = json.loads((run / "plan.json").read_text())["lmcache"]["disk"]["path"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            ns = ""
            if not self.dry:
                self.echo(f"    no disk tier path in {run}/plan.json: {e}")
        lf = ["--base-url", self.base, "--model", k["SERVED"], "--results", str(self.res), "--run-dir", str(run),
              "--clients", k["LF_CLIENTS"], "--window", k["LF_WINDOW"], "--disk-dir", ns, "--disk-cap-gib", cap,
              "--metrics-url", f"http://127.0.0.1:{9464 + int(self.gpu or 0)}/metrics"]
        runs = (k["LF_RUNS"] or "lmcache-kill disk-full vllm-kill sigterm").split()

        def lf_run(label, fault, at, duration, *more) -> bool:
            if label not in runs:
                return True
            if not self.need(int(duration) + 30, f"loadfaults {label}"):
                return False
            if not self.bench("loadfaults", "run", "--label", label, "--fault", fault, "--fault-at", str(at),
                              "--duration", str(duration), *lf, *more):
                self.fail(f"loadfaults {label}")
            if not self.bench("-c", "import sys; from bench import common; "
                              "common.wait_ready(sys.argv[1], sys.argv[2], timeout=150)", self.base, k["SERVED"]):
                self.fail(f"loadfaults {label}: not ready again within 150 s")
            return True
        # 1. the LMCache server SIGKILLed: in-flight failures only, none after 5 s, no vLLM restart (target 1);
        #    the CPU tier is full the whole time (allocation failures per window), the disk tier at its cap (target 3)
        lf_run("lmcache-kill", "kill-lmcache", 20, k["LF_SECONDS"])
        # 2. the disk tier's file system filled from outside: every request must still succeed
        lf_run("disk-full", f"fill-disk:{small}", 15, k["LF_DISK_SECONDS"], "--leave-mib", "64")
        # 3. vLLM SIGKILLed: 503 + Retry-After from the gap program until the new vLLM serves (target 2)
        lf_run("vllm-kill", "kill-vllm", 15, k["LF_VLLM_SECONDS"])
        # 4. SIGTERM to serve under load: in-flight requests complete, new ones get 503 / refused; ends the appliance
        if "sigterm" in runs and self.need(60, "loadfaults sigterm"):
            if not self.bench("loadfaults", "run", "--label", "sigterm", "--fault", "sigterm", "--fault-at", "15",
                              "--duration", "40", "--serve-pid", str(self.serve.pid if self.serve else 0), *lf):
                self.fail("loadfaults sigterm")
            if self.serve:
                self.echo(f"    serve exit code after SIGTERM: {self.serve.wait()}")
            self.copy_logs(run, self.logs / "loadfaults", "*.log", "supervisord.conf")
            self.serve = None
        vllm_log = self.logs / "loadfaults" / "vllm.log"
        if vllm_log.is_file():
            n = vllm_log.read_text(errors="replace").count("entering degraded mode")
            self.echo(f'    "entering degraded mode" lines in vllm.log: {n}')
        self.stop_appliance()

    # --- workloads (issue 12, target 4): LMCache's own workloads against the appliance -----------------------
    # One appliance per WL_CONFIGS entry (mr_backend's words; `lmcache` is the appliance's default configuration),
    # started once with the GPU KV cache capped: long-document QA (longdoc: 20 documents x 10,000 tokens, one
    # request at a time, two passes), then multi-round QA at a fixed request rate (multiround --rate: 10 users,
    # a shared 1,000-token system prompt, each user's own 12,000-token history growing by 1,100 tokens a round to
    # 17,300, 100-token answers), bounded by WL_MR_SECONDS; then (WL_STARTVS=1, if the budget allows) target 6: a
    # bare `vllm serve` with the no-offload configuration's vLLM argv and environment, timed to ready.
    # Sizes: the 20 documents hold 201,280 KV tokens (26 GB): the CPU tier is 40 GiB, as in the table.
    # The GPU KV cache is 8 GiB (65,536 tokens) rather than the 4 GiB: the documents still cannot stay
    # (6.5 of 20 fit, and pass 2 comes back to each after the 19 others), and the multi-round working set
    # (165,000 tokens) is 2.5x it, but 4 GiB (32,768 tokens) would hold only one of the late rounds' 17k-token
    # requests at a time, so with 100-token answers every configuration would queue at any useful rate
    # (WL_KV_BYTES=4294967296 for 4 GiB). About 470 s on one H200 (3 starts of 65-90 s, 2 x 20 + 40 requests
    # each), plus ~70 s for the bare start.
    def wl(self, label: str) -> list[str] | None:
        k = self.k
        return wl_words(label, k["WL_CPU_GIB"], k["WL_KV_BYTES"], k["WL_MAX_MODEL_LEN"])

    def suite_workloads(self) -> None:
        k = self.k
        self.reports += ["startup", "longdoc", "multiround"]
        mr = ["--base-url", self.base, "--model", k["SERVED"], "--results", str(self.res), "--max-seconds",
              k["WL_MR_SECONDS"], "--max-model-len", k["WL_MAX_MODEL_LEN"], "--request-timeout", "60",
              *k["WL_MR_ARGS"].split()]
        for label in k["WL_CONFIGS"].split():
            words = self.wl(label)
            if words is None:
                self.fail(f"unknown workloads configuration {label}")
                continue
            if not self.need(int(k["WL_MR_SECONDS"]) + 140, f"workloads {label}"):
                continue
            if not self.start_appliance(label, *words):
                continue
            kv = self.kv_tokens(label)
            kv_arg = ["--gpu-kv-tokens", kv] if kv else []
            if not self.bench("longdoc", "run", "--label", label, "--base-url", self.base, "--model", k["SERVED"],
                              "--results", str(self.res), *kv_arg, *k["WL_LD_ARGS"].split()):
                self.fail(f"longdoc {label}")
            if not self.bench("multiround", "run", "--label", label, *mr, *kv_arg):
                self.fail(f"multiround {label}")
            self.stop_appliance()
        if k["WL_STARTVS"] == "1":
            self.bare_vllm()

    def suite_startvs(self) -> None:
        """Issue 12, target 6: the appliance's serve -> ready next to a bare `vllm serve`, ~150 s."""
        self.reports.append("startup")
        for label in self.k["STARTVS_CONFIGS"].split():
            words = self.wl(label)
            if words is None:
                self.fail(f"unknown startvs configuration {label}")
                continue
            if not self.need(100, f"startvs: start {label}"):
                continue
            if self.start_appliance(label, *words):
                self.stop_appliance()
        self.bare_vllm()

    def bare_vllm(self) -> None:
        """`vllm serve` with the vLLM argv and environment of this call's no-offload appliance, to ready."""
        plan = self.logs / "no-offload" / "plan.json"
        if not plan.is_file() and not self.dry:
            self.fail(f"bare vllm serve: no {plan} (start the no-offload configuration first in the call)")
            return
        if not self.need(85, "bare vllm serve (target 6)"):
            return
        if plan.is_file():
            p = json.loads(plan.read_text())
            argv, envs = plan_argv(p), p["vllm"]["env"]
        else:  # dry run
            argv, envs = ["serve", f"(the no-offload appliance's vLLM argv, from {plan})"], {}
        if len(argv) <= 1:
            self.fail(f"bare vllm serve: no vLLM argv in {plan}")
            return
        port = str(self.port)
        for i, a in enumerate(argv[:-1]):
            if a == "--port":
                port = argv[i + 1]
        self.say(f"start bare-vllm: vllm {' '.join(argv)}")
        self.cleanups.append(self.bare_stop)  # a bare vLLM is not the appliance's: on_exit would not stop it
        started = time.time()
        env = self.app_env([f"{n}={v}" for n, v in envs.items()], pythonpath=self.site_path(),
                           VLLM_SERVER_DEV_MODE="1", VLLM_USE_FLASHINFER_SAMPLER="0", HF_HUB_OFFLINE="1")
        self.bare = self.spawn([*self.vllm_cmd.split(), *argv], env, self.logs / "bare-vllm" / "vllm.log", "bare-vllm")
        budget = min(int(self.k["START_TIMEOUT"]), self.left())
        if not self.bench("startup", "wait", "--bare", "--label", "bare-vllm", "--results", str(self.res),
                          "--base-url", f"http://127.0.0.1:{port}", "--model", self.k["SERVED"], "--started-at",
                          f"{started:.9f}", "--pid", str(self.bare.pid), "--timeout", str(budget)):
            self.fail("bare vllm serve did not get ready")
            self.tail(self.logs / "bare-vllm" / "vllm.log", 30, "    bare vllm: ")
        self.cleanups.remove(self.bare_stop)
        self.bare_stop()

    def bare_stop(self) -> None:
        """SIGTERM to the bare vLLM (startup stop: SIGKILL to what is left after 60 s), GPU free again."""
        if self.bare is None:
            return
        if not self.bench("startup", "stop", "--pid", str(self.bare.pid), "--label", "bare-vllm", "--results",
                          str(self.res), "--timeout", "60"):
            self.fail("bare vllm: stop not clean")
        self.bare.wait()
        self.bare = None
        self.wait_gpu_free(False, "bare-vllm")

    # --- the call ---------------------------------------------------------------------------------------------
    def main(self, suites: list[str]) -> int:
        self.res.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self._log = open(self.logs / "suite.log", "a")  # noqa: SIM115 - the console's copy, closed at the end

        def interrupted(*_):
            self.say("interrupted")
            raise SystemExit(130)
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            handlers = {s: signal.signal(s, interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
        rc = 0
        try:
            self.header(suites)
            self.cleanup_earlier()
            for s in suites:
                getattr(self, f"suite_{s}")()
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        finally:
            try:
                self.on_exit()
            finally:
                for s, h in handlers.items():
                    signal.signal(s, h)
                self._log.close()
                self._log = None
        return rc


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.suite", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--dry-run", action="store_true",
                   help="print the commands each step would run; start, mount and remove nothing")
    p.add_argument("suites", nargs="*", metavar="SUITE", help=" ".join(SUITES))
    return p


def main(argv: list[str] | None = None, environ: dict | None = None, stdout=None) -> int:
    a = parser().parse_args(argv)
    out = stdout or sys.stdout
    if not a.suites:
        out.write(__doc__.split("\n\n", 1)[1].split("\nSeveral suites")[0] + "\n")
        return 2
    for s in a.suites:
        if s not in SUITES:
            out.write(f"unknown suite: {s} ({' '.join(sorted(SUITES))} )\n")
            return 2
    return Runner(environ, dry_run=a.dry_run, stdout=out).main(a.suites)


if __name__ == "__main__":
    sys.exit(main())
