"""The side effects of a stylize run, as `pipeline.Observer`\\ s of its events: the progress bar,
``--save-iter`` snapshots and resume checkpoints, ``--gif`` frames, and ``--log-dir`` / ``--web``
(`cli.watch`). Each writes its images through the job's `pipeline.Outputs`."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from jaxstyle.cli import resume
from jaxstyle.cli.common import progress_bar
from jaxstyle.cli.pipeline import Event, Latest, Observer, Outcome, Outputs
from jaxstyle.cli.watch import Watch
from jaxstyle.config import Config
from jaxstyle.stylize import Progress


class ProgressBar(Observer):
    """A tqdm bar over the job's iterations; for one problem, its loss terms beside it."""

    def __init__(self, total: int, desc: str, quiet: bool, every: int, show_terms: bool):
        self.desc, self.show_terms, self.every = desc, show_terms, (every,) if every else ()
        self.bar = progress_bar(total, "it", quiet, desc=desc)
        self.preparing = False

    def scale(self, index: int, height: int, width: int) -> None:
        # Until the scale's first chunk returns, its programs are compiled or loaded if cached.
        self.bar.set_description_str(f"preparing {width}x{height} (compiles on a shape's first run)")
        self.preparing = True

    def chunk(self, event: Event, latest: dict[int, Latest]) -> None:
        if self.preparing:  # the scale's programs are ready
            self.bar.set_description_str(self.desc, refresh=False)
            self.preparing = False
        self.bar.update(event.done - self.bar.n)
        if self.show_terms:
            state = event.progress.state
            terms = {k: float(v[0]) for k, v in state.terms.items()}
            self.bar.set_postfix(loss=f"{float(state.loss[0]):.4g}",
                                 **{k: f"{v:.3g}" for k, v in terms.items()}, refresh=False)

    def close(self, note: str = "") -> None:
        if note:
            postfix = getattr(self.bar, "postfix", None)  # unset on a disabled bar
            self.bar.set_postfix_str(f"{postfix}, {note}" if postfix else note, refresh=True)
        self.bar.close()

    def end(self, outcome: Outcome) -> None:
        if outcome.results is None:
            self.bar.close()
        elif self.bar.n == 0:  # a run without per-chunk events (a memory plan's): all done
            self.bar.update(self.bar.total)


def snapshot_path(output: Path, iteration: int) -> Path:
    return output.with_name(f"{output.stem}_{iteration}{output.suffix}")


def snapshot_paths(output: Path, cfg: Config, save_iter: int) -> list[Path]:
    """Every OUTPUT_<iter> file ``--save-iter`` may write (at each scale's multiples of it)."""
    if save_iter <= 0:
        return []
    schedule = cfg.schedule
    return [snapshot_path(output, schedule.iterations_before(s) + k)
            for s, cap in enumerate(schedule.scale_iterations) for k in range(0, cap, save_iter)]


class Snapshots(Observer):
    """One image's ``--save-iter``: OUTPUT_<iter> every N iterations, each with a resume
    checkpoint (`cli.resume`)."""

    def __init__(self, outputs: Outputs, cfg: Config, save_iter: int, made_from: dict):
        self.outputs, self.cfg, self.made_from = outputs, cfg, made_from
        self.every = (save_iter,) if save_iter else ()
        self.output = outputs.job.problems[0].output
        self.checkpoint = resume.checkpoint_path(self.output)

    def chunk(self, event: Event, latest: dict[int, Latest]) -> None:
        p = event.progress
        if self.every and p.iteration % self.every[0] == 0 and p.iteration < p.num_iterations:
            self.outputs.image(latest[0].image, snapshot_path(self.output, event.done))
            resume.save(self.checkpoint, latest[0].optimized[None], p.scale_index, p.iteration,
                        self.cfg, self.made_from, state_leaves(p))


class Checkpoint(Observer):
    """One image's resume point: the images the optimizer holds (before original colours), kept
    after every chunk and written on Ctrl-C; deleted when the run finishes without diverging.
    After an error (out of memory) none is written: resuming would run out again."""

    def __init__(self, outputs: Outputs, cfg: Config, made_from: dict):
        self.cfg, self.made_from = cfg, made_from
        self.path = resume.checkpoint_path(outputs.job.problems[0].output)
        self.progress: Progress | None = None

    def chunk(self, event: Event, latest: dict[int, Latest]) -> None:
        # The state is fetched only if the run stops here: the L-BFGS history is large. Ctrl-C
        # acts at the end of a chunk, before the next one takes over (donates) these buffers.
        self.progress = event.progress

    def end(self, outcome: Outcome) -> None:
        at = outcome.latest.get(0)
        if outcome.interrupted and at is not None:
            resume.save(self.path, at.optimized[None], at.scale_index, at.iteration, self.cfg,
                        self.made_from, state_leaves(self.progress))
        elif outcome.results is not None and not outcome.results[0].diverged[0]:
            self.path.unlink(missing_ok=True)


def state_leaves(progress: Progress | None) -> list[np.ndarray] | None:
    """The run's whole optimizer state on the host (`stylize.Start.state`), or None when its
    buffers are gone (a later chunk took them over)."""
    if progress is None:
        return None
    try:
        return [np.asarray(progress.to_host(leaf))
                for leaf in jax.tree_util.tree_leaves(progress.state)]
    except RuntimeError:  # deleted (donated) buffers
        return None


class GifFrames(Observer):
    """``--gif``: the image every N iterations, and the result, as an animation."""

    def __init__(self, outputs: Outputs, path: Path, every: int):
        self.outputs, self.path, self.every = outputs, path, (every,)
        self.frames: list[np.ndarray] = []

    def chunk(self, event: Event, latest: dict[int, Latest]) -> None:
        if event.progress.iteration % self.every[0] == 0:
            self.frames.append(latest[0].image)

    def end(self, outcome: Outcome) -> None:
        if outcome.results is not None and self.frames:
            self.outputs.animation([*self.frames, outcome.results[0].images[0]], self.path)


class Watching(Observer):
    """``--log-dir`` and ``--web`` (`cli.watch.Watch`), with the time spent making programs."""

    def __init__(self, watch: Watch, compile_seconds, every: tuple[int, ...]):
        self.watch, self.compile_seconds, self.every = watch, compile_seconds, every

    def chunk(self, event: Event, latest: dict[int, Latest]) -> None:
        self.watch.progress(event.progress, event.problems, compile_s=self.compile_seconds())
