"""How much memory a run needs, estimated before any work: pure arithmetic on sizes (no arrays), so
that a run that cannot fit is refused with one line instead of being killed by the kernel.

The estimate for one compiled run of P problems of h x w pixels (n = P·h·w):

* XLA's temporaries of one step: ``TEMP_BYTES_PER_PIXEL`` × n, measured with
  ``optimize.run_steps.lower(...).compile().memory_analysis()`` (the full VGG-19 to relu5_1,
  float32; `python -m benchmarks.memory 128 256 512`, from a clone, prints the measurement);
* the run state: the image, the optimizer's state (L-BFGS: 2 × memory + 2 images; Adam: 2), the
  average and best iterate when kept: 12 bytes per pixel each;
* the style images' forward passes for the targets (about half a step's temporaries per pixel);
* host copies of the images (loaded, resized, result, written): 4 × 12 bytes per pixel;
* ``FIXED_BYTES`` for the process itself (JAX, the weights and their prepared kernels, programs).
"""

from __future__ import annotations

import dataclasses

from jaxstyle.config import Config
from jaxstyle.errors import JaxstyleError
from jaxstyle.imageops import fit_long_side

GIB = 2**30
# XLA temporaries per input pixel of one step (memory_analysis().temp_size_in_bytes / (h·w)),
# measured on the CPU backend (issue 27, docs/performance.md). With the ReLUs and poolings that
# keep only masks for the backward (`kernels.relu_max_pool` etc.) and the history updated in
# place (`problems.over_problems`): Adam 1608, L-BFGS (the fast preset's 5-level pyramid) 1672 at
# 128 px, whatever the history's length (10, 50 or 100 pairs; before, ~31 B per pixel per pair
# grew with it: a second copy of most of the history).
TEMP_BYTES_PER_PIXEL = {"lbfgs": 1700, "adam": 1700}
FIXED_BYTES = int(1.0 * GIB)
IMAGE_BYTES_PER_PIXEL = 12  # float32 RGB


def run_bytes(cfg: Config, height: int, width: int, problems: int = 1, num_styles: int = 1) -> int:
    """Estimated peak bytes of a run at its largest scale (``height`` x ``width``, the final
    size), for ``problems`` images run at once."""
    n = problems * height * width
    opt = cfg.optimizer
    images = 1 + 2 + (1 if cfg.output.average > 0 else 0) + (1 if cfg.output.keep_best else 0)
    if opt.name == "lbfgs":
        # A bfloat16 history holds each pair at half a float32 image's bytes.
        images += 2 * opt.lbfgs_memory * (0.5 if opt.lbfgs_history_dtype == "bfloat16" else 1)
    else:
        images += 2
    style_px = num_styles * (cfg.loss.style_scale * max(height, width)) ** 2
    temps = TEMP_BYTES_PER_PIXEL[opt.name] * (n + 0.5 * style_px)
    host = 4 * IMAGE_BYTES_PER_PIXEL * (n + style_px)
    return int(FIXED_BYTES + temps + host + images * IMAGE_BYTES_PER_PIXEL * n)


def largest_fitting_size(cfg: Config, height: int, width: int, available: int,
                         problems: int = 1, num_styles: int = 1) -> int | None:
    """The largest long side (a multiple of 16, at least 16) at which a ``height`` x ``width``
    image's run fits ``available`` bytes, or None if not even 16 px does."""
    def fits(long_side):
        h, w = fit_long_side(height, width, long_side)
        return run_bytes(cfg, h, w, problems, num_styles) <= available

    lo, hi = 1, max(1, max(height, width) // 16)  # in units of 16 px
    if not fits(16):
        return None
    while lo < hi:  # the largest k with fits(16·k)
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(16 * mid) else (lo, mid - 1)
    return 16 * lo


def check_fits(cfg: Config, height: int, width: int, available: int, where: str,
               problems: int = 1, num_styles: int = 1) -> None:
    """Raises JaxstyleError (one line, naming a size that would fit) when the run of a ``height`` x
    ``width`` image (its final size) needs more than ``available`` bytes of ``where``."""
    need = run_bytes(cfg, height, width, problems, num_styles)
    if need <= available:
        return
    size = largest_fitting_size(cfg, height, width, available, problems, num_styles)
    hint = (f"Config.image_size={size} would fit" if size else "even 16 px would not fit")
    extra = ""
    if cfg.optimizer.name == "lbfgs" and cfg.optimizer.lbfgs_memory > 20:
        pair = 24 // (2 if cfg.optimizer.lbfgs_history_dtype == "bfloat16" else 1)
        extra = f", or lower Config.lbfgs_memory (its history is {pair} bytes per pixel per pair)"
    if problems > 1:
        extra += ", or run fewer problems per batch (a smaller batch size)"
    raise JaxstyleError(
        f"a {width}x{height} run needs about {need / GIB:.1f} GiB but {where} has "
        f"{available / GIB:.1f} GiB available; {hint}{extra}")


# ----------------------------------------------------------------------------------------------
# The plan: one device, the rows over several devices (`jaxstyle.spatial`), or tiles.

# Per-device temporaries of a rows-sharded step against an n-th of one device's: the exchanged
# borders and the replicated Grams (measured 0.33x on 4 simulated devices at 64 px, i.e. 1.32x a
# quarter; tests/test_spatial.py); larger images have relatively thinner borders.
SHARD_OVERHEAD = 1.35
MIN_TILE = 128  # tiles smaller than this are mostly overlap
MODES = ("one", "devices", "tiles")
_UNITS = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "KIB": 2**10, "M": 10**6, "MB": 10**6,
          "MIB": 2**20, "G": 10**9, "GB": 10**9, "GIB": 2**30, "T": 10**12, "TB": 10**12,
          "TIB": 2**40}


def parse_size(text: str, flag: str = "--max-memory") -> int:
    """Bytes from ``24GB`` (10^9), ``512MiB`` (2^20), ``1.5GiB``, ``1000000``; a one-line
    JaxstyleError otherwise."""
    import re

    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    unit = match and match.group(2).upper()
    if not match or unit not in _UNITS or float(match.group(1)) <= 0:
        raise JaxstyleError(f"{flag}: {text!r} is not a size; use e.g. 24GB, 512MiB or 8GiB")
    return int(float(match.group(1)) * _UNITS[unit])


def sharded_bytes(cfg: Config, height: int, width: int, devices: int, problems: int = 1,
                  num_styles: int = 1) -> int:
    """Estimated peak bytes of each of ``devices`` devices when one run's rows are split over
    them (`jaxstyle.spatial`): the process's fixed part on each, the rest divided, with
    `SHARD_OVERHEAD`."""
    spread = run_bytes(cfg, height, width, problems, num_styles) - FIXED_BYTES
    return int(FIXED_BYTES + SHARD_OVERHEAD * spread / devices)


def tiled_bytes(cfg: Config, height: int, width: int, tile: int, num_styles: int = 1) -> int:
    """Estimated peak bytes of a tiled run (`jaxstyle.tiles`): one ``tile`` x ``tile`` run at a
    time, plus the whole image kept beside it (the result, its blend weights, the content and a
    host copy: 4 images)."""
    return run_bytes(cfg, min(tile, height), min(tile, width), 1, num_styles) + int(
        4 * IMAGE_BYTES_PER_PIXEL * height * width)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the estimate chose: ``mode`` one of `MODES`; ``devices`` (mode "devices"); ``tile``
    (mode "tiles": the tiles' side); ``need``: estimated bytes per device; ``available``."""

    mode: str
    need: int
    available: int
    devices: int = 1
    tile: int | None = None
    where: str = "the device"

    def line(self, width: int, height: int) -> str:
        """The one line a run prints about it."""
        what = {"one": "one device",
                "devices": f"its rows split over {self.devices} devices",
                "tiles": f"{self.tile}x{self.tile} tiles on one device"}[self.mode]
        return (f"memory: a {width}x{height} run on {what}, about {self.need / GIB:.1f} GiB of "
                f"{self.available / GIB:.1f} GiB available on {self.where}")


def plan(cfg: Config, height: int, width: int, available: int, where: str = "the device",
         devices: int = 1, problems: int = 1, num_styles: int = 1,
         max_memory: int | None = None, modes: tuple[str, ...] = MODES) -> Plan:
    """How the run fits, in this order: one device, several devices (rows sharded,
    only for one problem and with ``devices`` > 1 of their own memory each), tiles (one
    problem); raises the one-line JaxstyleError of `check_fits` when none does.

    available: bytes free per device; max_memory: a cap on it (``--max-memory``: emulate a
    smaller card); modes: those the caller can run."""
    if max_memory is not None:
        available, where = min(available, max_memory), f"{where} (capped at {max_memory / GIB:.2f} GiB)"
    need = run_bytes(cfg, height, width, problems, num_styles)
    if need <= available:
        return Plan("one", need, available, where=where)
    if "devices" in modes and devices > 1 and problems == 1:
        per_device = sharded_bytes(cfg, height, width, devices, problems, num_styles)
        if per_device <= available:
            return Plan("devices", per_device, available, devices=devices, where=where)
    if "tiles" in modes and problems == 1:
        tile = max(height, width) // 16 * 16
        while tile >= MIN_TILE:
            tiled = tiled_bytes(cfg, height, width, tile, num_styles)
            if tiled <= available:
                return Plan("tiles", tiled, available, tile=tile, where=where)
            tile = (tile * 3 // 4) // 16 * 16
    check_fits(cfg, height, width, available, where, problems, num_styles)
    raise AssertionError("unreachable: check_fits raises when the run does not fit")
