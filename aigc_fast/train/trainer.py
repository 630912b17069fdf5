"""The training loop GANTrainer and VAETrainer share: data in any form, seeded shuffling
that a resume can replay, metrics, sample grids, atomic checkpoints, NaN detection."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
from torch.utils.data import DataLoader, Dataset

from .. import data as data_lib
from ..images import save_grid
from ..models import ConvVAE, DCGANDiscriminator, DCGANGenerator, MLPVAE
from ..models._backend import impl as backend_impl
from ..ops.losses import gan_d_loss, gan_g_loss
from .checkpoint import load_checkpoint, save_atomic
from .config import GANConfig, VAEConfig


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; the run stopped and its last checkpoint is intact."""


class _Trainer:
    kind = ""
    data_kind = ""  # the image range the model wants: "gan" [-1, 1], "vae" [0, 1]

    def __init__(self, config):
        self.config = config
        self.device = torch.device(config.device)
        self.run_dir = Path(config.out_dir)
        self.checkpoint_path = self.run_dir / "checkpoint.pt"
        torch.manual_seed(config.seed)
        self.build()
        self.step = 0
        self.epoch = 0  # the epoch in progress
        self.batch_in_epoch = 0  # batches of it already trained

    # ---- what each trainer defines ----
    def build(self) -> None:
        raise NotImplementedError

    def train_step(self, images: torch.Tensor) -> Dict[str, float]:
        raise NotImplementedError

    def snapshot(self, tag: str) -> None:
        raise NotImplementedError

    def modules(self) -> Dict[str, Any]:
        raise NotImplementedError

    # ---- data ----
    def dataset(self, data) -> Dataset:
        """A Dataset of (image, label) from anything aigc_fast.data.load takes, a Dataset, or
        a DataLoader (its dataset: the trainer batches and shuffles itself, seeded, so that
        a resumed run replays the same order)."""
        if isinstance(data, DataLoader):
            data = data.dataset
        if isinstance(data, Dataset):
            return data
        return data_lib.load(data, image_size=self.config.image_size, channels=self.config.channels,
                             kind=self.data_kind, flip=self.config.flip)

    def _batches(self, n: int):
        """This epoch's batches of indices, from a permutation seeded by (seed, epoch), so a
        resumed run replays the same order and skips what it already trained."""
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.config.seed * 1_000_003 + self.epoch))
        per = self.config.batch_size
        return [order[i * per:(i + 1) * per].tolist() for i in range(self.batch_in_epoch, n // per)]

    # ---- checkpoints ----
    def state_dict(self) -> Dict[str, Any]:
        return {
            "kind": self.kind, "config": json.loads(self.config.to_json()), "step": self.step, "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "modules": {name: m.state_dict() for name, m in self.modules().items()},
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"this is a {state.get('kind')!r} checkpoint, not a {self.kind!r} one")
        for name, module in self.modules().items():
            module.load_state_dict(state["modules"][name])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])

    def save(self) -> Path:
        save_atomic(self.state_dict(), self.checkpoint_path)
        return self.checkpoint_path

    # ---- the loop ----
    def fit(self, data, *, resume: Union[bool, str, Path] = False) -> Dict[str, float]:
        """Trains for config.epochs epochs (a resumed, partly trained epoch counts as one) or
        until config.max_steps steps in total; returns the last step's metrics."""
        dataset = self.dataset(data)
        if len(dataset) < self.config.batch_size:
            raise ValueError(f"{len(dataset)} images are fewer than one batch of {self.config.batch_size}")
        if resume:
            self.load_state_dict(load_checkpoint(self.checkpoint_path if resume is True else resume,
                                                 map_location=self.device))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config.to_json(self.run_dir / "config.json")
        per_epoch = len(dataset) // self.config.batch_size
        end_epoch = self.epoch + self.config.epochs
        metrics: Dict[str, float] = {}
        bar = _progress(self.config.progress, total=(end_epoch - self.epoch) * per_epoch - self.batch_in_epoch)
        with open(self.run_dir / "metrics.jsonl", "a") as log:
            while self.epoch < end_epoch:
                for indices in self._batches(len(dataset)):
                    started = time.perf_counter()
                    images = torch.stack([dataset[i][0] for i in indices]).to(self.device)
                    metrics = self.train_step(images)
                    self._check_finite(metrics)
                    self.step += 1
                    self.batch_in_epoch += 1
                    metrics["images_per_s"] = len(indices) / (time.perf_counter() - started)
                    bar.update(1)
                    bar.set_postfix({k: f"{v:.3g}" for k, v in metrics.items()}, refresh=False)
                    if self.step % self.config.log_every == 0:
                        log.write(json.dumps({"step": self.step, "epoch": self.epoch, **metrics}) + "\n")
                        log.flush()
                    if self.step % self.config.sample_every == 0:
                        self.snapshot(f"step{self.step:07d}")
                    if self.config.max_steps is not None and self.step >= self.config.max_steps:
                        return self._finish(bar, metrics)
                self.epoch += 1
                self.batch_in_epoch = 0
                self.save()
        return self._finish(bar, metrics)

    def _finish(self, bar, metrics: Dict[str, float]) -> Dict[str, float]:
        bar.close()
        self.save()
        self.snapshot("final")
        return metrics

    def _check_finite(self, metrics: Dict[str, float]) -> None:
        for name, value in metrics.items():
            if not math.isfinite(value):
                last = f"the last good state is in {self.checkpoint_path}" if self.checkpoint_path.exists() else \
                    "no checkpoint was written yet"
                raise NonFiniteLossError(f"{name} became {value} at step {self.step + 1} (epoch {self.epoch}); "
                                         f"training stopped, {last}")


class _NoProgress:
    def update(self, n):
        pass

    def set_postfix(self, *args, **kwargs):
        pass

    def close(self):
        pass


def _progress(enabled: bool, total: int):
    if not enabled:
        return _NoProgress()
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="step", dynamic_ncols=True)


class GANTrainer(_Trainer):
    """DCGAN training: per step, one discriminator update on real and generated images, then
    one generator update, with the fused GAN losses of config.loss."""

    kind, data_kind = "gan", "gan"

    def __init__(self, config: Optional[GANConfig] = None):
        super().__init__(config or GANConfig())

    def build(self) -> None:
        c = self.config
        if c.loss not in ("bce", "hinge", "lsgan"):
            # wgan's critic must be kept 1-Lipschitz (clipping or a gradient penalty); without
            # that the losses diverge, so refuse rather than train something meaningless.
            raise ValueError(f"GANTrainer trains loss='bce', 'hinge' or 'lsgan', got {c.loss!r} "
                             "(wgan needs a Lipschitz constraint on D that the trainer does not add yet)")
        self.G = DCGANGenerator(c.nz, c.ngf, c.channels, c.image_size, backend=c.backend).to(self.device)
        self.D = DCGANDiscriminator(c.ndf, c.channels, c.image_size, backend=c.backend).to(self.device)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=c.lr, betas=tuple(c.betas))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=c.lr, betas=tuple(c.betas))
        self.fixed_noise = torch.randn(c.num_samples, c.nz, generator=torch.Generator().manual_seed(c.seed + 1))
        self.impl = backend_impl(c.backend)

    def modules(self) -> Dict[str, Any]:
        return {"G": self.G, "D": self.D, "opt_g": self.opt_g, "opt_d": self.opt_d}

    def train_step(self, real: torch.Tensor) -> Dict[str, float]:
        z = torch.randn(real.shape[0], self.config.nz, device=self.device)
        fake = self.G(z)
        d_loss = gan_d_loss(self.D(real), self.D(fake.detach()), self.config.loss, impl=self.impl)
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        g_loss = gan_g_loss(self.D(fake), self.config.loss, impl=self.impl)
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        return {"d_loss": d_loss.item(), "g_loss": g_loss.item()}

    @torch.no_grad()
    def generate(self, n: int, *, seed: Optional[int] = None) -> torch.Tensor:
        """n images in [-1, 1] from the generator in eval mode (BatchNorm's running statistics)."""
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        was = self.G.training
        self.G.eval()
        try:
            return self.G(torch.randn(n, self.config.nz, generator=g).to(self.device))
        finally:
            self.G.train(was)

    def snapshot(self, tag: str) -> None:
        was = self.G.training
        self.G.eval()
        with torch.no_grad():
            images = self.G(self.fixed_noise.to(self.device))
        self.G.train(was)
        _save_grid_if_possible(images, self.run_dir / "samples" / f"{tag}.png", (-1.0, 1.0))


class VAETrainer(_Trainer):
    """VAE training on the negative ELBO (fused reparameterization and loss)."""

    kind, data_kind = "vae", "vae"

    def __init__(self, config: Optional[VAEConfig] = None):
        super().__init__(config or VAEConfig())

    def build(self) -> None:
        c = self.config
        if c.model == "mlp":
            self.model = MLPVAE(c.channels * c.image_size ** 2, 400, c.latent_dim, backend=c.backend)
        elif c.model == "conv":
            self.model = ConvVAE(c.latent_dim, c.channels, c.image_size, c.base, backend=c.backend)
        else:
            raise ValueError(f"model must be 'conv' or 'mlp', got {c.model!r}")
        self.model.to(self.device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=c.lr, betas=tuple(c.betas))
        self.fixed_z = torch.randn(c.num_samples, c.latent_dim, generator=torch.Generator().manual_seed(c.seed + 1))

    def modules(self) -> Dict[str, Any]:
        return {"model": self.model, "opt": self.opt}

    def train_step(self, x: torch.Tensor) -> Dict[str, float]:
        loss, recon, kl = self.model.loss(x, beta=self.config.beta, recon_loss=self.config.recon_loss)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": loss.item(), "recon": recon.item(), "kl": kl.item()}

    def snapshot(self, tag: str) -> None:
        c = self.config
        was = self.model.training
        self.model.eval()
        with torch.no_grad():
            images = torch.sigmoid(self.model.decode(self.fixed_z.to(self.device)))
        self.model.train(was)
        _save_grid_if_possible(images.view(-1, c.channels, c.image_size, c.image_size),
                               self.run_dir / "samples" / f"{tag}.png", (0.0, 1.0))


_warned_no_pillow = False


def _save_grid_if_possible(images: torch.Tensor, path: Path, value_range) -> None:
    global _warned_no_pillow
    try:
        save_grid(images, path, value_range=value_range)
    except ModuleNotFoundError as exc:
        if not _warned_no_pillow:
            import warnings

            warnings.warn(f"{exc}; sample grids are skipped", RuntimeWarning, stacklevel=2)
            _warned_no_pillow = True
