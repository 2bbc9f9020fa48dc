"""What this worker host offers (CPUs, memory, GPUs, disk space) and which GPUs are free.

GPUs come from `nvidia-smi` where it is installed. A run that asks for N GPUs
gets N distinct free device indices for as long as it runs; concurrent runs
never share one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

# Below this many free bytes a run's filesystem counts as full: a command that
# failed then most likely failed for want of space.
DISK_FULL_BYTES = 16 << 20


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def memory_bytes() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def disk_nearly_full(path: Path, *, threshold: int = DISK_FULL_BYTES) -> bool:
    """Whether the filesystem holding `path` has less than `threshold` bytes
    left for unprivileged writers (a run's user)."""
    try:
        info = os.statvfs(path)
    except OSError:
        return False
    return info.f_bavail * info.f_frsize < threshold


def detect_gpus() -> list[int]:
    """The indices `nvidia-smi` lists; none when it is absent or fails."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        result = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if result.returncode != 0:
        return []
    return sorted(int(line.strip()) for line in result.stdout.splitlines() if line.strip().isdigit())


def parse_gpus_option(value: str) -> list[int]:
    """`--gpus auto|none|0,1`."""
    if value == "auto":
        return detect_gpus()
    if value == "none":
        return []
    try:
        indices = sorted({int(part) for part in value.split(",") if part.strip()})
    except ValueError:
        raise ValueError(f"--gpus {value!r} must be auto, none or a list of indices such as 0,1") from None
    if any(index < 0 for index in indices):
        raise ValueError(f"--gpus {value!r}: indices cannot be negative")
    return indices


class GpuPool:
    """The host's GPUs, each held by at most one run at a time."""

    def __init__(self, indices: list[int]):
        self.all = list(indices)
        self._free = list(indices)
        self._lock = threading.Lock()

    @property
    def free_count(self) -> int:
        with self._lock:
            return len(self._free)

    def acquire(self, count: int) -> list[int]:
        with self._lock:
            if count > len(self._free):
                raise RuntimeError(f"asked for {count} GPUs but only {len(self._free)} are free")
            taken, self._free = self._free[:count], self._free[count:]
            return taken

    def release(self, indices: list[int]) -> None:
        with self._lock:
            self._free = sorted(set(self._free) | set(indices))
