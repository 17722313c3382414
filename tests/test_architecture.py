"""The layer rules of docs/architecture.md, checked by walking imports with ast."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "pacsd"

LAYER = {"errors": 0, "model": 0, "failpoints": 0, "config": 1, "tls": 1, "dicom": 2, "store": 2, "index": 3,
         "plugins": 2, "hookspecs": 1, "jobs": 3, "services": 4, "web": 5, "dimse": 5,
         "server": 6, "cli": 6}
#: Adapters may use these lower modules directly (pure helpers, no data access).
ADAPTER_ALLOWED = {"errors", "model", "failpoints", "config", "tls", "dicom", "services", "web", "dimse",
                   "plugins", "hookspecs"}
FORBIDDEN_THIRD_PARTY = {"store": {"pydicom", "aiohttp", "sqlalchemy"},
                         "dicom": {"aiohttp", "sqlalchemy", "fsspec", "s3fs"},
                         "index": {"aiohttp", "fsspec"}}


def top_module(path: Path) -> str:
    rel = path.relative_to(PKG).parts
    return rel[0].removesuffix(".py")


def imports(path: Path) -> list[tuple[str, bool]]:
    """(module, is_pacsd) for each import in the file."""
    tree = ast.parse(path.read_text())
    pkg_parts = path.relative_to(PKG.parent).with_suffix("").parts[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, a.name.split(".")[0] == "pacsd") for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg_parts[: len(pkg_parts) - node.level + 1]
                mod = ".".join(base + tuple((node.module or "").split("."))).strip(".")
                if node.module is None:
                    out += [(f"{mod}.{a.name}", True) for a in node.names]
                else:
                    out.append((mod, True))
            else:
                out.append((node.module, node.module.split(".")[0] == "pacsd"))
    return out


def test_layers_import_only_downwards():
    problems = []
    for path in PKG.rglob("*.py"):
        if path.name == "__init__.py" and path.parent == PKG:
            continue
        me = top_module(path)
        for mod, ours in imports(path):
            if ours:
                parts = mod.split(".")
                if len(parts) < 2:
                    continue
                target = parts[1]
                if target == "__init__" or target == me:
                    continue
                if target not in LAYER:
                    continue
                if me in ("web", "dimse"):
                    if target not in ADAPTER_ALLOWED:
                        problems.append(f"{path.name}: adapter imports {mod}")
                elif LAYER[target] > LAYER.get(me, 99):
                    problems.append(f"{path.relative_to(PKG)}: L{LAYER[me]} imports {mod}")
            else:
                root = mod.split(".")[0]
                if root in FORBIDDEN_THIRD_PARTY.get(me, ()):
                    problems.append(f"{path.relative_to(PKG)}: {me}/ imports {root}")
    assert not problems, "\n".join(problems)


def test_every_module_has_a_docstring():
    missing = [str(p.relative_to(PKG)) for p in PKG.rglob("*.py")
               if p.stat().st_size and ast.get_docstring(ast.parse(p.read_text())) is None]
    assert not missing, missing
