"""The metrics endpoint's HTTP side (entrypoint/programs/metrics.py on common/webserver.py), served in this process
with a registry of its own: prometheus_client's exposition in the format the scraper asks for, only GET /metrics,
and no client that can hold it (wsgiref answered one connection at a time: one that sent nothing blocked every
scrape). The families themselves: tests/unit/test_observability_parts.py; the supervised program:
tests/supervisor/test_status_and_metrics.py."""
from __future__ import annotations

import socket
import threading

import pytest
import requests
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily

from entrypoint.common import webserver
from entrypoint.inspectors.snapshot import parse_metrics
from entrypoint.programs import metrics

from ports import free_port
from raw_http import exchange, status_of


class Slow:
    """A collector that takes its time once `hold` is cleared (the LMCache server's exporter, slow to answer)."""

    def __init__(self):
        self.hold = threading.Event()
        self.hold.set()

    def collect(self):
        self.hold.wait(30)
        yield GaugeMetricFamily("appliance_test_up", "A test gauge.", value=1.0)


@pytest.fixture
def endpoint():
    """(port, log lines, the collector) of a metrics endpoint with the program's limits and a 1 s idle timeout."""
    registry = CollectorRegistry(auto_describe=False)
    collector = Slow()
    registry.register(collector)
    lines: list[str] = []
    limits = webserver.Limits(**{**metrics.LIMITS.__dict__, "idle_timeout": 1.0, "read_timeout": 1.0})
    server = webserver.Server(metrics.make_handler(registry), "127.0.0.1", free_port(), limits,
                              lambda msg, *a, **k: lines.append(msg), error_type="metrics_error")
    server.start_thread("test-metrics")
    yield server.port, lines, collector
    collector.hold.set()
    server.shutdown()
    server.server_close()


def scrape(port: int, **headers) -> requests.Response:
    return requests.get(f"http://127.0.0.1:{port}/metrics", headers=headers, timeout=10)


def test_the_exposition_is_prometheus_clients_in_the_format_asked_for(endpoint):
    port, lines, _ = endpoint
    r = scrape(port)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert parse_metrics(r.text) == {"appliance_test_up": 1.0}
    r = scrape(port, Accept="application/openmetrics-text; version=1.0.0")
    assert r.headers["Content-Type"].startswith("application/openmetrics-text") and r.text.endswith("# EOF\n")
    assert requests.head(f"http://127.0.0.1:{port}/metrics", timeout=10).status_code == 200
    assert lines == []


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET / HTTP/1.1\r\nHost: m\r\n\r\n", 404),
    (b"POST /metrics HTTP/1.1\r\nHost: m\r\nContent-Length: 0\r\n\r\n", 405),
    (b"GET /metrics HTTP/1.1\r\nHost: m\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
    (b"GET /metrics HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nab\r\n0\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\r\nHost: m\r\nContent-Length: 100000\r\n\r\n", 413),
    (b"GET /metrics HTTP/1.1\r\nHost: m\r\nX-A: a\r\n b\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\r\nHost: m\r\nX-Long: " + b"a" * 10000 + b"\r\n\r\n", 400),
], ids=["other path", "POST", "two lengths", "negative chunk", "large body", "obs-fold", "long header"])
def test_anything_but_a_scrape_gets_a_clean_4xx(endpoint, request_bytes, status):
    port, lines, _ = endpoint
    assert status_of(exchange(port, request_bytes)) == status
    assert scrape(port).status_code == 200 and lines == []


def test_an_idle_or_slow_client_holds_up_no_scrape(endpoint):
    """wsgiref served one connection at a time: one that sent nothing blocked every scrape."""
    port, lines, collector = endpoint
    with socket.create_connection(("127.0.0.1", port), timeout=10) as idle, \
            socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
        slow.sendall(b"GET /metrics HTTP/1.1\r\nHost: m\r\n")  # a head that never ends
        assert scrape(port).status_code == 200
        # a slow collector does not hold up the server either: the next scrape waits for it, the server answers
        collector.hold.clear()
        waiting = threading.Thread(target=scrape, args=(port,))
        waiting.start()
        assert status_of(exchange(port, b"GET / HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")) == 404
        collector.hold.set()
        waiting.join(30)
        # both connections are closed by the endpoint (the test's own timeout would raise instead)
        assert idle.recv(100) == b"" and slow.recv(100) == b""
    assert lines == []
