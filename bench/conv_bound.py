"""How far fused ops can move a CPU training step: the vendor convolutions' share of it.

Issue 6 asks the trainers' defaults (fused, bf16 autocast, channels_last) for at least 2x
the eager fp32 NCHW step. Per workload this times both steps and takes, from profiled
default steps, the time of the convolutions (the profiler's self time of oneDNN's ops,
forward and backward): what no fused op of this package can remove. If they alone take
about the half of eager's step that the 2x allows, the goal rests on the convolutions.
Then the conv-transpose the issue names (256->128, k4 s2, batch 64) alone, forward and
backward, in each setting: how much bf16 and channels_last give on this CPU.

The steps here run as a training loop runs them: only these two, each timed right after an
untimed step of its own. On the 2-core EPYC their ratio came out 4-10% higher this way
than among `aigc-fast bench`'s interleaved cases (docs/benchmarks.md; bench/results/harness-ab-*).

    python bench/conv_bound.py                         (Markdown on stdout)
    python bench/conv_bound.py --workloads vae28 --rounds 5
"""

import argparse
import statistics

import torch
from torch import nn

from aigc_fast import benchmark
from aigc_fast.cli import comma_list
from profile_ops import machine, wall_ms

SETTINGS = [("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]


def _layout(channels_last):
    return "channels_last" if channels_last else "nchw"


def step_bound(workload, rounds):
    """(eager fp32 NCHW step ms, default step ms, the default step's convolution ms: the
    median of `rounds` profiled steps)."""
    eager, _ = benchmark.make_step(workload, "eager", precision="fp32")
    fused, _ = benchmark.make_step(workload, "fused", precision="bf16", channels_last=True)
    times = {"eager": [], "fused": []}
    for _ in range(rounds):  # in turns, so that a slow spell of this shared host hits both
        for name, step in (("eager", eager), ("fused", fused)):
            times[name] += benchmark.time_step(step, warmup=1, repeats=1)
    conv = [benchmark.op_times(fused)["convolution"] for _ in range(rounds)]
    return (1e3 * statistics.median(times["eager"]), 1e3 * statistics.median(times["fused"]),
            statistics.median(conv))


def conv_transpose_ms(batch, side, precision, channels_last, rounds):
    """Forward+backward (input and weight gradients, none kept between calls) of
    ConvTranspose2d(256, 128, 4, 2, 1) on a batch x 256 x side x side input; bf16 as a step
    runs it: under autocast, on the 16-bit activations the layer before produces."""
    bf16 = precision == "bf16"
    layer = nn.ConvTranspose2d(256, 128, 4, 2, 1, bias=False)
    x = torch.randn(batch, 256, side, side, dtype=torch.bfloat16 if bf16 else torch.float32)
    grad = torch.randn(batch, 128, 2 * side, 2 * side, dtype=x.dtype)
    if channels_last:
        layer, x, grad = (t.to(memory_format=torch.channels_last) for t in (layer, x, grad))
    x.requires_grad_()

    def step():
        layer.weight.grad = x.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = layer(x)
        out.backward(grad)

    step()
    return wall_ms(step, "cpu", rounds)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default="dcgan28,vae28", type=comma_list(tuple(benchmark.WORKLOADS)))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=64, help="the conv-transpose's batch")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.batch < 1:
        parser.error("--rounds and --batch must be at least 1")
    facts = benchmark.machine_facts()
    print(f"{machine('cpu')}, {facts['cpu']}, {facts['date']}.\n")

    print("**The step's convolutions against the 2x budget** (ms; steps: median of "
          f"{args.rounds}, in turns; convolutions: median of {args.rounds} profiled default steps)\n")
    print("| workload | eager fp32 NCHW step | 2x allows | default step | its convolutions | the rest | "
          "default vs eager |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for workload in args.workloads:
        eager, fused, conv = step_bound(workload, args.rounds)
        print(f"| {workload} | {eager:.1f} | {eager / 2:.1f} | {fused:.1f} | {conv:.1f} ({100 * conv / fused:.0f}%) "
              f"| {fused - conv:.1f} | {eager / fused:.2f}x |")

    print(f"\n**ConvTranspose2d(256, 128, 4, 2, 1) alone, batch {args.batch}, forward+backward** (ms; median "
          f"of {args.rounds} rounds of 10 calls)\n")
    print("| input | " + " | ".join(f"{p} {_layout(cl)}" for p, cl in SETTINGS) + " | fp32 NCHW / bf16 channels_last |")
    print("|---|" + "---:|" * (len(SETTINGS) + 1))
    for side in (7, 8):
        ms = [conv_transpose_ms(args.batch, side, p, cl, args.rounds) for p, cl in SETTINGS]
        print(f"| {side}x{side} -> {2 * side}x{2 * side} | " + " | ".join(f"{t:.1f}" for t in ms)
              + f" | {ms[0] / ms[-1]:.2f}x |")


if __name__ == "__main__":
    main()
