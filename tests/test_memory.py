"""A run too big to fit is refused up front with one line that names a size that fits."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from jaxstyle import cli, memory
from jaxstyle.config import Config
from jaxstyle.errors import JaxstyleError

GIB = 2**30


def test_estimate_grows_with_size_history_and_batch_and_the_named_size_fits():
    cfg = Config()
    small, big = memory.run_bytes(cfg, 256, 256), memory.run_bytes(cfg, 512, 512)
    assert memory.FIXED_BYTES < small < big
    # The L-BFGS history at 512², memory 100: 2·100·512²·12 bytes = 0.59 GiB (XLA's temporaries
    # do not grow with it: the history is updated in place).
    per_pair = 2 * 512**2 * 12
    assert big - memory.run_bytes(Config().replace(lbfgs_memory=1), 512, 512) == 99 * per_pair
    # In bfloat16 both take half.
    half = memory.run_bytes(Config().replace(lbfgs_history_dtype="bfloat16"), 512, 512)
    assert big - half == 100 * per_pair // 2
    assert memory.run_bytes(cfg, 512, 512, problems=4) > 3 * (big - memory.FIXED_BYTES)
    available = 8 * GIB
    size = memory.largest_fitting_size(cfg, 3000, 4000, available)
    h, w = round(3000 * size / 4000), size
    assert memory.run_bytes(cfg, h, w) <= available < memory.run_bytes(cfg, h + 12, w + 16)
    with pytest.raises(JaxstyleError, match=f"Config.image_size={size} would fit"):
        memory.check_fits(cfg, 1500 * 3, 2000 * 3, available, "this host")
    memory.check_fits(cfg, 3 * size // 4, size, available, "this host")  # fits: no error


def test_huge_image_size_is_one_line_before_any_work(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for name in ("photo.jpg", "s.jpg"):
        Image.fromarray((rng.random((30, 40, 3)) * 255).astype(np.uint8)).save(tmp_path / name)
    code = cli.main(["stylize", str(tmp_path / "photo.jpg"), "--style", str(tmp_path / "s.jpg"),
                     "--image-size", "200000", "-o", str(tmp_path / "out.png"),
                     "--weights", str(tmp_path / "missing.safetensors")])  # never reached
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("jaxstyle: error: "), err
    assert "200000x150000" in lines[0] and "would fit" in lines[0] and "Traceback" not in err
    assert not (tmp_path / "out.png").exists()


def test_remat_blocks_give_the_same_features_and_image_gradient():
    """`VGG.with_remat` (jax.checkpoint around each block) against the Flax module's path: the
    same operations recomputed, so equal to float32 rounding (bound 1e-5 relative: XLA may fuse
    the recomputed block differently)."""
    import jax
    import jax.numpy as jnp

    from jaxstyle import sources
    from jaxstyle.models import vgg19

    vgg = vgg19.prepare(vgg19.init(jax.random.key(0), sources.TORCHVISION, "relu3_1"))
    x = jax.random.uniform(jax.random.key(1), (1, 32, 32, 3))
    layers = ("relu1_1", "relu2_1", "relu3_1")

    def loss(v, image):
        feats = vgg19.features(v, image, layers)
        return sum(jnp.sum(f**2) for f in feats.values())

    plain = vgg19.features(vgg, x, layers)
    remat = vgg19.features(vgg.with_remat(), x, layers)
    for name in layers:
        np.testing.assert_allclose(remat[name], plain[name], rtol=1e-5, atol=1e-5)
    g_plain = jax.grad(loss, argnums=1)(vgg, x)
    g_remat = jax.jit(jax.grad(loss, argnums=1))(vgg.with_remat(), x)
    scale = float(jnp.max(jnp.abs(g_plain)))
    assert float(jnp.max(jnp.abs(g_remat - g_plain))) <= 1e-5 * scale


def test_sizes_parse_in_decimal_and_binary_units_and_a_bad_one_is_one_line():
    assert memory.parse_size("24GB") == 24 * 10**9
    assert memory.parse_size("512MiB") == 512 * 2**20
    assert memory.parse_size("1.5GiB") == 3 * 2**29
    assert memory.parse_size("4096") == 4096
    for bad in ("24 gigs", "GB", "-1GB", "0", ""):
        with pytest.raises(JaxstyleError, match="not a size") as e:
            memory.parse_size(bad)
        assert "\n" not in str(e.value)


def test_the_plan_picks_one_device_then_several_then_tiles_then_refuses():
    cfg = Config()
    small = memory.plan(cfg, 512, 512, 8 * GIB)
    assert small.mode == "one" and small.need == memory.run_bytes(cfg, 512, 512)
    # 2896x2172 (crowsonkb's headline) needs more than 24 GiB on one device ...
    assert memory.run_bytes(cfg, 2172, 2896) > 24 * GIB
    four = memory.plan(cfg, 2172, 2896, 24 * GIB, devices=4)
    # ... and fits on 4, each holding a quarter of the work plus the overhead and fixed part.
    assert four.mode == "devices" and four.devices == 4 and four.need <= 24 * GIB
    assert four.need == memory.sharded_bytes(cfg, 2172, 2896, 4)
    tiled = memory.plan(cfg, 2172, 2896, 24 * GIB, devices=1)
    assert tiled.mode == "tiles" and memory.MIN_TILE <= tiled.tile < 2896
    assert memory.tiled_bytes(cfg, 2172, 2896, tiled.tile) <= 24 * GIB
    # A cap (--max-memory) below what the devices have decides.
    with pytest.raises(JaxstyleError, match="would fit") as e:
        memory.plan(cfg, 512, 512, 64 * GIB, where="this host",
                    max_memory=memory.run_bytes(cfg, 512, 512) - 1, modes=("one",))
    assert "capped at" in str(e.value) and "\n" not in str(e.value)
    # Where only one device may be used, the refusal names the size that fits, as check_fits.
    with pytest.raises(JaxstyleError, match="would fit"):
        memory.plan(cfg, 2172, 2896, 24 * GIB, devices=4, modes=("one",))
    line = four.line(2896, 2172)
    assert "rows split over 4 devices" in line and "\n" not in line


def test_max_memory_flag_refuses_in_one_line_and_rejects_a_bad_value(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for name in ("photo.jpg", "s.jpg"):
        Image.fromarray((rng.random((30, 40, 3)) * 255).astype(np.uint8)).save(tmp_path / name)
    base = ["stylize", str(tmp_path / "photo.jpg"), "--style", str(tmp_path / "s.jpg"),
            "-o", str(tmp_path / "out.png"), "--weights", str(tmp_path / "missing.safetensors")]
    for extra, expected in ((["--max-memory", "3GB", "--image-size", "2000"], "would fit"),
                            (["--max-memory", "lots"], "not a size")):
        try:
            code = cli.main(base + extra)
        except SystemExit as e:  # argparse's own exit on a bad value, after its one line
            code = e.code
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert code != 0 and len(lines) == 1 and expected in lines[0], err
        assert "Traceback" not in err
    assert not (tmp_path / "out.png").exists()


def test_max_pooling_gradient_equals_jax_own_including_ties():
    """`kernels.pool2x2`'s custom VJP (no float32 mask of the input kept) against JAX's gradient
    of the plain reshape-and-max, on inputs with many tied maxima (values on a 0.5 grid) and odd
    sizes: exactly equal (the same selections and the same equal split between ties)."""
    import jax
    import jax.numpy as jnp

    from jaxstyle import kernels

    def plain(x):
        b, h, w, c = x.shape
        return x[:, :h // 2 * 2, :w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))

    rng = np.random.default_rng(0)
    x = jnp.asarray(np.round(rng.standard_normal((2, 7, 9, 5)) * 2) / 2, jnp.float32)
    g = jnp.asarray(rng.standard_normal((2, 3, 4, 5)), jnp.float32)
    np.testing.assert_array_equal(kernels.pool2x2(x), plain(x))
    ours = jax.vjp(kernels.pool2x2, x)[1](g)[0]
    theirs = jax.vjp(plain, x)[1](g)[0]
    np.testing.assert_array_equal(ours, theirs)
    assert int(jnp.sum((ours != 0) & (ours != jnp.pad(g.repeat(2, 1).repeat(2, 2),
                                                        ((0, 0), (0, 1), (0, 1), (0, 0)))))) > 0


def test_an_lbfgs_steps_temporaries_do_not_grow_with_its_history():
    """One problem's L-BFGS step updates its history in place (`problems.over_problems`): XLA's
    temporaries are the same for 2 and 20 pairs. Before, the sequential loop wrote the new state
    into a second buffer, ~31 bytes per pixel per pair (1.3 copies of the history), which this
    catches: 18 more pairs at 32x32 would add ~570 KB."""
    import jax.numpy as jnp

    from jaxstyle import losses, optimize
    from tests.helpers import random_images, random_vgg

    spec = losses.LossSpec.from_config(Config())
    net = optimize.prepared(random_vgg("relu5_1"), spec)
    content, style = random_images(0, [(32, 32), (32, 32)])
    x = jnp.asarray(content)[None]
    targets = optimize.problem_targets(
        losses.targets(net, x, [jnp.asarray(style)[None]], np.ones(1, np.float32), spec), 1)

    def temporaries(pairs: int) -> int:
        method = optimize.Method("lbfgs", 1.0, pairs)
        state = optimize.init_state(x, method)
        compiled = optimize.run_steps.lower(state, 1, net, targets, spec, method,
                                            sequential=True).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    history_growth = 18 * 2 * 32 * 32 * 12  # 18 more pairs of float32 images: 442 KB
    assert temporaries(20) - temporaries(2) < 0.1 * history_growth
