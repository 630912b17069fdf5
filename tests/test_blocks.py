"""The fused conv blocks against the nn.Sequential they replace: same state_dict, same
outputs, gradients and running statistics over several steps (train and eval, every
activation, NCHW and channels_last), the projection-as-matmul path, convert() on a whole
DCGAN, fold() for inference, torch.compile, gradcheck, and bad input."""

import copy
import types

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import aigc_fast
from aigc_fast.nn import ConvBlock, ConvTransposeBlock, FusedSequential, convert, fold

from conftest import FusedOpCounter, requires_fused

pytestmark = requires_fused
ACT_MODULES = {"relu": nn.ReLU(), "leaky_relu": nn.LeakyReLU(0.2), "tanh": nn.Tanh(), "sigmoid": nn.Sigmoid(),
               "identity": nn.Identity()}


def plain_twin(block: nn.Sequential) -> nn.Sequential:
    """The nn.Sequential the block stands for, with the block's weights."""
    twin = nn.Sequential(*[copy.deepcopy(m) for m in block])
    twin.load_state_dict(block.state_dict())
    return twin


def steps(model, inputs, grads, channels_last=False):
    """Forward/backward over several batches; the last outputs and gradients, all buffers."""
    model = model.to(memory_format=torch.channels_last) if channels_last else model
    for x, g in zip(inputs, grads):
        model.zero_grad()
        x = (x.to(memory_format=torch.channels_last) if channels_last else x).clone().requires_grad_()
        y = model(x)
        y.backward(g)
    grads_ = [x.grad] + [p.grad for p in model.parameters()]
    return y.detach(), grads_, [b.clone() for b in model.buffers()]


def fused_steps(model, inputs, grads):
    """steps() of a converted model, checking that every group its containers plan ran its
    one fused kernel per forward: a group that fell back to its plain modules fails here,
    where the values alone would still agree."""
    planned = sum(len(m.fused_groups()) for m in model.modules() if isinstance(m, FusedSequential))
    with FusedOpCounter() as ops:
        out = steps(model, inputs, grads)
    assert ops.forward_calls() == planned * len(inputs), (dict(ops.calls), planned)
    return out


def assert_same(a, b, tol):
    ya, ga, ba = a
    yb, gb, bb = b
    torch.testing.assert_close(ya, yb, rtol=tol, atol=tol)
    assert len(ga) == len(gb) and len(ba) == len(bb)
    for x, y in zip(ga + ba, gb + bb):
        torch.testing.assert_close(x, y, rtol=tol, atol=tol)


def batches(shape, n=3, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=dtype) for _ in range(n)]


@pytest.mark.parametrize("act", list(ACT_MODULES))
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("train", [True, False])
def test_conv_transpose_block_matches_sequential(act, channels_last, train):
    torch.manual_seed(0)
    block = ConvTransposeBlock(6, 5, 4, 2, 1, act=act).double()
    twin = plain_twin(block)
    assert list(block.state_dict()) == list(twin.state_dict())
    block.train(train)
    twin.train(train)
    x, g = batches((3, 6, 5, 5)), batches((3, 5, 10, 10), seed=1)
    with FusedOpCounter() as ops:
        fused = steps(block, x, g, channels_last)
    assert ops.calls["bn_act"] == ops.calls["bn_act_backward"] == len(x)  # fused, not the children
    assert_same(fused, steps(twin, x, g, channels_last), 1e-10)


@pytest.mark.parametrize("norm", ["batch", None])
@pytest.mark.parametrize("train", [True, False])
def test_conv_block_matches_sequential(norm, train):
    torch.manual_seed(1)
    block = ConvBlock(3, 8, 4, 2, 1, norm=norm).double().train(train)
    twin = plain_twin(block).train(train)
    x, g = batches((4, 3, 16, 16)), batches((4, 8, 8, 8), seed=1)
    with FusedOpCounter() as ops:
        fused = steps(block, x, g)
    assert ops.calls["bn_act" if norm else "bias_act"] == len(x)  # fused, not the children
    assert_same(fused, steps(twin, x, g), 1e-10)


def test_the_dcgan_tutorials_weights_init_works_on_the_blocks():
    """The PyTorch DCGAN tutorial's weights_init, verbatim: it matches modules by class name,
    and "Conv" is in the blocks' names too, so it reads their weight."""

    def weights_init(m):
        classname = m.__class__.__name__
        if classname.find('Conv') != -1:
            nn.init.normal_(m.weight.data, 0.0, 0.02)
        elif classname.find('BatchNorm') != -1:
            nn.init.normal_(m.weight.data, 1.0, 0.02)
            nn.init.constant_(m.bias.data, 0)

    torch.manual_seed(3)
    model = nn.Sequential(ConvTransposeBlock(8, 4), ConvBlock(4, 2, norm=None), nn.Conv2d(2, 1, 1))
    model.apply(weights_init)
    assert model[0].weight is model[0][0].weight and model[1].bias is model[1][0].bias
    assert model[0].bias is None  # bias-free before its BatchNorm, as DCGAN's convs are
    for conv in (model[0][0], model[1][0], model[2]):
        assert conv.weight.std() < 0.05  # N(0, 0.02), not the default init's scale
    assert abs(model[0][1].weight.mean() - 1) < 0.1 and torch.equal(model[0][1].bias, torch.zeros(4))


@pytest.mark.parametrize("channels_last", [False, True])
def test_projection_runs_as_a_matrix_multiply(channels_last, monkeypatch):
    torch.manual_seed(2)
    block = ConvTransposeBlock(10, 7, 4, 1, 0).double()
    twin = plain_twin(block)
    calls = []
    real = torch.nn.functional.conv_transpose2d
    monkeypatch.setattr(torch.nn.functional, "conv_transpose2d", lambda *a, **k: calls.append(1) or real(*a, **k))
    x, g = batches((5, 10, 1, 1)), batches((5, 7, 4, 4), seed=1)
    fused = steps(block, x, g, channels_last)
    assert not calls  # the fused block never ran the general conv-transpose
    assert_same(fused, steps(twin, x, g, channels_last), 1e-10)
    if channels_last:  # the output and the weight's gradient keep the model's layout, as the conv's do
        assert fused[0].is_contiguous(memory_format=torch.channels_last)
        assert fused[1][1].is_contiguous(memory_format=torch.channels_last) and not fused[1][1].is_contiguous()


def dcgan(nz=16, ngf=8, ndf=8):
    G = nn.Sequential(
        nn.ConvTranspose2d(nz, ngf * 4, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
        nn.ConvTranspose2d(ngf, 3, 4, 2, 1, bias=False), nn.Tanh(),
    )
    D = nn.Sequential(
        nn.Conv2d(3, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 4), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 4, 1, 4, 1, 0, bias=False),
    )
    return nn.ModuleDict({"G": G, "D": D})


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("memory_efficient", [False, True])
def test_converted_dcgan_matches_the_original(dtype, tol, memory_efficient):
    torch.manual_seed(3)
    original = dcgan().to(dtype)
    converted = convert(copy.deepcopy(original), memory_efficient=memory_efficient)
    assert isinstance(converted["G"], FusedSequential) and len(converted["G"].fused_groups()) == 4
    assert len(converted["D"].fused_groups()) == 3
    assert list(converted.state_dict()) == list(original.state_dict())
    for _ in range(3):  # training steps: D on G's samples, gradients everywhere
        z = torch.randn(6, 16, 1, 1, dtype=dtype)
        results = []
        for model in (converted, original):
            model.zero_grad()
            with FusedOpCounter() as ops:
                logits = model["D"](model["G"](z))
                logits.square().mean().backward()
            assert ops.forward_calls() == (7 if model is converted else 0)  # the 7 fused groups ran
            results.append((logits.detach(), [p.grad for p in model.parameters()], list(model.buffers())))
        assert_same(*results, tol)
    original.eval()
    converted.eval()
    z = torch.randn(4, 16, 1, 1, dtype=dtype)
    torch.testing.assert_close(converted["G"](z), original["G"](z), rtol=tol, atol=tol)
    # Either loads the other's checkpoint.
    original.load_state_dict(converted.state_dict())
    converted.load_state_dict(original.state_dict())


def test_fx_symbolic_trace_records_the_plain_children():
    """torch.fx (torchvision's create_feature_extractor, FX quantization) traces a converted
    model as the original: the same call_module nodes, under the same names, the same outputs."""
    torch.manual_seed(6)
    original = dcgan().double()
    converted = convert(copy.deepcopy(original))
    traced, traced_original = (torch.fx.symbolic_trace(m["D"]) for m in (converted, original))
    nodes = lambda gm: [(n.op, n.target) for n in gm.graph.nodes]  # noqa: E731
    assert nodes(traced) == nodes(traced_original)
    converted.eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(traced.eval()(x), converted["D"](x), rtol=1e-10, atol=1e-10)


def test_fold_for_inference():
    torch.manual_seed(4)
    model = convert(dcgan()).double()
    for _ in range(2):  # give the running statistics something to hold
        model["D"](model["G"](torch.randn(8, 16, 1, 1, dtype=torch.float64)))
    with pytest.raises(ValueError, match="model.eval"):
        fold(model)
    model.eval()
    folded = fold(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert all(g.bn is None for g in folded["G"].fused_groups()) and len(folded["G"].fused_groups()) == 4
    z = torch.randn(5, 16, 1, 1, dtype=torch.float64)
    torch.testing.assert_close(folded["D"](folded["G"](z)), model["D"](model["G"](z)), rtol=1e-10, atol=1e-10)
    with pytest.warns(RuntimeWarning, match="fold.. for inference"):
        folded.train()  # a network without BatchNorm: not the one that was folded


def test_fold_of_a_sequential_that_reuses_a_module():
    """One ReLU reused after each BatchNorm (or one conv used twice) puts a module in the
    Sequential twice, under two names: fold must replace the children by position."""
    torch.manual_seed(13)
    act = nn.ReLU(inplace=True)
    conv = nn.Conv2d(6, 6, 3, 1, 1, bias=False)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, 1, 1, bias=False), nn.BatchNorm2d(6), act,
                          conv, nn.BatchNorm2d(6), act,
                          conv, nn.BatchNorm2d(6), act,
                          nn.Conv2d(6, 2, 1), nn.Tanh()).double()
    for _ in range(2):
        model(torch.randn(4, 3, 8, 8, dtype=torch.float64))  # running statistics
    model.eval()
    folded = fold(model)
    assert [type(m).__name__ for m in folded] == ["Conv2d", "FoldedBatchNorm", "ReLU"] * 3 + ["Conv2d", "Tanh"]
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-10, atol=1e-10)


def test_torch_compile_fullgraph():
    torch.manual_seed(5)
    block = ConvTransposeBlock(8, 4)
    twin = copy.deepcopy(block)
    x, g = torch.randn(2, 8, 6, 6), torch.randn(2, 4, 12, 12)
    compiled = torch.compile(block, fullgraph=True)
    outs = [steps(m, [x], [g]) for m in (compiled, twin)]
    assert_same(*outs, 1e-5)


def test_gradcheck():
    torch.manual_seed(6)
    block = ConvBlock(2, 3, 3, 1, 1).double()
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    params = list(block.parameters())

    def run(x, *ps):
        for p, v in zip(params, ps):
            p.data = v.detach()
        return torch.func.functional_call(block, dict(zip([n for n, _ in block.named_parameters()], ps)), (x,))

    assert torch.autograd.gradcheck(run, (x, *[p.detach().clone().requires_grad_() for p in params]))


@pytest.mark.parametrize(
    "call, error, match",
    [
        # Not 4-d: the modules run as themselves, so the error is nn.BatchNorm2d's.
        (lambda: ConvTransposeBlock(4, 4)(torch.zeros(4, 3, 3)), ValueError, r"expected 4D input \(got 3D input\)"),
        (lambda: ConvTransposeBlock(4, 4, act="gelu"), ValueError, "act must be one of"),
        (lambda: ConvBlock(4, 4, norm="group"), ValueError, "norm must be 'batch' or None"),
        (lambda: ConvTransposeBlock(4, 4, memory_efficient="no"), TypeError, "memory_efficient must be True or False"),
        (lambda: aigc_fast.nn.convert("model"), TypeError, "convert.. takes a torch.nn.Module, got str"),
        (lambda: aigc_fast.nn.convert(nn.Sequential(), memory_efficient="yes"), TypeError, "memory_efficient must be"),
        (lambda: aigc_fast.nn.fold(5), TypeError, "fold.. takes a torch.nn.Module, got int"),
        (lambda: ConvTransposeBlock(4, 4)(torch.zeros(2, 5, 3, 3)), RuntimeError, "channels"),
        # A 1x1 input (the projection, a matrix multiply) the conv would refuse: the conv's error.
        (lambda: ConvTransposeBlock(4, 3, 4, 1, 0)(torch.zeros(2, 5, 1, 1)), RuntimeError, "to have 4 channels, but got 5"),
        (lambda: ConvTransposeBlock(4, 3, 4, 1, 0)(torch.zeros(2, 4, 1, 1, dtype=torch.float16)), RuntimeError,
         "expected scalar type Half but found Float"),
    ],
)
def test_bad_input_gives_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_blocks_run_the_reference_when_asked():
    """The same values either way (to ~1e-12 in float64): what tells them apart is which
    kernels ran."""
    torch.manual_seed(7)
    block = ConvTransposeBlock(4, 4).double()
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    twin = copy.deepcopy(block)
    with aigc_fast.use_impl("reference"), FusedOpCounter() as ops:
        ref = block(x)
    assert not ops.calls
    with FusedOpCounter() as ops:
        fused = twin(x)
    assert ops.calls["bn_act"] == 1
    torch.testing.assert_close(fused, ref)


def test_convert_keeps_each_child_mode_and_fold_skips_untracked_batchnorm():
    torch.manual_seed(8)
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4, track_running_stats=False), nn.ReLU()).double()
    seq[1].eval()  # a frozen BatchNorm inside a training model
    twin = copy.deepcopy(seq)
    fused = convert(seq)
    assert fused.training and not fused[1].training and fused[4].training
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(fused(x), twin(x))
    fused.eval()
    twin.eval()
    folded = fold(fused)
    assert isinstance(folded[4], nn.BatchNorm2d)  # no running statistics: nothing to fold
    torch.testing.assert_close(folded(x), twin(x))


def test_sync_batchnorm_after_convert_runs_unfused():
    """convert_sync_batchnorm swaps the BatchNorms inside a converted model's containers:
    their groups must then run SyncBatchNorm itself (statistics synced across processes),
    not bn_act on the swapped module's parameters."""
    torch.manual_seed(10)
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3), nn.Tanh()).double()
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(convert(copy.deepcopy(seq)))
    assert isinstance(synced, FusedSequential) and isinstance(synced[1], nn.SyncBatchNorm)
    groups = synced.fused_groups(backward=True)
    assert [(g.conv, g.bn, g.act) for g in groups] == [(3, None, "tanh")]  # conv 0 + SyncBatchNorm unfused
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(synced.eval()(x), seq.eval()(x))  # (training needs a process group)
    converted_after = convert(nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(seq)))  # the other order
    assert isinstance(converted_after[1], nn.SyncBatchNorm)
    groups = converted_after.fused_groups(backward=True)
    assert [(g.conv, g.bn, g.act) for g in groups] == [(3, None, "tanh")]
    torch.testing.assert_close(converted_after.eval()(x), seq.eval()(x))


def test_dilated_projection_is_not_a_matrix_multiply():
    block = FusedSequential(nn.ConvTranspose2d(6, 3, 3, 1, 0, dilation=2), nn.ReLU()).double()
    x = torch.randn(2, 6, 1, 1, dtype=torch.float64)
    y = block(x)
    assert y.shape == (2, 3, 5, 5)
    torch.testing.assert_close(y, torch.relu(block[0](x)))


def test_a_strided_projection_with_output_padding_is_not_a_matrix_multiply():
    """From 1x1, k4 s2 with output_padding=1 gives 5x5, not the 4x4 of the matrix multiply."""
    torch.manual_seed(4)
    block = FusedSequential(nn.ConvTranspose2d(5, 4, 4, stride=2, output_padding=1, bias=False), nn.BatchNorm2d(4),
                            nn.ReLU()).double()
    twin = plain_twin(block)
    x, g = batches((3, 5, 1, 1)), batches((3, 4, 5, 5), seed=1)
    fused = fused_steps(block, x, g)
    assert fused[0].shape == (3, 4, 5, 5)
    assert_same(fused, steps(twin, x, g), 1e-10)


@pytest.mark.parametrize("eps, momentum", [(0.5, 0.7), (1e-3, None)])
@pytest.mark.parametrize("train", [True, False])
def test_convert_keeps_the_batchnorms_eps_and_momentum(eps, momentum, train):
    torch.manual_seed(5)
    original = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, eps=eps, momentum=momentum), nn.ReLU()).double()
    original[1].running_var.uniform_(0.05, 2.0)  # eval reads them: away from the initial ones
    original[1].running_mean.uniform_(-1.0, 1.0)
    converted = convert(copy.deepcopy(original)).train(train)
    original.train(train)
    x, g = batches((4, 3, 8, 8)), batches((4, 4, 6, 6), seed=1)
    assert_same(fused_steps(converted, x, g), steps(original, x, g), 1e-10)


@pytest.mark.parametrize("register", ["register_full_backward_hook", "register_full_backward_pre_hook"])
def test_a_backward_hook_on_a_group_member_unfuses_the_group(register):
    """A backward hook wraps the module's own call: the fused group never calls it."""
    model = convert(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).double())
    assert len(model.fused_groups()) == 1
    fired = []
    getattr(model[1], register)(lambda *a: fired.append(1))
    assert model.fused_groups() == []
    model(torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)).sum().backward()
    assert fired


@pytest.mark.parametrize("patched", [0, 1, 2])
def test_a_forward_patched_onto_a_group_member_runs_as_written(patched):
    """`bn.forward = frozen_bn` (or a patched conv/activation) is the module's code now: the
    group runs unfused, as the plain model does, rather than computing the stock op."""
    def frozen(bn, x):
        return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)

    def model():
        torch.manual_seed(3)
        m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).double()
        if patched == 0:
            m[1].forward = types.MethodType(frozen, m[1])
        elif patched == 1:
            m[0]._conv_forward = types.MethodType(lambda conv, x, w, b: F.conv2d(x, w.abs(), b), m[0])
        else:
            m[2].forward = lambda x: torch.relu(x) * 2
        return m

    original, converted = model(), convert(model())
    assert converted.fused_groups() == []
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(converted(x), original(x))
    torch.testing.assert_close(converted[1].running_mean, original[1].running_mean)


def test_modules_with_hooks_run_as_themselves():
    """torch.nn.utils.spectral_norm updates the weight in a forward pre-hook, a lazy conv
    initializes itself in one, and feature extractors hook activations: a fused group reads
    its modules' parameters without calling them, so convert() leaves hooked modules (and
    the container's own hooks) to run as they are, and outputs and gradients stay equal."""
    from torch.nn.utils import spectral_norm

    def discriminator():
        torch.manual_seed(9)
        return nn.Sequential(spectral_norm(nn.Conv2d(3, 8, 4, 2, 1)), nn.LeakyReLU(0.2),
                             nn.Conv2d(8, 16, 4, 2, 1), nn.BatchNorm2d(16), nn.LeakyReLU(0.2),
                             spectral_norm(nn.Conv2d(16, 1, 4))).double()

    original, converted = discriminator(), convert(discriminator())
    assert len(converted.fused_groups()) == 1  # only the hook-free conv + BatchNorm + LeakyReLU
    seen = []
    converted[4].register_forward_hook(lambda *a: seen.append("child"))
    converted.register_forward_hook(lambda *a: seen.append("container"))
    assert len(converted.fused_groups()) == 0  # a hook added later is respected too
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    for model in (original, converted):
        model(x).mean().backward()
    torch.testing.assert_close(converted(x), original(x))
    for a, b in zip(original.parameters(), converted.parameters()):
        torch.testing.assert_close(b.grad, a.grad)
    assert converted[0].weight_orig.grad is not None and seen[:2] == ["child", "container"]

    lazy = convert(nn.Sequential(nn.LazyConv2d(4, 3), nn.BatchNorm2d(4), nn.ReLU()))
    assert lazy(torch.randn(2, 3, 8, 8)).shape == (2, 4, 6, 6)  # initialized by its own hook
    assert len(lazy.fused_groups()) == 1  # ... and fused from then on
    lazy = convert(nn.Sequential(nn.LazyConv2d(4, 3), nn.LazyBatchNorm2d(), nn.ReLU()))
    assert lazy.fused_groups() == []
    assert lazy(torch.randn(2, 3, 8, 8)).shape == (2, 4, 6, 6)
    assert len(lazy.fused_groups()) == 1  # a lazy BatchNorm too

    with pytest.raises(TypeError, match="convert the model first, then compile it"):
        convert(torch.compile(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())))


def test_fold_of_a_parametrized_conv():
    from torch.nn.utils import parametrizations

    class MyConv(nn.Conv2d):  # a user's subclass with its own constructor
        def __init__(self, channels):
            super().__init__(3, channels, 3)

    torch.manual_seed(10)
    model = convert(nn.Sequential(parametrizations.weight_norm(MyConv(8)), nn.BatchNorm2d(8),
                                  nn.LeakyReLU(0.2)).double())
    model(torch.randn(4, 3, 9, 9, dtype=torch.float64))  # running statistics
    model.eval()
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    folded = fold(model)
    assert isinstance(folded[1], aigc_fast.nn.blocks.FoldedBatchNorm)
    assert type(folded[0]) is MyConv and not folded[0].training
    torch.testing.assert_close(folded(x), model(x), rtol=1e-10, atol=1e-10)
    assert torch.nn.utils.parametrize.is_parametrized(model[0])  # the user's model is untouched


def test_a_conv_subclass_with_its_own_forward_runs_as_itself():
    """Weight standardization, QAT fake quantization: a subclass that changes what forward
    computes is not fused (a fused group would call the plain functional conv); a subclass
    that only adds a constructor still is (test_fold_of_a_parametrized_conv)."""
    class StandardizedConv(nn.Conv2d):
        def forward(self, x):
            w = self.weight
            w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
            return torch.nn.functional.conv2d(x, w, self.bias, self.stride, self.padding)

    torch.manual_seed(11)
    original = nn.Sequential(StandardizedConv(3, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.ReLU()).double()
    converted = convert(copy.deepcopy(original))
    assert not isinstance(converted, FusedSequential)  # nothing to fuse: left a plain Sequential
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(converted(x), original(x))


@pytest.mark.parametrize("bias", [True, False])
def test_fold_refuses_a_batchnorm_in_training_and_folds_a_grouped_transpose(bias):
    """A grouped conv-transpose's weight is [in, out / groups, kh, kw]: output channel
    g * (out / groups) + j must get its own BatchNorm scale (the BatchNorm's affine made
    per-channel distinct, so a scale on the wrong channel shows)."""
    torch.manual_seed(12)
    model = convert(nn.Sequential(nn.ConvTranspose2d(6, 8, 4, 2, 1, groups=2, bias=bias), nn.BatchNorm2d(8),
                                  nn.ReLU(), nn.Conv2d(8, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).double())
    with torch.no_grad():
        for bn in (model[1], model[4]):
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.uniform_(-1.0, 1.0)
    model(torch.randn(4, 6, 5, 5, dtype=torch.float64))  # running statistics
    model.eval()
    model[4].train()  # one BatchNorm left in training mode under an eval model
    with pytest.raises(ValueError, match="call model.eval"):
        fold(model)
    model.eval()
    folded = fold(model)
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-10, atol=1e-10)
    assert isinstance(folded[1], aigc_fast.nn.blocks.FoldedBatchNorm)  # the grouped transpose's is folded
    assert isinstance(folded[4], aigc_fast.nn.blocks.FoldedBatchNorm)
    assert folded[0].weight.shape == model[0].weight.shape and folded[0].weight.is_contiguous()
    with torch.no_grad():  # as fold() of a grouped conv-transpose is often called, and as groups=1 keeps it
        assert fold(model)[0].weight.requires_grad
    channels_last = fold(model.to(memory_format=torch.channels_last))[0].weight
    assert channels_last.is_contiguous(memory_format=torch.channels_last)


def test_convert_leaves_a_group_before_an_in_place_module_and_passes_identity_placeholders():
    """A fused op keeps its output for the backward, so a group followed by a module that
    writes in place stays plain (MobileNet's Conv-BN-ReLU6(inplace=True) had failed in
    backward), unless it ends in the BatchNorm (identity: nothing kept, as nn.BatchNorm2d
    keeps nothing); an nn.Identity standing for a left-out norm joins the group."""
    torch.manual_seed(8)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU6(inplace=True),  # ReLU6: not in the table
        nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.LeakyReLU(0.2), nn.Dropout(0.0, inplace=True),  # plain
        nn.Conv2d(4, 5, 3, padding=1), nn.Identity(), nn.LeakyReLU(0.2, inplace=True),  # one group
    ).double()
    converted = convert(copy.deepcopy(model))
    groups = converted.fused_groups()
    assert [(g.conv, g.bn, g.act) for g in groups] == [(0, 1, "identity"), (7, None, "leaky_relu")]
    x = batches((2, 3, 6, 6))
    g = batches((2, 5, 6, 6), seed=1)
    assert_same(fused_steps(converted, x, g), steps(model, x, g), 1e-10)
    # With no backward to come (no_grad, fold), what follows a group cannot matter.
    assert len(converted.fused_groups(backward=False)) == 3
    with torch.no_grad():
        torch.testing.assert_close(converted.eval()(x[0]), model.eval()(x[0]), rtol=1e-10, atol=1e-10)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fold(converted).modules())


def test_a_residual_added_in_place_after_conv_and_batchnorm():
    """ResNet's `out += skip` after conv -> BatchNorm in a block's own forward: plain
    PyTorch keeps no BatchNorm output, and neither does the fused group (identity)."""

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4))

        def forward(self, x):
            out = self.body(x)
            out += x
            return torch.relu(out)

    torch.manual_seed(13)
    model = nn.Sequential(Residual(), Residual()).double()
    converted = convert(copy.deepcopy(model))
    assert all(len(block.body.fused_groups()) == 1 for block in converted)
    x = batches((2, 4, 6, 6))
    g = batches((2, 4, 6, 6), seed=1)
    assert_same(fused_steps(converted, x, g), steps(model, x, g), 1e-10)


def test_an_in_place_module_after_a_converted_container_keeps_its_last_group_plain():
    """Sequential(Sequential(conv, bn, LeakyReLU()), ReLU(inplace=True)) trains without
    convert(): after it too (the inner container's last group knows its output is
    overwritten), nested deeper and behind a pass-through module as well. A group ending
    in its BatchNorm keeps no output, so it stays fused there."""
    torch.manual_seed(12)
    inner = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.LeakyReLU(0.2))  # (which keeps its input)
    deeper = nn.Sequential(nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.LeakyReLU(0.1)), nn.Dropout(0.0))
    model = nn.Sequential(inner, nn.ReLU(inplace=True), deeper, nn.LeakyReLU(0.2, inplace=True),
                          nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)), nn.ReLU(inplace=True),
                          nn.Sequential(nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2))).double()
    converted = convert(copy.deepcopy(model))
    assert converted[0].fused_groups() == [] and converted[2][0].fused_groups() == []
    assert len(converted[0].fused_groups(backward=False)) == 1
    assert len(converted[4].fused_groups()) == 1  # identity: fused before the in-place ReLU
    assert len(converted[6].fused_groups()) == 1  # nothing after it: fused
    x = batches((2, 3, 8, 8))
    g = batches((2, 2, 4, 4), seed=1)
    assert_same(fused_steps(converted, x, g), steps(model, x, g), 1e-10)


def test_an_in_place_module_first_in_the_next_container_keeps_a_group_plain():
    """Sequential(Sequential(conv, bn, LeakyReLU), Sequential(ReLU(inplace=True), conv)):
    the next container's first module overwrites the group's output just the same."""
    torch.manual_seed(14)
    model = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.LeakyReLU(0.2)),
                          nn.Sequential(nn.Sequential(nn.Identity(), nn.ReLU(inplace=True)), nn.Conv2d(4, 2, 1)),
                          ).double()
    converted = convert(copy.deepcopy(model))
    assert converted[0].fused_groups() == [] and len(converted[0].fused_groups(backward=False)) == 1
    x = batches((2, 3, 8, 8))
    g = batches((2, 2, 6, 6), seed=1)
    assert_same(fused_steps(converted, x, g), steps(model, x, g), 1e-10)


@pytest.mark.parametrize("act, fused", [(nn.LeakyReLU, 0), (nn.Identity, 1)])  # identity keeps no output
@pytest.mark.parametrize("between", [[nn.Identity()], [nn.Dropout(0.5)], [nn.Identity(), nn.Dropout(0.0)]])
def test_an_in_place_module_behind_pass_through_modules_keeps_a_group_with_an_activation_plain(between, act, fused):
    """Identity, Flatten and Dropout (in eval, or at p = 0) hand on their input itself: an
    in-place module after them overwrites the group's output just the same."""
    torch.manual_seed(11)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), act(), *between,
                          nn.ReLU6(inplace=True)).double().eval()
    converted = convert(copy.deepcopy(model), memory_efficient=True)  # (which would keep y: off there)
    assert len(converted.fused_groups()) == fused
    x = batches((2, 3, 6, 6))
    g = batches((2, 4, 4, 4), seed=1)
    assert_same(fused_steps(converted, x, g), steps(model, x, g), 1e-10)


def test_fold_converts_a_plain_model_first():
    torch.manual_seed(9)
    model = dcgan().double().eval()
    folded = fold(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert not isinstance(model["G"], FusedSequential)  # the model itself is left as it was
    z = torch.randn(3, 16, 1, 1, dtype=torch.float64)
    torch.testing.assert_close(folded["D"](folded["G"](z)), model["D"](model["G"](z)), rtol=1e-10, atol=1e-10)


def test_a_slice_of_a_block_is_a_fused_sequential_with_its_mode():
    block = ConvTransposeBlock(8, 4, act="leaky_relu", memory_efficient=True)
    head = block[:2]
    assert type(head) is FusedSequential and head.memory_efficient and len(head) == 2
    assert head[0] is block[0] and isinstance(block[-1], nn.LeakyReLU)


@pytest.mark.parametrize("act", ["relu", "leaky_relu"])
def test_gradient_penalty_gives_every_parameter_plain_pytorchs_gradient(act):
    """R1 through a discriminator: the same gradient for every parameter as plain PyTorch,
    including the BatchNorm bias's zero (None would make a penalty-only optimizer step skip
    it, where plain PyTorch's Adam still moves it by its momentum)."""
    torch.manual_seed(10)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), ACT_MODULES[act], nn.Conv2d(4, 2, 3, bias=True),
                          ACT_MODULES[act], nn.Flatten(), nn.Linear(2 * 4 * 4, 1)).double()
    fused = convert(copy.deepcopy(plain))
    assert len(fused.fused_groups()) == 2
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    grads = []
    for model in (fused, plain):
        xr = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(model(xr).sum(), xr, create_graph=True)
        g.square().sum().backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        assert (a is None) == (b is None)
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated:FutureWarning")  # (the point)
@pytest.mark.parametrize("norm", ["spectral_norm", "weight_norm"])
def test_fold_of_a_model_with_a_hook_based_weight_says_what_to_use(norm):
    """torch.nn.utils.spectral_norm and weight_norm (hooks) leave a weight deepcopy refuses
    (spectral_norm's after a forward, weight_norm's from the start): fold() names the
    parametrizations version, which it supports."""
    model = nn.Sequential(getattr(nn.utils, norm)(nn.Conv2d(3, 4, 3)), nn.BatchNorm2d(4), nn.ReLU())
    model(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match=f"parametrizations.{norm}"):
        aigc_fast.nn.fold(model.eval())


def test_a_parametrized_weight_is_computed_once_per_forward():
    """spectral_norm's power iteration runs at each read of the weight: the projection path
    (1x1 input) read it twice, so a converted generator's _u drifted from the original's."""
    from torch.nn.utils import parametrize

    class Counting(nn.Module):
        calls = 0

        def forward(self, w):
            Counting.calls += 1
            return w

    for side in (1, 4):  # the projection (one matmul) and a general conv-transpose
        block = FusedSequential(nn.ConvTranspose2d(6, 5, 4, 1, 0, bias=False), nn.BatchNorm2d(5), nn.ReLU())
        parametrize.register_parametrization(block[0], "weight", Counting())
        Counting.calls = 0
        block(torch.randn(2, 6, side, side))
        assert Counting.calls == 1, side


def test_convert_turns_on_memory_efficient_in_containers_already_fused():
    from aigc_fast.models import DCGANGenerator

    G = convert(DCGANGenerator(nz=8, ngf=4, channels=1, image_size=16), memory_efficient=True)
    fused = [m for m in G.modules() if isinstance(m, FusedSequential)]
    assert fused and all(m.memory_efficient for m in fused)


def test_an_unbatched_image_gives_the_unconverted_models_result():
    """nn.Conv2d takes an unbatched [C, H, W] image; a converted model must too: its groups
    run their modules as themselves there (and fuse the batched input as usual)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, 1, 1), nn.LeakyReLU(0.2), nn.ConvTranspose2d(4, 2, 4, 2, 1), nn.Tanh())
    x = torch.randn(3, 8, 8)
    expected = model(x)
    converted = convert(copy.deepcopy(model))
    assert len(converted.fused_groups()) == 2
    torch.testing.assert_close(converted(x), expected)
    torch.testing.assert_close(converted(x[None]), expected[None])


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning",  # (torch deprecates jit)
                            "ignore::torch.jit.TracerWarning")  # (the shape checks are constants of a trace)
def test_jit_script_says_why_it_cannot_and_jit_trace_can():
    model = convert(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()))
    with pytest.raises(RuntimeError, match="torch.jit.script cannot compile a FusedSequential"):
        torch.jit.script(nn.Sequential(nn.Identity(), model))  # nested: found in a submodule too
    x = torch.randn(2, 3, 6, 6)
    traced = torch.jit.trace(model.eval(), x)
    torch.testing.assert_close(traced(x), model(x))
