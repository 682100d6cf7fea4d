"""`jaxstyle train --temporal-weight`: the stability term against NumPy for a known whole-pixel
shift, the exact flow of a rotation, and a tiny network trained a few steps with the term is more
stable under a shift than without it."""

from __future__ import annotations

import jax
import pytest
import jax.numpy as jnp
import numpy as np

from helpers import assert_one_line_error

from jaxstyle import losses, train, vgg19, warp
from jaxstyle.models import transformer

H, W = 32, 40


def photos(n: int = 2, seed: int = 0) -> np.ndarray:
    """Smooth random images (a small random grid upsampled), float32[n, H, W, 3] in [0, 1]."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(size=(n, 5, 6, 3))
    return np.asarray(jax.image.resize(small, (n, H, W, 3), "bilinear"), np.float32)


def numpy_shift(images: np.ndarray, dx: int, dy: int) -> tuple[np.ndarray, np.ndarray]:
    """out[y, x] = images[y + dy, x + dx] (the edge pixel outside the frame), and the mask of
    where that is inside: float32[H, W]."""
    ys, xs = np.arange(H)[:, None] + dy, np.arange(W)[None, :] + dx
    mask = ((ys >= 0) & (ys < H) & (xs >= 0) & (xs < W)).astype(np.float32)
    return images[:, np.clip(ys, 0, H - 1), np.clip(xs, 0, W - 1)], mask


forward = jax.jit(transformer.forward)


def test_rotation_flow_is_exact():
    image = np.random.default_rng(2).uniform(size=(9, 9, 3)).astype(np.float32)
    flow = warp.affine_flow(9, 9, jnp.zeros(2), jnp.float32(np.pi / 2), jnp.float32(1.0))
    np.testing.assert_allclose(np.asarray(warp.warp(image, flow)), np.rot90(image, 1), atol=1e-5)
    assert float(jnp.min(warp.inside_mask(flow))) == 1.0


def test_temporal_term_against_numpy_for_a_whole_pixel_shift():
    params = transformer.init(jax.random.key(0), 0.25)
    batch = photos()
    dx, dy = 3, -2
    flow = warp.affine_flow(H, W, jnp.asarray([dx, dy], jnp.float32), jnp.float32(0),
                            jnp.float32(1))
    flows = jnp.broadcast_to(flow, (2, H, W, 2))
    out = forward(params, jnp.asarray(batch))
    got = np.asarray(jax.jit(train.temporal_term)(params, jnp.asarray(batch), out, flows))
    # Reference: shift by slicing (outside the frame: the edge pixel, as warp repeats it, masked
    # out anyway), the network on the shifted photos, the masked mean square over H·W·3.
    moved_in, mask = numpy_shift(batch, dx, dy)
    moved_out = np.asarray(forward(params, jnp.asarray(moved_in)), np.float64)
    target, _ = numpy_shift(np.asarray(out, np.float64), dx, dy)
    want = np.sum(mask[None, ..., None] * (moved_out - target) ** 2, axis=(1, 2, 3)) / (H * W * 3)
    assert mask.sum() == (H - 2) * (W - 3)
    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert np.all(want > 0)  # a random network is not shift-equivariant at its borders


def warping_error_under_shift(params, batch, dx: int, dy: int) -> float:
    flow = warp.affine_flow(H, W, jnp.asarray([dx, dy], jnp.float32), jnp.float32(0),
                            jnp.float32(1))
    flows = jnp.broadcast_to(flow, batch.shape[:1] + flow.shape)
    out = forward(params, batch)
    return float(jnp.mean(jax.jit(train.temporal_term)(params, batch, out, flows)))


def test_training_with_the_term_is_more_stable_under_a_shift(keras_safetensors):
    from jaxstyle.config import Config

    vgg = vgg19.load(keras_safetensors)
    # Shallow layers keep the test fast; the CLI's default weights (content 1, style 5).
    cfg = Config().replace(content_layers=("relu1_2",), style_layers=("relu1_1", "relu2_1"),
                           content_weight=1.0, style_weight=5.0, tv_weight=1e-6)
    spec = losses.LossSpec.from_config(cfg)
    style = photos(1, seed=5)
    data = [jnp.asarray(photos(2, seed=10 + i)) for i in range(15)]
    held_out = jnp.asarray(photos(2, seed=99))
    errors = {}
    # Measured at the CLI's default lr 1e-3: with 1e7 (the term as large as the style term at the
    # start) 30 steps lower the error 2.7x; with 1e8, 15 steps 3.2x, 30 steps 9x.
    for weight in (None, 1e8):
        tl = train.make_loss(vgg, [jnp.asarray(style)], [1.0], spec, temporal_weight=weight)
        params = transformer.init(jax.random.key(0), 0.25)
        opt_state = train.init_optimizer(params, 1e-3)
        step = train.make_step(tl)
        params, opt_state = train.replicate((params, opt_state))
        for batch in data:
            params, opt_state, m = step(params, opt_state, train.shard_batch(batch))
            assert bool(m["finite"]) and (("temporal" in m) == (weight is not None))
        # Held-out photos, motions other than the training ones: whole-pixel shifts.
        errors[weight] = np.mean([warping_error_under_shift(params, held_out, dx, dy)
                                  for dx, dy in ((5, 3), (-2, 1), (1, -4))])
    # The network trained with the term moves its output with a moved photo more exactly.
    assert errors[1e8] < 0.5 * errors[None], errors


# ----------------------------------------------------------------------------------------------
# The temporal weight is part of the network: recorded in the NET file, checked on --resume.


@pytest.mark.slow
def test_temporal_weight_is_recorded_and_resume_refuses_another(capsys, keras_safetensors,
                                                                tmp_path):
    from helpers import run_cli as run
    from helpers import write_random_image

    from jaxstyle import netfile

    photo_dir = tmp_path / "photos"
    photo_dir.mkdir()
    for i in range(2):
        write_random_image(photo_dir / f"p{i}.png", (18, 20), i)
    style = write_random_image(tmp_path / "style.png", (20, 20), 7)
    net = tmp_path / "net.safetensors"
    base = ["train", style, "--data", photo_dir, "--weights", keras_safetensors,
            "--image-size", 16, "--batch-size", 2, "--width", 0.25, "--content-layers",
            "relu1_2", "--style-layers", "relu1_1", "-q", "-o", net]
    assert_one_line_error(run(capsys, *base, "--steps", 1, "--change-temporal-weight")[2], "--resume")
    code, _, err = run(capsys, *base, "--steps", 1, "--temporal-weight", 1e3,
                       "--checkpoint-every", 1)
    assert code == 0, err
    recorded = netfile.temporal(netfile.load(net))
    # The weight and the motions it was trained under (train.Motion's documented defaults).
    assert recorded == {"weight": 1e3, "history": None,
                        "motion": {"max_shift": 8.0, "max_degrees": 2.0, "max_scale": 0.03}}
    code, out, _ = run(capsys, "apply", net, "--info")
    assert code == 0 and "temporal weight 1000" in out and "shift <= 8 px" in out, out

    # Another weight (or none: the default 0) on --resume: one line naming the flag to give.
    for other in ([], ["--temporal-weight", 10]):
        assert_one_line_error(run(capsys, *base, "--steps", 2, "--resume", *other)[2],
                 "--temporal-weight 1000", "--change-temporal-weight")
    # Asked for explicitly, it continues, and the file says from which step each weight held.
    code, _, err = run(capsys, *base, "--steps", 2, "--resume", "--change-temporal-weight",
                       "--checkpoint-every", 1)
    assert code == 0, err
    loaded = netfile.load(net)
    assert loaded.steps == 2
    assert netfile.temporal(loaded)["weight"] == 0 and netfile.temporal(loaded)["motion"] is None
    assert netfile.temporal(loaded)["history"] == [[0, 1e3], [1, 0.0]]
    code, out, _ = run(capsys, "apply", net, "--info")
    assert "temporal weight 0" in out and "1000 from step 0" in out, out
    # A network written before the weight was recorded says so.
    legacy = netfile.Net(loaded.params, loaded.width, loaded.styles,
                         {k: v for k, v in loaded.loss.items() if not k.startswith("temporal")},
                         loaded.steps)
    assert netfile.temporal(legacy) is None and "not recorded" in netfile.describe(legacy)
