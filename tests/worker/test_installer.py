"""cast.worker.installer: the host's pip options said as uv's, for the host
and for a build container (whose paths are mounts)."""

from __future__ import annotations

import tomllib

from cast.worker.installer import host_place, uv_settings


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
