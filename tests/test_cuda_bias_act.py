"""CUDA bias_act (runs only where a GPU is visible): the same results as the CPU kernels
(one activation header; float32 and 16-bit bit for bit), in every layout the CPU tests use."""

import pytest
import torch

import aigc_fast
from aigc_fast import _activations

from conftest import DTYPES, requires_cuda, requires_fused

pytestmark = [requires_cuda, requires_fused, pytest.mark.cuda]

LAYOUTS = {
    "nchw": lambda t: t,
    "channels_last": lambda t: t.to(memory_format=torch.channels_last),
    "strided": lambda t: t.transpose(2, 3),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", list(_activations.ACTIVATIONS))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cuda_matches_cpu(dtype, act, layout):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 5, 9, 7, generator=g) * 3).to(dtype)
    bias = torch.randn(5, generator=g)  # float32 bias, as a parameter under autocast
    grad = torch.randn(x.shape, generator=g).to(dtype)
    results = []
    for device in ("cpu", "cuda"):
        # Copies on every device: x.to("cpu") would be x itself, marked as requiring grad by
        # the CPU run, and the CUDA copy of it would then not be a leaf.
        xd = LAYOUTS[layout](x.to(device, copy=True)).requires_grad_()
        bd = bias.to(device, copy=True).requires_grad_()
        y = aigc_fast.bias_act(xd, bd, act)
        y.backward(LAYOUTS[layout](grad.to(device)))
        results.append([t.cpu() for t in (y.detach(), xd.grad, bd.grad)])
    (y_cpu, gx_cpu, gb_cpu), (y_gpu, gx_gpu, gb_gpu) = results
    exact = 0 if dtype != torch.float64 else 1e-15  # float64 uses each platform's libm
    torch.testing.assert_close(y_gpu, y_cpu, rtol=exact, atol=exact)
    torch.testing.assert_close(gx_gpu, gx_cpu, rtol=exact, atol=exact)
    torch.testing.assert_close(gb_gpu, gb_cpu, rtol=1e-5, atol=1e-5)  # sums of the same products, another order


def test_cuda_compile_and_second_derivatives():
    x = torch.randn(2, 4, 6, 6, device="cuda", dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, device="cuda", dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t, c: aigc_fast.bias_act(t, c, "tanh"), (x, b))
    compiled = torch.compile(lambda t: aigc_fast.bias_act(t, None, "leaky_relu"), fullgraph=True)
    torch.testing.assert_close(compiled(x.float()), aigc_fast.bias_act(x.float(), None, "leaky_relu"))
