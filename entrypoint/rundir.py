"""The run directory (APPLIANCE_RUN_DIR): the files `serve` writes and the supervised programs, `status` and
`healthcheck` read, among them the plan (read_plan). The one place that knows the directory's layout."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common.events import supervisor_rpc
from .config.plan import Plan


@dataclass(frozen=True)
class RunDir:
    """The files `serve` writes and the supervised programs read."""
    root: Path

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"  # Plan.to_dict(): secrets redacted

    @property
    def conf(self) -> Path:
        return self.root / "supervisord.conf"

    @property
    def socket(self) -> Path:
        return self.root / "supervisor.sock"

    @property
    def fatal(self) -> Path:
        return self.root / "fatal"  # written by on-fatal: the program that failed; read by serve

    @property
    def state(self) -> Path:
        return self.root / "state.json"  # what supervision did (common/state.py): written by serve and the watchdog

    @property
    def password(self) -> Path:
        return self.root / "supervisor.password"  # mode 0600, new at every start

    def rpc(self) -> Any:  # a ServerProxy: Any, as its calls' results are (XML-RPC is untyped)
        """supervisord's XML-RPC interface (the watchdog, on-fatal and the tests use it)."""
        return supervisor_rpc(str(self.socket), self.password.read_text().strip())

    def log(self, program: str) -> Path:
        return self.root / f"{program}.log"

    @classmethod
    def of(cls, plan: Plan) -> "RunDir":
        return cls(Path(str(plan.appliance.run_dir)))


def read_plan(path: str | Path) -> Plan:
    """The plan `serve` wrote (secrets redacted: the programs take them from the environment)."""
    return Plan.from_dict(json.loads(Path(path).read_text()))
