"""ImageFolder: formats, conversions, labels and every bad-input message."""

import warnings

import numpy as np
import pytest
from PIL import Image

from lightning_infdiff.data import FieldDataModule, ImageFolder


def _rgb(path, size=(40, 32), colour=(255, 0, 0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def _truncated_png(path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _load(folder, channels=3, res=16):
    src = ImageFolder(str(folder), channels=channels)
    src.prepare([res])
    return [src.load(i, res, np.random.default_rng(0), train=False)[0] for i in range(len(src))]


def test_every_supported_extension_is_found_recursively(tmp_path):
    for i, ext in enumerate(["png", "jpg", "JPEG", "webp", "bmp", "tif", "tiff"]):
        _rgb(tmp_path / f"d{i % 3}" / "sub" / f"im{i}.{ext}")
    (tmp_path / "notes.txt").write_text("not an image")
    src = ImageFolder(str(tmp_path))
    src.prepare([16])
    assert len(src) == 7
    img, label = src.load(0, 16, np.random.default_rng(0), train=False)
    assert img.shape == (3, 16, 16) and label is None


def test_mode_conversions_to_rgb_and_gray(tmp_path):
    red = Image.new("RGB", (32, 32), (255, 0, 0))
    red.quantize(4).save(tmp_path / "a_palette.png")  # mode P
    rgba = Image.new("RGBA", (32, 32), (0, 0, 255, 0))  # fully transparent -> white
    rgba.save(tmp_path / "b_rgba.png")
    red.convert("CMYK").save(tmp_path / "c_cmyk.jpg", quality=95)
    Image.fromarray(np.full((32, 32), 32768, dtype=np.uint16)).save(tmp_path / "d_16bit.png")
    Image.new("L", (32, 32), 255).save(tmp_path / "e_gray.png")
    assert Image.open(tmp_path / "a_palette.png").mode == "P"
    assert Image.open(tmp_path / "c_cmyk.jpg").mode == "CMYK"
    assert Image.open(tmp_path / "d_16bit.png").mode.startswith("I")

    pal, rgba_out, cmyk, b16, gray = _load(tmp_path, channels=3)
    for img in (pal, rgba_out, cmyk, b16, gray):
        assert img.shape == (3, 16, 16) and img.dtype == np.float32
    np.testing.assert_allclose(pal.mean(axis=(1, 2)), [1, -1, -1], atol=0.02)
    np.testing.assert_allclose(rgba_out, 1.0, atol=1e-6)  # composited over white
    np.testing.assert_allclose(cmyk.mean(axis=(1, 2)), [1, -1, -1], atol=0.1)
    np.testing.assert_allclose(b16, 0.0, atol=0.01)  # 32768/65535 -> mid-grey, not clipped white
    np.testing.assert_allclose(gray, 1.0, atol=1e-6)

    gray1 = _load(tmp_path, channels=1)
    assert all(img.shape == (1, 16, 16) for img in gray1)
    np.testing.assert_allclose(gray1[3], 0.0, atol=0.01)


def test_labels_from_subfolders(tmp_path):
    for cls, n in [("cats", 2), ("dogs", 3)]:
        for i in range(n):
            _rgb(tmp_path / cls / f"{i}.png")
    src = ImageFolder(str(tmp_path), labels=True)
    src.prepare([8])
    assert src.class_names == ["cats", "dogs"] and src.num_classes == 2
    assert sorted(src.targets) == [0, 0, 1, 1, 1]
    dm = FieldDataModule(src, resolution=8, batch_size=2, val_size=1)
    dm.setup()
    assert next(iter(dm.train_dataloader())).label is not None


def test_labels_need_subfolders(tmp_path):
    _rgb(tmp_path / "cats" / "0.png")
    _rgb(tmp_path / "loose.png")
    with pytest.raises(
        ValueError, match="labels=True needs every image inside a class sub-folder.*loose.png"
    ):
        ImageFolder(str(tmp_path), labels=True).prepare([8])


def test_random_crop_at_native_density(tmp_path):
    ramp = np.tile(np.arange(128, dtype=np.uint8)[None, :], (64, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    src = ImageFolder(str(tmp_path), channels=1, crop="random")
    src.prepare([16])
    a = src.load(0, 16, np.random.default_rng(1), train=True)[0]
    b = src.load(0, 16, np.random.default_rng(2), train=True)[0]
    assert a.shape == (1, 16, 16) and not np.array_equal(a, b)
    assert np.allclose(np.diff(a[0, 0]), 1 / 127.5, atol=1e-5)  # no resampling: slope 1 per pixel


def test_truncated_file_skipped_with_one_summary_warning(tmp_path):
    for i in range(3):
        _rgb(tmp_path / f"good{i}.png")
    for i in range(7):
        _truncated_png(tmp_path / f"zbroken{i}.png")
    src = ImageFolder(str(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        src.prepare([16])
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    assert "skipped 7 unreadable image file(s)" in messages[0]
    assert "zbroken0.png" in messages[0] and "(and 2 more)" in messages[0]
    assert len(src) == 3


def test_truncated_file_strict_raises_naming_it(tmp_path):
    _rgb(tmp_path / "good.png")
    bad = _truncated_png(tmp_path / "broken.png")
    with pytest.raises(OSError, match=f"cannot read image file '{bad}'"):
        ImageFolder(str(tmp_path), strict=True).prepare([16])


def test_unverified_broken_file_replaced_at_load_with_warning(tmp_path):
    _truncated_png(tmp_path / "a_broken.png")
    _rgb(tmp_path / "b_good.png")
    src = ImageFolder(str(tmp_path), verify=False)
    src.prepare([16])
    assert len(src) == 2
    with pytest.warns(UserWarning, match="a_broken.png.*replaced by the next file"):
        img, _ = src.load(0, 16, np.random.default_rng(0), train=False)
    np.testing.assert_allclose(img.mean(axis=(1, 2)), [1, -1, -1], atol=0.02)


@pytest.mark.parametrize("content", ["empty", "no_images"])
def test_empty_folder_names_folder_and_extensions(tmp_path, content):
    if content == "no_images":
        (tmp_path / "sub").mkdir()
        (tmp_path / "sub" / "readme.txt").write_text("x")
        (tmp_path / "data.csv").write_text("1,2")
    with pytest.raises(
        FileNotFoundError, match=rf"no supported images found in '{tmp_path}'.*\.png, \.jpg"
    ):
        FieldDataModule(ImageFolder(str(tmp_path)), resolution=8).setup()


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        ImageFolder(str(tmp_path / "nope")).prepare([8])


def test_small_images_upsampled_with_warning_or_rejected(tmp_path):
    _rgb(tmp_path / "big.png", size=(64, 64))
    _rgb(tmp_path / "tiny.png", size=(12, 20))
    src = ImageFolder(str(tmp_path))
    with pytest.warns(
        UserWarning,
        match=r"1 image\(s\).*smaller than the training resolution 32.*tiny.png \(12x20\)",
    ):
        src.prepare([16, 32])
    assert src.load(1, 32, np.random.default_rng(0), train=False)[0].shape == (3, 32, 32)
    with pytest.raises(
        ValueError, match=r"tiny.png' is 12x20, smaller than the training resolution 32"
    ):
        ImageFolder(str(tmp_path), strict=True).prepare([32])


def test_all_files_broken(tmp_path):
    _truncated_png(tmp_path / "broken.png")
    with (
        pytest.warns(UserWarning, match="skipped 1"),
        pytest.raises(FileNotFoundError, match="none of the image files"),
    ):
        ImageFolder(str(tmp_path)).prepare([8])


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue, right half red
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    src = ImageFolder(str(tmp_path))
    src.prepare([8])
    out = src.load(0, 8, np.random.default_rng(0), train=False)[0]
    # displayed upright the image is 20 wide, 40 tall: blue on top, red at the bottom
    assert out[2, 0].mean() > 0.5 and out[0, -1].mean() > 0.5


@pytest.mark.parametrize(
    ("name", "make", "expected"),
    [
        ("la.png", lambda: Image.new("LA", (16, 16), (0, 0)), 1.0),  # transparent -> white
        ("bits.png", lambda: Image.new("1", (16, 16), 1), 1.0),
        ("int32.tif", lambda: Image.fromarray(np.full((16, 16), 65535, dtype=np.int32)), 1.0),
        ("float.tif", lambda: Image.fromarray(np.full((16, 16), 0.5, dtype=np.float32)), 0.0),
    ],
)
def test_more_modes(tmp_path, name, make, expected):
    make().save(tmp_path / name)
    (img,) = _load(tmp_path, channels=3, res=8)
    np.testing.assert_allclose(img, expected, atol=0.01)
