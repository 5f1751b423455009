"""Harness of the supervisor tests: the real `python -m entrypoint serve` (real supervisord) with the stub
servers of tests/stubs, and the means to watch it: its output, supervisord's XML-RPC, the processes.

Each run of serve gets its own session (start_new_session), so every process it leads to, however
re-grouped by supervisord, has that session id: that is how the tests find leftovers and zombies, and how
teardown kills whatever a failed test left behind.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from entrypoint.rundir import RunDir

from ports import free_ports  # noqa: F401 - the suites import it from here

REPO = Path(__file__).resolve().parents[2]
STUBS = REPO / "tests" / "stubs"


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll `predicate` until it returns something truthy (returned); fail the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)




@dataclass
class Proc:
    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str
    cmdline: str


def processes() -> list[Proc]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)"
        out.append(Proc(int(entry), int(fields[1]), int(fields[2]), int(fields[3]), fields[0], cmdline.strip()))
    return out


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Appliance:
    """One `serve` run and the means to poke at it."""

    def __init__(self, tmp_path: Path, env: dict[str, str]):
        self.tmp = tmp_path
        self.env = env
        self.run = RunDir(Path(env["APPLIANCE_RUN_DIR"]))
        self.control = Path(env["STUB_CONTROL_DIR"])
        self.control.mkdir(parents=True, exist_ok=True)
        self.base = f"http://127.0.0.1:{env['VLLM_PORT']}"
        self.lines: list[tuple[float, str]] = []
        self.proc: subprocess.Popen | None = None
        self.api_key: str | None = None  # one given on vLLM's command line (VLLM_EXTRA_ARGS)

    # -- running serve --------------------------------------------------------------------------------------
    def start(self, args: list[str] = (), **popen) -> "Appliance":
        """`serve` with `args` after it (command-line overrides)."""
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "entrypoint", "serve", *args], cwd=REPO, env=self.env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, **popen)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        return self

    def _read(self) -> None:
        for raw in self.proc.stdout:
            self.lines.append((time.monotonic(), raw.decode("utf-8", "replace").rstrip("\n")))

    def output(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def wait_output(self, text: str, timeout: float = 30) -> float:
        """When (monotonic) a line containing `text` was first read."""
        return wait_until(lambda: next((t for t, line in self.lines if text in line), None), timeout,
                          f"{text!r} in the output")

    def line_index(self, text: str) -> int:
        return next(i for i, (_, line) in enumerate(self.lines) if text in line)

    def wait_exit(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"serve still running after {timeout:g} s") from None
        self.reader.join(5)  # the rest of the output (EOF once nothing holds the pipe)
        return rc

    def terminate(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def session(self) -> list[Proc]:
        """Every process serve led to (and serve itself while it runs)."""
        return [p for p in processes() if self.proc and p.sid == self.proc.pid]

    def cleanup(self) -> None:
        if self.proc is None:
            return
        for p in self.session():
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass

    # -- the programs ---------------------------------------------------------------------------------------
    def rpc(self):
        return self.run.rpc().supervisor

    def info(self, name: str) -> dict:
        return self.rpc().getProcessInfo(name)

    def pid(self, name: str = "vllm") -> int:
        return self.info(name)["pid"]

    def wait_state(self, name: str, state: str, timeout: float = 30) -> dict:
        return wait_until(lambda: (i := self.info(name))["statename"] == state and i, timeout, f"{name} {state}")

    def spawns(self, name: str) -> int:
        return sum(1 for _, line in self.lines if f"spawned: '{name}' with pid" in line)

    def trigger(self, name: str) -> None:
        (self.control / name).touch()

    def starts(self, program: str = "vllm") -> list[dict]:
        """What each start of a stub saw: pid, argv, environment."""
        files = sorted(self.control.glob(f"{program}-start-*.json"), key=lambda p: p.stat().st_mtime)
        return [json.loads(f.read_text()) for f in files]

    # -- the API --------------------------------------------------------------------------------------------
    def headers(self) -> dict[str, str]:
        key = self.api_key or self.env.get("VLLM_API_KEY")
        if not key and self.env.get("VLLM_API_KEY_FILE"):
            key = Path(self.env["VLLM_API_KEY_FILE"]).read_text().strip()
        return {"Authorization": f"Bearer {key}"} if key else {}

    def ready(self) -> bool:
        """What `healthcheck` checks, in-process (it is tested on its own): fast enough to time restarts."""
        try:
            if requests.get(f"{self.base}/health", timeout=0.5).status_code != 200:
                return False
            r = requests.get(f"{self.base}/v1/models", headers=self.headers(), timeout=0.5)
            return r.status_code == 200 and any(m["id"] == self.env["VLLM_MODEL"] for m in r.json()["data"])
        except requests.RequestException:
            return False

    def gap_holds(self) -> bool:
        """Whether the gap program still listens on vLLM's port (its state file, written at every change of hands).
        Between vLLM's listen() and the gap's release (one poll, longer on a loaded machine) the kernel spreads new
        connections over both sockets, so a request sent then may get the gap's 503 (documented in gap.py)."""
        try:
            return bool(json.loads((Path(self.env["APPLIANCE_RUN_DIR"]) / "gap.json").read_text())["holding"])
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def wait_ready(self, timeout: float = 30) -> float:
        """vLLM ready, and the port vLLM's alone: what a client that retries on the gap's 503 ends up seeing."""
        wait_until(lambda: self.ready() and not self.gap_holds(), timeout,
                   "vLLM ready (/health 200, /v1/models lists the model) and the gap's release of the port")
        return time.monotonic()

    def completion(self, seconds: float = 0, timeout: float = 60) -> requests.Response:
        return requests.post(f"{self.base}/v1/completions", headers=self.headers(), timeout=timeout,
                             json={"model": self.env["VLLM_MODEL"], "prompt": "hello there", "max_tokens": 1,
                                   "stub_seconds": seconds})

    def metrics(self) -> dict[str, float]:
        from entrypoint.programs.watchdog import parse_metrics
        return parse_metrics(requests.get(f"{self.base}/metrics", timeout=2).text)

    def healthcheck(self, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "entrypoint", "healthcheck"], cwd=REPO,
                              env=self.env if env is None else env, capture_output=True, text=True, timeout=30)


def base_env(tmp_path: Path) -> dict[str, str]:
    api, lmc, lmc_http, lmc_metrics, metrics = free_ports(5)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "LANG": "C.UTF-8",
        "VLLM_MODEL": "stub/model", "VLLM_HOST": "127.0.0.1", "VLLM_PORT": str(api),
        "VLLM_KV_OFFLOADING_BACKEND": "lmcache", "LMCACHE_MAX_LOCAL_CPU_SIZE": "1",
        "APPLIANCE_LMCACHE_PORT": str(lmc), "APPLIANCE_LMCACHE_HTTP_PORT": str(lmc_http),
        "APPLIANCE_LMCACHE_METRICS_PORT": str(lmc_metrics), "APPLIANCE_METRICS_PORT": str(metrics),
        "APPLIANCE_RUN_DIR": str(tmp_path / "run"),
        "APPLIANCE_VLLM_COMMAND": f"{sys.executable} {STUBS / 'vllm_stub.py'}",
        "APPLIANCE_LMCACHE_COMMAND": f"{sys.executable} {STUBS / 'lmcache_stub.py'}",
        # Short everything, so that the suite takes minutes on two cores.
        "APPLIANCE_STARTUP_TIMEOUT": "10", "APPLIANCE_HEALTH_INTERVAL": "1", "APPLIANCE_HEALTH_TIMEOUT": "1",
        "APPLIANCE_HEALTH_FAILURES": "3", "APPLIANCE_SHUTDOWN_TIMEOUT": "5", "APPLIANCE_LMCACHE_WAIT": "20",
        "STUB_CONTROL_DIR": str(tmp_path / "control"),
        "STUB_NO_GPU": "1",  # the stubs need no GPU: skip preflight's "no GPU visible" check (as the test image does)
    }


