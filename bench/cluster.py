"""Cross-replica benchmarks (issue 15): a prompt computed by one replica, served by another.

Steps (each appends rows to RESULTS/results.jsonl; python -m bench.suite cluster runs them in order):

  cluster.py pair --label store --writer URL_A --reader URL_B --redis 127.0.0.1:6390 --tokens 4000,8000 ...
        per length: the reader recomputes a fresh prompt (reader_recompute); the writer computes prompt P
        (writer_cold), the store fills; the reader gets P (reader_hit: from the shared store in shape (b), from
        the shared LMCache server's CPU tier in shape (a)), P again (reader_gpu_hit), P after a reset of its
        GPU prefix cache (reader_after_reset). Without --redis the writer's tier is waited for --settle s.
  cluster.py plain-read --redis 127.0.0.1:6390 --object-bytes N --objects M --parallel 8
        what the same store delivers to a plain client: M objects of N bytes (LMCache's object: one chunk of
        256 tokens x KV bytes per token), read by --parallel connections (the resp adapter's num_workers);
        a raw-socket RESP client (this file) and, if given, redis-benchmark
  cluster.py route --label L --base-url ROUTER --replicas URL,URL ...
        a multi-user workload (a shared system prompt, each user's conversation growing by round) through
        the router; TTFT p50/p90, throughput, and how the replicas' request counts moved
  cluster.py route --label L --coordinator URL --replicas URL,URL --lmcache-http-ports P,P ...
        the same workload routed in this client by LMCache's coordinator: each prompt to the replica whose
        LMCache server holds its longest prefix (POST /directory/lookup), ties to the least loaded
  cluster.py outage --writer URL_A --reader URL_B --redis HOST:PORT --redis-pidfile F --restart-cmd CMD
        light load on the reader; the store SIGKILLed, restarted; seconds until the writer stores again and
        until the reader hits a prompt only the store has
  cluster.py router [--site DIR ...] -- ROUTER ARGS     run vllm-router (the wheel's launcher, without the
        launcher's optional Python dependencies)
  cluster.py report --results R [--model-config DIR]    tables, targets, cluster.png

TTFT: /v1/completions with max_tokens=1 (the whole request, as reuse.py); the router workload streams.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

from bench import common as c
from entrypoint.cluster.routing import choose_replica, held_prefix

CHUNK_TOKENS = 256  # LMCache's chunk size in the appliance (LMCACHE_CHUNK_SIZE default): one object per chunk
READER_PHASES = ("reader_recompute", "writer_cold", "reader_hit", "reader_gpu_hit", "reader_after_reset")
# The targets
SHARED_SERVER_VS_RECOMPUTE = 0.25  # (a) at 16k tokens
STORE_VS_PLAIN = 0.5  # (b) effective read bandwidth >= 50% of a plain client's
CROSSOVER_MAX_TOKENS = 32000  # (b) a store hit beats recompute from <= 32k tokens (8B shape)
TARGET_TOKENS = 16000
METRICS = ("vllm:request_success_total", "vllm:prompt_tokens_total", "vllm:prefix_cache_queries_total",
           "vllm:prefix_cache_hits_total", "vllm:external_prefix_cache_queries_total",
           "vllm:external_prefix_cache_hits_total")


# --- a minimal RESP client (stdlib: the GPU machine has no redis-py) -------------------------------------

class RespError(RuntimeError):
    pass


class Resp:
    """One connection to a Redis-protocol server; `cmd` sends one command and returns the parsed reply.
    Bulk replies can be read into a caller's buffer (`get_into`), as a fast client would."""

    def __init__(self, host: str, port: int, timeout: float = 30.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.f = self.sock.makefile("rb", buffering=1 << 16)

    def close(self):
        try:
            self.f.close()
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, *args) -> None:
        parts = [b"*%d\r\n" % len(args)]
        for a in args:
            b = a if isinstance(a, (bytes, bytearray, memoryview)) else str(a).encode()
            parts += [b"$%d\r\n" % len(b), b, b"\r\n"]
        self.sock.sendall(b"".join(bytes(p) if isinstance(p, memoryview) else p for p in parts))

    def _line(self) -> bytes:
        line = self.f.readline()
        if not line:
            raise RespError("connection closed")
        return line[:-2]

    def reply(self, into: memoryview | None = None):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RespError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            if into is not None and len(into) >= n:
                got = 0
                while got < n:
                    k = self.f.readinto(into[got:n])
                    if not k:
                        raise RespError("connection closed mid-reply")
                    got += k
                self.f.read(2)
                return n
            data = self.f.read(n + 2)
            return data[:-2]
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise RespError(f"unexpected reply {line[:40]!r}")

    def cmd(self, *args):
        self.send(*args)
        return self.reply()

    def get_into(self, key, buf: memoryview):
        self.send("GET", key)
        return self.reply(into=buf)


def host_port(text: str, default_port: int = 6379) -> tuple[str, int]:
    text = text.removeprefix("redis://").rstrip("/")
    host, _, port = text.rpartition(":")
    if not host:
        return text, default_port
    return host.strip("[]"), int(port)


def store_info(addr: str) -> dict:
    """Key count and one object's size (all full-chunk objects of one model are the same size)."""
    host, port = host_port(addr)
    with Resp(host, port, timeout=10) as r:
        keys = r.cmd("DBSIZE")
        size = None
        for _ in range(5):
            key = r.cmd("RANDOMKEY")
            if key is None:
                break
            if not bytes(key).startswith(PLAIN_PREFIX.encode()):
                size = r.cmd("STRLEN", key)
                break
        used = None
        for line in r.cmd("INFO", "memory").decode(errors="replace").splitlines():
            if line.startswith("used_memory:"):
                used = int(line.split(":", 1)[1])
    return {"keys": keys, "object_bytes": size, "used_memory": used}


def wait_store(addr: str, before: int, expect_new: int, timeout: float = 30.0, quiet_s: float = 2.0) -> dict:
    """Until the store holds `expect_new` more keys than `before`, or its key count has not moved for
    `quiet_s` (LMCache writes to its L2 tiers after the request, asynchronously)."""
    t0 = time.perf_counter()
    last, last_change = before, t0
    while True:
        try:
            n = store_info(addr)["keys"]
        except (OSError, RespError) as e:
            return {"store_new_keys": None, "store_wait_s": time.perf_counter() - t0, "store_error": str(e)}
        now = time.perf_counter()
        if n != last:
            last, last_change = n, now
        if n - before >= expect_new or now - last_change >= quiet_s or now - t0 >= timeout:
            return {"store_new_keys": n - before, "store_wait_s": now - t0}
        time.sleep(0.05)


# --- pair: one replica computes, the other serves --------------------------------------------------------

def _ints(text: str) -> list[int]:
    return [int(x) for x in str(text).split(",") if x.strip()]


def _measure(a, url: str, phase: str, tokens: int, seed, prompt, **extra) -> dict:
    """One timed request; for the reader's hits also how many prompt tokens vLLM took from its KV connector
    (LMCache): its external_prefix_cache_hits counter before and after, outside the timed part."""
    probe = phase in ("reader_hit", "reader_after_reset")
    before = scrape(url) if probe else {}
    res = c.completion_ttft(url, a.model, prompt, a.request_timeout)
    if probe:
        hits = deltas(before, scrape(url)).get("vllm:external_prefix_cache_hits_total")
        extra = {**extra, "external_hit_tokens": hits}
    row = {"bench": "cluster_pair", "label": a.label, "phase": phase, "tokens": tokens, "seed": seed,
           "ttft_s": res["ttft_s"], "prompt_tokens": res["prompt_tokens"], "ok": res["ok"], "error": res["error"],
           **extra}
    c.log(f"{a.label:>14} {phase:<19} {tokens:>6} tok seed {seed}: "
          + (f"{res['ttft_s']:.3f} s" if res["ok"] else f"FAILED ({res['error']})")
          + (f", external hit tokens {extra['external_hit_tokens']}" if probe else ""))
    c.append_rows(a.results, [row])
    return row


def _settle(a, before: int | None, tokens: int) -> dict:
    if not a.redis:
        time.sleep(a.settle)
        return {}
    return wait_store(a.redis, before or 0, tokens // a.chunk_tokens, timeout=a.store_timeout)


def _keys(a) -> int | None:
    if not a.redis:
        return None
    try:
        return store_info(a.redis)["keys"]
    except (OSError, RespError) as e:
        c.log(f"warning: store {a.redis} did not answer: {e}")
        return None


def cmd_pair(a) -> int:
    for url in (a.writer, a.reader):
        c.wait_ready(url, a.model, timeout=a.ready_timeout)
    rows = []
    if not a.no_warmup:  # first-request costs out of the numbers, and the reader's load path warmed up
        for url, who in ((a.writer, "writer"), (a.reader, "reader")):
            for n in (1024, 8192):
                rows.append(_measure(a, url, f"warmup_{who}", n, -1, c.token_prompt(time.time_ns(), n, "warmup")))
        w = c.token_prompt(time.time_ns(), 4096, "warmup-shared")
        before = _keys(a)
        rows.append(_measure(a, a.writer, "warmup_writer", 4096, -1, w))
        _settle(a, before, 4096)
        rows.append(_measure(a, a.reader, "warmup_reader_hit", 4096, -1, w))
    for n in _ints(a.tokens):
        for seed in range(a.seeds):
            # the reader's recompute first: what it stores must be in the store before the hit is measured
            before = _keys(a)
            rows.append(_measure(a, a.reader, "reader_recompute", n, seed, c.token_prompt(seed, n, a.salt + "-fresh")))
            _settle(a, before, n)
            prompt = c.token_prompt(seed, n, a.salt)
            before = _keys(a)
            rows.append(_measure(a, a.writer, "writer_cold", n, seed, prompt))
            store = _settle(a, before, n)
            if a.redis:
                info = store_info(a.redis)
                store.update(object_bytes=info["object_bytes"], store_used_memory=info["used_memory"])
                c.log(f"    store: {store}")
            rows.append(_measure(a, a.reader, "reader_hit", n, seed, prompt, **store))
            rows.append(_measure(a, a.reader, "reader_gpu_hit", n, seed, prompt))
            try:
                c.reset_prefix_cache(a.reader)
                time.sleep(0.5)
                rows.append(_measure(a, a.reader, "reader_after_reset", n, seed, prompt))
            except c.BenchError as e:
                c.log(f"warning: {e}")
    bad = [r for r in rows if not r["ok"]]
    return 1 if bad else 0


# --- plain-read: the store's own read bandwidth ----------------------------------------------------------

PLAIN_PREFIX = "cluster-bench:plain:"


def _read_round(host: str, port: int, keys: list[str], object_bytes: int, parallel: int) -> float:
    """Seconds for `parallel` connections to GET their share of `keys` (key i on connection i % parallel)."""
    conns = [Resp(host, port, timeout=120) for _ in range(parallel)]
    bufs = [memoryview(bytearray(object_bytes)) for _ in range(parallel)]
    errors: list[str] = []
    start = threading.Barrier(parallel + 1)

    def work(i):
        start.wait()
        try:
            for k in keys[i::parallel]:
                if conns[i].get_into(k, bufs[i]) != object_bytes:
                    errors.append(f"{k}: short read")
        except (OSError, RespError) as e:
            errors.append(f"{e.__class__.__name__}: {e}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(parallel)]
    for th in threads:
        th.start()
    start.wait()
    t = time.perf_counter()
    for th in threads:
        th.join()
    dt = time.perf_counter() - t
    for cn in conns:
        cn.close()
    if errors:
        raise RespError("; ".join(errors[:3]))
    return dt


def plain_read(addr: str, object_bytes: int, objects: int, parallel: int, reps: int) -> dict:
    """GB/s of GETs of `objects` objects of `object_bytes`, spread over `parallel` connections, each reading
    into its own preallocated buffer; the median of `reps` rounds. The objects are written first and deleted
    after."""
    host, port = host_port(addr)
    payload = (b"KVKVKVKV" * (object_bytes // 8 + 1))[:object_bytes]
    keys = [f"{PLAIN_PREFIX}{i}" for i in range(objects)]
    with Resp(host, port, timeout=120) as r:
        t = time.perf_counter()
        for k in keys:
            r.cmd("SET", k, payload)
        write_s = time.perf_counter() - t
    del payload
    rounds = []
    try:
        for _ in range(reps):
            rounds.append(object_bytes * objects / _read_round(host, port, keys, object_bytes, parallel) / 1e9)
    finally:
        with Resp(host, port, timeout=120) as r:
            for i in range(0, len(keys), 256):
                r.cmd("DEL", *keys[i:i + 256])
    return {"gb_per_s": c.median(rounds), "rounds_gb_per_s": [round(x, 3) for x in rounds],
            "write_gb_per_s": object_bytes * objects / write_s / 1e9}


def redis_benchmark(exe: str, addr: str, object_bytes: int, objects: int, parallel: int) -> dict:
    """redis-benchmark (C, hiredis): SET then GET of `object_bytes` values by `parallel` clients."""
    host, port = host_port(addr)
    argv = [*exe.split(), "-h", host, "-p", str(port), "-t", "set,get", "-d", str(object_bytes), "-n", str(objects),
            "-c", str(parallel), "-r", str(objects), "-q"]
    out = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=300)
    text = out.stdout + out.stderr
    m = re.search(r"GET: ([0-9.]+) requests per second", text.replace("\r", "\n"))
    if out.returncode != 0 or not m:
        raise RespError(f"redis-benchmark failed (exit {out.returncode}): {text[-300:]}")
    rps = float(m.group(1))
    return {"gb_per_s": rps * object_bytes / 1e9, "requests_per_s": rps}


def cmd_plain_read(a) -> int:
    size = a.object_bytes
    if not size:
        size = store_info(a.redis)["object_bytes"]
        if not size:
            raise c.BenchError("no --object-bytes and no object in the store to take the size from")
    base = {"bench": "cluster_plain_read", "label": a.label, "object_bytes": size, "objects": a.objects,
            "parallel": a.parallel}
    rc = 0
    try:
        res = plain_read(a.redis, size, a.objects, a.parallel, a.reps)
        row = {**base, "client": "raw-socket (python)", "ok": True, **res}
        c.log(f"plain client: {res['gb_per_s']:.2f} GB/s ({res['rounds_gb_per_s']}), {a.objects} x {size} B, "
              f"{a.parallel} connections")
    except (OSError, RespError) as e:
        row, rc = {**base, "client": "raw-socket (python)", "ok": False, "error": str(e)}, 1
    c.append_rows(a.results, [row])
    if a.redis_benchmark:
        try:
            res = redis_benchmark(a.redis_benchmark, a.redis, size, a.objects, a.parallel)
            row = {**base, "client": "redis-benchmark", "ok": True, **res}
            c.log(f"redis-benchmark GET: {res['gb_per_s']:.2f} GB/s")
        except (OSError, RespError, subprocess.SubprocessError) as e:
            row, rc = {**base, "client": "redis-benchmark", "ok": False, "error": str(e)}, 1
        c.append_rows(a.results, [row])
        try:  # redis-benchmark's keys are not ours to keep
            host, port = host_port(a.redis)
            with Resp(host, port) as r:
                for k in ("key:__rand_int__",):
                    r.cmd("DEL", k)
                cursor = "0"
                while True:
                    cursor, batch = r.cmd("SCAN", cursor, "MATCH", "key:*", "COUNT", 1000)
                    if batch:
                        r.cmd("DEL", *batch)
                    cursor = cursor.decode() if isinstance(cursor, bytes) else cursor
                    if cursor == "0":
                        break
        except (OSError, RespError) as e:
            c.log(f"warning: could not delete redis-benchmark's keys: {e}")
    return rc


# --- route: a multi-user workload through the router -----------------------------------------------------

def scrape(url: str) -> dict:
    """The counters of METRICS on one vLLM (summed over labels); {} when it does not answer."""
    try:
        status, text, _ = c.http_json(url.rstrip("/") + "/metrics", timeout=10)
    except (OSError, ValueError):
        return {}
    if status != 200 or not isinstance(text, str):
        return {}
    found = c.metrics(text)
    return {name: found[name] for name in METRICS if name in found}


def deltas(before: dict, after: dict) -> dict:
    return {k: after[k] - before.get(k, 0.0) for k in after}


def words(seed, n: int, salt: str) -> str:
    """A text prompt of `n` number words: the router's cache_aware policy matches prompts as text."""
    return " ".join(str(t % 1000) for t in c.token_prompt(seed, n, salt))  # <= 3 digits: a few tokens a word


# --- placement by LMCache's coordinator: a router in the bench client ------------------------------------
# LMCache's coordinator: the placement logic is the product's (entrypoint/cluster/routing.py, the appliance's
# router, `python -m entrypoint router`); this client-side router applies it per prompt, with the routing time
# counted in each TTFT (docs/SCALE-OUT.md "LMCache's coordinator").


class CoordinatorRouter:
    """Routes each prompt to the replica whose LMCache server holds its longest prefix, by the coordinator.
    `servers[i]` is the HTTP port replica i's LMCache server registered with (the coordinator's /instances)."""

    def __init__(self, coordinator: str, replicas: list[str], servers: list[int], model: str,
                 lookup_model: str | None = None, timeout: float = 10.0):
        if len(servers) != len(replicas):
            raise c.BenchError(f"{len(replicas)} replicas but {len(servers)} LMCache server ports")
        self.coordinator, self.replicas, self.servers = coordinator.rstrip("/"), replicas, servers
        self.model, self.lookup_model, self.timeout = model, lookup_model, timeout
        self.lock = threading.Lock()
        self.inflight = [0] * len(replicas)
        self.turn = 0
        self.replica_of: dict[str, int] = {}

    def instances(self) -> dict[str, int]:
        status, data, _ = c.http_json(self.coordinator + "/instances", timeout=self.timeout)
        if status != 200 or not isinstance(data, dict):
            raise c.BenchError(f"coordinator /instances: HTTP {status}: {str(data)[:200]}")
        found = {}
        for inst in data.get("instances") or []:
            if inst.get("http_port") in self.servers:
                found[inst["instance_id"]] = self.servers.index(inst["http_port"])
        with self.lock:
            self.replica_of = found
        return found

    def wait_registered(self, timeout: float = 60.0) -> dict[str, int]:
        deadline = time.perf_counter() + timeout
        while True:
            try:
                found = self.instances()
                if len(set(found.values())) == len(self.replicas):
                    return found
            except (OSError, c.BenchError):
                found = {}
            if time.perf_counter() > deadline:
                raise c.BenchError(f"not every LMCache server registered with {self.coordinator} in {timeout:.0f} s "
                                   f"(found {found}; expected HTTP ports {self.servers})")
            time.sleep(1)

    def _model_name(self) -> str | None:
        """The model name in LMCache's keys (vLLM's model, as the connector passes it): read from a stored key."""
        if self.lookup_model is None:
            status, data, _ = c.http_json(self.coordinator + "/directory/keys?limit=1", timeout=self.timeout)
            keys = (data or {}).get("keys") if status == 200 and isinstance(data, dict) else None
            if keys:
                self.lookup_model = keys[0]["key"]["model_name"]
        return self.lookup_model

    def pick(self, prompt: str) -> tuple[int, dict]:
        """(replica, what the routing saw and cost); counts the request in flight until `done`."""
        t = time.perf_counter()
        with self.lock:
            self.turn += 1
            turn = self.turn
        info = {"route_s": None, "held_chunks": None, "chunks": None, "route_error": None}
        prefix: dict[str, int] = {}
        try:
            tok_url = self.replicas[turn % len(self.replicas)].rstrip("/") + "/tokenize"
            status, data, _ = c.http_json(tok_url, {"model": self.model, "prompt": prompt}, timeout=self.timeout)
            if status != 200 or not isinstance(data, dict):
                raise c.BenchError(f"/tokenize: HTTP {status}: {str(data)[:200]}")
            model_name = self._model_name()
            if model_name is not None:
                status, found, _ = c.http_json(self.coordinator + "/directory/lookup", {
                    "token_ids": data["tokens"], "model_name": model_name, "world_size": 1}, timeout=self.timeout)
                if status != 200 or not isinstance(found, dict):
                    raise c.BenchError(f"/directory/lookup: HTTP {status}: {str(found)[:200]}")
                info["chunks"] = found.get("chunks")
                prefix = held_prefix(found.get("results") or [])
                if any(inst not in self.replica_of for inst in prefix if inst != "*"):
                    self.instances()  # a server (re-)registered under a new id
        except (OSError, ValueError, KeyError, c.BenchError) as e:  # routing fails open: least loaded
            info["route_error"] = f"{e.__class__.__name__}: {e}"[:300]
        with self.lock:
            i, held = choose_replica(prefix, self.replica_of, self.inflight, turn)
            self.inflight[i] += 1
        info.update(route_s=time.perf_counter() - t, held_chunks=held)
        return i, info

    def done(self, i: int) -> None:
        with self.lock:
            self.inflight[i] -= 1


def cmd_route(a) -> int:
    replicas = [u for u in a.replicas.split(",") if u]
    oracle = None
    if a.coordinator:
        ports = [int(p) for p in a.lmcache_http_ports.split(",") if p]
        oracle = CoordinatorRouter(a.coordinator, replicas, ports, a.model, a.lookup_model)
        for u in replicas:
            c.wait_ready(u, a.model, timeout=a.ready_timeout)
        c.log(f"{a.label}: LMCache servers registered with the coordinator: {oracle.wait_registered()}")
    elif a.base_url:
        c.wait_ready(a.base_url, a.model, timeout=a.ready_timeout)
    else:
        raise c.BenchError("route needs --base-url (a router) or --coordinator (route in this client)")
    before = {u: scrape(u) for u in replicas}
    system = words("system", a.system_words, a.salt)
    gate = threading.Semaphore(a.concurrency)
    lock = threading.Lock()
    rows: list[dict] = []
    start = time.perf_counter()
    deadline = start + a.max_seconds

    def user(u: int):
        history = ""
        time.sleep(u * a.stagger)
        for rnd in range(a.rounds):
            prompt = f"{system} {history} {words(f'u{u}r{rnd}', a.user_words, a.salt)}".replace("  ", " ")
            with gate:
                if time.perf_counter() > deadline:
                    return
                sent = time.perf_counter() - start
                if oracle is None:
                    res = c.stream_completion(a.base_url, a.model, prompt, a.answer_tokens, a.request_timeout)
                    routed = {}
                else:  # the routing is part of the request's time to first token
                    i, routed = oracle.pick(prompt)
                    try:
                        res = c.stream_completion(replicas[i], a.model, prompt, a.answer_tokens, a.request_timeout)
                    finally:
                        oracle.done(i)
                    routed["replica"] = i
                    for k in ("ttft_s", "latency_s"):
                        if res.get(k) is not None:
                            res[k] += routed["route_s"]
            row = {"bench": "cluster_route_req", "label": a.label, "user": u, "round": rnd, "sent_at_s": sent,
                   "prompt_words": len(prompt.split()), **res, **routed}
            with lock:
                rows.append(row)
                failed = sum(not r["ok"] for r in rows)
            c.append_rows(a.results, [row])
            if not res["ok"] and failed <= 5:  # the first few; the summary counts them all
                c.log(f"{a.label} user {u} round {rnd}: FAILED {res['error']}")
            if not res["ok"] and "HTTP 400" in str(res["error"]):
                return  # e.g. longer than the model's context: every later round would be too
            history = prompt[len(system):] + " " + words(f"a{u}r{rnd}", a.answer_words, a.salt)

    threads = [threading.Thread(target=user, args=(u,), daemon=True) for u in range(a.users)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=max(1.0, deadline - time.perf_counter() + a.request_timeout + 5))
    wall = time.perf_counter() - start
    after = {u: scrape(u) for u in replicas}
    ok = [r for r in rows if r["ok"]]
    prompt_tok = sum(r.get("prompt_tokens") or 0 for r in ok)
    out_tok = sum(r.get("completion_tokens") or 0 for r in ok)
    per = {u: deltas(before[u], after[u]) for u in replicas}
    summary = {"bench": "cluster_route", "label": a.label, "policy": a.policy, "replicas": len(replicas),
               "ok": bool(ok) and len(ok) == len(rows), "requests": len(rows), "failed": len(rows) - len(ok),
               "wall_s": wall, "prompt_tokens": prompt_tok, "completion_tokens": out_tok,
               "tokens_per_s": (prompt_tok + out_tok) / wall, "output_tokens_per_s": out_tok / wall,
               "requests_per_s": len(ok) / wall, "ttft_p50_s": c.percentile([r["ttft_s"] for r in ok], 50),
               "ttft_p90_s": c.percentile([r["ttft_s"] for r in ok], 90),
               "latency_p50_s": c.percentile([r["latency_s"] for r in ok], 50),
               "per_replica": per, **(route_summary(ok) if oracle else {}), "params": {k: getattr(a, k) for k in (
                   "users", "rounds", "system_words", "user_words", "answer_words", "answer_tokens", "concurrency",
                   "max_seconds")}}
    c.append_rows(a.results, [summary])
    c.log(f"{a.label}: {len(ok)} ok / {summary['failed']} failed in {wall:.1f} s; p50 {c.fmt(summary['ttft_p50_s'])}"
          f" s, p90 {c.fmt(summary['ttft_p90_s'])} s, {summary['tokens_per_s']:.0f} tok/s; per replica: "
          + ", ".join(f"{u}: {d.get('vllm:request_success_total', 0):.0f} req" for u, d in per.items()))
    return 0 if summary["ok"] else 1


def route_summary(ok: list[dict]) -> dict:
    """What the coordinator-routed requests saw: routing time, and how much of each prompt the chosen
    replica's LMCache server held by the directory (a hint: eventually consistent, validated at the owner)."""
    held = [r["held_chunks"] / r["chunks"] for r in ok if r.get("chunks") and r.get("held_chunks") is not None]
    return {"route_p50_s": c.percentile([r["route_s"] for r in ok if r.get("route_s") is not None], 50),
            "route_p90_s": c.percentile([r["route_s"] for r in ok if r.get("route_s") is not None], 90),
            "held_share_mean": (sum(held) / len(held)) if held else None,
            "route_errors": sum(1 for r in ok if r.get("route_error"))}


# --- outage: the store killed and restarted --------------------------------------------------------------

def ping(addr: str) -> bool:
    try:
        host, port = host_port(addr)
        with Resp(host, port, timeout=2) as r:
            return r.cmd("PING") == "PONG"
    except (OSError, RespError):
        return False


def cmd_outage(a) -> int:
    for url in (a.writer, a.reader):
        c.wait_ready(url, a.model, timeout=a.ready_timeout)
    stop = threading.Event()
    load: list[dict] = []

    def light_load():  # the reader keeps serving short fresh prompts throughout
        i = 0
        while not stop.is_set():
            t = time.perf_counter()
            res = c.completion_ttft(a.reader, a.model, c.token_prompt(f"load{i}-{time.time_ns()}", 512, "outage"), 60)
            load.append({"at": t, "ok": res["ok"], "s": res["ttft_s"], "error": res["error"]})
            i += 1
            stop.wait(max(0.0, 0.5 - (time.perf_counter() - t)))

    th = threading.Thread(target=light_load, daemon=True)
    th.start()
    time.sleep(2)
    pid = int(Path(a.redis_pidfile).read_text().strip())
    t_kill = time.perf_counter()
    os.kill(pid, signal.SIGKILL)
    c.log(f"SIGKILL to the store (pid {pid})")
    time.sleep(a.down_seconds)
    writer_down = c.completion_ttft(a.writer, a.model, c.token_prompt(time.time_ns(), 2048, "outage-down"), 120)
    c.log(f"writer while the store is down: {'ok' if writer_down['ok'] else writer_down['error']}")
    subprocess.run(a.restart_cmd, shell=True, check=False, timeout=30)
    t_up = None
    while time.perf_counter() - t_kill < a.down_seconds + 20:
        if ping(a.redis):
            t_up = time.perf_counter()
            break
        time.sleep(0.1)
    row = {"bench": "cluster_outage", "label": a.label, "down_s": a.down_seconds,
           "writer_ok_while_down": writer_down["ok"], "store_restarted": t_up is not None, "tokens": a.tokens}
    tries = []
    if t_up is not None:
        c.log(f"store answers again {t_up - t_kill:.1f} s after the kill")
        deadline = t_up + a.max_seconds
        i = 0
        restarted = False
        while time.perf_counter() < deadline:
            if (a.restart_lmcache and not restarted and row.get("store_writes_back_s") is None
                    and time.perf_counter() - t_up >= a.reconnect_wait):
                # LMCache 0.5.6's RESP client never reconnects (tests/contract/test_resp_reconnect.py): the
                # recovery is a new client, i.e. the LMCache servers restarted (docs/SCALE-OUT.md)
                restarted = True
                t_rs = time.perf_counter()
                for run_dir in a.restart_lmcache.split(","):
                    c.Supervisor(c.socket_from_run_dir(run_dir), timeout=60).restart(["lmcache"])
                row["lmcache_restarted_s"] = t_rs - t_up
                deadline = max(deadline, time.perf_counter() + a.max_seconds)
                c.log(f"    no write reached the store in {t_rs - t_up:.1f} s: LMCache servers restarted "
                      f"({a.restart_lmcache})")
            prompt = c.token_prompt(f"after{i}-{time.time_ns()}", a.tokens, "outage-after")
            before = store_info(a.redis)["keys"] if ping(a.redis) else 0
            w = c.completion_ttft(a.writer, a.model, prompt, 120)
            st = wait_store(a.redis, before, a.tokens // CHUNK_TOKENS, timeout=5, quiet_s=1.5)
            m0 = scrape(a.reader)
            r = c.completion_ttft(a.reader, a.model, prompt, 120)
            ext = deltas(m0, scrape(a.reader)).get("vllm:external_prefix_cache_hits_total")
            t = {"after_restart_s": time.perf_counter() - t_up, "writer_ok": w["ok"],
                 "store_new_keys": st["store_new_keys"], "reader_ttft_s": r["ttft_s"], "reader_ok": r["ok"],
                 "reader_external_hit_tokens": ext,
                 "lmcache_restarted": restarted}
            tries.append(t)
            c.log(f"    after restart +{t['after_restart_s']:.1f} s: store +{st['store_new_keys']} keys, reader "
                  f"{c.fmt(r['ttft_s'])} s, external hit tokens {ext}")
            if (st["store_new_keys"] or 0) > 0 and row.get("store_writes_back_s") is None:
                row["store_writes_back_s"] = t["after_restart_s"]
            if ext and ext > 0:
                row["reader_hits_back_s"] = t["after_restart_s"]
                break
            i += 1
            time.sleep(1.0)
    stop.set()
    th.join(timeout=70)
    during = [x for x in load if x["at"] >= t_kill]
    row.update(tries=tries, load_requests=len(during), load_failed=sum(not x["ok"] for x in during),
               load_max_s=max((x["s"] or 0 for x in during), default=None),
               load_errors=sorted({x["error"] for x in during if x["error"]})[:3])
    row["ok"] = bool(row["store_restarted"] and row.get("reader_hits_back_s") is not None and not row["load_failed"])
    c.append_rows(a.results, [row])
    c.log("outage: " + ", ".join(f"{k} {v}" for k, v in row.items() if k not in ("tries", "bench")))
    return 0 if row["ok"] else 1


# --- router: vllm-router without its launcher's optional dependencies ------------------------------------

def cmd_router(argv: list[str]) -> int:
    """The wheel's `vllm-router` launcher imports setproctitle and, for its debugging-only Python balancer,
    aiohttp/orjson/uvicorn/fastapi at the top; the Rust router needs none of them. Missing ones are replaced
    by empty modules so that the launcher runs where only the wheel was installed."""
    try:
        import setproctitle  # noqa: F401
    except ImportError:
        sys.modules["setproctitle"] = types.SimpleNamespace(setproctitle=lambda *_: None)
    try:
        import vllm_router.mini_lb  # noqa: F401
    except ImportError:
        sys.modules["vllm_router.mini_lb"] = types.SimpleNamespace(MiniLoadBalancer=None)
    from vllm_router.launch_router import main as router_main
    sys.argv = ["vllm-router", *argv]
    router_main()
    return 0


# --- report ----------------------------------------------------------------------------------------------

def pair_medians(rows: list[dict]) -> dict:
    """{label: {tokens: {phase: median TTFT, "object_bytes": .., "store_new_keys": ..}}}"""
    acc: dict = {}
    for r in rows:
        if r.get("bench") != "cluster_pair" or r.get("phase") not in READER_PHASES or not r.get("ok"):
            continue
        d = acc.setdefault(r["label"], {}).setdefault(int(r["tokens"]), {})
        d.setdefault(r["phase"], []).append(r["ttft_s"])
        for k in ("object_bytes", "store_new_keys", "store_wait_s"):
            if r.get(k) is not None:
                d.setdefault(k, []).append(r[k])
        if r.get("external_hit_tokens") is not None:
            d.setdefault(f"{r['phase']}_external", []).append(r["external_hit_tokens"])
    return {lab: {n: {k: c.median(v) for k, v in d.items()} for n, d in by_n.items()} for lab, by_n in acc.items()}


def crossover(points: list[tuple[int, float, float]]) -> dict:
    """From (tokens, hit_s, recompute_s): the shortest measured length from which a hit beats recompute at
    every longer length, and the length where hit/recompute crosses 1 (linear between the two measured
    lengths around it). `below_range`: the hit already wins at the shortest length; None: it never wins."""
    pts = sorted((n, h / r) for n, h, r in points if h and r)
    if not pts:
        return {"from_tokens": None, "interpolated_tokens": None, "below_range": False}
    wins_from = None
    for i in range(len(pts) - 1, -1, -1):
        if pts[i][1] < 1.0:
            wins_from = pts[i][0]
        else:
            break
    if wins_from is None:
        return {"from_tokens": None, "interpolated_tokens": None, "below_range": False}
    idx = [n for n, _ in pts].index(wins_from)
    if idx == 0:
        return {"from_tokens": wins_from, "interpolated_tokens": None, "below_range": True}
    (n0, q0), (n1, q1) = pts[idx - 1], pts[idx]
    est = n0 + (q0 - 1.0) * (n1 - n0) / (q0 - q1) if q0 != q1 else n1
    return {"from_tokens": wins_from, "interpolated_tokens": round(est), "below_range": False}


def effective_gb_per_s(nbytes, hit_s, reference_s):
    """Bytes moved / the time the hit took beyond a reference that moved nothing (GPU hit) or less."""
    if not nbytes or hit_s is None or reference_s is None or hit_s <= reference_s:
        return None
    return nbytes / (hit_s - reference_s) / 1e9


def loaded_bytes(tokens: int, kv_bpt: int, object_bytes=None, chunk: int = CHUNK_TOKENS) -> int:
    """What a hit loads: the prompt's full chunks (LMCache stores no partial chunk), each one object."""
    chunks = tokens // chunk
    return int(chunks * (object_bytes or chunk * kv_bpt))


def plain_best(rows: list[dict]) -> dict | None:
    ok = [r for r in rows if r.get("bench") == "cluster_plain_read" and r.get("ok") and r.get("gb_per_s")]
    return max(ok, key=lambda r: r["gb_per_s"]) if ok else None


def build_report(rows: list[dict], kv_bpt: int) -> tuple[dict, str]:
    med = pair_medians(rows)
    plain = plain_best(rows)
    md: list[str] = []
    summary: dict = {"pair_median_ttft_s": med, "kv_bytes_per_token": kv_bpt, "plain_read": plain, "labels": {}}
    targets = []
    for lab in sorted(med):
        by_n = med[lab]
        table = []
        points = []
        for n in sorted(by_n):
            d = by_n[n]
            rec, hit, gpu, reset = (d.get(k) for k in ("reader_recompute", "reader_hit", "reader_gpu_hit",
                                                         "reader_after_reset"))
            nbytes = loaded_bytes(n, kv_bpt, d.get("object_bytes"))
            eff = effective_gb_per_s(nbytes, hit, gpu)
            stage = effective_gb_per_s(nbytes, hit, reset) if (reset and gpu and reset < hit) else None
            ratio = (hit / rec) if (hit and rec) else None
            points.append((n, hit, rec))
            table.append([str(n), f"{nbytes / 1e9:.2f}", d.get("writer_cold"), rec, hit, gpu, reset, ratio,
                          c.fmt(eff, 2), c.fmt(stage, 2),
                          "-" if plain is None or eff is None else f"{100 * eff / plain['gb_per_s']:.0f}%",
                          c.fmt(d.get("reader_hit_external"), 0), c.fmt(d.get("store_new_keys"), 0)])
        cross = crossover(points)
        summary["labels"][lab] = {"crossover": cross}
        md += [f"### {lab}: a prompt computed by the writer, served by the reader (TTFT s, median)", ""]
        md.append(c.markdown_table(["tokens", "KV GB", "writer cold", "reader recompute", "reader hit",
                                    "reader GPU hit", "reader after reset", "hit / recompute",
                                    "eff. GB/s (hit - GPU hit)", "GB/s (hit - after reset)", "of plain client",
                                    "hit tokens from LMCache", "new store keys"], table))
        if cross["from_tokens"] is None:
            text = "the hit never beat recompute at the measured lengths"
        elif cross["below_range"]:
            text = f"the hit beats recompute at every measured length (from {cross['from_tokens']} tokens)"
        else:
            text = (f"the hit beats recompute from {cross['from_tokens']} tokens on "
                    f"(crossing ~{cross['interpolated_tokens']} tokens, interpolated)")
        md += ["", f"Crossover: {text}.", ""]
        at = by_n.get(TARGET_TOKENS, {})
        if lab.startswith("shared-server"):
            targets.append(c.target_row(f"{lab}: reader hit at {TARGET_TOKENS} tok x recompute",
                                        (at["reader_hit"] / at["reader_recompute"]) if at.get("reader_hit") and
                                        at.get("reader_recompute") else None, SHARED_SERVER_VS_RECOMPUTE, "x"))
        else:
            est = cross["interpolated_tokens"] or cross["from_tokens"]
            targets.append(c.target_row(f"{lab}: store hit beats recompute from (tokens)", est, CROSSOVER_MAX_TOKENS))
            n_top = max(by_n)
            d = by_n[n_top]
            eff = effective_gb_per_s(loaded_bytes(n_top, kv_bpt, d.get("object_bytes")), d.get("reader_hit"),
                                     d.get("reader_gpu_hit"))
            targets.append(c.target_row(f"{lab}: effective store read at {n_top} tok, % of the plain client",
                                        (100 * eff / plain["gb_per_s"]) if (eff and plain) else None,
                                        100 * STORE_VS_PLAIN, "%", lower_is_better=False))
    if md:
        md += [("eff. GB/s: the full chunks' KV bytes / (reader hit - reader GPU hit): the whole path (lookup, store "
                "-> the reader's CPU tier -> GPU). 'hit - after reset': the same bytes over the time beyond a hit in "
                "the reader's own CPU tier, i.e. the store stage alone (when LMCache kept the loaded chunks in its CPU "
                "tier)."), ""]
    plains = [r for r in rows if r.get("bench") == "cluster_plain_read"]
    if plains:
        md += ["### What the same store delivers to a plain client (GET of the same object size)", ""]
        md.append(c.markdown_table(["client", "objects", "object MiB", "connections", "GB/s", "rounds"],
                                   [[r.get("client"), str(r.get("objects")), f"{r['object_bytes'] / 2**20:.1f}",
                                     str(r.get("parallel")), c.fmt(r.get("gb_per_s"), 2) if r.get("ok") else
                                     f"failed: {str(r.get('error'))[:60]}", str(r.get("rounds_gb_per_s", ""))]
                                    for r in plains]))
        md.append("")
    routes = {}
    for r in rows:
        if r.get("bench") == "cluster_route":
            routes[r["label"]] = r
    if routes:
        md += ["### Through the router: a multi-user workload", ""]
        trows = []
        for lab, r in routes.items():
            share = []
            for d in (r.get("per_replica") or {}).values():
                share.append(f"{d.get('vllm:request_success_total', 0):.0f}")
            trows.append([lab, str(r.get("replicas")), r.get("policy") or "-", str(r.get("requests")),
                          str(r.get("failed")),
                          r.get("ttft_p50_s"), r.get("ttft_p90_s"), c.fmt(r.get("tokens_per_s"), 0),
                          c.fmt(r.get("requests_per_s"), 2), " / ".join(share) or "-"])
        md.append(c.markdown_table(["run", "replicas", "policy", "requests", "failed", "TTFT p50 s", "TTFT p90 s",
                                    "tok/s", "req/s", "requests per replica"], trows))
        p = next(iter(routes.values())).get("params") or {}
        for lab, r in routes.items():
            if r.get("route_p50_s") is not None:
                md += ["", (f"{lab}: routed in this client by LMCache's coordinator (the replica whose LMCache server "
                            f"holds the longest prefix): routing p50 {c.fmt(r.get('route_p50_s'))} s, p90 "
                            f"{c.fmt(r.get('route_p90_s'))} s (/tokenize + /directory/lookup, inside the TTFT); the "
                            f"chosen server held {c.fmt(100 * (r.get('held_share_mean') or 0), 0)} % of a prompt's "
                            f"chunks on average; {r.get('route_errors')} routing errors (sent to the least loaded).")]
        md += ["", (f"{p.get('users')} users x up to {p.get('rounds')} rounds, shared system prompt of "
                    f"{p.get('system_words')} number words, {p.get('user_words')} words a round, "
                    f"{p.get('answer_tokens')} answer tokens, {p.get('concurrency')} requests in flight, "
                    f"{p.get('max_seconds')} s (text prompts: the router's cache_aware policy matches text)."), ""]
    outages = [r for r in rows if r.get("bench") == "cluster_outage"]
    if outages:
        md += ["### The store SIGKILLed and restarted (light load on the reader)", ""]
        md.append(c.markdown_table(
            ["down s", "reader requests during", "failed", "max TTFT s", "writer ok while down",
             "LMCache servers restarted after s", "writes reach the store again after s", "reader hits again after s"],
            [[str(r.get("down_s")), str(r.get("load_requests")), str(r.get("load_failed")), r.get("load_max_s"),
              str(r.get("writer_ok_while_down")), r.get("lmcache_restarted_s"), r.get("store_writes_back_s"),
              r.get("reader_hits_back_s")]
             for r in outages]))
        md += ["", ("Times from the store's restart. LMCache 0.5.6's RESP client does not reconnect: without a "
                    "restart of the LMCache servers no write reaches a restarted store (docs/SCALE-OUT.md).")]
        md.append("")
    if targets:
        md += ["### Targets (issue 15)", "", c.targets_markdown(targets)]
    summary["targets"] = targets
    if not md:
        raise c.BenchError("no cluster rows in the results")
    return summary, "\n".join(md)


def chart(med: dict, routes: dict):
    def draw(plt, path):
        panels = len(med) + (1 if routes else 0)
        fig, axes = plt.subplots(1, max(1, panels), figsize=(6 * max(1, panels), 4.5), squeeze=False)
        for ax, lab in zip(axes[0], sorted(med)):
            ns = sorted(med[lab])
            for ph in ("reader_recompute", "reader_hit", "reader_gpu_hit", "reader_after_reset"):
                ys = [med[lab][n].get(ph) for n in ns]
                if any(y is not None for y in ys):
                    ax.plot(ns, [y if y is not None else float("nan") for y in ys], marker="o", label=ph)
            ax.set_xlabel("prompt tokens")
            ax.set_ylabel("TTFT, s (median)")
            ax.set_title(lab)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        if routes:
            ax = axes[0][-1]
            labs = list(routes)
            x = range(len(labs))
            ax.bar([i - 0.2 for i in x], [routes[lab].get("ttft_p50_s") or 0 for lab in labs], 0.4, label="TTFT p50")
            ax.bar([i + 0.2 for i in x], [routes[lab].get("ttft_p90_s") or 0 for lab in labs], 0.4, label="TTFT p90")
            ax.set_xticks(list(x))
            ax.set_xticklabels(labs, fontsize=7, rotation=15)
            ax.set_ylabel("s")
            ax2 = ax.twinx()
            ax2.plot(list(x), [routes[lab].get("tokens_per_s") or 0 for lab in labs], "k^-", label="tok/s")
            ax2.set_ylabel("tokens/s")
            ax.set_title("through the router")
            ax.legend(fontsize=8, loc="upper left")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    return draw


def cmd_report(a) -> int:
    rows = c.load_rows(a.results)
    if a.model_config:
        kv_bpt = c.kv_bytes_per_token(c.load_model_config(a.model_config))
    else:
        recorded = [r["kv_bytes_per_token"] for r in rows if r.get("kv_bytes_per_token")]
        kv_bpt = recorded[-1] if recorded else c.kv_bytes_per_token(c.LLAMA3_8B_SHAPE)
    summary, md = build_report(rows, kv_bpt)
    routes = {r["label"]: r for r in rows if r.get("bench") == "cluster_route"}
    return c.publish_report(a.results, "cluster", summary, md, chart(summary["pair_median_ttft_s"], routes))


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p):
        p.add_argument("--label", required=True)
        p.add_argument("--model", default="llama8b")
        p.add_argument("--results", required=True)
        p.add_argument("--request-timeout", type=float, default=300)
        p.add_argument("--ready-timeout", type=float, default=120)

    p = sub.add_parser("pair")
    common(p)
    p.add_argument("--writer", required=True, help="base URL of the replica that computes the prompt")
    p.add_argument("--reader", required=True, help="base URL of the replica that should find it")
    p.add_argument("--redis", help="host:port of the shared store (shape b): wait for its writes")
    p.add_argument("--tokens", default="4000,8000,16000,24000,32000")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--salt", default="cluster")
    p.add_argument("--settle", type=float, default=1.0, help="without --redis: seconds for the writer's tier")
    p.add_argument("--store-timeout", type=float, default=30.0)
    p.add_argument("--chunk-tokens", type=int, default=CHUNK_TOKENS)
    p.add_argument("--no-warmup", action="store_true")
    p = sub.add_parser("plain-read")
    p.add_argument("--label", default="plain")
    p.add_argument("--results", required=True)
    p.add_argument("--redis", required=True)
    p.add_argument("--object-bytes", type=int, help="default: the size of an object in the store")
    p.add_argument("--objects", type=int, default=64, help="64 x 32 MiB = 2 GiB, a 16k prompt of the 8B shape")
    p.add_argument("--parallel", type=int, default=8, help="connections (the resp adapter's num_workers)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--redis-benchmark", help="command of redis-benchmark, for a second plain client")
    p = sub.add_parser("route")
    common(p)
    p.add_argument("--base-url", help="the router (not with --coordinator)")
    p.add_argument("--coordinator", help="route in this client by LMCache's coordinator (its base URL) instead")
    p.add_argument("--lmcache-http-ports", default="",
                   help="with --coordinator: the HTTP port each replica's LMCache server registered with, in "
                        "--replicas order")
    p.add_argument("--lookup-model", help="with --coordinator: the model name in LMCache's keys (default: read "
                                          "from the directory)")
    p.add_argument("--replicas", default="", help="comma-separated replica URLs (their /metrics)")
    p.add_argument("--policy", default="")
    p.add_argument("--users", type=int, default=24)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--system-words", type=int, default=1500)
    p.add_argument("--user-words", type=int, default=250)
    p.add_argument("--answer-words", type=int, default=30)
    p.add_argument("--answer-tokens", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--stagger", type=float, default=0.1)
    p.add_argument("--max-seconds", type=float, default=40)
    p.add_argument("--salt", default="route")
    p = sub.add_parser("outage")
    common(p)
    p.add_argument("--writer", required=True)
    p.add_argument("--reader", required=True)
    p.add_argument("--redis", required=True)
    p.add_argument("--redis-pidfile", required=True)
    p.add_argument("--restart-cmd", required=True, help="shell command that starts the store again")
    p.add_argument("--down-seconds", type=float, default=5)
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--max-seconds", type=float, default=40, help="after the restart, give up after this")
    p.add_argument("--restart-lmcache", help="run directories (comma-separated) of the appliances whose LMCache "
                                             "servers are restarted when no write reaches the store again")
    p.add_argument("--reconnect-wait", type=float, default=10,
                   help="with --restart-lmcache: seconds after the store's restart before restarting them")
    p = sub.add_parser("report")
    p.add_argument("--results", required=True)
    p.add_argument("--model-config")
    sub.add_parser("router", help="run vllm-router: cluster.py router -- ARGS")
    return ap


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "router":
        rest = argv[1:]
        return cmd_router(rest[1:] if rest[:1] == ["--"] else rest)
    a = parser().parse_args(argv)
    try:
        return {"pair": cmd_pair, "plain-read": cmd_plain_read, "route": cmd_route, "outage": cmd_outage,
                "report": cmd_report}[a.cmd](a)
    except (c.BenchError, RespError, OSError) as e:
        c.log(f"ERROR: {e.__class__.__name__}: {e}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
