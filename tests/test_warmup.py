"""``jaxstyle warmup``: afterwards a stylize run with the same flags compiles nothing, for a photo
of the warmed shape and for one of another aspect ratio in the same shape bucket; bad flags are
one line."""

from __future__ import annotations

import pytest

from helpers import cache_events_of_cli, run_cli, write_random_image


@pytest.mark.slow
def test_after_warmup_stylize_compiles_nothing(tmp_path, keras_safetensors):
    style = write_random_image(tmp_path / "style.png", (40, 40), 1)
    flags = ["--style", style, "--weights", keras_safetensors, "--image-size", "32",
             "--cache-dir", tmp_path / "cache"]
    _, misses = cache_events_of_cli("warmup", *flags, "--aspect", "4:3")
    assert misses > 0  # it compiled, into the cache
    # A 4:3 photo, and a 5:4 one: 32x24 and 32x26 share the bucket 32x32 (buckets.bucket_shape).
    for name, shape in (("four_three", (30, 40)), ("five_four", (40, 50))):
        photo = write_random_image(tmp_path / f"{name}.png", shape, 2)
        hits, misses = cache_events_of_cli("stylize", photo, *flags, "--num-iterations", "3",
                                           "-q", "-o", tmp_path / f"{name}_out.png")
        assert (misses, hits > 0) == (0, True), name


@pytest.mark.parametrize("flags,fragment", [
    (["--aspect", "4x3"], "W:H"),
    (["--aspect", "0:3"], "> 0"),
    (["--no-compile-cache"], "drop --no-compile-cache"),
])
def test_bad_warmup_flags_are_one_line(capsys, tmp_path, keras_safetensors, flags, fragment):
    style = write_random_image(tmp_path / "style.png", (40, 40), 1)
    code, _, err = run_cli(capsys, "warmup", "--style", style, "--weights", keras_safetensors,
                           "--image-size", "32", *flags)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code in (1, 2) and len(lines) == 1 and lines[0].startswith("jaxstyle: error:"), err
    assert fragment in lines[0]


@pytest.mark.slow
def test_a_portrait_after_a_landscape_compiles_nothing(tmp_path, keras_safetensors):
    """Issue 29: at 64 px a 4:3 photo runs on 48x64; a 3:4 portrait runs transposed on the same
    programs and a 16:9 photo (64x36) in the same bucket, so after one landscape run neither
    compiles anything (persistent-cache misses counted in fresh processes), and each writes an
    image of its own size and orientation."""
    from PIL import Image

    style = write_random_image(tmp_path / "style.png", (40, 40), 1)
    flags = ["--style", style, "--weights", keras_safetensors, "--image-size", "64",
             "--num-iterations", "2", "-q", "--cache-dir", tmp_path / "cache"]
    photos = {"landscape": (45, 60), "portrait": (60, 45), "wide": (36, 64)}
    for i, (name, shape) in enumerate(photos.items()):
        photo = write_random_image(tmp_path / f"{name}.png", shape, 2 + i)
        out = tmp_path / f"{name}_out.png"
        hits, misses = cache_events_of_cli("stylize", photo, *flags, "-o", out)
        if i:
            assert (misses, hits > 0) == (0, True), name
        w, h = Image.open(out).size
        assert (h, w) == {"landscape": (48, 64), "portrait": (64, 48), "wide": (36, 64)}[name]
