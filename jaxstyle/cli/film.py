"""The film pipeline of ``jaxstyle video``: the stylize pipeline's shape (`cli.pipeline`) for a
film that streams through, one frame a segment in memory at a time.

    flags ──> FilmJob ──> Inputs ──────> run_film ──────────────────> FilmOutcome ──> FrameFiles.encode
    (cli.video)          (styles,         step i: frame i of every       (frames stored,    (the film, cross-
                          guidance,       segment, from its previous     or interrupted,    faded where the
                          start image,    frame warped by optical flow   or a broken        segments overlap;
                          read once)      (`jaxstyle.video`)             stream)            the folder removed)
                                            │ per compiled chunk: `pipeline.Event`; per step: `Step`
                                            ▼
                                          observers (the frame bar)
                                            │ each finished frame
                                            ▼
                                          FrameFiles: OUT.frames/, 8-bit PNGs written atomically,
                                          what ``--resume`` continues from

One segment is the whole film in order; several (`video.plan_segments`) run side by side as one
batch, split over the devices. Each frame starts from its segment's stored 8-bit previous frame,
so a resumed run gives the film an uninterrupted one gives.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from fractions import Fraction
from pathlib import Path
from typing import Callable, Sequence

import jax
import numpy as np

from jaxstyle import flow, image_io, video, video_io
from jaxstyle.cli.common import progress_bar
from jaxstyle.cli.pipeline import Event, Inputs, Latest, Observer, StopRequested
from jaxstyle.config import Config
from jaxstyle.errors import JaxstyleError
from jaxstyle.files import atomic_write
from jaxstyle.models import vgg19

FRAMES_SUFFIX = ".frames"
# A film that does not say how many frames it holds: one segment, read until its stream ends.
UNTIL_THE_END = sys.maxsize


@dataclasses.dataclass(frozen=True)
class FilmJob:
    """What one ``jaxstyle video`` makes.

    source: the film (a video file or a folder of frames); output: the film made of it.
    height, width: the output frames' size (even: H.264 needs it); frame_rate: the source's;
      num_frames: as the source says (None: unknown, read to the end: one segment only).
    styles: the style files (their arrays are `Inputs.styles`); cfg: every frame's settings.
    segments: `video.plan_segments`' (one: the whole film).
    temporal_weight: the temporal term's (None: `video.default_temporal_weight`); independent:
      every frame alone, from scratch (per-frame stylization, for comparison); vmap: a device's
      segments vmapped (`video.stylize_frames`); flow_preset: OpenCV DIS's.
    settings: what a resumed run must share with the interrupted one (written beside the frames).
    """

    source: Path
    output: Path
    height: int
    width: int
    frame_rate: Fraction
    num_frames: int | None
    styles: tuple[Path, ...]
    cfg: Config
    segments: tuple[video.Segment, ...]
    temporal_weight: float | None = None
    independent: bool = False
    vmap: bool = False
    flow_preset: str = "medium"
    settings: dict = dataclasses.field(default_factory=dict)

    @property
    def folder(self) -> Path:
        """Where finished frames wait to be encoded (and for ``--resume``)."""
        return Path(str(self.output) + FRAMES_SUFFIX)

    @property
    def work(self) -> int | None:
        """Frames to stylize (each overlap twice), or None for a film of unknown length."""
        return sum(len(s) for s in self.segments) if self.num_frames is not None else None


@dataclasses.dataclass(frozen=True)
class Step:
    """Step ``index`` is stored: frame ``index`` of each segment still running (``frames``: their
    indices in the film), after ``iterations`` each, the first's loss ``loss``; ``done`` of
    ``total`` frames are stored (counting those of an interrupted run; None: unknown)."""

    index: int
    frames: tuple[int, ...]
    iterations: tuple[int, ...]
    loss: float
    done: int
    total: int | None


@dataclasses.dataclass(frozen=True)
class FilmOutcome:
    """How a film's run ended: its ``steps`` (this run's), and ``interrupted`` (Ctrl-C: the
    frames stay in the folder) or ``broken`` (the stream broke: the frames before it are
    encoded); ``written``: frames encoded into the output (0: none, nothing written)."""

    steps: tuple[Step, ...]
    interrupted: bool = False
    broken: video_io.BrokenStream | None = None
    written: int = 0


class FilmObserver(Observer):
    """A side effect of a film's run: a stylize `Observer` (``scale`` and ``chunk`` while a step's
    frames are stylized; ``chunk``'s ``latest`` is empty, frames are stored whole) told after
    each stored step too; ``end`` gets a `FilmOutcome`."""

    def step(self, step: Step) -> None:
        """A step's frames are stored."""


class FrameFiles:
    """A film's outputs, the one place its frames become files: each finished frame an 8-bit PNG
    in ``OUT.frames/`` (``segment_K/`` for several segments), written atomically as it is done;
    at the end the film, encoded from them with the source's frame rate and audio, and the folder
    removed. Nothing is ever written over the source."""

    def __init__(self, job: FilmJob):
        self.job, self.folder = job, job.folder

    def path(self, k: int, index: int) -> Path:
        """Where segment ``k`` stores the film's frame ``index``."""
        if len(self.job.segments) == 1:
            return self.folder / f"frame_{index:06d}.png"
        return self.folder / f"segment_{k:03d}" / f"frame_{index:06d}.png"

    def begin(self, resume: bool) -> int:
        """The steps done: with ``resume``, those every segment stored in the folder an
        interrupted run with the same settings left; else 0, in a new folder (a folder holding
        frames is refused: they are an interrupted run's)."""
        record = self.folder / "settings.json"
        if resume:
            try:
                saved = json.loads(record.read_text())
            except (OSError, ValueError):
                raise JaxstyleError(f"--resume: no finished frames in '{self.folder}' (left by an "
                                    "interrupted run); run without --resume") from None
            if saved != self.job.settings:
                raise JaxstyleError(f"--resume: '{self.folder}' was made with other settings or "
                                    "another input; use the same flags or drop --resume")
            return min(self.finished(k) for k in range(len(self.job.segments)))
        if self.folder.exists() and not self.folder.is_dir():
            raise JaxstyleError(f"'{self.folder}' is a file where the finished frames go; move it")
        if self.folder.is_dir() and any(self.folder.rglob("frame_*.png")):
            raise JaxstyleError(f"'{self.folder}' holds frames of an interrupted run: continue "
                                "it with --resume, or delete it")
        for k in range(len(self.job.segments) if len(self.job.segments) > 1 else 0):
            (self.folder / f"segment_{k:03d}").mkdir(parents=True, exist_ok=True)
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write(record, lambda fh: fh.write(json.dumps(self.job.settings).encode()))
        return 0

    def finished(self, k: int) -> int:
        """Frames segment ``k`` stored, in order from its first."""
        segment, n = self.job.segments[k], 0
        while n < len(segment) and self.path(k, segment.first + n).exists():
            n += 1
        return n

    def stored(self) -> int:
        return sum(self.finished(k) for k in range(len(self.job.segments)))

    def store(self, k: int, index: int, frame: np.ndarray) -> None:
        image_io.save_image(frame, self.path(k, index), inputs=(self.job.source,))

    def load(self, k: int, index: int) -> np.ndarray:
        return image_io.load_image(self.path(k, index), role="frame")

    def sources(self, index: int, fades: dict | None = None) -> list[tuple[int, float]]:
        """The stored segment frames output frame ``index`` is made of, with their weights
        (`video.frame_sources`). Where a film broke, an overlap frame one segment never reached is
        its neighbour's alone; none stored: []."""
        sources = [(k, w) for k, w in video.frame_sources(index, self.job.segments, fades)
                   if self.path(k, index).exists()]
        total = sum(w for _, w in sources)
        return [(k, w / total) for k, w in sources] if len(sources) == 1 else sources

    def ready(self) -> int:
        """How many output frames, from the first, can be made of stored segment frames."""
        last, n = self.job.num_frames or UNTIL_THE_END, 0
        while n < last and self.sources(n):
            n += 1
        return n

    def encode(self, count: int) -> None:
        """The output film of frames 0 … count-1, cross-faded where segments overlap with fades
        paced by how much they differ there (`video.segment_fades`)."""
        job = self.job
        whole = next((t for t in range(count)  # a broken film: paced fades only before the break
                      if len(self.sources(t)) < len(video.frame_sources(t, job.segments))), count)
        fades = video.segment_fades(job.segments, self.load, upto=whole)
        with video_io.FilmWriter(job.output, job.height, job.width, job.frame_rate,
                                 audio_from=None if job.source.is_dir() else job.source) as writer:
            for index in range(count):
                writer.write(sum(w * self.load(k, index) for k, w in self.sources(index, fades)))

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def run_film(vgg: vgg19.VGG, job: FilmJob, inputs: Inputs, files: FrameFiles,
             observers: Sequence[FilmObserver], done: int = 0,
             stop_requested: Callable[[], bool] = lambda: False) -> FilmOutcome:
    """Stylizes ``job``'s film from step ``done`` (the steps an interrupted run stored), storing
    each frame with ``files`` and telling ``observers``; when every frame is stored (or the
    stream broke), encodes the film and removes the folder.

    Step i stylizes frame i of every segment still running as one batch (padded to the devices):
    a segment's first frame as a still image (every scale), later ones from the previous stored
    frame warped onto them, with the temporal term. Ctrl-C (``stop_requested()`` at a chunk's or a
    step's end, or a KeyboardInterrupt) ends it with the stored frames kept. A frame whose loss
    diverges raises a `JaxstyleError` (the frames before it kept)."""
    segments, cfg = job.segments, job.cfg
    devices = jax.device_count()
    rows = 1 if len(segments) == 1 else -(-len(segments) // devices) * devices  # padding discarded
    mesh = video.segment_mesh(rows)
    styles = [inputs.styles[s] for s in job.styles]
    dis = flow.DISFlow(job.flow_preset)
    steps: list[Step] = []
    stored = sum(min(done, len(s)) for s in segments)

    def on_chunk(active: tuple[int, ...]):
        def report(progress) -> None:
            event = Event(progress, active, stored, job.work)
            for observer in observers:
                observer.chunk(event, {})
            if stop_requested():
                raise StopRequested
        return report

    def on_scale(index: int, height: int, width: int) -> None:
        for observer in observers:
            observer.scale(index, height, width)

    interrupted, broken = False, None
    try:
        readers = [video_io.read_frames(job.source, job.height, job.width,
                                        skip=s.first + max(done - 1, 0)) for s in segments]
        previous_in: list[np.ndarray | None] = [None] * len(segments)
        previous_out: list[np.ndarray | None] = [None] * len(segments)
        for k, s in enumerate(segments):
            if 0 < done <= len(s):  # resuming: each segment's last stored frame and its input
                previous_in[k], previous_out[k] = next(readers[k]), files.load(k, s.first + done - 1)
        # Segments whose stream ended before the length the film gave, or broke.
        ended: set[int] = set()
        for i in range(done, max(len(s) for s in segments)):
            if stop_requested():
                raise StopRequested
            frames = {}
            for k, s in enumerate(segments):
                if i >= len(s) or k in ended:
                    continue
                try:
                    frame = next(readers[k], None)
                except video_io.BrokenStream as e:  # the others still stylize their frames
                    frame, broken = None, e
                if frame is None:
                    ended.add(k)
                else:
                    frames[k] = frame
            active = tuple(frames)
            if not active:
                break
            padded = list(active) + [active[0]] * (rows - len(active))
            options = dict(guidance=inputs.guidance, mesh=mesh, vmap=job.vmap,
                           on_progress=on_chunk(active), on_scale=on_scale)
            contents = np.stack([frames[k] for k in padded])
            if i == 0 or job.independent:
                result = video.stylize_frames(vgg, contents, styles, cfg,
                                              init_image=inputs.init_image, **options)
            else:
                previous = {k: video.Previous(*video.warped_start(
                    previous_out[k], frames[k], *dis.pair(previous_in[k], frames[k])))
                    for k in active}
                result = video.stylize_frames(vgg, contents, styles, cfg,
                                              [previous[k] for k in padded], job.temporal_weight,
                                              **options)
            for row, k in enumerate(active):
                index = segments[k].first + i
                if result.diverged[row]:
                    raise JaxstyleError(f"the loss of frame {index} became NaN or infinite; the "
                                        f"finished frames are kept in '{files.folder}'. Lower "
                                        "--style-weight or --temporal-weight and --resume")
                previous_out[k], previous_in[k] = video.quantize(result.images[row]), frames[k]
                files.store(k, index, previous_out[k])
            stored += len(active)
            iterations = tuple(int(result.steps[row]) if result.steps is not None
                               else cfg.schedule.num_iterations for row in range(len(active)))
            step = Step(i, tuple(segments[k].first + i for k in active), iterations,
                        float(result.loss[0]), stored, job.work)
            steps.append(step)
            for observer in observers:
                observer.step(step)
    except video_io.BrokenStream as e:
        broken = e
    except KeyboardInterrupt:
        interrupted = True
    written = 0
    if not interrupted:
        written = files.ready()
        if written:
            files.encode(written)
            files.remove()
    outcome = FilmOutcome(tuple(steps), interrupted, broken, written)
    for observer in observers:
        observer.end(outcome)
    return outcome


class FrameBar(FilmObserver):
    """A tqdm bar over the film's frames, with the iteration and loss of the frames in work."""

    def __init__(self, job: FilmJob, done: int, quiet: bool):
        n = len(job.segments)
        self.desc = "video" if n == 1 else f"video x{n}"
        self.bar = progress_bar(job.work, "frame", quiet, desc=self.desc,
                                initial=sum(min(done, len(s)) for s in job.segments))
        # The first step makes the still image's programs, the next the temporal term's.
        self.new_programs = 2 if done == 0 else 1
        self.preparing = False

    def scale(self, index: int, height: int, width: int) -> None:
        if self.new_programs > 0:
            self.bar.set_description_str(
                f"preparing {width}x{height} (compiles on a shape's first run)")
            self.preparing = True

    def chunk(self, event: Event, latest: dict[int, Latest]) -> None:
        if self.preparing:
            self.bar.set_description_str(self.desc, refresh=False)
            self.preparing = False
        self.bar.set_postfix(it=event.progress.iteration,
                             loss=f"{float(event.progress.state.loss[0]):.4g}", refresh=False)

    def step(self, step: Step) -> None:
        self.new_programs -= 1
        self.bar.update(len(step.frames))
        self.bar.set_postfix(it=max(step.iterations), loss=f"{step.loss:.4g}", refresh=False)

    def end(self, outcome: FilmOutcome) -> None:
        self.bar.close()


def summary(job: FilmJob, outcome: FilmOutcome, seconds: float) -> str:
    """The line that says what was written: frames, rate, time a step, iterations a frame."""
    steps, n = outcome.steps, len(job.segments)
    first = steps[0] if steps and steps[0].index == 0 else None
    later = [k for step in steps if step is not first for k in step.iterations]
    per_step = "a frame" if n == 1 else f"a step of {n} frames"
    parts = f", {n} segments of {max(len(s) for s in job.segments)} frames" if n > 1 else ""
    return (f"wrote {job.output} ({outcome.written} frames at {float(job.frame_rate):g} fps{parts}, "
            f"{seconds / max(len(steps), 1):.2f} s {per_step}; iterations: first "
            f"{max(first.iterations) if first else '-'}, then a mean of "
            f"{np.mean(later) if later else 0:.1f})")
