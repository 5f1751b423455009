"""The pieces under the supervisor tests, without processes: the eventlistener protocol as supervisord
speaks it, the log relay's input, the metrics parser, the rendered policy, the disk-tier prune."""
from __future__ import annotations

import configparser
import io
import os

from supervisor.events import ProcessLogStdoutEvent

from entrypoint.common.disk_prune import prune
from entrypoint.common.events import Listener, log_bytes, split_payload
from entrypoint.config.load import make_plan
from entrypoint.programs.watchdog import parse_metrics
from entrypoint.render.supervisord_conf import render, stop_wait_seconds
from entrypoint.rundir import RunDir


class _Proc:  # what supervisor's events read from a process
    class config:
        name = "vllm"
        options = type("o", (), {"strip_ansi": False})

    group = type("g", (), {"config": type("c", (), {"name": "vllm"})})
    pid = 42


def envelope(payload: str) -> bytes:
    """As supervisord's pool writes it: `len` counts the characters of the text, which is sent as UTF-8."""
    header = ("ver:3.0 server:supervisor serial:1 pool:logs poolserial:1 eventname:PROCESS_LOG_STDOUT "
              f"len:{len(payload)}")
    return (header + "\n" + payload).encode()


def test_listener_reads_non_ascii_and_split_characters_as_supervisord_sends_them():
    whole = ProcessLogStdoutEvent(_Proc, 42, "progress \u2588\u2588 done \u2713\n".encode()).payload()
    split = ProcessLogStdoutEvent(_Proc, 42, "tail \u2588".encode()[:-1]).payload()  # a read cut inside a character
    r, w = os.pipe()
    os.write(w, envelope(whole) + envelope(split))
    out = io.BytesIO()
    listener = Listener(r, out)
    headers, payload = listener.next(timeout=1)
    assert headers["eventname"] == "PROCESS_LOG_STDOUT"
    meta, data = split_payload(payload)
    assert meta["processname"] == "vllm" and log_bytes(data) == "progress \u2588\u2588 done \u2713\n".encode()
    _, data = split_payload(listener.next(timeout=1)[1])
    assert data.startswith("Undecodable: ") and log_bytes(data) == "tail \u2588".encode()[:-1]
    assert listener.next(timeout=0.05) is None  # no event: a timeout, not a hang
    assert out.getvalue() == b"READY\nRESULT 2\nOKREADY\nRESULT 2\nOKREADY\n"
    os.close(w)
    os.close(r)


def test_metrics_are_summed_over_label_sets():
    text = ('# HELP vllm:num_requests_running x\nvllm:num_requests_running{engine="0",model_name="m"} 2.0\n'
            'vllm:num_requests_running{engine="1",model_name="m"} 1.0\nvllm:generation_tokens_total{a="b c"} 7\n')
    assert parse_metrics(text) == {"vllm:num_requests_running": 3.0, "vllm:generation_tokens_total": 7.0}


def test_rendered_policy(tmp_path):
    env = {"VLLM_KV_OFFLOADING_BACKEND": "lmcache", "APPLIANCE_RUN_DIR": str(tmp_path / "run 100%"),
           "APPLIANCE_SHUTDOWN_TIMEOUT": "30", "APPLIANCE_STARTUP_TIMEOUT": "900", "APPLIANCE_GAP_ANSWER": "true"}
    plan = make_plan(None, [], environ=env)
    conf = configparser.RawConfigParser()
    conf.read_string(render(plan, RunDir.of(plan), "pw"))
    vllm, lmcache = conf["program:vllm"], conf["program:lmcache"]
    assert int(vllm["stopwaitsecs"]) == stop_wait_seconds(plan) > 30  # longer than vLLM's own drain
    assert vllm["stopasgroup"] == vllm["killasgroup"] == lmcache["killasgroup"] == "true"
    assert vllm["startsecs"] == "900" and vllm["startretries"] == "3"
    assert "100%%" in vllm["command"]  # supervisord expands %(...)s
    priorities = {s.split(":", 1)[1]: int(conf[s]["priority"]) for s in conf.sections()
                  if s.startswith(("program:", "eventlistener:"))}
    # started in this order, stopped in the reverse one
    assert sorted(priorities, key=priorities.get) == ["logs", "on-fatal", "metrics", "gap", "lmcache", "vllm",
                                                         "watchdog"]


def test_prune_removes_least_recently_used_down_to_90_percent(tmp_path):
    for i in range(10):
        f = tmp_path / "sub" / f"{i}" if i % 2 else tmp_path / f"{i}"
        f.parent.mkdir(exist_ok=True)
        f.write_bytes(b"x" * 1000)
        os.utime(f, (100 + i, 100 + i))
    assert prune(tmp_path, 20_000) == (0, 0, 10_000)
    assert prune(tmp_path, 5_000) == (6, 6_000, 10_000)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["6", "7", "8", "9"]


def test_prune_leaves_what_the_running_lmcache_server_wrote(tmp_path):
    # files 0-4 written before the server started (LMCache does not count them), 5-9 since (it does)
    for i in range(10):
        f = tmp_path / f"{i}"
        f.write_bytes(b"x" * 1000)
        os.utime(f, (100 + i, 100 + i))
    assert prune(tmp_path, 5_000, written_before=105) == (5, 5_000, 10_000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["5", "6", "7", "8", "9"]
    # over the cap with only the server's own files left: nothing more goes
    assert prune(tmp_path, 4_000, written_before=105) == (0, 0, 5_000)


def test_watchdog_prunes_the_servers_own_files_only_past_the_hard_bound(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from entrypoint.programs import watchdog

    said = []
    monkeypatch.setattr(watchdog, "say", lambda _name, text: said.append(text))
    disk = SimpleNamespace(max_size_gib=10_000 / (1 << 30), path=str(tmp_path), base=str(tmp_path))
    dog = SimpleNamespace(plan=SimpleNamespace(lmcache=SimpleNamespace(disk=disk)),
                          record=SimpleNamespace(pruned=lambda *a: None), lmcache_since=1_000.0,
                          evicting_alone_for=None)
    monkeypatch.setattr(watchdog.disk_prune, "tier_dirs", lambda disk: [disk.path])
    for i in range(4):  # an earlier server's files: 4,000 bytes
        (tmp_path / f"old{i}").write_bytes(b"x" * 1000)
        os.utime(tmp_path / f"old{i}", (500 + i, 500 + i))
    for i in range(7):  # this server's: 7,000 bytes; 11,000 in all, 10 % over the cap of 10,000
        (tmp_path / f"new{i}").write_bytes(b"x" * 1000)
        os.utime(tmp_path / f"new{i}", (2_000 + i, 2_000 + i))
    watchdog.Watchdog.prune_disk(dog)
    # the earlier server's least recently used files went first, down to 90 % of the cap; this server's stayed
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["old2", "old3"] + [f"new{i}" for i in range(7)])
    for i in range(7, 12):  # this server's files alone now 12,000 (+ 2,000 old): past the hard bound
        (tmp_path / f"new{i}").write_bytes(b"x" * 1000)
        os.utime(tmp_path / f"new{i}", (2_000 + i, 2_000 + i))
    said.clear()
    watchdog.Watchdog.prune_disk(dog)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert "old2" not in left and "old3" not in left and "new0" not in left, left
    # down to ALONE_PRUNE_TO of the cap, not the usual 90 %: from now on nothing else frees space between prunes
    assert sum((tmp_path / n).stat().st_size for n in left) == 7_000
    assert any("files its server still counts were removed" in s for s in said), said
    # that server's eviction is stalled now: later prunes take the tier to its cap on their own (no 5 % slack)
    assert dog.evicting_alone_for == 1_000.0
    for i in range(12, 16):  # 1,000 bytes over the cap of 10,000: under the hard bound, yet pruned
        (tmp_path / f"new{i}").write_bytes(b"x" * 1000)
        os.utime(tmp_path / f"new{i}", (2_000 + i, 2_000 + i))
    assert sum(f.stat().st_size for f in tmp_path.iterdir()) > 10_000
    held, after = watchdog.Watchdog.prune_disk(dog)
    assert held > 10_000 and after == 7_000
    assert sum(f.stat().st_size for f in tmp_path.iterdir()) == after
    # a new LMCache server counts its own files again: back to leaving them to its eviction up to the bound
    dog.lmcache_since = 3_000.0
    for i in range(2):
        (tmp_path / f"next{i}").write_bytes(b"x" * 1000)
        os.utime(tmp_path / f"next{i}", (3_100 + i, 3_100 + i))
    watchdog.Watchdog.prune_disk(dog)
    assert {"next0", "next1"} <= {p.name for p in tmp_path.iterdir()}
    # with no LMCache server of its own running (in-process mode, or between its restarts) anything may go
    dog.lmcache_since = None
    for i in range(3):
        (tmp_path / f"more{i}").write_bytes(b"x" * 1000)
    watchdog.Watchdog.prune_disk(dog)
    assert sum(f.stat().st_size for f in tmp_path.iterdir()) <= 9_000
