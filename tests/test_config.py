"""The configuration as data: its choices are types, its errors speak of its fields, and the
command line shows those fields as its flags."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from jaxstyle import config
from jaxstyle.cli.common import in_flag_words
from jaxstyle.config import Config
from jaxstyle.errors import ConfigError


def test_every_choice_field_is_typed_with_its_choices():
    choices = {"optimizer": config.OPTIMIZERS, "init": config.INITS,
               "normalization": config.NORMALIZATIONS, "compute_dtype": config.DTYPES,
               "lbfgs_history_dtype": config.HISTORY_DTYPES, "style_loss": config.STYLE_LOSSES,
               "loss_scale": config.LOSS_SCALES, "pooling": ("max", "avg")}
    for field, values in choices.items():
        assert typing.get_args(config.field_type(field)) == values, field
        assert Config().flat()[field] in values
        with pytest.raises(ConfigError, match=field.split("_")[-1]):
            Config().replace(**{field: "bogus"})


@pytest.mark.parametrize("fields,library_words,cli_words", [
    (dict(scales=(64, 32)), "Config.scales=256,512,1024", "--scales 256,512,1024"),
])
def test_core_errors_name_the_field_and_the_cli_names_the_flag(fields, library_words, cli_words):
    with pytest.raises(ConfigError) as error:
        Config().replace(**fields)
    message = str(error.value)
    assert library_words in message and "--" not in message
    assert cli_words in in_flag_words(message)


def test_in_flag_words_leaves_other_words_alone():
    assert in_flag_words("no setting named here: init, scales") == "no setting named here: init, scales"
    assert in_flag_words("raise Config.lbfgs_memory or Config.image_size=64") == \
        "raise --lbfgs-memory or --image-size 64"
    assert set(config.FIELDS) >= {"lbfgs_memory", "image_size"}


def test_the_config_holds_no_file_names_and_an_image_start_needs_its_array():
    """Images are arrays the caller passes (the CLI reads the files): init "image" is a valid
    setting on its own, and starting without the array is a one-line ConfigError."""
    import numpy as np

    from jaxstyle.starts import initial_images

    assert not any("path" in name or name.endswith("_image") for name in config.FIELDS)
    cfg = Config().replace(init="image")
    contents = np.zeros((1, 8, 8, 3), np.float32)
    with pytest.raises(ConfigError, match="init_image"):
        initial_images(cfg, contents, [contents[0]], None)
    start = np.full((4, 4, 3), 0.5, np.float32)
    assert np.allclose(np.asarray(initial_images(cfg, contents, [contents[0]], start)), 0.5)


# Sections inside, flat names outside: `FIELDS` maps each flat name to its section's attribute.

def _other_value(name: str, value):
    """A valid value of setting ``name`` other than ``value`` (the default)."""
    choices = typing.get_args(config.field_type(name))
    if typing.get_origin(config.field_type(name)) is typing.Literal:
        return next(c for c in choices if c != value)
    special = {"content_layers": ("relu3_1",), "style_layers": ("relu1_1", "relu2_1"),
               "content_layer_weights": (2.0,), "style_layer_weights": (1.0, 2.0, 3.0, 4.0, 5.0),
               "style_blend_weights": (1.0, 3.0), "scales": (64, 128), "learning_rate": 0.5,
               "coarse_iterations": 7, "average": 0.5}
    if name in special:
        return special[name]
    if isinstance(value, bool):
        return not value
    return value + 1 if isinstance(value, int) else value * 0.5 + 0.25


def test_fields_cover_every_section_attribute_exactly_once():
    places = [(section, f.name) for section, cls in config.SECTIONS.items()
              for f in dataclasses.fields(cls)]
    assert sorted(config.FIELDS.values()) == sorted(places)
    assert len(set(config.FIELDS.values())) == len(config.FIELDS)
    assert list(config.SECTIONS) == [f.name for f in dataclasses.fields(Config)]
    assert config.FIELDS["optimizer"] == ("optimizer", "name")
    assert all(name == attribute for name, (_, attribute) in config.FIELDS.items()
               if name != "optimizer")


@pytest.mark.parametrize("name", list(config.FIELDS))
def test_each_flat_name_reaches_its_section_and_comes_back(name):
    section, attribute = config.FIELDS[name]
    default = Config().flat()[name]
    value = _other_value(name, default)
    assert value != default
    cfg = Config().replace(**{name: value})
    assert getattr(getattr(cfg, section), attribute) == value
    assert cfg.flat() == {**Config().flat(), name: value}  # that setting alone changed
    for other in config.SECTIONS:
        if other != section:
            assert getattr(cfg, other) == getattr(Config(), other)
    assert Config().replace(**cfg.flat()) == cfg


def test_an_unknown_setting_is_a_one_line_config_error():
    with pytest.raises(ConfigError) as error:
        Config().replace(content_wieght=1.0)
    message = str(error.value)
    assert "content_wieght" in message and "\n" not in message
    with pytest.raises(ConfigError):
        config.from_preset("fast", no_such_setting=1)
    with pytest.raises(ConfigError, match="must be a config.Loss"):
        Config(loss={"content_weight": 1.0})


def test_sections_are_checked_when_made_and_in_a_config():
    with pytest.raises(ConfigError, match="content weight must be >= 0"):
        config.Loss(content_weight=-1.0)
    with pytest.raises(ConfigError, match="number of iterations"):
        config.Schedule(num_iterations=0)
    with pytest.raises(ConfigError, match="optimizer must be one of"):
        config.Optimizer(name="sgd")
    cfg = Config(schedule=config.Schedule(num_iterations=5), start=config.Start(init="noise"))
    assert cfg == Config().replace(num_iterations=5, init="noise")


@pytest.mark.parametrize("preset", list(config.PRESETS))
def test_a_presets_flat_settings_land_in_their_sections(preset):
    cfg = config.from_preset(preset)
    for name, value in config.PRESETS[preset].items():
        section, attribute = config.FIELDS[name]
        assert getattr(getattr(cfg, section), attribute) == value, name
    untouched = set(config.FIELDS) - set(config.PRESETS[preset])
    assert {n: cfg.flat()[n] for n in untouched} == {n: Config().flat()[n] for n in untouched}
    # An explicit setting wins over the preset's; None leaves the preset's.
    assert config.from_preset(preset, lbfgs_memory=7).optimizer.lbfgs_memory == 7
    assert config.from_preset(preset, lbfgs_memory=None) == cfg


def test_check_sweep_compares_by_flat_name():
    base = Config()
    config.check_sweep([base, base.replace(style_weight=1.0, seed=3, init="noise",
                                           learning_rate=0.1)])
    for name, value in [("num_iterations", 5), ("optimizer", "adam"), ("pooling", "avg"),
                        ("keep_best", True), ("style_scale", 0.5)]:
        with pytest.raises(ConfigError, match=f"cannot vary {name.replace('_', '-')}"):
            config.check_sweep([base, base.replace(**{name: value})])
