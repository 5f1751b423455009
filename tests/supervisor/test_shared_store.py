"""The shared KV store as a dependency (LMCACHE_SHARED_URL), with a real Redis server (Debian's redis-server,
scripts/ci/install-redis.sh) on a loopback port and the stub servers under real supervisord: the appliance
starts without the store (a warning), keeps serving when it goes away (metric 0, `status` says so, nothing is
restarted), sees it come back (metric 1), and its password reaches the LMCache server's environment only."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from entrypoint.common import store
from entrypoint.inspectors.snapshot import parse_metrics

from appliance_harness import REPO, free_ports, wait_until

PASSWORD = "store-pw-5e1f"
REDIS = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(REDIS is None, reason="redis-server is not installed (scripts/ci/install-redis.sh)")


class Redis:
    def __init__(self, tmp: Path, port: int, password: str = PASSWORD):
        self.tmp, self.port, self.password, self.proc = tmp, port, password, None

    def start(self) -> "Redis":
        # No persistence here: the test is about the appliance's view of the store, not Redis's.
        self.proc = subprocess.Popen([REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.tmp), "--requirepass", self.password],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: store.ping("127.0.0.1", self.port, "", self.password, 1)[0], 10, "redis-server")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def redis(tmp_path):
    servers = []

    def make(**kw) -> Redis:
        port = free_ports(1)[0]
        r = Redis(tmp_path, port, **kw)
        servers.append(r)
        return r
    yield make
    for r in servers:
        r.stop()


def test_ping_speaks_resp_to_a_real_redis(redis):
    r = redis().start()
    assert store.ping("127.0.0.1", r.port, "", PASSWORD) == (True, "")
    ok, why = store.ping("127.0.0.1", r.port, "", "wrong-password")
    assert not ok and why.startswith("AUTH refused: -WRONGPASS") and "wrong-password" not in why
    ok, why = store.ping("127.0.0.1", r.port)
    assert not ok and why.startswith("PING answered '-NOAUTH")
    r.stop()
    ok, why = store.ping("127.0.0.1", r.port, "", PASSWORD, timeout=1)
    assert not ok and why.startswith(f"cannot reach 127.0.0.1:{r.port} (")


def scrape(a) -> dict[str, float]:
    try:
        r = requests.get(f"http://127.0.0.1:{a.env['APPLIANCE_METRICS_PORT']}/metrics", timeout=5)
    except requests.RequestException:
        return {}
    return parse_metrics(r.text) if r.status_code == 200 else {}


def store_up(a):
    return scrape(a).get("appliance_shared_store_up")


def status(a) -> dict:
    out = subprocess.run([sys.executable, "-m", "entrypoint", "status", "--format", "json"], cwd=REPO, env=a.env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr  # the store does not decide whether the appliance is up
    return json.loads(out.stdout)


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def test_the_store_goes_and_comes_back_while_the_appliance_serves(appliance, redis):
    r = redis()  # not started: the appliance must start without it
    a = appliance(LMCACHE_SHARED_URL=f"redis://127.0.0.1:{r.port}", LMCACHE_SHARED_PASSWORD=PASSWORD)
    a.wait_ready()
    vllm_pid, lmcache_pid = a.wait_state("vllm", "RUNNING")["pid"], a.wait_state("lmcache", "RUNNING")["pid"]
    assert f"the shared KV store redis://127.0.0.1:{r.port} (LMCACHE_SHARED_URL) does not answer" in a.output()
    assert wait_until(lambda: store_up(a) == 0.0, 20, "appliance_shared_store_up 0")
    assert a.completion().status_code == 200

    r.start()
    wait_until(lambda: store_up(a) == 1.0, 20, "appliance_shared_store_up 1 after the store started")
    a.wait_output(f"the shared KV store redis://127.0.0.1:{r.port} answers")
    # LMCache's Redis client never connects to a store that was down when it started: the LMCache server is
    # restarted for it, vLLM is not.
    a.wait_output(f"the shared KV store redis://127.0.0.1:{r.port} is back: restarting the LMCache server")
    wait_until(lambda: a.wait_state("lmcache", "RUNNING")["pid"] != lmcache_pid, 30, "a new LMCache server")
    lmcache_pid = a.wait_state("lmcache", "RUNNING")["pid"]
    d = status(a)
    assert d["shared_store"]["up"] is True and d["shared_store_url"] == f"redis://127.0.0.1:{r.port}"

    r.stop()
    wait_until(lambda: store_up(a) == 0.0, 20, "appliance_shared_store_up 0 after the store died")
    assert a.completion().status_code == 200  # still serving
    d = status(a)
    assert d["shared_store"]["up"] is False and "cannot reach" in d["shared_store"]["detail"]
    text = subprocess.run([sys.executable, "-m", "entrypoint", "status"], cwd=REPO, env=a.env, capture_output=True,
                          text=True, timeout=30).stdout
    assert f"shared store redis://127.0.0.1:{r.port}: DOWN (cannot reach" in text

    r.start()
    wait_until(lambda: store_up(a) == 1.0, 20, "appliance_shared_store_up 1 after the store came back")
    assert scrape(a)["appliance_shared_store_changes_total"] == 3  # down (start), up, down, up
    # the LMCache server restarted once more for the store's return, vLLM never
    wait_until(lambda: a.wait_state("lmcache", "RUNNING")["pid"] != lmcache_pid, 30, "a new LMCache server")
    lmcache_pid = a.wait_state("lmcache", "RUNNING")["pid"]
    assert a.pid("vllm") == vllm_pid
    assert status(a)["restarts"].get("lmcache") == {"dependency": 2}, status(a)["restarts"]
    # The password: in the LMCache server's environment (as LMCache reads it), in no other program's, on no
    # command line, in no file of the run directory.
    assert environ_of(lmcache_pid).get("LMCACHE_RESP_PASSWORD") == PASSWORD
    vllm_env = environ_of(vllm_pid)
    assert PASSWORD not in vllm_env.values()
    for pid in (vllm_pid, lmcache_pid):
        assert PASSWORD.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    for f in a.run.root.rglob("*"):
        if f.is_file():
            assert PASSWORD.encode() not in f.read_bytes(), f
    assert PASSWORD not in a.output()
