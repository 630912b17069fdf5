"""Checkpoints written atomically: to a temporary file in the same folder, flushed, then
renamed over the old one, so a crash or kill mid-save leaves the previous checkpoint
intact (rename within a file system is atomic). Read back with an error that names the
file when it is not a checkpoint torch can load."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Dict, Union

import torch


def save_atomic(state: Dict[str, Any], path: Union[str, Path]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name opened with open(): the file gets the umask's permissions, as the run's
    # other outputs do (mkstemp's would be owner-only).
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    f = open(tmp, "xb")  # (outside the try: a file this call did not create is not removed)
    try:
        with f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise


def load_checkpoint(path: Union[str, Path], map_location="cpu", *, weights_only: bool = False) -> Dict[str, Any]:
    """A file save_atomic wrote. By default our own full state (optimizers, RNG states,
    config), not only tensors; weights_only=True for a file of tensors and plain values."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except MemoryError:
        raise
    except Exception as error:  # truncated, overwritten, not torch's: unpickling fails in many ways
        raise ValueError(f"{path} is not a readable checkpoint ({type(error).__name__}: {error})") from error
