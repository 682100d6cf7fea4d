"""Stylizing a film frame by frame without flicker (Ruder et al. 2016, "Artistic style transfer for
videos"): arrays in, arrays out, on top of `stylize.stylize_batch`.

The first frame is stylized as `stylize` does a still image. Each next frame t starts from the
previous stylized frame warped onto it by the backward optical flow (`warp.warp`), with the content
frame where the flow says the pixel was not visible before (`warp.occlusion_mask`), and adds the
temporal term `losses.temporal_loss` (weight · Σ c·(x − ω)² / (H·W·3) on [0, 1]) to the loss; it
runs at the final scale only (the warped start already has the picture's layout).

Temporal weights (the term on the [0, 1] scale):
  * neural-style's absolute weights: Ruder et al.'s 1e3 on the 0–255 scale = 1e3·255² on [0, 1];
  * jaxstyle's relative weights (`config.RELATIVE_WEIGHTS`, content ≈ 1 for an image that shares
    nothing with its target): `RELATIVE_TEMPORAL_WEIGHT`, chosen with benchmarks/video.py (see
    docs/video.md).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxstyle import stylize as stylize_lib
from jaxstyle import warp
from jaxstyle.config import Config
from jaxstyle.models import vgg19

Array = jax.Array

ABSOLUTE_TEMPORAL_WEIGHT = 1e3 * 255.0**2
# Run to convergence (the fast preset's stopping rules), 30 gave 34x / 56x less flicker than
# per-frame stylization with the style distance within 7 % / 2 % of it (96x128 / 192x256);
# 1e4 (the default before) 5500-8650x, but 2.5-3.1x the style distance (docs/video.md).
RELATIVE_TEMPORAL_WEIGHT = 30.0


def default_temporal_weight(cfg: Config) -> float:
    """Ruder et al.'s weight on the scale of ``cfg``'s loss weights (see the module's docstring)."""
    relative = cfg.loss.loss_scale == "relative"
    return RELATIVE_TEMPORAL_WEIGHT if relative else ABSOLUTE_TEMPORAL_WEIGHT


@jax.jit
def _warped_start(previous: Array, content: Array, flow_fwd: Array, flow_bwd: Array):
    warped = warp.warp(previous, flow_bwd)
    mask = warp.occlusion_mask(flow_fwd, flow_bwd)[..., None]
    return mask * warped + (1.0 - mask) * content, warped, mask


def warped_start(previous: np.ndarray, content: np.ndarray, flow_fwd: np.ndarray,
                 flow_bwd: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frame t's start from the previous stylized frame.

    Args:
      previous: float32[H, W, 3], stylized frame t-1.
      content: float32[H, W, 3], content frame t.
      flow_fwd, flow_bwd: float32[H, W, 2] between the INPUT frames t-1 and t (`jaxstyle.warp`).

    Returns:
      (start float32[H, W, 3]: the warped previous frame where visible, the content elsewhere;
       warped float32[H, W, 3]; mask float32[H, W, 1] of 0/1).
    """
    return tuple(np.asarray(a) for a in _warped_start(previous, content, flow_fwd, flow_bwd))


@dataclasses.dataclass(frozen=True)
class Previous:
    """What frame t keeps of frame t-1: ``start``, ``warped`` and ``mask`` of `warped_start`."""

    start: np.ndarray
    warped: np.ndarray
    mask: np.ndarray


def stylize_frames(vgg: vgg19.VGG, contents: np.ndarray, styles: Sequence[np.ndarray], cfg: Config,
                   previous: Sequence[Previous] | None = None, temporal_weight: float | None = None,
                   on_progress: Callable[[stylize_lib.Progress], None] | None = None,
                   every: tuple[int, ...] = (), mesh=None, vmap: bool = False,
                   **kwargs) -> stylize_lib.Result:
    """P frames (of P films, or P segments of one) as one batch, each its own problem.

    Args:
      contents: float32[P, H, W, 3], the content frames at the output's size.
      previous: None for first frames (stylized as still images, every scale of ``cfg``), or one
        `Previous` per frame: then only the final scale runs, from ``start``, with the temporal term.
      temporal_weight: the temporal term's weight (None: `default_temporal_weight`).
      mesh: a device mesh (`segment_mesh`) to split the P problems over (P a multiple of its
        size); None: one device.
      vmap: the problems of a device vmapped (they share each matrix product) instead of the
        CPU's one after another (`problems.over_problems`): faster for small frames on a CPU.
      kwargs: passed to `stylize.stylize_batch` (guidance, init_image, to_host).

    Returns:
      `stylize.Result` with the P stylized frames.
    """
    if mesh is not None:  # segments over devices: problems split, the network on each
        from jax.sharding import NamedSharding, PartitionSpec

        from jaxstyle.batch import _to_host

        vgg = jax.device_put(vgg, NamedSharding(mesh, PartitionSpec()))
        kwargs.setdefault("to_host", _to_host)
    contents = shard_problems(contents, mesh)
    if vmap:
        kwargs["sequential"] = False
    if previous is None:
        return stylize_lib.stylize_batch(vgg, contents, styles, cfg, on_progress=on_progress,
                                         every=every, **kwargs)
    weight = default_temporal_weight(cfg) if temporal_weight is None else temporal_weight
    start = stylize_lib.Start(len(cfg.schedule.all_scales) - 1, 0,
                              shard_problems(np.stack([p.start for p in previous]), mesh))
    temporal = {"image": jnp.asarray(shard_problems(np.stack([p.warped for p in previous]), mesh)),
                "mask": jnp.asarray(shard_problems(np.stack([p.mask for p in previous]), mesh)),
                "weight": weight}
    return stylize_lib.stylize_batch(vgg, contents, styles, cfg, start=start, temporal=temporal,
                                     on_progress=on_progress, every=every, **kwargs)


def quantize(image: np.ndarray) -> np.ndarray:
    """An output frame as it is stored (8 bits a channel), as the next frame starts from it: a run
    resumed from the stored frames then equals an uninterrupted one."""
    return (np.clip(np.rint(np.asarray(image, np.float32) * 255.0), 0, 255) / 255.0).astype(
        np.float32)


# ----------------------------------------------------------------------------------------------
# Parallel segments: a film cut into N segments that run as one batch (one problem each), each
# sequential inside; neighbours overlap by a few frames, which are cross-faded.


@dataclasses.dataclass(frozen=True)
class Segment:
    """Frames ``first`` … ``stop - 1`` of the film, stylized in order from ``first`` (a first
    frame, every scale) on; the first ``overlap`` of them (none for the first segment) are also
    the previous segment's last ones and are cross-faded with them."""

    first: int
    stop: int
    overlap: int

    def __len__(self) -> int:
        return self.stop - self.first


def _plan(num_frames: int, n: int, overlap: int) -> list[Segment] | None:
    length = -(-(num_frames + (n - 1) * overlap) // n)  # ceil: every segment the same work
    firsts = [k * (length - overlap) for k in range(n)]
    if length - overlap < 1 or length < 2 * overlap or firsts[-1] + overlap >= num_frames:
        return None
    return [Segment(f, min(num_frames, f + length), overlap if k else 0)
            for k, f in enumerate(firsts)]


def plan_segments(num_frames: int, num_segments: int, overlap: int) -> list[Segment]:
    """The film's N segments of equal work (the last may be shorter): segment k starts at
    k·(L − overlap) and runs L frames, L = ⌈(T + (N − 1)·overlap) / N⌉, so neighbours share
    ``overlap`` frames. A film too short for that gets fewer overlap frames, then fewer segments
    (one frame a segment at the least); one segment is the whole film."""
    if num_frames < 1 or num_segments < 1 or overlap < 0:
        raise ValueError(f"no plan for {num_frames} frames, {num_segments} segments, "
                         f"overlap {overlap}")
    for n in range(min(num_segments, num_frames), 0, -1):
        for v in range(overlap, -1, -1):
            plan = _plan(num_frames, n, v)
            if plan is not None:
                return plan
    raise AssertionError("one segment always fits")  # pragma: no cover


def fade(differences: Sequence[float]) -> list[float]:
    """The weights α_j of the later segment at the V overlap frames, from the differences d_j
    (e.g. RMS over pixels) between the two segments' frames there.

    The fade adds (α_j − α_{j−1})·(B_j − A_j) to the change between frames j−1 and j, so the
    worst pair is smallest when the steps are ∝ 1/d_j: large steps where the segments already
    agree, small ones where they differ. V + 1 steps (α = 0 before, 1 after; the last uses
    d_{V−1}); equal differences give the linear fade (j + 1)/(V + 1)."""
    d = np.maximum(np.asarray(differences, np.float64), 1e-12)
    inverse = 1.0 / np.concatenate([d, d[-1:]])
    return [float(a) for a in np.cumsum(inverse / inverse.sum())[:-1]]


def frame_sources(index: int, segments: Sequence[Segment],
                  fades: dict[int, Sequence[float]] | None = None) -> list[tuple[int, float]]:
    """Which segments' frames make output frame ``index``, and their weights (summing to 1):
    one segment outside the overlaps; inside segment k's overlap of V frames, its j-th frame
    weighs ``fades[k][j]`` (`fade`; without it (j + 1) / (V + 1), a linear cross-fade) and the
    previous segment's the rest, so the difference between the two segments' styles is spread
    over V + 1 frame pairs."""
    for k in range(len(segments) - 1, -1, -1):
        s = segments[k]
        if s.first <= index < s.stop:
            j = index - s.first
            if k and j < s.overlap:
                alpha = fades[k][j] if fades and k in fades else (j + 1) / (s.overlap + 1)
                return [(k - 1, 1.0 - alpha), (k, alpha)]
            return [(k, 1.0)]
    raise IndexError(f"frame {index} is in no segment")


def segment_fades(segments: Sequence[Segment], frame: Callable[[int, int], np.ndarray],
                  upto: int | None = None) -> dict[int, list[float]]:
    """`fade` of every overlap (that ends before frame ``upto``), from ``frame(k, index)``:
    segment k's stylized frame ``index``."""
    return {k: fade([float(np.sqrt(np.mean((frame(k, s.first + j) - frame(k - 1, s.first + j))
                                            ** 2))) for j in range(s.overlap)])
            for k, s in enumerate(segments)
            if k and s.overlap and (upto is None or s.first + s.overlap <= upto)}


def segment_mesh(num_problems: int):
    """The device mesh a batch of ``num_problems`` segments is split over: every device when
    they divide evenly, else None (one device)."""
    from jaxstyle.batch import device_mesh

    n = jax.device_count()
    return device_mesh() if n > 1 and num_problems % n == 0 else None


def shard_problems(array, mesh):
    """``array`` [P, ...] split along P over ``mesh`` (None: as it is)."""
    if mesh is None:
        return array
    from jax.sharding import NamedSharding, PartitionSpec

    from jaxstyle.batch import _global_array

    return _global_array(np.asarray(array, np.float32), NamedSharding(mesh, PartitionSpec("batch")))
