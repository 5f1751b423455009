"""compose.cluster.yaml on a CPU host (docker/compose.cluster.test.yaml): the kv-server and two replicas of the
stub test image, a real Redis store (Debian's redis-server, docker/store; profile `store`) and the real vLLM
router (vllm-router from PyPI, docker/router), through compose itself. The replicas reach the kv-server's
LMCache server over the compose network; the router spreads requests over both replicas and stops sending to
one that dies; the replicas serve on while the kv-server is gone (reported, not restarted); the kv-server serves
with and without its store, seeing it go and come back."""
from __future__ import annotations

import json
import os
import subprocess
import time
import uuid

import pytest
import requests

from .conftest import ROOT, _failed, wait_until
from ports import free_port

CLUSTER = ROOT / "compose.cluster.yaml"
CLUSTER_TEST = ROOT / "docker" / "compose.cluster.test.yaml"
STORE_IMAGE = os.environ.get("APPLIANCE_TEST_STORE_IMAGE", "llm-appliance-store:test")
ROUTER_IMAGE = os.environ.get("APPLIANCE_TEST_ROUTER_IMAGE", "llm-appliance-router:test")




class Cluster:
    def __init__(self, compose_binary, project: str, env: dict[str, str]):
        self.binary, self.project, self.env = compose_binary, project, env
        self.port = int(env["APPLIANCE_HOST_PORT"])

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        files = [a for f in ("compose.yaml", CLUSTER, CLUSTER_TEST) for a in ("-f", str(f))]
        return subprocess.run([str(self.binary), *files, "-p", self.project, *args], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def container(self, docker_client, service: str):
        (c,) = docker_client.containers.list(all=True, filters={
            "label": [f"com.docker.compose.project={self.project}", f"com.docker.compose.service={service}"]})
        return c

    def complete(self) -> str | None:
        """One completion through the router: the host name of the replica that answered, or None."""
        try:
            r = requests.post(f"http://127.0.0.1:{self.port}/v1/completions", timeout=10,
                              json={"model": "Qwen/Qwen3-0.6B", "prompt": f"hi {uuid.uuid4().hex}", "max_tokens": 1})
        except requests.RequestException:
            return None
        return r.json().get("system_fingerprint") if r.status_code == 200 else None


def gauge(container, name: str) -> float | None:
    """An appliance_* gauge as the container's metrics endpoint shows it (read inside the container)."""
    code, out = container.exec_run(["python3", "-c", "import urllib.request as u; print(u.urlopen("
                                    "'http://127.0.0.1:9464/metrics', timeout=5).read().decode())"])
    if code != 0:
        return None
    for line in out.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def store_up(container) -> float | None:
    return gauge(container, "appliance_shared_store_up")


def server_up(container) -> float | None:
    return gauge(container, "appliance_lmcache_server_up")


def run_json(container, *args: str):
    """`python3 -m entrypoint ARGS` inside the container: its stdout as JSON (warnings go to stderr)."""
    code, (out, err) = container.exec_run(["python3", "-m", "entrypoint", *args], demux=True)
    assert code == 0, (err or b"").decode()[-2000:]
    return json.loads(out)


def programs(container) -> list[str]:
    return sorted(p["name"] for p in run_json(container, "status", "--format", "json")["processes"])


@pytest.fixture
def cluster(request, image, docker_client, compose_binary):
    for extra in (STORE_IMAGE, ROUTER_IMAGE):
        try:
            docker_client.images.get(extra)
        except Exception:
            pytest.fail(f"{extra} is missing: build it with docker/build-cluster-images.sh")
    project = f"appliance-cluster-{uuid.uuid4().hex[:8]}"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root"),
           "APPLIANCE_TEST_IMAGE": image, "APPLIANCE_TEST_STORE_IMAGE": STORE_IMAGE,
           "APPLIANCE_TEST_ROUTER_IMAGE": ROUTER_IMAGE, "APPLIANCE_HOST_PORT": str(free_port()),
           "APPLIANCE_ROUTER_POLICY": "round_robin", "APPLIANCE_ROUTER_HEALTH_INTERVAL": "1",
           "APPLIANCE_STORE_MAXMEMORY": "64mb", "COMPOSE_PROFILES": "store"}
    c = Cluster(compose_binary, project, env)
    try:
        yield c
    finally:
        if _failed(request.node):
            print("\n----- compose logs -----\n" + c.compose("logs", "--no-color", timeout=60).stdout[-20000:])
        c.compose("down", "--volumes", "--timeout", "5", timeout=120)


def test_cluster_serves_through_the_router_and_survives_a_replica_the_kv_server_and_the_store(cluster,
                                                                                                 docker_client):
    started = time.monotonic()
    up = cluster.compose("up", "--wait", "--wait-timeout", "180", timeout=240)
    assert up.returncode == 0, up.stderr[-4000:]
    print(f"cluster healthy in {time.monotonic() - started:.1f} s")
    names = ("kv-server", "replica-0", "replica-1", "kv-store", "router")
    services = {s: cluster.container(docker_client, s) for s in names}
    for name, c in services.items():
        c.reload()
        assert c.attrs["State"]["Health"]["Status"] == "healthy", name
    hosts = {name: services[name].attrs["Config"]["Hostname"] for name in ("replica-0", "replica-1")}
    # Only the router is published; the LMCache server and the store are reached by service name.
    published = {name: [p for p, binding in c.ports.items() if binding] for name, c in services.items()}
    assert published == {"kv-server": [], "replica-0": [], "replica-1": [], "kv-store": [], "router": ["8000/tcp"]}
    # One LMCache server for the host, in the kv-server; vLLM only in the replicas, pointed at it.
    assert programs(services["kv-server"]) == ["lmcache", "logs", "metrics", "on-fatal", "watchdog"]
    for name in ("replica-0", "replica-1"):
        assert programs(services[name]) == ["gap", "logs", "metrics", "on-fatal", "vllm", "watchdog"]
        plan = run_json(services[name], "config", "--format", "json")
        assert plan["lmcache"]["mode"] == "external" and plan["lmcache"]["server"]["url"] == "tcp://kv-server:5555"
        # The ZMQ port vLLM's connector uses, across the compose network (the health port: the metric below).
        code, out = services[name].exec_run(["python3", "-c", "import socket; socket.create_connection("
                                             "('kv-server', 5555), timeout=5).close()"])
        assert code == 0, out.decode()[-2000:]
    wait_until(lambda: server_up(services["replica-0"]) == 1.0 and server_up(services["replica-1"]) == 1.0, 30,
               what="both replicas to see the kv-server")
    wait_until(lambda: store_up(services["kv-server"]) == 1.0, 30, what="the kv-server to see the store")

    # Round robin through the router reaches both replicas.
    answered = [cluster.complete() for _ in range(8)]
    assert None not in answered
    assert set(answered) == set(hosts.values()), answered

    # A replica dies: the router stops sending to it (health checks every second, 2 failures) and serving goes on.
    services["replica-0"].stop(timeout=0)
    wait_until(lambda: json.loads(requests.get(f"http://127.0.0.1:{cluster.port}/readiness", timeout=5).text)
               .get("healthy_workers") == 1, 30, what="the router to mark replica-0 unhealthy")
    answered = [cluster.complete() for _ in range(6)]
    assert answered == [hosts["replica-1"]] * 6, answered

    # The store dies: the kv-server keeps serving, says so (metric 0), and uses it again when it is back.
    services["kv-store"].stop(timeout=0)
    wait_until(lambda: store_up(services["kv-server"]) == 0.0, 30, what="appliance_shared_store_up 0")
    logs = services["kv-server"].logs().decode(errors="replace")
    assert "the shared KV store redis://kv-store:6379 (LMCACHE_SHARED_URL) does not answer" in logs
    services["kv-store"].start()
    wait_until(lambda: store_up(services["kv-server"]) == 1.0, 30, what="appliance_shared_store_up 1 again")

    # The kv-server goes away and comes back: the replica serves on (the stub vLLM does not need it), says so,
    # and is not restarted for it.
    services["kv-server"].stop(timeout=10)
    wait_until(lambda: server_up(services["replica-1"]) == 0.0, 30, what="appliance_lmcache_server_up 0")
    assert [cluster.complete() for _ in range(3)] == [hosts["replica-1"]] * 3
    logs = services["replica-1"].logs().decode(errors="replace")
    assert "the LMCache server tcp://kv-server:5555 (LMCACHE_SERVER) does not answer" in logs
    services["kv-server"].start()
    wait_until(lambda: server_up(services["replica-1"]) == 1.0, 60, what="appliance_lmcache_server_up 1 again")
    services["replica-1"].reload()
    assert services["replica-1"].attrs["State"]["Health"]["Status"] == "healthy"
    assert services["replica-1"].attrs["RestartCount"] == 0
    assert run_json(services["replica-1"], "status", "--format", "json")["restarts"].get("vllm", {}) == {}


def _config(compose_binary, env: dict[str, str]) -> dict:
    out = subprocess.run([str(compose_binary), "-f", "compose.yaml", "-f", str(CLUSTER), "config", "--format", "json"],
                         cwd=ROOT, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["services"]


def test_kv_server_and_replicas_are_the_single_appliance_in_their_roles(compose_binary):
    """The anchor repeats compose.yaml's service (compose's `extends` cannot be overridden): same image, checks,
    limits, IPC namespace and stop grace. The kv-server: the KV-server role, every GPU, the disk-tier volume. The
    replicas: LMCACHE_SERVER at it, each on its own GPUs, no disk volume. The store only in its profile."""
    services = _config(compose_binary, {})
    single = _config_single(compose_binary)
    assert "appliance" not in services  # parked in the `single` profile: the router has the port
    assert sorted(services) == ["kv-server", "replica-0", "replica-1", "router"]  # kv-store: profile `store`
    for name in ("kv-server", "replica-0", "replica-1"):
        for key in ("image", "env_file", "ipc", "ulimits", "healthcheck", "restart", "stop_grace_period", "build"):
            assert services[name].get(key) == single.get(key), (name, key)
        assert "ports" not in services[name]
    assert services["kv-server"]["ipc"] == "host" and services["kv-server"]["ulimits"]["memlock"] == -1
    server = services["kv-server"]
    assert server["environment"] == {"APPLIANCE_ROLE": "kv-server"}
    assert server["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": -1, "capabilities": ["gpu"]}]  # all: it maps every replica's GPU memory
    assert [(v["source"], v["target"]) for v in server["volumes"]] == [("kv-disk", "/var/lib/appliance/kv-disk")]
    for i in (0, 1):
        replica = services[f"replica-{i}"]
        assert replica["deploy"]["resources"]["reservations"]["devices"] == [
            {"driver": "nvidia", "device_ids": [str(i)], "capabilities": ["gpu"]}]
        assert [v["source"] for v in replica["volumes"]] == ["hf-cache"]
        assert replica["environment"] == {"LMCACHE_SERVER": "kv-server"}
        assert replica["depends_on"]["kv-server"]["condition"] == "service_started"
    assert [(p["published"], p["target"]) for p in services["router"]["ports"]] == [("8000", 8000)]
    with_store = _config(compose_binary, {"COMPOSE_PROFILES": "store"})
    store = with_store["kv-store"]["command"]
    assert store[store.index("--maxmemory-policy") + 1] == "allkeys-lru" and "--maxmemory" in store
    assert [v["target"] for v in with_store["kv-store"]["volumes"]] == ["/data"]


def _config_single(compose_binary) -> dict:
    out = subprocess.run([str(compose_binary), "-f", "compose.yaml", "config", "--format", "json"], cwd=ROOT,
                         env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["services"]["appliance"]


def test_replica_count_gpus_and_router_workers_come_from_the_env(compose_binary):
    services = _config(compose_binary, {
        "COMPOSE_PROFILES": "replicas-3", "APPLIANCE_REPLICA_0_GPUS": "0,1", "APPLIANCE_REPLICA_1_GPUS": "2,3",
        "APPLIANCE_REPLICA_2_GPUS": "4,5", "VLLM_PORT": "9000", "APPLIANCE_ROUTER_POLICY": "round_robin",
        "APPLIANCE_ROUTER_WORKERS": "http://replica-0:9000 http://replica-1:9000 http://replica-2:9000"})
    assert sorted(services) == ["kv-server", "replica-0", "replica-1", "replica-2", "router"]
    gpus = [services[f"replica-{i}"]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]
            for i in range(3)]
    assert gpus == [["0,1"], ["2,3"], ["4,5"]]  # one id string: Docker passes it on as NVIDIA_VISIBLE_DEVICES
    command = services["router"]["command"]
    workers = command[command.index("--worker-urls") + 1:command.index("--health-check-interval-secs")]
    assert workers == ["http://replica-0:9000", "http://replica-1:9000", "http://replica-2:9000"]
    assert command[command.index("--policy") + 1] == "round_robin"
    assert [(p["published"], p["target"]) for p in services["router"]["ports"]] == [("9000", 8000)]
