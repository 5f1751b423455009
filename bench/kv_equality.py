"""A reused KV cache gives what recompute gives: the appliance's reuse paths on a GPU, with weights whose
outputs depend on the KV (random weights at Llama scale, std 0.02: dummy weights give near-uniform logits and
cannot show a wrong KV), and the cases where reuse must not happen (zero hits).

    kv_equality.py model --config CONFIG.json --tokenizer DIR --out DIR [--seed N]
        a random Llama checkpoint (bf16 safetensors, std 0.02, norms 1) made on the GPU
    kv_equality.py perturb --model DIR            the same files rewritten in place with other weights
    kv_equality.py lora --model DIR --out DIR --seed N
        a random PEFT LoRA adapter (rank 8, q/k/v/o projections) for that checkpoint
    kv_equality.py run --phase reuse|negative --model DIR --results DIR [...]
        starts the appliance (`python -m entrypoint serve`) as an operator would, asks the same prompts along
        each path, and appends one row per request to results.jsonl: the 16 greedy tokens, the top-5 logprobs
        at each, and the GPU and offloaded-tier hits (vLLM's own counters) the request caused
    kv_equality.py report --results DIR           the table: per path, tokens equal to recompute, the largest
                                                  logprob difference, hits; and the bound between two recomputes

Phase `reuse` (one appliance, LMCache server mode, CPU + disk tier, the Valkey/Redis store): recompute (twice,
each under its own cache_salt: a miss everywhere), a GPU hit, a CPU-tier hit (GPU prefix cache reset), after a
vLLM SIGKILL (supervisord restarts it; the LMCache server keeps its CPU tier), a sibling vLLM through the same
LMCache server, after a full restart (the disk tier), and with the disk tier emptied (the store).
Phase `negative`: fp8 quantization added, the weights perturbed in place (same path), and two LoRA adapters:
the first request of each must find zero offloaded hits and answer what its own recompute answers.
Standard library + common.py; `model`, `perturb` and `lora` need torch and safetensors.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench import common as c

ROOT = Path(__file__).resolve().parents[1]
MAX_TOKENS = 16
TOP = 5
PROMPT_TOKENS = 2000  # 7 full LMCache chunks of 256 and a partial one
HIT_METRICS = {"gpu_hit_tokens": "vllm:prefix_cache_hits_total",
               "offload_hit_tokens": "vllm:external_prefix_cache_hits_total"}


# --- checkpoints ------------------------------------------------------------------------------------------

def llama_tensors(config: dict, seed: int, std: float = 0.02) -> dict:
    import torch

    g = torch.Generator(device="cuda").manual_seed(seed)
    h, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    dim = config.get("head_dim") or h // heads

    def rand(*shape):
        return (torch.randn(*shape, generator=g, device="cuda", dtype=torch.float32) * std).to(torch.bfloat16).cpu()

    def ones(n):
        return torch.ones(n, dtype=torch.bfloat16)

    out = {"model.embed_tokens.weight": rand(vocab, h), "model.norm.weight": ones(h)}
    if not config.get("tie_word_embeddings"):
        out["lm_head.weight"] = rand(vocab, h)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out.update({p + "self_attn.q_proj.weight": rand(heads * dim, h),
                    p + "self_attn.k_proj.weight": rand(kv_heads * dim, h),
                    p + "self_attn.v_proj.weight": rand(kv_heads * dim, h),
                    p + "self_attn.o_proj.weight": rand(h, heads * dim),
                    p + "mlp.gate_proj.weight": rand(inter, h), p + "mlp.up_proj.weight": rand(inter, h),
                    p + "mlp.down_proj.weight": rand(h, inter),
                    p + "input_layernorm.weight": ones(h), p + "post_attention_layernorm.weight": ones(h)})
    return out


def cmd_model(a) -> int:
    from safetensors.torch import save_file

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    config = json.loads(Path(a.config).read_text())
    shutil.copy(a.config, out / "config.json")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (Path(a.tokenizer) / name).exists():
            shutil.copy(Path(a.tokenizer) / name, out / name)
    t = time.time()
    tensors = llama_tensors(config, a.seed)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    n = sum(v.numel() for v in tensors.values())
    print(f"model: {n / 1e9:.2f}B parameters, std 0.02, seed {a.seed}, in {out} ({time.time() - t:.1f} s)")
    return 0


def cmd_perturb(a) -> int:
    """The weights replaced in place, as a re-download or a fine-tune written over the old files would."""
    from safetensors.torch import load_file, save_file

    path = Path(a.model) / "model.safetensors"
    tensors = load_file(str(path))
    import torch

    g = torch.Generator().manual_seed(a.seed)
    for name, t in tensors.items():
        if name.endswith("proj.weight"):
            tensors[name] = (t.float() + torch.randn(t.shape, generator=g) * 0.01).to(t.dtype)
    save_file(tensors, str(path), metadata={"format": "pt"})
    print(f"perturb: {path} rewritten in place (projections + N(0, 0.01))")
    return 0


def cmd_lora(a) -> int:
    import torch
    from safetensors.torch import save_file

    config = json.loads((Path(a.model) / "config.json").read_text())
    h, heads, kv_heads = config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"]
    dim = config.get("head_dim") or h // heads
    out_dims = {"q_proj": heads * dim, "k_proj": kv_heads * dim, "v_proj": kv_heads * dim, "o_proj": h}
    in_dims = {"q_proj": h, "k_proj": h, "v_proj": h, "o_proj": heads * dim}
    g = torch.Generator().manual_seed(a.seed)
    tensors = {}
    for i in range(config["num_hidden_layers"]):
        for m, out_dim in out_dims.items():
            p = f"base_model.model.model.layers.{i}.self_attn.{m}."
            tensors[p + "lora_A.weight"] = (torch.randn(a.rank, in_dims[m], generator=g) * 0.05).to(torch.bfloat16)
            tensors[p + "lora_B.weight"] = (torch.randn(out_dim, a.rank, generator=g) * 0.05).to(torch.bfloat16)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": a.rank, "lora_alpha": 2 * a.rank, "lora_dropout": 0.0,
        "bias": "none", "target_modules": sorted(out_dims), "base_model_name_or_path": str(a.model)}))
    print(f"lora: rank {a.rank}, seed {a.seed}, in {out}")
    return 0


# --- asking -----------------------------------------------------------------------------------------------

def counters(base: str) -> dict:
    status, text, _ = c.http_json(base.rstrip("/") + "/metrics", timeout=10)
    if status != 200 or not isinstance(text, str):
        return {k: 0.0 for k in HIT_METRICS}
    found = c.metrics(text)
    return {key: found.get(metric, 0.0) for key, metric in HIT_METRICS.items()}


def ask(base: str, model: str, prompt: list[int], salt: str | None = None) -> dict:
    body = {"model": model, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "logprobs": TOP,
            "return_tokens_as_token_ids": True}
    if salt:
        body["cache_salt"] = salt
    before = counters(base)
    status, data, dt = c.http_json(base.rstrip("/") + "/v1/completions", body, timeout=300)
    time.sleep(1.2)  # vLLM publishes its counters on the next logging tick
    after = counters(base)
    if status != 200 or not isinstance(data, dict):
        return {"ok": False, "error": f"HTTP {status}: {str(data)[:300]}"}
    lp = data["choices"][0]["logprobs"]
    return {"ok": True, "seconds": dt, "tokens": lp["tokens"], "token_logprobs": lp["token_logprobs"],
            "top": [dict(sorted(t.items())) for t in lp["top_logprobs"]],
            **{k: after[k] - before[k] for k in HIT_METRICS}}


def ask_all(a, label: str, model: str, prompts, salt_prefix: str | None = None, base: str | None = None) -> list:
    rows = []
    for i, prompt in enumerate(prompts):
        row = {"bench": "kv_equality", "label": label, "model": model, "prompt": i, "phase": a.phase,
               **ask(base or a.base_url, model, prompt, f"{salt_prefix}-{i}" if salt_prefix else None)}
        rows.append(row)
        c.log(f"{label} #{i}: {'ok' if row['ok'] else row['error']} gpu_hit={row.get('gpu_hit_tokens')} "
              f"offload_hit={row.get('offload_hit_tokens')} tokens={row.get('tokens', [])[:4]}")
    c.append_rows(a.results, rows)
    return rows


# --- the appliance ----------------------------------------------------------------------------------------

def appliance_env(a, **extra) -> dict:
    py = sys.executable
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "LMCACHE_", "APPLIANCE_"))}
    env.update({"APPLIANCE_VLLM_COMMAND": f"{py} -m vllm.entrypoints.cli.main",
                "APPLIANCE_LMCACHE_COMMAND": f"{py} -m lmcache.cli.main",
                "VLLM_MODEL": a.model, "VLLM_SERVED_MODEL_NAME": a.served, "VLLM_PORT": str(a.port),
                "VLLM_MAX_MODEL_LEN": "8192", "VLLM_ENFORCE_EAGER": "true", "VLLM_GPU_MEMORY_UTILIZATION": "0.3",
                "VLLM_SERVER_DEV_MODE": "1", "VLLM_USE_FLASHINFER_SAMPLER": "0", "HF_HUB_OFFLINE": "1",
                "VLLM_KV_OFFLOADING_SIZE": "4", "LMCACHE_LOCAL_DISK": a.kv_disk, "LMCACHE_MAX_LOCAL_DISK_SIZE": "20",
                "APPLIANCE_RUN_DIR": a.run_dir, "PYTHONPATH": f"{a.site}:{ROOT}" if a.site else str(ROOT)})
    if a.store:
        env["LMCACHE_SHARED_URL"] = a.store
    env.update(extra)
    return env


class Appliance:
    def __init__(self, a, label: str, **extra):
        self.a, self.label = a, label
        Path(a.logs).mkdir(parents=True, exist_ok=True)
        shutil.rmtree(a.run_dir, ignore_errors=True)
        self.log = open(Path(a.logs) / f"{label}.serve.log", "w")
        t = time.time()
        self.proc = subprocess.Popen([sys.executable, "-m", "entrypoint", "serve"], cwd=ROOT,
                                     env=appliance_env(a, **extra), stdout=self.log, stderr=subprocess.STDOUT)
        ready = c.wait_ready(a.base_url, a.served, timeout=420, alive=lambda: self.proc.poll() is None)
        c.log(f"{label}: ready in {time.time() - t:.0f} s (serve -> /v1/models)")
        plan = json.loads((Path(a.run_dir) / "plan.json").read_text())
        self.kv_identity = plan.get("kv_identity")
        c.append_rows(a.results, [{"bench": "kv_equality_start", "label": label, "phase": a.phase,
                                   "ready_s": ready, "kv_identity": self.kv_identity,
                                   "disk_path": (plan["lmcache"].get("disk") or {}).get("path")}])

    def supervisor(self) -> c.Supervisor:
        return c.Supervisor(c.socket_from_run_dir(self.a.run_dir))

    def kill_vllm(self):
        sup = self.supervisor()
        old = sup.kill("vllm")
        sup.wait_new_pid("vllm", old)
        c.wait_ready(self.a.base_url, self.a.served, timeout=300)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for name in ("vllm.log", "lmcache.log"):
            src = Path(self.a.run_dir) / name
            if src.exists():
                shutil.copy(src, Path(self.a.logs) / f"{self.label}.{name}")
        self.log.close()
        wait_gpu_free()


def wait_gpu_free(seconds: float = 60) -> None:
    t = time.time()
    while time.time() - t < seconds:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"],
                             capture_output=True, text=True).stdout.strip()
        if not out:
            return
        time.sleep(0.5)


def sibling(a, plan_path: Path, port: int):
    """A second vLLM on the same GPU with the first one's plan (model, flags, --kv-transfer-config: the same
    LMCache server), its own port: the one-host cluster shape (compose.cluster.yaml's replicas)."""
    plan = json.loads(plan_path.read_text())
    argv = list(plan["vllm"]["argv"])
    argv[argv.index("--port") + 1] = str(port)
    cmd = [sys.executable, "-m", "vllm.entrypoints.cli.main", *argv[argv.index("serve"):]]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "LMCACHE_"))}, **plan["vllm"]["env"],
           "VLLM_SERVER_DEV_MODE": "1", "VLLM_USE_FLASHINFER_SAMPLER": "0",
           "PYTHONPATH": f"{a.site}:{ROOT}" if a.site else str(ROOT)}
    log = open(Path(a.logs) / "sibling.vllm.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    c.wait_ready(f"http://127.0.0.1:{port}", a.served, timeout=420, alive=lambda: proc.poll() is None)
    return proc, log


def empty_disk_tier(path: str) -> int:
    n = 0
    for f in Path(path).glob("*"):
        if f.is_file() and not f.name.startswith("."):
            f.unlink()
            n += 1
    return n


def phase_reuse(a, prompts) -> None:
    app = Appliance(a, "bf16")
    try:
        ask_all(a, "recompute", a.served, prompts, salt_prefix="rc1")
        ask_all(a, "recompute 2", a.served, prompts, salt_prefix="rc2")
        ask_all(a, "cold", a.served, prompts)
        ask_all(a, "GPU hit", a.served, prompts)
        c.reset_prefix_cache(a.base_url)
        ask_all(a, "CPU tier hit", a.served, prompts)
        app.kill_vllm()
        ask_all(a, "after vLLM SIGKILL", a.served, prompts)
        proc, log = sibling(a, Path(a.run_dir) / "plan.json", a.port + 1)
        try:
            ask_all(a, "sibling vLLM, shared LMCache server", a.served, prompts, base=f"http://127.0.0.1:{a.port + 1}")
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
            log.close()
    finally:
        app.stop()
    app = Appliance(a, "bf16-restarted")
    try:
        ask_all(a, "after full restart (disk tier)", a.served, prompts)
        disk = json.loads((Path(a.run_dir) / "plan.json").read_text())["lmcache"]["disk"]["path"]
    finally:
        app.stop()
    if a.store:
        c.log(f"emptied the disk tier: {empty_disk_tier(disk)} files")
        app = Appliance(a, "bf16-store-only")
        try:
            ask_all(a, "Valkey/Redis store (disk tier emptied)", a.served, prompts)
        finally:
            app.stop()


def phase_negative(a, prompts) -> None:
    app = Appliance(a, "fp8", VLLM_QUANTIZATION="fp8")
    try:
        ask_all(a, "fp8: first request", a.served, prompts)
        ask_all(a, "fp8: recompute", a.served, prompts, salt_prefix="rc-fp8")
    finally:
        app.stop()
    subprocess.run([sys.executable, "-m", "bench.kv_equality", "perturb", "--model", a.model, "--seed", "7"], cwd=ROOT,
                   check=True)
    app = Appliance(a, "perturbed")
    try:
        ask_all(a, "perturbed in place: first request", a.served, prompts)
        ask_all(a, "perturbed in place: recompute", a.served, prompts, salt_prefix="rc-pert")
    finally:
        app.stop()
    if not a.lora:
        return
    modules = " ".join(f"lora-{x}={p}" for x, p in zip("ab", a.lora))
    app = Appliance(a, "lora", VLLM_ENABLE_LORA="true", VLLM_LORA_MODULES=modules, VLLM_MAX_LORA_RANK="8")
    try:
        first, second = "lora-a", "lora-b"
        ask_all(a, f"adapter {first}: recompute", first, prompts, salt_prefix="rc-a")
        ask_all(a, f"adapter {second}: recompute", second, prompts, salt_prefix="rc-b")
        ask_all(a, f"adapter {first}: cold", first, prompts)
        c.reset_prefix_cache(a.base_url)
        ask_all(a, f"adapter {first}: CPU tier hit", first, prompts)
        c.reset_prefix_cache(a.base_url)
        ask_all(a, f"adapter {second} after {first}: first request", second, prompts)
        c.reset_prefix_cache(a.base_url)
        ask_all(a, "base model after adapters: first request", a.served, prompts)
        ask_all(a, "base model: recompute", a.served, prompts, salt_prefix="rc-base")
    finally:
        app.stop()


def cmd_run(a) -> int:
    prompts = [c.token_prompt(seed, PROMPT_TOKENS, salt="kvq") for seed in range(a.prompts)]
    Path(a.results).mkdir(parents=True, exist_ok=True)
    {"reuse": phase_reuse, "negative": phase_negative}[a.phase](a, prompts)
    return 0


# --- the report -------------------------------------------------------------------------------------------

# Each path, the label it is compared with (its own recompute), and whether it must be an offloaded-tier hit.
REUSE_PATHS = [("recompute 2", "recompute", "miss"), ("cold", "recompute", "miss"), ("GPU hit", "recompute", "gpu"),
               ("CPU tier hit", "recompute", "hit"), ("after vLLM SIGKILL", "recompute", "hit"),
               ("sibling vLLM, shared LMCache server", "recompute", "hit"),
               ("after full restart (disk tier)", "recompute", "hit"),
               ("Valkey/Redis store (disk tier emptied)", "recompute", "hit"),
               ("fp8: first request", "fp8: recompute", "miss"),
               ("perturbed in place: first request", "perturbed in place: recompute", "miss"),
               ("adapter lora-a: cold", "adapter lora-a: recompute", "miss"),
               ("adapter lora-a: CPU tier hit", "adapter lora-a: recompute", "hit"),
               ("adapter lora-b after lora-a: first request", "adapter lora-b: recompute", "miss"),
               # the perturbed run stored these prompts for the base model, same weights: a correct reuse
               ("base model after adapters: first request", "base model: recompute", "hit")]
# Answers that must differ, to show the outputs depend on what computed the KV (else equality proves nothing).
MUST_DIFFER = [("fp8: recompute", "recompute"), ("perturbed in place: recompute", "recompute"),
               ("adapter lora-a: recompute", "base model: recompute"),
               ("adapter lora-b: recompute", "adapter lora-a: recompute")]


def compare(rows: list, reference: list) -> dict:
    """Tokens equal (all 16 of every prompt), and the largest difference of a top-5 logprob present in both."""
    same, worst, worst_chosen = 0, 0.0, 0.0
    for row, ref in zip(rows, reference):
        same += row["tokens"] == ref["tokens"]
        for mine, theirs in zip(row["top"], ref["top"]):
            for tok in set(mine) & set(theirs):
                worst = max(worst, abs(mine[tok] - theirs[tok]))
        for x, y in zip(row["token_logprobs"], ref["token_logprobs"]):
            worst_chosen = max(worst_chosen, abs(x - y))
    return {"prompts": len(rows), "tokens_equal": same, "max_top5_diff": worst, "max_chosen_diff": worst_chosen}


def build_report(rows: list) -> tuple[dict, str]:
    by = {}
    for r in rows:
        if r.get("bench") == "kv_equality" and r.get("ok"):
            by.setdefault(r["label"], []).append(r)
    paths = REUSE_PATHS
    table, summary = [], {}
    for label, ref, want in paths:
        if label not in by or ref not in by:
            continue
        cmp_ = compare(sorted(by[label], key=lambda r: r["prompt"]), sorted(by[ref], key=lambda r: r["prompt"]))
        offload = sum(r["offload_hit_tokens"] for r in by[label])
        gpu = sum(r["gpu_hit_tokens"] for r in by[label])
        hit_ok = {"miss": offload == 0, "hit": offload > 0, "gpu": gpu > 0, "any": True}[want]
        verdict = "OK" if cmp_["tokens_equal"] == cmp_["prompts"] and hit_ok else "CHECK"
        summary[label] = {**cmp_, "offload_hit_tokens": offload, "gpu_hit_tokens": gpu, "expected": want,
                          "verdict": verdict, "reference": ref}
        table.append([label, ref, f"{cmp_['tokens_equal']}/{cmp_['prompts']}", f"{cmp_['max_top5_diff']:.4f}",
                      f"{cmp_['max_chosen_diff']:.4f}", f"{gpu:.0f}", f"{offload:.0f}", want, verdict])
    differ = []
    for label, other in MUST_DIFFER:
        if label in by and other in by:
            cmp_ = compare(sorted(by[label], key=lambda r: r["prompt"]), sorted(by[other], key=lambda r: r["prompt"]))
            summary[f"{label} vs {other}"] = {**cmp_, "must_differ": True}
            differ.append([label, other, f"{cmp_['tokens_equal']}/{cmp_['prompts']}", f"{cmp_['max_chosen_diff']:.3f}"])
    md = c.markdown_table(["path", "compared with", "16 tokens equal", "max abs diff, top-5 logprobs",
                           "max abs diff, chosen logprob", "GPU hit tokens", "offloaded hit tokens", "expected",
                           "verdict"], table)
    if differ:
        md += ("\n\nOutputs depend on what computed the KV (these pairs must differ):\n\n"
               + c.markdown_table(["answers of", "vs", "16 tokens equal", "max abs diff, chosen logprob"], differ))
    return summary, md


def cmd_report(a) -> int:
    summary, md = build_report(c.load_rows(a.results))
    return c.publish_report(a.results, "kv_equality", summary, md)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("model")
    m.add_argument("--config", required=True)
    m.add_argument("--tokenizer", required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--seed", type=int, default=1)
    pt = sub.add_parser("perturb")
    pt.add_argument("--model", required=True)
    pt.add_argument("--seed", type=int, default=7)
    lo = sub.add_parser("lora")
    lo.add_argument("--model", required=True)
    lo.add_argument("--out", required=True)
    lo.add_argument("--seed", type=int, required=True)
    lo.add_argument("--rank", type=int, default=8)
    r = sub.add_parser("run")
    r.add_argument("--phase", choices=["reuse", "negative"], required=True)
    r.add_argument("--model", required=True)
    r.add_argument("--results", required=True)
    r.add_argument("--logs", default="/tmp/kvq/logs")
    r.add_argument("--served", default="kvq")
    r.add_argument("--port", type=int, default=8000)
    r.add_argument("--prompts", type=int, default=4)
    r.add_argument("--kv-disk", default="/tmp/kvq/kv")
    r.add_argument("--run-dir", default="/tmp/kvq/run")
    r.add_argument("--site", default=os.environ.get("SITE", ""))
    r.add_argument("--store", default="", help="redis://host:port of a running store (empty: no store step)")
    r.add_argument("--lora", nargs="*", default=[], help="two adapter directories, served as lora-a and lora-b "
                   "(negative phase)")
    rep = sub.add_parser("report")
    rep.add_argument("--results", required=True)
    return p


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    if a.cmd == "run":
        a.base_url = f"http://127.0.0.1:{a.port}"
    commands = {"model": cmd_model, "perturb": cmd_perturb, "lora": cmd_lora, "run": cmd_run, "report": cmd_report}
    return commands[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
