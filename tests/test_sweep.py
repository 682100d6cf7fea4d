"""Parameter sweeps: every cell of one batched, compiled run equals the same settings run alone;
the CLI's contact sheet, cell files and index; shape-changing settings are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from jaxstyle import optimize, stylize, sweep
from jaxstyle.config import Config
from jaxstyle.errors import ConfigError
from helpers import run_cli as run
from helpers import write_random_image as _write_image

SMALL = dict(style_layers=("relu1_1", "relu2_1"), content_layers=("relu2_1",))


def test_every_cell_equals_its_settings_run_alone_and_the_sweep_compiles_once(vgg):
    # 8 cells over four kinds of setting (loss weight, learning rate, style blend, seed), batches
    # of 3 (the last one padded): one program for the whole sweep. Adam: see test_batch.
    rng = np.random.default_rng(0)
    content = rng.random((24, 32, 3), dtype=np.float32)
    styles = [rng.random((28, 28, 3), dtype=np.float32), rng.random((20, 30, 3), dtype=np.float32)]
    base = Config().replace(image_size=32, num_iterations=5, optimizer="adam", init="noise",
                            **SMALL)
    cells = sweep.grid(base, {"style_weight": [10.0, 1000.0], "learning_rate": [0.02, 0.1],
                              "style_blend_weights": [(1.0, 3.0), (1.0, 0.0)], "seed": [1]})
    assert len(cells) == 8 and cells[1][0] == {"style_weight": 10.0, "learning_rate": 0.02,
                                              "style_blend_weights": (1.0, 0.0), "seed": 1}
    before = optimize.run_steps._cache_size()
    results = sweep.stylize_sweep(vgg, content, styles, [c for _, c in cells], batch_size=3,
                                  every=(2,))
    assert optimize.run_steps._cache_size() - before == 1
    outputs = [r.images[0] for r in results]
    for (settings, cfg), result in zip(cells, results):
        alone = stylize.stylize_batch(vgg, content[None], styles, cfg)
        np.testing.assert_allclose(result.images, alone.images, atol=2e-5, err_msg=str(settings))
        np.testing.assert_allclose(result.loss, alone.loss, rtol=1e-4)
    # The settings matter: no two cells alike.
    assert min(np.abs(a - b).max() for i, a in enumerate(outputs) for b in outputs[:i]) > 1e-3


def test_a_shape_changing_setting_cannot_be_swept():
    with pytest.raises(ConfigError, match="cannot sweep image-size"):
        sweep.grid(Config(), {"image_size": [256, 512]})
    with pytest.raises(ConfigError, match="style-layers"):
        sweep.check_sweep([Config(), Config().replace(style_layers=("relu1_1",))])


def test_cli_sweep_writes_sheet_cells_and_index(capsys, tmp_path, keras_safetensors):
    content = _write_image(tmp_path / "c.png", (24, 32), 0)
    style = _write_image(tmp_path / "s.png", (30, 30), 1)
    out = tmp_path / "res" / "sheet.png"
    code, stdout, err = run(capsys, "stylize", content, "--style", style, "--weights",
                            keras_safetensors, "-o", out, "--image-size", "32", "--num-iterations",
                            "3", "--optimizer", "adam", "--style-layers", "relu1_1,relu2_1",
                            "--content-layers", "relu2_1", "--quiet", "--sweep",
                            "style-weight=10,1000", "--sweep", "style-layer-weights=1:0,0:1")
    assert code == 0, err
    listing = json.loads((tmp_path / "res" / "sheet.json").read_text())
    assert listing == [
        {"file": f"sheet-{i + 1}.png", "settings": {"style-weight": w, "style-layer-weights": l}}
        for i, (w, l) in enumerate([(10.0, [1.0, 0.0]), (10.0, [0.0, 1.0]), (1000.0, [1.0, 0.0]),
                                    (1000.0, [0.0, 1.0])])]
    cells = [np.asarray(Image.open(tmp_path / "res" / e["file"])) for e in listing]
    assert all(c.shape == (24, 32, 3) for c in cells)
    sheet = np.asarray(Image.open(out))
    # A 2x2 grid: each cell appears in it, unchanged, at its place in reading order.
    found = []
    for cell in cells:
        hits = [(y, x) for y in range(sheet.shape[0] - 23) for x in range(sheet.shape[1] - 31)
                if sheet[y, x, 0] == cell[0, 0, 0] and np.array_equal(sheet[y:y + 24, x:x + 32], cell)]
        assert len(hits) == 1
        found.append(hits[0])
    assert found[0][0] == found[1][0] < found[2][0] == found[3][0]
    assert found[0][1] == found[2][1] < found[1][1] == found[3][1]


@pytest.mark.parametrize("flag,fragment", [("image-size=32,64", "cannot sweep image-size"),
                                           ("style-layers=relu1_1", "cannot sweep style-layers"),
                                           ("bogus=1", "unknown sweep setting"),
                                           ("style-weight", "NAME=V1,V2")])
def test_cli_bad_sweep_is_one_line(capsys, tmp_path, flag, fragment):
    code, _, err = run(capsys, "stylize", tmp_path / "c.png", "--style", tmp_path / "s.png",
                       "-o", tmp_path / "o.png", "--sweep", flag)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxstyle: error:") and fragment in lines[0]
    assert not list(tmp_path.iterdir())
