"""What a ``jaxstyle stylize`` command makes, decided before any work: its `pipeline.Job` (one
image, or a folder; a sweep's is `cli.sweep.sweep_job`) with every output checked, the memory it
needs, and `load_inputs`, which reads every file the job names once."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import jax

from jaxstyle import image_io, memory
from jaxstyle.cli import resume
from jaxstyle.cli.common import available_memory, warn
from jaxstyle.cli.inputs import GUIDANCE_FLAGS, check_guidance_flags, guidance_inputs, load_guidance
from jaxstyle.cli.observers import snapshot_paths
from jaxstyle.cli.pipeline import Inputs, Job, Problem
from jaxstyle.config import Config
from jaxstyle.errors import JaxstyleError
from jaxstyle.files import check_outputs
from jaxstyle.imageops import fit_long_side


def output_path(outdir: Path, content: Path, style: Path | None, suffix: str = ".png") -> Path:
    """``outdir/<content stem>.png``, or ``outdir/<content stem>__<style stem>.png`` per pair."""
    name = content.stem if style is None else f"{content.stem}__{style.stem}"
    return outdir / f"{name}{suffix}"


def is_many(args: argparse.Namespace) -> bool:
    """Whether the content arguments name several images (a list, a folder, or --all-pairs)."""
    contents = [Path(c) for c in args.content]
    return len(contents) > 1 or (bool(contents) and contents[0].is_dir()) or args.all_pairs


def one_image_job(args: argparse.Namespace, cfg: Config) -> Job:
    """One content image (or a doodle painted from ``--content-map``) into ``-o``, with its
    snapshots, GIF and checkpoint checked against the inputs and each other."""
    contents = [Path(c) for c in args.content]
    check_guidance_flags(args, cfg, has_content=bool(contents))
    role = "content image"
    if contents:
        content = contents[0]
    else:  # painting a doodle: the map gives the output's size; there is no content term
        content, role = Path(args.content_map), "content map"
        cfg = cfg.replace(content_weight=0.0)
    output = Path(args.output)
    if contents and image_io.is_folder(args.output):  # one content into a folder: <stem>.png
        output = output_path(output, content, None)
    inputs = [*contents, *map(Path, args.style), *_optional(args.init_image),
              *map(Path, guidance_inputs(args)), *_optional(args.weights)]
    output = image_io.check_output_path(output, inputs, args.bit_depth)
    targets: dict[str, Path] = {"-o": output}
    if args.gif:
        targets["--gif"] = image_io.check_output_path(args.gif, inputs)
    targets["the resume checkpoint"] = resume.checkpoint_path(output)
    for path in snapshot_paths(output, cfg, args.save_iter):
        targets[f"a --save-iter snapshot ({path.name})"] = path
    check_outputs(targets, inputs)
    return Job("one", (Problem(content, 0, cfg, output, content.stem),),
               (tuple(map(Path, args.style)),), role, _path(args.init_image), tuple(inputs))


def many_images_job(args: argparse.Namespace, cfg: Config) -> Job:
    """Several content images (files and folders) into the directory ``-o``: each with the
    styles blended, or with ``--all-pairs`` with each style alone."""
    contents = image_io.collect_images(args.content)
    if not contents:
        raise JaxstyleError(f"no images found in {', '.join(args.content)}; give image files or "
                            "folders that hold some")
    outdir = Path(args.output)
    if outdir.suffix.lower() in image_io.OUTPUT_FORMATS:
        raise JaxstyleError(f"several content images need an output directory, not '{outdir}'; "
                            "use e.g. -o stylized/")
    if args.resume or args.gif:
        raise JaxstyleError("--resume and --gif apply to one content image; drop them for a batch")
    if args.save_iter and not args.log_dir:
        raise JaxstyleError("--save-iter writes snapshots of one content image; with several it "
                            "only sets how often --log-dir logs images: drop it or add --log-dir")
    given = [f"--{f.replace('_', '-')}" for f in (*GUIDANCE_FLAGS, "color_match") if getattr(args, f)]
    if given:
        raise JaxstyleError(f"{', '.join(given)} work on one content image at a time (its masks "
                            "and colours are its own); run each content image separately")
    styles = tuple(Path(s) for s in args.style)
    pairs = [(s, (s,)) for s in styles] if args.all_pairs else [(None, styles)]
    inputs = [*contents, *styles, *_optional(args.init_image), *_optional(args.weights)]
    # Same-stem inputs would overwrite each other's output: refused before any work.
    check_outputs({f"'{c}'" + (f" with '{s}'" if s else ""): output_path(outdir, c, s)
                   for c in contents for s, _ in pairs}, inputs)
    problems = tuple(Problem(c, group, cfg, output_path(outdir, c, s), output_path(outdir, c, s).stem)
                     for group, (s, _) in enumerate(pairs) for c in contents)
    return Job("many", problems, tuple(group for _, group in pairs), "content image",
               _path(args.init_image), tuple(inputs))


def check_memory(cfg: Config, height: int, width: int, problems: int = 1,
                 num_styles: int = 1, max_memory: int | None = None,
                 modes: tuple[str, ...] = ("one",)) -> memory.Plan:
    """How the run fits this host's (or each device's) memory (capped at ``max_memory`` bytes:
    ``--max-memory``), among ``modes``; a one-line error before any work when it cannot. The plan's
    one line is printed when it is not the plain one-device run, or with ``--max-memory``."""
    available, where = available_memory()
    chosen = memory.plan(cfg, height, width, available, where, devices=len(jax.devices()),
                         problems=problems, num_styles=num_styles, max_memory=max_memory,
                         modes=modes)
    if max_memory is not None or chosen.mode != "one":
        print(f"jaxstyle: {chosen.line(width, height)}", file=sys.stderr)
    return chosen


def memory_modes(job: Job, has_guidance: bool) -> tuple[str, ...]:
    """The plans a job can run: one image may have its rows split over several devices
    (`jaxstyle.spatial`) or run in tiles (`jaxstyle.tiles`) when it fits neither; those two run
    a subset of the settings (see `pipeline.PLANNED`), so they are offered only for it."""
    cfg = job.cfg
    # Both run every iteration (no early stop) and return the last iterate.
    if (job.kind != "one" or has_guidance or cfg.start.init == "image" or cfg.output.average > 0
            or cfg.output.keep_best or cfg.output.original_colors or cfg.loss.color_match):
        return ("one",)
    modes = ["one", "devices"]
    if (cfg.optimizer.name == "adam" and cfg.loss.loss_scale == "absolute"
            and cfg.loss.style_loss == "gram" and len(cfg.schedule.all_scales) == 1
            and cfg.start.init in ("content", "noise")):
        modes.append("tiles")
    return tuple(modes)


def check_job_memory(job: Job, batch_size: int, max_memory: int | None,
                     has_guidance: bool = False) -> Job:
    """`check_memory` for the job, from the files' headers (before loading them): the job with
    the plan it runs under."""
    cfg = job.cfg
    long_side = max(cfg.schedule.all_scales)
    if job.kind == "many":  # the worst case, a square image, in full batches
        check_memory(cfg, long_side, long_side, min(batch_size, len(job.problems)),
                     max(len(g) for g in job.groups), max_memory=max_memory)
        return job
    dims = image_io.image_dimensions(job.problems[0].content)
    if dims is None:
        return job
    size = fit_long_side(*dims, long_side)
    modes = memory_modes(job, has_guidance)
    try:
        chosen = check_memory(cfg, *size, num_styles=len(job.groups[0]), max_memory=max_memory,
                              modes=modes)
    except JaxstyleError as e:
        if "tiles" in modes or job.kind != "one" or has_guidance:
            raise
        # Would tiles fit? They run Adam at one scale with explicit weights: say how.
        tiled = cfg.replace(optimizer="adam", loss_scale="absolute", num_scales=1, scales=None,
                            style_loss="gram")
        available, _ = available_memory()
        try:
            memory.plan(tiled, *size, available, max_memory=max_memory, modes=("tiles",))
        except JaxstyleError:
            raise e from None
        raise JaxstyleError(f"{e}; or run it in tiles on one device: --optimizer adam "
                            "--num-scales 1 and explicit loss weights (e.g. --content-weight 5)"
                            ) from None
    return dataclasses.replace(job, plan=chosen)


def load_inputs(job: Job, args: argparse.Namespace) -> tuple[Job, Inputs]:
    """Reads every file of ``job`` once, resized for its final scale. In a folder job a content
    image that cannot be read (or whose output cannot be written) is skipped with a warning:
    the returned job lacks its problems (JaxstyleError when none is left)."""
    cfg = job.cfg
    long_side = max(cfg.schedule.all_scales)
    style_long = max(16, round(cfg.loss.style_scale * long_side))
    styles = {s: image_io.load_image(s, style_long, role="style image")
              for group in job.groups for s in group}
    contents, skipped = {}, []
    for path in dict.fromkeys(p.content for p in job.problems):
        if job.kind != "many":
            contents[path] = image_io.load_image(path, long_side, role=job.content_role)
            continue
        try:
            contents[path] = image_io.load_image(path, long_side, role=job.content_role)
            for problem in job.problems:
                if problem.content == path:
                    image_io.check_output_path(problem.output, job.inputs, args.bit_depth)
        except JaxstyleError as e:
            skipped.append(path)
            contents.pop(path, None)
            warn(f"skipping {path}: {e}")
    if skipped:
        job = job.without(skipped)
        if not job.problems:
            raise JaxstyleError("every content image was skipped; nothing to do")
        job = dataclasses.replace(job, skipped=tuple(skipped))
    guidance = (load_guidance(args, cfg, long_side, style_long) if job.kind != "many" else None)
    init_image = (image_io.load_image(job.init_image, long_side, role="init image")
                  if job.init_image is not None else None)
    made_from = start = None
    if job.kind == "one":
        problem = job.problems[0]
        made_from = resume.inputs_record([problem.content], [contents[problem.content]],
                                         job.groups[0], [styles[s] for s in job.groups[0]])
        if args.resume:
            start = resume.load(resume.checkpoint_path(problem.output), cfg, made_from,
                                contents[problem.content].shape[:2])
    return job, Inputs(contents, styles, guidance, init_image, start, made_from)


def _optional(path: str | None) -> list[Path]:
    return [] if path is None else [Path(path)]


def _path(path: str | None) -> Path | None:
    return None if path is None else Path(path)
