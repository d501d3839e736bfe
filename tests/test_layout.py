"""The house: one folder per pipeline stage, imports only downward, no cycles, a public API that no
module shadows, and a README layout that matches the tree."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import kernelfit

ROOT = Path(__file__).parent.parent
SRC = ROOT / "src" / "kernelfit"

# cli > serve/export > api > bench > load/dispatch > plan > model/probe/profiles > catalog > hardware > errors/paths.
# A stage may import its own stage and any stage with a lower rank.
RANK = {
    "errors": 0, "paths": 0, "version": 0, "cache_entry": 0, "sizes": 0,
    "hardware": 1,
    "catalog": 2,
    "model": 3, "probe": 3, "profiles": 3,
    "planner": 4, "engine": 4,
    "loader": 5, "dispatch": 5,
    "bench": 6,
    "api": 7,
    "serve": 8, "export": 8,
    "cli": 9,
    "__init__": 10, "__main__": 10, "auto": 10,
}
# stages of one rank that must not import each other (they are siblings, not layers)
SIBLINGS = ({"model", "probe", "profiles"}, {"planner", "engine"})
STAGE_FOLDERS = {"hardware", "catalog", "model", "probe", "profiles", "planner", "engine", "loader", "dispatch", "bench",
                 "serve", "export", "cli"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (SRC / rel).with_suffix(".py").is_file() or (SRC / rel / "__init__.py").is_file()


def imports(mod: str, is_package: bool, source: str) -> set[str]:
    """Every kernelfit module `source` imports, at module level or inside functions."""
    package = mod if is_package else mod.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("kernelfit")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("kernelfit"):
                continue
            for a in node.names:  # `from . import x` may name a module
                sub = f"{target}.{a.name}"
                out.add(sub if _exists(sub) else target)
    return {m for m in out if m != mod}


def stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def source_graph() -> dict[str, set[str]]:
    return {_module_name(p): imports(_module_name(p), p.name == "__init__.py", p.read_text()) for p in SRC.rglob("*.py")}


def upward(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, deps in graph.items():
        s = stage(mod)
        for dep in deps:
            d = stage(dep)
            if RANK[d] > RANK[s] or (d != s and any(d in group and s in group for group in SIBLINGS)):
                bad.append(f"{mod} -> {dep}")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    done, path, found = set(), [], []

    def visit(m):
        if m in path:
            found.append(path[path.index(m):] + [m])
            return
        if m in done:
            return
        path.append(m)
        for dep in sorted(graph.get(m, ())):
            visit(dep)
        path.pop()
        done.add(m)

    for m in sorted(graph):
        visit(m)
    return found


def test_every_module_belongs_to_a_ranked_stage():
    assert {stage(m) for m in source_graph()} <= set(RANK)


def test_no_stage_imports_a_stage_above_it():
    assert not upward(source_graph())


def test_no_import_cycles():
    assert not cycles(source_graph())


def test_the_checks_can_fail():
    """An upward import (catalog -> planner), a sibling import and a cycle are all reported."""
    g = {"kernelfit.catalog.x": imports("kernelfit.catalog.x", False, "from ..planner.search import plan\n"),
         "kernelfit.model.y": imports("kernelfit.model.y", False, "from ..probe import probe_machine\n"),
         "kernelfit.planner.a": {"kernelfit.planner.b"}, "kernelfit.planner.b": {"kernelfit.planner.a"}}
    assert g["kernelfit.catalog.x"] == {"kernelfit.planner.search"}
    assert set(upward(g)) == {"kernelfit.catalog.x -> kernelfit.planner.search", "kernelfit.model.y -> kernelfit.probe"}
    assert cycles(g) == [["kernelfit.planner.a", "kernelfit.planner.b", "kernelfit.planner.a"]]


PUBLIC = {"probe_machine": "function", "load_profile": "function", "load_model_spec": "function",
          "plan": "function", "make_plan": "function", "load": "function", "guard": "function",
          "register": "function", "Preferences": "class", "generate": "function", "load_image": "function"}


def test_public_api_survives_importing_every_module():
    """`kernelfit.plan(...)` stays the planner whatever was imported before: no module shadows it."""
    code = (
        "import importlib, pkgutil, inspect, sys, io, contextlib\n"
        "import kernelfit\n"
        "for m in pkgutil.walk_packages(kernelfit.__path__, 'kernelfit.'):\n"
        "    if m.name != 'kernelfit.__main__':\n"
        "        importlib.import_module(m.name)\n"
        f"want = {PUBLIC!r}\n"
        "for name, kind in want.items():\n"
        "    obj = getattr(kernelfit, name)\n"
        "    ok = inspect.isclass(obj) if kind == 'class' else inspect.isfunction(obj)\n"
        "    assert ok, (name, obj)\n"
        "from kernelfit import Preferences, load_profile, load_model_spec\n"
        "p = kernelfit.plan(load_profile('t4'), load_model_spec(sys.argv[1]), Preferences())\n"
        "print(p.dtype.value)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(ROOT / "tests/data/model-configs/qwen2.5-0.5b.json")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "float16"


def test_no_subpackage_is_named_like_a_public_function():
    names = {m.name for m in pkgutil.iter_modules(kernelfit.__path__)}
    assert not names & set(PUBLIC), names & set(PUBLIC)


def test_readme_layout_matches_the_tree():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Layout\n.*?```\n(.*?)```", text, re.S).group(1)
    listed = set(re.findall(r"^  (\w+)/", block, re.M))
    on_disk = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert listed == on_disk, (listed ^ on_disk)
    assert STAGE_FOLDERS <= on_disk
    modules = set(re.findall(r"^  (\w+\.py)", block, re.M))
    top = {p.name for p in SRC.glob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    assert modules == top, modules ^ top


def test_src_cites_nothing_under_shared():
    hits = [str(p) for p in SRC.rglob("*.py") if "shared/" in p.read_text()]
    assert not hits, hits


def test_importing_kernelfit_stays_cheap():
    r = subprocess.run([sys.executable, "-c", "import kernelfit, sys; print('torch' in sys.modules)"],
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "False", r.stderr


def test_every_module_imports():
    for m in pkgutil.walk_packages(kernelfit.__path__, "kernelfit."):
        if m.name != "kernelfit.__main__":
            importlib.import_module(m.name)
