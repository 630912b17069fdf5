"""Turns a pytest-benchmark JSON file into the Markdown table the README shows.

    python bench/report.py bench/results/reparameterize.json
"""

import argparse
import json
from collections import defaultdict


def fmt_ms(seconds):
    return f"{seconds * 1e3:.3f}" if seconds < 0.01 else f"{seconds * 1e3:.2f}"


def fmt_bytes(n):
    return "-" if n is None else f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB" if n else "0"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("json_file")
    parser.add_argument("--memory", choices=["all", "peak"], default="all",
                        help="memory columns: all, or only the peak ones (narrower tables)")
    args = parser.parse_args(argv)
    data = json.load(open(args.json_file))
    m = data["machine_info"]
    cpu = m.get("cpu", {}).get("brand_raw") or m.get("cpu_model")
    print(
        f"Machine: {cpu}, {m.get('threads')} threads, GPU: {m.get('gpu') or 'none'}; "
        f"torch {m.get('torch')}; {data['datetime'][:10]}. Medians in ms (IQR in brackets).\n"
    )
    tables = defaultdict(lambda: defaultdict(dict))  # one table per op
    for b in data["benchmarks"]:
        x = b["extra_info"]
        key = (x["device"], x["pass_"], x["size"])
        tables[x["op"]][key][x["provider"]] = (
            b["stats"]["median"], b["stats"]["iqr"], x.get("saved_for_backward_bytes"), x.get("cuda_peak_bytes"),
            x.get("cpu_peak_bytes"),
        )
    for op, rows in tables.items():
        print(f"**{op}**\n")
        print_table(rows, args.memory)
        print()


def print_table(rows, memory="all"):
    providers = []
    for per_provider in rows.values():
        providers += [p for p in per_provider if p not in providers]
    header = ["device", "pass", "size"] + providers
    has_speedup = {"fused", "eager"} <= set(providers)
    if has_speedup:
        header += ["fused vs eager"] + (["fused vs compile"] if "compile" in providers else [])
    if "clone" in providers:
        header += ["fused / clone"]
    memory_columns = [
        (index, label)
        for index, label in ((2, "saved for bwd"), (3, "CUDA peak"), (4, "CPU peak"))
        if memory == "all" or "peak" in label
        if any(len(v) > index and v[index] is not None for r in rows.values() for v in r.values())
    ]
    measured = [p for p in providers if p not in ("clone", "autograd")]  # the floors keep nothing
    for _, label in memory_columns:
        header += [f"{label} ({p})" for p in measured]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for key, per_provider in rows.items():
        cells = list(key)
        for p in providers:
            cells.append(f"{fmt_ms(per_provider[p][0])} ({fmt_ms(per_provider[p][1])})" if p in per_provider else "-")
        if has_speedup:
            fused = per_provider.get("fused", (None,))[0]
            for other in ["eager"] + (["compile"] if "compile" in providers else []):
                base = per_provider.get(other, (None,))[0]
                cells.append(f"{base / fused:.1f}x" if fused and base else "-")
        if "clone" in providers:
            fused, clone = per_provider.get("fused", (None,))[0], per_provider.get("clone", (None,))[0]
            cells.append(f"{fused / clone:.1f}" if fused and clone else "-")
        for index, _ in memory_columns:
            cells += [fmt_bytes(per_provider[p][index]) if p in per_provider and len(per_provider[p]) > index else "-"
                      for p in measured]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
