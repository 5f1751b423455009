"""The cache salt of a request's chunks in LMCache: its KV identity, its LoRA adapter and its own salt.

LMCache keys a chunk by (model name, parallel layout, tokens, cache salt): nothing in that key says which
weights, precision or LoRA adapter computed the KV. Every key the appliance's connector sends carries this
salt instead of the request's own, so that KV is reused only where recompute would give the same answer:
- the KV identity (config/kv_identity.py): weights, KV-affecting flags, versions;
- the LoRA adapter (name, path and its files' sizes and times: an adapter reloaded in place with new weights
  is another adapter); the base model has none;
- the request's own `cache_salt` (vLLM's per-request isolation, and the tenant salt of vllm_ext/tenant_salt.py).

LMCache allows at most 128 characters and no `@ / \\ NUL` in a salt: the parts are hashed into a fixed form.
Pure: no LMCache import, so it is tested on its own.
"""
from __future__ import annotations

import hashlib
import os

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


def adapter_fingerprint(lora_request: object) -> str:
    """'' for the base model; else what names the adapter's weights."""
    if lora_request is None:
        return ""
    name, path = getattr(lora_request, "lora_name", ""), getattr(lora_request, "lora_path", "") or ""
    files = []
    for file in ADAPTER_FILES:
        try:
            st = os.stat(os.path.join(path, file))
        except (OSError, ValueError):  # missing, or a path the OS cannot look up: the name and path still count
            continue
        files.append(f"{file}:{st.st_size}:{st.st_mtime_ns}")
    return "\0".join([name, path, *files])


def request_salt(identity: str, lora_request: object = None, own_salt: str | None = None) -> str:
    """`kv-<identity>` for a base-model request without a salt of its own (readable in LMCache's file names),
    else `kv-<identity>-<hash of adapter and own salt>`."""
    base = f"kv-{identity}"
    adapter = adapter_fingerprint(lora_request)
    if not adapter and not own_salt:
        return base
    digest = hashlib.sha256(f"{adapter}\0\0{own_salt or ''}".encode()).hexdigest()[:32]
    return f"{base}-{digest}"
