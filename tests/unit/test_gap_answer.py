"""The gap answer's parts (gap.py, reuse_port.py, the launcher's choice), on real sockets of this host.

The whole of it under supervisord, with the stub vLLM restarting, is tests/supervisor/test_gap_answer_restart.py.
"""
from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from entrypoint.programs import gap as gapmod
from entrypoint.programs.gap import Gap, listeners
from entrypoint.programs.launch import port_free, shared_port_argv

from ports import free_port

REPO = Path(__file__).resolve().parents[2]
WRAPPER = str(REPO / "entrypoint" / "programs" / "reuse_port.py")




def until(predicate, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("timed out")


def get(port: int):
    try:
        return requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=2)
    except requests.ConnectionError as e:
        return e


@pytest.fixture
def running_gap():
    made = []

    def start(port: int, **kw) -> Gap:
        g = Gap("127.0.0.1", port, 7, **kw)
        t = threading.Thread(target=g.run, daemon=True)
        t.start()
        made.append((g, t))
        return g

    yield start
    for g, _ in made:
        g.stopping.set()
    for _, t in made:
        t.join(10)  # run() releases the port and stops the server before it returns


def vllm_like_socket(port: int, reuse_port: bool) -> socket.socket:
    """What vLLM's launchers/launcher.py create_server_socket does (SO_REUSEADDR; SO_REUSEPORT if asked)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", port))
    return s


def test_listeners_reads_proc_net_tcp(tmp_path):
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    (tmp_path / "tcp").write_text(header +
        "   0: 00000000:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1\n"
        "   1: 0100007F:1F40 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 222 1\n"
        "   2: 0100007F:1F41 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 333 1\n")
    (tmp_path / "tcp6").write_text(header +
        "   0: 00000000000000000000000000000000:1F40 00000000000000000000000000000000:0000 0A 00000000:00000000 "
        "00:00000000 00000000     0        0 444 1\n")
    # 8000 = 0x1F40: the IPv4 and IPv6 listeners, not the established connection, not port 8001
    assert listeners(8000, str(tmp_path)) == {111, 444}
    assert listeners(8002, str(tmp_path)) == set()
    assert listeners(8000, str(tmp_path / "missing")) == set()


def test_listeners_sees_a_real_listening_socket_through_sock_diag_and_proc():
    port = free_port()
    s = vllm_like_socket(port, reuse_port=True)
    assert listeners(port) == set(), "bound but not listening (vLLM while it loads) is not a listener"
    s.listen()
    six = socket.socket(socket.AF_INET6)
    six.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    six.bind(("::1", port))
    six.listen()
    both = {os.fstat(s.fileno()).st_ino, os.fstat(six.fileno()).st_ino}
    assert gapmod.diag_listeners(port) == gapmod.proc_listeners(port) == listeners(port) == both
    assert gapmod.diag_listeners(free_port()) == set()
    s.close()
    six.close()


def test_answers_503_with_retry_after_until_vllm_listens_then_stands_aside(running_gap):
    port = free_port()
    g = running_gap(port)
    until(lambda: g.sock is not None)
    r = get(port)
    assert r.status_code == 503 and r.headers["Retry-After"] == "7" and r.headers[gapmod.HEADER] == "1"
    assert r.headers["Connection"] == "close"
    assert r.json()["error"]["code"] == 503 and "retry after 7 s" in r.json()["error"]["message"]
    # A POST with a body is read to the end before the answer: the client sees the 503, not a reset.
    big = requests.post(f"http://127.0.0.1:{port}/v1/completions", json={"prompt": "x" * 200_000}, timeout=5)
    assert big.status_code == 503
    # vLLM (SO_REUSEPORT through reuse_port.py) binds while the gap holds the port, and loads: still 503.
    vllm = vllm_like_socket(port, reuse_port=True)
    assert get(port).status_code == 503
    # vLLM listens: the gap closes its socket within a poll; from then on every connection is vLLM's.
    vllm.listen(64)
    until(lambda: g.sock is None)

    def serve():
        while True:
            try:
                conn, _ = vllm.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            conn.close()
    threading.Thread(target=serve, daemon=True).start()
    assert [get(port).status_code for _ in range(20)] == [200] * 20
    # vLLM dies: the gap listens again within RELEASED_POLL_S.
    vllm.shutdown(socket.SHUT_RDWR)  # wakes the accept() above, so that the socket really closes
    vllm.close()
    until(lambda: g.sock is not None, gapmod.RELEASED_POLL_S * 4)
    assert get(port).status_code == 503
    assert g.answered >= 4


def test_a_vllm_without_so_reuseport_cannot_bind_while_the_gap_holds_the_port(running_gap):
    """Why reuse_port.py exists: vLLM's single-API-server path binds without SO_REUSEPORT."""
    port = free_port()
    g = running_gap(port)
    until(lambda: g.sock is not None)
    with pytest.raises(OSError):
        vllm_like_socket(port, reuse_port=False)
    assert not port_free("127.0.0.1", port) and port_free("127.0.0.1", port, shared=True)


def test_gap_off_file_leaves_the_port_to_a_process_that_cannot_share_it(running_gap, tmp_path):
    port = free_port()
    off = tmp_path / gapmod.GAP_OFF
    g = running_gap(port, off_file=off)
    until(lambda: g.sock is not None)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        off.write_text(f"{child.pid}\n")
        until(lambda: g.sock is None)
        s = vllm_like_socket(port, reuse_port=False)  # the unshared vLLM binds: no EADDRINUSE
        s.close()
        seen = g.rounds
        until(lambda: g.rounds >= seen + 2)  # two more rounds of the gap's watch, each free to take the port
        assert g.sock is None, "the gap must not take the port back while that process lives"
    finally:
        child.kill()
        child.wait()
    until(lambda: g.sock is not None, gapmod.RELEASED_POLL_S * 4)
    assert not off.exists()


def test_a_foreign_holder_of_the_port_is_reported_once_and_waited_for(running_gap):
    port = free_port()
    foreign = socket.socket()  # bound, not listening, without SO_REUSEADDR or SO_REUSEPORT
    foreign.bind(("127.0.0.1", port))
    said = []
    g = running_gap(port, say=lambda message, **kw: said.append(message))
    until(lambda: said)
    seen = g.rounds
    until(lambda: g.rounds >= seen + 2)  # two more tries to listen: still one report
    assert g.sock is None and len([m for m in said if "cannot listen" in m]) == 1
    foreign.close()
    until(lambda: g.sock is not None, gapmod.RELEASED_POLL_S * 4)


# -- the launcher's command line ------------------------------------------------------------------------

def script(tmp_path: Path, name: str, first_line: str) -> str:
    path = tmp_path / name
    path.write_text(first_line + "\nprint('hi')\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_shared_port_argv_for_python_programs(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert shared_port_argv(["python3", "stub.py", "serve", "m"], 8000) == ["python3", WRAPPER, "8000", "--",
                                                                            "stub.py", "serve", "m"]
    assert shared_port_argv(["/usr/bin/python3.11", "-m", "vllm.entrypoints.cli.main", "serve"], 9) == [
        "/usr/bin/python3.11", WRAPPER, "9", "--", "-m", "vllm.entrypoints.cli.main", "serve"]
    vllm = script(tmp_path, "vllm", "#!/opt/venv/bin/python3")  # a pip console script
    assert shared_port_argv(["vllm", "serve", "m"], 8000) == ["/opt/venv/bin/python3", WRAPPER, "8000", "--",
                                                              vllm, "serve", "m"]
    env = script(tmp_path, "envpy", "#!/usr/bin/env python3")
    assert shared_port_argv(["envpy"], 1)[:1] == ["python3"] and shared_port_argv(["envpy"], 1)[4] == env


@pytest.mark.parametrize("argv", [[], ["python3", "-u", "x.py"], ["python3", "-m"], ["no-such-command-x"],
                                  ["shellwrap"], ["pyopts"], ["binary"]])
def test_shared_port_argv_declines_what_it_cannot_run(tmp_path, monkeypatch, argv):
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    script(tmp_path, "shellwrap", "#!/bin/sh")  # the test image's `vllm`: a shell wrapper of the stub
    script(tmp_path, "pyopts", "#!/usr/bin/python3 -u")
    (tmp_path / "binary").write_bytes(b"\x7fELF\0\0")
    (tmp_path / "binary").chmod(0o755)
    assert shared_port_argv(argv, 8000) is None


def test_reuse_port_wrapper_runs_the_script_with_so_reuseport_on_its_port(tmp_path):
    port = free_port()
    probe = tmp_path / "probe.py"
    (tmp_path / "helper.py").write_text("VALUE = 'imported from the script directory'\n")
    probe.write_text(
        "import socket, sys\n"
        "from helper import VALUE\n"  # sys.path[0] is the script's directory, as with `python probe.py`
        f"a = socket.socket(); a.bind(('127.0.0.1', {port}))\n"
        "b = socket.socket(); b.bind(('127.0.0.1', 0))\n"
        "print(a.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT),"
        " b.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT), sys.argv[1:], __name__, VALUE)\n"
        "sys.exit(3)\n")
    out = subprocess.run([sys.executable, WRAPPER, str(port), "--", str(probe), "x", "--y"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 3, out.stderr
    assert out.stdout.split(" ", 2)[:2] == ["1", "0"]  # only the socket on the API port
    assert "['x', '--y'] __main__ imported from the script directory" in out.stdout
    bad = subprocess.run([sys.executable, WRAPPER, "x", "--", "y"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "usage" in bad.stderr



def test_state_file_for_the_metrics_exporter(running_gap, tmp_path):
    import json
    state = tmp_path / gapmod.GAP_STATE
    port = free_port()
    g = running_gap(port, state_file=state)
    until(lambda: state.exists() and json.loads(state.read_text())["holding"] is True)
    for _ in range(3):
        assert get(port).status_code == 503
    vllm = vllm_like_socket(port, reuse_port=True)
    vllm.listen()
    until(lambda: json.loads(state.read_text())["holding"] is False)
    assert json.loads(state.read_text())["answered"] == g.answered >= 3
    vllm.close()
