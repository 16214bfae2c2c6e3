"""One obvious place for each thing: no import cycle in the packages, no name defined twice in a module, no
module far past a sitting's reading, and nothing run at import but definitions."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("cifar_ae", "augment")


def modules():
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def _resolve(module, path, node):
    """The absolute module names an Import / ImportFrom node loads (only ours)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            base = base[:len(base) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        names = [prefix] + [f"{prefix}.{a.name}" for a in node.names]
    known = {m for m, _ in modules()}
    out = set()
    for n in names:
        while n and n not in known:  # "cifar_ae.models.BUILDERS" -> "cifar_ae.models"
            n = n.rpartition(".")[0]
        if n and n.split(".")[0] in PACKAGES:
            out.add(n)
    return out


def import_graph(top_level_only):
    graph = {}
    for module, path in modules():
        tree = ast.parse(path.read_text())
        nodes = tree.body if top_level_only else list(ast.walk(tree))
        deps = set()
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                deps |= _resolve(module, path, node)
        # a package's own __init__ is imported first anyway: an edge to one's parent package is not a cycle
        graph[module] = {d for d in deps if d != module and not module.startswith(d + ".")}
    return graph


def find_cycle(graph):
    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == "open":
                return stack[stack.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[n] = "done"
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


@pytest.mark.parametrize("top_level_only", [True, False], ids=["import-time", "including-lazy-imports"])
def test_no_import_cycle(top_level_only):
    graph = import_graph(top_level_only)
    assert "cifar_ae.training" in graph and "cifar_ae.trials" in graph["cifar_ae.training"]
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_no_name_is_defined_twice_in_a_module():
    for module, path in modules():
        seen = {}
        for node in ast.parse(path.read_text()).body:
            names = []
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names = [node.name]
            elif isinstance(node, ast.Assign):
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            for name in names:
                if name in ("__all__",):
                    continue
                assert name not in seen, f"{module}: {name} defined at lines {seen[name]} and {node.lineno}"
                seen[name] = node.lineno


def test_modules_read_in_one_sitting():
    long = {m: len(p.read_text().splitlines()) for m, p in modules() if len(p.read_text().splitlines()) > 600}
    assert not long, long


def test_importing_the_packages_runs_nothing_heavy():
    """Importing the trials, the notebook helpers and augment loads neither TensorFlow nor the tuned trials."""
    code = ("import sys; import cifar_ae.trials as t, cifar_ae.notebooks, cifar_ae.runs, augment; "
            "print('tensorflow' in sys.modules, t._TUNED_LOADED)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.split() == ["False", "False"]
