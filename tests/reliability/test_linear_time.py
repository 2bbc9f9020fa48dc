"""No parser or regular expression in the server or the worker takes more than
linear time on text a user controls (issue 10: one quadratic regex on a
100,000-character pip entry froze a worker's heartbeats).

Every validator of cast.protocol, every request body the server parses, the
worker's own parsers and its credential masking, and every compiled pattern
of those modules (found, not listed, so a new one is tried too) meet
100,000-character inputs shaped to make a backtracking engine retry: long runs
of one character with a bad end, repeated separators, nested prefixes. A
linear pass over such a text takes milliseconds; a quadratic one minutes.

The cases run in a child process that reports each one as it finishes, so a
case that never ends is named and killed instead of freezing the suite. The
bound is generous (the machine is shared): it only tells minutes from
milliseconds.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

from tests.conftest import REPO_ROOT

N = 100_000
BOUND_SECONDS = 5.0  # per case; a linear pass is far below, a quadratic one far above
START_SECONDS = 120.0  # the child's imports before its first case: a hang guard only (a busy machine is slow)


def hostile_inputs() -> dict[str, str]:
    """Texts of N characters shaped against backtracking."""
    def fill(unit: str, end: str = "!") -> str:
        return (unit * (N // len(unit) + 1))[: N - len(end)] + end

    return {
        "letters": "a" * N,
        "letters-bad-end": fill("a"),
        "digits-bad-end": fill("0", "x"),
        "spaces-bad-end": fill(" ", "x"),
        "tabs-then-nul": fill("\t", "\x00"),
        "dashes": fill("a-"),
        "dots": fill("a."),
        "slashes": "/" * N,
        "path-parts": fill("a/"),
        "dot-dots": fill("../"),
        "colons": fill("a:"),
        "upper-equals": fill("A", "="),
        "pip-specifiers": fill("a==1,"),
        "pip-extras": "a[" + fill("b,", "!")[2:],
        "scheme-separators": fill("://"),
        "credentials": "http://" + fill("user:"),
        "credential-prefixes": fill("a://b:c"),
        "at-signs": "@" * N,
        "gpu-count": "gpu:" + "1" * (N - 4),
        "run-number": "runs/" + "1" * (N - 5),
        "upload-name": "uploads/" + "a" * (N - 8),
        "unicode": "é" * N,
        "surrogates": "\udcff" * N,
        "apt-proxy": 'Acquire::http::Proxy ' + '"' * (N - 21),
        "newlines": fill("a\n"),
    }


def _request_bodies() -> Iterator[tuple[str, Callable[[str], object]]]:
    """(name, parse) for every field of the request bodies the server parses."""
    from cast.server.schemas import logs, runs, users, workers

    def model(cls, base: dict, make: Callable[[str], dict]) -> Callable[[str], object]:
        return lambda text: cls.model_validate({**base, **make(text)})

    run = {"command": "true"}
    fields = {
        "command": lambda t: {"command": t},
        "git_url": lambda t: {"git_url": t},
        "commit_ref": lambda t: {"git_url": "https://example.invalid/r.git", "commit_ref": t},
        "code_bundle": lambda t: {"code_bundle": t},
        "pip": lambda t: {"pip": [t]},
        "pip_req": lambda t: {"pip_req": t},
        "apt": lambda t: {"apt": [t]},
        "docker_image": lambda t: {"docker_image": t},
        "mounts.resource": lambda t: {"mounts": [{"resource": t}]},
        "mounts.path": lambda t: {"mounts": [{"resource": "uploads/a", "path": t}]},
        "machine_type": lambda t: {"machine_type": t},
        "env.name": lambda t: {"env": {t: "x"}},
        "env.value": lambda t: {"env": {"A": t}},
        "labels": lambda t: {"labels": [t]},
    }
    for name, make in fields.items():
        yield f"RunCreate.{name}", model(runs.RunCreate, run, make)
    yield "LabelIn.label", model(runs.LabelIn, {}, lambda t: {"label": t})
    yield "UserCreate.name", model(users.UserCreate, {}, lambda t: {"name": t})
    yield "TokenCreate.name", model(users.TokenCreate, {}, lambda t: {"name": t})
    yield "TokenCreate.user", model(users.TokenCreate, {}, lambda t: {"user": t})
    yield "LogAppend.lines", model(logs.LogAppend, {"lease_token": "t", "seq": 0},
                                   lambda t: {"runs": [{"stream": "stdout", "lines": [t]}]})
    yield "StatusIn.reason", model(workers.StatusIn, {"lease_token": "t", "status": "failed"},
                                   lambda t: {"reason": t})
    yield "WorkerRegister.name", model(workers.WorkerRegister, {"executor": "local"}, lambda t: {"name": t})


def _parsers() -> Iterator[tuple[str, Callable[[str], object]]]:
    """(name, parse) for every parser of user text in cast.protocol, the server and the worker."""
    from cast.protocol import names, units, validate
    from cast.server import errors, schemas
    from cast.server.services import git, storage
    from cast.worker import dockerenv, resources, source

    for function in (validate.normalize_relative_path, validate.parse_resource, validate.parse_mount,
                     validate.validate_upload_name, validate.validate_pip_spec, validate.validate_apt_package,
                     validate.parse_machine_type, validate.validate_env_name, validate.parse_env,
                     validate.validate_label, validate.looks_secret, validate.is_local_git_url,
                     units.parse_duration, units.parse_size, names.name_problem, names.printable,
                     resources.parse_gpus_option):
        yield f"{function.__module__}.{function.__name__}", function
    yield "validate.validate_env", lambda t: validate.validate_env({"A": t, t[:200]: "x"})
    yield "validate.validate_mounts", lambda t: validate.validate_mounts(
        [validate.Mount("uploads/a", "/".join(["p"] * i)) for i in range(1, 300)] + [validate.Mount("uploads/a", t)])
    yield "storage.resolve_inside", lambda t: storage.resolve_inside(REPO_ROOT, t)
    masking = dockerenv.HostPackageSettings(pip={"index-url": "https://user:secret@example.invalid/simple"})
    yield "dockerenv.HostPackageSettings.redact", masking.redact
    yield from _request_bodies()
    schema_modules = [importlib.import_module(f"{schemas.__name__}.{module.name}")
                      for module in pkgutil.iter_modules(schemas.__path__)]
    for module in (validate, units, names, *schema_modules, errors, git, storage, dockerenv, resources, source):
        for attr, value in vars(module).items():
            if isinstance(value, re.Pattern):
                yield f"{module.__name__}.{attr}.search", value.search
                yield f"{module.__name__}.{attr}.fullmatch", value.fullmatch


def time_every_case() -> None:
    """In the child: one JSON line per case and input, printed when it ends."""
    from cast.server.errors import DomainError

    inputs = hostile_inputs()
    for name, parse in _parsers():
        for shape, text in inputs.items():
            print(json.dumps({"case": name, "input": shape}), flush=True)
            started = time.perf_counter()
            try:
                parse(text)
            except (ValueError, DomainError):  # refusals (SpecError, ValidationError, BadRequest) are expected
                pass
            print(json.dumps({"case": name, "input": shape, "seconds": time.perf_counter() - started}), flush=True)


def test_every_parser_takes_linear_time_on_hostile_input():
    child = subprocess.Popen(
        [sys.executable, "-c", "from tests.reliability.test_linear_time import time_every_case; time_every_case()"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in child.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    timings: dict[tuple[str, str], float] = {}
    running = None
    try:
        while True:
            try:
                line = lines.get(timeout=BOUND_SECONDS if running else START_SECONDS)
            except queue.Empty:
                if running is None:
                    raise AssertionError(f"the timing child printed nothing in {START_SECONDS:g}s") from None
                raise AssertionError(f"{running} ran for over {BOUND_SECONDS:g}s on {N} characters") from None
            if line is None:
                break
            report = json.loads(line)
            running = (report["case"], report["input"])
            if "seconds" in report:
                timings[running] = report["seconds"]
                assert report["seconds"] < BOUND_SECONDS, f"{running} took {report['seconds']:.1f}s on {N} characters"
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
    assert child.returncode == 0, child.stderr.read()
    cases = {case for case, _ in timings}
    assert len(cases) >= 60 and len(timings) == len(cases) * len(hostile_inputs())
    slowest = max(timings, key=timings.get)
    print(f"{len(timings)} timings over {len(cases)} cases; slowest {slowest}: {timings[slowest] * 1000:.1f} ms")
    for key in sorted(timings, key=timings.get)[-8:]:
        print(key, f"{timings[key] * 1000:.1f} ms")
