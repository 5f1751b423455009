"""Plan -> supervisord.conf: the programs, their order, restart and stop policy, and where output goes.

Only this module knows supervisord's configuration format; `serve` writes what it returns.
"""
from __future__ import annotations

import getpass
import os
import shlex
import sys

from ..common.events import RPC_USER
from ..config.plan import Plan
from ..rundir import RunDir

# supervisord's stop wait for vLLM beyond its own drain (--shutdown-timeout): engine and worker teardown.
VLLM_TEARDOWN_SECONDS = 10
LMCACHE_STOP_SECONDS = 10
START_RETRIES = 3  # failed starts in a row before a program is FATAL (then on-fatal stops the appliance)
LOG_MAX_BYTES = "10MB"  # per program log in the run directory (on-fatal shows its tail); one backup
EVENT_BUFFER = 10000  # events queued per listener before supervisord drops the oldest (log chunks)


def stop_wait_seconds(plan: Plan) -> int:
    """supervisord's stopwaitsecs for vLLM: longer than vLLM's own drain, so requests can finish."""
    return int(plan.appliance.shutdown_timeout) + VLLM_TEARDOWN_SECONDS


def _v(text: object) -> str:
    """A value for supervisord's ini file: it expands %(name)s, so a literal % is %%."""
    return str(text).replace("%", "%%")


def _command(python: str, module: str, *args: str) -> str:
    # `-m` finds the entrypoint package the way `serve` found it: supervisord -n keeps serve's working
    # directory and environment, so the same sys.path applies.
    return _v(shlex.join([python, "-m", module, *args]))


def render(plan: Plan, run: RunDir, password: str, python: str = sys.executable) -> str:
    a = plan.appliance
    startup = int(a.startup_timeout)
    sections = [
        "; Rendered by `python -m entrypoint serve` at every start from the launch plan; edits are lost.",
        "[supervisord]",
        "nodaemon=true",
        f"logfile={_v(run.root / 'supervisord.log')}",
        f"logfile_maxbytes={LOG_MAX_BYTES}",
        "logfile_backups=1",
        f"pidfile={_v(run.root / 'supervisord.pid')}",
        f"childlogdir={_v(run.root)}",
        "loglevel=info",
    ]
    if os.getuid() == 0:  # say so, or supervisord logs a CRIT line at every start
        sections.append(f"user={_v(getpass.getuser())}")
    sections += [
        "",
        "[unix_http_server]",
        f"file={_v(run.socket)}",
        "chmod=0700",
        # Without credentials supervisord logs a CRIT line at every start; the socket is 0700 anyway.
        f"username={RPC_USER}",
        f"password={_v(password)}",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory=supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{_v(run.socket)}",
        f"username={RPC_USER}",
        f"password={_v(password)}",
    ]

    def program(name: str, priority: int, stopwait: int) -> list[str]:
        # startsecs: a program counts as started only after surviving the whole start grace, so a vLLM that
        # dies while loading the model (OOM, bad weights) ends FATAL after START_RETRIES, not in a loop forever.
        # The launcher's own waits before the server (launch.py) may outlast it: a launcher that gives up
        # counts itself, so that case ends the same way whatever APPLIANCE_STARTUP_TIMEOUT is.
        return [
            "", f"[program:{name}]",
            f"command={_command(python, 'entrypoint.programs.launch', name, str(run.plan))}",
            f"priority={priority}",
            "autostart=true", "autorestart=true",
            f"startsecs={startup}", f"startretries={START_RETRIES}",
            "stopsignal=TERM", f"stopwaitsecs={stopwait}",
            # vLLM and LMCache run worker processes: stop and kill the whole process group.
            "stopasgroup=true", "killasgroup=true",
            "redirect_stderr=true",
            # supervisord expands a program's log file name twice (every value once, log files again).
            f"stdout_logfile={_v(_v(run.log(name)))}", f"stdout_logfile_maxbytes={LOG_MAX_BYTES}",
            "stdout_logfile_backups=1",
            # Each chunk of output also goes, as an event, to the `logs` listener, which prefixes its lines.
            "stdout_events_enabled=true",
        ]

    def listener(name: str, module: str, events: str, priority: int) -> list[str]:
        return [
            "", f"[eventlistener:{name}]",
            f"command={_command(python, module, str(run.plan))}",
            f"events={events}",
            f"priority={priority}",
            f"buffer_size={EVENT_BUFFER}",
            "autostart=true", "autorestart=true", "startsecs=1", f"startretries={START_RETRIES}",
            # A listener's stdout is the protocol (not logged); what it says goes to stderr, on to the container.
            "stdout_logfile=NONE", "stderr_logfile=/dev/stdout", "stderr_logfile_maxbytes=0",
        ]

    # Start order is ascending priority, stop order descending: the watchdog stops first (it must not
    # restart what a shutdown stops), then vLLM, then LMCache, and the log relay last.
    sections += listener("logs", "entrypoint.programs.logs", "PROCESS_LOG,PROCESS_STATE", 1)
    sections += listener("on-fatal", "entrypoint.programs.on_fatal", "PROCESS_STATE_FATAL", 2)
    if plan.lmcache.mode == "server":
        sections += program("lmcache", 10, LMCACHE_STOP_SECONDS)
    if plan.vllm.argv:  # none in the kv-server role (APPLIANCE_ROLE)
        sections += program("vllm", 20, stop_wait_seconds(plan))
    sections += listener("watchdog", "entrypoint.programs.watchdog", "PROCESS_STATE,TICK_5", 30)
    # The metrics exporter only reads, so it starts before the servers. It is not what the appliance exists
    # for: on-fatal lets the appliance serve on without it (on_fatal.OPTIONAL).
    if a.front_proxy and plan.vllm.argv:
        # The front proxy holds the API port (front.py); vLLM listens on loopback behind it. It starts after vLLM
        # and stops before it (descending priority): it drains the requests in flight, then vLLM stops. It is
        # the API: its failure stops the appliance like vLLM's (not in on_fatal.OPTIONAL).
        sections += _helper_program(python, run, "front", 25, stop_wait_seconds(plan))
    elif a.gap_answer and plan.vllm.argv:  # a kv-server has no vLLM port to answer for
        # The 503 answer while vLLM does not serve its port (gap.py). It starts before vLLM, so that the port
        # answers from the first second, and stops after it (descending priority), so that it answers new
        # connections while vLLM drains at a stop. Like the metrics exporter it is not what the appliance
        # exists for: on-fatal lets the appliance serve on without it (on_fatal.OPTIONAL).
        sections += _helper_program(python, run, "gap", 6)
    sections += _helper_program(python, run, "metrics", 5)
    return "\n".join(sections) + "\n"


def _helper_program(python: str, run: RunDir, name: str, priority: int, stop_wait: int = 5) -> list[str]:
    """A small appliance program (entrypoint.programs.NAME PLAN_FILE) beside the servers: restarted when it
    exits, stopped within `stop_wait` s, its output in its own log file."""
    return [
        "", f"[program:{name}]",
        f"command={_command(python, f'entrypoint.programs.{name}', str(run.plan))}",
        f"priority={priority}", "autostart=true", "autorestart=true", "startsecs=1", f"startretries={START_RETRIES}",
        "stopsignal=TERM", f"stopwaitsecs={stop_wait}", "redirect_stderr=true",
        f"stdout_logfile={_v(_v(run.log(name)))}", f"stdout_logfile_maxbytes={LOG_MAX_BYTES}",
        "stdout_logfile_backups=1", "stdout_events_enabled=true",
    ]
