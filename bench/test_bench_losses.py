"""GAN and VAE losses: fused vs eager reference vs torch.compile(reference), forward and
forward+backward, at the sizes training uses. Two floors no implementation can beat:
"copy" copies as many bytes as the fused kernels read and write ("bytes_moved": the
inputs, and the gradients, written once in the forward pass; loss.backward() returns them
as they are) into a buffer allocated beforehand, and "autograd" runs forward+backward of
a one-op graph (the first input's sum): the autograd engine's fixed cost per backward.

    pytest bench/test_bench_losses.py --benchmark-json=losses.json
    python bench/report.py losses.json
"""

import pytest
import torch

import aigc_fast
from aigc_fast import reference

from conftest import (copy_floor, devices, nbytes, op_step, peak_memory, saved_for_backward_bytes, skip_gpu_only,
                      synchronized)

LOGIT_COUNTS = [64, 512, 4096]
# name: (batch, image shape, latent): MNIST-like and CelebA-64-like VAEs.
VAE_SIZES = {
    "b64 1x28x28 z16": (64, (1, 28, 28), 16),
    "b128 1x28x28 z32": (128, (1, 28, 28), 32),
    "b512 1x28x28 z256": (512, (1, 28, 28), 256),
    "b64 3x64x64 z128": (64, (3, 64, 64), 128),
    "b128 3x64x64 z128": (128, (3, 64, 64), 128),
    "b512 3x64x64 z256": (512, (3, 64, 64), 256),
}
GPU_VAE_SIZES = {"b2048 3x128x128 z512": (2048, (3, 128, 128), 512)}  # 384 MiB an image tensor
ALL_VAE_SIZES = {**VAE_SIZES, **GPU_VAE_SIZES}
_compiled = {name: torch.compile(getattr(reference, name), dynamic=False) for name in ("gan_d_loss", "vae_loss")}


PROVIDERS = ["fused", "eager", "compile", "copy", "autograd"]
FLOORS = ("copy", "autograd")


def provider_fn(provider, name):
    if provider == "fused":
        return lambda *a, **k: getattr(aigc_fast, name)(*a, impl="fused", **k)
    return getattr(reference, name) if provider == "eager" else _compiled[name]


def run_benchmark(benchmark, device, fn, inputs, pass_, op, size, provider):
    leaves = [t for t in inputs if t.requires_grad]
    moved = nbytes(*inputs, *leaves)
    if provider == "copy":
        step = copy_floor(moved, device)
    elif provider == "autograd":
        def step():
            for t in leaves:
                t.grad = None
            leaves[0].sum().backward()
    else:
        def run():
            out = fn(*inputs)
            return (out[0] if isinstance(out, tuple) else out), None  # the loss

        step = op_step(run, pass_, leaves)

    step()  # compile / warm up
    numel = sum(t.numel() for t in inputs)
    benchmark.group = f"{op} {pass_} {size} {device}"
    benchmark.extra_info.update(op=op, provider=provider, size=size, numel=numel, pass_=pass_, device=device,
                                bytes_moved=moved if provider in ("fused", "copy") else None)
    benchmark.pedantic(synchronized(step, device), rounds=30 if numel >= 1 << 20 else 200, warmup_rounds=3, iterations=1)
    if pass_ == "fwd+bwd" and provider not in FLOORS:
        benchmark.extra_info["saved_for_backward_bytes"] = saved_for_backward_bytes(fn, *inputs)
        benchmark.extra_info.update(peak_memory(step, device, leaves))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("count", LOGIT_COUNTS)
@pytest.mark.parametrize("kind", ["bce", "hinge"])
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
def test_gan_d_loss(benchmark, device, count, kind, provider, pass_):
    if provider in FLOORS and pass_ == "fwd":
        pytest.skip("the floors are listed once, with forward+backward")
    grad = pass_ == "fwd+bwd"
    real = torch.randn(count, 1, device=device, requires_grad=grad)
    fake = torch.randn(count, 1, device=device, requires_grad=grad)
    loss = provider_fn(provider, "gan_d_loss") if provider not in FLOORS else None
    run_benchmark(benchmark, device, lambda r, f: loss(r, f, kind), (real, fake), pass_,
                  f"gan_d_loss ({kind})", f"{count} logits", provider)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("size", ALL_VAE_SIZES)
@pytest.mark.parametrize("recon_loss", ["bce", "mse"])
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
def test_vae_loss(benchmark, device, size, recon_loss, provider, pass_):
    if provider in FLOORS and pass_ == "fwd":
        pytest.skip("the floors are listed once, with forward+backward")
    skip_gpu_only(device, size, GPU_VAE_SIZES)
    batch, image, latent = ALL_VAE_SIZES[size]
    grad = pass_ == "fwd+bwd"
    recon = torch.randn(batch, *image, device=device, requires_grad=grad)
    target = torch.rand(batch, *image, device=device)
    mu = torch.randn(batch, latent, device=device, requires_grad=grad)
    logvar = (0.5 * torch.randn(batch, latent, device=device)).requires_grad_(grad)
    loss = provider_fn(provider, "vae_loss") if provider not in FLOORS else None
    run_benchmark(benchmark, device, lambda *t: loss(*t, recon_loss=recon_loss), (recon, target, mu, logvar),
                  pass_, f"vae_loss ({recon_loss})", size, provider)
