"""Merges several runs of the training-step benchmark into one Markdown table: per case the
median of the runs' medians, and each provider's speed-up over eager as the median of the
runs' own ratios with their range. Each ratio pairs two timings from the same run, which
the step runner interleaves; a ratio of two medians taken from different runs would not.

    python bench/merge_runs.py run1/steps.csv run2/steps.csv run3/steps.csv > steps.md
    python bench/merge_runs.py bench/results/steps-cpu-avx512.csv    # one CSV with a `run` column

The machine line is the first row's (aigc_fast.benchmark.machine_line).
"""

from __future__ import annotations

import csv
import statistics
import sys
from collections import defaultdict
from typing import Dict, List, Tuple

from aigc_fast.benchmark import machine_line

DEFAULTS = ("fused", "bf16", "channels_last")  # the trainers' CPU defaults
PLAIN = ("eager", "fp32", "nchw")


def read(paths: List[str]) -> List[Dict[str, str]]:
    """Every row of the CSVs, each tagged with its run: the file's position and, in a file
    that merges several, its `run` column (so runs of different files never share an id)."""
    rows = []
    for number, path in enumerate(paths, 1):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                row["run"] = f"{number}:{row.get('run') or 1}"
                rows.append(row)
    return rows


def ratios(times: Dict[Tuple[str, str], float], base: str, provider: str, runs: List[str]) -> List[float]:
    return [times[base, run] / times[provider, run] for run in runs if (base, run) in times and (provider, run) in times]


def spread(values: List[float]) -> str:
    """The median ratio, and the runs' range when they differ."""
    text = f"{statistics.median(values):.2f}×"
    low, high = min(values), max(values)
    return text if len(values) == 1 or f"{low:.2f}" == f"{high:.2f}" else f"{text}, {low:.2f}-{high:.2f}"


def merge(rows: List[Dict[str, str]]) -> str:
    runs = list(dict.fromkeys(r["run"] for r in rows))
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    cases: Dict[tuple, Dict[Tuple[str, str], Dict[str, str]]] = defaultdict(dict)
    for r in rows:
        case = cases[r["workload"], r["precision"], r["memory_format"]]
        if (r["provider"], r["run"]) in case:  # (a ratio would pair timings of different runs)
            raise ValueError(f"run {r['run']} has two rows for {r['provider']} {r['workload']} {r['precision']} "
                             f"{r['memory_format']}")
        case[r["provider"], r["run"]] = r
    lines = [f"{machine_line(rows[0])}. One training step: median ms (the median of {len(runs)} runs' medians), "
             "and in brackets the speed-up over eager at the same setting (the median of the runs' own ratios, "
             "and their range).", "",
             "| workload | precision | layout | " + " | ".join(providers) + " | peak memory fused / eager |",
             "|---|---|---|" + "---:|" * (len(providers) + 1)]
    for (workload, precision, layout), by in cases.items():
        times = {key: float(r["median_s"]) for key, r in by.items()}
        cells = []
        for p in providers:
            mine = [times[p, run] for run in runs if (p, run) in times]
            if not mine:
                cells.append("")
                continue
            paired = ratios(times, "eager", p, runs) if p != "eager" else []
            cells.append(f"{statistics.median(mine) * 1e3:.1f}" + (f" ({spread(paired)})" if paired else ""))
        peak = {p: [int(by[p, run]["peak_bytes"]) for run in runs if by.get((p, run), {}).get("peak_bytes")]
                for p in ("fused", "eager")}
        memory = (f"{statistics.median(peak['fused']) / 2**20:.0f} / {statistics.median(peak['eager']) / 2**20:.0f} MiB"
                  if peak["fused"] and peak["eager"] else "")
        lines.append(f"| {workload} | {precision} | {layout} | " + " | ".join(cells) + f" | {memory} |")
    defaults = []
    for workload in dict.fromkeys(r["workload"] for r in rows):
        plain = {r["run"]: float(r["median_s"]) for r in rows
                 if (r["workload"], r["provider"], r["precision"], r["memory_format"]) == (workload, *PLAIN)}
        fast = {r["run"]: float(r["median_s"]) for r in rows
                if (r["workload"], r["provider"], r["precision"], r["memory_format"]) == (workload, *DEFAULTS)}
        per_run = [plain[run] / fast[run] for run in runs if run in plain and run in fast]
        if per_run:
            defaults.append(f"- {workload}: " + ", ".join(f"{v:.2f}×" for v in per_run))
    if defaults:
        lines += ["", "The defaults (fused, bf16, channels_last) against eager fp32 NCHW, per run:", "", *defaults]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print(merge(read(sys.argv[1:])), end="")
