"""deploy/kubernetes: every manifest valid against Kubernetes' own schemas (kubernetes-validate ships them, so
this runs offline), and consistent with the appliance: its settings file builds a valid plan with the shared
store, the replicas point at the store's Service, the router finds the replicas by their labels, and the router
image is the one docker/router/Dockerfile pins."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from entrypoint.config.load import make_plan

yaml = pytest.importorskip("yaml")
kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed (pip install "
                         "-c requirements/test.txt '.[test]')")

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.33"  # a release current providers run; the manifests use only stable APIs


def documents() -> list[dict]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return docs


def by_kind(kind: str, name: str) -> dict:
    (doc,) = [d for d in documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


@pytest.mark.parametrize("doc", documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_every_resource_is_valid_for_kubernetes(doc):
    kv.validate(doc, KUBERNETES_VERSION, strict=True)  # raises ValidationError (unknown fields too)


def test_an_invalid_resource_is_refused():
    """The check above can fail: a misspelt field is an error."""
    bad = by_kind("StatefulSet", "replica")
    bad["spec"]["template"]["spec"]["containers"][0]["envFromm"] = []
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, KUBERNETES_VERSION, strict=True)


def container(kind: str, name: str) -> dict:
    return by_kind(kind, name)["spec"]["template"]["spec"]["containers"][0]


def test_the_replicas_settings_make_a_valid_plan_with_the_shared_store(tmp_path):
    env = {e["name"]: e["value"] for e in container("StatefulSet", "replica")["env"]}
    password = tmp_path / "password"
    password.write_text("from-the-secret\n")
    env["LMCACHE_SHARED_PASSWORD_FILE"] = str(password)  # where the Secret is mounted in the pod
    plan = make_plan(str(K8S / "appliance.env"), [], env)
    assert plan.errors == []
    service = by_kind("Service", "kv-store")
    assert plan.shared_store["host"] == service["metadata"]["name"]
    assert plan.shared_store["port"] == service["spec"]["ports"][0]["port"]
    assert plan.lmcache_env["LMCACHE_RESP_PASSWORD"] == "from-the-secret"
    mounts = {m["mountPath"] for m in container("StatefulSet", "replica")["volumeMounts"]}
    assert str(Path(env_value("LMCACHE_SHARED_PASSWORD_FILE")).parent) in mounts
    assert plan.disk and plan.disk.base in mounts


def env_value(name: str) -> str:
    return next(e["value"] for e in container("StatefulSet", "replica")["env"] if e["name"] == name)


def test_the_router_finds_the_replicas_and_is_the_pinned_image():
    args = container("Deployment", "router")["args"]
    selector = args[args.index("--selector") + 1]
    key, value = selector.split("=")
    assert by_kind("StatefulSet", "replica")["spec"]["template"]["metadata"]["labels"][key] == value
    assert args[args.index("--service-discovery-port") + 1] == "8000"
    pinned = re.search(r"^ARG ROUTER_VERSION=(\S+)$", (ROOT / "docker/router/Dockerfile").read_text(), re.M)
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    tags = {i["name"]: i["newTag"] for i in kustomization["images"]}
    assert tags["llm-appliance-router"] == pinned.group(1)
    compose = (ROOT / "compose.cluster.yaml").read_text()
    assert f"llm-appliance-router:{pinned.group(1)}" in compose


def test_probes_are_the_images_own_check():
    c = container("StatefulSet", "replica")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["exec"]["command"] == ["python3", "-m", "entrypoint", "healthcheck"]
