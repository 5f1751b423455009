"""Cold reads of a disk tier's files, by the number of parallel readers: what the disk under LMCACHE_LOCAL_DISK
delivers when the page cache does not hold the KV (after a host reboot, or memory pressure), to size the
disk tier's I/O workers (LMCache's fs_native adapter reads with `num_workers` C++ threads, 4 by default).

    python -m bench.diskread run --dir /tmp/kvdisk-probe --results DIR [--files 64 --mib 32]
        --readers 1,2,4,8,16,32

Writes FILES files of MIB MiB (a 8B-shape chunk of 256 tokens is 32 MiB), then for each reader count drops
the page cache (needs root: echo 3 > /proc/sys/vm/drop_caches) and reads every file once, READERS at a time
(threads: a read releases the GIL). Prints a table and writes DIR/diskread.{json,md}."""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

from bench import common as c


def drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def read_all(paths: list[Path], readers: int, block: int = 8 << 20) -> float:
    todo = list(paths)
    lock = threading.Lock()

    def work() -> None:
        buf = bytearray(block)
        view = memoryview(buf)
        while True:
            with lock:
                if not todo:
                    return
                p = todo.pop()
            fd = os.open(p, os.O_RDONLY)
            try:
                while os.readv(fd, [view]) == block:
                    pass
            finally:
                os.close(fd)

    t = time.perf_counter()
    threads = [threading.Thread(target=work) for _ in range(readers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return time.perf_counter() - t


def cmd_run(a) -> int:
    d = Path(a.dir)
    d.mkdir(parents=True, exist_ok=True)
    size = a.mib << 20
    chunk = os.urandom(1 << 20)
    paths = []
    for i in range(a.files):
        p = d / f"chunk-{i:04d}.bin"
        with open(p, "wb") as f:
            for _ in range(a.mib):
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        paths.append(p)
    total = size * a.files
    rows = []
    for readers in [int(x) for x in a.readers.split(",") if x]:
        cold = drop_page_cache()
        secs = read_all(paths, readers)
        rows.append({"readers": readers, "seconds": secs, "gb_s": total / secs / 1e9, "page_cache_dropped": cold})
        c.log(f"{readers:3d} readers: {total / 1e9:.2f} GB in {secs:.3f} s = {total / secs / 1e9:.2f} GB/s"
              f"{'' if cold else ' (page cache NOT dropped: not root?)'}")
    warm = read_all(paths, 4)
    for p in paths:
        p.unlink()
    md = [f"### Disk reads, page cache dropped before each row: {a.files} files x {a.mib} MiB = {total / 1e9:.2f} GB "
          f"in {d}", "", "| readers | seconds | GB/s | page cache dropped |", "|---|---|---|---|"]
    md += [f"| {r['readers']} | {r['seconds']:.3f} | {r['gb_s']:.2f} | {'yes' if r['page_cache_dropped'] else 'NO'} |"
           for r in rows]
    md += ["", f"The same files from the page cache (4 readers): {total / warm / 1e9:.2f} GB/s."]
    summary = {"files": a.files, "mib": a.mib, "dir": str(d), "rows": rows, "warm_gb_s_4_readers": total / warm / 1e9}
    return c.publish_report(a.results, "diskread", summary, "\n".join(md) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--dir", required=True)
    r.add_argument("--results", required=True)
    r.add_argument("--files", type=int, default=64)
    r.add_argument("--mib", type=int, default=32)
    r.add_argument("--readers", default="1,2,4,8,16,32")
    a = p.parse_args(argv)
    return cmd_run(a)


if __name__ == "__main__":
    sys.exit(main())
