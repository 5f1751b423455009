"""`serve` on a machine without a GPU (this CI host, a container started without --gpus): exit 3 at preflight
with the fix, nothing started. The stub servers need no GPU, so the harness sets STUB_NO_GPU=1; here it is
removed."""
from __future__ import annotations

import shutil

import pytest

from entrypoint.supervise.preflight import gpu_devices

EXIT_PREFLIGHT = 3


@pytest.mark.skipif(bool(gpu_devices() or shutil.which("nvidia-smi")), reason="this machine has a GPU")
def test_serve_without_a_gpu_stops_at_preflight_with_the_gpus_all_fix(appliance):
    a = appliance(STUB_NO_GPU=None)
    assert a.wait_exit(30) == EXIT_PREFLIGHT, a.output()
    lines = a.output().splitlines()
    assert [line for line in lines if line.startswith("error:")] == [
        "error: no GPU is visible (no /dev/nvidia* device, no nvidia-smi): vLLM needs an NVIDIA GPU. Run the "
        "container with `docker run --gpus all ...` (compose: the shipped compose.yaml reserves them) on a host "
        "with the NVIDIA driver and the NVIDIA Container Toolkit installed"]
    assert lines[-1] == "1 preflight problem(s); nothing was started."
    assert not a.run.socket.exists()  # supervisord never started
