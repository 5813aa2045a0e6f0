"""The folders are the architecture: each layer imports only the layers below it, no module
imports another in a circle, and only the libvirt adapter (and bench's read-write control)
imports libvirt. Read from the source with `ast`, function-local imports included."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import libvirt_snapshot_exporter

PACKAGE = Path(libvirt_snapshot_exporter.__file__).parent
NAME = "libvirt_snapshot_exporter"

# What each layer may import, besides itself. `config` is read by every layer that takes
# settings and reads its files as every file is read (store/safe_file.py); `cli` and
# `__main__` assemble everything.
MAY_IMPORT = {
    "model": set(),
    "config": {"store"},
    "sources": {"model"},
    "tracker": {"model"},
    "store": {"model"},
    "verdict": {"model", "sources", "store", "config"},
    "exposition": {"model", "store"},
    "web": {"model", "store", "verdict", "exposition", "config"},
    "loop": {"model", "sources", "tracker", "store", "verdict", "exposition", "config"},
    "bench": {"model", "sources", "store", "verdict", "loop", "config"},
    "cli": {"model", "sources", "tracker", "store", "verdict", "exposition", "web", "loop",
            "bench", "config"},
    "__main__": {"cli"},
    "__init__": set(),
}
# Only these modules may import libvirt itself.
LIBVIRT_IMPORTERS = {"sources.libvirt.adapter", "sources.libvirt.common", "bench.control"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(module: str, path: Path) -> set[str]:
    """The package's modules (or packages) that `module` imports, as dotted names inside it."""
    is_package = path.name == "__init__.py"
    here = module.split(".") if is_package else module.split(".")[:-1]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - node.level + 1]
                absolute = [NAME, *base, *(node.module.split(".") if node.module else [])]
            else:
                absolute = (node.module or "").split(".")
            names = [[*absolute, alias.name] for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name.split(".") for alias in node.names]
        else:
            continue
        for name in names:
            if name[0] != NAME:
                continue
            inside = name[1:]
            while inside and ".".join(inside) not in MODULES:
                inside = inside[:-1]  # `from .x import Symbol`: the module is x
            if inside:
                targets.add(".".join(inside))
    return targets - {module}


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def _layer(module: str) -> str:
    return module.split(".")[0]


def test_the_top_level_holds_only_the_entry_points_and_the_layer_folders():
    top = {p.name for p in PACKAGE.iterdir() if p.name != "__pycache__"}
    folders = {name for name in MAY_IMPORT if (PACKAGE / name).is_dir()}
    assert top == {"__init__.py", "__main__.py", "cli.py", "config.py"} | folders
    assert folders == set(MAY_IMPORT) - {"config", "cli", "__main__", "__init__"}


def _upward(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{module} imports {target}" for module, targets in graph.items()
                  for target in targets
                  if _layer(target) != _layer(module)
                  and _layer(target) not in MAY_IMPORT[_layer(module)] | {"__init__"})


def test_no_layer_imports_a_layer_above_it():
    assert not _upward(GRAPH)


def _circle(graph: dict[str, set[str]]) -> list[str] | None:
    """Depth-first search over the whole graph: a module met again on its own path is a circle."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return None
        for target in sorted(graph.get(module, ())):
            circle = visit(target, [*path, module])
            if circle:
                return circle
        done.add(module)
        return None

    for module in sorted(graph):
        circle = visit(module, [])
        if circle:
            return circle
    return None


def test_no_module_imports_in_a_circle():
    circle = _circle(GRAPH)
    assert circle is None, " -> ".join(circle or [])


def test_the_checks_see_a_wrong_import():
    """The graph is read from the code (its known edges are there), and the checks flag an
    upward edge and a circle added to it."""
    assert "tracker.domain" in GRAPH["tracker.tracker"]
    assert "model.operation" in GRAPH["store.view"]
    assert "cli" in GRAPH["__main__"]
    upward = {**GRAPH, "store.view": GRAPH["store.view"] | {"tracker.tracker"}}
    assert _upward(upward) == ["store.view imports tracker.tracker"]
    circle = {**GRAPH, "model.observations": GRAPH["model.observations"] | {"model.operation"},
              "model.operation": GRAPH["model.operation"] | {"model.observations"}}
    assert _circle(circle) is not None


def test_only_the_libvirt_adapter_and_bench_control_import_libvirt():
    importers = {module for module, path in MODULES.items()
                 for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, ast.Import) and any(a.name == "libvirt" for a in node.names)
                 or isinstance(node, ast.ImportFrom) and node.module == "libvirt" and not node.level}
    assert importers == LIBVIRT_IMPORTERS


def test_every_module_off_the_libvirt_side_imports_without_libvirt():
    """Those that reach libvirt through an import: the adapter, the loop owning it, the entry
    point and bench; everything else loads with libvirt absent."""
    reach = {m for m in MODULES if any(m == r or GRAPH[m] & {r} for r in LIBVIRT_IMPORTERS)}
    changed = True
    while changed:
        more = {m for m in MODULES if GRAPH[m] & reach} - reach
        reach |= more
        changed = bool(more)
    free = sorted(m for m in MODULES if m not in reach)
    assert {"tracker.tracker", "store.view", "web.routes", "exposition.renderer"} <= set(free)
    code = "import sys; sys.modules['libvirt'] = None\n" + "".join(
        f"import {NAME}.{name}\n" for name in free)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
