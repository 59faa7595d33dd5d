"""Imports point one way: down the layers of the package, never back up, and no module
imports itself through others.

Read from the source (ast), not by importing it, so an import inside a function,
which runs only sometimes, counts exactly as much as one at the top of a module.

Layers, lowest first:
    ground floor  schema, resources, workload, model_config: each other at most
    kernels       a leaf: nothing of helmrec
    hstu -> fastpath -> pool -> serving, each over the ones before and the ground floor
    allocator     beside them: the ground floor only (never pool, serving, hstu, load)
    router        beside them: helmrec.schema only (it runs on hosts without torch)
    launcher      the ground floor and hstu
    model_repository  the model.py shims: serving and what serving may import
    load          anything but cli; nothing but load and cli imports load
    cli           the top: nothing imports it
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
# folder of the work tree -> its import name (pyproject.toml's package-dir)
FOLDERS = {"python_backend": "helmrec", "allocator": "helmrec.allocator", "router": "helmrec.router",
           "load": "helmrec.load", "model_repository": "helmrec.model_repository"}

GROUND = frozenset({"schema", "resources", "workload", "model_config"})
SERVING_STACK = GROUND | {"kernels", "hstu", "fastpath", "pool", "allocator", "serving"}
# component -> the other components it may import; `helmrec` itself (empty) is open to all.
ALLOWED: dict[str, frozenset[str]] = {
    **{name: GROUND for name in GROUND},
    "kernels": frozenset(),
    "hstu": GROUND | {"kernels"},
    "fastpath": GROUND | {"kernels", "hstu"},
    "pool": GROUND | {"kernels", "hstu", "fastpath"},
    "serving": SERVING_STACK,
    "allocator": GROUND,
    "router": frozenset({"schema"}),
    "launcher": GROUND | {"hstu"},
    "model_repository": SERVING_STACK,
    "load": SERVING_STACK | {"router", "launcher"},
    "cli": SERVING_STACK | {"router", "launcher", "load"},
}
ROOT = "helmrec"


def modules() -> Iterator[tuple[str, Path]]:
    """(dotted name, file) of every module of the package."""
    for folder, package in FOLDERS.items():
        for path in sorted((CHECKOUT / folder).rglob("*.py")):
            parts = path.relative_to(CHECKOUT / folder).with_suffix("").parts
            name = ".".join([package, *(p for p in parts if p != "__init__")])
            yield name, path


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """Every helmrec module `path` imports, anywhere in it; relative imports resolved.
    `from package import submodule` depends on the submodule, not on the package's __init__."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names)
    return {m for m in found if m == ROOT or m.startswith(ROOT + ".")}


def component(module: str) -> str:
    """helmrec.pool.kv_cache -> pool; helmrec.schema -> schema; helmrec -> helmrec."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT


def graph() -> dict[str, set[str]]:
    """module -> the helmrec modules it imports."""
    files = dict(modules())
    return {name: imported(name, path, set(files)) for name, path in files.items()}


def layer_violations(imports: Mapping[str, set[str]], allowed: Mapping[str, frozenset[str]]) -> list[str]:
    problems = []
    for source, targets in sorted(imports.items()):
        here = component(source)
        if here not in allowed and here != ROOT:
            problems.append(f"{source}: component {here!r} has no place in the layers (add it to ALLOWED)")
            continue
        for target in sorted(targets):
            there = component(target)
            if there in (here, ROOT) or there in allowed.get(here, frozenset()):
                continue
            problems.append(f"{source} imports {target}: {here} may import only {sorted(allowed.get(here, ()))}")
    return problems


def cycles(imports: Mapping[str, set[str]]) -> list[list[str]]:
    """Groups of modules that import each other, directly or round a loop (Tarjan's SCCs)."""
    edges = {m: (ts & imports.keys()) - {m} for m, ts in imports.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(edges[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_every_folder_has_modules() -> None:
    names = [name for name, _ in modules()]
    for package in FOLDERS.values():
        assert package in names, f"{package}: no __init__.py found; the layer rule would check nothing"


def test_imports_point_down_the_layers() -> None:
    problems = layer_violations(graph(), ALLOWED)
    assert not problems, "imports that run back up the layers:\n" + "\n".join(problems)


def test_no_module_imports_itself_round_a_loop() -> None:
    found = cycles(graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(group) for group in found)


def test_cli_imports_its_subcommands_lazily() -> None:
    """`helmrec route` must not pay for torch: cli.py imports no helmrec module at its top level."""
    tree = ast.parse((CHECKOUT / "python_backend" / "cli.py").read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = [getattr(n, "module", None) or n.names[0].name for n in top]
    assert not [m for m in names if m and m.startswith(ROOT)], names


def test_the_rules_catch_what_they_forbid() -> None:
    """The checks themselves: an upward import, an unplaced component and a loop are each reported."""
    upward = {"helmrec.pool.pool": {"helmrec.allocator.observation"}, "helmrec.kernels.a": {"helmrec.hstu.layer"}}
    assert len(layer_violations(upward, ALLOWED)) == 2
    assert layer_violations({"helmrec.newpart.x": set()}, ALLOWED) == [
        "helmrec.newpart.x: component 'newpart' has no place in the layers (add it to ALLOWED)"
    ]
    assert layer_violations({"helmrec.load.demo": {"helmrec.cli"}}, ALLOWED)
    assert layer_violations({"helmrec.router.cli": {"helmrec.pool"}}, ALLOWED)
    assert not layer_violations({"helmrec.serving.x": {"helmrec.pool.pool", "helmrec", "helmrec.serving.y"}}, ALLOWED)
    loop = {"helmrec.allocator.oracle": {"helmrec.allocator.sim_env"}, "helmrec.allocator.sim_env": {"helmrec.allocator.oracle"}}
    assert cycles(loop) == [["helmrec.allocator.oracle", "helmrec.allocator.sim_env"]]


def test_imports_are_read_from_anywhere_in_a_module(tmp_path: Path) -> None:
    """Relative, function-local and `from package import submodule` imports all count, as what they name."""
    source = tmp_path / "pool.py"
    source.write_text(
        "from ..allocator.observation import FEATURES\n"
        "from helmrec.launcher import orphans, TritonServer\n"
        "import numpy\n"
        "def later():\n"
        "    import helmrec.load.demo\n"
    )
    found = imported("helmrec.pool.pool", source, known={"helmrec.launcher.orphans"})
    assert found == {"helmrec.allocator.observation", "helmrec.launcher.orphans", "helmrec.launcher", "helmrec.load.demo"}
