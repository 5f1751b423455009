"""What the image is, before anything is served: entrypoint, labels, other commands."""
from __future__ import annotations

from entrypoint.config.schema import pinned_versions


def test_any_other_command_runs_as_given(run_once):
    assert run_once(["bash", "-c", "echo ok"]) == (0, "ok\n")


def test_config_prints_the_plan_without_starting_anything(run_once):
    code, out = run_once(["config", "--max-model-len", "1234"])
    assert code == 0, out
    assert "vllm serve Qwen/Qwen3-0.6B" in out
    assert "--max-model-len 1234" in out


def test_tini_runs_the_entrypoint_and_serve_is_the_default(docker_client, image):
    config = docker_client.images.get(image).attrs["Config"]
    assert config["Entrypoint"] == ["tini", "-g", "--", "python3", "-m", "entrypoint"]
    assert config["Cmd"] == ["serve"]
    assert config["Healthcheck"]["Test"] == ["CMD", "python3", "-m", "entrypoint", "healthcheck"]
    # The start period covers a model load: as long as the watchdog's default start grace (900 s).
    assert config["Healthcheck"]["StartPeriod"] >= 900 * 10**9
    assert set(config["Volumes"]) == {"/var/lib/appliance/hf-cache", "/var/lib/appliance/kv-disk"}
    assert config["Env"].count("HF_HOME=/var/lib/appliance/hf-cache") == 1


def test_labels_name_the_pinned_versions(docker_client, image):
    labels = docker_client.images.get(image).labels
    pins = pinned_versions()
    assert labels["appliance.vllm.version"] == pins["VLLM_VERSION"]
    assert labels["appliance.lmcache.version"] == pins["LMCACHE_VERSION"]
    assert labels["appliance.torch.version"] == pins["TORCH_VERSION"]
    assert labels["appliance.cuda.version"] == pins["CUDA_VERSION"]
    assert labels["org.opencontainers.image.version"] == labels["appliance.version"] != ""
    assert labels["org.opencontainers.image.revision"]  # set by docker/build-image.sh from git
    assert labels["appliance.variant"].startswith("test")


def test_the_appliance_user_can_write_the_run_dir_and_volumes(run_once):
    script = ("id -un; for d in /run/appliance /var/lib/appliance/hf-cache /var/lib/appliance/kv-disk; "
              "do touch $d/probe && echo writable $d; done")
    code, out = run_once(["bash", "-c", script], user="appliance")
    assert code == 0, out
    assert out.split("\n")[0] == "appliance"
    assert out.count("writable") == 3, out


def test_only_the_test_stage_turns_the_gpu_check_off(docker_client, image, run_once):
    """The stubs need no GPU: the test stage sets STUB_NO_GPU=1 (the product image never does, see
    test_product_image.py); without it, serve stops at preflight here as it would on the product image."""
    assert "STUB_NO_GPU=1" in docker_client.images.get(image).attrs["Config"]["Env"]
    code, out = run_once(["serve"], environment={"STUB_NO_GPU": ""})
    assert code == 3, out
    assert [line for line in out.splitlines() if line.startswith("error:")] == [
        "error: no GPU is visible (no /dev/nvidia* device, no nvidia-smi): vLLM needs an NVIDIA GPU. Run the "
        "container with `docker run --gpus all ...` (compose: the shipped compose.yaml reserves them) on a host "
        "with the NVIDIA driver and the NVIDIA Container Toolkit installed"]
