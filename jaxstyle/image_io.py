"""Image I/O at the edge of the library: Pillow in, Pillow out.

Inside jaxstyle an image is a float32 numpy array of shape [H, W, 3]: RGB in [0, 1]. This module
turns any file Pillow can read into that (``load_image``), resizes in float without 8-bit rounding
(``resize``), and writes results atomically so an output is never left half-written and an input
is never overwritten (``save_image``, ``save_gif``, ``save_strip``). Every bad path or file raises
a one-line ``JaxstyleError``.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import Iterable, Sequence, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from jaxstyle import imageops, png16
from jaxstyle.imageops import fit_long_side
from jaxstyle.errors import JaxstyleError
from jaxstyle.files import atomic_write, check_output_file

PathLike = Union[str, "os.PathLike[str]"]

# Output extension (lower case) → Pillow format name.
OUTPUT_FORMATS: dict[str, str] = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".gif": "GIF",
}
_SAVE_OPTIONS: dict[str, dict] = {"JPEG": {"quality": 95}, "WEBP": {"quality": 95}}
# Bits per channel an output can have; 16 is written as PNG only (`png16.encode`).
BIT_DEPTHS: tuple[int, ...] = (8, 16)
# What a folder of inputs is searched for: the formats jaxstyle also writes.
IMAGE_EXTENSIONS: tuple[str, ...] = tuple(OUTPUT_FORMATS)

# Single-channel integer modes read as 16-bit: scaled by 65535 straight from the integers, so
# their extra precision survives (Pillow's own convert("RGB") would go through 8 bits).
_INT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")

# Errors Pillow raises while decoding a broken file (beyond the missing/unreadable ones).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)

def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


# ---------------------------------------------------------------------------------------- loading


def load_image(path: PathLike, long_side: int | None = None, role: str = "image") -> np.ndarray:
    """Read an image file as float32[H, W, 3] RGB in [0, 1].

    The EXIF orientation is applied, so the array is upright as a viewer shows it. Every Pillow
    mode is accepted: 1/L/P/RGB/CMYK/YCbCr are converted to RGB; transparency (RGBA, LA, PA, P or L
    with a transparent colour, premultiplied RGBa/La) is composited on WHITE; 16-bit grayscale
    (I;16*, and I, taken as 0–65535 and clipped) and 16-bit RGB/RGBA PNGs (such as
    ``save_image(..., bit_depth=16)`` writes) are divided by 65535 without passing through
    8 bits; F (float) is taken as already in [0, 1] and clipped. Grayscale becomes three equal
    channels. Only the first frame of an animation is read.

    Args:
      path: the image file.
      long_side: if given, resize (Lanczos, in float) so the longer side is this many pixels.
      role: how to name the file in error messages, e.g. "content image".
    Raises:
      JaxstyleError: missing, a directory, unreadable, not an image, truncated/corrupt, or so large
        that Pillow suspects a decompression bomb.
    """
    path = Path(path)
    if path.is_dir():
        raise JaxstyleError(f"{role} '{path}' is a directory; give the path of an image file")
    try:
        with Image.open(path) as im:
            deep = png16.is_deep_png(im)  # before load(): the tile still names the raw mode
            im.load()  # Pillow decodes lazily: force it now so truncation is reported here
            pil = None if deep else ImageOps.exif_transpose(im)
            orientation = im.getexif().get(_ORIENTATION, 1)
        if deep:  # Pillow holds 16-bit RGB(A) as 8 bits (the high bytes): decode all 16 here
            image = _orient(_composite(png16.decode(path.read_bytes()) / 65535.0), orientation)
    except FileNotFoundError as e:
        raise JaxstyleError(f"{role} '{path}' not found; check the path") from e
    except PermissionError as e:
        raise JaxstyleError(f"cannot read {role} '{path}': permission denied") from e
    except UnidentifiedImageError as e:
        raise JaxstyleError(
            f"{role} '{path}' is not an image Pillow can read; give a PNG, JPEG, WebP, ... file"
        ) from e
    except Image.DecompressionBombError as e:
        raise JaxstyleError(
            f"{role} '{path}' is too large to open safely ({_one_line(e)}); downscale it first"
        ) from e
    except (*_DECODE_ERRORS, zlib.error) as e:
        raise JaxstyleError(
            f"{role} '{path}' is truncated or corrupt ({_one_line(e)}); re-export or re-download it"
        ) from e
    if not deep:
        image = _to_float_rgb(pil)
    if long_side is not None:
        image = resize(image, *fit_long_side(image.shape[0], image.shape[1], long_side))
    return image


def image_dimensions(path: PathLike) -> tuple[int, int] | None:
    """(height, width) of an image file as `load_image` would return it (EXIF orientation applied),
    read from its header without decoding; None if the file cannot be read (`load_image` then
    reports why)."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            orientation = im.getexif().get(0x0112, 1)
    except Exception:  # reported properly by load_image
        return None
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def collect_images(paths: Sequence[PathLike]) -> list[Path]:
    """Files as given, and the image files (by extension, sorted) of any folder among them."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.iterdir()
                            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        else:
            found.append(path)
    return found


def _composite(rgba: np.ndarray) -> np.ndarray:
    """float[H, W, 3 or 4] in [0, 1] → float32[H, W, 3]: an alpha channel composited on white."""
    rgba = rgba.astype(np.float32)
    if rgba.shape[-1] == 3:
        return rgba
    rgb, alpha = rgba[..., :3], rgba[..., 3:]
    return rgb * alpha + (1.0 - alpha)  # over white: transparent areas read as paper


def _to_float_rgb(im: Image.Image) -> np.ndarray:
    """A decoded Pillow image of any mode → float32[H, W, 3] in [0, 1] (see ``load_image``)."""
    if im.mode in _INT_MODES or im.mode == "F":
        gray = np.asarray(im).astype(np.float32)
        if im.mode != "F":
            gray /= 65535.0
        return np.repeat(np.clip(gray, 0.0, 1.0)[..., None], 3, axis=-1)
    bands = im.getbands()
    if "A" in bands or "a" in bands or "transparency" in im.info:
        return _composite(np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0)
    return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


_ORIENTATION = 0x0112  # the EXIF tag
# EXIF orientation → the numpy operation that makes the image upright (as ImageOps.exif_transpose).
_UPRIGHT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda a: np.rot90(a, 1),
}


def _orient(image: np.ndarray, orientation: int) -> np.ndarray:
    return np.ascontiguousarray(_UPRIGHT.get(orientation, lambda a: a)(image))


# --------------------------------------------------------------------------------------- resizing


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize float[H, W, C] to float32[height, width, C] with Lanczos, clipped to [0, 1].

    Each channel is resized as a Pillow 'F' (float32) image, so no 8-bit quantization happens;
    the clip removes Lanczos's small overshoot at sharp edges.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.shape[:2] == (height, width):
        return image
    channels = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(image[..., c])).resize(
                (width, height), Image.Resampling.LANCZOS
            )
        )
        for c in range(image.shape[-1])
    ]
    return np.clip(np.stack(channels, axis=-1), 0.0, 1.0)


# ---------------------------------------------------------------------------------------- saving


def check_output_path(output: PathLike, inputs: Iterable[PathLike | None] = (),
                      bit_depth: int = 8) -> Path:
    """Validate an output path before a long run, creating its directory if missing.

    Raises JaxstyleError if the output is a directory, has an extension not in ``OUTPUT_FORMATS``
    (or is not a PNG when ``bit_depth`` is 16), is the same file as one of ``inputs`` (None entries
    are skipped), or its directory cannot be created or written to.
    """
    output = Path(output)
    if output.is_dir():
        raise JaxstyleError(f"output '{output}' is a directory; give a file name, e.g. out.png")
    if output.suffix.lower() not in OUTPUT_FORMATS:
        supported = ", ".join(OUTPUT_FORMATS)
        raise JaxstyleError(
            f"output '{output}' has unsupported extension '{output.suffix}'; use one of {supported}"
        )
    if bit_depth not in BIT_DEPTHS:
        raise JaxstyleError(f"bit depth {bit_depth} is not supported; use 8 or 16")
    if bit_depth == 16 and output.suffix.lower() != ".png":
        raise JaxstyleError(f"16 bits per channel are written as PNG only; name the output "
                            f"'{output.with_suffix('.png').name}' or drop --bit-depth 16")
    return check_output_file(output, inputs)


def is_folder(output: PathLike) -> bool:
    """Whether an output path names a folder: it ends with a path separator or is a directory."""
    text = os.fspath(output)
    return text.endswith(("/", os.sep)) or Path(text).is_dir()


def _clipped(image: np.ndarray) -> np.ndarray:
    """float[H, W, 3] (numpy or jax) → float32[H, W, 3] clipped to [0, 1]; NaN → 0."""
    array = np.asarray(image, dtype=np.float32)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"expected an image of shape [H, W, 3], got {array.shape}")
    return np.clip(np.nan_to_num(array), 0.0, 1.0)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """float[H, W, 3] (numpy or jax) → uint8[H, W, 3]: clipped to [0, 1], rounded; NaN → 0."""
    return np.round(_clipped(image) * 255.0).astype(np.uint8)


def _to_uint16(image: np.ndarray) -> np.ndarray:
    """float[H, W, 3] (numpy or jax) → uint16[H, W, 3]: clipped to [0, 1], rounded; NaN → 0."""
    return np.round(_clipped(image).astype(np.float64) * 65535.0).astype(np.uint16)


def save_image(image: np.ndarray, path: PathLike, inputs: Iterable[PathLike | None] = (),
               bit_depth: int = 8) -> Path:
    """Save float[H, W, 3] in [0, 1] (clipped, rounded to ``bit_depth`` bits) atomically.

    Returns the path. The format follows the extension (``OUTPUT_FORMATS``); JPEG and WebP use
    quality 95; 16 bits per channel are written as PNG only (`png16.encode`). The path is checked
    with ``check_output_path`` first, so none of ``inputs`` is ever overwritten.
    """
    path = check_output_path(path, inputs, bit_depth)
    if bit_depth == 16:
        data = png16.encode(_to_uint16(image))
        atomic_write(path, lambda f: f.write(data))
        return path
    pil = Image.fromarray(to_uint8(image))
    fmt = OUTPUT_FORMATS[path.suffix.lower()]
    atomic_write(path, lambda f: pil.save(f, format=fmt, **_SAVE_OPTIONS.get(fmt, {})))
    return path


def save_gif(
    frames: Sequence[np.ndarray],
    path: PathLike,
    duration_ms: int = 100,
    loop: int = 0,
    inputs: Iterable[PathLike | None] = (),
) -> Path:
    """Save float[H, W, 3] frames (all the same size) as an animated GIF, atomically.

    ``duration_ms`` is per frame; ``loop=0`` loops forever. Each frame gets its own adaptive
    256-colour palette; Pillow merges consecutive identical frames into one longer frame.
    """
    path = check_output_path(path, inputs)
    if OUTPUT_FORMATS[path.suffix.lower()] != "GIF":
        raise ValueError(f"save_gif needs a .gif path, got '{path}'")
    images = [Image.fromarray(to_uint8(frame)) for frame in frames]
    if not images or len({im.size for im in images}) != 1:
        raise ValueError("save_gif needs at least one frame, all of the same size")
    first, *rest = images
    atomic_write(
        path,
        lambda f: first.save(
            f, format="GIF", save_all=True, append_images=rest, duration=duration_ms, loop=loop
        ),
    )
    return path


def save_strip(
    frames: Sequence[np.ndarray], path: PathLike, inputs: Iterable[PathLike | None] = ()
) -> Path:
    """Save float[H, W_i, 3] frames side by side as one [H, ΣW_i, 3] image (via ``save_image``)."""
    if not frames:
        raise ValueError("save_strip needs at least one frame")
    return save_image(np.concatenate([np.asarray(f) for f in frames], axis=1), path, inputs)


# ---------------------------------------------------------------------------------------- colour


def original_colors(stylized: np.ndarray, content: np.ndarray) -> np.ndarray:
    """`imageops.original_colors` (luminance transfer, as neural-style's ``-original_colors``) with
    ``content`` float[H', W', 3] first resized to the stylized image's [H, W] if it differs.

    Returns float32[H, W, 3] in [0, 1] (numpy)."""
    stylized = np.asarray(stylized, dtype=np.float32)
    content = resize(content, stylized.shape[0], stylized.shape[1])
    return np.asarray(imageops.original_colors(stylized, content))


def load_mask(path: PathLike, long_side: int | None = None, role: str = "mask") -> np.ndarray:
    """Read a grey mask as float32[H, W] in [0, 1]: white 1 (applies), black 0, grey partial.

    Any image `load_image` reads; colour is taken as its BT.601 luminance, transparency is
    composited on white (as `load_image`). ``long_side`` resizes as there. Raises JaxstyleError as
    `load_image` does.
    """
    image = load_image(path, long_side, role)
    return np.clip(image @ np.asarray(imageops.RGB_TO_YUV[0], np.float32), 0.0, 1.0)
