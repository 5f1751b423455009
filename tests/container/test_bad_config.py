"""Invalid configuration stops the container before anything starts or is written."""
from __future__ import annotations

import os
import re

import pytest

from .conftest import ROOT

# `serve`'s exit status after a failed preflight, read from the source (importing it needs supervisor).
EXIT_PREFLIGHT = int(re.search(r"^EXIT_PREFLIGHT = (\d+)", (ROOT / "entrypoint/supervise/serve.py").read_text(),
                               re.M)[1])

DISK = "/var/lib/appliance/kv-disk"
HF = "/var/lib/appliance/hf-cache"


@pytest.fixture
def volume_dirs(tmp_path):
    """Empty host directories mounted on the image's two volumes; world-writable so any user could write."""
    dirs = {}
    for name, target in (("hf-cache", HF), ("kv-disk", DISK)):
        d = tmp_path / name
        d.mkdir()
        os.chmod(d, 0o777)
        dirs[target] = d
    return dirs


def _assert_nothing_written(app, volume_dirs):
    for target, host in volume_dirs.items():
        assert list(host.iterdir()) == [], f"{target} was written to"
    assert app.files_under("/run/appliance") == [], "the run directory was written to"


@pytest.mark.parametrize("how", ["environment", "mounted env file"])
def test_bad_env_exits_2_naming_the_variable_and_writes_nothing(appliance, volume_dirs, tmp_path, how):
    bad = {"VLLM_MAX_MODEL_LEN": "lots", "LMCACHE_LOCAL_DISK": "true"}
    volumes = [(host, target, "rw") for target, host in volume_dirs.items()]
    if how == "environment":
        app = appliance(env=bad, volumes=volumes)
    else:
        env_file = tmp_path / "appliance.env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in bad.items()))
        volumes.append((env_file, "/etc/appliance.env", "ro"))
        app = appliance(command=["serve", "--env-file", "/etc/appliance.env"], volumes=volumes)

    assert app.wait_exit(timeout=60) == 2
    logs = app.logs()
    assert "error: VLLM_MAX_MODEL_LEN='lots': must be a whole number" in logs, logs
    assert "1 problem(s); nothing was started." in logs, logs
    assert "supervisord" not in logs, logs
    _assert_nothing_written(app, volume_dirs)


def test_unknown_variable_is_named_with_a_suggestion(appliance):
    app = appliance(env={"VLLM_MAX_MODEL_LENGTH": "4096"})
    assert app.wait_exit(timeout=60) == 2
    logs = app.logs()
    assert "VLLM_MAX_MODEL_LENGTH: unknown variable; did you mean VLLM_MAX_MODEL_LEN?" in logs, logs


def test_read_only_disk_tier_is_a_clear_preflight_error(appliance, tmp_path):
    disk = tmp_path / "kv-disk"
    disk.mkdir()
    app = appliance(env={"LMCACHE_LOCAL_DISK": "true"}, volumes=[(disk, DISK, "ro")])
    code = app.wait_exit(timeout=60)
    logs = app.logs()
    assert code == EXIT_PREFLIGHT, logs
    assert f"error: disk tier {DISK}/" in logs and "Read-only file system" in logs, logs
    assert f"mount a writable volume at {DISK}" in logs, logs
    assert "1 preflight problem(s); nothing was started." in logs, logs
    assert "supervisord" not in logs, "nothing may start after a failed preflight"
    assert list(disk.iterdir()) == []
