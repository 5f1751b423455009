"""The cluster roles on one host: a `kv-server` container runs only the LMCache server, and replicas run only
vLLM, their connector pointed at it (LMCACHE_SERVER). Both read the same .env.

Why this shape (docs/SCALE-OUT.md, measured on 2 x H200): two vLLMs sharing one LMCache server serve each
other's 16k-token prompts from its CPU tier at 0.24x recompute, while two servers sharing a Redis store take
3.9x recompute for the same hit. So replicas on one host share one server (over the host IPC namespace:
the server maps each vLLM's GPU KV cache through CUDA IPC); the store stays for sharing across hosts.

One .env describes the whole cluster (compose's `env_file`, a Kubernetes ConfigMap), so each role accepts the
other's settings and leaves them alone: a replica does not size tiers it does not hold (the server's CPU and
disk tiers, eviction, L2 policies, the shared store), a kv-server still checks the vLLM settings but starts
no vLLM. What only one container can mean (the role itself, LMCACHE_SERVER) is given per service.

These are the role's rules only; the KV step (kv_tiers.py) applies them, and build.py leaves vLLM out of a
kv-server's plan (runs_vllm).
"""
from __future__ import annotations

from .settings import MPServer

KV_SERVER = "kv-server"


def role_problem(role: str, server: MPServer | None, backend: str | None, mode: object) -> str | None:
    """Why the settings contradict the role (APPLIANCE_ROLE, LMCACHE_SERVER), or None when they fit."""
    if role == KV_SERVER:
        if server is not None:
            return ("APPLIANCE_ROLE=kv-server and LMCACHE_SERVER are both set: a kv-server runs the LMCache server "
                    "itself; set LMCACHE_SERVER on the replicas only (compose.cluster.yaml sets it in their "
                    "environment)")
        if backend != "lmcache" or mode != "server":
            return (f"APPLIANCE_ROLE=kv-server runs an LMCache server for other containers: it needs "
                    f"VLLM_KV_OFFLOADING_BACKEND=lmcache and LMCACHE_MODE=server (they are {backend or 'none'} and "
                    f"{mode})")
    elif server is not None and backend == "lmcache" and mode != "server":
        return ("LMCACHE_SERVER points vLLM at an LMCache server, but LMCACHE_MODE=in-process runs LMCache inside "
                "vLLM: set LMCACHE_MODE=server (the default), or remove LMCACHE_SERVER")
    return None


def lmcache_bind_host(role: str) -> str:
    """Where the LMCache server listens: loopback for its own vLLM, all interfaces for a kv-server's replicas
    (compose.cluster.yaml publishes none of its ports: LMCache has no authentication)."""
    return "0.0.0.0" if role == KV_SERVER else "127.0.0.1"


def runs_vllm(role: str) -> bool:
    """A kv-server's vLLM command is still planned (so that one .env is checked the same in every role) but
    is not part of its plan: only the LMCache server runs there."""
    return role != KV_SERVER
