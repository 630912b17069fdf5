"""CUDA kernels (run only where a GPU is visible): the same noise as the CPU kernel, the
same answers as the reference, and fresh noise on every CUDA-graph replay."""

import pytest
import torch

import aigc_fast
from aigc_fast.reference import reparameterize as ref_reparameterize

from conftest import DTYPES, assert_close_to_float64, requires_cuda, requires_fused

pytestmark = [requires_cuda, requires_fused, pytest.mark.cuda]


@pytest.mark.parametrize("shape", [(1,), (4099,), (128, 64), (3, 50_000)])
@pytest.mark.parametrize("offset", [0, 2**32 - 5])
def test_cuda_noise_is_bit_identical_to_cpu(shape, offset):
    seed = 0x5EED5EED5EED
    zeros = torch.zeros(shape)
    cpu, _ = torch.ops.aigc_fast.reparameterize(zeros, zeros, None, torch.tensor([seed, offset]), False)
    gpu, _ = torch.ops.aigc_fast.reparameterize(zeros.cuda(), zeros.cuda(), None, torch.tensor([seed, offset]).cuda(), False)
    assert torch.equal(gpu.cpu(), cpu)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_kl", [False, True])
def test_cuda_matches_reference(dtype, with_kl):
    g = torch.Generator().manual_seed(0)
    mu, logvar, eps, grad = (torch.randn(257, 33, generator=g, dtype=torch.float64) for _ in range(4))
    leaves = [t.to("cuda", dtype).requires_grad_() for t in (mu, logvar, eps)]
    out = aigc_fast.reparameterize(*leaves[:2], eps=leaves[2], return_kl=with_kl)
    z, kl = out if with_kl else (out, None)
    loss = (z.double() * grad.cuda()).sum() + (kl.double().sum() if with_kl else 0)
    loss.backward()
    exact_leaves = [t.clone().requires_grad_() for t in (mu, logvar, eps)]  # not t itself: ref_leaves copy it
    out_x = ref_reparameterize(*exact_leaves[:2], eps=exact_leaves[2], return_kl=with_kl)
    z_x, kl_x = out_x if with_kl else (out_x, None)
    ((z_x * grad).sum() + (kl_x.sum() if with_kl else 0)).backward()
    ref_leaves = [t.to("cuda", dtype).requires_grad_() for t in (mu, logvar, eps)]
    out_r = ref_reparameterize(*ref_leaves[:2], eps=ref_leaves[2], return_kl=with_kl)
    z_r, kl_r = out_r if with_kl else (out_r, None)
    ((z_r.double() * grad.cuda()).sum() + (kl_r.double().sum() if with_kl else 0)).backward()
    assert_close_to_float64(z.cpu(), z_r.cpu(), z_x.detach())
    for f, r, x in zip(leaves, ref_leaves, exact_leaves):
        assert_close_to_float64(f.grad.cpu(), r.grad.cpu(), x.grad)
    if with_kl:  # the KL is float32 (or float64) whatever the input dtype: exact on the rounded inputs
        mu_r, logvar_r, eps_r = (t.to(dtype).double() for t in (mu, logvar, eps))
        kl_exact = ref_reparameterize(mu_r, logvar_r, eps=eps_r, return_kl=True)[1]
        torch.testing.assert_close(kl.double().cpu(), kl_exact, rtol=1e-5, atol=1e-4)


def test_cuda_rng_backward_matches_cpu():
    seed = torch.tensor([42, 0])
    mu, logvar = torch.randn(64, 100), torch.randn(64, 100)
    mu[::3], logvar[::3] = 1e4, -20.0  # |mu| / std = 2e8: these take the regenerated noise
    grads = []
    for device in ("cpu", "cuda"):
        m, l = mu.to(device, copy=True).requires_grad_(), logvar.to(device, copy=True).requires_grad_()
        z, kl = torch.ops.aigc_fast.reparameterize(m, l, None, seed.to(device), True)
        (z.sum() + kl.sum()).backward()
        grads.append((m.grad.cpu(), l.grad.cpu(), kl.detach().cpu()))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert (grads[1][1][::3] != 0).all()  # z - mu alone would give 0 there


def test_cuda_graph_replay_draws_fresh_noise():
    mu = torch.zeros(1024, device="cuda")
    logvar = torch.zeros(1024, device="cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        aigc_fast.reparameterize(mu, logvar)  # warm up outside the graph
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        z = aigc_fast.reparameterize(mu, logvar)
    graph.replay()
    first = z.clone()
    graph.replay()
    assert not torch.equal(first, z)
    assert abs(first.mean().item()) < 0.2 and abs(first.std().item() - 1) < 0.2


def test_cuda_compile_fullgraph():
    mu, logvar = torch.randn(32, 8, device="cuda"), torch.randn(32, 8, device="cuda")
    fn = torch.compile(lambda m, l: aigc_fast.reparameterize(m, l, return_kl=True), fullgraph=True)
    z, kl = fn(mu, logvar)
    torch.testing.assert_close(kl, ref_reparameterize(mu, logvar, return_kl=True)[1])
