"""The packages' import boundaries (docs/architecture.md, "The processes"): the CLI imports the
services it runs, never the other way round, and orchestration/ does not import the API's package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from platform_cli.processes import PROJECT_ROOT

FORBIDDEN = {
    "orchestration": {"ingest_service", "platform_cli"},
    "ingest_service": {"platform_cli"},
    "publisher": {"platform_cli"},
}


def _imported_packages(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_does_not_import_what_sits_above_it(package: str) -> None:
    offending = {
        str(path.relative_to(PROJECT_ROOT)): sorted(_imported_packages(path) & FORBIDDEN[package])
        for path in (PROJECT_ROOT / package).rglob("*.py")
    }
    assert {path: found for path, found in offending.items() if found} == {}
