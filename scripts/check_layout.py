"""The package layout, checked from the source (an AST scan of every import, lazy and TYPE_CHECKING ones included).

    python scripts/check_layout.py [ROOT] [-v]

Prints the import cycles between birdinfer modules, the imports that point up the layer order (below), the
modules over 400 lines and the functions over 80 lines (``-v``: every module's birdinfer imports). Exits 1 on any
cycle or upward import, 0 otherwise (long modules and functions are reported, not fatal).

Layers, in the order data moves; a module imports only from its own layer or the ones before it::

    errors, _console → dsp → io → ops → spec → runtime → jobs → tools → cli, birdinfer/__init__
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

LAYER_RANK = {"errors": 0, "_console": 0, "dsp": 1, "io": 2, "ops": 3, "spec": 4, "runtime": 5, "jobs": 6,
              "tools": 7, "cli": 8, "": 8}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


@dataclass
class Scan:
    files: dict[str, Path]  # module name → file
    imports: dict[str, set[str]] = field(default_factory=dict)  # module → birdinfer modules it imports
    external: dict[str, set[str]] = field(default_factory=dict)  # module → top-level names of other packages

    def cycles(self) -> list[list[str]]:
        return strongly_connected(self.imports)

    def upward(self) -> list[tuple[str, str]]:
        """``(module, imported)`` pairs where the imported module sits in a later layer."""
        return [(m, t) for m, ts in sorted(self.imports.items()) for t in sorted(ts) if layer(t) > layer(m)]

    def long_modules(self) -> list[tuple[str, int]]:
        counts = ((m, len(f.read_text(encoding="utf-8").splitlines())) for m, f in sorted(self.files.items()))
        return [(m, n) for m, n in counts if n > MAX_MODULE_LINES]

    def long_functions(self) -> list[tuple[str, str, int]]:
        out = []
        for m, f in sorted(self.files.items()):
            for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = node.end_lineno - node.lineno + 1
                    if n > MAX_FUNCTION_LINES:
                        out.append((m, node.name, n))
        return out


def layer(module: str) -> int:
    """The layer rank of ``birdinfer.<sub>...`` (the package itself and the CLI come last)."""
    parts = module.split(".")
    return LAYER_RANK.get(parts[1] if len(parts) > 1 else "", LAYER_RANK[""])


def module_files(root: Path) -> dict[str, Path]:
    files = {}
    for path in sorted((root / "birdinfer").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def _owner(name: str, files: dict[str, Path]) -> str | None:
    """The module of ``files`` that ``name`` (a module or a name inside one) resolves to."""
    while name and name not in files:
        name = name.rpartition(".")[0]
    return name or None


def _absolute(module: str, is_package: bool, level: int, target: str | None) -> str:
    if not level:
        return target or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def scan(root: str | Path) -> Scan:
    """Every import statement of every module under ``root/birdinfer`` (anywhere in the file)."""
    files = module_files(Path(root))
    result = Scan(files, {m: set() for m in files}, {m: set() for m in files})
    for module, path in files.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                target = _absolute(module, path.name == "__init__.py", node.level, node.module)
                names = [f"{target}.{a.name}" for a in node.names] if target.startswith("birdinfer") else [target]
            else:
                continue
            for name in names:
                if name == "birdinfer" or name.startswith("birdinfer."):
                    owner = _owner(name, files)
                    if owner and owner != module:
                        result.imports[module].add(owner)
                elif name:
                    result.external[module].add(name.split(".")[0])
    return result


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", nargs="?", default=str(Path(__file__).resolve().parents[1]))
    ap.add_argument("-v", "--verbose", action="store_true", help="print every module's birdinfer imports")
    args = ap.parse_args(argv)
    s = scan(args.root)
    cycles, upward = s.cycles(), s.upward()
    print(f"{len(s.files)} modules; {len(cycles)} import cycles; {len(upward)} upward imports")
    for c in cycles:
        print("cycle:", " ↔ ".join(c))
    for m, t in upward:
        print(f"upward: {m} imports {t}")
    for m, n in s.long_modules():
        print(f"module over {MAX_MODULE_LINES} lines: {m} ({n})")
    for m, fn, n in s.long_functions():
        print(f"function over {MAX_FUNCTION_LINES} lines: {m}.{fn} ({n})")
    if args.verbose:
        for m in sorted(s.files):
            print(f"{m:36s} -> {', '.join(sorted(t.removeprefix('birdinfer.') for t in s.imports[m]))}")
    return 1 if cycles or upward else 0


if __name__ == "__main__":
    sys.exit(main())
