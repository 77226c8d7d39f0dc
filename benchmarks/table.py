"""Markdown tables for docs/PERFORMANCE.md from `acme-ca bench --json` files.

usage: .venv/bin/python benchmarks/table.py LABEL=FILE [LABEL=FILE ...]
A label may repeat (one file per concurrency level, as compare.sh writes them); the
first label is the base of the ratio column.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def main(argv: Sequence[str] | None = None) -> int:
    specs = list(sys.argv[1:] if argv is None else argv)
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for spec in specs:
        label, _, path = spec.partition("=")
        with open(path, encoding="utf-8") as src:
            for level in json.load(src)["levels"]:
                runs.setdefault(label, {})[int(level["concurrency"])] = level
    labels = list(runs)
    base = labels[0]
    print(
        "| conc | server | iss/s | vs " + base + " | p50 ms | p95 ms | p99 ms "
        "| server CPU ms/iss | issued | failed | stop |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for conc in sorted({c for levels in runs.values() for c in levels}):
        for label in labels:
            lv = runs[label].get(conc)
            if lv is None:
                continue
            lat = lv["issuance_latency_s"]
            ref = runs[base].get(conc)
            ratio = (
                f"{lv['issuances_per_s'] / ref['issuances_per_s']:.2f}x"
                if ref and ref["issuances_per_s"] and label != base
                else ""
            )
            print(
                f"| {conc} | {label} | {lv['issuances_per_s']:.2f} | {ratio} | {_ms(lat['p50'])} "
                f"| {_ms(lat['p95'])} | {_ms(lat['p99'])} "
                f"| {_ms(lv.get('server_cpu_s_per_issuance'))} | {lv['issued']} | {lv['failed']} "
                f"| {lv['stop_reason']} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
