"""Issue 28's defects, found by trying the commands as a careless user would: each bad input is
one line ``jaxstyle: error: ...`` before any work (or the documented behaviour), inputs are never
overwritten, and Ctrl-C always ends with exit status 130 and one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from helpers import run_cli as run
from helpers import assert_one_line_error, run_with_ctrl_c, write_random_image
from jaxstyle import cli, config, netfile
from jaxstyle import stylize as stylize_lib
from jaxstyle.cli import stylize as stylize_cli
from jaxstyle.cli import train as train_cli
from jaxstyle.errors import JaxstyleError
from jaxstyle.models import transformer

FAST = ["--image-size", 64, "--num-iterations", 2, "-q"]
# The smallest network and schedule: a test about flags should not wait for VGG's deep layers.
SMALL = [*FAST, "--num-scales", 1, "--optimizer", "adam", "--style-layers", "relu1_1,relu2_1",
         "--content-layers", "relu2_1"]
TRAIN_TINY = ["--image-size", 16, "--batch-size", 2, "--width", 0.25, "--content-layers", "relu2_1",
              "--style-layers", "relu1_1,relu2_1", "-q"]


@pytest.fixture
def images(tmp_path):
    return {"content": write_random_image(tmp_path / "content.png", (48, 64), 0),
            "style": write_random_image(tmp_path / "style.png", (56, 56), 1),
            "style2": write_random_image(tmp_path / "style2.png", (48, 60), 2)}


def grey_image(path, shape=(48, 64), level=128):
    Image.fromarray(np.full(tuple(shape) + (3,), level, np.uint8)).save(path)
    return path


def stylize(images, weights, output, *extra):
    return ["stylize", images["content"], "--style", images["style"], "--weights", weights,
            "-o", output, *SMALL, *extra]


def snapshot(path: Path) -> dict:
    return {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}


# ---------------------------------------------------------------------------------- data lost


@pytest.mark.parametrize("as_init_image", [False, True])
def test_save_iter_snapshot_never_overwrites_an_input(capsys, tmp_path, keras_safetensors,
                                                      as_init_image):
    # OUT_2.png is a snapshot's name: `-o photo.png --save-iter 2` would write photo_2.png.
    photo = write_random_image(tmp_path / "photo_2.png", (48, 64), 3)
    content = write_random_image(tmp_path / "c.png", (48, 64), 4) if as_init_image else photo
    extra = ["--init", "image", "--init-image", photo] if as_init_image else []
    style = write_random_image(tmp_path / "s.png", (48, 48), 5)
    before = snapshot(tmp_path)
    code, _, err = run(capsys, "stylize", content, "--style", style, "--weights",
                       keras_safetensors, "-o", tmp_path / "photo.png", *SMALL,
                       "--num-iterations", 4, "--save-iter", 2, *extra)
    assert code == 1
    assert_one_line_error(err, "photo_2.png", "overwrite")
    assert snapshot(tmp_path) == before


def test_train_output_never_replaces_its_weights_file(capsys, tmp_path, keras_safetensors):
    weights = tmp_path / "vgg.safetensors"
    weights.write_bytes(keras_safetensors.read_bytes())
    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        write_random_image(data / f"{i}.png", (20, 20), i)
    style = write_random_image(tmp_path / "style.png", (20, 20), 9)
    before = weights.stat().st_mtime_ns
    code, _, err = run(capsys, "train", style, "--data", data, "--weights", weights, "-o", weights,
                       "--steps", 1, *TRAIN_TINY)
    assert code == 1
    assert_one_line_error(err, "overwrite", "vgg.safetensors")
    assert weights.stat().st_mtime_ns == before
    assert weights.read_bytes() == keras_safetensors.read_bytes()


def test_same_stem_contents_into_one_folder_are_refused(capsys, tmp_path, images,
                                                        keras_safetensors):
    a = write_random_image((tmp_path / "a").mkdir() or tmp_path / "a" / "photo.png", (48, 64), 5)
    b = write_random_image((tmp_path / "b").mkdir() or tmp_path / "b" / "photo.jpg", (48, 64), 6)
    code, _, err = run(capsys, "stylize", a, b, "--style", images["style"], "--weights",
                       keras_safetensors, "-o", tmp_path / "out", *SMALL)
    assert code == 1
    assert_one_line_error(err, str(a), str(b), "photo.png")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_same_stem_styles_with_all_pairs_are_refused(capsys, tmp_path, images, keras_safetensors):
    s1 = write_random_image((tmp_path / "a").mkdir() or tmp_path / "a" / "s.png", (40, 40), 5)
    s2 = write_random_image((tmp_path / "b").mkdir() or tmp_path / "b" / "s.png", (40, 40), 6)
    code, _, err = run(capsys, "stylize", images["content"], images["style"], "--style", s1, s2,
                       "--all-pairs", "--weights", keras_safetensors, "-o", tmp_path / "out",
                       *SMALL)
    assert code == 1
    assert_one_line_error(err, "content__s.png")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_gif_equal_to_the_output_is_refused(capsys, tmp_path, images, keras_safetensors):
    out = tmp_path / "out.png"
    code, _, err = run(capsys, *stylize(images, keras_safetensors, out, "--gif", out))
    assert code == 1
    assert_one_line_error(err, "--gif", "out.png")
    assert not out.exists()


# ------------------------------------------------------------------------- tracebacks, crashes


def test_several_contents_start_from_the_init_image(capsys, tmp_path, images, keras_safetensors):
    second = write_random_image(tmp_path / "second.png", (64, 48), 7)
    grey = grey_image(tmp_path / "grey.png")
    outdir = tmp_path / "out"
    # One tiny Adam step: each result is still its start, the flat grey init image.
    code, _, err = run(capsys, "stylize", images["content"], second, "--style", images["style"],
                       "--weights", keras_safetensors, "-o", outdir, *SMALL, "--num-iterations", 1,
                       "--learning-rate", 1e-4, "--init", "image", "--init-image", grey)
    assert code == 0, err
    for name, shape in (("content.png", (48, 64, 3)), ("second.png", (64, 48, 3))):
        result = np.asarray(Image.open(outdir / name), np.float32)
        assert result.shape == shape
        assert np.abs(result - 128).max() <= 2, name


def _checkpoint_fields(images, weights, tmp_path) -> dict:
    """What `resume.save` writes for `stylize(images, weights, ...)` at its first snapshot."""
    from jaxstyle.cli import resume

    args = cli.build_parser().parse_args(
        [str(a) for a in stylize(images, weights, tmp_path / "out.png")])
    cfg = stylize_cli.config_from_args(args)
    path = tmp_path / "probe.npz"
    content = np.zeros((48, 64, 3), np.float32)
    resume.save(path, np.zeros((1, 48, 64, 3), np.float32), 0, 1, cfg,
                resume.inputs_record([images["content"]], [content], [images["style"]], [content]))
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


@pytest.mark.parametrize("damage", ["2-D images", "no image_size", "string images",
                                    "no inputs record", "not an npz"])
def test_a_damaged_resume_checkpoint_is_one_line(capsys, tmp_path, images, keras_safetensors,
                                                 damage):
    out = tmp_path / "out.png"
    checkpoint = tmp_path / "out.png.resume.npz"
    fields = _checkpoint_fields(images, keras_safetensors, tmp_path)
    if damage == "2-D images":
        fields["images"] = np.zeros((48, 64), np.float32)
    elif damage == "no image_size":
        cfg = json.loads(str(fields["config"]))
        del cfg["image_size"]
        fields["config"] = json.dumps(cfg)
    elif damage == "string images":
        fields["images"] = np.array(["a", "b"])
    elif damage == "no inputs record":
        del fields["inputs"]
    if damage == "not an npz":
        checkpoint.write_bytes(b"PK\x03\x04 truncated")
    else:
        np.savez(checkpoint, **fields)
    code, _, err = run(capsys, *stylize(images, keras_safetensors, out, "--resume"))
    assert code == 1
    assert_one_line_error(err, "damaged", "delete it")
    assert checkpoint.exists() and not out.exists()


@pytest.mark.slow
def test_ctrl_c_during_the_first_compile_exits_130(tmp_path, images, keras_safetensors):
    # Two tries: Python torn down under a compile still running crashed in two of three.
    for attempt in range(2):
        done = run_with_ctrl_c(stylize(images, keras_safetensors, tmp_path / f"o{attempt}.png",
                                        "--num-iterations", 50, "--image-size", 48), presses=1)
        assert done.returncode == cli.EXIT_INTERRUPTED, (attempt, done.returncode, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("jaxstyle: interrupted"), done.stderr


def test_double_ctrl_c_in_train_exits_130_in_one_line(tmp_path, keras_safetensors):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        write_random_image(data / f"{i}.png", (20, 20), i)
    style = write_random_image(tmp_path / "style.png", (20, 20), 9)
    net = tmp_path / "net.safetensors"
    done = run_with_ctrl_c(["train", style, "--data", data, "--weights", keras_safetensors,
                             "-o", net, "--steps", 1000, *TRAIN_TINY], presses=2)
    assert done.returncode == cli.EXIT_INTERRUPTED, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxstyle: interrupted"), done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("blocked", [False, True])
def test_train_output_is_checked_before_any_work(capsys, tmp_path, keras_safetensors, monkeypatch,
                                                 blocked):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        write_random_image(data / f"{i}.png", (20, 20), i)
    style = write_random_image(tmp_path / "style.png", (20, 20), 9)
    if blocked:  # a file where the output's folder should be: no training can be saved
        (tmp_path / "blocker").write_text("in the way")
        net = tmp_path / "blocker" / "net.safetensors"

        def no_work(*args, **kwargs):
            raise AssertionError("training started with an unwritable output")
        monkeypatch.setattr(train_cli.train_lib, "make_step", no_work)
    else:  # a missing folder is made before the run, as `stylize -o` does
        net = tmp_path / "missing" / "dir" / "net.safetensors"
    code, _, err = run(capsys, "train", style, "--data", data, "--weights", keras_safetensors,
                       "-o", net, "--steps", 1, *TRAIN_TINY)
    if blocked:
        assert code == 1
        assert_one_line_error(err, "blocker")
    else:
        assert code == 0, err
        assert netfile.load(net).steps == 1


# --------------------------------------------------------------------------- silently wrong


def _interrupt_at_first_progress(monkeypatch):
    real = stylize_lib.stylize_batch

    def interrupted(*args, on_progress=None, **kwargs):
        def progress(p):
            on_progress(p)
            raise KeyboardInterrupt
        return real(*args, on_progress=progress, **kwargs)

    monkeypatch.setattr(stylize_lib, "stylize_batch", interrupted)
    return real


@pytest.mark.parametrize("changed", ["content", "style"])
def test_resume_with_other_inputs_is_refused_and_keeps_the_checkpoint(
        capsys, tmp_path, images, keras_safetensors, monkeypatch, changed):
    out = tmp_path / "r.png"
    real = _interrupt_at_first_progress(monkeypatch)
    code, _, err = run(capsys, *stylize(images, keras_safetensors, out, "--print-iter", 1))
    assert code == cli.EXIT_INTERRUPTED, err
    checkpoint = tmp_path / "r.png.resume.npz"
    saved = checkpoint.read_bytes()
    monkeypatch.setattr(stylize_lib, "stylize_batch", real)
    other = dict(images)
    other[changed] = write_random_image(tmp_path / "other.png", (48, 64), 11)
    code, _, err = run(capsys, *stylize(other, keras_safetensors, out, "--resume"))
    assert code == 1
    assert_one_line_error(err, "--resume", changed, "drop --resume")
    assert checkpoint.read_bytes() == saved


def test_train_resume_with_another_style_is_refused(capsys, tmp_path, keras_safetensors):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        write_random_image(data / f"{i}.png", (20, 20), i)
    style = write_random_image(tmp_path / "style.png", (20, 20), 9)
    other = write_random_image(tmp_path / "other.png", (20, 20), 10)
    net = tmp_path / "net.safetensors"
    base = ["--data", data, "--weights", keras_safetensors, "-o", net, *TRAIN_TINY]
    code, _, err = run(capsys, "train", style, *base, "--steps", 1, "--checkpoint-every", 1)
    assert code == 0, err
    checkpoint = tmp_path / "net.safetensors.ckpt.npz"
    saved, net_bytes = checkpoint.read_bytes(), net.read_bytes()
    code, _, err = run(capsys, "train", other, *base, "--steps", 2, "--checkpoint-every", 1,
                       "--resume")
    assert code == 1
    assert_one_line_error(err, "--resume", "style", "drop --resume")
    assert checkpoint.read_bytes() == saved and net.read_bytes() == net_bytes


NON_FINITE = {
    "sweep nan": ["--sweep", "style-weight=nan,1"],
    "sweep inf": ["--sweep", "style-weight=1,inf"],
    "sweep blend": ["--sweep", "style-blend-weights=1:nan"],
    "content layer weights": ["--content-layer-weights", "nan"],
    "style blend weights": ["--style-blend-weights", "nan,1", "--style", "STYLE2"],
    "style weight": ["--style-weight", "inf"],
    "tv weight": ["--tv-weight", "nan"],
    "learning rate": ["--learning-rate", "inf"],
    "style scale": ["--style-scale", "inf"],
    "average": ["--average", "nan"],
}


@pytest.mark.parametrize("case", list(NON_FINITE))
def test_nan_and_infinity_are_refused(capsys, tmp_path, images, keras_safetensors, case):
    extra = [images["style2"] if a == "STYLE2" else a for a in NON_FINITE[case]]
    code, _, err = run(capsys, *stylize(images, keras_safetensors, tmp_path / "o.png", *extra))
    assert code in (1, 2)
    line = assert_one_line_error(err)
    assert "nan" in line.lower() or "inf" in line.lower() or "finite" in line, line
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("field, value", [("style_weight", float("inf")),
                                          ("content_weight", float("nan")),
                                          ("style_blend_weights", (float("nan"), 1.0)),
                                          ("style_layer_weights", (1.0,) * 4 + (float("inf"),)),
                                          ("learning_rate", float("inf")),
                                          ("style_scale", float("inf")),
                                          ("stop_tolerance", float("inf"))])
def test_config_refuses_nan_and_infinity(field, value):
    with pytest.raises(config.ConfigError, match="finite"):
        config.Config().replace(**{field: value})


def test_scales_must_increase(capsys, tmp_path, images, keras_safetensors):
    code, _, err = run(capsys, *stylize(images, keras_safetensors, tmp_path / "o.png",
                                        "--scales", "64,32"))
    assert code in (1, 2)
    assert_one_line_error(err, "--scales", "increas")
    assert not (tmp_path / "o.png").exists()


def test_init_image_alone_implies_init_image(capsys, tmp_path, images, keras_safetensors):
    out = tmp_path / "o.png"
    grey = grey_image(tmp_path / "grey.png")
    code, _, err = run(capsys, *stylize(images, keras_safetensors, out, "--init-image", grey,
                                        "--num-iterations", 1, "--learning-rate", 1e-4))
    assert code == 0, err
    assert np.abs(np.asarray(Image.open(out), np.float32) - 128).max() <= 2


def test_init_image_with_another_init_is_refused(capsys, tmp_path, images, keras_safetensors):
    grey = grey_image(tmp_path / "grey.png")
    code, _, err = run(capsys, *stylize(images, keras_safetensors, tmp_path / "o.png",
                                        "--init", "noise", "--init-image", grey))
    assert code == 1
    assert_one_line_error(err, "--init-image", "--init noise")


def test_save_iter_with_several_contents_is_refused(capsys, tmp_path, images, keras_safetensors):
    code, _, err = run(capsys, "stylize", images["content"], images["style2"], "--style",
                       images["style"], "--weights", keras_safetensors, "-o", tmp_path / "out",
                       *SMALL, "--save-iter", 1)
    assert code == 1
    assert_one_line_error(err, "--save-iter")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_nearly_black_mask_is_refused(capsys, tmp_path, images, keras_safetensors):
    mask = np.zeros((480, 640), np.uint8)
    mask[240, 320] = 255  # one white pixel: nothing of it is left at 64 px
    Image.fromarray(mask).save(tmp_path / "mask.png")
    code, _, err = run(capsys, *stylize(images, keras_safetensors, tmp_path / "o.png",
                                        "--style-masks", tmp_path / "mask.png"))
    assert code == 1
    assert_one_line_error(err, "mask.png", "%")
    assert not (tmp_path / "o.png").exists()


def test_convert_output_must_be_safetensors(capsys, tmp_path, keras_h5):
    code, _, err = run(capsys, "convert", keras_h5, "-o", tmp_path / "x.png")
    assert code == 1
    assert_one_line_error(err, "x.png", ".safetensors")
    assert not (tmp_path / "x.png").exists()


def test_a_large_sweep_warns_with_its_cell_count_before_any_work(capsys, tmp_path, images,
                                                                 keras_safetensors, monkeypatch):
    def no_work(*args, **kwargs):
        raise JaxstyleError("stopped before any work")

    monkeypatch.setattr(stylize_cli, "load_network", no_work)
    seeds = ",".join(str(i) for i in range(13))
    code, _, err = run(capsys, *stylize(images, keras_safetensors, tmp_path / "o.png",
                                        "--sweep", f"seed={seeds}", "--sweep",
                                        "style-weight=1,2,3,4,5"))
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("jaxstyle: warning: ") and "65" in lines[0], err
    assert lines[1] == "jaxstyle: error: stopped before any work"


# ------------------------------------------------------------------------------- in the way


@pytest.mark.parametrize("form", ["trailing separator", "existing folder"])
def test_stylize_one_content_into_a_folder_writes_its_stem(capsys, tmp_path, images,
                                                           keras_safetensors, form):
    folder = tmp_path / "out"
    if form == "existing folder":
        folder.mkdir()
    target = str(folder) + (os.sep if form == "trailing separator" else "")
    code, _, err = run(capsys, *stylize(images, keras_safetensors, target))
    assert code == 0, err
    assert sorted(p.name for p in folder.iterdir()) == ["content.png"]


@pytest.fixture
def net_file(tmp_path):
    params = jax.tree.map(np.asarray, transformer.init(jax.random.key(0), 0.25))
    return netfile.save(tmp_path / "net.safetensors", netfile.Net(params, 0.25, ("s.png",), {}, 0))


@pytest.mark.parametrize("form", ["trailing separator", "existing folder"])
def test_apply_one_input_into_a_folder_writes_its_stem(capsys, tmp_path, images, net_file, form):
    folder = tmp_path / "out"
    if form == "existing folder":
        folder.mkdir()
    target = str(folder) + (os.sep if form == "trailing separator" else "")
    code, _, err = run(capsys, "apply", net_file, images["content"], "-o", target, "-q")
    assert code == 0, err
    assert sorted(p.name for p in folder.iterdir()) == ["content.png"]


@pytest.mark.slow
def test_ctrl_c_while_apply_compiles_keeps_the_images_written(tmp_path):
    """`jaxstyle apply` on a folder, one image a batch, Ctrl-C while the first batch compiles: the
    batch in flight is written, the rest is not, one line says so, exit 130."""
    params = jax.tree.map(np.asarray, transformer.init(jax.random.key(0), 0.25))
    net = netfile.save(tmp_path / "net.safetensors", netfile.Net(params, 0.25, ("s.png",), {}, 0))
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        write_random_image(photos / f"{i}.png", (20, 20), i)
    out = tmp_path / "out"
    done = run_with_ctrl_c(["apply", net, photos, "-o", f"{out}/", "--batch-size", 1, "-q"],
                           presses=1)
    assert done.returncode == cli.EXIT_INTERRUPTED, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "interrupted; wrote 1 of 3 image(s)" in lines[0], done.stderr
    assert [p.name for p in out.iterdir()] == ["0.png"]
