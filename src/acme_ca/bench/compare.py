"""Side-by-side comparison of benchmark JSON files: `python -m acme_ca.bench.compare`.

Reads files written by `acme-ca bench --json`; never talks to a server.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from acme_ca.bench.report import LevelResult, render_comparison, write_plot

__all__ = ["load_runs", "main"]


def load_runs(specs: Sequence[str]) -> dict[str, list[LevelResult]]:
    """`LABEL=PATH` pairs; repeated labels concatenate their levels, in order given."""
    runs: dict[str, list[LevelResult]] = {}
    for spec in specs:
        label, sep, path = spec.partition("=")
        if not sep or not label or not path:
            raise ValueError(f"expected LABEL=PATH, got {spec!r}")
        with open(path, encoding="utf-8") as src:
            doc = json.load(src)
        runs.setdefault(label, []).extend(LevelResult.from_json(lv) for lv in doc["levels"])
    for results in runs.values():
        results.sort(key=lambda r: r.concurrency)
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m acme_ca.bench.compare")
    p.add_argument("runs", nargs="+", metavar="LABEL=PATH", help="the first label is the base")
    p.add_argument("--plot", metavar="PATH.png")
    args = p.parse_args(argv)
    try:
        runs = load_runs(args.runs)
    except (OSError, ValueError, KeyError) as exc:
        print(f"compare: {exc}", file=sys.stderr)
        return 2
    print(render_comparison(runs))
    stalls = [f"{label} c={r.concurrency}" for label, rs in runs.items() for r in rs if r.stalled]
    if stalls:
        print("stalled (rate measured up to the last completed flow): " + ", ".join(stalls))
    if args.plot and (error := write_plot(runs, args.plot)):
        print(f"compare: {error}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
