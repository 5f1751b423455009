"""compose.yaml names a published release, and `docker compose up` works whether or not it can be pulled.

Pulled: a registry on loopback (Debian's docker-registry; no public registry is reachable here) holds two releases
under release tags, the previous stack's and this one's (the test images of the upgrade drill). The operator's
.env names the old tag: `docker compose pull` and `up -d --wait` run it; changing the tag, `pull` and `up -d
--wait` again upgrade it (docs/UPGRADING.md). Built: where the image cannot be pulled, `up` builds it from the
same Dockerfile under the name compose.yaml gives, with this version's label.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest
import requests

from entrypoint.version import release_tags, version

from .conftest import OLD_PINS, missing, wait_until
from .test_static_checks import COMPOSE, COMPOSE_RELEASE
from ports import free_port


@pytest.fixture(scope="module")
def registry(docker_client, tmp_path_factory):
    """host:port of a registry with its own storage, for this module only."""
    binary = shutil.which("docker-registry")
    if not binary:
        missing("docker-registry is not installed (Debian: apt-get install docker-registry; scripts/test.sh "
                "installs it)")
    where = tmp_path_factory.mktemp("registry")
    address = f"127.0.0.1:{free_port()}"
    config = where / "config.yml"
    config.write_text(f"version: 0.1\nlog: {{level: warn}}\n"
                      f"storage: {{filesystem: {{rootdirectory: {where / 'data'}}}}}\n"
                      f"http: {{addr: {address}}}\n")
    with open(where / "registry.log", "w") as log:
        proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: requests.get(f"http://{address}/v2/", timeout=2).status_code == 200, 30,
                   what="the registry to answer")
        yield address
    finally:
        proc.terminate()
        proc.wait(10)


def publish(docker_client, image: str, tag: str) -> None:
    """Push `image` as `tag` and forget it locally, as on a host that never had it."""
    docker_client.images.get(image).tag(tag)
    result = subprocess.run(["docker", "push", "-q", tag], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    docker_client.images.remove(tag)


class Project:
    """A compose project of compose.yaml + compose.release.yaml. With `directory`, that is where its .env is;
    without, the checkout is (compose.yaml's `build: .` is relative to it) and `env_file` is its interpolation
    file instead of the checkout's own .env."""

    def __init__(self, compose_binary, directory=None, env_file=None):
        self.name = f"appliance-release-{uuid.uuid4().hex[:8]}"
        where = ["--project-directory", str(directory)] if directory else ["--env-file", str(env_file)]
        self.base = [str(compose_binary), *where, "-f", str(COMPOSE), "-f", str(COMPOSE_RELEASE)]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("APPLIANCE_", "VLLM_", "LMCACHE_"))}
        self.env.update(COMPOSE_PROJECT_NAME=self.name, APPLIANCE_HOST_PORT=str(free_port()),
                        APPLIANCE_METRICS_HOST_PORT=str(free_port()))

    def compose(self, *args, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=timeout,
                              env={**self.env, **(env or {})})

    def running_image(self, docker_client) -> str:
        (c,) = docker_client.containers.list(filters={"label": f"com.docker.compose.project={self.name}"})
        c.reload()
        assert c.attrs["State"]["Health"]["Status"] == "healthy"
        return c.image.id


def test_compose_pulls_a_release_by_its_tag_and_upgrades_when_the_tag_changes(
        registry, image, old_image, compose_binary, docker_client, tmp_path):
    repository = f"{registry}/llm-appliance"
    old = f"{repository}:0.0.9-vllm{OLD_PINS['VLLM_VERSION']}-lmcache{OLD_PINS['LMCACHE_VERSION']}"
    new = f"{repository}:{release_tags()[0]}"
    publish(docker_client, old_image, old)
    publish(docker_client, image, new)
    p = Project(compose_binary, tmp_path)
    env_file = tmp_path / ".env"
    try:
        env_file.write_text(f"VLLM_SERVED_MODEL_NAME=release\nAPPLIANCE_IMAGE={old}\n")
        for step in (("pull",), ("up", "-d", "--wait")):
            result = p.compose(*step)
            assert result.returncode == 0, result.stderr
        assert p.running_image(docker_client) == docker_client.images.get(old_image).id

        # The upgrade: change the tag, pull, up.
        env_file.write_text(env_file.read_text().replace(old, new))
        for step in (("pull",), ("up", "-d", "--wait")):
            result = p.compose(*step)
            assert result.returncode == 0, result.stderr
        assert p.running_image(docker_client) == docker_client.images.get(image).id
    except BaseException:
        print("\n----- compose logs -----\n" + p.compose("logs").stdout[-10000:])
        raise
    finally:
        p.compose("down", "--volumes", "--timeout", "30")
        for tag in (old, new):
            subprocess.run(["docker", "image", "rm", tag], capture_output=True)


def test_compose_builds_the_release_where_it_cannot_be_pulled(image, compose_binary, docker_client, tmp_path):
    """Nothing listens at the registry named, as on a host that reaches no registry or before a release is
    published: `up` says the pull failed, builds the image from the Dockerfile under that name, and runs it."""
    unreachable = f"127.0.0.1:{free_port()}/llm-appliance:{release_tags()[0]}"
    (tmp_path / "empty.env").write_text("")
    p = Project(compose_binary, env_file=tmp_path / "empty.env")
    try:
        result = p.compose("up", "-d", "--wait", env={"APPLIANCE_IMAGE": unreachable})
        assert result.returncode == 0, result.stderr
        assert "connection refused" in result.stderr  # the pull was tried first
        built = docker_client.images.get(unreachable)
        assert p.running_image(docker_client) == built.id
        assert built.labels["org.opencontainers.image.version"] == version()  # compose.yaml's build argument
        assert built.labels["appliance.variant"].startswith("test")  # the Dockerfile's stage this override asks
    except BaseException:
        print("\n----- compose logs -----\n" + p.compose("logs").stdout[-10000:])
        raise
    finally:
        p.compose("down", "--volumes", "--timeout", "30")
        subprocess.run(["docker", "image", "rm", unreachable], capture_output=True)
