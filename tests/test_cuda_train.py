"""The trainers on a GPU with the step replayed as a CUDA graph (run only where a GPU is
visible): the same losses and weights as eager steps, step for step (the noise included),
an epoch's short batch run eagerly in between, fit and resume; and where the graph does
not apply."""

import pytest
import torch

from aigc_fast.train import GANConfig, GANTrainer, VAEConfig, VAETrainer
from aigc_fast.train.cuda_graph import WARMUP_STEPS

from conftest import requires_cuda, requires_fused

pytestmark = [requires_cuda, requires_fused, pytest.mark.cuda]


def make(kind, tmp_path, **kw):
    common = dict(out_dir=str(tmp_path), image_size=16, channels=1, batch_size=8, device="cuda", progress=False,
                  holdout=0.0, log_every=1, sample_every=1000, num_samples=4)
    if kind == "gan":
        return GANTrainer(GANConfig(**{**common, "nz": 8, "ngf": 8, "ndf": 8, **kw}))
    return VAETrainer(VAEConfig(**{**common, "latent_dim": 4, "base": 8, **kw}))


def batches(trainer, sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    lo, hi = trainer.value_range
    fmt = torch.channels_last if trainer.config.channels_last else torch.contiguous_format
    return [(torch.rand(n, 1, 16, 16, generator=g) * (hi - lo) + lo).to("cuda", memory_format=fmt) for n in sizes]


def run(kind, tmp_path, sizes, **kw):
    """(losses per step, final weights) of a trainer stepped through batches of `sizes`."""
    torch.cuda.manual_seed(1)
    trainer = make(kind, tmp_path, **kw)
    losses = [trainer.train_step(b) for b in batches(trainer, sizes)]
    weights = {k: v.detach().float().cpu() for name, m in trainer.modules().items()
               if isinstance(m, torch.nn.Module) for k, v in m.state_dict().items()}
    return trainer, losses, weights


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("kind", ["gan", "vae"])
def test_graphed_steps_give_the_eager_losses_and_weights(tmp_path, kind, precision):
    """Warm-up, capture, replays and a short batch in between (eager, then replays again),
    against the same steps all eager: the noise drawn in a replay is the noise the eager
    step draws (the generator's offsets advance alike), so the runs agree to rounding."""
    sizes = [8] * (WARMUP_STEPS + 3) + [5] + [8] * 2
    graphed, g_losses, g_weights = run(kind, tmp_path / "g", sizes, precision=precision)
    assert graphed.cuda_graph and graphed._graphed.captured
    _, e_losses, e_weights = run(kind, tmp_path / "e", sizes, precision=precision, cuda_graph=False)
    tol = 1e-4 if precision == "fp32" else 2e-2
    for step, (a, b) in enumerate(zip(g_losses, e_losses)):
        for name in a:
            assert a[name] == pytest.approx(b[name], rel=tol, abs=tol), (step, name, g_losses, e_losses)
    for name in e_weights:
        torch.testing.assert_close(g_weights[name], e_weights[name], rtol=tol, atol=tol, msg=name)


def test_replays_draw_fresh_noise(tmp_path):
    """The same batch replayed twice trains on new noise (different losses), not the
    captured step's noise again."""
    trainer = make("gan", tmp_path)
    batch = batches(trainer, [8])[0]
    losses = [trainer.train_step(batch)["g_loss"] for _ in range(WARMUP_STEPS + 3)]
    assert trainer._graphed.captured
    assert len(set(losses[WARMUP_STEPS:])) == 3, losses


def test_fit_and_resume_with_the_graph(tmp_path):
    """fit captures after the warm-up; a resumed run loads new optimizer state, so it
    captures again, and ends where an uninterrupted eager run ends."""
    data = torch.rand(40, 1, 16, 16, generator=torch.Generator().manual_seed(0))  # 5 batches of 8
    first = make("vae", tmp_path / "run", max_steps=6, epochs=3)
    first.fit(data)
    assert first._graphed.captured and first.step == 6
    resumed = make("vae", tmp_path / "run", max_steps=10, epochs=3)
    resumed.fit(data, resume=True)
    assert resumed.step == 10 and resumed._graphed.captured
    eager = make("vae", tmp_path / "eager", max_steps=10, epochs=3, cuda_graph=False)
    eager.fit(data)
    for (name, a), b in zip(resumed.model.state_dict().items(), eager.model.state_dict().values()):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-4, atol=1e-4, msg=name)


@pytest.mark.parametrize("setting", [dict(precision="fp16"), dict(compile=True), dict(cuda_graph=False)])
def test_steps_stay_eager_where_the_graph_does_not_apply(tmp_path, setting):
    trainer = make("gan", tmp_path, **setting)
    assert not trainer.cuda_graph and trainer._graphed is None
    assert not trainer.opt_g.param_groups[0]["capturable"]
