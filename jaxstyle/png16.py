"""16-bit RGB PNG files, which Pillow reads only as 8 bits and cannot write: `decode` (a
non-interlaced 16-bit RGB(A) PNG's pixels, exact) and `encode` (a 48-bit PNG of uint16 pixels).
Used by `image_io` for ``--bit-depth 16`` outputs and 16-bit inputs."""

from __future__ import annotations

import struct
import zlib

import numpy as np
from PIL import Image


def is_deep_png(im: Image.Image) -> bool:
    """A non-interlaced 16-bit RGB or RGBA PNG without a transparent colour: the files that
    `decode` decodes (Pillow would keep only their high bytes). Call before ``load()``."""
    rawmode = im.tile[0].args if im.format == "PNG" and len(im.tile) == 1 else None
    return (rawmode in ("RGB;16B", "RGBA;16B") and not im.info.get("interlace")
            and "transparency" not in im.info)


def decode(data: bytes) -> np.ndarray:
    """The uint16[H, W, 3 or 4] pixels of a non-interlaced 16-bit RGB(A) PNG file's bytes."""
    header, idat, pos = None, [], 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", data[pos + 8:pos + 21])
        elif kind == b"IDAT":
            idat.append(data[pos + 8:pos + 8 + length])
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None:
        raise ValueError("no IHDR chunk")
    width, height, _, colour, _, _, _ = header
    channels = 4 if colour == 6 else 3
    stride = width * 2 * channels
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8)
    if raw.size < height * (stride + 1):
        raise ValueError(f"image data ends early ({raw.size} of {height * (stride + 1)} bytes)")
    rows = raw[:height * (stride + 1)].reshape(height, stride + 1)
    if rows[:, 0].max(initial=0) > 4:
        raise ValueError(f"unknown row filter type {rows[:, 0].max()}")
    unfiltered = _unfilter(rows[:, 0], rows[:, 1:].reshape(height, width, 2 * channels))
    return unfiltered.view(">u2").reshape(height, width, channels).astype(np.uint16)


def _unfilter(filters: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Undo PNG's per-row filters. filters: uint8[H] (0 none, 1 sub, 2 up, 3 average, 4 Paeth);
    rows: uint8[H, W, B], B bytes per pixel. Returns uint8[H, W, B].

    A byte is predicted from the bytes of the pixels left, above and above-left of it, after those
    are decoded. So the pixels of one anti-diagonal (r + x = d) depend only on earlier diagonals
    and are decoded together: H + W - 1 vectorized steps instead of H·W.
    """
    height, width, _ = rows.shape
    out = np.zeros((height + 1, width + 1, rows.shape[2]), np.int32)  # a zero row and column
    for d in range(height + width - 1):
        r = np.arange(max(0, d - width + 1), min(height, d + 1))
        x = d - r
        left, up, up_left = out[r + 1, x], out[r, x + 1], out[r, x]
        p = left + up - up_left
        pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - up_left)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, up_left))
        kind = filters[r][:, None]
        predicted = np.select([kind == 1, kind == 2, kind == 3, kind == 4],
                              [left, up, (left + up) >> 1, paeth], 0)
        out[r + 1, x + 1] = (rows[r, x] + predicted) & 255
    return out[1:, 1:].astype(np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", zlib.crc32(data, zlib.crc32(kind)))


def encode(pixels: np.ndarray) -> bytes:
    """A 48-bit RGB PNG (16 bits per channel) of uint16[H, W, 3] pixels.

    Pillow reads such files but cannot write them, so this writes one directly: an IHDR chunk
    (bit depth 16, colour type 2, no interlace), the rows in one zlib-compressed IDAT chunk, IEND.
    Every row uses filter type 1 ("Sub": each byte minus the same byte of the pixel to its left),
    which is one vectorized subtraction here and compresses smooth 16-bit data far better than no
    filter.
    """
    height, width, _ = pixels.shape
    raw = pixels.astype(">u2").view(np.uint8).reshape(height, width, 6)
    sub = raw.copy()
    sub[:, 1:] -= raw[:, :-1]  # uint8 arithmetic wraps modulo 256, as the PNG filter does
    rows = np.concatenate([np.ones((height, 1), np.uint8), sub.reshape(height, width * 6)], axis=1)
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + _png_chunk(b"IEND", b""))
