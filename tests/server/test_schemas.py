"""cast.server.schemas: what the input models refuse (with a message naming
the field), what they normalise, and the protocol types they hand on."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cast.protocol.messages import MountSpec, RunSpec
from cast.protocol.worker_messages import StatusReport
from cast.protocol.objects import ObjectEntry, ObjectManifest, UploadManifest
from cast.protocol.status import RunStatus
from cast.server.schemas.files import ObjectManifestIn, UploadManifestIn
from cast.server.schemas.hyper import SearchCreate
from cast.server.schemas.runs import LabelIn, MountIn, RunCreate
from cast.server.schemas.users import UserCreate
from cast.server.schemas.workers import StatusIn, WorkerRegister

KEY = "0" * 64


@pytest.mark.parametrize(("fields", "message"), [
    ({"command": ""}, "at least 1 character"),
    ({"command": "echo \x00"}, "command must not contain a NUL character"),
    ({"git_url": "https://x\ny"}, "git_url must not contain control characters"),
    ({"git_url": "--upload-pack=evil"}, "git_url '--upload-pack=evil' must not start with '-'"),
    ({"git_url": "https://x", "commit_ref": "main..dev"}, "commit_ref 'main..dev' is not a git ref"),
    ({"git_url": "https://x", "commit_ref": "a b"}, "commit_ref 'a b' is not a git ref"),
    ({"commit_ref": "main"}, "commit_ref needs git_url"),
    ({"git_url": "https://x", "code_bundle": KEY}, "give git_url or code_bundle, not both"),
    ({"code_bundle": "not-a-key"}, "should match pattern"),
    ({"docker_image": "-v /:/host"}, "docker_image '-v /:/host' is not an image reference"),
    ({"env": {"A": "x\x00"}}, "environment variable A must not contain a NUL byte"),
    ({"timeout": 0}, "greater than 0"),
    ({"retries": 11}, "less than or equal to 10"),
    ({"surprise": 1}, "Extra inputs are not permitted"),
    ({"git_url": "https://x", "commit_sha": "a" * 40}, "a git_url's commit is resolved by the server"),
    ({"branch": "main"}, "commit_sha, branch and dirty describe a code_bundle"),
    ({"code_bundle": KEY, "commit_sha": "HEAD"}, "should match pattern"),
    ({"code_bundle": KEY, "branch": "-x"}, "branch '-x' must not start with '-'"),
    ({"workdir": "../up"}, "workdir '../up' escapes its root"),
    ({"workdir": "/abs"}, "workdir '/abs' must be relative"),
    ({"command": "echo \udcff"}, "unable to parse raw data as a unicode string"),
], ids=lambda value: repr(value)[:40] if isinstance(value, dict) else None)
def test_a_run_body_is_refused_with_its_reason(fields, message):
    with pytest.raises(ValidationError, match=message):
        RunCreate(**{"command": "true", **fields})


@pytest.mark.parametrize("fields", [
    {"pip": ["--index-url=http://evil"]}, {"pip_req": "ok\n--extra-index-url http://evil"},
    {"apt": ["-o"]}, {"machine_type": "tpu"}, {"labels": ["has space"]}, {"env": {"1BAD": "x"}},
    {"mounts": [{"resource": "uploads/a", "path": "/etc"}]},
], ids=lambda value: next(iter(value)))
def test_the_protocol_validators_guard_each_list_field(fields):
    with pytest.raises(ValidationError):
        RunCreate(command="true", **fields)


def test_a_run_body_becomes_the_spec_to_store():
    body = RunCreate(command="python train.py", git_url="https://example.com/r.git", machine_type="gpu:2",
                     labels=["exp", "exp", "b"], mounts=[{"resource": "uploads/data"}],
                     pip_req="# pinned\ntorch==2.0  # the model\n\n")
    assert body.labels == ["exp", "b"]  # deduplicated, in order
    spec = body.to_spec(commit_sha="c" * 40, code_digest=None)
    assert isinstance(spec, RunSpec)
    assert (spec.commit_ref, spec.commit_sha, spec.gpus) == ("HEAD", "c" * 40, 2)
    assert spec.mounts == [MountSpec(resource=body.mounts[0].resource, path=body.mounts[0].path)]
    pinned = RunCreate(command="true", git_url="https://example.com/r.git", commit_ref="v1")
    assert pinned.to_spec(commit_sha=None, code_digest=None).commit_ref == "v1"
    bundled = RunCreate(command="true", code_bundle=KEY).to_spec(commit_sha=None, code_digest="d" * 64)
    assert (bundled.commit_ref, bundled.code_digest) == (None, "d" * 64)
    described = RunCreate(command="true", code_bundle=KEY, commit_sha="a" * 40, branch="main", dirty=False,
                          workdir="sub/./x", idempotent=True).to_spec(commit_sha=None, code_digest="d" * 64)
    assert (described.commit_sha, described.branch, described.dirty, described.workdir) == ("a" * 40, "main",
                                                                                               False, "sub/x")


def test_a_mount_is_normalised_as_the_protocol_parses_it():
    mount = MountIn(resource="uploads/data/", path=None)
    parsed = mount.to_mount()
    assert (mount.resource, mount.path) == (parsed.resource, parsed.path)
    with pytest.raises(ValidationError):
        MountIn(resource="/etc/passwd")


def test_names_labels_and_status_reports():
    assert UserCreate(name="alice.b-1").name == "alice.b-1"
    for bad in ("", "-alice", "a b", "x" * 65):
        with pytest.raises(ValidationError):
            UserCreate(name=bad)
    assert LabelIn(label="exp-1").label == "exp-1"
    with pytest.raises(ValidationError):
        LabelIn(label="two words")
    report = StatusIn(lease_token="t", status="running", note="started").to_report()
    assert isinstance(report, StatusReport) and report.status == RunStatus.RUNNING and report.note == "started"
    with pytest.raises(ValidationError):
        StatusIn(lease_token="", status="running")
    assert WorkerRegister(name="w", executor="local").sandboxed is False  # unsaid is unsandboxed


def test_a_search_takes_labels_as_a_run_does():
    search = dict(kind="grid", command="echo :a:", params={"a": "1,2"})
    assert SearchCreate(**search, labels=["x", "x", "y"]).labels == ["x", "y"]
    for model, fields in ((SearchCreate, search), (RunCreate, {"command": "true"})):
        with pytest.raises(ValidationError, match="label 'two words' must be 1-63 letters"):
            model(**fields, labels=["two words"])
        with pytest.raises(ValidationError, match="at most 63 characters"):
            model(**fields, labels=["x" * 64])


def test_an_object_manifest_becomes_the_protocols():
    entry = {"path": "a/b.txt", "size": 3, "sha256": KEY}
    pushed = ObjectManifestIn(lease_token="t", files=[entry], folders=["empty"]).to_manifest()
    assert pushed == ObjectManifest(lease_token="t", files=[ObjectEntry("a/b.txt", 3, KEY)], folders=["empty"])
    uploaded = UploadManifestIn(kind="dir", files=[entry], replace=True).to_manifest()
    assert uploaded == UploadManifest(kind="dir", files=[ObjectEntry("a/b.txt", 3, KEY)], replace=True, folders=[])
    for bad in ({**entry, "sha256": "x"}, {**entry, "size": -1}, {**entry, "path": ""}):
        with pytest.raises(ValidationError):
            ObjectManifestIn(lease_token="t", files=[bad])
