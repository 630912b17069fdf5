"""The trainers: configs round-trip to JSON; a GAN and a VAE run on tiny data and leave
metrics, sample grids and a checkpoint; a run stopped mid-epoch and resumed reaches the
same weights as an uninterrupted one (both backends); the fused backend tracks the
reference step by step; a save interrupted by an exception leaves the previous checkpoint;
a NaN loss stops the run naming the step; Ctrl-C stops between steps with a checkpoint
that resumes exactly."""

import dataclasses
import json
import re
import signal

import numpy as np
import pytest
import torch

from aigc_fast import _extension
from aigc_fast.data import ImageData
from aigc_fast.images import make_grid
from aigc_fast.train import (GANConfig, GANTrainer, NonFiniteLossError, TrainingInterrupted, VAEConfig, VAETrainer,
                             load_checkpoint, load_run, save_atomic)

from conftest import FusedOpCounter, requires_fused


def tiny_gan(tmp_path, **kw):
    base = dict(out_dir=str(tmp_path), image_size=16, channels=1, nz=8, ngf=4, ndf=4, batch_size=8, epochs=2,
                log_every=1, sample_every=3, num_samples=4, progress=False, holdout=0.0)
    return GANConfig(**{**base, **kw})


def tiny_images(n=32, size=16, seed=0):
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def test_configs_round_trip_through_json(tmp_path):
    for config in (GANConfig(loss="hinge", betas=(0.0, 0.9), max_steps=7), VAEConfig(model="mlp", beta=4.0)):
        assert type(config).from_json(config.to_json()) == config
        path = tmp_path / f"{config.kind}.json"
        config.to_json(path)
        assert type(config).from_json(path) == config
    with pytest.raises(ValueError, match="not a 'vae' one"):
        VAEConfig.from_json(GANConfig().to_json())
    with pytest.raises(ValueError, match="unknown GANConfig fields"):
        GANConfig.from_json(json.dumps({"kind": "gan", "learning_rate": 1}))


def test_gan_run_leaves_metrics_samples_and_checkpoint(tmp_path):
    trainer = GANTrainer(tiny_gan(tmp_path))
    metrics = trainer.fit(tiny_images())
    assert trainer.step == 8 and trainer.epoch == 2
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9)) and all(r["d_loss"] > 0 for r in rows)
    assert {"d_loss", "g_loss", "images_per_s"} <= set(metrics)
    epochs = [json.loads(line) for line in (tmp_path / "epochs.jsonl").read_text().splitlines()]
    assert [(e["epoch"], e["step"], e["steps"]) for e in epochs] == [(0, 4, 4), (1, 8, 4)]
    assert epochs[1]["d_loss"] == pytest.approx(sum(r["d_loss"] for r in rows[4:]) / 4)
    assert (tmp_path / "samples" / "final.png").is_file() and (tmp_path / "samples" / "step0000003.png").is_file()
    assert GANConfig.from_json(tmp_path / "config.json") == trainer.config
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["step"] == 8 and set(state["modules"]) == {"G", "D", "opt_g", "opt_d"}
    assert trainer.generate(3, seed=0).shape == (3, 1, 16, 16)


def test_a_fresh_run_does_not_overwrite_a_finished_one(tmp_path):
    GANTrainer(tiny_gan(tmp_path, max_steps=2)).fit(tiny_images())
    before = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(ValueError, match="already holds a run .*resume it"):
        GANTrainer(tiny_gan(tmp_path, max_steps=3, seed=1)).fit(tiny_images())
    assert (tmp_path / "metrics.jsonl").read_text() == before and load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 2
    (tmp_path / "checkpoint.pt").unlink()  # as a run stopped before its first checkpoint leaves it
    with pytest.raises(ValueError, match="stopped before its first checkpoint .*, so there is nothing to resume"):
        GANTrainer(tiny_gan(tmp_path, max_steps=3, seed=1)).fit(tiny_images())


@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_resume_reaches_the_uninterrupted_weights(tmp_path, backend):
    images = tiny_images(40)  # 5 batches of 8 per epoch
    whole = GANTrainer(tiny_gan(tmp_path / "whole", backend=backend, flip=True))
    whole.fit(ImageData(images * 2 - 1, flip=True))
    first = GANTrainer(tiny_gan(tmp_path / "split", backend=backend, flip=True, max_steps=3))
    first.fit(ImageData(images * 2 - 1, flip=True))  # stops mid-epoch 0
    resumed = GANTrainer(tiny_gan(tmp_path / "split", backend=backend, flip=True))
    resumed.fit(ImageData(images * 2 - 1, flip=True), resume=True)
    assert resumed.step == whole.step == 10
    for a, b in zip([*whole.G.state_dict().values(), *whole.D.state_dict().values()],
                    [*resumed.G.state_dict().values(), *resumed.D.state_dict().values()]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["gan", "vae"])
def test_fused_tracks_reference(tmp_path, kind, monkeypatch):
    """Liger-Kernel-style convergence check: the same seed, 12 steps on each backend; every
    step's losses, the first step's gradients and the final parameters agree to float32
    tolerance. (The gradients themselves: Adam's steps are blind to a gradient's scale, so
    parameters alone would pass a gradient off by a constant factor.) The VAE's noise is
    drawn by torch.randn for both (the fused op's own Philox stream differs from the
    reference's torch.randn by design; its statistics are tested in test_noise.py)."""
    import aigc_fast.models.vae as vae_module

    fused_reparameterize = vae_module.reparameterize
    monkeypatch.setattr(vae_module, "reparameterize",
                        lambda mu, logvar, generator=None, impl=None:
                        fused_reparameterize(mu, logvar, eps=torch.randn_like(mu), impl=impl))
    runs = {}
    for backend in ("fused", "reference"):
        if kind == "gan":
            trainer = GANTrainer(tiny_gan(tmp_path / backend, backend=backend, epochs=3, precision="fp32"))
        else:
            trainer = VAETrainer(VAEConfig(out_dir=str(tmp_path / backend), backend=backend, image_size=16, latent_dim=4,
                                           base=8, batch_size=8, epochs=3, log_every=1, sample_every=1000, precision="fp32",
                                           num_samples=4, progress=False, holdout=0.0))
        first_grads = []

        def optimize(loss, optimizer, plain=trainer.optimize, trainer=trainer, first_grads=first_grads):
            plain(loss, optimizer)  # (the gradients stay until the next step's zero_grad)
            if trainer.step == 0:
                first_grads += [p.grad.detach().clone() for group in optimizer.param_groups for p in group["params"]
                                if p.grad is not None]

        trainer.optimize = optimize
        with FusedOpCounter() as ops:
            trainer.fit(tiny_images())
        assert (ops.forward_calls() > 0) == (backend == "fused" and _extension.LOADED)
        rows = [json.loads(line) for line in (tmp_path / backend / "metrics.jsonl").read_text().splitlines()]
        params = torch.cat([p.detach().flatten() for m in trainer.modules().values() if isinstance(m, torch.nn.Module)
                            for p in m.parameters()])
        runs[backend] = rows, params, first_grads
    (fused_rows, fused_params, fused_grads), (ref_rows, ref_params, ref_grads) = runs["fused"], runs["reference"]
    assert len(fused_grads) == len(ref_grads) > 0
    for f, r in zip(fused_grads, ref_grads):
        torch.testing.assert_close(f, r, rtol=1e-4, atol=1e-6)
    assert len(fused_rows) == len(ref_rows) == 12
    for f, r in zip(fused_rows, ref_rows):
        for name in f:
            if name not in ("step", "epoch", "images_per_s"):
                assert f[name] == pytest.approx(r[name], rel=1e-4, abs=1e-4), (f["step"], name)
    torch.testing.assert_close(fused_params, ref_params, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("model", ["conv", "mlp"])
def test_vae_learns(tmp_path, model):
    config = VAEConfig(out_dir=str(tmp_path), model=model, image_size=16, channels=1, latent_dim=4, base=8,
                       batch_size=16, epochs=6, log_every=1, sample_every=1000, num_samples=4, progress=False, holdout=0.0)
    trainer = VAETrainer(config)
    stripes = ((torch.arange(16)[:, None] + torch.arange(16)) % 4 == 0).float()
    images = stripes.expand(64, 1, 16, 16).clone()  # structure to learn (random pixels have none)
    images[::2] = 1 - images[::2]
    trainer.fit(images)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < 0.9 * rows[0]["loss"]
    assert (tmp_path / "samples" / "final.png").is_file()
    from PIL import Image

    with Image.open(tmp_path / "samples" / "recon_final.png") as grid:  # a row of 2 reals over their 2 recons
        assert grid.size == (2 * 18 + 2, 2 * 18 + 2)


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_atomic({"step": 1}, path)

    class Explodes:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_atomic({"step": 2, "bad": Explodes()}, path)
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left


def test_nan_loss_stops_the_run_naming_the_step(tmp_path):
    images = tiny_images(32)
    images[20] = float("nan")  # in the third batch of epoch 1 (order is seeded), or earlier
    # num_samples=2: the data's check at the start reads one image (0), which would refuse a NaN.
    config = VAEConfig(out_dir=str(tmp_path), model="mlp", image_size=16, latent_dim=2, batch_size=8, epochs=3,
                       progress=False, holdout=0.0, num_samples=2)
    trainer = VAETrainer(config)
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step \d+ \(epoch 0\)"):
        trainer.fit(ImageData(images))
    assert trainer.step < 4


def test_wgan_without_a_constraint_is_refused(tmp_path):
    with pytest.raises(ValueError, match="Lipschitz"):
        GANTrainer(tiny_gan(tmp_path, loss="wgan"))


def test_max_steps_counts_before_the_step_and_epoch_boundaries_roll_over(tmp_path):
    images = tiny_images(32)  # 4 batches of 8 per epoch
    zero = GANTrainer(tiny_gan(tmp_path / "zero", max_steps=0))
    zero.fit(images)
    assert zero.step == 0
    first = GANTrainer(tiny_gan(tmp_path / "run", max_steps=4))  # stops exactly at the end of epoch 0
    first.fit(images)
    assert (first.step, first.epoch, first.batch_in_epoch) == (4, 1, 0)
    again = GANTrainer(tiny_gan(tmp_path / "run", epochs=1))
    again.fit(images, resume=True)
    assert (again.step, again.epoch) == (8, 2)  # a whole new epoch, not the finished one again
    rows = [json.loads(line) for line in (tmp_path / "run" / "epochs.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["steps"], r["complete"]) for r in rows] == [(0, 4, True), (1, 4, True)]
    # An epoch a stop cuts in two: a row per part, the first marked incomplete.
    GANTrainer(tiny_gan(tmp_path / "cut", max_steps=2)).fit(images)
    GANTrainer(tiny_gan(tmp_path / "cut", epochs=1, max_steps=None)).fit(images, resume=True)
    rows = [json.loads(line) for line in (tmp_path / "cut" / "epochs.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["steps"], r["complete"]) for r in rows] == [(0, 2, False), (0, 2, True)]


def test_resume_names_a_checkpoint_of_the_other_kind(tmp_path):
    """Checked first: the other kind's config reads as changed data settings (batch_size here)."""
    VAETrainer(VAEConfig(out_dir=str(tmp_path), model="mlp", image_size=16, latent_dim=2, batch_size=4, max_steps=1,
                         progress=False, holdout=0.0)).fit(ImageData(tiny_images()))
    with pytest.raises(ValueError, match="this is a 'vae' checkpoint, not a 'gan' one"):
        GANTrainer(tiny_gan(tmp_path, max_steps=2)).fit(tiny_images(), resume=True)


def test_a_large_seed_trains_and_one_past_64_bits_is_refused(tmp_path):
    """The epoch's shuffling seed, seed * 1_000_003 + epoch, overflowed the generator's 64 bits
    for seeds above 1.8e13, after config.json was written."""
    trainer = GANTrainer(tiny_gan(tmp_path / "large", seed=2**63 - 1, max_steps=1))
    trainer.fit(tiny_images())
    assert trainer.step == 1
    # Seeds that fitted keep their order (manual_seed took a negative value mod 2**64 too).
    negative = GANTrainer(tiny_gan(tmp_path / "negative", seed=-3))
    expected = torch.randperm(32, generator=torch.Generator().manual_seed(-3 * 1_000_003)).tolist()
    assert negative._batches(32) == [expected[i:i + 8] for i in range(0, 32, 8)]
    for bad in (2**63, -2**63 - 1, 1.5, True):
        with pytest.raises(ValueError, match=r"seed must be an integer from -2\*\*63 to 2\*\*63 - 1"):
            GANTrainer(tiny_gan(tmp_path / "bad", seed=bad))
    assert not (tmp_path / "bad").exists()


def test_resume_refuses_settings_that_change_the_data_order(tmp_path):
    GANTrainer(tiny_gan(tmp_path, max_steps=2)).fit(tiny_images())
    with pytest.raises(ValueError, match=r"batch_size 8 -> 4"):
        GANTrainer(tiny_gan(tmp_path, batch_size=4)).fit(tiny_images(), resume=True)


def test_mse_vae_generates_its_decoder_means(tmp_path):
    config = VAEConfig(out_dir=str(tmp_path), model="mlp", recon_loss="mse", image_size=16, latent_dim=2, batch_size=8,
                       max_steps=2, num_samples=1, progress=False, holdout=0.0)
    trainer = VAETrainer(config)
    trainer.fit(tiny_images())
    z = torch.randn(5, 2, generator=torch.Generator().manual_seed(3))
    trainer.model.eval()
    expected = trainer.model.decode(z).clamp(0, 1).view(5, 1, 16, 16)  # no sigmoid: mse decodes means
    torch.testing.assert_close(trainer.generate(5, seed=3), expected)


def test_resume_takes_the_new_lr_and_betas_and_refuses_another_model(tmp_path):
    GANTrainer(tiny_gan(tmp_path, max_steps=2)).fit(tiny_images())
    with pytest.raises(ValueError, match="different model .*ngf 4 -> 8"):
        GANTrainer(tiny_gan(tmp_path, ngf=8, max_steps=3)).fit(tiny_images(), resume=True)
    resumed = GANTrainer(tiny_gan(tmp_path, lr=1e-5, betas=(0.9, 0.99), max_steps=3))
    resumed.fit(tiny_images(), resume=True)
    for optimizer in (resumed.opt_g, resumed.opt_d):
        assert optimizer.param_groups[0]["lr"] == 1e-5 and optimizer.param_groups[0]["betas"] == (0.9, 0.99)
        assert optimizer.param_groups[0]["fused"]  # the fused Adam, before and after the resume
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["modules"]["opt_d"]["param_groups"][0]["lr"] == 1e-5 and state["config"]["lr"] == 1e-5


def test_resume_drops_the_rows_logged_after_the_checkpoint(tmp_path):
    GANTrainer(tiny_gan(tmp_path, max_steps=3)).fit(tiny_images())
    with open(tmp_path / "metrics.jsonl", "a") as log:  # as a run stopped two steps after it leaves them
        log.writelines(json.dumps({"step": s, "epoch": 1, "d_loss": 1.0}) + "\n" for s in (4, 5))
        log.write('{"step": 6, "epo')  # a row cut short by the stop
    GANTrainer(tiny_gan(tmp_path, max_steps=6)).fit(tiny_images(), resume=True)
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_an_mlp_vae_resumes_whatever_base_says(tmp_path):
    """base shapes only the conv VAE: the MLP's resume must not refuse a change of it."""
    config = dict(out_dir=str(tmp_path), model="mlp", image_size=28, channels=1, latent_dim=2, batch_size=8,
                  progress=False, holdout=0.0, log_every=1, sample_every=100, num_samples=4)
    VAETrainer(VAEConfig(**config, max_steps=1)).fit(ImageData(torch.rand(16, 1, 28, 28)))
    VAETrainer(VAEConfig(**config, base=8, max_steps=2)).fit(ImageData(torch.rand(16, 1, 28, 28)), resume=True)
    with pytest.raises(ValueError, match="different model .*latent_dim 2 -> 3"):
        VAETrainer(VAEConfig(**{**config, "latent_dim": 3}, max_steps=3)).fit(ImageData(torch.rand(16, 1, 28, 28)),
                                                                             resume=True)


def test_images_outside_the_trainers_range_are_refused(tmp_path):
    config = VAEConfig(out_dir=str(tmp_path), image_size=16, channels=1, latent_dim=2, base=4, batch_size=8,
                       max_steps=1, progress=False, holdout=0.0)
    with pytest.raises(ValueError, match=r"vae trainer's images are in \[0, 1\].*\[-1"):
        VAETrainer(config).fit(ImageData(tiny_images() * 2 - 1))
    assert not (tmp_path / "metrics.jsonl").exists()
    # NaN compares false with both bounds: it passed, and the run died at its first step.
    with pytest.raises(ValueError, match="the data holds NaN or infinite values"):
        VAETrainer(config).fit(ImageData(torch.full((16, 1, 16, 16), float("nan"))))
    assert not (tmp_path / "metrics.jsonl").exists()


def test_a_dataset_of_bare_images_trains(tmp_path):
    """Unconditional sets often give images without labels: the trainers use none."""
    class Images(torch.utils.data.Dataset):
        def __init__(self, images):
            self.images = images

        def __len__(self):
            return len(self.images)

        def __getitem__(self, index):
            return self.images[index]

    trainer = GANTrainer(tiny_gan(tmp_path / "bare", max_steps=2))
    trainer.fit(Images(tiny_images() * 2 - 1))
    assert trainer.step == 2
    for items, error, match in ((Images(tiny_images()[:, 0]), ValueError, r"got a tensor of shape \[16, 16\]"),
                                (Images(tiny_images().numpy()), TypeError, "got a ndarray"),
                                (ImageData(tiny_images()[:, 0]), ValueError, "as an item's first element")):
        with pytest.raises(error, match="items must be \\(image, label\\) pairs or images.*" + match):
            GANTrainer(tiny_gan(tmp_path / "bad", max_steps=1)).fit(items)


def test_a_data_path_is_recorded_absolute(tmp_path, monkeypatch):
    import numpy as np

    np.savez(tmp_path / "images.npz", images=(tiny_images().numpy() * 255).astype(np.uint8))
    monkeypatch.chdir(tmp_path)
    trainer = GANTrainer(tiny_gan(tmp_path / "run", max_steps=1))
    trainer.fit("images.npz")
    assert trainer.config.data == str(tmp_path / "images.npz")
    GANTrainer(tiny_gan(tmp_path / "run", max_steps=2, data="images.npz")).fit(resume=True)  # same file, relative
    with pytest.raises(FileNotFoundError, match="no folder 'missing/images'"):
        GANTrainer(tiny_gan(tmp_path / "other", max_steps=1)).fit("missing/images")
    with pytest.raises(ValueError, match="data must be one of"):  # a mistyped name stays a name
        GANTrainer(tiny_gan(tmp_path / "other", max_steps=1)).fit("mnsit")


def test_config_checks_and_files(tmp_path):
    for field in ("log_every", "sample_every", "batch_size", "num_samples", "nz", "ngf", "ndf"):
        with pytest.raises(ValueError, match=f"{field} must be an integer >= 1"):
            GANConfig(**{field: 0})
    for field in ("latent_dim", "base"):
        with pytest.raises(ValueError, match=f"{field} must be an integer >= 1"):
            VAEConfig(**{field: 0})
    with pytest.raises(ValueError, match="image_size must be one of 16, 28, 32, 64, 128 for the convolutional"):
        GANConfig(image_size=20)
    assert VAEConfig(model="mlp", image_size=20).image_size == 20  # an MLP takes any size
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="max_steps must be None .* or an integer >= 0"):
            GANConfig(max_steps=bad)
    (tmp_path / "my.cfg").write_text(GANConfig(nz=7).to_json())
    assert GANConfig.from_json(str(tmp_path / "my.cfg")).nz == 7
    with pytest.raises(ValueError, match=r"my.cfg is a 'gan' config, not a 'vae' one \(aigc-fast train gan"):
        VAEConfig.from_json(str(tmp_path / "my.cfg"))
    with pytest.raises(FileNotFoundError, match="no config file"):
        GANConfig.from_json(str(tmp_path / "none.cfg"))
    (tmp_path / "bad.json").write_text("nz: 7")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        GANConfig.from_json(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="channels must be 1 .* or 3"):
        VAEConfig(channels=2)
    for bad, match in ((dict(recon_loss="l1"), "recon_loss must be one of 'bce', 'mse', got 'l1'"), (dict(beta=-1.0), "beta")):
        with pytest.raises(ValueError, match=match):  # refused before the run directory is written
            VAETrainer(VAEConfig(out_dir=str(tmp_path / "vae"), progress=False, **bad))
        assert not (tmp_path / "vae").exists()


def test_path_fields_are_kept_as_text_and_a_file_is_no_run_directory(tmp_path):
    """A pathlib.Path for out_dir or data is what a researcher passes; config.json could not
    hold one (fit failed writing it). An empty name (the working folder) and a run
    directory that is, or lies under, a file are refused before anything is written."""
    config = GANConfig(out_dir=tmp_path / "run", data=tmp_path / "images.npz")
    assert config.out_dir == str(tmp_path / "run") and config.data == str(tmp_path / "images.npz")
    assert GANConfig.from_json(config.to_json()).out_dir == config.out_dir
    (tmp_path / "a_file").write_text("")
    for out_dir, match in (("", "out_dir must be a non-empty str or Path"),
                           (tmp_path / "a_file", "a_file' is a file, not a folder"),
                           (tmp_path / "a_file" / "run", "a_file' is a file, not a folder")):
        with pytest.raises(ValueError, match=match):
            GANConfig(out_dir=out_dir)
    with pytest.raises(ValueError, match="data must be a non-empty str or Path, got ' '"):
        VAEConfig(data=" ")
    assert type(GANConfig(holdout=np.float32(0.25)).holdout) is float  # config.json could not hold a NumPy scalar
    with pytest.raises(TypeError, match="holdout must be a number, got str"):
        GANConfig(holdout="0.1")


def test_resume_refuses_another_loss(tmp_path):
    """From Python a fresh config's defaults would replace the recorded loss unnoticed."""
    GANTrainer(tiny_gan(tmp_path, loss="hinge", max_steps=2)).fit(tiny_images())
    with pytest.raises(ValueError, match="different loss \\(loss 'hinge' -> 'bce'\\)"):
        GANTrainer(tiny_gan(tmp_path, max_steps=3)).fit(tiny_images(), resume=True)
    resumed = GANTrainer(tiny_gan(tmp_path, loss="hinge", max_steps=3))
    resumed.fit(tiny_images(), resume=True)
    assert resumed.step == 3


def ctrl_c_during_step(trainer, at_step, presses=1):
    """Makes `presses` Ctrl-Cs arrive in the middle of step `at_step` (after its D update)."""
    train_step = trainer.train_step

    def step(images):
        metrics = train_step(images)
        if trainer.step + 1 == at_step:
            for _ in range(presses):
                signal.raise_signal(signal.SIGINT)
        return metrics

    trainer.train_step = step


def test_ctrl_c_finishes_the_step_saves_and_resumes_exactly(tmp_path):
    images = ImageData(tiny_images(40) * 2 - 1)  # 5 batches of 8 per epoch
    whole = GANTrainer(tiny_gan(tmp_path / "whole"))
    whole.fit(images)
    handler = signal.getsignal(signal.SIGINT)
    stopped = GANTrainer(tiny_gan(tmp_path / "split"))
    ctrl_c_during_step(stopped, at_step=3)
    with pytest.raises(TrainingInterrupted, match=r"after step 3; .* resume with epochs=2 ") as caught:
        stopped.fit(images)
    assert isinstance(caught.value, KeyboardInterrupt) and signal.getsignal(signal.SIGINT) is handler
    assert load_checkpoint(tmp_path / "split" / "checkpoint.pt")["step"] == 3
    resumed = GANTrainer(tiny_gan(tmp_path / "split"))
    resumed.fit(images, resume=True)
    assert resumed.step == whole.step == 10
    for a, b in zip([*whole.G.state_dict().values(), *whole.D.state_dict().values()],
                    [*resumed.G.state_dict().values(), *resumed.D.state_dict().values()]):
        assert torch.equal(a, b)


def test_a_second_ctrl_c_interrupts_at_once(tmp_path):
    trainer = GANTrainer(tiny_gan(tmp_path))
    ctrl_c_during_step(trainer, at_step=7, presses=2)  # in epoch 1: epoch 0's checkpoint exists
    with pytest.raises(KeyboardInterrupt) as caught:
        trainer.fit(ImageData(tiny_images(40) * 2 - 1))
    assert not isinstance(caught.value, TrainingInterrupted)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 5  # the last checkpoint, untouched


def test_an_ignored_sigint_stays_ignored(tmp_path):
    """A shell starts background jobs with SIGINT ignored (SIG_IGN), so that Ctrl-C at the
    terminal does not reach them: the trainer must not install its handler over that."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        trainer = GANTrainer(tiny_gan(tmp_path, max_steps=3))
        ctrl_c_during_step(trainer, at_step=2)
        try:
            trainer.fit(tiny_images())
        except TrainingInterrupted:  # (a KeyboardInterrupt: uncaught, it would stop pytest itself)
            pytest.fail("a Ctrl-C the shell had the process ignore stopped the run")
        assert trainer.step == 3 and signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_the_progress_bar_counts_to_whichever_end_comes_first(tmp_path, monkeypatch):
    import aigc_fast.train.trainer as trainer_module

    totals = []
    real = trainer_module._progress
    monkeypatch.setattr(trainer_module, "_progress", lambda enabled, total: totals.append(total) or real(False, total))
    GANTrainer(tiny_gan(tmp_path / "capped", max_steps=3, epochs=5)).fit(tiny_images())  # 4 steps an epoch
    GANTrainer(tiny_gan(tmp_path / "epochs", max_steps=100, epochs=2)).fit(tiny_images())
    assert totals == [3, 8]


def test_optimizer_settings_are_checked_by_the_config():
    for bad, match in ((dict(lr=-1e-3), "lr must be >= 0"), (dict(lr=float("nan")), "lr must be finite"),
                       (dict(lr="fast"), "lr must be a number"), (dict(betas=(0.5,)), "betas must be two"),
                       (dict(betas=(0.5, 1.0)), "betas must be two numbers in \\[0, 1\\)")):
        with pytest.raises((ValueError, TypeError), match=match):
            GANConfig(**bad)
    config = VAEConfig()
    config.beta = -0.5  # set after the config was built: the trainer checks again
    with pytest.raises(ValueError, match="beta weighs the KL term"):
        VAETrainer(config)
    numpy_floats = GANConfig(lr=np.float32(1e-3), betas=np.array([0.5, 0.9]))
    assert json.loads(numpy_floats.to_json())["betas"] == [0.5, 0.9]  # plain floats, JSON-ready


def test_unreadable_checkpoints_are_named_and_new_ones_readable_by_others(tmp_path):
    import os
    import stat

    path = tmp_path / "checkpoint.pt"
    old_umask = os.umask(0o022)
    try:
        save_atomic({"step": 1}, path)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # as the run's other files (mkstemp's were 0600)
    assert load_checkpoint(path) == {"step": 1}
    for damage in (lambda: path.write_bytes(path.read_bytes()[:100]), lambda: path.write_text("garbage\n")):
        damage()
        with pytest.raises(ValueError, match="checkpoint.pt is not a checkpoint: torch.save writes a zip") as error:
            load_checkpoint(path)
        assert "weights_only" not in str(error.value)  # torch.load's advice to load a foreign file unsafely
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"checkpoint.pt is empty \(0 bytes\)"):
        load_checkpoint(path)
    torch.save({"step": 2}, path, _use_new_zipfile_serialization=False)  # torch.save's format before 1.6
    assert load_checkpoint(path) == {"step": 2}


@requires_fused
def test_the_configured_objective_reaches_the_loss_ops(tmp_path):
    """config.loss, config.beta and config.recon_loss are what the fused loss ops get (a
    trainer that dropped them would still train, and pass every other test), and the
    logged loss is recon + beta * kl."""
    with FusedOpCounter() as ops:
        GANTrainer(tiny_gan(tmp_path / "gan", loss="hinge", max_steps=1)).fit(tiny_images())
    assert ops.last_args["gan_d_loss"][2] == "hinge" and ops.last_args["gan_g_loss"][1] == "hinge"
    config = VAEConfig(out_dir=str(tmp_path / "vae"), model="mlp", image_size=16, latent_dim=2, batch_size=8,
                       max_steps=2, beta=4.0, recon_loss="mse", progress=False, holdout=0.0, log_every=1,
                       precision="fp32")
    with FusedOpCounter() as ops:
        VAETrainer(config).fit(tiny_images())
    args = ops.last_args["vae_loss"]
    assert args[4] == "mse" and float(args[5]) == 4.0
    for row in map(json.loads, (tmp_path / "vae" / "metrics.jsonl").read_text().splitlines()):
        assert row["loss"] == pytest.approx(row["recon"] + 4.0 * row["kl"], rel=1e-5)


def test_a_damaged_checkpoint_is_refused_not_loaded(tmp_path):
    """torch.load does not check the zip's CRCs: a flipped byte inside a weight loaded
    silently. And checkpoints load with weights_only=True: a file that would run code is
    refused."""
    import zipfile

    GANTrainer(tiny_gan(tmp_path, max_steps=1)).fit(tiny_images())
    path = tmp_path / "checkpoint.pt"
    with zipfile.ZipFile(path) as archive:
        largest = max(archive.infolist(), key=lambda info: info.file_size)
        with open(path, "rb") as f:  # where the entry's bytes start: after its local header
            f.seek(largest.header_offset + 26)
            name_len, extra_len = np.frombuffer(f.read(4), dtype="<u2")
        start = largest.header_offset + 30 + int(name_len) + int(extra_len)
    data = bytearray(path.read_bytes())
    data[start + largest.file_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"checkpoint.pt is damaged: the contents of {largest.filename} do not match"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="is damaged"):
        GANTrainer(tiny_gan(tmp_path, max_steps=2)).fit(tiny_images(), resume=True)
    with pytest.raises(ValueError, match=r"^[^:]*checkpoint\.pt is damaged"):  # the path once, not twice
        load_run(tmp_path)

    save_atomic({"step": 1, "code": print}, path)  # an object weights_only refuses to unpickle
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(path)


def test_checkpoints_of_another_shape_are_named_errors(tmp_path):
    """A checkpoint from another version (a key missing), of another width, or not a
    trainer's dict: a ValueError saying so (the CLI's one-line error), not a KeyError or
    load_state_dict's RuntimeError."""
    GANTrainer(tiny_gan(tmp_path, max_steps=1)).fit(tiny_images())
    path = tmp_path / "checkpoint.pt"
    state = load_checkpoint(path)
    del state["batch_in_epoch"]
    save_atomic(state, path)
    with pytest.raises(ValueError, match=re.escape(f"{path}: this checkpoint lacks batch_in_epoch")):
        GANTrainer(tiny_gan(tmp_path, max_steps=2)).fit(tiny_images(), resume=True)
    save_atomic([1, 2], path)
    with pytest.raises(ValueError, match=re.escape(f"{path}: this is not a trainer's checkpoint: it holds a list")):
        GANTrainer(tiny_gan(tmp_path, max_steps=2)).fit(tiny_images(), resume=True)
    wide = tmp_path / "wide"
    GANTrainer(tiny_gan(wide, max_steps=1, ngf=8)).fit(tiny_images())
    trainer = GANTrainer(tiny_gan(tmp_path / "narrow"))
    with pytest.raises(ValueError, match="this checkpoint's G does not fit this run's"):
        trainer.load_state_dict(load_checkpoint(wide / "checkpoint.pt"))
    finished = tmp_path / "finished"  # a run folder holding another run's checkpoint, as sample and evaluate load it
    GANTrainer(tiny_gan(finished, max_steps=1)).fit(tiny_images())
    (finished / "checkpoint.pt").write_bytes((wide / "checkpoint.pt").read_bytes())
    with pytest.raises(ValueError, match=re.escape(f"{finished / 'checkpoint.pt'}: this checkpoint's G does not fit")):
        load_run(finished)


def test_resume_refuses_data_that_gained_or_lost_images(tmp_path):
    """The held-out split is drawn from the number of images: resuming on a folder with
    images added would train on some of the images held out before."""
    GANTrainer(tiny_gan(tmp_path, max_steps=2, holdout=0.25)).fit(tiny_images(32))
    with pytest.raises(ValueError, match="the run trained on 32 images, the data now holds 34"):
        GANTrainer(tiny_gan(tmp_path, max_steps=4, holdout=0.25)).fit(tiny_images(34), resume=True)
    resumed = GANTrainer(tiny_gan(tmp_path, max_steps=4, holdout=0.25))
    resumed.fit(tiny_images(32), resume=True)
    assert resumed.step == 4


def test_a_moved_dataset_resumes_with_a_warning_and_another_one_is_refused(tmp_path):
    """The run's data file is gone and the new path holds as many images: the same data,
    moved. A path that still exists, or a file of another size, is other data."""
    import shutil

    old = tmp_path / "old.npz"
    np.savez(old, images=tiny_images(32).numpy())
    GANTrainer(tiny_gan(tmp_path / "run", max_steps=2, data=str(old))).fit()
    new = tmp_path / "moved.npz"
    shutil.copy(old, tmp_path / "copy.npz")
    with pytest.raises(ValueError, match="cannot resume with different data settings"):
        GANTrainer(tiny_gan(tmp_path / "run", max_steps=4, data=str(tmp_path / "copy.npz"))).fit(resume=True)
    old.rename(new)
    with pytest.raises(FileNotFoundError, match="recorded data and it has moved, give its new place"):
        GANTrainer(tiny_gan(tmp_path / "run", max_steps=4, data=str(old))).fit(resume=True)
    np.savez(tmp_path / "other.npz", images=tiny_images(40).numpy())
    with pytest.raises(ValueError, match="cannot resume with different data settings"):
        GANTrainer(tiny_gan(tmp_path / "run", max_steps=4, data=str(tmp_path / "other.npz"))).fit(resume=True)
    resumed = GANTrainer(tiny_gan(tmp_path / "run", max_steps=4, data=str(new)))
    with pytest.warns(UserWarning, match="is gone, and this holds as many images"):
        resumed.fit(resume=True)
    assert resumed.step == 4
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"] == str(new)


@pytest.mark.parametrize("inside", [".", "runs/a"])
def test_an_out_dir_inside_the_data_folder_is_refused_before_it_is_written(tmp_path, inside):
    """The run's files would become images of the data (and its class folders a mix of
    folders and files, which the next load refuses)."""
    data = tmp_path / "data"
    data.mkdir()
    out_dir = data / inside
    with pytest.raises(ValueError, match="is inside the data folder"):
        GANTrainer(tiny_gan(out_dir, data=str(data))).fit()
    assert list(data.iterdir()) == []


def test_fewer_images_from_a_seed_are_the_first_of_more(tmp_path):
    """torch's CPU randn redraws the last values of a tensor whose size is not a multiple of
    16: drawn as one [n, nz] tensor, 10 images differed in their last from the first 10 of 20."""
    trainer = GANTrainer(tiny_gan(tmp_path, nz=100))
    for n, more, dim in ((10, 20, 100), (3, 12, 7)):
        assert torch.equal(trainer._latents(n, dim, seed=5), trainer._latents(more, dim, seed=5)[:n])
    # The images then too, to the convolutions' rounding (which may depend on the batch size).
    torch.testing.assert_close(trainer.generate(10, seed=5), trainer.generate(20, seed=5)[:10])
    assert trainer.generate(0, seed=5).shape == (0, 1, 16, 16)


def test_a_run_that_failed_before_its_first_log_row_leaves_its_folder_usable(tmp_path):
    """A first step that fails (images of the wrong size, a loss NaN at once) takes its empty
    metrics.jsonl with it, so the retry in the same folder runs; an empty metrics.jsonl that
    is there (a run in its first steps) still keeps a second run out."""
    def fail(images):
        raise RuntimeError("the first step failed")

    failing = GANTrainer(tiny_gan(tmp_path, max_steps=1))
    failing.train_step = fail
    with pytest.raises(RuntimeError, match="the first step failed"):
        failing.fit(tiny_images())
    assert not (tmp_path / "metrics.jsonl").exists()
    GANTrainer(tiny_gan(tmp_path, max_steps=1)).fit(tiny_images())
    assert (tmp_path / "checkpoint.pt").is_file()
    (tmp_path / "live").mkdir()
    (tmp_path / "live" / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match="holds the metrics of a run that stopped before its first checkpoint"):
        GANTrainer(tiny_gan(tmp_path / "live", max_steps=1)).fit(tiny_images())


def batches_seen(trainer, n=32):
    """(the indices of the images each step got, n images whose pixels all read i / (n - 1)):
    the trainer's step is replaced by one that only records them."""
    seen = []
    def record(x):
        seen.append(sorted(round((v + 1) / 2 * (n - 1)) for v in x[:, 0, 0, 0].tolist()))  # [-1, 1] back to i
        return {"d_loss": 1.0, "g_loss": 1.0}

    trainer.train_step = record
    data = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 16, 16) / (n - 1)
    return seen, data


def test_every_epoch_reshuffles_the_data(tmp_path):
    """Each epoch trains on a new seeded order, not the first epoch's batches over again."""
    trainer = GANTrainer(tiny_gan(tmp_path, epochs=2))
    seen, data = batches_seen(trainer)
    trainer.fit(data)
    first, second = seen[:4], seen[4:]
    assert sorted(sum(first, [])) == sorted(sum(second, [])) == list(range(32))
    assert first != second


def test_the_progress_bar_of_a_run_resumed_mid_epoch_counts_the_steps_left(tmp_path, monkeypatch):
    """A run resumed mid-epoch shows the steps it will train (the rest of the epoch), not a whole epoch."""
    import aigc_fast.train.trainer as trainer_module

    GANTrainer(tiny_gan(tmp_path, max_steps=3)).fit(tiny_images())  # 4 steps an epoch: stops 3 into epoch 0
    totals = []
    real = trainer_module._progress
    monkeypatch.setattr(trainer_module, "_progress", lambda enabled, total: totals.append(total) or real(False, total))
    resumed = GANTrainer(tiny_gan(tmp_path, epochs=1))
    resumed.fit(tiny_images(), resume=True)
    assert resumed.step == 4 and totals == [1]


def test_metrics_are_logged_every_log_every_steps(tmp_path):
    """log_every=2 writes a metrics.jsonl row at steps 2, 4, ... only."""
    GANTrainer(tiny_gan(tmp_path, log_every=2, max_steps=6)).fit(tiny_images())
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6]


def test_an_epoch_resumed_mid_way_logs_the_mean_of_its_own_steps(tmp_path):
    """epochs.jsonl's row for the part of an epoch a resumed run trained averages that part's steps."""
    GANTrainer(tiny_gan(tmp_path, max_steps=2)).fit(tiny_images())  # 4 steps an epoch: stops 2 into epoch 0
    GANTrainer(tiny_gan(tmp_path, epochs=1)).fit(tiny_images(), resume=True)
    steps = {r["step"]: r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())}
    rows = [json.loads(line) for line in (tmp_path / "epochs.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["steps"], r["complete"]) for r in rows] == [(0, 2, False), (0, 2, True)]
    for row, part in zip(rows, ((1, 2), (3, 4))):
        for name in ("d_loss", "g_loss"):
            assert row[name] == pytest.approx(sum(steps[s][name] for s in part) / 2, rel=1e-6)


def test_resume_restores_the_fp16_loss_scale(tmp_path):
    """A resumed fp16 run continues with the GradScaler's loss scale it had reached, not a fresh one."""
    with pytest.warns(RuntimeWarning, match="precision='fp16' on a CPU"):
        trainer = GANTrainer(tiny_gan(tmp_path, precision="fp16", max_steps=2))
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)  # overflows at first: the scale drops
    trainer.fit(tiny_images())
    scale = trainer.scaler.get_scale()
    assert scale < 2.0**40
    with pytest.warns(RuntimeWarning, match="precision='fp16' on a CPU"):
        resumed = GANTrainer(tiny_gan(tmp_path, precision="fp16", max_steps=2))
    resumed.fit(tiny_images(), resume=True)  # at max_steps already: loads and saves, trains nothing
    assert resumed.scaler.get_scale() == scale


@pytest.mark.parametrize("changed", [dict(seed=1), dict(holdout=0.25)])
def test_resume_refuses_another_seed_or_holdout(tmp_path, changed):
    """A resume with another seed or holdout (a new data order or held-out split) is refused."""
    name = next(iter(changed))
    GANTrainer(tiny_gan(tmp_path, max_steps=2)).fit(tiny_images())
    with pytest.raises(ValueError, match=f"cannot resume with different data settings.*{name} "):
        GANTrainer(tiny_gan(tmp_path, max_steps=3, **changed)).fit(tiny_images(), resume=True)


def test_the_documented_defaults():
    """The defaults the docs and --help promise: DCGAN's Adam 2e-4 (0.5, 0.999), the VAE's
    1e-3 (0.9, 0.999), holdout 0.1."""
    gan, vae = GANConfig(), VAEConfig()
    assert (gan.lr, gan.betas, gan.batch_size, gan.nz, gan.loss) == (2e-4, (0.5, 0.999), 128, 100, "bce")
    assert (vae.lr, vae.betas, vae.beta, vae.recon_loss, vae.latent_dim) == (1e-3, (0.9, 0.999), 1.0, "bce", 20)
    assert gan.holdout == vae.holdout == 0.1 and gan.seed == 0 and gan.max_steps is None


def conv_vae(tmp_path, **kw):
    return VAETrainer(VAEConfig(**{**dict(out_dir=str(tmp_path), image_size=16, channels=1, latent_dim=4, base=8,
                                          batch_size=8, max_steps=3, log_every=1, sample_every=1000, num_samples=4,
                                          progress=False, holdout=0.0, precision="fp32"), **kw}))


def test_a_conv_vae_generates_in_eval_mode(tmp_path):
    """generate decodes with BatchNorm's running statistics (a seed's images do not depend on n) and updates none."""
    trainer = conv_vae(tmp_path)
    trainer.fit(tiny_images())
    stats = {k: v.clone() for k, v in trainer.model.state_dict().items() if "running" in k or "tracked" in k}
    torch.testing.assert_close(trainer.generate(3, seed=5), trainer.generate(8, seed=5)[:3])
    assert trainer.model.training
    assert all(torch.equal(v, trainer.model.state_dict()[k]) for k, v in stats.items())


def test_sample_grids_use_the_runs_fixed_latents_and_do_not_change_training(tmp_path):
    """Every grid shows generate(num_samples, seed=seed + 1), and writing grids leaves the training noise as it was."""
    rare = GANTrainer(tiny_gan(tmp_path / "rare", sample_every=1000, max_steps=4))
    rare.fit(tiny_images())
    often = GANTrainer(tiny_gan(tmp_path / "often", sample_every=1, max_steps=4))
    often.fit(tiny_images())
    for a, b in zip(rare.G.state_dict().values(), often.G.state_dict().values()):
        assert torch.equal(a, b)
    image = pytest.importorskip("PIL.Image")
    with image.open(tmp_path / "often" / "samples" / "final.png") as grid:
        final = np.asarray(grid)
    assert np.array_equal(final, make_grid(often.generate(4, seed=often.config.seed + 1))[..., 0])


def test_the_settings_line_says_what_runs(monkeypatch):
    """Trainer.settings(), which the command prints as a run starts: the resolved
    precision, and reference ops where the fused ones cannot run, with the reason."""
    import aigc_fast._impl

    config = tiny_gan("unused", precision="fp32", channels_last=False)
    assert GANTrainer(config).settings().startswith("cpu, fp32, NCHW, ")
    assert GANTrainer(dataclasses.replace(config, backend="reference")).settings() == "cpu, fp32, NCHW, reference ops"
    monkeypatch.setattr(aigc_fast._impl, "fused_unavailable_reason", lambda device: "no extension here")
    assert GANTrainer(config).settings() == "cpu, fp32, NCHW, reference ops (no extension here)"
