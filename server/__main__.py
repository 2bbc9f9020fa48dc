"""`python -m cast.server`: serve the control plane (one uvicorn process).

    python -m cast.server [--host H] [--port P] [--data-dir D]
    python -m cast.server up --home HOME [--port P] [--executor auto|local|docker]

Every setting also reads CAST_* variables (see settings.py); flags win.

`up` is the embedded mode the CLI starts: data dir = HOME, the port of the
last start in HOME (HOME/port), else CAST_PORT or 8470, a free one when that
is taken (remembered for the next start) or --port is 0, ONE worker subprocess using HOME/worker-token, and HOME/server.json
(`{"url", "pid"}`, mode 0600) written once healthy. SIGTERM or SIGINT stops the
worker first (while the server can still hear its last reports), then the
server, and removes server.json. While it runs it holds an exclusive lock on
HOME/server.lock, so a second `up` on the same HOME (say, after server.json
was deleted by hand) refuses to start rather than share the database and the
worker's folder.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import ValidationError

from cast.server.app import create_app
from cast.server.settings import Settings

log = logging.getLogger("cast.server")
# The worker stops its runs (outputs pushed) within its --shutdown-grace (30 s
# by default) and reports for a few seconds more; past this it is killed.
WORKER_STOP_SECONDS = 60
PORT_FILE = "port"  # the port of the last start, tried first at the next


def _settings(args: argparse.Namespace, **overrides) -> Settings:
    values = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**values)


class _Server(uvicorn.Server):
    """uvicorn that ends the app's long waits (lease long-polls, log follow
    streams) as soon as shutdown begins, instead of waiting them out."""

    async def shutdown(self, sockets=None) -> None:
        # The waiters wake on the loop's next turn, after uvicorn below has
        # closed its listeners: a worker told 503 retries against the next server.
        self.config.app.state.database.notifier.close()
        await super().shutdown(sockets)


# How long an idle kept-alive connection stays open: longer than the clients
# keep one (httpx, the worker's and most Python clients', 5 s; nginx's in
# docker/nginx/cast.conf, 4 s), so the client is always the one to close it.
# At uvicorn's own 5 s a client reusing a connection as the server closed it
# met a reset ("Server disconnected without sending a response").
KEEP_ALIVE_SECONDS = 30

# What uvicorn receives of a request's body before it stops reading until the
# app asks for more (its own is 64 KiB: a pause and a resume of the socket for
# nearly every piece of a bulk body, a third of the server's CPU on an output
# push; docs/benchmarks.md, Outputs). Per connection, so bounded.
BODY_HIGH_WATER = 4 << 20


def _http_parser() -> str:
    """httptools, the C parser (a bulk body costs a fraction of h11's CPU to
    receive: docs/benchmarks.md, Outputs), or h11 where it is not installed."""
    from uvicorn.protocols.http import h11_impl

    h11_impl.HIGH_WATER_LIMIT = BODY_HIGH_WATER
    try:
        import httptools  # noqa: F401
        from uvicorn.protocols.http import httptools_impl
    except ImportError:
        log.warning("httptools is not installed: requests are parsed with h11, which receives large bodies "
                    "(output pushes, uploads) several times slower; install cast-runner[server] to get it")
        return "h11"
    httptools_impl.HIGH_WATER_LIMIT = BODY_HIGH_WATER
    log.info("requests are parsed with httptools")
    return "httptools"


def _event_loop() -> str:
    """uvloop, libuv's event loop (on it the replicas spent about 7% less CPU
    a run than on asyncio's own: docs/scaling.md, item 3), or asyncio's
    where it is not installed."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        log.warning("uvloop is not installed: requests are served on asyncio's own event loop, which costs "
                    "more CPU a request; install cast-runner[server] to get it")
        return "asyncio"
    log.info("requests are served on uvloop")
    return "uvloop"


def _run(main: Coroutine[Any, Any, None], loop: str) -> None:
    if loop == "uvloop":
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


def serve(args: argparse.Namespace) -> None:
    settings = _settings(args, host=args.host, port=args.port, data_dir=args.data_dir)
    app = create_app(settings)
    _Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_level=args.log_level,
                           access_log=args.access_log, timeout_graceful_shutdown=5,
                           timeout_keep_alive=KEEP_ALIVE_SECONDS, http=_http_parser(), loop=_event_loop())).run()


class _EmbeddedServer(_Server):
    """uvicorn without its own signal handling: `up` stops the worker before the server."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


def _write_private_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)
        json.dump(data, out)
    os.replace(tmp, path)


def _hold_home(home: Path):
    """HOME/server.lock, open and locked until closed (or until the process
    dies, however it dies: the kernel drops the lock)."""
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    holder = open(home / "server.lock", "a+")
    try:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder.seek(0)
        pid = holder.read().strip() or "unknown"
        holder.close()
        raise SystemExit(f"cast: another embedded server (pid {pid}) is serving {home}; "
                         "stop it (`cast down`, or kill that pid) before starting one here") from None
    holder.truncate(0)
    holder.write(f"{os.getpid()}\n")
    holder.flush()
    return holder


def _last_port(home: Path) -> int | None:
    try:
        text = (home / PORT_FILE).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and 0 < int(text) < 65536 else None


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on `port`, or on a free one if `port` is taken (0: a free one)."""
    for attempt in (port, 0):
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say TCP,
        # and without it every kept-alive answer waits ~40 ms for a delayed ACK.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, attempt))
        except OSError as error:
            sock.close()
            if error.errno != errno.EADDRINUSE or attempt == 0:
                raise
            continue
        return sock
    raise AssertionError("unreachable")


async def _up(args: argparse.Namespace) -> None:
    home = Path(args.home).expanduser().resolve()
    # One user on their own machine: their local repositories are theirs to run,
    # unless CAST_ALLOW_LOCAL_GIT says otherwise.
    settings = _settings(args, host=args.host, data_dir=home, executor=args.executor,
                         allow_local_git=None if "CAST_ALLOW_LOCAL_GIT" in os.environ else True)
    app = create_app(settings)
    wanted = args.port if args.port is not None else _last_port(home) or settings.port
    sock = _bind(settings.host, wanted)
    port = sock.getsockname()[1]
    url = f"http://{settings.host}:{port}"
    moved = {}
    if wanted and port != wanted:
        log.warning("port %d is in use; serving on %d instead (kept for the next start)", wanted, port)
        moved = {"wanted_port": wanted}
    (home / PORT_FILE).write_text(f"{port}\n")
    server = _EmbeddedServer(uvicorn.Config(app, log_level=args.log_level, access_log=args.access_log,
                                            timeout_graceful_shutdown=5, timeout_keep_alive=KEEP_ALIVE_SECONDS,
                                            http=_http_parser()))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if serving.done():
            serving.result()
            return
        await asyncio.sleep(0.01)
    executor = settings.executor  # the worker resolves auto: it knows what it can build on
    worker = subprocess.Popen(
        [sys.executable, "-m", "cast.worker", "--server", url, "--token-file", str(settings.worker_token_file),
         "--work-dir", str(home / "worker"), "--name", "embedded", "--executor", executor,
         "--shutdown-reason", "server shut down"],
        # Its own process group: a ^C in the terminal reaches only this process,
        # whose one SIGTERM lets the worker stop its runs; a second would kill them.
        process_group=0,
    )
    server_file = home / "server.json"
    _write_private_json(server_file, {"url": url, "pid": os.getpid(), **moved})
    log.info("cast is up at %s (data in %s, %s worker pid %s)", url, home, executor, worker.pid)
    try:
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({stopped, serving}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        server_file.unlink(missing_ok=True)
        if worker.poll() is None:
            worker.terminate()
            try:
                await asyncio.to_thread(worker.wait, WORKER_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                worker.kill()
                await asyncio.to_thread(worker.wait)
        server.should_exit = True
        await serving


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cast.server", description="the cast control plane")
    parser.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None,
                        help=f"port to listen on (default $CAST_PORT, else {Settings.model_fields['port'].default})")
    parser.add_argument("--data-dir", type=Path, default=None, help="where the database and files live")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=False)
    commands = parser.add_subparsers(dest="command")
    up = commands.add_parser("up", help="embedded mode: server plus one worker, data in HOME")
    up.add_argument("--home", required=True, type=Path)
    up.add_argument("--port", type=int, default=None,
                    help="port to try first (default: the one of the last start in HOME, else $CAST_PORT, else "
                         f"{Settings.model_fields['port'].default}); taken, a free one is used and kept; 0 picks a free one")
    up.add_argument("--host", default=None)
    up.add_argument("--executor", choices=["auto", "local", "docker"], default=None,
                    help="the embedded worker's executor (default: $CAST_EXECUTOR, else auto: docker if "
                         "a Docker engine answers and has the base image)")
    up.add_argument("--log-level", default="info")
    up.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=False)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "up":
            with _hold_home(Path(args.home).expanduser().resolve()):
                _run(_up(args), _event_loop())
        else:
            serve(args)
    except ValidationError as error:  # a bad CAST_* variable or flag: one line, not a traceback
        first = error.errors()[0]
        parser.exit(2, f"cast.server: setting {'.'.join(map(str, first['loc']))}: {first['msg']}\n")


if __name__ == "__main__":
    main()
