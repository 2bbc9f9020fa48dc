"""Host resources and GPU assignment, with a fake `nvidia-smi` (there is no GPU here)."""

from __future__ import annotations

import os
import threading

import pytest

from cast.worker.resources import GpuPool, cpu_count, detect_gpus, memory_bytes, parse_gpus_option


@pytest.fixture
def fake_nvidia_smi(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "nvidia-smi"
    script.write_text(
        '#!/bin/sh\n'
        '[ "$1 $2" = "--query-gpu=index --format=csv,noheader" ] || exit 9\n'
        'printf "0\\n1\\n2\\n3\\n"\n'
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_gpus_come_from_nvidia_smi(fake_nvidia_smi):
    assert detect_gpus() == [0, 1, 2, 3]
    assert parse_gpus_option("auto") == [0, 1, 2, 3]
    assert parse_gpus_option("none") == []
    assert parse_gpus_option("2,0") == [0, 2]


def test_no_nvidia_smi_means_no_gpus(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert detect_gpus() == []


def test_bad_gpu_lists_are_refused():
    with pytest.raises(ValueError, match="--gpus"):
        parse_gpus_option("0,x")
    with pytest.raises(ValueError, match="negative"):
        parse_gpus_option("-1")


def test_cpus_and_memory_are_reported():
    assert cpu_count() >= 1
    assert memory_bytes() > 0


def test_concurrent_runs_never_share_a_gpu():
    pool = GpuPool([0, 1, 2, 3])
    held: list[list[int]] = []
    lock = threading.Lock()

    def take():
        gpus = pool.acquire(2)
        with lock:
            held.append(gpus)

    threads = [threading.Thread(target=take) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(held[0] + held[1]) == [0, 1, 2, 3]
    assert pool.free_count == 0
    with pytest.raises(RuntimeError):
        pool.acquire(1)
    pool.release(held[0])
    assert pool.acquire(2) == sorted(held[0])
