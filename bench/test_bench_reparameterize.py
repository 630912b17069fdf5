"""Reparameterization: fused vs eager reference vs torch.compile(reference), forward and
forward+backward, from a VAE latent (128 x 64) to 4M elements, sampling alone ("z") and
with the per-sample KL a VAE needs ("z+kl"). "copy" reads and writes as many bytes
as the fused kernels do (MOVED), into a buffer allocated beforehand: the memory floor.

    pytest bench/test_bench_reparameterize.py --benchmark-json=reparameterize.json
    python bench/report.py reparameterize.json
"""

import math

import pytest
import torch

import aigc_fast
from aigc_fast.reference import reparameterize as reference

from conftest import (copy_floor, devices, op_step, peak_memory, saved_for_backward_bytes, skip_gpu_only,
                      synchronized)

SHAPES = {"128x64": (128, 64), "512x512": (512, 512), "1M": (1024, 1024), "4M": (4096, 1024)}
GPU_SHAPES = {"128M": (16384, 8192)}  # 512 MiB a tensor (conftest.skip_gpu_only)
ALL_SHAPES = {**SHAPES, **GPU_SHAPES}
_compiled_reference = torch.compile(reference, dynamic=False)
# Inductor draws CPU random numbers with its own generated code, slower than ATen's (3.3x at
# 4M on the AVX-512 EPYC); fallback_random makes the compiled reference call ATen's randn as
# eager does, so this provider races the rest of compile's fusion, not its RNG.
_compiled_aten_rng = torch.compile(reference, dynamic=False, options={"fallback_random": True})

PROVIDERS = {
    "fused": lambda mu, lv, kl: aigc_fast.reparameterize(mu, lv, return_kl=kl, impl="fused"),
    "eager": lambda mu, lv, kl: reference(mu, lv, return_kl=kl),
    "compile": lambda mu, lv, kl: _compiled_reference(mu, lv, return_kl=kl),
    "compile+aten_rng": lambda mu, lv, kl: _compiled_aten_rng(mu, lv, return_kl=kl),
}
# Latent-sized tensors the fused kernels read and write: the forward reads mu and logvar and
# writes z (the per-sample KL is negligible); the backward reads grad_z, mu, z and logvar
# (which says where z - mu would lose precision) and writes grad_logvar (grad_mu is grad_z
# itself, which autograd copies into mu.grad because the caller still holds it, as it does
# for eager; that copy is not counted); with the KL it writes both gradients.
MOVED = {("z", "fwd"): 3, ("z", "fwd+bwd"): 8, ("z+kl", "fwd"): 3, ("z+kl", "fwd+bwd"): 9}


def make_inputs(shape, device, requires_grad):
    mu = torch.randn(shape, device=device, requires_grad=requires_grad)
    logvar = (0.5 * torch.randn(shape, device=device)).requires_grad_(requires_grad)
    return mu, logvar


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("size", ALL_SHAPES)
@pytest.mark.parametrize("provider", [*PROVIDERS, "copy"])
@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("outputs", ["z", "z+kl"])
def test_reparameterize(benchmark, device, size, provider, pass_, outputs):
    skip_gpu_only(device, size, GPU_SHAPES)
    shape = ALL_SHAPES[size]
    with_kl = outputs == "z+kl"
    moved = MOVED[outputs, pass_] * 4 * math.prod(shape)  # float32

    def fn(mu, logvar):
        return PROVIDERS[provider](mu, logvar, with_kl)

    mu, logvar = make_inputs(shape, device, requires_grad=pass_ == "fwd+bwd")
    grads = (torch.ones(shape, device=device), torch.ones(shape[0], device=device))
    if provider == "copy":
        step = copy_floor(moved, device)
    else:
        step = op_step(lambda: (fn(mu, logvar), grads if with_kl else grads[0]), pass_, (mu, logvar))

    step()  # compile / warm up
    benchmark.group = f"reparameterize {outputs} {pass_} {size} {device}"
    benchmark.extra_info.update(op=f"reparameterize ({outputs})", provider=provider, size=size, numel=mu.numel(),
                                pass_=pass_, device=device,
                                bytes_moved=moved if provider in ("fused", "copy") else None)
    benchmark.pedantic(synchronized(step, device), rounds=20 if mu.numel() >= 1 << 20 else 200,
                       warmup_rounds=3, iterations=1)
    if provider == "copy":
        return
    if pass_ == "fwd+bwd":
        benchmark.extra_info["saved_for_backward_bytes"] = saved_for_backward_bytes(fn, mu, logvar)
        benchmark.extra_info.update(peak_memory(step, device, (mu, logvar)))


@pytest.mark.parametrize("source", ["z - mu", "regenerate"])
def test_backward_noise_source(benchmark, source):
    """The two ways the backward can get std * eps without storing eps, at 4M elements."""
    shape = SHAPES["4M"]
    mu, logvar = make_inputs(shape, "cpu", requires_grad=False)
    seed = torch.tensor([1, 0])
    z, _ = torch.ops.aigc_fast.reparameterize(mu, logvar, None, seed, False)
    grad = torch.ones(shape)
    args = (None, z) if source == "z - mu" else (seed, None)
    benchmark.group = "reparameterize backward noise source 4M cpu"
    benchmark.extra_info.update(op="reparameterize_backward", provider=source, size="4M", pass_="bwd", device="cpu")
    benchmark.pedantic(
        lambda: torch.ops.aigc_fast.reparameterize_backward(grad, None, mu, logvar, None, *args, [False, True, False]),
        rounds=20, warmup_rounds=3, iterations=1,
    )
