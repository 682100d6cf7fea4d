"""The flags are data that cannot drift apart: the README's flag table lists exactly the parser's
flags, the sweepable flags are the config's `SWEEPABLE` fields, and each flag named for a `Config`
field reaches that field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from jaxstyle import config
from jaxstyle.cli import build_parser
from jaxstyle.cli.stylize import config_from_args
from jaxstyle.cli.sweep import SWEEP_FLAGS, sweep_axis

README = Path(__file__).resolve().parents[1] / "README.md"


def _stylize_parser():
    sub = next(a for a in build_parser()._actions if hasattr(a, "choices") and a.choices
               and "stylize" in a.choices)
    return sub.choices["stylize"]


def test_the_readme_flag_table_lists_exactly_the_parsers_flags():
    text = README.read_text()
    start = text.index("| flag | default | what it does |")
    table = text[start:text.index("\n\n", start)]
    documented = set(re.findall(r"`(--[a-z0-9-]+)", table))
    parsed = {o for a in _stylize_parser()._actions for o in a.option_strings
              if o.startswith("--")} - {"--help"}
    assert parsed - documented == set(), "flags missing from the README's table"
    assert documented - parsed == set(), "the README's table names flags the parser lacks"


def test_the_sweepable_flags_are_the_configs_sweepable_fields():
    assert sorted(field for field, _ in SWEEP_FLAGS.values()) == sorted(config.SWEEPABLE)
    assert all(name == field.replace("_", "-") for name, (field, _) in SWEEP_FLAGS.items())
    # Each value is read as its field's type says.
    assert sweep_axis("seed=1,2") == ("seed", (1, 2))
    assert sweep_axis("style-blend-weights=1:3,3:1") == ("style-blend-weights",
                                                         ((1.0, 3.0), (3.0, 1.0)))
    assert sweep_axis("init=noise,content") == ("init", ("noise", "content"))


# A value other than the default for every Config field a stylize flag of the same name sets.
NON_DEFAULTS = {
    "content_weight": "2", "style_weight": "3", "tv_weight": "0.5",
    "content_layers": "relu3_1", "style_layers": "relu1_1,relu2_1",
    "content_layer_weights": "2", "style_layer_weights": "1,2", "style_blend_weights": "1",
    "normalization": "gatys", "optimizer": "adam", "learning_rate": "0.1", "lbfgs_memory": "7",
    "lbfgs_history_dtype": "bfloat16", "lbfgs_pyramid": "2", "num_iterations": "9",
    "image_size": "96", "num_scales": "2", "coarse_iterations": "4", "style_scale": "0.5",
    "init": "noise", "seed": "5", "original_colors": None, "color_match": None,
    "pooling": "avg", "compute_dtype": "bfloat16", "stop_tolerance": "0.1", "stop_window": "3", "stop_change": "0.7",
    "average": "0.5", "keep_best": None, "style_loss": "w2", "exact_batch": None,
}


def test_every_flag_named_for_a_config_field_reaches_it():
    dests = {a.dest for a in _stylize_parser()._actions}
    fields = set(config.FIELDS)
    assert set(NON_DEFAULTS) == (dests & fields) - {"scales"}, \
        "a new flag for a Config field: give it a non-default value here"
    argv = ["stylize", "c.png", "--style", "s.png"]
    for field, value in NON_DEFAULTS.items():
        argv += [f"--{field.replace('_', '-')}"] + ([] if value is None else [value])
    cfg = config_from_args(build_parser().parse_args(argv))
    default = config.from_preset("fast")
    for field, value in NON_DEFAULTS.items():
        assert cfg.flat()[field] != default.flat()[field], field


@pytest.mark.parametrize("flag", sorted(SWEEP_FLAGS))
def test_every_sweepable_flag_is_a_stylize_flag(flag):
    assert f"--{flag}" in {o for a in _stylize_parser()._actions for o in a.option_strings}
