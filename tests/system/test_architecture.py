"""The package's structure: no import cycle, no module using another module's private names,
every module importable on its own in a fresh interpreter, in any order."""
from __future__ import annotations

import ast
import random
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "pipeline"


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__main__.py":          # runs the CLI when imported: `python -m` only
            continue
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for every import of the package in the module,
    at its top or inside a function."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.split(".")[0] == "pipeline"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "pipeline":
                continue
            for a in node.names:                 # `from pipeline.store import gpkg` imports a module
                sub = f"{base}.{a.name}"
                out.append((sub, []) if sub in known else (base, [a.name]))
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    edges = {m: set() for m in mods}
    for name, path in mods.items():
        for target, _ in imports(name, path, known):
            if target in known and target != name:
                edges[name].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_the_package():
    found = cycles(graph())
    assert not found, "import cycles (top-level or inside functions): " + "; ".join(" ↔ ".join(c) for c in found)


def test_no_module_imports_another_modules_private_name():
    mods = modules()
    known = set(mods)
    private = []
    for name, path in mods.items():
        for target, names in imports(name, path, known):
            private += [f"{name} imports {target}.{n}" for n in names if n.startswith("_") and target != name]
    assert not private, "; ".join(private)


def test_every_module_imports_in_any_order_in_a_fresh_interpreter():
    names = sorted(modules())
    orders = [names, names[::-1], random.Random(15).sample(names, len(names))]
    for order in orders:
        code = "import importlib\n" + "".join(f"importlib.import_module({n!r})\n" for n in order)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]


PROCESSING_PATH = ("pipeline.ingest", "pipeline.detection", "pipeline.cases", "pipeline.process", "pipeline.store")
TRAINING_CODE = ("pipeline.model.train", "pipeline.model.evaluate", "pipeline.model.review_data",
                 "pipeline.model.review_replay", "pipeline.model.registry", "pipeline.synth")


def reached(edges: dict[str, set[str]], start: str) -> set[str]:
    """Every module ``start`` imports, directly or through others (at its top or in functions)."""
    seen, todo = set(), [start]
    while todo:
        for w in edges.get(todo.pop(), ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def training_imports(edges: dict[str, set[str]]) -> list[str]:
    return [f"{m} → {t}" for m in sorted(edges) if m.startswith(PROCESSING_PATH)
            for t in sorted(reached(edges, m)) if t.startswith(TRAINING_CODE)]


def test_the_training_rule_catches_a_processing_module_that_reaches_training_code():
    edges = {"pipeline.process.run": {"pipeline.model.active"}, "pipeline.model.active": {"pipeline.model.train"},
             "pipeline.model.train": set(), "pipeline.cli": {"pipeline.model.train"}}
    assert training_imports(edges) == ["pipeline.process.run → pipeline.model.train"]


def test_the_processing_path_never_imports_training_evaluation_or_review_code():
    found = training_imports(graph())
    assert not found, "; ".join(found)


def test_patrol_run_loads_no_training_code():
    code = ("import sys, pipeline.process, pipeline.process.run, pipeline.cases.manual\n"
            "print(' '.join(m for m in sys.modules if m.startswith(" + repr(TRAINING_CODE) + ")))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and not r.stdout.strip(), r.stdout + r.stderr[-2000:]


LAZY_MODULE = "# lazy imports:"          # a module-wide reason (the CLI: start-up time)


def unexplained_lazy_imports(name: str, path: Path) -> list[str]:
    """Imports of the package inside a function with no comment saying why: on the statement, on
    the line above it, or once for the whole module (a line starting with ``LAZY_MODULE``)."""
    src = path.read_text(encoding="utf-8")
    if any(line.startswith(LAZY_MODULE) for line in src.splitlines()):
        return []
    lines = src.splitlines()
    out = []
    for fn in ast.walk(ast.parse(src)):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.ImportFrom):
                internal = bool(node.level) or (node.module or "").startswith("pipeline")
            elif isinstance(node, ast.Import):
                internal = any(a.name.startswith("pipeline") for a in node.names)
            else:
                continue
            above = lines[node.lineno - 2].strip() if node.lineno >= 2 else ""
            said = above.startswith("#") or any("#" in t for t in lines[node.lineno - 1:node.end_lineno])
            if internal and not said:
                out.append(f"{name}:{node.lineno}")
    return sorted(set(out))


def test_the_lazy_import_rule_catches_an_import_without_a_reason(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from pipeline.core import errors\n\n\ndef g():\n"
                   "    # lazy: loads rasterio only when used\n    from pipeline.detection import tiling\n"
                   "    from pipeline.cases import track  # lazy: a cycle\n", encoding="utf-8")
    assert unexplained_lazy_imports("m", src) == ["m:2"]


def test_every_import_inside_a_function_says_why():
    mods = modules()
    found = [x for name, path in mods.items() for x in unexplained_lazy_imports(name, path)]
    assert not found, "imports of the package inside a function without a comment saying why: " + ", ".join(found)
