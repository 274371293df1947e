"""The shape of the house, measured from the code (issue 26's "done when" figures).

    .venv/bin/python scripts/house_metrics.py [--list] [--json OUT]

Reads ``src/napari_dinoseg`` with :mod:`ast` (nothing is imported) and prints:

- **kind branching**: lines outside ``features/`` whose condition (``if`` / ``elif`` / a
  conditional expression / a boolean operand) compares a feature kind (``.kind``, a
  ``"classical"`` / ``"vit"`` / ``"hybrid"`` literal) or asks ``uses_vit`` / ``uses_classical``;
- **channel-role parsing**: places outside ``features/`` that find a channel's role from its
  name (a string method or ``in`` test with a channel-name prefix such as ``"vit_"``);
- **import cycles** between the package's modules (imports inside functions included: a lazy
  import is still a dependency);
- **module sizes** above 450 lines and **function bodies** above 60 lines.

``--list`` prints every place found; ``--json`` writes the figures.
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "napari_dinoseg"
KINDS = {"classical", "vit", "hybrid"}
KIND_FLAGS = {"uses_vit", "uses_classical"}
#: Channel-name prefixes that say a channel's role.
ROLE_PREFIXES = ("vit_", "gaussian_", "sobel_", "hessian_", "dog_", "membrane_", "std_", "attn", "intensity")
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 450, 60


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _mentions_kind(node: ast.AST) -> bool:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Compare):
            operands = [sub.left, *sub.comparators]
            consts = {o.value for o in operands if isinstance(o, ast.Constant) and isinstance(o.value, str)}
            for o in operands:
                if isinstance(o, (ast.Tuple, ast.List, ast.Set)):
                    consts |= {e.value for e in o.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
            attrs = {o.attr for o in operands if isinstance(o, ast.Attribute)}
            names = {o.id for o in operands if isinstance(o, ast.Name)}
            if consts & KINDS and (attrs | names) & {"kind", "value"} or "kind" in attrs and consts & KINDS:
                return True
            if consts & KINDS:
                return True
        if isinstance(sub, ast.Attribute) and sub.attr in KIND_FLAGS:
            return True
    return False


def kind_branches(tree: ast.AST) -> list[int]:
    """Lines of conditions that branch on the feature kind."""
    lines = set()
    for node in ast.walk(tree):
        tests = []
        if isinstance(node, (ast.If, ast.IfExp, ast.While)):
            tests.append(node.test)
        elif isinstance(node, ast.BoolOp):
            tests += node.values
        elif isinstance(node, ast.comprehension):
            tests += node.ifs
        for test in tests:
            if _mentions_kind(test):
                lines.add(test.lineno)
    return sorted(lines)


def role_parsing(tree: ast.AST) -> list[int]:
    """Lines that test a channel name against a role prefix."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                "startswith", "endswith", "find", "index", "split", "partition"):
            for arg in node.args:
                values = arg.elts if isinstance(arg, ast.Tuple) else [arg]
                if any(isinstance(v, ast.Constant) and isinstance(v.value, str) and v.value.startswith(ROLE_PREFIXES)
                       for v in values):
                    lines.add(node.lineno)
        elif isinstance(node, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops):
            if isinstance(node.left, ast.Constant) and isinstance(node.left.value, str) and \
                    node.left.value.startswith(ROLE_PREFIXES):
                lines.add(node.lineno)
    return sorted(lines)


def imports(tree: ast.AST, name: str, is_package: bool) -> set[str]:
    """The package's modules a module imports (at any depth of its code)."""
    found = set()
    base = name.split(".") if is_package else name.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parent = base[:len(base) - node.level + 1]
                target = ".".join(parent + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("napari_dinoseg"):
                found.add(target)
                found |= {f"{target}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("napari_dinoseg")}
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def long_functions(tree: ast.AST) -> list[tuple[str, int, int]]:
    """``(name, line, body lines)`` of functions whose body (docstring left out) is too long."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
                body = body[1:]
            if body:
                length = body[-1].end_lineno - body[0].lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append((node.name, node.lineno, length))
    return found


def measure_house() -> dict:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        modules[module_name(path)] = (path, ast.parse(path.read_text(), filename=str(path)))
    graph = {}
    figures: dict = {"kind_branching": {}, "role_parsing": {}, "long_modules": {}, "long_functions": {}}
    for name, (path, tree) in modules.items():
        rel = str(path.relative_to(PACKAGE))
        outside = not rel.startswith("features/")
        if outside and (lines := kind_branches(tree)):
            figures["kind_branching"][rel] = lines
        if outside and (lines := role_parsing(tree)):
            figures["role_parsing"][rel] = lines
        length = len(path.read_text().splitlines())
        if length > MAX_MODULE_LINES:
            figures["long_modules"][rel] = length
        if long := long_functions(tree):
            figures["long_functions"][rel] = long
        graph[name] = {m for m in imports(tree, name, path.name == "__init__.py") if m in modules and m != name}
    # a package's __init__ re-exporting its modules is not a design cycle: leave those edges out
    for name in graph:
        graph[name] = {m for m in graph[name] if not (name.startswith(m + ".") or m == "napari_dinoseg")}
    figures["import_cycles"] = cycles(graph)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true", help="print every place found")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args()
    f = measure_house()
    count = {key: sum(len(v) for v in f[key].values()) for key in ("kind_branching", "role_parsing")}
    print(f"kind branching outside features/: {count['kind_branching']} lines in {len(f['kind_branching'])} modules")
    print(f"channel-role parsing outside features/: {count['role_parsing']} places")
    print(f"import cycles: {len(f['import_cycles'])}" + "".join(f"\n  {' <-> '.join(c)}" for c in f["import_cycles"]))
    print(f"modules above {MAX_MODULE_LINES} lines: {len(f['long_modules'])}"
          + "".join(f"\n  {m}: {n}" for m, n in sorted(f["long_modules"].items(), key=lambda x: -x[1])))
    n_long = sum(len(v) for v in f["long_functions"].values())
    print(f"function bodies above {MAX_FUNCTION_LINES} lines: {n_long}")
    if args.list:
        for key in ("kind_branching", "role_parsing"):
            for module, lines in sorted(f[key].items()):
                print(f"  {key}: {module}: {', '.join(map(str, lines))}")
        for module, items in sorted(f["long_functions"].items()):
            for name, line, length in items:
                print(f"  long function: {module}:{line} {name}: {length} lines")
    if args.json:
        Path(args.json).write_text(json.dumps(f, indent=2) + "\n")


if __name__ == "__main__":
    main()
