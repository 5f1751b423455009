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
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from . import kv_tiers
from .plan import LmcacheServer
from .settings import MPServer

if TYPE_CHECKING:
    from .build import Builder

KV_SERVER = "kv-server"


def role_fits(b: Builder, backend: str | None) -> bool:
    """Record the role on the plan; False (an error recorded) when the settings contradict it."""
    v, p = b.values, b.plan
    p.role = str(v.get("APPLIANCE_ROLE", "all"))
    server: MPServer | None = v.get("LMCACHE_SERVER")
    if p.role == KV_SERVER:
        if server is not None:
            b.error("APPLIANCE_ROLE=kv-server and LMCACHE_SERVER are both set: a kv-server runs the LMCache server "
                    "itself; set LMCACHE_SERVER on the replicas only (compose.cluster.yaml sets it in their "
                    "environment)")
            return False
        if backend != "lmcache" or v.get("LMCACHE_MODE") != "server":
            b.error(f"APPLIANCE_ROLE=kv-server runs an LMCache server for other containers: it needs "
                    f"VLLM_KV_OFFLOADING_BACKEND=lmcache and LMCACHE_MODE=server (they are {backend or 'none'} and "
                    f"{v.get('LMCACHE_MODE')})")
            return False
    elif server is not None and backend == "lmcache" and v.get("LMCACHE_MODE") != "server":
        b.error("LMCACHE_SERVER points vLLM at an LMCache server, but LMCACHE_MODE=in-process runs LMCache inside "
                "vLLM: set LMCACHE_MODE=server (the default), or remove LMCACHE_SERVER")
        return False
    return True


def lmcache_bind_host(b: Builder) -> str:
    """Where the LMCache server listens: loopback for its own vLLM, all interfaces for a kv-server's replicas
    (compose.cluster.yaml publishes none of its ports: LMCache has no authentication)."""
    return "0.0.0.0" if b.plan.role == KV_SERVER else "127.0.0.1"


def external_server(b: Builder) -> None:
    """A replica: vLLM's connector points at LMCACHE_SERVER; no LMCache program, no tiers of its own."""
    v, p = b.values, b.plan
    server: MPServer = v["LMCACHE_SERVER"]
    for key in sorted(b.lmcache_keys):
        if key not in kv_tiers.LMCACHE_KEYS_WITH_SERVER_EQUIVALENT:
            b.error(f"LMCACHE_{key.upper()}: applies in in-process mode only (LMCACHE_MODE=in-process); a replica "
                    "with LMCACHE_SERVER uses that server's configuration")
    port = server.port or int(v["APPLIANCE_LMCACHE_PORT"])
    http_port = int(v["APPLIANCE_LMCACHE_HTTP_PORT"])
    p.lmcache_mode = "external"
    p.lmcache_server = LmcacheServer(url=f"tcp://{server.host}:{port}", host=server.host, port=port,
                                     health_url=f"http://{server.host}:{http_port}/healthcheck")
    p.vllm_argv += ["--kv-transfer-config", kv_tiers.mp_transfer_config(b, server.host, port)]
    kv_tiers.announce_identity(b)


def kv_server_role(b: Builder) -> None:
    """A kv-server: the vLLM command was planned (so that one .env is checked the same in every role), and is
    dropped here: only the LMCache server runs."""
    p = b.plan
    if p.role != KV_SERVER:
        return
    p.vllm_argv, p.vllm_env = [], {}
