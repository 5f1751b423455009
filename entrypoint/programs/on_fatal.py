"""The `on-fatal` eventlistener: a program that reached FATAL (it failed to start START_RETRIES + 1 times in a
row) stops the whole appliance, so that the container exits non-zero and its restart policy or operator
sees it, instead of a container that runs on without vLLM.

It names the program, prints the last lines of its log, writes RunDir.fatal (which `serve` turns into exit
status 1; supervisord itself always exits 0) and asks supervisord to shut down.
"""
from __future__ import annotations

import sys
import xmlrpc.client
from pathlib import Path

from ..common.events import Listener, say, split_payload
from ..render.supervisord_conf import START_RETRIES
from ..rundir import RunDir

NAME = "on-fatal"
OPTIONAL = ("metrics", "gap")  # programs whose failure does not stop the appliance: it serves without them
TAIL_LINES = 40


def tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 256 * lines))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    run = RunDir(Path(argv[0]).parent)
    rpc = run.rpc()
    listener = Listener()
    while True:
        event = listener.next()
        if event is None:
            continue
        meta, _ = split_payload(event[1])
        program = meta.get("processname", "?")
        try:
            if rpc.supervisor.getState()["statename"] != "RUNNING":
                continue  # a shutdown gives up on programs in BACKOFF: that is no failure of theirs
        except (OSError, xmlrpc.client.Error):
            continue  # supervisord is shutting down (it refuses calls with SHUTDOWN_STATE) or gone
        if program in OPTIONAL:
            say(NAME, f"{program} cannot start (FATAL; its log: {run.log(program)}); serving goes on without it")
            continue
        say(NAME, f"{program} failed to start {START_RETRIES + 1} times in a row (FATAL): stopping the appliance")
        log = run.log(program)
        lines = tail(log)
        say(NAME, f"last {len(lines)} lines of {log}:" if lines else f"{program} left no log at {log}")
        for line in lines:
            say(NAME, f"  {line}")
        if not run.fatal.exists():
            run.fatal.write_text(program + "\n")
        rpc.supervisor.shutdown()


if __name__ == "__main__":
    sys.exit(main())
