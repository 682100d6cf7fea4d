"""Contact sheets: images in a grid, each with its label underneath (a sweep's results at a glance)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from jaxstyle.image_io import to_uint8


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: scalable
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def contact_sheet(images: Sequence[np.ndarray], labels: Sequence[Sequence[str]],
                  columns: int | None = None) -> np.ndarray:
    """A grid of ``images`` (float[H, W, 3] in [0, 1], any sizes), row by row, each above its
    ``labels`` (one line per string, black on white). ``columns`` defaults to ⌈√N⌉.

    Returns float32[H', W', 3] in [0, 1].
    """
    n = len(images)
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    cell_h = max(im.shape[0] for im in images)
    cell_w = max(im.shape[1] for im in images)
    font_size = max(11, min(24, cell_w // 14))
    font = _font(font_size)
    line_h = font_size + 4
    lines = max(len(lbl) for lbl in labels) if labels else 0
    # Wide enough for the longest label line, so no text is cut.
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max((probe.textlength(line, font=font) for lbl in labels for line in lbl), default=0)
    cell_w = max(cell_w, int(text_w) + 8)
    pad = 8
    sheet = Image.new("RGB", (columns * (cell_w + pad) + pad,
                              rows * (cell_h + lines * line_h + 2 * pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (image, label) in enumerate(zip(images, labels)):
        r, c = divmod(i, columns)
        x = pad + c * (cell_w + pad)
        y = pad + r * (cell_h + lines * line_h + 2 * pad)
        sheet.paste(Image.fromarray(to_uint8(image)), (x, y))
        for j, line in enumerate(label):
            draw.text((x, y + cell_h + pad // 2 + j * line_h), line, fill="black", font=font)
    return np.asarray(sheet, np.float32) / 255.0
