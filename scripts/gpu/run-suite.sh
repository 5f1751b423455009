#!/usr/bin/env bash
# The benchmark suites, run ON a GPU machine where the appliance's Python stack is installed (on the lent GPU:
# ../shared/gpu/README.md stages vLLM 0.26.0 + LMCache 0.5.3 into /tmp/site and the model configs into
# /tmp/model-8b). Each suite starts `python3 -m entrypoint serve` once per configuration, runs the bench
# scripts against it, stops it with SIGTERM, and fits one device call (<= 10 min; SUITE_BUDGET_S, default 540):
#
#   bash scripts/gpu/run-suite.sh reuse        no-offload, then lmcache-server: cold / GPU hit / after GPU reset,
#                                              SIGKILL of vLLM mid-request (supervisord respawns it, the LMCache
#                                              server keeps its CPU tier), the appliance restarted (disk tier);
#                                              then, if time is left, the LMCache server killed and SIGTERM
#                                              during a long request (the faults suite's last two checks)
#   bash scripts/gpu/run-suite.sh multiround   no-offload, lmcache, native; GPU KV cache capped (MR_KV_BYTES)
#   bash scripts/gpu/run-suite.sh faults       a disk tier that fills up (2 GiB tmpfs), kill the LMCache server,
#                                              SIGTERM during a long request
#   bash scripts/gpu/run-suite.sh tp           tensor parallel 2 (a 2-GPU host): LMCache server mode (reuse at
#                                              16k, vLLM killed, the appliance restarted: disk tier), then
#                                              in-process mode; prints the CPU/disk sizes each process was given
#   bash scripts/gpu/run-suite.sh reuse multiround   (both, if the budget allows: it does not on one call)
#
# Several suites at once on a multi-GPU host: GPU=N pins one to GPU N (CUDA_VISIBLE_DEVICES) and moves its
# ports (API 8000+N, LMCache 5555+10N / 8080+N / Prometheus 9090+N, metrics 9464+N), run directories and pid file, e.g.
#   GPU=0 OUT=/tmp/bo/g0 bash scripts/gpu/run-suite.sh multiround & GPU=1 OUT=/tmp/bo/g1 MR_CONFIGS=... bash ... &
# Multi-round configurations (MR_CONFIGS, default "no-offload lmcache native"; see mr_backend below):
#   no-offload, lmcache, native, lmcache-inproc (LMCACHE_MODE=in-process), lmcache-mw4 (the LMCache server
#   with --max-workers 4), lmcache-chunk512 (LMCACHE_CHUNK_SIZE=512); any of them with a suffix -mnbtN adds
#   VLLM_MAX_NUM_BATCHED_TOKENS=N (vLLM's token budget per scheduler step).
#
# Output: $OUT/results/ (results.jsonl, <bench>.md/.json/.png), $OUT/logs/<label>/ (serve output, the run
# directory's supervisord/vllm/lmcache logs, rendered config), $OUT/logs/suite.log (this console).
# The tables are printed last. Every knob below can be set in the environment.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-/tmp/bench-out}
RES=$OUT/results
LOGS=$OUT/logs
SITE=${SITE-/tmp/site}                     # the staged vLLM + LMCache (empty: use the installed ones)
MODEL=${MODEL:-/tmp/model-8b}
SERVED=${SERVED:-llama8b}
GPU=${GPU:-}                                 # one GPU of a multi-GPU host (see above); empty: all GPUs
INST=${GPU:+g$GPU-}                         # prefix of run directories, so that parallel suites do not collide
PORT=${PORT:-$((8000 + ${GPU:-0}))}
LMC_PORTS=()                                # the LMCache server's ports, moved off the defaults for GPU=N
if [ -n "$GPU" ]; then
    export CUDA_VISIBLE_DEVICES=$GPU        # the appliance, vLLM, and the bandwidth measure use this GPU only
    LMC_PORTS=(APPLIANCE_LMCACHE_PORT=$((5555 + 10 * GPU)) APPLIANCE_LMCACHE_HTTP_PORT=$((8080 + GPU)))
fi
BASE=http://127.0.0.1:$PORT
PY=${PY:-python3}                           # runs the appliance and the bench scripts (stdlib + torch)
VLLM_CMD=${VLLM_CMD:-$PY -m vllm.entrypoints.cli.main}   # there is no `vllm` console script in the bundle
LMCACHE_CMD=${LMCACHE_CMD:-$PY -m lmcache.cli.main}
SUITE_BUDGET_S=${SUITE_BUDGET_S:-540}       # stop starting new steps past this (device calls end at 600 s)
START_TIMEOUT=${START_TIMEOUT:-300}         # serve -> ready, at most
KVDISK=${KVDISK:-/tmp/kvdisk}
GPU_UTIL=${GPU_UTIL:-0.6}
CPU_TIER_GIB=${CPU_TIER_GIB:-20}
DISK_TIER_GIB=${DISK_TIER_GIB:-40}
TP_CPU_GIB=${TP_CPU_GIB:-16}                # the tp suite's CPU tier (a total: in-process workers get 8 each)
TP_DISK_GIB=${TP_DISK_GIB:-20}
REUSE_TOKENS=${REUSE_TOKENS:-16000,30000}
REUSE_SEEDS=${REUSE_SEEDS:-3}
REUSE_MAX_MODEL_LEN=${REUSE_MAX_MODEL_LEN:-32768}
REUSE_DROP_CACHES=${REUSE_DROP_CACHES:-0}   # 1: drop the page cache before the disk-tier phase (needs root)
REUSE_FAULTS=${REUSE_FAULTS:-1}             # 1: then, budget permitting, kill the LMCache server; SIGTERM mid-request
MR_KV_BYTES=${MR_KV_BYTES:-4294967296}      # GPU KV cache of the multiround runs (4 GiB = 32768 tokens of 8B)
MR_GPU_UTIL=${MR_GPU_UTIL:-}                # or: a small GPU memory share instead of MR_KV_BYTES
MR_MAX_MODEL_LEN=${MR_MAX_MODEL_LEN:-16384}
MR_MAX_SECONDS=${MR_MAX_SECONDS:-75}
MR_ARGS=${MR_ARGS:-}                        # extra multiround.py run arguments (--users 20 --rounds 8 ...)
MR_CONFIGS=${MR_CONFIGS:-no-offload lmcache native}
MR_REUSE_TOKENS=${MR_REUSE_TOKENS:-}        # e.g. 16000: after each multi-round run, a reuse run on the same
                                            # appliance (cold / GPU hit / after GPU reset) at that length
EXTRA_ENV=${EXTRA_ENV:-}                    # extra VAR=value words for every appliance, e.g. VLLM_TENSOR_PARALLEL_SIZE=2
PIDS_FILE=/tmp/bench-suite${GPU:+-g$GPU}.pids             # serve pids of this script, so a later call can clean up

mkdir -p "$RES" "$LOGS"
exec 3>&1 4>&2 > >(tee -a "$LOGS/suite.log") 2>&1
TEE_PID=$!
T0=${SUITE_T0:-$(date +%s)}                  # set it earlier to count time spent before (e.g. an install)
SERVE_PID=""
LABEL=""
MOUNTED=""                                  # the faults suite's tmpfs, unmounted at exit
FAILED=()

say() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
left() { echo $(( SUITE_BUDGET_S - ($(date +%s) - T0) )); }
need() {  # need SECONDS WHAT: false (and a note) when the budget cannot cover it
    if [ "$(left)" -lt "$1" ]; then say "SKIPPED (budget: $(left) s left, $2 needs ~$1 s)"; FAILED+=("skipped: $2"); return 1; fi
}
bench() { (cd "$ROOT/scripts/bench" && env -u PYTHONPATH "$PY" "$@"); }  # stdlib (+ torch, matplotlib)
fail() { say "FAILED: $*"; FAILED+=("$*"); }

appliance_env() {  # the environment every configuration shares (docs/benchmarks/METHOD.md lists the same)
    cat <<EOF
APPLIANCE_VLLM_COMMAND=$VLLM_CMD
APPLIANCE_LMCACHE_COMMAND=$LMCACHE_CMD
VLLM_MODEL=$MODEL
VLLM_SERVED_MODEL_NAME=$SERVED
VLLM_PORT=$PORT
VLLM_LOAD_FORMAT=dummy
VLLM_ENFORCE_EAGER=true
VLLM_GPU_MEMORY_UTILIZATION=$GPU_UTIL
VLLM_SERVER_DEV_MODE=1
VLLM_USE_FLASHINFER_SAMPLER=0
HF_HUB_OFFLINE=1
EOF
}

with_instance_ports() {  # the configuration's words, plus (GPU=N) the metrics ports moved
    # Two appliances on one host (GPU=0 and GPU=1 side by side) would both bind the LMCache server's exporter
    # (9090) and the appliance's metrics endpoint (9464); the other ports move in appliance_env.
    printf '%s\n' "$@"
    [ -n "$GPU" ] && printf '%s\n' "APPLIANCE_LMCACHE_METRICS_PORT=$((9090 + GPU))" "APPLIANCE_METRICS_PORT=$((9464 + GPU))"
    return 0
}

start_appliance() {  # start_appliance LABEL VAR=value...: serve in the background, wait until ready
    LABEL=$1; shift
    local words=(); mapfile -t words < <(with_instance_ports "$@")
    set -- "${words[@]}"
    local run=/tmp/run-$INST$LABEL
    rm -rf "$run"; mkdir -p "$LOGS/$LABEL"
    {
        appliance_env
        echo "APPLIANCE_RUN_DIR=$run"
        for kv in "${LMC_PORTS[@]}" "$@" $EXTRA_ENV; do echo "$kv"; done
    } > "$LOGS/$LABEL/appliance.env"
    say "start $LABEL: $(grep -E '^(VLLM_KV|LMCACHE|VLLM_MAX_|VLLM_KV_CACHE|VLLM_GPU|VLLM_TENSOR)' "$LOGS/$LABEL/appliance.env" | tr '\n' ' ')"
    local started
    started=$(date +%s.%N)
    (
        for v in $(compgen -e); do case $v in VLLM_*|LMCACHE_*|APPLIANCE_*) unset "$v" ;; esac; done
        # shellcheck disable=SC2163  # each line is NAME=value
        while IFS= read -r kv; do export "$kv"; done < "$LOGS/$LABEL/appliance.env"
        export PYTHONPATH="${SITE:+$SITE:}$ROOT"
        cd "$ROOT" && exec "$PY" -m entrypoint serve
    ) > "$LOGS/$LABEL/serve.log" 2>&1 &
    SERVE_PID=$!
    echo "$SERVE_PID" >> "$PIDS_FILE"
    local budget=$START_TIMEOUT
    [ "$(left)" -lt "$budget" ] && budget=$(left)
    if bench startup.py wait --label "$LABEL" --results "$RES" --base-url "$BASE" --model "$SERVED" \
            --started-at "$started" --pid "$SERVE_PID" --run-dir "$run" --timeout "$budget"; then
        grep -ohE "(GPU KV cache size|Maximum concurrency)[^\"]*" "$run/vllm.log" 2>/dev/null | head -2 | sed 's/^/    vllm: /'
        return 0
    fi
    fail "$LABEL did not get ready"
    tail -n 40 "$LOGS/$LABEL/serve.log" | sed 's/^/    serve.log: /'
    stop_appliance
    return 1
}

stop_appliance() {  # SIGTERM to serve, wait, keep the logs; waits for the GPU to be free again
    [ -n "$SERVE_PID" ] || return 0
    bench startup.py stop --pid "$SERVE_PID" --label "$LABEL" --results "$RES" --timeout 90 || fail "$LABEL: stop not clean"
    wait "$SERVE_PID" 2>/dev/null; echo "    serve exit code: $?"
    local run=/tmp/run-$INST$LABEL
    cp "$run"/*.log "$run"/*.log.1 "$run"/supervisord.conf "$run"/plan.json "$LOGS/$LABEL/" 2>/dev/null
    SERVE_PID=""
    if command -v nvidia-smi >/dev/null; then
        local only=(); [ -n "$GPU" ] && only=(-i "$GPU")   # a parallel suite's GPU is not ours to wait for
        for _ in $(seq 60); do
            [ -z "$(nvidia-smi "${only[@]}" --query-compute-apps=pid --format=csv,noheader 2>/dev/null)" ] && break
            sleep 0.5
        done
        local busy; busy=$(nvidia-smi "${only[@]}" --query-compute-apps=pid,used_memory --format=csv,noheader 2>/dev/null)
        [ -n "$busy" ] && fail "GPU still in use after stopping $LABEL: $busy"
    fi
    return 0
}

cleanup_earlier() {  # appliances this script started in an earlier call on the same (warm) machine
    [ -f "$PIDS_FILE" ] || return 0
    while read -r pid; do
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q "entrypoint serve\|supervisord"; then
            say "an earlier appliance (pid $pid) is still running: stopping it"
            bench startup.py stop --pid "$pid" --label "earlier-$pid" --results "$OUT/earlier" --timeout 60
        fi
    done < "$PIDS_FILE"
    rm -f "$PIDS_FILE"
}

on_exit() {
    if [ -n "$SERVE_PID" ]; then say "stopping $LABEL (exit)"; stop_appliance; fi
    if [ -n "$MOUNTED" ]; then umount "$MOUNTED" || echo "could not unmount $MOUNTED"; fi
    echo
    say "done in $(( $(date +%s) - T0 )) s; results in $RES, logs in $LOGS"
    for f in "${FAILED[@]}"; do echo "  - $f"; done
    echo
    local seen=" " r
    for r in "${REPORTS[@]}"; do
        case $seen in *" $r "*) continue ;; esac; seen="$seen$r "
        bench "$r" report --results "$RES" 2> "$LOGS/report-${r%.py}.err" || { echo "($r report failed:)"; cat "$LOGS/report-${r%.py}.err"; }
        echo
    done
    exec 1>&3 2>&4  # close the pipe to tee and let it finish, so the tables are the last lines out
    wait "$TEE_PID" 2>/dev/null
}
REPORTS=()
trap on_exit EXIT
trap 'say "interrupted"; exit 130' INT TERM

bandwidth() {
    bench common.py bandwidth --results "$RES" --model-config "$MODEL" || fail "bandwidth measure"
}

header() {
    say "suite $* on $(uname -n); budget ${SUITE_BUDGET_S} s"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/    gpu: /'
    echo "    cpu: $(nproc) cores, $(free -g 2>/dev/null | awk '/Mem:/{print $2" GiB RAM"}'); /tmp: $(df -h /tmp | awk 'NR==2{print $4" free"}'); /dev/shm: $(df -h /dev/shm 2>/dev/null | awk 'NR==2{print $4" free"}'); ulimit -l: $(ulimit -l)"
    if (cd "$ROOT" && git rev-parse --git-dir >/dev/null 2>&1); then
        echo "    git: $(cd "$ROOT" && git rev-parse --short HEAD) + $(cd "$ROOT" && git status --short | wc -l) changed files"
    fi
    [ -z "$SITE" ] || [ -f "$SITE/.done" ] || { fail "$SITE/.done missing: stage the bundle first (shared/gpu/README.md)"; exit 1; }
}

suite_reuse() {
    REPORTS+=(startup.py reuse.py)
    local common=(--base-url "$BASE" --model "$SERVED" --tokens "$REUSE_TOKENS" --seeds "$REUSE_SEEDS" --results "$RES")
    rm -rf "$KVDISK"  # no prompt of an earlier call may be found on disk
    bandwidth
    # 1. the appliance's own no-offload baseline: recompute after a GPU reset
    if need 140 "reuse no-offload" && start_appliance no-offload VLLM_KV_OFFLOADING_BACKEND=none \
            VLLM_MAX_MODEL_LEN="$REUSE_MAX_MODEL_LEN"; then
        bench reuse.py run --label no-offload "${common[@]}" || fail "reuse run no-offload"
        stop_appliance
    fi
    # 2. LMCache server (CPU tier + disk tier): GPU reset, then vLLM SIGKILLed mid-request (supervisord respawns
    #    it, the LMCache server keeps its CPU tier). What that tier holds by then: warm-ups 9k + 3 x (16k + 30k)
    #    + 2k in flight + 1k = ~150k tokens x 128 KiB = 19.7 GB, under the 20 GiB (21.5 GB) tier: no measured
    #    prompt is evicted before it is measured.
    need 150 "reuse lmcache-server" || return 0
    local lmc=(VLLM_KV_OFFLOADING_BACKEND=lmcache VLLM_KV_OFFLOADING_SIZE="$CPU_TIER_GIB" LMCACHE_LOCAL_DISK="$KVDISK"
               LMCACHE_MAX_LOCAL_DISK_SIZE="$DISK_TIER_GIB" VLLM_MAX_MODEL_LEN="$REUSE_MAX_MODEL_LEN")
    start_appliance lmcache-server "${lmc[@]}" || return 0
    bench reuse.py run --label lmcache-server "${common[@]}" || fail "reuse run lmcache-server"
    if need 110 "after_vllm_restart (SIGKILL of vLLM mid-request)"; then
        local wait_s=$(( $(left) - 100 )); [ "$wait_s" -gt 240 ] && wait_s=240
        bench reuse.py again --label lmcache-server --phase after_vllm_restart --restart kill-vllm \
            --run-dir "/tmp/run-${INST}lmcache-server" --warmup-tokens 1024 --ready-timeout "$wait_s" "${common[@]}" \
            || fail "after_vllm_restart (vLLM SIGKILLed: see logs/lmcache-server/vllm.log)"
    fi
    # 3. a restart of everything: the appliance stopped (SIGTERM) and started again; the disk tier remains
    stop_appliance
    du -sh "$KVDISK" 2>/dev/null | sed 's/^/    disk tier after the stop: /'
    if [ "$REUSE_DROP_CACHES" = 1 ]; then
        if sync && echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; then echo "    page cache dropped";
        else echo "    could not drop the page cache (not root?): disk reads may come from RAM"; fi
    fi
    need 110 "after_full_restart (the appliance restarted, disk tier)" || return 0
    start_appliance lmcache-server-restarted "${lmc[@]}" || return 0
    bench reuse.py again --label lmcache-server --phase after_full_restart --restart none \
        --warmup-tokens 1024 "${common[@]}" || fail "after_full_restart"
    # 4. faults, with what budget is left (after every measurement, so they disturb none)
    if [ "$REUSE_FAULTS" = 1 ]; then
        REPORTS+=(faults.py)
        kill_lmcache
        sigterm_inflight
    fi
    stop_appliance
}

kill_lmcache() {  # SIGKILL the LMCache server; probe until serving is back (bounded by the budget)
    local probe=$(( $(left) - 60 ))
    [ "$probe" -gt 150 ] && probe=150
    need 90 "fault: kill the LMCache server" || return 0
    bench faults.py kill-lmcache --base-url "$BASE" --model "$SERVED" --results "$RES" --run-dir "/tmp/run-$INST$LABEL" \
        --max-seconds "$probe" || fail "fault: kill the LMCache server"
}

sigterm_inflight() {  # the way this appliance stops: SIGTERM while a long request runs; it must complete
    need 45 "fault: SIGTERM during a long request" || return 0
    bench faults.py sigterm-inflight --base-url "$BASE" --model "$SERVED" --results "$RES" --serve-pid "$SERVE_PID" \
        || fail "fault: SIGTERM during a long request"
    wait "$SERVE_PID" 2>/dev/null; echo "    serve exit code after SIGTERM: $?"
    cp "/tmp/run-$INST$LABEL"/*.log "/tmp/run-$INST$LABEL/supervisord.conf" "$LOGS/$LABEL/" 2>/dev/null
    SERVE_PID=""
}

suite_multiround() {
    REPORTS+=(startup.py multiround.py)
    local gpu=(VLLM_KV_CACHE_MEMORY_BYTES="$MR_KV_BYTES")
    [ -n "$MR_GPU_UTIL" ] && gpu=(VLLM_GPU_MEMORY_UTILIZATION="$MR_GPU_UTIL")
    # shellcheck disable=SC2206
    local args=(--base-url "$BASE" --model "$SERVED" --results "$RES" --max-seconds "$MR_MAX_SECONDS"
                --max-model-len "$MR_MAX_MODEL_LEN" $MR_ARGS)
    bandwidth
    local label kv_tokens backend=()
    [ -n "$MR_REUSE_TOKENS" ] && REPORTS+=(reuse.py)
    for label in $MR_CONFIGS; do
        mapfile -t backend < <(mr_backend "$label")
        [ "${#backend[@]}" -gt 0 ] || { fail "unknown multiround configuration $label"; continue; }
        need $((MR_MAX_SECONDS + 90)) "multiround $label" || continue
        start_appliance "$label" "${backend[@]}" "${gpu[@]}" VLLM_MAX_MODEL_LEN="$MR_MAX_MODEL_LEN" || continue
        kv_tokens=$(grep -ohE "GPU KV cache size: [0-9,]+ tokens" "/tmp/run-$INST$label/vllm.log" 2>/dev/null | head -1 | tr -dc 0-9)
        bench multiround.py run --label "$label" "${args[@]}" ${kv_tokens:+--gpu-kv-tokens "$kv_tokens"} \
            || fail "multiround $label"
        if [ -n "$MR_REUSE_TOKENS" ] && need 40 "reuse $label"; then
            # the same appliance, its tiers holding the conversations: what one long prompt costs cold, on a
            # GPU hit and after a GPU reset (the offload tier, or a recompute without one)
            bench reuse.py run --label "$label" --base-url "$BASE" --model "$SERVED" --tokens "$MR_REUSE_TOKENS" \
                --seeds 3 --warmup-tokens 1024 --results "$RES" || fail "reuse $label"
        fi
        stop_appliance
    done
}

mr_backend() {  # mr_backend LABEL: the offloading words of a multi-round configuration, one per line
    local label=$1 base mnbt=""
    base=${label%-mnbt*}
    [ "$base" != "$label" ] && mnbt=${label##*-mnbt}
    case $base in
        no-offload) echo VLLM_KV_OFFLOADING_BACKEND=none ;;
        native) printf '%s\n' VLLM_KV_OFFLOADING_BACKEND=native VLLM_KV_OFFLOADING_SIZE="$CPU_TIER_GIB" ;;
        lmcache|lmcache-inproc|lmcache-mw4|lmcache-chunk512)
            printf '%s\n' VLLM_KV_OFFLOADING_BACKEND=lmcache VLLM_KV_OFFLOADING_SIZE="$CPU_TIER_GIB"
            case $base in  # the one change each variant makes to the default LMCache configuration
                lmcache-inproc) echo LMCACHE_MODE=in-process ;;
                lmcache-mw4) echo "LMCACHE_SERVER_EXTRA_ARGS=--max-workers 4" ;;
                lmcache-chunk512) echo LMCACHE_CHUNK_SIZE=512 ;;
            esac ;;
        *) return 1 ;;
    esac
    [ -z "$mnbt" ] || echo "VLLM_MAX_NUM_BATCHED_TOKENS=$mnbt"
}

footprint() {  # what the appliance's processes hold: RSS of each (pinned CPU tiers are resident), GPU memory
    say "footprint of $LABEL (RSS; a pinned CPU tier is resident, so it shows here)"
    "$PY" - "$SERVE_PID" <<'PYEOF'
import os, sys
kids, info = {}, {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        st = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace").strip()
        rss = int([l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")][0].split()[1])
    except (OSError, IndexError, ValueError):
        continue
    kids.setdefault(int(st[1]), []).append(int(pid))
    info[int(pid)] = (rss, cmd)
def walk(pid, depth):
    rss, cmd = info.get(pid, (0, "?"))
    if rss > 512 * 1024 or depth < 2:  # skip small helpers
        print(f"    {'  ' * depth}{pid:>7} rss {rss / 1048576:6.1f} GiB  {cmd[:110]}")
    for k in sorted(kids.get(pid, [])):
        walk(k, depth + 1)
walk(int(sys.argv[1]), 0)
PYEOF
    nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader 2>/dev/null | sed 's/^/    gpu: /'
}

sizes() {  # the sizes the appliance rendered for LABEL, and what LMCache says it was given
    local run=/tmp/run-$INST$LABEL
    say "sizes of $LABEL (rendered; then LMCache's own log lines)"
    "$PY" - "$run/plan.json" <<'PYEOF'
import json, sys
p = json.load(open(sys.argv[1]))
def show(x, path=""):
    if isinstance(x, dict):
        for k, v in x.items():
            show(v, f"{path}.{k}" if path else k)
    elif isinstance(x, list):
        text = " ".join(map(str, x))
        for key in ("--l1-size-gb", "--l2-adapter", "--tensor-parallel-size"):
            if key in x:
                i = x.index(key)
                print(f"    {path}: {key} {x[i + 1]}")
    elif not path.startswith("sources") and any(w in path.lower() for w in ("size", "disk", "capacity")):
        print(f"    {path} = {x}")
show(p)
PYEOF
    for f in "$run"/lmcache*.y*ml "$run"/lmcache*.json; do [ -f "$f" ] && sed 's/^/    config: /' "$f"; done
    grep -hiE "l1.*size|size.*gb|max_local_cpu_size|max_local_disk_size|max_capacity|capacity_gb|world_size|worker_id" \
        "$run"/lmcache.log "$run"/vllm.log 2>/dev/null | grep -v "^\s*$" | cut -c1-220 | sort -u | head -14 | sed 's/^/    log: /'
}

suite_tp() {
    REPORTS+=(startup.py reuse.py)
    local tp=(VLLM_TENSOR_PARALLEL_SIZE=2 VLLM_MAX_MODEL_LEN=32768)
    local one=(--base-url "$BASE" --model "$SERVED" --tokens 16000 --seeds 3 --results "$RES")
    rm -rf "$KVDISK" "$KVDISK-inproc"
    bandwidth
    # 1. server mode: one LMCache server holds the tiers for both workers; the sizes are totals
    local lmc=(VLLM_KV_OFFLOADING_BACKEND=lmcache VLLM_KV_OFFLOADING_SIZE="$TP_CPU_GIB" LMCACHE_LOCAL_DISK="$KVDISK"
               LMCACHE_MAX_LOCAL_DISK_SIZE="$TP_DISK_GIB" "${tp[@]}")
    if need 150 "tp2 lmcache-server" && start_appliance tp2-lmcache-server "${lmc[@]}"; then
        sizes
        bench reuse.py run --label tp2-lmcache-server "${one[@]}" || fail "reuse tp2-lmcache-server"
        footprint
        if need 200 "tp2: vLLM killed"; then
            bench reuse.py again --label tp2-lmcache-server --phase after_vllm_restart --restart kill-vllm \
                --run-dir "/tmp/run-${INST}tp2-lmcache-server" --warmup-tokens 1024 --ready-timeout 240 "${one[@]}" \
                || fail "tp2: after_vllm_restart"
        fi
        stop_appliance
        find "$KVDISK" -maxdepth 1 -mindepth 1 -printf '    disk tier directory: %f\n'
        du -sh "$KVDISK" 2>/dev/null | sed 's/^/    disk tier after the stop: /'
        if need 140 "tp2: the appliance restarted (disk tier)" && start_appliance tp2-lmcache-server-restarted "${lmc[@]}"; then
            bench reuse.py again --label tp2-lmcache-server --phase after_full_restart --restart none \
                --warmup-tokens 1024 "${one[@]}" || fail "tp2: after_full_restart"
            stop_appliance
        fi
    fi
    # 2. in-process mode: LMCache inside each worker, each with its share (total / TP) of the CPU and disk tiers
    if need 140 "tp2 lmcache-inproc" && start_appliance tp2-lmcache-inproc VLLM_KV_OFFLOADING_BACKEND=lmcache \
            VLLM_KV_OFFLOADING_SIZE="$TP_CPU_GIB" LMCACHE_MODE=in-process LMCACHE_LOCAL_DISK="$KVDISK-inproc" \
            LMCACHE_MAX_LOCAL_DISK_SIZE="$TP_DISK_GIB" "${tp[@]}"; then
        sizes
        bench reuse.py run --label tp2-lmcache-inproc "${one[@]}" || fail "reuse tp2-lmcache-inproc"
        footprint
        stop_appliance
        du -sh "$KVDISK-inproc"/* 2>/dev/null | sed 's/^/    in-process disk tier: /'
    fi
    # 3. the no-offload baseline at TP 2 (recompute time, and the workers' RSS without a CPU tier)
    if need 130 "tp2 no-offload" && start_appliance no-offload VLLM_KV_OFFLOADING_BACKEND=none "${tp[@]}"; then
        bench reuse.py run --label no-offload "${one[@]}" || fail "reuse tp2 no-offload"
        footprint
        stop_appliance
    fi
}

suite_faults() {
    REPORTS+=(startup.py faults.py)
    local small=/tmp/kvsmall
    mkdir -p "$small"
    if ! mountpoint -q "$small"; then
        if mount -t tmpfs -o size=2g tmpfs "$small" 2>/dev/null; then echo "    2 GiB tmpfs at $small"; MOUNTED=$small
        else echo "    no tmpfs (mount not permitted): $small is a plain directory, only the disk cap is exercised"; fi
    fi
    rm -rf "${small:?}"/*
    need 150 "faults" || return 0
    # The cap fits the tmpfs (preflight insists); faults.py disk-fill then fills the tmpfs from outside.
    start_appliance faults VLLM_KV_OFFLOADING_BACKEND=lmcache VLLM_KV_OFFLOADING_SIZE=4 \
        LMCACHE_LOCAL_DISK="$small" LMCACHE_MAX_LOCAL_DISK_SIZE=1.5 VLLM_MAX_MODEL_LEN=32768 || return 0
    bench faults.py disk-fill --base-url "$BASE" --model "$SERVED" --results "$RES" --run-dir "/tmp/run-${INST}faults" \
        --disk "$small" || fail "fault: disk fill"
    # vLLM SIGKILLed: restart-to-ready (the launcher waits for the LMCache server to release the dead vLLM's
    # GPU memory), and an earlier prompt still served from the LMCache server's CPU tier afterwards
    local one=(--base-url "$BASE" --model "$SERVED" --tokens 16000 --seeds 1 --results "$RES")
    if need 120 "fault: kill vLLM"; then
        bench reuse.py run --label faults "${one[@]}" || fail "reuse run faults"
        bench reuse.py again --label faults --phase after_vllm_restart --restart kill-vllm --run-dir "/tmp/run-${INST}faults" \
            --warmup-tokens 1024 --ready-timeout 200 "${one[@]}" || fail "fault: kill vLLM"
    fi
    kill_lmcache
    sigterm_inflight
    stop_appliance
}

suite_loadfaults() {  # issue 14: the five faults under closed-loop load, one appliance start (docs/RESILIENCE.md)
    # LF_* knobs: clients, window, per-run seconds; a small CPU tier (full under this load: allocation
    # failures counted) and a disk tier capped on a tmpfs (the disk-full fault fills the tmpfs from outside).
    REPORTS+=(startup.py loadfaults.py)
    local small=/tmp/kvsmall-lf run=/tmp/run-${INST}loadfaults cap=${LF_DISK_GIB:-3}
    mkdir -p "$small"
    if ! mountpoint -q "$small"; then
        if mount -t tmpfs -o "size=${LF_TMPFS:-4g}" tmpfs "$small" 2>/dev/null; then MOUNTED=$small
        else echo "    no tmpfs (mount not permitted): $small is a plain directory; disk-full fills its file system"; fi
    fi
    rm -rf "${small:?}"/*
    need 240 "loadfaults" || return 0
    start_appliance loadfaults VLLM_KV_OFFLOADING_BACKEND=lmcache VLLM_KV_OFFLOADING_SIZE="${LF_CPU_GIB:-4}" \
        LMCACHE_LOCAL_DISK="$small" LMCACHE_MAX_LOCAL_DISK_SIZE="$cap" VLLM_MAX_MODEL_LEN=16384 \
        APPLIANCE_DISK_PRUNE_INTERVAL="${LF_PRUNE_S:-2}" || return 0
    local ns; ns=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["lmcache"]["disk"]["path"])' "$run/plan.json")
    local lf=(--base-url "$BASE" --model "$SERVED" --results "$RES" --run-dir "$run" --clients "${LF_CLIENTS:-16}"
              --window "${LF_WINDOW:-10}" --disk-dir "$ns" --disk-cap-gib "$cap"
              --metrics-url "http://127.0.0.1:$((9464 + ${GPU:-0}))/metrics")
    lf_run() {  # lf_run LABEL FAULT AT DURATION [more loadfaults.py arguments]
        need $(( $4 + 30 )) "loadfaults $1" || return 1
        bench loadfaults.py run --label "$1" --fault "$2" --fault-at "$3" --duration "$4" "${lf[@]}" "${@:5}" \
            || fail "loadfaults $1"
        bench -c 'import common, sys; common.wait_ready(sys.argv[1], sys.argv[2], timeout=150)' "$BASE" "$SERVED" \
            || fail "loadfaults $1: not ready again within 150 s"
    }
    # 1. the LMCache server SIGKILLed: in-flight failures only, none after 5 s, no vLLM restart (target 1);
    #    the CPU tier is full the whole time (allocation failures per window), the disk tier at its cap (target 3)
    lf_run lmcache-kill kill-lmcache 20 "${LF_SECONDS:-70}"
    # 2. the disk tier's file system filled from outside: every request must still succeed
    lf_run disk-full "fill-disk:$small" 15 "${LF_DISK_SECONDS:-45}" --leave-mib 64
    # 3. vLLM SIGKILLed: 503 + Retry-After from the gap program until the new vLLM serves (target 2)
    lf_run vllm-kill kill-vllm 15 "${LF_VLLM_SECONDS:-110}"
    # 4. SIGTERM to serve under load: in-flight requests complete, new ones get 503 / refused; ends the appliance
    if need 60 "loadfaults sigterm"; then
        bench loadfaults.py run --label sigterm --fault sigterm --fault-at 15 --duration 40 --serve-pid "$SERVE_PID" \
            "${lf[@]}" || fail "loadfaults sigterm"
        wait "$SERVE_PID" 2>/dev/null; echo "    serve exit code after SIGTERM: $?"
        cp "$run"/*.log "$run/supervisord.conf" "$LOGS/loadfaults/" 2>/dev/null
        SERVE_PID=""
    fi
    grep -c "entering degraded mode" "$LOGS/loadfaults/vllm.log" 2>/dev/null | sed 's/^/    "entering degraded mode" lines in vllm.log: /'
    stop_appliance
}

[ $# -gt 0 ] || { sed -n '2,20p' "$0"; exit 2; }
for s in "$@"; do
    case $s in reuse|multiround|faults|tp|loadfaults) ;; *) echo "unknown suite: $s (reuse, multiround, faults, tp, loadfaults)"; exit 2 ;; esac
done
header "$@"
cleanup_earlier
for s in "$@"; do "suite_$s"; done
