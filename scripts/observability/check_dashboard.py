"""Do the dashboard's queries have data? A check without Grafana or screenshots, for a running appliance.

    python scripts/observability/check_dashboard.py before --vllm http://127.0.0.1:8000 \
        --appliance http://127.0.0.1:9464 --out /tmp/dash-before.json
    ... run traffic (e.g. the reuse benchmark) ...
    python scripts/observability/check_dashboard.py after --vllm ... --appliance ... \
        --before /tmp/dash-before.json --out results/dashboard.json

For every panel of docker/monitoring/grafana/dashboards/appliance.json and every metric its queries name, it
reports whether the endpoints expose that metric now, and (after) whether a counter or histogram that the
query takes a rate() of moved between the two scrapes: a panel whose metrics exist but never move would be a
flat line during the benchmark. Prints a table last; exit 1 if a named metric is missing (one
that LMCache exports only from its first event, EVENT_ONLY, is reported as not yet instead).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the entrypoint package of this checkout, where it is not installed
DASHBOARD = ROOT / "docker" / "monitoring" / "grafana" / "dashboards" / "appliance.json"
NAME = re.compile(r"\b((?:vllm:|lmcache_|appliance_)[A-Za-z0-9_:]+)")


SUFFIXES = ("", "_total", "_bucket", "_count", "_sum", "_created")
# LMCache's metrics that exist only from their first event: OpenTelemetry creates an instrument at its first
# record, so a run without the event has no `# TYPE` line either. Their names are LMCache's own subscribers'
# (tests/stubs/fixtures/lmcache-0.5.6-metrics.txt); absent, they are reported as "not yet", not as missing.
EVENT_ONLY = {"lmcache_mp_l2_load_throughput_GB_per_second": "a read from the disk tier outside the prefetch path",
              "lmcache_mp_l1_evicted_chunks": "a CPU-tier eviction",
              "lmcache_mp_l1_allocation_failure_chunks": "a CPU-tier allocation failure"}


def event_of(name: str) -> str | None:
    """The event an EVENT_ONLY metric waits for (any of its sample names), else None."""
    return next((event for base, event in EVENT_ONLY.items() if name in {base + x for x in SUFFIXES}), None)


def scrape(url: str) -> tuple[dict[str, float], set[str]]:
    """Sample name -> value summed over label sets (the parser `status` uses), and every sample name the
    exposition declares: a labelled counter that nothing has incremented yet (restarts, before the first one)
    has its `# TYPE` line and no sample, and a panel over it is right, only empty."""
    from entrypoint.runtime.snapshot import parse_metrics
    with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=10) as r:
        text = r.read().decode()
    declared = {m.group(1) + suffix for m in re.finditer(r"^# TYPE (\S+) ", text, re.M) for suffix in SUFFIXES}
    return parse_metrics(text), declared


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("phase", choices=("before", "after"))
    p.add_argument("--vllm", required=True)
    p.add_argument("--appliance", required=True)
    p.add_argument("--before", help="the `before` file (phase after)")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    (vllm, vllm_declared), (appliance, appliance_declared) = scrape(a.vllm), scrape(a.appliance)
    now, declared = {**vllm, **appliance}, vllm_declared | appliance_declared
    if a.phase == "before":
        Path(a.out).write_text(json.dumps(now))
        print(f"{len(now)} samples -> {a.out}")
        return 0
    before = json.loads(Path(a.before).read_text()) if a.before else {}
    rows, missing, not_yet = [], 0, 0
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name in dict.fromkeys(NAME.findall(expr)):
                present = name in now or name in declared
                moved = None
                if present and (f"rate({name}" in expr or f"increase({name}" in expr):
                    moved = now.get(name, 0.0) != before.get(name, 0.0)
                waits_for = None if present else event_of(name)
                rows.append({"panel": panel["title"], "metric": name, "present": present, "moved": moved,
                             "value": now.get(name), **({"waits_for": waits_for} if waits_for else {})})
                missing += not present and not waits_for
                not_yet += bool(waits_for)
    Path(a.out).write_text(json.dumps(rows, indent=1))
    print(f"{'panel':<52} {'metric':<58} {'present':>7} {'moved':>6}")
    for r in rows:
        moved = "-" if r["moved"] is None else ("yes" if r["moved"] else "no")
        shown = "yes" if r["present"] else ("not yet" if r.get("waits_for") else "NO")
        print(f"{r['panel'][:52]:<52} {r['metric'][:58]:<58} {shown:>7} {moved:>6}")
    for name, event in {r["metric"]: r["waits_for"] for r in rows if r.get("waits_for")}.items():
        print(f"not yet: {name} (LMCache exports it from {event} on; none in this run)")
    print(f"{len(rows)} metric uses in {len({r['panel'] for r in rows})} panels; {missing} missing"
          + (f", {not_yet} not yet (no event)" if not_yet else ""))
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
