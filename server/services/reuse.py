"""Reusing runs: the key of what decides a run's result, and the earlier run it finds.

Owns `reuse_key` (sha256 of a canonical JSON of the run's command, its
environment: pip, requirements, apt, image, machine type, env, workdir; its
code: the commit sha of a git run, the bundle digest of local code; and the
contents of what it mounts: the sha256 manifest of each mounted output or
upload, not its name) and `find_reusable`, the newest complete run with that
key whose outputs still exist. Every run gets its key when it is created, so
any later `idempotent` request can find it. Also `find_submitted`: the run
an earlier try of the same submit made (its submit key), so a submit retried
after a balancer cut it off makes no second run.
"""

from __future__ import annotations

import hashlib
import json

from sqlalchemy import select
from sqlalchemy.orm import Session

from cast.protocol.messages import RunSpec
from cast.protocol.status import RunStatus
from cast.protocol.validate import parse_resource
from cast.server.models import OutputFile, Run, UploadFile, User

# Part of the hashed text, so a change of what goes into a key never matches keys made before it.
KEY_VERSION = 1


def reuse_key(session: Session, spec: RunSpec) -> str:
    """The key of everything that decides what `spec` produces (its mounts already checked)."""
    if spec.git_url:
        code = {"commit": spec.commit_sha}
    elif spec.code_digest:
        code = {"bundle": spec.code_digest}
    else:
        code = None
    ingredients = {
        "version": KEY_VERSION,
        "command": spec.command,
        "pip": spec.pip,
        "pip_req": spec.pip_req,
        "apt": spec.apt,
        "docker_image": spec.docker_image,
        "machine_type": spec.machine_type,
        "gpus": spec.gpus,
        "env": spec.env,
        "workdir": spec.workdir,
        "code": code,
        "mounts": [{"path": m.path, "contents": _mounted_contents(session, m.resource)} for m in spec.mounts],
    }
    text = json.dumps(ingredients, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _mounted_contents(session: Session, resource_text: str) -> str:
    """sha256 over the (path below the mounted folder, sha256) of every file it holds."""
    resource = parse_resource(resource_text)
    if resource.kind == "runs":
        table, owner = OutputFile, OutputFile.run_id == resource.run_id
    else:
        table, owner = UploadFile, UploadFile.upload_name == resource.name
    query = select(table.path, table.sha256).where(owner)
    if resource.subpath:
        prefix = resource.subpath + "/"
        query = query.where((table.path == resource.subpath)
                            | ((table.path > prefix) & (table.path < prefix[:-1] + "0")))
    digest = hashlib.sha256()
    for path, sha256 in sorted(session.execute(query).all()):
        inside = path[len(resource.subpath) + 1:] if resource.subpath and path != resource.subpath else ""
        digest.update(f"{inside}\0{sha256}\n".encode())
    return digest.hexdigest()


def find_reusable(session: Session, *, key: str, viewer: User) -> Run | None:
    """The newest complete run with `key` that `viewer` may see and whose outputs were not deleted."""
    query = (select(Run).where(Run.reuse_key == key, Run.status == RunStatus.COMPLETE.value,
                               Run.deleted_at.is_(None))
             .order_by(Run.id.desc()).limit(1))
    if not viewer.is_admin:
        query = query.where(Run.owner_id == viewer.id)
    return session.scalars(query).first()


# Where a run's spec keeps the submit key of the request that made it.
SUBMIT_KEY = "submit_key"
# A retried submit comes seconds after its first try: the owner's newest runs
# with the same reuse key are where it can be, and a bound keeps the look cheap.
_SUBMITTED_LOOKBACK = 50


def find_submitted(session: Session, *, key: str, owner: User, submit_key: str) -> Run | None:
    """The run an earlier try of this submit made (same owner, spec and submit key), if any."""
    recent = session.scalars(select(Run).where(Run.owner_id == owner.id, Run.reuse_key == key)
                             .order_by(Run.id.desc()).limit(_SUBMITTED_LOOKBACK))
    return next((run for run in recent if run.spec.get(SUBMIT_KEY) == submit_key), None)
