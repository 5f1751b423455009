"""The kv-server role with the real LMCache 0.5.6 of the product image, on a CPU: `serve` with
APPLIANCE_ROLE=kv-server runs the supervised LMCache server alone, healthy, and a second container on the same
Docker network (standing in for a replica) reaches it at the URL its own plan gives vLLM's connector for
LMCACHE_SERVER, through LMCache's own request client: the server answers with the chunk size the shared settings
gave it. vLLM itself needs a GPU: what it does with that URL is the contract tests' (tests/contract/
test_cluster_roles.py)."""
from __future__ import annotations

import json
import time
import uuid

# A replica's side, run in the second container: its plan (the appliance's `config`), then the first request
# vLLM's LMCache connector sends its server (vllm_multi_process_adapter.get_lmcache_chunk_size).
REPLICA_PROBE = """
import json, subprocess, sys
import zmq
from lmcache.v1.multiprocess.transport.factory import RequestClientFactory
plan = json.loads(subprocess.run([sys.executable, "-m", "entrypoint", "config", "--format", "json"],
                                 capture_output=True, text=True, check=True).stdout)
assert plan["lmcache"]["mode"] == "external" and plan["lmcache"]["argv"] is None, plan["lmcache"]
url = plan["lmcache"]["server"]["url"]
context = zmq.Context()
client = RequestClientFactory.create(url, context=context)
print("CHUNK", url, client.get_chunk_size().result(timeout=60), flush=True)
client.close()
context.term()
"""


def exec_json(container, *args):
    code, (out, err) = container.exec_run(["python3", "-m", "entrypoint", *args], demux=True)
    return code, json.loads(out) if out else None, (err or b"").decode(errors="replace")


def test_the_kv_server_role_serves_lmcache_to_another_container(docker_client, product_image):
    net = docker_client.networks.create(f"appliance-kv-{uuid.uuid4().hex[:8]}")
    name = f"{net.name}-kv-server"
    # One .env for both containers, as compose.cluster.yaml gives it; the role and LMCACHE_SERVER per container.
    # supervisord's RUNNING comes after the start grace, APPLIANCE_STARTUP_TIMEOUT. It must still cover the real
    # LMCache server's imports on a busy machine (the suites run in parallel): with 5 s, a server that took
    # 11 s to answer there was restarted by the watchdog over and over.
    shared = {"VLLM_KV_OFFLOADING_SIZE": "0.5", "LMCACHE_CHUNK_SIZE": "128", "APPLIANCE_HEALTH_INTERVAL": "2",
              "APPLIANCE_STARTUP_TIMEOUT": "30"}
    server = docker_client.containers.run(product_image, network=net.name, name=name, detach=True,
                                          environment={**shared, "APPLIANCE_ROLE": "kv-server",
                                                       "STUB_NO_GPU": "1"})  # no GPU on this machine
    try:
        deadline = time.monotonic() + 180
        while True:
            code, _ = server.exec_run(["python3", "-m", "entrypoint", "healthcheck"])
            if code == 0:
                break
            server.reload()
            assert server.status == "running", server.logs().decode(errors="replace")[-4000:]
            assert time.monotonic() < deadline, server.logs().decode(errors="replace")[-4000:]
            time.sleep(2)
        while (status := exec_json(server, "status", "--format", "json"))[0] != 0:  # 1 while a program is STARTING
            assert time.monotonic() < deadline, status
            time.sleep(1)
        status = status[1]
        assert status["role"] == "kv-server" and status["lmcache_up"] is True
        assert {p["name"]: p["state"] for p in status["processes"]} == {
            "lmcache": "RUNNING", "logs": "RUNNING", "metrics": "RUNNING", "on-fatal": "RUNNING", "watchdog": "RUNNING"}
        code, plan, err = exec_json(server, "config", "--format", "json")
        argv = plan["lmcache"]["argv"]
        assert argv[argv.index("--host") + 1] == argv[argv.index("--http-host") + 1] == "0.0.0.0"

        replica = docker_client.containers.create(product_image, ["python3", "-c", REPLICA_PROBE], network=net.name,
                                                  environment={**shared, "LMCACHE_SERVER": name})
        try:
            replica.start()
            code = replica.wait(timeout=180)["StatusCode"]
            out = replica.logs().decode(errors="replace")
        finally:
            replica.remove(force=True, v=True)
        assert code == 0, out[-4000:]
        assert f"CHUNK tcp://{name}:5555 128" in out, out[-4000:]
    finally:
        server.remove(force=True, v=True)
        net.remove()
