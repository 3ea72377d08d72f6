"""The package's structure: no import cycle among its modules, and one ctypes declaration of
`plaid.h` (`plaid._abi`) that matches the header."""

import ast
import re
from pathlib import Path

import plaid
from plaid import _abi

PACKAGE = Path(plaid.__file__).resolve().parent
HEADER = Path(__file__).resolve().parents[3] / "include" / "plaid.h"


def _modules():
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _imports(name, path, modules):
    """The package's modules that ``name`` imports when it is imported: its imports outside
    function bodies (an import inside a function runs later, when called)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()

    def visit(nodes):
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                for alias in node.names:
                    sub = f"{module}.{alias.name}"
                    found.add(sub if sub in modules else module)
            visit(ast.iter_child_nodes(node))

    visit(ast.parse(path.read_text()).body)
    return {m for m in found if m in modules and m != name}


def _cycles(graph):
    cycles, done = [], set()

    def walk(node, path):
        if node in path:
            cycles.append(path[path.index(node):] + [node])
            return
        if node in done:
            return
        for nxt in sorted(graph[node]):
            walk(nxt, path + [node])
        done.add(node)

    for node in sorted(graph):
        walk(node, [])
    return cycles


def test_no_import_cycle_among_the_packages_modules():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert {"plaid", "plaid._abi", "plaid._lib", "plaid.torch", "plaid.safetensors",
            "plaid.tensorizer.serialization"} <= set(graph)
    # The declaration imports nothing of the package: scripts load it by path.
    assert graph["plaid._abi"] == set()
    assert "plaid._abi" in graph["plaid._lib"]
    assert _cycles(graph) == []
    # A cycle is found where there is one.
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def _header_struct(name):
    """The member names of ``struct name`` in plaid.h, in order."""
    body = re.search(r"struct %s \{(.*?)\}" % name, HEADER.read_text(), re.S).group(1)
    body = re.sub(r"/\*.*?\*/|//[^\n]*", "", body, flags=re.S)
    return [re.findall(r"\w+", member)[-1] for member in body.split(";") if member.strip()]


def test_the_ctypes_declaration_matches_the_header():
    header = HEADER.read_text()
    assert [f for f, _ in _abi.TensorInfo._fields_] == _header_struct("plaid_tensor_info")
    assert [f for f, _ in _abi.Destination._fields_] == _header_struct("plaid_destination")
    for name, args, _ in _abi.SIGNATURES:
        declared = re.search(r"^[\w ]+[ *]%s\(([^;]*?)\);" % name, header, re.M)
        assert declared, f"{name} is not in plaid.h"
        params = declared.group(1).strip()
        count = 0 if params in ("", "void") else params.count(",") + 1
        assert count == len(args), f"{name}: {len(args)} arguments declared, plaid.h has {count}"
    for status, code in _abi.STATUS.items():
        assert re.search(r"#define %s %d\b" % (status, code), header), status
    assert re.search(r"#define PLAID_ABI_VERSION %d\b" % _abi.ABI_VERSION, header)
