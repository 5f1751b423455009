#!/usr/bin/env bash
# Makes sure a Docker daemon answers on /var/run/docker.sock, for the container tests.
# CI machines here have a docker CLI but no daemon and no systemd, so we install Debian's docker.io and
# start dockerd by hand. Idempotent: a daemon that already answers is left alone.
#
# Usage (as root): scripts/ci/start-docker.sh
# Env knobs:
#   DOCKER_STORAGE_DRIVER  force a storage driver (default: overlay2 if an overlay mount works here, else vfs)
#   DOCKER_START_TIMEOUT   seconds to wait for the daemon (default 60)
#   DOCKERD_LOG            daemon log file (default /tmp/dockerd.log)
#
# Builders with this combination (daemon: Debian docker.io 20.10; CLI on PATH may be a newer one, e.g. 28.x
# in /usr/local/bin, with no buildx plugin, and bookworm/bookworm-backports ship no docker-buildx):
#   - DOCKER_BUILDKIT=1 with a CLI >= 23 and no buildx fails ("BuildKit is enabled but the buildx component
#     is missing or broken"). Leave DOCKER_BUILDKIT unset or set it to 0: the CLI falls back to the classic
#     builder, which builds every stage up to --target in order, including stages the target does not need.
#   - Debian's own /usr/bin/docker (20.10) has BuildKit built in: DOCKER_BUILDKIT=1 /usr/bin/docker build
#     works and builds only the stages the --target depends on.
set -euo pipefail

LOG=${DOCKERD_LOG:-/tmp/dockerd.log}
TIMEOUT=${DOCKER_START_TIMEOUT:-60}
export DEBIAN_FRONTEND=noninteractive

say() { echo "start-docker: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

daemon_answers() { docker info >/dev/null 2>&1; }

[ "$(id -u)" = 0 ] || die "must run as root (installs packages, starts dockerd)"

# The newer CLI in /usr/local/bin may be there without a daemon; only the daemon answering counts.
if command -v docker >/dev/null 2>&1 && daemon_answers; then
    say "daemon already running: $(docker info --format '{{.ServerVersion}} / {{.Driver}}')"
    exit 0
fi

# --- install ---------------------------------------------------------------------------------------------
# docker.io pulls containerd, runc and tini; iptables is what dockerd uses for the bridge's NAT.
# apt-get update first: a fresh machine may have no package lists at all.
if ! command -v dockerd >/dev/null 2>&1 || ! command -v iptables >/dev/null 2>&1; then
    say "installing docker.io + iptables from Debian"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends docker.io iptables ca-certificates >/dev/null
fi
command -v dockerd >/dev/null || die "dockerd still missing after installing docker.io"

# --- choose options --------------------------------------------------------------------------------------
args=(--host=unix:///var/run/docker.sock)

# Storage driver: overlay2 is much faster and smaller than vfs (which copies every layer in full), but
# needs an overlay mount on the filesystem holding /var/lib/docker; that fails e.g. when /var/lib/docker
# itself is on overlayfs (docker-in-docker). Probe with a real mount rather than guessing.
probe_overlay() {
    local d rc=1
    mkdir -p /var/lib/docker
    d=$(mktemp -d /var/lib/docker/.overlay-probe.XXXXXX)
    mkdir -p "$d"/{l,u,w,m}
    if mount -t overlay overlay -o "lowerdir=$d/l,upperdir=$d/u,workdir=$d/w" "$d/m" 2>/dev/null; then
        touch "$d/m/x" 2>/dev/null && rc=0
        umount "$d/m"
    fi
    rm -rf --one-file-system "$d"
    return $rc
}
driver=${DOCKER_STORAGE_DRIVER:-}
if [ -z "$driver" ]; then
    if probe_overlay; then driver=overlay2; else driver=vfs; say "overlay mount fails here: using vfs (slow, big)"; fi
fi
args+=(--storage-driver="$driver")

# iptables: Debian's default alternative is iptables-nft. If the kernel lacks nf_tables, fall back to
# iptables-legacy; if neither works, run without iptables (containers then reach nothing outside the host,
# so pip inside builds fails, but the daemon and local tests still work) and say so loudly.
if ! iptables -t nat -L -n >/dev/null 2>&1; then
    if command -v iptables-legacy >/dev/null && iptables-legacy -t nat -L -n >/dev/null 2>&1; then
        say "iptables-nft does not work here: switching the alternative to iptables-legacy"
        update-alternatives --set iptables /usr/sbin/iptables-legacy >/dev/null
        update-alternatives --set ip6tables /usr/sbin/ip6tables-legacy >/dev/null 2>&1 || true
    else
        say "WARNING: no working iptables: dockerd runs with --iptables=false (no outbound network in containers)"
        args+=(--iptables=false --ip-masq=false)
    fi
fi

# The bridge defaults to MTU 1500. When the host's uplink is smaller (1400 on these VMs), large packets from
# containers are dropped silently and TLS downloads (pip, apt over https) hang. Match the uplink.
uplink=$(ip -o route show default 2>/dev/null | awk '{for (i=1;i<NF;i++) if ($i=="dev") {print $(i+1); exit}}')
if [ -n "$uplink" ] && [ -r "/sys/class/net/$uplink/mtu" ]; then
    mtu=$(cat "/sys/class/net/$uplink/mtu")
    if [ "$mtu" -lt 1500 ]; then args+=(--mtu="$mtu"); fi
fi

# --- start -----------------------------------------------------------------------------------------------
# A pid file left by a daemon that died (machine reused, process killed) would make dockerd refuse to start.
for pidfile in /var/run/docker.pid /var/run/docker/containerd/containerd.pid; do
    if [ -f "$pidfile" ] && ! kill -0 "$(cat "$pidfile" 2>/dev/null)" 2>/dev/null; then rm -f "$pidfile"; fi
done
if pgrep -x dockerd >/dev/null; then
    # Started by someone else and still coming up: just wait for it below.
    say "a dockerd process exists but does not answer yet; waiting for it"
else
    say "starting dockerd ${args[*]} (log: $LOG)"
    # setsid + nohup: the daemon must outlive this script and the CI step's shell.
    setsid nohup dockerd "${args[@]}" >"$LOG" 2>&1 </dev/null &
fi

deadline=$((SECONDS + TIMEOUT))
until daemon_answers; do
    if ! pgrep -x dockerd >/dev/null; then
        tail -n 30 "$LOG" >&2 || true
        die "dockerd exited during startup (log above, full log in $LOG)"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
        tail -n 30 "$LOG" >&2 || true
        die "dockerd did not answer within ${TIMEOUT}s (log above, full log in $LOG)"
    fi
    sleep 1
done
say "daemon ready: $(docker info --format '{{.ServerVersion}} / {{.Driver}}')"
