"""--log-dir: TensorBoard event files that TensorBoard's own reader loads, and metrics.jsonl."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from jaxstyle.logs import LogWriter
from helpers import run_cli as run
from helpers import assert_one_line_error
from helpers import write_random_image as _image

EVERYTHING = {"scalars": 0, "images": 0, "tensors": 0}


def _read(run_dir):
    events = EventAccumulator(str(run_dir), size_guidance=EVERYTHING)
    events.Reload()
    return events


def test_writer_files_load_in_tensorboard(tmp_path):
    log = LogWriter(tmp_path / "logs")
    rng = np.random.default_rng(0)
    image = rng.random((6, 10, 3), dtype=np.float32)
    for run_name, scale in (("a run", 1.0), ("b", 2.0)):
        log.text(run_name, "settings", f"scale {scale}")
        for step in (10, 20):
            log.scalars(run_name, step, {"loss": scale * step, "tv": scale}, {"iteration": step})
        log.image(run_name, "image", image * scale, 20)
    log.close()
    for run_name, scale in (("a_run", 1.0), ("b", 2.0)):
        events = _read(tmp_path / "logs" / run_name)
        assert [(e.step, e.value) for e in events.Scalars("loss/loss")] == [(10, 10 * scale),
                                                                            (20, 20 * scale)]
        assert [e.value for e in events.Scalars("loss/tv")] == [scale, scale]
        (png,) = events.Images("image")
        decoded = np.asarray(Image.open(__import__("io").BytesIO(png.encoded_image_string)))
        expected = np.round(np.clip(image * scale, 0, 1) * 255)
        assert png.step == 20 and np.abs(decoded.astype(float) - expected).max() <= 1
        (text,) = events.Tensors("settings/text_summary")
        assert text.tensor_proto.string_val == [f"scale {scale}".encode()]
    lines = [json.loads(s) for s in (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["run"], r["step"], r["loss"], r["iteration"]) for r in lines] == [
        ("a_run", 10, 10.0, 10), ("a_run", 20, 20.0, 20), ("b", 10, 20.0, 10), ("b", 20, 40.0, 20)]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    return _image(d / "c.png", (24, 32), 0), _image(d / "s.png", (30, 30), 1)


def test_stylize_logs_terms_images_and_settings(capsys, tmp_path, inputs, keras_safetensors):
    content, style = inputs
    logs = tmp_path / "logs"
    code, _, err = run(capsys, "stylize", content, "--style", style, "--weights", keras_safetensors,
                       "-o", tmp_path / "o.png", "--image-size", "32", "--num-iterations", "7",
                       "--style-layers", "relu1_1,relu2_1", "--content-layers", "relu2_1",
                       "--print-iter", "2", "--save-iter", "3", "--style-weight", "321",
                       "--quiet", "--log-dir", logs)
    assert code == 0, err
    records = [json.loads(s) for s in (logs / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6, 7]  # every --print-iter and the last
    events = _read(logs / "c")
    for term in ("loss", "content", "style", "tv"):
        scalars = events.Scalars(f"loss/{term}")
        assert [s.step for s in scalars] == [2, 4, 6, 7]
        np.testing.assert_allclose([s.value for s in scalars], [r[term] for r in records],
                                   rtol=1e-6)
    for r in records:  # the total is the sum of its terms
        assert r["loss"] == pytest.approx(r["content"] + r["style"] + r["tv"], rel=1e-5)
    assert [e.step for e in events.Images("image")] == [3, 6, 7]  # every --save-iter and the end
    # The last logged image is the written output.
    last = events.Images("image")[-1].encoded_image_string
    logged = np.asarray(Image.open(__import__("io").BytesIO(last)))
    assert np.array_equal(logged, np.asarray(Image.open(tmp_path / "o.png")))
    settings = events.Tensors("settings/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"style_weight": 321.0' in settings


def test_a_batch_logs_one_run_per_image(capsys, tmp_path, inputs, keras_safetensors):
    content, style = inputs
    folder = tmp_path / "photos"
    folder.mkdir()
    first = _image(folder / "a.png", (24, 32), 3)
    second = _image(folder / "b.png", (32, 24), 4)  # another shape: its own bucket
    logs = tmp_path / "logs"
    code, _, err = run(capsys, "stylize", folder, "--style", style, "--weights", keras_safetensors,
                       "-o", tmp_path / "out", "--image-size", "32", "--num-iterations", "4",
                       "--style-layers", "relu1_1,relu2_1", "--content-layers", "relu2_1",
                       "--print-iter", "2", "--style-weight", "100", "--quiet", "--log-dir", logs)
    assert code == 0, err
    records = [json.loads(s) for s in (logs / "metrics.jsonl").read_text().splitlines()]
    assert sorted({r["run"] for r in records}) == ["a", "b"]
    for name, path in (("a", first), ("b", second)):
        events = _read(logs / name)
        assert [s.step for s in events.Scalars("loss/loss")] == [2, 4]
        last = events.Images("image")[-1].encoded_image_string  # the end: the written output
        logged = np.asarray(Image.open(__import__("io").BytesIO(last)))
        assert np.array_equal(logged, np.asarray(Image.open(tmp_path / "out" / f"{name}.png")))


def test_unwritable_log_dir_is_one_line_before_any_work(capsys, tmp_path, inputs):
    content, style = inputs
    blocker = tmp_path / "file"
    blocker.write_text("in the way")
    # No weights flag: the network would be downloaded; the error must come before that.
    code, _, err = run(capsys, "stylize", content, "--style", style, "-o", tmp_path / "o.png",
                       "--log-dir", blocker / "logs", "--cache-dir", tmp_path / "cache")
    assert code == 1
    assert_one_line_error(err, "cannot write logs")
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "cache").exists()


def test_a_port_in_use_is_one_line(capsys, tmp_path, inputs):
    content, style = inputs
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = run(capsys, "stylize", content, "--style", style, "-o", tmp_path / "o.png",
                           "--web", str(port), "--cache-dir", tmp_path / "cache")
    assert code == 1
    assert_one_line_error(err, f"127.0.0.1:{port}")
    assert "in use" in err and not (tmp_path / "o.png").exists()


def test_compile_time_is_shown_while_it_happens_and_logged_apart_from_steps(
        capsys, tmp_path, inputs, keras_safetensors):
    # A shape no other test uses (36x48), so this process compiles its programs now.
    content = _image(tmp_path / "c.png", (36, 48), 3)
    logs = tmp_path / "logs"
    code, _, err = run(capsys, "stylize", content, "--style", inputs[1], "--weights",
                       keras_safetensors, "--image-size", "48", "--num-iterations", "4",
                       "--print-iter", "2", "--log-dir", logs, "-o", tmp_path / "o.png")
    assert code == 0, err
    # The bar says what it waits for before the first step of the shape...
    assert "preparing 48x36 (compiles on a shape's first run)" in err
    # ... and the log keeps the time spent making programs apart from the steps'.
    records = [json.loads(s) for s in (logs / "metrics.jsonl").read_text().splitlines()]
    compile_s = [r["compile_s"] for r in records]
    assert compile_s and compile_s[0] > 0 and compile_s == sorted(compile_s)
    assert "s making programs" in err.strip().splitlines()[-1]
