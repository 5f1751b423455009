"""Record the metric names the installed LMCache server exposes, as Prometheus text, into a fixture file.

The CPU tests (dashboard queries, the LMCache stub's /metrics) check against this fixture, so that a panel can
never name a metric the real server does not have.

Two ways, the same output format (one `# TYPE` line and one sample per metric family, sorted):

    # from a running LMCache server (on the GPU machine; `lmcache server` serves /metrics on its HTTP port,
    # 8080 by default: it never starts its --prometheus-port exporter), or the appliance's endpoint (9464)
    python scripts/observability/record_lmcache_metrics.py --url http://127.0.0.1:8080/metrics --out FILE

    # without a server or a GPU: LMCache's own metric subscribers, created under the real OpenTelemetry
    # MeterProvider + Prometheus exporter the server uses (lmcache.v1.mp_observability.otel_init), each
    # instrument recorded once so that the exporter writes it out
    python scripts/observability/record_lmcache_metrics.py --from-package --out FILE

The second needs `lmcache`, `opentelemetry-sdk` and `opentelemetry-exporter-prometheus` importable (LMCache
installs both OpenTelemetry packages itself); it does not need torch's CUDA build.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import inspect
import sys
import urllib.request


def families_text(text: str, header: str) -> str:
    """Exposition text reduced to its `# TYPE` lines, as the server wrote them, and one line per sample name
    (labels and values dropped), family by family in the server's order."""
    lines, seen = [header], set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            lines.append(line)
        elif line and not line.startswith("#"):
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name not in seen:
                seen.add(name)
                lines.append(f"{name} 0")
    return "\n".join(lines) + "\n"


def from_server(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def from_package() -> str:
    """Create every metrics subscriber LMCache ships, with a recording meter, then touch each instrument."""
    import lmcache.v1.mp_observability.subscribers.metrics as subs
    from opentelemetry import metrics
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from prometheus_client import REGISTRY, generate_latest

    reader = PrometheusMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    created: list[tuple[str, object]] = []
    real_get_meter = metrics.get_meter

    class Recording:
        """A meter that remembers each instrument it creates (kind, instrument)."""
        def __init__(self, meter):
            self.meter = meter

        def __getattr__(self, attr):
            fn = getattr(self.meter, attr)
            if not attr.startswith("create_"):
                return fn

            def create(*args, **kwargs):
                inst = fn(*args, **kwargs)
                created.append((attr, inst))
                return inst
            return create

    metrics.get_meter = lambda *a, **k: Recording(real_get_meter(*a, **k))
    skipped = []
    try:
        for name, cls in inspect.getmembers(subs, inspect.isclass):
            if not name.endswith("Subscriber"):
                continue
            try:
                cls()
            except TypeError:  # needs a collaborator (the event bus itself): not a server metric family
                skipped.append(name)
    finally:
        metrics.get_meter = real_get_meter
    for kind, inst in created:
        if kind in ("create_counter", "create_up_down_counter"):
            inst.add(1)
        elif kind == "create_histogram":
            inst.record(1)
        elif kind == "create_gauge":
            inst.set(1)
        # observable instruments report through their own callbacks
    if skipped:
        print(f"not created (need arguments): {', '.join(skipped)}", file=sys.stderr)
    return generate_latest(REGISTRY).decode()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--url", help="a running LMCache server's /metrics")
    src.add_argument("--from-package", action="store_true", help="LMCache's own subscribers, no server")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    version = importlib.metadata.version("lmcache") if a.from_package else "server at " + a.url
    text = from_package() if a.from_package else from_server(a.url)
    how = "its metric subscribers through the OpenTelemetry Prometheus exporter" if a.from_package else "a scrape"
    header = (f"# LMCache {version}: metric families, recorded from {how} by "
              "scripts/observability/record_lmcache_metrics.py")
    out = families_text(text, header)
    with open(a.out, "w") as f:
        f.write(out)
    print(f"{out.count('# TYPE')} metric families -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
