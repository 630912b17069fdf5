"""Where one forward+backward of each fused op (and of its eager twin) spends its time: the
wall time per call, the ATen calls it makes on the host (on CUDA, most are a kernel
launch or an allocation), the kernels it launches and their total time on the device, and
its longest kernels. Read this first when an op is far from the copy bandwidth: a wall
time far above the kernel time is host cost (launches, allocations, autograd), which no
kernel tuning removes.

    python bench/profile_ops.py --device cuda            (a Markdown table on stdout)
    python bench/profile_ops.py --device cpu --scale 0.01

Sizes are the op suites' largest (bench/test_bench_*.py); --scale shrinks every batch.
"""

import argparse
import functools
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile

import aigc_fast
from aigc_fast import reference


@dataclass
class Case:
    op: str
    # (impl, scale) -> (one forward+backward, the size it runs)
    make: Callable[[str, float], tuple[Callable[[], None], str]]


def _leaf(*shape, device, memory_format=torch.contiguous_format):
    return torch.randn(*shape, device=device).to(memory_format=memory_format).requires_grad_()


def _batch(n, scale):
    return max(2, round(n * scale))


def _op(name, impl):
    """The fused op, asked for by name (so a missing or unusable build is refused rather than
    profiled as "fused" on the reference), or its reference twin."""
    if impl == "fused":
        return functools.partial(getattr(aigc_fast, name), impl="fused")
    return getattr(reference, name)


def _training_step(run, *leaves):
    """`run` as a training step calls it: the leaves' gradients freed first (as
    zero_grad(set_to_none=True) does), so a call neither adds into the last call's gradients
    nor skips the losses' zero-copy backward."""
    def step():
        for t in leaves:
            t.grad = None
        run()
    return step


def _reparameterize(device):
    def make(impl, scale):
        rows = _batch(2048, scale)
        mu, logvar = _leaf(rows, 2048, device=device), _leaf(rows, 2048, device=device)
        fn = _op("reparameterize", impl)

        def run():
            z, kl = fn(mu, logvar, return_kl=True)
            (z.sum() + kl.sum()).backward()
        return _training_step(run, mu, logvar), f"{rows}x2048"
    return Case("reparameterize (z+kl)", make)


def _gan_d_loss(device):
    def make(impl, scale):
        n = _batch(4096, scale)
        real, fake = _leaf(n, 1, device=device), _leaf(n, 1, device=device)
        fn = _op("gan_d_loss", impl)
        return _training_step(lambda: fn(real, fake, "bce").backward(), real, fake), f"{n}"
    return Case("gan_d_loss (bce)", make)


def _vae_loss(device):
    def make(impl, scale):
        b = _batch(512, scale)
        recon, mu, logvar = _leaf(b, 3, 64, 64, device=device), _leaf(b, 256, device=device), _leaf(b, 256, device=device)
        target = torch.rand(b, 3, 64, 64, device=device)
        fn = _op("vae_loss", impl)
        return (_training_step(lambda: fn(recon, target, mu, logvar)[0].backward(), recon, mu, logvar),
                f"b{b} 3x64x64, z256")
    return Case("vae_loss (bce)", make)


def _bias_act(device):
    def make(impl, scale):
        x = _leaf(_batch(128, scale), 64, 32, 32, device=device)
        bias = _leaf(64, device=device)
        grad = torch.randn_like(x)
        fn = _op("bias_act", impl)
        return _training_step(lambda: fn(x, bias, "leaky_relu").backward(grad), x, bias), "x".join(map(str, x.shape))
    return Case("bias_act (leaky_relu)", make)


def _bn_act(device, channels_last):
    def make(impl, scale):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        x = _leaf(_batch(64, scale), 64, 32, 32, device=device, memory_format=fmt)
        bn = torch.nn.BatchNorm2d(64).to(device)
        grad = torch.randn_like(x)
        fn = _op("bn_act", impl)

        def run():
            fn(x, bn.weight, bn.bias, bn.running_mean, bn.running_var, training=True, act="relu",
               num_batches_tracked=bn.num_batches_tracked).backward(grad)
        return _training_step(run, x, bn.weight, bn.bias), "x".join(map(str, x.shape)) + (" channels_last" if channels_last else " nchw")
    return Case("bn_act (relu, training)", make)


def cases(device):
    return [_reparameterize(device), _gan_d_loss(device), _vae_loss(device), _bias_act(device),
            _bn_act(device, False), _bn_act(device, True)]


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def wall_ms(step, device, repeats):
    """Median over `repeats` rounds of 10 calls, synchronized."""
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        for _ in range(10):
            step()
        _sync(device)
        times.append((time.perf_counter() - start) / 10 * 1e3)
    return statistics.median(times)


def profile_events(step, device):
    """(host ATen calls, CUDA kernel events) of one call of step, synchronized."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        _sync(device)
    events = prof.events()
    # Top-level ATen calls: the ones not made by another ATen op.
    aten = sum(1 for e in events if e.name.startswith("aten::")
               and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")))
    # Device events are kernels and copies, and also the GPU-side spans of host annotations
    # (Optimizer.step's record_function): those would count their kernels' time twice.
    return aten, [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA
                  and not getattr(e, "is_user_annotation", False)]


def profile_once(step, device):
    """(host ATen calls, kernels, kernel ms, the three longest kernels) of one call."""
    aten, kernels = profile_events(step, device)
    kernel_us = [(e.time_range.elapsed_us(), e.name) for e in kernels]
    longest = sorted(kernel_us, reverse=True)[:3]
    return aten, len(kernels), sum(us for us, _ in kernel_us) / 1e3, longest


def machine(device):
    """The first words of a profile's heading: device, GPU, torch, threads."""
    gpu = torch.cuda.get_device_name() if device == "cuda" else "none"
    return f"{device}, GPU: {gpu}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def _short(name, width=48):
    return name if len(name) <= width else name[: width - 3] + "..."


def check_device(parser: argparse.ArgumentParser, device: str) -> None:
    """A device this machine has (the trainers' check): torch's own error would come from
    inside the first op."""
    from aigc_fast.train.trainer import _check_device

    if device not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu or cuda, got {device!r}")
    try:
        _check_device(device)
    except ValueError as error:
        parser.error(str(error))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every batch size")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    check_device(parser, args.device)
    if args.repeats < 1 or args.scale <= 0:
        parser.error(f"--repeats must be at least 1 and --scale positive, got {args.repeats} and {args.scale}")
    print(f"{machine(args.device)}, scale {args.scale}. One forward+backward per row.\n")
    print("| op | size | impl | wall ms | host ATen calls | kernels | kernel ms | longest kernels (us) |")
    print("|---|---|---|---:|---:|---:|---:|---|")
    for case in cases(args.device):
        for impl in ("fused", "eager"):
            step, size = case.make(impl, args.scale)
            for _ in range(3):
                step()  # warm-up: allocator, autograd graph, lazy initialization
            ms = wall_ms(step, args.device, args.repeats)
            calls, n_kernels, kernel_ms, longest = profile_once(step, args.device)
            top = ", ".join(f"{_short(name)} {us:.0f}" for us, name in longest) or "-"
            device_cols = f"{n_kernels} | {kernel_ms:.3f}" if args.device == "cuda" else "- | -"
            print(f"| {case.op} | {size} | {impl} | {ms:.3f} | {calls} | {device_cols} | {top} |")


if __name__ == "__main__":
    main()
