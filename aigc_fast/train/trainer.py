"""The training loop GANTrainer and VAETrainer share: data in any form with a fixed held-out
split, seeded shuffling that a resume can replay, mixed precision, channels_last,
torch.compile, DistributedDataParallel under torchrun, metrics, sample grids, atomic
checkpoints, NaN detection, Ctrl-C that stops between steps with a checkpoint."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from .. import _impl, data as data_lib
from ..images import save_grid
from .checkpoint import load_checkpoint
from .config import resolve_precision, unwritable_reason
from .cuda_graph import GraphedStep
from .distributed import Group
from .interrupt import TrainingInterrupted, stop_between_steps
from .resume import Checkpointing, _errors_naming, _recorded_data


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; the run stopped and its last checkpoint is intact."""


@dataclasses.dataclass
class _EpochTally:
    """The steps one call of fit trained in the current epoch, for its row of epochs.jsonl."""

    started: float = dataclasses.field(default_factory=time.perf_counter)
    steps: int = 0
    sums: Dict[str, float] = dataclasses.field(default_factory=dict)  # metric name -> sum over the steps

    def add(self, metrics: Dict[str, float]) -> None:
        self.steps += 1
        for name, value in metrics.items():
            self.sums[name] = self.sums.get(name, 0.0) + value


class _Trainer(Checkpointing):
    kind = ""
    value_range: Tuple[float, float] = (0.0, 1.0)  # of the images the model trains on and generates

    def __init__(self, config):
        config.validate()  # again: fields set after the config was built are checked too
        self.config = config
        _check_device(config.device)
        self.group = Group(config.device)
        self.device = self.group.device
        config.precision = resolve_precision(config.precision, self.device)  # what ran is what config.json says
        if config.precision == "fp16" and self.device.type == "cpu":
            warnings.warn("precision='fp16' on a CPU: CPUs without native fp16 arithmetic convert it in software "
                          "(the conv VAE 28x28 step took 17-19x as long as in bf16 on an AVX-512 EPYC); bf16 is "
                          "the CPU's 16-bit type and needs no loss scaling", RuntimeWarning, stacklevel=3)
        self.run_dir = Path(config.out_dir)
        self.checkpoint_path = self.run_dir / "checkpoint.pt"
        # Models are built on the CPU: seeding the CPU generator alone gives the same initial
        # weights in every process (the CUDA generator is seeded when training starts).
        torch.random.default_generator.manual_seed(config.seed)
        self.cuda_graph = self._cuda_graph_applies()  # before build: the optimizers must be capturable
        self.build()
        self._graphed = GraphedStep(self.step_losses) if self.cuda_graph else None
        if self.group.distributed:  # but each process its own noise and flips
            torch.random.default_generator.manual_seed(self._process_seed)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.precision == "fp16")
        self.step = 0
        self.epoch = 0  # the epoch in progress
        self.batch_in_epoch = 0  # batches of it already trained
        self.data_size: Optional[int] = None  # images in the data fit trains from (held-out ones included)

    def _cuda_graph_applies(self) -> bool:
        """Whether steps replay as a CUDA graph (cuda_graph.py): on a GPU, unless compiled
        (torch.compile has its own graphs: mode="reduce-overhead"), in fp16 (the GradScaler
        reads its overflow check on the host) or under torchrun (DistributedDataParallel's
        all-reduce would need its own capture)."""
        c = self.config
        return (c.cuda_graph and self.device.type == "cuda" and not c.compile and c.precision != "fp16"
                and not self.group.distributed)

    @property
    def _process_seed(self) -> int:
        return self.config.seed + 7919 * self.group.rank

    def settings(self) -> str:
        """The settings that decide a step's speed, as they resolved on this machine (precision
        "auto" made concrete, the ops that run), in one line: the command prints it as a run
        starts. config.json records every field."""
        c = self.config
        unavailable = _impl.fused_unavailable_reason(self.device) if c.backend == "fused" else None
        if c.backend == "fused" and _impl.get_impl() == "reference":  # aigc_fast.set_impl / use_impl
            unavailable = "aigc_fast.set_impl('reference')"
        ops = f"{c.backend} ops" if unavailable is None else f"reference ops ({unavailable})"
        parts = [str(self.device), "fp32" if c.precision == "fp32" else f"{c.precision} autocast",
                 "channels_last" if c.channels_last else "NCHW", ops]
        parts += [name for name, on in (("torch.compile", c.compile), ("each step a CUDA graph", self.cuda_graph),
                                        (f"{self.group.world} processes", self.group.distributed)) if on]
        return ", ".join(parts)

    def configure_backends(self) -> None:
        """Process-wide settings a training run asks for (deterministic algorithms; cuDNN
        autotuning on a GPU), set by fit when it starts and by the step benchmark, which
        times steps as fit runs them (not by load_run, which only generates). They stay
        set for the process, as torch's own switches do."""
        if self.config.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to be deterministic
            torch.use_deterministic_algorithms(True)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = not self.config.deterministic

    # ---- what each trainer defines ----
    def build(self) -> None:
        """Creates the models (on self.device, in the configured memory format), their
        optimizers, and the runners the steps call (see prepare)."""
        raise NotImplementedError

    def step_losses(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """One training step on a batch; its losses as detached 0-d tensors, not read (no
        host synchronization inside a step, so that it can be captured as a CUDA graph)."""
        raise NotImplementedError

    def train_step(self, images: torch.Tensor) -> Dict[str, float]:
        """One training step on a batch (replayed as a CUDA graph where cuda_graph applies);
        its losses as numbers, read in one device synchronization. In fp16 the GradScaler's
        update ends the step (its optimizer steps each checked the gradients), so a loop of
        train_step calls is a complete training loop. The run's counters (its step and
        position in the data, which fit logs and checkpoints) are fit's."""
        losses = self._graphed(images) if self._graphed is not None else self.step_losses(images)
        self.scaler.update()  # a no-op unless fp16 (never with a CUDA graph)
        return dict(zip(losses, torch.stack([v.float() for v in losses.values()]).tolist()))

    def generate(self, n: int, *, seed: Optional[int] = None) -> torch.Tensor:
        """n images in value_range, from the model in eval mode."""
        raise NotImplementedError

    def _latents(self, n: int, dim: int, seed: Optional[int]) -> torch.Tensor:
        """z ~ N(0, I) [n, dim] on the device for generate: drawn on the CPU, from a private
        generator when seeded (the global RNG untouched), so a seed gives the same images
        on every device. Row by row, so that fewer images from a seed are the first ones of
        more: torch's CPU randn draws the last values of an [n, dim] tensor again (its
        vectorized path works in 16s), which changed the last row or two with n."""
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        rows = [torch.randn(dim, generator=g) for _ in range(n)]
        return (torch.stack(rows) if rows else torch.empty(0, dim)).to(self.device)

    def modules(self) -> Dict[str, Any]:
        """What a checkpoint holds: models and optimizers by name."""
        raise NotImplementedError

    # ---- what the steps use ----
    def place(self, module: nn.Module) -> nn.Module:
        """module on this trainer's device and memory format."""
        module = module.to(self.device)
        return module.to(memory_format=torch.channels_last) if self.config.channels_last else module

    def prepare(self, module: nn.Module) -> nn.Module:
        """What a training step calls: module under DistributedDataParallel when distributed,
        then torch.compile when configured (the module itself keeps the weights and keys)."""
        module = self.group.wrap(module)
        return torch.compile(module) if self.config.compile else module

    def adam(self, module: nn.Module) -> torch.optim.Adam:
        """Adam over module's parameters with the config's lr and betas, in PyTorch's fused
        implementation (one kernel per parameter) on CPU and CUDA: the same update in half
        (conv VAE) to two-thirds (DCGAN) of the default foreach one's time (bench/NOTES.md)."""
        return torch.optim.Adam(module.parameters(), lr=self.config.lr, betas=self.config.betas,
                                fused=self.device.type in ("cpu", "cuda"), capturable=self.cuda_graph)

    def autocast(self):
        if self.config.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.config.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def optimize(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backward and step, through the GradScaler in fp16 (a step whose gradients
        overflowed is skipped and the scale lowered; train_step updates the scaler once)."""
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)

    # ---- data ----
    def dataset(self, data) -> Dataset:
        """A Dataset of (image, label) from anything aigc_fast.data.load takes, a Dataset (of
        such pairs, or of images), or a DataLoader (its dataset: the trainer batches and
        shuffles itself, seeded, so that a resumed run replays the same order)."""
        if isinstance(data, DataLoader):
            ignored = self._loader_settings_ignored(data)
            if ignored:
                warnings.warn(f"fit uses only the DataLoader's dataset, batching, shuffling and collating it itself "
                              f"(seeded, so a resumed run replays the same order): its {', '.join(ignored)} "
                              f"{'is' if len(ignored) == 1 else 'are'} not used", UserWarning, stacklevel=3)
            data = data.dataset
        if isinstance(data, Dataset):
            return data
        return data_lib.load(data, image_size=self.config.image_size, channels=self.config.channels,
                             kind=self.kind, flip=self.config.flip)

    def _loader_settings_ignored(self, loader: DataLoader) -> list:
        """The settings of a DataLoader that say something other than what the trainer does."""
        from torch.utils.data import IterableDataset, RandomSampler, SequentialSampler, default_collate, default_convert

        ignored = []
        if loader.batch_size is None:  # a batch_sampler of the user's, or batching turned off
            ignored.append("batch_sampler" if loader.batch_sampler is not None else "batch_size=None")
        elif loader.batch_size != self.config.batch_size:
            ignored.append(f"batch_size={loader.batch_size} (the config's is {self.config.batch_size})")
        if not isinstance(loader.dataset, IterableDataset) and loader.batch_size is not None and not isinstance(
                loader.sampler, (RandomSampler, SequentialSampler)):
            ignored.append("sampler")
        if loader.collate_fn not in (default_collate, default_convert):  # (default_convert: unbatched loading)
            ignored.append("collate_fn")
        if loader.num_workers > 0:
            ignored.append(f"num_workers={loader.num_workers}")
        return ignored

    def split(self, dataset: Dataset) -> Tuple[Dataset, Dataset]:
        """(training part, held-out part) by the fixed split of data.holdout_split."""
        train, held = data_lib.holdout_split(len(dataset), self.config.holdout)
        return Subset(dataset, train.tolist()), Subset(dataset, held.tolist())

    @property
    def global_batch(self) -> int:
        """Images per step over all processes (config.batch_size in each)."""
        return self.config.batch_size * self.group.world

    def _batches(self, n: int):
        """This process's batches of indices for this epoch, from a permutation seeded by
        (seed, epoch), so a resumed run replays the same order and skips what it already
        trained. Under torchrun each global batch is split between the processes."""
        # Modulo 2**64, the generator's seed range: a seed above 1.8e13 would overflow it. A value
        # in range seeds the same permutation as before (manual_seed too takes negatives mod 2**64).
        seed = (self.config.seed * 1_000_003 + self.epoch) % 2**64
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        per, rank, step = self.config.batch_size, self.group.rank, self.global_batch
        return [order[i * step + rank * per:i * step + (rank + 1) * per].tolist()
                for i in range(self.batch_in_epoch, n // step)]

    def _check_value_range(self, images: torch.Tensor) -> None:
        """Images outside the trainer's range train without an error into meaningless
        losses (a VAE's BCE needs [0, 1] targets: -ELBO went negative) and generate into
        the wrong range: refuse them, from a sample. (GAN data in [0, 1] is inside [-1, 1]
        and passes: nothing in the values tells it apart.)"""
        lo, hi = self.value_range
        if not torch.isfinite(images).all():  # (NaN passes any comparison below: it compares false)
            raise ValueError(f"the data holds NaN or infinite values (the {self.kind} trainer's images are in "
                             f"[{lo:g}, {hi:g}]); they would train into a NaN loss")
        seen_lo, seen_hi = float(images.min()), float(images.max())
        if seen_lo < lo - 1e-3 or seen_hi > hi + 1e-3:
            raise ValueError(f"the {self.kind} trainer's images are in [{lo:g}, {hi:g}] (what it trains on, generates "
                             f"and draws), but the data holds values in [{seen_lo:.3g}, {seen_hi:.3g}]; "
                             f"aigc_fast.data.load(..., kind={self.kind!r}) scales images to that range")

    # ---- the loop ----
    def fit(self, data=None, *, resume: Union[bool, str, Path] = False) -> Dict[str, float]:
        """Trains for config.epochs epochs (a resumed, partly trained epoch counts as one) or
        until config.max_steps steps in total; returns the last step's metrics (the mean
        over processes). data: see dataset(); None trains on config.data."""
        fresh = not resume and self.step == 0
        self._refuse_another_runs_directory(fresh)
        try:
            train = self._training_data(data)
        except FileNotFoundError as error:
            if resume and data is None:  # config.data: the data the run recorded, or a new place given for it
                raise FileNotFoundError(f"{error} (if this is the run's recorded data and it has moved, give its new "
                                        "place: aigc-fast train --resume RUN_DIR --data NEW, fit(NEW, "
                                        "resume=True))") from error
            raise
        if resume:
            self._resume_from(self.checkpoint_path if resume is True else resume)
        elif self.step == 0 and self.device.type == "cuda":
            torch.cuda.manual_seed(self._process_seed)  # this process's GPU noise, from the run's seed
        self.configure_backends()
        if self.group.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.config.to_json(self.run_dir / "config.json")
        end_epoch = self.epoch + self.config.epochs
        metrics: Dict[str, float] = {}
        main = self.group.main
        total = (end_epoch - self.epoch) * (len(train) // self.global_batch) - self.batch_in_epoch
        if self.config.max_steps is not None:  # the run stops at whichever comes first
            total = max(0, min(total, self.config.max_steps - self.step))
        bar = _progress(self.config.progress and main, total=total)
        log_path = self.run_dir / "metrics.jsonl"
        log_file = open(log_path, "a") if main else contextlib.nullcontext()
        with (_removed_if_left_empty(log_path, enabled=main and fresh),
              stop_between_steps(enabled=self.group.world == 1) as stop, log_file as log):
            while self.epoch < end_epoch:
                tally = _EpochTally()
                for indices in self._batches(len(train)):
                    capped = self.config.max_steps is not None and self.step >= self.config.max_steps
                    if stop.requested or capped:
                        return self._finish(bar, metrics, unfinished_epoch=tally, interrupted=stop.requested,
                                            epochs_left=0 if capped else end_epoch - self.epoch)
                    metrics = self._train_batch(train, indices)
                    tally.add(metrics)
                    # (The postfix first: the redraw update(1) may do then shows this step's values.)
                    bar.set_postfix({k: f"{v:.3g}" for k, v in metrics.items()}, refresh=False)
                    bar.update(1)
                    if main and self.step % self.config.log_every == 0:
                        log.write(json.dumps({"step": self.step, "epoch": self.epoch, **metrics}) + "\n")
                        log.flush()
                    if main and self.step % self.config.sample_every == 0:
                        self.snapshot(f"step{self.step:07d}")
                self._log_epoch(tally, complete=True)
                self.epoch += 1
                self.batch_in_epoch = 0
                self.save()
        return self._finish(bar, metrics, interrupted=stop.requested)

    def _refuse_another_runs_directory(self, fresh: bool) -> None:
        """A fresh run in another run's directory would overwrite its checkpoint and mix its
        logs into theirs (a run stopped before its first checkpoint has left its metrics
        already); one that cannot write there would fail after loading its data. Every
        process looks before any writes (gather is a barrier), and all decide alike."""
        mine = [f.name for f in (self.checkpoint_path, self.run_dir / "metrics.jsonl") if fresh and f.exists()]
        unwritable = unwritable_reason(self.run_dir) if self.group.main else None  # (only rank 0 writes)
        gathered = self.group.gather((mine, unwritable))
        if gathered[0][1]:
            raise PermissionError(gathered[0][1])
        earlier = sorted(set(name for names, _ in gathered for name in names))
        if earlier == ["metrics.jsonl"]:
            raise ValueError(f"{self.run_dir} holds the metrics of a run that stopped before its first checkpoint "
                             "(or is still in its first steps), so there is nothing to resume: delete the directory "
                             "or choose another out_dir")
        if earlier:
            raise ValueError(f"{self.run_dir} already holds a run ({', '.join(earlier)}): resume it "
                             "(fit(resume=True), aigc-fast train --resume DIR) or choose another out_dir")

    def _training_data(self, data) -> Dataset:
        """The training part of the data (config.data when None), checked against the model's
        range and the batch size; sets the preview images the sample grids reconstruct."""
        if data is None:
            if self.config.data is None:
                raise ValueError("no data: pass fit(data) or set config.data ('mnist', 'digits', a folder, a file)")
            data = self.config.data
        if isinstance(data, (str, Path)):
            # Recorded (a path as an absolute one), so evaluate and resume find it from anywhere.
            data = self.config.data = _recorded_data(data)
            folder = Path(data)
            if folder.is_dir() and self.run_dir.resolve().is_relative_to(folder):
                raise ValueError(f"out_dir {str(self.run_dir)!r} is inside the data folder {data!r}: the run's files "
                                 "(checkpoint, sample grids) would be read as part of the data; choose an out_dir "
                                 "outside it")
        dataset = self.dataset(data)
        self.data_size = len(dataset)
        train, held = self.split(dataset)
        shown = held if len(held) else train  # what VAE reconstruction grids show: unseen images when there are some
        picks = torch.linspace(0, len(shown) - 1, min(max(1, self.config.num_samples // 2), len(shown))).long().tolist()
        with torch.random.fork_rng(devices=[]):  # reading may flip at random: keep the training RNG stream as is
            # Spread out: data is often sorted by class.
            self.preview = torch.stack([_image_of(shown[i]) for i in picks])
        self._check_value_range(self.preview)
        if len(train) < self.global_batch:
            world = self.group.world
            share = f" ({self.config.batch_size} per process, {world} processes)" if world > 1 else ""
            raise ValueError(f"{len(train)} training images are fewer than one batch of {self.global_batch}{share}")
        return train

    def _train_batch(self, train: Dataset, indices) -> Dict[str, float]:
        """One training step on these images (read, stacked and moved here, timed with the
        step): the metrics averaged over processes and checked finite; the counters advance."""
        started = time.perf_counter()
        memory_format = torch.channels_last if self.config.channels_last else torch.contiguous_format
        images = torch.stack([_image_of(train[i]) for i in indices]).to(self.device, memory_format=memory_format)
        metrics = self.group.mean(self.train_step(images))
        self._check_finite(metrics)
        self.step += 1
        self.batch_in_epoch += 1
        metrics["images_per_s"] = self.global_batch / (time.perf_counter() - started)
        return metrics

    def _log_epoch(self, tally: _EpochTally, *, complete: bool) -> None:
        """One row of epochs.jsonl: the epoch's mean losses over the steps this call of fit
        trained in it (all of them unless it resumed mid-epoch, or stopped at max_steps:
        complete false), images/s as images over seconds, and the wall time."""
        if not (self.group.main and tally.steps):
            return
        seconds = time.perf_counter() - tally.started
        means = {name: total / tally.steps for name, total in tally.sums.items() if name != "images_per_s"}
        row = {"epoch": self.epoch, "step": self.step, "steps": tally.steps, "complete": complete,
               "seconds": seconds, **means, "images_per_s": tally.steps * self.global_batch / seconds}
        with open(self.run_dir / "epochs.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    def _finish(self, bar, metrics: Dict[str, float], *, unfinished_epoch: Optional[_EpochTally] = None,
                interrupted=False, epochs_left: int = 0) -> Dict[str, float]:
        if unfinished_epoch is not None:
            self._log_epoch(unfinished_epoch, complete=False)
        bar.close()
        self.save()
        if self.group.main:
            self.snapshot("final")
        if interrupted:
            raise TrainingInterrupted(self.step, self.checkpoint_path, epochs_left)
        return metrics

    def snapshot(self, tag: str) -> None:
        """A grid of generate(num_samples) from the run's fixed seed: samples/<tag>.png."""
        images = self.generate(self.config.num_samples, seed=self.config.seed + 1)
        _save_grid_if_possible(images, self.run_dir / "samples" / f"{tag}.png", self.value_range)

    def _check_finite(self, metrics: Dict[str, float]) -> None:
        for name, value in metrics.items():
            if not math.isfinite(value):
                last = f"the last good state is in {self.checkpoint_path}" if self.checkpoint_path.exists() else \
                    "no checkpoint was written yet"
                raise NonFiniteLossError(f"{name} became {value} at step {self.step + 1} (epoch {self.epoch}); "
                                         f"training stopped, {last}")


def _image_of(item) -> torch.Tensor:
    """The image of a Dataset's item: an (image, label, ...) tuple's first element, as
    ImageData and TensorDataset give, or a bare image tensor, as unconditional sets often
    do (the trainers use no labels)."""
    image = item[0] if isinstance(item, (tuple, list)) and len(item) > 0 else item
    if isinstance(image, torch.Tensor) and image.dim() == 3:
        return image
    got = f"a tensor of shape {list(image.shape)}" if isinstance(image, torch.Tensor) else f"a {type(image).__name__}"
    where = " as an item's first element" if image is not item else ""
    error = ValueError if isinstance(image, torch.Tensor) else TypeError
    raise error(f"fit's Dataset items must be (image, label) pairs or images, each image a [C, H, W] tensor; "
                f"got {got}{where} (aigc_fast.data.load(...) gives such a set)")


def _check_device(device: str) -> None:
    """A clear error for a device torch cannot name or this machine does not have."""
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device {device!r} is not a device torch knows ({error})") from None
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: torch sees no CUDA GPU here (torch {torch.__version__}, "
                             f"CUDA build {torch.version.cuda or 'none'}); use device 'cpu'")
        # Counted, not probed with a tensor: that would open a CUDA context on GPU 0 in every
        # torchrun process before each picks its own GPU.
        index, count = torch.device(device).index, torch.cuda.device_count()
        if index is not None and index >= count:
            raise ValueError(f"device {device!r}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    elif kind == "meta":
        raise ValueError("device 'meta' holds shapes, not data: train, sample and time on 'cpu' or 'cuda'")
    elif kind != "cpu":
        try:  # a backend this torch was not built for, or one this machine lacks
            torch.empty(1, device=device)
        except (RuntimeError, AssertionError) as error:
            raise ValueError(f"device {device!r} cannot be used here ({str(error).splitlines()[0]})") from None


@contextlib.contextmanager
def _removed_if_left_empty(path: Path, enabled: bool):
    """A fresh run that fails before its first metrics row (images of the wrong size, a loss
    NaN at once) takes its empty metrics.jsonl with it: left behind, the file would make
    the folder refuse the retry as one holding an earlier run."""
    try:
        yield
    except BaseException:
        if enabled and path.is_file() and path.stat().st_size == 0:
            path.unlink()
        raise


def load_run(run_dir: Union[str, Path], *, device: Optional[str] = None) -> _Trainer:
    """The trainer of a finished or stopped run, from its config.json and checkpoint.pt
    (single process, no compile, no progress bar): for generate and evaluate."""
    from . import TRAINERS

    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.json)")
    try:
        kind = json.loads((run_dir / "config.json").read_text()).get("kind")
    except (json.JSONDecodeError, AttributeError) as error:
        raise ValueError(f"{run_dir / 'config.json'} is not a run's config ({error})") from None
    if kind not in TRAINERS:
        raise ValueError(f"{run_dir / 'config.json'} has unknown kind {kind!r}")
    config_class, trainer_class = TRAINERS[kind]
    config = config_class.from_json(run_dir / "config.json")
    config.out_dir, config.compile, config.progress, config.deterministic = str(run_dir), False, False, False
    if device is not None:
        config.device = device
    with torch.random.fork_rng(devices=[]):  # building seeds the CPU generator; the caller's is left as it was
        trainer = trainer_class(config)
    checkpoint = run_dir / "checkpoint.pt"
    state = load_checkpoint(checkpoint, map_location="cpu")  # (its errors name the file themselves)
    with _errors_naming(checkpoint):
        trainer.load_state_dict(state, restore_rng=False)
    trainer.data_size = state.get("data_size")  # what evaluation checks the data it is given against
    return trainer


def _progress(enabled: bool, total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="step", dynamic_ncols=True, disable=not enabled)


_warned_no_pillow = False


def _save_grid_if_possible(images: torch.Tensor, path: Path, value_range, nrow: int = 0) -> None:
    global _warned_no_pillow
    try:
        save_grid(images, path, nrow=nrow, value_range=value_range)
    except ModuleNotFoundError as exc:
        if not _warned_no_pillow:
            warnings.warn(f"{exc}; sample grids are skipped", RuntimeWarning, stacklevel=2)
            _warned_no_pillow = True
