"""The shared KV store (LMCACHE_SHARED_URL) as a dependency: is it answering?

A Redis/Valkey PING over a plain socket (RESP, three commands: AUTH, PING, QUIT), so that the probe works in
every image and needs none of LMCache's dependencies. Preflight warns when the store does not answer, the
watchdog pings it every round and records the result for `status` and `appliance_shared_store_up`; nothing is
restarted for it: the LMCache server starts and serves without its store (each L2 operation then misses) and
its RESP workers connect again when the store is back.
"""
from __future__ import annotations

import os
import socket
from typing import BinaryIO, Mapping

from ..config.kv_tiers import RESP_PASSWORD_ENV
from ..config.plan import Plan
from ..config.secrets import REDACTED

MAX_REPLY = 4096


def _command(*words: str) -> bytes:
    out = [f"*{len(words)}\r\n".encode()]
    for w in words:
        data = w.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _reply(f: BinaryIO) -> str:
    line = f.readline(MAX_REPLY)
    if not line:
        raise ConnectionError("the store closed the connection")
    return line.decode("utf-8", "replace").rstrip("\r\n")


def password_of(plan: Plan, environ: Mapping[str, str] | None = None) -> str:
    """The store's password: in the plan `serve` built (preflight), else in the environment `serve` exported
    (the watchdog reads the plan file back, where it is redacted)."""
    environ = os.environ if environ is None else environ
    for env in (plan.lmcache.env, plan.vllm.env):
        value = env.get(RESP_PASSWORD_ENV)
        if value and value != REDACTED:
            return value
    return environ.get(RESP_PASSWORD_ENV, "")


def ping(host: str, port: int, username: str = "", password: str = "", timeout: float = 5.0) -> tuple[bool, str]:
    """(answers PONG, why not). The reason never holds the password (the store's error text is its own)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock, sock.makefile("rb") as f:
            if password:
                sock.sendall(_command("AUTH", *([username] if username else []), password))
                answer = _reply(f)
                if not answer.startswith("+"):
                    return False, f"AUTH refused: {answer[:200]}"
            sock.sendall(_command("PING"))
            answer = _reply(f)
            sock.sendall(_command("QUIT"))
    except OSError as e:  # refused, unreachable, timed out, name not resolved, closed
        return False, f"cannot reach {host}:{port} ({e.strerror or e})"
    if answer == "+PONG":
        return True, ""
    return False, f"PING answered {answer[:200]!r}"


def probe(plan: Plan, timeout: float, environ: Mapping[str, str] | None = None) -> tuple[bool, str]:
    store = plan.lmcache.shared_store
    assert store is not None, "no shared store planned"
    return ping(store.host, int(store.port), store.username, password_of(plan, environ), timeout)
