"""What the masks and semantic-map flags of ``stylize`` (and ``video``) describe: their checks,
and the `guidance.Guidance` loaded from them, shared by one image, a sweep and a film."""

from __future__ import annotations

import argparse

import numpy as np

from jaxstyle import guidance, image_io
from jaxstyle.config import Config
from jaxstyle.errors import JaxstyleError

# A style mask whose mean, at the run's size, is below this (0.5 % of the image fully white)
# selects too little to show its style: one white pixel of a 640x480 mask is 0.03 % at 64 px.
MIN_MASK_COVERAGE = 0.005

GUIDANCE_FLAGS = ("style_masks", "style_region_masks", "content_map", "style_map")


def guidance_inputs(args: argparse.Namespace) -> list[str]:
    """The files the masks/maps flags name (inputs that no output may overwrite)."""
    return [*(args.style_masks or ()), *(args.style_region_masks or ()),
            *([args.content_map] if args.content_map else []), *(args.style_map or ())]


def check_guidance_flags(args: argparse.Namespace, cfg: Config, has_content: bool) -> None:
    """One-line errors for combinations of the masks/maps/colour flags that cannot work."""
    num_styles = len(args.style)
    for flag in ("style_masks", "style_region_masks", "style_map"):
        given = getattr(args, flag)
        if given is not None and len(given) != num_styles:
            raise JaxstyleError(f"{len(given)} --{flag.replace('_', '-')} given for {num_styles} "
                                "style images; give one per style image")
    if bool(args.content_map) != bool(args.style_map):
        raise JaxstyleError("--content-map and --style-map go together: give both (one style map "
                            "per style image)")
    if args.content_map and (args.style_masks or args.style_region_masks):
        raise JaxstyleError("use either semantic maps (--content-map/--style-map) or masks "
                            "(--style-masks/--style-region-masks), not both")
    if (args.style_masks or args.content_map) and cfg.loss.style_loss != "gram":
        raise JaxstyleError("masks and maps guide Gram matrices; --style-loss "
                            f"{cfg.loss.style_loss} cannot take them yet: drop one of them")
    if args.style_masks and args.style_blend_weights:
        raise JaxstyleError("--style-blend-weights blends styles over the same area; with "
                            "--style-masks each style has its own area: drop one of them")
    if not has_content:
        if not args.content_map:
            raise JaxstyleError("no content image: give one, or paint a doodle with "
                                "--content-map MAP --style-map SMAP --init noise")
        if cfg.start.init == "content":
            raise JaxstyleError("no content image to start from: add --init noise (or --init "
                                "style / --init image) to paint the content map")
        if cfg.output.original_colors or cfg.loss.color_match:
            raise JaxstyleError("--original-colors and --color-match take the content image's "
                                "colours; give a content image or drop them")


def load_guidance(args: argparse.Namespace, cfg: Config, long_side: int, style_long: int,
                  ) -> guidance.Guidance | None:
    """The `guidance.Guidance` that the masks/maps flags describe (None without them)."""
    if args.content_map:
        content_map = image_io.load_image(args.content_map, long_side, role="content map")
        style_maps = [image_io.load_image(m, style_long, role="style map") for m in args.style_map]
        return guidance.from_maps(content_map, style_maps, cfg.loss.blend_weights(len(args.style)))
    if not (args.style_masks or args.style_region_masks):
        return None
    masks = None if not args.style_masks else [
        image_io.load_mask(m, long_side, role="style mask") for m in args.style_masks]
    regions = None if not args.style_region_masks else [
        image_io.load_mask(m, style_long, role="style region mask") for m in args.style_region_masks]
    for paths, loaded in ((args.style_masks, masks), (args.style_region_masks, regions)):
        for path, mask in zip(paths or (), loaded or ()):
            check_mask_coverage(path, mask)
    return guidance.from_masks(len(args.style), masks, regions,
                               cfg.loss.blend_weights(len(args.style)))


def check_mask_coverage(path: str, mask: np.ndarray) -> None:
    """A mask that, resized for the run, covers under `MIN_MASK_COVERAGE` of the image selects
    (next to) nothing: a one-line error rather than a run that ignores its style."""
    coverage = float(mask.mean())
    if not coverage >= MIN_MASK_COVERAGE:
        what = "is all black" if not mask.max() > 0 else (
            f"covers {coverage:.2%} of the image at {max(mask.shape)} px (under "
            f"{MIN_MASK_COVERAGE:.1%})")
        raise JaxstyleError(f"mask '{path}' {what}, so it selects (almost) nothing; paint white "
                            "where the style applies")
