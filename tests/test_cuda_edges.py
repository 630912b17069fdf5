"""CUDA edge paths the common-case CUDA tests miss (run only where a GPU is visible):
non-finite inputs, the float64 statistics fallback inside the row kernels, an output
modified in place after an identity layer, noise regenerated in a float64 backward, and
second derivatives. Each must be the CPU kernels' answer: the math is one header, and the
CPU tests check it against ATen and float64 formulas at these same edges."""

import pytest
import torch

import aigc_fast

from conftest import requires_cuda, requires_fused

pytestmark = [requires_cuda, requires_fused, pytest.mark.cuda]
GPU = "cuda"  # a name, so the tests can be dry-run with GPU = "cpu" where no GPU is visible
CHANNELS_LAST = torch.channels_last


def on_each_device(fn, inputs, grad, *, state=()):
    """fn(*inputs, *state)'s output and the inputs' gradients (backward of `grad`), first on
    the CPU, then on the GPU, all brought back to the CPU. Copies on both devices, with the
    inputs' memory format kept, so neither run touches the caller's tensors; `state`
    (running statistics) is returned after the call, as fn updated it."""
    runs = []
    for device in ("cpu", GPU):
        leaves = [t.to(device, copy=True).requires_grad_() for t in inputs]
        extra = [t.to(device, copy=True) for t in state]
        out = fn(*leaves, *extra)
        out.backward(grad.to(device, copy=True))
        runs.append([t.detach().cpu() for t in [out, *(leaf.grad for leaf in leaves), *extra]])
    return runs


def assert_same(gpu, cpu, tol):
    for g, c in zip(gpu, cpu):
        torch.testing.assert_close(g, c, rtol=tol, atol=tol, equal_nan=True)
        assert torch.equal(g.isnan(), c.isnan()) and torch.equal(g.isinf(), c.isinf())


def non_finite(shape, generator):
    """Channel 0 holds a +inf, channel 1 a NaN, channel 2 a +inf and a -inf (a NaN mean),
    channel 3 only finite values."""
    x = torch.randn(shape, generator=generator) * 2
    x[1, 0, 0, 0], x[0, 1, 1, 1], x[2, 2, 0, 1], x[0, 2, 1, 0] = float("inf"), float("nan"), float("inf"), -float("inf")
    return x


@pytest.mark.parametrize("act", ["identity", "relu", "leaky_relu", "tanh"])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, CHANNELS_LAST])
@pytest.mark.parametrize("training", [True, False])
def test_bn_act_non_finite_inputs_as_on_the_cpu(act, memory_format, training):
    """inf and NaN through the statistics (the float64 fallback's early returns), the
    outputs and both backward passes; in eval also a NaN running mean and an eps of 0
    beside a running variance of 0, through the eval input gradient."""
    g = torch.Generator().manual_seed(0)
    x = non_finite((6, 5, 4, 4), g).contiguous(memory_format=memory_format)
    grad = torch.randn(x.shape, generator=g).contiguous(memory_format=memory_format)
    weight, bias = torch.rand(5, generator=g) + 0.5, torch.randn(5, generator=g)
    running_mean, running_var = torch.randn(5, generator=g), torch.rand(5, generator=g) + 0.5
    running_mean[4], running_var[3] = float("nan"), 0.0
    eps = 1e-5 if training else 0.0

    def fn(t, w, b, rm, rv):
        return aigc_fast.bn_act(t, w, b, rm, rv, training=training, act=act, eps=eps)

    cpu, gpu = on_each_device(fn, [x, weight, bias], grad, state=[running_mean, running_var])
    finite_channel = gpu[0][:, 3]  # in eval, with eps = 0 beside a running variance of 0: ±inf (tanh: ±1)
    assert gpu[0].isnan().any() and (torch.isfinite(finite_channel).all() if training else
                                     finite_channel.abs().max() == (1 if act == "tanh" else float("inf")))
    assert_same(gpu, cpu, 1e-5)


@pytest.mark.parametrize("act", ["identity", "leaky_relu"])
def test_bn_act_row_kernels_fall_back_to_float64_as_on_the_cpu(act):
    """channels_last past 2^23 elements takes the row kernels; their merge runs the same
    float64 fallback: finite data whose float32 sums overflow (channel 1), an inf (channel
    2), a NaN (channel 3)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(66, 8, 128, 128, generator=g)
    x[0, 1, 0, 0], x[5, 2, 3, 3], x[7, 3, 0, 2] = 2e38, float("inf"), float("nan")
    x = x.contiguous(memory_format=CHANNELS_LAST)
    grad = torch.randn(x.shape, generator=g).contiguous(memory_format=CHANNELS_LAST)
    params = [torch.ones(8), torch.zeros(8)]

    def fn(t, w, b, rm, rv):
        return aigc_fast.bn_act(t, w, b, rm, rv, training=True, act=act)

    cpu, gpu = on_each_device(fn, [x, *params], grad, state=[torch.zeros(8), torch.ones(8)])
    y, running_mean = gpu[0], gpu[4]
    assert torch.isfinite(y[:, 1]).all() and running_mean[1] > 0  # the fallback, not float32's overflow
    assert running_mean[2] == float("inf") and running_mean[3].isnan()
    assert_same(gpu, cpu, 1e-5)


def test_identity_outputs_modified_in_place_after_the_op():
    """An identity layer saves no output (bn_act keeps x alone, bias_act nothing), so a
    residual `y += skip` after it is allowed and leaves the gradients exact."""
    g = torch.Generator().manual_seed(2)
    x, grad, skip = (torch.randn(4, 3, 5, 5, generator=g) for _ in range(3))
    bias = torch.randn(3, generator=g)

    def bias_act_then_skip(t, b):
        y = aigc_fast.bias_act(t, b, "identity")
        y += skip.to(y.device)
        return y

    def bn_act_then_skip(t):
        y = aigc_fast.bn_act(t, None, None, None, None, training=True, act="identity")
        y += skip.to(y.device)
        return y

    cpu, gpu = on_each_device(bias_act_then_skip, [x, bias], grad)
    torch.testing.assert_close(gpu[1], grad, rtol=0, atol=0)
    torch.testing.assert_close(gpu[2], grad.sum((0, 2, 3)), rtol=1e-5, atol=1e-5)
    assert_same(gpu, cpu, 1e-5)
    cpu, gpu = on_each_device(bn_act_then_skip, [x], grad)
    assert_same(gpu, cpu, 1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_regenerated_noise_in_the_backward_as_on_the_cpu(dtype):
    """Where |mu| / std is too large for z - mu to give back std * eps, the backward draws the
    noise again (recovery_is_lossy, a cut-off per dtype): float64 as well as float32."""
    seed = torch.tensor([42, 0])
    mu, logvar = torch.randn(64, 100, dtype=dtype), torch.randn(64, 100, dtype=dtype)
    mu[::3], logvar[::3] = 1e4, -20.0  # |mu| / std = 2e8: past both cut-offs
    grads = []
    for device in ("cpu", GPU):
        m, lv = mu.to(device, copy=True).requires_grad_(), logvar.to(device, copy=True).requires_grad_()
        z, kl = torch.ops.aigc_fast.reparameterize(m, lv, None, seed.to(device), True)
        (z.sum() + kl.sum()).backward()
        grads.append([t.detach().cpu() for t in (z, kl, m.grad, lv.grad)])
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert_same(grads[1], grads[0], tol)
    zeros = torch.zeros_like(mu).to(GPU)
    eps = torch.ops.aigc_fast.reparameterize(zeros, zeros, None, seed.to(GPU), False)[0].cpu()  # the same noise
    from_the_noise = 0.5 * (0.5 * logvar).exp() * eps + 0.5 * (logvar.exp() - 1)  # d z.sum() + d kl.sum()
    torch.testing.assert_close(grads[1][3], from_the_noise, rtol=1e-4, atol=1e-6)


def test_losses_at_infinite_logits_and_relu_at_nan_as_on_the_cpu():
    """bce_with_logits' ±inf branch (a finite loss for the right sign, inf for the wrong
    one; gradients 0 or ±1) and relu's gradient through a NaN output, per element the
    CPU's bits."""
    inf, nan = float("inf"), float("nan")
    real = torch.tensor([inf, -inf, 3.0, -2.0, 0.0])
    fake = torch.tensor([-inf, inf, 1.0, -1.0, 0.5])
    recon = torch.tensor([[inf, -inf, 2.0, -3.0]])
    target = torch.tensor([[1.0, 0.0, 0.5, 1.0]])
    latent = torch.zeros(1, 2)

    def gan(r, f):
        return aigc_fast.gan_d_loss(r, f, "bce") + aigc_fast.gan_g_loss(f, "bce")

    def vae(r, m, lv):
        return aigc_fast.vae_loss(r, target.to(r.device), m, lv, recon_loss="bce")[0]

    def relu(t, b):
        return aigc_fast.bias_act(t, b, "relu")

    for fn, inputs, grad in ((gan, [real, fake], torch.tensor(1.0)), (vae, [recon, latent, latent], torch.tensor(1.0)),
                             (relu, [torch.tensor([[nan, 1.0, -1.0]]), torch.zeros(3)], torch.ones(1, 3))):
        cpu, gpu = on_each_device(fn, inputs, grad)
        assert_same(gpu, cpu, 0)


def test_second_derivatives_on_the_gpu():
    """Under create_graph every op takes its differentiable backward (ATen ops on the GPU
    tensors): bn_act with batch statistics, both losses, and reparameterize."""
    g = torch.Generator().manual_seed(3)

    def leaf(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(GPU).requires_grad_()

    x, w, b = leaf(4, 3, 3, 3), leaf(3), leaf(3)
    assert torch.autograd.gradgradcheck(
        lambda t, ww, bb: aigc_fast.bn_act(t, ww, bb, None, None, training=True, act="leaky_relu"), (x, w, b))
    real, fake = leaf(6), leaf(6)
    assert torch.autograd.gradgradcheck(lambda r, f: aigc_fast.gan_d_loss(r, f, "bce"), (real, fake))
    recon, mu, logvar = leaf(3, 8), leaf(3, 2), leaf(3, 2)
    target = torch.rand(3, 8, generator=g, dtype=torch.float64).to(GPU)
    assert torch.autograd.gradgradcheck(
        lambda r, m, lv: aigc_fast.vae_loss(r, target, m, lv, recon_loss="bce", beta=0.5)[0], (recon, mu, logvar))
    eps = leaf(3, 2)
    assert torch.autograd.gradgradcheck(
        lambda m, lv, e: aigc_fast.reparameterize(m, lv, eps=e, return_kl=True), (mu, logvar, eps))
