"""pyproject.toml's package list names every package of the four folders: an
editable install finds a package left out, but a wheel (the Docker images,
`pip install .`) ships without it (server/schemas/ was left out once)."""

from __future__ import annotations

import tomllib

from tests.conftest import REPO_ROOT


def test_every_package_of_the_four_folders_is_in_the_wheel():
    setuptools = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set()
    for name, folder in setuptools["package-dir"].items():
        root = REPO_ROOT / folder
        for init in root.rglob("__init__.py"):
            if "node_modules" in init.parts:
                continue
            relative = init.parent.relative_to(root)
            found.add(".".join([name, *relative.parts]))
    assert found == set(setuptools["packages"])
