"""The local executor's virtualenvs: built for real from the local package index,
cached by content, built once when runs race for one, never half-made."""

from __future__ import annotations

import subprocess
import threading

import pytest

from cast.worker.envs import FAILURE_CHARS, HOST_KEY, EnvCache, env_key, failure_reason
from cast.worker.executors.base import BuildFailed


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


def test_builds_over_the_host_python_and_reuses_the_cache(tmp_path):
    cache = EnvCache(tmp_path)
    lines, log = collect()

    first = cache.ensure(["termcolor"], None, log)

    assert not first.cached
    # Said before any of the build's own output.
    assert lines[0] == ("cast", f"Building environment virtualenv {first.key[:12]} (pip: 1 package)")
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
    cache = EnvCache(tmp_path)
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
    long = failure_reason(["ERROR: " + "x" * 1000])
    assert len(long) == FAILURE_CHARS and long.startswith("…")
