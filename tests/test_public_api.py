"""The public API: what ``import jaxstyle`` exports (lazily), the one user-facing `vgg19` module,
and the typing marker."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import pytest

import jaxstyle
from jaxstyle import vgg19
from jaxstyle.models import vgg19 as model

ROOT = Path(__file__).resolve().parents[1]


def test_all_lists_every_export_and_the_version():
    assert jaxstyle.__all__ == ["__version__", *jaxstyle._EXPORTS]
    assert len(set(jaxstyle.__all__)) == len(jaxstyle.__all__)
    assert {"Config", "load", "losses", "optimize", "stylize", "stylize_batch", "train", "apply",
            "load_image", "save_image"} <= set(jaxstyle.__all__)


@pytest.mark.parametrize("name", list(jaxstyle._EXPORTS))
def test_each_export_is_the_object_of_its_module(name):
    module, attribute = jaxstyle._EXPORTS[name]
    expected = importlib.import_module(module)
    if attribute is not None:
        expected = getattr(expected, attribute)
    assert getattr(jaxstyle, name) is expected
    assert name in dir(jaxstyle)


def test_the_main_entry_points():
    assert jaxstyle.load is vgg19.load
    assert jaxstyle.Config().schedule.num_iterations > 0
    assert callable(jaxstyle.stylize.stylize) and callable(jaxstyle.stylize_batch)
    assert callable(jaxstyle.train.make_step) and callable(jaxstyle.apply)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        jaxstyle.no_such_name  # noqa: B018
    assert not hasattr(jaxstyle, "bench")


def test_type_checkers_see_the_same_exports():
    """The ``if TYPE_CHECKING:`` imports bind exactly the names of ``_EXPORTS``, to the same
    objects (read from the source: they never run)."""
    tree = ast.parse((ROOT / "jaxstyle" / "__init__.py").read_text())
    block = next(node for node in tree.body
                 if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING")
    seen = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom)
        for alias in node.names:
            name = alias.asname or alias.name
            module = f"{node.module}.{alias.name}"
            seen[name] = ((module, None) if module in sys.modules or _is_module(module)
                          else (node.module, alias.name))
    assert seen == jaxstyle._EXPORTS


def _is_module(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def test_import_is_cheap_and_stylize_is_always_the_module():
    """``import jaxstyle`` imports no JAX; ``jaxstyle.stylize`` is the module whether it is asked
    for before or after ``import jaxstyle.stylize`` (a function of that name could not be)."""
    code = ("import sys, types, jaxstyle\n"
            "assert 'jax' not in sys.modules and 'jaxstyle.losses' not in sys.modules\n"
            "first = jaxstyle.stylize\n"
            "import jaxstyle.stylize\n"
            "from jaxstyle import stylize\n"
            "assert isinstance(first, types.ModuleType) and first is stylize is jaxstyle.stylize\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr


def test_vgg19_is_the_model_plus_load():
    """`jaxstyle.vgg19` defines `load` and nothing else: every other name is the model's own
    object, and no leftover aliases (the kernels live in `jaxstyle.kernels`)."""
    assert set(vgg19.__all__) == set(model.__all__) | {"load"}
    for name in model.__all__:
        assert getattr(vgg19, name) is getattr(model, name), name
    public = {name for name, value in vars(vgg19).items()
              if not name.startswith("_") and not isinstance(value, types.ModuleType)}
    assert public - set(vgg19.__all__) <= {"annotations"}
    for alias in ("conv3x3", "pool2x2", "prepare_kernel", "flip_kernel", "winograd_kernel",
                  "use_winograd", "PreparedKernel"):
        assert not hasattr(vgg19, alias)


def test_the_package_is_typed():
    assert (ROOT / "jaxstyle" / "py.typed").is_file()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["jaxstyle"]
