"""Observability without processes: log lines, the supervision record, the tier readings, the exporter's
families, and the Grafana dashboard's queries against the metric names that really exist."""
import json
import re
import sys
from pathlib import Path

import pytest

from entrypoint.common import applog, state
from entrypoint.inspectors import snapshot
from entrypoint.programs import metrics
from entrypoint.rundir import RunDir

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docker" / "monitoring" / "grafana" / "dashboards" / "appliance.json"
STUBS = ROOT / "tests" / "stubs"


# -- log lines --------------------------------------------------------------------------------------------
def test_text_lines_are_prefixed_and_json_lines_are_records(monkeypatch, capsys):
    monkeypatch.delenv(applog.ENV, raising=False)
    applog.emit("watchdog", "vllm probe failed (1/3)\nsecond line")
    assert capsys.readouterr().err == "watchdog | vllm probe failed (1/3)\nwatchdog | second line\n"
    monkeypatch.setenv(applog.ENV, "json")
    applog.emit("watchdog", "vllm probe failed (1/3)", level="warning", event="probe_failed", program_pid=7)
    rec = json.loads(capsys.readouterr().err)
    assert {k: rec[k] for k in ("program", "level", "event", "message", "program_pid")} == {
        "program": "watchdog", "level": "warning", "event": "probe_failed", "message": "vllm probe failed (1/3)",
        "program_pid": 7}
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$", rec["ts"])


def test_the_logs_listener_wraps_program_output_and_passes_launcher_records(monkeypatch):
    from entrypoint.programs.logs import render_line
    monkeypatch.setenv(applog.ENV, "text")
    assert render_line("vllm", b"INFO started") == b"vllm     | INFO started"
    monkeypatch.setenv(applog.ENV, "json")
    wrapped = json.loads(render_line("vllm", b"INFO caf\xc3\xa9 \xff"))
    assert (wrapped["program"], wrapped["event"], wrapped["message"]) == ("vllm", "output", "INFO café \ufffd")
    launcher = applog.as_json("vllm", "waiting for the LMCache server", event="launcher").encode()
    assert render_line("vllm", launcher) == launcher
    assert json.loads(render_line("vllm", b'{"ts": "not ours"}'))["message"] == '{"ts": "not ours"}'


# -- the supervision record -------------------------------------------------------------------------------
def test_record_counts_restarts_by_reason_and_survives_a_bad_file(tmp_path):
    path = tmp_path / "state.json"
    state.start(path, ["a warning"])
    rec = state.Recorder(path)
    rec.restart("vllm", state.EXITED, "exited unexpectedly (pid 12)")
    rec.restart("vllm", state.UNHEALTHY, "3 failed probes in a row")
    rec.restart("vllm", state.UNHEALTHY, "3 failed probes in a row")
    rec.probe_failure("vllm")
    rec.pruned(3, 3000)
    data = state.load(path)
    assert data["restarts"] == {"vllm": {"exited": 1, "unhealthy": 2}}
    assert data["last_restart"]["reason"] == "unhealthy" and data["probe_failures"] == {"vllm": 1}
    assert (data["pruned_files"], data["pruned_bytes"], data["warnings"]) == (3, 3000, ["a warning"])
    path.write_text("{half a file")
    assert state.load(path)["restarts"] == {}  # a reader never fails on it


# -- tier readings ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("status, expected", [
    ({"storage_manager": {"l1_usage": [10, 100]}}, (10, 100)),  # LMCache 0.5.6
    ({"storage_manager": {"l1_manager": {"memory_used_bytes": 7, "memory_total_bytes": 70}}}, (7, 70)),  # 0.5.3
    ({"storage_manager": {"l1_managers": {"a": {"memory_used_bytes": 1, "memory_total_bytes": 2},
                                          "b": {"memory_used_bytes": 3, "memory_total_bytes": 4}}}}, (4, 6)),
    ({"storage_manager": {}}, None),
])
def test_l1_usage_reads_both_lmcache_status_shapes(status, expected):
    assert snapshot.l1_usage(status) == expected


def test_dir_bytes_counts_files_and_a_missing_dir_is_unknown(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_bytes(b"1" * 100)
    (tmp_path / "y").write_bytes(b"1" * 20)
    assert snapshot.dir_bytes(str(tmp_path)) == 120
    assert snapshot.dir_bytes(str(tmp_path / "nope")) is None


# -- the exporter's families ------------------------------------------------------------------------------
def exposition(plan, run, lmcache_text=None, monkeypatch=None):
    from prometheus_client import CollectorRegistry, generate_latest
    snap = snapshot.Snapshot(taken_at=0, supervisor_up=True, record=state.load(run.state),
                             processes=[{"name": "vllm", "state": "RUNNING", "pid": 10, "uptime_s": 5.0},
                                        {"name": "lmcache", "state": "BACKOFF", "pid": None, "uptime_s": None}],
                             tiers=[{"name": "cpu", "capacity_bytes": 4 << 30, "used_bytes": 1 << 30,
                                     "hit_rate": 0.5, "path": None}],
                             lmcache_up=True, lmcache_metrics_text=lmcache_text)
    monkeypatch.setattr(snapshot, "take", lambda *_: snap)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics.ApplianceCollector(plan, run, {"vllm": "0.0.1", "lmcache": "0.0.2"}))
    return generate_latest(registry).decode()


def test_exporter_writes_appliance_families_and_passes_lmcache_through(plan_for, tmp_path, monkeypatch):
    plan = plan_for({"VLLM_KV_OFFLOADING_BACKEND": "lmcache", "APPLIANCE_RUN_DIR": str(tmp_path),
                     "VLLM_API_KEY": "sk-planted-secret"})
    run = RunDir(tmp_path)
    state.start(run.state, [])
    state.Recorder(run.state).restart("vllm", state.EXITED)
    sys.path.insert(0, str(STUBS))
    import lmcache_stub
    text = exposition(plan, run, lmcache_stub.exposition(), monkeypatch)
    samples = snapshot.parse_metrics(text)
    assert samples['appliance_restarts_total'] == 1.0
    assert 'appliance_restarts_total{program="vllm",reason="exited"} 1.0' in text
    assert 'appliance_restarts_total{program="vllm",reason="unhealthy"} 0.0' in text
    assert 'appliance_program_up{program="vllm"} 1.0' in text and 'appliance_program_up{program="lmcache"} 0.0' in text
    assert 'appliance_tier_capacity_bytes{tier="cpu"} 4.294967296e+09' in text
    assert samples["lmcache_mp_lookup_hit_l1_tokens_total"] == 2048.0  # the LMCache server's, passed on
    assert "sk-planted-secret" not in text
    # every label value is bounded: program names, reasons, tiers, versions, the served name, the mode
    from prometheus_client.parser import text_string_to_metric_families
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if fam.name.startswith("appliance"):
                assert set(s.labels) <= {"program", "reason", "tier", "vllm_version", "lmcache_version",
                                         "served_model_name", "kv_offloading"}, s


def test_exporter_without_lmcache_metrics_says_so(plan_for, tmp_path, monkeypatch):
    plan = plan_for({"VLLM_KV_OFFLOADING_BACKEND": "lmcache", "APPLIANCE_RUN_DIR": str(tmp_path)})
    text = exposition(plan, RunDir(tmp_path), None, monkeypatch)
    assert "appliance_lmcache_metrics_up 0.0" in text and "lmcache_mp_" not in text


# -- the dashboard ----------------------------------------------------------------------------------------
def installed_vllm_metric_names() -> set[str]:
    """Every `vllm:*` name the installed vLLM defines (its metrics loggers), with the suffixes the Prometheus
    client adds to counters and histograms."""
    try:
        import importlib.util
        spec = importlib.util.find_spec("vllm")
    except ValueError:
        spec = None
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("vLLM is not installed here (the contract venv has it): cannot check vllm:* names")
    metrics_dir = Path(spec.submodule_search_locations[0]) / "v1" / "metrics"
    names = set()
    for f in metrics_dir.glob("*.py"):
        names |= set(re.findall(r'"(vllm:[a-z_:]+)"', f.read_text()))
    return {n + suffix for n in names for suffix in ("", "_total", "_bucket", "_sum", "_count")}


def exposed_names(text: str) -> set[str]:
    return {line.split("{", 1)[0].split(" ", 1)[0] for line in text.splitlines() if line and line[0] != "#"}


def test_dashboard_queries_name_only_metrics_that_exist(plan_for, tmp_path, monkeypatch):
    plan = plan_for({"VLLM_KV_OFFLOADING_BACKEND": "lmcache", "APPLIANCE_RUN_DIR": str(tmp_path)})
    run = RunDir(tmp_path)
    state.start(run.state, [])
    state.Recorder(run.state).restart("vllm", state.EXITED)
    state.Recorder(run.state).probe_failure("vllm")
    appliance = exposed_names(exposition(plan, run, None, monkeypatch)) | {"appliance_info"}
    fixture = next((STUBS / "fixtures").glob("lmcache-*-metrics.txt")).read_text()
    lmcache = exposed_names(fixture)
    vllm = installed_vllm_metric_names()
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    used = set()
    for expr in exprs:
        for name in re.findall(r"\b((?:vllm:|lmcache_|appliance_)[A-Za-z0-9_:]+)", expr):
            used.add(name)
            assert name in appliance | lmcache | vllm, f"{name} (in {expr!r}) is exposed by nothing"
    assert any(n.startswith("vllm:") for n in used) and any(n.startswith("lmcache_") for n in used)
    assert any(n.startswith("appliance_") for n in used)


def test_dashboard_data_check_reports_missing_and_moving_metrics(tmp_path, monkeypatch):
    """scripts/observability/check_dashboard.py (run during a GPU benchmark): every metric a panel names is
    looked up in the two endpoints, and a rate() over a counter that did not move is reported as such."""
    import importlib.util
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    spec = importlib.util.spec_from_file_location("check_dashboard",
                                                  ROOT / "scripts" / "observability" / "check_dashboard.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    bodies = {"vllm": "# TYPE vllm:prompt_tokens_total counter\nvllm:prompt_tokens_total 10\n",
              "appliance": "# TYPE appliance_warnings gauge\nappliance_warnings 0\n"
                           "# TYPE appliance_restarts_total counter\n"}  # labelled, nothing restarted yet

    def serve(name):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                body = bodies[name].encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
        server = HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server, f"http://127.0.0.1:{server.server_address[1]}"

    (v, vurl), (a, aurl) = serve("vllm"), serve("appliance")
    try:
        before = tmp_path / "before.json"
        assert check.main(["before", "--vllm", vurl, "--appliance", aurl, "--out", str(before)]) == 0
        bodies["vllm"] = "# TYPE vllm:prompt_tokens_total counter\nvllm:prompt_tokens_total 25\n"
        out = tmp_path / "after.json"
        # most dashboard metrics are absent from these two small endpoints: exit 1, each reported
        assert check.main(["after", "--vllm", vurl, "--appliance", aurl, "--before", str(before),
                           "--out", str(out)]) == 1
        rows = json.loads(out.read_text())
        prompt = next(r for r in rows if r["metric"] == "vllm:prompt_tokens_total")
        assert (prompt["present"], prompt["moved"], prompt["value"]) == (True, True, 25.0)
        warnings = next(r for r in rows if r["metric"] == "appliance_warnings")
        assert (warnings["present"], warnings["moved"]) == (True, None)  # a gauge shown as it is
        restarts = next(r for r in rows if r["metric"] == "appliance_restarts_total")
        assert (restarts["present"], restarts["value"]) == (True, None)  # declared, no sample yet: not missing
        assert any(not r["present"] and "waits_for" not in r for r in rows)
        # LMCache's eviction counter exists only from the first eviction: absent, it waits for one
        evicted = next(r for r in rows if r["metric"] == "lmcache_mp_l1_evicted_chunks_total")
        assert (evicted["present"], evicted["waits_for"]) == (False, "a CPU-tier eviction")
        bodies["appliance"] += ("# TYPE lmcache_mp_l1_evicted_chunks_total counter\n"
                                "lmcache_mp_l1_evicted_chunks_total 3\n")
        check.main(["after", "--vllm", vurl, "--appliance", aurl, "--before", str(before), "--out", str(out)])
        evicted = next(r for r in json.loads(out.read_text()) if r["metric"] == "lmcache_mp_l1_evicted_chunks_total")
        assert evicted["present"] and "waits_for" not in evicted
    finally:
        v.shutdown()
        a.shutdown()


def test_stub_fixture_holds_every_family_the_real_server_exposed():
    """The real LMCache 0.5.6 server's families, scraped on an H200 (fixtures/...-h200-scrape.txt), are all in
    the stub's fixture, so a panel or test written against the stub cannot miss a real name, and the dashboard's
    LMCache panels read names the real server wrote (the ones an idle run never records excepted: evictions,
    allocation failures, L2 loads; they come from LMCache's own subscribers in the stub's fixture)."""
    real = exposed_names((STUBS / "fixtures" / "lmcache-0.5.6-metrics-h200-scrape.txt").read_text())
    stub = exposed_names((STUBS / "fixtures" / "lmcache-0.5.6-metrics.txt").read_text())
    assert len(real) >= 30 and all(n.startswith("lmcache_") for n in real)
    assert real <= stub, sorted(real - stub)
    dash = json.loads(DASHBOARD.read_text())
    used = {n for p in dash["panels"] for t in p.get("targets", [])
            for n in re.findall(r"\b(lmcache_[A-Za-z0-9_:]+)", t["expr"])}
    seen_live = {n for n in used if n in real}
    assert len(seen_live) >= len(used) - 3, sorted(used - real)


def test_event_only_metrics_are_names_lmcache_declares():
    """check_dashboard.EVENT_ONLY forgives an absent metric only under a name LMCache's own subscribers use
    (the fixture holds them all): a renamed metric is still reported missing."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_dashboard",
                                                  ROOT / "scripts" / "observability" / "check_dashboard.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    declared = (ROOT / "tests" / "stubs" / "fixtures" / "lmcache-0.5.6-metrics.txt").read_text()
    for base in check.EVENT_ONLY:
        assert f"# TYPE {base}" in declared, base
    assert check.event_of("lmcache_mp_l1_evicted_chunks_total") == "a CPU-tier eviction"
    assert check.event_of("lmcache_mp_l1_evicted_chunks_renamed_total") is None
