"""From arrays to stylized arrays: sizes, initial image, coarse-to-fine scales.

This is the Python API for research code: images in, images out, no files. The CLI and the batch
runner are built on `stylize_batch`; `stylize` is the one-image convenience.

Per scale (``cfg.schedule.all_scales``, e.g. 256 → 512 → 1024): the content images are resized so
their long side is the scale, the style images to ``style_scale`` × the scale, targets are computed
once (`run_targets`), and at most ``cfg.schedule.scale_iterations[i]`` compiled optimizer steps
run from the previous scale's result (upsampled) or from the initial image.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxstyle import guidance as guidance_lib
from jaxstyle import buckets, losses, optimize, problems, run_targets, starts, tracking
from jaxstyle.config import Config, check_sweep
from jaxstyle.errors import ConfigError, JaxstyleWarning
from jaxstyle.imageops import fit_long_side, match_colors, original_colors, resize
from jaxstyle.models import vgg19

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Progress:
    """What `stylize_batch` reports after each compiled chunk.

    scale_index / num_scales: which scale runs; iteration: steps done at this scale (of
    num_iterations); state: the `optimize.RunState` (images float32[P, h, w, 3]); to_host: how
    `images` fetches them (`stylize_batch`'s ``to_host``: a gather across hosts in a multi-host
    run, where no host holds the whole array).
    """

    scale_index: int
    num_scales: int
    iteration: int
    num_iterations: int
    state: optimize.RunState
    to_host: Callable[[Array], np.ndarray] = np.asarray
    size: tuple[int, int] | None = None  # a padded run's photo (h, w), at the top left
    # A portrait run transposed (`jaxstyle.buckets`): ``state`` holds the transposed images.
    transposed: bool = False

    @property
    def images(self) -> np.ndarray:
        """The result so far: the iterates, or their average / best when tracked with those
        (the photo alone, its padding cropped, in the photo's orientation)."""
        images = self.to_host(optimize.result_images(self.state))
        images = images if self.size is None else images[:, :self.size[0], :self.size[1]]
        return np.ascontiguousarray(images.swapaxes(1, 2)) if self.transposed else images


@dataclasses.dataclass(frozen=True)
class Start:
    """Where a resumed run starts: at ``scale_index`` after ``iteration`` steps, from ``images``
    float32[P, h, w, 3] (any size: resized to that scale). ``state``: the leaves of the run's
    `optimize.RunState` at that point (host arrays, in `jax.tree_util` order), so that the
    optimizer's memory (Adam's moments, the L-BFGS history) and the stopping rule's record go on
    as if never stopped; used when they fit this run (the same optimizer, history and shapes),
    else the run starts its optimizer afresh from ``images``. None: from ``images`` alone."""

    scale_index: int
    iteration: int
    images: np.ndarray
    state: Sequence[np.ndarray] | None = None


@dataclasses.dataclass(frozen=True)
class Result:
    """images: float32[P, h, w, 3] in [0, 1]; diverged: bool[P] (those hold their last finite image);
    loss: float32[P] at the last step. converged: bool[P], stopped by
    ``cfg.schedule.stop_tolerance`` at the last scale (None when the run was not tracked); steps:
    int32[P] steps applied at the last scale.
    """

    images: np.ndarray
    diverged: np.ndarray
    loss: np.ndarray
    converged: np.ndarray | None = None
    steps: np.ndarray | None = None

    def problem(self, i: int) -> "Result":
        """Problem ``i`` alone (every field keeps its leading axis, of length 1)."""
        fields = (getattr(self, f.name) for f in dataclasses.fields(self))
        return Result(*(None if x is None else x[i:i + 1] for x in fields))


def tracked(cfg: Config) -> bool:
    """Whether ``cfg`` needs `tracking.Tracking` (early stop, average or best iterate)."""
    schedule, output = cfg.schedule, cfg.output
    return (schedule.stop_tolerance > 0 or schedule.stop_change > 0 or output.average > 0
            or output.keep_best)


def style_size(height: int, width: int, long_side: int, min_side: int) -> tuple[int, int]:
    """A style image's size: long side ``long_side``, enlarged if needed so that the short side is
    at least ``min_side`` (a panorama must still reach the deepest style layer)."""
    h, w = fit_long_side(height, width, long_side)
    if min(h, w) < min_side:
        h, w = fit_long_side(height, width, math.ceil(long_side * min_side / min(h, w)))
    return h, w


def scale_sizes(cfg: Config, height: int, width: int) -> list[tuple[int, int]]:
    """The (h, w) of every scale for a ``height`` x ``width`` content image."""
    return [fit_long_side(height, width, s) for s in cfg.schedule.all_scales]


def stylize_batch(vgg: vgg19.VGG, contents: Array, styles: Sequence[Array],
                  cfg: Config | Sequence[Config],
                  init_image: Array | None = None, start: Start | None = None,
                  on_progress: Callable[[Progress], None] | None = None,
                  every: tuple[int, ...] = (),
                  to_host: Callable[[Array], np.ndarray] = np.asarray,
                  guidance: guidance_lib.Guidance | None = None,
                  temporal: dict | None = None, bucket: bool = False,
                  on_scale: Callable[[int, int, int], None] | None = None,
                  sequential: bool | None = None) -> Result:
    """Stylizes P content images of one size with the same styles, each its own problem.

    Args:
      vgg: the network (`vgg19.load`); its pooling is overridden by ``cfg.network.pooling``.
      contents: float32[P, H, W, 3] in [0, 1].
      styles: one float32[Hs, Ws, 3] in [0, 1] per style image (sizes may differ).
      cfg: the configuration, or one per problem (a sweep). Those may differ only in
        `config.SWEEPABLE` settings: each problem then has its own loss weights, style blend, step
        size and start, as runtime arrays of the same compiled program.
      init_image: float32[Hi, Wi, 3], for ``cfg.start.init == "image"``.
      start: resume from a `Start` instead of the beginning.
      on_progress: called after every compiled chunk (see `optimize.chunk_boundaries`).
      on_scale: called as ``on_scale(index, height, width)`` when a scale starts, before its
        programs are made (a progress bar says that it compiles).
      every: iteration periods at which ``on_progress`` must be called (progress, snapshots).
      to_host: fetches a result array (the batch runner gathers across hosts with it).
      guidance: where each style goes (`guidance.from_masks` / `from_maps`); None: everywhere.
        Its masks are resized to every scale and style layer once per scale.
      temporal: a film's frame (`jaxstyle.video`): {"image": float32[P, H, W, 3], the previous
        stylized frame warped onto this one, "mask": float32[P, H, W, 1], "weight": float} adds
        `losses.temporal_loss` (resized to every scale); None: a still image.
      bucket: run each scale on its shape bucket (`jaxstyle.buckets`): the image padded to a
        compiled shape that photos of other aspect ratios share, the padding excluded from the
        loss and cropped from the result. Not with guidance or a film's frame.
      sequential: problems one after another or vmapped (`problems.over_problems`); None: the
        backend's choice (`problems.sequential_problems`).

    Returns:
      `Result` at the last scale's size.
    """
    contents = jnp.asarray(contents, jnp.float32)
    num_problems, height, width, _ = contents.shape
    # Weights and step sizes are always per problem (runtime arrays), whether the configs differ
    # (a sweep) or not: one program for one image, a batch and every batch of a sweep.
    cfgs = (cfg,) * num_problems if isinstance(cfg, Config) else tuple(cfg)
    if len(cfgs) != num_problems:
        raise ValueError(f"{len(cfgs)} configs for {num_problems} content images")
    check_sweep(cfgs)
    cfg = cfgs[0]  # every setting but the sweepable ones is the same for all problems
    schedule, dtype = cfg.schedule, cfg.network.compute_dtype
    vgg = vgg.with_pooling(cfg.network.pooling)
    spec = losses.LossSpec.from_config(cfg)
    vgg = optimize.prepared(vgg, spec)  # once; an unprepared vgg is also checked for the weights
    # Learning rates as runtime step scales.
    method = dataclasses.replace(optimize.Method.from_config(cfg), learning_rate=1.0)
    step_scale = np.asarray([c.optimizer.step_size for c in cfgs], np.float32)
    sizes = scale_sizes(cfg, height, width)
    if sequential is None:
        sequential = problems.sequential_problems(contents, cfg.optimizer.exact_batch)
    if cfg.loss.color_match:
        if num_problems != 1:
            raise ConfigError("colour matching recolours the styles to one content image; run "
                              "one content image at a time with it")
        content_host = np.asarray(contents[0])
        styles = [match_colors(np.asarray(s), content_host) for s in styles]
    if guidance is not None and cfg.loss.style_loss != "gram":
        raise ConfigError("masks and maps guide Gram matrices; "
                          f"Config.style_loss={cfg.loss.style_loss} cannot take them yet: drop one "
                          "of them")
    if guidance is not None and len(guidance.style_masks) != len(styles):
        raise ConfigError(f"the guidance has {len(guidance.style_masks)} style entries for "
                          f"{len(styles)} style images")
    first_scale = start.scale_index if start else 0
    min_side = vgg19.min_input_side(spec.layers)
    state = None
    previous = None  # a bucketed scale's photo size
    fill = buckets.fill_color(vgg.preprocessing)
    bucketed = bucket and guidance is None and temporal is None
    photos, photo_size = contents, (height, width)
    # A portrait runs as the landscape it transposes to, on the landscape's programs: the image
    # and its inputs transposed, the network's kernels too (`buckets.transposed_network`; the
    # styles keep the network as it is: their Grams do not depend on the photo's orientation).
    flip = bucketed and buckets.runs_transposed(height, width)
    net = vgg
    if flip:
        contents, net = buckets.transpose(contents), buckets.transposed_network(vgg)
        height, width = width, height
        sizes = [(w, h) for h, w in sizes]
    for index in range(first_scale, len(sizes)):
        h, w = sizes[index]
        if min(h, w) < min_side and schedule.scales is None and index < len(sizes) - 1:
            continue  # a pyramid's coarse scale too small for a panorama: start finer
        photo_hw = (w, h) if flip else (h, w)  # this scale's size in the photo's orientation
        if min(h, w) < min_side:
            raise ConfigError(
                f"a {photo_size[1]}x{photo_size[0]} content image at {max(h, w)} px is "
                f"{photo_hw[1]}x{photo_hw[0]}, too small for layer {spec.layers[-1]} (needs "
                f"{min_side} px on the short side); raise the size")
        if on_scale is not None:
            on_scale(index, *photo_hw)
        padded = buckets.bucket_shape(h, w) if bucketed else (h, w)
        valid = None
        style_long = max(min_side, round(cfg.loss.style_scale * max(h, w)))
        if bucketed:  # masks even where nothing is padded: one program for the whole bucket
            # Resized and padded on the host: no program of the photo's own shape.
            scaled = buckets.refit(contents, (height, width), (h, w), padded, fill)
            valid = buckets.valid_masks((h, w), padded, spec.layers, num_problems)
            scaled_styles = [jnp.asarray(buckets.resize(
                s, *style_size(s.shape[0], s.shape[1], style_long, min_side)))
                for s in map(lambda s: np.asarray(s, np.float32), styles)]
        else:
            scaled = unpadded = resize(contents, h, w)
            scaled_styles = [resize(s, *style_size(s.shape[0], s.shape[1], style_long, min_side))
                             for s in map(lambda s: jnp.asarray(s, jnp.float32), styles)]

        def blended_targets(blend: tuple[float, ...]) -> losses.Targets:
            blend = np.asarray(blend, np.float32)
            if bucketed:
                return losses.Targets(
                    content=run_targets.bucket_content(net, scaled, spec, dtype, sequential, valid),
                    style=run_targets.style(vgg, scaled_styles, blend, spec, dtype))
            if guidance is None:
                return run_targets.plain(vgg, scaled, scaled_styles, blend, spec, dtype,
                                sequential, valid)
            return run_targets.guided(
                vgg, scaled, scaled_styles,
                [None if m is None else guidance_lib.layer_masks(m, *st.shape[:2],
                                                                 spec.style_layers)
                 for m, st in zip(guidance.style_masks, scaled_styles)],
                jnp.asarray(guidance.region_styles, jnp.float32),
                guidance_lib.layer_masks(guidance.content_masks, h, w, spec.style_layers),
                spec, dtype, sequential)

        # Targets once per distinct style blend; each problem takes its own blend's style target.
        blends = [c.loss.blend_weights(len(styles)) for c in cfgs]
        by_blend = {b: blended_targets(b) for b in dict.fromkeys(blends)}
        targets = by_blend[blends[0]]
        if len(by_blend) > 1:
            targets = dataclasses.replace(targets, style={
                k: jnp.concatenate([by_blend[b].style[k] for b in blends])
                for k in spec.style_layers})
        if valid is not None:
            targets = dataclasses.replace(targets, valid=valid)
        run_spec, problem_targets = run_targets.scaled_spec(
            losses.LossSpec.stack([losses.LossSpec.from_config(c) for c in cfgs]), targets,
            scaled, cfg.loss.loss_scale == "relative", sequential)
        if temporal is not None:
            with_temporal, run_spec = _with_temporal(targets, run_spec, temporal, h, w)
            problem_targets = dataclasses.replace(problem_targets, temporal={
                k: v[:, None] for k, v in with_temporal.temporal.items()})
        targets = problem_targets
        if state is not None:
            images = (resize(optimize.result_images(state), h, w) if previous is None else
                      buckets.refit(optimize.result_images(state), previous, (h, w), padded,
                                    fill))
        elif start is not None and bucketed:  # the photo's orientation, any size
            resumed = np.asarray(start.images, np.float32)
            resumed = resumed.swapaxes(1, 2) if flip else resumed
            images = buckets.like(buckets.pad_host(buckets.resize(resumed, h, w), *padded, fill),
                                  contents)
        elif start is not None:
            images = resize(jnp.asarray(start.images, jnp.float32), h, w)
        elif bucketed:
            images = starts.bucket_start(cfgs, scaled, valid["level0"], scaled_styles, init_image,
                                         flip, (h, w), padded, fill)
        else:
            images = (starts.initial_images(cfg, unpadded, scaled_styles, init_image)
                      if len({c.start for c in cfgs}) == 1 else
                      jnp.concatenate([starts.initial_images(c, unpadded[i:i + 1], scaled_styles,
                                                             init_image)
                                       for i, c in enumerate(cfgs)]))
        if images.shape[1:3] != tuple(padded):
            images = buckets.pad(images, *padded, fill)
        previous = (h, w) if bucketed else None
        # A problem that diverged at a coarser scale stays frozen (its last finite image, resized).
        diverged = None if state is None else state.diverged
        # The coarser scale's L-BFGS history goes before this scale's is allocated: the peak
        # memory of a pyramid is its last scale's, not the sum of two.
        state = None
        state = (optimize.init_state(images, method, tracking.Rules.from_config(cfg),
                                     schedule.stop_tolerance, cfg.output.average,
                                     schedule.stop_change)
                 if tracked(cfg)
                 else optimize.init_state(images, method))
        if temporal is not None:  # the terms the loss reports include "temporal"
            state = dataclasses.replace(state, terms={**state.terms,
                                                      "temporal": jnp.zeros_like(state.loss)})
        if diverged is not None:
            state = dataclasses.replace(state, diverged=diverged)
        if start is not None and start.state is not None and index == start.scale_index:
            state = restored_state(state, start.state)
        done = start.iteration if (start and index == start.scale_index) else 0
        report = None
        if on_progress is not None:
            report = lambda s, n, i=index: on_progress(  # noqa: E731
                Progress(i, len(sizes), n, schedule.scale_iterations[i], s, to_host, previous,
                         flip))
        if not np.all(to_host(state.diverged)):
            state = optimize.run(state, schedule.scale_iterations[index], net, targets, run_spec,
                                 method, dtype, every, report, start=done,
                                 step_scale=step_scale, sequential=sequential)
    images = to_host(optimize.result_images(state))
    if previous is not None:  # the padding cropped: the photo's own size
        images = images[:, :previous[0], :previous[1]]
    if flip:  # back to the portrait
        images = np.ascontiguousarray(images.swapaxes(1, 2))
    if cfg.output.original_colors:
        originals = to_host(resize(photos, *images.shape[1:3]))
        images = np.asarray(original_colors(images, originals))
    converged = to_host(state.track.stopped) if state.track is not None else None
    return Result(images=images, diverged=to_host(state.diverged), loss=to_host(state.loss),
                  converged=converged, steps=to_host(state.step))


def restored_state(fresh: optimize.RunState, leaves: Sequence[np.ndarray]) -> optimize.RunState:
    """``fresh`` with a saved state's ``leaves`` (`Start.state`) where they have its structure,
    shapes and dtypes, each laid out as ``fresh``'s; otherwise ``fresh`` itself, with a warning
    (a resume under another optimizer or history length continues from the image alone)."""
    fresh_leaves, treedef = jax.tree_util.tree_flatten(fresh)
    fits = len(leaves) == len(fresh_leaves) and all(
        np.shape(a) == b.shape and np.asarray(a).dtype == b.dtype
        for a, b in zip(leaves, fresh_leaves))
    if not fits:
        warnings.warn("the saved optimizer state does not fit these settings (another optimizer "
                      "or history length?); continuing from the saved image with a fresh one",
                      JaxstyleWarning)
        return fresh
    return jax.tree_util.tree_unflatten(
        treedef, [jax.device_put(np.asarray(a), b.sharding) for a, b in zip(leaves, fresh_leaves)])


def _with_temporal(targets: losses.Targets, spec: losses.LossSpec, temporal: dict, h: int,
                   w: int) -> tuple[losses.Targets, losses.LossSpec]:
    """``targets`` and ``spec`` with the temporal term of a film's frame, at an h x w scale."""
    image = resize(jnp.asarray(temporal["image"], jnp.float32), h, w)
    mask = resize(jnp.asarray(temporal["mask"], jnp.float32), h, w)
    weight = jnp.asarray(temporal["weight"], jnp.float32)
    if spec.per_problem:
        weight = jnp.broadcast_to(weight, spec.tv_weight.shape)
    return (dataclasses.replace(targets, temporal={"image": image, "mask": mask}),
            dataclasses.replace(spec, temporal_weight=weight))


def stylize(vgg: vgg19.VGG, content: Array, styles: Sequence[Array], cfg: Config = Config(),
            **kwargs) -> np.ndarray:
    """One image: content float32[H, W, 3] in [0, 1] -> float32[h, w, 3] (see `stylize_batch`)."""
    return stylize_batch(vgg, jnp.asarray(content)[None], styles, cfg, **kwargs).images[0]
