#!/usr/bin/env bash
# Installs a Redis server (Debian's package; bookworm has no Valkey) for the shared-KV-store tests: the probe
# tests start it on a loopback port, the cluster test runs it in a container built from the local base image.
# Only the binary is used; the Debian service is not started (no systemd in CI).
# Usage (as root): install-redis.sh. Idempotent.
set -euo pipefail
if command -v redis-server >/dev/null; then exit 0; fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends redis-server >/dev/null
redis-server --version >&2
