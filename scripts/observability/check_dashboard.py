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

Without Grafana, two more checks by the tools of Grafana's and Prometheus' own ecosystems (CI runs both,
tests/unit/test_dashboard_schema.py and tests/container/test_monitoring.py):

    python scripts/observability/check_dashboard.py schema        # needs pip install grafana-foundation-sdk
    python scripts/observability/check_dashboard.py prometheus --prometheus http://127.0.0.1:9090 \
        --vllm http://127.0.0.1:8000 --appliance http://127.0.0.1:9464

`schema` reads the dashboard with the Grafana Foundation SDK, whose types are generated from Grafana's own
schema, and writes it back: a key the schema does not have is dropped on the way, a panel type or a query that
Grafana does not know decodes to none of its types. `prometheus` has a Prometheus server that scrapes both
endpoints run every panel's query: each must give data, or be "not yet" because a metric it reads has no series
before its first event (declared without a sample, or EVENT_ONLY); exit 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.error
import urllib.parse
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
    from entrypoint.inspectors.snapshot import parse_metrics
    with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=10) as r:
        text = r.read().decode()
    declared = {m.group(1) + suffix for m in re.finditer(r"^# TYPE (\S+) ", text, re.M) for suffix in SUFFIXES}
    return parse_metrics(text), declared


def _differences(original, written, path="") -> list[str]:
    """Where `written` (the SDK's output) lost or changed something of `original`."""
    if isinstance(original, dict):
        if not isinstance(written, dict):
            return [f"{path or '/'}: read as {type(written).__name__}"]
        return [d for key, value in original.items() for d in
                ([f"{path}/{key}: not in Grafana's schema here (dropped)"] if key not in written
                 else _differences(value, written[key], f"{path}/{key}"))]
    if isinstance(original, list) and isinstance(written, list) and len(original) == len(written):
        return [d for i, (o, w) in enumerate(zip(original, written)) for d in _differences(o, w, f"{path}[{i}]")]
    return [] if original == written else [f"{path}: {original!r} read as {written!r}"]


def schema_problems(dashboard: dict) -> list[str]:
    """The dashboard through the Grafana Foundation SDK and back (see the module's docstring)."""
    from grafana_foundation_sdk.cog import runtime
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models import dashboard as model
    from grafana_foundation_sdk.models import prometheus

    register_default_plugins()  # the panel types' options and the data sources' query types
    parsed = model.Dashboard.from_json(dashboard)
    problems = _differences(dashboard, json.loads(json.dumps(parsed, cls=JSONEncoder)))
    for i, panel in enumerate(parsed.panels or []):
        if runtime.panelcfg_config(getattr(panel, "type_val", None) or "") is None:
            problems.append(f"/panels[{i}] ({panel.title}): panel type {getattr(panel, 'type_val', None)!r} "
                            "is not Grafana's")
        for j, target in enumerate(getattr(panel, "targets", None) or []):
            if not isinstance(target, prometheus.Dataquery) or not target.expr:
                problems.append(f"/panels[{i}]/targets[{j}] ({panel.title}): not a Prometheus query with an expr")
    return problems


def query_panels(prometheus: str, vllm: str, appliance: str, rate_interval: str = "30s") -> list[dict]:
    """Every panel's queries, run by a Prometheus server that scrapes `vllm` and `appliance` (see the docstring).
    `rate_interval` stands for Grafana's $__rate_interval."""
    (vllm_now, vllm_declared), (appliance_now, appliance_declared) = scrape(vllm), scrape(appliance)
    now, declared = {**vllm_now, **appliance_now}, vllm_declared | appliance_declared
    rows = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", rate_interval)
            url = prometheus.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
            try:
                with urllib.request.urlopen(url, timeout=10) as r:
                    answer = json.load(r)
            except urllib.error.HTTPError as e:  # a query Prometheus cannot parse: 400 with the reason
                answer = json.load(e)
            if answer.get("status") != "success":
                result = f"ERROR: {answer.get('error')}"
            elif answer["data"]["result"]:
                result = "data"
            else:
                waiting = [n for n in dict.fromkeys(NAME.findall(expr))
                           if n not in now and (n in declared or event_of(n))]
                result = f"not yet: {', '.join(waiting)} (no series before the first event)" if waiting else "EMPTY"
            rows.append({"panel": panel["title"], "expr": expr, "result": result})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("phase", choices=("before", "after", "schema", "prometheus"))
    p.add_argument("--vllm")
    p.add_argument("--appliance")
    p.add_argument("--prometheus", help="a Prometheus server scraping --vllm and --appliance (phase prometheus)")
    p.add_argument("--before", help="the `before` file (phase after)")
    p.add_argument("--out")
    a = p.parse_args(argv)
    if a.phase == "schema":
        problems = schema_problems(json.loads(DASHBOARD.read_text()))
        print("\n".join(problems) or f"{DASHBOARD.name}: as Grafana's schema reads it")
        return 1 if problems else 0
    if not (a.vllm and a.appliance) or (a.phase == "prometheus") != bool(a.prometheus) or \
            (a.phase in ("before", "after") and not a.out):
        p.error(f"phase {a.phase} needs --vllm, --appliance and "
                + ("--prometheus" if a.phase == "prometheus" else "--out"))
    if a.phase == "prometheus":
        rows = query_panels(a.prometheus, a.vllm, a.appliance)
        for r in rows:
            print(f"{r['panel'][:44]:<44} {r['result'][:60]:<60} {r['expr']}")
        bad = [r for r in rows if r["result"] != "data" and not r["result"].startswith("not yet")]
        print(f"{len(rows)} queries in {len({r['panel'] for r in rows})} panels; "
              f"{len(bad)} without data or an event to wait for")
        return 1 if bad else 0
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
