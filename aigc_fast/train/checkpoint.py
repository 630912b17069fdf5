"""Checkpoints written atomically: to a temporary file in the same folder, flushed, then
renamed over the old one, so a crash or kill mid-save leaves the previous checkpoint
intact (rename within a file system is atomic). Read back with an error that names the
file when it is not a checkpoint torch can load, or when its bytes were damaged."""

from __future__ import annotations

import os
import uuid
import zipfile
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


def load_checkpoint(path: Union[str, Path], map_location="cpu", *, weights_only: bool = True) -> Dict[str, Any]:
    """A file save_atomic wrote. Loaded with torch.load(weights_only=True) by default: a
    trainer's checkpoint is tensors and plain values (models, optimizers, RNG states,
    config), and nothing in a file someone hands over gets to run code (weights_only=False
    for a trusted file of other objects). Its zip checksums are checked first: torch.load
    does not, and a flipped byte inside a weight would load silently."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    # What torch.load would say of these is misleading (of a foreign file, that loading it
    # with weights_only=False will likely succeed).
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes): a save or copy that did not finish; use another copy")
    with open(path, "rb") as f:
        legacy = f.read(1) == b"\x80"  # torch.save's format before 1.6 (a pickle's protocol byte), still read
    if not (legacy or zipfile.is_zipfile(path)):
        raise ValueError(f"{path} is not a checkpoint: torch.save writes a zip archive, and this file is none "
                         "(cut short, damaged, or another kind of file)")
    _check_checksums(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except MemoryError:
        raise
    except Exception as error:  # truncated, overwritten, not torch's: unpickling fails in many ways
        raise ValueError(f"{path} is not a readable checkpoint ({type(error).__name__}: {error})") from error


def _check_checksums(path: Path) -> None:
    """Refuses a zip (torch.save's format) whose stored CRC-32s do not match its contents."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return
    if damaged is not None:
        raise ValueError(f"{path} is damaged: the contents of {damaged} do not match their stored checksum "
                         "(a partial copy, a disk or transfer error); use another copy of the checkpoint")
