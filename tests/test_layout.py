"""The engine's modules form layers that only point down: no import circle, no user interface."""

import ast
from pathlib import Path

import pytest

LAB = Path(__file__).resolve().parents[1] / "lab"


def module_name(path: Path) -> str:
    parts = path.relative_to(LAB.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path) -> list[str]:
    """Every module an ``import`` statement anywhere in the file names (inside functions too)."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            names += [base, *(f"{base}.{alias.name}" for alias in node.names)]
    return names


def module_graph() -> dict[str, set[str]]:
    """Module -> the ``lab`` modules it imports; a package's own submodules importing their package
    (which Python has already begun to run) is not an edge."""
    files = {module_name(p): p for p in LAB.rglob("*.py")}

    def known(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in files.items():
        targets = {known(n) for n in imported_names(path) if n == "lab" or n.startswith("lab.")}
        graph[name] = {t for t in targets if t and t != name and not name.startswith(t + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (its modules in order, the first repeated at the end), or None."""
    state, trail = {}, []

    def visit(node):
        state[node] = "open"
        trail.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return trail[trail.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        trail.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_engine_has_no_import_circle():
    cycle = find_cycle(module_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_circle_finder_finds_a_circle():
    graph = {"lab.a": {"lab.b"}, "lab.b": {"lab.c"}, "lab.c": {"lab.a"}, "lab.d": set()}
    assert find_cycle(graph) == ["lab.a", "lab.b", "lab.c", "lab.a"]
    assert find_cycle({"lab.a": {"lab.b"}, "lab.b": set()}) is None


def test_relative_and_package_imports_are_read_as_the_modules_they_name(tmp_path):
    graph = module_graph()
    assert "lab.algorithms.base" in graph["lab.algorithms"]
    assert "lab.clustering" in graph["lab.algorithms.clustered"]
    assert "lab.algorithms" not in graph["lab.algorithms.maml"]  # its own package


@pytest.mark.parametrize("path", sorted(LAB.rglob("*.py")), ids=lambda p: module_name(p))
def test_no_engine_module_imports_a_user_interface(path):
    ui = {n for n in imported_names(path) if n.split(".")[0] in ("streamlit", "ui", "views")}
    assert not ui, f"{module_name(path)} imports {sorted(ui)}"


def test_the_library_of_clustering_sits_below_the_algorithms():
    graph = module_graph()
    library = [m for m in graph if m == "lab.clustering" or m.startswith("lab.clustering.")]
    above = {"lab.algorithms", "lab.config", "lab.runs", "lab.evaluation", "lab.training", "lab.experts", "lab.jobs"}
    for module in library:
        reached = {t for t in graph[module] if t in above or t.startswith("lab.algorithms.")}
        assert not reached, f"{module} imports {sorted(reached)}"


MAX_LINES = 350  # a module longer than this holds more than one idea; split it along its sections


def test_every_engine_module_is_short_enough_to_read_in_one_sitting():
    long = {module_name(p): n for p in LAB.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
