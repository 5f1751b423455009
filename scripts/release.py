#!/usr/bin/env python3
"""Cut a release from a clean tree: `python3 scripts/release.py [--skip-tests] [--push REPOSITORY] [--out DIR]`.

  1. checks   a clean git tree, and a CHANGELOG.md entry for pyproject.toml's version whose heading names the
              vLLM and LMCache of entrypoint/versions.env and that says what an operator must do (**Upgrade**)
  2. tests    `bash scripts/test.sh` (--skip-tests where they have just run: CI rehearses this command after
              its tests, tests/container/test_release.py)
  3. image    `docker/build-image.sh product` (reused while its inputs are unchanged; labels rebuilt when they
              name another commit), its labels checked against pyproject.toml and versions.env, then tagged
              REPOSITORY:<version>-vllm<X>-lmcache<Y> and REPOSITORY:<version>
  4. files    OUT/sbom.spdx.json (syft, from the image: it must list the pinned vllm, lmcache and torch),
              OUT/layers.txt (the size of every layer), OUT/notes.md (the release notes, also printed)
  5. --push   pushes both tags (log in first) and adds the digest to the notes

REPOSITORY defaults to pyproject.toml's [tool.appliance] image; OUT to dist/. --allow-dirty rehearses from a tree
with uncommitted changes (the notes then say it is no release). Env: BASE_IMAGE (docker/build-image.sh), SYFT
(else scripts/ci/install-release-tools.sh installs it). The publishing workflow (.github/workflows/release.yml)
runs this same command with --push; nothing here needs GitHub.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the entrypoint package of this checkout

from entrypoint.config.schema import pinned_versions  # noqa: E402
from entrypoint.version import release_tags, version  # noqa: E402

CHANGELOG = ROOT / "CHANGELOG.md"
BUILT = "llm-appliance:product"  # what docker/build-image.sh product tags (and scripts/test.sh tests)
HEADING = re.compile(r"^## (\S+) \(vLLM (\S+), LMCache (\S+)\)$", re.M)
SHIPPED = ("vllm", "lmcache", "torch")  # what the SBOM must list at the pinned versions


class ReleaseError(Exception):
    pass


def say(msg: str) -> None:
    print(f"release: {msg}", file=sys.stderr, flush=True)


def run(*cmd, capture: bool = False, env: dict | None = None) -> str:
    say("+ " + " ".join(str(c) for c in cmd))
    # What the steps print goes to stderr: stdout carries the notes alone.
    result = subprocess.run([str(c) for c in cmd], cwd=ROOT, text=True, env=env,
                            stdout=subprocess.PIPE if capture else sys.stderr)
    if result.returncode != 0:
        raise ReleaseError(f"{Path(str(cmd[0])).name} exited with {result.returncode}")
    return result.stdout if capture else ""


def pyproject_value(table: str, key: str) -> str:
    """A string value of pyproject.toml (read by regex: Python 3.10 has no tomllib, and the file is ours)."""
    text = (ROOT / "pyproject.toml").read_text()
    section = re.search(rf"^\[{re.escape(table)}\]\n(.*?)(?=^\[|\Z)", text, re.M | re.S)
    value = section and re.search(rf'^{key}\s*=\s*"([^"]+)"', section.group(1), re.M)
    if not value:
        raise ReleaseError(f"pyproject.toml has no {key} in [{table}]")
    return value.group(1)


def changelog_entry(ver: str, pins: dict[str, str]) -> str:
    """The CHANGELOG.md entry of `ver`, checked against what the image ships."""
    text = CHANGELOG.read_text()
    headings = list(HEADING.finditer(text))
    for i, h in enumerate(headings):
        if h.group(1) != ver:
            continue
        if (h.group(2), h.group(3)) != (pins["VLLM_VERSION"], pins["LMCACHE_VERSION"]):
            raise ReleaseError(f"CHANGELOG.md's entry for {ver} names vLLM {h.group(2)}, LMCache {h.group(3)}, but "
                               f"entrypoint/versions.env pins vLLM {pins['VLLM_VERSION']}, LMCache "
                               f"{pins['LMCACHE_VERSION']}: correct the heading (or bump the version for a new stack)")
        end = headings[i + 1].start() if i + 1 < len(headings) else len(text)
        body = text[h.end():end].strip()
        if "**Upgrade**" not in body:
            raise ReleaseError(f"CHANGELOG.md's entry for {ver} does not say what an operator must do on upgrade: "
                               "add an **Upgrade** paragraph (\"nothing\" is an answer)")
        return body
    raise ReleaseError(f"CHANGELOG.md has no entry for {ver} (pyproject.toml's version): add "
                       f"`## {ver} (vLLM {pins['VLLM_VERSION']}, LMCache {pins['LMCACHE_VERSION']})` with what changed "
                       "and an **Upgrade** paragraph")


def labels(image: str) -> dict[str, str]:
    return json.loads(run("docker", "image", "inspect", "-f", "{{json .Config.Labels}}", image, capture=True)) or {}


def check_labels(found: dict[str, str], ver: str, source: str, pins: dict[str, str]) -> None:
    want = {"org.opencontainers.image.version": ver, "org.opencontainers.image.source": source,
            "appliance.vllm.version": pins["VLLM_VERSION"], "appliance.lmcache.version": pins["LMCACHE_VERSION"],
            "appliance.torch.version": pins["TORCH_VERSION"], "appliance.variant": "product"}
    wrong = {k: (found.get(k), v) for k, v in want.items() if found.get(k) != v}
    if wrong:
        raise ReleaseError("the image's labels differ from pyproject.toml/versions.env: " +
                           ", ".join(f"{k}={got!r} (want {v!r})" for k, (got, v) in wrong.items()))


def build(revision: str) -> dict[str, str]:
    """The product image, as scripts/test.sh builds and tests it, with labels that name `revision`."""
    run("bash", "docker/build-image.sh", "product", BUILT)
    found = labels(BUILT)
    if found.get("org.opencontainers.image.revision") != revision:
        # Reused from an earlier commit with the same inputs: only the label layers are rebuilt (layer cache).
        say(f"{BUILT} was built at {found.get('org.opencontainers.image.revision') or 'no commit'}: relabelling")
        run("bash", "docker/build-image.sh", "product", BUILT, env={**os.environ, "FORCE": "1"})
        found = labels(BUILT)
    return found


def syft_binary() -> str:
    if os.environ.get("SYFT"):
        return os.environ["SYFT"]
    script = ROOT / "scripts" / "ci" / "install-release-tools.sh"
    digest = hashlib.sha256(script.read_bytes()).hexdigest()[:12]
    venv = Path.home() / ".cache" / "appliance" / f"release-tools-{digest}"
    tools = dict(line.split("=", 1) for line in run("bash", script, venv, capture=True).split())
    return tools["SYFT"]


def sbom(image: str, tag: str, out: Path, pins: dict[str, str]) -> dict:
    """OUT/sbom.spdx.json: syft (a static binary) run inside a container of the image, on its whole filesystem,
    with the catalogers syft uses for images (installed packages, not requirement files). syft's own `docker:`
    source would first export the 9 GB image to a tar file: 131 s here against 17 s, the same 378 packages.
    Offline: no network in the container, and no update check. Checked: the pinned vllm, lmcache and torch."""
    path = out / "sbom.spdx.json"
    excluded = [arg for d in ("proc", "sys", "dev", "sbom") for arg in ("--exclude", f"./{d}")]
    run("docker", "run", "--rm", "--network", "none", "--user", "0", "--entrypoint", "/sbom/syft",
        "-e", "SYFT_CHECK_FOR_APP_UPDATE=false", "-v", f"{syft_binary()}:/sbom/syft:ro",
        "-v", f"{out.resolve()}:/sbom/out", image,
        "scan", "dir:/", "--override-default-catalogers", "image", *excluded, "-q",
        "--source-name", "llm-appliance", "--source-version", tag, "-o", "spdx-json=/sbom/out/sbom.spdx.json")
    doc = json.loads(path.read_text())
    found = {p["name"].lower(): p.get("versionInfo", "") for p in doc.get("packages", [])
             if p["name"].lower() in SHIPPED}
    want = {"vllm": pins["VLLM_VERSION"], "lmcache": pins["LMCACHE_VERSION"], "torch": pins["TORCH_VERSION"]}
    wrong = {n: found.get(n) for n, v in want.items() if (found.get(n) or "").split("+")[0] != v}
    if wrong:
        raise ReleaseError(f"the SBOM ({path}) lists {wrong}, not the pinned {want}")
    return {"packages": len(doc.get("packages", [])), "found": found,
            "creator": next((c for c in doc.get("creationInfo", {}).get("creators", []) if "syft" in c), "syft")}


def layer_report(image: str, base: str, out: Path) -> tuple[int, int, list[str]]:
    """OUT/layers.txt: every layer's size and the instruction that made it, newest first."""
    rows = []
    for line in run("docker", "history", "--no-trunc", "--human=false", "--format", "{{.Size}}\t{{.CreatedBy}}",
                    image, capture=True).splitlines():
        size, step = line.split("\t", 1)
        step = re.sub(r"^RUN \|\d+ (\S+=\S* )*", "RUN ", step)  # the build arguments BuildKit lists first
        step = re.sub(r"^/bin/sh -c (#\(nop\) )?", "", step)  # the classic builder's notation
        step = re.sub(r"\s+", " ", step.replace("/bin/bash -o pipefail -c ", "").removesuffix(" # buildkit")).strip()
        rows.append((int(size), step or f"(the base image, {base})"))
    total = sum(s for s, _ in rows)
    lines = [f"{s / 1e6:10.1f} MB  {step[:140]}" for s, step in rows if s > 0]
    text = (f"Layers of {image}, newest first ({len(lines)} with content, {total / 1e9:.2f} GB in all):\n"
            + "\n".join(lines) + "\n")
    (out / "layers.txt").write_text(text)
    biggest = sorted(rows, reverse=True)[:3]
    return total, len(lines), [f"{s / 1e9:.2f} GB: {step[:90]}" for s, step in biggest]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--skip-tests", action="store_true", help="the tests have just run (CI)")
    p.add_argument("--allow-dirty", action="store_true", help="a rehearsal from a tree with uncommitted changes")
    p.add_argument("--push", metavar="REPOSITORY", help="push the tags to this repository (docker login first)")
    p.add_argument("--out", type=Path, default=ROOT / "dist", help="where the SBOM, layer report and notes go")
    a = p.parse_args(argv)
    try:
        notes = release(a)
    except ReleaseError as e:
        say(f"error: {e}")
        return 1
    print(notes)
    return 0


def release(a) -> str:
    ver, pins = version(), pinned_versions()
    dirty = run("git", "status", "--porcelain", capture=True).strip()
    if dirty and not a.allow_dirty:
        raise ReleaseError("the tree has uncommitted changes (a release is built from a commit):\n" + dirty)
    entry = changelog_entry(ver, pins)
    source = pyproject_value("project.urls", "Source")
    repository = a.push or pyproject_value("tool.appliance", "image")
    revision = run("git", "rev-parse", "HEAD", capture=True).strip()
    a.out.mkdir(parents=True, exist_ok=True)

    if a.skip_tests:
        say("tests skipped (--skip-tests): they ran before this command")
    else:
        run("bash", "scripts/test.sh")
    found = build(revision)
    check_labels(found, ver, source, pins)
    tags = [f"{repository}:{t}" for t in release_tags(pins)]
    for tag in tags:
        run("docker", "tag", BUILT, tag)
    image_id = run("docker", "image", "inspect", "-f", "{{.Id}}", BUILT, capture=True).strip()
    bom = sbom(BUILT, release_tags(pins)[0], a.out, pins)
    total, layers, biggest = layer_report(BUILT, found.get("org.opencontainers.image.base.name", "?"), a.out)
    digest = ""
    if a.push:
        for tag in tags:
            run("docker", "push", tag)
        digests = json.loads(run("docker", "image", "inspect", "-f", "{{json .RepoDigests}}", BUILT, capture=True))
        digest = next((d.split("@", 1)[1] for d in digests if d.startswith(repository + "@")), "")

    notes = [f"# llm-appliance {ver}", ""]
    if dirty:
        notes += ["**Not a release: built from a tree with uncommitted changes (--allow-dirty).**", ""]
    notes += [f"Image: `{tags[0]}` (also `{tags[1]}`)" + (f", digest `{digest}`" if digest else
                                                           " (not pushed)"),
              f"Ships: vLLM {pins['VLLM_VERSION']}, LMCache {pins['LMCACHE_VERSION']}, torch {pins['TORCH_VERSION']}, "
              f"CUDA {pins['CUDA_VERSION']}; base {found.get('org.opencontainers.image.base.name', '?')}",
              f"Built from {found.get('org.opencontainers.image.source')} at {revision}"
              f" ({found.get('org.opencontainers.image.created')}), image {image_id[:19]}",
              f"Size: {total / 1e9:.2f} GB in {layers} layers (layers.txt); largest: {'; '.join(biggest[:2])}",
              f"SBOM: sbom.spdx.json, SPDX, {bom['packages']} packages ({bom['creator']}); "
              + ", ".join(f"{n} {v}" for n, v in sorted(bom["found"].items())),
              "",
              "Run or upgrade: with this release's compose.yaml, `docker compose pull && docker compose up -d`; "
              f"elsewhere set `APPLIANCE_IMAGE={tags[0]}` (docs/UPGRADING.md).",
              "", entry]
    text = "\n".join(notes) + "\n"
    (a.out / "notes.md").write_text(text)
    say(f"wrote {a.out / 'notes.md'}, {a.out / 'sbom.spdx.json'}, {a.out / 'layers.txt'}")
    return text


if __name__ == "__main__":
    sys.exit(main())
