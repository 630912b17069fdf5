"""torch.export of fused models and losses (docs/api.md, Compatibility): the exported
program keeps the aigc_fast ops (it does not fall back to the reference), gives the
eager model's outputs (for any batch size, exported as dynamic), updates BatchNorm's running statistics in training as the eager
model does, and differentiates a loss exported with inputs that require grad; an
AOTInductor package of a folded generator; and torch.onnx.export, which runs the reference ops (ONNX has no aigc_fast operators)."""

import copy

import pytest
import torch

import aigc_fast
from aigc_fast.models import ConvVAE, DCGANGenerator
from aigc_fast.nn import fold

from conftest import requires_fused

pytestmark = requires_fused


def exported_ops(program) -> set:
    return {node.target.name() for node in program.graph.nodes
            if node.op == "call_function" and str(node.target).startswith("aigc_fast.")}


@pytest.mark.parametrize("folded", [False, True])
def test_an_exported_generator_runs_the_fused_ops_in_eval(folded):
    torch.manual_seed(0)
    generator = DCGANGenerator(nz=16, ngf=8, channels=1, image_size=28).eval()
    if folded:
        generator = fold(generator)
    z = torch.randn(5, 16)
    batch = torch.export.Dim("batch", min=2)
    program = torch.export.export(generator, (z,), dynamic_shapes={"z": {0: batch}})
    expected_ops = {"aigc_fast::bias_act"} if folded else {"aigc_fast::bn_act", "aigc_fast::bias_act"}
    assert exported_ops(program) == expected_ops
    z = torch.randn(3, 16)  # another batch size than the example's: the batch is dynamic
    with torch.no_grad():
        torch.testing.assert_close(program.module()(z), generator(z))


def test_an_exported_vae_in_training_samples_and_updates_running_statistics():
    torch.manual_seed(0)
    vae = ConvVAE(latent_dim=8, base=8).train()
    eager = copy.deepcopy(vae)
    x = torch.rand(4, 1, 28, 28)
    exported = torch.export.export(vae, (x,)).module()
    assert "aigc_fast::reparameterize" in exported_ops(torch.export.export(vae, (x,)))
    for seed in (1, 2):
        torch.manual_seed(seed)
        got = exported(x)
        torch.manual_seed(seed)
        want = eager(x)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)
    buffers = dict(exported.named_buffers())
    for name, value in eager.named_buffers():
        torch.testing.assert_close(buffers[name], value, msg=name)
    assert not torch.equal(exported(x)[0], exported(x)[0]), "each call draws fresh noise"


def test_an_exported_loss_is_differentiated_for_the_inputs_that_required_grad():
    class DLoss(torch.nn.Module):
        def forward(self, real, fake):
            return aigc_fast.gan_d_loss(real, fake)

    real, fake = torch.randn(8, requires_grad=True), torch.randn(6, requires_grad=True)
    loss = torch.export.export(DLoss(), (real, fake)).module()(real, fake)
    loss.backward()
    real_eager, fake_eager = real.detach().requires_grad_(), fake.detach().requires_grad_()
    aigc_fast.gan_d_loss(real_eager, fake_eager, impl="reference").backward()
    torch.testing.assert_close(real.grad, real_eager.grad)
    torch.testing.assert_close(fake.grad, fake_eager.grad)

    # Exported from inputs without grad, the program computed no gradient: asked for one,
    # it says so rather than returning zeros.
    program = torch.export.export(DLoss(), (real.detach(), fake.detach())).module()
    with pytest.raises(RuntimeError, match="gradient of real_logits was not computed"):
        program(torch.randn(8, requires_grad=True), fake.detach()).backward()


def test_an_aoti_package_of_a_folded_generator_calls_the_fused_op(tmp_path):
    """AOTInductor (deployment without Python's model code): the package's compiled wrapper
    calls aigc_fast::bias_act through torch's dispatcher, so it gives the eager model's
    images at any batch size, once aigc_fast is imported where the package is loaded."""
    torch.manual_seed(0)
    generator = fold(DCGANGenerator(nz=16, ngf=8, channels=1, image_size=28).eval())
    z = torch.randn(5, 16)
    program = torch.export.export(generator, (z,), dynamic_shapes={"z": {0: torch.export.Dim("batch", min=2)}})
    assert exported_ops(program) == {"aigc_fast::bias_act"}
    path = torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "generator.pt2"))
    runner = torch._inductor.aoti_load_package(path)
    for batch in (5, 3):
        z = torch.randn(batch, 16)
        with torch.no_grad():
            torch.testing.assert_close(runner(z), generator(z))


@pytest.mark.filterwarnings("ignore::DeprecationWarning",  # (torch deprecates the TorchScript exporter)
                            "ignore::torch.jit.TracerWarning")  # (it traces the shape checks)
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_onnx_export_traces_the_reference_ops(dynamo, tmp_path):
    """ONNX has no aigc_fast operators: under torch.onnx.export the ops run their reference,
    so a generator, fused or folded, exports as it is, and onnxruntime gives its outputs.
    Asking for the fused ops there is refused by name (by the TorchScript exporter; the
    dynamo one retries other ways to capture and reports its own error last)."""
    pytest.importorskip("onnx")
    runtime = pytest.importorskip("onnxruntime")
    if dynamo:
        pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    generator = DCGANGenerator(nz=8, ngf=8, channels=1, image_size=16).eval()
    z = torch.randn(3, 8)
    path = str(tmp_path / "generator.onnx")
    for model in (generator, fold(copy.deepcopy(generator))):
        torch.onnx.export(model, (z,), path, dynamo=dynamo)
        session = runtime.InferenceSession(path)
        (images,) = session.run(None, {session.get_inputs()[0].name: z.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(images), model(z), rtol=1e-5, atol=1e-6)
    if not dynamo:
        with aigc_fast.use_impl("fused"), pytest.raises(RuntimeError, match="ONNX has no aigc_fast operators"):
            torch.onnx.export(generator, (z,), path, dynamo=False)
