"""Training feed-forward style networks: the step learns a style (judged by an independent PyTorch
style distance), sharded equals single-device, resume equals uninterrupted, and the CLI."""

import dataclasses
import json
import os
import signal
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import reference
from jaxstyle import data, losses, netfile, train
from jaxstyle.config import Config
from jaxstyle.models import transformer
from helpers import run_cli as run
from helpers import CAFFE, assert_one_line_error, random_vgg, run_on_devices, write_random_image

STYLE_LAYERS = ("relu1_1", "relu2_1")
SIZE = 16


def smooth_images(rng, n, size=SIZE):
    """Random smooth photos-like images: 2x2 cells of colour, bilinearly upsampled."""
    cells = rng.random((n, size // 8, size // 8, 3)).astype(np.float32)
    return np.asarray(jax.image.resize(cells, (n, size, size, 3), "linear"))


def stripes(size=SIZE):
    yy, xx = np.mgrid[:size, :size]
    return np.stack([(np.sin(xx / 1.5 + yy / 3) > 0) * 0.9, 0.2 + 0 * xx,
                     (np.cos(yy / 2) > 0) * 0.8], -1)[None].astype(np.float32)


def torch_style_distance(vgg, images, style):
    """Σ over STYLE_LAYERS of the mean squared Gram difference, float64 PyTorch (independent)."""
    params = jax.tree.map(np.asarray, vgg.params)
    f = reference.torch_features(params, CAFFE, np.asarray(images, np.float64), STYLE_LAYERS)
    s = reference.torch_features(params, CAFFE, np.asarray(style, np.float64), STYLE_LAYERS)
    return sum(float(reference.torch_style_loss(f[k], reference.torch_gram(s[k])).mean())
               for k in STYLE_LAYERS)


@pytest.fixture(scope="module")
def vgg():
    return random_vgg("relu2_2")  # deeper than the shared fixture's relu2_1


def tiny_loss(vgg, style):
    cfg = Config().replace(content_layers=("relu2_2",), style_layers=STYLE_LAYERS,
                           content_weight=0.05, style_weight=1.0, tv_weight=0.0)
    return train.make_loss(vgg, [style], [1.0], losses.LossSpec.from_config(cfg))


@pytest.mark.slow
@pytest.mark.torch
def test_a_tiny_network_learns_the_style_and_still_sees_its_input(vgg):
    rng = np.random.default_rng(0)
    photos, unseen, style = smooth_images(rng, 800), smooth_images(rng, 2), stripes()
    tl = tiny_loss(vgg, style)
    initial = transformer.init(jax.random.key(1), width=0.25)
    before = np.asarray(transformer.apply(initial, unseen))
    params = jax.tree.map(jnp.array, initial)
    opt_state = train.init_optimizer(params, 1e-2)
    params, opt_state = train.replicate((params, opt_state))
    step = train.make_step(tl)
    for i in range(200):
        params, opt_state, metrics = step(params, opt_state, train.shard_batch(photos[4 * i:4 * i + 4]))
    assert bool(metrics["finite"])
    after = np.asarray(transformer.apply(params, unseen))
    d_input = torch_style_distance(vgg, unseen, style)
    d_before = torch_style_distance(vgg, before, style)
    d_after = torch_style_distance(vgg, after, style)
    assert d_after < 0.5 * min(d_before, d_input), (d_input, d_before, d_after)
    # Not a constant pattern: two different photos still give clearly different outputs.
    assert np.abs(after[0] - after[1]).mean() > 0.25 * np.abs(unseen[0] - unseen[1]).mean()


def test_nan_step_keeps_the_parameters(vgg):
    tl = tiny_loss(vgg, stripes())  # the same loss and batch shape: the compiled step is reused
    params = transformer.init(jax.random.key(2), width=0.25)
    kept = jax.tree.map(np.asarray, params)
    opt_state = train.init_optimizer(params, 1e-3)
    bad = np.array(smooth_images(np.random.default_rng(1), 4))
    bad[0, 0, 0, 0] = np.nan
    params, _, metrics = train.make_step(tl)(*train.replicate((params, opt_state)),
                                             train.shard_batch(bad))
    assert not bool(metrics["finite"])
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, params), kept)


@pytest.mark.slow
def test_bfloat16_step_follows_the_float32_objective(vgg):
    """--compute-dtype bfloat16: the loss and the parameter gradient of a batch agree with the
    float32 ones to bfloat16's precision, the parameters stay float32, and training still learns."""
    style, photos = stripes(), smooth_images(np.random.default_rng(3), 4)
    params = transformer.init(jax.random.key(4), width=0.25)
    tl32 = tiny_loss(vgg, style)
    tl16 = dataclasses.replace(tl32, dtype="bfloat16")
    objective = lambda tl: jax.value_and_grad(lambda p: train.loss(p, photos, tl)[0])(params)  # noqa
    (l32, g32), (l16, g16) = objective(tl32), objective(tl16)
    assert float(l16) == pytest.approx(float(l32), rel=3e-2)
    flat32, flat16 = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)]) for g in (g32, g16))
    assert flat16.dtype == np.float32
    # bfloat16 keeps 8 bits of mantissa and the style term is a difference of Grams, so the layers'
    # kernel gradients agree to a cosine of 0.88-0.99 (0.965 overall), not to float32 digits. A
    # wrong cast or a dropped term gives ~0.
    cosine = flat32 @ flat16 / (np.linalg.norm(flat32) * np.linalg.norm(flat16))
    assert cosine > 0.9, cosine
    # A few bfloat16 steps lower the (float32) loss of the batch and keep float32 parameters.
    p, opt_state = train.replicate((jax.tree.map(jnp.array, params), train.init_optimizer(params, 1e-2)))
    step = train.make_step(tl16)
    for _ in range(20):
        p, opt_state, metrics = step(p, opt_state, train.shard_batch(photos))
    assert bool(metrics["finite"]) and all(x.dtype == jnp.float32 for x in jax.tree.leaves(p))
    assert float(train.loss(p, photos, tl32)[0]) < 0.7 * float(l32)


SHARDED = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np
    from jaxstyle import batch, losses, train
    from jaxstyle.config import Config
    from jaxstyle.models import transformer, vgg19
    vgg = vgg19.init(jax.random.key(0), vgg19.Preprocessing(True, 255.0, (103.9, 116.8, 123.7)),
                     last_layer="relu1_2")
    rng = np.random.default_rng(0)
    photos = rng.random((12, 16, 16, 3), dtype=np.float32)
    cfg = Config().replace(content_layers=("relu1_2",), style_layers=("relu1_1",),
                           content_weight=0.05, style_weight=1.0, tv_weight=1e-6)
    tl = train.make_loss(vgg, [rng.random((1, 16, 16, 3), dtype=np.float32)], [1.0],
                         losses.LossSpec.from_config(cfg))
    meshes = [batch.device_mesh(jax.devices()[:1]), batch.device_mesh(jax.devices())]
    steps = [train.make_step(tl, mesh) for mesh in meshes]
    params = transformer.init(jax.random.key(1), 0.25)
    state = jax.device_get((params, train.init_optimizer(params, 1e-2)))
    record = {"devices": [], "loss": [], "mu": [], "nu": []}
    for i in range(3):
        # Both splits step from the same state: what the split must not change is the batch's
        # loss and gradient (here Adam's moments of it); Adam itself is elementwise.
        results = []
        for mesh, step in zip(meshes, steps):
            b = train.shard_batch(photos[4 * i:4 * i + 4], mesh)
            results.append(jax.device_get(step(*train.replicate(state, mesh), b)))
            record["devices"].append(len(b.sharding.device_set))
        (p1, o1, m1), (p2, o2, m2) = results
        record["loss"].append([float(m1["loss"]), float(m2["loss"])])
        for moment in ("mu", "nu"):
            pairs = [(np.asarray(a), np.asarray(b)) for (k, a), b in zip(
                jax.tree_util.tree_leaves_with_path(o1), jax.tree.leaves(o2))
                if f".{moment}[" in jax.tree_util.keystr(k)]
            scale = float(max(np.abs(a).max() for a, _ in pairs))
            record[moment].append(max(float(np.abs(a - b).max()) for a, b in pairs) / scale)
        state = (p1, o1)
    print(json.dumps(record))
""")


@pytest.mark.slow
def test_sharded_over_two_simulated_devices_equals_one_device():
    record = run_on_devices(SHARDED, devices=2)
    assert record["devices"] == [1, 2] * 3
    # Gradients (Adam's moments), not updated parameters: a gradient entry at rounding-noise level
    # (a conv bias right before an instance norm; by chance a kernel entry) gets a full Adam step,
    # in a direction that differs between splits, and over a few steps that moves the outputs.
    assert max(record["mu"]) < 1e-4 and max(record["nu"]) < 1e-4, record
    for one, two in record["loss"]:
        np.testing.assert_allclose(one, two, rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# Data loading.


def _write(path, shape, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_random_image(path, shape, seed)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    for i in range(5):
        _write(root / ("sub" if i % 2 else "") / f"p{i}.png", (20 + 2 * i, 30 - i), i)
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "notes.txt").write_text("ignored")
    return root


def test_loader_crops_shuffles_per_epoch_skips_and_resumes(photos):
    files = data.list_images(photos)
    assert len(files) == 6 and any(f.parent.name == "sub" for f in files)
    with data.Loader(files, 2, 16, seed=3) as loader:
        batches = [b for _, b in zip(range(9), loader)]
        skipped = list(loader.skipped)
    assert all(b.images.shape == (2, 16, 16, 3) for b in batches)
    assert skipped and all(p.name == "broken.jpg" for p in skipped)
    epochs = [[loader.path_at(e * 6 + i).name for i in range(6)] for e in range(3)]
    assert all(sorted(e) == sorted(f.name for f in files) for e in epochs)
    assert len({tuple(e) for e in epochs}) > 1  # reshuffled
    # Started at a saved position, the loader gives the same batches as the uninterrupted one.
    with data.Loader(files, 2, 16, seed=3, position=batches[3].position) as resumed:
        again = [b for _, b in zip(range(5), resumed)]
    for a, b in zip(batches[4:], again):
        np.testing.assert_array_equal(a.images, b.images)
        assert a.position == b.position
    # Centre crop of the short-side resize: a wide image keeps its middle.
    wide = _write(photos.parent / "wide.png", (16, 48), 9)
    pixels = np.asarray(Image.open(wide), np.float32) / 255
    np.testing.assert_allclose(data.load_square(wide, 16), pixels[:, 16:32], atol=1e-6)


# ----------------------------------------------------------------------------------------------
# The CLI: train, resume, apply.


TINY = ["--image-size", 16, "--batch-size", 2, "--width", 0.25, "--content-layers", "relu2_1",
        "--style-layers", "relu1_1,relu2_1", "--learning-rate", 1e-2, "-q"]


@pytest.fixture(scope="module")
def style_file(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("style") / "style.png", (20, 20), 7)


@pytest.mark.slow
def test_train_resume_equals_uninterrupted_and_apply(capsys, photos, style_file, keras_safetensors,
                                                    tmp_path):
    base = ["train", style_file, "--data", photos, "--weights", keras_safetensors, *TINY]
    full = tmp_path / "full.safetensors"
    logs = tmp_path / "logs"
    code, _, err = run(capsys, *base, "--steps", 4, "-o", full, "--log-dir", logs,
                       "--print-iter", 2)
    assert code == 0, err
    assert "skipped" in err and "broken.jpg" in err
    # --log-dir: the loss terms every --print-iter steps, in metrics.jsonl and for TensorBoard.
    records = [json.loads(line) for line in (logs / "metrics.jsonl").read_text().splitlines()]
    assert [(r["run"], r["step"]) for r in records] == [("full", 2), ("full", 4)]
    for r in records:
        assert r["loss"] == pytest.approx(r["content"] + r["style"] + r["tv"], rel=1e-5)
    events = EventAccumulator(str(logs / "full"), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("loss/loss")] == [2, 4]
    part = tmp_path / "part.safetensors"
    code, _, err = run(capsys, *base, "--steps", 2, "--checkpoint-every", 2, "-o", part)
    assert code == 0, err
    code, _, err = run(capsys, *base, "--steps", 4, "--resume", "-o", part)
    assert code == 0, err
    a, b = netfile.load(full), netfile.load(part)
    assert a.steps == b.steps == 4 and a.width == 0.25 and a.styles == ("style.png",)
    assert a.loss["content_layers"] == ["relu2_1"]
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)

    # Ctrl-C (a real SIGINT to this process) during step 3, no --checkpoint-every: step 3 still
    # completes and counts, the network and a checkpoint of 3 steps are written, one line says so,
    # and --resume continues to the uninterrupted result.
    cut = tmp_path / "cut.safetensors"
    real_step = train.make_step

    def interrupted(tl, mesh=None):
        step, calls = real_step(tl, mesh), []

        def call(*args):
            calls.append(1)
            if len(calls) == 3:
                os.kill(os.getpid(), signal.SIGINT)
            return step(*args)
        return call

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "make_step", interrupted)
        code, _, err = run(capsys, *base, "--steps", 4, "-o", cut)
    assert code == 130
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "interrupted at step 3" in lines[0] and "--resume" in lines[0], err
    assert netfile.load(cut).steps == 3
    assert cut.with_name(cut.name + ".ckpt.npz").exists()
    code, _, err = run(capsys, *base, "--steps", 4, "--resume", "-o", cut)
    assert code == 0, err
    jax.tree.map(np.testing.assert_array_equal, a.params, netfile.load(cut).params)

    # apply: a folder in, a folder out; batched equals one by one; a bad input is skipped.
    frames = tmp_path / "frames"
    for i, shape in enumerate([(16, 20), (16, 20), (16, 20), (12, 12)]):
        _write(frames / f"f{i}.png", shape, 20 + i)
    (frames / "f9.png").write_bytes(b"broken")
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "apply", full, frames, "-o", out, "--batch-size", 2, "-q")
    assert code == 1 and "f9.png" in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["f0.png", "f1.png", "f2.png", "f3.png"]
    params = jax.tree.map(jnp.asarray, a.params)
    for i in range(4):
        image = np.asarray(Image.open(frames / f"f{i}.png"), np.float32)[None] / 255
        alone = np.asarray(transformer.apply(params, image))[0]
        written = np.asarray(Image.open(out / f"f{i}.png"), np.float32) / 255
        assert np.abs(written - alone).max() <= 1 / 255 + 1e-6
    single = tmp_path / "one.jpg"
    code, _, err = run(capsys, "apply", full, frames / "f0.png", "-o", single, "--image-size", 24,
                       "--original-colors", "-q")
    assert code == 0 and Image.open(single).size == (24, 19), err
    # 16 bits per channel: PNG outputs whatever the input's format, the forward pass unrounded.
    import png  # an independent decoder: Pillow reads a 16-bit RGB PNG as 8 bits

    Image.open(frames / "f1.png").save(frames / "f1.jpg", quality=95)
    deep = tmp_path / "deep"
    code, _, err = run(capsys, "apply", full, frames / "f0.png", frames / "f1.jpg", "-o", deep,
                       "--bit-depth", 16, "-q")
    assert code == 0 and sorted(p.name for p in deep.iterdir()) == ["f0.png", "f1.png"], err
    image = np.asarray(Image.open(frames / "f0.png"), np.float32)[None] / 255
    alone = np.asarray(transformer.apply(params, image))[0]
    width, height, rows, _ = png.Reader(filename=str(deep / "f0.png")).read()
    written = np.array([list(r) for r in rows], np.float32).reshape(height, width, 3) / 65535
    assert np.abs(written - np.clip(alone, 0, 1)).max() <= 0.5 / 65535 + 1e-5


def test_bad_inputs_are_one_line_errors(capsys, photos, style_file, keras_safetensors, tmp_path):
    base = ["train", style_file, "--weights", keras_safetensors, *TINY, "-o", tmp_path / "n.safetensors"]
    assert_one_line_error(run(capsys, *base, "--data", tmp_path / "missing")[2], "not found")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run(capsys, *base, "--data", tmp_path / "empty")[2], "no image files")
    code, _, err = run(capsys, *base, "--data", photos, "--batch-size", 8)
    assert code == 1
    assert_one_line_error(err, "fewer than one batch")
    few = tmp_path / "few"  # enough files for a batch of 2, but only one of them is a photo
    _write(few / "ok.png", (20, 20), 1)
    (few / "bad1.jpg").write_bytes(b"not a jpeg")
    (few / "bad2.png").write_bytes(b"not a png")
    code, _, err = run(capsys, *base, "--data", few)
    assert code == 1
    assert_one_line_error(err, "only 1 of the 3", "fewer than one batch of 2")
    code, _, err = run(capsys, *base, "--data", photos, "--resume")
    assert_one_line_error(err, "no checkpoint")
    code, _, err = run(capsys, "apply", keras_safetensors, photos, "-o", tmp_path / "o")
    assert code == 1
    assert_one_line_error(err, "not a jaxstyle network file")
    code, _, err = run(capsys, "apply", tmp_path / "nothing.safetensors", photos, "-o", tmp_path / "o")
    assert_one_line_error(err, "not found")


def test_nan_loss_is_one_line_and_keeps_the_last_finite_network(capsys, photos, style_file,
                                                                keras_safetensors, tmp_path,
                                                                monkeypatch):
    real = train.make_step

    def poisoned(tl, mesh=None):  # step 2 sees a NaN image: its loss is NaN
        step, calls = real(tl, mesh), []

        def call(params, opt_state, batch):
            calls.append(1)
            if len(calls) == 2:
                batch = batch * jnp.nan
            return step(params, opt_state, batch)
        return call

    monkeypatch.setattr(train, "make_step", poisoned)
    out = tmp_path / "nan.safetensors"
    code, _, err = run(capsys, "train", style_file, "--data", photos, "--weights",
                       keras_safetensors, *TINY, "--steps", 4, "-o", out)
    assert code == 1
    assert_one_line_error(err, "NaN", "--style-weight")
    net = netfile.load(out)
    assert net.steps == 1 and all(np.isfinite(x).all() for x in jax.tree.leaves(net.params))
