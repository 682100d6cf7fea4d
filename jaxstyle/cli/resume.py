"""Resume checkpoints of ``jaxstyle stylize`` (``OUTPUT.resume.npz``): the run's images and
position, its settings, and what it was made from, written atomically; read back only after every
field is checked, so that a damaged file is one line, never a traceback from JAX.

Fields (one .npz): ``images`` float[1, H, W, 3] (the images at scale ``scale_index``),
``scale_index`` and ``iteration`` (ints >= 0), ``config`` (the `Config` as JSON) and ``inputs``
(JSON: the content and style images, each as its file name and the SHA-256 of the array the run
loaded, so that a resume on other images is refused instead of stretched onto them). Optionally
the optimizer's whole state (`stylize.Start.state`): ``state_dtypes`` (JSON: one dtype name per
leaf) and ``state_<i>`` (bfloat16 leaves stored as their uint16 bits), so that a resumed run goes
on exactly as the uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxstyle import stylize as stylize_lib
from jaxstyle.config import Config
from jaxstyle.errors import JaxstyleError
from jaxstyle.files import atomic_write

SUFFIX = ".resume.npz"
# Settings that change the images' shapes: a checkpoint resumes only under the same values.
SHAPE_SETTINGS = ("image_size", "scales")
FIELDS = ("images", "scale_index", "iteration", "config", "inputs")


class Damaged(ValueError):
    """A checkpoint field is missing or not what `save` writes."""


def checkpoint_path(output: Path) -> Path:
    """Where a run writing ``output`` keeps its resume checkpoint."""
    return output.with_name(output.name + SUFFIX)


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array, np.float32).tobytes()).hexdigest()


def inputs_record(content_paths: Sequence[str | Path], contents: Sequence[np.ndarray],
                  style_paths: Sequence[str | Path], styles: Sequence[np.ndarray]) -> dict:
    """What a run was made from: the images as loaded (resized), named by their files."""
    def entries(paths, arrays):
        return [{"file": Path(p).name, "sha256": _digest(a)} for p, a in zip(paths, arrays)]
    return {"content": entries(content_paths, contents), "styles": entries(style_paths, styles)}


def save(path: Path, images, scale_index: int, iteration: int, cfg: Config, inputs: dict,
         state: Sequence[np.ndarray] | None = None) -> None:
    """The run's images and position, and its optimizer ``state`` (`stylize.Start.state`) when
    given, written atomically next to the output (for --resume)."""
    fields = {}
    if state is not None:
        leaves = [np.asarray(leaf) for leaf in state]
        fields["state_dtypes"] = json.dumps([leaf.dtype.name for leaf in leaves])
        for i, leaf in enumerate(leaves):
            fields[f"state_{i}"] = leaf.view(np.uint16) if leaf.dtype.name == "bfloat16" else leaf
    atomic_write(path, lambda f: np.savez(
        f, images=np.asarray(images, np.float32), scale_index=scale_index, iteration=iteration,
        config=json.dumps(cfg.flat()), inputs=json.dumps(inputs), **fields))


def _state(data) -> list[np.ndarray] | None:
    """The saved optimizer state's leaves, or None when the checkpoint has none."""
    if "state_dtypes" not in data.files:
        return None
    dtypes = json.loads(str(data["state_dtypes"]))
    if not isinstance(dtypes, list) or any(f"state_{i}" not in data.files
                                           for i in range(len(dtypes))):
        raise Damaged("its optimizer state is incomplete")
    leaves = []
    for i, name in enumerate(dtypes):
        leaf = data[f"state_{i}"]
        if name == "bfloat16":
            import ml_dtypes

            leaf = leaf.view(ml_dtypes.bfloat16)
        elif leaf.dtype.name != name:
            raise Damaged(f"optimizer state leaf {i} is {leaf.dtype.name}, not {name}")
        leaves.append(leaf)
    return leaves


def _read(path: Path) -> tuple[np.ndarray, int, int, dict, dict, list[np.ndarray] | None]:
    """The checked fields of a checkpoint; `Damaged` (or numpy's own error) when one is wrong."""
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in FIELDS if k not in data.files]
        if missing:
            raise Damaged(f"no {', '.join(missing)}")
        images, scale_index, iteration = data["images"], data["scale_index"], data["iteration"]
        saved, inputs = json.loads(str(data["config"])), json.loads(str(data["inputs"]))
        state = _state(data)
    if not (np.issubdtype(images.dtype, np.floating) and images.ndim == 4
            and images.shape[0] == 1 and images.shape[-1] == 3):
        raise Damaged(f"images are {images.dtype}{list(images.shape)}, not float[1, H, W, 3]")
    for name, value in (("scale index", scale_index), ("iteration", iteration)):
        if value.shape != () or not np.issubdtype(value.dtype, np.integer) or value < 0:
            raise Damaged(f"the {name} is not a count")
    if not isinstance(saved, dict) or any(k not in saved for k in SHAPE_SETTINGS):
        raise Damaged(f"its settings lack {' or '.join(SHAPE_SETTINGS)}")
    if not (isinstance(inputs, dict) and all(isinstance(inputs.get(k), list)
                                              for k in ("content", "styles"))):
        raise Damaged("no record of its content and style images")
    return images.astype(np.float32), int(scale_index), int(iteration), saved, inputs, state


def check_inputs(path: Path, saved: dict, now: dict) -> None:
    """JaxstyleError unless a checkpoint's record of its inputs (`inputs_record`) is ``now``'s."""
    for key, what in (("content", "content image"), ("styles", "style image(s)")):
        if [e.get("sha256") for e in saved[key]] != [e["sha256"] for e in now[key]]:
            then = ", ".join(str(e.get("file")) for e in saved[key]) or "none"
            given = ", ".join(e["file"] for e in now[key]) or "none"
            raise JaxstyleError(
                f"--resume: checkpoint '{path}' was made from another {what} ({then}, not "
                f"{given} at this size); use the same inputs and flags, or drop --resume (the "
                "checkpoint is kept)")


def load(path: Path, cfg: Config, inputs: dict,
         content_shape: tuple[int, int]) -> stylize_lib.Start:
    """The `stylize.Start` saved at ``path`` for a run of ``cfg`` on ``inputs`` (`inputs_record`),
    whose content image is ``content_shape`` (H, W) at the final scale. JaxstyleError, leaving
    the file in place, when it is missing, damaged or from another run."""
    if not path.exists():
        raise JaxstyleError(f"--resume: no checkpoint '{path}' (one is written by --save-iter and "
                            "on Ctrl-C); run without --resume")
    try:
        images, scale_index, iteration, saved, saved_inputs, state = _read(path)
    except Exception as e:  # whatever numpy or json raise: a damaged file, for the user
        why = " ".join(str(e).split())[:160] or type(e).__name__
        raise JaxstyleError(f"--resume: checkpoint '{path}' is damaged ({why}); delete it") from None
    settings = cfg.flat()
    for key in SHAPE_SETTINGS:
        value = settings[key]
        if saved[key] != (list(value) if isinstance(value, tuple) else value):
            raise JaxstyleError(f"--resume: checkpoint '{path}' was made with a different "
                                f"--{key.replace('_', '-')}; use the same flags or drop --resume")
    check_inputs(path, saved_inputs, inputs)
    if scale_index >= len(cfg.schedule.all_scales) or iteration > cfg.schedule.num_iterations:
        raise JaxstyleError(f"--resume: checkpoint '{path}' is past this run's end; raise "
                            "--num-iterations to continue it")
    expected = stylize_lib.scale_sizes(cfg, *content_shape)[scale_index]
    if tuple(images.shape[1:3]) != tuple(expected):
        raise JaxstyleError(f"--resume: checkpoint '{path}' is damaged (images of "
                            f"{images.shape[1]}x{images.shape[2]}, not {expected[0]}x"
                            f"{expected[1]}); delete it")
    return stylize_lib.Start(scale_index, iteration, images, state)
