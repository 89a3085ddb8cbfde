"""The layer rule of goggles' packages (ARCHITECTURE.md): a module imports only from layers below
its own, and from its own package. Every import counts, those inside functions too."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

from tests.conftest import ROOT

LAYERS: list[set[str]] = [
    {"goggles", "goggles.config", "goggles.parameters"},   # base: the run's parameters, errors
    {"goggles.io"},                                         # storage and artifact contracts
    {"goggles.ingest", "goggles.features",                  # the stages' own work, and the
     "goggles.export"},                                     # export of labels (peers)
    {"goggles.inference"},                                  # class inference (reads features)
    {"goggles.report"},                                     # evaluation and the report
    {"goggles.training"},                                   # end model, apply to new images
    {"goggles.pipeline"},                                   # the stages and their wiring
    {"goggles.kubeflow"},                                   # the Kubeflow DAG and runners
    {"goggles.commands"},                                   # train, apply, export commands
    {"goggles.cli", "goggles.demo"},                        # commands
]
"""Lowest first. A unit is a package (``goggles.io``) or a top-level module (``goggles.cli``)."""


def unit_of(module: str) -> str:
    """The unit a goggles module belongs to: ``goggles.io.storage`` -> ``goggles.io``."""
    return ".".join(module.split(".")[:2])


def layer_of(unit: str) -> int:
    for index, units in enumerate(LAYERS):
        if unit in units:
            return index
    raise AssertionError(f"{unit} is in no layer: add it to LAYERS and to ARCHITECTURE.md")


def module_name(root: Path, path: Path) -> str:
    relative = path.relative_to(root).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(root: Path, name: str) -> bool:
    where = root.joinpath(*name.split("."))
    return where.is_dir() or where.with_suffix(".py").is_file()


def imports_of(root: Path, path: Path, module: str) -> list[tuple[int, str]]:
    """(line, imported goggles module) of every import in the file, relative ones resolved."""
    found = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from goggles.io import storage` imports the module goggles.io.storage
            modules = [f"{base}.{a.name}" for a in node.names
                       if is_module(root, f"{base}.{a.name}")]
            found += [(node.lineno, name) for name in modules]
            if len(modules) < len(node.names):
                found.append((node.lineno, base))
    return [(line, name) for line, name in found
            if name == "goggles" or name.startswith("goggles.")]


def violations(root: Path) -> list[str]:
    """Every import under ``root/goggles`` that breaks the rule, as ``file:line: a -> b``."""
    found = []
    for path in sorted((root / "goggles").rglob("*.py")):
        module = module_name(root, path)
        own = unit_of(module)
        for line, imported in imports_of(root, path, module):
            other = unit_of(imported)
            if other == own or imported == "goggles" or layer_of(other) == layer_of(own) == 0:
                continue
            if layer_of(other) >= layer_of(own):
                found.append(f"{path.relative_to(root)}:{line}: {own} (layer {layer_of(own)}) "
                             f"imports {imported} (layer {layer_of(other)})")
    return found


def test_every_import_follows_the_layer_rule() -> None:
    assert violations(ROOT) == []


def test_every_package_has_its_layer() -> None:
    units = {unit_of(module_name(ROOT, p)) for p in (ROOT / "goggles").rglob("*.py")}
    assert units <= set().union(*LAYERS), units - set().union(*LAYERS)


def test_an_import_against_the_rule_is_caught(tmp_path: Path) -> None:
    """The check can fail: storage (io) importing the pipeline, a lazy import of the report
    inside an inference function, and a peer import between ingest and features."""
    shutil.copytree(ROOT / "goggles", tmp_path / "goggles",
                    ignore=shutil.ignore_patterns("__pycache__"))
    storage = tmp_path / "goggles" / "io" / "storage.py"
    storage.write_text(storage.read_text() + "\nfrom goggles.pipeline import stages\n")
    graph = tmp_path / "goggles" / "inference" / "graph.py"
    graph.write_text(graph.read_text()
                     + "\n\ndef _late():\n    from goggles.report import page\n    return page\n")
    extraction = tmp_path / "goggles" / "features" / "extraction.py"
    extraction.write_text(extraction.read_text() + "\nfrom goggles.ingest import manifest\n")
    found = violations(tmp_path)
    assert len(found) == 3, found
    assert any("io/storage.py" in f and "goggles.pipeline.stages" in f for f in found)
    assert any("inference/graph.py" in f and "goggles.report.page" in f for f in found)
    assert any("features/extraction.py" in f and "goggles.ingest.manifest" in f for f in found)


def test_only_the_kubeflow_package_and_the_command_import_kfp() -> None:
    allowed = {"goggles.kubeflow", "goggles.cli"}
    for path in sorted((ROOT / "goggles").rglob("*.py")):
        module = module_name(ROOT, path)
        tree = ast.parse(path.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        if any(n == "kfp" or n.startswith("kfp.") for n in names):
            assert unit_of(module) in allowed, module


def import_cycles(root: Path) -> list[list[str]]:
    """Every circle of imports among goggles' modules (types and imports inside functions
    count), each as the list of modules around it, the smallest name first."""
    graph: dict[str, set[str]] = {}
    for path in sorted((root / "goggles").rglob("*.py")):
        module = module_name(root, path)
        graph[module] = {name for _, name in imports_of(root, path, module) if name != module}
    cycles: set[tuple[str, ...]] = set()

    def walk(node: str, trail: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in trail:
                loop = trail[trail.index(nxt):]
                first = loop.index(min(loop))
                cycles.add(tuple(loop[first:] + loop[:first]))
            elif nxt in graph and len(trail) < 8:
                walk(nxt, trail + [nxt])

    for start in sorted(graph):
        walk(start, [start])
    # a package's __init__ importing its own modules is no circle of the code's
    return [list(c) for c in sorted(cycles) if not any(m == unit_of(m) for m in c)]


def test_no_two_modules_import_each_other() -> None:
    assert import_cycles(ROOT) == []


def test_an_import_circle_is_caught(tmp_path: Path) -> None:
    """The check can fail: graph EM's dev-label choice importing graph EM back (even inside a
    function, even for types), as it did before issue 26."""
    shutil.copytree(ROOT / "goggles", tmp_path / "goggles",
                    ignore=shutil.ignore_patterns("__pycache__"))
    choice = tmp_path / "goggles" / "inference" / "dev_choice.py"
    choice.write_text(choice.read_text() + "\n\ndef _late():\n"
                      "    from goggles.inference.graph_em import GraphEM\n    return GraphEM\n")
    found = import_cycles(tmp_path)
    assert ["goggles.inference.dev_choice", "goggles.inference.graph_em"] in found, found
