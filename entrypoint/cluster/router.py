"""`python -m entrypoint router`: an OpenAI-compatible reverse proxy in front of vLLM replicas that places each
request on the replica whose LMCache server holds the longest prefix of it, by LMCache's coordinator.

For the many-hosts shape (each replica its own LMCache server): there the coordinator's directory tells the
servers apart, and on the H200 it placed better than vllm-router's cache_aware and round robin
(docs/SCALE-OUT.md "The coordinator router"). Per completion or chat request: the request's tokens (a healthy
replica's /tokenize), POST /directory/lookup on the coordinator, `routing.choose_replica`. Everything else
(/v1/models, /tokenize, ...) goes to the least loaded healthy replica. Responses are relayed as they arrive
(server-sent events chunk by chunk), bodies and status codes unchanged.

Fail open: a coordinator or tokenizer that errs or is slower than APPLIANCE_ROUTER_LOOKUP_TIMEOUT only costs
the placement (least loaded instead, counted in /metrics). A replica that refuses the connection is marked down
and the request goes once to another one (only before any byte went back to the client). The HTTP side is
proxy.py on aiohttp (common/webserver.py: strict framing, body and header limits, a connection limit and the
client timeout); the router runs from the appliance image as its own container
(deploy/kubernetes/coordinator-router/), which ships aiohttp with vLLM.

Configured by the environment only (APPLIANCE_ROUTER_*, entrypoint/config/settings.py); request headers
(Authorization among them) are forwarded and never logged."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric

from ..common import applog
from ..common.webserver import Limits, Log, Server
from ..config.settings import (
    BY_NAME,
    HTTPURL,
    RouterReplica,
    ValueProblem,
    parse_http_url,
    parse_router_replicas,
    parse_value,
)
from ..config.sources import collect
from ..lmcache_ext.salt import request_salt
from ..vllm_ext.identity import PATH as IDENTITY_PATH
from ..vllm_ext.tenant_salt import bearer_token, tenant_salt
from . import proxy
from .routing import PLACED_PATHS, NoReplica, choose_replica, held_prefix, match_instances, tokenize_body

PROGRAM = "router"
EXIT_INVALID = 2
MAX_BODY = 64 * 1024 * 1024  # a request body larger than this is no completion request (413)
HEALTH_TIMEOUT = 5.0
REFRESH_MIN_S = 1.0  # a lookup naming an unknown server re-reads /instances, at most this often
IDENTITY_TTL_S = 60.0  # a replica's KV identity is asked again after this long (it changes only at a restart)
DRAIN_S = 25.0  # on SIGTERM, requests in flight may finish for this long (Kubernetes waits 30 s by default)
ROUTE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SETTING_NAMES = ("APPLIANCE_ROUTER_COORDINATOR_URL", "APPLIANCE_ROUTER_REPLICAS", "APPLIANCE_ROUTER_REPLICA_PORT",
                 "APPLIANCE_ROUTER_PORT", "APPLIANCE_ROUTER_LOOKUP_TIMEOUT", "APPLIANCE_ROUTER_REQUEST_TIMEOUT",
                 "APPLIANCE_ROUTER_HEALTH_INTERVAL", "APPLIANCE_ROUTER_MAX_CONNECTIONS",
                 "APPLIANCE_ROUTER_CLIENT_TIMEOUT", "VLLM_TENSOR_PARALLEL_SIZE")


# -- configuration -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RouterConfig:
    coordinator: HTTPURL
    replicas: tuple[RouterReplica, ...]  # empty: the servers registered with the coordinator
    replica_port: int = 8000
    port: int = 8000
    host: str = "0.0.0.0"
    lookup_timeout: float = 0.5
    request_timeout: float = 600.0
    health_interval: float = 10.0
    world_size: int = 1  # LMCache's keys carry the tensor-parallel rank: the lookup needs the replicas' TP size
    max_connections: int = 1024
    client_timeout: float = 30.0  # idle connection / request head, and request body, each
    max_body: int = MAX_BODY


def load_config(environ: Mapping[str, str], env_file: str | None = None) -> tuple[RouterConfig | None, list[str]]:
    """The router's settings from the environment (and an env file), validated by the registry; (None, problems)
    when any is wrong. Problems name the variable, never its value (a URL could hold a password)."""
    raw = collect(dict(environ), env_file)
    errors = list(raw.errors)
    values: dict[str, Any] = {}  # each of its setting's type (parse_value): a URL string, ints, floats
    for name in SETTING_NAMES:
        setting = BY_NAME[name]
        text = raw.values.get(name, "")
        if text.strip() == "":
            values[name] = setting.default
            continue
        try:
            values[name] = parse_value(setting, text)
        except ValueProblem as e:
            errors.append(f"{name}: {e}")
    if values.get("APPLIANCE_ROUTER_COORDINATOR_URL") is None and not any(
            e.startswith("APPLIANCE_ROUTER_COORDINATOR_URL") for e in errors):
        errors.append("APPLIANCE_ROUTER_COORDINATOR_URL: not set; the router needs LMCache's coordinator, e.g. "
                      "APPLIANCE_ROUTER_COORDINATOR_URL=http://coordinator:9300")
    if errors:
        return None, errors
    return RouterConfig(
        coordinator=parse_http_url(values["APPLIANCE_ROUTER_COORDINATOR_URL"]),
        replicas=parse_router_replicas(values["APPLIANCE_ROUTER_REPLICAS"] or ""),
        replica_port=int(values["APPLIANCE_ROUTER_REPLICA_PORT"]), port=int(values["APPLIANCE_ROUTER_PORT"]),
        lookup_timeout=float(values["APPLIANCE_ROUTER_LOOKUP_TIMEOUT"]),
        request_timeout=float(values["APPLIANCE_ROUTER_REQUEST_TIMEOUT"]),
        health_interval=float(values["APPLIANCE_ROUTER_HEALTH_INTERVAL"]),
        max_connections=int(values["APPLIANCE_ROUTER_MAX_CONNECTIONS"]),
        client_timeout=float(values["APPLIANCE_ROUTER_CLIENT_TIMEOUT"]),
        world_size=int(values["VLLM_TENSOR_PARALLEL_SIZE"])), []


# -- small HTTP client ---------------------------------------------------------------------------------------
class Unreachable(OSError):
    """No connection, or no answer in time: the request may go elsewhere."""


def _connection(scheme: str, host: str, port: int, timeout: float) -> http.client.HTTPConnection:
    cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
    return cls(host, port, timeout=timeout)


def call_json(base: str, path: str, payload: Any = None, headers: dict | None = None, timeout: float = 5.0
              ) -> tuple[int, Any]:
    """(status, decoded JSON or None) of GET (payload None) or POST base+path. Unreachable on network errors."""
    u = urlsplit(base)
    conn = _connection(u.scheme, u.hostname or "", u.port or (443 if u.scheme == "https" else 80), timeout)
    try:
        body = None if payload is None else json.dumps(payload).encode()
        hdrs = {"Accept": "application/json", **(headers or {})}
        if body is not None:
            hdrs["Content-Type"] = "application/json"
        conn.request("GET" if body is None else "POST", path, body, hdrs)
        resp = conn.getresponse()
        data = resp.read()
    except (OSError, http.client.HTTPException) as e:
        raise Unreachable(f"{e.__class__.__name__}: {e}") from None
    finally:
        conn.close()
    try:
        return resp.status, json.loads(data) if data else None
    except ValueError:
        return resp.status, None


# -- state ---------------------------------------------------------------------------------------------------
@dataclass(eq=False)
class Replica:
    url: str
    lmcache_http_port: int | None = None
    healthy: bool = False
    inflight: int = 0
    requests: int = 0
    errors: int = 0
    ips: frozenset = field(default_factory=frozenset)

    @property
    def parts(self) -> tuple[str, str, int]:
        u = urlsplit(self.url)
        return u.scheme, u.hostname or "", u.port or (443 if u.scheme == "https" else 80)


class Metrics:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fallbacks: dict[str, int] = {}
        self.routing_errors = 0
        self.retries = 0
        self.placed_on_prefix = 0
        self.route_count = 0
        self.route_sum = 0.0
        self.route_buckets = [0] * len(ROUTE_BUCKETS)
        self.no_replica = 0

    def routed(self, seconds: float, held: int, fallback: str | None) -> None:
        with self.lock:
            self.route_count += 1
            self.route_sum += seconds
            for i, b in enumerate(ROUTE_BUCKETS):
                if seconds <= b:
                    self.route_buckets[i] += 1
            if held > 0:
                self.placed_on_prefix += 1
            if fallback:
                self.fallbacks[fallback] = self.fallbacks.get(fallback, 0) + 1
                if fallback in ("coordinator", "tokenize"):
                    self.routing_errors += 1


class Router:
    """Replicas, their health, the instance -> replica map, and the placement of one request."""

    def __init__(self, config: RouterConfig, log: Log | None = None) -> None:
        self.config = config
        self.coordinator = config.coordinator.url
        self.discover = not config.replicas
        self.lock = threading.Lock()
        self.replicas: list[Replica] = [Replica(r.url, r.lmcache_http_port) for r in config.replicas]
        self.replica_of: dict[str, Replica] = {}
        self.lookup_models: dict[str, str] = {}
        self.identities: dict[str, tuple[float, dict]] = {}  # replica URL -> (read at, its KV identity answer)
        # Round-robin turns: the placement's, for replicas tied on prefix and load, and the tokenizer's, which
        # replica tokenizes. Apart, so that a request's tokenizing does not move the placement's turn (sharing
        # one counter, every request moved it twice: with two replicas, ties all went to the same one).
        self.turn = 0
        self.tokenizer_turn = 0
        self.metrics = Metrics()
        self.stop = threading.Event()
        self.refresh_now = threading.Event()
        self.coordinator_ok: bool | None = None  # logged when it changes, not at every check
        self.refreshed_at = 0.0
        self.log = log or (lambda msg, level="info", event="message", **f: applog.emit(PROGRAM, msg, level, event,
                                                                                        **f))

    # The map from LMCache servers to replicas, and the health of each replica.
    def refresh(self) -> None:
        """Read the coordinator's /instances: the map instance -> replica (and, discovering, the replicas)."""
        self.refreshed_at = time.monotonic()
        try:
            status, data = call_json(self.coordinator, "/instances", timeout=max(1.0, self.config.lookup_timeout))
            if status != 200 or not isinstance(data, dict) or not isinstance(data.get("instances"), list):
                raise Unreachable(f"HTTP {status}")
        except Unreachable as e:
            if self.coordinator_ok is not False:
                self.log(f"coordinator {self.coordinator}: /instances failed ({e}); keeping the last map, placing "
                         "by load while lookups fail", "warning", "coordinator_unreachable")
            self.coordinator_ok = False
            return
        if self.coordinator_ok is False:
            self.log(f"coordinator {self.coordinator}: answering again", event="coordinator_back")
        self.coordinator_ok = True
        instances = [i for i in data["instances"] if isinstance(i, dict)]
        if self.discover:
            self._discover(instances)
        with self.lock:
            replicas = list(self.replicas)
        for r in replicas:
            if not self.discover:
                r.ips = _resolve(r.parts[1])
        ports = [(r.ips, r.lmcache_http_port) for r in replicas]
        mapped = {inst: replicas[i] for inst, i in match_instances(instances, ports).items()}
        with self.lock:
            changed = set(mapped) != set(self.replica_of)
            self.replica_of = mapped
        if changed:
            self.log(f"LMCache servers -> replicas: {', '.join(f'{k}: {v.url}' for k, v in mapped.items()) or 'none'}",
                     event="instances")

    def _discover(self, instances: list[dict]) -> None:
        urls: dict[str, tuple[str, int]] = {}
        for inst in instances:
            ip, port = inst.get("ip"), inst.get("http_port")
            if isinstance(ip, str) and ip and isinstance(port, int):
                try:
                    host = f"[{ip}]" if ":" in ip else ip
                    url = parse_http_url(f"http://{host}:{self.config.replica_port}").url
                except ValueProblem:
                    continue
                urls[url] = (ip, port)
        with self.lock:
            known = {r.url: r for r in self.replicas}
            self.replicas = [known.get(u) or Replica(u, port, ips=frozenset({ip})) for u, (ip, port) in urls.items()]
            for r in self.replicas:
                r.lmcache_http_port = urls[r.url][1]
                r.ips = frozenset({urls[r.url][0]})
            # A healthy replica missing from the list stays (placed by load) until its health check fails: a
            # restarted coordinator lists nobody until the servers' next heartbeat, which must not empty the router.
            self.replicas += [r for u, r in known.items() if u not in urls and r.healthy]
            gone = set(known) - {r.url for r in self.replicas}
            added = set(urls) - set(known)
        if gone or added:
            self.log(f"replicas from the coordinator: {' '.join(sorted(urls)) or 'none'}", event="replicas")

    def check_health(self) -> None:
        """GET /health of every replica, side by side (one that hangs costs HEALTH_TIMEOUT once, not per replica)."""
        with self.lock:
            replicas = list(self.replicas)

        def check(r: Replica) -> None:
            try:
                status, _ = call_json(r.url, "/health", timeout=HEALTH_TIMEOUT)
                ok = status == 200
            except Unreachable:
                ok = False
            if ok != r.healthy:
                self.log(f"replica {r.url}: {'healthy' if ok else 'unhealthy'}", "info" if ok else "warning",
                         "replica_health", replica=r.url)
            r.healthy = ok

        threads = [threading.Thread(target=check, args=(r,), daemon=True) for r in replicas]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def run_checks(self) -> None:
        """The background loop: the map and the health checks every APPLIANCE_ROUTER_HEALTH_INTERVAL seconds, or
        sooner when a lookup named a server the map does not know (it re-registered under a new id)."""
        while not self.stop.is_set():
            self.refresh()
            self.check_health()
            self.refresh_now.wait(self.config.health_interval)
            self.refresh_now.clear()

    def in_flight(self) -> int:
        with self.lock:
            return sum(r.inflight for r in self.replicas)

    def healthy_count(self) -> int:
        with self.lock:
            return sum(r.healthy for r in self.replicas)

    # Placement.
    def locate(self, path: str, body: bytes, headers: dict) -> tuple[dict[str, int], dict]:
        """(held prefix per instance, what the placement saw); never raises: a failure is a fallback."""
        info: dict = {"fallback": None, "chunks": None}
        if path not in PLACED_PATHS:
            return {}, info
        try:
            request = json.loads(body)
        except ValueError:
            request = None
        tok = tokenize_body(path, request) if isinstance(request, dict) else None
        if tok is None:
            info["fallback"] = "no_prompt"
            return {}, info
        with self.lock:
            healthy = [r for r in self.replicas if r.healthy]
            self.tokenizer_turn += 1
            turn = self.tokenizer_turn
        if not healthy:
            return {}, info
        auth = {k: v for k, v in headers.items() if k.lower() == "authorization"}
        timeout = self.config.lookup_timeout
        tokens = None
        for n in range(min(2, len(healthy))):  # a replica that just went down costs one more try, not the placement
            tokenizer = healthy[(turn + n) % len(healthy)]
            try:
                status, data = call_json(tokenizer.url, "/tokenize", tok, auth, timeout)
            except Unreachable as e:
                info["error"] = str(e)[:200]
                continue
            tokens = data.get("tokens") if status == 200 and isinstance(data, dict) else None
            if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
                info["error"] = f"/tokenize: HTTP {status}"  # e.g. 400 for a prompt vLLM refuses: no retry
                tokens = None
            break
        if tokens is None:
            info["fallback"] = "tokenize"
            return {}, info
        model = self.lookup_model(tokenizer, request.get("model"), auth)
        salt = self.lookup_salt(tokenizer, request, auth)
        try:
            status, found = call_json(self.coordinator, "/directory/lookup", {
                "token_ids": tokens, "model_name": model, "world_size": self.config.world_size,
                "cache_salt": salt}, timeout=timeout)
            if status != 200 or not isinstance(found, dict):
                raise Unreachable(f"HTTP {status}")
            prefix = held_prefix([r for r in found.get("results") or [] if isinstance(r, dict)])
        except (Unreachable, AttributeError, TypeError) as e:
            info.update(fallback="coordinator", error=str(e)[:200])
            return {}, info
        info["chunks"] = found.get("chunks")
        with self.lock:
            unknown = any(i != "*" and i not in self.replica_of for i in prefix)
        if unknown and time.monotonic() - self.refreshed_at > REFRESH_MIN_S:
            self.refresh_now.set()
        return prefix, info

    def lookup_salt(self, replica: Replica, request: dict, auth: dict) -> str:
        """The cache salt the replica's connector gives this request's chunks (lmcache_ext/salt.py): its KV
        identity, the tenant's salt when it keeps tenants apart, the request's own. A replica that announces no
        identity (not the appliance's vLLM) keys by LMCache's plain salt. A LoRA adapter's requests are keyed by
        its files too, which the router cannot see: they find no holder and go to the least loaded replica."""
        info = self.identity_of(replica)
        own = request.get("cache_salt") if isinstance(request.get("cache_salt"), str) else None
        if not info.get("kv_identity"):
            return own or ""
        if info.get("tenant_isolation"):
            token = bearer_token([(k.lower().encode(), v.encode("latin-1", "replace")) for k, v in auth.items()])
            own = tenant_salt(token, own) if token else own
        return request_salt(info["kv_identity"], None, own)

    def identity_of(self, replica: Replica) -> dict:
        """GET /appliance/kv-identity of a replica (vllm_ext/identity.py), kept IDENTITY_TTL_S: a replica restarted
        with other weights announces its new identity within that."""
        now = time.monotonic()
        with self.lock:
            cached = self.identities.get(replica.url)
        if cached and now - cached[0] < IDENTITY_TTL_S:
            return cached[1]
        try:
            status, data = call_json(replica.url, IDENTITY_PATH, timeout=self.config.lookup_timeout)
            info = data if status == 200 and isinstance(data, dict) and isinstance(data.get("kv_identity"), str) else {}
        except Unreachable:
            info = {}
        with self.lock:
            self.identities[replica.url] = (now, info)
        return info

    def lookup_model(self, replica: Replica, served: object, auth: dict) -> str:
        """The model name in LMCache's keys: vLLM's model (`root` in its /v1/models), not the served name."""
        name = served if isinstance(served, str) else ""
        with self.lock:
            if name in self.lookup_models:
                return self.lookup_models[name]
        try:
            status, data = call_json(replica.url, "/v1/models", headers=auth, timeout=self.config.lookup_timeout)
            models = data.get("data") if status == 200 and isinstance(data, dict) else None
        except Unreachable:
            models = None
        for m in models or []:
            if isinstance(m, dict) and isinstance(m.get("root"), str) and (m.get("id") == name or not name):
                with self.lock:
                    self.lookup_models[name] = m["root"]
                return m["root"]
        return name

    def pick(self, prefix: dict[str, int], exclude: tuple = ()) -> tuple[Replica, int]:
        """The replica for a request (counted in flight until `done`) and the chunks its server holds."""
        with self.lock:
            replicas = list(self.replicas)
            healthy = [r.healthy and r not in exclude for r in replicas]
            index = {id(r): i for i, r in enumerate(replicas)}
            replica_of = {inst: index[id(r)] for inst, r in self.replica_of.items() if id(r) in index}
            self.turn += 1
            try:
                i, held = choose_replica(prefix, replica_of, [r.inflight for r in replicas], self.turn, healthy)
            except ValueError:
                raise NoReplica("no healthy replica") from None
            chosen = replicas[i]
            chosen.inflight += 1
            chosen.requests += 1
        return chosen, held

    def done(self, replica: Replica) -> None:
        with self.lock:
            replica.inflight -= 1

    def failed(self, replica: Replica, connected: bool, message: str) -> None:
        """A replica that failed before its answer began; one that did not even take the connection gets no traffic
        until a health check says otherwise."""
        with self.lock:
            replica.errors += 1
            if not connected:
                replica.healthy = False
        self.log(f"replica {replica.url}: {message}", "warning", "upstream_error", replica=replica.url)

    def metrics_text(self, refused: dict[int, int] | None = None) -> bytes:
        """Prometheus text (prometheus_client's exposition): per replica (health, requests, failed connections, in
        flight), placements, and the requests refused before placement by status code (`refused`)."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(self, refused or {}))
        return generate_latest(registry)


# The per-replica families: name, type, help, the Replica attribute they show.
PER_REPLICA = (
    ("appliance_router_replica_healthy", GaugeMetricFamily, "1 while the replica answers /health with 200.", "healthy"),
    ("appliance_router_requests", CounterMetricFamily, "Requests sent to each replica.", "requests"),
    ("appliance_router_upstream_errors", CounterMetricFamily, "Connections to a replica that failed.", "errors"),
    ("appliance_router_in_flight", GaugeMetricFamily, "Requests a replica is answering now.", "inflight"),
)


class _Families:
    """The router's metric families, read at each scrape (a prometheus_client collector)."""

    def __init__(self, router: Router, refused: dict[int, int]):
        self.router, self.refused = router, refused

    def collect(self) -> Iterator[Metric]:
        r, m = self.router, self.router.metrics
        with r.lock:
            rows = [(x.url, {attr: float(getattr(x, attr)) for *_, attr in PER_REPLICA}) for x in r.replicas]
        for name, kind, text, attr in PER_REPLICA:
            family = kind(name, text, labels=["replica"])
            for url, values in rows:
                family.add_metric([url], values[attr])
            yield family
        with m.lock:
            reasons = {"coordinator": 0, "tokenize": 0, "no_prompt": 0} | m.fallbacks
            fallbacks = CounterMetricFamily("appliance_router_fallbacks", "Requests placed on the least loaded "
                                            "replica, by why.", labels=["reason"])
            for reason, n in sorted(reasons.items()):
                fallbacks.add_metric([reason], float(n))
            yield fallbacks
            yield CounterMetricFamily("appliance_router_routing_errors", "Placements that failed (tokenize or "
                                      "coordinator) and fell back to the least loaded replica.",
                                      value=float(m.routing_errors))
            yield CounterMetricFamily("appliance_router_retries", "Requests sent again to another replica after a "
                                      "failed connection.", value=float(m.retries))
            yield CounterMetricFamily("appliance_router_no_replica", "Requests answered 503: no healthy replica.",
                                      value=float(m.no_replica))
            yield CounterMetricFamily("appliance_router_prefix_placements", "Requests placed where the coordinator "
                                      "said a prefix of them is held.", value=float(m.placed_on_prefix))
            yield HistogramMetricFamily(
                "appliance_router_routing_seconds", "Time to place a request (tokenize + lookup).",
                buckets=[(str(b), float(n)) for b, n in zip(ROUTE_BUCKETS, m.route_buckets)]
                + [("+Inf", float(m.route_count))], sum_value=m.route_sum)
        refused = CounterMetricFamily("appliance_router_refused", "Requests answered before placement: malformed "
                                      "(400), too slow (408), too large (413), over the connection limit (503), "
                                      "..., by status code.", labels=["code"])
        for code, n in sorted(self.refused.items()):
            refused.add_metric([str(code)], float(n))
        yield refused


def _resolve(host: str) -> frozenset:
    try:
        return frozenset(a[4][0] for a in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP))
    except (OSError, UnicodeError):
        return frozenset()


# -- the server ----------------------------------------------------------------------------------------------
def limits(config: RouterConfig) -> Limits:
    return Limits(max_connections=config.max_connections, idle_timeout=config.client_timeout,
                  read_timeout=config.client_timeout, max_body=config.max_body)


def make_server(config: RouterConfig, router: Router | None = None) -> tuple[Server, Router]:
    """The router's server, listening on config.port (OSError: taken); its `serve_forever` serves."""
    router = router or Router(config)
    return proxy.make(router, limits(config), config.host, config.port, router.log), router


def start(config: RouterConfig) -> tuple[Server, Router]:
    """The router serving in background threads (`main`): first map and health check done."""
    server, router = make_server(config)
    router.refresh()
    router.check_health()
    threading.Thread(target=router.run_checks, name="router-checks", daemon=True).start()
    server.start_thread("router-http")
    return server, router


def main(argv: list[str]) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="python -m entrypoint router", allow_abbrev=False,
                                description="The coordinator router (APPLIANCE_ROUTER_*; docs/SCALE-OUT.md).")
    p.add_argument("--env-file", help="a .env file (the real environment wins over it)")
    p.add_argument("--check", action="store_true", help="validate the settings and exit")
    opts = p.parse_args(argv)
    config, errors = load_config(os.environ, opts.env_file)
    if errors or config is None:
        for e in errors:
            print(f"error: {e}", file=sys.stderr)
        print(f"{len(errors)} problem(s); the router was not started. See docs/ENVIRONMENT.md (Router).",
              file=sys.stderr)
        return EXIT_INVALID
    mode = (f"{len(config.replicas)} replicas" if config.replicas else
            f"replicas: the servers registered with the coordinator, port {config.replica_port}")
    if opts.check:
        print(f"ok: router on port {config.port}, coordinator {config.coordinator.url}, {mode}")
        return 0
    try:
        server, router = start(config)
    except OSError as e:
        print(f"error: APPLIANCE_ROUTER_PORT={config.port}: cannot listen ({e.strerror})", file=sys.stderr)
        return EXIT_INVALID
    router.log(f"listening on port {config.port}; coordinator {config.coordinator.url}; {mode}", event="start")
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    router.stop.set()
    router.refresh_now.set()
    cut_off = server.shutdown(DRAIN_S)  # no new requests; the ones in flight (streams) may finish
    server.server_close()
    router.log(f"stopped ({cut_off} requests cut off)", event="stop")
    return 0
