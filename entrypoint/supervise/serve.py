"""`serve` after validation: preflight, write the run directory, run supervisord until it stops.

    tini -g -> python -m entrypoint serve -> supervisord -n -> lmcache, vllm, logs, on-fatal, watchdog

`serve` stays as supervisord's parent instead of exec'ing it, for one reason: supervisord exits 0 after any
shutdown, so "a program is FATAL" (on-fatal writes RunDir.fatal, then shuts supervisord down) can only
become a non-zero exit status here. Otherwise `serve` forwards signals to supervisord (its own process group,
so that each signal arrives once) and reaps orphans as a child subreaper, like tini does above it.

Exit status: 0 after a requested stop (SIGTERM, docker stop), EXIT_FATAL when a program ended FATAL,
EXIT_PREFLIGHT when a preflight check failed (nothing started), supervisord's own status otherwise.
"""
from __future__ import annotations

import ctypes
import fcntl
import functools
import json
import os
import secrets
import shlex
import signal
import stat
import sys
import time
from pathlib import Path
from types import FrameType

from ..common import applog, state
from ..config.plan import Plan
from ..programs.gap import GAP_OFF, GAP_STATE
from ..programs.launch import SECRET_ARGV_VAR, processes_of, secret_argv_values
from ..render.supervisord_conf import START_RETRIES, render
from ..rundir import RunDir
from . import preflight

EXIT_FATAL = 1
EXIT_PREFLIGHT = 3
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR2)
PR_SET_CHILD_SUBREAPER = 36


def run_preflight(plan: Plan) -> preflight.Findings | None:
    """The preflight checks, reported; their findings, or None when one of them stops the start."""
    found = preflight.check(plan)
    say = functools.partial(applog.emit, "preflight", text_prefix="")
    for note in found.notes:
        say(f"preflight: {note}", event="note")
    for warning in found.warnings:
        say(f"warning: {warning}", level="warning", event="warning")
    for error in found.errors:
        say(f"error: {error}", level="error", event="error")
    if found.errors:
        say(f"{len(found.errors)} preflight problem(s); nothing was started.", level="error", event="stopped")
        return None
    return found


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    """Atomically, so that a program never reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(path)


def write_run_dir(plan: Plan, run: RunDir) -> None:
    run.fatal.unlink(missing_ok=True)
    for name in (GAP_OFF, GAP_STATE):  # an earlier start's: a pid or a count that mean nothing now (gap.py)
        (run.root / name).unlink(missing_ok=True)
    _write(run.plan, json.dumps(plan.to_dict(), indent=2) + "\n", 0o600)  # secrets redacted
    if plan.lmcache.mode == "in-process" and plan.lmcache.config_file:
        # JSON is YAML. 0600: an LMCACHE_<KEY> credential (a remote backend's password) is in it as given.
        _write(Path(plan.lmcache.config_file), json.dumps(plan.lmcache.config, indent=2) + "\n", 0o600)
    password = secrets.token_hex(16)
    _write(run.password, password + "\n", 0o600)
    _write(run.conf, render(plan, run, password), 0o600)


def export_secrets(plan: Plan) -> None:
    """Secret values never go to disk: they travel in the environment, which supervisord passes on. Those
    read from *_FILE or an env file are put there now; the programs take them back (launch.py)."""
    shown = plan.to_dict()
    for env, shown_env in ((plan.vllm.env, shown["vllm"]["env"]), (plan.lmcache.env, shown["lmcache"]["env"])):
        for name, value in env.items():
            if value and shown_env.get(name) != value:  # the plan file has "***" in it (a secret, a URL password)
                os.environ[name] = value
    hidden = secret_argv_values(plan)
    if hidden != "{}":
        os.environ[SECRET_ARGV_VAR] = hidden


def _become_subreaper() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: orphans go to PID 1 as usual


def _append_mode_stdio() -> None:
    """Listeners' output reaches our stdout through supervisord's `/dev/stdout` logfile, opened in append
    mode. Where stdout is a plain file (`serve > log`), our and supervisord's own writes must append too,
    or they would overwrite those lines."""
    for fd in (1, 2):
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
        except OSError:
            pass


def kill_leftovers(run: RunDir) -> None:
    """supervisord is satisfied once a program's main process exits; a worker that outlived it (it left the
    group, or ignores SIGTERM) has had its graceful stop and is killed here, so that nothing outlives us."""
    leftovers = processes_of(None, f"unix://{run.socket}")
    if leftovers:
        applog.emit("serve", f"appliance: killing {len(leftovers)} leftover process(es): pid "
                    f"{', '.join(map(str, leftovers))}", level="warning", event="leftovers", text_prefix="")
    for pid in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    for pid in leftovers:
        try:
            os.waitpid(pid, 0)  # orphans were handed to us (subreaper): reap them, or they stay zombies
        except ChildProcessError:  # not ours to reap: wait until it is gone
            while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
                time.sleep(0.05)
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:  # any other orphan that already ended
            pass
    except ChildProcessError:
        pass


def run_supervisord(run: RunDir) -> int:
    _append_mode_stdio()
    argv = [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(run.conf)]
    applog.emit("serve", "Executing: " + shlex.join(argv), event="exec", stream=sys.stdout, text_prefix="")
    sys.stderr.flush()
    _become_subreaper()
    pid = os.posix_spawn(sys.executable, argv, os.environ, setpgroup=0)

    def forward(signum: int, _frame: FrameType | None) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for signum in FORWARDED:
        signal.signal(signum, forward)
    status = 0
    while True:
        try:
            reaped, raw = os.waitpid(-1, 0)  # supervisord, or an orphan handed to us as subreaper
        except ChildProcessError:
            break
        if reaped == pid:
            status = os.waitstatus_to_exitcode(raw)
            break
    kill_leftovers(run)
    if run.fatal.exists():
        program = run.fatal.read_text().strip()
        applog.emit("serve", f"appliance: stopped because {program!r} failed {START_RETRIES + 1} times in a row "
                    "(FATAL); its last lines are above", level="error", event="fatal", text_prefix="")
        return EXIT_FATAL
    return 128 - status if status < 0 else status


def serve(plan: Plan, env_file_values: dict[str, str] | None = None) -> int:
    # Every supervised program and listener logs in the format the operator chose (applog reads this).
    os.environ[applog.ENV] = str(plan.appliance.log_format or "text")
    found = run_preflight(plan)
    if found is None:
        return EXIT_PREFLIGHT
    for name, value in (env_file_values or {}).items():
        os.environ.setdefault(name, value)  # the real environment wins over the env file
    run = RunDir.of(plan)
    write_run_dir(plan, run)
    state.start(run.state, [*plan.warnings, *found.warnings])
    export_secrets(plan)
    return run_supervisord(run)
