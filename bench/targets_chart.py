"""One chart per target, before and after, from a targets.json kept next to a run's results (its numbers
are the run's tables', each bar naming its source): one panel per target, the limit as a dashed line.

    python -m bench.targets_chart bench/runs/h200x2-2026-11-29-evening/targets.json
writes targets.png beside the JSON."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench import common as c


def chart(spec: dict, out: Path) -> int:
    plt = c.pyplot()
    if plt is None:
        return 1
    targets = spec["targets"]
    cols = 2
    rows = (len(targets) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 3.2 * rows), squeeze=False)
    for ax, t in zip([a for row in axes for a in row], targets):
        labels = [b["label"] for b in t["bars"]]
        values = [float(b["value"]) for b in t["bars"]]
        colors = ["#999999" if b["label"].startswith("before") else "#2b6cb0" for b in t["bars"]]
        ax.barh(labels, values, color=colors)
        ax.axvline(float(t["limit"]), color="#c53030", linestyle="--", label=f"target {t['limit']:g} {t['unit']}")
        for y, v in enumerate(values):
            ax.text(v, y, f" {v:g}", va="center", fontsize=8)
        ax.invert_yaxis()
        ax.set_title(t["name"], fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
        ax.tick_params(labelsize=8)
    for ax in [a for row in axes for a in row][len(targets):]:
        ax.axis("off")
    fig.suptitle(spec.get("title", ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    c.log(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("targets_json", type=Path)
    a = p.parse_args(argv)
    spec = json.loads(a.targets_json.read_text())
    for t in spec["targets"]:  # every bar names where its number comes from
        missing = [b["label"] for b in t["bars"] if not b.get("source")]
        if missing:
            raise SystemExit(f"{a.targets_json}: {t['name']}: bars without a source: {missing}")
    return chart(spec, a.targets_json.with_name("targets.png"))


if __name__ == "__main__":
    sys.exit(main())
