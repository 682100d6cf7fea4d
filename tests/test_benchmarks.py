"""The benchmarks beside the package (`benchmarks/`): they import, answer ``--help`` from the root of
a clone, and use jaxstyle's public names only (read from their source with `ast`)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted((REPOSITORY_ROOT / "benchmarks").glob("*.py"))
NAMES = [p.stem for p in BENCHMARKS if p.stem != "__init__"]


def private_jaxstyle_names(path: Path) -> list[str]:
    """``jaxstyle`` names starting with ``_`` that ``path`` imports (``from jaxstyle.x import _y``,
    ``jaxstyle._x``) or reads from a jaxstyle module it imported (``module._name``)."""
    tree = ast.parse(path.read_text(), str(path))
    modules: set[str] = set()  # local names bound to jaxstyle modules (or their members)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "jaxstyle":
            for alias in node.names:
                if alias.name.startswith("_") or "._" in node.module:
                    found.append(f"{node.module}.{alias.name}")
                modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "jaxstyle":
                    if "._" in alias.name:
                        found.append(alias.name)
                    modules.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in modules:
                found.append(f"{ast.unparse(node)}")
    return found


def test_private_names_are_found(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from jaxstyle import image_io, optimize\nfrom jaxstyle.x import _y\n"
                     "image_io._to_uint8(1)\noptimize.run_steps._cache_size()\n"
                     "image_io.load_image\n")
    assert sorted(private_jaxstyle_names(probe)) == sorted(
        ["jaxstyle.x._y", "image_io._to_uint8", "optimize.run_steps._cache_size"])


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.stem)
def test_benchmarks_use_only_public_jaxstyle_names(path):
    assert private_jaxstyle_names(path) == []


def _run(*argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, *argv], cwd=REPOSITORY_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_every_benchmark_imports_from_a_clone():
    assert {"compare", "cli_quality", "fast", "memory", "worker", "inputs"} <= set(NAMES)
    done = _run("-c", "import importlib, sys\n"
                      f"for name in {NAMES!r}: importlib.import_module('benchmarks.' + name)\n"
                      "assert 'jaxstyle.bench' not in sys.modules")
    assert done.returncode == 0, done.stderr


def test_the_comparison_answers_help():
    done = _run("-m", "benchmarks.compare", "--help")
    assert done.returncode == 0, done.stderr
    assert "usage: python -m benchmarks.compare" in done.stdout
    assert "--time-to-quality" in done.stdout
