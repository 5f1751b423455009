"""LMCACHE_SHARED_*: every message an operator can see, word for word, and the secret kept out of everything
the appliance prints or writes. What LMCache itself makes of the plan is in tests/contract/test_shared_store.py."""
import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entrypoint import cli
from entrypoint.config.plan import SharedStore
from entrypoint.config.settings import StoreURL, ValueProblem, parse_store_url

BASE = {"VLLM_MODEL": "facebook/opt-125m", "VLLM_KV_OFFLOADING_BACKEND": "lmcache", "VLLM_KV_OFFLOADING_SIZE": "5",
        "VLLM_HOST": "127.0.0.1"}
URL = {"LMCACHE_SHARED_URL": "redis://kv-store:6379"}
EG = ", e.g. LMCACHE_SHARED_URL=redis://kv-store:6379"


@pytest.mark.parametrize("value, problem", [
    ("rediss://kv-store:6379", "asks for TLS, which LMCache's RESP client does not support (it speaks plain TCP): "
     "use redis:// on a private network, or a TLS tunnel (stunnel, a service mesh) next to each replica" + EG),
    ("http://kv-store:6379", "has the scheme 'http': must be redis://host:port (a Redis or Valkey server)" + EG),
    ("kv-store:6379", "must be a URL: redis://host:port, e.g. redis://kv-store:6379"),
    ("redis://user:pw@kv-store:6379", "holds credentials: set LMCACHE_SHARED_USERNAME and LMCACHE_SHARED_PASSWORD "
     "(or LMCACHE_SHARED_PASSWORD_FILE) instead, so that the password is never part of a URL the appliance "
     "prints" + EG),
    ("redis://kv-store:6379/2", "names a database: LMCache's RESP client always uses database 0; use another "
     "Redis server (or ACL key prefixes) to keep caches apart" + EG),
    ("redis://kv-store:6379?ssl=true", "takes no query or fragment: redis://host:port" + EG),
    ("redis://:6379", "has no host: redis://host:port, e.g. redis://kv-store:6379"),
    ("redis://kv-store:0", "has an invalid port: must be 1-65535, e.g. redis://kv-store:6379"),
    ("redis://kv-store:http", "has an invalid port: must be 1-65535, e.g. redis://kv-store:6379"),
    ("redis://kv_store;rm:6379", "has an invalid host 'kv_store;rm': a DNS name, an IPv4 address or [IPv6]" + EG),
    ("redis://--l1-size-gb:6379", "has an invalid host '--l1-size-gb': a DNS name, an IPv4 address or [IPv6]" + EG),
    ("redis://kv store:6379", "must be redis://host:port without spaces or control characters" + EG),
])
def test_bad_urls_are_refused_with_the_fix(plan_for, value, problem):
    plan = plan_for({**BASE, "LMCACHE_SHARED_URL": value})
    shown = value.replace("user:pw@", "***@")  # the refused credentials are not echoed either
    assert plan.errors == [f"LMCACHE_SHARED_URL={shown!r}: {problem}"]
    assert ":pw@" not in plan.errors[0]
    assert plan.lmcache.argv is None or all(value not in a for a in plan.lmcache.argv)


@pytest.mark.parametrize("env, errors", [
    ({"LMCACHE_SHARED_USERNAME": "bob smith"}, [
        "LMCACHE_SHARED_USERNAME='bob smith': must be a Redis user name: 1-256 letters, digits or ._@:+=- (no "
        "spaces)"]),
    ({"LMCACHE_SHARED_MAX_SIZE": "0"}, [
        "LMCACHE_SHARED_MAX_SIZE='0': must be a size in GiB greater than 0, e.g. 5.0"]),
    ({"LMCACHE_SHARED_PASSWORD": "pw1", "LMCACHE_SHARED_PASSWORD_FILE": "/nonexistent"}, [
        "LMCACHE_SHARED_PASSWORD and LMCACHE_SHARED_PASSWORD_FILE are both set: set only one of them"]),
    ({"LMCACHE_SHARED_PASSWORD": "   "}, [
        "LMCACHE_SHARED_PASSWORD is only white space: set the secret, or leave LMCACHE_SHARED_PASSWORD empty "
        "(unset)"]),
    ({"LMCACHE_RESP_PASSWORD": "direct"}, [
        "LMCACHE_RESP_PASSWORD is set and LMCACHE_SHARED_URL too: set LMCACHE_SHARED_PASSWORD instead (the "
        "appliance passes it to LMCache as LMCACHE_RESP_PASSWORD)"]),
])
def test_bad_companion_settings(plan_for, env, errors):
    plan = plan_for({**BASE, **URL, **env})
    assert plan.errors == errors


def test_companions_without_the_url(plan_for):
    plan = plan_for({**BASE, "LMCACHE_SHARED_USERNAME": "bob", "LMCACHE_SHARED_MAX_SIZE": "4"})
    assert plan.errors == ["LMCACHE_SHARED_USERNAME, LMCACHE_SHARED_MAX_SIZE: set LMCACHE_SHARED_URL too "
                           "(redis://host:port of the shared store), or remove them"]


def test_without_lmcache_offloading(plan_for):
    plan = plan_for({**BASE, **URL, "VLLM_KV_OFFLOADING_BACKEND": "native"})
    assert plan.errors == ["LMCACHE_SHARED_URL: LMCache settings take effect only with "
                           "VLLM_KV_OFFLOADING_BACKEND=lmcache (it is native); set it, or remove them"]


def test_in_process_refuses_a_shared_store(plan_for):
    """In-process LMCache keys the store by model name and tokens only: another replica's weights under the
    same name would be loaded (the server mode's keys carry the KV identity)."""
    plan = plan_for({**BASE, **URL, "LMCACHE_MODE": "in-process"})
    assert plan.errors == [
        "LMCACHE_SHARED_URL with LMCACHE_MODE=in-process: in-process LMCache keys the shared store by model name "
        "and tokens only, so a replica with other weights under the same name would load this one's KV (and the "
        "reverse). Use LMCACHE_MODE=server, where every key carries the KV identity"]


def test_password_file_is_read_and_never_shown(plan_for, tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("from-a-file-9\n")
    plan = plan_for({**BASE, **URL, "LMCACHE_SHARED_PASSWORD_FILE": str(secret)})
    assert plan.errors == []
    assert plan.lmcache.env["LMCACHE_RESP_PASSWORD"] == "from-a-file-9"
    assert "from-a-file-9" not in json.dumps(plan.to_dict())
    assert plan.to_dict()["lmcache"]["env"]["LMCACHE_RESP_PASSWORD"] == "***"


def test_config_output_never_shows_the_password(capsys, monkeypatch):
    env = {**BASE, **URL, "LMCACHE_SHARED_PASSWORD": "cli-secret-42", "LMCACHE_SHARED_USERNAME": "replica"}
    for fmt in ("text", "json"):
        monkeypatch.setattr(os, "environ", dict(env))
        rc = cli.main(["config", "--format", fmt])
        out = capsys.readouterr()
        assert rc == 0, out.err
        assert "cli-secret-42" not in out.out + out.err
        assert '\\"type\\":\\"resp\\"' in out.out or '"type":"resp"' in out.out


def test_hostile_url_exits_2_without_a_traceback(capsys, monkeypatch):
    monkeypatch.setattr(os, "environ", {**BASE, "LMCACHE_SHARED_URL": "redis://x:1\n--port 9"})
    rc = cli.main(["config"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "LMCACHE_SHARED_URL=" in err


def test_plan_records_the_store_for_the_probes(plan_for):
    plan = plan_for({**BASE, "LMCACHE_SHARED_URL": "redis://[FD00::7]:7000", "LMCACHE_SHARED_USERNAME": "r"})
    assert plan.lmcache.shared_store == SharedStore(url="redis://[fd00::7]:7000", host="fd00::7", port=7000,
                                                    username="r")
    assert plan.values["LMCACHE_SHARED_URL"] == "redis://[fd00::7]:7000"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_any_url_text_parses_or_is_refused(text):
    """Never an exception other than ValueProblem; what parses can be neither a flag nor hold a credential."""
    try:
        url = parse_store_url(text)
    except ValueProblem:
        return
    assert isinstance(url, StoreURL) and 1 <= url.port <= 65535
    assert not url.host.startswith("-") and "@" not in url.host and not any(c.isspace() for c in url.host)


def test_the_launcher_gives_the_password_to_lmcache_only(plan_for):
    """serve exports the secret for supervisord to pass on; the launcher takes it out of vLLM's environment."""
    from entrypoint.config.plan import Plan
    from entrypoint.programs.launch import lmcache_environment, vllm_environment

    plan = Plan.from_dict(plan_for({**BASE, **URL, "LMCACHE_SHARED_PASSWORD": "pw-42"}).to_dict())  # as written
    environ = {"LMCACHE_RESP_PASSWORD": "pw-42", "LMCACHE_SHARED_PASSWORD": "pw-42", "PATH": "/bin"}
    assert lmcache_environment(plan, environ)["LMCACHE_RESP_PASSWORD"] == "pw-42"
    assert "LMCACHE_SHARED_PASSWORD" not in lmcache_environment(plan, environ)
    vllm_env = vllm_environment(plan, environ)
    assert "LMCACHE_RESP_PASSWORD" not in vllm_env and "LMCACHE_SHARED_PASSWORD" not in vllm_env
    assert vllm_env["PATH"] == "/bin"


def test_the_cluster_variables_in_env_are_accepted_by_every_replica(plan_for):
    """compose.cluster.yaml reads them from the same .env that every replica reads (env_file): not unknown."""
    plan = plan_for({**BASE, **URL, "APPLIANCE_REPLICA_0_GPUS": "0,1", "APPLIANCE_REPLICA_3_GPUS": "7",
                     "APPLIANCE_ROUTER_WORKERS": "http://replica-0:8000", "APPLIANCE_ROUTER_POLICY": "round_robin",
                     "APPLIANCE_ROUTER_HEALTH_INTERVAL": "5", "APPLIANCE_ROUTER_IMAGE": "r:1",
                     "APPLIANCE_STORE_IMAGE": "valkey/valkey:8.1", "APPLIANCE_STORE_MAXMEMORY": "8gb"})
    assert plan.errors == []
