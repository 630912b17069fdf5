import collections
import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import aigc_fast

if os.environ.get("AIGC_FAST_REQUIRE_EXTENSION") == "1" and not aigc_fast._extension.LOADED:
    # CI sets this: a suite that silently ran only the references would prove nothing.
    pytest.exit(f"AIGC_FAST_REQUIRE_EXTENSION=1 but {aigc_fast._extension.REASON}", returncode=3)

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a visible CUDA GPU")
requires_fused = pytest.mark.skipif(
    not aigc_fast._extension.LOADED, reason=f"compiled kernels unavailable: {aigc_fast._extension.REASON}"
)


def pytest_runtest_setup(item):
    # A CUDA test left to the default implementation would compare the reference with itself
    # if the CUDA kernels could not run here (a CPU-only build, an arch not compiled): fail.
    if item.get_closest_marker("cuda") is not None and torch.cuda.is_available():
        reason = aigc_fast._impl.fused_unavailable_reason(torch.device("cuda"))
        if reason is not None:
            pytest.fail(f"a GPU is visible but the fused CUDA kernels cannot run: {reason}", pytrace=False)


def assert_close_to_float64(fused, reference, exact, *, rel_floor=None, data_dtype=None):
    """The tolerance rule for every fused op: float32 and float64 results match the float64
    answer tightly; a float16/bfloat16 result may err by at most about twice what the
    reference run in that same dtype errs (both measured against float64), plus one
    rounding of the output dtype. rel_floor: the magnitude below which errors count as
    absolute (a sum of n terms: about n roundings). data_dtype: the dtype the result was
    computed from when it differs from its own (a float32 parameter's gradient from
    bfloat16 activations follows the bfloat16 rule)."""
    exact = exact.double()
    dtype = data_dtype if data_dtype in (torch.float16, torch.bfloat16) else fused.dtype
    if dtype == torch.float64:
        torch.testing.assert_close(fused, exact, rtol=1e-12, atol=1e-12)
        return
    if dtype == torch.float32:
        torch.testing.assert_close(fused.double(), exact, rtol=2e-6, atol=1e-6 * (1.0 if rel_floor is None else rel_floor))
        return
    scale = exact.abs().clamp_min(1.0 if rel_floor is None else rel_floor)
    fused_err = ((fused.double() - exact).abs() / scale).max().item()
    ref_err = ((reference.double() - exact).abs() / scale).max().item()
    one_rounding = torch.finfo(dtype).eps
    assert fused_err <= 2 * ref_err + one_rounding, (
        f"{dtype}: fused error {fused_err:.3g} vs reference error {ref_err:.3g}"
    )


class FusedOpCounter(TorchDispatchMode):
    """Counts the aigc_fast kernels that run inside it, forward and backward ops by name
    (e.g. calls["bn_act"], calls["bn_act_backward"]), and keeps each one's latest
    arguments (the output masks the Python functions pass, say): a test comparing a fused model with
    its plain twin checks with it that the fused side ran fused and the plain side did not."""

    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()
        self.last_args = {}  # name -> the arguments of its latest call

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        namespace, _, name = func.name().partition("::")
        if namespace == "aigc_fast":
            self.calls[name] += 1
            self.last_args[name] = args
        return func(*args, **(kwargs or {}))

    def forward_calls(self) -> int:
        return sum(n for name, n in self.calls.items() if not name.endswith("_backward"))
