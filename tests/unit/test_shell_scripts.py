"""shellcheck, clean, on every shell script of the repository: the tracked *.sh files, .ci/run, and any other
tracked file whose first line is a sh or bash shebang (docker/test-stage's launchers). The binary is the pinned
one of scripts/ci/install-release-tools.sh (scripts/test.sh exports it as $SHELLCHECK); no Docker needed.

A finding is fixed in the script; a `# shellcheck disable=SCxxxx` only with a comment saying why."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHELLCHECK = os.environ.get("SHELLCHECK")
# Being replaced by the Python bench package (scripts/bench -> bench/); not linted until then.
EXCLUDED = {"scripts/gpu/run-suite.sh"}
SHEBANG = re.compile(rb"^#!\s*(/usr/bin/env\s+)?(/\S*/)?(ba)?sh\b")


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    return [name for name in out.stdout.decode().split("\0") if name]


def shell_scripts() -> list[str]:
    found = []
    for name in tracked_files():
        path = ROOT / name
        if name in EXCLUDED or not path.is_file() or path.is_symlink():
            continue
        if name.endswith(".sh"):
            found.append(name)
        else:
            with open(path, "rb") as f:
                if SHEBANG.match(f.readline()):
                    found.append(name)
    return sorted(found)


SCRIPTS = shell_scripts() if (ROOT / ".git").exists() else []


def test_every_shell_script_is_found():
    """The discovery itself: *.sh files, extensionless scripts by their shebang, never the excluded suite."""
    assert (ROOT / ".git").exists(), "not a git checkout: the scripts are found with git ls-files"
    assert {".ci/run", "scripts/test.sh", "docker/test-stage/vllm", "docker/test-stage/lmcache"} <= set(SCRIPTS)
    assert not EXCLUDED & set(SCRIPTS)
    assert not [s for s in SCRIPTS if s.endswith((".py", ".md"))]


@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck_is_clean(script):
    if not SHELLCHECK:
        pytest.skip("SHELLCHECK is not set (scripts/ci/install-release-tools.sh VENV prints it; scripts/test.sh "
                    "exports it)")
    out = subprocess.run([SHELLCHECK, "--format=gcc", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
