"""`python -m cast.worker`: run a worker, or look after its environment cache.

    python -m cast.worker --server URL (--token-file F | CAST_WORKER_TOKEN) [--work-dir W]
        [--name N] [--executor auto|local|docker] [--max-runs K] [--gpus auto|none|0,1]
        [--max-same-errors N] [--shutdown-grace SECONDS] [--shutdown-reason TEXT]
        [--base-image I] [--memory M] [--cpus C] [--pids-limit P] [--network N]
        [--image-repository R]
    python -m cast.worker cache ls [--json] [--work-dir W] [--executor E] [--image-repository R]
    python -m cast.worker cache prune (--older-than 7d | --all) [--work-dir W] [--executor E]
        [--image-repository R]

The Docker executor's options (--base-image … --image-repository) default to
their `CAST_WORKER_*` variables; see docs/deployment.md.

SIGTERM or SIGINT shuts the worker down without losing work: it leases no
more runs and stops its active ones as `cast stop` does (outputs saved and
pushed), then exits. A second signal, or runs still going after
--shutdown-grace seconds, kill them instead (outputs dropped).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from cast.protocol.units import human_size, parse_duration, parse_size
from cast.worker.agent import Agent, default_work_dir
from cast.worker.client import ServerClient
from cast.worker.executors import DOCKER_OPTIONS, EXECUTOR_CHOICES, available_executors, make_executor
from cast.worker.executors.base import Executor, ExecutorUnavailable
from cast.worker.installer import PACKAGE_CACHE, find_uv, prune_package_cache
from cast.worker.locking import try_lock
from cast.worker.mounts import MountCache
from cast.worker.resources import cpu_count, parse_gpus_option

SHUTDOWN_WAIT = 8.0  # seconds to report killed runs before exiting
DEFAULT_SHUTDOWN_GRACE = "30"  # seconds; the embedded server waits longer for its worker

class UsageError(Exception):
    """Bad arguments or setup: one line for the user, exit code 2."""


def _serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cast.worker", description="Run a cast worker.")
    parser.add_argument("--server", default=os.environ.get("CAST_SERVER_URL"),
                        help="the control plane's URL (default: $CAST_SERVER_URL)")
    parser.add_argument("--token-file", type=Path, help="file holding the worker token "
                        "(default: $CAST_WORKER_TOKEN)")
    parser.add_argument("--work-dir", type=Path, default=default_work_dir(),
                        help="where runs, environments and caches live (default: $CAST_HOME/worker)")
    parser.add_argument("--name", default=socket.gethostname())
    parser.add_argument("--executor", choices=EXECUTOR_CHOICES, default="auto")
    parser.add_argument("--max-runs", type=int, default=cpu_count(),
                        help="runs executed at once (default: the number of CPUs)")
    parser.add_argument("--gpus", default="auto", help="auto (from nvidia-smi), none, or indices such as 0,1")
    parser.add_argument("--max-same-errors", type=int, default=os.environ.get("CAST_WORKER_MAX_SAME_ERRORS", "8"),
                        help="a run fails once the server gave one of its reports the same 5xx answer this "
                             "many times in a row (default: $CAST_WORKER_MAX_SAME_ERRORS, else 8)")
    parser.add_argument("--shutdown-grace", type=float,
                        default=os.environ.get("CAST_WORKER_SHUTDOWN_GRACE", DEFAULT_SHUTDOWN_GRACE),
                        metavar="SECONDS",
                        help="on SIGTERM, how long runs may take to stop and push their outputs before they "
                             "are killed (default: $CAST_WORKER_SHUTDOWN_GRACE, else 30)")
    parser.add_argument("--cache-bytes", metavar="SIZE", default=os.environ.get("CAST_WORKER_CACHE_BYTES", "20g"),
                        help="bound of the object store's cache of mounted files, e.g. 500g; the files used "
                             "longest ago that no run mounts are evicted (default: $CAST_WORKER_CACHE_BYTES, "
                             "else 20g)")
    parser.add_argument("--shutdown-reason", default="worker shut down", metavar="TEXT",
                        help="the reason runs stopped by this worker's shutdown record (default: worker shut down)")
    docker = parser.add_argument_group("docker executor", "each defaults to its CAST_WORKER_<NAME> variable")
    docker.add_argument("--base-image", metavar="IMAGE",
                        help="base of runs without --docker-image (default cast-base:bookworm)")
    docker.add_argument("--memory", metavar="SIZE",
                        help="memory limit per run, e.g. 8g (default: the host's, shared by machine type)")
    docker.add_argument("--cpus", metavar="N", help="CPU limit per run, e.g. 3.5 (default: as --memory)")
    docker.add_argument("--pids-limit", metavar="N", help="processes per run (default 4096)")
    docker.add_argument("--network", metavar="NAME", help="Docker network of runs and builds (default bridge)")
    _add_image_repository(docker)
    return parser


def _add_image_repository(parser) -> None:
    parser.add_argument("--image-repository", metavar="NAME",
                        help="environment images are tagged NAME:KEY (default cast-env)")


def _docker_options(args: argparse.Namespace) -> dict[str, str]:
    """The Docker executor's options given as flags; the rest come from the environment."""
    given = {name: getattr(args, name, None) for name in DOCKER_OPTIONS}
    return {name: value for name, value in given.items() if value is not None}


def _cache_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cast.worker cache",
                                     description="List or prune cached run environments.")
    commands = parser.add_subparsers(dest="action", required=True)
    for action in ("ls", "prune"):
        sub = commands.add_parser(action)
        sub.add_argument("--work-dir", type=Path, default=default_work_dir())
        sub.add_argument("--executor", choices=EXECUTOR_CHOICES, default="auto",
                         help="auto: every executor available here")
        _add_image_repository(sub)
        if action == "ls":
            sub.add_argument("--json", action="store_true")
        else:
            sub.add_argument("--older-than", help="e.g. 7d, 12h, 30m")
            sub.add_argument("--all", action="store_true",
                             help="remove every cached environment and the whole package cache")
    return parser


def _read_token(token_file: Path | None) -> str:
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise UsageError(f"cannot read the token file {token_file}: {exc.strerror}") from None
    else:
        token = os.environ.get("CAST_WORKER_TOKEN", "").strip()
    if not token:
        raise UsageError("no worker token: pass --token-file FILE or set CAST_WORKER_TOKEN")
    return token


def serve(argv: list[str]) -> int:
    args = _serve_parser().parse_args(argv)
    if not args.server:
        raise UsageError("no server: pass --server URL or set CAST_SERVER_URL")
    if args.max_runs < 1:
        raise UsageError("--max-runs must be at least 1")
    if args.max_same_errors < 1:
        raise UsageError("--max-same-errors must be at least 1")
    if not 0 <= args.shutdown_grace <= 86400:
        raise UsageError("--shutdown-grace must be between 0 and 86400 seconds")
    reason = args.shutdown_reason.strip()
    if not reason or len(reason) > 200 or not reason.isprintable():
        raise UsageError("--shutdown-reason must be one printable line of at most 200 characters")
    try:
        gpus = parse_gpus_option(args.gpus)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        cache_bytes = parse_size(args.cache_bytes)
    except ValueError:
        cache_bytes = -1
    if cache_bytes < 0:
        raise UsageError(f"--cache-bytes must be a size such as 500g, not {args.cache_bytes!r}")
    token = _read_token(args.token_file)
    work_dir = args.work_dir.resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    lock = try_lock(work_dir / "worker.lock")
    if lock is None:
        raise UsageError(f"another worker is using {work_dir}")
    options = _docker_options(args)
    if options and args.executor == "local":
        flags = ", ".join("--" + name.replace("_", "-") for name in options)
        raise UsageError(f"{flags}: only for the docker executor, not --executor local")
    try:
        executor = make_executor(args.executor, work_dir, **options)
    except ExecutorUnavailable as exc:
        raise UsageError(str(exc)) from None

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    client = ServerClient(args.server, token, max_same_errors=args.max_same_errors)
    agent = Agent(client=client, executor=executor, work_dir=work_dir, name=args.name,
                  max_runs=args.max_runs, gpus=gpus, object_cache_bytes=cache_bytes)
    agent.prepare()

    stop, kill_now = threading.Event(), threading.Event()

    def on_signal(*_) -> None:
        (kill_now if stop.is_set() else stop).set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    failure: list[BaseException] = []

    def serve_until_stopped() -> None:
        try:
            agent.serve()
        except BaseException as exc:  # reported by the main thread
            failure.append(exc)
        finally:
            stop.set()

    # The lease loop blocks in long polls; the main thread stays free for signals.
    threading.Thread(target=serve_until_stopped, name="lease-loop", daemon=True).start()
    while not stop.wait(0.5):
        pass
    agent.shutdown(reason=reason, grace=args.shutdown_grace, wait=SHUTDOWN_WAIT, kill_now=kill_now)
    if failure:
        logging.getLogger(__name__).error("worker failed", exc_info=failure[0])
        return 1
    return 0


def _executors(name: str, work_dir: Path, **options) -> list[Executor]:
    try:
        if name == "auto":
            return available_executors(work_dir, **options)
        return [make_executor(name, work_dir, **options)]
    except ExecutorUnavailable as exc:
        raise UsageError(str(exc)) from None


def _print_entries(rows: list[tuple[str, object]]) -> None:
    for executor_name, entry in rows:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.last_used))
        print(f"{executor_name:7} {entry.key[:12]:12} {human_size(entry.size):>9}  {used}  {entry.holds}")


def cache(argv: list[str]) -> int:
    args = _cache_parser().parse_args(argv)
    executors = _executors(args.executor, args.work_dir, **_docker_options(args))
    if args.action == "ls":
        rows = [(executor.name, entry) for executor in executors for entry in executor.cache_entries()]
        if args.json:
            print(json.dumps([{"executor": name, "key": e.key, "holds": e.holds, "size": e.size,
                               "last_used": e.last_used} for name, e in rows], indent=2))
        elif rows:
            _print_entries(rows)
        else:
            print("no cached environments")
        return 0
    if not args.all and not args.older_than:
        raise UsageError("say which environments to remove: --older-than DURATION or --all")
    try:
        older_than = parse_duration(args.older_than, what="--older-than") if args.older_than else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    rows = [(executor.name, entry) for executor in executors
            for entry in executor.prune_cache(older_than=older_than, everything=args.all)]
    _print_entries(rows)
    print(f"removed {len(rows)} environment{'s' if len(rows) != 1 else ''}")
    try:
        print(prune_package_cache(args.work_dir / PACKAGE_CACHE, everything=args.all, uv=find_uv()))
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"cast worker: the package cache: {exc}", file=sys.stderr)
        return 1
    pruned = MountCache(args.work_dir / "mounts").prune_objects(older_than=older_than, everything=args.all)
    if pruned is not None:
        print(f"removed {pruned[0]} cached mount{'s' if pruned[0] != 1 else ''} of the object store, "
              f"{human_size(pruned[1])} freed")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["cache"]:
            return cache(argv[1:])
        return serve(argv)
    except UsageError as exc:
        print(f"cast worker: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
