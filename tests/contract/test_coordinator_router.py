"""The appliance's coordinator router (entrypoint/cluster/router.py, `python -m entrypoint router`) in front of two
replicas, with LMCache's real coordinator and two real LMCache servers (tests/contract/lmcache_fleet.py): each
prompt goes to the replica whose server holds it, streams pass through chunk by chunk, a replica that fails
stops getting traffic, and a coordinator that is gone costs only the placement.

The vLLM replicas are small HTTP stand-ins (the parts the router uses: /tokenize, /v1/models, /health,
/v1/completions with and without stream), recording what they get. The router runs in this process with its
background checks parked, so that each test decides when health is checked (no timing in the assertions)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from entrypoint.cluster import router as product
from entrypoint.config.settings import parse_http_url, parse_router_replicas

from .lmcache_fleet import TOKENS, fleet, store, tokens_of
from ports import free_port

MODEL = "served-name"  # the name clients send; the keys carry vLLM's model ("root" in /v1/models)
KEY_MODEL = "test-model"  # the name LMCache's benchmark client stores under
SECRET = "sk-router-test-Zq"


class StandIn(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        s = self.server
        if self.path == "/health":
            return self._send(200 if s.up else 503, {})
        if self.path == "/v1/models":
            return self._send(200, {"object": "list", "data": [{"id": MODEL, "root": KEY_MODEL}]})
        self._send(404, {})

    def do_POST(self):
        s = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/tokenize":
            text = body["prompt"] if "prompt" in body else body["messages"][-1]["content"]
            tokens = tokens_of(text)
            return self._send(200, {"tokens": tokens, "count": len(tokens), "max_model_len": 4096})
        s.got.append((self.path, body, self.headers.get("Authorization")))
        if not body.get("stream"):
            return self._send(200, {"id": "x", "object": "text_completion", "replica": s.name,
                                    "choices": [{"index": 0, "text": "ok"}]})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def chunk(text: str) -> None:
            data = text.encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        chunk(f'data: {{"replica": "{s.name}", "n": 1}}\n\n')
        # The rest only once the client has read the first event through the router (or after 30 s, and then
        # the test fails on `released`): a router that buffered the stream would hold the first event back.
        s.released = s.release.wait(30)
        chunk(f'data: {{"replica": "{s.name}", "n": 2}}\n\n')
        chunk("data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")


def stand_in(name: str, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), StandIn)
    server.daemon_threads = True
    server.name, server.up, server.got = name, True, []
    server.release, server.released = threading.Event(), None
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    # Server B registers from 127.0.0.2, as from another host; replica B listens there.
    with fleet(tmp_path_factory.mktemp("router"), advertise_ips=("127.0.0.1", "127.0.0.2")) as f:
        a, b = stand_in("A"), stand_in("B", "127.0.0.2")
        (_, http_a), _ = f.servers
        lines: list[str] = []
        config = product.RouterConfig(
            coordinator=parse_http_url(f.coordinator),
            # A by its address and its server's HTTP port (as for replicas sharing one host), B by address alone
            replicas=parse_router_replicas(f"http://127.0.0.1:{a.server_address[1]}={http_a} "
                                           f"http://127.0.0.2:{b.server_address[1]}"),
            host="127.0.0.1", port=free_port(), lookup_timeout=5.0, request_timeout=60.0, health_interval=3600.0)
        router = product.Router(config, log=lambda msg, *args, **kw: lines.append(msg))
        server, _ = product.make_server(config, router)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        deadline = time.monotonic() + 30
        while len(router.replica_of) < 2:  # registration is each server's first heartbeat
            assert time.monotonic() < deadline, (router.replica_of, lines)
            router.refresh()
            time.sleep(0.5)
        router.check_health()
        store(*f.servers[0], seq=21)
        store(*f.servers[1], seq=22)
        deadline = time.monotonic() + 30  # events reach the coordinator every second
        while True:
            held = [router.locate("/v1/completions", json.dumps({"model": MODEL, "prompt": f"seq {n}"}).encode(),
                                  {})[0] for n in (21, 22)]
            if all(max(h.values()) == TOKENS // 256 for h in held):
                break
            assert time.monotonic() < deadline, held
            time.sleep(0.5)
        yield {"fleet": f, "a": a, "b": b, "router": router, "url": f"http://127.0.0.1:{config.port}",
               "lines": lines}
        server.shutdown()
        for s in (a, b):
            s.shutdown()


def complete(url: str, prompt: str, stream: bool = False) -> requests.Response:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 1, **({"stream": True} if stream else {})}
    return requests.post(url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {SECRET}"},
                         stream=stream, timeout=60)


def metric(url: str, line_start: str) -> float:
    text = requests.get(url + "/metrics", timeout=10).text
    (value,) = [ln.rsplit(" ", 1)[1] for ln in text.splitlines() if ln.startswith(line_start + " ")]
    return float(value)


def test_each_prompt_goes_to_the_replica_whose_server_holds_it(setup):
    a, b, url = setup["a"], setup["b"], setup["url"]
    for _ in range(3):
        for seq, owner in ((21, a), (22, b)):
            before = len(owner.got)
            r = complete(url, f"seq {seq}")
            assert r.status_code == 200, r.text
            assert r.json()["replica"] == owner.name  # the replica's body, unchanged
            assert len(owner.got) == before + 1
    # a chat request is placed by its rendered prompt's tokens the same way
    r = requests.post(url + "/v1/chat/completions", json={"model": MODEL, "messages": [
        {"role": "user", "content": "seq 22"}]}, timeout=60)
    assert r.json()["replica"] == "B" and b.got[-1][0] == "/v1/chat/completions"
    # Authorization reaches the replica, and no log line of the router holds it
    assert a.got[-1][2] == f"Bearer {SECRET}"
    assert not any(SECRET in line for line in setup["lines"])
    assert metric(url, "appliance_router_prefix_placements_total") >= 7
    assert metric(url, 'appliance_router_fallbacks_total{reason="coordinator"}') == 0
    # other paths pass through to a healthy replica, status codes unchanged
    assert requests.get(url + "/v1/models", timeout=10).json()["data"][0]["root"] == KEY_MODEL
    assert requests.get(url + "/nothing-here", timeout=10).status_code == 404
    assert requests.get(url + "/health", timeout=10).status_code == 200


def test_without_a_list_the_replicas_are_the_servers_registered_with_the_coordinator(setup):
    """Kubernetes' shape (APPLIANCE_ROUTER_REPLICAS empty): each registered server's address and vLLM's port."""
    for _ in range(20):  # one port free on both addresses
        port = free_port()
        c = stand_in("C", "127.0.0.1", port)
        try:
            d = stand_in("D", "127.0.0.2", port)
            break
        except OSError:
            c.shutdown()
            c.server_close()
    else:
        pytest.fail("no port free on both 127.0.0.1 and 127.0.0.2")
    config = product.RouterConfig(coordinator=parse_http_url(setup["fleet"].coordinator), replicas=(),
                                  replica_port=port, host="127.0.0.1", port=free_port(), lookup_timeout=5.0)
    router = product.Router(config, log=lambda *a, **k: None)
    server, _ = product.make_server(config, router)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        router.refresh()
        router.check_health()
        assert sorted(r.url for r in router.replicas) == [f"http://127.0.0.1:{port}", f"http://127.0.0.2:{port}"]
        assert all(r.healthy for r in router.replicas) and len(router.replica_of) == 2
        url = f"http://127.0.0.1:{config.port}"
        for _ in range(2):
            assert complete(url, "seq 21").json()["replica"] == "C"
            assert complete(url, "seq 22").json()["replica"] == "D"
    finally:
        server.shutdown()
        for s in (c, d):
            s.shutdown()


def test_a_stream_is_relayed_chunk_by_chunk(setup):
    b, url = setup["b"], setup["url"]
    b.release.clear()
    with complete(url, "seq 22", stream=True) as r:
        assert r.status_code == 200 and r.headers["Content-Type"] == "text/event-stream"
        lines = r.iter_lines()
        first = next(line for line in lines if line)
        assert json.loads(first[len(b"data: "):]) == {"replica": "B", "n": 1}
        b.release.set()  # only now does the stand-in send the rest
        rest = [line for line in lines if line]
    assert b.released is True, "the first event did not arrive before the rest was sent: the router buffered"
    assert [json.loads(x[6:])["n"] for x in rest[:-1]] == [2] and rest[-1] == b"data: [DONE]"


def test_a_replica_that_fails_its_health_check_gets_no_traffic_until_it_recovers(setup):
    a, b, url, router = setup["a"], setup["b"], setup["url"], setup["router"]
    b.up = False
    router.check_health()
    before = len(b.got)
    assert all(complete(url, "seq 22").json()["replica"] == "A" for _ in range(3))
    assert len(b.got) == before
    assert requests.get(url + "/health", timeout=10).status_code == 200  # one replica is enough
    assert metric(url, f'appliance_router_replica_healthy{{replica="http://127.0.0.2:{b.server_address[1]}"}}') == 0
    b.up = True
    router.check_health()
    assert complete(url, "seq 22").json()["replica"] == "B"
    a.up = b.up = False
    router.check_health()
    assert requests.get(url + "/health", timeout=10).status_code == 503
    assert complete(url, "seq 22").status_code == 503
    a.up = b.up = True
    router.check_health()


def test_a_replica_that_refuses_connections_costs_one_retry_not_the_request(setup):
    a, b, url, router = setup["a"], setup["b"], setup["url"], setup["router"]
    retries = metric(url, "appliance_router_retries_total")
    b.shutdown()
    b.server_close()  # the port is closed: connections are refused; the router has not noticed yet
    before = len(a.got)
    r = complete(url, "seq 22")
    assert r.status_code == 200 and r.json()["replica"] == "A"
    assert metric(url, "appliance_router_retries_total") == retries + 1
    assert not router.replicas[1].healthy  # marked down at once, until a health check says otherwise
    assert complete(url, "seq 22").json()["replica"] == "A" and len(a.got) == before + 2
    assert metric(url, "appliance_router_retries_total") == retries + 1  # no second try: B gets nothing


def test_without_the_coordinator_requests_still_succeed(setup):
    url = setup["url"]
    fallbacks = metric(url, 'appliance_router_fallbacks_total{reason="coordinator"}')
    proc = setup["fleet"].coordinator_proc
    proc.terminate()
    proc.wait(30)
    r = complete(url, "seq 21")
    assert r.status_code == 200 and r.json()["replica"] == "A"
    assert metric(url, 'appliance_router_fallbacks_total{reason="coordinator"}') == fallbacks + 1
    assert metric(url, "appliance_router_routing_errors_total") >= 1


def test_the_router_command_serves_and_stops_on_sigterm(tmp_path):
    """`python -m entrypoint router` from the environment alone; the coordinator need not be up to start."""
    replica = stand_in("only")
    port = free_port()
    env = {**os.environ, "APPLIANCE_ROUTER_COORDINATOR_URL": f"http://127.0.0.1:{free_port()}",
           "APPLIANCE_ROUTER_REPLICAS": f"http://127.0.0.1:{replica.server_address[1]}",
           "APPLIANCE_ROUTER_PORT": str(port), "APPLIANCE_ROUTER_HEALTH_INTERVAL": "1",
           "APPLIANCE_ROUTER_LOOKUP_TIMEOUT": "0.5"}
    log = tmp_path / "router.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "entrypoint", "router"], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        r = complete(f"http://127.0.0.1:{port}", "seq 5")
        assert r.status_code == 200 and r.json()["replica"] == "only"
        assert replica.got[-1][2] == f"Bearer {SECRET}"
        # SIGTERM with a stream in flight: the router stops accepting, and the stream still ends normally
        replica.release.clear()
        with complete(f"http://127.0.0.1:{port}", "seq 6", stream=True) as stream:
            lines = stream.iter_lines()
            assert b'"n": 1' in next(line for line in lines if line)
            proc.send_signal(signal.SIGTERM)
            while True:  # until the listening socket is closed
                try:
                    requests.get(f"http://127.0.0.1:{port}/health", timeout=2)
                except requests.ConnectionError:
                    break
                assert proc.poll() is None, log.read_text()[-3000:]
                time.sleep(0.1)
            replica.release.set()
            assert [line for line in lines if line][-1] == b"data: [DONE]"
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        replica.shutdown()
    assert code == 0, log.read_text()[-3000:]
    assert "stopped (0 requests cut off)" in log.read_text()
    text = log.read_text()
    assert "listening on port" in text and SECRET not in text and "Traceback" not in text


def test_what_the_router_tokenizes_is_what_vllms_tokenize_takes():
    """The bodies `routing.tokenize_body` builds validate as vLLM 0.32.0's own /tokenize request models, and each
    chat field it copies is one vLLM's chat completion request has (a rename upstream fails here)."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.serve.tokenize.protocol import (
        TokenizeChatRequest,
        TokenizeCompletionRequest,
    )

    from entrypoint.cluster.routing import CHAT_RENDER_FIELDS, tokenize_body

    body = tokenize_body("/v1/completions", {"model": MODEL, "prompt": "seq 1", "add_special_tokens": False,
                                             "max_tokens": 4, "stream": True})
    assert TokenizeCompletionRequest.model_validate(body).prompt == "seq 1"
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "seq 1"}], "add_generation_prompt": True,
            "chat_template_kwargs": {"enable_thinking": False}, "tools": [{"type": "function", "function": {
                "name": "f", "parameters": {"type": "object", "properties": {}}}}], "max_tokens": 4}
    request = TokenizeChatRequest.model_validate(tokenize_body("/v1/chat/completions", chat))
    assert request.chat_template_kwargs == {"enable_thinking": False} and request.tools[0].function.name == "f"
    assert set(CHAT_RENDER_FIELDS) <= set(TokenizeChatRequest.model_fields)
    assert set(CHAT_RENDER_FIELDS) <= set(ChatCompletionRequest.model_fields)
