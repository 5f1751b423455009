"""Preflight's "is there a GPU at all" check, on fake /dev directories and PATHs (the real run is in
tests/supervisor/test_preflight_no_gpu.py and, on the product image, tests/container/test_product_image.py)."""
from __future__ import annotations

import pytest

from entrypoint.supervise.preflight import Findings, check_gpu_visible, gpu_devices


@pytest.fixture
def dev(tmp_path):
    d = tmp_path / "dev"
    d.mkdir()
    for name in ("null", "shm", "nvidiactl", "nvidia-uvm", "nvidia-caps"):  # not GPUs: present without --gpus too
        (d / name).touch()
    return d


@pytest.fixture
def empty_path(tmp_path):
    (tmp_path / "bin").mkdir()
    return str(tmp_path / "bin")


def errors(environ, dev) -> list[str]:
    found = Findings()
    check_gpu_visible(environ, found, dev=dev)
    return found.errors


def test_no_gpu_device_and_no_nvidia_smi_is_one_clear_error(dev, empty_path):
    assert gpu_devices(dev) == []
    assert errors({"PATH": empty_path}, dev) == [
        "no GPU is visible (no /dev/nvidia* device, no nvidia-smi): vLLM needs an NVIDIA GPU. Run the container with "
        "`docker run --gpus all ...` (compose: the shipped compose.yaml reserves them) on a host with the NVIDIA "
        "driver and the NVIDIA Container Toolkit installed"]


@pytest.mark.parametrize("node", ["nvidia0", "nvidia7", "dxg"])
def test_a_gpu_device_node_is_enough(dev, empty_path, node):
    (dev / node).touch()
    assert gpu_devices(dev) == [node]
    assert errors({"PATH": empty_path}, dev) == []


def test_nvidia_smi_on_the_path_leaves_the_count_to_check_gpus(dev, tmp_path):
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text("#!/bin/sh\nexit 0\n")
    smi.chmod(0o755)
    assert errors({"PATH": str(smi.parent)}, dev) == []


@pytest.mark.parametrize("value, skipped", [("1", True), ("0", False), ("", False), ("true", False)])
def test_only_stub_no_gpu_1_skips_the_check(dev, empty_path, value, skipped):
    assert (errors({"PATH": empty_path, "STUB_NO_GPU": value}, dev) == []) is skipped


def test_an_unreadable_dev_counts_as_no_gpu(tmp_path, empty_path):
    assert gpu_devices(tmp_path / "missing") == []
    assert len(errors({"PATH": empty_path}, tmp_path / "missing")) == 1
