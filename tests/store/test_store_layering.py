"""ARCHITECTURE layering: pacsd.store (L2) imports only pacsd.errors, fsspec, s3fs,
cryptography (encryption at rest, R-G1) and the standard library; never pydicom, aiohttp, sqlalchemy or higher pacsd layers."""
from __future__ import annotations

import ast
import pathlib
import sys

import pacsd.store

ALLOWED_THIRD_PARTY = {"fsspec", "s3fs", "cryptography",  # crypto.py: R-G1
                       "xxhash"}  # base.py: the fast read-time digest (R-H1)
ALLOWED_PACSD = ("pacsd.errors", "pacsd.failpoints", "pacsd.store")  # L0 + own layer


def imported_modules(path: pathlib.Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
    return out


def test_store_imports_only_its_layer_and_below():
    root = pathlib.Path(pacsd.store.__file__).parent
    files = sorted(root.glob("*.py"))
    assert files
    for f in files:
        for mod in imported_modules(f):
            top = mod.split(".")[0]
            if top == "pacsd":
                assert mod.startswith(ALLOWED_PACSD), f"{f.name} imports {mod}"
            elif top != "__future__":
                assert top in sys.stdlib_module_names or top in ALLOWED_THIRD_PARTY, \
                    f"{f.name} imports {mod}"


def test_every_store_module_has_a_docstring():
    for f in pathlib.Path(pacsd.store.__file__).parent.glob("*.py"):
        assert ast.get_docstring(ast.parse(f.read_text())), f.name
