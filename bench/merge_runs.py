"""Merges several runs of the training-step benchmark into one Markdown table: per case the
median of the runs' medians, and each provider's speed-up over eager as the median of the
runs' own ratios with their range (aigc_fast.benchmark.markdown). Each ratio pairs two
timings from the same run, which the step runner interleaves; a ratio of two medians taken
from different runs would not. Then the trainers' CPU defaults against eager fp32 NCHW,
per run.

    python bench/merge_runs.py run1/steps.csv run2/steps.csv run3/steps.csv > steps.md
    python bench/merge_runs.py bench/results/steps-cpu-avx512.csv    # one CSV with a `run` column
"""

from __future__ import annotations

import csv
import os
import sys
from typing import Dict, List

from aigc_fast.benchmark import markdown

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


def defaults_per_run(rows: List[Dict[str, str]]) -> List[str]:
    """Per workload, eager fp32 NCHW's time over the defaults' in each run."""
    lines = []
    for workload in dict.fromkeys(r["workload"] for r in rows):
        def times(setting):
            return {r["run"]: float(r["median_s"]) for r in rows
                    if (r["workload"], r["provider"], r["precision"], r["memory_format"]) == (workload, *setting)}

        plain, fast = times(PLAIN), times(DEFAULTS)
        per_run = [plain[run] / fast[run] for run in plain if run in fast]
        if per_run:
            lines.append(f"- {workload}: " + ", ".join(f"{v:.2f}×" for v in per_run))
    return lines


def merge(rows: List[Dict[str, str]]) -> str:
    defaults = defaults_per_run(rows)
    if not defaults:
        return markdown(rows)
    return markdown(rows) + "\n".join(["", "The defaults (fused, bf16, channels_last) against eager fp32 NCHW, per run:",
                                       "", *defaults]) + "\n"


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    missing = [name for name in sys.argv[1:] if not os.path.isfile(name)]
    if missing:
        sys.exit(f"merge_runs.py: no file {', '.join(missing)}")
    print(merge(read(sys.argv[1:])), end="")
