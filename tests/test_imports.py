"""The package's imports run downward only (../shared/DESIGN.md, "Allowed imports"), and no modules
import each other in a circle. Every import counts: at module level, inside functions, under
TYPE_CHECKING. Read with `ast`, nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import perceiver_cli

PACKAGE = Path(perceiver_cli.__file__).parent

# The layers, bottom first: a module's first name under perceiver_cli -> what it may import besides
# itself (a package imports its own modules freely).
BASE = {"errors", "atomic", "console", "section"}  # small modules everything may use
BELOW_COMMANDS = BASE | {"recipe", "model", "data", "tasks", "runs", "engine"}
COMMANDS = {"attention", "evaluate", "predict", "export", "report", "bench"}
ALLOWED = {
    "errors": set(), "console": set(), "atomic": {"errors"}, "section": set(),
    "model": {"errors"},
    "data": BASE,
    "tasks": BASE | {"model", "data"},
    "recipe": {"errors", "section", "tasks"},  # each task's own `task:` section lives in its file
    "runs": BASE | {"recipe", "model", "data", "tasks"},
    "engine": BASE | {"recipe", "model", "data", "tasks", "runs"},
    **{command: BELOW_COMMANDS for command in COMMANDS},
    "seeds": BELOW_COMMANDS | {"evaluate"},  # trains runs and evaluates each
    "catalogue": BELOW_COMMANDS,  # the shipped recipes, and a recipe's model built without training
    "cli": BELOW_COMMANDS | COMMANDS | {"seeds", "catalogue", "__init__"},  # only the CLI imports the commands' modules
    "__main__": {"cli"},
    "api": BELOW_COMMANDS | {"catalogue"},  # the Python API: train, list_recipes, create_model
    "__init__": {"predict", "api"},  # perceiver_cli.load and the API's functions
}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """The package's modules that `path` (module `name`) imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            modules = {f"{base}.{alias.name}" for alias in node.names} & known  # `from . import checkpoint`
            found.update(modules)
            if len(modules) < len(node.names):  # a name defined in base itself
                found.add(base)
    return {module for module in found if module in known and module != name}


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    files = {module_name(path, root): path for path in sorted(root.rglob("*.py"))}
    return {name: imports_of(path, name, set(files)) for name, path in files.items()}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for module, imported in sorted(graph.items()):
        mine = layer(module)
        if mine not in ALLOWED:
            problems.append(f"{module}: not in any layer; add '{mine}' to ALLOWED in tests/test_imports.py "
                            f"(and to DESIGN.md's import rules)")
            continue
        for target in sorted(imported):
            theirs = layer(target)
            if theirs != mine and theirs not in ALLOWED[mine]:
                problems.append(f"{module} imports {target}: {mine} may import only {sorted(ALLOWED[mine]) or 'nothing of ours'}")
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle of imports per strongly connected group of modules (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(circle_through(graph, group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def circle_through(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A path start -> ... -> start inside a strongly connected group (breadth first: the shortest)."""
    start = min(group)
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for target in sorted(graph[path[-1]] & group):
            if target == start:
                return path + [start]
            if target not in seen:
                seen.add(target)
                paths.append(path + [target])
    raise AssertionError(group)


def test_imports_run_downward_only():
    problems = upward_imports(import_graph())
    assert not problems, "upward imports:\n" + "\n".join(problems)


def test_no_modules_import_each_other_in_a_circle():
    found = cycles(import_graph())
    assert not found, "import circles:\n" + "\n".join(" -> ".join(circle) for circle in found)


def test_the_checks_see_function_level_imports_and_circles(tmp_path):
    """The checker itself: an engine that imports a command inside a function, and a circle."""
    package = tmp_path / "perceiver_cli"
    for folder in ("engine", "attention"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "engine" / "train.py").write_text("def f():\n    from ..attention.views import probe\n")
    (package / "attention" / "views.py").write_text("from ..evaluate import load\n")
    (package / "evaluate.py").write_text("from .engine import train\n")
    graph = import_graph(package)
    assert graph["perceiver_cli.engine.train"] == {"perceiver_cli.attention.views"}
    assert upward_imports(graph) == [
        "perceiver_cli.attention.views imports perceiver_cli.evaluate: attention may import only "
        f"{sorted(BELOW_COMMANDS)}",
        "perceiver_cli.engine.train imports perceiver_cli.attention.views: engine may import only "
        f"{sorted(ALLOWED['engine'])}",
    ]
    assert cycles(graph) == [["perceiver_cli.attention.views", "perceiver_cli.evaluate", "perceiver_cli.engine.train",
                              "perceiver_cli.attention.views"]]
