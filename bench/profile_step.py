"""Where one whole training step spends its time, fused against eager: the step's wall
time, its kernels' total device time and count, and the kernels that take most of it
(summed by name over the step). A wall time far above the kernel time is host cost
(launches, allocations, autograd, Python); a fused step whose kernel time is above
eager's has a slow kernel, named in the table. The per-op view is bench/profile_ops.py.

    python bench/profile_step.py                       (a GPU: dcgan64,vae64 in bf16 channels_last)
    python bench/profile_step.py --workloads dcgan28 --precision fp32 --layout nchw --top 5
"""

import argparse
from collections import defaultdict

import torch

from aigc_fast import benchmark
from aigc_fast.cli import comma_list
from profile_ops import _short, check_device, machine, profile_events, wall_ms


def kernel_totals(step, device):
    """({kernel name: (calls, device us)}, host ATen calls) of one step."""
    aten, kernels = profile_events(step, device)
    totals = defaultdict(lambda: [0, 0.0])
    for e in kernels:
        totals[e.name][0] += 1
        totals[e.name][1] += e.time_range.elapsed_us()
    return totals, aten


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workloads", default="dcgan64,vae64", type=comma_list(tuple(benchmark.WORKLOADS)))
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--layout", default="channels_last", choices=("nchw", "channels_last"))
    parser.add_argument("--providers", default="fused,eager", type=comma_list(tuple(benchmark.PROVIDERS)))
    parser.add_argument("--top", type=int, default=12, help="kernels listed per step")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    check_device(parser, args.device)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    print(f"{machine(args.device)}, {args.precision} {args.layout}. One training step per row "
          "(wall: median of rounds of 10).\n")
    for workload in args.workloads:
        print(f"**{workload}**\n")
        print("| provider | wall ms | host ATen calls | kernels | kernel ms | longest kernels, summed by name: calls x, ms |")
        print("|---|---:|---:|---:|---:|---|")
        for provider in args.providers:
            step, _ = benchmark.make_step(workload, provider, precision=args.precision,
                                          channels_last=args.layout == "channels_last", device=args.device)
            benchmark.time_step(step, warmup=3, repeats=0)
            ms = wall_ms(step, args.device, args.repeats)
            totals, aten = kernel_totals(step, args.device)
            kernel_ms = sum(us for _, us in totals.values()) / 1e3
            count = sum(n for n, _ in totals.values())
            top = sorted(totals.items(), key=lambda kv: -kv[1][1])[: args.top]
            listed = "<br>".join(f"{_short(name, 70)} {n}x {us / 1e3:.3f}" for name, (n, us) in top) or "-"
            # (The CPU profile has no kernel events: "-" there, as in profile_ops.py, not a measured 0.)
            kernel_cols = f"{count} | {kernel_ms:.2f}" if args.device == "cuda" else "- | -"
            print(f"| {provider} | {ms:.2f} | {aten} | {kernel_cols} | {listed} |")
        print()


if __name__ == "__main__":
    main()
