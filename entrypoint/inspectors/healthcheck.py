"""`python -m entrypoint healthcheck`: exit 0 only when the appliance is ready to serve.

Ready: vLLM's /health answers 200, /v1/models lists the served model name, and the LMCache server (server
mode) answers 200 on its health URL. A kv-server (APPLIANCE_ROLE) is ready when its LMCache server is. A replica
(LMCACHE_SERVER) is ready when its vLLM is: the kv-server has its own check, and marking every replica of a
host unhealthy for it would hide which container has the problem (`status` and the watchdog report it). This
is what the image's HEALTHCHECK and compose call. The plan comes from the run directory `serve` wrote
(APPLIANCE_RUN_DIR, default /run/appliance), else from the environment.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Mapping

import requests

from ..config.plan import Plan
from ..config.secrets import REDACTED
from ..config.settings import DEFAULT_RUN_DIR, FILE_SECRETS
from ..rundir import RunDir, read_plan


def api_base(plan: Plan) -> str:
    """Where to reach vLLM's API from inside the container."""
    host = plan.api_host if plan.api_host not in ("", "0.0.0.0", "::") else "127.0.0.1"
    return f"http://[{host}]:{plan.api_port}" if ":" in host else f"http://{host}:{plan.api_port}"


def vllm_base(plan: Plan) -> str:
    """Where vLLM itself answers: the API's address, or loopback behind the front proxy (plan.vllm_port). The
    watchdog and `status` probe vLLM here; the healthcheck asks the API port, what clients reach."""
    host, port = plan.vllm_address
    host = host if host not in ("", "0.0.0.0", "::") else "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _argv_api_key(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--api-key" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--api-key="):
            return arg.split("=", 1)[1]
    return None


def api_headers(plan: Plan, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """vLLM protects /v1/* with VLLM_API_KEY (given directly or as VLLM_API_KEY_FILE) or --api-key (in
    VLLM_EXTRA_ARGS). The plan file has the latter redacted: the watchdog finds it where `serve` put it,
    the healthcheck (run apart, with the container's environment) by planning again."""
    key = environ.get("VLLM_API_KEY")
    if not key and environ.get(FILE_SECRETS["VLLM_API_KEY"]):
        try:
            key = Path(environ[FILE_SECRETS["VLLM_API_KEY"]]).read_text().strip()
        except OSError:
            key = None
    if not key and _argv_api_key(plan.vllm.argv):
        from ..programs.launch import server_argv
        key = _argv_api_key(server_argv("vllm", plan.vllm.argv, environ))
        if key == REDACTED:
            from ..config.load import make_plan
            key = _argv_api_key(make_plan(None, [], environ).vllm.argv)
    return {"Authorization": f"Bearer {key}"} if key and key != REDACTED else {}


def api_keys(plan: Plan, environ: Mapping[str, str] = os.environ) -> tuple[str, ...]:
    """Every key vLLM accepts: VLLM_API_KEY (or its file) and each value of --api-key (several keys are
    several tenants). The front proxy checks them itself."""
    keys = []
    first = api_headers(plan, environ).get("Authorization", "").removeprefix("Bearer ")
    if first:
        keys.append(first)
    argv = plan.vllm.argv
    if _argv_api_key(argv):
        from ..programs.launch import server_argv
        argv = server_argv("vllm", argv, environ)
        for i, arg in enumerate(argv):
            if arg == "--api-key":
                for value in argv[i + 1:]:
                    if value.startswith("--"):
                        break
                    keys.append(value)
            elif arg.startswith("--api-key="):
                keys.append(arg.split("=", 1)[1])
    return tuple(k for k in dict.fromkeys(keys) if k and k != REDACTED)


def load_plan(environ: Mapping[str, str] = os.environ) -> Plan:
    written = RunDir(Path(environ.get("APPLIANCE_RUN_DIR") or DEFAULT_RUN_DIR)).plan
    if written.exists():
        return read_plan(written)
    from ..config.load import make_plan  # not started by `serve` (yet): what it would run
    return make_plan(None, [], environ)


def problems(plan: Plan, timeout: float, headers: dict[str, str]) -> list[str]:
    base, found = api_base(plan), []
    if not plan.vllm.argv:  # the kv-server role: only the LMCache server
        return lmcache_problems(plan, timeout)

    def get(url: str, **kw: Any) -> requests.Response | None:
        try:
            return requests.get(url, timeout=timeout, **kw)
        except requests.RequestException as e:
            found.append(f"{url}: no answer ({type(e).__name__})")
            return None

    r = get(f"{base}/health")
    if r is not None and r.status_code != 200:
        found.append(f"{base}/health answered {r.status_code}")
    if r is not None and r.status_code == 200:
        r = get(f"{base}/v1/models", headers=headers)
        if r is not None:
            try:
                ids = [m.get("id") for m in r.json().get("data", [])] if r.status_code == 200 else None
            except ValueError:
                ids = None
            if ids is None:
                found.append(f"{base}/v1/models answered {r.status_code}")
            elif plan.served_model_name not in ids:
                found.append(f"{base}/v1/models does not list {plan.served_model_name!r} (it lists {ids})")
    return found + lmcache_problems(plan, timeout)


def lmcache_problems(plan: Plan, timeout: float) -> list[str]:
    if not plan.lmcache.health_url:
        return []
    try:
        r = requests.get(plan.lmcache.health_url, timeout=timeout)
    except requests.RequestException as e:
        return [f"{plan.lmcache.health_url}: no answer ({type(e).__name__})"]
    return [] if r.status_code == 200 else [f"LMCache server {plan.lmcache.health_url} answered {r.status_code}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m entrypoint healthcheck", description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per request (default 5)")
    args = parser.parse_args(argv)
    plan = load_plan()
    if plan.errors:
        print("unhealthy: the configuration is invalid: " + "; ".join(plan.errors), file=sys.stderr)
        return 1
    found = problems(plan, args.timeout, api_headers(plan))
    if found:
        print("unhealthy: " + "; ".join(found), file=sys.stderr)
        return 1
    if not plan.vllm.argv:
        print(f"healthy: the LMCache server (APPLIANCE_ROLE={plan.role}) at {plan.lmcache.health_url}")
        return 0
    print(f"healthy: {plan.served_model_name} at {api_base(plan)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
