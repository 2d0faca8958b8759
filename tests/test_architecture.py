"""The package layout of docs/ARCHITECTURE.md, checked: every project import goes from a higher
layer to a lower one, so there is no cycle between folders and the client side never pulls in the
server's generative stack."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("worlds", "task_models", "fedmmkt_strategy", "client_app", "server_app", "lab")
GROUPED = ("steps", "federation", "strategies", "runs", "reporting", "generative", "cli")

#: Lowest first; a unit may import only units of lower layers (and itself). Keep in step with
#: docs/ARCHITECTURE.md.
LAYERS: list[set[str]] = [
    {"worlds"},
    {"task_models"},
    {"fedmmkt_strategy", "fedmmkt_strategy.protocol", "fedmmkt_strategy.reporting"},
    {"fedmmkt_strategy.config", "fedmmkt_strategy.pool_sync"},
    {"fedmmkt_strategy.steps", "fedmmkt_strategy.generative"},
    {"fedmmkt_strategy.federation"},
    {"fedmmkt_strategy.strategies", "client_app"},
    {"fedmmkt_strategy.runs"},
    {"fedmmkt_strategy.cli", "server_app"},
    {"lab"},
]
#: An edge device installs the client without diffusers: the ClientApp must not reach the server side.
CLIENT_FORBIDDEN = {"fedmmkt_strategy.generative", "fedmmkt_strategy.federation", "fedmmkt_strategy.strategies"}


def unit_of(module: str) -> str | None:
    """The folder-level unit a dotted module belongs to (`fedmmkt_strategy.steps.labvote` ->
    `fedmmkt_strategy.steps`); None outside the project."""
    parts = module.split(".")
    if parts[0] not in PACKAGES:
        return None
    if parts[0] != "fedmmkt_strategy" or len(parts) == 1:
        return parts[0]
    return (
        f"fedmmkt_strategy.{parts[1]}"
        if parts[1] in GROUPED + ("config", "protocol", "pool_sync")
        else "fedmmkt_strategy"
    )


def layer_of(unit: str) -> int:
    for depth, layer in enumerate(LAYERS):
        if unit in layer:
            return depth
    raise AssertionError(f"{unit} is in no layer of LAYERS: add it to the table and docs/ARCHITECTURE.md")


def imported_modules(source: str) -> list[str]:
    """Every absolute module an import statement names (`from a.b import c` gives `a.b` and `a.b.c`)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
            found.extend(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
    return found


def project_edges() -> list[tuple[str, str, str]]:
    """(importing unit, imported unit, file) for every import between two different units."""
    edges = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            source_unit = unit_of(module)
            for name in imported_modules(path.read_text()):
                target = unit_of(name)
                # `from fedmmkt_strategy import protocol` names both the package and the module
                if target is None or target == source_unit or (target == "fedmmkt_strategy" and name != target):
                    continue
                edges.append((source_unit, target, str(path.relative_to(ROOT))))
    return edges


def test_unit_of_groups_modules_by_folder():
    assert unit_of("fedmmkt_strategy.steps.labvote") == "fedmmkt_strategy.steps"
    assert unit_of("fedmmkt_strategy.protocol") == "fedmmkt_strategy.protocol"
    assert unit_of("worlds.domain") == "worlds"
    assert unit_of("torch.nn") is None


def test_imports_only_go_down_the_layers():
    upward = [
        f"{file}: {source} (layer {layer_of(source)}) imports {target} (layer {layer_of(target)})"
        for source, target, file in project_edges()
        if layer_of(target) >= layer_of(source)
    ]
    assert not upward, "imports against the layering of docs/ARCHITECTURE.md:\n" + "\n".join(upward)


def test_the_client_side_never_imports_the_server_side():
    reached = [
        f"{file} imports {target}"
        for s, target, file in project_edges()
        if s == "client_app" and target in CLIENT_FORBIDDEN
    ]
    assert not reached, "\n".join(reached)


def test_the_checker_sees_an_upward_import():
    """The test above can fail: a `steps` module importing a strategy is caught."""
    edges = [(unit_of("fedmmkt_strategy.steps.labvote"), unit_of("fedmmkt_strategy.strategies.fedmmkt"))]
    assert all(layer_of(t) >= layer_of(s) for s, t in edges)


def test_every_layer_module_exists():
    for layer in LAYERS:
        for unit in layer:
            path = ROOT / unit.replace(".", "/")
            assert path.is_dir() or path.with_suffix(".py").exists(), unit
