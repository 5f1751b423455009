"""LMCache's coordinator and two LMCache servers registered with it, for real (CPU), started from appliance plans
with LMCache's own LMCACHE_COORDINATOR_* variables: shared by test_coordinator.py (the directory, the bench's
client-side router) and test_coordinator_router.py (the appliance's router)."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from entrypoint.config.load import make_plan

from ports import free_ports

HELLO = 9906  # LMCache's server benchmark stores (seq, HELLO x num_tokens): helpers._build_token_ids
TOKENS = 512  # 2 chunks of 256 (+1 token, ignored)
SHAPE = "(2,64,16,8,128):float16:4"  # a small KV layout: 4 layers, 64 blocks of 16 tokens


def lmcache() -> str:
    exe = shutil.which("lmcache", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    assert exe, "LMCache's `lmcache` command is not installed next to this Python or on PATH"
    return exe


def wait_ok(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"{url} did not answer: " + log.read_text()[-3000:]
        time.sleep(0.5)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@dataclass
class Fleet:
    coordinator: str  # its URL
    servers: list[tuple[int, int]]  # (ZMQ port, HTTP port) of each LMCache server
    tmp: Path
    coordinator_proc: subprocess.Popen


@contextlib.contextmanager
def fleet(tmp: Path, advertise_ips: tuple[str, str] = ("127.0.0.1", "127.0.0.1")):
    """The coordinator and two LMCache servers registered with it (heartbeat 1 s, events reported), each
    registering the address given (all of 127.0.0.0/8 is this host: two addresses stand for two hosts)."""
    exe = lmcache()
    coord_port, *ports = free_ports(7)
    coordinator = f"http://127.0.0.1:{coord_port}"
    procs = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "LMCACHE_DISABLE_BANNER": "1"}
    try:
        log = tmp / "coordinator.log"
        with log.open("wb") as out:
            procs.append(subprocess.Popen([exe, "coordinator", "--host", "127.0.0.1", "--port", str(coord_port),
                                           "--disable-metrics"], stdout=out, stderr=subprocess.STDOUT, env=env))
        wait_ok(coordinator + "/instances", procs[0], log)
        servers = []
        for n in range(2):
            zmq_port, http_port, metrics_port = ports[3 * n:3 * n + 3]
            plan = make_plan(None, [], {
                "VLLM_MODEL": "facebook/opt-125m", "VLLM_KV_OFFLOADING_BACKEND": "lmcache",
                "VLLM_KV_OFFLOADING_SIZE": "0.25", "APPLIANCE_LMCACHE_COMMAND": exe,
                "APPLIANCE_LMCACHE_PORT": str(zmq_port), "APPLIANCE_LMCACHE_HTTP_PORT": str(http_port),
                "APPLIANCE_LMCACHE_METRICS_PORT": str(metrics_port),
                # LMCache's own variables: the appliance passes them to its LMCache server's environment
                "LMCACHE_COORDINATOR_URL": coordinator, "LMCACHE_COORDINATOR_EVENT_REPORTING": "1",
                "LMCACHE_COORDINATOR_ADVERTISE_IP": advertise_ips[n], "LMCACHE_COORDINATOR_HEARTBEAT_INTERVAL": "1"})
            assert plan.errors == []
            assert plan.lmcache.env["LMCACHE_COORDINATOR_URL"] == coordinator
            assert not any("coordinator" in a for a in plan.lmcache.argv)  # the variables, not flags
            log = tmp / f"server-{n}.log"
            with log.open("wb") as out:
                procs.append(subprocess.Popen(plan.lmcache.argv, stdout=out, stderr=subprocess.STDOUT, cwd=tmp,
                                              env={**env, **plan.lmcache.env}))
            servers.append((zmq_port, http_port, procs[-1], log))
        for _, http_port, proc, log in servers:
            wait_ok(f"http://127.0.0.1:{http_port}/healthcheck", proc, log)
        yield Fleet(coordinator, [(z, h) for z, h, _, _ in servers], tmp, procs[0])
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                stop(proc)


def store(zmq_port: int, http_port: int, seq: int) -> None:
    """KV for the tokens (seq, HELLO x TOKENS), stored into one server by LMCache's own benchmark client."""
    out = subprocess.run([lmcache(), "bench", "server", "--mode", "cpu", "--transfer-mode", "lmcache_driven",
                          "--rpc-url", f"tcp://127.0.0.1:{zmq_port}", "--url", f"http://127.0.0.1:{http_port}",
                          "--kvcache-shape-spec", SHAPE, "--num-tokens", str(TOKENS), "--start", str(seq),
                          "--end", str(seq + 1), "--interval", "0", "-q"],
                         check=False, capture_output=True, text=True, timeout=180,
                         env={**os.environ, "LMCACHE_DISABLE_BANNER": "1"})
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]


def tokens_of(prompt: str) -> list[int]:
    """The token ids the stand-in replicas' /tokenize gives "seq N ...": what LMCache's benchmark stored for N."""
    return [int(prompt.split()[1])] + [HELLO] * TOKENS
