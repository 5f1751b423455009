"""Run a Python server program so that its API socket can share the port with the `gap` program.

    <the program's python> .../entrypoint/programs/reuse_port.py PORT -- SCRIPT ARGS...
    <the program's python> .../entrypoint/programs/reuse_port.py PORT -- -m MODULE ARGS...

The `gap` program (gap.py) answers 503 on vLLM's port while vLLM is down. Two sockets can only listen on one
port where both set SO_REUSEPORT (Linux, same user). vLLM 0.32 sets it only with several API servers
(vllm/entrypoints/cli/serve.py: `setup_server(args, reuse_port=num_api_servers > 1)`; the plain
single-server path, `api_server/entry.py: run_server`, passes reuse_port=False to
`launchers/launcher.py: create_server_socket`). So this wrapper sets SO_REUSEPORT on every TCP socket the
program binds to PORT, then runs the program in this same interpreter (runpy), as its own `python` would.
Nothing else changes: the option only decides who may bind the port, not how connections are served, and
vLLM binds its port before loading the model (launcher.py: setup_server) but listens only once it serves,
so the kernel gives connections to the gap program until that moment.

Standard library only, and run by path with the target's own interpreter (which need not have the
appliance's package): the launcher (launch.py, shared_port_argv) builds the command line.

    ... reuse_port.py PORT --preload MODULE --gpu-wait SHARE,TP,SECONDS -- ...

also imports MODULE (vLLM's CLI: about 20 s on an H200 host) *before* it waits for the GPUs to have SHARE of
their memory free. After a vLLM crash that wait is the LMCache server's reap of the dead vLLM's KV cache
(30 s at least, kv_tiers.LMCACHE_REAP_S); importing meanwhile takes the import off the restart's critical
path. The program then runs as before: its imports are already in sys.modules.
"""
from __future__ import annotations

import importlib
import os
import runpy
import socket
import subprocess
import sys
import time
from typing import Any

USAGE = ("usage: reuse_port.py PORT [--preload MODULE] [--gpu-wait SHARE,TP,SECONDS[,HELD_FILE]] -- "
         "SCRIPT [ARGS...] | -m MODULE [ARGS...]")
HELD_EXIT = 75  # EX_TEMPFAIL: the GPU memory was still held; the launcher's next start frees it (launch.py)


def log(text: str) -> None:
    print(f"[appliance] {text}", flush=True)  # as the launcher (launch.log): into vLLM's log


def gpu_memory(tp: int) -> list[tuple[int, float, float]] | None:
    """(index, free MiB, total MiB) of the GPUs vLLM will use, from nvidia-smi; None where there is none."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.free,memory.total",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    try:
        rows = [tuple(float(x) for x in line.split(",")) for line in out.stdout.strip().splitlines() if line.strip()]
    except ValueError:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if visible and all(part.strip().isdigit() for part in visible.split(",")):
        wanted = [int(part) for part in visible.split(",")]
        rows = [r for r in rows if int(r[0]) in wanted]
    return [(int(i), free, total) for i, free, total in rows[:tp]]


def wait_for_gpu_memory(share: float, tp: int, limit: float, quiet_limit: bool = False) -> bool:
    """Wait (at most `limit` s) until the GPUs have `share` of their memory free: after a crash, the dead
    vLLM's KV cache stays mapped in the LMCache server until the server reaps it, and vLLM refuses to start
    on too little free memory. Without nvidia-smi there is nothing to check. False: still short."""
    start, said = time.monotonic(), False
    while True:
        short = [g for g in gpu_memory(tp) or [] if g[1] < share * g[2]]
        if not short:
            if said:
                log(f"GPU memory released after {time.monotonic() - start:.1f} s")
            return True
        if time.monotonic() - start >= limit:
            if not quiet_limit:
                log(f"GPU memory still short after {limit:g} s; starting vLLM anyway (it will say why)")
            return False
        if not said:
            i, free, total = short[0]
            log(f"waiting for GPU memory to be released (GPU {i}: {free / 1024:.1f} of {total / 1024:.1f} GiB "
                f"free; vLLM asks for {share:g} of it), at most {limit:g} s")
            said = True
        time.sleep(1.0)


def preload(module: str) -> None:
    """Import `module` now (its import is the slow part of a start); a failure is the program's to report."""
    start = time.monotonic()
    try:
        importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - the program itself imports it again and says what is wrong
        log(f"preloading {module} failed ({type(e).__name__}); the program imports it itself")
        return
    log(f"preloaded {module} in {time.monotonic() - start:.1f} s")


def patch_bind(port: int) -> None:
    """socket.socket.bind sets SO_REUSEPORT first where the address is a TCP address with `port`."""
    original = socket.socket.bind

    def bind(self: socket.socket, address: Any) -> None:
        if (self.family in (socket.AF_INET, socket.AF_INET6) and self.type == socket.SOCK_STREAM
                and isinstance(address, tuple) and len(address) >= 2 and address[1] == port):
            self.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        return original(self, address)

    setattr(socket.socket, "bind", bind)  # a method replaced on purpose: mypy refuses the plain assignment


def main(argv: list[str]) -> int:
    if not argv or not argv[0].isdigit() or "--" not in argv:
        print(USAGE, file=sys.stderr)
        return 2
    port, cut = int(argv[0]), argv.index("--")
    options, target = argv[1:cut], argv[cut + 1:]
    module: str | None = None
    wait: tuple[float, int, float, str | None] | None = None
    while options:
        name, value, options = options[0], options[1:2], options[2:]
        if name == "--preload" and value:
            module = value[0]
        elif name == "--gpu-wait" and value and len(value[0].split(",", 3)) in (3, 4):
            try:
                share, tp, limit, *held = value[0].split(",", 3)  # the file's path may hold commas
                wait = (float(share), int(tp), float(limit), held[0] if held else None)
            except ValueError:
                print(USAGE, file=sys.stderr)
                return 2
        else:
            print(USAGE, file=sys.stderr)
            return 2
    if not target or target[0] == "-m" and len(target) < 2:
        print(USAGE, file=sys.stderr)
        return 2
    patch_bind(port)
    if module:
        preload(module)
    if wait:
        want, gpus, seconds, held_file = wait
        if not wait_for_gpu_memory(want, gpus, seconds, quiet_limit=bool(held_file)) and held_file:
            # Never seen freed within the limit (one H200 run: the LMCache server logged its reap, the memory
            # stayed mapped). Say so and exit: the launcher's next start restarts the LMCache server first.
            with open(held_file, "w") as f:
                f.write(f"{os.getpid()}\n")
            log(f"GPU memory still short after {seconds:g} s: exiting, so that the next start restarts the LMCache "
                "server that still maps it")
            return HELD_EXIT
    if target[0] == "-m":
        sys.argv = [target[1], *target[2:]]  # runpy puts the module's file name into argv[0]
        sys.path[0] = os.getcwd()  # as `python -m` does
        runpy.run_module(target[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(target)
        sys.path[0] = os.path.dirname(os.path.abspath(target[0]))  # as `python SCRIPT` does
        runpy.run_path(target[0], run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
