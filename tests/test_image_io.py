"""Tests for jaxstyle.image_io: tiny synthetic images written to tmp_path, no external files."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image, ImageOps

from jaxstyle import files, image_io
from jaxstyle.errors import JaxstyleError
from jaxstyle.imageops import fit_long_side
from jaxstyle.image_io import (
    check_output_path,
    load_image,
    original_colors,
    resize,
    save_gif,
    save_image,
    save_strip,
)


def _write(tmp_path, im: Image.Image, name: str, **kwargs) -> str:
    path = tmp_path / name
    im.save(path, **kwargs)
    return str(path)


def _load_pixel(tmp_path, im: Image.Image, name: str) -> np.ndarray:
    """Write ``im``, load it, check the common contract, return its top-left pixel."""
    out = load_image(_write(tmp_path, im, name))
    assert out.dtype == np.float32
    assert out.shape == (im.height, im.width, 3)
    assert out.min() >= 0.0 and out.max() <= 1.0
    return out[0, 0]


def _error(fn, *args, **kwargs) -> str:
    """Call ``fn``; it must raise JaxstyleError (not anything else) with a one-line message."""
    with pytest.raises(JaxstyleError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert message and "\n" not in message
    return message


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# --------------------------------------------------------------------------------- modes


@pytest.mark.parametrize(
    "mode, value, name, expected",
    [
        ("RGB", (255, 128, 0), "rgb.png", (1.0, 128 / 255, 0.0)),
        ("L", 51, "gray.png", (0.2, 0.2, 0.2)),
        ("1", 1, "bilevel.png", (1.0, 1.0, 1.0)),
        ("CMYK", (255, 0, 0, 0), "cmyk.tif", (0.0, 1.0, 1.0)),  # pure cyan
        ("YCbCr", (200, 128, 128), "ycbcr.tif", (200 / 255,) * 3),  # neutral chroma: gray
        ("RGBA", (255, 0, 0, 255), "opaque.png", (1.0, 0.0, 0.0)),
        ("F", 0.25, "float.tif", (0.25, 0.25, 0.25)),
    ],
)
def test_modes_load_as_float_rgb(tmp_path, mode, value, name, expected):
    pixel = _load_pixel(tmp_path, Image.new(mode, (3, 2), value), name)
    np.testing.assert_allclose(pixel, expected, atol=1e-6)


def test_rgba_composited_on_white(tmp_path):
    half_red = Image.new("RGBA", (2, 2), (255, 0, 0, 128))
    a = 128 / 255
    pixel = _load_pixel(tmp_path, half_red, "a.png")
    np.testing.assert_allclose(pixel, (1, 1 - a, 1 - a), atol=1e-6)
    clear = Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    np.testing.assert_allclose(_load_pixel(tmp_path, clear, "c.png"), (1, 1, 1), atol=1e-6)


def test_la_composited_on_white(tmp_path):
    a = 128 / 255
    pixel = _load_pixel(tmp_path, Image.new("LA", (2, 2), (0, 128)), "la.png")
    np.testing.assert_allclose(pixel, (1 - a,) * 3, atol=1e-6)


def test_pa_composited_on_white():
    # Pillow cannot write PA files, so test the conversion on an in-memory image.
    im = Image.new("PA", (2, 2), (1, 128))
    im.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762, "RGB")
    a = 128 / 255
    np.testing.assert_allclose(image_io._to_float_rgb(im)[0, 0], (1 - a, 1 - a, 1), atol=1e-6)


def test_palette_with_and_without_transparency(tmp_path):
    im = Image.new("P", (2, 1), 0)
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    im.putpixel((1, 0), 1)
    out = load_image(_write(tmp_path, im, "p.png"))
    np.testing.assert_allclose(out[0], [(1, 0, 0), (0, 0, 1)], atol=1e-6)
    im.info["transparency"] = 1  # index 1 (blue) fully transparent → white
    out = load_image(_write(tmp_path, im, "pt.png", transparency=1))
    np.testing.assert_allclose(out[0], [(1, 0, 0), (1, 1, 1)], atol=1e-6)
    out = load_image(_write(tmp_path, im, "pt.gif", transparency=1))
    np.testing.assert_allclose(out[0], [(1, 0, 0), (1, 1, 1)], atol=1e-6)


@pytest.mark.parametrize("mode, name", [("I;16", "a.png"), ("I;16B", "b.tif"), ("I", "c.tif")])
def test_16_bit_keeps_precision(tmp_path, mode, name):
    values = np.array([[0, 1, 30001, 65535]], dtype=np.uint16)
    im = Image.new(mode, (4, 1))
    im.putdata(values.ravel().tolist())
    out = load_image(_write(tmp_path, im, name))
    assert out.dtype == np.float32 and out.shape == (1, 4, 3)
    np.testing.assert_allclose(out[0, :, 0], values[0] / 65535, rtol=0, atol=1e-7)
    assert out[0, 3, 0] == 1.0
    assert out[0, 1, 0] > 0  # 1/65535 would be 0 through 8 bits
    assert np.all(out[..., 0] == out[..., 2])


def test_exif_orientation_applied(tmp_path):
    pixels = np.zeros((16, 32, 3), np.uint8)
    pixels[:8, :8] = (255, 0, 0)  # mark the stored top-left corner (one whole JPEG block)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation 6: display rotated 90° clockwise
    path = _write(tmp_path, Image.fromarray(pixels), "o.jpg", exif=exif, quality=95)
    out = load_image(path)
    assert out.shape == (32, 16, 3)  # transposed
    assert out[:8, -8:, 0].mean() > 0.9 and out[:8, -8:, 1:].mean() < 0.1  # now top-right
    assert out[:8, :8].mean() < 0.1


# ------------------------------------------------------------------------------- resizing


def test_fit_long_side():
    assert fit_long_side(300, 600, 512) == (256, 512)
    assert fit_long_side(600, 300, 512) == (512, 256)
    assert fit_long_side(1000, 10, 50) == (50, 1)  # never 0
    assert fit_long_side(7, 7, 3) == (3, 3)
    _error(fit_long_side, 10, 10, 0)


def test_load_resizes_long_side_keeping_aspect(tmp_path):
    path = _write(tmp_path, Image.fromarray(_noise(40, 80)), "n.png")
    assert load_image(path, long_side=20).shape == (10, 20, 3)
    assert load_image(path, long_side=160).shape == (80, 160, 3)
    tall = _write(tmp_path, Image.fromarray(_noise(90, 30)), "t.png")
    assert load_image(tall, long_side=45).shape == (45, 15, 3)


def test_resize_constant_stays_constant_and_in_float():
    image = np.full((12, 20, 3), 0.3, np.float32)
    image[..., 2] = 0.7003  # not on the 1/255 grid: an 8-bit resize would move it
    out = resize(image, 7, 31)
    assert out.dtype == np.float32 and out.shape == (7, 31, 3)
    np.testing.assert_allclose(out[..., 0], 0.3, atol=1e-5)
    np.testing.assert_allclose(out[..., 2], 0.7003, atol=1e-5)


def test_resize_clips_lanczos_overshoot():
    image = np.zeros((8, 8, 3), np.float32)
    image[:, 4:] = 1.0  # a hard edge rings under Lanczos
    out = resize(image, 8, 21)
    assert out.min() >= 0.0 and out.max() <= 1.0


# --------------------------------------------------------------------------------- errors


def test_missing_file_names_role(tmp_path):
    message = _error(load_image, tmp_path / "x.jpg", role="content image")
    assert message.startswith("content image ") and "x.jpg" in message and "not found" in message


def test_directory_is_not_an_image(tmp_path):
    assert "directory" in _error(load_image, tmp_path)


def test_text_file_is_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("hello, not a picture\n")
    assert "not an image" in _error(load_image, path)


@pytest.mark.parametrize("name", ["cut.png", "cut.jpg"])
def test_truncated_file(tmp_path, name):
    path = tmp_path / name
    Image.fromarray(_noise(64, 64)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert "truncated" in _error(load_image, path)


def test_decompression_bomb(tmp_path, monkeypatch):
    path = _write(tmp_path, Image.new("RGB", (8, 8)), "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # 64 px > 2 × 10: Pillow refuses
    assert "too large" in _error(load_image, path)


def test_unreadable_file(tmp_path, monkeypatch):
    # chmod cannot stop root (CI runs as root), so the operating system's refusal is simulated.
    path = tmp_path / "secret.png"
    Image.new("RGB", (2, 2)).save(path)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(image_io.Image, "open", refuse)
    assert "permission denied" in _error(load_image, path)


def test_output_same_as_input(tmp_path):
    content = _write(tmp_path, Image.new("RGB", (2, 2)), "content.png")
    assert "would overwrite input" in _error(check_output_path, content, [None, content])
    # The same file under another spelling, and through a symlink.
    alias = str(tmp_path / "sub" / ".." / "content.png")
    (tmp_path / "sub").mkdir()
    _error(check_output_path, alias, [content])
    (tmp_path / "link.png").symlink_to(content)
    _error(check_output_path, tmp_path / "link.png", [content])
    # save_image refuses too, and leaves the input alone.
    before = (tmp_path / "content.png").read_bytes()
    _error(save_image, np.ones((2, 2, 3)), content, inputs=[content])
    assert (tmp_path / "content.png").read_bytes() == before


def test_unknown_extension_lists_supported(tmp_path):
    message = _error(check_output_path, tmp_path / "out.xyz")
    assert ".xyz" in message and ".png" in message and ".jpg" in message
    _error(check_output_path, tmp_path / "out")  # no extension at all


def test_extension_case_insensitive(tmp_path):
    assert check_output_path(tmp_path / "OUT.JPG") == tmp_path / "OUT.JPG"


def test_output_is_directory(tmp_path):
    (tmp_path / "out.png").mkdir()
    assert "directory" in _error(check_output_path, tmp_path / "out.png")


def test_output_directory_created(tmp_path):
    out = tmp_path / "a" / "b" / "out.png"
    assert check_output_path(out) == out
    assert out.parent.is_dir() and list(out.parent.iterdir()) == []  # the write probe is gone


def test_output_directory_cannot_be_created(tmp_path):
    (tmp_path / "blocker").write_text("a file, not a directory")
    message = _error(check_output_path, tmp_path / "blocker" / "out.png")
    assert "cannot create output directory" in message and "a file is in the way" in message
    _error(check_output_path, tmp_path / "blocker" / "deeper" / "out.png")


def test_output_directory_not_writable(tmp_path, monkeypatch):
    # As above: the refusal a read-only directory gives a normal user, simulated for root.
    locked = tmp_path / "locked"
    locked.mkdir()

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(files.tempfile, "mkstemp", refuse)
    assert "not writable" in _error(check_output_path, locked / "out.png")


# ---------------------------------------------------------------------------------- saving


def test_png_round_trip_exact(tmp_path):
    pixels = _noise(5, 7)
    path = save_image(pixels.astype(np.float32) / 255, tmp_path / "r.png")
    assert path == tmp_path / "r.png"
    np.testing.assert_array_equal(np.asarray(Image.open(path)), pixels)
    np.testing.assert_array_equal(load_image(path), pixels.astype(np.float32) / 255)


def test_save_clips_and_rounds(tmp_path):
    image = np.array([[[-0.5, 1.5, 0.5], [np.nan, 0.2, 1.0]]], np.float32)
    path = save_image(image, tmp_path / "c.png")
    np.testing.assert_array_equal(np.asarray(Image.open(path)), [[[0, 255, 128], [0, 51, 255]]])


def test_save_accepts_jax_array(tmp_path):
    jnp = pytest.importorskip("jax.numpy")
    path = save_image(jnp.full((3, 4, 3), 0.5), tmp_path / "j.png")
    assert np.asarray(Image.open(path)).tolist() == [[[128] * 3] * 4] * 3


def _read_png16(path) -> tuple[np.ndarray, dict]:
    """uint16[H, W, 3] and the header, decoded by pypng (an independent PNG implementation)."""
    import png

    width, height, rows, info = png.Reader(filename=str(path)).read()
    return np.array([np.asarray(row, np.uint16) for row in rows]).reshape(height, width, 3), info


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (33, 20)])
def test_16_bit_png_holds_every_value_to_one_65535th(tmp_path, shape):
    rng = np.random.default_rng(3)
    image = rng.random(shape + (3,)).astype(np.float32)
    image[0, 0] = [-0.5, 1.5, np.nan]  # clipped, NaN → 0, as in 8 bits
    if shape[0] > 1:
        image[1, :] = np.linspace(0.0, 1.0, shape[1])[:, None]  # a smooth ramp (the Sub filter)
    path = save_image(image, tmp_path / "deep.png", bit_depth=16)
    values, info = _read_png16(path)
    assert info["bitdepth"] == 16 and info["planes"] == 3 and not info["alpha"]
    expected = np.clip(np.nan_to_num(image.astype(np.float64)), 0.0, 1.0) * 65535.0
    assert np.abs(values - expected).max() <= 0.5 + 1e-6
    with Image.open(path) as im:  # Pillow reads it too (its 8 bits are the high bytes)
        assert im.size == (shape[1], shape[0])
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), values >> 8)


def test_16_bit_png_differs_from_8_bit_where_8_bits_round(tmp_path):
    image = np.full((2, 2, 3), 100.3 / 255, np.float32)
    eight = np.asarray(Image.open(save_image(image, tmp_path / "a.png")))
    sixteen, _ = _read_png16(save_image(image, tmp_path / "b.png", bit_depth=16))
    assert (eight == 100).all()
    assert (sixteen == round(100.3 / 255 * 65535)).all()  # 25775, not 100 x 257 = 25700


def _spec_png16(values: np.ndarray, filters: list[int], exif: bytes | None = None) -> bytes:
    """A 16-bit RGB(A) PNG of uint16[H, W, C], each row filtered as the PNG specification's
    section 9 says, byte by byte (slow and literal: an independent encoder for the decoder)."""
    import zlib

    height, width, channels = values.shape
    bpp = 2 * channels
    lines = [list(values[r].astype(">u2").tobytes()) for r in range(height)]
    body = b""
    for r, kind in enumerate(filters):
        line, prior = lines[r], lines[r - 1] if r else [0] * len(lines[r])
        out = []
        for i, byte in enumerate(line):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prior[i], (prior[i - bpp] if i >= bpp else 0)
            p = a + b - c
            paeth = a if abs(p - a) <= abs(p - b) and abs(p - a) <= abs(p - c) else (
                b if abs(p - b) <= abs(p - c) else c)
            out.append((byte - [0, a, b, (a + b) // 2, paeth][kind]) % 256)
        body += bytes([kind] + out)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (len(data).to_bytes(4, "big") + kind + data
                + zlib.crc32(kind + data).to_bytes(4, "big"))

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes(
        [16, 6 if channels == 4 else 2, 0, 0, 0])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + (chunk(b"eXIf", exif) if exif else b"") + chunk(b"IDAT", zlib.compress(body))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("channels", [3, 4])
def test_16_bit_rgb_png_is_read_at_16_bits_with_every_row_filter(tmp_path, channels):
    rng = np.random.default_rng(channels)
    values = rng.integers(0, 65536, (10, 6, channels), dtype=np.uint16)
    values[3] = values[2] + 7  # rows and pixels that predict well, as well as noise
    values[:, 4] = values[:, 3]
    values[4:7] = rng.integers(0, 4, (3, 6, channels)) * 257  # few byte values
    # A Paeth tie (row 4 is Paeth-filtered): left 3, up 0, up-left 2 in every byte; the
    # specification breaks |p - up| = |p - up-left| towards up.
    values[3, 0], values[3, 1], values[4, 0] = 2 * 257, 0, 3 * 257
    path = tmp_path / "deep.png"
    path.write_bytes(_spec_png16(values, [0, 1, 2, 3, 4, 4, 3, 2, 1, 0]))
    out = load_image(path)
    expected = values[..., :3] / 65535
    if channels == 4:  # composited on white, as 8-bit RGBA is
        alpha = values[..., 3:] / 65535
        expected = expected * alpha + (1 - alpha)
    assert out.dtype == np.float32 and out.shape == (10, 6, 3)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
    with Image.open(path) as im:  # Pillow decodes the same file to the same high bytes
        high = np.asarray(im.convert("RGBA" if channels == 4 else "RGB"))
    np.testing.assert_array_equal(high, values >> 8)


def test_16_bit_png_written_by_jaxstyle_reads_back_exactly(tmp_path):
    image = np.random.default_rng(5).random((9, 14, 3)).astype(np.float32)
    path = save_image(image, tmp_path / "deep.png", bit_depth=16)
    assert np.abs(load_image(path) - image).max() <= 0.5 / 65535 + 1e-7


@pytest.mark.parametrize("orientation", range(1, 9))
def test_16_bit_png_exif_orientation_as_pillow_applies_it(tmp_path, orientation):
    values = np.random.default_rng(orientation).integers(0, 65536, (4, 7, 3), dtype=np.uint16)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "turned.png"
    path.write_bytes(_spec_png16(values, [1] * 4, exif.tobytes()[6:]))  # eXIf: no "Exif\0\0"
    with Image.open(path) as im:
        upright_high = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    out = load_image(path)
    np.testing.assert_array_equal(np.round(out * 65535).astype(np.uint16) >> 8, upright_high)


def test_16_bit_png_with_broken_data_is_one_line(tmp_path):
    data = _spec_png16(np.zeros((4, 4, 3), np.uint16), [0] * 4)
    start = data.index(b"IDAT") + 4
    path = tmp_path / "broken.png"
    path.write_bytes(data[:start] + bytes(8) + data[start + 8:])  # zlib stream corrupted
    assert "broken.png" in _error(load_image, path, role="content image")


@pytest.mark.parametrize("name", ["o.jpg", "o.tif", "o.webp"])
def test_16_bit_needs_a_png_and_writes_nothing_else(tmp_path, name):
    message = _error(save_image, np.zeros((2, 2, 3)), tmp_path / name, bit_depth=16)
    assert ".png" in message and "--bit-depth" in message
    assert list(tmp_path.iterdir()) == []


def test_unknown_bit_depth_is_refused(tmp_path):
    assert "8 or 16" in _error(save_image, np.zeros((2, 2, 3)), tmp_path / "o.png", bit_depth=12)


@pytest.mark.parametrize("ext, fmt", [(".jpg", "JPEG"), (".webp", "WEBP"), (".bmp", "BMP"),
                                      (".tiff", "TIFF"), (".gif", "GIF")])
def test_save_formats(tmp_path, ext, fmt):
    path = save_image(np.full((4, 6, 3), 0.5), tmp_path / f"o{ext}")
    with Image.open(path) as im:
        assert im.format == fmt and im.size == (6, 4)


def test_save_replaces_existing_output(tmp_path):
    path = tmp_path / "out.png"
    save_image(np.zeros((2, 2, 3)), path)
    save_image(np.ones((3, 3, 3)), path)
    assert np.asarray(Image.open(path)).tolist() == [[[255] * 3] * 3] * 3
    assert os.listdir(tmp_path) == ["out.png"]
    assert path.stat().st_mode & 0o777 != 0o600  # not mkstemp's private mode


def test_failed_save_leaves_old_output_and_no_temp_files(tmp_path, monkeypatch):
    path = tmp_path / "out.png"
    save_image(np.zeros((2, 2, 3)), path)
    before = path.read_bytes()

    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG half an image")
        raise OSError("No space left on device")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    assert "No space left" in _error(save_image, np.ones((2, 2, 3)), path)
    _error(save_gif, [np.ones((2, 2, 3))] * 2, tmp_path / "anim.gif")
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["out.png"]


def test_save_gif(tmp_path):
    frames = [np.full((6, 5, 3), v, np.float32) for v in (0.0, 0.5, 1.0)]
    path = save_gif(frames, tmp_path / "anim.gif", duration_ms=40)
    with Image.open(path) as im:
        assert im.format == "GIF" and im.n_frames == 3 and im.size == (5, 6)
        assert im.info["duration"] == 40
    with pytest.raises(ValueError):
        save_gif([frames[0], np.zeros((3, 3, 3))], tmp_path / "bad.gif")


def test_save_strip(tmp_path):
    frames = [np.full((6, 5, 3), v, np.float32) for v in (0.0, 0.5, 1.0)]
    path = save_strip(frames, tmp_path / "strip.png")
    strip = np.asarray(Image.open(path))
    assert strip.shape == (6, 3 * 5, 3)
    assert strip[0, ::5, 0].tolist() == [0, 128, 255]


# ---------------------------------------------------------------------------------- colour


def _yuv(rgb: np.ndarray) -> np.ndarray:
    """BT.601 YUV, written out independently of image_io."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    return np.stack([y, 0.492 * (b - y), 0.877 * (r - y)], axis=-1)


def test_original_colors_takes_luma_from_stylized_chroma_from_content():
    rng = np.random.default_rng(1)
    stylized = rng.uniform(0.35, 0.65, (9, 11, 3)).astype(np.float32)
    content = rng.uniform(0.4, 0.6, (9, 11, 3)).astype(np.float32)  # in gamut: no clipping
    out = original_colors(stylized, content)
    assert out.dtype == np.float32 and out.shape == stylized.shape
    assert out.min() > 0 and out.max() < 1
    np.testing.assert_allclose(_yuv(out)[..., 0], _yuv(stylized)[..., 0], atol=1e-4)
    np.testing.assert_allclose(_yuv(out)[..., 1:], _yuv(content)[..., 1:], atol=1e-3)


def test_original_colors_colours_a_gray_result():
    content = np.empty((4, 4, 3), np.float32)
    content[:] = (0.6, 0.4, 0.3)
    luma = 0.299 * 0.6 + 0.587 * 0.4 + 0.114 * 0.3
    stylized = np.full((4, 4, 3), luma, np.float32)  # gray, with the content's brightness
    np.testing.assert_allclose(original_colors(stylized, content), content, atol=1e-4)
    # Resized content of another size, and out-of-gamut results clip to [0, 1].
    out = original_colors(np.ones((3, 5, 3), np.float32), np.tile(content, (2, 2, 1)))
    assert out.shape == (3, 5, 3) and out.min() >= 0 and out.max() <= 1
