"""The package's import graph, read from the source with `ast` (imports inside functions included):
no cycles between jaxstyle modules, and a numerical core that reaches no I/O library."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "jaxstyle"

# The numerical core: arrays in, arrays out; no files, terminals or argument parsing.
CORE = ("jaxstyle.errors", "jaxstyle.config", "jaxstyle.kernels", "jaxstyle.models",
        "jaxstyle.models.vgg19", "jaxstyle.imageops", "jaxstyle.losses", "jaxstyle.pyramid",
        "jaxstyle.optimize",
        "jaxstyle.stylize", "jaxstyle.batch", "jaxstyle.sweep", "jaxstyle.memory",
        "jaxstyle.guidance", "jaxstyle.models.transformer", "jaxstyle.train",
        "jaxstyle.warp")
# Libraries that read or write files, talk to terminals or networks, or parse command lines.
IO_LIBRARIES = ("PIL", "h5py", "tqdm", "argparse", "urllib", "http", "socket", "requests",
                "pooch", "safetensors", "pickle", "zipfile", "subprocess", "tensorboard",
                "tensorboardX", "av", "cv2")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


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

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
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
    cycle = find_cycle({name: internal for name, (internal, _) in graph.items()})
    assert cycle is None, " -> ".join(cycle)


def test_the_graph_sees_the_packages_modules(graph):
    assert set(CORE) <= set(graph)
    assert "jaxstyle.cli.stylize" in graph["jaxstyle.cli"][0]
    assert "argparse" in graph["jaxstyle.cli.common"][1]


def test_the_package_never_imports_the_benchmarks(graph):
    """`benchmarks/` sits beside the package and uses it; no arrow runs back (the package installs
    without that folder)."""
    importers = sorted(name for name, (_, external) in graph.items() if "benchmarks" in external)
    assert importers == []


def reached(graph, start: str) -> set[str]:
    """jaxstyle modules that importing ``start`` runs: its imports, theirs, and the packages'
    ``__init__`` of each (Python runs them first)."""
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
