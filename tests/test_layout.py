"""The package's two floors: the library never imports the application, no import cycles anywhere,
and one module owns each file name the tool writes. Imports inside functions count."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "hiddenkey"
APPLICATION = ("hiddenkey.cli", "hiddenkey.tasks", "hiddenkey.metrics")
#: File names the tool writes; each must be spelled in exactly one module.
OWNED_FILE_NAMES = (
    "args.json", "task.json", ".hiddenkey.lock", "metrics.json", "training_curves.png", "predictions.jsonl",
    "hiddenkey_config.json", ".saving",
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    """Edges module -> package modules it imports, at any depth of the file (functions included)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                parent = _resolve(name, path.name == "__init__.py", node)
                targets = [f"{parent}.{a.name}" if f"{parent}.{a.name}" in modules else parent for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:  # "hiddenkey.tasks.glue.x" -> the module that holds x
                    target = target.rpartition(".")[0]
                if target.startswith(PACKAGE) and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def _is_application(module: str) -> bool:
    return any(module == root or module.startswith(root + ".") for root in APPLICATION)


def test_the_graph_sees_function_level_imports():
    graph = import_graph()
    # cli.main imports .generation only inside cmd_train: it must still be an edge
    assert "hiddenkey.cli.generation" in graph["hiddenkey.cli.main"]
    assert "hiddenkey.trainer" in graph["hiddenkey.cli.classification"]


def test_the_library_imports_nothing_from_the_application():
    graph = import_graph()
    library = [m for m in graph if not _is_application(m)]
    assert {"hiddenkey", "hiddenkey.attach", "hiddenkey.trainer", "hiddenkey.config"} <= set(library)
    leaks = {m: sorted(t for t in graph[m] if _is_application(t)) for m in library}
    assert not {m: t for m, t in leaks.items() if t}, leaks


def test_no_import_cycles():
    graph = import_graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles


@pytest.mark.parametrize("file_name", OWNED_FILE_NAMES)
def test_each_written_file_name_has_one_owner(file_name):
    owners = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value == file_name:
                owners.append(name)
    assert len(set(owners)) == 1, (file_name, owners)
