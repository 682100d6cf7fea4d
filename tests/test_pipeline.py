"""The stylize pipeline (`jaxstyle.cli.pipeline`): every file read once and written once, one
driver for one image, a folder and a sweep, and what an interrupted run of each keeps."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import run_cli as run
from helpers import write_random_image
from jaxstyle import cli, image_io
from jaxstyle import stylize as stylize_lib

FAST = ["--image-size", "32", "--num-iterations", "4", "--quiet"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("pipeline_images")
    return {"content": write_random_image(d / "content.png", (24, 32), 0),
            "other": write_random_image(d / "other.png", (32, 24), 3),
            "style": write_random_image(d / "style.png", (30, 30), 1)}


@pytest.fixture
def io_calls(monkeypatch):
    """Every image_io load and save, by the path they name."""
    calls = {"load": collections.Counter(), "save": collections.Counter()}
    load, save = image_io.load_image, image_io.save_image

    def counted_load(path, *args, **kwargs):
        calls["load"][Path(path).name] += 1
        return load(path, *args, **kwargs)

    def counted_save(image, path, *args, **kwargs):
        calls["save"][Path(path).name] += 1
        return save(image, path, *args, **kwargs)

    monkeypatch.setattr(image_io, "load_image", counted_load)
    monkeypatch.setattr(image_io, "save_image", counted_save)
    return calls


@pytest.mark.parametrize("kind", ["one", "sweep"])
def test_the_content_image_enters_image_io_once_each_way(capsys, tmp_path, images,
                                                          keras_safetensors, io_calls, kind):
    out = tmp_path / "out.png"
    extra = ["--sweep", "seed=1,2", "--init", "noise"] if kind == "sweep" else []
    code, _, err = run(capsys, "stylize", images["content"], "--style", images["style"],
                       "--weights", keras_safetensors, "-o", out, *FAST, *extra)
    assert code == 0, err
    assert io_calls["load"] == {"content.png": 1, "style.png": 1}
    expected = ({"out.png": 1} if kind == "one" else
                {"out.png": 1, "out-1.png": 1, "out-2.png": 1})  # the sheet and each cell
    assert io_calls["save"] == expected


def test_a_folder_reads_each_photo_once_and_writes_each_output_once(capsys, tmp_path, images,
                                                                    keras_safetensors, io_calls):
    outdir = tmp_path / "outs"
    code, _, err = run(capsys, "stylize", images["content"], images["other"], "--style",
                       images["style"], "--weights", keras_safetensors, "-o", f"{outdir}/", *FAST)
    assert code == 0, err
    assert io_calls["load"] == {"content.png": 1, "other.png": 1, "style.png": 1}
    assert io_calls["save"] == {"content.png": 1, "other.png": 1}


def _interrupt_at_iteration(monkeypatch, iteration: int):
    real = stylize_lib.stylize_batch
    seen = []

    def interrupted(*args, on_progress=None, **kwargs):
        def progress(p):
            on_progress(p)
            seen.append(p.iteration)
            if p.iteration >= iteration:
                raise KeyboardInterrupt
        return real(*args, on_progress=progress, **kwargs)

    monkeypatch.setattr(stylize_lib, "stylize_batch", interrupted)
    return seen


def test_an_interrupted_folder_keeps_the_latest_image_of_each_started_photo(
        capsys, tmp_path, images, keras_safetensors, monkeypatch):
    """Photos of two shapes run as two batches; Ctrl-C in the first leaves its photo's latest
    image (not the untouched content: the optimizer had moved it), and nothing for the other."""
    seen = _interrupt_at_iteration(monkeypatch, 2)
    outdir = tmp_path / "outs"
    code, _, err = run(capsys, "stylize", images["content"], images["other"], "--style",
                       images["style"], "--weights", keras_safetensors, "-o", f"{outdir}/", *FAST,
                       "--print-iter", "2", "--init", "noise")
    assert code == cli.EXIT_INTERRUPTED, err
    assert seen and "interrupted" in err and "1 of 2" not in err
    written = sorted(p.name for p in outdir.iterdir())
    assert len(written) == 1, written
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and str(outdir) in lines[0] and "Traceback" not in err
    with Image.open(outdir / written[0]) as im:
        image = np.asarray(im)
    assert image.shape[2] == 3 and image.std() > 0  # an image, from the noise start's run


def test_an_interrupted_sweep_keeps_each_started_cell(capsys, tmp_path, images, keras_safetensors,
                                                      monkeypatch):
    _interrupt_at_iteration(monkeypatch, 2)
    out = tmp_path / "sweep.png"
    code, _, err = run(capsys, "stylize", images["content"], "--style", images["style"],
                       "--weights", keras_safetensors, "-o", out, *FAST, "--print-iter", "2",
                       "--sweep", "seed=1,2,3", "--init", "noise", "--batch-size", "2")
    assert code == cli.EXIT_INTERRUPTED, err
    # The first batch of two cells had started; the third cell and the sheet were not made.
    assert sorted(p.name for p in tmp_path.glob("sweep*")) == ["sweep-1.png", "sweep-2.png"]
    assert "2 of 3" in err and "Traceback" not in err


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
@pytest.mark.parametrize("style_loss", ["gram", "w2"])
def test_ctrl_c_then_resume_equals_the_uninterrupted_run(capsys, tmp_path, images,
                                                         keras_safetensors, monkeypatch,
                                                         optimizer, style_loss):
    """The checkpoint holds the optimizer's whole state (Adam's moments, the L-BFGS history, the
    stopping rule's record), so a resumed run goes on exactly as if never stopped."""
    def argv(out, *extra):
        return ["stylize", images["content"], "--style", images["style"], "--weights",
                keras_safetensors, "-o", out, "--image-size", "32", "--num-iterations", "6",
                "--print-iter", "2", "--optimizer", optimizer, "--style-loss", style_loss,
                "--quiet", *extra]

    whole = tmp_path / "whole.png"
    code, _, err = run(capsys, *argv(whole))
    assert code == 0, err
    real = stylize_lib.stylize_batch
    _interrupt_at_iteration(monkeypatch, 2)
    resumed = tmp_path / "resumed.png"
    code, _, err = run(capsys, *argv(resumed))
    assert code == cli.EXIT_INTERRUPTED, err
    stopped = np.asarray(Image.open(resumed))
    monkeypatch.setattr(stylize_lib, "stylize_batch", real)
    code, _, err = run(capsys, *argv(resumed, "--resume"))
    assert code == 0, err
    final, expected = np.asarray(Image.open(resumed)), np.asarray(Image.open(whole))
    assert not np.array_equal(stopped, expected)  # the interruption came before the end
    np.testing.assert_array_equal(final, expected)


def test_resume_under_another_optimizer_continues_from_the_image_with_a_warning(
        capsys, tmp_path, images, keras_safetensors, monkeypatch):
    out = tmp_path / "r.png"
    base = ["stylize", images["content"], "--style", images["style"], "--weights",
            keras_safetensors, "-o", out, "--image-size", "32", "--num-iterations", "6",
            "--print-iter", "2", "--quiet"]
    real = stylize_lib.stylize_batch
    _interrupt_at_iteration(monkeypatch, 2)
    code, _, err = run(capsys, *base, "--optimizer", "adam")
    assert code == cli.EXIT_INTERRUPTED, err
    monkeypatch.setattr(stylize_lib, "stylize_batch", real)
    code, _, err = run(capsys, *base, "--optimizer", "lbfgs", "--resume")
    assert code == 0, err
    warned = [line for line in err.splitlines() if line.startswith("jaxstyle: warning: ")]
    assert len(warned) == 1 and "fresh" in warned[0] and "Traceback" not in err, err


@pytest.mark.slow
def test_an_image_too_large_for_memory_runs_in_tiles_or_says_how(capsys, tmp_path, images,
                                                                 keras_safetensors):
    """`--max-memory` emulates a small card: the plan (`memory.plan`) picks tiles for a run whose
    settings tiles can run (Adam, one scale, explicit weights), says so in one line and writes
    the photo's size; a default run that does not fit is refused in one line that names both
    ways out (a smaller size, or the tiles' settings)."""
    photo = write_random_image(tmp_path / "photo.png", (60, 80), 5)
    out = tmp_path / "tiled.png"
    base = ["stylize", photo, "--style", images["style"], "--weights", keras_safetensors,
            "--image-size", "256", "--num-iterations", "1", "--max-memory", "1.15GB", "-q"]
    code, _, err = run(capsys, *base, "-o", tmp_path / "plain.png")
    assert code == 1 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "would fit" in lines[0] and "--optimizer adam" in lines[0], err
    code, _, err = run(capsys, *base, "-o", out, "--optimizer", "adam", "--num-scales", "1",
                       "--content-weight", "5")
    assert code == 0, err
    assert "tiles on one device" in err
    with Image.open(out) as im:
        assert im.size == (256, 192)
        assert np.asarray(im).std() > 0
