"""The `jaxstyle` command end to end on tiny images with synthetic weights, and every bad input."""

from __future__ import annotations


import jax
import numpy as np
import pytest
from PIL import Image

from helpers import run_cli as run
from helpers import assert_one_line_error, cache_events_of_cli, write_random_image
from jaxstyle import cli, download
from jaxstyle import stylize as stylize_lib

FAST = ["--image-size", "32", "--num-iterations", "4", "--quiet"]


def _write_image(path, shape=(24, 32), seed=0):
    return write_random_image(path, shape, seed)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    return {"content": _write_image(d / "content.png"),
            "style": _write_image(d / "style.jpg", (30, 30), seed=1),
            "style2": _write_image(d / "style2.png", (20, 36), seed=2)}


def stylize_args(images, weights, output, *extra):
    return ["stylize", images["content"], "--style", images["style"], "--weights", weights,
            "-o", output, *FAST, *extra]


def test_stylize_writes_output_snapshots_and_gif(capsys, images, keras_safetensors, tmp_path):
    out = tmp_path / "out" / "result.png"
    code, stdout, err = run(capsys, *stylize_args(images, keras_safetensors, out, "--save-iter", "2",
                                                  "--gif", tmp_path / "evo.gif", "--gif-every", "2"))
    assert code == 0, err
    with Image.open(out) as im:
        assert im.size == (32, 24)  # long side = --image-size, aspect kept
    assert (tmp_path / "out" / "result_2.png").exists()
    with Image.open(tmp_path / "evo.gif") as gif:
        assert gif.n_frames >= 2
    assert not (tmp_path / "out" / "result.png.resume.npz").exists()


def test_all_features_together(capsys, images, keras_safetensors, tmp_path):
    out = tmp_path / "o.jpg"
    code, _, err = run(capsys, "stylize", images["content"], "--style", images["style"],
                       images["style2"], "--style-blend-weights", "3,1", "--weights",
                       keras_safetensors, "-o", out, "--scales", "24,32", "--num-iterations", "3",
                       "--original-colors", "--pooling", "avg", "--optimizer", "adam",
                       "--style-layers", "relu1_1,relu2_1", "--style-layer-weights", "1,2",
                       "--normalization", "gatys", "--init", "noise", "--style-scale", "0.5",
                       "--quiet")
    assert code == 0, err
    with Image.open(out) as im:
        assert im.size == (32, 24)


def test_same_seed_same_image(capsys, images, keras_safetensors, tmp_path):
    outs = [tmp_path / "a.png", tmp_path / "b.png"]
    for out in outs:
        code, _, err = run(capsys, *stylize_args(images, keras_safetensors, out, "--init", "noise",
                                                 "--seed", "7"))
        assert code == 0, err
    a, b = (np.asarray(Image.open(p)) for p in outs)
    np.testing.assert_array_equal(a, b)


def test_16_bit_output_is_the_8_bit_image_before_rounding(capsys, images, keras_safetensors,
                                                          tmp_path):
    import png  # an independent decoder: Pillow reads a 16-bit RGB PNG as 8 bits

    outs = {8: tmp_path / "a.png", 16: tmp_path / "b.png"}
    for depth, out in outs.items():
        code, _, err = run(capsys, *stylize_args(images, keras_safetensors, out, "--seed", "7",
                                                 "--bit-depth", depth))
        assert code == 0, err
    eight = np.asarray(Image.open(outs[8]), np.float64) / 255
    width, height, rows, info = png.Reader(filename=str(outs[16])).read()
    assert info["bitdepth"] == 16 and (width, height) == (32, 24)
    sixteen = np.array([list(r) for r in rows], np.float64).reshape(height, width, 3) / 65535
    # The same float image under both roundings; 16 bits keep what 8 bits round away.
    assert np.abs(sixteen - eight).max() <= 0.5 / 255 + 0.5 / 65535 + 1e-9
    assert np.abs(sixteen - eight).mean() > 0.1 / 255


def test_ctrl_c_keeps_latest_image_and_resume_finishes(capsys, images, keras_safetensors, tmp_path,
                                                       monkeypatch):
    real = stylize_lib.stylize_batch

    def interrupted(*args, on_progress=None, **kwargs):
        def progress(p):
            on_progress(p)
            if p.iteration >= 2:
                raise KeyboardInterrupt
        return real(*args, on_progress=progress, **kwargs)

    out = tmp_path / "r.png"
    monkeypatch.setattr(stylize_lib, "stylize_batch", interrupted)
    code, _, err = run(capsys, *stylize_args(images, keras_safetensors, out, "--print-iter", "2"))
    assert code == cli.EXIT_INTERRUPTED and "interrupted" in err
    assert out.exists() and (tmp_path / "r.png.resume.npz").exists()
    monkeypatch.setattr(stylize_lib, "stylize_batch", real)
    code, _, err = run(capsys, *stylize_args(images, keras_safetensors, out, "--resume"))
    assert code == 0, err
    assert not (tmp_path / "r.png.resume.npz").exists()


def device_out_of_memory():
    return jax.errors.JaxRuntimeError(
        "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 68719476736 bytes.\nmore")


def test_out_of_memory_at_a_larger_scale_keeps_the_smaller_scales_image(
        capsys, images, keras_safetensors, tmp_path, monkeypatch):
    real = stylize_lib.stylize_batch

    def runs_out_at_second_scale(*args, on_progress=None, **kwargs):
        def progress(p):
            if p.scale_index == 1:
                raise device_out_of_memory()
            on_progress(p)
        return real(*args, on_progress=progress, **kwargs)

    out = tmp_path / "oom.png"
    monkeypatch.setattr(stylize_lib, "stylize_batch", runs_out_at_second_scale)
    code, _, err = run(capsys, *stylize_args(images, keras_safetensors, out, "--scales", "24,32"))
    assert code == 1
    assert_one_line_error(err, "out of memory", "68719476736 bytes", str(out), "--image-size",
                          "--lbfgs-memory", "XLA_PYTHON_CLIENT_MEM_FRACTION")
    with Image.open(out) as im:  # the finished first scale's image
        assert max(im.size) == 24
    assert not (tmp_path / "oom.png.resume.npz").exists()


def test_out_of_memory_before_any_image_writes_nothing(capsys, images, keras_safetensors, tmp_path,
                                                       monkeypatch):
    def runs_out(*args, **kwargs):
        raise device_out_of_memory()

    monkeypatch.setattr(stylize_lib, "stylize_batch", runs_out)
    out = tmp_path / "none.png"
    code, _, err = run(capsys, *stylize_args(images, keras_safetensors, out))
    assert code == 1
    assert_one_line_error(err, "out of memory", "--image-size")
    assert not out.exists()


def test_resume_without_checkpoint_is_an_error(capsys, images, keras_safetensors, tmp_path):
    code, _, err = run(capsys, *stylize_args(images, keras_safetensors, tmp_path / "x.png",
                                             "--resume"))
    assert code == 1
    assert_one_line_error(err, "--resume")


def test_nan_loss_stops_keeps_last_finite_image_and_names_the_weight(capsys, images,
                                                                     keras_safetensors, tmp_path):
    out = tmp_path / "nan.png"
    code, _, err = run(capsys, *stylize_args(images, keras_safetensors, out, "--style-weight",
                                             "1e38"))
    assert code == 1
    assert_one_line_error(err, "NaN or infinite", "--style-weight")
    with Image.open(out) as im:  # the last finite image: here the starting content image
        assert np.isfinite(np.asarray(im, np.float32)).all()


@pytest.mark.slow
def test_batch_of_files_skips_bad_ones(capsys, images, keras_safetensors, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    _write_image(folder / "a.png", (24, 32), seed=3)
    _write_image(folder / "b.png", (32, 24), seed=4)
    (folder / "broken.jpg").write_text("not an image")
    outdir = tmp_path / "stylized"
    code, stdout, err = run(capsys, "stylize", folder, images["content"], "--style", images["style"],
                            images["style2"], "--all-pairs", "--weights", keras_safetensors,
                            "-o", outdir, *FAST, "--batch-size", "2")
    assert code == 1  # something was skipped
    assert "broken.jpg" in err and "Traceback" not in err
    written = sorted(p.name for p in outdir.iterdir())
    assert written == sorted(f"{c}__{s}.png" for c in ("a", "b", "content")
                             for s in ("style", "style2"))


def test_convert_command(capsys, keras_h5, tmp_path):
    dst = tmp_path / "w" / "vgg.safetensors"
    code, stdout, err = run(capsys, "convert", keras_h5, "-o", dst)
    assert code == 0 and dst.exists() and "keras" in stdout


def test_convert_bad_file_writes_nothing(capsys, tmp_path):
    bad = tmp_path / "notes.pth"
    bad.write_text("hello")
    dst = tmp_path / "out.safetensors"
    code, _, err = run(capsys, "convert", bad, "-o", dst)
    assert code == 1 and not dst.exists()
    assert_one_line_error(err)


def test_offline_download_is_one_clear_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(download, "DEFAULT_URL", "http://127.0.0.1:9/vgg19_notop.h5")
    code, _, err = run(capsys, "weights", "download", "--cache-dir", tmp_path / "cache")
    assert code == 1
    assert_one_line_error(err, "http://127.0.0.1:9/vgg19_notop.h5", "jaxstyle convert")
    assert not any((tmp_path / "cache").glob("*.h5"))


def test_hand_placed_unknown_keras_file_is_one_warning_line(capsys, tmp_path, keras_h5):
    cache = tmp_path / "cache"
    cache.mkdir()
    placed = cache / download.DEFAULT_URL.rsplit("/", 1)[-1]
    placed.write_bytes(keras_h5.read_bytes())  # synthetic weights: not the known file's md5
    code, out, err = run(capsys, "weights", "download", "--cache-dir", cache)
    assert code == 0 and "weights ready" in out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxstyle: warning: ")
    assert str(placed) in lines[0] and "not the known Keras file" in lines[0]


def _bad_input_cases(images, weights, tmp_path):
    text = tmp_path / "text.jpg"
    text.write_text("not an image")
    truncated = tmp_path / "truncated.png"
    data = images["content"].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a directory should be")
    corrupt_weights = tmp_path / "corrupt.safetensors"
    corrupt_weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    c, s = images["content"], images["style"]
    out = tmp_path / "out.png"
    return {
        "missing content": (["stylize", tmp_path / "nope.jpg", "--style", s, "-o", out], "not found"),
        "non-image content": (["stylize", text, "--style", s, "-o", out], "text.jpg"),
        "truncated content": (["stylize", truncated, "--style", s, "-o", out], "truncated"),
        "missing style": (["stylize", c, "--style", tmp_path / "nope.png", "-o", out], "nope.png"),
        "output is input": (["stylize", c, "--style", s, "-o", c], "overwrite"),
        "output dir blocked": (["stylize", c, "--style", s, "-o", blocker / "o.png"], "blocker"),
        "unknown format": (["stylize", c, "--style", s, "-o", tmp_path / "o.xyz"], ".xyz"),
        "unknown layer": (["stylize", c, "--style", s, "-o", out, "--style-layers", "relu9_9"],
                          "relu9_9"),
        "layer weights count": (["stylize", c, "--style", s, "-o", out, "--style-layer-weights",
                                 "1,2"], "layer weights"),
        "zero size": (["stylize", c, "--style", s, "-o", out, "--image-size", "0"], "image-size"),
        "tiny size": (["stylize", c, "--style", s, "-o", out, "--image-size", "8"], "16"),
        "negative weight": (["stylize", c, "--style", s, "-o", out, "--style-weight", "-1"],
                            "style-weight"),
        "zero iterations": (["stylize", c, "--style", s, "-o", out, "--num-iterations", "0"],
                            "num-iterations"),
        "missing weights": (["stylize", c, "--style", s, "-o", out, "--weights",
                             tmp_path / "none.safetensors"], "none.safetensors"),
        "corrupt weights": (["stylize", c, "--style", s, "-o", out, "--weights", corrupt_weights],
                            "corrupt.safetensors"),
        "init image missing": (["stylize", c, "--style", s, "-o", out, "--init", "image"],
                               "--init-image"),
        "16 bits not png": (["stylize", c, "--style", s, "-o", tmp_path / "o.jpg", "--bit-depth",
                             "16"], "o.png"),
    }


CASES = ["missing content", "non-image content", "truncated content", "missing style",
         "output is input", "output dir blocked", "unknown format", "unknown layer",
         "layer weights count", "zero size", "tiny size", "negative weight", "zero iterations",
         "missing weights", "corrupt weights", "init image missing", "16 bits not png"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_writes_nothing(capsys, images, keras_safetensors, tmp_path, case):
    argv, fragment = _bad_input_cases(images, keras_safetensors, tmp_path)[case]
    if "--weights" not in argv:
        argv += ["--weights", keras_safetensors]
    before = {p: p.stat().st_mtime_ns for p in images.values()}
    code, stdout, err = run(capsys, argv[0], *FAST, *argv[1:])  # the case's flags win
    assert code in (1, 2)
    assert_one_line_error(err, fragment)
    assert not (tmp_path / "out.png").exists()
    assert {p: p.stat().st_mtime_ns for p in images.values()} == before  # inputs untouched


# Runs the CLI in a fresh process and prints how many compiled programs came from JAX's persistent
# cache and how many had to be compiled and stored.
@pytest.mark.slow
def test_second_run_loads_its_programs_from_the_compilation_cache(images, keras_safetensors,
                                                                   tmp_path):
    cache = tmp_path / "cache"
    args = lambda out, *extra: [*stylize_args(images, keras_safetensors, tmp_path / out),
                                "--cache-dir", cache, *extra]
    # (The first run may already hit: eager ops from two call sites can compile to one program.)
    hits, compiled = cache_events_of_cli(*args("first.png"))
    assert compiled > 0
    assert any((cache / "xla").iterdir())
    hits, misses = cache_events_of_cli(*args("second.png"))
    assert misses == 0 and hits >= compiled
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "first.png")),
                                  np.asarray(Image.open(tmp_path / "second.png")))
    assert cache_events_of_cli(*args("third.png", "--no-compile-cache")) == (0, 0)
