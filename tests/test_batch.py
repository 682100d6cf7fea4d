"""Batched, bucketed, sharded stylization: each image equals the same image stylized alone."""

import textwrap

import numpy as np
import pytest

from jaxstyle import batch, image_io, optimize, stylize
from jaxstyle.cli import jobs as cli_jobs
from jaxstyle.config import Config
from helpers import random_images, random_vgg, run_on_devices



@pytest.fixture(scope="module")
def vgg():
    return random_vgg("relu5_1")  # deeper than the shared fixture's relu2_1


def test_bucket_by_shape_keeps_first_seen_order():
    buckets = batch.bucket_by_shape({"a": (2, 3), "b": (3, 2), "c": (2, 3)})
    assert list(buckets.items()) == [((2, 3), ["a", "c"]), ((3, 2), ["b"])]


@pytest.mark.parametrize("bucket,cap,devices,expected", [
    (3, 4, 1, 3), (10, 4, 1, 4), (3, 4, 2, 4), (1, 8, 4, 4), (9, 8, 8, 8)])
def test_padded_batch_size(bucket, cap, devices, expected):
    size = batch.padded_batch_size(bucket, cap, devices)
    assert size == expected and size % devices == 0 and size >= min(bucket, cap)


def test_collect_images_expands_folders_sorted(tmp_path):
    (tmp_path / "d").mkdir()
    for name in ("b.png", "a.JPG", "notes.txt"):
        (tmp_path / "d" / name).write_bytes(b"")
    single = tmp_path / "x.png"
    found = image_io.collect_images([tmp_path / "d", single])
    assert [p.name for p in found] == ["a.JPG", "b.png", "x.png"]


def test_output_path_names_after_inputs(tmp_path):
    from pathlib import Path

    assert cli_jobs.output_path(tmp_path, Path("in/cat.jpg"), None) == tmp_path / "cat.png"
    assert cli_jobs.output_path(tmp_path, Path("cat.jpg"), Path("s/starry.jpg")) == \
        tmp_path / "cat__starry.png"


@pytest.mark.parametrize("init", ["noise", "content"])
def test_one_program_per_shape_across_chunks(vgg, init):
    # Many compiled chunks of one shape (progress every 2 iterations) reuse one `run_steps`
    # program: the starting state must be laid out on the mesh as `run_steps` returns it.
    contents = random_images(7, [(20, 20), (20, 20)])
    cfg = Config().replace(image_size=20, num_iterations=6, init=init,
                           seed=int(init == "noise") + 11, style_layers=("relu1_1", "relu2_1"),
                           content_layers=("relu2_1",))
    before = optimize.run_steps._cache_size()
    batch.stylize_many(vgg, contents, random_images(8, [(20, 20)]), cfg, batch_size=2, every=(2,))
    assert optimize.run_steps._cache_size() - before <= 1


@pytest.mark.slow
def test_batched_run_equals_each_image_alone(vgg):
    # Two shapes (two buckets); the first bucket (3 images, cap 2) splits into a full batch and a
    # padded one; noise init. Every image must come out as it does alone, whatever its position.
    # On one CPU device the problems of a batch run one after another, each the same per-problem
    # program as alone (`problems.over_problems`): observed equal to the last bit; 2e-4 leaves
    # room for a backend that rounds a batch differently (a one-ulp change of the inputs moves
    # these 4 steps' images by ~5e-6: see the sharded test).
    cfg = Config().replace(image_size=32, num_iterations=4, init="noise", seed=3, optimizer="adam")
    contents = random_images(1, [(24, 32), (32, 24), (24, 32), (24, 32)])
    style = random_images(2, [(28, 28)])[0]
    compiled_before = optimize.run_steps._cache_size()
    results = batch.stylize_many(vgg, contents, [style], cfg, batch_size=2)
    compiles = optimize.run_steps._cache_size() - compiled_before
    assert compiles <= 2  # one per distinct shape: padding keeps a bucket's batches equal
    for content, result in zip(contents, results):
        alone = stylize.stylize_batch(vgg, content[None], [style], cfg)
        assert result.images.shape == alone.images.shape
        np.testing.assert_allclose(result.images, alone.images, atol=2e-4)
        assert not result.diverged[0]


def test_one_divergent_image_does_not_affect_the_others(vgg):
    # A NaN content image makes its own loss NaN; its neighbour in the batch is unaffected.
    cfg = Config().replace(image_size=24, num_iterations=4, optimizer="lbfgs")
    good, bad = random_images(4, [(24, 24), (24, 24)])
    bad = bad.copy()
    bad[0, 0, 0] = np.nan
    style = random_images(5, [(24, 24)])[0]
    results = batch.stylize_many(vgg, [good, bad], [style], cfg, batch_size=2)
    alone = stylize.stylize_batch(vgg, good[None], [style], cfg)
    np.testing.assert_allclose(results[0].images, alone.images, atol=2e-4)
    assert not results[0].diverged[0] and results[1].diverged[0]


SHARDED = textwrap.dedent("""
    import json, os, sys
    import jax, numpy as np
    from jaxstyle import batch, optimize, stylize, vgg19
    from jaxstyle.config import Config
    vgg = vgg19.init(jax.random.key(0), vgg19.Preprocessing(False, 1.0, (0.485, 0.456, 0.406),
                     (0.229, 0.224, 0.225)), last_layer="relu5_1")
    rng = np.random.default_rng(0)
    contents = [rng.random(s + (3,), dtype=np.float32) for s in [(24, 32), (24, 32), (24, 32)]]
    style = rng.random((24, 24, 3), dtype=np.float32)
    cfg = Config().replace(image_size=32, num_iterations=5, content_weight=1e4, style_weight=1e9,
                           init="noise")
    mesh = batch.device_mesh()
    layouts = []
    record_layout = lambda p: layouts.append(p.progress.state.image.sharding.is_fully_replicated)
    results = batch.stylize_many(vgg, contents, [style], cfg, batch_size=4, mesh=mesh,
                                 on_progress=record_layout, every=(2,))
    programs = optimize.run_steps._cache_size()
    errors = [float(np.abs(r.images - stylize.stylize_batch(vgg, c[None], [style], cfg).images).max())
              for c, r in zip(contents, results)]
    print(json.dumps({"devices": len(jax.devices()), "mesh": int(mesh.devices.size),
                      "errors": errors, "programs": programs, "replicated": layouts}))
""")


@pytest.mark.slow
def test_sharded_over_simulated_devices():
    record = run_on_devices(SHARDED, devices=2)
    assert record["devices"] == 2 and record["mesh"] == 2
    # The noise-initialized images are split over the devices from the first chunk on (they
    # once started on one device), and all chunks of one shape share one compiled program.
    assert record["replicated"] and not any(record["replicated"])
    assert record["programs"] == 1
    # Split over two devices the problems of each device are vmapped, so the matrix products'
    # rounding (~1e-7) differs from a lone run's. Bound: this problem's images move by at most
    # 6e-6 over 1-8 L-BFGS steps when the content is perturbed by one float32 ulp, and the
    # sharded run differed by 4e-6 to 5e-6 (AVX-512 CPU); 5e-4 is 100x that. Noise init: at the
    # content image the content gradient would be pure rounding noise, amplified without bound.
    assert max(record["errors"]) < 5e-4
