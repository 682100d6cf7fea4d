"""The API reference, built from the docstrings with pdoc (``python -m pdoc jaxstyle -o DIR``
documents the package and the modules it exports; this test documents every library module).

The build fails the test on an error or on a warning, except pdoc's notes that it could not
evaluate a type annotation (``optax.OptState`` names a type optax never imports; a NamedTuple's
string annotations): those change a signature's rendering, not a reference. pdoc itself leaves a
reference it cannot resolve as plain code, silently, so the test looks for them in the HTML: a
code span that names a jaxstyle object (``jaxstyle.losses.targets``, or the short
``losses.targets`` that the docstrings use) must name one that exists.
"""

from __future__ import annotations

import html
import importlib
import pkgutil
import re
import warnings
from pathlib import Path

import pytest

pdoc = pytest.importorskip("pdoc")

import jaxstyle  # noqa: E402

# The library's modules. The command's (`jaxstyle.cli`) are the application, documented by
# `jaxstyle --help` and the README.
MODULES = ["jaxstyle"] + sorted(
    m.name for m in pkgutil.walk_packages(jaxstyle.__path__, "jaxstyle.")
    if not m.name.startswith("jaxstyle.cli") and "._" not in m.name)
TOLERATED_WARNINGS = ("Error parsing type annotation",
                      "but a module with this name has already been added")  # named twice
IDENTIFIER = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")
UNLINKED_CODE = re.compile(r"<code>([^<]+)</code>")  # a resolved reference holds an <a> tag


def build(modules: list[str], output: Path) -> list[str]:
    """Renders ``modules`` into ``output``; returns the warnings that are not tolerated."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.pdoc(*modules, output_directory=output)
    return [str(w.message) for w in caught
            if not any(t in str(w.message) for t in TOLERATED_WARNINGS)]


def resolves(reference: str, modules: list[str]) -> bool | None:
    """Whether ``reference`` (``a.b.c``) names an existing object of a jaxstyle module; None when
    it does not start with a jaxstyle module's name (``jax.numpy.sum``, ``cfg.seed``)."""
    parts = reference.split(".")
    candidates = []
    for module in modules:
        for start in range(module.count(".") + 1):  # jaxstyle.models.vgg19: models.vgg19, vgg19
            short = module.split(".")[start:]
            if parts[: len(short)] == short:
                candidates.append((module, parts[len(short):]))
    if not candidates:
        return None
    for module, attributes in candidates:
        value = importlib.import_module(module)
        try:
            for attribute in attributes:
                value = getattr(value, attribute)
        except AttributeError:
            continue
        return True
    return False


def broken_references(output: Path, modules: list[str]) -> list[str]:
    """Code spans of the rendered pages that name a jaxstyle object that does not exist."""
    broken = set()
    for page in sorted(output.rglob("*.html")):
        for span in UNLINKED_CODE.findall(page.read_text()):
            reference = html.unescape(span).removesuffix("()")
            if IDENTIFIER.fullmatch(reference) and resolves(reference, modules) is False:
                broken.add(f"{page.relative_to(output)}: {reference}")
    return sorted(broken)


def test_the_api_reference_builds_with_every_reference_resolved(tmp_path):
    assert {"jaxstyle.sources.torch_pickle", "jaxstyle.models.vgg19", "jaxstyle.losses"} <= set(
        MODULES)
    assert build(MODULES, tmp_path) == []
    assert (tmp_path / "jaxstyle.html").is_file()
    assert (tmp_path / "jaxstyle" / "losses.html").is_file()
    assert "stylize_batch" in (tmp_path / "jaxstyle.html").read_text()  # the exports
    assert broken_references(tmp_path, MODULES) == []


def test_a_broken_reference_is_found(tmp_path):
    assert resolves("losses.targets", MODULES) and resolves("jaxstyle.vgg19.load", MODULES)
    assert resolves("models.vgg19.features", MODULES)
    assert resolves("losses.no_such_function", MODULES) is False
    assert resolves("jax.numpy.sum", MODULES) is None
    page = tmp_path / "page.html"
    page.write_text('<code><a href="x">losses.targets</a></code> <code>losses.gone</code> '
                    "<code>cfg.seed</code> <code>jaxstyle.vgg19.missing()</code>")
    assert broken_references(tmp_path, MODULES) == ["page.html: jaxstyle.vgg19.missing",
                                                    "page.html: losses.gone"]
