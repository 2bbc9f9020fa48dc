"""The worker's file locks: one holder at a time, across threads and processes."""

from __future__ import annotations

import subprocess
import sys
import threading

from cast.worker.locking import file_lock, try_lock


def test_try_lock_refuses_a_second_holder_until_the_first_lets_go(tmp_path):
    path = tmp_path / "deep" / "worker.lock"  # its folder is made on the way
    first = try_lock(path)
    assert first is not None and path.exists()
    assert try_lock(path) is None
    first.close()
    again = try_lock(path)
    assert again is not None
    again.close()


def test_try_lock_is_refused_to_another_process(tmp_path):
    path = tmp_path / "worker.lock"
    held = try_lock(path)
    probe = ("import sys; from pathlib import Path; from cast.worker.locking import try_lock; "
             "sys.exit(0 if try_lock(Path(sys.argv[1])) is None else 1)")
    try:
        refused = subprocess.run([sys.executable, "-c", probe, str(path)], timeout=60)
        assert refused.returncode == 0
    finally:
        held.close()
    assert subprocess.run([sys.executable, "-c", probe, str(path)], timeout=60).returncode == 1


def test_file_lock_holds_out_every_other_holder_for_its_block(tmp_path):
    path = tmp_path / "locks" / "env.lock"
    entered = threading.Event()

    def contender() -> None:
        with file_lock(path):
            entered.set()

    with file_lock(path):
        assert try_lock(path) is None
        thread = threading.Thread(target=contender)
        thread.start()
        assert not entered.wait(0.5), "a second holder got in while the lock was held"
    thread.join(120)
    assert entered.is_set()
    released = try_lock(path)
    assert released is not None
    released.close()


def test_file_lock_is_released_when_its_block_raises(tmp_path):
    path = tmp_path / "env.lock"
    try:
        with file_lock(path):
            raise RuntimeError("build failed")
    except RuntimeError:
        pass
    handle = try_lock(path)
    assert handle is not None
    handle.close()
