"""The one-host cluster roles as the installed vLLM and LMCache read them: a kv-server's `lmcache server` argv
(APPLIANCE_ROLE=kv-server) through LMCache's own parser, a replica's --kv-transfer-config (LMCACHE_SERVER)
through vLLM's, and the URL LMCache's MP connector builds from it. Last, the real LMCache server started from
a kv-server plan answers, on a non-loopback address, the first request a replica's connector sends it
(the chunk size), through LMCache's own request client and the URL built from the replica's plan."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from entrypoint.config.load import make_plan

from .lmcache_fleet import stop
from .parsers import connector_extra_config_keys, parse_lmcache_server_argv, parse_serve_argv, registered_kv_connectors
from ports import free_ports

MODEL = "facebook/opt-125m"
DISK = "/tmp/appliance-contract/kv-disk"
GIB = 1 << 30
# One .env for the whole cluster, as compose.cluster.yaml gives it to the kv-server and every replica.
CLUSTER_ENV = {"VLLM_MODEL": MODEL, "VLLM_KV_OFFLOADING_BACKEND": "lmcache", "VLLM_KV_OFFLOADING_SIZE": "5",
               "LMCACHE_LOCAL_DISK": DISK, "LMCACHE_MAX_LOCAL_DISK_SIZE": "20", "LMCACHE_CHUNK_SIZE": "512",
               "LMCACHE_EVICTION_POLICY": "ARC", "APPLIANCE_LMCACHE_PORT": "6100",
               "APPLIANCE_LMCACHE_HTTP_PORT": "6101", "LMCACHE_SHARED_URL": "redis://kv-store:6379",
               "LMCACHE_SHARED_PASSWORD": "store-secret-31", "LMCACHE_EAGER_PREFETCH": "true"}


def connector_url(extra: dict) -> str:
    """The URL LMCache 0.5.6's MP connector connects to for a single server (lmcache_mp_connector.py:
    `[f"{server_host}:{server_port}"]`, then _ensure_transport_scheme), normalised by its client factory."""
    from lmcache.integration.vllm.lmcache_mp_connector import _ensure_transport_scheme
    from lmcache.v1.multiprocess.transport.factory import _normalize_server_url

    assert "lmcache.mp.server_urls" not in extra and "lmcache.mp.autostart" not in extra
    address = f"{extra['lmcache.mp.host']}:{extra['lmcache.mp.port']}"
    scheme, url = _normalize_server_url(_ensure_transport_scheme(address))
    assert scheme == "tcp"
    return url


def test_the_kv_server_role_is_lmcache_servers_argv_on_all_interfaces(lmcache_parser):
    plan = make_plan(None, [], {**CLUSTER_ENV, "APPLIANCE_ROLE": "kv-server"})
    assert plan.errors == []
    assert (plan.role, plan.lmcache.mode, plan.vllm.argv, plan.vllm.env) == ("kv-server", "server", [], {})
    server = parse_lmcache_server_argv(lmcache_parser, plan.lmcache.argv)
    assert (server.mp.host, server.mp.port) == ("0.0.0.0", 6100)
    assert (server.http.http_host, server.http.http_port) == ("0.0.0.0", 6101)
    assert plan.lmcache.health_url == "http://127.0.0.1:6101/healthcheck"  # its own probes stay inside
    storage = server.storage
    assert storage.l1_manager_config.memory_config.size_in_bytes == 5 * GIB
    assert (server.mp.chunk_size, storage.eviction_config.eviction_policy) == (512, "ARC")
    disk, store = storage.l2_adapter_config.adapters
    assert disk.base_path.startswith(DISK + "/") and disk.max_capacity_gb == 20
    assert (store.host, store.port, store.shared, store.password) == ("kv-store", 6379, True, "")
    assert plan.lmcache.env["LMCACHE_RESP_PASSWORD"] == "store-secret-31"  # the server's environment only


@pytest.mark.parametrize("value, url", [
    ("kv-server", "tcp://kv-server:6100"),  # the port of the same .env's APPLIANCE_LMCACHE_PORT
    ("tcp://KV-Server:7000", "tcp://kv-server:7000"),
    ("10.1.2.3:5555", "tcp://10.1.2.3:5555"),
])
def test_a_replica_points_vllms_connector_at_the_kv_server(serve_parser, value, url):
    plan = make_plan(None, [], {**CLUSTER_ENV, "LMCACHE_SERVER": value})
    assert plan.errors == []
    assert (plan.role, plan.lmcache.mode, plan.lmcache.argv, plan.lmcache.disk, plan.lmcache.shared_store) == (
        "all", "external", None, None, None)
    kv = parse_serve_argv(serve_parser, plan.vllm.argv).engine_args.kv_transfer_config
    assert (kv.kv_connector, kv.kv_role) == ("LMCacheMPConnector", "kv_both")
    assert kv.kv_connector in registered_kv_connectors()
    extra = kv.kv_connector_extra_config
    assert set(extra) <= connector_extra_config_keys()
    assert extra["lmcache.mp.eager_prefetch"] is True  # vLLM-side settings still apply to the replica
    assert connector_url(extra) == url == plan.lmcache.server.url
    host = url.removeprefix("tcp://").rsplit(":", 1)[0]
    assert plan.lmcache.server.health_url == f"http://{host}:6101/healthcheck"
    # The store's password belongs to the kv-server: not in the replica's vLLM environment, not anywhere.
    assert "store-secret-31" not in json.dumps(plan.to_dict()) + json.dumps(plan.vllm.env) + " ".join(plan.vllm.argv)
    assert plan.lmcache.env == {} and "LMCACHE_SHARED_PASSWORD" in plan.vllm.env_removed


def test_both_roles_from_one_env_meet_on_the_same_port(lmcache_parser, serve_parser):
    server = parse_lmcache_server_argv(
        lmcache_parser, make_plan(None, [], {**CLUSTER_ENV, "APPLIANCE_ROLE": "kv-server"}).lmcache.argv)
    replica = make_plan(None, [], {**CLUSTER_ENV, "LMCACHE_SERVER": "kv-server"})
    extra = parse_serve_argv(serve_parser, replica.vllm.argv).engine_args.kv_transfer_config.kv_connector_extra_config
    assert connector_url(extra) == f"tcp://kv-server:{server.mp.port}"
    assert replica.lmcache.server.health_url.endswith(f":{server.http.http_port}/healthcheck")


def _non_loopback_address() -> str | None:
    """An address of this machine another container would use (not 127.x)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outbound interface
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_a_replicas_connector_reaches_a_real_kv_server_on_the_network(tmp_path):
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to reach the kv-server on")
    zmq_port, http_port, metrics_port = free_ports(3, "0.0.0.0")
    # The `lmcache` command next to this Python (a venv), else on PATH (the product image: /usr/local/bin).
    lmcache = shutil.which("lmcache", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                            os.environ.get("PATH", "")]))
    assert lmcache, "LMCache's `lmcache` command is not installed next to this Python or on PATH"
    env = {"VLLM_MODEL": MODEL, "VLLM_KV_OFFLOADING_BACKEND": "lmcache", "VLLM_KV_OFFLOADING_SIZE": "0.05",
           "LMCACHE_CHUNK_SIZE": "128", "APPLIANCE_LMCACHE_PORT": str(zmq_port),
           "APPLIANCE_LMCACHE_HTTP_PORT": str(http_port), "APPLIANCE_LMCACHE_METRICS_PORT": str(metrics_port),
           "APPLIANCE_LMCACHE_COMMAND": str(lmcache)}
    server_plan = make_plan(None, [], {**env, "APPLIANCE_ROLE": "kv-server"})
    replica_plan = make_plan(None, [], {**env, "LMCACHE_SERVER": address})
    assert server_plan.errors == [] and replica_plan.errors == []
    log = tmp_path / "lmcache.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(server_plan.lmcache.argv, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        # What the replica's launcher waits for, at the address a replica uses.
        deadline = time.monotonic() + 90
        while True:
            try:
                if requests.get(replica_plan.lmcache.server.health_url, timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the kv-server did not answer /healthcheck: " + log.read_text()[-3000:]
            time.sleep(0.5)
        import zmq
        from lmcache.v1.multiprocess.transport.factory import RequestClientFactory

        extra = json.loads(replica_plan.vllm.argv[replica_plan.vllm.argv.index("--kv-transfer-config") + 1])[
            "kv_connector_extra_config"]
        context = zmq.Context()
        client = RequestClientFactory.create(connector_url(extra), context=context)
        try:
            assert client.get_chunk_size().result(timeout=30) == 128  # the kv-server's --chunk-size
        finally:
            client.close()
            context.term()
    finally:
        stop(proc)
