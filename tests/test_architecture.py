"""The import contract over the whole project: layers, independent model packages, no cycles,
no private names across packages, imports at the top of modules.

Every ``.py`` outside ``tests/``, ``bench/`` and the virtual environment is parsed with ``ast``
(no import is run, so imports inside functions count as much as those at the top). The layers,
lowest first; a module may import its own layer or lower ones, never a higher one:

    glow          the invertible core (layers, Glow, likelihood, checkpoint reading)
    cliargs       argparse checks shared by every command line (imports nothing of ours)
    faces         detection, landmarks, alignment, blending, face metrics (no model code)
    synthface     the procedural face renderer (draws with faces' geometry)
    lrw           LRW-style folders, datasets, video I/O, the synthetic set (renders synthface)
    training      what every model's training shares (checkpoint format read through glow.io)
    models        plain_glow, ad_flow, mi_flow, content_ae, pose_flow: none imports another
    talking       the talking-face job (test.py)
    evaluation    the evaluation job (evaluate.py), which runs talking's inputs
    scripts       train.py, test.py, evaluate.py, preprocess.py, demo.py

The order of the four data/utility packages is the one their imports already had: cliargs and
faces import nothing of ours, synthface draws with faces, lrw renders synthface's faces.
Checkpoints: the self-describing format and its safe reader live in the core (glow/io.py), so
``training`` imports the core and the model package ``plain_glow`` imports ``training``.

An import inside a function is allowed with a comment on its line or the line above starting
``# deferred:`` that says why (a start-up cost measured with ``python -X importtime``, or an
optional dependency).

ALLOWLIST holds the violations that remain, each one precise; an entry that is no longer a
violation fails the test, so the list only shrinks.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = {".venv", "venv", "tests", "bench", ".git", "checkpoint", "result", "image", "demo_data"}
LAYERS = ["glow", "cliargs", "faces", "synthface", "lrw", "training", "models", "talking",
          "evaluation", "scripts"]
MODELS = {"plain_glow", "ad_flow", "mi_flow", "content_ae", "pose_flow"}
SCRIPTS = {"train", "test", "evaluate", "preprocess", "demo"}

# Violations that remain, in files being reworked elsewhere. Each entry must still be a
# violation (stale entries fail), so this list only shrinks.
ALLOWLIST = {
    # "importer -> imported": a lower layer importing a higher one
    "layers": [
    ],
    # "importer -> imported": one model package importing another
    "models": [
    ],
    # "importer -> imported": an import that closes a cycle (the imported module reaches the
    # importer again)
    "cycles": [
    ],
    # "importer -> module.name": a private name used from another package
    "private": [
    ],
    # "file:function: import statement": an import inside a function without a `# deferred:`
    # comment (repeated entries for repeated imports in one function)
    "deferred": [
    ],
}


# -------------------------------------------------------------------------------------------
# The graph

def _files() -> dict[str, Path]:
    """Module name -> file, for every project module."""
    out = {}
    for p in sorted(ROOT.rglob("*.py")):
        rel = p.relative_to(ROOT)
        if set(rel.parts[:-1]) & SKIP or any(part.startswith(".") for part in rel.parts):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _files()


class Import:
    """One imported module (or a name from it) at one place in a file."""

    def __init__(self, importer: str, module: str, name: str | None, node: ast.stmt,
                 function: str | None) -> None:
        self.importer, self.module, self.name, self.node = importer, module, name, node
        self.function = function  # the enclosing function's name; None at module level

    @property
    def target(self) -> str:
        """The project module this import loads: ``pkg.sub`` for ``from pkg import sub``."""
        if self.name and f"{self.module}.{self.name}" in MODULES:
            return f"{self.module}.{self.name}"
        return self.module


def _absolute(importer: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if MODULES[importer].name != "__init__.py":
        base = base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(importer: str, tree: ast.Module) -> list[Import]:
    out: list[Import] = []

    def visit(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                out.extend(Import(importer, a.name, None, child, function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                module = _absolute(importer, child)
                out.extend(Import(importer, module, a.name, child, function)
                           for a in child.names)
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                else function
            visit(child, inner)

    visit(tree, None)
    return out


TREES = {m: ast.parse(p.read_text(encoding="utf-8"), str(p)) for m, p in MODULES.items()}
IMPORTS = {m: _imports(m, tree) for m, tree in TREES.items()}


def _ours(module: str) -> bool:
    return module.split(".")[0] in {m.split(".")[0] for m in MODULES}


def _edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for m, imps in IMPORTS.items():
        for imp in imps:
            if _ours(imp.module) and imp.target != m:
                graph[m].add(imp.target)
    return graph


GRAPH = _edges()


def package(module: str) -> str:
    """The unit the contract speaks of: a top-level package or a script."""
    return module.split(".")[0]


def layer(module: str) -> int:
    pkg = package(module)
    if pkg in MODELS:
        return LAYERS.index("models")
    if pkg in SCRIPTS:
        return LAYERS.index("scripts")
    if pkg not in LAYERS:
        raise AssertionError(f"{module}: package {pkg!r} has no layer; add it to LAYERS (or "
                             "MODELS / SCRIPTS) in tests/test_architecture.py")
    return LAYERS.index(pkg)


# -------------------------------------------------------------------------------------------
# The checks: each returns today's violations as the strings ALLOWLIST uses

def layer_violations() -> list[str]:
    return sorted(f"{m} -> {t}" for m, ts in GRAPH.items() for t in ts if layer(t) > layer(m))


def model_violations() -> list[str]:
    return sorted(f"{m} -> {t}" for m, ts in GRAPH.items() for t in ts
                  if package(m) in MODELS and package(t) in MODELS and package(m) != package(t))


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = {start}, [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt == goal:
                return True
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return False


def cycle_violations() -> list[str]:
    """Edges that lie on a cycle of the module graph (module- and function-level imports)."""
    return sorted(f"{m} -> {t}" for m, ts in GRAPH.items() for t in ts
                  if _reaches(GRAPH, t, m))


def private_violations() -> list[str]:
    """``from pkg.mod import _name`` or ``mod._name`` where pkg is another package."""
    found = set()
    for m, imps in IMPORTS.items():
        aliases: dict[str, str] = {}  # local name -> project module it is bound to
        for imp in imps:
            if not _ours(imp.module):
                continue
            if imp.name is None:
                alias = next(a for a in imp.node.names if a.name == imp.module)
                if alias.asname:
                    aliases[alias.asname] = imp.module
                else:
                    aliases[imp.module.split(".")[0]] = imp.module.split(".")[0]
            elif imp.target != imp.module:  # a submodule
                alias = next(a for a in imp.node.names if a.name == imp.name)
                aliases[alias.asname or imp.name] = imp.target
            if imp.name and _private(imp.name) and package(imp.module) != package(m):
                found.add(f"{m} -> {imp.module}.{imp.name}")
        for node in ast.walk(TREES[m]):
            if not isinstance(node, ast.Attribute):
                continue
            chain, base = [], node
            while isinstance(base, ast.Attribute):
                chain.append(base.attr)
                base = base.value
            if not isinstance(base, ast.Name) or base.id not in aliases:
                continue
            current = aliases[base.id]
            for attr in reversed(chain):
                if f"{current}.{attr}" in MODULES:
                    current = f"{current}.{attr}"
                    continue
                if _private(attr) and package(current) != package(m):
                    found.add(f"{m} -> {current}.{attr}")
                break
    return sorted(found)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def deferred_violations() -> list[str]:
    """Imports inside functions without a ``# deferred: REASON`` comment."""
    found = []
    for m, imps in IMPORTS.items():
        lines = MODULES[m].read_text(encoding="utf-8").splitlines()
        seen = set()
        for imp in imps:
            if imp.function is None or id(imp.node) in seen:
                continue
            seen.add(id(imp.node))
            if not _has_reason(lines, imp.node.lineno):
                rel = MODULES[m].relative_to(ROOT).as_posix()
                found.append(f"{rel}:{imp.function}: {ast.unparse(imp.node)}")
    return sorted(found)


def _has_reason(lines: list[str], lineno: int) -> bool:
    """A `# deferred: ...` comment (with a reason) on the import's first line or the one above
    it (a comment block above may end with the deferred line or begin with it)."""
    same = lines[lineno - 1].split("#", 1)[1].strip() if "#" in lines[lineno - 1] else ""
    above = []
    i = lineno - 2
    while i >= 0 and lines[i].strip().startswith("#"):
        above.insert(0, lines[i].strip().lstrip("#").strip())
        i -= 1
    for text in [same, *above]:
        if text.startswith("deferred:") and len(text.split(":", 1)[1].split()) >= 3:
            return True
    return False


CHECKS = {"layers": layer_violations, "models": model_violations, "cycles": cycle_violations,
          "private": private_violations, "deferred": deferred_violations}


# -------------------------------------------------------------------------------------------
# Tests

def _compare(kind: str) -> None:
    found, allowed = Counter(CHECKS[kind]()), Counter(ALLOWLIST[kind])
    new = sorted((found - allowed).elements())
    stale = sorted((allowed - found).elements())
    assert not new, f"{kind}: new violations (fix them; see this file's docstring): {new}"
    assert not stale, (f"{kind}: ALLOWLIST entries that are no longer violations (delete them "
                       f"from tests/test_architecture.py): {stale}")


def test_lower_layers_never_import_higher_ones() -> None:
    _compare("layers")


def test_model_packages_never_import_each_other() -> None:
    _compare("models")


def test_no_import_cycles() -> None:
    _compare("cycles")


def test_no_private_names_across_packages() -> None:
    _compare("private")


def test_imports_at_module_top_unless_deferred_with_a_reason() -> None:
    _compare("deferred")


def test_every_module_has_a_layer_and_the_graph_is_read() -> None:
    assert {package(m) for m in MODULES} >= {"glow", "plain_glow", "training", "lrw", "faces",
                                             "talking", "evaluation", "train", "demo"}
    for m in MODULES:
        layer(m)
    assert "glow.io" in GRAPH["training.checkpoint"]  # function-level and relative ones too
    assert "glow.model" in GRAPH["glow.io"]


def test_importing_each_layer_loads_no_higher_layer() -> None:
    """At run time, importing every module of a layer (and the layers below) loads no module of
    a higher layer: dynamic imports (``importlib``) and import side effects count here."""
    order = sorted((m for m in MODULES if layer(m) <= LAYERS.index("training")
                    and package(m) not in SCRIPTS), key=lambda m: (layer(m), m))
    code = (
        "import importlib, json, sys\n"
        f"order = {order!r}\n"
        "loaded = {}\n"
        "for m in order:\n"
        "    importlib.import_module(m)\n"
        "    loaded[m] = sorted(k for k in sys.modules if k.split('.')[0] in %r)\n"
        "print(json.dumps(loaded))\n" % sorted({m.split(".")[0] for m in MODULES}))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout)
    bad = [f"import {m} loads {k}" for m in order for k in loaded[m]
           if k in MODULES and layer(k) > layer(m)]
    assert bad == []
