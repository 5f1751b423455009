#!/usr/bin/env bash
# Installs a container registry (Debian's docker-registry: the CNCF distribution server) for the compose tests
# that pull a release by its tag (tests/container/test_compose_release.py starts it on a loopback port with its
# own storage; Docker pulls from 127.0.0.1 over plain HTTP without configuration). No public registry can be
# reached from these machines. Only the binary is used; the Debian service is not started (no systemd in CI).
# Usage (as root): install-registry.sh. Idempotent.
set -euo pipefail
if command -v docker-registry >/dev/null; then exit 0; fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends docker-registry >/dev/null
docker-registry --version >&2
