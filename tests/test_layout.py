"""The package's shape: stage packages whose imports flow one way, no cycles, no API name hiding a module."""
import ast
import importlib
import pkgutil
from pathlib import Path

import pdiff

PACKAGE = Path(pdiff.__file__).parent
# the stages in pipeline order; a module may import its own stage and the ones before it. api and cli are the
# edges (they may import any stage; cli's subcommands live in commands/), pdiff/__init__ and __main__ sit above them.
ORDER = ["core", "data", "models", "collection", "generator", "measure", "studies", "app", "api", "commands", "cli",
         "__main__", "__init__"]
EDGE_LINES, EDGE_FUNCTION_LINES = 450, 30  # the command line parses and calls: the recipes are the library's


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path) -> set[str]:
    """Every pdiff module `path` imports, at the top or inside a function (both make a dependency)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            candidates = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        found |= {c for c in candidates if c in MODULES}
    return found


def stage(module: str) -> int:
    parts = module.split(".")
    return ORDER.index(parts[1] if len(parts) > 1 else "__init__")


EDGES = {m: imports(p) - {m} for m, p in MODULES.items()}


def test_every_module_belongs_to_a_stage():
    loose = [m for m in MODULES if len(m.split(".")) > 1 and m.split(".")[1] not in ORDER]
    assert not loose, f"modules outside the stage packages: {loose}"


def test_imports_flow_one_way():
    against = [f"{a} -> {b}" for a, targets in EDGES.items() for b in targets
               if b != "pdiff" and not a.startswith(b + ".") and stage(b) > stage(a)]
    assert not against, "imports against the stage order: " + "; ".join(sorted(against))


def test_core_imports_nothing_else_from_pdiff():
    outside = [f"{a} -> {b}" for a, targets in EDGES.items() if a.startswith("pdiff.core")
               for b in targets if not b.startswith("pdiff.core")]
    assert not outside, outside


def test_no_import_cycle():
    state, cycles = {}, []

    def visit(node, path):
        state[node] = "open"
        for nxt in EDGES[node]:
            if nxt == "pdiff" or node.startswith(nxt + "."):
                continue  # a package's own __init__ is loaded on the way in, not a dependency
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for m in sorted(MODULES):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_the_checker_sees_a_cycle_and_an_upward_edge(tmp_path):
    """The rules above can fail: a measure module importing studies is against the order."""
    assert stage("pdiff.studies.report") > stage("pdiff.measure.engine")
    assert "pdiff.measure.engine" in imports(MODULES["pdiff.studies.report"])


def test_no_name_hides_a_module():
    """`import pdiff.x.y as m` gives the module: no package binds a submodule's name to anything else."""
    hidden = []
    for info in pkgutil.walk_packages(pdiff.__path__, "pdiff."):
        if info.name == "pdiff.__main__":  # importing it runs the CLI
            continue
        module = importlib.import_module(info.name)
        parent_name, _, leaf = info.name.rpartition(".")
        parent = importlib.import_module(parent_name)
        if getattr(parent, leaf, module) is not module:
            hidden.append(f"{parent_name}.{leaf} is {type(getattr(parent, leaf)).__name__}")
    assert not hidden, hidden


def test_at_most_eight_parameters():
    wide = []
    for m, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                count = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) - int(bool(a.args) and a.args[0].arg in ("self", "cls"))
                if count > 8:
                    wide.append(f"{m}.{node.name} ({count})")
    assert not wide, "functions with more than 8 parameters: " + ", ".join(wide)


def test_the_command_line_only_parses_and_calls():
    """cli.py and each subcommand module stay small, and no function in them grows past a screen: a recipe that
    builds something belongs in the library (generator.recipe, collection.collect), where pdiff.train calls it too."""
    long = []
    for m, path in MODULES.items():
        if m != "pdiff.cli" and not m.startswith("pdiff.commands"):
            continue
        text = path.read_text()
        if len(text.splitlines()) > EDGE_LINES:
            long.append(f"{m}: {len(text.splitlines())} lines")
        long += [f"{m}.{node.name}: {node.end_lineno - node.lineno + 1} lines" for node in ast.walk(ast.parse(text))
                 if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                 and node.end_lineno - node.lineno + 1 > EDGE_FUNCTION_LINES]
    assert not long, f"over {EDGE_LINES} lines a module or {EDGE_FUNCTION_LINES} a function: " + ", ".join(long)
