"""The local executor's virtualenvs: built for real from the local package index,
cached by content, built once when runs race for one, never half-made."""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import sys
import threading
from contextlib import contextmanager

import pytest

from cast.worker.envs import FAILURE_CHARS, HOST_KEY, EnvCache, env_key, extends, failure_reason, wanted_lines
from cast.worker.executors.base import BuildFailed
from cast.worker.installer import choose_installer
from tests.worker.pipconfig import EXPECTED, PACKAGES, PROBE, host_pip_config, make_wheel  # noqa: F401  (fixture)

UV = choose_installer("uv")  # the worker's pinned dependency
PIP = choose_installer("pip")


def collect():
    lines = []
    return lines, lambda stream, text: lines.append((stream, text))


def test_no_packages_means_no_environment(tmp_path):
    result = EnvCache(tmp_path).ensure([], None, collect()[1])
    assert result.key == HOST_KEY and result.cached
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_the_key_ignores_spec_order_but_not_requirements():
    assert env_key(["tabulate", "termcolor"], None) == env_key(["termcolor", "tabulate"], None)
    assert env_key(["termcolor"], None) != env_key(["termcolor"], "tabulate\n")


def test_an_environment_extends_one_that_asked_for_some_of_its_lines_and_nothing_else():
    assert wanted_lines(["tqdm"], "# a comment\n\nsix  # inline\ntorch==2.13.0\n") == ["six", "torch==2.13.0", "tqdm"]
    assert extends(["six", "torch==2.13.0"], wanted_lines([], "torch==2.13.0\nsix\ntqdm  # bars\n"))
    assert extends(["six"], ["six"])
    assert not extends(["numpy", "six"], ["six", "tqdm"])
    assert not extends([], ["six"])
    assert not extends(["six"], ["--index-url http://127.0.0.1:9/simple", "six"])  # options always ask the indexes


def test_builds_over_the_host_python_and_reuses_the_cache(tmp_path):
    cache = EnvCache(tmp_path)
    lines, log = collect()

    first = cache.ensure(["termcolor"], None, log)

    assert not first.cached
    # Said before any of the build's own output.
    assert lines[0] == ("cast", f"Building environment virtualenv {first.key[:12]} (pip: 1 package, with uv)")
    assert any("termcolor" in text for stream, text in lines[1:] if stream == "cast")
    python = cache.path(first.key) / "bin" / "python"
    # The package is in the environment and the host's own packages (six) still import.
    probe = subprocess.run([str(python), "-c", "import termcolor, six; print(termcolor.__file__)"],
                           capture_output=True, text=True, check=True)
    assert probe.stdout.startswith(str(cache.path(first.key)))

    lines.clear()
    second = cache.ensure(["termcolor"], None, log)
    assert second.cached and second.key == first.key and lines == []
    [entry] = cache.entries()
    assert entry.key == first.key and entry.holds == "pip: termcolor" and entry.size > 0


def test_concurrent_builds_of_one_environment_build_it_once(tmp_path):
    cache = EnvCache(tmp_path)
    results = []

    def build():
        results.append(cache.ensure([], "termcolor\n", lambda *_: None))

    threads = [threading.Thread(target=build) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(result.cached for result in results) == [False, True, True]
    assert len({result.key for result in results}) == 1


def test_a_failed_build_says_why_and_leaves_no_environment(tmp_path):
    cache = EnvCache(tmp_path, installer=PIP)
    lines, log = collect()
    with pytest.raises(BuildFailed) as failure:
        cache.ensure(["cast-no-such-package-zz"], None, log)
    # pip's own last error lines, bounded, not its whole output (which is in the log).
    reason = str(failure.value)
    assert reason.startswith("pip failed (exit 1): ERROR: ")
    assert reason.endswith("ERROR: No matching distribution found for cast-no-such-package-zz")
    assert len(reason) <= 450 and len(lines) > 1
    assert cache.entries() == []
    assert not cache.path(env_key(["cast-no-such-package-zz"], None)).exists()


def test_an_option_smuggled_into_a_pip_spec_is_refused(tmp_path):
    with pytest.raises(BuildFailed, match="not a package requirement"):
        EnvCache(tmp_path).ensure(["--index-url=http://evil"], None, lambda *_: None)


def test_prune_removes_environments_unused_for_long_enough(tmp_path):
    cache = EnvCache(tmp_path)
    built = cache.ensure(["termcolor"], None, lambda *_: None)
    assert cache.prune(older_than=3600, everything=False) == []
    [removed] = cache.prune(older_than=0, everything=False)
    assert removed.key == built.key and not cache.path(built.key).exists()


def test_the_failure_reason_is_the_installers_last_error_lines_bounded():
    pip = ["Collecting x", "  Downloading ...", "ERROR: Could not find a version that satisfies x",
           "ERROR: No matching distribution found for x", ""]
    assert failure_reason(pip) == ("ERROR: Could not find a version that satisfies x | "
                                   "ERROR: No matching distribution found for x")
    assert failure_reason(["Reading package lists...", "E: Unable to locate package nope"]) == \
        "E: Unable to locate package nope"
    assert failure_reason(["a", "b", "c", "d"]) == "b | c | d"
    uv = ["Resolved 3 packages", "error: Request failed after 0 retries", "  cause: Failed to fetch: https://x/",
          "  cause: tcp connect error", "  cause: Connection refused (os error 111)"]
    assert failure_reason(uv) == ("error: Request failed after 0 retries | cause: tcp connect error | "
                                  "cause: Connection refused (os error 111)")
    long = failure_reason(["ERROR: " + "x" * 1000])
    assert len(long) == FAILURE_CHARS and long.startswith("…")


def test_a_failed_uv_build_gives_uvs_last_error_lines(tmp_path):
    cache = EnvCache(tmp_path / "envs", installer=UV)
    lines, log = collect()
    with pytest.raises(BuildFailed) as failure:
        cache.ensure(["cast-no-such-package-zz"], None, log)
    reason = str(failure.value)
    assert reason.startswith("uv failed (exit 1): error: No solution found when resolving dependencies | cause: ")
    assert "cast-no-such-package-zz" in reason and len(reason) <= 450
    assert cache.entries() == [] and not list((tmp_path / "envs").glob("*.uv.toml"))


@pytest.mark.parametrize("installer", [UV, PIP], ids=["uv", "pip"])
def test_a_build_honours_the_hosts_index_find_links_and_constraint(tmp_path, host_pip_config, installer):
    cache = EnvCache(tmp_path / "envs", installer=installer)
    lines, log = collect()
    built = cache.ensure(PACKAGES, None, log)
    assert lines[0][1] == f"Building environment virtualenv {built.key[:12]} (pip: 2 packages, {installer.note})"
    python = cache.path(built.key) / "bin" / "python"
    probe = subprocess.run([str(python), "-c", PROBE], capture_output=True, text=True, check=True)
    # 1.0 of cast-probe although 2.0 lies beside it: the constraint held.
    assert probe.stdout.split() == [EXPECTED["cast_probe"], EXPECTED["cast_probe_index"]]


def test_two_environments_share_one_package_cache(tmp_path, host_pip_config):
    cache = EnvCache(tmp_path / "envs", installer=UV, package_cache=tmp_path / "uv-cache")
    lines, log = collect()
    first = cache.ensure([], "cast-probe\n", log)
    lines.clear()
    second = cache.ensure([], "cast-probe\ncast-probe-index\n", log)  # one line added
    # Only the added line's package was fetched and unpacked; the other came from the cache…
    assert ("cast", "Prepared 1 package") in [(stream, text.partition(" in ")[0]) for stream, text in lines]
    # …and both environments hold the same file: hardlinks to the one in the cache.
    module = "lib/python{}.{}/site-packages/cast_probe/__init__.py".format(*sys.version_info[:2])
    one, two = (os.stat(cache.path(built.key) / module) for built in (first, second))
    assert (one.st_ino, one.st_dev) == (two.st_ino, two.st_dev) and one.st_nlink >= 3


def test_without_uv_the_build_falls_back_to_pip_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "uv", None)  # the worker's uv package cannot be imported…
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))  # …and there is none on PATH
    cache = EnvCache(tmp_path / "envs")
    assert cache.installer.name == "pip"
    lines, log = collect()
    built = cache.ensure(["termcolor"], None, log)
    assert lines[0][1] == f"Building environment virtualenv {built.key[:12]} (pip: 1 package, with pip (uv not found))"
    with pytest.raises(ValueError, match="CAST_WORKER_INSTALLER=uv but uv is not installed"):
        choose_installer("uv")


def test_the_installer_setting_is_checked():
    assert choose_installer("pip").note == "with pip (CAST_WORKER_INSTALLER=pip)"
    assert choose_installer("auto") == UV and UV.note == "with uv"
    with pytest.raises(ValueError, match="CAST_WORKER_INSTALLER='conda': expected one of auto, uv, pip"):
        choose_installer("conda")



class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@contextmanager
def served(folder, port=0):
    """`folder` over HTTP on loopback for as long as the block runs: an index that can be gone."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_one_line_added_is_built_from_the_package_cache_alone(tmp_path, host_pip_config, monkeypatch):
    root = host_pip_config.root
    (root / "pip.conf").write_text(f"[global]\nconstraint = {host_pip_config.constraints}\n")
    make_wheel(root / "files", "cast-probe-late", "1.0")  # listed on the index only for the third build
    cache = EnvCache(tmp_path / "envs", installer=UV, package_cache=tmp_path / "uv-cache")
    lines, log = collect()
    with served(root) as port:
        monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{port}/simple")
        cache.ensure([], "cast-probe-index\n", log)  # nothing built yet: the index is asked
    assert not any("package cache" in text for _, text in lines)

    # The index is gone: what the first build fetched, and the find-links folder, are enough.
    lines.clear()
    second = cache.ensure([], "cast-probe-index\ncast-probe\n", log)
    assert not any("package cache" in text for _, text in lines)
    python = cache.path(second.key) / "bin" / "python"
    probe = subprocess.run([str(python), "-c", PROBE], capture_output=True, text=True, check=True)
    assert probe.stdout.split() == [EXPECTED["cast_probe"], EXPECTED["cast_probe_index"]]  # the constraint held

    # A package the cache has never seen: one line says so and the index is asked after all.
    page = root / "simple" / "cast-probe-late" / "index.html"
    page.parent.mkdir()
    page.write_text('<a href="../../files/cast_probe_late-1.0-py3-none-any.whl">cast_probe_late-1.0</a>\n')
    lines.clear()
    with served(root, port):
        third = cache.ensure([], "cast-probe-index\ncast-probe-late\n", log)
    said = [text for _, text in lines]
    assert said[1] == "Not all of it is in the package cache: asking the package indexes"
    assert any("cast-probe-late==1.0" in text for text in said[2:])
    assert not third.cached and (cache.path(third.key) / ".cast-env.json").exists()
