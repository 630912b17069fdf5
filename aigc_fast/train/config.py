"""Training configurations: dataclasses with the field's defaults, round-tripping to JSON."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Optional, Tuple, Union

import torch

from .._validate import choice, is_count, number
from ..models._backend import BACKENDS
from ..models._shapes import SIZES
from ..ops.losses import RECON_LOSSES

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
GAN_LOSSES = ("bce", "hinge", "lsgan")  # what GANTrainer trains (wgan would need a Lipschitz constraint)
VAE_MODELS = ("conv", "mlp")
# The fields that take one of a few names, and those names (the command's help lists them).
FIELD_CHOICES = {"precision": PRECISIONS, "backend": BACKENDS, "loss": GAN_LOSSES, "model": VAE_MODELS,
                 "recon_loss": RECON_LOSSES}


def _field(default, meaning: str):
    """A config field and what it means, in one line: `aigc-fast train --help` shows it."""
    return dataclasses.field(default=default, metadata={"help": meaning})


_OUT_DIR = "the run directory: config.json, checkpoint.pt, metrics, sample grids"


_SIZES = ", ".join(map(str, sorted(SIZES)))


@dataclasses.dataclass
class _Config:
    out_dir: str = _field("runs/run", _OUT_DIR)
    epochs: int = _field(1, "epochs to train; a resumed run trains this many more (a partly trained epoch counts "
                            "as one)")
    batch_size: int = _field(128, "images per step, per process")
    image_size: int = _field(28, f"the images' side: {_SIZES} (any for the VAE's --model mlp)")
    channels: int = _field(1, "1 (grayscale) or 3 (RGB): the data is converted to it")
    backend: str = _field("fused", "fused kernels, or reference: the same model on plain PyTorch (same keys)")
    seed: int = _field(0, "seeds the weights, the data order and the noise")
    device: str = _field("cpu", "cpu or cuda (under torchrun, each process's LOCAL_RANK GPU)")
    max_steps: Optional[int] = _field(None, "stop after this many steps in total, a resumed run's earlier ones "
                                            "included (recorded, so a resume keeps it: none lifts it)")
    log_every: int = _field(10, "a row of metrics.jsonl every this many steps")
    sample_every: int = _field(200, "a sample grid every this many steps (and at the end)")
    num_samples: int = _field(64, "images in a sample grid")
    flip: bool = _field(False, "random left-right flips of the training images")
    progress: bool = _field(True, "a tqdm progress bar")
    data: Optional[str] = _field(None, "what fit() trains on when given nothing: mnist, digits, an image folder, "
                                       "an .npy/.npz file")
    holdout: float = _field(0.1, "the share of the data kept out of training (a fixed split), for evaluate")
    precision: str = _field("auto", "bf16/fp16: autocast (fp16 with a GradScaler); auto: bf16 where the GPU or CPU "
                                    "computes it natively, else fp32")
    channels_last: bool = _field(True, "models and images in channels_last (faster convolutions on CPU and GPU)")
    compile: bool = _field(False, "torch.compile the models before the first step")
    cuda_graph: bool = _field(True, "on a GPU, replay each step as one CUDA graph (eager with compile, fp16 or "
                                    "torchrun)")
    deterministic: bool = _field(False, "torch.use_deterministic_algorithms; no cuDNN autotuning")

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Refuses a bad field by name, and keeps numbers as plain floats (a NumPy scalar would
        not reach config.json). Run when the config is built, and again by the trainers:
        fields may be set after."""
        self._counts(("epochs", 0), ("batch_size", 1), ("log_every", 1), ("sample_every", 1),
                     ("num_samples", 1), ("image_size", 1))
        if self._convolutional() and self.image_size not in SIZES:
            raise ValueError(f"image_size must be one of {', '.join(map(str, sorted(SIZES)))} for the convolutional "
                             f"models, got {self.image_size}")
        # 64 bits, as torch's generators take: the trainer seeds them with seed + 1 and seed + 7919 * rank.
        if not is_count(self.seed, -2**63) or self.seed >= 2**63:
            raise ValueError(f"seed must be an integer from -2**63 to 2**63 - 1, got {self.seed!r}")
        if self.max_steps is not None and not is_count(self.max_steps, 0):
            raise ValueError(f"max_steps must be None (no cap) or an integer >= 0, got {self.max_steps!r}")
        for name, allowed in FIELD_CHOICES.items():
            if name != "loss" and hasattr(self, name):  # (GANConfig explains its loss choices itself)
                choice(getattr(self, name), name, allowed)
        self.holdout = number(self.holdout, "holdout")
        if not 0 <= self.holdout < 1:
            raise ValueError(f"holdout is a share of the data in [0, 1), got {self.holdout}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {self.channels!r}")
        self.out_dir = _path_text(self.out_dir, "out_dir")
        _check_out_dir(Path(self.out_dir))
        if self.data is not None:
            self.data = _path_text(self.data, "data")

    def _convolutional(self) -> bool:
        return True

    def _counts(self, *fields: Tuple[str, int]) -> None:
        for name, least in fields:
            value = getattr(self, name)
            if not is_count(value, least):
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")

    def _validate_adam(self) -> None:
        """Adam's own bounds on lr and betas, checked before a run starts."""
        self.lr = number(self.lr, "lr")
        if self.lr < 0:
            raise ValueError(f"lr must be >= 0, got {self.lr}")
        given = self.betas  # a tuple, a JSON list, a NumPy array: any sequence of two numbers
        betas = tuple(given) if hasattr(given, "__len__") and not isinstance(given, str) else None
        if betas is None or len(betas) != 2:
            raise ValueError(f"betas must be two numbers in [0, 1), got {given!r}")
        betas = tuple(number(b, "betas") for b in betas)
        if not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {given!r}")
        self.betas = betas

    def to_json(self, path: Union[str, Path, None] = None) -> str:
        text = json.dumps({"kind": self.kind, **dataclasses.asdict(self)}, indent=2)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, text_or_path: Union[str, Path]):
        """From a JSON file (any name) or JSON text."""
        text, source = str(text_or_path), "the config text"
        if isinstance(text_or_path, Path) or not text.lstrip().startswith("{"):
            source = text
            if not Path(text).is_file():
                raise FileNotFoundError(f"no config file {text}")
            text = Path(text).read_text()
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{source} is not valid JSON: {error}") from None
        if not isinstance(values, dict):
            raise ValueError(f"{source} must hold a JSON object of config fields, got {type(values).__name__}")
        kind = values.pop("kind", cls.kind)
        if kind != cls.kind:
            raise ValueError(f"{source} is a {kind!r} config, not a {cls.kind!r} one (aigc-fast train {kind} ...)")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(values) - set(fields)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
        return cls(**values)


def _path_text(value, name: str) -> str:
    """A path field as config.json keeps it: text (a pathlib.Path is taken as its text)."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty str or Path, got {value!r}")
    return value


def _nearest_existing(path: Path) -> Optional[Path]:
    return next((p for p in (path, *path.parents) if p.exists()), None)


def _check_out_dir(path: Path) -> None:
    """The run directory, or the nearest part of its path that exists, must be a folder."""
    existing = _nearest_existing(path)
    if existing is not None and not existing.is_dir():
        raise ValueError(f"out_dir {str(path)!r}: {str(existing)!r} is a file, not a folder")


def unwritable_reason(path: Path) -> Optional[str]:
    """Why the run directory, or the folder it would be made in, takes no files; None if it
    does. Checked before a run loads its data, not by validate: a run on read-only media
    still loads and evaluates."""
    existing = _nearest_existing(path.absolute())
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        return (f"out_dir {str(path)!r}: cannot write in {str(existing)!r} (read-only, or another user's); choose "
                "another out_dir (--out-dir), or to resume the run there, make that folder writable")
    return None


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> the fastest precision this device runs correctly: bf16 on a GPU with bf16
    tensor cores or a CPU with native bf16 (AMX-BF16/AVX512-BF16), else fp32 (a CPU without
    them emulates bf16, far slower than fp32). Anything else is returned as it is."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    from .._info import cpu_has_native_bf16

    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


@dataclasses.dataclass
class GANConfig(_Config):
    """DCGAN defaults: Adam lr 2e-4, betas (0.5, 0.999), batch 128, images in [-1, 1]."""

    kind = "gan"
    out_dir: str = _field("runs/gan", _OUT_DIR)
    nz: int = _field(100, "the latent vector's size")
    ngf: int = _field(64, "the generator's width: its blocks have 8, 4, 2, 1 x ngf channels at 64x64, 4 and "
                          "2 x ngf at 28x28")
    ndf: int = _field(64, "the discriminator's width: its blocks have 1, 2, 4, 8 x ndf channels at 64x64, 2 and "
                          "4 x ndf at 28x28")
    loss: str = _field("bce", "bce (non-saturating G), hinge or lsgan")
    lr: float = _field(2e-4, "Adam's learning rate, for G and D")
    betas: Tuple[float, float] = _field((0.5, 0.999), "Adam's betas")

    def validate(self) -> None:
        super().validate()
        self._counts(("nz", 1), ("ngf", 1), ("ndf", 1))
        if self.loss not in GAN_LOSSES:
            # wgan's critic must be kept 1-Lipschitz (clipping or a gradient penalty); without
            # that the losses diverge, so refuse rather than train something meaningless.
            why = " (wgan needs a Lipschitz constraint on D that the trainer does not add yet)" \
                if self.loss == "wgan" else ""
            raise ValueError(f"GANTrainer trains loss one of {', '.join(map(repr, GAN_LOSSES))}, "
                             f"got {self.loss!r}{why}")
        self._validate_adam()


@dataclasses.dataclass
class VAEConfig(_Config):
    """VAE defaults: Adam lr 1e-3, inputs in [0, 1], BCE reconstruction, beta 1."""

    kind = "vae"
    out_dir: str = _field("runs/vae", _OUT_DIR)
    model: str = _field("conv", "conv (ConvVAE) or mlp (the 784-400-20 MLPVAE)")
    latent_dim: int = _field(20, "the latent space's dimension")
    base: int = _field(32, "ConvVAE's width: its first conv's channels, doubling with each halving")
    recon_loss: str = _field("bce", "bce (logits against images in [0, 1]) or mse")
    beta: float = _field(1.0, "the KL term's weight (a beta-VAE for beta != 1)")
    lr: float = _field(1e-3, "Adam's learning rate")
    betas: Tuple[float, float] = _field((0.9, 0.999), "Adam's betas")

    def validate(self) -> None:
        super().validate()
        self._counts(("latent_dim", 1), ("base", 1))
        self.beta = number(self.beta, "beta")
        if self.beta < 0:
            raise ValueError(f"beta weighs the KL term and must be >= 0, got {self.beta}")
        self._validate_adam()

    def _convolutional(self) -> bool:
        return self.model == "conv"  # (an MLP VAE takes any image size)
