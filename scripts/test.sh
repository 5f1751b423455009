#!/usr/bin/env bash
# The one test command (README, .ci/run): installs what the tests need, then runs every suite.
#   unit        settings -> plan, every error message                         (always)
#   contract    our argv/config parsed by the real vLLM 0.26.0 / LMCache 0.5.3 (CPU venv, installed here)
#   supervisor  real supervisord started by `serve`, stub servers, fault injection
#   container   the real Dockerfile on a local base image, real Docker daemon (skips without Docker)
# Environment: APPLIANCE_TEST_VENV (default ~/.cache/appliance/contract-venv), APPLIANCE_TEST_DOCKER=0 to skip
# starting Docker (the container tests then skip with a reason). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${APPLIANCE_TEST_VENV:-$HOME/.cache/appliance/contract-venv}

bash scripts/ci/install-contract-venv.sh "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check testcontainers==4.15.0 matplotlib >&2
eval "$(bash scripts/ci/install-lint-tools.sh "$VENV")"
export HADOLINT DOCKER_COMPOSE

if [ "${APPLIANCE_TEST_DOCKER:-1}" != 0 ]; then
    bash scripts/ci/start-docker.sh
    bash scripts/ci/build-local-base.sh
    bash scripts/ci/build-test-image.sh
    export CONTAINER_TESTS_REQUIRED=1  # Docker is there: a container test that would skip must fail instead
fi

export TESTCONTAINERS_RYUK_DISABLED=true  # the reaper image cannot be pulled here; fixtures clean up
exec "$VENV/bin/python" -m pytest tests -ra "$@"
