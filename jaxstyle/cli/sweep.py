"""``jaxstyle stylize ... --sweep NAME=V1,V2 [--sweep ...]``: every combination of the settings as one
batched, compiled run (`jaxstyle.sweep`), written as a labelled contact sheet at ``-o``, one image
per cell (``OUT-1.png`` …) and ``OUT.json`` (the cells' files and settings, in the sheet's order).
The flags' values (`sweep_axis`) and the sweep's `pipeline.Job` (`sweep_job`)."""

from __future__ import annotations

import argparse
import math
import typing
from pathlib import Path

from jaxstyle import image_io
from jaxstyle import sweep as sweep_lib
from jaxstyle.cli.common import warn
from jaxstyle.cli.inputs import check_guidance_flags, guidance_inputs
from jaxstyle.cli.pipeline import Job, Problem, Sheet
from jaxstyle.config import INITS, SWEEPABLE, Config, field_type
from jaxstyle.errors import JaxstyleError


def _finite(text: str) -> float:
    """A float that is a number: NaN and infinities would run, and end as non-JSON in OUT.json."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    return value


def _weights(text: str) -> tuple[float, ...]:
    return tuple(_finite(x) for x in text.split(":"))


def _init(text: str) -> str:
    if text not in INITS:
        raise ValueError(text)
    return text


def _value_parser(field: str):
    """How one swept value of ``field`` is read, from its type in `Config`: a choice, an int, a
    tuple of numbers (colon-separated), or a finite float."""
    hint = field_type(field)
    kinds = set(typing.get_args(hint)) - {type(None)} or {hint}
    if typing.get_origin(hint) is typing.Literal:
        return _init
    if any(typing.get_origin(k) is tuple for k in kinds):
        return _weights
    return int if kinds == {int} else _finite


# Flag name -> (Config field, parser of one value), for every field `config.SWEEPABLE` names: the
# sweepable set is the config's, never a second list here.
SWEEP_FLAGS = {field.replace("_", "-"): (field, _value_parser(field)) for field in SWEEPABLE}
# More cells than this get a warning with their number before any work (a 100x100 sweep is
# 10,000 runs): a sweep costs about its cell count times one run.
LARGE_SWEEP = 64
SHAPE_FLAGS = ("image-size", "scales", "content-layers", "style-layers", "style-scale", "style-size",
               "optimizer", "lbfgs-memory", "normalization", "pooling", "compute-dtype",
               "num-iterations", "original-colors")


def sweep_axis(text: str) -> tuple[str, tuple]:
    """A flag type: ``NAME=V1,V2,...`` -> (flag name, values); a value of several numbers (layer or
    blend weights) separates them with colons: ``style-blend-weights=1:3,3:1``."""
    name, eq, values = text.partition("=")
    name = name.strip().removeprefix("--")
    if not eq or not values.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=V1,V2,..., got {text!r}")
    if name in SHAPE_FLAGS:
        raise argparse.ArgumentTypeError(
            f"cannot sweep {name}: it changes the compiled program (shapes, layers or optimizer); "
            f"run one command per value. Sweepable: {', '.join(SWEEP_FLAGS)}")
    if name not in SWEEP_FLAGS:
        raise argparse.ArgumentTypeError(f"unknown sweep setting {name!r}; sweepable: "
                                         f"{', '.join(SWEEP_FLAGS)}")
    parse = SWEEP_FLAGS[name][1]
    try:
        return name, tuple(parse(v.strip()) for v in values.split(",") if v.strip())
    except ValueError as e:
        why = f" ({e})" if "finite" in str(e) else ""
        raise argparse.ArgumentTypeError(f"bad value in --sweep {text!r}{why}") from None


def _show(value) -> str:
    if isinstance(value, tuple):
        return ":".join(f"{v:g}" for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def cell_paths(output: Path, count: int) -> list[Path]:
    return [output.with_name(f"{output.stem}-{i + 1}{output.suffix}") for i in range(count)]


def sweep_job(args: argparse.Namespace, cfg: Config) -> Job:
    """One content image under every combination of ``args.sweep``: one problem per cell, each
    written to ``OUT-<k>``, with the labelled sheet at ``-o`` and the index ``OUT.json``."""
    if len(args.content) != 1 or Path(args.content[0]).is_dir() or args.all_pairs:
        raise JaxstyleError("--sweep takes one content image (and no --all-pairs)")
    if args.resume or args.gif:
        raise JaxstyleError("--resume and --gif do not apply to a sweep; drop them")
    names = [name for name, _ in args.sweep]
    if len(set(names)) != len(names):
        raise JaxstyleError("each setting may be swept once; put all its values in one --sweep")
    axes = {SWEEP_FLAGS[name][0]: values for name, values in args.sweep}
    loss_weights = ("content_weight", "style_weight", "tv_weight")
    if cfg.loss.loss_scale == "relative" and set(loss_weights) & set(axes):
        # Sweeping a loss weight gives it, as its flag would: neural-style's absolute weights, so
        # that each cell equals the same flags run alone.
        default = Config().flat()
        cfg = cfg.replace(loss_scale="absolute", **{k: default[k] for k in loss_weights})
    cells = sweep_lib.grid(cfg, axes)
    if len(cells) > LARGE_SWEEP:
        sizes = " x ".join(str(len(values)) for _, values in args.sweep)
        warn(f"--sweep runs {len(cells)} cells ({sizes}), about {len(cells)} times the work of one "
             "run")
    check_guidance_flags(args, cfg, has_content=True)
    if "style_blend_weights" in axes and (args.style_masks or args.content_map):
        raise JaxstyleError("with masks or maps each style has its own area, so there is no blend "
                            "to sweep; drop --sweep style-blend-weights or the masks")
    content = Path(args.content[0])
    inputs = [content, *map(Path, args.style), *([Path(args.init_image)] if args.init_image else []),
              *map(Path, guidance_inputs(args))]
    output = image_io.check_output_path(args.output, inputs, args.bit_depth)
    files = cell_paths(output, len(cells))
    for f in files:
        image_io.check_output_path(f, inputs)
    index = output.with_suffix(".json")
    image_io.check_output_path(index.with_suffix(".png"), inputs)  # same directory, writable
    labels = tuple(tuple(f"{name}={_show(v)}" for name, v in zip(names, settings.values()))
                   for settings, _ in cells)
    listing = tuple({"file": f.name, "settings": {name: (list(v) if isinstance(v, tuple) else v)
                                                  for name, v in zip(names, settings.values())}}
                    for f, (settings, _) in zip(files, cells))
    problems = tuple(Problem(content, 0, cell, f, " ".join(label))
                     for (_, cell), f, label in zip(cells, files, labels))
    return Job("sweep", problems, (tuple(map(Path, args.style)),), "content image",
               Path(args.init_image) if args.init_image else None, tuple(inputs),
               Sheet(output, labels, index, listing), swept=dict(args.sweep))
