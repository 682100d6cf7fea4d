"""One pipeline for every way ``jaxstyle stylize`` runs: one image, a folder, a sweep.

    flags ──> Job ──> load_inputs ──> run_job ──────────────> Outcome ──> write_outputs
      (cli.jobs,      (every file     (the library: one        (results, or          (the one place
       cli.sweep)      read once)      image, a batch, a        the latest images     results become
                                       sweep)                   after Ctrl-C)         files)
                                          │ Event after each compiled chunk
                                          ▼
                                       observers (`cli.observers`): progress bar, snapshots and
                                       resume checkpoints, GIF frames, logs and the live page

A `Job` names every problem (one output image each: its content file, styles, config and
output path); `Inputs` holds the arrays; `run_job` reports one `Event` per compiled chunk to
every `Observer` and stops at the next chunk after Ctrl-C.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np

from jaxstyle import batch, image_io, memory, spatial, tiles
from jaxstyle import stylize as stylize_lib
from jaxstyle import sweep as sweep_lib
from jaxstyle.config import Config
from jaxstyle.guidance import Guidance
from jaxstyle.models import vgg19

Kind = Literal["one", "many", "sweep"]


@dataclasses.dataclass(frozen=True)
class Problem:
    """One output image: made from ``content`` (a file; a doodle's content map) with the style
    images of ``group``, under ``cfg``, written to ``output``; ``name`` is how logs and the live
    page call it."""

    content: Path
    group: int
    cfg: Config
    output: Path
    name: str


@dataclasses.dataclass(frozen=True)
class Sheet:
    """A sweep's extra outputs: the labelled contact sheet and the JSON index of its cells."""

    path: Path
    labels: tuple[tuple[str, ...], ...]
    index: Path
    listing: tuple[dict, ...]


@dataclasses.dataclass(frozen=True)
class Job:
    """What one command makes.

    kind: "one" (one content image: snapshots, GIF and resume apply), "many" (each content image
      with each style group, batched), "sweep" (one content image under each problem's config).
    problems: in run order ("many": group by group, contents in order within a group).
    groups: the style files of each group (one group of all styles, blended; or one per style
      with ``--all-pairs``).
    content_role: what the content files are ("content image", or "content map" for a doodle).
    init_image: the start image's file, for ``init == "image"``.
    inputs: every file the job reads (no output may overwrite one).
    sheet: a sweep's contact sheet and index; swept: its axes as given (flag -> values), logged.
    skipped: content files of a folder that could not be read (their problems are gone).
    plan: how one image fits memory (`memory.plan`): None or mode "one" runs it as usual; mode
      "devices" splits its rows over the devices (`jaxstyle.spatial`), "tiles" runs it in tiles
      on one device (`jaxstyle.tiles`): both run every iteration (no early stop) without
      per-chunk events, so the progress bar moves once at the end and Ctrl-C takes effect then.
    """

    kind: Kind
    problems: tuple[Problem, ...]
    groups: tuple[tuple[Path, ...], ...]
    content_role: str = "content image"
    init_image: Path | None = None
    inputs: tuple[Path, ...] = ()
    sheet: Sheet | None = None
    swept: dict | None = None
    skipped: tuple[Path, ...] = ()
    plan: memory.Plan | None = None

    @property
    def cfg(self) -> Config:
        """The settings every problem shares (a sweep's cells differ only in sweepable ones)."""
        return self.problems[0].cfg

    def without(self, contents: Sequence[Path]) -> "Job":
        """The job without the problems made from ``contents`` (files that could not be read)."""
        gone = set(contents)
        return dataclasses.replace(
            self, problems=tuple(p for p in self.problems if p.content not in gone))


@dataclasses.dataclass(frozen=True)
class Inputs:
    """Every array a job runs on, each file loaded once (resized to the run's final scale).

    contents: float32[H, W, 3] per content file; styles: float32[Hs, Ws, 3] per style file;
    guidance: where each style goes (masks or maps), or None; init_image: float32[Hi, Wi, 3] or
    None; start: a resumed run's `stylize.Start`, or None; made_from: the resume record of the
    images (`resume.inputs_record`), for checkpoints.
    """

    contents: dict[Path, np.ndarray]
    styles: dict[Path, np.ndarray]
    guidance: Guidance | None = None
    init_image: np.ndarray | None = None
    start: stylize_lib.Start | None = None
    made_from: dict | None = None


@dataclasses.dataclass(frozen=True)
class Event:
    """After one compiled chunk: ``progress`` for the problems ``problems`` (job indices of its
    state's first rows; the rows after them are padding), ``done`` of ``total`` iterations of
    the whole job (every problem's, the cap at each scale)."""

    progress: stylize_lib.Progress
    problems: tuple[int, ...]
    done: int
    total: int


@dataclasses.dataclass(frozen=True)
class Latest:
    """A problem's latest image as the user gets it (float32[h, w, 3], original colours applied
    where asked), the image the optimizer holds (``optimized``: what a resume starts from), and
    where its run was."""

    image: np.ndarray
    optimized: np.ndarray
    scale_index: int
    iteration: int


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How a job ended: ``results`` (one `stylize.Result` per problem) when it finished;
    otherwise ``interrupted`` (Ctrl-C) or ``error`` (out of memory), with ``latest``: each
    started problem's latest image. ``written``: the image files written for the problems."""

    results: list[stylize_lib.Result] | None
    latest: dict[int, Latest]
    interrupted: bool = False
    error: BaseException | None = None
    written: tuple[Path, ...] = ()


class Observer:
    """A side effect of a run, told about it as it goes. ``every``: the iteration periods at
    which it needs an `Event` (the library ends a compiled chunk there)."""

    every: tuple[int, ...] = ()

    def scale(self, index: int, height: int, width: int) -> None:
        """A scale of the run starts: its programs are made (compiled, or loaded from the cache)."""

    def chunk(self, event: Event, latest: dict[int, Latest]) -> None:
        """A compiled chunk ended; ``latest`` holds every started problem's latest image."""

    def end(self, outcome: Outcome) -> None:
        """The run ended (finished, interrupted or out of memory); its images are written."""


class StopRequested(KeyboardInterrupt):
    """Ctrl-C, acted on between compiled chunks."""


def finish_image(image: np.ndarray, content: np.ndarray, cfg: Config) -> np.ndarray:
    """A result as the user gets it: with the content's colours under ``original_colors``."""
    return image_io.original_colors(image, content) if cfg.output.original_colors else image


def run_job(vgg: vgg19.VGG, job: Job, inputs: Inputs, outputs: "Outputs",
            observers: Sequence[Observer], stop_requested: Callable[[], bool] = lambda: False,
            batch_size: int = 4,
            is_out_of_memory: Callable[[BaseException], bool] = lambda e: False) -> Outcome:
    """Runs ``job`` on ``inputs`` with the library, telling ``observers`` after each chunk, then
    writes its images with ``outputs`` and tells the observers it ended.

    Returns the results, or after Ctrl-C (``stop_requested()`` true at a chunk's end, or a
    KeyboardInterrupt) or an error ``is_out_of_memory`` accepts, each started problem's latest
    image (written in the results' place). Any other error propagates."""
    latest: dict[int, Latest] = {}
    every = tuple(sorted({k for o in observers for k in o.every if k}))
    total = len(job.problems) * job.cfg.schedule.total_iterations

    def report(progress: stylize_lib.Progress, problems: Sequence[int], done: int) -> None:
        images = progress.images
        for row, index in enumerate(problems):
            problem = job.problems[index]
            image = images[row]
            latest[index] = Latest(finish_image(image, inputs.contents[problem.content],
                                                problem.cfg),
                                   image, progress.scale_index, progress.iteration)
        event = Event(progress, tuple(problems), done, total)
        for observer in observers:
            observer.chunk(event, latest)
        if stop_requested():
            raise StopRequested

    def on_scale(index: int, height: int, width: int) -> None:
        for observer in observers:
            observer.scale(index, height, width)

    try:
        if stop_requested():  # Ctrl-C while loading
            raise StopRequested
        results = _run(vgg, job, inputs, report, on_scale, every, batch_size)
    except KeyboardInterrupt:
        outcome = Outcome(None, latest, interrupted=True)
    except Exception as e:
        if not is_out_of_memory(e):
            raise
        outcome = Outcome(None, latest, error=e)
    else:
        outcome = Outcome(results, latest)
    outcome = dataclasses.replace(outcome, written=tuple(outputs.results(outcome)))
    for observer in observers:
        observer.end(outcome)
    return outcome


def _run(vgg, job: Job, inputs: Inputs, report, on_scale, every, batch_size
         ) -> list[stylize_lib.Result]:
    """The library call for the job's kind; ``report(progress, problems, done)`` per chunk."""
    cfg = job.cfg
    per_problem = cfg.schedule.total_iterations
    styles = [[inputs.styles[s] for s in group] for group in job.groups]

    def step(p: stylize_lib.Progress) -> int:
        return cfg.schedule.iterations_before(p.scale_index) + p.iteration

    if job.kind == "one" and job.plan is not None and job.plan.mode != "one":
        return [_planned(vgg, job, inputs, styles[0])]
    if job.kind == "one":
        problem = job.problems[0]
        result = stylize_lib.stylize_batch(
            vgg, inputs.contents[problem.content][None], styles[problem.group], cfg,
            init_image=inputs.init_image, start=inputs.start,
            on_progress=lambda p: report(p, (0,), step(p)), every=every,
            guidance=inputs.guidance, bucket=True, on_scale=on_scale)
        return [result]
    if job.kind == "sweep":
        content = inputs.contents[job.problems[0].content]

        def on_cells(p: sweep_lib.SweepProgress) -> None:
            report(p.progress, range(p.first, p.first + p.count),
                   p.first * per_problem + p.count * step(p.progress))  # earlier cells are done
        return sweep_lib.stylize_sweep(vgg, content, styles[0], [p.cfg for p in job.problems],
                                       batch_size=batch_size, init_image=inputs.init_image,
                                       on_progress=on_cells, every=every,
                                       guidance=inputs.guidance, bucket=True)
    results: list[stylize_lib.Result] = []
    for group, group_styles in enumerate(styles):
        indices = [i for i, p in enumerate(job.problems) if p.group == group]
        first = len(results)

        def on_batch(p: batch.BatchProgress, indices=indices, first=first) -> None:
            report(p.progress, [indices[k] for k in p.problems], first * per_problem + p.done)
        results += batch.stylize_many(
            vgg, [inputs.contents[job.problems[i].content] for i in indices], group_styles, cfg,
            batch_size=batch_size, on_progress=on_batch, every=every,
            init_image=inputs.init_image, bucket=True)
    return results


def _planned(vgg, job: Job, inputs: Inputs, styles: list[np.ndarray]) -> stylize_lib.Result:
    """One image too large for one device's memory, as its plan says: rows split over the
    devices, or tiles on one."""
    cfg, content = job.cfg, inputs.contents[job.problems[0].content]
    if job.plan.mode == "devices":
        image, loss = spatial.stylize(vgg, content, styles, cfg)
    else:
        image = tiles.stylize(vgg, content, styles, cfg, size=job.plan.tile)
        loss = np.nan  # not evaluated on the whole image
    if image.shape[:2] != content.shape[:2]:  # spatial rounds the height to whole rows per device
        image = image_io.resize(image, *content.shape[:2])
    return stylize_lib.Result(images=image[None], diverged=np.asarray([not np.isfinite(image).all()]),
                              loss=np.asarray([loss], np.float32))


# ----------------------------------------------------------------------------------------------
# Outputs: the one place images become files.


class Outputs:
    """Writes a job's files, each atomically, never over an input: every image a run writes
    (results, snapshots, GIF frames, a sweep's sheet) goes through here."""

    def __init__(self, job: Job, bit_depth: int = 8):
        self.job, self.bit_depth = job, bit_depth

    def image(self, image: np.ndarray, path: Path) -> Path:
        return image_io.save_image(image, path, self.job.inputs, self.bit_depth)

    def animation(self, frames: Sequence[np.ndarray], path: Path) -> Path:
        """An animated GIF (.gif) or, for any other extension, the frames side by side."""
        size = frames[-1].shape[:2]
        frames = [f if f.shape[:2] == size else image_io.resize(f, *size) for f in frames]
        if path.suffix.lower() == ".gif":
            return image_io.save_gif(frames, path, inputs=self.job.inputs)
        return image_io.save_strip(frames, path, inputs=self.job.inputs)

    def results(self, outcome: Outcome) -> list[Path]:
        """Every problem's image: its result, or after Ctrl-C or an error its latest image
        (problems not started write nothing); a finished sweep's sheet and index too."""
        written = []
        if outcome.results is not None:
            images = [r.images[0] for r in outcome.results]
            for problem, image in zip(self.job.problems, images):
                written.append(self.image(image, problem.output))
            sheet = self.job.sheet
            if sheet is not None:
                from jaxstyle.sheet import contact_sheet

                self.image(contact_sheet(images, [list(lbl) for lbl in sheet.labels]), sheet.path)
                _write_json(sheet.index, list(sheet.listing))
            return written
        for index, latest in sorted(outcome.latest.items()):
            written.append(self.image(latest.image, self.job.problems[index].output))
        return written


def _write_json(path: Path, value) -> None:
    import json

    from jaxstyle.files import atomic_write

    atomic_write(path, lambda fh: fh.write((json.dumps(value, indent=1) + "\n").encode()))
