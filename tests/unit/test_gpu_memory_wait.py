"""The vLLM launcher waits for GPU memory a crashed vLLM still holds (through the LMCache server) to be freed;
started through reuse_port.py, vLLM's CLI is imported first and the wait comes after it."""
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from entrypoint.config.plan import Plan
from entrypoint.programs import launch, reuse_port

WRAPPER = Path(reuse_port.__file__)


def fake_nvidia_smi(tmp_path, monkeypatch, free_mib):
    state = tmp_path / "free"
    state.write_text(str(free_mib))
    tool = tmp_path / "nvidia-smi"
    tool.write_text(f"#!/bin/sh\necho \"0, $(cat {state}), 10000\"\necho \"1, 10000, 10000\"\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return state


class FakeClock:
    """reuse_port's `time`, without the wall clock: sleep(s) moves monotonic() on by s and records s; `at`
    runs a callback once the clock has reached a time (the memory being freed meanwhile)."""

    def __init__(self, at: dict[float, object] | None = None):
        self.now, self.sleeps, self.at = 1000.0, [], dict(at or {})

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        for when in sorted(w for w in self.at if self.now - 1000.0 >= w):
            self.at.pop(when)()


def fake_clock(monkeypatch, at=None) -> FakeClock:
    clock = FakeClock(at)
    monkeypatch.setattr(reuse_port, "time", SimpleNamespace(monotonic=clock.monotonic, sleep=clock.sleep))
    return clock


def test_waits_until_the_memory_is_free(tmp_path, monkeypatch, capsys):
    state = fake_nvidia_smi(tmp_path, monkeypatch, free_mib=4000)
    clock = fake_clock(monkeypatch, at={1.5: lambda: state.write_text("9000")})  # freed 1.5 s into the wait
    assert reuse_port.wait_for_gpu_memory(*launch.gpu_wait(Plan(values={"VLLM_GPU_MEMORY_UTILIZATION": 0.6})))
    assert clock.sleeps == [1.0, 1.0]  # polled once a second until the memory was free, then no more
    out = capsys.readouterr().out
    assert "waiting for GPU memory to be released (GPU 0: 3.9 of 9.8 GiB free; vLLM asks for 0.6 of it)" in out
    assert "GPU memory released after 2.0 s" in out


def test_no_wait_when_memory_is_free_or_no_gpu_tool(tmp_path, monkeypatch, capsys):
    fake_nvidia_smi(tmp_path, monkeypatch, free_mib=9500)
    clock = fake_clock(monkeypatch)
    assert reuse_port.wait_for_gpu_memory(*launch.gpu_wait(Plan(values={})))  # vLLM's default share, 0.92
    monkeypatch.setenv("PATH", "/nonexistent")
    assert reuse_port.wait_for_gpu_memory(*launch.gpu_wait(Plan(values={})))
    assert clock.sleeps == [] and capsys.readouterr().out == ""


def test_gives_up_after_the_bound(tmp_path, monkeypatch, capsys):
    fake_nvidia_smi(tmp_path, monkeypatch, free_mib=100)
    clock = fake_clock(monkeypatch)
    assert not reuse_port.wait_for_gpu_memory(0.5, 1, 3.0)
    assert clock.sleeps == [1.0, 1.0, 1.0]  # checked at 0, 1, 2 and 3 s, then given up
    assert "GPU memory still short after 3 s; starting vLLM anyway" in capsys.readouterr().out


def test_reuse_port_imports_the_cli_before_it_waits_then_runs_the_program(tmp_path, monkeypatch):
    """The import (vLLM's: ~20 s) overlaps the wait for the LMCache server's reap (>= 30 s) after a crash."""
    fake_nvidia_smi(tmp_path, monkeypatch, free_mib=100)
    # short at the first look, free from the second on (one second later): no timer racing the wait
    (tmp_path / "nvidia-smi").write_text(f"#!/bin/sh\nif [ -e {tmp_path}/looked ]; then echo '0, 9000, 10000'; "
                                         f"else touch {tmp_path}/looked; echo '0, 100, 10000'; fi\n")
    (tmp_path / "slowcli.py").write_text("import time\nSTAMP = time.time()\nprint('imported', flush=True)\n")
    (tmp_path / "prog.py").write_text("import sys, time, slowcli\nprint('ran', slowcli.STAMP < time.time(), "
                                      "sys.argv[1:], flush=True)\n")
    out = subprocess.run([sys.executable, str(WRAPPER), "8123", "--preload", "slowcli", "--gpu-wait", "0.6,1,20",
                          "--", str(tmp_path / "prog.py"), "serve", "--x"], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path, env={"PATH": f"{tmp_path}:/usr/bin:/bin",
                                                        "PYTHONPATH": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    # imported once (before the wait), the wait, then the program with its own arguments
    assert lines[0] == "imported" and lines.count("imported") == 1, lines
    assert lines[1].startswith("[appliance] preloaded slowcli in")
    assert lines[2].startswith("[appliance] waiting for GPU memory to be released")
    assert lines[3].startswith("[appliance] GPU memory released after")
    assert lines[4] == "ran True ['serve', '--x']", lines


def test_reuse_port_refuses_what_it_does_not_know():
    for argv in (["8000"], ["x", "--", "p.py"], ["8000", "--gpu-wait", "1,2", "--", "p.py"],
                 ["8000", "--evil", "--", "p.py"], ["8000", "--", "-m"]):
        out = subprocess.run([sys.executable, str(WRAPPER), *argv], capture_output=True, text=True, timeout=30)
        assert out.returncode == 2 and "usage: reuse_port.py PORT" in out.stderr, argv


def test_the_launcher_hands_the_wait_to_reuse_port(tmp_path):
    plan = Plan(values={"VLLM_GPU_MEMORY_UTILIZATION": 0.6, "VLLM_TENSOR_PARALLEL_SIZE": 2})
    assert launch.gpu_wait(plan) == (0.6, 2, launch.GPU_MEMORY_WAIT)


def test_only_vllms_own_cli_is_preloaded(tmp_path, monkeypatch):
    """What the launcher execs: vLLM's CLI (as a module or its `vllm` script) is imported before the wait;
    any other Python program (a stand-in server) is run as it is, after the wait."""
    seen = []
    monkeypatch.setattr(launch, "_exec", lambda run, name, argv, env: seen.append(argv))
    monkeypatch.setattr(launch, "wait_for_earlier", lambda name: True)
    monkeypatch.setattr(launch, "wait_for_ports", lambda ports, shared=False: True)
    (tmp_path / "vllm").write_text("#!/usr/bin/python3\n")
    (tmp_path / "vllm").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    from entrypoint.config.load import make_plan
    from entrypoint.rundir import RunDir
    for command, preloaded in (("vllm", True), ("python3 -m vllm.entrypoints.cli.main", True),
                               ("python3 /srv/stub_vllm.py", False)):
        plan = make_plan(None, [], {"APPLIANCE_VLLM_COMMAND": command, "VLLM_KV_OFFLOADING_BACKEND": "none",
                                    "APPLIANCE_RUN_DIR": str(tmp_path / "run")})
        assert plan.errors == []
        launch.vllm(plan, RunDir(tmp_path / "run"))
        argv = seen.pop()
        cut = argv.index("--")
        assert argv[1].endswith("reuse_port.py") and "--gpu-wait" in argv[:cut]
        assert ("--preload" in argv[:cut]) == preloaded, argv
        assert argv[cut + 1:][-1] not in ("--preload", "--gpu-wait")


def test_memory_never_released_exits_75_and_leaves_the_held_file(tmp_path, monkeypatch):
    """A run on the H200 saw the LMCache server log its reap and keep the memory mapped: vLLM would only fail.
    reuse_port.py says so, leaves the file and exits 75, for the launcher's next start to act on."""
    fake_nvidia_smi(tmp_path, monkeypatch, free_mib=100)
    (tmp_path / "prog.py").write_text("print('ran')\n")
    held = tmp_path / "run, dir" / "gpu-memory-held"  # a comma in the path is no separator
    held.parent.mkdir()
    out = subprocess.run([sys.executable, str(WRAPPER), "8123", "--gpu-wait", f"0.6,1,1,{held}", "--",
                          str(tmp_path / "prog.py")], capture_output=True, text=True, timeout=60,
                         env={"PATH": f"{tmp_path}:/usr/bin:/bin"})
    assert out.returncode == reuse_port.HELD_EXIT, out.stdout + out.stderr
    assert "ran" not in out.stdout and held.exists()
    assert "GPU memory still short after 1 s: exiting, so that the next start restarts the LMCache server" \
        in out.stdout


class FakeSupervisor:
    def __init__(self):
        self.calls = []

    def stopProcess(self, name, wait):  # noqa: N802 - supervisord's XML-RPC names
        self.calls.append(("stop", name, wait))
        return True

    def startProcess(self, name, wait):  # noqa: N802
        self.calls.append(("start", name, wait))
        return True


def launcher(tmp_path, monkeypatch, env: dict):
    from types import SimpleNamespace

    from entrypoint.config.load import make_plan
    from entrypoint.rundir import RunDir
    seen, sup = [], FakeSupervisor()
    monkeypatch.setattr(launch, "_exec", lambda run, name, argv, env: seen.append(argv))
    monkeypatch.setattr(launch, "wait_for_earlier", lambda name: True)
    monkeypatch.setattr(launch, "wait_for_ports", lambda ports, shared=False: True)
    monkeypatch.setattr(launch, "wait_for_lmcache", lambda plan: True)
    monkeypatch.setattr(RunDir, "rpc", lambda self: SimpleNamespace(supervisor=sup))
    plan = make_plan(None, [], {"APPLIANCE_RUN_DIR": str(tmp_path / "run"), **env})
    assert plan.errors == []
    run = RunDir(tmp_path / "run")
    run.root.mkdir(parents=True, exist_ok=True)
    return plan, run, seen, sup


def test_the_next_start_restarts_the_lmcache_server_first(tmp_path, monkeypatch, capsys):
    plan, run, seen, sup = launcher(tmp_path, monkeypatch,
                                    {"APPLIANCE_VLLM_COMMAND": "python3 -m vllm.entrypoints.cli.main"})
    launch.vllm(plan, run)  # no held file: nothing restarted; reuse_port is told where to leave one
    argv = seen.pop()
    assert sup.calls == [] and argv[argv.index("--gpu-wait") + 1].endswith(f",{run.root / launch.GPU_HELD}")
    (run.root / launch.GPU_HELD).write_text("1\n")
    launch.vllm(plan, run)
    assert sup.calls == [("stop", "lmcache", True), ("start", "lmcache", False)]
    assert not (run.root / launch.GPU_HELD).exists() and seen
    assert "restarting the LMCache server, which still maps it" in capsys.readouterr().out


def test_without_a_server_of_its_own_nothing_is_restarted(tmp_path, monkeypatch):
    plan, run, seen, sup = launcher(tmp_path, monkeypatch,
                                    {"APPLIANCE_VLLM_COMMAND": "python3 -m vllm.entrypoints.cli.main",
                                     "VLLM_KV_OFFLOADING_BACKEND": "none"})
    (run.root / launch.GPU_HELD).write_text("1\n")
    launch.vllm(plan, run)
    argv = seen.pop()
    assert sup.calls == [] and argv[argv.index("--gpu-wait") + 1].count(",") == 2  # no held file to leave


def test_a_launcher_that_waits_itself_restarts_the_server_then_waits_again(tmp_path, monkeypatch):
    plan, run, seen, sup = launcher(tmp_path, monkeypatch, {"APPLIANCE_GAP_ANSWER": "false"})
    waits = []
    monkeypatch.setattr(reuse_port, "wait_for_gpu_memory", lambda *a, **k: waits.append(a) or len(waits) > 1)
    launch.vllm(plan, run)
    assert len(waits) == 2 and sup.calls == [("stop", "lmcache", True), ("start", "lmcache", False)] and seen
