"""The disk tier's backstop under real supervisord: the watchdog prunes it to its cap every
APPLIANCE_DISK_PRUNE_INTERVAL s, on its own thread, even while its vLLM probes hang. Fake chunk files stand in
for what an earlier LMCache server left (LMCache's own eviction never counts those: docs/RESILIENCE.md)."""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from appliance_harness import wait_until

MIB = 1 << 20
CAP_GIB = 0.02  # 20.5 MiB
CHUNK = 512 * 1024  # one fake chunk file
PERIOD = 1  # APPLIANCE_DISK_PRUNE_INTERVAL
RATE = 8 * MIB  # bytes written per second, sustained


def tier_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def test_prune_holds_the_cap_on_its_own_period_while_probes_hang(appliance, tmp_path, timing):
    disk = tmp_path / "kv-disk"
    a = appliance(LMCACHE_LOCAL_DISK=str(disk), LMCACHE_MAX_LOCAL_DISK_SIZE=CAP_GIB,
                  APPLIANCE_DISK_PRUNE_INTERVAL=PERIOD, APPLIANCE_HEALTH_INTERVAL=1, APPLIANCE_HEALTH_TIMEOUT=30,
                  APPLIANCE_HEALTH_FAILURES=100)
    a.wait_ready()
    a.wait_output("watchdog | vllm is ready")
    path = Path(json.loads(a.run.plan.read_text())["lmcache"]["disk"]["path"])
    cap = CAP_GIB * (1 << 30)
    # The watchdog's probes now wait 30 s each for a vLLM that answers nothing: a prune inside the probe
    # round would wait too.
    a.trigger("vllm-freeze")
    wait_until(lambda: not (a.control / "vllm-freeze").exists(), 5, "the stub to freeze")
    # Sustained writes, RATE bytes/s, past the cap several times over.
    peak, stop, written = [0], threading.Event(), [0]

    def watch():
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], tier_bytes(path))
            except OSError:
                pass  # a file pruned while we summed
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    start = time.monotonic()
    i = 0
    while time.monotonic() - start < 6:
        chunk = path / f"chunk-{i:05d}.kvcache"
        chunk.write_bytes(os.urandom(64) * (CHUNK // 64))
        os.utime(chunk, (time.time() - 3600, time.time() - 3600))  # written before this LMCache server started
        written[0] += CHUNK
        i += 1
        time.sleep(CHUNK / RATE)
    last_write = time.monotonic()
    pruned_back = wait_until(lambda: tier_bytes(path) <= cap and time.monotonic(), PERIOD + 2,
                             "the tier back under its cap")
    stop.set()
    watcher.join(2)
    timing("last write -> disk tier under its cap", pruned_back - last_write)
    assert written[0] > 2 * cap, "the writes went well past the cap"
    # The overshoot bound: between two prunes at most one period of writes (plus a second of scheduling
    # slack on a shared two-core machine) lands on top of the cap.
    bound = cap + RATE * (PERIOD + 1) + CHUNK
    assert peak[0] <= bound, f"peak {peak[0] / MIB:.1f} MiB over the bound {bound / MIB:.1f} MiB"
    notes = [line for _, line in a.lines if "over its cap" in line and line.startswith("watchdog |")]
    assert len(notes) >= 3, "pruned several times while the probes hung"
    record = json.loads(a.run.state.read_text())
    assert record["pruned_files"] > 0 and record["pruned_bytes"] >= written[0] - cap - CHUNK
