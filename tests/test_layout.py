"""The package's import graph, read from the source with `ast` (imports inside functions included):
no cycles between jaxstyle modules, and a numerical core that reaches no I/O library.

Two kinds of import statement never run when a module is imported, and are read as such: those
under ``if TYPE_CHECKING:`` (for type checkers only), and the package's PEP 562 exports
(`jaxstyle.__init__`'s ``_EXPORTS`` table, imported by its ``__getattr__`` on first attribute
access): they are *lazy* edges of ``jaxstyle``. They count for cycles, and a module that asks for one
(``from jaxstyle import load_image``) has an edge to the module that defines it; but `reached` does
not follow them from the package ``__init__`` that Python runs before any submodule, because
running that ``__init__`` does not import them. `test_core_import_loads_no_io_library` checks the
same rule by behaviour, in a fresh interpreter."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "jaxstyle"

# The numerical core: arrays in, arrays out; no files, terminals or argument parsing.
CORE = ("jaxstyle.errors", "jaxstyle.config", "jaxstyle.kernels", "jaxstyle.models",
        "jaxstyle.models.vgg19", "jaxstyle.imageops", "jaxstyle.losses", "jaxstyle.pyramid",
        "jaxstyle.optimize", "jaxstyle.tracking", "jaxstyle.starts", "jaxstyle.run_targets", "jaxstyle.problems",
        "jaxstyle.stylize", "jaxstyle.batch", "jaxstyle.sweep", "jaxstyle.memory",
        "jaxstyle.guidance", "jaxstyle.models.transformer", "jaxstyle.train",
        "jaxstyle.warp", "jaxstyle.buckets", "jaxstyle.lbfgs", "jaxstyle.video",
        "jaxstyle.spatial", "jaxstyle.tiles",
        *(f"jaxstyle.losses.{m}" for m in ("terms", "objective", "w2", "guided", "masked",
                                            "temporal", "relative")))
# Libraries that read or write files, talk to terminals or networks, or parse command lines.
IO_LIBRARIES = ("PIL", "h5py", "tqdm", "argparse", "urllib", "http", "socket", "requests",
                "pooch", "safetensors", "pickle", "zipfile", "subprocess", "tensorboard",
                "tensorboardX", "av", "cv2")
# Of those, the ones outside Python's standard library (JAX itself imports `socket` and others).
THIRD_PARTY_IO = tuple(lib for lib in IO_LIBRARIES if lib not in sys.stdlib_module_names)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``): a block that never runs."""
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def import_statements(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement that can run, in functions too; not under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif not is_type_checking(node):
            yield from import_statements(node)


def lazy_exports(init: Path) -> dict[str, str]:
    """name -> module of a package's PEP 562 exports: its ``_EXPORTS`` table of
    ``name: (module, attribute)``, read from the source."""
    for node in ast.parse(init.read_text(), str(init)).body:
        target = node.target if isinstance(node, ast.AnnAssign) else (
            node.targets[0] if isinstance(node, ast.Assign) else None)
        if isinstance(target, ast.Name) and target.id == "_EXPORTS":
            return {name: module for name, (module, _) in ast.literal_eval(node.value).items()}
    return {}


LAZY = lazy_exports(PACKAGE_ROOT / "__init__.py")


def imports(path: Path, modules: set[str]) -> tuple[set[str], set[str]]:
    """(jaxstyle modules, other top-level packages) that ``path`` imports anywhere in its body."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    internal, external = set(), set()

    def add(target: str) -> None:
        if target.split(".")[0] != "jaxstyle":
            external.add(target.split(".")[0])
            return
        while target not in modules:  # `from jaxstyle.x import name`: name is not a module
            target = target.rpartition(".")[0]
        internal.add(target)

    for node in import_statements(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # `from jaxstyle import losses` imports a module
                full = f"{base}.{alias.name}"
                if base == "jaxstyle" and full not in modules and alias.name in LAZY:
                    full = LAZY[alias.name]  # a lazy export: its module runs now
                add(full if full in modules else base)
    internal.discard(name)
    return internal, external


@pytest.fixture(scope="module")
def graph() -> dict[str, tuple[set[str], set[str]]]:
    paths = sorted(PACKAGE_ROOT.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports(p, modules) for p in paths}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycles(graph):
    edges = {name: set(internal) for name, (internal, _) in graph.items()}
    edges["jaxstyle"] |= set(LAZY.values())  # lazy edges too: no cycle through them either
    cycle = find_cycle(edges)
    assert cycle is None, " -> ".join(cycle)


def test_the_package_exports_lazily(graph):
    """``import jaxstyle`` imports no jaxstyle module: every export is a lazy edge, to a module."""
    internal, external = graph["jaxstyle"]
    assert internal == set() and external <= {"__future__", "importlib", "typing"}
    assert {"jaxstyle.stylize", "jaxstyle.image_io", "jaxstyle.vgg19"} <= set(LAZY.values())
    assert set(LAZY.values()) <= set(graph)
    # A lazy name asked for by `from jaxstyle import` is an edge to the module defining it. No
    # module does `import jaxstyle` itself, whose attributes the graph does not follow.
    assert all("jaxstyle" not in internal for internal, _ in graph.values())


def test_the_graph_sees_the_packages_modules(graph):
    assert set(CORE) <= set(graph)
    assert "jaxstyle.cli.stylize" in graph["jaxstyle.cli"][0]
    assert "argparse" in graph["jaxstyle.cli.common"][1]
    assert {"jaxstyle.sources", "jaxstyle.sources.layers", "jaxstyle.sources.keras_h5",
            "jaxstyle.sources.torch_pth", "jaxstyle.sources.torch_pickle"} <= set(graph)
    assert "pickle" in graph["jaxstyle.sources.torch_pickle"][1]
    assert "h5py" in graph["jaxstyle.sources.keras_h5"][1]
    assert not any(name.startswith("jaxstyle.bench") for name in graph)  # now `benchmarks/`


def test_the_package_never_imports_the_benchmarks(graph):
    """`benchmarks/` sits beside the package and uses it; no arrow runs back (the package installs
    without that folder)."""
    importers = sorted(name for name, (_, external) in graph.items() if "benchmarks" in external)
    assert importers == []


def reached(graph, start: str) -> set[str]:
    """jaxstyle modules that importing ``start`` runs: its imports, theirs, and the packages'
    ``__init__`` of each (Python runs them first). The lazy exports of ``jaxstyle`` are not in
    ``graph`` (see the module docstring): its ``__init__`` runs without importing them."""
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += graph[name][0]
        parent = name.rpartition(".")[0]
        if parent:
            todo.append(parent)
    return seen


@pytest.mark.parametrize("core_module", CORE)
def test_core_reaches_no_io_library(graph, core_module):
    for module in sorted(reached(graph, core_module)):
        assert module in CORE or module == "jaxstyle", (
            f"{core_module} reaches {module}, which is not part of the numerical core")
        io = sorted(set(graph[module][1]) & set(IO_LIBRARIES))
        assert not io, f"{core_module} reaches {io} through {module}"


def test_core_import_loads_no_io_library():
    """The rule above by behaviour: a fresh interpreter that imports the core (package ``__init__``
    included) has loaded none of the third-party I/O libraries nor jaxstyle's I/O modules. (Only
    third-party ones: JAX itself imports standard-library modules such as ``socket``.)"""
    watched = [*THIRD_PARTY_IO,
               "jaxstyle.image_io", "jaxstyle.weights", "jaxstyle.sources", "jaxstyle.vgg19",
               "jaxstyle.cli"]
    code = (f"import sys\nfor m in {list(CORE)!r}: __import__(m)\n"
            f"print(' '.join(m for m in {watched!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == []
