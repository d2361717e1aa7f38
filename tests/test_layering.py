"""The import layers: which package may not import which, checked on the source of every module.

Data flow runs one way (``docs/ARCHITECTURE.md``): ``spherical_ops`` knows nothing of ``surfharm``;
``surfharm.io`` reads and writes files for everything above it; the harmonizers sit below the
evaluation, the pipeline, the drawings and the command line; the simulator feeds the evaluation
and never the other way round. Every ``import`` and ``from ... import`` counts, at module level or
inside a function, relative imports resolved.
"""
from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("spherical_ops", "surfharm")

#: Importing package (and its submodules) -> packages it must not import (nor their submodules).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "spherical_ops": ("surfharm",),
    "surfharm.io": ("surfharm.harmonize", "surfharm.evaluate", "surfharm.pipeline", "surfharm.viz",
                    "surfharm.cli"),
    "surfharm.harmonize": ("surfharm.evaluate", "surfharm.pipeline", "surfharm.viz", "surfharm.cli"),
    "surfharm.simulate": ("surfharm.evaluate",),
    "surfharm.training": ("surfharm.harmonize", "surfharm.evaluate", "surfharm.pipeline", "surfharm.viz",
                          "surfharm.cli"),
    "surfharm.viz": ("surfharm.harmonize",),
}


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def imported_names(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, int]]:
    """``(imported module, line)`` for every import in ``tree`` (functions included).

    ``from A import b`` counts as importing ``A`` and ``A.b`` (``b`` may be a submodule);
    relative imports are resolved against ``module``.
    """
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            found.append((base, node.lineno))
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names if alias.name != "*"]
    return found


def violations(root: Path = ROOT, packages=PACKAGES, rules=FORBIDDEN) -> list[str]:
    """``file:line: importer imports forbidden`` for every import that runs against the layers."""
    out = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            module = _module_name(path, root)
            applicable = [(importer, banned) for importer, banned in rules.items() if _within(module, importer)]
            if not applicable:
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            seen = set()
            for name, line in imported_names(tree, module, path.name == "__init__.py"):
                for importer, banned in applicable:
                    for forbidden in banned:
                        if _within(name, forbidden) and (line, forbidden) not in seen:
                            seen.add((line, forbidden))
                            out.append(f"{path.relative_to(root)}:{line}: {module} ({importer}) imports {name} "
                                       f"(layer rule: {importer} must not import {forbidden})")
    return out


def test_no_import_runs_against_the_layers():
    found = violations()
    assert not found, "imports against the layers:\n" + "\n".join(found)


def test_the_scan_sees_imports_in_functions_relative_imports_and_from_imports(tmp_path):
    pkg = tmp_path / "surfharm"
    (pkg / "io").mkdir(parents=True)
    (pkg / "harmonize").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "harmonize" / "__init__.py").write_text("")
    (pkg / "io" / "__init__.py").write_text("from ..harmonize import base\n")
    (pkg / "io" / "reader.py").write_text(textwrap.dedent("""\
        import numpy as np
        from surfharm import harmonize


        def read():
            import surfharm.evaluate.metrics
            from . import other
            return np
        """))
    found = violations(tmp_path, packages=("surfharm",))
    assert any(f.startswith(str(Path("surfharm/io/__init__.py")) + ":1:") and "imports surfharm.harmonize" in f
               for f in found), found
    assert any(f.startswith(str(Path("surfharm/io/reader.py")) + ":2:") and "surfharm.harmonize" in f
               for f in found), found
    assert any(f.startswith(str(Path("surfharm/io/reader.py")) + ":6:") and "surfharm.evaluate" in f
               for f in found), found
    assert len(found) == 3, found


@pytest.mark.parametrize("module", ["surfharm.harmonize"])
def test_importing_the_harmonizers_loads_no_torch_and_no_volumetric_module(module):
    code = textwrap.dedent(f"""\
        import sys
        import {module} as h
        heavy = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")
                       or m.startswith("surfharm.harmonize.volumetric") or m == "surfharm.io.nifti")
        print("loaded:", heavy)
        assert not heavy, heavy
        # The volumetric methods still register when first asked for.
        assert h.get("nyul").__module__ == "surfharm.harmonize.volumetric.nyul"
        assert "voxel-combat" in h.available()
        assert "torch" not in sys.modules
        """)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
