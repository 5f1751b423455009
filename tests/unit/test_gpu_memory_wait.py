"""The vLLM launcher waits for GPU memory a crashed vLLM still holds (through the LMCache server) to be freed."""
import threading
import time

from entrypoint.runtime import programs
from entrypoint.config.plan import Plan


def fake_nvidia_smi(tmp_path, monkeypatch, free_mib):
    state = tmp_path / "free"
    state.write_text(str(free_mib))
    tool = tmp_path / "nvidia-smi"
    tool.write_text(f"#!/bin/sh\necho \"0, $(cat {state}), 10000\"\necho \"1, 10000, 10000\"\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return state


def test_waits_until_the_memory_is_free(tmp_path, monkeypatch, capsys):
    state = fake_nvidia_smi(tmp_path, monkeypatch, free_mib=4000)
    plan = Plan(values={"VLLM_GPU_MEMORY_UTILIZATION": 0.6})
    threading.Timer(1.5, lambda: state.write_text("9000")).start()
    start = time.monotonic()
    programs.wait_for_gpu_memory(plan)
    assert 1.4 < time.monotonic() - start < 10
    assert "waiting for GPU memory to be released (GPU 0: 3.9 of 9.8 GiB free; vLLM asks for 0.6 of it)" \
        in capsys.readouterr().out


def test_no_wait_when_memory_is_free_or_no_gpu_tool(tmp_path, monkeypatch, capsys):
    fake_nvidia_smi(tmp_path, monkeypatch, free_mib=9500)
    start = time.monotonic()
    programs.wait_for_gpu_memory(Plan(values={}))  # vLLM's default share, 0.92
    monkeypatch.setenv("PATH", "/nonexistent")
    programs.wait_for_gpu_memory(Plan(values={}))
    assert time.monotonic() - start < 3 and capsys.readouterr().out == ""


def test_gives_up_after_the_bound(tmp_path, monkeypatch, capsys):
    fake_nvidia_smi(tmp_path, monkeypatch, free_mib=100)
    monkeypatch.setattr(programs, "GPU_MEMORY_WAIT", 1.0)
    programs.wait_for_gpu_memory(Plan(values={"VLLM_GPU_MEMORY_UTILIZATION": 0.5}))
    assert "GPU memory still short after 1 s; starting vLLM anyway" in capsys.readouterr().out
