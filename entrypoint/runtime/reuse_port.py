"""Run a Python server program so that its API socket can share the port with the `gap` program.

    <the program's python> .../entrypoint/runtime/reuse_port.py PORT -- SCRIPT ARGS...
    <the program's python> .../entrypoint/runtime/reuse_port.py PORT -- -m MODULE ARGS...

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
appliance's package): the launcher (programs.py, shared_port_argv) builds the command line.
"""
from __future__ import annotations

import os
import runpy
import socket
import sys

USAGE = "usage: reuse_port.py PORT -- SCRIPT [ARGS...] | -m MODULE [ARGS...]"


def patch_bind(port: int) -> None:
    """socket.socket.bind sets SO_REUSEPORT first where the address is a TCP address with `port`."""
    original = socket.socket.bind

    def bind(self, address):
        if (self.family in (socket.AF_INET, socket.AF_INET6) and self.type == socket.SOCK_STREAM
                and isinstance(address, tuple) and len(address) >= 2 and address[1] == port):
            self.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        return original(self, address)

    socket.socket.bind = bind


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--" or not argv[0].isdigit():
        print(USAGE, file=sys.stderr)
        return 2
    port, target = int(argv[0]), argv[2:]
    patch_bind(port)
    if target[0] == "-m":
        if len(target) < 2:
            print(USAGE, file=sys.stderr)
            return 2
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
