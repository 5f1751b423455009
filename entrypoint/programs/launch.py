"""The launchers of the two servers supervisord runs: `python -m entrypoint.programs.launch vllm|lmcache PLAN_FILE`.

Each one makes sure the ground is clear, then becomes the planned server with os.execvpe, so that the pid
supervisord watches, signals and reaps is the server itself:
- `lmcache`: no earlier LMCache process of ours is alive (pinned CPU memory) and its ports are free.
- `vllm`: the LMCache server (if any: its own, or a kv-server's with LMCACHE_SERVER) answers its health
  check, within APPLIANCE_LMCACHE_WAIT; no earlier
  vLLM process of ours is alive (a dying one still holds GPU memory) and the API port is free.

A launcher that gives up is a failed start, however long it waited. supervisord counts only exits within
`startsecs` (APPLIANCE_STARTUP_TIMEOUT) as failed starts; a launcher that gave up later would be "running"
to it, then restarted forever. So the launchers count their own give-ups in a row (in the run directory),
and the START_RETRIES + 1-th ends the appliance exactly as a FATAL program does (on_fatal.py).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import requests

from ..common import applog
from ..config.plan import Plan
from ..config.secrets import REDACTED, is_secret_name, redact_argv
from ..config.settings import FILE_SECRETS, SECRET_NAMES
from ..render.supervisord_conf import START_RETRIES
from ..rundir import RunDir, read_plan
from . import reuse_port
from .gap import GAP_OFF

# Secret values of the planned command lines (e.g. --api-key in VLLM_EXTRA_ARGS): the plan file has them
# redacted, so `serve` hands them over in this variable, which never reaches the servers.
SECRET_ARGV_VAR = "_APPLIANCE_SECRET_ARGV"
STRAGGLER_GRACE = 10.0  # seconds an earlier process of ours may take to exit before it is killed
STRAGGLER_KILL_WAIT = 30.0  # then, seconds for the kernel to take it away (GPU memory is freed on exit)
PORT_WAIT = 10.0  # seconds a port may stay taken (by a process that is not ours) before we give up
POLL = 0.2
VLLM_CLI_MODULE = "vllm.entrypoints.cli.main"  # what `vllm serve` runs; imported early by reuse_port.py
GPU_MEMORY_WAIT = 90.0  # seconds; covers LMCache's reap of a dead vLLM (plan.LMCACHE_REAP_S) with margin
DEFAULT_GPU_MEMORY_UTILIZATION = 0.92  # vLLM's default share of GPU memory


_program = "launcher"  # the program this launcher starts (main() sets it): the `program` of its JSON lines


def log(message: str) -> None:
    # On stdout, with the server's own output: the `logs` listener prefixes it with the program name (text),
    # or passes the JSON record on as it is.
    applog.emit(_program, message, event="launcher", stream=sys.stdout, text_prefix="[appliance] ")


# -- environment and argv ------------------------------------------------------------------------------
def server_environment(plan: Plan, extra: Mapping[str, str],
                       environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ minus what the appliance translated, plus the planned variables. Redacted secrets in the
    plan are taken from the environment, where `serve` put their real values."""
    env = dict(os.environ if environ is None else environ)
    env.pop(SECRET_ARGV_VAR, None)
    for name in plan.vllm.env_removed:
        env.pop(name, None)
    for name, value in extra.items():
        if REDACTED in value and name in env:
            continue  # redacted in the plan file (a secret, a URL's password): `serve` put the real value here
        env[name] = value
    return env


def vllm_environment(plan: Plan, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """vLLM's: without the secrets only the LMCache server needs (the shared store's password, which `serve`
    put in the environment supervisord passes to every program)."""
    env = server_environment(plan, plan.vllm.env, environ)
    for name in plan.lmcache.env:
        if is_secret_name(name) and name not in plan.vllm.env:
            env.pop(name, None)
    return env


def lmcache_environment(plan: Plan, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The LMCache server's: as vLLM's, without the secrets only vLLM needs (its API key, the HF token)."""
    env = server_environment(plan, plan.lmcache.env, environ)
    for name in (*SECRET_NAMES, *FILE_SECRETS.values()):
        if name not in plan.lmcache.env:
            env.pop(name, None)
    return env


def server_argv(name: str, argv: Sequence[str], environ: Mapping[str, str] | None = None) -> list[str]:
    secrets = json.loads((os.environ if environ is None else environ).get(SECRET_ARGV_VAR) or "{}").get(name, {})
    return [secrets.get(str(i), arg) for i, arg in enumerate(argv)]


def secret_argv_values(plan: Plan) -> str:
    """For `serve`: {program: {index: value}} for every argv position the plan file redacts."""
    out, written = {}, plan.to_dict()  # what the plan file holds, redacted and masked
    for name, argv, shown_argv in (("vllm", plan.vllm.argv, written["vllm"]["argv"]),
                                   ("lmcache", plan.lmcache.argv or [], written["lmcache"]["argv"] or [])):
        hidden = {str(i): real for i, (real, shown) in enumerate(zip(argv, shown_argv)) if real != shown}
        if hidden:
            out[name] = hidden
    return json.dumps(out)


# -- waiting for a clear ground ------------------------------------------------------------------------
def processes_of(program: str | None, server_url: str, exclude: int = 0) -> list[int]:
    """Live processes started by this supervisord as `program` (any, for None), and their children, which
    inherit the environment where supervisord put SUPERVISOR_PROCESS_NAME and SUPERVISOR_SERVER_URL.
    Unlike a pid file this survives pid reuse and finds workers that left the process group."""
    want = [f"\0SUPERVISOR_SERVER_URL={server_url}\0".encode()]
    if program:
        want.append(f"\0SUPERVISOR_PROCESS_NAME={program}\0".encode())
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == exclude:
            continue
        try:
            environ = b"\0" + Path(f"/proc/{entry}/environ").read_bytes()  # empty for zombies
        except OSError:
            continue
        if all(w in environ for w in want):
            found.append(int(entry))
    return found


def wait_for_earlier(program: str) -> bool:
    url = os.environ.get("SUPERVISOR_SERVER_URL")
    if not url:
        return True  # not under supervisord (run by hand)
    start = time.monotonic()
    pids = processes_of(program, url, os.getpid())
    if pids:
        log(f"waiting for {len(pids)} earlier {program} process(es) to exit: pid {', '.join(map(str, pids))}")
    killed = False
    while pids:
        waited = time.monotonic() - start
        if not killed and waited >= STRAGGLER_GRACE:
            log(f"still alive after {STRAGGLER_GRACE:g} s, killing: pid {', '.join(map(str, pids))}")
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            killed = True
        if waited >= STRAGGLER_GRACE + STRAGGLER_KILL_WAIT:
            log(f"error: earlier {program} processes did not go away: pid {', '.join(map(str, pids))}")
            return False
        time.sleep(POLL)
        pids = processes_of(program, url, os.getpid())
    return True


def port_free(host: str, port: int, shared: bool = False) -> bool:
    """Whether a server could bind host:port now. `shared`: as one that sets SO_REUSEPORT would, so that the
    gap program's socket (which sets it too) is no conflict, while any other holder of the port still is."""
    for family, kind, proto, _, addr in socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                           flags=socket.AI_PASSIVE):
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no conflict
            if shared:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                s.bind(addr)
            except OSError:
                return False
    return True


def wait_for_ports(ports: list[tuple[str, int]], shared: bool = False) -> bool:
    start, said = time.monotonic(), False
    while True:
        busy = [f"{h}:{p}" for h, p in ports if not port_free(h, p, shared)]
        if not busy:
            return True
        if time.monotonic() - start >= PORT_WAIT:
            log(f"error: port {', '.join(busy)} is still in use by another process after {PORT_WAIT:g} s; "
                         "stop it or choose another port")
            return False
        if not said:
            log(f"waiting for port {', '.join(busy)} to be free")
            said = True
        time.sleep(POLL)


def gpu_wait(plan: Plan) -> tuple[float, int, float]:
    """What vLLM will ask of its GPUs: (share of each GPU's memory, how many GPUs, how long to wait for it)."""
    share = float(plan.values.get("VLLM_GPU_MEMORY_UTILIZATION") or DEFAULT_GPU_MEMORY_UTILIZATION)
    return share, int(plan.values.get("VLLM_TENSOR_PARALLEL_SIZE") or 1), GPU_MEMORY_WAIT


def lmcache_wait_url(plan: Plan) -> tuple[str | None, str]:
    """The LMCache server vLLM needs before it starts: its own, or a kv-server's (LMCACHE_SERVER)."""
    if plan.lmcache.server:
        return plan.lmcache.server.health_url, f"the LMCache server {plan.lmcache.server.url} (LMCACHE_SERVER)"
    return plan.lmcache.health_url, "the LMCache server"


def wait_for_lmcache(plan: Plan) -> bool:
    url, what = lmcache_wait_url(plan)
    assert url is not None  # called only where there is one to wait for
    budget = float(plan.appliance.lmcache_wait)
    start, next_note = time.monotonic(), 10.0
    while True:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return True
        except requests.RequestException:
            pass
        waited = time.monotonic() - start
        if waited >= budget:
            where = "see the lmcache lines above" if not plan.lmcache.server else "see that container's output"
            log(f"error: {what} did not become healthy at {url} within {budget:g} s "
                f"(APPLIANCE_LMCACHE_WAIT); {where}")
            return False
        if waited >= next_note:
            log(f"waiting for {what} at {url} ({waited:.0f} s of {budget:g} s)")
            next_note += 10.0
        time.sleep(0.5)


# -- giving up -----------------------------------------------------------------------------------------
def give_ups(run: RunDir, program: str) -> Path:
    return run.root / f"{program}.give-ups"


def gave_up(run: RunDir, program: str) -> int:
    """Count a give-up; the START_RETRIES + 1-th in a row stops the appliance as a FATAL program would."""
    counter = give_ups(run, program)
    # "<supervisord's pid> <count>": a count left by an earlier supervisord (a run directory that persists
    # across container starts) is not ours.
    this = str(os.getppid())
    try:
        owner, counted = counter.read_text().split()
        count = int(counted) + 1 if owner == this else 1
    except (OSError, ValueError):
        count = 1
    try:
        counter.write_text(f"{this} {count}\n")
    except OSError:
        return 1  # cannot count: supervisord's own count still applies
    if count <= START_RETRIES or not os.environ.get("SUPERVISOR_SERVER_URL"):
        return 1
    log(f"error: gave up {count} times in a row: stopping the appliance (as for a program that is FATAL)")
    try:
        if not run.fatal.exists():
            run.fatal.write_text(program + "\n")
        run.rpc().supervisor.shutdown()
    except Exception as e:  # noqa: BLE001 - supervisord already shutting down (on-fatal was first) or gone
        log(f"supervisord did not take the shutdown ({type(e).__name__}); it may be stopping already")
    return 1


def _exec(run: RunDir | None, program: str, argv: list[str], env: dict[str, str]) -> None:
    if run:
        give_ups(run, program).unlink(missing_ok=True)  # not a give-up: the count starts again
    log("Executing: " + shlex.join(redact_argv(argv)))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(argv[0], argv, env)


# -- the programs --------------------------------------------------------------------------------------
GPU_HELD = "gpu-memory-held"  # run directory: a vLLM start found the GPU memory still held after its wait


def restart_lmcache_for_gpu(plan: Plan, run: RunDir, why: str) -> bool:
    """Restart this appliance's LMCache server: its exit unmaps every vLLM KV cache it still holds (its CPU tier
    starts empty; the disk tier stays). Only a server mode LMCache of this appliance; False where there is none
    or supervisord would not do it."""
    if plan.lmcache.mode != "server" or not plan.lmcache.argv:
        return False
    log(f"{why}: restarting the LMCache server, which still maps it (its CPU tier starts empty, the disk tier "
        "stays)")
    try:
        rpc = run.rpc().supervisor
        rpc.stopProcess("lmcache", True)
        rpc.startProcess("lmcache", False)
    except Exception as e:  # noqa: BLE001 - supervisord gone or the program in another state: start as before
        log(f"could not restart the LMCache server ({type(e).__name__}: {e})")
        return False
    return True


def vllm(plan: Plan, run: RunDir | None = None) -> int:
    held = run.root / GPU_HELD if run else None
    if held and held.exists():
        assert run is not None  # held is under it
        held.unlink(missing_ok=True)
        restart_lmcache_for_gpu(plan, run, "the last vLLM start found the GPU memory still held after "
                                           f"{GPU_MEMORY_WAIT:g} s")
    if lmcache_wait_url(plan)[0] and not wait_for_lmcache(plan):
        return gave_up(run, "vllm") if run else 1
    argv = server_argv("vllm", plan.vllm.argv)
    shared = None
    # Started through reuse_port.py also behind the front proxy, where no gap shares the port: vLLM's CLI is then
    # imported while it waits for GPU memory, off a restart's critical path.
    if (plan.appliance.gap_answer or plan.appliance.front_proxy) and run:
        shared = shared_port_argv(argv, plan.vllm_address[1])
        if shared is None:
            # Not a Python program: it cannot share the port, so the gap program lets go of it until this
            # process (vLLM after the exec) is gone (gap.py). The 503 answer then covers the waits only.
            log(f"{argv[0]} is not a Python program: vLLM binds the port alone, the 503 answer (APPLIANCE_GAP_ANSWER) "
                "stops while it starts")
            (run.root / GAP_OFF).write_text(f"{os.getpid()}\n")
        else:
            (run.root / GAP_OFF).unlink(missing_ok=True)  # an earlier command's: this one shares the port
    if not wait_for_earlier("vllm") or not wait_for_ports([plan.vllm_address], shared is not None):
        return gave_up(run, "vllm") if run else 1
    if shared:
        # The wait for GPU memory (after a crash: the LMCache server's reap, 30 s) happens in reuse_port.py,
        # after it has imported vLLM's CLI: the import no longer adds to a restart.
        share, tp, limit = gpu_wait(plan)
        cut = shared.index("--")
        target = shared[cut + 1:]
        is_vllm_cli = target[:2] == ["-m", VLLM_CLI_MODULE] or os.path.basename(target[0]) == "vllm"
        wait = f"{share:g},{tp},{limit:g}" + (f",{held}" if held and plan.lmcache.mode == "server" else "")
        shared[cut:cut] = [*(["--preload", VLLM_CLI_MODULE] if is_vllm_cli else []), "--gpu-wait", wait]
    elif not reuse_port.wait_for_gpu_memory(*gpu_wait(plan)) and run \
            and restart_lmcache_for_gpu(plan, run, "the GPU memory is still held"):
        if lmcache_wait_url(plan)[0] and not wait_for_lmcache(plan):
            return gave_up(run, "vllm")
        reuse_port.wait_for_gpu_memory(*gpu_wait(plan))
    _exec(run, "vllm", shared or argv, vllm_environment(plan))
    return 1  # not reached


PYTHON_NAME = re.compile(r"python(\d+(\.\d+)*)?")


def shared_port_argv(argv: list[str], port: int) -> list[str] | None:
    """`argv` run through reuse_port.py by the program's own interpreter, so that its API socket sets
    SO_REUSEPORT and shares `port` with the gap program; None where `argv` is not a Python program this can
    run: `python SCRIPT ...`, `python -m MODULE ...`, or a script whose #! line names a python (vLLM's
    `vllm` command is one)."""
    if not argv:
        return None
    wrapper = str(Path(__file__).with_name("reuse_port.py"))
    if PYTHON_NAME.fullmatch(os.path.basename(argv[0])):
        rest = argv[1:]
        if rest[:1] == ["-m"] and len(rest) >= 2 or rest and not rest[0].startswith("-"):
            return [argv[0], wrapper, str(port), "--", *rest]
        return None
    path = shutil.which(argv[0])
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            first = f.readline(512).decode("utf-8", "replace").strip()
    except OSError:
        return None
    if not first.startswith("#!"):
        return None
    words = first[2:].split()
    if words and os.path.basename(words[0]) == "env":  # #!/usr/bin/env python3
        words = words[1:]
    if len(words) != 1 or not PYTHON_NAME.fullmatch(os.path.basename(words[0])):
        return None  # a shell wrapper, or an interpreter with options: run as it is
    return [words[0], wrapper, str(port), "--", path, *argv[1:]]


def lmcache(plan: Plan, run: RunDir | None = None) -> int:
    bind = "0.0.0.0" if plan.role == "kv-server" else "127.0.0.1"  # as kv_tiers planned it
    ports = [(bind, int(plan.appliance.lmcache_port)),
             (bind, int(plan.appliance.lmcache_http_port))]
    if not wait_for_earlier("lmcache") or not wait_for_ports(ports):
        return gave_up(run, "lmcache") if run else 1
    _exec(run, "lmcache", server_argv("lmcache", plan.lmcache.argv or []), lmcache_environment(plan))
    return 1  # not reached


PROGRAMS = {"vllm": vllm, "lmcache": lmcache}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2 or argv[0] not in PROGRAMS:
        print(f"usage: python -m entrypoint.programs.launch {{{'|'.join(PROGRAMS)}}} PLAN_FILE", file=sys.stderr)
        return 2
    global _program
    _program = argv[0]
    return PROGRAMS[argv[0]](read_plan(argv[1]), RunDir(Path(argv[1]).parent))


if __name__ == "__main__":
    sys.exit(main())
