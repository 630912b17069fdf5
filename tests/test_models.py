"""The models: shapes for every supported size, the DCGAN conventions, the two backends
(same parameters and state_dict keys, the same outputs and gradients, checkpoints loading
across), the VAEs' loss and sampling, and bad arguments."""

import pytest
import torch
from torch import nn

import aigc_fast
from aigc_fast import _extension
from aigc_fast import reference as aigc_reference
from aigc_fast.models import ConvVAE, DCGANDiscriminator, DCGANGenerator, MLPVAE
from aigc_fast.nn import FusedSequential

from conftest import FusedOpCounter

SIZES = [16, 28, 32, 64, 128]


def twins(cls, **kw):
    """The model in both backends with the same weights (fused first)."""
    torch.manual_seed(0)
    fused = cls(backend="fused", **kw).double()
    reference = cls(backend="reference", **kw).double()
    assert list(fused.state_dict()) == list(reference.state_dict())
    reference.load_state_dict(fused.state_dict())
    return fused, reference


@pytest.mark.parametrize("size", SIZES)
def test_dcgan_shapes_and_conventions(size):
    G = DCGANGenerator(nz=16, ngf=8, channels=3, image_size=size)
    D = DCGANDiscriminator(ndf=8, channels=3, image_size=size)
    images = G(torch.randn(5, 16))
    assert images.shape == (5, 3, size, size) and images.abs().max() <= 1
    assert G(torch.randn(5, 16, 1, 1)).shape == images.shape
    assert D(images).shape == (5,)
    convs = [m for m in [*G.modules(), *D.modules()] if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert all(c.bias is None for c in convs)
    weights = torch.cat([c.weight.flatten() for c in convs])
    assert abs(weights.std().item() - 0.02) < 0.003 and abs(weights.mean().item()) < 0.002
    assert isinstance(G.main, FusedSequential)
    assert len(G.main.fused_groups()) == sum(isinstance(m, nn.ConvTranspose2d) for m in G.modules())
    first_d_block = D.main[:2]
    assert isinstance(first_d_block[1], nn.LeakyReLU)  # no BatchNorm on D's first block


def test_mnist_dcgan_matches_the_issue_shapes():
    G = DCGANGenerator(nz=100, ngf=64, channels=1, image_size=28)
    widths = [m.out_channels for m in G.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert widths == [256, 128, 1]  # 100 -> 256@7 -> 128@14 -> 1@28
    D = DCGANDiscriminator(ndf=64, channels=1, image_size=28)
    assert [m.out_channels for m in D.modules() if isinstance(m, nn.Conv2d)] == [128, 256, 1]


def tutorial_dcgan(nz=100, ngf=64, ndf=64, nc=3):
    """The 64x64 DCGAN of the PyTorch tutorial, written out as it is there."""
    G = nn.Sequential(
        nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 8), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
        nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
        nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh())
    D = nn.Sequential(
        nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 4), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 8), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False))
    return G, D


@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_dcgan_64_is_the_tutorials(backend):
    """Same layers, widths and state_dict as the tutorial's nn.Sequential (its checkpoints
    load), and the same outputs from the same weights."""
    G, D = DCGANGenerator(backend=backend).double(), DCGANDiscriminator(backend=backend).double()
    tutorial_G, tutorial_D = (m.double() for m in tutorial_dcgan())
    for ours, theirs in ((G, tutorial_G), (D, tutorial_D)):
        theirs_state = {f"main.{k}": v for k, v in theirs.state_dict().items()}
        assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs_state.items()}
        ours.load_state_dict(theirs_state)
    z = torch.randn(3, 100, dtype=torch.float64)
    images = G(z)
    torch.testing.assert_close(images, tutorial_G(z[:, :, None, None]), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(D(images), tutorial_D(images).flatten(), rtol=1e-9, atol=1e-9)


def test_generator_refuses_a_z_it_would_misread():
    G = DCGANGenerator(nz=8, ngf=4, channels=1, image_size=28)
    for bad in (torch.randn(2, 7), torch.randn(2, 8, 2, 2), torch.randn(8), torch.randn(2, 8, 1)):
        with pytest.raises(ValueError, match=r"takes z \[N, 8\] or \[N, 8, 1, 1\]"):
            G(bad)


@pytest.mark.parametrize("cls, kw, make_input", [
    (DCGANGenerator, dict(nz=8, ngf=4, channels=1, image_size=28), lambda: torch.randn(4, 8, dtype=torch.float64)),
    (DCGANDiscriminator, dict(ndf=4, channels=3, image_size=32), lambda: torch.randn(4, 3, 32, 32, dtype=torch.float64)),
])
def test_backends_agree(cls, kw, make_input):
    fused, reference = twins(cls, **kw)
    x = make_input()
    for train in (True, False):
        fused.train(train)
        reference.train(train)
        outs = []
        for model in (fused, reference):
            model.zero_grad()
            with FusedOpCounter() as ops:
                y = model(x)
                y.square().sum().backward()
            assert (ops.forward_calls() > 0) == (model is fused and _extension.LOADED)
            outs.append([y.detach()] + [p.grad for p in model.parameters()] + list(model.buffers()))
        for a, b in zip(*outs):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("cls, kw, shape", [
    (ConvVAE, dict(latent_dim=6, channels=1, image_size=28, base=8), (4, 1, 28, 28)),
    (ConvVAE, dict(latent_dim=6, channels=3, image_size=32, base=8), (4, 3, 32, 32)),
    (MLPVAE, dict(input_dim=64, hidden=32, latent_dim=4), (4, 1, 8, 8)),
])
def test_vaes(cls, kw, shape):
    fused, reference = twins(cls, **kw)
    x = torch.rand(shape, dtype=torch.float64)
    for model in (fused, reference):
        model.eval()  # z = mu: both backends see the same z
    results = []
    for model in (fused, reference):
        model.zero_grad()
        with FusedOpCounter() as ops:
            loss, recon, kl = model.loss(x, model(x))  # forward's z = mu (loss(x) alone would sample)
            loss.backward()
        assert (ops.calls["vae_loss"] > 0) == (model is fused and _extension.LOADED)
        results.append([loss.detach(), recon, kl] + [p.grad for p in model.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    fused.train()
    recon_logits, mu, logvar = fused(x)
    assert mu.shape == logvar.shape == (shape[0], kw["latent_dim"])
    assert recon_logits.numel() == x.numel()
    samples = fused.sample(3, generator=torch.Generator().manual_seed(0))
    assert samples.shape[0] == 3 and samples.min() >= 0 and samples.max() <= 1
    # The sampled forward decodes z = mu + std * eps of the op each backend draws with (the
    # fused op's Philox, the reference's randn), in the argument order the op takes.
    for model, draw in ((fused, aigc_fast.reparameterize), (reference, aigc_reference.reparameterize)):
        model.eval()  # (BatchNorm's running statistics: the decode below sees the same)
        out, mu, logvar = model(x, sample=True, generator=torch.Generator().manual_seed(3))
        z = draw(mu, logvar, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(out, model.decode(z), rtol=1e-12, atol=1e-12)
        assert not torch.allclose(out, model(x, sample=False)[0])


def test_mlp_vae_decodes_z_of_any_leading_shape_as_nn_linear_does():
    """K samples of z per image ([K, N, latent], as an importance-weighted bound draws them)
    and a single z ([latent]): the fused bias + ReLU adds the bias along the features, which
    F.linear puts last (it had added it along dim 1, wrong without an error when
    z.shape[1] happened to equal the hidden width)."""
    fused, reference = twins(MLPVAE, input_dim=64, hidden=5, latent_dim=4)
    for shape in [(2, 5, 4), (3, 4), (4,)]:
        z = torch.randn(shape, dtype=torch.float64)
        torch.testing.assert_close(fused.decode(z), reference.decode(z), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls", [ConvVAE, MLPVAE])
def test_vae_loss_samples_z_in_eval_mode_too(cls):
    """loss(x) is the negative ELBO's estimate in either mode (a validation loss); forward's
    eval z = mu gives the reconstruction at the posterior mean instead."""
    model = (cls(latent_dim=4, image_size=16, base=8) if cls is ConvVAE else cls(256, 32, 4)).eval()
    x = torch.rand(8, 1, 16, 16)
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))  # loss goes through forward
    with torch.no_grad():
        drawn = [model.loss(x, generator=torch.Generator().manual_seed(seed))[1] for seed in (0, 0, 1)]
        torch.manual_seed(0)
        global_rng = model.loss(x)[1]
        at_mean = model.loss(x, model(x))[1]
    assert drawn[0] == drawn[1] and drawn[0] != drawn[2] and at_mean not in drawn + [global_rng]
    assert len(calls) == 5


def test_mlp_vae_loads_the_pytorch_example_checkpoint():
    class ExampleVAE(nn.Module):  # examples/vae/main.py's layers
        def __init__(self):
            super().__init__()
            self.fc1, self.fc21, self.fc22 = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)
            self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, 784)

    MLPVAE().load_state_dict(ExampleVAE().state_dict())


@pytest.mark.parametrize("call, match", [
    (lambda: DCGANGenerator(image_size=48), "image_size must be a power of two from 16 to 128, or 28"),
    (lambda: DCGANDiscriminator(image_size=256), "image_size must be"),
    (lambda: DCGANGenerator(backend="triton"), "backend must be one of"),
    (lambda: MLPVAE(backend="cuda"), "backend must be one of"),
    (lambda: DCGANDiscriminator(ndf=4, channels=1, image_size=28)(torch.zeros(2, 1, 32, 32)),
     r"takes images \[N, 1, 28, 28\], got shape \[2, 1, 32, 32\]"),
    (lambda: ConvVAE(4, channels=1, image_size=16, base=4)(torch.zeros(2, 3, 16, 16)), r"\[N, 1, 16, 16\]"),
    (lambda: MLPVAE()(torch.zeros(2, 3, 28, 28)), r"takes \[N, 784\] .*got shape \[2, 3, 28, 28\]"),
    (lambda: DCGANGenerator(ngf=0), "DCGANGenerator: ngf must be an integer >= 1, got 0"),
    (lambda: DCGANDiscriminator(ndf=-2), "DCGANDiscriminator: ndf must be an integer >= 1, got -2"),
    (lambda: ConvVAE(latent_dim=-1), "ConvVAE: latent_dim must be an integer >= 1, got -1"),
    (lambda: ConvVAE(base=0), "ConvVAE: base must be an integer >= 1, got 0"),
    (lambda: MLPVAE(hidden=0), "MLPVAE: hidden must be an integer >= 1, got 0"),
    (lambda: ConvVAE(4, channels=1, image_size=16, base=4).sample(-1), "n must be an integer >= 0"),
])
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_integer_inputs_are_named():
    """uint8 images or integer z: a TypeError naming the argument, not the first layer's
    "expected scalar type" error."""
    D = DCGANDiscriminator(ndf=4, channels=1, image_size=28)
    with pytest.raises(TypeError, match="DCGANDiscriminator takes floating-point images .* got torch.uint8"):
        D(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(TypeError, match="DCGANGenerator takes floating-point z .* got torch.int64"):
        DCGANGenerator(nz=8, ngf=4, channels=1, image_size=28)(torch.zeros(2, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="ConvVAE takes floating-point images"):
        ConvVAE(4, channels=1, image_size=16, base=4)(torch.zeros(2, 1, 16, 16, dtype=torch.uint8))


def test_vae_sample_runs_in_eval_mode_and_leaves_the_mode_alone():
    vae = ConvVAE(4, channels=1, image_size=16, base=4)
    with torch.no_grad():
        expected = torch.sigmoid(vae.eval().decode(torch.randn(3, 4, generator=torch.Generator().manual_seed(0))))
    vae.train()
    tracked = [m.num_batches_tracked.item() for m in vae.modules() if isinstance(m, nn.BatchNorm2d)]
    images = vae.sample(3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(images, expected)  # BatchNorm's running statistics, not the batch's
    assert vae.training and [m.num_batches_tracked.item() for m in vae.modules() if isinstance(m, nn.BatchNorm2d)] == tracked
    frozen = next(m for m in vae.modules() if isinstance(m, nn.BatchNorm2d)).eval()  # frozen inside a training model
    vae.sample(2)
    assert vae.training and not frozen.training  # each module's own mode comes back, not the model's


def test_torch_func_per_sample_gradients_run_on_the_reference():
    """torch.func cannot transform the fused ops' C++ autograd: under grad/vmap the default
    impl is the reference, so per-sample gradients (DP-SGD, influence functions) work on a
    fused model as they are, and equal a loop of ordinary backward passes."""
    import aigc_fast
    from torch.func import functional_call, grad, vmap

    torch.manual_seed(0)
    D = DCGANDiscriminator(ndf=4, channels=1, image_size=16).eval()  # eval: no running statistics to update
    params = {k: v.detach() for k, v in D.named_parameters()}
    images = torch.randn(3, 1, 16, 16)

    def loss(p, image):
        return aigc_fast.gan_g_loss(functional_call(D, p, (image[None],)))

    per_sample = vmap(grad(loss), in_dims=(None, 0))(params, images)
    for i, image in enumerate(images):
        D.zero_grad()
        aigc_fast.gan_g_loss(D(image[None])).backward()  # fused
        for name, p in D.named_parameters():
            torch.testing.assert_close(per_sample[name][i], p.grad, msg=name)
    with pytest.raises(RuntimeError, match="impl='fused' was requested .* torch.func transforms"):
        grad(lambda t: aigc_fast.gan_g_loss(t, impl="fused"))(torch.randn(4))
    # Inside torch.compile too, in one graph (dynamo answers whether a transform is active).
    logits = torch.randn(6)
    compiled = torch.compile(lambda t: grad(lambda u: aigc_fast.gan_g_loss(u))(t), fullgraph=True)
    torch.testing.assert_close(compiled(logits), grad(lambda u: aigc_fast.gan_g_loss(u))(logits))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")  # (torch's own, from forward_ad)
def test_forward_mode_ad_runs_on_the_reference():
    """The fused ops' C++ autograd has no jvp rule: inside forward_ad.dual_level the default
    impl is the reference, whose ATen ops have one, so a model's directional derivative is
    the finite difference's; impl="fused" there says why it cannot run."""
    import torch.autograd.forward_ad as fwAD

    import aigc_fast

    torch.manual_seed(0)
    D = DCGANDiscriminator(ndf=4, channels=1, image_size=16)
    images, direction = torch.randn(3, 1, 16, 16, dtype=torch.float64), torch.randn(3, 1, 16, 16, dtype=torch.float64)
    D = D.double()

    def loss(x):
        mu, logvar = x.flatten(1)[:, :8], x.flatten(1)[:, 8:16]
        z = aigc_fast.reparameterize(mu, logvar, eps=torch.ones_like(mu))
        return aigc_fast.gan_d_loss(D(x), z) + aigc_fast.vae_loss(x, torch.sigmoid(x), mu, logvar)[0]

    with fwAD.dual_level():
        tangent = fwAD.unpack_dual(loss(fwAD.make_dual(images, direction))).tangent
        with pytest.raises(RuntimeError, match="impl='fused' was requested .* forward-mode AD"):
            aigc_fast.gan_g_loss(torch.randn(4), impl="fused")
    step = 1e-6  # (in training mode BatchNorm uses the batch's statistics: the loss is a function of x alone)
    expected = (loss(images + step * direction) - loss(images - step * direction)) / (2 * step)
    torch.testing.assert_close(tangent, expected, rtol=1e-5, atol=1e-7)


def test_dcgan_batchnorm_starts_near_one_with_zero_bias():
    """DCGAN's BatchNorm init: weights ~ N(1, 0.02), biases 0 (a BatchNorm scale near 0 would start training dead)."""
    torch.manual_seed(0)
    norms = [m for model in (DCGANGenerator(nz=16, ngf=16, channels=3, image_size=64),
                             DCGANDiscriminator(ndf=16, channels=3, image_size=64))
             for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    weights = torch.cat([m.weight.detach() for m in norms])
    assert abs(weights.mean().item() - 1.0) < 0.005 and abs(weights.std().item() - 0.02) < 0.005
    assert all(torch.equal(m.bias.detach(), torch.zeros_like(m.bias)) for m in norms)
