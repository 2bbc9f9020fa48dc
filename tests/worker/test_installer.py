"""cast.worker.installer: the host's pip options said as uv's, for the host
and for a build container (whose paths are mounts); the package cache pruned
for real, never under a build."""

from __future__ import annotations

import subprocess
import threading
import tomllib
import zipfile

from cast.protocol.units import human_size
from cast.worker.envs import EnvCache
from cast.worker.installer import (PACKAGE_CACHE, choose_installer, find_uv, host_place, prune_package_cache,
                                   using_package_cache, uv_settings)
from tests.worker.pipconfig import make_wheel


def test_every_carried_pip_option_becomes_uvs(tmp_path):
    wheels, constraints, cert = tmp_path / "wheels", tmp_path / "constraints.txt", tmp_path / "ca.pem"
    wheels.mkdir()
    constraints.write_text("torch<=2.14.1\n")
    cert.write_text("pem\n")
    pip = {
        "index-url": "https://me:pass@mirror.example/simple",
        "extra-index-url": f"file://{tmp_path} https://other.example/simple",
        "find-links": f"{wheels} {tmp_path / 'absent'}",
        "constraint": f"{constraints} {tmp_path / 'absent.txt'}",
        "cert": str(cert), "trusted-host": "mirror.example other.example", "timeout": "180", "retries": "2",
        "proxy": "http://proxy:3128", "pre": "1", "no-index": "false",
    }
    settings = uv_settings(pip)
    config = tomllib.loads(settings.config)
    assert config == {
        "allow-insecure-host": ["mirror.example", "other.example"],
        "pip": {
            # pip's own choice across indexes: the best version of any, not the first index's.
            "index-strategy": "unsafe-best-match",
            "index-url": "https://me:pass@mirror.example/simple",
            "extra-index-url": [f"file://{tmp_path}", "https://other.example/simple"],
            "find-links": [str(wheels)],  # a folder that is not there is skipped, as pip skips it
            "prerelease": "allow",
        },
    }
    # Passwords stay in the file; the arguments and variables hold none.
    assert settings.arguments == ["--constraints", str(constraints)]
    assert settings.environment == {"SSL_CERT_FILE": str(cert), "UV_HTTP_TIMEOUT": "180", "UV_HTTP_RETRIES": "2",
                                    "HTTP_PROXY": "http://proxy:3128", "HTTPS_PROXY": "http://proxy:3128"}


def test_paths_are_placed_where_the_installer_sees_them(tmp_path):
    constraints = tmp_path / "c.txt"
    constraints.write_text("six<2\n")
    settings = uv_settings({"find-links": str(tmp_path), "constraint": str(constraints)},
                           place=lambda location: "/mnt/links", place_file=lambda location: "/mnt/c.txt")
    assert tomllib.loads(settings.config)["pip"]["find-links"] == ["/mnt/links"]
    assert settings.arguments == ["--constraints", "/mnt/c.txt"]
    assert tomllib.loads(uv_settings({}).config) == {"pip": {"index-strategy": "unsafe-best-match"}}


def test_host_place_keeps_urls_and_existing_paths_only(tmp_path):
    assert host_place("https://mirror.example/simple") == "https://mirror.example/simple"
    assert host_place(f"file://{tmp_path}") == f"file://{tmp_path}"
    assert host_place(str(tmp_path)) == str(tmp_path)
    assert host_place(str(tmp_path / "absent")) is None
    assert host_place(f"file://{tmp_path / 'absent'}") is None


def test_prune_frees_what_no_environment_uses_and_says_how_much(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    wheel = make_wheel(tmp_path / "wheels", "cast-probe", "1.0")
    requirements = f"cast-probe @ file://{wheel}\n"
    cache = EnvCache(tmp_path / "work" / "envs", installer=choose_installer("uv"))
    package_cache = tmp_path / "work" / PACKAGE_CACHE
    cache.ensure([], requirements, lambda *_: None)
    cache.prune(older_than=None, everything=True)
    # The wheel changes: uv unpacks it anew, and what it unpacked before is used by nothing.
    with zipfile.ZipFile(wheel, "a") as archive:
        archive.writestr("cast_probe/data.py", "X = 1\n" * 20000)
    built = cache.ensure([], requirements, lambda *_: None)
    unpacked = sorted((package_cache / "archive-v0").iterdir())
    assert len(unpacked) == 2

    said = prune_package_cache(package_cache, everything=False, uv=find_uv())
    assert said.startswith(f"package cache {package_cache}: pruned by uv, ") and " 0 B freed" not in said
    [kept] = (package_cache / "archive-v0").iterdir()
    assert kept in unpacked
    python = cache.path(built.key) / "bin" / "python"
    subprocess.run([str(python), "-c", "import cast_probe.data"], check=True)

    # All of it: only what the environment does not also hold is freed, and the environment still works.
    files = [path.stat() for path in package_cache.rglob("*") if path.is_file() and not path.is_symlink()]
    alone = sum(stat.st_blocks * 512 for stat in files if stat.st_nlink == 1)
    assert 0 < alone < sum(stat.st_blocks * 512 for stat in files)
    said = prune_package_cache(package_cache, everything=True, uv=find_uv())
    assert said == f"package cache {package_cache}: removed, {human_size(alone)} freed, 0 B kept"
    assert not package_cache.exists()
    subprocess.run([str(python), "-c", "import cast_probe.data"], check=True)
    assert prune_package_cache(package_cache, everything=True, uv=None) == f"package cache {package_cache}: empty"


def test_prune_waits_for_the_builds_using_the_cache(tmp_path):
    package_cache = tmp_path / PACKAGE_CACHE
    package_cache.mkdir()
    (package_cache / "entry").write_bytes(b"x" * 10000)
    size = human_size((package_cache / "entry").stat().st_blocks * 512)
    said = []
    with using_package_cache(package_cache), using_package_cache(package_cache):  # two builds at once
        pruning = threading.Thread(target=lambda: said.append(prune_package_cache(package_cache, everything=True,
                                                                                  uv=None)))
        pruning.start()
        pruning.join(1.0)
        assert pruning.is_alive() and (package_cache / "entry").exists()
    pruning.join(60)
    assert said == [f"package cache {package_cache}: removed, {size} freed, 0 B kept"]


def test_without_uv_only_all_clears_the_package_cache(tmp_path):
    package_cache = tmp_path / PACKAGE_CACHE
    package_cache.mkdir()
    assert prune_package_cache(package_cache, everything=False, uv=None) == (
        f"package cache {package_cache}: kept (no uv on this worker to prune it; --all removes it)")
    assert package_cache.exists()
