#!/usr/bin/env bash
# Installs the Prometheus server (Debian's package) for the monitoring test: it scrapes a running test container
# and answers PromQL. Only the binary is used; the Debian service is not started (no systemd in CI).
# Usage (as root): install-prometheus.sh. Idempotent.
set -euo pipefail
if command -v prometheus >/dev/null; then exit 0; fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
prometheus --version 2>&1 | head -n 1 >&2
