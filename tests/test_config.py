"""The configuration as data: its choices are types, its errors speak of its fields, and the
command line shows those fields as its flags."""

from __future__ import annotations

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
