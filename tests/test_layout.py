"""The code's layout promises: the method at the top level imports nothing of the machinery in harness/ (train.py
only a few named calls) and knows nothing of older checkpoints, no command-line script imports another, no module
of the project imports itself back through others, the top level stays small, and no test hooks live in production
code. CPU, ~1 s.

    python -m pytest tests/test_layout.py -q
"""
import ast
import re
from pathlib import Path

from conftest import ROOT

# the programs a user runs; library modules with a small __main__ (generator_model.py, discriminator_model.py) are
# imported by design
SCRIPTS = {"train", "predict", "evaluate", "bench", "demo", "export", "download_dataset"}
# the method, read in this order by a newcomer
LEARNER_PATH = ["config", "pix2pix", "generator_model", "discriminator_model", "layers", "dataset", "train"]


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module `path` imports, at the top or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_no_script_imports_another_script():
    ours = {p.stem for p in ROOT.glob("*.py")}
    assert SCRIPTS <= ours
    offenders = {p.name: sorted(imported_modules(p) & SCRIPTS - {p.stem}) for p in ROOT.glob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def imports_of(name: str) -> set[str]:
    """Full dotted names of every module `name`.py imports (top level or inside functions), and the names
    imported from harness."""
    found = set()
    for node in ast.walk(ast.parse((ROOT / f"{name}.py").read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {node.module} | ({f"{node.module}.{a.name}" for a in node.names}
                                     if node.module.startswith("harness") else set())
    return found


def test_the_method_imports_nothing_of_the_harness_and_train_only_a_few_named_calls():
    for name in LEARNER_PATH[:-1]:
        assert not {m for m in imports_of(name) if m.split(".")[0] == "harness"}, name
    harness_names = {m for m in imports_of("train") if m.startswith("harness.") and m.count(".") == 2}
    assert 0 < len(harness_names) <= 24, harness_names  # each a named call in the loop's straight line


def test_the_learners_path_is_short_and_the_top_level_small():
    lines = {name: len((ROOT / f"{name}.py").read_text().splitlines()) for name in LEARNER_PATH}
    assert sum(lines.values()) <= 1130, lines  # the paper path and the options and recipes beside it
    assert lines["train"] <= 220
    assert len(list(ROOT.glob("*.py"))) <= 16
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300


def test_no_environment_variable_test_hooks_in_production_code():
    production = [p for p in [*ROOT.glob("*.py"), *(ROOT / "harness").glob("*.py")]]
    hooks = {p.name: re.findall(r"environ[^\n]*PIX2PIX_\w+", p.read_text()) for p in production}
    assert {k: v for k, v in hooks.items() if v} == {}


def project_imports() -> dict[str, set[str]]:
    """Each module of the project (top level and harness/) -> the project modules it imports, at the top or inside
    functions: an import deferred into a function still ties the two modules together."""
    files = {p.stem: p for p in ROOT.glob("*.py")} | {f"harness.{p.stem}": p for p in ROOT.glob("harness/*.py")
                                                    if p.stem != "__init__"}
    graph = {}
    for module, path in files.items():
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        graph[module] = names & files.keys() - {module}
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every path by which a module imports itself again, each found from its smallest member."""
    circles = []

    def walk(path: list[str]) -> None:
        for nxt in sorted(graph[path[-1]]):
            if nxt == path[0]:
                circles.append(path + [nxt])
            elif nxt not in path and nxt > path[0]:
                walk(path + [nxt])
    for start in sorted(graph):
        walk([start])
    return circles


def test_no_module_imports_itself_back_through_others():
    graph = project_imports()
    assert "harness.weights" in graph["harness.official_format"] and "harness.checkpoint" in graph["harness.run"]
    assert import_circles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]  # the search finds one
    assert import_circles(graph) == []


def test_the_method_knows_nothing_of_older_checkpoints():
    """Reading files of older versions is the checkpoint upgrade path's job (harness/checkpoint.py)."""
    words = {name: re.findall(r"legacy|skip_relu|upgrade", (ROOT / f"{name}.py").read_text(), re.IGNORECASE)
             for name in LEARNER_PATH}
    assert {k: v for k, v in words.items() if v} == {}
