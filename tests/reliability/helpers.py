"""Helpers for the fault-injection tests: a TCP proxy whose connections can be
cut at will, a look at which processes of a group (or naming a marker) still
run, and a canary folder of host files that no run may change."""

from __future__ import annotations

import os
import socket
import stat
import struct
import threading
from pathlib import Path


class CuttableProxy:
    """A TCP proxy on 127.0.0.1 in front of a local port; `cut()` drops every
    connection it carries at that moment (clients must reconnect);
    `stall_uploads(n)` freezes each connection once it has carried more than
    n bytes towards the server (its sender blocks as the buffers fill), until
    `resume()`."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stall_after: int | None = None
        self._resumed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.update((client, upstream))
            for source, sink, towards_server in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(source, sink, towards_server), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, towards_server: bool) -> None:
        carried = 0
        try:
            while data := source.recv(65536):
                carried += len(data)
                stall_after = self._stall_after
                if towards_server and stall_after is not None and carried > stall_after:
                    self._resumed.wait()
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._drop(source, sink, abort=False)

    def _drop(self, *sockets: socket.socket, abort: bool) -> None:
        for sock in sockets:
            with self._lock:
                self._open.discard(sock)
            try:
                if abort:  # close with a reset rather than a clean end
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked in recv
            except OSError:
                pass
            sock.close()

    def cut(self, *, abort: bool = False) -> int:
        """Drop every open connection (with RST when `abort`); how many there were."""
        with self._lock:
            victims = list(self._open)
        self._drop(*victims, abort=abort)
        return len(victims) // 2

    def stall_uploads(self, after_bytes: int) -> None:
        self._resumed.clear()
        self._stall_after = after_bytes

    def resume(self) -> None:
        self._stall_after = None
        self._resumed.set()

    def close(self) -> None:
        self.listener.close()
        self.resume()
        self.cut()


def _live_processes():
    """(pid, fields of /proc/PID/stat after the command name, /proc/PID) of each process not a zombie."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            yield int(entry.name), fields, entry


def live_members(pgid: int) -> list[int]:
    """The processes of group `pgid` that still run (zombies excluded)."""
    return [pid for pid, fields, _ in _live_processes() if int(fields[2]) == pgid]


def processes_naming(marker: str) -> list[int]:
    """The live processes whose command line holds `marker` (zombies excluded)."""
    found = []
    for pid, _, entry in _live_processes():
        try:
            if marker.encode() in (entry / "cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


def canary_tree(root: Path) -> Path:
    """Host folders no run may change: a private one (0700), a sticky one (1777), a file."""
    (root / "private" / "inner").mkdir(parents=True)
    (root / "private" / "secret.txt").write_text("secret\n")
    os.chmod(root / "private" / "secret.txt", 0o600)
    os.chmod(root / "private" / "inner", 0o700)
    os.chmod(root / "private", 0o700)
    (root / "sticky").mkdir()
    os.chmod(root / "sticky", 0o1777)
    (root / "file.txt").write_text("host file\n")
    os.chmod(root / "file.txt", 0o640)
    return root


def modes_and_contents(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every entry under `root` (itself included): its mode, and a file's bytes."""
    found = {".": (os.lstat(root).st_mode, None)}
    for path in sorted(root.rglob("*")):
        info = os.lstat(path)
        found[str(path.relative_to(root))] = (info.st_mode, path.read_bytes() if stat.S_ISREG(info.st_mode) else None)
    return found
