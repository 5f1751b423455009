"""Two LMCache processes of the product image (the real LMCache 0.5.6, on a CPU) share KV through a real Redis
(docker/store), with the `resp` adapter exactly as the appliance's plan writes it for LMCACHE_SHARED_URL and the
password only in LMCACHE_RESP_PASSWORD: what one container stores, another finds and loads.

The full `lmcache server` starts on a CPU (its /healthcheck answers) but only vLLM on a GPU can hand it KV to
store, so the storing and finding is done by LMCache's own L2 benchmark (`lmcache bench l2 --only store`, then
`--only lookup/load` in another container: the same keys, by design), on the server's adapter code path."""
from __future__ import annotations

import json
import os
import re
import uuid

import pytest

STORE_IMAGE = os.environ.get("APPLIANCE_TEST_STORE_IMAGE", "llm-appliance-store:test")
PASSWORD = "shared-pw-" + uuid.uuid4().hex[:8]


@pytest.fixture
def network(docker_client):
    try:
        docker_client.images.get(STORE_IMAGE)
    except Exception:
        pytest.fail(f"{STORE_IMAGE} is missing: build it with docker/build-cluster-images.sh")
    net = docker_client.networks.create(f"appliance-l2-{uuid.uuid4().hex[:8]}")
    store = docker_client.containers.run(STORE_IMAGE, ["valkey-server", "--bind", "0.0.0.0", "--requirepass",
                                                       PASSWORD, "--save", ""],
                                         name=f"{net.name}-store", network=net.name, detach=True)
    try:
        yield net.name, store.name
    finally:
        store.remove(force=True, v=True)
        net.remove()


def run(docker_client, image, command, network, env=None, timeout=180) -> tuple[int, str]:
    c = docker_client.containers.create(image, command, network=network, environment=env or {})
    try:
        c.start()
        code = c.wait(timeout=timeout)["StatusCode"]
        return code, c.logs().decode(errors="replace")
    finally:
        c.remove(force=True, v=True)


def bench(docker_client, image, network, adapter: str, op: str, password: str) -> dict[str, float]:
    code, out = run(docker_client, image, ["lmcache", "bench", "l2", "--l2-adapter", adapter, "--only", op,
                                           "--num-keys", "16", "--data-size-kb", "64", "--rounds", "1",
                                           "--warmup-rounds", "0", "--lookup-max-hit-rate", "1.0"],
                    network, env={"LMCACHE_RESP_PASSWORD": password})
    assert code == 0, out[-3000:]
    assert password not in out
    return {k.strip(): float(v) for k, v in re.findall(r"^([A-Za-z /()]+):\s+([\d.]+)$", out, re.M)}


def test_what_one_lmcache_stores_another_finds_through_the_shared_store(docker_client, product_image, network):
    net, host = network
    code, out = run(docker_client, product_image, ["config", "--format", "json"], net, env={
        "LMCACHE_SHARED_URL": f"redis://{host}:6379", "LMCACHE_SHARED_PASSWORD": PASSWORD})
    assert code == 0, out
    plan = json.loads(out[out.index("{"):])
    argv = plan["lmcache"]["argv"]
    (adapter,) = [a for i, a in enumerate(argv) if i and argv[i - 1] == "--l2-adapter" and '"resp"' in a]
    assert json.loads(adapter) == {"type": "resp", "host": host, "port": 6379, "shared": True}
    assert PASSWORD not in out

    assert bench(docker_client, product_image, net, adapter, "lookup", PASSWORD)["Actual hit rate"] == 0.0
    stored = bench(docker_client, product_image, net, adapter, "store", PASSWORD)
    assert stored["Total success"] == 16
    found = bench(docker_client, product_image, net, adapter, "lookup", PASSWORD)
    assert found["Actual hit rate"] == 1.0
    loaded = bench(docker_client, product_image, net, adapter, "load", PASSWORD)
    assert loaded["Total success"] == 16
    # Without the password the store refuses it: it really is what authenticated the others.
    assert bench(docker_client, product_image, net, adapter, "lookup", "wrong")["Actual hit rate"] == 0.0
