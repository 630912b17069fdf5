"""A trainer's checkpoint and its resume: the state a checkpoint holds (models, optimizers,
GradScaler, counters, every process's RNG state), the settings a resumed run may not
change (they would move its data order, its held-out split or its models), and the logs
cut back to the checkpoint's step."""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Dict, Tuple, Union

import torch

from .. import data as data_lib
from .checkpoint import load_checkpoint, save_atomic


class Checkpointing:
    """What _Trainer does with checkpoints (a part of it, in a file of its own): it uses the
    trainer's kind, config, group, device, scaler, counters (step, epoch, batch_in_epoch),
    data_size, run_dir, checkpoint_path, _graphed step and modules()."""

    def state_dict(self) -> Dict[str, Any]:
        """The full state; collective under torchrun (every process's RNG state is kept)."""
        rng = {"torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None}
        return {
            "kind": self.kind, "config": json.loads(self.config.to_json()), "step": self.step, "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch, "data_size": self.data_size,
            "modules": {name: m.state_dict() for name, m in self.modules().items()},
            "scaler": self.scaler.state_dict(),
            "rng": self.group.gather(rng),  # one per process, in rank order
        }

    def load_state_dict(self, state: Dict[str, Any], *, restore_rng: bool = True) -> None:
        """Loads a checkpoint's state; restore_rng=False leaves the global RNG alone (for
        generation and evaluation)."""
        self._check_kind(state)
        missing = [key for key in self._STATE_KEYS if key not in state]
        if missing:
            raise ValueError(f"this checkpoint lacks {', '.join(missing)} (written by another version of aigc_fast, "
                             "or not by a trainer's save)")
        if isinstance(state["rng"], dict):  # written before checkpoints kept one RNG state per process
            state["rng"] = [state["rng"]]
        if restore_rng and len(state["rng"]) != self.group.world:
            raise ValueError(f"this checkpoint was written by {len(state['rng'])} process(es); resume it with "
                             f"the same number (this run has {self.group.world}) to continue the same data order")
        for name, module in self.modules().items():
            if name not in state["modules"]:
                raise ValueError(f"this checkpoint has no {name} (it holds {', '.join(state['modules'])})")
            try:
                module.load_state_dict(state["modules"][name])
            except (RuntimeError, ValueError, KeyError) as error:  # (what nn.Module's and Optimizer's raise)
                raise ValueError(f"this checkpoint's {name} does not fit this run's: {error}") from None
        if self._graphed is not None:
            self._graphed.reset()  # the optimizers' state tensors were replaced: capture again
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        if not restore_rng:
            return
        rng = state["rng"][self.group.rank]
        torch.set_rng_state(rng["torch"])
        if self.device.type == "cuda" and isinstance(rng["cuda"], torch.Tensor):
            torch.cuda.set_rng_state(rng["cuda"], self.device)

    _STATE_KEYS = ("config", "step", "epoch", "batch_in_epoch", "modules", "rng")

    def _check_kind(self, state: Dict[str, Any]) -> None:
        if not isinstance(state, dict):
            raise ValueError(f"this is not a trainer's checkpoint: it holds a {type(state).__name__}, not a dict")
        if state.get("kind") != self.kind:
            raise ValueError(f"this is a {state.get('kind')!r} checkpoint, not a {self.kind!r} one")

    _REPLAY_FIELDS = ("seed", "batch_size", "holdout", "data", "image_size", "channels")

    def _architecture_fields(self) -> Tuple[str, ...]:
        """The config fields that shape the models (each trainer names its own)."""
        return ()

    def _objective_fields(self) -> Tuple[str, ...]:
        """The config fields that define what the models are trained for (the loss)."""
        return ()

    def _check_resumable(self, state: Dict[str, Any]) -> None:
        """A resumed run replays the recorded data order and split, into the recorded models:
        refuse settings that would silently change which images a batch (or the held-out set)
        holds, or that the checkpoint's weights cannot fill."""
        recorded = dict(state.get("config", {}))
        if isinstance(recorded.get("data"), str):
            recorded["data"] = _recorded_data(recorded["data"])  # runs that recorded a relative path
        if self._data_moved(recorded.get("data"), state.get("data_size")):
            warnings.warn(f"resuming on {self.config.data}: the run's data, {recorded['data']}, is gone, and this "
                          f"holds as many images ({self.data_size}); taken as the same data, moved",
                          UserWarning, stacklevel=4)
            recorded["data"] = self.config.data

        # (The loss: from Python, a fresh config's default would otherwise replace the recorded one.)
        refusals = [
            (self._architecture_fields(), "cannot resume with a different model ({}): the checkpoint's weights "
             "would not fit; start a new run instead"),
            (self._objective_fields(), "cannot resume with a different loss ({}): the checkpoint was trained for "
             "the recorded one; keep it (aigc-fast train --resume: drop the flag; from Python: load the config "
             "with from_json(RUN_DIR/config.json)) or start a new run"),
            (self._REPLAY_FIELDS, "cannot resume with different data settings (the data order and held-out split "
             "would change): {}; start a new run instead"),
        ]
        for names, message in refusals:
            changed = [f"{name} {recorded[name]!r} -> {getattr(self.config, name)!r}" for name in names
                       if name in recorded and recorded[name] != getattr(self.config, name)]
            if changed:
                raise ValueError(message.format(", ".join(changed)))
        # The same folder with images added or removed: the held-out split, drawn from the
        # number of images, would then hold images the run has trained on.
        recorded_size = state.get("data_size")  # (absent from checkpoints written before it was kept)
        if recorded_size is not None and self.data_size is not None and recorded_size != self.data_size:
            raise ValueError(f"cannot resume on changed data: the run trained on {recorded_size} images, the data now "
                             f"holds {self.data_size} (the data order and held-out split would change, and held-out "
                             "images would have been trained on); start a new run instead")

    def _data_moved(self, recorded_data, recorded_size) -> bool:
        """Whether the run's data was a file or folder that is gone, and the data given now
        holds as many images: a moved dataset, which may resume (a path compared as text
        alone had left such a run unresumable)."""
        return (isinstance(recorded_data, str) and os.path.isabs(recorded_data) and not Path(recorded_data).exists()
                and recorded_data != self.config.data and recorded_size is not None
                and recorded_size == self.data_size)

    def _apply_optimizer_settings(self) -> None:
        """A checkpoint's optimizer state carries the lr and betas it ran with; a resumed run
        takes the config's (which config.json records), so `--resume --lr 1e-5` lowers it."""
        for module in self.modules().values():
            if isinstance(module, torch.optim.Optimizer):
                for group in module.param_groups:
                    group["lr"], group["betas"] = self.config.lr, self.config.betas

    def save(self) -> Path:
        state = self.state_dict()
        if self.group.main:
            save_atomic(state, self.checkpoint_path)
        return self.checkpoint_path

    def _resume_from(self, checkpoint: Union[str, Path]) -> None:
        # On the CPU: RNG states must stay there; load_state_dict moves the rest to the models.
        state = load_checkpoint(checkpoint, map_location="cpu")
        with _errors_naming(checkpoint):
            self._check_kind(state)  # first: another kind's config would read as changed settings
            self._check_resumable(state)
            self.load_state_dict(state)
        self._apply_optimizer_settings()
        if self.group.main:
            _drop_rows_after(self.step, self.run_dir / "metrics.jsonl", self.run_dir / "epochs.jsonl")


@contextlib.contextmanager
def _errors_naming(path: Union[str, Path]):
    """A checkpoint that does not fit (a key missing, another width) names its file."""
    try:
        yield
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def _recorded_data(data: Union[str, Path]) -> str:
    """What config.data records: a path that exists made absolute, anything else (a
    built-in name, a mistyped one) as given, for data.load to judge."""
    path = Path(data).expanduser()
    if (isinstance(data, str) and data in data_lib.BUILTIN) or not path.exists():
        return str(data)
    return str(path.resolve())


def _drop_rows_after(step: int, *logs: Path) -> None:
    """Removes the rows logged after `step` (the checkpoint a run resumes from): a run
    stopped between checkpoints logged steps it will now train again. A row cut short by
    the stop (not valid JSON) goes too."""

    def keep(line: str) -> bool:
        try:
            return json.loads(line).get("step", 0) <= step
        except json.JSONDecodeError:
            return False

    for path in logs:
        if not path.is_file():
            continue
        text = path.read_text()
        lines = text.splitlines()
        kept = [line for line in lines if line.strip() and keep(line)]
        if len(kept) != len(lines) or not text.endswith("\n"):
            temporary = path.with_suffix(path.suffix + ".tmp")
            temporary.write_text("".join(line + "\n" for line in kept))  # the next row starts on its own line
            temporary.replace(path)
