"""Turns pytest-benchmark JSON files of the op suites into the Markdown tables that
docs/benchmarks.md shows, and optionally a CSV (one row per measurement, with the machine) and a PNG chart
(speed-up over eager and peak memory over eager, forward+backward, per op and size).

    python bench/report.py bench/results/ops-cpu.json
    python bench/report.py reparameterize.json losses.json --csv ops.csv --chart ops.png > ops.md
    python bench/report.py --runs run1/ops.json run2/ops.json run3/ops.json > ops-runs.md

With --runs the files are repeated runs of the same suites, merged into one table per op:
each time the median of the runs' medians, each speed-up the median of the runs' own ratios
(both providers timed in the same run, back to back) and their range.
"""

import argparse
import csv
import json
import os
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from aigc_fast.benchmark import comparison_chart, machine_line, speedup_spread

# Providers that measure a floor, not an implementation. "clone" is the copy floor of the
# results recorded before it became "copy" (a copy into a buffer allocated beforehand).
FLOORS = ("copy", "clone", "autograd")
COPY_FLOORS = ("copy", "clone")
# What fused is set against, in this order. compile+aten_rng: the compiled reference drawing
# ATen's random numbers (reparameterize).
RIVALS = ("eager", "compile", "compile+aten_rng")
# What must match for runs to share a table or a chart.
SETUP = ("cpu", "gpu", "threads", "torch")


def floor_record(by):
    """The copy floor's measurement among one row's providers, under either name."""
    return by.get("copy") or by.get("clone")


def copy_floor(providers):
    """The copy floor's name among a table's providers, or None."""
    return next((p for p in COPY_FLOORS if p in providers), None)


def setups(records):
    """The distinct machines and setups the records come from."""
    return {tuple(r[k] for k in SETUP) for r in records}


def date_span(records):
    dates = sorted({r["date"] for r in records})
    return " to ".join(dict.fromkeys([dates[0], dates[-1]]))


def heading(record, date, what):
    """The line above a file's (or merged runs') tables: where and when, then what they hold."""
    return (f"Machine: {record['cpu']}, {record['threads']} threads, GPU: {record['gpu'] or 'none'}; torch "
            f"{record['torch']}; {date}. {what}\n")


def fmt_ms(seconds):
    return f"{seconds * 1e3:.3f}" if seconds < 0.01 else f"{seconds * 1e3:.2f}"


def fmt_bytes(n):
    if n is None:
        return "-"
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB" if n >= 2**10 else f"{n} B"


def machine(data):
    m = data["machine_info"]
    cpu = m.get("cpu", {}).get("brand_raw") or m.get("cpu_model")
    cpu = f"{cpu} ({m['cpu_isa']})" if m.get("cpu_isa") else cpu  # the ISA, where the run recorded it
    return {"date": data["datetime"][:10], "cpu": cpu, "threads": m.get("threads"), "gpu": m.get("gpu") or "",
            "torch": m.get("torch"), "aigc_fast": m.get("aigc_fast"), "kernels": m.get("kernels")}


def measurements(data):
    """One flat record per benchmark: where, what, and the numbers."""
    for b in data["benchmarks"]:
        x = b["extra_info"]
        yield {**machine(data), "op": x["op"], "device": x["device"], "pass": x["pass_"], "size": x["size"],
               "provider": x["provider"], "median_s": b["stats"]["median"], "iqr_s": b["stats"]["iqr"],
               "bytes_moved": x.get("bytes_moved"), "saved_for_backward_bytes": x.get("saved_for_backward_bytes"),
               "cuda_peak_bytes": x.get("cuda_peak_bytes"), "cpu_peak_bytes": x.get("cpu_peak_bytes")}


def gb_per_s(record):
    moved = record and record.get("bytes_moved")
    return moved / record["median_s"] / 1e9 if moved else None


def tables(records):
    """{op: {(device, pass, size): {provider: record}}}, in first-seen order."""
    out = defaultdict(lambda: defaultdict(dict))
    for r in records:
        out[r["op"]][r["device"], r["pass"], r["size"]][r["provider"]] = r
    return out


def print_table(rows, memory="all"):
    providers = list(dict.fromkeys(p for per_provider in rows.values() for p in per_provider))
    header = ["device", "pass", "size"] + providers
    has_speedup = {"fused", "eager"} <= set(providers)
    rivals = [p for p in RIVALS if p in providers] if has_speedup else []
    header += [f"fused vs {p}" for p in rivals]
    # Steps on a GPU: the trainers' default (the fused step as one CUDA graph) against plain
    # eager, and against eager replayed as a graph too (equal settings).
    graph_pairs = [(a, b) for a, b in (("fused+graph", "eager"), ("fused+graph", "eager+graph"))
                   if {a, b} <= set(providers)]
    header += [f"{a} vs {b}" for a, b in graph_pairs]
    floor = copy_floor(providers)
    if floor:
        header += [f"fused / {floor}"]
    has_bandwidth = any(gb_per_s(r.get("fused")) for r in rows.values())
    if has_bandwidth:
        header += ["GB/s fused / copy"]
    memory_columns = [
        (key, label)
        for key, label in (("saved_for_backward_bytes", "saved for bwd"), ("cuda_peak_bytes", "CUDA peak"),
                           ("cpu_peak_bytes", "CPU peak"))
        if memory == "all" or "peak" in label
        if any(v.get(key) is not None for r in rows.values() for v in r.values())
    ]
    measured = [p for p in providers if p not in FLOORS]  # the floors keep nothing
    for _, label in memory_columns:
        header += [f"{label} ({p})" for p in measured]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for key, by in rows.items():
        cells = list(key)
        for p in providers:
            cells.append(f"{fmt_ms(by[p]['median_s'])} ({fmt_ms(by[p]['iqr_s'])})" if p in by else "-")
        fused = by.get("fused", {}).get("median_s")
        for other in rivals:
            base = by.get(other, {}).get("median_s")
            cells.append(f"{base / fused:.2f}x" if fused and base else "-")  # (0.97x is not 1.0x)
        for a, b in graph_pairs:
            mine, base = by.get(a, {}).get("median_s"), by.get(b, {}).get("median_s")
            cells.append(f"{base / mine:.2f}x" if mine and base else "-")
        if floor:
            floor_s = (floor_record(by) or {}).get("median_s")
            cells.append(f"{fused / floor_s:.2f}" if fused and floor_s else "-")
        if has_bandwidth:
            achieved, copy = gb_per_s(by.get("fused")), gb_per_s(floor_record(by))
            cells.append("-" if achieved is None else f"{achieved:.1f}" if copy is None
                         else f"{achieved:.1f} / {copy:.1f} ({100 * achieved / copy:.0f}%)")
        for key_, _ in memory_columns:
            cells += [fmt_bytes(by[p].get(key_)) if p in by else "-" for p in measured]
        print("| " + " | ".join(cells) + " |")


def print_runs_table(rows):
    """rows: {(device, pass, size): {provider: [record per run]}}, as runs_tables builds."""
    providers = list(dict.fromkeys(p for by in rows.values() for p in by))
    rivals = [p for p in RIVALS if p in providers] if "fused" in providers else []
    floor = copy_floor(providers)
    header = ["device", "pass", "size", *providers, *(f"fused vs {p}" for p in rivals)]
    header += [f"fused / {floor}"] if floor else []
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for key, by in rows.items():
        cells = list(key)
        cells += [fmt_ms(statistics.median(r["median_s"] for r in by[p])) if p in by else "-" for p in providers]
        for other in [*rivals, *([floor] if floor else [])]:
            # Each ratio pairs two timings of one run (runs_tables made sure each run has both).
            pairs = [(mine["median_s"], base["median_s"]) for mine, base in zip(by.get("fused", []), by.get(other, []))]
            ratios = [b / f if other != floor else f / b for f, b in pairs]
            cells.append(speedup_spread(ratios) if ratios else "-")
        print("| " + " | ".join(cells) + " |")


def runs_tables(runs):
    """{op: {(device, pass, size): {provider: [record per run]}}} from each run's records;
    a case's runs line up by position, so a case missing from a run is refused."""
    out = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for records in runs:
        for r in records:
            out[r["op"]][r["device"], r["pass"], r["size"]][r["provider"]].append(r)
    for op, rows in out.items():
        for key, by in rows.items():
            for provider, found in by.items():
                if len(found) != len(runs):
                    raise SystemExit(f"--runs: {op} {' '.join(key)} {provider} is in {len(found)} of the "
                                     f"{len(runs)} runs; merge runs of the same suites")
    return out


def write_csv(records, path):
    if not records:
        raise SystemExit(f"{path}: no measurements to write")
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]) + ["gb_per_s"])
        writer.writeheader()
        writer.writerows({**r, "gb_per_s": gb_per_s(r)} for r in records)


def chart(records, path):
    """Rows that have both a fused and an eager measurement, forward+backward for the ops
    (a training step's rows are by setting): each provider's speed-up over eager, and the
    fused peak memory over eager's. Titled with the machine; records of several machines
    are refused (one chart, one machine)."""
    machines = setups(records)
    if len(machines) > 1:
        raise SystemExit(f"--chart: the JSON files come from {len(machines)} machines or setups; chart them one by one")
    labels, speedups, memory = [], defaultdict(list), []
    # eager is the baseline; the floors, the conv-only part and the memory-saving mode (timed
    # against fused, not eager) are not implementations of the op to set against it
    providers = [p for p in dict.fromkeys(r["provider"] for r in records)
                 if p not in ("eager", "conv only", "memory_efficient", *FLOORS)]
    for op, rows in tables(records).items():
        for (device, pass_, size), by in rows.items():
            if pass_ in ("fwd", "bwd") or not {"fused", "eager"} <= set(by):
                continue
            setting = "" if pass_ == "fwd+bwd" else f" {pass_}"  # a training step's precision and layout
            labels.append(f"{op} {size}{setting}" + (f" {device}" if device != "cpu" else ""))
            eager = by["eager"]
            for p in providers:
                speedups[p].append(eager["median_s"] / by[p]["median_s"] if p in by else None)
            peak = "cuda_peak_bytes" if device.startswith("cuda") else "cpu_peak_bytes"
            fused_peak, eager_peak = by["fused"].get(peak), eager.get(peak)
            memory.append(fused_peak / eager_peak if fused_peak and eager_peak else None)
    where = machine_line({**records[0], "date": date_span(records)})
    return comparison_chart(labels, dict(speedups), memory, Path(path), title=f"speed-up over eager; {where}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json_files", nargs="+")
    parser.add_argument("--memory", choices=["all", "peak"], default="all",
                        help="memory columns: all, or only the peak ones (narrower tables)")
    parser.add_argument("--csv", help="also write every measurement to this CSV file")
    parser.add_argument("--chart", help="also draw the speed-up and memory chart to this PNG file")
    parser.add_argument("--runs", action="store_true",
                        help="the files are repeated runs of the same suites: merge them (see above)")
    args = parser.parse_args(argv)
    missing = [name for name in args.json_files if not Path(name).is_file()]
    if missing:
        parser.error(f"no file {', '.join(missing)}")
    if args.runs and (args.csv or args.chart):
        parser.error("--runs prints the merged tables only; write a CSV or chart per run")
    for option, out in (("--csv", args.csv), ("--chart", args.chart)):  # before the tables, not after them
        if out and (Path(out).is_dir() or not Path(out).absolute().parent.is_dir()):
            parser.error(f"{option} {out}: a file to write, in a folder that exists")
    loaded = {}
    for name in args.json_files:
        try:
            with open(name, "rb") as f:
                loaded[name] = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            parser.error(f"{name} is not a JSON file ({error}): give the files pytest-benchmark's "
                         "--benchmark-json wrote")
        if not (isinstance(loaded[name], dict) and {"machine_info", "benchmarks"} <= loaded[name].keys()):
            parser.error(f"{name} is JSON, but not what pytest-benchmark's --benchmark-json writes "
                         "(machine_info and benchmarks)")
    if args.runs:
        runs = [list(measurements(loaded[name])) for name in args.json_files]
        every = [r for records in runs for r in records]
        if len(setups(every)) > 1:
            raise SystemExit("--runs: the files come from different machines or setups; merge runs of one")
        print(heading(every[0], f"{date_span(every)}; {len(runs)} runs",
                      "Median of the runs' medians in ms; speed-ups as the median of the runs' own ratios, then "
                      "their range."))
        for op, rows in runs_tables(runs).items():
            print(f"**{op}**\n")
            print_runs_table(rows)
            print()
        return
    records = []
    for name in args.json_files:
        data = loaded[name]
        m = machine(data)
        print(heading(m, m["date"], "Medians in ms (IQR in brackets)."))
        found = list(measurements(data))
        records += found
        for op, rows in tables(found).items():
            print(f"**{op}**\n")
            print_table(rows, args.memory)
            print()
    if args.csv:
        write_csv(records, args.csv)
    if args.chart and chart(records, args.chart) is None:
        print("no chart: pip install matplotlib", file=sys.stderr)


if __name__ == "__main__":
    try:
        main()
        sys.stdout.flush()
    except BrokenPipeError:  # report.py ... | head: the reader is gone; stop quietly, as Python's docs advise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
