"""Every Python package in the tree ships in the wheel (pyproject's explicit `packages` list)."""

from __future__ import annotations

from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parent.parent


def test_every_package_directory_is_listed_in_pyproject():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set()
    for top in ("planner", "runner", "shardwise"):
        for init in (REPO / top).rglob("__init__.py") if (REPO / top).is_dir() else ():
            found.add(".".join(init.parent.relative_to(REPO).parts))
    missing = sorted(found - listed)
    assert not missing, f"add {missing} to [tool.setuptools] packages in pyproject.toml, or the wheel lacks them"
