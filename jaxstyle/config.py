"""The one configuration of a style-transfer run: frozen dataclasses with documented defaults.

A `Config` is six typed sections: `Loss` (what is minimized), `Optimizer` (how), `Schedule` (at
which sizes, for how many steps, when to stop), `Start` (the first image), `Output` (which iterate
is the result) and `Network` (how VGG-19 runs). Code reads a setting from its section
(``cfg.schedule.num_iterations``, ``cfg.optimizer.name``).

Outside the code every setting keeps one flat name, unique across the sections: the names of
`FIELDS` (``content_weight``, ``optimizer``, ``num_iterations``, ...). Flags, presets, sweeps,
checkpoints and errors use them; `Config.replace` takes them and `Config.flat` gives them back.

Defaults reproduce jcjohnson/neural-style (content relu4_2; style relu1_1 … relu5_1; content weight
5, style weight 100, TV 1e-3; L-BFGS; 1000 iterations; 512 px long side). Those weights are on the
scale of caffe-convention VGG weights (the default Keras file, or the caffe .pth); torchvision
weights see inputs ~1/1000 as large, so their features and losses are far smaller: raise the content
and style weights (e.g. 1e4 and 1e9) when using them.

The CLI maps its flags one to one onto the flat names (``--content-weight`` → ``content_weight``).
Errors name a setting as ``Config.<name>`` (``Config.scales=256,512``); the CLI shows each as
its flag (``--scales 256,512``: `cli.common.in_flag_words`). The config holds no file names:
images (content, styles, a start image, masks) are arrays the caller passes in.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Literal, Sequence, get_args

from jaxstyle.models import vgg19
from jaxstyle.errors import ConfigError

# The choices of each setting, as types (for readers and type checkers) and as tuples (for
# validation and the command line's choices), one derived from the other.
OptimizerName = Literal["lbfgs", "adam"]
Init = Literal["content", "noise", "style", "image"]
Normalization = Literal["neural-style", "gatys"]
Dtype = Literal["float32", "bfloat16"]
StyleLoss = Literal["gram", "w2"]
LossScale = Literal["absolute", "relative"]
Pooling = Literal["max", "avg"]
OPTIMIZERS: tuple[str, ...] = get_args(OptimizerName)
INITS: tuple[str, ...] = get_args(Init)
NORMALIZATIONS: tuple[str, ...] = get_args(Normalization)
DTYPES: tuple[str, ...] = get_args(Dtype)
HISTORY_DTYPES = DTYPES
STYLE_LOSSES: tuple[str, ...] = get_args(StyleLoss)
LOSS_SCALES: tuple[str, ...] = get_args(LossScale)
MIN_PYRAMID_SIDE = 64  # the coarsest scale `Schedule.num_scales` makes, in pixels (long side)


@dataclasses.dataclass(frozen=True)
class Loss:
    """What the optimizer minimizes: the content, style and TV terms and their weights.

    content_layers: VGG-19 layers whose activations are matched to the content image's.
    style_layers: layers whose Gram matrices are matched to the style images'.
    content_layer_weights / style_layer_weights: one weight per layer (None: 1.0 each).
    content_weight, style_weight, tv_weight: weights of the three terms.
    style_blend_weights: one per style image (None: equal); normalized to sum to 1. The target
      Gram of a layer is the blend of the styles' Grams, as in neural-style.
    normalization: "neural-style": Gram / (C·H·W), mean-squared-error content and style terms,
      TV = ½·Σ(255·Δx)² (neural-style's pixel scale). "gatys": Gram unnormalized, style term
      Σ(G−A)² / (4·C²·(H·W)²), content term ½·Σ(F−P)², same TV. (Gatys et al. 2016, eqs. 1–5.)
    style_loss: "gram" (the Gram-matrix terms above) or "w2": the squared Wasserstein-2 distance
      between Gaussian fits (mean and covariance) of the image's and the style's features, per
      layer, divided by the channel count; several styles are blended by their first and second
      moments (see `losses.w2_style_loss`).
    loss_scale: "absolute": the weights mean what they mean in neural-style (their balance suits
      caffe-convention weights). "relative": each layer's content and style term is divided by
      its target's scale (mean square of the content features; mean square of the target Gram,
      or for "w2" the target's second moment per channel) and TV by the content image's own TV,
      so that the same weights give a comparable balance with any weights file
      (`losses.relative_spec`). The CLI uses "relative" with ``RELATIVE_WEIGHTS`` when no loss
      weight is given.
    style_scale: style images are resized to ``style_scale × image_size`` on their long side.
    color_match: recolour each style image to the content's RGB mean and covariance before the
      transfer (Gatys et al. 2017, section 5; `imageops.match_colors`). One content image per run.
    """

    content_layers: tuple[str, ...] = ("relu4_2",)
    style_layers: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
    content_layer_weights: tuple[float, ...] | None = None
    style_layer_weights: tuple[float, ...] | None = None
    content_weight: float = 5.0
    style_weight: float = 100.0
    tv_weight: float = 1e-3
    style_blend_weights: tuple[float, ...] | None = None
    normalization: Normalization = "neural-style"
    style_loss: StyleLoss = "gram"
    loss_scale: LossScale = "absolute"
    style_scale: float = 1.0
    color_match: bool = False

    def __post_init__(self) -> None:
        _check_loss(self)

    def blend_weights(self, num_styles: int) -> tuple[float, ...]:
        """Normalized blend weights for ``num_styles`` style images."""
        weights = self.style_blend_weights or (1.0,) * num_styles
        if len(weights) != num_styles:
            raise ConfigError(f"{len(weights)} style blend weights given for {num_styles} style images;"
                             " give one per style image")
        total = sum(weights)
        return tuple(w / total for w in weights)


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """How the image is optimized. The image is kept in [0, 1] by projection: every step's result
    is clipped to the box.

    name (flat name ``optimizer``): "lbfgs" (history ``lbfgs_memory``, no line search, first step
      capped at unit gradient norm, like torch.optim.LBFGS in neural-style) or "adam"
      (``learning_rate``).
    learning_rate: Adam's step in [0, 1] pixel units (neural-style's 10 on its 0–255 scale ≈ 0.04).
      L-BFGS scales its step by it too (1.0: the quasi-Newton step). None: the optimizer's default
      (`step_size`).
    lbfgs_memory: the number of curvature pairs L-BFGS keeps (100).
    lbfgs_history_dtype: "float32" (default) or "bfloat16": the dtype the L-BFGS curvature
      pairs are stored in; bfloat16 halves the history (2·memory images), the arithmetic stays
      float32.
    lbfgs_pyramid: L-BFGS preconditioned by an image pyramid of this many levels (each half
      the size of the one before; `jaxstyle.pyramid`): large-scale structure converges as fast
      as detail. 1 (Config's default, and the "neural-style" preset's) is plain L-BFGS; the
      "fast" preset (the CLI's default) uses 5 (docs/performance.md).
    exact_batch: run the problems of a batch (images, sweep cells, film segments) one after
      another inside the compiled loop on accelerators too, so that each equals its run alone to
      the last bit, as it always does on a CPU. Vmapped (the default on accelerators) they share
      each matrix product, 1.5-5x faster on an H200, but its rounding differs from a lone run's
      and the optimizer amplifies that (up to ~40 levels of an 8-bit image in 8 steps at 48 px).
    """

    name: OptimizerName = "lbfgs"
    learning_rate: float | None = None
    lbfgs_memory: int = 100
    lbfgs_history_dtype: Dtype = "float32"
    lbfgs_pyramid: int = 1
    exact_batch: bool = False

    def __post_init__(self) -> None:
        _check_optimizer(self)

    @property
    def step_size(self) -> float:
        """The optimizer's learning rate: ``learning_rate`` or the optimizer's default."""
        if self.learning_rate is not None:
            return self.learning_rate
        return 1.0 if self.name == "lbfgs" else 0.04


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The sizes a run optimizes at, the steps it takes at each, and when it stops early (see
    `tracking.Tracking`).

    image_size: long side of the output in pixels (the content image is resized to it).
    scales: coarse-to-fine long sides, e.g. (256, 512, 1024): optimize at each in turn, starting
      from the previous result upsampled. None: the pyramid of ``num_scales``.
    num_scales: when ``scales`` is None, a pyramid of this many scales that halves
      ``image_size`` each time, keeping only sides of at least ``MIN_PYRAMID_SIDE`` (64) px
      (3 at 256 px: 64, 128, 256). 1: just ``image_size``. Coarse scales cost a fraction of a
      step at full size and find the picture's layout; the full size then only refines it
      (docs/performance.md).
    num_iterations: optimizer steps per scale. One step is one loss+gradient evaluation.
    coarse_iterations: the cap on steps at every scale but the last (None: ``num_iterations``;
      never more than ``num_iterations``).
    stop_tolerance: a problem stops (and its image freezes) when its lowest loss so far improved
      by less than this fraction over the last ``stop_window`` steps; 0 never stops early.
      ``num_iterations`` stays the cap.
    stop_window: that window, in steps.
    stop_change: a problem stops when its image, as an 8-bit file would hold it
      (round(255·x)), changed by less than this many levels on average (mean absolute change
      over the photo's values, padding excluded) since ``stop_window`` steps earlier; checked
      every ``stop_window`` steps. It follows the picture, whatever the loss weights; 0 never
      stops. With ``stop_tolerance`` too, a problem stops when either rule says so.
    """

    image_size: int = 512
    scales: tuple[int, ...] | None = None
    num_scales: int = 1
    num_iterations: int = 1000
    coarse_iterations: int | None = None
    stop_tolerance: float = 0.0
    stop_window: int = 50
    stop_change: float = 0.0

    def __post_init__(self) -> None:
        _check_schedule(self)

    @property
    def all_scales(self) -> tuple[int, ...]:
        """Long side of every scale, coarse to fine."""
        if self.scales:
            return self.scales
        pyramid = [self.image_size // 2**k for k in range(self.num_scales - 1, 0, -1)]
        return tuple(s for s in pyramid if s >= MIN_PYRAMID_SIDE) + (self.image_size,)

    @property
    def scale_iterations(self) -> tuple[int, ...]:
        """The cap on steps at each scale of `all_scales`."""
        coarse = min(self.coarse_iterations or self.num_iterations, self.num_iterations)
        return (coarse,) * (len(self.all_scales) - 1) + (self.num_iterations,)

    @property
    def total_iterations(self) -> int:
        """The cap on steps over all scales (a progress bar's total)."""
        return sum(self.scale_iterations)

    def iterations_before(self, scale_index: int) -> int:
        """Steps (at most) run before scale ``scale_index`` starts."""
        return sum(self.scale_iterations[:scale_index])


@dataclasses.dataclass(frozen=True)
class Start:
    """The image the optimization starts from.

    init: "content", "noise" (uniform, from ``seed``), "style" (the first style image resized to
      the content's size) or "image" (the ``init_image`` array given to `stylize.stylize_batch`,
      resized likewise).
    seed: the random seed of the "noise" start (0).
    """

    init: Init = "content"
    seed: int = 0

    def __post_init__(self) -> None:
        _check_start(self)


@dataclasses.dataclass(frozen=True)
class Output:
    """Which image a run returns (see `tracking.Tracking`).

    original_colors: keep the content image's colours (luminance transfer, as neural-style).
    average: if > 0, the result is the bias-corrected exponential moving average of the iterates
      with this decay (e.g. 0.9), which removes the high-frequency noise of the last steps.
    keep_best: the result is the iterate with the lowest loss evaluated (for non-monotone
      optimizers such as Adam). ``average`` takes precedence.
    """

    original_colors: bool = False
    average: float = 0.0
    keep_best: bool = False

    def __post_init__(self) -> None:
        _check_output(self)


@dataclasses.dataclass(frozen=True)
class Network:
    """How VGG-19 runs.

    pooling: "max" or "avg" (Gatys et al. prefer average pooling).
    compute_dtype: "float32", or "bfloat16" for convolutions on hardware with it (Grams, losses,
      the image and optimizer state stay float32).
    """

    pooling: Pooling = "max"
    compute_dtype: Dtype = "float32"

    def __post_init__(self) -> None:
        _check_network(self)


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that decides the result of a run, in six sections (each documents its settings
    and their defaults). ``Config()`` is neural-style's defaults; change settings by their flat
    names (`FIELDS`) with `replace` (``Config().replace(num_iterations=500, image_size=256)``) or
    give whole sections (``Config(schedule=Schedule(num_iterations=500))``)."""

    loss: Loss = dataclasses.field(default_factory=Loss)
    optimizer: Optimizer = dataclasses.field(default_factory=Optimizer)
    schedule: Schedule = dataclasses.field(default_factory=Schedule)
    start: Start = dataclasses.field(default_factory=Start)
    output: Output = dataclasses.field(default_factory=Output)
    network: Network = dataclasses.field(default_factory=Network)

    def __post_init__(self) -> None:
        validate(self)

    def replace(self, **settings: Any) -> Config:
        """A copy with ``settings`` (flat names: ``content_weight``, ``optimizer``, ...) set in
        their sections, validated. ConfigError for a name that is not a setting."""
        changes: dict[str, dict[str, Any]] = {}
        for name, value in settings.items():
            if name not in FIELDS:
                raise ConfigError(f"Config.{name} is not a setting (the settings: config.FIELDS)")
            section, attribute = FIELDS[name]
            changes.setdefault(section, {})[attribute] = value
        return dataclasses.replace(self, **{
            section: dataclasses.replace(getattr(self, section), **values)
            for section, values in changes.items()})

    def flat(self) -> dict[str, Any]:
        """Every setting by its flat name (`FIELDS`' order): what checkpoints and logs record."""
        return {name: getattr(getattr(self, section), attribute)
                for name, (section, attribute) in FIELDS.items()}


# Section name -> its class, in `Config`'s order.
SECTIONS: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(Config)}
# Flat name -> (section, attribute). The flat name is the attribute's, except the optimizer's
# choice: ``optimizer`` outside, ``Config.optimizer.name`` inside.
_RENAMED = {("optimizer", "name"): "optimizer"}
FIELDS: dict[str, tuple[str, str]] = {
    _RENAMED.get((section, f.name), f.name): (section, f.name)
    for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
if len(FIELDS) != sum(len(dataclasses.fields(cls)) for cls in SECTIONS.values()):
    raise TypeError("two settings of jaxstyle.config share a flat name")
_FLAT = {place: name for name, place in FIELDS.items()}


def field_type(name: str) -> Any:
    """The type of the setting of flat name ``name`` (as its section annotates it)."""
    section, attribute = FIELDS[name]
    return typing.get_type_hints(SECTIONS[section])[attribute]


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _check_layer_weights(kind: str, layers: tuple[str, ...], weights: tuple[float, ...] | None) -> None:
    if weights is None:
        return
    if len(weights) != len(layers):
        raise ConfigError(f"{len(weights)} {kind} layer weights given for {len(layers)} {kind} layers;"
                         " give one per layer")
    if any(w < 0 for w in weights):
        raise ConfigError(f"{kind} layer weights must be >= 0")


def _check_finite(section: str, values: Any) -> None:
    """NaN and infinities pass every comparison the checks below make (or fail them with the wrong
    advice), so every number must be finite first."""
    for field in dataclasses.fields(values):
        value = getattr(values, field.name)
        items = value if isinstance(value, tuple) else (value,)
        if any(isinstance(v, float) and not math.isfinite(v) for v in items):
            name = _FLAT[section, field.name]
            raise ConfigError(f"{name.replace('_', ' ')} must be finite numbers; got {value}")


def _check_loss(loss: Loss) -> None:
    _check_finite("loss", loss)
    vgg19.check_layers(loss.content_layers)
    vgg19.check_layers(loss.style_layers)
    _check_layer_weights("content", loss.content_layers, loss.content_layer_weights)
    _check_layer_weights("style", loss.style_layers, loss.style_layer_weights)
    for name in ("content_weight", "style_weight", "tv_weight"):
        if getattr(loss, name) < 0:
            raise ConfigError(f"{name.replace('_', ' ')} must be >= 0; got {getattr(loss, name)}")
    if loss.style_blend_weights is not None and (
            any(w < 0 for w in loss.style_blend_weights) or sum(loss.style_blend_weights) <= 0):
        raise ConfigError("style blend weights must be >= 0 with a positive sum")
    _check_choice("normalization", loss.normalization, NORMALIZATIONS)
    if not loss.style_scale > 0:
        raise ConfigError(f"style scale must be > 0; got {loss.style_scale}")
    _check_choice("style loss", loss.style_loss, STYLE_LOSSES)
    _check_choice("loss scale", loss.loss_scale, LOSS_SCALES)


def _check_optimizer(opt: Optimizer) -> None:
    _check_finite("optimizer", opt)
    _check_choice("optimizer", opt.name, OPTIMIZERS)
    if opt.learning_rate is not None and not opt.learning_rate > 0:
        raise ConfigError(f"learning rate must be > 0; got {opt.learning_rate}")
    if opt.lbfgs_memory < 1:
        raise ConfigError(f"L-BFGS memory must be >= 1; got {opt.lbfgs_memory}")
    _check_choice("L-BFGS history dtype", opt.lbfgs_history_dtype, HISTORY_DTYPES)
    if opt.lbfgs_pyramid < 1:
        raise ConfigError(f"L-BFGS pyramid levels must be >= 1; got {opt.lbfgs_pyramid}")


def _check_schedule(schedule: Schedule) -> None:
    _check_finite("schedule", schedule)
    if schedule.num_iterations < 1:
        raise ConfigError(f"number of iterations must be >= 1; got {schedule.num_iterations}")
    if schedule.num_scales < 1:
        raise ConfigError(f"number of scales must be >= 1; got {schedule.num_scales}")
    if schedule.coarse_iterations is not None and schedule.coarse_iterations < 1:
        raise ConfigError(f"coarse iterations must be >= 1; got {schedule.coarse_iterations}")
    if schedule.image_size < 16:
        raise ConfigError("image size must be >= 16 pixels (VGG-19 needs it); got "
                          f"{schedule.image_size}")
    scales = schedule.scales
    if scales is not None and (not scales or min(scales) < 16):
        raise ConfigError(f"every scale must be >= 16 pixels; got {scales}")
    if scales is not None and any(b <= a for a, b in zip(scales, scales[1:])):
        raise ConfigError("scales must be strictly increasing, coarse to fine (e.g. "
                          f"Config.scales=256,512,1024); got {','.join(map(str, scales))}")
    if not schedule.stop_tolerance >= 0:
        raise ConfigError(f"stop tolerance must be >= 0; got {schedule.stop_tolerance}")
    if not schedule.stop_change >= 0:
        raise ConfigError(f"stop change must be >= 0 levels; got {schedule.stop_change}")
    if schedule.stop_window < 1:
        raise ConfigError(f"stop window must be >= 1 step; got {schedule.stop_window}")


def _check_start(start: Start) -> None:
    _check_choice("init", start.init, INITS)


def _check_output(output: Output) -> None:
    _check_finite("output", output)
    if not 0 <= output.average < 1:
        raise ConfigError(f"average decay must be in [0, 1); got {output.average}")


def _check_network(network: Network) -> None:
    _check_choice("pooling", network.pooling, vgg19.POOLINGS)
    _check_choice("compute dtype", network.compute_dtype, DTYPES)


_CHECKS = {Loss: _check_loss, Optimizer: _check_optimizer, Schedule: _check_schedule,
           Start: _check_start, Output: _check_output, Network: _check_network}


def validate(cfg: Config) -> None:
    """Raises ConfigError (a ValueError) with a one-line message for the first invalid setting,
    checking every section (each also checks itself when it is made)."""
    for section, cls in SECTIONS.items():
        values = getattr(cfg, section)
        if not isinstance(values, cls):
            raise ConfigError(f"Config's {section} must be a config.{cls.__name__}; got "
                              f"{type(values).__name__}")
        _CHECKS[cls](values)


# ----------------------------------------------------------------------------------------------
# Presets: the schedules the CLI offers. `Config()` itself keeps neural-style's defaults.

# Loss weights for loss_scale="relative" (each term divided by its target's scale): the balance of
# the usual torchvision-convention weights (content 1e4, style 1e9, TV 1 on [0, 1]), measured as
# relative weights on a torchvision-convention VGG-19 at 256 px (tubingen × starry_night: content
# ≈ 1e4, style 1.2e4 … 2e5 per layer, TV ≈ 1.3e3) and divided by the content weight.
RELATIVE_WEIGHTS = {"content_weight": 1.0, "style_weight": 5.0, "tv_weight": 0.1}

PRESETS: dict[str, dict] = {
    # The default of `jaxstyle stylize`: chosen by time to quality (docs/performance.md).
    # 64 → 128 → 256 px at 256 px: 40 steps at most at each coarse scale (150 before the
    # pyramid preconditioner and the picture rule; 40 was as good or better at 256 and 512 px,
    # both TVs and the relative weights, and 0.8-0.9x the time), then the full size until the
    # loss improves by less than 0.25 % over 20 steps. An L-BFGS history of 50 pairs:
    # time to quality as with 100 at 512 px and within 2 % at 256 px, half the history's memory
    # (512 px peak 2.22 -> 1.88 GiB, under the reference's); 20 fell behind at 256 px, 10 clearly.
    # L-BFGS preconditioned by a 5-level image pyramid (each level scaled on its own): at 256 px
    # with the reference's weights the same run stopped 3.2x sooner at a lower loss; with the
    # relative weights it passed plain L-BFGS's final loss ~10 % sooner and ended 1.3 % lower.
    # It also stops when the 8-bit picture changed by less than 2 levels on average over those
    # 20 steps (issue 29): with TV 0 the loss keeps falling slowly long after that; at 256 and
    # 512 px the picture rule stops at 80 and 100 full-size steps, below the reference's
    # 400-evaluation 8-bit loss (1.5 stopped 20 steps later, lower still); with the reference's TV
    # or the relative weights the loss rule stops first.
    "fast": dict(num_scales=3, coarse_iterations=40, stop_tolerance=0.0025, stop_window=20,
                 stop_change=2.0, lbfgs_memory=50, lbfgs_pyramid=5),
    # jcjohnson/neural-style exactly: Config's defaults (1000 L-BFGS steps, no early stop).
    "neural-style": dict(),
}


def from_preset(name: str, **fields) -> Config:
    """A `Config` from preset ``name`` (see `PRESETS`) with ``fields`` (flat names, `FIELDS`)
    overriding it. Fields that are None are left to the preset (or to `Config`'s default)."""
    if name not in PRESETS:
        raise ConfigError(f"preset must be one of {', '.join(PRESETS)}; got {name!r}")
    values = dict(PRESETS[name])
    values.update({k: v for k, v in fields.items() if v is not None})
    return Config().replace(**values)


# Settings (flat names) that may differ between the problems of one compiled run (a sweep): none
# of them changes a shape or a static argument.
SWEEPABLE = ("content_weight", "style_weight", "tv_weight", "content_layer_weights",
             "style_layer_weights", "style_blend_weights", "learning_rate", "seed", "init")


def check_sweep(cfgs: Sequence[Config]) -> None:
    """ConfigError unless every config equals the first outside `SWEEPABLE` (flat names)."""
    first = cfgs[0].flat()
    for cfg in cfgs[1:]:
        for name, value in cfg.flat().items():
            if name not in SWEEPABLE and value != first[name]:
                raise ConfigError(f"a sweep cannot vary {name.replace('_', '-')}: it changes "
                                  "the compiled program; run it separately")
