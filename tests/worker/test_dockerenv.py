"""cast.worker.dockerenv: the host's package settings' secrets masked in every
build line, in time linear in the line however hostile it is."""

from __future__ import annotations

import time

from cast.worker.dockerenv import HostPackageSettings

SETTINGS = HostPackageSettings(pip={"index-url": "https://me:p%40ss@pypi.example/simple"},
                               proxy_env={"https_proxy": "http://proxy-user:hunter22@10.0.0.1:3128"})


def test_redaction_masks_url_passwords():
    line = SETTINGS.redact("from https://me:p%40ss@pypi.example/simple via hunter22 and p@ss and ftp://a:b@c")
    assert line == "from https://****@pypi.example/simple via **** and **** and ftp://a:****@c"


def test_a_hostile_100000_character_line_is_masked_in_linear_time():
    # Each of these took the earlier pattern minutes: it retried the scheme
    # from every letter of the long word, and scanned to the line's end each time.
    url = "git+https://deploy:s3cret@git.example/repo.git"
    hostile = ["a" * 100_000, "a://b:" + "c" * 100_000, "x://" * 25_000, "a://" + "b:" * 50_000,
               "a" * 50_000 + ":" * 50_000]
    started = time.monotonic()
    masked = [SETTINGS.redact(f"{line} {url}") for line in hostile]
    elapsed = time.monotonic() - started
    assert masked == [f"{line} git+https://deploy:****@git.example/repo.git" for line in hostile]
    assert elapsed < 5, f"masking {len(hostile)} hostile lines took {elapsed:.1f}s"
