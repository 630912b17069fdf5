"""Every fused op's backward under compiled autograd (torch._dynamo.config.compiled_autograd,
which traces the whole backward graph, C++ autograd Functions included): the same
gradients as the plain backward. PyTorch refuses, with an internal assert, a C++ Function
that marks outputs non-differentiable, which the losses and bn_act once did."""

import pytest
import torch
from torch._dynamo.utils import counters

import aigc_fast

from conftest import requires_fused

pytestmark = requires_fused


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _z_and_kl(mu, logvar):  # the same noise in both runs: a seeded generator
    z, kl = aigc_fast.reparameterize(mu, logvar, generator=torch.Generator().manual_seed(1), return_kl=True)
    return z.square().sum() + kl.sum()


def _bn_act(x, w, b):
    return aigc_fast.bn_act(x, w, b, torch.zeros(3), torch.ones(3), training=True, act="leaky_relu")


CASES = {  # name: (loss from the leaves, the leaves' shapes)
    "reparameterize": (lambda mu, lv: _z_and_kl(mu, lv), [(4, 3), (4, 3)]),
    "bias_act": (lambda x, b: aigc_fast.bias_act(x, b, "tanh").square().sum(), [(2, 3, 4, 4), (3,)]),
    "bn_act": (lambda x, w, b: _bn_act(x, w, b).square().sum(), [(2, 3, 4, 4), (3,), (3,)]),
    "gan_d_loss": (lambda r, f: aigc_fast.gan_d_loss(r, f, "bce"), [(8, 1), (6, 1)]),
    "gan_g_loss": (lambda f: aigc_fast.gan_g_loss(f, "lsgan"), [(6, 1)]),
    "vae_loss": (lambda r, t, mu, lv: aigc_fast.vae_loss(r, t.sigmoid(), mu, lv, beta=0.5)[0],
                 [(4, 10), (4, 10), (4, 3), (4, 3)]),
}


@pytest.mark.parametrize("name", CASES)
def test_backward_under_compiled_autograd(name):
    loss_of, shapes = CASES[name]

    def gradients(compiled):
        leaves = [randn(*shape, seed=i).requires_grad_() for i, shape in enumerate(shapes)]
        loss = loss_of(*leaves)  # the forward runs eagerly; only the backward is compiled
        if compiled:
            torch.compile(lambda out: out.backward(), backend="aot_eager")(loss)
        else:
            loss.backward()
        return [t.grad for t in leaves]

    expected = gradients(compiled=False)
    torch.compiler.reset()
    counters.clear()
    try:
        with torch._dynamo.config.patch(compiled_autograd=True):
            got = gradients(compiled=True)
    finally:
        torch.compiler.reset()
    assert counters["compiled_autograd"]["captures"] == 1  # the backward did run as a compiled graph
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-7)
