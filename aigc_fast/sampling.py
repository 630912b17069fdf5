"""Generated images to disk: a folder of PNGs, one .npz, and a grid, from a trained run.

    aigc_fast.sampling.sample_run("runs/mnist-gan", 1000)          # aigc-fast sample DIR -n 1000
    aigc_fast.sampling.sample_run("runs/mnist-gan", 1000, balanced=True)

balanced=True labels the samples with the run's evaluation classifier and keeps n / K of
each class, in one subfolder per class: aigc_fast.data.load(folder) reads it back with those
labels, ready to mix into a classifier's training set as class-balanced augmentation."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from .images import save_grid, to_uint8

__all__ = ["sample_run", "write_samples"]

_BALANCED_ROUNDS = 20  # rounds of n candidates before balanced sampling gives up on a class
# In images/: the files write_samples wrote there, one per line. Names alone do not say so:
# a user's own 000007.png would pass for one of ours and be deleted.
_WRITTEN = ".written-by-aigc-fast"


def _check_output_folder(out_dir: Union[str, Path]) -> None:
    """Refuses an output folder holding anything write_samples did not write there (a
    dataset's folder, a run directory), before anything in it is replaced: only images/
    with the files an earlier call listed, and that call's samples.npz and grid.png."""
    out = Path(out_dir)
    if not out.is_dir():
        return
    folder = out / "images"
    others = sorted(p.name for p in out.iterdir()  # (not the system's hidden files: .DS_Store)
                    if p.name not in ("images", "samples.npz", "grid.png") and not p.name.startswith("."))
    if others:
        raise ValueError(f"{out} holds {', '.join(others[:3])}{', ...' if len(others) > 3 else ''}, which "
                         "write_samples did not write; choose a new or empty output folder")
    # samples.npz and grid.png are replaced only where an earlier call left its list of files.
    theirs = [name for name in ("samples.npz", "grid.png") if (out / name).exists()]
    if theirs and not (folder / _WRITTEN).is_file():
        raise ValueError(f"{out} holds {theirs[0]}, which write_samples did not write; choose another output folder")
    if folder.is_dir() and any(folder.iterdir()):
        # Only a folder holding nothing but the files an earlier call listed is removed.
        listed = folder / _WRITTEN
        ours = set(listed.read_text().splitlines()) if listed.is_file() else set()
        foreign = [p for p in folder.rglob("*")
                   if p.is_file() and p != listed and p.relative_to(folder).as_posix() not in ours]
        if foreign:
            raise ValueError(f"{folder} holds files that write_samples did not write (e.g. {foreign[0].name}); "
                             "choose another output folder")


def write_samples(images: torch.Tensor, out_dir: Union[str, Path], labels: Optional[torch.Tensor] = None) -> Path:
    """images [N, C, H, W] in [0, 1] -> out_dir/images/NNNNNN.png (images/class_LLL/NNNNNN.png
    when labelled: zero-padded, so the folder loader's sorted subfolders keep label order),
    out_dir/samples.npz (uint8 "images" [N, C, H, W], and "labels"), and out_dir/grid.png
    (the first 64). An earlier call's output there is replaced; a folder holding anything
    else is refused before anything is written."""
    from PIL import Image  # the 'data' extra

    out = Path(out_dir)
    pixels = to_uint8(images, (0.0, 1.0))
    folder = out / "images"
    _check_output_folder(out)
    if folder.is_dir() and any(folder.iterdir()):
        # An earlier call's samples are replaced, not mixed with these: leftovers would join
        # the folder's images (and, unlabelled, class 0) when it is loaded as a dataset.
        shutil.rmtree(folder)
    written = []
    for i, image in enumerate(pixels):
        name = (f"class_{int(labels[i]):03d}/" if labels is not None else "") + f"{i:06d}.png"
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        array = image.permute(1, 2, 0).numpy()
        Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(path)
        written.append(name)
    folder.mkdir(parents=True, exist_ok=True)  # (also for n = 0)
    (folder / _WRITTEN).write_text("\n".join(written) + "\n")
    arrays = {"images": pixels.numpy()}
    if labels is not None:
        arrays["labels"] = labels.cpu().numpy().astype(np.int64)
    np.savez_compressed(out / "samples.npz", **arrays)
    save_grid(images[:64], out / "grid.png", value_range=(0.0, 1.0))
    return out


def sample_run(run_dir: Union[str, Path], n: int, out_dir: Union[str, Path, None] = None, *, seed: int = 0,
               balanced: bool = False, data=None, device: Optional[str] = None) -> Path:
    """n images from the run's trained model, written by write_samples to out_dir (default
    RUN_DIR/generated). balanced: n // K of each of the K classes the evaluation classifier
    (trained on the run's real data, cached) assigns; generation continues until every class
    is filled, and stops with an error naming the missing classes if the model rarely makes
    them (mode collapse). data: the real data for that classifier, as evaluate takes it, for
    a run trained on an in-memory set (the run records names and paths itself)."""
    from .evaluation.run import RealData, generate_unit, run_classifier
    from .evaluation.classifier import features_and_probs
    from .train.trainer import load_run

    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    trainer = load_run(run_dir, device=device)
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "generated"
    _check_output_folder(out)  # now, rather than after generating (write_samples checks again)
    if not balanced:
        return write_samples(generate_unit(trainer, n, seed=seed), out)
    real = RealData(trainer, data, needs_held_out=False)
    real.require_classes("balanced sampling keeps n / K images of each class")
    classifier, _ = run_classifier(run_dir, real)
    per_class = n // real.num_classes
    if per_class < 1:
        raise ValueError(f"balanced sampling needs n >= {real.num_classes} (one per class)")
    kept = {k: [] for k in range(real.num_classes)}
    rounds = torch.Generator().manual_seed(seed)  # one stream of batch seeds over all rounds
    for _ in range(_BALANCED_ROUNDS):  # rounds of n candidates
        images = generate_unit(trainer, n, seed=rounds)
        labels = features_and_probs(classifier, images)[1].argmax(1)
        for k in kept:
            kept[k].extend(images[labels == k][:per_class - len(kept[k])])
        if all(len(v) == per_class for v in kept.values()):
            break
    missing = [k for k, v in kept.items() if len(v) < per_class]
    if missing:
        # A ValueError, as for other requests the run cannot meet: the CLI reports it in one line.
        raise ValueError(f"after {_BALANCED_ROUNDS * n} samples, classes {missing} still have fewer than {per_class}: "
                         "the model rarely generates them (sample without balanced, or train it further)")
    labels = torch.arange(real.num_classes).repeat_interleave(per_class)
    return write_samples(torch.stack([im for k in kept for im in kept[k]]), out, labels)
