"""A host pip configuration of the test's own, for the environment builds of
both executors: an index (a file:// simple index), a find-links folder and a
constraints file, each holding wheels made here, so a build can only succeed
by honouring all three.

`cast-probe` 1.0 and 2.0 lie in the find-links folder and the constraint caps
it below 2; `cast-probe-index` 1.0 is only on the index.
"""

from __future__ import annotations

import base64
import hashlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGES = ["cast-probe", "cast-probe-index"]
# What a build that honoured the settings installed: module → version.
EXPECTED = {"cast_probe": "1.0", "cast_probe_index": "1.0"}
PROBE = "import cast_probe, cast_probe_index; print(cast_probe.VERSION, cast_probe_index.VERSION)"


def make_wheel(folder: Path, name: str, version: str) -> Path:
    """A pure-Python wheel whose module `name` (underscored) says its version."""
    module = name.replace("-", "_")
    info = f"{module}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": f'VERSION = "{version}"\n',
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: cast-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


@dataclass
class HostPip:
    root: Path
    constraints: Path


@pytest.fixture
def host_pip_config(tmp_path, monkeypatch) -> HostPip:
    """This test's pip configuration in place of the host's (PIP_CONFIG_FILE and PIP_FIND_LINKS)."""
    root = tmp_path / "host-pip"
    make_wheel(root / "wheels", "cast-probe", "1.0")
    make_wheel(root / "wheels", "cast-probe", "2.0")
    indexed = make_wheel(root / "files", "cast-probe-index", "1.0")
    page = root / "simple" / "cast-probe-index" / "index.html"
    page.parent.mkdir(parents=True)
    page.write_text(f'<html><body><a href="../../files/{indexed.name}">{indexed.name}</a></body></html>\n')
    constraints = root / "constraints.txt"
    constraints.write_text("cast-probe<2\n")
    config = root / "pip.conf"
    config.write_text(f"[global]\nindex-url = file://{root / 'simple'}\nconstraint = {constraints}\n")
    for name in [name for name in os.environ if name.startswith(("PIP_", "UV_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PIP_CONFIG_FILE", str(config))
    monkeypatch.setenv("PIP_FIND_LINKS", str(root / "wheels"))
    return HostPip(root=root, constraints=constraints)
