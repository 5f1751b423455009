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


def documents(where: Path = K8S) -> list[dict]:
    kustomization = yaml.safe_load((where / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((where / name).read_text()) if d]
    return docs


COMPONENT = K8S / "coordinator-router"  # the coordinator and its router, opt-in (a kustomize component)


def by_kind(kind: str, name: str) -> dict:
    (doc,) = [d for d in documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


@pytest.mark.parametrize("doc", documents() + documents(COMPONENT),
                         ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
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
    assert plan.lmcache.shared_store.host == service["metadata"]["name"]
    assert plan.lmcache.shared_store.port == service["spec"]["ports"][0]["port"]
    assert plan.lmcache.env["LMCACHE_RESP_PASSWORD"] == "from-the-secret"
    mounts = {m["mountPath"] for m in container("StatefulSet", "replica")["volumeMounts"]}
    assert str(Path(env_value("LMCACHE_SHARED_PASSWORD_FILE")).parent) in mounts
    assert plan.lmcache.disk and plan.lmcache.disk.base in mounts


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


# -- the coordinator-router component ------------------------------------------------------------------------
def component() -> dict:
    return yaml.safe_load((COMPONENT / "kustomization.yaml").read_text())


def component_doc(kind: str, name: str) -> dict:
    (doc,) = [d for d in documents(COMPONENT) if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def component_env() -> dict[str, str]:
    (gen,) = component()["configMapGenerator"]
    assert gen["name"] == "appliance-env" and gen["behavior"] == "merge"  # added to the base's settings
    return dict(line.split("=", 1) for line in gen["literals"])


def test_the_component_is_offered_by_the_base_and_replaces_only_vllm_router():
    assert component()["kind"] == "Component"
    assert "#   - coordinator-router" in (K8S / "kustomization.yaml").read_text()
    patches = [yaml.safe_load(p["patch"]) for p in component()["patches"]]
    deleted = [d for d in patches if d.get("$patch") == "delete"]
    (advertise,) = [d for d in patches if d.get("$patch") != "delete"]
    # the one other patch: each replica's LMCache server registers its pod IP (its container, by name)
    assert (advertise["kind"], advertise["metadata"]["name"]) == ("StatefulSet", "replica")
    (c,) = advertise["spec"]["template"]["spec"]["containers"]
    assert c["name"] == container("StatefulSet", "replica")["name"]
    assert c["env"] == [{"name": "LMCACHE_COORDINATOR_ADVERTISE_IP",
                         "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
    # each deletion names a resource the base has (a typo would delete nothing and leave vllm-router running)
    base = {(d["kind"], d["metadata"]["name"]) for d in documents()}
    assert {(d["kind"], d["metadata"]["name"]) for d in deleted} <= base
    assert ("Deployment", "router") in {(d["kind"], d["metadata"]["name"]) for d in deleted}
    assert ("Service", "router") in base - {(d["kind"], d["metadata"]["name"]) for d in deleted}


def test_the_replicas_register_with_the_coordinator_and_the_router_finds_it(tmp_path):
    from entrypoint.cluster.router import load_config
    from entrypoint.config.sources import read_env_file
    env = {e["name"]: e["value"] for e in container("StatefulSet", "replica")["env"]}
    password = tmp_path / "password"
    password.write_text("from-the-secret\n")
    env["LMCACHE_SHARED_PASSWORD_FILE"] = str(password)
    pod_ip = {"LMCACHE_COORDINATOR_ADVERTISE_IP": "10.244.1.7"}  # from the downward API (the patch above)
    plan = make_plan(str(K8S / "appliance.env"), [], {**env, **component_env(), **pod_ip})
    assert plan.errors == []
    assert plan.lmcache.env["LMCACHE_COORDINATOR_ADVERTISE_IP"] == "10.244.1.7"
    assert plan.lmcache.env["LMCACHE_COORDINATOR_URL"] == component_env()["LMCACHE_COORDINATOR_URL"]
    assert plan.lmcache.env["LMCACHE_COORDINATOR_EVENT_REPORTING"] == "1"
    service = component_doc("Service", "coordinator")
    coordinator = component_doc("Deployment", "coordinator")["spec"]["template"]["spec"]["containers"][0]
    assert coordinator["args"][:2] == ["lmcache", "coordinator"]
    port = int(coordinator["args"][coordinator["args"].index("--port") + 1])
    assert port == service["spec"]["ports"][0]["targetPort"] == coordinator["ports"][0]["containerPort"]
    assert coordinator["readinessProbe"]["httpGet"]["port"] == port
    assert component_env()["LMCACHE_COORDINATOR_URL"] == f"http://coordinator:{service['spec']['ports'][0]['port']}"
    # the router: the appliance image's `router` command, its settings from the same config map
    router = component_doc("Deployment", "coordinator-router")["spec"]["template"]
    c = router["spec"]["containers"][0]
    assert c["args"] == ["router"] and c["envFrom"] == [{"configMapRef": {"name": "appliance-env"}}]
    values, problems = read_env_file(str(K8S / "appliance.env"), {})
    config, errors = load_config({**values, **component_env(), **{e["name"]: e["value"] for e in c["env"]}})
    assert problems == [] and errors == []
    assert config.coordinator.url == component_env()["LMCACHE_COORDINATOR_URL"]
    assert config.replicas == ()  # discovered: the servers registered with the coordinator
    assert config.replica_port == container("StatefulSet", "replica")["ports"][0]["containerPort"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": config.port}
    service_port = by_kind("Service", "router")["spec"]["ports"][0]["targetPort"]
    assert c["ports"][0]["containerPort"] == config.port == service_port
    # the base's `router` Service now selects these pods
    selector = by_kind("Service", "router")["spec"]["selector"]
    assert selector.items() <= router["metadata"]["labels"].items()


def test_kustomize_renders_the_base_with_the_component(tmp_path):
    """Where kubectl is installed (not in CI: the checks above do not need it), the real kustomize agrees."""
    import shutil
    import subprocess
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl is not installed; the manifests are checked above without it")
    copy = tmp_path / "kubernetes"
    shutil.copytree(K8S, copy)
    text = (copy / "kustomization.yaml").read_text()
    (copy / "kustomization.yaml").write_text(text.replace("# components:\n#   - coordinator-router",
                                                         "components:\n  - coordinator-router"))
    out = subprocess.run([kubectl, "kustomize", str(copy)], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("Deployment", "coordinator"), ("Service", "coordinator"), ("Deployment", "coordinator-router"),
            ("Service", "router"), ("StatefulSet", "replica")} <= names
    assert ("Deployment", "router") not in names and ("ServiceAccount", "router") not in names
    (replica,) = [d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "replica"]
    env = {e["name"]: e for e in replica["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["LMCACHE_COORDINATOR_ADVERTISE_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert "LMCACHE_SHARED_URL" in env  # merged into the base's env, not replacing it
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert cm["data"]["LMCACHE_COORDINATOR_URL"] == "http://coordinator:9300" and "VLLM_MODEL" in cm["data"]
    images = {c["image"] for d in docs if d["kind"] in ("Deployment", "StatefulSet")
              for c in d["spec"]["template"]["spec"]["containers"]}
    assert "llm-appliance" not in images  # the base's image name reached the component's pods too
    for d in docs:
        kv.validate(d, KUBERNETES_VERSION, strict=True)
