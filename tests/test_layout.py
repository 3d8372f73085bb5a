"""The folder tree is the architecture: imports run one way through the layers, with no cycle.

Every `import fastdqn...` counts, at module level, inside a function or under TYPE_CHECKING:
an import inside a function is still a dependency, only a later one. Third-party imports are
not the layout's business and are not read.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import fastdqn

PACKAGE = Path(fastdqn.__file__).parent

# Lower layers never import higher ones; layers of one rank never import each other.
LAYERS: dict[str, int] = {
    "errors": 0, "version": 0,
    "config": 1,
    "core": 2,
    "envs": 3, "nets": 3, "replay": 3,
    "learners": 4,
    "evaluation": 5,
    "algos": 6,
    "runtime": 7,
    "cli": 8,
    "": 9,  # fastdqn/__init__.py: the public names, re-exported from the layers
    "__main__": 10,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_in(source: str, name: str, is_package: bool = False) -> set[str]:
    """The fastdqn modules the module `name` (with this source) imports anywhere in its body,
    absolute or relative."""
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "fastdqn"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "fastdqn":
                continue
            for a in node.names:  # `from fastdqn.x import y` may name a module y
                sub = f"{target}.{a.name}"
                found.add(sub if sub in MODULES else target)
    return found - {name}


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {name: imports_in(path.read_text(), name, path.name == "__init__.py")
         for name, path in MODULES.items()}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def against_the_direction(graph: dict[str, set[str]]) -> list[str]:
    return [f"{m} imports {t}" for m, targets in sorted(graph.items()) for t in sorted(targets)
            if layer(t) != layer(m) and LAYERS[layer(t)] >= LAYERS[layer(m)]]


def cycles(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}
    found = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                found.append(" -> ".join([*stack[stack.index(t):], m, t] if t in stack else [m, t]))
            elif t not in state:
                visit(t, [*stack, m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    return found


def test_every_module_is_in_a_layer():
    assert {layer(m) for m in MODULES} <= set(LAYERS), sorted({layer(m) for m in MODULES} - set(LAYERS))


def test_imports_run_one_way():
    """errors -> config -> core -> envs | nets | replay -> learners -> evaluation -> algos ->
    runtime -> cli: a module imports only from lower layers and its own."""
    wrong = against_the_direction(GRAPH)
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    """Within a layer too: a cycle means two modules that cannot be read (or changed) apart."""
    found = cycles(GRAPH)
    assert not found, "\n".join(found)


@pytest.mark.parametrize("source", [
    "from fastdqn.runtime.run import Run\n",
    "def f():\n    from fastdqn.algos import apex\n",
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..nets import mlp\n",
    "import fastdqn.envs.vector\n",
])
def test_the_checks_see_imports_at_module_level_in_functions_and_relative(source):
    """Not vacuous: an upward import in config's module, however written, is reported, and so
    is a cycle."""
    graph = {**GRAPH, "fastdqn.config.settings": imports_in(source, "fastdqn.config.settings")}
    wrong = [w for w in against_the_direction(graph) if w.startswith("fastdqn.config.settings ")]
    assert len(wrong) == 1
    assert cycles({"fastdqn.a": {"fastdqn.b"}, "fastdqn.b": {"fastdqn.c"}, "fastdqn.c": {"fastdqn.a"}})
