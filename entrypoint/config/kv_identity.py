"""The KV identity: one fingerprint of everything that decides whether stored KV may be reused.

KV computed for a prompt is only worth reusing if reuse gives what recompute would: same weights, same model
config, same precision, same layout. The identity names all of that (the weights themselves, the KV-affecting
flags of settings.KV_FLAGS, the vLLM and LMCache versions, the chunk size), computed once per start, and every
tier uses it: the disk tier's namespace directory (kv_tiers.disk_namespace) and the key of every chunk LMCache
stores or looks up (lmcache_ext/connector.py folds it into the chunk's cache salt, so the CPU tier, the disk
tier, a shared LMCache server, the Valkey/Redis store and pre-warming all keep identities apart). Settings that
do not change KV (served name, ports, max model length, API key, ...) are not in it: editing them keeps the cache.

Reading the weights is bounded: for a local directory, config.json's content and each weight file's name,
size and modification time (hashing 16+ GB at every start is not acceptable); for a Hugging Face id, the commit
the hub cache resolves the revision to.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

from .flags import AMBIGUOUS, resolve_flag
from .settings import KV_FLAGS

DIGEST_CHARS = 16  # 64 bits: far beyond the number of identities one volume ever sees
MANIFEST_FILE = ".appliance-kv-identity.json"  # in each disk-tier namespace: what made its identity
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".msgpack", ".h5", ".npz")
# JSON files of a model directory that do not change the KV of given token ids (tokenizer, sampling defaults).
NEUTRAL_JSON = frozenset({"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                          "added_tokens.json", "generation_config.json", "chat_template.json"})
MAX_MODEL_FILES = 20000  # entries walked at most: a model directory has tens, not thousands
MAX_CONFIG_BYTES = 4 << 20  # config.json is read whole only up to this size
COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class KvIdentity:
    digest: str
    parts: dict[str, str]  # what went into it, shown by `config`, in a stable order
    files: dict[str, str] = field(default_factory=dict)  # weights: file -> size/mtime (or content hash)

    def manifest(self) -> dict:
        return {"kv_identity": self.digest, "parts": self.parts, "files": self.files}


def compute(model: str, given: Mapping[str, str], env: Mapping[str, str], vllm_version: str, lmcache_version: str,
            chunk_size: int) -> KvIdentity:
    """`given`: flag_values() of every vLLM argument after the model (the plan's, the extra arguments and the
    overrides); `env`: vLLM's environment (where the hub cache is)."""
    kv_flags = {flag: value for flag, value in given.items() if flag in KV_FLAGS}
    weights, files = weights_fingerprint(model, given.get("--revision"), env, given.get("--download-dir"))
    parts = {"model": model, "weights": weights}
    parts.update({f"vllm {flag}": value for flag, value in sorted(kv_flags.items())})
    parts.update({"vllm": vllm_version, "lmcache": lmcache_version, "chunk size": str(chunk_size)})
    blob = json.dumps({"parts": parts, "files": files}, sort_keys=True, separators=(",", ":"))
    return KvIdentity(hashlib.sha256(blob.encode()).hexdigest()[:DIGEST_CHARS], parts, files)


def flag_values(argv: list[str], serve_flags: Mapping[str, dict]) -> dict[str, str]:
    """Each flag among vLLM's arguments, however it is spelled (`--dtype=half`, `--dtype half`,
    `--no-enforce-eager`, abbreviations), with its last value as argparse would keep it. JSON values are
    normalised, so that white space or key order in `--hf-overrides` does not change the identity."""
    bools = [f for f, spec in serve_flags.items() if spec["kind"] == "bool"]
    out: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        flag = resolve_flag(arg, serve_flags, bools)
        i += 1
        if flag in (None, AMBIGUOUS):
            continue
        values: list[str] = []
        if "=" in arg:
            values.append(arg.split("=", 1)[1])
        else:
            while i < len(argv) and not argv[i].startswith("--"):
                values.append(argv[i])
                i += 1
        if serve_flags[flag]["kind"] in ("bool", "flag") and not values:
            values = ["false" if arg.split("=", 1)[0].startswith("--no-") else "true"]
        out[flag] = " ".join(_normalised(v) for v in values)
    return out


def _normalised(text: str) -> str:
    stripped = text.strip()
    if stripped[:1] in ("{", "["):
        try:
            return json.dumps(json.loads(stripped), sort_keys=True, separators=(",", ":"))
        except (ValueError, RecursionError):  # not JSON, or nested past Python's limit: kept as written
            pass
    return text


def weights_fingerprint(model: str, revision: str | None, env: Mapping[str, str],
                        download_dir: str | None) -> tuple[str, dict[str, str]]:
    """(what `config` shows, the per-file details that make the digest)."""
    path = Path(model)
    if model.startswith(("/", ".")) or _exists(path):
        return local_weights(path)
    return hub_weights(model, revision, env, download_dir), {}


def _exists(path: Path, test: Callable[[Path], bool] = os.path.exists) -> bool:
    """An operator's path that the OS cannot even look up (too long, a NUL byte) does not exist."""
    try:
        return test(path)
    except (OSError, ValueError):
        return False


def local_weights(path: Path) -> tuple[str, dict[str, str]]:
    if _exists(path, os.path.isfile):  # a single GGUF file
        return f"local file, {_stat_text(path)}", {path.name: _stat_text(path)}
    if not _exists(path, os.path.isdir):
        return f"local path {path} not found (vLLM will fail to load it)", {}
    files: dict[str, str] = {}
    for relative in _model_files(path):
        full = path / relative
        if relative == "config.json":
            files[relative] = "sha256:" + _config_hash(full)
        else:
            files[relative] = _stat_text(full)
    weights = [f for f in files if f.endswith(WEIGHT_SUFFIXES)]
    total = sum(int(files[f].split(" ", 1)[0]) for f in weights)
    return f"local directory, {len(weights)} weight files ({total / 1e9:.2f} GB) by size and mtime", files


def _model_files(root: Path) -> Iterable[str]:
    """The weight and config files under a model directory. The walk stops after MAX_MODEL_FILES entries of
    any kind, so that a path like `/` costs a bounded time (and is no model vLLM could load anyway)."""
    seen = 0
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        seen += len(names) + len(subdirs)
        if seen > MAX_MODEL_FILES:
            return
        for name in sorted(names):
            if name.endswith(WEIGHT_SUFFIXES) or (name.endswith(".json") and name not in NEUTRAL_JSON):
                yield os.path.relpath(os.path.join(directory, name), root)


def _stat_text(path: Path) -> str:
    try:
        st = path.stat()
    except (OSError, ValueError) as e:
        return f"0 bytes, unreadable ({getattr(e, 'strerror', None) or e})"
    return f"{st.st_size} bytes, mtime {st.st_mtime_ns}"


def read_small(path: Path, limit: int) -> bytes:
    """At most `limit` bytes of a regular file (or a link to one), never blocking: a FIFO or a device named
    like a config file is refused (OSError), not read."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return os.read(fd, limit)
    finally:
        os.close(fd)


def _config_hash(path: Path) -> str:
    try:
        return hashlib.sha256(read_small(path, MAX_CONFIG_BYTES)).hexdigest()[:DIGEST_CHARS]
    except (OSError, ValueError) as e:
        return f"unreadable ({getattr(e, 'strerror', None) or e})"


def hub_cache_dir(env: Mapping[str, str], download_dir: str | None) -> Path:
    """Where vLLM (huggingface_hub) keeps downloaded models: --download-dir, HF_HUB_CACHE, HF_HOME/hub."""
    if download_dir:
        return Path(download_dir)
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"])
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                                              "huggingface")
    return Path(home) / "hub"


def hub_weights(model: str, revision: str | None, env: Mapping[str, str], download_dir: str | None) -> str:
    """A hub id is identified by the commit its revision resolves to: a pinned commit as it is, else the commit
    the hub cache's ref names (`refs/main` moves when a re-download finds a new `main`)."""
    if revision and COMMIT.match(revision):
        return f"hub commit {revision}"
    ref = revision or "main"
    ref_file = hub_cache_dir(env, download_dir) / ("models--" + model.replace("/", "--")) / "refs" / ref
    try:
        commit = read_small(ref_file, 100).decode(errors="replace").strip()
    except (OSError, ValueError):
        return f"hub revision {ref}, not in the hub cache yet (the commit is read from it once downloaded)"
    return f"hub commit {commit} ({ref})" if COMMIT.match(commit) else f"hub revision {ref} (unreadable ref)"


def changed(old: Mapping, new: KvIdentity) -> str:
    """Why a manifest written by an earlier start differs from this identity, for the one log line at start:
    "weights changed: model.safetensors size/mtime", "vllm --quantization: none -> fp8"."""
    old_parts, old_files = old.get("parts") or {}, old.get("files") or {}
    if not old_parts:  # a namespace of an appliance older than the KV identity, or an unreadable manifest
        return "its inputs are not recorded: written before the appliance recorded them"
    reasons = []
    files = [f for f in sorted(set(old_files) | set(new.files)) if old_files.get(f) != new.files.get(f)]
    if files:
        what = ", ".join(f"{f} {'content' if f == 'config.json' else 'size/mtime'}" if f in old_files and f in
                         new.files else f"{f} {'added' if f in new.files else 'removed'}" for f in files[:5])
        reasons.append(f"weights changed: {what}{' ...' if len(files) > 5 else ''}")
    elif old_parts.get("weights") != new.parts.get("weights"):
        reasons.append(f"weights changed: {old_parts.get('weights')} -> {new.parts.get('weights')}")
    for key in sorted(set(old_parts) | set(new.parts)):
        if key != "weights" and old_parts.get(key) != new.parts.get(key):
            reasons.append(f"{key}: {old_parts.get(key, 'not set')} -> {new.parts.get(key, 'not set')}")
    return "; ".join(reasons) or "the same inputs, another digest"
