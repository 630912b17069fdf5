"""torch.compile over changing batch sizes, as a data loader's last short batch or a
sweep gives them: each op, forward and backward, compiles once for a static and once for a
dynamic batch, then no more. A size the C++ autograd reads as a plain number would
specialize the graph on it (AOTAutograd traces the backward even for a forward-only call
once an input requires grad), one recompile per batch size until dynamo gives up."""

import pytest
import torch

import aigc_fast
from conftest import requires_fused

pytestmark = requires_fused


def _inputs(n: int):
    g = torch.Generator().manual_seed(n)
    return {
        "logits": torch.randn(n, 1, generator=g),
        "fake": torch.randn(n + 1, 1, generator=g),
        "recon": torch.randn(n, 1, 4, 4, generator=g),
        "target": torch.rand(n, 1, 4, 4, generator=g),
        "mu": torch.randn(n, 3, generator=g),
        "logvar": torch.randn(n, 3, generator=g),
        "x": torch.randn(n, 2, 3, 3, generator=g),
        "weight": 1 + torch.randn(2, generator=g),
    }


def _bn_act(t):
    running = (torch.zeros(2), torch.ones(2))
    return aigc_fast.bn_act(t["x"], t["weight"], None, *running, training=True).square().sum()


def _vae_loss(t, reduction):
    loss = aigc_fast.vae_loss(t["recon"], t["target"], t["mu"], t["logvar"], reduction=reduction)[0]
    return loss.square().sum()


def _reparameterize(t):
    z, kl = aigc_fast.reparameterize(t["mu"], t["logvar"], return_kl=True)
    return z.square().sum() + kl.square().sum()


OPS = {
    "gan_d_loss": lambda t: aigc_fast.gan_d_loss(t["logits"], t["fake"], "bce"),
    "gan_g_loss": lambda t: aigc_fast.gan_g_loss(t["fake"], "lsgan"),
    "vae_loss mean": lambda t: _vae_loss(t, "mean"),
    "vae_loss none": lambda t: _vae_loss(t, "none"),
    "reparameterize": _reparameterize,
    "bias_act": lambda t: aigc_fast.bias_act(t["x"], torch.ones(2), "leaky_relu").square().sum(),
    "bn_act": _bn_act,
}


@pytest.mark.parametrize("impl", ["fused", "reference"])  # the reference twins are drop-ins too
@pytest.mark.parametrize("op", OPS)
def test_changing_batch_sizes_compile_at_most_twice(op, impl):
    import torch._dynamo.config as dynamo_config
    from torch._dynamo.testing import CompileCounterWithBackend

    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(OPS[op], backend=counter, fullgraph=True)
    torch.compiler.reset()
    with dynamo_config.patch(fail_on_recompile_limit_hit=True), aigc_fast.use_impl(impl):
        for n in range(3, 15):  # 12 sizes, past dynamo's 8 recompiles
            inputs = _inputs(n)
            leaves = {k: v.requires_grad_() for k, v in inputs.items()}
            twins = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
            torch.manual_seed(0)
            got = compiled(leaves)
            torch.manual_seed(0)
            expected = OPS[op](twins)
            torch.testing.assert_close(got, expected)
            got.backward()
            expected.backward()
            for name, leaf in leaves.items():
                torch.testing.assert_close(leaf.grad, twins[name].grad, msg=f"{op}: grad of {name} at batch {n}")
    assert counter.frame_count <= 2, f"{op}: {counter.frame_count} graphs for 12 batch sizes"
    torch.compiler.reset()
