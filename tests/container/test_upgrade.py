"""The upgrade drill (docs/UPGRADING.md), through `docker compose` as an operator runs it.

Two test images that differ in their pins (the stubs report the versions they were built as): the previous
stack and the current one (entrypoint/versions.env). The old one runs on an .env and both named volumes until
healthy, its disk tier populated; then `APPLIANCE_IMAGE=<new> docker compose up -d --wait` on the same
project, .env and volumes must become healthy with the .env unchanged. The old LMCache version's disk
namespace is left alone and counts against the cap (its files, no longer used, pruned first), and `config`
says so. Then the rollback, new -> old, the same way: the old version finds its own namespace again.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import urllib.request
import uuid

from entrypoint.config.schema import pinned_versions

from .conftest import OLD_PINS, ROOT, problem_lines, wait_until
from .test_static_checks import COMPOSE
from ports import free_port

COMPOSE_UPGRADE = ROOT / "tests" / "container" / "compose.upgrade.yaml"
MIB = 1 << 20
CAP_GIB = 0.01  # ~10.7 MB: a few MiB files show the cap at work
CAP = int(CAP_GIB * (1 << 30))
KV_BASE = "/var/lib/appliance/kv-disk"
ENV_FILE = f"""# the operator's .env: written once, never changed by the upgrade
VLLM_SERVED_MODEL_NAME=drill
VLLM_KV_OFFLOADING_BACKEND=lmcache
VLLM_KV_OFFLOADING_SIZE=1
LMCACHE_LOCAL_DISK=true
LMCACHE_MAX_LOCAL_DISK_SIZE={CAP_GIB}
"""


class Project:
    """One compose project (its .env in its own directory) whose image is switched by APPLIANCE_IMAGE."""

    def __init__(self, compose_binary, directory, docker_client):
        self.dir, self.docker = directory, docker_client
        self.name = f"appliance-drill-{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.metrics_port = free_port()
        self.base = [str(compose_binary), "--project-directory", str(directory), "-f", str(COMPOSE),
                     "-f", str(COMPOSE_UPGRADE)]

    def compose(self, *args, image: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("APPLIANCE_", "VLLM_", "LMCACHE_"))}
        env.update(COMPOSE_PROJECT_NAME=self.name, APPLIANCE_HOST_PORT=str(self.port),
                   APPLIANCE_METRICS_HOST_PORT=str(self.metrics_port))
        if image:
            env["APPLIANCE_IMAGE"] = image  # the operator's switch, given to compose, not written to .env
        return subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=timeout, env=env)

    def up(self, image: str):
        result = self.compose("up", "-d", "--wait", image=image)
        assert result.returncode == 0, result.stderr + self.compose("logs", image=image).stdout

    def volumes(self) -> dict[str, str]:
        """mount point -> named volume of the running container."""
        return {m["Destination"]: m["Name"] for m in self.container().attrs["Mounts"] if m["Type"] == "volume"}

    def container(self):
        (c,) = self.docker.containers.list(filters={"label": f"com.docker.compose.project={self.name}"})
        return c

    def sh(self, script: str) -> str:
        code, out = self.container().exec_run(["sh", "-c", script])
        text = out.decode(errors="replace")
        assert code == 0, f"{script}: exit {code}: {text}"
        return text

    def plan(self) -> dict:
        return json.loads(self.sh("python3 -m entrypoint config --format json 2>/dev/null"))

    def versions(self) -> tuple[str, str]:
        vllm = json.load(urllib.request.urlopen(f"http://127.0.0.1:{self.port}/version", timeout=5))["version"]
        lmcache = json.loads(self.sh("python3 -c 'import urllib.request as u; "
                                     "print(u.urlopen(\"http://127.0.0.1:8080/healthcheck\").read().decode())'"))
        return vllm, lmcache["version"]

    def files(self) -> dict[str, int]:
        """path -> size of every file under the disk-tier volume."""
        out = self.sh(f"find {KV_BASE} -type f -printf '%p %s\\n'")
        return {line.rsplit(" ", 1)[0]: int(line.rsplit(" ", 1)[1]) for line in out.splitlines() if line}

    def write(self, directory: str, names: list[str]) -> None:
        """Files as LMCache's disk tier writes them (1 MiB each), owned by the appliance's user."""
        cmds = [f"head -c {MIB} /dev/urandom > {shlex.quote(directory)}/{n}" for n in names]
        self.sh(f"mkdir -p {shlex.quote(directory)} && " + " && ".join(cmds))


def namespace_of(plan: dict) -> str:
    return plan["lmcache"]["disk"]["path"]


def chunks_in(files: dict, ns: str) -> dict:
    """The KV files of one namespace: not the appliance's own small records next to them (the dot files: the
    KV identity's manifest, the pre-warm key list)."""
    return {f: s for f, s in files.items() if f.startswith(ns + "/") and not f.rsplit("/", 1)[1].startswith(".")}


def test_upgrade_and_rollback_through_compose(image, old_image, compose_binary, docker_client, tmp_path):
    new_pins = pinned_versions()
    assert (new_pins["VLLM_VERSION"], new_pins["LMCACHE_VERSION"]) != (OLD_PINS["VLLM_VERSION"],
                                                                         OLD_PINS["LMCACHE_VERSION"])
    env_file = tmp_path / ".env"
    env_file.write_text(ENV_FILE)
    p = Project(compose_binary, tmp_path, docker_client)
    try:
        # -- the old release, healthy, with a populated disk tier --------------------------------------------
        p.up(old_image)
        assert p.versions() == (OLD_PINS["VLLM_VERSION"], OLD_PINS["LMCACHE_VERSION"])
        old_plan = p.plan()
        old_ns = namespace_of(old_plan)
        assert old_ns.startswith(KV_BASE + "/") and old_ns.endswith(f"__lmcache-{OLD_PINS['LMCACHE_VERSION']}")
        p.write(old_ns, [f"old-{i}" for i in range(4)])
        old_files = chunks_in(p.files(), old_ns)
        assert len(old_files) == 4
        volumes = p.volumes()
        assert set(volumes) == {KV_BASE, "/var/lib/appliance/hf-cache"}

        # -- upgrade: stop, switch APPLIANCE_IMAGE, up ---------------------------------------------------------
        assert p.compose("stop", image=old_image).returncode == 0
        p.up(image)
        assert p.versions() == (new_pins["VLLM_VERSION"], new_pins["LMCACHE_VERSION"])
        assert env_file.read_text() == ENV_FILE and p.volumes() == volumes
        new_plan = p.plan()
        assert new_plan["errors"] == []
        new_ns = namespace_of(new_plan)
        assert new_ns.endswith(f"__lmcache-{new_pins['LMCACHE_VERSION']}") and new_ns != old_ns
        # `config` says what happens to the old namespace: kept, not read, counted against the cap.
        others = new_plan["lmcache"]["disk"]["others"]
        assert "kept, not read" in others and "count against LMCACHE_MAX_LOCAL_DISK_SIZE" in others
        text = p.sh("python3 -m entrypoint config")
        assert f"Other namespaces in {KV_BASE}: kept, not read" in text
        # The start said once that the volume holds another KV identity's cache, and why (the versions).
        log = p.container().logs().decode(errors="replace")
        assert log.count("the disk tier holds KV of another identity") == 1
        assert f"lmcache: {OLD_PINS['LMCACHE_VERSION']} -> {new_pins['LMCACHE_VERSION']}" in log
        # Left alone: the old version's files are still there, unchanged.
        files = p.files()
        assert chunks_in(files, old_ns) == old_files
        lmcache_argv = new_plan["lmcache"]["argv"]
        assert any(new_ns in a for a in lmcache_argv) and not any(old_ns in a for a in lmcache_argv)

        # Counted against the cap: the new version fills its namespace past the cap together with the old
        # one; the watchdog prunes the least recently used files, the old version's first.
        assert (len(old_files) + 7) * MIB > CAP
        p.write(new_ns, [f"new-{i}" for i in range(7)])
        wait_until(lambda: sum(p.files().values()) <= CAP, 30, what="the disk tier to be pruned to its cap")
        files = p.files()
        assert all(f"{new_ns}/new-{i}" in files for i in range(7)), sorted(files)
        left_old = sorted(chunks_in(files, old_ns))
        assert len(left_old) < 4 and left_old == sorted(old_files)[4 - len(left_old):]  # oldest removed first
        assert problem_lines(p.container().logs().decode(errors="replace")) == []

        # -- rollback: the same switch back ------------------------------------------------------------------
        assert p.compose("stop", image=image).returncode == 0
        p.up(old_image)
        assert p.versions() == (OLD_PINS["VLLM_VERSION"], OLD_PINS["LMCACHE_VERSION"])
        assert env_file.read_text() == ENV_FILE and p.volumes() == volumes
        rolled = p.plan()
        assert rolled["errors"] == [] and namespace_of(rolled) == old_ns  # its own namespace again
        files = p.files()
        assert all(f"{new_ns}/new-{i}" in files for i in range(7))  # the newer version's files left alone
        assert sum(files.values()) <= CAP
    except BaseException:
        print("\n----- compose logs -----\n" + p.compose("logs").stdout[-20000:])
        raise
    finally:
        p.compose("down", "--volumes", "--timeout", "30")
