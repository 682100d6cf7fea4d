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

from jaxstyle.config import Config
from jaxstyle.errors import JaxstyleError
from jaxstyle.imageops import fit_long_side

GIB = 2**30
# XLA temporaries per input pixel of one step (memory_analysis().temp_size_in_bytes / (h·w)),
# measured on the CPU backend: 2418–2628 at 128–512 px, L-BFGS and Adam (docs/performance.md).
TEMP_BYTES_PER_PIXEL = {"lbfgs": 2600, "adam": 2600}
FIXED_BYTES = int(1.0 * GIB)
IMAGE_BYTES_PER_PIXEL = 12  # float32 RGB


def run_bytes(cfg: Config, height: int, width: int, problems: int = 1, num_styles: int = 1) -> int:
    """Estimated peak bytes of a run at its largest scale (``height`` x ``width``, the final
    size), for ``problems`` images run at once."""
    n = problems * height * width
    images = 1 + 2 + (1 if cfg.average > 0 else 0) + (1 if cfg.keep_best else 0)
    if cfg.optimizer == "lbfgs":
        # A bfloat16 history holds each pair at half a float32 image's bytes.
        images += 2 * cfg.lbfgs_memory * (0.5 if cfg.lbfgs_history_dtype == "bfloat16" else 1)
    else:
        images += 2
    style_px = num_styles * (cfg.style_scale * max(height, width)) ** 2
    temps = TEMP_BYTES_PER_PIXEL[cfg.optimizer] * (n + 0.5 * style_px)
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
    hint = (f"--image-size {size} would fit" if size else "even 16 px would not fit")
    extra = ""
    if cfg.optimizer == "lbfgs" and cfg.lbfgs_memory > 20:
        pair = 12 if cfg.lbfgs_history_dtype == "bfloat16" else 24
        extra = f", or lower --lbfgs-memory (its history is {pair} bytes per pixel per pair)"
    if problems > 1:
        extra += ", or lower --batch-size"
    raise JaxstyleError(
        f"a {width}x{height} run needs about {need / GIB:.1f} GiB but {where} has "
        f"{available / GIB:.1f} GiB available; {hint}{extra}")
