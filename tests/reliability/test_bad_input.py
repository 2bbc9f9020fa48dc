"""Malformed and hostile input, table-driven, across the API and the CLI.

Every input must get one clear refusal — from the API a 4xx whose JSON
`detail` says why, from the CLI one `cast: error:` line on stderr and a
non-zero exit, never a traceback — and must change nothing: the runs (with
their statuses and labels), uploads, users, tokens and stored files are
compared before and after each input, and the server's log must show no
unhandled error.

One server (with a local worker) serves the whole table. It holds a complete
run with outputs (`{done}`), a run that stays queued (`{queued}`: it asks for
GPUs the worker lacks), a folder upload `data`, and a git repository; `{next}`
is the number the next run would get, so mounting it is a mount cycle.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import click
import httpx
import pytest

from cast.client.cli import cli

NOT_SET = object()
BIG = "99999999999999999999"  # beyond 64 bits
HEX_KEY = "ab" * 32


@dataclass(frozen=True)
class ApiInput:
    """A request and the refusal it must get."""

    what: str
    method: str
    path: str  # under /api/v1; {done}, {queued}, {next} are filled in
    status: int
    detail: str  # a substring of the answer's `detail`
    json: object = NOT_SET
    content: bytes | None = None
    params: dict | None = None
    headers: dict = field(default_factory=dict)
    token: str = "admin"  # "admin", "worker", "none", or the literal token to send


@dataclass(frozen=True)
class CliInput:
    """A `cast` command line and the one error line it must print."""

    what: str
    args: tuple
    exit_code: int
    needle: str
    env: dict = field(default_factory=dict)


def _tar(*members: tarfile.TarInfo, data: bytes = b"evil\n") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for member in members:
            if member.isfile():
                member.size = len(data)
                archive.addfile(member, io.BytesIO(data))
            else:
                archive.addfile(member)
    return buffer.getvalue()


def _member(name: str, kind=tarfile.REGTYPE, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def _run(**spec) -> dict:
    return {"command": "true", **spec}


MARKER = "/tmp/cast-bad-input-pwned"

API_INPUTS = [
    # --- unknown runs and numbers out of range
    ApiInput("unknown run", "GET", "/runs/424242", 404, "run 424242 not found"),
    ApiInput("run id beyond 64 bits", "GET", f"/runs/{BIG}", 422, "run_id"),
    ApiInput("negative run id", "GET", "/runs/-1", 422, "run_id"),
    ApiInput("run id not a number", "GET", "/runs/abc", 422, "run_id"),
    ApiInput("stop an unknown run", "POST", "/runs/424242/stop", 404, "run 424242 not found"),
    ApiInput("kill a run id beyond 64 bits", "POST", f"/runs/{BIG}/kill", 422, "run_id"),
    ApiInput("label an unknown run", "POST", "/runs/424242/labels", 404, "not found", json={"label": "x"}),
    ApiInput("logs of an unknown run", "GET", "/runs/424242/logs", 404, "not found"),
    ApiInput("follow an unknown run", "GET", "/runs/424242/logs/follow", 404, "not found"),
    ApiInput("log download of an unknown run", "GET", "/runs/424242/logs/download", 404, "run 424242 not found"),
    ApiInput("outputs of an unknown run", "GET", "/runs/424242/outputs", 404, "not found"),
    ApiInput("log offset beyond 64 bits", "GET", "/runs/{done}/logs", 422, "offset", params={"offset": BIG}),
    ApiInput("log limit zero", "GET", "/runs/{done}/logs", 422, "limit", params={"limit": 0}),
    ApiInput("log limit too large", "GET", "/runs/{done}/logs", 422, "limit", params={"limit": 200_001}),
    ApiInput("negative list limit", "GET", "/runs", 422, "limit", params={"limit": -5}),
    ApiInput("list limit too large", "GET", "/runs", 422, "limit", params={"limit": 501}),
    ApiInput("negative page cursor", "GET", "/runs", 422, "before", params={"before": -1}),
    ApiInput("unknown status filter", "GET", "/runs", 422, "status", params={"status": "sleeping"}),
    ApiInput("stop a finished run", "POST", "/runs/{done}/stop", 409, "complete"),
    ApiInput("kill a finished run", "POST", "/runs/{done}/kill", 409, "complete"),
    ApiInput("remove a label the run lacks", "DELETE", "/runs/{done}/labels/nope", 404, "nope"),
    ApiInput("label with a space", "POST", "/runs/{done}/labels", 400, "label", json={"label": "a b"}),
    ApiInput("label of the wrong type", "POST", "/runs/{done}/labels", 422, "label", json={"label": 5}),
    # --- paths in outputs and uploads
    ApiInput("output path with ..", "GET", "/runs/{done}/outputs/%2e%2e/%2e%2e/cast.db", 400, "'..'"),
    ApiInput("absolute output path", "GET", "/runs/{done}/outputs/%2Fetc%2Fpasswd", 400, "absolute"),
    ApiInput("missing output path", "GET", "/runs/{done}/outputs/nope.txt", 404, "nope.txt"),
    ApiInput("upload path with ..", "GET", "/uploads/data/%2e%2e/%2e%2e/cast.db", 400, "'..'"),
    ApiInput("unknown upload", "GET", "/uploads/nope", 404, "upload 'nope' not found"),
    ApiInput("upload named ..", "PUT", "/uploads/%2e%2e", 400, "upload name", content=b"x"),
    ApiInput("upload name starting with -", "PUT", "/uploads/-rf", 400, "not start with '-'", content=b"x"),
    ApiInput("upload name with a NUL", "PUT", "/uploads/a%00b", 400, "NUL", content=b"x"),
    ApiInput("upload name with a newline", "PUT", "/uploads/a%0Ab", 400, "upload name", content=b"x"),
    ApiInput("upload name taken", "PUT", "/uploads/data", 409, "already exists", content=b"other bytes"),
    # --- deleting and retention
    ApiInput("delete the outputs of a queued run", "DELETE", "/runs/{queued}/outputs", 409, "stop it first"),
    ApiInput("delete the outputs of an unknown run", "DELETE", "/runs/424242/outputs", 404, "run 424242 not found"),
    ApiInput("delete outputs with a force that is no boolean", "DELETE", "/runs/{done}/outputs", 422, "force",
             params={"force": "maybe"}),
    ApiInput("delete an unknown upload", "DELETE", "/uploads/nope", 404, "upload 'nope' not found"),
    ApiInput("delete an upload named ..", "DELETE", "/uploads/%2e%2e", 404, "not found"),
    ApiInput("prune with a negative age", "POST", "/prune", 422, "older_than", json={"older_than": -1}),
    ApiInput("prune with an unknown field", "POST", "/prune", 422, "everything",
             json={"older_than": 1, "everything": True}),
    ApiInput("prune an unknown user's runs", "POST", "/prune", 404, "user 'nobody' not found",
             json={"older_than": 1, "user": "nobody"}),
    ApiInput("usage of an unknown user", "GET", "/usage", 404, "user 'nobody' not found", params={"user": "nobody"}),
    ApiInput("unknown upload kind", "PUT", "/uploads/new", 422, "kind", content=b"x", params={"kind": "zip"}),
    ApiInput("folder upload that is not a tar", "PUT", "/uploads/new", 400, "not a tar", content=b"not a tar" * 200,
             params={"kind": "dir"}),
    ApiInput("folder upload escaping with ..", "PUT", "/uploads/new", 400, "'..'",
             content=_tar(_member("../../evil.txt")), params={"kind": "dir"}),
    ApiInput("folder upload with an absolute name", "PUT", "/uploads/new", 400, "absolute",
             content=_tar(_member("/tmp/evil.txt")), params={"kind": "dir"}),
    ApiInput("folder upload with a symlink", "PUT", "/uploads/new", 400, "links",
             content=_tar(_member("passwd", tarfile.SYMTYPE, "/etc/passwd")), params={"kind": "dir"}),
    ApiInput("folder upload with a hard link", "PUT", "/uploads/new", 400, "links",
             content=_tar(_member("passwd", tarfile.LNKTYPE, "/etc/passwd")), params={"kind": "dir"}),
    ApiInput("folder upload with a device", "PUT", "/uploads/new", 400, "devices",
             content=_tar(_member("null", tarfile.CHRTYPE)), params={"kind": "dir"}),
    ApiInput("folder upload with a name that is not UTF-8", "PUT", "/uploads/new", 400,
             "'bad\\xffname.txt' cannot be stored: its name is not valid UTF-8",
             content=_tar(_member("bad\udcffname.txt")), params={"kind": "dir"}),
    ApiInput("folder upload with a name too long to store", "PUT", "/uploads/new", 400,
             "longer than 255 bytes", content=_tar(_member("x" * 300)), params={"kind": "dir"}),
    # --- mounts
    ApiInput("mount leaving runs/ with ..", "POST", "/runs", 400, "must be runs/N",
             json=_run(mounts=[{"resource": "runs/{done}/../../etc"}])),
    ApiInput("mount escaping the data with ..", "POST", "/runs", 400, "'..'",
             json=_run(mounts=[{"resource": "runs/{done}/../../../etc"}])),
    ApiInput("mount of an absolute source", "POST", "/runs", 400, "absolute", json=_run(mounts=[{"resource": "/etc/passwd"}])),
    ApiInput("mount path with ..", "POST", "/runs", 400, "'..'",
             json=_run(mounts=[{"resource": "runs/{done}/out.txt", "path": "../../escape"}])),
    ApiInput("absolute mount path", "POST", "/runs", 400, "absolute",
             json=_run(mounts=[{"resource": "runs/{done}/out.txt", "path": "/etc/out.txt"}])),
    ApiInput("mount of an unknown run", "POST", "/runs", 400, "does not exist", json=_run(mounts=[{"resource": "runs/424242"}])),
    ApiInput("mount of an unfinished run", "POST", "/runs", 400, "machine_requested",
             json=_run(mounts=[{"resource": "runs/{queued}"}])),
    ApiInput("mount cycle: the run's own number", "POST", "/runs", 400, "does not exist",
             json=_run(mounts=[{"resource": "runs/{next}"}])),
    ApiInput("mount of a missing path", "POST", "/runs", 400, "nope.txt",
             json=_run(mounts=[{"resource": "runs/{done}/nope.txt"}])),
    ApiInput("mount of an unknown upload", "POST", "/runs", 400, "none", json=_run(mounts=[{"resource": "uploads/none"}])),
    ApiInput("two mounts on one path", "POST", "/runs", 400, "two mounts on one path",
             json=_run(mounts=[{"resource": "runs/{done}/out.txt", "path": "x"}, {"resource": "uploads/data", "path": "x"}])),
    ApiInput("mount inside another mount", "POST", "/runs", 400, "overlap",
             json=_run(mounts=[{"resource": "uploads/data", "path": "a"}, {"resource": "runs/{done}/out.txt", "path": "a/b"}])),
    ApiInput("mount resource with a path and a colon", "POST", "/runs", 400, "is not a run number",
             json=_run(mounts=[{"resource": "runs/{done}:x", "path": "y"}])),
    # --- packages: option and shell injection
    ApiInput("pip spec with a shell command", "POST", "/runs", 400, "not a package requirement", json=_run(pip=["six; rm -rf /"])),
    ApiInput("pip option injection", "POST", "/runs", 400, "not a package requirement",
             json=_run(pip=["--index-url http://evil"])),
    ApiInput("pip URL", "POST", "/runs", 400, "not a package requirement", json=_run(pip=["git+https://evil/x.git"])),
    ApiInput("requirements file with an index option", "POST", "/runs", 400, "not a package requirement",
             json=_run(pip_req="six\n--extra-index-url http://evil\n")),
    ApiInput("apt package with a shell command", "POST", "/runs", 400, "Debian package", json=_run(apt=["vim; reboot"])),
    ApiInput("apt option injection", "POST", "/runs", 400, "Debian package", json=_run(apt=["--allow-unauthenticated"])),
    ApiInput("docker image option injection", "POST", "/runs", 422, "docker_image", json=_run(docker_image="--privileged")),
    # --- code sources
    ApiInput("unreachable git URL", "POST", "/runs", 400, "unreachable", json=_run(git_url="file:///nonexistent/repo")),
    ApiInput("unknown git ref", "POST", "/runs", 400, "no-such-branch",
             json=_run(git_url="{repo}", commit_ref="no-such-branch")),
    ApiInput("git ext:: transport running a command", "POST", "/runs", 400, "not allowed",
             json=_run(git_url=f"ext::sh -c touch% {MARKER}")),
    ApiInput("git URL that is an option", "POST", "/runs", 422, "must not start with '-'",
             json=_run(git_url=f"--upload-pack=touch {MARKER}")),
    ApiInput("git ref that is an option", "POST", "/runs", 422, "must not start with '-'",
             json=_run(git_url="{repo}", commit_ref=f"--output={MARKER}")),
    ApiInput("git ref with a range", "POST", "/runs", 422, "not a git ref", json=_run(git_url="{repo}", commit_ref="main..HEAD")),
    ApiInput("unknown code bundle", "POST", "/runs", 400, "unknown", json=_run(code_bundle=HEX_KEY)),
    ApiInput("workdir escaping the code with ..", "POST", "/runs", 400, "escapes its root", json=_run(workdir="../up")),
    ApiInput("absolute workdir", "POST", "/runs", 400, "must be relative", json=_run(workdir="/etc")),
    ApiInput("a client's commit for a git URL", "POST", "/runs", 422, "resolved by the server",
             json=_run(git_url="{repo}", commit_sha="a" * 40)),
    ApiInput("git URL and code bundle together", "POST", "/runs", 422, "not both",
             json=_run(git_url="{repo}", code_bundle=HEX_KEY)),
    ApiInput("code bundle key not hex", "PUT", "/code/not-a-key", 422, "key", content=b"x"),
    ApiInput("code bundle asked for by a key not hex", "GET", "/code/not-a-key", 422, "key"),
    ApiInput("worker's code fetch by a digest not hex", "GET", "/workers/code/not-a-digest", 422, "digest",
             token="worker"),
    ApiInput("code bundle that is not a tar", "PUT", f"/code/{HEX_KEY}", 400, "not a tar", content=b"garbage" * 100),
    # --- commands and bodies
    ApiInput("empty command", "POST", "/runs", 422, "command", json={"command": ""}),
    ApiInput("oversized command", "POST", "/runs", 422, "65536", json={"command": "x" * 65537}),
    # --- size bounds on every field: 422 naming the field and the limit
    ApiInput("pip entry of 100,000 characters", "POST", "/runs", 422,
             "pip.0: --pip entry of 100000 characters exceeds the limit of 256", json=_run(pip=["a" * 100_000])),
    ApiInput("requirements line of 100,000 characters", "POST", "/runs", 422, "exceeds the limit of 256",
             json=_run(pip_req="six\n" + "a" * 100_000 + "\n")),
    ApiInput("apt entry of 100,000 characters", "POST", "/runs", 422, "apt.0: String should have at most 201",
             json=_run(apt=["a" * 100_000])),
    ApiInput("env name of 300 characters", "POST", "/runs", 422, "exceeds the limit of 256",
             json=_run(env={"A" * 300: "x"})),
    ApiInput("env value of 100,000 characters", "POST", "/runs", 422, "A: its value of 100000 characters exceeds the limit of 65536",
             json=_run(env={"A": "x" * 100_000})),
    ApiInput("env of 300,000 characters in all", "POST", "/runs", 422, "exceed the limit of 262144",
             json=_run(env={f"V{i}": "x" * 60_000 for i in range(5)})),
    ApiInput("machine type of 100,000 characters", "POST", "/runs", 422, "machine_type: String should have at most 16",
             json=_run(machine_type="gpu" * 33_333)),
    ApiInput("run label of 100,000 characters", "POST", "/runs", 422, "labels.0: String should have at most 63",
             json=_run(labels=["x" * 100_000])),
    ApiInput("label of 100,000 characters", "POST", "/runs/{done}/labels", 422, "label: String should have at most 63",
             json={"label": "x" * 100_000}),
    ApiInput("mount path of 5,000 characters", "POST", "/runs", 422, "4096",
             json=_run(mounts=[{"resource": "uploads/data", "path": "a/" * 2500}])),
    ApiInput("user name of 100,000 characters", "POST", "/users", 422, "name: String should have at most 64",
             json={"name": "u" * 100_000}),
    ApiInput("token for a user named with 100,000 characters", "POST", "/tokens", 422,
             "user: String should have at most 64", json={"user": "u" * 100_000}),
    ApiInput("worker log line of 2 MiB", "POST", "/runs/{queued}/logs", 422, "String should have at most 1048576",
             json={"lease_token": "x", "seq": 0, "runs": [{"stream": "stdout", "lines": ["x" * (2 << 20)]}]},
             token="worker"),
    ApiInput("worker log batch of 50,001 lines", "POST", "/runs/{queued}/logs", 422, "at most 50000 lines",
             json={"lease_token": "x", "seq": 0, "runs": [{"stream": "stdout", "lines": ["x"] * 25_000},
                                                           {"stream": "stderr", "lines": ["y"] * 25_001}]},
             token="worker"),
    ApiInput("worker status reason over 4096 characters", "POST", "/runs/{queued}/status", 422,
             "reason: String should have at most 4096", token="worker",
             json={"lease_token": "x", "status": "failed", "reason": "x" * 5000}),
    ApiInput("worker status limits over 4096 characters", "POST", "/runs/{queued}/status", 422,
             "limits: String should have at most 4096", token="worker",
             json={"lease_token": "x", "status": "running", "limits": "x" * 5000}),
    ApiInput("command with a NUL byte", "POST", "/runs", 422, "NUL", json={"command": "echo a\x00b"}),
    ApiInput("oversized body", "POST", "/runs", 413, "limit", json={"command": "true", "pip_req": "#" * (17 * 1024 * 1024)}),
    ApiInput("invalid UTF-8 in the body", "POST", "/runs", 400, "parsing the body",
             content=b'{"command": "echo \xff\xfe"}', headers={"Content-Type": "application/json"}),
    ApiInput("lone surrogate in a value", "POST", "/runs", 422, "unicode",
             content=b'{"command": "true", "env": {"A": "\\udcff"}}', headers={"Content-Type": "application/json"}),
    ApiInput("lone surrogate in a key", "POST", "/runs", 422, "unicode",
             content=b'{"command": "true", "env": {"\\udcff": "a"}}', headers={"Content-Type": "application/json"}),
    ApiInput("lone surrogate in a token request", "POST", "/tokens", 422, "unicode",
             content=b'{"user": "\\ud800"}', headers={"Content-Type": "application/json"}),
    ApiInput("body that is not JSON", "POST", "/runs", 422, "JSON",
             content=b"{command: true", headers={"Content-Type": "application/json"}),
    ApiInput("body that is a list", "POST", "/runs", 422, "dictionary", json=["true"]),
    ApiInput("unknown field", "POST", "/runs", 422, "privileged", json=_run(privileged=True)),
    # --- wrong types and numbers
    ApiInput("command of the wrong type", "POST", "/runs", 422, "command", json={"command": 5}),
    ApiInput("pip as a string", "POST", "/runs", 422, "pip", json=_run(pip="six")),
    ApiInput("env value of the wrong type", "POST", "/runs", 422, "env", json=_run(env={"A": 1})),
    ApiInput("retries of the wrong type", "POST", "/runs", 422, "retries", json=_run(retries="many")),
    ApiInput("negative timeout", "POST", "/runs", 422, "timeout", json=_run(timeout=-1)),
    ApiInput("zero timeout", "POST", "/runs", 422, "timeout", json=_run(timeout=0)),
    ApiInput("huge timeout", "POST", "/runs", 422, "timeout", json=_run(timeout=1e308)),
    ApiInput("negative retries", "POST", "/runs", 422, "retries", json=_run(retries=-1)),
    ApiInput("too many retries", "POST", "/runs", 422, "retries", json=_run(retries=11)),
    ApiInput("retries beyond 64 bits", "POST", "/runs", 422, "retries", json=_run(retries=int(BIG))),
    ApiInput("too many GPUs", "POST", "/runs", 400, "between 1 and 16", json=_run(machine_type="gpu:99")),
    ApiInput("negative GPUs", "POST", "/runs", 400, "machine type", json=_run(machine_type="gpu:-1")),
    # --- environment names and labels
    ApiInput("env name starting with a digit", "POST", "/runs", 400, "not valid", json=_run(env={"1BAD": "x"})),
    ApiInput("env name with =", "POST", "/runs", 400, "not valid", json=_run(env={"A=B": "x"})),
    ApiInput("empty env name", "POST", "/runs", 400, "not valid", json=_run(env={"": "x"})),
    ApiInput("env value with a NUL byte", "POST", "/runs", 422, "NUL", json=_run(env={"A": "a\x00b"})),
    ApiInput("run label with a space", "POST", "/runs", 400, "label", json=_run(labels=["a b"])),
    ApiInput("run label too long", "POST", "/runs", 422, "labels.0: String should have at most 63",
             json=_run(labels=["x" * 64])),
    # --- tokens
    ApiInput("no token", "GET", "/runs", 401, "missing bearer token", token="none"),
    ApiInput("unknown token", "GET", "/runs", 401, "unknown token", token="cast_u_nope"),
    ApiInput("basic auth instead of a bearer token", "GET", "/runs", 401, "missing bearer token",
             token="none", headers={"Authorization": "Basic YWRtaW46YWRtaW4="}),
    ApiInput("token of 4000 characters", "GET", "/runs", 401, "unknown token", token="x" * 4000),
    ApiInput("token with bytes beyond ASCII", "GET", "/runs", 401, "unknown token",
             token="none", headers={"Authorization": b"Bearer \xff\xfe"}),
    ApiInput("worker token on a user route", "GET", "/runs", 403, "user token", token="worker"),
    ApiInput("user token on a worker route", "POST", "/workers", 403, "worker token",
             json={"name": "w", "executor": "local"}),
    # --- users and tokens
    ApiInput("user name with ..", "POST", "/users", 422, "user name", json={"name": "../x"}),
    ApiInput("user name taken", "POST", "/users", 409, "already exists", json={"name": "admin"}),
    ApiInput("admin flag of the wrong type", "POST", "/users", 422, "admin", json={"name": "eve", "admin": "yes please"}),
    ApiInput("unknown token kind", "POST", "/tokens", 422, "kind", json={"kind": "root"}),
    ApiInput("token for an unknown user", "POST", "/tokens", 404, "nobody", json={"user": "nobody"}),
    ApiInput("revoke an unknown token", "DELETE", "/tokens/424242", 404, "token 424242 not found"),
    ApiInput("revoke a token id beyond 64 bits", "DELETE", f"/tokens/{BIG}", 422, "token_id"),
    ApiInput("revoke token zero", "DELETE", "/tokens/0", 422, "token_id"),
    ApiInput("unknown sign-in link", "POST", "/sign-in", 401, "sign-in link is not valid",
             json={"token": "cast_s_nope"}, token="none"),
    ApiInput("sign-in link of 100,000 characters", "POST", "/sign-in", 422, "token",
             json={"token": "x" * 100_000}, token="none"),
    # --- hyperparameter searches
    ApiInput("search with an unknown placeholder", "POST", "/searches", 400, "uses :y: but no --param y",
             json={"kind": "grid", "command": "echo :x: :y:", "params": {"x": "1,2"}}),
    ApiInput("search with a bad distribution", "POST", "/searches", 400, "needs LOW above 0",
             json={"kind": "random", "num_runs": 2, "command": "echo :x:", "params": {"x": "loguniform:0:1"}}),
    ApiInput("random search without num_runs", "POST", "/searches", 400, "needs --num-runs",
             json={"kind": "random", "command": "echo :x:", "params": {"x": "1,2"}}),
    ApiInput("grid beyond its bound", "POST", "/searches", 422, "more than 1000 combinations",
             json={"kind": "grid", "command": "echo :a: :b:", "params": {"a": "int:1:100", "b": "int:1:100"}}),
    ApiInput("search run options with a shell in pip", "POST", "/searches", 400, "run.pip",
             json={"kind": "grid", "command": "echo :x:", "params": {"x": "1"}, "run": {"pip": ["x; rm -rf /"]}}),
    ApiInput("search parallel of 1000", "POST", "/searches", 422, "parallel",
             json={"kind": "grid", "command": "echo :x:", "params": {"x": "1"}, "parallel": 1000}),
    ApiInput("unknown search", "GET", "/searches/424242", 404, "search 424242 not found"),
    ApiInput("search id beyond 64 bits", "GET", f"/searches/{BIG}", 422, "search_id"),
    ApiInput("stop an unknown search", "POST", "/searches/424242/stop", 404, "search 424242 not found"),
    ApiInput("kill search zero", "POST", "/searches/0/kill", 422, "search_id"),
    # --- worker routes
    ApiInput("lease for an unknown worker", "POST", "/workers/w-nobody/lease", 404, "register again", json={}, token="worker"),
    ApiInput("negative lease wait", "POST", "/workers/w-nobody/lease", 422, "wait", json={"wait": -1}, token="worker"),
    ApiInput("heartbeat with a wrong lease", "POST", "/runs/{done}/heartbeat", 409, "lease",
             json={"lease_token": "stolen"}, token="worker"),
    ApiInput("worker heartbeat of 10,001 leases", "POST", "/workers/w-nobody/heartbeat", 422,
             "leases: List should have at most 10000", token="worker",
             json={"leases": [{"run_id": 1, "lease_token": "x"}] * 10_001}),
    ApiInput("staged outputs named with 200 characters", "POST", "/runs/{queued}/outputs/staged", 422,
             "staging: String should have at most 128", token="worker",
             json={"lease_token": "x", "staging": "s" * 200, "files": []}),
    ApiInput("staged outputs in another run's folder", "POST", "/runs/{done}/outputs/staged", 400,
             "is not a staging folder of run", json={"lease_token": "stolen", "staging": "staged-999-x", "files": []},
             token="worker"),
    ApiInput("unknown status from a worker", "POST", "/runs/{done}/status", 422, "status",
             json={"lease_token": "stolen", "status": "exploded"}, token="worker"),
    ApiInput("17 status reports in one batch", "POST", "/runs/{done}/statuses", 422,
             "reports: List should have at most 16", token="worker",
             json={"lease_token": "x", "reports": [{"status": "saving"}] * 17}),
    ApiInput("batched status reports with a wrong lease", "POST", "/runs/{done}/statuses", 409, "lease",
             json={"lease_token": "stolen", "reports": [{"status": "failed"}]}, token="worker"),
    ApiInput("log lines with a status report with a lease stolen", "POST", "/runs/{done}/statuses", 409, "lease",
             json={"lease_token": "stolen", "reports": [
                 {"status": "failed", "logs": {"seq": 0, "runs": [{"stream": "stdout", "lines": ["x"]}]}}]},
             token="worker"),
    ApiInput("too many log lines with a batch of status reports", "POST", "/runs/{done}/statuses", 422,
             "carries at most", token="worker",
             json={"lease_token": "x", "reports": [
                 {"status": "saving", "logs": {"seq": 0, "runs": [{"stream": "stdout", "lines": ["x"] * 30_000}]}},
                 {"status": "failed", "logs": {"seq": 0, "runs": [{"stream": "stderr", "lines": ["y"] * 30_000}]}}]}),
    ApiInput("log append to an unknown run", "POST", "/runs/424242/logs", 404, "not found",
             json={"lease_token": "x", "seq": 0, "runs": []}, token="worker"),
    ApiInput("log append with a negative seq", "POST", "/runs/{done}/logs", 422, "seq",
             json={"lease_token": "x", "seq": -1, "runs": []}, token="worker"),
    ApiInput("metric points of an unknown run", "GET", "/runs/424242/metrics/points", 404, "not found"),
    ApiInput("metric limit too large", "GET", "/runs/{done}/metrics/points", 422, "limit", params={"limit": 100_001}),
    ApiInput("metric name of 300 characters", "GET", "/runs/{done}/metrics/follow", 422, "name",
             params={"name": "n" * 300}),
    ApiInput("metric summary of an unknown run", "GET", "/runs/424242/metrics", 404, "not found"),
    ApiInput("metric value as a string from a worker", "POST", "/runs/{done}/metrics", 422, "value",
             json={"lease_token": "x", "seq": 0, "points": [{"name": "loss", "value": "nan"}]}, token="worker"),
    ApiInput("metric name with a control character", "POST", "/runs/{done}/metrics", 422, "control characters",
             json={"lease_token": "x", "seq": 0, "points": [{"name": "a\u0007", "value": 1}]}, token="worker"),
    ApiInput("metric append with a wrong lease", "POST", "/runs/{done}/metrics", 409, "lease",
             json={"lease_token": "stolen", "seq": 0, "points": []}, token="worker"),
    ApiInput("outputs without a lease token", "PUT", "/runs/{done}/outputs", 422, "x-lease-token",
             content=_tar(_member("a.txt")), token="worker"),
    ApiInput("outputs with a wrong lease", "PUT", "/runs/{done}/outputs", 409, "lease",
             content=_tar(_member("a.txt")), headers={"X-Lease-Token": "stolen"}, token="worker"),
    ApiInput("mount fetch with ..", "GET", "/workers/mounts/runs%2F1%2F..%2F..%2F..%2Fcast.db", 400, "'..'", token="worker"),
    ApiInput("object push plan on a server without an object store", "POST", "/runs/{done}/outputs/plan", 409,
             "not in an object store", json={"lease_token": "stolen", "files": []}, token="worker"),
    ApiInput("object push commit with a sha256 that is not hex", "POST", "/runs/{done}/outputs/commit", 422, "sha256",
             json={"lease_token": "x", "files": [{"path": "a", "size": 1, "sha256": "zz"}]}, token="worker"),
    ApiInput("object mount files without an object store", "GET", "/workers/objects/uploads%2Fdata", 409,
             "not in an object store", token="worker"),
    ApiInput("upload plan on a server without an object store", "POST", "/uploads/fresh/plan", 409,
             "not in an object store", json={"kind": "dir", "files": []}),
    ApiInput("upload commit with a kind that is neither file nor dir", "POST", "/uploads/fresh/commit", 422, "kind",
             json={"kind": "link", "files": []}),
]

CLI_INPUTS = [
    # --- unknown runs and numbers
    CliInput("info of an unknown run", ("info", "424242"), 1, "run 424242 not found"),
    CliInput("info of a run id beyond 64 bits", ("info", BIG), 1, "run_id"),
    CliInput("info of a run id that is not a number", ("info", "abc"), 2, "not a valid integer"),
    CliInput("logs of an unknown run", ("logs", "424242"), 1, "not found"),
    CliInput("negative --tail", ("logs", "{done}", "--tail", "-3"), 2, "--tail"),
    CliInput("metrics of an unknown run", ("metrics", "424242"), 1, "not found"),
    CliInput("a metric the run never reported", ("metrics", "{done}", "loss"), 1, "no metric named 'loss'"),
    CliInput("stop an unknown run", ("stop", "424242"), 1, "run 424242"),
    CliInput("stop a finished run", ("stop", "{done}"), 1, "complete"),
    CliInput("kill a run id beyond 64 bits", ("kill", BIG), 1, "run_id"),
    CliInput("label an unknown run", ("label", "424242", "x"), 1, "not found"),
    CliInput("label with a space", ("label", "{done}", "a b"), 2, "label"),
    CliInput("ls of a run id beyond 64 bits", ("ls", f"runs/{BIG}"), 2, "not a run number"),
    CliInput("down with an unknown option", ("down", "--gently"), 2, "no such option"),
    CliInput("ps with limit zero", ("ps", "--limit", "0"), 2, "--limit"),
    CliInput("login to something that is no URL", ("login", "cast.lab:8470", "--token", "x"), 1, "http"),
    CliInput("login with an empty token", ("login", "http://127.0.0.1:9", "--token", " "), 2, "no token given"),
    CliInput("web with an unknown option", ("web", "--no-open", "--now"), 2, "no such option"),
    CliInput("ps with a huge limit", ("ps", "--limit", BIG), 2, "--limit"),
    CliInput("ps with an unknown status", ("ps", "--status", "sleeping"), 2, "sleeping"),
    # --- mounts
    CliInput("mount escaping with ..", ("run", "-m", "runs/{done}/../../etc", "true"), 2, "runs/N"),
    CliInput("mount of an absolute source", ("run", "-m", "/etc/passwd", "true"), 2, "absolute"),
    CliInput("absolute mount path", ("run", "-m", "runs/{done}/out.txt:/etc/out.txt", "true"), 2, "absolute"),
    CliInput("two mounts on one path", ("run", "-m", "runs/{done}/out.txt:x", "-m", "uploads/data:x", "true"), 2,
             "two mounts on one path"),
    CliInput("mount cycle: the run's own number", ("run", "-m", "runs/{next}", "true"), 1, "does not exist"),
    CliInput("mount of an unfinished run", ("run", "-m", "runs/{queued}", "true"), 1, "machine_requested"),
    CliInput("mount of a missing path", ("run", "-m", "runs/{done}/nope.txt", "true"), 1, "nope.txt"),
    # --- packages and code
    CliInput("pip spec with a shell command", ("run", "--pip", "six; rm -rf /", "true"), 2, "not a package requirement"),
    CliInput("pip option injection", ("run", "--pip", "--index-url http://evil", "true"), 2, "not a package requirement"),
    CliInput("requirements file with an index option", ("run", "--pip-req", "evil-requirements.txt", "true"), 1,
             "not a package requirement"),
    CliInput("apt package with a shell command", ("run", "--apt", "vim; reboot", "true"), 2, "Debian package"),
    CliInput("unreachable git URL", ("run", "--github-url", "file:///nonexistent/repo", "true"), 1, "unreachable"),
    CliInput("unknown git ref", ("run", "--github-url", "{repo}", "--commit-ref", "no-such-branch", "true"), 1,
             "no-such-branch"),
    CliInput("git ref without a git URL", ("run", "--commit-ref", "main", "true"), 2, "--github-url"),
    # --- commands, encodings, numbers
    CliInput("oversized command", ("run", "x" * 70000), 1, "65536"),
    CliInput("pip entry of 100,000 characters", ("run", "--pip", "a" * 100_000, "true"), 2, "exceeds the limit of 256"),
    CliInput("invalid UTF-8 in the command", ("run", b"echo \xff\xfe"), 1, "unicode"),
    CliInput("invalid UTF-8 in an env value", ("run", "-e", b"A=\xff", "true"), 1, "unicode"),
    CliInput("negative timeout", ("run", "--timeout", "-5", "true"), 2, "--timeout"),
    CliInput("infinite timeout", ("run", "--timeout", "9" * 400, "true"), 2, "finite"),
    CliInput("exponent timeout", ("run", "--timeout", "1e999", "true"), 2, "must be seconds"),
    CliInput("timeout that is not a duration", ("run", "--timeout", "soon", "true"), 2, "--timeout"),
    CliInput("negative retries", ("run", "--retries", "-1", "true"), 2, "between 0 and 10"),
    CliInput("retries beyond 64 bits", ("run", "--retries", BIG, "true"), 2, "between 0 and 10"),
    CliInput("too many GPUs", ("run", "-t", "gpu:99", "true"), 2, "between 1 and 16"),
    CliInput("env name starting with a digit", ("run", "-e", "1BAD=x", "true"), 2, "not valid"),
    CliInput("env without a value", ("run", "-e", "NOVALUE", "true"), 2, "NAME=VALUE"),
    CliInput("run label with a space", ("run", "--label", "a b", "true"), 2, "label"),
    CliInput("run workdir escaping with ..", ("run", "--workdir", "../up", "true"), 2, "escapes its root"),
    CliInput("run option after the command", ("run", "true", "--pip", "six"), 2, "option --pip after the command"),
    CliInput("run file with a wrong type", ("run", "--from-file", "wrong-type.yaml"), 2, "whole number"),
    CliInput("run file with an unknown key", ("run", "--from-file", "unknown-key.yaml"), 2, "unknown key"),
    # --- cp and upload names
    CliInput("cp escaping with ..", ("cp", "runs/{done}/../../x"), 2, "runs/N"),
    CliInput("cp of an absolute path", ("cp", "/etc/passwd"), 2, "absolute"),
    CliInput("cp of a missing output", ("cp", "runs/{done}/nope.txt"), 1, "no such file"),
    CliInput("cp of an unknown upload", ("cp", "uploads/none"), 1, "not found"),
    CliInput("upload named with ..", ("upload", "file.txt", "-n", "../evil"), 2, "upload name"),
    CliInput("upload named like an option", ("upload", "file.txt", "-n", "-rf"), 2, "not start with '-'"),
    CliInput("upload name taken", ("upload", "file.txt", "-n", "data"), 1, "already exists"),
    CliInput("upload of a missing file", ("upload", "missing.txt"), 2, "no such file"),
    # --- rm, prune, du
    CliInput("rm of a path inside a run", ("rm", "runs/{done}/out.txt"), 2, "not a path inside it"),
    CliInput("rm of a queued run's outputs", ("rm", "runs/{queued}"), 1, "stop it first"),
    CliInput("rm of an unknown upload", ("rm", "uploads/none"), 1, "not found"),
    CliInput("rm of something that is no run or upload", ("rm", "logs/1"), 2, "runs/N"),
    CliInput("prune with an age that is no duration", ("prune", "--older-than", "soon"), 2, "--older-than"),
    CliInput("prune an unknown user's runs", ("prune", "--older-than", "1s", "--user", "nobody"), 1, "nobody"),
    CliInput("du of an unknown user", ("du", "--user", "nobody"), 1, "nobody"),
    # --- hyperparameter searches
    CliInput("grid with an unused param", ("hyper", "grid", "-p", "x=1", "-p", "y=2", "echo :x:"), 2,
             "param y is not used"),
    CliInput("random search without --num-runs", ("hyper", "random", "-p", "x=1,2", "echo :x:"), 2, "--num-runs"),
    CliInput("bayes search without --metric", ("hyper", "bayes", "-n", "2", "-p", "x=uniform:0:1", "echo :x:"), 2,
             "--metric"),
    CliInput("info of an unknown search", ("hyper", "info", "424242"), 1, "search 424242 not found"),
    CliInput("stop an unknown search", ("hyper", "stop", "424242"), 1, "search 424242 not found"),
    CliInput("kill a search id beyond 64 bits", ("hyper", "kill", BIG), 1, "search_id"),
    # --- tokens, servers, users
    CliInput("unknown token", ("ps",), 1, "unknown token", env={"CAST_TOKEN": "cast_u_nope"}),
    CliInput("worker token for a user command", ("ps",), 1, "user token", env={"CAST_TOKEN": "{worker_token}"}),
    CliInput("token with non-ASCII characters", ("ps",), 1, "characters", env={"CAST_TOKEN": "токен"}),
    CliInput("server port out of range", ("ps",), 1, "must look like", env={"CAST_SERVER_URL": "http://127.0.0.1:99999"}),
    CliInput("server URL that is not a URL", ("ps",), 1, "must look like", env={"CAST_SERVER_URL": "garbage"}),
    CliInput("user name with ..", ("user", "create", "../x"), 1, "user name"),
    CliInput("user name taken", ("user", "create", "admin"), 1, "already exists"),
    CliInput("token for an unknown user", ("token", "create", "--user", "nobody"), 1, "nobody"),
    CliInput("revoke an unknown token", ("token", "revoke", "424242"), 1, "not found"),
    CliInput("revoke a token id beyond 64 bits", ("token", "revoke", BIG), 1, "token_id"),
    CliInput("worker token for a user", ("token", "create", "--worker", "--user", "admin"), 2, "--worker"),
]


# --- the shared world ---------------------------------------------------------------

@pytest.fixture(scope="module")
def world(module_server, module_worker, module_cli, module_dir) -> dict:
    """A complete run with outputs, a queued run, an upload, a git repo and input files."""
    files = module_dir
    (files / "file.txt").write_text("x\n")
    (files / "data").mkdir()
    (files / "data" / "a.txt").write_text("a\n")
    (files / "evil-requirements.txt").write_text("six\n--extra-index-url http://evil\n")
    (files / "wrong-type.yaml").write_text("command: 'true'\nretries: many\n")
    (files / "unknown-key.yaml").write_text("command: 'true'\nprivileged: true\n")
    repo = files / "repo"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-C", str(repo)]
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    (repo / "train.py").write_text("print('hi')\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "first"], check=True)

    done = module_cli("run", "mkdir -p d && echo hi > d/f.txt && echo out > out.txt")
    assert done.returncode == 0, done
    done_id = int(re.search(r"Casting run #(\d+)", done.stdout).group(1))
    assert module_cli("upload", "data").returncode == 0
    queued = module_cli("run", "-d", "--json", "--queue-anyway", "-t", "gpu:2", "true")  # no GPU: stays queued
    assert queued.returncode == 0, queued
    queued_id = queued.json()["id"]
    module_cli("label", str(done_id), "keep")
    yield {"done": done_id, "queued": queued_id, "next": queued_id + 1, "repo": f"file://{repo}",
           "worker_token": module_server.worker_token}
    module_cli("kill", str(queued_id))


def _fill(value, world: dict):
    """`value` with {done}, {queued}, {next}, {repo}, {worker_token} filled in, recursively."""
    if isinstance(value, str):
        for key, replacement in world.items():
            value = value.replace("{" + key + "}", str(replacement))
        return value
    if isinstance(value, list):
        return [_fill(item, world) for item in value]
    if isinstance(value, tuple):
        return tuple(_fill(item, world) for item in value)
    if isinstance(value, dict):
        return {_fill(k, world): _fill(v, world) for k, v in value.items()}
    return value


def _state(server) -> dict:
    """What an input must not change: runs with statuses and labels, uploads,
    users, tokens, and the files the server stores."""
    with server.api() as api:
        runs = api.get("/runs", params={"limit": 500}).json()["runs"]
        uploads = api.get("/uploads").json()["uploads"]
        users = api.get("/users").json()["users"]
        tokens = api.get("/tokens").json()["tokens"]
    stored = sorted(str(p.relative_to(server.data_dir)) for p in server.data_dir.rglob("*")
                    if not p.name.startswith("cast.db") and p.relative_to(server.data_dir).parts[0] != "tmp")
    return {
        "runs": [(r["id"], r["status"], tuple(r["labels"])) for r in runs],
        "uploads": sorted((u["name"], u["size"], u["files"]) for u in uploads),
        "users": [(u["name"], u["admin"]) for u in users],
        "tokens": [(t["id"], t["revoked_at"]) for t in tokens],
        "stored": stored,
        "data_upload": hashlib.sha256((server.data_dir / "uploads" / "data" / "a.txt").read_bytes()).hexdigest(),
    }


@pytest.fixture
def unchanged(module_server, world):
    """Checks, after the test, that the server's state is as before and that
    its log shows no unhandled error."""
    before = _state(module_server)
    log_size = module_server.log_path.stat().st_size
    yield
    assert _state(module_server) == before
    with open(module_server.log_path, "rb") as log:
        log.seek(log_size)
        new_log = log.read().decode("utf-8", "replace")
    assert "Traceback" not in new_log and "Exception in ASGI" not in new_log, new_log[-3000:]
    assert not Path(MARKER).exists(), "an injected command ran"


# --- the tests --------------------------------------------------------------------

def _operations_taking_input(document: dict):
    """(method, path under /api/v1) of every operation with a parameter or a body.
    HEAD is left out: its answer has no body to say why."""
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if method != "head" and (operation.get("parameters") or operation.get("requestBody")):
                yield method.upper(), path.removeprefix("/api/v1")


def _matches(template: str, path: str) -> bool:
    # {path} and {resource} may span folders; any other parameter is one segment.
    pattern = "".join(
        (".+" if part in ("{path}", "{resource}") else "[^/]+") if part.startswith("{") else re.escape(part)
        for part in re.split(r"(\{\w+\})", template))
    return re.fullmatch(pattern, path) is not None


def _verbs_taking_input(group: click.Group, prefix: tuple = ()):
    """Every `cast` command line with an argument or option beyond --json; the
    verbs that hand their arguments to the server's or worker's own parser
    (`cast up`, `cast worker`, ...) are theirs to refuse."""
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _verbs_taking_input(command, prefix + (name,))
        elif not command.context_settings.get("ignore_unknown_options") and any(
                param.name != "as_json" for param in command.params):
            yield prefix + (name,)


def test_every_route_and_verb_that_takes_input_is_tried_here(module_server):
    """A route or verb added without a refusal in these tables fails here
    instead of going untried."""
    document = httpx.get(f"{module_server.url}/api/v1/openapi.json", timeout=30).json()
    untried = [f"{method} {template}" for method, template in _operations_taking_input(document)
               if not any(case.method == method and _matches(template, case.path) for case in API_INPUTS)]
    assert untried == [], "routes without a row in API_INPUTS"
    untried = [" ".join(verb) for verb in _verbs_taking_input(cli)
               if not any(case.args[:len(verb)] == verb for case in CLI_INPUTS)]
    assert untried == [], "verbs without a row in CLI_INPUTS"


@pytest.mark.parametrize("case", API_INPUTS, ids=[i.what for i in API_INPUTS])
def test_api_refuses(case: ApiInput, module_server, world, unchanged):
    tokens = {"admin": module_server.admin_token, "worker": module_server.worker_token}
    headers = {}
    if case.token != "none":
        headers["Authorization"] = f"Bearer {tokens.get(case.token, case.token)}"
    headers.update(case.headers)
    request = {"params": _fill(case.params, world), "headers": headers}
    if case.json is not NOT_SET:
        request["content"] = json.dumps(_fill(case.json, world)).encode()
        headers.setdefault("Content-Type", "application/json")
    elif case.content is not None:
        request["content"] = case.content
    # The path goes out as written (percent-escapes and dot segments included).
    url = httpx.URL(module_server.url).copy_with(raw_path=("/api/v1" + _fill(case.path, world)).encode())
    response = httpx.request(case.method, url, timeout=30, **request)
    assert response.status_code == case.status, (case.what, response.status_code, response.text[:500])
    assert response.headers["content-type"] == "application/json"
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail, response.text
    assert "\n" not in detail
    assert case.detail.lower() in detail.lower(), (case.what, detail)


@pytest.mark.parametrize("case", CLI_INPUTS, ids=[i.what for i in CLI_INPUTS])
def test_cli_refuses(case: CliInput, module_cli, module_dir, world, unchanged):
    args = [arg if isinstance(arg, bytes) else _fill(arg, world) for arg in case.args]
    result = module_cli(*args, env=_fill(case.env, world))
    assert result.returncode == case.exit_code, (case.what, result)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("cast: error: "), (case.what, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    # A bug caught by the CLI's last resort says "unexpected": not a clear refusal.
    assert "unexpected" not in lines[0], lines[0]
    assert case.needle.lower() in lines[0].lower(), (case.what, lines[0])
    assert result.stdout == ""
    assert not (module_dir / "x").exists() and not (module_dir / "nope.txt").exists()


def test_the_queued_run_is_still_waiting(module_server, world):
    """The table left the world as it found it: the queued run still waits, the
    complete run keeps its outputs and label."""
    with module_server.api() as api:
        assert api.get(f"/runs/{world['queued']}").json()["status"] == "machine_requested"
        done = api.get(f"/runs/{world['done']}").json()
        assert done["status"] == "complete" and done["labels"] == ["keep"]
        paths = [f["path"] for f in api.get(f"/runs/{world['done']}/outputs").json()["files"]]
        assert paths == ["d/f.txt", "out.txt"]


def test_a_multi_user_server_refuses_local_git_sources_in_one_line(start_server, cast_via, tmp_path):
    """Unless its operator allows them (CAST_ALLOW_LOCAL_GIT), a server does not
    let a run read a repository on its host: another user's, say."""
    secret = tmp_path / "secret-repo"
    subprocess.run(["git", "init", "-q", str(secret)], check=True)
    server = start_server(env={"CAST_ALLOW_LOCAL_GIT": "0"})
    cast = cast_via(server.url, server.admin_token)
    for url in (f"file://{secret}", str(secret)):
        result = cast.run("run", "--github-url", url, "cat .git/config")
        assert result.returncode == 1 and result.stdout == ""
        assert result.stderr.splitlines() == [
            f"cast: error: git URL {url!r} is on the server's own filesystem; this server does not allow local "
            "git sources (its operator can, with CAST_ALLOW_LOCAL_GIT=1)"]
    with server.api() as api:
        assert api.get("/runs").json()["runs"] == []
